"""The data stage of ``onnx_amp.optimize``: calibration and held-out samples (the subject's own,
or the user's file/iterable split in two), checked against the model's inputs, cut to whole batches
of a static batch dimension."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime import preflight
from onnx_amp.runtime.run_state import RunState, Stage


def _n_samples(block: dict[str, np.ndarray]) -> int:
    return len(next(iter(block.values())))


def batches(block: dict[str, np.ndarray], bs: int) -> list[dict[str, np.ndarray]]:
    n = _n_samples(block)
    return [{k: v[i:i + bs] for k, v in block.items()} for i in range(0, n, bs)]


def _static_batch_size(model: ir.Model) -> int | None:
    """The model's static batch dimension (dim 0 of its inputs), when it has one."""
    from onnx_amp.runtime.data import input_specs

    sizes = {s.static_batch for s in input_specs(model) if s.static_batch is not None}
    return min(sizes) if sizes else None


def _is_text(data) -> bool:
    from onnx_amp.runtime.preflight import TEXT_SUFFIXES

    return isinstance(data, (str, os.PathLike)) and Path(data).suffix in TEXT_SUFFIXES


def _concat_data(cd) -> dict[str, np.ndarray]:
    """CalibrationData -> one dict of arrays (all blocks must share shapes)."""
    keys = cd.blocks[0].keys()
    try:
        return {k: np.concatenate([np.asarray(b[k]) for b in cd.blocks], axis=0) for k in keys}
    except ValueError as e:
        raise OnnxAmpError(f"calibration data {cd.source}: samples of different shapes cannot be split into "
                           f"calibration and held-out sets ({e}); pass validation_data explicitly") from None


class Data(Stage):
    """Calibration and held-out samples, checked against the model's inputs; then the output folder."""

    name = "data"

    def run(self, st: RunState) -> None:
        from onnx_amp.runtime.normalize import fill_input_shapes

        c = st.config
        if c.calibration_data is None:
            st.cal, st.val = self._subject_data(st)
        else:
            st.cal, st.val = self._user_data(st)
        if c.calibration_samples:
            st.cal = {k: v[:c.calibration_samples] for k, v in st.cal.items()}
        self._static_batch(st)
        st.notes += fill_input_shapes(st.model, st.cal, st.src_path or st.name)
        if c.verbose:
            print(f"[onnx-amp] {_n_samples(st.cal)} calibration samples, {_n_samples(st.val)} held-out samples",
                  flush=True)
        # the outputs: the emulate and deploy models (plus each stage's model when kept), figures
        need = (2 + 4 * c.keep_intermediate) * preflight.model_bytes(st.model) + 64 * 2**20
        preflight.check_disk(st.out.path, need)
        st.work_dir()

    @staticmethod
    def _static_batch(st: RunState) -> None:
        """A model with a static batch dimension runs batches of exactly that size (an export at
        batch 1, say): the batch size follows, and each sample set is cut to a multiple of it."""
        c = st.config
        d = _static_batch_size(st.model)
        if d is None:
            return
        if d > 1 and c.measure:
            raise OnnxAmpError(f"{st.name}: the model's batch dimension is static ({d}) and region timing runs one sample; "
                               "re-export the model with a dynamic batch axis, or pass --no-measure (roofline gains)")
        for what, block in (("calibration", st.cal), ("held-out", st.val)):
            n = _n_samples(block)
            if n < d:
                raise OnnxAmpError(f"{st.name}: the model's batch dimension is static ({d}) but there are only {n} "
                                   f"{what} sample(s); give more samples or re-export the model with a dynamic batch axis")
        if c.batch_size != d:
            st.notes.append(f"the model's batch dimension is static ({d}): batches of {d} sample(s) "
                            f"(batch_size {c.batch_size} not used)")
            c.batch_size = d
        st.cal = {k: v[:_n_samples(st.cal) - _n_samples(st.cal) % d] for k, v in st.cal.items()}
        st.val = {k: v[:_n_samples(st.val) - _n_samples(st.val) % d] for k, v in st.val.items()}

    @staticmethod
    def _subject_data(st: RunState):
        from onnx_amp.runtime import subjects as S

        c = st.config
        s = S.get_subject(st.subject) if st.subject else None
        if s is None or s.batch is None:
            raise OnnxAmpError(f"{c.source}: give calibration_data (.npz keyed by input name, .txt with a "
                               "tokenizer, or an iterable of input dicts)")
        n_cal = c.calibration_samples or s.defaults.get("calibration_samples", 16)
        n_val = c.validation_samples or s.defaults.get("validation_samples", 16)
        kw = {"seq_len": c.seq_len} if "seq_len" in s.defaults.get("batch_kwargs", ()) else {}
        return (S.subject_batch(st.subject, n_cal, "calib", seed=c.seed, **kw),
                S.subject_batch(st.subject, n_val, "eval", seed=c.seed, **kw))

    @staticmethod
    def _user_data(st: RunState):
        from onnx_amp.runtime.data import load_calibration_data

        c = st.config
        cap = None  # a text file: default windows plus the held-out ones (runtime.data.DEFAULT_TEXT_WINDOWS)
        if c.calibration_samples or c.validation_data is None:
            from onnx_amp.runtime.text_data import DEFAULT_TEXT_WINDOWS

            cap = (c.calibration_samples or DEFAULT_TEXT_WINDOWS) + (c.validation_samples or 16)
        cd = load_calibration_data(c.calibration_data, st.model, tokenizer=c.tokenizer, seq_len=c.seq_len,
                                   max_samples=cap if _is_text(c.calibration_data) else None)
        st.notes += cd.info.get("notes", [])
        allc = _concat_data(cd)
        if c.validation_data is not None:
            vd = load_calibration_data(c.validation_data, st.model, tokenizer=c.tokenizer, seq_len=c.seq_len,
                                       flag="--validation_data")
            st.notes += vd.info.get("notes", [])
            return allc, _concat_data(vd)
        n = _n_samples(allc)
        n_val = c.validation_samples or max(1, min(16, n // 4))
        d = _static_batch_size(st.model) or 1  # a static batch dimension: whole batches on both sides
        n_val = -(-n_val // d) * d
        if n - n_val < d:
            raise OnnxAmpError(f"calibration data has {n} sample(s): need at least {2 * d} (calibration + held-out"
                               f"{f', in batches of {d}' if d > 1 else ''}); give more samples or pass validation_data")
        return {k: v[:n - n_val] for k, v in allc.items()}, {k: v[n - n_val:] for k, v in allc.items()}
