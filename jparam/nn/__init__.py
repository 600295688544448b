"""`jparam.nn`: PyTorch's layers as immutable modules, with PyTorch's names, layouts and init.

Conventions, shared by every layer:

- Constructors take PyTorch's arguments. Layers with random initialisation (Linear, Bilinear,
  convolutions, Embedding, MultiheadAttention, MLP) also need a keyword-only PRNG ``key``; all
  layers with parameters take ``dtype=jnp.float32``. Norms start at ones/zeros and take no key.
- Parameter names, shapes and layouts are PyTorch's (``Linear.weight`` is ``(out, in)``), so
  ``model.load_state_dict(torch_model.state_dict())`` works and outputs match PyTorch's.
- Parameters name their dimensions for sharding in ``axes`` metadata (``Linear.weight``:
  ``("out", "in")``, ``Embedding.weight``: ``("vocab", "embed")``); see `jparam.sharding`.
- Inputs are batched and batch-first; convolutions and pooling are channels-first (NCHW).
- Hyperparameters are static fields; ``model.train()``/``model.eval()`` set ``training``.
- Randomness is an argument: ``Dropout``/``Sequential``/``MLP`` take ``key=`` in the call.
- State updates (BatchNorm running statistics) come back through `stateful_call`::

      y, model = nn.stateful_call(model, x)
"""

from .activation import GELU, Identity, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .attention import MultiheadAttention
from .batchnorm import BatchNorm1d, BatchNorm2d
from .containers import Sequential, takes_key
from .conv import Conv1d, Conv2d, ConvTranspose2d
from .dropout import Dropout, dropout
from .embedding import Embedding
from .linear import Bilinear, Linear
from .mlp import MLP
from .normalization import GroupNorm, LayerNorm, RMSNorm
from .pooling import AdaptiveAvgPool2d, AvgPool2d, Flatten, MaxPool2d
from .stacked import Stacked
from .stateful import stateful_call, update_state

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Bilinear",
    "Conv1d",
    "Conv2d",
    "ConvTranspose2d",
    "Dropout",
    "Embedding",
    "Flatten",
    "GELU",
    "GroupNorm",
    "Identity",
    "LayerNorm",
    "Linear",
    "MLP",
    "MaxPool2d",
    "MultiheadAttention",
    "RMSNorm",
    "ReLU",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Stacked",
    "Tanh",
    "dropout",
    "stateful_call",
    "takes_key",
    "update_state",
]
