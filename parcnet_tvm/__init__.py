"""parcnet-tvm: ParCNetV2 from PyTorch through Apache TVM to tuned libraries for ARM and CUDA.

The API (README, "Python API"): compile() builds and verifies a library, load() returns a
predictor over one, tune() tunes with MetaSchedule and builds; create_model/load_checkpoint
give the PyTorch model.
"""

from .api import Compiled, Predictor, compile, load, tune
from .checkpoint import load_checkpoint
from .errors import ParcnetError
from .model import VARIANTS, create_model, parse_input_size

__all__ = ["VARIANTS", "Compiled", "ParcnetError", "Predictor", "compile", "create_model", "load",
           "load_checkpoint", "parse_input_size", "tune"]
