"""One glob dialect: filters, freeze, optimizer masks, sharding rules and Mapping renames."""

import fnmatch

import hypothesis.strategies as st
import jax
import numpy as np
import pytest
from hypothesis import given, settings

import jparam as jp
from jparam import globs, nn
from jparam.mapping import MappingError

SEGMENT = st.text("ab01_", min_size=1, max_size=3)
NAMES = st.lists(SEGMENT, min_size=1, max_size=4).map(".".join)
PATTERNS = st.text("ab0.*?[]!-", max_size=8)


@settings(max_examples=400, deadline=None)
@given(pattern=PATTERNS, name=NAMES)
def test_globs_are_fnmatch_on_dotted_names_plus_the_names_below_a_match(pattern, name):
    whole = fnmatch.fnmatchcase(name, pattern)
    assert (globs.to_regex(pattern).fullmatch(name) is not None) == whole
    below = fnmatch.fnmatchcase(name, pattern + ".*")
    assert globs.matches(pattern, name) == (whole or below)


def test_each_star_run_is_one_capture_matched_as_short_as_the_text_after_it_allows():
    assert globs.to_regex("h.*.attn.*").fullmatch("h.0.attn.c_attn.weight").groups() == (
        "0",
        "c_attn.weight",
    )
    assert globs.to_regex("*.*").fullmatch("a.b.c").groups() == ("a", "b.c")
    assert globs.to_regex("a**b***c").groups == 2
    assert globs.pieces("a**b***c") == ["a", "b", "c"]
    # the * of a [...] set is a character of the set, not a wildcard
    assert globs.to_regex("x[*]").groups == 0
    assert globs.matches("x[*]", "x*") and not globs.matches("x[*]", "xy")


def test_double_and_single_stars_are_the_same_glob():
    assert globs.to_regex("h.**.w").pattern == globs.to_regex("h.*.w").pattern
    state = {"h.0.attn.w": 1, "h.1.mlp.w": 2, "other": 3}
    one = jp.mapping.rename("h.*", "blocks.*")(state)
    two = jp.mapping.rename("h.**", "blocks.**")(state)
    assert list(one) == list(two) == ["blocks.0.attn.w", "blocks.1.mlp.w", "other"]


def _model():
    keys = jax.random.split(jax.random.key(0), 3)
    enc = nn.ModuleList(
        [nn.Linear(2, 2, key=keys[0]), nn.LayerNorm(2), nn.Linear(2, 2, key=keys[1])]
    )
    return nn.ModuleDict({"enc": enc, "head": nn.Linear(2, 3, key=keys[2])})


def _renamed(model, pattern):
    """The parameter names a Mapping rename of ``pattern`` renames."""
    stars = globs.to_regex(pattern).groups
    rule = jp.mapping.rename(pattern, "renamed" + ".*" * stars)
    out = set()
    for name, _ in model.named_parameters():
        try:
            rule({name: 0})
        except MappingError:  # the rename matched nothing
            continue
        out.add(name)
    return out


# patterns that end at parameter names: a filter also selects the names below an inner node's
# match ("enc.0" is the whole layer), a rename matches whole names only
@pytest.mark.parametrize(
    "pattern",
    ["*.bias", "*weight", "enc.*.weight", "enc.?.bias", "[eh]*.bias", "enc.**", "*.[!0]*.*"],
)
def test_a_glob_selects_the_same_names_in_freeze_name_optim_masks_and_mapping(pattern):
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    frozen = {n for n, p in model.freeze(pattern).named_parameters() if not p.trainable}
    by_name = set(jp.split(model, jp.name(pattern))[0])
    mask = jp.optim.mask(model, include=pattern)
    masked = {n for n in names if mask[n]}
    want = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
    assert want and frozen == by_name == masked == _renamed(model, pattern) == want


@settings(max_examples=50, deadline=None)
@given(
    layer=st.lists(SEGMENT, min_size=1, max_size=2).map(".".join),
    rest=st.lists(SEGMENT, min_size=1, max_size=3).map(".".join),
)
def test_captures_round_trip_through_the_inverse(layer, rest):
    name = f"h.{layer}.attn.{rest}"
    m = jp.Mapping([jp.mapping.rename("h.*.attn.*", "blocks.*.attention.*")])
    out = m({name: np.zeros(1), "h.other": np.ones(1)})
    assert list(out) == [f"blocks.{layer}.attention.{rest}", "h.other"]
    assert list(m.inverse()(out)) == [name, "h.other"]


def test_a_glob_that_matches_nothing_still_raises_everywhere():
    model = _model()
    with pytest.raises(ValueError, match="'nothing.*' matches no parameter"):
        model.freeze("nothing.*")
    with pytest.raises(ValueError, match="'nothing.*' matches no trainable parameter"):
        jp.optim.mask(model, include="nothing.*")
    with pytest.raises(ValueError, match="'nothing.*' matches no parameter or buffer"):
        jp.sharding.annotate(model, {"nothing.*": None})
    with pytest.raises(MappingError, match=r"rename\('nothing\.\*', 'x\.\*'\) matched no key"):
        jp.mapping.rename("nothing.*", "x.*")(dict(model.state_dict()))
    assert jp.split(model, jp.name("nothing.*"))[0] == {}  # a filter is a predicate: no raise
