"""The baselines that rank given candidates with the LLM, no agent loop: LLMRank, Chat-REC and
the "w/ single" / "w/ multi" ablations. Each takes retrieval lists (`top_candidates`, or
`multi_candidates`: SASRec's and every attribute tool's) and asks the Rank tool once
(`llm_rank`), under its own prompt (`style`)."""

from __future__ import annotations

import time

from toolrec_local.agent.actions import Rank, Retrieval, format_action
from toolrec_local.agent.context import AgentContext
from toolrec_local.agent.memory import ToolList, interleave
from toolrec_local.agent.tools import new_state, rank_lists
from toolrec_local.agent.trajectory import Round

CANDIDATES = 30  # LLMRank, Chat-REC, single and multi rank 30 candidates (paper 4.1.3, 4.3.1)


def top_candidates(tool, user: int, part: str, total: int = CANDIDATES) -> list[ToolList]:
    """The backbone's top `total`, as one ToolList under its tool mark with its scores."""
    pairs = tool.retrieve(user, None, total, part=part)
    return [ToolList(Retrieval(None, len(pairs)), [int(i) for i, _ in pairs], [float(s) for _, s in pairs])]


def multi_candidates(tool, user: int, attributes: list[str], part: str, total: int = CANDIDATES) -> list[ToolList]:
    """The "w/ multi" candidates: SASRec's and each attribute tool's top `total`, merged by
    taking from each list in turn until `total` distinct items (`memory.interleave`, as Rank
    and the final step do); each list is returned with only those items, under its tool mark
    with its scores (ToolLists)."""
    lists = []
    for attr in (None, *attributes):
        pairs = tool.retrieve(user, attr, min(tool.dataset.n_items, total), part=part)
        lists.append(ToolList(Retrieval(attr, len(pairs)), [int(i) for i, _ in pairs], [float(s) for _, s in pairs]))
    keep = set(interleave((lst.items for lst in lists), total))
    return [lst.only(keep) for lst in lists]


async def llm_rank(ctx: AgentContext, user: int, lists: list[ToolList], k: int, attribute: str | None = None,
                   include_profile: bool = True, *, part: str = "test", seed: int = 0,
                   style: str = "rank", final: bool = False) -> tuple[list[int], Round]:
    """The Rank tool on given candidate lists, each shown under its tool mark with its scores.
    Items in the user's history, unknown or repeated within a list are dropped first; k is
    clamped to what is left. `style` picks a baseline's own prompt ("chatrec", "llmrank");
    `final`: the final step's prompt (the ranking of everything gathered).
    Returns (top-k items, the one round it took: its cost, counters and note)."""
    state, _ = new_state(ctx, user, part, seed)
    for lst in lists:  # stored, so that a repair fills by retrieval score
        score = dict(zip(lst.items, lst.scores or ()))
        valid = state.memory.check([int(i) for i in lst.items]).valid
        if valid:
            state.memory.store(lst.action, valid, None if lst.ranked else [score[i] for i in valid])
    cands = interleave(lst.items for lst in state.memory.lists)
    rnd = Round(1, action=format_action(Rank(attribute, max(1, k))))
    if not cands:
        return [], rnd
    started = time.perf_counter()
    head = state.head if include_profile else ctx.renderer.head(user, state.history, with_profile=False)
    items = await rank_lists(state, list(state.memory.lists), attribute, min(max(1, k), len(cands)), rnd, head=head,
                             style=style, final=final)
    rnd.overhead_s = time.perf_counter() - started - state.llm_s
    rnd.items = items
    return items, rnd
