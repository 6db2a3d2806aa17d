"""Writing one benchmark's section of docs/BENCHMARKS.md, leaving the other sections alone.

Each benchmark script owns one ``## ...`` section and rewrites its measured part on every run.
Text a person wrote under the line ``KEEP`` in that section (reading the numbers, what is left)
survives the rewrite: numbers come from the command, judgement from people.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

KEEP = "<!-- written by hand: kept when the benchmark rewrites this section -->"


def write_section(path: str, heading: str, text: str) -> None:
    """Replace the ``heading`` section of ``path`` with ``text`` (append it if absent),
    keeping the hand-written part of the old section that follows :data:`KEEP`."""
    old = "# Benchmarks\n"
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            old = fh.read()
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        section = "".join(lines[start:end])
        kept = section[section.index(KEEP):].rstrip("\n") + "\n" if KEEP in section else ""
        body = text.rstrip("\n") + "\n" + ("\n" + kept if kept else "")
        new = "".join(lines[:start]) + body + ("\n" + "".join(lines[end:]) if end < len(lines) else "")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(new)


def command_line() -> str:
    """The command that ran this benchmark, as docs/BENCHMARKS.md quotes it."""
    args = " ".join(sys.argv[1:])
    return f"OMP_NUM_THREADS=1 .venv/bin/python bench/{os.path.basename(sys.argv[0])} {args}".strip()


def publish(path: str, heading: str, table: str, section: Callable[[str], str], *, quick: bool) -> None:
    """Print ``table``; unless ``quick``, write the ``heading`` section of ``path`` that
    ``section(command)`` makes from the command that ran."""
    print()
    print(table)
    if quick:
        return
    write_section(os.path.abspath(path), heading, section(command_line()))
    print(f"\nwrote the {heading!r} section of {os.path.abspath(path)}")
