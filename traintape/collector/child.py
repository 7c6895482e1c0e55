"""Entry point of the collector's follower processes: `python -m traintape.collector.child NAME
--store DIR`, NAME one of FOLLOWERS. Nothing else imports this module, so running it with -m
does not import it twice (the package's `__init__` imports the followers' own modules)."""

from __future__ import annotations

import importlib
import sys

FOLLOWERS = {
    "materializer_process": "traintape.collector.materializer_process",
    "sink_process": "traintape.sinks.process",
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in FOLLOWERS:
        print(
            f"usage: python -m traintape.collector.child {{{','.join(FOLLOWERS)}}} --store DIR "
            "(started by `traintape serve`, not by hand)",
            file=sys.stderr,
        )
        return 2
    from traintape.collector.follower import child_main

    name = argv[0]
    module = importlib.import_module(FOLLOWERS[name])
    return child_main(name, module.build, argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
