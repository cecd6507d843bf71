"""The attribute-specific part of a retrieval tool (paper, section 3.3.2, eqs. 2-3).

f_attr reads the attribute values of the user's items, position by position aligned with the
item history (several values at one position are mean-pooled), through a small Transformer
with the same direction as the backbone (causal for SASRec, bidirectional for BERT4Rec).
A dense layer maps [a_u ⊕ H] to the new user representation, scored against the frozen
backbone's item embeddings. These are the only parameters an attribute tool owns.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolrec_local.data.dataset import Attribute
from toolrec_local.recsys.config import ToolConfig
from toolrec_local.recsys.transformer import Encoder


class AttributeEncoder(nn.Module):
    def __init__(self, cfg: ToolConfig, attribute: Attribute, backbone_hidden: int, max_len: int, causal: bool,
                 word_vectors: np.ndarray | None = None):
        super().__init__()
        self.cfg = cfg
        self.values = nn.Embedding(cfg.n_values, cfg.hidden, padding_idx=0)
        nn.init.normal_(self.values.weight, std=cfg.hidden ** -0.5)
        if cfg.word_dim:
            # The fixed vectors are saved with the tool (a few KB), so retrieval never needs
            # the word-vector file again; only the projection and the learned part train.
            wv = torch.zeros(cfg.n_values, cfg.word_dim) if word_vectors is None else torch.as_tensor(word_vectors)
            self.register_buffer("word_vectors", wv.float())
            self.word_proj = nn.Linear(cfg.word_dim, cfg.hidden)
            with torch.no_grad():  # values with a known word start from it alone
                self.values.weight[self.word_vectors.abs().sum(1) > 0] = 0.0
        with torch.no_grad():
            self.values.weight[0].zero_()
        self.mask_value = nn.Parameter(torch.zeros(cfg.hidden))  # BERT4Rec's [MASK] position
        self.encoder = Encoder(cfg.hidden, cfg.layers, cfg.heads, cfg.dropout, max_len, causal=causal)
        self.fusion = nn.Linear(cfg.hidden + backbone_hidden, backbone_hidden)
        # Start as the identity on H (zero weight on a_u): the tool begins exactly where the
        # frozen backbone is and training only has to learn what the attribute adds.
        with torch.no_grad():
            self.fusion.weight.zero_()
            self.fusion.weight[:, cfg.hidden:] = torch.eye(backbone_hidden)
            self.fusion.bias.zero_()
        # The item -> values table comes from the dataset, not the checkpoint.
        self.register_buffer("value_ids", torch.from_numpy(np.array(attribute.values, dtype=np.int64)), persistent=False)
        self.register_buffer("value_offsets", torch.from_numpy(np.array(attribute.indptr[:-1], dtype=np.int64)),
                             persistent=False)

    def value_table(self) -> torch.Tensor:
        weight = self.values.weight
        if self.cfg.word_dim:
            weight = weight + self.word_proj(self.word_vectors) * (self.word_vectors.abs().sum(1, keepdim=True) > 0)
        return weight

    def item_table(self) -> torch.Tensor:
        """(n_items + 2, hidden): mean value embedding per item, row 0 = padding (empty, zero),
        last row = the mask token."""
        per_item = F.embedding_bag(self.value_ids, self.value_table(), self.value_offsets, mode="mean")
        return torch.cat([per_item, self.mask_value[None]], dim=0)

    def forward(self, seqs: torch.Tensor, hidden: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """seqs (B, L) the backbone's input ids; hidden (B, L, d) its frozen states ((B, 1, d) with last_only).
        Returns the fused user representation per position, or at the last one."""
        x = self.item_table()[seqs] * math.sqrt(self.cfg.hidden)
        a = self.encoder(x, seqs > 0, last_only=last_only)
        if last_only:
            a, hidden = a[:, -1], hidden[:, -1]
        return self.fusion(torch.cat([a, hidden], dim=-1))
