r"""Amortized latent models of gridded snapshots: PCA (EOFs) and autoencoders.

Every snapshot :math:`y_s` (a time step, an ensemble member...) of one or more
variables on a fixed grid gets a latent vector :math:`z_s = T_E(y_s)` from an *encoder*
and is rebuilt by a *decoder*, :math:`\hat y_s = T_D(z_s)`. :func:`fit_autoencoder`
(``ds.sciml.fit_autoencoder``) fits

* ``network="pca"`` — the linear pair: empirical orthogonal functions (EOFs) from the
  SVD of the (weighted, centred) data matrix; exact SVD in memory, a randomized
  :func:`dask.array.linalg.svd_compressed` for dask-backed data (never a dense load).
  :meth:`PCA.encode` of a *partial* snapshot (NaN at unobserved points) is the
  Gaussian posterior mean of its coefficients given the observed points — a
  Bayesian-ridge / MAP fit batched over all snapshots at once;
* ``network="mlp"`` / ``"conv"`` — neural encoder and decoder trained on
  :math:`\lVert y - T_D(T_E(y))\rVert^2 / 2\sigma^2` over the valid points through
  :func:`xsciml.training.fit`; with ``stochastic=True`` a Gaussian encoder
  :math:`q(z \mid y)` and the VAE objective (reconstruction NLL + KL to
  :math:`\mathcal N(0, I)`).

Both estimators share the labeled interface: ``encode(obj) -> z (…, latent)``,
``decode(z) -> field on the training grid``, ``reconstruct(obj)``, ``save`` /
:func:`xsciml.load`. ``encode`` and ``decode`` keep dask laziness: they run per chunk
of the non-space dimensions (space must be a single chunk — a snapshot is encoded
whole).

The torch modules (:class:`MLPAutoEncoder`, :class:`ConvAutoEncoder`) know nothing of
xarray.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from .._grid import Grid, as_dataset, sample_info, variable_from_state, variable_state
from .._utils import check_numeric, seed_everything, to_numpy
from ..base import Estimator, output_attrs, register_estimator
from ..eofs import out_of_sample_noise
from ..likelihoods import DiagonalGaussian
from ..parallel import is_dask_backed
from ..tensors import decode_variable
from ..training import History, TrainState, parse_time_limit
from ._snapshot_validation import (
    MAX_SNAPSHOTS,
    MIN_SNAPSHOTS,
    SnapshotValidation,
    rank_cap,
    reference_entries,
    validation_lines,
    warn_if_worse,
)

log = logging.getLogger(__name__)

__all__ = [
    "PCA",
    "AutoEncoder",
    "fit_autoencoder",
    "MLPAutoEncoder",
    "ConvAutoEncoder",
    "AUTOENCODER_KINDS",
]

#: Values accepted by ``fit_autoencoder(network=...)``.
AUTOENCODER_KINDS: tuple[str, ...] = ("pca", "mlp", "conv")

_LOG_STD_RANGE = (-9.0, 4.0)  # clamp of the stochastic encoder's log std
_MAX_BLOCK = 2**24  # elements of the [c, k, P] intermediate of the batched MAP solve

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


def _check_positive_int(value: Any, name: str) -> int:
    from .._utils import check_positive_int

    return check_positive_int(value, name)


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
        n = _check_positive_int(points, "points")
        k = _check_positive_int(latent_dim, "latent_dim")
        hidden = [_check_positive_int(h, "hidden width") for h in hidden]
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
        C, H, W = (_check_positive_int(s, "grid size") for s in grid_shape)
        k = _check_positive_int(latent_dim, "latent_dim")
        widths = [_check_positive_int(w, "width") for w in widths]
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
_AutoEncoderNet = MLPAutoEncoder | ConvAutoEncoder


def _build_network(config: Mapping[str, Any]) -> _AutoEncoderNet:
    cfg = dict(config)
    kind = cfg.pop("kind")
    if kind == "mlp":
        return MLPAutoEncoder(**cfg)
    if kind == "conv":
        return ConvAutoEncoder(**cfg)
    raise ValueError(f"unknown autoencoder network kind {kind!r}")


def _posterior(params: torch.Tensor) -> DiagonalGaussian:
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


def _refuse_empty_snapshots(observed: np.ndarray) -> None:
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


class _GridModel(Estimator):
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
            das[v] = da
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
def _area_weights(weights: Any, grid: Grid, ds: xr.Dataset) -> np.ndarray | None:
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


# =========================================================================== PCA
def _flip_signs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic signs: the largest-magnitude entry of each component is positive."""
    idx = np.abs(v).argmax(axis=1)
    signs = np.sign(v[np.arange(v.shape[0]), idx])
    signs[signs == 0] = 1.0
    return u * signs, v * signs[:, None]


@register_estimator
class PCA(_GridModel):
    r"""Principal component analysis (EOFs) of gridded snapshots.

    Built by :func:`fit_autoencoder` with ``network="pca"``. Conventions, for snapshots
    :math:`y_s` (the variables of one sample, flattened over the grid points valid in
    *every* training snapshot):

    * data matrix :math:`X_{sp} = \sqrt{w_p}\,(y_{sp} - \bar y_p) / c_v`, with
      :math:`\bar y_p` the mean over snapshots (``center=True``, else 0), :math:`w_p`
      the area weights normalised to mean 1 over those points (1 without weights;
      ``"coslat"``: :math:`\cos\varphi`), and :math:`c_v` the std of variable
      :math:`v`'s anomalies when several variables are modelled (1 for one variable);
    * :math:`X = U S V^\top`; the **EOFs** (:attr:`components`) are the rows of
      :math:`V^\top`, orthonormal in this weighted space; the **principal components**
      are :math:`U S` (:attr:`principal_components`); :attr:`explained_variance`
      :math:`\lambda_k = s_k^2 / (S - 1)` (``/ S`` when not centred);
    * :meth:`encode` of a full snapshot is the projection :math:`z = V^\top x`;
      :meth:`decode` is :math:`y = \bar y + c_v\,z^\top E` with the regression
      patterns :math:`E = \mathrm{diag}(s)^{-1} U^\top \tilde X` of the unweighted
      anomalies :math:`\tilde X = X / \sqrt w` (:math:`E = V^\top / \sqrt w` where
      :math:`w > 0`; zero-weight points, e.g. the poles with ``"coslat"``, are rebuilt
      by regression on the principal components);
    * grid points missing in *any* training snapshot are left out of the basis: NaN in
      the EOFs and in decoded fields.

    Attributes
    ----------
    noise_var : float
        Default :math:`\sigma^2` of the partial-snapshot :meth:`encode`.
    total_variance : float
        Total variance of the weighted data matrix (:math:`\sum_p` of the variances).
    history
        ``None`` (no iterative training).

    Examples
    --------
    >>> import xsciml
    >>> ds = xsciml.datasets.gaussian_random_field((16, 16), n=40, seed=0)
    >>> pca = fit_autoencoder(ds, "u", sample_dim="sample", latent_dim=8)
    >>> pca.components.sizes["mode"], pca.explained_variance.dims
    (8, ('mode',))
    >>> z = pca.encode(ds)          # complete snapshots: the principal components
    >>> bool(abs(z - pca.principal_components.values).max() < 1e-8)
    True
    """

    def __init__(self, grid: Grid, sample_dim: str, *, basis: np.ndarray, mean: np.ndarray,
                 scales: np.ndarray, sqrt_weights: np.ndarray, components: np.ndarray,
                 patterns: np.ndarray, explained_variance: np.ndarray, total_variance: float,
                 noise_var: float, principal_components: np.ndarray,
                 sample_coord: xr.Variable | None, center: bool, weights: str,
                 info: dict[str, Any] | None = None) -> None:
        self.grid = grid
        self.sample_dim = str(sample_dim)
        self.basis = np.asarray(basis, dtype=np.int64)
        self._mean = np.asarray(mean, dtype=np.float64)
        self.scales = np.asarray(scales, dtype=np.float64)
        self.sqrt_weights = np.asarray(sqrt_weights, dtype=np.float64)
        self._components = np.asarray(components, dtype=np.float64)
        self._patterns = np.asarray(patterns, dtype=np.float64)
        self._lambda = np.asarray(explained_variance, dtype=np.float64)
        self.total_variance = float(total_variance)
        self.noise_var = float(noise_var)
        self._pcs = np.asarray(principal_components, dtype=np.float64)
        self._sample_coord = sample_coord
        self.center = bool(center)
        self.weights = str(weights)
        self.latent_dim = int(self._components.shape[0])
        self.info = dict(info or {})
        self.info.setdefault("network", "pca")
        self.history = History()  # the training loop's (empty for PCA and after loading)

    # ------------------------------------------------------------------ persistence
    def _get_config(self) -> dict[str, Any]:
        gcfg, _ = self.grid.to_state()
        cfg: dict[str, Any] = {"grid": gcfg, "sample_dim": self.sample_dim,
                               "latent_dim": self.latent_dim, "center": self.center,
                               "weights": self.weights, "total_variance": self.total_variance,
                               "noise_var": self.noise_var, "info": self.info, "sample_coord": None}
        if self._sample_coord is not None:
            state = variable_state(self._sample_coord, "sample_coord")
            cfg["sample_coord"] = None if state is None else state[0]
        return cfg

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        _, tensors = self.grid.to_state()
        arrays = {"basis": self.basis, "mean": self._mean, "scales": self.scales,
                  "sqrt_weights": self.sqrt_weights, "components": self._components,
                  "patterns": self._patterns, "explained_variance": self._lambda,
                  "principal_components": self._pcs}
        tensors.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
        if self._sample_coord is not None:
            state = variable_state(self._sample_coord, "sample_coord")
            if state is not None:
                tensors.update(state[1])
        return tensors

    @classmethod
    def _from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PCA:
        t = {k: v.cpu().numpy() for k, v in tensors.items() if not k.startswith("grid.")}
        sc = config.get("sample_coord")
        sample_coord = variable_from_state(sc, tensors, "sample_coord") if sc else None
        return cls(Grid.from_state(config["grid"], tensors), config["sample_dim"],
                   basis=t["basis"], mean=t["mean"], scales=t["scales"],
                   sqrt_weights=t["sqrt_weights"], components=t["components"],
                   patterns=t["patterns"], explained_variance=t["explained_variance"],
                   total_variance=config["total_variance"], noise_var=config["noise_var"],
                   principal_components=t["principal_components"], sample_coord=sample_coord,
                   center=config["center"], weights=config["weights"], info=config.get("info"))

    # ------------------------------------------------------------------ results
    def _col_scales(self) -> np.ndarray:
        return self.scales[self.basis // self.grid.n_points]

    def _valid_mask(self) -> np.ndarray:
        m = np.zeros(self.grid.n_features, dtype=bool)
        m[self.basis] = True
        return m.reshape((len(self.variables),) + self.grid.shape)

    def _on_grid(self, values: np.ndarray, lead_dims: tuple[str, ...], lead_coords: dict,
                 name: str, attrs: dict[str, Any]) -> xr.DataArray | xr.Dataset:
        """``values [..., n_basis]`` scattered onto the grid (NaN off the basis)."""
        g = self.grid
        full = np.full(values.shape[:-1] + (g.n_features,), np.nan)
        full[..., self.basis] = values
        full = full.reshape(values.shape[:-1] + (len(g.variables),) + g.shape)
        das = {}
        for j, v in enumerate(g.variables):
            das[v] = xr.DataArray(np.take(full, j, axis=-len(g.shape) - 1),
                                  dims=lead_dims + g.space_dims, coords={**g.coords, **lead_coords},
                                  name=name if len(g.variables) == 1 else v, attrs=attrs)
        return das[g.variables[0]] if len(das) == 1 else xr.Dataset(das, attrs=attrs)

    @property
    def components(self) -> xr.DataArray | xr.Dataset:
        """EOFs ``(mode, *space)``: orthonormal rows of :math:`V^\\top` in the weighted,
        scaled space (NaN off the modelled points); a Dataset for several variables."""
        return self._on_grid(self._components, ("mode",), {"mode": np.arange(self.latent_dim)},
                             "components", {"long_name": "EOF (weighted, orthonormal)",
                                            **self._provenance()})

    @property
    def mean(self) -> xr.DataArray | xr.Dataset:
        """The mean field subtracted before the SVD (zero when ``center=False``)."""
        vals = self._mean
        attrs = {**self.grid.var_attrs.get(self.variables[0], {}), **self._provenance()}
        return self._on_grid(vals, (), {}, self.variables[0], attrs)

    @property
    def explained_variance(self) -> xr.DataArray:
        """Variance :math:`\\lambda_k` of each principal component, ``(mode,)``."""
        return xr.DataArray(self._lambda.copy(), dims=("mode",), name="explained_variance",
                            coords={"mode": np.arange(self.latent_dim)})

    @property
    def explained_variance_ratio(self) -> xr.DataArray:
        """:math:`\\lambda_k` over the total variance of the (weighted) data, ``(mode,)``."""
        return (self.explained_variance / self.total_variance).rename("explained_variance_ratio")

    @property
    def principal_components(self) -> xr.DataArray:
        """Principal components :math:`US` of the training snapshots, ``(sample_dim, mode)``."""
        coords: dict[str, Any] = {"mode": np.arange(self.latent_dim)}
        if self._sample_coord is not None:
            coords[self.sample_dim] = self._sample_coord
        return xr.DataArray(self._pcs.copy(), dims=(self.sample_dim, "mode"), coords=coords,
                            name="principal_components", attrs=self._provenance())

    # ------------------------------------------------------------------ encode / decode
    def _encode_array(self, *arrays: np.ndarray, device: torch.device, noise_var: float,
                      return_std: bool) -> Any:
        """Codes of NumPy snapshots ``[..., *space]`` (one per variable) -> ``[..., latent]``."""
        return self._encode_kernel(noise_var, return_std, device)(*arrays)

    def _encode_kernel(self, noise_var: float, return_std: bool, device: torch.device
                       ) -> Callable[..., Any]:
        nsp = len(self.grid.space_dims)

        def kernel(*arrays: np.ndarray):
            y = np.stack([np.asarray(a, dtype=np.float64) for a in arrays], axis=-nsp - 1)
            lead = y.shape[:-nsp - 1]
            y = y.reshape(-1, self.grid.n_features)[:, self.basis]
            z, s = self._map_codes(y, noise_var, return_std, device)
            z = z.reshape(lead + (self.latent_dim,))
            if return_std:
                assert s is not None  # _map_codes returns the std when asked for it
                return z, s.reshape(lead + (self.latent_dim,))
            return z

        return kernel

    def _map_codes(self, y: np.ndarray, noise_var: float, return_std: bool,
                   device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
        """Posterior mean (and std) of the codes of snapshots ``y [N, n_basis]``."""
        n, k = y.shape[0], self.latent_dim
        z = np.zeros((n, k))
        std = np.zeros((n, k)) if return_std else None
        if n == 0:
            return z, std
        obs = np.isfinite(y)
        informative = obs & (self.sqrt_weights > 0)
        _refuse_empty_snapshots(informative)
        x = np.where(obs, (y - self._mean) / self._col_scales() * self.sqrt_weights, 0.0)
        V = self._components
        z[:] = x @ V.T  # the projection; exact for complete snapshots
        partial = np.flatnonzero(~obs.all(axis=1))
        if partial.size == 0:
            return z, std
        dt = torch.float64
        VT = torch.as_tensor(V.T, dtype=dt, device=device)  # [P, k]
        lam = torch.as_tensor(self._lambda, dtype=dt, device=device)
        D = lam - noise_var
        spd = bool((D > 0).all())  # then σ² I + A D = (A + σ² D⁻¹) D: a Cholesky solve
        eye = torch.eye(k, dtype=dt, device=device)
        sub = obs[partial]
        nobs = sub.sum(axis=1)
        order = np.argsort(~sub, axis=1, kind="stable")  # observed columns first
        chunk = max(1, _MAX_BLOCK // max(1, k * int(nobs.max())))
        for a in range(0, partial.size, chunk):
            rows = partial[a:a + chunk]
            n_max = int(nobs[a:a + chunk].max())
            cols = order[a:a + chunk, :n_max]
            keep = torch.as_tensor(np.arange(n_max) < nobs[a:a + chunk, None], dtype=dt, device=device)
            Vg = VT[torch.as_tensor(cols, device=device)] * keep.unsqueeze(-1)  # V_O^T, [c, n, k]
            xg = torch.as_tensor(np.take_along_axis(x[rows], cols, axis=1), dtype=dt, device=device)
            b = Vg.transpose(1, 2) @ xg.unsqueeze(-1)  # V_O x_O, [c, k, 1]
            A = Vg.transpose(1, 2) @ Vg  # V_O V_O^T, [c, k, k]
            if spd:
                chol = torch.linalg.cholesky(A + torch.diag_embed((noise_var / D).expand(len(rows), k)))
                zc = lam / D * torch.cholesky_solve(b, chol)[..., 0]
                if return_std:
                    g = torch.diagonal(torch.cholesky_solve(A * lam, chol), dim1=-2, dim2=-1) / D
            else:
                rhs = torch.cat([b, A * lam], dim=-1) if return_std else b
                sol = torch.linalg.solve(noise_var * eye + A * D, rhs)
                zc = lam * sol[..., 0]
                if return_std:
                    g = torch.diagonal(sol[..., 1:], dim1=-2, dim2=-1)
            z[rows] = zc.cpu().numpy()
            if return_std:
                assert std is not None  # allocated above for return_std
                std[rows] = (lam - lam * g).clamp_min(0).sqrt().cpu().numpy()
        return z, std

    def encode(self, obj: xr.Dataset | xr.DataArray, *, noise_var: float | None = None,
               return_std: bool = False, device: Any = "cpu") -> xr.DataArray | xr.Dataset:
        r"""Codes of snapshots: the projection, or the MAP fit for partial snapshots.

        Model: :math:`x = V z + r`, prior :math:`z_k \sim \mathcal N(0, \lambda_k)`,
        residual :math:`r` outside the retained modes with variance :math:`\sigma^2`
        per direction (probabilistic PCA). For a snapshot observed on a subset
        :math:`O` of the grid (NaN elsewhere) the code is the posterior mean

        .. math::

            \hat z = \Lambda\,(\sigma^2 I + A D)^{-1} V_O^\top x_O,\qquad
            A = V_O^\top V_O,\; D = \Lambda - \sigma^2 I,

        a Bayesian-ridge fit to the observed points. A complete snapshot gives
        :math:`A = I` and :math:`\hat z = V^\top x`, the plain projection. All
        snapshots are solved together (batched ``torch.linalg.solve``), no loop over
        snapshots; dask-backed input stays lazy (one task per chunk of snapshots).

        Parameters
        ----------
        obj
            Snapshots on the training grid, with any other dims (``time``,
            ``member``...); NaN where unobserved. Space dims must be one chunk.
        noise_var
            :math:`\sigma^2`, in the units of the weighted data matrix (for one variable
            without weights: the variable's units squared). Default: the training
            estimate, the discarded variance per discarded direction,
            :math:`\sum_{j>k}\lambda_j / (P - k)` (:attr:`noise_var`). Larger values
            shrink the codes of sparsely observed snapshots more towards 0.
        return_std
            Also return the posterior standard deviation of the codes (0 for
            complete snapshots).
        device
            Where the batched solves run.

        Returns
        -------
        DataArray ``z (..., latent)``; with ``return_std`` a Dataset with ``z`` and
        ``z_std``.

        Raises
        ------
        ValueError
            For a snapshot with no observed point of the grid, or snapshots on
            another grid.

        Examples
        --------
        >>> import numpy as np, xsciml
        >>> ds = xsciml.datasets.gaussian_random_field((8, 8), n=20, seed=0)
        >>> pca = fit_autoencoder(ds, "u", sample_dim="sample", latent_dim=4)
        >>> part = ds.u.where(np.random.default_rng(0).random(ds.u.shape) < 0.5)
        >>> pca.encode(part).dims
        ('sample', 'latent')
        """
        sigma2 = self.noise_var if noise_var is None else float(noise_var)
        if not (math.isfinite(sigma2) and sigma2 > 0):
            raise ValueError(f"noise_var must be a positive number, got {noise_var!r}")
        out = self._encode_labeled(obj, "_encode_array", 2 if return_std else 1, device,
                                   noise_var=sigma2, return_std=bool(return_std))
        return self._code_outputs(out, ["z", "z_std"][: len(out)])

    def decode(self, z: Any) -> xr.DataArray | xr.Dataset:
        """Fields from codes: :math:`\\bar y + c_v\\,z^\\top E` on the training grid.

        Parameters
        ----------
        z
            DataArray with a ``latent`` (or ``mode``) dim — e.g. the output of
            :meth:`encode` or :attr:`principal_components` — any other dims are kept;
            a Dataset with ``z``; or an array ``[latent]`` / ``[samples, latent]``.

        Returns
        -------
        DataArray ``(..., *space)`` (a Dataset for several variables), NaN at points
        not modelled (missing in some training snapshot). Lazy for dask-backed ``z``.

        Examples
        --------
        >>> import xsciml
        >>> ds = xsciml.datasets.gaussian_random_field((8, 8), n=10, seed=0)
        >>> pca = fit_autoencoder(ds, "u", sample_dim="sample", latent_dim=3)
        >>> pca.decode(pca.principal_components).dims
        ('sample', 'y', 'x')
        """
        return self._decode_labeled(z, "_decode_array", "cpu")

    def _decode_array(self, zz: np.ndarray, device: torch.device) -> np.ndarray:  # noqa: ARG002
        """Fields ``[..., variable, *space]`` from NumPy codes ``[..., latent]``."""
        E, mean, cs = self._patterns, self._mean, self._col_scales()
        g = self.grid
        zz = np.asarray(zz, dtype=np.float64)
        lead = zz.shape[:-1]
        vals = mean + (zz.reshape(-1, self.latent_dim) @ E) * cs
        full = np.full((vals.shape[0], g.n_features), np.nan)
        full[:, self.basis] = vals
        return full.reshape(lead + (len(g.variables),) + g.shape)

    def summary(self) -> str:
        """The fit and how it filled held-out snapshots, next to PCA-MAP at its validated rank.

        Examples
        --------
        >>> print(pca.summary())  # doctest: +SKIP
        PCA(variables=['t2m'], ...)
        validation (32 held-out snapshots, 1617 points)     10%      2%
          model                                        0.1580  0.2940
          reference: PCA-MAP (rank 256)          0.1750  0.2990
        latent_dim: 256 (chosen by validation)
        """
        return "\n".join([repr(self), *validation_lines(self.info.get("validation"), self.latent_dim)])

    def __repr__(self) -> str:
        ratio = float(self._lambda.sum() / self.total_variance) if self.total_variance else float("nan")
        return (f"PCA(variables={self.variables}, sample_dim={self.sample_dim!r}, "
                f"latent_dim={self.latent_dim}, weights={self.weights!r}, "
                f"explained={ratio:.3f}, points={self.basis.size})")


def _stack_snapshots(das: Sequence[xr.DataArray], sample_dim: str) -> Any:
    """``[S, C * n_points]`` float64 matrix (NumPy, or dask for dask-backed input)."""
    arrays = [da.transpose(sample_dim, ...).data for da in das]
    S = das[0].sizes[sample_dim]
    if any(is_dask_backed(da) for da in das):
        import dask.array as dsa

        mats = [dsa.asarray(a).astype(np.float64).reshape(S, -1) for a in arrays]
        return dsa.concatenate(mats, axis=1) if len(mats) > 1 else mats[0]
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(S, -1) for a in arrays], axis=1)


def _fit_pca_validated(ds: xr.Dataset, variables: list[str], sample_dim: str, latent_dim: int | None,
                       val_fraction: float, seed: int | None, fit_pca: Callable[..., PCA]) -> PCA:
    """PCA with its rank chosen (when ``latent_dim`` is None) and scored on held-out snapshots."""
    S = int(ds.sizes[sample_dim])
    lazy = any(ds[v].chunks is not None for v in variables)
    n_val = min(max(1, int(round(val_fraction * S))), MAX_SNAPSHOTS) if val_fraction > 0 else 0
    status = None
    if lazy:
        status = "skipped: dask-backed snapshots"
    elif val_fraction <= 0:
        status = "off (val_fraction=0)"
    elif S < MIN_SNAPSHOTS:
        status = f"skipped: {S} snapshots along {sample_dim!r}, validation needs at least {MIN_SNAPSHOTS}"
    elif latent_dim is not None and latent_dim > S - n_val - 1:
        status = (f"skipped: latent_dim={latent_dim} needs more than the {S - n_val} snapshots the "
                  "validation split leaves")
    if status is None:
        fit_part = ds.isel({sample_dim: slice(0, S - n_val)})
        check = SnapshotValidation(fit_part, ds.isel({sample_dim: slice(S - n_val, S)}), variables,
                                   sample_dim, seed=seed or 0)
        if not check.usable:
            status = f"skipped: only {check.n_points} points have a value in every snapshot (validation needs 10)"
    if status is not None:
        k = latent_dim if latent_dim is not None else max(1, min(16, S - 1))
        model = fit_pca(ds, k)
        model.info["validation"] = {"status": status}
        return model
    selection = check.select(rank_cap(S - n_val, check.n_points_total))
    k = latent_dim if latent_dim is not None else selection.rank
    how = selection.noise if latent_dim is None else "cv"
    trial = fit_pca(fit_part, k, how)
    val: dict[str, Any] = {"n_snapshots": n_val, "n_points": check.n_points, "fractions": list(check.fractions),
                           "nrmse": check.score(lambda partial: trial.decode(trial.encode(partial))),
                           "latent_dim_chosen": latent_dim is None, **reference_entries(selection)}
    model = fit_pca(ds, k, how)
    model.info["validation"] = val
    warn_if_worse(val, "fit_autoencoder(network='pca')", stacklevel=4)
    return model


def _fit_pca(ds: xr.Dataset, grid: Grid, sample_dim: str, latent_dim: int, weights: Any,
             center: bool, noise_var: float | None, svd: str, n_power_iter: int,
             n_oversamples: int, seed: int | None, noise: str = "cv") -> PCA:
    das = [decode_variable(ds[v]).transpose(sample_dim, *grid.space_dims) for v in grid.variables]
    for v, da in zip(grid.variables, das, strict=True):
        check_numeric(da, f"variable {v!r}")
    Y = _stack_snapshots(das, sample_dim)
    S = Y.shape[0]
    C, P = len(grid.variables), grid.n_points
    lazy = not isinstance(Y, np.ndarray)
    if svd not in ("auto", "full", "randomized"):
        raise ValueError(f"svd must be 'auto', 'full' or 'randomized', got {svd!r}")
    randomized = svd == "randomized" or (svd == "auto" and lazy)
    if not randomized and lazy:
        Y = Y.compute()  # svd="full" on dask input: the user asked for a dense load
        lazy = False

    # one pass for the statistics: valid columns, empty snapshots, infinities, moments
    finite = np.isfinite(Y)
    stats = (finite.all(axis=0), finite.any(axis=1), np.isinf(Y).any(),
             Y.mean(axis=0), (Y * Y).mean(axis=0))
    if lazy:
        import dask

        stats = dask.compute(*stats)
    valid, nonempty, has_inf, m1, m2 = (np.asarray(s) for s in stats)
    if has_inf:
        raise ValueError("the data contain infinite values; replace them with NaN first")
    if not nonempty.all():
        bad = np.flatnonzero(~nonempty)
        labels = ds[sample_dim].values[bad[:5]] if sample_dim in ds.coords else bad[:5]
        raise ValueError(
            f"{bad.size} snapshot(s) along {sample_dim!r} are all-masked (e.g. {list(labels)}); "
            "drop them before fitting, e.g. ds.dropna(sample_dim, how='all')"
        )
    basis = np.flatnonzero(valid)
    if basis.size == 0:
        raise ValueError(
            "no grid point has a value in every snapshot; PCA uses the points observed in all "
            "training snapshots. Drop the gappiest snapshots or fill the gaps first"
        )
    max_k = min(S - int(center), basis.size)
    if latent_dim > max_k:
        raise ValueError(
            f"latent_dim={latent_dim} is larger than the number of modes the data can give: "
            f"{S} snapshots along {sample_dim!r}{' (S - 1 after centering)' if center else ''} and "
            f"{basis.size} complete grid points allow at most {max_k}; lower latent_dim"
        )
    mean = m1[basis] if center else np.zeros(basis.size)
    second = m2[basis] - (m1[basis] ** 2 if center else 0.0)  # per-point variance / 2nd moment
    var_of = basis // P
    if C > 1:
        scales = np.array([math.sqrt(max(second[var_of == j].mean(), 0.0)) if (var_of == j).any()
                           else 1.0 for j in range(C)])
        scales[~(scales > 0)] = 1.0
    else:
        scales = np.ones(1)
    w = _area_weights(weights, grid, ds)
    if w is None:
        sqrt_w = np.ones(basis.size)
    else:
        wb = np.tile(w, C)[basis]
        if not (wb > 0).any():
            raise ValueError("the weights are zero at every complete grid point")
        sqrt_w = np.sqrt(wb / wb.mean())
    cs = scales[var_of]

    if lazy or randomized:
        import dask
        import dask.array as dsa

        Yd = Y if lazy else dsa.from_array(Y, chunks=(max(1, S // 4), -1))
        Xr = (Yd[:, basis] - mean) / cs  # unweighted anomalies
        X = Xr * sqrt_w
        u, s, vt = dsa.linalg.svd_compressed(X, latent_dim, n_power_iter=n_power_iter,
                                             n_oversamples=n_oversamples, seed=seed)
        total = (X * X).sum()
        u, s, vt, total = dask.compute(u, s, vt, total)
        u, vt = _flip_signs(np.asarray(u), np.asarray(vt))
        ok = s > s.max() * 1e-12
        coef = (u[:, ok] / s[ok]).T
        # one more pass over the data for the regression patterns (an in-memory product
        # when the input was in memory)
        patterns_ok = (np.asarray(dsa.dot(dsa.from_array(coef), Xr).compute()) if lazy
                       else coef @ np.asarray(Xr))
        method = "svd_compressed"
    else:
        Xr = (Y[:, basis] - mean) / cs
        X = Xr * sqrt_w
        Ut, st, Vt = torch.linalg.svd(torch.from_numpy(X), full_matrices=False)
        u, s, vt = Ut[:, :latent_dim].numpy(), st[:latent_dim].numpy(), Vt[:latent_dim].numpy()
        total = float((X * X).sum())
        u, vt = _flip_signs(u, vt)
        ok = s > s.max() * 1e-12
        patterns_ok = (u[:, ok] / s[ok]).T @ Xr
        method = "svd"
    # regression patterns E: V^T / sqrt(w) where w > 0, regression at zero weight; a mode
    # with zero singular value (exactly rank-deficient data) falls back to V^T / sqrt(w)
    patterns = np.where(sqrt_w > 0, vt / np.where(sqrt_w > 0, sqrt_w, 1.0), 0.0)
    patterns[ok] = patterns_ok
    ddof = 1 if center else 0
    lam = s**2 / (S - ddof)
    total_var = float(total) / (S - ddof)
    if not total_var > 0:
        raise ValueError("the snapshots have zero variance at every complete grid point; nothing to model")
    # the noise variance (``noise`` names the method of estimating it)
    noise_level: float
    if noise_var is None and not lazy and S >= 4 and noise == "cv":
        noise_level = max(out_of_sample_noise(np.asarray(X), latent_dim), 1e-10 * total_var / basis.size)
        noise_how = "out-of-sample"
    elif noise_var is None:
        rest = max(total_var - float(lam.sum()), 0.0)
        noise_level = rest / max(basis.size - latent_dim, 1)
        noise_level = max(noise_level, 1e-10 * total_var / basis.size)
        noise_how = "discarded variance"
    else:
        noise_level = float(noise_var)
        if not (math.isfinite(noise_level) and noise_level > 0):
            raise ValueError(f"noise_var must be a positive number, got {noise_var!r}")
        noise_how = "given"
    sample_coord, info = sample_info(ds, sample_dim)
    info.update(network="pca", svd=method, n_points=int(basis.size), noise=noise_how)
    wname = "none" if weights is None else ("coslat" if isinstance(weights, str) else "custom")
    log.info("fit_autoencoder[pca]: %d snapshots x %d grid points, %d modes by %s (weights %s, "
             "center %s): %.3g of the variance explained, noise variance %.3g", S,
             int(basis.size), latent_dim, method, wname, center, float(lam.sum()) / total_var, noise_level)
    return PCA(grid, sample_dim, basis=basis, mean=mean, scales=scales, sqrt_weights=sqrt_w,
               components=vt, patterns=patterns, explained_variance=lam,
               total_variance=total_var, noise_var=noise_level, principal_components=u * s,
               sample_coord=sample_coord, center=center, weights=wname, info=info)


# =========================================================================== autoencoders
@register_estimator
class AutoEncoder(_GridModel):
    r"""A fitted neural autoencoder (MLP or convolutional, optionally stochastic).

    Built by :func:`fit_autoencoder` with ``network="mlp"`` or ``"conv"``. Snapshots are
    standardised, :math:`x = (y - \bar y) / c_v` (:math:`\bar y` the per-point mean over
    training snapshots with ``center=True``, else the per-variable mean; :math:`c_v`
    the std of variable :math:`v`'s anomalies), missing points are zero-filled and
    flagged by a mask channel, and the network maps :math:`x \mapsto z \mapsto \hat x`.
    Points without a value in any training snapshot (land) are NaN in decoded fields.

    Attributes
    ----------
    network : MLPAutoEncoder or ConvAutoEncoder
        The torch module (CPU).
    noise_std : xarray.DataArray
        Noise std :math:`\sigma` per variable in physical units: its maximum-likelihood
        value, the RMS reconstruction residual of the training snapshots.
    stochastic : bool
        Whether the encoder is the Gaussian :math:`q(z \mid y)`.
    history : xsciml.training.History or None
        Training history (``None`` after loading).
    """

    def __init__(self, network: _AutoEncoderNet, grid: Grid, sample_dim: str, *, mean: np.ndarray,
                 scales: np.ndarray, valid: np.ndarray, log_sigma: np.ndarray,
                 center: bool, weights: str, info: dict[str, Any] | None = None) -> None:
        self.network = network
        self.grid = grid
        self.sample_dim = str(sample_dim)
        self._mean = np.asarray(mean, dtype=np.float32)
        self.scales = np.asarray(scales, dtype=np.float32)
        self._valid = np.asarray(valid, dtype=bool)
        self.log_sigma = np.asarray(log_sigma, dtype=np.float32)
        self.center = bool(center)
        self.weights = str(weights)
        self.kind = network.config["kind"]
        self.stochastic = bool(network.config["stochastic"])
        self.latent_dim = int(network.config["latent_dim"])
        self.info = dict(info or {})
        self.info.setdefault("network", self.kind)
        self.history = History()  # the training loop's (empty for PCA and after loading)

    # ------------------------------------------------------------------ persistence
    def _get_config(self) -> dict[str, Any]:
        gcfg, _ = self.grid.to_state()
        return {"network": dict(self.network.config), "grid": gcfg, "sample_dim": self.sample_dim,
                "latent_dim": self.latent_dim, "stochastic": self.stochastic,
                "center": self.center, "weights": self.weights, "info": self.info}

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        _, tensors = self.grid.to_state()
        tensors.update({f"network.{k}": v for k, v in self.network.state_dict().items()})
        tensors.update(mean=torch.from_numpy(self._mean), scales=torch.from_numpy(self.scales),
                       valid=torch.from_numpy(self._valid), log_sigma=torch.from_numpy(self.log_sigma))
        return tensors

    @classmethod
    def _from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> AutoEncoder:
        net = _build_network(config["network"])
        net.load_state_dict({k[len("network."):]: v.cpu() for k, v in tensors.items()
                             if k.startswith("network.")})
        return cls(net, Grid.from_state(config["grid"], tensors), config["sample_dim"],
                   mean=tensors["mean"].cpu().numpy(), scales=tensors["scales"].cpu().numpy(),
                   valid=tensors["valid"].cpu().numpy(), log_sigma=tensors["log_sigma"].cpu().numpy(),
                   center=config["center"], weights=config["weights"], info=config.get("info"))

    def _valid_mask(self) -> np.ndarray:
        return self._valid.copy()

    def _network_on(self, device: torch.device) -> _AutoEncoderNet:
        """The network in eval mode on ``device``: a copy off the CPU, so that concurrent
        dask tasks never move the shared module."""
        net = self.network if device.type == "cpu" else copy.deepcopy(self.network).to(device)
        return net.eval()

    @property
    def noise_std(self) -> xr.DataArray:
        """Noise std :math:`\\sigma` of each variable (RMS training residual), physical units."""
        return xr.DataArray(np.exp(self.log_sigma.astype(np.float64)) * self.scales,
                            dims=("variable",), coords={"variable": self.variables}, name="noise_std")

    # ------------------------------------------------------------------ encode / decode
    def _standardise(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shape = (len(self.variables),) + self.grid.shape
        sc = self.scales.reshape((-1,) + (1,) * len(self.grid.shape))
        obs = np.isfinite(y) & self._valid
        x = np.where(obs, (y - self._mean.reshape(shape)) / sc, 0.0).astype(np.float32)
        return x, obs

    def encode(self, obj: xr.Dataset | xr.DataArray, *, batch_size: int = 256,
               device: Any = "auto") -> xr.DataArray | xr.Dataset:
        """Codes of snapshots, from whatever points of the grid they have.

        Parameters
        ----------
        obj
            Snapshots on the training grid, any other dims kept; NaN where unobserved
            (the mask channel tells the encoder; train with ``input_dropout > 0`` for
            sparse snapshots). Space dims must be one chunk; dask input stays lazy.
        batch_size
            Snapshots per forward pass.
        device
            Where the network runs.

        Returns
        -------
        DataArray ``z (..., latent)``; for a stochastic encoder a Dataset with the
        posterior mean ``z`` and standard deviation ``z_std`` of :math:`q(z \\mid y)`.

        Examples
        --------
        >>> import xsciml
        >>> ds = xsciml.datasets.gaussian_random_field((8, 8), n=16, seed=0)
        >>> ae = fit_autoencoder(ds, "u", sample_dim="sample", network="mlp", latent_dim=3,
        ...                      steps=5, progress=False)
        >>> ae.encode(ds).sizes["latent"]
        3
        """
        batch_size = _check_positive_int(batch_size, "batch_size")
        out = self._encode_labeled(obj, "_encode_array", 2 if self.stochastic else 1, device,
                                   batch_size=batch_size)
        return self._code_outputs(out, ["z", "z_std"][: len(out)])

    def _encode_array(self, *arrays: np.ndarray, device: torch.device, batch_size: int) -> Any:
        """Codes ``[..., latent]`` (and stds) of NumPy snapshots ``[..., *space]``."""
        nsp = len(self.grid.space_dims)
        k = self.latent_dim
        y = np.stack([np.asarray(a, dtype=np.float64) for a in arrays], axis=-nsp - 1)
        lead = y.shape[:-nsp - 1]
        y = y.reshape((-1, len(self.variables)) + self.grid.shape)
        x, obs = self._standardise(y)
        _refuse_empty_snapshots(obs.reshape(len(y), -1))
        mu: np.ndarray = np.zeros((len(y), k))
        sd = np.zeros((len(y), k))
        net = self._network_on(device)
        with torch.inference_mode():
            for a in range(0, len(y), batch_size):
                xb = torch.from_numpy(x[a:a + batch_size]).to(device)
                mb = torch.from_numpy(obs[a:a + batch_size]).to(device)
                params = net.encode(xb, mb)
                if self.stochastic:
                    q = _posterior(params)
                    mu[a:a + batch_size] = q.mu.double().cpu().numpy()
                    sd[a:a + batch_size] = q.std.double().cpu().numpy()
                else:
                    mu[a:a + batch_size] = params.double().cpu().numpy()
        mu = mu.reshape(lead + (k,))
        return (mu, sd.reshape(lead + (k,))) if self.stochastic else mu

    def decode(self, z: Any, *, batch_size: int = 256, device: Any = "auto"
               ) -> xr.DataArray | xr.Dataset:
        """Fields from codes, on the training grid (NaN at never-observed points).

        Parameters
        ----------
        z
            DataArray with a ``latent`` dim (other dims kept), a Dataset with ``z`` (the
            posterior mean is decoded), or an array ``[latent]`` / ``[samples, latent]``.
        batch_size
            Codes per forward pass.
        device
            Where the network runs.

        Returns
        -------
        DataArray ``(..., *space)``, a Dataset for several variables; lazy for dask ``z``.

        Examples
        --------
        >>> import numpy as np, xsciml
        >>> ds = xsciml.datasets.gaussian_random_field((8, 8), n=16, seed=0)
        >>> ae = fit_autoencoder(ds, "u", sample_dim="sample", network="mlp", latent_dim=2,
        ...                      steps=5, progress=False)
        >>> ae.decode(np.zeros((3, 2))).dims
        ('sample', 'y', 'x')
        """
        batch_size = _check_positive_int(batch_size, "batch_size")
        return self._decode_labeled(z, "_decode_array", device, batch_size=batch_size)

    def _decode_array(self, zz: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
        """Fields ``[..., variable, *space]`` from NumPy codes ``[..., latent]``."""
        shape = (len(self.variables),) + self.grid.shape
        sc = self.scales.astype(np.float64).reshape((-1,) + (1,) * len(self.grid.shape))
        zz = np.asarray(zz, dtype=np.float32)
        lead = zz.shape[:-1]
        zz = zz.reshape(-1, self.latent_dim)
        out = np.zeros((len(zz),) + shape)
        net = self._network_on(device)
        with torch.inference_mode():
            for a in range(0, len(zz), batch_size):
                res = net.decode(torch.from_numpy(zz[a:a + batch_size]).to(device))
                out[a:a + batch_size] = res.double().cpu().numpy()
        out = np.where(self._valid, out * sc + self._mean.reshape(shape), np.nan)
        return out.reshape(lead + shape)

    def __repr__(self) -> str:
        return (f"AutoEncoder(network={self.kind!r}, variables={self.variables}, "
                f"sample_dim={self.sample_dim!r}, latent_dim={self.latent_dim}, "
                f"stochastic={self.stochastic})")


def _fit_network(ds: xr.Dataset, grid: Grid, sample_dim: str, kind: str, latent_dim: int,  # noqa: C901 - training set-up kept in one place
                 stochastic: bool, weights: Any, center: bool, network_kwargs: Mapping[str, Any],
                 beta: float, input_dropout: float, steps: int, batch_size: int, lr: float,
                 weight_decay: float, scheduler: Any, val_fraction: float,
                 early_stopping: int | None, device: Any, seed: int | None,
                 progress: bool | None, training: Mapping[str, Any] | None = None) -> AutoEncoder:
    from ..training import fit

    if not 0.0 <= input_dropout < 1.0:
        raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout!r}")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a non-negative number, got {beta!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    C = len(grid.variables)
    if kind == "conv" and len(grid.space_dims) != 2:
        raise ValueError(
            f"network='conv' needs exactly 2 space dims, the data have {grid.space_dims}; use "
            "network='mlp' (any number of space dims) or select/stack dims first"
        )
    das = [decode_variable(ds[v]) for v in grid.variables]
    for v, da in zip(grid.variables, das, strict=True):
        check_numeric(da, f"variable {v!r}")
    Y = np.asarray(_stack_snapshots(das, sample_dim))  # a dask input is loaded here
    S = Y.shape[0]
    Y = Y.reshape((S, C) + grid.shape)
    if np.isinf(Y).any():
        raise ValueError("the data contain infinite values; replace them with NaN first")
    obs = np.isfinite(Y)
    empty = np.flatnonzero(~obs.reshape(S, -1).any(axis=1))
    if empty.size:
        labels = ds[sample_dim].values[empty[:5]] if sample_dim in ds.coords else empty[:5]
        raise ValueError(
            f"{empty.size} snapshot(s) along {sample_dim!r} are all-masked (e.g. {list(labels)}); "
            "drop them before fitting, e.g. ds.dropna(sample_dim, how='all')"
        )
    if S < 2:
        raise ValueError(f"need at least 2 snapshots along {sample_dim!r}, got {S}")
    valid = obs.any(axis=0)  # [C, *space]
    count = obs.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        point_mean = np.where(valid, np.nansum(np.where(obs, Y, 0.0), axis=0) / count, 0.0)
    red = tuple(range(2, len(grid.shape) + 2))  # space axes of [S, C, *space]
    var_mean = np.array([np.nanmean(Y[:, j]) for j in range(C)])
    mean = point_mean if center else np.broadcast_to(
        var_mean.reshape((-1,) + (1,) * len(grid.shape)), point_mean.shape) * valid
    anom = np.where(obs, Y - mean, np.nan)
    scales = np.sqrt(np.nanmean(anom**2, axis=(0,) + red))
    scales[~(scales > 0)] = 1.0
    sc = scales.reshape((1, -1) + (1,) * len(grid.shape))
    x = np.where(obs, anom / sc, 0.0).astype(np.float32)
    w = _area_weights(weights, grid, ds)
    wmap = np.ones((C,) + grid.shape)
    if w is not None:
        wmap = np.broadcast_to(w.reshape(grid.shape), wmap.shape).copy()
        if not (wmap[valid] > 0).any():
            raise ValueError("the weights are zero at every observed grid point")
        wmap /= wmap[valid].mean()
    wname = "none" if weights is None else ("coslat" if isinstance(weights, str) else "custom")

    kw = dict(network_kwargs)
    seed_everything(seed)  # the initial weights come from the seed
    net: _AutoEncoderNet
    if kind == "mlp":
        points = np.flatnonzero(valid.ravel())
        net = MLPAutoEncoder((C,) + grid.shape, points=points.size, latent_dim=latent_dim,
                             stochastic=stochastic, **kw)
        net.set_points(torch.from_numpy(points))
    else:
        net = ConvAutoEncoder((C,) + grid.shape, latent_dim=latent_dim, stochastic=stochastic, **kw)
    w_t = torch.as_tensor(wmap, dtype=torch.float32)
    per_var = (0,) + tuple(range(2, 2 + len(grid.shape)))  # reduce all but the channel axis

    def reconstruct_batch(m: _AutoEncoderNet, xb: torch.Tensor, m_in: torch.Tensor):
        params = m.encode(xb, m_in)
        if not stochastic:
            return m.decode(params), None
        q = _posterior(params)
        return m.decode(q.rsample() if m.training else q.mu), q.kl_standard_normal().sum()

    def loss_fn(m: _AutoEncoderNet, batch: tuple[torch.Tensor, torch.Tensor]):
        xb, mb = batch
        m_in = mb
        if input_dropout > 0 and m.training:
            rate = torch.rand((len(xb),) + (1,) * (xb.ndim - 1), device=xb.device) * input_dropout
            m_in = mb & (torch.rand(mb.shape, device=xb.device) >= rate)
        out, kl = reconstruct_batch(m, xb, m_in)
        wb = w_t.to(xb.device) * mb
        n_v = wb.sum(dim=per_var)
        n = n_v.sum().clamp_min(1.0)
        se_v = ((out - xb).square() * wb).sum(dim=per_var)
        mse = se_v.sum() / n
        logs = {"mse": float(mse.detach())}
        if kl is None:  # ||x - T_D(T_E(x))||^2 / 2σ² with σ = 1 in standard units
            return 0.5 * mse, logs
        # Gaussian decoder with σ_v at its maximum-likelihood value, the batch RMS residual
        # of variable v (a calibrated decoder); per valid point: ½ log(2π σ_v²) + ½
        var_v = (se_v / n_v.clamp_min(1.0)).clamp_min(1e-6)
        nll = (n_v * 0.5 * (torch.log(2 * math.pi * var_v) + 1.0)).sum() / n
        logs["kl"] = float(kl.detach() / len(xb))
        return nll + beta * kl / n, logs

    use_val = val_fraction if S * val_fraction >= 1 else 0.0
    x_t, obs_t = torch.from_numpy(x), torch.from_numpy(obs)
    history = fit(net, loss_fn, (x_t, obs_t),
                  val_fraction=use_val, steps=steps, batch_size=min(batch_size, S),
                  optimizer="adamw" if weight_decay else "adam", lr=lr,
                  weight_decay=weight_decay, scheduler=scheduler, device=device, seed=seed,
                  progress=progress, desc=f"fit_autoencoder[{kind}]",
                  early_stopping=early_stopping, restore_best=use_val > 0, **(training or {}))
    # the noise scale σ_v: RMS residual of the training snapshots (its maximum-likelihood value)
    dev = next(net.parameters()).device
    se = torch.zeros(C, dtype=torch.float64)
    nv = torch.zeros(C, dtype=torch.float64)
    net.eval()
    with torch.inference_mode():
        for a in range(0, S, 256):
            xb, mb = x_t[a:a + 256].to(dev), obs_t[a:a + 256].to(dev)
            out, _ = reconstruct_batch(net, xb, mb)
            wb = w_t.to(dev) * mb
            se += ((out - xb).square() * wb).sum(dim=per_var).double().cpu()
            nv += wb.sum(dim=per_var).double().cpu()
    log_sigma = 0.5 * torch.log((se / nv.clamp_min(1.0)).clamp_min(1e-12))
    net = net.cpu()
    _, info = sample_info(ds, sample_dim)
    info.update(network=kind, steps=int(history.steps), beta=float(beta),
                input_dropout=float(input_dropout))
    ae = AutoEncoder(net, grid, sample_dim, mean=mean.astype(np.float32),
                     scales=scales.astype(np.float32), valid=valid,
                     log_sigma=log_sigma.float().numpy(), center=center, weights=wname, info=info)
    ae.history = history
    return ae


# =========================================================================== entry point
def fit_autoencoder(
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    sample_dim: str = "time",
    network: str = "pca",
    latent_dim: int | None = None,
    stochastic: bool = False,
    weights: None | str | xr.DataArray = None,
    center: bool = True,
    noise_var: float | None = None,
    svd: str = "auto",
    n_power_iter: int = 4,
    n_oversamples: int = 10,
    network_kwargs: Mapping[str, Any] | None = None,
    beta: float = 1.0,
    input_dropout: float = 0.0,
    steps: int = 2000,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    scheduler: Any = "cosine",
    val_fraction: float = 0.1,
    early_stopping: int | None = None,
    device: Any = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    time_limit: float | str | None = None,
) -> PCA | AutoEncoder:
    r"""Fit an encoder/decoder pair to the snapshots of a gridded field.

    ``network="pca"`` solves for the EOFs in closed form (see :class:`PCA`). The
    autoencoders minimise, over minibatches of standardised snapshots :math:`x` and
    through :func:`xsciml.training.fit`,
    :math:`\sum_p w_p m_p\,(x_p - T_D(T_E(x))_p)^2 / 2\sigma^2` over the valid points
    (:math:`m_p` the mask, :math:`w_p` the area weights; :math:`\sigma` does not move the
    minimiser and is set afterwards to its maximum-likelihood value, the RMS residual).
    With ``stochastic=True`` the encoder is :math:`q(z\mid x) = \mathcal N(\mu(x),
    \mathrm{diag}\,s(x)^2)` and the loss the negative ELBO per valid point,
    :math:`-\mathbb E_q \log \mathcal N(x; T_D(z), \sigma_v^2) + \beta\,
    \mathrm{KL}(q\,\|\,\mathcal N(0, I))`, with the reparameterised sample and
    :math:`\sigma_v` at its maximum-likelihood value in each batch (a calibrated
    Gaussian decoder).

    Parameters
    ----------
    obj
        Dataset or DataArray with a ``sample_dim`` and one or more space dims (NaN
        where there is no data, e.g. land). Dask-backed input is fine: PCA then runs a
        randomized SVD without loading the data; the autoencoders load it.
    variables
        Variable(s) to model; several become channels (each scaled by its anomaly std).
    sample_dim
        The dimension indexing snapshots (time steps, ensemble members...).
    network
        ``"pca"`` (EOFs; see :class:`PCA` for the conventions), ``"mlp"``
        (:class:`MLPAutoEncoder`, any number of space dims) or ``"conv"``
        (:class:`ConvAutoEncoder`, 2 space dims).
    latent_dim
        Size of the codes (number of EOFs for PCA; at most the number of snapshots,
        minus one when centred). ``None`` (default): for PCA, chosen by validation (the
        rank that best fills held-out snapshots observed at 10 % and 2 % of their
        points, see ``val_fraction``; 16 at most when validation is not possible); 16
        for the autoencoders.
    stochastic
        Autoencoders only: a Gaussian encoder :math:`q(z\mid y)` and the VAE objective
        (above); ``encode`` then returns the posterior mean and std.
    weights
        ``None``, ``"coslat"`` (area weights :math:`w = \cos\varphi` from the latitude
        coordinate) or a DataArray of non-negative weights on the space dims. PCA
        multiplies the data matrix by :math:`\sqrt w` (normalised to mean 1); the
        autoencoders weight their loss by :math:`w`.
    center
        Subtract the mean over snapshots at each point (PCA and autoencoders; the
        autoencoders otherwise subtract each variable's overall mean).
    noise_var
        PCA: default :math:`\sigma^2` of the partial-snapshot MAP :meth:`PCA.encode`.
        Default: estimated out of sample, the mean squared residual per point of
        contiguous blocks of snapshots projected on the EOFs of the other blocks
        (:func:`xsciml.eofs.out_of_sample_noise`; the in-sample discarded variance
        underestimates the misfit of new snapshots, which makes sparse encodes
        overfit) — or, when validation finds it fills the held-out snapshots better
        (with ``latent_dim=None``), the discarded variance per point; the discarded
        variance for dask-backed input.
    svd
        PCA: ``"auto"`` (exact SVD in memory, :func:`dask.array.linalg.svd_compressed` for dask
        input), ``"full"`` (exact; loads dask input) or ``"randomized"``.
    n_power_iter
        Power iterations of the randomized SVD.
    n_oversamples
        Oversampling of the randomized SVD.
    network_kwargs
        Network options: ``hidden`` (MLP widths, default ``(256, 128)``), ``widths``
        (conv channels per resolution, default ``(16, 32, 64)``), ``activation``.
    beta
        Weight of the KL term (``stochastic=True``).
    input_dropout
        Autoencoders: during training hide a random fraction (uniform in
        ``[0, input_dropout]`` per snapshot) of the observed input points while
        scoring all of them, so the encoder learns to encode partial snapshots.
    steps
        Autoencoder training steps, see :func:`xsciml.training.fit` (ignored by the exact PCA).
    batch_size
        Snapshots per minibatch.
    lr
        Learning rate.
    weight_decay
        Weight decay.
    scheduler
        Learning-rate schedule.
    val_fraction
        Fraction of the snapshots held out. Autoencoders: the best weights on them are
        kept. PCA: the last ``val_fraction`` of the snapshots (a contiguous block, at most
        32) is held out, each observed at random 10 % and 2 % of its points and filled by
        the PCA of the others, next to PCA-MAP with the in-sample noise at its validated
        rank on the same points (``info["validation"]``, :meth:`PCA.summary`, a warning
        when PCA-MAP does better); the returned PCA is then fitted on all the snapshots.
    early_stopping
        Stop after this many evaluations without improvement (``None``: never).
    device
        Where to train.
    seed
        The seed (also of the randomized SVD and the validation masks).
    progress
        Show a progress bar.
    checkpoint : str or os.PathLike, optional
        Training checkpoint file, written atomically every 500 steps and at the end
        (see :func:`xsciml.training.fit`).
    resume : bool, default False
        Continue the training from ``checkpoint`` when the file exists (same data and
        settings; a larger ``steps`` trains further).
    callbacks : sequence of callables, default ()
        Each is called as ``callback(state)`` with a :class:`~xsciml.training.TrainState`
        after every optimizer step; returning ``True`` stops the training.
    time_limit : float or str, optional
        Wall-clock budget of the training: seconds, or a string such as ``"90s"``,
        ``"10min"``, ``"1.5h"``, ``"2h30min"`` (:func:`xsciml.training.parse_time_limit`).
        When it runs out, training stops after the current step with a warning, the
        best weights are kept, the checkpoint is written and ``history.stop_reason`` is
        ``"time_limit"``.

        The exact PCA has no training: ``checkpoint``, ``resume`` and ``callbacks``
        are errors with ``network="pca"``, and ``time_limit`` is ignored.

    Returns
    -------
    PCA or AutoEncoder

    Raises
    ------
    ValueError
        ``latent_dim`` larger than the snapshots allow (PCA), an all-masked snapshot,
        no grid point observed in every snapshot (PCA), unknown ``network``, bad weights,
        ``checkpoint``, ``resume`` or ``callbacks`` with ``network="pca"``, a bad
        ``time_limit``.
    KeyError
        Unknown variable or ``sample_dim``.

    Examples
    --------
    >>> import xsciml
    >>> ds = xsciml.datasets.gaussian_random_field((16, 16), n=30, seed=0)
    >>> pca = ds.sciml.fit_autoencoder("u", sample_dim="sample", network="pca", latent_dim=5)
    >>> pca.components.dims, pca.principal_components.dims
    (('mode', 'y', 'x'), ('sample', 'mode'))
    >>> bool(pca.explained_variance_ratio.sum() < 1)
    True
    """
    ds, variables = as_dataset(obj, variables)
    if not isinstance(network, str) or network.lower() not in AUTOENCODER_KINDS:
        raise ValueError(f"network must be one of {list(AUTOENCODER_KINDS)}, got {network!r}")
    kind = network.lower()
    if latent_dim is not None:
        latent_dim = _check_positive_int(latent_dim, "latent_dim")
    if not isinstance(sample_dim, str):
        raise TypeError(f"sample_dim must be a dimension name (str), got {sample_dim!r}")
    grid = Grid.from_data(ds, variables, sample_dim)
    callbacks = tuple(callbacks) if not callable(callbacks) else (callbacks,)
    if kind == "pca":
        parse_time_limit(time_limit)  # checked, though the closed form needs no budget
        given = [n for n, v in (("checkpoint", checkpoint is not None), ("resume", resume),
                                ("callbacks", len(callbacks) > 0)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} apply to the trained autoencoders (network='mlp' or "
                             "'conv'); network='pca' is solved in closed form, without training steps")
        if stochastic:
            raise ValueError(
                "stochastic=True needs a neural encoder (network='mlp' or 'conv'); PCA's encode "
                "gives posterior codes with return_std=True instead"
            )
        seed_everything(seed)
        if isinstance(n_power_iter, bool) or not isinstance(n_power_iter, (int, np.integer)) \
                or n_power_iter < 0:
            raise ValueError(f"n_power_iter must be a non-negative integer, got {n_power_iter!r}")
        n_over = _check_positive_int(n_oversamples, "n_oversamples")

        def fit_pca(d: xr.Dataset, k: int, noise: str = "cv") -> PCA:
            return _fit_pca(d, Grid.from_data(d, variables, sample_dim), sample_dim, k, weights, bool(center),
                            noise_var, svd, int(n_power_iter), n_over, seed, noise=noise)

        return _fit_pca_validated(ds, variables, sample_dim, latent_dim, float(val_fraction), seed, fit_pca)
    latent_dim = 16 if latent_dim is None else latent_dim
    if noise_var is not None:
        raise ValueError("noise_var applies to network='pca' only")
    return _fit_network(ds, grid, sample_dim, kind, latent_dim, bool(stochastic), weights,
                        bool(center), network_kwargs or {}, float(beta), float(input_dropout),
                        _check_positive_int(steps, "steps"), _check_positive_int(batch_size, "batch_size"),
                        float(lr), float(weight_decay), scheduler, float(val_fraction),
                        early_stopping, device, seed, progress,
                        training=dict(checkpoint=checkpoint, resume=resume, callbacks=callbacks,
                                      time_limit=time_limit))
