"""Hugging Face's ``LlamaForCausalLM`` against the port in ``examples/port_llama.py``.

The zoo's five checks (strict load, logits, gradients, AdamW, save back to torch) on two
configurations: grouped-query attention with an untied head, and multi-head attention with
the head tied to the embedding (`jp.tie`) and a padding id. Then the example's KV-cache
decoding against the full forward pass: the cache must give the same logits, step by step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from example_modules import load_example
from zoo import Port, assert_close, check_port

transformers = pytest.importorskip("transformers")

llama = load_example("port_llama")

SMALL = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32,
    attn_implementation="eager",
)
VARIANTS = {
    "gqa-untied": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "mha-tied-pad": dict(num_key_value_heads=4, tie_word_embeddings=True, pad_token_id=0),
}


def make_config(variant: str):
    return transformers.LlamaConfig(**{**SMALL, **VARIANTS[variant]})


def make_torch(variant: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(make_config(variant))


def input_ids(batch: int = 2, length: int = 8) -> np.ndarray:
    ids = np.random.default_rng(0).integers(0, SMALL["vocab_size"], size=(batch, length))
    ids[0, 3] = 0  # the padding id of "mha-tied-pad": its embedding row gets no gradient
    return ids


def skeleton(variant: str):
    """The port's shapes only (no random init to compile): check_port loads torch's weights."""
    return jax.eval_shape(lambda: llama.from_config(make_config(variant), key=jax.random.key(0)))


def make_port(variant: str) -> Port:
    return Port(
        make_torch=lambda seed: make_torch(variant, seed),
        model=skeleton(variant),
        mapping=llama.MAPPING,
        torch_forward=lambda m, input_ids: m(input_ids).logits,
        jax_forward=lambda m, input_ids: m(input_ids),
        inputs={"input_ids": input_ids()},
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_conforms(variant, tmp_path):
    model = check_port(make_port(variant), tmp_path)
    names = [name for name, _ in model.named_parameters()]
    tied = VARIANTS[variant]["tie_word_embeddings"]
    assert ("lm_head.weight" in names) is not tied  # a tied head is one parameter, listed once
    assert "lm_head.weight" in model.state_dict()  # ... but saved under both names, as torch


@pytest.fixture(scope="module")
def ported():
    """The example's `port` of the GQA model (weights loaded strictly from torch's)."""
    return llama.port(make_torch("gqa-untied", 0).float().eval())


def test_kv_cache_gives_the_full_forward_logits_step_by_step(ported):
    ids = jnp.asarray(input_ids(length=12), jnp.int32)
    full = jax.jit(lambda m, ids: m(ids))(ported, ids)

    @jax.jit
    def cached(model, ids):
        cache = llama.init_cache(model, ids.shape[0], 16)  # longer than needed: masked tail
        first, cache = model(ids[:, :5], cache)  # prefill five tokens, then one at a time

        def step(cache, t):
            logits, cache = model(jax.lax.dynamic_slice_in_dim(ids, t, 1, axis=1), cache, t)
            return cache, logits[:, 0]

        _, rest = jax.lax.scan(step, cache, jnp.arange(5, ids.shape[1]))
        return jnp.concatenate([first, rest.swapaxes(0, 1)], axis=1)

    assert_close(cached(ported, ids), full, 1e-5, "KV-cache logits vs the full forward")


def test_generate_is_greedy_decoding_of_the_full_forward(ported):
    """Each generated token is the argmax of the uncached model's logits on the prefix so far:
    `generate` is checked against the plain forward pass, not only against itself."""
    prompt = jnp.asarray(input_ids(), jnp.int32)
    tokens = llama.generate(ported, prompt, 6)
    assert tokens.shape == (2, 6) and tokens.dtype == jnp.int32
    sequence = jnp.concatenate([prompt, tokens], axis=1)
    logits = jax.jit(lambda m, ids: m(ids))(ported, sequence[:, :-1])[:, prompt.shape[1] - 1 :]
    np.testing.assert_array_equal(np.asarray(logits.argmax(-1)), np.asarray(tokens))
