"""The loss model: formulas, plan sums, errors, and INT8 absolute noise against injected noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onnx_amp.runtime.formats import get_format
from onnx_amp.passes.lossmodel import LayerStats, plan_predicted_mse, predicted_mse
from onnx_amp.runtime.onnx_io import OnnxAmpError


def _stats():
    w = LayerStats("L0", node="mm0", kind="weight", unit="U0", s_a=2.0, s_w=3.0, gsq_a=5.0, amax_a=127.0,
                   gsq_w=np.array([1.0, 4.0]), amax_w=np.array([127.0, 254.0]))
    w2 = LayerStats("L1", node="mm1", kind="weight", unit="U0", s_a=1.0, s_w=1.0, gsq_a=1.0, amax_a=1.0,
                    gsq_w=np.array([1.0]), amax_w=np.array([1.0]))
    aa = LayerStats("L2", node="qk", kind="act_act", unit="U1", s_a=7.0, s_b=11.0, gsq_a=2.0, gsq_b=3.0,
                    amax_a=127.0, amax_b=254.0)
    return {"L0": w, "L1": w2, "L2": aa}


def test_float_formats_are_alpha_times_s():
    st = _stats()
    e4, bf = get_format("fp8_e4m3").alpha, get_format("bf16").alpha
    assert predicted_mse(st["L0"], "fp8_e4m3", "bf16") == pytest.approx(e4 * 3.0 + bf * 2.0)
    assert get_format("fp8_e4m3").alpha == pytest.approx(2.0 ** -6 / 12)
    # act_act: both operands take the activation format, the weight slot is ignored
    assert predicted_mse(st["L2"], "fp32", "fp8_e5m2") == pytest.approx(get_format("fp8_e5m2").alpha * 18.0)
    assert predicted_mse(st["L2"], "int8", "fp8_e5m2") == predicted_mse(st["L2"], "fp32", "fp8_e5m2")


def test_int8_is_absolute_noise():
    st = _stats()
    # weights per channel: sum_c gsq_w[c] (amax_c/127)^2/12 = (1*1 + 4*4)/12; activation: 5 * 1/12
    assert predicted_mse(st["L0"], "int8", "fp32") == pytest.approx(17 / 12 + get_format("fp32").alpha * 2.0)
    assert predicted_mse(st["L0"], "int8", "int8") == pytest.approx(17 / 12 + 5 / 12)
    assert predicted_mse(st["L2"], "int8", "int8") == pytest.approx(2 / 12 + 3 * 4 / 12)


def test_plan_sum_units_layers_default_and_errors():
    st = _stats()
    e4 = get_format("fp8_e4m3").alpha
    fp32 = get_format("fp32").alpha
    total = plan_predicted_mse(st, {"U0": ("fp8_e4m3", "fp8_e4m3")}, default=None)
    assert total == pytest.approx(e4 * (3 + 2 + 1 + 1))
    with_default = plan_predicted_mse(st, {"U0": {"weight": "fp8_e4m3", "activation": "fp8_e4m3"}})
    assert with_default == pytest.approx(total + fp32 * 18)
    assert plan_predicted_mse(st, {"units": {"L2": "w=fp32,a=int8"}}, default=None) == pytest.approx(2 / 12 + 12 / 12)
    with pytest.raises(OnnxAmpError, match="'U9'"):
        plan_predicted_mse(st, {"U9": ("bf16", "bf16")})
    with pytest.raises(ValueError, match="unknown format 'fp4'"):
        plan_predicted_mse(st, {"U0": ("fp4", "bf16")})
    missing = dict(st)
    missing["L0"] = LayerStats("L0", kind="weight", unit="U0", s_a=1.0, s_w=1.0)
    with pytest.raises(OnnxAmpError, match="L0: INT8 weight prediction needs gsq_w"):
        plan_predicted_mse(missing, {"U0": ("int8", "int8")})


def test_int8_formula_matches_injected_uniform_noise():
    """A linear 'loss' L_n = sum(c_n * W) has dL_n = sum(c_n * e): uniform noise of step s_c per
    channel gives E[dL^2] = sum_c mean_n ||c_n[:, c]||^2 s_c^2/12 exactly; the formula must agree."""
    gen = torch.Generator().manual_seed(0)
    N, K, C = 16, 8, 4
    W = torch.randn(K, C, generator=gen)
    coef = torch.randn(N, K, C, generator=gen)  # dL_n/dW
    amax = W.abs().amax(0)
    st = LayerStats("L0", kind="weight", s_a=0.0, s_w=float(((coef * W) ** 2).sum((1, 2)).mean()),
                    gsq_w=(coef ** 2).sum(1).mean(0).numpy(), amax_w=amax.numpy().astype(np.float64), gsq_a=0.0, amax_a=1.0)
    step = amax / 127
    acc = 0.0
    draws = 4000
    for _ in range(draws):
        e = (torch.rand(K, C, generator=gen) - 0.5) * step
        acc += float(((coef * e).sum((1, 2)) ** 2).mean())
    assert acc / draws == pytest.approx(predicted_mse(st, "int8", "fp32"), rel=0.06)
