"""jp.project and the ready-made projections in jp.projections."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fitting import Fit, fit, normal, orthonormal_rows
from hypothesis import given, settings
from hypothesis import strategies as st

import jparam as jp


def projected_fit(project, shape=(3, 5), seed=0):
    x = normal(40 + seed, (32, shape[1]))
    target = normal(41 + seed, shape)
    model = Fit(jp.Parameter(normal(42 + seed, shape), project=project))
    model = jp.project(model)
    return fit(model, x, x @ target.T, projected=True)


@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (5, 2)])
def test_orthogonalize_holds_after_100_steps_and_loss_decreases(shape):
    model, losses = projected_fit(jp.projections.orthogonalize(), shape)
    assert orthonormal_rows(model.w.value) < 1e-5
    assert losses[-1] < 0.9 * losses[0]


def test_normalize_rows_holds_after_100_steps_and_loss_decreases():
    model, losses = projected_fit(jp.projections.normalize())
    norms = np.linalg.norm(np.asarray(model.w.value, np.float64), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert losses[-1] < 0.9 * losses[0]


def test_nonnegative_and_clip_hold_after_100_steps_and_loss_decreases():
    model, losses = projected_fit(jp.projections.nonnegative())
    assert float(model.w.value.min()) >= 0.0
    assert float((model.w.value == 0).mean()) > 0.1  # the bound is active, not trivially met
    assert losses[-1] < 0.9 * losses[0]
    model, losses = projected_fit(jp.projections.clip(-0.2, 0.3))
    w = np.asarray(model.w.value)
    assert w.min() >= -0.2 and w.max() <= 0.3
    assert losses[-1] < 0.9 * losses[0]


def test_project_skips_frozen_and_plain_parameters():
    w = jnp.array([[-1.0, 2.0]])
    model = Fit(jp.Parameter(w, project=jp.projections.nonnegative(), trainable=False))
    chex.assert_trees_all_equal(jp.project(model).w.value, w)
    chex.assert_trees_all_equal(
        jp.project(model, include_frozen=True).w.value, jnp.array([[0.0, 2.0]])
    )
    plain = Fit(jp.Parameter(w))
    assert jp.project(plain).w is plain.w


def test_project_under_jit_matches_eager_and_equal_projections_share_a_trace():
    def build(w):
        return Fit(jp.Parameter(w, project=jp.projections.clip(0.0, 1.0)))

    w = normal(0, (3, 3))
    traces = []

    @jax.jit
    def f(m):
        traces.append(1)
        return jp.project(m)

    chex.assert_trees_all_equal(f(build(w)).w.value, jp.project(build(w)).w.value)
    f(build(w * 2))  # a new but equal clip(0.0, 1.0): same treedef, no retrace
    assert len(traces) == 1
    chex.assert_trees_all_equal(jp.project(build(w)).w.value, jnp.clip(w, 0.0, 1.0))


def test_project_errors_name_the_parameter():
    model = Fit(
        jp.Parameter(jnp.ones((2, 2))),
        jp.Parameter(jnp.ones(2), project=jp.projections.orthogonalize()),
    )
    with pytest.raises(ValueError, match=r"jp.project: b: orthogonalize\(\) needs a matrix"):
        jp.project(model)
    model = Fit(jp.Parameter(jnp.ones((2, 2)), project=lambda w: w.astype(jnp.float16)))
    with pytest.raises(ValueError, match=r"jp.project: w: .* returned f16\[2,2\] for a f32\[2,2\]"):
        jp.project(model)
    model = Fit(jp.Parameter(jnp.ones((2, 2)), project=3))
    with pytest.raises(TypeError, match="jp.project: w: project=3 is not a function"):
        jp.project(model)
    with pytest.raises(ValueError, match="min=1 is greater than max=0"):
        jp.projections.clip(1, 0)


@settings(max_examples=25)
@given(
    shape=st.sampled_from([(1, 1), (1, 4), (3, 5), (4, 4), (5, 2)]),
    seed=st.integers(0, 2**16),
    which=st.sampled_from(["orthogonalize", "normalize", "nonnegative", "clip"]),
)
def test_projections_meet_their_constraint_and_are_idempotent(shape, seed, which):
    x = normal(seed, shape, 3.0)
    proj = {
        "orthogonalize": jp.projections.orthogonalize(),
        "normalize": jp.projections.normalize(),
        "nonnegative": jp.projections.nonnegative(),
        "clip": jp.projections.clip(-0.5, 0.5),
    }[which]
    proj = jax.jit(proj)
    y = proj(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    chex.assert_trees_all_close(proj(y), y, atol=2e-6)
    if which == "orthogonalize":
        assert orthonormal_rows(y) < 1e-5
    elif which == "normalize":
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(y, np.float64), axis=-1), 1.0, atol=1e-5
        )
    elif which == "nonnegative":
        chex.assert_trees_all_equal(y, jnp.maximum(x, 0))
    else:
        chex.assert_trees_all_equal(y, jnp.clip(x, -0.5, 0.5))


def test_orthogonalize_works_on_batches_of_matrices():
    y = jp.projections.orthogonalize()(normal(50, (2, 3, 4)))
    assert y.shape == (2, 3, 4) and orthonormal_rows(y) < 1e-5


def test_project_is_the_one_spelling():
    # jp.project at the top level; the submodule lists only the projections (issue 14).
    assert jp.project is jp.projections.project
    assert jp.projections.__all__ == ["clip", "nonnegative", "normalize", "orthogonalize"]
