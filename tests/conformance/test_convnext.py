"""timm's ConvNeXt against its jparam port (`port_convnext`).

timm's default ConvNeXt block passes all the zoo's checks; a second configuration (1x1-conv MLP,
no layer scale, per-stage kernel sizes, another eps, non-square images) is checked for a strict
load and jitted outputs only: the full check spends tens of seconds compiling each model.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from port_convnext import MAPPING, ConvNeXt, from_config
from zoo import Port, assert_close, check_port, torch_state

timm_convnext = pytest.importorskip("timm.models.convnext")

SMALL = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48), num_classes=10, drop_path_rate=0.0)
VARIANTS = {
    # timm's default block: Linear MLP on channels-last maps, layer scale
    "linear-mlp": dict(SMALL),
    # 1x1-conv MLP with channels-first LayerNorm2d, no layer scale, per-stage kernels, eps
    "conv-mlp": dict(
        SMALL, conv_mlp=True, ls_init_value=None, kernel_sizes=(7, 5, 3, 3), norm_eps=1e-5
    ),
}
# 48x40 images: maps of 12x10, 6x5, 3x2, 1x1, so downsamples drop a row or column as torch does.
SHAPES = {"linear-mlp": (2, 3, 32, 32), "conv-mlp": (2, 3, 48, 40)}


def make_torch(config: dict):
    def make(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = timm_convnext.ConvNeXt(**config)
        # timm's init (layer scale 1e-6, norms 1/0, weights of std 0.02) leaves the residual
        # branches negligible and the GELU inputs near 0, where a wrong norm or a tanh GELU would
        # pass: draw unit-scale pre-activations and layer scales near 1 instead.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("gamma") or ("norm" in name and name.endswith("weight")):
                    p.uniform_(0.5, 1.5)
                elif name.endswith("bias"):
                    p.normal_(0.0, 0.1)
                else:  # conv and linear weights: std 1/sqrt(fan_in)
                    p.normal_(0.0, p[0].numel() ** -0.5)
        return model

    return make


def logits_and_features(model, x, head):
    """The logits and the last stage's map before the head (computed once)."""
    features = model.forward_features(x)
    return head(features), features


def make_port(variant: str) -> Port:
    config = VARIANTS[variant]
    x = np.random.default_rng(0).normal(size=SHAPES[variant]).astype(np.float32)
    return Port(
        make_torch=make_torch(config),
        model=from_config(config, key=jax.random.key(0)),
        mapping=MAPPING,
        torch_forward=lambda m, x: logits_and_features(m, x, m.forward_head),
        jax_forward=lambda m, x: logits_and_features(m, x, m.head),
        inputs={"x": x},
    )


def test_convnext_passes_the_zoo_checks(tmp_path):
    model = check_port(make_port("linear-mlp"), tmp_path)
    assert isinstance(model, ConvNeXt)


def test_the_conv_mlp_variant_matches_timm():
    port = make_port("conv-mlp")
    reference = port.make_torch(0).eval()
    x = port.inputs["x"]
    with torch.no_grad():
        expected = port.torch_forward(reference, torch.from_numpy(x))
    model = port.model.load_state_dict(torch_state(reference), strict=True).eval()
    assert model.stages[0].blocks[0].gamma is None  # ls_init_value=None: no layer scale
    outputs = jax.jit(port.jax_forward)(model, x)
    for what, out, ref in zip(("logits", "features"), outputs, expected):
        assert_close(out, ref.numpy(), port.rtol, what)


def test_the_port_has_timm_parameter_names_and_shapes():
    torch_model = make_torch(VARIANTS["linear-mlp"])(0)
    port = from_config(VARIANTS["linear-mlp"], key=jax.random.key(0))
    expected = {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in port.state_dict().items()} == expected


def test_from_config_refuses_what_the_port_does_not_implement():
    with pytest.raises(NotImplementedError, match="use_grn=False"):
        from_config(dict(SMALL, use_grn=True), key=jax.random.key(0))
    with pytest.raises(NotImplementedError, match="drop_path_rate=0.0"):
        from_config(dict(SMALL, drop_path_rate=0.1), key=jax.random.key(0))
