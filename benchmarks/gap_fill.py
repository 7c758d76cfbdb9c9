"""Gap filling of ERA5 UK t2m snapshots with the latent models' defaults, against RBF
and PCA-MAP at every rank.

Protocol: train on the snapshots before 2019-03-24; for each later snapshot observe a
random 10 % (and 2 %) of the points (rng seed 0, per snapshot), encode from those
points, decode everywhere, and score nRMSE = RMSE / std on the *unobserved* points (std
of the withheld truth values). Baselines computed here, on the same masks:

* per-snapshot scipy thin-plate RBF (64 neighbours);
* PCA-k with a MAP (Bayesian ridge) fit of the coefficients to the observed points:
  z ~ N(0, diag(lambda_k)), noise variance = mean discarded variance per pixel, at each k
  of a grid (the best k per fraction is the reference).

Models, all with their defaults (no settings but the variable and ``sample_dim``):

* ``fit_autoencoder(network="pca")``: rank chosen by validation on held-out training
  snapshots, out-of-sample noise;
* ``fit_latent``: the ``"basis"`` decoder ``m(x) + B(x) z + r(x, z)`` started from
  probabilistic PCA at the validated rank, then ELBO training (kept only if it fills the
  held-out snapshots better than its start).

Run: ``.venv/bin/python benchmarks/gap_fill.py [--quick]`` (writes ``benchmarks/results/gap_fill[_quick].json``)``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA_DIR, have_data, make_parser, print_table, ratio  # noqa: E402

FILE = "era5_t2m_uk_2019-03_hourly.nc"
SPLIT = np.datetime64("2019-03-24")


def masks(n_test: int, n_pix: int, frac: float, seed: int = 0) -> np.ndarray:
    """Per snapshot, ``round(frac * n_pix)`` random observed points (rng seed ``seed``)."""
    from xsciml.eofs import validation_masks

    return validation_masks(n_test, n_pix, frac, seed=seed)


def nrmse(pred: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> float:
    w = ~observed
    err = pred[w] - truth[w]
    return float(np.sqrt(np.mean(err**2)) / truth[w].std())


def rbf_baseline(test: np.ndarray, obs: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    from scipy.interpolate import RBFInterpolator

    yy, xx = np.meshgrid(lat, lon, indexing="ij")
    pts = np.stack([yy.ravel(), xx.ravel()], 1)
    out = np.empty_like(test)
    for s in range(len(test)):
        o = obs[s]
        nb = min(64, int(o.sum()))
        out[s] = RBFInterpolator(pts[o], test[s, o], kernel="thin_plate_spline", neighbors=nb)(pts)
    return out


def pca_map_baseline(train: np.ndarray, test: np.ndarray, obs: np.ndarray, k: int) -> np.ndarray:
    mean = train.mean(0)
    a = train - mean
    u, sv, vt = np.linalg.svd(a, full_matrices=False)
    lam = sv**2 / (len(train) - 1)
    basis = vt[:k]  # [k, P]
    noise = max(lam[k:].sum() / train.shape[1], 1e-8)
    out = np.empty_like(test)
    for s in range(len(test)):
        o = obs[s]
        b = basis[:, o]  # [k, n_obs]
        lhs = b @ b.T / noise + np.diag(1.0 / lam[:k])
        rhs = b @ (test[s, o] - mean[o]) / noise
        z = np.linalg.solve(lhs, rhs)
        out[s] = mean + z @ basis
    return out


def _score(reconstruct, test_ds, obs: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """nRMSE of ``reconstruct(observed points)`` on the unobserved points, and s/snapshot."""
    S, H, W = test_ds.t2m.shape
    partial = test_ds.copy()
    partial["t2m"] = test_ds.t2m.where(xr.DataArray(obs.reshape(S, H, W), dims=test_ds.t2m.dims))
    t = time.perf_counter()
    rec = reconstruct(partial)
    seconds = time.perf_counter() - t
    pred = rec.transpose("time", "latitude", "longitude").values.reshape(S, -1)
    return nrmse(pred, test, obs), seconds / S


def main() -> int:
    parser = make_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    if not have_data(FILE):
        print(f"skipped: {FILE} not in {DATA_DIR}")
        return 0
    import torch

    torch.set_num_threads(1)
    import xsciml  # noqa: F401

    ds = xr.open_dataset(DATA_DIR / FILE).load()
    train_ds = ds.sel(time=ds.time < SPLIT)
    test_ds = ds.sel(time=ds.time >= SPLIT)
    if args.quick:
        train_ds, test_ds = train_ds.isel(time=slice(None, None, 4)), test_ds.isel(time=slice(0, 48))
    lat, lon = ds.latitude.values, ds.longitude.values
    S, H, W = test_ds.t2m.shape
    train = train_ds.t2m.values.reshape(len(train_ds.time), -1).astype(np.float64)
    test = test_ds.t2m.values.reshape(S, -1).astype(np.float64)
    settings = {"steps": 300} if args.quick else {}  # --quick: fewer ELBO steps, else defaults only
    t0 = time.perf_counter()
    pca = train_ds.sciml.fit_autoencoder("t2m", sample_dim="time", network="pca")
    fit_pca_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    li = train_ds.sciml.fit_latent("t2m", sample_dim="time", progress=False, **settings)
    fit_s = time.perf_counter() - t0
    print(pca.summary())
    print(li.summary())
    models = {"PCA (default)": lambda p: pca.decode(pca.encode(p)),
              "fit_latent (default)": lambda p: li.decode(li.encode(p, progress=False), p)}
    rows, results = [], []
    for frac in (0.10, 0.02):
        obs = masks(S, H * W, frac)
        res: dict = {"observed": f"{frac:.0%}"}
        t = time.perf_counter()
        res["RBF tps-64"] = nrmse(rbf_baseline(test, obs, lat, lon), test, obs)
        rbf_s = time.perf_counter() - t
        best, best_k = np.inf, None
        for kk in ([10, 40, 160] if args.quick else [10, 20, 40, 80, 160, 300, 500]):
            kk = min(kk, len(train) - 1)
            v = nrmse(pca_map_baseline(train, test, obs, kk), test, obs)
            res[f"PCA-{kk} MAP"] = v
            if v < best:
                best, best_k = v, kk
        seconds = {}
        for name, rec in models.items():
            res[name], seconds[name] = _score(rec, test_ds, obs, test)
        res["best PCA-MAP"] = best
        for name in models:
            res[f"{name} / best PCA-MAP"] = ratio(res[name], best)
        rows.append(res)
        results.append({**res, "best_pca_map_k": best_k, "rbf_s": rbf_s,
                        "encode_decode_s_per_snapshot": seconds})
    title = (f"ERA5 UK t2m gap filling, nRMSE on unobserved points (train {len(train)} / test {S} "
             f"snapshots; PCA rank {pca.latent_dim}, fit_latent latent_dim {li.latent_dim} "
             f"(kept: {li.info['validation'].get('kept')}), both chosen by validation)")
    print_table(rows, title=title)
    timing = [{"model": name, "fit s": fs,
               "encode+decode ms/snapshot (10%, 2%)": " / ".join(
                   f"{r['encode_decode_s_per_snapshot'][name] * 1e3:.1f}" for r in results)}
              for name, fs in (("PCA (default)", fit_pca_s), ("fit_latent (default)", fit_s))]
    timing.append({"model": "RBF tps-64", "fit s": None,
                   "encode+decode ms/snapshot (10%, 2%)": " / ".join(f"{r['rbf_s'] / S * 1e3:.1f}" for r in results)})
    print_table(timing, title="Timings (1 thread; encode is batched over all test snapshots)")
    out = Path(__file__).resolve().parent / "results" / ("gap_fill_quick.json" if args.quick else "gap_fill.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": args.quick, "pca_rank": pca.latent_dim, "latent_dim": li.latent_dim,
                               "latent_validation": li.info["validation"],
                               "pca_validation": pca.info["validation"],
                               "fit_s": {"pca": fit_pca_s, "fit_latent": fit_s}, "rows": results},
                              indent=2, default=float))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
