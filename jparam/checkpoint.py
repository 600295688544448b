"""Training checkpoints: model, optimizer state, step, PRNG keys and anything else, in one call.

::

    jp.save_checkpoint("runs/a", step, model=model, opt=opt, key=key, epoch=3, keep=3)
    ...
    ckpt = jp.load_checkpoint("runs/a", model=model, opt=opt)   # the latest step
    model, opt, key, step = ckpt["model"], ckpt["opt"], ckpt["key"], ckpt["step"]

Each step is a directory ``step_000001000/`` holding ``model.safetensors`` (readable by PyTorch),
``optimizer.safetensors`` (optax state by parameter name), ``extra.safetensors`` for array
extras (typed PRNG keys included) and ``extra.json`` for plain values. The directory is written
under a temporary name and renamed into place, so a crash mid-save leaves the earlier
checkpoints as they were; the oldest ones beyond ``keep`` are removed only after that.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .optim import Optimizer
from .serialization import PathLike, _fsync_dir, _save, atomic_path, load, load_file, save

__all__ = ["latest_step", "load_checkpoint", "save_checkpoint"]

_STEP_DIR = re.compile(r"^step_(\d+)$")
_KEY_PREFIX = "jparam.prng_impl."


def _steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := _STEP_DIR.match(p.name)))


def latest_step(directory: PathLike) -> int | None:
    """The highest step saved in ``directory``, or ``None`` if there is none."""
    steps = _steps(Path(directory))
    return steps[-1] if steps else None


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
            except TypeError:
                raise TypeError(
                    f"save_checkpoint: extra {name!r} is a {type(value).__name__}; extras must "
                    "be arrays (PRNG keys included) or JSON values (numbers, strings, lists, "
                    "dicts)"
                ) from None
            plain[name] = value
    return arrays, meta, plain


def save_checkpoint(
    directory: PathLike,
    step: int,
    *,
    model: Any,
    opt: Optimizer | None = None,
    keep: int | None = 3,
    **extra: Any,
) -> Path:
    """Saves ``model``, ``opt`` and ``extra`` as step ``step`` of ``directory``; returns its path.

    Keeps the step just saved and the newest ``keep - 1`` others (``None`` keeps all). Saving a
    step that exists replaces it.
    """
    if not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be at least 1 (or None for all), got {keep}")
    arrays, meta, plain = _split_extra(extra)  # refuse bad extras before writing anything
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{int(step):09d}"
    # Not tempfile.mkdtemp: its owner-only mode (0o700) would stay with the step directory.
    tmp = directory / f".{final.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        save(tmp / "model.safetensors", model)
        if opt is not None:
            save(tmp / "optimizer.safetensors", opt.state_dict())
        if arrays:
            _save(tmp / "extra.safetensors", arrays, meta, None)  # "jparam.*" keys
        with atomic_path(tmp / "extra.json") as json_path:  # fsynced like the others
            json_path.write_text(json.dumps({"step": int(step), "extra": plain}))
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)  # left by a crash during a replacement
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        _fsync_dir(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None:  # the newest `keep` steps survive, and always the one just saved
        others = [s for s in _steps(directory) if s != int(step)]
        for old_step in others[: max(len(others) - (keep - 1), 0)]:
            shutil.rmtree(directory / f"step_{old_step:09d}", ignore_errors=True)
    return final


def load_checkpoint(
    directory: PathLike,
    *,
    model: Any,
    opt: Optimizer | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Loads a step (the latest by default) into copies of ``model`` and ``opt``, strictly.

    Returns ``{"step": ..., "model": ..., "opt": ..., **extra}`` with extras as they were saved
    (PRNG keys as typed keys again).
    """
    directory = Path(directory)
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise FileNotFoundError(f"no checkpoint (step_* directory) in {directory}")
    path = directory / f"step_{int(step):09d}"
    if not path.is_dir():
        raise FileNotFoundError(f"no step {step} in {directory}; saved: {_steps(directory)}")
    out: dict[str, Any] = {"step": int(step), "model": load(path / "model.safetensors", model)}
    if opt is not None:
        state, _ = load_file(path / "optimizer.safetensors")
        out["opt"] = opt.load_state_dict(state)
    if (path / "extra.safetensors").exists():
        arrays, meta = load_file(path / "extra.safetensors")
        for name, value in arrays.items():
            impl = meta.get(_KEY_PREFIX + name)
            out[name] = jax.random.wrap_key_data(value, impl=impl) if impl else value
    with open(path / "extra.json") as f:
        out.update(json.load(f)["extra"])
    return out
