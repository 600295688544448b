"""State updates in a pure world: running statistics without ``y, model = model(x)`` everywhere.

Every layer's ``__call__`` returns only its output. A layer that updates state while it runs
(BatchNorm in training mode) hands its updated copy to `update_state`, which records it in the
innermost `stateful_call`. `stateful_call` runs the model and returns ``(output, new_model)``
with every recorded update put in place::

    model = nn.Sequential(nn.Linear(4, 2, key=jax.random.key(0)), nn.BatchNorm1d(2))
    opt = jp.Optimizer(optax.sgd(0.1), model)
    x, y = jnp.linspace(-1.0, 1.0, 32).reshape(8, 4), jnp.zeros((8, 2))

    @jax.jit
    def train_step(model, opt, x, y):
        def loss_fn(model):
            out, new_model = nn.stateful_call(model, x)   # BatchNorm statistics updated
            return jnp.mean((out - y) ** 2), new_model
        (loss, new_model), grads = jp.value_and_grad(loss_fn, has_aux=True)(model)
        return opt.update(new_model, grads)   # `new_model` carries the new statistics

    model, opt = train_step(model, opt, x, y)
    assert int(model[1].num_batches_tracked.value) == 1

Containers need nothing special: `Sequential`, `MLP` and your own modules just call their
children. The record lives only while `stateful_call` runs, inside whatever trace calls it, so
under ``jax.jit`` the updates are ordinary traced outputs of the jitted function; nothing global
survives the trace. Calling a stateful layer in training mode outside `stateful_call` raises,
rather than silently dropping its update.

`stateful_call` works on a single layer too (``y, bn = nn.stateful_call(bn, x)``); it is the one
way to get a layer's new state. Limits: a stateful layer run inside a JAX transform *within* the
model (``lax.scan`` over layers, ``jax.checkpoint``, ``jax.vmap``) would record values of that
inner trace; call `stateful_call` on the layer inside the transform instead and carry the
returned layer out as the transform's output (as `nn.Stacked` does).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .modulebase import ModuleBase, describe
from .paths import walk
from .surgery import at

__all__ = ["stateful_call", "update_state"]

M = TypeVar("M", bound=ModuleBase)
_local = threading.local()


def _records() -> list[dict[int, tuple[ModuleBase, ModuleBase]]]:
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


def update_state(module: M, step: Callable[[M], tuple[Any, M]]) -> Any:
    """Runs ``step(module) -> (output, new_module)``, records ``new_module``, returns the output.

    This is how a stateful layer's ``__call__`` reports its new state to the enclosing
    `stateful_call`. If the same module object already ran in this call (a parent that calls
    one child twice in its ``__call__``), ``step`` gets its updated version, so updates
    accumulate as in PyTorch. (Placing one layer that holds Buffers at two places of a model is
    refused when the model is built: each place would keep its own copy.) ::

        class Counter(jp.Module):               # a layer that counts its training calls
            count: jp.Buffer

            def __init__(self):
                self.count = jp.Buffer(jnp.zeros((), jnp.int32))

            def __call__(self, x):
                if not self.training:
                    return x
                bump = lambda m: (x, m.replace(count=m.count.replace(m.count.value + 1)))
                return nn.update_state(self, bump)

        y, counter = nn.stateful_call(Counter(), jnp.ones(3))
        y, counter = nn.stateful_call(counter, jnp.ones(3))
        assert int(counter.count.value) == 2
    """
    stack = _records()
    if not stack:
        raise RuntimeError(
            f"{describe(module)} is in training mode and updates its state, but it was called "
            "outside nn.stateful_call. Run the model as `y, model = nn.stateful_call(model, x)` "
            "to get the updated model (a single layer works the same way), or call `.eval()` "
            "for inference."
        )
    records = stack[-1]
    current = cast(M, records.get(id(module), (module, module))[1])  # module's updated copy
    out, new = step(current)
    # Keeping `module` alive in the record means its id cannot be reused during the call.
    records[id(module)] = (module, new)
    return out


def _tree_of(model: Any) -> Any:
    if inspect.ismethod(model) and isinstance(model.__self__, ModuleBase):
        return model.__self__
    if isinstance(model, ModuleBase):
        return model
    raise TypeError(
        "stateful_call expects a jp.Module (or a bound method of one, e.g. model.encode), "
        f"got {type(model).__name__}"
    )


def stateful_call(model: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """Calls ``model(*args, **kwargs)`` and returns ``(output, model with updated state)``.

    ``model`` is a `jp.Module` or a bound method of one (``nn.stateful_call(net.encode, x)``);
    the returned model is that module with every state update recorded by `update_state` put
    in place (shared layers at each place they appear). Nothing is updated in evaluation mode,
    so the same code serves both. Works inside ``jax.jit``, ``jax.grad`` (return the model as
    auxiliary output) and nested calls (each returns the updates made inside it).
    """
    tree = _tree_of(model)
    records: dict[int, tuple[ModuleBase, ModuleBase]] = {}
    stack = _records()
    stack.append(records)
    try:
        out = model(*args, **kwargs)
    finally:
        stack.pop()
    if not records:
        return out, tree
    names: dict[int, list[str]] = {}
    for name, node in walk(tree):
        if isinstance(node, ModuleBase) and id(node) in records and records[id(node)][0] is node:
            names.setdefault(id(node), []).append(name)
    missing = [describe(old) for i, (old, _) in records.items() if i not in names]
    if missing:
        raise ValueError(
            f"stateful_call: {', '.join(missing)} updated its state but is not part of the "
            f"{type(tree).__name__} being called (a layer captured from outside the model?); "
            "make it a field of the model so its new state has a place to go."
        )
    for i, where in names.items():
        new = records[i][1]
        for name in where:
            tree = new if name == "" else at(tree, name).set(new)
    return out, tree
