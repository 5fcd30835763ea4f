"""ONNX Runtime CPU sessions with the options that keep FP8 Q/DQ correct, and measured loss MSE.

- ``make_session(model_or_path, optimize=True, threads=None)``: CPU EP. When the model has FP8
  Q/DQ, ``disabled_optimizers=["QDQSelectorActionTransformer", "ReluQuantRewrite"]`` ALWAYS (ORT's
  QDQ fusions turn FP8 DQ->MatMul into integer kernels: before onnxruntime 1.32 the session
  failed to build; 1.32.0 builds it and returns wrong logits; see tests/test_ort_session.py);
  otherwise ORT's default optimizations, so INT8 Q/DQ fuses into
  MatMulIntegerToFloat / QLinearMatMul / QLinearConv. In-memory models with external data are
  saved to a temporary folder first (kept alive with the session).
  INT8 Q/DQ models run without CommonSubexpressionElimination (see INT8_DISABLED_OPTIMIZERS).
- ``run(session, feeds)`` -> {output name: numpy array}.
- ``measured_loss_mse(ref_model, plan_model, batches, loss_fn)`` -> (mse, per-sample deltas):
  ``mean_n (L_n(plan) - L_n(fp32))^2`` with per-sample losses from ``runtime.losses``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

from onnx_amp.core.errors import OnnxAmpError

from onnx_amp.core.onnx_io import load_model

# The two QDQ fusions that mistreat FP8 Q/DQ, plus ClipQuantRewrite: Clip (ReLU6) -> Q with a float8 zero point
# aborts session creation ("Unexpected data type for QuantizeLinear input y_zero_point of 17").
FP8_DISABLED_OPTIMIZERS = ["QDQSelectorActionTransformer", "ReluQuantRewrite", "ClipQuantRewrite"]
# INT8 Q/DQ: the rewrite gives each consumer layer its own Q -> DQ (ORT fuses DQ -> MatMul into
# MatMulIntegerToFloat / QLinearMatMul only when the DQ's Q has no other consumer); CSE would merge
# the identical Qs of q/k/v back into one and block the fusion.
INT8_DISABLED_OPTIMIZERS = ["CommonSubexpressionElimination"]
_FP8 = {ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E5M2, ir.DataType.FLOAT8E4M3FNUZ, ir.DataType.FLOAT8E5M2FNUZ}
_FP8_PROTO = {17, 18, 19, 20}  # TensorProto FLOAT8* enum values


def _proto_has_fp8(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if any(t.data_type in _FP8_PROTO for t in m.graph.initializer):
        return True
    for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
        if vi.type.tensor_type.elem_type in _FP8_PROTO:
            return True
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "Cast"):
            for a in n.attribute:
                if a.name in ("output_dtype", "to") and a.i in _FP8_PROTO:
                    return True
    return False


def _proto_has_qdq(path: Path) -> bool:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return any(n.op_type == "QuantizeLinear" for n in m.graph.node)


def model_has_qdq(model: ir.Model) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in model.graph.all_nodes())


def model_has_fp8(model: ir.Model) -> bool:
    for v in model.graph.initializers.values():
        if v.dtype in _FP8:
            return True
    for n in model.graph.all_nodes():
        for o in n.outputs:
            if o.dtype in _FP8:
                return True
    return False


def session_options(threads: int | None = None, optimize: bool = True,
                    optimized_model_filepath: str | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if optimized_model_filepath:
        so.optimized_model_filepath = str(optimized_model_filepath)
    return so


#: the newest IR version onnxruntime reads here (onnx 1.23 writes newer ones by default; opset 21 needs 10)
ORT_MAX_IR = 10


def make_session(model_or_path: ir.Model | str | os.PathLike, optimize: bool = True, threads: int | None = None,
                 optimized_model_filepath: str | None = None, fp8: bool | None = None,
                 exact_qdq: bool = False, timing: bool = False,
                 disabled_optimizers: Sequence[str] = ()) -> ort.InferenceSession:
    """The one way onnx-amp builds an ORT CPU session (validation, evaluation, profiling, timing).

    FP8 Q/DQ models always get the QDQ fusions disabled (``fp8`` forces it); INT8 Q/DQ models run
    without CommonSubexpressionElimination. ``timing``: thread-pool spinning off, for many sessions
    timed interleaved (a pool that keeps spinning after its run steals the cores of the next session:
    region times inflated about 3x, measured). ``disabled_optimizers``: more ORT optimizers to
    disable (an experiment knob, e.g. ``["NchwcTransformer"]``). The model is never modified.

    ``exact_qdq``: also keep INT8 Q/DQ unfused (the Q/DQ math as ONNX defines it, float MatMul).
    ORT's fused u8s8 integer kernels saturate int16 pair sums on x86 CPUs without VNNI (this
    machine: AVX2), so full-range INT8 weights give results off by several quantization steps;
    use it for accuracy measurements, or rewrite with ``reduce_range=True`` to fuse exactly.
    """
    tmpdir = None
    if isinstance(model_or_path, ir.Model):
        model = model_or_path
        has_fp8 = model_has_fp8(model) if fp8 is None else fp8
        has_qdq = model_has_qdq(model)
        external = any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values())
        proto = None
        if not external:
            proto = ir.to_proto(model)
            proto.ir_version = min(proto.ir_version or ORT_MAX_IR, ORT_MAX_IR)
            if proto.ByteSize() > 1_800_000_000:
                proto = None
        if proto is not None:
            source: Any = proto.SerializeToString()
        else:
            tmpdir = tempfile.TemporaryDirectory(prefix="onnx_amp_ort_")
            path = Path(tmpdir.name) / "model.onnx"
            irv = model.ir_version
            model.ir_version = min(irv or ORT_MAX_IR, ORT_MAX_IR)
            try:
                ir.save(model, path, external_data="model.onnx.data")
            finally:
                model.ir_version = irv
            source = str(path)
    else:
        path = Path(model_or_path)
        if not path.is_file():
            raise OnnxAmpError(f"{path}: no such file")
        has_fp8 = _proto_has_fp8(path) if fp8 is None else fp8
        has_qdq = _proto_has_qdq(path)
        source = str(path)
    so = session_options(threads, optimize, optimized_model_filepath)
    if timing:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    disabled = list(disabled_optimizers)
    if has_fp8 or (exact_qdq and has_qdq):
        disabled += FP8_DISABLED_OPTIMIZERS
    elif has_qdq:
        disabled += INT8_DISABLED_OPTIMIZERS
    kwargs = {"disabled_optimizers": list(dict.fromkeys(disabled))} if disabled else {}
    try:
        sess = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"], **kwargs)
    except Exception as e:  # noqa: BLE001
        where = source if isinstance(source, str) else "<in-memory model>"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OnnxAmpError(f"{where}: ONNX Runtime cannot load the model ({msg})") from e
    sess._onnx_amp_tmpdir = tmpdir  # keep external data alive as long as the session
    sess._onnx_amp_fp8 = has_fp8
    return sess


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def run(session: ort.InferenceSession, feeds: dict[str, Any], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run with the feeds the session takes (extra keys such as ``labels`` are ignored)."""
    names = [i.name for i in session.get_inputs()]
    missing = [n for n in names if n not in feeds]
    if missing:
        raise OnnxAmpError(f"inputs {missing} missing from the feeds (have {sorted(feeds)})")
    types = {i.name: i.type for i in session.get_inputs()}
    fd = {}
    for n in names:
        a = _np(feeds[n])
        if types[n] == "tensor(int64)" and a.dtype != np.int64:
            a = a.astype(np.int64)
        elif types[n] == "tensor(float)" and a.dtype != np.float32:
            a = a.astype(np.float32)
        fd[n] = a
    out_names = outputs or [o.name for o in session.get_outputs()]
    res = session.run(out_names, fd)
    return dict(zip(out_names, res))


def _as_model(m, exact_qdq: bool = True) -> tuple[Any, ir.Model | None]:
    if isinstance(m, ort.InferenceSession):
        return m, None
    if isinstance(m, ir.Model):
        return make_session(m, exact_qdq=exact_qdq), m
    model = load_model(m)
    return make_session(m, exact_qdq=exact_qdq), model


def per_sample_losses(session: ort.InferenceSession, batches: Iterable[dict], loss_spec, reference: list | None = None):
    """Run ``session`` over ``batches``; return ([B] loss tensors, outputs of the loss's output per batch)."""
    losses, outs = [], []
    for i, batch in enumerate(batches):
        res = run(session, batch, [loss_spec.output])
        out_t = {k: torch.from_numpy(np.asarray(v)) for k, v in res.items()}
        tb = {k: torch.as_tensor(_np(v)) for k, v in batch.items()}
        if reference is not None:
            tb["reference_logits"] = reference[i]
        losses.append(loss_spec(out_t, tb).double())
        outs.append(out_t[loss_spec.output])
    return losses, outs


def measured_loss_mse(ref_model, plan_model, batches: Iterable[dict], loss_fn=None, progress: bool = True,
                      output_name: str | None = None, exact_qdq: bool = True) -> tuple[float, np.ndarray]:
    """``mean_n (L_n(plan) - L_n(ref))^2`` over the samples of ``batches``; returns (mse, deltas[N]).

    ``batches``: dicts of input arrays (plus ``labels``), or an ORT ``CalibrationDataReader``.
    ``ref_model``/``plan_model``: ``ir.Model``, path, or ``ort.InferenceSession``. ``loss_fn``:
    anything ``runtime.losses.resolve_loss`` takes (``None`` = detect; a ``LossSpec``; a name; a
    callable ``fn(output, batch) -> [B]``). Unlabeled classification scores both models against the
    reference model's prediction. Non-finite losses raise ``OnnxAmpError``. ``exact_qdq`` (default):
    INT8 Q/DQ run unfused, as ONNX defines them (see ``make_session``).
    """
    from tqdm.auto import tqdm

    from onnx_amp.runtime.losses import LossSpec, resolve_loss

    if hasattr(batches, "get_next"):  # an ORT CalibrationDataReader
        reader, batches = batches, []
        while (b := reader.get_next()) is not None:
            batches.append(b)
    batches = list(batches)
    if not batches:
        raise OnnxAmpError("measured loss MSE needs at least one batch of held-out samples")
    ref_sess, ref_ir = _as_model(ref_model, exact_qdq)
    plan_sess, _ = _as_model(plan_model, exact_qdq)
    spec = loss_fn
    if not isinstance(spec, LossSpec):
        if ref_ir is None:
            raise OnnxAmpError("pass a LossSpec (runtime.losses.resolve_loss) when giving sessions instead of models")
        spec = resolve_loss(loss_fn, ref_ir, output_name)
    deltas = []
    it = tqdm(batches, desc="measured loss MSE", unit="batch", disable=not progress, leave=False)
    for batch in it:
        r_res = run(ref_sess, batch, [spec.output])
        p_res = run(plan_sess, batch, [spec.output])
        tb = {k: torch.as_tensor(_np(v)) for k, v in batch.items()}
        r_out = torch.from_numpy(np.asarray(r_res[spec.output]))
        p_out = torch.from_numpy(np.asarray(p_res[spec.output]))
        if "labels" not in tb:
            tb["reference_logits"] = r_out
        lr = spec({spec.output: r_out}, tb).double()
        lp = spec({spec.output: p_out}, tb).double()
        if not (torch.isfinite(lr).all() and torch.isfinite(lp).all()):
            which = "reference" if not torch.isfinite(lr).all() else "plan"
            raise OnnxAmpError(f"non-finite per-sample loss from the {which} model; check the inputs and the plan's formats")
        deltas.append((lp - lr).numpy())
    d = np.concatenate(deltas)
    return float(np.mean(d ** 2)), d
