#!/usr/bin/env python
"""Throughput of `toolrec` evaluation: users per minute at concurrency 1 vs 16 against the same
vLLM server, and the share of wall time spent outside the LLM.

    python scripts/bench_eval.py --dataset ml-100k --llm smollm2-135m --json
    python scripts/bench_eval.py --server http://127.0.0.1:8000/v1 --concurrency 1,16 --json

Without --server it starts a vLLM server for --llm (and stops it at the end). Each concurrency
level runs its own user sample (seed 100 + level), after a warm-up on other users, so the
server's prefix cache of one level does not speed up the next; a level c runs at least
3c users (--per-slot), since with as many users as slots the slowest user sets the time. Needs the dataset prepared and
the SASRec tools trained (the agent's retrieval tools).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path


async def measure(ds, method, users: list[int], seed: int, concurrency: int, folder: Path) -> dict:
    from toolrec_local.eval.results import ResultsWriter, read_jsonl
    from toolrec_local.eval.runner import Runner

    folder.mkdir(parents=True, exist_ok=True)
    with ResultsWriter(folder / "results.jsonl", folder / "trajectories.jsonl") as writer:
        runner = Runner(ds, writer, concurrency=concurrency)
        t0 = time.perf_counter()
        await runner.run_llm(method, {seed: users})
        wall = time.perf_counter() - t0
    recs = read_jsonl(folder / "results.jsonl").records
    ok = [r for r in recs if r["status"] == "ok"]
    user_wall = sum(r["wall_s"] for r in ok)
    latency = sum(r["latency_s"] for r in ok)
    overhead = sum(r.get("overhead_s", 0) for r in ok)
    tokens_out = sum(r["tokens_out"] for r in ok)
    return {
        "concurrency": concurrency,
        "users": len(users),
        "ok": len(ok),
        "failed": len(recs) - len(ok),
        "wall_s": round(wall, 2),
        "users_per_min": round(60 * len(ok) / wall, 2) if wall else None,
        "llm_calls_per_user": round(sum(r["llm_calls"] for r in ok) / max(1, len(ok)), 2),
        "tokens_out_per_s": round(tokens_out / wall, 1) if wall else None,
        # per user: time from start to finish vs time waiting on LLM calls (queueing included)
        "share_outside_llm": round(1 - latency / user_wall, 4) if user_wall else None,
        # what the agent itself measured outside its LLM calls (prompt rendering, tools, memory)
        "agent_overhead_share": round(overhead / user_wall, 4) if user_wall else None,
        "mean_rounds": round(sum(r["rounds"] for r in ok) / max(1, len(ok)), 2),
    }


async def bench(ds, suite, name: str, levels: list[int], sizes: dict[int, int], warmup: int) -> list[dict]:
    """All levels in one event loop: the HTTP clients belong to the loop they were made in."""
    method = suite.methods[name]
    results = []
    try:
        await suite.start()
        with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
            warm = [int(u) for u in ds.sample_users(warmup, 99)] if warmup else []
            if warm:
                print(f"warm-up: {len(warm)} users", file=sys.stderr)
                await measure(ds, method, warm, 99, min(levels), Path(tmp) / "warmup")
            for c in levels:
                users = [int(u) for u in ds.sample_users(sizes[c], 100 + c)]
                print(f"concurrency {c}: {len(users)} users ...", file=sys.stderr)
                results.append(await measure(ds, method, users, 100 + c, c, Path(tmp) / f"c{c}"))
                print(f"  {results[-1]['users_per_min']} users/min", file=sys.stderr)
    finally:
        await suite.aclose()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--server", action="append", default=[], help="vLLM base URL(s); default: start one")
    ap.add_argument("--users", type=int, default=8, help="users per concurrency level, at least")
    ap.add_argument("--per-slot", type=int, default=3,
                    help="at least this many users per concurrent slot, so the last stragglers do not dominate")
    ap.add_argument("--concurrency", default="1,16", help="levels to compare, comma-separated")
    ap.add_argument("--warmup", type=int, default=2, help="users run first and not counted")
    ap.add_argument("--method", default="toolrec")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from toolrec_local.data import load_dataset
    from toolrec_local.errors import ToolrecError
    from toolrec_local.eval.llm_methods import build_llm_methods
    from toolrec_local.eval.methods import ToolBox

    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    server = None
    try:
        ds = load_dataset(args.dataset)
        urls = args.server
        if not urls:
            from toolrec_local.llm.server import start_server

            print(f"starting a vLLM server for {args.llm} ...", file=sys.stderr)
            server = start_server(args.llm, die_with_parent=True)
            urls = [server.base_url]
        suite = build_llm_methods([args.method], ds, ToolBox(ds), llm=args.llm, backend="vllm", servers=urls)
        sizes = {c: max(args.users, args.per_slot * c) for c in levels}
        results = asyncio.run(bench(ds, suite, args.method, levels, sizes, args.warmup))
    except ToolrecError as exc:
        print(f"error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()
    out = {"dataset": args.dataset, "llm": args.llm, "method": args.method, "servers": len(urls), "levels": results}
    if len(results) >= 2 and results[0]["users_per_min"]:
        out["speedup"] = round(results[-1]["users_per_min"] / results[0]["users_per_min"], 2)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for r in results:
            print(f"concurrency {r['concurrency']:>3}: {r['users_per_min']:8.2f} users/min, "
                  f"{100 * (r['share_outside_llm'] or 0):5.1f}% of a user's wall time outside the LLM")
        if "speedup" in out:
            print(f"speed-up {levels[-1]} vs {levels[0]}: {out['speedup']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
