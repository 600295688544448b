"""`Parameter` and `Buffer`: arrays that carry trainable/frozen flags and user metadata.

Both are pytree nodes with exactly one child, the array, and static metadata that lives in the
treedef. So ``jax.jit`` retraces when a trainable flag or metadata changes, never when only the
value changes, and ``jax.grad``/``optax`` see the array straight through.

Example::

    w = jp.Parameter(jnp.eye(3))                    # trainable by default
    b = jp.Parameter(jnp.zeros(3), trainable=False, axes=("embed",))
    y = jnp.ones((2, 3)) @ w + b                    # behaves like an array
    w2 = w.freeze()                                 # new object; `w` is unchanged
    assert w.trainable and not w2.trainable and b.metadata["axes"] == ("embed",)

Like modules they are immutable (``w.value = x`` raises; ``w.replace(x)`` makes a copy), and a
frozen Parameter or a Buffer contributes no gradient under any JAX transform: reading its value
inside a trace (``.value``, operators, indexing, ``jnp`` functions) applies
``jax.lax.stop_gradient``. Flattening still sees the raw array, so this costs nothing outside a
trace and nothing at all on a jitted step's inputs and outputs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping
from dataclasses import FrozenInstanceError
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import tree_util

__all__ = ["ArrayNode", "Buffer", "Parameter", "to_array"]

_new = object.__new__
V = TypeVar("V", bound="Variable")
_Tracer = jax.core.Tracer
_stop_gradient = jax.lax.stop_gradient
_VALUE_KEY = (tree_util.GetAttrKey("value"),)

# Metadata is interned so equal metadata is the same object: treedef equality (done on every
# jit cache lookup) then short-circuits on identity instead of comparing item by item.
_INTERNED: dict[tuple, tuple] = {}


def intern_aux(trainable: bool | None, metadata: Mapping[str, Any]) -> tuple:
    """The interned static part of a variable with this flag and metadata (see `Variable.aux`).

    Metadata must be hashable: it lives in the pytree structure.
    """
    for name, val in metadata.items():
        if not isinstance(val, Hashable):
            hint = " (to change the value, pass it positionally: p.replace(x))"
            raise TypeError(
                f"metadata {name}={val!r:.80} is not hashable; metadata lives in the pytree "
                "structure and must be hashable (use a tuple instead of a list, "
                f"a frozenset instead of a set){hint if name == 'value' else ''}."
            )
    meta = (trainable, tuple(sorted(metadata.items())))
    try:
        # Keyed with the value types too: 1 == 1.0 == True, and interning must not turn a
        # user's `lr_scale=1.0` into the `1` of an earlier parameter.
        return _INTERNED.setdefault((meta, _types(meta)), meta)
    except TypeError as e:  # hashable type whose instance still refuses to hash
        raise TypeError(f"metadata {dict(metadata)!r} is not hashable: {e}") from None


def _types(x: Any) -> Any:
    return tuple(map(_types, x)) if isinstance(x, tuple) else type(x)


def _is_numeric_dtype(dtype: Any) -> bool:
    return jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)


def can_train(dtype: Any) -> bool:
    """Whether a parameter of ``dtype`` may be trainable: floating and complex only (PyTorch)."""
    return jnp.issubdtype(dtype, jnp.inexact)


def _trainable_flag(trainable: Any, value: Any, what: str) -> bool:
    """The flag for a parameter holding ``value``: ``None`` means "trainable if it can be"."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:  # a placeholder held by library code: nothing to check
        return True if trainable is None else bool(trainable)
    if trainable is None:
        return can_train(dtype)
    if not isinstance(trainable, (bool, np.bool_)):
        raise TypeError(f"trainable must be a bool (or None for the default), got {trainable!r}")
    if trainable and not can_train(dtype):
        raise TypeError(
            f"{what} holds {dtype_shape(value)}: only floating and complex parameters can be "
            "trainable (as in PyTorch, where integer tensors cannot require gradients). "
            "Integer parameters are frozen by default; keep it frozen, use jp.Buffer for "
            "integer state, or cast it to a floating dtype first to train it."
        )
    return bool(trainable)


def _describe(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _torch_to_numpy(value: Any, what: str = "value") -> np.ndarray | None:
    """Converts a torch tensor (bfloat16 included) to NumPy without importing torch."""
    if type(value).__module__.split(".")[0] != "torch" or not hasattr(value, "detach"):
        return None
    if getattr(value, "is_meta", False):
        raise ValueError(
            f"{what} has no data: it is a PyTorch tensor on the meta device (a model built "
            "under torch.device('meta') or init_empty_weights). Give it values first, e.g. "
            "module.to_empty(device='cpu') and load its weights, then convert it."
        )
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
        # NumPy has no bfloat16; widening to float32 and narrowing back is exact.
        return np.asarray(value.float().numpy()).astype(jnp.bfloat16)
    return value.numpy()


def check_int_range(arr: np.ndarray, *, what: str = "value") -> None:
    """Raises if JAX would wrap ``arr``: (u)int64 values outside (u)int32 without x64."""
    want = jax.dtypes.canonicalize_dtype(arr.dtype)
    if arr.dtype.kind not in "iu" or want == arr.dtype or arr.size == 0:
        return
    info = np.iinfo(want)
    if arr.min() < info.min or arr.max() > info.max:
        raise ValueError(
            f"{what} is {arr.dtype} with values outside the {want} range that JAX uses without "
            "64-bit types; call jax.config.update('jax_enable_x64', True) first"
        )


def _private_copy(arr: np.ndarray) -> np.ndarray:
    """A copy of ``arr`` in JAX's dtype, in a fresh 64-byte-aligned buffer nothing else holds."""
    dtype = jax.dtypes.canonicalize_dtype(arr.dtype)
    nbytes = arr.size * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + nbytes].view(dtype).reshape(arr.shape)
    np.copyto(out, arr, casting="unsafe")  # only a canonical cast: check_int_range ran first
    return out


def host_to_device(arr: np.ndarray) -> jax.Array:
    """``arr`` on the default device as an array of its own: what ``jnp.asarray`` gives, faster.

    ``jax.device_put`` of a NumPy array is several times faster than ``jnp.asarray`` (which
    stages the value through ``lax``), but on CPU it adopts a 64-byte-aligned host buffer
    instead of copying it, even with ``may_alias=False`` (jax-ml/jax#37830), and copies any
    other buffer after it has returned. Either way a later in-place change of the caller's
    array (a PyTorch optimizer step on the tensor it came from) could reach the immutable
    array. So the values go through one private, aligned copy, which ``device_put`` then adopts
    (CPU) or transfers (accelerators).
    """
    return jax.device_put(_private_copy(arr))


def to_array(value: Any, *, what: str = "value") -> Any:
    """Converts ``value`` to a JAX array, refusing anything that is not numeric array data.

    Accepts JAX arrays (tracers included), NumPy arrays and scalars, Python numbers and bools,
    ``jax.ShapeDtypeStruct`` (abstract values) and anything with ``__array__`` or
    ``__jax_array__`` (a PyTorch tensor, bfloat16 too). Strings, ``None`` and other objects raise
    ``TypeError``. ``what`` names the value in the error message.
    """
    if isinstance(value, Variable):
        return value.value
    if isinstance(value, jax.Array):
        # `jnp.array(0)` is weakly typed, the same value loaded from NumPy or PyTorch is not;
        # the two trace differently, so a weak value would recompile after load_state_dict.
        if getattr(value, "weak_type", False):
            return jax.lax.convert_element_type(value, value.dtype)
        return value
    if isinstance(value, jax.ShapeDtypeStruct):
        return value
    if isinstance(value, (bool, int, float, complex, np.ndarray, np.generic)):
        arr = np.asarray(value)
    elif hasattr(value, "__jax_array__"):
        return to_array(value.__jax_array__(), what=what)
    elif (torch_arr := _torch_to_numpy(value, what)) is not None:
        arr = torch_arr
    elif hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
    else:
        raise TypeError(
            f"{what} must be an array (jax.Array, numpy.ndarray, Python number or anything "
            f"with __array__), got {_describe(value)}: {value!r:.80}"
        )
    if not _is_numeric_dtype(arr.dtype):
        raise TypeError(f"{what} must hold numbers or bools, got an array of dtype {arr.dtype}")
    check_int_range(arr, what=what)
    return host_to_device(arr)


_SHORT_DTYPE = {"float": "f", "bfloat": "bf", "int": "i", "uint": "u", "complex": "c"}


def dtype_shape(x: Any) -> str:
    """``f32[3,3]``: a compact dtype and shape for anything with ``.dtype`` and ``.shape``."""
    dt = jnp.dtype(x.dtype)
    kind = dt.name.rstrip("0123456789")
    name = _SHORT_DTYPE[kind] + dt.name[len(kind) :] if kind in _SHORT_DTYPE else dt.name
    return f"{name}[{','.join(map(str, x.shape))}]"


def _unwrap(x: Any) -> Any:
    return x.value if isinstance(x, Variable) else x


def _binary(op):
    def forward(self, other):
        return op(self.value, _unwrap(other))

    def reverse(self, other):
        return op(_unwrap(other), self.value)

    return forward, reverse


def _flatten(v: Any):
    return (v._value,), v._meta


def _flatten_with_keys(v: Any):
    return ((_VALUE_KEY[0], v._value),), v._meta


def rebuild_variable(cls: type[V], meta: tuple, value: Any) -> V:
    """A `Parameter`/`Buffer` of type ``cls`` from its static metadata and a value, unchecked.

    For library code (unflattening, `jp.merge`) whose value may be a tracer or a placeholder.
    """
    out = _new(cls)
    out._value = value
    out._meta = meta
    return out


def _unpickle(cls: type[Variable], trainable: bool | None, items: tuple, value: Any) -> Any:
    return rebuild_variable(cls, intern_aux(trainable, dict(items)), value)


def _register(cls: type) -> None:
    def unflatten(meta, children, _cls=cls):
        out = _new(_cls)
        (out._value,) = children
        out._meta = meta
        return out

    tree_util.register_pytree_with_keys(cls, _flatten_with_keys, unflatten, flatten_func=_flatten)


class _frozen(property):  # lower case: a decorator, like `property`
    """A read-only property whose assignment or deletion says how to make a changed copy.

    Immutability costs nothing where it matters: the private slots stay plain, so flattening
    and unflattening (every jitted call) run as fast as for a mutable object.
    """

    fget: Callable[[Any], Any]  # always given: `_frozen` decorates a getter

    def __set__(self, obj: Any, value: Any) -> None:
        raise FrozenInstanceError(_immutable(obj, self.fget.__name__, "set"))

    def __delete__(self, obj: Any) -> None:
        raise FrozenInstanceError(_immutable(obj, self.fget.__name__, "delete"))


def _immutable(obj: Any, name: str, verb: str) -> str:
    flag = "`p.freeze()`/`p.unfreeze()` or " if name in ("trainable", "requires_grad") else ""
    return (
        f"cannot {verb} {type(obj).__name__}.{name}: parameters and buffers are immutable, like "
        f"modules. Make a changed copy instead: {flag}`p = p.replace(new_value)` (metadata "
        '`p.replace(axes=...)`); in a model, `model = jp.at(model, "path.to.weight").set(...)` '
        'or `model.freeze("path")`.'
    )


class ArrayNode:
    """Array behaviour for any node that holds an array as ``value``: the one shared base.

    Operators, ``shape``/``dtype``/``ndim``/``size``, ``T``, indexing, ``__jax_array__`` (so
    ``jnp`` functions take the node as it is) and every other array method (forwarded to
    ``value``) are written in terms of ``self.value``. `Parameter` and `Buffer` derive from it,
    and so does anything else that stands for an array in a model, e.g. a parametrized weight
    (`jp.parametrize`), whose ``value`` is computed. Comparisons are elementwise, as for arrays,
    so these nodes are unhashable.
    """

    __slots__ = ()
    value: Any

    def __jax_array__(self) -> jax.Array:
        return self.value

    def __array__(self, dtype=None, copy=None):
        arr = np.asarray(self.value)
        return arr if dtype is None else arr.astype(dtype)

    @_frozen
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    @_frozen
    def dtype(self) -> Any:
        return self.value.dtype

    @_frozen
    def ndim(self) -> int:
        return len(self.value.shape)

    @_frozen
    def size(self) -> int:
        return int(np.prod(self.value.shape, dtype=np.int64))

    @_frozen
    def T(self) -> jax.Array:
        return jnp.asarray(self.value).T

    @_frozen
    def mT(self) -> jax.Array:
        return jnp.asarray(self.value).mT

    def __getattr__(self, name: str) -> Any:
        # Array methods (.sum(), .reshape(), .at, ...) are forwarded to the value.
        if name.startswith("_") or name == "value":
            raise AttributeError(name)
        try:
            value = self.value
        except AttributeError:  # not built yet (unpickling)
            raise AttributeError(name) from None
        return getattr(value, name)

    def __getitem__(self, index):
        return self.value[_unwrap(index)]

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self):
        return iter(self.value)

    def __bool__(self) -> bool:
        return bool(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return operator.index(self.value)

    def __complex__(self) -> complex:
        return complex(self.value)

    def __neg__(self):
        return -self.value

    def __pos__(self):
        return +self.value

    def __abs__(self):
        return abs(self.value)

    def __invert__(self):
        return ~self.value

    __add__, __radd__ = _binary(operator.add)
    __sub__, __rsub__ = _binary(operator.sub)
    __mul__, __rmul__ = _binary(operator.mul)
    __matmul__, __rmatmul__ = _binary(operator.matmul)
    __truediv__, __rtruediv__ = _binary(operator.truediv)
    __floordiv__, __rfloordiv__ = _binary(operator.floordiv)
    __mod__, __rmod__ = _binary(operator.mod)
    __pow__, __rpow__ = _binary(operator.pow)
    __and__, __rand__ = _binary(operator.and_)
    __or__, __ror__ = _binary(operator.or_)
    __xor__, __rxor__ = _binary(operator.xor)
    __lshift__, __rlshift__ = _binary(operator.lshift)
    __rshift__, __rrshift__ = _binary(operator.rshift)
    __lt__ = _binary(operator.lt)[0]
    __le__ = _binary(operator.le)[0]
    __gt__ = _binary(operator.gt)[0]
    __ge__ = _binary(operator.ge)[0]
    __eq__ = _binary(operator.eq)[0]
    __ne__ = _binary(operator.ne)[0]
    __hash__ = None  # type: ignore[assignment]  # elementwise __eq__: unhashable, like ndarray


class Variable(ArrayNode):
    """What `Parameter` and `Buffer` share: a pytree leaf with metadata (subclass those)."""

    __slots__ = ("_meta", "_value")
    _value: Any  # the raw array: the pytree leaf
    _meta: tuple  # (trainable flag or None for buffers, sorted metadata items)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)  # every subclass is a pytree node too

    @_frozen
    def value(self) -> Any:
        """The array. Inside a trace, a frozen Parameter's or a Buffer's is gradient-stopped.

        So ``jax.grad(loss)(model)``, ``eqx.filter_grad`` or optax on a whole model never train
        a frozen parameter: its gradient is zero. Outside a trace this is the stored array.
        """
        v = self._value
        if self._meta[0] is not True and isinstance(v, _Tracer):
            return _stop_gradient(v)
        return v

    @_frozen
    def aux(self) -> tuple:
        """The static part JAX keeps in the treedef: ``(trainable flag, sorted metadata items)``.

        The flag is ``None`` for a Buffer. Interned (equal parts are one object, see
        `intern_aux`), so library code that rebuilds a variable cheaply with
        ``rebuild_variable(type(v), v.aux, value)`` keeps ``jax.jit`` cache lookups cheap.
        """
        return self._meta

    @_frozen
    def data(self) -> Any:
        """PyTorch's name for `value`; assigning it raises, as for `value`."""
        return self.value

    def __reduce__(self) -> tuple:
        # Metadata is interned again on load, so treedefs compare by identity as before.
        return (_unpickle, (type(self), self._meta[0], self._meta[1], self._value))

    # -- metadata -------------------------------------------------------------------------
    @_frozen
    def metadata(self) -> dict[str, Any]:
        """User metadata (a fresh dict: editing it changes nothing; use `replace`)."""
        return dict(self._meta[1])

    def replace(self, value: Any = None, /, **changes: Any) -> Any:
        """Returns a copy with the value (positional) and/or metadata entries changed.

        ``p.replace(x)`` changes the value; keywords are metadata (``p.replace(axes=...)``), so
        metadata may be named anything, ``value`` included.
        """
        if value is None:
            new = self._value
        else:
            new = to_array(value, what=f"{type(self).__name__}.replace value")
        meta = self._rebuild_meta(changes) if changes else self._meta
        return rebuild_variable(type(self), meta, new)

    def drop_metadata(self, *keys: str) -> Any:
        """Returns a copy without the metadata entries ``keys`` (``replace`` sets entries).

        A key the variable does not have raises, naming the keys it has, so a typo never
        passes. ``p.drop_metadata("axes")`` leaves ``p`` replicated by
        `jp.sharding.named_shardings`.
        """
        have = dict(self._meta[1])
        missing = [k for k in keys if k not in have]
        if missing:
            raise KeyError(
                f"{type(self).__name__} has no metadata {', '.join(map(repr, missing))}; "
                f"its metadata: {', '.join(map(repr, have)) or 'none'}"
            )
        for k in keys:
            del have[k]
        return rebuild_variable(type(self), intern_aux(self._meta[0], have), self._value)

    def _with_value(self, value: Any) -> Any:
        # Unchecked: for library code that already holds a valid (possibly traced) array.
        return rebuild_variable(type(self), self._meta, value)

    def _rebuild_meta(self, changes: dict[str, Any]) -> tuple:
        merged = dict(self._meta[1])
        merged.update(changes)
        return intern_aux(self._meta[0], merged)

    def astype(self, dtype: Any) -> Any:
        """Returns a copy whose value is cast to ``dtype`` (metadata kept)."""
        return self.replace(jnp.asarray(self.value).astype(dtype))

    def _value_repr(self) -> str:
        try:
            return dtype_shape(self.value)
        except (AttributeError, TypeError):
            return repr(self.value)

    def _meta_repr(self) -> str:
        return "".join(f", {k}={v!r}" for k, v in self._meta[1])

    def __treescope_repr__(self, path: str | None, subtree_renderer: Any) -> Any:
        """Treescope's rendering in notebooks: value (shape, dtype), flag, metadata.

        Only treescope calls this, so treescope is never imported by jparam otherwise:
        trainable parameters are drawn green, frozen ones grey, buffers blue, and the value is
        treescope's own array rendering (expandable, with statistics).
        """
        from treescope import repr_lib

        attributes: dict[str, Any] = {"value": self.value}
        if isinstance(self, Parameter):
            attributes["trainable"] = self.trainable
            color = "#d6f5d6" if self.trainable else "#e6e6e6"
        else:
            color = "#d6e9f5"
        if self._meta[1]:
            attributes["metadata"] = self.metadata
        return repr_lib.render_object_constructor(
            type(self), attributes, path, subtree_renderer, roundtrippable=False, color=color
        )


class Parameter(Variable):
    """A trainable (or frozen) array, the unit that gradients, optimizers and names see.

    ``Parameter(value, *, trainable=None, **metadata)``: ``value`` is converted to a JAX array
    (strings, ``None`` and other objects raise ``TypeError``). ``trainable`` defaults to
    ``True`` for floating and complex values and ``False`` for integer and bool ones, which
    cannot be trainable (as in PyTorch). ``metadata`` is free-form and hashable (e.g.
    ``axes=("embed", "mlp")``, ``weight_decay=False``, ``lr_scale=0.1``); it and the trainable
    flag are static, so changing them retraces a jitted function.

    New versions come from methods, never mutation: ``replace``, ``freeze``, ``unfreeze``,
    ``astype``. A frozen parameter's value is gradient-stopped inside any trace, so it gets
    no gradient even from a plain ``jax.grad`` of the whole model.
    """

    __slots__ = ()

    def __init__(self, value: Any, /, *, trainable: bool | None = None, **metadata: Any) -> None:
        value = to_array(value, what="Parameter value")
        self._value = value
        self._meta = intern_aux(_trainable_flag(trainable, value, "Parameter"), metadata)

    @_frozen
    def trainable(self) -> bool:
        """Whether gradients and optimizers see this parameter."""
        return self._meta[0]

    requires_grad = trainable  # PyTorch's name

    def replace(
        self, value: Any = None, /, *, trainable: bool | None = None, **metadata: Any
    ) -> Parameter:
        """Returns a copy with the value, the trainable flag and/or metadata entries changed.

        A trainable parameter can only hold a floating or complex value.
        """
        out = super().replace(value, **metadata)
        flag = out._meta[0] if trainable is None else trainable
        flag = _trainable_flag(flag, out._value, f"{type(self).__name__}.replace")
        if flag != out._meta[0]:
            out._meta = intern_aux(flag, dict(out._meta[1]))
        return out

    def freeze(self) -> Parameter:
        """Returns a frozen copy (no gradient, no optimizer state)."""
        return self.replace(trainable=False)

    def unfreeze(self) -> Parameter:
        """Returns a trainable copy."""
        return self.replace(trainable=True)

    def requires_grad_(self, requires_grad: bool = True) -> Parameter:
        """PyTorch's spelling of `freeze`/`unfreeze`; returns a copy (nothing is mutated)."""
        return self.replace(trainable=requires_grad)

    def __repr__(self) -> str:
        frozen = "" if self.trainable else ", trainable=False"
        return f"{type(self).__name__}({self._value_repr()}{frozen}{self._meta_repr()})"


class Buffer(Variable):
    """A non-trainable array that belongs to the model's state (e.g. BatchNorm running stats).

    Buffers are saved in ``state_dict`` and moved by ``to``/``astype`` like parameters, but
    gradients and optimizers never touch them. Update them by returning a new module from the
    forward pass (see `jparam.nn.BatchNorm2d`).
    """

    __slots__ = ()

    def __init__(self, value: Any, /, **metadata: Any) -> None:
        self._value = to_array(value, what="Buffer value")
        self._meta = intern_aux(None, metadata)

    @_frozen
    def persistent(self) -> bool:
        """Whether `state_dict` includes this buffer (``Buffer(x, persistent=False)``)."""
        return dict(self._meta[1]).get("persistent", True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value_repr()}{self._meta_repr()})"
