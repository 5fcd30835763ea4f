"""Ranges of the tensors between layers, for the ``int8_chains`` lowering (``passes.int8_chains``).

Calibration measures each layer's operands; a chain of INT8 layers also needs the range of the
tensors that no layer reads directly, such as a residual ``Add``'s output on its way through a
``Relu`` into pooling. :func:`record_ranges` runs the model in ONNX Runtime over calibration
batches with those tensors exposed, and writes ``onnx_amp.amax.out`` (max |output|) on their nodes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.passes.int8_chains import AMAX_OUT, ARITH_OPS

#: ops whose output range the chains cannot derive from their neighbours
RANGE_OPS = ARITH_OPS | {"Relu", "Clip", "GlobalAveragePool", "AveragePool"}


def record_ranges(model: ir.Model, batches: Iterable[dict[str, np.ndarray]], ops=RANGE_OPS) -> int:
    """Write ``onnx_amp.amax.out`` on every node of ``ops`` (max |output| over ``batches``). In place on
    the annotations only (the graph is run from a copy); returns the number of nodes annotated."""
    from onnx_amp.runtime.ort_session import make_session, run

    m = model.clone()
    want = {n.name: n.outputs[0].name for n in m.graph
            if n.op_type in ops and n.outputs and n.outputs[0] is not None and A.INSERTED_BY not in n.metadata_props}
    have = {v.name for v in m.graph.outputs}
    by_name = {v.name: v for n in m.graph for v in n.outputs if v is not None}
    for name in want.values():
        if name not in have and name in by_name:
            m.graph.outputs.append(by_name[name])
    sess = make_session(m, optimize=False)
    amax: dict[str, float] = {}
    for batch in batches:
        res = run(sess, batch, list(dict.fromkeys(want.values())))
        for name, arr in res.items():
            a = np.asarray(arr)
            if a.size and np.issubdtype(a.dtype, np.floating):
                amax[name] = max(amax.get(name, 0.0), float(np.abs(a).max()))
    nodes = {n.name: n for n in model.graph}
    count = 0
    for node_name, out_name in want.items():
        if out_name in amax and node_name in nodes:
            A.set_json(nodes[node_name], AMAX_OUT, [amax[out_name]])
            count += 1
    return count
