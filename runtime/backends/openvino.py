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
LOWERING = {"bf16_compute": True}
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
        self.request = compiled.create_infer_request()
        self._in_ports = _by_onnx_name(compiled.inputs, graph_info.inputs)
        self._out_ports = _by_onnx_name(compiled.outputs, onnx_outputs)
        self.input_names = list(self._in_ports)
        self.output_names = list(self._out_ports)

    def run(self, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
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
            data[n] = np.ascontiguousarray(a if a.dtype == want else a.astype(want))
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


def _has_external(model: ir.Model) -> bool:
    return any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())


def _read(model: ir.Model | str | os.PathLike):
    """(ov.Model, tmpdir or None, ONNX output names, graph info)."""
    core = _core()
    if isinstance(model, ir.Model):
        info = _GraphInfo.of(model)
        outs = [v.name for v in model.graph.outputs]
        if not _has_external(model):
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
        # (every model's pool would pin the same cores)
        cfg["ENABLE_CPU_PINNING"] = False
    return cfg


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
        try:
            compiled = _core().compile_model(ovm, "CPU", compile_config(exact=exact, threads=threads, timing=timing))
        except Exception as e:  # noqa: BLE001
            raise OnnxAmpError(f"OpenVINO cannot compile the model for CPU ({_first(e)}); "
                               "check that its lowering is the backend's (rewrite(..., **backend.lowering))") from None
        return OpenVinoSession(compiled, info, outs, tmpdir, exact)

    def executed_precisions(self, session) -> dict[str, str]:
        return {name: e["compute"] for name, e in executed_layers(session).items()}


# the parts that live in their own modules, under the names this module has always offered
from onnx_amp.runtime.backends.openvino_exact import _EXACT_DIVIDE_KEY, exact_qdq  # noqa: E402,F401
from onnx_amp.runtime.backends.openvino_precision import (  # noqa: E402,F401
    executed_layers, expected_precision, format_mismatches, precision_mismatches, runtime_ops,
)
