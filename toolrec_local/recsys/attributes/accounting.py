"""Trainable parameters and forward FLOPs of SASRec, "frozen + a1" and "full + a1" (paper,
Figure 6). FLOPs are counted by torch's FlopCounterMode for one user with a full-length
history, scored against the whole catalogue; "frozen" and "full" run the same computation,
so their FLOPs are equal by construction and only the trainable counts differ."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from toolrec_local.data.dataset import Dataset
from toolrec_local.recsys.attributes.attribute import AttributeEncoder, numeric_values
from toolrec_local.recsys.config import BackboneConfig, ToolConfig
from toolrec_local.recsys.models import build_backbone, user_vectors


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _flops(backbone, tool, length: int) -> int:
    inputs = torch.randint(1, backbone.cfg.n_items + 1, (1, length))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        user_vectors(backbone, tool, inputs) @ backbone.items.weight.T
    return int(counter.get_total_flops())


def account(ds: Dataset, attribute: str | None = None, max_len: int = 200, hidden: int = 64, layers: int = 2,
            heads: int = 2, attr_layers: int = 1) -> dict[str, dict[str, int]]:
    attribute = attribute or next(iter(ds.attributes))
    attr = ds.attribute(attribute)
    backbone = build_backbone(BackboneConfig("sasrec", ds.n_items, max_len=max_len, hidden=hidden, layers=layers,
                                             heads=heads)).eval()
    # The tool as `train tools` builds it by default: numbers as numbers, text as GloVe 50-d
    # vectors (a buffer, not a parameter: only their projection trains).
    numeric = numeric_values(attr.vocab) is not None
    cfg = ToolConfig(attribute, len(attr.vocab), hidden=hidden, layers=attr_layers, heads=heads,
                     encoding="numeric" if numeric else "words", word_dim=0 if numeric else 50)
    tool = AttributeEncoder(cfg, attr, hidden, max_len, causal=True).eval()
    base, extra = _count(backbone), _count(tool)
    flops_base, flops_tool = _flops(backbone, None, max_len), _flops(backbone, tool, max_len)
    return {
        "sasrec": {"trainable_params": base, "stored_params": base, "forward_flops": flops_base},
        "frozen+a1": {"trainable_params": extra, "stored_params": extra, "forward_flops": flops_tool},
        "full+a1": {"trainable_params": base + extra, "stored_params": base + extra, "forward_flops": flops_tool},
        "_setting": {"attribute": attribute, "n_items": ds.n_items, "max_len": max_len, "hidden": hidden,
                     "layers": layers, "attr_layers": attr_layers, "encoding": cfg.encoding},
    }
