"""The CI script runs the README's test command word for word; slow tests are opt-in."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    return re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1).splitlines()[1]


def test_ci_runs_the_readme_test_command():
    test_command = readme_test_command()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
    # the conformance zoo runs in CI: its extra is installed, so its tests are never skipped
    assert ",conformance]" in test_command


def test_ci_builds_the_documentation_site():
    """The test extra holds the site's tools, so tests/test_docs.py builds the site in CI."""
    assert '".[test,' in readme_test_command()
    pyproject = (ROOT / "pyproject.toml").read_text()
    test_extra = re.search(r"^test = \[\n(.*?)^\]", pyproject, flags=re.S | re.M).group(1)
    for tool in ("mkdocs-material", "mkdocstrings-python"):
        assert f'"{tool}>=' in test_extra, f"the test extra does not install {tool}"


SLOW_AND_FAST = """
import pytest
from hypothesis import settings


def test_fast():
    print("max_examples", settings.default.max_examples)


@pytest.mark.slow
def test_slow():
    pass
"""


def run_pytest(tmp_path, *args):
    (tmp_path / "test_marked.py").write_text(SLOW_AND_FAST)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir"]
    cmd += [str(ROOT), "-p", "tests.conftest", "-p", "no:cacheprovider", "-s", "-q", *args]
    out = subprocess.run(
        [*cmd, str(tmp_path / "test_marked.py")], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_default_run_leaves_out_slow_tests_and_m_empty_runs_them_thoroughly(tmp_path):
    default = run_pytest(tmp_path)
    assert "1 passed, 1 deselected" in default and "max_examples 25" in default
    everything = run_pytest(tmp_path, "-m", "")
    assert "2 passed" in everything and "max_examples 400" in everything
    # and the README says how to run everything
    assert '.venv/bin/python -m pytest -m ""' in (ROOT / "README.md").read_text()
