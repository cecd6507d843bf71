"""Building backbones from their config, and scoring users with a backbone and, optionally,
one attribute tool on top of it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from toolrec_local.data.dataset import Dataset
from toolrec_local.recsys.sequence.bert4rec import BERT4Rec
from toolrec_local.recsys.config import BackboneConfig
from toolrec_local.recsys.sequence.sasrec import SASRec


def build_backbone(cfg: BackboneConfig, text: torch.Tensor | None = None) -> nn.Module:
    model = SASRec(cfg) if cfg.base == "sasrec" else BERT4Rec(cfg)
    if cfg.text_dim:  # SASRec_BERT / BERT4Rec_BERT: text features (given when training) join the item table
        from toolrec_local.recsys.sequence.text_items import attach_text

        attach_text(model, cfg, text)
    return model


def user_vectors(backbone: nn.Module, tool: nn.Module | None, inputs: torch.Tensor) -> torch.Tensor:
    """(B, d) user representations: the backbone's last hidden state (eq. 1), or Dense([a_u ⊕ H])."""
    hidden = backbone.hidden_states(inputs, last_only=True)
    return hidden[:, -1] if tool is None else tool(inputs, hidden, last_only=True)


def histories(ds: Dataset, users: Sequence[int], part: str) -> list[np.ndarray]:
    return [ds.split(int(u), part)[0] for u in users]


@torch.inference_mode()
def score_histories(backbone: nn.Module, tool: nn.Module | None, hists: list[np.ndarray],
                    item_weights: torch.Tensor | None = None, batch_size: int = 512,
                    exclude_history: bool = True) -> np.ndarray:
    """(len(hists), n_items + 1) float32 scores; column 0 and (unless told otherwise) each
    history's items are -inf."""
    weights = backbone.items.weight if item_weights is None else item_weights
    out = np.empty((len(hists), weights.shape[0]), dtype=np.float32)
    # Similar lengths together, so a batch pads little.
    order = np.argsort([min(len(h), backbone.cfg.max_len) for h in hists], kind="stable")
    for start in range(0, len(hists), batch_size):
        rows = order[start:start + batch_size]
        inputs = torch.from_numpy(backbone.inference_inputs([hists[r] for r in rows])).to(weights.device)
        out[rows] = (user_vectors(backbone, tool, inputs) @ weights.T).float().cpu().numpy()
    out[:, 0] = -np.inf
    if exclude_history:
        for row, h in enumerate(hists):
            out[row, h] = -np.inf
    return out
