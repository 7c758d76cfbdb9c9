"""The training options every ``fit_*`` that trains a network shares.

``checkpoint``, ``resume``, ``callbacks`` and ``time_limit`` have the same names and
defaults everywhere and reach :func:`xsciml.training.fit`: a user callback sees every
step and can stop the training, a fit interrupted there and resumed from its checkpoint
ends as the uninterrupted fit does (same losses and same weights, the EMA of the
diffusion prior and the teacher-forcing schedule of the dynamics models included), and
a resumed fit with a larger budget continues from the checkpoint's step.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr

import xsciml
from xsciml.training import History, TrainState, checkpoint_step, fit, parse_time_limit

# ---------------------------------------------------------------------- parse_time_limit


@pytest.mark.parametrize(("value", "seconds"), [
    (90, 90.0), (1.5, 1.5), ("90s", 90.0), ("10min", 600.0), ("1.5h", 5400.0),
    ("2h30min", 9000.0), (" 1h 5min 30s ", 3930.0), ("0.5s", 0.5), ("2 hours", 7200.0), (None, None),
])
def test_parse_time_limit(value: Any, seconds: float | None) -> None:
    assert parse_time_limit(value) == seconds


@pytest.mark.parametrize("value", [0, -3, 0.0, "0s", float("inf"), float("nan"), True, "10", "abc", "",
                                   "1h2", "NaT", "-5s", [60]])
def test_parse_time_limit_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match=r"time_limit must be seconds as a number > 0, or a string such as "
                                         r"'90s', '10min', '1\.5h' or '2h30min'"):
        parse_time_limit(value)


def test_parse_time_limit_names_the_argument() -> None:
    with pytest.raises(ValueError, match="^budget must be"):
        parse_time_limit("soon", name="budget")


# ---------------------------------------------------------------------- training.fit


def _linear_problem() -> tuple[torch.nn.Module, Callable[..., torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=gen)
    y = x @ torch.tensor([[2.0], [-1.0]])
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1), lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]), (x, y)


def _sleep(state: TrainState) -> None:
    time.sleep(0.01)


def test_time_limit_stops_fit_with_a_warning(tmp_path) -> None:
    model, mse, data = _linear_problem()
    ckpt = tmp_path / "lin.pt"
    with pytest.warns(UserWarning, match=r"time limit of 0\.05 s was reached after \d+ steps of the 100 "
                                         r"steps asked for.*resume from the checkpoint"):
        h = fit(model, mse, data, steps=100, batch_size=16, device="cpu", progress=False, val_fraction=0.25,
                val_every=2, callbacks=[_sleep], time_limit=0.05, checkpoint=ckpt)
    assert 1 <= h.steps < 100 and len(h.loss) == h.steps
    assert h.stopped_early and h.stop_reason == "time_limit"
    assert History.from_dict(h.to_dict()).stop_reason == "time_limit"
    # the best weights on validation are restored, the checkpoint written at the stop
    assert h.best_step is not None and h.best_step <= h.steps
    assert checkpoint_step(ckpt) == h.steps
    # resuming without a limit finishes the budget
    model2, _, _ = _linear_problem()
    h2 = fit(model2, mse, data, steps=100, batch_size=16, device="cpu", progress=False, val_fraction=0.25,
             val_every=2, checkpoint=ckpt, resume=True)
    assert h2.steps == 100 and h2.stop_reason is None and h2.loss[:h.steps] == h.loss


def test_time_limit_not_reached_changes_nothing() -> None:
    model, mse, data = _linear_problem()
    ref = fit(model, mse, data, steps=20, batch_size=16, device="cpu", progress=False)
    model, mse, data = _linear_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = fit(model, mse, data, steps=20, batch_size=16, device="cpu", progress=False, time_limit="1h")
    assert h.loss == ref.loss and h.stop_reason is None and not h.stopped_early


def test_time_limit_bad_value_fails_before_training() -> None:
    model, mse, data = _linear_problem()
    with pytest.raises(ValueError, match="time_limit must be"):
        fit(model, mse, data, steps=5, device="cpu", progress=False, time_limit="in five minutes")


@pytest.mark.parametrize("callbacks", [5, "stop", [5], [print, None]])
def test_callbacks_that_are_not_callables_are_refused(callbacks: Any) -> None:
    model, mse, data = _linear_problem()
    with pytest.raises(TypeError, match=r"callbacks must be a sequence of callables cb\(state\)"):
        fit(model, mse, data, steps=2, device="cpu", progress=False, callbacks=callbacks)


def test_checkpoint_that_is_not_a_path_is_refused() -> None:
    model, mse, data = _linear_problem()
    with pytest.raises(TypeError, match="checkpoint must be a file path .* got int"):
        fit(model, mse, data, steps=2, device="cpu", progress=False, checkpoint=123)


def test_checkpoint_step_of_missing_file(tmp_path) -> None:
    assert checkpoint_step(tmp_path / "none.pt") == 0 and checkpoint_step(None) == 0


# ---------------------------------------------------------------------- every fit_*

N = 6  # steps of the tiny fits
STOP = 3  # a callback stops them after this many steps


def _smooth_field(n: int = 8, frames: int = 6) -> xr.Dataset:
    x = np.linspace(-1, 1, n)
    t = np.arange(frames, dtype=float)
    u = np.sin(2 * x[None, None, :] + 0.3 * t[:, None, None]) * np.cos(1.5 * x[None, :, None])
    return xr.Dataset({"u": (("time", "y", "x"), u)}, coords={"time": t, "y": x, "x": x})


def _fit_field(**kw: Any) -> Any:
    ds = _smooth_field(frames=4)  # 25 held-out points: enough for a firm validation
    return xsciml.models.fit_field(ds, "u", space=("y", "x"), time="time", residual="none", reference=False,
                                   device="cpu", progress=False, val_every=2, **kw)


def _fit_latent(**kw: Any) -> Any:
    return xsciml.models.fit_latent(_smooth_field(), "u", sample_dim="time", latent_dim=2, device="cpu",
                                    progress=False, val_fraction=0, **kw)


def _fit_autoencoder(**kw: Any) -> Any:
    ds = xsciml.datasets.gaussian_random_field((8, 8), n=10, seed=0)
    return xsciml.models.fit_autoencoder(ds, "u", sample_dim="sample", network="mlp", latent_dim=2, batch_size=4,
                                         device="cpu", progress=False, **kw)


def _dino_kw() -> dict[str, Any]:
    return dict(latent_dim=3, width=8, depth=1, dynamics_width=8, dynamics_depth=1, device="cpu",
                progress=False, residual_rank=0)


def _fit_dino(**kw: Any) -> Any:
    ds = xsciml.datasets.heat(3, 8, n_frames=4, seed=0)
    return xsciml.models.dino.fit_dino(ds, "u", **_dino_kw(), **kw)


def _fit_dynamics_dino(**kw: Any) -> Any:
    ds = xsciml.datasets.heat(3, 8, n_frames=4, seed=0)
    return xsciml.models.fit_dynamics(ds, "u", **_dino_kw(), **kw)


def _fit_smooth(**kw: Any) -> Any:
    ds = xsciml.datasets.heat(3, 8, n_frames=4, seed=0)
    return xsciml.models.fit_dynamics(ds, "u", method="smooth", modes=2, waves=2, encoder_width=4,
                                      dynamics_width=8, dynamics_depth=1, batch_size=6, device="cpu",
                                      progress=False, **kw)


def _fit_diffusion(**kw: Any) -> Any:
    from xsciml.downscale import fit_diffusion

    ds = xsciml.datasets.gaussian_random_field((8, 8), n=6, seed=0)
    return fit_diffusion(ds, "u", sample_dim="sample", base_channels=4, levels=2, emb_dim=8, batch_size=3,
                         ema=0.5, device="cpu", progress=False, **kw)


def _fit_inversion(**kw: Any) -> Any:
    from xsciml.inverse import HeatOperator, RandomRectangles, fit_inversion

    return fit_inversion(HeatOperator(1.0), RandomRectangles((8, 8), batch_size=2, max_half_size=2.0),
                         network_kwargs={"base_channels": 4, "levels": 2}, calibration_examples=0,
                         device="cpu", progress=False, **kw)


FITS: dict[str, Callable[..., Any]] = {
    "fit_field": _fit_field, "fit_latent": _fit_latent, "fit_autoencoder": _fit_autoencoder,
    "fit_dino": _fit_dino, "fit_dynamics": _fit_dynamics_dino, "fit_smooth_dynamics": _fit_smooth,
    "fit_diffusion": _fit_diffusion, "fit_inversion": _fit_inversion,
}


def _history(model: Any) -> History:
    return model.history


def _weights(model: Any) -> dict[str, torch.Tensor]:
    """Every tensor the fitted model saves (weights, EMA weights, codes, scalers)."""
    return {k: v for k, v in model._get_tensors().items() if isinstance(v, torch.Tensor)}


def _same_weights(a: Any, b: Any) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


class _StopAt:
    """Counts the steps it sees; stops the training after ``stop`` (``None``: never)."""

    def __init__(self, stop: int | None = None) -> None:
        self.stop, self.steps = stop, []

    def __call__(self, state: TrainState) -> bool:
        self.steps.append(state.step)
        return self.stop is not None and state.step >= self.stop


@pytest.mark.parametrize("name", list(FITS))
def test_fit_shares_the_training_options(name: str) -> None:
    from xsciml.downscale import fit_diffusion
    from xsciml.inverse import fit_inversion

    funcs = {"fit_field": xsciml.models.fit_field, "fit_latent": xsciml.models.fit_latent,
             "fit_autoencoder": xsciml.models.fit_autoencoder, "fit_dino": xsciml.models.dino.fit_dino,
             "fit_dynamics": xsciml.models.fit_dynamics,
             "fit_smooth_dynamics": xsciml.models.smooth.fit_smooth_dynamics,
             "fit_diffusion": fit_diffusion, "fit_inversion": fit_inversion}
    params = inspect.signature(funcs[name]).parameters
    expected = {"checkpoint": (None, "str | os.PathLike[str] | None"), "resume": (False, "bool"),
                "callbacks": ((), "Sequence[Callable[[TrainState], bool | None]]"),
                "time_limit": (None, "float | str | None")}
    for arg, (default, annotation) in expected.items():
        p = params[arg]
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default == default and p.annotation == annotation
        assert f"    {arg} : " in funcs[name].__doc__


def test_accessor_shows_the_training_options() -> None:
    ds = _smooth_field()
    for method in ("fit_field", "fit_latent", "fit_autoencoder", "fit_dynamics", "fit_diffusion"):
        params = inspect.signature(getattr(ds.sciml, method)).parameters
        assert {"checkpoint", "resume", "callbacks", "time_limit"} <= set(params), method


@pytest.mark.parametrize("name", list(FITS))
def test_callback_interrupt_resume_round_trip(name: str, tmp_path) -> None:
    build = FITS[name]
    smooth = name == "fit_smooth_dynamics"
    ref = build(steps=N, seed=0)
    h_ref = _history(ref)
    total = 2 * N if smooth else N  # the smooth model trains two stages of N steps
    assert h_ref.steps == total and h_ref.stop_reason is None

    # a user callback sees every step and stops the training (the first stage, for smooth)
    ckpt = tmp_path / "run.pt"
    cb = _StopAt(STOP)
    stopped = build(steps=N, seed=0, callbacks=[cb], checkpoint=ckpt)
    h = _history(stopped)
    assert cb.steps == list(range(1, STOP + 1))
    assert h.steps == STOP and h.stopped_early and h.stop_reason == "callback"
    assert h.loss == h_ref.loss[:STOP]
    if smooth:  # the dynamics stage was not run
        assert h.stage("dynamics").steps == 0
        assert (tmp_path / "run.autoencoder.pt").exists() and not (tmp_path / "run.dynamics.pt").exists()
    else:
        assert checkpoint_step(ckpt) == STOP

    # resumed from there, the fit ends as the uninterrupted one did
    counter = _StopAt()
    resumed = build(steps=N, seed=0, callbacks=[counter], checkpoint=ckpt, resume=True)
    h = _history(resumed)
    assert h.steps == total and h.stop_reason is None
    assert h.loss == h_ref.loss
    assert counter.steps == (list(range(STOP + 1, N + 1)) + list(range(1, N + 1)) if smooth
                             else list(range(STOP + 1, N + 1)))
    assert _same_weights(resumed, ref)

    # resuming the complete checkpoint trains nothing and gives the same model
    counter = _StopAt()
    again = build(steps=N, seed=0, callbacks=[counter], checkpoint=ckpt, resume=True)
    assert counter.steps == [] and _history(again).loss == h_ref.loss and _same_weights(again, ref)

    # a larger budget continues from the checkpoint's step
    longer = build(steps=N + 2, seed=0, checkpoint=ckpt, resume=True)
    h = _history(longer)
    if smooth:
        assert h.stage("autoencoder").loss[:N] == h_ref.stage("autoencoder").loss
        assert h.stage("autoencoder").steps == h.stage("dynamics").steps == N + 2
    else:
        assert h.steps == N + 2 and h.loss[:N] == h_ref.loss


def test_smooth_resume_inside_the_dynamics_stage(tmp_path) -> None:
    """Interrupted in its second stage, the smooth fit skips the finished first one and
    continues the second (teacher-forcing schedule included) where it stopped."""
    ref = _fit_smooth(steps=N, seed=0)

    def stop_in_dynamics(state: TrainState) -> bool:
        return "teacher_forcing" in state.logs and state.step >= STOP

    ckpt = tmp_path / "run"
    stopped = _fit_smooth(steps=N, seed=0, callbacks=[stop_in_dynamics], checkpoint=ckpt)
    assert stopped.history.stage("dynamics").steps == STOP and stopped.history.stop_reason == "callback"
    assert checkpoint_step(tmp_path / "run.autoencoder") == N and checkpoint_step(tmp_path / "run.dynamics") == STOP
    counter = _StopAt()
    resumed = _fit_smooth(steps=N, seed=0, callbacks=[counter], checkpoint=ckpt, resume=True)
    assert counter.steps == list(range(STOP + 1, N + 1))
    assert resumed.history.loss == ref.history.loss
    assert resumed.history.logs["teacher_forcing"] == ref.history.logs["teacher_forcing"]
    assert _same_weights(resumed, ref)


def test_smooth_time_limit_covers_the_whole_fit() -> None:
    """Out of time in the first stage: the second is not run, and the history says so."""
    with pytest.warns(UserWarning, match=r"time limit of 0\.05 s was reached after \d+ steps of the 200 steps"):
        model = _fit_smooth(steps=200, seed=0, callbacks=[_sleep], time_limit=0.05)
    h = model.history
    assert 1 <= h.stage("autoencoder").steps < 200 and h.stage("dynamics").steps == 0
    assert h.stopped_early and h.stop_reason == "time_limit"
    assert math.isnan(model.info["final_dynamics_loss"])


@pytest.mark.parametrize("name", ["fit_field", "fit_diffusion"])
def test_time_limit_of_a_fit(name: str) -> None:
    with pytest.warns(UserWarning, match=r"time limit of 0\.03 s was reached"):
        model = FITS[name](steps=300, seed=0, callbacks=[_sleep], time_limit="0.03s")
    assert model.history.stop_reason == "time_limit" and model.history.steps < 300


def test_pca_has_no_training_to_checkpoint(tmp_path) -> None:
    ds = xsciml.datasets.gaussian_random_field((8, 8), n=10, seed=0)
    fit_pca = xsciml.models.fit_autoencoder
    for kw in ({"checkpoint": tmp_path / "pca.pt"}, {"callbacks": [_StopAt()]}):
        with pytest.raises(ValueError, match="network='pca' is solved in closed form"):
            fit_pca(ds, "u", sample_dim="sample", latent_dim=2, **kw)
    with pytest.raises(ValueError, match="time_limit must be"):
        fit_pca(ds, "u", sample_dim="sample", latent_dim=2, time_limit=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PCA's own validation note
        assert fit_pca(ds, "u", sample_dim="sample", latent_dim=2, time_limit="1min").latent_dim == 2


def test_every_training_fit_documents_the_shared_options_in_full() -> None:
    import inspect

    from xsciml._docs import SHARED
    from xsciml.downscale.diffusion import fit_diffusion
    from xsciml.inverse.sip import fit_inversion
    from xsciml.models import fit_autoencoder, fit_dynamics, fit_field, fit_latent
    from xsciml.models.dino import fit_dino
    from xsciml.models.smooth import fit_smooth_dynamics

    for func in (fit_field, fit_latent, fit_autoencoder, fit_dino, fit_smooth_dynamics, fit_dynamics,
                 fit_diffusion, fit_inversion):
        doc = inspect.getdoc(func) or ""
        assert "{training_options}" not in doc, func.__name__
        assert SHARED["training_options"] in doc, func.__name__
        assert {"checkpoint", "resume", "callbacks", "time_limit"} <= set(inspect.signature(func).parameters)
