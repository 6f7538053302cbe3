"""Artefacts keyed by configuration, atomic writes, and checkpoint/resume for long loops.

* :func:`source_hash` hashes the library's own source files; :func:`config_hash` hashes a
  JSON-able configuration together with it, so a cached artefact or checkpoint is never reused
  across a change of settings or of code.
* :func:`cached` computes an artefact once and loads it afterwards.
* :class:`Checkpoint` saves a loop's state atomically every few steps; a loop killed half
  way and started again resumes from the last saved state and ends with the same result,
  provided its state includes every random generator it draws from.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["repo_root", "cache_dir", "atomic_write_text", "atomic_write_bytes", "atomic_save", "source_hash", "config_hash", "cached",
           "Checkpoint", "CheckpointMismatch"]


def repo_root() -> Path:
    """The book's repository (the folder holding ``_toc.yml``), else the current directory."""
    here = Path(__file__).resolve()
    for parent in (*here.parents, *Path.cwd().resolve().parents, Path.cwd().resolve()):
        if (parent / "_toc.yml").exists():
            return parent
    return Path.cwd()


def cache_dir() -> Path:
    """``$POISONBOOK_CACHE`` or ``<repo>/.cache`` (git-ignored)."""
    return Path(os.environ.get("POISONBOOK_CACHE", repo_root() / ".cache"))


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(Path(path), lambda f: f.write(text), "w")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(Path(path), lambda f: f.write(data), "wb")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` that never leaves a truncated file behind."""
    return _atomic(Path(path), lambda f: torch.save(obj, f), "wb")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    return repr(obj)


_SOURCE_HASH: str | None = None


def source_hash(length: int = 16) -> str:
    """SHA-256 of every ``.py`` file of the installed ``poisonbook`` package (paths and bytes, sorted).

    Computed once per process: any edit of the library gives a new value, so run records,
    cache entries and checkpoints written by older code are recognised as such.
    """
    global _SOURCE_HASH
    if _SOURCE_HASH is None:
        package = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for path in sorted(package.rglob("*.py")):
            h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        _SOURCE_HASH = h.hexdigest()
    return _SOURCE_HASH[:length]


def config_hash(config: dict, length: int = 16) -> str:
    """Stable hash of a configuration and the library's source (:func:`source_hash`)."""
    text = json.dumps({"config": _jsonable(config), "source": source_hash(64)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cached(name: str, config: dict, compute: Callable[[], Any], *, root: str | os.PathLike | None = None,
           refresh: bool = False) -> Any:
    """Return ``compute()``, stored under ``<root>/<name>-<hash(config)>.pt`` and loaded on later calls."""
    path = Path(root or cache_dir()) / f"{name}-{config_hash(config)}.pt"
    if path.exists() and not refresh:
        return torch.load(path, weights_only=False)
    value = compute()
    atomic_save(value, path)
    return value


class CheckpointMismatch(ValueError):
    """A checkpoint on disk was written by a different configuration."""


class Checkpoint:
    """Save and restore a loop's state, keyed by the loop's configuration.

    ``state = ckpt.load()`` gives the last saved dict (or ``None``); ``ckpt.save(state)`` writes
    it atomically, together with the configuration hash. Loading a checkpoint written for a
    different configuration raises :class:`CheckpointMismatch` instead of silently resuming
    the wrong run.
    """

    def __init__(self, path: str | os.PathLike, config: dict | None = None, every: int = 1):
        if every < 1:
            raise ValueError(f"Checkpoint every must be >= 1, got {every}")
        self.path = Path(path)
        self.key = config_hash(config or {})
        self.every = every

    def due(self, step: int, last: int) -> bool:
        """Whether to save after 0-based ``step`` of a loop whose last step is ``last``."""
        return (step + 1) % self.every == 0 or step == last

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        blob = torch.load(self.path, weights_only=False)
        if blob.get("key") != self.key:
            raise CheckpointMismatch(
                f"Checkpoint {self.path} was written by another configuration (hash {blob.get('key')}, "
                f"this run {self.key}); delete it or give this run its own path.")
        return blob["state"]

    def save(self, state: dict) -> None:
        atomic_save({"key": self.key, "state": state}, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
