"""scripts/prefix_account.py: the offline account of a recorded run's uncached prompt tokens
(the README's breakdown of what the prefix cache cannot serve comes from it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prefix_account.py"


def test_account_caches_whole_blocks_and_labels_the_parts(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from toolrec_local.agent.prompts import load_prompts

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    agent = [{"role": "system", "content": "You recommend movies. " * 30},
             {"role": "user", "content": "The user's last 10 movies: " + "Toy Story, " * 12}]
    ranking = [{"role": "system", "content": load_prompts("movies").render("rank_system", with_names=True)},
               {"role": "user", "content": "Retrieval[genre, 20]: " + "Heat, " * 20}]
    later = [*agent, {"role": "assistant", "content": "Thought: more.\nAction: Finish"},
             {"role": "user", "content": "Observation: " + "Alien, " * 10}]

    def n_tokens(messages):  # as the server counts a prompt
        return len(tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])

    base, pad = agent[1]["content"], "Rear Window (1954), Vertigo (1958), Psycho (1960), The Birds (1963), Marnie"
    for j in range(len(pad)):  # a prompt of whole blocks: the repeat must still compute its last block
        agent[1]["content"] = base + pad[:j]
        if n_tokens(agent) % 16 == 0:
            break
    assert n_tokens(agent) % 16 == 0
    later[:2] = agent

    # one user: the agent's prompt twice (the second wholly cached but its last partial block
    # and at least the last token), then a later round, then a ranking prompt
    requests = [[{"messages": m, "prefix": "", "tokens_out": 5} for m in (agent, agent, later, ranking)]]
    path = tmp_path / "requests.json"
    path.write_text(json.dumps(requests))
    out = tmp_path / "account.json"
    done = subprocess.run([sys.executable, str(SCRIPT), str(path), "--model-dir", str(tiny_model_dir), "--block-size", "16",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    account = json.loads(out.read_text())
    n_agent, n_later, n_rank = n_tokens(agent), n_tokens(later), n_tokens(ranking)
    assert n_agent > 64 and account["prompt_tokens"] == 2 * n_agent + n_later + n_rank
    parts = {(p["prompt"], p["part"]): p["tokens"] for p in account["parts"]}
    # the ranking prompt shares nothing with the agent's: all of it is computed, as its own kind
    assert parts[("ranking", "system")] + parts[("ranking", "first user message")] + parts[("ranking", "after the last message")] == n_rank
    repeat_tail = 16  # vLLM recomputes at least the last token, so here the whole last block
    # the later round is served the first prompt's whole blocks and computes the rest
    agent_total = sum(v for (k, _), v in parts.items() if k == "agent")
    assert agent_total == n_agent + repeat_tail + n_later - n_agent // 16 * 16
    assert parts[("agent", "assistant")] > 0 and parts[("agent", "later user messages")] > 0
    assert account["computed"] == agent_total + n_rank
