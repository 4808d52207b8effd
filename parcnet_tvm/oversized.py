"""The oversized depth-wise convolution as our own TE op (paper Sec. 3.1).

Per channel c, the (2H-1)x1 convolution with padding H-1 over an H-high map is

    y[i, j] = sum_{r < H} kh[c, r - i + H - 1] * x[r, j]            (the H pass)

and the 1x(2W-1) convolution with padding W-1 is

    z[i, j] = sum_{r < W} y[i, r] * kw[c, r - j + W - 1]            (the W pass)

Any odd kernel length K with padding K//2 is the same op once its taps are placed in the
2H-1 window that can meet the map (`kernel_over_map`). Summing only over real rows / columns
makes the zero padding implicit: no multiply-adds on
padded zeros (a padded direct conv does about twice the work). Two algorithms:

- direct: the taps are read from the kernel vector by index. The W kernel is stored
  reversed so that its index grows with j and the inner loop vectorises over columns.
- toeplitz: the same sums as batched GEMMs with per-channel matrices Th[c][i, r] (HxH) and
  Tw^T[c][r, j] (WxW), built from the constant weights at compile time.

Both are one GEMM-shaped loop nest (n, c, i, j, r) per pass, so the hand schedules in
`schedules/` tile them the same way. The output block of each op carries the block
annotation `schedule_rule = "oversized_conv"`, which MetaSchedule resolves to our rule.
"""

from __future__ import annotations

import numpy as np
from tvm import te

from .errors import ParcnetError

ALGOS = ("auto", "direct", "toeplitz")
PASSES = ("h", "w", "hw")
SCHEDULE_RULE = "oversized_conv"
# Blocks our rule schedules itself; "None" keeps MetaSchedule's generic rules off them.
HELPER_RULE = "None"
H_BLOCK, W_BLOCK = "oversized_h", "oversized_w"

# The documented 'auto' rule, from scripts/bench_op.py on x86 (2 threads, AVX-512, XT and T
# at 224): Toeplitz was as fast or faster than direct at every stage shape (1.1-1.7x), since
# its plain-index rows let the CPU schedule pad the columns to whole vectors (pad_einsum).
# Its constants cost C * (H^2 + W^2) floats per op against C * (2H + 2W) for the kernels,
# so above TOEPLITZ_MAX_BYTES per op (large inputs) the direct form is used instead.
# On CUDA 'auto' is direct, whose register-tiled schedule (schedules/cuda_oversized.py) issues 0.27
# shared-memory loads per multiply-add against the Toeplitz schedule's 2, the bound that
# the Toeplitz schedule hit on an H200 (~6 TFLOP/s). Chosen by that count, not yet timed:
# scripts/bench_op.py --target cuda shows both side by side on a GPU.
# On the ARM board 'auto' is direct: the Toeplitz matrices add 12 MiB to T's 95 MiB of weights
# (109 -> 121 MiB needed on a 1-2 GB board whose peer, MNN, needs 118) for 0.2% of its
# RK3288 estimate (1260 vs 1263 ms at 4 threads; docs/arm-estimate.json, 2026-12-07).
TOEPLITZ_MAX_BYTES = 4 << 20


def check_algo(algo: str) -> str:
    if algo not in ALGOS:
        raise ParcnetError(f"unknown oversized algorithm {algo!r}: choose one of {', '.join(ALGOS)}")
    return algo


def choose_algo(algo: str, channels: int, height: int, width: int, target_kind: str = "llvm") -> str:
    """Resolve 'auto' by the documented rule above for a target kind (llvm, arm, cuda);
    validate forced choices."""
    if check_algo(algo) != "auto":
        return algo
    if target_kind in ("cuda", "arm"):
        return "direct"
    toeplitz_bytes = 4 * channels * (height * height + width * width)
    return "toeplitz" if toeplitz_bytes <= TOEPLITZ_MAX_BYTES else "direct"


def kernel_over_map(weight: np.ndarray, side: int) -> np.ndarray:
    """A depth-wise 1-D kernel of any odd length K, padded K//2 (the output keeps the map's
    size), as the 2*side-1 taps that can meet a map of `side` pixels: (C, ..K..) -> (C, 2*side-1).

    The op sums over real pixels only, so it needs the taps at offsets -(side-1)..side-1 from
    the centre: taps further out only ever meet the padding's zeros (dropped), and a kernel
    shorter than 2*side-1 is zero-extended. So the official kernels (111/55/27/13 at every
    input size) and the paper's resized ones (2H-1) both run on the same op.
    """
    kernel = weight.reshape(weight.shape[0], -1)
    length, window = kernel.shape[1], 2 * side - 1
    if length % 2 == 0:
        raise ParcnetError(f"oversized kernel of even length {length}: only odd lengths keep the map's size")
    first = max(0, side - 1 - length // 2)  # first window tap the kernel reaches
    skipped = max(0, length // 2 - (side - 1))  # kernel taps beyond the window on each side
    count = min(window - first, length - skipped)
    out = np.zeros((kernel.shape[0], window), dtype=kernel.dtype)
    out[:, first:first + count] = kernel[:, skipped:skipped + count]
    return out


def kernel_vectors(weight_h: np.ndarray, weight_w: np.ndarray | None):
    """(C,1,K,1) / (C,1,1,K) conv weights -> (C, K) H taps and reversed W taps."""
    kh = None if weight_h is None else np.ascontiguousarray(weight_h.reshape(weight_h.shape[0], -1))
    kw_reversed = None
    if weight_w is not None:
        kw_reversed = np.ascontiguousarray(weight_w.reshape(weight_w.shape[0], -1)[:, ::-1])
    return kh, kw_reversed


def toeplitz_h(weight_h: np.ndarray, height: int) -> np.ndarray:
    """Th[c, i, r] = kh[c, r - i + H - 1], shape (C, H, H), contiguous."""
    kh = weight_h.reshape(weight_h.shape[0], -1)
    i, r = np.meshgrid(np.arange(height), np.arange(height), indexing="ij")
    return np.ascontiguousarray(kh[:, r - i + height - 1])


def toeplitz_w_transposed(weight_w: np.ndarray, width: int) -> np.ndarray:
    """Tw^T[c, r, j] = kw[c, r - j + W - 1], shape (C, W, W), contiguous."""
    kw = weight_w.reshape(weight_w.shape[0], -1)
    r, j = np.meshgrid(np.arange(width), np.arange(width), indexing="ij")
    return np.ascontiguousarray(kw[:, r - j + width - 1])


def weight_constants(algo: str, passes: str, weight_h, weight_w, height: int, width: int) -> list:
    """The constant tensors the op takes after x, in order, for this algorithm and passes."""
    if algo == "toeplitz":
        out = []
        if "h" in passes:
            out.append(toeplitz_h(weight_h, height))
        if "w" in passes:
            out.append(toeplitz_w_transposed(weight_w, width))
        return [a.astype(np.float32) for a in out]
    kh, kw_reversed = kernel_vectors(weight_h if "h" in passes else None, weight_w if "w" in passes else None)
    return [a.astype(np.float32) for a in (kh, kw_reversed) if a is not None]


def _h_pass(x: te.Tensor, taps: te.Tensor, algo: str, name: str, rule: str) -> te.Tensor:
    _, _, height, _ = x.shape
    r = te.reduce_axis((0, height), name="r")
    if algo == "toeplitz":
        def tap(c, i):
            return taps[c, i, r]
    else:
        def tap(c, i):
            return taps[c, r - i + height - 1]
    return te.compute(
        x.shape, lambda n, c, i, j: te.sum(tap(c, i) * x[n, c, r, j], axis=r),
        name=name, attrs={"schedule_rule": rule},
    )


def _w_pass(y: te.Tensor, taps: te.Tensor, algo: str, name: str, rule: str) -> te.Tensor:
    _, _, _, width = y.shape
    r = te.reduce_axis((0, width), name="r")
    if algo == "toeplitz":
        def tap(c, j):
            return taps[c, r, j]
    else:  # reversed kernel: index j - r + W - 1 grows with j
        def tap(c, j):
            return taps[c, j - r + width - 1]
    return te.compute(
        y.shape, lambda n, c, i, j: te.sum(y[n, c, i, r] * tap(c, j), axis=r),
        name=name, attrs={"schedule_rule": rule},
    )


def oversized_conv(x: te.Tensor, *taps: te.Tensor, algo: str = "direct", passes: str = "hw") -> te.Tensor:
    """TE compute of the H pass, the W pass, or H then W, over NCHW `x`.

    `taps` are the tensors `weight_constants` returns, in the same order.
    """
    if passes not in PASSES:
        raise ParcnetError(f"unknown oversized passes {passes!r}: choose one of {', '.join(PASSES)}")
    if algo not in ("direct", "toeplitz"):
        raise ParcnetError(f"oversized_conv needs a resolved algorithm, got {algo!r}")
    if passes == "h":
        return _h_pass(x, taps[0], algo, H_BLOCK, SCHEDULE_RULE)
    if passes == "w":
        return _w_pass(x, taps[0], algo, W_BLOCK, SCHEDULE_RULE)
    y = _h_pass(x, taps[0], algo, H_BLOCK, HELPER_RULE)
    return _w_pass(y, taps[1], algo, W_BLOCK, SCHEDULE_RULE)


def reference(x: np.ndarray, weight_h, weight_w, passes: str = "hw") -> np.ndarray:
    """NumPy reference: the same sums as two Toeplitz matmuls per channel (for tests)."""
    _, _, height, width = x.shape
    y = x.astype(np.float64)
    if "h" in passes:
        y = np.einsum("cir,ncrj->ncij", toeplitz_h(weight_h, height).astype(np.float64), y)
    if "w" in passes:
        y = np.einsum("ncir,crj->ncij", y, toeplitz_w_transposed(weight_w, width).astype(np.float64))
    return y
