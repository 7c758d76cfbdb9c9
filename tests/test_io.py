"""Tests for xsciml.base (estimator base, registry) and xsciml.io (save / load)."""

from __future__ import annotations

import importlib
import json
import math
import struct
import sys
from datetime import datetime

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xsciml import base, io
from xsciml.base import Estimator, get_estimator_class, register_estimator
from xsciml.io import ModelFileError


# ----------------------------------------------------------------------------------
# two small, real estimators
# ----------------------------------------------------------------------------------
@register_estimator
class LinearRegression(Estimator):
    """Least-squares linear regression whose weights live in a torch.nn.Linear."""

    _registry_name = "tests.LinearRegression"

    def __init__(self, n_features: int, n_targets: int, *, target_names=None, ridge=0.0):
        self.n_features, self.n_targets, self.ridge = n_features, n_targets, ridge
        self.target_names = list(target_names or [f"y{i}" for i in range(n_targets)])
        self.linear = torch.nn.Linear(n_features, n_targets, dtype=torch.float64)

    def fit(self, x: torch.Tensor, y: torch.Tensor) -> LinearRegression:
        design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        gram = design.T @ design + self.ridge * torch.eye(design.shape[1], dtype=x.dtype)
        coef = torch.linalg.solve(gram, design.T @ y)  # (n_features + 1, n_targets)
        with torch.no_grad():
            self.linear.weight.copy_(coef[:-1].T)
            self.linear.bias.copy_(coef[-1])
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.linear(x.to(self.linear.weight.device))

    def _get_config(self):
        return {
            "n_features": self.n_features,
            "n_targets": self.n_targets,
            "target_names": self.target_names,
            "ridge": self.ridge,
        }

    def _get_tensors(self):
        return {f"linear.{k}": v for k, v in self.linear.state_dict().items()}

    @classmethod
    def _from_state(cls, config, tensors):
        est = cls(
            config["n_features"],
            config["n_targets"],
            target_names=config["target_names"],
            ridge=config["ridge"],
        )
        est.linear.to(tensors["linear.weight"].device)
        est.linear.load_state_dict({k.removeprefix("linear."): v for k, v in tensors.items()})
        return est

    def _provenance_extra(self):
        return {"ridge": self.ridge}


@register_estimator
class Bag(Estimator):
    """Stores whatever config and tensors it is given; counts rebuilds."""

    _registry_name = "tests.Bag"
    rebuilds = 0

    def __init__(self, config=None, tensors=None):
        self.config = {} if config is None else config
        self.tensors = {} if tensors is None else tensors

    def _get_config(self):
        return self.config

    def _get_tensors(self):
        return self.tensors

    @classmethod
    def _from_state(cls, config, tensors):
        cls.rebuilds += 1
        return cls(config, tensors)


@pytest.fixture(autouse=True)
def _no_builtin_discovery(monkeypatch):
    """Keep the registry tests independent of the other xsciml modules."""
    monkeypatch.setattr(base, "_BUILTIN_PACKAGES", ())
    monkeypatch.setattr(base, "_builtins_imported", False)


@pytest.fixture
def fitted():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    w = torch.tensor([[1.5, -2.0], [0.5, 0.0], [-1.0, 3.0]], dtype=torch.float64)
    y = x @ w + torch.tensor([0.25, -1.0], dtype=torch.float64)
    y = y + 0.01 * torch.randn(40, 2, generator=gen, dtype=torch.float64)
    est = LinearRegression(3, 2, target_names=["tas", "pr"], ridge=1e-6).fit(x, y)
    return est, x, w


@pytest.fixture
def saved(fitted, tmp_path):
    est, _, _ = fitted
    return est.save(tmp_path / "model.xsciml")


def _raw_metadata(path) -> dict[str, str]:
    with safe_open(path, framework="pt") as f:
        return dict(f.metadata())


def _rewrite(path, *, metadata=None, tensors=None):
    """Re-save a model file with changed metadata and/or tensors (no digest update)."""
    meta = _raw_metadata(path) | (metadata or {})
    save_file(tensors if tensors is not None else load_file(path), path, metadata=meta)


def _expect_error(path, match, exc=ModelFileError):
    with pytest.raises(exc, match=match) as info:
        io.load(path)
    assert str(path) in str(info.value)
    return info.value


# ----------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------
def test_estimator_fits_known_weights(fitted):
    est, _, w = fitted
    torch.testing.assert_close(est.linear.weight.detach(), w.T, atol=0.01, rtol=0)
    torch.testing.assert_close(
        est.linear.bias.detach(), torch.tensor([0.25, -1.0], dtype=torch.float64), atol=0.01, rtol=0
    )


def test_save_load_round_trip(fitted, tmp_path):
    est, x, _ = fitted
    path = est.save(tmp_path / "model.xsciml")
    assert path == tmp_path / "model.xsciml" and path.is_file()
    back = io.load(path)
    assert type(back) is LinearRegression
    assert back._get_config() == est._get_config()
    assert torch.equal(back.predict(x), est.predict(x))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_top_level_save_and_classmethod_load(fitted, tmp_path):
    est, x, _ = fitted
    path = io.save(est, str(tmp_path / "m.xsciml"))
    back = LinearRegression.load(path)
    assert torch.equal(back.predict(x), est.predict(x))
    with pytest.raises(ModelFileError, match="holds a LinearRegression, not a Bag"):
        Bag.load(path)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_load_device_cpu(saved, device):
    back = io.load(saved, device=device)
    assert back.linear.weight.device.type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_load_device_cuda_without_gpu_is_clear(saved):
    with pytest.raises(ValueError, match="no CUDA device"):
        io.load(saved, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.gpu
def test_load_device_cuda(fitted, saved):
    est, x, _ = fitted
    back = io.load(saved, device="cuda")
    assert back.linear.weight.device.type == "cuda"
    torch.testing.assert_close(back.predict(x).cpu(), est.predict(x))


def test_tensor_dtypes_and_layouts_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(1)
    base_t = torch.randn(4, 6, generator=gen)
    big_endian = np.arange(5, dtype=">f8") * 0.1
    tensors = {
        "f32": base_t,
        "view_t": base_t.T,  # non-contiguous, shares storage with f32
        "f64_grad": torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_(),
        "bf16": base_t.to(torch.bfloat16),
        "c64": torch.randn(3, 2, generator=gen, dtype=torch.complex64),
        "c128": torch.randn(5, generator=gen, dtype=torch.complex128).conj(),
        "i64": torch.arange(-3, 3),
        "mask": base_t > 0,
        "scalar": torch.tensor(7.5),
        "empty": torch.zeros(0, 3),
        "np_be": big_endian,
        "np_c": np.array([1 + 2j, -3j]),
    }
    path = Bag({"k": 1}, tensors).save(tmp_path / "bag.xsciml")
    back = io.load(path).tensors
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        expected = (
            torch.from_numpy(value.astype(value.dtype.newbyteorder("=")))
            if isinstance(value, np.ndarray)
            else value.detach().resolve_conj()
        )
        assert back[name].dtype == expected.dtype, name
        assert back[name].shape == expected.shape, name
        assert torch.equal(back[name], expected), name
    assert back["c128"].is_complex() and not back["c128"].is_conj()


@pytest.mark.parametrize("value", [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0, 2**70])
def test_config_numbers_round_trip_exactly(tmp_path, value):
    path = Bag({"v": value}).save(tmp_path / "c.xsciml")
    got = io.load(path).config["v"]
    assert type(got) is type(value)
    if isinstance(value, float):
        assert struct.pack("<d", got) == struct.pack("<d", value)  # bitwise, keeps -0.0
    else:
        assert got == value


def test_config_non_finite_and_nested(tmp_path):
    config = {
        "nan": float("nan"),
        "inf": math.inf,
        "ninf": -math.inf,
        "nested": {"names": ("lat", "lon"), "flags": [True, None, "x"]},
        "np_scalars": [np.float32(0.5), np.int64(3), np.bool_(True)],
    }
    back = io.load(Bag(config).save(tmp_path / "c.xsciml")).config
    assert math.isnan(back["nan"]) and back["inf"] == math.inf and back["ninf"] == -math.inf
    assert back["nested"] == {"names": ["lat", "lon"], "flags": [True, None, "x"]}  # tuple -> list
    assert back["np_scalars"] == [0.5, 3, True]
    assert [type(v) for v in back["np_scalars"]] == [float, int, bool]


_json_leaf = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.floats(allow_nan=False)
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(config=st.dictionaries(st.text(max_size=6), _json, max_size=4))
def test_config_round_trip_property(tmp_path, config):
    back = io.load(Bag(config).save(tmp_path / "p.xsciml")).config
    assert json.dumps(back, sort_keys=True) == json.dumps(config, sort_keys=True)
    assert back == config


def test_digest_is_deterministic_and_covers_config(tmp_path):
    a = Bag({"k": 1}, {"w": torch.arange(4.0)}).save(tmp_path / "a.xsciml")
    b = Bag({"k": 1}, {"w": torch.arange(4.0)}).save(tmp_path / "b.xsciml")
    c = Bag({"k": 2}, {"w": torch.arange(4.0)}).save(tmp_path / "c.xsciml")
    digests = [_raw_metadata(p)["sha256"] for p in (a, b, c)]
    assert digests[0] == digests[1] != digests[2]


# ----------------------------------------------------------------------------------
# read_metadata, overwrite, save-side validation
# ----------------------------------------------------------------------------------
def test_read_metadata_does_not_build(tmp_path):
    path = Bag({"latent_dim": 8}, {"w": torch.ones(2, 3)}).save(tmp_path / "m.xsciml")
    before = Bag.rebuilds
    meta = io.read_metadata(path)
    assert Bag.rebuilds == before
    assert meta["format"] == "xsciml" and meta["format_version"] == io.FORMAT_VERSION
    assert meta["class"] == "tests.Bag"
    assert meta["config"] == {"latent_dim": 8}
    assert meta["xsciml_version"] == base.xsciml_version()
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert meta["tensors"] == {"w": {"dtype": "F32", "shape": [2, 3]}}
    io.load(path)
    assert Bag.rebuilds == before + 1


def test_overwrite_false_refuses_existing_file(fitted, tmp_path):
    est, _, _ = fitted
    path = tmp_path / "model.xsciml"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        est.save(path, overwrite=False)
    assert path.read_bytes() == b"keep me"
    est.save(path)  # overwrite=True is the default
    assert io.read_metadata(path)["class"] == "tests.LinearRegression"


def test_save_rejects_bad_state(tmp_path):
    with pytest.raises(TypeError, match=r"_get_config\(\)\['arr'\].*_get_tensors"):
        Bag({"arr": np.zeros(3)}).save(tmp_path / "x.xsciml")
    with pytest.raises(TypeError, match="key 1 of type int"):
        Bag({"d": {1: "a"}}).save(tmp_path / "x.xsciml")
    with pytest.raises(TypeError, match=r"\['names'\].*dtype <U3.*_get_config"):
        Bag({}, {"names": np.array(["tas", "pr"])}).save(tmp_path / "x.xsciml")
    with pytest.raises(TypeError, match=r"\['n'\] is a int"):
        Bag({}, {"n": 3}).save(tmp_path / "x.xsciml")
    with pytest.raises(TypeError, match="estimator must be an xsciml Estimator"):
        io.save(torch.nn.Linear(2, 2), tmp_path / "x.xsciml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Bag().save(tmp_path / "missing_dir" / "x.xsciml")
    assert list(tmp_path.iterdir()) == []


def test_save_unregistered_class_is_refused(tmp_path):
    class Unregistered(Bag):
        pass

    with pytest.raises(ValueError, match="register_estimator"):
        Unregistered().save(tmp_path / "x.xsciml")


# ----------------------------------------------------------------------------------
# load errors: each names the file
# ----------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.xsciml", "No model file", FileNotFoundError)


@pytest.mark.parametrize("keep", [0, 5, 20, -5])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep])
    _expect_error(saved, "empty" if keep == 0 else "truncated|not an xsciml model file")


def test_truncated_in_header_and_in_data(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:20])
    _expect_error(saved, "is truncated: its header announces")
    saved.write_bytes(data[:-5])
    _expect_error(saved, "truncated or corrupted")


def test_flipped_data_byte_is_tampering(saved):
    data = bytearray(saved.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    assert len(data) > 8 + header_len  # the last byte lies in the tensor data region
    data[-1] ^= 0xFF
    saved.write_bytes(bytes(data))
    _expect_error(saved, "corrupted or was edited")


def test_edited_config_is_tampering(saved):
    config = json.loads(_raw_metadata(saved)["config"])
    config["ridge"] = 0.5
    _rewrite(saved, metadata={"config": json.dumps(config)})
    _expect_error(saved, "sha256 mismatch")


def test_replaced_tensor_is_tampering(saved):
    tensors = load_file(saved)
    tensors["linear.bias"] = torch.zeros_like(tensors["linear.bias"])
    _rewrite(saved, tensors=tensors)
    _expect_error(saved, "corrupted or was edited")


def test_safetensors_without_metadata_is_foreign(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2)}, path)
    _expect_error(path, "without xsciml metadata")
    save_file({"w": torch.ones(2)}, path, metadata={"format": "pt"})
    _expect_error(path, r"without xsciml metadata \(metadata keys: \['format'\]\)")
    with pytest.raises(ModelFileError, match="without xsciml metadata"):
        io.read_metadata(path)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "notes.xsciml"
    path.write_text("hello, this is not a model\n")
    _expect_error(path, "not an xsciml model file")


@pytest.mark.parametrize("fmt, hint", [("NETCDF4", "netCDF-4"), ("NETCDF3_CLASSIC", "netCDF-3")])
def test_netcdf_file_is_refused(tmp_path, fmt, hint):
    path = tmp_path / "data.nc"
    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(path, format=fmt, engine="netcdf4")
    err = _expect_error(path, "not an xsciml model file")
    assert hint in str(err) and "xarray.open_dataset" in str(err)


def test_torch_save_pickle_is_refused(tmp_path, fitted):
    path = tmp_path / "model.pt"
    torch.save(fitted[0].linear.state_dict(), path)
    _expect_error(path, "never unpickles")


def test_directory_is_refused(tmp_path):
    _expect_error(tmp_path, "is a directory")


def test_newer_format_version(saved):
    _rewrite(saved, metadata={"format_version": str(io.FORMAT_VERSION + 1)})
    _expect_error(saved, f"format version {io.FORMAT_VERSION + 1}.*Upgrade xsciml")
    assert io.read_metadata(saved)["format_version"] == io.FORMAT_VERSION + 1


def test_invalid_format_version(saved):
    _rewrite(saved, metadata={"format_version": "one"})
    _expect_error(saved, "invalid format_version")


def test_unknown_class(saved, monkeypatch):
    monkeypatch.delitem(base._REGISTRY, "tests.LinearRegression")
    err = _expect_error(saved, "class 'tests.LinearRegression'")
    assert "tests.Bag" in str(err)  # lists the known names
    assert io.read_metadata(saved)["class"] == "tests.LinearRegression"


def test_rebuild_failure_is_reported(saved):
    tensors = load_file(saved)
    del tensors["linear.bias"]
    meta = _raw_metadata(saved)
    # a consistent file (valid digest) whose state does not fit the class
    meta["sha256"] = io._digest(meta["class"], meta["config"], "[]", tensors)
    save_file(tensors, saved, metadata=meta)
    err = _expect_error(saved, "(?s)Could not rebuild tests.LinearRegression.*bias")
    assert isinstance(err.__cause__, RuntimeError)  # from load_state_dict


# ----------------------------------------------------------------------------------
# registry, repr, provenance
# ----------------------------------------------------------------------------------
def test_registry_lookup_and_errors():
    assert get_estimator_class("tests.LinearRegression") is LinearRegression
    with pytest.raises(KeyError, match="Unknown estimator class 'Nope'.*tests.Bag"):
        get_estimator_class("Nope")
    with pytest.raises(TypeError, match="subclass of xsciml.base.Estimator"):
        register_estimator(dict)


def test_registry_name_clash_and_reregistration(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    class Other(Estimator):
        _registry_name = "tests.Bag"

    with pytest.raises(ValueError, match="already used by .*Bag"):
        register_estimator(Other)
    assert register_estimator(Bag) is Bag  # same class again: fine (reload)

    class Child(Bag):  # does not inherit the parent's registry name
        pass

    register_estimator(Child)
    assert get_estimator_class("Child") is Child
    assert get_estimator_class("tests.Bag") is Bag


def test_repr_summarises_config(fitted):
    est, _, _ = fitted
    assert repr(est) == (
        "LinearRegression(n_features=3, n_targets=2, target_names=['tas', 'pr'], ridge=1e-06)"
    )
    long = Bag({f"k{i}": i for i in range(8)} | {"s": "x" * 100})
    text = repr(long)
    assert text.startswith("Bag(k0=0, k1=1,") and text.endswith("... +3 more)")
    assert repr(Bag({"big": list(range(50)), "d": {"a": 1}})) == (
        "Bag(big=[<50 items>], d={<1 keys>})"
    )

    class Broken(Estimator):
        pass

    assert repr(Broken()) == "Broken()"


def test_provenance(fitted):
    est, _, _ = fitted
    assert est._provenance() == {
        "xsciml_version": base.xsciml_version(),
        "xsciml_model": "LinearRegression",
        "ridge": "1e-06",
    }
    assert all(isinstance(v, str) for v in Bag()._provenance().values())


def test_builtin_estimator_modules_are_imported_on_demand(tmp_path, monkeypatch):
    # ``import xsciml`` does not import the model modules; loading must still find them.
    package = tmp_path / "fake_builtin_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "lazy_model.py").write_text(
        "from xsciml.base import Estimator, register_estimator\n"
        "@register_estimator\n"
        "class LazyModel(Estimator):\n"
        "    _registry_name = 'tests.LazyModel'\n"
        "    def __init__(self, config):\n"
        "        self.config = config\n"
        "    def _get_config(self):\n"
        "        return self.config\n"
        "    def _get_tensors(self):\n"
        "        return {}\n"
        "    @classmethod\n"
        "    def _from_state(cls, config, tensors):\n"
        "        return cls(config)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_BUILTIN_PACKAGES", ("no_such_pkg_xyz", "fake_builtin_pkg"))
    module = importlib.import_module("fake_builtin_pkg.lazy_model")
    path = module.LazyModel({"a": 1}).save(tmp_path / "lazy.xsciml")

    try:
        # a fresh session: the model module was never imported
        del base._REGISTRY["tests.LazyModel"]
        del sys.modules["fake_builtin_pkg.lazy_model"], sys.modules["fake_builtin_pkg"]
        back = io.load(path)
        assert type(back).__name__ == "LazyModel" and back.config == {"a": 1}
        assert "fake_builtin_pkg.lazy_model" in sys.modules
        assert "tests.LazyModel" in base.registered_estimators()
    finally:
        sys.modules.pop("fake_builtin_pkg.lazy_model", None)
        sys.modules.pop("fake_builtin_pkg", None)
