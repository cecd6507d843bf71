"""Security defaults: no unpickling anywhere, no shell=True, servers on 127.0.0.1 by default."""

from __future__ import annotations

import ast
import re
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


def test_servers_bind_loopback_by_default():
    text = "\n".join(p.read_text(encoding="utf-8") for p in python_files())
    hosts = set(re.findall(r"host[^=\n]*=\s*[\"']([0-9.a-z]+)[\"']", text))
    assert hosts, "no default host found"
    assert hosts <= {"127.0.0.1", "localhost"}, f"non-loopback default hosts: {hosts - {'127.0.0.1', 'localhost'}}"
