"""The partition algorithm, step by step over graph indices (rules: ``passes.partition``)."""

from __future__ import annotations

from collections import deque

import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.core.ops import GRAPH_ATTR_OPS, LAYER_OPS, NONDETERMINISTIC_OPS, SHAPE_OPS
from onnx_amp.passes.partition_data import (
    Layer, Partition, Region, _captured_values, _has_subgraph, _unique_names, _weight_axis,
)


def run_partition(model: ir.Model, source: str | None) -> Partition:
    p = _Partitioner(model, source)
    p.classify()
    p.cut(p.main, [False] * p.n)
    p.promote_primary_stream()
    p.attach_side_nodes()
    p.layers_and_units()
    return p.result()


CONST, STATIC, DATA = 0, 1, 2  # what a value is computed from (constants only; shapes; data)
_STD_DOMAIN = ("", "ai.onnx")


class _Partitioner:
    """The partition computed in steps over graph indices (see the module doc for the rules)."""

    def __init__(self, model: ir.Model, source: str | None):
        graph = self.graph = model.graph
        self.name = source or graph.name or "model"
        nodes = self.nodes = list(graph)
        n = self.n = len(nodes)
        self.index = {nd: i for i, nd in enumerate(nodes)}
        prod_idx: dict[ir.Value, int] = {}
        for i, nd in enumerate(nodes):
            for o in nd.outputs:
                prod_idx[o] = i
        get_prod = prod_idx.get
        inputs_of: list = [nd.inputs for nd in nodes]
        for i, ins in enumerate(inputs_of):
            if None in ins:
                inputs_of[i] = tuple(v for v in ins if v is not None)
        self.captured_by: dict[ir.Value, list[int]] = {}  # outer-scope values read inside subgraphs
        for i, nd in enumerate(nodes):
            if nd.op_type in GRAPH_ATTR_OPS or (nd.domain not in _STD_DOMAIN and _has_subgraph(nd)):
                cap = _captured_values(nd, graph)
                inputs_of[i] = tuple(inputs_of[i]) + tuple(cap)
                for v in cap:
                    self.captured_by.setdefault(v, []).append(i)
        self.inputs_of = inputs_of
        self.preds: list[list[int]] = [[j for j in map(get_prod, ins) if j is not None] for ins in inputs_of]
        self.topo = self._topological_order()
        self.kind = [DATA] * n
        self.vk: dict[ir.Value, int] = {}
        self.is_layer = [False] * n
        self.layer_info: dict[int, tuple[str, int | None, ir.Value | None]] = {}
        self.main = [False] * n
        self.src_flags = [False] * n

    def _topological_order(self) -> list[int]:
        """Graph order when already sorted, else Kahn's algorithm (FIFO: linear, near graph order)."""
        n, preds = self.n, self.preds
        if all(j < i for i in range(n) for j in preds[i]):
            return list(range(n))
        indeg = [len(set(p)) for p in preds]
        succ: list[list[int]] = [[] for _ in range(n)]
        for i in range(n):
            for j in set(preds[i]):
                succ[j].append(i)
        queue = deque(i for i in range(n) if indeg[i] == 0)
        topo = []
        while queue:
            i = queue.popleft()
            topo.append(i)
            for k in succ[i]:
                indeg[k] -= 1
                if indeg[k] == 0:
                    queue.append(k)
        if len(topo) != n:
            raise OnnxAmpError(f"{self.name}: the graph has a cycle; not a valid ONNX model")
        return topo

    def vkind(self, v: ir.Value) -> int:
        k = self.vk.get(v)
        if k is None:  # an outer-scope or otherwise unknown value
            k = CONST if (v.producer() is None and v.const_value is not None) else DATA
        return k

    def _node_kind(self, i: int) -> int:
        nd = self.nodes[i]
        op = nd.op_type
        ins = self.inputs_of[i]
        if op == "Constant" and nd.domain in _STD_DOMAIN:
            return CONST
        if op in SHAPE_OPS and nd.domain in _STD_DOMAIN:
            return STATIC
        if not ins or op in NONDETERMINISTIC_OPS:
            return DATA
        k = CONST
        vk = self.vk
        for v in ins:
            kv = vk.get(v)
            if kv is None:
                kv = self.vkind(v)
            if kv == DATA:
                return DATA
            if kv == STATIC:
                k = STATIC
        return k

    def _layer_kind(self, nd: ir.Node) -> tuple[str, int | None, ir.Value | None] | None:
        """(kind, weight input index, activation operand) of a data node that is a layer, else None."""
        if nd.op_type not in LAYER_OPS or nd.domain not in _STD_DOMAIN or len(nd.inputs) < 2:
            return None
        a, b = nd.inputs[0], nd.inputs[1]
        if a is None or b is None:
            return None
        ka, kb = self.vkind(a), self.vkind(b)
        if kb == CONST and ka == DATA:
            return ("weight", 1, a)
        if ka == CONST and kb == DATA and nd.op_type in ("MatMul", "Gemm"):
            return ("weight", 0, b)
        if ka == DATA and kb == DATA:
            return ("act_act", None, a)
        return None  # an operand is shape-derived (rotary/position tables): side computation

    def classify(self) -> None:
        """Constant / static / data kind of every node and value; layers; main nodes."""
        graph = self.graph
        for v in graph.inputs:
            self.vk[v] = DATA
        for v in graph.initializers.values():
            self.vk[v] = CONST
        main, preds = self.main, self.preds
        for i in self.topo:
            k = self.kind[i] = self._node_kind(i)
            for o in self.nodes[i].outputs:
                self.vk[o] = k
            if k != DATA:
                continue
            info = self._layer_kind(self.nodes[i])
            if info is not None:
                self.is_layer[i] = True
                self.layer_info[i] = info
                main[i] = True
            else:
                main[i] = any(main[j] for j in preds[i])
        if not any(self.is_layer):
            raise OnnxAmpError(f"{self.name}: no quantizable layer (MatMul/Gemm/Conv) found")

    def cut(self, main: list[bool], extra_source: list[bool]) -> None:
        """Cut points and (layer-merged) regions of the main subgraph ``main``."""
        self.main, self.src_flags = main, extra_source
        preds, n = self.preds, self.n
        main_order = self.main_order = [i for i in self.topo if main[i]]
        m = len(main_order)
        mpos = [0] * n
        for p, i in enumerate(main_order, start=1):
            mpos[i] = p
        has_main_succ = self.has_main_succ = [False] * n
        maxt = [0] * (m + 2)
        for i in main_order:
            pi = mpos[i]
            any_main_pred = extra_source[i]
            for j in preds[i]:
                if main[j]:
                    any_main_pred = True
                    has_main_succ[j] = True
                    if pi > maxt[mpos[j]]:
                        maxt[mpos[j]] = pi
            if (not any_main_pred or extra_source[i]) and pi > maxt[0]:
                maxt[0] = pi
        for i in main_order:
            if not has_main_succ[i]:
                maxt[mpos[i]] = m + 1
        self.cut_pos = []
        running = maxt[0]
        for p in range(1, m + 1):
            if running <= p:
                self.cut_pos.append(p)
            if maxt[p] > running:
                running = maxt[p]
        self._segments()

    def _segments(self) -> None:
        """Segments (c_{k-1}, c_k] and the trailing one; layerless ones merge into the next."""
        main_order, m = self.main_order, len(self.main_order)
        bounds = [0] + self.cut_pos
        segs = [(bounds[k - 1], bounds[k], True) for k in range(1, len(bounds))]
        if bounds[-1] < m:
            segs.append((bounds[-1], m, False))
        layer_prefix = [0] * (m + 1)
        for p, i in enumerate(main_order, start=1):
            layer_prefix[p] = layer_prefix[p - 1] + (1 if self.is_layer[i] else 0)
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
        region_idx = [-1] * self.n
        for r, (st, en, _) in enumerate(merged):
            for p in range(st + 1, en + 1):
                region_idx[main_order[p - 1]] = r
        self.merged, self.region_idx = merged, region_idx

    def _main_regions_reading(self, v: ir.Value) -> set[int]:
        regs = set()
        for use in v.uses():
            j = self.index.get(use.node)
            if j is not None and self.main[j]:
                regs.add(self.region_idx[j])
        for j in self.captured_by.get(v, ()):
            if self.main[j]:
                regs.add(self.region_idx[j])
        return regs

    def promote_primary_stream(self) -> None:
        """The side computation feeding the activation of the first layers (token embedding,
        first norm; or a graph input read directly) joins the main graph, so the first block keeps
        its residual edge like every other block. A value whose main consumers lie in more than two
        regions is a broadcast side input (mask-like) and stops the promotion."""
        n, main, preds, index = self.n, self.main, self.preds, self.index
        promoted = [False] * n
        promoted_inputs: set[ir.Value] = set()
        stack = []
        for i in self.main_order:
            if self.is_layer[i] and not any(main[j] for j in preds[i]):
                lk, _, act = self.layer_info[i]
                stack.extend(v for v in self.inputs_of[i] if self.vkind(v) == DATA and (lk == "act_act" or v is act))
        seen: set[ir.Value] = set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            prod = v.producer()
            j = index.get(prod) if prod is not None else None
            if prod is not None and (j is None or main[j] or self.kind[j] != DATA):
                continue
            outs = [v] if prod is None else prod.outputs
            if len(set().union(*(self._main_regions_reading(o) for o in outs))) > 2:
                continue  # broadcast (mask-like) side input
            if prod is None:
                promoted_inputs.add(v)
            elif not promoted[j]:
                promoted[j] = True
                stack.extend(x for x in self.inputs_of[j] if self.vkind(x) == DATA)
        if not (any(promoted) or promoted_inputs):
            return
        new_main = [a or b for a, b in zip(main, promoted)]
        extra = [new_main[i] and any(v in promoted_inputs for v in self.inputs_of[i]) for i in range(n)]
        self.cut(new_main, extra)

    def attach_side_nodes(self) -> None:
        """Each side node joins the region of its first consumer in topological order."""
        first_consumer = [-1] * self.n
        for i in self.topo:
            for j in self.preds[i]:
                if first_consumer[j] == -1:
                    first_consumer[j] = i
        self.side_order = [i for i in self.topo if not self.main[i]]
        last = len(self.merged) - 1
        for i in reversed(self.side_order):
            fc = first_consumer[i]
            self.region_idx[i] = self.region_idx[fc] if fc != -1 else last

    def layers_and_units(self) -> None:
        self.names, self.renamed = _unique_names(self.nodes)
        self.rid_names = [f"r{r}" for r in range(len(self.merged))]
        layers: dict[str, Layer] = {}
        self.lid_of: dict[int, str] = {}
        for i in self.topo:
            if not self.is_layer[i]:
                continue
            nd = self.nodes[i]
            lk, w_index, act = self.layer_info[i]
            lid = self.lid_of[i] = f"L{len(layers)}"
            layers[lid] = Layer(
                id=lid, node=nd, name=self.names[nd], op=nd.op_type, kind=lk,
                region=self.rid_names[self.region_idx[i]], module=nd.metadata_props.get(ann.MODULE),
                weight_input=w_index, weight_axis=_weight_axis(nd, w_index) if w_index is not None else None,
                activation=act,
            )
        units: dict[str, list[str]] = {}
        unit_key: dict[tuple, str] = {}
        for lid, L in layers.items():
            key = ("w", L.activation, L.region) if L.kind == "weight" else ("aa", lid)
            u = unit_key.get(key)
            if u is None:
                u = unit_key[key] = f"U{len(units)}"
                units[u] = []
            units[u].append(lid)
            L.unit = u
        self.layers, self.units = layers, units

    def _has_main_use(self, v: ir.Value) -> bool:
        for use in v.uses():
            j = self.index.get(use.node)
            if j is not None and self.main[j]:
                return True
        return any(self.main[j] for j in self.captured_by.get(v, ()))

    def _entry(self, st: int, en: int) -> list[ir.Value]:
        nodes, main, index, mo = self.nodes, self.main, self.index, self.main_order
        if st > 0:
            return [o for o in nodes[mo[st - 1]].outputs if self._has_main_use(o)]
        entry = []
        for p in range(1, en + 1):
            i = mo[p - 1]
            if self.src_flags[i] or not any(main[j] for j in self.preds[i]):
                entry.extend(v for v in self.inputs_of[i]
                             if self.vkind(v) == DATA and not (v.producer() in index and main[index[v.producer()]]))
        return _dedup(entry)

    def _exit(self, st: int, en: int, closed: bool) -> list[ir.Value]:
        nodes, mo = self.nodes, self.main_order
        graph_outputs = set(self.graph.outputs)
        if closed and en < len(mo):
            return _dedup([o for o in nodes[mo[en - 1]].outputs if o in graph_outputs or self._has_main_use(o)])
        ends = [nodes[mo[p - 1]] for p in range(st + 1, en + 1) if not self.has_main_succ[mo[p - 1]]]
        outs = [o for e in ends for o in e.outputs]
        return _dedup([o for o in outs if o in graph_outputs] or [o for o in outs if o.uses()] or outs)

    def result(self) -> Partition:
        nodes, mo = self.nodes, self.main_order
        region_nodes: list[list[ir.Node]] = [[] for _ in self.merged]
        for i in self.topo:
            region_nodes[self.region_idx[i]].append(nodes[i])
        regions: list[Region] = []
        for r, (st, en, closed) in enumerate(self.merged):
            lids = [self.lid_of[i] for i in (mo[p - 1] for p in range(st + 1, en + 1)) if i in self.lid_of]
            ru: dict[str, list[str]] = {}
            for lid in lids:
                ru.setdefault(self.layers[lid].unit, []).append(lid)
            regions.append(Region(id=self.rid_names[r], entry=self._entry(st, en), exit=self._exit(st, en, closed),
                                  nodes=region_nodes[r], layers=lids, units=ru,
                                  cut_point=nodes[mo[en - 1]] if closed else None))
        return Partition(
            regions=regions, layers=self.layers, units=self.units,
            region_of=dict(zip(nodes, [self.rid_names[r] for r in self.region_idx])),
            main_nodes=[nodes[i] for i in mo], side_nodes=[nodes[i] for i in self.side_order],
            cut_points=[nodes[mo[p - 1]] for p in self.cut_pos], names=self.names, renamed=self.renamed,
            order=[nodes[i] for i in self.topo],
        )


def _dedup(vals):
    seen, out = set(), []
    for v in vals:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
