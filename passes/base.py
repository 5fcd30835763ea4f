"""The pass contract onnx-amp's passes follow (``onnx_ir.passes``).

- Preconditions live in ``requires(model)`` and raise :class:`PassPreconditionError`: an
  ``OnnxAmpError`` (one line, naming what is missing and what to run first) that is also ONNX IR's
  ``PreconditionError``, so ``PassManager`` users can catch either.
- Results travel in the returned ``PassResult``: each pass returns a subclass carrying what it
  computed (the partition, the plan, the rewrite report), never only state on the pass object.
- ``modified`` is computed: annotation passes compare a digest of every ``onnx_amp.*`` annotation
  before and after (:class:`AnnotationPass`); the rewrite says whether it lowered anything.
"""

from __future__ import annotations

import dataclasses
import hashlib

import onnx_ir as ir

from onnx_amp.core import annotations as A
from onnx_amp.core.errors import OnnxAmpError


class PassPreconditionError(OnnxAmpError, ir.passes.PreconditionError):
    """The model lacks what a pass needs; the message says what to run first."""


def annotation_digest(model: ir.Model) -> str:
    """A digest of every ``onnx_amp.*`` annotation of the model, its graph and its nodes."""
    h = hashlib.blake2b(digest_size=16)
    for props in [model.metadata_props, model.graph.metadata_props] + [n.metadata_props for n in model.graph]:
        for k in sorted(k for k in props if k.startswith(A.PREFIX)):
            h.update(k.encode())
            h.update(b"\0")
            h.update(props[k].encode())
            h.update(b"\1")
        h.update(b"\2")
    return h.hexdigest()


@dataclasses.dataclass
class AmpPassResult(ir.passes.PassResult):
    """``PassResult`` of an onnx-amp pass (subclasses add what the pass computed)."""


class AnnotationPass(ir.passes.InPlacePass):
    """An in-place pass that only writes annotations. Subclasses implement :meth:`annotate`, which
    returns the ``PassResult`` fields beyond ``model`` and ``modified``; ``modified`` is whether any
    ``onnx_amp.*`` annotation changed."""

    result_type: type[AmpPassResult] = AmpPassResult

    def annotate(self, model: ir.Model) -> dict:
        raise NotImplementedError

    def call(self, model: ir.Model) -> AmpPassResult:
        before = annotation_digest(model)
        fields = self.annotate(model) or {}
        return self.result_type(model, annotation_digest(model) != before, **fields)


def require_layers(model: ir.Model, who: str) -> list[ir.Node]:
    layers = A.layer_nodes(model.graph)
    if not layers:
        raise PassPreconditionError(f"{who}: the model has no onnx_amp.layer annotations; run the partition pass "
                                    "(onnx-amp partition) first")
    return layers


def require_model_key(model: ir.Model, key: str, who: str, run_first: str) -> None:
    if key not in model.metadata_props:
        raise PassPreconditionError(f"{who}: the model has no {key} annotation; run {run_first} first")
