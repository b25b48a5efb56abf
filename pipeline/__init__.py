"""Visible-keypoint detection pipeline (stage 2 of 4SP): data, model, training, inference."""

__version__ = "0.1.0"
