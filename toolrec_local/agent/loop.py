"""The surrogate-user loop (paper, section 3.2), in the style of mini-swe-agent: one linear
message history; each round the LLM writes one turn (thought + action) under the action
grammar, the action runs, its observation is appended. Finish, or the round cap, ends it.

Also the pieces the evaluation's baselines reuse: `llm_rank` (the Rank tool on a given
candidate list: LLMRank, Chat-REC, the single/multi ablations) and `run_plan` (the "w/ Plan"
ablation: the whole plan first, then its execution).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from toolrec_local.agent.actions import Finish, ParseFailure, Rank, Retrieval, format_action, format_turn, parse_turn
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.tools import RunState, final_list, new_state, rank_lists, run_rank, run_retrieval
from toolrec_local.agent.trajectory import Round, Trajectory
from toolrec_local.llm.grammar import conforms

__all__ = ["AgentConfig", "AgentContext", "run_agent", "run_plan", "llm_rank"]


@dataclass
class Step:
    """One round as later prompts see it."""

    turn: str  # the assistant's turn (canonical when it parsed)
    observation: str
    short: str  # the observation once it falls out of `observation_window`
    brief: str = ""  # the turn without its thought, when the context is short (default: turn)


async def run_agent(ctx: AgentContext, user: int, part: str = "test", seed: int = 0) -> Trajectory:
    cfg = ctx.config
    state, target = new_state(ctx, user, part, seed)
    traj = _trajectory(ctx, state, target)
    steps: list[Step] = []
    for n in range(1, cfg.max_rounds + 1):
        started, state.llm_s = time.perf_counter(), 0.0
        messages = _messages(ctx, state, steps)
        if messages is None:
            break
        rnd = Round(n)
        traj.rounds.append(rnd)
        reply, wall = await ctx.ask(messages, ctx.action_grammar, cfg.action_max_tokens, state.next_seed())
        state.llm_s += wall
        rnd.usage.add(reply)
        action = _read_turn(ctx, reply.text, rnd)
        step = await _execute(state, action, rnd, reply.text)
        steps.append(step)
        rnd.overhead_s = time.perf_counter() - started - state.llm_s
        if isinstance(action, Finish):
            traj.final_items, traj.final_note, traj.finished_by = rnd.items, rnd.note, "finish"
            return traj
    traj.final_items, traj.final_note = final_list(state)
    traj.finished_by = "cap" if len(traj.rounds) == cfg.max_rounds else "context"
    return traj


def _trajectory(ctx: AgentContext, state: RunState, target: int) -> Trajectory:
    ds = ctx.dataset
    return Trajectory(user=ds.user_ids[state.user], history_items=[int(i) for i in state.history], target_item=target,
                      grammar=ctx.config.grammar, backend=getattr(ctx.backend, "name", type(ctx.backend).__name__),
                      item_ids=ds.item_ids)


def _messages(ctx: AgentContext, state: RunState, steps: list[Step], extra_task: str = "") -> list[dict] | None:
    """System (instructions + demonstrations), the task, then every turn and observation.
    Fitted into the context when it is known: older observations shortened, then fewer
    demonstrations, then older thoughts omitted; None when even that does not fit."""
    cfg = ctx.config
    task = ctx.renderer.task(state.head) + (f"\n{extra_task}" if extra_task else "")
    window = len(steps) if cfg.observation_window is None else min(cfg.observation_window, len(steps))
    demos, brief = cfg.n_demos, 0
    messages = _build(ctx.renderer.system_with(demos), task, steps, window, brief)
    while not ctx.fits(messages, ctx.action_reply_tokens):
        if window > 0:
            window -= 1
        elif demos > 0:
            demos -= 1
        elif brief < len(steps):
            brief += 1
        else:
            return None
        messages = _build(ctx.renderer.system_with(demos), task, steps, window, brief)
    return messages


def _build(system: str, task: str, steps: list[Step], window: int, brief: int) -> list[dict]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]
    for pos, step in enumerate(steps):
        messages.append({"role": "assistant", "content": (step.brief or step.turn) if pos < brief else step.turn})
        messages.append({"role": "user", "content": step.observation if pos >= len(steps) - window else step.short})
    return messages


def _read_turn(ctx: AgentContext, text: str, rnd: Round):
    """The action of a reply. Under the grammar a reply outside the grammar's language is a
    violation (counted: it must stay zero); it is then read tolerantly so the run goes on."""
    cfg = ctx.config
    thought, action = parse_turn(text, ctx.attributes, strict=True)
    if cfg.grammar:
        outside = isinstance(action, ParseFailure) or not conforms(ctx.action_grammar, text.rstrip())
        rnd.grammar_violations += int(outside)
    if not cfg.grammar or isinstance(action, ParseFailure):
        thought, action = parse_turn(text, ctx.attributes, strict=False, default_k=cfg.default_k)
    rnd.thought = thought
    rnd.action = text.strip() if isinstance(action, ParseFailure) else format_action(action)
    return action


async def _execute(state: RunState, action, rnd: Round, reply: str) -> Step:
    r = state.ctx.renderer
    turn = reply.strip() if isinstance(action, ParseFailure) else format_turn(rnd.thought, action)
    if isinstance(action, ParseFailure):
        return _invalid(r, rnd, turn, action.message)
    if isinstance(action, Finish):
        rnd.items, rnd.note = final_list(state)
        scores = [state.memory.score(i) if state.memory.score(i) > float("-inf") else 0.0 for i in rnd.items]
        text = r.observation_finish(rnd.items, scores)
        return Step(turn, text, text)
    if isinstance(action, Retrieval):
        lst = run_retrieval(state, action, rnd)
    else:
        lst = await run_rank(state, action, rnd)
        if lst is None:
            return _invalid(r, rnd, turn, r.rank_nothing())
    rnd.items = lst.items
    return Step(turn, r.observation(lst, rnd.note), r.observation_short(lst), format_turn("…", action))


def _invalid(r, rnd: Round, turn: str, message: str) -> Step:
    rnd.note = f"Invalid action: {message}"
    text = r.invalid(message)
    return Step(turn, text, text, "Thought: …\nAction: (invalid)")


# ---- baselines' pieces ------------------------------------------------------------------------
async def llm_rank(ctx: AgentContext, user: int, candidates: list[int], k: int, attribute: str | None = None,
                   include_profile: bool = True, *, part: str = "test", seed: int = 0,
                   groups: list[tuple[str, list[int]]] | None = None, style: str = "rank") -> tuple[list[int], dict]:
    """The Rank tool on a given candidate list (LLMRank, Chat-REC, single, multi). Candidates
    in the user's history, unknown or repeated are dropped first; k is clamped to what is left.
    `groups` optionally splits the candidates under tool marks (multi); by default they are
    one group marked as the plain recommender's list. `style` picks the prompt ("chatrec" for
    the Chat-REC baseline). Returns (top-k items, stats)."""
    state, _ = new_state(ctx, user, part, seed)
    cands = state.memory.check([int(i) for i in candidates]).valid
    rnd = Round(1, action=format_action(Rank(attribute, max(1, k))))
    if not cands:
        return [], _stats(rnd, 0.0)
    started = time.perf_counter()
    if groups is None:
        groups = [(format_action(Retrieval(None, len(cands))), cands)]
    else:
        keep = set(cands)
        groups = [(mark, [int(i) for i in items if int(i) in keep]) for mark, items in groups]
    head = state.head if include_profile else ctx.renderer.head(user, state.history, with_profile=False)
    items = await rank_lists(state, cands, groups, attribute, min(max(1, k), len(cands)), rnd, head=head, style=style)
    rnd.overhead_s = time.perf_counter() - started - state.llm_s
    rnd.items = items
    return items, _stats(rnd, rnd.overhead_s)


def _stats(rnd: Round, overhead_s: float) -> dict:
    return {
        "llm_calls": rnd.usage.calls, "tokens_in": rnd.usage.tokens_in, "tokens_out": rnd.usage.tokens_out,
        "latency_s": round(rnd.usage.latency_s, 4), "retries": rnd.retries, "repairs": rnd.repairs,
        "grammar_violations": rnd.grammar_violations, "invalid_items": rnd.invalid_items,
        "overhead_s": round(overhead_s, 6), "note": rnd.note,
    }


async def run_plan(ctx: AgentContext, user: int, part: str = "test", seed: int = 0) -> Trajectory:
    """The "w/ Plan" ablation: the LLM writes every step first, seeing none of the tools'
    output (each step under the action grammar, after its own earlier steps), then the plan is
    executed in order. The plan ends at Finish or after max_rounds steps."""
    cfg = ctx.config
    state, target = new_state(ctx, user, part, seed)
    traj = _trajectory(ctx, state, target)
    traj.finished_by = "plan"
    planned: list[Step] = []
    actions = []
    for n in range(1, cfg.max_rounds + 1):
        rnd = Round(n)
        traj.rounds.append(rnd)
        started, state.llm_s = time.perf_counter(), 0.0
        messages = _messages(ctx, state, planned, extra_task=ctx.renderer.plan_note())
        if messages is None:
            traj.rounds.pop()
            break
        reply, wall = await ctx.ask(messages, ctx.action_grammar, cfg.action_max_tokens, state.next_seed())
        state.llm_s += wall
        rnd.usage.add(reply)
        action = _read_turn(ctx, reply.text, rnd)
        turn = reply.strip() if isinstance(action, ParseFailure) else format_turn(rnd.thought, action)
        placeholder = ctx.renderer.plan_step()
        planned.append(Step(turn, placeholder, placeholder))
        actions.append(action)
        rnd.overhead_s = time.perf_counter() - started - state.llm_s
        if isinstance(action, Finish):
            break
    for rnd, action in zip(traj.rounds, actions):  # execution, in plan order
        started, state.llm_s = time.perf_counter(), 0.0
        await _execute(state, action, rnd, "")
        rnd.overhead_s += time.perf_counter() - started - state.llm_s
        if isinstance(action, Finish):
            traj.final_items, traj.final_note = rnd.items, rnd.note
            return traj
    traj.final_items, traj.final_note = final_list(state)
    return traj
