"""Benchmark: x4 downscaling of a land-only field (a fixed mask) against bicubic.

Data: ``../shared/data/NRCAN_SECan_1981-2010.nc``, variable ``tg_mean`` (yearly mean
2-m temperature), 30 frames on an 84 x 276 lat/lon grid, about 35 % of it ocean (NaN at
the same pixels in every year).

Protocol:

* the prior: ``fit_diffusion`` with its defaults on the first 24 years (the masked pixels
  are filled from their nearest land pixel for training and kept as ``prior.mask``);
* the coarse fields: the last 6 years coarsened 4 x 4 by ``da.coarsen(lat=4, lon=4).mean()``,
  the mean over each block's land pixels (NaN for a block of ocean only), as such data
  are coarsened;
* ``xsciml``: ``downscale(coarse, prior, samples=8)`` with its defaults; the ensemble mean
  is scored;
* ``bicubic``: :func:`xsciml.downscale.pipeline.bicubic` of the same coarse fields (a NaN
  coarse pixel filled from its nearest neighbour first), what a scientist would do with the
  coarse field alone.

Scores over the land pixels of the test years: RMSE (K) and the unweighted MELR of the
radial spectra (:func:`xsciml.metrics.melr`; the spectra need complete fields, so outside
the mask both fields take the truth's nearest land value). The table also gives the largest
``|C'x - y|`` of the samples over the blocks with land and whether every sample is NaN over
the ocean. ``--quick``: a 32 x 64 coastal crop, 8 + 2 frames, a 20-step prior and 2
samples of 4 sampler steps (a smoke run: its scores mean nothing).
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
import xarray as xr
from _common import DATA_DIR, Timer, have_data, make_parser, print_table

from xsciml import metrics
from xsciml.downscale import downscale, fit_diffusion
from xsciml.downscale.pipeline import _nearest_filled, bicubic

FILE = "NRCAN_SECan_1981-2010.nc"
VARIABLE = "tg_mean"
FACTOR = 4


def load(quick: bool) -> tuple[xr.DataArray, xr.DataArray]:
    """The training and test years (a coastal crop and fewer frames with ``quick``)."""
    da = xr.open_dataset(DATA_DIR / FILE)[VARIABLE].load().astype(np.float64)
    if quick:
        da = da.isel(lat=slice(20, 52), lon=slice(200, 264), time=slice(0, 10))
        return da.isel(time=slice(0, 8)), da.isel(time=slice(8, None))
    return da.isel(time=slice(0, 24)), da.isel(time=slice(24, None))


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if not have_data(FILE):
        print(f"skipped: {DATA_DIR / FILE} not found")
        return 0
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XSCIML_PROGRESS", "0")
    train, test = load(args.quick)
    fit_kw = {"steps": 20, "base_channels": 8, "levels": 2} if args.quick else {}
    down_kw = {"samples": 2, "steps": 4} if args.quick else {"samples": 8}
    print(f"{FILE}: {VARIABLE} train {dict(train.sizes)}, test {dict(test.sizes)}, "
          f"{float(np.isnan(train.values[0]).mean()):.0%} of the grid masked; {args.threads} thread(s)\n",
          flush=True)
    with Timer() as t_fit:
        prior = fit_diffusion(train, progress=False, **fit_kw)
    coarse = test.coarsen(lat=FACTOR, lon=FACTOR).mean()
    with Timer() as t_down:
        hi = downscale(coarse, prior, factor=FACTOR, progress=False, **down_kw)
    land = xr.DataArray(prior.mask, dims=prior.space_dims)
    truth = test.transpose("time", *prior.space_dims)
    preds = {"xsciml (ensemble mean)": hi.mean("sample").transpose(*truth.dims),
             "bicubic": xr.DataArray(bicubic(torch.from_numpy(coarse.transpose(*truth.dims).values), FACTOR).numpy(),
                                     dims=truth.dims).where(land)}
    full = xr.DataArray(_nearest_filled(torch.from_numpy(truth.values), torch.from_numpy(np.isnan(truth.values))
                                        ).numpy(), dims=truth.dims)
    rows = []
    for name, pred in preds.items():
        pred = xr.DataArray(pred.values, dims=truth.dims)
        rmse = float(np.sqrt(((pred - xr.DataArray(truth.values, dims=truth.dims)) ** 2).mean()))
        rows.append({"method": name, "RMSE K": rmse,
                     "MELRu": metrics.melr(pred.fillna(full), full, dims=prior.space_dims, weighted=False)})
    base = rows[-1]
    for r in rows:
        r["RMSE / bicubic"] = r["RMSE K"] / base["RMSE K"]
        r["MELRu / bicubic"] = r["MELRu"] / base["MELRu"]
    back = hi.coarsen({d: FACTOR for d in prior.space_dims}).mean().transpose("sample", *coarse.dims)
    rows[0].update({"max |C'x - y| K": float(np.nanmax(np.abs(back.values - coarse.values[None]))),
                    "NaN over ocean": bool(np.isnan(hi.values[..., ~prior.mask]).all()),
                    "fit s": t_fit.seconds, "downscale s": t_down.seconds, "prior steps": prior.info["steps"]})
    print_table(rows, title=f"x{FACTOR} downscaling of a land-only field ({VARIABLE}, last {test.sizes['time']} "
                            "years): land pixels, ratio against bicubic of the same coarse field")
    return 0


if __name__ == "__main__":
    sys.exit(main())
