"""The one description of what the LLM may write, and its translations.

The constraint types live in `protocol.py` (`ActionGrammar`, `ItemListGrammar`,
`ChoiceGrammar`); this module turns them into

* `to_regex(c)`: a regex in the common subset accepted by vLLM's xgrammar, guidance and
  outlines server backends and by llguidance in process (no look-around, no back-references,
  no large bounded repetitions: lengths are bounded through `max_tokens`);
* `to_json_schema(c)`: a strict JSON schema for the OpenAI API, with `render_json(c, data)`
  turning the API's JSON back into the canonical text, so the agent sees one format;
* `conforms(c, text)`: whether a text is in the language (regex plus distinctness for lists).

No regex can say "distinct": backends build item lists from `to_regex` up to the first
repeated line, then one line at a time (`option_regex`, `next_line_regex`) over the options
not chosen yet, so the lines are distinct by construction (backends/stepwise.py).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from toolrec_local.llm.protocol import ActionGrammar, ChoiceGrammar, Constraint, ItemListGrammar

THOUGHT_PREFIX = "Thought: "
ACTION_PREFIX = "Action: "
RANK_WORDS = r"[A-Za-z][A-Za-z0-9 _&'-]{0,39}"  # protocol.py: free words for a Rank attribute
THOUGHT_LINE = r"[^\n]+"  # bounded by max_tokens, never by {m,n} (xgrammar compile time)

# Characters that mean something in a regex outside a character class. Everything else is
# written literally: some engines reject escapes such as "\ " or "\&" that `re.escape` emits.
_META = set(r"\.^$|?*+()[]{}")


def escape(text: str) -> str:
    """A literal for `text` that every backend's regex dialect reads the same way."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"an option may not contain a line break: {text!r}")
    return "".join("\\" + ch if ch in _META else ch for ch in text)


def int_range_regex(lo: int, hi: int) -> str:
    """Exactly the decimal integers lo..hi (no leading zeros), as an alternation of digit
    patterns, e.g. 1..50 -> `[1-9]|[1-4][0-9]|50`."""
    if not 0 <= lo <= hi:
        raise ValueError(f"bad range {lo}..{hi}")
    parts: list[str] = []
    for width in range(len(str(lo)), len(str(hi)) + 1):
        a = max(lo, 10 ** (width - 1) if width > 1 else 0)
        b = min(hi, 10**width - 1)
        if a <= b:
            parts.extend(_same_width(str(a), str(b)))
    return "|".join(parts)


def _same_width(a: str, b: str) -> list[str]:
    """Patterns for the integers a..b written with the same number of digits."""
    if a == b:
        return [a]
    if len(a) == 1:
        return [f"[{a}-{b}]"]
    if a[1:] == "0" * (len(a) - 1) and b[1:] == "9" * (len(b) - 1):
        head = a[0] if a[0] == b[0] else f"[{a[0]}-{b[0]}]"
        return [head + "[0-9]" * (len(a) - 1)]
    if a[0] == b[0]:
        return [a[0] + p for p in _same_width(a[1:], b[1:])]
    rest = len(a) - 1
    out = [a[0] + p for p in _same_width(a[1:], "9" * rest)]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        out += _same_width(str(int(a[0]) + 1) + "0" * rest, str(int(b[0]) - 1) + "9" * rest)
    out += [b[0] + p for p in _same_width("0" * rest, b[1:])]
    return out


def _alternation(options: tuple[str, ...]) -> str:
    if not options:
        raise ValueError("no options to choose from")
    return "(" + "|".join(escape(o) for o in options) + ")"


def action_regex(g: ActionGrammar) -> str:
    """The action line alone, after "Action: " (used when a turn is finished in two steps)."""
    attrs = tuple(dict.fromkeys((*g.retrieval_attributes, "None")))
    k = f"({int_range_regex(1, g.max_k)})"
    return (
        rf"(Retrieval\[{_alternation(attrs)}, {k}\]"
        rf"|Rank\[(None|{RANK_WORDS}), {k}\]"
        r"|Finish)"
    )


def option_regex(options: tuple[str, ...]) -> str:
    """Exactly one of `options`."""
    return _alternation(options)


def next_line_regex(options: tuple[str, ...]) -> str:
    """A line break, then one of `options`: how an item list grows by one line. The line
    break belongs to the continuation because chat templates strip a trailing newline from
    a partial assistant message."""
    return r"\n" + _alternation(options)


def next_lines_regex(options: tuple[str, ...], n: int) -> str:
    """`n` more lines, each a line break and one of `options` (repeats are not excluded: the
    caller keeps the lines before the first repeat)."""
    return next_line_regex(options) * n


@lru_cache(maxsize=64)
def _regex_cached(c: Constraint) -> str:
    if isinstance(c, ActionGrammar):
        return rf"{escape(THOUGHT_PREFIX)}{THOUGHT_LINE}\n{escape(ACTION_PREFIX)}{action_regex(c)}"
    if isinstance(c, ChoiceGrammar):
        return option_regex(c.options)
    if isinstance(c, ItemListGrammar):
        one = option_regex(c.options)
        # k is small (a top-K); spelled out rather than as {k-1} for the same reason as above
        return one + (r"\n" + one) * (c.k - 1)
    raise TypeError(f"not a constraint: {c!r}")


def to_regex(c: Constraint) -> str:
    """The regex of the whole output. For item lists it cannot express distinctness;
    `conforms` adds that check and backends build lists line by line."""
    return _regex_cached(c)


@lru_cache(maxsize=64)
def _compiled(c: Constraint) -> re.Pattern:
    return re.compile(to_regex(c))


def conforms(c: Constraint, text: str) -> bool:
    """Whether `text` is exactly in the language of `c` (None accepts anything)."""
    if c is None:
        return True
    if isinstance(c, ItemListGrammar):  # the same language as the regex, plus distinct, in O(n)
        lines = text.split("\n")
        return len(lines) == c.k == len(set(lines)) and set(lines) <= _option_set(c.options)
    if isinstance(c, ChoiceGrammar):
        return text in _option_set(c.options)
    return _compiled(c).fullmatch(text) is not None


@lru_cache(maxsize=64)
def _option_set(options: tuple[str, ...]) -> frozenset[str]:
    return frozenset(options)


# --- OpenAI strict JSON schema ----------------------------------------------------------

def _obj(props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def to_json_schema(c: Constraint) -> dict:
    """A strict-mode JSON schema (`response_format={"type": "json_schema", ...}`) whose
    answers `render_json` turns into text that `conforms` to `c`. Distinctness of list items
    cannot be stated in strict mode; the OpenAI backend repairs duplicates by asking again."""
    if isinstance(c, ActionGrammar):
        attrs = list(dict.fromkeys((*c.retrieval_attributes, "None")))
        ks = list(range(1, c.max_k + 1))
        return _obj({
            "thought": {"type": "string", "description": "one line of reasoning"},
            "action": {"anyOf": [
                _obj({"tool": {"type": "string", "enum": ["Retrieval"]},
                      "attribute": {"type": "string", "enum": attrs},
                      "k": {"type": "integer", "enum": ks}}),
                _obj({"tool": {"type": "string", "enum": ["Rank"]},
                      "attribute": {"type": "string", "pattern": f"^(None|{RANK_WORDS})$"},
                      "k": {"type": "integer", "enum": ks}}),
                _obj({"tool": {"type": "string", "enum": ["Finish"]}}),
            ]},
        })
    if isinstance(c, ItemListGrammar):
        return _obj({"items": {"type": "array", "items": {"type": "string", "enum": list(c.options)},
                               "minItems": c.k, "maxItems": c.k}})
    if isinstance(c, ChoiceGrammar):
        return _obj({"choice": {"type": "string", "enum": list(c.options)}})
    raise TypeError(f"not a constraint: {c!r}")


def render_json(c: Constraint, data: dict | str) -> str:
    """Canonical text for a JSON answer to `to_json_schema(c)`. Raises ValueError when the
    answer is outside the schema (the caller decides whether that is the server's fault).
    For item lists, duplicates are dropped, so the result may hold fewer than k lines."""
    if isinstance(data, str):
        data = json.loads(data)
    if isinstance(c, ActionGrammar):
        thought = " ".join(str(data["thought"]).split()) or "..."
        act = data["action"]
        tool = act["tool"]
        action = "Finish" if tool == "Finish" else f"{tool}[{act['attribute']}, {int(act['k'])}]"
        text = f"{THOUGHT_PREFIX}{thought}\n{ACTION_PREFIX}{action}"
    elif isinstance(c, ItemListGrammar):
        items = list(dict.fromkeys(data["items"]))
        bad = [i for i in items if i not in set(c.options)]
        if bad or not items:
            raise ValueError(f"items outside the candidate set: {bad[:3]}")
        return "\n".join(items)
    elif isinstance(c, ChoiceGrammar):
        text = str(data["choice"])
    else:
        raise TypeError(f"not a constraint: {c!r}")
    if not conforms(c, text):
        raise ValueError(f"answer outside the grammar: {text!r}")
    return text
