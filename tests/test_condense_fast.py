"""The fast paths of poisonbook.condense against plain, naive references (issue 11).

* DM with channels-last memory and an inference-mode real pass equals the plain eager DM loop
  written out below (the code before the fast path) at 1e-5 relative, and exactly with
  ``channels_last=False``.
* ``dm_multi`` equals K separate ``dm`` runs given the same draws, for different estimators (a randomised
  one included), initial seeds and poisoned classes; its checkpoint resumes and its key holds every variant.
* DC's batched per-class real gradients (``batch_classes``) equal the per-class loop.
* Batches in cache-sized pieces (``chunk``): DM's features, DC's and GUARD's piece-wise gradients
  ``sum_k (n_k / n) grad loss(piece_k)`` equal the whole-batch ones, with uneven pieces; a batch-norm
  network keeps whole batches; bad ``chunk`` values are refused.
"""

import os

import pytest
import torch
from torch.nn import functional as F

from poisonbook import augment, condense, estimators, models
from poisonbook.data import ClassSampler

CLASSES, PER_CLASS, SIDE = 3, 24, 28
NET = dict(width=16, depth=3)


@pytest.fixture(scope="module")
def real():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(CLASSES * PER_CLASS, 1, SIDE, SIDE, generator=g)
    y = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    return x, y


def reference_dm(x, y, ipc, *, iterations, batch_real, strategy, seed, lr=1.0, momentum=0.5, width=16, depth=3,
                 estimator=lambda f: f.mean(dim=1)):
    """The plain eager DM loop, naively: channels-first, ``no_grad`` real pass, draws in dm's order."""
    mean = x.double().mean(dim=(0, 2, 3)).float().view(1, -1, 1, 1)
    std = x.double().std(dim=(0, 2, 3)).float().view(1, -1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    sampler = ClassSampler(y, CLASSES)
    syn = ((x[sampler.indices(ipc, gen)] - mean) / std).clone().requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    y_real = torch.arange(CLASSES).repeat_interleave(batch_real)
    y_syn = torch.arange(CLASSES).repeat_interleave(ipc)
    losses = []
    for _ in range(iterations):
        net_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(net_seed)
            net = models.ConvNet(1, CLASSES, SIDE, width=width, depth=depth)
        net.train().requires_grad_(False)
        xr = (x[sampler.indices(batch_real, gen)] - mean) / std
        xs = syn
        if strategy:
            d = augment.draw(strategy, CLASSES, generator=gen, per_group_op=True)
            xr, xs = augment.apply(xr, d, y_real), augment.apply(syn, d, y_syn)
        with torch.no_grad():
            fr = net.embed(xr).view(CLASSES, batch_real, -1)
        fs = net.embed(xs).view(CLASSES, ipc, -1)
        loss = ((estimator(fr) - fs.mean(dim=1)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return (syn.detach() * std + mean), losses


def rel(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- item 1: the fast real pass


def test_fast_dm_equals_the_plain_eager_loop(real):
    x, y = real
    kw = dict(iterations=3, batch_real=16, strategy=augment.STRATEGY_DIGITS, seed=4)
    ref_x, ref_loss = reference_dm(x, y, 2, **kw)
    fast = condense.dm(x, y, 2, **kw, **NET)  # channels_last=True, inference-mode real pass
    assert fast.x.is_contiguous()
    assert rel(fast.loss, ref_loss) < 1e-5, (fast.loss, ref_loss)
    assert rel(fast.x, ref_x) < 1e-5
    plain = condense.dm(x, y, 2, channels_last=False, **kw, **NET)
    assert torch.equal(plain.x, ref_x) and plain.loss == ref_loss, "channels-first is the old path, bit for bit"


@pytest.mark.skipif(os.environ.get("POISONBOOK_TEST_COMPILE") != "1",
                    reason="torch.compile takes about a minute; set POISONBOOK_TEST_COMPILE=1")
def test_compiled_dm_equals_the_plain_eager_loop(real):
    x, y = real
    kw = dict(iterations=2, batch_real=16, strategy=None, seed=1)
    ref_x, ref_loss = reference_dm(x, y, 2, **kw)
    fast = condense.dm(x, y, 2, compile=True, **kw, **NET)
    assert rel(fast.loss, ref_loss) < 1e-5 and rel(fast.x, ref_x) < 1e-5
    assert 0 < fast.compile_seconds <= fast.seconds


@pytest.mark.skipif(os.environ.get("POISONBOOK_TEST_COMPILE") != "1",
                    reason="torch.compile takes about a minute; set POISONBOOK_TEST_COMPILE=1")
def test_compiled_dc_equals_eager_dc(real, monkeypatch):
    from poisonbook.condense import _dc

    x, y = real
    kw = dict(iterations=2, loops=(2, 2), batch_real=8, batch_train=5, strategy=augment.STRATEGY_DIGITS, seed=3,
              **NET)
    eager = condense.dc(x, y, 3, **kw)
    calls, original = [], _dc._compiled

    def counted(fn, compile):  # count the calls of the compiled forward: the real and the training passes
        out = original(fn, compile)
        return (lambda network, a: calls.append(len(a)) or out(network, a)) if compile else out

    monkeypatch.setattr(_dc, "_compiled", counted)
    fast = condense.dc(x, y, 3, compile=True, **kw)
    assert 8 in calls and 5 in calls  # a real batch of 8 and a training batch of 5 (9 synthetic images)
    assert rel(fast.loss, eager.loss) < 1e-4 and rel(fast.x, eager.x) < 1e-4
    assert 0 < fast.compile_seconds <= fast.seconds


# --------------------------------------------------------------------------- item 2: several sets per real pass


def test_dm_multi_equals_separate_runs_with_the_same_draws(real):
    x, y = real
    stats = condense.channel_stats(x)
    poisoned = x.clone()
    poisoned[y == 1] = torch.rand((y == 1).sum(), 1, SIDE, SIDE, generator=torch.Generator().manual_seed(9))
    median = estimators.Median()
    calibrated = estimators.calibrated_mean(0.1, power_iterations=5)
    variants = [condense.DMVariant(), condense.DMVariant(estimator=median),
                condense.DMVariant(estimator=calibrated), dict(init_seed=7), dict(x=poisoned),
                dict(x=poisoned, estimator=median, init_seed=3)]
    kw = dict(iterations=3, batch_real=16, strategy=augment.STRATEGY_DIGITS, seed=2, stats=stats, **NET)
    multi = condense.dm_multi(x, y, 2, variants, **kw)
    separate = [condense.dm(x, y, 2, estimator_seed=2, **kw),
                condense.dm(x, y, 2, estimator=median, estimator_seed=2, **kw),
                condense.dm(x, y, 2, estimator=calibrated, estimator_seed=2, **kw),
                condense.dm(x, y, 2, init_seed=7, estimator_seed=2, **kw),
                condense.dm(poisoned, y, 2, estimator_seed=2, **kw),
                condense.dm(poisoned, y, 2, estimator=median, init_seed=3, estimator_seed=2, **kw)]
    assert len(multi) == len(separate)
    for k, (m, s) in enumerate(zip(multi, separate)):
        assert rel(m.loss, s.loss) < 1e-5, (k, m.loss, s.loss)
        assert rel(m.x, s.x) < 1e-5, k
    # the variants really differ (else the comparison above could not fail)
    for k in range(1, len(multi)):
        assert rel(multi[k].x, multi[0].x) > 1e-3, k
    # a single-variant dm with its defaults is the plain eager loop (the reference above)
    ref_x, ref_loss = reference_dm(x, y, 2, iterations=3, batch_real=16, strategy=augment.STRATEGY_DIGITS, seed=2)
    assert rel(separate[0].x, ref_x) < 1e-5 and rel(separate[0].loss, ref_loss) < 1e-5


class Killed(Exception):
    pass


def test_dm_multi_resumes_and_keys_every_variant(real, tmp_path):
    x, y = real
    variants = [dict(), dict(estimator=estimators.trimmed_mean(2)), dict(init_seed=5)]
    kw = dict(iterations=4, batch_real=16, strategy=None, seed=0, **NET)
    full = condense.dm_multi(x, y, 1, variants, **kw)
    path = tmp_path / "multi.pt"

    def kill(it, images, losses):
        assert len(images) == 3 and len(losses) == 3
        if it == 1:
            raise Killed

    with pytest.raises(Killed):
        condense.dm_multi(x, y, 1, variants, checkpoint=path, checkpoint_every=1, callback=kill, **kw)
    resumed = condense.dm_multi(x, y, 1, variants, checkpoint=path, checkpoint_every=1, **kw)
    for a, b in zip(full, resumed):
        assert torch.equal(a.x, b.x) and a.loss == b.loss
    other = [dict(), dict(estimator=estimators.trimmed_mean(3)), dict(init_seed=5)]
    with pytest.raises(ValueError, match="another configuration"):
        condense.dm_multi(x, y, 1, other, checkpoint=path, checkpoint_every=1, **kw)


def test_dm_multi_rejects_bad_variants(real):
    x, y = real
    kw = dict(iterations=1, batch_real=8, strategy=None, **NET)
    with pytest.raises(ValueError, match="non-empty list"):
        condense.dm_multi(x, y, 1, [], **kw)
    with pytest.raises(ValueError, match="unknown fields"):
        condense.dm_multi(x, y, 1, [dict(seed=1)], **kw)
    with pytest.raises(ValueError, match="same labels"):
        condense.dm_multi(x, y, 1, [dict(x=x[:-1])], **kw)
    with pytest.raises(ValueError, match="NaN"):
        bad = x.clone()
        bad[0, 0, 0, 0] = float("nan")
        condense.dm_multi(x, y, 1, [dict(x=bad)], **kw)

    def bn_net():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())

    class WithEmbed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = bn_net()

        def embed(self, z):
            return self.body(z)

    changed = x.clone()
    changed[0] += 0.1
    with pytest.raises(ValueError, match="per-sample"):
        condense.dm_multi(x, y, 1, [dict(x=changed)], iterations=1, batch_real=8, strategy=None, net=WithEmbed)
    with pytest.raises(TypeError, match="unexpected"):
        condense.dm_multi(x, y, 1, [dict()], iteration=1)


# --------------------------------------------------------------------------- item 3: DC's batched class gradients


def test_class_gradients_in_one_pass_equal_the_per_class_loop():
    from poisonbook.condense._dc import _class_gradients

    g = torch.Generator().manual_seed(0)
    xr = torch.randn(3 * 5, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    yr = torch.arange(3).repeat_interleave(5)
    torch.manual_seed(0)
    net = models.ConvNet(1, 3, SIDE, width=8).double()
    matched = [p for p in net.parameters() if p.ndim >= 2]
    grads = _class_gradients(net, xr, yr, 3)
    for c in range(3):
        loop = torch.autograd.grad(F.cross_entropy(net(xr[yr == c]), yr[yr == c]), matched)
        for a, b in zip(grads[c], loop):
            assert rel(a, b) < 1e-10


def test_dc_with_batched_class_gradients_equals_the_loop(real):
    x, y = real
    kw = dict(iterations=2, loops=(2, 1), batch_real=8, strategy=augment.STRATEGY_DIGITS, seed=3, **NET)
    loop = condense.dc(x, y, 1, **kw)
    batched = condense.dc(x, y, 1, batch_classes=True, **kw)
    assert rel(batched.loss, loop.loss) < 1e-4 and rel(batched.x, loop.x) < 1e-4
    last = condense.dc(x, y, 1, channels_last=True, **kw)
    assert rel(loop.x, last.x) < 1e-4 and rel(loop.loss, last.loss) < 1e-4
    # a batch-norm network keeps the loop: batch_classes changes nothing there
    def bn_factory():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, CLASSES))
    a = condense.dc(x, y, 1, net=bn_factory, **{k: v for k, v in kw.items() if k not in NET})
    b = condense.dc(x, y, 1, net=bn_factory, batch_classes=True, **{k: v for k, v in kw.items() if k not in NET})
    assert torch.equal(a.x, b.x)


# --------------------------------------------------------------------------- batches in cache-sized pieces


def test_dm_in_uneven_pieces_equals_the_plain_eager_loop(real):
    x, y = real
    kw = dict(iterations=3, batch_real=16, strategy=augment.STRATEGY_DIGITS, seed=4)
    ref_x, ref_loss = reference_dm(x, y, 3, **kw)
    for chunk in (5, 7):  # 48 real rows and 9 synthetic: every pass ends in a shorter piece
        fast = condense.dm(x, y, 3, chunk=chunk, **kw, **NET)
        assert rel(fast.loss, ref_loss) < 1e-5 and rel(fast.x, ref_x) < 1e-5, chunk


def test_mean_gradient_in_pieces_equals_the_whole_batch():
    from poisonbook.condense._core import _mean_backward, _mean_grad, _pieces

    assert [(s.start, s.stop) for s in _pieces(7, 3)] == [(0, 3), (3, 6), (6, 7)]
    assert [(s.start, s.stop) for s in _pieces(7, None)] == [(0, 7)]
    g = torch.Generator().manual_seed(1)
    xr = torch.randn(11, 1, SIDE, SIDE, generator=g, dtype=torch.float64)
    yr = torch.randint(0, 3, (11,), generator=g)
    torch.manual_seed(0)
    net = models.ConvNet(1, 3, SIDE, width=8).double()
    params = [p for p in net.parameters() if p.ndim >= 2]

    def loss(a, b):
        return F.cross_entropy(net(a), b)

    whole = torch.autograd.grad(loss(xr, yr), params)
    for chunk in (1, 4, 5, 11, 20):
        for a, b in zip(_mean_grad(loss, xr, yr, params, chunk), whole):
            assert rel(a, b) < 1e-10, chunk
        net.zero_grad(set_to_none=True)
        _mean_backward(loss, xr, yr, chunk)
        for p, b in zip(params, whole):
            assert rel(p.grad, b) < 1e-10, chunk
    # with create_graph, the second-order gradient (DC's image gradient) is the whole batch's too
    u = xr.clone().requires_grad_(True)
    target = [torch.randn_like(p) for p in params]

    def second(chunk):
        gs = _mean_grad(loss, u, yr, params, chunk, create_graph=True)
        (gx,) = torch.autograd.grad(sum((a * t).sum() for a, t in zip(gs, target)), u)
        return gx

    assert rel(second(4), second(None)) < 1e-10


def test_dc_and_guard_in_uneven_pieces_equal_whole_batches(real):
    x, y = real
    kw = dict(iterations=2, loops=(2, 2), batch_real=8, batch_train=5, strategy=augment.STRATEGY_DIGITS, seed=3,
              **NET)
    for method in (condense.dc, condense.guard):
        whole = method(x, y, 3, chunk=None, **kw)
        for chunk in (3, 4):  # real batches of 8, synthetic classes of 3, training batches of 5 and 4
            pieces = method(x, y, 3, chunk=chunk, **kw)
            assert rel(pieces.loss, whole.loss) < 1e-4 and rel(pieces.x, whole.x) < 1e-4, (method, chunk)

    def bn_factory():  # batch norm: a piece's statistics would differ, so the batches stay whole
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, CLASSES))
    bn = {k: v for k, v in kw.items() if k not in NET}
    assert torch.equal(condense.dc(x, y, 3, net=bn_factory, chunk=3, **bn).x,
                       condense.dc(x, y, 3, net=bn_factory, chunk=None, **bn).x)


def test_bad_chunk_is_refused(real):
    x, y = real
    for bad in ("fast", 0, -2, 1.5):
        with pytest.raises(ValueError, match="chunk"):
            condense.dm(x, y, 1, iterations=1, batch_real=4, chunk=bad, **NET)
        with pytest.raises(ValueError, match="chunk"):
            condense.dc(x, y, 1, iterations=1, batch_real=4, chunk=bad, **NET)


def test_guard_takes_its_real_loss_in_pieces(real, monkeypatch):
    x, y = real
    seen, call = [], condense.CurvatureLoss.__call__
    monkeypatch.setattr(condense.CurvatureLoss, "__call__",
                        lambda self, m, a, b: seen.append(len(a)) or call(self, m, a, b))
    condense.guard(x, y, 1, iterations=1, loops=(1, 0), batch_real=8, chunk=3, **NET)
    assert seen == [3, 3, 2] * CLASSES  # each class's 8 real images in pieces of 3, 3 and 2
