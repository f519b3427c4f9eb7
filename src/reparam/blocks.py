"""RepVGG-style blocks: several parallel linear branches in training, one conv after fusion."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .fusion import Branch, bn_statistics, fold_bn, identity_kernel, pad_kernel, sum_branches

__all__ = ["ConvBN", "RepVGGBlock", "FormMismatchError"]

NormFactory = Callable[[int], nn.Module]


class FormMismatchError(RuntimeError):
    """A state_dict of one form (train or fused) was loaded into a model of the other form."""


class ConvBN(nn.Module):
    """``BN(conv(x))``, or ``conv(x)`` with a bias when ``norm_layer`` is ``None``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        norm_layer: NormFactory | None = nn.BatchNorm2d,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        bias = norm_layer is None if bias is None else bias
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias=bias
        )
        self.bn = norm_layer(out_channels) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.bn(x) if self.bn is not None else x

    def fused_kernel_and_bias(self) -> Branch:
        """The branch as one ``(kernel, bias)`` pair in float64."""
        weight = self.conv.weight.detach().double()
        bias = self.conv.bias.detach().double() if self.conv.bias is not None else None
        if self.bn is None:
            return weight, bias if bias is not None else weight.new_zeros(weight.shape[0])
        return fold_bn(weight, bias, *_bn_stats_double(self.bn))


def _bn_stats_double(bn: nn.Module):
    mean, var, eps, gamma, beta = bn_statistics(bn)  # type: ignore[arg-type]
    detach = lambda t: None if t is None else t.detach().double()  # noqa: E731
    return detach(mean), detach(var), eps, detach(gamma), detach(beta)


class RepVGGBlock(nn.Module):
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
        super().__init__()
        _check_block_args(in_channels, out_channels, kernel_size, stride, groups, dilation)
        identity_possible = in_channels == out_channels and stride == 1
        if use_identity and not identity_possible:
            raise ValueError(
                f"identity branch needs in_channels == out_channels and stride == 1, got "
                f"in={in_channels}, out={out_channels}, stride={stride}; pass use_identity=None or False"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups, self.dilation = kernel_size, stride, groups, dilation
        self.padding = dilation * (kernel_size // 2)
        self.act = act if act is not None else nn.ReLU()

        conv_args = dict(stride=stride, dilation=dilation, groups=groups, norm_layer=norm_layer, bias=conv_bias)
        self.fused: nn.Conv2d | None = None
        self.conv_kxk: ConvBN | None = None
        self.conv_1x1: ConvBN | None = None
        self.identity: nn.Module | None = None
        if deploy:
            self.fused = self._make_fused_conv()
            return
        self.conv_kxk = ConvBN(in_channels, out_channels, kernel_size, padding=self.padding, **conv_args)
        if use_1x1 and kernel_size > 1:
            self.conv_1x1 = ConvBN(in_channels, out_channels, 1, padding=0, **conv_args)
        if (use_identity is None and identity_possible) or use_identity:
            self.identity = norm_layer(out_channels) if norm_layer is not None else nn.Identity()

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
        out = self.conv_kxk(x)
        if self.conv_1x1 is not None:
            out = out + self.conv_1x1(x)
        if self.identity is not None:
            out = out + self.identity(x)
        return self.act(out)

    def fused_kernel_and_bias(self) -> Branch:
        """The block's linear part as one k x k ``(kernel, bias)``, in the weight's dtype and device.

        Uses BN running statistics (eval-mode behaviour). Arithmetic is float64 throughout; the
        result is rounded once.
        """
        if self.fused is not None:
            return self.fused.weight.detach(), self.fused.bias.detach()
        weight = self.conv_kxk.conv.weight
        branches = [self.conv_kxk.fused_kernel_and_bias()]
        if self.conv_1x1 is not None:
            kernel, bias = self.conv_1x1.fused_kernel_and_bias()
            branches.append((pad_kernel(kernel, self.kernel_size), bias))
        if self.identity is not None:
            kernel = identity_kernel(
                self.in_channels, self.kernel_size, self.groups, dtype=torch.float64, device=weight.device
            )
            if isinstance(self.identity, _BatchNorm):
                branches.append(fold_bn(kernel, None, *_bn_stats_double(self.identity)))
            else:
                branches.append((kernel, kernel.new_zeros(self.out_channels)))
        kernel, bias = sum_branches(branches)
        return kernel.to(weight.dtype), bias.to(weight.dtype)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one conv, in place. Idempotent; the old parameters are gone."""
        if self.fused is not None:
            return
        kernel, bias = self.fused_kernel_and_bias()
        fused = self._make_fused_conv().to(device=kernel.device, dtype=kernel.dtype)
        fused.weight.copy_(kernel)
        fused.bias.copy_(bias)
        fused.train(self.training)
        self.fused = fused
        self.conv_kxk = self.conv_1x1 = self.identity = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        holds_fused = f"{prefix}fused.weight" in state_dict
        holds_train = any(k.startswith(f"{prefix}conv_kxk.") for k in state_dict)
        if self.fused is not None and holds_train and not holds_fused:
            raise FormMismatchError(
                f"block '{prefix.rstrip('.') or '<root>'}': the state_dict holds train-form (multi-branch) "
                "weights but the model is in fused form; load it into a model built with deploy=False, "
                "then call reparam.reparameterize_model()"
            )
        if self.fused is None and holds_fused and not holds_train:
            raise FormMismatchError(
                f"block '{prefix.rstrip('.') or '<root>'}': the state_dict holds fused weights but the "
                "model is in train form; build the model with deploy=True to load fused weights"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        form = "fused" if self.fused is not None else "train_form"
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, groups={self.groups}, form={form}"


def _check_block_args(in_ch: int, out_ch: int, k: int, stride: int, groups: int, dilation: int) -> None:
    if in_ch < 1 or out_ch < 1:
        raise ValueError(f"channels must be positive, got in={in_ch}, out={out_ch}")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be odd (1, 3, 5, ...) so branches can be centred, got {k}")
    if stride < 1 or dilation < 1 or groups < 1:
        raise ValueError(f"stride, dilation and groups must be >= 1, got {stride}, {dilation}, {groups}")
    if in_ch % groups or out_ch % groups:
        raise ValueError(
            f"groups={groups} must divide both in_channels={in_ch} and out_channels={out_ch}; "
            "choose a common divisor"
        )
