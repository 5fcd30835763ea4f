"""OpenVINO's CPU plugin as a :class:`~onnx_amp.runtime.backends.base.Backend` (``openvino_cpu``).

OpenVINO runs an ONNX model per layer at the precision the graph states, once two plugin defaults
are out of the way: on a BF16-capable CPU the default ``INFERENCE_PRECISION_HINT`` is bf16 and
silently runs FP32 layers in bf16, and ``DYNAMIC_QUANTIZATION_GROUP_SIZE=32`` silently rounds the
f32/bf16 activations of a layer with int8 weights to int8 (per group of 32; invisible in the
runtime graph). Every session here compiles with ``INFERENCE_PRECISION_HINT=f32`` and
``DYNAMIC_QUANTIZATION_GROUP_SIZE=0`` (:func:`compile_config`). Measured on this machine
(openvino 2026.4.1, AVX-512 with BF16 and VNNI, no AMX;
``python -m onnx_amp.tools.bench.openvino_forms`` reproduces it):

- **BF16** runs as a bf16 kernel only when the graph computes in bf16: ``Cast(x -> bf16)``, bf16
  weights, ``MatMul``/``Gemm``/``Conv`` on bf16, ``Cast`` back. The emulate form's ``Cast`` pair
  (``Cast -> bf16 -> Cast -> f32 -> MatMul``) runs in f32. Hence the lowering option
  ``bf16_compute`` (``passes.rewrite``). OpenVINO also takes a bf16 ``Conv`` at opset 21.
- **INT8**: ``Q -> DQ`` on the activation (per tensor, symmetric int8 or uint8 with zero point)
  and ``DQ`` of an int8 weight (per channel or per tensor) before ``MatMul``/``Gemm``/``Conv``
  become an int8 kernel (low-precision transformations); no output ``Q`` is needed (it changes
  nothing there). Attention's activation-activation ``MatMul`` runs in int8 only with *signed*
  int8 activations on both inputs: the uint8 layout (``ort_int8_layout``) leaves it in f32.
  An int8 weight with f32 activations stays int8 in memory (decompressed in the kernel); with
  ``bf16_compute`` (``DQ -> Cast -> bf16 MatMul``) it is decompressed to bf16 when compiled. The
  int8 kernels are exact (int32 accumulation, VNNI: no int16 saturation); the plugin's activation
  quantization multiplies by the reciprocal scale, so ties and values within an f32 ulp of a
  rounding boundary can land one int8 step off ``QuantizeLinear``.
- **FP8 (E4M3, E5M2)**: no FP8 arithmetic. An FP8 weight is decompressed to the kernel's
  precision when the model is compiled (f8 only in the file); FP8 activation ``Q -> DQ`` become
  element-wise ``Convert`` ops (rounding emulated, through f16: double rounding, about 0.4% of
  E4M3 / 0.2% of E5M2 values one FP8 step off the ONNX definition) before a bf16 or f32 kernel.
  With ``bf16_compute`` an FP8 layer runs as a bf16 kernel; its FP8 activations cost extra time.

Two plugin bugs reject some valid mixed BF16/INT8 graphs at compile time (attention snippets with a
bf16 score MatMul; a bf16 projection's ``Convert`` moved into an f32 attention MatMul when int8
layers are present): :func:`_compile` retries with ``SNIPPETS_MODE=DISABLE`` and/or an identity
``Maximum`` after each bf16 -> f32 ``Convert``, only when the plain compile fails, and the session
says which (``session.fallback``).

So :meth:`OpenVinoCpuBackend.formats` (from the device's ``OPTIMIZATION_CAPABILITIES``) lists
fp32, bf16 and int8; :data:`EXECUTES_AS` says what each planned format runs as.

``exact=True`` sessions compute the Q/DQ math as ONNX defines it, bit for bit (:func:`exact_qdq`):
each activation ``Q -> DQ`` pair is replaced by float ops (``x / s``, round half to even, clamp,
``* s``; FP8 rounding by an exact binade search) and every ``Divide`` is kept a true division
(OpenVINO otherwise multiplies by the reciprocal). No integer kernel runs then (as ORT's
``exact_qdq``); bf16-compute layers stay bf16 kernels (their output is rounded to bf16, which the
emulate form's ``Cast`` pair does not do). The model's other f32 ops (LayerNorm, Softmax, GELU)
are OpenVINO's, not ORT's: a whole quantized model still differs from ORT by the Q/DQ rounding
flips that last-ulp differences cause, as ORT's own optimized and unoptimized sessions do.

:func:`executed_layers` reads what really ran from ``compiled.get_runtime_model()`` (each op's
``layerType``, ``runtimePrecision``, ``primitiveType``, the precisions of its input edges) and
maps fused and renamed ops back to the ONNX layer nodes through ``originalLayersNames``, the
names of the op's constant (weight) inputs, and ONNX output names; :func:`precision_mismatches`
compares that with each layer's ``onnx_amp.precision``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.backends import register
from onnx_amp.runtime.backends.base import Backend

#: OpenVINO OPTIMIZATION_CAPABILITIES entry -> onnx-amp format
CAPABILITY_FORMATS = {"FP32": "fp32", "BF16": "bf16", "FP16": "fp16", "INT8": "int8"}
#: planned format -> the precision OpenVINO's CPU plugin runs it at with :data:`LOWERING` (measured)
EXECUTES_AS = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8", "fp8_e4m3": "bf16", "fp8_e5m2": "bf16"}
#: the rewrite options giving the graph form OpenVINO runs at the planned precision
LOWERING = {"bf16_compute": True, "bf16_chains": True}
#: inference threads of a timing session (``timing=True``) when none are given (see :func:`compile_config`)
TIMING_THREADS = 1
_WIDTH = {"int8": 8, "fp8_e4m3": 8, "fp8_e5m2": 8, "bf16": 16, "fp16": 16, "fp32": 32}
_OV_PRECISION = {"f32": "fp32", "bf16": "bf16", "f16": "fp16", "i8": "int8", "u8": "int8",
                 "f8e4m3": "fp8_e4m3", "f8e5m2": "fp8_e5m2"}
#: runtime layer types that hold a layer's matrix math
_COMPUTE_TYPES = {"FullyConnected", "MatMul", "Convolution", "Deconvolution", "GroupConvolution",
                  "ScaledDotProductAttention", "Gemm"}
_CONST_TYPES = {"Const", "Constant"}
_FUSED_TYPES = {"Subgraph", "ScaledDotProductAttention", "MHA"}


def _ov():
    try:
        import openvino as ov
    except Exception as e:  # noqa: BLE001
        raise OnnxAmpError(f"openvino cannot be imported ({type(e).__name__}: {e}); "
                           "install it with 'pip install openvino' (or 'bash tools/install.sh')") from None
    return ov


_CORE = None


def _core():
    global _CORE
    if _CORE is None:
        _CORE = _ov().Core()
    return _CORE


# ---------------------------------------------------------------------------------------------
# sessions
# ---------------------------------------------------------------------------------------------

class OpenVinoSession:
    """A compiled OpenVINO model with the :class:`~onnx_amp.runtime.backends.base.Session` interface.

    ``compiled``: the ``ov.CompiledModel``; ``graph_info``: what :func:`executed_layers` needs of the
    ONNX graph (node names, output owners, layer annotations). Inputs and outputs keep their ONNX
    names and order."""

    def __init__(self, compiled, graph_info: _GraphInfo, onnx_outputs: list[str], tmpdir=None, exact: bool = False):
        self.compiled = compiled
        self.graph_info = graph_info
        self.exact = exact
        self._tmpdir = tmpdir  # external data of an in-memory model, alive as long as the session
        #: compile options added because the default compile failed (see OpenVinoCpuBackend.session)
        self.fallback: dict | None = None
        self.request = compiled.create_infer_request()
        self._in_ports = _by_onnx_name(compiled.inputs, graph_info.inputs)
        self._out_ports = _by_onnx_name(compiled.outputs, onnx_outputs)
        self.input_names = list(self._in_ports)
        self.output_names = list(self._out_ports)

    def _inputs(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise OnnxAmpError(f"inputs {missing} missing from the feeds (have {sorted(feeds)})")
        data = {}
        for n in self.input_names:
            a = feeds[n]
            if hasattr(a, "detach"):
                a = a.detach().cpu().numpy()
            a = np.asarray(a)
            want = self._in_ports[n].get_element_type().to_dtype()
            a = np.ascontiguousarray(a if a.dtype == want else a.astype(want))
            # numpy's second int64 (longlong, as ONNX Runtime returns it) is not a type OpenVINO maps
            data[n] = a if a.dtype.num == np.dtype(a.dtype.str).num else a.view(np.dtype(a.dtype.str))
        return data

    def runner(self, feeds: dict[str, Any]):
        # tensors made once (a copy of each input); each call sets them and runs, outputs not copied
        tensors = {n: _ov().Tensor(a) for n, a in self._inputs(feeds).items()}
        return lambda r=self.request, t=tensors: r.infer(t, share_inputs=True, share_outputs=True)

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        data = self._inputs(feeds)
        names = outputs or self.output_names
        unknown = [n for n in names if n not in self._out_ports]
        if unknown:
            raise OnnxAmpError(f"outputs {unknown} are not outputs of the model (has {self.output_names})")
        res = self.request.infer(data)
        return {n: np.array(res[self._out_ports[n]], copy=True) for n in names}


def _by_onnx_name(ports, onnx_names: list[str]) -> dict[str, Any]:
    """Ports keyed by their ONNX tensor name, in ONNX order (any other port after them)."""
    named = {}
    for p in ports:
        names = p.get_names()
        named[next((n for n in onnx_names if n in names), p.get_any_name())] = p
    order = {n: i for i, n in enumerate(onnx_names)}
    return {n: named[n] for n in sorted(named, key=lambda n: order.get(n, len(order)))}


@dataclass
class _GraphInfo:
    """The ONNX side of the name mapping: node names, output-value owners, layer annotations."""

    nodes: dict[str, dict[str, str]]  # node name -> {"op", "layer" (id or ""), "inserted_for", "precision", "kind"}
    outputs: dict[str, str]  # value name -> producing node name
    consumers: dict[str, list[str]]  # node name -> names of the nodes reading its outputs
    producers: dict[str, list[str]]  # node name -> names of the nodes computing its inputs
    inputs: list[str]  # graph input names

    @classmethod
    def of(cls, model: ir.Model) -> "_GraphInfo":
        nodes, outputs, consumers, producers = {}, {}, {}, {}

        def key(n: ir.Node) -> str:
            return n.name or (n.outputs[0].name if n.outputs and n.outputs[0].name else "")

        for n in model.graph.all_nodes():
            p = n.metadata_props
            name = key(n)
            if not name:
                continue
            consumers[name] = [key(c) for o in n.outputs if o is not None for c, _ in o.uses() if key(c)]
            producers[name] = [key(i.producer()) for i in n.inputs if i is not None and i.producer() is not None]
            inserted = p.get(A.INSERTED_FOR, "") if A.INSERTED_BY in p else ""
            nodes[name] = {"op": n.op_type, "layer": "" if inserted else p.get(A.LAYER, ""), "inserted_for": inserted,
                           "precision": p.get(A.PRECISION, ""), "kind": p.get(A.LAYER_KIND, "weight")}
            for o in n.outputs:
                if o is not None and o.name:
                    outputs[o.name] = name
        return cls(nodes, outputs, consumers, producers, [v.name for v in model.graph.inputs])

    def resolve(self, name: str) -> str | None:
        """An OpenVINO op name -> the ONNX node it came from (node name, output name, ``<node>/suffix``)."""
        cands = [name]
        if name.endswith("_original"):
            cands.append(name[: -len("_original")])
        for c in list(cands):
            while "/" in c:
                c = c.rsplit("/", 1)[0]
                cands.append(c)
        for c in cands:
            if c in self.nodes:
                return c
            if c in self.outputs:
                return self.outputs[c]
        return None

    def layer_of_id(self) -> dict[str, str]:
        return {v["layer"]: k for k, v in self.nodes.items() if v["layer"]}


#: models with more weight bytes than this reach OpenVINO through a temporary file (memory-mapped)
#: rather than a serialized copy in memory (SmolLM2's bisection: 11.5 GB resident, killed, otherwise)
_IN_MEMORY_BYTES = 128 * 2**20


def _weight_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def _has_external(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def _read(model: ir.Model | str | os.PathLike):
    """(ov.Model, tmpdir or None, ONNX output names, graph info)."""
    core = _core()
    if isinstance(model, ir.Model):
        info = _GraphInfo.of(model)
        outs = [v.name for v in model.graph.outputs]
        if not _has_external(model) and _weight_bytes(model) < _IN_MEMORY_BYTES:
            proto = ir.to_proto(model)
            if proto.ByteSize() < 1_800_000_000:
                try:
                    return core.read_model(proto.SerializeToString(), b""), None, outs, info
                except Exception as e:  # noqa: BLE001
                    raise OnnxAmpError(f"<in-memory model>: OpenVINO cannot read it ({_first(e)}); "
                                       "check the model with onnx.checker") from None
        tmpdir = tempfile.TemporaryDirectory(prefix="onnx_amp_ov_")
        path = Path(tmpdir.name) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")
        return _read_path(path), tmpdir, outs, info
    path = Path(model)
    if not path.is_file():
        raise OnnxAmpError(f"{path}: no such file")
    m = ir.load(path)
    return _read_path(path), None, [v.name for v in m.graph.outputs], _GraphInfo.of(m)


def _read_path(path: Path):
    try:
        return _core().read_model(str(path))
    except Exception as e:  # noqa: BLE001
        raise OnnxAmpError(f"{path}: OpenVINO cannot read the model ({_first(e)}); "
                           "check it with onnx.checker or re-export it") from None


def _first(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    # OpenVINO puts the cause after a "Check ... failed at ..." preamble: show the most specific line
    for ln in reversed(lines):
        if not ln.startswith(("Check ", "Exception from", "FrontEnd API failed")) and len(ln) > 10:
            return ln[:300]
    return (lines[0] if lines else type(e).__name__)[:300]


def compile_config(*, exact: bool = False, threads: int | None = None, timing: bool = False) -> dict[str, Any]:
    """The CPU plugin options of a session (see the module doc)."""
    # f32: no layer runs lower than its graph says (the default hint is bf16 on BF16 CPUs); no dynamic
    # quantization: by default the plugin rounds the f32/bf16 activations of a layer with int8 weights
    # to int8 per group of 32 (DYNAMIC_QUANTIZATION_GROUP_SIZE=32), invisible in the runtime graph
    cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0,
                           "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = int(threads)
    if timing:
        # many compiled models timed in turn in one process: one stream each, threads not pinned
        # (every model's pool would pin the same cores), and TIMING_THREADS threads unless told: with
        # the default (all cores) each small region's run wakes its model's own thread pool, and on a
        # shared 2-core machine (load 9) the FP32 regions of EfficientNet-Lite0 summed to 3.1x the whole
        # model's time (40.3 vs 13.0 ms), against 1.35x with one thread (22.2 vs 16.4 ms), measured
        cfg["ENABLE_CPU_PINNING"] = False
        cfg.setdefault("INFERENCE_NUM_THREADS", TIMING_THREADS)
    return cfg


def _guard_bf16_converts(ovm) -> int:
    """After every ``Convert(bf16 -> f32)`` (a bf16-compute layer's output), a ``Maximum(x, -FLT_MAX)``
    (the identity on finite values; fused into the kernel as a post-op). In place; returns how many."""
    ops = __import__("openvino.opset13", fromlist=["maximum"])
    n = 0
    for op in list(ovm.get_ops()):
        if op.get_type_name() != "Convert" or op.get_input_element_type(0).get_type_name() != "bf16":
            continue
        out = op.output(0)
        targets = list(out.get_target_inputs())
        guard = ops.maximum(out, ops.constant(np.float32(np.finfo(np.float32).min)))
        for t in targets:
            t.replace_source_output(guard.output(0))
        n += 1
    ovm.validate_nodes_and_infer_types()
    return n


def _compile(ovm, cfg: dict[str, Any]):
    """(compiled model, the workaround used or None). Two plugin bugs of openvino 2026.4.1 (measured)
    reject valid mixed BF16/INT8 graphs; each workaround is tried only when the plain compile fails:

    - the attention snippets (MHA tokenization) fail on a bf16 score MatMul next to f32 or int8
      layers ("BrgemmCPU node has incompatible input element types"): ``SNIPPETS_MODE=DISABLE``;
    - with int8 layers present (low-precision transformations on), the ``Convert(bf16 -> f32)`` after
      a bf16 projection is moved through its bias Add/Reshape/Transpose into an f32 attention MatMul
      ("Arguments do not have the same element type (bf16, f32)"): :func:`_guard_bf16_converts`.
    """
    core = _core()
    try:
        return core.compile_model(ovm, "CPU", cfg), None
    except Exception as e:  # noqa: BLE001
        first = e
    attempts = [({"SNIPPETS_MODE": "DISABLE"}, False), ({}, True), ({"SNIPPETS_MODE": "DISABLE"}, True)]
    guarded = 0
    for extra, guard in attempts:
        if guard and not guarded:
            guarded = _guard_bf16_converts(ovm)
            if not guarded:
                break
        try:
            used = dict(extra, **({"bf16_convert_guards": guarded} if guard else {}))
            return core.compile_model(ovm, "CPU", {**cfg, **extra}), used
        except Exception:  # noqa: BLE001
            continue
    raise OnnxAmpError(f"OpenVINO cannot compile the model for CPU ({_first(first)}); check that its "
                       "lowering is the backend's (rewrite(..., **backend.lowering))") from None


# ---------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------

@register
class OpenVinoCpuBackend(Backend):
    name = "openvino_cpu"
    description = "OpenVINO CPU plugin (inference precision f32: each layer at the precision its graph states)"

    def check(self) -> None:
        ov = _ov()
        try:
            devices = _core().available_devices
        except Exception as e:  # noqa: BLE001
            raise OnnxAmpError(f"openvino {ov.__version__} cannot list its devices ({_first(e)}); "
                               "reinstall it with 'pip install --force-reinstall openvino'") from None
        if "CPU" not in devices:
            raise OnnxAmpError(f"openvino {ov.__version__} has no CPU device (devices: {devices}); "
                               "install the full openvino package (its CPU plugin is missing)")

    def capabilities(self) -> list[str]:
        """The CPU plugin's OPTIMIZATION_CAPABILITIES (e.g. BF16, FP32, INT8)."""
        self.check()
        return [str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]

    def formats(self) -> tuple[str, ...]:
        caps = set(self.capabilities())
        order = ("fp32", "bf16", "fp16", "int8")
        return tuple(f for f in order if f in {CAPABILITY_FORMATS[c] for c in caps if c in CAPABILITY_FORMATS})

    @property
    def lowering(self) -> dict[str, Any]:
        return dict(LOWERING)

    def session(self, model: ir.Model | str | os.PathLike, *, exact: bool = False, threads: int | None = None,
                timing: bool = False) -> OpenVinoSession:
        self.check()
        if exact:
            m = model if isinstance(model, ir.Model) else ir.load(model)
            model, _ = exact_qdq(m)
        ovm, tmpdir, outs, info = _read(model)
        if exact:
            for op in ovm.get_ops():
                if op.get_type_name() == "Divide":
                    op.get_rt_info()[_EXACT_DIVIDE_KEY] = True
        compiled, fallback = _compile(ovm, compile_config(exact=exact, threads=threads, timing=timing))
        sess = OpenVinoSession(compiled, info, outs, tmpdir, exact)
        sess.fallback = fallback
        return sess

    def executed_precisions(self, session) -> dict[str, str]:
        return {name: e["compute"] for name, e in executed_layers(session).items()}

    def plan_check(self, model_planned: ir.Model, session) -> dict[str, Any]:
        return plan_check(model_planned, session)


# the parts that live in their own modules, under the names this module has always offered
from onnx_amp.runtime.backends.openvino_exact import _EXACT_DIVIDE_KEY, exact_qdq  # noqa: E402,F401
from onnx_amp.runtime.backends.openvino_precision import (  # noqa: E402,F401
    executed_layers, expected_precision, format_mismatches, plan_check, precision_mismatches, runtime_ops,
)
