"""Calibration and plan evaluations over several processes (torchrun, gloo over loopback) give the
single-process result."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from onnx_amp.runtime import distributed as D

WORKER = textwrap.dedent('''
    import pickle, sys
    import numpy as np
    from onnx_amp.runtime import distributed as D
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.format_errors import measure_format_errors
    from onnx_amp.runtime.onnx_io import load_model

    model_path, data_path, out_path, mode = sys.argv[1:5]
    assert D.init_from_env()
    rank, size = D.world()
    model = load_model(model_path)
    data = dict(np.load(data_path))
    if mode == "fail" and rank == size - 1:
        data = {"nope": data["x"]}  # this rank's data does not fit the model
    n = len(data["x"]) if "x" in data else 0
    part = {k: v[D.shard(n)] for k, v in data.items()}
    try:
        res, err = calibrate(model, part, batch_size=4, progress=False), None
    except Exception as e:
        res, err = None, e
    D.all_ok(err)
    res = D.reduce_calibration(res)  # the measured errors need the maxima of all samples
    measure_format_errors(model, part, res, ["int8", "fp8_e4m3"], batch_size=4, progress=False)
    res = D.reduce_calibration(res, samples=len(part["x"]))
    evals = D.map_items(lambda i: (D.world()[0], i * i), list(range(7)))
    if D.is_main():
        with open(out_path, "wb") as f:
            pickle.dump({"result": res, "evals": evals, "size": size}, f)
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from onnx import TensorProto, helper, numpy_helper

    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.runtime.onnx_io import load_model, save_model

    d = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(3):
        inits.append(numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.4).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"),
                  helper.make_node("Tanh", [f"h{i}"], [f"t{i}"])]
        x = f"t{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["B", 16])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    import onnx_ir as ir

    model = ir.from_proto(m)
    PartitionPass()(model)
    save_model(model, d / "m.onnx")
    np.savez(d / "data.npz", x=rng.standard_normal((23, 16)).astype(np.float32))
    (d / "worker.py").write_text(WORKER)
    return d, load_model(d / "m.onnx")


def _torchrun(d, n: int, mode: str = "ok"):
    out = d / f"out{n}{mode}.pkl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(d / "worker.py"), str(d / "m.onnx"), str(d / "data.npz"), str(out), mode]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return r, out


@pytest.mark.parametrize("n", [2, 3])
def test_calibration_over_ranks_equals_one_process(setup, n):
    from onnx_amp.runtime.calibrate import calibrate
    from onnx_amp.runtime.format_errors import measure_format_errors

    d, model = setup
    data = dict(np.load(d / "data.npz"))
    ref = calibrate(model, data, batch_size=4, progress=False)
    measure_format_errors(model, data, ref, ["int8", "fp8_e4m3"], batch_size=4, progress=False)
    r, out = _torchrun(d, n)
    assert r.returncode == 0, r.stderr[-3000:]
    got = pickle.loads(out.read_bytes())
    assert got["size"] == n and got["result"].samples == 23
    assert got["evals"] == [(i % n, i * i) for i in range(7)]  # item i on rank i % n, in order
    for lid, st in ref.layers.items():
        g = got["result"].layers[lid]
        for f in ("s_a", "s_w", "gsq_a", "amax_a", "amax_y"):
            assert getattr(g, f) == pytest.approx(getattr(st, f), rel=1e-5), (lid, f)
        np.testing.assert_allclose(g.gsq_w, st.gsq_w, rtol=1e-5)
        np.testing.assert_array_equal(g.amax_w, st.amax_w)
        for slot, terms in st.extra.items():
            for fmt, v in terms.items():
                assert g.extra[slot][fmt] == pytest.approx(v, rel=1e-5), (lid, slot, fmt)
    assert got["result"].mean_loss == pytest.approx(ref.mean_loss, rel=1e-6)


def test_an_error_on_one_rank_stops_every_rank_with_its_message(setup):
    d, _ = setup
    r, out = _torchrun(d, 2, mode="fail")
    assert r.returncode != 0 and not out.exists()
    assert "rank 1 of 2 failed" in r.stderr and "'nope' is not an input of the model" in r.stderr


def test_shards_cover_every_item_once():
    for n in (0, 1, 5, 23):
        for size in (1, 2, 3, 7):
            parts = [list(range(n))[D.shard(n, r, size)] for r in range(size)]
            assert sum(parts, []) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert D.world() == (0, 1) and D.is_main() and D.map_items(lambda x: x + 1, [1, 2]) == [2, 3]


def _cli(d, args, n: int | None):
    """``onnx-amp ARGS`` in one process (``n`` None) or under torchrun with ``n`` processes."""
    launch = [sys.executable, "-m", "onnx_amp.tools.cli"] if n is None else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "onnx_amp.tools.cli"]
    return subprocess.run(launch + args, capture_output=True, text=True, timeout=600, cwd=d)


def test_run_under_torchrun_gives_the_single_process_plan(setup):
    """``torchrun --nproc_per_node 2 -m onnx_amp.tools.cli run``: calibration over 2 processes, the
    same plan as one process, outputs written once, one summary."""
    import json

    d, _ = setup
    common = ["run", "m.onnx", "--calibration_data", "data.npz", "--validation_samples", "5", "--target", "gaudi2",
              "--no-measure", "--metric", "memory", "--tau_relative", "0.3", "--no-pareto", "--no-progress"]
    one = _cli(d, common + ["-o", "one"], None)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _cli(d, common + ["-o", "two"], 2)
    assert two.returncode == 0, two.stderr[-3000:]
    plan1, plan2 = (json.loads((d / o / "plan.json").read_text()) for o in ("one", "two"))
    assert plan1["units"] and plan2["units"] == plan1["units"]
    assert sorted(p.name for p in (d / "two").iterdir()) == sorted(p.name for p in (d / "one").iterdir())
    assert two.stdout.count("predicted") == one.stdout.count("predicted") >= 1  # one summary, from rank 0
    assert not list(d.glob("two/.*")), "no hidden work folder left behind"


def test_calibrate_cli_under_torchrun_equals_one_process(setup):
    from onnx_amp.core import annotations as A
    from onnx_amp.passes.lossmodel import layer_stats_from_model
    from onnx_amp.runtime.onnx_io import load_model

    d, _ = setup
    args = ["calibrate", "m.onnx", "--calibration_data", "data.npz", "--batch_size", "4", "--no_progress"]
    one, three = _cli(d, args + ["-o", "c1.onnx"], None), _cli(d, args + ["-o", "c3.onnx"], 3)
    assert one.returncode == 0 and three.returncode == 0, three.stderr[-3000:]
    assert three.stdout.count("calibrated ") == 1
    a, b = (load_model(d / f) for f in ("c1.onnx", "c3.onnx"))
    sa, sb = layer_stats_from_model(a), layer_stats_from_model(b)
    assert set(sa) == set(sb) and A.get_json(b, A.CALIBRATION)["samples"] == 23
    for lid, st in sa.items():
        assert sb[lid].s_a == pytest.approx(st.s_a, rel=1e-5) and sb[lid].s_w == pytest.approx(st.s_w, rel=1e-5)
        assert sb[lid].extra["w"]["int8"] == pytest.approx(st.extra["w"]["int8"], rel=1e-5)
