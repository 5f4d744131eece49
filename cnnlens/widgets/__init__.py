"""Jupyter widgets: controls bound to the engine, drawn by the front end in js/ (bundled to static/)."""

from .activations import ActivationsView
from .attribution import AttributionView
from .classes_view import ClassesView
from .deconv_view import DeconvView
from .dream_view import DreamView
from .embed_view import EmbeddingView
from .export import export_assets, export_html
from .features_view import FeaturesView
from .health_view import FilterHealthView
from .inversion_view import InversionView
from .lens import Lens, demo
from .monitor_view import MonitorView
from .occlusion_view import OcclusionView
from .panel import Panel
from .scan_views import ClassImagesView, SharedScan, TopImagesView

__all__ = ["ActivationsView", "AttributionView", "ClassesView", "DeconvView", "DreamView", "FeaturesView",
           "InversionView", "Lens", "MonitorView", "OcclusionView", "Panel", "demo", "export_assets", "export_html",
           "SharedScan", "TopImagesView", "ClassImagesView",
           "FilterHealthView", "EmbeddingView"]
