"""A small, reusable 2-D U-Net.

The default configuration (``levels=4``, ``base_channels=16``, constant width,
batch norm, ReLU) is the ~38 k-parameter U-Net used by the scale-invariant physics
(SIP) heat-inversion experiments. An optional conditioning vector (``cond_dim > 0``,
e.g. a noise-level embedding for a diffusion prior) modulates every block with
FiLM: ``h <- h * (1 + scale(cond)) + shift(cond)``, zero-initialised so an untrained
conditioning path is the identity.

Pure torch: nothing here knows about xarray.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "ConvBlock"]

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "leaky_relu": nn.LeakyReLU}
_NORMS = ("batch", "group", "instance", None)
_PADDING = ("zeros", "circular", "reflect", "replicate")
_PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]


class _BlockOptions(TypedDict):
    """The keyword arguments every :class:`ConvBlock` of a :class:`UNet` shares."""

    norm: str | None
    activation: str
    padding_mode: str
    cond_dim: int
    groups: int


def _make_norm(kind: str | None, channels: int, groups: int) -> nn.Module:
    if kind is None:
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    # group norm: the largest divisor of `channels` not above `groups`
    g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
    return nn.GroupNorm(g, channels)


class ConvBlock(nn.Module):
    """Two ``3x3 conv -> norm -> activation`` layers, optionally FiLM-conditioned.

    Parameters
    ----------
    in_channels
        Input channels.
    out_channels
        Output channels.
    norm
        ``"batch"``, ``"group"``, ``"instance"`` or ``None``.
    activation
        ``"relu"``, ``"silu"``, ``"gelu"`` or ``"leaky_relu"``.
    padding_mode
        Padding of the convolutions; ``"circular"`` suits periodic domains.
    cond_dim
        Length of the conditioning vector (0: unconditioned).
    groups
        Upper bound on the number of groups for ``norm="group"``.

    Examples
    --------
    >>> block = ConvBlock(1, 8)
    >>> block(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        norm: str | None = "batch",
        activation: str = "relu",
        padding_mode: str = "zeros",
        cond_dim: int = 0,
        groups: int = 8,
    ) -> None:
        super().__init__()
        mode = cast(_PaddingMode, padding_mode)  # nn.Conv2d checks the value
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode=mode)
        self.norm1 = _make_norm(norm, out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, padding_mode=mode)
        self.norm2 = _make_norm(norm, out_channels, groups)
        self.act = _ACTIVATIONS[activation]()
        self.film: nn.Linear | None = None
        if cond_dim > 0:
            self.film = nn.Linear(cond_dim, 2 * out_channels)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm1(self.conv1(x))
        if self.film is not None:
            if cond is None:
                raise ValueError("this block is conditioned (cond_dim > 0): pass `cond`.")
            scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
            h = h * (1.0 + scale) + shift
        h = self.act(h)
        return self.act(self.norm2(self.conv2(h)))


class UNet(nn.Module):
    """A 2-D U-Net for fields of shape ``(batch, channels, height, width)``.

    ``levels`` resolutions: an input block, ``levels - 1`` max-pool + conv-block
    stages down, then ``levels - 1`` bilinear upsample + skip concatenation +
    conv-block stages up, and a ``1x1`` output convolution. Any spatial size works
    (odd sizes included): upsampled features are resized to their skip's shape.

    Parameters
    ----------
    in_channels
        Input channels.
    out_channels
        Output channels.
    base_channels
        Width of the first level.
    levels
        Number of resolutions (``>= 1``).
    channel_mult
        Width multiplier per level (length ``levels``); default all ones, i.e. a
        constant width of ``base_channels`` as in the SIP reference network.
    norm
        ``"batch"`` (default), ``"group"``, ``"instance"`` or ``None``.
    activation
        ``"relu"`` (default), ``"silu"``, ``"gelu"`` or ``"leaky_relu"``.
    padding_mode
        ``"zeros"`` (default) or ``"circular"`` for periodic domains, etc.
    cond_dim
        Length of an optional conditioning vector passed as ``forward(x, cond)``
        (e.g. a noise-level embedding); it FiLM-modulates every block. 0: none.
    groups
        Upper bound on the number of groups when ``norm="group"``.

    Examples
    --------
    >>> net = UNet(1, 1)
    >>> sum(p.numel() for p in net.parameters())
    37697
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
    >>> cnet = UNet(1, 1, base_channels=8, levels=3, cond_dim=4, norm="group")
    >>> cnet(torch.zeros(2, 1, 20, 20), torch.ones(2, 4)).shape
    torch.Size([2, 1, 20, 20])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        base_channels: int = 16,
        levels: int = 4,
        *,
        channel_mult: Sequence[int] | None = None,
        norm: str | None = "batch",
        activation: str = "relu",
        padding_mode: str = "zeros",
        cond_dim: int = 0,
        groups: int = 8,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_channels", base_channels),
            ("levels", levels),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {cond_dim!r}.")
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}."
            )
        if padding_mode not in _PADDING:
            raise ValueError(f"padding_mode must be one of {_PADDING}, got {padding_mode!r}.")
        mult = [1] * levels if channel_mult is None else [int(m) for m in channel_mult]
        if len(mult) != levels or min(mult) < 1:
            raise ValueError(
                f"channel_mult needs {levels} positive entries (one per level), got {channel_mult!r}."
            )
        widths = [base_channels * m for m in mult]
        self.config = dict(
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            levels=levels,
            channel_mult=mult,
            norm=norm,
            activation=activation,
            padding_mode=padding_mode,
            cond_dim=cond_dim,
            groups=groups,
        )
        self.cond_dim = cond_dim
        kw: _BlockOptions = dict(
            norm=norm,
            activation=activation,
            padding_mode=padding_mode,
            cond_dim=cond_dim,
            groups=groups,
        )
        self.inc = ConvBlock(in_channels, widths[0], **kw)
        self.down = nn.ModuleList(
            ConvBlock(widths[i - 1], widths[i], **kw) for i in range(1, levels)
        )
        self.up = nn.ModuleList(
            ConvBlock(widths[i + 1] + widths[i], widths[i], **kw)
            for i in reversed(range(levels - 1))
        )
        self.outc = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``x`` of shape ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``.

        ``cond`` (shape ``(B, cond_dim)``) is required when ``cond_dim > 0`` and
        must be omitted otherwise.
        """
        if x.ndim != 4:
            raise ValueError(
                f"UNet expects x of shape (batch, channels, H, W); got {tuple(x.shape)}."
            )
        min_size = 2 ** (len(self.down))
        if min(x.shape[-2:]) < min_size:
            raise ValueError(
                f"spatial size {tuple(x.shape[-2:])} is too small for {len(self.down) + 1} levels: "
                f"each side needs >= {min_size}; use fewer levels."
            )
        if self.cond_dim:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(
                    f"cond must have shape ({x.shape[0]}, {self.cond_dim}); got {got}."
                )
            cond = cond.to(x.dtype)
        elif cond is not None:
            raise ValueError("cond was given but the UNet was built with cond_dim=0.")
        h = self.inc(x, cond)
        skips = [h]
        for block in self.down:
            h = block(F.max_pool2d(h, 2), cond)
            skips.append(h)
        skips.pop()  # the bottleneck output is `h` itself
        for block in self.up:
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([skip, h], dim=1), cond)
        return self.outc(h)
