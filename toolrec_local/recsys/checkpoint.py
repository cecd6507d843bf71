"""Checkpoints: weights in safetensors, everything else in config.json beside them.

Layout under TOOLREC_HOME/checkpoints/<dataset>/<backbone>/:
    backbone/{model.safetensors,config.json}
    tools/<attribute>/{model.safetensors,config.json}   (only the tool's own parameters)
Backbone and tools are separate folders, so each is written by one atomic rename and
retraining one never deletes the others; a tool records the digest of the backbone it was
trained on, and a tool whose backbone has changed is refused rather than silently misused.
Never pickle: safetensors cannot execute code on load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from toolrec_local import paths
from toolrec_local.data.dataset import Dataset
from toolrec_local.errors import ToolrecError

FORMAT = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def backbone_dir(dataset: str, backbone: str) -> Path:
    return paths.checkpoints_dir(dataset) / backbone / "backbone"


def tool_dir(dataset: str, backbone: str, attribute: str) -> Path:
    return paths.checkpoints_dir(dataset) / backbone / "tools" / attribute


def trained_tools(dataset: str, backbone: str) -> list[str]:
    root = paths.checkpoints_dir(dataset) / backbone / "tools"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG).is_file() and not p.name.startswith("."))


def train_backbone_hint(dataset: str, backbone: str) -> str:
    return f"run: toolrec-local train backbone --dataset {dataset} --model {backbone}"


def train_tool_hint(dataset: str, backbone: str, attribute: str) -> str:
    return f"run: toolrec-local train tools --dataset {dataset} --backbone {backbone} --attributes {attribute}"


def save(folder: Path, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Write weights and config.json to `folder` atomically; returns the weights' digest."""
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with paths.atomic_dir(folder) as tmp:
        save_file(tensors, str(tmp / WEIGHTS))
        digest = file_digest(tmp / WEIGHTS)
        with open(tmp / CONFIG, "w", encoding="utf-8") as fh:
            json.dump({"format": FORMAT, **meta, "weights_digest": digest}, fh, indent=2)
    return digest


def stamp(folder: Path) -> tuple:
    """(mtime, size) of a checkpoint's config, () when there is none: a loaded model is reused
    while its stamp is unchanged, reloaded after a retraining."""
    try:
        st = (folder / CONFIG).stat()
        return (st.st_mtime_ns, st.st_size)
    except FileNotFoundError:
        return ()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def read(folder: Path, ds: Dataset, hint: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and config of a checkpoint folder, after checking it belongs to `ds`."""
    cfg_path, weights_path = folder / CONFIG, folder / WEIGHTS
    if not cfg_path.is_file() or not weights_path.is_file():
        raise ToolrecError(f"no checkpoint in {folder}", hint)
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ToolrecError(f"{cfg_path}: not valid JSON ({exc})", hint) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ToolrecError(f"{cfg_path}: written by another version of toolrec-local", hint)
    if meta.get("fingerprint") != ds.fingerprint:
        raise ToolrecError(
            f"checkpoint {folder} was trained on dataset {meta.get('dataset')!r} "
            f"(fingerprint {meta.get('fingerprint')}), not on {ds.name!r} as prepared now (fingerprint {ds.fingerprint})",
            hint)
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ToolrecError(f"{weights_path}: not a readable safetensors file ({exc})", hint) from None
    return tensors, meta


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path, hint: str) -> None:
    """Load weights whose names and shapes must match the model built from config.json."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        detail = "; ".join(f"{what}: {', '.join(names[:4])}" for what, names in
                           (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if names)
        raise ToolrecError(f"{where}: weights do not match the model in its config.json ({detail})", hint)
    module.load_state_dict(tensors, strict=True)
