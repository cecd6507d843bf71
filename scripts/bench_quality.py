#!/usr/bin/env python
"""Recommendation quality of several LLMs side by side (the paper's Figure 8), on the same users:
for each model, `toolrec-local serve` starts it (as scripts/bench_eval.py does), `eval` runs
sasrec, toolrec, llmrank, single and multi into one run folder per model (OUT/<model>), the
server stops, and one table compares them: NDCG@10, Recall@10, LLM calls and users per minute
per method, and each method's paired difference against SASRec (mean, 95% bootstrap CI,
permutation-test p; toolrec_local/eval/stats.py).

Ranking variants (--variant, repeatable): how every LLM ranking step ranks, on the same users
and one server per model: `generate` (the default: the LLM writes the top 10), `score` (eval
--rank-by score: candidates ordered by their label's log-probability) and `shuffles:N` (eval
--rank-shuffles N: N more generated rankings in shuffled orders, merged by Borda count). Each
variant's flags go to every LLM method's eval; each variant is its own run folder (the flags
are part of a run's identity), OUT/<model>/<variant> (generate, score, shuffles3, ...), each
with its own sasrec rows (cheap) so its paired differences against SASRec are computed as
without variants. Without --variant the one variant is generate and the folder OUT/<model>, as
before. Each non-generate variant's rows also get each method's paired difference against the
same method under generate, on the (seed, user) pairs both folders paired (mean, 95% BCa CI,
permutation p; eval/stats.py through summary.paired_ranks). `ranker:NAME` (a tuned ranker from
`toolrec-local tune`): --rank-by score with the ranking calls sent to NAME on a second server
(started beside the first for this variant only; the agent's turns stay with --llm), its rows
compared with `score` (its untuned base) too.

    python scripts/bench_quality.py --llm smollm2-135m --seed 3 --methods sasrec,toolrec,llmrank \
        --variant generate --variant score --variant shuffles:3

    python scripts/bench_quality.py --llm smollm2-135m --llm qwen2.5-coder-0.5b-instruct --report
    python scripts/bench_quality.py --llm smollm2-135m --seed 3 --seed 4 --users 50
    python scripts/bench_quality.py --llm smollm2-135m --server http://127.0.0.1:8000/v1   # a running server

Users: --users per sample (default 50) and the samples by seed. Without --seed, a model takes
the first of the seeds 3, 4, 5, 6 by its size, so that one model's run takes about an hour on
a 2-core CPU machine (estimated from SmolLM2-135M's ~16 s per user for the four LLM methods at
--concurrency auto; a larger model is slower per call but makes fewer): up to 0.2B parameters
4 seeds (200 users), up to 0.6B 2 seeds (100), larger 1 seed (50). Every model thus shares seed
3's users, and the models of one size all of theirs; when the models' users differ, a second
table compares them on the (seed, user) pairs every model finished. Seeds 0-2 (eval's default
samples, the demo's 0 and 1) are left out: prompts were developed on them. --seed overrides
the choice for every model.

Resumable: re-running the same command skips the users each folder has finished (eval resumes)
and does not start the server of a model whose folder is complete. Users per minute are each
method's own (one eval per method): its users finished over the time from the first one's
start to the last one's end in each `eval` invocation (eval's start-up not counted), summed
over re-runs (bench-quality.json in each run folder, with each invocation's wall time too; every
eval command run goes in its bench-commands.jsonl). The JSON records the commit, the command
and each invocation's (a resumed run keeps the earlier ones), and each invocation's load
average at start and end: figures under load are provisional.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench_eval import start_demo_server, stop

from toolrec_local.provenance import git_state

METHODS = ("sasrec", "toolrec", "llmrank", "single", "multi")
REFERENCE = "sasrec"
USERS_PER_SEED = 50
SEED_POOL = (3, 4, 5, 6)
# (largest size in billions of parameters, samples of USERS_PER_SEED): about an hour per model
SEEDS_BY_SIZE = ((0.2, 4), (0.6, 2), (float("inf"), 1))
TIMING_FILE = "bench-quality.json"
COMMANDS_FILE = "bench-commands.jsonl"  # per run folder: every eval this script ran into it
GENERATE = "generate"  # the default variant, and the one the others are compared with


RANKER = "ranker-"  # the variant `ranker:NAME`: its folder and canonical name are ranker-NAME


def parse_variant(text: str) -> str:
    """--variant NAME -> its canonical name, which is also its folder: generate, score, shufflesN,
    ranker-NAME."""
    t = text.strip()
    if t.lower() in (GENERATE, "score"):
        return t.lower()
    m = re.fullmatch(r"shuffles:?(\d+)", t.lower())
    if m and int(m.group(1)) >= 1:
        return f"shuffles{int(m.group(1))}"
    m = re.fullmatch(r"ranker[:-]([A-Za-z0-9][A-Za-z0-9._-]*)", t)
    if m:
        return RANKER + m.group(1)
    raise argparse.ArgumentTypeError(f"unknown variant {text!r}: use generate, score, shuffles:N (N >= 1) or "
                                     "ranker:NAME (a tuned ranker's card)")


def ranker_of(variant: str) -> str | None:
    """The --rank-llm model of a ranker variant, else None."""
    return variant[len(RANKER):] if variant.startswith(RANKER) else None


def variant_flags(variant: str, rank_url: str | None = None) -> list[str]:
    """The eval flags of a variant (for the LLM methods). ranker:NAME - every ranking step scores
    (`--rank-by score`) with the model NAME on its own server (`rank_url`), the agent's turns
    staying with --llm."""
    if variant == GENERATE:
        return []
    if variant == "score":
        return ["--rank-by", "score"]
    if ranker_of(variant):
        return ["--rank-by", "score", "--rank-llm", ranker_of(variant), "--rank-server", rank_url or "URL"]
    return ["--rank-shuffles", str(int(variant[len("shuffles"):]))]


def variant_folders(out: Path, model: str, variants: list[str]) -> dict[str, Path]:
    """Variant -> run folder: OUT/<model> for the default (generate only, no --variant), else
    OUT/<model>/<variant> for each."""
    if not variants:
        return {GENERATE: out / model}
    return {v: out / model / v for v in dict.fromkeys(variants)}


def default_seeds(params_b: float | None) -> list[int]:
    """The samples a model of this size runs by default (an unknown size counts as large)."""
    size = float("inf") if params_b is None else params_b
    n = next(k for limit, k in SEEDS_BY_SIZE if size <= limit)
    return list(SEED_POOL[:n])


def finished_records(folder: Path, method: str) -> dict:
    """(seed, user) -> the record, for the pairs the folder has finished for `method`."""
    from toolrec_local.eval.results import read_jsonl

    path = folder / "results.jsonl"
    if not path.is_file():
        return {}
    return {(r["seed"], r["user"]): r for r in read_jsonl(path).records if r["method"] == method and r["status"] == "ok"}


def finished(folder: Path, method: str) -> int:
    return len(finished_records(folder, method))


def active_seconds(records: list[dict]) -> float:
    """From the first of these users' start to the last one's end (each record: its end time
    and its own wall time), so eval's start-up and a resumed run's gap are not counted."""
    from datetime import datetime

    ends = [datetime.fromisoformat(r["time"]).timestamp() for r in records]
    starts = [e - float(r.get("wall_s") or 0) for e, r in zip(ends, records)]
    return max(ends) - min(starts)


def complete(folder: Path, methods: list[str], users: int, seeds: list[int]) -> bool:
    return all(finished(folder, m) >= users * len(seeds) for m in methods)


def load_timing(folder: Path) -> dict:
    path = folder / TIMING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def add_timing(folder: Path, method: str, users: int, active_s: float, wall_s: float) -> None:
    """Accumulate one eval invocation's finished users, the seconds they ran (first start to
    last end) and the invocation's wall time (start-up included) for `method`."""
    timing = load_timing(folder)
    t = timing.setdefault(method, {"users": 0, "active_s": 0.0, "wall_s": 0.0})
    t["users"] += users
    t["active_s"] = round(t.get("active_s", 0.0) + active_s, 1)
    t["wall_s"] = round(t["wall_s"] + wall_s, 1)
    (folder / TIMING_FILE).write_text(json.dumps(timing, indent=2) + "\n")


def eval_command(args, model: str, url: str | None, method: str, seeds: list[int], folder: Path,
                 variant: str = GENERATE, rank_url: str | None = None) -> list[str]:
    """One method per invocation, so each one's wall time is its own; the reference without an
    LLM (and so without the variant's flags)."""
    llm = [] if method == REFERENCE else ["--llm", model, "--server", url, "--concurrency", args.concurrency,
                                          *variant_flags(variant, rank_url)]
    return [sys.executable, "-m", "toolrec_local", "eval", "--dataset", args.dataset, "--method", method, *llm,
            "--users", str(args.users), *[a for s in seeds for a in ("--seed", str(s))], "--out", str(folder)]


def run_eval(cmd: list[str], folder: Path, method: str) -> int:
    """Run one eval; the users it finished and its wall time go into the folder's timing."""
    print(f"  {' '.join(cmd[2:])}", file=sys.stderr)
    before = finished_records(folder, method)
    t0, started, rc = time.monotonic(), time.strftime("%Y-%m-%dT%H:%M:%S%z"), None
    try:
        rc = subprocess.run(cmd).returncode
        return rc
    finally:  # a run cut short still counts what it finished
        new = [r for k, r in finished_records(folder, method).items() if k not in before]
        wall = time.monotonic() - t0
        if new and method != REFERENCE:
            add_timing(folder, method, len(new), active_seconds(new), wall)
        if folder.is_dir():
            with open(folder / COMMANDS_FILE, "a") as fh:
                fh.write(json.dumps({"started": started, "command": shlex.join(cmd), "rc": rc,
                                     "new_users": len(new), "wall_s": round(wall, 1)}) + "\n")


def load_commands(folder: Path) -> list[dict]:
    path = folder / COMMANDS_FILE
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def run_model(args, model: str, seeds: list[int], folders: dict[str, Path]) -> str | None:
    """Serve `model` once (unless --server), then one eval per variant and method; the errors, or
    None. A variant whose eval fails does not stop the others (unless the server is gone)."""
    methods = [m for m in args.methods if m != REFERENCE]
    for variant, folder in folders.items():  # before serving: fails fast
        if run_eval(eval_command(args, model, None, REFERENCE, seeds, folder), folder, REFERENCE):
            return f"{variant}: eval {REFERENCE} failed"
    todo = {v: f for v, f in folders.items() if not complete(f, methods, args.users, seeds)}
    for v in folders.keys() - todo.keys():
        print(f"{model}: {folders[v]} is complete", file=sys.stderr)
    if not todo:
        print(f"{model}: not served again", file=sys.stderr)
        return None
    proc, url, errors = None, (args.server[0] if args.server else None), []
    try:
        if url is None:
            home = next(iter(folders.values())).parent if len(folders) > 1 else next(iter(folders.values()))
            home.mkdir(parents=True, exist_ok=True)
            log = home / "server.log"
            print(f"{model}: starting `toolrec-local serve --llm {model}` (log: {log}) ...", file=sys.stderr)
            t0 = time.monotonic()
            proc, url, _ = start_demo_server(model, args.port, log, args.serve_arg)
            print(f"  up after {time.monotonic() - t0:.0f} s", file=sys.stderr)
        for k, (variant, folder) in enumerate(todo.items(), 1):
            ranker, rank_url = ranker_of(variant), None
            if ranker:  # the tuned ranker's own server, beside the agent's, for this variant only
                log = folder.parent / f"server-{ranker}.log"
                print(f"{ranker}: starting `toolrec-local serve --llm {ranker}` (log: {log}) ...", file=sys.stderr)
                rank_proc, rank_url, _ = start_demo_server(ranker, args.port + k, log, args.serve_arg)
            try:
                for m in methods:
                    rc = run_eval(eval_command(args, model, url, m, seeds, folder, variant, rank_url), folder, m)
                    if rc != 0:
                        errors.append(f"{variant}: eval {m} exited with code {rc}")
                        if proc is not None and proc.poll() is not None:
                            return "; ".join(errors + [f"the server exited with code {proc.returncode}"])
            finally:
                if ranker:
                    stop(rank_proc)
    except RuntimeError as exc:  # the server did not come up
        return str(exc)
    finally:
        if proc is not None:
            stop(proc)
    return "; ".join(errors) or None


def summarize_folder(folder: Path, keep: set | None = None) -> dict:
    """The folder's summary (over the pairs in `keep` only, when given)."""
    from toolrec_local.eval.rundir import load_runs
    from toolrec_local.eval.summary import summarize

    view = load_runs([folder])[0]
    records = view.records if keep is None else [r for r in view.records if (int(r["seed"]), str(r["user"])) in keep]
    return summarize(view.config, records, None if keep is not None else view.expected, view.missing_shards)


def vs_generate(folder: Path, generate_folder: Path | None, method: str, keep: set | None = None,
                reference: str = GENERATE) -> dict | None:
    """`method`'s paired differences in `folder` (a variant) against the same method in the
    generate variant's folder, on the (seed, user) pairs both folders paired (and in `keep`,
    when given) that both finished for it: {"reference": "generate", "pairs", "ndcg@10",
    "recall@10"} (each {"diff", "ci", "ci_method", "p"}; eval/stats.py), or None without a
    generate folder."""
    from toolrec_local.eval.stats import METRICS as COMPARED
    from toolrec_local.eval.summary import paired_ranks

    if generate_folder is None or not (generate_folder / "run.json").is_file():
        return None
    recs = {"variant": list(finished_records(folder, method).values()),
            reference: list(finished_records(generate_folder, method).values())}
    pairs = paired_set(folder) & paired_set(generate_folder)
    for rs in recs.values():
        pairs &= {(int(r["seed"]), str(r["user"])) for r in rs}
    if keep is not None:
        pairs &= keep
    block = paired_ranks(recs, list(recs), pairs).compare("variant", reference, COMPARED)
    block["reference"] = reference
    return block


def paired_set(folder: Path) -> set:
    from toolrec_local.eval.rundir import load_runs
    from toolrec_local.eval.summary import paired_pairs

    by_method: dict[str, list[dict]] = {}
    for r in load_runs([folder])[0].records:
        by_method.setdefault(r["method"], []).append(r)
    return paired_pairs(by_method)[1]


def rows_for(model: str, summary: dict, timing: dict, variant: str = GENERATE) -> list[dict]:
    """One row per method of one (model, variant)'s summary."""
    rows = []
    for name, m in summary["methods"].items():
        if name not in summary["paired"]["methods"]:
            continue
        t = timing.get(name)
        back = (m.get("comparisons") or {}).get("backbone")
        vs = back if back and back["reference"] == REFERENCE else None
        rows.append({
            "model": model, "variant": variant, "method": name, "pairs": summary["paired"]["users"],
            "ndcg@10": m["ndcg@10"]["mean"], "recall@10": m["recall@10"]["mean"],
            "llm_calls_per_user": (m.get("llm") or {}).get("llm_calls_per_user"),
            "users_per_min": round(60 * t["users"] / t["active_s"], 2) if t and t.get("active_s") else None,
            "vs_" + REFERENCE: None if vs is None else {k: vs[k] for k in ("ndcg@10", "recall@10")},
            "vs_" + GENERATE: None, "vs_score": None,
        })
    return rows


def add_vs_generate(rows: list[dict], folder: Path, folders: dict[str, Path], keep: set | None = None) -> None:
    """Fill each LLM method's vs_generate in the rows of a non-generate variant's folder."""
    for r in rows:
        if r["variant"] != GENERATE and r["method"] != REFERENCE:
            r["vs_" + GENERATE] = vs_generate(folder, folders.get(GENERATE), r["method"], keep)
        if ranker_of(r["variant"]) and r["method"] != REFERENCE:  # a tuned ranker against its untuned base
            r["vs_score"] = vs_generate(folder, folders.get("score"), r["method"], keep, reference="score")


def build_tables(folders: dict[str, dict[str, Path] | Path]) -> dict:
    """Rows per model, variant and method from the run folders (model -> variant -> folder, or
    model -> folder for generate only); and, when the folders' paired users differ, the same
    over the pairs every folder paired ("common")."""
    out: dict = {"rows": [], "common": None}
    sets = {}
    folders = {m: f if isinstance(f, dict) else {GENERATE: f} for m, f in folders.items()}
    for model, by_variant in folders.items():
        for variant, folder in by_variant.items():
            if not (folder / "run.json").is_file():
                continue
            rows = rows_for(model, summarize_folder(folder), load_timing(folder), variant)
            add_vs_generate(rows, folder, by_variant)
            out["rows"] += rows
            sets[(model, variant)] = paired_set(folder)
    if len(sets) > 1 and len({frozenset(s) for s in sets.values()}) > 1:
        common = set.intersection(*sets.values())
        rows = []
        for model, variant in sets:
            folder = folders[model][variant]
            got = rows_for(model, summarize_folder(folder, common), {}, variant)
            add_vs_generate(got, folder, folders[model], common)
            rows += got
        out["common"] = {"pairs": len(common), "rows": rows}
    return out


def format_table(rows: list[dict]) -> str:
    from toolrec_local.eval.report import fmt_ci, fmt_p

    def diff(d: dict | None) -> str:
        if d is None:
            return "-"
        if d.get("ci") is None:
            return d.get("note", "n/a")
        return f"{d['diff']:+.4f} {fmt_ci(d['ci'])} p {fmt_p(d['p'])}"

    def pairs_note(r: dict, block: dict | None) -> str:
        return f" ({block['pairs']} pairs)" if block and block.get("pairs") != r["pairs"] else ""

    mw = max([len("model")] + [len(r["model"]) for r in rows])
    vw = max([len("variant")] + [len(r.get("variant", GENERATE)) for r in rows])
    with_gen = any(r.get("vs_" + GENERATE) for r in rows)
    head = (f"{'model':<{mw}} {'variant':<{vw}} {'method':<8} {'pairs':>5} {'NDCG@10':>8} {'R@10':>6} {'calls/u':>7} "
            f"{'users/min':>9}  {'dNDCG@10 vs ' + REFERENCE + ' [95% CI] p':<38} {'dR@10 vs ' + REFERENCE + ' [95% CI] p':<38}")
    with_score = any(r.get("vs_score") for r in rows)
    if with_gen:
        head += f"  {'dNDCG@10 vs ' + GENERATE + ' [95% CI] p':<38} {'dR@10 vs ' + GENERATE + ' [95% CI] p':<38}"
    if with_score:
        head += f"  {'dNDCG@10 vs score [95% CI] p':<38} {'dR@10 vs score [95% CI] p'}"
    lines = [head.rstrip()]
    for r in rows:
        calls = "-" if r["llm_calls_per_user"] is None else f"{r['llm_calls_per_user']:.1f}"
        upm = "-" if r["users_per_min"] is None else f"{r['users_per_min']:.2f}"
        vs = r["vs_" + REFERENCE] or {}
        line = (f"{r['model']:<{mw}} {r.get('variant', GENERATE):<{vw}} {r['method']:<8} {r['pairs']:>5} "
                f"{r['ndcg@10']:>8.4f} {r['recall@10']:>6.3f} {calls:>7} {upm:>9}  {diff(vs.get('ndcg@10')):<38} "
                f"{diff(vs.get('recall@10')):<38}")
        if with_gen:
            g = r.get("vs_" + GENERATE)
            line += f"  {diff((g or {}).get('ndcg@10')):<38} {diff((g or {}).get('recall@10')):<38}{pairs_note(r, g)}"
        if with_score:
            g = r.get("vs_score")
            line += f"  {diff((g or {}).get('ndcg@10')):<38} {diff((g or {}).get('recall@10'))}{pairs_note(r, g)}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", action="append", required=True, help="a model card name (toolrec-local models list); repeat")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--methods", default=",".join(METHODS), type=lambda s: [m for m in s.split(",") if m],
                    help=f"default {','.join(METHODS)}; {REFERENCE} is always run")
    ap.add_argument("--users", type=int, default=USERS_PER_SEED, help=f"users per sample (default {USERS_PER_SEED})")
    ap.add_argument("--seed", type=int, action="append", default=[],
                    help="a user sample for every model; repeat (default: by model size, see above)")
    ap.add_argument("--variant", action="append", default=[], type=parse_variant,
                    help="a ranking variant for every LLM method: generate, score (--rank-by score), shuffles:N "
                         "(--rank-shuffles N) or ranker:NAME (--rank-by score --rank-llm NAME on a second server, "
                         "e.g. a `toolrec-local tune` model; compared with score too); repeat. Default: generate only, in OUT/<model>; with --variant each "
                         "in OUT/<model>/<variant>")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-quality"), help="one run folder per model under it")
    ap.add_argument("--json-out", type=Path, default=None, help="default OUT/bench-quality.json")
    ap.add_argument("--report", action="store_true", help="then `toolrec-local report` on all run folders side by side")
    ap.add_argument("--server", action="append", default=[], help="a running server's base URL (one --llm only)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra argument for `toolrec-local serve`")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--concurrency", default="auto")
    args = ap.parse_args()
    if REFERENCE not in args.methods:
        args.methods.insert(0, REFERENCE)
    if args.server and len(args.llm) > 1:
        ap.error("--server serves one model: pass one --llm with it")

    from toolrec_local.llm.registry import load_card
    from toolrec_local.errors import ToolrecError

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, kill: stop the server on the way out
    load = {"start": os.getloadavg()}
    invocation = {"command": shlex.join([sys.executable, *sys.argv]), "cwd": os.getcwd(), **git_state(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    variants = list(dict.fromkeys(args.variant)) or [GENERATE]
    plan: dict[str, dict] = {}
    try:
        for model in args.llm:
            seeds = sorted(set(args.seed)) or default_seeds(load_card(model).params_b)
            folders = variant_folders(args.out, model, args.variant)
            plan[model] = {"seeds": seeds, "users": args.users * len(seeds),
                           "folders": {v: str(f) for v, f in folders.items()}}
    except ToolrecError as exc:
        print(f"error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    print(f"bench_quality: {args.dataset}, methods {','.join(args.methods)}, variants {','.join(variants)}, "
          f"{args.users} users per sample", file=sys.stderr)
    for model, p in plan.items():
        print(f"  {model}: seeds {', '.join(map(str, p['seeds']))} = {p['users']} users -> "
              f"{', '.join(p['folders'].values())}", file=sys.stderr)
    for model, p in plan.items():
        p["error"] = run_model(args, model, p["seeds"], {v: Path(f) for v, f in p["folders"].items()})
        if p["error"]:
            print(f"{model}: {p['error']}", file=sys.stderr)
    load["end"] = os.getloadavg()
    invocation.update(ended=time.strftime("%Y-%m-%dT%H:%M:%S%z"), load_avg=load)
    tables = build_tables({m: {v: Path(f) for v, f in p["folders"].items()} for m, p in plan.items()})
    json_out = args.json_out or args.out / "bench-quality.json"
    try:  # a resumed benchmark keeps the earlier invocations' commands, commits and loads
        earlier = json.loads(json_out.read_text()).get("invocations", []) if json_out.is_file() else []
    except (ValueError, AttributeError):
        earlier = []
    commands = {m: {v: load_commands(Path(f)) for v, f in p["folders"].items()} for m, p in plan.items()}
    out = {"dataset": args.dataset, "methods": args.methods, "variants": variants,
           "variant_flags": {v: variant_flags(v) for v in variants}, "users_per_seed": args.users, "models": plan,
           "cpus": os.cpu_count(), "commit": invocation["commit"], "dirty": invocation["dirty"], "load_avg": load,
           "command": invocation["command"], "invocations": earlier + [invocation], "eval_commands": commands, **tables}
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(out, indent=2) + "\n")
    users = ", ".join(f"{m} {p['users']}" for m, p in plan.items())
    print(f"\nusers per model ({args.users} per sample): {users}")
    print(format_table(tables["rows"]))
    if tables["common"]:
        print(f"\non the {tables['common']['pairs']} (seed, user) pairs every run folder (model, variant) paired:")
        print(format_table(tables["common"]["rows"]))
    print("load average (1, 5, 15 min) at start " + ", ".join(f"{x:.2f}" for x in load["start"]) + "; at end "
          + ", ".join(f"{x:.2f}" for x in load["end"]) + f"; JSON: {json_out}")
    if args.report:
        folders = [f for p in plan.values() for f in p["folders"].values() if (Path(f) / "run.json").is_file()]
        subprocess.run([sys.executable, "-m", "toolrec_local", "report", *folders, "--out", str(args.out / "report")],
                       check=False)
    return 1 if any(p["error"] for p in plan.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
