"""Shared test settings: CPU only, deterministic hypothesis profiles, and the ``slow`` marker.

The default run (the README's test command) deselects tests marked ``slow`` and uses the "ci"
hypothesis profile. A run that selects the slow tests (``pytest -m ""``) loads the "thorough"
profile instead, unless ``--hypothesis-profile`` names one. Tests that set their own
``max_examples`` keep it either way.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


def runs_slow_tests(config: pytest.Config) -> bool:
    """Whether this run selects the tests marked ``slow`` (``-m ""`` or ``-m slow``)."""
    markexpr = config.getoption("markexpr", "") or ""
    return "not slow" not in markexpr.replace("  ", " ")


def pytest_configure(config: pytest.Config) -> None:
    if runs_slow_tests(config) and not config.getoption("--hypothesis-profile", None):
        settings.load_profile("thorough")
