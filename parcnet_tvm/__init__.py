"""parcnet-tvm: ParCNetV2 from PyTorch through Apache TVM to tuned libraries for ARM and CUDA."""

from .checkpoint import load_checkpoint
from .errors import ParcnetError
from .model import VARIANTS, create_model, parse_input_size

__all__ = ["ParcnetError", "VARIANTS", "create_model", "load_checkpoint", "parse_input_size"]
