"""The chapter drivers of chapters 10, 30 and 31 at a tiny scale: each returns the metrics its notebook reads."""

import math

import numpy as np
import pytest

from poisonbook import profiles
from poisonbook.experiments import condensation, gc_networks
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
    assert min(curve) >= out["curves"]["floors"]["1"]
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
