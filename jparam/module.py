"""`Module`: the base class for models, `ModuleBase` plus PyTorch's module methods.

`jparam.modulebase` holds the machinery (dataclass registration, fields, flatten/unflatten,
walks and copies); this class adds the methods that are features built above the core: state
dicts, freezing, casting and placement, summaries, and weight tying of a Parameter or layer
assigned at two places during construction.

Example::

    class ColorAdjust(jp.Module):
        color_matrix: jp.Parameter
        color_bias: jp.Parameter

        def __init__(self):
            self.color_matrix = jp.Parameter(jnp.eye(3))
            self.color_bias = jp.Parameter(jnp.zeros(3))

        def __call__(self, x):
            return x @ self.color_matrix + self.color_bias

    model = ColorAdjust()
    assert model(jnp.ones((2, 3))).shape == (2, 3)
    assert list(model.state_dict()) == ["color_matrix", "color_bias"]
"""

from __future__ import annotations

from typing import Any, TypeVar

from . import precision as _precision
from . import state as _state
from . import surgery as _surgery
from .display import module_repr as _module_repr
from .display import summary as _summary
from .filters import trainable_size
from .modulebase import ModuleBase, PlainArrayWarning, field
from .tying import tie

__all__ = ["Module", "PlainArrayWarning", "field"]

M = TypeVar("M", bound="Module")


class Module(ModuleBase):
    """Base class for models: an immutable pytree with PyTorch's module methods.

    Every method is pure: where PyTorch mutates (``load_state_dict``, ``train``, ``half``,
    ``requires_grad_``) it returns a new module and leaves this one untouched. Names follow
    PyTorch: attribute names joined by ``.``, list/tuple indices as numbers, dict keys as they
    are, so a module tree built like a PyTorch one has the same ``state_dict`` keys in the same
    order.

    Every module has a static ``training`` flag (``True`` at construction); ``train()`` and
    ``eval()`` return copies with it set throughout. Changing it retraces jitted functions.
    """

    _jp_defines_api = True

    def _jp_tie_shared(self: M, later: str, first: str) -> M:
        """One Parameter or layer assigned at two places is tied, as PyTorch shares it."""
        return tie(self, later, first)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Counts parameter elements (each shared parameter once).

        ``trainable_only`` counts the elements that train: of an `nn.Stacked` array with some
        layers frozen, the rows of its trainable layers (what the unrolled layers would count).
        """
        if not trainable_only:
            return sum(p.size for p in self.parameters())
        return sum(trainable_size(p) for p in self.parameters())

    # -- state ------------------------------------------------------------------------------
    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> dict[str, Any]:
        """Ordered ``name -> array`` of parameters and persistent buffers, PyTorch's keys.

        With ``keep_vars=True`` the values are the Parameter/Buffer objects themselves.
        """
        return _state.state_dict(self, prefix=prefix, keep_vars=keep_vars)

    def load_state_dict(self: M, state_dict: Any, strict: bool = True, *, mapping: Any = None) -> M:
        """Returns a new module with values from ``state_dict`` (see `jp.load_state_dict`).

        ``strict=True`` raises one error listing every missing and unexpected key;
        ``strict=False`` skips them and returns the module all the same (`jp.incompatible_keys`
        says which names it skips). Shape and dtype-kind mismatches always raise. ``mapping``
        (a `jp.Mapping`) renames and reshapes the checkpoint's entries into the model's first.
        """
        return _state.load_state_dict(self, state_dict, strict=strict, mapping=mapping)

    def freeze(self: M, *patterns: str) -> M:
        """Returns a copy whose parameters matching any glob (all if none given) are frozen."""
        return _surgery.set_trainable(self, False, patterns)

    def unfreeze(self: M, *patterns: str) -> M:
        """Returns a copy whose parameters matching any glob (all if none given) are trainable."""
        return _surgery.set_trainable(self, True, patterns)

    def requires_grad_(self: M, requires_grad: bool = True) -> M:
        """PyTorch's spelling of `freeze()` / `unfreeze()` for the whole module (a copy)."""
        return self.unfreeze() if requires_grad else self.freeze()

    def astype(self: M, dtype: Any) -> M:
        """Returns a copy with every floating array cast to ``dtype``; integers keep theirs."""
        return _precision.astype(self, dtype)

    def half(self: M) -> M:
        """Floating arrays to float16 (a copy)."""
        return self.astype("float16")

    def float(self: M) -> M:
        """Floating arrays to float32 (a copy)."""
        return self.astype("float32")

    def double(self: M) -> M:
        """Floating arrays to float64 (a copy); needs ``jax_enable_x64`` switched on."""
        return self.astype("float64")

    def bfloat16(self: M) -> M:
        """Floating arrays to bfloat16 (a copy)."""
        return self.astype("bfloat16")

    def to(self: M, device_or_sharding: Any) -> M:
        """Returns a copy placed on a device, a ``jax.sharding.Sharding``, or ``"cpu"``/``"gpu"``.

        A dtype is also accepted (``model.to(jnp.bfloat16)``), as in PyTorch.
        """
        return _precision.to(self, device_or_sharding)

    # -- display ----------------------------------------------------------------------------
    def summary(self) -> str:
        """A table of parameters and buffers: name, shape, dtype, trainable, count, totals."""
        return _summary(self)

    def __repr__(self) -> str:
        return _module_repr(self)
