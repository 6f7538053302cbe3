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

import glob
import hashlib
import json
import math
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import checks

__all__ = ["repo_root", "cache_dir", "atomic_write_text", "atomic_write_bytes", "atomic_save", "source_files", "source_hash", "config_hash", "cached",
           "Checkpoint", "CheckpointMismatch", "CorruptFile", "fingerprint", "load_torch"]


def repo_root() -> Path:
    """``$POISONBOOK_ROOT``, else the book's repository (the folder holding ``_toc.yml``), else the current directory.

    On Colab the hidden first cell clones the repository and sets ``POISONBOOK_ROOT``, so the
    committed run records are found there too.
    """
    if os.environ.get("POISONBOOK_ROOT"):
        return Path(os.environ["POISONBOOK_ROOT"])
    here = Path(__file__).resolve()
    for parent in (*here.parents, *Path.cwd().resolve().parents, Path.cwd().resolve()):
        if (parent / "_toc.yml").exists():
            return parent
    return Path.cwd()


def cache_dir() -> Path:
    """``$POISONBOOK_CACHE`` or ``<repo>/.cache`` (git-ignored)."""
    return Path(os.environ.get("POISONBOOK_CACHE", repo_root() / ".cache"))


def _tmp_owner_alive(tmp: Path) -> bool:
    """Whether the process that named the temporary file ``.<name>.<pid>.<random>.tmp`` still runs."""
    parts = tmp.name.split(".")
    pid = parts[-3] if len(parts) >= 4 else ""
    if not pid.isdigit():  # an older name without a pid: stale once it is an hour old
        try:
            return time.time() - tmp.stat().st_mtime < 3600
        except OSError:
            return False
    if int(pid) == os.getpid():
        return False  # this process writes one file at a time; a leftover of ours is stale
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _remove_stale_tmp(path: Path) -> None:
    """Delete temporary files of ``path`` left behind by writers that were killed (SIGKILL skips cleanup)."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if not _tmp_owner_alive(tmp):
            tmp.unlink(missing_ok=True)


def _atomic(path: Path, write: Callable[[Any], None], mode: str) -> Path:
    """Write to a temporary file in the same folder, then rename: readers never see half a file.

    The file gets mode 0644 (``mkstemp`` would leave 0600); stale temporary files of the same
    target from killed writers are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
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


def fingerprint(*tensors: Any) -> str:
    """SHA-256 of tensors' or arrays' exact contents: dtype, shape and bytes of each (device-independent).

    The data part of checkpoint and cache keys: any change of one element, of the order, of
    the dtype or of the shape gives another value.
    """
    h = hashlib.sha256()
    for t in tensors:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            dtype, shape = str(t.dtype), tuple(t.shape)
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        else:
            a = np.ascontiguousarray(t)
            dtype, shape, raw = str(a.dtype), a.shape, a.tobytes()
        h.update(f"{dtype}{shape}".encode() + b"\0" + raw + b"\0")
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    """A JSON value that determines ``obj`` exactly: tensors and arrays by :func:`fingerprint`
    (never ``repr``, which abbreviates), dict keys with their type (``{1: 'a'}`` is not ``{'1': 'a'}``),
    callables by their qualified name."""
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _jsonable(v) for k, v in sorted(obj.items())}
        items = [[_jsonable(k), _jsonable(v)] for k, v in obj.items()]
        return {"__dict__": sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return {"__array__": fingerprint(obj)}
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return {"__path__": str(obj)}
    if callable(obj) and hasattr(obj, "__qualname__"):
        return {"__callable__": f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"}
    return {"__repr__": f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}"}


_SOURCE_HASH: dict[str | None, str] = {}

# Files left out of a run record's source hash: the profiles (a record's configuration is compared by
# value, so editing another chapter's profile must not mark this one stale), the published-numbers
# registry and record I/O (results), run-or-load (experiments/__init__) and table formatting (tables),
# none of which computes a metric.
RECORD_BOOKKEEPING = frozenset({"profiles.py", "results.py", "experiments/__init__.py", "experiments/tables.py"})


def _module_file(package: Path, name: str) -> Path | None:
    """The file of module ``poisonbook.<name>`` (dotted, relative to the package), if it is part of the library."""
    base = package.joinpath(*name.split(".")) if name else package
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _reads_profiles(package: Path, files: list[Path]) -> bool:
    """Whether a file imports the ``profiles`` module itself (to call ``profiles.get`` inside a driver, whose
    result is then not part of the record's compared configuration), not just names such as ``Config``."""
    import ast

    for path in files:
        if path.relative_to(package).as_posix() == "profiles.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module in (None, package.name) and \
                    any(a.name == "profiles" for a in node.names):
                return True
            if isinstance(node, ast.Import) and any(a.name == f"{package.name}.profiles" for a in node.names):
                return True
    return False


def _imports(package: Path, name: str, path: Path) -> set[str]:
    """The library modules (dotted, relative to the package) that ``path`` imports, and their parent packages."""
    import ast

    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.split(".")[0] == package.name:
                mod = ".".join(node.module.split(".")[1:])
            else:
                continue
            targets = [mod] + [f"{mod}.{a.name}" if mod else a.name for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [".".join(a.name.split(".")[1:]) for a in node.names if a.name.split(".")[0] == package.name]
        for t in targets:
            parts = t.split(".") if t else []
            for i in range(len(parts) + 1):  # importing a.b runs a/__init__ first
                prefix = ".".join(parts[:i])
                if _module_file(package, prefix) is not None:
                    out.add(prefix)
    return out


def source_files(module: str | None = None) -> list[Path]:
    """The library's ``.py`` files: all of them, or those ``module`` (e.g. ``"poisonbook.experiments.tour"``) can import.

    The closure follows the library's own ``import`` statements (read with :mod:`ast`, without
    importing anything), parent packages included, so it is exactly the code a driver can run.
    """
    package = Path(__file__).resolve().parent
    if module is None:
        return sorted(package.rglob("*.py"))
    start = module.split(".", 1)[1] if module.startswith(package.name + ".") else module
    if _module_file(package, start) is None:
        raise checks.BadInput(f"source_files: {module!r} is not a module of the {package.name} package")
    seen, todo = set(), [""] + [".".join(start.split(".")[:i + 1]) for i in range(len(start.split(".")))]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += sorted(_imports(package, name, _module_file(package, name)) - seen)
    return sorted(_module_file(package, n) for n in seen)


def source_hash(length: int = 16, module: str | None = None) -> str:
    """SHA-256 of the library's source files (paths and bytes, sorted): all of them, or ``module``'s closure.

    Computed once per process and module. Cache entries and checkpoints use the whole library's
    hash (any edit invalidates them); a run record uses its driver module's closure, so an edit of
    an unrelated chapter's code does not mark it stale. That closure leaves out
    :data:`RECORD_BOOKKEEPING`, the files that hold configuration values and record plumbing only.
    """
    if module not in _SOURCE_HASH:
        package = Path(__file__).resolve().parent
        h = hashlib.sha256()
        files = source_files(module)
        if module is not None:  # a record's closure leaves out the bookkeeping that cannot change its numbers
            keep = {"profiles.py"} if _reads_profiles(package, files) else set()
            files = [f for f in files if f.relative_to(package).as_posix() not in RECORD_BOOKKEEPING - keep]
        for path in files:
            h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
        _SOURCE_HASH[module] = h.hexdigest()
    return _SOURCE_HASH[module][:length]


def config_hash(config: dict, length: int = 16) -> str:
    """Stable hash of a configuration and the library's source (:func:`source_hash`)."""
    text = json.dumps({"config": _jsonable(config), "source": source_hash(64)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class CorruptFile(ValueError):
    """A cache, checkpoint or record file cannot be read; the message names the file and the fix."""


def load_torch(path: str | os.PathLike, fix: str) -> Any:
    """``torch.load`` of a file this library wrote; :class:`CorruptFile` naming ``path`` and ``fix`` if unreadable."""
    try:
        return torch.load(path, weights_only=False)
    except (EOFError, pickle.UnpicklingError, RuntimeError, OSError, ValueError, AttributeError,
            ImportError, IndexError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CorruptFile(f"{path} is empty or corrupt ({type(err).__name__}: {err}); {fix}") from err


def cached(name: str, config: dict, compute: Callable[[], Any], *, root: str | os.PathLike | None = None,
           refresh: bool = False) -> Any:
    """Return ``compute()``, stored under ``<root>/<name>-<hash(config)>.pt`` and loaded on later calls."""
    path = Path(root or cache_dir()) / f"{name}-{config_hash(config)}.pt"
    if path.exists() and not refresh:
        return load_torch(path, "delete it, or call cached(..., refresh=True) to recompute it")
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
        checks.integer(every, "every", low=1, where="Checkpoint")
        self.path = Path(path)
        self.key = config_hash(config or {})
        self.every = every

    def due(self, step: int, last: int) -> bool:
        """Whether to save after 0-based ``step`` of a loop whose last step is ``last``."""
        return (step + 1) % self.every == 0 or step == last

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        fix = "delete it to start the run afresh"
        blob = load_torch(self.path, fix)
        if not isinstance(blob, dict) or "key" not in blob or "state" not in blob:
            raise CorruptFile(f"{self.path} is not a checkpoint of this library (got "
                              f"{type(blob).__name__}{' without key/state' if isinstance(blob, dict) else ''}); "
                              f"{fix}")
        if blob.get("key") != self.key:
            raise CheckpointMismatch(
                f"Checkpoint {self.path} was written by another configuration (hash {blob.get('key')}, "
                f"this run {self.key}); delete it or give this run its own path.")
        return blob["state"]

    def save(self, state: dict) -> None:
        atomic_save({"key": self.key, "state": state}, self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
