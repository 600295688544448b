"""Mappings at load and save time, checked against PyTorch modules written by hand."""

from __future__ import annotations

import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import jparam as jp
from jparam import nn
from jparam.mapping import MappingError

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

E, HEADS, LAYERS, T = 8, 2, 2, 5  # E x E: c_proj is square, the trap a mapping must name


# -- an HF GPT-2-style model in torch, written by hand (no `transformers` needed) ---------------
class Conv1D(torch.nn.Module):
    """HF's Conv1D: a linear layer whose weight is stored (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = torch.nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return x @ self.weight + self.bias


class TorchAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = Conv1D(3 * E, E)
        self.c_proj = Conv1D(E, E)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(E, dim=-1)
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, HEADS, E // HEADS).transpose(1, 2) for z in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, E))


class TorchMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc = Conv1D(4 * E, E)
        self.c_proj = Conv1D(E, 4 * E)

    def forward(self, x):
        return self.c_proj(torch.nn.functional.gelu(self.c_fc(x), approximate="tanh"))


class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(E)
        self.attn = TorchAttention()
        self.ln_2 = torch.nn.LayerNorm(E)
        self.mlp = TorchMLP()

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h = torch.nn.ModuleList(TorchBlock() for _ in range(LAYERS))
        with torch.no_grad():  # non-trivial norms, so a wrong mapping shows
            for p in self.parameters():
                if p.ndim == 1:
                    p.add_(torch.randn_like(p) * 0.1)

    def forward(self, x):
        for block in self.h:
            x = block(x)
        return x


# -- the same model written with jparam.nn: separate q/k/v Linear layers ------------------------
class Attention(jp.Module):
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    proj: nn.Linear

    def __init__(self, *, key: jax.Array) -> None:
        kq, kk, kv, kp = jax.random.split(key, 4)
        self.q = nn.Linear(E, E, key=kq)
        self.k = nn.Linear(E, E, key=kk)
        self.v = nn.Linear(E, E, key=kv)
        self.proj = nn.Linear(E, E, key=kp)

    def __call__(self, x):
        t = x.shape[-2]
        q, k, v = (f(x).reshape(*x.shape[:-1], HEADS, E // HEADS) for f in (self.q, self.k, self.v))
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(E // HEADS)
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
        y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, axis=-1), v)
        return self.proj(y.reshape(x.shape))


class MLP(jp.Module):
    c_fc: nn.Linear
    c_proj: nn.Linear

    def __init__(self, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.c_fc = nn.Linear(E, 4 * E, key=k1)
        self.c_proj = nn.Linear(4 * E, E, key=k2)

    def __call__(self, x):
        return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=True))


class Block(jp.Module):
    ln_1: nn.LayerNorm
    ln_2: nn.LayerNorm
    attn: Attention
    mlp: MLP

    def __init__(self, *, key: jax.Array) -> None:
        k1, k2 = jax.random.split(key)
        self.ln_1, self.ln_2 = nn.LayerNorm(E), nn.LayerNorm(E)
        self.attn, self.mlp = Attention(key=k1), MLP(key=k2)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(jp.Module):
    blocks: list

    def __init__(self, *, key: jax.Array) -> None:
        self.blocks = [Block(key=k) for k in jax.random.split(key, LAYERS)]

    def __call__(self, x):
        for b in self.blocks:
            x = b(x)
        return x


CONV1D = ["h.*.attn.c_attn.weight", "h.*.attn.c_proj.weight", "h.*.mlp.c_fc.weight"]
GPT2_MAPPING = jp.Mapping(
    [
        jp.mapping.transpose(*CONV1D, "h.*.mlp.c_proj.weight"),
        jp.mapping.split_into(
            "h.*.attn.c_attn.*", ["h.*.attn.q.*", "h.*.attn.k.*", "h.*.attn.v.*"]
        ),
        jp.mapping.rename(
            r"h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"h.\1.attn.proj.\2", regex=True
        ),
        jp.mapping.rename("h.*", "blocks.*"),
    ]
)


@pytest.fixture(scope="module")
def gpt():
    torch.manual_seed(0)
    return TorchGPT().eval()


def _x():
    return np.random.default_rng(0).normal(size=(2, T, E)).astype(np.float32)


def test_gpt2_conv1d_and_fused_qkv_load_with_one_mapping(gpt):
    model = GPT(key=jax.random.key(0)).load_state_dict(gpt.state_dict(), mapping=GPT2_MAPPING)
    x = _x()
    with torch.no_grad():
        want = gpt(torch.from_numpy(x)).numpy()
    got = jax.jit(lambda m, x: m(x))(model, x)
    chex.assert_trees_all_close(np.asarray(got), want, rtol=1e-5, atol=1e-5)
    q = model.blocks[1].attn.q.weight.value  # the first E output columns of c_attn, as (out, in)
    np.testing.assert_array_equal(q, gpt.h[1].attn.c_attn.weight.detach().numpy()[:, :E].T)


def test_gpt2_save_with_mapping_is_read_strictly_by_torch(gpt, tmp_path):
    model = GPT(key=jax.random.key(0)).load_state_dict(gpt.state_dict(), mapping=GPT2_MAPPING)
    path = tmp_path / "gpt.safetensors"
    jp.save(path, model, mapping=GPT2_MAPPING)
    fresh = TorchGPT()
    fresh.load_state_dict(safetensors_torch.load_file(str(path)), strict=True)
    for name, value in gpt.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name].numpy(), value.numpy(), name)
    # ... and jp.load reads the same file back with the same mapping
    again = jp.load(path, GPT(key=jax.random.key(1)), mapping=GPT2_MAPPING)
    chex.assert_trees_all_equal(jp.state_dict(again), jp.state_dict(model))


def test_a_mapping_given_as_a_list_of_rules(gpt):
    rules = list(GPT2_MAPPING.rules)
    a = GPT(key=jax.random.key(0)).load_state_dict(gpt.state_dict(), mapping=rules)
    b = jp.load_state_dict(GPT(key=jax.random.key(0)), gpt.state_dict(), mapping=GPT2_MAPPING)
    chex.assert_trees_all_equal(jp.state_dict(a), jp.state_dict(b))


def test_a_rule_that_matches_nothing_is_an_error_naming_it(gpt):
    bad = jp.Mapping([*GPT2_MAPPING.rules, jp.mapping.transpose("h.*.attn.c_atn.weight")])
    with pytest.raises(MappingError, match=r"transpose\('h\.\*\.attn\.c_atn\.weight'\)"):
        GPT(key=jax.random.key(0)).load_state_dict(gpt.state_dict(), mapping=bad)
    with pytest.raises(MappingError, match=r"rename\('encoder\.\*\*', 'blocks\.\*\*'\)"):
        jp.mapping.rename("encoder.**", "blocks.**")(dict(gpt.state_dict()))


def test_a_transposed_weight_error_says_transpose(gpt):
    # transposes only c_attn and forgets the other Conv1D weights
    no_transpose = jp.Mapping([jp.mapping.transpose(CONV1D[0]), *GPT2_MAPPING.rules[1:]])
    with pytest.raises(jp.StateDictError) as info:
        GPT(key=jax.random.key(0)).load_state_dict(gpt.state_dict(), mapping=no_transpose)
    msg = str(info.value)
    assert "blocks.0.mlp.c_fc.weight: shape mismatch, expected (32, 8), got (8, 32): " in msg
    assert "the transpose of the expected shape" in msg
    assert "jp.mapping.transpose('blocks.0.mlp.c_fc.weight')" in msg
    # the square c_proj cannot be detected: no error names it (the trap the docs describe)
    assert "attn.proj.weight" not in msg


def test_a_shape_error_that_is_no_transpose_has_no_hint():
    lin = nn.Linear(3, 4, key=jax.random.key(0))
    with pytest.raises(jp.StateDictError) as info:
        lin.load_state_dict({"weight": np.zeros((4, 5), np.float32), "bias": np.zeros(4)})
    assert "expected (4, 3), got (4, 5)" in str(info.value)
    assert "transpose" not in str(info.value)


def test_concat_and_its_inverse_with_unequal_sizes():
    state = {"a.q": np.ones((2, 3)), "a.kv": np.full((4, 3), 2.0), "b": np.zeros(1)}
    m = jp.Mapping([jp.mapping.concat(["*.q", "*.kv"], "*.qkv", axis=0, sizes=[2, 4])])
    out = m(state)
    assert list(out) == ["a.qkv", "b"]
    np.testing.assert_array_equal(out["a.qkv"], np.concatenate([state["a.q"], state["a.kv"]]))
    back = m.inverse()(out)
    assert list(back) == ["a.q", "a.kv", "b"]
    for k, v in state.items():
        np.testing.assert_array_equal(back[k], v)


def test_split_that_does_not_divide_says_so():
    m = jp.mapping.split_into("qkv", ["q", "k", "v"])
    with pytest.raises(MappingError, match="7 entries along axis 0.*3 equal parts"):
        m({"qkv": np.zeros(7)})


def test_reshape_and_cast_need_the_original_to_be_saved():
    state = {"w": np.arange(6, dtype=np.int32)}
    m = jp.Mapping([jp.mapping.reshape("w", shape=(2, 3)), jp.mapping.cast("w", dtype=jnp.float32)])
    out = m(state)
    assert out["w"].shape == (2, 3) and out["w"].dtype == jnp.float32
    with pytest.raises(MappingError, match=r"cast\('w'\) cannot be inverted"):
        m.inverse()
    m = jp.Mapping(
        [
            jp.mapping.reshape("w", shape=(2, 3), original=(6,)),
            jp.mapping.cast("w", dtype=jnp.float32, original=jnp.int32),
        ]
    )
    back = m.inverse()(m(state))
    assert back["w"].dtype == jnp.int32
    np.testing.assert_array_equal(back["w"], state["w"])


def test_a_rename_onto_an_existing_name_is_an_error():
    with pytest.raises(MappingError, match="makes 'b'"):
        jp.mapping.rename("a", "b")({"a": np.zeros(1), "b": np.zeros(1)})


def test_a_rule_in_a_mapping_must_be_a_rule():
    with pytest.raises(TypeError, match="a Mapping takes rules"):
        jp.Mapping([("a", "b")])
    with pytest.raises(TypeError, match="mapping= takes"):
        nn.Linear(2, 2, key=jax.random.key(0)).load_state_dict({}, mapping={"a": "b"})


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 4),
    width=st.integers(1, 3),
    other=st.integers(1, 3),
    axis=st.integers(0, 1),
    layer=st.integers(0, 12),
)
def test_split_transpose_rename_round_trip(n, width, other, axis, layer):
    shape = [other, other]
    shape[axis] = n * width
    value = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    names = [f"layers.{layer}.part{i}" for i in range(n)]
    m = jp.Mapping(
        [
            jp.mapping.rename(r"h\.(\d+)\.fused", r"layers.\1.fused", regex=True),
            jp.mapping.split_into(
                "layers.*.fused", [f"layers.*.part{i}" for i in range(n)], axis=axis
            ),
            jp.mapping.transpose("layers.*.part0"),
        ]
    )
    out = m({f"h.{layer}.fused": value})
    assert list(out) == names
    np.testing.assert_array_equal(out[names[0]], np.split(value, n, axis)[0].T)
    back = m.inverse()(out)
    assert list(back) == [f"h.{layer}.fused"]
    np.testing.assert_array_equal(back[f"h.{layer}.fused"], value)


# -- PyTorch's parametrization names ---------------------------------------------------------------
def _torch_out(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _torch_parametrized(kind: str, shape: tuple[int, int]):
    P = torch.nn.utils.parametrizations
    lin = torch.nn.Linear(*shape)
    if kind == "weight_norm":
        return P.weight_norm(lin, dim=0)
    if kind == "orthogonal":
        return P.orthogonal(lin)
    return P.spectral_norm(lin)


PARAMETRIZED = {  # kind: (shape, jparam constraint)
    "weight_norm": ((3, 4), lambda: jp.parametrizations.weight_norm(dim=0)),
    "orthogonal": ((4, 4), lambda: jp.parametrizations.orthogonal()),
    "spectral_norm": ((3, 4), lambda: jp.parametrizations.spectral_norm(key=jax.random.key(3))),
}


@pytest.mark.parametrize("kind", sorted(PARAMETRIZED))
def test_torch_parametrized_state_dicts_load(kind, tmp_path):
    shape, constraint = PARAMETRIZED[kind]
    torch.manual_seed(1)
    t = _torch_parametrized(kind, shape).eval()
    with torch.no_grad():  # raw values torch's registration would not give: g != ||v||, A != 0
        for name, p in t.parametrizations.weight.named_parameters():
            if name.startswith("original"):
                p.add_(torch.randn_like(p) * 0.3)
    model = jp.parametrize(nn.Linear(*shape, key=jax.random.key(0)), "weight", constraint())
    loaded = model.eval().load_state_dict(t.state_dict())  # the names map by themselves
    x = np.random.default_rng(1).normal(size=(5, shape[0])).astype(np.float32)
    chex.assert_trees_all_close(np.asarray(loaded(x)), _torch_out(t, x), rtol=1e-5, atol=1e-5)
    # saved with the rule set, the file has PyTorch's names and torch reads it strictly
    path = tmp_path / "p.safetensors"
    jp.save(path, loaded, mapping=jp.mapping.torch_parametrizations())
    fresh = _torch_parametrized(kind, shape).eval()
    fresh.load_state_dict(safetensors_torch.load_file(str(path)), strict=True)
    np.testing.assert_allclose(_torch_out(fresh, x), _torch_out(t, x), rtol=1e-6, atol=1e-6)


def test_torch_parametrization_names_in_a_submodule_and_via_jp_load(tmp_path):
    P = torch.nn.utils.parametrizations
    torch.manual_seed(2)
    t = torch.nn.Sequential(torch.nn.Linear(3, 4), P.weight_norm(torch.nn.Linear(4, 2)))
    path = tmp_path / "t.safetensors"
    safetensors_torch.save_file(t.state_dict(), str(path))
    keys = jax.random.split(jax.random.key(0), 2)
    model = nn.Sequential(nn.Linear(3, 4, key=keys[0]), nn.Linear(4, 2, key=keys[1]))
    model = jp.parametrize(model, "1.weight", jp.parametrizations.weight_norm())
    loaded = jp.load(path, model)
    x = np.random.default_rng(2).normal(size=(2, 3)).astype(np.float32)
    chex.assert_trees_all_close(np.asarray(loaded(x)), _torch_out(t, x), rtol=1e-5, atol=1e-5)


def test_transpose_by_axes_and_its_inverse():
    value = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    m = jp.Mapping([jp.mapping.transpose("conv.weight", axes=(2, 0, 1))])
    out = m({"conv.weight": value})
    np.testing.assert_array_equal(out["conv.weight"], value.transpose(2, 0, 1))
    np.testing.assert_array_equal(m.inverse()(out)["conv.weight"], value)


def test_a_regex_beyond_literals_and_groups_loads_but_cannot_be_inverted():
    m = jp.Mapping([jp.mapping.rename(r"(?:enc|dec)oder\.(.*)", r"body.\1", regex=True)])
    assert list(m({"encoder.w": 1, "other": 2})) == ["body.w", "other"]
    with pytest.raises(MappingError, match="cannot be inverted.*write the inverse rule"):
        m.inverse()


def test_a_glob_star_matches_across_dots_as_in_filters():
    state = {"encoder.layer.0.weight": 1, "encoder.norm.bias": 2, "decoder.w": 3}
    m = jp.Mapping([jp.mapping.rename("encoder.*", "enc.*")])
    assert list(m(state)) == ["enc.layer.0.weight", "enc.norm.bias", "decoder.w"]
    assert list(m.inverse()(m(state))) == list(state)
    # literal text anchors each capture: the first * stops at the first ".attn."
    m = jp.mapping.rename("*.attn.*", "*.attention.*")
    assert list(m({"h.0.attn.q.attn.w": 1})) == ["h.0.attention.q.attn.w"]


def test_glob_question_marks_and_sets_match_names_but_make_none():
    state = {f"h.{i}.w": np.ones((1, 2)) for i in (0, 1, 2, 10)}
    out = jp.mapping.transpose("h.[01].w")(state)
    assert [v.shape for v in out.values()] == [(2, 1), (2, 1), (1, 2), (1, 2)]
    m = jp.Mapping([jp.mapping.rename("h.?.*", "one.*")])  # ? is one character: not h.10
    assert list(m({"h.0.w": 1, "h.10.w": 2})) == ["one.w", "h.10.w"]
    with pytest.raises(MappingError, match="cannot be inverted: .* glob with \\?/\\[...\\]"):
        m.inverse()
    with pytest.raises(MappingError, match=r"target 'one\.\?\.\*' has a glob \?/\[...\]"):
        jp.mapping.rename("h.?.*", "one.?.*")
