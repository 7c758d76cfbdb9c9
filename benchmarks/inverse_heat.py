"""Benchmark: learning to invert heat conduction, SIP vs backprop through the physics.

Reproduces the heat experiment of Holl, Koltun & Thuerey, "Scale-invariant Learning
by Physics Inversion" (NeurIPS 2022) at CPU size: sources of 4-10 soft-edged random
rectangles on a 64 x 64 periodic grid of unit cells, observed after diffusion with
amount 8 (float64 physics); the same ~38 k-parameter U-Net (float32), the same initial
weights and the same on-the-fly data stream for every method:

* ``SIP (Adam)``  -- scale-invariant physics updates, Adam 1e-3;
* ``GD (Adam)``   -- backprop through the physics, loss 1/2 ||P(N(y)) - y||^2, Adam 1e-3;
* ``GD (SGD)``    -- the same loss with SGD (lr 2e-6 per example, as the reference's
  summed-over-batch loss with lr 2e-6);

plus the network-free damped inverse-physics step as a baseline. Errors are measured
on a held-out batch drawn from a different seed: x-space 1/2 sum (x - x*)^2, L1 sum
|x - x*| and relative L2 ||x - x*|| / ||x*|| (mean +- std), with training wall-clock.

Bar: SIP's x-space error <= 0.7 x that of GD (Adam) at equal steps.

Usage::

    python benchmarks/inverse_heat.py             # CPU size: batch 32, 150 steps (~5 min)
    python benchmarks/inverse_heat.py --paper     # batch 128, 1000 steps (for a GPU)
    python benchmarks/inverse_heat.py --quick     # smoke run (bar not assessed)
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

BAR = 0.7


def _fmt(values: torch.Tensor) -> str:
    return f"{values.mean().item():.2f} ± {values.std().item():.2f}"


def _fmt_rel(values: torch.Tensor) -> str:
    return f"{values.mean().item():.3f} ± {values.std().item():.3f}"


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
    args = parser.parse_args(argv)
    steps = args.steps or (1000 if args.paper else 10 if args.quick else 150)
    batch = args.batch or (128 if args.paper else 8 if args.quick else 32)
    n_eval = 16 if args.quick else args.eval
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XSCIML_PROGRESS", "0")

    op = HeatOperator(args.amount)
    data = RandomRectangles((64, 64), batch_size=batch)
    x_test = data.sample(n_eval, torch.Generator().manual_seed(10_000 + args.seed))
    y_test = op(x_test)

    runs = [
        ("SIP (Adam)", dict(method="sip", optimizer="adam", lr=1e-3)),
        ("GD (Adam)", dict(method="gd", optimizer="adam", lr=1e-3)),
        ("GD (SGD)", dict(method="gd", optimizer="sgd", lr=2e-6 * batch)),
    ]
    print(f"heat inversion: 64x64, amount {args.amount}, batch {batch}, {steps} steps, "
          f"{n_eval} held-out, device {args.device}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for name, kw in runs:
        t0 = time.perf_counter()
        inv = fit_inversion(op, data, steps=steps, device=args.device, seed=args.seed,
                            progress=False, **kw)
        wall = time.perf_counter() - t0
        err = source_errors(inv.predict(y_test, batch_size=64), x_test)
        rows.append((name, err, wall, wall / steps))
        print(f"  {name:<12} done in {wall:6.1f} s; x-space {err['x_l2'].mean():.2f}", flush=True)

    t0 = time.perf_counter()
    x_inv = op.inverse(y_test)
    rows.append(("Inverse physics, 1 step (no network)", source_errors(x_inv, x_test),
                 time.perf_counter() - t0, None))

    table = [{"method": name, "x-space ½Σ(x−x*)²": _fmt(err["x_l2"]), "L1 Σ|x−x*|": _fmt(err["l1"]),
              "rel. L2": _fmt_rel(err["rel_l2"]), "wall-clock [s]": round(wall, 1),
              "s/step": None if step_time is None else round(step_time, 3)}
             for name, err, wall, step_time in rows]
    print()
    print_table(table, title=f"Heat inversion, {steps} steps of batch {batch} "
                             f"(mean ± std over {n_eval} held-out examples)")
    sip = rows[0][1]["x_l2"].mean().item()
    adam = rows[1][1]["x_l2"].mean().item()
    ratio = sip / adam
    passed = ratio <= BAR
    verdict = "not assessed (--quick)" if args.quick else ("PASS" if passed else "FAIL")
    print(f"SIP / GD(Adam) x-space ratio: {ratio:.3f} (bar <= {BAR}) -> {verdict}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "steps": steps, "batch": batch, "eval": n_eval, "amount": args.amount,
            "seed": args.seed, "ratio_sip_over_adam": ratio,
            "rows": [{"method": n, "wall_s": w, **{k: [v.mean().item(), v.std().item()]
                                                   for k, v in e.items()}} for n, e, w, _ in rows],
        }, indent=2))
    return 0 if passed or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
