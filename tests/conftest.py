"""Fixtures shared across test modules (helpers are in support.py)."""

import pytest
from support import SMALL


@pytest.fixture(scope="session")
def xt_small_x86(tmp_path_factory):
    """XT at 64x64 built and verified for x86 once per session: (library path, manifest)."""
    from parcnet_tvm.build import BuildRequest, build_library

    out = tmp_path_factory.mktemp("x86") / "xt64.so"
    manifest = build_library(BuildRequest(model="xt", target="x86", input_size=SMALL, output=str(out)),
                             log=lambda *_: None)
    return out, manifest
