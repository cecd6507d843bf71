"""Where training runs: `auto` takes the GPU when torch sees one, as a user training on ML-1M or
Amazon-Book on a GPU machine expects. Checkpoints are always written from CPU tensors and
scoring loads them on CPU, so a model trained on a GPU serves anywhere."""

from __future__ import annotations

import torch

from toolrec_local.errors import ToolrecError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str = "auto") -> torch.device:
    """"auto" | "cpu" | "cuda" | "cuda:N" -> a torch.device that exists on this machine."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ToolrecError(f"--device {spec}: torch sees no CUDA GPU here (torch {torch.__version__})",
                               "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ToolrecError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices",
                               "use --device cuda (the first) or cuda:N with N below that count")
        return torch.device(spec)
    raise ToolrecError(f"unknown device {spec!r}", f"use one of: {', '.join(DEVICES)} (or cuda:N)")
