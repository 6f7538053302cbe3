"""TGDA, total gradient descent ascent (Lu, Kamath & Yu, TMLR 2022): the baseline of Lu et al. (ICML 2023).

Real data: a stratified 300-image subset of the sklearn digits (8x8), logistic regression.
"""

import pytest
import torch
from torch.nn import functional as F

from poisonbook import data, models, train
from poisonbook.poison import _conjugate_gradient, retrain, tgda

torch.set_num_threads(1)


def _lr():
    return models.LogisticRegression(1, 10, 8)


@pytest.fixture(scope="module")
def digits():
    tr = data.subset(data.load("digits", "train"), 300, seed=0)
    va, te = data.load("digits", "val"), data.load("digits", "test")
    torch.manual_seed(0)
    net = _lr()
    train.fit(net, tr.x, tr.y, epochs=100, lr=0.1, batch_size=64, momentum=0.0)
    return tr, va, te, net


def test_tgda_poisons_hurt_the_retrained_victim(digits):
    """eps_d = 0.3: the leader's objective (validation loss) rises and a victim retrained from scratch on
    clean + TGDA poisons is less accurate on the TEST set than one retrained on clean + clean copies."""
    tr, va, te, net = digits
    res = tgda(net, tr.x, tr.y, va.x, va.y, 0.3, epochs=60, leader_lr=0.05)
    assert res.val_losses[-1] > res.val_losses[0] + 0.05
    m = len(res.X_p)  # round(0.3 * 300); its value restates the construction and is not asserted
    # each poison keeps the label of the clean point it started from: with a negligible step the poisons still
    # sit on their starting rows, and the nearest clean row's label is the poison's label
    start = tgda(net, tr.x, tr.y, va.x, va.y, 0.3, epochs=1, leader_lr=1e-7)
    assert torch.equal(start.y_p, res.y_p)
    d, nearest = torch.cdist(start.X_p.flatten(1), tr.x.flatten(1),
                             compute_mode="donot_use_mm_for_euclid_dist").min(1)
    assert d.max() < 1e-4 and torch.equal(tr.y[nearest], start.y_p)
    kw = dict(epochs=100, lr=0.1, batch_size=64)
    poisoned = retrain(_lr, tr.x, tr.y, res.X_p, res.y_p, te.x, te.y, **kw).accuracy
    control = retrain(_lr, tr.x, tr.y, tr.x[:m], tr.y[:m], te.x, te.y, **kw).accuracy
    assert poisoned < control - 0.04


def test_tgda_keeps_inputs_box_and_is_deterministic(digits):
    tr, va, _, net = digits
    before = [p.detach().clone() for p in net.parameters()]
    a = tgda(net, tr.x, tr.y, va.x, va.y, 0.1, epochs=5, leader_lr=0.5, hessian_batch=64)
    b = tgda(net, tr.x, tr.y, va.x, va.y, 0.1, epochs=5, leader_lr=0.5, hessian_batch=64)
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters())), "the input model is untouched"
    assert torch.equal(a.X_p, b.X_p) and a.val_losses == b.val_losses
    assert a.X_p.min() >= 0 and a.X_p.max() <= 1 and len(a.val_losses) == 6
    assert not torch.equal(a.X_p, tr.x[:len(a.X_p)])
    stop = tgda(net, tr.x, tr.y, va.x, va.y, 0.1, epochs=5, callback=lambda it, X, L: it == 1)
    assert len(stop.val_losses) == 3


def test_conjugate_gradient_solves_the_damped_hessian_system(digits):
    """The inverse-Hessian-vector product of the total derivative: CG equals a direct solve (LR, convex)."""
    tr, va, _, net = digits
    w0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).double()
    shapes = [p.shape for p in net.parameters()]

    def loss(w, X, y):
        W, b = w[:shapes[0].numel()].view(shapes[0]), w[shapes[0].numel():]
        return F.cross_entropy(X.flatten(1).double() @ W.T + b, y)

    H = torch.autograd.functional.hessian(lambda w: loss(w, tr.x, tr.y), w0) + 0.01 * torch.eye(len(w0))
    g = torch.autograd.grad(loss(w0.requires_grad_(True), va.x, va.y), w0)[0]
    v = _conjugate_gradient(lambda u: H @ u, g, 500, tol=1e-14)
    assert torch.allclose(v, torch.linalg.solve(H, g), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps_d=0.0), "eps_d"), (dict(eps_d=0.001), "rounds to 0"), (dict(leader_lr=0.0), "leader_lr"),
    (dict(damping=-1.0), "damping"), (dict(epochs=-1), "epochs"), (dict(hessian_batch=0), "hessian_batch"),
])
def test_bad_inputs_raise(digits, kwargs, match):
    tr, va, _, net = digits
    args = dict(eps_d=0.1) | kwargs
    eps = args.pop("eps_d")
    with pytest.raises(ValueError, match=match):
        tgda(net, tr.x, tr.y, va.x, va.y, eps, **args)
    with pytest.raises(ValueError, match="validation"):
        tgda(net, tr.x, tr.y, va.x[:, :, :4], va.y, 0.1)
