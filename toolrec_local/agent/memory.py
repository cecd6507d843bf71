"""The memory strategy (paper, section 3.4): the item pool directory, the check every tool
output goes through, and the valid lists stored with their tool marks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from toolrec_local.agent.actions import Action, format_action


def interleave(lists: Iterable[Sequence[int]], cap: int | None = None) -> list[int]:
    """The items of several lists taken from each list in turn (round-robin: every list's
    first item, then every list's second...), each item once, at most `cap` of them. Every
    candidate set a prompt shows is built this way (Rank, Finish, the "w/ multi" ablation), so
    a cut never drops one list's tail while another list is shown whole."""
    lists = [list(x) for x in lists]
    out: dict[int, None] = {}
    for depth in range(max((len(x) for x in lists), default=0)):
        for items in lists:
            if depth < len(items):
                out.setdefault(int(items[depth]))
                if cap is not None and len(out) >= cap:
                    return list(out)
    return list(out)


@dataclass
class ToolList:
    """A validated tool output with its mark: which tool, which attribute, which K."""

    action: Action  # Retrieval or Rank (the K actually executed)
    items: list[int]
    # Retrieval: the tool's scores. None for a list the LLM ranked (Rank): its order is the
    # LLM's and it has no scores; prompts show its rank positions, never a retrieval score.
    scores: list[float] | None = None
    # A list no agent action made (the final step's top-up from the backbone) is shown under
    # this mark instead of an action the agent never wrote.
    label: str = ""
    ranks: list[int] | None = None  # a ranked list: each item's position in the LLM's answer (1 = best)

    def __post_init__(self):
        if self.scores is None and self.ranks is None:
            self.ranks = list(range(1, len(self.items) + 1))

    @property
    def mark(self) -> str:
        return self.label or format_action(self.action)

    @property
    def ranked(self) -> bool:
        return self.scores is None

    def only(self, keep: set[int]) -> "ToolList":
        """The same list (same mark) with only the items in `keep`, in order (a ranked list
        keeps each item's original position)."""
        at = [n for n, i in enumerate(self.items) if i in keep]
        pick = lambda values: None if values is None else [values[n] for n in at]  # noqa: E731
        return ToolList(self.action, pick(self.items), pick(self.scores), self.label, pick(self.ranks))


@dataclass(frozen=True)
class Problem:
    """A rejected item: `kind` is unknown | history | repeated | not_candidate; `label` is how
    the tool (or the LLM) wrote it. Prompts phrase it (template `problem`)."""

    kind: str
    label: str


@dataclass
class Check:
    valid: list[int]
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Memory:
    """One user's memory: the catalogue (items 1..n_items), the user's history, and the lists."""

    def __init__(self, n_items: int, history, names: list[str]):
        self.n_items = n_items
        self.history = {int(i) for i in history}
        self.names = names
        self.lists: list[ToolList] = []
        self._best_score: dict[int, float] = {}

    def check(self, items: list[int], allowed: set[int] | None = None, labels: list[str] | None = None,
              history_ok: bool = False) -> Check:
        """Keep items that exist, are not in the history (unless `history_ok`: a retrieval list
        under `--history keep`), are not repeated (and are in `allowed`, when given); name every
        other one. `labels` are how the LLM wrote each item."""
        out = Check([])
        seen: set[int] = set()
        for pos, item in enumerate(items):
            label = labels[pos] if labels else str(item)
            if not 1 <= item <= self.n_items:
                out.problems.append(Problem("unknown", label))
            elif item in self.history and not history_ok:
                out.problems.append(Problem("history", label))
            elif item in seen:
                out.problems.append(Problem("repeated", label))
            elif allowed is not None and item not in allowed:
                out.problems.append(Problem("not_candidate", label))
            else:
                seen.add(item)
                out.valid.append(item)
        return out

    def store(self, action: Action, items: list[int], scores: list[float] | None = None, label: str = "") -> ToolList:
        """Store a list; `scores` None: the LLM's ranking (ToolList.ranked)."""
        entry = ToolList(action, list(items), None if scores is None else list(scores), label)
        self.lists.append(entry)
        for item, score in zip(items, scores or ()):
            if item not in self._best_score or score > self._best_score[item]:
                self._best_score[item] = score
        return entry

    def earlier_copy(self, lst: ToolList) -> ToolList | None:
        """The first list stored before `lst` with the same items and scores (a repeated call
        returns one), or None."""
        for other in self.lists:
            if other is lst:
                break
            if other.items == lst.items and other.scores == lst.scores:
                return other
        return None

    def candidates(self, cap: int | None = None) -> list[int]:
        """Every item gathered so far that may be answered (not in the history: retrieval lists
        hold history items under `--history keep`), once each, taken from the stored lists in
        turn (`interleave`), at most `cap` of them."""
        return interleave(([i for i in lst.items if i not in self.history] for lst in self.lists), cap)

    def gathered(self) -> list[int]:
        """Every item gathered so far that may be answered, once each, in the order they were
        first stored."""
        return list(dict.fromkeys(i for lst in self.lists for i in lst.items if i not in self.history))

    def current(self) -> ToolList | None:
        """The most recent valid list: what Finish returns."""
        return self.lists[-1] if self.lists else None

    def score(self, item: int) -> float:
        """The item's best retrieval score so far (-inf if it was never retrieved)."""
        return self._best_score.get(item, float("-inf"))

    def by_score(self, exclude=()) -> list[int]:
        """Gathered items, best retrieval score first (ties: the order they were stored)."""
        skip = set(exclude)
        order = self.gathered()
        pos = {item: n for n, item in enumerate(order)}
        return sorted((i for i in order if i not in skip), key=lambda i: (-self.score(i), pos[i]))
