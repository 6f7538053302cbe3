"""The chapter drivers of chapters 10, 30 and 31 at a tiny scale: each returns the metrics its notebook reads."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from poisonbook import poison, profiles
from poisonbook.experiments import condensation, gc_networks
from poisonbook.experiments.poisonability import gc_step
from poisonbook.experiments.tables import DASH, num, pm


def _tiny31():
    cfg = profiles.get("gc-networks", "ci", eps_w_list=[0.1, 1.0], runs=1, tgda_epochs=1, gm_steps=2)
    cfg = gc_networks.setting_config(cfg, "mnist-lr")
    cfg["setting"] = dict(cfg["setting"], n_train=40, n_val=40, n_test=60, epochs=2, gc_epochs=4, fig3_eps_w=[0.1])
    return cfg


def test_gc_networks_setting_returns_every_metric_the_chapter_reads():
    out = gc_networks.run_setting(_tiny31())
    mt = out["metrics"]
    eps = ["0.03", "0.1", "1"]
    for key in (["clean_acc", "gradpc_target_delta", "target_eps_w", "tau2", "tauc", "t9_tgda_target_delta", "t9_tau2"]
                + [f"{m}@eps_d={e}" for e in eps for m in
                   ("gc_delta", "gc_delta_std", "control_delta", "gcplus_delta", "tgda_delta", "gm_delta",
                    "def_sever_gc_delta", "def_maxup_gcc_delta", "def_sever_removed_poisons", "t9_gc_delta")]
                + ["tgda_acc@eps_d=0.03", "randompc_acc@eps_w=1", "gradpc_acc@eps_w=1", "tau2@eps_w=0.1"]):
        assert key in mt, key
    assert mt["def_influence_gc_delta@eps_d=1"] is None, "influence is not run for LR: not measured, not nan"
    assert mt["gc_delta@eps_d=1"] == pytest.approx(np.mean(out["gc"]["1"]) - mt["clean_acc"])
    curve = out["curves"]["fig7"]["1"]
    assert curve[-1] < curve[0], "GC lowers ||g(chi)||"
    floors, tauc = out["curves"]["floors"], mt["tauc"]  # tau(c) = 0 at this tiny scale: see the test below
    for e, c in out["curves"]["fig7"].items():  # Theorem 4's floor: positive exactly below tau(c), and never beaten
        e_val = mt["tau2"] if e == "tau" else float(e)
        if not 0.9 * tauc <= e_val <= 1.1 * tauc:  # GC's ratio is round(eps_d n) / n: leave the edge alone
            assert (floors[e] > 0) == (e_val < tauc), (e, floors[e], tauc)
        assert min(c) >= floors[e] * (1 - 1e-9)
    assert set(out["curves"]["fig3"]) == {"0.1"} and out["artefacts"]["images_poisoned"].shape[1:] == (1, 28, 28)
    assert 0 <= mt["def_sever_removed_poisons@eps_d=1"] <= 1


def test_reachable_target_lands_the_victim_within_the_bound():
    cfg = gc_networks.reach_config(profiles.get("gc-networks", "ci"))
    cfg["reach"] = dict(cfg["reach"], n=150, gc_epochs=300, lbfgs_iters=300)
    out = gc_networks.reachable_target(cfg)
    for labels in ("clean", "target"):
        r = out["rows"][labels]
        assert r["distance"] <= r["bound"] and r["monotonicity_lhs"] >= r["monotonicity_rhs"] * (1 - 1e-6)
    assert out["metrics"]["grad_norm_end_target"] < out["metrics"]["grad_norm_start_target"] / 100
    assert out["metrics"]["distance_target"] < 0.1 * out["metrics"]["clean_target_distance"]


def test_condense_dataset_returns_every_method_and_its_images():
    plan = [dict(dataset="digits", ipcs=[1], methods=list(condensation.METHODS), iterations={"dm": {1: 3}, "dc": {1: 1}})]
    cfg = profiles.get("condensation", "ci", plan=plan, eval_models=1, eval_epochs_dc=5, eval_epochs_dsa=5)
    out = condensation.condense_dataset(condensation.dataset_config(cfg, "digits"))
    for m in condensation.METHODS:
        r = out["metrics"][m]["ipc1"]
        assert 0 <= r["acc_mean"] <= 100 and len(r["accuracies"]) == 1
        assert out["artefacts"][f"{m}_ipc1_x"].shape == (10, 1, 8, 8)
        assert sorted(out["artefacts"][f"{m}_ipc1_y"].tolist()) == list(range(10))
    assert out["metrics"]["dm"]["ipc1"]["iterations"] == 3 and len(out["losses"]["dm.ipc1"]) == 3
    assert not np.allclose(out["artefacts"]["dm_ipc1_x"], out["artefacts"]["random_ipc1_x"]), "DM moved the images"


def test_formatting_rounds_and_dashes():
    assert num(63.499999046) == "63.50" and num(-5.000001, 1, sign=True) == "-5.0"
    assert num(None) == num(float("nan")) == num("nan") == pm(None, 1.0) == DASH
    assert num(4.0573e-06, 2, sci=True) == "4.1e-06" and not math.isnan(float(num(0.5)))


@pytest.mark.parametrize("call, bad, error, word", [
    (gc_networks.setting_config, "no-such-setting", ValueError, "setting"),
    (condensation.dataset_config, "no-such-dataset", ValueError, "dataset"),
])
def test_bad_input(call, bad, error, word):
    cfg = profiles.get("gc-networks" if call is gc_networks.setting_config else "condensation", "ci")
    with pytest.raises(error, match=word):
        call(cfg, bad)


def test_certified_floor_is_positive_below_tau_c_and_never_beaten():
    """Theorem 4's floor on a target with tau(c) well above eps_d (a sign-flipped logistic regression on digits):
    positive, and no poison set (GC's optimised ones, 200 random ones) gets under it."""
    from poisonbook import data, models, poison, theory, train
    from torch.nn import functional as F

    d = data.subset(data.load("digits", "train"), 200, seed=0)
    torch.manual_seed(0)
    net = models.LogisticRegression(1, 10, 8)
    train.fit(net, d.x, d.y, epochs=30, lr=0.1, batch_size=64)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(-0.3)
    with torch.no_grad():
        tauc = theory.threshold_from_logits(net(d.x), d.y.numpy(), c_bound=10)
    eps = 0.05
    assert tauc > 4 * eps
    floor = gc_networks.certified_floor(net, "lr", d.x, d.y, eps)
    assert floor > 0
    res = poison.gradient_canceling(net, F.cross_entropy, d.x, d.y, eps, epochs=30, lr=1.0)
    assert min(res.grad_norms) >= floor * (1 - 1e-6)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        Xp = torch.rand((10, 1, 8, 8), generator=g) * 3 - 1
        yp = torch.randint(0, 10, (10,), generator=g)
        assert poison.mixed_gradient_norm(net, F.cross_entropy, d.x, d.y, Xp, yp) >= floor * (1 - 1e-6)



@pytest.mark.parametrize("resume", [False, True])
def test_dm_curve_holds_the_images_a_shorter_run_ends_with(resume, monkeypatch, tmp_path):
    """The curve's point at k iterations evaluates DM's images after k iterations: those a separate k-iteration
    ``condense.dm`` run ends with (no callback, no checkpoint). Also after a kill and a resume from a mid-run
    checkpoint, when the callback never sees the earlier iterations. Counts at or past the run's end are left out."""
    from poisonbook import condense, data
    monkeypatch.setenv("POISONBOOK_CACHE", str(tmp_path))
    monkeypatch.setattr(condensation, "_DM_CHECKPOINT_EVERY", 4)  # a checkpoint after 4 of the 8 iterations
    plan = [dict(dataset="digits", ipcs=[1], methods=["dm"], iterations={"dm": {1: 8}, "dc": {1: 1}})]
    cfg = condensation.dataset_config(profiles.get(
        "condensation", "ci", plan=plan, eval_models=1, eval_epochs_dc=3, eval_epochs_dsa=3, dm_curve=[3, 6, 7, 20],
        curve_models=1, checkpoint=resume), "digits")
    seen, real_curve, real_dm = {}, condensation._curve, condense.dm
    monkeypatch.setattr(condensation, "_curve", lambda snaps, cond, *a: (seen.update(snaps), real_curve(snaps, cond, *a))[1])
    if resume:  # the first driver call is killed; a second one (a new process: nothing kept in memory) resumes
        def killed(*a, **k):
            def stop(it, images, loss):
                k["callback"](it, images, loss)
                if it == 5:  # 6 iterations done; the checkpoint holds 4
                    raise KeyboardInterrupt
            return real_dm(*a, **{**k, "callback": stop})
        monkeypatch.setattr(condense, "dm", killed)
        with pytest.raises(KeyboardInterrupt):
            condensation.condense_dataset(cfg)
        monkeypatch.setattr(condense, "dm", real_dm)
    out = condensation.condense_dataset(cfg)
    assert out["dm_curve"]["ipc1"]["iterations"] == [3, 6, 7] == sorted(seen)
    train_set = data.load("digits", "train+val")
    stats = condense.channel_stats(train_set.x)
    for k in (3, 6, 7):
        short = real_dm(train_set.x, train_set.y, 1, iterations=k, batch_real=cfg.batch_real, init=cfg.init,
                        stats=stats, seed=0, width=cfg.width, depth=cfg.depth, lr=cfg.dm_lr, momentum=cfg.dm_momentum,
                        strategy=condensation.augment.strategy_for("digits"))
        mean, std = (t.view(1, -1, 1, 1) for t in short.stats)
        torch.testing.assert_close(seen[k] * std + mean, short.x, rtol=0, atol=1e-6)
    assert not torch.allclose(seen[3], seen[7]), "DM moved the images between the snapshots"


def test_paper_nn_is_three_linear_layers_with_leaky_relu():
    """Lu et al. C.1's NN (the authors' models.MLP): 784-784-784-10, leaky ReLU 0.2 after BOTH hidden layers."""
    net = gc_networks.PaperNN()
    assert [tuple(m.weight.shape) for m in (net.fc1, net.fc2, net.out)] == [(784, 784), (784, 784), (10, 784)]
    small = gc_networks.PaperNN(1, 3, 4, hidden=5).double()
    x = torch.randn(7, 1, 4, 4, dtype=torch.float64)
    lrelu = lambda t: torch.where(t > 0, t, 0.2 * t)  # noqa: E731
    h = lrelu(lrelu(x.flatten(1) @ small.fc1.weight.T + small.fc1.bias) @ small.fc2.weight.T + small.fc2.bias)
    assert torch.allclose(small(x), h @ small.out.weight.T + small.out.bias)


def test_gc_lr_rule_keeps_the_step_per_poison_fixed_across_n():
    """gc_step: lr = eta n / curvature, so GD on eq. (33) moves a poison by eta J^T r whatever n (eq. 34)."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3).double()
    moves = []
    for n in (50, 400):
        X = torch.rand(n, 4, dtype=torch.float64)
        y = torch.arange(n) % 3
        X_p0 = X[:10].clone()
        res = poison.gradient_canceling(net, F.cross_entropy, X, y, 10 / n, epochs=1, lr=gc_step(0.1, n),
                                        momentum=0.0, init=(X_p0, y[:10]))
        # the first move per unit of ||g(chi)|| (= ||r||): eta ||J^T r|| / ||r||, of the same size for both n
        moves.append(float((res.X_p - X_p0).norm()) / float(res.grad_norms[0]))
    assert 0.5 < moves[0] / moves[1] < 2, moves  # lr = 0.1 (fixed) instead would differ by the factor 8
