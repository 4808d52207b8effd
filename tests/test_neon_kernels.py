"""Our hand-written NEON kernels: compiled once per source text, linked into ARM libraries."""

import re

import pytest

from parcnet_tvm import neon_kernels
from parcnet_tvm.errors import ParcnetError
from parcnet_tvm.targets import ARM_CXX

from support import needs_arm_toolchain, one_line


@needs_arm_toolchain
def test_kernels_compile_once_into_an_arm_object_and_are_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(neon_kernels, "CACHE", tmp_path)
    objs = neon_kernels.objects(ARM_CXX)
    assert all(obj.startswith(str(tmp_path)) and open(obj, "rb").read(4) == b"\x7fELF" for obj in objs)
    before = [(tmp_path / obj).stat().st_mtime_ns for obj in objs]
    assert neon_kernels.objects(ARM_CXX) == objs
    assert [(tmp_path / obj).stat().st_mtime_ns for obj in objs] == before  # cached, not compiled again
    # one object per kernel source (the GEMM micro-kernel, the depth-wise kernel), no partial left
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["neon_depthwise.o", "neon_gelu.o", "neon_sgemm.o"]


@needs_arm_toolchain
def test_a_kernel_that_does_not_compile_is_one_line_and_leaves_no_object(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(neon_kernels, "SOURCES", [broken])
    monkeypatch.setattr(neon_kernels, "CACHE", tmp_path / "cache")
    with pytest.raises(ParcnetError, match=re.escape(f"{ARM_CXX} could not compile broken.cc")) as caught:
        neon_kernels.objects(ARM_CXX)
    one_line(caught.value)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
