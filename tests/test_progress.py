"""Progress bars: one maker, silenced by progress=False / XSCIML_PROGRESS=0, a summary line."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import xarray as xr

import xsciml
from xsciml._utils import bar_summary, progress_bar
from xsciml.training import fit


class _Log(io.StringIO):
    """A non-terminal stream that records each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _last_line(text: str) -> str:
    """What a terminal or a log viewer shows last (carriage returns redraw a line)."""
    return text.rstrip("\n").split("\n")[-1].split("\r")[-1]


def test_not_a_terminal_redraws_at_most_once_a_second_and_ends_with_a_summary(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tqdm.std.time", lambda: clock[0])
    log = _Log()
    bar = progress_bar(total=100, desc="probe", progress=True, file=log)
    assert bar.mininterval == 1.0
    for _ in range(100):  # 100 steps in 2 s
        clock[0] += 0.02
        bar.update(1)
    draws_before_close = sum("probe" in w for w in log.writes)
    bar.set_postfix({"loss": "0.5"}, refresh=False)
    bar.close()
    assert draws_before_close <= 3  # the first draw, then at most one a second
    assert _last_line(log.getvalue()) == "probe: 100/100 it in 2 s (50 it/s), loss=0.5"


def test_terminal_bars_keep_tqdm_pace_and_silenced_bars_write_nothing(monkeypatch):
    log = _Log()
    log.isatty = lambda: True  # type: ignore[method-assign]
    bar = progress_bar(total=2, desc="t", progress=True, file=log)
    assert bar.mininterval < 1.0
    bar.update(2)
    bar.close()
    assert _last_line(log.getvalue()).startswith("t: 2/2 it in ")
    quiet = _Log()
    with progress_bar(range(3), progress=False, file=quiet) as it:
        list(it)
    monkeypatch.setenv("XSCIML_PROGRESS", "0")
    with progress_bar(range(3), progress=None, file=quiet) as it:
        list(it)
    assert quiet.getvalue() == ""


def test_bar_summary_without_total_or_postfix():
    assert bar_summary({"prefix": "encode", "n": 7, "total": None, "elapsed": 0.0}) == "encode: 7 it in 0 s"


def test_training_summary_line_on_stderr(capfd):
    x = torch.randn(32, 2)
    y = x.sum(1, keepdim=True)
    fit(torch.nn.Linear(2, 1), lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), (x, y),
        steps=5, batch_size=8, device="cpu", progress=True, desc="probe-fit")
    last = _last_line(capfd.readouterr().err)
    assert last.startswith("probe-fit: 5/5 it in ") and "loss=" in last


def test_silenced_fit_then_encode_writes_nothing(capfd, monkeypatch):
    monkeypatch.delenv("XSCIML_PROGRESS", raising=False)  # bars on by default
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 8)
    a = rng.normal(size=(6, 1, 1))
    ds = xr.Dataset({"u": (("time", "y", "x"), a * np.sin(np.pi * x)[None, None, :] * np.ones((6, 8, 1)),
                           {"units": "m"})}, coords={"time": np.arange(6), "y": x, "x": x})
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=2, network="mlp",
                             network_kwargs={"width": 8, "depth": 1}, steps=5, progress=False,
                             device="cpu")
    capfd.readouterr()
    z = li.encode(ds.isel(time=[0, 1]), steps=5, device="cpu")  # progress=None: as the fit
    assert z["z"].shape == (2, 2)
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""
    # asked for, the bar shows (and ends with its summary line)
    li.encode(ds.isel(time=[0]), steps=3, device="cpu", progress=True)
    assert _last_line(capfd.readouterr().err).startswith("encode: 3/3 it in ")


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_environment_variable_silences_training(capfd, monkeypatch, value):
    monkeypatch.setenv("XSCIML_PROGRESS", value)
    x = torch.randn(8, 1)
    fit(torch.nn.Linear(1, 1), lambda m, b: m(b[0]).pow(2).mean(), (x,), steps=2, batch_size=4,
        device="cpu")
    assert capfd.readouterr().err == ""


def test_bar_shows_the_best_validation_loss_once_a_later_check_is_worse(capfd):
    x = torch.randn(32, 1)
    vals = iter([0.5, 0.9, 1.5])
    fit(torch.nn.Linear(1, 1), lambda m, b: m(b[0]).pow(2).mean(), (x,), steps=6, batch_size=8,
        val_data=(x[:4],), val_every=2, val_loss_fn=lambda m, b: m(b[0]).sum() * 0 + next(vals),
        device="cpu", progress=True, desc="probe-val")
    last = _last_line(capfd.readouterr().err)
    assert last.startswith("probe-val: 6/6 it") and "val=1.5" in last and "best=0.5@2" in last


@pytest.mark.parametrize("method", ["dino", "smooth"])
def test_silenced_dynamics_fit_then_forecast_writes_nothing(capfd, monkeypatch, method):
    monkeypatch.delenv("XSCIML_PROGRESS", raising=False)  # bars on by default
    ds = xsciml.datasets.heat(2, 8, n_frames=4, seed=0)
    kw = ({"latent_dim": 4, "width": 8, "depth": 1, "dynamics_width": 8, "dynamics_depth": 1}
          if method == "dino" else {"modes": 1, "waves": 1, "dynamics_steps": 2})
    model = ds.sciml.fit_dynamics("u", space=("y", "x"), method=method, steps=3, progress=False,
                                  device="cpu", **kw)
    capfd.readouterr()
    # the smooth model's encoder alone draws no bar: refine its code so that the bar is due
    refine = {"encode_steps": 2} if method == "smooth" else {}
    out = model.forecast(ds.isel(time=[0]), lead=[0.1], device="cpu", **refine)  # progress=None: as the fit
    assert out.sizes["lead"] == 1
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
