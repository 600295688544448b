"""The code blocks of a Markdown file (README.md, the pages under docs/), and running them.

Blocks fenced ```python run in order, in one namespace, as a reader would paste them; a failure
points at the block's own lines in the Markdown file. Other fences must say what they hold:
```bash for shell commands, ```text for printed output.
"""

from __future__ import annotations

import pathlib
import re

_PYTHON = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)
SKIPPED_TAGS = ("bash", "text")


def python_blocks(path: pathlib.Path) -> list[tuple[int, str]]:
    """Each ```python block's first line number (1-based) and its code."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _PYTHON.finditer(text)]


def fence_tags(path: pathlib.Path) -> list[tuple[int, str]]:
    """The line number and info string of every opening ``` fence."""
    openings, inside = [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if not inside:
                openings.append((number, line.strip()[3:].strip()))
            inside = not inside
    assert not inside, f"{path.name} ends inside a ``` block"
    return openings


def check_fences(path: pathlib.Path) -> None:
    """Every fence is python (it runs), bash or text (skipped), and every python one is found."""
    openings = fence_tags(path)
    odd = [(number, info) for number, info in openings if info not in ("python", *SKIPPED_TAGS)]
    assert not odd, (
        f"{path.name} blocks (line, tag) that would not run: {odd}; tag Python code "
        "```python (it runs, in order), shell commands ```bash and printed output ```text"
    )
    assert len(python_blocks(path)) == sum(info == "python" for _, info in openings)


def run_python_blocks(path: pathlib.Path, namespace: dict | None = None) -> dict:
    """Runs the ```python blocks in order in one namespace (a fresh one unless given)."""
    namespace = {"__name__": path.stem} if namespace is None else namespace
    for line, code in python_blocks(path):
        # Padding with blank lines makes tracebacks name the line in the Markdown file; the
        # blocks run as a pasted script would, without this file's `from __future__` imports.
        padded = "\n" * (line - 1) + code
        exec(compile(padded, str(path), "exec", dont_inherit=True), namespace)
    return namespace
