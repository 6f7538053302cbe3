"""Chapter 40, "Are condensed datasets robust?": GUARD (papers/002), Tables 1-2, Figure 2, appendices D-F,
the curvature checks of Sec. 5-6 on a trained ConvNet, and the mechanism (lambda_1 of GUARD vs DC models).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .. import attacks, augment, condense, data, models, train
from ..cache import cache_dir
from ..defend import adversarial_fit
from ..theory import curvature

__all__ = ["robustness", "curvature_checks", "METHODS"]

#: Condensation methods of Table 2 here: DC, DSA, DM, GUARD (eq. 8, "paper") and the fork's variant ("code").
METHODS = ("dc", "dsa", "dm", "guard", "guard-code")


def _mean_std(values) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std())


def _condense(method, x, y, ipc, cfg, dataset):
    """One synthetic set; the cpu profile's reduced loops and iterations come from ``cfg``."""
    common = dict(width=cfg.width, depth=cfg.depth, batch_real=cfg.batch_real, seed=cfg.seed)
    ckpt = (lambda: cache_dir() / "ch40" / f"{dataset}-{method}-ipc{ipc}.pt") if cfg.checkpoint else (lambda: None)
    if method == "dm":
        return condense.dm(x, y, ipc, iterations=cfg.iterations["dm"][ipc], checkpoint=ckpt(), **common)
    dc_kw = dict(iterations=cfg.iterations["dc"][ipc], loops=tuple(cfg.loops[ipc]), checkpoint=ckpt(), **common)
    if method == "dc":
        return condense.dc(x, y, ipc, **dc_kw)
    if method == "dsa":
        return condense.dsa(x, y, ipc, strategy=augment.strategy_for(dataset), **dc_kw)
    form = "code" if method == "guard-code" else "paper"
    return condense.guard(x, y, ipc, lam=cfg.lam, h=cfg.h, form=form, **dc_kw)


def _assess(model: nn.Module, xt, yt, xc, yc, settings, cfg, seed) -> dict:
    """Clean and robust accuracy (%) of one network, and its mean lambda_1 on the curvature images."""
    out = {"clean": 100 * train.evaluate(model, xt, yt)}
    for name, s in settings.items():
        gen = torch.Generator().manual_seed(seed)
        out[name] = 100 * attacks.robust_accuracy(model, xt, yt, generator=gen, **s)
    lam, _ = curvature.top_eigen(curvature.per_sample_loss(model, yc), xc, iters=cfg.curv_iters,
                                 generator=torch.Generator().manual_seed(seed))
    out["lambda1"] = float(lam.mean())
    return out


def _summarise(prefix: str, rows: list[dict], metrics: dict) -> None:
    for key in rows[0]:
        metrics[f"{prefix}.{key}_mean"], metrics[f"{prefix}.{key}_std"] = _mean_std([r[key] for r in rows])


def robustness(cfg) -> dict:
    """Tables 1-2 and appendix D: clean and robust accuracy (%) of ConvNets trained on DC, DSA, DM and GUARD
    sets (mean and population std over ``eval_models`` networks), the mean top input-Hessian eigenvalue
    of the same networks on real test images (the mechanism), appendix E (adversarial training on the
    DC set) and appendix F (ART's PGD-100 and Square on DC and GUARD networks).

    Metrics ``<paper dataset>.ipc<k>.<method>.<clean|linf*|linf|l2|lambda1>_<mean|std>`` (accuracies in %),
    ``.seconds`` (condensation time); appendix E ``<d>.ipc<k>.dc-at.*`` with ``.train_seconds``;
    appendix F ``<d>.ipc<k>.<method>.<art attack>_mean``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = train.choose_device()
    metrics, artefacts, timing = {}, {}, {}
    for entry in cfg.plan:
        name, dname = entry["name"], entry["dataset"]
        tr, te = data.load(dname, "train"), data.load(dname, "test")
        tr = data.subset(tr, cfg.train_size, seed=cfg.seed) if cfg.train_size else tr
        te = data.subset(te, cfg.test_size, seed=cfg.seed)
        x, y = tr.x.to(device), tr.y.to(device)
        xt, yt = te.x.to(device), te.y.to(device)
        xc, yc = xt[:cfg.curv_size], yt[:cfg.curv_size]
        settings = attacks.attack_settings(dname)
        for ipc in entry["ipcs"]:
            sets = {}
            for method in cfg.methods:
                t0 = time.perf_counter()
                syn = _condense(method, x, y, ipc, cfg, dname)
                sets[method] = syn
                timing[f"{name}.ipc{ipc}.{method}.seconds"] = time.perf_counter() - t0
                ev = condense.evaluate_synthetic(syn.x, syn.y, xt, yt, num_models=cfg.eval_models,
                                                 epochs=cfg.eval_epochs, width=cfg.width, depth=cfg.depth,
                                                 stats=syn.stats, seed=cfg.seed, keep_models=True)
                rows = [_assess(m, xt, yt, xc, yc, settings, cfg, cfg.seed + i) for i, m in enumerate(ev.models)]
                _summarise(f"{name}.ipc{ipc}.{method}", rows, metrics)
                metrics[f"{name}.ipc{ipc}.{method}.seconds"] = syn.seconds
                metrics[f"{name}.ipc{ipc}.{method}.eval_seconds"] = ev.seconds
                if method == "guard":
                    artefacts[f"{name}.ipc{ipc}.guard"] = syn.x.clamp(0, 1).cpu()
                if (name, ipc) in [tuple(a) for a in cfg.appendix_f] and method in ("dc", "guard"):
                    n = cfg.appendix_f_n
                    s = settings["linf"]
                    for attack in cfg.appendix_f_attacks:
                        accs = [100 * attacks.art_robust_accuracy(attack, m, xt[:n], yt[:n], eps=s["eps"],
                                                                  alpha=s["alpha"], steps=cfg.appendix_f_steps,
                                                                  num_classes=tr.num_classes)
                                for m in ev.models]
                        metrics[f"{name}.ipc{ipc}.{method}.{attack}_mean"], \
                            metrics[f"{name}.ipc{ipc}.{method}.{attack}_std"] = _mean_std(accs)
            if (name, ipc) in [tuple(a) for a in cfg.appendix_e] and "dc" in sets:
                metrics.update(_adversarial_training(sets["dc"], xt, yt, xc, yc, settings, cfg, f"{name}.ipc{ipc}"))
    scale = (f"{', '.join(e['dataset'] for e in cfg.plan)}; ConvNet width {cfg.width}, depth {cfg.depth}; "
             f"DC/DSA/GUARD {cfg.iterations['dc']} iterations with loops {cfg.loops}, DM {cfg.iterations['dm']}; "
             f"{cfg.batch_real} real images per class; {cfg.eval_models} evaluation networks x {cfg.eval_epochs} "
             f"epochs (no augmentation); {cfg.test_size} test images; lambda_1 on {cfg.curv_size} of them.")
    return {"metrics": metrics, "artefacts": artefacts, "timing": timing, "scale": scale}


def _adversarial_training(syn, xt, yt, xc, yc, settings, cfg, prefix) -> dict:
    """Appendix E: ConvNets adversarially trained (PGD, the ``linf`` setting) on the DC set."""
    mean, std = (s.to(xt.device) for s in syn.stats)
    xs = syn.x.clamp(0, 1)  # PGD works in [0, 1]; DC's images are not clipped
    norm = condense.Standardize(mean, std)
    rows, seconds = [], []
    shape, classes = tuple(xs.shape[1:]), int(syn.y.max()) + 1
    for i in range(cfg.eval_models):
        torch.manual_seed(cfg.seed + i)
        net = models.ConvNet(shape[0], classes, shape[1], width=cfg.width, depth=cfg.depth).to(xt.device)
        hist = adversarial_fit(net, xs, syn.y, **{k: v for k, v in settings["linf"].items()},
                               epochs=cfg.eval_epochs, lr=0.01, transform=norm, seed=cfg.seed + i)
        seconds.append(hist["seconds"])
        rows.append(_assess(nn.Sequential(norm, net).eval(), xt, yt, xc, yc, settings, cfg, cfg.seed + i))
    out = {}
    _summarise(f"{prefix}.dc-at", rows, out)
    out[f"{prefix}.dc-at.train_seconds"] = float(np.sum(seconds))
    return out


def curvature_checks(cfg) -> dict:
    """Sec. 5-6 on a ConvNet trained on real images: finite-difference vs exact HVP, power iteration vs
    the dense Hessian's eigenvalues (8x8 digits), bound (2) vs PGD on the quadratic model, cos(grad, v_1)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = {}
    for dname, n_train in cfg.datasets:
        tr, te = data.load(dname, "train"), data.load(dname, "test")
        tr = data.subset(tr, n_train, seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        net = models.ConvNet(tr.shape[0], tr.num_classes, tr.shape[1], width=cfg.width, depth=cfg.depth)
        train.fit(net, tr.x, tr.y, epochs=cfg.epochs, lr=0.01, momentum=0.9, weight_decay=5e-4, seed=cfg.seed)
        net = net.double().eval()
        x, y = te.x[:cfg.n].double(), te.y[:cfg.n]
        f = curvature.per_sample_loss(net, y)
        _, g = curvature.input_gradient(f, x)
        z = g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        exact = curvature.input_hvp(f, x, z)
        out[f"{dname}.fd_rel_err"] = {
            str(h): float(((curvature.fd_hvp(f, x, z, h) - exact).flatten(1).norm(dim=1)
                           / exact.flatten(1).norm(dim=1)).median()) for h in cfg.fd_steps}
        gen = torch.Generator().manual_seed(cfg.seed)
        terms = curvature.bound2_terms(f, x, cfg.rho, iters=cfg.power_iters, generator=gen)
        q = curvature.quadratic_model(f, x)
        achieved = _pgd_on_quadratic(q, x, cfg.rho, cfg.pgd_steps)
        out[f"{dname}.bound2"] = terms["bound"].tolist()
        out[f"{dname}.pgd_quadratic"] = achieved.tolist()
        out[f"{dname}.lambda1"] = terms["lambda1"].tolist()
        out[f"{dname}.dim"] = int(x[0].numel())
        out[f"{dname}.cos"] = curvature.gradient_eigen_cosine(f, x, iters=cfg.power_iters,
                                                              generator=torch.Generator().manual_seed(1)).tolist()
        if tuple(tr.shape[1:]) == (8, 8):  # a dense 64 x 64 Hessian per image
            dense = torch.stack([torch.autograd.functional.hessian(lambda u, i=i: f_one(net, u, y[i]), x[i])
                                 .reshape(64, 64) for i in range(len(x))])
            out[f"{dname}.eig_dense"] = torch.linalg.eigvalsh(dense)[:, -1].tolist()
    return {"metrics": out, "scale": f"ConvNet width {cfg.width}, depth {cfg.depth}, {cfg.epochs} epochs; "
                                     f"{cfg.n} test images per dataset; float64."}


def f_one(net: nn.Module, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss of one image (a reverse-over-reverse dense Hessian, independent of the HVP code)."""
    return nn.functional.cross_entropy(net(u.unsqueeze(0)), y.view(1))


class _Quadratic(nn.Module):
    """The quadratic model as a 'network' for :func:`attacks.pgd`: input x0 + v, output the model's value."""

    def __init__(self, q, x0):
        super().__init__()
        self.q, self.x0 = q, x0

    def forward(self, x):
        return self.q(x - self.x0).unsqueeze(1)


def _pgd_on_quadratic(q, x, rho, steps) -> torch.Tensor:
    """PGD (l_2 ball radius rho) on the quadratic model, started at 0.5 so that [0, 1] never binds (rho <= 0.5)."""
    x0 = torch.full_like(x, 0.5)
    model = _Quadratic(q, x0)
    y = torch.zeros(len(x), dtype=torch.long)
    adv = attacks.pgd(model, x0, y, eps=rho, alpha=rho / 4, steps=steps, norm="l2", random_start=False,
                      loss_fn=lambda out, _: out.sum())
    with torch.no_grad():
        return q(adv - x0)
