"""Benchmark: labeled data -> tensors, eager vs chunked, throughput and peak memory.

A ``(time, lat, lon)`` float32 field of 1e7 points (1e6 with ``--quick``) with a 30 %
NaN mask is written to a zarr store in a temporary folder, chunked along time so that
one chunk is 1/20 of the data. Two ways to turn it into coordinate tensors, each in its
own fresh subprocess:

* ``eager``   -- ``xr.open_zarr(...).load()``, then :func:`xsciml.to_tensors`, which
  materialises ``.features`` / ``.y`` of every valid point at once;
* ``chunked`` -- :func:`xsciml.to_tensors` on the lazy dataset (one dask statistics
  pass), then ``.batches(65536)`` streamed to the end, chunk by chunk.

Diagnostic rows, the same chunked path with one thing changed: no background prefetch
of the next chunk; glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 64 KiB (Linux; by default
glibc raises the threshold after the first large free, so freed chunk-sized arrays stay
in the heap and count towards RSS); chunks half as large (a second store), which splits
the chunked peak into a fixed part and a part that grows with the chunk size.

Reported: throughput in dataset points per second (all grid points, valid or not, from
opening the store to the last tensor), peak resident memory of the work above an idle
child that imported the same modules, the ratios against the eager baseline of the same
run, where each peak is reached, and the eager/chunked peak-memory ratio next to the
dataset/chunk size ratio. Every run must produce the same number of valid points and
the same sum of ``y`` as the data written (checked; exit code 1 otherwise).

Usage::

    python benchmarks/tensors.py            # 1e7 points, about a minute on 2 cores
    python benchmarks/tensors.py --quick    # 1e6 points, no diagnostic rows but chunks / 2
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr
from _common import Timer, make_parser, peak_rss_mb, print_table, ratio, run_isolated

VAR = "t2m"
SPACE = ("lat", "lon")
MMAP_LABEL = "chunked, malloc mmap 64k"
IMPORTS = ("numpy", "xarray", "dask.array", "zarr", "torch", "xsciml")


# --------------------------------------------------------------------------- data
def grid_shape(n_points: int, n_chunks: int) -> tuple[int, int, int]:
    """``(time, lat, lon)`` with ``lat = lon = 100`` and ``time`` a multiple of ``n_chunks``."""
    nt = max(n_chunks, int(round(n_points / 10_000 / n_chunks)) * n_chunks)
    return nt, 100, 100


def write_store(path: Path, shape: tuple[int, int, int], n_chunks: int,
                nan_fraction: float = 0.3, seed: int = 0) -> dict[str, float]:
    """Write the synthetic field to a zarr store chunked along time; return its sizes."""
    nt, ny, nx = shape
    rng = np.random.default_rng(seed)
    time = np.datetime64("2020-01-01T00", "ns") + np.arange(nt) * np.timedelta64(1, "h")
    lat = np.linspace(60.0, 30.0, ny)  # descending, as in ERA5 files
    lon = np.linspace(-20.0, 20.0, nx)
    hours = np.arange(nt, dtype=np.float32)[:, None, None]
    field = (285.0 - 0.5 * (lat[None, :, None] - 45.0) + 2.0 * np.sin(np.deg2rad(lon))[None, None, :]
             + 5.0 * np.sin(2 * np.pi * hours / 24.0)).astype(np.float32)
    field = field + rng.standard_normal(shape, dtype=np.float32)
    field[rng.random(shape, dtype=np.float32) < nan_fraction] = np.nan
    ct = nt // n_chunks
    ds = xr.Dataset(
        {VAR: (("time", "lat", "lon"), field, {"units": "K", "long_name": "2 m temperature"})},
        coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"})},
    )
    ds.to_zarr(path, mode="w", encoding={VAR: {"chunks": (ct, ny, nx)}}, consolidated=False)
    return {"points": float(field.size), "valid": float(np.isfinite(field).sum()),
            "dataset_mb": field.nbytes / 2**20, "chunk_mb": field.nbytes / n_chunks / 2**20,
            "chunk_time": float(ct), "y_sum": float(np.nansum(field, dtype=np.float64))}


# --------------------------------------------------------------------------- runs
def eager(path: str) -> dict[str, float]:
    """Load everything, then convert and materialise all valid points."""
    import xsciml

    with Timer() as t_load:
        ds = xr.open_zarr(path, consolidated=False).load()
    peak_load = peak_rss_mb()
    with Timer() as t_conv:
        data = xsciml.to_tensors(ds, VAR, space=SPACE, time="time")
        features, y = data.features, data.y
    return {"rows": int(y.shape[0]), "features": int(features.shape[1]),
            "y_sum": float(y.double().sum()), "s_open": t_load.seconds, "s_convert": t_conv.seconds,
            "mb_open": peak_load, "mb_convert": peak_rss_mb()}


def chunked(path: str, batch_size: int = 65536, prefetch: bool = True) -> dict[str, float]:
    """Convert the lazy dataset and stream every batch to the end."""
    import xsciml

    with Timer() as t_open:
        ds = xr.open_zarr(path, consolidated=False)
        data = xsciml.to_tensors(ds, VAR, space=SPACE, time="time")  # statistics pass
    peak_open = peak_rss_mb()
    rows, y_sum, n_features = 0, 0.0, 0
    with Timer() as t_conv:
        for features, y in data.batches(batch_size, prefetch=prefetch):
            rows += int(y.shape[0])
            y_sum += float(y.double().sum())
            n_features = int(features.shape[1])
    return {"rows": rows, "features": n_features, "y_sum": y_sum, "s_open": t_open.seconds,
            "s_convert": t_conv.seconds, "mb_open": peak_open, "mb_convert": peak_rss_mb()}


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--points", type=float, default=None,
                        help="dataset size in points (default 1e7; 1e6 with --quick)")
    parser.add_argument("--chunks", type=int, default=20, help="number of chunks along time")
    parser.add_argument("--batch", type=int, default=65536, help="batch size of the chunked path")
    args = parser.parse_args(argv)
    n_points = args.points or (1e6 if args.quick else 1e7)
    if n_points < 1e4 or args.chunks < 1 or args.batch < 1:
        parser.error("--points must be >= 1e4, --chunks and --batch >= 1")
    os.environ.setdefault("XSCIML_PROGRESS", "0")
    shape = grid_shape(int(n_points), args.chunks)

    with tempfile.TemporaryDirectory(prefix="xsciml-bench-") as tmp:
        store = str(Path(tmp) / "field.zarr")
        half = str(Path(tmp) / "field-half-chunks.zarr")
        with Timer() as t_write:
            info = write_store(Path(store), shape, args.chunks)
        print(f"dataset: {VAR}{shape} float32, {info['points']:.3g} points, "
              f"{1 - info['valid'] / info['points']:.0%} NaN, {info['dataset_mb']:.1f} MB in "
              f"{args.chunks} chunks of {info['chunk_mb']:.2f} MB (time={int(info['chunk_time'])}); "
              f"zarr written in {t_write.seconds:.1f} s; {os.cpu_count()} CPUs\n", flush=True)
        info_half = write_store(Path(half), shape, 2 * args.chunks)

        runs = [("eager", eager, store, {}, None),
                ("chunked", chunked, store, {"batch_size": args.batch}, None)]
        if not args.quick:
            runs.append(("chunked, no prefetch", chunked, store,
                         {"batch_size": args.batch, "prefetch": False}, None))
            if sys.platform.startswith("linux"):  # glibc: a fixed mmap threshold returns freed
                runs.append((MMAP_LABEL, chunked, store,  # big arrays to the OS at once
                             {"batch_size": args.batch}, {"MALLOC_MMAP_THRESHOLD_": "65536"}))
        runs.append(("chunked, chunks / 2", chunked, half, {"batch_size": args.batch}, None))
        results = {label: run_isolated(fn, path, imports=IMPORTS, env=env, **kw)
                   for label, fn, path, kw, env in runs}

    base = results["eager"]
    base_seconds = base.result["s_open"] + base.result["s_convert"]
    rows, phases = [], []
    for label, m in results.items():
        r = m.result
        seconds = r["s_open"] + r["s_convert"]
        ok = r["rows"] == int(info["valid"]) and math.isclose(r["y_sum"], info["y_sum"], rel_tol=1e-6)
        chunk_mb = info_half["chunk_mb"] if label.endswith("/ 2") else info["chunk_mb"]
        rows.append({
            "mode": label, "chunk MB": info["dataset_mb"] if label == "eager" else chunk_mb,
            "seconds": seconds, "points/s": info["points"] / seconds, "peak MB": m.peak_mb,
            "speed vs eager": ratio(base_seconds, seconds),
            "memory vs eager": ratio(m.peak_mb, base.peak_mb), "rows": r["rows"],
            "check": "ok" if ok else "MISMATCH",
        })
        first, second = ("load", "to_tensors") if label == "eager" else ("to_tensors (stats)", "batches")
        phases += [
            {"mode": label, "phase": first, "seconds": r["s_open"],
             "peak MB so far": r["mb_open"] - m.baseline_mb},
            {"mode": label, "phase": second, "seconds": r["s_convert"],
             "peak MB so far": r["mb_convert"] - m.baseline_mb},
        ]
    print_table(rows, title=f"to_tensors on {info['points']:.0e} points: eager vs chunked "
                            f"(peak RSS above an idle child of {base.baseline_mb:.0f} MB)")
    print_table(phases, title="where the time and the peak come from")

    # memory = fixed + slope * chunk size, from the two chunk sizes
    p1, p2 = results["chunked"].peak_mb, results["chunked, chunks / 2"].peak_mb
    c1, c2 = info["chunk_mb"], info_half["chunk_mb"]
    slope = (p1 - p2) / (c1 - c2)
    print_table([
        {"quantity": "dataset / chunk size", "value": info["dataset_mb"] / c1},
        {"quantity": "eager / chunked peak memory", "value": ratio(base.peak_mb, p1)},
        {"quantity": "chunked peak, chunks / 2 vs chunks", "value": ratio(p2, p1)},
        {"quantity": "eager peak / dataset float32 bytes", "value": base.peak_mb / info["dataset_mb"]},
        {"quantity": "chunked peak growth / chunk float32 bytes", "value": slope},
        {"quantity": "chunked fixed part (MB)", "value": p1 - slope * c1},
    ], title="memory scaling: chunked peak ~ fixed + growth * chunk size", floatfmt=".3g")
    print(f"Eager peaks at {base.peak_mb / info['dataset_mb']:.0f}x the float32 dataset; each MB of "
          f"chunk adds {slope:.0f} MB to the chunked peak, so the eager/chunked ratio is about "
          f"{info['dataset_mb'] / c1:.0f} (dataset/chunk) x {base.peak_mb / info['dataset_mb']:.0f}"
          f" / {slope:.0f} when the fixed part is small.\n", flush=True)
    bad = [r["mode"] for r in rows if r["check"] != "ok"]
    if bad:
        print(f"ERROR: {bad} disagree with the data written (rows or sum of y)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
