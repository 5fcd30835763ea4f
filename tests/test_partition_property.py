"""Property test: cut points on random DAGs equal the brute-force definition; regions are
single-entry/single-exit, hold a layer each, are finest, and cover every node once."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx_amp.passes.partition import partition
from onnx_amp.tools.synthetic import G


@st.composite
def random_dag(draw):
    n = draw(st.integers(2, 14))
    spec = []
    for i in range(n):
        k = draw(st.integers(0, min(3, i))) if i else 0
        preds = sorted(set(draw(st.lists(st.integers(0, i - 1), min_size=k, max_size=k)))) if i else []
        kind = draw(st.sampled_from(["mm", "mm", "relu"])) if len(preds) == 1 else None
        mask = draw(st.booleans())  # side input added here
        shape_from = draw(st.integers(0, i - 1)) if i and draw(st.booleans()) else None
        out = draw(st.integers(0, 5)) == 0  # also a graph output (mid-graph output)
        spec.append((preds, kind, mask, shape_from, out))
    return spec


def build(spec):
    g = G(d=4)
    x = g.input("x", [2, 4])
    g.input("mask", [2, 4])
    side = g.op("Mul", ["mask", g.weight(arr=np.array(-2.0, np.float32))], name="side_mask")
    vals, consumed, extra_outs = [], set(), []
    for i, (preds, kind, mask, shape_from, out) in enumerate(spec):
        if not preds:
            v = g.mm(x, name=f"d{i}")
        elif len(preds) == 1:
            v = g.mm(vals[preds[0]], name=f"d{i}") if kind == "mm" else g.op("Relu", [vals[preds[0]]], name=f"d{i}")
        else:
            v = g.op("Sum", [vals[p] for p in preds], name=f"d{i}")
        consumed.update(preds)
        if mask:
            v = g.op("Add", [v, side], name=f"d{i}.mask")
        if shape_from is not None:
            shp = g.op("Shape", [vals[shape_from]], name=f"d{i}.shape")
            v = g.op("Reshape", [v, shp], name=f"d{i}.reshape")
        vals.append(v)
        if out:
            extra_outs.append(v)
    outs = [vals[i] for i in range(len(spec)) if i not in consumed]
    outs += [o for o in extra_outs if o not in outs]
    return g.model(outs)


def brute_force_cuts(p):
    mains = p.main_nodes
    mset = set(mains)
    succ = {n: [] for n in mains}
    has_pred = set()
    for n in mains:
        for v in n.inputs:
            if v is not None and v.producer() in mset:
                succ[v.producer()].append(n)
                has_pred.add(n)
    SRC, SNK = "src", "snk"
    adj = {SRC: [n for n in mains if n not in has_pred], SNK: []}
    for n in mains:
        adj[n] = succ[n] if succ[n] else [SNK]
    cuts = []
    for v in mains:
        seen, stack = {SRC}, [SRC]
        while stack:
            u = stack.pop()
            for w in adj[u]:
                if w is not v and w not in seen:
                    seen.add(w)
                    stack.append(w)
        if SNK not in seen:
            cuts.append(v)
    return cuts


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(random_dag())
def test_cut_points_match_brute_force(spec):
    model = build(spec)
    p = partition(model)
    names = {n.name for n in p.main_nodes}
    # every generated DAG node is main; the side mask and Shape nodes are not
    assert {f"d{i}" for i in range(len(spec))} <= names
    assert "side_mask" not in names and not any(nm.endswith(".shape") for nm in names)
    assert [n.name for n in p.cut_points] == [n.name for n in brute_force_cuts(p)]

    # regions cover every node exactly once, in topological order
    all_nodes = [n for r in p.regions for n in r.nodes]
    assert sorted(n.name for n in all_nodes) == sorted(n.name for n in model.graph)
    cutset = set(p.cut_points)
    pos = {n: i for i, n in enumerate(p.main_nodes)}
    prev_exit = None
    for k, r in enumerate(p.regions):
        rm = [n for n in r.nodes if n in pos]
        rmset = set(rm)
        assert r.layers, "every region holds a layer"
        # contiguous in the main order
        idx = sorted(pos[n] for n in rm)
        assert idx == list(range(idx[0], idx[-1] + 1))
        # single entry: main edges from outside come only from the previous closing cut point
        for n in rm:
            for v in n.inputs:
                pr = v.producer() if v is not None else None
                if pr in pos and pr not in rmset:
                    assert pr is prev_exit, (r.id, n.name, pr.name)
        # single exit: main edges leaving the region leave from its closing cut point
        for n in rm:
            for o in n.outputs:
                for use in o.uses():
                    if use.node in pos and use.node not in rmset:
                        assert n is r.cut_point, (r.id, n.name)
        if k < len(p.regions) - 1:
            assert r.cut_point is not None and r.cut_point in cutset and r.cut_point is rm[-1]
        # finest: no internal cut point splits the region into two parts that both hold a layer
        lay = [1 if n.op_type == "MatMul" and any(L.node is n for L in p.layers.values()) else 0 for n in rm]
        for j, n in enumerate(rm[:-1]):
            if n in cutset:
                assert sum(lay[: j + 1]) == 0 or sum(lay[j + 1 :]) == 0, (r.id, n.name)
        prev_exit = r.cut_point
    # units never cross regions; unit members read the same activation
    for r in p.regions:
        for u, ls in r.units.items():
            assert p.units[u] == ls
            acts = {p.layers[l].activation for l in ls}
            assert len(acts) == 1
