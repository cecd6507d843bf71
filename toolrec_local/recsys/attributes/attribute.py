"""The attribute-specific part of a retrieval tool (paper, section 3.3.2, eqs. 2-3).

Value embeddings, by the attribute's kind:
- text values ("Comedy", a city): fixed word vectors (GloVe in the paper), projected by a
  learned linear layer; a value with no known word gets a learned vector of its own;
- numeric values (a year, a price bucket "12.99-19.95"): a learned embedding of the value's
  quantile bucket plus a learned linear map of the standardised number, so nearby numbers
  start close and the model can still tell them apart;
- or, when asked, one learned embedding per value (`encoding="learned"`).
f_attr reads the attribute values of the user's items, position by position aligned with the
item history (several values at one position are mean-pooled), through a small Transformer
with the same direction as the backbone (causal for SASRec, bidirectional for BERT4Rec).
A dense layer maps [a_u ⊕ H] to the new user representation, scored against the frozen
backbone's item embeddings. These are the only parameters an attribute tool owns.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolrec_local.data.dataset import Attribute
from toolrec_local.recsys.config import ToolConfig
from toolrec_local.recsys.sequence.transformer import Encoder

ENCODINGS = ("words", "numeric", "learned")
FUSION_INITS = ("random", "identity")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def numeric_values(vocab: list[str], min_share: float = 0.9) -> np.ndarray | None:
    """The number each value stands for (a range "a-b" -> its midpoint; NaN for the odd value
    that is not a number, e.g. ML-100K's "unkonwn" year), or None when fewer than `min_share`
    of the values are numbers. vocab[0] (padding) is NaN."""
    out = np.full(len(vocab), np.nan)
    for i, value in enumerate(vocab[1:], start=1):
        numbers = _NUMBER.findall(value)
        if numbers and len(numbers) <= 2 and _NUMBER.sub("", value).strip(" -$€£.,%") == "":
            out[i] = float(np.mean([float(n) for n in numbers]))
    known = int(np.isfinite(out).sum())
    return out if len(vocab) > 1 and known >= min_share * (len(vocab) - 1) else None


class AttributeEncoder(nn.Module):
    def __init__(self, cfg: ToolConfig, attribute: Attribute, backbone_hidden: int, max_len: int, causal: bool,
                 word_vectors: np.ndarray | None = None):
        super().__init__()
        self.cfg = cfg
        encoding = cfg.encoding
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown value encoding {encoding!r}")
        if encoding != "numeric":  # numbers need no vector per value
            self.values = nn.Embedding(cfg.n_values, cfg.hidden, padding_idx=0)
            nn.init.normal_(self.values.weight, std=cfg.hidden ** -0.5)
            with torch.no_grad():
                self.values.weight[0].zero_()
        if encoding == "words":
            # The fixed vectors are saved with the tool (a few KB), so retrieval never needs
            # the word-vector file again; only the projection (and unknown values) train.
            wv = torch.zeros(cfg.n_values, cfg.word_dim) if word_vectors is None else torch.as_tensor(word_vectors)
            self.register_buffer("word_vectors", wv.float())
            self.word_proj = nn.Linear(cfg.word_dim, cfg.hidden)
        elif encoding == "numeric":
            number = numeric_values(attribute.vocab)
            if number is None:
                raise ValueError(f"attribute {attribute.name!r} has values that are not numbers")
            per_item = number[np.asarray(attribute.values, dtype=np.int64)]
            per_item = per_item[np.isfinite(per_item)]
            edges = np.unique(np.quantile(per_item, np.linspace(0, 1, cfg.buckets + 1)[1:-1])) if len(per_item) else []
            # rows: 0 padding, 1..buckets the quantile buckets, buckets + 1 "not a number"
            bucket = 1 + np.searchsorted(edges, np.nan_to_num(number), side="right")
            bucket = np.where(np.isfinite(number), bucket, cfg.buckets + 1)
            bucket[0] = 0
            mean, std = (float(per_item.mean()), float(per_item.std()) or 1.0) if len(per_item) else (0.0, 1.0)
            self.register_buffer("value_bucket", torch.from_numpy(bucket.astype(np.int64)), persistent=False)
            self.register_buffer("value_number", torch.from_numpy(np.nan_to_num((number - mean) / std)).float(),
                                 persistent=False)
            self.bucket_emb = nn.Embedding(cfg.buckets + 2, cfg.hidden, padding_idx=0)
            self.number_proj = nn.Linear(1, cfg.hidden)
        self.mask_value = nn.Parameter(torch.zeros(cfg.hidden))  # BERT4Rec's [MASK] position
        self.encoder = Encoder(cfg.hidden, cfg.layers, cfg.heads, cfg.dropout, max_len, causal=causal)
        self.fusion = nn.Linear(cfg.hidden + backbone_hidden, backbone_hidden)
        if cfg.fusion_init == "identity":
            # The identity on H (zero weight on a_u): the tool starts where the frozen backbone is.
            with torch.no_grad():
                self.fusion.weight.zero_()
                self.fusion.weight[:, cfg.hidden:] = torch.eye(backbone_hidden)
                self.fusion.bias.zero_()
        elif cfg.fusion_init != "random":
            raise ValueError(f"unknown fusion init {cfg.fusion_init!r}")
        # The item -> values table comes from the dataset, not the checkpoint.
        self.register_buffer("value_ids", torch.from_numpy(np.array(attribute.values, dtype=np.int64)), persistent=False)
        self.register_buffer("value_offsets", torch.from_numpy(np.array(attribute.indptr[:-1], dtype=np.int64)),
                             persistent=False)

    def value_table(self) -> torch.Tensor:
        """(n_values, hidden); row 0 (padding) is zero."""
        if self.cfg.encoding == "words":
            known = self.word_vectors.abs().sum(1, keepdim=True) > 0
            return torch.where(known, self.word_proj(self.word_vectors), self.values.weight)
        if self.cfg.encoding == "numeric":
            table = self.bucket_emb(self.value_bucket) + self.number_proj(self.value_number[:, None])
            return table * (self.value_bucket > 0)[:, None]
        return self.values.weight

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
