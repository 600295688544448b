"""Every example in jparam's docstrings runs.

The examples are reStructuredText literal blocks: the indented text after a paragraph that ends in
``::``. The collector reads every docstring (module, class, function, method) straight from the
source files with `ast`, so an example in a private helper or a nested class counts too. Each
example runs on its own, with `exec`, in a fresh namespace holding only `PRELUDE`: an example
defines every model and input it uses. A failure points at the example's own lines in the source
file.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib
import re
import tempfile
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# What every example may use without importing it; anything else it imports or defines itself.
PRELUDE = """\
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jparam as jp
from jparam import nn
"""

# The number of examples in jparam's docstrings when this test was written: a collector that
# finds fewer is broken (raise the number when examples are added; the module guides moved to
# docs/guides/ and docs/howto/, whose examples tests/test_docs.py runs).
MIN_EXAMPLES = 50

_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass(frozen=True)
class Example:
    path: str  # relative to the repository, e.g. "jparam/module.py"
    owner: str  # qualified name of what the docstring documents, "<module>" for the module
    number: int  # 1, 2, ... within that docstring
    lineno: int  # line of the example's first line in the source file
    code: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.owner}#{self.number}"


def _docstring_node(node: ast.AST) -> ast.Constant | None:
    body = getattr(node, "body", None)
    if body and isinstance(body[0], ast.Expr):
        value = body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            return value
    return None


def _documented(tree: ast.Module):
    """(qualified name, docstring node) for the module and every class and function in it."""

    def visit(node: ast.AST, prefix: str):
        if isinstance(node, _DOCUMENTED):
            doc = _docstring_node(node)
            if doc is not None:
                yield prefix or "<module>", doc
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _DOCUMENTED):
                yield from visit(child, f"{prefix}.{child.name}" if prefix else child.name)
            else:  # a def inside `if`, `try`, ...: same prefix
                yield from visit_body(child, prefix)

    def visit_body(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _DOCUMENTED):
                yield from visit(child, f"{prefix}.{child.name}" if prefix else child.name)
            else:
                yield from visit_body(child, prefix)

    yield from visit(tree, "")


_BULLET = re.compile(r"\s*(?:[-*+]|\d+[.)]|#\.)\s+")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def literal_blocks(docstring: str) -> list[tuple[int, str]]:
    """(line offset, dedented code) of each ``::`` literal block of a cleaned docstring."""
    lines = docstring.expandtabs().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if not lines[i].rstrip().endswith("::"):
            i += 1
            continue
        # The paragraph's indent is that of its first line, not of a continuation line.
        start = i
        while start > 0 and lines[start - 1].strip():
            start -= 1
        # In a list item the paragraph's text starts after the bullet.
        bullet = _BULLET.match(lines[start])
        indent = bullet.end() if bullet else _indent(lines[start])
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        end = j
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
            end += 1
        while end > j and not lines[end - 1].strip():
            end -= 1
        if end > j:
            blocks.append((j, textwrap.dedent("\n".join(lines[j:end]))))
        i = max(end, i + 1)
    return blocks


def collect(source: str, path: str) -> list[Example]:
    """Every literal block in the docstrings of one source file."""
    examples = []
    for owner, node in _documented(ast.parse(source)):
        # `inspect.cleandoc` keeps the lines but drops the leading blank ones.
        raw = node.value.expandtabs().splitlines()
        skipped = next((n for n, line in enumerate(raw) if line.strip()), 0)
        docstring = inspect.cleandoc(node.value)
        for number, (offset, code) in enumerate(literal_blocks(docstring), 1):
            lineno = node.lineno + skipped + offset
            examples.append(Example(path, owner, number, lineno, code))
    return examples


def collect_all() -> list[Example]:
    examples = []
    for file in sorted((ROOT / "jparam").rglob("*.py")):
        examples += collect(file.read_text(), file.relative_to(ROOT).as_posix())
    return examples


def run(example: Example, filename: str | None = None) -> dict:
    """Run one example in a fresh namespace; return the namespace."""
    namespace: dict = {"__name__": "docstring_example"}
    exec(compile(PRELUDE, "<prelude>", "exec"), namespace)
    # Pad with blank lines so that a traceback names the example's line in the source file.
    code = "\n" * (example.lineno - 1) + example.code
    exec(compile(code, filename or str(ROOT / example.path), "exec"), namespace)
    return namespace


EXAMPLES = collect_all()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_docstring_example(example: Example, tmp_path, monkeypatch):
    # Files an example writes (a relative path, `tempfile.mkdtemp()`) land in tmp_path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run(example)


SYNTHETIC = '''
"""A module.

Runs::

    x = 1 + 1
    assert x == 2
"""


class A:
    def f(self):
        """A method whose second example raises.

        First::

            y = jnp.ones(3)

        Not an example: a plain paragraph.

        Second, which fails ::

            raise ValueError("broken example")

        Trailing text.
        """


if True:

    def g():
        """A function under ``if``, with an example in a list item:

        - the item's text ends in a colon::

              z = 3

          and the item goes on after the example.
        """
'''


def test_examples_are_found():
    assert len(EXAMPLES) >= MIN_EXAMPLES, [e.id for e in EXAMPLES]
    ids = [e.id for e in EXAMPLES]
    assert len(set(ids)) == len(ids)
    assert "jparam/nn/stacked.py:Stacked#1" in ids
    assert "jparam/module.py:<module>#1" in ids
    # Only `::` blocks are collected: a doctest or a code-block directive would go unrun.
    for file in (ROOT / "jparam").rglob("*.py"):
        for owner, node in _documented(ast.parse(file.read_text())):
            assert ">>> " not in node.value, f"{file}:{owner} has a doctest; use a `::` block"
            assert ".. code-block" not in node.value, f"{file}:{owner}: use a `::` block"


def test_collector_finds_blocks_and_a_broken_one_fails(tmp_path, monkeypatch):
    examples = collect(SYNTHETIC, "pkg/mod.py")
    assert [e.id for e in examples] == [
        "pkg/mod.py:<module>#1",
        "pkg/mod.py:A.f#1",
        "pkg/mod.py:A.f#2",
        "pkg/mod.py:g#1",
    ]
    assert examples[0].code == "x = 1 + 1\nassert x == 2"
    assert examples[2].code == 'raise ValueError("broken example")'
    assert examples[3].code == "z = 3"  # the list item's text after it is no part of it
    # The line numbers are those of the source: a failure points at the example.
    source_lines = SYNTHETIC.splitlines()
    assert source_lines[examples[2].lineno - 1].strip() == examples[2].code
    assert run(examples[0], "pkg/mod.py")["x"] == 2
    assert run(examples[1], "pkg/mod.py")["y"].shape == (3,)  # the prelude is there
    with pytest.raises(ValueError, match="broken example"):
        run(examples[2], "pkg/mod.py")
    # ... and so does the test that runs it.
    broken = dataclasses.replace(examples[2], path="tests/test_docstring_examples.py")
    with pytest.raises(ValueError, match="broken example"):
        test_docstring_example(broken, tmp_path, monkeypatch)
