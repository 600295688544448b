"""Parameter and Buffer: conversion, array behaviour, flags, metadata, pytree structure."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import tree_util

import jparam as jp

# -- conversion -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [
        (2.5, jnp.float32, 2.5),
        (3, jnp.int32, 3),
        (True, jnp.bool_, True),
        (np.float32(1.5), jnp.float32, 1.5),
    ],
)
def test_python_and_numpy_scalars_are_converted(value, dtype, expected):
    p = jp.Parameter(value)
    assert isinstance(p.value, jax.Array)
    assert p.dtype == dtype
    assert p.shape == ()
    assert p.value.item() == expected


def test_numpy_array_is_converted_to_a_jax_array():
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    p = jp.Parameter(arr)
    assert isinstance(p.value, jax.Array)
    assert p.dtype == jnp.float32
    chex.assert_trees_all_equal(p.value, jnp.asarray(arr))


def test_float64_numpy_follows_jax_default_precision():
    p = jp.Parameter(np.ones(3, dtype=np.float64))
    assert p.dtype == jnp.float32  # x64 is off


def test_weakly_typed_arrays_become_strongly_typed():
    # jnp.array(0) is weak; a loaded value is not: keeping the weak type would retrace jit.
    b = jp.Buffer(jnp.array(0))
    assert b.dtype == jnp.int32 and b.value.weak_type is False
    assert jp.Parameter(jnp.asarray(1.0)).value.weak_type is False
    assert jp.Parameter(jnp.ones(2)).replace(jnp.asarray(2.0)).value.weak_type is False
    assert jax.typeof(b.value) == jax.typeof(jp.Buffer(np.int32(0)).value)


def test_jax_array_is_kept_as_is():
    x = jnp.arange(4.0)
    assert jp.Parameter(x).value is x
    assert jp.Buffer(x).value is x


def test_torch_tensor_is_converted_bfloat16_included():
    torch = pytest.importorskip("torch")
    p = jp.Parameter(torch.tensor([1.0, 2.0], requires_grad=True))
    chex.assert_trees_all_equal(p.value, jnp.array([1.0, 2.0]))
    b = jp.Parameter(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    assert b.dtype == jnp.bfloat16
    chex.assert_trees_all_equal(b.value, jnp.array([1.5, -2.0], jnp.bfloat16))


@pytest.mark.parametrize(
    "bad",
    ["abc", None, object(), ["a", "b"], np.array(["a", "b"]), b"raw", {"a": 1}],
    ids=["str", "None", "object", "list-of-str", "str-array", "bytes", "dict"],
)
@pytest.mark.parametrize("cls", [jp.Parameter, jp.Buffer])
def test_non_numeric_values_are_refused(cls, bad):
    with pytest.raises(TypeError, match=f"{cls.__name__} value must"):
        cls(bad)


def test_trainable_must_be_a_bool():
    with pytest.raises(TypeError, match="trainable must be a bool"):
        jp.Parameter(1.0, trainable="yes")
    assert jp.Parameter(1.0, trainable=np.bool_(False)).trainable is False


def test_parameter_of_parameter_unwraps():
    inner = jp.Parameter(jnp.ones(2), trainable=False, axes=("x",))
    outer = jp.Parameter(inner)
    assert isinstance(outer.value, jax.Array)
    assert outer.value is inner.value
    assert outer.trainable is True
    assert outer.metadata == {}


def test_to_array_public_helper():
    assert isinstance(jp.to_array(np.ones(2)), jax.Array)
    p = jp.Parameter(jnp.ones(2))
    assert jp.to_array(p) is p.value
    with pytest.raises(TypeError, match="weights must be an array"):
        jp.to_array("x", what="weights")


# -- array behaviour ------------------------------------------------------------------------

W = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)  # (2, 3)


@pytest.fixture
def p():
    return jp.Parameter(W)


def test_shape_dtype_ndim_size_T(p):
    assert p.shape == (2, 3)
    assert p.dtype == jnp.float32
    assert p.ndim == 2
    assert p.size == 6
    assert isinstance(p.size, int)
    chex.assert_trees_all_equal(p.T, jnp.asarray(W.T))
    assert len(p) == 2


def test_jax_array_protocol(p):
    out = p.__jax_array__()
    assert out is p.value
    chex.assert_trees_all_equal(jnp.asarray(p), jnp.asarray(W))


def test_matmul_both_ways(p):
    x = jnp.ones((3, 4))
    chex.assert_trees_all_close(p @ x, W @ np.ones((3, 4)))
    y = jnp.ones((5, 2))
    chex.assert_trees_all_close(y @ p, np.ones((5, 2)) @ W)
    assert isinstance(p @ x, jax.Array)
    chex.assert_trees_all_close(np.ones((5, 2)) @ p, np.ones((5, 2)) @ W)
    # the reflected operator itself (what Python calls when the left operand defers)
    chex.assert_trees_all_close(p.__rmatmul__(y), np.ones((5, 2)) @ W)
    chex.assert_trees_all_close(p.__rsub__(1.0), 1 - W)


def test_arithmetic_both_ways_and_between_parameters(p):
    p2 = jp.Parameter(W * 10)
    chex.assert_trees_all_close(2 * p, 2 * W)
    chex.assert_trees_all_close(p * 2, 2 * W)
    chex.assert_trees_all_close(p - p2, W - 10 * W)
    chex.assert_trees_all_close(p2 - p, 9 * W)
    chex.assert_trees_all_close(1 - p, 1 - W)
    chex.assert_trees_all_close(p + 1, W + 1)
    chex.assert_trees_all_close(p / 2, W / 2)
    chex.assert_trees_all_close(6 / p, 6 / W)
    chex.assert_trees_all_close(p**2, W**2)
    chex.assert_trees_all_close(2**p, 2**W)
    chex.assert_trees_all_close(-p, -W)
    chex.assert_trees_all_close(abs(-p), W)
    chex.assert_trees_all_close(p // 2, W // 2)
    chex.assert_trees_all_close(p % 2, W % 2)
    assert isinstance(p - p2, jax.Array)


def test_integer_bitwise_operators():
    b = jp.Buffer(jnp.array([1, 2, 3]))
    chex.assert_trees_all_equal(b & 1, jnp.array([1, 0, 1]))
    chex.assert_trees_all_equal(b | 4, jnp.array([5, 6, 7]))
    chex.assert_trees_all_equal(b << 1, jnp.array([2, 4, 6]))
    chex.assert_trees_all_equal(~b, jnp.array([-2, -3, -4]))


def test_comparison_is_elementwise(p):
    chex.assert_trees_all_equal(p > 3, jnp.asarray(W > 3))
    chex.assert_trees_all_equal(p <= 2, jnp.asarray(W <= 2))
    chex.assert_trees_all_equal(p == jp.Parameter(W), jnp.ones((2, 3), bool))
    chex.assert_trees_all_equal(p != 2.0, jnp.asarray(W != 2.0))
    with pytest.raises(TypeError):
        hash(p)  # elementwise __eq__, like arrays


def test_indexing(p):
    chex.assert_trees_all_equal(p[0], jnp.asarray(W[0]))
    chex.assert_trees_all_equal(p[:, 1], jnp.asarray(W[:, 1]))
    chex.assert_trees_all_equal(p[1, 2], jnp.asarray(6.0))
    idx = jp.Buffer(jnp.array([1, 0]))
    chex.assert_trees_all_equal(p[idx], jnp.asarray(W[[1, 0]]))


def test_array_methods_are_forwarded(p):
    assert float(p.sum()) == 21.0
    assert p.reshape(3, 2).shape == (3, 2)
    chex.assert_trees_all_equal(p.at[0, 0].set(9.0)[0, 0], jnp.asarray(9.0))
    with pytest.raises(AttributeError):
        p.no_such_method


def test_scalar_conversions():
    s = jp.Parameter(2.5)
    assert float(s) == 2.5
    assert int(jp.Buffer(3)) == 3
    assert bool(jp.Buffer(True)) is True
    assert [10, 20, 30][jp.Buffer(1)] == 20  # __index__


def test_jnp_functions_accept_parameters(p):
    chex.assert_trees_all_close(jnp.tanh(p), np.tanh(W), rtol=1e-5, atol=1e-6)  # XLA vs NumPy
    x = jnp.ones((4, 2))
    chex.assert_trees_all_close(jnp.dot(x, p), np.ones((4, 2)) @ W)


def test_jnp_functions_accept_parameters_inside_jit(p):
    # Pinned-JAX check: an object with only __jax_array__ is refused by jitted jnp functions;
    # a Parameter is a pytree node, so it must work as an argument and closed over.
    x = jnp.ones((4, 2))

    @jax.jit
    def f(x, p):
        return jnp.dot(x, p) + jnp.tanh(p).sum() + jnp.sum(x @ p) + (2 * p)[0, 0]

    expected = np.ones((4, 2)) @ W + np.tanh(W).sum() + (np.ones((4, 2)) @ W).sum() + 2.0
    chex.assert_trees_all_close(f(x, p), expected, rtol=1e-5, atol=1e-6)

    closed = jax.jit(lambda x: jnp.dot(x, p))
    chex.assert_trees_all_close(closed(x), np.ones((4, 2)) @ W)

    def loss(p):
        return jnp.sum(jnp.tanh(p))

    g = jax.jit(jax.grad(loss))(p)
    assert isinstance(g, jp.Parameter)
    chex.assert_trees_all_close(g.value, 1 - np.tanh(W) ** 2, atol=1e-6)


def test_np_asarray(p):
    arr = np.asarray(p)
    assert isinstance(arr, np.ndarray)
    np.testing.assert_array_equal(arr, W)
    assert np.asarray(p, dtype=np.float64).dtype == np.float64


# -- flags, metadata, copies ------------------------------------------------------------------


def test_trainable_and_requires_grad():
    p = jp.Parameter(jnp.ones(2))
    assert p.trainable is True and p.requires_grad is True
    q = jp.Parameter(jnp.ones(2), trainable=False)
    assert q.trainable is False and q.requires_grad is False
    assert p.requires_grad_(False).trainable is False
    assert p.trainable is True


def test_value_and_metadata():
    x = jnp.ones((2, 2))
    p = jp.Parameter(x, axes=("embed", "mlp"), weight_decay=False)
    assert p.value is x
    assert p.metadata == {"axes": ("embed", "mlp"), "weight_decay": False}
    b = jp.Buffer(x, persistent=False)
    assert b.metadata == {"persistent": False}


def test_metadata_dict_is_a_copy():
    p = jp.Parameter(jnp.ones(2), axes=("x",))
    md = p.metadata
    md["axes"] = ("y",)
    md["new"] = 1
    assert p.metadata == {"axes": ("x",)}


def test_metadata_keeps_value_types():
    # Equal-but-different-typed metadata (1 == 1.0 == True) must not leak between parameters.
    a = jp.Parameter(jnp.ones(2), lr_scale=1)
    b = jp.Parameter(jnp.ones(2), lr_scale=1.0)
    c = jp.Parameter(jnp.ones(2), lr_scale=True)
    assert type(a.metadata["lr_scale"]) is int
    assert type(b.metadata["lr_scale"]) is float
    assert c.metadata["lr_scale"] is True


def test_value_and_metadata_cannot_be_assigned_new_attributes():
    p = jp.Parameter(jnp.ones(2))
    with pytest.raises(AttributeError):
        p.trainable = False
    with pytest.raises(AttributeError):
        p.metadata = {}
    with pytest.raises(AttributeError):
        p.other = 1


@pytest.mark.parametrize("cls", [jp.Parameter, jp.Buffer])
def test_unhashable_metadata_is_refused_naming_the_key(cls):
    with pytest.raises(TypeError, match=r"axes=\['a'\] is not hashable"):
        cls(jnp.ones(2), axes=["a"])
    with pytest.raises(TypeError, match="constraint"):
        cls(jnp.ones(2), constraint=(["nested list"],))
    with pytest.raises(TypeError, match="groups"):
        jp.Parameter(jnp.ones(2)).replace(groups={"a"})


def test_replace():
    p = jp.Parameter(jnp.ones(3), axes=("x",))
    q = p.replace(jnp.zeros(3))
    chex.assert_trees_all_equal(q.value, jnp.zeros(3))
    assert q.metadata == {"axes": ("x",)} and q.trainable
    r = p.replace(axes=("y",), lr_scale=0.1)
    assert r.metadata == {"axes": ("y",), "lr_scale": 0.1}
    assert r.value is p.value
    s = p.replace(trainable=False)
    assert s.trainable is False and s.metadata == {"axes": ("x",)}
    chex.assert_trees_all_equal(p.value, jnp.ones(3))
    assert p.metadata == {"axes": ("x",)} and p.trainable
    assert type(q) is jp.Parameter
    with pytest.raises(TypeError, match=r"Parameter.replace value must be an array"):
        p.replace("nope")


def test_freeze_unfreeze_return_new_objects():
    p = jp.Parameter(jnp.ones(2), tag="t")
    f = p.freeze()
    assert f is not p
    assert f.trainable is False and p.trainable is True
    assert f.metadata == {"tag": "t"}
    assert f.value is p.value
    u = f.unfreeze()
    assert u.trainable is True and f.trainable is False


def test_astype_keeps_flag_and_metadata():
    p = jp.Parameter(jnp.ones(2), trainable=False, axes=("x",))
    q = p.astype(jnp.bfloat16)
    assert q.dtype == jnp.bfloat16 and p.dtype == jnp.float32
    assert q.trainable is False and q.metadata == {"axes": ("x",)}
    b = jp.Buffer(jnp.ones(2), persistent=False).astype(jnp.float16)
    assert isinstance(b, jp.Buffer) and b.dtype == jnp.float16 and not b.persistent


def test_buffer_persistent_flag():
    assert jp.Buffer(jnp.ones(1)).persistent is True
    assert jp.Buffer(jnp.ones(1), persistent=False).persistent is False
    assert not hasattr(jp.Buffer(jnp.ones(1)), "trainable")


def test_buffer_persistent_false_is_excluded_from_state_dict():
    class M(jp.Module):
        kept: jp.Buffer
        scratch: jp.Buffer

    m = M(jp.Buffer(jnp.ones(2)), jp.Buffer(jnp.zeros(2), persistent=False))
    assert list(m.state_dict()) == ["kept"]
    assert [n for n, _ in m.named_buffers()] == ["kept", "scratch"]


def test_repr_shows_dtype_shape_not_values():
    assert repr(jp.Parameter(jnp.ones((2, 3)))) == "Parameter(f32[2,3])"
    assert (
        repr(jp.Parameter(jnp.ones(3), trainable=False, axes=("e",)))
        == "Parameter(f32[3], trainable=False, axes=('e',))"
    )
    assert repr(jp.Buffer(jnp.array(0))) == "Buffer(i32[])"
    assert repr(jp.Buffer(jnp.ones(2, jnp.bfloat16), persistent=False)) == (
        "Buffer(bf16[2], persistent=False)"
    )


# -- pytree structure ---------------------------------------------------------------------------


def test_parameter_is_a_pytree_node_with_one_child():
    p = jp.Parameter(jnp.ones(2), axes=("x",))
    leaves, treedef = jax.tree.flatten(p)
    assert len(leaves) == 1 and leaves[0] is p.value
    [(path, leaf)] = tree_util.tree_flatten_with_path(p)[0]
    assert path == (tree_util.GetAttrKey("value"),)
    assert leaf is p.value
    q = treedef.unflatten([jnp.zeros(2)])
    assert isinstance(q, jp.Parameter)
    assert q.metadata == {"axes": ("x",)} and q.trainable
    chex.assert_trees_all_equal(q.value, jnp.zeros(2))


def test_flags_and_metadata_live_in_the_treedef():
    x = jnp.ones(2)
    s = jax.tree.structure
    assert s(jp.Parameter(x)) == s(jp.Parameter(jnp.zeros(2)))
    assert s(jp.Parameter(x)) != s(jp.Parameter(x, trainable=False))
    assert s(jp.Parameter(x, axes=("a",))) != s(jp.Parameter(x, axes=("b",)))
    assert s(jp.Parameter(x)) != s(jp.Buffer(x))


def test_tree_map_keeps_type_and_metadata():
    p = jp.Parameter(jnp.ones(2), trainable=False, tag=1)
    q = jax.tree.map(lambda v: v * 3, p)
    assert isinstance(q, jp.Parameter)
    assert q.trainable is False and q.metadata == {"tag": 1}
    chex.assert_trees_all_equal(q.value, jnp.full(2, 3.0))


def test_subclasses_are_pytree_nodes():
    class Scaled(jp.Parameter):
        __slots__ = ()

    s = Scaled(jnp.ones(2))
    out = jax.jit(lambda s: s)(s)
    assert type(out) is Scaled
    assert jax.tree.leaves(s)[0] is s.value


def test_drop_metadata_removes_entries_and_refuses_unknown_keys():
    p = jp.Parameter(jnp.ones((2, 3)), axes=("out", "in"), lr_scale=0.1, trainable=False)
    q = p.drop_metadata("axes")
    assert q.metadata == {"lr_scale": 0.1} and not q.trainable
    assert p.metadata == {"axes": ("out", "in"), "lr_scale": 0.1}  # the original is unchanged
    chex.assert_trees_all_equal(q.value, p.value)
    assert type(jp.Buffer(jnp.ones(2), axes=("out",)).drop_metadata("axes")) is jp.Buffer
    # the treedef follows the metadata: a dropped key is a different static structure
    assert jax.tree_util.tree_structure(q) != jax.tree_util.tree_structure(p)
    assert jax.tree_util.tree_structure(q) == jax.tree_util.tree_structure(
        jp.Parameter(jnp.ones((2, 3)), lr_scale=0.1, trainable=False)
    )
    with pytest.raises(KeyError, match=r"no metadata 'axis'; its metadata: 'axes', 'lr_scale'"):
        p.drop_metadata("axis")
