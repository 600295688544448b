"""The conformance checks every ported model passes, against the real PyTorch model.

A `Port` pairs a third-party PyTorch model (``transformers`` or ``timm``, built from a small
config with random weights, nothing downloaded) with its jparam port and the `jp.Mapping`
between their names. `check_port` proves, each against torch as the reference:

1. torch's ``state_dict`` loads with ``strict=True`` through the mapping, and ``jp.load``
   reads torch's own safetensors file into the same values;
2. outputs, eager and under ``jax.jit``, are within ``rtol`` of torch's in float32;
3. gradients of a loss under ``jax.jit`` match torch autograd for every trainable parameter
   (up to float32 rounding noise, ``NOISE`` of the largest gradient, where the exact gradient
   is zero), and the port trains exactly as many numbers as torch does;
4. three jitted AdamW steps through `jp.Optimizer` match three ``torch.optim.AdamW`` steps:
   the losses, and every saved entry afterwards (buffers included), except entries whose
   gradient is float noise (see `_noise_entries`), which are held to AdamW's step bound;
5. ``jp.save(..., mapping=...)`` writes files a fresh torch model loads with ``strict=True``:
   bit for bit the original weights for the loaded port, and for the trained port weights
   whose torch outputs reproduce jparam's.

"Within ``rtol``" means ``|a - b| <= rtol * (|b| + max|b|)`` for every entry: relative to the
entry, with a floor at the output's scale so that entries near zero are not held to more than
float32 can promise when torch and XLA sum in different orders.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax
import pytest
import torch
from safetensors.torch import load_file as torch_load_file
from safetensors.torch import save_file as torch_save_file

import jparam as jp
from jparam import nn

# torch.optim.AdamW's defaults, with the learning rate raised so that three steps move weights.
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.999), 1e-8, 0.01
STEPS = 3
# Rounding noise in a gradient, relative to the largest gradient of the model (float32's
# epsilon is 1.2e-7; a sum of many terms rounds several times).
NOISE = 1e-6


@dataclass
class Port:
    """A third-party torch model and its jparam port.

    ``make_torch(seed)`` builds the reference model with weights drawn from ``seed``.
    ``model`` is the jparam port before loading, ``mapping`` turns torch's names and layouts
    into the port's (``None``: the names already agree). ``torch_forward(module, **inputs)``
    and ``jax_forward(model, **inputs)`` return the compared output (an array or a tuple of
    arrays) for the numpy ``inputs``. ``train=True`` runs the AdamW steps in training mode
    (BatchNorm statistics update; dropout must be zero in the config): then the port's
    ``model(**inputs)`` must return the compared output, as it runs under `nn.stateful_call`.
    """

    make_torch: Callable[[int], torch.nn.Module]
    model: Any
    mapping: jp.Mapping | None
    torch_forward: Callable[..., Any]
    jax_forward: Callable[..., Any]
    inputs: Mapping[str, np.ndarray]
    rtol: float = 1e-5
    grad_rtol: float = 1e-4
    train: bool = False


def as_tuple(out: Any) -> tuple[Any, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def assert_close(actual: Any, expected: Any, rtol: float, what: str, floor: float = 0.0) -> float:
    """``|a - b| <= rtol * (|b| + max|b|) + floor`` for every entry, or a failure naming
    ``what``. Returns ``max|a - b| / max|b|``, the error the zoo reports."""
    a, b = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape}, torch's is {b.shape}"
    if not b.size:
        return 0.0
    scale = float(np.max(np.abs(b)))
    excess = np.abs(a - b) - rtol * (np.abs(b) + scale) - floor
    rel = float(np.max(np.abs(a - b))) / max(scale, 1e-30)
    if excess.max() > 0:
        worst = np.unravel_index(int(np.argmax(excess)), excess.shape)
        pytest.fail(
            f"{what}: not within rtol={rtol} of torch (max |diff| / max |torch| = {rel:.2e}; "
            f"worst at {tuple(map(int, worst))}: {a[worst]!r}, torch {b[worst]!r})"
        )
    return rel


def torch_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """torch's ``state_dict`` as numpy copies, tied names included."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _torch_call(port: Port, module: torch.nn.Module, inputs: Mapping[str, np.ndarray]) -> tuple:
    return as_tuple(
        port.torch_forward(module, **{k: torch.from_numpy(v) for k, v in inputs.items()})
    )


def _mse(outputs: tuple[Any, ...], targets: tuple[Any, ...]) -> Any:
    return sum(((o - t) ** 2).mean() for o, t in zip(outputs, targets))


def _targets(outputs: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """Fixed random regression targets, one per output, for a mean squared error loss."""
    rng = np.random.default_rng(1234)
    return tuple(rng.normal(size=o.shape).astype(o.dtype) for o in outputs)


def _mapped(port: Port, state: dict[str, np.ndarray]) -> dict[str, Any]:
    return dict(port.mapping(state)) if port.mapping is not None else state


def _torch_grads_mapped(port: Port, module: torch.nn.Module) -> dict[str, Any]:
    """torch's gradients under the port's names: the whole state dict goes through the
    mapping (so every rule sees the names it sees at load), with gradients in place of the
    parameters' values."""
    full = torch_state(module)
    for name, p in module.named_parameters(remove_duplicate=False):
        full[name] = np.zeros_like(full[name]) if p.grad is None else p.grad.numpy().copy()
    return _mapped(port, full)


def _noise_entries(grad: Any, torch_grad: Any, floor: float) -> np.ndarray:
    """The entries whose gradient is float noise: within ``floor`` of zero on torch's side, or
    10% apart between jax and torch.

    A parameter whose exact gradient is zero (a key bias, which softmax cancels; the key slice
    of a fused qkv bias) gets rounding noise from each framework, and AdamW normalises noise
    into steps of full size in a direction neither framework determines. Those entries cannot
    match after AdamW steps; the gradient check has already held them to ``grad_rtol`` of the
    gradient's scale plus ``floor``.
    """
    g, t = np.asarray(grad, np.float64), np.asarray(torch_grad, np.float64)
    return (np.abs(t) <= floor) | (np.abs(g - t) > 0.1 * np.abs(t))


def _trainable_numbers(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def check_port(port: Port, tmp_path: pathlib.Path) -> Any:
    """Runs the five checks of this file and returns the loaded port."""
    inputs = {k: np.asarray(v) for k, v in port.inputs.items()}
    reference = port.make_torch(0).float().eval()
    with torch.no_grad():
        expected = tuple(o.numpy() for o in _torch_call(port, reference, inputs))
    original = torch_state(reference)

    # 1. a strict load from the state dict, and jp.load from torch's own safetensors file
    model = port.model.load_state_dict(original, strict=True, mapping=port.mapping).eval()
    torch_file = tmp_path / "torch.safetensors"
    torch_save_file(
        {k: v.detach().clone().contiguous() for k, v in reference.state_dict().items()},
        str(torch_file),
    )
    from_file = jp.load(torch_file, port.model, mapping=port.mapping)
    for (name, a), b in zip(model.state_dict().items(), from_file.state_dict().values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)

    # 2. outputs, eager and jitted
    def forward(model: Any, inputs: dict[str, Any]) -> tuple[Any, ...]:
        return as_tuple(port.jax_forward(model, **inputs))

    eager, jitted = forward(model, inputs), jax.jit(forward)(model, inputs)
    assert len(eager) == len(expected), f"{len(eager)} outputs, torch has {len(expected)}"
    output_error = 0.0
    for i, (e, j, t) in enumerate(zip(eager, jitted, expected)):
        output_error = max(
            output_error,
            assert_close(e, t, port.rtol, f"output {i} (eager)"),
            assert_close(j, t, port.rtol, f"output {i} (jax.jit)"),
        )

    # 3. gradients under jit, compared under the port's names
    targets = _targets(expected)
    torch_targets = tuple(torch.from_numpy(t) for t in targets)
    reference.zero_grad()
    _mse(_torch_call(port, reference, inputs), torch_targets).backward()
    torch_grads = _torch_grads_mapped(port, reference)
    params, rest = jp.split(model, jp.trainable)

    def loss_of(params: dict[str, Any]) -> Any:
        return _mse(forward(jp.merge(params, rest), inputs), targets)

    grads = jax.jit(jax.grad(loss_of))(params)
    trained = sum(int(np.prod(g.shape)) for g in grads.values())
    assert trained == _trainable_numbers(reference), (
        f"the port trains {trained} numbers, torch {_trainable_numbers(reference)}"
    )
    # A gradient that is zero in exact arithmetic (a key bias, which softmax cancels) is
    # rounding noise of the size float32 leaves of the model's gradients: allow that much.
    noise_floor = NOISE * max(float(np.max(np.abs(g))) for g in grads.values())
    grad_error = 0.0
    for name, g in grads.items():
        assert name in torch_grads, f"{name}: no torch parameter maps onto it"
        what = f"gradient of {name}"
        error = assert_close(g, torch_grads[name], port.grad_rtol, what, noise_floor)
        grad_error = max(grad_error, error if np.abs(torch_grads[name]).max() > noise_floor else 0)

    # 4. three jitted AdamW steps, against torch.optim.AdamW
    trained_model, losses, first = _adamw_steps(port, model, inputs, targets)
    torch_losses, torch_first = _torch_adamw_steps(port, reference, inputs, torch_targets)
    assert_close(np.array(losses), np.array(torch_losses), port.grad_rtol, "AdamW losses")
    after = _mapped(port, torch_state(reference))
    # from the first step's gradients, in the mode the steps run in (a BatchNorm in training
    # mode cancels the bias of what comes before it: zero there, not in evaluation mode)
    floor = NOISE * max(float(np.max(np.abs(g))) for g in first.values())
    noise = {n: _noise_entries(g, torch_first[n], floor) for n, g in first.items()}
    for name, value in trained_model.state_dict().items():
        value, expected = np.asarray(value), np.asarray(after[name])
        what = f"{name} after {STEPS} AdamW steps"
        if name in noise and noise[name].any():
            # the noise entries moved by at most AdamW's step bound, on either side
            gap = np.abs(value - expected)[noise[name]]
            assert gap.max() <= 2 * STEPS * LR * 1.5, f"{what}: {gap.max()} apart where the "
            "gradient is float noise (more than AdamW's steps could move them)"
            value, expected = value[~noise[name]], expected[~noise[name]]
        assert_close(value, expected, port.grad_rtol, what)

    # 5. jp.save with the mapping: torch loads both files strictly
    saved = tmp_path / "loaded.safetensors"
    jp.save(saved, model, mapping=port.mapping)
    fresh = port.make_torch(1).float().eval()
    fresh.load_state_dict(torch_load_file(str(saved)), strict=True)
    for name, value in torch_state(fresh).items():
        np.testing.assert_array_equal(value, original[name], err_msg=name)

    jp.save(saved, trained_model, mapping=port.mapping)
    fresh.load_state_dict(torch_load_file(str(saved)), strict=True)
    with torch.no_grad():
        reproduced = tuple(o.numpy() for o in _torch_call(port, fresh, inputs))
    trained_outputs = forward(trained_model.eval(), inputs)
    for i, (r, j) in enumerate(zip(reproduced, trained_outputs)):
        assert_close(j, r, port.rtol, f"output {i} of the trained port saved to torch")
    # `pytest tests/conformance -s | grep zoo:` lists these (BENCHMARKS.md quotes them)
    print(
        f"\nzoo: outputs {output_error:.1e}, gradients {grad_error:.1e} (max |diff| / max |torch|)"
    )
    return model


def _adamw_steps(port: Port, model: Any, inputs: dict[str, Any], targets: tuple) -> tuple:
    """``STEPS`` jitted AdamW steps as the README writes them; returns the model and losses."""

    def loss_fn(model: Any) -> tuple[Any, Any]:
        if port.train:
            outputs, model = nn.stateful_call(model, **inputs)
        else:
            outputs = port.jax_forward(model, **inputs)
        return _mse(as_tuple(outputs), targets), model

    @jax.jit
    def step(model: Any, opt: jp.Optimizer) -> tuple[Any, jp.Optimizer, Any, Any]:
        (loss, model), grads = jp.value_and_grad(loss_fn, has_aux=True)(model)
        model, opt = opt.update(model, grads)
        return model, opt, loss, grads

    model = model.train() if port.train else model
    tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY)
    opt, losses, first = jp.Optimizer(tx, model), [], None
    for _ in range(STEPS):
        model, opt, loss, grads = step(model, opt)
        losses.append(float(loss))
        first = first or {n: np.asarray(p.value) for n, p in jp.named_parameters(grads)}
    return model.eval(), losses, first


def _torch_adamw_steps(
    port: Port, module: torch.nn.Module, inputs: dict[str, Any], targets: tuple
) -> tuple[list[float], dict[str, Any]]:
    """torch's ``STEPS`` AdamW steps; returns the losses and the first step's gradients under
    the port's names."""
    module.train(port.train)
    opt = torch.optim.AdamW(
        module.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY
    )
    losses, first = [], None
    for _ in range(STEPS):
        opt.zero_grad()
        loss = _mse(_torch_call(port, module, inputs), targets)
        loss.backward()
        first = first or _torch_grads_mapped(port, module)
        opt.step()
        losses.append(float(loss.detach()))
    module.eval()
    return losses, first
