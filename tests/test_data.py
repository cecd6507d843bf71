"""Dataset loading, splitting, persistence and bad-input handling."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import synthetic_rule_dataset, write_atomic
from toolrec_local.data import load_dataset, prepare
from toolrec_local.data.titles import display_title, split_year
from toolrec_local.errors import DataError, ToolrecError


def cli(*args, home):
    env = {**os.environ, "TOOLREC_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "toolrec_local", *args], capture_output=True, text=True, env=env)


def test_titles():
    assert display_title("Matrix, The (1999)") == "The Matrix"
    assert display_title("Usual Suspects, The") == "The Usual Suspects"
    assert display_title("Toy Story (1995)") == "Toy Story"
    assert display_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == (
        "The City of Lost Children (Cité des enfants perdus, La)"
    )
    assert display_title("Avventura, L' (1960)") == "L'Avventura"
    assert split_year("Heat (1995)") == ("Heat", "1995")


def test_atomic_roundtrip_and_chronological_ties(tmp_home, tmp_path):
    # u1 has two interactions at the same time: file order must break the tie.
    inter = [("u1", "b", 5, 20), ("u1", "a", 3, 10), ("u1", "c", 4, 20), ("u1", "d", 1, 30),
             ("u2", "a", 2, 5), ("u2", "b", 2, 6), ("u2", "c", 2, 7)]
    items = [("a", "Alpha, The (1990)", 1990, "Drama"), ("b", "Beta", 1991, "Comedy Drama"),
             ("c", "Gamma", 1992, "Action"), ("d", "Delta", 1993, "")]
    src = write_atomic(tmp_path / "src", "toy", inter, items, users=[("u1", 30, "F", "writer"), ("u2", 40, "M", "artist")])
    ds = prepare("toy", source=src, attributes=["genre", "release_year"])
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 4, 7)
    u1 = ds.user("u1")
    assert [ds.item_ids[i] for i in ds.sequence(u1)] == ["a", "b", "c", "d"]
    history, target = ds.split(u1, "test")
    assert ds.item_ids[target] == "d" and [ds.item_ids[i] for i in history] == ["a", "b", "c"]
    history, target = ds.split(u1, "valid")
    assert ds.item_ids[target] == "c" and len(history) == 2
    assert ds.attributes["genre"].of(ds.item("b")) == ["Comedy", "Drama"]
    assert ds.attributes["genre"].of(ds.item("d")) == []
    assert ds.attributes["release_year"].of(ds.item("c")) == ["1992"]
    assert ds.item_names[ds.item("a")] == "The Alpha"
    assert ds.profile["occupation"][u1] == "writer"
    again = load_dataset("toy")
    assert again.fingerprint == ds.fingerprint
    assert np.array_equal(np.asarray(again.seq_items), ds.seq_items)
    # Train popularity excludes each user's last two interactions.
    pop = ds.train_popularity
    assert pop[ds.item("a")] == 2 and pop[ds.item("c")] == 0 and pop[ds.item("d")] == 0


def test_k_core(tmp_home, tmp_path):
    inter = [(f"u{u}", f"i{i}", 1, u * 10 + i) for u in range(3) for i in range(3)] + [("u9", "i0", 1, 0), ("u0", "i9", 1, 99)]
    src = write_atomic(tmp_path / "src", "kc", inter)
    ds = prepare("kc", source=src, min_interactions=3)
    assert ds.n_users == 3 and ds.n_items == 3 and ds.n_interactions == 9
    assert ds.meta["raw"] == {"users": 4, "items": 4, "interactions": 11}


def test_sampling_is_seeded(tmp_home, tmp_path):
    ds = prepare("rule", source=synthetic_rule_dataset(tmp_path / "src"))
    a, b, c = ds.sample_users(20, 0), ds.sample_users(20, 0), ds.sample_users(20, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a)) == 20 and np.all(np.isin(a, ds.eval_users))


def test_ml1m_dat(tmp_home, tmp_path):
    src = tmp_path / "ml-1m"
    src.mkdir()
    ratings = [f"{u}::{m}::{(u + m) % 5 + 1}::{978300000 + u * 100 + m}" for u in (1, 2, 3) for m in (1, 2, 3, 4)]
    (src / "ratings.dat").write_text("\n".join(ratings) + "\n", encoding="latin-1")
    (src / "movies.dat").write_text(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Matrix, The (1999)::Action|Sci-Fi\n"
        "3::Heat (1995)::Action|Crime\n4::Cité des enfants perdus, La (1995)::Sci-Fi\n", encoding="latin-1")
    (src / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n", encoding="latin-1")
    ds = prepare("ml-1m", source=src)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (3, 4, 12)
    m = ds.item("2")
    assert ds.item_names[m] == "The Matrix" and ds.attributes["genre"].of(m) == ["Action", "Sci-Fi"]
    assert ds.attributes["release_year"].of(m) == ["1999"]
    assert ds.item_names[ds.item("4")] == "La Cité des enfants perdus"
    assert ds.profile["age"][ds.user("1")] == "under 18" and ds.profile["occupation"][ds.user("2")] == "self-employed"


def test_amazon_style_bucketised_floats(tmp_home, tmp_path):
    inter = [(f"u{u}", f"b{i}", 5, u * 100 + i) for u in range(4) for i in range(12)]
    items = [(f"b{i}", f"Book {i}", f"{5 + i * 1.5:.2f}", f"{1000 * (i + 1)}") for i in range(12)]
    src = write_atomic(tmp_path / "src", "amazon-books", inter, items,
                       item_header="item_id:token\ttitle:token\tprice:float\tsales_rank:float")
    ds = prepare("amazon-books", source=src, min_interactions=0)
    assert set(ds.attributes) == {"price", "sales_rank"}
    assert ds.attributes["price"].kind == "bucket"
    labels = {tuple(ds.attributes["price"].of(i)) for i in range(1, ds.n_items + 1)}
    assert 5 <= len(labels) <= 10 and all(len(lab) == 1 and "-" in lab[0] for lab in labels)


@pytest.mark.parametrize(
    "inter_text, needle",
    [
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\n", "rule.inter:3"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\nu1\ti2\tnotanumber\n", "rule.inter:3"),
        ("user_id:token\titem_id:token\ttimestamp:when\nu1\ti1\t1\n", "unknown type 'when'"),
        ("user_id:token\titem_id:token\ttimestamp:float\n", "no rows"),
        ("", "empty"),
        ("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\n\nu1\ti2\t2\n", "rule.inter:3"),
    ],
)
def test_bad_atomic_files(tmp_home, tmp_path, inter_text, needle):
    src = tmp_path / "src"
    src.mkdir()
    (src / "rule.inter").write_text(inter_text, encoding="utf-8")
    with pytest.raises(DataError) as err:
        prepare("rule", source=src)
    assert needle in str(err.value)
    # nothing half-written under the home
    assert not (tmp_home / "datasets" / "rule").exists()
    assert not any(p.name.startswith(".tmp") for p in (tmp_home / "datasets").glob("*")) if (tmp_home / "datasets").exists() else True


def test_unknown_dataset_and_attribute(tmp_home, tmp_path):
    with pytest.raises(ToolrecError, match="unknown dataset"):
        prepare("no-such-set")
    src = synthetic_rule_dataset(tmp_path / "src")
    with pytest.raises(ToolrecError, match="lacks"):
        prepare("rule", source=src, attributes=["colour"])
    ds = prepare("rule", source=src, attributes=["genre"])
    with pytest.raises(ToolrecError, match="use one of: genre"):
        ds.attribute("colour")
    with pytest.raises(ToolrecError, match="not prepared"):
        load_dataset("never-prepared")


def test_cli_errors_are_one_message_exit_2(tmp_home, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "bad.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t1\tx\n")
    res = cli("data", "prepare", "bad", "--source", str(src), home=tmp_home)
    assert res.returncode == 2
    assert "bad.inter:2" in res.stderr and "Traceback" not in res.stderr + res.stdout
    res = cli("data", "info", "nothing-here", "--json", home=tmp_home)
    assert res.returncode == 2 and "not prepared" in res.stderr and "Traceback" not in res.stderr


def test_cli_prepare_and_info_json(tmp_home, tmp_path):
    import json

    src = synthetic_rule_dataset(tmp_path / "src", n_users=10, n_items=8)
    res = cli("data", "prepare", "rule", "--source", str(src), home=tmp_home)
    assert res.returncode == 0, res.stderr
    res = cli("data", "info", "rule", "--json", home=tmp_home)
    info = json.loads(res.stdout)
    assert {"dataset", "users", "items", "interactions", "attributes", "density"} <= set(info)
    assert info["users"] == 10 and info["items"] == 8 and info["interactions"] == 120
    assert info["density"] == pytest.approx(120 / 80)


def test_every_command_has_help():
    from typer.main import get_command

    from toolrec_local.cli import app

    root = get_command(app)

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, path + [name])

    # Every command's --help through the real entry point (cli.main, as `python -m toolrec_local`
    # runs it), all in one fresh process: a process each spent a minute importing the package.
    paths = [path for path, _ in walk(root, [])]
    script = ("import sys\nfrom toolrec_local.cli import main\nfor path in sys.argv[1:]:\n"
              "    sys.argv = ['toolrec-local', *path.split(), '--help']\n    print('=== ' + path, flush=True)\n"
              "    try:\n        main()\n    except SystemExit as exc:\n        print(f'=== exit {exc.code}', flush=True)\n")
    res = subprocess.run([sys.executable, "-c", script, *(" ".join(path) for path in paths)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    sections = res.stdout.split("=== ")[1:]
    assert len(sections) == 2 * len(paths), res.stdout[-2000:]
    for path, text, end in zip(paths, sections[::2], sections[1::2]):
        assert text.startswith(" ".join(path)) and "Usage" in text, (path, text)
        assert end.strip() == "exit 0", (path, end, res.stderr)


def test_ml100k_counts(ml100k):
    info = ml100k.info()
    assert (info["users"], info["items"], info["interactions"]) == (943, 1682, 100000)
    assert info["attributes"] == ["genre", "release_year"]
    assert ml100k.item_names[ml100k.item("12")] == "The Usual Suspects"


def test_usage_errors_exit_2_without_traceback(tmp_home):
    res = cli("data", "prepare", home=tmp_home)
    assert res.returncode == 2 and "Missing argument" in res.stderr and "Traceback" not in res.stderr
    res = cli("data", "prepare", "x", "--min-interactions", "-3", home=tmp_home)
    assert res.returncode == 2 and "Traceback" not in res.stderr
