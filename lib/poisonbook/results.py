"""Run records (JSON, written atomically), the papers' published numbers, and side-by-side tables.

A run record lives at ``results/<profile>/<chapter>/<experiment>.json`` and holds the
configuration, seeds, metrics, device, wall time, library version and git commit of one run.
``ci`` records go to a git-ignored folder; ``cpu`` and ``paper`` records are committed.

:data:`PUBLISHED` holds the numbers the papers report, each with its source (paper and
table); chapters compare their measurements to them and the reproduction report renders
all of them next to the ``paper`` and ``cpu`` profile runs.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .cache import atomic_write_text, repo_root

__all__ = ["Published", "PUBLISHED", "results_dir", "record_path", "save_record", "load_record",
           "load_records", "tabulate", "published", "report", "git_commit"]

SCHEMA = 1


@dataclass(frozen=True)
class Published:
    """One number a paper reports. ``chapter/experiment/metric`` names the run-record metric it matches."""

    chapter: str
    experiment: str
    metric: str
    value: float
    paper: str
    source: str  # e.g. "Table 2"
    std: float | None = None
    note: str = ""


# Chapters add the numbers they reproduce here (one obvious place for every published value).
PUBLISHED: list[Published] = []


def results_dir(profile: str, root: str | os.PathLike | None = None) -> Path:
    return Path(root or repo_root() / "results") / profile


def record_path(profile: str, chapter: str, experiment: str, root: str | os.PathLike | None = None) -> Path:
    for part, value in (("chapter", chapter), ("experiment", experiment)):
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"{part} must be a plain name without '/', got {value!r}")
    return results_dir(profile, root) / chapter / f"{experiment}.json"


def git_commit() -> str:
    """The repository's HEAD commit, with ``+dirty`` when tracked files have changed; ``unknown`` outside git."""
    try:
        root = repo_root()
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _clean(value: Any, where: str) -> Any:
    """JSON-safe copy: tensors and numpy scalars to numbers, non-finite floats to strings."""
    if isinstance(value, dict):
        return {str(k): _clean(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, where) for v in value]
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist(), where)
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # kept honestly, e.g. a diverged run: "nan" / "inf"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{where}: cannot store {type(value).__name__} in a run record")


def save_record(profile: str, chapter: str, experiment: str, *, config: dict, metrics: dict,
                seeds: list[int] | int, wall_time: float, device: str | torch.device = "cpu",
                root: str | os.PathLike | None = None, **extra: Any) -> Path:
    """Write a run record atomically; return its path."""
    if not metrics:
        raise ValueError("a run record needs at least one metric")
    record = {
        "schema": SCHEMA,
        "profile": profile,
        "chapter": chapter,
        "experiment": experiment,
        "config": _clean(dict(config), "config"),
        "seeds": [seeds] if isinstance(seeds, int) else list(seeds),
        "metrics": _clean(dict(metrics), "metrics"),
        "device": str(device),
        "wall_time_s": round(float(wall_time), 3),
        "library_version": __version__,
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_clean(extra, "extra"),
    }
    path = record_path(profile, chapter, experiment, root)
    return atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def load_record(path: str | os.PathLike) -> dict:
    with open(path) as f:
        record = json.load(f)
    if record.get("schema") != SCHEMA:
        raise ValueError(f"{path}: unknown run-record schema {record.get('schema')!r}")
    return record


def load_records(profile: str | None = None, chapter: str | None = None,
                 root: str | os.PathLike | None = None) -> list[dict]:
    """All records under ``results/`` (optionally of one profile and/or chapter), sorted by path."""
    base = Path(root or repo_root() / "results")
    pattern = f"{profile or '*'}/{chapter or '*'}/*.json"
    return [load_record(p) for p in sorted(base.glob(pattern))]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif not isinstance(v, list):
            out[f"{prefix}{k}"] = v
    return out


def tabulate(records: list[dict], metrics: list[str] | None = None):
    """A pandas DataFrame: one row per record, its scalar metrics (dotted for nested ones) as columns."""
    import pandas as pd

    rows = []
    for r in records:
        m = _flatten(r["metrics"])
        if metrics is not None:
            m = {k: m.get(k) for k in metrics}
        rows.append({"profile": r["profile"], "chapter": r["chapter"], "experiment": r["experiment"], **m,
                     "wall_time_s": r["wall_time_s"], "device": r["device"]})
    return pd.DataFrame(rows)


def published(chapter: str | None = None, experiment: str | None = None):
    """The registered published numbers (optionally of one chapter/experiment) as a DataFrame."""
    import pandas as pd

    rows = [asdict(p) for p in PUBLISHED
            if (chapter is None or p.chapter == chapter) and (experiment is None or p.experiment == experiment)]
    return pd.DataFrame(rows, columns=[f for f in Published.__dataclass_fields__])


def report(root: str | os.PathLike | None = None):
    """Every published number next to the ``paper`` and ``cpu`` profile measurements of the same metric."""
    import pandas as pd

    measured: dict[tuple[str, str, str, str], Any] = {}
    scale: dict[tuple[str, str, str], str] = {}
    for profile in ("paper", "cpu"):
        for r in load_records(profile, root=root):
            for metric, value in _flatten(r["metrics"]).items():
                measured[(profile, r["chapter"], r["experiment"], metric)] = value
            scale[(profile, r["chapter"], r["experiment"])] = r.get("scale", "")
    rows = []
    for p in PUBLISHED:
        key = (p.chapter, p.experiment, p.metric)
        rows.append({"chapter": p.chapter, "quantity": f"{p.experiment}: {p.metric}",
                     "published": p.value, "source": f"{p.paper}, {p.source}",
                     "paper profile": measured.get(("paper", *key)), "cpu profile": measured.get(("cpu", *key)),
                     "cpu scale": scale.get(("cpu", p.chapter, p.experiment), "")})
    return pd.DataFrame(rows, columns=["chapter", "quantity", "published", "source", "paper profile",
                                       "cpu profile", "cpu scale"])
