"""A strict, bounded walk over a GGUF file's header before anything else reads it.

Why our own: gguf-py's ``GGUFReader`` trusts the counts and offsets it reads, so a truncated or
damaged file surfaces as "cannot reshape array", an IndexError or a huge allocation, and llama.cpp may
abort the process. This walk checks every count against the bytes that remain, so a bad file becomes
one ``ModelLoadError`` that says *truncated* (and where) or *corrupt* (and which field), in
milliseconds and without allocating more than the header. It uses gguf-py's own constants (value
types, block sizes) rather than restating them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from compressor.errors import ModelLoadError

MAX_TENSORS = 1 << 20
MAX_KV = 1 << 20
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 2  # arrays of arrays are legal; deeper nesting is not used by any writer
DEFAULT_ALIGNMENT = 32


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


class _Cursor:
    def __init__(self, f: BinaryIO, size: int, endian: str) -> None:
        self.f, self.size, self.endian = f, size, endian

    @property
    def pos(self) -> int:
        return self.f.tell()

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated(f"{what} at byte {self.pos} needs {n} bytes, {self.size - self.pos} remain")
        return self.f.read(n)

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated(f"{what} at byte {self.pos} needs {n} bytes, {self.size - self.pos} remain")
        self.f.seek(n, 1)

    def unpack(self, fmt: str, what: str) -> int:
        raw = self.take(struct.calcsize(fmt), what)
        return struct.unpack(self.endian + fmt, raw)[0]

    def string(self, what: str, keep: bool = False) -> str:
        n = self.unpack("Q", f"{what} length")
        if n > self.size - self.pos:
            raise _Truncated(f"{what} at byte {self.pos} claims {n} bytes, {self.size - self.pos} remain")
        if not keep:
            self.skip(n, what)
            return ""
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"{what} is not UTF-8") from None


def _scalar_sizes() -> dict[int, int]:
    from gguf import GGUFValueType as T

    return {
        T.UINT8: 1, T.INT8: 1, T.BOOL: 1, T.UINT16: 2, T.INT16: 2, T.UINT32: 4, T.INT32: 4,
        T.FLOAT32: 4, T.UINT64: 8, T.INT64: 8, T.FLOAT64: 8,
    }  # fmt: skip


def _skip_value(cur: _Cursor, vtype: int, key: str, sizes: dict[int, int], depth: int = 0) -> int | None:
    """Skip one value; returns it when it is an integer scalar (for ``general.alignment``)."""
    from gguf import GGUFValueType as T

    if vtype in sizes:
        raw = cur.take(sizes[vtype], f"value of {key}")
        if vtype in (T.UINT32, T.UINT64, T.INT32, T.UINT16, T.UINT8):
            fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[sizes[vtype]]
            return int(struct.unpack(cur.endian + fmt, raw)[0])
        return None
    if vtype == T.STRING:
        cur.string(f"value of {key}")
        return None
    if vtype != T.ARRAY:
        raise _Corrupt(f"{key}: unknown value type {vtype}")
    if depth >= MAX_NESTING:
        raise _Corrupt(f"{key}: arrays nested deeper than {MAX_NESTING}")
    etype = cur.unpack("I", f"element type of {key}")
    count = cur.unpack("Q", f"element count of {key}")
    if etype in sizes:
        cur.skip(count * sizes[etype], f"{count} elements of {key}")
        return None
    if count * 8 > cur.size - cur.pos:  # every string or array element needs at least 8 bytes
        raise _Truncated(f"{key} claims {count} elements, more than the {cur.size - cur.pos} bytes left")
    for _ in range(count):
        _skip_value(cur, etype, key, sizes, depth + 1)
    return None


def _tensor_bytes(ggml_type: int, dims: list[int], name: str) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise _Corrupt(f"tensor {name}: unknown ggml type {ggml_type}") from None
    n = 1
    for d in dims:
        n *= d
    if dims and dims[0] % block:
        raise _Corrupt(f"tensor {name}: row length {dims[0]} is not a multiple of its block size {block}")
    return n // block * type_size


def _walk(cur: _Cursor) -> None:
    version = cur.unpack("I", "version")
    if version not in (2, 3):
        raise _Corrupt(f"unsupported GGUF version {version} (this reader knows 2 and 3)")
    n_tensors = cur.unpack("Q", "tensor count")
    n_kv = cur.unpack("Q", "metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KV:
        raise _Corrupt(f"implausible counts: {n_tensors} tensors, {n_kv} metadata entries")
    sizes = _scalar_sizes()
    alignment = DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = cur.string("metadata key", keep=True)
        vtype = cur.unpack("I", f"value type of {key}")
        value = _skip_value(cur, vtype, key, sizes)
        if key == "general.alignment" and value is not None:
            if value <= 0 or value & (value - 1):
                raise _Corrupt(f"general.alignment {value} is not a power of two")
            alignment = value
    tensors = []
    for _ in range(n_tensors):
        name = cur.string("tensor name", keep=True)
        n_dims = cur.unpack("I", f"dimension count of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Corrupt(f"tensor {name}: {n_dims} dimensions")
        dims = [cur.unpack("Q", f"dimension of {name}") for _ in range(n_dims)]
        ggml_type = cur.unpack("I", f"type of {name}")
        offset = cur.unpack("Q", f"offset of {name}")
        if offset % alignment:
            raise _Corrupt(f"tensor {name}: offset {offset} is not aligned to {alignment}")
        tensors.append((name, offset, _tensor_bytes(ggml_type, dims, name)))
    data_start = -(-cur.pos // alignment) * alignment
    for name, offset, n_bytes in tensors:
        end = data_start + offset + n_bytes
        if end > cur.size:
            raise _Truncated(f"tensor {name} ends at byte {end}, the file has {cur.size}")


def check_gguf_structure(path: Path) -> None:
    """Raise ModelLoadError if ``path`` is not a whole, well-formed GGUF file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as raw:
            f = raw  # buffered: the vocabulary is tens of thousands of small reads
            magic = f.read(4)
            if magic != b"GGUF":
                raise ModelLoadError(f"{path} is not a GGUF file (it does not start with the GGUF magic)")
            head = f.read(4)
            f.seek(4)
            endian = ">" if len(head) == 4 and struct.unpack("<I", head)[0] > 0xFFFF else "<"
            _walk(_Cursor(f, size, endian))
    except _Truncated as exc:
        raise ModelLoadError(f"{path} is truncated: {exc}; re-download or re-export it") from None
    except _Corrupt as exc:
        raise ModelLoadError(f"{path} is a corrupt GGUF file: {exc}") from None
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read: {exc.strerror or exc}") from None
