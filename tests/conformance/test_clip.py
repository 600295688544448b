"""Hugging Face's CLIPModel against its jparam port (port_clip.py)."""

from __future__ import annotations

import fnmatch

import jax
import numpy as np
import pytest
import torch
from port_clip import MAPPING, from_config
from zoo import Port, assert_close, check_port

import jparam as jp

transformers = pytest.importorskip("transformers")

EOS = 3  # an end-of-text id below the other tokens: pooling "first EOS" and "top id" differ
# A key bias adds ``q . b`` to every logit of a query: softmax cancels it, so its gradient is
# zero in exact arithmetic and float noise (~1e-7 both sides) in practice (the zoo allows for
# that); the contrastive test below checks that the port's gradient is that noise.
KEY_BIAS = "*.self_attn.k_proj.bias"


def config(eos_token_id: int = EOS) -> transformers.CLIPConfig:
    text = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=16,
        projection_dim=16,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=eos_token_id,
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        projection_dim=16,
        attention_dropout=0.0,
    )
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    cfg._attn_implementation = "eager"
    return cfg


def torch_factory(cfg: transformers.CLIPConfig):
    def make_torch(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return transformers.CLIPModel(cfg)

    return make_torch


def inputs(batch: int = 3, left_padding: bool = False) -> dict[str, np.ndarray]:
    """Token ids with one EOS per row (ids after it reuse EOS as padding, as CLIP's tokenizer
    does), a padding mask hiding the last row's tail (or head), and random images."""
    rng = np.random.default_rng(0)
    ids = rng.integers(EOS + 1, 99, size=(3, 10))
    mask = np.ones((3, 10), np.int64)
    ids[0, 6], ids[1, 9] = EOS, EOS
    if left_padding:
        ids[2, :4], ids[2, 9], mask[2, :4] = EOS, EOS, 0
    else:
        ids[2, 5:], mask[2, 6:] = EOS, 0
    pixels = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    return {"input_ids": ids[:batch], "attention_mask": mask[:batch], "pixel_values": pixels}


def torch_forward(m, input_ids, attention_mask, pixel_values):
    out = m(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask)
    return out.logits_per_image, out.text_embeds, out.image_embeds


def jax_forward(model, input_ids, attention_mask, pixel_values):
    out = model(input_ids, pixel_values, attention_mask)
    return out.logits_per_image, out.text_embeds, out.image_embeds


def test_clip_conforms(tmp_path):
    cfg = config()
    port = Port(
        make_torch=torch_factory(cfg),
        model=from_config(cfg, key=jax.random.key(0)),
        mapping=MAPPING,
        torch_forward=torch_forward,
        jax_forward=jax_forward,
        inputs=inputs(),
    )
    model = check_port(port, tmp_path)
    # HF 5's position_ids buffers are not persistent: neither side saves them.
    assert not [k for k in model.state_dict() if "position_ids" in k]
    assert not [k for k in port.make_torch(0).state_dict() if "position_ids" in k]


@pytest.mark.parametrize(
    "eos_token_id, left_padding",
    [(2, False), (EOS, True)],
    ids=["legacy-eos-id-pools-top-token", "left-padding-fully-masked-rows"],
)
def test_clip_pooling_and_masks(eos_token_id, left_padding):
    """Old configs (``eos_token_id == 2``) pool at the largest id. Left padding with EOS as
    the pad id makes HF pool the first EOS, a padding position whose query sees no key at all:
    the output then rests on how a fully masked row is treated (both sides: uniform weights)."""
    cfg = config(eos_token_id)
    reference = torch_factory(cfg)(0).eval()
    x = inputs(left_padding=left_padding)
    model = from_config(cfg, key=jax.random.key(0)).load_state_dict(
        reference.state_dict(), mapping=MAPPING
    )
    with torch.no_grad():
        expected = torch_forward(reference, **{k: torch.from_numpy(v) for k, v in x.items()})
    for i, (a, b) in enumerate(zip(jax.jit(jax_forward)(model, **x), expected)):
        assert_close(a, b.numpy(), 1e-5, f"output {i}")


def test_clip_contrastive_loss_trains_logit_scale_as_torch():
    """HF's ``return_loss=True`` loss (symmetric cross-entropy over the logits): its value and
    every gradient, ``logit_scale``'s included, match torch."""
    cfg = config()
    reference = torch_factory(cfg)(0).eval()
    x = inputs(batch=2)
    model = from_config(cfg, key=jax.random.key(0)).load_state_dict(
        reference.state_dict(), mapping=MAPPING
    )
    out = reference(**{k: torch.from_numpy(v) for k, v in x.items()}, return_loss=True)
    out.loss.backward()

    def loss_fn(model):
        logits = model(x["input_ids"], x["pixel_values"], x["attention_mask"]).logits_per_text
        labels = np.arange(len(logits))
        ce = lambda z: -jax.nn.log_softmax(z)[labels, labels].mean()
        return (ce(logits) + ce(logits.T)) / 2

    loss, grads = jax.jit(jp.value_and_grad(loss_fn))(model)
    assert_close(loss, out.loss.detach().numpy(), 1e-5, "contrastive loss")
    torch_grads = dict(MAPPING({n: p.grad.numpy() for n, p in reference.named_parameters()}))
    for name, g in grads.named_parameters():
        if fnmatch.fnmatch(name, KEY_BIAS):  # zero up to float noise, on both sides
            assert np.abs(g.value).max() < 1e-6 and np.abs(torch_grads[name]).max() < 1e-6
        else:
            assert_close(g, torch_grads[name], 1e-4, f"gradient of {name}")
    assert float(grads.logit_scale.value) != 0.0
