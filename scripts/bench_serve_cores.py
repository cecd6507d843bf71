#!/usr/bin/env python
"""Does vLLM's CPU worker go faster on all cores? Prefill and decode tokens/s of the same model
served with the worker on all cores but one (vLLM's default: one is reserved for its scheduler
and API server) and on every core (VLLM_CPU_NUM_OF_RESERVED_CPU=0), one server after the other.

    python scripts/bench_serve_cores.py --llm smollm2-135m --json

Prefill: prompts of ~1,800 distinct tokens, one at a time, one output token each (nothing
cached: each prompt starts with a different number). Decode: one stream of 128 tokens, then
16 streams at once. Each configuration runs `--repeat` times, alternating, so a change in the
machine's load hits both alike; the load average is reported with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

WORDS = "the cat sat on a mat while movies about space and love were shown to people in the city".split()


async def _ask(client, url: str, model: str, content: str, max_tokens: int) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0, "ignore_eos": True}
    r = await client.post(url + "/chat/completions", json=body)
    r.raise_for_status()
    return r.json()["usage"]


async def speeds(url: str, model: str, tag: int) -> dict:
    import random

    import httpx

    rng = random.Random(tag)
    async with httpx.AsyncClient(timeout=900, trust_env=False) as c:
        await _ask(c, url, model, "hello", 4)
        tokens, t0 = 0, time.perf_counter()
        for i in range(4):
            text = f"{tag}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(1800))
            tokens += (await _ask(c, url, model, text, 1))["prompt_tokens"]
        prefill = tokens / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        one = (await _ask(c, url, model, f"{tag}: tell me a long story about a cat.", 128))["completion_tokens"]
        decode_1 = one / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        many = await asyncio.gather(*(_ask(c, url, model, f"{tag}/{i}: a story about a dog.", 128) for i in range(16)))
        decode_16 = sum(u["completion_tokens"] for u in many) / (time.perf_counter() - t0)
    return {"prefill_tok_s": round(prefill, 1), "decode_1_tok_s": round(decode_1, 1), "decode_16_tok_s": round(decode_16, 1)}


def run_one(llm: str, reserved: str | None, tag: int) -> dict:
    from toolrec_local.llm.server import start_server

    old = os.environ.pop("VLLM_CPU_NUM_OF_RESERVED_CPU", None)
    if reserved is not None:
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = reserved
    load = os.getloadavg()[0]
    try:
        with start_server(llm, die_with_parent=True) as srv:
            figures = asyncio.run(speeds(srv.base_url, srv.model, tag))
    finally:
        os.environ.pop("VLLM_CPU_NUM_OF_RESERVED_CPU", None)
        if old is not None:
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = old
    return {"worker_cores": "all" if reserved == "0" else "all but one", **figures,
            "load_avg_before": round(load, 2), "load_avg_after": round(os.getloadavg()[0], 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default="smollm2-135m")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    runs = []
    for i in range(args.repeat):
        for reserved in (None, "0"):
            runs.append(run_one(args.llm, reserved, tag=len(runs)))
            print(json.dumps(runs[-1]), file=sys.stderr)
    out = {"llm": args.llm, "cpus": os.cpu_count(), "runs": runs}
    print(json.dumps(out, indent=2) if args.json else "\n".join(json.dumps(r) for r in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
