"""Writing a benchmark's figures into docs/benchmarks.md between its own markers."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_marked(text: str, heading: str, begin: str, end: str, docs: Path = DOCS) -> None:
    """Put ``text`` between the markers ``begin`` and ``end`` in ``docs``; the first time,
    append a ``heading`` section holding them. Nothing else in the file is touched, so the
    hand-written reading of the figures outside the markers survives a re-run."""
    current = docs.read_text() if docs.exists() else "# Benchmarks\n"
    first, last = current.find(begin), current.find(end)
    block = f"{begin}\n{text.strip()}\n{end}"
    if 0 <= first < last:
        updated = current[:first] + block + current[last + len(end) :]
    else:
        updated = current.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    docs.write_text(updated)
