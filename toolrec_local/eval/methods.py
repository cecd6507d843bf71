"""The methods `eval` compares, by name, and what each needs.

Three kinds, one runner:
* score methods (pop, sasrec, bert4rec, sasrec-bert, bert4rec-bert, tool:<attr>) score the whole
  catalogue for a batch of users; the target's rank is exact over all items not in the user's
  history, or over all items with `--history keep` (RecBole's sequential full ranking, the
  paper's baseline rows).
* list methods (p5) return a top-N list for a batch of users without scoring every item (P5's
  beam search, history items left out of the beams unless `--history keep`); the target's rank
  is its position in that list, or none.
* LLM methods (toolrec, toolrec-b, llmrank, chatrec, single, multi, plan) produce a top-N list
  for one user at a time (async); the target's rank is its position in that list, or none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from toolrec_local.errors import ToolrecError

SCORE_METHODS = ("pop", "sasrec", "bert4rec", "sasrec-bert", "bert4rec-bert")
LIST_METHODS = ("p5",)
LLM_METHODS = ("toolrec", "toolrec-b", "llmrank", "chatrec", "single", "multi", "plan")
TOOL_PREFIX = "tool:"
# Table 2: ToolRec's improvement is taken over the best of these (those present in the run).
BASELINES = ("pop", "sasrec", "bert4rec", "sasrec-bert", "bert4rec-bert", "p5", "llmrank", "chatrec")
TOOLREC = "toolrec"
CANDIDATES = 30  # LLMRank, Chat-REC, single and multi rank 30 candidates (paper 4.1.3, 4.3.1)
# `eval --history`: the items score methods rank the target among. LLM methods never return
# history items; under "keep" the agent's retrieval lists hold them (the authors' tools do not
# mask them), so the agent's rows differ between the two.
HISTORY_PROTOCOLS = {
    "exclude": "all items except the user's history",
    "keep": "all items, the user's history included (RecBole's sequential full ranking)",
}
# The agent methods end with a final step (`eval --finish`): "llm" (the authors' final ranking),
# "last-list" (the ablation, recorded as e.g. "toolrec/last-list"), or "both" from one trajectory.
FINISH_METHODS = ("toolrec", "toolrec-b", "plan")
FINISH_CHOICES = ("llm", "last-list", "both")
LAST_LIST = "/last-list"

DESCRIPTIONS = {
    "pop": "most popular items in the training data",
    "sasrec": "SASRec backbone, full ranking",
    "bert4rec": "BERT4Rec backbone, full ranking",
    "sasrec-bert": "SASRec_BERT: SASRec with all-MiniLM-L6-v2 item text features added to the ID embeddings, full ranking",
    "bert4rec-bert": "BERT4Rec_BERT: BERT4Rec with all-MiniLM-L6-v2 item text features added to the ID embeddings, full ranking",
    "p5": "P5: a small T5 trained from scratch generates the next item's id; top 10 by beam search over valid ids",
    "tool:<attr>": "one attribute-oriented retrieval tool alone (SASRec backbone), full ranking",
    "toolrec": "the agent (surrogate user + tools), SASRec backbone",
    "toolrec-b": "the agent with BERT4Rec-backbone tools (ToolRec_B)",
    "llmrank": "the LLM ranks SASRec's top 30 (LLMRank)",
    "chatrec": "the LLM re-ranks SASRec's top 30 given the user profile (Chat-REC)",
    "single": "ablation: the Rank tool alone on SASRec's 30 candidates",
    "multi": "ablation: the Rank tool on SASRec's + the attribute tools' candidates, 30 in all",
    "plan": "ablation: the LLM writes the whole tool plan once, then it is executed",
}


def parse_method_names(text: str, attributes: list[str]) -> list[str]:
    """`pop,sasrec,tool:genre` -> checked, de-duplicated names (order kept)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ToolrecError("no method given", "pass --method, e.g. --method pop,sasrec,toolrec")
    for name in names:
        if name.startswith(TOOL_PREFIX):
            attr = name[len(TOOL_PREFIX):]
            if attr not in attributes:
                raise ToolrecError(f"method {name!r}: the dataset has no attribute {attr!r}",
                                   f"use one of: {', '.join(TOOL_PREFIX + a for a in attributes) or '(none: the dataset has no attributes)'}")
        elif name not in SCORE_METHODS + LIST_METHODS + LLM_METHODS:
            raise ToolrecError(f"unknown method {name!r}",
                               f"use any of: {', '.join(SCORE_METHODS + LIST_METHODS + (TOOL_PREFIX + '<attr>',) + LLM_METHODS)}")
    return list(dict.fromkeys(names))


def needs_llm(name: str) -> bool:
    return name.split("/")[0] in LLM_METHODS  # "toolrec/last-list" is toolrec's variant


def backbone_of(name: str) -> str:
    return "bert4rec" if name in ("bert4rec", "toolrec-b") else "sasrec"


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
                    from toolrec_local.recsys.retrieval import RetrievalTool
                except ModuleNotFoundError as exc:  # pragma: no cover - while recsys is being built
                    raise ToolrecError("the retrieval tools are not available in this build", str(exc)) from None
                loader = RetrievalTool.load
            self._tools[backbone] = loader(self.ds, backbone=backbone)
        return self._tools[backbone]


def build_score_method(name: str, ds, tools: ToolBox) -> ScoreMethod | ListMethod:
    """Any method without an LLM (list methods too)."""
    if name == "pop":
        return ScoreMethod(name, popularity_scores(ds))
    if name == "p5":
        from toolrec_local.recsys.p5_train import P5Recommender

        p5 = P5Recommender.load(ds)
        return ListMethod(name, lambda users, part, n, exclude: p5.lists(users, part, k=n, exclude_history=exclude))
    if name in ("sasrec", "bert4rec", "sasrec-bert", "bert4rec-bert"):
        tool = tools.get(name)
        return ScoreMethod(name, lambda users, part, exclude_history: tool.scores(
            users, None, part=part, exclude_history=exclude_history))
    attr = name[len(TOOL_PREFIX):]
    tool = tools.get("sasrec")
    if attr not in getattr(tool, "attributes", ()):
        raise ToolrecError(f"method {name!r}: no trained {attr!r} tool for {ds.name}",
                           f"train it: toolrec-local tools train {ds.name} --attribute {attr}")
    return ScoreMethod(name, lambda users, part, exclude_history: tool.scores(
        users, attr, part=part, exclude_history=exclude_history))
