"""Smoke tests: each benchmark runs in its tiny mode and prints a table (no timing asserted).

Where a benchmark's numbers are not timings (parameter counts, FLOPs, bytes, losses) they are
checked exactly or to float tolerance: a benchmark that compares the wrong things is worse than
none.
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` under bare pytest

from benchmarks import (
    _vit,
    checkpoint,
    compile_time,
    load_speed,
    memory,
    port_sizes,
    run,
    step_overhead,
    tree_walks,
    vit_throughput,
)


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        (checkpoint, ["--mb", "4", "--rounds", "1"]),
        (step_overhead, ["--depth", "2", "--rounds", "1", "--inner", "2"]),
        (tree_walks, ["--params", "20", "--rounds", "1", "--inner", "1"]),
    ],
    ids=["checkpoint", "step_overhead", "tree_walks"],
)
def test_benchmark_runs_and_prints_a_table(module, argv, capsys, tmp_path):
    if module is checkpoint:
        argv = [*argv, "--dir", str(tmp_path)]
    module.main(argv)
    out = capsys.readouterr().out
    assert out.startswith("### ")
    assert "|---|" in out
    assert "skipped" not in out  # the peers are installed with the test extra
    if module is checkpoint:
        assert list(tmp_path.iterdir()) == []  # cleaned up after itself


def test_step_overhead_configs_parse_and_name_their_json(monkeypatch, tmp_path):
    """``--configs`` runs each DEPTHxWIDTH in turn (no value: BENCHMARKS.md's rows), one JSON
    file each; a malformed entry is refused by argparse, naming what it got."""
    calls = []
    monkeypatch.setattr(step_overhead, "run", lambda *a: calls.append(a) or "### table")
    out = str(tmp_path / "out.json")
    step_overhead.main(["--configs", "2x4", "3X5", "--rounds", "1", "--json", out])
    assert [c[:2] for c in calls] == [(2, 4), (3, 5)]
    assert [c[-1] for c in calls] == [str(tmp_path / f"out_d{n}.json") for n in ("2_w4", "3_w5")]
    calls.clear()
    step_overhead.main(["--configs"])
    assert [c[:2] for c in calls] == [(8, 32), (32, 32), (8, 1024)]
    calls.clear()
    step_overhead.main(["--depth", "2", "--json", out])  # no --configs: one run, the path as given
    assert [(c[:2], c[-1]) for c in calls] == [((2, 32), out)]
    for bad in ["8x0", "8", "ax32"]:
        with pytest.raises(SystemExit):
            step_overhead.main(["--configs", bad])


def test_vit_contenders_compute_the_same_loss(capsys, tmp_path):
    """float32, one layer: every framework's ViT gives the same loss on the same weights."""
    path = tmp_path / "vit.json"
    argv = ["--tiny", "--depth", "1", "--dtype", "float32", "--rounds", "1", "--inner", "1"]
    vit_throughput.main([*argv, "--skip", "torch.compile", "--json", str(path)])
    out = capsys.readouterr().out
    assert out.startswith("### ViT training step")
    result = json.loads(path.read_text())
    names = list(result["results"])
    assert names == [n for n in vit_throughput.CONTENDERS if n != "pytorch: torch.compile"]
    assert result["skipped"] == ["pytorch: torch.compile (--skip)"]
    losses = [r["loss_after_first_step"] for r in result["results"].values()]
    np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
    cfg = dataclasses.replace(_vit.TINY, depth=1)
    assert result["config"] == dataclasses.asdict(cfg)
    assert result["train_flops_per_image"] == _vit.train_flops_per_image(cfg)
    assert result["results"][names[0]]["mfu"] is None  # no peak FLOP/s on a CPU


def test_vit_base_shape_and_flops():
    """ViT-B/16 as timm counts it; FLOPs by the formula in the docstring, at 197 tokens."""
    cfg = _vit.BASE
    assert _vit.num_params(cfg) == 86_567_656  # timm's vit_base_patch16_224
    assert (cfg.tokens, cfg.padded_tokens) == (197, 198)
    d, t = 768, 197
    expected = 6 * (12 * 12 * d * d * t + d * d * (t - 1) + d * 1000) + 12 * 12 * t * t * d
    assert _vit.train_flops_per_image(cfg) == expected
    weights = _vit.init_weights(_vit.TINY)
    assert sum(v.size for v in weights.values()) == _vit.num_params(_vit.TINY)
    assert vit_throughput.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert vit_throughput.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert vit_throughput.peak_flops("cpu", None) is None
    assert vit_throughput.peak_flops("cpu", 2.0) == 2e12


PEER_SCANS = {"flax nnx: nnx.scan", "equinox: lax.scan"}


@pytest.mark.parametrize(
    "peers",
    [pytest.param(False, id="jparam"), pytest.param(True, id="peers", marks=pytest.mark.slow)],
)
def test_compile_time_scan_contenders_match_the_floor(capsys, tmp_path, peers):
    # The unrolled jparam/NNX/Equinox builders are the ones the ViT smoke test runs; the peers'
    # scanned builders compile slowly, so the default run checks jparam's against the floor.
    path = tmp_path / "compile.json"
    skip = ["--skip", "jparam: unrolled", "--skip", "nnx: unrolled", "--skip", "equinox: unrolled"]
    skip += [] if peers else [arg for name in sorted(PEER_SCANS) for arg in ("--skip", name)]
    compile_time.main(
        ["--depths", "2", "--rounds", "1", "--inner", "1", *skip, "--json", str(path)]
    )
    out = capsys.readouterr().out
    assert out.startswith("### Compile time")
    result = json.loads(path.read_text())
    losses = {n: v["2"] for n, v in result["loss_after_first_step"].items()}
    ours = {compile_time.FLOOR, "raw JAX: lax.scan", "jparam: nn.Stacked"}
    assert set(losses) == (ours | PEER_SCANS if peers else ours)
    # bfloat16 compute: scanned and unrolled differ only by rounding
    np.testing.assert_allclose(list(losses.values()), losses[compile_time.FLOOR], rtol=5e-3)


def test_memory_counts_exact_bytes(capsys, tmp_path):
    path = tmp_path / "memory.json"
    memory.main(["--layers", "10", "--width", "8", "--frozen", "0", "90", "--json", str(path)])
    assert capsys.readouterr().out.startswith("### Memory")
    rows = json.loads(path.read_text())["results"]
    layer = (8 * 8 + 8) * 4  # float32 bytes of one Linear(8, 8)
    count = 4  # adam's int32 step counter
    by = {(r["frozen_layers"], r["contender"]): r for r in rows}
    for name in memory.CONTENDERS:
        assert by[0, name]["gradient_bytes"] == 10 * layer
        assert by[0, name]["optimizer_state_bytes"] == 2 * 10 * layer + count
    floor = by[9, memory.FLOOR]  # stop_gradient keeps gradients and moments for all layers
    assert (floor["gradient_bytes"], floor["optimizer_state_bytes"]) == (10 * layer, 20 * layer + 4)
    for name in ("jparam: split + optax", "jparam: jp.Optimizer"):
        assert by[9, name]["trainable_parameters"] == 72
        assert by[9, name]["gradient_bytes"] == layer
        assert by[9, name]["optimizer_state_bytes"] == 2 * layer + count
        assert by[9, name]["xla_temp_bytes"] < floor["xla_temp_bytes"]


def test_runner_gathers_json(capsys, tmp_path):
    path = tmp_path / "all.json"
    run.main(["tree_walks", "--tiny", "--json", str(path)])
    out = capsys.readouterr().out
    assert out.startswith("$ python -m benchmarks.tree_walks --params 20")
    result = json.loads(path.read_text())
    (entry,) = result["suites"]["tree_walks"]
    assert entry["argv"] == ["--params", "20", "--rounds", "1", "--inner", "1"]
    assert "jparam: named_parameters()" in entry["seconds"]
    with pytest.raises(SystemExit):
        run.main(["no_such_suite"])


def test_runner_runs_sharding_in_a_process_of_its_own(capsys, tmp_path):
    """The sharding suite needs 8 devices from JAX's start: the runner starts a new process
    for it, and this one keeps its single device."""
    import jax

    path = tmp_path / "all.json"
    run.main(["sharding", "--tiny", "--json", str(path)])
    (entry,) = json.loads(path.read_text())["suites"]["sharding"]
    assert set(entry["results"]) == {"dp", "fsdp", "tp", "fsdp_tp"}
    assert jax.device_count() == 1


def test_sharding_bytes_per_device_are_what_the_specs_say(tmp_path):
    """benchmarks.sharding runs with 8 simulated devices in its own process; the bytes it
    reads from each device's shards must equal the bytes the partition specs imply."""
    import math
    import os
    import subprocess

    import jax
    from jax.sharding import AxisType

    import jparam as jp
    from examples.train_sharded import LM, RULES, STRATEGIES

    root = Path(__file__).resolve().parents[1]
    path = tmp_path / "sharding.json"
    dims = ["--dim", "16", "--depth", "1", "--heads", "2", "--vocab", "64", "--seq", "8"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the module sets 8
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.sharding", *dims, "--no-step", "--json", str(path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("### Per-device memory") and "|---|" in proc.stdout
    results = json.loads(path.read_text())["results"]
    assert list(results) == list(STRATEGIES)

    # The same model's specs, computed here on one device (mesh axes of size 1).
    abstract = jax.eval_shape(lambda k: LM(64, 16, 1, 2, 8, key=k), jax.random.key(0))
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), axis_types=(AxisType.Auto,) * 3)
    specs = jp.sharding.named_shardings(abstract, mesh, RULES).state_dict()
    arrays = abstract.state_dict()
    total = sum(math.prod(a.shape) * 4 for a in arrays.values())
    for name, r in results.items():
        sizes = dict(zip(("data", "fsdp", "tensor"), r["mesh"]))
        expected = 0
        for key, a in arrays.items():
            parts = math.prod(
                sizes[m]
                for entry in specs[key].spec
                if entry is not None
                for m in (entry if isinstance(entry, tuple) else (entry,))
            )
            expected += math.prod(a.shape) * 4 // parts
        assert r["params"] == expected, name
        assert r["adam"] == 2 * expected + 4, name  # mu and nu like the weights, the count whole
        assert r["total_params"] == total
    assert results["dp"]["params"] == total
    assert results["fsdp"]["params"] < 0.2 * total  # ~1/8: only norms and "out" biases whole


def test_load_speed_runs_every_contender_on_the_same_state_dict(capsys, tmp_path):
    """Tiny GPT-2: each contender's load is checked against the source values inside the
    benchmark (it raises otherwise); the table and JSON name all three with their ratios."""
    import jparam as jp

    path = tmp_path / "load.json"
    dims = ["--vocab", "64", "--dim", "16", "--layers", "2", "--ctx", "8"]
    load_speed.main([*dims, "--rounds", "1", "--json", str(path)])
    assert capsys.readouterr().out.startswith("### Load speed: GPT-2")
    result = json.loads(path.read_text())
    names = [load_speed.FLOOR, load_speed.FROM_TORCH, load_speed.FROM_NUMPY]
    assert list(result["ratio"]) == names and result["ratio"][load_speed.FLOOR] == 1.0
    # GPT-2's count with lm_head tied to wte: embeddings, 2 blocks, ln_f
    block = 2 * 2 * 16 + (16 * 48 + 48) + (16 * 16 + 16) + (16 * 64 + 64) + (64 * 16 + 16)
    assert result["parameters"] == 64 * 16 + 8 * 16 + 2 * block + 2 * 16
    model = load_speed.build_jparam(64, 16, 2, 8)
    assert model.num_parameters() == result["parameters"]
    assert jp.ties(model) == {"lm_head.weight": ("wte.weight", False)}


PORT = '''"""A port."""
import jax

# a comment
MAPPING = jp.Mapping(
    [  # an inline comment
        rename("a", "b"),
    ]
)


class Net(jp.Module):
    """A docstring
    over two lines."""

    w: jp.Parameter  # counted

    def __call__(self, x):
        # not counted
        return x


def main():
    pass
'''


def test_port_sizes_counts_code_lines_of_the_model_and_the_mapping():
    assert port_sizes.sizes(PORT) == (4, 5)  # main() drives the port: not model code
    assert port_sizes.sizes(
        PORT.replace("MAPPING = jp.Mapping(", "MAPPING: Any = jp.Mapping(")
    ) == (
        4,
        5,
    )
    assert port_sizes.sizes("MAPPING: jp.Mapping | None = None\n") == (0, 0)


def test_port_sizes_lists_every_port_of_the_zoo(capsys):
    rows = port_sizes.main([])
    names = [name for name, *_ in rows]
    assert names[0] == "llama" and {"t5", "clip", "whisper", "swin"} <= set(names)
    assert all(model > 50 for _, _, model, _ in rows)  # a real model each
    assert "| llama | `examples/port_llama.py` |" in capsys.readouterr().out
