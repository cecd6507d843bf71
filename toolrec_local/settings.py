"""`RunSettings`: everything that makes a run's results what they are, in one frozen object.

Built once from the command line, checked once here, carried whole to the agent (AgentConfig
extends it) and recorded whole in run.json (eval/rundir.py), where its identity fields must
match for a run to be continued. Each field says, in its metadata, its flag, its choices or
check, whether it belongs to the LLM part of a run (recorded only when an LLM method runs,
compared only between LLM runs), whether it is identity, and the value a run folder written
before the field existed is read with. Adding an option is one field here and its CLI flag.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Callable

from toolrec_local.errors import ToolrecError

BACKENDS = ("vllm", "local", "openai")
PARTS = ("test", "valid")
FINISH_CHOICES = ("llm", "last-list", "both")
REPEATED_LISTS = ("refer", "full")
# `eval --history`: the items score methods rank the target among. LLM methods never return
# history items, so their results are the same under both.
HISTORY_PROTOCOLS = {
    "exclude": "all items except the user's history",
    "keep": "all items, the user's history included (RecBole's sequential full ranking)",
}


def option(default, *, flag: str, fix: str = "", choices=None, check: Callable | None = None, llm: bool = False,
           identity: bool = True, legacy=MISSING):
    """A RunSettings field. `choices` (a tuple or dict's keys) or `check` (value -> bool, with
    `fix` saying what is allowed); `llm`: part of an LLM run only; `legacy`: the value of a
    run folder that does not record the field (default: the field's default)."""
    return field(default=default, metadata={"flag": flag, "fix": fix, "choices": tuple(choices) if choices else None,
                                            "check": check, "llm": llm, "identity": identity, "legacy": legacy})


@dataclass(frozen=True)
class RunSettings:
    top_n: int = option(10, flag="--top-n", check=lambda n: n >= 1, fix="the paper uses 10")
    part: str = option("test", flag="--part", choices=PARTS)
    history: str = option("exclude", flag="--history", choices=HISTORY_PROTOCOLS,
                          fix="use exclude (rank among items outside the history) or keep (RecBole's protocol)")
    llm: str | None = option(None, flag="--llm", llm=True)
    backend: str = option("vllm", flag="--backend", choices=BACKENDS, llm=True)
    grammar: bool = option(True, flag="--no-grammar", llm=True)  # False: free text, tolerant parser
    temperature: float = option(0.0, flag="--temperature", check=lambda t: 0.0 <= t <= 2.0, llm=True,
                                fix="use 0 (greedy) up to 2; the paper ran at 1")
    # The agent methods' final step: "llm" (the LLM ranks every gathered list, as the authors'
    # code), "last-list" (the ablation: the last list cut or padded, no LLM call; rows named e.g.
    # toolrec/last-list), or "both" (both rows from one trajectory). Not identity: the record
    # names say which step each row used.
    finish: str = option("llm", flag="--finish", choices=FINISH_CHOICES, llm=True, identity=False)
    # A tool list identical to one gathered earlier (a repeated call): "refer" - its observation,
    # and its place in the Rank and final prompts, name the earlier list (same information, a
    # shorter prompt that stays cached); "full" - listed again, as the authors' code does.
    # A folder written before the option listed them.
    repeated_lists: str = option("refer", flag="--repeated-lists", choices=REPEATED_LISTS, llm=True, legacy="full")
    # The prompt file's fingerprint (PromptSet.fingerprint), set by the run from the dataset's
    # domain: LLM results under other prompts are never mixed into one run. A folder from
    # before it cannot be continued with an LLM method.
    prompts: str | None = option(None, flag="prompts/<domain>.yaml", llm=True, legacy=None)

    def __post_init__(self):
        for f in fields(RunSettings):
            value, meta = getattr(self, f.name), f.metadata
            if meta["choices"] and value not in meta["choices"]:
                raise ToolrecError(f"unknown {meta['flag']} {value!r}", meta["fix"] or f"use one of: {', '.join(meta['choices'])}")
            if meta["check"] and not meta["check"](value):
                raise ToolrecError(f"{meta['flag']} {value!r} is out of range", meta["fix"])

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


def setting_fields(*, llm: bool | None = None, identity: bool | None = None) -> tuple[str, ...]:
    """RunSettings' field names, those of the LLM part (llm=True) or the rest (False), identity ones or not."""
    return tuple(f.name for f in fields(RunSettings)
                 if (llm is None or f.metadata["llm"] == llm) and (identity is None or f.metadata["identity"] == identity))


def legacy_value(name: str):
    """The value a run folder that does not record `name` was made with."""
    f = RunSettings.__dataclass_fields__[name]
    return f.default if f.metadata["legacy"] is MISSING else f.metadata["legacy"]


def split_settings(options: dict) -> tuple[dict, dict]:
    """(the RunSettings fields among `options`, the rest)."""
    names = set(setting_fields())
    return {k: v for k, v in options.items() if k in names}, {k: v for k, v in options.items() if k not in names}
