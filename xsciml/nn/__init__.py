"""Pure-torch coordinate networks (neural fields) for xsciml.

Nothing here imports xarray. A network maps ``features: Tensor[..., in_features]``
(coordinates normalised to [-1, 1]; space columns first, then time-derived columns)
and an optional conditioning code ``z`` to ``Tensor[..., out_features]``. Every
network has ``in_features``, ``out_features``, ``code_dim`` and ``config()``;
:func:`build_network` rebuilds it from that config.

Examples
--------
>>> import torch
>>> from xsciml.nn import build_network
>>> net = build_network("mfn", in_features=3, out_features=2, width=32, code_dim=8)
>>> net(torch.rand(100, 3) * 2 - 1, z=torch.zeros(8)).shape
torch.Size([100, 2])
"""

from .basis import BasisField
from .fields import MFN, NETWORK_KINDS, SIREN, FourierFeatureMLP, FourierNet, build_network
from .grid import MultiResGrid, default_grid_resolutions
from .layers import (
    ACTIVATIONS,
    MLP,
    CoordinateNetwork,
    FourierFeatures,
    SineLayer,
    get_activation,
)
from .unet import UNet

__all__ = [
    "ACTIVATIONS",
    "MFN",
    "BasisField",
    "MLP",
    "NETWORK_KINDS",
    "SIREN",
    "CoordinateNetwork",
    "FourierFeatureMLP",
    "FourierFeatures",
    "FourierNet",
    "MultiResGrid",
    "SineLayer",
    "UNet",
    "build_network",
    "default_grid_resolutions",
    "get_activation",
]
