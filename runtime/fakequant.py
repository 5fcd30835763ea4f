"""Torch emulation of the rewrite pass's lowering, matching ONNX Runtime's QDQ and Cast numerics.

- ``fake_quant(x, fmt, scale, axis=None)``: ``DequantizeLinear(QuantizeLinear(x, scale, 0), scale, 0)``
  as ONNX defines it: ``q = saturate(round_half_even(x / scale))`` (INT8: clamp to [-128, 127];
  FP8: ``saturate=1``, i.e. clamp to +-max finite then round to nearest even in the fp8 type), then
  ``q * scale``. ORT divides by the scale (it does not multiply by a reciprocal), and so do we.
- ``cast_emulate(x, fmt)``: ``Cast(Cast(x, to=fmt), to=float)`` (round to nearest even).
- ``quantize_weight(w, fmt, axis)``: the per-output-channel scales and stored values the rewrite
  pass writes into the ONNX file (scale = amax_c / fmt.max, all-zero channels get scale 1).
- ``emulate_plan_hook(model)``: an ``operand_hook(node, input_index, tensor)`` for
  ``runtime.torch_graph.TorchGraph.forward`` that applies every layer's ``onnx_amp.precision``.
"""

from __future__ import annotations


import torch

from onnx_amp.core import annotations as A
from onnx_amp.core.formats import Format, get_format
from onnx_amp.passes.quantize import REDUCED_INT8_QMAX, activation_scale  # noqa: F401  (one definition of both)

TINY = 1e-30  # smallest scale we write: amax == 0 would give scale 0 (division by zero in Q)


def _fmt(fmt: str | Format) -> Format:
    return fmt if isinstance(fmt, Format) else get_format(fmt)


_TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "int8": torch.int8}


def torch_dtype(fmt: str | Format) -> torch.dtype:
    """The torch storage type of a format."""
    return _TORCH_DTYPE[_fmt(fmt).name]


def _bshape(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or scale.dim() == 0 or scale.numel() == 1:
        return scale.reshape(())
    ax = axis % x.dim()
    shape = [1] * x.dim()
    shape[ax] = -1
    return scale.reshape(shape)


def quantize(x: torch.Tensor, fmt: str | Format, scale, axis: int | None = None) -> torch.Tensor:
    """QuantizeLinear with zero point 0: returns the int8 / float8 tensor."""
    f = _fmt(fmt)
    if not f.needs_qdq:
        raise ValueError(f"{f.name} is not a Q/DQ format")
    x = x.float()
    s = _bshape(torch.as_tensor(scale, dtype=torch.float32), x, axis)
    y = x / s
    if f.is_int:
        return torch.clamp(torch.round(y), -128, 127).to(torch.int8)
    # saturate=1: out-of-range (incl. inf) clamps to +-max; NaN stays NaN
    y = torch.where(torch.isnan(y), y, torch.clamp(y, -f.max_value, f.max_value))
    return y.to(torch_dtype(f))


def dequantize(q: torch.Tensor, scale, axis: int | None = None) -> torch.Tensor:
    s = _bshape(torch.as_tensor(scale, dtype=torch.float32), q, axis)
    return q.to(torch.float32) * s


def fake_quant(x: torch.Tensor, fmt: str | Format, scale, axis: int | None = None) -> torch.Tensor:
    """DQ(Q(x)) exactly as ORT computes it (float32 result, same dtype as x is not kept)."""
    return dequantize(quantize(x, fmt, scale, axis), scale, axis)


def cast_emulate(x: torch.Tensor, fmt: str | Format) -> torch.Tensor:
    """Cast to bf16/fp16 and back to float32 (RNE, as ORT's Cast); fp32 is the identity."""
    f = _fmt(fmt)
    if f.name == "fp32":
        return x.float()
    if f.needs_qdq:
        raise ValueError(f"{f.name} is lowered with Q/DQ, use fake_quant")
    return x.to(torch_dtype(f)).to(torch.float32)




def weight_scales(w: torch.Tensor, fmt: str | Format, axis: int, reduce_range: bool = False) -> torch.Tensor:
    """Per-output-channel scale amax_c / fmt.max (float32 vector along ``axis``).

    ``reduce_range`` (INT8 only): scale amax_c / 63, so stored weights lie in [-63, 63]. ORT's fused
    u8s8 integer kernels on x86 CPUs without VNNI (AVX2, e.g. this machine) add pairs of u8*s8
    products in int16 with saturation; full-range weights then give wrong results there.
    """
    f = _fmt(fmt)
    ax = axis % w.dim()
    dims = [d for d in range(w.dim()) if d != ax]
    amax = w.detach().float().abs().amax(dim=dims) if dims else w.detach().float().abs()
    qmax = REDUCED_INT8_QMAX if (reduce_range and f.is_int) else f.max_value
    s = (amax / qmax).to(torch.float32)
    return torch.where(s > 0, s, torch.ones_like(s))


def quantize_weight(w: torch.Tensor, fmt: str | Format, axis: int,
                    reduce_range: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored quantized weight, per-channel scales) as the rewrite pass writes them."""
    s = weight_scales(w, fmt, axis, reduce_range)
    return quantize(w, fmt, s, axis), s


def apply_operand_format(x: torch.Tensor, fmt: str | Format, *, amax: float | None = None,
                         axis: int | None = None, reduce_range: bool = False) -> torch.Tensor:
    """Lower one operand: fp32 identity, bf16/fp16 cast pair, fp8/int8 fake quant.

    ``axis`` given: per-channel weight quantization with scales from ``x`` itself; otherwise
    per-tensor with the calibration ``amax``.
    """
    f = _fmt(fmt)
    if f.name == "fp32":
        return x
    if not f.needs_qdq:
        return cast_emulate(x, f).to(x.dtype)
    if axis is not None:
        return fake_quant(x, f, weight_scales(x, f, axis, reduce_range), axis).to(x.dtype)
    if amax is None:
        raise ValueError(f"{f.name} activation needs a calibration amax (run onnx-amp calibrate first)")
    return fake_quant(x, f, activation_scale(amax, f)).to(x.dtype)


def _layer_spec(node) -> dict | None:
    props = node.metadata_props
    prec = props.get(A.PRECISION)
    if prec is None or A.LAYER not in props:
        return None
    wf, af = A.parse_precision(prec)
    kind = props.get(A.LAYER_KIND, "weight")
    spec = {"kind": kind, "w": get_format(wf), "a": get_format(af)}
    if kind == "weight":
        spec["weight_input"] = int(props.get(A.WEIGHT_INPUT, "1"))
        spec["weight_axis"] = int(props.get(A.WEIGHT_AXIS, "-1"))
    spec["amax_a"] = float(props[A.AMAX_A]) if A.AMAX_A in props else None
    spec["amax_b"] = float(props[A.AMAX_B]) if A.AMAX_B in props else None
    return spec


def emulate_plan_hook(model, reduce_range: bool = False):
    """``operand_hook(node, input_index, tensor)`` applying each layer's ``onnx_amp.precision``.

    Matches the *emulate* form of ``RewritePass`` operand by operand (INT8 output Q/DQ, which the
    rewrite adds only when ``onnx_amp.amax.y`` is present and ``int8_output_q`` is on, is not an
    operand and is not emulated here). The node may be given as the ``ir.Node`` or its name.
    """
    specs: dict[str, dict] = {}
    for node in model.graph.all_nodes():
        s = _layer_spec(node)
        if s is not None:
            specs[node.name] = s
    wcache: dict[tuple[str, int], torch.Tensor] = {}

    def hook(node, input_index: int, tensor: torch.Tensor) -> torch.Tensor:
        name = node if isinstance(node, str) else node.name
        s = specs.get(name)
        if s is None or not torch.is_floating_point(tensor):
            return tensor
        if s["kind"] == "weight":
            if input_index == s["weight_input"]:
                key = (name, input_index)
                # weights are constant across batches: quantize once
                if key not in wcache or wcache[key][0] is not tensor:
                    wcache[key] = (tensor, apply_operand_format(tensor, s["w"], axis=s["weight_axis"],
                                                                        reduce_range=reduce_range))
                return wcache[key][1]
            data_index = 0 if s["weight_input"] != 0 else 1
            if input_index == data_index:
                return apply_operand_format(tensor, s["a"], amax=s["amax_a"])
            return tensor  # bias etc.
        if input_index == 0:
            return apply_operand_format(tensor, s["a"], amax=s["amax_a"])
        if input_index == 1:
            return apply_operand_format(tensor, s["a"], amax=s["amax_b"])
        return tensor

    hook.specs = specs  # for inspection / tests
    return hook


def emulate_plan_output_hook(model, int8_output_q: bool = True):
    """``output_hook(node, index, tensor)``: the emulate form's INT8 output ``Q -> DQ`` (layers with
    w=int8,a=int8 (or act_act a=int8) and an ``onnx_amp.amax.y`` annotation)."""
    amax_y: dict[str, float] = {}
    for node in model.graph.all_nodes():
        s = _layer_spec(node)
        if s is None or not int8_output_q:
            continue
        is_int8 = s["a"].name == "int8" and (s["kind"] == "act_act" or s["w"].name == "int8")
        if int8_output_q == "conv" and node.op_type not in ("Conv", "ConvTranspose"):
            continue
        if is_int8 and "onnx_amp.amax.y" in node.metadata_props:
            amax_y[node.name] = float(node.metadata_props["onnx_amp.amax.y"])

    def hook(node, index: int, tensor: torch.Tensor) -> torch.Tensor:
        name = node if isinstance(node, str) else node.name
        if index != 0 or name not in amax_y:
            return tensor
        f = get_format("int8")
        return fake_quant(tensor, f, activation_scale(amax_y[name], f)).to(tensor.dtype)

    return hook


def emulate_plan_hooks(model, int8_output_q: bool = False, reduce_range: bool = False):
    """(operand_hook, output_hook) for ``TorchGraph.forward`` reproducing
    ``RewritePass("emulate", int8_output_q, reduce_range)``."""
    return emulate_plan_hook(model, reduce_range), emulate_plan_output_hook(model, int8_output_q)
