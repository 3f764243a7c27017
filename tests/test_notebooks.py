"""The committed notebooks: staged, executed, light, honest about live output, and citing records
that exist. (nbval, in the same `make test`, reruns each one and compares its outputs.)"""

import json
import re
from pathlib import Path

import pytest
from nbval.plugin import find_comment_markers

from sponlib.records import results_dir

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
PLOTLY = "application/vnd.plotly.v1+json"


def _code_cells(path: Path) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def test_notebooks_are_staged_in_order():
    stages = [int(p.name[:2]) for p in NOTEBOOKS]
    assert stages == list(range(len(NOTEBOOKS))) and len(NOTEBOOKS) >= 7
    listed = (ROOT / "notebooks" / "README.md").read_text()
    assert all(f"`{p.name}`" in listed for p in NOTEBOOKS), "list every notebook in notebooks/README.md"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_executed_without_widget_state(path):
    notebook = json.loads(path.read_text())
    cells = _code_cells(path)
    assert all(c["execution_count"] is not None for c in cells if c["source"]), "commit it executed, with outputs"
    counts = [c["execution_count"] for c in cells if c["source"]]
    assert counts == list(range(1, len(counts) + 1)), "execute it top to bottom in one kernel"
    assert not any(o["output_type"] == "error" for c in cells for o in c["outputs"])
    # widget state would carry plotly.js into the file (megabytes); execute with store_widget_state=False
    assert "widgets" not in notebook["metadata"] and path.stat().st_size < 400_000
    assert notebook["cells"][0]["cell_type"] == "markdown" and notebook["cells"][-1]["cell_type"] == "markdown"
    assert "Takeaway" in "".join(notebook["cells"][-1]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_live_output_is_marked_and_records_exist(path):
    for cell in _code_cells(path):
        source = "".join(cell["source"])
        ignored = ("check", False) in find_comment_markers(source)  # nbval's own reading of the markers
        if source.lstrip().startswith("# NBVAL"):
            assert ignored, f"nbval does not read this marker (it must be alone on its line):\n{source[:200]}"
        if any(WIDGET in o.get("data", {}) for o in cell["outputs"]):
            assert ignored, f"a widget's output is not comparable; mark the cell # NBVAL_IGNORE_OUTPUT:\n{source[:200]}"
        for name in re.findall(r'load_result\("([^"]+)"\)', source):
            assert (results_dir() / name).is_file(), f"{path.name} cites {name}, which data/results/ lacks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_saved_figure_carries_a_static_image(path):
    """GitHub and nbviewer run no JavaScript: each plotly output must hold a PNG of itself, and no
    HTML (which viewers prefer to a PNG, and which is blank without plotly.js)."""
    figures = [o["data"] for c in _code_cells(path) for o in c["outputs"] if PLOTLY in o.get("data", {})]
    for data in figures:
        assert "image/png" in data and "text/html" not in data, f"{path.name}: a figure without its PNG"
