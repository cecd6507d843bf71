#!/usr/bin/env python
"""Where an agent run's uncached prompt tokens go: the requests a run recorded
(`bench_eval.py --save-requests`), each user's in order, tokenised with the model's chat
template and run through a simulated prefix cache of `--block-size` blocks (no eviction; the
server's KV peak in these runs is under 20%), every computed token labelled by the prompt and
the part of it it falls in.

    python scripts/bench_eval.py --levels auto --save-requests runs/requests.json
    python scripts/prefix_account.py runs/requests.json            # --json runs/account.json

Prompts are "agent" (the Thought/Action conversation) or "ranking" (Rank and the final step:
the domain's rank_system message); parts are the system message, the first user message
(the task with the user's profile and history; for a ranking prompt the whole of it: user,
lists, instruction), later user messages (observations), assistant turns (the agent's earlier
replies), and what follows the last message (the generation prompt and a continued answer's
text so far). Like vLLM it caches whole blocks only and recomputes at least the last token.

What it cannot see: the tokens the server generated, which vLLM caches too (a reply re-sent in
the next prompt is served from the cache when it tokenises the same), so it counts more
computed tokens than the server's /metrics; the "assistant" line is about that difference. Its
prompt-token total equals the server's when the chat template is the server's.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("requests", type=Path, help="bench_eval.py --save-requests output")
    ap.add_argument("--llm", default="smollm2-135m", help="model whose tokenizer and chat template to use")
    ap.add_argument("--model-dir", type=Path, default=None, help="default: TOOLREC_HOME/models/<llm>")
    ap.add_argument("--domain", default="movies", help="prompts/<domain>.yaml, for its rank_system message")
    ap.add_argument("--block-size", type=int, default=32, help="serve's CPU choice")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from toolrec_local.agent.prompts import load_prompts
    from toolrec_local.paths import models_dir

    folder = args.model_dir or models_dir() / args.llm
    if not (folder / "tokenizer_config.json").is_file():
        print(f"error: no tokenizer in {folder}\nfix: toolrec-local models pull {args.llm}, or pass --model-dir", file=sys.stderr)
        return 2
    tok = AutoTokenizer.from_pretrained(str(folder))
    prompts = load_prompts(args.domain)
    rank_systems = {prompts.render("rank_system", with_names=w) for w in (True, False)}
    users = json.loads(args.requests.read_text())
    B = args.block_size

    def render(messages, prefix, upto=None):
        if upto is not None:
            text = tok.apply_chat_template(messages[:upto], tokenize=False)
        elif prefix:
            text = tok.apply_chat_template([*messages, {"role": "assistant", "content": prefix}], tokenize=False,
                                           continue_final_message=True)
        else:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tok(text, add_special_tokens=False)["input_ids"]

    cache: set[int] = set()
    computed = collections.Counter()
    prompt_tokens = requests = 0
    for reqs in users:
        for r in reqs:
            messages, prefix = r["messages"], r["prefix"]
            ids = render(messages, prefix)
            n = len(ids)
            hit, key = 0, None
            for b in range((n - 1) // B):  # whole blocks, never the last token
                key = hash((key, tuple(ids[b * B:(b + 1) * B])))
                if key not in cache:
                    break
                hit = (b + 1) * B
            key = None
            for b in range(n // B):
                key = hash((key, tuple(ids[b * B:(b + 1) * B])))
                cache.add(key)
            kind = "ranking" if messages[0].get("content") in rank_systems else "agent"
            ends = [len(render(messages, prefix, upto=i)) for i in range(1, len(messages) + 1)]
            for pos in range(hit, n):
                m = next((i for i, end in enumerate(ends) if pos < end), len(messages))
                if m == len(messages):
                    part = "after the last message"
                else:
                    role = messages[m]["role"]
                    part = {"system": "system", "assistant": "assistant"}.get(role, "first user message" if m == 1 else "later user messages")
                computed[(kind, part)] += 1
            prompt_tokens += n
            requests += 1

    total = sum(computed.values())
    n_users = max(1, len(users))
    print(f"{len(users)} users, {requests} requests, {prompt_tokens:,} prompt tokens, {total:,} computed "
          f"({1 - total / max(1, prompt_tokens):.1%} served by a {B}-token-block cache; generated tokens not credited)")
    rows = sorted(computed.items(), key=lambda kv: -kv[1])
    for (kind, part), v in rows:
        print(f"  {kind:<8} {part:<24} {v:>8,}  {v / total:6.1%}  {v / n_users:7.0f} per user")
    if args.json:
        args.json.write_text(json.dumps({
            "users": len(users), "requests": requests, "prompt_tokens": prompt_tokens, "computed": total,
            "block_size": B, "parts": [{"prompt": k, "part": p, "tokens": v} for (k, p), v in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
