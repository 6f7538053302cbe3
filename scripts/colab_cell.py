"""Write the one hidden Colab cell into every chapter notebook (`python scripts/colab_cell.py`).

On Colab the cell clones the book's repository (for the committed run records), installs the
library with its runtime dependencies from that clone, points the library at the clone with
POISONBOOK_ROOT, and allows dataset downloads. Anywhere else it does nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO = "https://github.com/poisonbook/poisonbook"  # the intended public home; see _config.yml
SOURCE = f'''# Colab only: clone the book (library + committed run records), install the library with its dependencies.
import os, subprocess, sys
if "google.colab" in sys.modules:
    if not os.path.exists("/content/poisonbook"):
        subprocess.run(["git", "clone", "--depth", "1", "{REPO}", "/content/poisonbook"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "/content/poisonbook"], check=True)
    os.environ["POISONBOOK_ROOT"] = "/content/poisonbook"
    os.environ["POISONBOOK_DOWNLOAD"] = "1"'''


def is_colab_cell(cell: dict) -> bool:
    return cell["cell_type"] == "code" and "google.colab" in "".join(cell["source"])


def main() -> int:
    changed = 0
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if is_colab_cell(cell) and "".join(cell["source"]) != SOURCE:
                cell["source"] = SOURCE.splitlines(keepends=True)
                cell["metadata"]["tags"] = ["remove-cell"]
                changed += 1
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    print(f"colab cell updated in {changed} notebook(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
