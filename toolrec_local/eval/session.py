"""One `eval` invocation: check the options, assemble the run (`assemble_run`: the users'
plan, the methods, run.json's configuration; `open_run`: the servers' capacity, the run folder,
the writer and the runner), run what is left, write summary.json. The CLI and the benchmark
scripts are thin layers over these."""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable

from toolrec_local.agent.prompts import load_prompts
from toolrec_local.errors import ToolrecError
from toolrec_local.eval.catalog import build_score_method, entry, needs_llm, parse_method_names
from toolrec_local.eval.methods import ToolBox
from toolrec_local.eval.results import ResultsWriter
from toolrec_local.eval.rundir import RunConfig, RunFolder, command_line, load_runs
from toolrec_local.eval.runner import Runner, Tally, plan_users
from toolrec_local.eval.summary import summarize
from toolrec_local.settings import RunSettings, setting_fields, split_settings


@dataclass
class EvalOptions:
    """What one `eval` invocation runs: the run's settings (what its results are made with) and
    how this invocation goes about it (which users, how many at once, where)."""

    dataset: str
    methods: str
    settings: RunSettings = field(default_factory=RunSettings)
    users: int = 200
    seeds: int | None = None  # None: 3 for sampled users, 1 with all_users
    seed: list[int] = field(default_factory=list)  # explicit samples (--seed, repeated); not with seeds
    all_users: bool = False
    concurrency: int | None = None  # None: auto, each server's KV cache decides (eval/capacity.py)
    out: Path | None = None
    servers: list[str] = field(default_factory=list)
    rank_servers: list[str] = field(default_factory=list)  # --rank-server: the --rank-llm model's
    api_key: str | None = None
    shard: tuple[int, int] | None = None
    batch_size: int = 256

    @classmethod
    def of(cls, **options) -> "EvalOptions":
        """Options and settings as one set of keywords: EvalOptions.of(dataset=..., llm=..., finish=...)."""
        settings, rest = split_settings(options)
        return cls(**rest, settings=RunSettings(**settings))


def default_out(opts: EvalOptions) -> Path:
    return Path("runs") / f"{opts.dataset}-{opts.settings.llm or 'no-llm'}"


def check_options(opts: EvalOptions, attributes: list[str]) -> list[str]:
    """The method names; what RunSettings cannot check alone (its fields are checked there)."""
    names = parse_method_names(opts.methods, attributes)
    llm_names = [n for n in names if needs_llm(n)]
    if llm_names and not opts.settings.llm:
        raise ToolrecError(f"method(s) {', '.join(llm_names)} need an LLM", "pass --llm NAME (see: toolrec-local models list)")
    if opts.users < 1:
        raise ToolrecError("--users must be at least 1", "e.g. --users 200")
    if opts.seeds is not None and opts.seeds < 1:
        raise ToolrecError("--seeds must be at least 1", "e.g. --seeds 3")
    if opts.seed and opts.seeds is not None:
        raise ToolrecError("--seed and --seeds were both given",
                           "pass --seeds N for the samples 0..N-1, or --seed S once per sample (--seed 3 --seed 4), not both")
    if any(s < 0 for s in opts.seed):
        raise ToolrecError(f"--seed {min(opts.seed)} is negative", "a seed is a number from 0 up, e.g. --seed 3")
    if opts.servers and opts.settings.backend == "local":
        raise ToolrecError("--server is for the vllm and openai backends", "drop --server, or pass --backend vllm")
    if opts.concurrency is not None and opts.concurrency < 1:
        raise ToolrecError("--concurrency must be at least 1", "pass a number, or auto (the default)")
    return names


@dataclass
class Run:
    """A run assembled, nothing run yet: every method built (a missing checkpoint failed
    already), the users planned, the configuration run.json will hold."""

    opts: EvalOptions
    ds: object
    methods: list
    suite: object | None  # the LLM methods' LLMSuite (backends not reached yet), None without
    plan: dict[int, list[int]]
    config: RunConfig
    concurrency: int | None
    out: Path


def assemble_run(opts: EvalOptions, *, tool_loader: Callable | None = None, llm_factory: Callable | None = None,
                 suite=None, plan: dict[int, list[int]] | None = None) -> Run:
    """`tool_loader` and `llm_factory` let tests put in small tools and scripted LLMs; `suite`
    (LLM methods built before, e.g. by a benchmark running several levels) and `plan` (other
    users than the sample's) replace what would be built."""
    from toolrec_local.data import load_dataset

    ds = load_dataset(opts.dataset)
    names = check_options(opts, list(ds.attributes))
    uses_llm = any(needs_llm(n) for n in names)
    uses_agent = any(entry(n).finishes for n in names)  # the agent fields (--finish, --max-rounds, ...) are theirs
    settings = opts.settings.with_(prompts=load_prompts(ds.domain).fingerprint) if uses_llm else opts.settings
    # explicit samples in one order, so --seed 4 --seed 3 continues the folder --seed 3 --seed 4 made
    seeds = sorted(set(opts.seed)) or list(range(opts.seeds if opts.seeds is not None else (1 if opts.all_users else 3)))
    users = None if opts.all_users else opts.users
    concurrency = 1 if (uses_llm and settings.backend == "local") else opts.concurrency
    plan = plan if plan is not None else plan_users(ds, users, seeds, opts.shard)
    tools = ToolBox(ds, tool_loader)
    if uses_llm and suite is None:
        factory = llm_factory
        if factory is None:
            from toolrec_local.eval.catalog import build_llm_methods as factory
        suite = factory([n for n in names if needs_llm(n)], ds, tools, settings=settings, servers=opts.servers,
                        api_key=opts.api_key, rank_servers=opts.rank_servers)
    methods = [suite.methods[n] if needs_llm(n) else build_score_method(n, ds, tools) for n in names]
    recorded = [n for m in methods for n in (m.name, *getattr(m, "variants", ()))]  # e.g. toolrec/last-list
    absent = (() if uses_llm else setting_fields("llm")) + (() if uses_agent else setting_fields("agent"))
    config = RunConfig(
        dataset=ds.name, dataset_fingerprint=ds.fingerprint, methods=recorded, seeds=sorted(plan), users=users,
        settings=settings, absent=frozenset(absent), shard=opts.shard, servers=list(opts.servers), concurrency=concurrency or "auto",
        command=command_line(), uses_llm=uses_llm, expected={str(s): len(u) for s, u in plan.items()},
    )
    return Run(opts, ds, methods, suite if uses_llm else None, plan, config, concurrency,
               Path(opts.out or default_out(opts)))


@asynccontextmanager
async def open_run(run: Run, *, on_update: Callable[[str, Tally], None] | None = None,
                   on_note: Callable[[str], None] | None = None) -> AsyncIterator[tuple[RunFolder, Runner]]:
    """The run's folder (configuration checked and saved, lock held) and its runner, with each
    server's capacity read from its /metrics (`on_note` hears how many users run at once and
    why). The suite's backends must have been reached (`LLMSuite.start`)."""
    cap = None
    if run.suite is not None:
        from toolrec_local.eval.capacity import plan_for_suite

        cap = await plan_for_suite(run.suite, run.concurrency, run.opts.api_key)
        for note in cap.notes:
            (on_note or (lambda text: None))(note)
    folder = RunFolder(run.out, run.config)  # opened once the server answered: a refused run leaves no folder
    try:
        with ResultsWriter(folder.paths["results"], folder.paths["trajectories"]) as writer:
            yield folder, Runner(run.ds, writer, run.config.settings, batch_size=run.opts.batch_size,
                                 concurrency=run.concurrency or 1, on_update=on_update,
                                 slots=cap.slots if cap else None, route=cap.route if cap else None,
                                 watch=cap.watch if cap else None)
    finally:
        folder.close()


def evaluate(opts: EvalOptions, *, on_update: Callable[[str, Tally], None] | None = None,
             tool_loader: Callable | None = None, llm_factory: Callable | None = None,
             on_note: Callable[[str], None] | None = None) -> tuple[dict, Path]:
    """Run (or resume) an evaluation; return (summary, run folder)."""
    run = assemble_run(opts, tool_loader=tool_loader, llm_factory=llm_factory)

    async def body() -> tuple[dict, Path]:
        async with open_run(run, on_update=on_update, on_note=on_note) as (folder, runner):
            try:
                await runner.run(run.methods, run.plan)
            except BaseException:
                try:  # what finished is summarised; a summary that cannot be written hides nothing
                    write_summary(folder.folder)
                except (OSError, ToolrecError):
                    pass
                raise
            server = {n: t.live.server.as_dict() for n, t in runner.tallies.items() if t.live.server is not None}
            return write_summary(folder.folder, {"llm_server": server} if server else None), folder.folder

    return asyncio.run(_started(run.suite, body))


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
