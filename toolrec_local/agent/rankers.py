"""The two remedies for a small model's list ranking (`--rank-by`, `--rank-shuffles`), used by
every LLM ranking step through `tools.rank_lists`:

* score (LlamaRec's verbalizer): one request shows the candidates under single-token labels
  (llm.labels.LABELS: A-Z, a-z) and asks for one label under a choice constraint; the label's
  log-probability as the answer's one token is its candidate's score, and the ranking is the
  candidates by score, ties (a label missing from the returned top log-probabilities counts
  as -inf) by the order they were shown in. Valid by construction: every candidate gets a
  score, so the top k are k distinct candidates outside the history.
  More than 52 candidates: they are dealt round-robin into ceil(n / 52) chunks of near-equal
  size (candidate j into chunk j mod chunks), one request each, and merged by log-probability.
  Round-robin, because the candidates come best-retrieved first (taken from each list in
  turn): every chunk then holds a similar mix, so the per-chunk log-probabilities (each
  normalised over its own labels by the mask) are comparable, rather than the first chunk's
  strong candidates competing only with each other.
* shuffles (LLMRank's bootstrapping, generate only): N more rankings of the same candidates,
  each with every shown list's items in a seeded shuffled order, aggregated with the first by
  Borda count (an item at position p of a k-list gets k - p points), ties by the first
  ranking's order, then by the candidates' order.
"""

from __future__ import annotations

import math

import numpy as np

from toolrec_local.agent.itemlists import option
from toolrec_local.agent.memory import ToolList
from toolrec_local.llm.labels import LABELS, label_scores
from toolrec_local.llm.protocol import ChoiceGrammar


def chunks(candidates: list[int], size: int = len(LABELS)) -> list[list[int]]:
    """`candidates` dealt round-robin into ceil(n / size) chunks of at most `size`."""
    n = max(1, math.ceil(len(candidates) / size))
    return [candidates[j::n] for j in range(n)]


def labelled(state, chunk: list[int]) -> list[tuple[str, str]]:
    """(label, option) for each candidate of a chunk, in its order."""
    ds, names = state.ctx.dataset, state.ctx.config.rank_with_names
    return [(label, option(ds.item_ids[i], ds.item_names[i], names)) for label, i in zip(LABELS, chunk)]


def by_score(candidates: list[int], scores: dict[int, float]) -> list[int]:
    """The candidates by descending score, ties by their order in `candidates`."""
    return [candidates[j] for j in sorted(range(len(candidates)), key=lambda j: (-scores[candidates[j]], j))]


async def score_rank(state, candidates: list[int], shown: list[ToolList], attribute, k: int, rnd, *,
                     head: str, style: str, final: bool, extra: dict) -> list[int]:
    """The top k of `candidates` by label log-probability (see the module's doc); each
    request's cost goes to `rnd`."""
    ctx, cfg = state.ctx, state.ctx.config
    scores: dict[int, float] = {}
    for chunk in chunks(candidates):
        pairs = labelled(state, chunk)
        labels = tuple(label for label, _ in pairs)
        rnd.labelled.append(list(chunk))
        messages = ctx.renderer.rank_messages(head, shown, attribute, k, cfg.rank_with_names, [], style=style,
                                              final=final, labelled=pairs, **extra)
        reply, wall = await ctx.ask(messages, ChoiceGrammar(labels), 1, state.next_seed(), top_logprobs=len(labels),
                                   ranking=True)
        state.llm_s += wall
        rnd.usage.add(reply)
        got = label_scores(reply.logprobs, labels)
        scores.update((item, got[label]) for item, label in zip(chunk, labels))
    return by_score(candidates, scores)[:k]


def shuffled(lists: list[ToolList], rng: np.random.Generator) -> list[ToolList]:
    """The same lists (marks, order of lists) with each list's items in a shuffled order, each
    item keeping its score or rank position."""
    out = []
    for lst in lists:
        at = rng.permutation(len(lst.items))
        pick = lambda values: None if values is None else [values[n] for n in at]  # noqa: E731
        out.append(ToolList(lst.action, pick(lst.items), pick(lst.scores), lst.label, pick(lst.ranks)))
    return out


def shuffle_rng(state, j: int) -> np.random.Generator:
    """Shuffle j of this ranking: seeded by the run's seed, the user and the step's place."""
    return np.random.default_rng([state.seed, state.user, state.calls, j])


def borda(rankings: list[list[int]], candidates: list[int], k: int) -> list[int]:
    """The top k by Borda count over `rankings` (the first is the original order's)."""
    points: dict[int, int] = {}
    for ranking in rankings:
        for p, item in enumerate(ranking):
            points[item] = points.get(item, 0) + len(ranking) - p
    first = {item: p for p, item in enumerate(rankings[0])}
    place = {item: p for p, item in enumerate(candidates)}
    order = sorted(points, key=lambda i: (-points[i], first.get(i, len(first)), place.get(i, len(place)), i))
    return order[:k]
