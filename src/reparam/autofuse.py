"""Automatic fusion of any model: fold conv -> BN chains and merge summed linear branches into one conv.

``fused, report = auto_fuse(model, example_inputs)`` traces ``model`` with torch.fx and, in eval mode,
follows every chain of linear ops it can prove linear. Each graph node gets, where possible, an affine map
from some *source* node ``x``::

    node = conv2d(x, kernel, bias, stride, padding, dilation, groups)     (float64 throughout)

built from conv, BatchNorm (module or ``F.batch_norm``), average pooling, zero padding, identity/dropout, a
multiplication or division by a number, negation, and ``add`` / ``sub`` of branches that start from the same ``x``
(any branch types, nested, in any order). Where a chain
ends (a nonlinear op, a value used twice, a composition that would not be exact or would grow the conv),
the map is materialized as one ``nn.Conv2d``. Everything else is left as it was, and the report says what
was merged and what was skipped, with the reason. The result is verified on ``example_inputs``.

Exactness rules (the algebra is in :mod:`reparam.fusion`):

- ``A`` then a 1x1, stride-1, unpadded ``B``: always one conv with ``A``'s geometry.
- a 1x1, stride-1 ``A`` then ``B``: one conv with ``B``'s geometry when ``B`` pads nothing or ``A`` has no
  bias (zero padding then commutes with ``A``); DBB's BN-and-pad layer is the bias-free-pad-then-BN case.
- a sum: branches of one source with one stride; their kernels are placed on a common grid by their
  padding (so 1x1, 1xk, kx1 and k x k align) and regrouped to the coarsest common grouping.
- never merged when the merged conv would hold more weights than its parts (e.g. depthwise + pointwise
  would become a dense k x k conv): exact but slower.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.modules.batchnorm import _BatchNorm

from .compare import Comparison, ComparisonReport, Tolerance
from .fusion import avgpool_kernel, compose_1x1_kxk, compose_kxk_1x1, identity_kernel, regroup_kernel

__all__ = ["auto_fuse", "FuseReport", "MergedConv", "Skipped", "AutoFuseError"]

Pair = tuple[int, int]
_ADD = {operator.add, operator.iadd, torch.add}
_SUB = {operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_NEG = {operator.neg, torch.neg}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class AutoFuseError(RuntimeError):
    """The model cannot be traced, or the fused graph does not reproduce it."""


@dataclass
class MergedConv:
    """One new conv and the original graph nodes it replaces."""

    name: str
    replaces: list[str]
    kernel_size: list[int]
    stride: list[int]
    groups: int
    weights_before: int  # parameters + BN statistics of the replaced ops
    weights_after: int


@dataclass
class Skipped:
    node: str
    reason: str


@dataclass
class FuseReport:
    tracer: str
    merged: list[MergedConv] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    removed_asserts: int = 0
    passes: int = 0
    verification: ComparisonReport | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["verification"] = self.verification.to_dict() if self.verification else None
        return out

    def summary(self, shown: int = 5) -> str:
        """What was merged (each new conv and the nodes it replaces) and what was left alone and why, by graph node
        name, ``shown`` of each at most (all of them: ``merged``, ``skipped``, ``to_dict()``)."""
        ops = sum(len(m.replaces) for m in self.merged)
        convs = len(self.merged)
        merged = f"{ops} ops merged into {convs} conv{'s' if convs != 1 else ''}" if convs else "nothing merged"
        lines = [f"auto_fuse ({self.tracer}): {merged}; params {self.params_before:,} -> {self.params_after:,}"]
        lines += [f"  {m.name} <- {', '.join(m.replaces)}" for m in self.merged[:shown]]
        if convs > shown:
            lines.append(f"  ... and {convs - shown} more (report.merged)")
        made = {m.name: m.replaces for m in self.merged}  # a later pass sees a conv of an earlier one: say its parts
        by_reason: dict[str, list[str]] = {}
        for skipped in self.skipped:
            node = skipped.node
            named = f"{node} = {' + '.join(made[node])}" if node in made else node
            by_reason.setdefault(skipped.reason, []).append(named)
        for reason, nodes in sorted(by_reason.items(), key=lambda item: -len(item[1])):
            names = ", ".join(nodes[:shown]) + (f", ... {len(nodes) - shown} more" if len(nodes) > shown else "")
            lines.append(f"  left alone x{len(nodes)}: {reason} ({names})")
        if self.verification is not None:
            lines.append(f"  verified on example inputs ({self.verification.dtype}): {self.verification.describe()}")
        return "\n".join(lines)


@dataclass
class _Map:
    """``node = conv2d(zero_pad(source, padding), kernel, bias, stride, dilation, groups)``, float64."""

    source: fx.Node
    kernel: torch.Tensor
    bias: torch.Tensor | None  # None: structurally zero (what lets zero padding commute)
    stride: Pair
    padding: Pair
    dilation: Pair
    groups: int
    nodes: list[fx.Node]
    ops: int  # weighted ops inside (conv, BN, pool, pad, add); identities count 0
    weights: int  # original parameter/statistic count of those ops

    @property
    def out_channels(self) -> int:
        return self.kernel.shape[0]

    @property
    def pointwise(self) -> bool:
        return self.kernel.shape[2:] == (1, 1) and self.stride == (1, 1)


def _pair(v) -> Pair:  # noqa: ANN001
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _identity(source: fx.Node, channels: int, device: torch.device) -> _Map:
    kernel = identity_kernel(channels, 1, channels, dtype=torch.float64, device=device)
    return _Map(source, kernel, None, (1, 1), (0, 0), (1, 1), channels, [], 0, 0)


def _channel_affine(
    source: fx.Node, scale: torch.Tensor, shift: torch.Tensor | None, node: fx.Node, weights: int
) -> _Map:
    kernel = scale.double().reshape(-1, 1, 1, 1)
    return _Map(
        source,
        kernel,
        None if shift is None else shift.double(),
        (1, 1),
        (0, 0),
        (1, 1),
        kernel.shape[0],
        [node],
        1,
        weights,
    )


def _matches(node: fx.Node, functions: set[Any], methods: tuple[str, ...]) -> bool:
    """Whether ``node`` calls one of ``functions`` (``operator.add``, ``torch.add``) or a tensor method named in
    ``methods`` (``x.add(y)``)."""
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def _is_diagonal(m: _Map) -> bool:
    return m.pointwise and m.padding == (0, 0) and m.groups == m.out_channels and m.kernel.shape[1] == 1


_DENSIFY = "merging would turn a grouped (e.g. depthwise) conv into a larger dense one: exact but slower"


def _densifies(m: _Map, groups: int) -> bool:
    """Would regrouping ``m`` to ``groups`` grow a weighted spatial conv? (A pooling kernel has no weights.)"""
    return m.groups > groups and m.kernel.shape[2:] != (1, 1) and m.weights > 0


def _bias_or_zero(m: _Map) -> torch.Tensor:
    return m.bias if m.bias is not None else m.kernel.new_zeros(m.out_channels)


def _compose(a: _Map, b: _Map) -> _Map | str:
    """``b`` applied to ``a``'s output, or the reason it is not one exact, no-larger conv."""
    nodes, ops, weights = a.nodes + b.nodes, a.ops + b.ops, a.weights + b.weights
    if _is_diagonal(b):  # channel scaling after anything (BN after conv): scale output rows
        scale = b.kernel.reshape(-1)
        kernel = a.kernel * scale.reshape(-1, 1, 1, 1)
        bias = None if a.bias is None and b.bias is None else _bias_or_zero(a) * scale + _bias_or_zero(b)
        return _Map(a.source, kernel, bias, a.stride, a.padding, a.dilation, a.groups, nodes, ops, weights)
    if _is_diagonal(a) and (a.bias is None or b.padding == (0, 0)):  # channel scaling before a conv: scale columns
        out_ch, per_group = b.kernel.shape[:2]
        channel = (torch.arange(out_ch, device=b.kernel.device) // (out_ch // b.groups))[
            :, None
        ] * per_group + torch.arange(per_group, device=b.kernel.device)[None, :]
        kernel = b.kernel * a.kernel.reshape(-1)[channel][:, :, None, None]
        bias = b.bias
        if a.bias is not None:
            bias = _bias_or_zero(b) + (b.kernel * a.bias[channel][:, :, None, None]).sum((1, 2, 3))
        return _Map(a.source, kernel, bias, b.stride, b.padding, b.dilation, b.groups, nodes, ops, weights)
    if b.pointwise and b.padding == (0, 0):
        geometry = (a.stride, a.padding, a.dilation)
        compose = compose_kxk_1x1
    elif a.pointwise and (a.bias is None or b.padding == (0, 0)):
        geometry = (b.stride, (a.padding[0] + b.padding[0], a.padding[1] + b.padding[1]), b.dilation)
        compose = compose_1x1_kxk
    elif a.pointwise and a.bias is not None:
        return "a per-channel shift (a bias, BN) before a zero-padded conv: the padded border would not see the shift"
    else:
        return "two spatial convs in a row (merging them would change the receptive field)"
    groups = math.gcd(a.groups, b.groups)
    if _densifies(a, groups) or _densifies(b, groups):
        return _DENSIFY
    kernel, bias = compose(
        regroup_kernel(a.kernel, a.groups, groups), a.bias, regroup_kernel(b.kernel, b.groups, groups), b.bias, groups
    )
    if a.bias is None and b.bias is None:
        bias = None
    return _Map(a.source, kernel, bias, geometry[0], geometry[1], geometry[2], groups, nodes, ops, weights)


def _sum(maps: list[_Map], node: fx.Node, out_shape: Sequence[int], in_shape: Sequence[int]) -> _Map | str:
    """One conv for ``sum(maps)`` (all from one source), or the reason there is none."""
    if len({m.stride for m in maps}) > 1:
        return "branches with different strides"
    spatial = [m for m in maps if m.kernel.shape[2:] != (1, 1)]
    dilations = {m.dilation for m in spatial} or {(1, 1)}
    if len(dilations) > 1:
        return "branches with different dilations"
    dilation = dilations.pop()
    stride = maps[0].stride
    placed_extent = []
    for m in maps:
        offsets = []
        for axis in (0, 1):
            if m.padding[axis] % dilation[axis]:
                return "branch padding is not a multiple of the dilation (kernels do not align)"
            offsets.append(m.padding[axis] // dilation[axis])
        placed_extent.append(offsets)
    left = [max(o[axis] for o in placed_extent) for axis in (0, 1)]
    size = [
        max(left[axis] - o[axis] + m.kernel.shape[2 + axis] for o, m in zip(placed_extent, maps, strict=True))
        for axis in (0, 1)
    ]
    padding = (left[0] * dilation[0], left[1] * dilation[1])
    for axis in (0, 1):
        length = in_shape[2 + axis]
        out = (length + 2 * padding[axis] - dilation[axis] * (size[axis] - 1) - 1) // stride[axis] + 1
        if out != out_shape[2 + axis]:
            return "branches are not centred alike (no symmetric padding reproduces the sum)"
    groups = math.gcd(*[m.groups for m in maps])
    if any(_densifies(m, groups) for m in maps):
        return _DENSIFY
    out_ch, in_per_group = maps[0].out_channels, in_shape[1] // groups
    kernel = maps[0].kernel.new_zeros(out_ch, in_per_group, *size)
    bias = None
    for m, (oh, ow) in zip(maps, placed_extent, strict=True):
        k = regroup_kernel(m.kernel, m.groups, groups)
        top, lft = left[0] - oh, left[1] - ow
        kernel[:, :, top : top + k.shape[2], lft : lft + k.shape[3]] += k
        if m.bias is not None:
            bias = m.bias if bias is None else bias + m.bias
    nodes = [n for m in maps for n in m.nodes] + [node]
    return _Map(
        maps[0].source,
        kernel,
        bias,
        stride,
        padding,
        dilation,
        groups,
        nodes,
        sum(m.ops for m in maps) + 1,
        sum(m.weights for m in maps),
    )


def _fetch(gm: fx.GraphModule, arg: fx.node.Argument) -> torch.Tensor | None:
    if arg is None:
        return None
    if isinstance(arg, fx.Node) and arg.op == "get_attr" and isinstance(arg.target, str):
        obj: Any = gm
        for part in arg.target.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor):
            return obj
    raise TypeError("not a constant tensor")


def _batch_norm_call(gm: fx.GraphModule, node: fx.Node) -> tuple | str:
    bound = inspect.signature(F.batch_norm).bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if a["training"] is not False:
        return "batch_norm in training mode"
    try:
        mean, var, weight, bias = (_fetch(gm, a[k]) for k in ("running_mean", "running_var", "weight", "bias"))
    except TypeError:
        return "batch_norm with computed statistics"
    if mean is None or var is None:
        return "batch_norm without running statistics"
    return mean, var, float(a["eps"]), weight, bias


def _bn_affine(mean, var, eps, weight, bias) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    scale = 1.0 / torch.sqrt(var.double() + eps)
    if weight is not None:
        scale = scale * weight.double()
    shift = -mean.double() * scale
    if bias is not None:
        shift = shift + bias.double()
    return scale, shift


class _Pass:
    """One analysis-and-rewrite pass over a GraphModule."""

    def __init__(self, gm: fx.GraphModule, report: FuseReport, device: torch.device) -> None:
        self.gm, self.report, self.device = gm, report, device
        self.maps: dict[fx.Node, _Map] = {}
        self.absorbed: set[fx.Node] = set()

    def shape(self, node: fx.Node) -> Sequence[int] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def input_map(self, node: fx.node.Argument, consumer: fx.Node) -> _Map | None:
        """The map to extend for ``consumer``: ``node``'s own if only ``consumer`` uses it, else identity from
        ``node``."""
        if not isinstance(node, fx.Node):
            return None
        shape = self.shape(node)
        if shape is None or len(shape) != 4:
            return None
        own = self.maps.get(node)
        if own is not None and len(node.users) == 1:
            return own
        return _identity(node, shape[1], self.device)

    def absorb(self, node: fx.Node, base: _Map) -> None:
        """``base`` was ``node``'s own map and a consumer extended it: ``node`` needs no conv of its own."""
        if base is self.maps.get(node):
            self.absorbed.add(node)

    def pass_through(self, node: fx.Node, source: fx.Node) -> None:
        """``node`` computes what ``source`` does (identity, dropout in eval, ``0 + x``)."""
        base = self.input_map(source, node)
        if base is not None:
            self.absorb(source, base)
            self.maps[node] = _Map(**{**base.__dict__, "nodes": base.nodes + [node]})

    def extend(
        self, node: fx.Node, op: _Map | None, reason_if_none: str | None = None, source: fx.node.Argument = None
    ) -> None:
        """``op`` applied to ``source`` (default: the node's first argument), composed with ``source``'s map."""
        source = source if source is not None else node.args[0] if node.args else None
        base = self.input_map(source, node)
        if op is None or base is None:
            if reason_if_none:
                self.report.skipped.append(Skipped(node.name, reason_if_none))
            return
        shape = self.shape(source) if isinstance(source, fx.Node) else None
        assert isinstance(source, fx.Node) and shape is not None  # input_map gave a map: a 4-d tensor node
        merged = _compose(base, op)
        if isinstance(merged, str):  # cannot extend: the input becomes a source of its own
            self.report.skipped.append(Skipped(node.name, merged))
            merged = _compose(_identity(source, shape[1], self.device), op)
            if isinstance(merged, str):
                return
        else:
            self.absorb(source, base)
        self.maps[node] = merged

    def op_map(self, node: fx.Node) -> tuple[_Map | None, str | None]:
        """The node's own affine map (from its input), ``(None, None)`` for an identity, or ``(None, reason)``."""
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node):
            return None, None  # not applied to a tensor: nothing to extend
        if node.op == "call_module":
            assert isinstance(node.target, str)  # a call_module node names its module
            mod = self.gm.get_submodule(node.target)
            if isinstance(mod, nn.Conv2d):
                if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                    return None, f"conv with padding {mod.padding!r}/{mod.padding_mode}"
                weights = sum(p.numel() for p in mod.parameters())
                bias = mod.bias.double() if mod.bias is not None else None
                return _Map(
                    src,
                    mod.weight.double(),
                    bias,
                    _pair(mod.stride),
                    _pair(mod.padding),
                    _pair(mod.dilation),
                    mod.groups,
                    [node],
                    1,
                    weights,
                ), None
            if isinstance(mod, _BatchNorm):
                if mod.running_mean is None or mod.training:
                    return None, "BatchNorm without running statistics"
                scale, shift = _bn_affine(mod.running_mean, mod.running_var, mod.eps, mod.weight, mod.bias)
                return _channel_affine(src, scale, shift, node, 4 * mod.num_features), None
            if isinstance(mod, nn.AvgPool2d):
                k = mod.kernel_size
                if not isinstance(k, int) and k[0] != k[1]:
                    return None, "non-square average pooling"
                k = _pair(k)[0]
                if mod.ceil_mode or not mod.count_include_pad or mod.divisor_override:
                    return None, "average pooling with ceil_mode / count_include_pad=False / divisor_override"
                src_shape = self.shape(src)
                if src_shape is None:
                    return None, "average pooling of an input of unknown shape"
                channels = src_shape[1]
                kernel = avgpool_kernel(channels, k, channels, dtype=torch.float64, device=self.device)
                stride = _pair(mod.stride if mod.stride is not None else k)
                return _Map(src, kernel, None, stride, _pair(mod.padding), (1, 1), channels, [node], 1, 0), None
            return None, None
        if node.op == "call_function" and node.target is F.batch_norm:
            stats = _batch_norm_call(self.gm, node)
            if isinstance(stats, str):
                return None, stats
            scale, shift = _bn_affine(*stats)
            return _channel_affine(src, scale, shift, node, 4 * scale.numel()), None
        return None, None

    def visit_pad(self, node: fx.Node) -> None:
        bound = inspect.signature(F.pad).bind(*node.args, **node.kwargs)
        bound.apply_defaults()
        a = bound.arguments
        pad = list(a["pad"])
        if a["mode"] != "constant" or (a["value"] or 0) != 0 or len(pad) != 4 or pad[0] != pad[1] or pad[2] != pad[3]:
            self.report.skipped.append(Skipped(node.name, "padding that is not symmetric zero padding"))
            return
        base = self.input_map(a["input"], node)
        if base is None or not base.pointwise or base.bias is not None:
            self.report.skipped.append(Skipped(node.name, "zero padding after an op with a bias or a spatial kernel"))
            return
        self.absorb(a["input"], base)
        self.maps[node] = _Map(
            base.source,
            base.kernel,
            None,
            base.stride,
            (base.padding[0] + pad[2], base.padding[1] + pad[0]),
            base.dilation,
            base.groups,
            base.nodes + [node],
            base.ops + 1,
            base.weights,
        )

    def visit_scale(self, node: fx.Node) -> None:
        """``x * c``, ``c * x``, ``x / c``, ``-x`` for a number ``c``: a per-channel scale without a shift."""
        if _matches(node, _NEG, ("neg",)):
            tensor, factor = node.args[0], -1.0
        else:
            operands = list(node.args[:2])
            tensors = [o for o in operands if isinstance(o, fx.Node)]
            numbers = [o for o in operands if isinstance(o, (int, float)) and not isinstance(o, bool)]
            if len(tensors) != 1 or len(numbers) != 1 or node.kwargs:
                return  # a product of two tensors is not linear; rounding modes and out= are not plain division
            tensor, factor = tensors[0], float(numbers[0])
            if _matches(node, _DIV, ("div", "div_")):
                if operands[0] is not tensor or factor == 0:
                    return  # c / x is not linear
                factor = 1.0 / factor
        if not isinstance(tensor, fx.Node):
            return
        shape = self.shape(tensor)
        if shape is None or len(shape) != 4:
            return
        scale = torch.full((shape[1],), factor, dtype=torch.float64, device=self.device)
        self.extend(node, _channel_affine(tensor, scale, None, node, 0), source=tensor)

    def visit_add(self, node: fx.Node) -> None:
        """``a + b`` and ``a - b`` of two branches from one source: one conv for both."""
        subtract = _matches(node, _SUB, ("sub", "sub_"))
        if node.target in (torch.add, torch.sub) and node.kwargs.get("alpha", 1) != 1:
            return
        operands = list(node.args[:2])
        tensors = [o for o in operands if isinstance(o, fx.Node)]
        if len(tensors) == 1 and all(o == 0 for o in operands if not isinstance(o, fx.Node)):
            if not subtract or operands[0] is tensors[0]:
                self.pass_through(node, tensors[0])  # 0 + x, x - 0
            return
        if len(tensors) != 2:
            return
        shape = self.shape(tensors[0])
        if shape is None or shape != self.shape(tensors[1]) or len(shape) != 4:
            return
        first, second = self.input_map(tensors[0], node), self.input_map(tensors[1], node)
        assert first is not None and second is not None  # both are 4-d tensor nodes
        if first.source is not second.source:
            self.report.skipped.append(
                Skipped(node.name, "operands come from different inputs (e.g. a residual around a nonlinear path)")
            )
            return
        out_shape, in_shape = self.shape(node), self.shape(first.source)
        if out_shape is None or in_shape is None:
            return
        subtrahend = (
            _Map(**{**second.__dict__, "kernel": -second.kernel, "bias": None if second.bias is None else -second.bias})
            if subtract
            else second
        )
        merged = _sum([first, subtrahend], node, out_shape, in_shape)
        if isinstance(merged, str):
            self.report.skipped.append(Skipped(node.name, merged))
            return
        for t, m in zip(tensors, (first, second), strict=True):
            self.absorb(t, m)
        self.maps[node] = merged

    def run(self) -> int:
        for node in list(self.gm.graph.nodes):
            if node.op == "call_function" and node.target is F.pad:
                self.visit_pad(node)
            elif _matches(node, _ADD | _SUB, ("add", "add_", "sub", "sub_")):
                self.visit_add(node)
            elif _matches(node, _MUL | _DIV | _NEG, ("mul", "mul_", "div", "div_", "neg")):
                self.visit_scale(node)
            elif node.op == "call_module" and isinstance(self.gm.get_submodule(node.target), _IDENTITY_MODULES):
                self.pass_through(node, node.args[0])  # identity, dropout (eval)
            elif node.op in ("call_module", "call_function"):
                op, why = self.op_map(node)
                if op is not None or why is not None:
                    self.extend(node, op, why)
        return self.materialize()

    def materialize(self) -> int:
        merged, replaced = 0, dict[fx.Node, fx.Node]()
        for node, m in list(self.maps.items()):
            if node in self.absorbed or m.ops < 2:
                continue
            conv = self.make_conv(m)
            name = f"fused_{sum(1 for _ in self.gm.named_children())}"
            while hasattr(self.gm, name):
                name += "_"
            self.gm.add_submodule(name, conv)
            with self.gm.graph.inserting_after(node):
                new = self.gm.graph.call_module(name, (replaced.get(m.source, m.source),))
            node.replace_all_uses_with(new)
            replaced[node] = new
            self.report.merged.append(
                MergedConv(
                    name,
                    [n.name for n in m.nodes],
                    list(m.kernel.shape[2:]),
                    list(m.stride),
                    m.groups,
                    m.weights,
                    sum(p.numel() for p in conv.parameters()),
                )
            )
            merged += 1
        if merged:
            self.gm.graph.eliminate_dead_code()
            self.gm.delete_all_unused_submodules()
            self.gm.recompile()
        return merged

    def make_conv(self, m: _Map) -> nn.Conv2d:
        in_channels = m.kernel.shape[1] * m.groups
        dtype = next((p.dtype for p in self.gm.parameters() if p.is_floating_point()), torch.float32)
        conv = nn.Conv2d(
            in_channels,
            m.out_channels,
            (m.kernel.shape[2], m.kernel.shape[3]),
            m.stride,
            m.padding,
            m.dilation,
            m.groups,
            bias=m.bias is not None,
        )
        conv = conv.to(device=self.device, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(m.kernel)
            if m.bias is not None and conv.bias is not None:
                conv.bias.copy_(m.bias)
        return conv.eval()


def _trace(model: nn.Module) -> tuple[fx.GraphModule, str]:
    try:
        return fx.symbolic_trace(model), "torch.fx"
    except Exception as err:  # noqa: BLE001 - any tracing failure is reported, never a partial fuse
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        name, culprit = _untraceable_part(model)
        where = (
            type(model).__name__
            if culprit is model
            else f"{type(culprit).__name__} at {name} of {type(model).__name__}"
        )
        if callable(getattr(culprit, "fused_form", None)) or callable(getattr(culprit, "reparameterize", None)):
            advice = f"{type(culprit).__name__} has a fusion of its own: fuse with reparam.reparameterize_model(model)"
        else:
            advice = (
                "make its forward free of data-dependent Python control flow, or fuse with the model's own "
                "reparameterize()"
            )
        raise AutoFuseError(f"torch.fx cannot trace {where} ({type(err).__name__}: {first}); {advice}") from err


def _untraceable_part(model: nn.Module) -> tuple[str, nn.Module]:
    """The deepest submodule torch.fx cannot trace by itself (the model when every part traces alone)."""
    found: tuple[str, nn.Module] = ("", model)
    for name, module in model.named_modules():
        if not name or type(module).__module__.startswith("torch.nn"):
            continue  # torch's own layers are leaves of the trace
        if found[0] and not name.startswith(found[0] + "."):
            break  # past the first failing part and what it holds
        try:
            fx.symbolic_trace(module)
        except Exception:  # noqa: BLE001 - a failure is what is searched for
            found = (name, module)
    return found


def _strip_asserts(gm: fx.GraphModule) -> int:
    """Shape assertions (``torch._assert``) hold every intermediate alive; the fused graph keeps its shapes."""
    asserts = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch._assert]
    for node in asserts:
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return len(asserts)


@torch.no_grad()
def auto_fuse(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    verify: bool = True,
    tolerance: Tolerance | None = None,
    max_passes: int = 8,
) -> tuple[fx.GraphModule, FuseReport]:
    """Fuse a copy of ``model`` (any ``nn.Module``, no ``reparameterize()`` needed); ``model`` is untouched.

    Returns ``(fused, report)``: ``fused`` is an eval-mode ``fx.GraphModule`` whose merged parts are plain
    ``nn.Conv2d`` modules named ``fused_<i>``; ``report`` lists what was merged and what was left alone and
    why. With ``verify`` (default), both run on ``example_inputs`` and :class:`AutoFuseError` is raised
    when they differ beyond ``tolerance`` (default: by the output dtype).
    """
    args = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    reference = copy.deepcopy(model).eval()
    gm, tracer = _trace(copy.deepcopy(reference))
    device = next((p.device for p in reference.parameters()), torch.device("cpu"))
    report = FuseReport(tracer, params_before=sum(p.numel() for p in reference.parameters()))
    report.removed_asserts = _strip_asserts(gm)
    merged: list[MergedConv] = []
    for _ in range(max_passes):  # to a fixed point: the last pass merges nothing and says what stays
        ShapeProp(gm).propagate(*args)
        report.skipped, report.merged = [], []
        changed = _Pass(gm, report, device).run()
        merged += report.merged
        report.passes += 1
        if not changed:
            break
    report.merged = merged
    gm.eval()
    report.params_after = sum(p.numel() for p in gm.parameters())
    if verify:
        comparison = Comparison(tolerance)
        comparison.update_outputs(reference(*args), gm(*args))
        report.verification = comparison.report()
        if not report.verification.passed:
            raise AutoFuseError(
                f"auto_fuse produced a graph that differs from the model: {report.verification.describe()}"
            )
    return gm, report
