"""P5: a small T5 trained from scratch generates the next item's id; eval ranks by beam search
constrained to the valid ids. One tiny model is trained once on the synthetic rule walk
(next item = (3 * item + 1) mod 40) and shared by the tests of this module."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from conftest import synthetic_rule_dataset
from fixtures_recsys import module_home

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models
from toolrec_local.errors import ToolrecError

TINY = dict(levels=2, max_history=4, d_model=32, d_ff=64, layers=1, heads=2, dropout=0.0)
# The rule walk revisits items, so here the next item is usually in the history: keep it.
TINY_TRAIN = dict(epochs=20, batch_size=32, lr=3e-3, samples_per_user=8, patience=20, exclude_history=False)




@pytest.fixture(scope="module")
def p5_home(tmp_path_factory, one_thread):
    from toolrec_local.data import prepare
    from toolrec_local.recsys.p5.model import P5Config
    from toolrec_local.recsys.p5.train import P5Train, train_p5

    with module_home(tmp_path_factory.mktemp("p5-home")) as home:
        ds = prepare("rule", source=synthetic_rule_dataset(home / "raw", name="rule"), attributes=["genre"])
        rec, meta = train_p5(ds, P5Config(n_items=ds.n_items, **TINY), P5Train(**TINY_TRAIN))
        yield home, ds, rec, meta


@pytest.fixture
def p5(p5_home, monkeypatch):
    monkeypatch.setenv("TOOLREC_HOME", str(p5_home[0]))
    return p5_home


def test_p5_generates_the_rules_next_item(p5):
    """The first generated id is the rule's successor of the last history item for most users."""
    _, ds, rec, meta = p5
    users = ds.eval_users
    lists = rec.lists(users, "test", k=10, exclude_history=False)
    nxt = [int(ds.item(f"i{(3 * int(ds.item_ids[ds.split(int(u), 'test')[0][-1]][1:]) + 1) % 40}")) for u in users]
    top1 = np.mean([lst[0] == n for lst, n in zip(lists, nxt)])
    assert top1 > 0.8, f"top-1 {top1:.2f} (chance 1/40)"
    assert meta["metrics"]["valid"]["recall@10"] > 0.9


def _check_lists(ds, users, lists, k, exclude=True):
    for u, lst in zip(users, lists):
        assert len(lst) == k and len(set(lst)) == k, lst
        assert all(1 <= i <= ds.n_items for i in lst), lst
        if exclude:
            assert not set(lst) & set(int(i) for i in ds.split(int(u), "test")[0]), lst


def test_beam_search_gives_valid_distinct_ids_outside_the_history(p5):
    """Whatever the weights (trained, or random), every id is a real item, distinct, and none
    from the history."""
    from toolrec_local.recsys.p5.model import P5
    from toolrec_local.recsys.p5.train import P5Recommender

    _, ds, rec, _ = p5
    users = ds.eval_users
    _check_lists(ds, users, rec.lists(users, "test", k=10), 10)
    torch.manual_seed(1)
    raw = P5(rec.model.cfg, len(rec.prompt.tokens))
    raw.item_numbers.copy_(rec.model.item_numbers)
    untrained = P5Recommender(ds, raw.eval(), rec.prompt, {}, beams=12)
    _check_lists(ds, users[:30], untrained.lists(users[:30], "test", k=12), 12)


def test_beam_search_when_the_catalogue_runs_out(p5):
    """A history that holds all but three items leaves exactly those three."""
    _, ds, rec, _ = p5
    keep = np.array([5, 17, 33])
    history = np.setdiff1d(np.arange(1, ds.n_items + 1), keep)
    inputs = rec.inputs([0], [history])
    lists = rec.model.beam_search(inputs, rec.index.available([history]), rec.prompt.level_ids,
                                  rec.index.item_of, k=10, beams=20)
    assert sorted(lists[0]) == keep.tolist()


def test_item_ids_sequential_and_random(p5):
    from toolrec_local.recsys.p5.model import ItemIndex, P5Config, index_numbers

    _, ds, _, _ = p5
    seq = index_numbers(ds, "sequential")
    rnd = index_numbers(ds, "random", seed=3)
    for numbers in (seq, rnd):
        assert numbers[0] == -1 and sorted(numbers[1:]) == list(range(ds.n_items))
    first = list(dict.fromkeys(int(i) for u in range(ds.n_users) for i in ds.train_sequence(u)))
    assert [int(seq[i]) for i in first] == list(range(len(first)))  # numbered in order of first consumption
    cfg = P5Config(n_items=ds.n_items, levels=2)
    assert cfg.base == 7 and P5Config(n_items=1682, levels=2).base == 42 and P5Config(n_items=1000, levels=3).base == 10
    index = ItemIndex(seq, 2, cfg.base)
    digits = index.digits(np.arange(1, ds.n_items + 1))
    assert len({tuple(d) for d in digits}) == ds.n_items  # one id per item
    assert np.array_equal(index.item_of[digits[:, 0] * cfg.base + digits[:, 1]], np.arange(1, ds.n_items + 1))


def test_prompt_is_openp5s_template(p5):
    _, ds, rec, meta = p5
    words = [rec.prompt.tokens[t] for t in rec.inputs([3], [ds.split(3, "test")[0][-2:]])[0].tolist()]
    assert words[:2] == ["Considering", f"user_{ds.user_ids[3]}"]
    assert words[2:6] == ["has", "interacted", "with", "items"] and words[-1] == "</s>"
    assert [w[1] for w in words[6:10]] == ["a", "b", "a", "b"]  # two items, two levels each
    assert meta["template"].startswith("Considering user_{user} has interacted with items {history}")


def test_checkpoint_round_trip_and_refusals(p5, tmp_path, monkeypatch):
    from toolrec_local import data
    from toolrec_local.data import prepare
    from toolrec_local.recsys.p5.train import P5Recommender, clear_cache, p5_dir

    home, ds, rec, _ = p5
    folder = p5_dir(ds.name)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    users = ds.eval_users[:25]
    clear_cache()
    loaded = P5Recommender.load(ds)
    assert loaded is not rec and loaded.lists(users, "test") == rec.lists(users, "test")
    assert P5Recommender.load(ds) is loaded  # once per process
    # another dataset under the same name: refused, with the command that fixes it
    other_home = tmp_path / "other"
    other_home.mkdir()
    monkeypatch.setenv("TOOLREC_HOME", str(other_home))
    data._CACHE.clear()
    other = prepare("rule", source=synthetic_rule_dataset(tmp_path / "raw2", name="rule", seed=5), attributes=["genre"])
    with pytest.raises(ToolrecError) as exc:
        P5Recommender.load(other)
    assert "no checkpoint" in exc.value.message and "toolrec-local train p5 --dataset rule" in exc.value.hint
    target = p5_dir(other.name)
    target.parent.mkdir(parents=True)
    import shutil

    shutil.copytree(folder, target)
    with pytest.raises(ToolrecError) as exc:
        P5Recommender.load(other)
    assert "fingerprint" in exc.value.message and "train p5" in exc.value.hint


def test_eval_runs_p5_as_a_list_method(p5, tmp_path):
    """`eval --method pop,p5`: P5's rank is the target's position in its list, or none."""
    from toolrec_local.eval.results import read_jsonl
    from toolrec_local.eval.session import EvalOptions, evaluate

    _, ds, rec, _ = p5
    summary, folder = evaluate(EvalOptions.of(dataset="rule", methods="pop,p5", all_users=True, out=tmp_path / "run"))
    recs = [r for r in read_jsonl(folder / "results.jsonl").records if r["method"] == "p5"]
    assert len(recs) == len(ds.eval_users)
    lists = dict(zip((int(u) for u in ds.eval_users), rec.lists(ds.eval_users, "test", k=10)))
    for r in recs:
        u = ds.user(r["user"])
        assert r["final"] == [ds.item_ids[i] for i in lists[u]]
        assert r["rank"] == (r["final"].index(r["target"]) if r["target"] in r["final"] else None)
    hits = np.mean([r["rank"] is not None for r in recs])
    assert summary["methods"]["p5"]["recall@10"]["mean"] == pytest.approx(hits)
    assert summary["methods"]["p5"]["complete"]
    from toolrec_local.eval.report import write_report

    # `--history keep` reaches the beam search: the rule's successor (in the history) comes back
    from toolrec_local.eval.catalog import build_score_method
    from toolrec_local.eval.methods import ListMethod, ToolBox

    method = build_score_method("p5", ds, ToolBox(ds))
    users = ds.eval_users[:40]
    kept = method.lists(users, "test", 10, exclude_history=False)
    assert isinstance(method, ListMethod) and kept == rec.lists(users, "test", k=10, exclude_history=False)
    assert np.mean([bool(set(lst) & set(ds.split(int(u), "test")[0].tolist())) for u, lst in zip(users, kept)]) > 0.8
    md, _, _ = write_report([folder], tmp_path / "report")
    rows = [line for line in md.read_text().splitlines() if line.startswith("| p5 ")]
    assert rows and f"{hits:.3f}" in rows[0], md.read_text()


def test_cli_train_p5_and_missing_checkpoint(tmp_home, tmp_path, monkeypatch, capsys):
    from toolrec_local import cli
    from toolrec_local.data import prepare

    prepare("rule", source=synthetic_rule_dataset(tmp_path / "raw", name="rule", n_users=30), attributes=[])

    def main(*args):
        monkeypatch.setattr(sys, "argv", ["toolrec-local", *args])
        monkeypatch.setenv("COLUMNS", "300")
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = main("eval", "--dataset", "rule", "--method", "p5", "--all-users", "--out", str(tmp_path / "r"))
    assert code == 2 and err.startswith("error: no checkpoint") and "fix: run: toolrec-local train p5 --dataset rule" in err
    code, out, err = main("train", "p5", "--dataset", "rule", "--epochs", "1", "--d-model", "16", "--d-ff", "16",
                          "--layers", "1", "--heads", "2", "--json")
    assert code == 0, err
    record = json.loads(out)["p5"]
    assert record["metrics"]["epochs_run"] == 1 and record["metrics"]["peak_rss_mb"] > 0
    assert record["config"]["index"] == "sequential" and record["config"]["d_model"] == 16
    assert record["metrics"]["device"] == "cpu" and record["train"]["device"] == "auto"  # auto: no GPU here
    if not torch.cuda.is_available():
        code, out, err = main("train", "p5", "--dataset", "rule", "--epochs", "1", "--device", "cuda")
        assert code == 2 and "torch sees no CUDA GPU" in err and "--device cpu" in err
    code, out, err = main("train", "p5", "--dataset", "rule", "--index", "alphabetical", "--epochs", "1")
    assert code == 2 and "unknown P5 item indexing 'alphabetical'" in err
