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
from collections import deque
from dataclasses import dataclass, field

import onnx_ir as ir

from onnx_amp.core.ops import CONTROL_FLOW_OPS, GRAPH_ATTR_OPS, LAYER_OPS, NONDETERMINISTIC_OPS, SHAPE_OPS
from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError

_PARTITION_NODE_KEYS = (ann.LAYER, ann.LAYER_KIND, ann.UNIT, ann.WEIGHT_INPUT, ann.WEIGHT_AXIS)


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


# ----------------------------------------------------------------------------------------------
# graph helpers


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


# ----------------------------------------------------------------------------------------------
# the partition


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
        return _partition(model, source)
    finally:
        if gc_was_enabled:
            gc.enable()


def _partition(model: ir.Model, source: str | None) -> Partition:
    graph = model.graph
    nodes = list(graph)
    n_nodes = len(nodes)
    index = {n: i for i, n in enumerate(nodes)}

    # predecessor lists (graph indices), values read
    prod_idx: dict[ir.Value, int] = {}
    for i, n in enumerate(nodes):
        for o in n.outputs:
            prod_idx[o] = i
    get_prod = prod_idx.get
    inputs_of: list = [n.inputs for n in nodes]
    for i, ins in enumerate(inputs_of):
        if None in ins:
            inputs_of[i] = tuple(v for v in ins if v is not None)
    captured_by: dict[ir.Value, list[int]] = {}  # outer-scope values read inside subgraphs
    for i, n in enumerate(nodes):
        if n.op_type in GRAPH_ATTR_OPS or (n.domain not in ("", "ai.onnx") and _has_subgraph(n)):
            cap = _captured_values(n, graph)
            inputs_of[i] = tuple(inputs_of[i]) + tuple(cap)
            for v in cap:
                captured_by.setdefault(v, []).append(i)
    preds: list[list[int]] = [[j for j in map(get_prod, ins) if j is not None] for ins in inputs_of]

    # topological order (graph order when already sorted, else Kahn's algorithm)
    sorted_already = all(j < i for i in range(n_nodes) for j in preds[i])
    if sorted_already:
        topo = list(range(n_nodes))
    else:
        indeg = [len(set(p)) for p in preds]
        succ_tmp: list[list[int]] = [[] for _ in range(n_nodes)]
        for i in range(n_nodes):
            for j in set(preds[i]):
                succ_tmp[j].append(i)
        queue = deque(i for i in range(n_nodes) if indeg[i] == 0)  # FIFO: linear, near graph order
        topo = []
        while queue:
            i = queue.popleft()
            topo.append(i)
            for k in succ_tmp[i]:
                indeg[k] -= 1
                if indeg[k] == 0:
                    queue.append(k)
        if len(topo) != n_nodes:
            raise OnnxAmpError(f"{source or graph.name or 'model'}: the graph has a cycle; not a valid ONNX model")
    # constant / static (shape computation) classification, per node and per value
    CONST, STATIC, DATA = 0, 1, 2
    kind = [DATA] * n_nodes
    vk: dict[ir.Value, int] = {}
    for v in graph.inputs:
        vk[v] = DATA
    for v in graph.initializers.values():
        vk[v] = CONST

    def vkind(v: ir.Value) -> int:
        k = vk.get(v)
        if k is None:  # an outer-scope or otherwise unknown value
            k = CONST if (v.producer() is None and v.const_value is not None) else DATA
        return k

    is_layer = [False] * n_nodes
    layer_info: dict[int, tuple[str, int | None, ir.Value | None]] = {}
    main = [False] * n_nodes
    std_domain = ("", "ai.onnx")
    for i in topo:
        n = nodes[i]
        op = n.op_type
        ins = inputs_of[i]
        if op == "Constant" and n.domain in std_domain:
            k = CONST
        elif op in SHAPE_OPS and n.domain in std_domain:
            k = STATIC
        elif ins and op not in NONDETERMINISTIC_OPS:
            k = CONST
            for v in ins:
                kv = vk.get(v)
                if kv is None:
                    kv = vkind(v)
                if kv == DATA:
                    k = DATA
                    break
                if kv == STATIC:
                    k = STATIC
        else:
            k = DATA
        kind[i] = k
        for o in n.outputs:
            vk[o] = k
        if k != DATA:
            continue
        if op in LAYER_OPS and n.domain in std_domain and len(n.inputs) >= 2:
            a, b = n.inputs[0], n.inputs[1]
            if a is not None and b is not None:
                ka, kb = vkind(a), vkind(b)
                if kb == CONST and ka == DATA:
                    is_layer[i] = True
                    layer_info[i] = ("weight", 1, a)
                elif ka == CONST and kb == DATA and op in ("MatMul", "Gemm"):
                    is_layer[i] = True
                    layer_info[i] = ("weight", 0, b)
                elif ka == DATA and kb == DATA:
                    is_layer[i] = True
                    layer_info[i] = ("act_act", None, a)
                # else: an operand is shape-derived (rotary/position tables): side computation
        if is_layer[i]:
            main[i] = True
        else:
            for j in preds[i]:
                if main[j]:
                    main[i] = True
                    break

    name = source or graph.name or "model"
    if not any(is_layer):
        raise OnnxAmpError(f"{name}: no quantizable layer (MatMul/Gemm/Conv) found")

    def cut_regions(main: list[bool], extra_source: list[bool]):
        """Cut points and (layer-merged) regions of the main subgraph ``main``."""
        main_order = [i for i in topo if main[i]]
        m = len(main_order)
        mpos = [0] * n_nodes
        for p, i in enumerate(main_order, start=1):
            mpos[i] = p
        has_main_succ = [False] * n_nodes
        maxt = [0] * (m + 2)
        for i in main_order:
            pi = mpos[i]
            any_main_pred = extra_source[i]
            for j in preds[i]:
                if main[j]:
                    any_main_pred = True
                    has_main_succ[j] = True
                    pj = mpos[j]
                    if pi > maxt[pj]:
                        maxt[pj] = pi
            if (not any_main_pred or extra_source[i]) and pi > maxt[0]:
                maxt[0] = pi
        for i in main_order:
            if not has_main_succ[i]:
                maxt[mpos[i]] = m + 1
        cut_pos: list[int] = []
        running = maxt[0]
        for p in range(1, m + 1):
            if running <= p:
                cut_pos.append(p)
            if maxt[p] > running:
                running = maxt[p]

        # segments (c_{k-1}, c_k] and the trailing one; layerless ones merge into the next
        bounds = [0] + cut_pos
        segs = [(bounds[k - 1], bounds[k], True) for k in range(1, len(bounds))]
        if bounds[-1] < m:
            segs.append((bounds[-1], m, False))
        layer_prefix = [0] * (m + 1)
        for p, i in enumerate(main_order, start=1):
            layer_prefix[p] = layer_prefix[p - 1] + (1 if is_layer[i] else 0)
        merged: list[tuple[int, int, bool]] = []  # (start exclusive, end inclusive, closed by a cut)
        pending: int | None = None
        for st, en, closed in segs:
            st = st if pending is None else pending
            if layer_prefix[en] - layer_prefix[st] == 0:
                pending = st
                continue
            merged.append((st, en, closed))
            pending = None
        if pending is not None:  # trailing layerless segments -> previous region
            merged[-1] = (merged[-1][0], m, segs[-1][2])
        region_idx = [-1] * n_nodes
        for r, (st, en, _) in enumerate(merged):
            for p in range(st + 1, en + 1):
                region_idx[main_order[p - 1]] = r
        return main_order, mpos, has_main_succ, cut_pos, merged, region_idx

    no_extra = [False] * n_nodes
    main_order, mpos, has_main_succ, cut_pos, merged, region_idx = cut_regions(main, no_extra)

    # Promote the primary data stream (ours): the side computation that feeds the activation of
    # the first layers (token embedding, first norm; or a graph input read directly) joins the
    # main graph, so the first block keeps its residual edge like every other block. A value whose
    # main consumers lie in more than two regions is a broadcast side input (mask-like) and stops
    # the promotion.
    def main_regions_reading(v: ir.Value) -> set[int]:
        regs = set()
        for use in v.uses():
            j = index.get(use.node)
            if j is not None and main[j]:
                regs.add(region_idx[j])
        for j in captured_by.get(v, ()):
            if main[j]:
                regs.add(region_idx[j])
        return regs

    promoted = [False] * n_nodes
    promoted_inputs: set[ir.Value] = set()
    stack = []
    for i in main_order:
        if is_layer[i] and not any(main[j] for j in preds[i]):
            act = layer_info[i][2]
            stack.extend(v for v in inputs_of[i] if vkind(v) == DATA and (layer_info[i][0] == "act_act" or v is act))
    seen_vals: set[ir.Value] = set()
    while stack:
        v = stack.pop()
        if v in seen_vals:
            continue
        seen_vals.add(v)
        prod = v.producer()
        j = index.get(prod) if prod is not None else None
        if prod is not None and (j is None or main[j] or kind[j] != DATA):
            continue
        outs = [v] if prod is None else prod.outputs
        if len(set().union(*(main_regions_reading(o) for o in outs))) > 2:
            continue  # broadcast (mask-like) side input
        if prod is None:
            promoted_inputs.add(v)
        else:
            if not promoted[j]:
                promoted[j] = True
                stack.extend(x for x in inputs_of[j] if vkind(x) == DATA)
    if any(promoted) or promoted_inputs:
        main = [a or b for a, b in zip(main, promoted)]
        extra = [False] * n_nodes
        if promoted_inputs:
            for i in range(n_nodes):
                if main[i] and any(v in promoted_inputs for v in inputs_of[i]):
                    extra[i] = True
        main_order, mpos, has_main_succ, cut_pos, merged, region_idx = cut_regions(main, extra)
        src_flags = extra
    else:
        src_flags = no_extra
    m = len(main_order)
    n_regions = len(merged)

    # successors (all nodes) for side attachment: first consumer in topological order
    first_consumer = [-1] * n_nodes
    for i in topo:
        for j in preds[i]:
            if first_consumer[j] == -1:
                first_consumer[j] = i
    side_order = [i for i in topo if not main[i]]
    for i in reversed(side_order):
        fc = first_consumer[i]
        region_idx[i] = region_idx[fc] if fc != -1 else n_regions - 1

    # names
    names, renamed = _unique_names(nodes)
    rid_names = [f"r{r}" for r in range(n_regions)]

    # layers and units
    layers: dict[str, Layer] = {}
    lid_of: dict[int, str] = {}
    for i in topo:
        if is_layer[i]:
            n = nodes[i]
            lk, w_index, act = layer_info[i]
            lid = f"L{len(layers)}"
            lid_of[i] = lid
            layers[lid] = Layer(
                id=lid,
                node=n,
                name=names[n],
                op=n.op_type,
                kind=lk,
                region=rid_names[region_idx[i]],
                module=n.metadata_props.get(ann.MODULE),
                weight_input=w_index,
                weight_axis=_weight_axis(n, w_index) if w_index is not None else None,
                activation=act,
            )
    units: dict[str, list[str]] = {}
    unit_key: dict[tuple, str] = {}
    for lid, L in layers.items():
        key = ("w", L.activation, L.region) if L.kind == "weight" else ("aa", lid)
        u = unit_key.get(key)
        if u is None:
            u = f"U{len(units)}"
            unit_key[key] = u
            units[u] = []
        units[u].append(lid)
        L.unit = u

    # regions: nodes, entry, exit
    region_nodes: list[list[ir.Node]] = [[] for _ in range(n_regions)]
    for i in topo:
        region_nodes[region_idx[i]].append(nodes[i])
    def has_main_use(v: ir.Value) -> bool:
        for use in v.uses():
            j = index.get(use.node)
            if j is not None and main[j]:
                return True
        return any(main[j] for j in captured_by.get(v, ()))
    graph_outputs = set(graph.outputs)

    def dedup(vals):
        seen, out = set(), []
        for v in vals:
            if v not in seen:
                seen.add(v)
                out.append(v)
        return out

    regions: list[Region] = []
    for r, (st, en, closed) in enumerate(merged):
        if st == 0:
            entry = []
            for p in range(1, en + 1):
                i = main_order[p - 1]
                if src_flags[i] or not any(main[j] for j in preds[i]):
                    entry.extend(
                        v
                        for v in inputs_of[i]
                        if vkind(v) == DATA and not (v.producer() in index and main[index[v.producer()]])
                    )
            entry = dedup(entry)
        else:
            cut = nodes[main_order[st - 1]]
            entry = [o for o in cut.outputs if has_main_use(o)]
        if closed and en < m:
            cut = nodes[main_order[en - 1]]
            exit_ = [o for o in cut.outputs if o in graph_outputs or has_main_use(o)]
        else:
            ends = [nodes[main_order[p - 1]] for p in range(st + 1, en + 1) if not has_main_succ[main_order[p - 1]]]
            outs = [o for e in ends for o in e.outputs]
            exit_ = [o for o in outs if o in graph_outputs] or [o for o in outs if o.uses()] or outs
        exit_ = dedup(exit_)
        lids = [lid_of[i] for i in (main_order[p - 1] for p in range(st + 1, en + 1)) if i in lid_of]
        ru: dict[str, list[str]] = {}
        for lid in lids:
            ru.setdefault(layers[lid].unit, []).append(lid)
        regions.append(
            Region(
                id=rid_names[r],
                entry=entry,
                exit=exit_,
                nodes=region_nodes[r],
                layers=lids,
                units=ru,
                cut_point=nodes[main_order[en - 1]] if closed else None,
            )
        )

    return Partition(
        regions=regions,
        layers=layers,
        units=units,
        region_of=dict(zip(nodes, [rid_names[r] for r in region_idx])),
        main_nodes=[nodes[i] for i in main_order],
        side_nodes=[nodes[i] for i in side_order],
        cut_points=[nodes[main_order[p - 1]] for p in cut_pos],
        names=names,
        renamed=renamed,
        order=[nodes[i] for i in topo],
    )


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


class PartitionPass(ir.passes.InPlacePass):
    """onnx-ir pass: annotate regions, layers and units (see module docstring)."""

    def __init__(self, source: str | None = None):
        super().__init__()
        self.source = source
        self.partition: Partition | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        part = partition(model, source=self.source)
        annotate(model, part)
        self.partition = part
        return ir.passes.PassResult(model, modified=True)


# ----------------------------------------------------------------------------------------------
# region extraction and summary


def extract_region(model: ir.Model, region_id: str, part: Partition | None = None) -> ir.Model:
    """A standalone model of one region.

    Inputs: the region's entry tensor(s) plus every other non-constant value it reads (graph
    inputs, side or main tensors computed in other regions). Constants it reads from outside
    (initializers, Constant nodes and constant chains in other regions) are included, sharing
    the tensors (no copies). Output: the region's exit tensor(s). ``model`` is not modified.
    """
    if part is None:
        part = partition(model)
    region = part.region(region_id)
    graph = model.graph
    rnodes = list(region.nodes)
    inside = set(rnodes)
    produced: set[ir.Value] = set()
    for n in rnodes:
        produced.update(n.outputs)

    # pull in constant chains from outside the region (Constant nodes, Transpose(W) ...)
    all_index = {n: i for i, n in enumerate(part.order)}
    extra: set[ir.Node] = set()

    def is_const_value(v: ir.Value, memo: dict) -> bool:
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
            res = bool(ins) and all(is_const_value(x, memo) for x in ins)
        memo[v] = res
        return res

    memo: dict[ir.Value, bool] = {}
    stack = [v for n in rnodes for v in _node_inputs(n, graph)]
    while stack:
        v = stack.pop()
        prod = v.producer()
        if prod is None or prod in inside or prod in extra:
            continue
        if is_const_value(v, memo):
            extra.add(prod)
            stack.extend(x for x in prod.inputs if x is not None)
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
    part = model_or_partition if isinstance(model_or_partition, Partition) else partition(model_or_partition)
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
