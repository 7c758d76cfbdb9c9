"""Benchmark suite, downscaling section: 4x downscaling of biased coarse fields with default settings.

Every case is run with **the library's defaults** -- ``fit_debias(model_train,
reference_train)``, ``fit_diffusion(fine_train)`` and ``downscale(model_test, prior,
debias=...)``, no per-case setting -- and scored on held-out test frames against the
true fine field. The coarse fields are 4 x 4 block means of the fine ones; the "model"
coarse fields are those with a synthetic bias, of a different form in each case:

* ``era5_uk`` -- ERA5 t2m, UK, hourly, March 2019: the 32 x 48 crop of
  ``benchmarks/downscale.py`` (latitude[0:32], longitude[0:48]); bias
  ``0.8 (c - mean_t c) + mean_t c + 1.5 K`` (affine per pixel, ``mean_t`` over all
  744 hours); train = the 552 hours before 2019-03-24, test = the last 192 hours.
* ``cmip5_tas`` -- CMIP5 CanESM2 tas, global 64 x 128 Gaussian grid, monthly, 2007
  (12 frames); bias ``c + 1 K + 2 K tanh((c - 273.15 K) / 10 K)`` (depends on the
  value: about -1 K on cold values, +3 K on warm ones, so quantiles are stretched);
  test = Feb, May, Aug, Nov (one month per season), train = the other 8 months.
* ``tasmax_10km`` -- CanESM2 tasmax on a 10 km grid, daily, 2095 (noleap), the
  32 x 32 crop lat[4:36], lon[4:36] (the full 36 x 36 grid has two pixels without
  data); bias ``c + 1 K + 3 K cos(2 pi (doy - 196) / 365)`` (seasonal: +4 K in
  mid-July, -2 K in mid-January); test = the last 7 days of every month (84 days),
  train = the other 281 days (week-long blocks, so that neighbouring days seldom
  straddle the split).

Debiasing is unpaired: the maps are fitted on the model and reference training sets
without using their pairing in time. Rows, all recomputed in this run (bicubic =
:func:`xsciml.downscale.pipeline.bicubic`, block-centre consistent):

* ``bicubic (raw)`` -- bicubic of the biased coarse field;
* ``xsdba EQM + bicubic`` -- :class:`xsdba.EmpiricalQuantileMapping` (additive,
  50 quantiles, ``group="time"``) per pixel, then bicubic;
* ``xsdba QDM + bicubic`` -- :class:`xsdba.QuantileDeltaMapping` (the same settings);
* ``debias + bicubic`` -- ``fit_debias`` (defaults), then bicubic;
* ``xsciml`` -- ``fit_debias`` then ``downscale`` with the ``fit_diffusion`` prior
  (defaults: 8 samples);
* ``oracle + bicubic`` -- bicubic of the true coarse field (not a method: a reference).

Columns: RMSE of the ensemble mean (deterministic rows: of the field), MELRu = MELR
unweighted (:func:`xsciml.metrics.melr`) of the ensemble mean and, for reference, per
sample (averaged). The check of each case: the xsciml ensemble mean beats debias +
bicubic on both RMSE and MELRu.

``--quick``: the fine fields are block means 2 x 2 of the above (ERA5 16 x 24, tas
32 x 64, tasmax 16 x 16), fewer frames (every 4th ERA5 training hour and the last 24
test hours, every 3rd tasmax day), ``fit_diffusion(steps=100)`` and
``downscale(samples=4, steps=12)``: a smoke run whose numbers are not meaningful.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from _common import DATA_DIR, make_parser, print_table

FACTOR = 4
ERA5 = "era5_t2m_uk_2019-03_hourly.nc"
TAS = "cmip/tas_Amon_CanESM2_rcp85_r1i1p1_200701-200712.nc"
TASMAX = "cmip/tasmax_day_CanESM2_rcp85_r1i1p1_na10kgrid_qm-moving-50bins-detrend_2095.nc"
QUICK_PRIOR = {"steps": 100}
QUICK_SAMPLING = {"samples": 4, "steps": 12}


def _block(da: xr.DataArray, n: int, dims: tuple[str, str]) -> xr.DataArray:
    return da.coarsen({dims[0]: n, dims[1]: n}).mean().assign_attrs(da.attrs) if n > 1 else da


def _case(name: str, description: str, fine: xr.DataArray, bias: Callable[[xr.DataArray], xr.DataArray],
          bias_text: str, test: np.ndarray, dims: tuple[str, str], split_text: str) -> dict[str, Any]:
    fine = fine.astype("float64").load()
    coarse = _block(fine, FACTOR, dims)
    model = bias(coarse).assign_attrs(coarse.attrs)
    train = ~test
    return {"name": name, "description": description, "dims": dims, "bias": bias_text, "split": split_text,
            "fine_train": fine.isel(time=train), "fine_test": fine.isel(time=test),
            "ref_train": coarse.isel(time=train), "true_test": coarse.isel(time=test),
            "model_train": model.isel(time=train), "model_test": model.isel(time=test)}


def era5_case(quick: bool) -> dict[str, Any]:
    dims = ("latitude", "longitude")
    fine = xr.open_dataset(DATA_DIR / ERA5)["t2m"].isel(latitude=slice(0, 32), longitude=slice(0, 48))
    fine = _block(fine.astype("float64").load(), 2 if quick else 1, dims)

    def bias(c: xr.DataArray) -> xr.DataArray:
        clim = c.mean("time")
        return 0.8 * (c - clim) + clim + 1.5

    before = (fine["time"] < np.datetime64("2019-03-24")).values
    test = ~before
    if quick:  # every 4th training hour, the last 24 hours
        keep = (before & (np.cumsum(before) % 4 == 1)) | (np.arange(fine.sizes["time"]) >= fine.sizes["time"] - 24)
        fine = fine.isel(time=keep)
        test = test[keep]
    return _case("era5_uk", f"ERA5 UK t2m hourly, {fine.sizes['latitude']} x {fine.sizes['longitude']}",
                 fine, bias, "0.8 (c - mean_t c) + mean_t c + 1.5 K (affine per pixel)", test, dims,
                 "train: hours before 2019-03-24; test: the last hours")


def tas_case(quick: bool) -> dict[str, Any]:
    dims = ("lat", "lon")
    fine = xr.open_dataset(DATA_DIR / TAS)["tas"].drop_vars("height", errors="ignore")
    fine = _block(fine.astype("float64").load(), 2 if quick else 1, dims)

    def bias(c: xr.DataArray) -> xr.DataArray:
        return c + 1.0 + 2.0 * np.tanh((c - 273.15) / 10.0)

    test = np.isin(fine["time"].dt.month.values, [2, 5, 8, 11])
    return _case("cmip5_tas", f"CMIP5 tas global monthly, {fine.sizes['lat']} x {fine.sizes['lon']}", fine, bias,
                 "c + 1 K + 2 K tanh((c - 273.15 K) / 10 K) (value-dependent)", test, dims,
                 "test: Feb, May, Aug, Nov; train: the other 8 months")


def tasmax_case(quick: bool) -> dict[str, Any]:
    dims = ("lat", "lon")
    ds = xr.open_dataset(DATA_DIR / TASMAX, decode_times=xr.coders.CFDatetimeCoder(use_cftime=True))
    fine = ds["tasmax"].isel(lat=slice(4, 36), lon=slice(4, 36))
    fine = _block(fine.astype("float64").load(), 2 if quick else 1, dims)

    def bias(c: xr.DataArray) -> xr.DataArray:
        doy = c["time"].dt.dayofyear
        return c + 1.0 + 3.0 * np.cos(2 * np.pi * (doy - 196) / 365.0)

    t = fine["time"].dt
    test = (t.day.values > t.daysinmonth.values - 7)
    if quick:
        keep = np.arange(fine.sizes["time"]) % 3 == 0
        fine, test = fine.isel(time=keep), test[keep]
    return _case("tasmax_10km", f"CanESM2 tasmax 10 km daily, {fine.sizes['lat']} x {fine.sizes['lon']}",
                 fine, bias, "c + 1 K + 3 K cos(2 pi (doy - 196) / 365) (seasonal)", test, dims,
                 "test: the last 7 days of every month; train: the other days")


CASES = {"era5_uk": era5_case, "cmip5_tas": tas_case, "tasmax_10km": tasmax_case}


# --------------------------------------------------------------------------- methods
def _bicubic(coarse: xr.DataArray, like: xr.DataArray, dims: tuple[str, str]) -> xr.DataArray:
    from xsciml.downscale.pipeline import bicubic

    x = torch.from_numpy(np.ascontiguousarray(coarse.transpose("time", *dims).values, dtype=np.float64))
    return like.copy(data=bicubic(x, FACTOR).numpy())


def _xsdba(kind: str, case: dict[str, Any]) -> xr.DataArray:
    import xsdba

    cls = xsdba.EmpiricalQuantileMapping if kind == "EQM" else xsdba.QuantileDeltaMapping
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adj = cls.train(case["ref_train"], case["model_train"], nquantiles=50, kind="+", group="time")
        out = adj.adjust(case["model_test"], extrapolation="constant", interp="nearest")
    return out.transpose(*case["model_test"].dims).assign_attrs(case["model_test"].attrs)


def _scores(pred: xr.DataArray, truth: xr.DataArray, dims: tuple[str, str]) -> dict[str, float]:
    from xsciml import metrics as M

    mean = pred.mean("sample") if "sample" in pred.dims else pred
    return {"RMSE": float(M.rmse(mean, truth)),
            "MELRu": M.melr(mean, truth, dims=dims, weighted=False),
            "MELRu/sample": M.melr(pred, truth, dims=dims, weighted=False)}


def run_case(case: dict[str, Any], quick: bool, seed: int) -> dict[str, Any]:
    from xsciml.downscale import downscale, fit_debias, fit_diffusion

    dims, truth = case["dims"], case["fine_test"]
    var = str(truth.name)
    rows: list[dict[str, Any]] = []
    detail: dict[str, Any] = {"description": case["description"], "bias": case["bias"], "split": case["split"],
                              "n_train": int(case["fine_train"].sizes["time"]),
                              "n_test": int(truth.sizes["time"]), "errors": {}}

    def add(method: str, pred: xr.DataArray, seconds: float | None = None) -> None:
        rows.append({"case": case["name"], "method": method, **_scores(pred, truth, dims), "s": seconds})

    add("bicubic (raw)", _bicubic(case["model_test"], truth, dims))
    for kind in ("EQM", "QDM"):
        try:
            t0 = time.perf_counter()
            q = _xsdba(kind, case)
            add(f"xsdba {kind} + bicubic", _bicubic(q, truth, dims), time.perf_counter() - t0)
        except Exception as err:  # reported, never dropped
            detail["errors"][kind] = f"{type(err).__name__}: {err}"
            rows.append({"case": case["name"], "method": f"xsdba {kind} + bicubic", "RMSE": None})
    t0 = time.perf_counter()
    deb = fit_debias(case["model_train"], case["ref_train"], variable=var, progress=False, seed=seed)
    debiased = deb.transform(case["model_test"])
    t_deb = time.perf_counter() - t0
    add("debias + bicubic", _bicubic(debiased, truth, dims), t_deb)
    t0, c0 = time.perf_counter(), time.process_time()
    prior = fit_diffusion(case["fine_train"], var, seed=seed, progress=False, **(QUICK_PRIOR if quick else {}))
    detail["fit_diffusion"] = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                               "steps": prior.info["steps"], "batch_size": prior.info["batch_size"],
                               "ema": prior.info["ema"], "rule": prior.info["defaults"]}
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hi = downscale(case["model_test"], prior, debias=deb, seed=seed, progress=False,
                       **(QUICK_SAMPLING if quick else {}))
    detail["downscale_s"] = time.perf_counter() - t1
    detail["downscale_check"] = hi.attrs.get("xsciml_check")
    detail["warnings"] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    add(f"xsciml ({hi.sizes['sample']} samples)", hi, time.perf_counter() - t0 + t_deb)
    add("oracle + bicubic (reference)", _bicubic(case["true_test"], truth, dims))
    xs, db = rows[-2], next(r for r in rows if r["method"] == "debias + bicubic")
    passed = xs["RMSE"] < db["RMSE"] and xs["MELRu"] < db["MELRu"]
    detail["check"] = {"passed": bool(passed), "rmse": [xs["RMSE"], db["RMSE"]], "melru": [xs["MELRu"], db["MELRu"]]}
    return {"rows": rows, "detail": detail}


def run(quick: bool, threads: int, seed: int, cases: list[str] | None = None) -> dict[str, Any]:
    """Run the downscaling cases; print one table per case and a summary table.

    Parameters
    ----------
    quick
        The smoke run (coarsened data, short fits; numbers not meaningful).
    threads
        Torch CPU threads.
    seed
        Seed of every fit and of the samples.
    cases
        Only these cases (names of :data:`CASES`); default all.

    Returns
    -------
    dict
        ``rows`` (one per case and method), ``cases`` (settings, timings, the
        downscale check line, warnings) and ``summary`` (``passed``: every case's
        check passed; ``cases``: the check of each).

    Examples
    --------
    >>> out = run(quick=True, threads=1, seed=0)  # doctest: +SKIP
    >>> sorted(out["summary"])  # doctest: +SKIP
    ['cases', 'passed', 'quick']
    """
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for name, make in CASES.items():
        if cases and name not in cases:
            continue
        try:
            case = make(quick)
        except FileNotFoundError as err:
            print(f"skipped {name}: {err}")
            continue
        out = run_case(case, quick, seed)
        rows += out["rows"]
        details[name] = out["detail"]
        d = out["detail"]
        print_table(out["rows"], title=f"{case['description']}, 4x; bias {case['bias']}; {case['split']} "
                    f"({d['n_train']} / {d['n_test']} frames)" + (" (--quick: not meaningful)" if quick else ""))
        fd = d["fit_diffusion"]
        print(f"  fit_diffusion defaults: {fd['rule']}, ema {fd['ema']:.4g}; {fd['wall_s']:.0f} s wall, "
              f"{fd['cpu_s']:.0f} s CPU; downscale {d['downscale_s']:.0f} s")
        print(f"  {d['downscale_check']}\n", flush=True)
    summary_rows = []
    for name, d in details.items():
        c = d["check"]
        summary_rows.append({"case": name, "xsciml RMSE": c["rmse"][0], "debias+bicubic RMSE": c["rmse"][1],
                             "xsciml MELRu": c["melru"][0], "debias+bicubic MELRu": c["melru"][1],
                             "check": "pass" if c["passed"] else "FAIL"})
    if summary_rows:
        print_table(summary_rows, title="Downscaling 4x with default settings: ensemble mean vs debias + bicubic"
                    + (" (--quick: not meaningful)" if quick else ""))
    summary = {"passed": bool(summary_rows) and all(d["check"]["passed"] for d in details.values()),
               "cases": {n: d["check"] for n, d in details.items()}, "quick": bool(quick)}
    return {"rows": rows, "cases": details, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", nargs="*", default=None, help=f"only these cases, of {list(CASES)}")
    args = parser.parse_args(argv)
    out = run(args.quick, args.threads, args.seed, args.cases)
    if not out["cases"]:
        print("no case ran")
        return 0
    if not args.quick and not out["summary"]["passed"]:
        print("FAILED: the ensemble mean does not beat debias + bicubic on every case")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
