"""Dashboards update their figures in place when a control is set from code, and reuse the cache."""

import numpy as np
import pytest
import torch

from sponlib.analysis import LayerAnalysis
from sponlib.errors import InvalidArgumentError
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import calibrate
from sponlib.spon import SponVectors
from sponlib.viz import DriftExplorer, ThresholdExplorer


@pytest.fixture(scope="module")
def analysis():
    model = tiny_model("llama")
    calibration = calibrate(
        model,
        torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(1)),
        refine_levels=(0.5,),
        progress=False,
    )
    thresholds = calibration.thresholds(0.5, "teal")
    vectors = SponVectors.zeros(model)
    for alpha in vectors.alphas.values():
        alpha.normal_(0, 0.3)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    return LayerAnalysis(model, ids, calibration, spon={("teal", 0.5): (thresholds, vectors.alphas)}, lens_tokens=8)


def test_drift_explorer_moves_its_curves_with_the_slider(analysis):
    explorer = DriftExplorer(analysis, rules=("teal", "wina"))
    masked, spon = explorer.drift.data[0], explorer.drift.data[1]
    at_half = list(masked.y)
    assert spon.visible is True and not np.isnan(spon.y).any()  # vectors exist at 0.5
    explorer.level.value = 0.8
    assert list(masked.y) != at_half and np.all(np.array(masked.y) > 0)
    assert np.allclose(masked.y, analysis.result("teal", 0.8)["metrics"]["drift"])
    assert spon.visible == "legendonly"  # no vectors at 0.8
    assert "0.8" in explorer.kl.layout.title.text
    explorer.rule.value = "wina"
    assert np.allclose(masked.y, analysis.result("wina", 0.8)["metrics"]["drift"])
    pca_before = list(explorer.pca.data[1].x)
    explorer.layer.value = 0
    assert list(explorer.pca.data[1].x) != pca_before
    assert "measured sparsity" in explorer.status.value


def test_revisiting_a_level_uses_the_cache(analysis):
    explorer = DriftExplorer(analysis)
    explorer.level.value = 0.3
    computed = len(analysis.timings)
    explorer.level.value = 0.5
    explorer.level.value = 0.3
    assert len(analysis.timings) == computed  # nothing recomputed


def test_drift_explorer_computes_dense_and_unshown_metrics_once(analysis):
    from sponlib.analysis.metrics import pca_project

    explorer = DriftExplorer(analysis, level=0.35)  # a level no other test visits
    shown = analysis.result("teal", 0.35, metrics=())["metrics"]
    assert set(shown) == {"drift", "lens_kl"}  # the curves drawn; cosine and CKA left until asked for
    fitted = explorer._pca(explorer.layer.value)
    explorer.level.value = 0.65
    assert explorer._pca(explorer.layer.value) is fitted  # the level does not change dense's side
    dense = analysis.dense.resid()[explorer.layer.value][analysis.later]
    assert np.allclose(explorer.pca.data[0].x, pca_project(fitted[0], dense)[:, 0])
    assert not np.allclose(explorer.pca.data[1].x, fitted[1][:, 0])  # the masked states moved


def test_threshold_explorer_moves_the_threshold_line(analysis):
    explorer = ThresholdExplorer(analysis, block=1, role="gate")
    line = explorer.figure.layout.shapes[0]
    before, bars = line.x0, list(explorer.figure.data[0].y)
    explorer.level.value = 0.8
    assert explorer.figure.layout.shapes[0].x0 > before  # a higher level, a higher threshold
    assert list(explorer.figure.data[0].y) != bars  # upstream masks changed what block 1 reads
    assert "zeroed in this projection" in explorer.status.value
    explorer.role.value = "down"
    assert "down_proj" in explorer.figure.layout.title.text
    explorer.level.value = 0.0
    assert explorer.figure.layout.shapes[0].visible is False  # dense: no threshold


def test_unknown_rule_is_refused_up_front(analysis):
    with pytest.raises(InvalidArgumentError):
        DriftExplorer(analysis, rules=("magnitude",))


def test_a_redraw_defers_garbage_collection_and_restores_it(analysis, monkeypatch):
    import gc

    explorer = DriftExplorer(analysis)
    during = []
    monkeypatch.setattr(explorer, "_draw", lambda: during.append(gc.isenabled()))
    assert gc.isenabled()
    explorer.level.value = 0.35
    assert during == [False] and gc.isenabled()

    def failing():
        raise RuntimeError("a draw that fails")

    monkeypatch.setattr(explorer, "_draw", failing)
    with pytest.raises(RuntimeError):
        explorer.refresh()
    assert gc.isenabled()  # restored on errors too
    gc.disable()
    try:
        monkeypatch.setattr(explorer, "_draw", lambda: None)
        explorer.refresh()
        assert not gc.isenabled()  # a caller's own choice is left as it was
    finally:
        gc.enable()


def test_rows_of_figures_and_controls_wrap_in_a_narrow_window(analysis):
    """Side by side where the output is wide enough, else one under another: never cut off."""
    import ipywidgets as w

    explorer = DriftExplorer(analysis)
    controls, _, figures, pca = explorer.widget.children
    assert controls.layout.flex_flow == figures.layout.flex_flow == "row wrap"
    assert [box.children[0] for box in figures.children] == [explorer.drift, explorer.kl]
    assert all(box.layout.flex.endswith("700px") and box.layout.min_width == "0" for box in figures.children)
    assert pca is explorer.pca
    threshold = ThresholdExplorer(analysis)
    assert [row.layout.flex_flow for row in threshold.widget.children if isinstance(row, w.Box)][:2] == ["row wrap"] * 2
