"""The ``onnx-amp`` command line: discovery, export/partition, and clean failures on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from onnx_amp.tools.cli import main


def _mlp_model(with_layer: bool = True) -> ir.Model:
    """x[B,16] -> MatMul(W1) -> Relu -> MatMul(W2) (weights as initializers), or Relu only."""
    rng = np.random.default_rng(0)
    x = ir.Value(name="x", shape=ir.Shape(["B", 16]), type=ir.TensorType(ir.DataType.FLOAT))
    nodes, inits = [], []
    if with_layer:
        w1 = ir.Value(name="w1", const_value=ir.tensor(rng.standard_normal((16, 32)).astype(np.float32), name="w1"))
        w2 = ir.Value(name="w2", const_value=ir.tensor(rng.standard_normal((32, 8)).astype(np.float32), name="w2"))
        inits = [w1, w2]
        m1 = ir.Node("", "MatMul", [x, w1], name="fc1")
        r = ir.Node("", "Relu", [m1.outputs[0]], name="relu")
        m2 = ir.Node("", "MatMul", [r.outputs[0], w2], name="fc2")
        nodes = [m1, r, m2]
    else:
        nodes = [ir.Node("", "Relu", [x], name="relu"), ]
        nodes.append(ir.Node("", "Sigmoid", [nodes[0].outputs[0]], name="sig"))
    y = nodes[-1].outputs[0]
    y.name = "y"
    g = ir.Graph([x], [y], nodes=nodes, initializers=inits, opset_imports={"": 21}, name="mlp")
    return ir.Model(g, ir_version=10)


@pytest.fixture()
def mlp_onnx(tmp_path) -> Path:
    p = tmp_path / "in" / "mlp.onnx"
    p.parent.mkdir()
    ir.save(_mlp_model(), p, external_data="mlp.onnx.data", size_threshold_bytes=0)
    assert (p.parent / "mlp.onnx.data").exists()
    return p


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_help_lists_discovered_subcommands():
    r = subprocess.run([sys.executable, "-m", "onnx_amp.tools.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    assert "export" in r.stdout and "partition" in r.stdout
    v = subprocess.run([sys.executable, "-m", "onnx_amp.tools.cli", "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("onnx-amp ")


def test_no_command_is_usage_error(capsys):
    rc, _, err = _run([], capsys)
    assert rc == 2 and "usage" in err


def test_partition_writes_annotated_copy_and_json(mlp_onnx, tmp_path, capsys):
    before = _snapshot(mlp_onnx.parent)
    out = tmp_path / "out" / "mlp.part.onnx"
    out.parent.mkdir()
    js = tmp_path / "out" / "regions.json"
    rc, stdout, _ = _run(["partition", mlp_onnx, "-o", out, "--json", js], capsys)
    assert rc == 0
    assert "regions" in stdout and "largest region" in stdout
    assert _snapshot(mlp_onnx.parent) == before  # input untouched
    m = ir.load(out)
    assert (out.parent / "mlp.part.onnx.data").exists()
    layers = {n.name: n.metadata_props.get("onnx_amp.layer") for n in m.graph}
    assert layers["fc1"] and layers["fc2"] and layers["relu"] is None
    assert all("onnx_amp.region" in n.metadata_props for n in m.graph)
    summary = json.loads(js.read_text())
    assert summary["version"] == 1 and len(summary["layers"]) == 2
    # same numbers as the input, through ONNX Runtime
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32)
    ya = ort.InferenceSession(str(mlp_onnx), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    yb = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(ya, yb)


def test_partition_keeps_external_data_lazy(mlp_onnx):
    """The weights stay unread ExternalTensors through loading and partitioning."""
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.runtime.onnx_io import load_model

    model = load_model(mlp_onnx)
    PartitionPass()(model)
    ext = [v.const_value for v in model.graph.initializers.values()]
    assert ext and all(isinstance(t, ir.ExternalTensor) for t in ext)
    assert all(t._array is None for t in ext), "partitioning loaded weights into memory"


def _assert_clean_failure(rc, err, out: Path, *needles):
    assert rc != 0
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("onnx-amp: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert not out.exists()
    assert not Path(str(out) + ".data").exists()
    assert not [p for p in out.parent.glob(".*.tmp")] if out.parent.exists() else True


def test_partition_not_onnx(tmp_path, capsys):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n" * 10)
    out = tmp_path / "o.onnx"
    rc, _, err = _run(["partition", bad, "-o", out], capsys)
    _assert_clean_failure(rc, err, out, str(bad))


def test_partition_truncated(mlp_onnx, tmp_path, capsys):
    data = mlp_onnx.read_bytes()
    bad = mlp_onnx.parent / "trunc.onnx"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.onnx"
    rc, _, err = _run(["partition", bad, "-o", out], capsys)
    _assert_clean_failure(rc, err, out, str(bad))


def test_partition_truncated_external_data(mlp_onnx, tmp_path, capsys):
    d = tmp_path / "t"
    d.mkdir()
    shutil.copy(mlp_onnx, d / "mlp.onnx")
    raw = (mlp_onnx.parent / "mlp.onnx.data").read_bytes()
    (d / "mlp.onnx.data").write_bytes(raw[: len(raw) // 3])
    out = tmp_path / "o.onnx"
    rc, _, err = _run(["partition", d / "mlp.onnx", "-o", out], capsys)
    _assert_clean_failure(rc, err, out, "truncated")


def test_partition_missing_external_data(mlp_onnx, tmp_path, capsys):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(mlp_onnx, lonely / "mlp.onnx")  # without mlp.onnx.data
    out = tmp_path / "o.onnx"
    rc, _, err = _run(["partition", lonely / "mlp.onnx", "-o", out], capsys)
    _assert_clean_failure(rc, err, out, "mlp.onnx.data", "missing")


def test_partition_model_without_layer(tmp_path, capsys):
    p = tmp_path / "nolayer.onnx"
    ir.save(_mlp_model(with_layer=False), p)
    out = tmp_path / "o.onnx"
    rc, _, err = _run(["partition", p, "-o", out], capsys)
    _assert_clean_failure(rc, err, out, "no quantizable layer")


@pytest.mark.parametrize("where", ["missing_dir", "is_dir", "under_file"])
def test_partition_unwritable_output(mlp_onnx, tmp_path, capsys, where):
    if where == "missing_dir":
        out = tmp_path / "no" / "such" / "dir" / "o.onnx"
    elif where == "is_dir":
        out = tmp_path / "adir.onnx"
        out.mkdir()
    else:
        f = tmp_path / "plainfile"
        f.write_text("x")
        out = f / "o.onnx"
    rc, _, err = _run(["partition", mlp_onnx, "-o", out], capsys)
    assert rc != 0 and err.strip().startswith("onnx-amp: error: ") and len(err.strip().splitlines()) == 1
    assert str(out) in err
    if where == "is_dir":
        assert out.is_dir() and not list(out.iterdir())
    else:
        assert not out.exists()


def test_partition_readonly_output_folder(mlp_onnx, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        out = ro / "o.onnx"
        if os.access(ro, os.W_OK):
            # root ignores permission bits: use a location even root cannot write
            out = Path("/proc/o.onnx")
        rc, _, err = _run(["partition", mlp_onnx, "-o", out], capsys)
        assert rc != 0 and err.startswith("onnx-amp: error: ") and len(err.strip().splitlines()) == 1
        assert not out.exists()
    finally:
        ro.chmod(0o700)


def test_partition_refuses_to_overwrite_input(mlp_onnx, capsys):
    before = _snapshot(mlp_onnx.parent)
    rc, _, err = _run(["partition", mlp_onnx, "-o", mlp_onnx], capsys)
    assert rc != 0 and "onnx-amp: error:" in err
    assert _snapshot(mlp_onnx.parent) == before


def test_export_bad_sources(tmp_path, capsys):
    out = tmp_path / "o.onnx"
    rc, _, err = _run(["export", tmp_path / "nothing_here", "-o", out], capsys)
    _assert_clean_failure(rc, err, out, "nothing_here")
    txt = tmp_path / "x.txt"
    txt.write_text("hi")
    rc, _, err = _run(["export", txt, "-o", out], capsys)
    _assert_clean_failure(rc, err, out, "x.txt")
    rc, _, err = _run(["export", "no_such_module_xyz:fn", "-o", out], capsys)
    _assert_clean_failure(rc, err, out, "no_such_module_xyz")
    rc, _, err = _run(["export", "effnet-lite0", "-o", tmp_path / "missing" / "o.onnx"], capsys)
    _assert_clean_failure(rc, err, tmp_path / "missing" / "o.onnx", "does not exist")
    rc, _, err = _run(["export", "effnet-lite0", "-o", out, "--opset", "23"], capsys)
    _assert_clean_failure(rc, err, out, "opset")


def test_export_then_partition_cli_subprocess(tmp_path):
    """The installed console script end to end on a module:function model."""
    exe = shutil.which("onnx-amp")
    cmd = [exe] if exe else [sys.executable, "-m", "onnx_amp.tools.cli"]
    here = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=str(here) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "tiny.onnx"
    r = subprocess.run(cmd + ["export", f"{here / 'tiny_models.py'}:tiny_mlp", "-o", str(out)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert out.exists() and (tmp_path / "tiny.onnx.data").exists()
    part = tmp_path / "tiny.part.onnx"
    r = subprocess.run(cmd + ["partition", str(out), "-o", str(part), "--json", str(tmp_path / "s.json")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "largest region" in r.stdout
    m = ir.load(part)
    mods = {n.metadata_props.get("onnx_amp.layer"): n.metadata_props.get("onnx_amp.module") for n in m.graph
            if "onnx_amp.layer" in n.metadata_props}
    assert mods["L0"] == "blocks.0.fc1"


@pytest.mark.slow
def test_partition_real_smollm2_without_loading_weights(smollm2_onnx, tmp_path, capsys):
    """SmolLM2's 538 MB of weights stay on disk while it is partitioned; the CLI output runs."""
    from onnx_amp.passes.partition import PartitionPass
    from onnx_amp.runtime.onnx_io import load_model

    model = load_model(smollm2_onnx)
    PartitionPass()(model)
    ext = [v.const_value for v in model.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    assert len(ext) > 100 and all(t._array is None for t in ext)
    out = tmp_path / "smollm2.part.onnx"
    rc, stdout, _ = _run(["partition", smollm2_onnx, "-o", out], capsys)
    assert rc == 0 and "61 regions" in stdout
    assert (tmp_path / "smollm2.part.onnx.data").stat().st_size == Path(str(smollm2_onnx) + ".data").stat().st_size


@pytest.mark.parametrize("flag", ["--no-progress", "--no_progress"])
def test_progress_flags_are_spelled_both_ways_on_run_and_calibrate(flag):
    from onnx_amp.tools.cli import build_parser

    p = build_parser()
    assert p.parse_args(["run", "m.onnx", flag]).progress is False
    assert p.parse_args(["calibrate", "m.onnx", "--calibration_data", "d.npz", flag]).no_progress is True
    assert p.parse_args(["run", "m.onnx", "--no_measure", "--no_pareto"]).measure is False
