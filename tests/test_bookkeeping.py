"""Profiles, run records, caching: validation, round trips, atomic writes."""

import json
import math

import pytest
import torch

from poisonbook import cache, profiles, results


def test_every_experiment_defines_the_same_keys_in_every_profile():
    for name, entry in profiles.EXPERIMENTS.items():
        keys = [set(profiles.get(name, p)) for p in profiles.PROFILES]
        assert all(k == keys[0] for k in keys), name


def test_profile_overrides_and_errors():
    cfg = profiles.get("tour", "ci", epochs=2)
    assert cfg.epochs == 2 and cfg["profile"] == "ci" and cfg.experiment == "tour"
    assert profiles.EXPERIMENTS["tour"]["ci"]["epochs"] != 2
    with pytest.raises(ValueError, match="Unknown profile 'gpu'.*ci, cpu, paper"):
        profiles.get("tour", "gpu")
    with pytest.raises(ValueError, match="Unknown experiment 'nope'.*tour"):
        profiles.get("nope", "ci")
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['epoch'\]"):
        profiles.get("tour", "ci", epoch=3)
    with pytest.raises(AttributeError, match="no setting 'epoch'"):
        cfg.epoch


def test_record_round_trip(tmp_path):
    cfg = profiles.get("tour", "cpu")
    metrics = {"acc": 0.91, "per_class": torch.tensor([0.5, 1.0]), "diverged": float("nan"),
               "nested": {"ipc1": 0.7}}
    path = results.save_record("cpu", "00-x", "tour", config=cfg, metrics=metrics, seeds=[0, 1], wall_time=1.23456,
                               device=torch.device("cpu"), root=tmp_path, scale="tiny")
    assert path == tmp_path / "cpu" / "00-x" / "tour.json"
    rec = results.load_record(path)
    assert rec["config"] == json.loads(json.dumps(dict(cfg)))
    assert rec["metrics"]["acc"] == 0.91 and rec["metrics"]["per_class"] == [0.5, 1.0]
    assert rec["metrics"]["diverged"] == "nan" and rec["seeds"] == [0, 1] and rec["scale"] == "tiny"
    assert rec["wall_time_s"] == 1.235 and rec["library_version"] and rec["git_commit"]
    table = results.tabulate(results.load_records("cpu", root=tmp_path))
    assert table.loc[0, "acc"] == 0.91 and table.loc[0, "nested.ipc1"] == 0.7


def test_a_failed_write_never_leaves_half_a_record(tmp_path):
    kw = dict(config={}, seeds=0, wall_time=1.0, root=tmp_path)
    path = results.save_record("cpu", "00-x", "run", metrics={"acc": 0.5}, **kw)
    before = path.read_text()
    with pytest.raises(TypeError, match="cannot store object"):
        results.save_record("cpu", "00-x", "run", metrics={"acc": object()}, **kw)
    assert path.read_text() == before

    def half_then_crash(f):
        f.write('{"schema": 1, "metr')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache._atomic(path, half_then_crash, "w")
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == ["run.json"], "no temporary file is left behind"


@pytest.mark.parametrize("chapter,experiment", [("a/b", "x"), ("ok", "../x"), ("", "x")])
def test_record_names_are_validated(tmp_path, chapter, experiment):
    with pytest.raises(ValueError, match="plain name"):
        results.record_path("cpu", chapter, experiment, root=tmp_path)


def test_record_needs_metrics(tmp_path):
    with pytest.raises(ValueError, match="at least one metric"):
        results.save_record("cpu", "c", "e", config={}, metrics={}, seeds=0, wall_time=0, root=tmp_path)


def test_report_puts_published_next_to_measured(tmp_path, monkeypatch):
    pub = results.Published("10-dc", "dm", "acc", 0.8, "Zhao & Bilen 2023", "Table 1")
    monkeypatch.setattr(results, "PUBLISHED", [pub])
    results.save_record("cpu", "10-dc", "dm", config={}, metrics={"acc": 0.7}, seeds=0, wall_time=1,
                        root=tmp_path, scale="1k images")
    row = results.report(root=tmp_path).iloc[0]
    assert row["published"] == 0.8 and row["cpu profile"] == 0.7 and row["cpu scale"] == "1k images"
    assert row["paper profile"] is None or math.isnan(row["paper profile"])


def test_cached_computes_once_per_configuration(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(3)

    a = cache.cached("thing", {"n": 3}, compute, root=tmp_path)
    b = cache.cached("thing", {"n": 3}, compute, root=tmp_path)
    cache.cached("thing", {"n": 4}, compute, root=tmp_path)
    assert torch.equal(a, b) and len(calls) == 2
    assert cache.config_hash({"a": 1, "b": 2}) == cache.config_hash({"b": 2, "a": 1})


def test_git_commit_is_dirty_for_changed_code_but_not_for_changed_records(tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "results" / "cpu").mkdir(parents=True)
    (tmp_path / "results" / "cpu" / "a.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(results, "repo_root", lambda: tmp_path)
    assert not results.git_commit().endswith("+dirty")
    (tmp_path / "results" / "cpu" / "a.json").write_text('{"a": 1}')  # a record written by the run itself
    assert not results.git_commit().endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert results.git_commit().endswith("+dirty")
