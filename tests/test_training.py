"""Tests for :mod:`xsciml.training`: the one training loop."""

from __future__ import annotations

import json
import math
from collections import namedtuple

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xsciml.training import History, TrainState, fit, iterate_minibatches, move_to_device

W_TRUE = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-1.5, 1.0]])
B_TRUE = torch.tensor([0.3, -0.2, 1.0])
CPU = {"device": "cpu", "progress": False}


def linear_data(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return x, x @ W_TRUE.T + B_TRUE


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
    return nn.functional.mse_loss(model(x), y)


def linear_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(2, 3)


def dropout_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))


class Provider:
    """Streaming data source with the ``batches(batch_size, shuffle, seed)`` protocol."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.calls = x, y, []

    def batches(self, batch_size: int, shuffle: bool, seed: int):
        self.calls.append((batch_size, shuffle, seed))
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.x), generator=g) if shuffle else torch.arange(len(self.x))
        return [(self.x[i], self.y[i]) for i in order.split(batch_size)]


def generated_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(64, 2, generator=g)
    return x, x @ W_TRUE.T + B_TRUE


# --------------------------------------------------------------------------- learning


def test_learns_known_linear_map():
    x, y = linear_data()
    model = linear_model()
    hist = fit(model, mse, (x, y), steps=200, batch_size=64, lr=0.1, **CPU)
    torch.testing.assert_close(model.weight.detach(), W_TRUE, atol=2e-3, rtol=0)
    torch.testing.assert_close(model.bias.detach(), B_TRUE, atol=2e-3, rtol=0)
    assert hist.steps == len(hist.loss) == len(hist.lr) == 200
    assert hist.loss[0] > 1.0 and hist.loss[-1] < 1e-4
    assert hist.device == "cpu" and hist.wall_time > 0
    assert hist.val_loss == [] and hist.best_step is None and not hist.stopped_early


def _form(name: str):
    x, y = linear_data()
    if name == "tuple":
        return (x, y)
    if name == "list":
        return [x, y]
    if name == "dict":
        return {"x": x, "y": y}
    if name == "dataset":
        return TensorDataset(x, y)
    if name == "dataloader":
        return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True,
                          generator=torch.Generator().manual_seed(0))
    if name == "list_of_batches":
        return list(zip(x.split(64), y.split(64), strict=True))
    if name == "callable":
        return generated_batch
    if name == "provider":
        return Provider(x, y)
    raise AssertionError(name)


@pytest.mark.parametrize("form", ["tuple", "list", "dict", "dataset", "dataloader",
                                  "list_of_batches", "callable", "provider"])
def test_every_data_form_learns(form):
    model = linear_model()
    hist = fit(model, mse, _form(form), steps=150, batch_size=64, lr=0.1, **CPU)
    assert hist.steps == 150
    torch.testing.assert_close(model.weight.detach(), W_TRUE, atol=1e-2, rtol=0)


@pytest.mark.parametrize("form", ["tensors", "dataset"])
def test_epochs_visit_every_sample_once_in_fresh_order(form):
    n, bs, epochs = 10, 4, 3
    idx, x = torch.arange(n), torch.randn(n, 2)
    data = (idx, x) if form == "tensors" else TensorDataset(idx, x)
    seen: list[torch.Tensor] = []

    def loss_fn(model, batch):
        seen.append(batch[0].clone())
        return model(batch[1]).pow(2).mean()

    hist = fit(nn.Linear(2, 1), loss_fn, data, epochs=epochs, batch_size=bs, **CPU)
    per_epoch = math.ceil(n / bs)
    assert hist.steps == epochs * per_epoch == len(seen)
    assert [len(b) for b in seen] == [4, 4, 2] * epochs
    orders = [torch.cat(seen[e * per_epoch:(e + 1) * per_epoch]) for e in range(epochs)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
    assert len({tuple(o.tolist()) for o in orders}) == epochs  # a fresh permutation each epoch


def test_provider_called_once_per_epoch_with_shifted_seed():
    x, y = linear_data(40)
    train, val = Provider(x, y), Provider(x[:8], y[:8])
    hist = fit(linear_model(), mse, train, val_data=val, epochs=3, batch_size=16, seed=7,
               val_every=2, **CPU)
    assert train.calls == [(16, True, 7), (16, True, 8), (16, True, 9)]
    assert hist.steps == 9
    assert val.calls and all(c == (16, False, 7) for c in val.calls)


def test_one_shot_iterator_exhaustion_is_explained():
    x, y = linear_data(128)
    batches = iter(list(zip(x.split(64), y.split(64), strict=True)))
    with pytest.raises(ValueError, match="one-shot"):
        fit(linear_model(), mse, batches, steps=5, **CPU)


# --------------------------------------------------------------------------- helpers


def test_iterate_minibatches_order_cover_and_seed():
    x, y = torch.arange(7.0), torch.arange(7) * 10
    ordered = list(iterate_minibatches([x, y], 3, shuffle=False))
    assert [b[1].tolist() for b in ordered] == [[0, 10, 20], [30, 40, 50], [60]]
    assert isinstance(ordered[0], tuple) and ordered[0][0]._base is x  # views, no copy

    def run(seed):
        return [b for b in iterate_minibatches({"x": x, "y": y}, 3, torch.Generator().manual_seed(seed))]

    a, b, c = run(1), run(1), run(2)
    assert all(set(d) == {"x", "y"} for d in a)
    got = torch.cat([d["x"] for d in a])
    assert sorted(got.tolist()) == x.tolist() and not torch.equal(got, x)
    torch.testing.assert_close(torch.cat([d["y"] for d in a]), got.long() * 10)  # rows stay paired
    assert torch.equal(got, torch.cat([d["x"] for d in b]))
    assert not torch.equal(got, torch.cat([d["x"] for d in c]))
    with pytest.raises(ValueError, match="first"):
        iterate_minibatches((x, y[:3]), 2)
    with pytest.raises(ValueError, match="batch_size"):
        iterate_minibatches(x, 0)


def test_move_to_device_recurses_and_keeps_types():
    Pair = namedtuple("Pair", "a b")
    t = torch.arange(3.0)
    batch = {"x": t, "nested": [Pair(t, "label"), (t, 5)], "none": None}
    out = move_to_device(batch, "cpu")
    assert isinstance(out["nested"][0], Pair) and out["nested"][0].b == "label"
    assert isinstance(out["nested"], list) and isinstance(out["nested"][1], tuple)
    assert out["nested"][1][1] == 5 and out["none"] is None
    assert torch.equal(out["nested"][0].a, t) and out["x"].device == torch.device("cpu")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("form", ["tensors", "dataset", "dataloader", "provider"])
def test_val_loss_is_size_weighted_mean_over_all_val_data(form):
    x, y = linear_data(64)
    xv, yv = linear_data(10, seed=1)
    val = {"tensors": (xv, yv), "dataset": TensorDataset(xv, yv),
           "dataloader": DataLoader(TensorDataset(xv, yv), batch_size=4),
           "provider": Provider(xv, yv)}[form]
    model = linear_model()
    with torch.no_grad():
        expected = nn.functional.mse_loss(model(xv), yv).item()
    # lr=0 freezes the weights, so every check must give the full-data loss
    hist = fit(model, mse, (x, y), val_data=val, steps=12, batch_size=4, lr=0.0,
               val_every=5, **CPU)
    assert [s for s, _ in hist.val_loss] == [5, 10, 12]
    for _, v in hist.val_loss:
        assert v == pytest.approx(expected, rel=1e-6)


def test_callable_val_data_is_one_fixed_batch_unlike_training():
    seen = {True: [], False: []}

    def loss_fn(model, batch):
        seen[model.training].append(batch[0].clone())
        return mse(model, batch)

    model = linear_model()
    hist = fit(model, loss_fn, generated_batch, val_data=generated_batch, steps=6, lr=0.0,
               val_every=2, **CPU)
    assert len(seen[False]) == 3 and all(torch.equal(b, seen[False][0]) for b in seen[False])
    assert not any(torch.equal(seen[False][0], b) for b in seen[True])
    with torch.no_grad():
        expected = mse(model, (seen[False][0], seen[False][0] @ W_TRUE.T + B_TRUE)).item()
    assert [v for _, v in hist.val_loss] == pytest.approx([expected] * 3)


def test_val_fraction_split_and_modes():
    n = 50
    idx, x = torch.arange(n), torch.randn(n, 2)
    seen = {"train": set(), "val": set()}
    flags = set()

    def loss_fn(model, batch):
        flags.add((model.training, torch.is_grad_enabled()))
        seen["train" if model.training else "val"].update(batch[0].tolist())
        return model(batch[1]).pow(2).mean()

    model = nn.Linear(2, 1).eval()
    fit(model, loss_fn, (idx, x), val_fraction=0.2, steps=20, batch_size=8, val_every=5, **CPU)
    assert len(seen["val"]) == 10 and len(seen["train"]) == 40
    assert seen["train"].isdisjoint(seen["val"]) and seen["train"] | seen["val"] == set(range(n))
    assert flags == {(True, True), (False, False)}  # train w/ grad, eval under no_grad
    assert model.training is False  # original mode restored


def _early_stopping_run(restore_best: bool):
    torch.manual_seed(0)
    x = torch.randn(64, 1)
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    snapshots = {}

    def snap(state: TrainState):
        snapshots[state.step] = state.model.weight.detach().clone()

    # training pulls w from 0 towards 2; validation wants w = 1: val loss falls then rises
    hist = fit(model, mse, (x, 2 * x), val_data=(x, x), steps=500, batch_size=64,
               optimizer="sgd", lr=0.05, val_every=1, early_stopping=3,
               restore_best=restore_best, callbacks=[snap], **CPU)
    return model, hist, snapshots


def test_early_stopping_stops_and_restores_best_weights():
    model, hist, snapshots = _early_stopping_run(restore_best=True)
    assert hist.stopped_early and hist.stop_reason == "early_stopping"
    assert hist.steps < 500 and hist.steps == hist.best_step + 3
    assert hist.best_val_loss == min(v for _, v in hist.val_loss)
    assert torch.equal(model.weight.detach(), snapshots[hist.best_step])
    assert abs(model.weight.item() - 1.0) < 0.1

    last, hist2, snaps2 = _early_stopping_run(restore_best=False)
    assert hist2.best_step == hist.best_step
    assert torch.equal(last.weight.detach(), snaps2[hist2.steps])
    assert not torch.equal(last.weight.detach(), snaps2[hist2.best_step])


# --------------------------------------------------------------------------- optimizers, schedules


def _one_sgd_step(optimizer_for, **kw) -> float:
    """Weight after one step from w = 1 on loss w * 1 (gradient 1), so SGD gives w = 1 - lr."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 1.0)
    fit(model, lambda m, b: m(b[0]).sum(), (torch.ones(1, 1),), steps=1,
        optimizer=optimizer_for(model), **kw, **CPU)
    return model.weight.item()


def test_optimizer_forms():
    assert _one_sgd_step(lambda m: "sgd", lr=0.1) == pytest.approx(0.9)
    # weight decay adds wd * w to the gradient
    assert _one_sgd_step(lambda m: "SGD", lr=0.1, weight_decay=0.5) == pytest.approx(1 - 0.1 * 1.5)
    assert _one_sgd_step(lambda m: torch.optim.SGD, lr=0.2) == pytest.approx(0.8)
    assert _one_sgd_step(lambda m: lambda p: torch.optim.SGD(p, lr=0.5)) == pytest.approx(0.5)
    assert _one_sgd_step(lambda m: torch.optim.SGD(m.parameters(), lr=0.25)) == pytest.approx(0.75)


def test_params_subset_only_updates_those():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Linear(4, 3))
    before = [p.detach().clone() for p in model.parameters()]
    x, y = linear_data(32)
    fit(model, mse, (x, y), steps=5, params=model[1].parameters(), lr=0.1, **CPU)
    after = list(model.parameters())
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])
    assert not torch.equal(after[2], before[2])


def _lrs(scheduler, steps=30, lr=0.1, **kw):
    x, y = linear_data(32)
    model = linear_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    hist = fit(model, mse, (x, y), steps=steps, batch_size=32, optimizer=opt,
               scheduler=scheduler, **CPU, **kw)
    return np.array(hist.lr), opt.param_groups[0]["lr"]


def test_cosine_schedule_follows_formula_and_ends_at_zero():
    lrs, final = _lrs("cosine")
    k = np.arange(30)
    np.testing.assert_allclose(lrs, 0.05 * (1 + np.cos(np.pi * k / 30)), rtol=1e-6, atol=1e-12)
    assert np.all(np.diff(lrs) <= 0) and final == pytest.approx(0.0, abs=1e-12)


def test_other_named_schedules():
    lrs, _ = _lrs("exponential")
    np.testing.assert_allclose(lrs, 0.1 * 0.01 ** (np.arange(30) / 30), rtol=1e-6)
    lrs, _ = _lrs("step")
    np.testing.assert_allclose(lrs, 0.1 * 0.1 ** (np.arange(30) // 10), rtol=1e-6)
    lrs, _ = _lrs("onecycle")
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs.max() == pytest.approx(0.1, rel=0.02)
    assert lrs[-1] < 1e-3


def test_plateau_schedule_halves_lr_on_flat_validation():
    x = torch.ones(4, 1)
    model = nn.Linear(1, 1, bias=False)
    flat = lambda m, b: (m(b[0]) * 0).sum() + 1.0  # noqa: E731 - constant loss, never improves
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hist = fit(model, flat, (x,), val_data=(x,), steps=8, optimizer=opt, scheduler="plateau",
               val_every=1, **CPU)
    # first check sets the best; ReduceLROnPlateau(patience=2) halves after 3 bad checks
    assert hist.lr == pytest.approx([0.1] * 4 + [0.05] * 3 + [0.025])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)


def test_scheduler_callable_gets_total_steps():
    got = []

    def make(opt, total):
        got.append(total)
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))

    x, y = linear_data(10)
    hist = fit(linear_model(), mse, (x, y), epochs=2, batch_size=4, lr=0.1, scheduler=make, **CPU)
    assert got == [6]
    assert hist.lr == pytest.approx([0.1 / (1 + s) for s in range(6)])


def test_grad_clip_bounds_gradient_norm():
    x, y = linear_data(64)

    def max_norm(clip):
        norms = []

        def record(state: TrainState):
            grads = [p.grad for p in state.model.parameters()]
            norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

        fit(linear_model(), mse, (x, 100 * y), steps=10, batch_size=16, grad_clip=clip,
            callbacks=[record], **CPU)
        return max(norms)

    assert max_norm(None) > 10.0
    assert max_norm(0.5) <= 0.5 + 1e-5


# --------------------------------------------------------------------------- reproducibility, resume


def test_same_seed_same_run_with_dropout():
    x, y = linear_data(64)

    def run(seed):
        model = dropout_model()
        hist = fit(model, mse, (x, y), steps=15, batch_size=16, lr=0.01, seed=seed, **CPU)
        return hist.loss, [p.detach().clone() for p in model.parameters()]

    (la, wa), (lb, wb), (lc, _) = run(3), run(3), run(4)
    assert la == lb and all(torch.equal(a, b) for a, b in zip(wa, wb, strict=True))
    assert la != lc


class Interrupt(Exception):
    pass


def _resume_kwargs(form: str):
    x, y = linear_data(50)
    kw = {"steps": 14, "batch_size": 16, "lr": 0.01, "scheduler": "cosine", "seed": 5, **CPU}
    if form == "tensors":
        return (x, y), {**kw, "val_fraction": 0.2, "val_every": 3}
    if form == "dataset":
        return TensorDataset(x, y), {**kw, "val_data": (x[:8], y[:8]), "val_every": 4}
    return generated_batch, kw


@pytest.mark.parametrize("form", ["tensors", "dataset", "callable"])
@pytest.mark.parametrize("how", ["crash", "callback"])
def test_resume_equals_uninterrupted(tmp_path, form, how):
    data, kw = _resume_kwargs(form)
    ref_model = dropout_model()
    ref = fit(ref_model, mse, data, **kw)

    path = tmp_path / "run" / "ckpt.pt"

    def stop_at_7(state: TrainState):
        if state.step == 7:
            if how == "crash":
                raise Interrupt
            return True
        return None

    if how == "crash":  # dies after step 7; the last checkpoint is from step 5
        with pytest.raises(Interrupt):
            fit(dropout_model(), mse, data, checkpoint=path, checkpoint_every=5,
                callbacks=[stop_at_7], **kw)
    else:  # a callback stops at step 7 and the final checkpoint is written there
        first = fit(dropout_model(), mse, data, checkpoint=path, checkpoint_every=5,
                    callbacks=[stop_at_7], **kw)
        assert first.steps == 7 and first.stop_reason == "callback"
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == (5 if how == "crash" else 7)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temp files left

    model = dropout_model(seed=123)  # different init: the checkpoint must overwrite it
    hist = fit(model, mse, data, checkpoint=path, checkpoint_every=5, resume=True, **kw)
    assert hist.loss == ref.loss and hist.val_loss == ref.val_loss and hist.lr == ref.lr
    assert hist.steps == 14 and hist.best_step == ref.best_step
    for a, b in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_without_file_starts_fresh_and_writes_it(tmp_path):
    path = tmp_path / "ckpt.pt"
    x, y = linear_data(32)
    hist = fit(linear_model(), mse, (x, y), steps=6, batch_size=8, checkpoint=path,
               resume=True, **CPU)
    assert hist.steps == 6
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 6 and History.from_dict(saved["history"]) == hist
    # resuming a finished run trains no further and keeps its history
    again = fit(linear_model(seed=9), mse, (x, y), steps=6, batch_size=8, checkpoint=path,
                resume=True, **CPU)
    assert again.loss == hist.loss and again.steps == 6


def test_corrupt_or_foreign_checkpoint_gives_clear_error(tmp_path):
    x, y = linear_data(16)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="could not read the checkpoint.*resume=False"):
        fit(linear_model(), mse, (x, y), steps=2, checkpoint=bad, resume=True, **CPU)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(ValueError, match="not an xsciml training checkpoint"):
        fit(linear_model(), mse, (x, y), steps=2, checkpoint=foreign, resume=True, **CPU)
    good = tmp_path / "good.pt"
    fit(linear_model(), mse, (x, y), steps=2, checkpoint=good, **CPU)
    with pytest.raises(ValueError, match="does not match the model"):
        fit(nn.Linear(2, 5), lambda m, b: m(b[0]).pow(2).mean(), (x, y), steps=3,
            checkpoint=good, resume=True, **CPU)


# --------------------------------------------------------------------------- failures and reporting


def test_nan_loss_raises_with_step_and_hint():
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = mse(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    x, y = linear_data(32)
    with pytest.raises(FloatingPointError, match=r"step 3.*lower lr.*grad_clip"):
        fit(linear_model(), loss_fn, (x, y), steps=10, batch_size=8, **CPU)


def test_progress_false_is_silent_and_true_is_not(capsys):
    x, y = linear_data(32)
    fit(linear_model(), mse, (x, y), steps=5, batch_size=8, device="cpu", progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    fit(linear_model(), mse, (x, y), steps=5, batch_size=8, device="cpu", progress=True,
        desc="probe-bar")
    assert "probe-bar" in capsys.readouterr().err


def test_logs_callbacks_and_history_round_trip():
    x, y = linear_data(32)
    states = []

    def loss_fn(model, batch):
        loss = mse(model, batch)
        logs = {"twice": 2 * loss.detach()}
        if len(states) >= 2:
            logs["late"] = 1.0
        return loss, logs

    def cb(state):
        states.append((state.step, state.loss, state.epoch))
        return state.step == 5

    hist = fit(linear_model(), loss_fn, (x, y), val_data=(x, y), steps=50, batch_size=8,
               val_every=2, callbacks=cb, **CPU)
    assert hist.steps == 5 and hist.stopped_early and hist.stop_reason == "callback"
    assert [s for s, _, _ in states] == [1, 2, 3, 4, 5]
    assert [loss for _, loss, _ in states] == hist.loss
    assert [e for _, _, e in states] == [0, 0, 0, 0, 1]  # 4 batches of 8 per epoch
    np.testing.assert_allclose(hist.logs["twice"], 2 * np.array(hist.loss), rtol=1e-6)
    assert np.isnan(hist.logs["late"][:2]).all() and hist.logs["late"][2:] == [1.0] * 3
    assert [s for s, _ in hist.val_loss] == [2, 4]  # no extra check after a callback stop

    back = History.from_dict(json.loads(json.dumps(hist.to_dict())))
    assert back.loss == hist.loss and back.val_loss == hist.val_loss and back.lr == hist.lr
    assert back.best_step == hist.best_step and back.stop_reason == "callback"
    np.testing.assert_array_equal(back.logs["late"], hist.logs["late"])
    df = hist.to_dataframe()
    assert list(df.index) == [1, 2, 3, 4, 5] and df.index.name == "step"
    np.testing.assert_array_equal(df["loss"], hist.loss)
    assert df["validated"].tolist() == [False, True, False, True, False]
    # the latest check carried forward: a plottable validation curve
    assert df["val_loss"].notna().tolist() == [False, True, True, True, True]
    assert df["val_loss"].tolist()[1:] == [hist.val_loss[0][1]] * 2 + [hist.val_loss[1][1]] * 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": 10, "epochs": 2}, ValueError, "either steps= or epochs="),
        ({"steps": 0}, ValueError, "steps must be a positive integer, got 0"),
        ({"optimizer": "adamx"}, ValueError, "optimizer='adamx' is not known"),
        ({"optimizer": 42}, TypeError, "optimizer must be"),
        ({"scheduler": "linear"}, ValueError, "scheduler='linear' is not known"),
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ({"val_fraction": 1.5}, ValueError, "val_fraction"),
        ({"early_stopping": 3}, ValueError, "early_stopping needs validation"),
        ({"resume": True}, ValueError, "resume=True needs checkpoint"),
        ({"grad_clip": -1.0}, ValueError, "grad_clip"),
        ({"val_fraction": 0.2, "val_data": "x"}, ValueError, "val_data= or val_fraction="),
        ({"data": "tensors"}, TypeError, "string"),
        ({"data": 42}, TypeError, "not understood"),
        ({"data": (torch.zeros(4, 2), torch.zeros(5, 3))}, ValueError, "first"),
        ({"data": generated_batch, "steps": None, "epochs": 2}, ValueError, "pass steps="),
        ({"data": DataLoader(TensorDataset(torch.zeros(4, 2), torch.zeros(4, 3))),
          "val_fraction": 0.5}, ValueError, "val_fraction only splits"),
        ({"loss_fn": lambda m, b: m(b[0])}, TypeError, "scalar loss"),
        ({"loss_fn": lambda m, b: torch.tensor(1.0)}, ValueError, "does not depend"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    x, y = linear_data(8)
    kw = {"loss_fn": mse, "data": (x, y), "steps": 2, **CPU, **kwargs}
    model = kw.pop("model", linear_model())
    with pytest.raises(error, match=match):
        fit(model, **kw)


def test_optimizer_instance_with_params_is_rejected():
    model = linear_model()
    x, y = linear_data(8)
    with pytest.raises(ValueError, match="params= cannot be combined"):
        fit(model, mse, (x, y), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            params=model.parameters(), **CPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("data_on", ["cpu", "cuda"])
def test_trains_on_gpu_and_stays_there(data_on):
    x, y = (t.to(data_on) for t in linear_data())
    model = linear_model()
    hist = fit(model, mse, (x, y), val_fraction=0.1, steps=300, batch_size=64, lr=0.05,
               device="cuda", progress=False)
    assert hist.device.startswith("cuda") and model.weight.is_cuda
    torch.testing.assert_close(model.weight.detach().cpu(), W_TRUE, atol=2e-2, rtol=0)
