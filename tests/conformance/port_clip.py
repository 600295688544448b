"""Hugging Face's ``CLIPModel`` (a text tower and a vision tower) written with jparam.

Attribute names follow ``transformers``, so its ``state_dict`` loads as it is; the one rule in
`MAPPING` fixes HF's ``pre_layrnorm`` spelling. The ``position_ids`` buffers of HF's embeddings
are not persistent (they never appear in its ``state_dict``), so the port computes positions
with ``jnp.arange`` instead of holding them. ``from_config`` takes the HF ``CLIPConfig``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import jparam as jp
from jparam import nn


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)`` (``hidden_act="quick_gelu"``)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


class CLIPAttention(jp.Module):
    """Multi-head self-attention with separate q/k/v projections, as HF names them."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    out_proj: nn.Linear
    num_heads: int = jp.field(static=True)

    def __init__(self, dim: int, num_heads: int, *, key: jax.Array) -> None:
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.q_proj, self.k_proj = nn.Linear(dim, dim, key=kq), nn.Linear(dim, dim, key=kk)
        self.v_proj, self.out_proj = nn.Linear(dim, dim, key=kv), nn.Linear(dim, dim, key=ko)
        self.num_heads = num_heads

    def __call__(self, x: jax.Array, mask: jax.Array | None, causal: bool) -> jax.Array:
        """``x`` is ``(B, T, D)``; ``mask`` (bool, True = may attend) broadcasts to
        ``(B, H, T, T)``; ``causal`` also hides later positions."""
        b, t, d = x.shape

        def heads(y: jax.Array) -> jax.Array:  # (B, T, D) -> (B, H, T, D / H)
            return y.reshape(b, t, self.num_heads, d // self.num_heads).transpose(0, 2, 1, 3)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = nn.functional.scaled_dot_product_attention(q, k, v, mask, is_causal=causal)
        return self.out_proj(out.transpose(0, 2, 1, 3).reshape(b, t, d))


class CLIPMLP(jp.Module):
    fc1: nn.Linear
    fc2: nn.Linear
    act: Callable[[jax.Array], jax.Array] = jp.field(static=True)

    def __init__(self, dim: int, hidden: int, act: str, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.fc1, self.fc2 = nn.Linear(dim, hidden, key=k1), nn.Linear(hidden, dim, key=k2)
        self.act = ACTIVATIONS[act]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(jp.Module):
    """A pre-LayerNorm transformer block."""

    self_attn: CLIPAttention
    layer_norm1: nn.LayerNorm
    mlp: CLIPMLP
    layer_norm2: nn.LayerNorm

    def __init__(self, cfg: Any, *, key: jax.Array) -> None:
        ka, km = jax.random.split(key)
        dim, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.self_attn = CLIPAttention(dim, cfg.num_attention_heads, key=ka)
        self.layer_norm1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = CLIPMLP(dim, cfg.intermediate_size, cfg.hidden_act, key=km)
        self.layer_norm2 = nn.LayerNorm(dim, eps=eps)

    def __call__(self, x: jax.Array, mask: jax.Array | None, causal: bool) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x), mask, causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(jp.Module):
    layers: nn.ModuleList

    def __init__(self, cfg: Any, *, key: jax.Array) -> None:
        keys = jax.random.split(key, cfg.num_hidden_layers)
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg, key=k) for k in keys)

    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, causal: bool = False
    ) -> jax.Array:
        for layer in self.layers:
            x = layer(x, mask, causal)
        return x


class CLIPTextEmbeddings(jp.Module):
    token_embedding: nn.Embedding
    position_embedding: nn.Embedding

    def __init__(self, cfg: Any, *, key: jax.Array) -> None:
        kt, kp = jax.random.split(key)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size, key=kt)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size, key=kp)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[-1])
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPTextTransformer(jp.Module):
    """Causal text encoder; pools the final-normed state at each sequence's end-of-text token."""

    embeddings: CLIPTextEmbeddings
    encoder: CLIPEncoder
    final_layer_norm: nn.LayerNorm
    eos_token_id: int = jp.field(static=True)

    def __init__(self, cfg: Any, *, key: jax.Array) -> None:
        ke, kx = jax.random.split(key)
        self.embeddings = CLIPTextEmbeddings(cfg, key=ke)
        self.encoder = CLIPEncoder(cfg, key=kx)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.eos_token_id = cfg.eos_token_id

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """``(B, T)`` token ids and padding mask (1 = token) -> pooled ``(B, D)``."""
        mask = None if attention_mask is None else attention_mask[:, None, None, :].astype(bool)
        x = self.encoder(self.embeddings(input_ids), mask, causal=True)
        x = self.final_layer_norm(x)
        if self.eos_token_id == 2:  # configs older than HF's fix: the end token has the top id
            end = jnp.argmax(input_ids, axis=-1)
        else:  # the first end-of-text token (padding may reuse its id)
            end = jnp.argmax(input_ids == self.eos_token_id, axis=-1)
        return x[jnp.arange(x.shape[0]), end]


class CLIPVisionEmbeddings(jp.Module):
    """Patches by a bias-free strided conv, a learned class token, learned positions."""

    class_embedding: jp.Parameter
    patch_embedding: nn.Conv2d
    position_embedding: nn.Embedding

    def __init__(self, cfg: Any, *, key: jax.Array) -> None:
        kc, kp, kq = jax.random.split(key, 3)
        dim, patch = cfg.hidden_size, cfg.patch_size
        self.class_embedding = jp.Parameter(jax.random.normal(kc, (dim,)))
        self.patch_embedding = nn.Conv2d(
            cfg.num_channels, dim, kernel_size=patch, stride=patch, bias=False, key=kp
        )
        self.position_embedding = nn.Embedding((cfg.image_size // patch) ** 2 + 1, dim, key=kq)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixel_values)  # (B, D, H', W')
        b, d = patches.shape[:2]
        patches = patches.reshape(b, d, -1).transpose(0, 2, 1)  # (B, H' W', D)
        cls = jnp.broadcast_to(self.class_embedding.value, (b, 1, d))
        x = jnp.concatenate([cls, patches], axis=1)
        return x + self.position_embedding(jnp.arange(x.shape[1]))


class CLIPVisionTransformer(jp.Module):
    """ViT with a LayerNorm before the encoder; pools the class token."""

    embeddings: CLIPVisionEmbeddings
    pre_layernorm: nn.LayerNorm  # HF: pre_layrnorm (see MAPPING)
    encoder: CLIPEncoder
    post_layernorm: nn.LayerNorm

    def __init__(self, cfg: Any, *, key: jax.Array) -> None:
        ke, kx = jax.random.split(key)
        self.embeddings = CLIPVisionEmbeddings(cfg, key=ke)
        self.pre_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = CLIPEncoder(cfg, key=kx)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """``(B, C, H, W)`` images -> pooled ``(B, D)``."""
        x = self.encoder(self.pre_layernorm(self.embeddings(pixel_values)))
        return self.post_layernorm(x[:, 0])


class CLIPOutput(NamedTuple):
    logits_per_image: jax.Array
    logits_per_text: jax.Array
    text_embeds: jax.Array
    image_embeds: jax.Array


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(x**2, axis=-1, keepdims=True))


class CLIPModel(jp.Module):
    """Both towers, bias-free projections to a shared space, and a learned log temperature."""

    text_model: CLIPTextTransformer
    vision_model: CLIPVisionTransformer
    visual_projection: nn.Linear
    text_projection: nn.Linear
    logit_scale: jp.Parameter

    def __init__(self, config: Any, *, key: jax.Array) -> None:
        kt, kv, kpv, kpt = jax.random.split(key, 4)
        text, vision, dim = config.text_config, config.vision_config, config.projection_dim
        self.text_model = CLIPTextTransformer(text, key=kt)
        self.vision_model = CLIPVisionTransformer(vision, key=kv)
        self.visual_projection = nn.Linear(vision.hidden_size, dim, bias=False, key=kpv)
        self.text_projection = nn.Linear(text.hidden_size, dim, bias=False, key=kpt)
        self.logit_scale = jp.Parameter(jnp.asarray(config.logit_scale_init_value, jnp.float32))

    def get_text_features(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def get_image_features(self, pixel_values: jax.Array) -> jax.Array:
        return self.visual_projection(self.vision_model(pixel_values))

    def __call__(
        self,
        input_ids: jax.Array,
        pixel_values: jax.Array,
        attention_mask: jax.Array | None = None,
    ) -> CLIPOutput:
        text_embeds = _unit(self.get_text_features(input_ids, attention_mask))
        image_embeds = _unit(self.get_image_features(pixel_values))
        logits_per_text = text_embeds @ image_embeds.T * jnp.exp(self.logit_scale.value)
        return CLIPOutput(logits_per_text.T, logits_per_text, text_embeds, image_embeds)


# HF's names -> the port's: only the vision tower's misspelt pre-LayerNorm differs.
MAPPING = jp.Mapping(
    [jp.mapping.rename("vision_model.pre_layrnorm.*", "vision_model.pre_layernorm.*")]
)


def from_config(config: Any, *, key: jax.Array) -> CLIPModel:
    """A randomly initialised port of ``transformers.CLIPModel(config)``."""
    return CLIPModel(config, key=key)
