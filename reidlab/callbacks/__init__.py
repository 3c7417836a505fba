"""Callbacks: pseudo-labelling (and IICS's stage schedule), mean teacher, retrieval
evaluation, figure logging (ranked lists, GAN generations), feature export and the
checkpoint of an interrupted fit."""

from reidlab.callbacks.adabn import AdaBN
from reidlab.callbacks.feature_writer import FeatureWriter
from reidlab.callbacks.features import collect_features
from reidlab.callbacks.figures import figure_folder, log_figure, ranked_list_figure
from reidlab.callbacks.generations import GenerationGrid, generation_figure
from reidlab.callbacks.iics_stages import IICSStages
from reidlab.callbacks.interrupt import InterruptCheckpoint, TrainingInterrupted
from reidlab.callbacks.mean_teacher import MeanTeacher, update_momentum
from reidlab.callbacks.pseudo_labeling import PseudoLabeling
from reidlab.callbacks.retrieval import RetrievalEvaluation

__all__ = [
    "AdaBN", "FeatureWriter", "GenerationGrid", "IICSStages", "InterruptCheckpoint", "MeanTeacher",
    "PseudoLabeling", "RetrievalEvaluation", "TrainingInterrupted", "collect_features",
    "figure_folder", "generation_figure", "log_figure", "ranked_list_figure", "update_momentum",
]
