"""Parametrizations: the model sees ``f(raw)`` while optimizers train the raw value.

PyTorch's ``torch.nn.utils.parametrize`` and ``torch.nn.utils.parametrizations``:
`jp.parametrize` puts a `Parametrized` node where a Parameter was, array-like, holding the raw
Parameter(s) and a `Parametrization` (a `jp.Module`, possibly with Buffers);
`jp.remove_parametrizations` bakes ``f(raw)`` back into a plain Parameter. A model without
parametrizations pays nothing: nothing here touches `Parameter` or the Module flatten path.
The guide is docs/guides/parametrizations.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import jax
import jax.numpy as jnp
from jax.scipy.linalg import expm

from .module import Module, field
from .parameter import ArrayNode, Buffer, Parameter, dtype_shape
from .paths import get_at, named_parameters, update_at, walk
from .projections import as_axes, check_axes, need_matrix, unit_normalize, with_context
from .sharding import axes_for_shape
from .stateful import update_state
from .surgery import selected_names

__all__ = [
    "Parametrization",
    "Parametrized",
    "orthogonal",
    "positive",
    "spectral_norm",
    "unit_norm",
    "weight_norm",
]

T = TypeVar("T")


class Parametrization(Module):
    """Base class for reparametrizations: ``__call__(*originals)`` returns the weight.

    Subclass it for your own (it is a `jp.Module`: hyperparameters are static fields, state
    is Buffers). ``right_inverse(weight)`` returns the raw value(s) that produce ``weight``
    (default: ``weight`` itself; a tuple means several raw Parameters, as in PyTorch), and
    ``setup(weight)`` returns a copy with any Buffers sized for ``weight``::

        class Symmetric(jp.parametrizations.Parametrization):
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


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer) and not isinstance(x, jax.ShapeDtypeStruct)


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
        need_matrix("orthogonal()", weight)
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


class _UnitNorm(Parametrization):
    axis: tuple[int, ...] = field(static=True)
    eps: float = field(static=True)

    def __call__(self, x: jax.Array) -> jax.Array:
        return unit_normalize(x, self.axis, self.eps)

    def setup(self, weight: jax.Array) -> _UnitNorm:
        _need_float("unit_norm()", weight)
        check_axes("unit_norm()", self.axis, weight)
        return self


def unit_norm(axis: int | Sequence[int] = -1, eps: float = 1e-12) -> Parametrization:
    """Unit-norm rows: ``raw / ‖raw‖`` over ``axis`` (the last: each row of a matrix).

    ``axis=(1, 2, 3)`` normalises each output filter of a ``Conv2d`` weight. The raw value
    starts as the weight itself.
    """
    return _UnitNorm(axis=as_axes(axis), eps=float(eps))


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
            u = unit_normalize(mat @ v, (0,), self.eps)
            v = unit_normalize(mat.T @ u, (0,), self.eps)
        return u, v

    def _scaled(self, w: jax.Array, u: jax.Array, v: jax.Array) -> jax.Array:
        return w / jnp.vdot(u, self._matrix(w) @ v)

    def __call__(self, w: jax.Array) -> jax.Array:
        if w.ndim == 1:
            return unit_normalize(w, (0,), self.eps)
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
        u = unit_normalize(jax.random.normal(ku, mat.shape[:1], mat.dtype), (0,), self.eps)
        v = unit_normalize(jax.random.normal(kv, mat.shape[1:], mat.dtype), (0,), self.eps)
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
        "parametrize expects a jp.parametrizations.Parametrization (e.g. "
        "jp.parametrizations.orthogonal()) or a function raw -> weight, got "
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
        raise with_context(e, where) from None
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
        model = jp.parametrize(model, "0.weight", jp.parametrizations.orthogonal())
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
            f"remove_parametrizations({name!r}, leave_parametrized=False): the weight has "
            f"{len(o)} raw Parameters; only a single one can take its place (use "
            "leave_parametrized=True)"
        )
    if o.shape != node.shape or o.dtype != node.dtype:
        raise ValueError(
            f"remove_parametrizations({name!r}, leave_parametrized=False): the raw value is "
            f"{dtype_shape(o)}, the weight {dtype_shape(node)}; use leave_parametrized=True"
        )
    return o


def remove_parametrizations(tree: T, where: Any = None, *, leave_parametrized: bool = True) -> T:
    """Bakes parametrized weights into plain Parameters: PyTorch's ``remove_parametrizations``.

    Each `Parametrized` node at ``where`` (a name, glob or filter; all of them if ``None``)
    becomes ``Parameter(f(raw))`` with the raw Parameter's flag and metadata, computed in
    evaluation mode (no state update). So ``remove_parametrizations(model).state_dict()`` has
    the effective weights under the names a plain PyTorch model uses.
    ``leave_parametrized=False`` puts the raw Parameter back instead (one raw of the weight's
    shape only)::

        model = jp.parametrize(nn.Linear(4, 4, key=jax.random.key(0)), "weight",
                               jp.parametrizations.orthogonal())
        state = jp.remove_parametrizations(model).state_dict()
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
                f"remove_parametrizations: {name!r} is a {type(node).__name__}, not a "
                "parametrized weight"
            )
        new = _removed(node, name, leave_parametrized)

        def put(_: Any, value: Parameter = new) -> Parameter:
            return value

        # no name: the whole tree was one parametrized weight
        tree = cast(T, new) if not name else update_at(tree, name, put)
    return tree
