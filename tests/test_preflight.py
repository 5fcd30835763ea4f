"""What a run needs is checked in its first seconds, and every failure is one line naming its cause.

The CLI runs as a user runs it (a fresh ``python -m onnx_amp.tools.cli`` process), so the start-up
imports count in the time limits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_amp.core.errors import OnnxAmpError, describe
from onnx_amp.runtime import preflight


def tiny_onnx(path):
    """x[B,16] -> MatMul -> Relu -> MatMul -> y[B,4] (opset 21), saved to ``path``."""
    import onnx

    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])],
        [numpy_helper.from_array((rng.standard_normal((16, 32)) * 0.3).astype(np.float32), "w1"),
         numpy_helper.from_array((rng.standard_normal((32, 4)) * 0.3).astype(np.float32), "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    onnx.save(m, str(path))
    return path


def cli(*args, env=None, timeout=120):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "onnx_amp.tools.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=dict(os.environ, **(env or {})))
    return r, time.perf_counter() - t0


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("onnx-amp: error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def test_unwritable_output_folder_fails_in_seconds(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 16), np.float32))
    for bad in ("/proc/onnx-amp-out", tmp_path / "m.onnx" / "out"):  # not writable even for root; under a file
        r, dt = cli("run", model, "--calibration_data", tmp_path / "d.npz", "-o", bad)
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and dt < 10, (dt, r.stderr)
        assert str(bad) in line and ("writ" in line or "not a folder" in line), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx"]


def test_calibration_data_for_other_inputs_fails_in_seconds(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "wrong.npz", input_ids=np.zeros((8, 16), np.int64))
    np.savez(tmp_path / "shape.npz", x=np.zeros((8, 15), np.float32))
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    out = tmp_path / "new" / "deeper"
    for data, expect in (("wrong.npz", "'input_ids' is not an input of the model"), ("shape.npz", "dim 1 = 16"),
                         ("junk.npz", "not a readable .npz"), ("missing.npz", "no such file")):
        r, dt = cli("run", model, "--calibration_data", tmp_path / data, "-o", out)
        line = one_error_line(r.stderr)
        assert r.returncode == 2 and dt < 10, (dt, r.stderr)
        assert expect in line, line
        assert not (tmp_path / "new").exists(), "the output folder must not be created before the inputs are checked"


def test_second_run_into_a_locked_folder_is_refused(tmp_path):
    out = preflight.OutputDir(tmp_path / "o" / "p")
    out.create()
    with pytest.raises(OnnxAmpError, match="another onnx-amp run .* is writing into this folder"):
        preflight.OutputDir(tmp_path / "o" / "p").create()
    out.release(failed=False)
    assert (tmp_path / "o" / "p").is_dir() and not (tmp_path / "o" / "p" / preflight.LOCK_NAME).exists()
    # a lock left by a run that no longer exists is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "o" / "p" / preflight.LOCK_NAME).write_text(dead.stdout)
    again = preflight.OutputDir(tmp_path / "o" / "p")
    again.create()
    again.release(failed=True)  # it existed before: a failure leaves it
    assert (tmp_path / "o" / "p").is_dir()
    fresh = preflight.OutputDir(tmp_path / "q" / "r")
    fresh.create()
    fresh.release(failed=True)  # created by this run and empty: removed with its new parent
    assert not (tmp_path / "q").exists()


def test_backend_check_catches_a_wrong_fp8_kernel(monkeypatch):
    """With the FP8 session options removed, ORT's fused kernels miscompute FP8 Q/DQ (1.32.0) or
    refuse the model (older releases): the backend check says so instead of a run minutes later."""
    from onnx_amp.runtime import ort_session
    from onnx_amp.runtime.targets import load_target

    assert preflight.check_backend(load_target("gaudi2")) == []
    assert preflight.check_backend(load_target("cpu")) == []
    monkeypatch.setattr(ort_session, "FP8_DISABLED_OPTIMIZERS", [])
    with pytest.raises(OnnxAmpError, match="fp8_e4m3"):
        preflight.check_backend(load_target("gaudi2"))


def test_disk_check_names_the_sizes(tmp_path):
    preflight.check_disk(tmp_path, 1)
    with pytest.raises(OnnxAmpError, match=r"MiB free, the outputs need about"):
        preflight.check_disk(tmp_path, 1 << 62)


def test_third_party_errors_are_not_file_system_errors():
    # mip raises FileNotFoundError for its own missing HiGHS library: no file name, not a path problem
    msg, expected = describe(FileNotFoundError("HiGHS not found. Please install the `highspy` package"))
    assert "check the path" not in msg and not expected and "--debug" in msg and "FileNotFoundError" in msg
    msg, expected = describe(FileNotFoundError(2, "No such file or directory", "/x/y.onnx"))
    assert expected and msg.startswith("/x/y.onnx: No such file or directory")
    msg, expected = describe(MemoryError())
    assert expected and "out of memory" in msg
    msg, expected = describe(OnnxAmpError("m.onnx: bad\n  thing"))
    assert expected and msg == "m.onnx: bad thing"
    import onnxruntime as ort

    try:
        ort.InferenceSession(b"not a model", providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        msg, expected = describe(e)
    assert expected and msg.startswith("ONNX Runtime failed: ")


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    from onnx_amp.tools import cli

    def boom(args):
        raise KeyError("surprise")

    parser = cli.build_parser()
    real = cli.build_parser

    def patched():
        p = real()
        p.set_defaults(func=boom)
        return p

    monkeypatch.setattr(cli, "build_parser", patched)
    del parser
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert one_error_line(err).startswith("onnx-amp: error: unexpected KeyError: 'surprise' at ")
    assert "rerun with --debug" in err
    assert cli.main(["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'surprise'" in err
