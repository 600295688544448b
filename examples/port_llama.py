"""Port Hugging Face's LLaMA to jparam, check it against torch, and generate with a KV cache.

    python examples/port_llama.py      # needs torch and transformers (the [conformance] extra)

What a PyTorch user does to bring a model over, in four steps:

1. Write the modules with `jparam.nn`, keeping Hugging Face's attribute names
   (``model.layers.0.self_attn.q_proj``...): HF's ``state_dict`` keys are then already the
   port's names, and the mapping table is empty.
2. ``load_state_dict(state, strict=True, mapping=MAPPING)``: every key is used, none missing.
3. Compare the logits with torch's.
4. Decode JAX's way: a cache pytree preallocated to the final length, updated with
   ``lax.dynamic_update_slice``, and the whole loop (prefill, then one token per
   ``lax.scan`` step) compiled once by ``jax.jit``. It matches ``hf_model.generate`` token
   for token.
"""

from __future__ import annotations

import argparse
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jparam as jp
from jparam import nn
from jparam.nn import functional as F

# The port keeps HF's attribute names, so HF's state_dict loads as it is. (HF's rotary
# inverse frequencies are a non-persistent buffer, absent from its state_dict: the port
# computes them from static hyperparameters, so there is nothing to map there either.)
MAPPING: jp.Mapping | None = None

# One (keys, values) pair per layer, each (batch, kv_heads, max_len, head_dim).
Cache = list[tuple[jax.Array, jax.Array]]


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding of ``x`` ``(..., L, head_dim)`` as HF's LLaMA applies it:
    the two halves of ``head_dim`` (not interleaved pairs) rotate by ``position * inv_freq``,
    with the angles computed in float32."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = positions[:, None].astype(jnp.float32) * inv_freq  # (L, d/2)
    angles = jnp.concatenate([angles, angles], axis=-1)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x * jnp.cos(angles).astype(x.dtype) + rotated * jnp.sin(angles).astype(x.dtype)


class LlamaAttention(jp.Module):
    """Causal grouped-query attention: ``num_heads`` query heads share ``num_kv_heads``
    key/value heads, with rotary positions on queries and keys."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear
    head_dim: int = jp.field(static=True)
    rope_theta: float = jp.field(static=True)

    def __init__(self, config: Any, *, key: jax.Array) -> None:
        hidden, heads = config.hidden_size, config.num_attention_heads
        kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or hidden // heads
        self.rope_theta = float(config.rope_parameters["rope_theta"])
        bias = config.attention_bias
        kq, kk, kv, ko = jax.random.split(key, 4)
        self.q_proj = nn.Linear(hidden, heads * self.head_dim, bias, key=kq)
        self.k_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias, key=kk)
        self.v_proj = nn.Linear(hidden, kv_heads * self.head_dim, bias, key=kv)
        self.o_proj = nn.Linear(heads * self.head_dim, hidden, bias, key=ko)

    def __call__(
        self, x: jax.Array, positions: jax.Array, cache: tuple[jax.Array, jax.Array] | None
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        batch, length, _ = x.shape
        heads = lambda t: t.reshape(batch, length, -1, self.head_dim).swapaxes(1, 2)
        q = rotary(heads(self.q_proj(x)), positions, self.rope_theta)  # (B, H, L, D)
        k = rotary(heads(self.k_proj(x)), positions, self.rope_theta)  # (B, Hkv, L, D)
        v = heads(self.v_proj(x))
        if cache is None:  # a whole sequence attends causally to itself
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # write this chunk into the cache; attend to every position written so far
            at = (0, 0, positions[0], 0)
            k = lax.dynamic_update_slice(cache[0], k, at)
            v = lax.dynamic_update_slice(cache[1], v, at)
            mask = jnp.arange(k.shape[2]) <= positions[:, None]  # (L, max_len), True: attend
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
            cache = (k, v)
        return self.o_proj(out.swapaxes(1, 2).reshape(batch, length, -1)), cache


class LlamaMLP(jp.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

    gate_proj: nn.Linear
    up_proj: nn.Linear
    down_proj: nn.Linear

    def __init__(self, config: Any, *, key: jax.Array) -> None:
        assert config.hidden_act == "silu", config.hidden_act
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        kg, ku, kd = jax.random.split(key, 3)
        self.gate_proj = nn.Linear(hidden, inner, bias, key=kg)
        self.up_proj = nn.Linear(hidden, inner, bias, key=ku)
        self.down_proj = nn.Linear(inner, hidden, bias, key=kd)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(jp.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    self_attn: LlamaAttention
    mlp: LlamaMLP
    input_layernorm: nn.RMSNorm
    post_attention_layernorm: nn.RMSNorm

    def __init__(self, config: Any, *, key: jax.Array) -> None:
        ka, km = jax.random.split(key)
        self.self_attn = LlamaAttention(config, key=ka)
        self.mlp = LlamaMLP(config, key=km)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(self, x: jax.Array, positions: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
        h, cache = self.self_attn(self.input_layernorm(x), positions, cache)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class LlamaModel(jp.Module):
    """Token embedding, the decoder layers and the final norm."""

    embed_tokens: nn.Embedding
    layers: nn.ModuleList
    norm: nn.RMSNorm

    def __init__(self, config: Any, *, key: jax.Array) -> None:
        ke, *kl = jax.random.split(key, config.num_hidden_layers + 1)
        self.embed_tokens = nn.Embedding(
            config.vocab_size, config.hidden_size, config.pad_token_id, key=ke
        )
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, key=k) for k in kl)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def __call__(
        self, input_ids: jax.Array, positions: jax.Array, cache: Cache | None
    ) -> tuple[jax.Array, Cache | None]:
        x, new_cache = self.embed_tokens(input_ids), []
        for layer, layer_cache in zip(self.layers, cache or [None] * len(self.layers)):
            x, layer_cache = layer(x, positions, layer_cache)
            new_cache.append(layer_cache)
        return self.norm(x), (None if cache is None else new_cache)


class LlamaForCausalLM(jp.Module):
    """HF's ``LlamaForCausalLM``: the decoder and a bias-free ``lm_head``."""

    model: LlamaModel
    lm_head: nn.Linear

    def __init__(self, config: Any, *, key: jax.Array) -> None:
        km, kh = jax.random.split(key)
        self.model = LlamaModel(config, key=km)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, key=kh)

    def __call__(
        self, input_ids: jax.Array, cache: Cache | None = None, start: int | jax.Array = 0
    ) -> jax.Array | tuple[jax.Array, Cache]:
        """Logits ``(B, L, vocab)`` for ``input_ids`` ``(B, L)``. With a ``cache`` (see
        `init_cache`) the ids sit at positions ``start, start + 1, ...``, their keys and
        values are written there, and the result is ``(logits, updated cache)``."""
        positions = start + jnp.arange(input_ids.shape[1])
        hidden, cache = self.model(input_ids, positions, cache)
        logits = self.lm_head(hidden)
        return logits if cache is None else (logits, cache)


def from_config(config: Any, *, key: jax.Array) -> LlamaForCausalLM:
    """A randomly initialised port of an HF ``LlamaConfig``. PyTorch shares one matrix
    between ``lm_head`` and the embedding when ``tie_word_embeddings`` is set; a pytree has
    no sharing, so `jp.tie` declares it (both names still load and save, as in torch)."""
    model = LlamaForCausalLM(config, key=key)
    if config.tie_word_embeddings:
        model = jp.tie(model, "lm_head.weight", "model.embed_tokens.weight")
    return model


def port(hf_model: Any) -> LlamaForCausalLM:
    """The jparam model holding ``hf_model``'s weights. `jax.eval_shape` builds the port
    without drawing random weights; the strict load fills in every one."""
    skeleton = jax.eval_shape(lambda: from_config(hf_model.config, key=jax.random.key(0)))
    state = {name: t.detach().cpu().numpy() for name, t in hf_model.state_dict().items()}
    return skeleton.load_state_dict(state, strict=True, mapping=MAPPING)


def init_cache(model: LlamaForCausalLM, batch: int, max_len: int) -> Cache:
    """An empty KV cache with room for ``max_len`` positions, in the weights' dtype."""
    attn = model.model.layers[0].self_attn
    kv_heads = attn.k_proj.out_features // attn.head_dim
    zeros = jnp.zeros((batch, kv_heads, max_len, attn.head_dim), attn.k_proj.weight.dtype)
    return [(zeros, zeros) for _ in model.model.layers]


@functools.partial(jax.jit, static_argnames="max_new_tokens")
def generate(model: LlamaForCausalLM, input_ids: jax.Array, max_new_tokens: int) -> jax.Array:
    """Greedy decoding: the ``max_new_tokens`` ids ``(B, max_new_tokens)`` that follow
    ``input_ids`` ``(B, L)``. One compilation per prompt shape; no retrace per token."""
    batch, length = input_ids.shape
    cache = init_cache(model, batch, length + max_new_tokens)
    logits, cache = model(input_ids, cache)  # prefill: the prompt's keys and values
    first = logits[:, -1].argmax(-1)

    def step(carry: tuple, _: None) -> tuple[tuple, jax.Array]:
        token, cache, position = carry
        logits, cache = model(token[:, None], cache, position)
        token = logits[:, -1].argmax(-1)
        return (token, cache, position + 1), token

    _, rest = lax.scan(step, (first, cache, length), length=max_new_tokens - 1)
    return jnp.concatenate([first[:, None], rest.T], axis=1)


# -- the comparison with transformers ----------------------------------------------------------


_KEEP: list[Any] = []  # the operator schemas declared below live as long as this module


def import_transformers() -> Any:
    """``transformers``, also where the installed ``torchvision`` is a CUDA build next to a CPU
    torch (as this project's package registry serves them): its compiled operators cannot load,
    and two of its fake-tensor registrations then fail at import, which transformers triggers.
    Declaring those two operator schemas lets its pure-Python parts load. Elsewhere this is
    just ``import transformers``."""
    import torch

    try:
        import torchvision
    except ImportError:
        pass  # not installed: a text model needs none
    except RuntimeError as error:
        if "torchvision::nms does not exist" not in str(error):
            raise
        _KEEP.append(torch.library.Library("torchvision", "DEF"))
        for op in ("nms", "qnms"):
            _KEEP[-1].define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import torchvision  # noqa: F401
    import transformers

    return transformers


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2, help="fewer than --heads: GQA")
    p.add_argument("--tie", action="store_true", help="tie lm_head to the embedding")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def build_hf_model(args: argparse.Namespace) -> Any:
    """A small ``LlamaForCausalLM`` with random weights (nothing is downloaded)."""
    import torch

    transformers = import_transformers()
    config = transformers.LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.prompt_len + args.new_tokens,
        tie_word_embeddings=args.tie,
        attn_implementation="eager",
    )
    torch.manual_seed(args.seed)
    return transformers.LlamaForCausalLM(config).float().eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    hf_model = build_hf_model(args)
    model = port(hf_model)

    rng = np.random.default_rng(args.seed)
    input_ids = rng.integers(0, args.vocab, size=(args.batch, args.prompt_len), dtype=np.int32)
    torch_ids = torch.from_numpy(input_ids).long()
    with torch.no_grad():
        hf_logits = hf_model(torch_ids).logits.numpy()
    logits = np.asarray(jax.jit(lambda m, ids: m(ids))(model, input_ids))
    max_logit_diff = float(np.max(np.abs(logits - hf_logits)))

    t0 = time.perf_counter()
    tokens = np.asarray(generate(model, input_ids, args.new_tokens))
    seconds = time.perf_counter() - t0  # compilation included
    with torch.no_grad():
        hf_out = hf_model.generate(
            torch_ids,
            attention_mask=torch.ones_like(torch_ids),
            max_new_tokens=args.new_tokens,
            do_sample=False,
            eos_token_id=None,  # no early stop (random weights emit eos too): compare all
            pad_token_id=0,
        )
    hf_tokens = hf_out[:, args.prompt_len :].numpy()

    say(f"ported {model.num_parameters():,} parameters; mapping: {MAPPING or 'none, names agree'}")
    scale = float(np.abs(hf_logits).max())
    say(f"max |logits - torch logits| = {max_logit_diff:.2e} (max |logit| {scale:.2f})")
    say(f"generated {args.new_tokens} tokens in {seconds:.2f} s (compilation included)")
    for row, hf_row in zip(tokens, hf_tokens):
        say(f"  jparam {row.tolist()}\n  torch  {hf_row.tolist()}")
    say("tokens match transformers' generate" if np.array_equal(tokens, hf_tokens) else "MISMATCH")
    return {
        "max_logit_diff": max_logit_diff,
        "max_abs_logit": scale,
        "tokens": tokens.tolist(),
        "hf_tokens": hf_tokens.tolist(),
        "generate_seconds": seconds,
    }


if __name__ == "__main__":
    main()
