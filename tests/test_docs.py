"""The documentation site builds strictly, documents every public name, and its examples run.

The site (mkdocs.yml, docs/) is built once per run with ``mkdocs build --strict``: any warning,
from MkDocs (a broken link, a page left out of the nav) or from mkdocstrings (a docstring it
cannot parse), fails the build. The API reference is checked through the built ``objects.inv``,
the Sphinx-format inventory of every documented object that other sites link against.
"""

from __future__ import annotations

import ast
import importlib
import os
import pathlib
import re
import subprocess
import sys
import types
import zlib

import pytest
from markdown_blocks import check_fences, python_blocks, run_python_blocks

import jparam

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
EXAMPLE_PAGES = [page for page in PAGES if python_blocks(page)]


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[subprocess.CompletedProcess, pathlib.Path]:
    site = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return done, site


def test_site_builds_with_warnings_as_errors(build):
    done, _ = build
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"


def read_inventory(path: pathlib.Path) -> set[str]:
    """The object names in a Sphinx inventory (version 2: four text lines, then zlib)."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n")
    assert header == b"# Sphinx inventory version 2", header
    body = body.split(b"\n", 3)[3]  # project, version and the compression note
    lines = zlib.decompress(body).decode().splitlines()
    return {line.split(" ", 1)[0] for line in lines if line.strip()}


def reexported_submodules(package: types.ModuleType) -> list[str]:
    """Submodules a package's ``__init__`` re-exports by name: ``from . import x as x``."""
    if not hasattr(package, "__path__"):
        return []
    tree = ast.parse(pathlib.Path(package.__file__).read_text())
    return [
        alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None
        for alias in node.names
        if alias.asname == alias.name
    ]


def public_modules() -> list[types.ModuleType]:
    """jparam, the modules in its ``__all__``, and below each the submodules it re-exports."""
    found = [jparam]
    for module in found:
        names = [n for n in module.__all__ if isinstance(getattr(module, n), types.ModuleType)]
        for name in [*names, *reexported_submodules(module)]:
            sub = importlib.import_module(f"{module.__name__}.{name}")
            if sub not in found:
                found.append(sub)
    return found


def test_public_modules_are_found():
    names = {module.__name__ for module in public_modules()}
    assert {"jparam", "jparam.nn", "jparam.nn.functional", "jparam.optim"} <= names


def entry_names(module: types.ModuleType, name: str) -> list[str]:
    """Where a public name's entry may be: its public path, or where it is defined."""
    obj = getattr(module, name)
    defined = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
    return [f"{module.__name__}.{name}", defined]


def test_every_public_name_has_a_reference_entry(build):
    done, site = build
    if done.returncode != 0:
        pytest.skip("the site did not build (see test_site_builds_with_warnings_as_errors)")
    documented = read_inventory(site / "objects.inv")
    missing = [
        f"{module.__name__}.{name}"
        for module in public_modules()
        for name in module.__all__
        if not isinstance(getattr(module, name), types.ModuleType)
        and documented.isdisjoint(entry_names(module, name))
    ]
    assert not missing, (
        f"public names without an entry in the API reference: {missing}; give each public "
        "module a page under docs/reference/ (`::: jparam.x`, listed in mkdocs.yml's nav)"
    )


def test_coming_from_pytorch_has_a_row_for_every_module_method():
    torch = pytest.importorskip(
        "torch", reason="torch (the `torch` extra) lists the torch.nn.Module methods to cover"
    )
    page = (DOCS / "coming-from-pytorch.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \|", page, flags=re.M)
    # torch's own names only: other libraries (transformers) add methods to torch.nn.Module
    methods = {
        name
        for name in dir(torch.nn.Module)
        if not name.startswith("_")
        and getattr(getattr(torch.nn.Module, name), "__module__", "torch").startswith("torch")
    }
    missing = sorted(methods - set(rows))
    assert not missing, f"docs/coming-from-pytorch.md has no table row for {missing}"
    unknown = sorted(set(rows) - methods)
    assert not unknown, f"rows for names torch.nn.Module does not have: {unknown}"
    assert len(rows) == len(set(rows)), "a torch.nn.Module method has two rows"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_page_fences_are_tagged(page):
    check_fences(page)


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_page_examples_run(page, monkeypatch, tmp_path):
    if re.search(r"^import torch$", page.read_text(), flags=re.M):
        pytest.importorskip("torch", reason=f"{page.name} uses torch (the `torch` extra)")
    monkeypatch.chdir(tmp_path)  # anything a page writes lands in a temporary directory
    run_python_blocks(page)


def test_howto_pages_have_examples():
    assert {page.name for page in EXAMPLE_PAGES} >= {
        "freeze-and-fine-tune.md",
        "load-pytorch-checkpoint.md",
        "checkpoint-and-resume.md",
    }


def test_blocks_share_a_namespace_and_a_failure_names_its_markdown_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n```python\nx = 1\n```\n\nText.\n\n```python\nassert x == 2\n```\n")
    with pytest.raises(AssertionError) as failure:
        run_python_blocks(page)
    entry = failure.traceback[-1]
    assert (str(entry.path), entry.lineno + 1) == (str(page), 10)  # lineno counts from 0


def test_an_untagged_block_is_refused(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 1\n```\n\n```\nnever runs\n```\n")
    with pytest.raises(AssertionError, match=r"\(5, ''\)"):
        check_fences(page)
