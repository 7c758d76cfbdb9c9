"""Per-chunk torch inference on Dask (xsciml.parallel): lazy predict/sample/decode equal to
the eager path on a real 2-process cluster, the model once in the graph and once per
worker, a worker killed mid-computation, memory-bounded sub-blocks, core-dim chunks."""

from __future__ import annotations

import math
import os
import pickle

import dask
import dask.array as dsa
import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xsciml
from xsciml import parallel
from xsciml.base import Estimator, register_estimator
from xsciml.io import ModelFileError, load_bytes, save_bytes


def _train_ds() -> xr.Dataset:
    t = np.arange(4.0)
    y = np.linspace(-1, 1, 12)
    x = np.linspace(-1, 1, 10)
    u = np.sin(3 * y)[None, :, None] * np.cos(2 * x)[None, None, :] + 0.1 * t[:, None, None]
    return xr.Dataset({"u": (("time", "y", "x"), u, {"units": "K"})},
                      coords={"time": t, "y": y, "x": x})


def _target(nt: int = 5, ny: int = 13, nx: int = 11) -> xr.Dataset:
    fine = xr.Dataset(coords={"time": np.linspace(0, 3, nt), "y": np.linspace(-1, 1, ny),
                              "x": np.linspace(-1.2, 1.2, nx)})  # x extrapolates a little
    fine["mask"] = xr.ones_like(fine.time + fine.y + fine.x).astype("int8")
    return fine


@pytest.fixture(scope="module")
def field():
    # width 64: the serialised model (~35 kB) is far larger than any task's own payload
    return _train_ds().sciml.fit_field("u", space=("y", "x"), time="time", steps=40, seed=0,
                                       network="mlp", network_kwargs={"width": 64, "depth": 3},
                                       progress=False)


def _digest(est) -> str:
    return xsciml.io.header_from_bytes(save_bytes(est))["sha256"]


# --------------------------------------------------------------------------- io bytes
def test_save_bytes_round_trip_and_refusals(field):
    blob = save_bytes(field)
    back = load_bytes(blob)
    target = _target()
    xr.testing.assert_identical(back.predict(target, device="cpu"), field.predict(target, device="cpu"))
    # the same format as a model file
    assert blob[8:9] == b"{" and b'"format":"xsciml"' in blob[: 8 + int.from_bytes(blob[:8], "little")]
    with pytest.raises(TypeError, match="bytes"):
        load_bytes("model.xsciml")
    with pytest.raises(ModelFileError, match="truncated"):
        load_bytes(blob[: len(blob) // 2])
    tampered = bytearray(blob)
    tampered[-5] ^= 0xFF
    with pytest.raises(ModelFileError, match="integrity"):
        load_bytes(bytes(tampered))


# --------------------------------------------------------------------------- helpers
@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(0, 6), min_size=0, max_size=4), budget=st.integers(1, 80))
def test_subblocks_tile_the_block_within_budget(shape, budget):
    seen = np.zeros(shape, dtype=int)
    for region in parallel.subblocks(shape, budget):
        piece = seen[region]
        assert 0 < piece.size <= budget
        seen[region] += 1
    assert (seen == 1).all()  # disjoint and complete (empty shapes give no piece)


def test_check_core_chunks_refuses_or_rechunks():
    da = xr.DataArray(np.zeros((4, 6, 8)), dims=("time", "lat", "lon")).chunk({"time": 2, "lat": 3})
    with pytest.raises(ValueError, match=r"ds\.chunk\(\{'lat': -1, 'lon': -1\}\)"):
        parallel.check_core_chunks(da, ("lat", "lon"), argname="ds")
    fixed = parallel.check_core_chunks(da, ("lat", "lon"), rechunk=True)
    assert fixed.chunks == ((2, 2), (6,), (8,))
    assert parallel.check_core_chunks(da, ("lon",)) is da  # time/lat chunks are fine
    with pytest.raises(KeyError, match="depth"):
        parallel.check_core_chunks(da, ("depth",))


def test_as_tensor_copies_read_only_chunks():
    a = np.arange(6.0).reshape(2, 3)
    a.flags.writeable = False
    t = parallel.as_tensor(a, torch.float32)
    t += 1  # must not touch the read-only chunk
    assert a[0, 0] == 0.0 and t.dtype == torch.float32 and float(t[1, 2]) == 6.0
    w = np.arange(3.0)
    assert parallel.as_tensor(w).data_ptr() == w.ctypes.data  # writeable: no copy


def test_load_model_caches_per_digest_and_device(field):
    parallel.clear_model_cache()
    blob = save_bytes(field)
    a = parallel.load_model(blob, "cpu")
    b = parallel.load_model(save_bytes(field), "cpu")  # new bytes, same digest
    assert a is b and a is not field
    assert not a.module.training and not any(p.requires_grad for p in a.module.parameters())
    assert all(p.requires_grad for p in field.module.parameters())  # the user's model untouched
    info = parallel.model_cache_info()
    key = f"{_digest(field)}@cpu"
    assert info["loads"] == {key: 1} and info["hits"] == {key: 1}
    parallel.clear_model_cache()
    assert parallel.model_cache_info()["cached"] == []


# --------------------------------------------------------------------------- lazy predict
def test_lazy_predict_one_task_per_chunk_and_model_once(field):
    blob = save_bytes(field)[-4096:]  # tensor bytes: unique to the model
    target = _target()
    for chunks, n_chunks in (({"time": 5, "y": 7}, 2), ({"time": 1, "y": 5, "x": 4}, 45)):
        pred = field.predict(target.chunk(chunks), device="cpu")
        assert pred.u_mean.data.npartitions == n_chunks
        graph = dict(pred.__dask_graph__())
        kernels = [k for k in graph if str(k[0] if isinstance(k, tuple) else k).startswith("xsciml-predict")]
        assert len(kernels) == n_chunks  # one inference task per output chunk
        models = [k for k in graph if str(k).startswith(parallel.MODEL_KEY_PREFIX)]
        assert len(models) == 1
        for k in kernels:  # every inference task reads that single entry
            assert models[0] in dask.core.get_dependencies(graph, k)
        # pickled one by one (as the scheduler ships tasks), only that entry holds the model
        holding = [k for k, v in graph.items() if blob in pickle.dumps(v)]
        assert holding == models


def test_lazy_predict_equals_eager_threads_with_small_budget(field, monkeypatch):
    from xsciml.models import field as field_module

    monkeypatch.setattr(field_module, "_ENCODE_POINTS", 30)  # several sub-blocks per chunk
    target = _target()
    eager = field.predict(target, device="cpu")
    lazy = field.predict(target.chunk({"time": 2, "x": 4}), device="cpu", batch_size=17)
    assert lazy.u_mean.chunks == ((2, 2, 1), (13,), (4, 4, 3))
    assert lazy.u_std.attrs["units"] == "K" and lazy.attrs["xsciml_model"] == "NeuralField"
    with dask.config.set(scheduler="threads"):
        xr.testing.assert_allclose(lazy.compute(), eager.transpose(*lazy.u_mean.dims), atol=1e-6)


def test_lazy_predict_nan_coordinates_time_argument_and_bad_device(field):
    target = _target().isel(time=0, drop=True)
    y = target.y.values.copy()
    y[3] = np.nan
    target = target.assign_coords(y=y)
    lazy = field.predict(target.chunk({"y": 4}), time=1.5, device="cpu")
    eager = field.predict(target, time=1.5, device="cpu")
    assert lazy.u_mean.dims == eager.u_mean.dims and set(lazy.dims) == {"time", "y", "x"}
    out = lazy.compute()
    assert out.sizes["time"] == 1
    assert np.isnan(out.u_mean.isel(y=3)).all() and np.isfinite(out.u_mean.isel(y=4)).all()
    xr.testing.assert_allclose(out, eager, atol=1e-6)
    with pytest.raises(ValueError, match="device='gpu0'"):
        field.predict(target.chunk({"y": 4}), time=1.5, device="gpu0")


def test_lazy_sample_is_reproducible_with_predictive_moments(field):
    target = _target().chunk({"x": 4})
    draws = field.sample(8, target, seed=3, device="cpu")
    assert draws.dims == ("sample", "time", "y", "x") and draws.chunks is not None
    assert draws.dtype == np.float32 and draws.attrs["xsciml_model"] == "NeuralField"
    a = draws.compute()
    xr.testing.assert_identical(a, field.sample(8, target, seed=3, device="cpu").compute())
    assert not np.array_equal(a.values, field.sample(8, target, seed=4, device="cpu").values)
    pred = field.predict(target, device="cpu").compute()
    z = ((a - pred.u_mean) / pred.u_std).values.ravel()  # 8 x 715 standard normals
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_lazy_decode_equals_eager():
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 10)
    a, b = rng.normal(size=(2, 8))
    u = a[:, None, None] * np.sin(np.pi * x) + b[:, None, None] * np.cos(np.pi * x)[:, None]
    ds = xr.Dataset({"u": (("time", "y", "x"), u)}, coords={"time": np.arange(8), "y": x, "x": x})
    li = ds.sciml.fit_latent("u", sample_dim="time", latent_dim=3, steps=10, progress=False,
                             network_kwargs={"width": 16, "depth": 2})
    eager = li.decode(li.codes, ds, device="cpu")
    for z, target, kw in ((li.codes.chunk({"time": 3}), ds, {"batch_size": 40}),
                          (li.codes, ds.chunk({"y": 4, "x": 6}), {}),
                          (li.codes.chunk({"time": 5}), {"y": x, "x": x}, {})):
        lazy = li.decode(z, target, device="cpu", **kw)
        assert lazy.chunks is not None and lazy.dims == ("time", "y", "x")
        xr.testing.assert_allclose(lazy.compute(), eager, atol=1e-5)
        assert lazy.attrs == eager.attrs


# --------------------------------------------------------------------------- apply_model
@register_estimator
class _Affine(Estimator):
    """y = a * x + b with a torch module (a model for apply_model tests)."""

    _registry_name = "tests.parallel.Affine"

    def __init__(self, a: float, b: float) -> None:
        self.net = torch.nn.Linear(1, 1, dtype=torch.float64)
        with torch.no_grad():
            self.net.weight.fill_(a)
            self.net.bias.fill_(b)

    def _get_config(self):
        return {}

    def _get_tensors(self):
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    @classmethod
    def _from_state(cls, config, tensors):
        est = cls(0.0, 0.0)
        est.net.load_state_dict({k[4:]: v for k, v in tensors.items()})
        return est


def _affine_and_sum(model: _Affine, x: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    assert not torch.is_grad_enabled()  # inference mode
    y = model.net(parallel.as_tensor(x, device=device).reshape(-1, 1)).reshape(x.shape).numpy()
    return y, y.sum(-1)


def test_apply_model_lazy_equals_eager_two_outputs():
    est = _Affine(2.0, -1.0)
    x = xr.DataArray(np.arange(24.0).reshape(4, 6), dims=("time", "x"))
    kw = {"input_core_dims": [["x"]], "output_core_dims": [["x"], []],
          "output_dtypes": [np.float64, np.float64], "device": "cpu"}
    y, s = parallel.apply_model(_affine_and_sum, est, x, **kw)
    np.testing.assert_allclose(y.values, 2 * x.values - 1)
    np.testing.assert_allclose(s.values, (2 * x.values - 1).sum(-1))
    ly, ls = parallel.apply_model(_affine_and_sum, est, x.chunk({"time": 1}), **kw)
    assert ly.chunks == ((1, 1, 1, 1), (6,)) and ls.dims == ("time",)
    with dask.config.set(scheduler="threads"):
        xr.testing.assert_allclose(ly.compute(), y)
        xr.testing.assert_allclose(ls.compute(), s)
    with pytest.raises(ValueError, match="rechunk=True"):
        parallel.apply_model(_affine_and_sum, est, x.chunk({"x": 2}), **kw)
    ry, _ = parallel.apply_model(_affine_and_sum, est, x.chunk({"x": 2}), rechunk=True, **kw)
    xr.testing.assert_allclose(ry.compute(), y)


# --------------------------------------------------------------------------- distributed
def test_predict_on_dask_zarr_equals_eager_on_cluster(field, dask_client, tmp_path):
    target = _target(nt=6)
    target.chunk({"time": 2, "y": 7}).to_zarr(tmp_path / "target.zarr")
    opened = xr.open_zarr(tmp_path / "target.zarr")
    lazy = field.predict(opened)  # device="auto": resolved on each worker
    assert lazy.u_mean.data.npartitions == 6
    result = lazy.compute()  # runs on the two worker processes
    eager = field.predict(target, device="cpu")
    xr.testing.assert_allclose(result, eager, atol=1e-6)
    # each worker built the model at most once, whatever the number of its tasks
    # (the workers resolve device="auto" themselves: the key names the GPU where they see one)
    digest = _digest(field)

    def loads_here():
        from xsciml._utils import resolve_device

        return parallel.model_cache_info()["loads"].get(f"{digest}@{resolve_device('auto')}", 0)

    loads = dask_client.run(loads_here)
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1


def test_worker_killed_mid_computation_still_completes(field):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", memory_limit="1GiB") as cluster, \
            distributed.Client(cluster) as client:
        target = _target(nt=12, ny=40, nx=40)
        lazy = field.predict(target.chunk({"time": 1}), device="cpu")
        persisted = client.persist(lazy)
        futures = distributed.futures_of(persisted)
        done, _ = distributed.wait(futures, return_when="FIRST_COMPLETED")
        holder = next(iter(client.who_has(list(done)).values()))[0]
        pid = client.run(os.getpid, workers=[holder])[holder]
        os.kill(pid, 9)  # the worker dies with its results and its cached model
        result = persisted.compute()
        assert client.run(os.getpid).get(holder) != pid  # the nanny started a new process
    eager = field.predict(target, device="cpu")
    xr.testing.assert_allclose(result, eager, atol=1e-6)
    assert math.isfinite(float(result.u_mean.sum()))


def test_blockwise_model_shares_one_model_entry(field):
    handle = parallel.model_to_graph(field)
    assert handle.key.startswith(parallel.MODEL_KEY_PREFIX)
    assert parallel.model_to_graph(save_bytes(field)).key == handle.key  # same model, same key

    def _double(model, x, device):
        return 2 * x

    x = dsa.ones((6,), chunks=2)
    a = parallel.blockwise_model(_double, handle, "i", x, "i", dtype=float)
    b = parallel.blockwise_model(_double, handle, "i", x + 1, "i", dtype=float)
    both = dict((a + b).__dask_graph__())
    assert sum(str(k).startswith(parallel.MODEL_KEY_PREFIX) for k in both) == 1
    np.testing.assert_array_equal((a + b).compute(scheduler="sync"), np.full(6, 6.0))
    with pytest.raises(TypeError, match="Estimator"):
        parallel.model_to_graph("model.xsciml")
