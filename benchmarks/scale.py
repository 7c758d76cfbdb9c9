"""Benchmark: a 1e8-point neural-field prediction on a Dask cluster, 1 vs 2 workers.

A SIREN neural field (width 32, depth 2; fitted for a few steps on a small synthetic
field: the weights do not change the speed) predicts mean and std on a fine grid over
many times: ``time x 1000 x 1000`` points, one dask chunk per time step (1e6 points).
The target is a lazy Dataset; ``field.predict`` returns a lazy result (one task per
chunk, the model in the graph once) whose per-variable sums are computed on a
``distributed.LocalCluster`` of 1 or 2 single-threaded worker processes, so that no
prediction travels back to the client (the inference throughput, without disk I/O).

Each configuration gets a fresh cluster, warmed up by one chunk (worker start-up, torch
import, model load), then timed. Reported:

* throughput (points/s, best of ``--repeats``) with 1 and 2 workers, and the parallel
  efficiency ``throughput_2 / (2 * throughput_1)`` (checked: >= 0.8 on 2 cores); ``busy`` is
  the workers' CPU time over ``workers x wall time``: below 1 when other processes take
  the cores, which then caps the measurable efficiency, and the
  efficiency per CPU-second actually used is printed too;
* peak resident memory per worker (``ru_maxrss``) at two dataset sizes 10x apart, with
  the same chunks: it should stay flat (memory is O(chunk), not O(dataset));
* the batch job (``xsciml.jobs.run_job``, zarr output, region by region) on the smaller
  size with 2 workers;
* one chunk on GPU vs CPU when a GPU is present (else "no GPU").

Usage::

    python benchmarks/scale.py            # 1e8 points (and 1e7 for the memory check)
    python benchmarks/scale.py --quick    # 1e7 points (and 1e6)
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from _common import make_parser, print_table

import xsciml
from xsciml.parallel import MODEL_KEY_PREFIX

GRID = (1000, 1000)  # one chunk = one time step = 1e6 points
BAR = 0.8


def fit_model() -> Any:
    """A small SIREN field on a synthetic (time, y, x) field."""
    torch.set_num_threads(1)
    t = np.arange(8.0)
    y = np.linspace(-1, 1, 24)
    x = np.linspace(-1, 1, 32)
    u = np.sin(3 * y)[None, :, None] * np.cos(2 * x)[None, None, :] + 0.1 * t[:, None, None]
    ds = xr.Dataset({"u": (("time", "y", "x"), u, {"units": "K"})},
                    coords={"time": t, "y": y, "x": x})
    # residual="none": this benchmark measures the network's per-chunk throughput (a
    # residual kriging adds tens of microseconds per point, see docs/gap-filling.md)
    return ds.sciml.fit_field("u", space=("y", "x"), time="time", network="siren", steps=20,
                              network_kwargs={"width": 32, "depth": 2}, progress=False, seed=0,
                              residual="none")


def target(n_times: int) -> xr.Dataset:
    """A lazy fine-grid target: ``n_times x 1000 x 1000`` points, one chunk per time."""
    import dask.array as dsa

    ny, nx = GRID
    tmpl = dsa.zeros((n_times, ny, nx), chunks=(1, ny, nx), dtype=np.int8)
    return xr.Dataset({"template": (("time", "y", "x"), tmpl)},
                      coords={"time": np.linspace(0, 7, n_times), "y": np.linspace(-1, 1, ny),
                              "x": np.linspace(-1, 1, nx)})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_cluster(field: Any, n_workers: int, n_times: int, repeats: int = 1) -> dict[str, Any]:
    """Throughput (best of ``repeats``) and worker peak memory on a fresh cluster.

    ``busy`` is the workers' CPU time over ``n_workers x wall time`` in the best run: well
    below 1 means the cores were busy with something else.
    """
    import dask
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", memory_limit="4GiB") as cluster, \
            Client(cluster) as client:
        warm = field.predict(target(n_workers), batch_size=65536)
        dask.compute(warm.u_mean.sum(), warm.u_std.sum())  # start-up, torch import, model load
        pred = field.predict(target(n_times), batch_size=65536)
        best = (float("inf"), 0.0)
        for _ in range(repeats):
            cpu0 = sum(client.run(_cpu_seconds).values())
            t0 = time.perf_counter()
            dask.compute(pred.u_mean.sum(), pred.u_std.sum())
            seconds = time.perf_counter() - t0
            cpu = sum(client.run(_cpu_seconds).values()) - cpu0
            best = min(best, (seconds, cpu))
        peaks = client.run(_peak_rss_mb)
    seconds, cpu = best
    points = n_times * GRID[0] * GRID[1]
    return {"workers": n_workers, "points": points, "chunks": n_times, "seconds": seconds,
            "Mpoints/s": points / seconds / 1e6, "busy": cpu / (n_workers * seconds),
            "peak MB/worker": max(peaks.values())}


def run_job_once(field: Any, n_workers: int, n_times: int) -> dict[str, Any]:
    """The resumable batch job: zarr in, zarr out, region by region."""
    from distributed import Client, LocalCluster

    from xsciml.jobs import run_job

    tmp = Path(tempfile.mkdtemp(prefix="xsciml-scale-"))
    try:
        field.save(tmp / "field.xsciml")
        target(n_times).to_zarr(tmp / "in.zarr")
        with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0", memory_limit="4GiB") as cluster, \
                Client(cluster) as client:
            client.run(lambda: __import__("xsciml.models.field"))
            report = run_job("predict", tmp / "field.xsciml", tmp / "in.zarr", tmp / "out.zarr",
                             scheduler=client, progress=False)
            peaks = client.run(_peak_rss_mb)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    points = n_times * GRID[0] * GRID[1]
    return {"workers": n_workers, "points": points, "regions": report.n_regions,
            "seconds": report.seconds, "Mpoints/s": points / report.seconds / 1e6,
            "peak MB/worker": max(peaks.values())}


def graph_check(field: Any, n_times: int) -> dict[str, Any]:
    """The model's bytes are one graph entry, however many chunks."""
    import pickle

    blob = xsciml.io.save_bytes(field)
    pred = field.predict(target(n_times))
    graph = dict(pred.__dask_graph__())
    # tasks pickled one by one (as the scheduler ships them) that carry the weights
    holding = sum(blob[-4096:] in pickle.dumps(v) for v in graph.values())
    models = sum(str(k).startswith(MODEL_KEY_PREFIX) for k in graph)
    return {"chunks": n_times, "graph tasks": len(graph), "model bytes": len(blob),
            "model keys": models, "tasks holding the weights": holding}


def gpu_vs_cpu(field: Any) -> list[dict[str, Any]] | None:
    """One 1e6-point chunk through the per-chunk kernel on each device."""
    if not torch.cuda.is_available():
        return None
    from xsciml.models.field import _predict_block
    from xsciml.parallel import load_model

    blob = xsciml.io.save_bytes(field)
    ny, nx = GRID
    blocks = (np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), np.array([3.5]))
    kw = {"names": ("y", "x", "time"), "var_dims": (("y",), ("x",), ("time",)),
          "dims": ("time", "y", "x"), "data_names": (), "batch_size": 2**18}
    rows = []
    for dev in ("cpu", "cuda"):
        device = torch.device(dev)
        model = load_model(blob, device)
        with torch.inference_mode():
            _predict_block(model, *blocks, device=device, **kw)
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(3):
                _predict_block(model, *blocks, device=device, **kw)
            if dev == "cuda":
                torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / 3
        rows.append({"device": dev, "threads": torch.get_num_threads() if dev == "cpu" else None,
                     "s/chunk": seconds, "Mpoints/s": ny * nx / seconds / 1e6})
    return rows


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed runs per configuration, the best is reported (default 2)")
    args = parser.parse_args()
    small, large = (1, 10) if args.quick else (10, 100)
    field = fit_model()
    print(f"neural field: {field!r}; chunk = 1 time x {GRID[0]} x {GRID[1]} = 1e6 points; "
          f"{os.cpu_count()} CPU cores")

    print_table([graph_check(field, large)], title="model in the graph (lazy result, not computed)")

    one = run_cluster(field, 1, large, args.repeats)
    two = run_cluster(field, 2, large, args.repeats)
    eff = two["Mpoints/s"] / (2 * one["Mpoints/s"])
    print_table([one, two], title=f"throughput, {large * GRID[0] * GRID[1]:.0e} points "
                                  f"(best of {args.repeats})")
    print(f"parallel efficiency 2 workers vs 1: {eff:.2f} (check >= {BAR}: "
          f"{'PASS' if eff >= BAR else 'FAIL'})")
    if min(one["busy"], two["busy"]) < 0.9:
        # throughput per CPU-second the workers actually got: the scaling of the machinery
        # itself (scheduling, model transfer, per-chunk overhead) on a machine shared with
        # other processes
        per_cpu = (two["Mpoints/s"] / two["busy"]) / (2 * one["Mpoints/s"] / one["busy"])
        print("note: the workers got less than 90 % of their cores (busy < 0.9): other processes "
              "share this machine, so the wall-clock efficiency above understates the scaling; "
              f"per CPU-second actually used, 2 workers vs 1: {per_cpu:.2f}")

    two_small = run_cluster(field, 2, small, args.repeats)
    print_table([two_small, two], title="peak memory per worker as the dataset grows 10x (2 workers)")
    growth = two["peak MB/worker"] / two_small["peak MB/worker"]
    print(f"peak memory ratio (10x data): {growth:.2f}")

    print_table([run_job_once(field, 2, small)],
                title="batch job (run_job: zarr in -> zarr out, region by region), 2 workers")

    rows = gpu_vs_cpu(field)
    if rows is None:
        print("\nGPU vs CPU per chunk: no GPU")
    else:
        print_table(rows, title="one 1e6-point chunk, GPU vs CPU")


if __name__ == "__main__":
    main()
