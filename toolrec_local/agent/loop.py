"""The surrogate-user loop (paper, section 3.2), in the style of mini-swe-agent: one linear
message history (`Conversation`); each round the LLM writes one turn (thought + action) under
the action grammar, the action runs, its observation is appended. Finish, or the round cap,
ends it with the final step (`tools.conclude`: the LLM ranks every gathered list into the top
N; or, as the "last-list" ablation, the last list cut or padded). `run_plan` is the "w/ Plan"
ablation: the whole plan first, then its execution; both take their turns by `_round`.
The baselines that rank given candidates (LLMRank, Chat-REC, single, multi) are in
baselines.py.
"""

from __future__ import annotations

import time

from toolrec_local.agent.actions import Finish, ParseFailure, Retrieval, format_action, format_turn, parse_turn
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.conversation import Conversation, Step
from toolrec_local.agent.tools import RunState, conclude, final_list, new_state, run_rank, run_retrieval
from toolrec_local.agent.trajectory import Round, Trajectory, add_counts
from toolrec_local.llm.grammar import conforms

__all__ = ["AgentConfig", "AgentContext", "run_agent", "run_plan"]


async def run_agent(ctx: AgentContext, user: int, part: str = "test", seed: int = 0) -> Trajectory:
    state, target = new_state(ctx, user, part, seed)
    traj = _trajectory(ctx, state, target)
    talk = Conversation(ctx, ctx.renderer.task(state.head))

    async def observe(action, rnd: Round, reply: str) -> Step | None:
        return None if isinstance(action, Finish) else await _execute(state, action, rnd, reply)  # Finish: below

    traj.finished_by = "cap"
    for n in range(1, ctx.config.max_rounds + 1):
        action = await _round(state, talk, traj, n, observe)
        if action is None:
            traj.finished_by = "context"
            break
        if isinstance(action, Finish):
            traj.finished_by = "finish"
            break
    traj.fallbacks = dict(talk.fallbacks, context_ended=int(traj.finished_by == "context"))
    await _final_step(state, traj)
    return traj


async def _round(state: RunState, talk: Conversation, traj: Trajectory, n: int, observe):
    """Round n: the LLM's turn under the action grammar, read; `observe(action, round, reply)`
    gives the conversation's next step (None: nothing is added). Returns the action, or None
    when the prompt cannot fit any more (no round is taken)."""
    ctx = state.ctx
    started, state.llm_s = time.perf_counter(), 0.0
    messages = talk.messages()
    if messages is None:
        return None
    rnd = Round(n)
    traj.rounds.append(rnd)
    reply, wall = await ctx.ask(messages, ctx.action_grammar, ctx.config.action_max_tokens, state.next_seed())
    state.llm_s += wall
    rnd.usage.add(reply)
    action = _read_turn(ctx, reply.text, rnd)
    step = await observe(action, rnd, reply.text)
    if step is not None:
        talk.add(step)
    rnd.overhead_s = time.perf_counter() - started - state.llm_s
    return action


async def _final_step(state: RunState, traj: Trajectory) -> None:
    """After Finish or the cap: the last-list answer (always, it costs no LLM call), then the
    final step the configuration asks for; its list is the answer."""
    started, state.llm_s = time.perf_counter(), 0.0
    traj.last_list_items, traj.last_list_note = final_list(state, traj.last_list_fallbacks)
    step = Round(0, action="Finish")  # n=0: the final step, not a round
    if state.ctx.config.finish_mode == "llm":
        step.items, note = await conclude(state, step, (list(traj.last_list_items), traj.last_list_note,
                                                        traj.last_list_fallbacks))
        step.note = "; ".join(x for x in (note, step.note) if x)  # then what the ranking call itself noted
    else:
        step.items, step.note = list(traj.last_list_items), traj.last_list_note
        add_counts(step.fallbacks, traj.last_list_fallbacks)
    step.overhead_s = time.perf_counter() - started - state.llm_s
    traj.final_step = step
    traj.final_items, traj.final_note = list(step.items), step.note


def _trajectory(ctx: AgentContext, state: RunState, target: int) -> Trajectory:
    ds = ctx.dataset
    return Trajectory(user=ds.user_ids[state.user], history_items=[int(i) for i in state.history], target_item=target,
                      grammar=ctx.config.grammar, backend=getattr(ctx.backend, "name", type(ctx.backend).__name__),
                      ranker=getattr(ctx.rank_backend, "name", "") if ctx.rank_backend is not None else "",
                      finish_mode=ctx.config.finish_mode, item_ids=ds.item_ids)


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


async def run_plan(ctx: AgentContext, user: int, part: str = "test", seed: int = 0) -> Trajectory:
    """The "w/ Plan" ablation: the LLM writes every step first, seeing none of the tools'
    output (each step under the action grammar, after its own earlier steps), then the plan is
    executed in order. The plan ends at Finish or after max_rounds steps; then the final step."""
    state, target = new_state(ctx, user, part, seed)
    traj = _trajectory(ctx, state, target)
    traj.finished_by = "plan"
    talk = Conversation(ctx, ctx.renderer.task(state.head) + "\n" + ctx.renderer.plan_note())

    async def observe(action, rnd: Round, reply: str) -> Step:  # nothing runs yet: the step is a placeholder
        turn = reply.strip() if isinstance(action, ParseFailure) else format_turn(rnd.thought, action)
        placeholder = ctx.renderer.plan_step()
        return Step(turn, placeholder, placeholder)

    actions, ended = [], False
    for n in range(1, ctx.config.max_rounds + 1):
        action = await _round(state, talk, traj, n, observe)
        if action is None:
            ended = True  # the plan is cut where its prompt stopped fitting
            break
        actions.append(action)
        if isinstance(action, Finish):
            break
    traj.fallbacks = dict(talk.fallbacks, context_ended=int(ended))
    for rnd, action in zip(traj.rounds, actions):  # execution, in plan order
        if isinstance(action, Finish):
            break
        started, state.llm_s = time.perf_counter(), 0.0
        await _execute(state, action, rnd, "")
        rnd.overhead_s += time.perf_counter() - started - state.llm_s
    await _final_step(state, traj)
    return traj
