"""Loads a script of examples/ as a module, once, under the name ``examples.<name>``.

Dataclasses (every `jp.Module`) look their module up in ``sys.modules``, so the module is
registered before it runs; every test that loads the same example shares one module (and its
jitted functions).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> ModuleType:
    module_name = f"examples.{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]
