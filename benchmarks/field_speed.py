"""Benchmark: ``NeuralField.predict`` throughput against the machine's fp32 GEMM speed.

For each network (``mlp``, ``siren``, ``grid``, at ``fit_field``'s default sizes) a
field is fitted for a few steps on the built-in heat data (the weights do not change
the speed), then ``field.predict`` runs on a dict target of 1e6 points
(10 times x 100 x 1000) and is timed end to end: encoding the coordinates, the
network in batches, the likelihood's moments and the labelled Dataset.

The reference, measured in the same run with the same thread count, is the bare
``torch.addmm`` chain of the network's own ``nn.Linear`` layers (same weights, same
batch size as ``predict``, no activations, no copies) over the same number of points:
the GEMM work a forward pass cannot avoid. ``fraction = predict points/s / GEMM
points/s``. Check: >= 50 % for the MLP and SIREN paths (the grid path adds the
interpolation, which is not a GEMM; it is reported for information).

A per-stage breakdown (encode / network / moments / labelling, and the bare module
forward without the copy-out) shows where any overhead goes, and a last table gives
predict's throughput against its ``batch_size`` (cache effects of the activations).

Usage::

    python benchmarks/field_speed.py              # 1e6 points, 1 thread
    python benchmarks/field_speed.py --threads 2
    python benchmarks/field_speed.py --quick      # 1e5 points, smoke run
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import make_parser, print_table
from torch import nn

import xsciml
from xsciml.models import NeuralField

MODELS = ("mlp", "siren", "grid")
BAR = 0.5


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Smallest wall-clock of ``repeats`` calls of ``fn`` (after one warm-up call).

    Examples
    --------
    >>> best_time(lambda: sum(range(10)), 2) >= 0.0
    True
    """
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def fitted_field(model: str, steps: int) -> NeuralField:
    """A field of ``model``'s default size, fitted for ``steps`` steps on the heat data.

    Examples
    --------
    >>> f = fitted_field("mlp", 2)  # doctest: +SKIP
    >>> f.info["network"]  # doctest: +SKIP
    'mlp'
    """
    ds = xsciml.datasets.default_dataset("heat").isel(trajectory=0)
    return ds.sciml.fit_field("u", space=("y", "x"), time="time", network=model, steps=steps,
                              val_fraction=0.0, progress=False, seed=0, device="cpu")


def target_grid(n_points: int) -> dict[str, np.ndarray]:
    """A dict grid of about ``n_points`` points: 10 times x (n/1e4) y x 1000 x.

    Examples
    --------
    >>> g = target_grid(10_000)
    >>> int(np.prod([v.size for v in g.values()]))
    10000
    """
    n_y = max(1, n_points // 10_000)
    return {"time": np.linspace(0.0, 0.5, 10), "y": np.linspace(-1.0, 1.0, n_y),
            "x": np.linspace(-1.0, 1.0, 1000)}


def linear_layers(net: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` layers of a network in registration (= forward) order."""
    return [m for m in net.modules() if isinstance(m, nn.Linear)]


def gemm_chain_seconds(layers: list[nn.Linear], n_points: int, batch_size: int,
                       repeats: int) -> tuple[float, float]:
    """Seconds of the bare ``addmm`` chain of ``layers`` over ``n_points``, and its FLOPs.

    Each layer ``i`` maps the previous layer's output (the first takes a random
    ``[batch, in_features]`` input) with ``torch.addmm(bias, h, W.T)``: exactly the
    GEMMs of a forward pass, without activations, copies or Python per point.
    Layers whose input size does not follow the previous output (e.g. a FiLM branch)
    start from their own random input.
    """
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch_size, layer.in_features, generator=g) for layer in layers]
    weights = [(layer.bias if layer.bias is not None else torch.zeros(layer.out_features),
                layer.weight.detach().t()) for layer in layers]
    n_batches, rest = divmod(n_points, batch_size)
    rest_inputs = [x[:rest] for x in inputs]

    def chain(xs: list[torch.Tensor]) -> None:
        h = xs[0]
        for (b, wt), x, layer in zip(weights, xs, layers, strict=True):
            if h.shape[1] != layer.in_features:
                h = x
            h = torch.addmm(b, h, wt)

    def run() -> None:
        with torch.inference_mode():
            for _ in range(n_batches):
                chain(inputs)
            if rest:
                chain(rest_inputs)

    flops = 2.0 * n_points * sum(layer.in_features * layer.out_features for layer in layers)
    return best_time(run, repeats), flops


def stage_seconds(field: NeuralField, target: Any, batch_size: int,
                  repeats: int) -> dict[str, float]:
    """Seconds of each stage of ``predict`` (best of ``repeats``), from its building blocks."""
    tp = field.target(target)
    out = field._net_out(tp.features, batch_size, "cpu")
    module = field.module.eval()

    def bare_forward() -> None:
        with torch.inference_mode():
            for i in range(0, len(tp.features), batch_size):
                module(tp.features[i:i + batch_size])

    return {
        "encode_s": best_time(lambda: field.target(target), repeats),
        "network_s": best_time(lambda: field._net_out(tp.features, batch_size, "cpu"), repeats),
        "bare_forward_s": best_time(bare_forward, repeats),
        "moments_s": best_time(lambda: field._moments(out), repeats),
    }


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--points", type=int, default=None,
                        help="target points (default 1e6; 1e5 with --quick)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="predict batch size, also used for the GEMM reference "
                             "(default: predict's own default)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 by default: a second thread spins when the cores are busy)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=MODELS)
    parser.add_argument("--sweep", nargs="*", type=int, default=[4096, 16384, 65536],
                        help="batch sizes of the throughput-vs-batch table (none: skip it)")
    args = parser.parse_args(argv)
    n_points = args.points or (100_000 if args.quick else 1_000_000)
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XSCIML_PROGRESS", "0")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    if args.batch_size is None:  # predict's own default: None means its CPU default
        args.batch_size = inspect.signature(NeuralField.predict).parameters["batch_size"].default
        if args.batch_size is None:
            from xsciml.models.field import _default_batch_size

            args.batch_size = _default_batch_size(torch.device("cpu"))
    target = target_grid(n_points)
    n_points = int(np.prod([v.size for v in target.values()]))
    rows, stages, sweep = [], [], []
    for model in args.models:
        field = fitted_field(model, steps=5)
        t_predict = best_time(lambda field=field: field.predict(target, batch_size=args.batch_size,
                                                                 device="cpu"), repeats)
        layers = linear_layers(field.module.network)
        t_gemm, flops = gemm_chain_seconds(layers, n_points, args.batch_size, repeats)
        pts_predict, pts_gemm = n_points / t_predict, n_points / t_gemm
        fraction = pts_predict / pts_gemm
        required = model in ("mlp", "siren")
        rows.append({
            "model": model,
            "layers": " ".join(f"{m.in_features}x{m.out_features}" for m in layers),
            "points": n_points,
            "predict_s": t_predict,
            "predict_pts/s": pts_predict,
            "gemm_pts/s": pts_gemm,
            "gemm_GFLOP/s": flops / t_gemm / 1e9,
            "fraction": fraction,
            "check": f">= {BAR:.0%}" if required else "(info)",
            "pass": (fraction >= BAR) if required else None,
        })
        st = stage_seconds(field, target, args.batch_size, repeats)
        st["labelling_s"] = max(t_predict - st["encode_s"] - st["network_s"] - st["moments_s"], 0.0)
        stages.append({"model": model, "predict_s": t_predict, **st,
                       "gemm_s": t_gemm})
        row: dict[str, Any] = {"model": model}
        for b in ([] if args.quick else args.sweep):
            t = best_time(lambda field=field, b=b: field.predict(target, batch_size=b, device="cpu"),
                          repeats)
            row[f"pts/s @ {b}"] = n_points / t
            row[f"gemm @ {b}"] = n_points / gemm_chain_seconds(layers, n_points, b, repeats)[0]
        if len(row) > 1:
            sweep.append(row)

    print_table(rows, title=(f"NeuralField.predict throughput, {n_points:,} points, batch "
                             f"{args.batch_size}, {args.threads} thread(s), load avg {load:.1f}"),
                floatfmt=".3g")
    print_table(stages, title="where predict's time goes (seconds, best of repeats)", floatfmt=".3f")
    if sweep:
        print_table(sweep, title="predict and GEMM-chain throughput (points/s) against batch_size")
    required_rows = [r for r in rows if r["pass"] is not None]
    if args.quick:  # a smoke run: 1 repeat on 1e5 points, the throughput is not judged
        print("--quick: smoke run, the throughput is not judged (exit status 0)")
        return 0
    return 0 if all(r["pass"] for r in required_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
