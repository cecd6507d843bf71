"""Session fixtures for trained retrieval tools, shared by every test area.

`ml100k_tools`: the SASRec backbone with genre and release_year tools on ML-100K, trained once
with the fast preset into the session home (.toolrec-home/tests) and reused on later runs
while the checkpoints are valid for the prepared data (fingerprint and backbone digest match).
"""

from __future__ import annotations

import contextlib
import os

import pytest


def clear_caches() -> None:
    """Forget loaded datasets, tools and P5 models (they belong to one TOOLREC_HOME)."""
    from toolrec_local import data
    from toolrec_local.recsys.attributes import retrieval
    from toolrec_local.recsys.p5 import train as p5_train

    data._CACHE.clear()
    retrieval.clear_cache()
    p5_train.clear_cache()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster, and on a shared, busy machine much faster. Modules
    of tiny models make it autouse: `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def module_home(home):
    """TOOLREC_HOME pointed at `home` (caches cleared) until the block ends, then restored."""
    old = os.environ.get("TOOLREC_HOME")
    os.environ["TOOLREC_HOME"] = str(home)
    clear_caches()
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("TOOLREC_HOME", None)
        else:
            os.environ["TOOLREC_HOME"] = old
        clear_caches()


@pytest.fixture(scope="session")
def ml100k_tools(ml100k, session_home):
    """A loaded `RetrievalTool` (backbone "sasrec", attributes ["genre", "release_year"])."""
    import os

    import torch

    from toolrec_local.recsys.training.pipeline import ensure_trained

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: a second thread mostly waits on a shared machine
    # Session fixtures are built inside whichever test first asks for them, possibly while a
    # module fixture has pointed $TOOLREC_HOME elsewhere: train into the session home.
    old = os.environ.get("TOOLREC_HOME")
    os.environ["TOOLREC_HOME"] = str(session_home)
    try:
        return ensure_trained(ml100k, "sasrec", ["genre", "release_year"], preset="fast")
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("TOOLREC_HOME", None)
        else:
            os.environ["TOOLREC_HOME"] = old
