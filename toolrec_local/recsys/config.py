"""Model and training settings, with two presets.

`default` follows the ML-1M settings of SASRec (length 200, hidden 64, 2 layers, dropout 0.2);
`fast` is what the tests and a quick ML-100K run use (length 50, fewer epochs), and gives the
same figures on ML-100K, whose users are shorter anyway.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from toolrec_local.errors import ToolrecError

# The *-bert backbones add frozen text-encoder item features to the ID embeddings (text_items.py).
TEXT_BACKBONES = ("sasrec-bert", "bert4rec-bert")
BACKBONES = ("sasrec", "bert4rec") + TEXT_BACKBONES
LOSSES = ("bpr", "ce")


@dataclass(frozen=True)
class BackboneConfig:
    model: str
    n_items: int
    max_len: int = 200
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    mask_prob: float = 0.2  # BERT4Rec only: share of positions masked in training
    text_encoder: str = ""  # *-bert backbones: the item text encoder (text_features.ENCODERS)
    text_dim: int = 0  # its feature size; 0 = ID embeddings only

    @property
    def base(self) -> str:
        """The sequence model: sasrec or bert4rec."""
        return self.model.removesuffix("-bert")


@dataclass(frozen=True)
class ToolConfig:
    """f_attr: a small Transformer over the attribute sequence, then Dense([a_u ⊕ H])."""

    attribute: str
    n_values: int
    hidden: int = 64
    layers: int = 1
    heads: int = 2
    dropout: float = 0.2
    word_dim: int = 0  # > 0 when value embeddings come from fixed word vectors


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "bpr"
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    # BPR: sampled negatives per positive, losses averaged. 128 brings BPR within ~10% of full
    # cross-entropy on ML-100K at a thirtieth of its cost on an ML-1M-sized catalogue.
    negatives: int = 128
    patience: int = 5  # epochs without a better validation NDCG@10 before stopping
    eval_every: int = 1
    seed: int = 0
    # Validation ranks items outside the history, as the tools are used. Only data where users
    # repeat items (e.g. the synthetic rule walk in the tests) needs False.
    exclude_history: bool = True


PRESETS: dict[str, dict] = {
    "default": {"tool_epochs": 50},
    # ML-100K-sized data: few users, so smaller batches give enough optimizer steps per epoch;
    # a small catalogue makes the full softmax (ce) affordable, and it trains SASRec better
    # than BPR (valid NDCG@10 0.111 vs 0.100 on ML-100K). The default preset keeps BPR (eq. 4):
    # at ML-1M size the full softmax costs about twice the epoch time and ~2 GB more memory.
    "fast": {"max_len": 50, "batch_size": 64, "lr": 2e-3, "epochs": 50, "patience": 5, "loss": "ce",
             "tool_epochs": 10, "tool_patience": 3},
}


def settings(preset: str, model: str, n_items: int, **overrides) -> tuple[BackboneConfig, TrainConfig, TrainConfig]:
    """Backbone config, backbone training and tool training settings: the preset, then any
    override that is not None."""
    check_choice(preset, tuple(PRESETS), "preset")
    check_choice(model, BACKBONES, "backbone")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    tool_epochs = values.pop("tool_epochs", None)
    tool_patience = values.pop("tool_patience", None)
    unknown = set(values) - {f.name for f in fields(BackboneConfig)} - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    bnames = {f.name for f in fields(BackboneConfig)}
    bcfg = BackboneConfig(model=model, n_items=n_items, **{k: v for k, v in values.items() if k in bnames})
    tcfg = TrainConfig(**{k: v for k, v in values.items() if k not in bnames})
    if tcfg.loss not in LOSSES:
        check_choice(tcfg.loss, LOSSES, "loss")
    tool = replace(tcfg, epochs=tool_epochs or tcfg.epochs, patience=tool_patience or tcfg.patience)
    if "epochs" in overrides and overrides["epochs"] is not None:
        tool = replace(tool, epochs=overrides["epochs"])
    return bcfg, tcfg, tool


def as_dict(cfg) -> dict:
    return asdict(cfg)


def from_dict(cls, data: dict, where: str):
    """Rebuild a config from its JSON form; unknown or missing keys mean another version wrote it."""
    names = {f.name for f in fields(cls)}
    if not isinstance(data, dict) or set(data) - names:
        raise ToolrecError(f"{where}: config has unknown fields {sorted(set(data) - names) if isinstance(data, dict) else data!r}",
                           "retrain it with this version of toolrec-local")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ToolrecError(f"{where}: config is incomplete ({exc})", "retrain it with this version of toolrec-local") from None


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ToolrecError(f"unknown {what} {value!r}", f"use one of: {', '.join(choices)}")
    return value


__all__ = ["BackboneConfig", "ToolConfig", "TrainConfig", "PRESETS", "BACKBONES", "TEXT_BACKBONES", "LOSSES", "as_dict", "from_dict",
           "check_choice", "replace", "settings"]
