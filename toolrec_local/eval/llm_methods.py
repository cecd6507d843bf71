"""The LLM methods: adapters from the agent's pieces to `Outcome`s the runner records.

* toolrec / toolrec-b: the surrogate-user loop (`run_agent`) with SASRec / BERT4Rec tools.
* plan: the "w/ Plan" ablation (`run_plan`): the whole plan first, then its execution.
* llmrank: the Rank tool on SASRec's top 30, prompted with the history only (LLMRank).
* chatrec: SASRec's top 30 re-ranked under Chat-REC's own prompt (`chatrec_*` templates:
  the user described by profile and rated history, asked conversationally which candidates
  they would like), not ToolRec's Rank instruction.
* single: the "w/ single" ablation: ToolRec's Rank tool (profile + history, as the agent sees
  it) on SASRec's 30 candidates.
* multi: the "w/ multi" ablation: the Rank tool on SASRec's + every attribute tool's
  candidates, 30 in all (an equal share per tool, duplicates skipped), under their tool marks.

One AgentContext per (backbone, server) serves every concurrent user. With several --server
URLs each user sticks to one server (internal user id modulo the number of servers): the
rounds of one agent run resend a growing conversation, and on the same server its prefix is
still in the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolrec_local.errors import ToolrecError
from toolrec_local.eval.methods import CANDIDATES, LLMMethod, Outcome, ToolBox, backbone_of

AGENT_STATS = ("llm_calls", "tokens_in", "tokens_out", "latency_s", "retries", "repairs", "grammar_violations",
               "invalid_items", "overhead_s", "rounds")
NEEDS_ATTRIBUTE_TOOLS = ("toolrec", "toolrec-b", "plan", "multi")


@dataclass
class LLMSuite:
    methods: dict[str, LLMMethod]
    backends: list

    def backend_of(self, user: int) -> int:
        """The backend (server) a user's calls go to: always the same one, so its prefix cache
        holds the user's conversation (the runner sizes each server's users by this too)."""
        return user % len(self.backends)

    async def start(self) -> None:
        """Reach the server(s) before any user runs: a dead server is one clear error, not
        hundreds of failed users."""
        for backend in self.backends:
            connect = getattr(backend, "connect", None)
            if connect is not None:
                await connect()

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal integers, larger shares first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def multi_candidates(tool, user: int, attributes: list[str], part: str, total: int = CANDIDATES) -> list[tuple[str, list[int]]]:
    """SASRec's and each attribute tool's top items, `total` distinct in all, grouped under
    their tool marks (the "w/ multi" ablation). A tool whose items were already taken by an
    earlier tool gives its next ones instead."""
    from toolrec_local.agent.actions import Retrieval, format_action

    sources = [None, *attributes]
    taken: set[int] = set()
    groups = []
    for attr, quota in zip(sources, shares(total, len(sources))):
        ranked = [i for i, _ in tool.retrieve(user, attr, min(tool.dataset.n_items, total + len(taken)), part=part)]
        items = [i for i in ranked if i not in taken][:quota]
        taken.update(items)
        groups.append((format_action(Retrieval(attr, len(items))), items))
    return groups


def _agent_outcome(traj) -> Outcome:
    totals = traj.totals()
    return Outcome(final=list(traj.final_items), stats={k: totals.get(k, 0) for k in AGENT_STATS}, trajectory=traj.to_dict())


def _rank_outcome(ds, items: list[int], stats: dict, groups: list[tuple[str, list[int]]], method: str) -> Outcome:
    raw = lambda xs: [ds.item_ids[i] for i in xs]  # noqa: E731
    record_stats = {k: stats.get(k, 0) for k in AGENT_STATS if k != "rounds"}
    trajectory = {"method": method, "groups": [{"mark": m, "items": raw(xs)} for m, xs in groups], "final": raw(items),
                  "note": stats.get("note", ""), "totals": record_stats}
    return Outcome(final=list(items), stats=record_stats, trajectory=trajectory)


def build_llm_methods(names: list[str], ds, tools: ToolBox, *, llm: str, backend: str, servers: list[str] | None = None,
                      api_key: str | None = None, top_n: int = 10, grammar: bool = True, backend_obj=None) -> LLMSuite:
    from toolrec_local.agent.loop import AgentConfig, AgentContext, llm_rank, run_agent, run_plan

    contexts: dict[tuple[str, int], AgentContext] = {}
    for name in names:  # load tools and check them before the backend is built
        tool = tools.get(backbone_of(name))
        if name in NEEDS_ATTRIBUTE_TOOLS and not list(tool.attributes):
            raise ToolrecError(f"method {name!r} needs attribute retrieval tools, and no {backbone_of(name)} tool is trained for {ds.name}",
                               f"run: toolrec-local train tools --dataset {ds.name} --backbone {backbone_of(name)}")
    if backend_obj is None:
        from toolrec_local.llm.factory import make_backend

        if backend == "vllm" and servers and len(servers) > 1:  # one backend per server: users stick to one
            backend_obj = [make_backend(llm, backend, base_url=[url], api_key=api_key) for url in servers]
        else:
            backend_obj = make_backend(llm, backend, base_url=list(servers) if servers else None, api_key=api_key)
    backends = list(backend_obj) if isinstance(backend_obj, (list, tuple)) else [backend_obj]
    config = AgentConfig(top_n=top_n, grammar=grammar)
    suite = LLMSuite({}, backends)

    def ctx(backbone: str, user: int) -> AgentContext:
        key = (backbone, suite.backend_of(user))
        if key not in contexts:
            contexts[key] = AgentContext(ds, tools.get(backbone), backends[key[1]], config)
        return contexts[key]

    def agent(name: str, fn):
        ctx(backbone_of(name), 0)  # built now: a prompt or tool problem shows before any user runs

        async def run(user: int, seed: int, part: str) -> Outcome:
            return _agent_outcome(await fn(ctx(backbone_of(name), user), user, part=part, seed=seed))

        return run

    def ranker(name: str, include_profile: bool, multi: bool = False, style: str = "rank"):
        ctx("sasrec", 0)

        async def run(user: int, seed: int, part: str) -> Outcome:
            c = ctx("sasrec", user)
            if multi:
                groups = multi_candidates(c.tool, user, list(c.tool.attributes), part)
            else:
                from toolrec_local.agent.actions import Retrieval, format_action

                items = [i for i, _ in c.tool.retrieve(user, None, CANDIDATES, part=part)]
                groups = [(format_action(Retrieval(None, len(items))), items)]
            candidates = [i for _, xs in groups for i in xs]
            items, stats = await llm_rank(c, user, candidates, top_n, None, include_profile=include_profile,
                                          part=part, seed=seed, groups=groups, style=style)
            return _rank_outcome(ds, items, stats, groups, name)

        return run

    builders = {
        "toolrec": lambda: agent("toolrec", run_agent),
        "toolrec-b": lambda: agent("toolrec-b", run_agent),
        "plan": lambda: agent("plan", run_plan),
        "llmrank": lambda: ranker("llmrank", include_profile=False),
        "chatrec": lambda: ranker("chatrec", include_profile=True, style="chatrec"),
        "single": lambda: ranker("single", include_profile=True),
        "multi": lambda: ranker("multi", include_profile=True, multi=True),
    }
    suite.methods = {n: LLMMethod(n, builders[n]()) for n in names}
    return suite
