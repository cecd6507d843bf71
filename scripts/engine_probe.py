#!/usr/bin/env python
"""What a vLLM server does per second, measured on the server itself: the unit costs behind
an agent run's users/min.

Two probes, each with `batch` requests in flight over contexts of `context` tokens already in
the prefix cache (random words, distinct per request, so nothing is shared between them):

* prefill: each request appends `new` uncached tokens to its cached context and asks for one
  token -> new prompt tokens computed per second;
* decode:  each request continues its cached context for `out` tokens (ignore_eos) -> seconds
  per generated token with `batch` sequences decoding together.

Why ToolRec's throughput on a CPU server is what it is: with SmolLM2-135M on one core, both
costs grow with the context each token attends over (vLLM's CPU attention kernel took 58% of
the model runner's time in a py-spy profile of an agent run, the linear layers 26%), so longer
conversations, not more requests, are what costs. bench_eval.py's "engine only" replay is the
reference for a whole run; this probe gives the two unit costs behind it.

    python scripts/engine_probe.py --server http://127.0.0.1:8000/v1 --batch 24 --context 200,2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

from bench_serve_cores import _ask  # one user message, ignore_eos, usage back

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "su", "te", "ra", "no", "ve") for b in range(100)]


async def _models(client, url: str) -> str:
    return (await client.get(url + "/models")).json()["data"][0]["id"]


def _words(seed: int, n: int) -> str:
    rnd = random.Random(seed)
    return " ".join(rnd.choice(WORDS) for _ in range(n))


async def probe(url: str, batch: int, context: int, new: int = 200, out: int = 64, seed: int = 0) -> dict:
    """Prefill rate (new tokens/s) and decode cost (s per generated token) at `batch` in flight."""
    import httpx

    async with httpx.AsyncClient(timeout=900, trust_env=False) as client:
        model = await _models(client, url)
        per_word = (await _ask(client, url, model, _words(seed, 400), 1))["prompt_tokens"] / 400
        ctx_words, new_words = max(1, int(context / per_word)), max(1, int(new / per_word))
        contexts = [_words(seed * 1000 + i + 1, ctx_words) for i in range(batch)]
        await asyncio.gather(*(_ask(client, url, model, c, 1) for c in contexts))  # now cached

        extra = [" " + _words(seed * 1000 + 500 + i, new_words) for i in range(batch)]
        t0 = time.perf_counter()
        used = await asyncio.gather(*(_ask(client, url, model, c + e, 1) for c, e in zip(contexts, extra)))
        prefill_s = time.perf_counter() - t0
        new_tokens = sum(u["prompt_tokens"] for u in used) - batch * int(ctx_words * per_word)

        t0 = time.perf_counter()
        used = await asyncio.gather(*(_ask(client, url, model, c + e, out) for c, e in zip(contexts, extra)))
        decode_s = time.perf_counter() - t0
        generated = sum(u["completion_tokens"] for u in used)
    return {
        "batch": batch, "context_tokens": int(ctx_words * per_word), "new_tokens_per_request": new_tokens // batch,
        "prefill_tokens_per_s": round(new_tokens / prefill_s, 1),
        "decode_s_per_token": round(decode_s / generated, 5),
        "decode_step_ms": round(1000 * decode_s / out, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="vLLM base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--context", default="200,2000", help="cached context per request, tokens (comma-separated: one probe each)")
    ap.add_argument("--new", type=int, default=200, help="uncached tokens per request in the prefill probe")
    ap.add_argument("--out", type=int, default=64, help="tokens per request in the decode probe")
    args = ap.parse_args()
    for i, context in enumerate(int(c) for c in args.context.split(",")):
        print(json.dumps(asyncio.run(probe(args.server.rstrip("/"), args.batch, context, args.new, args.out, seed=i))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
