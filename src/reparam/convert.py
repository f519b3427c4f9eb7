"""Whole-model conversion: reparameterize every block, then prove the result computes the same function."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .blocks import user_kind
from .compare import Comparison, ComparisonReport, Tolerance, output_tensors
from .fusion import bn_statistics, fold_bn

__all__ = [
    "reparameterize_model",
    "verify_equivalence",
    "EquivalenceReport",
    "EquivalenceError",
    "first_differing_block",
    "fold_conv_bn_pairs",
    "fusable_blocks",
    "where_fusion_differs",
]

# the report type of every comparison in reparam; the old name stays for callers of verify_equivalence
EquivalenceReport = ComparisonReport


def _reparameterizable(module: nn.Module) -> bool:
    return callable(getattr(module, "fused_form", None)) or callable(getattr(module, "reparameterize", None))


def _check_running_stats(model: nn.Module) -> None:
    for block_name, block in model.named_modules():
        if not _reparameterizable(block):
            continue
        for bn_name, bn in block.named_modules():
            if isinstance(bn, _BatchNorm) and (bn.running_mean is None or bn.running_var is None):
                where = ".".join(p for p in (block_name, bn_name) if p) or "<root>"
                raise ValueError(
                    f"cannot fuse '{where}': BatchNorm has no running statistics "
                    "(track_running_stats=False); fusion needs them, build the BN with track_running_stats=True"
                )


def _fuse_children(parent: nn.Module) -> None:
    for name, child in list(parent.named_children()):
        fused_form, reparameterize = getattr(child, "fused_form", None), getattr(child, "reparameterize", None)
        if callable(fused_form):
            setattr(parent, name, fused_form())  # a plain conv (+ act): no block logic left
        elif callable(reparameterize):
            reparameterize()  # a user's block that fuses itself in place
            _fuse_children(child)
        else:
            _fuse_children(child)


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse every block; return the model in eval mode.

    A reparam block (anything with ``fused_form()``) is replaced by its plain form, ``Conv2d`` + act, so
    the fused network is made of plain modules. Other modules with a ``reparameterize()`` method (user
    blocks, timm's) are fused in place. Models with neither are for :func:`reparam.auto_fuse`.

    Fusion folds BatchNorm with its *running statistics*: the fused model reproduces the original in
    eval mode, not in train mode (where BN uses batch statistics). With ``inplace=False`` (default) a
    deep copy is fused and ``model`` is left untouched (with ``inplace=True`` the blocks inside
    ``model`` are swapped; use the returned module).

    Raises ``ValueError`` naming the module when a BatchNorm inside a block keeps no running
    statistics (``track_running_stats=False``), and when the model holds nothing to fuse (a silent copy would look
    like success).
    """
    if not any(_reparameterizable(m) for m in model.modules()):
        raise ValueError(
            f"reparameterize_model: {type(model).__name__} holds no block to fuse (no module with fused_form() or "
            "reparameterize()); it is plain already, or use reparam.auto_fuse(model, example_inputs), which fuses "
            "conv/BN branches of any nn.Module"
        )
    _check_running_stats(model)
    if not inplace:
        model = copy.deepcopy(model)
    fused_form, reparameterize = getattr(model, "fused_form", None), getattr(model, "reparameterize", None)
    if callable(fused_form):
        return fused_form().eval()
    if callable(reparameterize):
        reparameterize()
    _fuse_children(model)
    return model.eval()


@torch.no_grad()
def fold_conv_bn_pairs(model: nn.Module) -> nn.Module:
    """Fold each ``Conv2d`` directly followed by a ``BatchNorm2d`` in an ``nn.Sequential`` (a stem or head outside
    blocks), in place; return ``model``.

    With the BN's running statistics (eval mode), per output channel: ``W' = W * gamma / sqrt(var + eps)``,
    ``b' = beta + (b - mean) * gamma / sqrt(var + eps)`` (:func:`reparam.fusion.fold_bn`, in float64); the BN becomes
    ``nn.Identity`` (its state_dict keys go, the conv gains a bias). A BN without running statistics, or with
    another channel count, is left as it is.
    """
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[first], seq._modules[second]
            if (
                type(conv) is nn.Conv2d
                and type(bn) is nn.BatchNorm2d
                and bn.track_running_stats
                and bn.running_mean is not None
                and bn.num_features == conv.out_channels
            ):
                weight, bias = fold_bn(conv.weight, conv.bias, *bn_statistics(bn))
                folded = copy.deepcopy(conv)
                folded.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
                folded.bias = nn.Parameter(bias, requires_grad=conv.weight.requires_grad)
                seq._modules[first], seq._modules[second] = folded, nn.Identity()
    return model


def fusable_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every module that fuses itself (``fused_form()`` or ``reparameterize()``), by name, outer before inner."""
    return [(name, m) for name, m in model.named_modules() if _reparameterizable(m)]


@torch.no_grad()
def first_differing_block(model: nn.Module, example: torch.Tensor, rtol: float = 1e-9) -> tuple[str, str] | None:
    """Where a whole-model mismatch comes from: the first block (in forward order) whose own fused form computes
    another function, in float64, on the input it gets inside ``model`` from ``example``; ``(name, what)``, or None
    when every block agrees (``max |diff| <= rtol * max(1, max |block output|)``) or there is no block."""
    model64 = copy.deepcopy(model).double().eval()
    seen: dict[str, torch.Tensor] = {}
    blocks = fusable_blocks(model64)
    hooks = [
        m.register_forward_pre_hook(lambda _, args, name=name: seen.setdefault(name, args[0].detach()))
        for name, m in blocks
    ]
    try:
        model64(example.double())
    finally:
        for hook in hooks:
            hook.remove()
    for name, x in seen.items():  # the order they ran in
        block = model64.get_submodule(name)
        kind = getattr(block, "kind", type(block).__name__)
        try:
            want, got = block(x), reparameterize_model(block)(x)
        except Exception as err:  # noqa: BLE001 - a block's own fusion code failing is what is being located
            return name or "<root>", f"kind '{kind}': fusing it raised {type(err).__name__}: {err}"
        diff = float((want - got).abs().max())
        if not diff <= rtol * max(1.0, float(want.abs().max())):
            return name or "<root>", f"kind '{kind}', max |diff| {diff:.3e} in float64"
    return None


def where_fusion_differs(model: nn.Module, example: torch.Tensor) -> str | None:
    """After a whole-model mismatch, where it comes from and whose code that is, as words: ``the first block that
    differs is <name> (<what>): <owner>``, the owner being the user for a kind registered outside reparam (a built-in
    one is a bug to report); or that every block alone fuses exactly. None for a model with no block to test alone
    (``model=custom``: auto_fuse merged its graph)."""
    if not fusable_blocks(model):
        return None
    found = first_differing_block(model, example)
    if found is None:
        return "every block alone fuses exactly: the difference is outside the blocks"
    name, what = found
    kind = getattr(model.get_submodule(name) if name != "<root>" else model, "kind", None)
    owner = (
        "its fusion is your code (reparam.register_block): check it" if user_kind(kind) else "a bug: please report it"
    )
    return f"the first block that differs is {name} ({what}): {owner}"


class EquivalenceError(AssertionError):
    """The fused model does not reproduce the reference within tolerance."""

    def __init__(self, message: str, report: EquivalenceReport) -> None:
        super().__init__(message)
        self.report = report


@torch.inference_mode()
def verify_equivalence(
    reference: nn.Module,
    fused: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor],
    atol: float | None = None,
    rtol: float | None = None,
    raise_on_mismatch: bool = True,
) -> EquivalenceReport:
    """Run both models in eval mode on ``inputs`` and compare their outputs (:class:`reparam.compare.Comparison`).

    ``inputs`` is one tensor (one batch), or a sequence of the forward's positional arguments (for a model taking
    two inputs: ``(x, y)``; not several batches). Outputs may be a tensor or tuples, lists and dicts of tensors:
    every tensor is compared. Both models must hold the same floating dtype (compare a bfloat16 copy with a
    bfloat16 reference). Passes when ``max|fused - reference| <= atol + rtol * max|reference|``; defaults come from
    :meth:`Tolerance.for_dtype` for the output dtype. Both models are put back in the train/eval mode they came in.
    Raises :class:`EquivalenceError` (carrying the report) on a mismatch unless ``raise_on_mismatch=False``; for a
    model made of reparam blocks, its message names the first block whose own fusion differs.
    """
    args = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    dtypes = {name: _float_dtypes(model) for name, model in (("reference", reference), ("fused", fused))}
    if dtypes["reference"] and dtypes["fused"] and dtypes["reference"] != dtypes["fused"]:
        raise ValueError(
            f"the reference holds {_names(dtypes['reference'])} parameters and the fused model "
            f"{_names(dtypes['fused'])}: compare them in one dtype (e.g. fused.to(torch.float32), or a reference "
            "converted like the fused model)"
        )
    modes = (reference.training, fused.training)
    reference.eval()
    fused.eval()
    try:
        expected = reference(*args)
        actual = fused(*args)
    finally:
        reference.train(modes[0])
        fused.train(modes[1])
    tensors = output_tensors(expected)
    dtype = tensors[0][1].dtype if tensors else torch.float32
    comparison = Comparison(Tolerance.resolve(dtype, atol, rtol))
    try:
        comparison.update_outputs(expected, actual)
    except ValueError as err:  # another structure or shape: no number compares them
        raise EquivalenceError(
            str(err), ComparisonReport(math.inf, math.inf, 0.0, 0.0, 0, 0, str(dtype), 0.0, 0.0, False)
        ) from err
    report = comparison.report()
    if not report.passed and raise_on_mismatch:
        # a few samples are enough to find the block, in float64, one block at a time
        where = where_fusion_differs(reference, args[0][:8]) if len(args) == 1 and args[0].dim() else None
        located = f"; {where}" if where else ""
        raise EquivalenceError(f"fused model differs from the reference: {report.describe()}{located}", report)
    return report


def _float_dtypes(model: nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.is_floating_point()}


def _names(dtypes: set[torch.dtype]) -> str:
    return "/".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
