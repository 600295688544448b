"""The conformance zoo needs ``transformers`` and ``timm`` (the ``[conformance]`` extra).

``timm`` depends on ``torchvision``, and the ``torchvision`` wheel that the package registry
serves next to the CPU build of torch pinned here is built for CUDA: its compiled operators fail
to load, which torchvision tolerates, except that two of its fake-tensor registrations (``nms``
and ``qnms``) then fail at import. Declaring those two operator schemas first lets torchvision's
pure-Python parts (which timm imports) load; its compiled operators stay unavailable and say so
if called. Nothing is changed where torchvision loads by itself.
"""

from __future__ import annotations

import importlib.util

from example_modules import load_example

if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = ["test_*.py"]  # the zoo compares with torch: nothing to run
elif importlib.util.find_spec("transformers") is not None:
    # The fix lives with the LLaMA example, which needs it to run on its own too.
    load_example("port_llama").import_transformers()
