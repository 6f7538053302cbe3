"""The authors'-code variant of Gradient Canceling (experiments.gc_code) against a naive re-implementation."""

import math

import pytest
import torch
from torch.nn import functional as F

from poisonbook import checks, data, models, poison, profiles, train
from poisonbook.experiments import gc_code


def _tiny_lr(seed=0):
    torch.manual_seed(seed)
    net = models.LogisticRegression(1, 3, 4).double()
    X = torch.rand(20, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return net, X, y


def _naive_code_gd(net, X, y, m, lr_code, epochs, norm=None, stop_below=None, start=None):
    """GD on the code's loss ||sum_clean grad_W1 CE + sum_poison grad_W1 CE||^2 (sum-reduced CE, no 1/2, only the
    first layer's weight), written from scratch: returns the poisons (pixels), the losses and the stop epoch."""
    W, b = net.linear.weight.detach(), net.linear.bias.detach()
    if norm is None:
        Z, W1, b1 = X.flatten(1), W.clone(), b.clone()
    else:  # the code's model: trained on z = (x - mean) / std, the same function of x
        mean, std = norm
        Z, W1, b1 = ((X - mean) / std).flatten(1), std * W, b + mean * W.sum(1)
        assert torch.allclose(Z @ W1.T + b1, net(X), atol=1e-12), "the test's normalised model is the same function"
    W1.requires_grad_(True)
    x0, yp = (X[:m], y[:m]) if start is None else start
    zp = x0.flatten(1) if norm is None else ((x0 - norm[0]) / norm[1]).flatten(1)
    losses, stopped = [], None
    for t in range(epochs):
        lr_t = lr_code * 0.5 * (1 + math.cos(math.pi * t / epochs))   # the code's adjust_learning_rate
        zp = zp.detach().requires_grad_(True)
        g_c = torch.autograd.grad(F.cross_entropy(Z @ W1.T + b1, y, reduction="sum"), W1)[0]
        g_p = torch.autograd.grad(F.cross_entropy(zp @ W1.T + b1, yp, reduction="sum"), W1, create_graph=True)[0]
        loss = (g_c + g_p).norm().square()
        losses.append(float(loss.detach()))
        if stop_below is not None and loss < stop_below:
            stopped = t
            break
        zp = zp - lr_t * torch.autograd.grad(loss, zp)[0]
    zp = zp.detach()
    x = zp if norm is None else zp * norm[1] + norm[0]
    return x.reshape(m, *X.shape[1:]), losses, stopped


@pytest.mark.parametrize("norm", [None, (0.1307, 0.3081)])
def test_code_variant_is_gradient_descent_on_the_codes_loss(norm):
    net, X, y = _tiny_lr()
    m, lr_code, epochs = 5, 2e-3, 4                           # eps_d = 5/20
    naive, losses, _ = _naive_code_gd(net, X, y, m, lr_code, epochs, norm)
    res = gc_code.code_variant(net, X, y, 0.25, lr_code=lr_code, epochs=epochs, normalise=norm, stop_below=None)
    assert (naive - X[:m]).abs().max() > 1e-2, "the poisons moved, so the comparison below means something"
    assert torch.allclose(res.X_p, naive, atol=1e-6, rtol=0), float((res.X_p - naive).abs().max())
    assert torch.equal(res.y_p, y[:m]), "labels of the first m clean points"
    assert res.lr == 2 * 20 ** 2 * lr_code
    # the code's loss as the result reports it, from ||g(chi)||, equals the naive one at every epoch
    assert all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(res.code_loss, losses))


def test_the_codes_stop_rule_is_reproduced_exactly():
    net, X, y = _tiny_lr(1)
    m, lr_code, epochs = 5, 2e-3, 6
    _, losses, _ = _naive_code_gd(net, X, y, m, lr_code, epochs)
    assert losses[2] < losses[1], "the loss falls, so a threshold between them stops at epoch 2"
    stop = (losses[1] + losses[2]) / 2
    naive, _, stopped = _naive_code_gd(net, X, y, m, lr_code, epochs, stop_below=stop)
    res = gc_code.code_variant(net, X, y, 0.25, lr_code=lr_code, epochs=epochs, normalise=None, stop_below=stop)
    assert stopped == res.stopped_at == 2
    assert torch.allclose(res.X_p, naive, atol=1e-6, rtol=0)
    assert len(res.grad_norms) == 3, "no epoch after the stop is reported"


def test_options_switch_back_to_the_papers():
    net, X, y = _tiny_lr(2)
    kw = dict(lr_code=2e-3, epochs=3, normalise=None, stop_below=None)
    code = gc_code.code_variant(net, X, y, 0.25, **kw)
    # random start: gradient_canceling's own draw (the same as the book's GC with the same seed)
    rand = gc_code.code_variant(net, X, y, 0.25, deterministic_start=False, seed=3, **kw)
    start = poison.gradient_canceling(net, F.cross_entropy, X, y, 0.25, epochs=0, seed=3)
    assert not torch.equal(start.X_p, X[:5]) and torch.equal(rand.y_p, start.y_p)
    naive, _, _ = _naive_code_gd(net, X, y, 5, 2e-3, 3, start=(start.X_p, start.y_p))
    assert torch.allclose(rand.X_p, naive, atol=1e-6, rtol=0)
    assert torch.equal(code.y_p, y[:5])
    # mean objective at lr_mean: the same as the full-gradient GC call with that lr and only the first tensor free
    mean = gc_code.code_variant(net, X, y, 0.25, sum_reduction=False, lr_mean=7.0, **kw)
    ref = poison.gradient_canceling(gc_code.first_only(net), F.cross_entropy, X, y, 0.25, epochs=3, lr=7.0,
                                    momentum=0.0, init=(X[:5], y[:5]))
    assert torch.allclose(mean.X_p, ref.X_p, atol=1e-12)
    with pytest.raises(checks.BadInput, match="lr_mean"):
        gc_code.code_variant(net, X, y, 0.25, sum_reduction=False, **kw)
    with pytest.raises(checks.BadInput, match="lr_code"):
        gc_code.code_variant(net, X, y, 0.25, **{**kw, "lr_code": -1.0})
    with pytest.raises(checks.BadInput, match="first m"):
        gc_code.code_variant(net, X, y, 2.0, **kw)


def test_normalised_model_is_the_same_function_for_the_papers_models():
    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    for net in (models.LogisticRegression(), models.MLP(hidden=16), models.SmallCNN()):
        net = net.double()
        h = gc_code.normalised_model(net, 0.1307, 0.3081)
        assert torch.allclose(h((x - 0.1307) / 0.3081), net(x), atol=1e-10), type(net).__name__
        assert not torch.allclose(h(x), net(x)), "the copy does expect normalised inputs"
    with pytest.raises(checks.BadInput, match="unpadded Conv"):
        gc_code.normalised_model(models.make("convnet", (1, 28, 28), 10, width=8, depth=1), 0.1, 0.3)


@pytest.mark.slow
def test_first_tensor_objective_leaves_most_of_the_full_gradient():
    """With the code's first-tensor objective the first tensor's gradient falls to a quarter, while the full
    gradient of the same target falls only to about half, where the paper's full objective at the same step size
    and epochs takes it to about 0.3 (measured: first 0.26, full 0.50 against 0.29 with the full objective). The
    issue's 8.43 -> 7.96 against 6.36 (300 MNIST images) is stronger; on 8x8 digits conv1 holds ~10% of ||g||^2."""
    torch.set_num_threads(1)
    sub = data.subset(data.load("digits", "train"), 300, seed=0)
    X, y = sub.x, sub.y
    torch.manual_seed(0)
    net = models.SmallCNN(1, 10, 8)
    train.fit(net, X, y, epochs=10, lr=0.1, batch_size=64, momentum=0.0, seed=0)
    net.eval()
    frozen = gc_code.first_only(net)
    norm = lambda mdl, Xp: poison.mixed_gradient_norm(mdl, F.cross_entropy, X, y, Xp, y)  # noqa: E731
    full0, first0 = norm(net, X), norm(frozen, X)
    kw = dict(lr_code=1.0, epochs=20, sum_reduction=False, lr_mean=1e4, normalise=None, stop_below=None)
    only = gc_code.code_variant(net, X, y, 1.0, **kw)
    full = gc_code.code_variant(net, X, y, 1.0, first_param_only=False, **kw)
    assert norm(frozen, only.X_p) < 0.35 * first0, "the first tensor's gradient is canceled"
    assert norm(net, only.X_p) > 0.45 * full0, "the full gradient keeps about half"
    assert norm(net, only.X_p) > 1.5 * norm(net, full.X_p), "the full objective goes much further"


def test_profile_resolves_the_gc_networks_settings():
    for p in profiles.PROFILES:
        cfg = profiles.get("gc-code", p)
        net = profiles.get("gc-networks", cfg.gcn_profile)
        by_name = {s["name"]: s for s in net.settings}
        assert [s["name"] for s in cfg.gcn["settings"]] == cfg.settings
        assert all(s == by_name[s["name"]] for s in cfg.gcn["settings"])
        assert set(cfg.lr_code) >= {by_name[s]["model"] for s in cfg.settings}


def test_code_random_pc_adds_absolute_gaussian_noise_per_coordinate():
    """The authors' RandomPC is w + eps N(0, I): per-coordinate std eps (not a fixed relative norm), fresh per seed."""
    net = models.MLP(1, 10, 8, hidden=64)
    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    for eps in (0.01, 0.5):
        d = torch.cat([p.detach().reshape(-1) for p in gc_code.code_random_pc(net, eps, seed=3).parameters()]) - w
        assert abs(float(d.std()) / eps - 1) < 0.05 and abs(float(d.mean())) < 0.1 * eps
        assert abs(float(d.norm()) / (eps * d.numel() ** 0.5) - 1) < 0.05
    again = torch.cat([p.detach().reshape(-1) for p in gc_code.code_random_pc(net, 0.5, seed=3).parameters()])
    other = torch.cat([p.detach().reshape(-1) for p in gc_code.code_random_pc(net, 0.5, seed=4).parameters()])
    assert torch.equal(again - w, d) and not torch.allclose(other - w, d)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in net.parameters()]), w), "the model is not modified"
