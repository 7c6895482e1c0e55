"""The collector: `traintape serve` (or `python -m traintape.collector serve`). Never imports torch."""

from traintape.collector.server import Collector, CollectorError, run

__all__ = ["Collector", "CollectorError", "run"]
