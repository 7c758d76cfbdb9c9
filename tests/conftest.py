"""Shared fixtures: small synthetic datasets, the real-data folder, a real Dask cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

os.environ.setdefault("XSCIML_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
# a fixed timestamp in the history attrs of outputs: two runs give identical outputs
os.environ.setdefault("SOURCE_DATE_EPOCH", "1700000000")

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def real_data(name: str) -> Path:
    """Path of a file in ../shared/data, skipping the test when it is absent."""
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"real data file {name} not available (../shared/data)")
    return path


import torch  # noqa: E402

# one intra-op thread for the whole session (module fixtures included): the test
# models are small, and it avoids oversubscribing the 2 CI cores
torch.set_num_threads(1)


@pytest.fixture
def grid_ds() -> xr.Dataset:
    """(time, lat, lon) field with descending latitude, a land mask and two variables."""
    rng = np.random.default_rng(0)
    time = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-02T00", "2020-01-05T12"], dtype="datetime64[ns]")
    lat = np.array([50.0, 47.5, 45.0, 42.5, 40.0])
    lon = np.array([-10.0, -7.5, -5.0, -2.5, 0.0, 2.5])
    sst = 280 + rng.normal(size=(4, 5, 6))
    sst[:, 0, :2] = np.nan  # land
    sst[2, 3, 4] = np.nan  # a gap
    sss = 35 + rng.normal(size=(4, 5, 6))
    ds = xr.Dataset(
        {"sst": (("time", "lat", "lon"), sst, {"units": "K", "long_name": "sea surface temperature"}),
         "sss": (("time", "lat", "lon"), sss, {"units": "psu"})},
        coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"})},
        attrs={"title": "synthetic"},
    )
    return ds


@pytest.fixture(scope="session")
def dask_client():
    """A real distributed cluster: 2 worker processes, 1 thread each."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, memory_limit="2GiB")
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``pytest -n N --dist loadgroup`` (``make test``): each test file runs on one
    worker, so its module fixtures (fitted models) are built once; each notebook is a
    unit of its own, so the notebooks spread over the workers."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = item.nodeid if item.get_closest_marker("notebook") else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
