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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from .._docs import shared_docs
from .._grid import Grid, as_dataset, sample_info
from .._utils import check_numeric, check_positive_int, seed_everything
from ..base import register_estimator
from ..tensors import decode_variable
from ..training import History, TrainState, parse_time_limit
from ._grid_model import (
    AutoEncoderNet,
    ConvAutoEncoder,
    GridModel,
    MLPAutoEncoder,
    area_weights,
    build_network,
    posterior,
    refuse_empty_snapshots,
    stack_snapshots,
)
from ._pca import PCA, fit_pca_model, fit_pca_validated

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


# =========================================================================== autoencoders
@register_estimator
class AutoEncoder(GridModel):
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

    def __init__(self, network: AutoEncoderNet, grid: Grid, sample_dim: str, *, mean: np.ndarray,
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
        net = build_network(config["network"])
        net.load_state_dict({k[len("network."):]: v.cpu() for k, v in tensors.items()
                             if k.startswith("network.")})
        return cls(net, Grid.from_state(config["grid"], tensors), config["sample_dim"],
                   mean=tensors["mean"].cpu().numpy(), scales=tensors["scales"].cpu().numpy(),
                   valid=tensors["valid"].cpu().numpy(), log_sigma=tensors["log_sigma"].cpu().numpy(),
                   center=config["center"], weights=config["weights"], info=config.get("info"))

    def _valid_mask(self) -> np.ndarray:
        return self._valid.copy()

    def _network_on(self, device: torch.device) -> AutoEncoderNet:
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
        batch_size = check_positive_int(batch_size, "batch_size")
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
        refuse_empty_snapshots(obs.reshape(len(y), -1))
        mu: np.ndarray = np.zeros((len(y), k))
        sd = np.zeros((len(y), k))
        net = self._network_on(device)
        with torch.inference_mode():
            for a in range(0, len(y), batch_size):
                xb = torch.from_numpy(x[a:a + batch_size]).to(device)
                mb = torch.from_numpy(obs[a:a + batch_size]).to(device)
                params = net.encode(xb, mb)
                if self.stochastic:
                    q = posterior(params)
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
        batch_size = check_positive_int(batch_size, "batch_size")
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
    Y = np.asarray(stack_snapshots(das, sample_dim))  # a dask input is loaded here
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
    w = area_weights(weights, grid, ds)
    wmap = np.ones((C,) + grid.shape)
    if w is not None:
        wmap = np.broadcast_to(w.reshape(grid.shape), wmap.shape).copy()
        if not (wmap[valid] > 0).any():
            raise ValueError("the weights are zero at every observed grid point")
        wmap /= wmap[valid].mean()
    wname = "none" if weights is None else ("coslat" if isinstance(weights, str) else "custom")

    kw = dict(network_kwargs)
    seed_everything(seed)  # the initial weights come from the seed
    net: AutoEncoderNet
    if kind == "mlp":
        points = np.flatnonzero(valid.ravel())
        net = MLPAutoEncoder((C,) + grid.shape, points=points.size, latent_dim=latent_dim,
                             stochastic=stochastic, **kw)
        net.set_points(torch.from_numpy(points))
    else:
        net = ConvAutoEncoder((C,) + grid.shape, latent_dim=latent_dim, stochastic=stochastic, **kw)
    w_t = torch.as_tensor(wmap, dtype=torch.float32)
    per_var = (0,) + tuple(range(2, 2 + len(grid.shape)))  # reduce all but the channel axis

    def reconstruct_batch(m: AutoEncoderNet, xb: torch.Tensor, m_in: torch.Tensor):
        params = m.encode(xb, m_in)
        if not stochastic:
            return m.decode(params), None
        q = posterior(params)
        return m.decode(q.rsample() if m.training else q.mu), q.kl_standard_normal().sum()

    def loss_fn(m: AutoEncoderNet, batch: tuple[torch.Tensor, torch.Tensor]):
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
@shared_docs
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
    {training_options}

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
        latent_dim = check_positive_int(latent_dim, "latent_dim")
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
        n_over = check_positive_int(n_oversamples, "n_oversamples")

        def fit_pca(d: xr.Dataset, k: int, noise: str = "cv") -> PCA:
            return fit_pca_model(d, Grid.from_data(d, variables, sample_dim), sample_dim, k, weights, bool(center),
                            noise_var, svd, int(n_power_iter), n_over, seed, noise=noise)

        return fit_pca_validated(ds, variables, sample_dim, latent_dim, float(val_fraction), seed, fit_pca)
    latent_dim = 16 if latent_dim is None else latent_dim
    if noise_var is not None:
        raise ValueError("noise_var applies to network='pca' only")
    return _fit_network(ds, grid, sample_dim, kind, latent_dim, bool(stochastic), weights,
                        bool(center), network_kwargs or {}, float(beta), float(input_dropout),
                        check_positive_int(steps, "steps"), check_positive_int(batch_size, "batch_size"),
                        float(lr), float(weight_decay), scheduler, float(val_fraction),
                        early_stopping, device, seed, progress,
                        training=dict(checkpoint=checkpoint, resume=resume, callbacks=callbacks,
                                      time_limit=time_limit))
