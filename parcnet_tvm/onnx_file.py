"""A user's ONNX export of ParCNetV2 (`--onnx FILE`): the model a library is built from and
checked against, in place of our PyTorch model.

Exports made like the official repo's (TorchScript exporter, dynamic batch axis) compute their
`chunk(2)` split points at run time (Shape -> Gather -> Div -> Slice), and every tensor after
them loses its static shape, which TVM's ONNX importer cannot handle. So the batch is fixed to
the one asked for, and onnxruntime's basic graph optimisation (constant folding; standard ONNX
ops only) folds the shape arithmetic into constants before TVM sees the graph. onnxruntime is
also what the library is verified against, so it is no extra dependency.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ParcnetError


@dataclass
class OnnxFileModel:
    path: Path
    proto: object          # onnx.ModelProto with the batch fixed and shapes folded
    input_name: str
    input_shape: tuple     # (N, C, H, W)

    @property
    def name(self) -> str:
        return self.path.stem

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The reference output: onnxruntime on the user's file as exported (fp32, CPU)."""
        import onnxruntime

        if not hasattr(self, "_session"):
            self._session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        return self._session.run(None, {self.input_name: x})[0]


def _image_input(graph):
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ParcnetError(f"the ONNX graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                           "ParCNetV2 takes one image tensor: export the model with a single input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ParcnetError(f"ONNX input {inputs[0].name!r} has rank {len(dims)}; expected an NCHW image (rank 4)")
    return inputs[0], dims


def load_onnx_file(path, batch: int = 1) -> OnnxFileModel:
    """Read `path`, fix its batch axis to `batch` and fold its run-time shape arithmetic."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ParcnetError(f"ONNX file {path} does not exist")
    try:
        proto = onnx.load(str(path))
    except Exception as error:  # protobuf raises its own DecodeError types
        raise ParcnetError(f"{path} cannot be read as an ONNX model ({type(error).__name__}: {error}); "
                           "give a file written by torch.onnx.export") from None
    image, dims = _image_input(proto.graph)
    if dims[0].HasField("dim_value") and dims[0].dim_value not in (0, batch):
        raise ParcnetError(f"{path} was exported with a fixed batch of {dims[0].dim_value}: build it with "
                           f"--batch {dims[0].dim_value}, or export with a dynamic batch axis")
    height, width = (d.dim_value if d.HasField("dim_value") else 0 for d in dims[2:])
    if not height or not width:
        raise ParcnetError(f"{path} has no fixed input height and width; export it at the size to build for "
                           "(dynamic batch is fine)")
    dims[0].Clear()
    dims[0].dim_value = batch
    for output in proto.graph.output:  # their batch is fixed now too; let inference redo them
        output.type.tensor_type.ClearField("shape")
    del proto.graph.value_info[:]
    return OnnxFileModel(path, fold_shape_arithmetic(proto), image.name,
                         (batch, int(dims[1].dim_value or 3), height, width))


# onnxruntime's transpose optimiser pushes the exporter's permutes through the norms (making them
# reduce over NCHW's channel axis); our graph passes do the layout themselves, so keep the graph's.
KEEP_LAYOUT = ["TransposeOptimizer"]


def fold_shape_arithmetic(proto):
    """onnxruntime's basic optimisation level (constant folding, standard ONNX ops only) on a
    graph whose input shape is fixed: Shape/Gather/Slice chains become constants."""
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        try:
            onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                         disabled_optimizers=KEEP_LAYOUT)
        except Exception as error:  # onnxruntime's own exception types
            raise ParcnetError(f"onnxruntime cannot load this ONNX model: {error}") from None
        return onnx.load(options.optimized_model_filepath)
