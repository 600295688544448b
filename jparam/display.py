"""Readable text for modules: the nested ``repr`` and the ``summary()`` table.

Arrays print as ``f32[32,16]``, never their contents. Runs of identical items in a list (the
48 blocks of a deep transformer) print once with a count.

The table is a `Summary`, a ``str`` that notebooks show as an HTML table and ``rich`` as a rich
table. With ``treescope`` installed (``pip install 'jparam[notebook]'``, then
``treescope.basic_interactive_setup()`` in the notebook), models render as foldable trees
whose Parameters show their value's shape, dtype and statistics, the trainable flag and
metadata (``Parameter.__treescope_repr__``).
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from .modulebase import ModuleBase
from .parameter import Parameter, Variable, dtype_shape
from .placeholder import Placeholder, resolve_placeholders
from .state import saved_variables

__all__ = ["Summary", "module_repr", "summary"]

_WIDTH = 100


def _fold(items: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[i]:
            j += 1
        count = j - i + 1
        out.append(items[i] if count == 1 else f"{count} x {items[i]}")
        i = j + 1
    return out


def _wrap(open_: str, items: list[str], close: str, indent: int) -> str:
    one_line = open_ + ", ".join(items) + close
    if "\n" not in one_line and len(one_line) + 2 * indent <= _WIDTH:
        return one_line
    pad = "  " * (indent + 1)
    body = "".join(f"{pad}{item},\n" for item in items)
    return f"{open_}\n{body}{'  ' * indent}{close}"


def _fmt(x: Any, indent: int) -> str:
    if isinstance(x, ModuleBase):
        return _module(x, indent)
    if isinstance(x, Variable):
        return repr(x)
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        try:
            return dtype_shape(x)
        except TypeError:
            pass
    if type(x) in (list, tuple):
        items = [_fmt(i, indent + 1) for i in x]
        if any(isinstance(i, ModuleBase) for i in x):  # fold repeated blocks, never (3, 3)
            items = _fold(items)
        return _wrap(
            "[" if type(x) is list else "(", items, "]" if type(x) is list else ")", indent
        )
    if isinstance(x, dict):
        items = [f"{k!r}: {_fmt(v, indent + 1)}" for k, v in x.items()]
        return _wrap("{", items, "}", indent)
    if callable(x) and hasattr(x, "__name__"):
        return x.__name__
    return repr(x)


def _module(m: ModuleBase, indent: int) -> str:
    # A module may show itself otherwise (`nn.Stacked`: "24 x Block(...)"): (label, value) pairs.
    custom = getattr(m, "_jp_repr_items", None)
    pairs = (
        custom() if custom else [(f"{f.name}=", m.__dict__[f.name]) for f in dataclasses.fields(m)]
    )
    items = [f"{label}{_fmt(value, indent + 1)}" for label, value in pairs]
    if not m.training:
        items.append("training=False")
    return _wrap(f"{type(m).__name__}(", items, ")", indent)


def module_repr(m: ModuleBase) -> str:
    """The nested repr of a module: fields with shapes and dtypes, not array contents."""
    return _module(m, 0)


def _count(x: Any) -> int:
    return int(np.prod(x.shape, dtype=np.int64))


def _bytes(x: Any) -> int:
    return _count(x) * jnp.dtype(x.dtype).itemsize


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"


def _split_index(name: str) -> tuple[str, int, str] | None:
    """``blocks.3.attn.weight`` -> ``("blocks", 3, "attn.weight")``; ``None`` without an index."""
    segs = name.split(".")
    for j, seg in enumerate(segs):
        if seg.isdigit():
            return ".".join(segs[:j]), int(seg), ".".join(segs[j + 1 :])
    return None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _fold_rows(rows: list[tuple[Any, ...]]) -> list[tuple[str, ...]]:
    """Folds runs of identical consecutive blocks (``blocks.0`` ... ``blocks.47``) into one.

    A folded row is named ``blocks.0-47.attn.weight`` and counts ``48 x 1,024``.
    """
    out: list[tuple] = []
    i = 0
    while i < len(rows):
        head = _split_index(rows[i][0])
        if head is None:
            out.append((*rows[i][:4], f"{rows[i][4]:,}"))
            i += 1
            continue
        blocks: list[tuple[int, list[tuple]]] = []
        j = i
        while j < len(rows) and (h := _split_index(rows[j][0])) and h[0] == head[0]:
            if blocks and blocks[-1][0] == h[1]:
                blocks[-1][1].append((h[2], *rows[j][1:]))
            else:
                blocks.append((h[1], [(h[2], *rows[j][1:])]))
            j += 1
        k = 0
        while k < len(blocks):
            m = k
            while (
                m + 1 < len(blocks)
                and blocks[m + 1][0] == blocks[m][0] + 1
                and blocks[m + 1][1] == blocks[k][1]
            ):
                m += 1
            n, first, last = m - k + 1, blocks[k][0], blocks[m][0]
            index = str(first) if n == 1 else f"{first}-{last}"
            for rest, shape, dtype, kind, count in blocks[k][1]:
                shown = f"{count:,}" if n == 1 else f"{n} x {count:,}"
                out.append((_join(head[0], index, rest), shape, dtype, kind, shown))
            k = m + 1
        i = j
    return out


def _shape(x: Any) -> str:
    return "(" + ", ".join(map(str, x.shape)) + ("," if len(x.shape) == 1 else "") + ")"


def summary(tree: Any) -> Summary:
    """A table of every parameter and buffer (shared ones once) with totals.

    Runs of identical blocks fold into one row per parameter (``blocks.0-47.attn.weight``,
    count ``48 x 1,024``), so a deep model's table stays readable.
    """
    rows: list[tuple[Any, ...]] = []  # counts are ints until folded
    seen: set[int] = set()
    totals = {"trainable": 0, "frozen": 0, "buffer": 0}
    size = 0
    # Saved names: stacked layers one by one.
    entries = saved_variables(tree, abstract=True, all_buffers=True)
    shared = resolve_placeholders(entries)
    for name, node in entries.items():
        if isinstance(node, Placeholder) and name in shared:  # counted once, where it is held
            var = shared[name]
            rows.append((name, _shape(var), str(jnp.dtype(var.dtype)), node.describe(name), 0))
        if not isinstance(node, Variable) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Parameter):
            kind = "yes" if node.trainable else "frozen"
            totals["trainable" if node.trainable else "frozen"] += _count(node)
        else:
            kind = "buffer"
            totals["buffer"] += _count(node)
        size += _bytes(node)
        rows.append((name, _shape(node), str(jnp.dtype(node.dtype)), kind, _count(node)))
    rows = _fold_rows(rows)
    header = ("name", "shape", "dtype", "trainable", "count")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    aligns = ["<", "<", "<", "<", ">"]

    def line(r):
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, aligns, widths)).rstrip()

    rule = "-" * len(line(header))
    total = totals["trainable"] + totals["frozen"]
    out = [line(header), rule, *(line(r) for r in rows), rule]
    footer = (
        f"parameters: {total:,} (trainable {totals['trainable']:,}, frozen {totals['frozen']:,})"
        f"   buffers: {totals['buffer']:,}   size: {_human(size)}"
    )
    out.append(footer)
    title = type(tree).__name__
    return Summary(f"{title}\n" + "\n".join(out), title, header, rows, footer)


class Summary(str):
    """`summary`'s table: the plain text itself, plus richer renderings where there are any.

    ``print(model.summary())`` prints the plain table. A notebook shows the last expression
    ``model.summary()`` as an HTML table (``_repr_html_``); ``rich.print(model.summary())``
    draws a `rich` table (``__rich__``, used only by rich, so rich is never imported by
    jparam). ``title``, ``header``, ``rows`` (tuples of strings, folded as in the text) and
    ``footer`` hold the same content for programs.
    """

    title: str  # type: ignore[assignment]  # the table's title, as documented; hides str.title
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    footer: str

    def __new__(
        cls,
        text: str,
        title: str = "",
        header: tuple = (),
        rows: Sequence[tuple[str, ...]] = (),
        footer: str = "",
    ) -> Summary:
        out = super().__new__(cls, text)
        out.title, out.header, out.rows, out.footer = title, tuple(header), tuple(rows), footer
        return out

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # IPython's plain view: the table, not a quoted string

    def _repr_html_(self) -> str:
        def cells(tag: str, row: tuple) -> str:
            right = len(row) - 1  # the count column is right-aligned
            return "".join(
                f'<{tag} style="text-align:{"right" if i == right else "left"}">'
                f"{html.escape(c)}</{tag}>"
                for i, c in enumerate(row)
            )

        body = "".join(f"<tr>{cells('td', r)}</tr>" for r in self.rows)
        return (
            f"<table><caption>{html.escape(self.title)}</caption>"
            f"<thead><tr>{cells('th', self.header)}</tr></thead><tbody>{body}</tbody>"
            f'<tfoot><tr><td colspan="{len(self.header)}">{html.escape(self.footer)}</td></tr>'
            "</tfoot></table>"
        )

    def __rich__(self) -> Any:
        from rich.console import Group  # only rich calls this, so rich is installed
        from rich.table import Table
        from rich.text import Text

        style = {"yes": "green", "frozen": "dim", "buffer": "cyan"}
        table = Table(title=self.title, title_justify="left")
        for i, name in enumerate(self.header):
            table.add_column(name, justify="right" if i == len(self.header) - 1 else "left")
        for row in self.rows:
            table.add_row(*row, style=style.get(row[3]))
        return Group(table, Text(self.footer))
