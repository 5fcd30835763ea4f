"""``AnnotateModulesPass``: the torch module path of every node, as ``onnx_amp.module``.

The dynamo exporter writes ``pkg.torch.onnx.name_scopes`` on each node, the Python repr of a list
such as ``['', 'lm', 'lm.model.layers.0', 'lm.model.layers.0.self_attn.q_proj', 'linear']``: the
module scopes from the root (``''``) down, then the FX node's own name. The module path is the
deepest module scope, i.e. the element before the last (``pkg.torch.onnx.class_hierarchy`` has
the same length, and its last element is the op, e.g. ``aten.linear.default``). Nodes of the root
module get ``""``.

Layers whose weight is an initializer named ``<module>.weight`` and whose scope names a sibling
module instead take the weight's module: the exporter's optimizer folds ``BatchNorm`` into the
preceding ``Conv`` and the fused node keeps the BatchNorm's scope (``_blocks.0._bn1``), while the
layer is the convolution (``_blocks.0._depthwise_conv``). Nodes without ``name_scopes`` (graphs
from other exporters, nodes added by optimizers) are left unannotated.
"""

from __future__ import annotations

import ast

import onnx_ir as ir

from onnx_amp.core.ops import LAYER_OPS
from onnx_amp.core.annotations import MODULE, TORCH_NAME_SCOPES


def parse_name_scopes(text: str) -> list[str]:
    """Parse the exporter's ``name_scopes`` value (Python list repr; a plain '/'-path also accepted)."""
    text = text.strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
            return [str(v) for v in value]
        except (ValueError, SyntaxError):
            pass
    return [s for s in text.split("/")]


def module_path(scopes: list[str], strip_prefix: str = "") -> str:
    """Deepest module scope (the last element is the FX node name, not a module)."""
    mods = scopes[:-1] if len(scopes) > 1 else scopes[:0]
    path = ""
    for s in reversed(mods):
        if s:
            path = s
            break
    if strip_prefix:
        if path.startswith(strip_prefix):
            path = path[len(strip_prefix):]
        elif path + "." == strip_prefix:
            path = ""
    return path




def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def weight_module(node: ir.Node, strip_prefix: str = "") -> str | None:
    """Module path from a layer's ``<module>.weight`` initializer input, if any."""
    if node.op_type not in LAYER_OPS:
        return None
    for v in node.inputs:
        if v is None or v.producer() is not None or not v.name:
            continue
        if v.name.endswith(".weight") and (v.is_initializer() or v.const_value is not None):
            path = v.name[: -len(".weight")]
            if strip_prefix and path.startswith(strip_prefix):
                path = path[len(strip_prefix):]
            return path
    return None


def _nodes(graph: ir.Graph):
    for node in graph:
        yield node
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                yield from _nodes(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    yield from _nodes(g)


class AnnotateModulesPass(ir.passes.InPlacePass):
    """Write ``onnx_amp.module`` from ``pkg.torch.onnx.name_scopes`` on every node that has it.

    ``strip_prefix`` removes a wrapper's attribute name (e.g. ``"lm."``) so paths match the wrapped
    model's own module names (``model.layers.0.self_attn.q_proj``). Works on the ``ir.Model`` that
    ``torch.onnx.export(..., dynamo=True)`` returns, before it is saved.
    """

    def __init__(self, strip_prefix: str = "", overwrite: bool = True):
        super().__init__()
        self.strip_prefix = strip_prefix
        self.overwrite = overwrite

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        graphs = [model.graph, *model.functions.values()]
        for g in graphs:
            for node in _nodes(g):
                scopes = node.metadata_props.get(TORCH_NAME_SCOPES)
                if scopes is None:
                    continue
                if not self.overwrite and MODULE in node.metadata_props:
                    continue
                path = module_path(parse_name_scopes(scopes), self.strip_prefix)
                wmod = weight_module(node, self.strip_prefix)
                if wmod is not None and wmod != path and _parent(wmod) == _parent(path):
                    path = wmod  # e.g. Conv fused with its BatchNorm keeps the BatchNorm's scope
                if node.metadata_props.get(MODULE) != path:
                    node.metadata_props[MODULE] = path
                    modified = True
        return ir.passes.PassResult(model, modified)
