"""Benchmark suite: default settings on varied real and synthetic cases, in three sections.

* ``gap`` -- gap filling (this module, below);
* ``forecast`` -- dynamics models and their default forecasts against persistence,
  climatology and damped anomaly persistence, with ensembles (``_suite_forecast.py``,
  whose docs describe the cases and the scores; results in ``suite_forecast.json``);
* ``downscale`` -- debias + diffusion downscaling against EQM / QDM + bicubic and
  debias + bicubic (``_suite_downscale.py``; results in ``suite_downscale.json``).

Gap filling:

Every case is run with **the same call**, ``ds.where(observed).sciml.fit_field(var,
space=..., time=..., progress=False)`` (no per-case setting), and scored on the
withheld valid points; the classical interpolators a scientist would try first are
recomputed in the same run on the same masks:

* ``linear`` -- :func:`scipy.interpolate.griddata` per frame (lat/lon or y/x), the
  points outside the hull filled by ``nearest``;
* ``RBF`` -- :class:`scipy.interpolate.RBFInterpolator` thin-plate spline per frame,
  64 neighbours (on the unit sphere for global grids);
* ``space-time RBF`` -- the mean over frames interpolated once (thin-plate, smoothing
  1), plus a per-frame thin-plate RBF of each frame's residual from it;
* ``kriging`` -- per-frame Gaussian-process regression (scikit-learn
  ``GaussianProcessRegressor``, Matérn ν = 3/2 with one length per coordinate plus a
  white-noise term, ``normalize_y``), its kernel fitted per frame by maximum marginal
  likelihood on up to 200 of the frame's observations, then conditioned on up to 4000.

Scattered data (the drifters) have no frames: the RBF and the kriging then work in
space and time together (time in days). For a bounded variable
(:func:`xsciml.units.physical_bounds`: sea-ice concentration is 0 to 100 %) every
baseline's prediction is clipped to its range, as xsciml's mean is.

nRMSE = RMSE / std of the withheld truth (pooled over frames); ``ratio`` = xsciml's
nRMSE over the best baseline's; ``cov90`` the fraction of withheld points inside
xsciml's 90 % central interval. A baseline that cannot run on a case is reported as
``n/a`` with the reason in the JSON. Times are wall-clock seconds on this process's
torch threads (``--threads``, default 1).

Usage::

    python benchmarks/suite.py                 # every section, every case
    python benchmarks/suite.py --section gap   # one section: gap, forecast or downscale
    python benchmarks/suite.py --quick         # a smoke run of every section (coarse grids, few steps)
    python benchmarks/suite.py --section gap --cases nrcan10 grf_indep_short
    python benchmarks/suite.py --json results.json
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from _common import BENCH_DIR, DATA_DIR, Timer, make_parser, print_table

import xsciml  # noqa: F401  (registers the .sciml accessor)
from xsciml.metrics import as_dict
from xsciml.units import physical_bounds

NEIGHBORS = 64
SEED = 0
KRIG_FIT_POINTS = 200
KRIG_MAX_POINTS = 4000


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One gap-filling problem: the full data, which points are observed and withheld."""

    name: str
    description: str
    data: xr.DataArray
    observed: np.ndarray
    withheld: np.ndarray
    space: tuple[str, ...]
    time: str | None
    sphere: bool = False
    scattered: bool = False
    notes: dict[str, Any] = field(default_factory=dict)


def random_masks(values: np.ndarray, fraction: float, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``round(fraction * n_valid)`` random valid points of each frame (axis 0)."""
    rng = np.random.default_rng(seed)
    obs = np.zeros(values.shape, bool)
    for k in range(values.shape[0]):
        valid = np.flatnonzero(np.isfinite(values[k]).ravel())
        keep = rng.choice(valid, size=max(1, round(fraction * valid.size)), replace=False)
        flat = np.zeros(values[k].size, bool)
        flat[keep] = True
        obs[k] = flat.reshape(values[k].shape)
    return obs, np.isfinite(values) & ~obs


def blob_masks(values: np.ndarray, fraction: float, scale: float = 6.0, seed: int = SEED
               ) -> tuple[np.ndarray, np.ndarray]:
    """Cloud-like gaps: per frame, a smoothed white-noise field thresholded so that
    ``fraction`` of the valid points lie in clear patches (observed)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    obs = np.zeros(values.shape, bool)
    for k in range(values.shape[0]):
        noise = gaussian_filter(rng.standard_normal(values[k].shape), scale, mode="wrap")
        valid = np.isfinite(values[k])
        thr = np.quantile(noise[valid], 1 - fraction)
        obs[k] = valid & (noise >= thr)
    return obs, np.isfinite(values) & ~obs


def swath_masks(values: np.ndarray, width: int = 3, period: int = 12, seed: int = SEED
                ) -> tuple[np.ndarray, np.ndarray]:
    """Satellite-like swaths: diagonal stripes ``width`` pixels wide every ``period``
    pixels, shifted from frame to frame (observed fraction ``width / period``)."""
    rng = np.random.default_rng(seed)
    _, ny, nx = values.shape
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    obs = np.zeros(values.shape, bool)
    for k in range(values.shape[0]):
        shift = int(rng.integers(period))
        obs[k] = ((ii + jj // 2 + shift) % period) < width
    obs &= np.isfinite(values)
    return obs, np.isfinite(values) & ~obs


def _open(name: str, **kw: Any) -> xr.Dataset:
    return xr.open_dataset(DATA_DIR / name, **kw)


#: With ``--quick``: at most this many grid points per frame (every n-th row and column)
QUICK_POINTS = 1500
#: With ``--quick`` (and no ``--cases``): one case of each kind -- regional grid, global
#: grid on the sphere, curvilinear grid, scattered points, synthetic fields
QUICK_CASES = ("nrcan10", "tcw10", "siconc_random", "drifters", "grf_indep_short")


def _grid_case(name: str, description: str, da: xr.DataArray, masks: Callable, space: tuple[str, ...],
               sphere: bool = False, quick: bool = False) -> Case:
    if quick:
        dims = [d for d in da.dims if d != "time"]
        stride = max(1, math.ceil(math.sqrt(math.prod(da.sizes[d] for d in dims) / QUICK_POINTS)))
        da = da.isel({d: slice(None, None, stride) for d in dims})
    da = da.load().astype(np.float64)
    obs, held = masks(da.values)
    return Case(name, description, da, obs, held, space, "time", sphere)


def grf_frames(n_frames: int, tau: float, rho: float, size: int = 48, seed: int = SEED) -> xr.DataArray:
    """Matérn-3/2 Gaussian random fields (``alpha = 2.5``, inverse length ``tau`` on
    ``[-1, 1]^2``), AR(1) in time with lag-1 correlation ``rho`` (0: independent)."""
    base = xsciml.datasets.gaussian_random_field((size, size), n=n_frames, alpha=2.5, tau=tau,
                                                 seed=seed, dtype="float64")
    eps = base["u"].values
    frames = np.empty_like(eps)
    frames[0] = eps[0]
    for k in range(1, n_frames):
        frames[k] = rho * frames[k - 1] + math.sqrt(1 - rho * rho) * eps[k]
    dims = base["u"].dims
    da = xr.DataArray(frames, dims=("time",) + dims[1:],
                      coords={"time": np.arange(n_frames, dtype=float),
                              **{d: base[d].values for d in dims[1:]}}, name="u")
    return da


def build_cases(quick: bool) -> list[Callable[[], Case]]:
    """Case builders (lazy: the data are read when the case runs)."""

    def nt(full, short):
        return short if quick else full

    cases: list[Callable[[], Case]] = []

    def grid(*args: Any, **kw: Any) -> Case:
        return _grid_case(*args, quick=quick, **kw)

    def nrcan(frac):
        def make():
            da = _open("NRCAN_SECan_1981-2010.nc")["tg_mean"].isel(time=slice(0, nt(30, 2)))
            return grid(f"nrcan{int(frac * 100)}", f"NRCAN tg_mean, yearly, {frac:.0%} random",
                              da, lambda v: random_masks(v, frac), ("lat", "lon"))
        return make

    def era5(frac):
        def make():
            da = _open("era5_t2m_uk_2019-03_hourly.nc")["t2m"].isel(time=slice(-nt(168, 4), None))
            return grid(f"era5_{int(frac * 100)}", f"ERA5 UK t2m, hourly (last {da.sizes['time']} h), "
                              f"{frac:.0%} random", da, lambda v: random_masks(v, frac),
                              ("latitude", "longitude"))
        return make

    def tcw():
        da = _open("tcw_pyinterp_grid3d.nc")["tcw"].isel(time=slice(0, nt(31, 2)))
        return grid("tcw10", "tcw global 2.5 deg daily, 10 % random", da,
                          lambda v: random_masks(v, 0.10), ("latitude", "longitude"), sphere=True)

    def sic(kind):
        def make():
            da = _open("cmip/sic_SImon_CCCma-CanESM5_ssp245_r13i1p2f1_2020.nc")["siconc"]
            da = da.isel(time=slice(0, nt(12, 2)))
            masks = (lambda v: random_masks(v, 0.10)) if kind == "random" else (lambda v: blob_masks(v, 0.30))
            desc = "10 % random" if kind == "random" else "cloud-like gaps, 30 % observed in patches"
            return grid(f"siconc_{kind}", f"CMIP6 sea-ice conc., tripolar curvilinear, {desc}",
                              da, masks, ("latitude", "longitude"), sphere=True)
        return make

    def tas():
        da = _open("cmip/tas_Amon_CanESM2_rcp85_r1i1p1_200701-200712.nc")["tas"]
        da = da.isel(time=slice(0, nt(12, 2)))
        return grid("tas10", "CMIP5 tas, global Gaussian grid, monthly, 10 % random", da,
                          lambda v: random_masks(v, 0.10), ("lat", "lon"), sphere=True)

    def tasmax(kind):
        def make():
            da = _open("cmip/tasmax_day_CanESM2_rcp85_r1i1p1_na10kgrid_qm-moving-50bins-detrend_2095.nc",
                       decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))["tasmax"].isel(time=slice(0, nt(60, 3)))
            masks = (lambda v: random_masks(v, 0.10)) if kind == "random" else swath_masks
            desc = "10 % random" if kind == "random" else "satellite swaths, 25 % observed"
            return grid(f"tasmax_{kind}", f"CanESM2 tasmax 10 km, daily (noleap), {desc}",
                              da, masks, ("lat", "lon"))
        return make

    def drifters():
        ds = _open("aoml_drifters_pyinterp.nc")
        n = nt(17775, 1500)
        ds = ds.isel(obs=slice(0, n)).reset_index("obs", drop=True)
        ds = ds.set_coords(["lon", "lat", "time"])
        da = ds["ud"].load().astype(np.float64)
        rng = np.random.default_rng(SEED)
        held = np.zeros(da.size, bool)
        held[rng.choice(da.size, size=round(0.2 * da.size), replace=False)] = True
        held &= np.isfinite(da.values)
        obs = np.isfinite(da.values) & ~held
        return Case("drifters", "AOML drifters ud (scattered, Black Sea), 20 % withheld", da, obs, held,
                    ("lat", "lon"), "time", scattered=True)

    def grf(rho, tau, label):
        def make():
            da = grf_frames(nt(8, 2), tau, rho, size=nt(48, 24))
            obs, held = random_masks(da.values, 0.10)
            frames = 'independent frames' if rho == 0 else f'AR(1) rho={rho}'
            return Case(f"grf_{label}", f"Matérn-3/2 random fields, {frames}, "
                        f"length {1 / tau:.2f} of [-1, 1], 10 % random", da, obs, held, ("y", "x"), "time",
                        notes={"synthetic": True})
        return make

    cases += [nrcan(0.10), nrcan(0.02), era5(0.10), era5(0.02), tcw, sic("random"), sic("blobs"),
              tas, tasmax("random"), tasmax("swath"), drifters,
              grf(0.0, 5.0, "indep_long"), grf(0.0, 15.0, "indep_short"),
              grf(0.95, 5.0, "ar_long"), grf(0.95, 15.0, "ar_short")]
    return cases


# --------------------------------------------------------------------------- baselines
def _xyz(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    la, lo = np.deg2rad(lat), np.deg2rad(lon)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def _frame_points(case: Case) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point: frame index, planar coordinates, and interpolation coordinates (unit
    sphere for global grids)."""
    da = case.data
    if case.scattered:
        t = (da[case.time].values - da[case.time].values.min()) / np.timedelta64(1, "D")
        plane = np.column_stack([np.asarray(da[c].values, float) for c in case.space])
        interp = np.column_stack([plane, t])
        return np.zeros(da.size, int), plane, interp
    lat, lon = (np.asarray(da[n].values, float) for n in case.space)
    if lat.ndim == 1:  # 1-D coordinates of a regular grid
        lat, lon = np.meshgrid(lat, lon, indexing="ij")
    c = [lat.ravel(), lon.ravel()]
    plane = np.column_stack(c)
    interp = _xyz(plane[:, 0], plane[:, 1]) if case.sphere else plane
    nt = da.shape[0]
    frame = np.repeat(np.arange(nt), plane.shape[0])
    return frame, np.tile(plane, (nt, 1)), np.tile(interp, (nt, 1))


def baseline_linear(case, frame, plane, interp, vals, obs, held):
    from scipy.interpolate import griddata

    if case.scattered:
        raise ValueError("per-frame linear interpolation needs frames")
    out = np.full(held.sum(), np.nan)
    hpos = np.flatnonzero(held)
    for k in np.unique(frame[held]):
        o = obs & (frame == k)
        h = held & (frame == k)
        p = griddata(plane[o], vals[o], plane[h], method="linear")
        bad = ~np.isfinite(p)
        if bad.any():
            p[bad] = griddata(plane[o], vals[o], plane[h][bad], method="nearest")
        out[np.searchsorted(hpos, np.flatnonzero(h))] = p
    return out


def baseline_rbf(case, frame, plane, interp, vals, obs, held):
    """Per-frame thin-plate RBF (:func:`xsciml.interpolation.frame_rbf`: coincident
    points, e.g. a grid's poles on the sphere, enter once)."""
    from xsciml.interpolation import frame_rbf

    if case.scattered:
        raise ValueError("per-frame RBF needs frames (see space-time RBF)")
    return frame_rbf(interp[obs], vals[obs], frame[obs], interp[held], frame[held],
                     neighbors=NEIGHBORS)[0]


def _dedupe(p, v):
    """Coincident points once, with their mean value (to 1e-9: a pole's longitudes give
    unit-sphere points apart by rounding only)."""
    _, first, inverse = np.unique(np.round(p, 9), axis=0, return_index=True, return_inverse=True)
    return p[first], np.bincount(inverse.ravel(), weights=v) / np.bincount(inverse.ravel())


def baseline_space_time_rbf(case, frame, plane, interp, vals, obs, held):
    from scipy.interpolate import RBFInterpolator

    if not case.scattered and len(np.unique(frame)) < 2:
        raise ValueError("needs several frames")
    means = {k: vals[obs & (frame == k)].mean() for k in np.unique(frame)}
    anom = vals - np.array([means[k] for k in frame])
    if case.scattered:
        p, v = _dedupe(interp[obs], vals[obs])
        rbf = RBFInterpolator(p, v, kernel="thin_plate_spline", neighbors=NEIGHBORS)
        return rbf(interp[held])
    clim = RBFInterpolator(*_dedupe(interp[obs], anom[obs]), kernel="thin_plate_spline", smoothing=1.0,
                           neighbors=NEIGHBORS)
    out = np.full(held.sum(), np.nan)
    hpos = np.flatnonzero(held)
    for k in np.unique(frame[held]):
        o = obs & (frame == k)
        h = held & (frame == k)
        resid = anom[o] - clim(interp[o])
        rbf = RBFInterpolator(*_dedupe(interp[o], resid), kernel="thin_plate_spline", smoothing=1.0,
                              neighbors=min(NEIGHBORS, int(o.sum())))
        out[np.searchsorted(hpos, np.flatnonzero(h))] = means[k] + clim(interp[h]) + rbf(interp[h])
    return out


def _gp(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    spread = x.std(0) + 1e-9
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(length_scale=0.3 * spread, length_scale_bounds=(1e-4, 1e4),
                                                       nu=1.5) + WhiteKernel(1e-2, (1e-8, 1.0))
    sub = rng.choice(len(x), size=min(KRIG_FIT_POINTS, len(x)), replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(x[sub], y[sub])
        use = rng.choice(len(x), size=min(KRIG_MAX_POINTS, len(x)), replace=False)
        return GaussianProcessRegressor(gp.kernel_, normalize_y=True, optimizer=None).fit(x[use], y[use])


def baseline_kriging(case, frame, plane, interp, vals, obs, held):
    rng = np.random.default_rng(SEED)
    out = np.full(held.sum(), np.nan)
    hpos = np.flatnonzero(held)
    for k in np.unique(frame[held]):
        o = obs & (frame == k)
        h = held & (frame == k)
        gp = _gp(interp[o], vals[o], rng)
        hq = interp[h]
        out[np.searchsorted(hpos, np.flatnonzero(h))] = np.concatenate(
            [gp.predict(hq[i:i + 20000]) for i in range(0, len(hq), 20000)])
    return out


BASELINES = {"linear": baseline_linear, "RBF": baseline_rbf, "space-time RBF": baseline_space_time_rbf,
             "kriging": baseline_kriging}


# --------------------------------------------------------------------------- xsciml
#: ``fit_field`` settings for every case: none (the defaults); ``--quick`` only shortens
#: training, for all cases alike.
FIT_SETTINGS: dict[str, Any] = {}


def fit_xsciml(case: Case) -> dict[str, Any]:
    """The default ``fit_field`` on the observed points, scored on the withheld ones."""
    ds = case.data.to_dataset(name=case.data.name)
    obs = xr.DataArray(case.observed, dims=case.data.dims)
    held = xr.DataArray(case.withheld, dims=case.data.dims)
    var = str(case.data.name)
    with Timer() as t, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        field = ds.where(obs).sciml.fit_field(var, space=case.space, time=case.time, progress=False,
                                              **FIT_SETTINGS)
    with Timer() as tp:
        score = as_dict(field.score(ds.where(held)))
    val = field.info.get("validation", {})
    return {"nrmse": score["nrmse"], "coverage": score["coverage"], "fit_s": t.seconds,
            "score_s": tp.seconds, "predictor": field.info.get("predictor"),
            "validation": val, "warnings": [str(w.message) for w in caught
                                            if issubclass(w.category, UserWarning)]}


def nrmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt(np.mean((pred - truth) ** 2)) / np.std(truth))


def run_case(case: Case) -> dict[str, Any]:
    frame, plane, interp = _frame_points(case)
    vals = case.data.values.ravel()
    obs, held = case.observed.ravel(), case.withheld.ravel()
    truth = vals[held]
    row: dict[str, Any] = {"case": case.name, "observed": f"{obs.sum() / (obs | held).sum():.0%}"}
    detail: dict[str, Any] = {"description": case.description, "sizes": dict(case.data.sizes),
                              "n_observed": int(obs.sum()), "n_withheld": int(held.sum()), "baselines": {}}
    best = math.inf
    bounds = physical_bounds(case.data.attrs, variable=case.data.name)
    for name, fn in BASELINES.items():
        try:
            with Timer() as t:
                pred = fn(case, frame, plane, interp, vals, obs, held)
            if bounds is not None:  # what a scientist does with an interpolated fraction
                pred = np.clip(pred, bounds[0], bounds[1])
            score = nrmse(pred, truth)
            detail["baselines"][name] = {"nrmse": score, "seconds": t.seconds}
            row[name] = score
            best = min(best, score)
        except Exception as err:  # reported in the table and the JSON, never dropped
            detail["baselines"][name] = {"nrmse": None, "error": f"{type(err).__name__}: {err}"}
            row[name] = "n/a"
    x = fit_xsciml(case)
    detail["xsciml"] = x
    row["xsciml"] = x["nrmse"]
    row["ratio"] = x["nrmse"] / best if math.isfinite(best) else None
    row["cov90"] = x["coverage"]
    row["predictor"] = x["predictor"]
    row["fit s"] = x["fit_s"]
    row["baselines s"] = sum(b.get("seconds", 0.0) for b in detail["baselines"].values())
    return {"row": row, "detail": detail}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--cases", nargs="*", default=None, help="run only these cases (names)")
    parser.add_argument("--json", default=None,
                        help="where to write the results (default benchmarks/results/suite.json, "
                             "suite_quick.json with --quick)")
    parser.add_argument("--section", choices=("all", "gap", "forecast", "downscale"), default="all",
                        help="which section to run (default all)")
    args = parser.parse_args(argv)
    if args.section in ("all", "forecast", "downscale"):
        _other_sections(args)
    if args.section not in ("all", "gap"):
        return 0
    if args.json is None:
        args.json = str(BENCH_DIR / "results" / ("suite_quick.json" if args.quick else "suite.json"))
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XSCIML_PROGRESS", "0")
    if args.quick:
        global KRIG_FIT_POINTS
        KRIG_FIT_POINTS = 100
        FIT_SETTINGS["steps"] = 100
    rows, details = [], {}
    for make in build_cases(args.quick):
        try:
            case = make()
        except FileNotFoundError as err:
            print(f"skipped a case: {err}")
            continue
        wanted = args.cases or (QUICK_CASES if args.quick else None)
        if wanted and case.name not in wanted:
            continue
        out = run_case(case)
        rows.append(out["row"])
        details[case.name] = out["detail"]
        print_table([out["row"]], title=case.description)
        sys.stdout.flush()
        _write(args.json, rows, details, None)  # after every case: a long run keeps what it did
    if not rows:
        print("no case ran")
        return 0
    print_table(rows, title="Gap filling with default settings: nRMSE on withheld points "
                            "(ratio = xsciml / best baseline)")
    real = [r for r in rows if not r["case"].startswith("grf")]
    synth = [r for r in rows if r["case"].startswith("grf")]
    summary = {
        "real_cases": len(real),
        "real_ratio_max": max((r["ratio"] for r in real if r["ratio"] is not None), default=None),
        "synthetic_ratio_max": max((r["ratio"] for r in synth if r["ratio"] is not None), default=None),
        "coverage_range": [min(r["cov90"] for r in rows), max(r["cov90"] for r in rows)],
        "quick": bool(args.quick),
    }
    print(json.dumps(summary, indent=1))
    print(f"wrote {_write(args.json, rows, details, summary)}")
    return 0


def _other_sections(args: Any) -> None:
    """The forecast and downscaling sections (their modules write their own JSON files)."""
    import _suite_downscale
    import _suite_forecast

    for name, module in (("forecast", _suite_forecast), ("downscale", _suite_downscale)):
        if args.section not in ("all", name):
            continue
        known = list(module.CASES)
        cases = None if args.cases is None else [c for c in args.cases if c in known]
        if cases == [] and args.section == "all":
            continue
        print(f"== {name} section", flush=True)
        out = module.run(quick=bool(args.quick), threads=args.threads, seed=SEED, cases=cases)
        path = BENCH_DIR / "results" / f"suite_{name}{'_quick' if args.quick else ''}.json"
        module_write = getattr(module, "write_results", None)
        if module_write is not None:
            module_write(out, path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=1, default=str))
        print(f"wrote {path}", flush=True)


def _write(path: str, rows: list, details: dict, summary: dict | None) -> str:
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"rows": rows, "cases": details, "summary": summary}, fh, indent=1, default=str)
    return path


if __name__ == "__main__":
    sys.exit(main())
