"""Command line: ``xsciml demo`` (the main job) and ``xsciml run`` (batch jobs).

``xsciml demo`` runs end to end on the built-in default dataset — no file or network
needed: generate data → coordinate tensors → fit a neural field on gappy observations
→ compare it with per-frame thin-plate RBF and linear interpolation on the withheld
points → predict on a finer grid → write zarr, netCDF and figures → print a table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main", "run_demo", "build_parser"]


def _step(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[xsciml demo] {msg}", flush=True)


def _frame_points(truth: Any, keep: Any) -> tuple[Any, ...]:
    """Per-frame grid points of ``truth (time, y, x)``: coordinates, frame labels, values,
    and which points are observed."""
    import numpy as np

    v = truth.transpose("time", "y", "x").values
    k = keep.transpose("time", "y", "x").values
    yy, xx = np.meshgrid(truth["y"].values, truth["x"].values, indexing="ij")
    pts = np.tile(np.column_stack([yy.ravel(), xx.ravel()]), (v.shape[0], 1))
    frames = np.repeat(np.arange(v.shape[0]), yy.size)
    return pts, frames, v.ravel(), k.ravel().astype(bool)


def _nrmse(pred: Any, truth: Any) -> float:
    """RMSE over the standard deviation of the truth (as ``NeuralField.score``)."""
    import numpy as np

    return float(np.sqrt(np.mean((pred - truth) ** 2)) / np.std(truth, ddof=1))


def _baselines(truth: Any, keep: Any) -> dict[str, Any]:
    """Predictions of the demo's two references at the withheld points (``~keep``).

    * ``"rbf"``: a thin-plate RBF per frame (:func:`xsciml.interpolation.frame_rbf`);
    * ``"linear"``: linear interpolation per frame (:func:`scipy.interpolate.griddata` on
      the triangulation of the frame's observed points), the nearest observation outside
      their convex hull.

    ``"truth"`` holds the withheld values, in the same order.
    """
    import numpy as np
    from scipy.interpolate import griddata

    from .interpolation import frame_rbf

    pts, frames, values, obs = _frame_points(truth, keep)
    rbf = frame_rbf(pts[obs], values[obs], frames[obs], pts[~obs], frames[~obs])[0]
    query_frames = frames[~obs]
    linear = np.full(query_frames.size, np.nan)
    for f in np.unique(query_frames):
        have, want = obs & (frames == f), ~obs & (frames == f)
        lin = griddata(pts[have], values[have], pts[want], method="linear")
        outside = np.isnan(lin)
        if outside.any():
            lin[outside] = griddata(pts[have], values[have], pts[want][outside], method="nearest")
        linear[query_frames == f] = lin
    return {"rbf": rbf, "linear": linear, "truth": values[~obs]}


def _score_table(rows: list[tuple[str, float, float | None]], n_points: int) -> str:
    """The demo's comparison on the withheld points, as text."""
    width = max(len(name) for name, _, _ in rows)
    lines = [f"on the {n_points} withheld grid values (seen by no method):",
             f"  {'method':<{width}}  {'nRMSE':>7}  {'90 % coverage':>13}"]
    for name, nrmse, coverage in rows:
        cov = f"{coverage:13.3f}" if coverage is not None else f"{'(no σ)':>13}"
        lines.append(f"  {name:<{width}}  {nrmse:7.4f}  {cov}")
    lines.append("  nRMSE: RMSE / std of the withheld values (1 = predicting their mean).")
    lines.append("  coverage: share of withheld values inside the 90 % predictive interval, "
                 "mean ± 1.645 σ (ideal 0.900).")
    return "\n".join(lines)


def run_demo(output: str | Path = "xsciml-demo-output", *, quick: bool = False,
             quiet: bool = False, seed: int = 0) -> dict[str, Any]:
    """Run the main job on the built-in default dataset and return its summary.

    Parameters
    ----------
    output
        Folder for the results (zarr store, netCDF file, figures, ``summary.json``).
    quick
        Fewer training steps (150), used by the tests; otherwise the model's defaults.
    quiet
        No printing, no progress bars.

    Returns
    -------
    dict
        What was done and the scores: ``summary["field"]`` (nRMSE, coverage... of the
        field on the withheld points), ``summary["baselines"]`` (nRMSE of the per-frame
        thin-plate RBF and linear interpolation on the same points) and
        ``summary["table"]``, the comparison as printed.
    seed
        Seed of the data and of the fit.

    Examples
    --------
    >>> summary = run_demo("/tmp/xsciml-demo", quick=True, quiet=True)  # doctest: +SKIP
    >>> print(summary["table"])  # doctest: +SKIP
    on the 14336 withheld grid values (seen by no method):
      method                                       nRMSE  90 % coverage
      neural field (xsciml; predictor: kriging)   0.2158          0.962
      thin-plate RBF per frame (frame_rbf)        0.2023         (no σ)
      linear per frame (scipy griddata)           0.2615         (no σ)
    ...
    """
    import numpy as np

    import xsciml  # noqa: F401

    from . import datasets

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"xsciml_version": xsciml.__version__, "output": str(out.resolve())}

    # 1. data --------------------------------------------------------------------
    _step("generating the built-in heat-equation dataset (exact Fourier solution)", quiet)
    ds = datasets.default_dataset("heat")
    summary["dataset"] = {"variable": "u", "dims": dict(ds.sizes)}

    # 2. tensors and back -----------------------------------------------------------
    _step("converting to coordinate tensors and back", quiet)
    obs = ds.isel(trajectory=0)
    keep = datasets.sample_points(obs.u, 0.3, seed=seed)
    gappy = obs.where(keep)
    data = gappy.sciml.to_tensors("u", space=("y", "x"), time="time")
    back = data.to_dataarray(data.y)
    exact = bool(np.array_equal(back.values[keep.values], gappy.u.values[keep.values]))
    summary["tensors"] = {"points": len(data), "features": data.feature_names,
                          "roundtrip_exact": exact}

    # 3. a neural field on the gappy observations, against two interpolations ----------
    _step("fitting a neural field to 30 % of the points (the model's default settings)", quiet)
    field = gappy.sciml.fit_field("u", space=("y", "x"), time="time",
                                  steps=150 if quick else None, progress=False if quiet else None,
                                  seed=seed)
    y, x = obs["y"].values, obs["x"].values
    fine = {"time": obs.time.values, "y": np.linspace(y.min(), y.max(), 2 * y.size),
            "x": np.linspace(x.min(), x.max(), 2 * x.size)}
    pred = field.predict(fine)
    score = field.score(obs.where(~keep))
    _step("interpolating the same observations frame by frame (thin-plate RBF, linear)", quiet)
    base = _baselines(obs.u, keep)
    rows = [(f"neural field (xsciml; predictor: {field.info.get('predictor')})",
             float(score["nrmse"]), float(score["coverage"])),
            ("thin-plate RBF per frame (frame_rbf)", _nrmse(base["rbf"], base["truth"]), None),
            ("linear per frame (scipy griddata)", _nrmse(base["linear"], base["truth"]), None)]
    table = _score_table(rows, len(base["truth"]))
    summary["field"] = {k: float(v) for k, v in score.items()}
    summary["field"]["predictor"] = field.info.get("predictor")
    summary["field"]["rbf_nrmse_withheld"] = rows[1][1]
    summary["baselines"] = {"rbf": {"nrmse": rows[1][1]}, "linear": {"nrmse": rows[2][1]}}
    summary["table"] = table
    if not quiet:
        print(field.summary())
        print(table, flush=True)
    field.save(out / "field.xsciml")
    pred.to_zarr(out / "field_prediction.zarr", mode="w")
    pred.to_netcdf(out / "field_prediction.nc")
    fig = _figure(obs, gappy, keep, pred, float(score["coverage"]))
    fig.savefig(out / "field.png", dpi=80, bbox_inches="tight")

    ds.to_netcdf(out / "dataset.nc")
    ds.to_zarr(out / "dataset.zarr", mode="w")
    summary["wall_time_s"] = round(time.perf_counter() - t0, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if not quiet:
        print(f"results in {out.resolve()}: field.xsciml (the model), field_prediction.zarr "
              "and .nc (mean and σ on a 2x finer grid), field.png, summary.json "
              f"({summary['wall_time_s']:.0f} s)", flush=True)
    return summary


def _figure(obs: Any, gappy: Any, keep: Any, pred: Any, coverage: float) -> Any:
    """Truth, observations, predicted mean and σ of one early frame, with a caption."""
    import numpy as np

    from .plot import plot_panels

    k = 2  # an early frame: diffusion damps the field fast
    fig = plot_panels({"truth": obs.u.isel(time=k), "observed (30 %)": gappy.u.isel(time=k),
                       "predicted mean (2x finer)": pred["u_mean"].isel(time=k),
                       "σ: predictive std": pred["u_std"].isel(time=k)}, shared_scale=False)
    seen = keep.isel(time=k).transpose("y", "x").values
    yy, xx = np.meshgrid(obs["y"].values, obs["x"].values, indexing="ij")
    fig.axes[3].scatter(xx[seen], yy[seen], s=3, c="w", alpha=0.8, linewidths=0)
    fig.text(0.5, -0.16,
             "σ is the predictive standard deviation of u, in the units of u: the model's "
             "uncertainty, small at the observed points (white dots)\nand larger in the gaps "
             f"between them. On the withheld points, {coverage:.0%} of the true values lie "
             "within the 90 % interval mean ± 1.645 σ.", ha="center", va="top", fontsize=9)
    return fig


def _plain(text: str) -> str:
    """Docstring text without reST markup, for terminal help.

    Examples
    --------
    >>> _plain("``model.predict(ds)`` with a :class:`~xsciml.downscale.Debias` (:func:`xsciml.load`)")
    'model.predict(ds) with a Debias (xsciml.load)'
    """
    def role(match: re.Match[str]) -> str:
        target = match.group(1)
        return target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target

    return re.sub(r":[a-z]+:`([^`]+)`", role, text).replace("``", "")


def _first_line(doc: str | None) -> str:
    """First line of a docstring, as plain text."""
    lines = (doc or "").strip().splitlines()
    return _plain(lines[0].strip()) if lines else ""


def _tasks_help() -> str:
    """One line per registered task: name and the first line of its builder's docstring."""
    from .jobs import registered_tasks, task_builder

    names = registered_tasks()
    width = max((len(n) for n in names), default=0)
    return "tasks:\n" + "\n".join(f"  {n:<{width}}  {_first_line(task_builder(n).__doc__)}"
                                   for n in names)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``xsciml`` command line (``demo`` and ``run`` sub-commands).

    Examples
    --------
    >>> build_parser().parse_args(["demo", "--quick"]).quick
    True
    """
    from . import __version__

    parser = _Parser(prog="xsciml", description=_first_line(__doc__))
    parser.add_argument("--version", action="version", version=f"xsciml {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("demo", help="run the main job on the built-in dataset",
                       description="Fill the gaps of the built-in heat-equation dataset with a "
                                   "neural field, compare it with interpolation baselines on the "
                                   "withheld points, and write the prediction and figures.")
    p.add_argument("--output", "-o", default="xsciml-demo-output",
                   help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small settings (seconds)")
    p.add_argument("--quiet", "-q", action="store_true", help="no printing or progress bars")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the observed points and of the fit (default: %(default)s)")
    r = sub.add_parser(
        "run", help="apply a saved model to a zarr store, region by region (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Run a batch job: open INPUT lazily, apply the model per chunk on a Dask scheduler, "
            "write OUTPUT region by region. Run the same command again after a crash: finished "
            "regions are skipped.", 79),
        epilog=_tasks_help())
    r.add_argument("task", help="task to run (listed below)")
    r.add_argument("--model", "-m", required=True, help="model file written by est.save")
    r.add_argument("--input", "-i", required=True,
                   help="input zarr store (path or URL) or netCDF file (opened lazily with dask)")
    r.add_argument("--output", "-o", required=True, help="output zarr store (path or URL)")
    r.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (tcp://host:8786) or threads/processes/synchronous; "
                        "default: local threads")
    r.add_argument("--region-dim", default=None, help="dimension the output is written along")
    r.add_argument("--region-size", type=int, default=None,
                   help="length of a region along --region-dim (a multiple of the chunk size)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace an output store written by something else or another job")
    r.add_argument("--kwarg", "-k", action="append", default=[], metavar="KEY=VALUE",
                   help="task option (JSON value or string), e.g. -k batch_size=65536 -k device=cuda; "
                        "repeatable")
    r.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xsciml`` console script.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status.

    Examples
    --------
    >>> main(["demo", "--quick", "--quiet", "--output", "/tmp/xsciml-demo"])  # doctest: +SKIP
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(args.output, quick=args.quick, quiet=args.quiet, seed=args.seed)
    elif args.command == "run":
        return _run_job(args, parser)
    return 0


def _task_kwargs(items: list[str], parser: argparse.ArgumentParser) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            parser.error(f"--kwarg takes KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _fail(message: str) -> None:
    """One line on stderr, exit status 2 (as for a wrong command line)."""
    text = " ".join(str(message).split())
    print(f"xsciml run: error: {text}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _run_job(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from .io import ModelFileError
    from .jobs import registered_tasks, run_job

    kwargs = _task_kwargs(args.kwarg, parser)
    if args.task not in registered_tasks():
        _fail(f"unknown task {args.task!r}; choose one of {', '.join(registered_tasks())}")
    try:
        report = run_job(args.task, args.model, args.input, args.output, scheduler=args.scheduler,
                         region_dim=args.region_dim, region_size=args.region_size,
                         progress=False if args.quiet else None, overwrite=args.overwrite,
                         **kwargs)
    except ModelFileError as err:
        _fail(f"--model: {err}")
    except (NotADirectoryError, IsADirectoryError) as err:
        _fail(f"{err.strerror or err}: {err.filename!r}; --output must be a zarr store path "
              "(a directory that does not exist yet, or an earlier job's output)")
    except FileNotFoundError as err:
        _fail(f"{err.strerror or err}: {err.filename!r}; check the --model and --input paths"
              if err.filename else str(err))
    except KeyError as err:  # unknown region dim, variable, coordinate...
        _fail(err.args[0] if err.args else repr(err))
    except (ValueError, TypeError, FileExistsError, OSError) as err:
        # what is wrong with the arguments or the data, as the library words it
        _fail(str(err) or type(err).__name__)
    if not args.quiet:
        print(json.dumps({"output": report.output, "region_dim": report.region_dim,
                          "region_size": report.region_size, "n_regions": report.n_regions,
                          "computed": len(report.computed), "skipped": len(report.skipped),
                          "seconds": report.seconds}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
