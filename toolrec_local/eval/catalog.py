"""The methods `eval` compares: one entry each, the only place a method is named.

An entry says its kind (score / list: no LLM, a batch of users at once; agent / ranker: the
LLM, one user at a time), the backbone its tools come from, whether it needs the attribute
retrieval tools, whether Table 2 counts it as a baseline, and its builder. An agent method
ends with the final step, so `--finish` names its records (toolrec, toolrec/last-list).
Adding a method is one entry here and its builder (methods.py, llm_methods.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from toolrec_local.errors import ToolrecError
from toolrec_local.eval.llm_methods import LAST_LIST, LLMSuite, agent, ranker
from toolrec_local.eval.methods import (TOOL_PREFIX, ListMethod, LLMMethod, ScoreMethod, ToolBox, attribute_scores,
                                        backbone_scores, p5_lists, popularity)
from toolrec_local.settings import RunSettings

KINDS = ("score", "list", "agent", "ranker")


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    # score / list: (name, ds, tools) -> ScoreMethod | ListMethod;
    # agent / ranker: (entry, suite) -> async (user, seed, part) -> Outcome
    build: Callable
    about: str
    backbone: str = "sasrec"
    attribute_tools: bool = False  # needs the backbone's attribute retrieval tools
    baseline: bool = False  # Table 2: ToolRec's improvement is taken over the best of these present

    @property
    def llm(self) -> bool:
        return self.kind in ("agent", "ranker")

    @property
    def finishes(self) -> bool:
        """Ends with the final step: `--finish` decides its record names."""
        return self.kind == "agent"


TABLE = (
    Method("pop", "score", popularity, "most popular items in the training data", baseline=True),
    Method("sasrec", "score", backbone_scores, "SASRec backbone, full ranking", baseline=True),
    Method("bert4rec", "score", backbone_scores, "BERT4Rec backbone, full ranking", backbone="bert4rec", baseline=True),
    Method("sasrec-bert", "score", backbone_scores, "SASRec_BERT: SASRec with all-MiniLM-L6-v2 item text features "
           "added to the ID embeddings, full ranking", backbone="sasrec-bert", baseline=True),
    Method("bert4rec-bert", "score", backbone_scores, "BERT4Rec_BERT: BERT4Rec with all-MiniLM-L6-v2 item text "
           "features added to the ID embeddings, full ranking", backbone="bert4rec-bert", baseline=True),
    Method("p5", "list", p5_lists, "P5: a small T5 trained from scratch generates the next item's id; top 10 by beam "
           "search over valid ids", baseline=True),
    Method(TOOL_PREFIX + "<attr>", "score", attribute_scores,
           "one attribute-oriented retrieval tool alone (SASRec backbone), full ranking"),
    Method("toolrec", "agent", agent("run_agent"), "the agent (surrogate user + tools), SASRec backbone",
           attribute_tools=True),
    Method("toolrec-b", "agent", agent("run_agent"), "the agent with BERT4Rec-backbone tools (ToolRec_B)",
           backbone="bert4rec", attribute_tools=True),
    Method("llmrank", "ranker", ranker("llmrank", include_profile=False), "the LLM ranks SASRec's top 30 (LLMRank)",
           baseline=True),
    Method("chatrec", "ranker", ranker("chatrec"), "the LLM re-ranks SASRec's top 30 given the user profile (Chat-REC)",
           baseline=True),
    Method("single", "ranker", ranker(), "ablation: the Rank tool alone on SASRec's 30 candidates"),
    Method("multi", "ranker", ranker(multi=True), "ablation: the Rank tool on SASRec's + the attribute tools' "
           "candidates, 30 in all", attribute_tools=True),
    Method("plan", "agent", agent("run_plan"), "ablation: the LLM writes the whole tool plan once, then it is executed",
           attribute_tools=True),
)
METHODS = {m.name: m for m in TABLE}
TOOLREC = "toolrec"
BASELINES = tuple(m.name for m in TABLE if m.baseline)


def entry(name: str) -> Method:
    """The table's entry of a method or record name ("tool:genre", "toolrec/last-list")."""
    base = name.split("/")[0]
    return METHODS[TOOL_PREFIX + "<attr>" if base.startswith(TOOL_PREFIX) else base]


def needs_llm(name: str) -> bool:
    try:
        return entry(name).llm
    except KeyError:  # a name no entry has (a record of another version): not an LLM method here
        return False


def parse_method_names(text: str, attributes: list[str]) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ToolrecError("no methods given", "pass --method, e.g. --method pop,sasrec,toolrec")
    for name in names:
        if name.startswith(TOOL_PREFIX):
            attr = name[len(TOOL_PREFIX):]
            if attr not in attributes:
                raise ToolrecError(f"method {name!r}: the dataset has no attribute {attr!r}",
                                   f"use one of: {', '.join(TOOL_PREFIX + a for a in attributes) or '(none: the dataset has no attributes)'}")
        elif name not in METHODS or name == TOOL_PREFIX + "<attr>":
            raise ToolrecError(f"unknown method {name!r}", f"use any of: {', '.join(METHODS)}")
    return list(dict.fromkeys(names))


def build_score_method(name: str, ds, tools: ToolBox) -> ScoreMethod | ListMethod:
    """Any method without an LLM (list methods too)."""
    return entry(name).build(name, ds, tools)


def build_llm_methods(names: list[str], ds, tools: ToolBox, settings: RunSettings, *, servers: list[str] | None = None,
                      api_key: str | None = None, backend_obj=None, rank_servers: list[str] | None = None) -> LLMSuite:
    """The LLM methods by name (suite.methods[name]); an agent method's records are named
    after `settings.finish` (LLMMethod.name, LLMMethod.variants). `backend_obj`: a backend
    (or one per server) instead of the one `settings` names (tests)."""
    from toolrec_local.agent.context import AgentConfig

    for name in names:  # load tools and check them before the backend is built
        m = entry(name)
        tool = tools.get(m.backbone)
        if m.attribute_tools and not list(tool.attributes):
            raise ToolrecError(f"method {name!r} needs attribute retrieval tools, and no {m.backbone} tool is trained for {ds.name}",
                               f"run: toolrec-local train tools --dataset {ds.name} --backbone {m.backbone}")
    if backend_obj is None:
        backend_obj = make_backends(settings, servers, api_key)
    backends = list(backend_obj) if isinstance(backend_obj, (list, tuple)) else [backend_obj]
    suite = LLMSuite(ds, tools, backends, AgentConfig.of(settings))
    if settings.rank_llm is not None:  # --rank-llm: its own backend, of the same kind, at --rank-server
        from toolrec_local.llm.factory import make_backend

        suite.rank_backend = make_backend(settings.rank_llm, settings.backend,
                                          base_url=list(rank_servers) if rank_servers else None, api_key=api_key)
    suite.methods = {n: _llm_method(entry(n), suite, settings.finish) for n in names}
    return suite


def make_backends(settings: RunSettings, servers: list[str] | None, api_key: str | None) -> list:
    from toolrec_local.llm.factory import make_backend

    if settings.backend == "vllm" and servers and len(servers) > 1:  # one backend per server: users stick to one
        return [make_backend(settings.llm, "vllm", base_url=[url], api_key=api_key) for url in servers]
    return [make_backend(settings.llm, settings.backend, base_url=list(servers) if servers else None, api_key=api_key)]


def _llm_method(m: Method, suite: LLMSuite, finish: str) -> LLMMethod:
    run = m.build(m, suite)
    if not m.finishes:
        return LLMMethod(m.name, run)
    if finish == "last-list":
        return LLMMethod(m.name + LAST_LIST, run)
    return LLMMethod(m.name, run, variants=(m.name + LAST_LIST,) if finish == "both" else ())
