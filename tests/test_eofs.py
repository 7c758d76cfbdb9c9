"""EOF kernels (xsciml.eofs) and the validation of the latent models' defaults."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

import xsciml
from xsciml import eofs
from xsciml.models._snapshot_validation import warn_if_worse


def lowrank(S=60, P=120, rank=4, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    modes = np.linalg.qr(rng.normal(size=(P, rank)))[0].T * np.sqrt(P)
    amps = rng.normal(size=(S, rank)) * (2.0 ** -np.arange(rank))
    return 3.0 + amps @ modes + noise * rng.normal(size=(S, P))


def test_eof_decomposition_matches_svd_on_both_branches():
    for shape in [(8, 30), (30, 8)]:
        Y = np.random.default_rng(1).normal(size=shape)
        mean, V, lam = eofs.eof_decomposition(Y)
        sv = np.linalg.svd(Y - Y.mean(0), compute_uv=False)
        np.testing.assert_allclose(lam, (sv**2 / (shape[0] - 1))[: len(lam)], rtol=1e-10)
        A = Y - mean
        np.testing.assert_allclose((A @ V.T) @ V, A, atol=1e-8)  # full rank: exact reconstruction


def test_out_of_sample_noise_many_ranks_equals_one_at_a_time():
    Y = lowrank()
    ks = np.array([1, 2, 4, 8])
    many = eofs.out_of_sample_noise(Y, ks)
    one = [eofs.out_of_sample_noise(Y, int(k)) for k in ks]
    np.testing.assert_allclose(many, one, rtol=1e-12)
    # rank 4 data, noise std 0.05: the residual past the true rank is the noise variance
    assert 0.6 * 0.05**2 < many[2] < 1.5 * 0.05**2
    assert many[0] > 10 * many[2]


def test_map_reconstruct_equals_the_gaussian_conditional_mean():
    rng = np.random.default_rng(2)
    P, k = 15, 3
    V = np.linalg.qr(rng.normal(size=(P, k)))[0].T
    prior, s2, mean = np.array([4.0, 2.0, 0.5]), 0.1, rng.normal(size=P)
    y = rng.normal(size=(1, P))
    obs = rng.random((1, P)) < 0.4
    got = eofs.map_reconstruct(y, obs, mean, V, prior, s2)
    C = V.T @ np.diag(prior) @ V  # prior covariance of the field
    o = obs[0]
    want = mean + C[:, o] @ np.linalg.solve(C[np.ix_(o, o)] + s2 * np.eye(o.sum()), y[0, o] - mean[o])
    np.testing.assert_allclose(got[0], want, rtol=1e-9, atol=1e-9)


def test_select_rank_finds_the_signal_rank_and_scores_the_reference():
    Y = lowrank(S=80, rank=4, noise=0.02)
    sel = eofs.select_rank(Y[:70], Y[70:], max_rank=32, fractions=(0.2,))
    assert sel.rank >= 4
    assert sel.scores[sel.rank][0] < 0.1 < sel.scores[1][0]
    k_ref, v_ref = sel.best_reference()
    assert v_ref == sel.reference[k_ref] and v_ref[0] == min(v[0] for v in sel.reference.values())
    with pytest.raises(ValueError, match="masks must be 1 boolean arrays"):
        eofs.select_rank(Y[:70], Y[70:], fractions=(0.2,), masks=[np.ones((3, 3), bool)])


def snapshots(S=40, seed=0):
    Y = lowrank(S=S, P=16 * 12, rank=5, noise=0.05, seed=seed).reshape(S, 16, 12)
    return xr.Dataset({"u": (("time", "y", "x"), Y, {"units": "m"})},
                      coords={"time": np.arange(S), "y": np.linspace(0, 1, 16), "x": np.linspace(0, 1, 12)})


def test_pca_default_rank_is_validated_and_refitted_on_all_snapshots():
    ds = snapshots()
    pca = ds.sciml.fit_autoencoder("u", sample_dim="time")
    val = pca.info["validation"]
    assert val["latent_dim_chosen"] and val["n_snapshots"] == 4 and val["fractions"] == [0.1, 0.02]
    assert pca.latent_dim >= 5  # the signal rank
    assert pca.principal_components.sizes["time"] == 40  # refitted on every snapshot
    assert val["nrmse"][0] < 0.2 and val["nrmse"][0] <= 1.01 * val["nrmse_pca_map"][0]
    assert "PCA-MAP" in pca.summary() and "chosen by validation" in pca.summary()
    assert pca.info["noise"] in ("out-of-sample", "discarded variance")
    fixed = ds.sciml.fit_autoencoder("u", sample_dim="time", latent_dim=3, val_fraction=0)
    assert fixed.latent_dim == 3 and fixed.info["validation"] == {"status": "off (val_fraction=0)"}
    few = snapshots(S=6).sciml.fit_autoencoder("u", sample_dim="time")
    assert few.latent_dim == 5 and "validation needs at least 10" in few.info["validation"]["status"]


def test_fit_latent_default_rank_codes_for_every_snapshot_and_round_trip(tmp_path):
    ds = snapshots()
    li = ds.sciml.fit_latent("u", sample_dim="time", steps=20, batch_size=1024, progress=False)
    val = li.info["validation"]
    assert val["latent_dim_chosen"] and li.latent_dim >= 5
    assert val["kept"] in ("trained", "pca") and "nrmse_pca_start" in val
    assert val["nrmse"] == (val["nrmse_pca_start"] if val["kept"] == "pca" else val["nrmse_trained"])
    assert li.codes.sizes["time"] == 40 and li.codes.time.values[-1] == 39
    assert val["nrmse"][0] <= 1.01 * val["nrmse_pca_map"][0]
    text = li.summary()
    assert "reference: PCA-MAP" in text and f"latent_dim: {li.latent_dim}" in text
    li.save(tmp_path / "li")
    back = xsciml.load(tmp_path / "li")
    assert back.info["validation"] == val
    np.testing.assert_array_equal(back.codes.values, li.codes.values)


def test_warning_names_both_numbers_when_pca_map_is_better():
    val = {"fractions": [0.1, 0.02], "nrmse": [0.30, 0.50], "nrmse_pca_map": [0.25, 0.499],
           "pca_map_rank": 16, "n_snapshots": 5}
    match = r"0\.3000 is above that of PCA-MAP at its validated rank 16 \(0\.2500\)"
    with pytest.warns(UserWarning, match=match) as rec:
        warn_if_worse(val, "fit_latent")
    assert len(rec) == 1  # 0.50 vs 0.499 is within the margin
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_worse({**val, "nrmse": [0.25, 0.49]}, "fit_latent")


def test_bad_val_fraction_and_latent_dim():
    ds = snapshots(S=12)
    with pytest.raises(ValueError, match="val_fraction must be in"):
        ds.sciml.fit_latent("u", sample_dim="time", val_fraction=1.5, steps=0)
    with pytest.raises(ValueError, match="latent_dim"):
        ds.sciml.fit_latent("u", sample_dim="time", latent_dim=0, steps=0)


def test_eof_kernels_refuse_gappy_or_mismatched_matrices():
    Y = lowrank(S=20, P=30)
    bad = Y.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="Y has 1 NaN or infinite values"):
        eofs.eof_decomposition(bad)
    val = Y[15:].copy()
    val[0, 0] = np.inf
    with pytest.raises(ValueError, match="validation has 1 NaN or infinite"):
        eofs.select_rank(Y[:15], val)
    with pytest.raises(ValueError, match="validation has 29 points per snapshot, train 30"):
        eofs.select_rank(Y[:15], Y[15:, :29])
    with pytest.raises(ValueError, match=r"must be a \[snapshots, points\] matrix"):
        eofs.eof_decomposition(Y[0])
