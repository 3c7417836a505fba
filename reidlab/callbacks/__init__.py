"""Callbacks: retrieval evaluation and figure logging."""

from reidlab.callbacks.figures import figure_folder, log_figure, ranked_list_figure
from reidlab.callbacks.retrieval import RetrievalEvaluation

__all__ = ["RetrievalEvaluation", "figure_folder", "log_figure", "ranked_list_figure"]
