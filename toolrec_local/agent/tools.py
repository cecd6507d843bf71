"""The tools an action runs: Retrieval (the recommender, in process), Rank (the LLM, under an
item-list grammar built from exactly the gathered candidates, or from the whole catalogue
outside the history with `answer_space="catalogue"`), and Finish (the final step: the LLM
ranks every gathered list into the top N, or, as the "last-list" ablation, the last list cut
or padded). Every fallback that changes an answer is counted on its step (trajectory.FALLBACKS).

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
from toolrec_local.agent.memory import Memory, ToolList, interleave
from toolrec_local.agent.rankers import borda, chunks, labelled, score_rank, shuffle_rng, shuffled
from toolrec_local.agent.trajectory import Round, add_counts
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
    keep = state.ctx.config.history == "keep"  # the list may hold history items (never an answer)
    unmasked = {"exclude_history": False} if keep else {}
    excluded: list[int] = []
    for attempt in range(state.ctx.config.max_retries + 1):
        pairs = state.ctx.tool.retrieve(state.user, action.attribute, k, exclude=tuple(excluded), part=state.part,
                                        **unmasked)
        items = [int(i) for i, _ in pairs]
        check = state.memory.check(items, history_ok=keep)
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
    if not state.memory.candidates():
        return None
    k, note = clamp(action.k, min(cfg.max_k, len(state.memory.candidates(cfg.rank_max_candidates))))
    rnd.note = _join(rnd.note, note)
    items = await rank_lists(state, list(state.memory.lists), action.attribute, k, rnd,
                             catalogue=cfg.answer_space == "catalogue")
    return state.memory.store(Rank(action.attribute, len(items)), items)  # the LLM's order, no scores


async def rank_lists(state: RunState, lists: list[ToolList], attribute: str | None, k: int, rnd: Round, *,
                     head: str | None = None, style: str = "rank", final: bool = False,
                     catalogue: bool = False) -> list[int] | None:
    """Ask the LLM for the top k of the items in `lists` (each list shown under its tool mark
    with its scores), check the answer, re-run with the problems named, repair when the
    retries are spent. The candidates are every listed item outside the history, or, when the
    context (or `rank_max_candidates`) forces a cut, items taken from each list in turn. Rank
    shrinks k when even k candidates cannot fit; the final step (`final`) keeps k and returns
    None. The answer may name any candidate, or with `catalogue` any catalogue item outside
    the history (the lists shown are the same). `--rank-by score` scores the candidates
    instead, `--rank-shuffles` ranks shuffled orders too (agent/rankers.py); the calls all
    count in `rnd`."""
    cfg, memory = state.ctx.config, state.memory
    head = head or state.head
    extra = _user_lines(state)
    asked = k
    fitted = _fit_candidates(state, lists, attribute, k, head, style, final, extra, catalogue)
    if fitted is None:
        return None
    candidates, shown, k, once = fitted
    rnd.shown = [(lst.mark, list(lst.items)) for lst in shown]
    everything = len(interleave(_answerable(memory, lists)))
    if len(candidates) < everything:
        rnd.note = _join(rnd.note, f"{len(candidates)} of {everything} candidates shown (taken from each list in turn)")
    if once:
        rnd.note = _join(rnd.note, "each candidate shown once, under the first list that brought it")
    if k < asked:
        rnd.note = _join(rnd.note, f"K={asked} reduced to {k} to fit the context")
    if len(candidates) < everything or once or k < asked:
        rnd.count("candidates_cut")
    if cfg.rank_by == "score":  # one request per 52 candidates, valid by construction (agent/rankers.py)
        items = await score_rank(state, candidates, shown, attribute, k, rnd, head=head, style=style, final=final,
                                 extra=extra)
        rnd.picked = len(items)
        return items
    answers = _catalogue(state, candidates) if catalogue else candidates
    orders = [shown] + [shuffled(shown, shuffle_rng(state, j)) for j in range(cfg.rank_shuffles)]
    rankings = []
    for n, order in enumerate(orders):
        picked = rnd.picked
        rankings.append(await _generate(state, candidates, answers, order, attribute, k, rnd, head, style, final,
                                        extra))
        if n:
            rnd.picked = picked  # the first (shown) order's count: what the LLM wrote there
    if len(rankings) == 1:
        return rankings[0]
    rnd.note = _join(rnd.note, f"Borda count over {len(rankings)} orders of the candidates "
                               f"({len(rankings) - 1} shuffled)")
    return borda(rankings, candidates, k)


async def _generate(state: RunState, candidates: list[int], answers: list[int], shown: list[ToolList], attribute,
                    k: int, rnd: Round, head: str, style: str, final: bool, extra: dict) -> list[int]:
    """The LLM writes the top k under the item-list grammar; its answer is checked, re-run
    with the problems named, repaired when the retries are spent."""
    ctx, cfg, memory = state.ctx, state.ctx.config, state.memory
    reader = ItemReader(answers, ctx.dataset.item_ids, ctx.dataset.item_names, ctx.dataset.item_index)
    options = reader.options(cfg.rank_with_names)
    constraint = ItemListGrammar(options=options, k=k)
    allowed = set(answers)
    problems: list[str] = []
    valid: list[int] = []
    for attempt in range(cfg.max_retries + 1):
        messages = ctx.renderer.rank_messages(head, shown, attribute, k, cfg.rank_with_names, problems, style=style,
                                              final=final, **extra)
        reply, wall = await ctx.ask(messages, constraint, ctx.list_reply_tokens(options, k), state.next_seed(),
                                    ranking=True)
        state.llm_s += wall
        rnd.usage.add(reply)
        if cfg.grammar and not reader.exact(reply.text, cfg.rank_with_names, k):
            rnd.grammar_violations += 1
        entries = reader.read(reply.text)
        check = memory.check([e.item for e in entries], allowed, [e.text for e in entries])
        rnd.invalid_items += len(check.problems)
        valid = check.valid
        rnd.picked = min(len(valid), k)
        problems = [ctx.renderer.problem(p.kind, p.label) for p in check.problems]
        if len(valid) < k:
            problems.append(ctx.renderer.problem("short", "", n=len(valid), k=k))
        if not problems:
            return valid[:k]
        if attempt < cfg.max_retries:
            rnd.retries += 1
    rnd.repairs += 1
    fill = [i for i in memory.by_score(exclude=valid) if i in allowed]
    fill += [i for i in candidates if i not in set(valid) and i not in set(fill)]  # never retrieved: list order
    rnd.note = _join(rnd.note, f"repaired: kept {min(len(valid), k)} valid, filled {max(0, k - len(valid))} by score")
    return (valid + fill)[:k]


def _answerable(memory: Memory, lists: list[ToolList]) -> list[list[int]]:
    """Each list's items that may be answered: not in the history (retrieval lists hold
    history items under `--history keep`)."""
    return [[i for i in lst.items if i not in memory.history] for lst in lists]


def _catalogue(state: RunState, first: list[int]) -> list[int]:
    """The answer space of `--answer-space catalogue`: `first` (the candidates shown), then
    every other catalogue item outside the history, by id."""
    skip = state.memory.history | set(first)
    return list(first) + [i for i in range(1, state.memory.n_items + 1) if i not in skip]


def _user_lines(state: RunState) -> dict:
    """What the baselines' own templates show besides the head: the shown history (oldest
    first; each item's id, name, year and rendered line) and the most recent item's name."""
    ds = state.ctx.dataset
    lines = state.ctx.renderer.history_lines(state.user, state.history)
    shown = [int(i) for i in state.history[len(state.history) - len(lines):]]
    history = [{"id": ds.item_ids[i], "name": ds.item_names[i], "year": ds.item_years[i], "line": line}
               for i, line in zip(shown, lines)]
    return {"history": history, "recent": ds.item_names[shown[-1]] if shown else ""}


RETRY_ROOM = 96  # tokens kept free in a Rank prompt for the problems a re-run names


def _fit_candidates(state: RunState, lists: list[ToolList], attribute, k: int, head: str, style: str, final: bool,
                    extra: dict, catalogue: bool = False):
    """(candidates, lists as shown, k, once): every item of `lists` outside the history (at
    most rank_max_candidates, taken from the lists in turn), cut further, again in turn, until
    the prompt and its answer fit the context; never fewer candidates than k. History items a
    list holds (`--history keep`) stay in it as shown. If k candidates do not fit while an item
    shown in several lists is repeated under each, they are shown once (`once`: under the first
    list that brought them). If even that does not fit, Rank shrinks k (down to 1) and the
    final step gives up (None). With `catalogue` the answer is sized over the catalogue."""
    ctx, cfg = state.ctx, state.ctx.config
    names = ctx.dataset.item_names
    pool = _answerable(state.memory, lists)
    answer_options = None
    if catalogue:
        answer_options = tuple(option(ctx.dataset.item_ids[i], names[i], cfg.rank_with_names)
                               for i in _catalogue(state, []))

    def shown_for(cands, once):
        keep, seen, out = set(cands) | state.memory.history, set(), []
        for lst in lists:
            part = lst.only(keep - seen)
            if part.items:
                out.append(part)
            if once:
                seen.update(part.items)
        return out

    def size(cands, shown_, kk):
        if cfg.rank_by == "score":  # the largest chunk's prompt and a one-token answer, never re-run
            messages = ctx.renderer.rank_messages(head, shown_, attribute, kk, cfg.rank_with_names, [], style=style,
                                                  final=final, labelled=labelled(state, chunks(cands)[0]), **extra)
            return ctx.estimate_tokens(messages, "list") + 1
        messages = ctx.renderer.rank_messages(head, shown_, attribute, kk, cfg.rank_with_names, [], style=style,
                                              final=final, **extra)
        options = answer_options or tuple(option(ctx.dataset.item_ids[i], names[i], cfg.rank_with_names) for i in cands)
        return ctx.estimate_tokens(messages, "list") + ctx.list_reply_tokens(options, kk) + RETRY_ROOM

    candidates = interleave(pool, cfg.rank_max_candidates)
    if ctx.rank_context_tokens is None:
        return candidates, shown_for(candidates, False), k, False
    once = False
    while True:
        shown = shown_for(candidates, once)
        over = size(candidates, shown, k) + cfg.context_margin - ctx.rank_context_tokens
        if over <= 0:
            return candidates, shown, k, once
        if len(candidates) > k:
            per_item = max(1, size(candidates, shown, k) // (len(candidates) + 10))
            keep = max(k, len(candidates) - max(1, over // per_item))
        elif not once:
            once, keep = True, len(interleave(pool, cfg.rank_max_candidates))
        elif final:
            return None
        elif k == 1:
            return candidates, shown, k, once
        else:
            k = keep = k - 1
        candidates = interleave(pool, keep)


# ---- Finish -------------------------------------------------------------------------------
BACKBONE_NAMES = {"sasrec": "SASRec", "bert4rec": "BERT4Rec"}


def final_list(state: RunState, counts: dict[str, int]) -> tuple[list[int], str]:
    """The "last-list" answer: the most recent valid list (its items outside the history) cut
    or padded to N, padding by retrieval score from the gathered candidates, then (only if
    those run out) from the plain backbone. No LLM call. Padding is counted into `counts`."""
    n = state.ctx.config.top_n
    current = state.memory.current()
    items = [i for i in current.items if i not in state.memory.history] if current else []
    notes = []
    if current is None:
        notes.append("no list gathered")
    else:
        if len(items) < len(current.items):
            notes.append(f"{len(current.items) - len(items)} history items of {current.mark} left out")
        if len(items) > n:
            notes.append(f"cut {current.mark} to {n}")
    return _pad(state, items[:n], notes, counts)


def _pad(state: RunState, items: list[int], notes: list[str], counts: dict[str, int]) -> tuple[list[int], str]:
    n = state.ctx.config.top_n
    short = len(items) < n
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
    if short:
        add_counts(counts, {"padded": 1})
    return items, "; ".join(notes)


def topup_mark(state: RunState, m: int) -> str:
    """The mark of the backbone items the final step is shown when fewer than N were
    gathered: what they are, not an action the agent never wrote."""
    backbone = getattr(state.ctx.tool, "backbone", None)
    return f"Top-up from the backbone{f' ({BACKBONE_NAMES.get(backbone, backbone)})' if backbone else ''}, {m} items"


async def conclude(state: RunState, step: Round, fallback: tuple[list[int], str, dict]) -> tuple[list[int], str]:
    """The final step (the authors' `conclude_step`): the LLM sees the user and every list
    gathered (retrievals and earlier ranks, each under its tool mark with its scores) and
    writes the top N, N distinct items, none from the history; that list is the answer. Under
    `--answer-space gathered` the items are gathered ones, and with fewer than N gathered the
    plain backbone's next best items are added first as a list of their own, marked as a
    top-up (nothing gathered: the backbone's top N alone), so the LLM can still write N; under
    `catalogue` any catalogue item may be written and nothing is added. If even N candidates
    cannot fit the context, the last-list answer (`fallback`: items, note and its counts, made
    before any top-up) is used, and said. The LLM call's cost and the fallbacks go to `step`."""
    n, memory = state.ctx.config.top_n, state.memory
    catalogue = state.ctx.config.answer_space == "catalogue"
    notes = []
    missing = n - len(memory.candidates())
    if missing > 0 and not catalogue:
        gathered = memory.gathered()
        pairs = state.ctx.tool.retrieve(state.user, None, missing, exclude=tuple(gathered), part=state.part)
        score = dict((int(i), float(s)) for i, s in pairs)
        extra = [i for i in memory.check(list(score)).valid if i not in set(gathered)][:missing]
        if extra:
            mark = topup_mark(state, len(extra))
            memory.store(Retrieval(None, len(extra)), extra, [score[i] for i in extra], label=mark)
            step.count("topup")
            notes.append(f"{'nothing gathered' if not gathered else f'{len(gathered)} gathered'}: shown with "
                         f"\"{mark}\", the backbone's next {len(extra)} (no agent call)")
    items, note, counts = fallback
    ranked = None
    if memory.candidates() or catalogue:
        ranked = await rank_lists(state, list(memory.lists), None, n, step, final=True, catalogue=catalogue)
    if ranked is None:  # the prompt does not fit (or not even the backbone had an item to offer)
        step.count("final_skipped")
        add_counts(step.fallbacks, counts)
        skipped = "final ranking skipped: its prompt does not fit the context" if memory.candidates() else ""
        return list(items), "; ".join(x for x in notes + [skipped, note] if x)
    items = ranked
    lists = sum(1 for lst in memory.lists if lst.items)
    notes.append(f"the LLM's top {len(items)} of the {len(memory.candidates())} candidates in {lists} "
                 f"list{'s' * (lists != 1)}" + (" (answers from the catalogue)" if catalogue else ""))
    return _pad(state, list(items), notes, step.fallbacks)


def _join(a: str, b: str) -> str:
    return "; ".join(x for x in (a, b) if x)
