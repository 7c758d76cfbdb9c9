"""Shared parts of :mod:`xsciml.models.amortized`: the torch autoencoder modules, the
labeled encode/decode plumbing of the estimators (:class:`GridModel`) and area weights.

Private module: the public names live in :mod:`xsciml.models.amortized`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from .._grid import Grid, as_dataset
from .._utils import check_positive_int, to_numpy
from ..base import Estimator, output_attrs
from ..likelihoods import DiagonalGaussian
from ..parallel import is_dask_backed
from ..units import clip_to_physical_bounds

__all__ = [
    "MLPAutoEncoder",
    "ConvAutoEncoder",
    "AutoEncoderNet",
    "build_network",
    "posterior",
    "refuse_empty_snapshots",
    "GridModel",
    "area_weights",
    "stack_snapshots",
]

_LOG_STD_RANGE = (-9.0, 4.0)  # clamp of the stochastic encoder's log std

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
}


# =========================================================================== torch modules
def _activation(name: str) -> type[nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


class MLPAutoEncoder(nn.Module):
    """Fully connected encoder/decoder over the valid points of a grid (pure torch).

    The encoder sees the values at the ``points`` (flat indices into ``[C, *space]``)
    and their validity mask, concatenated; missing values must be zero-filled. The
    decoder maps a code back to every point; the rest of the grid is zero.

    Parameters
    ----------
    grid_shape
        ``(C, *space)`` of one snapshot.
    points
        Number of modelled points (their indices are the ``points`` buffer, set with
        :meth:`set_points`).
    latent_dim
        Size of the code.
    hidden
        Widths of the hidden layers of the encoder (the decoder mirrors them).
    stochastic
        The encoder outputs ``2 * latent_dim`` numbers (mean and log std).
    activation
        ``"silu"``, ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"elu"``.

    Examples
    --------
    >>> net = MLPAutoEncoder((1, 4, 5), points=20, latent_dim=3, hidden=(16,))
    >>> x, m = torch.zeros(2, 1, 4, 5), torch.ones(2, 1, 4, 5, dtype=torch.bool)
    >>> net.encode(x, m).shape, net.decode(torch.zeros(2, 3)).shape
    (torch.Size([2, 3]), torch.Size([2, 1, 4, 5]))
    """

    points: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, grid_shape: Sequence[int], points: int, latent_dim: int,
                 hidden: Sequence[int] = (256, 128), stochastic: bool = False,
                 activation: str = "silu") -> None:
        super().__init__()
        self.grid_shape = tuple(int(s) for s in grid_shape)
        n = check_positive_int(points, "points")
        k = check_positive_int(latent_dim, "latent_dim")
        hidden = [check_positive_int(h, "hidden width") for h in hidden]
        act = _activation(activation)
        self.config: dict[str, Any] = {"kind": "mlp", "grid_shape": list(self.grid_shape), "points": n,
                       "latent_dim": k, "hidden": hidden, "stochastic": bool(stochastic),
                       "activation": activation}
        self.register_buffer("points", torch.arange(n, dtype=torch.long))
        enc: list[nn.Module] = []
        width = 2 * n
        for h in hidden:
            enc += [nn.Linear(width, h), act()]
            width = h
        enc.append(nn.Linear(width, 2 * k if stochastic else k))
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = []
        width = k
        for h in reversed(hidden):
            dec += [nn.Linear(width, h), act()]
            width = h
        dec.append(nn.Linear(width, n))
        self.decoder = nn.Sequential(*dec)

    def set_points(self, points: torch.Tensor) -> None:
        """Set the flat indices (into ``[C, *space]``) of the modelled points."""
        points = torch.as_tensor(points, dtype=torch.long)
        if points.shape != self.points.shape:
            raise ValueError(f"expected {self.points.numel()} point indices, got {tuple(points.shape)}")
        self.points.copy_(points)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x, mask [B, C, *space]`` → code (or mean and log std) ``[B, k or 2k]``."""
        xf = x.flatten(1)[:, self.points]
        mf = mask.flatten(1)[:, self.points].to(x.dtype)
        return self.encoder(torch.cat([xf * mf, mf], dim=1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Code ``[B, k]`` → field ``[B, C, *space]`` (zero off the modelled points)."""
        out = self.decoder(z)
        full = out.new_zeros((out.shape[0], math.prod(self.grid_shape)))
        full[:, self.points] = out
        return full.reshape((out.shape[0],) + self.grid_shape)


class _Upsample(nn.Module):
    def __init__(self, c_in: int, c_out: int, size: tuple[int, int], act: type[nn.Module]) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.act = act()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(F.interpolate(h, size=self.size, mode="nearest")))


class ConvAutoEncoder(nn.Module):
    """Convolutional encoder/decoder for snapshots ``[C, H, W]`` (pure torch).

    Encoder: a 3×3 convolution of the zero-filled values and their mask (``2C``
    channels), then one stride-2 3×3 convolution per further width, flattened into a
    linear layer to the code. The decoder mirrors it with nearest upsampling to the
    encoder's exact sizes (odd sizes work) and 3×3 convolutions.

    Parameters
    ----------
    grid_shape
        ``(C, H, W)``.
    latent_dim
        Size of the code.
    widths
        Channels per resolution (``len(widths) - 1`` halvings).
    stochastic
        The encoder outputs ``2 * latent_dim`` numbers (mean and log std).
    activation
        ``"silu"``, ``"relu"``, ``"gelu"``, ``"tanh"`` or ``"elu"``.

    Examples
    --------
    >>> net = ConvAutoEncoder((1, 9, 7), latent_dim=4, widths=(4, 8))
    >>> x, m = torch.zeros(2, 1, 9, 7), torch.ones(2, 1, 9, 7, dtype=torch.bool)
    >>> net.encode(x, m).shape, net.decode(torch.zeros(2, 4)).shape
    (torch.Size([2, 4]), torch.Size([2, 1, 9, 7]))
    """

    def __init__(self, grid_shape: Sequence[int], latent_dim: int,
                 widths: Sequence[int] = (16, 32, 64), stochastic: bool = False,
                 activation: str = "silu") -> None:
        super().__init__()
        if len(grid_shape) != 3:
            raise ValueError(f"grid_shape must be (C, H, W), got {tuple(grid_shape)}")
        C, H, W = (check_positive_int(s, "grid size") for s in grid_shape)
        k = check_positive_int(latent_dim, "latent_dim")
        widths = [check_positive_int(w, "width") for w in widths]
        if not widths:
            raise ValueError("widths must hold at least one channel count")
        act = _activation(activation)
        self.grid_shape = (C, H, W)
        self.config: dict[str, Any] = {"kind": "conv", "grid_shape": [C, H, W], "latent_dim": k, "widths": widths,
                       "stochastic": bool(stochastic), "activation": activation}
        sizes = [(H, W)]
        layers: list[nn.Module] = [nn.Conv2d(2 * C, widths[0], 3, padding=1), act()]
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), act()]
            sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self._bottleneck = (widths[-1],) + sizes[-1]
        flat = math.prod(self._bottleneck)
        self.to_code = nn.Linear(flat, 2 * k if stochastic else k)
        self.from_code = nn.Sequential(nn.Linear(k, flat), act())
        self.up = nn.Sequential(*(_Upsample(widths[i], widths[i - 1], sizes[i - 1], act)
                                  for i in reversed(range(1, len(widths)))))
        self.out = nn.Conv2d(widths[0], C, 3, padding=1)

    def encode(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x, mask [B, C, H, W]`` → code (or mean and log std) ``[B, k or 2k]``."""
        m = mask.to(x.dtype)
        return self.to_code(self.encoder(torch.cat([x * m, m], dim=1)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Code ``[B, k]`` → field ``[B, C, H, W]``."""
        h = self.from_code(z).reshape((z.shape[0],) + self._bottleneck)
        return self.out(self.up(h))


#: The torch modules of an :class:`AutoEncoder`.
AutoEncoderNet = MLPAutoEncoder | ConvAutoEncoder


def build_network(config: Mapping[str, Any]) -> AutoEncoderNet:
    cfg = dict(config)
    kind = cfg.pop("kind")
    if kind == "mlp":
        return MLPAutoEncoder(**cfg)
    if kind == "conv":
        return ConvAutoEncoder(**cfg)
    raise ValueError(f"unknown autoencoder network kind {kind!r}")


def posterior(params: torch.Tensor) -> DiagonalGaussian:
    mu, raw = params.chunk(2, dim=-1)
    return DiagonalGaussian(mu, raw.clamp(*_LOG_STD_RANGE))


# =========================================================================== labeled helpers
def _call_kernel(model: Any, *arrays: np.ndarray, device: torch.device, method: str,
                 **kwargs: Any) -> Any:
    """Dask task body: ``model.<method>(*arrays, device=device, **kwargs)`` on NumPy blocks.

    Module-level so that tasks reference it by name; the model itself reaches each
    worker once through :func:`xsciml.parallel.apply_model`.
    """
    return getattr(model, method)(*arrays, device=device, **kwargs)


def refuse_empty_snapshots(observed: np.ndarray) -> None:
    """Refuse snapshots (rows of ``observed [snapshots, points]``) with no observed point."""
    empty = np.flatnonzero(~observed.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} snapshot(s) (e.g. at flat position(s) {empty[:5].tolist()} of the "
            "non-space dims) have no observed value on the model's grid points; an all-masked "
            "snapshot cannot be encoded: drop it first"
        )


def _check_space_chunks(das: Sequence[xr.DataArray], core: Sequence[str]) -> None:
    for da in das:
        if not is_dask_backed(da):
            continue
        split = [d for d in core if len(da.chunksizes[d]) > 1]
        if split:
            raise ValueError(
                f"{da.name!r} is chunked along the space dim(s) {split}; a snapshot is encoded whole, "
                f"so space must be one chunk: obj.chunk({ {d: -1 for d in core} })"
            )


def _latent_input(z: Any, latent_dim: int, sample_dim: Hashable) -> xr.DataArray:
    """``z`` (DataArray with a ``latent``/``mode`` dim, Dataset with ``z``, or array) as a
    DataArray whose last dim is ``latent``."""
    if isinstance(z, xr.Dataset):
        if "z" not in z.data_vars:
            raise KeyError(f"a Dataset of codes needs a variable 'z'; got {list(z.data_vars)}")
        z = z["z"]
    if isinstance(z, xr.DataArray):
        dim = "latent" if "latent" in z.dims else ("mode" if "mode" in z.dims else None)
        if dim is None:
            raise ValueError(f"z needs a 'latent' (or 'mode') dimension; its dims are {z.dims}")
        if dim == "mode":
            z = z.drop_vars("mode", errors="ignore").rename(mode="latent")
        z = z.transpose(..., "latent")
    else:
        arr = to_numpy(z)
        if arr.ndim == 1:
            z = xr.DataArray(arr, dims=("latent",))
        elif arr.ndim == 2:
            z = xr.DataArray(arr, dims=(sample_dim, "latent"))
        else:
            raise ValueError(f"an array z must be [latent] or [samples, latent], got shape {arr.shape}")
    if z.sizes["latent"] != latent_dim:
        raise ValueError(f"z has {z.sizes['latent']} latent values per sample, the model needs {latent_dim}")
    if is_dask_backed(z) and len(z.chunksizes["latent"]) > 1:
        z = z.chunk({"latent": -1})
    return z


class GridModel(Estimator):
    """Shared labeled plumbing of PCA and AutoEncoder (encode/decode through apply_ufunc)."""

    grid: Grid
    sample_dim: str
    latent_dim: int
    info: dict[str, Any]
    # defined by the subclasses, with their own keyword options
    encode: Callable[..., xr.DataArray | xr.Dataset]
    decode: Callable[..., xr.DataArray | xr.Dataset]

    @property
    def variables(self) -> list[str]:
        """Modelled variables (channels)."""
        return self.grid.variables

    def _inputs(self, obj: Any) -> list[xr.DataArray]:
        if isinstance(obj, xr.DataArray) and len(self.variables) == 1:
            obj = obj.to_dataset(name=self.variables[0])
        ds, _ = as_dataset(obj, self.variables)
        from ..units import check_dataset_units

        ds = check_dataset_units(ds, self.grid.var_attrs, self.variables)
        das = self.grid.check(ds)
        _check_space_chunks(das, self.grid.space_dims)
        return das

    def _encode_labeled(self, obj: Any, method: str, n_out: int, device: Any,
                        **kwargs: Any) -> list[xr.DataArray]:
        """Run ``self.<method>(*arrays [..., *space]) -> [..., latent]`` per chunk."""
        from ..parallel import apply_model

        das = self._inputs(obj)
        core = list(self.grid.space_dims)
        res = apply_model(
            _call_kernel, self, *das, input_core_dims=[core] * len(das),
            output_core_dims=[["latent"]] * n_out, output_dtypes=[np.float64] * n_out,
            output_sizes={"latent": self.latent_dim}, device=device,
            kwargs={"method": method, **kwargs},
        )
        return list(res) if isinstance(res, tuple) else [res]  # a tuple for n_out > 1

    def _decode_labeled(self, z: Any, method: str, device: Any, **kwargs: Any
                        ) -> xr.DataArray | xr.Dataset:
        """Run ``self.<method>(codes [..., latent]) -> [..., variable, *space]`` per chunk."""
        from ..parallel import apply_model

        za = _latent_input(z, self.latent_dim, self.sample_dim)
        g = self.grid
        out = apply_model(
            _call_kernel, self, za, input_core_dims=[["latent"]],
            output_core_dims=[["__variable__", *g.space_dims]], output_dtypes=[np.float64],
            output_sizes={"__variable__": len(g.variables),
                          **dict(zip(g.space_dims, g.shape, strict=True))},
            device=device, kwargs={"method": method, **kwargs},
        )
        assert isinstance(out, xr.DataArray)  # one output
        out = out.assign_coords(g.coords)
        attrs = self._provenance(f"decode: {', '.join(g.variables)} decoded from latent codes",
                                 self._source_attrs())
        das = {}
        for j, v in enumerate(g.variables):
            da = out.isel(__variable__=j, drop=True).rename(v)
            da.attrs = {**output_attrs(g.var_attrs.get(v), name=v), **attrs}
            das[v] = clip_to_physical_bounds(da, g.var_attrs.get(v, {}))  # a fraction stays in 0..1
        if len(das) == 1:
            return das[g.variables[0]]
        return xr.Dataset(das, attrs=attrs)

    def _source_attrs(self) -> dict[str, Any] | None:
        """Attrs of the first modelled variable with a ``history`` (for the output's)."""
        return next((a for v in self.grid.variables
                     if (a := self.grid.var_attrs.get(v, {})).get("history")), None)

    def _code_outputs(self, arrays: list[xr.DataArray], names: Sequence[str]
                      ) -> xr.DataArray | xr.Dataset:
        attrs = self._provenance("encode: latent codes of the snapshots", self._source_attrs())
        out = [a.rename(n).assign_attrs(attrs) for a, n in zip(arrays, names, strict=True)]
        if len(out) == 1:
            return out[0]
        return xr.Dataset({n: a for n, a in zip(names, out, strict=True)}, attrs=attrs)

    def reconstruct(self, obj: xr.Dataset | xr.DataArray, **kwargs: Any) -> xr.DataArray | xr.Dataset:
        """``decode(encode(obj, **kwargs))``: the snapshots seen through the latent space.

        For partial snapshots (NaN at unobserved points) this fills the gaps.

        Examples
        --------
        >>> import xsciml
        >>> from xsciml.models import fit_autoencoder
        >>> ds = xsciml.datasets.gaussian_random_field((8, 8), n=6, seed=0)
        >>> pca = fit_autoencoder(ds, "u", sample_dim="sample", latent_dim=5)
        >>> float(abs(pca.reconstruct(ds) - ds.u).max()) < 1e-8   # 5 modes of 6 centred snapshots
        True
        """
        z = self.encode(obj, **kwargs)
        return self.decode(z)

    @property
    def grid_coords(self) -> xr.Dataset:
        """The training grid: its coordinates and ``<var>_valid`` masks of modelled points.

        Use it to bring new data onto the grid: ``obj.reindex_like(model.grid_coords)``.
        """
        return self.grid.dataset(self._valid_mask())

    def _valid_mask(self) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def _provenance_extra(self) -> dict[str, Any]:
        extra = {"xsciml_network": self.info.get("network", ""), "xsciml_latent_dim": self.latent_dim}
        if "training_period" in self.info:
            extra["xsciml_training_period"] = self.info["training_period"]
        return extra


# =========================================================================== weights
def area_weights(weights: Any, grid: Grid, ds: xr.Dataset) -> np.ndarray | None:
    """Area weights ``w [n_points]`` (not yet normalised), or ``None``."""
    from ..coords import is_latitude

    if weights is None:
        return None
    template = xr.DataArray(np.zeros(grid.shape), dims=grid.space_dims, coords=grid.coords)
    if isinstance(weights, str):
        if weights.lower() != "coslat":
            raise ValueError(f"weights must be None, 'coslat' or a DataArray, got {weights!r}")
        lats = [n for n, c in grid.coords.items() if is_latitude(n, xr.DataArray(c))]
        if not lats:
            raise ValueError(
                "weights='coslat' needs a latitude coordinate (named lat/latitude or with "
                f"units degrees_north) on the space dims {grid.space_dims}; found coordinates "
                f"{list(grid.coords)}. Pass weights as a DataArray instead"
            )
        lat = xr.DataArray(grid.coords[lats[0]]).astype(np.float64)
        w = xr.where(abs(lat) >= 90.0, 0.0, np.cos(np.deg2rad(lat)))  # exact zeros at the poles
        w = w.broadcast_like(template).transpose(*grid.space_dims)
        return np.asarray(w.values, dtype=np.float64).ravel()
    if not isinstance(weights, xr.DataArray):
        raise TypeError(f"weights must be None, 'coslat' or a DataArray, got {type(weights).__name__}")
    extra = [d for d in weights.dims if d not in grid.space_dims]
    if extra:
        raise ValueError(
            f"weights have dims {weights.dims}; they must use only the space dims {grid.space_dims}"
        )
    try:
        template_a, w = xr.align(template, weights, join="exact")
    except ValueError as err:
        raise ValueError(f"weights are on a different grid than the data: {err}") from None
    arr = np.asarray(w.broadcast_like(template_a).transpose(*grid.space_dims).values, dtype=np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError("weights must be finite and non-negative")
    if not (arr > 0).any():
        raise ValueError("weights are all zero")
    return arr.ravel()


# =========================================================================== snapshots
def stack_snapshots(das: Sequence[xr.DataArray], sample_dim: str) -> Any:
    """``[S, C * n_points]`` float64 matrix (NumPy, or dask for dask-backed input)."""
    arrays = [da.transpose(sample_dim, ...).data for da in das]
    S = das[0].sizes[sample_dim]
    if any(is_dask_backed(da) for da in das):
        import dask.array as dsa

        mats = [dsa.asarray(a).astype(np.float64).reshape(S, -1) for a in arrays]
        return dsa.concatenate(mats, axis=1) if len(mats) > 1 else mats[0]
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(S, -1) for a in arrays], axis=1)
