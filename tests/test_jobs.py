"""Resumable batch jobs (xsciml.jobs, ``xsciml run``): interrupted and killed jobs resume,
skip finished regions and give identical output; distributed schedulers; refusals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xsciml  # noqa: F401  (registers .sciml)
from xsciml.cli import main
from xsciml.jobs import MANIFEST_NAME, read_manifest, register_task, registered_tasks, run_job


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    t = np.arange(4.0)
    y = np.linspace(-1, 1, 12)
    x = np.linspace(-1, 1, 10)
    u = np.sin(3 * y)[None, :, None] * np.cos(2 * x)[None, None, :] + 0.1 * t[:, None, None]
    ds = xr.Dataset({"u": (("time", "y", "x"), u, {"units": "K"})},
                    coords={"time": xr.date_range("2000-01-01", periods=4, freq="D"), "y": y, "x": x})
    field = ds.sciml.fit_field("u", space=("y", "x"), time="time", steps=30, seed=0, network="mlp",
                               network_kwargs={"width": 16, "depth": 2}, progress=False)
    return field.save(tmp_path_factory.mktemp("model") / "field.xsciml")


def _grid(nt: int) -> xr.Dataset:
    ds = xr.Dataset(coords={"time": xr.date_range("2000-01-01", periods=nt, freq="6h"),
                            "y": np.linspace(-1, 1, 9), "x": np.linspace(-1, 1, 7)})
    ds["mask"] = xr.ones_like(ds.time.astype(float) + ds.y + ds.x).astype("int8")
    return ds


@pytest.fixture(scope="module")
def input_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("input") / "grid.zarr"
    _grid(12).chunk({"time": 2}).to_zarr(path)
    return path


@pytest.fixture(scope="module")
def reference(model_path, input_store, tmp_path_factory) -> xr.Dataset:
    """The output of an uninterrupted job."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    report = run_job("predict", model_path, input_store, out, region_size=2, progress=False, device="cpu")
    assert report.computed == list(range(6)) and report.skipped == []
    return xr.open_zarr(out).load()


class _Interrupt(Exception):
    pass


def test_uninterrupted_job_equals_eager_prediction(model_path, reference):
    eager = xsciml.load(model_path).predict(_grid(12), device="cpu")
    xr.testing.assert_allclose(reference, eager.transpose(*reference.u_mean.dims), atol=1e-6)
    assert reference.u_std.attrs["units"] == "K" and reference.attrs["xsciml_model"] == "NeuralField"


def test_interrupted_job_resumes_without_recomputing(model_path, input_store, reference, tmp_path):
    out = tmp_path / "out.zarr"

    def stop_after_three(i, n):
        if i == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_job("predict", model_path, input_store, out, region_size=2, progress=False,
                on_region=stop_after_three, device="cpu")
    manifest = read_manifest(out)
    assert manifest["done"] == [0, 1, 2] and manifest["n_regions"] == 6
    seen = []
    report = run_job("predict", model_path, input_store, out, region_size=2, progress=False,
                     on_region=lambda i, n: seen.append(i), device="cpu")
    assert report.skipped == [0, 1, 2] and report.computed == [3, 4, 5] == seen
    xr.testing.assert_identical(xr.open_zarr(out).load(), reference)
    again = run_job("predict", model_path, input_store, out, region_size=2, progress=False, device="cpu")
    assert again.computed == [] and again.skipped == list(range(6))  # a finished job is a no-op


@pytest.mark.slow
def test_killed_cli_job_resumes_with_identical_output(model_path, tmp_path):
    src = tmp_path / "long.zarr"
    _grid(48).chunk({"time": 1}).to_zarr(src)
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "xsciml", "run", "predict", "--model", str(model_path), "--input",
           str(src), "--output", str(out), "--region-size", "1", "--quiet", "-k", "device=cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = read_manifest(out) if (out / MANIFEST_NAME).exists() else None
            if manifest and manifest["done"]:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = read_manifest(out)["done"]
    assert 1 <= len(done) < 48  # killed part way
    report = run_job("predict", model_path, src, out, region_size=1, progress=False, device="cpu")
    assert report.skipped == done and sorted(report.computed + done) == list(range(48))
    eager = xsciml.load(model_path).predict(_grid(48), device="cpu")
    result = xr.open_zarr(out).load()
    xr.testing.assert_allclose(result, eager.transpose(*result.u_mean.dims), atol=1e-6)


def test_job_on_distributed_cluster_by_client_and_address(model_path, input_store, reference,
                                                         dask_client, tmp_path):
    r1 = run_job("predict", model_path, input_store, tmp_path / "a.zarr", scheduler=dask_client,
                 region_size=4, progress=False)  # device="auto": each worker picks its own
    assert r1.n_regions == 3
    xr.testing.assert_allclose(xr.open_zarr(tmp_path / "a.zarr").load(), reference, atol=1e-6)
    run_job("predict", model_path, input_store, tmp_path / "b.zarr", progress=False,
            scheduler=dask_client.scheduler.address, region_size=12)
    xr.testing.assert_allclose(xr.open_zarr(tmp_path / "b.zarr").load(), reference, atol=1e-6)


def test_job_refuses_foreign_or_different_outputs(model_path, input_store, reference, tmp_path):
    foreign = tmp_path / "foreign.zarr"
    _grid(2).to_zarr(foreign)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run_job("predict", model_path, input_store, foreign, progress=False)
    run_job("predict", model_path, input_store, foreign, progress=False, overwrite=True,
            region_size=2, device="cpu")
    xr.testing.assert_identical(xr.open_zarr(foreign).load(), reference)
    with pytest.raises(ValueError, match="different job"):  # other regions, other options
        run_job("predict", model_path, input_store, foreign, region_size=4, progress=False)
    with pytest.raises(ValueError, match="different job"):
        run_job("predict", model_path, input_store, foreign, region_size=2, batch_size=7,
                progress=False, device="cpu")


def test_job_killed_during_set_up_starts_over(model_path, input_store, reference, tmp_path):
    out = tmp_path / "out.zarr"
    run_job("predict", model_path, input_store, out, region_size=2, progress=False, device="cpu")
    (out / MANIFEST_NAME).unlink()  # as if killed after creating the store, before the manifest
    report = run_job("predict", model_path, input_store, out, region_size=2, progress=False,
                     device="cpu")  # its own fingerprint in the store's attrs: no refusal
    assert report.skipped == [] and report.computed == list(range(6))
    xr.testing.assert_identical(xr.open_zarr(out).load(), reference)


def test_job_argument_errors(model_path, input_store, tmp_path):
    with pytest.raises(KeyError, match="hindcast.*known tasks.*predict"):
        run_job("hindcast", model_path, input_store, tmp_path / "o.zarr")
    with pytest.raises(TypeError, match="NeuralField cannot forecast"):
        run_job("forecast", model_path, input_store, tmp_path / "o.zarr", lead=[1.0])
    with pytest.raises(ValueError, match="multiple of the output's chunk size"):
        run_job("predict", model_path, input_store, tmp_path / "o.zarr", region_size=3)
    with pytest.raises(KeyError, match="region_dim 'depth'"):
        run_job("predict", model_path, input_store, tmp_path / "o.zarr", region_dim="depth")
    with pytest.raises(TypeError, match="output_store"):
        run_job("predict", model_path, input_store, 42)


def test_registered_task_plugs_in(model_path, input_store, tmp_path, monkeypatch):
    from xsciml import jobs

    monkeypatch.setattr(jobs, "_TASKS", dict(jobs._TASKS))  # the test's task does not outlive it

    @register_task("test-draws")
    def _draws(model, ds, n=2, **kwargs):
        return model.sample(n, ds, seed=0, **kwargs)

    assert "test-draws" in registered_tasks()
    report = run_job("test-draws", model_path, input_store, tmp_path / "s.zarr", progress=False,
                     region_dim="time", region_size=6, device="cpu")
    out = xr.open_zarr(tmp_path / "s.zarr")
    assert report.n_regions == 2 and out.u.dims == ("sample", "time", "y", "x")
    direct = xsciml.load(model_path).sample(2, xr.open_zarr(input_store), seed=0, device="cpu")
    xr.testing.assert_allclose(out.u.load(), direct.compute(), atol=1e-6)


def test_cli_run(model_path, input_store, reference, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    code = main(["run", "predict", "--model", str(model_path), "--input", str(input_store),
                 "--output", str(out), "--region-size", "4", "-k", "device=cpu", "-k", "batch_size=50"])
    assert code == 0
    printed = capsys.readouterr().out
    assert '"n_regions": 3' in printed and '"computed": 3' in printed
    xr.testing.assert_allclose(xr.open_zarr(out).load(), reference, atol=1e-6)
    with pytest.raises(SystemExit):
        main(["run", "predict", "--model", str(model_path), "--input", str(input_store),
              "--output", str(out), "-k", "not a pair"])


# ----------------------------------------------------------------------------------
# a changed input is refused on resume
# ----------------------------------------------------------------------------------
def _interrupted(model_path, src, out, after: int = 1):
    def stop(i, n):
        if i == after:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        run_job("predict", model_path, src, out, region_size=2, progress=False, on_region=stop,
                device="cpu")
    assert read_manifest(out)["done"] == list(range(after + 1))


def test_resume_refuses_input_with_shifted_coordinates(model_path, tmp_path):
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _grid(12).chunk({"time": 2}).to_zarr(src)
    _interrupted(model_path, src, out)
    shifted = _grid(12)
    shifted = shifted.assign_coords(x=shifted.x + 0.05)  # same shape, other coordinates
    shifted.chunk({"time": 2}).to_zarr(src, mode="w")
    with pytest.raises(ValueError, match=r"different job: its input differ.*coordinates.*--overwrite"):
        run_job("predict", model_path, src, out, region_size=2, progress=False, device="cpu")
    report = run_job("predict", model_path, src, out, region_size=2, progress=False, device="cpu",
                     overwrite=True)
    assert report.skipped == [] and report.computed == list(range(6))
    np.testing.assert_array_equal(xr.open_zarr(out).x.values, shifted.x.values)


def test_resume_refuses_input_whose_finished_regions_changed(model_path, tmp_path):
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _grid(12).chunk({"time": 2}).to_zarr(src)
    _interrupted(model_path, src, out)
    changed = _grid(12)
    changed["mask"][1, 0, 0] = 0  # inside region 0, which is finished: same coords and shapes
    changed.chunk({"time": 2}).to_zarr(src, mode="w")
    with pytest.raises(ValueError, match=r"input data read by finished region\(s\) \[0\].*--overwrite"):
        run_job("predict", model_path, src, out, region_size=2, progress=False, device="cpu")


def test_resume_accepts_input_changed_only_where_not_yet_computed(model_path, reference, tmp_path):
    src, out = tmp_path / "in.zarr", tmp_path / "out.zarr"
    _grid(12).chunk({"time": 2}).to_zarr(src)
    _interrupted(model_path, src, out)
    changed = _grid(12)
    changed["mask"][-1, 0, 0] = 0  # in region 5, not computed yet
    changed.chunk({"time": 2}).to_zarr(src, mode="w")
    report = run_job("predict", model_path, src, out, region_size=2, progress=False, device="cpu")
    assert report.skipped == [0, 1] and report.computed == [2, 3, 4, 5]


# ----------------------------------------------------------------------------------
# command-line errors: one line, exit status 2
# ----------------------------------------------------------------------------------
def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xsciml run: error: "), err
    return err


@pytest.mark.parametrize(("extra", "message"), [
    (["--task-placeholder", "hindcast"], r"unknown task 'hindcast'; choose one of .*forecast.*predict"),
    (["--task-placeholder", "forecast", "-k", "lead=[1]"], r"a NeuralField cannot forecast; choose another task"),
    (["-k", "batch_size=abc"], r"batch_size must be a positive integer, got 'abc'"),
    (["-k", "batch_size=0"], r"batch_size must be a positive integer, got 0"),
    (["--region-dim", "depth"], r"region_dim 'depth' is not a dimension of the output"),
])
def test_cli_run_errors_are_one_line(model_path, input_store, tmp_path, capsys, extra, message):
    task = "predict"
    if extra[:1] == ["--task-placeholder"]:
        task, extra = extra[1], extra[2:]
    err = _cli_error(capsys, ["run", task, "-m", str(model_path), "-i", str(input_store), "-o",
                              str(tmp_path / "o.zarr"), "-q", "-k", "device=cpu", *extra])
    assert re.search(message, err), err


def test_cli_run_output_that_is_a_file_or_inside_one(model_path, input_store, tmp_path, capsys):
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me")
    base = ["run", "predict", "-m", str(model_path), "-i", str(input_store), "-q", "-k", "device=cpu"]
    err = _cli_error(capsys, [*base, "-o", str(plain), "--overwrite"])
    assert "is a regular file, not a zarr store" in err and plain.read_text() == "keep me"
    err = _cli_error(capsys, [*base, "-o", str(plain / "out.zarr")])
    assert "--output must be a zarr store path" in err


def test_cli_run_wrong_model_and_missing_input(model_path, input_store, tmp_path, capsys):
    nc = tmp_path / "grid.nc"
    _grid(4).to_netcdf(nc)
    err = _cli_error(capsys, ["run", "predict", "-m", str(nc), "-i", str(input_store), "-o",
                              str(tmp_path / "o.zarr"), "-q"])
    assert "--model:" in err and "netCDF" in err
    err = _cli_error(capsys, ["run", "predict", "-m", str(model_path), "-i", str(tmp_path / "nope.zarr"),
                              "-o", str(tmp_path / "o.zarr"), "-q"])
    assert "nope.zarr" in err
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    err = _cli_error(capsys, ["run", "predict", "-m", str(model_path), "-i", str(empty), "-o",
                              str(tmp_path / "o.zarr"), "-q"])
    assert "is not a zarr store" in err


def test_cli_run_accepts_netcdf_input(model_path, reference, tmp_path, capsys):
    nc = tmp_path / "grid.nc"
    _grid(12).to_netcdf(nc)
    out = tmp_path / "from_nc.zarr"
    assert main(["run", "predict", "-m", str(model_path), "-i", str(nc), "-o", str(out),
                 "--region-dim", "time", "-q", "-k", "device=cpu"]) == 0
    result = xr.open_zarr(out).load()
    xr.testing.assert_allclose(result, reference.transpose(*result.u_mean.dims), atol=1e-6)


# ----------------------------------------------------------------------------------
# every registered task: the job process is killed by PID, resumed, same output
# ----------------------------------------------------------------------------------
_HOLD_AFTER = """
import json, sys, time
import torch
torch.set_num_threads(1)
from xsciml.jobs import run_job
task, model, src, out, size, after, kwargs = json.loads(sys.argv[1])
def hold(i, n):
    if i == after:  # region `after` is written and recorded: wait to be killed
        time.sleep(600)
run_job(task, model, src, out, region_size=size, progress=False, on_region=hold, **kwargs)
"""


def _kill_and_resume(task, model, src, out, size, kwargs, after=0):
    """Run the job in a subprocess, SIGKILL it once regions 0..after are in the manifest,
    resume it here; returns the resumed output."""
    import json

    args = json.dumps([task, str(model), str(src), str(out), size, after, kwargs])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XSCIML_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_AFTER, args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            manifest = read_manifest(out) if (out / MANIFEST_NAME).exists() else None
            if manifest and len(manifest["done"]) > after:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = read_manifest(out)["done"]
    assert done == list(range(after + 1))
    report = run_job(task, model, src, out, region_size=size, progress=False, **kwargs)
    assert report.skipped == done and report.computed == list(range(after + 1, report.n_regions))
    return xr.open_zarr(out).load()


def _assert_same(resumed: xr.Dataset, clean: xr.Dataset) -> None:
    assert set(resumed.data_vars) == set(clean.data_vars)
    for name in clean.data_vars:
        assert np.array_equal(resumed[name].values, clean[name].values, equal_nan=True), name
    for name in clean.coords:
        np.testing.assert_array_equal(resumed[name].values, clean[name].values)


def _clean(task, model, src, out, size, kwargs) -> xr.Dataset:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_job(task, model, src, out, region_size=size, progress=False, **kwargs)
    finally:
        torch.set_num_threads(threads)
    return xr.open_zarr(out).load()


@pytest.fixture(scope="module")
def task_setups(model_path, input_store, tmp_path_factory):
    """(model file, input store, region size, task options) for every registered task."""
    from tests.test_debias import snapshots
    from tests.test_downscale import _block_mean, _fine
    from xsciml.downscale.diffusion import fit_diffusion
    from xsciml.downscale.ot import fit_debias
    from xsciml.models.dino import fit_dynamics

    root = tmp_path_factory.mktemp("tasks")
    setups = {"predict": (model_path, input_store, 2, {"device": "cpu"})}

    traj = xsciml.datasets.heat(6, 8, n_frames=4, seed=0)
    dino = fit_dynamics(traj, "u", latent_dim=3, width=8, depth=1, dynamics_width=8,
                        dynamics_depth=1, steps=3, progress=False, seed=0, device="cpu")
    init = xsciml.datasets.heat(6, 8, n_frames=1, seed=1).isel(time=0)
    init.chunk({"trajectory": 2}).to_zarr(root / "init.zarr")
    setups["forecast"] = (dino.save(root / "dino.xsciml"), root / "init.zarr", 2,
                          {"lead": [0.0, 0.5], "encode_steps": 2, "device": "cpu"})

    ref = snapshots(120, 0)
    deb = fit_debias(ref * 0.9 + 30.0, ref, method="gaussian", progress=False)
    (snapshots(40, 3) * 0.9 + 30.0).assign_attrs(units="K").to_dataset(name="tas") \
        .chunk({"time": 10}).to_zarr(root / "model_output.zarr")
    setups["transform"] = (deb.save(root / "debias.xsciml"), root / "model_output.zarr", 10,
                           {"variable": "tas"})

    prior = fit_diffusion(_fine(8), base_channels=4, levels=2, emb_dim=8, steps=3, progress=False,
                          device="cpu", seed=0)
    _block_mean(_fine(n=3, seed=1)).to_dataset().chunk({"time": 1}).to_zarr(root / "coarse.zarr")
    setups["downscale"] = (prior.save(root / "prior.xsciml"), root / "coarse.zarr", 1,
                           {"variable": "t2m", "samples": 1, "steps": 2, "seed": 0, "device": "cpu"})
    assert set(setups) == set(registered_tasks())  # a new task needs its crash test here
    return setups


@pytest.mark.parametrize("task", ["predict", "forecast", "transform", "downscale"])
def test_killed_job_resumes_identically_for_every_task(task, task_setups, tmp_path):
    model, src, size, kwargs = task_setups[task]
    clean = _clean(task, model, src, tmp_path / "clean.zarr", size, kwargs)
    resumed = _kill_and_resume(task, model, src, tmp_path / "resumed.zarr", size, kwargs)
    _assert_same(resumed, clean)


@pytest.mark.slow
def test_job_survives_a_killed_dask_worker(model_path, input_store, reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, memory_limit="2GiB") as cluster, \
            distributed.Client(cluster) as client:
        killed = []

        def kill_a_worker(i, n):
            if i == 0:  # the worker process dies between regions; its nanny restarts it
                pid = next(iter(client.run(os.getpid).values()))
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        report = run_job("predict", model_path, input_store, tmp_path / "out.zarr", region_size=2,
                         scheduler=client, progress=False, on_region=kill_a_worker, device="cpu")
    assert killed and report.computed == list(range(6))
    xr.testing.assert_allclose(xr.open_zarr(tmp_path / "out.zarr").load(), reference, atol=1e-6)
