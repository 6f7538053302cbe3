"""Chapter drivers: one module per chapter, each a function from a profile configuration to a run record.

A chapter cell reads like the paper: the configuration, one call, a table, a figure::

    cfg = profiles.get("robust-dm-clean", PROFILE)
    run = experiments.run_or_load("20-poisoned-deviation-and-robust-dm", "clean", PROFILE, cfg,
                                  robust_dm.clean_utility)
    run.note()                      # provenance line, or a visible "stale" warning
    run.metrics["dm.acc_mean"]; run.artefacts["synthetic"]

:func:`run_or_load` loads the record at ``results/<profile>/<chapter>/<experiment>.json`` when
its configuration equals ``cfg`` and its library source hash equals the running code's; it
runs the driver otherwise. A record whose configuration matches but whose source hash does
not is *stale*: for the ``cpu`` and ``paper`` profiles (hour-long runs) it is loaded and
marked as stale on the page unless ``POISONBOOK_RECORDS=rerun`` is set (``make records``
does); ``ci`` records are always re-run. ``POISONBOOK_RECORDS=refresh`` re-runs everything.

A driver ``fn(cfg)`` returns a dict with ``metrics`` (required), optionally ``artefacts``
(a dict of arrays or tensors, stored beside the JSON as ``<experiment>.npz``, under 5 MB) and
any other JSON-able entries (curves, tables, ``scale``: a sentence on the run's scale).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..cache import atomic_write_bytes
from ..results import _clean, is_stale, load_record, record_path, save_record

__all__ = ["Run", "run_or_load", "MAX_ARTEFACT_BYTES", "POLICIES"]

MAX_ARTEFACT_BYTES = 5 * 2**20
POLICIES = ("auto", "rerun", "refresh")
_RESERVED = {"metrics", "artefacts"}
_METADATA = {"schema", "profile", "chapter", "experiment", "config", "seeds", "metrics", "device", "wall_time_s",
             "library_version", "source_hash", "source_module", "git_commit", "torch", "python", "created",
             "artefacts"}


def _policy() -> str:
    policy = os.environ.get("POISONBOOK_RECORDS", "auto")
    if policy not in POLICIES:
        raise ValueError(f"POISONBOOK_RECORDS must be one of {POLICIES}, got {policy!r}")
    return policy


@dataclass
class Run:
    """A run record as a chapter uses it: metrics, the extra entries, artefacts, and whether it is stale."""

    record: dict
    path: Path
    loaded: bool
    stale: bool
    _artefacts: dict | None = field(default=None, repr=False)

    @property
    def metrics(self) -> dict:
        return self.record["metrics"]

    @property
    def config(self) -> dict:
        return self.record["config"]

    def __getitem__(self, key: str) -> Any:
        """An entry the driver returned besides the metrics (``run["curves"]``), or a metric."""
        if key in self.record and key not in _METADATA:
            return self.record[key]
        if key in self.metrics:
            return self.metrics[key]
        extra = sorted(k for k in self.record if k not in _METADATA)
        raise KeyError(f"{self.path.name} has no entry {key!r}; it has {extra} and metrics {sorted(self.metrics)}")

    @property
    def artefacts(self) -> dict[str, np.ndarray]:
        """The arrays stored beside the record (loaded on first use)."""
        if self._artefacts is None:
            npz = self.path.with_suffix(".npz")
            if not self.record.get("artefacts"):
                self._artefacts = {}
            elif not npz.exists():
                raise FileNotFoundError(f"{npz} is missing but {self.path.name} lists artefacts "
                                        f"{self.record['artefacts']}; re-run with POISONBOOK_RECORDS=refresh")
            else:
                with np.load(npz) as f:
                    self._artefacts = {k: f[k] for k in f.files}
        return self._artefacts

    def provenance(self) -> str:
        """One line: profile, commit, source hash, wall time, device; and the stale warning if it applies."""
        r = self.record
        commit = r["git_commit"].split("+")[0][:10] + ("+dirty" if r["git_commit"].endswith("+dirty") else "")
        minutes = r["wall_time_s"] / 60
        took = f"{minutes:.1f} min" if minutes >= 1 else f"{r['wall_time_s']:.0f} s"
        line = (f"`{r['profile']}` profile record `{r['chapter']}/{r['experiment']}`, commit "
                f"`{commit}`, {took} on {r['device']}")
        if self.stale:
            return (f"**Stale:** produced by commit `{commit}` (library source "
                    f"`{r.get('source_hash', 'unknown')}`); the code it ran has changed since. "
                    f"The numbers below are that run's; `make records` re-runs it. ({line})")
        return line + (" (loaded)" if self.loaded else " (run now)")

    def note(self):
        """The provenance line as Markdown for the page (a warning box when stale)."""
        from IPython.display import Markdown

        text = self.provenance()
        if self.stale:
            return Markdown(f":::{{warning}}\n{text}\n:::")
        return Markdown(f"<small>{text}</small>")


def _library_module(fn) -> str | None:
    """The driver's module when it is part of the library (its record then hashes that module's closure)."""
    module = getattr(fn, "__module__", None) or ""
    return module if module.startswith("poisonbook.") else None


def _record_config(record: dict, wanted: dict) -> dict:
    """The record's configuration; records older than the ``seed`` setting name their seed in ``seeds`` only."""
    config = dict(record["config"])
    if "seed" in wanted and "seed" not in config and len(record.get("seeds", [])) == 1:
        config["seed"] = record["seeds"][0]
    return config


def _save_artefacts(arrays: dict, path: Path) -> list[str]:
    arrays = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
              for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    if buf.tell() > MAX_ARTEFACT_BYTES:
        sizes = ", ".join(f"{k}: {v.nbytes / 2**20:.1f} MB" for k, v in arrays.items())
        raise ValueError(f"artefacts of {path.stem} are {buf.tell() / 2**20:.1f} MB compressed, over the "
                         f"{MAX_ARTEFACT_BYTES // 2**20} MB limit ({sizes}); store fewer or smaller arrays")
    atomic_write_bytes(path, buf.getvalue())
    return sorted(arrays)


def run_or_load(chapter: str, experiment: str, profile: str, cfg: dict, fn: Callable[[dict], dict], *,
                seeds: list[int] | int | None = None, root: str | os.PathLike | None = None) -> Run:
    """Load the matching record of ``chapter/experiment`` in ``profile``, or run ``fn(cfg)`` and save one.

    ``seeds`` defaults to ``cfg["seed"]`` (or 0). See the module docstring for when a record is
    loaded, marked stale, or re-run.
    """
    path = record_path(profile, chapter, experiment, root)
    policy = _policy()
    wanted = _clean(dict(cfg), "config")
    if path.exists() and policy != "refresh":
        record = load_record(path)
        if _record_config(record, wanted) == wanted:
            stale = is_stale(record)
            if not stale:
                return Run(record, path, loaded=True, stale=False)
            if profile != "ci" and policy == "auto":
                return Run(record, path, loaded=True, stale=True)
    if seeds is None:
        seeds = cfg.get("seed", 0)
    start = time.perf_counter()
    out = fn(cfg)
    wall = time.perf_counter() - start
    if not isinstance(out, dict) or "metrics" not in out:
        raise TypeError(f"{getattr(fn, '__name__', fn)} must return a dict with 'metrics', got {type(out).__name__}")
    extra = {k: v for k, v in out.items() if k not in _RESERVED}
    clash = sorted(set(extra) & _METADATA - {"device"})
    if clash:
        raise ValueError(f"{getattr(fn, '__name__', fn)} returned entries {clash}, which are record metadata; "
                         f"rename them")
    names = _save_artefacts(out["artefacts"], path.with_suffix(".npz")) if out.get("artefacts") else []
    device = out.get("device", "cuda" if torch.cuda.is_available() else "cpu")
    extra.pop("device", None)
    save_record(profile, chapter, experiment, config=cfg, metrics=out["metrics"], seeds=seeds, wall_time=wall,
                device=device, root=root, source_module=_library_module(fn), artefacts=names,
                **extra)
    return Run(load_record(path), path, loaded=False, stale=False)
