"""`make records CHAPTER=<stem> [PROFILE=cpu]`: re-run a chapter's records from a clean checkout of HEAD.

Committed records must name a clean commit and the source hash of that commit's library. This
script checks out HEAD into a temporary git worktree, executes the chapter there with papermill
(``POISONBOOK_RECORDS=rerun``: records whose configuration or library source differ are re-run,
matching ones are kept), and copies ``results/<profile>/<chapter>/`` back into this checkout, also when a
later cell of the page fails (the exit status says so): every record is written whole by its driver.
The working tree may have uncommitted changes; only committed code runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("chapter", help="notebook stem, e.g. 20-poisoned-deviation-and-robust-dm")
    ap.add_argument("--profile", default="cpu", choices=("ci", "cpu", "paper"))
    args = ap.parse_args()
    if not (ROOT / "notebooks" / f"{args.chapter}.ipynb").exists():
        print(f"no notebook notebooks/{args.chapter}.ipynb", file=sys.stderr)
        return 2
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix=f"records-{head[:8]}-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(work), head], check=True,
                   capture_output=True)
    try:
        src, dst = work / "results" / args.profile / args.chapter, ROOT / "results" / args.profile / args.chapter
        if dst.exists():  # start from this checkout's records, so matching ones are kept
            shutil.rmtree(src, ignore_errors=True)
            shutil.copytree(dst, src)
        env = {**os.environ, "POISONBOOK_RECORDS": "rerun", "PYTHONPATH": str(work / "lib")}
        nb = work / "notebooks" / f"{args.chapter}.ipynb"
        t0 = time.perf_counter()
        print(f"records: {args.chapter} in profile {args.profile} at {head[:10]} (in {work})", flush=True)
        rc = subprocess.run([sys.executable, "-m", "papermill", str(nb), str(work / "out.ipynb"), "-p", "PROFILE",
                             args.profile, "--cwd", str(nb.parent), "--no-progress-bar"], env=env).returncode
        print(f"records: {'done' if rc == 0 else f'the page FAILED (exit {rc})'} in "
              f"{(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        if src.exists():  # records are written whole by their drivers: keep them even if a later cell failed
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
            print(f"records: copied {src} -> {dst}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work)], check=False)
    return rc


if __name__ == "__main__":
    sys.exit(main())
