"""timm's Swin Transformer against its jparam port in `port_swin`."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
import torch
from port_swin import MAPPING, from_config, relative_position_index, shifted_window_mask
from zoo import Port, check_port

pytest.importorskip("timm")
from timm.models.swin_transformer import (
    SwinTransformer,
    SwinTransformerBlock,
    get_relative_position_index,
)

# 16x16 images in 2x2 patches: a stage of 8x8 tokens in four 4x4 windows, every second block
# shifted by 2, then patch merging to a 4x4 map, where the window covers everything and nothing
# shifts. timm's default qkv bias: its key part has an exact gradient of zero (softmax cancels
# it), which the zoo holds to float noise and, after AdamW, to AdamW's step bound.
CONFIG = dict(
    img_size=16,
    patch_size=2,
    in_chans=3,
    num_classes=10,
    embed_dim=16,
    depths=(2, 2),
    num_heads=(2, 4),
    window_size=4,
    qkv_bias=True,
    drop_path_rate=0.0,
)
IMAGES = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)


def make_torch(config: dict, seed: int) -> torch.nn.Module:
    """timm's model with its own init, then every parameter perturbed, so that zero biases,
    LayerNorm's ones and zeros and the near-zero bias tables are no special values the port
    could get wrong unnoticed."""
    torch.manual_seed(seed)
    model = SwinTransformer(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def abstract_port(config: dict) -> Any:
    """The port's shapes, without random initialisation (which compiles a sampler per shape):
    what to load torch's weights into."""
    return jax.eval_shape(lambda key: from_config(config, key=key), jax.random.key(0))


def test_swin_conforms(tmp_path):
    port = Port(
        make_torch=lambda seed: make_torch(CONFIG, seed),
        model=abstract_port(CONFIG),
        mapping=MAPPING,
        torch_forward=lambda m, x: m(x),
        jax_forward=lambda m, x: m(x),
        inputs={"x": IMAGES},
    )
    check_port(port, tmp_path)


def test_the_saved_names_are_timms_and_the_masks_match_its_blocks():
    torch_model = make_torch(CONFIG, 0)
    port = abstract_port(CONFIG)
    assert list(port.state_dict()) == list(MAPPING(torch_model.state_dict()))
    blocks = [b for stage in port.layers for b in stage.blocks]
    torch_blocks = [b for stage in torch_model.layers for b in stage.blocks]
    for block, torch_block in zip(blocks, torch_blocks, strict=True):
        assert (block.window_size, block.shift_size) == (
            torch_block.window_size[0],
            torch_block.shift_size[0],
        )
        if torch_block.attn_mask is not None:
            resolution = torch_block.input_resolution[0]
            mask = shifted_window_mask(resolution, block.window_size, block.shift_size)
            np.testing.assert_array_equal(mask, torch_block.attn_mask.numpy())
    assert [b.shift_size for b in blocks] == [0, 2, 0, 0]  # none on the 4x4 map


@pytest.mark.parametrize(("resolution", "window"), [(8, 4), (16, 4), (12, 6), (7, 7)])
def test_window_constants_are_timms(resolution, window):
    block = SwinTransformerBlock(8, (resolution, resolution), 2, window_size=window, shift_size=3)
    np.testing.assert_array_equal(
        relative_position_index(window), get_relative_position_index(window, window)
    )
    if block.attn_mask is not None:
        np.testing.assert_array_equal(
            shifted_window_mask(resolution, window, 3), block.attn_mask.numpy()
        )


def test_a_dropout_rate_is_refused():
    with pytest.raises(ValueError, match="drop_path_rate"):
        config = {k: v for k, v in CONFIG.items() if k != "drop_path_rate"}  # timm's 0.1
        from_config(config, key=jax.random.key(0))
