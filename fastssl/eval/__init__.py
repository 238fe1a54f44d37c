"""Evaluation of frozen representations: feature extraction, weighted kNN, linear probe, labelled subsets for
fine-tuning, and Pillow charts (loss curve, 2-D projection of embeddings)."""

from fastssl.eval.features import effective_rank, extract_features
from fastssl.eval.finetune import class_balanced_subset
from fastssl.eval.knn import knn_accuracy, knn_scores
from fastssl.eval.linear import linear_probe
from fastssl.eval.plots import pca_2d, save_line_plot, save_scatter_plot

__all__ = [
    "class_balanced_subset",
    "effective_rank",
    "extract_features",
    "knn_accuracy",
    "knn_scores",
    "linear_probe",
    "pca_2d",
    "save_line_plot",
    "save_scatter_plot",
]
