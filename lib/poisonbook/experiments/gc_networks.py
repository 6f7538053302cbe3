"""Chapter 31, "Gradient Canceling against neural networks" (Lu, Kamath & Yu 2023, Tables 1-5, 9, 10, Figures 3, 7).

One *setting* is a dataset and a model (``profiles.EXPERIMENTS["gc-networks"]``); :func:`run_setting` runs
every part the setting lists and returns its run record, :func:`reachable_target` the reachable-target
experiment of the chapter. The parts, in the order they run:

1. the clean victim (SGD, ``victim_lr``, mini-batches of ``victim_batch``, ``epochs`` epochs; a setting's ``victim``
   may set its own ``lr``, ``momentum`` and ``schedule``: the CNN's stable recipe);
2. Tables 1/5: RandomPC and GradPC at every ``eps_w``; the GC target is the GradPC model with the largest
   *validation* drop among those whose training-set ``tau(2)`` is at most the paper's (:func:`choose_target`);
3. Tables 2/4, Figure 7: GC (``runs`` seeds), GC+ (Adam and the target's labels, one seed) and a control (the
   victim on clean + GC's unmoved clean start) at every ``eps_d`` and at ``eps_d = tau(2)``;
4. TGDA and gradient matching (one seed); 5. Figure 3: GC at ``eps_d = 1`` against targets of other ``eps_w``;
6. Tables 3/10: Sever, influence removal and MaxUp against GC and GC-c; 7. Table 9: GC against TGDA's victim;
8. Appendix C.11: example poisons (stored as artefacts).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import data, defend, models, poison, theory, train
from ..profiles import Config
from .poisonability import gc_step

__all__ = ["PaperNN", "LAST_LAYER", "lr_text", "setting_config", "reach_config", "certified_floor", "run_setting",
           "reachable_target", "eps_key"]

LOSS = F.cross_entropy
LAST_LAYER = {"lr": ["linear.weight", "linear.bias"], "mlp": ["out.weight", "out.bias"],
              "cnn": ["fc2.weight", "fc2.bias"], "resnet18": ["fc.weight", "fc.bias"],
              "resnet34": ["fc.weight", "fc.bias"]}


class PaperNN(nn.Module):
    """The paper's NN (Lu et al. 2023, C.1): "a neural network (NN) with three layers, where we choose hidden size as
    784 and apply leaky ReLU with negative_slope = 0.2", i.e. three linear layers 784-784-784-10, as the authors'
    ``models.MLP`` class. (``poisonbook.models.MLP`` has one hidden layer.) ``hidden=None``: the paper's width, the
    input size.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, im_size: int = 28, hidden: int | None = None,
                 negative_slope: float = 0.2):
        super().__init__()
        d = in_channels * im_size * im_size
        h = hidden or d
        self.fc1, self.fc2, self.out = nn.Linear(d, h), nn.Linear(h, h), nn.Linear(h, num_classes)
        self.act = nn.LeakyReLU(negative_slope)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x.flatten(1)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(x))


def lr_text(s: dict) -> str:
    """GC's learning rate of setting ``s`` in words, for a record's scale."""
    return f"lr {s['gc_lr']:g}" if s["gc_eta"] is None else f"lr {s['gc_eta']:g} n"


def eps_key(e) -> str:
    """The key of a ratio in records and metric names: ``"0.03"``, ``"1"``, ``"tau"``."""
    return "tau" if e == "tau" else f"{e:g}"


def setting_config(cfg: Config, name: str) -> Config:
    """The configuration of one setting: the shared settings of ``cfg`` and that setting (as ``setting``)."""
    settings = {s["name"]: s for s in cfg["settings"]}
    if name not in settings:
        raise ValueError(f"no setting {name!r} in this profile; it has {', '.join(settings)}")
    return Config({**{k: v for k, v in cfg.items() if k != "settings"}, "setting": settings[name]})


def reach_config(cfg: Config) -> Config:
    """The configuration of the reachable-target experiment: only what it reads (``reach``, ``seed``)."""
    return Config(reach=cfg["reach"], seed=cfg.get("seed", 0), profile=cfg.get("profile"))


def certified_floor(target, model_name: str, X, y, eps_d: float) -> float:
    """Theorem 4's lower bound on ``||g(chi)||`` for ANY ``m = eps_d n`` poisons (0 when ``eps_d >= tau(c)``)."""
    with torch.no_grad():
        H = torch.cat([target(X[i:i + 1024]) for i in range(0, len(X), 1024)])
    s = float(np.mean(theory.cross_entropy_trace_terms(H.cpu().double().numpy(), y.cpu().numpy())))
    theta = torch.cat([dict(target.named_parameters())[k].detach().reshape(-1) for k in LAST_LAYER[model_name]])
    return max(0.0, (s + eps_d * theory.lambert_bound(H.shape[1])) / (1 + eps_d)) / float(theta.norm())


@dataclass
class _Setting:
    """One setting's data, victim recipe and attacks (the closures of the old notebook cell, named)."""

    cfg: Config
    X: torch.Tensor
    y: torch.Tensor
    Xv: torch.Tensor
    yv: torch.Tensor
    Xt: torch.Tensor
    yt: torch.Tensor
    shape: tuple
    classes: int
    seed: int
    seconds: dict = field(default_factory=dict)

    @property
    def s(self) -> dict:
        return self.cfg["setting"]

    @property
    def n(self) -> int:
        return len(self.X)

    def new_model(self):
        s = self.s
        kw = {"in_channels": self.shape[0], "num_classes": self.classes, "im_size": self.shape[1]}
        if s["model"] == "mlp":
            return PaperNN(**kw, hidden=s["hidden"]).to(self.X.device)
        if s["model"] in ("lr", "cnn"):
            return models.MODELS[s["model"]](**kw).to(self.X.device)
        return models.make(s["model"], self.shape, self.classes).to(self.X.device)

    @property
    def recipe(self) -> dict:
        """The victim's optimiser: plain SGD at ``victim_lr``, constant, unless the setting's ``victim`` overrides."""
        return {"lr": self.cfg.victim_lr, "momentum": 0.0, "schedule": "constant", **(self.s.get("victim") or {})}

    def victim(self, Xtr, ytr, maxup: bool = False):
        """A fresh victim (same initialisation every time) trained by the setting's recipe (MaxUp: no schedule)."""
        cfg, s, rc = self.cfg, self.s, self.recipe
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self.new_model()
        if maxup:
            # noise is clamped to the pixel range, except on unclipped GC poisons, which already leave it
            clamp = (0.0, 1.0) if float(Xtr.min()) >= 0 and float(Xtr.max()) <= 1 else None
            defend.maxup_fit(net, Xtr, ytr, loss_fn=LOSS, epochs=s["epochs"], lr=rc["lr"],
                             batch_size=cfg.victim_batch, momentum=rc["momentum"], m=cfg.maxup_m, sigma=cfg.maxup_sigma,
                             clamp=clamp, seed=self.seed)
        else:
            train.fit(net, Xtr, ytr, epochs=s["epochs"], batch_size=cfg.victim_batch, seed=self.seed, **rc)
        return net.eval()

    def retrained(self, Xp, yp):
        return self.victim(torch.cat([self.X, Xp]), torch.cat([self.y, yp]))

    def acc(self, model) -> float:
        """Test accuracy in percent."""
        return 100 * train.evaluate(model, self.Xt, self.yt)

    @property
    def gc_lr(self) -> float:
        """GC's lr: the book's rule (``gc_step``, the setting's ``gc_eta``) or the paper's constant ``gc_lr``."""
        s = self.s
        return s["gc_lr"] if s["gc_eta"] is None else gc_step(s["gc_eta"], self.n)

    def gc(self, target, eps, seed, clip=None):
        s = self.s
        return poison.gradient_canceling(target, LOSS, self.X, self.y, eps, epochs=s["gc_epochs"], lr=self.gc_lr,
                                         momentum=self.cfg.gc_momentum, clip=clip, batch_size=s["gc_batch"],
                                         seed=seed)

    def gc_plus(self, target, eps, seed):
        """GC+: Adam and the target's labels (the chapter's reachable-target section)."""
        s = self.s
        return poison.gradient_canceling(target, LOSS, self.X, self.y, eps, epochs=s["gc_epochs"],
                                         lr=self.cfg.gcplus_lr, optimizer="adam", labels="target",
                                         batch_size=s["gc_batch"], seed=seed)

    def gradpc(self, clean, eps_w):
        return poison.grad_pc(clean, LOSS, self.X, self.y, eps_w, batch_size=self.cfg.gradpc_batch,
                              step=self.cfg.gradpc_step, seed=self.seed).model

    def tau(self, model, classes: int | None = 2) -> float:
        """tau(2) (``classes=2``, the paper's Table 2) or tau(c) (``None``) of ``model`` on the training set."""
        with torch.no_grad():
            H = model(self.X).double().cpu().numpy()
        return theory.threshold_from_logits(H, self.y.cpu().numpy(), classes)

    def tick(self, part: str, since: list) -> None:
        now = time.perf_counter()
        self.seconds[part] = self.seconds.get(part, 0.0) + now - since[0]
        since[0] = now


def _load(cfg: Config, device) -> _Setting:
    s, seed = cfg["setting"], cfg.get("seed", 0)
    pick = lambda d, k: data.subset(d, k, seed=seed) if k and k < len(d) else d  # noqa: E731
    tr, va, te = (data.load(s["dataset"], split) for split in ("train", "val", "test"))
    tr, va, te = pick(tr, s["n_train"]), pick(va, s["n_val"]), pick(te, s["n_test"])
    return _Setting(cfg, tr.x.to(device), tr.y.to(device), va.x.to(device), va.y.to(device), te.x.to(device),
                    te.y.to(device), tuple(tr.shape), tr.num_classes, seed)


def choose_target(st: _Setting, clean) -> tuple[list[dict], dict, dict]:
    """Tables 1/5 and the GC target: RandomPC/GradPC rows, the chosen row, and the GradPC models by eps_w."""
    choice = poison.choose_eps_w(lambda e: st.gradpc(clean, e), clean, st.cfg.eps_w_list, st.Xv, st.yv)
    rows = []
    for row in choice.table:
        e, tgt = row["eps_w"], choice.models[row["eps_w"]]
        rows.append({"eps_w": e, "randompc_acc": st.acc(poison.random_pc(clean, e, seed=st.seed).model),
                     "gradpc_acc": st.acc(tgt), "gradpc_val_drop": 100 * row["val_drop"],
                     "tau2": st.tau(tgt), "tauc": st.tau(tgt, None)})
    ok = [r for r in rows if r["tau2"] <= st.s["tau_paper"] and r["gradpc_val_drop"] > 0]
    best = max(ok, key=lambda r: r["gradpc_val_drop"]) if ok else rows[0]
    return rows, best, choice.models


def _eps_list(st: _Setting) -> list:
    return list(st.cfg.eps_d_list) + (["tau"] if "gc" in st.s["parts"] else [])


def _tau_usable(st: _Setting, tau: float) -> bool:
    return 0 < tau <= st.cfg.tau_max and round(tau * st.n) >= 1


def gc_runs(st: _Setting, target, tau2: float) -> tuple[dict, dict]:
    """Tables 2/4 and Figure 7: GC (``runs`` seeds), GC+ and the control at every eps_d; and the seed-0 poisons.

    Asserts Theorem 4 on every run: no poison set goes below the certified floor.
    """
    out = {"gc": {}, "gcplus": {}, "control": {}, "fig7": {}, "fig7_plus": {}, "floors": {}}
    seed0 = {}
    for e in _eps_list(st):
        k, ev = eps_key(e), (tau2 if e == "tau" else e)
        if e == "tau" and not _tau_usable(st, ev):
            out["gc"][k], out["gcplus"][k], out["control"][k] = None, None, None
            continue
        start = poison.gradient_canceling(target, LOSS, st.X, st.y, ev, epochs=0, seed=st.seed)  # clean copies
        out["control"][k] = st.acc(st.retrained(start.X_p, start.y_p))
        accs = []
        for r in range(st.cfg.runs):
            res = st.gc(target, ev, st.seed + r)
            vic = st.retrained(res.X_p, res.y_p)
            accs.append(st.acc(vic))
            floor = certified_floor(target, st.s["model"], st.X, st.y, len(res.X_p) / st.n)
            assert min(res.grad_norms) >= floor * (1 - 1e-5), "Theorem 4: no poison set beats the floor"
            if r == 0:
                out["fig7"][k], out["floors"][k], seed0[k] = res.grad_norms, floor, (res, vic)
        out["gc"][k] = accs
        res = st.gc_plus(target, ev, st.seed)
        assert min(res.grad_norms) >= floor * (1 - 1e-5), "Theorem 4 holds for any labels"
        out["gcplus"][k] = st.acc(st.retrained(res.X_p, res.y_p))
        out["fig7_plus"][k] = res.grad_norms
    return out, seed0


def tgda_runs(st: _Setting, clean) -> tuple[dict, dict]:
    """TGDA at every eps_d (one seed): accuracy, TGDA's eps_w (Table 1), its own objective; and its victims."""
    cfg, rows, victims = st.cfg, {}, {}
    w0 = torch.cat([p.detach().reshape(-1) for p in clean.parameters()])
    for e in cfg.eps_d_list:
        res = poison.tgda(clean, st.X, st.y, st.Xv, st.yv, e, loss_fn=LOSS, epochs=cfg.tgda_epochs,
                          leader_lr=cfg.tgda_leader_lr, follower_lr=st.recipe["lr"], cg_iters=cfg.tgda_cg_iters,
                          damping=cfg.tgda_damping, hessian_batch=cfg.tgda_hessian_batch, seed=st.seed)
        vic = st.retrained(res.X_p, res.y_p)
        wv = torch.cat([p.detach().reshape(-1) for p in vic.parameters()])
        victims[e] = vic
        rows[eps_key(e)] = {"acc": st.acc(vic), "eps_w": float((wv - w0).norm() / w0.norm()),
                            "val_loss_start": res.val_losses[0], "val_loss_end": res.val_losses[-1]}
    return rows, victims


def gm_runs(st: _Setting, clean) -> dict:
    """Gradient matching (eq. 36) at every eps_d, one seed: the retrained victim's test accuracy."""
    cfg, accs = st.cfg, {}
    for e in cfg.eps_d_list:
        res = poison.gradient_matching(clean, st.X, st.y, e, loss_fn=LOSS, steps=cfg.gm_steps, lr=cfg.gm_lr,
                                       eps_x=cfg.gm_eps_x, seed=st.seed)
        accs[eps_key(e)] = st.acc(st.retrained(res.X_p, res.y_p))
    return accs


def figure3(st: _Setting, clean, pc_rows: list[dict], gradpc_models: dict) -> dict:
    """Figure 3: GC at eps_d = 1 against GradPC targets of the setting's ``fig3_eps_w``."""
    curves = {}
    for e in st.s["fig3_eps_w"]:
        tgt = gradpc_models[e] if e in gradpc_models else st.gradpc(clean, e)
        row = next((r for r in pc_rows if r["eps_w"] == e), None)
        curves[eps_key(e)] = {"tau2": row["tau2"] if row else st.tau(tgt),
                              "grad_norms": st.gc(tgt, 1.0, st.seed).grad_norms}
    return curves


def _defended(st: _Setting, res, vic, tag: str) -> dict:
    """Sever, influence removal and MaxUp against one set of poisons (removing eps_d n of the n + m points)."""
    s, n = st.s, st.n
    Xm, ym = torch.cat([st.X, res.X_p]), torch.cat([st.y, res.y_p])
    frac = len(res.X_p) / len(Xm)
    sv = defend.sever(vic, LOSS, Xm, ym, frac, param_names=s["sever_params"])
    row = {f"sever_{tag}": st.acc(st.victim(Xm[sv.keep], ym[sv.keep])),
           f"sever_{tag}_removed_poisons": float((~sv.keep[n:]).float().mean()),
           f"influence_{tag}": None, f"influence_{tag}_removed_poisons": None}
    if s["influence"]:
        inf = defend.influence_removal(vic, LOSS, Xm, ym, frac, param_names=LAST_LAYER[s["model"]])
        row[f"influence_{tag}"] = st.acc(st.victim(Xm[inf.keep], ym[inf.keep]))
        row[f"influence_{tag}_removed_poisons"] = float((~inf.keep[n:]).float().mean())
    row[f"maxup_{tag}"] = st.acc(st.victim(Xm, ym, maxup=True))
    return row


def defenses(st: _Setting, target, seed0: dict) -> dict:
    """Tables 3/10: GC (the seed-0 poisons) and GC-c (clipped to the clean pixel range) against each defense."""
    rows = {}
    for e in st.cfg.eps_d_list:
        res, vic = seed0[eps_key(e)]
        res_c = st.gc(target, e, st.seed, clip="data")
        vic_c = st.retrained(res_c.X_p, res_c.y_p)
        rows[eps_key(e)] = {"gc": st.acc(vic), "gcc": st.acc(vic_c), **_defended(st, res, vic, "gc"),
                            **_defended(st, res_c, vic_c, "gcc")}
    return rows


def table9(st: _Setting, tgda_victim) -> dict:
    """Table 9: GC against the victim TGDA produced at eps_d = 1."""
    tau9 = st.tau(tgda_victim)
    out = {"tau2": tau9, "target_acc": st.acc(tgda_victim), "gc_acc": {}}
    for e in _eps_list(st):
        ev = tau9 if e == "tau" else e
        if e == "tau" and not _tau_usable(st, ev):
            out["gc_acc"][eps_key(e)] = None
            continue
        res = st.gc(tgda_victim, ev, st.seed)
        out["gc_acc"][eps_key(e)] = st.acc(st.retrained(res.X_p, res.y_p))
    return out


def poison_images(st: _Setting, seed0: dict) -> tuple[dict, float]:
    """Appendix C.11: the clean images GC starts from and the seed-0 poisons of the largest eps_d <= 1."""
    e = max((k for k in seed0 if k != "tau"), key=float)
    res = seed0[e][0]
    k = min(st.cfg.images, len(res.X_p))
    idx = torch.randperm(st.n, generator=torch.Generator().manual_seed(st.seed))[:k].to(st.X.device)  # GC's draw
    assert torch.equal(res.y_p[:k], st.y[idx]), "the poisons start from these clean images"
    return {"images_clean": st.X[idx].cpu(), "images_poisoned": res.X_p[:k].cpu()}, float(e)


def _nan_safe_delta(v, a0):
    return None if v is None else v - a0


def metrics_of(o: dict) -> dict:
    """The record's metrics (names shared with ``results.PUBLISHED`` and the reproduction report)."""
    a0 = o["clean_acc"]
    mt = {"clean_acc": a0, "gradpc_target_delta": o["target"]["gradpc_acc"] - a0,
          "target_eps_w": o["target"]["eps_w"], "tau2": o["target"]["tau2"], "tauc": o["target"]["tauc"]}
    for r in o["pc"]:
        e = eps_key(r["eps_w"])
        mt[f"randompc_acc@eps_w={e}"], mt[f"gradpc_acc@eps_w={e}"] = r["randompc_acc"], r["gradpc_acc"]
        mt[f"tau2@eps_w={e}"] = r["tau2"]
    for e, accs in o["gc"].items():
        d = None if accs is None else np.array(accs) - a0
        mt[f"gc_delta@eps_d={e}"] = None if d is None else float(d.mean())
        mt[f"gc_delta_std@eps_d={e}"] = None if d is None else float(d.std())
        mt[f"gc_final_grad_norm@eps_d={e}"] = o["curves"]["fig7"][e][-1] if e in o["curves"]["fig7"] else None
    for e, acc in o["control"].items():
        mt[f"control_delta@eps_d={e}"] = _nan_safe_delta(acc, a0)
    for e, acc in o["gcplus"].items():
        mt[f"gcplus_delta@eps_d={e}"] = _nan_safe_delta(acc, a0)
        plus = o["curves"]["fig7_plus"]
        mt[f"gcplus_final_grad_norm@eps_d={e}"] = plus[e][-1] if e in plus else None
    for e, t in o["tgda"].items():
        mt[f"tgda_delta@eps_d={e}"], mt[f"tgda_eps_w@eps_d={e}"] = t["acc"] - a0, t["eps_w"]
        if e == "0.03":
            mt["tgda_acc@eps_d=0.03"] = t["acc"]
    for e, acc in o["gm"].items():
        mt[f"gm_delta@eps_d={e}"] = acc - a0
    for e, r in o["defenses"].items():
        for key in ("gc", "gcc", "sever_gc", "sever_gcc", "influence_gc", "influence_gcc", "maxup_gc", "maxup_gcc"):
            mt[f"def_{key}_delta@eps_d={e}"] = _nan_safe_delta(r[key], a0)
        mt[f"def_sever_removed_poisons@eps_d={e}"] = r["sever_gc_removed_poisons"]
        mt[f"def_influence_removed_poisons@eps_d={e}"] = r["influence_gc_removed_poisons"]
    if o["table9"]:
        t9 = o["table9"]
        mt["t9_tgda_target_delta"], mt["t9_tau2"] = t9["target_acc"] - a0, t9["tau2"]
        for e, acc in t9["gc_acc"].items():
            mt[f"t9_gc_delta@eps_d={e}"] = _nan_safe_delta(acc, a0)
    return mt


def run_setting(cfg: Config) -> dict:
    """Every part of the paper one setting lists (``cfg["setting"]["parts"]``); the run record of that setting.

    ``cfg`` is a :func:`setting_config`. Extra entries: ``pc`` (Tables 1/5 rows), ``target`` (the chosen GC
    target), ``gc`` (test accuracies per run), ``gcplus``, ``control``, ``tgda``, ``gm``, ``defenses``,
    ``table9``, ``curves`` (Figures 3 and 7, the floors), ``seconds`` per part; artefacts: example poisons.
    """
    device = train.choose_device()
    s, t0 = cfg["setting"], time.perf_counter()
    st = _load(cfg, device)
    since = [t0]
    clean = st.victim(st.X, st.y)
    o = {"clean_acc": st.acc(clean), "gc": {}, "gcplus": {}, "control": {}, "tgda": {}, "gm": {},
         "defenses": {}, "table9": {}, "curves": {"fig7": {}, "fig7_plus": {}, "floors": {}, "fig3": {}}}
    o["pc"], best, gradpc_models = choose_target(st, clean)
    o["target"] = {k: best[k] for k in ("eps_w", "tau2", "tauc", "gradpc_acc")}
    target = gradpc_models[best["eps_w"]]
    st.tick("clean model, RandomPC, GradPC", since)
    seed0 = {}
    if "gc" in s["parts"]:
        runs, seed0 = gc_runs(st, target, best["tau2"])
        for key in ("gc", "gcplus", "control"):
            o[key] = runs[key]
        o["curves"].update({k: runs[k] for k in ("fig7", "fig7_plus", "floors")})
    st.tick("GC and GC+", since)
    tgda_victims = {}
    if "tgda" in s["parts"]:
        o["tgda"], tgda_victims = tgda_runs(st, clean)
    if "gm" in s["parts"]:
        o["gm"] = gm_runs(st, clean)
    st.tick("TGDA and gradient matching", since)
    if "fig3" in s["parts"]:
        o["curves"]["fig3"] = figure3(st, clean, o["pc"], gradpc_models)
    st.tick("Figure 3", since)
    if "defenses" in s["parts"] and seed0:
        o["defenses"] = defenses(st, target, seed0)
        o["maxup_clean"] = st.acc(st.victim(st.X, st.y, maxup=True))
    st.tick("defenses", since)
    if "table9" in s["parts"] and 1.0 in tgda_victims:
        o["table9"] = table9(st, tgda_victims[1.0])
    artefacts = {}
    if "images" in s["parts"] and seed0:
        artefacts, o["images_eps_d"] = poison_images(st, seed0)
    st.tick("Table 9 and images", since)
    o["seconds"] = st.seconds
    o["n"] = st.n
    o["scale"] = (f"{s['dataset']} subset: {st.n} training images, model {s['model']}, victim {s['epochs']} "
                  f"epochs, GC {s['gc_epochs']} epochs ({lr_text(s)}), {cfg.runs} GC run(s), GC+ 1 run (Adam "
                  f"lr {cfg.gcplus_lr:g}), TGDA {cfg.tgda_epochs} iterations, {device.type}")
    return {"metrics": metrics_of(o), "artefacts": artefacts, **o, "device": device.type}


def reachable_target(cfg: Config) -> dict:
    """The reachable-target experiment: a convex victim (L2-regularised LR) and a target it can reach.

    The target is the victim trained to convergence (L-BFGS) on clean + a label-flipped copy; GC (Adam) with
    the clean points' labels and with the target's labels, the victim retrained on each result. Returns, for
    each, the quantities the chapter's strong-monotonicity argument bounds: ``||grad F||`` at the target (as
    GC reports it and recomputed), ``<grad F(u) - grad F(v), u - v>`` against ``lam ||u - v||^2``, and the
    distance of victim and target against ``(||grad F(u)|| + ||grad F(v)||) / lam``.
    """
    rc, seed, device = cfg["reach"], cfg.get("seed", 0), train.choose_device()
    tr = data.subset(data.load(rc["dataset"], "train"), rc["n"], seed=seed)
    te = data.load(rc["dataset"], "test")
    Xr, yr = tr.x.double().to(device), tr.y.to(device)
    Xs, ys = te.x.double().to(device), te.y.to(device)
    C, lam = tr.num_classes, rc["weight_decay"]
    new_lr = lambda: models.LogisticRegression(tr.shape[0], C, tr.shape[1]).double()  # noqa: E731
    to_min = dict(optimizer="lbfgs", epochs=rc["lbfgs_iters"], lr=1.0, weight_decay=lam, seed=seed)
    flat = lambda mdl: torch.cat([p.detach().reshape(-1) for p in mdl.parameters()])  # noqa: E731

    def grad_F(mdl, Xp, yp):  # gradient of the victim's objective F on clean + poisons
        return poison.parameter_gradient(mdl, LOSS, torch.cat([Xr, Xp]), torch.cat([yr, yp])) + lam * flat(mdl)

    target = poison.retrain(new_lr, Xr, yr, Xr, (yr + 1) % C, Xs, ys, **to_min)   # reachable: the flipped copy
    clean = poison.retrain(new_lr, Xr, yr, Xr, yr, Xs, ys, **to_min)              # duplicated clean = clean min
    w_t = flat(target.model)
    rows, curves = {}, {}
    for labels in ("clean", "target"):
        start = poison.gradient_canceling(target.model, LOSS, Xr, yr, 1.0, epochs=0, labels=labels, seed=seed)
        with torch.no_grad():
            trace = theory.cross_entropy_trace_terms(target.model(start.X_p).cpu().numpy(), start.y_p.cpu().numpy())
        res = poison.gradient_canceling(target.model, LOSS, Xr, yr, 1.0, epochs=rc["gc_epochs"], optimizer="adam",
                                        lr=rc["adam_lr"], labels=labels, weight_decay=lam, seed=seed)
        vic = poison.retrain(new_lr, Xr, yr, res.X_p, res.y_p, Xs, ys, **to_min)
        gu, gv = grad_F(vic.model, res.X_p, res.y_p), grad_F(target.model, res.X_p, res.y_p)
        du = flat(vic.model) - w_t
        curves[labels] = res.grad_norms
        rows[labels] = {"positive_trace_start_percent": 100 * float((trace > 0).mean()),
                        "grad_norm_start": res.grad_norms[0], "grad_norm_end": res.grad_norms[-1],
                        "grad_F_target": float(gv.norm()), "grad_F_victim": float(gu.norm()),
                        "monotonicity_lhs": float((gu - gv) @ du), "monotonicity_rhs": lam * float(du @ du),
                        "victim_acc": 100 * vic.accuracy, "distance": float(du.norm()),
                        "bound": (float(gu.norm()) + float(gv.norm())) / lam}
    metrics = {"clean_acc": 100 * clean.accuracy, "target_acc": 100 * target.accuracy,
               "clean_target_distance": float((flat(clean.model) - w_t).norm()),
               **{f"{k}_{labels}": v for labels, r in rows.items() for k, v in r.items()}}
    return {"metrics": metrics, "rows": rows, "curves": curves, "device": device.type,
            "scale": f"{rc['dataset']}, {len(Xr)} training images, LR with weight decay {lam:g}, GC {rc['gc_epochs']} "
                     f"Adam epochs (lr {rc['adam_lr']:g}), L-BFGS victims ({rc['lbfgs_iters']} iterations)"}
