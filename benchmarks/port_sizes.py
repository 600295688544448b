"""What a port costs to write: lines of model code and of the mapping table, per zoo model.

    python -m benchmarks.port_sizes

Counts the ports of the conformance zoo (``tests/conformance/port_*.py`` and the LLaMA port in
``examples/port_llama.py``). A line counts when it is code: not blank, not a comment, not part
of a docstring. "Model code" is every top-level class and function of the port except the
example's driver (loading, decoding, the command line); "mapping" is the ``MAPPING = ...``
assignment (``MAPPING = None``, names that already agree, counts 0).
"""

from __future__ import annotations

import argparse
import ast
import io
import pathlib
import tokenize

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The example's functions that drive the port rather than define it.
DRIVER = {"generate", "import_transformers", "init_cache", "main", "parse_args", "port"}


def code_lines(source: str) -> set[int]:
    """The line numbers that hold code: tokens other than comments and docstrings."""
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.update(range(value.lineno, value.end_lineno + 1))
    lines = set()
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip and tok.type != tokenize.ENDMARKER:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines - docstrings


def sizes(source: str) -> tuple[int, int]:
    """``(model code lines, mapping lines)`` of one port's source."""
    code = code_lines(source)
    model, mapping = set(), set()
    for node in ast.parse(source).body:
        span = set(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name not in DRIVER:
            model |= span
        elif _assigns_mapping(node):
            mapping |= span
    return len(model & code), len(mapping & code)


def _assigns_mapping(node: ast.stmt) -> bool:
    """``MAPPING = <a table>`` (plain or annotated), but not ``MAPPING = None``."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign):
        targets = [node.target]
    else:
        return False
    named = any(isinstance(t, ast.Name) and t.id == "MAPPING" for t in targets)
    none = isinstance(node.value, ast.Constant) and node.value.value is None
    return named and not none


def ports() -> list[tuple[str, pathlib.Path]]:
    found = [("llama", ROOT / "examples" / "port_llama.py")]
    for path in sorted((ROOT / "tests" / "conformance").glob("port_*.py")):
        found.append((path.stem.removeprefix("port_"), path))
    return found


def main(argv: list[str] | None = None) -> list[tuple[str, str, int, int]]:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    rows = []
    for name, path in ports():
        model, mapping = sizes(path.read_text())
        rows.append((name, str(path.relative_to(ROOT)), model, mapping))
    print("| model | port | model code (lines) | mapping (lines) |")
    print("|---|---|---:|---:|")
    for name, where, model, mapping in rows:
        print(f"| {name} | `{where}` | {model} | {mapping} |")
    return rows


if __name__ == "__main__":
    main()
