"""``logstore docs``: the README, as installed with the package.

The README is the package's long description, so every installation carries it in its
metadata (``importlib.metadata``): the documentation is there wherever the command is, with or
without a checkout. A section is chosen by (part of) its heading.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from typing import List, Optional, Tuple

import click

from ..errors import ConfigError
from .common import operator
from .output import isatty

_HEADING = re.compile(r"^(#{1,4}) (.+)$")


def readme() -> str:
    """The README of the installed distribution (its long description)."""
    try:
        md = importlib.metadata.metadata("logstore")
    except importlib.metadata.PackageNotFoundError:
        return ""
    text = md.json.get("description") if hasattr(md, "json") else None
    return text if isinstance(text, str) else (md.get_payload() or "")  # type: ignore[attr-defined]


def sections(text: str) -> List[Tuple[int, str, int, int]]:
    """``(level, heading, start, end)`` of every heading of ``text`` (lines, end exclusive);
    headings inside code blocks are not headings."""
    lines = text.splitlines()
    found: List[Tuple[int, str, int]] = []
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            found.append((len(m.group(1)), m.group(2).strip(), i))
    out = []
    for k, (level, heading, start) in enumerate(found):
        end = len(lines)
        for level2, _, start2 in found[k + 1:]:
            if level2 <= level:
                end = start2
                break
        out.append((level, heading, start, end))
    return out


def section(text: str, query: str) -> Optional[str]:
    """The section whose heading is ``query`` (case-insensitive), else the first one whose
    heading contains it; None if none does."""
    q = query.strip().lower()
    found = sections(text)
    chosen = [s for s in found if s[1].lower() == q] or [s for s in found if q in s[1].lower()]
    if not chosen:
        return None
    _, _, start, end = chosen[0]
    return "\n".join(text.splitlines()[start:end]).rstrip() + "\n"


@click.command("docs")
@click.argument("topic", required=False)
@click.option("--list", "list_sections", is_flag=True, help="List the sections.")
@operator
def docs(topic: Optional[str], list_sections: bool) -> None:
    """Print logstore's documentation (the README installed with the package), or the
    section whose heading matches TOPIC.

    \b
    Examples:
      logstore docs --list
      logstore docs "command line"
      logstore docs configuration
      logstore docs | less
    """
    text = readme()
    if not text:
        raise ConfigError("the README is not in this installation's metadata (an install "
                          "from a source tree without README.md?): read README.md of the "
                          "logstore source")
    if list_sections:
        for level, heading, _, _ in sections(text):
            click.echo("  " * (level - 1) + heading)
        return
    if topic is not None:
        found = section(text, topic)
        if found is None:
            raise ConfigError(f"no section of the documentation matches {topic!r} "
                              f"(`logstore docs --list` lists them)")
        text = found
    if isatty(sys.stdout):
        click.echo_via_pager(text)
    else:
        click.echo(text, nl=False)
