"""Whisper's audio encoder (``transformers``' ``WhisperEncoder``) written with jparam.

The attribute names are Hugging Face's, so its ``state_dict`` loads with no mapping:
``conv1``/``conv2`` (the Conv1d front end over log-mel frames), ``embed_positions`` (fixed
sinusoids that HF stores as a frozen ``nn.Embedding``), ``layers.N`` (pre-LN transformer blocks)
and the final ``layer_norm``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

import jparam as jp
from jparam import nn
from jparam.nn import functional as F

MAPPING: jp.Mapping | None = None  # the names already agree


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table: ``[sin(t * w_i), cos(t * w_i)]`` over geometric ``w_i``."""
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even channel count, got {channels}")
    log_step = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = np.exp(-log_step * np.arange(channels // 2, dtype=np.float32))
    t = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


class WhisperAttention(jp.Module):
    """Multi-head self-attention; ``k_proj`` has no bias, and ``q`` is scaled before ``q k^T``
    (HF's order, which rounds differently from scaling the product)."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    out_proj: nn.Linear
    num_heads: int = jp.field(static=True)

    def __init__(self, embed_dim: int, num_heads: int, *, key: jax.Array) -> None:
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.q_proj = nn.Linear(embed_dim, embed_dim, key=kq)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=False, key=kk)
        self.v_proj = nn.Linear(embed_dim, embed_dim, key=kv)
        self.out_proj = nn.Linear(embed_dim, embed_dim, key=ko)
        self.num_heads = num_heads

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        head_dim = d // self.num_heads

        def heads(y: jax.Array) -> jax.Array:  # (B, T, D) -> (B, H, T, head_dim)
            return y.reshape(b, t, self.num_heads, head_dim).transpose(0, 2, 1, 3)

        q = heads(self.q_proj(x) * head_dim**-0.5)
        k, v = heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0)  # q is already scaled
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, t, d))


class WhisperEncoderLayer(jp.Module):
    """Pre-LN block: ``x + attn(ln(x))``, then ``x + fc2(gelu(fc1(ln(x))))``."""

    self_attn: WhisperAttention
    self_attn_layer_norm: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear
    final_layer_norm: nn.LayerNorm
    activation: nn.GELU

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, *, key: jax.Array) -> None:
        ka, k1, k2 = jax.random.split(key, 3)
        self.self_attn = WhisperAttention(d_model, num_heads, key=ka)
        self.self_attn_layer_norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ffn_dim, key=k1)
        self.fc2 = nn.Linear(ffn_dim, d_model, key=k2)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.activation = nn.GELU()  # HF's "gelu": the exact erf form

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(self.activation(self.fc1(self.final_layer_norm(x))))


class WhisperEncoder(jp.Module):
    """Log-mel features ``(B, num_mel_bins, 2 * max_source_positions)`` to hidden states
    ``(B, max_source_positions, d_model)``.

    The input length is fixed, as in HF (Whisper pads every clip to 30 s): any other length
    raises. ``embed_positions.weight`` is saved and loaded under HF's name but frozen, as HF's
    ``requires_grad_(False)`` keeps it.
    """

    conv1: nn.Conv1d
    conv2: nn.Conv1d
    embed_positions: nn.Embedding
    layers: nn.ModuleList
    layer_norm: nn.LayerNorm
    activation: nn.GELU

    def __init__(
        self,
        num_mel_bins: int,
        d_model: int,
        encoder_layers: int,
        encoder_attention_heads: int,
        encoder_ffn_dim: int,
        max_source_positions: int,
        *,
        key: jax.Array,
    ) -> None:
        k1, k2, *ks = jax.random.split(key, 2 + encoder_layers)
        self.conv1 = nn.Conv1d(num_mel_bins, d_model, kernel_size=3, padding=1, key=k1)
        self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1, key=k2)
        table = sinusoids(max_source_positions, d_model)
        self.embed_positions = nn.Embedding.from_pretrained(table, freeze=True)
        self.layers = nn.ModuleList(
            WhisperEncoderLayer(d_model, encoder_attention_heads, encoder_ffn_dim, key=k)
            for k in ks
        )
        self.layer_norm = nn.LayerNorm(d_model)
        self.activation = nn.GELU()

    def __call__(self, input_features: jax.Array) -> jax.Array:
        positions = self.embed_positions.weight
        expected = positions.shape[0] * self.conv1.stride[0] * self.conv2.stride[0]
        if input_features.shape[-1] != expected:
            raise ValueError(
                f"WhisperEncoder expects input_features of length {expected} (the last axis; "
                f"2 * max_source_positions), got shape {tuple(input_features.shape)}: pad or "
                f"trim the log-mel frames to {expected}"
            )
        x = self.activation(self.conv1(input_features))
        x = self.activation(self.conv2(x))
        x = x.transpose(0, 2, 1) + positions.value
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


def from_config(config: Any, *, key: jax.Array) -> WhisperEncoder:
    """The encoder for a ``transformers.WhisperConfig`` (read by attribute), with fresh weights."""
    if config.activation_function != "gelu":
        raise NotImplementedError(
            f"this port implements activation_function='gelu', got {config.activation_function!r}"
        )
    return WhisperEncoder(
        config.num_mel_bins,
        config.d_model,
        config.encoder_layers,
        config.encoder_attention_heads,
        config.encoder_ffn_dim,
        config.max_source_positions,
        key=key,
    )
