r"""Latent interpolators (auto-decoders): one latent code per snapshot.

Model, for snapshots :math:`s = 1..S` observed at points :math:`x_{sn}`:

.. math::

    z_s \sim \mathcal N(0, I), \qquad
    y_{sn} \mid z_s \sim \mathcal N\big(f_\theta(x_{sn}[, t_{sn}], z_s), \sigma^2\big),

with a neural-field decoder :math:`f_\theta` conditioned on :math:`z` (shift modulation
for SIREN / FourierNet, concatenation for MLP / grid networks). Training maximises the
ELBO with a diagonal Gaussian :math:`q_\phi(z_s) = \mathcal N(\mu_s, \mathrm{diag}\,
s_s^2)` per snapshot (``variational=True``), or the MAP objective of an auto-decoder
(``variational=False``). New snapshots are *encoded* by optimising their codes with
:math:`\theta` frozen, from whatever points they have — any subset of the grid, another
grid — batched over all snapshots at once.

The default decoder, ``network="basis"`` (:class:`~xsciml.nn.basis.BasisField`),
contains the linear model: :math:`f(x, z) = m(x) + B(x) z + r(x, z)` with :math:`m`,
:math:`B` interpolated from grid nodes and a small residual MLP :math:`r` that starts at
zero. With ``init="pca"`` it starts as probabilistic PCA of the training snapshots
(:math:`B = V_k (\Lambda_k - \sigma^2)^{1/2}`, codes the posterior means), the noise
:math:`\sigma^2` estimated out of sample (``noise="cv"``: mean squared residual of
held-out blocks of snapshots projected on the EOFs of the others). The linear part
then encodes partial snapshots in closed form (the MAP / exact Gaussian posterior).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import xarray as xr
from torch import nn

from .._docs import shared_docs
from .._grid import json_attrs
from .._utils import check_positive_int
from ..base import Estimator, output_attrs, register_estimator
from ..coords import CoordinateEncoder
from ..eofs import eof_decomposition, out_of_sample_noise
from ..tensors import Scaler, check_target_domain, target_points, to_tensors
from ..training import History, TrainState
from ..units import clip_to_physical_bounds
from ._snapshot_validation import (
    MAX_SNAPSHOTS,
    MIN_SNAPSHOTS,
    SnapshotValidation,
    rank_cap,
    reference_entries,
    validation_lines,
    warn_if_worse,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..nn.basis import BasisField
    from ..nn.layers import CoordinateNetwork

__all__ = ["LatentInterpolator", "fit_latent", "LatentModule"]


class LatentModule(nn.Module):
    """Decoder network, per-snapshot variational parameters and the noise scale."""

    def __init__(self, network: nn.Module, n_samples: int, latent_dim: int, n_outputs: int,
                 variational: bool, init_std: float = 0.3) -> None:
        super().__init__()
        self.network = network
        self.latent_dim = latent_dim
        self.variational = variational
        self.z_mean = nn.Parameter(torch.zeros(n_samples, latent_dim))
        self.z_log_std = nn.Parameter(torch.full((n_samples, latent_dim), math.log(init_std)),
                                      requires_grad=variational)
        self.log_sigma = nn.Parameter(torch.zeros(n_outputs))

    def codes(self, idx: torch.Tensor, sample: bool) -> torch.Tensor:
        mu = self.z_mean[idx]
        if sample and self.variational:
            return mu + self.z_log_std[idx].exp() * torch.randn_like(mu)
        return mu

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.network(features, z)

    def kl(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Σ over snapshots (and latent dims) of KL(q(z_s) ‖ N(0, I))."""
        mu = self.z_mean if idx is None else self.z_mean[idx]
        ls = self.z_log_std if idx is None else self.z_log_std[idx]
        q = torch.distributions.Normal(mu, ls.exp())
        p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
        return torch.distributions.kl_divergence(q, p).sum()


def _encode_kernel(model: LatentInterpolator, *blocks: np.ndarray, device: Any, names: list[str],
                   sample_dim: str, core: list[Hashable], coords: dict[str, tuple],
                   time: str | None, encode_kw: dict[str, Any]) -> Any:
    """Dask task body of a lazy encode: snapshots ``[S, *core]`` -> codes ``[S, latent]``."""
    times = blocks[-1] if time is not None else None
    blocks = blocks[:-1] if time is not None else blocks
    units = {n: {"units": u} for n in names  # already in these (converted by encode)
             if (u := model.var_attrs.get(n, {}).get("units")) is not None}
    ds = xr.Dataset({n: ((sample_dim, *core), np.asarray(b), units.get(n, {}))
                     for n, b in zip(names, blocks, strict=True)},
                    coords={k: (dims, v) for k, (dims, v) in coords.items()})
    if times is not None:
        ds = ds.assign_coords({time: (sample_dim, np.asarray(times))})
    n_out = 2 if model.variational else 1
    if ds.sizes[sample_dim] == 0:
        empty = np.zeros((0, model.latent_dim), np.float32)
        return (empty, empty) if n_out == 2 else empty
    with torch.inference_mode(False), torch.enable_grad():
        res = model.encode(ds, device=device, progress=False, **encode_kw)
    if n_out == 1:
        assert isinstance(res, xr.DataArray)  # the codes alone when not variational
        return res.values.astype(np.float32)
    return res["z"].values.astype(np.float32), res["z_std"].values.astype(np.float32)


def _snapshot_points(obj, variables, sample_dim, space, time, encoder=None, **kw):
    """Coordinate tensors plus, per point, the index of its snapshot along ``sample_dim``."""
    data = to_tensors(obj, variables, space=space, time=time, encoder=encoder, **kw)
    if sample_dim not in data.dims:
        raise KeyError(f"sample_dim {sample_dim!r} is not a dimension of {data.variables}; dims are {data.dims}")
    flat = data.layout.valid
    idx = np.unravel_index(flat, data.shape)[data.dims.index(sample_dim)]
    return data, torch.as_tensor(idx, dtype=torch.long)


def _build_network(config: Any, **kwargs: Any) -> nn.Module:
    """:func:`xsciml.nn.build_network`, plus the ``"basis"`` decoder."""
    from ..nn import build_network
    from ..nn.basis import BasisField

    kind = config.get("kind") if isinstance(config, dict) else config
    if isinstance(kind, str) and kind.lower() == "basis":
        params = dict(config) if isinstance(config, dict) else {}
        params.pop("kind", None)
        params.update(kwargs)
        return BasisField(**params)
    return build_network(config, **kwargs)


def _is_linear(net: nn.Module) -> bool:
    """Whether ``net`` is a :class:`BasisField` whose output is exactly ``m + B z``."""
    from ..nn.basis import BasisField

    if not isinstance(net, BasisField):
        return False
    if not net.has_residual:
        return True
    return bool((net.res_out.weight == 0).all() and (net.res_out.bias == 0).all())


def _linear_posterior(net: BasisField, features: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                      n_samples: int, sigma: torch.Tensor, budget: int = 2**24
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Closed-form Gaussian posterior of the codes under the linear part of a basis decoder.

    For snapshot :math:`s` with points :math:`n`: :math:`y_{sn} = m(x_n) + B(x_n) z_s +
    \varepsilon`, :math:`z_s \sim \mathcal N(0, I)`, :math:`\varepsilon \sim \mathcal
    N(0, \sigma^2)`, so :math:`z_s \mid y \sim \mathcal N(A_s^{-1} b_s, A_s^{-1})` with
    :math:`A_s = I + \sum_n B_n^\top B_n / \sigma^2` and :math:`b_s = \sum_n B_n^\top
    (y_{sn} - m_n) / \sigma^2`. Snapshots are processed in chunks (points padded to the
    largest snapshot of the chunk, at most ``budget`` floats of basis values at a time),
    each chunk with one batched Cholesky solve. Returns the posterior means and standard
    deviations ``[n_samples, k]``.
    """
    k = net.code_dim
    order = torch.argsort(idx, stable=True)
    counts = torch.bincount(idx, minlength=n_samples)
    starts = torch.cumsum(counts, 0) - counts
    mean = features.new_zeros(n_samples, k)
    std = features.new_zeros(n_samples, k)
    s0 = 0
    while s0 < n_samples:
        s1 = s0 + 1  # grow the chunk while the padded basis values fit the budget
        while s1 < n_samples and (s1 + 1 - s0) * int(counts[s0:s1 + 1].max()) * y.shape[1] * k <= budget:
            s1 += 1
        sel = order[int(starts[s0]):int(starts[s1 - 1] + counts[s1 - 1])]
        m, B = net.linear_terms(features[sel])
        Bw = B / sigma[:, None]
        rw = (y[sel] - m) / sigma
        local = idx[sel] - s0
        pos = torch.arange(len(sel), device=sel.device) - (starts[s0:s1] - starts[s0])[local]
        n_max = int(counts[s0:s1].max())
        P = Bw.new_zeros(s1 - s0, n_max, y.shape[1], k)
        R = rw.new_zeros(s1 - s0, n_max, y.shape[1])
        P[local, pos] = Bw
        R[local, pos] = rw
        P = P.flatten(1, 2).double()  # float64: with a small noise A is badly conditioned
        A = P.transpose(1, 2) @ P + torch.eye(k, dtype=P.dtype, device=P.device)
        b = (P.transpose(1, 2) @ R.flatten(1, 2).double().unsqueeze(-1))
        L = torch.linalg.cholesky(A)
        mean[s0:s1] = torch.cholesky_solve(b, L).squeeze(-1).to(mean.dtype)
        std[s0:s1] = torch.cholesky_inverse(L).diagonal(dim1=-2, dim2=-1).sqrt().to(std.dtype)
        s0 = s1
    return mean, std


@register_estimator
class LatentInterpolator(Estimator):
    """A fitted latent interpolator: decoder :math:`f_\\theta(x, z)` and prior N(0, I).

    Built by :func:`fit_latent` (``ds.sciml.fit_latent``).
    """

    def __init__(self, network: nn.Module, encoder: CoordinateEncoder, scaler: Scaler,
                 variables: list[str], sample_dim: Hashable, latent_dim: int, variational: bool,
                 log_sigma: torch.Tensor, train_codes: torch.Tensor, train_code_std: torch.Tensor,
                 var_attrs: dict | None = None, info: dict | None = None) -> None:
        self.network = network
        self.encoder = encoder
        self.scaler = scaler
        self.variables = list(variables)
        self.sample_dim = sample_dim
        self.latent_dim = int(latent_dim)
        self.variational = bool(variational)
        self.log_sigma = log_sigma
        self.train_codes = train_codes
        self.train_code_std = train_code_std
        self.var_attrs = var_attrs or {}
        self.info = info or {}
        # the training loop's (empty after loading: not saved; None after a fit without training steps)
        self.history: History = History()

    # ------------------------------------------------------------------ persistence
    def _get_config(self) -> dict[str, Any]:
        # the decoder is built from a kind name or config (_build_network): a CoordinateNetwork
        return {"network": cast("CoordinateNetwork", self.network).config(), "encoder": self.encoder.to_dict(),
                "scaler": self.scaler.to_dict(), "variables": self.variables,
                "sample_dim": str(self.sample_dim), "latent_dim": self.latent_dim,
                "variational": self.variational,
                "var_attrs": {v: json_attrs(a) for v, a in self.var_attrs.items()},
                "info": self.info}

    def _get_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"network.{k}": v for k, v in self.network.state_dict().items()}
        out.update(log_sigma=self.log_sigma, train_codes=self.train_codes,
                   train_code_std=self.train_code_std)
        return out

    @classmethod
    def _from_state(cls, config: dict, tensors: dict[str, torch.Tensor]) -> LatentInterpolator:
        net = _build_network(config["network"])
        net.load_state_dict({k[len("network."):]: v for k, v in tensors.items() if k.startswith("network.")})
        return cls(net, CoordinateEncoder.from_dict(config["encoder"]), Scaler.from_dict(config["scaler"]),
                   config["variables"], config["sample_dim"], config["latent_dim"], config["variational"],
                   tensors["log_sigma"], tensors["train_codes"], tensors["train_code_std"],
                   config.get("var_attrs"), config.get("info"))

    def _provenance_extra(self) -> dict[str, Any]:
        return {"xsciml_network": self.info.get("network", ""), "xsciml_latent_dim": self.latent_dim}

    # ------------------------------------------------------------------ encode
    @property
    def codes(self) -> xr.DataArray:
        """Posterior means of the training snapshots' codes ``(sample_dim, latent)``."""
        coords = self.info.get("sample_coords")
        da = xr.DataArray(self.train_codes.numpy(), dims=(self.sample_dim, "latent"), name="z")
        if coords is not None and len(coords) == da.shape[0]:
            da = da.assign_coords({self.sample_dim: np.asarray(coords)})
        return da

    def encode(self, obj: xr.Dataset | xr.DataArray, *, steps: int = 300, lr: float = 0.05,
               device: Any = "auto", seed: int | None = 0, progress: bool | None = None
               ) -> xr.DataArray | xr.Dataset:
        """Infer codes for (new) snapshots from whatever points they have.

        All snapshots are encoded together: their codes (and, when variational, their
        posterior std) are optimised by Adam on the ELBO (or MAP objective) with the
        decoder frozen — one batched optimisation, no loop over snapshots. With the
        ``"basis"`` decoder the linear part gives the exact Gaussian posterior in closed
        form (batched Cholesky solves); Adam then refines it only when the decoder has
        a trained (non-zero) residual.

        Parameters
        ----------
        obj
            Snapshots along ``sample_dim``, on the training grid, a subset of it (NaN
            elsewhere), or another grid / scattered points with the same coordinate names.
        steps
            Adam steps of the code optimisation.
        lr
            Learning rate of the code optimisation.
        device
            Where to run.
        seed
            Seed of the ELBO's noise draws.
        progress
            Show a progress bar (``None``: as the fit did, then the ``XSCIML_PROGRESS``
            environment variable).

        Returns
        -------
        DataArray ``z (sample_dim, latent)`` — or, when variational, a Dataset with the
        posterior mean ``z`` and standard deviation ``z_std``. Dask-backed gridded
        snapshots give a lazy result, one task per chunk of ``sample_dim`` (the other
        dims must be whole chunks); the chunks are encoded independently, which equals
        the eager codes for the closed-form (linear basis) and MAP encodes, and draws other
        noise for the variational refinement.
        """
        from .._utils import progress_bar, resolve_device, seed_everything

        ds_in = obj if isinstance(obj, xr.Dataset) else obj.to_dataset(
            name=obj.name if obj.name is not None else self.variables[0])
        from ..units import check_dataset_units

        obj = ds_in = check_dataset_units(ds_in, self.var_attrs, self.variables)
        if any(v in ds_in and ds_in[v].chunks is not None for v in self.variables):
            return self._encode_lazy(ds_in, steps=steps, lr=lr, device=device, seed=seed)

        data, idx = _snapshot_points(obj, self.variables, self.sample_dim, self.encoder.space,
                                     self.encoder.time, encoder=self.encoder)
        ds_obj = obj if isinstance(obj, xr.Dataset) else obj.to_dataset(name=self.variables[0])
        S = int(ds_obj.sizes[self.sample_dim])
        present = torch.bincount(idx, minlength=S)
        if (present == 0).any():
            empty = np.flatnonzero(present.numpy() == 0)[:5].tolist()
            raise ValueError(f"snapshot(s) {empty} along {self.sample_dim!r} have no valid point; "
                             "drop them before encoding")
        seed_everything(seed)
        dev = resolve_device(device)
        net = self.network.to(dev).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        f = data.features.to(dev)
        y = torch.as_tensor(self.scaler.transform(data.y.double().numpy()), dtype=torch.float32, device=dev)
        idx = idx.to(dev)
        sigma = self.log_sigma.to(dev).exp()
        linear = _is_linear(net)
        # the decoders with a linear part are BasisFields
        basis_net = cast("BasisField", net) if hasattr(net, "linear_terms") else None
        if basis_net is not None:
            with torch.no_grad():
                mu0, std0 = _linear_posterior(basis_net, f, y, idx, S, sigma)
            if linear:
                steps = 0  # the closed form is the exact posterior / MAP
        else:
            mu0 = torch.zeros(S, self.latent_dim, device=dev)
            std0 = torch.full((S, self.latent_dim), 0.3, device=dev)
        mu = mu0.clone().requires_grad_(True)
        log_s = std0.log().requires_grad_(self.variational)
        params = [mu, log_s] if self.variational else [mu]
        opt = torch.optim.Adam(params, lr=lr)
        n = float(len(y))
        decoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = net
        if steps and basis_net is not None and len(f) * basis_net.out_features * basis_net.code_dim <= 2**26:
            with torch.no_grad():  # θ is frozen: the linear terms at the points are fixed
                m_pts, B_pts = basis_net.linear_terms(f)

            def decoder(feats: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
                lin = m_pts + torch.einsum("nok,nk->no", B_pts, z)
                return lin + basis_net.residual(feats, z)
        for _ in progress_bar(range(steps), desc="encode", progress=self._progress(progress)):
            z = mu[idx]
            if self.variational:
                z = z + log_s.exp()[idx] * torch.randn_like(z)
            out = decoder(f, z)
            nll = -torch.distributions.Normal(out, sigma).log_prob(y).sum()
            if self.variational:
                q = torch.distributions.Normal(mu, log_s.exp())
                prior = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum()
            else:
                prior = 0.5 * mu.pow(2).sum()
            loss = (nll + prior) / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for p in net.parameters():
            p.requires_grad_(True)
        coords = {self.sample_dim: ds_obj[self.sample_dim].values} if self.sample_dim in ds_obj.coords else {}
        zda = xr.DataArray(mu.detach().cpu().numpy(), dims=(self.sample_dim, "latent"), coords=coords, name="z")
        if not self.variational:
            return zda
        sda = xr.DataArray(log_s.detach().exp().cpu().numpy(), dims=(self.sample_dim, "latent"),
                           coords=coords, name="z_std")
        return xr.Dataset({"z": zda, "z_std": sda})

    def _encode_lazy(self, ds: xr.Dataset, **kw: Any) -> xr.DataArray | xr.Dataset:
        """Per-chunk encode of dask-backed snapshots (through ``parallel.apply_model``)."""
        from ..parallel import apply_model

        missing = [v for v in self.variables if v not in ds.data_vars]
        if missing:
            raise KeyError(f"variable(s) {missing} not found; the model was trained on {self.variables}")
        v0 = ds[self.variables[0]]
        if self.sample_dim not in v0.dims:
            raise KeyError(f"sample_dim {self.sample_dim!r} is not a dimension of {self.variables[0]!r} "
                           f"{v0.dims}")
        core = [d for d in v0.dims if d != self.sample_dim]
        das = [ds[v].transpose(self.sample_dim, *core) for v in self.variables]
        coords = {k: (tuple(c.dims), np.asarray(c.values)) for k, c in ds.coords.items()
                  if c.dims and set(c.dims) <= set(core)}
        inputs, in_core = list(das), [core] * len(das)
        tname = self.encoder.time
        with_time = bool(tname) and tname in ds.coords and ds[tname].dims == (self.sample_dim,)
        if with_time:
            t = ds[tname]
            inputs.append(t.chunk({self.sample_dim: das[0].chunksizes[self.sample_dim]})
                          if das[0].chunks is not None else t)
            in_core.append([])
        n_out = 2 if self.variational else 1
        out = apply_model(
            _encode_kernel, self, *inputs, input_core_dims=in_core,
            output_core_dims=[["latent"]] * n_out, output_dtypes=[np.float32] * n_out,
            output_sizes={"latent": self.latent_dim}, device=kw.pop("device", "auto"),
            kwargs={"names": list(self.variables), "sample_dim": self.sample_dim, "core": core,
                    "coords": coords, "time": tname if with_time else None, "encode_kw": kw},
        )
        outs = list(out) if isinstance(out, tuple) else [out]
        keep = {self.sample_dim: ds[self.sample_dim]} if self.sample_dim in ds.coords else {}
        outs = [o.assign_coords(keep) for o in outs]
        z = outs[0].rename("z")
        if not self.variational:
            return z
        return xr.Dataset({"z": z, "z_std": outs[1].rename("z_std")})

    # ------------------------------------------------------------------ decode
    def decode(self, z: Any, target: Any, *, time: Any = None, batch_size: int = 2**18,
               device: Any = "auto", check_domain: bool = True) -> xr.DataArray | xr.Dataset:
        """Decode codes to fields on any target coordinates.

        Parameters
        ----------
        z
            DataArray ``(sample_dim, latent)`` (or a Dataset with ``z``), or an array
            ``[S, latent_dim]``.
        target
            Where to evaluate: a Dataset/DataArray (its space coordinates), a dict of 1-D
            coordinates, or a DataFrame of points (see :func:`~xsciml.tensors.target_points`).
        time
            Time value(s) when the decoder takes time and the target has none.
        batch_size
            Points x codes per forward pass (bounds memory).
        device
            ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``...
        check_domain
            Warn (``UserWarning``) when target coordinates or times lie outside the
            training range; ``False`` silences it. Latitudes beyond ±90° are refused.

        Returns
        -------
        The field with a leading ``sample_dim``: a DataArray for one variable, else a Dataset.
        Lazy when ``z`` or ``target`` is dask-backed: one task per (chunk of codes) x
        (chunk of the target), the decoder sent to each worker once
        (:mod:`xsciml.parallel`).

        Examples
        --------
        >>> filled = li.decode(li.encode(partial), target_grid)  # doctest: +SKIP
        >>> lazy = li.decode(z.chunk({"time": 100}), xr.open_zarr("grid.zarr"))  # doctest: +SKIP
        """
        from .._utils import resolve_device

        if isinstance(z, xr.Dataset):
            z = z["z"]
        sample_coords = None
        dim = self.sample_dim
        if isinstance(z, xr.DataArray):
            if z.ndim != 2:
                raise ValueError(f"z must be 2-D (samples, latent), got dims {z.dims}")
            dim = z.dims[0]
            sample_coords = z[dim].values if dim in z.coords else None
            z = z.data
        if check_domain:
            check_target_domain(self.encoder, target, time=time, where="decode")
        lazy = self._decode_lazy(z, target, dim, sample_coords, time=time, batch_size=batch_size,
                                 device=device)
        if lazy is not None:
            return lazy
        zt = torch.as_tensor(np.asarray(z), dtype=torch.float32)
        if zt.ndim != 2 or zt.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [S, {self.latent_dim}], got {tuple(zt.shape)}")
        if isinstance(target, xr.Dataset) and dim in target.dims:
            target = target.isel({dim: 0}, drop=True)
        elif isinstance(target, xr.DataArray) and dim in target.dims:
            target = target.isel({dim: 0}, drop=True)
        tp = target_points(self.encoder, target, time=time)
        dev = resolve_device(device)
        net = self.network.to(dev).eval()
        S, P = zt.shape[0], len(tp.features)
        out = torch.empty(S, P, len(self.variables))
        per = max(1, batch_size // max(P, 1))
        with torch.inference_mode():
            feats = tp.features.to(dev)
            for i in range(0, S, per):
                zz = zt[i:i + per].to(dev)
                res = net(feats.unsqueeze(0).expand(len(zz), -1, -1), zz.unsqueeze(1))
                out[i:i + per] = res.float().cpu()
        phys = self.scaler.inverse(out)
        lc = {dim: sample_coords} if sample_coords is not None else {dim: np.arange(S)}
        das = {v: tp.to_dataarray(phys[..., j], name=v, attrs=output_attrs(self.var_attrs.get(v), name=v),
                                  leading_dims=(dim,), leading_coords=lc)
               for j, v in enumerate(self.variables)}
        return self._labeled(das)

    def _labeled(self, das: dict[str, xr.DataArray]) -> xr.DataArray | xr.Dataset:
        """One DataArray (one variable) or a Dataset, with provenance attrs; a bounded
        variable (:func:`xsciml.units.physical_bounds`) clipped to its range."""
        das = {v: clip_to_physical_bounds(da, self.var_attrs.get(v, {})) for v, da in das.items()}
        source = next((a for v in self.variables if (a := self.var_attrs.get(v, {})).get("history")),
                      None)
        provenance = self._provenance(f"decode: {', '.join(self.variables)} decoded from latent "
                                      "codes", source)
        if len(das) == 1:
            da = next(iter(das.values()))
            da.attrs = {**da.attrs, **provenance}
            return da
        return xr.Dataset(das, attrs=provenance)

    def _decode_lazy(self, z: Any, target: Any, dim: Hashable, sample_coords: Any, *, time: Any,
                     batch_size: int, device: Any) -> xr.DataArray | xr.Dataset | None:
        """Decode per chunk when ``z`` or ``target`` is dask-backed, else ``None``."""
        import dask.array as dsa

        from ..parallel import blockwise_model, is_dask_backed, target_blocks

        z_lazy = isinstance(z, dsa.Array)
        if not (z_lazy or is_dask_backed(target)):
            return None
        if not z_lazy:
            from .._utils import to_numpy

            z = to_numpy(z)
        names = list(self.encoder.space) + ([self.encoder.time] if self.encoder.time else [])
        blocks = target_blocks(target, names, time_name=self.encoder.time, time=time, force=True,
                               exclude_dims=(dim,))
        if blocks is None:
            return None  # the eager path raises its clear error
        batch_size = check_positive_int(batch_size, "batch_size")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [S, {self.latent_dim}], got {tuple(z.shape)}")
        zd = z.rechunk({1: -1}) if z_lazy else dsa.from_array(np.asarray(z), chunks=-1)
        S = int(zd.shape[0])
        index = {d: chr(ord("a") + i) for i, d in enumerate(blocks.dims)}
        out_ind = "".join(index[d] for d in blocks.dims)
        nv = len(self.variables)
        arr = blockwise_model(_decode_block, self, "S" + out_ind + "V", zd, "SL",
                              *blocks.argpairs(index), dtype=np.float32, new_axes={"V": nv},
                              device=device, name="xsciml-decode", batch_size=int(batch_size),
                              **blocks.layout())
        coords = dict(blocks.coords)
        coords[dim] = xr.Variable((dim,), sample_coords if sample_coords is not None else np.arange(S))
        dims = (dim,) + blocks.dims
        das = {v: xr.DataArray(arr[..., j], dims=dims, coords=coords, name=v,
                               attrs=output_attrs(self.var_attrs.get(v), name=v))
               for j, v in enumerate(self.variables)}
        return self._labeled(das)

    def sample(self, n: int, target: Any = None, *, seed: int | None = 0, **kw: Any) -> xr.DataArray | xr.Dataset:
        """Draw ``n`` fields from the prior: z ~ N(0, I), decoded on ``target``.

        ``target`` is what :meth:`decode` takes (required: the decoder has no grid of
        its own).

        Examples
        --------
        >>> fields = li.sample(5, ds.isel(time=0))  # doctest: +SKIP
        """
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if target is None:
            raise ValueError("LatentInterpolator.sample needs a target: the Dataset, DataArray or "
                             "mapping of coordinates to decode on, as for decode (li.sample(n, ds))")
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(n, self.latent_dim, generator=g)
        return self.decode(xr.DataArray(z.numpy(), dims=("sample", "latent")), target, **kw)

    def reconstruct(self, obj: xr.Dataset | xr.DataArray, target: Any = None, **kw: Any):
        """``decode(encode(obj), target or obj)``: gap filling of snapshots."""
        z = self.encode(obj, **kw)
        return self.decode(z, obj if target is None else target)

    def summary(self) -> str:
        """What was fitted and how it did on the held-out validation snapshots.

        Per observed fraction, the validation nRMSE (on the points not observed) of the
        kept model, of the trained decoder and of its PCA start when both were scored,
        and of PCA-MAP at its validated rank on the same points, for reference.

        Examples
        --------
        >>> print(li.summary())  # doctest: +SKIP
        LatentInterpolator(...)
        validation (32 held-out snapshots, 1617 points)   10 %     2 %
          model (kept: trained)                          0.158   0.294
          reference: PCA-MAP (rank 256)            0.175   0.299
        """
        lines = [repr(self), *validation_lines(self.info.get("validation"), self.latent_dim)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"LatentInterpolator(variables={self.variables}, sample_dim={self.sample_dim!r}, "
                f"latent_dim={self.latent_dim}, network={self.info.get('network')!r}, "
                f"variational={self.variational})")


def _decode_block(model: LatentInterpolator, z: np.ndarray, *blocks: np.ndarray,
                  names: tuple[str, ...], var_dims: tuple, dims: tuple, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """Task body of a lazy decode: ``[codes, *chunk shape, n_variables]`` float32, NaN
    where a coordinate is NaN. Runs on a worker with the cached model."""
    from ..parallel import as_tensor, block_dataset, block_shape, subblocks

    nv = len(model.variables)
    shape = block_shape(blocks, var_dims, dims)
    S = z.shape[0]
    out = np.full((S,) + shape + (nv,), np.nan, dtype=np.float32)
    if S == 0:
        return out
    zt = as_tensor(z, torch.float32, device)
    for region in subblocks(shape, batch_size):  # the memory budget
        tp = target_points(model.encoder, block_dataset(blocks, names, var_dims, dims, region))
        P = len(tp.features)
        if P == 0:
            continue
        if tuple(tp.layout.dims) != tuple(dims):  # pragma: no cover - block_dataset fixes the order
            raise RuntimeError(f"chunk dims {tp.layout.dims} differ from the output dims {dims}")
        feats = tp.features.to(device)
        res = torch.empty(S, P, nv)
        per = max(1, batch_size // P)
        for i in range(0, S, per):
            zz = zt[i:i + per]
            res[i:i + per] = model.network(feats.unsqueeze(0).expand(len(zz), -1, -1),
                                           zz.unsqueeze(1)).float().cpu()
        phys = model.scaler.inverse(res).numpy()
        sub = tuple(s.stop - s.start for s in region)
        n_sub = math.prod(sub)
        if tp.layout.valid is None:
            piece = phys
        else:
            piece = np.full((S, n_sub, nv), np.nan, dtype=np.float32)
            piece[:, tp.layout.valid] = phys
        out[(slice(None),) + region] = piece.reshape((S,) + sub + (nv,))
    return out


def _node_values(net: BasisField, points: np.ndarray, values: np.ndarray, smooth: float = 1e-6) -> np.ndarray:
    """Node values of a :class:`BasisField` grid whose interpolation best matches ``values``.

    Solves :math:`\\min_T \\|W T - V\\|^2 + \\epsilon \\|D T\\|^2` with :math:`W` the sparse
    (bi/tri)linear interpolation matrix from the nodes to ``points [L, n_space]`` and
    :math:`D` the differences of neighbouring nodes: exact at nodes that coincide with a
    point, a smooth harmonic extension into nodes no point constrains.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    rows, w = net.interpolation(torch.as_tensor(points, dtype=torch.float64))
    L, C = rows.shape
    G = net.mean.shape[0]
    top = w.argmax(1, keepdim=True)
    node = rows.gather(1, top).ravel().numpy()
    if L == G and bool((w.gather(1, top) > 1 - 1e-4).all()) and np.unique(node).size == G:
        out = np.empty_like(values)  # every node is exactly one point: no solve needed
        out[node] = values
        return out
    W = sp.csr_matrix((w.numpy().ravel(), (np.repeat(np.arange(L), C), rows.numpy().ravel())), shape=(L, G))
    diffs = []
    idx = np.arange(G).reshape(net.resolution)
    for d in range(net.n_space):
        a = np.take(idx, np.arange(net.resolution[d] - 1), axis=d).ravel()
        b = np.take(idx, np.arange(1, net.resolution[d]), axis=d).ravel()
        n = len(a)
        diffs.append(sp.csr_matrix((np.r_[np.ones(n), -np.ones(n)], (np.r_[np.arange(n), np.arange(n)], np.r_[a, b])),
                                   shape=(n, G)))
    D = sp.vstack(diffs)
    A = (W.T @ W + smooth * (D.T @ D) + 1e-10 * sp.identity(G)).tocsc()
    rhs = np.asarray(W.T @ values)
    if G <= 4096:
        return np.linalg.solve(A.toarray(), rhs)
    return splu(A).solve(np.ascontiguousarray(rhs))


def _pca_init(module: LatentModule, data: Any, idx: torch.Tensor, y: torch.Tensor, S: int,
              noise: str | float) -> float:
    """Start a :class:`BasisField` decoder and the codes as probabilistic PCA of the snapshots.

    Returns the noise variance (standardised units) the model starts with.
    """
    from ..nn.basis import BasisField

    net = module.network
    assert isinstance(net, BasisField)  # init='pca' is refused for other decoders (_check_init_noise)
    k, ny = net.code_dim, net.out_features
    space = np.ascontiguousarray(data.features[:, : net.n_space].double().numpy())
    rows = space.view(np.dtype((np.void, space.dtype.itemsize * net.n_space))).ravel()
    _, first, loc = np.unique(rows, return_index=True, return_inverse=True)  # distinct locations
    points, loc = space[first], loc.ravel()
    L = len(points)
    Y: np.ndarray = np.full((S, L, ny), np.nan)
    Y[idx.numpy(), loc] = y.double().numpy()
    Y = Y.reshape(S, L * ny)
    gaps = np.isnan(Y)
    if gaps.any():  # the init only: fill gaps with the point's mean over snapshots
        Y = np.where(gaps, np.nanmean(Y, 0, keepdims=True), Y)
    mean, vt, lam = eof_decomposition(Y)
    r = min(k, len(lam))
    if isinstance(noise, str):
        s2 = out_of_sample_noise(Y, r) if (noise == "cv" and S >= 4) else float(lam[r:].sum()) / Y.shape[1]
    else:
        s2 = float(noise)
    s2 = max(s2, 1e-8)
    scale = np.sqrt(np.maximum(lam[:r] - s2, 1e-3 * s2))  # PPCA: B = V (Λ - σ²)^½
    basis = np.zeros((L * ny, k))
    basis[:, :r] = vt[:r].T * scale
    nodes = _node_values(net, points, np.concatenate([mean[:, None], basis], 1).reshape(L, -1))
    values = torch.as_tensor(nodes, dtype=torch.float32).view(-1, ny, k + 1)
    extra = net.basis.detach()[:, :, r:].clone()  # modes beyond the data's rank keep their random start
    net.set_linear(values[..., 0], torch.cat([values[..., 1:r + 1], extra], -1))
    pcs = (Y - mean) @ vt[:r].T  # [S, r]
    with torch.no_grad():
        module.z_mean.zero_()
        module.z_mean[:, :r] = torch.as_tensor(pcs * scale / lam[:r].clip(1e-12), dtype=torch.float32)
        module.z_log_std.fill_(math.log(0.3))
        module.z_log_std[:, :r] = torch.as_tensor(0.5 * np.log(s2 / lam[:r].clip(1e-12)), dtype=torch.float32)
    return s2


def _grid_resolution(data: Any, n_space: int, cap: int = 512, max_nodes: int = 2**18) -> list[int]:
    """Nodes per space column: the number of distinct training coordinates, capped at
    ``cap`` per column and scaled down evenly to at most ``max_nodes`` in all."""
    f = data.features[:, :n_space].numpy()
    res = [min(cap, max(2, np.unique(f[:, d]).size)) for d in range(n_space)]
    shrink = min(1.0, (max_nodes / math.prod(res)) ** (1.0 / n_space))
    return [int(max(2, math.floor(r * shrink))) for r in res]


def _reconstructor(li: LatentInterpolator):
    """``partial -> decode(encode(partial))`` on the partial snapshots' own grid."""
    return lambda partial: li.decode(li.encode(partial, progress=False), partial)


def _default_rank(n: int, obj: xr.Dataset, names: list[str], sample_dim: Hashable) -> int:
    """The code size without validation: 32, at most ``n - 1`` and the large-grid cap."""
    n_points = sum(int(np.prod([obj.sizes[d] for d in obj[v].dims if d != sample_dim])) for v in names)
    return max(1, min(32, rank_cap(n, n_points)))


def _append_codes(li: LatentInterpolator, held: xr.Dataset) -> None:
    """Encode the held-out snapshots from all their points and append their codes."""
    z = li.encode(held, progress=False)
    zm = z["z"] if isinstance(z, xr.Dataset) else z
    mean = torch.as_tensor(zm.values, dtype=li.train_codes.dtype)
    if isinstance(z, xr.Dataset):
        std = torch.as_tensor(z["z_std"].values, dtype=li.train_code_std.dtype)
    else:
        std = li.train_code_std.mean(0, keepdim=True).expand(len(mean), -1)
    li.train_codes = torch.cat([li.train_codes, mean])
    li.train_code_std = torch.cat([li.train_code_std, std])


def _check_init_noise(kind: str, network: str, init: str | None, noise: str | float
                      ) -> tuple[str | None, str | float]:
    """``init`` and ``noise`` of :func:`fit_latent` checked, with ``"auto"`` resolved."""
    init = ("pca" if kind == "basis" else None) if init == "auto" else init
    if init not in (None, "pca"):
        raise ValueError(f"init must be 'auto', 'pca' or None, got {init!r}")
    if init == "pca" and kind != "basis":
        raise ValueError(f"init='pca' needs network='basis' (a decoder containing the linear model), got {network!r}")
    if noise == "auto":
        noise = "cv" if init == "pca" else "learn"
    if isinstance(noise, str) and noise not in ("learn", "cv", "discarded"):
        raise ValueError(f"noise must be 'auto', 'learn', 'cv', 'discarded' or a positive float, got {noise!r}")
    if noise in ("cv", "discarded") and init != "pca":
        raise ValueError(f"noise={noise!r} estimates the noise from the PCA start: pass init='pca' (network='basis')")
    if not isinstance(noise, str) and not float(noise) > 0:
        raise ValueError(f"noise must be a positive float (sigma in the variables' units), got {noise!r}")
    return init, noise


def _network_kwargs(kind: str, data: Any, network_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The decoder network's settings: defaults for ``kind`` sized to ``data``, then ``network_kwargs``."""
    n_space = data.encoder.n_space_features
    kw: dict[str, Any] = {"width": 128, "depth": 3}
    if kind in ("mfn", "fouriernet"):
        from .field import extent_cells

        kw["input_scale"] = float(max(4.0, min(extent_cells(data)) / 2.0))
    elif kind == "grid":
        from .field import default_network_kwargs

        kw = default_network_kwargs("grid", data)
    elif kind == "basis":
        kw = {"resolution": _grid_resolution(data, n_space), "n_space": n_space, "width": 64, "depth": 2}
    kw.update(network_kwargs or {})
    return kw


def _fit_core(obj: xr.Dataset, variables: Any, *, sample_dim: Hashable, latent_dim: int,
              space: Any, time: Any, network: str, network_kwargs: dict[str, Any] | None, init: str | None,
              noise: str | float, variational: bool, time_features: Any, steps: int, batch_size: int,
              lr: float, latent_lr: float, linear_lr: float | None, scheduler: Any, device: Any,
              seed: int | None, progress: bool | None, checkpoint: str | os.PathLike[str] | None = None,
              resume: bool = False, callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
              time_limit: float | str | None = None) -> tuple[LatentInterpolator, dict | None]:
    """:func:`fit_latent` on given snapshots, without validation; also returns the PCA
    start's state (``None`` without training or PCA start)."""
    from ..training import fit

    data, idx = _snapshot_points(obj, variables, sample_dim, space, time, time_features=time_features)
    S = int(obj.sizes[sample_dim])
    if S < 2:
        raise ValueError(f"need at least 2 snapshots along {sample_dim!r}, got {S}")
    kind = str(network).lower()
    init, noise = _check_init_noise(kind, network, init, noise)
    ny = len(data.variables)
    kw = _network_kwargs(kind, data, network_kwargs)
    with torch.random.fork_rng(devices=[]):  # seeded weights, global RNG untouched
        if seed is not None:
            torch.manual_seed(seed)
        net = _build_network(kind, in_features=data.features.shape[1], out_features=ny,
                             code_dim=latent_dim, **kw)
    module = LatentModule(net, S, latent_dim, ny, variational)
    y_std = torch.as_tensor(data.scaler.transform(data.y.double().numpy()), dtype=torch.float32)
    n_total = float(len(y_std))
    sigma_fixed = noise != "learn"
    sigma_std = None if isinstance(noise, str) else float(noise) / np.asarray(data.scaler.std)  # per variable
    if init == "pca":  # PPCA has one noise level: the mean over variables of a given σ
        s2 = _pca_init(module, data, idx, y_std, S, noise if sigma_std is None else float(np.mean(sigma_std**2)))
        with torch.no_grad():
            module.log_sigma.fill_(0.5 * math.log(s2))
    if sigma_std is not None:
        with torch.no_grad():
            module.log_sigma.copy_(torch.as_tensor(np.log(sigma_std), dtype=torch.float32))
    module.log_sigma.requires_grad_(not sigma_fixed)

    def loss_fn(m: LatentModule, batch):
        f, y, i = batch
        z = m.codes(i, sample=m.training)
        out = m(f, z)
        nll = -torch.distributions.Normal(out, m.log_sigma.exp()).log_prob(y).mean()
        if m.variational:
            prior = m.kl() / n_total
        else:
            prior = 0.5 * m.z_mean[i].pow(2).sum(1).mean() * (S / n_total)
        return nll + prior, {"nll": float(nll.detach())}

    history, start = None, None
    if steps and init == "pca":  # the PCA start, to fall back on if training does not help
        start = {"network": copy.deepcopy(module.network.state_dict()),
                 "log_sigma": module.log_sigma.detach().clone()}
    if steps:
        linear = [p for n, p in module.network.named_parameters() if n in ("mean", "basis")]
        other = [p for n, p in module.network.named_parameters() if n not in ("mean", "basis")]
        groups = [{"params": other + ([] if sigma_fixed else [module.log_sigma]), "lr": lr},
                  {"params": [module.z_mean, module.z_log_std], "lr": latent_lr}]
        if linear:
            groups.append({"params": linear, "lr": lr / 10 if linear_lr is None else linear_lr})
        history = fit(module, loss_fn, (data.features, y_std, idx), steps=steps, batch_size=batch_size,
                      optimizer="adam", lr=lr, params=groups, scheduler=scheduler, device=device,
                      seed=seed, progress=progress, desc=f"fit_latent[{kind}]",
                      checkpoint=checkpoint, resume=resume, callbacks=callbacks, time_limit=time_limit)
    module = module.cpu()
    sample_coords = obj[sample_dim].values if sample_dim in obj.coords else None
    info = {"network": kind, "n_snapshots": S, "steps": int(history.steps) if history else 0,
            "init": init or "random", "noise": noise if isinstance(noise, str) else float(noise)}
    if sample_coords is not None and sample_coords.dtype.kind in "iuf":
        info["sample_coords"] = sample_coords.tolist()
    li = LatentInterpolator(module.network, data.encoder, data.scaler, data.variables, sample_dim,
                            latent_dim, variational, module.log_sigma.detach().clone(),
                            module.z_mean.detach().clone(), module.z_log_std.detach().exp().clone(),
                            {v: dict(data.var_attrs.get(v, {})) for v in data.variables}, info)
    li.history = history if history is not None else History()  # steps=0: nothing trained
    li.fit_progress = progress
    return li, start


@shared_docs
def fit_latent(
    obj: xr.Dataset | xr.DataArray,
    variables: str | Sequence[str] | None = None,
    *,
    sample_dim: Hashable = "time",
    latent_dim: int | None = None,
    space: str | Sequence[str] | None = None,
    time: str | None = None,
    network: str = "basis",
    network_kwargs: dict[str, Any] | None = None,
    init: str | None = "auto",
    noise: str | float = "auto",
    variational: bool = True,
    time_features: Any = (),
    steps: int = 3000,
    batch_size: int = 8192,
    lr: float = 2e-3,
    latent_lr: float = 2e-2,
    linear_lr: float | None = None,
    scheduler: Any = "cosine",
    device: Any = "auto",
    val_fraction: float = 0.1,
    seed: int | None = 0,
    progress: bool | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Sequence[Callable[[TrainState], bool | None]] = (),
    time_limit: float | str | None = None,
) -> LatentInterpolator:
    r"""Fit a latent interpolator: one code per snapshot and a shared neural-field decoder.

    Maximises the ELBO :math:`\sum_{s,n}\mathbb E_q \log\mathcal N(y_{sn};
    f_\theta(x_{sn}, z_s), \sigma^2) - \sum_s \mathrm{KL}(q(z_s)\,\|\,\mathcal N(0, I))`
    over :math:`\theta`, :math:`\sigma` and the per-snapshot :math:`q(z_s)` (or, with
    ``variational=False``, the MAP auto-decoder objective with a Gaussian prior), by
    minibatches of points drawn across all snapshots through
    :func:`xsciml.training.fit`.

    Parameters
    ----------
    obj
        Snapshots along ``sample_dim`` (time steps, ensemble members...), NaN where not observed.
    variables
        Variable(s) to model.
    sample_dim
        The dimension indexing snapshots; every snapshot gets its own code.
    latent_dim
        Size of the codes. ``None`` (default): chosen by validation — the rank of the
        probabilistic PCA (out-of-sample noise) that best fills the held-out snapshots
        observed at 10 % and 2 % of their points (:func:`xsciml.eofs.select_rank`),
        among powers of two up to the number of training snapshots minus one (at most
        256, and fewer on large grids so that the basis fits in memory).
    space
        Space coordinates given to the decoder (see :func:`~xsciml.tensors.to_tensors`).
    time
        Time coordinate given to the decoder; ``None`` (default) leaves the snapshot's state
        entirely to its code. With ``"basis"``, time columns feed the residual only.
    time_features
        Cyclical time features given to the decoder (see :func:`~xsciml.tensors.to_tensors`).
    network
        Decoder: ``"basis"`` (default; :class:`~xsciml.nn.basis.BasisField`, mean + basis fields
        on a grid at the data's resolution + a residual MLP ``width`` x ``depth`` fed with z),
        ``"mfn"`` (FourierNet, shift modulation by z), ``"siren"`` (shift modulation), ``"mlp"`` or
        ``"grid"`` (z concatenated).
    network_kwargs
        Options of the decoder, e.g. ``{"depth": 0}`` for the linear model ``m + B z``.
    init
        ``"pca"`` starts a ``"basis"`` decoder as probabilistic PCA of the snapshots
        (mean, EOFs x :math:`(\lambda - \sigma^2)^{1/2}`, codes the posterior means);
        ``None`` starts at random. ``"auto"``: ``"pca"`` for ``"basis"``, else ``None``.
    noise
        Noise :math:`\sigma`: ``"learn"`` (trained with the ELBO), ``"cv"`` (with
        ``init="pca"``: fixed at the out-of-sample residual variance of the PCA —
        held-out contiguous blocks of snapshots projected on the EOFs of the others;
        the in-sample residual underestimates the misfit of new snapshots, which makes
        encoding from few points overfit), ``"discarded"`` (with ``init="pca"``: the
        discarded variance per point, as in classical PCA-MAP), or a float (fixed
        :math:`\sigma` in the variables' units). ``"auto"``: with ``init="pca"``, the
        one of ``"cv"`` and ``"discarded"`` chosen with the rank by validation when
        ``latent_dim=None`` (else ``"cv"``); ``"learn"`` otherwise.
    variational
        ELBO with a Gaussian q(z) per snapshot (default), or MAP codes.
    steps
        Training steps; ``steps=0`` keeps the initial model (e.g. the PCA).
    batch_size
        Points per minibatch.
    lr
        Learning rate of the decoder.
    latent_lr
        Learning rate of the codes (as in auto-decoders, codes need a larger step than the
        shared weights).
    scheduler
        Learning-rate schedule, see :func:`xsciml.training.fit`.
    device
        Where to train.
    seed
        The seed (weights, minibatches, validation masks).
    progress
        Show a progress bar.
    linear_lr
        Learning rate of the mean and basis grids of ``"basis"`` (default ``lr / 10``:
        small steps keep the PCA start).
    val_fraction
        Fraction of the snapshots held out for validation: the last contiguous block
        along ``sample_dim`` (neighbouring snapshots are correlated, so a random pick
        would leak). The model is fitted on the others; each held-out snapshot is
        observed at random 10 % and 2 % of its points, encoded and decoded, and scored
        on the rest, next to PCA-MAP (the classical Bayesian-ridge reconstruction on the
        leading EOFs, at its rank chosen on the same validation) on the same points. With ``"basis"``, the trained
        decoder is kept only if it does at least as well there as its PCA start at
        every fraction. When the PCA start is kept it is refitted on every snapshot;
        a kept trained decoder encodes the held-out snapshots from all their points, so
        :attr:`codes` covers every snapshot either way. The scores are in ``info["validation"]`` and
        :meth:`LatentInterpolator.summary`; a warning names both numbers when PCA-MAP
        does better. Validation needs at least 10 snapshots (fewer: skipped, as
        ``info["validation"]`` says); ``0`` turns it off.
    {training_options}

    Returns
    -------
    LatentInterpolator

    Examples
    --------
    >>> import xsciml
    >>> ds = xsciml.datasets.gaussian_random_field((16, 16), n=8, seed=0)
    >>> li = ds.sciml.fit_latent("u", sample_dim="sample", latent_dim=4, steps=20, progress=False)
    >>> li.encode(ds.isel(sample=[0]), steps=5).sizes["latent"]
    4
    """
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name=obj.name if obj.name is not None else "values")
        variables = variables or [str(v) for v in obj.data_vars]  # str names, as to_tensors takes them
    if latent_dim is not None:
        check_positive_int(latent_dim, "latent_dim")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if sample_dim not in obj.dims:
        raise KeyError(f"sample_dim {sample_dim!r} is not a dimension; dims are {tuple(obj.dims)}")
    names = [variables] if isinstance(variables, str) else [str(v) for v in variables or obj.data_vars]
    if space is None:
        from ..tensors import default_space

        space = default_space(obj, [d for d in obj[names[0]].dims if d != sample_dim], time)
    S = int(obj.sizes[sample_dim])
    if S < 2:
        raise ValueError(f"need at least 2 snapshots along {sample_dim!r}, got {S}")
    settings = dict(sample_dim=sample_dim, space=space, time=time, network=network, network_kwargs=network_kwargs,
                    init=init, noise=noise, variational=variational, time_features=time_features,
                    steps=steps, batch_size=batch_size, lr=lr, latent_lr=latent_lr, linear_lr=linear_lr,
                    scheduler=scheduler, device=device, seed=seed, progress=progress,
                    checkpoint=checkpoint, resume=resume, callbacks=callbacks, time_limit=time_limit)
    n_val = 0
    if val_fraction > 0 and S >= MIN_SNAPSHOTS:
        n_val = min(max(1, int(round(val_fraction * S))), MAX_SNAPSHOTS)
    lazy = any(obj[v].chunks is not None for v in names)
    if n_val == 0 or lazy:
        why = ("off (val_fraction=0)" if val_fraction == 0 else "skipped: dask-backed snapshots" if lazy else
               f"skipped: {S} snapshots along {sample_dim!r}, validation needs at least "
               f"{MIN_SNAPSHOTS}")
        k = latent_dim if latent_dim is not None else _default_rank(S, obj, names, sample_dim)
        li, _ = _fit_core(obj, variables, latent_dim=k, **settings)
        li.info["validation"] = {"status": why}
        return li
    if latent_dim is not None and latent_dim > S - n_val - 1:
        li, _ = _fit_core(obj, variables, latent_dim=latent_dim, **settings)
        li.info["validation"] = {"status": f"skipped: latent_dim={latent_dim} needs more than the {S - n_val} "
                                           "snapshots the validation split leaves"}
        return li
    fit_part = obj.isel({sample_dim: slice(0, S - n_val)})
    held = obj.isel({sample_dim: slice(S - n_val, S)})
    check = SnapshotValidation(fit_part, held, names, sample_dim, seed=seed or 0)
    if not check.usable:
        k = latent_dim if latent_dim is not None else _default_rank(S, obj, names, sample_dim)
        li, _ = _fit_core(obj, variables, latent_dim=k, **settings)
        li.info["validation"] = {"status": f"skipped: only {check.n_points} points have a value in every "
                                           "snapshot (validation needs 10)"}
        return li
    cap = rank_cap(S - n_val, check.n_points_total)
    selection = check.select(cap)
    k = latent_dim if latent_dim is not None else selection.rank
    if noise == "auto" and latent_dim is None and (init == "auto" and str(network).lower() == "basis" or init == "pca"):
        settings["noise"] = selection.noise  # the noise estimate chosen with the rank
    li, start = _fit_core(fit_part, variables, latent_dim=k, **settings)
    scores = check.score(_reconstructor(li))
    kept = "trained" if start is not None else ("pca" if li.info.get("init") == "pca" else "trained")
    val: dict[str, Any] = {"n_snapshots": n_val, "n_points": check.n_points, "fractions": list(check.fractions),
                           "nrmse": scores}
    if start is not None:
        trained_network, trained_log_sigma = copy.deepcopy(li.network.state_dict()), li.log_sigma.clone()
        li.network.load_state_dict(start["network"])
        li.log_sigma = start["log_sigma"]
        start_scores = check.score(_reconstructor(li))
        val["nrmse_trained"], val["nrmse_pca_start"] = scores, start_scores
        # the trained decoder is kept only if it fills the held-out snapshots at least as
        # well as its PCA start at every observed fraction
        if any(t > p for t, p in zip(scores, start_scores, strict=True)):
            kept, val["nrmse"] = "pca", start_scores
        else:
            li.network.load_state_dict(trained_network)
            li.log_sigma = trained_log_sigma
    val.update(kept=kept, latent_dim_chosen=latent_dim is None, **reference_entries(selection))
    if kept == "pca" and li.info.get("init") == "pca":
        # the PCA start is cheap: refit it on every snapshot, the held-out (latest) ones included
        history = li.history
        li, _ = _fit_core(obj, variables, latent_dim=k, **{**settings, "steps": 0})
        li.history = history
        li.fit_progress = progress
    else:
        _append_codes(li, held)
        if obj[sample_dim].dtype.kind in "iuf" and sample_dim in obj.coords:
            li.info["sample_coords"] = obj[sample_dim].values.tolist()
    li.info["validation"] = val
    li.info["n_snapshots"] = S
    warn_if_worse(val, "fit_latent")
    return li
