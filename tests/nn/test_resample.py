"""`interpolate`, `Upsample`, `PixelShuffle` and `PixelUnshuffle` against PyTorch.

Forward and input gradients are compared with ``torch.nn.functional.interpolate`` for each
mode, with and without ``align_corners``, for sizes and scale factors whose index arithmetic
differs from a plain resize (non-integer ratios, shrinking, ``recompute_scale_factor``). The
layer cases (jit and gradients) are in tests/nn/test_torch_matrix.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nn_parity import assert_close, random

from jparam import nn

# (mode, input spatial shape, keyword arguments): each a different index arithmetic.
FAST = [
    ("nearest", (5, 7), dict(size=(7, 4))),  # floor(dst * in / out), up and down
    ("nearest", (4,), dict(scale_factor=2.5)),  # the scale itself, not in / out
    ("bilinear", (5, 4), dict(size=(8, 3))),
    ("bilinear", (5, 4), dict(size=(8, 3), align_corners=True)),
    ("bicubic", (5, 4), dict(size=(9, 6))),  # taps clamped at both edges
    ("bicubic", (5, 4), dict(size=(3, 7), align_corners=True)),
    ("linear", (6,), dict(scale_factor=1.7, recompute_scale_factor=True)),
    ("trilinear", (3, 2, 4), dict(size=(4, 5, 3))),
]
SLOW = [
    ("nearest-exact", (5, 3), dict(size=(3, 8))),
    ("bilinear", (3, 4), dict(scale_factor=(1.5, 0.5))),
    ("nearest", (3, 2, 4), dict(scale_factor=(2.0, 1.5, 0.75))),
    ("nearest", (5,), dict(size=5)),  # same size
    ("nearest", (3,), dict(scale_factor=1 / 3)),
    ("bicubic", (4, 5), dict(scale_factor=2.0)),
    ("bicubic", (4, 5), dict(scale_factor=0.6, align_corners=False)),
    ("bicubic", (6, 5), dict(size=(1, 1), align_corners=True)),
    ("bilinear", (6, 5), dict(scale_factor=1.3, recompute_scale_factor=False)),
    ("linear", (6,), dict(size=1)),
    ("linear", (6,), dict(size=11, align_corners=True)),
    ("trilinear", (2, 3, 4), dict(scale_factor=2, align_corners=True)),
]


def _check_against_torch(torch, mode, spatial, kwargs):
    x = random((2, 3, *spatial), seed=1)
    t = torch.from_numpy(x).requires_grad_()
    ty = torch.nn.functional.interpolate(t, mode=mode, **kwargs)
    ct = random(tuple(ty.shape), seed=2)
    (ty * torch.from_numpy(ct)).sum().backward()
    y, vjp = jax.vjp(lambda x: nn.interpolate(x, mode=mode, **kwargs), x)
    assert y.shape == tuple(ty.shape) and y.dtype == jnp.float32
    assert_close(y, ty, atol=1e-5, rtol=1e-5)
    assert_close(vjp(ct)[0], t.grad, atol=1e-5, rtol=1e-4)


def _ids(cases):
    return [f"{m}-{s}-{k}" for m, s, k in cases]


@pytest.mark.parametrize(("mode", "spatial", "kwargs"), FAST, ids=_ids(FAST))
def test_interpolate_matches_torch_forward_and_gradient(torch, mode, spatial, kwargs):
    _check_against_torch(torch, mode, spatial, kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "spatial", "kwargs"), SLOW, ids=_ids(SLOW))
def test_interpolate_matches_torch_more_sizes(torch, mode, spatial, kwargs):
    _check_against_torch(torch, mode, spatial, kwargs)


def test_nearest_uses_torchs_floor_index_not_jax_image_resize(torch):
    """5 -> 3 nearest: PyTorch takes rows floor(i * 5/3) = 0, 1, 3; jax.image.resize takes
    the pixel centres' neighbours 0, 2, 4. Ours must be PyTorch's."""
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=3).numpy()
    np.testing.assert_array_equal(expected.ravel(), [0, 1, 3])
    np.testing.assert_array_equal(np.asarray(nn.interpolate(x, size=3)).ravel(), [0, 1, 3])


def test_interpolate_under_jit_and_low_precision(torch):
    x = random((1, 2, 4, 5))
    f = jax.jit(lambda x: nn.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True))
    t = torch.nn.functional.interpolate(
        torch.from_numpy(x), scale_factor=2, mode="bicubic", align_corners=True
    )
    assert_close(f(x), t, atol=1e-5, rtol=1e-5)
    y16 = nn.interpolate(jnp.asarray(x, jnp.bfloat16), size=(5, 6), mode="bilinear")
    assert y16.dtype == jnp.bfloat16
    assert_close(y16.astype(jnp.float32), nn.interpolate(x, size=(5, 6), mode="bilinear"), 0.05)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda x: nn.interpolate(x), ValueError, "either size or scale_factor"),
        (lambda x: nn.interpolate(x, 3, 2.0), ValueError, "only one of size or scale_factor"),
        (lambda x: nn.interpolate(x, 3, mode="area"), ValueError, "mode must be one of.*'area'"),
        (lambda x: nn.interpolate(x, 3, align_corners=True), ValueError, "align_corners can only"),
        (lambda x: nn.interpolate(x, 3, mode="linear"), ValueError, "needs 3-d input.*4 axes"),
        (lambda x: nn.interpolate(x, (3, 4, 5)), ValueError, r"one entry per spatial axis \(2\)"),
        (lambda x: nn.interpolate(x, 0), ValueError, r"greater than 0.*\(5, 5\).*\(0, 0\)"),
        (lambda x: nn.interpolate(x, 2.5), TypeError, "size must be an int"),
        (lambda x: nn.interpolate(x, scale_factor="2"), TypeError, "scale_factor must be a num"),
        (lambda x: nn.interpolate(x, 3, recompute_scale_factor=True), ValueError, "not meaning"),
        (lambda x: nn.interpolate(x[0, 0], 3), ValueError, r"\(N, C, \*spatial\).*\(5, 5\)"),
        (lambda x: nn.interpolate(x, 3, antialias=True), NotImplementedError, "antialias"),
        (
            lambda x: nn.interpolate(x.astype(int), 3, mode="bilinear"),
            TypeError,
            "mode='bilinear' needs a floating-point input, got int",
        ),
    ],
)
def test_interpolate_refuses_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call(jnp.ones((1, 2, 5, 5)))


def test_upsample_fields_are_static_and_hashable():
    up = nn.Upsample(size=[4, 6], mode="bilinear", align_corners=True)
    assert up.size == (4, 6) and jax.tree_util.tree_leaves(up) == []
    hash(jax.tree_util.tree_structure(up))
    assert nn.Upsample(scale_factor=2)(jnp.ones((1, 1, 2, 3))).shape == (1, 1, 4, 6)


@settings(max_examples=10, deadline=None)
@given(
    r=st.integers(1, 3),
    c=st.integers(1, 3),
    h=st.integers(1, 3),
    w=st.integers(1, 3),
    batch=st.lists(st.integers(1, 2), max_size=2),
)
def test_pixel_unshuffle_inverts_pixel_shuffle(r, c, h, w, batch):
    x = np.random.default_rng(0).standard_normal((*batch, c * r * r, h, w)).astype(np.float32)
    y = nn.PixelShuffle(r)(x)
    assert y.shape == (*batch, c, h * r, w * r)
    np.testing.assert_array_equal(nn.PixelUnshuffle(r)(y), x)


def test_pixel_shuffle_element_order_matches_torch(torch):
    x = np.arange(2 * 8 * 2 * 3, dtype=np.float32).reshape(2, 8, 2, 3)
    expected = torch.nn.PixelShuffle(2)(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(nn.PixelShuffle(2)(x), expected)
    back = torch.nn.PixelUnshuffle(2)(torch.from_numpy(expected)).numpy()
    np.testing.assert_array_equal(nn.PixelUnshuffle(2)(expected), back)


def test_pixel_shuffle_errors_name_layer_and_shape():
    with pytest.raises(ValueError, match=r"PixelShuffle\(upscale_factor=2\).*\(\*, C \* 4, H, W"):
        nn.PixelShuffle(2)(jnp.ones((1, 6, 2, 2)))
    with pytest.raises(ValueError, match=r"PixelUnshuffle\(downscale_factor=2\).*\(1, 4, 3, 2\)"):
        nn.PixelUnshuffle(2)(jnp.ones((1, 4, 3, 2)))
