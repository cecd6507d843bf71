"""The three actions of a surrogate-user turn, their canonical text, and the parsers.

Canonical text is exactly what `ActionGrammar` enforces (see `toolrec_local.llm.protocol`):

    Thought: <one line>
    Action: Retrieval[<attr>, <K>] | Rank[<attr>, <K>] | Finish

`parse_turn(text, strict=True)` reads only that format (grammar mode: anything else is a
grammar violation). `strict=False` is the tolerant reader for free-text mode: case, extra
spaces, "Action 2:" numbering, a missing K, and trailing text are accepted; what it cannot
read becomes a `ParseFailure` whose message the loop observes as "Invalid action: ...".
Both readers are regular expressions over the whole text, never string splitting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

# The grammar's free-word attribute of Rank; a Retrieval attribute must be one of the dataset's.
RANK_ATTR_RE = re.compile(r"[A-Za-z][A-Za-z0-9 _&'-]{0,39}")
_SPACES = re.compile(r"\s+")


def _norm_attr(attribute: str | None) -> str | None:
    """One spelling per attribute: spaces collapsed and trimmed; "None" (any case) is None."""
    if attribute is None:
        return None
    attribute = _SPACES.sub(" ", attribute).strip()
    return None if attribute.lower() in ("none", "") else attribute


@dataclass(frozen=True)
class Retrieval:
    attribute: str | None  # a dataset attribute, or None for the plain backbone
    k: int

    def __post_init__(self):
        object.__setattr__(self, "attribute", _norm_attr(self.attribute))


@dataclass(frozen=True)
class Rank:
    attribute: str | None  # free words ("actors", "popularity") or None
    k: int

    def __post_init__(self):
        object.__setattr__(self, "attribute", _norm_attr(self.attribute))


@dataclass(frozen=True)
class Finish:
    pass


Action = Union[Retrieval, Rank, Finish]


@dataclass(frozen=True)
class ParseFailure:
    """Why a text is not an action; observed by the agent as "Invalid action: <message>"."""

    message: str


def format_action(action: Action) -> str:
    if isinstance(action, Finish):
        return "Finish"
    name = "Retrieval" if isinstance(action, Retrieval) else "Rank"
    return f"{name}[{action.attribute or 'None'}, {action.k}]"


def format_turn(thought: str, action: Action) -> str:
    return f"Thought: {one_line(thought)}\nAction: {format_action(action)}"


def one_line(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


# ---- strict: exactly the grammar's format ------------------------------------------------
_STRICT = re.compile(
    r"Thought: (?P<thought>[^\n]*)\nAction: (?:"
    r"(?P<tool>Retrieval|Rank)\[(?P<attr>[^\],\n]+), (?P<k>[1-9][0-9]*)\]|(?P<finish>Finish))"
)

# ---- tolerant: what free text tends to look like --------------------------------------------
_THOUGHT = re.compile(r"thought\s*\d*\s*[:：]\s*(?P<thought>[^\n]*)", re.I)
_ACTION_LABEL = re.compile(r"action\s*\d*\s*[:：]", re.I)
_TOOL = re.compile(
    r"\b(?P<tool>retrieval|retrieve|rank|finish)\b\s*"
    r"(?:\[\s*(?P<attr>[^\],\[\n]*?)\s*(?:,\s*(?P<k>-?\d+)\s*)?\])?",
    re.I,
)


def parse_turn(text: str, attributes: tuple[str, ...], *, strict: bool, default_k: int = 20):
    """(thought, Action) or (thought, ParseFailure). `attributes` are the retrieval tool's."""
    if strict:
        return _parse_strict(text, attributes)
    return _parse_tolerant(text, attributes, default_k)


def _parse_strict(text: str, attributes: tuple[str, ...]):
    m = _STRICT.fullmatch(text.rstrip())  # a trailing newline/EOS space is not a violation
    if not m:
        return one_line(text[:80]), ParseFailure("not in the format 'Thought: ...\\nAction: ...'")
    thought = m["thought"].strip()
    if m["finish"]:
        return thought, Finish()
    return thought, _make(m["tool"], m["attr"], int(m["k"]), attributes)


def _parse_tolerant(text: str, attributes: tuple[str, ...], default_k: int):
    tm = _THOUGHT.search(text)
    thought = one_line(tm["thought"]) if tm else ""
    # Prefer a tool named after an "Action:" label; otherwise the first tool anywhere after
    # the thought line (a thought may itself mention "rank").
    label = _ACTION_LABEL.search(text, tm.end() if tm else 0)
    start = label.end() if label else (tm.end() if tm else 0)
    if not tm and label:  # "I will ask by genre.\nAction: ..." - the thought came unlabelled
        thought = one_line(text[: label.start()])[:200]
    am = _TOOL.search(text, start)
    if not am:
        return thought, ParseFailure("no Retrieval[attribute, K], Rank[attribute, K] or Finish found")
    tool = am["tool"].lower()
    if tool == "finish":
        return thought, Finish()
    if am["attr"] is None:
        return thought, ParseFailure(f"{am['tool']} needs [attribute, K]")
    k = default_k if am["k"] is None else int(am["k"])
    return thought, _make("Rank" if tool == "rank" else "Retrieval", am["attr"], k, attributes)


def _make(tool: str, attr: str, k: int, attributes: tuple[str, ...]):
    attr = _norm_attr(attr)
    if tool == "Retrieval":
        if attr is not None:
            by_lower = {a.lower(): a for a in attributes}
            if attr.lower() not in by_lower:
                known = ", ".join(("None", *attributes))
                return ParseFailure(f"Retrieval has no attribute {attr!r} (use one of {known})")
            attr = by_lower[attr.lower()]
        return Retrieval(attr, k)
    if attr is not None and not RANK_ATTR_RE.fullmatch(attr):
        return ParseFailure(f"Rank attribute {attr!r} must be a few plain words")
    return Rank(attr, k)
