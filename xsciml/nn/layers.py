"""Building blocks of coordinate networks.

Everything here is plain torch (no xarray). A *coordinate network* maps
``features: Tensor[..., in_features]`` (coordinates already normalised to [-1, 1],
space columns first, then time-derived columns) and, optionally, a conditioning code
``z: Tensor[..., code_dim]`` (or ``Tensor[code_dim]``, broadcast over points) to
``Tensor[..., out_features]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._utils import check_positive_int

__all__ = [
    "ACTIVATIONS",
    "CoordinateNetwork",
    "FourierFeatures",
    "MLP",
    "SineLayer",
    "get_activation",
]

#: Activation names accepted by ``activation=`` arguments.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}


def get_activation(name: str) -> nn.Module:
    """Return a fresh activation module from its name.

    Parameters
    ----------
    name
        One of :data:`ACTIVATIONS` (case-insensitive), e.g. ``"gelu"`` or ``"swish"``.

    Examples
    --------
    >>> get_activation("swish")
    SiLU()
    """
    if not isinstance(name, str):
        raise TypeError(
            f"activation must be a string naming one of {sorted(ACTIVATIONS)} "
            f"(networks are rebuilt from JSON configs), got {type(name).__name__}."
        )
    key = name.lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is unknown; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[key]()


def check_scale(scale: float | Sequence[float], n: int, name: str) -> float | list[float]:
    """Validate a positive scalar or a per-input sequence of length ``n``."""
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        if not scale > 0:
            raise ValueError(f"{name} must be positive, got {scale}.")
        return float(scale)
    try:
        values = [float(s) for s in scale]  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(f"{name} must be a float or a sequence of floats, got {scale!r}.") from None
    if len(values) != n:
        raise ValueError(
            f"{name} has {len(values)} entries but the network has {n} input features; "
            "give one value per input column or a single float."
        )
    if not all(v > 0 for v in values):
        raise ValueError(f"{name} entries must all be positive, got {values}.")
    return values


def scale_vector(scale: float | list[float], n: int) -> Tensor:
    """A checked scale (see :func:`check_scale`) as a length-``n`` float tensor."""
    if isinstance(scale, float):
        return torch.full((n,), scale)
    return torch.tensor(scale, dtype=torch.float32)


class CoordinateNetwork(nn.Module):
    """Base class of the coordinate networks in :mod:`xsciml.nn`.

    Subclasses set :attr:`kind`, fill ``self._config`` with their JSON-serialisable
    constructor arguments and implement ``forward(features, z=None)``.
    :meth:`config` returns ``{"kind": ..., **kwargs}`` so that
    :func:`xsciml.nn.build_network` can rebuild an identical (untrained) network,
    into which a saved ``state_dict`` is then loaded.

    Attributes
    ----------
    in_features
        Number of input columns.
    out_features
        Number of output channels.
    code_dim
        Size of the conditioning code (0: none).
    """

    kind: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int, code_dim: int = 0) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.code_dim = check_positive_int(code_dim, "code_dim", minimum=0)
        self._config: dict[str, Any] = {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "code_dim": self.code_dim,
        }

    def config(self) -> dict[str, Any]:
        """JSON-serialisable ``{"kind": ..., **constructor kwargs}``.

        Examples
        --------
        >>> from xsciml.nn import MLP, build_network
        >>> net = MLP(2, 1, width=16, depth=2)
        >>> build_network(net.config()).config() == net.config()
        True
        """
        return {"kind": self.kind, **copy.deepcopy(self._config)}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, code_dim={self.code_dim}"

    def _check_inputs(self, features: Tensor, z: Tensor | None) -> None:
        """Raise a clear error for a wrong feature width or a missing/unexpected code."""
        if not isinstance(features, Tensor):
            raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}.")
        if features.ndim < 1 or features.shape[-1] != self.in_features:
            raise ValueError(
                f"features must have shape [..., {self.in_features}] (in_features), "
                f"got {tuple(features.shape)}."
            )
        if self.code_dim == 0:
            if z is not None:
                raise ValueError(
                    "a conditioning code z was given but this network was built with "
                    "code_dim=0; pass z=None or rebuild it with code_dim=z.shape[-1]."
                )
            return
        if z is None:
            raise ValueError(
                f"this network was built with code_dim={self.code_dim}; pass a code "
                f"z of shape [{self.code_dim}] or [..., {self.code_dim}]."
            )
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}.")
        if z.shape[-1] != self.code_dim:
            raise ValueError(
                f"z must have shape [..., {self.code_dim}] (code_dim), got {tuple(z.shape)}."
            )
        lead = tuple(features.shape[:-1])
        try:
            ok = torch.broadcast_shapes(tuple(z.shape[:-1]), lead) == lead
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"code z of shape {tuple(z.shape)} cannot be broadcast against features of "
                f"shape {tuple(features.shape)}; give z as [code_dim] (one code for all "
                "points) or with leading dimensions that broadcast to the features'."
            )

    @staticmethod
    def _broadcast_code(z: Tensor, features: Tensor) -> Tensor:
        """Expand a (checked) code ``z`` to ``features.shape[:-1] + (code_dim,)``."""
        return z.expand(*features.shape[:-1], z.shape[-1])


class FourierFeatures(nn.Module):
    """Random Fourier features ``[x, sin(2πBx), cos(2πBx)]`` (Tancik et al. 2020).

    ``B`` has shape ``[n_frequencies, in_features]`` with ``B[:, j] ~ N(0, scale_j²)``,
    drawn from a generator seeded with ``seed`` so that the same arguments always give
    the same ``B``. ``B`` is a buffer (or a parameter when ``learnable``) and is part
    of the ``state_dict``.

    Parameters
    ----------
    in_features
        Number of input columns.
    n_frequencies
        Number of random frequencies (output has ``2 * n_frequencies`` sinusoids).
    scale
        Standard deviation of ``B``: a float, or one value per input column
        (e.g. small for time columns, large for space columns).
    learnable
        Make ``B`` a trainable parameter.
    seed
        Seed of the generator that draws ``B``.
    include_input
        Prepend the raw inputs to the features.

    Examples
    --------
    >>> ff = FourierFeatures(2, 8, scale=[4.0, 1.0], seed=0)
    >>> ff(torch.zeros(5, 2)).shape
    torch.Size([5, 18])
    >>> torch.equal(ff.B, FourierFeatures(2, 8, scale=[4.0, 1.0], seed=0).B)
    True
    """

    def __init__(
        self,
        in_features: int,
        n_frequencies: int,
        scale: float | Sequence[float] = 10.0,
        learnable: bool = False,
        seed: int = 0,
        include_input: bool = True,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, "in_features")
        self.n_frequencies = check_positive_int(n_frequencies, "n_frequencies")
        scale = check_scale(scale, self.in_features, "scale")
        generator = torch.Generator().manual_seed(int(seed))
        B = torch.randn(self.n_frequencies, self.in_features, generator=generator)
        B = B * scale_vector(scale, self.in_features)
        if learnable:
            self.B = nn.Parameter(B)
        else:
            self.register_buffer("B", B)
        self.include_input = bool(include_input)
        self.out_features = 2 * self.n_frequencies + (self.in_features if include_input else 0)

    def forward(self, x: Tensor) -> Tensor:
        proj = (2.0 * math.pi) * (x @ self.B.T.to(x.dtype))
        parts = [x] if self.include_input else []
        return torch.cat([*parts, torch.sin(proj), torch.cos(proj)], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, n_frequencies={self.n_frequencies}, "
            f"learnable={isinstance(self.B, nn.Parameter)}"
        )


class SineLayer(nn.Module):
    """``sin(w0 · (W x + b [+ shift]))`` with the SIREN initialisation (Sitzmann et al. 2020).

    Weights are drawn from ``U(-1/n, 1/n)`` for the first layer and from
    ``U(-sqrt(6/n)/w0, sqrt(6/n)/w0)`` otherwise (``n`` = fan-in), which keeps the
    pre-activations of deep sine networks distributed as arcsine/normal at initialisation.

    Parameters
    ----------
    in_features
        Input size of the linear map.
    out_features
        Output size of the linear map.
    w0
        Frequency multiplier of the sine.
    is_first
        Use the first-layer initialisation.

    Examples
    --------
    >>> layer = SineLayer(2, 16, w0=30.0, is_first=True)
    >>> y = layer(torch.rand(4, 2), shift=torch.zeros(16))
    >>> bool(y.abs().max() <= 1.0)
    True
    """

    def __init__(
        self, in_features: int, out_features: int, w0: float = 30.0, is_first: bool = False
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.w0 = float(w0)
        bound = 1.0 / in_features if is_first else math.sqrt(6.0 / in_features) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(
        self, x: Tensor, shift: Tensor | None = None, scale: Tensor | None = None
    ) -> Tensor:
        pre = self.linear(x)
        if scale is not None:
            pre = pre * (1.0 + scale)
        if shift is not None:
            pre = pre + shift
        return torch.sin(self.w0 * pre)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


class MLP(CoordinateNetwork):
    """Fully connected network; a code ``z`` is concatenated to the inputs.

    Parameters
    ----------
    in_features
        Input columns.
    out_features
        Output channels.
    width
        Hidden width.
    depth
        Number of hidden layers (``depth=0`` is a linear map).
    activation
        Activation name, see :data:`ACTIVATIONS`.
    code_dim
        Size of the conditioning code (0: unconditioned).

    Examples
    --------
    >>> net = MLP(3, 2, width=32, depth=2, code_dim=4)
    >>> net(torch.rand(10, 3), z=torch.zeros(4)).shape
    torch.Size([10, 2])
    """

    kind = "mlp"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int = 256,
        depth: int = 4,
        activation: str = "gelu",
        code_dim: int = 0,
    ) -> None:
        super().__init__(in_features, out_features, code_dim)
        width = check_positive_int(width, "width")
        depth = check_positive_int(depth, "depth", minimum=0)
        get_activation(activation)  # validate early
        layers: list[nn.Module] = []
        n_in = self.in_features + self.code_dim
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), get_activation(activation)]
            n_in = width
        layers.append(nn.Linear(n_in, self.out_features))
        self.net = nn.Sequential(*layers)
        self._config.update(width=width, depth=depth, activation=activation)

    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        self._check_inputs(features, z)
        if z is not None:
            features = torch.cat(
                [features, self._broadcast_code(z, features).to(features.dtype)], dim=-1
            )
        return self.net(features)
