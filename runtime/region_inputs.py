"""What region profiling reads from the model: feeds, the values regions read in a real run, the
structural hash that lets identical regions share measurements, and the weight/amax annotations a
region needs before it can be lowered (``runtime.profile``)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.ort_session import ORT_MAX_IR

SMALL_CONST = 64  # constants up to this many elements enter the structural hash by value


# ---------------------------------------------------------------------------------------------
# inputs from a real run
# ---------------------------------------------------------------------------------------------

def sample_feeds(model: ir.Model, batch_size: int = 1, seq_len: int = 32, seed: int = 0,
                 vocab: int = 1000) -> dict[str, np.ndarray]:
    """Feeds for the graph inputs: token ids in [0, vocab), masks of ones, N(0,1) floats.
    Symbolic dims: axis 0 -> batch_size, others -> seq_len."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        if v.const_value is not None:
            continue
        shape = [d if isinstance(d, int) else (batch_size if i == 0 else seq_len) for i, d in enumerate(v.shape or [])]
        dt = v.dtype.numpy()
        name = (v.name or "").lower()
        if np.issubdtype(dt, np.integer):
            if "mask" in name:
                feeds[v.name] = np.ones(shape, dt)
            elif "type" in name or "segment" in name:
                feeds[v.name] = np.zeros(shape, dt)
            elif "position" in name:
                feeds[v.name] = np.broadcast_to(np.arange(shape[-1], dtype=dt), shape).copy()
            else:
                feeds[v.name] = rng.integers(0, vocab, shape).astype(dt)
        elif dt == np.bool_:
            feeds[v.name] = np.ones(shape, dt)
        else:
            feeds[v.name] = rng.standard_normal(shape).astype(dt)
    return feeds


def run_with_values(model: ir.Model, feeds: dict[str, np.ndarray], names: Sequence[str],
                    scratch_dir: str | None = None) -> dict[str, np.ndarray]:
    """Run ``model`` once in ORT and return the named intermediate values (model unchanged)."""
    import os
    import tempfile

    import onnxruntime as ort

    values = {v.name: v for v in _iter_values(model.graph)}
    wanted = [n for n in dict.fromkeys(names) if n in values and n not in feeds]
    missing = [n for n in names if n not in values and n not in feeds]
    if missing:
        raise OnnxAmpError(f"values {missing[:5]} not found in the model")
    outs = list(model.graph.outputs)
    added = [values[n] for n in wanted if values[n] not in outs and not values[n].is_initializer()]
    model.graph.outputs.extend(added)
    ir_version = model.ir_version
    model.ir_version = min(ir_version or ORT_MAX_IR, ORT_MAX_IR)
    try:
        with tempfile.TemporaryDirectory(dir=scratch_dir) as d:
            p = os.path.join(d, "m.onnx")
            ir.save(model, p, external_data="m.onnx.data")
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
            out_names = [o.name for o in sess.get_outputs()]
            res = sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})
    finally:
        model.ir_version = ir_version
        for _ in added:
            model.graph.outputs.pop()
    got = dict(zip(out_names, res))
    got.update({k: v for k, v in feeds.items() if k in names})
    for n in wanted:
        if n not in got and values[n].const_value is not None:
            got[n] = values[n].const_value.numpy()
    return got


def _iter_values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for n in graph:
        yield from n.outputs


# ---------------------------------------------------------------------------------------------
# structural hash
# ---------------------------------------------------------------------------------------------

def _attr_repr(attr: ir.Attr) -> str:
    v = attr.value
    if isinstance(v, ir.TensorProtocol):
        a = v.numpy()
        return f"T{a.dtype}{a.shape}" + (repr(a.tolist()) if a.size <= SMALL_CONST else "")
    if isinstance(v, ir.Graph):
        return f"G{len(v)}"
    return repr(v)


def structural_hash(nodes: Sequence[ir.Node], input_sigs: dict[str, str], units: Sequence[str]) -> str:
    """Hash of a node list: ops, attributes, wiring, external input signatures (shape/dtype or
    small constant values) and the position of each node's unit in ``units``."""
    h = hashlib.sha1()
    local: dict[int, str] = {}
    unit_pos = {u: i for i, u in enumerate(units)}
    ext_index: dict[str, int] = {}
    for i, node in enumerate(nodes):
        parts = [node.domain, node.op_type, str(len(node.outputs))]
        for k in sorted(node.attributes):
            parts.append(f"{k}={_attr_repr(node.attributes[k])}")
        for v in node.inputs:
            if v is None:
                parts.append("-")
            elif id(v) in local:
                parts.append(local[id(v)])
            else:
                if v.name not in ext_index:
                    ext_index[v.name] = len(ext_index)
                parts.append(f"x{ext_index[v.name]}:{input_sigs.get(v.name, '?')}")
        u = ann.get_str(node, ann.UNIT)
        kind = ann.get_str(node, ann.LAYER_KIND)
        if u is not None:
            parts.append(f"u{unit_pos.get(u, -1)}:{kind}:{ann.get_str(node, ann.WEIGHT_INPUT)}")
        for j, o in enumerate(node.outputs):
            local[id(o)] = f"n{i}.{j}"
        h.update("|".join(parts).encode())
        h.update(b"\n")
    return h.hexdigest()


def _value_sig(v: ir.Value, shapes: dict[str, tuple]) -> str:
    cv = v.const_value
    if cv is None and v.producer() is not None and v.producer().op_type == "Constant":
        attr = v.producer().attributes.get("value")
        cv = attr.as_tensor() if attr is not None else None
    if cv is not None:
        shape = tuple(cv.shape)
        if int(np.prod(shape)) <= SMALL_CONST:
            return f"c{cv.dtype}{shape}{cv.numpy().tolist()!r}"
        return f"c{cv.dtype}{shape}"
    return f"{v.dtype}{shapes.get(v.name)}"


# ---------------------------------------------------------------------------------------------
# annotations a region needs before lowering
# ---------------------------------------------------------------------------------------------

def annotate_amax_from_run(model: ir.Model, values: dict[str, np.ndarray], overwrite: bool = False) -> int:
    """Write ``onnx_amp.amax.a/.b/.y`` (max |x| of the activation operands and output in ``values``)
    and ``onnx_amp.amax.w`` (per output channel) on layer nodes that lack them. For timing only: the
    calibration pass writes the real ones. Returns how many layers were annotated."""
    n = 0
    for node in model.graph:
        if ann.get_str(node, ann.LAYER) is None:
            continue
        if not overwrite and ann.get_str(node, ann.AMAX_A) is not None:
            continue
        kind = ann.get_str(node, ann.LAYER_KIND, "weight")
        a = node.inputs[0]
        if a is None or a.name not in values:
            continue
        ann.set_float(node, ann.AMAX_A, float(np.max(np.abs(values[a.name]))) or 1.0)
        y = node.outputs[0]
        if y.name in values:
            ann.set_float(node, ann.AMAX_Y, float(np.max(np.abs(values[y.name]))) or 1.0)
        if kind == "act_act":
            b = node.inputs[1]
            if b is not None and b.name in values:
                ann.set_float(node, ann.AMAX_B, float(np.max(np.abs(values[b.name]))) or 1.0)
        else:
            wi = int(ann.get_str(node, ann.WEIGHT_INPUT, "1"))
            w = _const_array(node.inputs[wi])
            if w is not None:
                axis = int(ann.get_str(node, ann.WEIGHT_AXIS, "0"))
                ax = axis % w.ndim
                red = tuple(i for i in range(w.ndim) if i != ax)
                amax = np.max(np.abs(w), axis=red) if red else np.abs(w)
                amax = np.where(amax > 0, amax, 1.0)
                ann.set_json(node, ann.AMAX_W, [float(x) for x in amax.ravel()])
        n += 1
    return n


def _type_io(model: ir.Model, values: dict[str, np.ndarray]) -> None:
    """Give the graph inputs/outputs of an extracted region the dtype/shape seen in the real run
    (ORT needs typed inputs; models built without value_info lack them)."""
    for v in list(model.graph.inputs) + list(model.graph.outputs):
        arr = values.get(v.name)
        if arr is None:
            continue
        if v.dtype is None:
            v.dtype = ir.DataType.from_numpy(arr.dtype)
        if v.shape is None:
            v.shape = ir.Shape(arr.shape)


def _const_array(v: ir.Value | None) -> np.ndarray | None:
    """Value of a constant (initializer, Constant node, or a chain of simple ops on one): the
    rewrite's own folding, so the profiler and the rewrite agree on what is a weight."""
    from onnx_amp.passes.rewrite import _const_array as fold

    return None if v is None else fold(v)


def fold_weight_constants(model: ir.Model) -> int:
    """Give every weight layer whose weight is a constant chain (Transpose/Cast of an initializer,
    a Constant node; e.g. tied embeddings) a folded initializer, so the rewrite can quantize it.
    In place; returns the number of weights folded."""
    n = 0
    for node in model.graph:
        if ann.get_str(node, ann.LAYER) is None or ann.get_str(node, ann.LAYER_KIND, "weight") != "weight":
            continue
        wi = int(ann.get_str(node, ann.WEIGHT_INPUT, "1"))
        w = node.inputs[wi]
        if w is None or w.const_value is not None:
            continue
        arr = _const_array(w)
        if arr is None:
            continue
        name = f"{w.name}/folded"
        if name in model.graph.initializers:
            v = model.graph.initializers[name]
        else:
            v = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                         const_value=ir.Tensor(np.ascontiguousarray(arr), name=name))
            model.graph.register_initializer(v)
        node.replace_input_with(wi, v)
        n += 1
    return n
