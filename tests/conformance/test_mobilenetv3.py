"""timm's MobileNetV3 against its jparam port (`port_mobilenetv3`): the zoo's checks in training
mode (BatchNorm statistics updated by the AdamW steps), and the forward passes of a second
variant with TensorFlow's padding."""

from __future__ import annotations

import fnmatch
from functools import partial
from typing import Any

import jax
import numpy as np
import pytest
import torch
from port_mobilenetv3 import MAPPING, SMALL, SMALL_MINIMAL, MobileNetV3, mobilenetv3_small
from safetensors.torch import load_file
from zoo import Port, assert_close, check_port

import jparam as jp
from jparam import nn

timm = pytest.importorskip("timm")
from timm.layers import get_act_layer  # noqa: E402
from timm.models._efficientnet_blocks import SqueezeExcite  # noqa: E402
from timm.models._efficientnet_builder import decode_arch_def, round_channels  # noqa: E402

# Built with timm's MobileNetV3 builder as its mobilenetv3_small_* models are, with a narrower
# head (num_features) than timm's 1024 so that few weights are compared after the AdamW steps.
VARIANTS: dict[str, dict[str, Any]] = {
    # hard-swish, squeeze-excite with hard-sigmoid gates, 3x3 and 5x5 depthwise convs, skips
    "small": dict(arch=SMALL, channel_multiplier=0.5, num_features=128),
    # ReLU, no squeeze-excite, BatchNorm eps 1e-3 and TensorFlow's asymmetric "same" padding
    "tf-small-minimal": dict(
        arch=SMALL_MINIMAL,
        channel_multiplier=0.5,
        num_features=128,
        act="relu",
        bn_eps=1e-3,
        same_padding=True,
    ),
}

# Training-mode gradients in float32 carry noise that AdamW's first steps amplify where a
# gradient is near zero; it grows as maps shrink (at 1x1 the last stage's BatchNorms see 4 values
# per channel, and a depthwise conv uses one tap). The AdamW check takes images large enough that
# torch's own float32 run stays within the zoo's tolerance of its float64 run (max error after
# the three steps, in the zoo's measure: 4e-5 for "small" at 96x96; 0.4 at 32x32).
SHAPES = {"small": (4, 3, 96, 96), "tf-small-minimal": (4, 3, 64, 64)}

# The BatchNorm biases at the end of each block (``bn3``; ``bn2`` in the depthwise-separable
# block) get no gradient in training mode: their output reaches the next BatchNorm only through
# 1x1 convolutions and residual sums, whose batch mean takes the shift out again. Their gradient
# is float noise (1e-16 in float64) that AdamW would turn into full steps: both sides freeze them.
NO_TRAIN_GRADIENT = ("blocks.*.bn3.bias", "blocks.0.0.bn2.bias")


def fnmatch_any(name: str, globs: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


def timm_mobilenetv3(
    arch: list[list[str]],
    channel_multiplier: float,
    num_features: int,
    act: str = "hard_swish",
    bn_eps: float = 1e-5,
    same_padding: bool = False,
) -> torch.nn.Module:
    """timm's ``MobileNetV3`` with the arguments its ``mobilenetv3_small_*`` models use."""
    se = partial(
        SqueezeExcite,
        gate_layer="hard_sigmoid",
        force_act_layer=torch.nn.ReLU,
        rd_round_fn=round_channels,
    )
    return timm.models.mobilenetv3.MobileNetV3(
        block_args=decode_arch_def(arch),
        num_classes=10,
        num_features=num_features,
        stem_size=16,
        fix_stem=channel_multiplier < 0.75,
        round_chs_fn=partial(round_channels, multiplier=channel_multiplier),
        pad_type="same" if same_padding else "",
        act_layer=get_act_layer(act),
        se_layer=se,
        norm_layer=partial(torch.nn.BatchNorm2d, eps=bn_eps),
    )


def images(variant: str) -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPES[variant]).astype(np.float32)


def make_torch(variant: str):
    def make(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = timm_mobilenetv3(**VARIANTS[variant])
        # Fresh BatchNorms (mean 0, variance 1, weight 1, bias 0) would let eval mode skip the
        # running statistics and the affine part unnoticed: draw them instead.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0.0, 0.2)
                    m.running_mean.normal_(0.0, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.num_batches_tracked.fill_(seed + 3)
        for name, p in model.named_parameters():
            p.requires_grad_(not fnmatch_any(name, NO_TRAIN_GRADIENT))
        return model

    return make


def abstract(build) -> MobileNetV3:
    """The port's shapes only: loading fills them, and drawing weights that loading replaces
    would compile one initialiser per distinct shape (a minute on a busy CPU)."""
    return jax.eval_shape(build, jax.random.key(0))


def abstract_port(variant: str) -> MobileNetV3:
    return abstract(lambda k: MobileNetV3(**VARIANTS[variant], num_classes=10, key=k))


def make_port(variant: str) -> Port:
    return Port(
        make_torch=make_torch(variant),
        model=abstract_port(variant).freeze(*NO_TRAIN_GRADIENT),
        mapping=MAPPING,
        torch_forward=lambda m, x: m(x),
        jax_forward=lambda m, x: m(x),
        inputs={"x": images(variant)},
        train=True,
    )


def test_mobilenetv3_matches_timm(tmp_path):
    model = check_port(make_port("small"), tmp_path)
    assert isinstance(model, MobileNetV3)
    # the step counters are saved as torch's int64, with the loaded values
    jp.save(tmp_path / "port.safetensors", model)
    counters = {k: v for k, v in load_file(tmp_path / "port.safetensors").items() if "num_b" in k}
    assert len(counters) == sum(k.endswith("running_mean") for k in model.state_dict())
    assert all(v.dtype == torch.int64 and int(v) == 3 for v in counters.values())


def test_tensorflow_padding_and_eps_match_timm():
    """The ``tf_`` variant, forward only (the zoo's full checks run on "small"): eval mode, and
    training mode with the running statistics it leaves, both jitted."""
    reference = make_torch("tf-small-minimal")(0)
    state = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    port = abstract_port("tf-small-minimal").load_state_dict(state, strict=True, mapping=MAPPING)
    x = images("tf-small-minimal")
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(x)).numpy()
        expected_train = reference.train()(torch.from_numpy(x)).numpy()
    assert_close(jax.jit(lambda m, x: m(x))(port.eval(), x), expected, 1e-5, "eval logits")
    logits, trained = jax.jit(nn.stateful_call)(port.train(), x)
    assert_close(logits, expected_train, 1e-5, "training-mode logits")
    for name, value in reference.state_dict().items():
        assert_close(trained.state_dict()[name], value.numpy(), 1e-5, f"{name} after a step")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exactly_the_frozen_biases_get_no_training_gradient(variant):
    """In float64, training mode: the frozen biases' gradients are rounding noise, every other
    parameter's gradient is not (the freeze hides nothing that trains)."""
    model = make_torch(variant)(0).double().train().requires_grad_(True)
    x = torch.from_numpy(images(variant)).double()
    (model(x) ** 2).mean().backward()
    frozen = {n for n, _ in model.named_parameters() if fnmatch_any(n, NO_TRAIN_GRADIENT)}
    no_gradient = {n for n, p in model.named_parameters() if p.grad.abs().max() < 1e-12}
    assert frozen and no_gradient == frozen


@pytest.mark.parametrize(
    "name, args",
    [
        ("mobilenetv3_small_050", dict(channel_multiplier=0.5)),
        ("mobilenetv3_small_100", dict(channel_multiplier=1.0)),
        ("tf_mobilenetv3_small_minimal_100", dict(minimal=True, tf=True)),
    ],
)
def test_the_port_builds_timms_registered_models(name, args):
    """Names and shapes agree with ``timm.create_model``'s: the block strings and the channel
    rounding are timm's."""
    torch_model = timm.create_model(name, pretrained=False, num_classes=10)
    port = abstract(lambda k: mobilenetv3_small(**args, num_classes=10, key=k))
    expected = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in port.state_dict().items()} == expected
