"""A partitioned model's regions on their own: extraction as standalone models, and summaries."""

from __future__ import annotations

import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.ops import NONDETERMINISTIC_OPS, SHAPE_OPS
from onnx_amp.passes.partition_data import Partition, _has_subgraph, _node_inputs


def _is_const_value(v: ir.Value, memo: dict) -> bool:
    """Computed only from initializers and Constant nodes (deterministic ops, no shape reads)."""
    if v in memo:
        return memo[v]
    prod = v.producer()
    if prod is None:
        res = v.is_initializer() or v.const_value is not None
    elif prod.op_type in SHAPE_OPS or prod.op_type in NONDETERMINISTIC_OPS or _has_subgraph(prod):
        res = False
    elif prod.op_type == "Constant":
        res = True
    else:
        ins = [x for x in prod.inputs if x is not None]
        res = bool(ins) and all(_is_const_value(x, memo) for x in ins)
    memo[v] = res
    return res


def _constant_chains(rnodes: list[ir.Node], inside: set, graph: ir.Graph) -> set[ir.Node]:
    """The nodes outside the region that compute constants it reads (Constant nodes, Transpose(W) ...)."""
    extra: set[ir.Node] = set()
    memo: dict[ir.Value, bool] = {}
    stack = [v for n in rnodes for v in _node_inputs(n, graph)]
    while stack:
        v = stack.pop()
        prod = v.producer()
        if prod is None or prod in inside or prod in extra:
            continue
        if _is_const_value(v, memo):
            extra.add(prod)
            stack.extend(x for x in prod.inputs if x is not None)
    return extra


def extract_region(model: ir.Model, region_id: str, part: Partition | None = None) -> ir.Model:
    """A standalone model of one region.

    Inputs: the region's entry tensor(s) plus every other non-constant value it reads (graph
    inputs, side or main tensors computed in other regions). Constants it reads from outside
    (initializers, Constant nodes and constant chains in other regions) are included, sharing
    the tensors (no copies). Output: the region's exit tensor(s). ``model`` is not modified.
    """
    if part is None:
        from onnx_amp.passes.partition import partition

        part = partition(model)
    region = part.region(region_id)
    graph = model.graph
    rnodes = list(region.nodes)
    inside = set(rnodes)
    all_index = {n: i for i, n in enumerate(part.order)}
    extra = _constant_chains(rnodes, inside, graph)
    nodes_all = sorted(inside | extra, key=lambda n: all_index[n])
    produced = set()
    for n in nodes_all:
        produced.update(n.outputs)
    inputs: list[ir.Value] = []
    inits: list[ir.Value] = []
    seen: set[ir.Value] = set()
    for n in nodes_all:
        for v in _node_inputs(n, graph):
            if v in seen or v in produced:
                continue
            seen.add(v)
            if v.producer() is None and (v.is_initializer() or v.const_value is not None):
                inits.append(v)
            else:
                inputs.append(v)
    # entry first, in order
    entry = [v for v in region.entry if v in seen]
    inputs = entry + [v for v in inputs if v not in set(entry)]
    untyped = [v.name for v in inputs + list(region.exit) if v.type is None]
    if untyped:
        raise OnnxAmpError(
            f"{graph.name or 'model'}: region {region_id} boundary tensor(s) {', '.join(untyped[:3])} have no type; "
            "run ONNX shape inference on the model before extracting regions"
        )
    view = ir.GraphView(
        inputs,
        list(region.exit),
        nodes=nodes_all,
        initializers=inits,
        opset_imports=dict(graph.opset_imports),
        name=f"{graph.name or 'model'}_{region_id}",
    )
    g = view.clone()
    return ir.Model(
        g,
        ir_version=model.ir_version,
        producer_name="onnx-amp",
        functions=list(model.functions.values()),
        metadata_props={"onnx_amp.extracted_region": region_id},
    )


def partition_summary(model_or_partition: ir.Model | Partition) -> str:
    """Readable text summary: number of regions, layers per region, the largest region."""
    if isinstance(model_or_partition, Partition):
        part = model_or_partition
    else:
        from onnx_amp.passes.partition import partition

        part = partition(model_or_partition)
    lines = []
    n_w = sum(1 for L in part.layers.values() if L.kind == "weight")
    n_aa = len(part.layers) - n_w
    lines.append(
        f"{len(part.regions)} regions, {len(part.layers)} layers ({n_w} weight, {n_aa} act_act), "
        f"{len(part.units)} units, {len(part.main_nodes)} main + {len(part.side_nodes)} side nodes"
    )
    lines.append(f"{'region':>7} {'nodes':>6} {'layers':>6} {'units':>5}  first layer module / ops")
    for r in part.regions:
        first = part.layers[r.layers[0]]
        mods = first.module or first.name
        ops = ",".join(sorted({part.layers[l].op for l in r.layers}))
        lines.append(f"{r.id:>7} {len(r.nodes):>6} {len(r.layers):>6} {len(r.units):>5}  {mods} [{ops}]")
    big = max(part.regions, key=lambda r: (len(r.layers), len(r.nodes)))
    lines.append(f"largest region: {big.id} ({len(big.layers)} layers, {len(big.nodes)} nodes)")
    return "\n".join(lines)


def partition_json(model: ir.Model) -> dict | None:
    """The ``onnx_amp.regions`` summary stored on an annotated model (None when absent)."""
    return ann.get_json(model, ann.REGIONS)


