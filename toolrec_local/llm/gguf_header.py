"""The metadata at the head of a GGUF file, read without its tensor data.

A GGUF starts with its key-value metadata (architecture, shapes, the whole tokenizer, the chat
template) and its tensor directory; the tensor data follows. So the first chunk of a chunked
model is enough to learn its tokenizer and template (toolrec_local.llm.tiny_like), and
`metadata_only` writes that head as a GGUF of its own, with no tensors, that transformers'
GGUF loader reads like the full file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from toolrec_local.errors import ToolrecError

MAGIC = b"GGUF"
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_ALIGNMENT = 32  # GGUF's default, when general.alignment is absent


@dataclass
class GGUFHeader:
    version: int
    fields: dict = field(default_factory=dict)  # key -> value (arrays as lists)
    tensors: list[str] = field(default_factory=list)  # tensor names, in file order
    kv_bytes: bytes = b""  # the metadata section as stored, for metadata_only


class _Reader:
    def __init__(self, f: BinaryIO, what: str):
        self.f, self.what = f, what

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ToolrecError(f"{self.what} ends inside its GGUF header", "use the complete file or its first chunk")
        return data

    def scalar(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.scalar("Q")).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, n = self.scalar("I"), self.scalar("Q")
            return [self.value(inner) for _ in range(n)]
        if kind not in _SCALARS:
            raise ToolrecError(f"{self.what}: unknown GGUF value type {kind}", "the file is not a GGUF this reader knows")
        return self.scalar(_SCALARS[kind])


def read_header(f: BinaryIO, what: str = "the file") -> GGUFHeader:
    """Parse the metadata and the tensor directory from the start of a GGUF stream."""
    r = _Reader(f, what)
    if r.take(4) != MAGIC:
        raise ToolrecError(f"{what} is not a GGUF file (no GGUF magic)", "check the source named in the card")
    version, n_tensors, n_kv = r.scalar("I"), r.scalar("Q"), r.scalar("Q")
    if version < 2:
        raise ToolrecError(f"{what} is GGUF version {version}", "use a GGUF of version 2 or later")
    header = GGUFHeader(version)
    recorded = _Recorder(f)
    r.f = recorded
    for _ in range(n_kv):
        key = r.string()
        header.fields[key] = r.value(r.scalar("I"))
    header.kv_bytes = recorded.bytes()
    r.f = f
    for _ in range(n_tensors):
        header.tensors.append(r.string())
        r.take(8 * r.scalar("I") + 4 + 8)  # dimensions, type, offset
    return header


class _Recorder:
    """A stream that keeps what was read through it."""

    def __init__(self, f: BinaryIO):
        self.f, self.parts = f, []

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.parts.append(data)
        return data

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def metadata_only(header: GGUFHeader, dst: Path) -> Path:
    """Write `header`'s metadata as a GGUF with no tensors (byte for byte as stored)."""
    align = int(header.fields.get("general.alignment", _ALIGNMENT))
    body = MAGIC + struct.pack("<IQQ", header.version, 0, len(header.fields)) + header.kv_bytes
    body += b"\0" * (-len(body) % align)
    Path(dst).write_bytes(body)
    return Path(dst)
