"""Save and load fitted estimators: one safetensors file, no pickle.

File layout
-----------
A model file is a plain `safetensors <https://huggingface.co/docs/safetensors>`_ file
(the ``.xsciml`` suffix is recommended, not enforced). Its tensors are the estimator's
:meth:`~xsciml.base.Estimator._get_tensors`; its string metadata holds

``format``          ``"xsciml"``
``format_version``  integer, currently ``1``
``class``           registry name of the estimator class
``xsciml_version``  version of xsciml that wrote the file
``created``         ISO 8601 time stamp (UTC)
``config``          the estimator's :meth:`~xsciml.base.Estimator._get_config` as JSON
``sha256``          digest of the class name, the config and every tensor's name, dtype,
                    shape and bytes; checked on load so that a corrupted file (a
                    truncated copy, flipped bits, an edit that did not update the
                    digest) is refused. Anyone can recompute it, so it does **not**
                    prove who wrote the file: a deliberate edit that recomputes it passes
``hmac_sha256``     (only for files saved with ``key=``) HMAC-SHA256 of the metadata and
                    every tensor under a secret key; ``load(path, key=...)`` refuses a
                    file whose signature is missing or does not match, so a file edited
                    by someone without the key is refused
``complex``         (only when needed) JSON list of complex tensors, stored as
                    ``torch.view_as_real`` because safetensors lacks some complex dtypes

Loading parses JSON and raw tensor bytes only; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pathlib
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as _st_load_bytes
from safetensors.torch import save as _st_save_bytes
from safetensors.torch import save_file

from ._utils import resolve_device
from .base import Estimator, get_estimator_class, registry_name, xsciml_version

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "ModelFileError",
    "save",
    "load",
    "read_metadata",
    "save_bytes",
    "load_bytes",
]

FORMAT_NAME = "xsciml"
FORMAT_VERSION = 1

_REQUIRED_KEYS = ("class", "config", "sha256")

# First bytes of file types people are likely to pass by mistake.
_MAGIC_HINTS: tuple[tuple[bytes, str], ...] = (
    (b"\x89HDF\r\n\x1a\n", "an HDF5 / netCDF-4 file; open data files with xarray.open_dataset"),
    (b"CDF\x01", "a netCDF-3 file; open data files with xarray.open_dataset"),
    (b"CDF\x02", "a netCDF-3 file; open data files with xarray.open_dataset"),
    (b"CDF\x05", "a netCDF-3 file; open data files with xarray.open_dataset"),
    (b"PK\x03\x04", "a zip archive (torch.save / .npz / zarr zip); xsciml never unpickles"),
    (b"\x80", "a Python pickle; xsciml never unpickles model files"),
)


class ModelFileError(ValueError):
    """A file cannot be read as an xsciml model file.

    Raised for truncated or corrupted files, files that are not safetensors at all,
    safetensors files written by something other than xsciml, files from a newer
    xsciml, unknown estimator classes and digest mismatches. The message names the
    file and what to do.
    """


# ----------------------------------------------------------------------------------
# helpers: paths, config, tensors, digest
# ----------------------------------------------------------------------------------
def _as_path(path: Any, argname: str = "path") -> pathlib.Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argname} must be a str or os.PathLike, got {type(path).__name__}.")
    return pathlib.Path(os.fspath(path)).expanduser()


def _jsonable(value: Any, where: str) -> Any:
    """Validate a config value and return a copy that ``json`` stores losslessly."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(
                    f"{where} has a key {k!r} of type {type(k).__name__}; config keys "
                    "must be str (JSON would silently turn them into strings)."
                )
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    hint = (
        "put arrays in _get_tensors()"
        if isinstance(value, (np.ndarray, torch.Tensor))
        else "convert it to str, int, float, bool, None, list or dict"
    )
    raise TypeError(f"{where} is a {type(value).__name__}, which is not JSON-serialisable; {hint}.")


def _storable(name: str, value: Any, owner: str) -> torch.Tensor:
    """Return an independent, contiguous CPU tensor that safetensors can write."""
    where = f"{owner}._get_tensors()[{name!r}]"
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise TypeError(
                f"{where} is a NumPy array of dtype {value.dtype}; only numeric and bool "
                "arrays can be saved. Keep strings in _get_config() and store times as "
                "ISO strings (config) or int64 (tensors)."
            )
        native = value.dtype.newbyteorder("=")  # netCDF data is often big-endian
        try:
            return torch.from_numpy(np.array(value, dtype=native, order="C", copy=True))
        except TypeError as err:
            raise TypeError(f"{where}: NumPy dtype {value.dtype} has no torch equivalent.") from err
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{where} is a {type(value).__name__}; values must be torch.Tensor or NumPy "
            "arrays (put scalars and strings in _get_config())."
        )
    if value.layout != torch.strided:
        raise TypeError(f"{where} has layout {value.layout}; convert it with .to_dense().")
    if value.device.type == "meta":
        raise TypeError(f"{where} is a meta tensor without data.")
    tensor = value.detach().to("cpu").resolve_conj().resolve_neg()
    return tensor.clone(memory_format=torch.contiguous_format)


def _tensor_digest(h: Any, name: str, tensor: torch.Tensor) -> None:
    nbytes = tensor.numel() * tensor.element_size()
    dtype = str(tensor.dtype).removeprefix("torch.")
    h.update(json.dumps([name, dtype, list(tensor.shape), nbytes]).encode() + b"\n")
    if nbytes:
        h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


#: Tensor name prefixes of the estimators' torch module weights (state_dict entries).
_WEIGHT_PREFIXES = ("module.", "network.", "net.")
_SIGNATURE_KEY = "hmac_sha256"


def _key_bytes(key: Any) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise TypeError(f"key must be a non-empty str or bytes, got {type(key).__name__}.")
    return bytes(key)


def _signature(key: bytes, metadata: Mapping[str, str], tensors: Mapping) -> str:
    """HMAC-SHA256 over every metadata entry (but the signature) and every tensor."""
    h = hmac.new(key, digestmod=hashlib.sha256)
    meta = {k: v for k, v in metadata.items() if k != _SIGNATURE_KEY}
    h.update(json.dumps(meta, sort_keys=True).encode() + b"\n")
    for name in sorted(tensors):
        _tensor_digest(h, name, tensors[name])
    return h.hexdigest()


def _check_signature(key: Any, metadata: Mapping[str, str], tensors: Mapping, path: Any) -> None:
    stored = metadata.get(_SIGNATURE_KEY)
    if not stored:
        raise ModelFileError(
            f"{str(path)!r} is not signed, but a key was given: it was saved without key= "
            "(or its signature was removed). Load only files saved with est.save(path, key=...)."
        )
    if not hmac.compare_digest(_signature(_key_bytes(key), metadata, tensors), str(stored)):
        raise ModelFileError(
            f"{str(path)!r} failed its signature check (HMAC-SHA256 mismatch): the file was "
            "changed after it was signed, or the key is not the one it was signed with. Do not "
            "use it."
        )


def _check_finite_weights(tensors: Mapping[str, torch.Tensor], path: Any) -> None:
    """Refuse NaN/inf in the torch module weights (they would only fail at predict time)."""
    for name in sorted(tensors):
        t = tensors[name]
        if not name.startswith(_WEIGHT_PREFIXES) or not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(torch.view_as_real(t) if t.is_complex() else t)
        if not bool(finite.all()):
            raise ModelFileError(
                f"{str(path)!r} has {int((~finite).sum())} non-finite value(s) (NaN/inf) in the "
                f"weight tensor {name!r}; the model cannot predict. Save a model from a "
                "training run that did not diverge."
            )


def _digest(cls_name: str, config_json: str, complex_json: str, tensors: Mapping) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([cls_name, config_json, complex_json]).encode() + b"\n")
    for name in sorted(tensors):
        _tensor_digest(h, name, tensors[name])
    return h.hexdigest()


# ----------------------------------------------------------------------------------
# reading the container
# ----------------------------------------------------------------------------------
def _check_file(path: pathlib.Path) -> None:
    """Fail early, and clearly, on missing, empty, foreign-format or truncated files."""
    if not path.exists():
        raise FileNotFoundError(f"No model file at {str(path)!r}; check the path.")
    if path.is_dir():
        raise ModelFileError(
            f"{str(path)!r} is a directory; an xsciml model is a single file "
            "(written by est.save('model.xsciml'))."
        )
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(9)
    if size == 0:
        raise ModelFileError(f"{str(path)!r} is empty; save the model again.")
    if len(head) < 9 or head[8:9] != b"{":
        what = next((hint for magic, hint in _MAGIC_HINTS if head.startswith(magic)), None)
        detail = f"it looks like {what}" if what else "it does not start with a safetensors header"
        raise ModelFileError(
            f"{str(path)!r} is not an xsciml model file: {detail}. Model files are "
            "written by est.save(path) and read by xsciml.load(path)."
        )
    header_len = int.from_bytes(head[:8], "little")
    if 8 + header_len > size:
        raise ModelFileError(
            f"{str(path)!r} is truncated: its header announces {header_len} bytes but the "
            f"file has only {size}. The copy or download was probably interrupted; copy "
            "or save the model again."
        )


def read_header(path: pathlib.Path) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Return ``(metadata, {name: {"dtype", "shape"}})`` without reading tensor data."""
    _check_file(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata()
            layout = {}
            for name in f.keys():
                piece = f.get_slice(name)
                layout[name] = {"dtype": piece.get_dtype(), "shape": list(piece.get_shape())}
    except SafetensorError as err:
        raise ModelFileError(
            f"{str(path)!r} is truncated or corrupted ({err}); copy or save the model again."
        ) from err
    if not metadata or metadata.get("format") != FORMAT_NAME:
        keys = sorted(metadata) if metadata else []
        raise ModelFileError(
            f"{str(path)!r} is a safetensors file without xsciml metadata (metadata keys: "
            f"{keys}); it was not written by xsciml. Read raw tensors with "
            "safetensors.torch.load_file, or save estimators with est.save(path)."
        )
    return metadata, layout


def _require(metadata: Mapping[str, str], keys: tuple[str, ...], path: pathlib.Path) -> None:
    missing = [k for k in keys if k not in metadata]
    if missing:
        raise ModelFileError(
            f"{str(path)!r} has xsciml metadata without {missing}; the file is corrupted "
            "or was edited. Save the model again."
        )


def _format_version(metadata: Mapping[str, str], path: pathlib.Path) -> int:
    _require(metadata, ("format_version",), path)
    raw = metadata["format_version"]
    try:
        version = int(raw)
    except ValueError:
        version = 0
    if version < 1:
        raise ModelFileError(
            f"{str(path)!r} has an invalid format_version {raw!r}; the file is corrupted."
        )
    return version


def _parse_json(text: str, key: str, kind: type, path: pathlib.Path) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelFileError(
            f"{str(path)!r} has unreadable {key!r} metadata ({err}); the file is corrupted."
        ) from err
    if not isinstance(value, kind):
        raise ModelFileError(
            f"{str(path)!r}: {key!r} metadata is a {type(value).__name__}, expected "
            f"{kind.__name__}; the file is corrupted."
        )
    return value


def _serialise(estimator: Estimator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and string metadata of a model file (shared by save and save_bytes)."""
    if not isinstance(estimator, Estimator):
        raise TypeError(f"estimator must be an xsciml Estimator, got {type(estimator).__name__}.")
    cls = type(estimator)
    owner = cls.__name__
    cls_name = registry_name(cls)
    try:
        registered = get_estimator_class(cls_name)
    except KeyError:
        registered = None
    if registered is not cls:
        raise ValueError(
            f"{cls.__module__}.{cls.__qualname__} is not registered, so it could not be "
            "loaded back; decorate the class with @xsciml.base.register_estimator."
        )

    config = estimator._get_config()
    if not isinstance(config, Mapping):
        raise TypeError(f"{owner}._get_config() must return a dict, got {type(config).__name__}.")
    config_json = json.dumps(_jsonable(config, f"{owner}._get_config()"), allow_nan=True)

    raw = estimator._get_tensors()
    if not isinstance(raw, Mapping):
        raise TypeError(f"{owner}._get_tensors() must return a dict, got {type(raw).__name__}.")
    tensors: dict[str, torch.Tensor] = {}
    complex_names: list[str] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise TypeError(
                f"{owner}._get_tensors() has an invalid key {name!r}; keys must be "
                "non-empty str other than '__metadata__'."
            )
        tensor = _storable(name, value, owner)
        if tensor.is_complex():
            complex_names.append(name)
            tensor = torch.view_as_real(tensor).clone()
        tensors[name] = tensor
    complex_json = json.dumps(sorted(complex_names))

    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "class": cls_name,
        "xsciml_version": xsciml_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config_json,
        "sha256": _digest(cls_name, config_json, complex_json, tensors),
    }
    if complex_names:
        metadata["complex"] = complex_json

    return tensors, metadata


# ----------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------
def save(
    estimator: Estimator, path: str | os.PathLike[str], *, overwrite: bool = True,
    key: str | bytes | None = None,
) -> pathlib.Path:
    """Save a fitted estimator to a single safetensors file.

    The file is written to a temporary name next to ``path`` and moved into place, so
    an interrupted save never leaves a half-written model behind.

    Parameters
    ----------
    estimator : Estimator
        A fitted estimator whose class is decorated with
        :func:`~xsciml.base.register_estimator`.
    path : str or os.PathLike
        Destination file. The suffix ``.xsciml`` is recommended; the parent directory
        must exist.
    overwrite : bool, default True
        If False, raise :class:`FileExistsError` when ``path`` exists.
    key : str or bytes, optional
        Secret key: the file is signed with HMAC-SHA256 (metadata and every tensor), and
        ``load(path, key=key)`` refuses it if anything was changed. Without a key the
        file only carries its SHA-256 digest, which detects corruption but not a
        deliberate edit (anyone can recompute it).

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If ``estimator`` is not an :class:`~xsciml.base.Estimator`, or its config or
        tensors cannot be stored (the message names the offending entry).
    ValueError
        If the estimator's class is not registered.
    FileExistsError
        If ``path`` exists and ``overwrite=False``.
    FileNotFoundError
        If the parent directory of ``path`` does not exist.

    Examples
    --------
    >>> import xsciml
    >>> path = xsciml.io.save(est, "model.xsciml")  # doctest: +SKIP
    >>> xsciml.io.read_metadata(path)["class"]  # doctest: +SKIP
    'NeuralField'
    """
    tensors, metadata = _serialise(estimator)
    if key is not None:
        metadata[_SIGNATURE_KEY] = _signature(_key_bytes(key), metadata, tensors)
    path = _as_path(path)

    if path.is_dir():
        raise IsADirectoryError(
            f"path {str(path)!r} is a directory; give a file name such as "
            f"{str(path / 'model.xsciml')!r}."
        )
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{str(path)!r} already exists; pass overwrite=True to replace it or choose "
            "another path."
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"Cannot save to {str(path)!r}: directory {str(path.parent)!r} does not exist; "
            "create it first."
        )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
         key: str | bytes | None = None) -> Estimator:
    """Load an estimator saved with :func:`save` (or ``est.save``).

    Only JSON and raw tensor bytes are read; nothing is unpickled. The stored digest
    is checked before the estimator is rebuilt: it catches corruption, not a
    deliberate edit that recomputes it. To refuse edited files, save with ``key=``
    and load with the same ``key``. Weights with NaN/inf values are refused.

    Parameters
    ----------
    path : str or os.PathLike
        Model file.
    device : str or torch.device, default "cpu"
        Device the tensors are moved to before the estimator is rebuilt; ``"auto"``
        picks CUDA when available.
    key : str or bytes, optional
        The key the file was signed with (``save(..., key=...)``): the file must carry
        a matching HMAC-SHA256 signature.

    Returns
    -------
    Estimator
        An instance of the class named in the file.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        If the file is not an xsciml model file, is truncated or corrupted (digest
        mismatch), has non-finite weights, comes from a newer xsciml, names an
        unknown class, or its state cannot be rebuilt; with ``key``, also when the
        file is unsigned or its signature does not match.

    Examples
    --------
    >>> import xsciml
    >>> est = xsciml.load("model.xsciml", device="auto")  # doctest: +SKIP
    """
    path = _as_path(path)
    target = resolve_device(device)
    metadata, _ = read_header(path)

    def read_tensors() -> dict[str, torch.Tensor]:
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                return {name: f.get_tensor(name) for name in f.keys()}
        except SafetensorError as err:
            raise ModelFileError(
                f"{str(path)!r} is truncated or corrupted ({err}); copy or save the model again."
            ) from err

    return _rebuild(metadata, read_tensors, path, target, key=key)


def _rebuild(metadata: Mapping[str, str], read_tensors: Any, path: Any,
             target: torch.device, key: str | bytes | None = None) -> Estimator:
    """Check a model's metadata, read its tensors and rebuild the estimator.

    Shared by :func:`load` and :func:`load_bytes`; ``path`` only names the source in
    error messages.
    """
    version = _format_version(metadata, path)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} uses xsciml model format version {version}, but this xsciml "
            f"({xsciml_version()}) reads up to version {FORMAT_VERSION}; it was written by "
            f"xsciml {metadata.get('xsciml_version', '?')}. Upgrade xsciml to load it."
        )
    _require(metadata, _REQUIRED_KEYS, path)
    config = _parse_json(metadata["config"], "config", dict, path)
    complex_json = metadata.get("complex", "[]")
    complex_names = _parse_json(complex_json, "complex", list, path)

    tensors = read_tensors()

    cls_name = metadata["class"]
    if _digest(cls_name, metadata["config"], complex_json, tensors) != metadata["sha256"]:
        raise ModelFileError(
            f"{str(path)!r} failed its integrity check (sha256 mismatch): the file is "
            "corrupted or was edited. Do not use it; save or copy the model again."
        )
    if key is not None:
        _check_signature(key, metadata, tensors, path)
    _check_finite_weights(tensors, path)
    try:
        cls = get_estimator_class(cls_name)
    except KeyError as err:
        raise ModelFileError(
            f"{str(path)!r} holds an estimator of class {cls_name!r}: {err.args[0]}"
        ) from None

    for name in complex_names:
        tensor = tensors.get(name)
        if tensor is None or not tensor.is_floating_point() or tensor.shape[-1:] != (2,):
            raise ModelFileError(
                f"{str(path)!r} lists {name!r} as complex but has no matching tensor; "
                "the file is corrupted."
            )
        tensors[name] = torch.view_as_complex(tensor)
    tensors = {name: t.to(target) for name, t in tensors.items()}

    try:
        estimator = cls._from_state(config, tensors)
    except NotImplementedError:
        raise
    except Exception as err:
        raise ModelFileError(
            f"Could not rebuild {cls_name} from {str(path)!r} (written by xsciml "
            f"{metadata.get('xsciml_version', '?')}, this is xsciml {xsciml_version()}): "
            f"{type(err).__name__}: {err}"
        ) from err
    if not isinstance(estimator, cls):
        raise TypeError(
            f"{cls.__qualname__}._from_state returned a {type(estimator).__name__}, "
            f"not a {cls.__name__}."
        )
    return estimator


def save_bytes(estimator: Estimator) -> bytes:
    """Serialise a fitted estimator to bytes: the content of the file :func:`save` writes.

    Used to ship a model to Dask workers (see :mod:`xsciml.parallel`) or to keep it in
    a database; :func:`load_bytes` reads it back. No pickle is involved.

    Parameters
    ----------
    estimator : Estimator
        A fitted, registered estimator.

    Returns
    -------
    bytes
        A safetensors container with the xsciml metadata (config JSON, sha256 digest).

    Raises
    ------
    TypeError, ValueError
        As :func:`save`, for estimators that cannot be stored.

    Examples
    --------
    >>> blob = xsciml.io.save_bytes(field)  # doctest: +SKIP
    >>> xsciml.io.load_bytes(blob).variables  # doctest: +SKIP
    ['u']
    """
    tensors, metadata = _serialise(estimator)
    return _st_save_bytes(tensors, metadata=metadata)


_BYTES_LABEL = "<model bytes>"


def header_from_bytes(data: Any) -> dict[str, str]:
    """The xsciml metadata of serialised model bytes (the JSON header only is parsed)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(
            f"data must be bytes (from xsciml.io.save_bytes), got {type(data).__name__}."
        )
    view = memoryview(data)
    size = view.nbytes
    if size < 9 or bytes(view[8:9]) != b"{":
        raise ModelFileError(
            f"{_BYTES_LABEL!r} are not an xsciml model ({size} bytes without a safetensors "
            "header); serialise estimators with xsciml.io.save_bytes."
        )
    header_len = int.from_bytes(bytes(view[:8]), "little")
    if 8 + header_len > size:
        raise ModelFileError(
            f"{_BYTES_LABEL!r} are truncated: the header announces {header_len} bytes but "
            f"only {size} were given."
        )
    try:
        header = json.loads(bytes(view[8:8 + header_len]))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{_BYTES_LABEL!r} have a corrupted header ({err}).") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{_BYTES_LABEL!r} are a safetensors container without xsciml metadata; "
            "serialise estimators with xsciml.io.save_bytes."
        )
    return metadata


def load_bytes(data: bytes, *, device: str | torch.device = "cpu") -> Estimator:
    """Rebuild an estimator from :func:`save_bytes` output (the digest is checked).

    Parameters
    ----------
    data : bytes
        Output of :func:`save_bytes`, or the content of a model file.
    device : str or torch.device, default "cpu"
        Device the tensors are placed on; ``"auto"`` picks CUDA when available.

    Returns
    -------
    Estimator

    Raises
    ------
    TypeError
        If ``data`` is not bytes-like.
    ModelFileError
        If the bytes are not a complete, untampered xsciml model.

    Examples
    --------
    >>> est = xsciml.io.load_bytes(xsciml.io.save_bytes(field))  # doctest: +SKIP
    """
    target = resolve_device(device)
    metadata = header_from_bytes(data)

    def read_tensors() -> dict[str, torch.Tensor]:
        try:
            return _st_load_bytes(bytes(data))
        except SafetensorError as err:
            raise ModelFileError(
                f"{_BYTES_LABEL!r} are truncated or corrupted ({err}); serialise the model again."
            ) from err

    return _rebuild(metadata, read_tensors, _BYTES_LABEL, target)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a model file's header without loading tensors or building the estimator.

    Works for files from newer xsciml versions too, so that their ``format_version``
    can be inspected.

    Parameters
    ----------
    path : str or os.PathLike
        Model file.

    Returns
    -------
    dict
        ``format`` (str), ``format_version`` (int), ``class`` (str),
        ``xsciml_version`` (str), ``created`` (ISO 8601 str), ``config`` (dict) and
        ``tensors``: ``{name: {"dtype": safetensors dtype code, "shape": list}}``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        If the file is not a readable xsciml model file.

    Examples
    --------
    >>> meta = read_metadata("model.xsciml")  # doctest: +SKIP
    >>> meta["class"], meta["config"]["latent_dim"]  # doctest: +SKIP
    ('LatentInterpolator', 32)
    """
    path = _as_path(path)
    metadata, layout = read_header(path)
    version = _format_version(metadata, path)
    _require(metadata, ("class", "config"), path)
    return {
        "format": metadata["format"],
        "format_version": version,
        "class": metadata["class"],
        "xsciml_version": metadata.get("xsciml_version", "unknown"),
        "created": metadata.get("created", "unknown"),
        "config": _parse_json(metadata["config"], "config", dict, path),
        "tensors": layout,
    }
