"""Mappings between a checkpoint's names and layouts and a model's, applied at load and save.

A `Mapping` is a list of rules run in order over a ``{name: array}`` state: renames by glob or
regex (`rename`) and value transforms (`transpose`, `split_into`, `concat`, `reshape`, `cast`).
``load_state_dict``, ``jp.load`` and ``jp.load_state_dict`` apply it to the checkpoint before
matching names; ``jp.save(..., mapping=m)`` applies its inverse (rules reversed, each inverted)
to write the checkpoint's original names and layouts back, so keep every rule one-to-one on the
names it sees.

Patterns: a glob is the one `freeze`, `jp.name` and `jp.sharding.annotate` take (``fnmatch`` on
dotted names): ``*`` matches any run of characters, dots included, ``?`` one character and
``[...]`` one character of a set; a run of stars (``**`` too) is one wildcard. A rule's glob
matches whole names only (a filter's also selects the names below a match). Each star is a
capture, as short as the literal text after it allows, and the target's stars receive the
captures in order: ``rename("h.*.attn.*", "blocks.*.attn.*")`` captures ``0`` and
``c_attn.weight`` from ``h.0.attn.c_attn.weight``. A target holds literal text and stars only.
A regex (``regex=True``) must match the whole name; its groups go to ``\\1``/``\\g<1>`` in the
target. Every pattern of a rule must match at least one name, or loading fails naming the rule.
The guide (a GPT-2 example, and why square transposed weights must be named) is
``docs/howto/load-pytorch-checkpoint.md``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, replace
from typing import Any

import jax.numpy as jnp

from . import globs
from .parameter import to_array

__all__ = [
    "Mapping",
    "MappingError",
    "Rule",
    "cast",
    "concat",
    "rename",
    "reshape",
    "split_into",
    "torch_parametrizations",
    "transpose",
]


class MappingError(ValueError):
    """A mapping rule that cannot be applied: it matched nothing, collided, or is not invertible."""


# -- patterns -------------------------------------------------------------------------------------
# A pattern is a template: literal text and numbered captures. It matches names (``match``) and
# builds them from captures (``fill``). A glob is matched by its `globs.to_regex`; a regex's
# template keeps each group's regex, and the inverse of a rename is the target template matched
# with the source's group regexes.


@dataclass(frozen=True)
class _Template:
    text: str  # as the user wrote it, for messages
    parts: tuple[str | int, ...] | None  # literals and capture numbers; None: makes no name
    groups: dict[int, str]  # capture number -> its regex, to match ``parts`` (regex=True)
    compiled: re.Pattern[str] | None = None  # matches names, captures in order; None: ``parts``

    def regex(self) -> re.Pattern[str]:
        if self.compiled is not None:
            return self.compiled
        out, seen = [], set()
        for p in self.parts or ():  # a template without ``compiled`` has parts
            if isinstance(p, str):
                out.append(re.escape(p))
            elif p in seen:
                out.append(f"(?P=g{p})")
            else:
                seen.add(p)
                out.append(f"(?P<g{p}>{self.groups[p]})")
        return re.compile("".join(out))

    def match(self, name: str) -> dict[int, str] | None:
        m = self.regex().fullmatch(name)
        if m is None:
            return None
        if self.compiled is not None:
            return {i + 1: g or "" for i, g in enumerate(m.groups())}
        return {int(k[1:]): v for k, v in m.groupdict().items()}

    def fill(self, caps: AbcMapping[int, str]) -> str:
        if self.parts is None:
            raise MappingError(
                f"pattern {self.text!r} cannot be used as a target: a name is built from literal "
                "text and captures only (no glob ?/[...], no regex beyond text and (groups))"
            )
        try:
            return "".join(p if isinstance(p, str) else caps[p] for p in self.parts)
        except KeyError as e:
            raise MappingError(
                f"target {self.text!r} uses group {e.args[0]} the source lacks"
            ) from None

    def numbers(self) -> set[int]:
        if self.parts is None:
            return set(range(1, self.regex().groups + 1))
        return {p for p in self.parts if isinstance(p, int)}


def _glob(text: str) -> _Template:
    """A glob's template: its pieces and star runs (capture 1, 2, ...), matched by `globs`."""
    pieces = globs.pieces(text)
    parts: list[str | int] = []
    for n, piece in enumerate(pieces):
        if n:
            parts.append(n)
        if piece:
            parts.append(piece)
    literal = not any(globs.has_wildcards(p) for p in pieces)
    return _Template(text, tuple(parts) if literal else None, {}, globs.to_regex(text))


_META = set(".^$*+?{}[]|")


def _regex(text: str) -> _Template:
    """Parses ``literal (group) literal ...``; anything else is matched as a plain regex."""
    re.compile(text)  # a bad regex fails here, with Python's message
    body = text.removeprefix("^").removesuffix("$")
    parts: list[str | int] = []
    groups: dict[int, str] = {}
    i, lit = 0, []
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            if body[i + 1].isalnum():  # \d, \w, \1 ...: not a literal
                return _Template(text, None, {}, re.compile(text))
            lit.append(body[i + 1])
            i += 2
        elif c == "(":
            end = _group_end(body, i)
            inner = body[i + 1 : end]
            if end < 0 or inner.startswith("?") or re.compile(inner).groups:
                return _Template(text, None, {}, re.compile(text))
            if lit:
                parts.append("".join(lit))
                lit = []
            n = len(groups) + 1
            groups[n] = inner
            parts.append(n)
            i = end + 1
        elif c in _META:
            return _Template(text, None, {}, re.compile(text))
        else:
            lit.append(c)
            i += 1
    if lit:
        parts.append("".join(lit))
    return _Template(text, tuple(parts), groups)


def _group_end(s: str, start: int) -> int:
    depth, i = 0, start
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        depth += {"(": 1, ")": -1}.get(s[i], 0)
        if depth == 0:
            return i
        i += 1
    return -1


def _target(text: str, source: _Template, regex: bool) -> _Template:
    """The template of a target name: ``\\1`` (regex) or ``*`` in order (glob) take captures."""
    if regex:
        parts: list[str | int] = []
        pieces = re.split(r"\\(\d+)|\\g<(\d+)>", text)
        for i in range(0, len(pieces), 3):
            if pieces[i]:
                parts.append(pieces[i])
            if i + 1 < len(pieces):
                parts.append(int(pieces[i + 1] or pieces[i + 2]))
        groups = {p: source.groups.get(p, ".+?") for p in parts if isinstance(p, int)}
        target = _Template(text, tuple(parts), groups)
    else:
        target = _glob(text)
        if target.parts is None:
            raise MappingError(
                f"target {text!r} has a glob ?/[...], which matches names but cannot make one: "
                "write the target with literal text and * (each * takes a capture in order)"
            )
    if not target.numbers() <= source.numbers():
        raise MappingError(
            f"target {text!r} uses captures that pattern {source.text!r} does not have"
        )
    return target


def _pattern(text: str, regex: bool) -> _Template:
    if not isinstance(text, str):
        raise TypeError(f"a mapping pattern must be a string, got {type(text).__name__}")
    return _regex(text) if regex else _glob(text)


# -- rules ----------------------------------------------------------------------------------------


class Rule:
    """One step of a `Mapping`: ``apply(state) -> state`` and ``inverse() -> Rule``."""

    required: bool = True

    def __call__(self, state: AbcMapping[str, Any]) -> OrderedDict[str, Any]:
        """The state with this rule applied (a rule alone works like a one-rule `Mapping`)."""
        return self.apply(OrderedDict(state))

    def apply(self, state: OrderedDict[str, Any]) -> OrderedDict[str, Any]:
        raise NotImplementedError

    def inverse(self) -> Rule:
        raise NotImplementedError

    def _nothing(self, what: str = "") -> MappingError:
        return MappingError(
            f"mapping rule {self!r} matched no key{what}; check the pattern against the "
            "checkpoint's names (rules run in order: a rule sees the names earlier rules made; "
            "jp.save runs the inverted rules in reverse, so a rename's target pattern must not "
            "also match names that later rules make)"
        )


def _put(out: OrderedDict[str, Any], name: str, value: Any, rule: Rule) -> None:
    if name in out:
        raise MappingError(f"mapping rule {rule!r} makes {name!r}, which another key already has")
    out[name] = value


class _Rename(Rule):
    def __init__(self, src: _Template, dst: _Template, required: bool = True) -> None:
        self.src, self.dst, self.required = src, dst, required

    def __repr__(self) -> str:
        return f"rename({self.src.text!r}, {self.dst.text!r})"

    def apply(self, state: OrderedDict[str, Any]) -> OrderedDict[str, Any]:
        out: OrderedDict[str, Any] = OrderedDict()
        hit = False
        renamed = {}
        for name in state:
            caps = self.src.match(name)
            if caps is not None:
                renamed[name] = self.dst.fill(caps)
                hit = True
        for name, value in state.items():
            _put(out, renamed.get(name, name), value, self)
        if not hit and self.required:
            raise self._nothing()
        return out

    def inverse(self) -> Rule:
        if self.src.parts is None:
            raise MappingError(
                f"{self!r} cannot be inverted: its pattern is not literal text and captures (a "
                "glob with ?/[...], or a regex beyond text and (groups)); write the inverse rule "
                "yourself"
            )
        back = replace(self.src, groups=self.dst.groups)
        return _Rename(replace(self.dst, groups=self.src.groups), back, self.required)


class _Values(Rule):
    """A per-key value transform ``fn`` on every name matching one of ``patterns``."""

    def __init__(self, what: str, patterns: Sequence[_Template], fn: Any, inv: Any) -> None:
        self.what, self.patterns, self.fn, self.inv = what, tuple(patterns), fn, inv

    def __repr__(self) -> str:
        return f"{self.what}({', '.join(repr(p.text) for p in self.patterns)})"

    def apply(self, state: OrderedDict[str, Any]) -> OrderedDict[str, Any]:
        for p in self.patterns:
            if self.required and not any(p.match(n) is not None for n in state):
                raise self._nothing(f" (pattern {p.text!r})")
        out: OrderedDict[str, Any] = OrderedDict()
        for name, value in state.items():
            hit = any(p.match(name) is not None for p in self.patterns)
            out[name] = self._run(name, value) if hit else value
        return out

    def _run(self, name: str, value: Any) -> Any:
        try:
            return self.fn(to_array(value, what=name))
        except (TypeError, ValueError) as e:
            raise MappingError(f"mapping rule {self!r} on {name!r}: {e}") from None

    def inverse(self) -> Rule:
        if self.inv is None:
            raise MappingError(
                f"{self!r} cannot be inverted: give the original (original=...) to save with it"
            )
        return _Values(self.what, self.patterns, self.inv, self.fn)


class _Split(Rule):
    def __init__(
        self, src: _Template, into: Sequence[_Template], axis: int, sizes: Sequence[int] | None
    ) -> None:
        self.src, self.into, self.axis = src, tuple(into), axis
        self.sizes = None if sizes is None else tuple(sizes)

    def __repr__(self) -> str:
        return f"split_into({self.src.text!r}, {[t.text for t in self.into]}, axis={self.axis})"

    def apply(self, state: OrderedDict[str, Any]) -> OrderedDict[str, Any]:
        out: OrderedDict[str, Any] = OrderedDict()
        hit = False
        for name, value in state.items():
            caps = self.src.match(name)
            if caps is None:
                _put(out, name, value, self)
                continue
            hit = True
            for target, piece in zip(self.into, self._pieces(name, to_array(value, what=name))):
                _put(out, target.fill(caps), piece, self)
        if not hit:
            raise self._nothing()
        return out

    def _pieces(self, name: str, value: Any) -> list[Any]:
        n = len(self.into)
        axis = self.axis
        if not -value.ndim <= axis < value.ndim:
            raise MappingError(f"{self!r}: {name!r} has shape {value.shape}, no axis {axis}")
        length = value.shape[axis]
        sizes = self.sizes or ((length // n,) * n if length % n == 0 else None)
        if sizes is None or sum(sizes) != length:
            raise MappingError(
                f"{self!r}: {name!r} has {length} entries along axis {axis}, which do not split "
                f"into {n} equal parts{'' if self.sizes is None else f' of sizes {self.sizes}'}"
                "; pass sizes=..."
            )
        cuts = [sum(sizes[: i + 1]) for i in range(n - 1)]
        return jnp.split(value, cuts, axis=axis)

    def inverse(self) -> Rule:
        return _Concat(self.into, self.src, self.axis, self.sizes)


class _Concat(Rule):
    def __init__(
        self, sources: Sequence[_Template], to: _Template, axis: int, sizes: Sequence[int] | None
    ) -> None:
        self.sources, self.to, self.axis = tuple(sources), to, axis
        self.sizes = None if sizes is None else tuple(sizes)

    def __repr__(self) -> str:
        return f"concat({[t.text for t in self.sources]}, {self.to.text!r}, axis={self.axis})"

    def apply(self, state: OrderedDict[str, Any]) -> OrderedDict[str, Any]:
        groups: dict[str, list[str]] = {}  # first source name -> all source names
        for name in state:
            caps = self.sources[0].match(name)
            if caps is not None:
                names = [s.fill(caps) for s in self.sources]
                absent = [n for n in names if n not in state]
                if absent:
                    raise MappingError(f"{self!r}: {name!r} is there but not {absent}")
                groups[name] = names
        if not groups:
            raise self._nothing()
        used = {n for names in groups.values() for n in names}
        out: OrderedDict[str, Any] = OrderedDict()
        for name, value in state.items():
            if name in groups:
                caps = self.sources[0].match(name) or {}
                parts = [to_array(state[n], what=n) for n in groups[name]]
                _put(out, self.to.fill(caps), self._join(name, parts), self)
            elif name not in used:
                _put(out, name, value, self)
        return out

    def _join(self, name: str, parts: list[Any]) -> Any:
        try:
            return jnp.concatenate(parts, axis=self.axis)
        except (TypeError, ValueError) as e:
            shapes = [p.shape for p in parts]
            raise MappingError(f"{self!r} at {name!r}: shapes {shapes}: {e}") from None

    def inverse(self) -> Rule:
        return _Split(self.to, self.sources, self.axis, self.sizes)


# -- the public constructors ----------------------------------------------------------------------


def rename(pattern: str, to: str, *, regex: bool = False) -> Rule:
    """Renames every name matching ``pattern`` to ``to`` (captures carried over).

    Globs: ``rename("transformer.h.*", "blocks.*")``; regexes:
    ``rename(r"h\\.(\\d+)\\.mlp\\.c_fc\\.(weight|bias)", r"blocks.\\1.fc.\\2", regex=True)``.
    """
    src = _pattern(pattern, regex)
    return _Rename(src, _target(to, src, regex))


def _patterns(patterns: Sequence[str], regex: bool, what: str) -> list[_Template]:
    if not patterns:
        raise TypeError(f"{what}() needs at least one name pattern")
    return [_pattern(p, regex) for p in patterns]


def transpose(*patterns: str, axes: Sequence[int] | None = None, regex: bool = False) -> Rule:
    """Transposes every matching value: the last two axes, or the permutation ``axes``."""
    if axes is None:
        return _Values(
            "transpose",
            _patterns(patterns, regex, "transpose"),
            lambda v: jnp.swapaxes(v, -1, -2),
            lambda v: jnp.swapaxes(v, -1, -2),
        )
    perm = tuple(int(a) for a in axes)
    back = tuple(perm.index(i) for i in range(len(perm)))
    return _Values(
        "transpose",
        _patterns(patterns, regex, "transpose"),
        lambda v: jnp.transpose(v, perm),
        lambda v: jnp.transpose(v, back),
    )


def reshape(
    *patterns: str,
    shape: Sequence[int],
    original: Sequence[int] | None = None,
    regex: bool = False,
) -> Rule:
    """Reshapes every matching value to ``shape``; ``original`` (the checkpoint's shape) makes
    it invertible for `jp.save`."""
    new, old = tuple(shape), None if original is None else tuple(original)
    inv = None if old is None else (lambda v: jnp.reshape(v, old))
    return _Values(
        "reshape", _patterns(patterns, regex, "reshape"), lambda v: jnp.reshape(v, new), inv
    )


def cast(*patterns: str, dtype: Any, original: Any = None, regex: bool = False) -> Rule:
    """Casts every matching value to ``dtype`` (any kind change: int -> float too); ``original``
    (the checkpoint's dtype) makes it invertible for `jp.save`."""
    inv = None if original is None else (lambda v: v.astype(original))
    return _Values("cast", _patterns(patterns, regex, "cast"), lambda v: v.astype(dtype), inv)


def split_into(
    pattern: str,
    into: Sequence[str],
    axis: int = 0,
    *,
    sizes: Sequence[int] | None = None,
    regex: bool = False,
) -> Rule:
    """Splits each matching value along ``axis`` into ``len(into)`` entries named ``into``
    (equal parts unless ``sizes``): a fused ``qkv`` onto ``q``, ``k``, ``v``."""
    src = _pattern(pattern, regex)
    if isinstance(into, str) or len(into) < 2:
        raise TypeError(f"split_into({pattern!r}, into=...) needs a list of two or more names")
    if sizes is not None and len(sizes) != len(into):
        raise ValueError(f"split_into({pattern!r}): {len(sizes)} sizes for {len(into)} names")
    return _Split(src, [_target(t, src, regex) for t in into], axis, sizes)


def concat(
    sources: Sequence[str],
    to: str,
    axis: int = 0,
    *,
    sizes: Sequence[int] | None = None,
    regex: bool = False,
) -> Rule:
    """Concatenates the values named ``sources`` along ``axis`` into one entry named ``to``.

    The first source is matched; its captures name the others and the target. ``sizes`` (the
    sources' lengths along ``axis``) lets `jp.save` split unequal parts back.
    """
    if isinstance(sources, str) or len(sources) < 2:
        raise TypeError(f"concat(sources=..., {to!r}) needs a list of two or more names")
    first = _pattern(sources[0], regex)
    rest = [_target(s, first, regex) for s in sources[1:]]
    return _Concat([first, *rest], _target(to, first, regex), axis, sizes)


class Mapping:
    """Rules applied in order to a checkpoint's ``{name: array}`` at load; inverted at save.

    ``Mapping([...])`` takes rules (`rename`, `transpose`, `split_into`, `concat`, `reshape`,
    `cast`) or other Mappings; ``load_state_dict``/``jp.load``/``jp.save`` also accept the list.
    """

    def __init__(self, rules: Iterable[Rule | Mapping] = ()) -> None:
        flat: list[Rule] = []
        for r in rules:
            if isinstance(r, Mapping):
                flat.extend(r.rules)
            elif isinstance(r, Rule):
                flat.append(r)
            else:
                raise TypeError(
                    f"a Mapping takes rules (jp.mapping.rename, transpose, split_into, ...), "
                    f"got {type(r).__name__}: {r!r}"
                )
        self.rules: tuple[Rule, ...] = tuple(flat)

    def __repr__(self) -> str:
        return f"Mapping({list(self.rules)!r})"

    def __call__(self, state: AbcMapping[str, Any]) -> OrderedDict[str, Any]:
        """The state with every rule applied in order (checkpoint names -> model names)."""
        out = OrderedDict(state)
        for rule in self.rules:
            out = rule.apply(out)
        return out

    def inverse(self) -> Mapping:
        """The mapping back (model names -> checkpoint names): rules reversed and inverted."""
        return Mapping(r.inverse() for r in reversed(self.rules))


def as_mapping(mapping: Any) -> Mapping | None:
    """``None``, a `Mapping` or a list of rules, as a `Mapping` (or None)."""
    if mapping is None or isinstance(mapping, Mapping):
        return mapping
    if isinstance(mapping, Rule):
        return Mapping([mapping])
    if isinstance(mapping, (list, tuple)):
        return Mapping(mapping)
    raise TypeError(
        f"mapping= takes a jp.Mapping or a list of jp.mapping rules, got {type(mapping).__name__}"
    )


# -- PyTorch's parametrization names --------------------------------------------------------------
_PREFIX = r"((?:.+\.)?)parametrizations\.([^.]+)\."
_TORCH_PARAMETRIZATIONS = (
    (_PREFIX + r"original", r"\1\2.original"),
    (_PREFIX + r"original(\d+)", r"\1\2.original.\3"),
    (_PREFIX + r"0\.base", r"\1\2.parametrization.base"),
    (_PREFIX + r"0\._u", r"\1\2.parametrization.u"),
    (_PREFIX + r"0\._v", r"\1\2.parametrization.v"),
)


def torch_parametrizations() -> Mapping:
    """PyTorch's ``torch.nn.utils.parametrize`` names onto `jp.parametrize`'s.

    ``fc.parametrizations.weight.original`` -> ``fc.weight.original``; ``original0``/``1``
    (weight norm's ``g``/``v``) -> ``original.0``/``.1``; orthogonal's ``0.base`` and spectral
    norm's ``0._u``/``0._v`` -> ``weight.parametrization.base``/``.u``/``.v``. Rules that match
    nothing are skipped. ``load_state_dict`` applies it by itself to names the model lacks;
    pass it to ``jp.save(..., mapping=...)`` to write PyTorch's names.
    """
    rules = []
    for src, dst in _TORCH_PARAMETRIZATIONS:
        rule = rename(src, dst, regex=True)
        rule.required = False
        rules.append(rule)
    return Mapping(rules)


def torch_parametrization_names(
    state: AbcMapping[str, Any], expected: AbcMapping[str, Any]
) -> AbcMapping[str, Any]:
    """``state`` with PyTorch's parametrization names the model lacks renamed to jparam's."""
    if not any("parametrizations." in k and k not in expected for k in state):
        return state
    try:
        mapped = torch_parametrizations()(state)
    except MappingError:  # a renamed name is already there: leave the state to report it
        return state
    out: OrderedDict[str, Any] = OrderedDict()
    for (old, value), new in zip(state.items(), mapped):
        out[new if old not in expected and new in expected else old] = value
    return out
