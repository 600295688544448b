"""Mixed precision: a dtype `Policy`, dynamic loss scaling, float32 master weights and gradients.

Training in bfloat16 or float16 halves the memory traffic, but float16 gradients underflow and
low-precision updates lose bits. This module keeps PyTorch's recipe: float32 master weights, a
forward and backward pass on a compute-dtype copy (`value_and_grad`), dynamic loss scaling
(`DynamicLossScale`, PyTorch's ``GradScaler``) and a bitwise skip of a step whose gradients
overflow (`update_if_finite`). It is built on `jp.astype`, `jp.value_and_grad`,
`jp.first_nonfinite` and `jp.Module`; the guide is ``docs/guides/mixed-precision.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from .filters import is_buffer
from .module import Module, field
from .monitoring import NonFinite, first_nonfinite
from .parameter import Buffer
from .partition import merge, split
from .paths import named_parameters, path_name
from .precision import astype, floating_dtype, is_floating
from .training import value_and_grad as _value_and_grad

__all__ = [
    "DynamicLossScale",
    "Policy",
    "select_tree",
    "take_buffers",
    "update_if_finite",
    "value_and_grad",
]

T = TypeVar("T")
M = TypeVar("M")

_DTYPE_ALIASES = {
    "f16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "f32": "float32",
    "float": "float32",
    "single": "float32",
    "full": "float32",
    "f64": "float64",
    "double": "float64",
}
_FIELD_ALIASES = {
    "p": "param",
    "param": "param",
    "params": "param",
    "c": "compute",
    "compute": "compute",
    "o": "output",
    "output": "output",
}


def _policy_dtype(value: Any, what: str) -> np.dtype:
    if isinstance(value, str):
        value = _DTYPE_ALIASES.get(value.strip().lower(), value.strip())
    return floating_dtype(value, what)


@dataclasses.dataclass(frozen=True, init=False, repr=False)
class Policy:
    """Which dtype parameters are stored in, computed in, and returned in.

    ``Policy(param="float32", compute="bfloat16", output="float32")``; dtypes may be names,
    short names (``f32``, ``bf16``, ``f16``, ``half``, ``full``) or dtype objects. A frozen
    dataclass, so immutable and hashable: it can be a static argument of ``jax.jit``::

        model, x = nn.Linear(4, 2, key=jax.random.key(0)), jnp.ones((8, 4))

        policy = jp.amp.Policy(compute=jnp.float16)
        policy = jp.amp.Policy.parse("params=float32,compute=bfloat16,output=float32")
        y = policy.cast_to_output(policy.cast_to_compute(model)(policy.cast_to_compute(x)))
        assert y.dtype == jnp.float32

    The casts are ``jp.astype(tree, dtype, include_buffers=False)``, as PyTorch's autocast:
    floating Parameters and plain floating arrays change dtype; Buffers keep theirs, so
    BatchNorm's running statistics stay in full precision; integer and bool arrays never change.
    """

    param: np.dtype
    compute: np.dtype
    output: np.dtype

    def __init__(
        self, param: Any = "float32", compute: Any = "float32", output: Any = "float32"
    ) -> None:
        object.__setattr__(self, "param", _policy_dtype(param, "Policy param dtype"))
        object.__setattr__(self, "compute", _policy_dtype(compute, "Policy compute dtype"))
        object.__setattr__(self, "output", _policy_dtype(output, "Policy output dtype"))

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """``"params=float32,compute=bfloat16,output=float32"`` (jmp's format) to a `Policy`.

        Keys are ``param``/``params``/``p``, ``compute``/``c``, ``output``/``o``; a key left out
        keeps its default (float32).
        """
        if not isinstance(spec, str):
            raise TypeError(f"Policy.parse expects a string, got {type(spec).__name__}")
        fields: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = part.partition("=")
            name = _FIELD_ALIASES.get(key.strip().lower())
            if not sep or name is None:
                raise ValueError(
                    f"Policy.parse({spec!r}): cannot read {part!r}; expected entries like "
                    "'params=float32', 'compute=bfloat16', 'output=float32'"
                )
            if name in fields:
                raise ValueError(f"Policy.parse({spec!r}): {name} is given twice")
            fields[name] = value.strip()
        return cls(**fields)

    def cast_to_param(self, tree: T) -> T:
        """``tree`` with floating Parameters and plain arrays in the param dtype."""
        return astype(tree, self.param, include_buffers=False)

    def cast_to_compute(self, tree: T) -> T:
        """``tree`` with floating Parameters and plain arrays in the compute dtype."""
        return astype(tree, self.compute, include_buffers=False)

    def cast_to_output(self, tree: T) -> T:
        """``tree`` with floating Parameters and plain arrays in the output dtype."""
        return astype(tree, self.output, include_buffers=False)

    def __repr__(self) -> str:
        names = (self.param.name, self.compute.name, self.output.name)
        return "Policy(param={}, compute={}, output={})".format(*names)


def _scalar_bool(pred: Any, what: str, expected: str = "a scalar bool") -> jax.Array:
    flag = jnp.asarray(pred)
    if flag.shape != () or flag.dtype != jnp.bool_:
        raise TypeError(f"{what} expects {expected}, got {flag.dtype}{list(flag.shape)}")
    return flag


def _finite(finite: Any, what: str) -> jax.Array:
    """``finite`` as a scalar bool array: a bool array, or a `jp.first_nonfinite` report."""
    if isinstance(finite, NonFinite):
        return finite.finite
    return _scalar_bool(finite, what, "a scalar bool array or a jp.first_nonfinite report")


class DynamicLossScale(Module):
    """PyTorch ``GradScaler``'s dynamic loss scale, as an immutable `jp.Module`.

    ``DynamicLossScale(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
    growth_interval=2000, min_scale=1.0)`` (PyTorch's defaults). After each step,
    ``adjust(finite)`` returns the next scale: on non-finite gradients it multiplies by
    ``backoff_factor`` (never below ``min_scale``) and restarts the count; after
    ``growth_interval`` finite steps in a row it multiplies by ``growth_factor`` (unless that
    overflows float32). PyTorch has no ``min_scale``: a scale that decays towards 0 only hides
    gradients that overflow whatever the scale; pass ``min_scale=0.0`` for PyTorch's behaviour.

    The factors are static fields; ``loss_scale`` (float32) and ``counter`` (int32) are Buffers:
    a new scale crosses ``jax.jit`` without retracing, `jp.grad` never trains it, and
    ``state_dict()``/``load_state_dict`` save and restore it, as ``GradScaler.state_dict()``
    does. Example::

        model = nn.Linear(4, 2, key=jax.random.key(0))
        loss_fn = lambda m: jnp.mean(m(jnp.ones((8, 4))) ** 2)

        @jax.jit
        def grads_and_scale(model, scaler):
            grads = scaler.unscale(jp.grad(lambda m: scaler.scale(loss_fn(m)))(model))
            return grads, scaler.adjust(jp.first_nonfinite(grads))

        scaler = jp.amp.DynamicLossScale()
        grads, scaler = grads_and_scale(model, scaler)
        assert list(scaler.state_dict()) == ["loss_scale", "counter"]
    """

    loss_scale: Buffer
    counter: Buffer
    growth_factor: float = field(static=True)
    backoff_factor: float = field(static=True)
    growth_interval: int = field(static=True)
    min_scale: float = field(static=True)

    def __init__(
        self,
        init_scale: Any = 2.0**16,
        *,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        min_scale: float = 1.0,
    ) -> None:
        if not growth_factor > 1.0:
            raise ValueError(f"growth_factor must be > 1, got {growth_factor!r}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"backoff_factor must be in (0, 1), got {backoff_factor!r}")
        if not isinstance(growth_interval, int) or isinstance(growth_interval, bool):
            raise TypeError(f"growth_interval must be an int, got {growth_interval!r}")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be >= 1, got {growth_interval}")
        if not min_scale >= 0.0:
            raise ValueError(f"min_scale must be >= 0, got {min_scale!r}")
        scale = jnp.asarray(init_scale)
        if scale.shape != () or not is_floating(scale):
            raise TypeError(f"init_scale must be a floating scalar, got {init_scale!r}")
        self.loss_scale = Buffer(scale.astype(jnp.float32))
        self.counter = Buffer(jnp.zeros((), jnp.int32))
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.min_scale = float(min_scale)

    def scale(self, tree: T) -> T:
        """Multiplies the floating arrays in ``tree`` (the loss) by the scale (float32 or wider)."""

        def mul(x: Any) -> Any:
            x = jnp.asarray(x)
            if not is_floating(x):
                raise TypeError(f"DynamicLossScale.scale: expected a floating loss, got {x.dtype}")
            return x.astype(jnp.promote_types(x.dtype, jnp.float32)) * self.loss_scale.value

        return tree_util.tree_map(mul, tree)

    def unscale(self, tree: T) -> T:
        """Multiplies every floating array in ``tree`` (gradients) by ``1 / scale``, keeping dtypes.

        Like PyTorch, by the float32 reciprocal; a power-of-two scale makes this exact.
        """
        inv = 1.0 / self.loss_scale.value

        def mul(x: Any) -> Any:
            if not is_floating(x):
                return x
            wide = jnp.promote_types(x.dtype, jnp.float32)
            return (x.astype(wide) * inv.astype(wide)).astype(x.dtype)

        return tree_util.tree_map(mul, tree)

    def adjust(self, grads_finite: Any) -> DynamicLossScale:
        """The scale for the next step, given whether this step's gradients were all finite.

        ``grads_finite`` is a scalar bool array or the gradients' `jp.first_nonfinite` report.
        """
        ok = _finite(grads_finite, "DynamicLossScale.adjust")
        scale, count = self.loss_scale.value, self.counter.value
        grown = scale * jnp.float32(self.growth_factor)
        grown = jnp.where(jnp.isfinite(grown), grown, scale)
        streak = count + 1
        at_interval = streak >= self.growth_interval
        backed_off = jnp.maximum(scale * jnp.float32(self.backoff_factor), self.min_scale)
        new_scale = jnp.where(ok, jnp.where(at_interval, grown, scale), backed_off)
        new_count = jnp.where(ok & ~at_interval, streak, 0)
        return self.replace(
            loss_scale=self.loss_scale.replace(new_scale.astype(jnp.float32)),
            counter=self.counter.replace(new_count.astype(jnp.int32)),
        )


def select_tree(pred: Any, on_true: T, on_false: T) -> T:
    """``on_true`` where the scalar bool ``pred`` holds, else ``on_false``, leaf by leaf.

    Both trees must have the same structure, shapes and dtypes (nothing is promoted); with a
    false ``pred`` the result is bitwise ``on_false``. Runs inside ``jax.jit`` without a branch.
    """
    pred = _scalar_bool(pred, "select_tree")
    new, new_def = tree_util.tree_flatten_with_path(on_true)
    old, old_def = tree_util.tree_flatten_with_path(on_false)
    if new_def != old_def:  # type: ignore[operator]  # jaxlib has no stubs for PyTreeDef
        raise ValueError(
            f"select_tree: the two trees differ in structure:\n  {new_def}\n  {old_def}"
        )
    out = []
    for (path, a), (_, b) in zip(new, old):
        a_dt, b_dt = jnp.result_type(a), jnp.result_type(b)
        if jnp.shape(a) != jnp.shape(b) or a_dt != b_dt:
            raise ValueError(
                f"select_tree: {path_name(path)!r} is {a_dt}{list(jnp.shape(a))} in one tree "
                f"and {b_dt}{list(jnp.shape(b))} in the other"
            )
        out.append(jnp.where(pred, a, b))
    return tree_util.tree_unflatten(new_def, out)


def update_if_finite(opt: Any, model: M, grads: Any, finite: Any) -> tuple[M, Any]:
    """``opt.update(model, grads)`` when ``finite``, else ``(model, opt)`` unchanged, bitwise.

    The skipped step of PyTorch's ``GradScaler.step``, inside ``jax.jit``: both outcomes are
    computed and one is selected, so there is no host sync and no branch. ``finite`` is a
    scalar bool array (from `value_and_grad`) or a `jp.first_nonfinite` report of ``grads``.
    Works with `jp.Optimizer` and anything with the same ``update(model, grads) -> (model, opt)``
    method.
    """
    ok = _finite(finite, "update_if_finite")
    new_model, new_opt = opt.update(model, grads)
    return select_tree(ok, (new_model, new_opt), (model, opt))


def take_buffers(model: M, updated: Any) -> M:
    """``model`` with its Buffers' values taken from ``updated`` (same structure), nothing else.

    Under mixed precision a module returned from the loss (``nn.stateful_call``'s new running
    statistics) holds compute-dtype parameter copies; this keeps the float32 master
    parameters of ``model`` and the new buffers of ``updated``::

        model = nn.Sequential(nn.Linear(4, 2, key=jax.random.key(0)), nn.BatchNorm1d(2))
        x, y = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), jnp.zeros((8, 2))
        policy, scaler = jp.amp.Policy(compute="float16"), jp.amp.DynamicLossScale()

        def loss_with_stats(model, x, y):
            out, new = nn.stateful_call(model, x)          # new running statistics
            return jnp.mean((out - y) ** 2), new

        @jax.jit
        def train_step(model, scaler, x, y):
            (loss, new), grads, scaler, finite = jp.amp.value_and_grad(
                loss_with_stats, policy, scaler, has_aux=True)(model, x, y)
            model = jp.amp.take_buffers(model, new)
            return model, scaler, grads

        model, scaler, grads = train_step(model, scaler, x, y)
        assert model[0].weight.dtype == model[1].running_mean.dtype == jnp.float32
    """
    buffers, rest = split(model, is_buffer)
    new_buffers, _ = split(updated, is_buffer)
    if set(buffers) != set(new_buffers):
        raise ValueError(
            "take_buffers: the two models have different buffers "
            f"(only in model: {sorted(buffers.keys() - new_buffers.keys()) or 'none'}; "
            f"only in updated: {sorted(new_buffers.keys() - buffers.keys()) or 'none'})"
        )
    for name, value in buffers.items():
        new = new_buffers[name]
        if jnp.shape(new) != jnp.shape(value) or jnp.result_type(new) != jnp.result_type(value):
            raise ValueError(
                f"take_buffers: buffer {name!r} is {jnp.result_type(value)}"
                f"{list(jnp.shape(value))} in model but {jnp.result_type(new)}"
                f"{list(jnp.shape(new))} in updated"
            )
    return merge(new_buffers, rest)


def _check_master_weights(model: Any, policy: Policy) -> None:
    wrong = [
        f"{name!r} is {p.dtype}"
        for name, p in named_parameters(model)
        if p.trainable and is_floating(p) and p.dtype != policy.param
    ]
    if wrong:
        raise TypeError(
            f"jp.amp.value_and_grad: the policy keeps trainable parameters in {policy.param}, "
            f"but {', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''}; cast the model once "
            "before training: model = policy.cast_to_param(model)"
        )


def value_and_grad(
    fn: Callable[..., Any],
    policy: Policy,
    loss_scale: DynamicLossScale | None = None,
    *,
    has_aux: bool = False,
    cast_inputs: bool = True,
) -> Callable[..., tuple[Any, Any, DynamicLossScale | None, jax.Array]]:
    """`jp.value_and_grad` under a mixed-precision ``policy``, with optional loss scaling.

    Returns ``wrapped(model, *args, **kwargs) -> (value, grads, new_loss_scale, finite)``:
    ``fn`` runs on ``policy.cast_to_compute(model)`` (and, with ``cast_inputs``, on floating
    arguments cast to the compute dtype; pass ``cast_inputs=False`` to keep, say, float32
    regression targets); ``value`` is the loss in the output dtype, unscaled (``(loss, aux)``
    with ``has_aux=True``); ``grads`` has the model's structure, in the param dtype (float32
    master weights give float32 gradients), unscaled; ``new_loss_scale`` is
    ``loss_scale.adjust(finite)`` (``None`` without a loss scale); ``finite`` is a scalar bool
    array, ``jp.first_nonfinite(grads).finite``. Trainable floating parameters must already be
    in the param dtype (a `TypeError` names those that are not).

    Build it inside the jitted step, as ``jax.value_and_grad`` usually is, so the current loss
    scale is traced rather than baked in as a constant.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"value_and_grad expects a jp.amp.Policy, got {type(policy).__name__}")
    if loss_scale is not None and not isinstance(loss_scale, DynamicLossScale):
        raise TypeError(
            f"loss_scale must be a jp.amp.DynamicLossScale or None, got {type(loss_scale).__name__}"
        )

    def scaled_loss(model: Any, /, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
        out = fn(policy.cast_to_compute(model), *args, **kwargs)
        loss, aux = out if has_aux else (out, None)
        loss = policy.cast_to_output(jnp.asarray(loss))
        scaled = loss if loss_scale is None else loss_scale.scale(loss)
        return scaled, (loss, aux)

    grad_fn = _value_and_grad(scaled_loss, has_aux=True)

    @functools.wraps(fn)
    def wrapped(model: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_master_weights(model, policy)
        if cast_inputs:
            args, kwargs = policy.cast_to_compute((args, kwargs))
        (_, (loss, aux)), grads = grad_fn(model, *args, **kwargs)
        if loss_scale is not None:
            grads = loss_scale.unscale(grads)
        finite = first_nonfinite(grads).finite
        new_scale = None if loss_scale is None else loss_scale.adjust(finite)
        return ((loss, aux) if has_aux else loss), grads, new_scale, finite

    return wrapped
