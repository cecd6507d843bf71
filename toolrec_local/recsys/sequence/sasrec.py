"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history; the hidden
state at position t scores the item at t+1, and the last position is the user."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from toolrec_local.recsys.config import BackboneConfig
from toolrec_local.recsys.sequence.sequences import left_pad
from toolrec_local.recsys.sequence.transformer import Encoder, embed_scale, init_embeddings


class SASRec(nn.Module):
    causal = True

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)
        self.encoder = Encoder(cfg.hidden, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len, causal=True, inner=cfg.inner,
                               post_norm=cfg.norm == "post", positions=cfg.positions)
        init_embeddings(self, cfg)

    @property
    def window(self) -> int:
        """Training window: max_len inputs plus the one item the last input predicts."""
        return self.cfg.max_len + 1

    def embed(self, seqs: torch.Tensor) -> torch.Tensor:
        return self.items(seqs) * embed_scale(self.cfg)

    def hidden_states(self, seqs: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """(B, L) item ids, 0 = padding -> (B, L, d)."""
        return self.encoder(self.embed(seqs), seqs > 0, last_only=last_only)

    def train_batch(self, windows: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and next-item targets (0 = no target) for each position."""
        padded = left_pad(windows)
        return padded[:, :-1], padded[:, 1:]

    def inference_inputs(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return left_pad(histories, min(self.cfg.max_len, max(len(h) for h in histories)))
