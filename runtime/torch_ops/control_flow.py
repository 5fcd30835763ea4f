"""Control flow with subgraphs: If, Loop, Scan. Bodies run in the interpreter (outer-scope values
visible), so gradients flow through the taken branch and through every iteration."""

from __future__ import annotations

import torch

from .common import arg, attr, axis, op, opset, unsupported


def _graph(node, name):
    a = node.attributes.get(name)
    return None if a is None else a.value


@op("If", ctx=True)
def _if(node, x, ctx):
    branch = "then_branch" if bool(x[0].reshape(-1)[0]) else "else_branch"
    return ctx.run(_graph(node, branch), [])


def _stack(parts: list[torch.Tensor], like: torch.Tensor | None = None) -> torch.Tensor:
    if parts:
        return torch.stack(parts)
    return torch.zeros((0,), dtype=like.dtype if like is not None else torch.float32)


@op("Loop", ctx=True)
def _loop(node, x, ctx):
    body = _graph(node, "body")
    m, cond = arg(x, 0), arg(x, 1)
    state = list(x[2:])
    n_state = len(state)
    n_scan = len(body.outputs) - 1 - n_state
    trips = int(m.reshape(-1)[0]) if m is not None else None
    keep_going = bool(cond.reshape(-1)[0]) if cond is not None else True
    scans: list[list[torch.Tensor]] = [[] for _ in range(n_scan)]
    i = 0
    while keep_going and (trips is None or i < trips):
        it = torch.tensor(i, dtype=torch.int64)
        c = torch.tensor(keep_going)
        outs = ctx.run(body, [it, c] + state)
        if cond is not None:  # without a cond input, the body's cond output is ignored
            keep_going = bool(outs[0].reshape(-1)[0])
        state = list(outs[1:1 + n_state])
        for j in range(n_scan):
            scans[j].append(outs[1 + n_state + j])
        i += 1
        if trips is None and i > 10**7:
            raise unsupported(node, "with more than 10^7 iterations")
    return state + [_stack(s) for s in scans]


@op("Scan", ctx=True)
def _scan(node, x, ctx):
    if opset(node) < 9:
        return _scan8(node, x, ctx)
    body = _graph(node, "body")
    n_in = attr(node, "num_scan_inputs")
    n_state = len(x) - n_in
    state, seqs = list(x[:n_state]), list(x[n_state:])
    in_axes = attr(node, "scan_input_axes", [0] * n_in)
    in_dirs = attr(node, "scan_input_directions", [0] * n_in)
    seqs = [s.movedim(axis(a, s.dim()), 0) for s, a in zip(seqs, in_axes, strict=False)]
    seqs = [s.flip(0) if d else s for s, d in zip(seqs, in_dirs, strict=False)]
    n_out = len(body.outputs) - n_state
    out_axes = attr(node, "scan_output_axes", [0] * n_out)
    out_dirs = attr(node, "scan_output_directions", [0] * n_out)
    steps = seqs[0].shape[0] if seqs else 0
    scans: list[list[torch.Tensor]] = [[] for _ in range(n_out)]
    for i in range(steps):
        outs = ctx.run(body, state + [s[i] for s in seqs])
        state = list(outs[:n_state])
        for j in range(n_out):
            scans[j].append(outs[n_state + j])
    results = []
    for j in range(n_out):
        y = _stack(scans[j])
        if out_dirs[j]:
            y = y.flip(0)
        results.append(y.movedim(0, axis(out_axes[j], y.dim())))
    return state + results


def _scan8(node, x, ctx):
    """Scan-8: a leading batch axis on states and scan inputs, optional sequence_lens first."""
    body = _graph(node, "body")
    lens, rest = x[0], list(x[1:])
    n_in = attr(node, "num_scan_inputs")
    n_state = len(rest) - n_in
    dirs = attr(node, "directions", [0] * n_in)
    n_out = len(body.outputs) - n_state
    states_b, outs_b = [], []
    for b in range(rest[0].shape[0]):
        steps = rest[n_state].shape[1]
        n = int(lens[b]) if lens is not None else steps
        state = [s[b] for s in rest[:n_state]]
        seqs = [s[b, :n].flip(0) if d else s[b, :n] for s, d in zip(rest[n_state:], dirs, strict=False)]
        scans: list[list[torch.Tensor]] = [[] for _ in range(n_out)]
        for i in range(n):
            outs = ctx.run(body, state + [s[i] for s in seqs])
            state = list(outs[:n_state])
            for j in range(n_out):
                scans[j].append(outs[n_state + j])
        if n < steps and n_out:
            raise unsupported(node, "(opset 8) with sequences shorter than the scan axis")
        states_b.append(state)
        outs_b.append([_stack(sc) for sc in scans])
    states = [torch.stack([s[j] for s in states_b]) for j in range(n_state)]
    return states + [torch.stack([o[j] for o in outs_b]) for j in range(n_out)]
