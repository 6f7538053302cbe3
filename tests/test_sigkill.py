"""SIGKILL in a subprocess: the fault the in-process tests (an exception in a callback) cannot make.

* A training run killed with SIGKILL half way and started again from its checkpoint ends with
  weights and loss history bit-identical to an uninterrupted run.
* A record write killed with SIGKILL (mid-write, and at random moments of a write loop) never
  leaves a corrupt record; the temporary file a killed writer leaves is removed by the next write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from poisonbook import results

ROOT = Path(__file__).resolve().parents[1]

TRAIN = textwrap.dedent("""
    import os, signal, sys, torch
    from poisonbook import models, train
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(64) % 4
    torch.manual_seed(0)
    net = models.ConvNet(in_channels=1, num_classes=4, im_size=8, width=8, depth=1)

    def noise(xb, g):
        return xb + 0.05 * torch.randn(xb.shape, generator=g)

    def die(epoch, model, history):
        if epoch == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

    kill_at = int(sys.argv[2])
    train.fit(net, x, y, epochs=6, lr=0.05, batch_size=16, augment=noise, checkpoint=sys.argv[1],
              callback=die if kill_at >= 0 else None)
    torch.save({"weights": net.state_dict(), "loss": None}, sys.argv[1] + ".final")
""")


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=ROOT, **kw)


def test_training_killed_by_sigkill_resumes_bit_identically(tmp_path):
    full = tmp_path / "full.pt"
    assert _python(TRAIN, str(full), "-1").wait(timeout=300) == 0
    killed = tmp_path / "killed.pt"
    proc = _python(TRAIN, str(killed), "2")
    assert proc.wait(timeout=300) == -signal.SIGKILL, "the child really died of SIGKILL"
    assert killed.exists() and not Path(str(killed) + ".final").exists()
    assert torch.load(killed, weights_only=False)["state"]["epoch"] == 2
    assert _python(TRAIN, str(killed), "-1").wait(timeout=300) == 0  # resumes from epoch 3
    a = torch.load(str(full) + ".final", weights_only=False)["weights"]
    b = torch.load(str(killed) + ".final", weights_only=False)["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = torch.load(full, weights_only=False)["state"]["history"]["loss"]
    hb = torch.load(killed, weights_only=False)["state"]["history"]["loss"]
    assert ha == hb and len(ha) == 6


HALF_WRITE = textwrap.dedent("""
    import os, signal, sys
    from poisonbook import cache

    def half_then_die(f):
        f.write('{"schema": 1, "metr')
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    cache._atomic(sys.argv[1], half_then_die, "w")
""")

WRITE_LOOP = textwrap.dedent("""
    import sys
    from poisonbook import results
    print("ready", flush=True)
    i = 0
    while True:
        results.save_record("cpu", "c", "e", config={"i": i, "pad": list(range(20000))}, metrics={"i": i},
                            seeds=0, wall_time=0.0, root=sys.argv[1])
        i += 1
""")


def test_record_write_killed_mid_write_leaves_the_old_record_and_a_tmp_the_next_write_removes(tmp_path):
    path = results.save_record("cpu", "c", "e", config={}, metrics={"acc": 0.5}, seeds=0, wall_time=1.0,
                               root=tmp_path)
    before = path.read_text()
    assert _python(HALF_WRITE, str(path)).wait(timeout=120) == -signal.SIGKILL
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert path.read_text() == before and len(leftovers) == 1, "SIGKILL skips cleanup: the tmp stays"
    results.save_record("cpu", "c", "e", config={}, metrics={"acc": 0.6}, seeds=0, wall_time=1.0, root=tmp_path)
    assert [p.name for p in path.parent.iterdir()] == ["e.json"], "the next write removed the stale tmp"
    assert results.load_record(path)["metrics"]["acc"] == 0.6 and (path.stat().st_mode & 0o777) == 0o644


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4])
def test_record_write_loop_killed_at_random_never_corrupts(tmp_path, delay):
    proc = _python(WRITE_LOOP, str(tmp_path), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    path = tmp_path / "cpu" / "c" / "e.json"
    deadline = time.time() + 60
    while not path.exists() and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    record = results.load_record(path)  # whole: the old or the new one, never half
    assert json.loads(path.read_text())["metrics"]["i"] == record["metrics"]["i"] >= 0
    results.save_record("cpu", "c", "e", config={}, metrics={"i": -1}, seeds=0, wall_time=0.0, root=tmp_path)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
