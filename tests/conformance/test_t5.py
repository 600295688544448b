"""T5 (relu, original) and T5 v1.1 (gated-gelu, unscaled head) against transformers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from port_t5 import MAPPING, from_config, relative_position_bucket
from zoo import Port, check_port

transformers = pytest.importorskip("transformers")

VARIANTS = {
    "t5": dict(feed_forward_proj="relu"),
    # transformers 5 keeps lm_head tied here too; the flag only turns off the output scaling.
    "t5-v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def make_config(variant: str) -> transformers.T5Config:
    return transformers.T5Config(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        attn_implementation="eager",
        **VARIANTS[variant],
    )


def make_inputs(variant: str) -> dict[str, np.ndarray]:
    """The second source sequence is padded (a port that ignored the mask would attend to the
    random tokens there); v1.1 also pads the first target sequence, on top of the causal mask."""
    rng = np.random.default_rng(0)
    attention_mask = np.ones((2, 8), np.int64)
    attention_mask[1, 5:] = 0
    inputs = {
        "input_ids": rng.integers(0, 64, size=(2, 8)),
        "attention_mask": attention_mask,
        "decoder_input_ids": rng.integers(0, 64, size=(2, 6)),
    }
    if variant == "t5-v1.1":
        inputs["decoder_attention_mask"] = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], np.int64)
    return inputs


def make_port(variant: str) -> Port:
    config = make_config(variant)

    def make_torch(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return transformers.T5ForConditionalGeneration(config)

    return Port(
        make_torch=make_torch,
        model=from_config(config, key=jax.random.key(0)),
        mapping=MAPPING,
        torch_forward=lambda m, **inputs: m(**inputs).logits,
        jax_forward=lambda m, **inputs: m(**inputs),
        inputs=make_inputs(variant),
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_t5_conforms(variant, tmp_path):
    model = check_port(make_port(variant), tmp_path)
    # One parameter behind the four embedding names, as torch counts it.
    names = [n for n, _ in model.named_parameters()]
    assert "shared.weight" in names and "lm_head.weight" not in names
    assert {"encoder.embed_tokens.weight", "lm_head.weight"} <= set(model.state_dict())


@pytest.mark.parametrize("bidirectional", [True, False], ids=["encoder", "decoder"])
@pytest.mark.parametrize("num_buckets,max_distance", [(8, 16), (32, 128)])
def test_relative_position_buckets_match_transformers(bidirectional, num_buckets, max_distance):
    offsets = np.arange(-300, 301)[None, :]
    ours = relative_position_bucket(offsets, bidirectional, num_buckets, max_distance)
    theirs = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        torch.from_numpy(offsets), bidirectional, num_buckets, max_distance
    )
    np.testing.assert_array_equal(ours, theirs.numpy())
