"""The documentation stays complete and linked: docs/serve.md names every `serve` flag, YAML key
and sink option, and every relative link of README.md and docs/ reaches a file of the repository."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from traintape.cli.main import build_parser
from traintape.collector.config import SERVE_OPTIONS, TOP_LEVEL
from traintape.sinks._base import RUNNER_OPTIONS
from traintape.sinks.config import SINK_TYPES, sink_class

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _serve_doc() -> str:
    return (ROOT / "docs" / "serve.md").read_text()


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, re.M)}


def _links(path: Path) -> list[str]:
    return _LINK.findall(_FENCE.sub("", path.read_text()))


def test_serve_doc_names_every_serve_flag():
    """Each option string of `traintape serve` (but --help) is in docs/serve.md."""
    doc = _serve_doc()
    flags = [
        flag
        for action in _subparser("serve")._actions
        for flag in action.option_strings
        if flag not in ("-h", "--help")
    ]
    assert flags
    assert [f for f in flags if f"`{f}" not in doc] == []


def test_serve_doc_names_every_yaml_key():
    """Each top-level key a YAML file may set (SERVE_OPTIONS, store, bind, sinks) is in the doc."""
    doc = _serve_doc()
    keys = [*SERVE_OPTIONS, *TOP_LEVEL]
    assert [k for k in keys if f"`{k}`" not in doc] == []


@pytest.mark.parametrize("sink_type", sorted(SINK_TYPES))
def test_serve_doc_names_every_sink_option(sink_type: str):
    """Each sink type has a section, and each of its options and the runner's is in the doc."""
    doc = _serve_doc()
    assert f"### `{sink_type}`" in doc
    section = doc.split(f"### `{sink_type}`", 1)[1].split("\n### ", 1)[0]
    options = sink_class(sink_type).options
    assert [o for o in options if f"`{o}`" not in section] == []
    assert [o for o in RUNNER_OPTIONS if f"`{o}`" not in doc] == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_reach_files_of_the_repository(path: Path):
    """Every relative link (and its #anchor) points at a file inside the repository that exists,
    and at a heading of it that exists."""
    bad = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_relative_to(ROOT):
            bad.append(f"{target}: outside the repository")
        elif not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert bad == []


def test_docs_and_help_point_at_documentation_not_source():
    """Option references in README.md, docs/ and the CLI's help name documentation pages, not
    source files ("see traintape/..." or "see traintape.module")."""
    source_ref = re.compile(r"see traintape[./]")
    texts = {p.name: p.read_text() for p in DOCS}
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    texts.update({f"traintape {name} --help": p.format_help() for name, p in sub.choices.items()})
    texts["traintape --help"] = parser.format_help()
    assert [name for name, text in texts.items() if source_ref.search(text)] == []
