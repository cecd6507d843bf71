"""SASRec_BERT and BERT4Rec_BERT (the paper's Table 2): the backbone's item table becomes an
ID embedding plus a linear projection of the item's frozen text features (text_features.py),
summed, as UniSRec's transductive setting combines its text-based item vectors with ID
embeddings. Everything that reads `backbone.items` (input embeddings, the scoring table, the
attribute tools) sees the combined vectors; the rest of the backbone is unchanged.

The features are centred on the catalogue's mean first: sentence embeddings share a large
common direction (two ML-100K item texts have cosine 0.43 on average), which at the start would add nearly
the same vector to every item. Centred, SASRec_BERT reached validation NDCG@10 0.113 on ML-100K
(fast preset) against 0.102 uncentred and 0.080 standardised per dimension (one seed each).
They are a buffer of the module, so the checkpoint holds them (2.6 MB on ML-100K): a trained
model scores without the encoder, and cannot drift from the features it learnt on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from toolrec_local.data.dataset import Dataset
from toolrec_local.recsys.config import TEXT_BACKBONES, BackboneConfig, replace


class TextItems(nn.Module):
    """A drop-in for the backbone's nn.Embedding: `weight` and `forward(ids)` give
    ID embedding + Linear(text) per item; row 0 (padding) is zero."""

    def __init__(self, n_items: int, hidden: int, text_dim: int):
        super().__init__()
        self.ids = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=hidden ** -0.5)
        self.proj = nn.Linear(text_dim, hidden)
        self.register_buffer("text", torch.zeros(n_items + 1, text_dim))
        real = torch.ones(n_items + 1, 1)
        real[0] = 0.0
        self.register_buffer("real", real, persistent=False)
        with torch.no_grad():
            self.ids.weight[0].zero_()

    @property
    def weight(self) -> torch.Tensor:
        return (self.ids.weight + self.proj(self.text)) * self.real

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


def attach_text(model: nn.Module, cfg: BackboneConfig, features: torch.Tensor | None = None) -> nn.Module:
    """Give a freshly built backbone the text item table (features: (n_items + 1, text_dim))."""
    model.items = TextItems(cfg.n_items, cfg.hidden, cfg.text_dim)
    if features is not None:
        with torch.no_grad():
            model.items.text.copy_(features)
    return model


def with_text_features(ds: Dataset, cfg: BackboneConfig) -> tuple[BackboneConfig, torch.Tensor | None]:
    """For a text backbone: the config naming its encoder and feature size, and the features."""
    if cfg.model not in TEXT_BACKBONES:
        return cfg, None
    from toolrec_local.recsys.sequence.text_features import DEFAULT_ENCODER, text_features

    encoder = cfg.text_encoder or DEFAULT_ENCODER
    feats = text_features(ds, encoder).clone()
    feats[1:] -= feats[1:].mean(0)
    return replace(cfg, text_encoder=encoder, text_dim=int(feats.shape[1])), feats
