"""A minimal safetensors reader that copies each tensor straight into its destination.

Format: an 8-byte little-endian header length N, N bytes of JSON
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`, then the
data; offsets count from byte 8 + N. We parse the header ourselves and `readinto` a tensor's
bytes directly into the (preallocated, uninitialised) parameter viewed as uint8, so loading
holds one copy of the weights, plus one per-tensor temporary only when the dtype or device
differs. Tensors that are not asked for (a vision tower) are never read.

Every malformed input is a `UserError` naming the file and, where it applies, the tensor.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
from pathlib import Path

import torch

from rl2f.errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit
_CHUNK = 1 << 30  # one read() moves at most ~2 GiB on Linux; stay well below


@dataclasses.dataclass
class TensorInfo:
    """Where one tensor lives in a safetensors file."""

    file: Path
    name: str
    dtype: str  # safetensors dtype string ("BF16")
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    end: int


def read_header(file: str | Path) -> dict[str, TensorInfo]:
    """Parse and sanity-check the header of a safetensors file (reads no tensor data)."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{file}: corrupt safetensors header (file is {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, _MAX_HEADER):
                raise UserError(f"{file}: corrupt safetensors header (header length {n} "
                                f"but the file has {size} bytes)")
            raw = f.read(n)
    except OSError as e:
        raise UserError(f"{file}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{file}: corrupt safetensors header (not JSON: {e})") from None
    if not isinstance(header, dict):
        raise UserError(f"{file}: corrupt safetensors header (not a JSON object)")
    data_start = 8 + n
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(s) for s in shape)
            if not (isinstance(dtype, str) and isinstance(begin, int) and isinstance(end, int)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{file}: corrupt safetensors header (bad entry for tensor {name!r})") from None
        if not 0 <= begin <= end:
            raise UserError(f"{file}: corrupt safetensors header (tensor {name!r} has offsets {begin}..{end})")
        out[name] = TensorInfo(file, name, dtype, shape, data_start + begin, data_start + end)
    # As the official reader: tensors may not share bytes (two names, one byte range, would
    # load the same data into both).
    ordered = sorted(out.values(), key=lambda t: (t.begin, t.end))
    for a, b in zip(ordered, ordered[1:]):
        if b.begin < a.end:
            raise UserError(f"{file}: corrupt safetensors header (tensors {a.name!r} and {b.name!r} share "
                            f"bytes {b.begin - data_start}..{min(a.end, b.end) - data_start})")
    return out


def check(info: TensorInfo) -> torch.dtype:
    """Validate one tensor's dtype, byte length and extent in its file; return its torch dtype."""
    where = f"{info.file}: tensor {info.name!r}"
    if info.dtype not in DTYPES:
        raise UserError(f"{where} has unknown dtype {info.dtype!r} (known: {', '.join(DTYPES)})")
    dtype = DTYPES[info.dtype]
    numel = 1
    for s in info.shape:
        numel *= s
    nbytes = numel * dtype.itemsize
    if info.end - info.begin != nbytes:
        raise UserError(f"{where}: corrupt header, {info.end - info.begin} bytes for "
                        f"shape {list(info.shape)} {info.dtype} ({nbytes} bytes expected)")
    size = os.path.getsize(info.file)
    if info.end > size:
        raise UserError(f"{where} ends at byte {info.end} but the file has only {size} bytes "
                        f"(truncated file?)")
    return dtype


def read_into(f, info: TensorInfo, dest: torch.Tensor) -> None:
    """Fill `dest` (same shape; any float dtype; any device) with the tensor's data."""
    src_dtype = check(info)
    if tuple(dest.shape) != info.shape:
        raise UserError(f"{info.file}: tensor {info.name!r} has shape {list(info.shape)}, "
                        f"the model expects {list(dest.shape)}")
    direct = dest.dtype == src_dtype and dest.device.type == "cpu" and dest.is_contiguous()
    buf = dest if direct else torch.empty(info.shape, dtype=src_dtype)
    if buf.numel():
        view = memoryview(buf.view(-1).view(torch.uint8).numpy())
        f.seek(info.begin)
        pos = 0
        while pos < len(view):
            got = f.readinto(view[pos:pos + _CHUNK])
            if not got:
                raise UserError(f"{info.file}: tensor {info.name!r}: unexpected end of file (truncated file?)")
            pos += got
    if not direct:
        dest.copy_(buf)  # dtype conversion and/or host -> device, one tensor at a time


def tensor_is_float(info: TensorInfo) -> bool:
    return info.dtype in ("F64", "F32", "F16", "BF16")
