"""Sharded checkpoints for large models: ``jp.save_sharded`` / ``jp.load_sharded`` via orbax.

Unlike `jp.save`, which gathers every array onto one host, each device writes and reads its own
shards of the same ``state_dict`` names, and a checkpoint restores into another sharding than
it was saved with. The guide (docs/guides/sharded-checkpoints.md) shows a whole example and
describes multi-host use, the on-disk format and what a crash mid-save leaves.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .optim import Optimizer
from .parameter import to_array
from .serialization import (
    CheckpointError,
    PathLike,
    SaveInfo,
    _fsync_dir,
    _is_flat_mapping,
    is_plain_arrays,
    rename_keys,
)
from .state import StateDictError, load_state_dict, match_state, state_dict

__all__ = ["load_sharded", "save_sharded"]

_NEW_SUFFIX = ".jparam-new"
_OLD_SUFFIX = ".jparam-old"
_TRASH_SUFFIX = ".jparam-trash"
# Files orbax writes into every checkpoint directory; `overwrite=True` only ever deletes a
# directory holding one of them, never an arbitrary directory named by mistake.
_ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "commit_success.txt")
_ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax writes NAME into NAME.orbax-checkpoint-tmp first
# Barrier names must be unique; every process makes the same calls, so the counters agree.
_barrier_ids = itertools.count()


def _orbax():
    try:
        import orbax.checkpoint as ocp
        from etils import epath
    except ImportError as e:
        raise ImportError(
            "jp.save_sharded / jp.load_sharded need orbax-checkpoint: "
            "pip install orbax-checkpoint  (or pip install 'jparam[orbax]')"
        ) from e
    return ocp, epath


def _path(directory: PathLike, epath: Any) -> Any:
    text = os.fspath(directory)
    # orbax wants absolute paths; URLs (gs://...) are absolute already.
    return epath.Path(text if "://" in text else os.path.abspath(text))


def _checkpointer(ocp: Any) -> Any:
    return ocp.Checkpointer(ocp.PyTreeCheckpointHandler())


def _named_values(tree: Any) -> dict[str, Any]:
    """What is saved of ``tree``, by name: its `state_dict`, an optimizer's state, or a dict."""
    if isinstance(tree, Optimizer):
        return tree.state_dict()
    return tree if _is_flat_mapping(tree) else state_dict(tree)


def _arrays_to_save(tree: Any) -> dict[str, Any]:
    values = _named_values(tree)
    if not values:
        raise ValueError(
            f"save_sharded: the {type(tree).__name__} holds no arrays to save (no parameters "
            "or buffers, or an optimizer without state, e.g. plain SGD); there is nothing to "
            "checkpoint"
        )
    out: dict[str, Any] = {}
    errors: list[str] = []
    for name, value in values.items():
        arr = to_array(value, what=name)
        if isinstance(arr, jax.ShapeDtypeStruct):
            errors.append(f"{name}: abstract value {arr} (jax.eval_shape output) has no data")
        elif isinstance(arr, jax.core.Tracer):
            errors.append(f"{name}: traced value; call save_sharded outside jax.jit/grad")
        elif isinstance(arr, jax.Array):
            out[name] = arr  # saved shard by shard, wherever it lives
        else:  # pragma: no cover - to_array returns jax arrays for everything else
            out[name] = np.asarray(arr)
    if errors:
        raise ValueError(
            f"save_sharded: {len(errors)} value(s) cannot be saved:\n  " + "\n  ".join(errors)
        )
    return out


def _is_orbax_checkpoint(path: Any) -> bool:
    return any((path / marker).exists() for marker in _ORBAX_MARKERS)


def _barrier(ocp: Any, what: str) -> None:
    ocp.multihost.sync_global_processes(f"jparam_save_sharded_{what}_{next(_barrier_ids)}")


def _side(path: Any, suffix: str) -> Any:
    return path.parent / f".{path.name}{suffix}"


def _fsync_parent(path: Any) -> None:
    if "://" not in os.fspath(path):
        _fsync_dir(Path(os.fspath(path)).parent)


def _discard(old: Any, path: Any) -> None:
    """Deletes ``old`` (the checkpoint ``path`` replaced) so that it stops counting at once:
    renamed to ``.NAME.jparam-trash``, then removed."""
    trash = _side(path, _TRASH_SUFFIX)
    old.rename(trash)
    trash.rmtree()


def _tidy(path: Any) -> None:
    """Undoes what a killed save of ``path`` left: the old checkpoint moved aside comes back
    (or goes, if the new one made it into place); stale staging and trash are removed."""
    old, trash = _side(path, _OLD_SUFFIX), _side(path, _TRASH_SUFFIX)
    if trash.exists():
        trash.rmtree()
    if old.exists():
        if path.exists():
            _discard(old, path)
        else:
            old.rename(path)
    for stale in (_side(path, _NEW_SUFFIX), _side(path, _NEW_SUFFIX + _ORBAX_TMP)):
        if stale.exists():
            stale.rmtree()


def save_sharded(directory: PathLike, tree: Any, *, overwrite: bool = False) -> SaveInfo:
    """Saves the `state_dict` of ``tree`` (or a ``{name: array}`` dict) to an orbax directory.

    Arrays stay where they are: each device's shard is written by its own host, nothing is
    gathered onto one device or host. Returns once the checkpoint is complete and committed;
    ``bytes`` in the returned `SaveInfo` is the arrays' total size.

    ``tree`` is a model, a `jp.Optimizer` (its state by name) or a ``{name: array}`` dict.
    ``directory`` must not exist yet (an empty directory is accepted). An existing checkpoint
    raises `FileExistsError` unless ``overwrite=True``; the new checkpoint is then written next
    to the old one (``.NAME.jparam-new``) and swapped in by two renames only when complete, so
    a failed or killed save keeps the old one loadable (docs/guides/sharded-checkpoints.md says
    what each crash leaves). Only a directory that holds an orbax checkpoint is ever replaced.

    Every process of a multi-host job must call this with the same arguments. Example::

        import tempfile

        model, ckpt = nn.Linear(4, 2, key=jax.random.key(0)), tempfile.mkdtemp()
        info = jp.save_sharded(f"{ckpt}/step_1000", model)
        info = jp.save_sharded(f"{ckpt}/step_1000", model, overwrite=True)
    """
    ocp, epath = _orbax()
    start = time.perf_counter()
    path = _path(directory, epath)
    arrays = _arrays_to_save(tree)
    nbytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays.values())
    primary = ocp.multihost.is_primary_host(0)
    if primary:
        _tidy(path)
    _barrier(ocp, "tidied")  # every process sees the tidied directory
    replace = False
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"save_sharded: {path} exists and is not a directory")
        if not any(True for _ in path.iterdir()):
            # An empty directory holds nothing to lose; orbax needs the name free to rename.
            _barrier(ocp, "checked")  # every process has looked before the primary changes it
            if primary:
                path.rmdir()
        elif not overwrite:
            raise FileExistsError(
                f"save_sharded: {path} already exists; pass overwrite=True to replace it "
                "(the old checkpoint is kept until the new one is complete)"
            )
        elif not _is_orbax_checkpoint(path):
            raise FileExistsError(
                f"save_sharded: {path} exists and is not an orbax checkpoint; refusing to "
                "delete it even with overwrite=True"
            )
        else:
            replace = True
    ckptr = _checkpointer(ocp)
    try:
        if not replace:
            ckptr.save(path, args=ocp.args.PyTreeSave(arrays))
        else:
            staging = path.parent / f".{path.name}{_NEW_SUFFIX}"
            old = path.parent / f".{path.name}{_OLD_SUFFIX}"
            # force: a stale staging directory can only be left by an earlier failed save.
            ckptr.save(staging, args=ocp.args.PyTreeSave(arrays), force=True)
            if primary:
                path.rename(old)  # from here until the next rename, `old` is the checkpoint
                staging.rename(path)
                _fsync_parent(path)
                _discard(old, path)
            _barrier(ocp, "swapped")
    finally:
        ckptr.close()
    local = "://" not in os.fspath(directory)
    return SaveInfo(Path(str(path)) if local else path, nbytes, time.perf_counter() - start)


class _Abstract(jax.ShapeDtypeStruct):
    """A saved array's shape and dtype, standing in for it while `match_state` validates."""

    __slots__ = ()

    def astype(self, dtype: Any) -> _Abstract:
        return _Abstract(self.shape, dtype)


def _saved_arrays(ocp: Any, ckptr: Any, path: Any) -> dict[str, _Abstract]:
    try:
        tree = ckptr.metadata(path).item_metadata
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable orbax checkpoint: {e}") from None
    tree = getattr(tree, "tree", tree)
    if tree is None:
        raise CheckpointError(f"{path} holds no orbax checkpoint metadata; not a checkpoint")
    if not isinstance(tree, Mapping) or not all(
        isinstance(k, str) and hasattr(v, "shape") and hasattr(v, "dtype") for k, v in tree.items()
    ):
        raise CheckpointError(
            f"{path} is not a jp.save_sharded checkpoint (expected a flat {{name: array}} "
            f"orbax PyTree checkpoint, found {type(tree).__name__})"
        )
    return {name: _Abstract(tuple(md.shape), md.dtype) for name, md in tree.items()}


def _sharding_of(value: Any) -> Any:
    sharding = getattr(value, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.Sharding) else None


def _target_shardings(
    expected: Mapping[str, Any], names: list[str], shardings: Any
) -> dict[str, jax.sharding.Sharding]:
    errors: list[str] = []
    if isinstance(shardings, Mapping):
        errors += [
            f"shardings[{k!r}]: no such parameter or buffer in the model"
            for k in shardings
            if k not in expected
        ]
    elif shardings is not None and not isinstance(shardings, jax.sharding.Sharding):
        raise TypeError(
            "shardings must be a jax.sharding.Sharding or a {name: Sharding} dict, got "
            f"{type(shardings).__name__}"
        )
    out: dict[str, jax.sharding.Sharding] = {}
    for name in names:
        if isinstance(shardings, Mapping) and name in shardings:
            sharding = shardings[name]
        elif isinstance(shardings, jax.sharding.Sharding):
            sharding = shardings
        else:
            sharding = _sharding_of(expected[name])
        if sharding is None:
            errors.append(
                f"{name}: no target sharding (like's value {expected[name]} has none); "
                "pass shardings= or give like's arrays a .sharding"
            )
            continue
        if not isinstance(sharding, jax.sharding.Sharding):
            errors.append(f"{name}: shardings gives a {type(sharding).__name__}, not a Sharding")
            continue
        shape = tuple(expected[name].shape)
        try:
            sharding.shard_shape(shape)
        except Exception as e:
            errors.append(f"{name}: sharding {sharding} does not fit shape {shape}: {e}")
            continue
        out[name] = sharding
    if errors:
        raise StateDictError(
            f"{len(errors)} sharding error(s) in load_sharded:\n  " + "\n  ".join(errors)
        )
    return out


def _expected(like: Any) -> dict[str, Any]:
    """The arrays (or abstract arrays) ``like`` expects, by the names they are saved under."""
    if isinstance(like, Optimizer) or is_plain_arrays(like):
        return dict(_named_values(like))
    return {n: v.value for n, v in state_dict(like, keep_vars=True).items()}


def _put_back(like: Any, values: dict[str, Any]) -> Any:
    """A copy of ``like`` holding ``values`` (a subset of its names)."""
    if isinstance(like, Optimizer):
        return like.load_state_dict(values, strict=False)
    if is_plain_arrays(like):
        return {**like, **values}
    return load_state_dict(like, values, strict=False)


def _existing(path: Any) -> Any:
    """``path``, or the old checkpoint a save killed between its two renames left aside."""
    if not path.exists():
        old = _side(path, _OLD_SUFFIX)
        if old.exists() and _is_orbax_checkpoint(old):
            return old
        raise FileNotFoundError(f"no sharded checkpoint at {path}")
    return path


def load_sharded(
    directory: PathLike,
    like: Any,
    shardings: jax.sharding.Sharding | Mapping[str, jax.sharding.Sharding] | None = None,
    *,
    strict: bool = True,
    rename: Mapping[str, str] | Callable[[str], str | None] | None = None,
) -> Any:
    """Loads a `save_sharded` checkpoint into a copy of ``like``, each array in its sharding.

    ``like`` is a concrete model or an abstract one from ``jax.eval_shape`` (leaves
    ``jax.ShapeDtypeStruct``), a `jp.Optimizer` (returns one with the loaded state) or a
    ``{name: array}`` dict (returns a dict). Each array is read straight into its target
    sharding, shard by shard; none is first assembled on one device. The target of a name is:
    ``shardings[name]`` when ``shardings`` is a dict, ``shardings`` itself when it is one
    `Sharding`, else the ``.sharding`` of ``like``'s array (an abstract leaf without one is an
    error). Values take ``like``'s dtype within the same kind, as in `jp.load_state_dict`.

    Everything is checked against the checkpoint's metadata before any array is read: missing
    and unexpected names (``strict=True``), shape and dtype-kind mismatches and unusable
    shardings are reported together, each with the parameter's name. ``strict=False`` returns
    ``(model, IncompatibleKeys)`` and loads the names both sides have. ``rename`` maps saved
    names to model names as in `jp.load`. Example::

        import tempfile
        from jax.sharding import NamedSharding, PartitionSpec as P

        MyModel = functools.partial(nn.Linear, 4, 8)
        mesh, ckpt = jax.make_mesh((jax.device_count(),), ("fsdp",)), tempfile.mkdtemp()
        jp.save_sharded(f"{ckpt}/step_1000", MyModel(key=jax.random.key(0)))

        abstract = jax.eval_shape(lambda: MyModel(key=jax.random.key(0)))
        model = jp.load_sharded(f"{ckpt}/step_1000", abstract, NamedSharding(mesh, P("fsdp")))
        model = jp.load_sharded(f"{ckpt}/step_1000", model)      # into model's own shardings
    """
    ocp, epath = _orbax()
    path = _existing(_path(directory, epath))
    ckptr = _checkpointer(ocp)
    try:
        saved = _saved_arrays(ocp, ckptr, path)
        model_to_file = rename_keys({n: n for n in saved}, rename)
        state = {name: saved[file] for name, file in model_to_file.items()}
        expected = _expected(like)
        values, incompatible = match_state(expected, state, strict, type(like).__name__)
        names = [n for n in expected if n in values]
        targets = _target_shardings(expected, names, shardings)
        item = {
            model_to_file[name]: jax.ShapeDtypeStruct(
                tuple(expected[name].shape), expected[name].dtype, sharding=targets[name]
            )
            for name in names
        }
        restored: Mapping[str, Any] = {}
        if item:
            restored = ckptr.restore(
                path,
                args=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=len(item) < len(saved),
                ),
            )
    finally:
        ckptr.close()
    new = _put_back(like, {name: restored[model_to_file[name]] for name in names})
    return new if strict else (new, incompatible)
