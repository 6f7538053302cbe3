"""Targeted poisoning of dataset condensation (Part II, chapter 21).

Zheng & Li, "RDM-DC: Poisoning Resilient Dataset Condensation with Robust Distribution Matching",
UAI 2023 (``papers/000``), Sec. 3 and 5:

* :func:`witches_brew`: gradient matching (Geiping et al. 2021, "Witches' Brew"), RDM-DC Algorithm 1,
  objective eq. (4): ``1 - cos(grad_theta l(x_t, y_adv), sum_p grad_theta l(x_p + delta_p, y_adv))``
  over an ensemble of pretrained networks (:func:`pretrain_ensemble`), batched with ``torch.func``.
* :func:`dm_poison`: DM poisoning, Algorithm 2, objective eq. (5):
  ``E_theta || Phi_theta(A_w(x_t)) - mean_p Phi_theta(A_w(x_p + delta_p)) ||^2`` under fresh random networks.
* :func:`direct`: the direct attack of Sec. 5.3, the target image itself, labelled ``y_adv``, P times.
* The budget (Sec. 5.1): :func:`budget` (P = rate x training-set size, 1% by default), :func:`choose_poisons`
  (P training images of class ``y_adv``), :func:`insert` (the poisons replace them in place, so the set keeps
  its size); ``eps`` is an l_inf radius in [0, 1] pixel units (the paper's 64/255 and 128/255).

Both crafting loops follow the algorithm boxes: R restarts from a random start, T steps of *signed* Adam
(the gradient's sign fed to Adam) with step size 1/255 (Sec. 5.1), projection onto the l_inf ball and the
[0, 1] box after every step, and the restart with the smallest objective kept. Witches' Brew adds its own
lr schedule (x0.1 at 3/8, 5/8, 7/8 of the steps; reference code) and DSA on the poisons; DM poisoning applies
one Siamese DSA draw to target and poisons. Networks see standardised images (``stats``: per-channel mean and
std of the training set, as :mod:`poisonbook.condense` does), the augmentation acting after standardisation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.nn import functional as F

from .. import augment as aug
from .. import checks
from ..train import fit

__all__ = ["ATTACKS", "STEP", "Crafted", "budget", "choose_poisons", "insert", "project", "direct",
           "stagger_epochs", "pretrain_ensemble", "Ensemble", "gradient_cosine_loss", "witches_brew",
           "dm_poison_loss", "dm_poison", "feature_deviation"]

ATTACKS = ("gm", "dm", "direct")
#: The signed-Adam step size of both attacks (Sec. 5.1: "1/255 to ensure that the perturbation can be
#: accurately discretized").
STEP = 1 / 255


@dataclass
class Crafted:
    """Poisons and how they were made: ``x`` (P, C, H, W) in [0, 1]; ``delta`` = x - the clean images;
    ``losses`` the final objective of every restart (the kept one is ``losses[best]``); ``curve`` the
    objective per step of the kept restart."""

    x: torch.Tensor
    delta: torch.Tensor
    losses: list[float]
    best: int
    curve: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- the budget


def budget(n_train: int, rate: float = 0.01) -> int:
    """Number of poisons P = round(rate * n_train), at least 1 (Sec. 5.1: "the proportion of poisoned data
    in the training dataset is only 1%")."""
    n_train = checks.integer(n_train, "n_train", low=1, where="targeted.budget")
    rate = checks.fraction(rate, "rate", allow_zero=False, where="targeted.budget")
    return max(1, round(rate * n_train))


def choose_poisons(y: torch.Tensor, y_adv: int, poisons: int, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """Indices of ``poisons`` random training images whose true label is ``y_adv`` (Algorithms 1-2, line 1)."""
    where = "targeted.choose_poisons"
    y = checks.labels(y, "y", where=where)
    y_adv = checks.integer(y_adv, "y_adv", where=where)
    poisons = checks.integer(poisons, "poisons", low=1, where=where)
    pool = (y == y_adv).nonzero(as_tuple=True)[0]
    if len(pool) < poisons:
        raise checks.BadInput(f"{where}: {poisons} poisons requested but class {y_adv} has {len(pool)} images; "
                              f"lower the rate or use a larger training set")
    return pool[torch.randperm(len(pool), generator=generator)[:poisons].to(pool.device)]


def insert(x: torch.Tensor, indices: torch.Tensor, poisons: torch.Tensor) -> torch.Tensor:
    """A copy of the training images with ``x[indices]`` replaced by ``poisons`` (labels unchanged, so the
    poisons carry their true label ``y_adv`` and the set keeps its size)."""
    where = "targeted.insert"
    x = checks.images(x, "x", where=where)
    poisons = checks.images(poisons, "poisons", where=where)
    if poisons.shape != (len(indices), *x.shape[1:]):
        raise checks.BadInput(f"{where}: poisons {tuple(poisons.shape)} must be one image per index "
                              f"({len(indices)}) of shape {tuple(x.shape[1:])}")
    out = x.clone()
    out[indices.to(x.device)] = poisons.to(x.device)
    return out


def project(delta: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the l_inf ball of radius ``eps`` and then the [0, 1] box: ``x + delta`` stays a valid image."""
    return (x + delta.clamp(-eps, eps)).clamp(0, 1) - x


def direct(x_target: torch.Tensor, poisons: int) -> torch.Tensor:
    """The direct attack (Sec. 5.3): the target image itself, ``poisons`` times (to be labelled ``y_adv``)."""
    x_target = checks.images(x_target, "x_target", where="targeted.direct")
    poisons = checks.integer(poisons, "poisons", low=1, where="targeted.direct")
    if len(x_target) != 1:
        raise checks.BadInput(f"targeted.direct: x_target must be one image (1, C, H, W), got {len(x_target)}")
    return x_target.expand(poisons, *x_target.shape[1:]).clone()


def _standardise(x, stats):
    mean, std = (torch.as_tensor(s, dtype=x.dtype, device=x.device).view(1, -1, 1, 1) for s in stats)
    return (x - mean) / std


def _check_attack(x_target, x_poison, eps, steps, restarts, lr, where):
    x_target = checks.images(x_target, "x_target", where=where)
    x_poison = checks.images(x_poison, "x_poison", where=where)
    if len(x_target) != 1 or x_target.shape[1:] != x_poison.shape[1:]:
        raise checks.BadInput(f"{where}: x_target must be one image of the poisons' shape "
                              f"{tuple(x_poison.shape[1:])}, got {tuple(x_target.shape)}")
    eps = checks.epsilon(eps, "eps", allow_zero=False, where=where)
    steps = checks.integer(steps, "steps", low=1, where=where)
    restarts = checks.integer(restarts, "restarts", low=1, where=where)
    lr = checks.number(lr, "lr", low=0.0, low_open=True, where=where)
    return x_target, x_poison, eps, steps, restarts, lr


def _signed_adam(x_poison, eps, steps, restarts, lr, objective, final, gen, milestones=()):
    """Algorithms 1-2's loop: per restart a random start in the eps ball, ``steps`` signed-Adam steps on
    ``objective(delta, step)`` with projection, then ``final(delta)``; the restart with the smallest final
    value is kept."""
    best, losses, curve_best = None, [], []
    for r in range(restarts):
        u = torch.rand(x_poison.shape, generator=gen).to(x_poison.device)
        delta = project((2 * u - 1) * eps, x_poison, eps).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(m * steps) for m in milestones], 0.1)
        curve = []
        for t in range(steps):
            loss = objective(delta, t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            delta.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                delta.copy_(project(delta, x_poison, eps))
            curve.append(checks.finite_loss(loss, t, "targeted attack", "lower the step size"))
        with torch.no_grad():
            losses.append(float(final(delta.detach())))
        if best is None or losses[-1] < losses[best[0]]:
            best = (r, delta.detach().clone())
            curve_best = curve
    r, delta = best
    return Crafted((x_poison + delta).clamp(0, 1), delta, losses, r, curve_best)


# --------------------------------------------------------------------------- Witches' Brew


def stagger_epochs(size: int, max_epochs: int) -> list[int]:
    """Training epochs of the ensemble members: evenly spread up to ``max_epochs`` (member i of ``size`` gets
    ``round((i + 1) max_epochs / size)``, at least 1). With ``size == max_epochs`` member i trains i + 1
    epochs: the reference's ``--ensemble E --stagger``, which RDM-DC's "16 models pre-trained for different
    epochs" most likely means (REFERENCE-FACTS; an inference, the paper has no code)."""
    size = checks.integer(size, "size", low=1, where="stagger_epochs")
    max_epochs = checks.integer(max_epochs, "max_epochs", low=1, where="stagger_epochs")
    return [max(1, round((i + 1) * max_epochs / size)) for i in range(size)]


def pretrain_ensemble(x: torch.Tensor, y: torch.Tensor, epochs: Sequence[int], factory: Callable[[], nn.Module],
                      *, stats, lr: float = 0.01, momentum: float = 0.9, weight_decay: float = 5e-4,
                      batch_size: int = 256, augment=None, seed: int = 0) -> list[nn.Module]:
    """The clean networks Algorithm 1 requires: member i is ``factory()`` (seeded ``seed + i``) trained
    ``epochs[i]`` epochs on the standardised clean data (SGD, step decay at half; the evaluation protocol's
    settings). Returns the networks in eval mode with frozen parameters; they take standardised images."""
    x = checks.images(x, "x", where="pretrain_ensemble")
    xs = _standardise(x, stats)
    out = []
    for i, e in enumerate(epochs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            net = factory().to(x.device)
        fit(net, xs, y, epochs=checks.integer(e, "epochs", low=1, where="pretrain_ensemble"), lr=lr,
            momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, schedule="step",
            augment=augment, seed=seed + i)
        out.append(net.eval().requires_grad_(False))
    return out


class Ensemble:
    """Networks of one architecture with their parameters stacked (``torch.func.stack_module_state``), so a
    loss over all members is one ``vmap`` call. ``batched=False`` loops over the members instead (the same
    numbers; for architectures ``vmap`` cannot take, and for the benchmark)."""

    def __init__(self, nets: Sequence[nn.Module], batched: bool = True):
        nets = list(nets)
        if not nets:
            raise checks.BadInput("Ensemble: needs at least one network")
        self.nets, self.batched = nets, batched
        self.params, self.buffers = stack_module_state(nets)
        self.params = {k: v.detach() for k, v in self.params.items()}
        self.base = copy.deepcopy(nets[0]).to("meta")

    def __len__(self) -> int:
        return len(self.nets)

    def split(self, keep: Sequence[int]) -> "Ensemble":
        return Ensemble([self.nets[i] for i in keep], self.batched)

    def map(self, fn: Callable, *args):
        """``fn(call, *args)`` for every member, stacked: ``call(x)`` runs that member's forward pass."""
        if not self.batched:
            return torch.stack([fn(lambda x, net=net: net(x), *args) for net in self.nets])

        def one(p, b, *a):
            return fn(lambda x: functional_call(self.base, (p, b), (x,)), *a)

        return vmap(one, in_dims=(0, 0, *([None] * len(args))), randomness="same")(self.params, self.buffers, *args)

    def param_grads(self, x: torch.Tensor, y: torch.Tensor):
        """Per member, the gradient of the summed cross-entropy on (x, y) w.r.t. its parameters (a dict of
        stacked tensors), differentiable in ``x`` (second order: eq. (4) is differentiated through it)."""
        if not self.batched:
            out = []
            for net in self.nets:
                ps = [p.detach().requires_grad_(True) for p in net.parameters()]
                names = [n for n, _ in net.named_parameters()]
                loss = F.cross_entropy(functional_call(net, dict(zip(names, ps)), (x,)), y, reduction="sum")
                out.append(dict(zip(names, torch.autograd.grad(loss, ps, create_graph=True))))
            return {k: torch.stack([o[k] for o in out]) for k in out[0]}

        def loss(p, b, xx, yy):
            return F.cross_entropy(functional_call(self.base, (p, b), (xx,)), yy, reduction="sum")

        return vmap(grad(loss), in_dims=(0, 0, None, None), randomness="same")(self.params, self.buffers, x, y)


def _flat(g: dict) -> torch.Tensor:
    return torch.cat([v.flatten(1) for v in g.values()], dim=1)


def gradient_cosine_loss(ensemble: Ensemble, target_grad: torch.Tensor, x_poison_std: torch.Tensor,
                         y_adv: int) -> torch.Tensor:
    """Eq. (4) averaged over the ensemble: ``1 - cos(target_grad_m, sum_p grad l(x_p + delta_p, y_adv))``.

    ``target_grad`` (members, n_params) is each member's ``grad_theta l(x_t, y_adv)``; ``x_poison_std`` are the
    (augmented, standardised) poisons. Returns the mean over members of the per-member losses."""
    y = torch.full((len(x_poison_std),), int(y_adv), dtype=torch.long, device=x_poison_std.device)
    g = _flat(ensemble.param_grads(x_poison_std, y))
    return (1 - F.cosine_similarity(g, target_grad, dim=1)).mean()


def witches_brew(ensemble: Ensemble | Sequence[nn.Module], x_target: torch.Tensor, y_adv: int,
                 x_poison: torch.Tensor, eps: float, *, stats, steps: int = 250, restarts: int = 8,
                 lr: float = STEP, strategy: str | None = aug.STRATEGY, milestones=(3 / 8, 5 / 8, 7 / 8),
                 seed: int = 0) -> Crafted:
    """Gradient-matching poisons (Geiping et al. 2021; RDM-DC Algorithm 1, eq. (4)).

    ``ensemble``: pretrained clean networks (:func:`pretrain_ensemble`; RDM-DC uses 16, Sec. 5.1) taking
    standardised images. ``x_poison``: the P clean images of class ``y_adv`` to perturb
    (:func:`choose_poisons`). For each of ``restarts`` (8, reference default) random starts in the l_inf
    ball, ``steps`` (250, reference) signed-Adam steps of size ``lr`` (1/255, Sec. 5.1) on eq. (4) averaged over
    the ensemble, the poisons under one fresh DSA draw per step (``strategy``; None: no augmentation), the lr
    x0.1 at ``milestones`` (3/8, 5/8, 7/8; reference), projection after every step; the restart whose final
    eq. (4) (on the un-augmented poisons) is smallest is kept. The target gradient is taken once per member
    on the un-augmented target. The ensemble is batched with ``torch.func`` (:class:`Ensemble`).
    """
    where = "targeted.witches_brew"
    x_target, x_poison, eps, steps, restarts, lr = _check_attack(x_target, x_poison, eps, steps, restarts, lr,
                                                                 where)
    ens = ensemble if isinstance(ensemble, Ensemble) else Ensemble(ensemble)
    y_adv = checks.integer(y_adv, "y_adv", where=where)
    y_t = torch.tensor([y_adv], device=x_target.device)
    target_grad = _flat(ens.param_grads(_standardise(x_target, stats), y_t)).detach()
    gen = torch.Generator().manual_seed(seed)

    def objective(delta, t):
        xp = _standardise(x_poison + delta, stats)
        if strategy:
            xp = aug.apply(xp, aug.draw(strategy, 1, generator=gen, device=xp.device), 0)
        return gradient_cosine_loss(ens, target_grad, xp, y_adv)

    def final(delta):
        with torch.enable_grad():
            return gradient_cosine_loss(ens, target_grad, _standardise(x_poison + delta, stats), y_adv)

    return _signed_adam(x_poison, eps, steps, restarts, lr, objective, final, gen, milestones)


# --------------------------------------------------------------------------- DM poisoning


def dm_poison_loss(net: nn.Module, x_target_std: torch.Tensor, x_poison_std: torch.Tensor) -> torch.Tensor:
    """Eq. (5) for one network draw: ``|| Phi(x_t) - mean_p Phi(x_p) ||^2`` (inputs already augmented)."""
    return ((net.embed(x_target_std)[0] - net.embed(x_poison_std).mean(0)) ** 2).sum()


def _fresh(factory, gen, device):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        return factory().to(device).requires_grad_(False)


def dm_poison(x_target: torch.Tensor, x_poison: torch.Tensor, eps: float, factory: Callable[[], nn.Module], *,
              stats, steps: int = 250, restarts: int = 8, lr: float = STEP,
              strategy: str | None = aug.STRATEGY, select_nets: int = 8, seed: int = 0) -> Crafted:
    """DM poisoning (RDM-DC Algorithm 2, eq. (5)).

    Each step draws a fresh network ``Phi_theta`` from ``factory`` (``theta ~ P_theta``: its default
    initialisation, as DM's networks; RDM-DC uses the ConvNet) and one DSA draw ``w`` applied to the target
    and the poisons alike (Siamese, as in DM), and takes one signed-Adam step of size ``lr`` (1/255, Sec. 5.1)
    on eq. (5), then projects. ``restarts`` random starts; the kept one has the smallest eq. (5) averaged over
    ``select_nets`` networks drawn once before crafting (without augmentation). The paper gives no step count,
    restart count or lr schedule for DM poisoning; the defaults (250 steps, 8 restarts, constant step) are
    Algorithm 1's, and the chapter states them.
    """
    where = "targeted.dm_poison"
    x_target, x_poison, eps, steps, restarts, lr = _check_attack(x_target, x_poison, eps, steps, restarts, lr,
                                                                 where)
    select_nets = checks.integer(select_nets, "select_nets", low=1, where=where)
    gen = torch.Generator().manual_seed(seed)
    device = x_poison.device
    judges = [_fresh(factory, gen, device) for _ in range(select_nets)]
    xt = _standardise(x_target, stats)

    def objective(delta, t):
        net = _fresh(factory, gen, device)
        xp = _standardise(x_poison + delta, stats)
        a, b = xt, xp
        if strategy:
            d = aug.draw(strategy, 1, generator=gen, device=device)
            a, b = aug.apply(xt, d, 0), aug.apply(xp, d, 0)
        return dm_poison_loss(net, a, b)

    def final(delta):
        xp = _standardise(x_poison + delta, stats)
        return sum(float(dm_poison_loss(n, xt, xp)) for n in judges) / len(judges)

    return _signed_adam(x_poison, eps, steps, restarts, lr, objective, final, gen)


@torch.no_grad()
def feature_deviation(net: nn.Module, x_class: torch.Tensor, poisoned_class: torch.Tensor, x_target: torch.Tensor,
                      *, stats) -> dict:
    """How far the poisons move one class's mean embedding under ``net`` (Definition 4.1 on eq. (5)'s features).

    ``x_class``: the clean class; ``poisoned_class``: the same class after :func:`insert`. Returns the
    poisoned deviation ``mu_P - mu_D`` (its norm ``deviation``), its component ``towards`` the target along
    the unit vector ``(Phi(x_t) - mu_D) / ||.||``, and ``distance`` = ``||Phi(x_t) - mu_D||``."""
    f = lambda x: net.embed(_standardise(x, stats))  # noqa: E731
    mu_d, mu_p, ft = f(x_class).mean(0), f(poisoned_class).mean(0), f(x_target)[0]
    dev, to_t = mu_p - mu_d, ft - mu_d
    return {"deviation": float(dev.norm()), "towards": float(dev @ to_t / to_t.norm()),
            "distance": float(to_t.norm())}
