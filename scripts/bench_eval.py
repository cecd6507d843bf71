#!/usr/bin/env python
"""Throughput of LLM evaluation at several concurrency levels, side by side in one run, at
the demo's settings: ML-100K, toolrec, SmolLM2-135M on a vLLM CPU server started the way
`make demo` starts it (`toolrec-local serve --llm smollm2-135m`), the demo's users.

    python scripts/bench_eval.py                        # levels 1,4,16,auto; JSON to runs/bench-eval.json
    python scripts/bench_eval.py --levels 4,auto --users 24 --out /tmp/b.json
    python scripts/bench_eval.py --server http://127.0.0.1:8000/v1   # a running server (dev mode, see below)

Every level runs the SAME (seed, user) pairs, the first --users (default 24) of the demo's plan
(20 users x seeds 0 and 1), so rounds per user compare across levels; the server's prefix cache is
emptied before each level (POST /reset_prefix_cache, which vLLM serves in dev mode: the
server this script starts has VLLM_SERVER_DEV_MODE=1), so no level reuses another's prompts.
A warm-up on other users comes first (grammar compilation, first requests) and is not counted.

Per level: users/min, wall time, rounds / LLM calls / tokens per user, users in flight (auto:
the limit it reached), and from the server's /metrics over the level: prompt tokens computed
vs served by the prefix cache, the hit rate, preemptions, KV-cache use (mean and peak). The
load average (`uptime`) at start and end goes in the JSON: figures under load are provisional.

The machine's own limit, side by side: the last level's requests are recorded and replayed on
the same server with as many users in flight, the same prompts and as many generated tokens,
but no grammar and no agent between them ("engine only"): what the engine takes for exactly
this work. The agent's users/min as a share of it says how much the rest costs. Then the unit
costs behind it (scripts/engine_probe.py): prefill and decode at that many in flight, over a
short and over the agent's mean prompt length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEMO_USERS, DEMO_SEEDS = 20, 2  # the user sample of the README figures (scripts/demo.sh now runs 10 x 2)


def demo_pairs(ds, n: int) -> dict[int, list[int]]:
    """The first n (seed, user) pairs the demo evaluates, as a runner plan."""
    from toolrec_local.eval.runner import plan_users

    plan = plan_users(ds, DEMO_USERS, list(range(DEMO_SEEDS)), None)
    pairs = [(s, u) for s, users in plan.items() for u in users][:n]
    out: dict[int, list[int]] = {}
    for s, u in pairs:
        out.setdefault(s, []).append(u)
    return out


def start_demo_server(llm: str, port: int, log: Path, extra: list[str]) -> tuple[subprocess.Popen, str, str]:
    """`toolrec-local serve` exactly as scripts/demo.sh runs it (plus dev mode, for the cache
    reset); returns the process, its base URL and what it printed about its choices."""
    import httpx

    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")
    cmd = [sys.executable, "-m", "toolrec_local", "serve", "--llm", llm, "--port", str(port), *extra]
    from toolrec_local.llm.server import stop_with_parent

    with open(log, "wb") as fh:  # the server goes down with this script, however it ends
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=stop_with_parent if sys.platform == "linux" else None)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 900:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}; see {log}")
        try:
            if httpx.get(url + "/health", timeout=2, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        raise RuntimeError(f"the server was not healthy after 900 s; see {log}")
    said = "\n".join(line for line in log.read_text(errors="replace").splitlines()
                     if not line.startswith("(") and "vllm |" not in line)
    return proc, url + "/v1", said


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # `serve` stops its vLLM process group on SIGTERM
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


async def reset_prefix_cache(url: str) -> bool:
    import httpx

    root = url[: -len("/v1")] if url.endswith("/v1") else url
    try:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            r = await client.post(root + "/reset_prefix_cache")
        return r.status_code == 200
    except httpx.HTTPError:
        return False


PHASES = ("e2e_request_latency", "request_queue_time", "request_prefill_time", "request_decode_time")


async def phase_sums(urls: list[str]) -> dict[str, float]:
    """Seconds the servers' requests spent per phase so far (histogram sums), and their count."""
    import httpx

    from toolrec_local.llm.server_metrics import metrics_url, parse_prometheus

    sums: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        for url in urls:
            m = parse_prometheus((await client.get(metrics_url(url))).text)
            for p in PHASES:
                sums[p] = sums.get(p, 0.0) + sum(v for _, v in m.get(f"vllm:{p}_seconds_sum", []))
            sums["requests"] = sums.get("requests", 0.0) + sum(v for _, v in m.get("vllm:e2e_request_latency_seconds_count", []))
    return sums


async def sample_kv(watch, every_s: float, out: list[float]) -> None:
    while True:
        await watch.read()
        if watch.kv_usage() is not None:
            out.append(watch.kv_usage())
        await asyncio.sleep(every_s)


class Recorder:
    """Keeps every request a backend sends (messages, assistant prefix, tokens out) per user task,
    so the same work can be replayed without the agent (`replay`)."""

    def __init__(self, backend):
        self.requests: dict[int, list[dict]] = {}
        self.on = False
        step = backend._step

        async def recorded(messages, prefix, regex, **kw):
            s = await step(messages, prefix, regex, **kw)
            if self.on:
                self.requests.setdefault(id(asyncio.current_task()), []).append(
                    {"messages": list(messages), "prefix": prefix, "tokens_out": s.tokens_out})
            return s

        backend._step = recorded


async def replay(url: str, users: list[list[dict]], in_flight: int) -> dict:
    """The recorded requests again, each user's in order, `in_flight` users at once, with the same
    prompts and as many generated tokens (ignore_eos), but no grammar and no agent between them:
    the engine's own time for the same work, on the same server, with an emptied prefix cache."""
    import httpx

    await reset_prefix_cache(url)
    gate = asyncio.Semaphore(in_flight)
    async with httpx.AsyncClient(timeout=900, trust_env=False) as client:
        model = (await client.get(url + "/models")).json()["data"][0]["id"]

        async def one(requests):
            async with gate:
                for r in requests:
                    body = {"model": model, "messages": r["messages"], "max_tokens": max(1, r["tokens_out"]),
                            "temperature": 0, "ignore_eos": True}
                    if r["prefix"]:
                        body["messages"] = r["messages"] + [{"role": "assistant", "content": r["prefix"]}]
                        body.update(continue_final_message=True, add_generation_prompt=False)
                    (await client.post(url + "/chat/completions", json=body)).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(u) for u in users))
        wall = time.perf_counter() - t0
    return {"users": len(users), "requests": sum(map(len, users)), "in_flight": in_flight, "wall_s": round(wall, 1),
            "users_per_min": round(60 * len(users) / wall, 2)}


async def measure(opts, suite, plan: dict[int, list[int]], level: str, folder: Path) -> dict:
    """One level: the run assembled as `eval` assembles it (the suite built once, these users,
    this concurrency), in its own folder."""
    from dataclasses import replace

    from toolrec_local.eval.results import read_jsonl
    from toolrec_local.eval.session import assemble_run, open_run
    from toolrec_local.llm.server_metrics import ServerWatch

    concurrency = None if level == "auto" else int(level)
    run = assemble_run(replace(opts, concurrency=concurrency, out=folder), suite=suite, plan=plan)
    async with open_run(run) as (_, runner):
        watch = ServerWatch(runner.watch.urls if runner.watch else [])  # the runner reads its own
        await watch.read()
        mark = watch.mark()
        phases_before = await phase_sums(watch.urls)
        kv: list[float] = []
        sampler = asyncio.create_task(sample_kv(watch, 2.0, kv))
        t0 = time.perf_counter()
        try:
            await runner.run(run.methods, plan)
        finally:
            wall = time.perf_counter() - t0
            sampler.cancel()
    slots = runner.slots
    await watch.read()
    use = watch.since(mark)
    phases = {k: v - phases_before.get(k, 0.0) for k, v in (await phase_sums(watch.urls)).items()}
    per_request = {f"{p}_s": round(phases[p] / phases["requests"], 3) for p in PHASES} if phases.get("requests") else None
    recs = read_jsonl(folder / "results.jsonl").records
    ok = [r for r in recs if r["status"] == "ok"]
    n = max(1, len(ok))

    def per_user(field: str) -> float:
        return round(sum(r[field] for r in ok) / n, 2)

    user_wall = sum(r["wall_s"] for r in ok)
    return {
        "level": level,
        "users": sum(len(v) for v in plan.values()),
        "ok": len(ok),
        "failed": len(recs) - len(ok),
        "wall_s": round(wall, 1),
        "users_per_min": round(60 * len(ok) / wall, 2) if wall else None,
        "rounds_per_user": per_user("rounds"),
        "llm_calls_per_user": per_user("llm_calls"),
        "tokens_in_per_user": per_user("tokens_in"),
        "tokens_out_per_user": per_user("tokens_out"),
        "user_wall_s_mean": round(user_wall / n, 1),
        "share_outside_llm": round(1 - sum(r["latency_s"] for r in ok) / user_wall, 4) if user_wall else None,
        "most_in_flight": sum(s.most_in_flight for s in slots),
        "limit_at_end": [s.limit() for s in slots],
        "capacity_tokens": [s.capacity_tokens for s in slots],
        "server": use.as_dict() if use is not None else None,
        "server_request_mean": per_request,  # seconds per request: in all, queued, prefill, decode
        "kv_usage_mean": round(sum(kv) / len(kv), 3) if kv else None,
        "kv_usage_peak": round(max(kv), 3) if kv else None,
        "hits@10": sum(1 for r in ok if r["rank"] is not None),
    }


async def bench(opts, suite, levels: list[str], plan: dict, warmup: dict, urls: list[str],
                save=lambda results: None, save_requests: Path | None = None) -> list[dict]:
    """All levels in one event loop: the HTTP clients belong to the loop they were made in.
    `save` gets the results after each level (a run cut short keeps the levels done)."""
    results = []
    recorder = Recorder(suite.backends[0]) if len(suite.backends) == 1 and len(urls) == 1 else None
    try:
        await suite.start()
        with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
            if warmup:
                print(f"warm-up: {sum(len(v) for v in warmup.values())} other users", file=sys.stderr)
                await measure(opts, suite, warmup, "4", Path(tmp) / "warmup")
            for level in levels:
                reset = all([await reset_prefix_cache(u) for u in urls])
                if not reset:
                    print("warning: could not empty the prefix cache (start the server with VLLM_SERVER_DEV_MODE=1); "
                          "this level may reuse the previous level's prompts", file=sys.stderr)
                print(f"concurrency {level}: {sum(len(v) for v in plan.values())} users ...", file=sys.stderr)
                if recorder is not None:
                    recorder.requests, recorder.on = {}, level == levels[-1]
                r = await measure(opts, suite, plan, level, Path(tmp) / f"c{level}")
                r["prefix_cache_reset"] = reset
                if recorder is not None and recorder.on:  # the machine's own limit for this work
                    recorder.on = False
                    if save_requests is not None:
                        save_requests.write_text(json.dumps(list(recorder.requests.values())))
                    print(f"  replaying its {sum(map(len, recorder.requests.values()))} requests without the agent ...",
                          file=sys.stderr)
                    r["engine_only"] = await replay(urls[0], list(recorder.requests.values()),
                                                    max(1, r["most_in_flight"]))
                    from engine_probe import probe  # the unit costs behind it, at the same in-flight count

                    context = int(r["tokens_in_per_user"] / max(1, r["llm_calls_per_user"]))
                    r["engine_probe"] = [await probe(urls[0], max(1, r["most_in_flight"]), c, seed=i)
                                         for i, c in enumerate((200, context))]
                results.append(r)
                save(results)
                srv = r["server"] or {}
                print(f"  {r['users_per_min']} users/min, {r['wall_s']} s, {r['rounds_per_user']} rounds/user, "
                      f"hit rate {srv.get('prefix_cache_hit_rate')}, most in flight {r['most_in_flight']}",
                      file=sys.stderr)
    finally:
        await suite.aclose()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--method", default="toolrec")
    ap.add_argument("--server", action="append", default=[], help="vLLM base URL(s); default: start one as the demo does")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra argument for `toolrec-local serve` (e.g. --serve-arg=--kv-cache-gb=1)")
    ap.add_argument("--port", type=int, default=8799)
    ap.add_argument("--levels", default="1,4,16,auto", help="concurrency levels, comma-separated; auto = capacity-aware")
    ap.add_argument("--users", type=int, default=24,
                    help=f"the first N of the demo's {DEMO_USERS} users x {DEMO_SEEDS} seeds, the same at every level "
                         "(24: 22-31 minutes for all four levels and the replay on a quiet 2-core machine, 2026-12-01)")
    ap.add_argument("--warmup", type=int, default=2, help="other users run first, not counted")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-eval.json"))
    ap.add_argument("--save-requests", type=Path, default=None,
                    help="write the last level's requests (per user, in order) here, for scripts/bench_serve_settings.py")
    args = ap.parse_args()

    from toolrec_local.data import load_dataset
    from toolrec_local.errors import ToolrecError
    from toolrec_local.eval.session import EvalOptions, assemble_run

    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    load = {"start": os.getloadavg()}
    proc, said, urls = None, "", args.server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`, kill: stop the server on the way out

    def save(results: list[dict]) -> dict:
        load["end"] = os.getloadavg()
        out = {"dataset": args.dataset, "llm": args.llm, "method": args.method, "servers": len(urls),
               "users": args.users, "serve_said": said, "cpus": os.cpu_count(), "load_avg": load,
               "vllm_env": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}, "levels": results}
        fixed = [r for r in results if r["level"] != "auto" and r["users_per_min"]]
        auto = next((r for r in results if r["level"] == "auto"), None)
        if fixed and auto and auto["users_per_min"]:
            best = max(fixed, key=lambda r: r["users_per_min"])
            out["auto_vs_best_fixed"] = {"best_level": best["level"],
                                         "ratio": round(auto["users_per_min"] / best["users_per_min"], 3)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        return out

    try:
        ds = load_dataset(args.dataset)
        plan = demo_pairs(ds, args.users)
        taken = {u for users in plan.values() for u in users}
        warm = [int(u) for u in ds.sample_users(args.warmup + len(taken), 99) if int(u) not in taken][: args.warmup]
        if not urls:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            log = args.out.with_suffix(".server.log")
            print(f"starting `toolrec-local serve --llm {args.llm}` (log: {log}) ...", file=sys.stderr)
            t0 = time.monotonic()
            proc, url, said = start_demo_server(args.llm, args.port, log, args.serve_arg)
            print(f"  up after {time.monotonic() - t0:.0f} s", file=sys.stderr)
            urls = [url]
        opts = EvalOptions.of(dataset=args.dataset, methods=args.method, llm=args.llm, backend="vllm", servers=urls)
        suite = assemble_run(opts, plan=plan).suite  # built once: every level runs on the same backends
        results = asyncio.run(bench(opts, suite, levels, plan, {99: warm} if warm else {}, urls, save,
                                      args.save_requests))
    except ToolrecError as exc:
        print(f"error: {exc.message}" + (f"\nfix: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        return 2
    finally:
        if proc is not None:
            stop(proc)
    out = save(results)
    print(f"{'level':>6} {'users/min':>9} {'wall s':>7} {'rounds':>6} {'hit rate':>8} {'computed':>9} "
          f"{'cached':>9} {'KV peak':>7} {'in flight':>9}")
    for r in results:
        srv = r["server"] or {}
        rate = srv.get("prefix_cache_hit_rate")
        print(f"{r['level']:>6} {r['users_per_min']:>9} {r['wall_s']:>7} {r['rounds_per_user']:>6} "
              f"{'-' if rate is None else f'{100 * rate:.1f}%':>8} {srv.get('computed_tokens', '-'):>9} "
              f"{srv.get('cached_tokens', '-'):>9} {r['kv_usage_peak'] if r['kv_usage_peak'] is not None else '-':>7} "
              f"{r['most_in_flight']:>9}")
    for r in results:
        if r.get("engine_only"):
            e = r["engine_only"]
            print(f"engine only (level {r['level']}'s requests replayed, {e['in_flight']} users in flight, no grammar, "
                  f"no agent): {e['users_per_min']} users/min; the agent reached {r['users_per_min']} "
                  f"({100 * r['users_per_min'] / e['users_per_min']:.0f}%)")
            for p in r.get("engine_probe", []):
                print(f"  {p['batch']} in flight over {p['context_tokens']} cached tokens each: prefill "
                      f"{p['prefill_tokens_per_s']} new tokens/s, decode {1000 * p['decode_s_per_token']:.1f} ms per token")
    if "auto_vs_best_fixed" in out:
        a = out["auto_vs_best_fixed"]
        print(f"auto / best fixed level ({a['best_level']}): {a['ratio']}")
    if out["vllm_env"]:
        print("vLLM environment: " + " ".join(f"{k}={v}" for k, v in sorted(out["vllm_env"].items())))
    print(f"load average at start {load['start'][0]:.2f}, at end {load['end'][0]:.2f}; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
