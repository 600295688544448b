"""Training checkpoints: model, optimizer state, step, PRNG keys and anything else, in one call.

`save_checkpoint` writes a step as a directory (``step_000001000/``) of safetensors files (the
model, readable by PyTorch; the optimizer state by parameter name; array extras and typed PRNG
keys) and ``extra.json`` (the plain extras, the step and every file's size, under a checksum),
written last to mark the step complete. Steps are written under a temporary name and renamed
into place, replaced and deleted by renames too, so a crash at any point leaves every earlier
step loadable and `latest_step` naming a complete one; `load_checkpoint` reads the latest step
(or a given one) back into copies of the model and optimizer. A model sharded across hosts goes
through `jp.save_sharded` instead. The guide is ``docs/howto/checkpoint-and-resume.md``.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xxhash

from . import tempfiles
from .optim import Optimizer
from .serialization import (
    CheckpointError,
    PathLike,
    _fsync_dir,
    _save,
    atomic_path,
    load,
    load_file,
    save,
)

__all__ = ["latest_step", "load_checkpoint", "save_checkpoint"]

_STEP_LIKE = re.compile(r"^step_(\d+)$")
_KEY_PREFIX = "jparam.prng_impl."
_MANIFEST = "extra.json"
# extra.json is one JSON object: {"xxh3_64":"<16 hex digits>","data":{...}}, the digest taken
# over the exact bytes of the data object, so that every changed byte of the file is refused.
_HEAD = b'{"xxh3_64":"'
_DATA = b'","data":'
_HEX = re.compile(rb"^[0-9a-f]{16}$")


# -- names and manifests ---------------------------------------------------------------------------


def _step_name(step: int) -> str:
    return f"step_{step:09d}"


def _step_of(name: str) -> int | None:
    """The step a directory name stands for: ``step_000000042`` only, never ``step_42``."""
    m = _STEP_LIKE.match(name)
    if m is None or _step_name(int(m[1])) != name:
        return None
    return int(m[1])


def _write_manifest(path: Path, step: int, files: dict[str, int], plain: dict[str, Any]) -> None:
    data = json.dumps({"step": step, "files": files, "extra": plain}, separators=(",", ":"))
    raw = data.encode()
    digest = xxhash.xxh3_64_hexdigest(raw).encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(_HEAD + digest + _DATA + raw + b"}")


def _read_manifest(step_dir: Path) -> dict[str, Any]:
    """The verified contents of ``step_dir/extra.json``; every problem is a `CheckpointError`."""
    path = step_dir / _MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: {step_dir} is not a complete checkpoint step (its save was "
            "interrupted, or files were removed)"
        ) from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e}") from None
    start = len(_HEAD) + 16 + len(_DATA)
    digest = raw[len(_HEAD) : len(_HEAD) + 16]
    if not (
        raw.startswith(_HEAD)
        and _HEX.match(digest)
        and raw[len(_HEAD) + 16 : start] == _DATA
        and raw.endswith(b"}")
        and len(raw) > start + 1
    ):
        raise CheckpointError(
            f"{path} is not a jparam checkpoint manifest (corrupted, or not written by "
            "jp.save_checkpoint)"
        )
    data = raw[start:-1]
    if xxhash.xxh3_64_hexdigest(data).encode() != digest:
        raise CheckpointError(f"{path} fails its checksum; the file is corrupted")
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:  # checksum matched: written so by someone else
        raise CheckpointError(f"{path} holds invalid JSON: {e}") from None
    if not _well_formed(manifest):
        raise CheckpointError(f"{path} does not have the fields of a checkpoint manifest")
    return manifest


def _well_formed(m: Any) -> bool:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    return (
        isinstance(m, dict)
        and is_int(m.get("step"))
        and isinstance(m.get("files"), dict)
        and all(isinstance(k, str) and "/" not in k and is_int(v) for k, v in m["files"].items())
        and "model.safetensors" in m["files"]
        and isinstance(m.get("extra"), dict)
    )


def _check_files(step_dir: Path, manifest: dict[str, Any], step: int) -> None:
    if manifest["step"] != step:
        raise CheckpointError(
            f"{step_dir / _MANIFEST} belongs to step {manifest['step']}, not {step}: the step "
            "directory was renamed or its files mixed up"
        )
    for name, size in manifest["files"].items():
        path = step_dir / name
        try:
            got = path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(
                f"{path} is missing; the step is incomplete (files were removed)"
            ) from None
        if got != size:
            raise CheckpointError(
                f"{path} has {got} bytes, {size} were written: the file is truncated or "
                "was replaced"
            )


def _is_complete(step_dir: Path) -> bool:
    """Whether ``step_dir`` counts as a step: its manifest is there, and so is every file it
    lists. A manifest that fails its checks still counts, so that loading the step reports the
    corruption instead of `latest_step` falling back to an older step without a word."""
    if not (step_dir / _MANIFEST).is_file():
        return False
    try:
        manifest = _read_manifest(step_dir)
    except CheckpointError:
        return True
    return all((step_dir / name).is_file() for name in manifest["files"])


# -- finding steps ---------------------------------------------------------------------------------


def _candidates(directory: Path) -> dict[int, list[Path]]:
    """For each step, the directories that may hold it, best first: ``step_N``, then the
    copies that replacements moved aside (newest first)."""
    found: dict[int, list[Path]] = {}
    asides: dict[int, list[Path]] = {}
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for name in names:
        step = _step_of(name)
        if step is not None:
            found.setdefault(step, []).insert(0, directory / name)
    for temp in tempfiles.temps(directory):
        step = _step_of(temp.target)
        if temp.kind == "old" and step is not None:
            asides.setdefault(step, []).append(temp.path)
    for step, paths in asides.items():
        found.setdefault(step, []).extend(sorted(paths, key=_mtime, reverse=True))
    return found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _first_complete(paths: list[Path]) -> Path | None:
    return next((p for p in paths if p.is_dir() and _is_complete(p)), None)


def _steps(directory: Path) -> dict[int, Path]:
    """Every complete step of ``directory`` and where it is."""
    out = {}
    for step, paths in sorted(_candidates(directory).items()):
        path = _first_complete(paths)
        if path is not None:
            out[step] = path
    return out


def _latest(directory: Path) -> tuple[int, Path] | None:
    candidates = _candidates(directory)
    for step in sorted(candidates, reverse=True):
        path = _first_complete(candidates[step])
        if path is not None:
            return step, path
    return None


def latest_step(directory: PathLike) -> int | None:
    """The highest complete step saved in ``directory``, or ``None`` if there is none.

    Only complete steps count: a step whose save or deletion was interrupted never does.
    """
    found = _latest(Path(directory))
    return None if found is None else found[0]


# -- saving ----------------------------------------------------------------------------------------


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _split_extra(extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    arrays, meta, plain = {}, {}, {}
    for name, value in extra.items():
        if _is_array(value) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            arrays[name] = jax.random.key_data(value)
            meta[_KEY_PREFIX + name] = str(jax.random.key_impl(value))
        elif _is_array(value):
            arrays[name] = value
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"save_checkpoint: extra {name!r} is a {type(value).__name__}; extras must "
                    "be arrays (PRNG keys included) or JSON values (numbers, strings, lists, "
                    "dicts)"
                ) from None
            plain[name] = value
    return arrays, meta, plain


def _tidy(directory: Path) -> None:
    """Removes what killed saves left in ``directory`` and puts back steps they moved aside."""
    asides: dict[int, list[tempfiles.Temp]] = {}
    for temp in tempfiles.temps(directory):
        step = _step_of(temp.target)
        if temp.kind == "old" and step is not None:
            asides.setdefault(step, []).append(temp)
        elif temp.kind == "trash" or (temp.kind == "tmp" and tempfiles.abandoned(temp)):
            tempfiles.remove(temp.path)
    for step, group in asides.items():
        if not all(tempfiles.abandoned(t) for t in group):
            continue  # a live process is replacing this step right now
        final = directory / _step_name(step)
        paths = sorted((t.path for t in group), key=_mtime, reverse=True)
        if not (final.is_dir() and _is_complete(final)):
            best = _first_complete(paths)
            if best is not None:
                if final.exists():  # an incomplete leftover under the step's name
                    tempfiles.discard(final, final)
                try:
                    os.rename(best, final)
                except OSError:  # another process restored it first
                    continue
                paths.remove(best)
        for path in paths:
            tempfiles.discard(path, final)


def _swap_in(tmp: Path, final: Path) -> None:
    """Renames the complete step ``tmp`` to ``final``, moving an existing ``final`` aside first.

    Until the aside copy is discarded it stands for the step (see `_candidates`), so a crash
    between the two renames hides nothing. Another process saving the same step may put its
    own copy in between; then that one is moved aside too, and the last writer wins.
    """
    moved: list[Path] = []
    try:
        for _ in range(100):
            try:
                os.rename(tmp, final)
                break
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            aside = tempfiles.temp_path(final, "old")
            try:
                os.rename(final, aside)
            except FileNotFoundError:  # another process moved it first
                continue
            moved.append(aside)
        else:  # pragma: no cover - needs 100 lost races in a row
            raise CheckpointError(
                f"could not save {final}: other processes keep saving the same step; only "
                "one process should save a checkpoint step"
            )
    except BaseException:
        if moved and not final.exists():  # put the newest copy back
            os.rename(moved.pop(), final)
        raise
    finally:
        _fsync_dir(final.parent)
        for aside in moved:
            tempfiles.discard(aside, final)


def _prune(directory: Path, step: int, keep: int) -> None:
    """Keeps ``step`` and the newest ``keep - 1`` other complete steps; deletes older steps."""
    steps = {s: p for s, p in _steps(directory).items() if p.name == _step_name(s)}
    others = sorted(s for s in steps if s != step)
    doomed = others[: max(len(others) - (keep - 1), 0)]
    kept = min([step, *(s for s in others if s not in doomed)])
    for s in doomed:
        tempfiles.discard(steps[s], steps[s])
    for name in os.listdir(directory):  # incomplete steps older than every kept one
        found = _step_of(name)
        if found is not None and found < kept and found not in steps:
            tempfiles.discard(directory / name, directory / name)


def save_checkpoint(
    directory: PathLike,
    step: int,
    /,
    *,
    model: Any,
    opt: Optimizer | None = None,
    keep: int | None = 3,
    **extra: Any,
) -> Path:
    """Saves ``model``, ``opt`` and ``extra`` as step ``step`` of ``directory``; returns its path.

    Keeps the step just saved and the newest ``keep - 1`` others (``None`` keeps all). Saving a
    step that exists replaces it. A crash at any point leaves the earlier steps loadable and
    `latest_step` naming a complete one; the next save removes what the crash left (see
    ``docs/howto/checkpoint-and-resume.md``). Two processes saving the same step both succeed
    and the last one to finish wins, but in a multi-host job only one process should save
    (process 0, with arrays it can read whole); a model sharded across hosts goes through
    `jp.save_sharded`.
    """
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None for all), got {keep}")
    step = int(step)
    arrays, meta, plain = _split_extra(extra)  # refuse bad extras before writing anything
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _tidy(directory)
    final = directory / _step_name(step)
    # Not tempfile.mkdtemp: its owner-only mode (0o700) would stay with the step directory.
    tmp = tempfiles.temp_path(final, "tmp")
    tmp.mkdir()
    try:
        files = {"model.safetensors": save(tmp / "model.safetensors", model).bytes}
        if opt is not None:
            info = save(tmp / "optimizer.safetensors", opt.state_dict())
            files["optimizer.safetensors"] = info.bytes
        if arrays:  # "jparam.*" metadata keys
            files["extra.safetensors"] = _save(tmp / "extra.safetensors", arrays, meta, None).bytes
        _write_manifest(tmp / _MANIFEST, step, files, plain)  # last: marks the step complete
        _swap_in(tmp, final)
    finally:
        tempfiles.remove(tmp)
    if keep is not None:
        _prune(directory, step, keep)
    return final


# -- loading ---------------------------------------------------------------------------------------


def _no_steps_error(directory: Path) -> Exception:
    if not directory.is_dir():
        return FileNotFoundError(f"no checkpoint directory at {directory}")
    odd = sorted(
        name
        for name in os.listdir(directory)
        if _STEP_LIKE.match(name) and (directory / name).is_dir()
    )
    if odd:
        return CheckpointError(
            f"no complete checkpoint step in {directory}; found only {', '.join(odd)}, each "
            "incomplete or not named like a step (step_000000042)"
        )
    hint = ""
    if _step_of(directory.name) is not None:
        hint = f"; {directory.name} looks like a step itself: pass its parent and step="
    return FileNotFoundError(f"no checkpoint (step_* directory) in {directory}{hint}")


def _find_step(directory: Path, step: int | None) -> tuple[int, Path]:
    if step is None:
        found = _latest(directory)
        if found is None:
            raise _no_steps_error(directory)
        return found
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    step = int(step)
    candidates = _candidates(directory).get(step, [])
    path = _first_complete(candidates)
    if path is not None:
        return step, path
    final = directory / _step_name(step)
    if final.is_dir():
        _check_files(final, _read_manifest(final), step)  # says what is missing
        raise CheckpointError(f"{final} is not a complete checkpoint step")
    if final.exists():
        raise CheckpointError(f"{final} is not a directory, so not a checkpoint step")
    odd = [n for n in os.listdir(directory) if (m := _STEP_LIKE.match(n)) and int(m[1]) == step]
    if odd:
        raise CheckpointError(
            f"{directory / odd[0]} is not named like a checkpoint step; jparam names step "
            f"{step} {final.name} (rename it to load it)"
        )
    raise FileNotFoundError(f"no step {step} in {directory}; saved: {list(_steps(directory))}")


def _load_step(path: Path, step: int, model: Any, opt: Optimizer | None) -> dict[str, Any]:
    manifest = _read_manifest(path)
    _check_files(path, manifest, step)
    files = manifest["files"]
    out: dict[str, Any] = {"step": step, "model": load(path / "model.safetensors", model)}
    if opt is not None:
        if "optimizer.safetensors" not in files:
            raise CheckpointError(
                f"{path} holds no optimizer state (it was saved without opt=); load it "
                "without opt= and build a fresh jp.Optimizer"
            )
        state, _ = load_file(path / "optimizer.safetensors")
        out["opt"] = opt.load_state_dict(state)
    if "extra.safetensors" in files:
        arrays, meta = load_file(path / "extra.safetensors")
        for name, value in arrays.items():
            impl = meta.get(_KEY_PREFIX + name)
            out[name] = jax.random.wrap_key_data(value, impl=impl) if impl else value
    out.update(manifest["extra"])
    return out


def load_checkpoint(
    directory: PathLike,
    *,
    model: Any,
    opt: Optimizer | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Loads a step (the latest complete one by default) into copies of ``model`` and ``opt``.

    Returns ``{"step": ..., "model": ..., "opt": ..., **extra}`` with extras as they were saved
    (PRNG keys as typed keys again). Loading is strict (`jp.load_state_dict`). A step that is
    incomplete, corrupted or badly named raises `jp.CheckpointError` naming the file; a step
    that does not exist raises `FileNotFoundError` listing the saved ones.
    """
    directory = Path(directory)
    for attempt in range(2):
        n, path = _find_step(directory, step)
        try:
            return _load_step(path, n, model, opt)
        except FileNotFoundError as e:
            if attempt:  # it vanished twice: another process keeps deleting steps
                raise CheckpointError(
                    f"{path} disappeared while loading ({e}); is another process pruning "
                    "this directory with keep=?"
                ) from None
    raise AssertionError("unreachable")  # pragma: no cover
