"""run_or_load: a record is loaded only when configuration and library source match; stale ones are marked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from poisonbook import cache, experiments, results
from poisonbook import experiments as ex_mod
from poisonbook.experiments import tour

ROOT = Path(__file__).resolve().parents[1]


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self, cfg):
        self.calls += 1
        return {"metrics": {"twice": 2 * cfg["k"], "call": self.calls},
                "artefacts": {"img": torch.full((2, 3), float(cfg["k"]))}, "scale": f"k = {cfg['k']}"}


def test_loads_a_matching_record_and_reruns_a_different_config(tmp_path):
    fn = Counter()
    a = experiments.run_or_load("ch", "e", "cpu", {"k": 1}, fn, root=tmp_path)
    b = experiments.run_or_load("ch", "e", "cpu", {"k": 1}, fn, root=tmp_path)
    assert (a.loaded, b.loaded, fn.calls) == (False, True, 1)
    assert b.metrics == {"twice": 2, "call": 1} and b["scale"] == "k = 1" and not b.stale
    np.testing.assert_array_equal(b.artefacts["img"], np.ones((2, 3)))
    c = experiments.run_or_load("ch", "e", "cpu", {"k": 3}, fn, root=tmp_path)
    assert (c.loaded, c.metrics["twice"], fn.calls) == (False, 6, 2)


def test_other_library_source_is_stale_in_cpu_and_rerun_in_ci(tmp_path, monkeypatch):
    fn = Counter()
    for profile in ("cpu", "ci"):
        experiments.run_or_load("ch", "e", profile, {"k": 1}, fn, root=tmp_path)
    monkeypatch.setattr(results, "source_hash", lambda length=16, module=None: "0" * length)
    cpu = experiments.run_or_load("ch", "e", "cpu", {"k": 1}, fn, root=tmp_path)
    assert cpu.loaded and cpu.stale and fn.calls == 2
    assert "Stale" in cpu.provenance() and cpu.record["git_commit"][:10] in cpu.provenance()
    ci = experiments.run_or_load("ch", "e", "ci", {"k": 1}, fn, root=tmp_path)
    assert not ci.loaded and fn.calls == 3
    monkeypatch.setenv("POISONBOOK_RECORDS", "rerun")
    again = experiments.run_or_load("ch", "e", "cpu", {"k": 1}, fn, root=tmp_path)
    assert not again.loaded and fn.calls == 4


def test_refresh_policy_and_bad_policy(tmp_path, monkeypatch):
    fn = Counter()
    experiments.run_or_load("ch", "e", "cpu", {"k": 1}, fn, root=tmp_path)
    monkeypatch.setenv("POISONBOOK_RECORDS", "refresh")
    assert not experiments.run_or_load("ch", "e", "cpu", {"k": 1}, fn, root=tmp_path).loaded
    monkeypatch.setenv("POISONBOOK_RECORDS", "sometimes")
    with pytest.raises(ValueError, match="POISONBOOK_RECORDS"):
        experiments.run_or_load("ch", "e", "cpu", {"k": 1}, fn, root=tmp_path)


def test_driver_output_is_checked(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="metrics"):
        experiments.run_or_load("ch", "e", "cpu", {}, lambda cfg: {"acc": 1.0}, root=tmp_path)
    with pytest.raises(ValueError, match="metadata"):
        experiments.run_or_load("ch", "e", "cpu", {}, lambda cfg: {"metrics": {"a": 1}, "git_commit": "x"},
                                root=tmp_path)
    monkeypatch.setattr(ex_mod, "MAX_ARTEFACT_BYTES", 1000)
    big = lambda cfg: {"metrics": {"a": 1}, "artefacts": {"noise": torch.rand(10_000)}}
    with pytest.raises(ValueError, match="MB"):
        experiments.run_or_load("ch", "big", "cpu", {}, big, root=tmp_path)
    assert not (tmp_path / "cpu" / "ch" / "big.json").exists()


def test_make_data_without_apt_says_how_to_get_the_data(tmp_path):
    env = {**os.environ, "POISONBOOK_FASHION_DIR": str(tmp_path / "none"), "POISONBOOK_DATA": str(tmp_path),
           "APT_GET": "no-such-apt-get"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "get_data.sh")], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert "apt-get install dataset-fashion-mnist" in out.stderr and "POISONBOOK_DOWNLOAD=1" in out.stderr


def test_book_build_hides_parameter_cells_and_finds_leaked_paths(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "PROFILE = 'ci'", "outputs": []},
             {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "PROFILE = 'cpu'",
              "outputs": [{"output_type": "stream", "text": "saved PosixPath('/work/x.json')"}]}]
    nb = tmp_path / "x.ipynb"
    nb.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    leaks = mod.dress(nb, "cpu")
    out = json.loads(nb.read_text())["cells"]
    assert all("remove-cell" in c["metadata"]["tags"] for c in out[:2])
    assert "cpu" in out[2]["source"] and len(leaks) == 2


def test_a_record_hashes_the_code_its_driver_can_import():
    files = {p.relative_to(p.parents[1]).as_posix() if p.parent.name != "poisonbook" else p.name
             for p in cache.source_files("poisonbook.experiments.tour")}
    assert {"tour.py", "train.py", "models.py", "data.py", "checks.py"} <= {p.split("/")[-1] for p in files}
    assert not {"estimators.py", "attacks.py", "gc_networks.py"} & {p.split("/")[-1] for p in files}
    assert len(cache.source_files()) > len(files)
    assert cache.source_hash(module="poisonbook.experiments.tour") != cache.source_hash()


def _record_hashes_after_edit(tmp_path, edited: str) -> dict[str, str]:
    """Record source hashes of drivers in a copy of the library where ``edited`` gained a comment. The copy also
    holds a scratch driver ``reader`` that imports the ``profiles`` module itself (to call ``profiles.get``)."""
    import shutil

    lib = Path(cache.__file__).resolve().parents[1]
    shutil.copytree(lib / "poisonbook", tmp_path / "poisonbook", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "poisonbook" / "experiments" / "reader.py").write_text(
        "from .. import profiles\n\ndef run(cfg):\n    return profiles.get('tour', 'ci')\n")
    if edited:
        with open(tmp_path / "poisonbook" / edited, "a") as f:
            f.write("\n# an edit\n")
    code = ("import json; from poisonbook import cache; print(json.dumps({m: cache.source_hash(module="
            "'poisonbook.experiments.' + m) for m in ('tour', 'dvae', 'gc_networks', 'reader')}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    return json.loads(out.stdout)


def test_bookkeeping_edits_do_not_stale_records_but_code_edits_do(tmp_path):
    before = _record_hashes_after_edit(tmp_path / "a", "")
    profiles = _record_hashes_after_edit(tmp_path / "b", "profiles.py")
    # a profile edit: compared by value for drivers that take cfg, but not for a driver that calls profiles.get
    assert all(profiles[m] == before[m] for m in ("tour", "dvae", "gc_networks"))
    assert profiles["reader"] != before["reader"]
    registry = _record_hashes_after_edit(tmp_path / "c", "results.py")
    assert registry == before
    code = _record_hashes_after_edit(tmp_path / "d", "train.py")
    assert all(code[m] != before[m] for m in ("tour", "dvae", "gc_networks"))  # reader does not import train


def test_library_drivers_record_their_module_and_other_drivers_the_whole_library(tmp_path, monkeypatch):
    fake = lambda cfg: {"metrics": {"a": 1}}
    fake.__module__ = "poisonbook.experiments.tour"
    run = experiments.run_or_load("ch", "e", "cpu", {}, fake, root=tmp_path)
    assert run.record["source_module"] == "poisonbook.experiments.tour"
    assert run.record["source_hash"] == cache.source_hash(module="poisonbook.experiments.tour")
    other = experiments.run_or_load("ch", "f", "cpu", {}, lambda cfg: {"metrics": {"a": 1}}, root=tmp_path)
    assert other.record["source_module"] is None and other.record["source_hash"] == cache.source_hash()
