"""Item lists the LLM writes (Rank's output): the options the grammar offers, and the reader.

An option is "<raw id>" or "<raw id>, <name>" (`ItemListGrammar`). Under the grammar the
answer is exactly k option lines; in free-text mode the reader is tolerant: numbering,
bullets, "ID 50", a trailing year or score, an item named without its id. Each line is
matched against the candidates by id, then by exact name, then by normalised name; a line
that names a catalogue item outside the candidates is kept as such so memory can reject it
by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BULLET = re.compile(r"^\s*(?:[-*•>]+|\(?\d{1,3}[.)]|#\d{1,3}[.:]?|top\s*\d+[.:])\s+", re.I)
_ID_FIRST = re.compile(r"^\s*(?:id\s*[:#]?\s*)?(?P<id>[A-Za-z0-9_-]+)\s*(?:[,:;|\t]|\s-\s|$)", re.I)
_TRAILER = re.compile(r"\s*(?:\(\d{4}\)|,\s*-?\d+(?:\.\d+)?|\s-\s.*)\s*$")
_WORDS = re.compile(r"[a-z0-9]+")
_ARTICLES = {"the", "a", "an", "la", "le", "les", "il", "das", "der", "die", "el"}


def normalise_name(name: str) -> str:
    """Case, punctuation and articles removed: "Matrix, The" and "the matrix" agree."""
    return " ".join(w for w in _WORDS.findall(name.lower()) if w not in _ARTICLES)


def option(raw_id: str, name: str, with_name: bool) -> str:
    """One grammar option. Names are flattened to one line (an option is one line)."""
    return f"{raw_id}, {' '.join(name.split())}" if with_name else raw_id


@dataclass(frozen=True)
class Entry:
    """One line of an answer: what it said, and the catalogue item it names (0 = none)."""

    text: str
    item: int


class ItemReader:
    """Reads answers about one candidate set. `catalogue` maps raw id -> item (the dataset's
    `item_index`); `names` is the dataset's `item_names`."""

    def __init__(self, candidates: list[int], item_ids: list[str], names: list[str], catalogue: dict[str, int]):
        self.candidates = list(candidates)
        self.item_ids, self.names, self.catalogue = item_ids, names, catalogue
        self._exact = {names[i]: i for i in reversed(self.candidates)}
        self._norm = {normalise_name(names[i]): i for i in reversed(self.candidates)}

    def options(self, with_name: bool) -> tuple[str, ...]:
        return tuple(option(self.item_ids[i], self.names[i], with_name) for i in self.candidates)

    def exact(self, text: str, with_name: bool, k: int) -> bool:
        """Is `text` exactly k distinct option lines (what the grammar guarantees)?"""
        lines = text.rstrip("\n").split("\n")
        allowed = set(self.options(with_name))
        return len(lines) == k and len(set(lines)) == k and all(line in allowed for line in lines)

    def read(self, text: str) -> list[Entry]:
        entries = []
        for line in text.splitlines():
            if not line.strip():
                continue
            item = self._resolve(line)
            if item or _looks_like_item(line):
                entries.append(Entry(line.strip(), item))
        return entries

    def _resolve(self, line: str) -> int:
        for variant in _variants(line):
            m = _ID_FIRST.match(variant)
            if m and m["id"] in self.catalogue:
                return self.catalogue[m["id"]]
            name = _strip_trailers(variant)
            if m and m["id"] and name[len(m["id"]):].lstrip(",:;|\t -"):
                name = name[len(m["id"]):].lstrip(",:;|\t -")  # "999, Some Name": id unknown, try the name
            if name in self._exact:
                return self._exact[name]
            norm = normalise_name(name)
            if norm and norm in self._norm:
                return self._norm[norm]
        return 0


def _strip_trailers(text: str) -> str:
    """Drop trailing "(1995)", ", 0.93" and " - comment" parts, however many there are."""
    previous = None
    while previous != text:
        previous, text = text, _TRAILER.sub("", text).strip()
    return text


def _variants(line: str) -> list[str]:
    """The line as written, then without a leading bullet or "1." numbering."""
    stripped = _BULLET.sub("", line, count=1)
    return [line.strip()] if stripped == line else [line.strip(), stripped.strip()]


def _looks_like_item(line: str) -> bool:
    """A line that tried to name an item (starts with a number, a bullet, or an id-like word
    with a digit before a comma, as "B00X4WHP5E, Some Title"), as opposed to chatter such as
    "Here are the movies:"."""
    return bool(_BULLET.match(line) or re.match(r"^\s*(?:id\s*)?\d", line, re.I)
                or re.match(r"^\s*[A-Za-z_-]*\d[A-Za-z0-9_-]*\s*,", line))
