"""Constraints on parameters: reparametrizations (the model sees ``f(raw)``) and projections.

Two kinds, as in PyTorch practice:

- **Reparametrization** (PyTorch's ``torch.nn.utils.parametrize``): ``jp.parametrize`` puts a
  `Parametrized` node where a Parameter was. It holds the raw Parameter(s) and a
  `Parametrization` (a small `jp.Module`, possibly with Buffers), and behaves like the array
  ``f(raw)``: layers read ``.value`` (or use it in ``@``, ``+``, ``jnp`` functions) and get the
  constrained weight; gradients flow to the raw values, which are what ``named_parameters``,
  ``jp.split``, optimizers, ``freeze`` and ``state_dict`` see (``fc.weight.original``;
  ``fc.weight.original.0``/``.1`` for weight norm's ``g``/``v``; buffers such as spectral
  norm's ``fc.weight.parametrization.u``). A model without parametrizations pays nothing: this
  file touches neither `Parameter` nor the Module flatten path.
- **Projection** after an optimizer step: ``Parameter(w, project=fn)`` declares one and
  ``jp.project(model)`` applies every declared ``fn`` (jit-compatible, pure).

::

    from collections import OrderedDict

    fc, head = nn.Linear(4, 4, key=jax.random.key(0)), nn.Linear(4, 2, key=jax.random.key(1))
    model = nn.Sequential(OrderedDict(fc=fc, relu=nn.ReLU(), head=head))
    loss_fn = lambda model, x, y: jnp.mean((model(x) - y) ** 2)
    x, y = jnp.ones((8, 4)), jnp.zeros((8, 2))

    model = jp.parametrize(model, "fc.weight", jp.constraints.orthogonal())
    model = jp.parametrize(model, "head.weight", jp.constraints.weight_norm())
    w = jp.Parameter(jnp.ones((4, 3)), project=jp.constraints.nonnegative())
    opt = jp.Optimizer(optax.sgd(1e-3), model)

    @jax.jit
    def train_step(model, opt, x, y):
        loss, grads = jp.value_and_grad(loss_fn)(model, x, y)
        model, opt = opt.update(model, grads)
        return jp.project(model), opt, loss          # projections after the step

    model, opt, loss = train_step(model, opt, x, y)
    torch_sd = jp.constraints.remove(model).state_dict()   # effective weights, PyTorch's names
    assert list(torch_sd) == ["fc.weight", "fc.bias", "head.weight", "head.bias"]

Registering keeps the weight where it can: the raw values come from the parametrization's
``right_inverse`` (softplus⁻¹ for `positive`, ``g = ‖v‖`` for `weight_norm`, a QR base for
`orthogonal`), so ``f(raw)`` equals the old weight whenever it already met the constraint.

Spectral norm updates its power-iteration vectors while the model trains, like BatchNorm's
running statistics: in training mode run the model through ``nn.stateful_call`` (which returns
the model with the new vectors); in evaluation mode the stored vectors are used as they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import expm

from .module import Module, field
from .parameter import ArrayNode, Buffer, Parameter, dtype_shape
from .paths import get_at, map_variables, named_parameters, update_at, walk
from .sharding import axes_for_shape
from .stateful import update_state
from .surgery import selected_names

__all__ = [
    "Parametrization",
    "Parametrized",
    "clip",
    "nonnegative",
    "normalize",
    "orthogonal",
    "orthogonalize",
    "parametrize",
    "positive",
    "project",
    "remove",
    "spectral_norm",
    "unit_norm",
    "weight_norm",
]

T = TypeVar("T")


# -- reparametrization --------------------------------------------------------------------------


class Parametrization(Module):
    """Base class for reparametrizations: ``__call__(*originals)`` returns the weight.

    Subclass it for your own (it is a `jp.Module`: hyperparameters are static fields, state
    is Buffers). ``right_inverse(weight)`` returns the raw value(s) that produce ``weight``
    (default: ``weight`` itself; a tuple means several raw Parameters, as in PyTorch), and
    ``setup(weight)`` returns a copy with any Buffers sized for ``weight``::

        class Symmetric(jp.constraints.Parametrization):
            def __call__(self, x):
                return jnp.triu(x) + jnp.triu(x, 1).T

        fc = jp.parametrize(nn.Linear(4, 4, key=jax.random.key(0)), "weight", Symmetric())
        assert jnp.array_equal(fc.weight.value, fc.weight.value.T)

    A plain function passed to `parametrize` is wrapped as one with the identity inverse.
    """

    if TYPE_CHECKING:
        # A subclass takes as many arrays as the weight has raw values (its own signature).
        def __call__(self, *originals: Any, **kwargs: Any) -> jax.Array: ...

    else:

        def __call__(self, *originals: jax.Array) -> jax.Array:
            raise NotImplementedError(f"{type(self).__name__} must define __call__(*originals)")

    def right_inverse(self, weight: jax.Array) -> jax.Array | tuple[jax.Array, ...]:
        """The raw value(s) whose image is ``weight`` (or the nearest the map can reach)."""
        return weight

    def setup(self, weight: jax.Array) -> Parametrization:
        """A copy prepared for ``weight`` (Buffers created); called once by `parametrize`."""
        return self


class Parametrized(Module, ArrayNode):
    """A weight computed from raw Parameters: ``parametrization(*original)``; array-like.

    Made by `parametrize`. ``.value`` is the effective weight, and the node supports what a
    Parameter supports as an array (operators, ``jnp`` functions, ``.shape``, ``.T``,
    indexing), so layers use it unchanged. Its raw Parameters are ``original`` (one Parameter,
    or a tuple for several); the map and its Buffers are ``parametrization``.
    """

    original: Any
    parametrization: Parametrization

    def __init__(self, original: Any, parametrization: Parametrization) -> None:
        self.original = original
        self.parametrization = parametrization

    @property
    def value(self) -> jax.Array:
        """The effective weight ``parametrization(*raw values)``."""
        o = self.original
        raws = [x.value for x in o] if type(o) is tuple else [o.value]
        return self.parametrization(*raws)

    def _abstract(self) -> jax.ShapeDtypeStruct:
        # Shape and dtype without running a state update (spectral norm in training mode).
        node = self.eval() if self.training else self
        return jax.eval_shape(lambda n: n.value, node)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._abstract().shape)

    @property
    def dtype(self) -> Any:
        return self._abstract().dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _with_context(e: Exception, where: str) -> Exception:
    # The base class, not type(e): some subclasses (JAX's) take other constructor arguments.
    return (ValueError if isinstance(e, ValueError) else TypeError)(f"{where}: {e}")


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer) and not isinstance(x, jax.ShapeDtypeStruct)


def _need_matrix(what: str, weight: Any) -> None:
    if jnp.ndim(weight) < 2:
        raise ValueError(
            f"{what} needs a matrix or a batch of matrices (ndim >= 2), got {dtype_shape(weight)}"
        )


def _need_float(what: str, weight: Any) -> None:
    if not jnp.issubdtype(weight.dtype, jnp.floating):
        raise TypeError(f"{what} needs a floating weight, got {dtype_shape(weight)}")


def _tall(x: jax.Array) -> tuple[jax.Array, bool]:
    wide = x.shape[-2] < x.shape[-1]
    return (jnp.swapaxes(x, -1, -2) if wide else x), wide


class _Orthogonal(Parametrization):
    base: Buffer | None
    orthogonal_map: str = field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        # JAX's expm and solve refuse half precision: compute in float32, round once at the end.
        dtype = x.dtype
        x, wide = _tall(x.astype(jnp.promote_types(dtype, jnp.float32)))
        n, k = x.shape[-2:]
        # The lower triangle (with zeros appended to make it square) minus its transpose is a
        # skew-symmetric generator; only its first k columns are free, as in PyTorch.
        a = jnp.tril(x)
        if n != k:
            a = jnp.concatenate([a, jnp.zeros((*x.shape[:-1], n - k), x.dtype)], axis=-1)
        a = a - jnp.swapaxes(a, -1, -2)
        if self.orthogonal_map == "matrix_exp":
            q = expm(a)
        else:  # Cayley: (I - A/2)^-1 (I + A/2)
            eye = jnp.eye(n, dtype=x.dtype)
            q = jnp.linalg.solve(eye - a / 2, eye + a / 2)
        assert self.base is not None  # set by setup()
        q = self.base.value.astype(q.dtype) @ q[..., :k]
        return (jnp.swapaxes(q, -1, -2) if wide else q).astype(dtype)

    def setup(self, weight: jax.Array) -> _Orthogonal:
        _need_matrix("orthogonal()", weight)
        _need_float("orthogonal()", weight)
        tall, _ = _tall(weight.astype(jnp.promote_types(weight.dtype, jnp.float32)))
        k = tall.shape[-1]
        q, r = jnp.linalg.qr(tall, mode="complete")
        # Signs fixed so that diag(R) > 0: an orthogonal weight is then its own QR factor.
        d = jnp.sign(jnp.diagonal(r[..., :k, :], axis1=-2, axis2=-1))
        d = jnp.where(d == 0, 1, d).astype(q.dtype)
        q = q.at[..., :k].multiply(d[..., None, :])
        return self.replace(base=Buffer(q.astype(weight.dtype)))

    def right_inverse(self, weight: jax.Array) -> jax.Array:
        return jnp.zeros_like(weight)  # generator 0: the weight is the base's first columns


def orthogonal(orthogonal_map: str = "matrix_exp") -> Parametrization:
    """Orthogonal weight (``W Wᵀ = I`` if wide or square, ``Wᵀ W = I`` if tall), any raw value.

    PyTorch's ``parametrizations.orthogonal`` with ``use_trivialization=True``: the weight is
    ``base @ exp(A)[:, :k]`` (or the Cayley map ``(I - A/2)⁻¹(I + A/2)`` with
    ``orthogonal_map="cayley"``), where ``A`` is the skew-symmetric matrix built from the raw
    value's lower triangle and ``base`` a Buffer holding the weight's QR factor at registration
    (completed to a square orthogonal matrix). The raw value starts at zero, so a weight that
    was orthogonal stays exactly what it was. Batches of matrices (ndim > 2) are supported.
    """
    if orthogonal_map not in ("matrix_exp", "cayley"):
        raise ValueError(f"orthogonal_map must be 'matrix_exp' or 'cayley', got {orthogonal_map!r}")
    return _Orthogonal(base=None, orthogonal_map=orthogonal_map)


class _Positive(Parametrization):
    kind: str = field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.softplus(x) if self.kind == "softplus" else jnp.exp(x)

    def right_inverse(self, weight: jax.Array) -> jax.Array:
        _need_float("positive()", weight)
        if _is_concrete(weight) and not bool(jnp.all(weight > 0)):
            bad = int(jnp.sum(~(weight > 0)))
            raise ValueError(
                f"positive() needs a weight > 0 to start from; {bad} of {weight.size} "
                f"entries are not (min {float(jnp.min(weight))}); set a positive value first"
            )
        if self.kind == "exp":
            return jnp.log(weight)
        return weight + jnp.log(-jnp.expm1(-weight))  # softplus⁻¹, stable for large weights


def positive(kind: str = "softplus") -> Parametrization:
    """Positive weight: ``softplus(raw)`` (default) or ``exp(raw)``.

    Softplus grows linearly, so large weights keep ordinary gradients; ``exp`` suits scales
    spanning orders of magnitude. Registration needs a positive weight (``raw = f⁻¹(w)``).
    """
    if kind not in ("softplus", "exp"):
        raise ValueError(f"positive(kind=...) must be 'softplus' or 'exp', got {kind!r}")
    return _Positive(kind=kind)


def _axes(axis: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        return (int(axis),)
    if isinstance(axis, Sequence) and all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axis
    ):
        return tuple(int(a) for a in axis)
    raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")


def _check_axes(what: str, axes: tuple[int, ...], x: Any) -> None:
    ndim = jnp.ndim(x)
    if not all(-ndim <= a < ndim for a in axes):
        raise ValueError(f"{what}: axis {axes} is out of range for {dtype_shape(x)}")


def _normalize(x: jax.Array, axes: tuple[int, ...], eps: float) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))
    return x / jnp.maximum(norm, eps)


class _UnitNorm(Parametrization):
    axis: tuple[int, ...] = field(static=True)
    eps: float = field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return _normalize(x, self.axis, self.eps)

    def setup(self, weight: jax.Array) -> _UnitNorm:
        _need_float("unit_norm()", weight)
        _check_axes("unit_norm()", self.axis, weight)
        return self


def unit_norm(axis: int | Sequence[int] = -1, eps: float = 1e-12) -> Parametrization:
    """Unit-norm rows: ``raw / ‖raw‖`` over ``axis`` (the last: each row of a matrix).

    ``axis=(1, 2, 3)`` normalises each output filter of a ``Conv2d`` weight. The raw value
    starts as the weight itself.
    """
    return _UnitNorm(axis=_axes(axis), eps=float(eps))


class _WeightNorm(Parametrization):
    dim: int | None = field(static=True)

    def _reduce(self, ndim: int) -> tuple[int, ...]:
        if self.dim is None:
            return tuple(range(ndim))
        d = self.dim % ndim
        return tuple(a for a in range(ndim) if a != d)

    def __call__(self, g: jax.Array, v: jax.Array) -> jax.Array:
        norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=self._reduce(v.ndim), keepdims=True))
        return v * (g / norm)

    def setup(self, weight: jax.Array) -> _WeightNorm:
        _need_float("weight_norm()", weight)
        if self.dim is not None and not -weight.ndim <= self.dim < weight.ndim:
            raise ValueError(
                f"weight_norm(dim={self.dim}) is out of range for {dtype_shape(weight)}"
            )
        return self

    def right_inverse(self, weight: jax.Array) -> tuple[jax.Array, jax.Array]:
        axes = self._reduce(weight.ndim)
        g = jnp.sqrt(jnp.sum(jnp.square(weight), axis=axes, keepdims=True))
        return g, weight


def weight_norm(dim: int | None = 0) -> Parametrization:
    """Weight normalisation ``w = g · v / ‖v‖`` (Salimans & Kingma), PyTorch's ``weight_norm``.

    Raw parameters ``original.0`` = ``g`` (shape of the weight with every axis but ``dim``
    reduced to 1, e.g. ``(out, 1)`` for ``Linear``) and ``original.1`` = ``v``, in PyTorch's
    ``parametrizations.weight.original0/original1`` order and shapes; ``dim=None`` uses one
    norm for the whole tensor. Registration sets ``g = ‖w‖``, ``v = w``.
    """
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
        raise TypeError(f"weight_norm(dim=...) must be an int or None, got {dim!r}")
    return _WeightNorm(dim=dim)


class _SpectralNorm(Parametrization):
    u: Buffer | None
    v: Buffer | None
    key: jax.Array | None = field(plain_arrays=True)  # a PRNG key (legacy uint32 ones too)
    n_power_iterations: int = field(static=True)
    eps: float = field(static=True)
    dim: int = field(static=True)

    def _matrix(self, w: jax.Array) -> jax.Array:
        w = jnp.moveaxis(w, self.dim % w.ndim, 0)
        return w.reshape(w.shape[0], -1)

    def _power(self, mat: jax.Array, u: jax.Array, v: jax.Array, n: int) -> tuple:
        mat = jax.lax.stop_gradient(mat)  # the vectors are state, not part of the gradient
        for _ in range(n):
            u = _normalize(mat @ v, (0,), self.eps)
            v = _normalize(mat.T @ u, (0,), self.eps)
        return u, v

    def _scaled(self, w: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
        return w / jnp.vdot(u, self._matrix(w) @ v)

    def __call__(self, w: jax.Array) -> jax.Array:
        if w.ndim == 1:
            return _normalize(w, (0,), self.eps)
        if not self.training:
            assert self.u is not None and self.v is not None  # set by setup()
            return self._scaled(w, self.u.value, self.v.value)

        def step(m: _SpectralNorm) -> tuple[jax.Array, _SpectralNorm]:
            assert m.u is not None and m.v is not None  # set by setup()
            u, v = m._power(m._matrix(w), m.u.value, m.v.value, m.n_power_iterations)
            new = m.replace(u=m.u._with_value(u), v=m.v._with_value(v))
            return m._scaled(w, u, v), new

        return update_state(self, step)

    def setup(self, weight: jax.Array) -> _SpectralNorm:
        _need_float("spectral_norm()", weight)
        if not -weight.ndim <= self.dim < max(weight.ndim, 1):
            raise ValueError(
                f"spectral_norm(dim={self.dim}) is out of range for {dtype_shape(weight)}"
            )
        if weight.ndim == 1:
            return self.replace(key=None)
        if self.key is None:
            raise TypeError(
                "this spectral_norm() was already set up for another weight; make a new one "
                "with spectral_norm(key=...)"
            )
        mat = self._matrix(weight)
        ku, kv = jax.random.split(self.key)
        u = _normalize(jax.random.normal(ku, mat.shape[:1], mat.dtype), (0,), self.eps)
        v = _normalize(jax.random.normal(kv, mat.shape[1:], mat.dtype), (0,), self.eps)
        u, v = self._power(mat, u, v, 15)  # start near the top singular pair, as PyTorch does
        return self.replace(u=Buffer(u), v=Buffer(v), key=None)


def spectral_norm(
    n_power_iterations: int = 1, eps: float = 1e-12, dim: int = 0, *, key: jax.Array
) -> Parametrization:
    """Spectral normalisation ``w / sigma(w)`` (Miyato et al.), PyTorch's ``spectral_norm``.

    ``sigma`` is estimated by power iteration on the weight seen as a matrix (axis ``dim`` first,
    the rest flattened). The vectors ``u`` and ``v`` are Buffers (``weight.parametrization.u``/
    ``.v``) started from ``key`` and 15 iterations. In training mode each use of the weight
    runs ``n_power_iterations`` more and records the new vectors for ``nn.stateful_call``
    (calling it outside one raises, as for BatchNorm); in evaluation mode they are used as
    stored. A 1-D weight is simply divided by its norm.
    """
    if not isinstance(n_power_iterations, int) or n_power_iterations <= 0:
        raise ValueError(f"n_power_iterations must be a positive int, got {n_power_iterations!r}")
    if key is None:
        raise TypeError("spectral_norm needs a PRNG key to start power iteration: key=...")
    return _SpectralNorm(
        u=None, v=None, key=key, n_power_iterations=n_power_iterations, eps=float(eps), dim=dim
    )


class _Function(Parametrization):
    fn: Callable[..., jax.Array] = field(static=True)

    def __call__(self, *originals: jax.Array) -> jax.Array:
        return self.fn(*originals)

    def __repr__(self) -> str:
        return f"Parametrization({getattr(self.fn, '__name__', self.fn)!r})"


def _as_parametrization(constraint: Any) -> Parametrization:
    if isinstance(constraint, Parametrization):
        return constraint
    if callable(constraint) and not isinstance(constraint, (Module, type)):
        return _Function(fn=constraint)
    raise TypeError(
        "parametrize expects a jp.constraints.Parametrization (e.g. "
        "jp.constraints.orthogonal()) or a function raw -> weight, got "
        f"{type(constraint).__name__} {constraint!r:.60}"
    )


def _mode_at(tree: Any, name: str) -> bool:
    """The training flag of the module nearest above ``name`` (True if there is none)."""
    segs = name.split(".")
    for depth in range(len(segs) - 1, -1, -1):
        node = get_at(tree, ".".join(segs[:depth])) if depth else tree
        if isinstance(node, Module):
            return node.training
    return True


def _raw_meta(weight: Parameter, raw: Any) -> dict[str, Any]:
    """The weight's metadata for one raw value; logical ``axes`` follow the raw's shape
    (`jp.sharding.axes_for_shape`: an axis reduced to size 1, weight norm's ``g``, is
    replicated; a raw value of another rank gets no ``axes`` at all)."""
    meta = weight.metadata
    if meta.get("axes") is not None:
        axes = axes_for_shape(meta["axes"], tuple(weight.shape), tuple(jnp.shape(raw)))
        if axes is None:
            del meta["axes"]
        else:
            meta["axes"] = axes
    return meta


def _wrap(node: Any, constraint: Parametrization, name: str, mode: bool) -> Parametrized:
    where = f"parametrize({name!r})" if name else "parametrize(parameter)"
    original: Parametrized | Parameter | tuple[Parameter, ...] | None
    if isinstance(node, Parametrized):
        # Composition, as in PyTorch: the new map applies to the current effective weight.
        weight, original = node.eval().value, node
    elif isinstance(node, Parameter):
        if "project" in node.metadata:
            raise ValueError(
                f"{where}: the parameter declares project={node.metadata['project']!r}; a "
                "reparametrized weight is constrained by its parametrization. Remove the "
                "projection first (rebuild the Parameter without project=)"
            )
        weight, original = node.value, None
    else:
        raise TypeError(
            f"{where}: expected a jp.Parameter (or an already parametrized weight), "
            f"found {type(node).__name__}"
        )
    try:
        p = constraint.setup(weight).train(mode)
        if original is None:
            raw = p.right_inverse(weight)
            make = lambda r: Parameter(r, trainable=node.trainable, **_raw_meta(node, r))
            original = tuple(map(make, raw)) if isinstance(raw, tuple) else make(raw)
    except (TypeError, ValueError) as e:
        raise _with_context(e, where) from None
    out = Parametrized(original, p).train(mode)
    got = out._abstract()
    if got.shape != weight.shape or got.dtype != weight.dtype:
        raise ValueError(
            f"{where}: the parametrization turns the {dtype_shape(weight)} weight into "
            f"{dtype_shape(got)}; it must keep the shape and dtype"
        )
    return out


def parametrize(target: Any, *args: Any) -> Any:
    """Constrains weights by reparametrization: the model sees ``f(raw)``; optimizers the raw.

    ``jp.parametrize(model, where, constraint)`` returns a copy of ``model`` with the Parameter
    at ``where`` (a dotted name, a glob like ``"blocks.*.weight"`` or a filter) replaced by a
    `Parametrized` node; ``jp.parametrize(parameter, constraint)`` wraps one Parameter, e.g.
    inside ``__init__``. ``constraint`` is a `Parametrization` (``orthogonal()``,
    ``positive()``, ``unit_norm()``, ``weight_norm()``, ``spectral_norm(key=...)``, your own)
    or a plain function ``raw -> weight``. Raw Parameters keep the old one's trainable flag
    and metadata. Parametrizing a parametrized weight composes the maps::

        model = nn.Sequential(nn.Linear(4, 4, key=jax.random.key(0)))
        model = jp.parametrize(model, "0.weight", jp.constraints.orthogonal())
        names = [n for n, _ in model.named_parameters()]
        assert names == ["0.bias", "0.weight.original"]   # as PyTorch lists them
    """
    if isinstance(target, (Parameter, Parametrized)):
        if len(args) != 1:
            raise TypeError("parametrize(parameter, constraint) takes exactly one constraint")
        return _wrap(target, _as_parametrization(args[0]), "", True)
    if len(args) != 2:
        raise TypeError(
            "use parametrize(model, where, constraint) or parametrize(parameter, constraint)"
        )
    where, constraint = args
    constraint = _as_parametrization(constraint)
    tree = target
    for name in selected_names(target, where):
        mode = _mode_at(tree, name)
        # `update_at`, not `jp.at(...).apply`: that would turn the array-like node into a
        # Parameter holding its value, as it does for any array set where a Parameter was.
        wrap = lambda node, n=name, m=mode: _wrap(node, constraint, n, m)
        tree = update_at(tree, name, wrap)
    return tree


def _removed(node: Parametrized, name: str, leave_parametrized: bool) -> Parameter:
    first = next(p for _, p in named_parameters(node))  # the innermost raw: flag and metadata
    if leave_parametrized:
        value = node.eval().value if node.training else node.value
        return Parameter(value, trainable=first.trainable, **first.metadata)
    o = node.original
    if isinstance(o, Parametrized):
        return _removed(o, name, False)
    if not isinstance(o, Parameter):
        raise ValueError(
            f"remove({name!r}, leave_parametrized=False): the weight has {len(o)} raw "
            "Parameters; only a single one can take its place (use leave_parametrized=True)"
        )
    if o.shape != node.shape or o.dtype != node.dtype:
        raise ValueError(
            f"remove({name!r}, leave_parametrized=False): the raw value is {dtype_shape(o)}, "
            f"the weight {dtype_shape(node)}; use leave_parametrized=True"
        )
    return o


def remove(tree: T, where: Any = None, *, leave_parametrized: bool = True) -> T:
    """Bakes parametrized weights into plain Parameters: PyTorch's ``remove_parametrizations``.

    Each `Parametrized` node at ``where`` (a name, glob or filter; all of them if ``None``)
    becomes ``Parameter(f(raw))`` with the raw Parameter's flag and metadata, computed in
    evaluation mode (no state update). So ``remove(model).state_dict()`` has the effective
    weights under the names a plain PyTorch model uses. ``leave_parametrized=False`` puts the
    raw Parameter back instead (one raw of the weight's shape only)::

        model = jp.parametrize(nn.Linear(4, 4, key=jax.random.key(0)), "weight",
                               jp.constraints.orthogonal())
        state = jp.constraints.remove(model).state_dict()
        assert list(state) == ["weight", "bias"]    # what torch.nn.Linear's load_state_dict takes
    """
    if where is None:
        names = [n for n, node in walk(tree) if isinstance(node, Parametrized)]
        names = [n for n in names if not any(n.startswith(m + ".") for m in names if m != n)]
    else:
        names = selected_names(tree, where)
    for name in names:
        node = get_at(tree, name) if name else tree
        if not isinstance(node, Parametrized):
            raise TypeError(
                f"remove: {name!r} is a {type(node).__name__}, not a parametrized weight"
            )
        new = _removed(node, name, leave_parametrized)

        def put(_: Any, value: Parameter = new) -> Parameter:
            return value

        # no name: the whole tree was one parametrized weight
        tree = cast(T, new) if not name else update_at(tree, name, put)
    return tree


# -- projection ----------------------------------------------------------------------------------


def project(tree: T, *, include_frozen: bool = False) -> T:
    """Applies each trainable Parameter's ``project=`` function to its value; returns a copy.

    Call it after the optimizer step, inside the jitted step or outside::

        model = nn.Linear(4, 2, key=jax.random.key(0))
        model = model.replace(weight=jp.Parameter(model.weight.value,
                                                  project=jp.constraints.nonnegative()))
        opt = jp.Optimizer(optax.sgd(1.0), model)
        grads = jp.grad(lambda m: m(jnp.ones(4)).sum())(model)

        model, opt = opt.update(model, grads)
        model = jp.project(model)
        assert (model.weight.value >= 0).all()

    Frozen parameters do not move, so they are left alone unless ``include_frozen=True`` (use
    that once to make initial values meet their constraints). The function must return an
    array of the same shape and dtype; anything else is an error naming the parameter.
    """

    def visit(name: str, x: Any) -> Any:
        if not isinstance(x, Parameter) or not (x.trainable or include_frozen):
            return x
        fn = dict(x._meta[1]).get("project")
        if fn is None:
            return x
        if not callable(fn):
            raise TypeError(f"jp.project: {name}: project={fn!r} is not a function")
        try:
            new = fn(x.value)
        except (TypeError, ValueError) as e:
            raise _with_context(e, f"jp.project: {name}") from None
        if not hasattr(new, "shape") or tuple(new.shape) != x.shape or new.dtype != x.dtype:
            got = dtype_shape(new) if hasattr(new, "shape") else type(new).__name__
            raise ValueError(
                f"jp.project: {name}: {fn!r} returned {got} for a {dtype_shape(x.value)} "
                "parameter; a projection must keep the shape and dtype"
            )
        return x._with_value(new)

    return map_variables(tree, visit)


@dataclasses.dataclass(frozen=True)
class _Orthogonalize:
    def __call__(self, x: jax.Array) -> jax.Array:
        _need_matrix("orthogonalize()", x)
        u, _, vt = jnp.linalg.svd(x, full_matrices=False)
        return u @ vt

    def __repr__(self) -> str:
        return "orthogonalize()"


def orthogonalize() -> Callable[[jax.Array], jax.Array]:
    """Projection onto (semi-)orthogonal matrices: the polar factor ``U Vᵀ`` of ``W = U S Vᵀ``.

    The nearest orthogonal matrix in Frobenius norm (rows orthonormal if wide or square,
    columns if tall); batched over leading axes. ``Parameter(w, project=orthogonalize())``.
    """
    return _Orthogonalize()


@dataclasses.dataclass(frozen=True)
class _Clip:
    min: float | None
    max: float | None

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.clip(x, self.min, self.max)

    def __repr__(self) -> str:
        return f"clip(min={self.min}, max={self.max})"


def clip(min: float | None = None, max: float | None = None) -> Callable[[jax.Array], jax.Array]:
    """Projection onto ``[min, max]`` (either bound may be ``None``)."""
    for label, bound in (("min", min), ("max", max)):
        if bound is not None and (not isinstance(bound, (int, float)) or isinstance(bound, bool)):
            raise TypeError(f"clip({label}=...) must be a number or None, got {bound!r}")
    if min is None and max is None:
        raise ValueError("clip() needs min, max or both")
    if min is not None and max is not None and min > max:
        raise ValueError(f"clip: min={min} is greater than max={max}")
    return _Clip(min, max)


def nonnegative() -> Callable[[jax.Array], jax.Array]:
    """Projection onto ``w >= 0`` (``clip(min=0)``), e.g. for non-negative factorisations."""
    return _Clip(0, None)


@dataclasses.dataclass(frozen=True)
class _Normalize:
    axis: tuple[int, ...]
    eps: float

    def __call__(self, x: jax.Array) -> jax.Array:
        _check_axes("normalize()", self.axis, x)
        return _normalize(x, self.axis, self.eps)

    def __repr__(self) -> str:
        return f"normalize(axis={self.axis})"


def normalize(axis: int | Sequence[int] = -1, eps: float = 1e-12) -> Callable[[jax.Array], Any]:
    """Projection onto the unit sphere over ``axis``: each row of a matrix gets norm 1.

    All-zero rows stay zero (they have no direction).
    """
    return _Normalize(_axes(axis), float(eps))
