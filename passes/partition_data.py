"""The partition's data (:class:`Layer`, :class:`Region`, :class:`Partition`) and the graph
helpers the partition and region extraction share."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from onnx_amp.core.ops import CONTROL_FLOW_OPS


@dataclass
class Layer:
    id: str
    node: ir.Node
    name: str
    op: str
    kind: str  # "weight" | "act_act"
    unit: str = ""
    region: str = ""
    module: str | None = None
    weight_input: int | None = None
    weight_axis: int | None = None
    activation: ir.Value | None = None  # the A operand


@dataclass
class Region:
    id: str
    entry: list[ir.Value]
    exit: list[ir.Value]
    nodes: list[ir.Node]  # main and side nodes, topological order
    layers: list[str]
    units: dict[str, list[str]]
    cut_point: ir.Node | None  # closing cut point (None: the region ends at the virtual sink)

    @property
    def entry_names(self) -> list[str]:
        return [v.name for v in self.entry]

    @property
    def exit_names(self) -> list[str]:
        return [v.name for v in self.exit]


@dataclass
class Partition:
    regions: list[Region]
    layers: dict[str, Layer]
    units: dict[str, list[str]]
    region_of: dict[ir.Node, str]
    main_nodes: list[ir.Node]  # topological order
    side_nodes: list[ir.Node]  # topological order
    cut_points: list[ir.Node]  # topological order
    names: dict[ir.Node, str]  # final (unique) name of every main-graph node
    renamed: dict[ir.Node, str] = field(default_factory=dict)  # nodes whose name must change
    order: list[ir.Node] = field(default_factory=list)  # all main-graph nodes, topological

    def region(self, region_id: str) -> Region:
        for r in self.regions:
            if r.id == region_id:
                return r
        raise KeyError(region_id)

    def to_json(self) -> dict:
        def one_or_list(names: list[str]):
            return names[0] if len(names) == 1 else names

        regions = []
        for r in self.regions:
            regions.append(
                {
                    "id": r.id,
                    "entry": one_or_list(r.entry_names),
                    "exit": one_or_list(r.exit_names),
                    "nodes": [self.names[n] for n in r.nodes],
                    "layers": list(r.layers),
                    "units": {u: list(ls) for u, ls in r.units.items()},
                }
            )
        layers = {
            lid: {
                "node": L.name,
                "op": L.op,
                "kind": L.kind,
                "unit": L.unit,
                "region": L.region,
                "module": L.module,
                "weight_input": L.weight_input,
                "weight_axis": L.weight_axis,
            }
            for lid, L in self.layers.items()
        }
        return {"version": 1, "regions": regions, "layers": layers}


def _captured_values(node: ir.Node, graph: ir.Graph) -> list[ir.Value]:
    """Values of ``graph`` read by the subgraphs of a control-flow (or any graph-attribute) node."""
    out: list[ir.Value] = []
    seen: set[ir.Value] = set()
    stack: list[ir.Graph] = []
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.GRAPH:
            stack.append(attr.as_graph())
        elif attr.type == ir.AttributeType.GRAPHS:
            stack.extend(attr.as_graphs())
    while stack:
        g = stack.pop()
        for n in g:
            for v in n.inputs:
                if v is not None and v not in seen and v.graph is graph:
                    seen.add(v)
                    out.append(v)
            for attr in n.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    stack.append(attr.as_graph())
                elif attr.type == ir.AttributeType.GRAPHS:
                    stack.extend(attr.as_graphs())
    return out


def _has_subgraph(node: ir.Node) -> bool:
    for attr in node.attributes.values():
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return True
    return False


def _node_inputs(node: ir.Node, graph: ir.Graph) -> list[ir.Value]:
    ins = [v for v in node.inputs if v is not None]
    if node.op_type in CONTROL_FLOW_OPS or _has_subgraph(node):
        ins.extend(_captured_values(node, graph))
    return ins


def _unique_names(nodes: list[ir.Node]) -> tuple[dict[ir.Node, str], dict[ir.Node, str]]:
    raw = [n.name for n in nodes]
    owners: dict[str, int] = {}
    for i, nm in enumerate(raw):
        if nm and nm not in owners:
            owners[nm] = i
    names: dict[ir.Node, str] = dict(zip(nodes, raw))
    renamed: dict[ir.Node, str] = {}
    taken = None
    for i, nm in enumerate(raw):
        if nm and owners[nm] == i:
            continue
        if taken is None:
            taken = set(owners)
        n = nodes[i]
        base = f"{nm}_dup{i}" if nm else f"{n.op_type}_{i}"
        cand = base
        k = 1
        while cand in taken:
            cand = f"{base}_{k}"
            k += 1
        taken.add(cand)
        names[n] = cand
        renamed[n] = cand
    return names, renamed


def _attr_int(node: ir.Node, key: str, default: int) -> int:
    a = node.attributes.get(key)
    return default if a is None else int(a.as_int())


def _rank(v: ir.Value) -> int | None:
    if v.shape is not None:
        return len(v.shape)
    if v.const_value is not None:
        return len(v.const_value.shape)
    return None


def _weight_axis(node: ir.Node, w_index: int) -> int:
    op = node.op_type
    w = node.inputs[w_index]
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        if w_index == 1:
            return 0 if _attr_int(node, "transB", 0) else 1
        return 1 if _attr_int(node, "transA", 0) else 0
    # MatMul: Y = A @ W -> output channel is W's last axis; Y = W @ X -> W's row axis (-2)
    r = _rank(w)
    if w_index == 1:
        return (r - 1) if r else 1
    return (r - 2) if r and r >= 2 else 0
