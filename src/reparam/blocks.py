"""Multi-branch blocks: several parallel linear branches in training, one conv (+ act) after fusion.

:class:`MultiBranchBlock` owns a dict of branches (see :mod:`reparam.branches`), an optional norm after
their sum and the nonlinear part; a subclass only chooses the branches. The zoo, by registry kind:

========== ===================================================================================
repvgg     k x k+BN, 1x1+BN, identity BN (RepVGG, Ding et al. 2021)
qarepvgg   k x k+BN, plain 1x1, plain identity, BN after the sum (QARepVGG, arXiv 2212.01593)
acnet      k x k+BN, 1xk+BN, kx1+BN (ACNet, Ding et al. 2019)
dbb        k x k+BN, 1x1+BN, 1x1 -> k x k, 1x1 -> avg pool (Diverse Branch Block, Ding et al. 2021)
mobileone  depthwise unit (n k x k+BN, 1x1+BN, identity BN) then pointwise unit (n 1x1+BN, identity BN)
linear_add s*k x k, s*1x1, s*identity (per-channel scales s, no branch BN) merged into one kernel every
           training step, one conv, one BN (OREPA, CVPR 2022; RepOptimizer's LinearAddBlock, ICLR 2023)
========== ===================================================================================

``make_block(kind, ...)`` builds one; :func:`register_block` adds a kind. ``reparameterize()`` fuses a
block in place; ``fused_form()`` returns the plain ``Sequential(fused=Conv2d, act=...)`` that
``reparameterize_model`` puts in its place, so a fused network holds no block logic at all.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .branches import (
    AvgPoolBranch,
    ConvBN,
    FusableBranch,
    IdentityBranch,
    NormFactory,
    OneByOneKxK,
    ScaledBranch,
    ScaledConv,
    ScaledIdentity,
    fold_norm,
)
from .fusion import Branch, pad_kernel, sum_branches

__all__ = [
    "BLOCKS",
    "ACBlock",
    "ConvBN",
    "DiverseBranchBlock",
    "FormMismatchError",
    "check_state_dict_form",
    "LinearAddBlock",
    "MobileOneBlock",
    "MobileOneUnit",
    "MultiBranchBlock",
    "QARepVGGBlock",
    "RepVGGBlock",
    "make_block",
    "register_block",
    "unknown_block",
    "user_kind",
    "state_dict_form",
]


class FormMismatchError(RuntimeError):
    """A state_dict of one form (train or fused) was loaded into a model of the other form."""


def state_dict_form(keys: Iterable[str]) -> str | None:
    """``"train"`` if the keys hold multi-branch weights, ``"fused"`` if fused convs, ``None`` if neither."""
    keys = list(keys)
    if any(".branches." in f".{k}" or ".conv_kxk." in f".{k}" for k in keys):
        return "train"
    if any(".fused." in f".{k}" for k in keys):
        return "fused"
    return None


def check_state_dict_form(holds: str | None, model_is_fused: bool, where: str) -> None:
    """The one train/fused form check: a :class:`FormMismatchError` naming ``where`` when a state_dict of one form
    (``holds``, from :func:`state_dict_form`) is loaded into a model or block of the other."""
    if holds == "train" and model_is_fused:
        raise FormMismatchError(
            f"{where}: the state_dict holds train-form (multi-branch) weights but the model is in fused form; load "
            "it into a model built with deploy=False, then call reparam.reparameterize_model()"
        )
    if holds == "fused" and not model_is_fused:
        raise FormMismatchError(
            f"{where}: the state_dict holds fused weights but the model is in train form; build the model with "
            "deploy=True to load fused weights"
        )


class MultiBranchBlock(nn.Module):
    """``act(post_norm(sum_b branch_b(x)))`` in training; ``act(fused(x))`` once reparameterized.

    Every branch is centred on the same output pixel (a k x k conv pads ``dilation * (k // 2)``), so
    their kernels add. Subclasses fill ``self.branches`` (and optionally ``self.post_norm``) when
    ``deploy`` is false; ``deploy=True`` builds the fused conv directly, for loading fused weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        act: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__()
        _check_block_args(in_channels, out_channels, kernel_size, stride, groups, dilation)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups, self.dilation = kernel_size, stride, groups, dilation
        self.padding = dilation * (kernel_size // 2)
        self.act = act if act is not None else nn.ReLU()
        self.branches = nn.ModuleDict()
        self.post_norm: nn.Module | None = None
        self.fused: nn.Conv2d | None = self._make_fused_conv() if deploy else None

    @property
    def identity_possible(self) -> bool:
        return self.in_channels == self.out_channels and self.stride == 1

    @property
    def is_fused(self) -> bool:
        return self.fused is not None

    def _make_fused_conv(self) -> nn.Conv2d:
        return nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        branches = iter(self.branches.values())
        out = next(branches)(x)
        for branch in branches:
            out = out + branch(x)
        if self.post_norm is not None:
            out = self.post_norm(out)
        return self.act(out)

    def equivalent_kernel_and_bias(self) -> Branch:
        """The block's linear part as one k x k ``(kernel, bias)`` in float64, differentiable.

        ``sum_b pad(K_b), sum_b b_b``, then the post-sum norm folded in; BN running statistics
        (eval-mode behaviour). Usable inside a loss (a regularizer, QAT) as well as for fusing.
        """
        if self.fused is not None:
            assert self.fused.bias is not None  # the fused conv is built with a bias
            return self.fused.weight.double(), self.fused.bias.double()
        if not self.branches:
            raise RuntimeError(f"{type(self).__name__} has no branches to fuse")
        # nn.ModuleDict types its values as plain Modules; every branch a block adds has kernel_and_bias
        branches = cast("list[FusableBranch]", list(self.branches.values()))
        kernel, bias = self._sum_centred(m.kernel_and_bias() for m in branches)
        return fold_norm(kernel, bias, self.post_norm)

    def _sum_centred(self, branches: Iterable[Branch]) -> Branch:
        """Branch ``(kernel, bias)`` pairs centred in the block's k x k kernel and summed, in their own dtype."""
        size = (self.kernel_size, self.kernel_size)
        return sum_branches((pad_kernel(k, size), b) for k, b in branches)

    @torch.no_grad()
    def fused_kernel_and_bias(self) -> Branch:
        """:meth:`equivalent_kernel_and_bias` rounded once to the block's weight dtype (no gradient)."""
        reference = next(self.parameters(), None)
        dtype = reference.dtype if reference is not None else torch.float32
        kernel, bias = self.equivalent_kernel_and_bias()
        return kernel.to(dtype), bias.to(dtype)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one conv, in place. Idempotent; the branch parameters are gone."""
        if self.fused is not None:
            return
        kernel, bias = self.fused_kernel_and_bias()
        fused = self._make_fused_conv().to(device=kernel.device, dtype=kernel.dtype)
        assert fused.bias is not None  # built with bias=True
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        fused.train(self.training)
        self.fused = fused
        self.branches = nn.ModuleDict()
        self.post_norm = None

    def fused_form(self) -> nn.Sequential:
        """The plain module this block becomes: ``Sequential(fused=Conv2d, act=act)`` (reparameterizes first)."""
        self.reparameterize()
        assert self.fused is not None
        return nn.Sequential(OrderedDict(fused=self.fused, act=self.act)).train(self.training)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # train-form files from before branches lived in a dict: '<block>.conv_kxk.x' -> '<block>.branches.conv_kxk.x'
        for key in [k for k in state_dict if k.startswith(prefix)]:
            head = key[len(prefix) :].split(".", 1)[0]
            if head in self.branches and not hasattr(self, head):
                state_dict[f"{prefix}branches.{key[len(prefix) :]}"] = state_dict.pop(key)
        holds = state_dict_form(k[len(prefix) :] for k in state_dict if k.startswith(prefix))
        if holds == "fused" and f"{prefix}fused.weight" not in state_dict:
            holds = None  # a nested module's fused conv, not this block's
        check_state_dict_form(holds, self.fused is not None, f"block '{prefix.rstrip('.') or '<root>'}'")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        form = "fused" if self.fused is not None else "train_form"
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, form={form}"
        )


BLOCKS: dict[str, Callable[..., nn.Module]] = {}


def register_block(kind: str) -> Callable[[type], type]:
    """Class decorator: make a block class available as ``make_block(kind, ...)`` and ``model.block=kind``.

    The class is an ``nn.Module`` with ``fused_form()`` or ``reparameterize()`` (subclass :class:`MultiBranchBlock`
    for both). A kind already registered by another class is refused (``BLOCKS.pop(kind)`` first replaces it on
    purpose); the same class registered again (its module imported twice) is not."""

    def add(cls: type) -> type:
        fusable = callable(getattr(cls, "fused_form", None)) or callable(getattr(cls, "reparameterize", None))
        if not (isinstance(cls, type) and issubclass(cls, nn.Module) and fusable):
            raise TypeError(
                f"register_block('{kind}'): {getattr(cls, '__qualname__', cls)!s} is not a block: a block kind is an "
                "nn.Module with fused_form() or reparameterize(); subclass reparam.MultiBranchBlock"
            )
        held = BLOCKS.get(kind)
        if held is not None and _qualified(held) != _qualified(cls):
            raise ValueError(
                f"register_block('{kind}'): block kind '{kind}' is already {_qualified(held)}; choose another name "
                f"(or reparam.BLOCKS.pop('{kind}') first, to replace it on purpose)"
            )
        BLOCKS[kind] = cls
        cls.kind = kind  # type: ignore[attr-defined]  # the registry gives each class its kind
        return cls

    return add


def _qualified(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def user_kind(kind: object) -> bool:
    """Whether ``kind`` was registered by code outside reparam (``imports=[...]``): its fusion is the user's code."""
    return kind in BLOCKS and not BLOCKS[kind].__module__.startswith("reparam.")


def unknown_block(kind: str) -> str:
    """What to do about a block kind nothing registered (in training ``model.block``; in deploy the recorded one)."""
    return (
        f"unknown block kind '{kind}'; choose one of {sorted(BLOCKS)}, or register your own with "
        "reparam.register_block in a module that is imported first (in Python: import it; train.py, deploy.py and "
        "serve.py: imports=[<module>])"
    )


def make_block(
    kind: str,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    **options: Any,
) -> nn.Module:
    """A block of the registered ``kind`` (``repvgg``, ``qarepvgg``, ``acnet``, ``dbb``, ``mobileone``, ...)."""
    if kind not in BLOCKS:
        raise ValueError(unknown_block(kind))
    cls = BLOCKS[kind]
    accepted = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            known = sorted(set(accepted) - {"in_channels", "out_channels", "kernel_size", "stride", "groups"})
            raise ValueError(
                f"block kind '{kind}' has no option(s) {unknown}; its options are {known} "
                "(make_block(..., <name>=...); in train.py model.block_options.<name>=...)"
            )
    return cls(in_channels, out_channels, kernel_size, stride=stride, groups=groups, **options)


@register_block("repvgg")
class RepVGGBlock(MultiBranchBlock):
    """``act(BN(conv_kxk(x)) + BN(conv_1x1(x)) + BN(x))`` in training; ``act(conv_kxk'(x))`` fused.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation, groups: as for ``nn.Conv2d``;
            padding is always ``dilation * (kernel_size // 2)`` so that all branches align.
        use_1x1: add the 1x1 conv branch (centre-padded into the k x k kernel when fused).
        use_identity: ``None`` adds the identity branch where it is possible
            (``in_channels == out_channels`` and ``stride == 1``); ``True`` requires it; ``False`` omits it.
        norm_layer: factory for the branches' normalization (any ``_BatchNorm``, e.g.
            ``nn.SyncBatchNorm`` or ``functools.partial(nn.BatchNorm2d, affine=False)``), or ``None``
            for convs with bias and a plain ``x`` identity.
        conv_bias: bias on the branch convs; defaults to ``norm_layer is None``.
        act: the nonlinear part after the sum, never folded (any module: SE + ReLU, ...).
            ``None`` gives ``nn.ReLU()``; pass ``nn.Identity()`` for a purely linear block.
        deploy: build the fused single-conv form directly (for loading fused weights).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        use_1x1: bool = True,
        use_identity: bool | None = None,
        norm_layer: NormFactory | None = nn.BatchNorm2d,
        conv_bias: bool | None = None,
        act: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, dilation, act, deploy)
        _check_identity(use_identity, self)
        if deploy:
            return
        conv: dict[str, Any] = dict(
            stride=stride, dilation=dilation, groups=groups, norm_layer=norm_layer, bias=conv_bias
        )
        self.branches["conv_kxk"] = ConvBN(in_channels, out_channels, kernel_size, padding=self.padding, **conv)
        if use_1x1 and kernel_size > 1:
            self.branches["conv_1x1"] = ConvBN(in_channels, out_channels, 1, padding=0, **conv)
        if use_identity or (use_identity is None and self.identity_possible):
            self.branches["identity"] = IdentityBranch(out_channels, groups, norm_layer)


@register_block("qarepvgg")
class QARepVGGBlock(MultiBranchBlock):
    """QARepVGG: ``act(BN(BN(conv_kxk(x)) + conv_1x1(x) + x))``: no BN on the 1x1 and identity branches, one
    BN after the sum, so the fused weights stay friendly to INT8 quantization."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        use_identity: bool | None = None,
        norm_layer: NormFactory = nn.BatchNorm2d,
        act: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, dilation, act, deploy)
        _check_identity(use_identity, self)
        if deploy:
            return
        conv: dict[str, Any] = dict(stride=stride, dilation=dilation, groups=groups)
        self.branches["conv_kxk"] = ConvBN(
            in_channels, out_channels, kernel_size, padding=self.padding, norm_layer=norm_layer, **conv
        )
        if kernel_size > 1:
            self.branches["conv_1x1"] = ConvBN(in_channels, out_channels, 1, norm_layer=None, bias=False, **conv)
        if use_identity or (use_identity is None and self.identity_possible):
            self.branches["identity"] = IdentityBranch(out_channels, groups, None)
        self.post_norm = norm_layer(out_channels)


@register_block("acnet")
class ACBlock(MultiBranchBlock):
    """ACNet's asymmetric convolution block: ``act(BN(conv_kxk(x)) + BN(conv_1xk(x)) + BN(conv_kx1(x)))``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
        act: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, dilation, act, deploy)
        if kernel_size < 3:
            raise ValueError(f"acnet needs kernel_size >= 3 (its branches are 1xk and kx1), got {kernel_size}")
        if deploy:
            return
        conv: dict[str, Any] = dict(stride=stride, dilation=dilation, groups=groups, norm_layer=norm_layer)
        p = self.padding
        self.branches["conv_kxk"] = ConvBN(in_channels, out_channels, kernel_size, padding=p, **conv)
        self.branches["conv_1xk"] = ConvBN(in_channels, out_channels, (1, kernel_size), padding=(0, p), **conv)
        self.branches["conv_kx1"] = ConvBN(in_channels, out_channels, (kernel_size, 1), padding=(p, 0), **conv)


@register_block("dbb")
class DiverseBranchBlock(MultiBranchBlock):
    """Diverse Branch Block: k x k+BN, 1x1+BN (unless depthwise), 1x1 -> k x k, 1x1 -> k x k average pooling.

    The sequential branches pad between their two stages with ``BNAndPad`` so borders stay exact.
    ``mid_channels`` is the 1x1 -> k x k branch's inner width (default: ``in_channels``, or twice that
    for a depthwise block, as in DBB).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        mid_channels: int | None = None,
        norm_layer: NormFactory = nn.BatchNorm2d,
        act: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, 1, act, deploy)
        if deploy:
            return
        depthwise = groups >= out_channels
        mid = mid_channels or (2 * in_channels if depthwise else in_channels)
        if mid % groups:
            raise ValueError(f"dbb: mid_channels={mid} must be divisible by groups={groups}")
        self.branches["conv_kxk"] = ConvBN(
            in_channels, out_channels, kernel_size, stride, self.padding, groups=groups, norm_layer=norm_layer
        )
        if not depthwise:
            self.branches["conv_1x1"] = ConvBN(
                in_channels, out_channels, 1, stride, 0, groups=groups, norm_layer=norm_layer
            )
        self.branches["conv_1x1_kxk"] = OneByOneKxK(
            in_channels, mid, out_channels, kernel_size, stride, groups, norm_layer
        )
        self.branches["avg"] = AvgPoolBranch(in_channels, out_channels, kernel_size, stride, groups, norm_layer)


class MobileOneUnit(MultiBranchBlock):
    """One half of a MobileOne block: ``num_conv_branches`` k x k+BN convs, a 1x1+BN "scale" branch (k > 1)
    and an identity BN where possible."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        num_conv_branches: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
        act: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, 1, act, deploy)
        if num_conv_branches < 1:
            raise ValueError(f"mobileone needs num_conv_branches >= 1, got {num_conv_branches}")
        if deploy:
            return
        conv: dict[str, Any] = dict(stride=stride, groups=groups, norm_layer=norm_layer)
        for i in range(num_conv_branches):
            self.branches[f"conv_kxk_{i}"] = ConvBN(
                in_channels, out_channels, kernel_size, padding=self.padding, **conv
            )
        if kernel_size > 1:
            self.branches["conv_scale"] = ConvBN(in_channels, out_channels, 1, padding=0, **conv)
        if self.identity_possible:
            self.branches["identity"] = IdentityBranch(out_channels, groups, norm_layer)


@register_block("mobileone")
class MobileOneBlock(nn.Sequential):
    """MobileOne: a depthwise k x k unit (stride here) then a pointwise 1x1 unit, each over-parameterized with
    ``num_conv_branches`` parallel convs, each fusing to one conv + ReLU. ``groups`` is not used: the first
    unit is always depthwise."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        num_conv_branches: int = 1,
        norm_layer: NormFactory = nn.BatchNorm2d,
        deploy: bool = False,
    ) -> None:
        if groups not in (1, in_channels):
            raise ValueError(f"mobileone's first unit is depthwise; groups={groups} is not used, leave it at 1")
        options: dict[str, Any] = dict(num_conv_branches=num_conv_branches, norm_layer=norm_layer, deploy=deploy)
        super().__init__(
            OrderedDict(
                depthwise=MobileOneUnit(in_channels, in_channels, kernel_size, stride, groups=in_channels, **options),
                pointwise=MobileOneUnit(in_channels, out_channels, 1, 1, groups=1, **options),
            )
        )

    def reparameterize(self) -> None:
        for unit in self._units():
            unit.reparameterize()

    def fused_form(self) -> nn.Sequential:
        units = self.named_children()
        return nn.Sequential(OrderedDict((name, cast(MobileOneUnit, unit).fused_form()) for name, unit in units))

    def _units(self) -> list[MobileOneUnit]:
        return cast("list[MobileOneUnit]", list(self))  # built from two MobileOneUnits


@register_block("linear_add")
class LinearAddBlock(MultiBranchBlock):
    """A linearized RepVGG block: ``act(BN(conv(x, K)))`` with, per output channel ``o``,

        K[o] = s_kxk[o] * K_kxk[o] + pad(s_1x1[o] * K_1x1[o]) + s_id[o] * I[o]    (+ s_1xk * K_1xk, s_kx1 * K_kx1)

    The branches carry a per-output-channel scale ``s`` instead of their own BN (OREPA, CVPR 2022; RepOptimizer's
    ``LinearAddBlock``, ICLR 2023), so the whole sum is linear in ``x`` during training too: ``K`` is assembled
    from the branches in every training step, in the training dtype (under autocast the conv runs in bf16/fp16),
    and one conv and one BN run, the cost of the plain network. Fusing folds that BN into ``K`` in float64.
    Running each scaled branch separately and summing (``MultiBranchBlock.forward``) computes the same function.

    Args:
        in_channels, out_channels, kernel_size, stride, groups, dilation: as for ``nn.Conv2d``.
        use_1x1: add the scaled 1x1 branch. use_identity: as in ``RepVGGBlock``.
        asymmetric: add ACNet's 1xk and kx1 branches, scaled alike (kernel_size >= 3).
        trainable_scales: ``False`` keeps the scales constant (buffers): with SGD the block is then a plain
            conv + BN trained with a constant gradient mask, RepOptimizer's gradient re-parameterization.
        scale_init_kxk, scale_init_1x1, scale_init_identity, scale_init_asymmetric: initial scale values.
            Defaults, 1 for every branch, are RepOptimizer's: its ``LinearAddBlock`` starts the identity at 1
            and the convs at ``conv_scale_init``, 1 for the first block of a stage (``sqrt(2 / i)`` for block
            ``i > 0``, which a block alone cannot know). With the default conv init the identity then
            carries about 3x the variance of each conv branch, a residual-like start.
        norm_layer: the BN after the sum (any ``_BatchNorm``).
        act: the nonlinear part (default ``nn.ReLU()``). deploy: build the fused form directly.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        use_1x1: bool = True,
        use_identity: bool | None = None,
        asymmetric: bool = False,
        trainable_scales: bool = True,
        scale_init_kxk: float = 1.0,
        scale_init_1x1: float = 1.0,
        scale_init_identity: float = 1.0,
        scale_init_asymmetric: float = 1.0,
        norm_layer: NormFactory = nn.BatchNorm2d,
        act: nn.Module | None = None,
        deploy: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, groups, dilation, act, deploy)
        _check_identity(use_identity, self)
        for name, value in (("use_1x1", use_1x1), ("asymmetric", asymmetric), ("trainable_scales", trainable_scales)):
            if not isinstance(value, bool):
                raise ValueError(f"linear_add: {name} must be true or false, got {value!r}")
        inits = {
            "scale_init_kxk": scale_init_kxk,
            "scale_init_1x1": scale_init_1x1,
            "scale_init_identity": scale_init_identity,
            "scale_init_asymmetric": scale_init_asymmetric,
        }
        for name, init in inits.items():
            if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
                raise ValueError(f"linear_add: {name} must be a finite number, got {init!r}")
        if asymmetric and kernel_size < 3:
            raise ValueError(f"linear_add: asymmetric=true needs kernel_size >= 3 (1xk and kx1), got {kernel_size}")
        if deploy:
            return
        p = self.padding
        conv: dict[str, Any] = dict(stride=stride, dilation=dilation, groups=groups, trainable=trainable_scales)
        self.branches["conv_kxk"] = ScaledConv(
            in_channels, out_channels, kernel_size, padding=p, scale_init=scale_init_kxk, **conv
        )
        if use_1x1 and kernel_size > 1:
            self.branches["conv_1x1"] = ScaledConv(in_channels, out_channels, 1, scale_init=scale_init_1x1, **conv)
        if asymmetric:
            for name, size, pad in (("conv_1xk", (1, kernel_size), (0, p)), ("conv_kx1", (kernel_size, 1), (p, 0))):
                self.branches[name] = ScaledConv(
                    in_channels, out_channels, size, padding=pad, scale_init=scale_init_asymmetric, **conv
                )
        if use_identity or (use_identity is None and self.identity_possible):
            self.branches["identity"] = ScaledIdentity(out_channels, groups, scale_init_identity, trainable_scales)
        self.post_norm = norm_layer(out_channels)

    def training_kernel(self) -> torch.Tensor:
        """The merged k x k kernel ``K`` (no bias: the scaled branches have none), in the conv weights' dtype.

        Differentiable in every conv weight and scale; this is what the unfused forward convolves with.
        """
        dtype = cast(ScaledConv, self.branches["conv_kxk"]).conv.weight.dtype
        branches = cast("list[ScaledBranch]", list(self.branches.values()))  # linear_add adds only scaled branches
        kernel, _ = self._sum_centred(m.kernel_and_bias(dtype) for m in branches)
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        out = F.conv2d(x, self.training_kernel(), None, self.stride, self.padding, self.dilation, self.groups)
        assert self.post_norm is not None  # set in __init__, removed only with the branches
        return self.act(self.post_norm(out))


def _check_identity(use_identity: bool | None, block: MultiBranchBlock) -> None:
    if use_identity and not block.identity_possible:
        raise ValueError(
            f"identity branch needs in_channels == out_channels and stride == 1, got in={block.in_channels}, "
            f"out={block.out_channels}, stride={block.stride}; pass use_identity=None or False"
        )


def _check_block_args(in_ch: int, out_ch: int, k: int, stride: int, groups: int, dilation: int) -> None:
    if in_ch < 1 or out_ch < 1:
        raise ValueError(f"channels must be positive, got in={in_ch}, out={out_ch}")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be odd (1, 3, 5, ...) so branches can be centred, got {k}")
    if stride < 1 or dilation < 1 or groups < 1:
        raise ValueError(f"stride, dilation and groups must be >= 1, got {stride}, {dilation}, {groups}")
    if in_ch % groups or out_ch % groups:
        raise ValueError(
            f"groups={groups} must divide both in_channels={in_ch} and out_channels={out_ch}; choose a common divisor"
        )
