"""Keep tensors in bfloat16 between BF16 layers (the ``bf16_chains`` lowering option of
``passes.rewrite``, with ``bf16_compute``; for OpenVINO).

With ``bf16_compute`` every BF16 layer is ``Cast(f32 -> bf16) -> layer -> Cast(bf16 -> f32)``, and the
ops between two such layers (a ``Clip`` for ReLU6, a residual ``Add``) run in float32 between a
``Cast`` to float and a ``Cast`` back. OpenVINO's CPU plugin then converts every activation twice
per layer and runs the elementwise ops in f32: on EfficientNet-Lite0 an all-BF16 plan measured
0.76x of FP32, where OpenVINO's own whole-model BF16 (its inference precision hint) gives 1.84x
(``tools/bench/openvino_forms.py``). This post-pass, run on the rewritten graph, removes those
conversions where every number keeps its rounding points (up to the rounding of ``Add``, below):

- **which tensors**: a float tensor that is a BF16 layer's output cast to float, or the output of a
  chain op (:data:`CHAIN_OPS`) whose float inputs are all such tensors (or constants), and whose
  consumers are all either a ``Cast`` to bf16 (the next BF16 layer's input) or chain ops whose own
  output qualifies; never a graph output. The set is the largest such (a fixpoint), so every float
  path keeps its float values;
- **the same numbers**: the chain ops are those that commute with rounding to bf16 (``Relu``,
  ``Clip`` with bf16-exact bounds, shape and layout ops, ``Concat``); ``Add`` of two bf16 values is
  rounded once to bf16, as its float sum would be by the consumer's ``Cast`` (exact whenever the
  float sum is: operands within 2^16 of each other in magnitude);
- each chain op is recreated on the bf16 tensors, each ``Cast`` to bf16 of a chain tensor is
  replaced by the bf16 tensor itself, and the float ops left without uses are removed.

Measured on EfficientNet-Lite0, all BF16 in OpenVINO (1 thread): 0.76-0.93x of FP32 without the
chains, 1.89x with them (OpenVINO's BF16 hint: 1.84-1.90x in the same runs); logits differ from the
unchained plan's by at most 0.047 (the plan's own difference from FP32: 0.16; top-1 unchanged).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as A

#: ops recomputed on bf16 tensors (see the module doc)
CHAIN_OPS = frozenset({"Relu", "Clip", "Add", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze",
                       "Concat", "Identity"})
_F32, _BF16 = ir.DataType.FLOAT, ir.DataType.BFLOAT16


def _cast_to(n: ir.Node) -> ir.DataType | None:
    if n.op_type != "Cast" or n.domain not in ("", "ai.onnx"):
        return None
    a = n.attributes.get("to")
    return ir.DataType(a.as_int()) if a is not None else None


def _is_float(v: ir.Value | None) -> bool:
    """float32, or untyped (a graph without value_info): only activations reach the chain ops' float
    slots, and an untyped input outside the chain keeps its op out of it."""
    return v is not None and v.dtype in (_F32, None)


def _bf16_exact(v: ir.Value) -> bool:
    """A constant whose float values are bf16 numbers (so a bf16 copy changes nothing)."""
    arr = np.asarray(v.const_value.numpy(), dtype=np.float32)
    as_bf16 = (arr.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return bool(np.array_equal(arr, as_bf16))


class _Chains:
    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.outputs = {id(v) for v in graph.outputs}
        # float tensors with a bf16 twin already: a BF16 layer's output cast to float
        self.source: dict[int, ir.Value] = {}
        for n in graph:
            if _cast_to(n) == _F32 and n.inputs[0] is not None and n.inputs[0].dtype == _BF16:
                self.source[id(n.outputs[0])] = n.inputs[0]

    def _const_ok(self, n: ir.Node, v: ir.Value) -> bool:
        if v.dtype != _F32:
            return True  # shapes, axes: unchanged
        return n.op_type == "Clip" and _bf16_exact(v)

    def candidates(self) -> set[ir.Value]:
        cand = {v for n in self.graph for v in n.outputs
                if id(v) in self.source or (n.op_type in CHAIN_OPS and n.domain in ("", "ai.onnx") and _is_float(v))}
        return {v for v in cand if id(v) not in self.outputs}

    def solve(self) -> set[ir.Value]:
        chain = self.candidates()
        while True:
            drop = {v for v in chain if not self._ok(v, chain)}
            if not drop:
                return chain
            chain -= drop

    def _ok(self, v: ir.Value, chain: set[ir.Value]) -> bool:
        p = v.producer()
        if id(v) not in self.source:  # a chain op: every float input in the chain, or a harmless constant
            for x in p.inputs:
                if x is None:
                    continue
                if x.const_value is not None or x.is_initializer():
                    if x.const_value is None or not self._const_ok(p, x):
                        return False
                elif _is_float(x) and x not in chain:
                    return False
        uses = list(v.uses())
        if not uses:
            return False
        for u in uses:
            c = u.node
            if c.graph is not self.graph:
                return False
            if _cast_to(c) == _BF16:
                continue
            if c.op_type in CHAIN_OPS and c.outputs and c.outputs[0] in chain:
                continue
            return False
        return True


def keep_bf16(model: ir.Model, fresh) -> dict:
    """Run chains of BF16 layers in bf16 end to end (module doc). In place on a rewritten (emulate
    form, ``bf16_compute``) model; ``fresh(base)`` makes unique names. Returns a report."""
    graph = model.graph
    ch = _Chains(graph)
    chain = ch.solve()
    twin: dict[int, ir.Value] = {id(v): ch.source[id(v)] for v in chain if id(v) in ch.source}
    recreated, removed_casts = 0, 0
    for n in list(graph):
        if not n.outputs or n.outputs[0] not in chain or id(n.outputs[0]) in twin:
            continue
        ins = []
        for x in n.inputs:
            if x is None or not _is_float(x) or (x.const_value is not None and x.dtype != _F32):
                ins.append(x)
            elif x.const_value is not None:
                arr = np.asarray(x.const_value.numpy(), dtype=np.float32)
                name = fresh(f"{x.name}/bf16")
                c = ir.Value(name=name, type=ir.TensorType(_BF16), shape=ir.Shape(arr.shape),
                             const_value=ir.Tensor(arr.astype(ir.DataType.BFLOAT16.numpy()), dtype=_BF16, name=name))
                graph.register_initializer(c)
                ins.append(c)
            else:
                ins.append(twin[id(x)])
        y = n.outputs[0]
        out = ir.Value(name=fresh(f"{y.name}/bf16"), type=ir.TensorType(_BF16), shape=y.shape)
        props = dict(n.metadata_props)
        props[A.INSERTED_FOR] = "bf16_chains"
        node = ir.Node(n.domain, n.op_type, ins, attributes=list(n.attributes.values()), outputs=[out],
                       name=fresh(f"{n.name or n.op_type}/bf16"), metadata_props=props)
        graph.insert_after(n, node)
        twin[id(y)] = out
        recreated += 1
    for n in list(graph):
        if _cast_to(n) == _BF16 and n.inputs[0] is not None and id(n.inputs[0]) in twin:
            n.outputs[0].replace_all_uses_with(twin[id(n.inputs[0])])
            graph.remove(n, safe=True)
            removed_casts += 1
    removed = 0
    for n in reversed(list(graph)):  # the float ops nothing reads any more
        if n.outputs and all(not list(v.uses()) and not v.is_graph_output() for v in n.outputs) and (
                n.op_type in CHAIN_OPS or _cast_to(n) == _F32) and A.LAYER not in n.metadata_props:
            graph.remove(n, safe=True)
            removed += 1
    return {"tensors": len(chain), "ops_in_bf16": recreated, "casts_to_bf16_removed": removed_casts,
            "float_ops_removed": removed}
