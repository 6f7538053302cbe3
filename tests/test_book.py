"""Book hygiene: stripped notebooks with a parameters cell and a Colab cell; the table of contents resolves."""

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _toc_files():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_has_the_anatomy(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    assert "widgets" not in nb["metadata"], "strip widget state"
    tags = [c.get("metadata", {}).get("tags", []) for c in code]
    params = [c for c, t in zip(code, tags) if "parameters" in t]
    assert len(params) == 1 and 'PROFILE = "ci"' in "".join(params[0]["source"])
    colab = [c for c, t in zip(code, tags) if "remove-cell" in t]
    assert colab and "google.colab" in "".join(colab[0]["source"]), "a hidden Colab install cell"
    assert code.index(colab[0]) < code.index(params[0]), "Colab cell first, then the parameters cell"
    assert nb["cells"][0]["cell_type"] == "markdown" and "".join(nb["cells"][0]["source"]).startswith("# ")


def test_toc_lists_existing_files_and_every_notebook():
    files = _toc_files()
    missing = [f for f in files if not any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb"))]
    assert not missing, f"_toc.yml lists files that do not exist: {missing}"
    listed = {f"{f}.ipynb" for f in files}
    unlisted = [p.name for p in NOTEBOOKS if f"notebooks/{p.name}" not in listed]
    assert not unlisted, f"notebooks missing from _toc.yml: {unlisted}"


def _colab_source():
    import importlib.util

    spec = importlib.util.spec_from_file_location("colab_cell", ROOT / "scripts" / "colab_cell.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SOURCE


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_is_the_shared_one(path):
    """Every chapter's hidden cell clones the book and installs it with its runtime dependencies."""
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and "google.colab" in
             "".join(c["source"])]
    assert cells == [_colab_source()], "run `python scripts/colab_cell.py`"


MAX_CELL_LINES = 45  # "no code cell longer than about 40 lines": drivers live in poisonbook.experiments


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_are_short(path):
    nb = json.loads(path.read_text())
    long = [(i, len(c["source"])) for i, c in enumerate(nb["cells"])
            if c["cell_type"] == "code" and len("".join(c["source"]).splitlines()) > MAX_CELL_LINES]
    assert not long, f"code cells (index, lines) over {MAX_CELL_LINES} lines: {long}; move the code to the library"
