"""Observation likelihoods for neural fields, built on :mod:`torch.distributions`.

A likelihood turns a network output ``net_out: Tensor[..., n_params]`` (with
``n_params = n_params_per_output * n_outputs``) into a distribution over the
observations ``y: Tensor[..., n_outputs]``. Estimators size their network's
``out_features`` from :attr:`Likelihood.n_params` and minimise :meth:`Likelihood.nll`.

Missing observations (NaN in ``y``) and entries where ``mask`` is false are left out
of the loss; they are never filled in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Independent, Normal, kl_divergence

__all__ = [
    "LIKELIHOOD_KINDS",
    "DiagonalGaussian",
    "GaussianLikelihood",
    "HeteroscedasticGaussian",
    "Likelihood",
    "MSELikelihood",
    "build_likelihood",
    "kl_standard_normal",
]


def _check_n_outputs(n_outputs: Any) -> int:
    if isinstance(n_outputs, bool) or not isinstance(n_outputs, int) or n_outputs < 1:
        raise ValueError(f"n_outputs must be a positive integer, got {n_outputs!r}.")
    return n_outputs


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over the ``valid`` entries (0 when there are none)."""
    values = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return values.sum() / valid.sum().clamp_min(1)


class Likelihood(nn.Module):
    """Base class: maps network outputs to a :class:`torch.distributions.Normal`.

    Subclasses implement :meth:`distribution`; :meth:`nll`, :meth:`mean`, :meth:`std`
    and :meth:`sample` follow from it.

    Attributes
    ----------
    n_outputs
        Number of observed channels.
    n_params_per_output
        Network outputs needed per channel.
    """

    kind: ClassVar[str] = ""
    n_params_per_output: ClassVar[int] = 1

    def __init__(self, n_outputs: int) -> None:
        super().__init__()
        self.n_outputs = _check_n_outputs(n_outputs)

    @property
    def n_params(self) -> int:
        """Number of network outputs this likelihood reads (``out_features`` of the net)."""
        return self.n_params_per_output * self.n_outputs

    def config(self) -> dict[str, Any]:
        """JSON-serialisable ``{"kind": ..., **kwargs}`` accepted by :func:`build_likelihood`."""
        return {"kind": self.kind, "n_outputs": self.n_outputs}

    def _check_net_out(self, net_out: Tensor) -> None:
        if not isinstance(net_out, Tensor):
            raise TypeError(f"net_out must be a torch.Tensor, got {type(net_out).__name__}.")
        if net_out.ndim < 1 or net_out.shape[-1] != self.n_params:
            raise ValueError(
                f"net_out must have shape [..., {self.n_params}] "
                f"({self.n_params_per_output} per output x {self.n_outputs} outputs) for a "
                f"{type(self).__name__}, got {tuple(net_out.shape)}; build the network with "
                f"out_features=likelihood.n_params."
            )

    def distribution(self, net_out: Tensor) -> Normal:
        """Elementwise ``Normal`` over ``y: Tensor[..., n_outputs]``."""
        raise NotImplementedError

    def mean(self, net_out: Tensor) -> Tensor:
        """Predictive mean, ``Tensor[..., n_outputs]``."""
        return self.distribution(net_out).mean

    def std(self, net_out: Tensor) -> Tensor:
        """Predictive standard deviation, ``Tensor[..., n_outputs]``."""
        return self.distribution(net_out).stddev

    def sample(self, net_out: Tensor, n: int | None = None) -> Tensor:
        """Draw from the predictive distribution (``[n, ..., n_outputs]`` when ``n`` given)."""
        dist = self.distribution(net_out)
        return dist.sample() if n is None else dist.sample((n,))

    def _valid(self, y: Tensor, mask: Tensor | None) -> Tensor:
        valid = torch.isfinite(y)
        if mask is not None:
            try:
                valid = valid & mask.to(torch.bool)
            except RuntimeError:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} cannot be broadcast to y of shape "
                    f"{tuple(y.shape)}."
                ) from None
            if valid.shape != y.shape:
                raise ValueError(
                    f"mask of shape {tuple(mask.shape)} cannot be broadcast to y of shape "
                    f"{tuple(y.shape)}."
                )
        return valid

    def _check_y(self, net_out: Tensor, y: Tensor) -> None:
        expected = (*net_out.shape[:-1], self.n_outputs)
        if tuple(y.shape) != expected:
            raise ValueError(
                f"y must have shape {expected} to match net_out, got {tuple(y.shape)}."
            )

    def nll(self, net_out: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood over the observed entries of ``y``.

        Parameters
        ----------
        net_out
            Network output, ``Tensor[..., n_params]``.
        y
            Observations, ``Tensor[..., n_outputs]``; NaN entries are skipped.
        mask
            Optional boolean tensor broadcastable to ``y``; ``False`` entries are skipped.

        Returns
        -------
        torch.Tensor
            A scalar.
        """
        dist = self.distribution(net_out)
        self._check_y(net_out, y)
        valid = self._valid(y, mask)
        # fill skipped entries with the (detached) mean so they contribute no NaN gradients
        y_safe = torch.where(valid, y, dist.mean.detach())
        return _masked_mean(-dist.log_prob(y_safe), valid)


class GaussianLikelihood(Likelihood):
    """Homoscedastic Gaussian: ``y ~ N(net_out, σ²)`` with one learned ``log σ`` per output.

    Parameters
    ----------
    n_outputs
        Number of observed channels.
    init_std
        Initial ``σ`` (in the units of the normalised ``y``).
    learn_std
        Learn ``log σ`` (otherwise it stays fixed; it is still saved in the ``state_dict``).
    min_std
        Floor on ``σ``.

    Examples
    --------
    >>> lik = GaussianLikelihood(2, init_std=0.5)
    >>> out = torch.zeros(4, lik.n_params)
    >>> lik.std(out)[0].tolist()
    [0.5, 0.5]
    >>> lik.nll(out, torch.zeros(4, 2)).shape
    torch.Size([])
    """

    kind = "gaussian"
    n_params_per_output = 1

    def __init__(
        self, n_outputs: int, init_std: float = 1.0, learn_std: bool = True, min_std: float = 1e-4
    ) -> None:
        super().__init__(n_outputs)
        if not (min_std >= 0 and init_std > 0 and init_std >= min_std):
            raise ValueError(
                f"need init_std > 0 and 0 <= min_std <= init_std, got init_std={init_std}, "
                f"min_std={min_std}."
            )
        self.init_std, self.learn_std, self.min_std = (
            float(init_std),
            bool(learn_std),
            float(min_std),
        )
        log_std = torch.full((self.n_outputs,), math.log(init_std))
        if learn_std:
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "init_std": self.init_std,
            "learn_std": self.learn_std,
            "min_std": self.min_std,
        }

    def distribution(self, net_out: Tensor) -> Normal:
        self._check_net_out(net_out)
        scale = self.log_std.to(net_out.dtype).exp().clamp_min(self.min_std)
        return Normal(net_out, scale.expand_as(net_out), validate_args=False)


class HeteroscedasticGaussian(Likelihood):
    """Heteroscedastic Gaussian: the network predicts a mean and a scale per output.

    ``net_out[..., :n_outputs]`` is the mean and ``net_out[..., n_outputs:]`` a raw
    scale mapped to ``σ = softplus(raw) + min_std``.

    Parameters
    ----------
    n_outputs
        Number of observed channels.
    min_std
        Floor on ``σ``.

    Examples
    --------
    >>> lik = HeteroscedasticGaussian(1)
    >>> out = torch.tensor([[0.0, -30.0], [1.0, 2.0]])
    >>> bool((lik.std(out) > 0).all())
    True
    """

    kind = "heteroscedastic"
    n_params_per_output = 2

    def __init__(self, n_outputs: int, min_std: float = 1e-4) -> None:
        super().__init__(n_outputs)
        if not min_std > 0:
            raise ValueError(f"min_std must be positive, got {min_std}.")
        self.min_std = float(min_std)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "min_std": self.min_std}

    def distribution(self, net_out: Tensor) -> Normal:
        self._check_net_out(net_out)
        loc, raw = net_out.split(self.n_outputs, dim=-1)
        return Normal(loc, F.softplus(raw) + self.min_std, validate_args=False)


class MSELikelihood(Likelihood):
    """Mean squared error, for ``likelihood="mse"``.

    :meth:`nll` returns the mean squared error (equal to twice the Gaussian NLL with
    ``σ = 1``, up to a constant); :meth:`std` is fixed to 1, i.e. no uncertainty is
    modelled.

    Examples
    --------
    >>> lik = MSELikelihood(1)
    >>> float(lik.nll(torch.zeros(3, 1), torch.tensor([[1.0], [2.0], [float("nan")]])))
    2.5
    """

    kind = "mse"
    n_params_per_output = 1

    def distribution(self, net_out: Tensor) -> Normal:
        self._check_net_out(net_out)
        return Normal(net_out, torch.ones_like(net_out), validate_args=False)

    def nll(self, net_out: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        self._check_net_out(net_out)
        self._check_y(net_out, y)
        valid = self._valid(y, mask)
        return _masked_mean((net_out - torch.where(valid, y, net_out.detach())).square(), valid)


_LIKELIHOODS: dict[str, type[Likelihood]] = {
    "gaussian": GaussianLikelihood,
    "heteroscedastic": HeteroscedasticGaussian,
    "mse": MSELikelihood,
}
_ALIASES = {
    "homoscedastic": "gaussian",
    "normal": "gaussian",
    "heteroscedastic_gaussian": "heteroscedastic",
}

#: Names understood by :func:`build_likelihood` (aliases included).
LIKELIHOOD_KINDS: tuple[str, ...] = tuple(_LIKELIHOODS) + tuple(_ALIASES)


def build_likelihood(
    name: str | Mapping[str, Any] | Likelihood, n_outputs: int | None = None, **kw: Any
) -> Likelihood:
    """Build a likelihood from its name or a :meth:`Likelihood.config` dict.

    Parameters
    ----------
    name
        ``"gaussian"`` (alias ``"homoscedastic"``), ``"heteroscedastic"`` or ``"mse"``;
        a config dict with a ``"kind"`` key; or a :class:`Likelihood`, returned unchanged.
    n_outputs
        Number of observed channels (overrides the config's value).
    **kw
        Further constructor arguments (e.g. ``init_std``, ``min_std``).

    Examples
    --------
    >>> lik = build_likelihood("heteroscedastic", 3)
    >>> lik.n_params
    6
    >>> build_likelihood(lik.config()).config() == lik.config()
    True
    """
    if isinstance(name, Likelihood):
        return name
    if isinstance(name, Mapping):
        params = dict(name)
        if "kind" not in params:
            raise KeyError(
                f"a likelihood config needs a 'kind' key (one of {list(LIKELIHOOD_KINDS)})."
            )
        name = params.pop("kind")
    else:
        params = {}
    if not isinstance(name, str):
        raise TypeError(f"likelihood must be a name, a config dict or a Likelihood, got {name!r}.")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {list(LIKELIHOOD_KINDS)}.")
    if n_outputs is not None:
        params["n_outputs"] = n_outputs
    params.update(kw)
    if "n_outputs" not in params:
        raise ValueError(f"build_likelihood({name!r}) needs n_outputs=...")
    return _LIKELIHOODS[key](**params)


def kl_standard_normal(mu: Tensor, log_std: Tensor) -> Tensor:
    """Elementwise ``KL(N(mu, exp(log_std)²) || N(0, 1))``.

    Sum over the latent dimension for the KL of a diagonal Gaussian.

    Examples
    --------
    >>> kl_standard_normal(torch.zeros(3), torch.zeros(3))
    tensor([0., 0., 0.])
    """
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
    return kl_divergence(Normal(mu, log_std.exp(), validate_args=False), prior)


class DiagonalGaussian:
    """Diagonal Gaussian over latent vectors ``[..., latent_dim]`` (posterior or prior).

    Parameters
    ----------
    mu
        Mean ``[..., latent_dim]``.
    log_std
        Log standard deviation, same shape as ``mu``.

    Examples
    --------
    >>> q = DiagonalGaussian(torch.zeros(4, 8), torch.zeros(4, 8))
    >>> q.rsample().shape, q.kl_standard_normal().shape
    (torch.Size([4, 8]), torch.Size([4]))
    """

    def __init__(self, mu: Tensor, log_std: Tensor) -> None:
        if mu.shape != log_std.shape:
            raise ValueError(
                f"mu and log_std must have the same shape, got {tuple(mu.shape)} and "
                f"{tuple(log_std.shape)}."
            )
        if mu.ndim < 1:
            raise ValueError("mu and log_std need a trailing latent dimension.")
        self.mu, self.log_std = mu, log_std
        self.distribution = Independent(Normal(mu, log_std.exp(), validate_args=False), 1)

    @classmethod
    def from_params(cls, params: Tensor) -> DiagonalGaussian:
        """Split an encoder output ``[..., 2 * latent_dim]`` into ``(mu, log_std)``."""
        if params.shape[-1] % 2:
            raise ValueError(
                f"params must have an even last dimension (mu and log_std), got {tuple(params.shape)}."
            )
        mu, log_std = params.chunk(2, dim=-1)
        return cls(mu, log_std)

    @property
    def std(self) -> Tensor:
        return self.log_std.exp()

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Reparameterised sample ``mu + std * eps``."""
        return self.distribution.rsample(torch.Size(sample_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density summed over the latent dimension."""
        return self.distribution.log_prob(z)

    def kl_standard_normal(self) -> Tensor:
        """``KL(q || N(0, I))`` summed over the latent dimension, shape ``[...]``."""
        return kl_standard_normal(self.mu, self.log_std).sum(-1)

