"""Rate-constrained VAE and D-VAE (Yu et al. 2024): models, KLD, rate constraint, training, Algorithm 1, driver."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from poisonbook import checks, data, profiles
from poisonbook.defend import vae as V
from poisonbook.models import DVAE, RateVAE

TINY = dict(width=4, latent=8)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
@pytest.mark.parametrize("embed", ["paper", "code"])
def test_dvae_builds_and_runs_at_both_shapes_with_images_in_0_1(shape, embed):
    torch.manual_seed(0)
    m = DVAE(shape[0], 10, shape[1], width=8, latent=16, embed=embed)
    x, y = torch.rand(4, *shape), torch.tensor([0, 3, 3, 9])
    out = m(x, y)
    assert out["x_hat"].shape == x.shape and out["p_hat"].shape == x.shape
    assert out["mu"].shape == (4, 16, shape[1] // 2, shape[2] // 2)
    assert 0 <= out["x_hat"].min() and out["x_hat"].max() <= 1
    assert out["p_hat"].min() < 0 < out["p_hat"].max()  # signed: no sigmoid on the perturbation branch
    # the class enters the perturbation branch only: changing y changes p_hat, not x_hat
    out2 = m(x, torch.tensor([1, 1, 1, 1]), sample=False)
    out1 = m(x, y, sample=False)
    assert torch.allclose(out1["x_hat"], out2["x_hat"]) and not torch.allclose(out1["p_hat"], out2["p_hat"])


def test_paper_sized_encoder_gives_a_128x16x16_map_on_cifar_shapes():
    m = RateVAE(3)  # width 64: ResNet-18 stem, layer1, layer2[0]
    assert m.encoder(torch.rand(2, 3, 32, 32)).shape == (2, 128, 16, 16)
    assert m.to_mu.out_channels == 256 and m.post_conv.out_channels == 128


def test_kld_matches_a_monte_carlo_estimate_of_the_kl_divergence():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(2, 5, 3, 3, generator=g, dtype=torch.float64)
    n = 200_000  # KL(q || p) = E_q[log q(z) - log p(z)], summed over channels, averaged over batch and positions
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, *mu.shape, generator=g, dtype=torch.float64)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    ratio = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(2)  # over channels
    mc = ratio.mean()
    se = ratio.mean((1, 2, 3)).std() / math.sqrt(n) * 4 + 1e-3
    assert abs(float(V.kld(mu, logvar)) - float(mc)) < float(se)


def test_rate_constraint_has_zero_gradient_below_the_target_and_pulls_above_it():
    mu = torch.full((1, 4, 2, 2), 0.1, requires_grad=True)
    logvar = torch.zeros(1, 4, 2, 2, requires_grad=True)
    kl = V.kld(mu, logvar)
    assert float(kl.detach()) < 1.0
    V.rate_constraint(kl, 1.0).backward()
    assert mu.grad.abs().max() == 0 and logvar.grad.abs().max() == 0
    mu2 = torch.full((1, 4, 2, 2), 2.0, requires_grad=True)
    V.rate_constraint(V.kld(mu2, torch.zeros(1, 4, 2, 2)), 1.0).backward()
    assert mu2.grad.min() > 0  # descending lowers |mu|


def test_training_resumes_bit_identically(tmp_path, monkeypatch):
    x, y = torch.rand(24, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(24) % 3
    kw = dict(kld_target=0.5, epochs=3, batch_size=8, seed=0, **TINY)
    full, _ = V.train_dvae(x, y, 3, **kw)
    ck = tmp_path / "ck.pt"

    class Stop(Exception):
        pass
    orig = V.Checkpoint.save
    calls = {"n": 0}

    def save_then_stop(self, state):
        orig(self, state)
        calls["n"] += 1
        if calls["n"] == 2:
            raise Stop
    monkeypatch.setattr(V.Checkpoint, "save", save_then_stop)
    with pytest.raises(Stop):  # killed after epoch 2's checkpoint
        V.train_dvae(x, y, 3, checkpoint=ck, **kw)
    monkeypatch.undo()
    resumed, hist = V.train_dvae(x, y, 3, checkpoint=ck, **kw)
    assert len(hist["loss"]) == 3
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def planted():
    """200 Fashion-MNIST images (16x16), a class-wise and a sample-wise sign perturbation of the same size."""
    d = data.subset(data.load("fashion-mnist", "train"), 200, seed=0)
    x = F.interpolate(d.x, size=16, mode="area")
    g = torch.Generator().manual_seed(1)
    eps = 32 / 255
    classwise = (torch.sign(torch.randn(10, *x.shape[1:], generator=g)) * eps)[d.y]
    samplewise = torch.sign(torch.randn(x.shape, generator=g)) * eps
    return x, d.y, {"classwise": classwise, "samplewise": samplewise}


def _recovery(x, y, p, epochs):
    xp = (x + p).clamp(0, 1)
    m, _ = V.train_dvae(xp, y, 10, kld_target=1.0, epochs=epochs, batch_size=16, width=8, latent=16, seed=0)
    _, ph = V.dvae_infer(m, xp, y)
    return F.cosine_similarity(ph.flatten(1), (xp - x).flatten(1)).mean().item(), xp, ph


@pytest.mark.slow
def test_dvae_recovers_a_classwise_perturbation_far_better_than_a_samplewise_one(planted):
    x, y, ps = planted
    cos_c, xp, ph = _recovery(x, y, ps["classwise"], RECOVERY_EPOCHS)
    cos_s, _, _ = _recovery(x, y, ps["samplewise"], RECOVERY_EPOCHS)
    assert cos_c > cos_s + RECOVERY_MARGIN, (cos_c, cos_s)


RECOVERY_EPOCHS, RECOVERY_MARGIN = 30, 0.05  # a real run gave cos 0.097 vs -0.023 (margin 0.12)


@pytest.mark.slow
def test_stage_outputs_stay_in_0_1_and_purification_brings_the_poisons_nearer_the_clean_images(planted):
    x, y, ps = planted
    xp = (x + 2 * ps["classwise"]).clamp(0, 1)  # 64/255: at 32/255 and 30 epochs stage 1 did not get nearer (a run)
    r = V.dvae_purify(xp, y, 10, kld1=1.0, kld2=3.0, epochs=RECOVERY_EPOCHS, batch_size=16, width=8, latent=16)
    for t in (r.x1, r.x2, r.x3, r.x3_mean):
        assert t.shape == x.shape and t.min() >= 0 and t.max() <= 1
    dist = lambda a: (a - x).flatten(1).norm(dim=1).mean().item()  # noqa: E731
    assert dist(r.x1) < dist(xp)


@pytest.mark.slow
def test_driver_runs_at_a_tiny_scale():
    from poisonbook.experiments import dvae as D
    cfg = profiles.get("dvae-purification", "ci", ue_overrides={"train_size": 40, "test_size": 40, "epochs": 1},
                       attacks=["lsp"], targets=[0.5, 4.0], vae_epochs=1, table1=True)
    rec = D.dvae_table(cfg)
    m = rec["metrics"]
    assert 0 <= m["fashion-mnist-rgb.lsp.dvae.test_acc"] <= 100 and m["fashion-mnist-rgb.lsp.p_l2"] > 0
    assert m["kld1"] < m["kld2"]


def test_select_targets_follows_the_psnr_bands():
    from poisonbook.experiments.dvae import select_targets
    assert select_targets({0.25: 17.0, 0.5: 20.8, 1.0: 24.0, 2.0: 27.5, 4.0: 29.2}) == (0.5, 4.0)


@pytest.mark.parametrize("fn,error,word", [
    (lambda: V.kld(torch.zeros(2, 3), torch.zeros(2, 4)), checks.BadInput, "shape"),
    (lambda: V.train_vae(torch.rand(2, 1, 7, 7), kld_target=1.0), checks.BadInput, "even"),
    (lambda: V.train_vae(torch.rand(2, 1, 8, 8) * 3, kld_target=1.0), checks.BadInput, "[0, 1]"),
    (lambda: V.train_dvae(torch.rand(2, 1, 8, 8), torch.tensor([0, 5]), 3, kld_target=1.0), checks.BadInput, "y"),
    (lambda: V.train_dvae(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 3, kld_target=-1.0), checks.BadInput,
     "kld_target"),
    (lambda: V.train_dvae(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 3, kld_target=1.0, embed="x"),
     checks.BadInput, "embed"),
    (lambda: V.dvae_purify(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), 3, z="median"), checks.BadInput, "z"),
    (lambda: V.train_vae(torch.rand(2, 1, 8, 8), kld_target=1.0, lr=0.0), checks.BadInput, "lr"),
], ids=["kld-shape", "odd-size", "range", "labels", "target", "embed", "z", "lr"])
def test_bad_input_gives_a_clear_error(fn, error, word):
    with pytest.raises(error) as info:
        fn()
    assert word in str(info.value)


def test_detection_scores_count_flags_against_the_truth():
    """Table 8's columns, against counts by hand: recall is over the true UEs, precision over the flagged."""
    from poisonbook.experiments import dvae as chapter

    truth = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    flags = torch.tensor([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)  # 3 TP, 1 FN, 2 FP, 4 TN
    s = chapter.detection_scores(flags, truth)
    assert s["acc"] == pytest.approx(7 / 10) and s["recall"] == pytest.approx(3 / 4)
    assert s["precision"] == pytest.approx(3 / 5) and s["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))


def test_mixed_set_poisons_exactly_the_ratio_and_keeps_the_rest_clean():
    from poisonbook.experiments import dvae as chapter

    clean = torch.rand(50, 3, 4, 4)
    s = {"x": (clean + 0.1).clamp(0, 1), "clean": clean, "y": torch.arange(50) % 5}
    x, truth = chapter._mixed(s, 0.4, seed=1)
    assert int(truth.sum()) == 20
    assert torch.equal(x[truth], s["x"][truth]) and torch.equal(x[~truth], clean[~truth])
    assert not torch.equal(truth, chapter._mixed(s, 0.4, seed=2)[1])
