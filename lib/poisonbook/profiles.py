"""The settings of every experiment in every profile, in one place.

A chapter asks ``cfg = profiles.get("tour", PROFILE)`` and reads ``cfg.epochs`` etc.; papermill's
``-p PROFILE cpu`` is the only switch. Profiles:

* ``ci``: proves the chapter runs (small offline subsets; < 90 s per notebook on 2 CPU cores).
* ``cpu``: honest reduced-scale reproduction on real offline data (< 60 min per notebook).
* ``paper``: the papers' own settings (GPU; downloads MNIST, CIFAR, TinyImageNet).

Each experiment maps ``"common"`` (shared settings) and every profile to a dict; all three
profiles must define the same keys, so a run record's configuration is always complete.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROFILES", "EXPERIMENTS", "Config", "get"]

PROFILES = ("ci", "cpu", "paper")


class Config(dict):
    """A plain dict of settings that also reads as attributes (``cfg.epochs``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no setting {key!r}; settings are {', '.join(sorted(self))}") from None


EXPERIMENTS: dict[str, dict[str, dict[str, Any]]] = {
    # Chapter 00, "How to use this book": a ConvNet trained on a small real subset.
    "tour": {
        "common": dict(model="convnet", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
                       schedule="step", checkpoint_every=1),
        "ci": dict(dataset="mnist5k", train_size=1000, test_size=500, epochs=6, width=32),
        "cpu": dict(dataset="fashion-mnist", train_size=10000, test_size=10000, epochs=20, width=128),
        "paper": dict(dataset="fashion-mnist", train_size=None, test_size=None, epochs=50, width=128),
    },
}


def _check_registry() -> None:
    for name, entry in EXPERIMENTS.items():
        missing = [p for p in PROFILES if p not in entry]
        if missing:
            raise AssertionError(f"experiment {name!r} lacks profiles {missing}")
        keys = [set(entry[p]) for p in PROFILES]
        if any(k != keys[0] for k in keys):
            raise AssertionError(f"experiment {name!r}: profiles define different keys: "
                                 + "; ".join(f"{p}: {sorted(k)}" for p, k in zip(PROFILES, keys)))
        clash = set(entry.get("common", {})) & keys[0]
        if clash:
            raise AssertionError(f"experiment {name!r}: keys {sorted(clash)} are both common and per-profile")


def get(experiment: str, profile: str, **overrides: Any) -> Config:
    """The settings of ``experiment`` in ``profile``, with ``overrides`` of existing keys applied.

    Raises ``ValueError`` for an unknown profile, experiment or override key, naming the valid ones.
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    if experiment not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {experiment!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    entry = EXPERIMENTS[experiment]
    cfg = Config({**entry.get("common", {}), **entry[profile]})
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for experiment {experiment!r}; "
                         f"valid: {', '.join(sorted(cfg))}")
    cfg.update(overrides)
    cfg["profile"], cfg["experiment"] = profile, experiment
    return cfg


_check_registry()
