"""Run the benchmarks (every ``bench_*.py`` here, or the ones named) and write one JSON per benchmark.

Usage: python benchmarks/run.py [NAME ...] [--device cpu|cuda] [--repeats 5]
Each ``bench_<name>.py`` defines ``run(device, repeats) -> dict``. Records go to
``benchmarks/results/<name>.<device>.json`` with the device, torch version and thread count.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from poisonbook.cache import atomic_write_text  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    names = sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", choices=names + [[]], default=[], metavar="NAME",
                    help=f"benchmarks to run (default: all of {', '.join(names)})")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    for name in args.names or names:
        module = importlib.import_module(f"bench_{name}")
        timings = module.run(device, args.repeats)
        record = {"benchmark": name, "device": str(device), "device_name": device_name,
                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "python": platform.python_version(), "best_of": args.repeats, "timings": timings}
        path = HERE / "results" / f"{name}.{device.type}.json"
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")
        print(f"{name}: {json.dumps(timings)}\n  -> {path.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
