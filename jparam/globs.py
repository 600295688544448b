"""Name globs: the one pattern dialect of filters, `freeze`, sharding rules, optimizer masks
and `jp.Mapping`.

A glob is ``fnmatch``'s, on dotted names: ``*`` matches any run of characters, dots included
(``"*.bias"`` is every bias at any depth), ``?`` one character and ``[...]`` one character of
a set. A run of stars (``*`` or ``**``) is one wildcard. Filters also select every name below
a match (`matches`: ``"encoder"`` selects the whole encoder). A `jp.Mapping` matches whole
names (`to_regex`) and captures each star run, as short as possible so that the literal text
around it anchors it: ``"h.*.attn.*"`` on ``h.0.attn.c_attn.weight`` captures ``0`` and
``c_attn.weight``.

This file imports nothing from jparam: every other file compiles globs through it.
"""

from __future__ import annotations

import fnmatch
import functools
import re

__all__ = ["has_wildcards", "matches", "pieces", "to_regex"]

_WILDCARDS = frozenset("*?[")


def has_wildcards(text: str) -> bool:
    """Whether ``text`` is a glob (has ``*``, ``?`` or ``[``) rather than an exact name."""
    return not _WILDCARDS.isdisjoint(text)


def pieces(pattern: str) -> list[str]:
    """The text between ``pattern``'s star runs, in order: one more piece than captures.

    A ``[...]`` set is kept whole, found as ``fnmatch`` finds it (a ``!`` or ``]`` right after
    the ``[`` belongs to the set; a ``[`` without its ``]`` is a plain character), so the
    ``*`` of ``[*]`` is a character of the set, not a wildcard.
    """
    out: list[str] = []
    text: list[str] = []  # the current piece's characters and sets
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            while i < n and pattern[i] == "*":
                i += 1
            out.append("".join(text))
            text = []
            continue
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:
                text.append(pattern[i : j + 1])
                i = j + 1
                continue
        text.append(c)
        i += 1
    out.append("".join(text))
    return out


@functools.lru_cache(maxsize=4096)
def to_regex(pattern: str) -> re.Pattern[str]:
    """The regex of a glob, for ``fullmatch``: one capture group per star run, non-greedy."""
    # each piece has no star outside a set: fnmatch translates it to ``(?s:...)\Z``
    body = "(.*?)".join(
        fnmatch.translate(p).removesuffix(r"\Z") if p else "" for p in pieces(pattern)
    )
    return re.compile(body, re.DOTALL)


@functools.lru_cache(maxsize=4096)
def _or_below(pattern: str) -> re.Pattern[str]:
    return re.compile(rf"(?:{to_regex(pattern).pattern})(?:\..*)?", re.DOTALL)


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches the glob, or lies below a name that does (``"encoder"``
    matches ``encoder.fc.weight``): how filters, `freeze` and `annotate` select names."""
    return _or_below(pattern).fullmatch(name) is not None
