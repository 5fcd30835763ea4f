"""Generators of bad and awkward inputs for every onnx-amp stage (``tests/test_faults.py``).

Every model is hand-built with ``onnx.helper`` and tiny (a few 16x32 weights), so the whole corpus
runs in seconds per stage. What is here:

- models: an MLP at any opset, batch, dtype (float32/float16/bfloat16), with or without
  ``value_info`` and input shapes, with external data; a token model (``input_ids`` -> Gather ->
  logits) for token-id cases; a Conv model; control flow (``If``); a custom-domain op;
- broken files: empty, random bytes, truncated, a folder named ``.onnx``, missing/truncated ``.data``;
- calibration data: NaN, Inf, huge (1e30), empty, strings, wrong name/rank/dtype, negative or
  out-of-vocabulary token ids, too few samples for a static batch;
- plans and targets: not JSON, wrong types, unknown units/formats, NaN/Inf/negative numbers.

``python tests/fault_corpus.py determinism [--runs N]`` measures how often two profiling runs of the
same model give different plans, with the raw measured gains and with the settled ones
(``passes.problem.settle_measured_gains``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TARGET_DIR = Path(__file__).resolve().parent.parent / "runtime" / "targets"
RNG_SEED = 0

_NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


def _weights(shape, dtype=TensorProto.FLOAT, seed=0, scale=0.3):
    arr = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
    if dtype == TensorProto.BFLOAT16:
        return helper.make_tensor("w", TensorProto.BFLOAT16, shape, arr.flatten().tolist())
    return numpy_helper.from_array(arr.astype(_NP[dtype]))


def _named(t, name):
    t.name = name
    return t


def _save(model: onnx.ModelProto, path: Path, external: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def _model(graph, opset: int = 21) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="fault_corpus")
    m.ir_version = 10 if opset >= 21 else (9 if opset >= 19 else 8 if opset >= 15 else 7)
    return m


def mlp(path, opset: int = 21, batch="B", value_info: bool = True, dtype=TensorProto.FLOAT, external: bool = False,
        input_shape: bool = True, dims=(16, 32, 4), layers: int = 2, seed: int = 0, scale: float = 0.3) -> Path:
    """x[batch,16] -> MatMul(fc1) -> Relu -> MatMul(fc2) -> y[batch,4] (``layers`` > 2: more hidden MatMuls)."""
    d_in, d_h, d_out = dims
    nodes, inits, vi = [], [], []
    cur, width = "x", d_in
    for i in range(layers):
        out_w = d_out if i == layers - 1 else d_h
        w = f"w{i + 1}"
        inits.append(_named(_weights([width, out_w], dtype, seed + i, scale), w))
        y = "y" if i == layers - 1 else f"h{i + 1}"
        nodes.append(helper.make_node("MatMul", [cur, w], [y], name=f"fc{i + 1}"))
        if i < layers - 1:
            vi.append(helper.make_tensor_value_info(y, dtype, [batch, out_w]))
            r = f"r{i + 1}"
            nodes.append(helper.make_node("Relu", [y], [r], name=f"act{i + 1}"))
            vi.append(helper.make_tensor_value_info(r, dtype, [batch, out_w]))
            cur = r
        width = out_w
    x = (helper.make_tensor_value_info("x", dtype, [batch, d_in]) if input_shape
         else helper.make_tensor_value_info("x", dtype, None))
    g = helper.make_graph(nodes, "mlp", [x], [helper.make_tensor_value_info("y", dtype, [batch, d_out])], inits,
                          value_info=vi if value_info else None)
    return _save(_model(g, opset), path, external)


def token_model(path, vocab: int = 50, d: int = 16, seq=8) -> Path:
    """input_ids[B,T] -> Gather(embedding[vocab,16]) -> MatMul(fc) -> Relu -> MatMul(lm_head) -> logits[B,T,vocab]."""
    emb = _named(_weights([vocab, d], seed=1, scale=1.0), "embed")
    w1 = _named(_weights([d, 32], seed=2), "w1")
    w2 = _named(_weights([32, vocab], seed=3), "w2")
    nodes = [helper.make_node("Gather", ["embed", "input_ids"], ["e"], name="embed_tokens", axis=0),
             helper.make_node("MatMul", ["e", "w1"], ["h"], name="fc"),
             helper.make_node("Relu", ["h"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="lm_head")]
    vi = [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["B", seq, d]),
          helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", seq, 32]),
          helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", seq, 32])]
    g = helper.make_graph(nodes, "toklm", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", seq])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", seq, vocab])],
                          [emb, w1, w2], value_info=vi)
    return _save(_model(g), path)


def conv_model(path) -> Path:
    """x[B,3,8,8] -> Conv(8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4)."""
    w = _named(_weights([8, 3, 3, 3], seed=4), "cw")
    b = _named(numpy_helper.from_array(np.zeros(8, np.float32)), "cb")
    gw = _named(_weights([4, 8], seed=5), "gw")
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="act"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "gw"], ["y"], name="head", transB=1)]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w, b, gw])
    return _save(_model(g), path)


def if_model(path) -> Path:
    """Control flow: fc1 -> If(sum > 0: Relu, else: Neg) -> fc2."""
    w1 = _named(_weights([16, 32], seed=6), "w1")
    w2 = _named(_weights([32, 4], seed=7), "w2")
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["t"], name="then_relu")], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["B", 32])])
    else_g = helper.make_graph([helper.make_node("Neg", ["h"], ["e"], name="else_neg")], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["B", 32])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("ReduceSum", ["h"], ["s"], name="sum", keepdims=0),
             helper.make_node("Constant", [], ["zero"], name="zero", value=numpy_helper.from_array(np.array(0, np.float32))),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
             helper.make_node("If", ["cond"], ["z"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("MatMul", ["z", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "ifmodel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w1, w2],
                          value_info=[helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 32])])
    return _save(_model(g), path)


def custom_op_model(path) -> Path:
    """fc1 -> my.ops::Swish (a custom op no runtime knows) -> fc2."""
    w1 = _named(_weights([16, 32], seed=8), "w1")
    w2 = _named(_weights([32, 4], seed=9), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Swish", ["h"], ["r"], name="custom_swish", domain="my.ops"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], [w1, w2],
                          value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", 32]),
                                      helper.make_tensor_value_info("r", TensorProto.FLOAT, ["B", 32])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("my.ops", 1)])
    m.ir_version = 10
    return _save(m, path)


def no_layer_model(path) -> Path:
    """x -> Relu -> y: nothing to quantize."""
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "nolayer",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])])
    return _save(_model(g), path)


# ---- broken files --------------------------------------------------------------------------

def truncated(src: Path, dst: Path, frac: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * frac)])
    return Path(dst)


def random_bytes(dst: Path, n: int = 4096, seed: int = 0) -> Path:
    Path(dst).write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return Path(dst)


# ---- data -------------------------------------------------------------------------------------

def npz(path, **arrays) -> Path:
    np.savez(path, **arrays)
    return Path(path)


def mlp_data(n: int = 24, seed: int = 0, scale: float = 1.0, dtype=np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 16)) * scale).astype(dtype)


def token_data(n: int = 12, vocab: int = 50, seq: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (n, seq)).astype(np.int64)


# ---- targets and plans ----------------------------------------------------------------------------

def target_file(path, name: str = "mytarget", base: str = "h100", edit=None) -> Path:
    data = json.loads((TARGET_DIR / f"{base}.json").read_text())
    data["name"] = name
    if edit is not None:
        edit(data)
    Path(path).write_text(json.dumps(data))  # json writes NaN/Infinity as Python's json reads them
    return Path(path)


def plan_file(path, units: dict | None = None, **extra) -> Path:
    d = {"version": 1, "target": "cpu", "strategy": "manual", "tau": None,
         "units": units if units is not None else {"U0": {"weight": "int8", "activation": "int8"}}}
    d.update(extra)
    Path(path).write_text(json.dumps(d))
    return Path(path)


# ---- snapshots ----------------------------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (hidden ones included)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- determinism measurement ----------------------------------------------------------------------

def _determinism(runs: int, work: Path, layers: int = 6, width: int = 768, repeats: int = 10) -> dict:
    """Profile one MLP (``layers`` MatMuls of ``width``) ``runs`` times on this CPU with the same seed,
    solve each (ip, metric time) at 5 taus with the raw measured gains and with the settled ones
    (``passes.problem.settle_measured_gains``), and count the pairs of runs whose plans differ."""
    import itertools
    import math

    from onnx_amp.core import annotations as ann
    from onnx_amp.core.onnx_io import load_model
    from onnx_amp.passes import problem as P
    from onnx_amp.passes.strategies import solve
    from onnx_amp.tools.cli import main

    work.mkdir(parents=True, exist_ok=True)
    dims = (width, width, 16) if layers > 2 or width > 32 else (16, 32, 4)
    src = mlp(work / "m.onnx", layers=layers, dims=dims, scale=1 / math.sqrt(dims[0]))
    npz(work / "d.npz", x=np.random.default_rng(0).standard_normal((16, dims[0])).astype(np.float32))
    quiet = ["--no_progress"]
    assert main(["partition", str(src), "-o", str(work / "p.onnx")]) == 0
    assert main(["calibrate", str(work / "p.onnx"), "--calibration_data", str(work / "d.npz"), "-o",
                 str(work / "c.onnx"), "--loss_model", "ideal", *quiet]) == 0
    plans: dict[str, list[list[str]]] = {"raw": [], "settled": []}
    resolutions, lowered = [], {"raw": [], "settled": []}
    real = P.settle_measured_gains
    for i in range(runs):
        g = work / f"g{i}.onnx"
        assert main(["profile", str(work / "c.onnx"), "--measure", "--repeats", str(repeats), "-o", str(g)]) == 0
        model = load_model(g)
        resolutions.append(P.gain_resolution(ann.get_json(model, ann.GAINS)["regions"]))
        for kind in ("raw", "settled"):
            P.settle_measured_gains = real if kind == "settled" else (lambda regions, resolution=None: {
                rid: r["configs"] for rid, r in regions.items()})
            try:
                prob = P.problem_from_model(model)
            finally:
                P.settle_measured_gains = real
            lo = prob.all_low_mse()
            ps = [json.dumps(solve(prob, f * lo, "ip", "time").plan["units"], sort_keys=True) for f in (0.05, 0.1, 0.2, 0.4, 0.8)]
            plans[kind].append(ps)
            lowered[kind].append([len(json.loads(p)) for p in ps])
    pairs = list(itertools.combinations(range(runs), 2))
    out = {"runs": runs, "model": f"{layers} MatMul layers, width {dims[0]}", "repeats": repeats,
           "resolution_s": resolutions}
    for kind, ps in plans.items():
        out[kind] = {"pairs_differing": sum(ps[a] != ps[b] for a, b in pairs), "pairs": len(pairs),
                     "solves_differing": sum(x != y for a, b in pairs for x, y in zip(ps[a], ps[b])),
                     "solves": 5 * len(pairs), "distinct_plans": len({tuple(p) for p in ps}),
                     "units_lowered_per_run": lowered[kind]}
    return out


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["determinism"])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = _determinism(a.runs, Path(d), a.layers, a.width, a.repeats)
    print(json.dumps(res))
