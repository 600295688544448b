"""The `Placeholder` protocol: state dicts, loading, freezing, surgery and summaries go through it.

`SameAs` is a placeholder written here, outside jparam, as a user's would be: a second name for
another Parameter, with no transpose and no class jparam knows. Everything a tie gets from the
features (tested against PyTorch in test_tying.py), it gets through the protocol alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import jax.numpy as jnp
import numpy as np
import pytest

import jparam as jp
from jparam.placeholder import Placeholder, resolve_placeholders


class SameAs(Placeholder):
    """Another name for the Parameter at ``source`` (relative to the module it sits in)."""

    __slots__ = ()
    named = True

    def __init__(self, source: str) -> None:
        self.aux = (source,)

    def _source(self, name: str) -> str:
        return ".".join([*name.split(".")[:-1], self.aux[0]])

    def stands_for(self, name: str, params: Mapping[str, Any]) -> Any:
        p = params.get(self._source(name))
        return p if isinstance(p, jp.Parameter) else None

    def alias_of(self, name: str) -> str:
        return self._source(name)

    def describe(self, name: str) -> str:
        return f"same as {self._source(name)}"


class Pair(jp.Module):
    w: jp.Parameter
    b: jp.Parameter
    v: Any

    def __init__(self) -> None:
        self.w = jp.Parameter(jnp.arange(3.0))
        self.b = jp.Parameter(jnp.zeros(2))
        self.v = SameAs("w")


class Outer(jp.Module):
    inner: Pair

    def __init__(self) -> None:
        self.inner = Pair()


def test_state_dict_writes_the_alias_with_its_sources_value():
    sd = Outer().state_dict()
    assert list(sd) == ["inner.w", "inner.b", "inner.v"]
    chex.assert_trees_all_equal(sd["inner.v"], sd["inner.w"])
    names = [n for n, _ in Outer().named_parameters(remove_duplicate=False)]
    assert names == ["inner.w", "inner.b", "inner.v"]
    assert [n for n, _ in Outer().named_parameters()] == ["inner.w", "inner.b"]


def test_resolve_placeholders_leaves_out_one_that_stands_for_nothing():
    node = SameAs("w")
    assert list(resolve_placeholders({"b": jp.Parameter(jnp.zeros(2)), "v": node})) == ["b"]


def test_loading_takes_the_alias_alone_or_with_its_source_and_reports_it_missing_with_it():
    model = Outer()
    w, b = np.full(3, 2.0, np.float32), np.ones(2, np.float32)
    new = model.load_state_dict({"inner.w": w, "inner.b": b, "inner.v": w})
    chex.assert_trees_all_equal(new.inner.w.value, jnp.asarray(w))
    missing, unexpected = jp.incompatible_keys(model, {"inner.b": b})
    assert (missing, unexpected) == (["inner.w", "inner.v"], [])
    with pytest.raises(jp.StateDictError, match="inner.w"):
        model.load_state_dict({"inner.b": b})


def test_freezing_the_alias_freezes_its_source():
    frozen = Outer().freeze("inner.v")
    assert not frozen.inner.w.trainable and frozen.inner.b.trainable


def test_setting_a_raw_array_at_the_alias_raises_with_its_description():
    with pytest.raises(TypeError, match=r"'inner\.v' is same as inner\.w .*set 'inner\.w'"):
        jp.at(Outer(), "inner.v").set(jnp.zeros(3))
    replaced = jp.at(Outer(), "inner.v").set(jp.Parameter(jnp.ones(3)))
    assert isinstance(replaced.inner.v, jp.Parameter)


def test_summary_counts_the_alias_once_and_describes_it():
    table = str(jp.summary(Outer()))
    row = next(line for line in table.splitlines() if line.startswith("inner.v"))
    assert "same as inner.w" in row and row.split()[-1] == "0"
    assert "parameters: 5" in table
