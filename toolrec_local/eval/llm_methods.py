"""The LLM methods' builders: adapters from the agent's pieces to `Outcome`s the runner records
(which method uses which builder is catalog.py's table).

* `agent(run_agent)` / `agent(run_plan)`: the surrogate-user loop, or the "w/ Plan" ablation
  (the whole plan first, then its execution). They end with the final step that `--finish`
  names: "llm" (the LLM ranks every gathered list), "last-list" (recorded as
  `toolrec/last-list` etc.: the last list cut or padded, no LLM call), or "both" (the "llm"
  record plus the `/last-list` one, computed from the same trajectory: `Outcome.variants`).
* `ranker(style, ...)`: one Rank call on retrieved candidates (agent/baselines.py): LLMRank's
  or Chat-REC's own prompt, or ToolRec's Rank instruction (the single / multi ablations).

One AgentContext per (backbone, server) serves every concurrent user. With several --server
URLs each user sticks to one server (internal user id modulo the number of servers): the
rounds of one agent run resend a growing conversation, and on the same server its prefix is
still in the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolrec_local.agent.trajectory import STAT_FIELDS
from toolrec_local.eval.methods import LLMMethod, Outcome, ToolBox

LAST_LIST = "/last-list"  # the record name suffix of an agent method's last-list answer
RECORD_STATS = STAT_FIELDS + ("fallbacks",)  # what an LLM method's record counts


@dataclass
class LLMSuite:
    """The LLM methods of a run (by name) and what they share: the backends and the agent's
    configuration, one AgentContext per (backbone, backend) built on first use."""

    ds: object
    tools: ToolBox
    backends: list
    config: object  # AgentConfig
    methods: dict[str, LLMMethod] = field(default_factory=dict)
    contexts: dict = field(default_factory=dict)
    rank_backend: object = None  # --rank-llm: the ranking calls' own backend (every server's users share it)

    def backend_of(self, user: int) -> int:
        """The backend (server) a user's calls go to: always the same one, so its prefix cache
        holds the user's conversation (the runner sizes each server's users by this too)."""
        return user % len(self.backends)

    def context(self, backbone: str, user: int):
        from toolrec_local.agent.context import AgentContext

        key = (backbone, self.backend_of(user))
        if key not in self.contexts:
            self.contexts[key] = AgentContext(self.ds, self.tools.get(backbone), self.backends[key[1]], self.config,
                                              rank_backend=self.rank_backend)
        return self.contexts[key]

    async def start(self) -> None:
        """Reach the server(s) before any user runs: a dead server is one clear error, not
        hundreds of failed users."""
        for backend in self.backends + ([self.rank_backend] if self.rank_backend is not None else []):
            connect = getattr(backend, "connect", None)
            if connect is not None:
                await connect()

    async def aclose(self) -> None:
        for backend in self.backends + ([self.rank_backend] if self.rank_backend is not None else []):
            await backend.aclose()


def agent(loop: str):
    """A builder of an agent method: `loop` is run_agent or run_plan (agent/loop.py)."""

    def build(spec, suite: LLMSuite):
        from toolrec_local.agent import loop as agent_loop

        fn = getattr(agent_loop, loop)
        # made now: a prompt, demonstration or tool problem shows before any user runs
        suite.context(spec.backbone, 0).renderer.system_with(suite.config.demos)
        both = suite.config.finish == "both"

        async def run(user: int, seed: int, part: str) -> Outcome:
            traj = await fn(suite.context(spec.backbone, user), user, part=part, seed=seed)
            return agent_outcome(traj, spec.name if both else None)

        return run

    return build


def ranker(style: str = "rank", include_profile: bool = True, multi: bool = False):
    """A builder of a ranking baseline: the backbone's 30 candidates (multi: and each attribute
    tool's, 30 in all) ranked by one Rank call under `style`'s prompt."""

    def build(spec, suite: LLMSuite):
        from toolrec_local.agent.baselines import llm_rank, multi_candidates, top_candidates

        suite.context(spec.backbone, 0).renderer.require_style(style)  # the method's own prompt, before any user runs

        async def run(user: int, seed: int, part: str) -> Outcome:
            c = suite.context(spec.backbone, user)
            lists = (multi_candidates(c.tool, user, list(c.tool.attributes), part) if multi
                     else top_candidates(c.tool, user, part))
            items, rnd = await llm_rank(c, user, lists, suite.config.top_n, None, include_profile=include_profile,
                                        part=part, seed=seed, style=style)
            return rank_outcome(suite.ds, items, rnd, lists, spec.name, getattr(c.ranker, "name", ""))

        return run

    return build


def agent_outcome(traj, variants_of: str | None = None) -> Outcome:
    """An agent run's record; with `variants_of` (a method name, under --finish both) also its
    last-list answer from the same trajectory, without the final step's LLM call."""
    totals = traj.totals()
    out = Outcome(final=list(traj.final_items), stats={k: totals.get(k, 0) for k in RECORD_STATS}, trajectory=traj.to_dict())
    if variants_of:
        last = traj.totals(with_finish=False)
        step = traj.final_step
        out.variants[variants_of + LAST_LIST] = Outcome(
            final=list(traj.last_list_items), stats={k: last.get(k, 0) for k in RECORD_STATS},
            trajectory=traj.to_dict(variant="last-list"),
            saved_s=step.usage.latency_s + step.overhead_s if step else 0.0)
    return out


def rank_outcome(ds, items: list[int], rnd, lists: list, method: str, ranker: str = "") -> Outcome:
    """A ranking baseline's record; `ranker`: the backend that ranked (a --rank-llm's, say)."""
    raw = lambda xs: [ds.item_ids[i] for i in xs]  # noqa: E731
    stats = rnd.stats()
    trajectory = {"method": method, "groups": [{"mark": lst.mark, "items": raw(lst.items)} for lst in lists],
                  "final": raw(items), "note": rnd.note, "totals": stats, "ranker": ranker,
                  "shown": [{"mark": m, "items": raw(xs)} for m, xs in rnd.shown], "picked": rnd.picked}
    return Outcome(final=list(items), stats=stats, trajectory=trajectory)
