"""Gradient Canceling (Algorithm 1), Frank-Wolfe (Appendix B) and retraining, Lu, Kamath & Yu (ICML 2023).

The OR dataset (Appendix C.1): the four points of OR in 2-D, each repeated 50 times with small
Gaussian noise; label +1 when x1 OR x2, else -1. The target is a logistic regression WITHOUT an
intercept, w = (-0.5, -0.5): then the label-absorbed feature y x ranges over all of R^2 whatever
the poison's label, so Corollary 2's threshold is exact (iff), and GC's fixed labels do not matter.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from poisonbook import theory as T
from poisonbook.poison import (frank_wolfe_linear, gradient_canceling, margin_loss_fn, measure_to_poisons,
                               mixed_gradient_norm, parameter_gradient, retrain)

torch.set_num_threads(1)
LOSS = margin_loss_fn("logistic")
W_TARGET = (-0.5, -0.5)


def or_dataset(seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    P = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    X = P.repeat_interleave(50, 0) + noise * torch.randn(200, 2, generator=g, dtype=torch.float64)
    y = torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64).repeat_interleave(50)
    return X, y


def target_model():
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([W_TARGET], dtype=torch.float64))
    return model


@pytest.fixture(scope="module")
def setup():
    X, y = or_dataset()
    tau = T.poisoning_threshold(np.array(W_TARGET), X.numpy(), y.numpy(), "logistic")
    assert 1.0 < tau < 1.5  # ~1.22 for this target
    return X, y, tau


def cert(X, y, m):  # the certified lower bound on ||g(chi)|| for m poisons
    return T.mixed_gradient_lower_bound(np.array(W_TARGET), X.numpy(), y.numpy(), m / len(X))


# ---------------------------------------------------------------------------- the phase transition


@pytest.mark.parametrize("factor", [1.25, 2.0])
def test_gc_cancels_the_gradient_above_tau(setup, factor):
    X, y, tau = setup
    res = gradient_canceling(target_model(), LOSS, X, y, factor * tau, epochs=400, lr=100.0)
    assert len(res.X_p) == round(factor * tau * 200) and len(res.grad_norms) == 401
    assert res.grad_norms[0] > 0.4 and res.grad_norms[-1] < 1e-3
    # the recorded norm is the gradient on the mixed dataset a victim would retrain on
    assert res.grad_norms[-1] == pytest.approx(
        mixed_gradient_norm(target_model(), LOSS, X, y, res.X_p, res.y_p), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("factor", [0.5, 0.8])
def test_gc_stays_away_from_zero_below_tau(setup, factor):
    X, y, tau = setup
    res = gradient_canceling(target_model(), LOSS, X, y, factor * tau, epochs=400, lr=100.0)
    bound = cert(X, y, len(res.X_p))
    assert bound > 0.04
    assert min(res.grad_norms) >= bound * (1 - 1e-9)  # no poisoning set beats the certificate
    assert res.grad_norms[-1] <= 1.1 * bound  # and GC gets close to it: the bound is tight here


def test_retrained_victim_lands_on_the_target(setup):
    X, y, tau = setup
    res = gradient_canceling(target_model(), LOSS, X, y, 2 * tau, epochs=400, lr=100.0)
    out = retrain(lambda: nn.Linear(2, 1, bias=False).double(), X, y, res.X_p, res.y_p, X, y,
                  loss_fn=LOSS, epochs=500, lr=1.0)
    assert torch.allclose(out.model.weight, torch.tensor([W_TARGET], dtype=torch.float64), atol=0.01)
    target_acc = float(((target_model()(X).squeeze(1) > 0) == (y > 0)).double().mean())
    assert out.accuracy == pytest.approx(target_acc, abs=0.02) and out.accuracy < 0.3  # clean LR: 1.0
    assert out.grad_norm < 1e-4


# ---------------------------------------------------------------------------- mechanics


def test_model_and_buffers_are_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    model.train()
    X, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 3, (40,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = gradient_canceling(model, F.cross_entropy, X, y, 0.5, epochs=30, lr=5.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert res.grad_norms[-1] < res.grad_norms[0]  # any nn.Module, any (logits, y) loss
    assert res.X_p.shape == (20, 3) and res.X_p.dtype == X.dtype and not res.X_p.requires_grad


@pytest.mark.parametrize("clip", [(0.0, 1.0), "data", (torch.tensor([-0.1, 0.2]), torch.tensor([0.9, 1.0]))])
def test_clipping_keeps_poisons_in_the_domain(setup, clip):
    X, y, tau = setup
    free = gradient_canceling(target_model(), LOSS, X, y, 2 * tau, epochs=60, lr=100.0)
    res = gradient_canceling(target_model(), LOSS, X, y, 2 * tau, epochs=60, lr=100.0, clip=clip)
    lo, hi = (X.amin(0), X.amax(0)) if clip == "data" else map(torch.as_tensor, clip)
    assert ((free.X_p < lo) | (free.X_p > hi)).any()  # without projection GC leaves the box
    assert ((res.X_p >= lo) & (res.X_p <= hi)).all()


@settings(max_examples=10, deadline=None)
@given(st.floats(-2.0, 1.0), st.floats(0.0, 3.0))
def test_clipping_to_any_box(lo, width):
    X, y = or_dataset(1)
    res = gradient_canceling(target_model(), LOSS, X, y, 0.2, epochs=5, lr=100.0, clip=(lo, lo + width))
    assert (res.X_p >= lo).all() and (res.X_p <= lo + width).all()


def test_batched_poisons_and_clean_gradient(setup):
    X, y, tau = setup
    model = target_model()
    full_grad = parameter_gradient(model, LOSS, X, y)
    assert torch.allclose(parameter_gradient(model, LOSS, X, y, batch_size=7), full_grad)
    full = gradient_canceling(model, LOSS, X, y, 2 * tau, epochs=20, lr=100.0)
    big = gradient_canceling(model, LOSS, X, y, 2 * tau, epochs=20, lr=100.0, batch_size=10_000)
    assert torch.equal(full.X_p, big.X_p)  # one block == full batch
    res = gradient_canceling(model, LOSS, X, y, 2 * tau, epochs=300, lr=100.0, batch_size=64)
    assert res.grad_norms[-1] < 1e-3


def test_seed_init_labels_and_callback(setup):
    X, y, tau = setup
    a = gradient_canceling(target_model(), LOSS, X, y, 0.3, epochs=10, lr=100.0, seed=3)
    b = gradient_canceling(target_model(), LOSS, X, y, 0.3, epochs=10, lr=100.0, seed=3)
    assert torch.equal(a.X_p, b.X_p) and a.grad_norms == b.grad_norms
    big = gradient_canceling(target_model(), LOSS, X, y, 1.5, epochs=0)  # eps_d > 1: points repeat
    assert len(big.X_p) == 300 and len(big.grad_norms) == 1
    match = (big.X_p[:, None, :] == X[None]).all(-1)  # every poison starts as a clean point ...
    assert match.any(1).all()
    assert torch.equal(big.y_p, y[match.float().argmax(1)])  # ... with that point's label
    assert (match.sum(0) >= 1).all()  # 1.5 n poisons: every clean point is used at least once
    assert torch.equal(a.y_p, gradient_canceling(target_model(), LOSS, X, y, 0.3, epochs=0, seed=3).y_p)
    seen = []
    gradient_canceling(target_model(), LOSS, X, y, 0.3, epochs=50, lr=100.0,
                       callback=lambda ep, Xp, gn: seen.append(ep) or ep == 4)
    assert seen == [0, 1, 2, 3, 4]
    init = (torch.zeros(60, 2, dtype=torch.float64), -torch.ones(60, dtype=torch.float64))
    c = gradient_canceling(target_model(), LOSS, X, y, 0.3, epochs=0, init=init)
    assert torch.equal(c.X_p, init[0]) and torch.equal(c.y_p, init[1])


# ---------------------------------------------------------------------------- Frank-Wolfe (Appendix B)


@pytest.mark.parametrize("step", ["default", "line"])
def test_frank_wolfe_measure_above_and_below_tau(setup, step):
    X, y, tau = setup
    w = torch.tensor(W_TARGET, dtype=torch.float64)
    above = frank_wolfe_linear(w, X, y, 2 * tau, radius=5.0, iters=300, step=step)
    assert above.grad_norms[-1] < (2e-2 if step == "default" else 1e-4)
    assert float(above.weights.sum()) == pytest.approx(1.0) and (above.X.norm(dim=1) <= 5.0 + 1e-9).all()
    below = frank_wolfe_linear(w, X, y, 0.5 * tau, radius=5.0, iters=100, step=step)
    bound = T.mixed_gradient_lower_bound(np.array(W_TARGET), X.numpy(), y.numpy(), 0.5 * tau)
    assert bound * (1 - 1e-9) <= min(below.grad_norms) <= 1.1 * bound
    Xp, yp = measure_to_poisons(above.X, above.y, above.weights, 488)
    assert len(Xp) == 488 and mixed_gradient_norm(target_model(), LOSS, X, y, Xp, yp) < 0.02


def test_measure_to_poisons_rounds_the_masses():
    X, y = torch.arange(3.0)[:, None], torch.tensor([1.0, -1.0, 1.0])
    Xp, yp = measure_to_poisons(X, y, torch.tensor([0.5, 0.3, 0.2]), 7)
    assert Xp.squeeze(1).tolist() == [0.0] * 4 + [1.0] * 2 + [2.0] and len(yp) == 7


# ---------------------------------------------------------------------------- invalid inputs


@settings(max_examples=15, deadline=None)
@given(st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf), st.just("1")))
def test_bad_eps_raises(eps):
    X, y = or_dataset()
    with pytest.raises(ValueError, match="eps_d"):
        gradient_canceling(target_model(), LOSS, X, y, eps, epochs=1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(y_clean=torch.ones(199, dtype=torch.float64)), "one label per sample \\(200\\), got 199"),
    (dict(X_clean=torch.full((200, 2), math.nan, dtype=torch.float64)), "NaN or infinite"),
    (dict(X_clean=torch.ones(200, 2, dtype=torch.long)), "floating point"),
    (dict(eps_d=0.001), "rounds to 0 poisons"),
    (dict(clip=(1.0, 0.0)), "lo <= hi"),
    (dict(clip="box"), "clip must be"),
    (dict(init=(torch.zeros(5, 2, dtype=torch.float64), torch.ones(5))), "round\\(eps_d \\* n\\) = 60"),
    (dict(epochs=-1), "epochs"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(model=lambda x: x), "nn.Module"),
])
def test_bad_inputs_raise(kwargs, match):
    X, y = or_dataset()
    args = dict(model=target_model(), loss_fn=LOSS, X_clean=X, y_clean=y, eps_d=0.3, epochs=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        gradient_canceling(**args)


def test_bad_inputs_raise_elsewhere():
    X, y = or_dataset()
    w = torch.tensor(W_TARGET, dtype=torch.float64)
    with pytest.raises(ValueError, match="-1 or \\+1"):
        frank_wolfe_linear(w, X, (y > 0).double(), 1.0, radius=1.0)
    with pytest.raises(ValueError, match="radius"):
        frank_wolfe_linear(w, X, y, 1.0, radius=0.0)
    with pytest.raises(ValueError, match="w must be"):
        frank_wolfe_linear(torch.ones(3), X, y, 1.0, radius=1.0)
    with pytest.raises(ValueError, match="poisons are shaped"):
        retrain(lambda: nn.Linear(2, 1), X, y, torch.ones(3, 5, dtype=torch.float64), torch.ones(3), X, y)
    with pytest.raises(ValueError, match="weights"):
        measure_to_poisons(X[:2], y[:2], torch.tensor([-1.0, 2.0]), 3)
