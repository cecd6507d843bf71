"""The LLM methods: adapters from the agent's pieces to `Outcome`s the runner records.

* toolrec / toolrec-b: the surrogate-user loop (`run_agent`) with SASRec / BERT4Rec tools.
* plan: the "w/ Plan" ablation (`run_plan`): the whole plan first, then its execution.
  These three end with the final step that `finish` names: "llm" (the LLM ranks every
  gathered list), "last-list" (recorded as `toolrec/last-list` etc.: the last list cut or
  padded, no LLM call), or "both" (the "llm" record plus the `/last-list` one, computed from
  the same trajectory: `Outcome.variants`).
* llmrank: SASRec's top 30 ranked under LLMRank's own prompt (`llmrank_*` templates: the
  history in order, the most recent item named, no profile).
* chatrec: SASRec's top 30 re-ranked under Chat-REC's own prompt (`chatrec_*` templates:
  the user described by profile and rated history, asked conversationally which candidates
  they would like), not ToolRec's Rank instruction.
* single: the "w/ single" ablation: ToolRec's Rank tool (profile + history, as the agent sees
  it) on SASRec's 30 candidates.
* multi: the "w/ multi" ablation: the Rank tool on SASRec's + every attribute tool's
  candidates, 30 in all, taken from the tools' lists in turn (the merge Rank and the final
  step use), each list under its tool mark with its scores.

One AgentContext per (backbone, server) serves every concurrent user. With several --server
URLs each user sticks to one server (internal user id modulo the number of servers): the
rounds of one agent run resend a growing conversation, and on the same server its prefix is
still in the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolrec_local.errors import ToolrecError
from toolrec_local.eval.methods import (CANDIDATES, FINISH_CHOICES, FINISH_METHODS, LAST_LIST, LLMMethod, Outcome,
                                        ToolBox, backbone_of)

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


def multi_candidates(tool, user: int, attributes: list[str], part: str, total: int = CANDIDATES) -> list:
    """The "w/ multi" candidates: SASRec's and each attribute tool's top `total`, merged by
    taking from each list in turn until `total` distinct items (`memory.interleave`, as Rank
    and the final step do); each list is returned with only those items, under its tool mark
    with its scores (ToolLists)."""
    from toolrec_local.agent.actions import Retrieval
    from toolrec_local.agent.memory import ToolList, interleave

    lists = []
    for attr in (None, *attributes):
        pairs = tool.retrieve(user, attr, min(tool.dataset.n_items, total), part=part)
        lists.append(ToolList(Retrieval(attr, len(pairs)), [int(i) for i, _ in pairs], [float(s) for _, s in pairs]))
    keep = set(interleave((lst.items for lst in lists), total))
    return [lst.only(keep) for lst in lists]


def _agent_outcome(traj, variants: bool) -> Outcome:
    totals = traj.totals()
    out = Outcome(final=list(traj.final_items), stats={k: totals.get(k, 0) for k in AGENT_STATS}, trajectory=traj.to_dict())
    if variants:  # the last-list answer of the same trajectory, without the final step's LLM call
        last = traj.totals(with_finish=False)
        step = traj.finish
        out.variants[LAST_LIST] = Outcome(final=list(traj.last_list_items), stats={k: last.get(k, 0) for k in AGENT_STATS},
                                          trajectory=traj.to_dict(variant="last-list"),
                                          saved_s=step.usage.latency_s + step.overhead_s if step else 0.0)
    return out


def _rank_outcome(ds, items: list[int], stats: dict, lists: list, method: str) -> Outcome:
    raw = lambda xs: [ds.item_ids[i] for i in xs]  # noqa: E731
    record_stats = {k: stats.get(k, 0) for k in AGENT_STATS if k != "rounds"}
    trajectory = {"method": method, "groups": [{"mark": lst.mark, "items": raw(lst.items)} for lst in lists],
                  "final": raw(items), "note": stats.get("note", ""), "totals": record_stats,
                  "shown": [{"mark": m, "items": raw(xs)} for m, xs in stats.get("shown", [])], "picked": stats.get("picked")}
    return Outcome(final=list(items), stats=record_stats, trajectory=trajectory)


def build_llm_methods(names: list[str], ds, tools: ToolBox, *, llm: str, backend: str, servers: list[str] | None = None,
                      api_key: str | None = None, top_n: int = 10, grammar: bool = True, backend_obj=None,
                      finish: str = "llm", temperature: float = 0.0, repeated_lists: str = "refer") -> LLMSuite:
    """The LLM methods by name (suite.methods[name]); an agent method's records are named
    after `finish` (LLMMethod.name, LLMMethod.variants)."""
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
    if finish not in FINISH_CHOICES:
        raise ToolrecError(f"unknown finish {finish!r}", f"use one of: {', '.join(FINISH_CHOICES)}")
    config = AgentConfig(top_n=top_n, grammar=grammar, temperature=temperature,
                         finish="last-list" if finish == "last-list" else "llm", repeated_lists=repeated_lists)
    suite = LLMSuite({}, backends)

    def ctx(backbone: str, user: int) -> AgentContext:
        key = (backbone, suite.backend_of(user))
        if key not in contexts:
            contexts[key] = AgentContext(ds, tools.get(backbone), backends[key[1]], config)
        return contexts[key]

    def agent(name: str, fn):
        ctx(backbone_of(name), 0)  # built now: a prompt or tool problem shows before any user runs

        async def run(user: int, seed: int, part: str) -> Outcome:
            out = _agent_outcome(await fn(ctx(backbone_of(name), user), user, part=part, seed=seed), finish == "both")
            out.variants = {name + key: o for key, o in out.variants.items()}
            return out

        return run

    def ranker(name: str, include_profile: bool, multi: bool = False, style: str = "rank"):
        ctx("sasrec", 0)

        async def run(user: int, seed: int, part: str) -> Outcome:
            c = ctx("sasrec", user)
            if multi:
                lists = multi_candidates(c.tool, user, list(c.tool.attributes), part)
            else:
                from toolrec_local.agent.actions import Retrieval
                from toolrec_local.agent.memory import ToolList

                pairs = c.tool.retrieve(user, None, CANDIDATES, part=part)
                lists = [ToolList(Retrieval(None, len(pairs)), [int(i) for i, _ in pairs], [float(s) for _, s in pairs])]
            items, stats = await llm_rank(c, user, lists, top_n, None, include_profile=include_profile,
                                          part=part, seed=seed, style=style)
            return _rank_outcome(ds, items, stats, lists, name)

        return run

    builders = {
        "toolrec": lambda: agent("toolrec", run_agent),
        "toolrec-b": lambda: agent("toolrec-b", run_agent),
        "plan": lambda: agent("plan", run_plan),
        "llmrank": lambda: ranker("llmrank", include_profile=False, style="llmrank"),
        "chatrec": lambda: ranker("chatrec", include_profile=True, style="chatrec"),
        "single": lambda: ranker("single", include_profile=True),
        "multi": lambda: ranker("multi", include_profile=True, multi=True),
    }
    def method(n: str) -> LLMMethod:
        if n not in FINISH_METHODS:
            return LLMMethod(n, builders[n]())
        if finish == "last-list":
            return LLMMethod(n + LAST_LIST, builders[n]())
        return LLMMethod(n, builders[n](), variants=(n + LAST_LIST,) if finish == "both" else ())

    suite.methods = {n: method(n) for n in names}
    return suite
