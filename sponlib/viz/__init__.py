"""Pictures: plotly figure builders (`plots`) and ipywidgets dashboards on them (`widgets`).

from sponlib.viz import DriftExplorer, plots
plots.drift_per_layer({"masked@0.5": drift, "spon@0.5": drift_spon})
DriftExplorer(LayerAnalysis(model, ids, calibration))
"""

from . import plots
from .widgets import DriftExplorer, ThresholdExplorer

__all__ = ["DriftExplorer", "ThresholdExplorer", "plots"]
