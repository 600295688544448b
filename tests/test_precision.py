"""Dtype and placement of whole models: astype/half/float/bfloat16/double and to()."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jparam as jp


class Model(jp.Module):
    w: jp.Parameter
    frozen: jp.Parameter
    stats: jp.Buffer
    count: jp.Buffer
    mask: jp.Buffer
    plain: jax.Array = jp.field(plain_arrays=True)
    ids: jax.Array = jp.field(plain_arrays=True)

    def __init__(self):
        self.w = jp.Parameter(jnp.full((2, 2), 1.1), axes=("a", "b"))
        self.frozen = jp.Parameter(jnp.ones(2), trainable=False)
        self.stats = jp.Buffer(jnp.zeros(2), persistent=False)
        self.count = jp.Buffer(jnp.array(3, jnp.int32))
        self.mask = jp.Buffer(jnp.array([True, False]))
        self.plain = jnp.ones(3)
        self.ids = jnp.arange(3)


def _dtypes(m):
    return {f.name: jnp.dtype(getattr(m, f.name).dtype) for f in dataclasses.fields(m)}


@pytest.mark.parametrize(
    ("method", "dtype"),
    [("half", jnp.float16), ("bfloat16", jnp.bfloat16), ("float", jnp.float32)],
)
def test_floating_arrays_only_are_cast(method, dtype):
    m = Model()
    out = getattr(m.half() if method == "float" else m, method)()
    assert _dtypes(out) == {
        "w": jnp.dtype(dtype),
        "frozen": jnp.dtype(dtype),
        "stats": jnp.dtype(dtype),
        "count": jnp.dtype(jnp.int32),
        "mask": jnp.dtype(jnp.bool_),
        "plain": jnp.dtype(dtype),
        "ids": jnp.dtype(jnp.int32),
    }
    assert _dtypes(m)["w"] == jnp.float32  # the original is untouched
    assert out.w.metadata == {"axes": ("a", "b")} and out.frozen.trainable is False
    assert out.stats.persistent is False
    np.testing.assert_allclose(np.asarray(out.w, np.float32), np.full((2, 2), 1.1), rtol=1e-2)


def test_astype_method_and_free_function():
    m = Model()
    assert m.astype(jnp.bfloat16).w.dtype == jnp.bfloat16
    assert m.astype("float16").plain.dtype == jnp.float16
    tree = {"m": m, "x": jnp.ones(2)}
    out = jp.astype(tree, jnp.float16)
    assert out["m"].w.dtype == jnp.float16 and out["x"].dtype == jnp.float16
    assert out["m"].count.dtype == jnp.int32


def test_astype_to_the_same_dtype_keeps_objects():
    m = Model()
    out = m.float()
    assert out.w is m.w and out.plain is m.plain


def test_astype_refuses_non_floating_dtypes():
    m = Model()
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got int32: only float"):
        m.astype(jnp.int32)
    with pytest.raises(TypeError, match="dtype must be a floating dtype, got 'not-a-dtype'"):
        jp.astype(m, "not-a-dtype", include_buffers=False)


def test_include_buffers_false_keeps_batchnorm_statistics_in_float32():
    net = jp.nn.Sequential(jp.nn.Linear(3, 4, key=jax.random.key(0)), jp.nn.BatchNorm1d(4))
    kept = jp.astype(net, jnp.bfloat16, include_buffers=False)
    assert kept[0].weight.dtype == kept[1].weight.dtype == jnp.bfloat16
    assert kept[1].running_mean is net[1].running_mean  # the very same Buffer objects
    assert kept[1].running_var.dtype == jnp.float32
    assert kept[1].num_batches_tracked.dtype == jnp.int32
    cast = jp.astype(net, jnp.bfloat16)  # the default casts floating buffers too, as .half()
    assert cast[1].running_mean.dtype == cast[1].running_var.dtype == jnp.bfloat16
    assert cast[1].num_batches_tracked.dtype == jnp.int32
    assert jax.tree.structure(net.half()) == jax.tree.structure(cast)
    # plain arrays and frozen parameters are cast either way; inside jit too
    out = jax.jit(lambda t: jp.astype(t, jnp.float16, include_buffers=False))(Model())
    assert _dtypes(out) == {
        **_dtypes(Model()),
        "w": jnp.float16,
        "frozen": jnp.float16,
        "plain": jnp.float16,
    }


def test_double_raises_unless_x64():
    m = Model()
    with pytest.raises(ValueError, match="64-bit types are disabled"):
        m.double()
    with jax.enable_x64(True):
        d = Model().double()
        assert d.w.dtype == jnp.float64 and d.plain.dtype == jnp.float64
        assert d.count.dtype == jnp.int32
        np.testing.assert_allclose(np.asarray(d.w), np.full((2, 2), np.float32(1.1)))


def test_to_device_platform_and_sharding():
    m = Model()
    cpu = jax.devices("cpu")[0]
    for target in ("cpu", "cpu:0", cpu, jax.sharding.SingleDeviceSharding(cpu)):
        out = m.to(target)
        assert isinstance(out, Model)
        assert jax.tree.structure(out) == jax.tree.structure(m)
        for leaf in jax.tree.leaves(out):
            assert leaf.devices() == {cpu}
        assert out.w.metadata == {"axes": ("a", "b")}
    assert jp.to({"m": m}, "cpu")["m"].frozen.trainable is False


def test_to_unavailable_platform_raises():
    with pytest.raises(ValueError, match=r"to\('gpu'\): no gpu devices are available"):
        Model().to("gpu")
    with pytest.raises(ValueError, match="no gpu devices"):
        Model().to("cuda")
    n = len(jax.devices("cpu"))
    with pytest.raises(ValueError, match=rf"there are {n} cpu device\(s\), cpu:0 to cpu:{n - 1}"):
        Model().to(f"cpu:{n}")


def test_to_dtype_casts_like_astype():
    m = Model()
    assert m.to(jnp.bfloat16).w.dtype == jnp.bfloat16
    assert m.to("float16").stats.dtype == jnp.float16
    assert m.to(np.dtype("float16")).count.dtype == jnp.int32
