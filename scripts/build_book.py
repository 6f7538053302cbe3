"""`make book`: execute every notebook of _toc.yml in one profile with papermill, then build the HTML.

Source notebooks stay stripped: they are copied with the prose into _staging/, executed there
(in _toc.yml order, with `-p PROFILE <profile>`), and Jupyter Book 1 builds _staging with
execution off and warnings as errors into _build/html at the repository root.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import papermill
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "_staging"
PROFILES = ("ci", "cpu", "paper")


def toc_files(toc: dict) -> list[str]:
    """Every `file:` of a jb-book table of contents, in reading order."""
    files = [toc["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="ci", choices=PROFILES)
    ap.add_argument("--only", help="execute just this notebook stem (the others are copied unexecuted)")
    args = ap.parse_args()

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir()
    for item in ("_config.yml", "_toc.yml", "book", "notebooks"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, STAGE / item)

    timings = []
    for f in toc_files(toc):
        nb = STAGE / f"{f}.ipynb"
        if not nb.exists() or (args.only and Path(f).name != args.only):
            continue
        t0 = time.perf_counter()
        print(f"executing {f}.ipynb in profile {args.profile} ...", flush=True)
        papermill.execute_notebook(str(nb), str(nb), parameters={"PROFILE": args.profile},
                                   kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
        timings.append((f, time.perf_counter() - t0))
    for f, s in timings:
        print(f"  {s:7.1f} s  {f}")

    jb = str(Path(sys.executable).parent / "jupyter-book")  # the venv's, whatever PATH says
    cmd = [jb, "build", str(STAGE), "--path-output", str(ROOT), "--warningiserror", "--keep-going"]
    print(" ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == 0:
        print(f"book: {ROOT / '_build' / 'html' / 'index.html'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
