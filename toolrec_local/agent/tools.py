"""The tools an action runs: Retrieval (the recommender, in process), Rank (the LLM, under an
item-list grammar built from exactly the gathered candidates), and Finish (the final list).

Every list goes through memory's check. A rejected list is re-run with the wrong items named
(Rank: in the prompt; Retrieval: excluded from the next call), at most `max_retries` times,
then repaired deterministically (invalid items dropped, the gap filled by retrieval score)
and the repair is recorded. K out of range is clamped and the clamp is said in the
observation: the agent asked for something reasonable, so it gets the nearest valid answer
rather than a wasted round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from toolrec_local.agent.actions import Rank, Retrieval
from toolrec_local.agent.context import AgentContext
from toolrec_local.agent.itemlists import ItemReader, option
from toolrec_local.agent.memory import Memory, ToolList
from toolrec_local.agent.trajectory import Round
from toolrec_local.llm.protocol import ItemListGrammar


@dataclass
class RunState:
    """One user's run: its memory, its rendered head (profile + history) and the LLM time of
    the current step (to tell LLM time from overhead)."""

    ctx: AgentContext
    user: int
    part: str
    seed: int
    history: np.ndarray
    memory: Memory
    head: str
    llm_s: float = 0.0
    calls: int = field(default=0)

    def next_seed(self) -> int:
        self.calls += 1
        return self.seed * 1000 + self.calls


def new_state(ctx: AgentContext, user: int, part: str, seed: int) -> tuple[RunState, int]:
    """The run state and the target item of `user` for split `part`."""
    history, target = ctx.dataset.split(user, part)
    memory = Memory(ctx.dataset.n_items, history, ctx.dataset.item_names)
    return RunState(ctx, user, part, seed, history, memory, ctx.renderer.head(user, history)), target


def clamp(k: int, hi: int) -> tuple[int, str]:
    kk = min(max(k, 1), hi)
    return kk, ("" if kk == k else f"K={k} clamped to {kk}")


# ---- Retrieval ------------------------------------------------------------------------------
def run_retrieval(state: RunState, action: Retrieval, rnd: Round) -> ToolList:
    k, note = clamp(action.k, state.ctx.config.max_k)
    excluded: list[int] = []
    for attempt in range(state.ctx.config.max_retries + 1):
        pairs = state.ctx.tool.retrieve(state.user, action.attribute, k, exclude=tuple(excluded), part=state.part)
        items = [int(i) for i, _ in pairs]
        check = state.memory.check(items)
        rnd.invalid_items += len(check.problems)
        if check.ok:
            break
        # unknown ids cannot be excluded: the tool indexes its scores by item id
        excluded += [i for i in items if i not in set(check.valid) and 1 <= i <= state.memory.n_items]
        if attempt < state.ctx.config.max_retries:
            rnd.retries += 1
    else:
        rnd.repairs += 1
        note = _join(note, f"repaired: {len(items) - len(check.valid)} invalid items dropped")
    score = dict((int(i), float(s)) for i, s in pairs)
    valid = check.valid
    rnd.note = _join(rnd.note, note)
    return state.memory.store(Retrieval(action.attribute, k), valid, [score[i] for i in valid])


# ---- Rank ---------------------------------------------------------------------------------
async def run_rank(state: RunState, action: Rank, rnd: Round) -> ToolList | None:
    """None when nothing has been gathered yet (the loop observes that as an invalid action)."""
    cfg = state.ctx.config
    candidates = state.memory.candidates()[: cfg.rank_max_candidates]
    if not candidates:
        return None
    k, note = clamp(action.k, min(cfg.max_k, len(candidates)))
    rnd.note = _join(rnd.note, note)
    items = await rank_lists(state, candidates, _groups(state.memory, candidates), action.attribute, k, rnd)
    return state.memory.store(Rank(action.attribute, len(items)), items, [state.memory.score(i) for i in items])


async def rank_lists(state: RunState, candidates: list[int], groups: list[tuple[str, list[int]]],
                     attribute: str | None, k: int, rnd: Round, head: str | None = None,
                     style: str = "rank") -> list[int]:
    """Ask the LLM for the top k of `candidates` (grouped under their tool marks), check the
    answer, re-run with the problems named, repair when the retries are spent."""
    ctx, cfg, memory = state.ctx, state.ctx.config, state.memory
    asked = k
    candidates, groups, k = _fit_candidates(state, candidates, groups, attribute, k, head or state.head)
    if k < asked:
        rnd.note = _join(rnd.note, f"K={asked} reduced to {k} to fit the context")
    reader = ItemReader(candidates, ctx.dataset.item_ids, ctx.dataset.item_names, ctx.dataset.item_index)
    options = reader.options(cfg.rank_with_names)
    constraint = ItemListGrammar(options=options, k=k)
    allowed = set(candidates)
    problems: list[str] = []
    valid: list[int] = []
    for attempt in range(cfg.max_retries + 1):
        messages = ctx.renderer.rank_messages(head or state.head, groups, attribute, k, cfg.rank_with_names, problems,
                                              style)
        reply, wall = await ctx.ask(messages, constraint, ctx.list_reply_tokens(options, k), state.next_seed())
        state.llm_s += wall
        rnd.usage.add(reply)
        if cfg.grammar and not reader.exact(reply.text, cfg.rank_with_names, k):
            rnd.grammar_violations += 1
        entries = reader.read(reply.text)
        check = memory.check([e.item for e in entries], allowed, [e.text for e in entries])
        rnd.invalid_items += len(check.problems)
        valid = check.valid
        problems = [ctx.renderer.problem(p.kind, p.label) for p in check.problems]
        if len(valid) < k:
            problems.append(ctx.renderer.problem("short", "", n=len(valid), k=k))
        if not problems:
            return valid[:k]
        if attempt < cfg.max_retries:
            rnd.retries += 1
    rnd.repairs += 1
    fill = [i for i in memory.by_score(exclude=valid) if i in allowed]
    fill += [i for i in candidates if i not in set(valid) and i not in set(fill)]  # never retrieved: memory order
    rnd.note = _join(rnd.note, f"repaired: kept {min(len(valid), k)} valid, filled {max(0, k - len(valid))} by score")
    return (valid + fill)[:k]


RETRY_ROOM = 96  # tokens kept free in a Rank prompt for the problems a re-run names


def _fit_candidates(state: RunState, candidates: list[int], groups, attribute, k: int, head: str):
    """Keep the first candidates (memory order) whose Rank prompt and answer fit
    the context; never fewer than k, unless k itself cannot fit (then k shrinks).
    Without a context limit, all of them."""
    ctx, cfg = state.ctx, state.ctx.config
    names = ctx.dataset.item_names

    def size(cands, groups_, kk):
        messages = ctx.renderer.rank_messages(head, groups_, attribute, kk, cfg.rank_with_names, [])
        options = tuple(option(ctx.dataset.item_ids[i], names[i], cfg.rank_with_names) for i in cands)
        return ctx.estimate_tokens(messages) + ctx.list_reply_tokens(options, kk) + RETRY_ROOM

    if ctx.context_tokens is None:
        return candidates, groups, k
    while True:
        over = size(candidates, groups, k) + cfg.context_margin - ctx.context_tokens
        if over <= 0 or (len(candidates) <= k and k == 1):
            return candidates, groups, k
        if len(candidates) > k:
            per_item = max(1, size(candidates, groups, k) // (len(candidates) + 10))
            keep = max(k, len(candidates) - max(1, over // per_item))
        else:
            k = keep = k - 1
        candidates = candidates[:keep]
        kept = set(candidates)
        groups = [(mark, [i for i in items if i in kept]) for mark, items in groups]
        groups = [(mark, items) for mark, items in groups if items]


def _groups(memory: Memory, candidates: list[int]) -> list[tuple[str, list[int]]]:
    """Candidates under the mark of the first list that brought them (deduplicated)."""
    keep, seen, groups = set(candidates), set(), []
    for lst in memory.lists:
        items = [i for i in lst.items if i in keep and i not in seen]
        seen.update(items)
        if items:
            groups.append((lst.mark, items))
    return groups


# ---- Finish -------------------------------------------------------------------------------
def final_list(state: RunState) -> tuple[list[int], str]:
    """The most recent valid list cut or padded to N: padding by retrieval score from the
    gathered candidates, then (only if those run out) from the plain backbone."""
    n = state.ctx.config.top_n
    current = state.memory.current()
    items = list(current.items[:n]) if current else []
    notes = []
    if current is None:
        notes.append("no list gathered")
    elif len(current.items) > n:
        notes.append(f"cut {current.mark} to {n}")
    if len(items) < n:
        pad = state.memory.by_score(exclude=items)[: n - len(items)]
        if pad:
            notes.append(f"padded {len(pad)} from the gathered candidates by score")
        items += pad
    if len(items) < n:
        pairs = state.ctx.tool.retrieve(state.user, None, n + len(items), exclude=tuple(items), part=state.part)
        pad = state.memory.check([int(i) for i, _ in pairs if int(i) not in set(items)]).valid[: n - len(items)]
        if pad:
            notes.append(f"padded {len(pad)} from the backbone")
        items += pad
    return items, "; ".join(notes)


def _join(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)
