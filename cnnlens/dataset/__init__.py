"""The network across a dataset and across training, and whether to trust an explanation.

Built on one streaming pass over the data (``scan``), with embeddings, the
training monitor, filter health and explanation checks on top. Like the
engine, nothing here draws or imports the widget layer.
"""

from .checks import ExplanationChecks, SanityCheck, check_explanation, sanity_check
from .embed import Embedder, Embedding, embed
from .health import HealthReport, Pair, filter_health
from .metrics import Curve, deletion, insertion, mask_overlap, pointing_game
from .monitor import Monitor, Record, UnitRecord, monitor

__all__ = ["Embedder", "Embedding", "embed",
           "Curve", "ExplanationChecks", "SanityCheck", "check_explanation", "deletion", "insertion",
           "mask_overlap", "pointing_game", "sanity_check",
           "HealthReport", "Pair", "filter_health", "Monitor", "Record", "UnitRecord", "monitor"]
