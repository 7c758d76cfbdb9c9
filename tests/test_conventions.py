"""CF labelling of outputs (statistics, cell_methods, history) and a plottable History."""

from __future__ import annotations

import re

import matplotlib
import numpy as np
import pytest
import xarray as xr

matplotlib.use("Agg")

import xsciml  # noqa: E402
from xsciml.base import append_history, output_attrs  # noqa: E402
from xsciml.training import History  # noqa: E402

SOURCE = {"standard_name": "air_temperature", "long_name": "2 m temperature", "units": "K",
          "cell_methods": "time: mean", "history": "2020-01-01 cdo daymean in.nc out.nc",
          "valid_range": [200.0, 330.0], "_FillValue": -9999.0}
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ xsciml (\S+): (.+)$")


def test_output_attrs_per_statistic():
    mean = output_attrs(SOURCE, "mean")
    assert mean == {"standard_name": "air_temperature", "long_name": "predictive mean of 2 m temperature",
                    "units": "K", "cell_methods": "time: mean"}
    std = output_attrs(SOURCE, "std")
    assert "standard_name" not in std and std["units"] == "K"
    assert std["long_name"] == "predictive standard deviation of 2 m temperature"
    draw = output_attrs(SOURCE, "sample")
    assert draw["standard_name"] == "air_temperature" and "draw" in draw["long_name"]
    ens = output_attrs(SOURCE, "ensemble_mean", dim="member")
    assert ens["cell_methods"] == "time: mean member: mean"
    ens_std = output_attrs({"units": "K"}, "ensemble_std", name="t2m")
    assert ens_std == {"units": "K", "long_name": "ensemble standard deviation of t2m",
                       "cell_methods": "sample: standard_deviation"}
    for attrs in (mean, std, draw, ens):  # never inherited
        assert not {"history", "valid_range", "_FillValue"} & set(attrs)
    with pytest.raises(ValueError, match="statistic"):
        output_attrs(SOURCE, "median")


def test_history_appends_a_timestamped_line(monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    text = append_history("first\nsecond\n", "NeuralField.predict")
    old1, old2, new = text.split("\n")
    assert (old1, old2) == ("first", "second")
    m = LINE.match(new)
    assert m and m.group(1) == xsciml.__version__ and m.group(2) == "NeuralField.predict"
    assert LINE.match(append_history(None, "x"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    assert append_history("", "x").startswith("1970-01-01T00:00:00Z xsciml ")


@pytest.fixture(scope="module")
def field():
    t = np.arange(4.0)
    y, x = np.linspace(-1, 1, 8), np.linspace(-1, 1, 6)
    u = np.sin(3 * y)[None, :, None] * np.cos(2 * x)[None, None, :] + 0.1 * t[:, None, None]
    ds = xr.Dataset({"t2m": (("time", "y", "x"), 280 + u, dict(SOURCE))},
                    coords={"time": t, "y": y, "x": x}, attrs={"history": "global line"})
    return ds.sciml.fit_field("t2m", space=("y", "x"), time="time", steps=20, network="mlp",
                              network_kwargs={"width": 8, "depth": 1}, progress=False, device="cpu",
                              residual="none", seed=0)


@pytest.mark.filterwarnings("ignore:fit_field")
def test_predictions_are_labelled_and_append_to_history(field):
    target = {"time": [0.0, 1.0], "y": np.linspace(-1, 1, 4), "x": np.linspace(-1, 1, 3)}
    pred = field.predict(target, device="cpu")
    m, s = pred["t2m_mean"].attrs, pred["t2m_std"].attrs
    assert m["standard_name"] == "air_temperature" and m["cell_methods"] == "time: mean"
    assert m["long_name"] == "predictive mean of 2 m temperature" and m["units"] == "K"
    assert "standard_name" not in s and s["units"] == "K"
    assert s["long_name"] == "predictive standard deviation of 2 m temperature"
    for attrs in (m, s):
        assert "history" not in attrs and "valid_range" not in attrs
    first, last = pred.attrs["history"].split("\n")
    assert first == SOURCE["history"]  # the modelled variable's audit trail, then ours
    match = LINE.match(last)
    assert match and match.group(1) == xsciml.__version__
    assert match.group(2) == "NeuralField.predict: predictive mean and standard deviation of t2m"
    assert pred.attrs["xsciml_model"] == "NeuralField"
    draws = field.sample(3, target, device="cpu")
    assert draws.attrs["standard_name"] == "air_temperature"
    assert draws.attrs["long_name"] == "2 m temperature (draw from the predictive distribution)"
    assert LINE.match(draws.attrs["history"].split("\n")[-1]).group(2).startswith("NeuralField.sample")


def test_debiased_dataset_history_is_appended_not_copied():
    from xsciml.downscale.ot import fit_debias

    rng = np.random.default_rng(0)
    ref = xr.DataArray(rng.normal(size=(60, 2, 3)), dims=("time", "y", "x"), name="tas",
                       attrs={"units": "K"})
    mod = (2.0 * ref + 5).assign_attrs(units="K", history="model run")
    deb = fit_debias(mod, ref, method="gaussian", progress=False)
    out = deb.transform(mod.to_dataset().assign_attrs(history="global", title="t"))
    assert out.attrs["title"] == "t"
    head, line = out.attrs["history"].split("\n")
    assert head == "global" and LINE.match(line).group(2).startswith("Debias.transform")
    assert out.tas.attrs["history"].split("\n")[0] == "model run"


def test_forecasts_and_decoded_fields_are_labelled_and_append_to_history():
    ds = xsciml.datasets.heat(3, 8, n_frames=4, seed=0)
    ds["u"].attrs.update(SOURCE)
    dyn = xsciml.models.fit_dynamics(ds, "u", latent_dim=4, width=8, steps=2, progress=False, device="cpu")
    fc = dyn.forecast(ds.isel(time=0), lead=np.array([0.0, 1.0]), encode_steps=2, progress=False)
    assert fc.attrs["units"] == "K" and fc.attrs["standard_name"] == "air_temperature"
    assert fc.attrs["cell_methods"] == "time: mean"
    assert not {"valid_range", "_FillValue"} & set(fc.attrs)
    old, line = fc.attrs["history"].split("\n")
    assert old == SOURCE["history"] and LINE.match(line).group(2) == "DINo.forecast of u"
    lazy = dyn.forecast(ds.isel(time=0).chunk({"trajectory": 1}), lead=np.array([0.0, 1.0]), encode_steps=2)
    assert isinstance(lazy, xr.DataArray) and lazy.chunks is not None
    assert LINE.match(lazy.attrs["history"].split("\n")[1]).group(2) == "DINo.forecast of u"
    rec = dyn.decode(dyn.encode(ds.isel(time=0), steps=2, progress=False), ds.isel(time=0))
    assert LINE.match(rec.attrs["history"].split("\n")[1]).group(2) == "DINo.decode of u"


def test_history_dataframe_draws_a_validation_line():
    h = History(loss=list(np.linspace(1, 0.1, 10)), lr=[0.1] * 10,
                val_loss=[(3, 0.8), (6, 0.5), (9, 0.4), (10, 0.45)])
    df = h.to_dataframe()
    assert df.index[df["validated"]].tolist() == [3, 6, 9, 10]
    assert df["val_loss"].loc[3:].notna().all() and df["val_loss"].loc[:2].isna().all()
    assert df["val_loss"].loc[7] == 0.5  # the latest check at step 7
    ax = df.plot(y=["loss", "val_loss"])
    lines = {line.get_label(): line for line in ax.get_lines()}
    val = np.asarray(lines["val_loss"].get_ydata(), dtype=float)
    assert np.isfinite(val).sum() == 8  # a drawn line, not isolated points between NaNs
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
