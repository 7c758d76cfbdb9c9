r"""Neural fields: :math:`y = f_\theta(x, t[, \mu]) + \varepsilon` with a Gaussian likelihood.

:func:`fit_field` fits a coordinate network on every valid observation of a Dataset
(through :func:`xsciml.training.fit`) and returns a :class:`NeuralField`, an estimator
with labeled outputs: :meth:`~NeuralField.predict` (mean and std on any coordinates),
:meth:`~NeuralField.sample`, :meth:`~NeuralField.log_prob`, :meth:`~NeuralField.score`,
:meth:`~NeuralField.save`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import xarray as xr
from torch import nn

from .._docs import shared_docs
from .._grid import json_attrs
from .._utils import check_positive_int
from ..base import Estimator, output_attrs, register_estimator
from ..coords import CoordinateEncoder
from ..interpolation import LocalKriging, fit_kriging, frame_rbf
from ..tensors import (
    CoordinateData,
    Scaler,
    TargetPoints,
    check_target_domain,
    target_points,
    to_tensors,
)
from ..training import History, TrainState
from ..units import bounds_text, physical_bounds

if TYPE_CHECKING:  # pragma: no cover
    from ..likelihoods import Likelihood

__all__ = ["NeuralField", "fit_field", "FieldModule"]


def _default_batch_size(device: torch.device) -> int:
    """Points per forward pass: small batches stay in cache on a CPU (measured fastest in
    ``benchmarks/field_speed.py``), large ones fill a GPU."""
    return 4096 if device.type == "cpu" else 65536


class FieldModule(nn.Module):
    """A coordinate network and its likelihood, trained together (pure torch)."""

    def __init__(self, network: nn.Module, likelihood: Likelihood) -> None:
        super().__init__()
        self.network = network
        self.likelihood = likelihood

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.network(features)


def extent_cells(data: CoordinateData) -> list[int]:
    """Number of distinct positions along each space feature (for default resolutions)."""
    enc = data.encoder
    ds = data._coords
    sizes = []
    names = [n for n in enc.space if not (enc.sphere and n == enc.lat_name)]
    for n in names:
        c = ds[n]
        if enc.sphere and n == enc.lon_name:
            nlat = ds[enc.lat_name].size if ds[enc.lat_name].ndim == 1 else int(math.sqrt(ds[enc.lat_name].size))
            sizes += [2 * nlat] * 3
            continue
        other_dims = (ds[m].dims[0] for m in names if m != n and ds[m].ndim == 1)
        if c.ndim == 1 and c.dims[0] in ds.dims and c.dims[0] not in other_dims:
            sizes.append(int(c.size))
        else:
            sizes.append(int(round(np.unique(np.asarray(c.values)).size ** (1.0 / max(1, len(names))))))
    return [max(2, s) for s in sizes]


def _n_times(data: CoordinateData) -> int:
    """Number of distinct times of the data (0 without a time coordinate)."""
    name = data.encoder.time
    if not name or name not in data._coords.variables:
        return 0
    values = np.asarray(data._coords[name].values).ravel()
    try:
        return int(np.unique(values).size)
    except TypeError:  # unorderable objects
        return len(set(values.tolist()))


def default_network_kwargs(kind: str, data: CoordinateData) -> dict[str, Any]:
    """Default network settings of ``kind`` sized to the grid extent of ``data``."""
    from ..nn import default_grid_resolutions

    ext = extent_cells(data)
    if kind == "grid":
        n_space = data.encoder.n_space_features
        kw = {"n_space": n_space,
              "resolutions": default_grid_resolutions(ext[:n_space], n_levels=5, coarsest=4),
              "n_features": 4, "width": 128, "depth": 2, "n_time_levels": 4}
        n_times = _n_times(data)
        if n_times:
            # harmonics up to the Nyquist number of the sampled times (capped): enough
            # for the time modulation to give each frame its own anomaly
            kw["time_frequencies"] = int(min(max(1, n_times // 2), 16))
        return kw
    if kind == "fourier":
        return {"scale": float(max(1.0, min(ext) / 24.0)), "width": 256, "depth": 3}
    if kind in ("mfn", "fouriernet"):
        return {"input_scale": float(max(4.0, min(ext) / 2.0)), "width": 128, "depth": 3}
    if kind == "siren":
        return {"width": 128, "depth": 3}
    if kind == "mlp":
        return {"width": 256, "depth": 4}
    return {}


def _kriging_layout(encoder: CoordinateEncoder) -> tuple[list[int], list[list[int]], int | None]:
    """Feature columns the residual kriging uses (space, then the encoded time), their
    length-scale groups (a unit-sphere embedding shares one length: chordal
    distance) and the index of the time column among them."""
    names = encoder.feature_names
    space = list(range(encoder.feature_slices["space"].start, encoder.feature_slices["space"].stop))
    groups: list[list[int]] = []
    sphere = [i for i, c in enumerate(space) if names[c] in ("sphere_x", "sphere_y", "sphere_z")]
    if sphere:
        groups.append(sphere)
    groups += [[i] for i in range(len(space)) if i not in sphere]
    columns = list(space)
    time_col = None
    if encoder.time:
        columns.append(encoder.feature_slices["time"].start)
        time_col = len(columns) - 1
        groups.append([time_col])
    return columns, groups, time_col


def _kriging_coordinates(encoder: CoordinateEncoder, features: torch.Tensor) -> np.ndarray:
    columns, _, _ = _kriging_layout(encoder)
    return features[:, columns].double().numpy()


@register_estimator
class NeuralField(Estimator):
    r"""A fitted neural field :math:`y_n \sim \mathcal N(f_\theta(x_n, t_n), \sigma^2)`.

    Built by :func:`fit_field` (``ds.sciml.fit_field``); all outputs are labeled.

    Attributes
    ----------
    variables : list of str
        Predicted variables.
    encoder : CoordinateEncoder
        Coordinate encoding fitted on the training data.
    scaler : Scaler
        Standardisation of ``y`` (the network works in standard units).
    history : History or None
        Training history (not saved).
    """

    def __init__(self, module: FieldModule, encoder: CoordinateEncoder, scaler: Scaler,
                 variables: list[str], *, condition: Sequence[str] = (),
                 condition_scaler: Scaler | None = None, var_attrs: dict | None = None,
                 std_scale: torch.Tensor | None = None, info: dict | None = None,
                 kriging: Sequence[LocalKriging] | None = None, trend: str = "field") -> None:
        if trend not in ("field", "constant"):
            raise ValueError(f"trend must be 'field' or 'constant', got {trend!r}")
        self.module = module
        self.kriging = list(kriging) if kriging else None
        self.trend = trend
        self.encoder = encoder
        self.scaler = scaler
        self.variables = list(variables)
        self.condition = list(condition)
        self.condition_scaler = condition_scaler
        self.var_attrs = var_attrs or {}
        n = len(self.variables)
        self.std_scale = std_scale if std_scale is not None else torch.ones(n)
        self.info = info or {}
        self.history = History()  # the training loop's (empty after loading: not saved)

    # ------------------------------------------------------------------ persistence
    def _get_config(self) -> dict[str, Any]:
        return {
            # networks that can be saved have a config() -> dict
            "network": cast("Callable[[], dict[str, Any]]", self.module.network.config)()
            if hasattr(self.module.network, "config") else None,
            "likelihood": self.module.likelihood.config(),
            "encoder": self.encoder.to_dict(),
            "scaler": self.scaler.to_dict(),
            "variables": self.variables,
            "condition": self.condition,
            "condition_scaler": self.condition_scaler.to_dict() if self.condition_scaler else None,
            "var_attrs": {v: json_attrs(a) for v, a in self.var_attrs.items()},
            "info": self.info,
            "kriging": [k.config() for k in self.kriging] if self.kriging else None,
            "trend": self.trend,
        }

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        if not hasattr(self.module.network, "config"):
            raise TypeError("a NeuralField with a custom torch module cannot be saved: the module "
                            "has no config() to rebuild it from. Save its state_dict yourself.")
        out = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        out["std_scale"] = self.std_scale
        for j, k in enumerate(self.kriging or []):
            out.update({f"kriging.{j}.{name}": t for name, t in k.tensors().items()})
        return out

    @classmethod
    def _from_state(cls, config: dict, tensors: dict[str, torch.Tensor]) -> NeuralField:
        from ..likelihoods import build_likelihood
        from ..nn import build_network

        module = FieldModule(build_network(config["network"]), build_likelihood(config["likelihood"]))
        state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        module.load_state_dict(state)
        cs = config.get("condition_scaler")
        kriging = None
        if config.get("kriging"):
            kriging = [LocalKriging.from_state(kc, {"points": tensors[f"kriging.{j}.points"],
                                                    "values": tensors[f"kriging.{j}.values"]})
                       for j, kc in enumerate(config["kriging"])]
        return cls(module, CoordinateEncoder.from_dict(config["encoder"]), Scaler.from_dict(config["scaler"]),
                   config["variables"], condition=config.get("condition", []),
                   condition_scaler=Scaler.from_dict(cs) if cs else None,
                   var_attrs=config.get("var_attrs", {}), std_scale=tensors["std_scale"],
                   info=config.get("info", {}), kriging=kriging,
                   trend=config.get("trend", "field"))

    def _provenance_extra(self) -> dict[str, Any]:
        return {"xsciml_network": self.info.get("network", ""),
                "xsciml_likelihood": self.info.get("likelihood", ""),
                "xsciml_training_period": self.info.get("training_period", "")}

    # ------------------------------------------------------------------ core
    def target(self, target: Any, time: Any = None) -> TargetPoints:
        """Encode prediction coordinates (see :func:`xsciml.tensors.target_points`)."""
        return target_points(self.encoder, target, time=time, condition=self.condition,
                             condition_scaler=self.condition_scaler)

    def _net_out(self, features: torch.Tensor, batch_size: int | None, device: Any) -> torch.Tensor:
        from .._utils import resolve_device

        dev = resolve_device(device)
        batch_size = _default_batch_size(dev) if batch_size is None else check_positive_int(batch_size, "batch_size")
        module = self.module.to(dev).eval()
        outs = []
        with torch.inference_mode():
            for i in range(0, len(features), batch_size):
                outs.append(module(features[i:i + batch_size].to(dev, non_blocking=True)).float().cpu())
        if not outs:
            return torch.zeros(0, self.module.likelihood.n_params)
        return torch.cat(outs)

    def _moments(self, net_out: torch.Tensor, features: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and std in physical units, ``[N, Dy]`` each (the residual
        kriging added where the field has one; it needs the ``features``)."""
        lik = self.module.likelihood.cpu()
        with torch.inference_mode():
            dist = lik.distribution(net_out.cpu())
            mean_z, std_z = dist.mean, dist.stddev
            if self.kriging:
                if features is None:
                    raise ValueError("this field interpolates its residuals by kriging: its "
                                     "moments need the target features")
                mean_z, std_z = self._kriged(mean_z, std_z, features)
            mean = self.scaler.inverse(mean_z)
            std = self.scaler.inverse_std(std_z * self.std_scale.to(std_z))
        return mean, std

    def _kriged(self, mean_z: torch.Tensor, std_z: torch.Tensor, features: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised mean and std of trend + kriged residual at ``features``. With a
        heteroscedastic field the noise is the field's own σ(x, t) in place of the
        kriging's constant nugget."""
        z = _kriging_coordinates(self.encoder, features)
        hetero = self.module.likelihood.kind == "heteroscedastic" and self.trend == "field"
        means, stds = [], []
        for j, kr in enumerate(self.kriging or []):
            m, v = kr.predict(z)
            trend = mean_z[:, j].double() if self.trend == "field" else torch.zeros(len(z), dtype=torch.float64)
            means.append(trend + torch.as_tensor(m))
            var = torch.as_tensor(v)
            if hetero:
                var = (var - math.exp(cast(float, kr.params["log_nugget"]))).clamp_min(0.0) + std_z[:, j].double() ** 2
            stds.append(var.sqrt())
        return torch.stack(means, 1).to(mean_z.dtype), torch.stack(stds, 1).to(mean_z.dtype)

    def distribution(self, target: Any, *, time: Any = None, batch_size: int | None = None,
                     device: Any = "auto") -> tuple[torch.distributions.Normal, TargetPoints]:
        """Predictive ``torch.distributions.Normal`` (physical units) at the target points."""
        tp = target if isinstance(target, TargetPoints) else self.target(target, time)
        mean, std = self._moments(self._net_out(tp.features, batch_size, device), tp.features)
        return torch.distributions.Normal(mean, std), tp

    def _bounds(self) -> list[tuple[float | None, float | None, str] | None]:
        """Each variable's physical range (:func:`xsciml.units.physical_bounds`), or None."""
        return [physical_bounds(self.var_attrs.get(v, {}), variable=v) for v in self.variables]

    def _clipped(self, mean: torch.Tensor) -> torch.Tensor:
        """Predictive means ``[N, Dy]`` with a bounded variable's clipped to its range.

        The field is fitted by the Gaussian likelihood to the variable's own values, point
        masses at the bounds included (open water, a dry day), so its mean estimates the
        variable's mean: clipping it to the range never moves it away from a value in the
        range. (The mean of the Normal censored at the bounds would add the mass the
        Normal puts beyond them a second time: on CMIP6 sea-ice concentration it raised
        the withheld-point nRMSE from 0.123 to 0.132; clipping lowers it to 0.121.)"""
        bounds = self._bounds()
        if all(b is None for b in bounds):
            return mean
        cols = [mean[:, j] if b is None else mean[:, j].clamp(min=b[0], max=b[1]) for j, b in enumerate(bounds)]
        return torch.stack(cols, 1)

    # ------------------------------------------------------------------ outputs
    def predict(self, target: Any, *, time: Any = None, batch_size: int | None = None,
                device: Any = "auto", check_domain: bool = True) -> xr.Dataset:
        """Predictive mean and standard deviation on the target coordinates.

        Parameters
        ----------
        target
            A Dataset/DataArray (its coordinates), a dict of 1-D coordinates (a new grid,
            e.g. 4× finer), or a pandas DataFrame of scattered points; times inside or
            outside the training period. NaN coordinates give NaN outputs.
        time
            Time(s) to use when the target has no time coordinate.
        batch_size
            Points per forward pass (bounds memory).
        device
            ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``...
        check_domain
            Warn (``UserWarning``) when target coordinates or times lie outside the
            training range (a field extrapolates there); ``False`` silences it.
            Latitudes beyond ±90° are refused either way.

        Returns
        -------
        xarray.Dataset
            ``<var>_mean`` and ``<var>_std`` for each variable.

        Examples
        --------
        >>> pred = field.predict({"lat": lat_fine, "lon": lon_fine, "time": times})  # doctest: +SKIP

        A dask-backed target (a Dataset/DataArray whose data are dask arrays, e.g. from
        ``xr.open_zarr``) gives a lazy result with the target's chunks: one task per
        chunk, the model sent to each worker once and run on the worker's device
        (``device="auto"``), ``batch_size`` points at a time (see :mod:`xsciml.parallel`).
        """
        if check_domain:
            check_target_domain(self.encoder, target, time=time, where="predict")
        blocks = self._target_blocks(target, time)
        if blocks is not None:
            return self._predict_lazy(blocks, batch_size=batch_size, device=device)
        dist, tp = self.distribution(target, time=time, batch_size=batch_size, device=device)
        mean, std = self._clipped(dist.mean), dist.stddev
        mean_attrs, std_attrs = self.predict_attrs("mean"), self.predict_attrs()
        out = {}
        for j, v in enumerate(self.variables):
            out[f"{v}_mean"] = tp.to_dataarray(mean[:, j], name=f"{v}_mean", attrs=mean_attrs[v])
            out[f"{v}_std"] = tp.to_dataarray(std[:, j], name=f"{v}_std", attrs=std_attrs[v])
        return xr.Dataset(out, attrs=self._output_provenance("predict"))

    # ------------------------------------------------------------------ lazy (dask) path
    def _target_blocks(self, target: Any, time: Any) -> Any:
        """Per-chunk coordinates of a dask-backed target, ``None`` for an eager one."""
        from ..parallel import target_blocks

        names = list(self.encoder.space) + ([self.encoder.time] if self.encoder.time else [])
        return target_blocks(target, names + self.condition, data_names=self.condition,
                             time_name=self.encoder.time, time=time)

    def _block_moments(self, features: torch.Tensor, device: torch.device, clip: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and std (physical units, on the CPU) of one minibatch, computed
        on ``device`` with the modules already there (the worker-side cached model);
        ``clip``: a bounded variable's mean clipped to its range (:meth:`_clipped`)."""
        net_out = self.module(features.to(device, non_blocking=True)).float()
        if self.kriging:
            mean, std = self._moments(net_out, features.cpu())
        else:
            dist = self.module.likelihood.distribution(net_out)
            mean = self.scaler.inverse(dist.mean).cpu()
            std = self.scaler.inverse_std(dist.stddev * self.std_scale.to(dist.stddev)).cpu()
        return (self._clipped(mean), std) if clip else (mean, std)

    def _predict_lazy(self, blocks: Any, *, batch_size: int | None, device: Any,
                      clip: bool = True) -> xr.Dataset:
        """One task per chunk of the target (see :mod:`xsciml.parallel`); ``clip`` as in
        :meth:`_block_moments`."""
        from ..parallel import blockwise_model

        if batch_size is None:
            from .._utils import resolve_device

            batch_size = _default_batch_size(resolve_device(device))
        batch_size = check_positive_int(batch_size, "batch_size")
        n = len(self.variables)
        index = {d: chr(ord("a") + i) for i, d in enumerate(blocks.dims)}
        out_ind = "".join(index[d] for d in blocks.dims)
        arr = blockwise_model(_predict_block, self, out_ind + "Z", *blocks.argpairs(index),
                              dtype=np.float32, new_axes={"Z": 2 * n}, device=device,
                              name="xsciml-predict", batch_size=int(batch_size),
                              data_names=tuple(self.condition), clip=bool(clip), **blocks.layout())
        mean_attrs, std_attrs = self.predict_attrs("mean"), self.predict_attrs()
        out = {}
        for j, v in enumerate(self.variables):
            out[f"{v}_mean"] = xr.Variable(blocks.dims, arr[..., j], mean_attrs[v])
            out[f"{v}_std"] = xr.Variable(blocks.dims, arr[..., n + j], std_attrs[v])
        return xr.Dataset(out, coords=blocks.coords, attrs=self._output_provenance("predict"))

    def predict_attrs(self, statistic: str = "std") -> dict[str, dict]:
        """Attrs of the outputs, per variable: ``<var>_std`` (default), ``<var>_mean``
        (``"mean"``) or draws (``"sample"``); see :func:`xsciml.base.output_attrs`.

        A bounded variable's attrs say how its range was kept (``xsciml_bounds``).

        Examples
        --------
        >>> field.predict_attrs()["sst"]["long_name"]  # doctest: +SKIP
        'predictive standard deviation of sea surface temperature'
        """
        out = {v: output_attrs(self.var_attrs.get(v, {}), statistic, name=v) for v in self.variables}
        for v, b in zip(self.variables, self._bounds(), strict=True):
            if b is not None and statistic in ("mean", "sample"):
                out[v]["xsciml_bounds"] = f"clipped to {bounds_text(b, self.var_attrs.get(v, {}).get('units'))}"
        return out

    _ACTIONS = {"predict": "predict: predictive mean and standard deviation of {}",
                "sample": "sample: draws from the predictive distribution of {}"}

    def _output_provenance(self, what: str) -> dict[str, str]:
        """Provenance attrs of an output, with its ``history`` line."""
        source = next((a for v in self.variables if (a := self.var_attrs.get(v, {})).get("history")),
                      None)
        return self._provenance(self._ACTIONS[what].format(", ".join(self.variables)), source)

    def sample(self, n: int = 20, target: Any = None, *, seed: int | None = 0, time: Any = None,
               batch_size: int | None = None, device: Any = "auto",
               check_domain: bool = True) -> xr.DataArray | xr.Dataset:
        """``n`` draws from the predictive distribution at ``target``, with a leading ``sample`` dim.

        ``target`` is what :meth:`predict` takes (a Dataset or DataArray whose
        coordinates are the points, or a mapping of coordinate arrays); it is required.

        ``check_domain`` warns as in :meth:`predict` for targets outside the training range.

        Returns a DataArray for one variable, a Dataset for several. A dask-backed
        target gives lazy draws (the lazy :meth:`predict` plus ``dask.array.random``
        noise per chunk): reproducible for a given ``seed`` and chunking, with the same
        distribution as the eager draws but not the same numbers.

        Examples
        --------
        >>> ens = field.sample(20, {"y": y_fine, "x": x_fine, "time": times})  # doctest: +SKIP
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if target is None:
            raise ValueError("NeuralField.sample needs a target: the Dataset, DataArray or mapping of "
                             "coordinates to draw at, as for predict (field.sample(n, ds))")
        if check_domain:
            check_target_domain(self.encoder, target, time=time, where="sample")
        blocks = self._target_blocks(target, time)
        if blocks is not None:
            return self._sample_lazy(blocks, n, seed=seed, batch_size=batch_size, device=device)
        dist, tp = self.distribution(target, time=time, batch_size=batch_size, device=device)
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        eps = torch.randn((n,) + tuple(dist.mean.shape), generator=g)
        draws = dist.mean + dist.stddev * eps
        for j, b in enumerate(self._bounds()):  # a bounded variable: draws of the Normal, clipped
            if b is not None:
                draws[..., j] = draws[..., j].clamp(min=b[0], max=b[1])
        attrs = self.predict_attrs("sample")
        das = {v: tp.to_dataarray(draws[..., j], name=v, attrs=attrs[v],
                                  leading_dims=("sample",), leading_coords={"sample": np.arange(n)})
               for j, v in enumerate(self.variables)}
        if len(das) == 1:
            da = next(iter(das.values()))
            da.attrs.update(self._output_provenance("sample"))
            return da
        return xr.Dataset(das, attrs=self._output_provenance("sample"))

    def _sample_lazy(self, blocks: Any, n: int, *, seed: int | None, batch_size: int | None,
                     device: Any) -> xr.DataArray | xr.Dataset:
        """Lazy draws: the lazy mean and std plus dask's chunked standard normals."""
        import dask.array as dsa

        pred = self._predict_lazy(blocks, batch_size=batch_size, device=device, clip=False)
        bounds = self._bounds()
        rng = dsa.random.default_rng(seed)
        nv = len(self.variables)
        eps = rng.standard_normal((n,) + blocks.shape + (nv,), chunks=((n,),) + blocks.chunks + ((nv,),),
                                  dtype=np.float32)
        das = {}
        attrs = self.predict_attrs("sample")
        for j, v in enumerate(self.variables):
            noise = xr.DataArray(eps[..., j], dims=("sample",) + blocks.dims)
            da = (pred[f"{v}_mean"] + pred[f"{v}_std"] * noise).transpose("sample", *blocks.dims)
            b = bounds[j]
            if b is not None:  # draws of the Normal, clipped
                da = da.clip(min=b[0], max=b[1])
            da = da.assign_coords(sample=np.arange(n)).rename(v)
            da.attrs = dict(attrs[v])
            das[v] = da
        if len(das) == 1:
            da = next(iter(das.values()))
            da.attrs.update(self._output_provenance("sample"))
            return da
        return xr.Dataset(das, attrs=self._output_provenance("sample"))

    def _observed(self, ds: xr.Dataset | xr.DataArray) -> CoordinateData:
        if isinstance(ds, xr.DataArray):
            ds = ds.to_dataset(name=ds.name if ds.name is not None else self.variables[0])
        missing = [v for v in self.variables + self.condition if v not in ds.variables]
        if missing:
            raise KeyError(f"the Dataset lacks {missing}; the model predicts {self.variables}"
                           + (f" conditioned on {self.condition}" if self.condition else ""))
        from ..units import check_dataset_units

        ds = check_dataset_units(ds, self.var_attrs, self.variables)
        return to_tensors(ds, self.variables, condition=self.condition, encoder=self.encoder)

    def log_prob(self, ds: xr.Dataset | xr.DataArray, *, batch_size: int | None = None,
                 device: Any = "auto") -> xr.Dataset | xr.DataArray:
        """Per-point log-likelihood of observed values (physical units), NaN where missing."""
        data = self._observed(ds)
        tp = TargetPoints(self.encoder, data.layout, self._condition_features(data), None)
        dist, _ = self.distribution(tp, batch_size=batch_size, device=device)
        lp = dist.log_prob(data.y.to(dist.mean.dtype))
        das = {v: data.layout.unflatten(lp[:, j], f"{v}_log_prob", {"long_name": f"log p({v})"})
               for j, v in enumerate(self.variables)}
        return next(iter(das.values())) if len(das) == 1 else xr.Dataset(das)

    def _condition_features(self, data: CoordinateData) -> torch.Tensor:
        if not self.condition:
            return data.features
        # re-standardise condition columns with the model's scaler, not the new data's
        assert data.condition_scaler is not None and self.condition_scaler is not None  # fitted with condition
        raw_c = data.condition_scaler.inverse(data.c.double()).numpy()
        c = self.condition_scaler.transform(raw_c)
        return torch.cat([data.features[:, :self.encoder.n_features],
                          torch.as_tensor(c, dtype=data.features.dtype)], 1)

    def score(self, ds: xr.Dataset | xr.DataArray, *, level: float = 0.9,
              batch_size: int | None = None, device: Any = "auto") -> xr.Dataset:
        """RMSE, nRMSE (RMSE / std of the observations), mean NLL and interval coverage.

        Scores every valid point of ``ds`` (e.g. withheld observations). Returns a
        Dataset of scalars: ``rmse``, ``nrmse``, ``nll`` (averaged over variables, RMSE
        and NLL in each variable's units), ``coverage`` (of the central ``level``
        interval) and ``n_points``; with several variables also ``<var>_rmse``, ...
        :func:`xsciml.metrics.as_dict` turns it into a dict of floats.

        Examples
        --------
        >>> scores = field.score(ds.where(withheld))  # doctest: +SKIP
        >>> float(scores["nrmse"]), xsciml.metrics.as_dict(scores)  # doctest: +SKIP
        """
        data = self._observed(ds)
        tp = TargetPoints(self.encoder, data.layout, self._condition_features(data), None)
        dist, _ = self.distribution(tp, batch_size=batch_size, device=device)
        y = data.y.to(dist.mean.dtype)
        err = dist.mean - y
        # RMSE of the mean predict returns (a bounded variable's clipped); the interval is
        # the Normal's, which for values within the bounds covers the same ones clipped
        rmse_err = self._clipped(dist.mean) - y
        z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + level / 2)))
        out: dict[str, float] = {}
        per = []
        for j, v in enumerate(self.variables):
            rmse = float(rmse_err[:, j].pow(2).mean().sqrt())
            nrmse = rmse / float(y[:, j].std()) if len(y) > 1 else float("nan")
            nll = float(-dist.log_prob(y)[:, j].mean())
            cov = float((err[:, j].abs() <= z * dist.stddev[:, j]).float().mean())
            per.append((rmse, nrmse, nll, cov))
            if len(self.variables) > 1:
                out.update({f"{v}_rmse": rmse, f"{v}_nrmse": nrmse, f"{v}_nll": nll, f"{v}_coverage": cov})
        arr = np.array(per)
        out.update({"rmse": float(arr[:, 0].mean()), "nrmse": float(arr[:, 1].mean()),
                    "nll": float(arr[:, 2].mean()), "coverage": float(arr[:, 3].mean()),
                    "n_points": float(len(y))})
        long_names = {"rmse": "root-mean-square error", "nrmse": "RMSE / standard deviation of the data",
                      "nll": "mean negative log-likelihood", "coverage": f"coverage of the {level:.0%} interval",
                      "n_points": "number of scored points"}
        def long_name(k: str) -> str:
            return long_names.get(k, long_names.get(k.rsplit("_", 1)[-1], k))

        return xr.Dataset({k: xr.DataArray(v, attrs={"long_name": long_name(k)}) for k, v in out.items()},
                          attrs={"xsciml_level": level, "xsciml_estimator": type(self).__name__})

    def summary(self) -> str:
        """What was fitted and how it did on the held-out validation points.

        The validation nRMSE (RMSE / std, standardised units) of each predictor that
        was scored -- the field alone, the field plus kriging of its residuals,
        kriging alone -- the one kept, its 90 % interval coverage there, and the
        per-frame thin-plate RBF's nRMSE on the same points for reference.

        Examples
        --------
        >>> print(field.summary())  # doctest: +SKIP
        NeuralField(variables=['u'], ...)
        predictor: field+kriging
        validation (902 held-out points, random)   nRMSE
          field                            0.0501
          ...
        """
        lines = [repr(self), f"predictor: {self.info.get('predictor', 'field')}"]
        if self.info.get("predictor_note"):
            lines.append(f"  ({self.info['predictor_note']})")
        val = self.info.get("validation")
        if val:
            hold = val.get("holdout", {})
            shape = ("gap-shaped holes" if hold.get("pattern") == "gap-shaped" else "random")
            lines.append(f"validation ({val['n_points']} held-out points, {shape})   nRMSE")
            if hold.get("pattern") == "gap-shaped":
                lines.append(f"  (median distance to the data: gaps {hold['gap_distance_median']:.3g}, "
                             f"held-out points {hold['held_distance_median']:.3g} grid cells)")
            for name in ("field", "field+kriging", "kriging"):
                if f"nrmse_{name}" in val:
                    mark = "  <- kept" if name == self.info.get("predictor") else ""
                    lines.append(f"  {name:<32s} {val[f'nrmse_{name}']:.4g}{mark}")
            if "nrmse_rbf" in val:
                lines.append(f"  {'reference: ' + val.get('reference', 'RBF'):<32s} {val['nrmse_rbf']:.4g}")
            elif "reference" in val:
                lines.append(f"  reference: {val['reference']}")
            lines.append(f"  90 % interval coverage           {val['coverage90']:.3f}")
        for kr in self.kriging or []:
            lines.append(f"kriging: {kr!r}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"NeuralField(variables={self.variables}, network={self.info.get('network')!r}, "
                f"likelihood={self.info.get('likelihood')!r}, space={self.encoder.space}, "
                f"time={self.encoder.time!r})")


#: Points whose coordinates a lazy-predict task encodes at once: a few floats per point,
#: so a sub-block of this size costs tens of MB; the network's activations, bounded by
#: ``batch_size``, dominate memory. Large enough that the xarray/encoding overhead per
#: sub-block is negligible.
_ENCODE_POINTS = 1 << 20


def _predict_block(model: NeuralField, *blocks: np.ndarray, names: tuple[str, ...],
                   var_dims: tuple, dims: tuple, data_names: tuple[str, ...], batch_size: int,
                   device: torch.device, clip: bool = True) -> np.ndarray:
    """Task body of a lazy predict: ``[*chunk shape, 2 * n_variables]`` float32, means
    then stds, NaN where a coordinate is NaN. Runs on a worker with the cached model;
    coordinates are encoded by sub-blocks and the network runs in minibatches of
    ``batch_size`` points (the memory budget)."""
    from ..parallel import block_dataset, block_shape, subblocks

    n = len(model.variables)
    shape = block_shape(blocks, var_dims, dims)
    out = np.full(shape + (2 * n,), np.nan, dtype=np.float32)
    for region in subblocks(shape, max(batch_size, _ENCODE_POINTS)):
        tp = model.target(block_dataset(blocks, names, var_dims, dims, region, data_names))
        if tuple(tp.layout.dims) != tuple(dims):  # pragma: no cover - block_dataset fixes the order
            raise RuntimeError(f"chunk dims {tp.layout.dims} differ from the output dims {dims}")
        features = tp.features
        values = np.empty((len(features), 2 * n), dtype=np.float32)
        for i in range(0, len(features), batch_size):
            mean, std = model._block_moments(features[i:i + batch_size], device, clip)
            values[i:i + batch_size, :n] = mean.numpy()
            values[i:i + batch_size, n:] = std.numpy()
        sub = tuple(s.stop - s.start for s in region)
        if tp.layout.valid is None:
            out[region] = values.reshape(sub + (2 * n,))
        else:
            piece = np.full((math.prod(sub), 2 * n), np.nan, dtype=np.float32)
            piece[tp.layout.valid] = values
            out[region] = piece.reshape(sub + (2 * n,))
    return out


@shared_docs
def fit_field(
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    space: str | Sequence[str] | None = None,
    time: str | None = "auto",
    condition: str | Sequence[str] = (),
    network: str | nn.Module = "grid",
    likelihood: str = "gaussian",
    network_kwargs: dict[str, Any] | None = None,
    sphere: bool | str = "auto",
    time_features: Any = (),
    steps: int | None = None,
    batch_size: int = 2048,
    lr: float | None = None,
    scheduler: Any = "cosine",
    weight_decay: float = 0.0,
    regularization: float | None = None,
    val_fraction: float = 0.1,
    val_pattern: str = "auto",
    val_every: int = 100,
    early_stopping: int | None = 3,
    calibrate: bool = True,
    residual: str = "auto",
    reference: bool = True,
    device: Any = "auto",
    seed: int | None = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    time_limit: float | str | None = None,
) -> NeuralField:
    r"""Fit a neural field :math:`f_\theta(x, t[, \mu])` to every valid observation.

    The observations :math:`y_n` (standardised) follow
    :math:`\mathcal N(f_\theta(x_n, t_n), \sigma^2)` — or :math:`\sigma(x_n, t_n)` with the
    heteroscedastic likelihood — and :math:`\theta^* = \arg\min_\theta` of the mean
    negative log-likelihood over minibatches, through :func:`xsciml.training.fit`. A
    share ``val_fraction`` of the points is held out -- random points, or on gridded
    data with organised gaps, holes as far from the data as the gaps are
    (``val_pattern``) -- : the weights best on it are kept, the predictor is chosen on
    it and, with ``calibrate=True``, the predictive σ is rescaled so that the held-out
    normalised residuals have unit variance (this corrects the σ collapse of a
    network that fits its training points too well).

    Parameters
    ----------
    obj
        Dataset/DataArray, in memory or dask-backed (minibatches are then streamed
        from chunks).
    variables
        Variable(s) to fit; several are fitted jointly (one output each).
    space
        Space coordinate names, as in :func:`xsciml.tensors.to_tensors`.
    time
        Time coordinate name (``None``: a static field), as in :func:`xsciml.tensors.to_tensors`.
    condition
        Variables given to the network as inputs (conditional fields :math:`f(x, t, \mu)`);
        they must be given at prediction too.
    sphere
        Embed latitude/longitude on the unit sphere (``"auto"``: for global data), as in
        :func:`xsciml.tensors.to_tensors`.
    time_features
        Cyclical time features (``"hour"``, ``"doy"``, ...), as in
        :func:`xsciml.tensors.to_tensors`.
    network
        ``"grid"`` (multi-resolution learned grids, Instant-NGP style; the default),
        ``"mlp"``, ``"fourier"`` (random Fourier features + MLP), ``"siren"``, ``"mfn"``
        (multiplicative filter network), or a ``torch.nn.Module`` of your own mapping
        ``[N, F]`` features to ``[N, n_params]`` (one output per variable, two for the
        heteroscedastic likelihood).
    likelihood
        ``"gaussian"`` (learned σ), ``"heteroscedastic"`` (σ(x, t) from a second head),
        or ``"mse"``.
    network_kwargs
        Overrides of the network's defaults (width, depth, resolutions, scales...).
        Defaults are derived from the coordinate spacing.
    steps
        Optimizer steps (default 1000 for grids, where the cosine schedule anneals before they
        overfit, and 3000 otherwise); see :func:`xsciml.training.fit`.
    batch_size
        Points per minibatch.
    lr
        Learning rate (default 5e-3 for grids and 1e-3 otherwise).
    scheduler
        Learning-rate schedule, see :func:`xsciml.training.fit`.
    weight_decay
        Weight decay of the optimizer.
    val_fraction
        Share of the observations held out for validation (0: none; no predictor
        choice, calibration or reference then).
    val_pattern
        Which points are held out. ``"auto"`` (default): on gridded data whose gaps
        are organised (clouds, swaths, missing sectors), disks of observed points
        sized so that the held-out points lie as far from the remaining data as the
        gap points lie from the data (:func:`xsciml.tensors.CoordinateData.split_indices`),
        so the predictor is chosen and σ calibrated for the gaps it will fill; random
        points when the gaps are scattered points, for scattered data and when
        nothing is missing. ``"random"``: always random points.
        ``info["validation"]["holdout"]`` says which was used.
    val_every
        Steps between evaluations on the held-out points.
    early_stopping
        Stop after this many evaluations on the held-out points (every ``val_every``
        steps) without improvement, keeping the best weights (``None``: train all
        ``steps``). Needs held-out points: ignored when ``val_fraction=0`` or the data
        are lazy.
    device
        Where to train (``"auto"``: CUDA when present).
    seed
        Seed of the weights, the held-out split and the minibatches.
    progress
        Show a progress bar (``None``: follow ``XSCIML_PROGRESS``).
    {training_options}
    regularization
        Weight of the network's own penalty (for ``"grid"``: the roughness of the
        grids, :meth:`~xsciml.nn.MultiResGrid.regularization`), divided by the number
        of training points so that it acts as a prior precision; default 20 for
        ``"grid"``.
    calibrate
        Rescale σ on the held-out points (see above).
    residual
        How the small scales the network misses are filled in:

        * ``"auto"`` (default): three predictors are scored on the held-out points --
          the field alone, the field plus local kriging of its residuals
          (regression kriging; :mod:`xsciml.interpolation`) and kriging of the data
          alone -- and the best is kept. Whichever wins, the kriging's covariance
          (Matérn family, lengths in space and time, nugget) is fitted to the
          training points, so frames that are independent in time are interpolated
          one by one and correlated ones jointly. The kriging σ grows away from the
          observations.
        * ``"kriging"``: always the field plus kriging of its residuals;
        * ``"none"``: the field alone.

        Kriging needs the training points in memory and no ``condition``; otherwise
        the field is used alone (``info["predictor"]`` says which was used, and why).
    reference
        Also score a per-frame thin-plate RBF (:func:`xsciml.interpolation.frame_rbf`)
        on the same held-out points, report both in :meth:`NeuralField.summary` and
        warn when the fitted predictor is worse.

    Returns
    -------
    NeuralField

    Examples
    --------
    >>> import xsciml
    >>> ds = xsciml.datasets.default_dataset("heat").isel(trajectory=0)
    >>> field = ds.sciml.fit_field("u", space=("y", "x"), time="time", steps=50,
    ...                            progress=False)
    >>> pred = field.predict(ds)
    >>> sorted(pred.data_vars)
    ['u_mean', 'u_std']
    >>> field.info["predictor"] in ("field", "field+kriging", "kriging")
    True
    """  # noqa: E501
    from .._utils import seed_everything
    from ..likelihoods import build_likelihood
    from ..nn import build_network
    from ..training import fit

    seed_everything(seed)  # the network's initial weights come from the global generator
    data = to_tensors(obj, variables, space=space, time=time, condition=condition, sphere=sphere,
                      time_features=time_features)
    for v in data.variables:  # outputs keep a bounded variable in range: unreadable valid_* fail here
        physical_bounds(data.var_attrs.get(v, {}), variable=v)
    n_out = len(data.variables)
    lik = build_likelihood(likelihood, n_out)
    in_features = data.features.shape[1] if not data.is_lazy else data.encoder.n_features + len(data.condition)
    if isinstance(network, nn.Module):
        net = network
        kind = type(network).__name__
    else:
        kind = str(network).lower()
        kw = default_network_kwargs(kind, data)
        kw.update(network_kwargs or {})
        net = build_network(kind, in_features=in_features, out_features=lik.n_params, **kw)
    module = FieldModule(net, lik)
    # a quick shape check (clear error for a user module of the wrong output size)
    with torch.no_grad():
        probe = torch.zeros(2, in_features)
        out = net(probe)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, lik.n_params):
            raise ValueError(
                f"the network maps [N, {in_features}] features to {tuple(getattr(out, 'shape', ()))} "
                f"but the {likelihood!r} likelihood needs [N, {lik.n_params}] "
                f"({lik.n_params_per_output} per variable x {n_out} variables)"
            )
    scaler = data.scaler
    mean_t = torch.tensor(scaler.mean, dtype=torch.float32)
    std_t = torch.tensor(scaler.std, dtype=torch.float32)
    reg_w = regularization if regularization is not None else (20.0 if kind == "grid" else 0.0)
    has_reg = reg_w > 0 and hasattr(net, "regularization")
    # the penalty is a sum over grid nodes: per training point, like the mean NLL
    n_fit = int(data.n_valid) if data.is_lazy or val_fraction <= 0 else \
        int(data.n_valid) - round(int(data.n_valid) * val_fraction)
    reg_w = reg_w / max(1, n_fit)

    def loss_fn(m: FieldModule, batch):
        f, y = batch
        y = (y - mean_t.to(y)) / std_t.to(y)
        nll = m.likelihood.nll(m(f), y)
        if has_reg and m.training:
            reg = cast("Callable[[], torch.Tensor]", m.network.regularization)()  # has_reg: the network has one
            return nll + reg_w * reg, {"nll": float(nll.detach())}
        return nll

    if residual not in ("auto", "kriging", "none"):
        raise ValueError(f"residual must be 'auto', 'kriging' or 'none', got {residual!r}")
    split = None
    train: CoordinateData | tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor] | None
    if data.is_lazy:
        train, val = data, None
        vf = 0.0
    else:
        if val_fraction > 0:
            split = data.split_indices(val_fraction, seed=seed or 0, pattern=val_pattern)
            ti, vi = split
            train, val = (data.features[ti], data.y[ti]), (data.features[vi], data.y[vi])
        else:
            train, val = (data.features, data.y), None
        vf = 0.0
    history = fit(module, loss_fn, train, val_data=val, val_fraction=vf,
                  steps=(1000 if kind == "grid" else 3000) if steps is None else steps,
                  batch_size=batch_size, optimizer="adam", lr=(5e-3 if kind == "grid" else 1e-3) if lr is None else lr,
                  weight_decay=weight_decay, scheduler=scheduler, device=device, seed=seed,
                  progress=progress, desc=f"fit_field[{kind}]", val_every=val_every,
                  early_stopping=early_stopping if val is not None else None, restore_best=val is not None,
                  checkpoint=checkpoint, resume=resume, callbacks=callbacks, time_limit=time_limit)
    module = module.cpu()
    info = {"network": kind, "likelihood": likelihood, "n_train_points": int(data.n_valid),
            "steps": int(history.steps)}
    if data.encoder.time:
        from ..coords import float_to_time

        t0, t1 = float_to_time(np.array([data.encoder.time_min, data.encoder.time_max]),
                               data.encoder.time_units, data.encoder.time_origin,
                               data.encoder.calendar or "none")
        info["training_period"] = f"{t0} .. {t1}"
    field = NeuralField(module, data.encoder, scaler, data.variables, condition=data.condition,
                        condition_scaler=data.condition_scaler,
                        var_attrs={v: dict(data.var_attrs.get(v, {})) for v in data.variables},
                        info=info)
    field.info["predictor"] = "field"
    if split is not None:
        _choose_predictor(field, data, split, residual=residual, reference=reference,
                          calibrate=calibrate, device=device, seed=seed or 0)
    elif residual != "none":
        field.info["predictor_note"] = ("the field alone: kriging of its residuals needs the "
                                        "training points in memory and val_fraction > 0")
    if calibrate and val is not None and not field.kriging:
        f_val, y_val = val
        dist, _ = field.distribution(TargetPoints(data.encoder, None, f_val, None), device=device)  # type: ignore[arg-type]
        z2 = ((y_val.to(dist.mean) - dist.mean) / dist.stddev).pow(2).mean(0)
        field.std_scale = z2.sqrt().clamp_min(1e-3).float()
    field.history = history
    return field


#: Fewest training points for which residual kriging and the references are fitted.
_MIN_KRIGING_POINTS = 20
# fewer held-out points than this cannot choose a predictor nor fit the residual covariance
_MIN_VALIDATION_POINTS = 4
# below this many held-out points the validation scores are said to be uncertain
_FEW_VALIDATION_POINTS = 20


def _nrmse(pred: np.ndarray, truth: np.ndarray) -> float:
    """RMSE / std of the truth, averaged over the variable columns."""
    err = np.sqrt(np.mean((pred - truth) ** 2, axis=0))
    sd = np.std(truth, axis=0)
    return float(np.mean(err / np.where(sd > 0, sd, 1.0)))


def _reference_rbf(data: CoordinateData, z: np.ndarray, ti: np.ndarray, vi: np.ndarray,
                   zc: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Per-frame thin-plate RBF of each standardised variable at the validation points."""
    enc = data.encoder
    columns, _, time_col = _kriging_layout(enc)
    n_space = len(columns) - (1 if time_col is not None else 0)
    if enc.sphere:
        pts = zc[:, :n_space]  # unit-sphere embedding: RBF on the sphere (chordal distance)
    else:
        raw = data.raw_coords
        pts = np.column_stack([np.asarray(raw[n], dtype=np.float64) for n in enc.space])
    frames = zc[:, time_col] if time_col is not None else None
    f_train = None if frames is None else frames[ti]
    f_val = None if frames is None else frames[vi]
    cols, how = [], ""
    try:
        for j in range(z.shape[1]):
            values, how = frame_rbf(pts[ti], z[ti, j], f_train, pts[vi], f_val)
            cols.append(values)
    except Exception as err:  # a degenerate frame (collinear points...): reported, not fatal
        return None, f"not available ({type(err).__name__}: {err})"
    out = np.column_stack(cols)
    return out, f"thin-plate RBF ({how})"


def _choose_predictor(field: NeuralField, data: CoordinateData, split: tuple, *, residual: str,
                      reference: bool, calibrate: bool, device: Any, seed: int) -> None:
    """Score field / field + residual kriging / kriging on the held-out points, keep the
    best (``residual="auto"``), calibrate its σ there and condition its kriging on every
    observation. Records the scores in ``field.info`` and warns when a per-frame RBF
    does better."""
    import warnings

    ti, vi = (np.asarray(i) for i in split)
    enc = data.encoder
    z = field.scaler.transform(data.y.double().numpy())
    z = np.asarray(z, dtype=np.float64)
    with torch.no_grad():
        dist = field.module.likelihood.cpu().distribution(field._net_out(data.features, None, device))
        mean_z = dist.mean.double().numpy()
        std_z = dist.stddev.double().numpy()
    zc = _kriging_coordinates(enc, data.features)
    _, groups, time_col = _kriging_layout(enc)
    zv = z[vi]
    scores: dict[str, float] = {"field": _nrmse(mean_z[vi], zv)}
    preds: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "field": (mean_z[vi], std_z[vi] * field.std_scale.double().numpy())}
    krigs: dict[str, list[LocalKriging]] = {}
    note = None
    if residual == "none":
        note = "the field alone (residual='none')"
    elif data.condition:
        note = "the field alone: kriging does not take condition variables"
    elif len(ti) < _MIN_KRIGING_POINTS:
        note = f"the field alone: {len(ti)} training points are too few to fit a kriging covariance"
    elif len(vi) < _MIN_VALIDATION_POINTS:
        note = (f"the field alone: {len(vi)} held-out points are too few to choose a predictor "
                f"(at least {_MIN_VALIDATION_POINTS})")
    if len(vi) < _FEW_VALIDATION_POINTS:
        warnings.warn(
            f"fit_field: only {len(vi)} of {len(ti) + len(vi)} observations were held out for "
            f"validation; its scores, the choice of predictor and the σ calibration rest on them "
            "and are uncertain (more observations, or a larger val_fraction, give firmer numbers)",
            UserWarning, stacklevel=3)
    if note is None:
        hetero = field.module.likelihood.kind == "heteroscedastic"
        candidates = {"field+kriging": (z - mean_z, mean_z)}
        if residual == "auto" and not hetero:  # kriging alone has one noise level
            candidates["kriging"] = (z, np.zeros_like(z))
        for name, (target, trend) in candidates.items():
            krs, means, stds = [], [], []
            for j in range(z.shape[1]):
                # the field's residuals are smaller at its training points than elsewhere:
                # their covariance is fitted to predict the held-out residuals
                honest = (zc[vi], target[vi, j]) if name == "field+kriging" else None
                kr = fit_kriging(zc[ti], target[ti, j], groups=groups, time_column=time_col, seed=seed,
                                 validation=honest)
                m, v = kr.predict(zc[vi])
                if hetero:  # the field's own noise σ(x, t) in place of the constant nugget
                    v = np.clip(v - math.exp(cast(float, kr.params["log_nugget"])), 0.0, None) + std_z[vi, j] ** 2
                krs.append(kr)
                means.append(trend[vi, j] + m)
                stds.append(np.sqrt(v))
            krigs[name] = krs
            preds[name] = (np.column_stack(means), np.column_stack(stds))
            scores[name] = _nrmse(preds[name][0], zv)
    choice = "field+kriging" if residual == "kriging" and note is None else min(scores, key=scores.__getitem__)
    validation: dict[str, Any] = {f"nrmse_{k}": v for k, v in scores.items()}
    validation["n_points"] = int(len(vi))
    validation["holdout"] = dict(data.split_info)
    mean_v, std_v = preds[choice]
    if choice != "field" and calibrate:
        z2 = (((zv - mean_v) / std_v) ** 2).mean(0)
        field.std_scale = torch.as_tensor(np.sqrt(z2)).clamp_min(1e-3).float()
        std_v = std_v * np.sqrt(z2)
    level_z = 1.6448536269514722  # 90 % central interval
    validation["coverage90"] = float((np.abs(zv - mean_v) <= level_z * std_v).mean())
    validation["nrmse"] = scores[choice]
    if choice != "field":
        target_all = z - mean_z if choice == "field+kriging" else z
        field.kriging = [kr.with_data(zc, target_all[:, j]) for j, kr in enumerate(krigs[choice])]
        field.trend = "field" if choice == "field+kriging" else "constant"
        validation["kriging"] = [repr(kr) for kr in krigs[choice]]
    if reference and len(ti) >= _MIN_KRIGING_POINTS and len(vi) >= _MIN_VALIDATION_POINTS:
        ref, how = _reference_rbf(data, z, ti, vi, zc)
        validation["reference"] = how
        if ref is not None:
            validation["nrmse_rbf"] = _nrmse(ref, zv)
            if validation["nrmse"] > validation["nrmse_rbf"]:
                warnings.warn(
                    f"fit_field: the fitted {choice} predictor's validation nRMSE "
                    f"{validation['nrmse']:.4g} is above that of a per-frame thin-plate RBF "
                    f"({validation['nrmse_rbf']:.4g}) on the same {len(vi)} held-out points; "
                    "scipy.interpolate.RBFInterpolator may serve these data better",
                    UserWarning, stacklevel=3)
    field.info["predictor"] = choice
    if note:
        field.info["predictor_note"] = note
    field.info["validation"] = validation
