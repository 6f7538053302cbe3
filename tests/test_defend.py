"""Sever, influence removal and MaxUp (Lu, Kamath & Yu, ICML 2023, Section 5.4 and Appendix C.10).

Real data: a stratified 300-image subset of the sklearn digits (8x8), a logistic regression
trained on it, and a planted poison set (label-flipped copies pushed off the data manifold).
"""

import pytest
import torch
from torch.nn import functional as F

from poisonbook import data, models, train
from poisonbook.defend import (influence_removal, influence_scores, maxup_fit, maxup_loss,
                               per_sample_gradients, sever, sever_scores)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planted():
    d = data.subset(data.load("digits", "train"), 300, seed=0)
    g = torch.Generator().manual_seed(0)
    m = 30  # 10% poisons: copies of clean points with a wrong label and an off-range bright patch
    idx = torch.randperm(len(d), generator=g)[:m]
    Xp = d.x[idx].clone()
    Xp[:, :, 2:6, 2:6] = 3.0
    yp = (d.y[idx] + 1 + torch.randint(0, 9, (m,), generator=g)) % 10
    X, y = torch.cat([d.x, Xp]), torch.cat([d.y, yp])
    is_poison = torch.cat([torch.zeros(len(d), dtype=torch.bool), torch.ones(m, dtype=torch.bool)])
    torch.manual_seed(0)
    net = models.LogisticRegression(1, 10, 8)
    train.fit(net, X, y, epochs=30, lr=0.1, batch_size=32)
    return X, y, is_poison, net


def test_per_sample_gradients_match_autograd(planted):
    X, y, _, net = planted
    G = per_sample_gradients(net, F.cross_entropy, X[:5], y[:5], batch_size=2)
    for i in range(5):
        net.zero_grad()
        F.cross_entropy(net(X[i:i + 1]), y[i:i + 1]).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        assert torch.allclose(G[i], ref, atol=1e-6)
    net.zero_grad(set_to_none=True)
    Gw = per_sample_gradients(net, F.cross_entropy, X[:5], y[:5], param_names=["linear.weight"])
    assert torch.allclose(Gw, G[:, :640])


def test_sever_removes_more_poisons_than_clean_points(planted):
    X, y, is_poison, net = planted
    res = sever(net, F.cross_entropy, X, y, 0.1)
    assert len(res.removed) == round(0.1 * len(X)) and int((~res.keep).sum()) == len(res.removed)
    removed_poison = (~res.keep & is_poison).sum() / is_poison.sum()
    removed_clean = (~res.keep & ~is_poison).sum() / (~is_poison).sum()
    assert removed_poison > 0.5 and removed_poison > 5 * removed_clean
    # squared scores give the same ranking; the scores are |projection| on the top singular vector
    s, s2 = sever_scores(net, F.cross_entropy, X, y), sever_scores(net, F.cross_entropy, X, y, squared=True)
    assert torch.allclose(s.double() ** 2, s2.double(), rtol=1e-4, atol=1e-8)
    G = per_sample_gradients(net, F.cross_entropy, X, y).double()
    Gc = G - G.mean(0)
    v = torch.linalg.svd(Gc, full_matrices=False).Vh[0]
    assert torch.allclose(s.double(), (Gc @ v).abs(), rtol=1e-3, atol=1e-5)


def test_sever_iterates_with_refit(planted):
    X, y, is_poison, net = planted
    calls = []

    def refit(Xk, yk):
        calls.append(len(Xk))
        torch.manual_seed(0)
        m = models.LogisticRegression(1, 10, 8)
        train.fit(m, Xk, yk, epochs=5, lr=0.1, batch_size=64)
        return m

    res = sever(net, F.cross_entropy, X, y, 0.1, iterations=3, refit=refit)
    assert len(calls) == 2 and len(res.removed) == round(0.1 * len(X))
    assert (~res.keep & is_poison).sum() > (~res.keep & ~is_poison).sum()
    assert torch.isnan(res.scores[res.removed[:5]]).all()  # removed in earlier rounds


def test_influence_removal_prefers_poisons(planted):
    X, y, is_poison, net = planted
    res = influence_removal(net, F.cross_entropy, X, y, 0.1)
    removed_poison = (~res.keep & is_poison).float().sum() / is_poison.sum()
    removed_clean = (~res.keep & ~is_poison).float().sum() / (~is_poison).sum()
    assert removed_poison > 2 * removed_clean
    # self-influence equals g^T (H + lambda I)^-1 g computed by hand on a few points
    s = influence_scores(net, F.cross_entropy, X, y, damping=0.1, param_names=["linear.bias"])
    G = per_sample_gradients(net, F.cross_entropy, X, y, param_names=["linear.bias"]).double()
    p = torch.softmax(net(X), 1).double().detach()
    H = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    H = H + 0.1 * torch.eye(10, dtype=torch.float64)
    ref = (G * torch.linalg.solve(H, G.T).T).sum(1)
    assert torch.allclose(s.double(), ref, rtol=1e-3)


def test_influence_on_reference_loss_matches_the_formula_by_hand(planted):
    """With a reference set, the score is -g_ref^T (H + lambda I)^-1 g_i (Koh & Liang eq. 2), here for the bias,
    whose per-sample gradient p_i - e_{y_i} and Hessian mean(diag p - p p^T) are written out by hand."""
    X, y, is_poison, net = planted
    d_val = data.load("digits", "val")
    s = influence_scores(net, F.cross_entropy, X, y, X_ref=d_val.x, y_ref=d_val.y, damping=0.1,
                         param_names=["linear.bias"])
    with torch.no_grad():
        p, p_ref = torch.softmax(net(X), 1).double(), torch.softmax(net(d_val.x), 1).double()
    G = p - F.one_hot(y, 10).double()
    g_ref = (p_ref - F.one_hot(d_val.y, 10).double()).mean(0)
    H = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0) + 0.1 * torch.eye(10, dtype=torch.float64)
    ref = -(G @ torch.linalg.solve(H, g_ref))
    assert torch.allclose(s.double(), ref, rtol=1e-3, atol=1e-6)
    res = influence_removal(net, F.cross_entropy, X, y, 0.1, X_ref=d_val.x, y_ref=d_val.y)
    assert len(res.removed) == round(0.1 * len(X)) and set(res.removed.tolist()) == set(
        torch.argsort(res.scores, descending=True)[:len(res.removed)].tolist()), "the top-scored points go"


def test_maxup_loss_equals_a_naive_per_sample_maximum(planted):
    """Gong et al. eq. 2 written naively: for each sample, the largest loss over its m noisy copies, averaged."""
    X, y, _, net = planted
    x, t = X[:64], y[:64]
    mx = maxup_loss(net, F.cross_entropy, x, t, m=4, generator=torch.Generator().manual_seed(2))
    noise = torch.randn((256, 1, 8, 8), generator=torch.Generator().manual_seed(2))  # the same draws, batch-major
    naive = []
    for i in range(len(x)):
        copies = [(x[i] + 0.1 * noise[j * 64 + i]).clamp(0, 1) for j in range(4)]
        naive.append(max(float(F.cross_entropy(net(c[None]), t[i:i + 1])) for c in copies))
    assert float(mx) == pytest.approx(sum(naive) / len(naive), rel=1e-5)
    mean_of_copies = F.cross_entropy(net((x.repeat(4, 1, 1, 1) + 0.1 * noise).clamp(0, 1)), t.repeat(4))
    assert float(mx) > float(mean_of_copies) + 1e-4, "the max over copies is strictly above their mean here"


def test_maxup_fit_trains():
    d = data.subset(data.load("digits", "train"), 200, seed=1)
    torch.manual_seed(0)
    net = models.LogisticRegression(1, 10, 8)
    hist = maxup_fit(net, d.x, d.y, loss_fn=F.cross_entropy, epochs=10, lr=0.1, batch_size=32)
    assert hist[-1] < hist[0] and train.evaluate(net, d.x, d.y) > 0.8


def test_bad_inputs_raise(planted):
    X, y, _, net = planted
    with pytest.raises(ValueError, match="remove_frac"):
        sever(net, F.cross_entropy, X, y, 1.5)
    with pytest.raises(ValueError, match="remove_frac"):
        sever(net, F.cross_entropy, X, y, -0.1)
    with pytest.raises(ValueError, match="labels"):
        sever(net, F.cross_entropy, X, y[:-1], 0.1)
    Xbad = X.clone()
    Xbad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        sever(net, F.cross_entropy, Xbad, y, 0.1)
    with pytest.raises(ValueError, match="refit"):
        sever(net, F.cross_entropy, X, y, 0.1, iterations=2)
    with pytest.raises(ValueError, match="param_names"):
        per_sample_gradients(net, F.cross_entropy, X, y, param_names=["nope"])
    with pytest.raises(ValueError, match="damping"):
        influence_scores(net, F.cross_entropy, X, y, damping=-1.0)
    with pytest.raises(ValueError, match="X_ref"):
        influence_scores(net, F.cross_entropy, X, y, X_ref=X)
    with pytest.raises(ValueError, match="m must"):
        maxup_loss(net, F.cross_entropy, X[:4], y[:4], m=0)
    with pytest.raises(ValueError, match="lr"):
        maxup_fit(net, X, y, loss_fn=F.cross_entropy, epochs=1, lr=0.0)
