"""`jp.watch_retraces` / `jp.no_retrace`: retraces counted, and each one explained by path.

Whether JAX really traced again is never taken from the tool itself: each watched function
also bumps a plain Python counter in its body (which runs only while JAX traces), and every
expected report names what the test itself changed.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import pytest

import jparam as jp
from jparam import nn


class Net(jp.Module):
    fc: nn.Linear
    act: str = jp.field(static=True)

    def __init__(self, *, key, act: str = "relu"):
        self.fc = nn.Linear(4, 3, key=key)
        self.act = act

    def __call__(self, x):
        return getattr(jax.nn, self.act)(self.fc(x))


def counted():
    """A loss whose body counts its own traces (JAX's ground truth) into ``calls``."""
    calls = []

    def loss(model, x):
        calls.append(1)
        return model(x).sum()

    return loss, calls


@pytest.fixture
def model():
    return Net(key=jax.random.key(0))


@pytest.fixture
def x():
    return jnp.ones((8, 4))


def watched(**options):
    loss, calls = counted()
    return jax.jit(jp.watch_retraces(loss, max_traces=None, **options)), calls


def test_only_values_changing_traces_once(model, x):
    step, calls = watched()
    for i in range(4):
        model = jp.at(model, "fc.weight").set(model.fc.weight.value + i)
        step(model, x * i)
    assert step.traces.count == 1 == len(calls)
    assert step.traces.reports == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            lambda m, x: (m.freeze("fc.weight"), x),
            "argument 0 (model): fc.weight: trainable True -> False (a freeze or unfreeze retraces",
        ),
        (
            lambda m, x: (m.astype(jnp.bfloat16), x),
            "argument 0 (model): fc.weight, fc.bias: dtype float32 -> bfloat16",
        ),
        (
            lambda m, x: (m.replace(act="gelu"), x),
            "argument 0 (model): static field act 'relu' -> 'gelu'",
        ),
        (
            lambda m, x: (m.eval(), x),
            "argument 0 (model): (root), fc: training True -> False (train() and eval() trace once",
        ),
        (lambda m, x: (m, x[:2]), "argument 1 (x): shape (8, 4) -> (2, 4)"),
        (
            lambda m, x: (m.replace(fc=jp.at(m.fc, "bias").set(None)), x),
            "argument 0 (model): fc.bias: Parameter -> None",
        ),
        (
            lambda m, x: (
                m.replace(fc=m.fc.replace(weight=m.fc.weight.replace(axes=("o", "i")))),
                x,
            ),
            "argument 0 (model): fc.weight: metadata {'axes': ('out', 'in')} -> "
            "{'axes': ('o', 'i')}",
        ),
        (
            lambda m, x: (m, x.astype(jnp.float16)),
            "argument 1 (x): dtype float32 -> float16",
        ),
    ],
    ids=[
        "freeze",
        "dtype",
        "static_field",
        "eval",
        "batch_size",
        "removed",
        "metadata",
        "input_dtype",
    ],
)
def test_a_retrace_names_what_changed(model, x, change, expected):
    step, calls = watched()
    step(model, x)
    step(*change(model, x))
    assert step.traces.count == 2 == len(calls)
    (report,) = step.traces.reports
    assert report.startswith("loss traced again (trace 2); changed since trace 1:\n")
    assert f"\n  {expected}" in report
    assert len(report.splitlines()) == 2, report  # nothing else is blamed


def test_a_python_scalar_then_a_typed_array():
    calls = []

    def scale(x, factor):
        calls.append(1)
        return x * factor

    step = jax.jit(jp.watch_retraces(scale, max_traces=None))
    step(jnp.ones(3), 2.0)
    step(jnp.ones(3), 3.0)  # a new value of a weakly typed scalar: no retrace
    step(jnp.ones(3), jnp.float32(2.0))
    assert step.traces.count == 2 == len(calls)
    assert step.traces.reports[0].splitlines()[1:] == [
        "  argument 1 (factor): weak_type True -> False (a Python scalar traces apart from a "
        "typed array: pass jnp.asarray(x, dtype))"
    ]


def test_reports_compare_with_the_trace_just_before(model, x):
    step, calls = watched()
    frozen = model.freeze("fc.weight")
    for m in (model, frozen, model, frozen):  # the third and fourth calls hit JAX's cache
        step(m, x)
    step(frozen, x[:2])
    assert step.traces.count == 3 == len(calls)
    assert "trainable True -> False" in step.traces.reports[0]
    assert "argument 1 (x): shape (8, 4) -> (2, 4)" in step.traces.reports[1]
    assert "trainable" not in step.traces.reports[1]


def test_many_paths_are_grouped_and_long_reports_cut():
    loss_calls = []

    def loss(params):
        loss_calls.append(1)
        return sum(v.sum() for v in params.values())

    # jax.eval_shape traces without compiling (and without a cache: every call is a trace)
    step = functools.partial(
        jax.eval_shape, watched_loss := jp.watch_retraces(loss, max_traces=None)
    )
    params = {f"w{i:02d}": jax.ShapeDtypeStruct((3,), jnp.float32) for i in range(22)}
    step(params)
    step({k: jax.ShapeDtypeStruct((i + 4,), jnp.float32) for i, k in enumerate(params)})
    (report,) = watched_loss.traces.reports
    lines = report.splitlines()
    assert lines[1] == "  argument 0 (params): w00: shape (3,) -> (4,)"
    assert lines[-1] == "  ... and 2 more" and len(lines) == 1 + 20 + 1
    step(
        {k: jax.ShapeDtypeStruct((i + 4,), jnp.int32) for i, k in enumerate(params)}
    )  # one change: one line
    assert watched_loss.traces.reports[-1].splitlines()[1:] == [
        "  argument 0 (params): w00, w01, w02 and 19 more: dtype float32 -> int32"
    ]
    assert watched_loss.traces.count == 3 == len(loss_calls)


def test_static_argnums_and_donate_argnums(model, x):
    calls = []

    def forward(model, x, act):
        calls.append(1)
        return getattr(jax.nn, act)(x @ model.fc.weight.T @ model.fc.weight)

    step = jax.jit(jp.watch_retraces(forward, max_traces=None), static_argnums=2, donate_argnums=1)
    w = model.fc.weight.value
    expected = jax.nn.relu(x @ w.T @ w)
    donated = jnp.ones((8, 4))
    out = step(model, donated, "relu")
    assert jnp.allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert donated.is_deleted()  # the wrapper keeps donation working
    step(model, jnp.ones((8, 4)), "relu")
    step(model, jnp.ones((8, 4)), act="tanh")
    step(model, jnp.ones((8, 4)), "tanh")
    assert step.traces.count == 3 == len(calls)
    assert [r.splitlines()[1:] for r in step.traces.reports] == [
        [
            "  argument 2 (act): value 'relu' -> 'tanh'",
            "  argument 2 (act): passed by position -> by keyword",
        ],
        ["  argument 2 (act): passed by keyword -> by position"],
    ]


def test_past_max_traces_it_warns_with_the_reason(model, x):
    loss, calls = counted()
    step = jax.jit(jp.watch_retraces(loss, max_traces=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        step(model, x)
        step(model.freeze("fc.weight"), x)  # the second trace is within the limit
    with pytest.warns(jp.RetraceWarning, match=r"fc.bias: trainable True -> False"):
        step(model.freeze(), x)
    assert step.traces.count == 3 == len(calls)


def test_action_raise_refuses_the_trace(model, x):
    loss, calls = counted()
    step = jax.jit(jp.watch_retraces(loss, action="raise"))
    step(model, x)
    with pytest.raises(jp.RetraceError, match=r"argument 1 \(x\): shape \(8, 4\) -> \(2, 4\)"):
        step(model, x[:2])
    assert step.traces.count == 1 == len(calls)  # refused before the function ran
    step(model, x)  # the cached trace still serves


def test_no_retrace_block(model, x):
    step, calls = watched()
    with jp.no_retrace(step) as traces:
        step(model, x)  # a first trace is a compilation, not a retrace
        step(model, x + 1)
        with pytest.raises(jp.RetraceError, match=r"fc.weight: trainable True -> False"):
            step(model.freeze("fc.weight"), x)
    assert traces is step.traces and traces.count == 1 == len(calls)
    step(model.freeze("fc.weight"), x)  # allowed again after the block
    assert traces.count == 2 == len(calls)


def test_decorator_form_under_jit(model, x):
    calls = []

    @jax.jit
    @jp.watch_retraces(max_traces=None)
    def loss(model, x):
        calls.append(1)
        return model(x).sum()

    loss(model, x)
    loss(model, x)
    assert loss.traces.count == 1 == len(calls)
    assert loss.__wrapped__.traces is loss.traces


def test_a_retrace_without_a_changed_argument_says_so(model, x):
    loss, _ = counted()
    watched_loss = jp.watch_retraces(loss, max_traces=None)
    jax.jit(watched_loss)(model, x)
    jax.jit(lambda m, x: watched_loss(m, x))(model, x)  # a new jit of the same function
    (report,) = watched_loss.traces.reports
    assert "no argument differs" in report and "jax.jit called again" in report


def test_misuse_is_refused_with_the_fix(model):
    loss, _ = counted()
    with pytest.raises(TypeError, match=r"already jitted.*jax.jit\(jp.watch_retraces\(step\)"):
        jp.watch_retraces(jax.jit(loss))
    with pytest.raises(TypeError, match=r"not watched for retraces"), jp.no_retrace(jax.jit(loss)):
        pass
    with pytest.raises(ValueError, match=r"max_traces must be an int >= 1 or None, got 0"):
        jp.watch_retraces(loss, max_traces=0)
    with pytest.raises(ValueError, match=r"max_traces must be an int >= 1 or None, got True"):
        jp.watch_retraces(loss, max_traces=True)
    with pytest.raises(ValueError, match=r"action must be 'warn' or 'raise', got 'log'"):
        jp.watch_retraces(loss, action="log")


def test_an_error_in_the_function_is_not_a_trace(model, x):
    step, calls = watched()
    with pytest.raises(ValueError, match="expected input of shape"):
        step(model, jnp.ones((8, 5)))
    assert step.traces.count == 0
    step(model, x)
    assert step.traces.count == 1 and step.traces.reports == []
    assert len(calls) == 2  # the body ran twice, one trace completed


def test_optimizer_pattern_traces_once(model, x):
    """The README's training step, model and optimizer in and out, donated: one trace."""
    import optax

    calls = []

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    @jp.watch_retraces
    def train_step(model, opt, x):
        calls.append(1)
        loss, grads = jp.value_and_grad(lambda m, x: m(x).sum())(model, x)
        model, opt = opt.update(model, grads)
        return model, opt, loss

    opt = jp.Optimizer(optax.adam(1e-3), model)
    with jp.no_retrace(train_step):
        for _ in range(3):
            model, opt, _ = train_step(model, opt, x)
    assert train_step.traces.count == 1 == len(calls)
