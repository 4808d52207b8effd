"""parcnet-tvm: ParCNetV2 from PyTorch through Apache TVM to tuned libraries for ARM and CUDA."""

import os

from .targets import host_cores

# TVM's runtime thread pool sizes itself from the CPU topology and picked 1 thread on this
# project's 2-vCPU machines (half the speed); use every core unless the user set it.
os.environ.setdefault("TVM_NUM_THREADS", str(host_cores()))

from .checkpoint import load_checkpoint
from .errors import ParcnetError
from .model import VARIANTS, create_model, parse_input_size

__all__ = ["VARIANTS", "ParcnetError", "create_model", "load_checkpoint", "parse_input_size"]
