"""The vLLM server launcher against a real `vllm serve` of the tiny model."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_tiny_server_obeys_a_choice_constraint(vllm_server):
    from openai import OpenAI

    assert vllm_server.base_url.endswith("/v1") and vllm_server.model == "tiny-random"
    client = OpenAI(base_url=vllm_server.base_url, api_key="none")
    seen = set()
    for seed in range(4):
        r = client.chat.completions.create(
            model=vllm_server.model, messages=[{"role": "user", "content": "alpha or beta?"}],
            max_tokens=8, temperature=1.0, seed=seed,
            extra_body={"structured_outputs": {"choice": ["alpha", "beta"]}},
        )
        seen.add(r.choices[0].message.content)
    assert seen <= {"alpha", "beta"}
