"""The import contracts in pyproject.toml hold, and they would catch an upward import.

The core (variables, placeholders, walks, module machinery) imports no feature, and no two of
jparam's files import each other in a circle. `lint-imports` (import-linter) checks both.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
LINT_IMPORTS = pathlib.Path(sys.executable).parent / "lint-imports"


def lint_imports(package_parent: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_import_contracts_hold():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_every_file_is_either_core_or_feature():
    forbidden, layers, _ = CONFIG["contracts"]
    named = {*forbidden["source_modules"], *forbidden["forbidden_modules"]}
    files = {f"jparam.{p.stem}" for p in (ROOT / "jparam").glob("*.py") if p.stem != "__init__"} | {
        f"jparam.{p.name}" for p in (ROOT / "jparam").iterdir() if (p / "__init__.py").exists()
    }
    assert files == named, f"unclassified: {sorted(files - named)}; gone: {sorted(named - files)}"
    core = {m.strip() for layer in layers["layers"] for m in layer.split("|")}
    assert core == set(forbidden["source_modules"])


def _copy_package(tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copytree(
        ROOT / "jparam", tmp_path / "jparam", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_an_upward_import_from_the_core_breaks_the_contract(tmp_path):
    root = _copy_package(tmp_path)
    paths = root / "jparam" / "paths.py"
    paths.write_text(paths.read_text() + "\nfrom .state import state_dict  # an upward import\n")
    out = lint_imports(root)
    assert out.returncode != 0
    assert "The core imports no feature BROKEN" in out.stdout
    assert "jparam.paths -> jparam.state" in out.stdout


def test_a_cycle_between_features_breaks_the_contract(tmp_path):
    root = _copy_package(tmp_path)
    # surgery imports filters; filters importing surgery back closes a cycle
    assert "from .filters import" in (root / "jparam" / "surgery.py").read_text()
    filters = root / "jparam" / "filters.py"
    filters.write_text(
        filters.read_text() + "\n\ndef _late():\n    from . import surgery  # noqa\n"
    )
    out = lint_imports(root)
    assert out.returncode != 0
    assert "No import cycles between jparam's files BROKEN" in out.stdout
