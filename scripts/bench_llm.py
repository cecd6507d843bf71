"""Benchmarks of the constrained LLM layer; prints a table or, with --json, one JSON object.

    python scripts/bench_llm.py --json [--out FILE] [--base-url URL --model NAME] [--skip-local]

1. grammar build time (xgrammar, llguidance; in process) for the action grammar and for item
   lines over 30 / 100 / 1000 candidate titles;
2. on one vLLM server: decode time per output token with and without a constraint (same
   prompt, same number of tokens; ratio, target <= 1.10), first-token time of an item
   step over 30 / 100 / 1000 candidates against an unconstrained first token, and a
   10-of-30 item list in each list mode (requests, latency);
3. tokens/s of SmolLM2-135M on vLLM CPU against the in-process local backend.

Without --base-url the script starts (and stops) its own SmolLM2-135M server with
toolrec_local.llm.server. Numbers depend on the machine's load; the JSON records it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

from toolrec_local.llm import grammar as G
from toolrec_local.llm.protocol import ActionGrammar

SIZES = (30, 100, 1000)
ACTION = ActionGrammar(("genre", "release_year", "class"), max_k=50)
PROMPT = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "Tell me a long story about a robot who learns to cook. "
                                      "Use many sentences and describe every dish."}]


def titles(n: int) -> list[str]:
    """`<id>, <title>` options: ML-100K's when prepared in TOOLREC_HOME, else synthetic."""
    try:
        from toolrec_local.data import load_dataset, prepared

        if prepared("ml-100k"):
            ds = load_dataset("ml-100k")
            return [f"{ds.item_ids[i]}, {ds.item_names[i]}" for i in range(1, n + 1)]
    except Exception:  # noqa: BLE001 - the bench falls back to synthetic titles
        pass
    return [f"{i}, Synthetic Movie Title Number {i} ({1950 + i % 70})" for i in range(1, n + 1)]


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def grammar_builds(model_dir: Path) -> dict:
    """Compile times (best of 3, ms) of the regexes the backends send."""
    import llguidance
    import llguidance.hf
    import xgrammar as xgr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    xinfo = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    lltok = llguidance.hf.from_tokenizer(tok)

    def xg(regex):
        return timed(lambda: xgr.GrammarCompiler(xinfo, cache_enabled=False).compile_regex(regex))

    def ll(regex):
        def build():
            m = llguidance.LLMatcher(lltok, llguidance.LLMatcher.grammar_from_regex(regex), log_level=0)
            assert not m.is_error(), m.get_error()
            m.compute_bitmask()  # the first mask is part of the cost
        return timed(build)

    out = {"action": {"xgrammar_ms": xg(G.to_regex(ACTION)) * 1e3, "llguidance_ms": ll(G.to_regex(ACTION)) * 1e3}}
    for n in SIZES:
        regex = G.next_line_regex(tuple(titles(n)))
        out[f"item_line_{n}"] = {"xgrammar_ms": xg(regex) * 1e3, "llguidance_ms": ll(regex) * 1e3,
                                 "regex_chars": len(regex)}
    return out


async def server_figures(base_url: str, model: str, repeat: int = 3) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", timeout=600, max_retries=0)

    async def request(max_tokens, structured=None, messages=PROMPT):
        extra = {"ignore_eos": True}
        if structured:
            extra["structured_outputs"] = structured
        t0 = time.perf_counter()
        r = await client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                 temperature=0.0, extra_body=extra)
        return time.perf_counter() - t0, r.usage.completion_tokens

    async def decode_per_token(modes: dict, n=32, reps=5):
        """(t(n tokens) - t(1 token)) / (n - 1) per mode: decode time per token without the
        prefill. Modes are interleaved in every repetition so that load drifts hit all alike."""
        for structured in modes.values():
            await request(n, structured)  # warm: grammar compiled and cached, prompt cached
        per = {m: [] for m in modes}
        got = {}
        for _ in range(reps):
            for m, structured in modes.items():
                t1, _ = await request(1, structured)
                tn, got[m] = await request(n, structured)
                per[m].append((tn - t1) / max(1, got[m] - 1))
        return {m: statistics.median(v) for m, v in per.items()}, got

    # The thought line is where an agent turn spends its tokens; the mask allows any non-newline.
    # The narrow mask (lowercase words only) forbids most of the vocabulary at each step.
    med, got = await decode_per_token({
        "unconstrained": None,
        "thought_regex": {"regex": G.escape(G.THOUGHT_PREFIX) + G.THOUGHT_LINE},
        "lowercase_words_regex": {"regex": "[a-z]+( [a-z]+)*"},
    })
    free, thought, narrow = med["unconstrained"], med["thought_regex"], med["lowercase_words_regex"]
    n_free, n_thought, n_narrow = got["unconstrained"], got["thought_regex"], got["lowercase_words_regex"]
    out = {
        "decode_ms_per_token": {"unconstrained": free * 1e3, "thought_regex": thought * 1e3,
                                "lowercase_words_regex": narrow * 1e3},
        "tokens": {"unconstrained": n_free, "thought_regex": n_thought, "lowercase_words_regex": n_narrow},
        "ratio_thought_vs_free": thought / free,
        "ratio_narrow_vs_free": narrow / free,
    }

    first = {}
    t_free = statistics.median([(await request(1))[0] for _ in range(repeat)])
    for n in SIZES:
        opts = tuple(titles(n))
        msgs = [{"role": "user", "content": "Pick one movie."}]
        structured = {"regex": G.option_regex(opts)}
        t_cold, _ = await request(1, structured, msgs)  # grammar built on the server
        t_warm = statistics.median([(await request(1, structured, msgs))[0] for _ in range(repeat)])
        first[f"{n}"] = {"first_token_cold_ms": t_cold * 1e3, "first_token_warm_ms": t_warm * 1e3}
    out["item_step_first_token"] = first
    out["unconstrained_first_token_ms"] = t_free * 1e3

    out["item_list_10_of_30"] = await list_modes(base_url, model, repeat)

    tps = []
    for _ in range(repeat):
        t, got = await request(64)
        tps.append(got / t)
    out["tokens_per_s_64"] = statistics.median(tps)
    await client.close()
    return out


async def list_modes(base_url: str, model: str, repeat: int) -> dict:
    """A 10-line list from 30 candidates through the vLLM backend, in each list mode:
    requests per list and latency (greedy, and sampled at temperature 1)."""
    from toolrec_local.llm.backends.vllm import VLLMBackend
    from toolrec_local.llm.protocol import ItemListGrammar

    opts = tuple(titles(30))
    msgs = [{"role": "user", "content": "A user liked Star Wars and Heat. Rank these candidates, best first, "
                                        "one per line:\n" + "\n".join(opts)}]
    backends = {mode: VLLMBackend(base_url, model, list_mode=mode) for mode in ("stepwise", "optimistic")}
    rows: dict = {mode: [] for mode in backends}
    for s in range(repeat):  # modes interleaved, so that load drifts hit both alike
        for t in (0.0, 1.0):
            for mode, b in backends.items():
                rows[mode].append(await b.generate(msgs, ItemListGrammar(opts, 10), temperature=t, seed=s))
    for b in backends.values():
        await b.aclose()
    return {mode: {"latency_s_median": statistics.median(c.latency_s for c in r),
                   "requests_mean": statistics.mean(c.calls for c in r),
                   "tokens_out_mean": statistics.mean(c.tokens_out for c in r)} for mode, r in rows.items()}


async def local_tokens_per_s(model_dir: Path, repeat: int = 3) -> dict:
    from toolrec_local.llm.backends.local import LocalBackend

    b = LocalBackend(model_dir)
    await b.generate(PROMPT, None, max_tokens=4)  # warm
    tps, toks = [], []
    for _ in range(repeat):
        c = await b.generate(PROMPT, None, max_tokens=64)
        tps.append(c.tokens_out / c.latency_s)
        toks.append(c.tokens_out)
    return {"tokens_per_s": statistics.median(tps), "tokens": toks}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--base-url", help="an already running vLLM server (…/v1) serving --model")
    ap.add_argument("--model", default="smollm2-135m", help="model card (and served name)")
    ap.add_argument("--skip-local", action="store_true", help="skip the in-process tokens/s")
    args = ap.parse_args(argv)

    from toolrec_local.llm.registry import load_card

    card = load_card(args.model)
    model_dir = card.require_weights()
    result: dict = {"model": card.name, "load_avg_start": os.getloadavg()[0], "cpus": os.cpu_count()}
    result["grammar_build"] = grammar_builds(model_dir)

    server = None
    base_url = args.base_url
    try:
        if base_url is None:
            from toolrec_local.llm.server import start_server

            t0 = time.perf_counter()
            server = start_server(card, structured_backend="xgrammar", timeout=900, die_with_parent=True)
            result["server_start_s"] = time.perf_counter() - t0
            base_url = server.base_url
        result["vllm"] = asyncio.run(server_figures(base_url, card.served_name))
    finally:
        if server is not None:
            server.stop()
    if not args.skip_local:
        result["local"] = asyncio.run(local_tokens_per_s(model_dir))
        result["tokens_per_s_ratio_vllm_vs_local"] = result["vllm"]["tokens_per_s_64"] / result["local"]["tokens_per_s"]
    result["load_avg_end"] = os.getloadavg()[0]

    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
    else:
        _print_table(result)
    return 0


def _print_table(r: dict) -> None:
    print(f"model {r['model']}  load {r['load_avg_start']:.1f} -> {r['load_avg_end']:.1f} on {r['cpus']} cpus")
    for k, v in r["grammar_build"].items():
        print(f"  build {k:15s} xgrammar {v['xgrammar_ms']:8.1f} ms   llguidance {v['llguidance_ms']:7.1f} ms")
    v = r["vllm"]
    d = v["decode_ms_per_token"]
    print(f"  decode ms/token: free {d['unconstrained']:.1f}  thought {d['thought_regex']:.1f}  "
          f"narrow {d['lowercase_words_regex']:.1f}  ratio {v['ratio_thought_vs_free']:.2f} / {v['ratio_narrow_vs_free']:.2f}")
    for n, f in v["item_step_first_token"].items():
        print(f"  item step over {n:>4}: first token cold {f['first_token_cold_ms']:.0f} ms, "
              f"warm {f['first_token_warm_ms']:.0f} ms (free {v['unconstrained_first_token_ms']:.0f} ms)")
    for mode, f in v["item_list_10_of_30"].items():
        print(f"  10 of 30, {mode:10s}: {f['latency_s_median']:.2f} s, {f['requests_mean']:.1f} requests, "
              f"{f['tokens_out_mean']:.0f} tokens")
    if "local" in r:
        print(f"  tokens/s: vLLM {v['tokens_per_s_64']:.1f}, local {r['local']['tokens_per_s']:.1f}, "
              f"ratio {r['tokens_per_s_ratio_vllm_vs_local']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
