"""jparam: PyTorch's Parameter and Module API as immutable JAX pytrees.

Declare trainable arrays as `Parameter` fields of a `Module`, walk them by name, freeze them,
save and load them by name; `jax.jit`, `jax.grad` and optax take the model as it is. See
`jparam.module` for a first example and README.md for the tour.
"""

from . import amp, constraints, init, mapping, nn, optim, sharding
from .checkpoint import latest_step, load_checkpoint, save_checkpoint
from .constraints import parametrize, project
from .filters import Filter, as_filter, frozen, is_buffer, is_parameter, name, trainable
from .logger import TensorBoardLogger
from .mapping import Mapping
from .module import Module, PlainArrayWarning, field
from .monitoring import NonFinite, check_finite, first_nonfinite, global_norm, stats
from .optim import Optimizer
from .parameter import ArrayNode, Buffer, Parameter, to_array
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
from .retrace import RetraceError, RetraceWarning, Traces, no_retrace, watch_retraces
from .serialization import (
    CheckpointError,
    SaveInfo,
    from_torch_state_dict,
    load,
    load_file,
    save,
)
from .sharded import load_sharded, save_sharded
from .sharding import shard, shardings
from .state import IncompatibleKeys, StateDictError, load_state_dict, state_dict
from .summary import summary
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
    "constraints",
    "field",
    "first_nonfinite",
    "from_torch_state_dict",
    "frozen",
    "global_norm",
    "grad",
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
    "no_retrace",
    "nn",
    "optim",
    "parameters",
    "parametrize",
    "path_name",
    "project",
    "save",
    "save_checkpoint",
    "save_sharded",
    "shard",
    "sharding",
    "shardings",
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
