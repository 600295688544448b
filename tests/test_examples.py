"""Smoke tests for examples/: each script's ``main`` in a tiny configuration learns something."""

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

import jparam as jp

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    module_name = f"examples.{name}"
    if module_name not in sys.modules:  # dataclasses look their module up in sys.modules
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


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
    result = vit.main([*flags, "--quiet", "--out", str(out)])
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
