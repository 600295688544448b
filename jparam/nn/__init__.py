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
  Attention, transformers and recurrent layers default to PyTorch's ``batch_first=False``.
- Hyperparameters are static fields; ``model.train()``/``model.eval()`` set ``training``.
- Randomness is an argument: ``Dropout``/``Sequential``/``MLP`` take ``key=`` in the call.
- State updates (BatchNorm running statistics) come back through `stateful_call`::

      model = nn.Sequential(nn.Linear(4, 2, key=jax.random.key(0)), nn.BatchNorm1d(2))
      y, model = nn.stateful_call(model, jnp.ones((8, 4)))
"""

from ..stateful import stateful_call, update_state
from . import functional as functional
from . import utils as utils
from .activation import (
    CELU,
    ELU,
    GELU,
    GLU,
    SELU,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    Identity,
    LeakyReLU,
    LogSoftmax,
    Mish,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Softmin,
    Softplus,
    Tanh,
    Threshold,
)
from .attention import MultiheadAttention
from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
)
from .containers import (
    ModuleDict,
    ModuleList,
    ParameterDict,
    ParameterList,
    Sequential,
    takes_key,
)
from .conv import Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .dropout_layer import Dropout, dropout
from .embedding import Embedding, EmbeddingBag
from .linear import Bilinear, Linear
from .mlp import MLP
from .normalization import GroupNorm, LayerNorm, LocalResponseNorm, RMSNorm
from .pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    Flatten,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)
from .recurrent import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .resample import PixelShuffle, PixelUnshuffle, Upsample, interpolate
from .shape import Unflatten
from .stacked import Stacked
from .transformer import (
    Transformer,
    TransformerDecoder,
    TransformerDecoderLayer,
    TransformerEncoder,
    TransformerEncoderLayer,
)

__all__ = [
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Bilinear",
    "CELU",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Dropout",
    "ELU",
    "Embedding",
    "EmbeddingBag",
    "Flatten",
    "GELU",
    "GLU",
    "GRU",
    "GRUCell",
    "GroupNorm",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "Identity",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "LSTM",
    "LSTMCell",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LocalResponseNorm",
    "LogSoftmax",
    "MLP",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "Mish",
    "ModuleDict",
    "ModuleList",
    "MultiheadAttention",
    "PixelShuffle",
    "PixelUnshuffle",
    "ParameterDict",
    "ParameterList",
    "PReLU",
    "RNN",
    "RNNCell",
    "RMSNorm",
    "ReLU",
    "ReLU6",
    "SELU",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softmin",
    "Softplus",
    "Stacked",
    "Tanh",
    "Threshold",
    "Transformer",
    "TransformerDecoder",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "Unflatten",
    "Upsample",
    "dropout",
    "interpolate",
    "stateful_call",
    "takes_key",
    "update_state",
]
