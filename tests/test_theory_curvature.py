"""poisonbook.theory.curvature: HVP, power iteration, the quadratic model, bound (2) and Proposition 1's bound (3)."""

import numpy as np
import pytest
import torch
from torch import nn

from poisonbook import attacks, data, models, train
from poisonbook.theory import curvature


def _quadratic_loss(eigs, d=6, seed=0):
    """Per-sample 0.5 x^T A x with A = Q diag(eigs) Q^T (known spectrum)."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T
    return (lambda x: 0.5 * torch.einsum("ni,ij,nj->n", x.flatten(1), a, x.flatten(1))), a


@pytest.mark.parametrize("eigs", [[3.0, 1.0, 0.5, -0.2, 0.1, 2.0], [-5.0, 1.0, 2.0, 0.0, -1.0, 0.5]])
def test_power_method_finds_the_top_eigenvalue_of_a_quadratic(eigs):
    f, _ = _quadratic_loss(eigs)
    x = torch.randn(5, 1, 2, 3, dtype=torch.float64)
    lam, v = curvature.top_eigen(f, x, iters=80, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lam, torch.full_like(lam, max(eigs)), atol=1e-6)  # the largest, not the largest |.|


@pytest.fixture(scope="module")
def digits_net():
    d = data.load("digits", "train")
    torch.manual_seed(0)
    net = models.ConvNet(1, 10, 8, width=8, depth=2)
    train.fit(net, d.x, d.y, epochs=10, lr=0.05, seed=0)
    t = data.load("digits", "test")
    net, x, y = net.double().eval(), t.x[:4].double(), t.y[:4]
    dense = torch.stack([torch.autograd.functional.hessian(  # reverse-over-reverse, independent of jvp(grad)
        lambda u, i=i: nn.functional.cross_entropy(net(u.unsqueeze(0)), y[i].view(1)), x[i]).reshape(64, 64)
        for i in range(len(x))])
    return net, x, y, dense


def test_power_iteration_matches_eigvalsh_of_the_dense_hessian(digits_net):
    """Reverse-over-reverse dense 64 x 64 Hessians (torch.autograd.functional) vs batched power iteration on jvp(grad)."""
    net, x, y, dense = digits_net
    f = curvature.per_sample_loss(net, y)
    top = torch.linalg.eigvalsh(dense)[:, -1]
    lam, _ = curvature.top_eigen(f, x, iters=80, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(lam, top, rtol=1e-4, atol=1e-8)


def test_bound2_holds_against_pgd_and_the_exact_maximum(digits_net):
    """Per sample: PGD on the quadratic model <= exact trust-region maximum <= bound (2)."""
    net, x, y, dense = digits_net
    f, rho = curvature.per_sample_loss(net, y), 0.5
    terms = curvature.bound2_terms(f, x, rho, iters=80, generator=torch.Generator().manual_seed(0))
    q = curvature.quadratic_model(f, x)
    x0 = torch.full_like(x, 0.5)

    class Q(nn.Module):
        def forward(self, z):
            return q(z - x0).unsqueeze(1)

    adv = attacks.pgd(Q(), x0.float(), torch.zeros(len(x), dtype=torch.long), eps=rho, alpha=rho / 4, steps=50,
                      norm="l2", random_start=False, loss_fn=lambda out, _: out.sum())
    achieved = q(adv.double() - x0).detach()
    loss, g = curvature.input_gradient(f, x)
    for i in range(len(x)):
        best, _ = curvature.trust_region_max(g[i].numpy(), dense[i].numpy(), rho)
        exact = float(loss[i]) + best
        assert float(achieved[i]) <= exact + 1e-5
        assert exact <= float(terms["bound"][i]) + 1e-8
        assert float(achieved[i]) > float(loss[i])  # PGD did climb


def test_trust_region_max_beats_random_feasible_points():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    h, g = a + a.T, rng.normal(size=5)
    best, v = curvature.trust_region_max(g, h, 0.7)
    assert np.linalg.norm(v) <= 0.7 + 1e-9
    pts = rng.normal(size=(20000, 5))
    pts *= (0.7 * rng.random((20000, 1)) ** 0.2) / np.linalg.norm(pts, axis=1, keepdims=True)
    vals = pts @ g + 0.5 * np.einsum("ni,ij,nj->n", pts, h, pts)
    assert vals.max() <= best + 1e-9 and vals.max() > best - 0.1


def test_gradient_is_v1_for_binary_logistic_regression():
    """l = softplus(-y w^T x): H = s(1 - s) w w^T, so v_1 is +-w / ||w||, parallel to the gradient: cos = 1."""
    w = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = lambda x: nn.functional.softplus(-(x.flatten(1) @ w))  # noqa: E731
    x = torch.randn(8, 1, 2, 5, dtype=torch.float64)
    cos = curvature.gradient_eigen_cosine(f, x, iters=50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-8)


def test_proposition1_on_a_convex_quadratic():
    """l(x) = (x - c)^T A (x - c) / 2, A >= 0, features h(x) = x: l~adv is convex, with ||grad l~adv|| <=
    ||A|| (||x - c|| + rho) =: L on the data's ball. Bound (3) holds at every x'; bound (2) alone (no L sigma)
    fails for a far x'."""
    torch.manual_seed(0)
    d, rho = 5, 0.3
    b = torch.randn(d, d, dtype=torch.float64)
    a = b @ b.T / d
    c = torch.zeros(d, dtype=torch.float64)
    f = lambda x: 0.5 * torch.einsum("ni,ij,nj->n", x.flatten(1) - c, a, x.flatten(1) - c)  # noqa: E731
    xs = 1.0 + 0.2 * torch.randn(200, 1, 1, d, dtype=torch.float64)
    terms = curvature.bound2_terms(f, xs, rho, iters=200, generator=torch.Generator().manual_seed(0))
    centre = xs.mean(0, keepdim=True)

    def adv(xp):
        g = (a @ (xp.flatten() - c)).numpy()
        return float(f(xp)) + curvature.trust_region_max(g, a.numpy(), rho)[0]

    radius = float((xs.flatten(1) - c).norm(dim=1).max()) + 2.0
    lip = float(torch.linalg.eigvalsh(a)[-1]) * (radius + rho)
    far = False
    for k in range(50):
        xp = centre + (k / 25) * torch.randn(1, 1, 1, d, dtype=torch.float64) / d**0.5
        if float((xp.flatten() - c).norm()) > radius:
            continue
        sigma = float((xp - centre).norm())
        assert adv(xp) <= curvature.proposition1_bound(terms, lip, sigma) + 1e-9
        far |= adv(xp) > curvature.bound2(terms)
    assert far  # the L sigma term is needed
