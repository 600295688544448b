"""Files by name: ``jp.save`` / ``jp.load`` in the safetensors format PyTorch and Hugging Face use.

A file is the model's `state_dict`: ``{name: array}``, so PyTorch reads what jparam writes
(``safetensors.torch.load_file`` then ``module.load_state_dict``) and jparam reads what PyTorch
writes. Every dtype JAX has round-trips exactly, bfloat16 included::

    info = jp.save("model.safetensors", model, metadata={"epoch": "3"})
    model = jp.load("model.safetensors", like=model)
    model = jp.load("ddp.safetensors", like=model, rename={"module.": ""})

Writes never destroy the previous file: the bytes go to a temporary file in the same directory,
are flushed to disk, and then atomically replace the old file. An xxHash3 checksum of every
tensor (its dtype, shape and bytes) is stored in the header, so a corrupted file is reported,
never loaded as garbage.
"""

from __future__ import annotations

import contextlib
import json
import os
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

from .parameter import check_int_range, to_array
from .state import load_state_dict, state_dict

__all__ = [
    "CheckpointError",
    "SaveInfo",
    "from_torch_state_dict",
    "load",
    "load_file",
    "save",
]

PathLike = str | os.PathLike
_SUM_KEY = "jparam.xxh3_64"
PROGRESS_BYTES = 256 * 2**20  # show a progress bar from this size on (progress=None)


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


def _host_arrays(tree: Any, bar_enabled: bool | None) -> OrderedDict[str, np.ndarray]:
    values = state_dict(tree) if not _is_flat_mapping(tree) else tree
    total = sum(int(np.prod(v.shape)) * jnp.dtype(v.dtype).itemsize for v in values.values())
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    with _progress(total, bar_enabled, "gathering") as bar:
        for name, value in values.items():
            arr = np.asarray(jax.device_get(to_array(value, what=name)))
            if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn scalars 1-d)
                arr = arr.copy(order="C")
            out[name] = arr
            if bar is not None:
                bar.update(arr.nbytes)
    return out


def _checksum(a: np.ndarray) -> str:
    """xxHash3 of the dtype, the shape and the bytes: a corrupted header (F32 read as I32)
    fails it too. xxHash3 runs at memory speed (about 30 GB/s), a few percent of a write."""
    h = xxhash.xxh3_64(f"{a.dtype.name}{tuple(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).reshape(-1).view(np.uint8))  # bfloat16 only as bytes
    return h.hexdigest()


def _is_flat_mapping(tree: Any) -> bool:
    return isinstance(tree, Mapping) and all(
        isinstance(k, str) and hasattr(v, "shape") for k, v in tree.items()
    )


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; on success it atomically becomes ``path``.

    The caller writes the temporary path completely; it is then fsynced and renamed over
    ``path``. If anything raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temporary files are owner-only (mkstemp's, and the one safetensors writes and renames
    # onto ours): the checkpoint gets the mode open() would give it, 0o666 minus the umask.
    while True:
        tmp_path = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    mode = stat.S_IMODE(tmp_path.stat().st_mode)
    # The name stays reserved by its randomness; the writer creates the file afresh, since
    # renaming or truncating onto an existing file makes ext4 flush it early (2x slower).
    tmp_path.unlink()
    try:
        yield tmp_path
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


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
) -> SaveInfo:
    """Writes the `state_dict` of ``tree`` (or a ``{name: array}`` dict) to a safetensors file.

    The write is atomic: a failure at any point leaves the previous file at ``path`` intact.
    ``metadata`` (strings only) goes into the header next to ``"format": "pt"``, which
    Hugging Face tools expect. A tqdm bar shows for files over 256 MB (``progress`` forces it on
    or off). Returns the path, size and duration.
    """
    return _save(path, tree, _check_metadata(metadata), progress)


def _save(
    path: PathLike, tree: Any, metadata: Mapping[str, str], progress: bool | None
) -> SaveInfo:
    """`save` without the check of ``metadata``: jparam's own files use ``jparam.*`` keys."""
    from safetensors.numpy import save_file

    start = time.perf_counter()
    meta = {"format": "pt", **metadata}
    arrays = _host_arrays(tree, progress)
    # The checksums go into the header, which is written first; hashing first would add its
    # time to the save. Instead the header holds a random placeholder of a digest's width per
    # tensor, the file is written and its writeback started, the tensors are hashed while the
    # disk works, and the placeholders are overwritten in place before the final fsync.
    placeholders = {name: secrets.token_hex(8) for name in arrays}
    meta[_SUM_KEY] = json.dumps(placeholders)
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f, ThreadPoolExecutor(1) as pool:
            writeback = pool.submit(os.fsync, f.fileno())  # releases the GIL while it waits
            sums = {name: _checksum(a) for name, a in arrays.items()}
            writeback.result()
            _fill_placeholders(f, placeholders, sums)
    path = Path(path)
    return SaveInfo(path, path.stat().st_size, time.perf_counter() - start)


def _fill_placeholders(f: Any, placeholders: dict[str, str], sums: dict[str, str]) -> None:
    """Overwrites each placeholder digest in the safetensors header of ``f`` by the real one.

    Digests and placeholders are 16 hex characters, which JSON writes as they are, so the
    header keeps its length and every tensor its offset.
    """
    f.seek(0)
    (length,) = struct.unpack("<Q", f.read(8))
    header = bytearray(f.read(length))
    for name, token in placeholders.items():
        at = header.find(token.encode())
        if at < 0 or header.find(token.encode(), at + 1) >= 0:  # pragma: no cover - 64 bits
            raise RuntimeError(f"checksum placeholder for {name!r} not found once in the header")
        header[at : at + 16] = sums[name].encode()
    f.seek(8)
    f.write(header)
    f.flush()


def _open_error(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable safetensors file (truncated, corrupted, or another format): {e}"
    )


def load_file(
    path: PathLike, *, progress: bool | None = None
) -> tuple[OrderedDict[str, jax.Array], dict[str, str]]:
    """Reads a safetensors file: ``({name: jax.Array}, metadata)``, checksums verified."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            names = list(f.keys())
            has_sums = _SUM_KEY in meta
            sums = json.loads(meta.pop(_SUM_KEY, "{}"))
            if has_sums and set(sums) != set(names):
                # A corrupted header can rename a tensor, which would then skip its checksum.
                odd = sorted(set(sums).symmetric_difference(names))
                raise CheckpointError(
                    f"{path}: the header's tensor names and checksums disagree ({', '.join(odd)})"
                    "; the file is corrupted"
                )
            host: list[np.ndarray] = []
            with _progress(path.stat().st_size, progress, "loading") as bar:
                for name in names:
                    host.append(f.get_tensor(name))
                    _check_fits(path, name, host[-1])
                    if bar is not None:
                        bar.update(host[-1].nbytes)
            for name, arr in zip(names, host):
                if name in sums and _checksum(arr) != sums[name]:
                    raise CheckpointError(
                        f"{path}: tensor {name!r} fails its checksum; the file is corrupted"
                    )
            # device_put gives what jnp.asarray gives (canonical dtype, uncommitted) but skips
            # its extra copy through lax.stage: 3-4x faster on CPU, where it may alias the
            # array (a fresh copy nothing else holds).
            arrays = OrderedDict((n, jax.device_put(a)) for n, a in zip(names, host))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise _open_error(path, e) from None
    except Exception as e:  # safetensors raises plain errors on some malformed headers
        if isinstance(e, CheckpointError):
            raise
        raise _open_error(path, e) from None
    return arrays, meta


def _check_fits(path: Path, name: str, arr: np.ndarray) -> None:
    try:
        check_int_range(arr, what=f"tensor {name!r}")
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


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
) -> Any:
    """Loads a safetensors file into a copy of ``like`` by name (see `jp.load_state_dict`).

    ``strict=True`` returns the model or raises one error listing every missing, unexpected,
    mis-shaped or mis-typed key; ``strict=False`` returns ``(model, IncompatibleKeys)`` and
    loads the subset that matches. ``rename`` maps file names to model names first: a dict of
    prefix replacements (``{"module.": ""}`` for DataParallel files) or a function.
    """
    arrays, _ = load_file(path, progress=progress)
    return load_state_dict(like, rename_keys(arrays, rename), strict=strict)


def from_torch_state_dict(state: Mapping[str, Any]) -> OrderedDict[str, jax.Array]:
    """A live PyTorch ``state_dict()`` as ``{name: jax.Array}``; bfloat16 stays bfloat16."""
    return OrderedDict((name, to_array(t, what=name)) for name, t in state.items())
