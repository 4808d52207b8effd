"""Op patterns the CPU and CUDA rules share: which blocks make a conv, a norm, a transpose."""

from __future__ import annotations

from tvm import s_tir

NORM_BLOCKS = ("norm_sums", "norm_squares", "norm_out")  # parcnet_tvm/norm.py's one-op LayerNormGeneral


def all_spatial(sch: s_tir.Schedule, blocks) -> bool:
    """Whether every iterator of every block is data-parallel (no reduction)."""
    return all(iv.iter_type == 0 for b in blocks for iv in sch.get(b).iter_vars)


def inline_into_outputs(sch: s_tir.Schedule) -> list:
    """Inline every block that does not write a kernel output into the blocks that read it (an
    all-spatial kernel then makes one pass over memory); returns the remaining blocks."""
    root = sch.get_sblock("root")
    outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(root)}
    for block in sch.get_child_blocks(root):
        if sch.get(block).name_hint not in outputs:
            sch.compute_inline(block)
    return sch.get_child_blocks(root)


def find_conv_nhwc(sch: s_tir.Schedule, names: tuple[str, ...]):
    """(padding block or None, conv block) when `sch` is an NHWC conv named in `names`
    (loops n, h, w, c, then three reductions), optionally after its padding block and with
    only elementwise ops over its output after it; else None."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    found = [i for i, b in enumerate(blocks) if sch.get(b).name_hint in names]
    if len(found) != 1 or found[0] > 1:
        return None
    at = found[0]
    conv = blocks[at]
    stmt = sch.get(conv)
    if [iv.iter_type for iv in stmt.iter_vars] != [0, 0, 0, 0, 2, 2, 2]:
        return None
    pad = blocks[0] if at == 1 else None
    if pad is not None and (sch.get(pad).name_hint != "pad_temp" or len(sch.get(pad).reads) != 1):
        return None
    extents = [int(iv.dom.extent) for iv in stmt.iter_vars][:4]
    for block in blocks[at + 1:]:
        if [int(sch.get(loop).extent) for loop in sch.get_loops(block)] != extents:
            return None
    return pad, conv


def find_norm(sch: s_tir.Schedule):
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if [sch.get(b).name_hint for b in blocks] != list(NORM_BLOCKS):
        return None
    return blocks


def transposed_axis(sch: s_tir.Schedule, block) -> int | None:
    """For a block reading one buffer whose contiguous axis is not the output's: the position
    of the output loop that walks the input's contiguous axis; else None."""
    stmt = sch.get(block)
    if len(stmt.reads) != 1:
        return None
    iter_vars = [iv.var for iv in stmt.iter_vars]
    last_read = stmt.reads[0].region[-1].min
    found = [i for i, var in enumerate(iter_vars) if last_read.same_as(var)]
    if not found or found[0] == len(iter_vars) - 1:
        return None
    return found[0]
