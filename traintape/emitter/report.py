"""What `finish()` could deliver (`FinishReport`), and the lines it says when that is not all."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from traintape.emitter.absence import Where

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishReport:
    """What `finish()` could deliver. `spooled` events wait in `spool_path` for `traintape replay`."""

    run_id: str
    acked: int
    spooled: int
    spool_path: Path | None
    rejected: int
    lost: int = 0  # neither acknowledged nor spooled: only when the spool could not be written
    unreadable: int = 0  # logged GPU values a device error left unreadable (never events)
    # Every reader (views, CLI, load_checkpoint) sees every event of this process; False: not
    # within finish's timeout (the collector's materializer is behind); None: not asked.
    visible: bool | None = None

    @property
    def complete(self) -> bool:
        """Every event is in the collector's journal, and every logged GPU value became one."""
        return self.spooled == 0 and self.rejected == 0 and self.lost == 0 and not self.unreadable


def say_what_is_missing(
    report: FinishReport, refused: int, where: Where, timeout: float, absent: str | None
) -> None:
    """Warns about what `report` says did not make it: not yet visible, spooled, rejected by the
    collector, or refused here (`refused` of `report.rejected`, each named when it happened).
    `absent`: why nothing listens at the address, when that ended finish's wait early."""
    run_id = report.run_id
    if report.visible is False:
        logger.warning(
            f"traintape: run {run_id} is stored, but readers may not see all of it yet: "
            f"the collector did not materialize it within {timeout:g}s"
        )
    if report.spooled:
        logger.warning(_spooled(report, where, timeout, absent))
    if report.rejected > refused:
        logger.warning(
            f"traintape: the collector rejected {report.rejected - refused} events of "
            f"run {run_id}; they are in its dead-letter file."
        )
    if refused:  # each was named when it was refused
        logger.warning(
            f"traintape: {refused} events of run {run_id} could not be sent "
            "(see above); FinishReport.rejected counts them"
        )


def _spooled(report: FinishReport, where: Where, timeout: float, absent: str | None) -> str:
    replay = f"traintape replay --store {where.store}{where.collector_arg()}"
    if where.address_origin != "the store's socket":  # replay must aim where the run did
        replay += f" --address {where.address}"
    if absent is None:
        return (
            f"traintape: the collector at {where.address} did not acknowledge {report.spooled} "
            f"events of run {report.run_id} in {timeout:g}s; they are safe in "
            f"{report.spool_path}. Deliver them with `{replay}` once it runs."
        )
    return (
        f"traintape: no collector at {where.address} ({absent}), so finish() did not wait: "
        f"{report.spooled} events of run {report.run_id} are safe in {report.spool_path}. "
        f"Deliver them with `{where.serve()}`, then `{replay}`."
    )
