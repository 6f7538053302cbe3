"""`make book [PROFILE=cpu]`: execute every notebook of _toc.yml in one profile with papermill, then build the HTML.

Source notebooks stay stripped: they are copied with the prose into _staging/, executed there
(in _toc.yml order, with `-p PROFILE <profile>`), and Jupyter Book 1 builds _staging with
execution off and warnings as errors into _build/html at the repository root.

The default profile is `cpu`: every experiment cell loads the committed `cpu` record whose
configuration matches (see `poisonbook.experiments.run_or_load`; a record produced by older
library code is shown with a visible "stale" note), while the derivation checks execute anew.
`PROFILE=ci` is the smoke build. On each page the two parameter cells (the notebook's own and
papermill's injected one) are removed, and a note says which profile the page shows. The build
prints each chapter's execution time against its budget, and fails if a page leaks an absolute
path of this machine.
"""

from __future__ import annotations

import argparse
import json
import re
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
BUDGET_S = {"ci": 90, "cpu": 3600, "paper": None}
PAGE_NOTE = {
    "ci": "This page was built in the `ci` profile: a seconds-long smoke run on tiny data. Its numbers prove the "
          "chapter runs and measure nothing worth comparing.",
    "cpu": "This page shows the `cpu` profile: the committed reduced-scale runs on real offline data (each "
           "experiment names its record below it). The derivation checks were executed when the page was built.",
    "paper": "This page shows the `paper` profile: the papers' own settings, run on a GPU.",
}
LEAKS = re.compile(r"PosixPath\(|/work/|/home/[a-z]|/root/|/tmp/|site-packages")


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


def dress(nb: Path, profile: str) -> list[str]:
    """Remove the parameter cells from the page, add the profile note; return leaked paths found in outputs."""
    book = json.loads(nb.read_text())
    leaks, note_at = [], None
    for i, cell in enumerate(book["cells"]):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if {"parameters", "injected-parameters"} & set(tags) and "remove-cell" not in tags:
            tags.append("remove-cell")
            note_at = i + 1
        for out in cell.get("outputs", []):
            text = "".join(out.get("text", "")) + "".join(
                "".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
            leaks += [f"{nb.name} cell {i}: ...{text[max(m.start() - 40, 0):m.end() + 40]!r}..."
                      for m in LEAKS.finditer(text)]
    if note_at is not None:
        book["cells"].insert(note_at, {"cell_type": "markdown", "id": "profile-note", "metadata": {},
                                       "source": f":::{{note}}\n{PAGE_NOTE[profile]}\n:::"})
    nb.write_text(json.dumps(book, indent=1))
    return leaks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", default="cpu", choices=PROFILES)
    ap.add_argument("--only", help="execute just this notebook stem (the others are copied unexecuted)")
    args = ap.parse_args()

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    shutil.rmtree(STAGE, ignore_errors=True)
    STAGE.mkdir()
    for item in ("_config.yml", "_toc.yml", "book", "notebooks"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, STAGE / item)

    timings, leaks = [], []
    for f in toc_files(toc):
        nb = STAGE / f"{f}.ipynb"
        if not nb.exists() or (args.only and Path(f).name != args.only):
            continue
        t0 = time.perf_counter()
        print(f"executing {f}.ipynb in profile {args.profile} ...", flush=True)
        papermill.execute_notebook(str(nb), str(nb), parameters={"PROFILE": args.profile},
                                   kernel_name="python3", cwd=str(nb.parent), progress_bar=False)
        timings.append((f, time.perf_counter() - t0))
        leaks += dress(nb, args.profile)
    budget = BUDGET_S[args.profile]
    print(f"execution times (profile {args.profile}, budget {budget or '-'} s per chapter):")
    for f, s in timings:
        over = budget is not None and s > budget
        print(f"  {s:7.1f} s  {'OVER BUDGET  ' if over else ''}{f}")
    if leaks:
        print("pages leak paths of this machine:\n  " + "\n  ".join(leaks), file=sys.stderr)
        return 1

    jb = str(Path(sys.executable).parent / "jupyter-book")  # the venv's, whatever PATH says
    cmd = [jb, "build", str(STAGE), "--path-output", str(ROOT), "--warningiserror", "--keep-going"]
    print(" ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == 0:
        print(f"book: {ROOT / '_build' / 'html' / 'index.html'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
