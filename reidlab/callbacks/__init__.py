"""Callbacks: retrieval evaluation and figure logging."""

from reidlab.callbacks.figures import log_figure, ranked_list_figure
from reidlab.callbacks.retrieval import RetrievalEvaluation

__all__ = ["RetrievalEvaluation", "log_figure", "ranked_list_figure"]
