"""Benchmark: learning to invert heat conduction, SIP vs backprop through the physics.

The heat experiment of Holl, Koltun & Thuerey, "Scale-invariant Learning by Physics
Inversion" (NeurIPS 2022) at CPU size: sources of 4-10 soft-edged random rectangles on
a 64 x 64 periodic grid of unit cells, observed after diffusion with amount 8 (float64
physics). Every method trains the same ~38 k-parameter U-Net (float32) from the same
initial weights on the same on-the-fly data stream, in the default design of
``fit_inversion``: the network refines the damped inverse-physics estimate
(``x = P^-1 y + N(y, P^-1 y)``, correction initialised at zero) and estimates are
clipped to the sources' range (non-negative):

* ``SIP (Adam)``        -- scale-invariant physics updates (proxy target: one damped
  inverse-physics step from the prediction, clipped to the range), Adam 1e-3;
* ``GD (Adam)``         -- backprop through the physics, 1/2 ||P(N(y)) - y||^2, Adam 1e-3;
* ``GD (SGD)``          -- the same loss with SGD (lr 2e-6 per example, as the
  reference's summed-over-batch loss with lr 2e-6);
* ``Supervised (Adam)`` -- 1/2 ||N(y) - x*||^2, which needs the true sources;

and the network-free damped inverse-physics step applied once (the estimate every
network starts from), as is and clipped to the range, and iterated 200 times with the
clipping after each step (projected inverse physics, the classical iterative method). Errors on held-out examples from
a separate seed: x-space 1/2 sum (x - x*)^2, L1 sum |x - x*| and relative L2
||x - x*|| / ||x*|| (mean +- std), each method's x-space error relative to the physics
step, wall-clock (training plus uncertainty calibration), and the step from which the
training error stays below that of the physics step (as is, and clipped) on the same
batches: trailing means over up to 10 steps of the errors on the fresh training
batches, measured before each update. The uncertainty of each network (calibrated on
separate held-out examples) is checked by the mean squared z-score of its errors on
the test examples (1 = calibrated).

Usage::

    python benchmarks/inverse_heat.py             # CPU size: batch 32, 150 steps
    python benchmarks/inverse_heat.py --paper     # batch 128, 1000 steps (for a GPU)
    python benchmarks/inverse_heat.py --quick     # smoke run
    python benchmarks/inverse_heat.py --figure docs/images/inverse_panels.png
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from _common import make_parser, print_table

from xsciml.inverse import HeatOperator, RandomRectangles, fit_inversion, source_errors

#: Trailing-mean window (steps) of the crossing-step criterion ...
WINDOW = 10
#: ... and the relative margin by which the error must be below the reference.
MARGIN = 1e-3


def _fmt(values: torch.Tensor) -> str:
    return f"{values.mean().item():.2f} ± {values.std().item():.2f}"


def _fmt_rel(values: torch.Tensor) -> str:
    return f"{values.mean().item():.3f} ± {values.std().item():.3f}"


def _trailing_mean(values: list[float], window: int) -> torch.Tensor:
    """Mean over the last ``min(step, window)`` steps, at every step."""
    v = torch.tensor(values, dtype=torch.float64)
    c = torch.cat([torch.zeros(1, dtype=torch.float64), v.cumsum(0)])
    steps = torch.arange(1, v.numel() + 1)
    start = (steps - window).clamp(min=0)
    return (c[steps] - c[start]) / (steps - start)


def crossing_step(errors: list[float], reference: list[float], window: int = WINDOW) -> int | None:
    """First step from which the trailing mean of ``errors`` stays below ``reference``'s.

    Trailing means over the last ``min(step, window)`` steps, below by more than
    ``MARGIN`` (relative); ``None`` if the errors
    are not below the reference at the last step.
    """
    below = _trailing_mean(errors, window) < (1 - MARGIN) * _trailing_mean(reference, window)
    if not bool(below[-1]):
        return None
    above = torch.nonzero(~below)
    return 1 if above.numel() == 0 else int(above[-1]) + 2


def make_figure(path: Path, x_test, y_test, x_phys, learned: dict[str, torch.Tensor],
                uncertainty: torch.Tensor | None, examples=(0, 1, 2)) -> None:
    """Truth, observation, physics inverse and learned inverses side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [("truth x*", x_test), ("observation y", y_test), ("physics inverse P⁻¹y", x_phys)]
    cols += [(f"learned: {name}", est) for name, est in learned.items()]
    if uncertainty is not None:
        cols.append(("uncertainty (std)", uncertainty))
    fig, axes = plt.subplots(len(examples), len(cols), figsize=(2.1 * len(cols), 2.2 * len(examples)),
                             constrained_layout=True, squeeze=False)
    for r, i in enumerate(examples):
        vmax = float(x_test[i].max())
        for c, (title, field) in enumerate(cols):
            ax = axes[r, c]
            err = ""
            if c >= 2 and title != "uncertainty (std)":
                err = f"\n½Σ(x−x*)² = {source_errors(field[i:i + 1], x_test[i:i + 1])['x_l2'].item():.2f}"
            is_unc = title == "uncertainty (std)"
            ax.imshow(field[i].numpy(), cmap="viridis" if is_unc else "magma",
                      vmin=0, vmax=None if is_unc else vmax, origin="lower",
                      interpolation="nearest")
            ax.set_title((title if r == 0 else "") + err, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=60, pil_kwargs={"optimize": True})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 150; 1000 with --paper)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32; 128 with --paper)")
    parser.add_argument("--eval", type=int, default=256, help="held-out examples")
    parser.add_argument("--amount", type=float, default=8.0, help="diffusion amount")
    parser.add_argument("--seed", type=int, default=0, help="network init and data-stream seed")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--paper", action="store_true", help="paper-sized setting (for a GPU)")
    parser.add_argument("--json", type=Path, default=None, help="also write results to this JSON file")
    parser.add_argument("--figure", type=Path, default=None,
                        help="also save a PNG of truth / observation / physics / learned inverses")
    args = parser.parse_args(argv)
    steps = args.steps or (1000 if args.paper else 10 if args.quick else 150)
    batch = args.batch or (128 if args.paper else 8 if args.quick else 32)
    n_eval = 16 if args.quick else args.eval
    calib = 16 if args.quick else 128
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XSCIML_PROGRESS", "0")

    op = HeatOperator(args.amount)
    data = RandomRectangles((64, 64), batch_size=batch)
    x_test = data.sample(n_eval, torch.Generator().manual_seed(10_000 + args.seed))
    y_test = op(x_test)

    t0 = time.perf_counter()
    x_phys = op.inverse(y_test)
    phys_wall = time.perf_counter() - t0
    phys_err = source_errors(x_phys, x_test)
    phys = phys_err["x_l2"].mean().item()
    low, high = data.bounds
    clipped_err = source_errors(x_phys.clamp(min=low, max=high), x_test)
    # the classical iterative alternative: projected inverse-physics steps (Gerchberg 1974;
    # Youla & Webb 1982), x <- clip(x + P^-1 (y - P x)), no network
    n_proj = 20 if args.quick else 200
    t0 = time.perf_counter()
    x_proj = x_phys.clamp(min=low, max=high)
    for _ in range(n_proj):
        x_proj = (x_proj + op.inverse(y_test - op(x_proj))).clamp(min=low, max=high)
    proj_wall = time.perf_counter() - t0
    proj_err = source_errors(x_proj, x_test)

    runs = [
        ("SIP (Adam)", dict(method="sip", optimizer="adam", lr=1e-3)),
        ("GD (Adam)", dict(method="gd", optimizer="adam", lr=1e-3)),
        ("GD (SGD)", dict(method="gd", optimizer="sgd", lr=2e-6 * batch)),
        ("Supervised (Adam)", dict(method="supervised", optimizer="adam", lr=1e-3)),
    ]
    print(f"heat inversion: 64x64, amount {args.amount}, batch {batch}, {steps} steps, "
          f"{n_eval} held-out, device {args.device}, {torch.get_num_threads()} threads", flush=True)
    print(f"  physics inverse, 1 step: x-space {phys:.2f}", flush=True)
    rows, estimates = [], {}
    for name, kw in runs:
        t0 = time.perf_counter()
        inv = fit_inversion(op, data, steps=steps, device=args.device, seed=args.seed,
                            progress=False, calibration_examples=calib, **kw)
        wall = time.perf_counter() - t0
        train_s = inv.training["wall_time_s"]
        res = inv.predict(y_test, batch_size=64)
        err = source_errors(res.estimate, x_test)
        z2 = ((res.estimate.double() - x_test) / res.uncertainty.double()).pow(2).mean().item()
        logs = inv.history.logs
        cross = crossing_step(logs["x_l2"], logs["x_l2_physics"])
        cross_b = crossing_step(logs["x_l2"], logs["x_l2_physics_bounded"])
        rows.append(dict(name=name, err=err, wall=wall, train=train_s, step=train_s / steps,
                         cross=cross, cross_b=cross_b, z2=z2,
                         curve={k: logs[k] for k in ("x_l2", "x_l2_physics", "x_l2_physics_bounded")}))
        estimates[name] = (res.estimate, res.uncertainty)
        print(f"  {name:<17} done in {wall:6.1f} s ({train_s:.1f} s training); x-space "
              f"{err['x_l2'].mean():.2f}, {err['x_l2'].mean() / phys:.3f} x physics; below the "
              f"physics step from step {cross if cross is not None else '-'} (clipped: "
              f"{cross_b if cross_b is not None else '-'})", flush=True)
    rows.append(dict(name="Inverse physics, 1 step (no network)", err=phys_err, wall=phys_wall,
                     train=None, step=None, cross=None, cross_b=None, z2=None))
    rows.append(dict(name="Inverse physics, 1 step, clipped to range", err=clipped_err,
                     wall=phys_wall, train=None, step=None, cross=None, cross_b=None, z2=None))
    rows.append(dict(name=f"Projected inverse physics, {n_proj} steps", err=proj_err,
                     wall=proj_wall, train=None, step=None, cross=None, cross_b=None, z2=None))

    table = [{"method": r["name"], "x-space ½Σ(x−x*)²": _fmt(r["err"]["x_l2"]),
              "÷ physics": round(r["err"]["x_l2"].mean().item() / phys, 3),
              "L1 Σ|x−x*|": _fmt(r["err"]["l1"]), "rel. L2": _fmt_rel(r["err"]["rel_l2"]),
              "wall-clock [s]": round(r["wall"], 1),
              "s/step": None if r["step"] is None else round(r["step"], 3),
              "below physics from step": ("-" if r["train"] is None else
                                          (r["cross"] if r["cross"] is not None else "never")),
              "below clipped from step": ("-" if r["train"] is None else
                                          (r["cross_b"] if r["cross_b"] is not None else "never")),
              "mean z²": None if r["z2"] is None else round(r["z2"], 2)}
             for r in rows]
    print()
    print_table(table, title=f"Heat inversion, {steps} steps of batch {batch} "
                             f"(mean ± std over {n_eval} held-out examples)")
    sip = rows[0]["err"]["x_l2"].mean().item()
    adam = rows[1]["err"]["x_l2"].mean().item()
    ratio = sip / adam
    print(f"SIP / GD (Adam) x-space ratio: {ratio:.3f}; SIP / physics inverse: {sip / phys:.3f}")

    if args.figure is not None:
        est, unc = estimates["SIP (Adam)"]
        make_figure(args.figure, x_test, y_test, x_phys,
                    {"SIP": est, "supervised": estimates["Supervised (Adam)"][0]}, unc)
        print(f"figure written to {args.figure} ({args.figure.stat().st_size / 1024:.0f} kB)")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "steps": steps, "batch": batch, "eval": n_eval, "amount": args.amount,
            "seed": args.seed, "ratio_sip_over_adam": ratio, "ratio_sip_over_physics": sip / phys,
            "physics_x_l2": phys, "crossing_window": WINDOW,
            "rows": [{"method": r["name"], "wall_s": r["wall"], "train_s": r["train"],
                      "ratio_over_physics": r["err"]["x_l2"].mean().item() / phys,
                      "crossing_step": r["cross"], "crossing_step_clipped": r["cross_b"],
                      "mean_z2": r["z2"], "training_curves": r.get("curve"),
                      **{k: [v.mean().item(), v.std().item()] for k, v in r["err"].items()}}
                     for r in rows],
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
