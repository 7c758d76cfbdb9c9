"""The main job runs end to end and writes readable results."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import xarray as xr

import xsciml
from xsciml.cli import main, run_demo


def test_demo_quick(tmp_path):
    summary = run_demo(tmp_path / "out", quick=True, quiet=True)
    out = tmp_path / "out"
    assert summary["tensors"]["roundtrip_exact"] is True
    assert summary["field"]["nrmse"] < 1.0 and 0 < summary["field"]["coverage"] <= 1
    # the field next to two interpolations of the same observations, on the same points
    for name in ("rbf", "linear"):
        assert 0 < summary["baselines"][name]["nrmse"] < 1.0
    rows = summary["table"].splitlines()
    assert [r.split()[0] for r in rows[2:5]] == ["neural", "thin-plate", "linear"]
    assert "(no σ)" in rows[3] and f"{summary['field']['coverage']:.3f}" in rows[2]
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


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"xsciml {xsciml.__version__}"


def test_help_texts_are_plain_and_complete(capsys):
    texts = {cmd: _help(capsys, *cmd) for cmd in [(), ("demo",), ("run",)]}
    for text in texts.values():
        assert "``" not in text and not re.search(r":[a-z]+:`", text), text
    assert "--version" in texts[()] and "demo" in texts[()] and "run" in texts[()]
    seed_line = next(line for line in texts[("demo",)].splitlines() if line.startswith("  --seed"))
    assert len(seed_line.split("--seed SEED", 1)[1].strip()) > 10  # it says what the seed does
    # every registered task, one line each, with the first line of its docstring
    from xsciml.jobs import _TASKS, registered_tasks

    run_help = texts[("run",)]
    lines = run_help.split("tasks:", 1)[1].strip().splitlines()
    assert [line.split()[0] for line in lines] == registered_tasks()
    for line, name in zip(lines, registered_tasks(), strict=True):
        first = _TASKS[name].__doc__.strip().splitlines()[0].replace("``", "")
        assert line.split(None, 1)[1] == first


@pytest.mark.parametrize("argv", [["run", "nonsense", "-m", "a", "-i", "b", "-o", "c"],
                                  ["run", "predict"], ["bogus"], ["demo", "--seed", "x"]])
def test_errors_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err, err
