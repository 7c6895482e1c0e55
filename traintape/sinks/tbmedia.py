"""Artifact events in TensorBoard (the TensorBoard sink calls `write_artifact`).

- an image (media kind "image": a PNG) is a classic image summary, as PyTorch's
  `SummaryWriter.add_image` writes one: `Summary.Image` with the PNG's own bytes, its width,
  height and colorspace read from the PNG header, tagged by its name (`/rank<N>` for ranks other
  than 0), at its step. TensorBoard's classic `EventAccumulator.Images()` and the IMAGES tab
  (which converts classic summaries) read it; the bytes are the stored object's;
- a table (media kind "table") is a text summary holding a markdown table (the TEXT tab renders
  markdown) of its first `MAX_TEXT_ROWS` rows, with a line saying how many there are;
- any other artifact is a line of text under the tag `artifacts`: its name, kind, size, sha256
  and path in the store (TensorBoard has no place for files; the store keeps them).

A missing or damaged object is that event's error (`ArtifactProblems`), not the batch's.
"""

from __future__ import annotations

import struct
from typing import Any

from traintape.sinks._base import Event
from traintape.sinks.media import media_kind, media_tag, object_bytes, object_path, read_table

MAX_TEXT_ROWS = 100
_PNG = b"\x89PNG\r\n\x1a\n"
_COLORSPACE = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # PNG colour type -> channels (palette: RGB)


def write_artifact(sink: Any, state: Any, event: Event) -> None:
    """Writes one artifact event to the run's event file (`sink`: the TensorBoardSink)."""
    kind = media_kind(event.body)
    try:
        if kind == "image":
            data = object_bytes(sink.store, event.body)
            state.file.write(image_event(media_tag(event), data, event, state.last_step))
            sink.counts["images"] += 1
        elif kind == "table":
            text = table_markdown(*read_table(object_path(sink.store, event.body), MAX_TEXT_ROWS))
            sink._text(state, str(event.body.get("name") or "table"), text, event)
            sink.counts["tables"] += 1
        else:
            sink._text(state, "artifacts", describe(event.body), event)
            sink.counts["artifacts"] += 1
    except Exception as exc:  # this event's failure: the others still go
        sink.problems.note(event, exc)


def image_event(tag: str, png: bytes, event: Event, last_step: int) -> Any:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    width, height, channels = png_size(png)
    image = summary_pb2.Summary.Image(
        height=height, width=width, colorspace=channels, encoded_image_string=png
    )
    step = event.step if event.step is not None else last_step
    return event_pb2.Event(
        wall_time=event.ts / 1e9,
        step=step,
        summary=summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)]),
    )


def png_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, channels) from a PNG's IHDR chunk."""
    if data[:8] != _PNG or data[12:16] != b"IHDR":
        msg = "the image is not a PNG file"
        raise ValueError(msg)
    width, height = struct.unpack(">II", data[16:24])
    return width, height, _COLORSPACE.get(data[25], 3)


def table_markdown(columns: list[str], rows: list[list[Any]], total: int) -> str:
    """A markdown table of `rows` under `columns`; says when `total` has more rows."""
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows),
    ]
    if total > len(rows):
        lines.append(f"\n*first {len(rows)} of {total} rows (all of them are in the store)*")
    return "\n".join(lines)


def describe(body: dict[str, Any]) -> str:
    """One line of text for a plain artifact."""
    parts = [f"`{body.get('name')}`"]
    if body.get("kind"):
        parts.append(f"({body['kind']})")
    parts.append(f"{body.get('bytes')} bytes, sha256 {str(body.get('sha256'))[:16]}")
    parts.append(f"in the store at `{body.get('path')}`")
    return " ".join(parts)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")
