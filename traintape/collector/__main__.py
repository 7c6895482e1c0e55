"""`python -m traintape.collector serve ...`: the same as `traintape serve ...`."""

import sys

from traintape.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args if args[:1] == ["serve"] else ["serve", *args]))
