"""Pictures: plotly figure builders (`plots`), ipywidgets dashboards on them (`widgets`), static
PNGs of both for notebook readers without JavaScript (`static`, through `chromium`).

from sponlib.viz import DriftExplorer, plots, static_images
static_images()  # a notebook's figures and dashboards carry PNGs of themselves from here on
plots.drift_per_layer({"masked@0.5": drift, "spon@0.5": drift_spon})
DriftExplorer(LayerAnalysis(model, ids, calibration))
"""

from . import plots
from .static import snapshot, static_images
from .widgets import DriftExplorer, ThresholdExplorer

__all__ = ["DriftExplorer", "ThresholdExplorer", "plots", "snapshot", "static_images"]
