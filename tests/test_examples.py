"""Smoke tests for examples/: each script's ``main`` in a tiny configuration learns something."""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from example_modules import EXAMPLES, load_example

import jparam as jp


def test_vit_digits_learns_and_checkpoint_reloads(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("tqdm")
    vit = load_example("vit_digits")
    out = tmp_path / "ckpt" / "vit.safetensors"
    flags = [
        "--epochs",
        "5",
        "--warmup-epochs",
        "0.5",
        "--dim",
        "32",
        "--depth",
        "1",
        "--heads",
        "2",
    ]
    tb = ["--tensorboard", str(tmp_path / "tb"), "--log-every", "100", "--eval-every", "5"]
    tb = tb if importlib.util.find_spec("tensorboardX") else []
    result = vit.main([*flags, "--quiet", "--out", str(out), *tb])
    assert result["final_loss"] < result["first_loss"]
    assert result["test_accuracy"] > 0.3  # chance is 0.1
    assert result["restored_accuracy"] == result["test_accuracy"]

    # The file holds the state_dict by name and loads into a freshly initialised model.
    assert out.exists()
    args = vit.parse_args(flags)
    fresh = vit.build_model(args, jax.random.key(123))
    restored = vit.load_checkpoint(fresh, str(out))
    saved, metadata = jp.load_file(out)
    assert metadata["example"] == "vit_digits"
    assert set(saved) == set(restored.state_dict())
    assert "cls_token" in saved and "pos_embed" in saved
    for name, value in saved.items():
        np.testing.assert_array_equal(np.asarray(restored.state_dict()[name]), value)
    _, _, x_test, y_test, _ = vit.load_data()
    assert vit.accuracy(restored, x_test, y_test) == result["test_accuracy"]
    check_vit_tensorboard_events(result, restored)


def check_vit_tensorboard_events(result, model):
    """``--tensorboard``: statistics and histograms of every parameter and gradient by name."""
    if result["tensorboard"] is None:  # tensorboardX is not installed
        return
    from tests.test_logger import histograms, read_events, scalars

    events = read_events(result["tensorboard"])
    got = scalars(events)
    assert {s for s, t in got if t == "train/loss"} == {0, 100, 200}  # 5 epochs of 44 steps
    assert got[5 * 44, "test/accuracy"] == pytest.approx(result["test_accuracy"])
    names = [n for n, _ in model.named_parameters()]
    for step in (0, 100, 200):
        for name in names:
            assert {(step, f"params/{name}/norm"), (step, f"grads/{name}/norm")} <= got.keys()
        assert got[step, "global_norm/grads"] > 0
    assert got[200, "params/cls_token/nonfinite"] == 0.0
    assert {t for s, t in histograms(events) if s == 200} == {
        f"{kind}/{name}" for kind in ("params", "grads") for name in names
    }


@pytest.mark.parametrize("compute", ["bfloat16", "float16"])
def test_amp_trains_like_float32_with_float32_master_weights(compute):
    amp = load_example("amp_bfloat16")
    result = amp.main(["--compute", compute, "--steps", "120", "--hidden", "32"])
    assert result["compute_dtypes"] == [compute]  # what the loss saw
    assert result["param_dtypes"] == ["float32"] and result["grad_dtypes"] == ["float32"]
    assert result["final_loss"] < 0.3 * result["first_loss"]
    assert result["final_loss"] == pytest.approx(result["f32_final_loss"], abs=0.02)
    assert result["accuracy"] > 0.9 and result["accuracy"] >= result["f32_accuracy"] - 0.02
    if compute == "float16":
        # no overflow, and 120 steps are fewer than the example's growth_interval of 200
        assert result["loss_scale"] == 2.0**16
        assert result["skipped_steps"] == 0
    else:
        assert result["loss_scale"] is None


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_color_adjustment_recovers_the_transform(optimizer):
    color = load_example("color_adjustment")
    result = color.main(["--optimizer", optimizer, "--steps", "150", "--image-size", "8"])
    assert result["optimizer"] == optimizer
    assert result["final_loss"] < 1e-3 * result["first_loss"]
    assert result["matrix_error"] < 0.05 and result["bias_error"] < 0.05


def test_color_adjustment_swaps_optimizer_in_one_line():
    source = (EXAMPLES / "color_adjustment.py").read_text()
    assert sum("tx = " in line for line in source.splitlines()) == 1


def test_dynamic_weights_beat_any_fixed_weight():
    dyn = load_example("dynamic_weights")
    result = dyn.main(["--steps", "300", "--hidden", "32"])
    assert result["final_loss"] < 0.5 * result["first_loss"]
    assert result["final_loss"] < result["static_loss"]


def test_shared_weights_listed_once_and_train():
    shared = load_example("shared_weights")
    result = shared.main(["--ae-steps", "200", "--lm-steps", "150", "--dim", "16"])
    assert result["ae_parameter_names"] == ["weight", "enc_bias", "dec_bias"]
    assert result["ae_optimizer_floats"] == 2 * result["ae_num_parameters"]
    assert result["lm_parameter_names"].count("embed.weight") == 1
    assert not any("out" in n and "attn" not in n for n in result["lm_parameter_names"])
    assert result["ae_final_loss"] < 0.5 * result["ae_first_loss"]
    assert result["lm_final_loss"] < 0.5 * result["lm_first_loss"]


def test_finetune_frozen_trains_head_only():
    pytest.importorskip("sklearn")
    ft = load_example("finetune_frozen")
    flags = ["--hidden", "32", "--pretrain-epochs", "3", "--finetune-epochs", "3"]
    result = ft.main(flags)  # asserts inside that the backbone is bit-for-bit unchanged
    assert result["backbone_unchanged"]
    assert result["final_loss"] < result["first_loss"]
    assert result["accuracy"] > result["accuracy_before"]
    head = 32 * 5 + 5
    assert result["optimizer_floats"] == 2 * head  # adam's mu and nu, head only
    assert result["full_optimizer_floats"] > 10 * result["optimizer_floats"]


# -- train_sharded: runs as its own processes, with simulated CPU devices -----------------------

SHARDED_TINY = ["--steps", "8", "--batch", "8", "--seq", "8", "--vocab", "16", "--dim", "16"]
SHARDED_TINY += ["--depth", "1", "--heads", "2", "--lr", "1e-2", "--json"]


def run_sharded_example(devices, argv_per_process, timeout=300):
    """Runs examples/train_sharded.py once per argv, all at once; returns each JSON result."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(EXAMPLES.parent), *filter(None, [env.get("PYTHONPATH")])]
    )
    script = str(EXAMPLES / "train_sharded.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argv_per_process
    ]
    outs = []
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"train_sharded failed:\n{out[-2000:]}\n{err[-3000:]}"
    # gloo prints connection lines on stdout; the result is the last line.
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_train_sharded_fsdp_holds_an_eighth_per_device():
    (result,) = run_sharded_example(8, [["--strategy", "fsdp", *SHARDED_TINY]])
    assert result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert result["final_loss"] < result["first_loss"]
    assert result["specs"]["blocks.0.fc1.weight"] == "P('tensor', 'fsdp')"  # 'tensor' has size 1
    # Every weight is split 8 ways; only the small norm scales and shifts are replicated.
    assert result["param_bytes_per_device"] < 0.2 * result["param_bytes"]
    assert result["opt_bytes_per_device"] < 2 * 0.2 * result["param_bytes"] + 64


def test_train_sharded_two_processes_as_documented():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["--strategy", "fsdp_tp", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    results = run_sharded_example(
        4, [[*argv, "--process-id", str(i), *SHARDED_TINY] for i in range(2)]
    )
    assert [r["processes"] for r in results] == [2, 2]
    assert results[0]["mesh"] == {"data": 1, "fsdp": 2, "tensor": 4}
    assert results[0]["first_loss"] == results[1]["first_loss"]
    assert results[0]["final_loss"] == results[1]["final_loss"] < results[0]["first_loss"]
    assert results[0]["specs"]["blocks.0.fc2.weight"] == "P('fsdp', 'tensor')"


def test_port_llama_generates_what_transformers_generates():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    llama = load_example("port_llama")
    flags = ["--vocab", "64", "--hidden", "32", "--intermediate", "64", "--new-tokens", "10"]
    result = llama.main([*flags, "--quiet"])
    assert result["max_logit_diff"] <= 1e-5 * result["max_abs_logit"]
    assert np.asarray(result["tokens"]).shape == (2, 10)
    assert result["tokens"] == result["hf_tokens"]  # greedy, with a KV cache, token for token
