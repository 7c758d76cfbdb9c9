"""Every benchmark's ``--quick`` mode runs to the end (exit status 0) in a subprocess.

The quick runs check that the scripts still work with the package, not their numbers.
All are marked ``bench``: ``make test`` leaves them out and ``make bench-smoke`` (run by
CI after the tests) runs them. Those that take more than about half a minute on two
CPU cores are also marked ``slow``.
Benchmarks that read ``../shared/data`` print "skipped" and exit 0 when it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"

#: quick runs measured at over ~30 s on two shared CPU cores
SLOW = {"downscale", "_suite_downscale", "gap_fill", "gappy", "inverse_heat", "ot_scale", "scale", "smooth_dynamics",
        "suite", "tensors"}


#: the suite's gap-filling section here: its other sections run on their own below
EXTRA_ARGS = {"suite": ["--section", "gap"]}

#: suite sections that also run on their own (``python benchmarks/_suite_NAME.py --quick``)
SECTIONS = {"_suite_downscale"}


def _scripts() -> list[str]:
    scripts = {p.stem for p in BENCH_DIR.glob("*.py") if not p.name.startswith("_") and p.name != "run.py"}
    return sorted(scripts | {s for s in SECTIONS if (BENCH_DIR / f"{s}.py").exists()})


def _param(name: str):
    marks = [pytest.mark.bench] + ([pytest.mark.slow] if name in SLOW else [])
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in _scripts()])
def test_benchmark_quick_mode_runs(name, tmp_path):
    env = {**os.environ, "XSCIML_PROGRESS": "0", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(BENCH_DIR / f"{name}.py"), "--quick", *EXTRA_ARGS.get(name, [])],
                       cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])


# --------------------------------------------------------------------------- forecast section
# The forecast section of the suite is a module (benchmarks/_suite_forecast.py, left out of
# _scripts by its leading underscore) with a command line of its own: its quick mode runs here.
@pytest.mark.bench
def test_forecast_suite_quick_mode_runs(tmp_path):
    env = {**os.environ, "XSCIML_PROGRESS": "0", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "forecast.json"
    r = subprocess.run([sys.executable, str(BENCH_DIR / "_suite_forecast.py"), "--quick", "--json", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    import json

    res = json.loads(out.read_text())
    assert [s["case"] for s in res["summary"]][-2:] == ["heat", "navier_stokes"]
    for row in res["rows"]:  # every real case: one row per lead, the references all scored
        assert row["n"] >= 1 and row["best ref."] > 0 and row["learned"] > 0, row


def _forecast_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import _suite_forecast

    return _suite_forecast


class _Stub:
    """A forecaster of known fields: ``value`` everywhere, plus ``offsets`` per ensemble member."""

    variables = ["u"]

    def __init__(self, value, offsets):
        self.value, self.offsets = value, offsets

    def _field(self, init, lead):
        import numpy as np
        import xarray as xr

        shape = (init.sizes["time"], len(lead), init.sizes["x"])
        return xr.DataArray(np.full(shape, self.value), dims=("time", "lead", "x"))

    def forecast(self, init, *, lead):
        return self._field(init, lead)


class _StubWithOptions(_Stub):
    def forecast(self, init, *, lead, combine=True, members=None):
        import xarray as xr

        fc = self._field(init, lead) + (0.0 if combine else 1.0)
        if members is None:
            return fc
        off = xr.DataArray(self.offsets[:members], dims="member")
        return (fc + off).transpose("member", ...)


class _StubWithRecent(_StubWithOptions):
    def forecast(self, init, *, lead, combine=True, members=None, recent=None):
        fc = super().forecast(init, lead=lead, combine=combine, members=members)
        return fc if recent is None else 2 * fc  # recognisably the recent-calibrated ensemble


def test_forecast_suite_calls_only_the_options_the_model_has(monkeypatch):
    import numpy as np
    import xarray as xr

    sf = _forecast_module(monkeypatch)
    init = xr.Dataset({"u": (("time", "x"), np.zeros((2, 3)))})
    lead = np.array([1, 2], "timedelta64[h]")
    fc, why = sf.forecasts(_Stub(5.0, None), init, lead)
    assert fc["default"] is None and fc["ensemble"] is None
    assert float(fc["learned"].mean()) == 5.0
    assert "combine" in why["default"] and "members" in why["ensemble"]
    fc, why = sf.forecasts(_StubWithOptions(5.0, np.arange(16.0)), init, lead, members=4)
    assert why == {}
    assert float(fc["default"].mean()) == 5.0 and float(fc["learned"].mean()) == 6.0
    assert fc["ensemble"].sizes["member"] == 4
    assert fc["ensemble"].isel(member=3, time=0, lead=0, x=0).item() == 8.0
    assert fc["ensemble_recent"] is None
    # the ensemble calibrated on the observed record, where forecast() takes recent=
    fc, why = sf.forecasts(_StubWithOptions(5.0, np.arange(16.0)), init, lead, members=4, record=init)
    assert fc["ensemble_recent"] is None and "recent=" in why["ensemble_recent"]
    assert fc["default_recent"] is None and "recent=" in why["default_recent"]
    fc, why = sf.forecasts(_StubWithRecent(5.0, np.arange(16.0)), init, lead, members=4, record=init)
    assert why == {} and fc["ensemble_recent"].isel(member=3, time=0, lead=0, x=0).item() == 16.0
    assert float(fc["default_recent"].mean()) == 10.0


def test_forecast_suite_ensemble_scores_known_answers(monkeypatch):
    import numpy as np

    sf = _forecast_module(monkeypatch)
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(50, 2, 40))
    mask = np.ones(truth.shape, bool)
    # every member the same, 0.5 off: CRPS = |error| = 0.5, no spread
    same = np.broadcast_to(truth + 0.5, (16, *truth.shape))
    s = sf.ensemble_scores(same, truth, mask)
    np.testing.assert_allclose(s["crps"], 0.5)
    np.testing.assert_allclose(s["spread_skill"], 0.0, atol=1e-12)
    # truth and members drawn from the same distribution: spread-skill close to 1 (with the (N+1)/N factor)
    centre = rng.normal(size=truth.shape)
    ens = centre + rng.normal(size=(16, *truth.shape))
    s = sf.ensemble_scores(ens, centre + rng.normal(size=truth.shape), mask)
    np.testing.assert_allclose(s["spread_skill"], 1.0, atol=0.05)
    # a masked-out point does not count; a NaN forecast on a counted point is not hidden
    t2 = truth.copy()
    m2 = mask.copy()
    m2[0, 0, 0] = False
    bad = np.array(same)
    bad[:, 0, 0, 0] = np.nan
    assert np.isfinite(sf.ensemble_scores(bad, t2, m2)["crps"]).all()
    assert np.isnan(sf.per_lead(bad[0] - truth, mask)[0])
