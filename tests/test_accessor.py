"""``ds.sciml`` / ``da.sciml``: methods built from xsciml's functions, with their help."""

from __future__ import annotations

import importlib
import inspect
import pydoc

import numpy as np
import pytest
import xarray as xr

import xsciml
from xsciml.accessor import METHODS, SciMLDataArrayAccessor, SciMLDatasetAccessor

ALL = [(name, target) for _, methods in METHODS for name, target, _ in methods]


def _function(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@pytest.fixture(params=["dataset", "dataarray"])
def obj(request):
    da = xr.DataArray(np.zeros((2, 3)), dims=("time", "x"), coords={"x": [0.0, 1.0, 2.0]}, name="u")
    return da.to_dataset() if request.param == "dataset" else da


@pytest.mark.parametrize(("name", "target"), ALL)
def test_method_has_the_function_signature_and_docstring(obj, name, target):
    func = _function(target)
    method = getattr(obj.sciml, name)
    want = list(inspect.signature(func).parameters.values())[1:]
    got = inspect.signature(method)
    assert list(got.parameters.values()) == want
    assert got.return_annotation == inspect.signature(func).return_annotation
    assert method.__doc__ == func.__doc__ and method.__doc__
    assert method.__name__ == func.__name__ and method.__wrapped__ is func
    # on the class: the same, with self first (what help() shows)
    unbound = getattr(type(obj.sciml), name)
    assert list(inspect.signature(unbound).parameters)[1:] == [p.name for p in want]
    assert unbound.__doc__ == func.__doc__


def test_method_forwards_the_object_and_arguments():
    ds = xr.Dataset({"u": (("time", "x"), np.arange(6.0).reshape(2, 3))},
                    coords={"time": [0.0, 1.0], "x": [0.0, 1.0, 2.0]})
    data = ds.sciml.to_tensors("u", space="x", time="time")
    assert len(data) == 6 and data.variables == ["u"]
    grid = ds.u.sciml.to_fields(sample_dim="time")
    assert grid.n_samples == 2
    with pytest.raises(TypeError):
        ds.sciml.to_tensors("u", "x")  # space is keyword-only, as in the function


def test_grouped_help_mentions_every_method():
    for cls in (SciMLDatasetAccessor, SciMLDataArrayAccessor):
        doc = cls.__doc__
        for group in ("Gap filling", "EOF / latent models", "Forecasting",
                      "Bias correction & downscaling", "Inversion", "Scale / Dask"):
            assert group in doc
        for name, target in ALL:
            assert f"    {name} " in doc and target.replace(":", ".") in doc
    text = pydoc.render_doc(xr.Dataset().sciml, renderer=pydoc.plaintext)
    assert "fit_field(self, /, variables" in text and "Gap filling" in text


def test_every_public_fit_function_has_a_method():
    names = {n for n, _ in ALL}
    assert {"fit_field", "fit_latent", "fit_autoencoder", "fit_dynamics", "fit_debias",
            "fit_diffusion", "forecast", "downscale", "invert"} <= names
    assert xsciml.__version__
