"""Coordinate networks (neural fields) ``y = f_θ(x, t [, z])`` and :func:`build_network`.

Networks
--------
``"mlp"``
    :class:`~xsciml.nn.layers.MLP` — plain MLP, code by concatenation.
``"fourier"``
    :class:`FourierFeatureMLP` — random Fourier features then an MLP (Tancik et al. 2020).
``"siren"``
    :class:`SIREN` — sine network (Sitzmann et al. 2020), code by shift modulation
    (Dupont et al. 2022, "functa").
``"mfn"`` / ``"fouriernet"``
    :class:`FourierNet` — multiplicative filter network (Fathony et al. 2021), code by
    shift modulation of the hidden biases (the DINo decoder, Yin et al. 2023).
``"grid"``
    :class:`~xsciml.nn.grid.MultiResGrid` — multi-resolution feature grids
    (Müller et al. 2022) with FiLM time modulation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._utils import check_positive_int
from .grid import MultiResGrid
from .layers import (
    MLP,
    CoordinateNetwork,
    FourierFeatures,
    SineLayer,
    check_scale,
    scale_vector,
)

__all__ = ["NETWORK_KINDS", "FourierFeatureMLP", "FourierNet", "MFN", "SIREN", "build_network"]


class FourierFeatureMLP(CoordinateNetwork):
    """Random Fourier features ``[x, sin(2πBx), cos(2πBx)]`` followed by an MLP.

    ``B ~ N(0, scale²)`` is drawn from a generator seeded with ``seed``, so a network
    rebuilt from :meth:`config` has the same ``B``; ``B`` is also in the ``state_dict``.

    Parameters
    ----------
    in_features
        Input columns.
    out_features
        Output channels.
    n_frequencies
        Number of random frequencies.
    scale
        Standard deviation of ``B`` in cycles per unit of normalised coordinate; a float
        or one value per input column (e.g. ``[10, 10, 1]`` for smooth time variation).
    learnable
        Train ``B`` too.
    width
        Width of the MLP head (see :class:`~xsciml.nn.layers.MLP`).
    depth
        Depth of the MLP head.
    activation
        Activation of the MLP head.
    code_dim
        Size of the conditioning code, concatenated to the Fourier features.
    seed
        Seed for ``B``.

    Examples
    --------
    >>> net = FourierFeatureMLP(2, 1, n_frequencies=16, scale=[5.0, 2.0], width=32, depth=2)
    >>> net(torch.rand(7, 2)).shape
    torch.Size([7, 1])
    """

    kind = "fourier"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_frequencies: int = 256,
        scale: float | Sequence[float] = 10.0,
        learnable: bool = False,
        width: int = 256,
        depth: int = 4,
        activation: str = "gelu",
        code_dim: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(in_features, out_features, code_dim)
        scale = check_scale(scale, self.in_features, "scale")
        self.encoding = FourierFeatures(
            self.in_features, n_frequencies, scale=scale, learnable=learnable, seed=seed
        )
        self.mlp = MLP(
            self.encoding.out_features,
            self.out_features,
            width=width,
            depth=depth,
            activation=activation,
            code_dim=self.code_dim,
        )
        self._config.update(
            n_frequencies=self.encoding.n_frequencies,
            scale=scale,
            learnable=bool(learnable),
            width=self.mlp._config["width"],
            depth=self.mlp._config["depth"],
            activation=activation,
            seed=int(seed),
        )

    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_inputs(features, z)
        return self.mlp(self.encoding(features), z)


class SIREN(CoordinateNetwork):
    """Sine representation network (Sitzmann et al. 2020) with optional code modulation.

    ``h_1 = sin(w0_initial (W_1 x + b_1 + s_1))``,
    ``h_k = sin(w0 (W_k h_{k-1} + b_k + s_k))``, output ``W_o h_depth + b_o``, where the
    shifts ``s = A z`` (one linear map for all layers) are present when ``code_dim > 0``
    ("functa" shift modulation, Dupont et al. 2022). ``modulation="film"`` also scales
    the pre-activations by ``1 + A' z``.

    Parameters
    ----------
    in_features
        Input columns.
    out_features
        Output channels.
    width
        Hidden width.
    depth
        Number of sine layers.
    w0
        Frequency multiplier of the hidden sine layers.
    w0_initial
        Frequency multiplier of the first sine layer.
    code_dim
        Size of the conditioning code (0: none).
    modulation
        ``"shift"`` or ``"film"`` (scale and shift); only used when ``code_dim > 0``.

    Notes
    -----
    The modulation map is initialised like a hidden SIREN layer
    (``U(±sqrt(6/code_dim)/w0)``) so that codes of order one move the pre-activations
    by about as much as a hidden layer does.

    Examples
    --------
    >>> net = SIREN(2, 3, width=32, depth=3, code_dim=8)
    >>> net(torch.rand(5, 2), z=torch.randn(5, 8)).shape
    torch.Size([5, 3])
    """

    kind = "siren"
    _MODULATIONS = ("shift", "film")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 256,
        depth: int = 4,
        w0: float = 30.0,
        w0_initial: float = 30.0,
        code_dim: int = 0,
        modulation: str = "shift",
    ) -> None:
        super().__init__(in_features, out_features, code_dim)
        width = check_positive_int(width, "width")
        depth = check_positive_int(depth, "depth")
        if modulation not in self._MODULATIONS:
            raise ValueError(
                f"modulation={modulation!r} is unknown; choose one of {self._MODULATIONS}."
            )
        if not (w0 > 0 and w0_initial > 0):
            raise ValueError(f"w0 and w0_initial must be positive, got {w0} and {w0_initial}.")
        self.width, self.depth = width, depth
        self.layers = nn.ModuleList(
            [SineLayer(self.in_features, width, w0=w0_initial, is_first=True)]
            + [SineLayer(width, width, w0=w0) for _ in range(depth - 1)]
        )
        self.head = nn.Linear(width, self.out_features)
        bound = math.sqrt(6.0 / width) / w0
        with torch.no_grad():
            self.head.weight.uniform_(-bound, bound)
        self.modulation = modulation
        if self.code_dim:
            n_mod = depth * width * (2 if modulation == "film" else 1)
            self.modulator = nn.Linear(self.code_dim, n_mod, bias=False)
            mod_bound = math.sqrt(6.0 / self.code_dim) / w0
            with torch.no_grad():
                self.modulator.weight.uniform_(-mod_bound, mod_bound)
        self._config.update(
            width=width,
            depth=depth,
            w0=float(w0),
            w0_initial=float(w0_initial),
            modulation=modulation,
        )

    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_inputs(features, z)
        shifts: list[Tensor | None] = [None] * self.depth
        scales: list[Tensor | None] = [None] * self.depth
        if z is not None:
            mods = self.modulator(z.to(features.dtype))
            if self.modulation == "film":
                scale_part, mods = mods.split(self.depth * self.width, dim=-1)
                scales = list(scale_part.split(self.width, dim=-1))
            shifts = list(mods.split(self.width, dim=-1))
        h = features
        for layer, shift, scale in zip(self.layers, shifts, scales, strict=True):
            h = layer(h, shift=shift, scale=scale)
        return self.head(h)


class FourierNet(CoordinateNetwork):
    """Multiplicative filter network, FourierNet variant (Fathony et al. 2021).

    With filters ``g_i(x) = sin(ω_i x + φ_i)``::

        z_1 = g_1(x)
        z_{i+1} = (W_i z_i + b_i + W'_i code) ⊙ g_{i+1}(x),   i = 1 … depth
        out = W_o z_{depth+1} + b_o

    The output is a linear combination of sinusoids whose frequencies are sums of the
    filter frequencies. Each filter's ``ω_i ~ U(-γ, γ)`` with
    ``γ = input_scale / sqrt(depth + 1)`` per input column, so the spread of the summed
    frequencies is set by ``input_scale`` whatever the depth. ``φ_i ~ U(-π, π)``.
    With ``code_dim > 0`` the hidden biases are shifted by ``W'_i code``: this is the
    DINo decoder ``h_φ(α) = {W; b + W'α; ω}`` (Yin et al. 2023); several state
    channels are decoded together through ``out_features``.

    Parameters
    ----------
    in_features
        Input columns.
    out_features
        Output channels.
    width
        Number of filters / hidden units.
    depth
        Number of multiplicative layers (there are ``depth + 1`` filters).
    input_scale
        Total frequency scale in radians per unit of normalised coordinate: a float or
        one value per input column. On [-1, 1], ``input_scale / π`` is roughly the
        number of oscillations the network represents easily.
    weight_scale
        Hidden weights are drawn from ``U(±sqrt(weight_scale / width))``.
    code_dim
        Size of the conditioning code (0: none).

    Examples
    --------
    >>> net = FourierNet(2, 2, width=32, depth=3, input_scale=16.0, code_dim=10)
    >>> net(torch.rand(6, 2), z=torch.zeros(10)).shape
    torch.Size([6, 2])
    """

    kind = "mfn"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 256,
        depth: int = 3,
        input_scale: float | Sequence[float] = 64.0,
        weight_scale: float = 1.0,
        code_dim: int = 0,
    ) -> None:
        super().__init__(in_features, out_features, code_dim)
        width = check_positive_int(width, "width")
        depth = check_positive_int(depth, "depth")
        input_scale = check_scale(input_scale, self.in_features, "input_scale")
        if not weight_scale > 0:
            raise ValueError(f"weight_scale must be positive, got {weight_scale}.")
        self.width, self.depth = width, depth
        gamma = scale_vector(input_scale, self.in_features) / math.sqrt(depth + 1)
        filters = [nn.Linear(self.in_features, width) for _ in range(depth + 1)]
        self.filters = nn.ModuleList(filters)
        linears = [nn.Linear(width, width) for _ in range(depth)]
        self.linears = nn.ModuleList(linears)
        self.head = nn.Linear(width, self.out_features)
        bound = math.sqrt(weight_scale / width)
        with torch.no_grad():
            for f in filters:
                f.weight.uniform_(-1.0, 1.0).mul_(gamma)
                f.bias.uniform_(-math.pi, math.pi)
            for lin in linears:
                lin.weight.uniform_(-bound, bound)
        if self.code_dim:
            # one map for all layers: W' = [W'_1; ...; W'_depth]
            self.shift = nn.Linear(self.code_dim, depth * width, bias=False)
        self._config.update(
            width=width,
            depth=depth,
            input_scale=input_scale,
            weight_scale=float(weight_scale),
        )

    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_inputs(features, z)
        shifts: Sequence[Tensor | None] = [None] * self.depth
        if z is not None:
            shifts = self.shift(z.to(features.dtype)).split(self.width, dim=-1)
        h = torch.sin(self.filters[0](features))
        for lin, filt, shift in zip(self.linears, self.filters[1:], shifts, strict=True):
            pre = lin(h)
            if shift is not None:
                pre = pre + shift
            h = pre * torch.sin(filt(features))
        return self.head(h)


#: Alias: multiplicative filter network.
MFN = FourierNet

_KIND_CLASSES: dict[str, type[CoordinateNetwork]] = {
    "mlp": MLP,
    "fourier": FourierFeatureMLP,
    "siren": SIREN,
    "mfn": FourierNet,
    "grid": MultiResGrid,
}
_ALIASES = {"fouriernet": "mfn", "multiresgrid": "grid"}

#: Network kinds understood by :func:`build_network` (aliases included).
NETWORK_KINDS: tuple[str, ...] = tuple(_KIND_CLASSES) + tuple(_ALIASES)


def build_network(
    kind: str | Mapping[str, Any] | nn.Module,
    in_features: int | None = None,
    out_features: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a coordinate network from a kind name or a :meth:`config` dict.

    Parameters
    ----------
    kind
        ``"mlp"``, ``"fourier"``, ``"siren"``, ``"mfn"`` (alias ``"fouriernet"``) or
        ``"grid"`` (alias ``"multiresgrid"``); or a dict with a ``"kind"`` key and
        constructor arguments (as returned by ``network.config()``); or a
        :class:`torch.nn.Module`, returned unchanged.
    in_features
        Input columns; overrides the value in a config dict.
    out_features
        Output channels; overrides the value in a config dict.
    **kwargs
        Further constructor arguments; override the values in a config dict.

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> net = build_network("siren", in_features=2, out_features=1, width=16, depth=2)
    >>> clone = build_network(net.config())
    >>> _ = clone.load_state_dict(net.state_dict())
    >>> x = torch.rand(4, 2)
    >>> torch.equal(net(x), clone(x))
    True
    """
    if isinstance(kind, nn.Module):
        return kind
    if isinstance(kind, Mapping):
        params = dict(kind)
        if "kind" not in params:
            raise KeyError(
                "a network config dict needs a 'kind' key (one of "
                f"{list(NETWORK_KINDS)}); got keys {sorted(params)}."
            )
        kind = params.pop("kind")
    elif isinstance(kind, str):
        params = {}
    else:
        raise TypeError(
            "kind must be a network name, a config dict or a torch.nn.Module, "
            f"got {type(kind).__name__}."
        )
    if not isinstance(kind, str):
        raise TypeError(f"the network kind must be a string, got {kind!r}.")
    key = _ALIASES.get(kind.lower(), kind.lower())
    if key not in _KIND_CLASSES:
        raise ValueError(f"unknown network kind {kind!r}; choose one of {list(NETWORK_KINDS)}.")
    if in_features is not None:
        params["in_features"] = in_features
    if out_features is not None:
        params["out_features"] = out_features
    params.update(kwargs)
    for name in ("in_features", "out_features"):
        if name not in params:
            raise ValueError(f"build_network({kind!r}) needs {name}=...")
    return _KIND_CLASSES[key](**params)
