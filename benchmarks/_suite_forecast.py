"""Benchmark suite, forecast section: dynamics models with default settings against simple references.

Every case fits ``xsciml.models.fit_dynamics(data, var, space=..., sample_dim=...,
train_until=...)`` with **the library's defaults** (only the data are described: the
space coordinates, the sample dimension, the end of the training period) and forecasts
from every initial time of the held-out period. The references a forecaster would try
first are recomputed in the same run on the same initial times (:mod:`xsciml.baselines`),
from the training period only:

* ``persistence`` -- the initial state at every lead;
* ``hour clim.`` -- the hour-of-day climatology of the training period (hourly data);
* ``train mean`` -- the mean of the training period (the climatology of a record too
  short for a calendar cycle);
* ``damped anom.`` -- climatology plus the initial anomaly damped by its lag correlation
  in the training period (``anomaly_persistence(..., by="hour", damping="fit")``: about
  the hour-of-day climatology for hourly data, about the training mean for daily data,
  whose frames all share one hour).

Cases (real data from ``../shared/data``; a missing file skips its case):

* ``era5_uk`` -- ERA5 2 m temperature over the UK, hourly 33 x 49, March 2019: train
  before 2019-03-24, leads 1, 6, 24, 48, 72 h from every 6-hourly initial time of the
  last week;
* ``tasmax_canesm2`` / ``tasmax_hadgem2`` -- daily maximum temperature on a 10 km
  36 x 36 grid from CanESM2 (``noleap`` calendar) and HadGEM2-CC (``360_day``), 2095:
  train on the first 300 days, leads 1-10 days from every later day;
* ``tcw_global`` -- total column water, global 2.5 deg daily (73 x 144, July 2002;
  poles and the date line): train on the first 24 days, leads 1-5 days from every later day.

Each lead is scored on the initial times whose verifying frame is in the record (the
column ``n``), the same initial times for every method. RMSE per lead, in the data's
units, over all grid points where the truth is finite, of:

* ``default`` -- ``model.forecast(init, lead=leads)``, the library's default forecast;
* ``default (recent)`` -- ``model.forecast(init, lead=leads, recent=record)``: the whole
  observed record is passed, and each initial time's combination weights are refitted
  with the forecasts verified before it;
* ``learned`` -- ``model.forecast(init, lead=leads, combine=False)``, the learned model
  alone;
* the references above;

and, for the ensemble ``model.forecast(init, lead=leads, members=16)``, the CRPS
(:func:`xsciml.metrics.crps_ensemble`) against the MAE of the default forecast (``MAE``), and the
spread-skill ratio ``sqrt(mean ensemble variance) * sqrt((N + 1) / N) / RMSE(ensemble
mean)`` (unbiased variance over the ``N`` members; 1 for a reliable ensemble); the same
two for ``model.forecast(init, lead=leads, members=16, recent=record)`` (``(recent)``
columns: weights and spread from the forecasts verified before each initial time). A
forecast option the installed model does not have is reported as ``n/a`` (without
``combine``, the default forecast is the learned model alone and is scored as
``learned``).

Checks, printed as columns: ``ratio`` = default RMSE / best reference RMSE per (case,
lead) (the learned model's where the default is n/a) and whether it is <= 1.00; CRPS <
MAE; spread-skill within 0.7-1.3. The summary gives, per case, the fit's wall-clock and
CPU seconds, the fraction of leads with ratio <= 1.00 and the largest ratio.

Synthetic cases, the In-t / Out-t tables of ``dino_heat.py`` and ``dino_ns.py`` with
``fit_dynamics`` defaults: ``heat`` (64 x 64 periodic heat equation, 64 training / 16
test trajectories, 20 frames of which 10 train) and ``navier_stokes`` (64 x 64 vorticity,
32 / 8 trajectories, 20 frames of which 10 train); MSE and relative MSE
(``Σ err² / Σ (truth − spatial mean)²``) of forecasts from the first frame over the
training horizon (In-t) and beyond it (Out-t), with the zero and persistence references.

``--quick`` is a smoke run: coarser grids, shorter records, few initial times, small
synthetic sets, and 20 optimiser steps (the only training option ever given, and only
there). Times are wall-clock and process CPU seconds on ``--threads`` torch threads.

Usage::

    python benchmarks/_suite_forecast.py --quick
    python benchmarks/_suite_forecast.py --cases era5_uk tcw_global
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from _common import BENCH_DIR, DATA_DIR, make_parser, print_table, relative_mse

from xsciml import baselines as bl
from xsciml.metrics import crps_ensemble
from xsciml.models import fit_dynamics

MEMBERS = 16
#: the training option of ``--quick`` runs (a full run gives none)
QUICK_FIT: dict[str, Any] = {"steps": 20}
SPREAD_SKILL_BAND = (0.7, 1.3)
REAL_CASES = ("era5_uk", "tasmax_canesm2", "tasmax_hadgem2", "tcw_global")
SYNTHETIC_CASES = ("heat", "navier_stokes")
CASES = REAL_CASES + SYNTHETIC_CASES
NA = "n/a"


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One forecast problem: a single trajectory, its training period and the initial times."""

    name: str
    description: str
    data: xr.DataArray
    space: tuple[str, str]
    train_until: Any
    starts: np.ndarray
    leads: np.ndarray
    lead_labels: list[str]
    diurnal: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


def _coarsen(da: xr.DataArray, space: tuple[str, ...], stride: int) -> xr.DataArray:
    return da.isel({d: slice(None, None, stride) for d in space}) if stride > 1 else da


def _era5(quick: bool) -> Case:
    space = ("latitude", "longitude")
    da = xr.open_dataset(DATA_DIR / "era5_t2m_uk_2019-03_hourly.nc")["t2m"]
    split = np.datetime64("2019-03-24T00", "ns")
    hours = (1, 6, 24) if quick else (1, 6, 24, 48, 72)
    if quick:
        da = _coarsen(da.sel(time=slice("2019-03-21T00", "2019-03-26T00")), space, 3)
    da = da.load()
    starts = da.time.sel(time=slice(split, None)).values[::6]
    if quick:
        starts = starts[:4]
    return Case("era5_uk", f"ERA5 UK t2m (K), hourly {da.sizes['latitude']}x{da.sizes['longitude']}, "
                f"train {'2019-03-21 to 03-23' if quick else '< 2019-03-24'}", da, space,
                split - np.timedelta64(1, "h"), starts,
                np.array(hours, "timedelta64[h]").astype("timedelta64[ns]"), [f"{h} h" for h in hours],
                diurnal=True)


def _tasmax(model: str, quick: bool) -> Case:
    space = ("lat", "lon")
    path = next(DATA_DIR.glob(f"cmip/tasmax_day_{model}_*_2095.nc"), None)
    if path is None:
        raise FileNotFoundError(f"no {DATA_DIR}/cmip/tasmax_day_{model}_*_2095.nc")
    ds = xr.open_dataset(path, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    da = ds.drop_vars(["time_vectors", "ts"], errors="ignore")["tasmax"]
    n_train = 300
    days = 10
    period = f"the first {n_train} days"
    if quick:
        da = _coarsen(da.isel(time=slice(n_train - 60, n_train + 16)), space, 4)
        period = f"days {n_train - 59}-{n_train}"
        n_train = 60
    da = da.load()
    starts = da.time.values[n_train:-1]
    if quick:
        starts = starts[:5]
    cal = da.time.dt.calendar
    label = "CanESM2" if model == "CanESM2" else "HadGEM2-CC"
    return Case(f"tasmax_{'canesm2' if model == 'CanESM2' else 'hadgem2'}",
                f"{label} tasmax (K), daily ({cal}) {da.sizes['lat']}x{da.sizes['lon']}, "
                f"train on {period}", da, space, da.time.values[n_train - 1], starts,
                np.arange(1, days + 1).astype("timedelta64[D]").astype("timedelta64[ns]"),
                [f"{d} d" for d in range(1, days + 1)])


def _tcw(quick: bool) -> Case:
    space = ("latitude", "longitude")
    da = xr.open_dataset(DATA_DIR / "tcw_pyinterp_grid3d.nc")["tcw"]
    if quick:
        da = _coarsen(da, space, 4)
    da = da.load()
    n_train = 24
    days = 5
    return Case("tcw_global", f"tcw global (kg m-2), daily {da.sizes['latitude']}x{da.sizes['longitude']} "
                f"(sphere), train on the first {n_train} days", da, space, da.time.values[n_train - 1],
                da.time.values[n_train:-1],
                np.arange(1, days + 1).astype("timedelta64[D]").astype("timedelta64[ns]"),
                [f"{d} d" for d in range(1, days + 1)])


BUILDERS: dict[str, Callable[[bool], Case]] = {
    "era5_uk": _era5,
    "tasmax_canesm2": lambda q: _tasmax("CanESM2", q),
    "tasmax_hadgem2": lambda q: _tasmax("HadGEM2-CC", q),
    "tcw_global": _tcw,
}


# --------------------------------------------------------------------------- references
def training_mean(obs: xr.DataArray, starts: np.ndarray, leads: np.ndarray, history: xr.DataArray
                  ) -> xr.DataArray:
    """The training period's mean at every initial time and lead, in the references' layout."""
    like = bl.persistence(obs, starts, leads)
    mean = history.mean("time")
    return (xr.zeros_like(like) + mean).transpose(*like.dims).assign_attrs(
        like.attrs, xsciml_reference="training mean")


def references(case: Case) -> dict[str, xr.DataArray]:
    """The reference forecasts of ``case``, from its training period only."""
    obs = case.data
    history = obs.sel(time=slice(None, case.train_until))
    hours = np.unique(history.time.dt.hour.values)
    if not case.diurnal and hours.size != 1:
        raise ValueError(f"{case.name}: daily frames at several hours {hours.tolist()}; the "
                         "hour-grouped anomaly persistence would not be about the training mean")
    out = {"persistence": bl.persistence(obs, case.starts, case.leads)}
    if case.diurnal:
        out["hour clim."] = bl.climatology(obs, case.starts, case.leads, history=history, by="hour")
    out["train mean"] = training_mean(obs, case.starts, case.leads, history)
    out["damped anom."] = bl.anomaly_persistence(obs, case.starts, case.leads, history=history,
                                                 by="hour", damping="fit")
    return out


# --------------------------------------------------------------------------- forecasts
def forecasts(model: Any, init: xr.Dataset, leads: np.ndarray, members: int = MEMBERS,
              record: xr.Dataset | None = None) -> tuple[dict[str, xr.DataArray | None], dict[str, str]]:
    """The default forecast, the learned model alone and ensembles, as far as the model offers them.

    ``record``: the observed record, given as ``recent=`` to a second ensemble where the
    model's ``forecast`` takes it. Returns the forecasts (``None`` where the model's
    ``forecast`` lacks the option) and, for each missing one, why.
    """
    params = inspect.signature(model.forecast).parameters
    out: dict[str, xr.DataArray | None] = {}
    why: dict[str, str] = {}

    def one(**kw: Any) -> xr.DataArray:
        fc = model.forecast(init, lead=leads, **kw)
        return fc[model.variables[0]] if isinstance(fc, xr.Dataset) else fc

    if "combine" in params:
        out["default"] = one()
        out["learned"] = one(combine=False)
    else:
        out["default"] = None
        why["default"] = "forecast() has no combine= option: its forecast is the learned model alone"
        out["learned"] = one()
    if "members" in params:
        out["ensemble"] = one(members=members)
    else:
        out["ensemble"] = None
        why["ensemble"] = "forecast() has no members= option"
    out["default_recent"] = out["ensemble_recent"] = None
    if record is not None and "recent" in params:
        out["default_recent"] = one(recent=record)
        if out["ensemble"] is not None:
            out["ensemble_recent"] = one(members=members, recent=record)
    elif record is not None:
        why["default_recent"] = why["ensemble_recent"] = "forecast() has no recent= option"
    return out, why


# --------------------------------------------------------------------------- scores
def _arr(da: xr.DataArray, dims: tuple[str, ...], starts: np.ndarray | None = None) -> np.ndarray:
    """``da`` as float64 in the order ``dims``; with ``starts``, checked to hold those initial times in order."""
    if starts is not None and "time" in da.coords and not np.array_equal(np.asarray(da["time"].values), starts):
        raise ValueError("the forecast's initial times are not the requested ones, in order")
    return np.asarray(da.transpose(*dims).values, dtype=np.float64)


def per_lead(err: np.ndarray, mask: np.ndarray, power: int = 2) -> np.ndarray:
    """``mean(|err|**power)`` per lead (axis 1) over the points where ``mask``; NaN forecasts stay NaN."""
    e = np.where(mask, np.abs(err) ** power, 0.0)
    axes = tuple(i for i in range(err.ndim) if i != 1)
    return e.sum(axes) / mask.sum(axes)


def ensemble_scores(ens: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """CRPS, ensemble-mean RMSE and spread-skill ratio per lead; ``ens`` is ``(member, start, lead, ...)``."""
    n = ens.shape[0]
    dims = ("member", "start", "lead", *[f"s{i}" for i in range(truth.ndim - 2)])
    t = np.where(mask, truth, np.nan)
    crps = crps_ensemble(xr.DataArray(ens, dims=dims), xr.DataArray(t, dims=dims[1:]), sample_dim="member",
                         dims=[d for d in dims[1:] if d != "lead"]).values
    mean_rmse = np.sqrt(per_lead(ens.mean(0) - truth, mask))
    spread = np.sqrt(per_lead(ens.var(0, ddof=1), mask, power=1)) * math.sqrt((n + 1) / n)
    return {"crps": crps, "mean_rmse": mean_rmse, "spread_skill": spread / mean_rmse}


def _num(x: Any) -> Any:
    return NA if x is None else float(x)


def run_real(case: Case, quick: bool, seed: int) -> dict[str, Any]:
    """Fit, forecast and score one real case; returns its rows (one per lead) and details."""
    var = str(case.data.name)
    ds = case.data.to_dataset(name=var)
    n_train = int(case.data.time.to_index().get_indexer([case.train_until])[0]) + 1
    options = QUICK_FIT if quick else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        w0, c0 = time.perf_counter(), time.process_time()
        model = fit_dynamics(ds, var, space=case.space, sample_dim=None, train_until=case.train_until,
                             seed=seed, **options)
        fit_wall, fit_cpu = time.perf_counter() - w0, time.process_time() - c0
        w0 = time.perf_counter()
        fc, missing = forecasts(model, ds.sel(time=case.starts), case.leads, record=ds)
        fc_wall = time.perf_counter() - w0
    refs = references(case)
    dims = ("time", "lead", *case.space)
    truth_da = bl.verification(case.data, refs["persistence"])
    truth = _arr(truth_da, dims)
    mask = np.isfinite(truth)
    n_starts = mask.reshape(*mask.shape[:2], -1).any(-1).sum(0)
    rmse = {k: np.sqrt(per_lead(_arr(v, dims) - truth, mask)) for k, v in refs.items()}
    best_ref = np.min(np.stack(list(rmse.values())), axis=0)
    ours = {k: (None if fc.get(k) is None else np.sqrt(per_lead(_arr(fc[k], dims, case.starts) - truth, mask)))
            for k in ("default", "learned", "default_recent")}
    scored = "default" if ours["default"] is not None else "learned"
    ratio = ours[scored] / best_ref
    # MAE of the deterministic default forecast (the learned model's when forecast() has no combine=)
    mae = per_lead(_arr(fc[scored], dims) - truth, mask, power=1)
    ens = None
    if fc["ensemble"] is not None:
        e = fc["ensemble"]
        ens = ensemble_scores(_arr(e, ("member", *dims), case.starts), truth, mask)
    ens_r = None
    if fc.get("ensemble_recent") is not None:
        ens_r = ensemble_scores(_arr(fc["ensemble_recent"], ("member", *dims), case.starts), truth, mask)
    rows = []
    for j, lead in enumerate(case.lead_labels):
        row: dict[str, Any] = {"case": case.name, "lead": lead, "n": int(n_starts[j]),
                               "default": _num(None if ours["default"] is None else ours["default"][j]),
                               "default (recent)": _num(None if ours["default_recent"] is None
                                                        else ours["default_recent"][j]),
                               "learned": float(ours["learned"][j])}
        row.update({k: float(v[j]) for k, v in rmse.items()})
        row["best ref."] = float(best_ref[j])
        row["ratio"] = float(ratio[j])
        row["<=1.00"] = bool(ratio[j] <= 1.0)
        row["ratio (recent)"] = NA if ours["default_recent"] is None else float(ours["default_recent"][j] / best_ref[j])
        row["CRPS"] = NA if ens is None else float(ens["crps"][j])
        row["MAE"] = float(mae[j])
        row["CRPS<MAE"] = NA if ens is None else bool(ens["crps"][j] < mae[j])
        row["spread/skill"] = NA if ens is None else float(ens["spread_skill"][j])
        lo, hi = SPREAD_SKILL_BAND
        row["in 0.7-1.3"] = NA if ens is None else bool(lo <= ens["spread_skill"][j] <= hi)
        row["CRPS (recent)"] = NA if ens_r is None else float(ens_r["crps"][j])
        row["spread/skill (recent)"] = NA if ens_r is None else float(ens_r["spread_skill"][j])
        row["in band (recent)"] = NA if ens_r is None else bool(lo <= ens_r["spread_skill"][j] <= hi)
        rows.append(row)
    detail = {"description": case.description, "sizes": {str(k): int(v) for k, v in case.data.sizes.items()},
              "n_train_frames": n_train, "n_starts": len(case.starts), "train_until": str(case.train_until),
              "fit_options": options, "fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu, "forecast_wall_s": fc_wall,
              "model": repr(model), "ratio_of": scored, "missing": missing,
              "warnings": sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)})}
    return {"rows": rows, "detail": detail}


# --------------------------------------------------------------------------- synthetic
def _synthetic_data(name: str, quick: bool, seed: int) -> tuple[xr.Dataset, xr.Dataset, str, int, str]:
    if name == "heat":
        from xsciml.datasets import heat

        n_train, n_test, n_frames, n_in = (4, 2, 20, 10) if quick else (64, 16, 20, 10)
        kw = dict(diffusivity=0.1, dt=0.25, n_frames=n_frames, alpha=2.5, tau=7.0)
        train = heat(n_train, 64, seed=seed, **kw)
        test = heat(n_test, 64, seed=10_000 + seed, **kw)
        desc = (f"heat equation 64x64, {n_train} train / {n_test} test trajectories, "
                f"{n_frames} frames ({n_in} train)")
        return train.isel(time=slice(0, n_in)), test, "u", n_in, desc
    from dino_ns import _data  # the Navier-Stokes benchmark's data (cached netCDF for the full size)

    n_train, n_test, n_frames, n_in, step = (4, 2, 3, 2, 1e-2) if quick else (32, 8, 20, 10, 1e-3)
    train = _data(n_train, 64, seed, n_frames, step, not quick)
    test = _data(n_test, 64, 10_000 + seed, n_frames, step, not quick)
    desc = (f"Navier-Stokes vorticity 64x64, {n_train} train / {n_test} test trajectories, "
            f"{n_frames} frames ({n_in} train)")
    return train.isel(time=slice(0, n_in)), test, "vorticity", n_in, desc


def run_synthetic(name: str, quick: bool, seed: int) -> dict[str, Any]:
    """The In-t / Out-t table of one synthetic case with ``fit_dynamics`` defaults."""
    train, test, var, n_in, desc = _synthetic_data(name, quick, seed)
    options = QUICK_FIT if quick else {}
    w0, c0 = time.perf_counter(), time.process_time()
    model = fit_dynamics(train, var, space=("y", "x"), sample_dim="trajectory", seed=seed, **options)
    fit_wall, fit_cpu = time.perf_counter() - w0, time.process_time() - c0
    ev = model.score(test, n_frames_train=n_in)
    rows = [{"case": name, "method": "xsciml (defaults)",
             "MSE In-t": float(ev["mse"].sel(horizon="In-t", grid="all")),
             "MSE Out-t": float(ev["mse"].sel(horizon="Out-t", grid="all")),
             "rel In-t": float(ev["rel_mse"].sel(horizon="In-t", grid="all")),
             "rel Out-t": float(ev["rel_mse"].sel(horizon="Out-t", grid="all"))}]
    u = test[var]
    into, out = slice(0, n_in), slice(n_in, None)
    for label, pred in (("zero", xr.zeros_like(u)), ("persistence", u.isel(time=0).broadcast_like(u))):
        err = (pred - u) ** 2
        rows.append({"case": name, "method": label, "MSE In-t": float(err.isel(time=into).mean()),
                     "MSE Out-t": float(err.isel(time=out).mean()),
                     "rel In-t": relative_mse(pred.isel(time=into), u.isel(time=into)),
                     "rel Out-t": relative_mse(pred.isel(time=out), u.isel(time=out))})
    best = min(r["rel Out-t"] for r in rows[1:])
    rows[0]["ratio Out-t"] = rows[0]["rel Out-t"] / best if best > 0 else None
    detail = {"description": desc, "fit_options": options, "fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu,
              "model": repr(model)}
    return {"rows": rows, "detail": detail}


# --------------------------------------------------------------------------- driver
def _summary_row(name: str, rows: list[dict[str, Any]], detail: dict[str, Any]) -> dict[str, Any]:
    ratios = [r["ratio"] for r in rows]
    crps_ok = [r["CRPS<MAE"] for r in rows if isinstance(r["CRPS<MAE"], bool)]
    ss_ok = [r["in 0.7-1.3"] for r in rows if isinstance(r["in 0.7-1.3"], bool)]
    ss_r = [r["in band (recent)"] for r in rows if isinstance(r.get("in band (recent)"), bool)]
    ratio_r = [r["ratio (recent)"] for r in rows if isinstance(r.get("ratio (recent)"), float)]
    return {"case": name, "fit s": detail["fit_wall_s"], "fit CPU s": detail["fit_cpu_s"],
            "ratio of": detail["ratio_of"], "leads": len(rows),
            "ratio<=1.00": sum(x <= 1.0 for x in ratios) / len(ratios), "max ratio": max(ratios),
            "max ratio (recent)": max(ratio_r) if ratio_r else NA,
            "CRPS<MAE": sum(crps_ok) / len(crps_ok) if crps_ok else NA,
            "spread/skill ok": sum(ss_ok) / len(ss_ok) if ss_ok else NA,
            "ok (recent)": sum(ss_r) / len(ss_r) if ss_r else NA}


def run(quick: bool, threads: int, seed: int, cases: list[str] | None) -> dict[str, Any]:
    """Run the forecast section; print its tables and return its rows, details and summary.

    Parameters
    ----------
    quick
        Smoke run (coarse grids, short records, 20 optimiser steps).
    threads
        Torch CPU threads.
    seed
        Seed of every fit.
    cases
        Case names to run (default all: :data:`CASES`).

    Returns
    -------
    dict with ``rows`` (one per real case and lead), ``synthetic`` (In-t / Out-t rows),
    ``cases`` (per-case details: sizes, fit times, missing forecast options, warnings),
    ``summary`` (one row per case) and ``overall``.

    Examples
    --------
    >>> out = run(quick=True, threads=1, seed=0, cases=["tcw_global"])  # doctest: +SKIP
    >>> out["summary"][0]["case"]  # doctest: +SKIP
    'tcw_global'
    """
    unknown = sorted(set(cases or ()) - set(CASES))
    if unknown:
        raise ValueError(f"unknown forecast case(s) {unknown}; choose from {list(CASES)}")
    wanted = list(cases) if cases else list(CASES)
    torch.set_num_threads(threads)
    os.environ.setdefault("XSCIML_PROGRESS", "0")
    rows: list[dict[str, Any]] = []
    synthetic: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    summary: list[dict[str, Any]] = []
    for name in wanted:
        if name in REAL_CASES:
            try:
                case = BUILDERS[name](quick)
            except FileNotFoundError as err:
                print(f"skipped {name}: {err}")
                continue
            out = run_real(case, quick, seed)
            rows += out["rows"]
            d = out["detail"]
            title = (f"{case.description}: RMSE by lead over {len(case.starts)} initial times "
                     f"(fit {d['fit_wall_s']:.0f} s wall, {d['fit_cpu_s']:.0f} s CPU"
                     f"{', ' + str(d['fit_options']) if d['fit_options'] else ', defaults'})")
            print_table([{k: v for k, v in r.items() if k != "case"} for r in out["rows"]], title=title,
                        floatfmt=".3f")
            for what, why in d["missing"].items():
                print(f"  {what}: n/a ({why})")
            summary.append(_summary_row(name, out["rows"], d))
        else:
            out = run_synthetic(name, quick, seed)
            synthetic += out["rows"]
            d = out["detail"]
            print_table(out["rows"], title=f"{d['description']}: forecast from frame 0 (fit "
                                           f"{d['fit_wall_s']:.0f} s wall, {d['fit_cpu_s']:.0f} s CPU)",
                        floatfmt=".3g")
            summary.append({"case": name, "fit s": d["fit_wall_s"], "fit CPU s": d["fit_cpu_s"],
                            "ratio of": "rel Out-t vs best of zero / persistence", "leads": None,
                            "ratio<=1.00": NA, "max ratio": out["rows"][0]["ratio Out-t"], "max ratio (recent)": NA,
                            "CRPS<MAE": NA, "spread/skill ok": NA, "ok (recent)": NA})
        details[name] = d
    overall: dict[str, Any] = {"quick": bool(quick), "threads": threads, "seed": seed}
    if rows:
        ratios = [r["ratio"] for r in rows]
        overall.update({"pairs": len(ratios), "fraction_ratio_le_1": sum(x <= 1.0 for x in ratios) / len(ratios),
                        "max_ratio": max(ratios)})
    if summary:
        print_table(summary, title="Forecast section: per case (ratio = default RMSE / best reference "
                                   "RMSE per lead; the learned model's where the default is n/a)",
                    floatfmt=".3g")
    if rows:
        print(f"(case, lead) pairs: {overall['pairs']}; ratio <= 1.00: {overall['fraction_ratio_le_1']:.0%}; "
              f"max ratio {overall['max_ratio']:.3f}", flush=True)
    return {"rows": rows, "synthetic": synthetic, "cases": details, "summary": summary, "overall": overall}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", nargs="*", default=None, help=f"run only these cases ({', '.join(CASES)})")
    parser.add_argument("--json", default=None,
                        help="where to write the results (default benchmarks/results/suite_forecast.json "
                             "for a full run, none for --quick)")
    args = parser.parse_args(argv)
    out = run(args.quick, args.threads, args.seed, args.cases)
    path = args.json or (None if args.quick else str(BENCH_DIR / "results" / "suite_forecast.json"))
    if path:
        path = os.path.abspath(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if args.cases and os.path.exists(path):  # a run of some cases updates them in the file
            with open(path) as fh:
                out = merge_results(json.load(fh), out)
        with open(path, "w") as fh:
            json.dump(out, fh, indent=1, default=str)
        print(f"wrote {path}")
    return 0


def merge_results(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``old`` results with the cases of ``new`` replaced or added (runs of a few cases at a time).

    Examples
    --------
    >>> old = {"rows": [{"case": "a", "ratio": 2.0}], "synthetic": [], "cases": {"a": {}},
    ...        "summary": [{"case": "a"}], "overall": {"quick": False}}
    >>> new = {"rows": [{"case": "b", "ratio": 0.5}], "synthetic": [], "cases": {"b": {}},
    ...        "summary": [{"case": "b"}], "overall": {"quick": False}}
    >>> merged = merge_results(old, new)
    >>> sorted(merged["cases"]), merged["overall"]["max_ratio"]
    (['a', 'b'], 2.0)
    """
    if bool(old.get("overall", {}).get("quick")) != bool(new["overall"]["quick"]):
        return new  # never mix quick and full results
    done = set(new["cases"])
    out: dict[str, Any] = {}
    for key in ("rows", "synthetic", "summary"):
        out[key] = [r for r in old.get(key, []) if r.get("case") not in done] + new[key]
    out["cases"] = {**{k: v for k, v in old.get("cases", {}).items() if k not in done}, **new["cases"]}
    overall = dict(new["overall"])
    ratios = [r["ratio"] for r in out["rows"]]
    if ratios:
        overall.update({"pairs": len(ratios), "fraction_ratio_le_1": sum(x <= 1.0 for x in ratios) / len(ratios),
                        "max_ratio": max(ratios)})
    out["overall"] = overall
    return out


if __name__ == "__main__":
    sys.exit(main())
