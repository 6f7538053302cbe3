"""PGD (poisonbook.attacks): the ball and the box, the closed-form optimum of a linear loss, agreement with ART."""

import math

import pytest
import torch
from torch import nn

from poisonbook import attacks, checks, condense, data, models, train
from poisonbook.defend import adversarial_fit


def _cnn(seed=0):
    torch.manual_seed(seed)
    return models.ConvNet(1, 10, 8, width=8, depth=2).eval()


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_ball_and_box(norm, eps, random_start):
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x[:8] = 0.0  # images at the box's edge
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    adv = attacks.pgd(_cnn(), x, y, eps=eps, alpha=eps / 2, steps=7, norm=norm, random_start=random_start,
                      generator=torch.Generator().manual_seed(3))
    d = (adv - x).flatten(1)
    size = d.abs().max(1).values if norm == "linf" else d.norm(dim=1)
    assert float(size.max()) <= eps * (1 + 1e-5)
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float(size.max()) > 0.5 * eps  # it moved


class _Linear(nn.Module):
    """A 'network' whose output is the linear loss a^T x (one per sample)."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x):
        return (x.flatten(1) * self.a).sum(1, keepdim=True)


def _linear_loss(out, y):
    return out.sum()


def test_pgd_reaches_the_linear_optimum_linf_with_box():
    """max a^T delta over |delta_i| <= eps, 0 <= x + delta <= 1: delta_i = min(eps, 1 - x_i) if a_i > 0 else
    -min(eps, x_i); PGD's loss never decreases step by step and ends at that optimum."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 4, 4, generator=g)
    a = torch.randn(16, generator=g)
    model, y, eps = _Linear(a), torch.zeros(16, dtype=torch.long), 0.2
    best = torch.where(a > 0, torch.minimum(torch.full_like(x.flatten(1), eps), 1 - x.flatten(1)),
                       -torch.minimum(torch.full_like(x.flatten(1), eps), x.flatten(1)))
    optimum = (best * a).sum(1)
    values = []
    for steps in range(0, 9):
        adv = attacks.pgd(model, x, y, eps=eps, alpha=eps / 4, steps=steps, random_start=False,
                          loss_fn=_linear_loss)
        values.append(((adv - x).flatten(1) * a).sum(1))
    for before, after in zip(values, values[1:]):
        assert bool((after >= before - 1e-6).all())
    assert torch.allclose(values[-1], optimum, atol=1e-5)


def test_pgd_reaches_the_linear_optimum_l2():
    """max a^T delta over ||delta||_2 <= eps (box inactive at x = 0.5) is eps ||a||."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, generator=g)
    x = torch.full((8, 1, 4, 4), 0.5)
    y = torch.zeros(8, dtype=torch.long)
    for random_start, steps, rtol in ((False, 5, 1e-5), (True, 100, 1e-3)):
        adv = attacks.pgd(_Linear(a), x, y, eps=0.3, alpha=0.1, steps=steps, norm="l2", random_start=random_start,
                          generator=g, loss_fn=_linear_loss)
        got = ((adv - x).flatten(1) * a).sum(1)
        assert torch.allclose(got, torch.full_like(got, 0.3 * float(a.norm())), rtol=rtol)


@pytest.fixture(scope="module")
def trained():
    d = data.load("digits", "train")
    t = data.load("digits", "test")
    net = _cnn()
    train.fit(net, d.x, d.y, epochs=15, lr=0.05, seed=0)
    return net.eval(), t.x[:200], t.y[:200]


@pytest.mark.parametrize("setting", ["linf", "l2"])
def test_pgd_agrees_with_art(trained, setting):
    """Same model, inputs and attack: robust accuracies within 3 binomial standard errors of their difference."""
    net, x, y = trained
    s = {"linf": dict(norm="linf", eps=0.1, alpha=0.03, steps=10), "l2": dict(norm="l2", eps=0.5, alpha=0.15,
                                                                              steps=10)}[setting]
    ours = attacks.robust_accuracy(net, x, y, generator=torch.Generator().manual_seed(0), **s)
    art = attacks.art_robust_accuracy("pgd", net, x, y, eps=s["eps"], alpha=s["alpha"], steps=s["steps"],
                                      norm=s["norm"])
    clean = train.evaluate(net, x, y)
    assert ours < clean - 0.1  # the attack bites
    p = max((ours + art) / 2, 0.05)
    assert abs(ours - art) <= 3 * math.sqrt(2 * p * (1 - p) / len(x)), (ours, art)


def test_square_attack_lowers_accuracy(trained):
    net, x, y = trained
    acc = attacks.art_robust_accuracy("square", net, x[:50], y[:50], eps=0.3, steps=50)
    assert acc < train.evaluate(net, x[:50], y[:50]) - 0.1


def test_attack_settings_are_the_papers():
    s = attacks.attack_settings("mnist5k")
    assert s["linf*"] == dict(norm="linf", eps=0.3, alpha=0.1, steps=10)
    assert attacks.attack_settings("cifar10")["l2"] == dict(norm="l2", eps=0.2, alpha=0.05, steps=10)


def test_adversarial_training_raises_robust_accuracy():
    d, t = data.load("digits", "train"), data.load("digits", "test")
    x, y, xt, yt = d.x[:300], d.y[:300], t.x[:200], t.y[:200]
    s = dict(norm="linf", eps=0.1, alpha=0.03, steps=5)
    plain, robust = _cnn(), _cnn()
    train.fit(plain, x, y, epochs=20, lr=0.05, seed=0)
    adversarial_fit(robust, x, y, **s, epochs=20, lr=0.05, weight_decay=0.0, milestones=(), seed=0)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert attacks.robust_accuracy(robust, xt, yt, generator=gen(), **s) > \
        attacks.robust_accuracy(plain.eval(), xt, yt, generator=gen(), **s) + 0.1


_X, _Y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)


@pytest.mark.parametrize("fn,kwargs,err,word", [
    (attacks.pgd, dict(model=_cnn(), x=_X, y=_Y, eps=0.1, alpha=0.1, norm="l1"), checks.BadInput, "norm"),
    (attacks.pgd, dict(model=_cnn(), x=_X, y=_Y, eps=-0.1, alpha=0.1), checks.BadInput, "eps"),
    (attacks.pgd, dict(model=_cnn(), x=_X * 3, y=_Y, eps=0.1, alpha=0.1), checks.BadInput, "[0, 1]"),
    (attacks.pgd, dict(model=_cnn(), x=_X, y=_Y[:2], eps=0.1, alpha=0.1), checks.BadInput, "label"),
    (attacks.attack_settings, dict(dataset="svhn"), checks.BadInput, "dataset"),
    (attacks.art_attack, dict(name="cw", model=_cnn(), x=_X, y=_Y, eps=0.1), checks.BadInput, "attack"),
    (attacks.art_attack, dict(name="pgd", model=_cnn(), x=_X, y=_Y, eps=0.1), checks.BadInput, "alpha"),
    (adversarial_fit, dict(model=_cnn(), x=_X, y=_Y, eps=0.1, alpha=0.1, epochs=-1, lr=0.1), checks.BadInput,
     "epochs"),
    (condense.CurvatureLoss, dict(form="exact"), checks.BadInput, "form"),
    (condense.CurvatureLoss, dict(lam=-1.0), checks.BadInput, "lam"),
    (condense.CurvatureLoss, dict(h=0.0), checks.BadInput, "h"),
    (condense.CurvatureLoss, dict(std=[0.0]), checks.BadInput, "std"),
])
def test_bad_input(fn, kwargs, err, word):
    with pytest.raises(err, match=None) as info:
        fn(**kwargs)
    assert word in str(info.value)
