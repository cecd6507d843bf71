"""Security defaults: no unpickling anywhere, no shell=True, servers on 127.0.0.1 by default."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "toolrec_local"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def python_files():
    return sorted(SRC.rglob("*.py")) + sorted(SCRIPTS.glob("*.py"))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def dotted(func) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(p.parents[1])))
def test_no_pickle_no_shell(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n in ("pickle", "cPickle", "dill", "joblib") for n in names), f"{path}: imports a pickle module"
    for call in calls(tree):
        name = dotted(call.func)
        kw = {k.arg: k.value for k in call.keywords}
        if name.endswith("torch.load") or name == "load" and "weights_only" in kw:
            wo = kw.get("weights_only")
            assert isinstance(wo, ast.Constant) and wo.value is True, f"{path}:{call.lineno}: torch.load without weights_only=True"
        if name in ("np.load", "numpy.load"):
            ap = kw.get("allow_pickle")
            assert ap is None or (isinstance(ap, ast.Constant) and ap.value is False), f"{path}:{call.lineno}: np.load(allow_pickle=True)"
        if "shell" in kw:
            sv = kw["shell"]
            assert isinstance(sv, ast.Constant) and sv.value is False, f"{path}:{call.lineno}: shell=True"
        assert name not in ("os.system", "os.popen"), f"{path}:{call.lineno}: {name}"
        bare = call.func.id if isinstance(call.func, ast.Name) else ""
        assert bare not in ("eval", "exec"), f"{path}:{call.lineno}: {bare}()"


def test_servers_bind_loopback_by_default(vllm_server):
    """A server started with the defaults (the session's tiny vLLM server, started as `serve`
    starts it) listens on the loopback address only: every listening socket of its process
    group is bound to 127.0.0.1."""
    import os

    import psutil

    group = os.getpgid(vllm_server.pid)
    procs = [p for p in psutil.process_iter() if _in_group(p, group)]
    bound = {c.laddr.ip for p in procs for c in _listening(p)}
    assert vllm_server.port in {c.laddr.port for p in procs for c in _listening(p)}
    assert bound == {"127.0.0.1"}, bound


def _in_group(proc, group: int) -> bool:
    import os

    import psutil

    try:
        return os.getpgid(proc.pid) == group
    except (ProcessLookupError, psutil.Error):
        return False


def _listening(proc):
    import psutil

    try:
        return [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []


