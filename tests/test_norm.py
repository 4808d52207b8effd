"""norm.py: each LayerNormGeneral chain becomes one op."""

from support import SMALL

from parcnet_tvm.frontend import import_model
from parcnet_tvm.graph import calls
from parcnet_tvm.layout import to_channels_last
from parcnet_tvm.model import VARIANTS
from parcnet_tvm.norm import PRIMFUNC_PREFIX, fuse_layer_norms
from parcnet_tvm.rewrite import rewrite_oversized_convs
from parcnet_tvm.weights import prepare_model


def test_each_layer_norm_general_becomes_one_op():
    mod = to_channels_last(rewrite_oversized_convs(import_model(prepare_model("xt", SMALL), (1, 3, SMALL, SMALL)))[0])
    fused, count = fuse_layer_norms(mod)
    # two per block, the stem's post-norm and the three pre-norms of the downsamplings
    assert count == 2 * sum(VARIANTS["xt"].depths) + 4
    norms = [c for c in calls(fused["main"], "relax.call_tir") if c.args[0].name_hint.startswith(PRIMFUNC_PREFIX)]
    assert len(norms) == count
    assert not calls(fused["main"], "relax.sqrt") and not calls(fused["main"], "relax.clip")
    assert len(calls(fused["main"], "relax.mean")) == 1  # the head's global average pool
