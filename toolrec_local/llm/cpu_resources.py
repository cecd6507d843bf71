"""What a vLLM CPU server may take from this machine: the size of its KV cache.

KV cache. vLLM's CPU backend takes a fixed KV cache (VLLM_CPU_KVCACHE_SPACE, whole GiB).
Too small, and concurrent conversations evict each other's prefixes, which are then computed
again (the demo at 1 GiB in float32: 23k tokens for sixteen 2k-token conversations); larger
than the conversations in flight need, and it only takes memory the rest of the evaluation
(the retrieval tools, the agents) may want. So `serve` sizes it for `TARGET_CONVERSATIONS`
full-context conversations (max_model_len tokens each, at the model's bytes per token),
within half of the memory left after the weights and `RESERVE_GIB` for vLLM's own processes
and the evaluation beside it; at least 1 GiB.

Cores. vLLM binds its worker's OpenMP threads to all cores but `VLLM_CPU_NUM_OF_RESERVED_CPU`
(its default: one, for its scheduler and API server), so on a 2-core machine the model would
compute on one core while the scheduler, which waits on the model, keeps the other mostly idle.
`serve` sets it to 0 unless it is set (llm/server.py). docs/benchmarks.md has the measurements
behind this choice, including one under heavy load that pointed the other way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1 << 30
RESERVE_GIB = 4.0  # vLLM's API server, engine core and worker (~2.5 GiB), the eval process (~1.5 GiB)
TARGET_CONVERSATIONS = 32  # full-context conversations the cache should hold at once
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "half": 2, "float": 4}


def memory_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def kv_bytes_per_token(config: dict, dtype: str) -> int | None:
    """Keys and values of one token over all layers, from a Hugging Face config.json; None
    for a config that does not say (the caller then keeps the default)."""
    cfg = config.get("text_config", config)
    try:
        layers = int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 4)


def weights_bytes(model_dir: Path, dtype: str) -> int:
    """The weights in memory at `dtype`: the safetensors files, rescaled from the dtype they
    are stored in (config.json's) to the served one."""
    stored = sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        stored_dtype = cfg.get("dtype") or cfg.get("torch_dtype") or dtype
    except (OSError, ValueError):
        stored_dtype = dtype
    return int(stored * DTYPE_BYTES.get(dtype, 4) / DTYPE_BYTES.get(stored_dtype, DTYPE_BYTES.get(dtype, 4)))


@dataclass(frozen=True)
class KVChoice:
    gib: int
    tokens: int | None  # what that holds, if the model's shape is known
    reason: str


def choose_kv_cache_gib(*, available: int | None, weights: int, per_token: int | None,
                        max_model_len: int, conversations: int = TARGET_CONVERSATIONS,
                        reserve: float = RESERVE_GIB) -> KVChoice:
    """The KV cache size, whole GiB (what VLLM_CPU_KVCACHE_SPACE takes), and why."""
    if per_token is None or available is None:
        what = "the model's shape" if per_token is None else "the free memory"
        return KVChoice(1, None, f"1 GiB (vLLM's CPU default: {what} is unknown)")
    wanted = conversations * max_model_len * per_token
    spare = (available - weights - reserve * GIB) / 2
    gib = int(max(1, min(-(-wanted // GIB), spare // GIB)))
    tokens = gib * GIB // per_token
    bound = (f"{conversations} conversations of {max_model_len:,} tokens" if wanted <= spare else
             f"half of the {max(0.0, (available - weights) / GIB - reserve):.1f} GiB left after the weights "
             f"and {reserve:g} GiB for the processes")
    return KVChoice(gib, tokens, f"{gib} GiB = {tokens:,} tokens ({bound}; {available / GIB:.1f} GiB free)")


def size_kv_cache(model_dir: Path, dtype: str, max_model_len: int) -> KVChoice:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    return choose_kv_cache_gib(available=memory_available_bytes(), weights=weights_bytes(model_dir, dtype),
                               per_token=kv_bytes_per_token(config, dtype), max_model_len=max_model_len)

