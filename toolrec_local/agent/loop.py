"""The surrogate-user loop (paper, section 3.2), in the style of mini-swe-agent: one linear
message history (`Conversation`); each round the LLM writes one turn (thought + action) under
the action grammar, the action runs, its observation is appended. Finish, or the round cap,
ends it with the final step (`tools.conclude`: the LLM ranks every gathered list into the top
N; or, as the "last-list" ablation, the last list cut or padded).

Also the pieces the evaluation's baselines reuse: `llm_rank` (the Rank tool on given
candidate lists: LLMRank, Chat-REC, the single/multi ablations) and `run_plan` (the "w/ Plan"
ablation: the whole plan first, then its execution).
"""

from __future__ import annotations

import time

from toolrec_local.agent.actions import Finish, ParseFailure, Rank, Retrieval, format_action, format_turn, parse_turn
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.conversation import Conversation, Step
from toolrec_local.agent.memory import ToolList, interleave
from toolrec_local.agent.tools import RunState, conclude, final_list, new_state, rank_lists, run_rank, run_retrieval
from toolrec_local.agent.trajectory import Round, Trajectory
from toolrec_local.llm.grammar import conforms

__all__ = ["AgentConfig", "AgentContext", "run_agent", "run_plan", "llm_rank"]


async def run_agent(ctx: AgentContext, user: int, part: str = "test", seed: int = 0) -> Trajectory:
    cfg = ctx.config
    state, target = new_state(ctx, user, part, seed)
    traj = _trajectory(ctx, state, target)
    talk = Conversation(ctx, ctx.renderer.task(state.head))
    traj.finished_by = "cap"
    for n in range(1, cfg.max_rounds + 1):
        started, state.llm_s = time.perf_counter(), 0.0
        messages = talk.messages()
        if messages is None:
            traj.finished_by = "context"
            break
        rnd = Round(n)
        traj.rounds.append(rnd)
        reply, wall = await ctx.ask(messages, ctx.action_grammar, cfg.action_max_tokens, state.next_seed())
        state.llm_s += wall
        rnd.usage.add(reply)
        action = _read_turn(ctx, reply.text, rnd)
        finished = isinstance(action, Finish)  # its work is the final step, below
        if not finished:
            talk.add(await _execute(state, action, rnd, reply.text))
        rnd.overhead_s = time.perf_counter() - started - state.llm_s
        if finished:
            traj.finished_by = "finish"
            break
    await _final_step(state, traj)
    return traj


async def _final_step(state: RunState, traj: Trajectory) -> None:
    """After Finish or the cap: the last-list answer (always, it costs no LLM call), then the
    final step the configuration asks for; its list is the answer."""
    started, state.llm_s = time.perf_counter(), 0.0
    traj.last_list_items, traj.last_list_note = final_list(state)
    step = Round(0, action="Finish")  # n=0: the final step, not a round
    if state.ctx.config.finish == "llm":
        step.items, note = await conclude(state, step, (list(traj.last_list_items), traj.last_list_note))
        step.note = "; ".join(x for x in (note, step.note) if x)  # then what the ranking call itself noted
    else:
        step.items, step.note = list(traj.last_list_items), traj.last_list_note
    step.overhead_s = time.perf_counter() - started - state.llm_s
    traj.finish = step
    traj.final_items, traj.final_note = list(step.items), step.note


def _trajectory(ctx: AgentContext, state: RunState, target: int) -> Trajectory:
    ds = ctx.dataset
    return Trajectory(user=ds.user_ids[state.user], history_items=[int(i) for i in state.history], target_item=target,
                      grammar=ctx.config.grammar, backend=getattr(ctx.backend, "name", type(ctx.backend).__name__),
                      finish_mode=ctx.config.finish, item_ids=ds.item_ids)


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
    """Run a Retrieval or Rank action (or observe an unreadable one); Finish is the loop's."""
    r = state.ctx.renderer
    turn = reply.strip() if isinstance(action, ParseFailure) else format_turn(rnd.thought, action)
    if isinstance(action, ParseFailure):
        return _invalid(r, rnd, turn, action.message)
    if isinstance(action, Retrieval):
        lst = run_retrieval(state, action, rnd)
    else:
        lst = await run_rank(state, action, rnd)
        if lst is None:
            return _invalid(r, rnd, turn, r.rank_nothing())
    rnd.items = lst.items
    observed = r.observation(lst, rnd.note, same_as=state.memory.earlier_copy(lst))
    return Step(turn, observed, r.observation_short(lst), format_turn("…", action))


def _invalid(r, rnd: Round, turn: str, message: str) -> Step:
    rnd.note = f"Invalid action: {message}"
    text = r.invalid(message)
    return Step(turn, text, text, "Thought: …\nAction: (invalid)")


# ---- baselines' pieces ------------------------------------------------------------------------
async def llm_rank(ctx: AgentContext, user: int, lists: list[ToolList], k: int, attribute: str | None = None,
                   include_profile: bool = True, *, part: str = "test", seed: int = 0,
                   style: str = "rank") -> tuple[list[int], dict]:
    """The Rank tool on given candidate lists (LLMRank, Chat-REC, single, multi), each shown
    under its tool mark with its scores. Items in the user's history, unknown or repeated
    within a list are dropped first; k is clamped to what is left. `style` picks a baseline's
    own prompt ("chatrec", "llmrank"). Returns (top-k items, stats)."""
    state, _ = new_state(ctx, user, part, seed)
    for lst in lists:  # stored, so that a repair fills by retrieval score
        score = dict(zip(lst.items, lst.scores))
        valid = state.memory.check([int(i) for i in lst.items]).valid
        if valid:
            state.memory.store(lst.action, valid, [score[i] for i in valid])
    cands = interleave(lst.items for lst in state.memory.lists)
    rnd = Round(1, action=format_action(Rank(attribute, max(1, k))))
    if not cands:
        return [], _stats(rnd, 0.0)
    started = time.perf_counter()
    head = state.head if include_profile else ctx.renderer.head(user, state.history, with_profile=False)
    items = await rank_lists(state, list(state.memory.lists), attribute, min(max(1, k), len(cands)), rnd, head=head,
                             style=style)
    rnd.overhead_s = time.perf_counter() - started - state.llm_s
    rnd.items = items
    return items, _stats(rnd, rnd.overhead_s)


def _stats(rnd: Round, overhead_s: float) -> dict:
    return {
        "llm_calls": rnd.usage.calls, "tokens_in": rnd.usage.tokens_in, "tokens_out": rnd.usage.tokens_out,
        "latency_s": round(rnd.usage.latency_s, 4), "retries": rnd.retries, "repairs": rnd.repairs,
        "grammar_violations": rnd.grammar_violations, "invalid_items": rnd.invalid_items,
        "overhead_s": round(overhead_s, 6), "note": rnd.note, "shown": rnd.shown, "picked": rnd.picked,
    }


async def run_plan(ctx: AgentContext, user: int, part: str = "test", seed: int = 0) -> Trajectory:
    """The "w/ Plan" ablation: the LLM writes every step first, seeing none of the tools'
    output (each step under the action grammar, after its own earlier steps), then the plan is
    executed in order. The plan ends at Finish or after max_rounds steps; then the final step."""
    cfg = ctx.config
    state, target = new_state(ctx, user, part, seed)
    traj = _trajectory(ctx, state, target)
    traj.finished_by = "plan"
    talk = Conversation(ctx, ctx.renderer.task(state.head) + "\n" + ctx.renderer.plan_note())
    actions = []
    for n in range(1, cfg.max_rounds + 1):
        started, state.llm_s = time.perf_counter(), 0.0
        messages = talk.messages()
        if messages is None:
            break
        rnd = Round(n)
        traj.rounds.append(rnd)
        reply, wall = await ctx.ask(messages, ctx.action_grammar, cfg.action_max_tokens, state.next_seed())
        state.llm_s += wall
        rnd.usage.add(reply)
        action = _read_turn(ctx, reply.text, rnd)
        turn = reply.text.strip() if isinstance(action, ParseFailure) else format_turn(rnd.thought, action)
        placeholder = ctx.renderer.plan_step()
        talk.add(Step(turn, placeholder, placeholder))
        actions.append(action)
        rnd.overhead_s = time.perf_counter() - started - state.llm_s
        if isinstance(action, Finish):
            break
    for rnd, action in zip(traj.rounds, actions):  # execution, in plan order
        if isinstance(action, Finish):
            break
        started, state.llm_s = time.perf_counter(), 0.0
        await _execute(state, action, rnd, "")
        rnd.overhead_s += time.perf_counter() - started - state.llm_s
    await _final_step(state, traj)
    return traj
