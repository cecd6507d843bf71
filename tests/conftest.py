"""Shared fixtures. Each area adds its own fixtures in tests/fixtures_<area>.py and lists the
module in `pytest_plugins` below."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest_plugins: list[str] = ["fixtures_vllm", "fixtures_recsys", "fixtures_install"]  # tests/ is on sys.path (rootdir conftest, no __init__)

REPO = Path(__file__).resolve().parents[1]
# A persistent home for the expensive session artefacts (ML-100K, trained tools, tiny model),
# so repeated local runs reuse them; CI starts from a clean clone and builds them once.
TEST_HOME = Path(os.environ.get("TOOLREC_TEST_HOME", REPO / ".toolrec-home" / "tests"))


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    """An empty TOOLREC_HOME for one test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("TOOLREC_HOME", str(home))
    from toolrec_local import data

    data._CACHE.clear()
    return home


# Fixtures that train a model or download one (a minute or more on a fresh checkout): their tests are `slow`.
SLOW_FIXTURES = {"ml100k_tools", "smollm2_dir", "tiny_qwen2_dir", "minilm_dir", "gpu_install_report"}


def pytest_configure(config):
    config.addinivalue_line("markers", "stops_server: stops the server it uses (ordered after the server's other users)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(config, items):
    """Mark by what a test uses, so `-m "not vllm and not slow"` (make test-fast) needs no list
    of files: a server fixture, or a server started in its body, is `vllm` and `slow`; a
    fixture of SLOW_FIXTURES is `slow`. Then order the server tests so that each server of the
    session's cache starts once (fixtures_vllm.server_order)."""
    from fixtures_vllm import server_order, uses_a_server

    for item in items:
        if uses_a_server(item):
            item.add_marker(pytest.mark.vllm)
        if item.get_closest_marker("vllm") or SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    server_order(items)


SESSION_FIXTURES = {"session_home", "ml100k", "ml100k_tools", "smollm2_dir", "tiny_model_dir", "tiny_qwen2_dir", "vllm_servers", "vllm_server"}


@pytest.fixture(autouse=True)
def _session_home_for_session_fixtures(request, monkeypatch):
    """Paths are read from $TOOLREC_HOME when used, and module fixtures of other areas set it
    to homes of their own: a test that uses the session artefacts gets the session home."""
    if SESSION_FIXTURES & set(request.fixturenames) and "tmp_home" not in request.fixturenames:
        monkeypatch.setenv("TOOLREC_HOME", str(TEST_HOME))


@pytest.fixture(scope="session")
def session_home():
    """The shared TOOLREC_HOME for session artefacts (ML-100K, checkpoints, tiny model)."""
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("TOOLREC_HOME")
    os.environ["TOOLREC_HOME"] = str(TEST_HOME)
    yield TEST_HOME
    if old is None:
        os.environ.pop("TOOLREC_HOME", None)
    else:
        os.environ["TOOLREC_HOME"] = old


@pytest.fixture(scope="session")
def ml100k(session_home):
    """ML-100K prepared from the recbole wheel (skipped, visibly, when pip cannot reach it)."""
    from toolrec_local.data import load_dataset, prepare, prepared
    from toolrec_local.errors import ToolrecError

    old = os.environ.get("TOOLREC_HOME")
    os.environ["TOOLREC_HOME"] = str(session_home)
    try:
        if not prepared("ml-100k"):
            try:
                prepare("ml-100k")
            except ToolrecError as exc:
                pytest.skip(f"ML-100K not obtainable here: {exc.message}")
        return load_dataset("ml-100k")
    finally:
        if old is None:
            os.environ.pop("TOOLREC_HOME", None)
        else:
            os.environ["TOOLREC_HOME"] = old


def write_atomic(folder: Path, name: str, inter: list[tuple], items: list[tuple] | None = None,
                 users: list[tuple] | None = None,
                 inter_header: str = "user_id:token\titem_id:token\trating:float\ttimestamp:float",
                 item_header: str = "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq",
                 user_header: str = "user_id:token\tage:token\tgender:token\toccupation:token") -> Path:
    """Write a small RecBole atomic dataset; rows are tuples of cells."""
    folder.mkdir(parents=True, exist_ok=True)

    def dump(path, header, rows):
        path.write_text(header + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows), encoding="utf-8")

    dump(folder / f"{name}.inter", inter_header, inter)
    if items is not None:
        dump(folder / f"{name}.item", item_header, items)
    if users is not None:
        dump(folder / f"{name}.user", user_header, users)
    return folder


def synthetic_rule_dataset(folder: Path, name: str = "rule", n_users: int = 120, n_items: int = 40,
                           length: int = 12, seed: int = 0, step=lambda item, n: (item * 3 + 1) % n) -> Path:
    """Each user walks the catalogue with a fixed rule: next item = step(item, n_items), by
    default (item * 3 + 1) % n_items. A sequence model that learns the rule predicts the
    held-out item almost always. Genre = item % 4 and year = 1990 + item % 5, so attribute
    tools have something to use."""
    rng = np.random.default_rng(seed)
    inter = []
    for u in range(n_users):
        item = int(rng.integers(n_items))
        for t in range(length):
            inter.append((f"u{u}", f"i{item}", 4, 1_000_000 + t))
            item = step(item, n_items)
    genres = ["Action", "Comedy", "Drama", "Horror"]
    items = [(f"i{i}", f"Movie {i}", 1990 + i % 5, genres[i % 4]) for i in range(n_items)]
    users = [(f"u{u}", 20 + u % 40, "MF"[u % 2], "student") for u in range(n_users)]
    return write_atomic(folder, name, inter, items, users)
