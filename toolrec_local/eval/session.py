"""One `eval` invocation: check the options, build the methods, open the run folder, run what
is left, write summary.json. The CLI is a thin layer over `evaluate`."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from toolrec_local.agent.context import ANSWER_SPACES, REPEATED_LISTS
from toolrec_local.agent.prompts import load_prompts
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.methods import (FINISH_CHOICES, FINISH_METHODS, HISTORY_PROTOCOLS, ToolBox, build_score_method,
                                       needs_llm, parse_method_names)
from toolrec_local.eval.results import ResultsWriter
from toolrec_local.eval.rundir import RunConfig, RunFolder, command_line, load_runs
from toolrec_local.eval.runner import Runner, Tally, plan_users
from toolrec_local.eval.summary import summarize

BACKENDS = ("vllm", "local", "openai")


@dataclass
class EvalOptions:
    dataset: str
    methods: str
    llm: str | None = None
    users: int = 200
    seeds: int | None = None  # None: 3 for sampled users, 1 with all_users
    seed: list[int] = field(default_factory=list)  # explicit samples (--seed, repeated); not with seeds
    all_users: bool = False
    concurrency: int | None = None  # None: auto, each server's KV cache decides (eval/capacity.py)
    out: Path | None = None
    backend: str = "vllm"
    servers: list[str] = field(default_factory=list)
    api_key: str | None = None
    shard: tuple[int, int] | None = None
    top_n: int = 10
    part: str = "test"
    batch_size: int = 256
    grammar: bool = True
    history: str = "exclude"  # or "keep": score methods rank history items too (HISTORY_PROTOCOLS)
    finish: str = "llm"  # the agent methods' final step: llm | last-list | both (methods.FINISH_CHOICES)
    temperature: float = 0.0  # LLM sampling temperature (0: greedy)
    repeated_lists: str = "refer"  # the agent: "refer" names a repeated identical list, "full" lists it again
    max_rounds: int = 7  # the agent: decision rounds, the forced final step not counted (the authors' 7)
    demos: int = 3  # the agent: in-context demonstrations (the authors ship 3)
    observe_items: int | None = None  # the agent: items of each list observed (None: the whole list)
    answer_space: str = "gathered"  # the agent's Rank and final step: gathered items, or the whole catalogue


def default_out(opts: EvalOptions) -> Path:
    return Path("runs") / f"{opts.dataset}-{opts.llm or 'no-llm'}"


def check_options(opts: EvalOptions, attributes: list[str]) -> list[str]:
    names = parse_method_names(opts.methods, attributes)
    llm_names = [n for n in names if needs_llm(n)]
    if llm_names and not opts.llm:
        raise ToolrecError(f"method(s) {', '.join(llm_names)} need an LLM", "pass --llm NAME (see: toolrec-local models list)")
    if opts.backend not in BACKENDS:
        raise ToolrecError(f"unknown backend {opts.backend!r}", f"use one of: {', '.join(BACKENDS)}")
    if opts.users < 1:
        raise ToolrecError("--users must be at least 1", "e.g. --users 200")
    if opts.seeds is not None and opts.seeds < 1:
        raise ToolrecError("--seeds must be at least 1", "e.g. --seeds 3")
    if opts.seed and opts.seeds is not None:
        raise ToolrecError("--seed and --seeds were both given",
                           "pass --seeds N for the samples 0..N-1, or --seed S once per sample (--seed 3 --seed 4), not both")
    if any(s < 0 for s in opts.seed):
        raise ToolrecError(f"--seed {min(opts.seed)} is negative", "a seed is a number from 0 up, e.g. --seed 3")
    if opts.top_n < 1:
        raise ToolrecError("--top-n must be at least 1", "the paper uses 10")
    if opts.history not in HISTORY_PROTOCOLS:
        raise ToolrecError(f"unknown --history {opts.history!r}",
                           "use exclude (rank among items outside the history) or keep (RecBole's protocol)")
    if opts.part not in ("test", "valid"):
        raise ToolrecError(f"unknown split part {opts.part!r}", "use test or valid")
    if opts.servers and opts.backend == "local":
        raise ToolrecError("--server is for the vllm and openai backends", "drop --server, or pass --backend vllm")
    if opts.finish not in FINISH_CHOICES:
        raise ToolrecError(f"unknown --finish {opts.finish!r}", f"use one of: {', '.join(FINISH_CHOICES)}")
    if not 0.0 <= opts.temperature <= 2.0:
        raise ToolrecError(f"--temperature {opts.temperature} is out of range", "use 0 (greedy) up to 2; the paper ran at 1")
    if opts.repeated_lists not in REPEATED_LISTS:
        raise ToolrecError(f"unknown --repeated-lists {opts.repeated_lists!r}", f"use one of: {', '.join(REPEATED_LISTS)}")
    if opts.max_rounds < 1 or opts.demos < 0 or (opts.observe_items is not None and opts.observe_items < 1):
        raise ToolrecError(f"--max-rounds {opts.max_rounds}, --demos {opts.demos}, --observe-items "
                           f"{opts.observe_items}: out of range",
                           "use --max-rounds 1 or more, --demos 0 or more, --observe-items 1 or more")
    if opts.answer_space not in ANSWER_SPACES:
        raise ToolrecError(f"unknown --answer-space {opts.answer_space!r}",
                           "use gathered (only items the tools returned) or catalogue (any item outside the history)")
    return names


def evaluate(opts: EvalOptions, *, on_update: Callable[[str, Tally], None] | None = None,
             tool_loader: Callable | None = None, llm_factory: Callable | None = None,
             on_note: Callable[[str], None] | None = None) -> tuple[dict, Path]:
    """Run (or resume) an evaluation; return (summary, run folder). `tool_loader` and
    `llm_factory` let tests put in small tools and scripted LLMs; `on_note` hears how many
    users run at once and why."""
    from toolrec_local.data import load_dataset

    ds = load_dataset(opts.dataset)
    names = check_options(opts, list(ds.attributes))
    uses_llm = any(needs_llm(n) for n in names)
    uses_agent = any(n in FINISH_METHODS for n in names)  # --finish and --answer-space are theirs
    # explicit samples in one order, so --seed 4 --seed 3 continues the folder --seed 3 --seed 4 made
    seeds = sorted(set(opts.seed)) or list(range(opts.seeds if opts.seeds is not None else (1 if opts.all_users else 3)))
    users = None if opts.all_users else opts.users
    concurrency = 1 if (uses_llm and opts.backend == "local") else opts.concurrency
    if concurrency is not None and concurrency < 1:
        raise ToolrecError("--concurrency must be at least 1", "pass a number, or auto (the default)")
    plan = plan_users(ds, users, seeds, opts.shard)

    # Build every method before anything runs: a missing checkpoint fails now, not halfway.
    tools = ToolBox(ds, tool_loader)
    methods = []
    suite = None
    if uses_llm:
        factory = llm_factory
        if factory is None:
            from toolrec_local.eval.llm_methods import build_llm_methods as factory
        suite = factory(
            [n for n in names if needs_llm(n)], ds, tools, llm=opts.llm, backend=opts.backend,
            servers=opts.servers, api_key=opts.api_key, top_n=opts.top_n, grammar=opts.grammar,
            finish=opts.finish, temperature=opts.temperature, repeated_lists=opts.repeated_lists,
            answer_space=opts.answer_space, history=opts.history,
            max_rounds=opts.max_rounds, demos=opts.demos, observe_items=opts.observe_items,
        )
    for n in names:
        methods.append(suite.methods[n] if needs_llm(n) else build_score_method(n, ds, tools))

    recorded = [n for m in methods for n in (m.name, *getattr(m, "variants", ()))]  # e.g. toolrec/last-list
    config = RunConfig(
        dataset=ds.name, dataset_fingerprint=ds.fingerprint, methods=recorded, seeds=seeds, users=users,
        llm=opts.llm if uses_llm else None, backend=opts.backend if uses_llm else None, part=opts.part,
        top_n=opts.top_n, shard=opts.shard, servers=list(opts.servers), concurrency=concurrency or "auto",
        command=command_line(), uses_llm=uses_llm, grammar=opts.grammar if uses_llm else True,
        expected={str(s): len(u) for s, u in plan.items()}, history=opts.history,
        finish=opts.finish if uses_agent else None, answer_space=opts.answer_space if uses_agent else None,
        temperature=opts.temperature if uses_llm else 0.0,
        repeated_lists=opts.repeated_lists if uses_llm else None,
        max_rounds=opts.max_rounds if uses_agent else None, demos=opts.demos if uses_agent else None,
        observe_items=(opts.observe_items or "all") if uses_agent else None,
        prompts=load_prompts(ds.domain).fingerprint if uses_llm else None,
    )
    out = Path(opts.out or default_out(opts))

    async def run() -> tuple[dict, Path]:
        if suite is not None:  # each server's capacity, read from its /metrics
            from toolrec_local.eval.capacity import plan_for_suite

            cap = await plan_for_suite(suite, concurrency, opts.api_key)
            for note in cap.notes:
                (on_note or (lambda text: None))(note)
        folder = RunFolder(out, config)  # opened once the server answered: a refused run leaves no folder
        try:
            with ResultsWriter(folder.paths["results"], folder.paths["trajectories"]) as writer:
                runner = Runner(ds, writer, part=opts.part, top_n=opts.top_n, batch_size=opts.batch_size,
                                concurrency=concurrency or 1, on_update=on_update,
                                exclude_history=opts.history == "exclude")
                if suite is not None:
                    runner.slots, runner.route, runner.watch = cap.slots, cap.route, cap.watch
                try:
                    await runner.run(methods, plan)
                except BaseException:
                    try:  # what finished is summarised; a summary that cannot be written hides nothing
                        write_summary(folder.folder)
                    except (OSError, ToolrecError):
                        pass
                    raise
                server = {n: t.server.as_dict() for n, t in runner.tallies.items() if t.server is not None}
                return write_summary(folder.folder, {"llm_server": server} if server else None), folder.folder
        finally:
            folder.close()

    return asyncio.run(_started(suite, run))


async def _started(suite, body: Callable):
    """Reach the LLM server(s) first (unreachable, another model, constraints ignored: one
    error, nothing written), then run `body`; the backends are closed either way."""
    try:
        if suite is not None and hasattr(suite, "start"):
            await suite.start()
        return await body()
    finally:
        if suite is not None:
            await suite.aclose()


def write_summary(folder: Path, extra: dict | None = None) -> dict:
    """Summarise what the folder holds (all its shards so far) into folder/summary.json,
    atomically, so shards writing side by side never leave a half-written file. `extra`:
    fields of this invocation only (llm_server: what the servers' /metrics counted)."""
    view = load_runs([folder])[0]
    path = Path(folder) / "summary.json"
    summary = summarize(view.config, view.records, view.expected, view.missing_shards)
    summary["bad_lines"] = view.bad_lines
    summary.update(extra or {})
    tmp = path.with_name(f".summary.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ToolrecError(f"cannot write {path}: {exc.strerror or exc}",
                           "free disk space, then re-run the same command (nothing is redone)") from None
    return summary
