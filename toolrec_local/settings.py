"""`RunSettings`: everything that makes a run's results what they are, in one frozen object.

Built once from the command line, checked once here, carried whole to the agent (AgentConfig
extends it) and recorded whole in run.json (eval/rundir.py), where its identity fields must
match for a run to be continued. Each field says, in its metadata, its flag, its choices or
check, its scope - "run" (every run), "llm" (recorded once an LLM method runs, compared
between LLM runs) or "agent" (recorded once an agent method runs: toolrec, toolrec-b, plan;
compared where both runs have it) -, whether it is identity, and the value a run folder
written before the field existed is read with. Adding an option is one field here and its
CLI flag.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Callable

from toolrec_local.errors import ToolrecError

BACKENDS = ("vllm", "local", "openai")
PARTS = ("test", "valid")
FINISH_CHOICES = ("llm", "last-list", "both")
REPEATED_LISTS = ("refer", "full")
ANSWER_SPACES = ("gathered", "catalogue")
# How an LLM ranking step (Rank, the final step, llmrank, single, multi, chatrec) ranks:
# "generate" - the LLM writes the top k as k lines (the item-list grammar); "score" - one
# request per 52 candidates, labelled with single-token letters, the candidates ordered by the
# log-probability of their label as the answer's token (LlamaRec's verbalizer; agent/rankers.py).
RANK_BY = ("generate", "score")
# `eval --history`: the items score methods rank the target among. LLM methods never return
# history items; under "keep" the agent's retrieval lists hold them (the authors' tools do not
# mask them), so the agent's rows differ between the two.
HISTORY_PROTOCOLS = {
    "exclude": "all items except the user's history",
    "keep": "all items, the user's history included (RecBole's sequential full ranking)",
}


SCOPES = ("run", "llm", "agent")


def option(default, *, flag: str, fix: str = "", choices=None, check: Callable | None = None, scope: str = "run",
           identity: bool = True, legacy=MISSING, none_as=None):
    """A RunSettings field. `choices` (a tuple or dict's keys) or `check` (value -> bool, with
    `fix` saying what is allowed); `scope`: see the module's doc; `legacy`: the value of a run
    folder that does not record the field (default: the field's default); `none_as`: how
    run.json writes a None value (null there means "not in this run")."""
    assert scope in SCOPES
    return field(default=default, metadata={"flag": flag, "fix": fix, "choices": tuple(choices) if choices else None,
                                            "check": check, "scope": scope, "identity": identity, "legacy": legacy,
                                            "none_as": none_as})


@dataclass(frozen=True)
class RunSettings:
    top_n: int = option(10, flag="--top-n", check=lambda n: n >= 1, fix="the paper uses 10")
    part: str = option("test", flag="--part", choices=PARTS)
    history: str = option("exclude", flag="--history", choices=HISTORY_PROTOCOLS,
                          fix="use exclude (rank among items outside the history) or keep (RecBole's protocol)")
    llm: str | None = option(None, flag="--llm", scope="llm")
    backend: str = option("vllm", flag="--backend", choices=BACKENDS, scope="llm")
    grammar: bool = option(True, flag="--no-grammar", scope="llm")  # False: free text, tolerant parser
    temperature: float = option(0.0, flag="--temperature", check=lambda t: 0.0 <= t <= 2.0, scope="llm",
                                fix="use 0 (greedy) up to 2; the paper ran at 1")
    # A tool list identical to one gathered earlier (a repeated call): "refer" - its observation,
    # and its place in the Rank and final prompts, name the earlier list (same information, a
    # shorter prompt that stays cached); "full" - listed again, as the authors' code does.
    # A folder written before the option listed them.
    repeated_lists: str = option("refer", flag="--repeated-lists", choices=REPEATED_LISTS, scope="llm", legacy="full")
    rank_by: str = option("generate", flag="--rank-by", choices=RANK_BY, scope="llm", legacy="generate")
    # generate only: N more rankings of the candidates shown in seeded shuffled orders, merged
    # with the first by Borda count (LLMRank's remedy for position bias); N+1 times the calls.
    rank_shuffles: int = option(0, flag="--rank-shuffles", check=lambda n: isinstance(n, int) and 0 <= n <= 20,
                                fix="use 0 (one ranking) up to 20", scope="llm", legacy=0)
    # The model every LLM ranking step asks (its own backend, of --backend's kind, at --rank-server);
    # None ("same" in run.json): the --llm model, as the agent's turns. Identity: a tuned ranker's
    # rows are not an untuned one's.
    rank_llm: str | None = option(None, flag="--rank-llm", scope="llm", legacy=None, none_as="same")
    # The prompt file's fingerprint (PromptSet.fingerprint), set by the run from the dataset's
    # domain: LLM results under other prompts are never mixed into one run. A folder from
    # before it cannot be continued with an LLM method.
    prompts: str | None = option(None, flag="prompts/<domain>.yaml", scope="llm", legacy=None)
    # The agent methods' final step: "llm" (the LLM ranks every gathered list, as the authors'
    # code), "last-list" (the ablation: the last list cut or padded, no LLM call; rows named e.g.
    # toolrec/last-list), or "both" (both rows from one trajectory). Identity: each mode's rows
    # come from its own trajectories (last-list's agent is told another Finish).
    finish: str = option("llm", flag="--finish", choices=FINISH_CHOICES, scope="agent", legacy=None)
    # What the agent's Rank and final step may answer: "gathered" - only items the tools returned
    # for this user; "catalogue" - any catalogue item outside the history (the authors' code
    # accepts any id; their prompts ask for items from the lists shown).
    answer_space: str = option("gathered", flag="--answer-space", choices=ANSWER_SPACES, scope="agent",
                               fix="use gathered (only items the tools returned) or catalogue (any item outside the history)")
    # Decision rounds (a Finish or an unreadable reply counts as one), the forced final step not
    # counted: the authors' chat_RecAct.py allows 7, then forces finish[]. Older folders: 8.
    max_rounds: int = option(7, flag="--max-rounds", check=lambda n: n >= 1, fix="use 1 or more", scope="agent",
                             legacy=8)
    # In-context demonstrations: the first N of prompts/<domain>.yaml (the authors ship 3). Older folders: 2.
    demos: int = option(3, flag="--demos", check=lambda n: n >= 0, fix="use 0 or more", scope="agent", legacy=2)
    # Items of each tool list in the agent's observation; None: the whole list, as the authors'
    # observation is (a number cuts each list to its first N, "... and M more."). Older folders: 10.
    observe_items: int | None = option(None, flag="--observe-items", check=lambda n: n is None or n >= 1,
                                       fix="use 1 or more", scope="agent", legacy=10, none_as="all")

    def __post_init__(self):
        for f in fields(RunSettings):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise ToolrecError(f"unknown {meta['flag']} {value!r}", meta["fix"] or f"use one of: {', '.join(meta['choices'])}")
            if meta["check"] and not meta["check"](value):
                raise ToolrecError(f"{meta['flag']} {value!r} is out of range", meta["fix"])
        if self.rank_by == "score":
            # the scores are the labels' log-probabilities under the choice constraint's mask
            # and cover the candidates shown only
            wrong = [(self.rank_shuffles, "--rank-shuffles", "shuffles are generate's remedy; a score ranking "
                      "sees each candidate once"), (not self.grammar, "--no-grammar", "the labels are scored "
                      "under a choice constraint"), (self.answer_space == "catalogue", "--answer-space catalogue",
                                                     "it ranks the candidates shown, not the catalogue")]
            for bad, flag, why in wrong:
                if bad:
                    raise ToolrecError(f"--rank-by score does not go with {flag}: {why}",
                                       f"leave out {flag}, or use --rank-by generate")

    @property
    def finish_mode(self) -> str:
        """What the agent's final step does: "llm" (also under "both": the last-list answer
        comes from the same trajectory) or "last-list"."""
        return "last-list" if self.finish == "last-list" else "llm"

    def with_(self, **changes) -> "RunSettings":
        return replace(self, **changes)

    def settings(self) -> "RunSettings":
        """Only the RunSettings part (of an AgentConfig, say)."""
        return RunSettings(**{f.name: getattr(self, f.name) for f in fields(RunSettings)})


def setting_fields(scope: str | None = None, *, identity: bool | None = None) -> tuple[str, ...]:
    """RunSettings' field names: of one scope ("run", "llm", "agent") or all, identity ones or not."""
    return tuple(f.name for f in fields(RunSettings)
                 if (scope is None or f.metadata["scope"] == scope) and (identity is None or f.metadata["identity"] == identity))


def to_json_value(name: str, value):
    none_as = RunSettings.__dataclass_fields__[name].metadata["none_as"]
    return none_as if value is None and none_as is not None else value


def from_json_value(name: str, value):
    none_as = RunSettings.__dataclass_fields__[name].metadata["none_as"]
    return None if none_as is not None and value == none_as else value


def legacy_value(name: str):
    """The value a run folder that does not record `name` was made with."""
    f = RunSettings.__dataclass_fields__[name]
    return f.default if f.metadata["legacy"] is MISSING else f.metadata["legacy"]


def split_settings(options: dict) -> tuple[dict, dict]:
    """(the RunSettings fields among `options`, the rest)."""
    names = set(setting_fields())
    return {k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names}
