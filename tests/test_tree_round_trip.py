"""Hypothesis-generated module trees through ``state_dict`` -> ``jp.save`` -> ``jp.load``.

The strategy draws a *spec* (nested modules, dicts with odd keys, lists, tuples, ``None``
fields; Parameters and Buffers of several dtypes and shapes, zero-size and scalar included),
and `build` turns a spec and a seed into a model. The expected names and values come from the
spec itself, not from jparam's own tree walks: a name is the fields, keys and indices on the
way down joined by dots, as PyTorch names a module tree.
"""

import itertools
import re
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import jparam as jp

DTYPES = ["float32", "bfloat16", "int32", "bool"]
SHAPES = [(), (0,), (3,), (2, 0), (2, 3), (1, 1, 2)]
# Dict keys as users write them: digits, unicode (alpha, Japanese), spaces, dashes. Dotted keys
# get prefixes that are never plain keys, so they cannot collide with a nested name (see the
# collision test).
PLAIN_KEYS = ["w", "0", "12", "\u03b1", "名前", "with space", "dash-key", "under_score", "CAPS"]
DOTTED_KEYS = ["v1.weight", "layer.0", "é.ü"]


class Box(jp.Module):
    """A generic module: three children of any kind and a static tag."""

    a: Any
    b: Any
    c: Any
    tag: str = jp.field(static=True, default="")

    def __init__(self, a, b, c, tag=""):
        self.a, self.b, self.c, self.tag = a, b, c, tag


# -- specs ---------------------------------------------------------------------------------------
# ("param", i): entry i of the parameter pool; the same i twice is one shared Parameter object.
# ("buffer", dtype, shape, persistent) | ("none",) | ("box", a, b, c, tag)
# ("dict", ((key, child), ...)) | ("list", (child, ...)) | ("tuple", (child, ...))

pool_entries = st.tuples(st.sampled_from(DTYPES), st.sampled_from(SHAPES), st.booleans())
buffers = st.builds(
    lambda d, s, p: ("buffer", d, s, p),
    st.sampled_from(DTYPES),
    st.sampled_from(SHAPES),
    st.booleans(),
)
keys = st.sampled_from(PLAIN_KEYS + DOTTED_KEYS)


def children() -> st.SearchStrategy:
    leaf = st.one_of(pool_entries.map(lambda e: ("param", e)), buffers, st.just(("none",)))

    def extend(sub: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(
            st.tuples(st.just("box"), sub, sub, sub, st.sampled_from(["", "x"])),
            st.dictionaries(keys, sub, max_size=3).map(lambda d: ("dict", tuple(d.items()))),
            st.lists(sub, max_size=3).map(lambda xs: ("list", tuple(xs))),
            st.lists(sub, min_size=1, max_size=2).map(lambda xs: ("tuple", tuple(xs))),
        )

    return st.recursive(leaf, extend, max_leaves=10)


def _number_params(spec, ids):
    """``spec`` with its n-th ``("param", entry)`` leaf replaced by ``("param", ids[n])``."""
    kind = spec[0]
    if kind == "param":
        return ("param", next(ids))
    if kind == "box":
        return ("box", *(_number_params(c, ids) for c in spec[1:4]), spec[4])
    if kind == "dict":
        return ("dict", tuple((k, _number_params(c, ids)) for k, c in spec[1]))
    if kind in ("list", "tuple"):
        return (kind, tuple(_number_params(c, ids) for c in spec[1]))
    return spec


@st.composite
def specs(draw, shared: bool):
    """``(pool, root)``; with ``shared`` some Parameter object sits at two or more paths."""
    root = ("box", draw(children()), draw(children()), draw(children()), "root")
    entries = [s[1] for _, s in _walk(root, "") if s[0] == "param"]
    ids = list(range(len(entries)))
    if shared:
        assume(len(entries) >= 2)
        # each later use may repeat an earlier object; at least one does
        j = draw(st.integers(1, len(entries) - 1))
        ids[j] = draw(st.integers(0, j - 1))
        for n in range(1, len(entries)):
            if n != j and draw(st.booleans()):
                ids[n] = draw(st.integers(0, n - 1))
        for n in range(len(ids)):  # follow chains: an alias of an alias is the first object
            ids[n] = ids[ids[n]]
    return entries, _number_params(root, iter(ids))


def _walk(spec, prefix: str):
    """``(name, spec)`` of every Parameter and Buffer below ``spec``, names as PyTorch's."""
    kind = spec[0]
    join = (lambda k: f"{prefix}.{k}") if prefix else str
    if kind in ("param", "buffer"):
        yield prefix, spec
    elif kind == "box":
        for field, child in zip("abc", spec[1:4]):
            yield from _walk(child, join(field))
    elif kind == "dict":
        for key, child in spec[1]:
            yield from _walk(child, join(key))
    elif kind in ("list", "tuple"):
        for i, child in enumerate(spec[1]):
            yield from _walk(child, join(i))


def _param_uses(root):
    """``(name, pool index)`` of every Parameter use, in walk order."""
    return [(name, s[1]) for name, s in _walk(root, "") if s[0] == "param"]


# -- building a model from a spec ----------------------------------------------------------------


def _value(dtype: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype == "int32":
        return rng.integers(-1000, 1000, shape, dtype=np.int32)
    x = rng.standard_normal(shape).astype(np.float32)
    return x.astype(ml_dtypes.bfloat16) if dtype == "bfloat16" else x


def build(spec_pair, seed: int):
    """The model of a spec; ``seed`` picks the values, so two seeds give two fresh copies."""
    pool, root = spec_pair
    rng = np.random.default_rng(seed)
    params = [
        jp.Parameter(_value(d, s, rng), trainable=t and d in ("float32", "bfloat16"))
        for d, s, t in pool
    ]
    counter = itertools.count()

    def make(spec):
        kind = spec[0]
        if kind == "param":
            return params[spec[1]]
        if kind == "buffer":
            _, d, s, persistent = spec
            value = _value(d, s, np.random.default_rng([seed, next(counter)]))
            return jp.Buffer(value) if persistent else jp.Buffer(value, persistent=False)
        if kind == "none":
            return None
        if kind == "box":
            return Box(make(spec[1]), make(spec[2]), make(spec[3]), spec[4])
        if kind == "dict":
            return {k: make(c) for k, c in spec[1]}
        return (list if kind == "list" else tuple)(make(c) for c in spec[1])

    return make(root)


def expected_state(spec_pair, seed: int) -> dict[str, np.ndarray]:
    """``{name: value}`` of every Parameter and persistent Buffer, from the spec alone."""
    model_values = {}
    pool, root = spec_pair
    rng = np.random.default_rng(seed)
    pool_values = [_value(d, s, rng) for d, s, _ in pool]
    counter = itertools.count()
    for name, s in _walk(root, ""):
        if s[0] == "param":
            model_values[name] = pool_values[s[1]]
        else:  # buffers draw in the order `build` makes them: the walk's order
            value = _value(s[1], s[2], np.random.default_rng([seed, next(counter)]))
            if s[3]:
                model_values[name] = value
    return model_values


# -- checks --------------------------------------------------------------------------------------


def assert_state_equal(got, want: dict[str, np.ndarray], what: str) -> None:
    assert sorted(got) == sorted(want), what
    for name, value in want.items():
        g = np.asarray(got[name])
        assert g.dtype == value.dtype, f"{what}: {name}: {g.dtype} != {value.dtype}"
        assert g.shape == value.shape, f"{what}: {name}: {g.shape} != {value.shape}"
        np.testing.assert_array_equal(g, value, err_msg=f"{what}: {name}")  # a copy: exact


def assert_same_model(got, want) -> None:
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def round_trip(spec_pair) -> None:
    model, fresh = build(spec_pair, 0), build(spec_pair, 1)
    want = expected_state(spec_pair, 0)
    state = model.state_dict()
    assert_state_equal(state, want, "state_dict")
    # Each Parameter object is listed once, under one of its names; frozen flags as built.
    pool, root = spec_pair
    uses = _param_uses(root)
    listed = dict(model.named_parameters())
    ids = {name: i for name, i in uses}
    assert set(listed) <= set(ids)
    assert sorted(ids[n] for n in listed) == sorted(set(ids.values()))
    for name, p in listed.items():
        d, _, trainable = pool[ids[name]]
        assert p.trainable == (trainable and d in ("float32", "bfloat16")), name
    # load_state_dict(state_dict()) is the identity, into itself and into a fresh copy.
    assert_same_model(model.load_state_dict(state), model)
    assert_state_equal(fresh.load_state_dict(state).state_dict(), want, "load_state_dict")
    with tempfile.TemporaryDirectory() as tmp:  # hypothesis reuses function-scoped fixtures
        path = Path(tmp) / "model.safetensors"
        jp.save(path, model)
        raw, _ = jp.load_file(path)
        assert_state_equal(raw, want, "file")
        loaded = jp.load(path, like=fresh)
    assert_state_equal(loaded.state_dict(), want, "jp.load")
    assert list(loaded.state_dict()) == list(state)
    assert [n for n, _ in loaded.named_parameters()] == list(listed)  # still shared
    assert jax.tree.structure(loaded) == jax.tree.structure(fresh)
    # Non-persistent buffers are not in the file: they keep the fresh copy's values.
    for (name, b), (_, fb) in zip(jp.named_buffers(loaded), jp.named_buffers(fresh)):
        if not b.persistent:
            np.testing.assert_array_equal(np.asarray(b), np.asarray(fb), err_msg=name)


@given(specs(shared=False))
def test_random_trees_round_trip_through_state_dict_and_files(spec_pair):
    round_trip(spec_pair)


@given(specs(shared=True))
def test_shared_parameters_are_tied_and_round_trip(spec_pair):
    """One Parameter object at two paths is a tie: both names saved, listed and trained once."""
    round_trip(spec_pair)


@given(
    outer=st.sampled_from(["", "w", "0", "名前"]),
    left=st.sampled_from(["p", "0", "\u03b1"]),
    right=st.sampled_from(["q", "1", "ü"]),
    dtype=st.sampled_from(DTYPES),
)
def test_colliding_names_are_refused_naming_both_paths(outer, left, right, dtype):
    """``{"p.q": x, "p": {"q": y}}`` would save one array under one name for two: refused."""
    rng = np.random.default_rng(0)
    table = {
        f"{left}.{right}": jp.Parameter(_value(dtype, (2,), rng), trainable=False),
        left: {right: jp.Parameter(_value(dtype, (2,), rng), trainable=False)},
    }
    prefix = f"a.{outer}." if outer else "a."
    name = f"{prefix}{left}.{right}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        with pytest.raises(ValueError, match=re.escape(name)) as info:
            model = Box({outer: table} if outer else table, None, None)
            model.state_dict()
            jp.save(path, model)
        assert not path.exists()
    # both paths: the dotted key as one key, and the nested keys one after the other
    msg = str(info.value)
    assert re.search(rf"""['"]{re.escape(left)}\.{re.escape(right)}['"]""", msg), msg
