"""Sequential-region partition: layers, units and single-entry/single-exit regions.

``partition(model)`` is pure (it reads the model and returns a :class:`Partition`);
``PartitionPass`` is the onnx-ir in-place pass that writes the result into ``metadata_props``
(keys from :mod:`onnx_amp.core.annotations`). Everything is linear in the number of nodes.

Rules (METHOD.md section 2, issue 2):

* **Layer**: a MatMul/Gemm/Conv/ConvTranspose node of the main graph (default ONNX domain).
  ``weight`` when one operand is *constant*, i.e. computed only from initializers and
  ``Constant`` nodes (any deterministic op chain on constants: Transpose, Cast, Reshape,
  DequantizeLinear, ...); otherwise ``act_act``. Not layers: a node whose operands are all
  constant or shape-derived (it is constant folding / shape arithmetic), and a MatMul one of
  whose operands is shape-derived but not constant (e.g. the rotary ``inv_freq @ positions``
  table when positions are a graph input): those are side computations, quantizing them is wrong.
* **Shape computation** (*static*): Shape/Size, and any node computed only from static values and
  constants (ConstantOfShape(Shape(x)), Range over a sequence length, ...).
* **Main node**: not static, not constant, and either a layer or a consumer of a main node.
  (Ancestry is followed through main nodes only: a path through ``Shape`` carries no data.)
  Only main->main edges count. Every other node is a *side* node.
* **Primary stream** (ours): the side computation feeding the activation operand of the first
  layers (token embedding Gather, first norm; or a graph input read directly) is promoted to main,
  with a source edge, so the first block keeps its residual edge like every later block (without
  it, layer 0's attention would split after its attention core). A value whose main consumers lie
  in more than two regions (of the partition without promotion) is a broadcast side input
  (mask-like) and stops the promotion.
* **Cut points**: virtual source -> main nodes without main predecessors, main nodes without main
  successors -> virtual sink (a graph output that is also consumed by a main node adds no sink
  edge). In a topological order of the main nodes, ``v`` is a cut point iff no edge jumps over
  it; computed with a running maximum of edge targets (linear).
* **Regions**: segments ``(c_k, c_{k+1}]`` between consecutive cut points (the closing cut point
  belongs to the segment; the part after the last cut point is a segment too), then layerless
  segments are merged into the next one (trailing layerless segments into the previous one).
  Two segments that both hold a layer are never merged, so regions are the finest possible.
* **Side nodes** join the region of their first consumer in topological order (recursively);
  a side node whose outputs no node consumes (e.g. a side graph output) joins the last region.
* **Units**: ``weight`` layers of one region that read the same activation value share a unit
  (q/k/v, gate/up); each ``act_act`` layer is its own unit. Ids follow the first layer's order.
* Control flow nodes (If/Loop/Scan) are single opaque nodes; outer-scope values read by their
  subgraphs count as their inputs. Their subgraphs are left untouched.
* Nodes of the main graph with an empty or duplicate name get a unique, deterministic name
  (``<op>_<graph index>``) so the summary can refer to them.

Region JSON (model key ``onnx_amp.regions``)::

  {"version": 1,
   "regions": [{"id": "r3", "entry": "t12" | ["a", "b"], "exit": "t40" | [..], "nodes": [...],
                "layers": ["L4", ...], "units": {"U2": ["L4", "L5", "L6"], ...}}],
   "layers": {"L4": {"node": "...", "op": "MatMul", "kind": "weight", "unit": "U2",
                     "region": "r3", "module": "model.layers.0.self_attn.q_proj" | null,
                     "weight_input": 1 | null, "weight_axis": 1 | null}}}

``entry``/``exit`` are a tensor name when there is exactly one tensor, else a list of names.
"""


from __future__ import annotations

import gc
from dataclasses import dataclass

import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.annotations import REWRITE
from onnx_amp.passes.base import AmpPassResult, AnnotationPass, PassPreconditionError
from onnx_amp.passes.partition_data import (  # noqa: F401  (names this module has always offered)
    Layer, Partition, Region, _captured_values, _has_subgraph, _node_inputs, _unique_names, _weight_axis,
)
from onnx_amp.passes.partitioner import run_partition

_PARTITION_NODE_KEYS = (ann.LAYER, ann.LAYER_KIND, ann.UNIT, ann.WEIGHT_INPUT, ann.WEIGHT_AXIS)


def partition(model: ir.Model, source: str | None = None) -> Partition:
    """Compute layers, units, cut points and regions of ``model`` (pure: the model is not changed).

    ``source`` names the model in error messages (a file path); defaults to the graph name.
    Raises ``OnnxAmpError`` when the model has no quantizable layer.
    """
    # The cyclic GC would rescan the whole (large) IR graph many times while we allocate
    # per-node lists; nothing here creates cycles worth collecting, so pause it (2x faster).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run_partition(model, source)
    finally:
        if gc_was_enabled:
            gc.enable()


def annotate(model: ir.Model, part: Partition) -> None:
    """Write ``part`` into the model's metadata (nodes renamed where needed)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # see partition(): creating 1 metadata dict per node triggers full GC scans
    try:
        _annotate(model, part)
    finally:
        if gc_was_enabled:
            gc.enable()


def _annotate(model: ir.Model, part: Partition) -> None:
    for n, new in part.renamed.items():
        n.name = new
    keys = _PARTITION_NODE_KEYS
    for n, r in part.region_of.items():
        props = n.metadata_props
        if len(props) and any(k in props for k in keys):  # stale keys from an earlier run
            for k in keys:
                props.pop(k, None)
        props[ann.REGION] = r
    for lid, L in part.layers.items():
        props = L.node.metadata_props
        props[ann.LAYER] = lid
        props[ann.LAYER_KIND] = L.kind
        props[ann.UNIT] = L.unit
        if L.weight_input is not None:
            props[ann.WEIGHT_INPUT] = str(L.weight_input)
            props[ann.WEIGHT_AXIS] = str(L.weight_axis)
    ann.set_json(model, ann.REGIONS, part.to_json())


@dataclass
class PartitionResult(AmpPassResult):
    partition: Partition | None = None


class PartitionPass(AnnotationPass):
    """onnx-ir pass: annotate regions, layers and units (see module docstring). Returns a
    :class:`PartitionResult` (``.partition``; also kept on the pass object for one release)."""

    result_type = PartitionResult

    def __init__(self, source: str | None = None):
        super().__init__()
        self.source = source
        self.partition: Partition | None = None

    def requires(self, model: ir.Model) -> None:
        if REWRITE in model.metadata_props:
            raise PassPreconditionError(f"{self.source or model.graph.name or 'model'}: the model was already "
                                        "rewritten (it has onnx_amp.rewrite); partition the model before the rewrite")

    def annotate(self, model: ir.Model) -> dict:
        part = partition(model, source=self.source)
        annotate(model, part)
        self.partition = part
        return {"partition": part}


# extraction and summary live in passes.regions (re-exported here)
from onnx_amp.passes.regions import extract_region, partition_json, partition_summary  # noqa: E402

__all__ = [
    "Layer",
    "Region",
    "Partition",
    "partition",
    "annotate",
    "PartitionPass",
    "extract_region",
    "partition_summary",
    "partition_json",
]
