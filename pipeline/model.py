"""The visible-keypoint network: an encoder backbone, a U-Net decoder, a heatmap head and SoftArgMax.

Legend: B batch, S input side (px), H heatmap side (S/2, or S with a fifth decoder stage), K keypoints.

    image (B, S, S, 3) RGB 0..255
      -> InputNormalization (caffe for ResNet-50: RGB->BGR, minus ImageNet means)
      -> backbone "backbone" (a nested keras.Model): taps at S/2, S/4, S/8, S/16 and bottleneck S/32
      -> bottleneck 1x1 conv to decoder_widths[0]
      -> 4 x [upsample x2, 1x1 projection of the skip, concat, 2 x (3x3 conv + BN + ReLU)]
         with widths decoder_widths[1:5], ending at S/2
      -> (with a sixth width) a fifth such stage at S, its skip the normalised image
      -> "heatmaps": 1x1 conv to K + sigmoid, (B, H, H, K) float32
      -> "coords":   SoftArgMax(beta), (B, 2K) float32 normalised x0, y0, x1, y1, ...

Importing this module registers the custom layers, losses and optimizer, so a saved ``.keras`` file
(compiled or not) loads with ``keras.saving.load_model(path)`` in safe mode.
"""

from __future__ import annotations

import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import keras

from pipeline import losses as _losses  # noqa: F401  (registers the losses and metric)
from pipeline import optimizers as _optimizers  # noqa: F401  (registers FusedAdam)
from pipeline.layers import FusedBatchNormalization, InputNormalization, MatmulConv2D, SoftArgMax

BACKBONES = ("resnet50", "resnet18ish", "mobilenetv2")
_TAPS = {
    "resnet50": ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"],
    "mobilenetv2": ["block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu",
                    "block_13_expand_relu", "out_relu"],
}
_NORMALISATION = {"resnet50": "caffe", "resnet18ish": "caffe", "mobilenetv2": "tf"}
_WEIGHT_HOST = ("storage.googleapis.com", 443)


HEATMAP_PRIOR_BIAS = -4.59512  # logit of 0.01


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelConfig:
    """Architecture of the keypoint network (saved in the model sidecar; rebuilds it exactly)."""

    input_size: int = _help("Side of the square input image (px).", default=128)
    num_keypoints: int = _help("Number of keypoints K.", default=11)
    backbone: str = field(default="resnet50", metadata={"help": "Encoder backbone.", "choices": BACKBONES})
    backbone_width: int = _help("Base width of the resnet18ish backbone (64 = ResNet-18 widths).", default=64)
    decoder_widths: tuple[int, ...] = _help("Bottleneck projection width, then one width per decoder stage: "
                                            "4 stages end at half the input size, 5 at the full size.",
                                            default=(1024, 512, 256, 128, 64))
    beta: float = _help("SoftArgMax temperature.", default=15.0)

    def __post_init__(self):
        self.decoder_widths = tuple(int(w) for w in self.decoder_widths)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}. Received: backbone={self.backbone!r}")
        if len(self.decoder_widths) not in (5, 6) or min(self.decoder_widths) <= 0:
            raise ValueError("decoder_widths needs 5 positive widths (heatmaps at half the input size) or 6 "
                             f"(at the full size). Received: {self.decoder_widths}")
        if self.input_size % 32 or self.input_size < 32:
            raise ValueError(f"input_size must be a multiple of 32 (>= 32). Received: input_size={self.input_size}")
        if self.num_keypoints <= 0:
            raise ValueError(f"num_keypoints must be positive. Received: {self.num_keypoints}")

    @property
    def heatmap_size(self) -> int:
        return self.input_size // 2 if len(self.decoder_widths) == 5 else self.input_size


# -- backbone weights ---------------------------------------------------------------------------
def _cached_weights_file(cfg: ModelConfig) -> Path | None:
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    if cfg.backbone == "resnet50":
        name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    elif cfg.backbone == "mobilenetv2":
        rows = cfg.input_size if cfg.input_size in (96, 128, 160, 192, 224) else 224
        name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    else:
        return None
    for base in (cache, Path.home() / ".keras" / "models"):
        if (base / name).is_file():
            return base / name
    return None


def _online(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(_WEIGHT_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(cfg: ModelConfig, weights: str) -> tuple[str | None, str]:
    """Turn ``--weights auto|imagenet|none|PATH`` into a keras.applications ``weights`` argument.

    Returns:
        (weights argument or None, a one-line note for the log). ``imagenet`` fails at once (without
        waiting on a download) when the file is neither cached nor reachable; ``auto`` then falls back
        to random initialisation with a warning.
    """
    if weights in ("none", "", None):
        return None, "backbone initialised at random (--weights none)"
    if weights not in ("auto", "imagenet"):
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"--weights {weights}: file not found. Pass an existing .h5, 'imagenet', 'auto' or 'none'.")
        return str(p), f"backbone weights from {p}"
    if cfg.backbone == "resnet18ish":
        if weights == "imagenet":
            raise ValueError("No ImageNet weights exist for backbone 'resnet18ish'. Use --weights none or auto.")
        return None, "backbone resnet18ish has no pretrained weights: initialised at random"
    cached = _cached_weights_file(cfg)
    if cached is not None:
        return str(cached), f"ImageNet backbone weights from the Keras cache {cached}"
    if _online():
        return "imagenet", "ImageNet backbone weights (downloaded by Keras)"
    msg = (f"ImageNet weights for {cfg.backbone} are not in the Keras cache ({Path.home() / '.keras/models'}) "
           "and cannot be downloaded (offline).")
    if weights == "imagenet":
        hint = ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 from "
                "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                if cfg.backbone == "resnet50" else "the notop .h5 from keras-applications")
        raise RuntimeError(f"{msg} Download {hint} on a machine with internet, copy it here and pass "
                           "--weights /path/to/file.h5 (or put it in ~/.keras/models/), or train from scratch "
                           "with --weights none.")
    warnings.warn(f"{msg} --weights auto: training the backbone from scratch.", stacklevel=2)
    return None, f"{msg} Backbone initialised at random (--weights auto fallback)"


# -- backbones ----------------------------------------------------------------------------------
def _conv_bn_relu(x, width, kernel, strides=1, name=""):
    x = MatmulConv2D(width, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = FusedBatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _basic_block(x, width, strides, name):
    shortcut = x
    if strides != 1 or x.shape[-1] != width:
        if strides != 1:
            # subsample, then a 1x1 conv: the same maths as a strided 1x1 conv, which oneDNN (TF 2.21,
            # AVX-512 CPUs) crashes on with narrow inputs (8 channels)
            shortcut = keras.layers.MaxPooling2D(1, strides, name=f"{name}_subsample")(x)
        shortcut = MatmulConv2D(width, 1, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = FusedBatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = _conv_bn_relu(x, width, 3, strides, name=f"{name}_a")
    y = MatmulConv2D(width, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = FusedBatchNormalization(name=f"{name}_b_bn")(y)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def _resnet18ish(size: int, width: int) -> keras.Model:
    """ResNet-18-like encoder (2 basic blocks per stage) without the stem max-pool, 5 outputs S/2..S/32."""
    inp = keras.Input((size, size, 3), name="backbone_input")
    x = _conv_bn_relu(inp, width, 3, 2, name="stem")  # S/2
    outs = [x]
    for i, mult in enumerate((1, 2, 4, 8)):
        x = _basic_block(x, width * mult, 2, name=f"stage{i + 1}_block1")
        x = _basic_block(x, width * mult, 1, name=f"stage{i + 1}_block2")
        outs.append(x)
    return keras.Model(inp, outs, name="backbone")


def build_backbone(cfg: ModelConfig, weights: str | None) -> keras.Model:
    """Backbone as a nested model with outputs [S/2, S/4, S/8, S/16, S/32] feature maps."""
    shape = (cfg.input_size, cfg.input_size, 3)
    if cfg.backbone == "resnet18ish":
        return _resnet18ish(cfg.input_size, cfg.backbone_width)
    if cfg.backbone == "resnet50":
        base = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=shape)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-224 input size warning
            base = keras.applications.MobileNetV2(include_top=False, weights=weights, input_shape=shape)
    base = swap_layers(base, FAST_LAYERS)
    outs = [base.get_layer(n).output for n in _TAPS[cfg.backbone]]
    return keras.Model(base.input, outs, name="backbone")


# Stock Keras layer classes -> the drop-in replacements that keep their maths and variables.
FAST_LAYERS = {keras.layers.BatchNormalization: FusedBatchNormalization, keras.layers.Conv2D: MatmulConv2D}


def swap_layers(model: keras.Model, mapping: dict) -> keras.Model:
    """A copy of a functional model (nested models included) in which every layer whose exact class is
    a key of ``mapping`` is rebuilt from its config as the value class.

    Same layer names, configs and weights (ImageNet ones included). ``swap_layers(m, FAST_LAYERS)``
    gives the fast layers; the inverted mapping gives back the stock ones.
    """

    def clone(layer):
        if isinstance(layer, keras.Model):
            return swap_layers(layer, mapping)
        return mapping.get(type(layer), type(layer)).from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


# -- the full model -----------------------------------------------------------------------------
def build_model(cfg: ModelConfig, weights: str | None = None) -> keras.Model:
    """Build the keypoint model.

    Args:
        cfg: the architecture.
        weights: a keras.applications ``weights`` argument for the backbone (None, "imagenet" or an
            .h5 path); see :func:`resolve_weights` for the ``--weights`` CLI values.
    Returns:
        keras.Model: input (B, S, S, 3) float RGB 0..255; outputs dict ``heatmaps`` (B, S/2, S/2, K)
        float32 and ``coords`` (B, 2K) float32 normalised, interleaved x, y.
    """
    inp = keras.Input((cfg.input_size, cfg.input_size, 3), name="image")
    normalised = InputNormalization(_NORMALISATION[cfg.backbone], name="normalise")(inp)
    backbone = build_backbone(cfg, weights)
    *skips, x = backbone(normalised)
    w0, *stage_widths = cfg.decoder_widths
    if len(stage_widths) == 5:  # a fifth stage at the input size, its skip the normalised image itself
        skips = [normalised, *skips]
    x = _conv_bn_relu(x, w0, 1, name="bottleneck")
    for i, (skip, width) in enumerate(zip(reversed(skips), stage_widths)):
        name = f"decoder{i + 1}"
        x = keras.layers.UpSampling2D(2, name=f"{name}_up")(x)
        s = MatmulConv2D(width, 1, padding="same", name=f"{name}_skip_proj")(skip)
        x = keras.layers.Concatenate(name=f"{name}_concat")([x, s])
        x = _conv_bn_relu(x, width, 3, name=f"{name}_c1")
        x = _conv_bn_relu(x, width, 3, name=f"{name}_c2")
    # Prior-probability bias (as in focal-loss detectors): start every pixel at p = 0.01 instead of
    # 0.5, so early training is not spent pushing ~4000 background pixels per map down.
    heatmaps = MatmulConv2D(cfg.num_keypoints, 1, activation="sigmoid", dtype="float32", name="heatmaps",
                                   bias_initializer=keras.initializers.Constant(HEATMAP_PRIOR_BIAS))(x)
    if heatmaps.shape[1] != cfg.heatmap_size:
        raise ValueError(f"Decoder ends at {heatmaps.shape[1]} px, expected heatmap side {cfg.heatmap_size}.")
    coords = SoftArgMax(cfg.beta, name="coords")(heatmaps)
    return keras.Model(inp, {"heatmaps": heatmaps, "coords": coords}, name=f"keypoints_{cfg.backbone}")


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze (BatchNorm then runs in inference mode) or unfreeze the nested backbone."""
    model.get_layer("backbone").trainable = trainable


def check_heatmap_size(cfg: ModelConfig, heat_size: int, source: str = "the preprocessing config") -> None:
    """Error clearly when the data's heatmaps do not have the model's heatmap side."""
    if int(heat_size) != cfg.heatmap_size:
        raise ValueError(
            f"The {cfg.backbone} model on {cfg.input_size} px inputs predicts {cfg.heatmap_size} px heatmaps, "
            f"but {source} has heat_size={heat_size}. Re-run preprocess_vis.py with "
            f"--heat-size {cfg.heatmap_size} (or --img-size {cfg.input_size // cfg.heatmap_size * int(heat_size)})."
        )
