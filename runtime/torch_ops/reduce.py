"""Reductions and ops along an axis: Reduce*, ArgMax/ArgMin, CumSum/CumProd, TopK, Softmax family,
MatMul, Gemm, Einsum, Det."""

from __future__ import annotations

import numpy as np
import torch

from .common import arg, attr, axis, ints, op, opset

_REDUCES = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceSumSquare", "ReduceL1",
            "ReduceL2", "ReduceLogSum", "ReduceLogSumExp")


def _reduce_axes(node, x):
    a = attr(node, "axes")
    if a is None and arg(x, 1) is not None:
        a = ints(x[1])
    return a


def _empty_extreme(t: torch.Tensor, dims: list[int], keep: bool, largest: bool) -> torch.Tensor:
    shape = [1 if i in dims else d for i, d in enumerate(t.shape)] if keep else [
        d for i, d in enumerate(t.shape) if i not in dims]
    if t.dtype == torch.bool:
        return torch.full(shape, not largest, dtype=torch.bool)
    if t.is_floating_point():
        return torch.full(shape, -np.inf if largest else np.inf, dtype=t.dtype)
    info = torch.iinfo(t.dtype)
    return torch.full(shape, info.min if largest else info.max, dtype=t.dtype)


def _extreme(t: torch.Tensor, dims: list[int], keep: bool, largest: bool) -> torch.Tensor:
    if any(t.shape[d] == 0 for d in dims):
        return _empty_extreme(t, dims, keep, largest)
    if t.dtype == torch.bool:
        f = torch.any if largest else torch.all
        out = t
        for d in sorted(dims, reverse=True):
            out = f(out, dim=d, keepdim=keep)
        return out
    return t.amax(dim=dims, keepdim=keep) if largest else t.amin(dim=dims, keepdim=keep)


@op(*_REDUCES)
def _reduce(node, x):
    t = x[0]
    axes = _reduce_axes(node, x)
    keep = bool(attr(node, "keepdims", 1))
    if not axes:
        if attr(node, "noop_with_empty_axes", 0):
            return t
        axes = list(range(t.dim()))
    dims = sorted({axis(a, t.dim()) for a in axes})
    kind = node.op_type[6:]
    if kind in ("Max", "Min"):
        return _extreme(t, dims, keep, kind == "Max")
    if kind == "Prod":
        out = t
        for a in sorted(dims, reverse=True):
            out = out.prod(dim=a, keepdim=keep)
        return out
    if kind == "LogSumExp":
        return torch.logsumexp(t, dim=dims, keepdim=keep)
    if kind == "Mean":
        return t.mean(dim=dims, keepdim=keep) if t.is_floating_point() else (
            t.sum(dim=dims, keepdim=keep) // max(1, int(np.prod([t.shape[d] for d in dims]))))
    src = {"SumSquare": lambda v: v * v, "L1": torch.abs, "L2": lambda v: v * v}.get(kind, lambda v: v)(t)
    out = src.sum(dim=dims, keepdim=keep)
    if kind == "L2":
        out = torch.sqrt(out) if out.is_floating_point() else torch.sqrt(out.double()).to(out.dtype)
    elif kind == "LogSum":
        out = torch.log(out)
    return out.to(t.dtype) if not t.is_floating_point() else out


@op("ArgMax", "ArgMin")
def _argmax(node, x):
    t = x[0]
    a = axis(attr(node, "axis", 0), t.dim())
    keep = bool(attr(node, "keepdims", 1))
    f = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    if attr(node, "select_last_index", 0):
        return t.shape[a] - 1 - f(t.flip(a), dim=a, keepdim=keep)
    return f(t, dim=a, keepdim=keep)


@op("CumSum", "CumProd")
def _cumulative(node, x):
    t, a = x[0], axis(int(x[1].reshape(-1)[0]), x[0].dim())
    rev, excl = attr(node, "reverse", 0), attr(node, "exclusive", 0)
    if rev:
        t = t.flip(a)
    if excl:
        fill = 0 if node.op_type == "CumSum" else 1
        head = torch.full_like(t.narrow(a, 0, 1), fill)
        t = torch.cat([head, t.narrow(a, 0, t.shape[a] - 1)], dim=a)
    out = torch.cumsum(t, a) if node.op_type == "CumSum" else torch.cumprod(t, a)
    out = out.to(x[0].dtype)
    return out.flip(a) if rev else out


@op("TopK")
def _topk(node, x):
    t = x[0]
    k = int(x[1].reshape(-1)[0]) if len(x) > 1 else attr(node, "k")
    a = axis(attr(node, "axis", -1), t.dim())
    largest = bool(attr(node, "largest", 1))
    key = t.float() if not t.is_floating_point() and t.dtype != torch.int64 else t
    _, idx = torch.sort(key.detach(), dim=a, descending=largest, stable=True)
    idx = idx.narrow(a, 0, k)
    return [torch.gather(t, a, idx), idx]


def _coerced_2d(node, t, fn):
    """Softmax family before opset 13: the input viewed as 2-D at ``axis`` (default 1)."""
    a = axis(attr(node, "axis", 1), t.dim())
    lead = int(np.prod(t.shape[:a], dtype=np.int64))
    return fn(t.reshape(lead, -1), 1).reshape(t.shape)


def _hardmax(t: torch.Tensor, dim: int) -> torch.Tensor:
    idx = torch.argmax(t, dim=dim, keepdim=True)
    return torch.zeros_like(t).scatter(dim, idx, 1.0)


@op("Softmax", "LogSoftmax", "Hardmax")
def _softmax(node, x):
    fn = {"Softmax": torch.softmax, "LogSoftmax": torch.log_softmax, "Hardmax": _hardmax}[node.op_type]
    t = x[0]
    if opset(node) < 13:
        return _coerced_2d(node, t, fn)
    return fn(t, axis(attr(node, "axis", -1), t.dim()))


@op("MatMul")
def _matmul(node, x):
    return torch.matmul(x[0], x[1])


@op("Gemm")
def _gemm(node, x):
    a, b = x[0], x[1]
    if attr(node, "transA", 0):
        a = a.t()
    if attr(node, "transB", 0):
        b = b.t()
    out = a @ b
    alpha, beta = attr(node, "alpha", 1.0), attr(node, "beta", 1.0)
    if alpha != 1.0:
        out = alpha * out
    if arg(x, 2) is not None:
        out = out + (x[2] if beta == 1.0 else beta * x[2])
    return out


@op("Einsum")
def _einsum(node, x):
    eq = attr(node, "equation").replace(" ", "")
    return torch.einsum(eq, *x)


@op("Det")
def _det(node, x):
    return torch.linalg.det(x[0])
