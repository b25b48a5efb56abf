"""Training configuration: one dataclass, three presets, and the CLI parser of ``train_vis.py``.

Precedence: explicit flags > ``--config`` file (YAML/JSON) > ``--preset`` > dataclass defaults.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from pipeline.config import add_dataclass_args, from_args, load_config_file
from pipeline.distribute import BATCH_MODES, CLUSTERS, STRATEGIES
from pipeline.model import BACKBONES, ModelConfig
from pipeline.precision import PRECISIONS

LR_SCHEDULES = ("plateau", "cosine")


def _f(default, text, **meta):
    return field(default=default, metadata={"help": text, **meta})


@dataclass
class TrainConfig:
    """Settings of ``train_vis.py``. Defaults are the ``paper`` preset (seed 001)."""

    data_dir: str = _f(".", "Folder holding X_data.npy and Y_data.npz (from preprocess_vis.py).")
    log_dir: str = _f("logs", "Root of the per-run log folders.")
    run_name: str = _f("", "Run folder name under LOG_DIR (default: a timestamp). Rerun with the same name to resume.")
    model_out: str = _f("visible_keypoints_model.keras", "Where the final model (.keras + .json sidecar) is written.")
    # architecture
    backbone: str = _f("resnet50", "Encoder backbone.", choices=BACKBONES)
    backbone_width: int = _f(64, "Base width of the resnet18ish backbone.")
    decoder_widths: tuple[int, ...] = _f((1024, 512, 256, 128, 64), "Bottleneck width, then one width per decoder stage: "
                                         "4 widths give heatmaps at half the input size, 5 at the full size.")
    weights: str = _f("auto", "Backbone init: auto (ImageNet if available, else scratch), imagenet, none, or an .h5 path.")
    beta: float = _f(15.0, "SoftArgMax temperature.")
    # optimisation
    batch_size: int = _f(128, "Batch size; global or per replica, see BATCH_SIZE_MODE.")
    batch_size_mode: str = _f("global", "BATCH_SIZE is the global batch of one step over all replicas (global), or "
                              "each replica's (per_replica: global = BATCH_SIZE * replicas). The learning rate "
                              "is never rescaled.", choices=BATCH_MODES)
    epochs: int = _f(20, "Epochs of phase 1 (frozen pretrained backbone, or everything when not pretrained).")
    learning_rate: float = _f(5e-4, "Adam learning rate of phase 1.")
    fine_tune: bool = _f(False, "Run phase 2: unfreeze the backbone and continue at FINE_TUNE_LR.")
    fine_tune_epochs: int = _f(10, "Epochs of phase 2 (counted after EPOCHS).")
    fine_tune_lr: float = _f(2e-6, "Adam learning rate of phase 2.")
    time_budget: float = _f(0.0, "Minutes of phase-1 training (0: no limit). Training stops once they have passed, "
                            "mid-epoch if need be (that epoch is still validated and logged), and --lr-schedule "
                            "cosine decays over the time, or over EPOCHS should they run out first; set EPOCHS "
                            "high to let the time decide. Counts the time of an interrupted run that is resumed. "
                            "Single-process runs only.")
    low_res_factor: int = _f(1, "Pool factor of a first, low-resolution stage of phase 1 (1: none; 2: half the input "
                             "side; 0: auto, i.e. 2 under --time-budget when the pooled side is a multiple of 32, "
                             "else none: with a fixed epoch count the stage saves time but ends less accurate, "
                             "within a fixed time it ends more accurate). Images are average-pooled by it in the input pipeline and targets drawn on "
                             "the matching heatmap grid at the same sigma in heatmap pixels; the fully "
                             "convolutional network then continues at full size with the same weights, optimizer "
                             "state and schedule. The pooled side must be a multiple of 32.")
    low_res_share: float = _f(0.5, "Share of phase 1 (of its time budget, and of its epochs) at low resolution.")
    steps_per_epoch: int = _f(0, "Limit training steps per epoch (0: one pass over the training set).")
    val_split: float = _f(0.15, "Fraction of samples held out for validation.")
    seed: int = _f(1, "Seed of the split, shuffling and initialisation.")
    lambda_coords: float = _f(5.0, "Weight of the masked L1 coordinate loss.")
    focal_alpha: float = _f(0.25, "Focal loss alpha.")
    focal_gamma: float = _f(2.0, "Focal loss gamma.")
    lr_schedule: str = _f("plateau", "plateau: ReduceLROnPlateau on the monitored loss (seed 001); cosine: linear "
                          "warm-up for WARMUP_EPOCHS, then cosine decay to zero over each phase.",
                          choices=LR_SCHEDULES)
    warmup_epochs: float = _f(1.0, "Warm-up length of --lr-schedule cosine (epochs, fractions allowed).")
    lr_factor: float = _f(0.8, "ReduceLROnPlateau factor.")
    lr_patience: int = _f(10, "ReduceLROnPlateau patience (epochs).")
    early_stopping: int = _f(0, "EarlyStopping patience on val_loss (0: off).")
    # data
    heatmap_sigma: float = _f(0.0, "Gaussian sigma (heatmap pixels) of the targets rendered during training; 0: the "
                              "preprocessing --sigma, scaled to the model's heatmap side. Needs --heatmap-source "
                              "render.")
    heatmap_sigma_end: float = _f(0.0, "Sigma (heatmap pixels) the training targets move to by the end of phase 1, "
                                  "linearly over its epochs or its time budget, whichever runs out first (0: "
                                  "constant sigma). Validation targets use this final sigma throughout, so "
                                  "val_loss stays comparable between epochs; phase 2 trains at it. Needs "
                                  "--heatmap-source render.")
    heatmap_source: str = _f("render", "Heatmap targets: rendered on the fly from coords, or stored in Y_data.npz.",
                             choices=("render", "stored"))
    augment: bool = _f(True, "Photometric augmentation of training batches.")
    blur_prob: float = _f(0.3, "Probability of a random Gaussian blur.")
    darken_prob: float = _f(0.5, "Probability of a random brightness reduction.")
    darken_min: float = _f(0.5, "Smallest brightness factor.")
    contrast_prob: float = _f(0.0, "Probability of a random contrast change.")
    noise_prob: float = _f(0.0, "Probability of additive Gaussian noise.")
    affine_prob: float = _f(0.0, "Probability of a random in-plane rotation/scale/shift of a training image "
                            "and its keypoints (keypoints moved out of the frame become invisible).")
    rotate_max_deg: float = _f(180.0, "Largest rotation of the geometric augmentation (degrees).")
    scale_range: float = _f(0.2, "Zoom of the geometric augmentation: factor in [1/(1+R), 1+R].")
    shift_max: float = _f(0.1, "Largest shift of the geometric augmentation, as a fraction of the image side.")
    turn_prob: float = _f(0.0, "Probability of turning a training image and its keypoints by 1, 2 or 3 exact "
                          "quarter turns (no resampling; after --affine-prob's warp).")
    # runtime
    precision: str = _f("auto", "Numeric precision policy.", choices=PRECISIONS)
    jit: bool = _f(False, "XLA jit_compile (slower on CPU: XLA bypasses oneDNN).")
    threads: int = _f(0, "TF intra-op threads (0: TensorFlow default).")
    strategy: str = _f("auto", "tf.distribute strategy: auto (mirrored if >1 GPU, else none), one, mirrored, or "
                       "multiworker (cluster from TF_CONFIG or SLURM; see docs/distributed.md).", choices=STRATEGIES)
    cluster: str = _f("tf_config", "Cluster resolver of --strategy multiworker: tf_config (TF_CONFIG variable) or "
                      "slurm (SlurmClusterResolver).", choices=CLUSTERS)
    sync_batchnorm: bool = _f(True, "With more than one replica, BatchNorm uses global-batch statistics "
                              "(one all-reduce per layer and step), so results match one device.")
    image_every: int = _f(5, "Write a TensorBoard grid of predicted heatmaps every N epochs (0: never).")
    verbose: int = _f(2, "Keras fit verbosity (0 silent, 1 progress bar, 2 one line per epoch).")

    def __post_init__(self):
        self.decoder_widths = tuple(int(w) for w in self.decoder_widths)
        for name in ("batch_size", "epochs"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive. Received: {name}={getattr(self, name)}")
        if self.time_budget < 0:
            raise ValueError(f"time_budget must be >= 0 minutes (0: no limit). Received: {self.time_budget}")
        if self.heatmap_sigma < 0:
            raise ValueError(f"heatmap_sigma must be >= 0 (0: the preprocessing sigma). Received: {self.heatmap_sigma}")
        if self.heatmap_sigma_end < 0:
            raise ValueError(f"heatmap_sigma_end must be >= 0 (0: constant sigma). Received: {self.heatmap_sigma_end}")
        if self.low_res_factor < 0:
            raise ValueError(f"low_res_factor must be >= 0 (0: auto, 1: off). Received: {self.low_res_factor}")
        if not 0.0 < self.low_res_share < 1.0:
            raise ValueError(f"low_res_share must be in (0, 1). Received: {self.low_res_share}")
        if not 0.0 <= self.val_split < 1.0:
            raise ValueError(f"val_split must be in [0, 1). Received: val_split={self.val_split}")
        for name, allowed in (("lr_schedule", LR_SCHEDULES), ("strategy", STRATEGIES), ("cluster", CLUSTERS),
                              ("batch_size_mode", BATCH_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}. Received: {name}={getattr(self, name)!r}")

    def model_config(self, input_size: int, num_keypoints: int) -> ModelConfig:
        return ModelConfig(input_size=input_size, num_keypoints=num_keypoints, backbone=self.backbone,
                           backbone_width=self.backbone_width, decoder_widths=self.decoder_widths, beta=self.beta)

    def resolve_low_res_factor(self, img_size: int) -> tuple[int, str]:
        """(pool factor, why) of the low-resolution stage for ``img_size`` px inputs; resolves 0 (auto)."""
        if self.low_res_factor != 0:
            return self.low_res_factor, f"--low-res-factor {self.low_res_factor}"
        if self.time_budget <= 0:
            return 1, "auto: off without --time-budget (for a fixed epoch count it trades accuracy for time)"
        if img_size % 2 or (img_size // 2) % 32:
            return 1, f"auto: off, {img_size} px pooled 2x2 is not a multiple of 32"
        return 2, "auto: 2 under --time-budget"

    def augment_config(self):
        """The augmentation settings as a ``pipeline.augment.AugmentConfig`` (imported here: it needs
        TensorFlow, and the presets and config are read without it, e.g. on the JAX backend)."""
        from pipeline.augment import AugmentConfig

        return AugmentConfig(blur_prob=self.blur_prob, darken_prob=self.darken_prob, darken_min=self.darken_min,
                             contrast_prob=self.contrast_prob, noise_prob=self.noise_prob,
                             affine_prob=self.affine_prob, rotate_max_deg=self.rotate_max_deg,
                             scale_range=self.scale_range, shift_max=self.shift_max, turn_prob=self.turn_prob)


# ``paper`` = seed 001 exactly (ResNet-50 U-Net, batch 128, ReduceLROnPlateau).
# ``cpu`` = chosen by measurement on 2 CPU cores: a ResNet-18-like encoder at width 24 with a slim decoder,
# trained from scratch (no ImageNet weights exist, or can be fetched offline, for it) at ~100-120 images/s
# in float32 at batch 16 (width 16: ~170-240, width 32: ~80; bf16 is slower at these widths, with AMX
# too). Cosine decay and geometric augmentation: on 3,400 built-in renders over 35 epochs this reached a
# held-out median error of 1.0 px; the earlier width-16 preset (plateau schedule, no geometric
# augmentation, 1,275 renders of a near-symmetric spacecraft) had reached 8.6 px. Heatmap loss: focal
# alpha 0.5, gamma 0, i.e. plain cross-entropy on the soft Gaussian targets. The (1 - p)^gamma factor
# silences the near-peak pixels once they are roughly right, and their relative values are what
# places the peak to a fraction of a pixel: on 3,400 renders over 12 epochs val PCK@2px was 58.9 %
# (4.0 px mean) against 50.9 % (4.8 px) with the seed-001 alpha 0.25, gamma 2. Over 45 epochs on
# 4,000 renders (the earlier accuracy recipe) the gap closes (held-out PCK@2px 78.3 % against
# 77.2 %): it learns faster, it does not end far better. Dropping the coords L1 term (50.0 %) or the
# geometric augmentation (51.6 %) changed little over the 12 epochs. A peak learning rate of 1e-3
# ended slightly worse than 2e-3 over the 45 epochs (held-out PCK@2px 76.7 % against 78.3 %; 82.4 %
# against 84.2 % with TTA).
# Targets at sigma 1.5 heatmap px instead of the preprocessing's 2.0: after 12 epochs held-out PCK@2px
# 65.5 % against 60.0 % (median 1.32 against 1.59 px); sigma 1.0 reached 68.5 % but put more keypoints
# on the wrong vertex (19.8 % beyond 5 px against 15.7 %). Wider layers did not help at 12 epochs
# (backbone width 32 and decoder 128/64/64/32/16: val PCK@2px 59.5 % against 58.9 %), nor did
# heatmaps at the full input size over the 4 epochs run (training PCK@2px 36.7 % against 38.2 %), at
# 1.8x the epoch time.
# Batch 16 over 32: the model alone trains 10 % faster at 32 (106 vs 97 images/s), but in the same
# 10.3 min on 4,000 renders (14.2 epochs against 12) the held-out mean was 3.43 px against 3.10 px
# with --tta rot4 (PCK@2px 70.4 % against 73.5 %): half the steps cost more than the speed gains.
# Low-resolution start: the first half of the run (time or epochs) on 2x2-pooled 64-px images at 2.6x
# the images/s (243 vs 90 on a 2-core AMD EPYC). In 10.3-min pilots on 4,000 renders (two seeds each)
# the held-out mean with --tta rot4 was 2.46 / 2.44 px against 2.77 / 3.35 px without it (PCK@2px
# 78.8 / 77.5 % against 76.3 / 73.7 %); a 70 % share gave 2.73 px. With a fixed epoch count it only
# saves time: 20 epochs (half at 64 px) on 2,000 renders took 5.4 instead of 7.7 min but ended at
# 4.73 px against 3.92 px. So the preset sets "auto": on under --time-budget, off otherwise.
# ``tiny`` = seconds-long smoke runs for tests.
PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": {
        "backbone": "resnet18ish", "backbone_width": 24, "decoder_widths": (96, 48, 48, 24, 24),
        "weights": "none", "batch_size": 16, "epochs": 20, "learning_rate": 2e-3, "lr_schedule": "cosine",
        "warmup_epochs": 1.0, "affine_prob": 0.5, "focal_alpha": 0.5, "focal_gamma": 0.0, "heatmap_sigma": 1.5,
        "low_res_factor": 0, "low_res_share": 0.5, "image_every": 5,
    },
    "tiny": {
        "backbone": "resnet18ish", "backbone_width": 8, "decoder_widths": (32, 16, 16, 8, 8), "weights": "none",
        "batch_size": 8, "epochs": 3, "learning_rate": 2e-3, "image_every": 1, "verbose": 0,
    },
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_vis.py",
        description="Train the visible-keypoint model on X_data.npy / Y_data.npz. "
                    "Precedence: flags > --config file > --preset.",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="Base settings: paper (seed 001), cpu (2-core CPU), tiny (tests).")
    p.add_argument("--config", default="", help="YAML or JSON file of TrainConfig fields.")
    add_dataclass_args(p, TrainConfig)
    return p


def parse_train_config(argv=None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    base = dict(PRESETS[args.preset])
    if args.config:
        base.update(load_config_file(args.config))
    try:
        return from_args(TrainConfig, args, base)
    except ValueError as e:
        src = f" (config file {args.config})" if args.config else ""
        raise ValueError(f"{e}{src}") from e
