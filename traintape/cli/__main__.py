"""`python -m traintape.cli ...`: the same as `traintape ...`."""

import sys

from traintape.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
