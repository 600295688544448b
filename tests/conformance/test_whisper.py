"""Whisper's encoder (``transformers``) against its jparam port in `port_whisper`."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from port_whisper import MAPPING, from_config, sinusoids
from zoo import Port, check_port, torch_state

transformers = pytest.importorskip("transformers")
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

CONFIG = transformers.WhisperConfig(
    num_mel_bins=16,
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=4,
    encoder_ffn_dim=64,
    max_source_positions=16,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    encoder_layerdrop=0.0,
    attn_implementation="eager",
)
FEATURES = np.random.default_rng(0).normal(size=(2, 16, 32)).astype(np.float32)


def make_torch(seed: int) -> torch.nn.Module:
    """HF's encoder with its own init, then every trainable tensor perturbed so that biases
    (zero) and LayerNorm affines (ones, zeros) are no special values the port could get wrong
    unnoticed. ``embed_positions`` keeps HF's sinusoids."""
    torch.manual_seed(seed)
    encoder = WhisperEncoder(CONFIG)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return encoder


def make_port() -> Port:
    return Port(
        make_torch=make_torch,
        model=from_config(CONFIG, key=jax.random.key(0)),
        mapping=MAPPING,
        torch_forward=lambda m, input_features: m(input_features).last_hidden_state,
        jax_forward=lambda m, input_features: m(input_features),
        inputs={"input_features": FEATURES},
    )


def test_whisper_encoder_conforms(tmp_path):
    model = check_port(make_port(), tmp_path)
    assert not model.embed_positions.weight.trainable  # HF's requires_grad_(False), kept


def test_the_port_builds_hf_position_table_and_shapes():
    """A fresh port already holds HF's sinusoids, so only learned weights need loading."""
    reference = torch_state(make_torch(0))
    fresh = from_config(CONFIG, key=jax.random.key(1))
    np.testing.assert_allclose(
        np.asarray(fresh.embed_positions.weight), reference["embed_positions.weight"], atol=1e-6
    )
    np.testing.assert_allclose(sinusoids(16, 32), reference["embed_positions.weight"], atol=1e-6)
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in reference.items()
    }


@pytest.mark.parametrize("length", [30, 34])
def test_an_input_of_the_wrong_length_raises_as_in_hf(length):
    features = FEATURES[..., :1].repeat(length, axis=-1)
    with pytest.raises(ValueError, match="of length 32"):
        make_torch(0)(torch.from_numpy(features))
    model = from_config(CONFIG, key=jax.random.key(0))
    with pytest.raises(ValueError, match=rf"length 32 .*got shape \(2, 16, {length}\)"):
        model(features)
    with pytest.raises(ValueError, match="length 32"):
        jax.jit(model.__call__)(features)
