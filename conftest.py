"""The test tiers, for tests/ and the notebooks alike (nbval collects notebooks/ beside tests/).

Every test belongs to one tier, a marker to select by (`make test-fast` runs `-m unit`):
    unit         plumbing and maths on tensors and tiny models built in memory: seconds each
    integration  the real default model, tiny model folders, the command line in subprocesses
    records      the committed records, docs and notebooks read against each other
    notebooks    the notebooks run by nbval, outputs compared
    browser      JupyterLab in headless chromium
A test marked with a tier keeps it; otherwise its file's tier below, or integration when it uses
the real model or a model folder, or unit.
"""

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "records", "notebooks", "browser")
FILE_TIERS = {
    # the command line and scripts in subprocesses, and process groups
    "test_cli.py": "integration",
    "test_distributed.py": "integration",
    "test_harness.py": "integration",
    "test_scale_extrapolation.py": "integration",
    "test_scale_rehearsal.py": "integration",
    "test_training_speed.py": "integration",
    "test_browser.py": "browser",
    "test_lab.py": "browser",
    "test_project.py": "records",
    "test_notebooks.py": "records",
    "test_records_rerun.py": "records",
    "test_figures.py": "records",
}
INTEGRATION_FIXTURES = {"default_model", "default_tokenizer", "tiny_model_dir"}


def _tier(item) -> str:
    marked = [tier for tier in TIERS if item.get_closest_marker(tier)]
    if marked:
        return marked[0]
    path = Path(str(item.fspath))
    if path.suffix == ".ipynb":
        return "notebooks"
    if path.name in FILE_TIERS:
        return FILE_TIERS[path.name]
    if item.get_closest_marker("slow") or INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "integration"
    return "unit"


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, _tier(item)))
