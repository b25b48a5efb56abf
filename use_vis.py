"""Predict visible keypoints with a trained model, draw them, and evaluate where annotations exist.

    python use_vis.py                                  # the training data's held-out split
    python use_vis.py --input data/ --split all        # every image of a 4SP dataset
    python use_vis.py --input photos/ one.png --decoder softargmax --visualize all

Outputs go to predictions/ (see pipeline/predict.py for the list).
"""

from __future__ import annotations

import argparse
import sys

from pipeline.config import add_dataclass_args, from_args
from pipeline.infer import InferError
from pipeline.predict import InferConfig, run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataclass_args(parser, InferConfig)
    args = parser.parse_args(argv)
    try:
        cfg = from_args(InferConfig, args)
        run(cfg)
    except (InferError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
