"""Train the visible-keypoint model on preprocessed arrays (stage 2 of the 4SP pipeline).

Examples:
    python train_vis.py --preset cpu --run-name cpu1          # ~10 min on 2 CPU cores
    python train_vis.py --preset paper --fine-tune            # seed-001 settings (GPU)
    python train_vis.py --preset tiny --data-dir /tmp/fake    # smoke test
Rerun the same command with the same --run-name to resume an interrupted run.
"""

from __future__ import annotations


def main(argv=None) -> dict:
    from pipeline.training_config import parse_train_config

    cfg = parse_train_config(argv)
    from pipeline.train import train

    return train(cfg)


if __name__ == "__main__":
    main()
