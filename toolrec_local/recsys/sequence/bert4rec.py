"""BERT4Rec (Sun et al., 2019): bidirectional self-attention trained to fill in masked items
(the Cloze task). At inference a [MASK] is appended to the history and its hidden state is
the user, so the model predicts what comes after the last item."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from toolrec_local.recsys.config import BackboneConfig
from toolrec_local.recsys.sequence.sequences import left_pad
from toolrec_local.recsys.sequence.transformer import Encoder, embed_scale, init_embeddings


class BERT4Rec(nn.Module):
    causal = False

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        # The item table stays n_items + 1 rows (scores are over real items); the mask token
        # has its own vector and the id n_items + 1 in input sequences.
        self.items = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)
        self.mask_vector = nn.Parameter(torch.randn(cfg.hidden) * cfg.hidden ** -0.5)
        self.encoder = Encoder(cfg.hidden, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len, causal=False, inner=cfg.inner,
                               post_norm=cfg.norm == "post", positions=cfg.positions)
        init_embeddings(self, cfg)

    @property
    def mask_id(self) -> int:
        return self.cfg.n_items + 1

    @property
    def window(self) -> int:
        return self.cfg.max_len

    def embed(self, seqs: torch.Tensor) -> torch.Tensor:
        is_mask = (seqs == self.mask_id).unsqueeze(-1)
        x = torch.where(is_mask, self.mask_vector, self.items(seqs.masked_fill(is_mask.squeeze(-1), 0)))
        return x * embed_scale(self.cfg)

    def hidden_states(self, seqs: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        return self.encoder(self.embed(seqs), seqs > 0, last_only=last_only)

    def train_batch(self, windows: Sequence[np.ndarray], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The Cloze task: mask each item with probability mask_prob; targets are the masked items
        (0 elsewhere). A share `mask_last` of the windows masks only its last item instead, the
        inference task (the BERT4Rec paper's extra samples); a row with nothing masked also
        gets its last item masked."""
        inputs = left_pad(windows)
        real = inputs > 0
        masked = real & (rng.random(inputs.shape) < self.cfg.mask_prob)
        last_only = rng.random(len(inputs)) < self.cfg.mask_last
        masked[last_only] = False
        none = ~masked.any(axis=1)
        masked[none, -1] = real[none, -1]
        targets = np.where(masked, inputs, 0)
        return np.where(masked, self.mask_id, inputs), targets

    def inference_inputs(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        keep = self.cfg.max_len - 1
        length = min(self.cfg.max_len, max(len(h) for h in histories) + 1)
        return left_pad([np.append(np.asarray(h[-keep:] if keep else h[:0], dtype=np.int64), self.mask_id)
                         for h in histories], length)

