"""Retraces made visible: count a jitted function's traces and say why each new one happened.

``jax.jit`` recompiles whenever the static part of its arguments changes (for a jparam model:
classes, static fields, the training and trainable flags, metadata, shapes and dtypes).
`watch_retraces` wraps the Python function *before* ``jax.jit``, so its body runs only while JAX
traces: there it records a cheap signature of the arguments and explains each retrace in
jparam's terms; a cached call never enters it, so watching costs nothing per step. `no_retrace`
turns any new trace into a `RetraceError`. The guide is ``docs/guides/retraces.md``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
from jax import tree_util

from .modulebase import ModuleBase
from .parameter import Parameter
from .paths import is_variable, keyed_children

__all__ = ["RetraceError", "RetraceWarning", "Traces", "no_retrace", "watch_retraces"]

_SHOWN = 20  # differences listed in one report before "... and N more"
_HINTS = {
    "trainable": "a freeze or unfreeze retraces once, by design",
    "training": "train() and eval() trace once each, by design",
    "weak_type": "a Python scalar traces apart from a typed array: pass jnp.asarray(x, dtype)",
}

Path = tuple[str, ...]
Signature = dict[tuple[str, Path], dict[str, Any]]


class RetraceError(RuntimeError):
    """A watched function was traced again where that was refused (`no_retrace`, ``"raise"``)."""


class RetraceWarning(UserWarning):
    """A watched function was traced more often than its ``max_traces``."""


class Traces:
    """What `watch_retraces` saw: ``count`` traces, and a ``reports`` entry for each retrace.

    ``reports[i]`` explains trace ``i + 2``: the argument paths whose static part (classes,
    static fields, training flag, trainable flag, metadata, shapes, dtypes, static arguments)
    differ from the trace before. A trace that fails (refused by `no_retrace` or
    ``action="raise"``, or an error in the function) is not counted, as JAX traces again on the
    next call; a refusal's explanation is the error's message.
    """

    def __init__(self, name: str, params: list[str], max_traces: int | None, action: str) -> None:
        self.name = name
        self.count = 0
        self.reports: list[str] = []
        self.max_traces = max_traces
        self.action = action
        self._params = params
        self._last: Signature | None = None
        self._forbidden = 0  # depth of active `no_retrace` blocks

    def __repr__(self) -> str:
        return f"Traces({self.name}, count={self.count}, reports={len(self.reports)})"

    def _check(self, args: tuple, kwargs: dict) -> tuple[Signature, str | None]:
        """Runs as a trace starts: explains a retrace, and refuses it where asked to."""
        signature = _signature(self._params, args, kwargs)
        if self._last is None:
            return signature, None
        number = self.count + 1
        report = (
            f"{self.name} traced again (trace {number}); changed since trace {self.count}:\n"
            + _explain(self._last, signature)
        )
        if self._forbidden:
            raise RetraceError(f"{report}\n(refused: jp.no_retrace is active)")
        if self._over(number) and self.action == "raise":
            raise RetraceError(f"{report}\n(refused: max_traces={self.max_traces})")
        return signature, report

    def _commit(self, signature: Signature, report: str | None) -> None:
        """Runs once the trace succeeded: counts it, keeps the report, warns past the limit."""
        self.count += 1
        self._last = signature
        if report is None:
            return
        self.reports.append(report)
        if self._over(self.count):
            warnings.warn(f"{report}\n(max_traces={self.max_traces})", RetraceWarning, stacklevel=3)

    def _over(self, number: int) -> bool:
        return self.max_traces is not None and number > self.max_traces


def watch_retraces(
    fn: Callable | None = None,
    /,
    *,
    max_traces: int | None = 1,
    action: Literal["warn", "raise"] = "warn",
) -> Any:
    """Wraps ``fn`` (before ``jax.jit``) to count its traces and explain every retrace.

    Use it as ``jax.jit(jp.watch_retraces(step), ...)`` with any ``jax.jit`` options
    (``static_argnums``, ``donate_argnums``, ...), or as a decorator under ``@jax.jit``. The
    wrapper's body runs only while JAX traces, so a cached call costs nothing extra. Each trace
    records a signature of the arguments; each retrace appends to ``.traces.reports`` a list of
    what differs from the trace before, named by argument and jparam path. Past ``max_traces``
    (``None``: no limit) it warns `RetraceWarning` (``action="warn"``) or refuses the trace with
    `RetraceError` (``action="raise"``). ``.traces`` is a `Traces` object, readable on the
    wrapper and on the jitted function alike.
    """
    if fn is None:
        return functools.partial(watch_retraces, max_traces=max_traces, action=action)
    _check_options(max_traces, action)
    if hasattr(fn, "lower") and hasattr(fn, "__wrapped__"):
        raise TypeError(
            f"watch_retraces got {getattr(fn, '__name__', fn)!r}, which is already jitted: its "
            "traces happen inside jax.jit, out of reach. Wrap the Python function first, then "
            "jit the wrapper with the same options: "
            "jax.jit(jp.watch_retraces(step), donate_argnums=...)."
        )
    if not callable(fn):
        raise TypeError(f"watch_retraces expects a function, got {type(fn).__name__}")
    traces = Traces(getattr(fn, "__name__", repr(fn)), _positional_names(fn), max_traces, action)

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        pending = traces._check(args, kwargs)
        out = fn(*args, **kwargs)
        traces._commit(*pending)
        return out

    traced.traces = traces  # type: ignore[attr-defined]  # jax.jit copies the wrapper's attributes onto the jitted function
    return traced


@contextlib.contextmanager
def no_retrace(fn: Callable) -> Iterator[Traces]:
    """Inside the block, any new trace of watched ``fn`` raises `RetraceError` with the reason.

    ``fn`` is a `watch_retraces` wrapper, or the ``jax.jit`` of one. A function never traced
    before may trace once (its first compilation is not a retrace). Yields its `Traces`.
    """
    traces = _find_traces(fn)
    traces._forbidden += 1
    try:
        yield traces
    finally:
        traces._forbidden -= 1


def _find_traces(fn: Callable) -> Traces:
    """The `Traces` of a `watch_retraces` wrapper or of any function wrapping one."""
    seen: Any = fn
    while seen is not None:
        traces = getattr(seen, "traces", None)
        if isinstance(traces, Traces):
            return traces
        seen = getattr(seen, "__wrapped__", None)
    raise TypeError(
        f"{getattr(fn, '__name__', fn)!r} is not watched for retraces: wrap the Python function "
        "with jp.watch_retraces before jax.jit, e.g. step = jax.jit(jp.watch_retraces(step))."
    )


def _check_options(max_traces: Any, action: Any) -> None:
    bad = isinstance(max_traces, bool) or not isinstance(max_traces, (int, type(None)))
    if bad or (max_traces is not None and max_traces < 1):
        raise ValueError(f"max_traces must be an int >= 1 or None, got {max_traces!r}")
    if action not in ("warn", "raise"):
        raise ValueError(f"action must be 'warn' or 'raise', got {action!r}")


def _positional_names(fn: Callable) -> list[str]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C function without a signature
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


# -- signatures: one record per node, keyed by (argument, path) ----------------------------------


def _signature(params: list[str], args: tuple, kwargs: dict) -> Signature:
    """Records every argument; one passed by keyword is named as its positional parameter."""
    out: Signature = {}
    for i, arg in enumerate(args):
        label = f"argument {i} ({params[i]})" if i < len(params) else f"argument {i}"
        _walk(label, (), arg, out)
        out[label, ()]["passed"] = "by position"
    for name, arg in kwargs.items():
        label = f"argument {params.index(name)} ({name})" if name in params else f"argument {name}"
        _walk(label, (), arg, out)
        out[label, ()]["passed"] = "by keyword"
    return out


def _walk(label: str, path: Path, node: Any, out: Signature) -> None:
    """Records ``node`` and everything under it: what ``jax.jit`` keys its cache on."""
    if is_variable(node):
        out[label, path] = _variable_record(node)
        return
    if isinstance(node, ModuleBase):
        out[label, path] = _module_record(node)
    else:
        out[label, path] = _other_record(node)
    for name, _, child in keyed_children(node):
        _walk(label, (*path, name), child, out)


def _variable_record(v: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"type": type(v).__name__}
    if isinstance(v, Parameter):
        record["trainable"] = v.trainable
    record["metadata"] = v.metadata
    # the raw child, as jax.jit sees it (reading `.value` in a trace adds a stop_gradient)
    (value,), _ = tree_util.tree_flatten(v, is_leaf=lambda x: x is not v)
    record.update(_leaf_record(value))
    return record


def _module_record(m: ModuleBase) -> dict[str, Any]:
    d = m.__dict__
    record: dict[str, Any] = {"type": type(m).__qualname__, "training": d.get("training")}
    for name in type(m)._jp_static:
        record[f"static field {name}"] = d[name]
    return record


def _other_record(node: Any) -> dict[str, Any]:
    if node is None or hasattr(node, "aval") or isinstance(node, np.ndarray):
        return _leaf_record(node)
    if type(node) in (list, tuple, dict):
        return {"type": type(node).__name__}
    leaves, treedef = tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if tree_util.treedef_is_leaf(treedef) and leaves:
        return _leaf_record(node)
    return {"type": type(node).__qualname__, "structure": treedef}


def _leaf_record(x: Any) -> dict[str, Any]:
    """Tracers and arrays by shape and dtype; anything else (a static argument) by value."""
    aval = getattr(x, "aval", None)
    if aval is not None and hasattr(aval, "shape") and hasattr(aval, "dtype"):
        return {"shape": tuple(aval.shape), "dtype": aval.dtype, "weak_type": aval.weak_type}
    if isinstance(x, np.ndarray):
        return {"shape": x.shape, "dtype": x.dtype, "weak_type": False}
    return {"value": x}


# -- reports -------------------------------------------------------------------------------------


def _explain(old: Signature, new: Signature) -> str:
    """Lines naming each difference, identical changes at several paths grouped into one."""
    groups: dict[tuple[str, str], list[str]] = {}
    for label, path, text in _differences(old, new):
        groups.setdefault((label, text), []).append(".".join(path) or "(root)")
    if not groups:
        return (
            "  no argument differs: the jitted function itself may be new (jax.jit called "
            "again each step?), or an input's sharding or device, or a JAX setting changed"
        )
    lines = [_line(label, names, text) for (label, text), names in groups.items()]
    more = len(lines) - _SHOWN
    return "\n".join(lines[:_SHOWN] + ([f"  ... and {more} more"] if more > 0 else []))


def _line(label: str, names: list[str], text: str) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"  {label}: {text}" if names == ["(root)"] else f"  {label}: {shown}: {text}"


def _differences(old: Signature, new: Signature) -> Iterator[tuple[str, Path, str]]:
    replaced: set[tuple[str, Path]] = set()  # nodes added, removed or of another kind
    for key in _union(old, new):
        label, path = key
        if path and (label, path[:-1]) in replaced:
            replaced.add(key)  # its parent's line covers it
            continue
        a, b = old.get(key), new.get(key)
        if (
            a is None
            or b is None
            or a.keys() != b.keys()
            or not _same(a.get("type"), b.get("type"))
        ):
            replaced.add(key)
            before = "absent" if a is None else _kind(a)
            after = "absent" if b is None else _kind(b)
            yield label, path, f"{before} -> {after}"
            continue
        for attr in a:
            if not _same(a[attr], b[attr]):
                hint = f" ({_HINTS[attr]})" if attr in _HINTS else ""
                show = str if attr == "passed" else _show
                yield label, path, f"{attr} {show(a[attr])} -> {show(b[attr])}{hint}"


def _union(old: dict, new: dict) -> list:
    """The keys of both, in order: ``old``'s first."""
    return [*old, *(k for k in new if k not in old)]


def _kind(record: dict[str, Any]) -> str:
    """What a node is, for a line saying it became something else."""
    if "type" in record:
        return str(record["type"])
    if "shape" in record:
        return f"array {_show(record['dtype'])}{list(record['shape'])}"
    return _show(record["value"])


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(type(a) is type(b) and a == b)
    except Exception:  # an object whose == is not a bool (an array) or fails
        return False


def _show(x: Any) -> str:
    if isinstance(x, np.dtype) or type(x).__name__.endswith("DType"):
        return str(x)
    if callable(x) and hasattr(x, "__qualname__"):
        return f"{getattr(x, '__module__', '')}.{x.__qualname__}".lstrip(".")
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."
