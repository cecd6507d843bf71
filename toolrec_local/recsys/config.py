"""Model and training settings, with four presets.

`default` follows the ML-1M settings of SASRec (length 200, hidden 64, 2 layers, dropout 0.2);
`fast` is what the tests and a quick ML-100K run use (length 50, fewer epochs), and gives the
same figures on ML-100K, whose users are shorter anyway; `paper` is the ToolRec authors'
RecBole setting (their SASRec.yaml and SAS_ml1m.yaml); `recbole` is RecBole 1.2.1's own SASRec
on ML-100K, the setting scripts/bench_recbole.py compares with RecBole itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from toolrec_local.errors import ToolrecError

# The *-bert backbones add frozen text-encoder item features to the ID embeddings (sequence/text_items.py).
TEXT_BACKBONES = ("sasrec-bert", "bert4rec-bert")
BACKBONES = ("sasrec", "bert4rec") + TEXT_BACKBONES


def base_model(model: str) -> str:
    """The sequence model under a backbone name: sasrec or bert4rec (sasrec-bert -> sasrec)."""
    return model.removesuffix("-bert")
INITS = ("sasrec", "recbole")
NORMS = ("pre", "post")
POSITIONS = ("last", "first")
SAMPLES = ("window", "all")
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
    # BERT4Rec only: share of training windows that mask only their last item (the paper's extra
    # samples for the inference task; ML-100K validation NDCG@10 0.101 with 0.1, 0.099 without)
    mask_last: float = 0.1
    inner: int = 0  # feed-forward width; 0 = hidden (SASRec's own), RecBole uses 256 for hidden 64
    # Embedding start: "sasrec" (N(0, 1/hidden), input scaled by sqrt(hidden), positions N(0, 1))
    # or "recbole" (items and positions N(0, 0.02), unscaled). With RecBole's, the residual
    # stream carries less of each input item, and the model ranks the item it has just read
    # lower when the history is kept in the ranking.
    init: str = "sasrec"
    # Block layout: "pre" (LayerNorm before each sublayer, a final norm: pmixer/SASRec.pytorch) or
    # "post" (RecBole's: LayerNorm over items + positions, then after each residual sum)
    norm: str = "pre"
    # Position embeddings counted back from the last item ("last", SASRec's left padding) or
    # from the first item of the window ("first", RecBole's)
    positions: str = "last"
    text_encoder: str = ""  # *-bert backbones: the item text encoder (text_features.ENCODERS)
    text_dim: int = 0  # its feature size; 0 = ID embeddings only

    @property
    def base(self) -> str:
        """The sequence model: sasrec or bert4rec."""
        return base_model(self.model)


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
    # How values are embedded: "words" (fixed word vectors, text values), "numeric" (bucket +
    # scalar, numeric values) or "learned" (one vector per value); see attributes/attribute.py
    encoding: str = "learned"
    buckets: int = 10  # numeric: quantile buckets
    fusion_init: str = "identity"  # Dense over [a_u ⊕ H]: "random" (paper) or the identity on H


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
    # BPR: one set of negatives for the whole batch (cheap), or `negatives` per positive
    # (RecBole's one uniform negative per positive)
    shared_negatives: bool = True
    # Epochs without a better (smoothed) validation score before stopping; never less than a
    # tenth of `epochs` (see training/stopping.py).
    patience: int = 5
    eval_every: int = 1
    seed: int = 0
    # Training windows per epoch: "window" = one window of max_len + 1 items per user (at a
    # random place in longer histories); "all" = consecutive windows covering the whole training
    # sequence, so every interaction is a target once per epoch, as RecBole's one sample per
    # (prefix, next item) pair
    samples: str = "window"
    # Validation ranks items outside the history, as the tools are used; False ranks the whole
    # catalogue as RecBole does (and as data where users repeat items, e.g. the tests' rule walk,
    # needs). The best epoch is the one with the best `valid_metric` ("ndcg@10" or "mrr@10").
    exclude_history: bool = True
    valid_metric: str = "ndcg@10"
    device: str = "auto"  # auto = cuda when torch sees a GPU, else cpu


PRESETS: dict[str, dict] = {
    # SASRec's ML-1M setting (length 200, batch 128, lr 1e-3, 200 epochs; patience scales to 20,
    # training/stopping.py) with the full softmax, picked by validation on ML-100K: BPR (128 shared
    # negatives) reached validation NDCG@10 0.080 (test 0.057) at batch 128 and stopped below
    # popularity at batch 256, CE 0.099 (test 0.094, 2.2x popularity). CE costs about
    # twice BPR's epoch time at ML-1M size on a CPU and ~2 GB more memory; --loss bpr keeps eq. 4.
    "default": {"batch_size": 128, "loss": "ce", "tool_epochs": 50},
    # ML-100K-sized data: few users, so smaller batches give enough optimizer steps per epoch;
    # a small catalogue makes the full softmax (ce) affordable, and it trains SASRec better
    # than BPR (valid NDCG@10 0.111 vs 0.100 on ML-100K).
    "fast": {"max_len": 50, "batch_size": 64, "lr": 2e-3, "epochs": 50, "patience": 5, "loss": "ce",
             "tool_epochs": 10, "tool_patience": 3,
             # BERT4Rec learns from the ~20% masked positions only, a fifth of SASRec's targets per
             # epoch: it needs about four times the epochs (on ML-100K its validation NDCG@10
             # peaked at epoch 111-135 of 200).
             "bert4rec": {"epochs": 200}},
    # The authors' RecBole setting, in RecBole's SASRec (block layout, positions, embedding
    # start) and with RecBole's samples: every interaction a target once per epoch. RecBole's
    # batch of 2048 is 2048 (prefix, next item) pairs; one of our training windows holds up to
    # 50 such pairs, so 40 windows carry about as many (the one deviation our windows force).
    # RecBole stops after 20 epochs without a better validation MRR@10 over the whole catalogue.
    # On ML-100K validation NDCG@10 (history excluded / kept): 0.104 / 0.059; in our SASRec with
    # one window per user 0.099 / 0.057; ours with RecBole's samples and start 0.096 / 0.061.
    "paper": {"max_len": 50, "layers": 2, "heads": 4, "hidden": 64, "inner": 256, "dropout": 0.5,
              "norm": "post", "positions": "first", "init": "recbole", "samples": "all",
              "batch_size": 40, "lr": 1e-3, "loss": "bpr", "negatives": 1, "shared_negatives": False,
              "epochs": 300, "patience": 20, "valid_metric": "mrr@10", "exclude_history": False,
              "tool_epochs": 50},
    # RecBole 1.2.1's own SASRec on ML-100K (its SASRec.yaml with CE loss and length 50; batch
    # 1024 pairs, about 20 of our windows), the reference of scripts/bench_recbole.py, with
    # RecBole's samples (every interaction a target once per epoch) and embedding start; best
    # epoch by MRR@10 with the history kept, as RecBole. Picked by ML-100K validation NDCG@10
    # with the history kept: our block layout 0.0648, RecBole's (norm post, positions first)
    # 0.0626, and with RecBole's N(0, 0.02) start on every linear layer too 0.0608; one window
    # per user instead of all samples 0.0618 (pre-norm, that full start).
    "recbole": {"max_len": 50, "layers": 2, "heads": 2, "hidden": 64, "inner": 256, "dropout": 0.2,
                "init": "recbole", "samples": "all", "batch_size": 20, "lr": 1e-3, "loss": "ce",
                "epochs": 100, "patience": 10, "valid_metric": "mrr@10", "exclude_history": False, "tool_epochs": 50},
}
VALID_METRICS = ("ndcg@10", "mrr@10")
# `--preset auto`: below this many interactions the `fast` setting (length 50, up to 50 epochs)
# reaches the `default` one's test NDCG@10 on ML-100K in a few per cent of its time; ML-1M-sized
# data and larger get the `default` (ML-1M) setting.
AUTO_FAST_BELOW = 500_000


def resolve_preset(preset: str, n_interactions: int) -> tuple[str, str]:
    """(the preset to train with, why): `auto` chooses by the dataset's size; others are themselves."""
    if preset != "auto":
        check_choice(preset, tuple(PRESETS), "preset")
        return preset, ""
    chosen = "fast" if n_interactions < AUTO_FAST_BELOW else "default"
    side = "<" if chosen == "fast" else ">="
    return chosen, f"preset auto: {chosen} ({n_interactions:,} interactions {side} {AUTO_FAST_BELOW:,})"


def settings(preset: str, model: str, n_items: int, **overrides) -> tuple[BackboneConfig, TrainConfig, TrainConfig]:
    """Backbone config, backbone training and tool training settings: the preset, then any
    override that is not None."""
    check_choice(preset, tuple(PRESETS), "preset")
    check_choice(model, BACKBONES, "backbone")
    base = {k: v for k, v in PRESETS[preset].items() if k not in BACKBONES}
    # a *-bert backbone takes its sequence model's settings (bert4rec-bert: bert4rec's epochs)
    per_model = {**PRESETS[preset].get(base_model(model), {}), **PRESETS[preset].get(model, {})}
    values = {**base, **per_model, **{k: v for k, v in overrides.items() if v is not None}}
    tool_epochs = values.pop("tool_epochs", None)
    tool_patience = values.pop("tool_patience", None)
    unknown = set(values) - {f.name for f in fields(BackboneConfig)} - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    bnames = {f.name for f in fields(BackboneConfig)}
    bcfg = BackboneConfig(model=model, n_items=n_items, **{k: v for k, v in values.items() if k in bnames})
    tcfg = TrainConfig(**{k: v for k, v in values.items() if k not in bnames})
    check_choice(tcfg.loss, LOSSES, "loss")
    check_choice(tcfg.valid_metric, VALID_METRICS, "validation metric")
    check_choice(bcfg.init, INITS, "embedding init")
    check_choice(bcfg.norm, NORMS, "layer norm placement")
    check_choice(bcfg.positions, POSITIONS, "positions")
    check_choice(tcfg.samples, SAMPLES, "training samples")
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


__all__ = ["resolve_preset", "BackboneConfig", "ToolConfig", "TrainConfig", "PRESETS", "BACKBONES", "TEXT_BACKBONES", "LOSSES", "as_dict",
           "from_dict", "check_choice", "replace", "settings", "VALID_METRICS", "INITS"]
