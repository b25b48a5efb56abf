"""Visible-keypoint detection pipeline (stage 2 of 4SP): data, model, training, inference."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, CPU feature notes) hides the pipeline's own
# output; users can still raise it by setting the variable themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
