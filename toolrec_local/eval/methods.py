"""The kinds of method `eval` runs, and the pieces the non-LLM ones are built from (the
methods themselves, by name, are catalog.py's table).

* score methods score the whole catalogue for a batch of users; the target's rank is exact
  over all items not in the user's history, or over all items with `--history keep`
  (RecBole's sequential full ranking, the paper's baseline rows).
* list methods return a top-N list for a batch of users without scoring every item (P5's
  beam search, history items left out of the beams unless `--history keep`); the target's rank
  is its position in that list, or none.
* LLM methods produce a top-N list for one user at a time (async); the target's rank is its
  position in that list, or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from toolrec_local.errors import ToolrecError

TOOL_PREFIX = "tool:"


@dataclass
class Outcome:
    """What an LLM method produced for one user."""

    final: list[int]  # internal item ids, best first
    stats: dict = field(default_factory=dict)  # llm_calls, tokens_in/out, latency_s, retries, repairs, grammar_violations, rounds
    trajectory: dict | None = None
    # Further records from the same run, by method name (e.g. "toolrec/last-list" with
    # --finish both); the runner writes each as its own row.
    variants: dict[str, "Outcome"] = field(default_factory=dict)
    saved_s: float = 0.0  # a variant: wall time of the run it did not need (e.g. the final LLM step)


class ScoreMethod:
    """`score(users, part, exclude_history=...)` -> (len(users), n_items + 1) scores. With
    exclude_history the callable may set history items to -inf (the runner masks them anyway);
    without it, it must score them like any other item."""

    kind = "score"

    def __init__(self, name: str, score: Callable[..., np.ndarray]):
        self.name = name
        self._score = score

    def scores(self, users: np.ndarray, part: str, exclude_history: bool = True) -> np.ndarray:
        return self._score(users, part, exclude_history=exclude_history)


class ListMethod:
    """A method that returns a ranked top-N per user, for a batch of users at once."""

    kind = "list"

    def __init__(self, name: str, lists: Callable[..., list[list[int]]]):
        self.name = name
        self._lists = lists

    def lists(self, users: np.ndarray, part: str, n: int, exclude_history: bool = True) -> list[list[int]]:
        """Per user, up to n distinct internal item ids, best first (none from the history
        unless exclude_history is False)."""
        return self._lists(users, part, n, exclude_history)


class LLMMethod:
    kind = "llm"

    def __init__(self, name: str, run: Callable, variants: tuple[str, ...] = ()):
        self.name = name
        self._run = run
        self.variants = tuple(variants)  # the names of the Outcome.variants its runs return

    async def run(self, user: int, seed: int, part: str) -> Outcome:
        return await self._run(user, seed, part)


def popularity_scores(ds) -> Callable[..., np.ndarray]:
    pop = ds.train_popularity.astype(np.float64)

    def score(users: np.ndarray, part: str, exclude_history: bool = True) -> np.ndarray:
        out = np.repeat(pop[None, :], len(users), axis=0)
        out[:, 0] = -np.inf
        return out

    return score


class ToolBox:
    """Retrieval tools loaded once per process, per backbone. `loader(ds, backbone)` is
    RetrievalTool.load unless a test passes another."""

    def __init__(self, ds, loader: Callable | None = None):
        self.ds = ds
        self._loader = loader
        self._tools: dict[str, object] = {}

    def get(self, backbone: str):
        if backbone not in self._tools:
            loader = self._loader
            if loader is None:
                try:
                    from toolrec_local.recsys.attributes.retrieval import RetrievalTool
                except ModuleNotFoundError as exc:  # pragma: no cover - while recsys is being built
                    raise ToolrecError("the retrieval tools are not available in this build", str(exc)) from None
                loader = RetrievalTool.load
            self._tools[backbone] = loader(self.ds, backbone=backbone)
        return self._tools[backbone]


def popularity(name: str, ds, tools: ToolBox) -> ScoreMethod:
    return ScoreMethod(name, popularity_scores(ds))


def p5_lists(name: str, ds, tools: ToolBox) -> ListMethod:
    from toolrec_local.recsys.p5.train import P5Recommender

    p5 = P5Recommender.load(ds)
    return ListMethod(name, lambda users, part, n, exclude: p5.lists(users, part, k=n, exclude_history=exclude))


def backbone_scores(name: str, ds, tools: ToolBox) -> ScoreMethod:
    """A sequential recommender's full ranking (the retrieval tool of that backbone, no attribute)."""
    tool = tools.get(name)
    return ScoreMethod(name, lambda users, part, exclude_history: tool.scores(
        users, None, part=part, exclude_history=exclude_history))


def attribute_scores(name: str, ds, tools: ToolBox) -> ScoreMethod:
    """tool:<attr>: one attribute-oriented retrieval tool alone (SASRec backbone)."""
    attr = name[len(TOOL_PREFIX):]
    tool = tools.get("sasrec")
    if attr not in getattr(tool, "attributes", ()):
        raise ToolrecError(f"method {name!r}: no trained {attr!r} tool for {ds.name}",
                           f"train it: toolrec-local tools train {ds.name} --attribute {attr}")
    return ScoreMethod(name, lambda users, part, exclude_history: tool.scores(
        users, attr, part=part, exclude_history=exclude_history))
