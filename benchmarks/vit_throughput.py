"""Accelerator throughput: a ViT-B/16 training step in jparam, raw JAX, Flax NNX, Equinox, PyTorch.

Every contender trains the same network from the same weights on the same batch (see
``benchmarks/_vit.py``): ViT-B/16 at 224x224, batch 128, float32 parameters and AdamW state,
bfloat16 compute, ``jax.nn.dot_product_attention`` (cuDNN on a GPU) in the JAX contenders and
``F.scaled_dot_product_attention`` in PyTorch (eager, and ``torch.compile`` of the model).
Timings are interleaved rounds of ``--inner`` steps, medians; the table gives images/s, the
ratio to the raw-JAX floor (a jitted function of a flat dict of arrays, donated) and the model
FLOPs utilisation::

    MFU = images/s * train FLOPs per image / peak bfloat16 FLOP/s
    train FLOPs per image = 6 * (matmul params * tokens) + 12 * layers * tokens^2 * width

(``_vit.train_flops_per_image``: 105.4 GFLOPs for ViT-B/16). The peak comes from the device name
(H100 SXM: 989 TFLOP/s dense bfloat16) or ``--peak-tflops``; on a CPU MFU is not reported. The
loss after the first step is printed for every contender: equal losses are the evidence that all
of them compute the same thing.

    python -m benchmarks.vit_throughput                # ViT-B/16, batch 128 (needs a GPU)
    python -m benchmarks.vit_throughput --tiny         # 2 layers, width 64, 32x32, batch 4: CPU

Contenders whose package is missing are skipped with a note; ``--skip`` drops others by name.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import _vit
from benchmarks._timing import interleaved, machine

FLOOR = "raw JAX: dict of arrays (floor)"
CONTENDERS = {
    FLOOR: "raw",
    "jparam: jp.Optimizer": "jparam",
    "flax nnx: nnx.jit": "nnx",
    "equinox: filter_jit": "equinox",
    "pytorch: eager": "torch",
    "pytorch: torch.compile": "torch.compile",
}
# Dense (no sparsity) bfloat16 peaks, by device name; the first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L4", 121.0),
)


def peak_flops(device_kind: str, override_tflops: float | None) -> float | None:
    """Peak bfloat16 FLOP/s of the device, ``None`` when unknown (CPUs)."""
    if override_tflops:
        return override_tflops * 1e12
    for name, tflops in PEAK_TFLOPS:
        if name in device_kind:
            return tflops * 1e12
    return None


def devices() -> str:
    """Where each framework runs, for the table's notes."""
    dev = jax.devices()[0]
    text = f"JAX on {dev.platform} ({dev.device_kind})"
    try:
        import torch

        where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        text += f"; PyTorch {torch.__version__} on {where}"
    except ImportError:
        pass
    return text


def _contender(
    kind: str, cfg: _vit.Config, weights: dict, data: tuple, compute: Any, impl: str | None
) -> Callable[[], Any]:
    """A zero-argument callable doing one training step and returning its loss."""
    if kind.startswith("torch"):
        step, state = _vit.build_torch(cfg, weights, kind == "torch.compile", compute)
        images, labels = _vit.torch_batch(*data)
    else:
        step, state = _vit.JAX_BUILDERS[kind](cfg, weights, False, compute, impl)
        images, labels = jnp.asarray(data[0]), jnp.asarray(data[1])
    holder = [state]

    def run() -> Any:
        holder[0], loss = step(holder[0], images, labels)
        return loss

    return run


def run(
    cfg: _vit.Config,
    batch_size: int,
    compute: str,
    rounds: int,
    inner: int,
    attention: str = "auto",
    skip: tuple[str, ...] = (),
    peak_tflops: float | None = None,
    json_path: str | None = None,
) -> str:
    dtype = jnp.dtype(compute)
    impl = _vit.attention_impl(attention, dtype)
    weights = _vit.init_weights(cfg)
    data = _vit.batch(cfg, batch_size)
    steps: dict[str, Callable[[], Any]] = {}
    first: dict[str, tuple[float, float]] = {}  # name -> (seconds, loss) of the first step
    notes: list[str] = []
    for name, kind in CONTENDERS.items():
        if any(s.lower() in name.lower() for s in skip):
            notes.append(f"{name} (--skip)")
            continue
        lacking = _vit.missing_package(kind)
        if lacking:
            notes.append(f"{name} ({lacking} not installed)")
            continue
        fn = _contender(kind, cfg, weights, data, dtype, impl)
        start = time.perf_counter()
        loss = jax.block_until_ready(fn())  # compiles
        first[name] = (time.perf_counter() - start, float(loss))
        steps[name] = fn
    times = interleaved(steps, rounds=rounds, inner=inner)

    flops = _vit.train_flops_per_image(cfg)
    dev = jax.devices()[0]
    peak = (
        peak_flops(dev.device_kind, peak_tflops) if dev.platform != "cpu" or peak_tflops else None
    )
    base = times.get(FLOOR)
    title = (
        f"ViT training step: {cfg.image_size}x{cfg.image_size}, patch {cfg.patch_size}, "
        f"width {cfg.dim}, {cfg.depth} layers, {cfg.heads} heads, batch {batch_size}, "
        f"{dtype.name} compute, float32 params, adamw"
    )
    lines = [
        f"### {title}",
        "",
        "| contender | time per step | images/s | vs floor | MFU | first step | loss, step 1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    results = {}
    for name, t in times.items():
        ips = batch_size / t
        mfu = ips * flops / peak if peak else None
        ratio = f"{base / t:.3f}x" if base else "—"
        lines.append(
            f"| {name} | {t * 1e3:.2f} ms | {ips:,.1f} | {ratio} | "
            f"{f'{100 * mfu:.1f}%' if mfu is not None else 'n/a'} | {first[name][0]:.1f} s | "
            f"{first[name][1]:.5f} |"
        )
        results[name] = {
            "seconds_per_step": t,
            "images_per_second": ips,
            "mfu": mfu,
            "first_step_seconds": first[name][0],
            "loss_after_first_step": first[name][1],
        }
    lines += [
        "",
        f"Device: {devices()}; attention: {impl or 'xla'} (JAX), "
        f"tokens {cfg.tokens} padded to {cfg.padded_tokens} in JAX. "
        f"{_vit.num_params(cfg):,} parameters, {flops / 1e9:.2f} GFLOPs per image per step"
        + (f", peak {peak / 1e12:.0f} TFLOP/s." if peak else "; no peak known: MFU n/a."),
        f"{machine()}; {rounds} interleaved rounds of {inner} steps, medians; "
        "'vs floor' is images/s relative to raw JAX; 'first step' includes compilation.",
    ]
    if notes:
        lines.append("skipped: " + ", ".join(notes))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(
                {
                    "title": title,
                    "machine": machine(),
                    "devices": devices(),
                    "config": dataclasses.asdict(cfg),
                    "batch": batch_size,
                    "compute_dtype": dtype.name,
                    "attention": impl or "xla",
                    "train_flops_per_image": flops,
                    "peak_flops": peak,
                    "results": results,
                    "skipped": notes,
                },
                f,
                indent=2,
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="2 layers, width 64, 32x32, batch 4")
    parser.add_argument("--depth", type=int, default=None, help="override the number of layers")
    parser.add_argument("--batch", type=int, default=None, help="default 128 (4 with --tiny)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    parser.add_argument("--rounds", type=int, default=None, help="default 11 (3 with --tiny)")
    parser.add_argument("--inner", type=int, default=None, help="default 10 (2 with --tiny)")
    parser.add_argument("--skip", action="append", default=[], help="drop contenders by name")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    # Both frameworks share one accelerator: JAX must not grab 75% of it up front. This only
    # takes effect if no JAX computation ran in this process yet.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    cfg = _vit.TINY if args.tiny else _vit.BASE
    if args.depth is not None:
        cfg = dataclasses.replace(cfg, depth=args.depth)
    print(
        run(
            cfg,
            args.batch or (4 if args.tiny else 128),
            args.dtype,
            args.rounds or (3 if args.tiny else 11),
            args.inner or (2 if args.tiny else 10),
            args.attention,
            tuple(args.skip),
            args.peak_tflops,
            args.json,
        )
    )


if __name__ == "__main__":
    main()
