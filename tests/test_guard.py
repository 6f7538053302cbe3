"""GUARD's curvature regulariser (condense.CurvatureLoss, papers/002 eq. 8/10) and condense.guard."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from poisonbook import condense, models
from poisonbook.theory import curvature


def _picked(out, y, reduction="mean"):
    """A loss linear in the network output: the output of the labelled class (minus, as a loss)."""
    v = -out.gather(1, y.view(-1, 1)).squeeze(1)
    return v.sum() if reduction == "sum" else v.mean() if reduction == "mean" else v


class _Quadratic(nn.Module):
    """Output c ||x||^2 / 2 for every class: input gradient c x, input Hessian c I."""

    def __init__(self, c):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x):
        return (-0.5 * self.c * x.flatten(1).pow(2).sum(1, keepdim=True)).expand(-1, 3)


X = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2])


@pytest.mark.parametrize("form", ["paper", "code"])
def test_regulariser_is_zero_for_a_linear_model(form):
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    r = condense.CurvatureLoss(lam=100.0, h=0.6, form=form, loss=_picked).regulariser(linear, X, Y)
    assert float(r.abs().max()) < 1e-10


def test_regulariser_grows_with_curvature_as_derived():
    """With Hessian c I: grad(x + z) - grad(x) = c z, ||z|| = h, so R = c^2 h^2 (paper) and c h (code)."""
    h = 0.6
    for form, expect in (("paper", lambda c: c**2 * h**2), ("code", lambda c: c * h)):
        values = []
        for c in (0.5, 1.0, 2.0):
            r = condense.CurvatureLoss(h=h, form=form, loss=_picked).regulariser(_Quadratic(c), X, Y)
            assert torch.allclose(r, torch.full_like(r, expect(c)), rtol=1e-5)
            values.append(float(r.mean()))
        assert values[0] < values[1] < values[2]


def _smooth_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(64, 3)).double()


def test_finite_difference_matches_exact_hvp_to_first_order():
    """R / h^2 = ||H z_hat||^2 + O(h) (eq. 6-7): the error shrinks ~10x per 10x smaller h (smooth network)."""
    net, x = _smooth_net(), X.double()
    f = curvature.per_sample_loss(net, Y)
    _, g = curvature.input_gradient(f, x)
    zhat = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    exact = curvature.input_hvp(f, x, zhat).flatten(1).pow(2).sum(1)
    errs = []
    for h in (1e-1, 1e-2, 1e-3):
        r = condense.CurvatureLoss(h=h).regulariser(net, x, Y).detach() / h**2
        errs.append(float(((r - exact).abs() / exact).max()))
    assert errs[2] < errs[1] < errs[0]
    assert errs[1] / errs[0] < 0.2 and errs[2] / errs[1] < 0.2
    assert errs[2] < 1e-2


def test_pixel_units_under_standardisation():
    """R of a standardised-input network with std given equals R of the same network with Standardize in front."""
    mean, std = torch.tensor([0.3]), torch.tensor([0.25])
    net = _smooth_net().float()
    pix = nn.Sequential(condense.Standardize(mean, std), net)
    r_pix = condense.CurvatureLoss(h=0.6).regulariser(pix, X, Y)
    r_std = condense.CurvatureLoss(h=0.6, std=std).regulariser(net, (X - 0.3) / 0.25, Y)
    assert torch.allclose(r_pix, r_std, rtol=1e-4)


def test_regulariser_reaches_the_parameters():
    """create_graph=True: the parameter gradient of L_R differs from that of the cross-entropy alone."""
    torch.manual_seed(0)
    net = models.ConvNet(1, 3, 4, width=4, depth=1)
    params = list(net.parameters())
    g_ce = torch.autograd.grad(condense.CurvatureLoss(lam=0.0)(net, X, Y), params)
    g_r = torch.autograd.grad(condense.CurvatureLoss(lam=100.0)(net, X, Y), params)
    assert max(float((a - b).abs().max()) for a, b in zip(g_ce, g_r)) > 1e-4


def _toy():
    g = torch.Generator().manual_seed(0)
    return torch.rand(60, 1, 8, 8, generator=g), torch.arange(3).repeat(20)


def test_guard_with_lambda_zero_is_dc_bit_for_bit():
    x, y = _toy()
    kw = dict(iterations=2, width=4, depth=1, batch_real=8, seed=3)
    a = condense.dc(x, y, 2, loops=(2, 1), **kw)
    b = condense.guard(x, y, 2, lam=0.0, loops=(2, 1), **kw)
    c = condense.guard(x, y, 2, lam=100.0, loops=(2, 1), **kw)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


def test_lambda_and_h_change_the_checkpoint_key():
    keys = [condense.callable_key(condense.CurvatureLoss(lam=lam, h=h, form=f))
            for lam, h, f in ((100.0, 0.6, "paper"), (50.0, 0.6, "paper"), (100.0, 0.3, "paper"),
                              (100.0, 0.6, "code"))]
    assert len({repr(k) for k in keys}) == 4
    x, y = _toy()
    kw = dict(iterations=1, width=4, depth=1, batch_real=8, loops=(1, 1))
    assert condense.guard(x, y, 1, lam=1.0, **kw).config != condense.guard(x, y, 1, lam=2.0, **kw).config


def test_robustness_driver_at_a_tiny_scale():
    """The chapter's driver: attacks lower accuracy (l_inf* most), every method gets every metric."""
    from poisonbook import profiles
    from poisonbook.experiments import guard as chapter

    cfg = profiles.get("guard-robustness", "ci", methods=["dc", "guard"], appendix_f_attacks=["pgd"],
                       test_size=60, eval_epochs=10)
    out = chapter.robustness(cfg)
    m = out["metrics"]
    for meth in ("dc", "guard", "dc-at"):
        key = f"mnist.ipc1.{meth}"
        assert m[f"{key}.linf*_mean"] < m[f"{key}.clean_mean"]
        assert {f"{key}.{a}_std" for a in ("clean", "linf", "l2", "lambda1")} <= set(m)
    assert out["artefacts"]["mnist.ipc1.guard"].shape == (10, 1, 8, 8)
