"""The save/load contract of every registered estimator, and the inference protocols.

Every built-in estimator class has a case (some have several: Debias per OT method, PCA
with cftime samples and custom weights), which fits a tiny instance (a few steps on an
~8 x 8 grid), saves it, loads it with :func:`xsciml.load` and checks that the loaded
model is of the same class, that saving it again gives the same file digest (same
config, same tensors) and that its outputs (predict / forecast / transform / encode /
decode / sample with fixed seeds) are bit-identical to the original's. A new estimator
class without a case fails :func:`test_every_registered_estimator_has_a_contract_case`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from safetensors import safe_open

import xsciml
from xsciml.base import Encoder, Estimator, Forecaster, Predictor, Transformer, registered_estimators
from xsciml.jobs import task_builder
from xsciml.training import History

Outputs = Callable[[Any], Mapping[str, Any]]


@dataclass(frozen=True)
class Case:
    """How to build a tiny fitted estimator, and which outputs must survive save/load."""

    estimator: str  # registry name of the class the case builds
    build: Callable[[], Any]
    outputs: Outputs


CASES: dict[str, Case] = {}


def case(case_id: str, estimator: str, outputs: Outputs) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    def register(build: Callable[[], Any]) -> Callable[[], Any]:
        CASES[case_id] = Case(estimator, build, outputs)
        return build

    return register


def shipped_estimators() -> dict[str, type]:
    """The registered classes xsciml itself defines (``{registry name: class}``).

    Left out: classes of test modules and plugins, and those defined in doctests (a
    doctest class is not an attribute of the module it names as ``__module__``).
    """
    shipped = {}
    for name, cls in registered_estimators().items():
        module = cls.__module__
        if module.startswith("xsciml.") and getattr(importlib.import_module(module), cls.__qualname__, None) is cls:
            shipped[name] = cls
    return shipped


# ----------------------------------------------------------------------------------
# tiny data
# ----------------------------------------------------------------------------------
def _smooth_field(n: int = 8, frames: int = 3) -> xr.Dataset:
    """A smooth (time, y, x) field with units."""
    x = np.linspace(-1, 1, n)
    t = np.arange(frames, dtype=float)
    u = np.sin(2 * x[None, None, :] + 0.3 * t[:, None, None]) * np.cos(1.5 * x[None, :, None])
    return xr.Dataset({"u": (("time", "y", "x"), u, {"units": "K", "long_name": "temp"})},
                      coords={"time": t, "y": x, "x": x})


def _gappy(obj: xr.Dataset, fraction: float = 0.5, seed: int = 0) -> xr.Dataset:
    """``obj`` with ``1 - fraction`` of its points set to NaN."""
    return obj.where(xsciml.datasets.sample_points(obj.u, fraction, seed=seed))


def _snapshots(n: int = 8, seed: int = 0) -> xr.Dataset:
    """(sample, y, x) Gaussian random fields on an 8 x 8 grid."""
    return xsciml.datasets.gaussian_random_field((8, 8), n=n, alpha=2.5, tau=3.0, seed=seed)


def _daily(n: int, seed: int, offset: float = 0.0, start: str = "2001-01-01") -> xr.DataArray:
    """(time, lat, lon) daily snapshots around 280 K on a 3 x 4 grid."""
    rng = np.random.default_rng(seed)
    values = 280.0 + offset + rng.normal(size=(n, 3, 4)) @ (np.eye(4) + rng.normal(size=(4, 4)) / 3)
    return xr.DataArray(values, dims=("time", "lat", "lon"), name="tas", attrs={"units": "K"},
                        coords={"time": pd.date_range(start, periods=n, freq="D"),
                                "lat": [52.0, 51.0, 50.0], "lon": [-2.0, -1.0, 0.0, 1.0]})


def _heat(n_trajectories: int, frames: int, seed: int) -> xr.Dataset:
    return xsciml.datasets.heat(n_trajectories, 8, n_frames=frames, seed=seed)


# ----------------------------------------------------------------------------------
# one case per estimator class
# ----------------------------------------------------------------------------------
def _field_outputs(model: Any) -> dict[str, Any]:
    target = _smooth_field()
    return {"predict": model.predict(target, device="cpu"),
            "sample": model.sample(n=3, target=target, seed=1, device="cpu")}


@case("NeuralField", "NeuralField", _field_outputs)
def _neural_field() -> Any:
    field = _gappy(_smooth_field()).sciml.fit_field("u", space=("y", "x"), time="time", steps=20, seed=0,
                                                    device="cpu", progress=False)
    assert field.kriging, "the case should cover a field with its residual kriging"
    return field


def _latent_outputs(model: Any) -> dict[str, Any]:
    ds = _smooth_field(frames=6)
    return {"codes": model.codes,
            "decode": model.decode(model.codes, ds, device="cpu"),
            "encode": model.encode(_gappy(ds.isel(time=[0, 1]), seed=2), steps=3, device="cpu", progress=False),
            "sample": model.sample(n=2, target=ds, seed=3, device="cpu")}


@case("LatentInterpolator", "LatentInterpolator", _latent_outputs)
def _latent_interpolator() -> Any:
    return _smooth_field(frames=6).sciml.fit_latent("u", sample_dim="time", latent_dim=2, steps=10, seed=0,
                                                    device="cpu", progress=False)


def _grid_model_outputs(model: Any) -> dict[str, Any]:
    ds = _snapshots(4, seed=1).rename(sample=model.sample_dim)
    out = {"encode": model.encode(_gappy(ds, 0.6, seed=2), device="cpu"),
           "reconstruct": model.reconstruct(ds, device="cpu"),
           "decode": model.decode(np.linspace(-1, 1, 2 * model.latent_dim).reshape(2, -1))}
    for attr in ("principal_components", "components", "noise_std"):  # those the class has
        if hasattr(model, attr):
            out[attr] = getattr(model, attr)
    return out


@case("PCA", "PCA", _grid_model_outputs)
def _pca() -> Any:
    return xsciml.models.fit_autoencoder(_snapshots(), "u", sample_dim="sample", latent_dim=3)


@case("PCA-cftime-weights", "PCA", _grid_model_outputs)
def _pca_cftime_custom_weights() -> Any:
    ds = _snapshots().rename(sample="time")
    ds = ds.assign_coords(time=xr.date_range("2001-02-25", periods=ds.sizes["time"], calendar="noleap",
                                             use_cftime=True))
    weights = xr.DataArray(np.linspace(1, 2, ds.sizes["x"]), dims="x", coords={"x": ds.x})
    return xsciml.models.fit_autoencoder(ds, "u", sample_dim="time", latent_dim=3, weights=weights)


@case("AutoEncoder", "AutoEncoder", _grid_model_outputs)
def _autoencoder() -> Any:
    return xsciml.models.fit_autoencoder(_snapshots(), "u", sample_dim="sample", network="mlp", latent_dim=2,
                                         steps=5, device="cpu", progress=False)


def _latent_dynamics_outputs(encode_steps: int) -> Outputs:
    def outputs(model: Any) -> dict[str, Any]:
        init = _heat(2, 1, seed=1).isel(time=0)
        return {"forecast": model.forecast(init, lead=[0.0, 0.5], encode_steps=encode_steps, device="cpu"),
                "encode": model.encode(init, steps=encode_steps, device="cpu")}

    return outputs


@case("DINo", "DINo", _latent_dynamics_outputs(encode_steps=2))
def _dino() -> Any:
    return xsciml.models.fit_dynamics(_heat(4, 4, seed=0), "u", latent_dim=3, width=8, depth=1, dynamics_width=8,
                                      dynamics_depth=1, steps=3, seed=0, device="cpu", progress=False)


@case("SmoothDynamics", "SmoothDynamics", _latent_dynamics_outputs(encode_steps=0))
def _smooth_dynamics() -> Any:
    return xsciml.models.fit_smooth_dynamics(_heat(4, 4, seed=0), "u", modes=2, waves=2, encoder_width=8,
                                             dynamics_width=8, dynamics_depth=1, steps=3, dynamics_steps=3,
                                             seed=0, device="cpu", progress=False)


def _diffusion_outputs(model: Any) -> dict[str, Any]:
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        denoised = model.denoise(z, 0.7)
    return {"sample": model.sample(2, steps=3, seed=0, device="cpu", progress=False), "denoise": denoised}


@case("DiffusionPrior", "DiffusionPrior", _diffusion_outputs)
def _diffusion_prior() -> Any:
    from xsciml.downscale import fit_diffusion

    return fit_diffusion(_snapshots(), "u", sample_dim="sample", base_channels=4, levels=2, emb_dim=8, steps=3,
                         seed=0, device="cpu", progress=False)


def _debias_case(method: str) -> None:
    @case(f"Debias-{method}", "Debias",
          lambda model: {"transform": model.transform(_daily(8, seed=2, offset=1.0, start="2001-01-28"),
                                                      device="cpu")})
    def build() -> Any:
        from xsciml.downscale import fit_debias

        # January and February, a map per month
        return fit_debias(_daily(50, seed=0, offset=1.0, start="2001-01-10"), _daily(45, seed=1),
                          method=method, group="time.month", device="cpu", progress=False)


for _method in ("gaussian", "entropic", "emd", "scalable"):
    _debias_case(_method)


def _inversion_outputs(model: Any) -> dict[str, Any]:
    from xsciml.inverse import RandomRectangles

    x = RandomRectangles((8, 8), max_half_size=2.0).sample(3, torch.Generator().manual_seed(1))
    y = model.operator(x.to(torch.float64))  # observations of sources like the training ones
    return {"predict": model.predict(y), "calibration_std": model.calibration["std"]}


@case("LearnedInversion", "LearnedInversion", _inversion_outputs)
def _learned_inversion() -> Any:
    from xsciml.inverse import HeatOperator, RandomRectangles, fit_inversion

    data = RandomRectangles((8, 8), batch_size=2, max_half_size=2.0)
    return fit_inversion(HeatOperator(1.0), data, steps=2, calibration_examples=8, device="cpu", progress=False)


# ----------------------------------------------------------------------------------
# comparing outputs
# ----------------------------------------------------------------------------------
def _flatten(value: Any, name: str, out: dict[str, Any]) -> None:
    """Every array (with its dims), attrs and plain value of an output, by a dotted name."""
    if isinstance(value, xr.Dataset):
        out[f"{name}.<attrs>"] = dict(value.attrs)
        for key, var in {**value.coords, **value.data_vars}.items():
            _flatten(var.variable, f"{name}.{key}", out)
    elif isinstance(value, xr.DataArray):
        out[f"{name}.<name>"] = value.name
        _flatten(value.to_dataset(name="<data>") if value.name is None else value.to_dataset(), name, out)
    elif isinstance(value, xr.Variable):
        out[f"{name}.<dims>"] = value.dims
        out[f"{name}.<attrs>"] = dict(value.attrs)
        out[name] = value.values
    elif isinstance(value, torch.Tensor):
        out[name] = value.detach().cpu().numpy()
    elif isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        for key in value._fields:
            _flatten(getattr(value, key), f"{name}.{key}", out)
    else:
        out[name] = value


def _assert_same_outputs(got: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    flat_got: dict[str, Any] = {}
    flat_expected: dict[str, Any] = {}
    for key, value in got.items():
        _flatten(value, key, flat_got)
    for key, value in expected.items():
        _flatten(value, key, flat_expected)
    assert flat_got.keys() == flat_expected.keys()
    for key, value in flat_expected.items():
        other = flat_got[key]
        if isinstance(value, np.ndarray):
            assert isinstance(other, np.ndarray) and other.dtype == value.dtype, key
            np.testing.assert_array_equal(other, value, err_msg=key, strict=True)
        else:
            assert other == value, key


def _digest(path: Any) -> str:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["sha256"]


# ----------------------------------------------------------------------------------
# the contract
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_save_load_gives_bit_identical_outputs(case_id: str, tmp_path) -> None:
    spec = CASES[case_id]
    model = spec.build()
    assert isinstance(model, Estimator)
    cls = registered_estimators()[spec.estimator]
    assert type(model) is cls, f"case {case_id!r} builds a {type(model).__name__}, not a {cls.__name__}"
    expected = spec.outputs(model)

    path = model.save(tmp_path / "model.xsciml")
    loaded = xsciml.load(path)
    assert type(loaded) is cls
    assert repr(loaded) == repr(model)
    # the training record: a History on the fitted model and an empty one after loading
    assert isinstance(model.history, History) and isinstance(loaded.history, History)
    assert loaded.history.steps == 0 and loaded.history.loss == []
    again = loaded.save(tmp_path / "again.xsciml")
    assert _digest(again) == _digest(path), "saving the loaded model changes its config or tensors"
    _assert_same_outputs(spec.outputs(loaded), expected)
    _assert_same_outputs(spec.outputs(model), expected)  # and the original's outputs did not drift


def test_every_registered_estimator_has_a_contract_case() -> None:
    shipped = shipped_estimators()
    covered = {spec.estimator for spec in CASES.values()}
    missing = sorted(set(shipped) - covered)
    assert not missing, (f"no save/load contract case in tests/test_contract.py for {', '.join(missing)}: add a "
                         "@case building a tiny fitted instance and the outputs that must survive save/load")
    assert covered <= set(shipped), f"cases for classes that are not registered: {sorted(covered - set(shipped))}"


# ----------------------------------------------------------------------------------
# inference protocols
# ----------------------------------------------------------------------------------
PROTOCOLS = {
    "NeuralField": {Predictor},
    "LearnedInversion": {Predictor},
    "DINo": {Forecaster, Encoder},
    "SmoothDynamics": {Forecaster, Encoder},
    "Debias": {Transformer},
    "PCA": {Encoder},
    "AutoEncoder": {Encoder},
    "LatentInterpolator": {Encoder},
    "DiffusionPrior": set(),
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_builtin_estimators_implement_their_protocols(name: str) -> None:
    cls = shipped_estimators()[name]
    instance = object.__new__(cls)  # isinstance needs an instance, not a fitted one
    for protocol in (Predictor, Forecaster, Transformer, Encoder):
        assert isinstance(instance, protocol) is (protocol in PROTOCOLS[name]), (name, protocol.__name__)


def test_protocols_accept_any_object_with_the_method() -> None:
    class Shift:
        def transform(self, obj):
            return obj + 1

    class Blocked(Shift):
        transform = None  # a method set to None is not implemented

    assert isinstance(Shift(), Transformer) and not isinstance(Shift(), Predictor)
    assert not isinstance(Blocked(), Transformer)


@pytest.mark.parametrize(("task", "model", "message"), [
    ("predict", "DiffusionPrior", r"a DiffusionPrior has no predict\(\); choose another task .*xsciml\.base\."
                                  r"Predictor.*none of Predictor, Forecaster or Transformer"),
    ("forecast", "NeuralField", r"a NeuralField cannot forecast; choose another task .*xsciml\.base\.Forecaster, "
                                r"a model with forecast\(ds_init, lead=\.\.\.\) \(e\.g\. a saved DINo.*run the "
                                r"'predict' task"),
    ("transform", "DINo", r"a DINo has no transform\(\);.*Transformer.*Debias.*run the 'forecast' task"),
])
def test_model_tasks_name_the_protocol_they_need(task: str, model: str, message: str) -> None:
    instance = object.__new__(shipped_estimators()[model])
    with pytest.raises(TypeError, match=message):
        task_builder(task)(instance, xr.Dataset())
