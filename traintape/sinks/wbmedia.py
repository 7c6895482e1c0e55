"""Artifact events in W&B (the W&B sink calls `WandbMedia`).

- an image (media kind "image": a PNG) is a `wandb.Image` of the stored file itself (W&B copies
  the file into the run's `media/images/`, so the bytes stay the stored PNG's), with its
  caption, in the history row of its step, under its name (`/rank<N>` for ranks other than 0);
  the images of a list (key/0, key/1, ...) go as one list under the key, as W&B logs a batch;
- a table (media kind "table") is a `wandb.Table` of its columns and first `MAX_TABLE_ROWS`
  rows (W&B's own limit) in the row of its step; a longer table is counted (`tables_cut`);
- any other artifact is a `wandb.Artifact` of type `kind` (or "artifact") named after it,
  holding the stored file (policy "immutable": W&B neither copies nor reads it whole; an
  object of the store never changes), logged to the run. The same content logged again is the
  same artifact version.

A missing or damaged object is that event's error (`ArtifactProblems`), not the batch's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from traintape.schemas.media import listed
from traintape.sinks._base import Event
from traintape.sinks.media import (
    MAX_TABLE_ROWS,
    ArtifactProblems,
    linked,
    media_kind,
    media_tag,
    object_path,
    read_table,
)


class WandbMedia:
    def __init__(self, store: Path, problems: ArtifactProblems, counts: Counter[str]) -> None:
        self.store = store
        self.problems = problems
        self.counts = counts
        self._links: Path | None = None  # a folder of links named .png, until a row is logged

    def add(self, row: dict[str, Any], event: Event) -> None:
        """Puts a media event's value in `row` (the history row of its step)."""
        import wandb

        kind = media_kind(event.body)
        try:
            path = object_path(self.store, event.body)
            if kind == "image":
                meta = event.body.get("metadata") or {}
                caption = meta.get("caption") if isinstance(meta.get("caption"), str) else None
                link = linked(path, self._folder(), "image.png")  # W&B takes the format by name
                image = wandb.Image(str(link), caption=caption)
                key, index = listed(str(event.body.get("name") or ""))
                gallery = None if index is None else media_tag(event, key)
                if gallery is not None and isinstance(row.setdefault(gallery, []), list):
                    row[gallery].append(image)  # a list's images (key/0, ...), in their order
                else:
                    row[media_tag(event)] = image
                self.counts["images"] += 1
            else:
                columns, rows, total = read_table(path, MAX_TABLE_ROWS)
                row[media_tag(event)] = wandb.Table(columns=list[Any](columns), data=rows)
                self.counts["tables"] += 1
                self.counts["tables_cut"] += total > len(rows)
        except Exception as exc:  # this event's failure: the others still go
            self.problems.note(event, exc)

    def artifact(self, wb: Any, event: Event) -> None:
        """Logs a plain artifact event as a `wandb.Artifact` of the run."""
        import wandb

        body = event.body
        try:
            path = object_path(self.store, body)
            name = str(body.get("name") or "artifact")
            art = wandb.Artifact(
                _artifact_name(name),
                type=_artifact_name(str(body.get("kind") or "artifact")),
                metadata={
                    "traintape": {"step": event.step, "rank": event.rank},
                    "sha256": body.get("sha256"),
                    **(body.get("metadata") or {}),
                },
            )
            art.add_file(str(path), name=os.path.basename(name), policy="immutable")
            wb.log_artifact(art)
            self.counts["artifacts"] += 1
        except Exception as exc:
            self.problems.note(event, exc)

    def logged(self) -> None:
        """The row holding the images was logged (W&B copied their files): the links go."""
        if self._links is not None:
            shutil.rmtree(self._links, ignore_errors=True)
            self._links = None

    def _folder(self) -> Path:
        if self._links is None:
            self._links = Path(tempfile.mkdtemp(prefix="traintape-wandb-"))
        return self._links


def _artifact_name(text: str) -> str:
    """A name W&B takes for an artifact or its type: letters, digits, `-`, `_` and `.`."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)[:128] or "artifact"
