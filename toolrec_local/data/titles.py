"""Display names: MovieLens writes "Matrix, The (1999)"; people say "The Matrix"."""

from __future__ import annotations

import re

_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")
_ARTICLE = re.compile(
    r"^(?P<main>.*?), (?P<art>The|A|An|Les|Le|La|L'|Il|Lo|Gli|I|Das|Der|Die|El|Los|Las|Det|De|Den)(?P<rest>( \(.*\))?)$"
)


def split_year(title: str) -> tuple[str, str]:
    """("Matrix, The", "1999") from "Matrix, The (1999)"; the year is "" if there is none."""
    m = _YEAR.search(title)
    if not m:
        return title.strip(), ""
    return title[: m.start()].strip(), m.group(1)


def display_title(title: str) -> str:
    """Move a trailing article to the front and drop the year: "The Matrix"."""
    name, _ = split_year(title)
    m = _ARTICLE.match(name)
    if not m:
        return name
    art = m.group("art")
    sep = "" if art.endswith("'") else " "
    return f"{art}{sep}{m.group('main')}{m.group('rest')}"
