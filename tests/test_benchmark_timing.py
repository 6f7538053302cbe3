"""The benchmarks' interleaved timing (benchmarks/timing.py): round-robin order and same-round ratios."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timing import interleaved_seconds, ratio_spread  # noqa: E402


def test_rounds_time_every_function_in_turn():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    times = interleaved_seconds(fns, torch.device("cpu"), rounds=3, inner=2)
    # each round: a twice, then b twice, then c twice (the best of 2), never a whole mode's rounds in a row
    assert calls == (["a"] * 2 + ["b"] * 2 + ["c"] * 2) * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_ratio_spread_pairs_the_rounds():
    # per-round ratios 2, 4, 1: paired by round, not the ratio of the best times (1 / 1 = 1) or of the sums
    spread = ratio_spread([2.0, 8.0, 1.0], [1.0, 2.0, 1.0])
    assert spread == {"median": 2.0, "min": 1.0, "max": 4.0, "rounds": 3}
    assert ratio_spread([3.0, 5.0], [1.0, 1.0])["median"] == 4.0  # even count: the mean of the middle two
