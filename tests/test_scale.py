"""Forecasting at scale: lazy per-chunk forecasts on a real cluster and the resumable
``forecast`` batch job (killed part way, restarted: finished regions skipped, same output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xsciml
from xsciml.cli import main
from xsciml.jobs import read_manifest, run_job

LEAD = [0.0, 0.5, 1.5]
STEPS = 15


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, xr.Dataset]:
    ds = xsciml.datasets.heat(6, 12, n_frames=5, seed=0)
    model = xsciml.models.dino.fit_dynamics(ds, "u", latent_dim=6, width=16, depth=2, steps=20,
                                            progress=False, seed=0, device="cpu")
    path = model.save(tmp_path_factory.mktemp("dino") / "dino.xsciml")
    init = xsciml.datasets.heat(6, 12, n_frames=1, seed=1).isel(time=0)
    return path, init


@pytest.fixture(scope="module")
def init_store(trained, tmp_path_factory) -> Path:
    _, init = trained
    path = tmp_path_factory.mktemp("init") / "init.zarr"
    init.chunk({"trajectory": 2}).to_zarr(path)
    return path


@pytest.fixture(scope="module")
def eager(trained) -> xr.DataArray:
    path, init = trained
    return xsciml.load(path).forecast(init, lead=LEAD, encode_steps=STEPS, device="cpu")


def test_lazy_forecast_on_cluster_equals_eager(trained, init_store, eager, dask_client):
    model = xsciml.load(trained[0])
    lazy = xr.open_zarr(init_store).sciml.forecast(model, lead=LEAD, encode_steps=STEPS)
    assert lazy.chunks is not None and lazy.chunksizes["trajectory"] == (2, 2, 2)
    graph = dict(lazy.__dask_graph__())
    model_keys = [k for k in graph if str(k).startswith("xsciml-model-")]
    assert len(model_keys) == 1  # the model enters the graph once
    out = dask_client.compute(lazy).result()
    assert out.dims == eager.dims and out.attrs["units"] == eager.attrs["units"]
    np.testing.assert_allclose(out.values, eager.values, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out.lead.values, eager.lead.values)


def test_forecast_job_resumes_after_interruption(trained, init_store, eager, tmp_path):
    out = tmp_path / "fc.zarr"

    class Stop(Exception):
        pass

    def stop(i, n):
        if i == 0:
            raise Stop

    with pytest.raises(Stop):
        run_job("forecast", trained[0], init_store, out, region_size=2, progress=False,
                on_region=stop, lead=LEAD, encode_steps=STEPS, device="cpu")
    assert read_manifest(out)["done"] == [0]
    report = run_job("forecast", trained[0], init_store, out, region_size=2, progress=False,
                     lead=LEAD, encode_steps=STEPS, device="cpu")
    assert report.skipped == [0] and report.computed == [1, 2]
    result = xr.open_zarr(out)["u"].load()
    np.testing.assert_allclose(result.transpose(*eager.dims).values, eager.values, rtol=1e-4, atol=1e-5)


def test_forecast_job_cli_and_lead_errors(trained, init_store, eager, tmp_path):
    out = tmp_path / "cli.zarr"
    rc = main(["run", "forecast", "-m", str(trained[0]), "-i", str(init_store), "-o", str(out),
               "--quiet", "-k", f"lead={LEAD}", "-k", f"encode_steps={STEPS}", "-k", "device=cpu"])
    assert rc == 0
    result = xr.open_zarr(out)["u"].load()
    np.testing.assert_allclose(result.transpose(*eager.dims).values, eager.values, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="lead"):
        run_job("forecast", trained[0], init_store, tmp_path / "x.zarr", progress=False)
    with pytest.raises(ValueError, match="timedeltas"):
        run_job("forecast", trained[0], init_store, tmp_path / "y.zarr", progress=False,
                lead=["soon"])


@pytest.mark.parametrize("kind", ["pca", "mlp"])
def test_lazy_encode_decode_send_the_model_once_and_equal_eager(kind, dask_client):
    ds = xsciml.datasets.gaussian_random_field((10, 12), n=24, seed=0)
    kw = {} if kind == "pca" else {"steps": 20, "progress": False}
    model = ds.sciml.fit_autoencoder("u", sample_dim="sample", network=kind, latent_dim=4, **kw)
    part = ds.u.where(np.random.default_rng(1).random(ds.u.shape) < 0.6)
    z_eager = model.encode(part)
    z_lazy = model.encode(part.chunk({"sample": 8}))
    assert z_lazy.chunks is not None
    keys = [k for k in dict(z_lazy.__dask_graph__()) if str(k).startswith("xsciml-model-")]
    assert len(keys) == 1
    z = dask_client.compute(z_lazy).result()
    # float32 (on a GPU the batches of 8 and of 24 take different matmul kernels: ~1e-7 apart)
    np.testing.assert_allclose(z.values, z_eager.values, rtol=1e-6, atol=1e-6)
    rec_lazy = model.decode(z_lazy)
    assert rec_lazy.chunks is not None
    np.testing.assert_allclose(dask_client.compute(rec_lazy).result().values,
                               model.decode(z_eager).values, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="chunk"):
        model.encode(part.chunk({"x": 4}))


def test_lazy_latent_encode_equals_eager_on_cluster(dask_client):
    ds = xsciml.datasets.gaussian_random_field((10, 12), n=30, seed=0)
    li = ds.isel(sample=slice(0, 24)).sciml.fit_latent(
        "u", sample_dim="sample", latent_dim=4, network_kwargs={"depth": 0}, noise=0.05, steps=0,
        progress=False)
    new = ds.u.isel(sample=slice(24, 30))
    part = new.where(np.random.default_rng(2).random(new.shape) < 0.3)
    eager = li.encode(part, progress=False)
    lazy = li.encode(part.chunk({"sample": 2}))
    assert lazy.z.chunks is not None and lazy.z.dims == ("sample", "latent")
    keys = [k for k in dict(lazy.__dask_graph__()) if str(k).startswith("xsciml-model-")]
    assert len(keys) == 1
    out = dask_client.compute(lazy).result()
    np.testing.assert_allclose(out.z.values, eager.z.values, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.z_std.values, eager.z_std.values, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="chunk"):
        li.encode(part.chunk({"x": 4}))
