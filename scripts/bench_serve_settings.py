#!/usr/bin/env python
"""vLLM server settings compared on the same work, side by side in one run: an agent run's
requests (saved by `bench_eval.py --save-requests`) replayed against a fresh
`toolrec-local serve --llm smollm2-135m` per setting (same prompts, same generated token
counts, no grammar, no agent: bench_eval.replay), so only the server differs.

    python scripts/bench_eval.py --levels 16 --users 16 --save-requests runs/requests.json
    python scripts/bench_serve_settings.py --requests runs/requests.json --users 8 \\
        --setting "default=" --setting "block 128=--block-size 128" --setting "float32=--dtype float32"

A setting is NAME=ARGS (ARGS go to `vllm serve` after `--`; empty = serve's own choices). The
first setting runs again at the end, so the run shows its own noise. JSON to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path

from bench_eval import replay, start_demo_server, stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=Path, required=True, help="bench_eval.py --save-requests output")
    ap.add_argument("--setting", action="append", required=True, help="NAME=ARGS for vllm serve (repeatable)")
    ap.add_argument("--users", type=int, default=8, help="the first N recorded users")
    ap.add_argument("--in-flight", type=int, default=0, help="users at once (default: all N)")
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--port", type=int, default=8796)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-serve-settings.json"))
    args = ap.parse_args()

    users = json.loads(args.requests.read_text())[: args.users]
    settings = [s.split("=", 1) for s in args.setting]
    if any(len(s) != 2 for s in settings):
        print("error: a --setting is NAME=ARGS (ARGS may be empty)", file=sys.stderr)
        return 2
    settings.append([settings[0][0] + " (again)", settings[0][1]])
    results = []
    for name, extra in settings:
        log = args.out.with_suffix(f".{len(results)}.server.log")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        proc, url, _ = start_demo_server(args.llm, args.port, log, ["--", *shlex.split(extra)] if extra else [])
        try:
            r = asyncio.run(replay(url, users, args.in_flight or len(users)))
        finally:
            stop(proc)
        r.update(setting=name, vllm_args=extra, load=round(os.getloadavg()[0], 2))
        results.append(r)
        print(f"{name:>24}: {r['users_per_min']} users/min, {r['wall_s']} s (load {r['load']})", flush=True)
        args.out.write_text(json.dumps({"requests": str(args.requests), "time": time.ctime(), "results": results},
                                       indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
