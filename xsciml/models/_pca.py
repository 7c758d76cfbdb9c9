"""PCA (EOFs) of gridded snapshots: the :class:`PCA` estimator and its fit.

Private module: :class:`PCA` is public as :class:`xsciml.models.amortized.PCA`, built by
:func:`xsciml.models.amortized.fit_autoencoder` with ``network="pca"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr

from .._grid import Grid, sample_info, variable_from_state, variable_state
from .._utils import check_numeric
from ..base import register_estimator
from ..eofs import out_of_sample_noise
from ..tensors import decode_variable
from ..training import History
from ._grid_model import GridModel, area_weights, refuse_empty_snapshots, stack_snapshots
from ._snapshot_validation import (
    MAX_SNAPSHOTS,
    MIN_SNAPSHOTS,
    SnapshotValidation,
    rank_cap,
    reference_entries,
    validation_lines,
    warn_if_worse,
)

#: the logger of the public module, :mod:`xsciml.models.amortized`
log = logging.getLogger(__name__.rpartition(".")[0] + ".amortized")

__all__ = ["PCA", "fit_pca_model", "fit_pca_validated"]

_MAX_BLOCK = 2**24  # elements of the [c, k, P] intermediate of the batched MAP solve


# =========================================================================== PCA
def _flip_signs(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic signs: the largest-magnitude entry of each component is positive."""
    idx = np.abs(v).argmax(axis=1)
    signs = np.sign(v[np.arange(v.shape[0]), idx])
    signs[signs == 0] = 1.0
    return u * signs, v * signs[:, None]


@register_estimator
class PCA(GridModel):
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
    >>> from xsciml.models import fit_autoencoder
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
        refuse_empty_snapshots(informative)
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
        >>> from xsciml.models import fit_autoencoder
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
        >>> from xsciml.models import fit_autoencoder
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


def fit_pca_validated(ds: xr.Dataset, variables: list[str], sample_dim: str, latent_dim: int | None,
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


def fit_pca_model(ds: xr.Dataset, grid: Grid, sample_dim: str, latent_dim: int, weights: Any,
             center: bool, noise_var: float | None, svd: str, n_power_iter: int,
             n_oversamples: int, seed: int | None, noise: str = "cv") -> PCA:
    das = [decode_variable(ds[v]).transpose(sample_dim, *grid.space_dims) for v in grid.variables]
    for v, da in zip(grid.variables, das, strict=True):
        check_numeric(da, f"variable {v!r}")
    Y = stack_snapshots(das, sample_dim)
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
    w = area_weights(weights, grid, ds)
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
