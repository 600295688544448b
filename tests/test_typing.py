"""jparam type-checks cleanly with mypy (configured in pyproject.toml), and ships ``py.typed``.

The gate cannot pass vacuously: the same mypy, on a small user file, accepts correct calls into
jparam and reports a wrongly typed one.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("mypy")

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """One mypy cache for this file's runs: the second run reuses jparam's analysis."""
    return tmp_path_factory.mktemp("mypy_cache")


def mypy(*args: str, cache_dir: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_py_typed_marker_ships() -> None:
    assert (ROOT / "jparam" / "py.typed").is_file()
    assert 'jparam = ["py.typed"]' in (ROOT / "pyproject.toml").read_text()


def test_mypy_passes_on_jparam(cache_dir: pathlib.Path) -> None:
    result = mypy("jparam", cache_dir=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


USER_CODE = """\
from collections import OrderedDict

import jax
import jax.numpy as jnp

import jparam as jp
from jparam import nn


class Block(jp.Module):
    fc: nn.Linear
    scale: jp.Parameter

    def __init__(self, key: jax.Array) -> None:
        self.fc = nn.Linear(4, 4, key=key)
        self.scale = jp.Parameter(jnp.ones(()))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(x) * self.scale.value


key = jax.random.key(0)
block = Block(key).eval()
seq = nn.Sequential(OrderedDict(block=block, act=nn.ReLU()))
conv = nn.Conv2d(3, 8, 3, key=key)  # the parent's __init__, inherited
y = seq[0](jnp.ones((2, 4)))
p = jp.Parameter(jnp.ones(3)).replace(trainable=False)
names = [name for name, _ in block.named_parameters()]
"""


def test_mypy_accepts_correct_use_and_reports_a_type_error(
    cache_dir: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    good = tmp_path / "good.py"
    good.write_text(USER_CODE)
    # Only the user file's errors count here (the first test checks jparam's own).
    result = mypy("--follow-imports=silent", str(good), cache_dir=cache_dir)
    assert result.returncode == 0, result.stdout + result.stderr

    bad = tmp_path / "bad.py"
    bad.write_text(
        USER_CODE
        + textwrap.dedent("""\
            q = jp.Parameter(jnp.ones(3)).replace(trainable="yes")
            fc = nn.Linear(4, "8", key=key)
            """)
    )
    result = mypy("--follow-imports=silent", str(bad), cache_dir=cache_dir)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert f"{bad.name}:{USER_CODE.count(chr(10)) + 1}: error" in out, out
    assert f"{bad.name}:{USER_CODE.count(chr(10)) + 2}: error" in out, out
    assert '"trainable"' in out and "[arg-type]" in out, out
    assert "Found 2 errors in 1 file" in out, out
