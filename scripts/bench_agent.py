"""Agent overhead: time per round spent outside the LLM (prompt rendering, the retrieval tool's
forward pass, memory checks, rank-prompt building, the final list) on a prepared dataset with
the trained retrieval tools. The LLM is replaced by an instant policy backend (a deterministic
plan: Retrieval, Retrieval by attribute, Rank, Finish) whose replies satisfy the grammar, so
every measured millisecond is the agent's own. Also measures prompt sizes, in tokens when a
tokenizer folder is given (--tokenizer, or TOOLREC_HOME/models/smollm2-135m if present),
else in whitespace words.

    python scripts/bench_agent.py --dataset ml-100k --users 50 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from toolrec_local import paths
from toolrec_local.agent.context import AgentConfig, AgentContext
from toolrec_local.agent.loop import run_agent
from toolrec_local.data import load_dataset
from toolrec_local.errors import ToolrecError
from toolrec_local.llm.grammar import conforms
from toolrec_local.llm.protocol import ActionGrammar, Completion, ItemListGrammar


class PolicyBackend:
    """An instant Backend: a fixed plan per user, item lists = the first k options."""

    name = "policy"

    def __init__(self, attributes, counter, long: bool = False):
        self.attributes, self.count, self.long = list(attributes), counter, long
        self.prompts: list[tuple[str, list[dict]]] = []

    async def generate(self, messages, constraint, *, max_tokens=256, temperature=0.0, seed=None):
        if isinstance(constraint, ItemListGrammar):
            text = "\n".join(constraint.options[: constraint.k])
            self.prompts.append(("rank", messages, max_tokens))
        else:
            step = sum(m["role"] == "assistant" for m in messages)
            attr = self.attributes[len(messages) % len(self.attributes)] if self.attributes else "None"
            plan = ["Retrieval[None, 20]", f"Retrieval[{attr}, 20]", "Rank[None, 10]", "Finish"]
            if self.long:  # never finishes: eight rounds, the context's worst case
                plan = ["Retrieval[None, 30]", f"Retrieval[{attr}, 30]", "Rank[None, 20]", "Retrieval[None, 50]",
                        "Rank[popularity, 10]", f"Retrieval[{attr}, 40]", "Rank[None, 30]", "Retrieval[None, 20]"]
            text = f"Thought: step {step + 1} of the plan.\nAction: {plan[min(step, len(plan) - 1)]}"
            self.prompts.append(("action", messages, max_tokens))
        if constraint is not None and not conforms(constraint, text):
            raise AssertionError(f"policy reply outside the grammar: {text!r}")
        return Completion(text=text, tokens_in=self.count(messages), tokens_out=len(text.split()))

    async def aclose(self):
        pass


def token_counter(folder: Path | None):
    if folder is not None and (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        unit = "tokens"

        def count(messages):
            try:
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                return len(tok(text, add_special_tokens=False)["input_ids"])
            except Exception:  # no chat template: plain concatenation
                return len(tok("\n".join(m["content"] for m in messages))["input_ids"])
    else:
        unit = "words"

        def count(messages):
            return sum(len(m["content"].split()) for m in messages)

    return count, unit


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--backbone", default="sasrec")
    ap.add_argument("--history-len", type=int, default=10)
    ap.add_argument("--demos", type=int, default=2)
    ap.add_argument("--show-items", type=int, default=10)
    ap.add_argument("--tokenizer", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (one user's forward pass gains nothing from more; on a busy machine "
                         "more threads spin and wait)")
    ap.add_argument("--context", type=int, default=None, help="fit prompts into this many tokens (AgentConfig.context_tokens)")
    ap.add_argument("--long", action="store_true", help="a plan that runs all 8 rounds (the context's worst case)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    try:
        from toolrec_local.recsys.attributes.retrieval import RetrievalTool

        ds = load_dataset(args.dataset)
        t0 = time.perf_counter()
        tool = RetrievalTool.load(ds, backbone=args.backbone)
        load_s = time.perf_counter() - t0
    except ToolrecError as exc:
        print(f"error: {exc.message}\nfix: {exc.hint}", file=sys.stderr)
        return 2
    tok_dir = args.tokenizer or (paths.models_dir() / "smollm2-135m")
    count, unit = token_counter(tok_dir if tok_dir.is_dir() else None)
    backend = PolicyBackend(tool.attributes, count, long=args.long)
    cfg = AgentConfig(history_len=args.history_len, demos=args.demos, observe_items=args.show_items,
                      context_tokens=args.context)
    ctx = AgentContext(ds, tool, backend, cfg)
    users = ds.sample_users(args.users, seed=0)

    async def go():
        return [await run_agent(ctx, int(u)) for u in users]

    asyncio.run(run_agent(ctx, int(users[0])))  # warm-up (first forward pass, caches)
    backend.prompts.clear()
    t0 = time.perf_counter()
    trajs = asyncio.run(go())
    wall = time.perf_counter() - t0
    rounds = [r for t in trajs for r in t.rounds]
    ms = [r.overhead_s * 1000 for r in rounds]
    by_kind = {}
    for r in rounds:
        by_kind.setdefault(r.action.split("[")[0], []).append(r.overhead_s * 1000)
    action_sizes = [count(m) for kind, m, _ in backend.prompts if kind == "action"]
    rank_sizes = [count(m) for kind, m, _ in backend.prompts if kind == "rank"]
    with_reply = [count(m) + mt for _, m, mt in backend.prompts]  # what must fit in the context
    result = {
        "dataset": args.dataset, "users": len(users), "rounds": len(rounds), "backbone": args.backbone,
        "tool_attributes": tool.attributes, "tool_load_s": round(load_s, 3),
        "overhead_ms_per_round": {"median": round(statistics.median(ms), 3), "p90": round(pct(ms, 0.9), 3),
                                  "mean": round(statistics.fmean(ms), 3), "max": round(max(ms), 3)},
        "overhead_ms_by_action": {k: round(statistics.median(v), 3) for k, v in sorted(by_kind.items())},
        "wall_s": round(wall, 3),
        "prompt_size_unit": unit,
        "action_prompt": {"first": round(statistics.median(action_sizes[:: len(action_sizes) // len(users)]), 1),
                          "max": max(action_sizes)},
        "rank_prompt": {"median": statistics.median(rank_sizes) if rank_sizes else 0, "max": max(rank_sizes, default=0)},
        "prompt_plus_reply_max": max(with_reply),
        "config": {"history_len": args.history_len, "demos": args.demos, "show_items": args.show_items,
                   "context_tokens": args.context, "long_plan": args.long,
                   "torch_threads": args.threads},
        "load_avg_1m": round(__import__("os").getloadavg()[0], 2),
        "target_ms": 20.0,
    }
    result["ok"] = result["overhead_ms_per_round"]["median"] <= result["target_ms"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        o = result["overhead_ms_per_round"]
        print(f"{result['rounds']} rounds over {result['users']} users: overhead per round median {o['median']} ms, "
              f"p90 {o['p90']} ms (target <= 20 ms); by action {result['overhead_ms_by_action']}")
        print(f"prompt sizes ({unit}): action first {result['action_prompt']['first']}, max {result['action_prompt']['max']}; "
              f"rank median {result['rank_prompt']['median']}, max {result['rank_prompt']['max']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
