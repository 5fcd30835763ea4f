"""What OpenVINO really executed: each layer's precision read from the compiled model's runtime graph,
compared with the plan (``runtime.backends.openvino``: ``executed_layers``, ``precision_mismatches``)."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir

from onnx_amp.core import annotations as A

from onnx_amp.runtime.backends.openvino import (  # noqa: F401
    _COMPUTE_TYPES, _CONST_TYPES, _FUSED_TYPES, _OV_PRECISION, _WIDTH, EXECUTES_AS, OpenVinoSession,
)


def _rt(op, key: str) -> str:
    r = op.get_rt_info()
    return r[key].astype(str) if key in r else ""


def _prec(t) -> str:
    s = str(t.get_type_name()) if hasattr(t, "get_type_name") else str(t)
    return _OV_PRECISION.get(s, s)


def runtime_ops(session: OpenVinoSession) -> list[dict[str, Any]]:
    """Every executed op of the runtime model: name, layerType, runtimePrecision, primitiveType,
    originalLayersNames, input precisions and which inputs are constant (weights)."""
    rm = session.compiled.get_runtime_model()
    const: dict[str, bool] = {}
    ops = rm.get_ordered_ops()
    by_name = {}
    for op in ops:
        name = op.get_friendly_name()
        lt = _rt(op, "layerType")
        ins = [i.get_node() for i in op.input_values()]
        const[name] = lt in _CONST_TYPES or (lt not in ("Input", "Parameter") and bool(ins)
                                             and all(const.get(i.get_friendly_name(), False) for i in ins))
        by_name[name] = op
    out = []
    for op in ops:
        lt = _rt(op, "layerType")
        if lt in _CONST_TYPES or lt in ("Input", "Output", "Parameter", "Result"):
            continue
        ins = [i.get_node() for i in op.input_values()]
        out.append({
            "name": op.get_friendly_name(), "layer_type": lt, "runtime_precision": _rt(op, "runtimePrecision"),
            "primitive": _rt(op, "primitiveType"),
            "original": [n for n in _rt(op, "originalLayersNames").split(",") if n],
            "inputs": [{"name": i.get_friendly_name(), "precision": _prec(op.input(j).get_element_type()),
                        "const": const.get(i.get_friendly_name(), False),
                        "names": _const_names(i, const, by_name) if const.get(i.get_friendly_name(), False) else []}
                       for j, i in enumerate(ins)],
            "constant": const.get(op.get_friendly_name(), False),
        })
    return out


def _const_names(node, const: dict[str, bool], by_name: dict, depth: int = 0) -> list[str]:
    """Names along a constant (weight) input path: the weight's Transpose/Convert/DQ ops."""
    if depth > 6:
        return []
    names = [node.get_friendly_name()] + [n for n in _rt(node, "originalLayersNames").split(",") if n]
    for i in node.input_values():
        p = i.get_node()
        if const.get(p.get_friendly_name(), False):
            names += _const_names(p, const, by_name, depth + 1)
    return names


def executed_layers(session: OpenVinoSession) -> dict[str, dict[str, Any]]:
    """Layer node name -> what ran it: ``op`` (runtime op name), ``layer_type``, ``runtime_precision``,
    ``primitive``, ``compute`` (onnx-amp name of the precision of its activation inputs: ``fp32``,
    ``bf16``, ``int8``), ``weights`` (precision of its constant weight input in memory, or None).
    A layer missing from the result was fused away (or folded) where no runtime op names it."""
    info = session.graph_info
    found: dict[str, tuple[int, dict]] = {}
    fused_ops: dict[str, dict] = {}  # ONNX node -> the attention kernel op naming it
    for op in runtime_ops(session):
        if op["constant"]:
            continue
        own = set(op["original"]) | {op["name"]}
        weight_names = [n for i in op["inputs"] if i["const"] for n in i["names"]]
        layers = set()
        for nm in own:
            node = info.resolve(nm)
            if node and info.nodes[node]["layer"]:
                layers.add(node)
        for nm in weight_names:  # a weight's Transpose/DQ names its layer (bias fusion renames the op)
            node = info.resolve(nm)
            if node is None:
                continue
            nd = info.nodes[node]
            if nd["layer"]:
                layers.add(node)
            elif nd["inserted_for"]:
                owner = info.layer_of_id().get(nd["inserted_for"])
                if owner:
                    layers.add(owner)
        if not layers and op["layer_type"] in _COMPUTE_TYPES:
            # a matrix kernel named after what it absorbed (the bias Add, with compressed weights whose
            # Transpose has no name; the attention scale Mul after a score MatMul): the layer feeding
            # that node (an activation-activation layer only for a kernel without constant operands)
            act_act = not any(i["const"] for i in op["inputs"][:2])
            for nm in own:
                node = info.resolve(nm)
                for prod in info.producers.get(node, []) if node else []:
                    nd = info.nodes.get(prod, {})
                    if nd.get("layer") and (nd.get("kind") == "weight" or act_act):
                        layers.add(prod)
        if not layers:
            continue
        rank = 0 if op["layer_type"] in _COMPUTE_TYPES else 1
        # a matrix kernel computes at its activation inputs' precision (runtimePrecision says i8 for an
        # f32 kernel with int8 weights); a fused kernel (attention Subgraph) also reads masks: use its own
        # (inputs 0-1: data and weights, or the two operands; later ones are biases or a fused residual sum)
        acts = [i for i in op["inputs"][:2] if not i["const"] and i["precision"] in _WIDTH]
        compute = max((i["precision"] for i in acts), key=lambda p: _WIDTH[p], default=None)
        if compute is None or op["layer_type"] not in _COMPUTE_TYPES:
            compute = _OV_PRECISION.get(op["runtime_precision"], op["runtime_precision"])
        weights = None
        if op["layer_type"] in _COMPUTE_TYPES and len(op["inputs"]) > 1 and op["inputs"][1]["const"]:
            weights = op["inputs"][1]["precision"]
        entry = {"op": op["name"], "layer_type": op["layer_type"], "runtime_precision": op["runtime_precision"],
                 "primitive": op["primitive"], "compute": compute, "weights": weights,
                 "_inputs": op["inputs"], "_original": op["original"]}
        for lay in layers:
            if lay not in found or rank < found[lay][0]:
                found[lay] = (rank, entry)
        if op["layer_type"] in _FUSED_TYPES:
            for nm in own:
                node = info.resolve(nm)
                if node:
                    fused_ops.setdefault(node, entry)
    _fused_act_act(info, found, fused_ops)
    return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, (_, v) in found.items()}


def _fused_act_act(info, found: dict, fused_ops: dict) -> None:
    """Activation-activation layers inside fused attention kernels (in place on ``found``)."""
    # an activation-activation layer fused into an attention kernel (snippets "Subgraph", SDPA) may
    # lose its name there (the first attention MatMul does): find it through the nodes it feeds
    # (scale Mul, mask Add, Softmax, the second MatMul), at most 5 steps
    for name, nd in info.nodes.items():
        if not nd["layer"] or nd["kind"] != "act_act" or name in found:
            continue
        todo, seen = [(c, 1) for c in info.consumers.get(name, [])], set()
        while todo:
            c, d = todo.pop(0)
            if c in seen or c not in info.nodes:
                continue
            seen.add(c)
            if c in fused_ops:
                found[name] = (2, {**fused_ops[c], "via": c})
                break
            if d < 5 and not info.nodes[c]["layer"]:
                todo += [(cc, d + 1) for cc in info.consumers.get(c, [])]
    for name, (rank, e) in list(found.items()):
        if info.nodes[name]["kind"] == "act_act" and e["layer_type"] in _FUSED_TYPES:
            c = _fused_act_act_compute(info, name, e)
            if c is not None and c != e["compute"]:
                found[name] = (rank, {**e, "compute": c})


def _fused_act_act_compute(info, name: str, e: dict) -> str | None:
    """The precision of one activation-activation layer inside a fused attention kernel (a snippets
    Subgraph holds both attention MatMuls, and its own precision is that of the first one's operands):
    int8 when the kernel absorbed Q/DQ inserted for this layer, else the widest precision of the
    kernel inputs this layer reads (its ONNX operands, up through non-layer ops, at most 4 steps)."""
    lid = info.nodes[name]["layer"]
    for nm in e["_original"]:
        node = info.resolve(nm)
        nd = info.nodes.get(node or "", {})
        if nd.get("inserted_for") == lid and nd.get("op") in ("QuantizeLinear", "DequantizeLinear"):
            return "int8"
    anc, todo = set(), [(p, 1) for p in info.producers.get(name, [])]
    while todo:
        p, d = todo.pop()
        if p in anc or p not in info.nodes:
            continue
        anc.add(p)
        if d < 4 and (not info.nodes[p]["layer"] or info.nodes[p]["inserted_for"]):
            todo += [(pp, d + 1) for pp in info.producers.get(p, [])]
    precs = [i["precision"] for i in e["_inputs"] if not i["const"] and info.resolve(i["name"]) in anc
             and i["precision"] in _WIDTH]
    if not precs:
        return None
    return max(precs, key=lambda p: _WIDTH[p])


def expected_precision(planned: str, kind: str = "weight", strict: bool = False) -> tuple[str, str | None]:
    """(compute, weights) OpenVINO's CPU plugin runs a layer planned as ``planned`` (``w=..,a=..``) at,
    lowered with :data:`LOWERING`: the wider of the two operands as OpenVINO executes them
    (:data:`EXECUTES_AS`; ``strict``: FP8 expected as FP8). Weights: int8 stays int8 in memory, FP8 is
    decompressed to the compute precision, bf16/fp32 as they are."""
    w, a = A.parse_precision(planned)
    ex = (lambda f: f) if strict else (lambda f: EXECUTES_AS.get(f, f))
    if kind == "act_act":
        return ex(a), None
    ew, ea = ex(w), ex(a)
    compute = ew if _WIDTH.get(ew, 32) >= _WIDTH.get(ea, 32) else ea
    if w == "int8":
        weights = "int8"
    elif w.startswith("fp8") and not strict:
        weights = compute
    else:
        weights = ew
    return compute, weights


def precision_mismatches(model_planned: ir.Model, session: OpenVinoSession,
                         strict: bool = False) -> list[dict[str, Any]]:
    """Layers of ``model_planned`` (``onnx_amp.precision`` on each layer node; the rewritten model
    or the one before the rewrite: same node names) that OpenVINO did not run as planned. Each
    item: ``node``, ``layer``, ``planned``, ``expected`` / ``executed`` (compute precision),
    ``expected_weights`` / ``executed_weights``, ``kind`` and the runtime ``op`` / ``layer_type``.
    Kinds: ``fused_away`` (no runtime op names the layer), ``upcast`` (ran wider than planned: kept
    in FP32, or bf16 for INT8), ``downcast`` (ran narrower: an FP32 layer in bf16), ``weights``
    (right compute, but weights held wider, e.g. INT8 weights decompressed to f32), ``not_a_kernel``
    (only found inside an element-wise/other op). ``strict``: FP8 layers count as upcast (OpenVINO
    has no FP8 arithmetic; by default they are expected as bf16, what :data:`EXECUTES_AS` says)."""
    ran = executed_layers(session)
    out = []
    for n in model_planned.graph.all_nodes():
        p = n.metadata_props
        if A.LAYER not in p or A.INSERTED_BY in p or A.PRECISION not in p:
            continue
        planned = p[A.PRECISION]
        kind_ = p.get(A.LAYER_KIND, "weight")
        exp_c, exp_w = expected_precision(planned, kind_, strict)
        item = {"node": n.name, "layer": p[A.LAYER], "op_type": n.op_type, "planned": planned, "expected": exp_c,
                "expected_weights": exp_w, "executed": None, "executed_weights": None, "op": None, "layer_type": None}
        e = ran.get(n.name)
        if e is None:
            out.append({**item, "kind": "fused_away"})
            continue
        item.update(executed=e["compute"], executed_weights=e["weights"], op=e["op"], layer_type=e["layer_type"])
        if e["compute"] != exp_c:
            wider = _WIDTH.get(e["compute"], 32) > _WIDTH.get(exp_c, 32) or (
                _WIDTH.get(e["compute"], 32) == _WIDTH.get(exp_c, 32) and exp_c.startswith("fp8"))
            out.append({**item, "kind": "upcast" if wider else "downcast"})
        elif e["layer_type"] not in _COMPUTE_TYPES and not (kind_ == "act_act" and e["layer_type"] == "Subgraph"):
            out.append({**item, "kind": "not_a_kernel"})
        elif exp_w is not None and e["weights"] is not None and _WIDTH.get(e["weights"], 32) > _WIDTH.get(exp_w, 32):
            out.append({**item, "kind": "weights"})
    return out


def format_mismatches(items: list[dict[str, Any]], limit: int = 20) -> str:
    """One line per mismatch (for reports and tools)."""
    lines = []
    for m in items[:limit]:
        ran = "not in the runtime graph" if m["kind"] == "fused_away" else (
            f"ran {m['executed']} (weights {m['executed_weights']}) in {m['layer_type']} {m['op']!r}")
        lines.append(f"{m['layer']} {m['node']} [{m['op_type']}]: planned {m['planned']} -> expected {m['expected']}, "
                     f"{ran}: {m['kind']}")
    if len(items) > limit:
        lines.append(f"... {len(items) - limit} more")
    return "\n".join(lines)


def plan_check(model_planned: ir.Model, session: OpenVinoSession) -> dict[str, Any]:
    """The executed-precision check of a compiled plan: how many planned layers ran at each compute
    precision, and every layer that did not run as planned (:func:`precision_mismatches`)."""
    from collections import Counter

    ran = executed_layers(session)
    planned = [n.name for n in model_planned.graph.all_nodes()
               if A.LAYER in n.metadata_props and A.INSERTED_BY not in n.metadata_props
               and A.PRECISION in n.metadata_props]
    mm = precision_mismatches(model_planned, session)
    return {"backend": "openvino_cpu", "layers": len(planned),
            "executed": dict(Counter(ran[n]["compute"] for n in planned if n in ran)),
            "mismatches": mm, "text": format_mismatches(mm), "compile_workaround": getattr(session, "fallback", None)}
