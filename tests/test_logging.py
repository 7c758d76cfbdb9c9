"""The ``xsciml`` logger: fits and jobs say what they do at INFO, silent unless configured."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr

import xsciml
from xsciml.jobs import run_job
from xsciml.training import fit


def _messages(caplog, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name and r.levelno == logging.INFO]


def test_package_logger_has_a_null_handler_and_module_children():
    root = logging.getLogger("xsciml")
    assert any(isinstance(h, logging.NullHandler) for h in root.handlers)
    from xsciml import jobs, training

    assert training.log.name == "xsciml.training" and training.log.parent is root
    assert jobs.log.name == "xsciml.jobs"


def test_training_loop_logs_settings_data_validation_and_time(caplog):
    caplog.set_level(logging.INFO, logger="xsciml")
    x = torch.randn(80, 2)
    y = x @ torch.tensor([[1.0], [-2.0]])
    fit(torch.nn.Linear(2, 1), lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), (x, y),
        steps=20, batch_size=16, lr=0.05, val_fraction=0.25, val_every=10, device="cpu",
        progress=False, desc="probe", seed=3)
    start, *checks, end = _messages(caplog, "xsciml.training")
    assert start.startswith("probe: Linear with 3 trainable parameters on cpu")
    for words in ("20 steps", "60 samples", "batch_size 16", "validation 20 samples every 10 steps",
                  "optimizer Adam", "lr 0.05", "seed 3"):
        assert words in start, (words, start)
    assert [c.split(":")[1].strip() for c in checks] == ["step 10", "step 20"]
    assert all("val_loss" in c for c in checks)
    assert end.startswith("probe: done: 20 steps in ") and "best val_loss" in end and "on cpu" in end


@pytest.mark.filterwarnings("ignore:fit_field")
def test_fit_and_job_log_what_they_do(caplog, tmp_path):
    t = np.arange(3.0)
    yy, xx = np.linspace(-1, 1, 8), np.linspace(-1, 1, 6)
    ds = xr.Dataset({"u": (("time", "y", "x"), np.sin(3 * yy)[None, :, None] * np.cos(xx)[None, None, :]
                           + t[:, None, None], {"units": "K"})},
                    coords={"time": xr.date_range("2000-01-01", periods=3, freq="D"), "y": yy, "x": xx})
    caplog.set_level(logging.INFO, logger="xsciml")
    field = ds.sciml.fit_field("u", space=("y", "x"), time="time", steps=20, val_every=10, seed=0,
                               network="mlp", network_kwargs={"width": 8, "depth": 1}, progress=False,
                               device="cpu", residual="none")
    text = "\n".join(_messages(caplog, "xsciml.training"))
    assert "fit_field[mlp]:" in text and "on cpu" in text and "val_loss" in text and "done: 20 steps" in text
    path = field.save(tmp_path / "f.xsciml")
    store = tmp_path / "in.zarr"
    ds[["u"]].chunk({"time": 1}).to_zarr(store)
    caplog.clear()
    run_job("predict", path, store, tmp_path / "out.zarr", region_size=1, progress=False, device="cpu")
    start, *regions, end = _messages(caplog, "xsciml.jobs")
    assert start.startswith("job predict: model ") and "NeuralField" in start and "3 regions of 1" in start
    assert len(regions) == 3 and regions[0].startswith("job predict: region 1/3 (time 0:1) written in")
    assert end.startswith("job predict: done in ") and "3 regions computed, 0 skipped" in end


@pytest.mark.slow
def test_nothing_is_printed_unless_logging_is_configured():
    code = ("import torch, xsciml\n"
            "from xsciml.training import fit\n"
            "x = torch.randn(16, 1)\n"
            "fit(torch.nn.Linear(1, 1), lambda m, b: m(b[0]).pow(2).mean(), (x,), steps=3,\n"
            "    batch_size=4, val_fraction=0.25, val_every=1, device='cpu')\n")
    env = {**os.environ, "XSCIML_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    assert xsciml.__version__
