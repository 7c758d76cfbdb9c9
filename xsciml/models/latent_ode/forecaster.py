r"""The estimator base of the latent-dynamics forecasters: :class:`LatentForecaster`.

Forecasting is a template method (:meth:`LatentForecaster._forecast`): parse the lead
times, check the initial state, branch to a lazy per-chunk forecast for dask input,
encode, integrate, decode and label the output; the models plug in their encoders as
array-level hooks (see the class docs). Also the input checks, decoding targets, the
In-s mask and the In-t / Out-t × In-s / Out-s table.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn

from ..._grid import json_attrs
from ..._utils import check_positive_int
from ...base import Estimator, output_attrs
from ...coords import CoordinateEncoder
from ...parallel import is_dask_backed
from ...tensors import (
    Scaler,
    TargetPoints,
    decode_variable,
    space_dims,
    space_values,
    target_points,
)
from ...training import History
from ...units import clip_to_physical_bounds
from ..autodecode import CodePosterior, sample_codes
from .ode import Clock, LatentDynamics, integrate_latent
from .references import MEMBERS, References, warn_left_out

__all__ = ["InitialStates", "LatentForecaster"]


def _codes_tensor(codes: Any, latent_dim: int, name: str = "codes"
                  ) -> tuple[Tensor, tuple[Hashable, ...], dict[Hashable, xr.Variable]]:
    """Codes ``(..., latent)`` (DataArray or array) as a float tensor, with their leading
    dims and the coordinates along them (``dim_i`` names for plain arrays)."""
    coords: dict[Hashable, xr.Variable] = {}
    lead_dims: tuple[Hashable, ...] | None = None
    if isinstance(codes, xr.DataArray):
        if "latent" not in codes.dims:
            raise ValueError(f"{name} need a 'latent' dimension, got dims {codes.dims}")
        lead_dims = tuple(d for d in codes.dims if d != "latent")
        coords = {k: c.variable for k, c in codes.coords.items()
                  if c.dims and set(c.dims) <= set(lead_dims)}
        codes = codes.transpose(*lead_dims, "latent").values
    a = torch.as_tensor(np.asarray(codes), dtype=torch.float32)
    if a.ndim < 1 or a.shape[-1] != latent_dim:
        raise ValueError(f"{name} must have a last dimension of {latent_dim}, got {tuple(a.shape)}")
    if lead_dims is None:
        lead_dims = tuple(f"dim_{i}" for i in range(a.ndim - 1))
    return a, lead_dims, coords



class _Configurable(Protocol):
    def config(self) -> dict[str, Any]: ...


class _LatentModule(Protocol):
    """What the forecasters' networks (``DINoModule``, ``SmoothModule``) hold."""

    decoder: _Configurable
    dynamics: LatentDynamics

    def normalise(self, z: Tensor) -> Tensor: ...

    def denormalise(self, z: Tensor) -> Tensor: ...


# =========================================================================== estimator
@dataclass
class InitialStates:
    """Initial states as a model's encoder takes them, and how to label their codes.

    Attributes
    ----------
    values
        The encoder's input (model-specific arrays).
    bdims, bshape
        The state dims (every non-space dim indexes independent states) and their sizes;
        the states are flattened in C order over them.
    bcoords
        Coordinates along the state dims.
    """

    values: Any
    bdims: list[Hashable]
    bshape: list[int]
    bcoords: dict[Hashable, xr.Variable] = field(default_factory=dict)


class LatentForecaster(Estimator):
    """What the latent-dynamics forecasters share (DINo and the smooth model).

    The common state (networks, coordinate encoder, scaler, clock, ODE options), input
    checks, decoding targets, labelled outputs, the In-s mask and the In-t / Out-t × In-s /
    Out-s table, and forecasting as a template method: :meth:`_forecast` parses the lead
    times, checks the initial state, branches to a lazy per-chunk forecast for dask
    input, encodes, integrates, decodes and labels the output (``lead``, ``valid_time``).

    Subclasses provide ``forecast``, ``encode``, ``decode`` and ``score`` (checking
    their own options and handing them on), persistence, and the hooks:

    * ``_states(ds) -> InitialStates``: the initial states of a Dataset as encoder input;
    * ``_grid_context(ds)`` and ``_block_states(arrays, context) -> InitialStates``: the
      same for one Dask chunk of arrays ``[n, *grid]``, with what depends on the grid
      computed once;
    * ``_encode_states(states, options, *, device, seed, progress, batch_size)``: codes
      ``[N, d]``;
    * optionally ``_encode_posterior`` (same arguments): the Laplace posterior of the codes,
      a :class:`~xsciml.models.autodecode.CodePosterior`, for ensemble forecasts
      (``members=``: codes drawn from it, a leading ``member`` dim);
    * ``_integrate(codes0, offsets, device, options, t0)``: codes ``[N, K, d]`` at the
      offsets (usually through :meth:`_integrate_codes`);
    * ``_decode_tensor(codes, tp, device, batch_size)``: physical values ``[M, P, C]`` at
      the target's points;
    * ``_forecast_attrs(options, nfe)``: the attrs recording the options (``nfe`` None for
      a lazy forecast);
    * optionally ``_finish_forecast`` / ``_finish_block`` (e.g. DINo's persisted residual).
    """

    if TYPE_CHECKING:  # provided by the subclasses (see above), declared for the type checker
        train_points: np.ndarray
        train_observed: np.ndarray
        forecast: Callable[..., xr.DataArray | xr.Dataset]

        @property
        def latent_dim(self) -> int: ...

        def _states(self, ds: xr.Dataset) -> InitialStates: ...

        def _block_states(self, arrays: list[np.ndarray], context: Any, /) -> InitialStates: ...

        def _encode_states(self, states: InitialStates, options: dict[str, Any], *, device: Any,
                           seed: int | None, progress: bool | None, batch_size: int) -> Tensor: ...

        def _integrate(self, codes0: Tensor, offsets: np.ndarray, device: Any, options: dict[str, Any],
                       t0: np.ndarray | None, /) -> Tensor: ...

        def _decode_tensor(self, codes: Tensor, tp: TargetPoints, device: Any, batch_size: int, /
                           ) -> Tensor: ...

        def _forecast_attrs(self, options: dict[str, Any], nfe: int | None) -> dict[str, str]: ...

    def __init__(self, module: nn.Module, encoder: CoordinateEncoder, scaler: Scaler,
                 variables: Sequence[str], *, sample_dim: Hashable | None, time: str,
                 clock: Clock, ode: dict[str, Any], coord_units: dict[str, str] | None = None,
                 var_attrs: dict | None = None, info: dict | None = None) -> None:
        self.module = module
        self.encoder = encoder
        self.scaler = scaler
        self.variables = list(variables)
        self.sample_dim = sample_dim
        self.time = time
        self.clock = clock
        self.ode = dict(ode)
        self.coord_units = dict(coord_units or {})
        self.var_attrs = var_attrs or {}
        self.info = info or {}
        self.history: History = History()  # the fit's (empty after loading: not saved)
        self.last_nfe: int | None = None
        #: the reference forecasts of a calendar training period and their combination
        #: weights (:class:`~xsciml.models.latent_ode.references.References`), or None
        self.references: References | None = None
        #: the fit on the training period before the validation split, whose forecasts
        #: the combination weights were fitted on; combined forecasts use the mean of its
        #: forecast and this model's as the learned member (None: this model's alone)
        self.validation_model: LatentForecaster | None = None

    @property
    def space(self) -> tuple[str, ...]:
        """Names of the space coordinates the decoder takes."""
        return tuple(self.encoder.space)

    def _common_config(self) -> dict[str, Any]:
        """The JSON config entries of the shared state plus the networks'."""
        m = cast(_LatentModule, self.module)
        return {
            "variables": self.variables,
            "sample_dim": None if self.sample_dim is None else str(self.sample_dim),
            "time": self.time,
            "decoder": m.decoder.config(),
            "dynamics": m.dynamics.config(),
            "encoder": self.encoder.to_dict(),
            "scaler": self.scaler.to_dict(),
            "clock": self.clock.to_dict(),
            "ode": self.ode,
            "coord_units": self.coord_units,
            "var_attrs": {v: json_attrs(a) for v, a in self.var_attrs.items()},
            "info": self.info,
            "references": None if self.references is None else self.references.to_config(),
            "validation_model": None if self.validation_model is None else self.validation_model._get_config(),
        }

    def _reference_tensors(self) -> dict[str, Tensor]:
        """The references' arrays and the validation model's tensors for the saved file
        (``references.<name>``, ``validation_model.<name>``)."""
        if self.references is None:
            return {}
        out = {f"references.{k}": torch.as_tensor(np.array(v, copy=True))
               for k, v in self.references.tensors().items()}
        if self.validation_model is not None:
            out.update({f"validation_model.{k}": v for k, v in self.validation_model._get_tensors().items()})
        return out

    def _restore_references(self, config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> None:
        """Rebuild :attr:`references` and :attr:`validation_model` from a saved file's
        config and tensors."""
        if config.get("references"):
            arrays = {k[len("references."):]: v.cpu().numpy() for k, v in tensors.items()
                      if k.startswith("references.")}
            self.references = References.from_state(config["references"], arrays)
        if config.get("validation_model"):
            pre = "validation_model."
            self.validation_model = type(self)._from_state(
                config["validation_model"], {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})


    # ------------------------------------------------------------------ input checks
    def _state_times(self, ds: xr.Dataset, bdims: Sequence[Hashable]) -> xr.DataArray:
        """The initial time of every state, ``(*bdims)`` (broadcast), with a clear error when
        the forced dynamics need it and ``ds`` has none per state."""
        if self.time not in ds.coords or not set(ds[self.time].dims) <= set(bdims):
            raise ValueError(
                f"the model's dynamics are forced with periods {self.forcing_periods}: the initial "
                f"state needs its time coordinate {self.time!r} (one value per state, along "
                f"{list(bdims)}) to know the phase of each forcing")
        t = ds[self.time]
        return t.expand_dims({d: ds.sizes[d] for d in bdims if d not in t.dims}).transpose(*bdims)

    def _initial_times(self, ds: xr.Dataset, bdims: Sequence[Hashable]) -> np.ndarray | None:
        """Absolute float times ``[N]`` of the initial states (for forcing phases), else None."""
        if not cast(_LatentModule, self.module).dynamics.periods:
            return None
        return self.clock.to_float(np.asarray(self._state_times(ds, bdims).values).reshape(-1))

    @property
    def forcing_periods(self) -> list[float]:
        """Periods of the known forcings the dynamics receive, in the model's time units."""
        return [p * self.clock.scale for p in cast(_LatentModule, self.module).dynamics.periods]

    def _init_dataset(self, obj: Any, role: str) -> xr.Dataset:
        if isinstance(obj, xr.DataArray):
            name = obj.name
            if name is None and len(self.variables) == 1:
                name = self.variables[0]
            if name not in self.variables:
                raise KeyError(f"the {role} holds variable {name!r} but the model was trained on "
                               f"{self.variables}; rename it or pass the right variable")
            obj = obj.to_dataset(name=name)
        if not isinstance(obj, xr.Dataset):
            raise TypeError(f"{role} must be an xarray Dataset or DataArray, got {type(obj).__name__}")
        missing = [v for v in self.variables if v not in obj.data_vars]
        if missing:
            raise KeyError(f"the {role} lacks variable(s) {missing} the model was trained on "
                           f"({self.variables}); it has {list(obj.data_vars)}")
        missing_c = [n for n in self.space if n not in obj.variables]
        if missing_c:
            raise KeyError(f"the {role} lacks space coordinate(s) {missing_c}; the model was trained "
                           f"on space={list(self.space)}")
        self._check_units(obj, role)
        from ...units import check_dataset_units

        return check_dataset_units(obj, self.var_attrs, self.variables, role=role)

    def _check_units(self, coords: Mapping[Hashable, Any], role: str) -> None:
        """Refuse space coordinates whose ``units`` attribute differs from training's.

        ``coords`` maps names to coordinates (a Dataset, or a target dict whose values may
        be plain arrays without attrs); coordinates without units pass.
        """
        for n in self.space:
            v = coords[n] if n in coords else None
            units = getattr(v, "attrs", {}).get("units") if v is not None else None
            trained = self.coord_units.get(n)
            if units is not None and trained is not None and str(units) != trained:
                raise ValueError(f"space coordinate {n!r} of the {role} is in {units!r} but the model "
                                 f"was trained in {trained!r}; convert the coordinate first")

    def _check_domain(self, feats: np.ndarray, role: str) -> None:
        """Refuse coordinates that lie mostly far outside the training domain (other units?)."""
        if feats.size == 0 or self.encoder.sphere:
            return
        outside = np.any(np.abs(feats) > 2.0, axis=1).mean()
        if outside > 0.5:
            rng = {n: (self.encoder.space_min[n], self.encoder.space_max[n]) for n in self.space}
            raise ValueError(
                f"{100 * outside:.0f}% of the {role}'s points lie far outside the training domain "
                f"{rng}; are its coordinates in other units than the training data?")

    def _target(self, target: Any) -> TargetPoints:
        if isinstance(target, (xr.Dataset, xr.DataArray)):
            ds = target if isinstance(target, xr.Dataset) else target.to_dataset(
                name=target.name if target.name is not None else "_target")
            missing = [n for n in self.space if n not in ds.variables]
            if missing:
                raise KeyError(f"target lacks space coordinate(s) {missing}; the model was trained "
                               f"on space={list(self.space)}")
            self._check_units(ds, "target")
            sdims = space_dims(ds, self.space, [])
            target = xr.Dataset(coords={n: ds[n].variable for n in self.space})
            target = target.transpose(*sdims)
        elif isinstance(target, Mapping):
            self._check_units(target, "target")
        tp = target_points(self.encoder, target)
        self._check_domain(tp.features.numpy(), "target")
        return tp

    def _output_attrs(self, variable: str, action: str) -> dict[str, Any]:
        """CF attrs of a decoded or forecast field of ``variable`` (its units, standard
        name and cell methods, not its packing or history) and the provenance attrs, with
        a ``history`` line for ``action``."""
        source = self.var_attrs.get(variable, {})
        return {**output_attrs(source, "value", name=variable),
                **self._provenance(f"{action} of {variable}", source)}

    def _to_xarray(self, vals: Tensor, tp, lead_dims, lead_coords, extra_attrs=None, action: str = "decode"):
        das = {}
        for j, v in enumerate(self.variables):
            attrs = {**self._output_attrs(v, action), **(extra_attrs or {})}
            das[v] = tp.to_dataarray(vals[..., j], name=v, attrs=attrs, leading_dims=tuple(lead_dims),
                                     leading_coords=lead_coords)
        if len(das) == 1:
            return next(iter(das.values()))
        first = das[self.variables[0]].attrs
        return xr.Dataset(das, attrs={k: first[k] for k in ("xsciml_version", "xsciml_model", "history")
                                      if k in first} | dict(extra_attrs or {}))


    # ------------------------------------------------------------------ references
    def _combine_reason(self, ds: xr.Dataset, target: Any) -> str | None:
        """Why a forecast from the initial states ``ds`` cannot be combined with the references
        (None: it can)."""
        refs = self.references
        if refs is None:
            return ("the model has no reference forecasts (they are built for calendar time axes "
                    "by fit_dynamics(combine=None or True))")
        if target is not None:
            return ("a forecast on a target grid of its own cannot be combined (the references live on "
                    "the training grid)")
        why = refs.check_grid(ds)
        if why:
            return why
        sdims = set(refs.sdims)
        if self.time not in ds.coords or not (set(ds[self.time].dims) <= set(ds[self.variables[0]].dims) - sdims):
            return (f"the initial state has no time coordinate {self.time!r} per state (the references "
                    "need the initial time)")
        return None

    def _combined_forecast(self, learned: Callable[..., xr.DataArray | xr.Dataset], ds_init: Any, *,
                           members: int | None, progress: bool | None, combine: bool | None, target: Any,
                           seed: int | None, recent: Any) -> xr.DataArray | xr.Dataset:
        """The forecast of ``forecast``: ``learned(model, init, members, progress)`` is the learned
        forecast of a model (this one or the :attr:`validation_model`) from ``init``, combined
        with the references as far as ``combine`` asks (:meth:`_with_references`), and clipped
        to the physical range of each variable (:func:`xsciml.units.physical_bounds`)."""

        def hindcast(states: xr.Dataset) -> xr.DataArray | xr.Dataset:  # the learned member, deterministic
            out = learned(self, states, None, False)
            if self.validation_model is None:
                return out
            with xr.set_options(keep_attrs=True):
                return (out + learned(self.validation_model, states, None, False)) / 2

        out = self._with_references(learned(self, ds_init, members, progress), ds_init, combine=combine,
                                    target=target, seed=seed, again=lambda m: learned(m, ds_init, members, progress),
                                    recent=recent, hindcast=hindcast)
        # a bounded quantity (a fraction, precipitation...) stays in its range: ensemble members
        # (Gaussian model-error draws) and the learned model's decoder can leave it
        if isinstance(out, xr.DataArray):
            return clip_to_physical_bounds(out, self.var_attrs.get(self.variables[0], {}))
        return out.assign({v: clip_to_physical_bounds(out[v], self.var_attrs.get(v, {}))
                           for v in self.variables if v in out})

    def _with_references(self, out: xr.DataArray | xr.Dataset, ds_init: Any, *, combine: bool | None,
                         target: Any, seed: int | None,
                         again: Callable[[LatentForecaster], xr.DataArray | xr.Dataset] | None = None,
                         recent: Any = None,
                         hindcast: Callable[[xr.Dataset], xr.DataArray | xr.Dataset] | None = None
                         ) -> xr.DataArray | xr.Dataset:
        """The combined forecast from the learned one ``out`` (``combine`` None: when possible).

        ``again(model)``: the same forecast by another model; with a :attr:`validation_model`,
        the learned member is the mean of its forecast and ``out``. ``recent``: observations
        whose verified forecasts update the weights and the ensembles' spread
        (:meth:`_recent_stats`), with ``hindcast(states)`` the learned member's deterministic
        forecast from states at the same leads.
        """
        if combine not in (None, True, False):
            raise TypeError(f"combine must be None, True or False, got {combine!r}")
        if recent is not None:
            self._check_recent(combine)
        if combine is False:
            return out
        if combine is None and self.references is None:
            return out
        ds = self._init_dataset(ds_init, "initial state")  # units converted, as the learned forecast's
        reason = self._combine_reason(ds, target)
        if reason is not None:
            if combine:
                raise ValueError(f"combine=True: {reason}")
            if recent is not None:
                raise ValueError(f"recent= needs the combined forecast, and {reason}")
            warn_left_out(reason)
            return out
        refs = cast(References, self.references)
        if self.validation_model is not None and again is not None:
            other = again(self.validation_model)
            with xr.set_options(keep_attrs=True):
                out = (out + other) / 2
        first = out if isinstance(out, xr.DataArray) else out[self.variables[0]]
        ens = "member" in first.dims
        offsets, _ = self.clock.parse_lead(first["lead"].values)
        lead_s = self.clock.offset_seconds(offsets)
        _warn_long_leads(refs, lead_s)
        from ...coords import time_to_float

        t0 = ds[self.time]
        t0s = xr.DataArray(time_to_float(np.asarray(t0.values), "seconds").reshape(t0.shape), dims=t0.dims,
                           coords={k: c for k, c in t0.coords.items() if set(c.dims) <= set(t0.dims)})
        stats = None
        if recent is not None:
            assert hindcast is not None
            stats = self._recent_stats(recent, refs, lead_s, np.asarray(t0s.values).reshape(-1), hindcast)
        core = (["member"] if ens else []) + ["lead", *refs.sdims]
        models = [out if isinstance(out, xr.DataArray) else out[v] for v in self.variables]
        states = [ds[v] for v in self.variables]
        n = len(self.variables)
        E = int(first.sizes["member"]) if ens else None

        def block(*arrays: np.ndarray) -> Any:  # one chunk of states (or all)
            m, x, t = arrays[:n], arrays[n:2 * n], arrays[-1]
            bshape, grid = t.shape, x[0].shape[t.ndim:]
            N, K, P = int(np.prod(bshape, dtype=np.int64)), lead_s.size, int(np.prod(grid, dtype=np.int64))
            lead_part = [E, K] if E is not None else [K]
            model = np.stack([np.asarray(a, dtype=np.float64).reshape(N, *lead_part, P) for a in m], -1)
            if E is not None:
                model = np.moveaxis(model, 1, 0)  # [E, N, K, P, C]
            x0 = np.stack([np.asarray(a, dtype=np.float64).reshape(N, P) for a in x], -1)
            t_flat = np.asarray(t, dtype=np.float64).reshape(N)
            weights = target_ms = None
            if stats is not None:
                weights, target_ms, _ = refs.recent_update(*stats, t_flat, lead_s)
            res = refs.combine(model, x0, t_flat, lead_s, members=E, seed=seed, target_ms=target_ms,
                               weights=weights)
            if E is not None:
                res = np.moveaxis(res, 0, 1)
            parts = tuple(res[..., j].reshape(*bshape, *lead_part, *grid).astype(m[j].dtype) for j in range(n))
            return parts if n > 1 else parts[0]

        results = xr.apply_ufunc(
            block, *models, *states, t0s,
            input_core_dims=[core] * n + [list(refs.sdims)] * n + [[]],
            output_core_dims=[core] * n, dask="parallelized",
            output_dtypes=[mo.dtype for mo in models], dask_gufunc_kwargs={"allow_rechunk": True})
        if n == 1:
            results = (results,)
        note = _combined_note(refs, lead_s, stats, ens)
        res = {}
        for v, mo, r in zip(self.variables, models, results, strict=True):
            res[v] = r.transpose(*mo.dims).assign_coords(
                {k: c for k, c in mo.coords.items() if k not in r.coords}).assign_attrs(
                mo.attrs, xsciml_combined=note,
                history=f"{mo.attrs.get('history', '')} combined with reference forecasts".strip())
        if isinstance(out, xr.DataArray):
            return res[self.variables[0]].rename(out.name)
        return out.assign(res)

    def _check_recent(self, combine: bool | None) -> None:
        """Refuse ``recent=`` where there is no combination to update."""
        if combine is False or self.references is None:
            raise ValueError("recent= needs the combined forecast: " + (
                "combine=False is the learned model alone" if combine is False else
                "the model has no reference forecasts (a numeric time axis, or fitted with combine=False)"))

    def _recent_stats(self, recent: Any, refs: References, lead_s: np.ndarray, t0: np.ndarray,
                      hindcast: Callable[[xr.Dataset], xr.DataArray | xr.Dataset]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The members' verified errors from the states of ``recent`` after the training period:
        ``(grams [S, K, M, M], counts [S, K], times [S])`` for :meth:`References.recent_update`.

        The states are the frames after the training period that can verify before the last
        initial time (at most :data:`~.references.MAX_RECENT_STATES`, evenly spaced); the
        learned member (``hindcast``) and the references are forecast from each at the leads
        ``lead_s`` and compared with the frame of ``recent`` at its valid time (standardised,
        over the points where all are finite; a count of 0 without one).
        """
        import warnings

        from ...coords import time_to_float
        from .references import MAX_RECENT_STATES, state_values

        end, span = refs.validation.get("end"), refs.validation.get("span")
        if end is None or not span or refs.validation_t0.size == 0 or refs.validation_gram is None:
            raise ValueError("recent= needs the validation forecasts' start times and error cross-products, "
                             "which this model was saved without: refit it with this version of xsciml")
        obs = self._init_dataset(recent, "recent observations")
        why = refs.check_grid(obs, "recent observations")
        if why:
            raise ValueError(f"recent: {why}")
        v0 = obs[self.variables[0]]
        if self.time not in v0.dims:
            raise ValueError(f"the recent observations need the time dimension {self.time!r}; "
                             f"they have dims {v0.dims}")
        extra = [d for d in v0.dims if d != self.time and d not in refs.sdims]
        if extra:
            raise ValueError(f"the recent observations must be one series along {self.time!r} on the "
                             f"training grid; they have the extra dimension(s) {extra}: select one")
        obs = obs.sortby(self.time)
        times = time_to_float(np.asarray(obs[self.time].values), "seconds")
        pos = lead_s[lead_s > 0]
        tol = 1e-3 * refs.lag_step
        last = float(t0.max()) - (float(pos.min()) if pos.size else 0.0)
        first = float(t0.min()) - float(span) - (float(pos.max()) if pos.size else 0.0)
        cand = np.flatnonzero((times > end + tol) & (times <= last + tol) & (times >= first - tol))
        if cand.size == 0:
            period = self.info.get("training_period")
            raise ValueError("the recent observations have no frame after the training period"
                             + (f" ({period})" if period else "") + f" from which a forecast verifies in the "
                             f"{span / 86400:.4g} days before an initial time: there is nothing to update the "
                             "combination with; pass observations up to the initial times, or leave recent= "
                             "out (the validation period's weights and spread)")
        if cand.size > MAX_RECENT_STATES:
            cand = cand[np.unique(np.linspace(0, cand.size - 1, MAX_RECENT_STATES).round().astype(int))]
        s = times[cand]
        valid = s[:, None] + lead_s[None]
        idx = np.clip(np.searchsorted(times, valid - tol), 0, times.size - 1)
        hit = (np.abs(times[idx] - valid) <= tol) & (lead_s > 0)[None]
        # only the frames forecast from and verified on are read (the record may be long)
        used_frames, inverse = np.unique(np.concatenate([cand, idx[hit]]), return_inverse=True)
        values = state_values(obs.isel({self.time: used_frames}), self.variables, [self.time],
                              refs.sdims)  # [F, P, C]
        bad = [v for j, v in enumerate(self.variables) if np.isinf(values[..., j]).any()]
        if bad:
            raise ValueError(f"the recent observations of {bad} hold infinite values: mark missing values "
                             "as NaN")
        at = np.zeros(idx.shape, dtype=np.int64)
        at[hit] = inverse[cand.size:]
        x0 = values[inverse[:cand.size]]
        fc = hindcast(obs.isel({self.time: cand}))
        fcs = fc.to_dataset(name=self.variables[0]) if isinstance(fc, xr.DataArray) else fc
        S, K = cand.size, lead_s.size
        learned = np.stack([np.asarray(fcs[v].transpose(self.time, "lead", *refs.sdims).values,
                                       dtype=np.float64).reshape(S, K, -1) for v in self.variables], -1)
        members = refs.members(x0, s, lead_s)
        truth = np.where(hit[..., None, None], values[at], np.nan)
        err = np.stack([learned, members["persistence"], members["climatology"],
                        members["anomaly persistence"]]) - truth[None]  # [M, S, K, P, C]
        err = (err / refs.scale).reshape(err.shape[0], S, K, -1)
        ok = np.asarray(np.isfinite(err).all(0))
        err = np.where(ok[None], err, 0.0)
        grams = np.einsum("isku,jsku->skij", err, err)
        counts = ok.sum(-1).astype(np.float64)
        used = refs.recent_error_ms(np.where(counts > 0, 1.0, np.nan), s, t0, lead_s, choose=False)[1]
        # windows wholly after the validation period without a verified recent forecast
        none = (used == 0) & (lead_s > 0)[None] & (t0 - span > end + tol)[:, None]
        if none.any():
            warnings.warn(f"the recent observations verify no forecast in the {span / 86400:.4g} days before "
                          f"{int(none.any(1).sum())} of {t0.size} initial time(s) at some leads: the validation "
                          "period's weights and spread are used there", UserWarning, stacklevel=4)
        return grams, counts, s

    def summary(self) -> str:
        """What was fitted and, for calendar time axes, the reference forecasts, the
        combination weights by lead and the validation RMSE of every forecast.

        Examples
        --------
        >>> print(model.summary())  # doctest: +SKIP
        DINo(variables=['t2m'], ...)
        trained on 414 frames (2019-03-01 .. 2019-03-18), 2000 steps in 311 s
        references: persistence; climatology (training mean + 2 diurnal harmonics); ...
        """
        info = self.info
        lines = [repr(self)]
        if "n_frames_train" in info:
            lines.append(f"trained on {info['n_frames_train']} frames ({info.get('training_period', '')})"
                         + (f", {info['steps']} steps" if "steps" in info else "")
                         + (f" in {info['wall_time']:.0f} s" if "wall_time" in info else ""))
        if self.references is not None:
            grid = self.references.lead_grid
            units = "h" if grid is None or grid[-1] < 4 * 86400 else "d"
            lines += self.references.summary_lines(units)
            if self.validation_model is not None:
                vinfo = self.validation_model.info
                lines.append(f"learned member of the combination: the mean of this model and the fit on the "
                             f"{vinfo.get('n_frames_train', '?')} frames before the validation period "
                             "(combine=False: this model alone)")
        elif self.clock.kind != "numeric":
            lines.append("no reference forecasts (fit with combine=False): forecasts are the learned model's")
        return "\n".join(lines)

    # ------------------------------------------------------------------ forecasting (template)
    def _forecast(self, ds_init: xr.Dataset | xr.DataArray, *, lead: Any, target: Any,
                  options: dict[str, Any], device: Any, seed: int | None, progress: bool | None,
                  batch_size: int, members: int | None = None) -> xr.DataArray | xr.Dataset:
        """The forecast skeleton: leads, initial state, encode, integrate, decode, label.

        ``options`` are the subclass's checked forecast options (its encoder's, solver...);
        the subclass hooks see them. A dask-backed initial state goes to
        :meth:`_forecast_lazy`. With ``members`` (an ensemble), the initial codes are
        ``members`` draws from the Laplace posterior of each state's code
        (:meth:`_encode_posterior`, drawn by
        :func:`~xsciml.models.autodecode.sample_codes` with ``seed``), all integrated in
        one solve, and the output gets a leading ``member`` dim.
        """
        members = check_positive_int(members, "members", allow_none=True)
        offsets, lead_coord = self.clock.parse_lead(lead)
        ds = self._init_dataset(ds_init, "initial state")
        if any(is_dask_backed(ds[v]) for v in self.variables):
            if members is not None:
                raise ValueError(
                    "members= needs an eager initial state: the ensemble draws the codes of all "
                    "the states from one seeded generator, which per-chunk tasks cannot share; "
                    "call .compute() on the initial state first (or forecast it in pieces)")
            return self._forecast_lazy(ds, offsets, lead_coord, target, options, device=device,
                                       seed=seed, batch_size=batch_size)
        states = self._states(ds)
        t0 = self._initial_times(ds, states.bdims)
        lead_shape: list[int] = list(states.bshape)
        lead_dims: tuple[Hashable, ...] = (*states.bdims, "lead")
        if members is None:
            codes0 = self._encode_states(states, options, device=device, seed=seed, progress=progress,
                                         batch_size=batch_size)
            codes = self._integrate(codes0, offsets, device, options, t0)
        else:
            post = self._encode_posterior(states, options, device=device, seed=seed, progress=progress,
                                          batch_size=batch_size)
            codes0 = post.mean
            draws = sample_codes(post.mean, post.scale_tril, members, seed=seed)  # [M, N, d]
            t0m = None if t0 is None else np.tile(t0, members)
            codes = self._integrate(draws.reshape(-1, self.latent_dim), offsets, device, options, t0m)
            lead_shape, lead_dims = [members, *lead_shape], ("member", *lead_dims)
        tp = self._target(ds if target is None else target)
        vals = self._decode_tensor(codes.reshape(-1, self.latent_dim), tp, device, batch_size)
        vals = vals.reshape(*lead_shape, len(offsets), *vals.shape[1:])
        coords: dict[Hashable, xr.Variable | tuple[Hashable | tuple[Hashable, ...], np.ndarray]] = dict(
            states.bcoords)
        coords["lead"] = ("lead", lead_coord)
        if members is not None:
            coords["member"] = ("member", np.arange(members))
        if self.time in ds.coords and set(ds[self.time].dims) <= set(states.bdims):
            t0c = ds[self.time].transpose(*[d for d in states.bdims if d in ds[self.time].dims])
            coords["valid_time"] = ((*t0c.dims, "lead"), self.clock.add(t0c.values, offsets))
        attrs = self._forecast_attrs(options, self.last_nfe)
        if members is not None:
            attrs = {**attrs, "xsciml_members": str(members),
                     "xsciml_ensemble": "laplace posterior of the initial codes"}
        out = self._to_xarray(vals, tp, lead_dims, coords, attrs, action="forecast")
        return self._finish_forecast(out, ds, states, codes0, tp, options, device=device,
                                     batch_size=batch_size)

    def _encode_posterior(self, states: InitialStates, options: dict[str, Any], *, device: Any,
                          seed: int | None, progress: bool | None, batch_size: int) -> CodePosterior:
        """The Laplace posterior of the codes of the states (mean ``[N, d]``, Cholesky factor
        ``[N, d, d]``...): the hook of ensemble forecasts (``members=``); the default refuses."""
        raise ValueError(f"{type(self).__name__} has no posterior of its initial codes: members= is "
                         "not available")

    def _posterior_dataset(self, post: CodePosterior, states: InitialStates) -> xr.Dataset:
        """A :class:`~xsciml.models.autodecode.CodePosterior` labelled by the state dims."""
        d = self.latent_dim
        dims = tuple(states.bdims)
        return xr.Dataset(
            {"codes": ((*dims, "latent"), post.mean.reshape(*states.bshape, d).numpy()),
             "scale_tril": ((*dims, "latent", "latent_j"),
                            post.scale_tril.reshape(*states.bshape, d, d).numpy()),
             "noise_var": (dims, post.noise_var.reshape(states.bshape).numpy()),
             "dof": (dims, post.dof.reshape(states.bshape).numpy())},
            coords=states.bcoords,
            attrs={"description": "Laplace posterior of the codes: N(codes, scale_tril scale_tril^T)"})

    def _posterior_codes(self, ds_init: xr.Dataset | xr.DataArray, options: dict[str, Any], *, device: Any,
                         seed: int | None, progress: bool | None, batch_size: int) -> xr.Dataset:
        """``encode_posterior``: the labelled Laplace posterior of the codes of ``ds_init``."""
        ds = self._init_dataset(ds_init, "initial state")
        if any(is_dask_backed(ds[v]) for v in self.variables):
            ds = ds.compute()
        states = self._states(ds)
        post = self._encode_posterior(states, options, device=device, seed=seed, progress=progress,
                                      batch_size=batch_size)
        return self._posterior_dataset(post, states)

    def _state_arrays(self, ds: xr.Dataset, sdims: Sequence[Hashable]
                      ) -> tuple[list[np.ndarray], list[Hashable], list[int]]:
        """Each variable of the initial state(s) as float64 ``[N, *grid]`` over ``sdims``, with
        the state dims (the others) and their shape."""
        v0 = ds[self.variables[0]]
        bdims = [d for d in v0.dims if d not in sdims]
        for v in self.variables[1:]:
            if set(ds[v].dims) != set(v0.dims):
                raise ValueError(f"variables {self.variables[0]!r} {v0.dims} and {v!r} "
                                 f"{ds[v].dims} of the initial state have different dimensions")
        bshape = [int(ds.sizes[d]) for d in bdims]
        N = int(np.prod(bshape, dtype=np.int64))
        grid = [int(ds.sizes[d]) for d in sdims]
        arrays = [np.asarray(decode_variable(ds[v]).transpose(*bdims, *sdims).values,
                             dtype=np.float64).reshape(N, *grid) for v in self.variables]
        return arrays, bdims, bshape

    @staticmethod
    def _batch_coords(ds: xr.Dataset, bdims: Sequence[Hashable]) -> dict[Hashable, xr.Variable]:
        """The coordinates of ``ds`` along the state dims only (they label the codes)."""
        return {k: c.variable for k, c in ds.coords.items() if c.dims and set(c.dims) <= set(bdims)}

    def _integrate_codes(self, codes0: Tensor, tau: np.ndarray, inv: np.ndarray, device: Any, *,
                         method: str, rtol: float, atol: float, t0: np.ndarray | None) -> Tensor:
        """Codes ``[N, K, d]`` at the distinct ODE times ``tau`` (``inv``: where each output
        finds its time) from ``codes0 [N, d]``, through the normalised latent ODE.

        ``t0``: absolute float times of the initial states, needed with forcing periods.
        Sets :attr:`last_nfe`.
        """
        from ..._utils import resolve_device

        dev = resolve_device(device)
        m = cast(_LatentModule, self.module.to(dev).eval())
        z0 = m.normalise(codes0.to(dev))
        d = z0.shape[-1]
        if m.dynamics.periods:
            if t0 is None:
                raise ValueError("forced dynamics need the initial times (t0)")
            z0 = torch.cat([z0, m.dynamics.phases(np.asarray(t0) / self.clock.scale).to(z0)], -1)
        if tau[0] > 0:  # the solve starts at the initial state
            tau = np.concatenate([[0.0], tau])
            inv = inv + 1
        m.dynamics.nfe = 0
        with torch.inference_mode():
            z = integrate_latent(m.dynamics, z0, torch.as_tensor(tau, dtype=torch.float32, device=dev),
                                 method=method, step=self.ode["step"], rtol=rtol, atol=atol)
            codes = m.denormalise(z[..., :d])[torch.as_tensor(inv, device=dev)]  # [K, N, d]
        self.last_nfe = int(m.dynamics.nfe)
        return codes.transpose(0, 1).cpu()

    def _decode(self, codes: Tensor | np.ndarray | xr.DataArray, target: Any, *, device: Any,
                batch_size: int, name: str = "codes") -> xr.DataArray | xr.Dataset:
        """``decode``: codes ``(..., latent)`` to fields on a target, labelled."""
        a, lead_dims, coords = _codes_tensor(codes, self.latent_dim, name)
        tp = self._target(target)
        vals = self._decode_tensor(a.reshape(-1, self.latent_dim), tp, device, batch_size)
        vals = vals.reshape(*a.shape[:-1], *vals.shape[1:])
        return self._to_xarray(vals, tp, lead_dims, coords)

    # hooks with defaults
    def _finish_forecast(self, out: xr.DataArray | xr.Dataset, ds: xr.Dataset, states: InitialStates,
                         codes0: Tensor, tp: TargetPoints, options: dict[str, Any], *, device: Any,
                         batch_size: int) -> xr.DataArray | xr.Dataset:
        """Last step of an eager forecast (default: none)."""
        return out

    def _finish_block(self, fields: list[np.ndarray], arrays: list[np.ndarray], codes0: Tensor,
                      tp: TargetPoints, sdims: Sequence[Hashable], options: dict[str, Any], *,
                      device: Any, batch_size: int) -> list[np.ndarray]:
        """Last step of the forecast of one Dask chunk (default: none); arrays as in
        :meth:`_forecast_arrays`."""
        return fields

    def _grid_context(self, ds: xr.Dataset) -> Any:
        """What :meth:`_block_states` needs of the initial state's grid (from its coordinates
        only), computed once for all the chunks of a lazy forecast."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lazy forecasts
    def _forecast_lazy(self, ds: xr.Dataset, offsets: np.ndarray, lead_coord: np.ndarray, target: Any,
                       options: dict[str, Any], *, device: Any, seed: int | None,
                       batch_size: int) -> xr.DataArray | xr.Dataset:
        """Per-chunk forecast of a dask-backed initial state (chunks along state dims only).

        Runs through :func:`xsciml.parallel.apply_model`: the model enters the graph once
        and is cached per worker; one task per chunk of the state dims. What depends on the
        grid only (the encoder's points, the decoding target) is computed here once; each
        task runs the array-level hooks on its chunk (:meth:`_forecast_arrays`).
        """
        from ...parallel import apply_model, check_core_chunks

        v0 = ds[self.variables[0]]
        sdims = space_dims(ds, self.space, v0.dims)
        if target is not None:
            raise ValueError("a dask-backed initial state is forecast on its own grid; call "
                             ".compute() first to decode on another target")
        das = [check_core_chunks(ds[v], sdims, argname=f"initial-state variable {v!r}")
               for v in self.variables]
        bdims = [d for d in v0.dims if d not in sdims]
        context = self._grid_context(ds)
        tp = self._target(ds)
        nlead = len(offsets)
        inputs = [d.transpose(*bdims, *sdims) for d in das]
        core = [list(sdims)] * len(das)
        with_time = bool(cast(_LatentModule, self.module).dynamics.periods)
        if with_time:  # forced dynamics: each state's initial time travels with its chunk
            t = self._state_times(ds, bdims)  # a clear error here, not in a task
            inputs.append(t.chunk({d: das[0].chunksizes[d] for d in bdims if d in das[0].chunksizes})
                          if das[0].chunks is not None else t)
            core.append([])
        out = apply_model(
            _forecast_kernel, self, *inputs,
            input_core_dims=core,
            output_core_dims=[["lead", *sdims]] * len(das),
            output_dtypes=[np.float32] * len(das), output_sizes={"lead": nlead}, device=device,
            kwargs={"sdims": list(sdims), "with_time": with_time, "offsets": offsets,
                    "context": context, "target": tp, "options": options, "seed": seed,
                    "batch_size": batch_size},
        )
        outs = list(out) if isinstance(out, tuple) else [out]
        extra = self._forecast_attrs(options, None)
        res = xr.Dataset()
        for name, da in zip(self.variables, outs, strict=True):
            da = da.assign_coords(lead=("lead", lead_coord))
            da.attrs = {**self._output_attrs(name, "forecast"), **extra}
            res[name] = da.transpose(*bdims, "lead", *sdims)
        res = res.assign_coords({k: c for k, c in ds.coords.items()
                                 if c.dims and set(c.dims) <= set(bdims) | set(sdims)
                                 and k not in res.coords})
        if self.time in ds.coords and set(ds[self.time].dims) <= set(bdims):
            t0 = ds[self.time].compute()
            res = res.assign_coords(valid_time=((*t0.dims, "lead"), self.clock.add(t0.values, offsets)))
        return res[self.variables[0]] if len(self.variables) == 1 else res

    def _forecast_arrays(self, arrays: list[np.ndarray], context: Any, tp: TargetPoints,
                         offsets: np.ndarray, t0: np.ndarray | None, options: dict[str, Any], *,
                         sdims: Sequence[Hashable], device: Any, seed: int | None,
                         batch_size: int) -> list[np.ndarray]:
        """The forecast of one chunk of states, on arrays: ``arrays`` (one per variable)
        ``[n, *grid]`` over ``sdims`` -> float32 ``[n, lead, *grid]`` per variable.

        ``t0``: the states' initial times (forced dynamics), else None.
        """
        states = self._block_states(arrays, context)
        codes0 = self._encode_states(states, options, device=device, seed=seed, progress=False,
                                     batch_size=batch_size)
        t0f = None if t0 is None else self.clock.to_float(np.asarray(t0).reshape(-1))
        codes = self._integrate(codes0, offsets, device, options, t0f)
        vals = self._decode_tensor(codes.reshape(-1, self.latent_dim), tp, device, batch_size)
        vals = vals.reshape(len(arrays[0]), len(offsets), *vals.shape[1:])
        fields = self._on_grid_of(vals, tp, sdims)
        return self._finish_block(fields, arrays, codes0, tp, sdims, options, device=device,
                                  batch_size=batch_size)

    @staticmethod
    def _on_grid_of(vals: Tensor, tp: TargetPoints, sdims: Sequence[Hashable]) -> list[np.ndarray]:
        """Decoded values ``[..., P, C]`` at the target's points back on its grid: float32
        ``[..., *grid]`` over ``sdims`` per variable, NaN where a coordinate is NaN."""
        from ..._utils import to_numpy

        lay = tp.layout
        perm = [lay.dims.index(d) for d in sdims]
        out = []
        for j in range(vals.shape[-1]):
            v = to_numpy(vals[..., j])
            lead = v.shape[:-1]
            if lay.valid is None:
                full = v.astype(np.result_type(v.dtype, np.float32), copy=False).reshape(lead + lay.shape)
            else:
                full = np.full(lead + (lay.size,), np.nan, dtype=np.result_type(v.dtype, np.float32))
                full[..., lay.valid] = v
                full = full.reshape(lead + lay.shape)
            axes = [*range(len(lead)), *(len(lead) + p for p in perm)]
            out.append(full.transpose(axes).astype(np.float32))
        return out

    # ------------------------------------------------------------------ evaluation
    def observed_mask(self, target: xr.Dataset | xr.DataArray) -> xr.DataArray:
        """Boolean mask of the points of ``target`` observed during training ("In-s").

        A point is In-s when it coincides (to 1e-6 of the domain size) with a training
        point that was observed at least once.
        """
        from scipy.spatial import cKDTree

        ds = target if isinstance(target, xr.Dataset) else target.to_dataset(
            name=target.name if target.name is not None else "_t")
        sdims = space_dims(ds, self.space, [])
        vals = space_values(ds, self.space, sdims)
        pts = np.stack([vals[n] for n in self.space], -1)
        ref = self.train_points[self.train_observed]
        span = np.ptp(self.train_points, axis=0) if len(self.train_points) else np.ones(len(self.space))
        scale = np.where(span > 0, span, 1.0)
        hit = np.zeros(len(pts), dtype=bool)
        if len(ref):
            ok = np.all(np.isfinite(pts), axis=1)
            d, _ = cKDTree(ref / scale).query(pts[ok] / scale, k=1)
            hit[ok] = d < 1e-6
        shape = [ds.sizes[d] for d in sdims]
        coords = {k: c.variable for k, c in ds.coords.items() if c.dims and set(c.dims) <= set(sdims)}
        return xr.DataArray(hit.reshape(shape), dims=tuple(sdims), coords=coords, name="observed")

    def _score(self, ds_truth: xr.Dataset | xr.DataArray, n_frames_train: int | None,
               observed: xr.DataArray | None, forecast_kw: dict[str, Any], *, device: Any,
               seed: int | None, progress: bool | None, attrs: dict[str, Any],
               members: int | None = None) -> xr.Dataset:
        """The In-t / Out-t × In-s / Out-s table of ``score`` (``forecast_kw``: the
        subclass's encoding options; ``attrs``: what the table records of them); with
        ``members``, the ensemble's scores by time as well."""
        members = check_positive_int(members, "members", allow_none=True)
        if members is not None and members < 2:
            raise ValueError(f"members must be at least 2 to score an ensemble, got {members}")
        ds = self._init_dataset(ds_truth, "truth")
        if self.time not in ds.dims:
            raise ValueError(f"the truth must have a {self.time!r} dimension (whole trajectories)")
        nt = int(ds.sizes[self.time])
        if n_frames_train is None:
            n_frames_train = int(self.info.get("n_frames_train", nt))
        if not 0 < int(n_frames_train) <= nt:
            raise ValueError(f"n_frames_train must be in [1, {nt}], got {n_frames_train}")
        n_frames_train = int(n_frames_train)
        if observed is None:
            observed = self.observed_mask(ds)
        observed = observed.astype(bool)
        t = ds[self.time].values
        if self.clock.kind == "numeric":
            lead = t.astype(np.float64) - float(t[0])
        else:
            lead = self.clock.elapsed(t)
        init = ds[self.variables].isel({self.time: 0}).where(observed)
        fc = self._on_truth_times(self.forecast(init, lead=lead, target=ds, **forecast_kw, device=device,
                                                seed=seed, progress=progress), ds)
        sdims = list(observed.dims)
        horizon = xr.DataArray(np.arange(nt) < n_frames_train, dims=self.time)
        rows = []
        for v in self.variables:
            truth = ds[v].astype(np.float64)
            pred = fc[v].transpose(*truth.dims)
            err = (pred - truth) ** 2
            den = (truth - truth.mean(sdims)) ** 2
            valid = truth.notnull()
            table_mse = np.full((2, 3), np.nan)
            table_rel = np.full((2, 3), np.nan)
            for i, hmask in enumerate((horizon, ~horizon)):
                for j, smask in enumerate((observed, ~observed, xr.ones_like(observed))):
                    sel = valid & hmask & smask
                    n = int(sel.sum())
                    if n == 0:
                        continue
                    e = float(err.where(sel).sum())
                    table_mse[i, j] = e / n
                    dsum = float(den.where(sel).sum())
                    table_rel[i, j] = e / dsum if dsum > 0 else np.nan
            rows.append((table_mse, table_rel))
        coords = {"horizon": ["In-t", "Out-t"], "grid": ["In-s", "Out-s", "all"]}
        if len(self.variables) == 1:
            mse, rel = rows[0]
            out = xr.Dataset({"mse": (("horizon", "grid"), mse), "rel_mse": (("horizon", "grid"), rel)},
                             coords=coords)
        else:
            coords["variable"] = self.variables
            out = xr.Dataset({"mse": (("variable", "horizon", "grid"), np.stack([r[0] for r in rows])),
                              "rel_mse": (("variable", "horizon", "grid"), np.stack([r[1] for r in rows]))},
                             coords=coords)
        out["mse"].attrs = {"long_name": "mean squared error"}
        out["rel_mse"].attrs = {"long_name": "relative MSE: sum err^2 / sum (truth - spatial mean)^2"}
        out.attrs = {**self._provenance(), "n_frames_train": n_frames_train,
                     "observed_fraction": float(observed.mean()), **attrs}
        if members is not None:
            out = out.merge(self._ensemble_table(init, lead, ds, members, forecast_kw, device=device,
                                                 seed=seed, progress=progress,
                                                 deterministic=fc), combine_attrs="override")
            out.attrs["members"] = members
        return out

    def _ensemble_table(self, init: xr.Dataset, lead: Any, ds: xr.Dataset, members: int,
                        forecast_kw: dict[str, Any], *, device: Any, seed: int | None,
                        progress: bool | None, deterministic: xr.Dataset) -> xr.Dataset:
        """CRPS, spread, spread–skill and rank histogram by time of a ``members``
        ensemble from the first frames (:func:`xsciml.metrics.ensemble_scores`, over
        trajectories and points), with the deterministic forecast's RMSE and MAE."""
        from ...metrics import ensemble_scores

        ens = self._on_truth_times(self.forecast(init, lead=lead, target=ds, members=members, **forecast_kw,
                                                 device=device, seed=seed, progress=progress), ds)
        tables = []
        for v in self.variables:
            truth = ds[v].astype(np.float64)
            red = [d for d in truth.dims if d != self.time]
            tables.append(ensemble_scores(ens[v].transpose("member", *truth.dims), truth, "member", red,
                                          deterministic=deterministic[v].transpose(*truth.dims), seed=seed))
        if len(tables) == 1:
            table = tables[0]
        else:
            table = xr.concat(tables, dim=xr.DataArray(self.variables, dims="variable"))
        return table.rename({"rmse": "ensemble_rmse", "mae": "ensemble_mae"})

    def _on_truth_times(self, fc: xr.DataArray | xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
        """A forecast from the first frames of ``ds`` to all its times, on ``ds``'s time axis."""
        fc = fc if isinstance(fc, xr.Dataset) else fc.to_dataset()
        fc = fc.drop_vars("valid_time", errors="ignore").rename({"lead": self.time})
        return fc.assign_coords({self.time: ds[self.time].values})


def _forecast_kernel(model: LatentForecaster, *blocks: np.ndarray, device: Any, sdims: list[Hashable],
                     with_time: bool, offsets: np.ndarray, context: Any, target: TargetPoints,
                     options: dict[str, Any], seed: int | None, batch_size: int) -> Any:
    """Dask task body of a lazy forecast: blocks ``[..., *space]`` -> ``[..., lead, *space]``.

    With ``with_time`` the last block holds the states' initial times ``[...]``.
    """
    times = blocks[-1] if with_time else None
    blocks = blocks[:-1] if with_time else blocks
    nsp = len(sdims)
    loop_shape = blocks[0].shape[: blocks[0].ndim - nsp]
    n = int(np.prod(loop_shape)) if loop_shape else 1
    if n == 0:
        empty = tuple(np.zeros((*loop_shape, len(offsets), *b.shape[-nsp:]), np.float32) for b in blocks)
        return empty if len(empty) > 1 else empty[0]
    arrays = [np.asarray(b, dtype=np.float64).reshape(n, *b.shape[-nsp:]) for b in blocks]
    t0 = None if times is None else np.asarray(times).reshape(n)
    # encoding optimises codes by gradient: leave the inference mode of the task runner
    with torch.inference_mode(False), torch.enable_grad():
        fields = model._forecast_arrays(arrays, context, target, offsets, t0, options, sdims=sdims,
                                        device=device, seed=seed, batch_size=batch_size)
    outs = [f.reshape(*loop_shape, *f.shape[1:]) for f in fields]
    return tuple(outs) if len(outs) > 1 else outs[0]


def _warn_long_leads(refs: References, lead_s: np.ndarray) -> None:
    """Warn where leads go well beyond the longest validated one."""
    assert refs.lead_grid is not None
    longest = float(refs.lead_grid[-1])
    if lead_s.max() > 1.5 * longest:
        import warnings

        warnings.warn(f"leads up to {lead_s.max() / 3600:.4g} h go beyond the longest validated "
                      f"lead ({longest / 3600:.4g} h, the validation period's reach): the weights "
                      "of that lead are used there", UserWarning, stacklevel=4)


def _combined_note(refs: References, lead_s: np.ndarray, stats: tuple[np.ndarray, ...] | None,
                   ens: bool) -> str:
    """The ``xsciml_combined`` attribute: the weights by lead, and what updated them."""
    w = refs.lead_weights(lead_s)
    note = "weights by lead: " + "; ".join(f"{nm} " + "/".join(f"{x:.2f}" for x in w[k])
                                           for k, nm in enumerate(MEMBERS))
    if stats is None:
        return note
    used = (stats[1] > 0).sum(0)
    return (f"{note}, updated for each initial time with the forecasts from {int(stats[2].size)} recent states "
            f"verified in the {refs.validation['span'] / 86400:.4g} days before it (up to "
            f"{int(used.max(initial=0))} at a lead)" + ("; the spread calibrated on the same" if ens else ""))
