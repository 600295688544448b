"""jparam: PyTorch's Parameter and Module API as immutable JAX pytrees.

Declare trainable arrays as `Parameter` fields of a `Module`, walk them by name, freeze them,
save and load them by name; `jax.jit`, `jax.grad` and optax take the model as it is. See
`jparam.module` for a first example and README.md for the tour.
"""

from . import amp, init, mapping, nn, optim, parametrizations, projections, sharding
from .checkpoint import latest_step, load_checkpoint, save_checkpoint
from .display import summary
from .filters import Filter, as_filter, frozen, is_buffer, is_parameter, name, trainable
from .logger import TensorBoardLogger
from .mapping import Mapping
from .module import Module, PlainArrayWarning, field
from .monitoring import NonFinite, check_finite, first_nonfinite, global_norm, stats
from .optim import Optimizer
from .parameter import ArrayNode, Buffer, Parameter, to_array
from .parametrizations import parametrize, remove_parametrizations
from .partition import merge, split
from .paths import (
    buffers,
    map_variables,
    named_buffers,
    named_modules,
    named_parameters,
    parameters,
    path_name,
)
from .precision import astype, to
from .projections import project
from .retrace import RetraceError, RetraceWarning, Traces, no_retrace, watch_retraces
from .serialization import (
    CheckpointError,
    SaveInfo,
    from_torch_state_dict,
    load,
    load_file,
    save,
)
from .sharded_checkpoint import load_sharded, save_sharded
from .state import (
    IncompatibleKeys,
    StateDictError,
    incompatible_keys,
    load_state_dict,
    state_dict,
)
from .surgery import at
from .training import grad, value_and_grad
from .tying import TiedTo, tie, ties, untie

__version__ = "0.1.0"

__all__ = [
    "ArrayNode",
    "Buffer",
    "CheckpointError",
    "Filter",
    "IncompatibleKeys",
    "Mapping",
    "Module",
    "NonFinite",
    "Optimizer",
    "Parameter",
    "PlainArrayWarning",
    "RetraceError",
    "RetraceWarning",
    "SaveInfo",
    "StateDictError",
    "TensorBoardLogger",
    "TiedTo",
    "Traces",
    "amp",
    "as_filter",
    "astype",
    "at",
    "buffers",
    "check_finite",
    "field",
    "first_nonfinite",
    "from_torch_state_dict",
    "frozen",
    "global_norm",
    "grad",
    "incompatible_keys",
    "init",
    "is_buffer",
    "is_parameter",
    "latest_step",
    "load",
    "load_checkpoint",
    "load_file",
    "load_sharded",
    "load_state_dict",
    "map_variables",
    "mapping",
    "merge",
    "name",
    "named_buffers",
    "named_modules",
    "named_parameters",
    "nn",
    "no_retrace",
    "optim",
    "parameters",
    "parametrizations",
    "parametrize",
    "path_name",
    "project",
    "projections",
    "remove_parametrizations",
    "save",
    "save_checkpoint",
    "save_sharded",
    "sharding",
    "split",
    "state_dict",
    "stats",
    "summary",
    "tie",
    "ties",
    "to",
    "to_array",
    "trainable",
    "untie",
    "value_and_grad",
    "watch_retraces",
]
