"""The main job runs end to end and writes readable results."""

from __future__ import annotations

import json
import subprocess
import sys

import xarray as xr

import xsciml
from xsciml.cli import run_demo


def test_demo_quick(tmp_path):
    summary = run_demo(tmp_path / "out", quick=True, quiet=True)
    out = tmp_path / "out"
    assert summary["tensors"]["roundtrip_exact"] is True
    assert summary["field"]["nrmse"] < 1.0 and 0 < summary["field"]["coverage"] <= 1
    assert json.loads((out / "summary.json").read_text())["tensors"]["points"] == summary["tensors"]["points"]
    pred = xr.open_zarr(out / "field_prediction.zarr")
    assert set(pred.data_vars) == {"u_mean", "u_std"} and pred.sizes["x"] == 64
    xr.testing.assert_allclose(pred.load(), xr.open_dataset(out / "field_prediction.nc").load())
    field = xsciml.load(out / "field.xsciml")
    assert field.variables == ["u"]
    assert (out / "field.png").stat().st_size > 1000


def test_cli_help_and_module_entry():
    r = subprocess.run([sys.executable, "-m", "xsciml", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout
    r = subprocess.run([sys.executable, "-m", "xsciml", "nonsense"], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice" in r.stderr
