"""An ONNX -> torch interpreter: run an ``ir.Model`` with torch ops, so autograd works on it.

Every ONNX node maps one-to-one to torch operations and keeps its name, so calibration can attach
to any layer operand by node name (attention's activation-activation MatMuls included), for models
exported from torch and for ONNX-only models alike.

    tg = TorchGraph(model)
    out = tg({"input_ids": ids})                       # {output name: tensor}
    out = tg(feeds, operand_hook=fn)                   # fn(node, input_index, tensor) -> tensor

``operand_hook`` is called for every floating input of every layer node (MatMul, Gemm, Conv,
ConvTranspose; ``hook_ops`` changes the set) before the node runs; what it returns is used instead
(observe it, register a gradient hook, or replace it by a fake-quantized copy). ``output_hook(node,
index, tensor) -> tensor`` does the same for those nodes' outputs. ``capture`` names extra values
to return. Hooks see the nodes of the main graph (``tg.nodes``), not those inside If/Loop/Scan bodies.

Initializers (lazy external data included) and Constant nodes become float32 tensors (integer
ones keep their type): every float value is carried as float32, whatever its ONNX type, and ops
that round (Cast, QuantizeLinear) round to their type and give float32 back (details:
:mod:`onnx_amp.runtime.torch_ops.common`). Values are freed after their last use, so memory stays
near ORT's. The ops live in :mod:`onnx_amp.runtime.torch_ops` (table :data:`OPS`).

``TorchGraph(model, fallback=True)``: a node whose op the interpreter does not run is executed by a
reference implementation (ONNX Runtime or ``onnx.reference``) as an opaque step whose outputs carry
no gradient; ``tg.opaque_nodes`` names them and ``tg.layers_upstream_of_opaque()`` returns the layer
nodes whose gradient would have to pass through one (their sensitivities are incomplete).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import onnx_ir as ir
import torch

from onnx_amp.core.errors import OnnxAmpError
from onnx_amp.runtime.torch_ops import CTX_OPS, OPS, numpy_to_torch, tensor_to_torch, torch_dtype
from onnx_amp.runtime.torch_ops.common import FLOAT_TYPES
from onnx_amp.runtime.torch_ops.opaque import OpaqueNode

__all__ = ["LAYER_OPS", "OPS", "TorchGraph", "tensor_to_torch", "torch_dtype"]

LAYER_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"})
_STD = ("", "ai.onnx")
_OPSET_KEY = "onnx_amp.opset"


def _op_name(node: ir.Node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in _STD else node.op_type


def _subgraphs(node: ir.Node) -> list[ir.Graph]:
    out = []
    for a in node.attributes.values():
        if a.type == ir.AttributeType.GRAPH:
            out.append(a.value)
        elif a.type == ir.AttributeType.GRAPHS:
            out.extend(a.value)
    return out


def _outer_refs(graph: ir.Graph) -> set[str]:
    """Names a subgraph (and its own subgraphs) reads from enclosing scopes."""
    defined = {v.name for v in graph.inputs} | set(graph.initializers)
    used: set[str] = set()
    for node in graph:
        used |= {v.name for v in node.inputs if v is not None and v.name}
        for g in _subgraphs(node):
            used |= _outer_refs(g)
        defined |= {v.name for v in node.outputs if v is not None}
    return used - defined


def _constant_value(node: ir.Node) -> torch.Tensor:
    for key, a in node.attributes.items():
        v = a.value
        if key == "value":
            return tensor_to_torch(v)
        if key == "value_float":
            return torch.tensor(float(v), dtype=torch.float32)
        if key == "value_floats":
            return torch.tensor(list(v), dtype=torch.float32)
        if key == "value_int":
            return torch.tensor(int(v), dtype=torch.int64)
        if key == "value_ints":
            return torch.tensor(list(v), dtype=torch.int64)
    raise OnnxAmpError(f"node {node.name!r}: Constant with attribute {list(node.attributes)} is not supported "
                       "by the ONNX->torch interpreter (string / sparse constants); simplify the model")


def _named(where: str, fn: Callable, arg: Any) -> Any:
    """``fn(arg)``, an ``OnnxAmpError`` (unsupported data type) prefixed with where it happened."""
    try:
        return fn(arg)
    except OnnxAmpError as e:
        if str(e).startswith(("node ", "graph input ", "initializer ")):
            raise
        raise OnnxAmpError(f"{where}: {e}") from None


class _Env:
    """Values of one graph run; reads fall back to the enclosing scope (subgraphs)."""

    __slots__ = ("vals", "parent")

    def __init__(self, vals: dict[str, torch.Tensor], parent: _Env | None = None):
        self.vals, self.parent = vals, parent

    def __getitem__(self, name: str) -> torch.Tensor:
        env: _Env | None = self
        while env is not None:
            if name in env.vals:
                return env.vals[name]
            env = env.parent
        raise KeyError(name)


class _Program:
    """One graph prepared for execution: nodes to run, constants, and when to free each value."""

    def __init__(self, tg: TorchGraph, graph: ir.Graph):
        self.graph = graph
        self.input_names = [v.name for v in graph.inputs]
        self.output_names = [v.name for v in graph.outputs]
        self.consts: dict[str, torch.Tensor] = {}
        inputs = set(self.input_names)
        for name, v in graph.initializers.items():
            if v.const_value is None:
                continue
            # an input with a default: the feed wins, else the initializer
            self.consts["__default__" + name if name in inputs else name] = _named(
                f"initializer {name!r}", tensor_to_torch, v.const_value)
        self.nodes: list[ir.Node] = []
        for node in graph:
            node.meta[_OPSET_KEY] = tg.opsets.get("" if node.domain in _STD else node.domain, 1)
            if node.op_type == "Constant" and node.domain in _STD:
                self.consts[node.outputs[0].name] = _named(f"node {node.name!r} (Constant)", _constant_value, node)
                continue
            tg._check_node(node)
            for g in _subgraphs(node):
                tg._programs[id(g)] = _Program(tg, g)
            self.nodes.append(node)
        keep = set(self.output_names)
        last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                if v is not None and v.name:
                    last_use[v.name] = i
            for g in _subgraphs(node):
                for name in _outer_refs(g):
                    last_use[name] = i
        produced = {v.name for n in self.nodes for v in n.outputs if v is not None} | inputs
        self.free_after: list[list[str]] = [[] for _ in self.nodes]
        for name, i in last_use.items():
            if name not in keep and name not in self.consts and name in produced:
                self.free_after[i].append(name)


class _Ctx:
    """What control-flow ops get: run a subgraph in the current scope."""

    def __init__(self, tg: TorchGraph, env: _Env):
        self.tg, self.env = tg, env

    def run(self, graph: ir.Graph, inputs: list[torch.Tensor | None]) -> list[torch.Tensor]:
        prog = self.tg._programs[id(graph)]
        vals = dict(prog.consts)
        for name, t in zip(prog.input_names, inputs, strict=False):
            if t is not None:
                vals[name] = t
        env = _Env(vals, self.env)
        self.tg._run(prog, env, None, None, None, {})
        return [env[name] for name in prog.output_names]


class TorchGraph(torch.nn.Module):
    """Executes an ONNX graph with torch ops (autograd-capable)."""

    def __init__(self, model: ir.Model, hook_ops: Iterable[str] = LAYER_OPS, fallback: bool = False):
        super().__init__()
        graph = model.graph
        self.fallback = bool(fallback)
        self.opsets = {("" if d == "ai.onnx" else d): v for d, v in model.opset_imports.items()}
        self.model_functions = {(f.domain, f.name): f for f in model.functions.values()} if model.functions else {}
        self.input_names = [v.name for v in graph.inputs]
        self.input_types = {v.name: v.dtype for v in graph.inputs}
        self.output_names = [v.name for v in graph.outputs]
        self.hook_ops = frozenset(hook_ops)
        self._opaque: dict[int, OpaqueNode] = {}
        self.opaque_nodes: list[str] = []
        self._programs: dict[int, _Program] = {}
        self._main = _Program(self, graph)
        self.consts = self._main.consts
        self.nodes: list[ir.Node] = self._main.nodes

    # ------------------------------------------------------------------ construction

    def _check_node(self, node: ir.Node) -> None:
        if node.domain in _STD and node.op_type in OPS:
            return
        if not self.fallback:
            raise OnnxAmpError(
                f"node {node.name!r}: op {_op_name(node)} is not supported by the ONNX->torch interpreter "
                "(onnx_amp/runtime/torch_ops); simplify the model (e.g. onnxscript optimizer), or run "
                "TorchGraph(model, fallback=True) to execute it as an opaque, non-differentiable step")
        self._make_opaque(node)

    def _make_opaque(self, node: ir.Node) -> OpaqueNode:
        if id(node) not in self._opaque:
            from onnx_ir import serde

            funcs = [serde.serialize_function(f) for f in self.model_functions.values()]
            self._opaque[id(node)] = OpaqueNode(node, self.opsets, funcs)
            self.opaque_nodes.append(node.name)
        return self._opaque[id(node)]

    def layer_nodes(self) -> list[ir.Node]:
        return [n for n in self.nodes if n.op_type in self.hook_ops]

    def layers_upstream_of_opaque(self, outputs: Iterable[str] | None = None) -> list[ir.Node]:
        """Layer nodes (``hook_ops``) whose gradient must pass through an opaque node to reach the
        graph outputs (``outputs``: only these, e.g. the one the loss reads; default all): those
        upstream of an opaque node that itself feeds one of them. A node whose subgraph holds an
        opaque node counts as opaque. Complete once a forward pass has run (an op can turn out
        unsupported only for the attributes / types it meets at run time)."""
        opaque_ids = set(self._opaque)
        producer: dict[str, ir.Node] = {}
        for n in self.nodes:
            for v in n.outputs:
                if v is not None and v.name:
                    producer[v.name] = n

        def holds_opaque(n: ir.Node) -> bool:
            return id(n) in opaque_ids or any(
                holds_opaque(m) for g in _subgraphs(n) for m in g)

        def reads(n: ir.Node) -> set[str]:
            names = {v.name for v in n.inputs if v is not None and v.name}
            for g in _subgraphs(n):
                names |= _outer_refs(g)
            return names

        def ancestors(roots: Iterable[ir.Node]) -> set[int]:
            seen, stack = set(), list(roots)
            while stack:
                n = stack.pop()
                for name in reads(n):
                    p = producer.get(name)
                    if p is not None and id(p) not in seen:
                        seen.add(id(p))
                        stack.append(p)
            return seen

        roots = [o for o in (self.output_names if outputs is None else outputs) if o in producer]
        feeding = ancestors(producer[o] for o in roots)
        feeding |= {id(producer[o]) for o in roots}
        opaque = [n for n in self.nodes if holds_opaque(n) and id(n) in feeding]
        up = ancestors(opaque)
        return [n for n in self.nodes if id(n) in up and n.op_type in self.hook_ops]

    # ------------------------------------------------------------------ execution

    def _feed(self, name: str, value: Any) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            t = value
            if t.is_floating_point() and t.dtype != torch.float32:
                t = t.float()
            elif t.dtype in (torch.uint16, torch.uint32, torch.uint64):
                t = t.to(torch.int64)
        elif value is None or isinstance(value, (list, tuple, dict)):
            raise OnnxAmpError(f"graph input {name!r}: a sequence / optional / map value is not supported by the "
                               "ONNX->torch interpreter (it runs tensors only)")
        else:
            t = _named(f"graph input {name!r}", numpy_to_torch, value)
        dt = self.input_types.get(name)
        if dt is not None and ir.DataType(dt) in FLOAT_TYPES and not t.is_floating_point():
            t = t.float()
        return t

    def _call(self, node: ir.Node, args: list, env: _Env) -> Any:
        opaque = self._opaque.get(id(node))
        if opaque is not None:
            return opaque(args)
        if node.op_type in CTX_OPS:
            return OPS[node.op_type](node, args, _Ctx(self, env))
        try:
            return OPS[node.op_type](node, args)
        except OnnxAmpError as e:
            if self.fallback and "not supported" in str(e):
                return self._make_opaque(node)(args)
            if str(e).startswith("node "):
                raise
            raise OnnxAmpError(f"node {node.name!r} ({_op_name(node)}): {e}") from None
        except Exception as e:
            shapes = [None if a is None else tuple(a.shape) for a in args]
            raise OnnxAmpError(
                f"node {node.name!r} ({node.op_type}) failed in the ONNX->torch interpreter with input shapes "
                f"{shapes}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            ) from e

    def _run(self, prog: _Program, env: _Env, operand_hook, output_hook, captured, keep_vals) -> None:
        vals = env.vals
        for i, node in enumerate(prog.nodes):
            try:
                args = [None if v is None or not v.name else env[v.name] for v in node.inputs]
            except KeyError as e:
                raise OnnxAmpError(f"node {node.name!r}: input {e.args[0]!r} is not computed before it "
                                   "(graph not topologically sorted?)") from None
            is_layer = node.op_type in self.hook_ops
            if operand_hook is not None and is_layer:
                args = [a if a is None or not a.is_floating_point() else operand_hook(node, j, a)
                        for j, a in enumerate(args)]
            out = self._call(node, args, env)
            outs = out if isinstance(out, (list, tuple)) else [out]
            for j, (v, t) in enumerate(zip(node.outputs, outs, strict=False)):
                if v is None or v.name == "" or t is None:
                    continue
                if output_hook is not None and is_layer and t.is_floating_point():
                    t = output_hook(node, j, t)
                vals[v.name] = t
                if captured and v.name in captured:
                    keep_vals[v.name] = t
            for name in prog.free_after[i]:
                vals.pop(name, None)

    def forward(
        self,
        feeds: dict[str, Any],
        operand_hook: Callable[[ir.Node, int, torch.Tensor], torch.Tensor] | None = None,
        capture: Iterable[str] | None = None,
        output_hook: Callable[[ir.Node, int, torch.Tensor], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        vals: dict[str, torch.Tensor] = dict(self.consts)
        for name in self.input_names:
            if name in feeds:
                vals[name] = self._feed(name, feeds[name])
            elif "__default__" + name in self.consts:
                vals[name] = self.consts["__default__" + name]
            else:
                raise OnnxAmpError(f"graph input {name!r} was not fed; feeds have {sorted(feeds)}")
        keep_vals: dict[str, torch.Tensor] = {}
        env = _Env(vals)
        self._run(self._main, env, operand_hook, output_hook, set(capture or ()), keep_vals)
        result = {name: env[name] for name in self.output_names}
        result.update(keep_vals)
        return result
