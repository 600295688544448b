"""Files by name: ``jp.save`` / ``jp.load`` in the safetensors format PyTorch and Hugging Face use.

A file is the model's `state_dict` (``{name: array}``), so PyTorch reads what jparam writes and
jparam reads what PyTorch writes. Every dtype a JAX array can have round-trips exactly: dtypes
with a safetensors code are stored under it, the others as their bytes under a code of the same
width, with their real dtype in the header's ``jparam.dtypes`` entry. Writes are atomic (a
temporary file in the same directory, flushed, then renamed over the old one), and every byte
that changes what loads is checksummed (xxHash3, the ``jparam.xxh3_64`` and
``jparam.header_xxh3_64`` header entries), so a corrupted file raises `CheckpointError` instead
of loading garbage. The guide, with the exact dtype codes and checksums, is
``docs/howto/load-pytorch-checkpoint.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xxhash

from . import tempfiles
from .mapping import as_mapping
from .parameter import Variable, check_int_range, dtype_shape, to_array
from .state import incompatible_keys, load_state_dict, match_state, state_dict

__all__ = [
    "CheckpointError",
    "SaveInfo",
    "from_torch_state_dict",
    "load",
    "load_file",
    "save",
]

PathLike = str | os.PathLike
_SUM_KEY = "jparam.xxh3_64"  # {tensor name: checksum of its dtype, shape and bytes}, as JSON
_HEAD_KEY = "jparam.header_xxh3_64"  # checksum of the length prefix and the whole header
_DTYPE_KEY = "jparam.dtypes"  # {tensor name: real dtype} for dtypes stored under another code
_HEAD_RE = re.compile(rb'"jparam\.header_xxh3_64":"([0-9a-f]{16})"')
_MARKS = (b'"jparam.xxh3_64"', b'"jparam.header_xxh3_64"')  # either one means "verify"
_ZERO_SUM = b"0" * 16
PROGRESS_BYTES = 256 * 2**20  # show a progress bar from this size on (progress=None)
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_MAX_NDIM = 64  # NumPy's
_RESERVED_NAMES = frozenset({"__metadata__"})  # safetensors' header key for the metadata


def _jax_dtypes(*names: str) -> dict[str, np.dtype]:
    """The NumPy dtypes of these names that this JAX version has."""
    return {n: np.dtype(getattr(jnp, n)) for n in names if hasattr(jnp, n)}


# The safetensors codes and the dtypes they mean (as PyTorch and the safetensors library write).
_CODE_NAMES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C64": "complex64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
}
# Every dtype a JAX array can have (float6 types exist in jnp but XLA cannot hold them).
_JAX_DTYPES = _jax_dtypes(
    *_CODE_NAMES.values(),
    "complex128",
    "float8_e4m3",
    "float8_e3m4",
    "float8_e4m3b11fnuz",
    "float4_e2m1fn",
    "int4",
    "uint4",
    "int2",
    "uint2",
    "int1",
    "uint1",
)
_BY_CODE = {code: _JAX_DTYPES[n] for code, n in _CODE_NAMES.items() if n in _JAX_DTYPES}
_NATIVE = frozenset(_BY_CODE.values())


class CheckpointError(ValueError):
    """A file that cannot be read back as written: truncated, corrupted, or not safetensors."""


class SaveInfo(NamedTuple):
    """What `save` wrote: the path, its size in bytes, and how long it took in seconds."""

    path: Path
    bytes: int
    seconds: float


def _progress(total: int, enabled: bool | None, desc: str):
    if enabled is False or (enabled is None and total < PROGRESS_BYTES):
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def _check_savable(name: str, value: Any) -> None:
    """Refuses, before anything is written, a value no file could hold or give back."""
    if name in _RESERVED_NAMES:
        raise ValueError(
            f"cannot save an entry named {name!r}: safetensors reserves that name for the "
            "file's metadata, so the file would not load. Rename it (e.g. save "
            "{new_name: value, ...} built from the state_dict, and rename= it back on load)."
        )
    if hasattr(value, "dtype"):  # before to_array, which fails on dtypes JAX cannot hold
        _check_dtype(name, value.dtype)
    arr = to_array(value, what=name)
    if isinstance(arr, (jax.ShapeDtypeStruct, jax.core.Tracer)):
        what = "abstract" if isinstance(arr, jax.ShapeDtypeStruct) else "a tracer"
        raise ValueError(
            f"{name!r} is {what} ({dtype_shape(arr)}): it has a shape and dtype but no values "
            "(a jax.eval_shape result, or jp.save called inside jax.jit). Materialise the model "
            "first, e.g. load its weights with jp.load(path, like=model) or build it with real "
            "arrays, and save outside jit."
        )
    _check_dtype(name, arr.dtype)


def _check_dtype(name: str, dtype: Any) -> None:
    try:
        ok = _JAX_DTYPES.get(np.dtype(dtype).name) == np.dtype(dtype)
    except TypeError:  # not a NumPy dtype at all (a PRNG key's, say)
        ok = False
    if not ok:
        raise TypeError(
            f"{name!r} has dtype {dtype}, which a jparam file cannot hold (JAX arrays cannot "
            f"hold it, or it is not numeric); supported: {', '.join(_JAX_DTYPES)}"
        )


def _host_arrays(tree: Any, bar_enabled: bool | None) -> OrderedDict[str, np.ndarray]:
    values = state_dict(tree) if not _is_flat_mapping(tree) else tree
    for name, value in values.items():
        _check_savable(name, value)
    total = sum(int(np.prod(v.shape)) * jnp.dtype(v.dtype).itemsize for v in values.values())
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    with _progress(total, bar_enabled, "gathering") as bar:
        for name, value in values.items():
            arr = np.asarray(jax.device_get(to_array(value, what=name)))
            if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn scalars 1-d)
                arr = arr.copy(order="C")
            out[name] = _torch_dtype(name, arr)
            if bar is not None:
                bar.update(arr.nbytes)
    return out


# Names PyTorch holds as int64 where JAX without 64-bit types holds int32 (BatchNorm's step
# counter): written as int64, so files match PyTorch's own; they load back into int32 when in
# range (`_check_fits`), and PyTorch's strict load_state_dict finds the dtype it keeps.
_INT64_NAMES = frozenset({"num_batches_tracked"})


def _torch_dtype(name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` widened to int64 where PyTorch keeps that name as int64, else as it is."""
    if arr.dtype == np.int32 and name.rpartition(".")[2] in _INT64_NAMES:
        return arr.astype(np.int64)
    return arr


def _encode(a: np.ndarray) -> np.ndarray:
    """``a`` as safetensors stores it: as it is, or its bytes under a code of the same width."""
    if a.dtype in _NATIVE:
        return a
    if a.dtype.kind == "c":  # complex128: (real, imag) pairs in a trailing axis of 2
        return a[..., None].view(np.dtype(f"f{a.dtype.itemsize // 2}"))
    return a.view(np.uint8)  # the one-byte types: their bytes


def _decode(path: Path, name: str, arr: np.ndarray, real_name: Any) -> np.ndarray:
    """The inverse of `_encode`, given the real dtype's name from the header."""
    real = _JAX_DTYPES.get(real_name) if isinstance(real_name, str) else None
    if real is not None and real not in _NATIVE:
        if real.kind == "c" and arr.dtype == np.dtype(f"f{real.itemsize // 2}"):
            if arr.shape[-1:] == (2,):
                return arr.view(real)[..., 0]
        elif real.itemsize == 1 and arr.dtype == np.uint8:
            return arr.view(real)
    raise _open_error(
        path,
        f"tensor {name!r} is stored as {arr.dtype}{list(arr.shape)} but marked as "
        f"{real_name!r:.40}, which cannot be read from it",
    )


def _checksum(a: np.ndarray) -> str:
    """xxHash3 of the dtype, the shape and the bytes: a corrupted header (F32 read as I32)
    fails it too. xxHash3 runs at memory speed (about 30 GB/s), a few percent of a write."""
    h = xxhash.xxh3_64(f"{a.dtype.name}{tuple(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data)  # bfloat16 only as bytes
    return h.hexdigest()


def _is_flat_mapping(tree: Any) -> bool:
    return isinstance(tree, Mapping) and all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in tree.items()
    )


def is_plain_arrays(tree: Any) -> bool:
    """A flat ``{name: array}`` mapping (no Parameters): saved and loaded by its own keys."""
    return _is_flat_mapping(tree) and not any(isinstance(v, Variable) for v in tree.values())


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path for ``path``; on success it atomically becomes ``path``.

    The caller writes the temporary path completely; it is then fsynced and renamed over
    ``path``. If anything raises, the temporary is removed and ``path`` is untouched. The
    temporary lives in a private directory next to ``path`` whose name carries this host and
    process (see `jparam.tempfiles`), so the scratch file safetensors writes there too goes with
    it, and a killed save leaves one directory that the next save of ``path`` removes once its
    process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for temp in tempfiles.temps(path.parent, path.name):  # leftovers of killed saves
        if temp.kind == "trash" or (temp.kind == "tmp" and tempfiles.abandoned(temp)):
            tempfiles.remove(temp.path)
    work = tempfiles.temp_path(path, "tmp")
    work.mkdir()
    try:
        # A new directory gets 0o777 minus the umask; the file gets what open() would give it,
        # 0o666 minus the umask, not the owner-only mode of safetensors' scratch file.
        mode = stat.S_IMODE(work.stat().st_mode) & 0o666
        tmp_path = work / path.name
        yield tmp_path
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        tempfiles.remove(work)


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(
                f"safetensors metadata maps strings to strings; got {k!r}: {v!r} "
                "(convert values with str() or json.dumps())"
            )
        if k.startswith("jparam."):
            raise ValueError(f"metadata key {k!r}: the 'jparam.' prefix is reserved")
    return meta


def save(
    path: PathLike,
    tree: Any,
    *,
    metadata: Mapping[str, str] | None = None,
    progress: bool | None = None,
    mapping: Any = None,
) -> SaveInfo:
    """Writes the `state_dict` of ``tree`` (or a ``{name: array}`` dict) to a safetensors file.

    The write is atomic: a failure at any point leaves the previous file at ``path`` intact.
    ``metadata`` (strings only) goes into the header next to ``"format": "pt"``, which
    Hugging Face tools expect. A tqdm bar shows for files over 256 MB (``progress`` forces it on
    or off). ``mapping`` (the `jp.Mapping` used to load a checkpoint) is applied inverted, so
    the file has the checkpoint's original names and layouts. Returns the path, size and
    duration.

    Refused before anything is written: an entry named ``__metadata__`` (safetensors' own),
    abstract values (``jax.eval_shape`` results, tracers) and dtypes no JAX array can hold.
    """
    meta = _check_metadata(metadata)
    mapping = as_mapping(mapping)
    if mapping is not None:
        tree = mapping.inverse()(tree if _is_flat_mapping(tree) else state_dict(tree))
    return _save(path, tree, meta, progress)


def _save(
    path: PathLike, tree: Any, metadata: Mapping[str, str], progress: bool | None
) -> SaveInfo:
    """`save` without the check of ``metadata``: jparam's own files use ``jparam.*`` keys."""
    from safetensors.numpy import save_file

    start = time.perf_counter()
    arrays = _host_arrays(tree, progress)  # refuses what no file could hold: nothing written yet
    stored = OrderedDict((name, _encode(a)) for name, a in arrays.items())
    meta = {"format": "pt", **metadata}
    # The checksums go into the header, which is written first; hashing first would add its
    # time to the save. Instead the header holds a random placeholder of a digest's width per
    # tensor, the file is written and its writeback started, the tensors are hashed while the
    # disk works, and the placeholders are overwritten in place before the final fsync.
    placeholders = {name: secrets.token_hex(8) for name in arrays}
    meta[_SUM_KEY] = json.dumps(placeholders)
    dtypes = {n: a.dtype.name for n, a in arrays.items() if stored[n] is not a}
    if dtypes:
        meta[_DTYPE_KEY] = json.dumps(dtypes)
    meta[_HEAD_KEY] = _ZERO_SUM.decode()
    with atomic_path(path) as tmp:
        save_file(stored, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f, ThreadPoolExecutor(1) as pool:
            writeback = pool.submit(os.fsync, f.fileno())  # releases the GIL while it waits
            sums = {name: _checksum(a) for name, a in arrays.items()}
            writeback.result()
            _fill_placeholders(f, placeholders, sums)
    path = Path(path)
    return SaveInfo(path, path.stat().st_size, time.perf_counter() - start)


def _fill_placeholders(f: Any, placeholders: dict[str, str], sums: dict[str, str]) -> None:
    """Overwrites each placeholder digest in the safetensors header of ``f`` by the real one,
    then the header's own checksum.

    Digests and placeholders are 16 hex characters, which JSON writes as they are, so the
    header keeps its length and every tensor its offset.
    """
    f.seek(0)
    prefix = f.read(8)
    (length,) = struct.unpack("<Q", prefix)
    header = bytearray(f.read(length))
    for name, token in placeholders.items():
        at = header.find(token.encode())
        if at < 0 or header.find(token.encode(), at + 1) >= 0:  # pragma: no cover - 64 bits
            raise RuntimeError(f"checksum placeholder for {name!r} not found once in the header")
        header[at : at + 16] = sums[name].encode()
    found = _header_checksum(prefix, header)
    if found is None:  # pragma: no cover - jparam wrote the key itself
        raise RuntimeError("the header checksum's place was not found once in the header")
    at, digest = found
    header[at : at + 16] = digest.encode()
    f.seek(8)
    f.write(header)
    f.flush()


def _header_checksum(prefix: bytes, header: bytes | bytearray) -> tuple[int, str] | None:
    """Where the header checksum's 16 digits sit in ``header``, and what they must be: the
    xxHash3 of the length prefix and the header with those digits read as zeros. None if the
    checksum is not in the header exactly once."""
    found = list(_HEAD_RE.finditer(header))
    if len(found) != 1:
        return None
    at = found[0].start(1)
    h = xxhash.xxh3_64(prefix)
    h.update(header[:at])
    h.update(_ZERO_SUM)
    h.update(header[at + 16 :])
    return at, h.hexdigest()


def _open_error(path: Path, what: Any) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file (truncated, corrupted, or another format): "
        f"{what}"
    )


class _Spec(NamedTuple):
    """One tensor's header entry, checked: its bytes are ``data[begin:end]``."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


def load_file(
    path: PathLike, *, progress: bool | None = None
) -> tuple[OrderedDict[str, jax.Array], dict[str, str]]:
    """Reads a safetensors file: ``({name: jax.Array}, metadata)``, checksums verified.

    Anything but a well-formed file raises `CheckpointError` naming the file and the fault,
    before anything is allocated from what the header claims.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with open(path, "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            prefix, raw = _read_header(path, f, size)
            verified = _verify_header(path, prefix, raw)
            head = _parse_header(path, raw)
            meta = _metadata(path, head)
            specs = _tensor_specs(path, head, size - 8 - len(raw))
            sums, dtypes = _jparam_entries(path, meta, specs) if verified else ({}, {})
            host = _read_tensors(path, f, 8 + len(raw), specs, progress)
    except OSError as e:
        raise _open_error(path, e) from None
    for name, real_name in dtypes.items():
        host[name] = _decode(path, name, host[name], real_name)
    for name, arr in host.items():
        if verified and _checksum(arr) != sums[name]:
            raise CheckpointError(
                f"{path}: tensor {name!r} fails its checksum; the file is corrupted"
            )
        _check_fits(path, name, arr)
    # device_put gives what jnp.asarray gives (canonical dtype, uncommitted) but skips its
    # extra copy through lax.stage: 3-4x faster on CPU, where it may alias the array (a fresh
    # copy nothing else holds).
    arrays = OrderedDict((n, jax.device_put(host[n])) for n in sorted(host))
    return arrays, meta


def _read_header(path: Path, f: Any, size: int) -> tuple[bytes, bytes]:
    """The 8-byte length prefix and the header, refusing a length the file cannot hold."""
    prefix = _read_at(f, 0, 8)
    if len(prefix) < 8:
        raise _open_error(path, f"{size} bytes, too short for the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or length > size - 8:
        raise _open_error(
            path,
            f"the header length says {length} bytes, but the file has {size - 8} after it "
            f"(and safetensors allows at most {MAX_HEADER_BYTES})",
        )
    raw = _read_at(f, 8, length)
    if len(raw) < length:  # the file shrank meanwhile
        raise _open_error(path, "the file ends inside the header")
    return prefix, raw


def _read_at(f: Any, offset: int, n: int) -> bytes:
    """Up to ``n`` bytes from ``offset``: fewer only at the end of the file."""
    f.seek(offset)
    chunks = []
    while n and (chunk := f.read(n)):
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _verify_header(path: Path, prefix: bytes, raw: bytes) -> bool:
    """Checks the header checksum of a file jparam wrote; False for other writers' files."""
    if not any(mark in raw for mark in _MARKS):
        return False
    found = _header_checksum(prefix, raw)
    if found is None:
        raise CheckpointError(
            f"{path}: the header is marked as jparam's but its checksum ({_HEAD_KEY}) is "
            "missing or malformed: the header is corrupted (or the file comes from a jparam "
            "without header checksums: load it with that version and save it again)"
        )
    at, digest = found
    if raw[at : at + 16] != digest.encode():
        raise CheckpointError(
            f"{path}: the header fails its checksum (tensor names, dtypes, shapes, offsets or "
            "metadata changed); the file is corrupted"
        )
    return True


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a repeated key (json.loads would keep the last one silently)."""
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r:.80} appears twice in one object")
        seen.add(key)
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    """The header as a dict: strict UTF-8 JSON, no duplicate keys, no NaN, bounded depth."""
    try:
        text = raw.decode("utf-8")
        head = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise _open_error(path, f"the header is not UTF-8 ({e})") from None
    except RecursionError:
        raise _open_error(path, "the header's JSON is nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError included
        raise _open_error(path, f"the header is not valid JSON ({e})") from None
    if not isinstance(head, dict):
        raise _open_error(path, f"the header is a JSON {type(head).__name__}, not an object")
    return head


def _metadata(path: Path, head: dict[str, Any]) -> dict[str, str]:
    meta = head.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _open_error(path, f"__metadata__ must map strings to strings, got {meta!r:.100}")
    return dict(meta)


def _is_count_list(x: Any) -> bool:
    return isinstance(x, list) and all(type(i) is int and i >= 0 for i in x)


def _num_elements(shape: list[int]) -> int | None:
    """The product of ``shape``; None if it (or, with a 0, the other sides') overflows int64."""
    n = 1
    for side in shape:
        n *= max(side, 1)
        if n >= 2**63:
            return None
    return 0 if 0 in shape else n


def _spec(path: Path, name: str, entry: Any) -> _Spec:
    """One tensor's header entry, refusing any that does not describe its bytes exactly."""

    def bad(what: str) -> CheckpointError:
        return _open_error(path, f"tensor {name!r:.100} has {what}")

    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"the header entry {entry!r:.100} (expected dtype, shape and data_offsets)")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    dtype = _BY_CODE.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise bad(f"dtype {code!r:.40}, which jparam cannot read (known: {', '.join(_BY_CODE)})")
    if not _is_count_list(shape) or len(shape) > _MAX_NDIM:
        raise bad(f"shape {shape!r:.100} (expected at most {_MAX_NDIM} non-negative integers)")
    if not _is_count_list(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise bad(f"data_offsets {offsets!r:.100} (expected [begin, end], begin <= end)")
    count = _num_elements(shape)
    if count is None or offsets[1] - offsets[0] != count * dtype.itemsize:
        raise bad(
            f"{offsets[1] - offsets[0]} bytes of data, but a {code} tensor of shape "
            f"{shape!r:.100} needs {'more than 2**63' if count is None else count * dtype.itemsize}"
        )
    return _Spec(name, dtype, tuple(shape), offsets[0], offsets[1])


def _tensor_specs(path: Path, head: dict[str, Any], data_size: int) -> list[_Spec]:
    """Every tensor's entry; together they must tile the data section exactly, as in
    safetensors: no overlap, no gap, nothing past the end and nothing after it."""
    specs = [_spec(path, n, e) for n, e in head.items() if n not in _RESERVED_NAMES]
    at = 0
    for s in sorted(specs, key=lambda s: (s.begin, s.end)):
        if s.begin != at:
            raise _open_error(
                path,
                f"tensor {s.name!r} starts at data byte {s.begin}, expected {at} "
                "(tensors overlap or leave a gap)",
            )
        at = s.end
    if at != data_size:
        raise _open_error(
            path, f"the tensors need {at} bytes of data and the file holds {data_size}"
        )
    return specs


def _json_map(path: Path, meta: dict[str, str], key: str, default: str) -> dict[str, str]:
    try:
        value = json.loads(meta.pop(key, default))
    except ValueError as e:
        raise CheckpointError(f"{path}: {key} is not valid JSON ({e}); corrupted") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CheckpointError(f"{path}: {key} must map names to strings; corrupted")
    return value


def _jparam_entries(
    path: Path, meta: dict[str, str], specs: list[_Spec]
) -> tuple[dict[str, str], dict[str, str]]:
    """The checksums and stored-as dtypes of a verified jparam file, taken out of ``meta``."""
    meta.pop(_HEAD_KEY, None)
    sums = _json_map(path, meta, _SUM_KEY, "null")
    dtypes = _json_map(path, meta, _DTYPE_KEY, "{}")
    names = {s.name for s in specs}
    if set(sums) != names or not set(dtypes) <= names:
        # A corrupted header can rename a tensor, which would then skip its checksum.
        odd = sorted(set(sums).symmetric_difference(names) | set(dtypes).difference(names))
        raise CheckpointError(
            f"{path}: the header's tensor names and checksums disagree ({', '.join(odd)})"
            "; the file is corrupted"
        )
    return sums, dtypes


def _read_tensors(
    path: Path, f: Any, start: int, specs: list[_Spec], progress: bool | None
) -> dict[str, np.ndarray]:
    """Each tensor's bytes, read into a fresh array of its own (so JAX may alias it)."""
    out: dict[str, np.ndarray] = {}
    total = sum(s.end - s.begin for s in specs)
    with _progress(total, progress, "loading") as bar:
        for s in sorted(specs, key=lambda s: s.begin):
            buf = _aligned_bytes(s.end - s.begin)
            if not _read_into(f, start + s.begin, buf):
                raise _open_error(path, f"the file ends inside tensor {s.name!r}")
            if s.dtype == np.bool_ and buf.size and buf.max() > 1:
                raise _open_error(path, f"bool tensor {s.name!r} holds bytes other than 0, 1")
            out[s.name] = buf.view(s.dtype).reshape(s.shape)
            if bar is not None:
                bar.update(buf.nbytes)
    return out


def _aligned_bytes(n: int) -> np.ndarray:
    """``n`` fresh bytes from a 64-byte boundary: ``jax.device_put`` on CPU adopts such a buffer
    where it would copy any other (a second pass over every byte of the file)."""
    raw = np.empty(n + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + n]


def _read_into(f: Any, offset: int, buf: np.ndarray) -> bool:
    """Fills ``buf`` from ``offset``, in as many reads as the OS needs; False at a short file."""
    view = buf.data
    f.seek(offset)
    while view.nbytes:
        n = f.readinto(view)
        if not n:
            return False
        view = view[n:]
    return True


def _check_fits(path: Path, name: str, arr: np.ndarray) -> None:
    """Refuses values JAX would change on the way in: without 64-bit types, int64 values
    outside int32 (which would wrap) and finite float64 values beyond float32 (which would
    become infinities)."""
    try:
        check_int_range(arr, what=f"tensor {name!r}")
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    want = jax.dtypes.canonicalize_dtype(arr.dtype)
    if arr.dtype.kind not in "fc" or want == arr.dtype or arr.size == 0:
        return
    parts = arr.view(arr.real.dtype) if arr.dtype.kind == "c" else arr
    finite = parts[np.isfinite(parts)]
    if finite.size and np.abs(finite).max() > np.finfo(want).max:
        raise CheckpointError(
            f"{path}: tensor {name!r} is {arr.dtype} with finite values beyond the {want} range "
            "that JAX uses without 64-bit types (they would load as infinities); call "
            "jax.config.update('jax_enable_x64', True) first"
        )


def rename_keys(
    state: Mapping[str, Any], rename: Mapping[str, str] | Callable[[str], str | None] | None
) -> OrderedDict[str, Any]:
    """Applies prefix renames (``{"module.": ""}``) or a function (``None`` drops a key)."""
    if rename is None:
        return OrderedDict(state)
    out: OrderedDict[str, Any] = OrderedDict()
    for name, value in state.items():
        if callable(rename):
            new = rename(name)
        else:
            new = name
            for old_prefix, new_prefix in rename.items():
                if name.startswith(old_prefix):
                    new = new_prefix + name[len(old_prefix) :]
                    break
        if new is None:
            continue
        if new in out:
            raise ValueError(f"rename maps two keys to {new!r} (one of them is {name!r})")
        out[new] = value
    return out


def load(
    path: PathLike,
    like: Any,
    *,
    strict: bool = True,
    rename: Mapping[str, str] | Callable[[str], str | None] | None = None,
    progress: bool | None = None,
    mapping: Any = None,
) -> Any:
    """Loads a safetensors file into a copy of ``like`` by name (see `jp.load_state_dict`).

    ``strict=True`` returns the model or raises one error listing every missing, unexpected,
    mis-shaped or mis-typed key; ``strict=False`` returns ``(model, IncompatibleKeys)`` and
    loads the subset that matches. ``rename`` maps file names to model names first: a dict of
    prefix replacements (``{"module.": ""}`` for DataParallel files) or a function; then
    ``mapping`` (a `jp.Mapping`: renames, transposes, splits, ...) is applied.
    """
    mapping = as_mapping(mapping)
    arrays, _ = load_file(path, progress=progress)
    arrays = rename_keys(arrays, rename)
    if mapping is not None:
        arrays = mapping(arrays)
    if is_plain_arrays(like):  # what `save` writes as it is loads back as it is
        values, incompatible = match_state(like, arrays, strict, type(like).__name__)
        new = {**like, **values}
        return new if strict else (new, incompatible)
    new = load_state_dict(like, arrays, strict=strict)
    return new if strict else (new, incompatible_keys(like, arrays))


def from_torch_state_dict(state: Mapping[str, Any]) -> OrderedDict[str, jax.Array]:
    """A live PyTorch ``state_dict()`` as ``{name: jax.Array}``; bfloat16 and float8 keep
    their dtype."""
    return OrderedDict((name, to_array(_torch_float8(t), what=name)) for name, t in state.items())


def _torch_float8(t: Any) -> Any:
    """A torch float8 tensor as NumPy, through its bytes (PyTorch's ``.numpy()`` refuses
    float8); anything else as it is."""
    if type(t).__module__.split(".")[0] != "torch" or getattr(t, "is_meta", True):
        return t
    name = str(getattr(t, "dtype", "")).removeprefix("torch.")
    if not name.startswith("float8_") or name not in _JAX_DTYPES:
        return t
    import torch

    return t.detach().cpu().contiguous().view(torch.uint8).numpy().view(_JAX_DTYPES[name])
