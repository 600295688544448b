"""Mixed precision: a dtype `Policy`, dynamic loss scaling, float32 master weights and gradients.

The model keeps its parameters in float32 (the *master weights*). Inside the loss, a copy cast
to the compute dtype (bfloat16 or float16) runs the forward and backward pass; the cast is part
of the differentiated function, so gradients come back in float32, shaped like the model, ready
for `jp.Optimizer` or optax::

    model = nn.Linear(4, 2, key=jax.random.key(0))
    opt = jp.Optimizer(optax.sgd(0.1), model)
    loss_fn = lambda model, x, y: jnp.mean((model(x) - y) ** 2)
    x, y = jnp.ones((8, 4)), jnp.zeros((8, 2))

    policy = jp.amp.Policy.parse("params=float32,compute=bfloat16,output=float32")

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(model, opt, x, y):
        loss, grads, _, finite = jp.amp.value_and_grad(loss_fn, policy)(model, x, y)
        model, opt = jp.amp.update_if_finite(opt, model, grads, finite)
        return model, opt, loss

    model, opt, loss = train_step(model, opt, x, y)
    assert model.weight.dtype == jnp.float32      # the master weights stay float32

float16 has a narrow range: gradients below about 6e-8 round to zero. Dynamic loss scaling
(PyTorch's ``GradScaler``) multiplies the loss by a large factor before the backward pass,
divides the gradients by it afterwards, and adapts the factor: it shrinks when gradients
overflow (the step is then skipped) and grows after a run of finite steps::

    model = nn.Linear(4, 2, key=jax.random.key(0))
    opt = jp.Optimizer(optax.sgd(0.1), model)
    loss_fn = lambda model, x, y: jnp.mean((model(x) - y) ** 2)
    x, y = jnp.ones((8, 4)), jnp.zeros((8, 2))
    policy = jp.amp.Policy(compute="float16")

    scaler = jp.amp.DynamicLossScale()           # 2**16, x2 every 2000 finite steps, /2 on Inf

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(model, opt, scaler, x, y):
        loss, grads, scaler, finite = jp.amp.value_and_grad(loss_fn, policy, scaler)(model, x, y)
        model, opt = jp.amp.update_if_finite(opt, model, grads, finite)
        return model, opt, scaler, loss

    model, opt, scaler, loss = train_step(model, opt, scaler, x, y)

Casting rule (`Policy.cast_to_compute` and friends): floating Parameters, trainable and frozen,
and plain floating arrays (inputs, constants) are cast; Buffers keep their dtype, so
BatchNorm's running statistics stay float32 and keep accumulating small updates (jparam's norm
layers compute statistics in float32 and return their input's dtype); integer and bool arrays
(token ids, step counters) are never cast. A module returned through ``has_aux`` (e.g. by
`nn.stateful_call`) holds compute-dtype parameters: keep only its buffers with `take_buffers`.

Why not ``jmp``: it installs and runs with this JAX, but it is unmaintained, its
``DynamicLossScale`` loses a custom ``min_loss_scale`` whenever it crosses ``jax.jit`` (the
field is not part of its pytree), it has one factor for growth and backoff where PyTorch has
two, and its casts cannot tell a Parameter from a Buffer. The pieces here are small.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

from .filters import is_buffer, trainable
from .parameter import Buffer, _Variable
from .partition import merge, split
from .paths import is_variable, named_parameters, path_name
from .training import model_shaped

__all__ = [
    "DynamicLossScale",
    "Policy",
    "all_finite",
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


def _floating_dtype(value: Any, what: str) -> np.dtype:
    if isinstance(value, str):
        value = _DTYPE_ALIASES.get(value.strip().lower(), value.strip())
    try:
        dt = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"{what} must be a floating dtype, got {value!r}") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise TypeError(f"{what} must be a floating dtype, got {dt}")
    if dt.itemsize == 8 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            f"{what} is {dt}, but 64-bit types are disabled in JAX (the arrays would silently "
            'be float32); call jax.config.update("jax_enable_x64", True) first'
        )
    return dt


def _is_floating_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic)) and jnp.issubdtype(
        x.dtype, jnp.floating
    )


def _cast(tree: T, dtype: np.dtype) -> T:
    """Casts floating Parameters and plain floating arrays to ``dtype``; Buffers are kept."""

    def visit(x: Any) -> Any:
        if isinstance(x, Buffer):
            return x
        if isinstance(x, _Variable):
            value = x.value
            if _is_floating_array(value) and value.dtype != dtype:
                return x._with_value(jnp.asarray(value).astype(dtype))
            return x
        if _is_floating_array(x) and x.dtype != dtype:
            return jnp.asarray(x).astype(dtype)
        return x

    return tree_util.tree_map(visit, tree, is_leaf=is_variable)


class Policy:
    """Which dtype parameters are stored in, computed in, and returned in.

    ``Policy(param="float32", compute="bfloat16", output="float32")``; dtypes may be names,
    short names (``f32``, ``bf16``, ``f16``, ``half``, ``full``) or dtype objects. A policy is
    immutable and hashable, so it can be a static argument of ``jax.jit``::

        model, x = nn.Linear(4, 2, key=jax.random.key(0)), jnp.ones((8, 4))

        policy = jp.amp.Policy(compute=jnp.float16)
        policy = jp.amp.Policy.parse("params=float32,compute=bfloat16,output=float32")
        y = policy.cast_to_output(policy.cast_to_compute(model)(policy.cast_to_compute(x)))
        assert y.dtype == jnp.float32

    See the module docstring for what each cast touches (Buffers never change).
    """

    __slots__ = ("compute", "output", "param")
    param: np.dtype
    compute: np.dtype
    output: np.dtype

    def __init__(self, param: Any = "float32", compute: Any = "float32", output: Any = "float32"):
        object.__setattr__(self, "param", _floating_dtype(param, "Policy param dtype"))
        object.__setattr__(self, "compute", _floating_dtype(compute, "Policy compute dtype"))
        object.__setattr__(self, "output", _floating_dtype(output, "Policy output dtype"))

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
            field = _FIELD_ALIASES.get(key.strip().lower())
            if not sep or field is None:
                raise ValueError(
                    f"Policy.parse({spec!r}): cannot read {part!r}; expected entries like "
                    "'params=float32', 'compute=bfloat16', 'output=float32'"
                )
            if field in fields:
                raise ValueError(f"Policy.parse({spec!r}): {field} is given twice")
            fields[field] = value.strip()
        return cls(**fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Policy is immutable; build a new one")

    def cast_to_param(self, tree: T) -> T:
        """``tree`` with floating Parameters and plain arrays in the param dtype."""
        return _cast(tree, self.param)

    def cast_to_compute(self, tree: T) -> T:
        """``tree`` with floating Parameters and plain arrays in the compute dtype."""
        return _cast(tree, self.compute)

    def cast_to_output(self, tree: T) -> T:
        """``tree`` with floating Parameters and plain arrays in the output dtype."""
        return _cast(tree, self.output)

    def _key(self) -> tuple:
        return (self.param, self.compute, self.output)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        names = (self.param.name, self.compute.name, self.output.name)
        return "Policy(param={}, compute={}, output={})".format(*names)


class DynamicLossScale:
    """PyTorch ``GradScaler``'s dynamic loss scale, as an immutable pytree.

    ``DynamicLossScale(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
    growth_interval=2000, min_scale=1.0)`` (PyTorch's defaults). After each step,
    ``adjust(finite)`` returns the next scale: on non-finite gradients it multiplies by
    ``backoff_factor`` (never below ``min_scale``) and restarts the count; after
    ``growth_interval`` finite steps in a row it multiplies by ``growth_factor`` (unless that
    overflows float32). ``scale`` and ``counter`` are the arrays (float32, int32); the factors
    are static. PyTorch has no ``min_scale``: a scale that decays towards 0 only hides
    gradients that overflow whatever the scale; pass ``min_scale=0.0`` for PyTorch's behaviour.

    Example::

        model = nn.Linear(4, 2, key=jax.random.key(0))
        loss_fn = lambda m: jnp.mean(m(jnp.ones((8, 4))) ** 2)

        @jax.jit
        def grads_and_scale(model, scaler):
            grads = scaler.unscale(jax.grad(lambda m: scaler.scale(loss_fn(m)))(model))
            scaler = scaler.adjust(jp.amp.all_finite(grads))
            return grads, scaler

        scaler = jp.amp.DynamicLossScale()
        grads, scaler = grads_and_scale(model, scaler)
    """

    __slots__ = (
        "backoff_factor",
        "counter",
        "growth_factor",
        "growth_interval",
        "loss_scale",
        "min_scale",
    )

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
        if scale.shape != () or not jnp.issubdtype(scale.dtype, jnp.floating):
            raise TypeError(f"init_scale must be a floating scalar, got {init_scale!r}")
        self.loss_scale = scale.astype(jnp.float32)
        self.counter = jnp.zeros((), jnp.int32)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = growth_interval
        self.min_scale = float(min_scale)

    def _aux(self) -> tuple:
        return (self.growth_factor, self.backoff_factor, self.growth_interval, self.min_scale)

    def scale(self, tree: T) -> T:
        """Multiplies the floating arrays in ``tree`` (the loss) by the scale (float32 or wider)."""

        def mul(x: Any) -> Any:
            x = jnp.asarray(x)
            if not jnp.issubdtype(x.dtype, jnp.floating):
                raise TypeError(f"DynamicLossScale.scale: expected a floating loss, got {x.dtype}")
            return x.astype(jnp.promote_types(x.dtype, jnp.float32)) * self.loss_scale

        return tree_util.tree_map(mul, tree)

    def unscale(self, tree: T) -> T:
        """Multiplies every floating array in ``tree`` (gradients) by ``1 / scale``, keeping dtypes.

        Like PyTorch, by the float32 reciprocal; a power-of-two scale makes this exact.
        """
        inv = 1.0 / self.loss_scale

        def mul(x: Any) -> Any:
            if not _is_floating_array(x):
                return x
            wide = jnp.promote_types(x.dtype, jnp.float32)
            return (x.astype(wide) * inv.astype(wide)).astype(x.dtype)

        return tree_util.tree_map(mul, tree)

    def adjust(self, grads_finite: Any) -> DynamicLossScale:
        """The scale for the next step, given whether this step's gradients were all finite."""
        finite = jnp.asarray(grads_finite)
        if finite.shape != () or finite.dtype != jnp.bool_:
            raise TypeError(
                "DynamicLossScale.adjust expects a scalar bool (jp.amp.all_finite(grads)), got "
                f"{finite.dtype}{list(finite.shape)}"
            )
        grown = self.loss_scale * jnp.float32(self.growth_factor)
        grown = jnp.where(jnp.isfinite(grown), grown, self.loss_scale)
        streak = self.counter + 1
        at_interval = streak >= self.growth_interval
        backed_off = jnp.maximum(self.loss_scale * jnp.float32(self.backoff_factor), self.min_scale)
        scale = jnp.where(finite, jnp.where(at_interval, grown, self.loss_scale), backed_off)
        counter = jnp.where(finite & ~at_interval, streak, 0).astype(jnp.int32)
        return _unflatten_scale(self._aux(), (scale.astype(jnp.float32), counter))

    def __repr__(self) -> str:
        return (
            f"DynamicLossScale(loss_scale={self.loss_scale!r}, counter={self.counter!r}, "
            f"growth_factor={self.growth_factor}, backoff_factor={self.backoff_factor}, "
            f"growth_interval={self.growth_interval}, min_scale={self.min_scale})"
        )


def _unflatten_scale(aux: tuple, children: Iterable[Any]) -> DynamicLossScale:
    out = object.__new__(DynamicLossScale)
    out.growth_factor, out.backoff_factor, out.growth_interval, out.min_scale = aux
    out.loss_scale, out.counter = children
    return out


tree_util.register_pytree_with_keys(
    DynamicLossScale,
    lambda s: (
        (
            (tree_util.GetAttrKey("loss_scale"), s.loss_scale),
            (tree_util.GetAttrKey("counter"), s.counter),
        ),
        s._aux(),
    ),
    _unflatten_scale,
    flatten_func=lambda s: ((s.loss_scale, s.counter), s._aux()),
)


def all_finite(tree: Any) -> jax.Array:
    """A scalar bool array: whether every floating array in ``tree`` is free of NaN and Inf.

    Integer and bool arrays are skipped; ``True`` for a tree without floating arrays. No host
    sync: use it inside the jitted step (`jp.check_finite` names the offending path instead).
    """
    leaves = [x for x in tree_util.tree_leaves(tree) if _is_floating_array(x)]
    if not leaves:
        return jnp.array(True)
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


def select_tree(pred: Any, on_true: T, on_false: T) -> T:
    """``on_true`` where the scalar bool ``pred`` holds, else ``on_false``, leaf by leaf.

    Both trees must have the same structure, shapes and dtypes (nothing is promoted); with a
    false ``pred`` the result is bitwise ``on_false``. Runs inside ``jax.jit`` without a branch.
    """
    pred = jnp.asarray(pred)
    if pred.shape != () or pred.dtype != jnp.bool_:
        raise TypeError(f"select_tree expects a scalar bool, got {pred.dtype}{list(pred.shape)}")
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
    computed and one is selected, so there is no host sync and no branch. Works with
    `jp.Optimizer` and anything with the same ``update(model, grads) -> (model, opt)`` method.
    """
    new_model, new_opt = opt.update(model, grads)
    return select_tree(finite, (new_model, new_opt), (model, opt))


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
        if p.trainable and jnp.issubdtype(p.dtype, jnp.floating) and p.dtype != policy.param
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
    ``loss_scale.adjust(finite)`` (``None`` without a loss scale); ``finite`` is a scalar bool,
    whether every gradient is finite. Trainable floating parameters must already be in the param
    dtype (a `TypeError` names those that are not).

    Build it inside the jitted step, as ``jax.value_and_grad`` usually is, so the current loss
    scale is traced rather than baked in as a constant.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"value_and_grad expects a jp.amp.Policy, got {type(policy).__name__}")
    if loss_scale is not None and not isinstance(loss_scale, DynamicLossScale):
        raise TypeError(
            f"loss_scale must be a jp.amp.DynamicLossScale or None, got {type(loss_scale).__name__}"
        )

    @functools.wraps(fn)
    def wrapped(model: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_master_weights(model, policy)
        params, rest = split(model, trainable)
        if cast_inputs:
            args, kwargs = policy.cast_to_compute((args, kwargs))

        def on_params(params: dict[str, Any]) -> tuple[Any, Any]:
            out = fn(policy.cast_to_compute(merge(params, rest)), *args, **kwargs)
            loss, aux = out if has_aux else (out, None)
            loss = policy.cast_to_output(jnp.asarray(loss))
            scaled = loss if loss_scale is None else loss_scale.scale(loss)
            return scaled, (loss, aux)

        (_, (loss, aux)), grads = jax.value_and_grad(on_params, has_aux=True)(params)
        if loss_scale is not None:
            grads = loss_scale.unscale(grads)
        finite = all_finite(grads)
        new_scale = None if loss_scale is None else loss_scale.adjust(finite)
        value = (loss, aux) if has_aux else loss
        return value, model_shaped(grads, rest), new_scale, finite

    return wrapped
