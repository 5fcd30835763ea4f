"""Accept what peers accept: one call right after a model is loaded (``onnx-amp`` commands, ``optimize``).

ONNX Runtime's ``quantize_static`` and ModelOpt take models that onnx-amp's stages used to refuse
late (an old opset failing at profiling, a model without ``value_info`` refused at region
extraction, a float16 model failing inside ONNX Runtime). :func:`normalize_model` brings such a
model into the form every stage expects, in place, and returns one note per change:

- **opset**: a default-domain opset below 21 is upgraded to 21 (``OPSET``): onnxscript's version
  converter for opset >= 18 (it works on the ``ir.Model`` itself), onnx's ``version_converter`` for
  older ones (its C API, with the weights held back: initializers over 1 KB are passed as typed
  inputs, ``onnx_ir``'s ``call_onnx_api``). Node ``metadata_props`` (onnx-amp's annotations,
  ``pkg.torch.onnx.*``) that the C API drops are restored by node name. Opsets above 21 are kept.
- **shapes**: when a value in the graph has no type or shape, ONNX shape inference runs
  (``onnx_ir``'s ``ShapeInferencePass``: the inferred types/shapes are merged into this model, so
  nothing else in it changes); a value still untyped afterwards is an error naming it.
- **float16 / bfloat16 models** (every float input, output and initializer in that type): the graph
  is computed in float32 (float32 holds every float16/bfloat16 value exactly, so the weights do not
  change; only intermediate rounding does): initializers, ``Constant``/``ConstantOfShape`` values and
  ``Cast`` targets become float32. A float16 model keeps its float16 inputs and outputs (a ``Cast`` at
  each boundary, so the deployed model takes and returns what the original did); a bfloat16 model's
  inputs and outputs become float32 (numpy and ONNX Runtime's Python API have no bfloat16 feeds).
  The target's high precision is then the plan's high precision (fp32 on ``cpu``, bf16 on gaudi/h100).
  Reason: ONNX Runtime's CPU provider has no float16/bfloat16 kernels for most layers and the Q/DQ
  scales of the rewrite are float32, so profiling, the rewrite and validation need a float32 graph.

External weights stay where they are (memory-mapped ``ExternalTensor``s): nothing here reads them
(the C API calls serialize the graph without initializers over 1 KB, and the float16 upcast of
initializers happens lazily, only for the tensors that are read later).

:func:`check_runnable` is the extra check for commands that execute the model (calibrate, profile
with ``--measure``, run): every op must be one ONNX Runtime and the torch interpreter know.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as ann
from onnx_amp.core.errors import OnnxAmpError

logger = logging.getLogger(__name__)

#: the opset every stage works at (the rewrite emits opset-21 Q/DQ)
OPSET = 21
#: the IR version opset 21 needs
IR_VERSION = 10
#: op domains that ONNX Runtime's CPU provider runs (model-local functions are fine too)
KNOWN_DOMAINS = ("", "ai.onnx", "com.microsoft", "ai.onnx.ml", "com.microsoft.nchwc", "ai.onnx.preview.training")
_LOW_FLOATS = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _where(source) -> str:
    return str(source) if source is not None else "model"


def _all_nodes(model: ir.Model):
    return ir.traversal.RecursiveGraphIterator(model.graph)


def _all_graphs(model: ir.Model):
    yield from model.graphs()


# ---------------------------------------------------------------------------------------------
# opset
# ---------------------------------------------------------------------------------------------

def _metadata_by_name(model: ir.Model) -> dict[str, dict[str, str]]:
    return {n.name: dict(n.metadata_props) for n in _all_nodes(model) if n.name and n.metadata_props}


def upgrade_opset(model: ir.Model, source=None, target: int = OPSET) -> list[str]:
    """Upgrade the default-domain opset to ``target`` in place (no-op at or above it)."""
    current = model.graph.opset_imports.get("", model.graph.opset_imports.get("ai.onnx"))
    if current is None or current >= target:
        if current is not None and model.ir_version is not None and model.ir_version < IR_VERSION and current >= target:
            model.ir_version = IR_VERSION
        return []
    from onnxscript.version_converter import ConvertVersionPass

    meta = _metadata_by_name(model)
    how = "onnxscript's version converter" if current >= 18 else "onnx's version_converter (C API)"
    quiet = logging.getLogger("onnxscript.version_converter")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "falling back to the C API" warning is our note
    try:
        ConvertVersionPass(target, fallback=current < 18)(model)
    except Exception as e:  # noqa: BLE001 (any converter failure becomes one line)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxAmpError(
            f"{_where(source)}: opset {current} could not be upgraded to {target} ({type(e).__name__}: {msg}); "
            f"convert it yourself (onnx.version_converter.convert_version(model, {target})) or re-export it "
            "with opset_version=21") from None
    finally:
        quiet.setLevel(level)
    now = model.graph.opset_imports.get("")
    if now != target:
        raise OnnxAmpError(
            f"{_where(source)}: opset {current} could not be upgraded to {target} (onnx's version converter "
            f"left it at {now}); convert it yourself (onnx.version_converter.convert_version(model, {target})) or "
            "re-export it with opset_version=21")
    for n in _all_nodes(model):  # the C API drops node metadata_props: restore them by node name
        for k, v in meta.get(n.name, {}).items():
            n.metadata_props.setdefault(k, v)
    if model.ir_version is None or model.ir_version < IR_VERSION:
        model.ir_version = IR_VERSION
    return [f"{_where(source)}: opset {current} upgraded to {target} in memory ({how}); the input file is unchanged"]


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------

def _untyped(model: ir.Model) -> list[ir.Value]:
    out = []
    for node in _all_nodes(model):
        for v in node.outputs:
            if v is None or not v.name:
                continue
            if v.type is None or (v.shape is None and v.uses()):
                out.append(v)
    return out


def _probe_feeds(model: ir.Model) -> dict[str, np.ndarray] | None:
    """Harmless inputs for one run: zeros for integer inputs (valid token ids, positions), ones for
    masks, small normal floats; unknown dimensions 1."""
    inits = set(model.graph.initializers)
    rng = np.random.default_rng(0)
    feeds = {}
    for v in model.graph.inputs:
        if v.name in inits:
            continue
        if v.shape is None or v.dtype is None:
            return None
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in v.shape]
        dt = v.dtype.numpy()
        if np.issubdtype(dt, np.floating):
            feeds[v.name] = (rng.standard_normal(shape) * 0.1).astype(dt)
        elif "mask" in v.name.lower():
            feeds[v.name] = np.ones(shape, dt)
        else:
            feeds[v.name] = np.zeros(shape, dt)
    return feeds


def _type_from_run(model: ir.Model, values: list[ir.Value]) -> bool:
    """Types (dtype and rank) of ``values`` from one ONNX Runtime run on :func:`_probe_feeds`; False
    when the runtime cannot run the model either."""
    feeds = _probe_feeds(model)
    if feeds is None:
        return False
    try:
        from onnx_amp.runtime.ort_session import make_session

        m = model.clone()
        names = {v.name for v in values}
        by_name = {v.name: v for n in m.graph for v in n.outputs if v is not None}
        for name in names:
            if name in by_name and not by_name[name].is_graph_output():
                by_name[name].type = ir.TensorType(ir.DataType.FLOAT)  # ORT needs a declared type: corrected below
                m.graph.outputs.append(by_name[name])
        sess = make_session(m, optimize=False)
        out_names = [o.name for o in sess.get_outputs() if o.name in names]
        res = sess.run(out_names, feeds)
    except Exception:  # noqa: BLE001 (then the caller reports what ONNX could not type)
        return False
    for v in values:
        if v.name in out_names:
            arr = np.asarray(res[out_names.index(v.name)])
            v.type = ir.TensorType(ir.DataType.from_numpy(arr.dtype))
            v.shape = ir.Shape([None] * arr.ndim)
    return True


def infer_shapes(model: ir.Model, source=None) -> list[str]:
    """ONNX shape inference when some value has no type or shape (merged into ``model``)."""
    missing = _untyped(model)
    if not missing:
        return []
    from onnx_ir.passes.common import ShapeInferencePass

    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    still = [v for v in _untyped(model) if v.type is None]
    if still and _type_from_run(model, still):  # ops ONNX cannot infer (contrib, custom): ask the runtime
        ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
        still = [v for v in _untyped(model) if v.type is None]
    if still:
        v = still[0]
        p = v.producer()
        raise OnnxAmpError(
            f"{_where(source)}: ONNX shape inference cannot type tensor {v.name!r} (output of node "
            f"{p.name if p is not None else '?'!r}, op {p.op_type if p is not None else '?'}) and {len(still) - 1} "
            "other(s); add value_info for it or check that the op and its inputs are valid ONNX "
            "(python -c \"import onnx; onnx.checker.check_model('M.onnx', full_check=True)\")")
    return [f"{_where(source)}: {len(missing)} tensor(s) had no type or shape (no value_info); ran ONNX shape "
            "inference in memory"]


# ---------------------------------------------------------------------------------------------
# float16 / bfloat16 models
# ---------------------------------------------------------------------------------------------

def model_float_type(model: ir.Model) -> ir.DataType | None:
    """FLOAT16/BFLOAT16 when every float graph input, output and initializer has that one type;
    else None (a float32 model, or a mixed one)."""
    seen = set()
    vals = list(model.graph.inputs) + list(model.graph.outputs) + list(model.graph.initializers.values())
    for v in vals:
        dt = v.dtype
        if dt is not None and dt.is_floating_point():
            seen.add(dt)
    if len(seen) == 1 and next(iter(seen)) in _LOW_FLOATS:
        return next(iter(seen))
    return None


def _upcast_const(t) -> ir.Tensor:
    return ir.tensor(np.asarray(t.numpy(), dtype=np.float32), name=t.name)


def _lazy_upcast(t) -> ir.LazyTensor:
    """A float32 view of ``t`` computed when read (external weights are not read here)."""
    return ir.LazyTensor(lambda t=t: _upcast_const(t), ir.DataType.FLOAT, ir.Shape(list(t.shape)), name=t.name)


def upcast_low_float(model: ir.Model, source=None) -> list[str]:
    """Compute a float16/bfloat16 model in float32 (see the module docstring)."""
    low = model_float_type(model)
    if low is None or ann.get_json(model, ann.REWRITE) is not None:
        return []
    if ann.get_json(model, ann.REGIONS) is not None:
        raise OnnxAmpError(
            f"{_where(source)}: a {low.name.lower()} model that was partitioned without onnx-amp's loading step; "
            "run `onnx-amp partition` on the original model")
    name = "float16" if low == ir.DataType.FLOAT16 else "bfloat16"
    graph = model.graph
    # 1. values: every low-float value of every graph becomes float32 (types only)
    for g in _all_graphs(model):
        vals = list(g.inputs) + list(g.outputs) + list(g.initializers.values())
        for node in g:
            vals += [v for v in node.outputs if v is not None]
        for v in vals:
            if v.dtype == low:
                v.dtype = ir.DataType.FLOAT
    # 2. initializers: float32 views computed when read (saving or running the model reads each once)
    for g in _all_graphs(model):
        for v in g.initializers.values():
            t = v.const_value
            if t is not None and t.dtype == low:
                v.const_value = _lazy_upcast(t)
    # 3. nodes that name a type or hold a tensor
    for node in _all_nodes(model):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Cast" and "to" in node.attributes and node.attributes["to"].value == low:
            node.attributes["to"] = ir.AttrInt64("to", ir.DataType.FLOAT)
        elif node.op_type in ("Constant", "ConstantOfShape") and "value" in node.attributes:
            t = node.attributes["value"].as_tensor()
            if t.dtype == low:
                node.attributes["value"] = ir.AttrTensor("value", _upcast_const(t))
        elif node.op_type in ("EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Bernoulli", "Multinomial") and "dtype" in node.attributes \
                and node.attributes["dtype"].value == low:
            node.attributes["dtype"] = ir.AttrInt64("dtype", ir.DataType.FLOAT)
    # 4. the boundary: float16 keeps its interface with a Cast at each input and output
    if low == ir.DataType.FLOAT16:
        inits = set(graph.initializers)
        for x in list(graph.inputs):
            if x.dtype != ir.DataType.FLOAT or x.name in inits:
                continue
            cast = ir.Node("", "Cast", [x], attributes=[ir.AttrInt64("to", ir.DataType.FLOAT)],
                           name=f"{x.name}/onnx_amp_upcast")
            y = cast.outputs[0]
            y.name, y.dtype, y.shape = f"{x.name}__f32", ir.DataType.FLOAT, x.shape
            x.replace_all_uses_with(y)
            cast.replace_input_with(0, x)
            x.dtype = low
            if len(graph):
                graph.insert_before(graph[0], cast)
            else:
                graph.append(cast)
        for i, y in enumerate(list(graph.outputs)):
            if y.dtype != ir.DataType.FLOAT:
                continue
            out_name = y.name
            y.name = f"{out_name}__f32"
            cast = ir.Node("", "Cast", [y], attributes=[ir.AttrInt64("to", low)], name=f"{out_name}/onnx_amp_downcast")
            z = cast.outputs[0]
            z.name, z.dtype, z.shape = out_name, low, y.shape
            graph.append(cast)
            graph.outputs[i] = z
        where = "inputs and outputs stay float16 (a Cast at each)"
    else:
        where = "inputs and outputs become float32 (feed float32 data; numpy has no bfloat16)"
    return [f"{_where(source)}: a {name} model: computed in float32 inside (every {name} weight is exact in "
            f"float32; ONNX Runtime's CPU provider has no {name} kernels for most layers), {where}; the plan's "
            "high precision is the target's"]


# ---------------------------------------------------------------------------------------------
# the one call
# ---------------------------------------------------------------------------------------------

def name_dynamic_dims(model: ir.Model, source=None) -> list[str]:
    """Dimensions written as -1 or 0 (paddle2onnx's way of saying "dynamic") become named ones, as
    every other exporter writes them, so no stage mistakes them for sizes."""
    renamed = []
    for v in list(model.graph.inputs) + list(model.graph.outputs):
        if v.shape is None or not any(isinstance(d, int) and d <= 0 for d in v.shape):
            continue
        v.shape = ir.Shape([ir.SymbolicDim(f"{v.name}_dim{i}") if isinstance(d, int) and d <= 0 else d
                            for i, d in enumerate(v.shape)])
        renamed.append(v.name)
    if not renamed:
        return []
    return [f"{_where(source)}: dimension(s) written as -1/0 in {', '.join(renamed[:4])}"
            f"{' ...' if len(renamed) > 4 else ''} read as dynamic"]


def normalize_model(model: ir.Model, source: str | Path | None = None) -> list[str]:
    """Bring ``model`` (just loaded) into the form every stage expects, in place; returns a note
    per change (empty for an opset-21, fully typed float32 model: then nothing changed)."""
    notes: list[str] = name_dynamic_dims(model, source)
    notes += upgrade_opset(model, source)
    notes += upcast_low_float(model, source)
    notes += infer_shapes(model, source)
    return notes


def check_runnable(model: ir.Model, source=None) -> None:
    """Every node's op domain is one ONNX Runtime runs (or a function the model defines)."""
    local = {f.domain for f in model.functions.values()}
    for node in _all_nodes(model):
        if node.domain not in KNOWN_DOMAINS and node.domain not in local:
            raise OnnxAmpError(
                f"{_where(source)}: node {node.name!r} is op {node.domain}::{node.op_type}, a custom op that neither "
                "ONNX Runtime nor onnx-amp's interpreter can run; replace it with standard ONNX ops or define it "
                "as a function in the model")


def fill_input_shapes(model: ir.Model, block: dict, source=None) -> list[str]:
    """Graph inputs without a shape (valid for ONNX Runtime, refused by ``onnx.checker``) get one
    from the calibration data: a symbolic sample axis ``N`` and the data's other dims; shape
    inference then types what follows. ``block``: input name -> array with a leading sample axis."""
    inits = set(model.graph.initializers)
    filled = []
    for v in model.graph.inputs:
        if v.shape is not None or v.name in inits or v.name not in block:
            continue
        arr = np.asarray(block[v.name])
        v.shape = ir.Shape(["N", *[int(d) for d in arr.shape[1:]]])
        filled.append(f"{v.name}[{','.join(str(d) for d in v.shape)}]")
    if not filled:
        return []
    from onnx_ir.passes.common import ShapeInferencePass

    ShapeInferencePass(check_type=False, strict_mode=False, data_prop=True)(model)
    return [f"{_where(source)}: input(s) without a shape got one from the calibration data: {', '.join(filled)}"]


def check_input_shapes(model: ir.Model, source=None) -> None:
    """Every graph input has a shape (``onnx.checker`` refuses a rewritten model otherwise)."""
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.shape is None and v.name not in inits:
            raise OnnxAmpError(
                f"{_where(source)}: input {v.name!r} has no shape, which onnx.checker refuses in the rewritten model; "
                "calibrate it first (onnx-amp calibrate sets the shape from the data) or give the input a shape")


def load_normalized(path, executes: bool = False) -> tuple[ir.Model, list[str]]:
    """``core.onnx_io.load_model`` then :func:`normalize_model` (and :func:`check_runnable` for a
    command that runs the model): what every command does right after it reads its input."""
    from onnx_amp.core.onnx_io import load_model

    model = load_model(path)
    notes = normalize_model(model, path)
    if executes:
        check_runnable(model, path)
    return model, notes
