"""End-to-end training on fake data: outputs, loss decrease, resume after interruption, clear errors."""

import csv
import json

import keras
import numpy as np
import pytest

import train_vis
from pipeline import model as model_mod
from pipeline.callbacks import SimulatedInterruption, StopAfterEpoch
from pipeline.input_data import make_dataset, split_indices
from pipeline.arrays import load_dataset
from pipeline.model_io import load_model
from pipeline.model import ModelConfig
from pipeline.train import heatmap_targets, train
from pipeline.training_config import PRESETS, TrainConfig, parse_train_config
from tests.fakedata import make_fake_dataset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("fake"), n=48, k=3, img_size=32)


def _args(data_dir, tmp_path, run, *extra):
    return ["--preset", "tiny", "--data-dir", str(data_dir), "--log-dir", str(tmp_path / "logs"), "--run-name", run,
            "--model-out", str(tmp_path / "model.keras"), "--image-every", "1", *extra]


def _csv_epochs(path):
    with open(path) as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_tiny_training_writes_everything_and_learns(data_dir, tmp_path):
    summary = train_vis.main(_args(data_dir, tmp_path, "r1", "--epochs", "4", "--learning-rate", "3e-3",
                                   "--heatmap-sigma", "1.0"))
    run = tmp_path / "logs" / "r1"
    for name in ("config.json", "split.json", "history.csv", "best_model.keras", "best_model.json", "summary.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((run / "tensorboard" / "images").glob("events.out.tfevents.*"))
    assert (tmp_path / "model.keras").is_file() and (tmp_path / "model.json").is_file()
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    assert "val_coords_px_error" in rows[0] and "learning_rate" in rows[0]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["backbone"] == "resnet18ish" and cfg["num_keypoints"] == 3
    assert cfg["targets"] == {"heat_size": 16, "sigma": 1.0} and cfg["preprocess"]["sigma"] == 1.5
    model, meta = load_model(tmp_path / "model.keras")
    split = json.loads((run / "split.json").read_text())
    assert meta["val_stems"] == split["val_stems"] and len(split["val_stems"]) == 7
    assert meta["preprocess"]["heat_size"] == 16
    from pipeline.arrays import load_dataset
    from pipeline.second_look import object_extent

    coords = load_dataset(data_dir).coords
    assert meta["objects"]["images"] == 48 and meta["objects"]["percentile"] == 95.0
    assert meta["objects"]["extent"] == pytest.approx(object_extent(coords)) and 0.0 < meta["objects"]["extent"] <= 1.0
    assert np.isfinite(summary["train_images_per_second"])

    # The same command again: the finished run and its model are left as they are.
    before = (tmp_path / "model.keras").read_bytes()
    with pytest.raises(ValueError, match="holds a finished run"):
        train_vis.main(_args(data_dir, tmp_path, "r1", "--epochs", "4"))
    assert (tmp_path / "model.keras").read_bytes() == before and _csv_epochs(run / "history.csv") == [0, 1, 2, 3]


@pytest.mark.slow
def test_interrupted_run_resumes(data_dir, tmp_path):
    cfg = parse_train_config(_args(data_dir, tmp_path, "resume", "--epochs", "3", "--image-every", "0"))
    with pytest.raises(SimulatedInterruption):
        train(cfg, extra_callbacks=[StopAfterEpoch(1)])
    run = tmp_path / "logs" / "resume"
    assert _csv_epochs(run / "history.csv") == [0, 1]
    assert (run / "backup" / "phase1").is_dir()
    train_vis.main(_args(data_dir, tmp_path, "resume", "--epochs", "3", "--image-every", "0"))
    assert _csv_epochs(run / "history.csv") == [0, 1, 2]
    assert not (run / "backup" / "phase1").exists()


def test_presets_and_config_file_precedence(tmp_path):
    assert parse_train_config([]).batch_size == 128  # paper = seed 001
    paper = parse_train_config(["--preset", "paper"])
    assert (paper.backbone, paper.decoder_widths, paper.epochs, paper.learning_rate) == (
        "resnet50", (1024, 512, 256, 128, 64), 20, 5e-4)
    assert (paper.fine_tune_lr, paper.val_split, paper.lambda_coords, paper.beta) == (2e-6, 0.15, 5.0, 15.0)
    assert (paper.focal_alpha, paper.focal_gamma, paper.lr_factor, paper.lr_patience) == (0.25, 2.0, 0.8, 10)
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 7\nbatch_size: 4\ndecoder_widths: [8, 8, 8, 8, 8]\n")
    cfg = parse_train_config(["--preset", "tiny", "--config", str(f), "--epochs", "9"])
    assert (cfg.epochs, cfg.batch_size, cfg.decoder_widths, cfg.backbone) == (9, 4, (8,) * 5, "resnet18ish")
    f.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="epochz"):
        parse_train_config(["--config", str(f)])
    assert set(PRESETS) == {"paper", "cpu", "tiny"}


def test_clear_errors(data_dir, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="preprocess_vis.py"):
        train_vis.main(_args(tmp_path / "empty", tmp_path, "e1"))
    with pytest.raises(ValueError, match="batch_size=64 is larger"):
        train_vis.main(_args(data_dir, tmp_path, "e2", "--batch-size", "64"))
    with pytest.raises(ValueError, match="needs --heatmap-source render"):
        train_vis.main(_args(data_dir, tmp_path, "e5", "--heatmap-sigma", "1.0", "--heatmap-source", "stored"))
    odd = make_fake_dataset(tmp_path / "odd", n=12, k=3, img_size=32, heat_size=8, with_heatmaps=False)
    with pytest.raises(ValueError, match="heat_size=8"):  # stored maps must match; rendered ones follow the model
        train_vis.main(_args(odd, tmp_path, "e3", "--heatmap-source", "stored"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / ".keras"))
    monkeypatch.setattr(model_mod, "_online", lambda timeout=3.0: False)
    with pytest.raises(RuntimeError, match="--weights none"):
        train_vis.main(_args(data_dir, tmp_path, "e4", "--backbone", "resnet50", "--weights", "imagenet"))


def test_heatmap_targets_follow_the_model_when_rendered():
    pre = {"img_size": 32, "heat_size": 8, "sigma": 1.5}
    mcfg = ModelConfig(input_size=32, num_keypoints=3, backbone="resnet18ish", decoder_widths=(8,) * 5)  # 16 px maps
    full = ModelConfig(input_size=32, num_keypoints=3, backbone="resnet18ish", decoder_widths=(8,) * 6)  # 32 px maps
    assert heatmap_targets(TrainConfig(), mcfg, pre) == (16, 3.0)  # the same width in input pixels
    assert heatmap_targets(TrainConfig(), full, pre) == (32, 6.0)
    assert heatmap_targets(TrainConfig(heatmap_sigma=1.0), full, pre) == (32, 1.0)
    stored = TrainConfig(heatmap_source="stored")
    assert heatmap_targets(stored, mcfg, {**pre, "heat_size": 16}) == (16, 1.5)
    with pytest.raises(ValueError, match="heat_size=8"):
        heatmap_targets(stored, mcfg, pre)
    with pytest.raises(ValueError, match="needs --heatmap-source render"):
        heatmap_targets(TrainConfig(heatmap_source="stored", heatmap_sigma=1.0), mcfg, {**pre, "heat_size": 16})


def test_input_pipeline_batches_and_targets(data_dir):
    ds = load_dataset(data_dir)
    tr, va = split_indices(len(ds), 0.15, 1)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(ds)
    np.testing.assert_array_equal(split_indices(len(ds), 0.15, 1)[1], va)
    data = make_dataset(ds, va, 4, False, sigma=1.5, heat_size=16)
    x, y = next(iter(data))
    assert x.shape == (4, 32, 32, 3) and y["heatmaps"].shape == (4, 16, 16, 3)
    np.testing.assert_allclose(y["coords"].numpy(), ds.coords[va[:4]])
    np.testing.assert_allclose(y["heatmaps"].numpy(), ds.heatmaps[va[:4]].astype(np.float32), atol=2e-3)
    stored = make_dataset(ds, va, 4, False, sigma=1.5, heat_size=16, stored_heatmaps=True)
    np.testing.assert_allclose(next(iter(stored))[1]["heatmaps"].numpy(), y["heatmaps"].numpy(), atol=2e-3)


def test_repeated_training_stream_reshuffles_whole_passes(data_dir):
    ds = load_dataset(data_dir)
    idx = np.arange(24)  # 3 batches of 8 per pass
    data = make_dataset(ds, idx, 8, True, sigma=1.5, heat_size=16, augment=None, seed=0, repeat=True)
    assert int(data.cardinality()) == -1  # tf.data.INFINITE_CARDINALITY: fit keeps one iterator
    it = iter(data)
    key = {tuple(np.round(ds.coords[i], 5)): i for i in idx}
    passes = [[key[tuple(np.round(c, 5))] for _ in range(3) for c in next(it)[1]["coords"].numpy()] for _ in range(3)]
    for order in passes:
        assert sorted(order) == list(range(24))  # every sample exactly once per pass, no batch across passes
    assert passes[0] != passes[1] != passes[2]  # reshuffled each pass


@pytest.mark.slow
def test_fine_tune_phase_continues_epoch_count(data_dir, tmp_path):
    train_vis.main(_args(data_dir, tmp_path, "ft", "--epochs", "1", "--fine-tune", "--fine-tune-epochs", "1",
                         "--image-every", "0"))
    run = tmp_path / "logs" / "ft"
    assert _csv_epochs(run / "history.csv") == [0, 1]
    assert (run / "phase1_done.weights.h5").is_file()


def test_cosine_schedule_and_geometric_augmentation_train(data_dir, tmp_path):
    train_vis.main(_args(data_dir, tmp_path, "cos", "--epochs", "3", "--lr-schedule", "cosine", "--warmup-epochs",
                         "0.5", "--learning-rate", "2e-3", "--affine-prob", "1", "--image-every", "0"))
    with open(tmp_path / "logs" / "cos" / "history.csv") as f:
        lrs = [float(r["learning_rate"]) for r in csv.DictReader(f)]
    # the rate of each epoch's last step (41 training samples: 5 steps of 8): cosine after a half-epoch warm-up
    expected = [2e-3 * 0.5 * (1 + np.cos(np.pi * (e + 4 / 5 - 0.5) / 2.5)) for e in range(3)]
    np.testing.assert_allclose(lrs, expected, rtol=0.05, atol=1e-7)


def test_geometric_augmentation_moves_targets_with_the_images(data_dir):
    from pipeline.augment import AugmentConfig

    ds = load_dataset(data_dir)
    aug = AugmentConfig(blur_prob=0, darken_prob=0, affine_prob=1.0, rotate_max_deg=30, shift_max=0.05)
    idx = np.arange(len(ds))
    data = make_dataset(ds, idx, 8, True, sigma=1.5, heat_size=16, augment=aug, seed=0)
    x, y = next(iter(data))
    coords = y["coords"].numpy().reshape(8, -1, 2)
    vis = coords[..., 0] >= 0
    assert vis.any() and ((coords[vis] >= 0) & (coords[vis] < 1)).all()
    peaks = y["heatmaps"].numpy().max(axis=(1, 2))
    assert np.allclose(peaks[~vis], 0.0) and np.allclose(peaks[vis], 1.0, atol=0.25)
    with pytest.raises(ValueError, match="heatmap-source render"):
        make_dataset(ds, idx, 8, True, sigma=1.5, heat_size=16, augment=aug, stored_heatmaps=True)


def test_quarter_turns_in_the_pipeline_keep_targets_on_the_turned_images(data_dir):
    """--turn-prob 1: every batch image is some quarter turn of its source, and its targets are that
    turn of the source's keypoints (the same visibility, peaks of height 1 where visible)."""
    from pipeline.augment import AugmentConfig
    from pipeline.geometry import Geometry

    ds = load_dataset(data_dir)
    aug = AugmentConfig(blur_prob=0, darken_prob=0, turn_prob=1.0)
    x, y = next(iter(make_dataset(ds, np.arange(8), 8, True, sigma=1.5, heat_size=16, augment=aug, seed=0)))
    coords = y["coords"].numpy().reshape(8, -1, 2)
    src = np.asarray(ds.x[:8], np.float32)
    src_xy = np.asarray(ds.coords[:8]).reshape(8, -1, 2)
    for img, xy in zip(x.numpy(), coords):
        i, t = next((i, t) for i in range(8) for t in (1, 2, 3)
                    if np.array_equal(img, np.rot90(src[i], t, axes=(0, 1))))
        want = np.where(src_xy[i] >= 0, Geometry.rot90(src_xy[i], t), -1.0)
        np.testing.assert_allclose(xy, want, atol=1e-6)
    with pytest.raises(ValueError, match="heatmap-source render"):
        make_dataset(ds, np.arange(8), 8, True, sigma=1.5, heat_size=16, augment=aug, stored_heatmaps=True)


class _FakeClock(keras.callbacks.Callback):
    """A clock that advances one second per training step (placed before the callbacks that read it)."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def __call__(self):
        return self.now

    def on_train_batch_end(self, batch, logs=None):
        self.now += 1.0


def test_time_budget_stops_mid_epoch_and_ends_the_cosine_decay():
    from pipeline.callbacks import CosineSchedule, TimeBudget

    clock = _FakeClock()
    budget = TimeBudget(5.5, clock=clock, log=lambda msg: None)
    schedule = CosineSchedule(1e-2, epochs=100, warmup_epochs=0.0, budget=budget)
    lrs = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_begin=lambda b, logs: lrs.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))))
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
    x, y = np.ones((16, 3), np.float32), np.ones((16, 1), np.float32)
    history = model.fit(x, y, batch_size=4, epochs=100, verbose=0, callbacks=[clock, budget, schedule, record])
    # steps 1-4 end at 1-4 s, epoch 2's second step at 6 s >= 5.5 s: stop there, after validating epoch 2
    assert budget.stopped_at == (1, 1) and len(history.history["loss"]) == 2 and len(lrs) == 6
    # each step's rate follows the spent fraction of the budget (0, 1/5.5, ...), not the 100 epochs
    expected = [1e-2 * 0.5 * (1 + np.cos(np.pi * t / 5.5)) for t in range(6)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-5)


def test_time_budget_run_saves_a_model_and_refuses_bad_values(data_dir, tmp_path):
    summary = train_vis.main(_args(data_dir, tmp_path, "budget", "--epochs", "5", "--time-budget", "1e-4",
                                   "--image-every", "0"))
    run = tmp_path / "logs" / "budget"
    assert _csv_epochs(run / "history.csv") == [0]  # 6 ms: spent by the first step
    assert (tmp_path / "model.keras").is_file() and summary["final_logs"]["loss"] > 0
    with pytest.raises(ValueError, match="time_budget must be >= 0"):
        parse_train_config(_args(data_dir, tmp_path, "bad", "--time-budget", "-1"))


def test_time_budget_counts_the_time_of_the_interrupted_run(tmp_path):
    from pipeline.callbacks import TimeBudget

    history = tmp_path / "history.csv"
    history.write_text("epoch,elapsed_s,loss\n0,40.0,1.0\n1,100.0,0.9\n")
    clock = _FakeClock()
    budget = TimeBudget(120.0, history, clock=clock)
    budget.on_train_begin()
    assert budget.fraction() == pytest.approx(100 / 120)
    clock.now = 10.0
    assert budget.elapsed() == pytest.approx(110.0) and budget.fraction() == pytest.approx(110 / 120)
    clock.now = 30.0
    assert budget.fraction() == 1.0
    with pytest.raises(ValueError, match="positive"):
        TimeBudget(0.0)


def test_time_budget_since_counts_the_hand_over_between_stages(tmp_path):
    from pipeline.callbacks import ElapsedTime, TimeBudget

    history = tmp_path / "history.csv"
    history.write_text("epoch,elapsed_s,loss\n0,50.0,1.0\n")  # the first stage ended at 50 s
    clock = _FakeClock()
    clock.now = 7.0  # 7 s of hand-over (weights, save, compile) before the next stage's fit begins
    budget = TimeBudget(100.0, history, clock=clock, since=0.0)
    budget.on_train_begin()
    assert budget.elapsed() == pytest.approx(57.0)
    plain = TimeBudget(100.0, history, clock=clock)
    plain.on_train_begin()
    assert plain.elapsed() == pytest.approx(50.0)  # without ``since`` the hand-over is not counted
    import time

    timer = ElapsedTime(history, since=time.perf_counter() - 7.0)
    timer.on_train_begin()
    logs = {}
    timer.on_epoch_end(1, logs)
    assert 57.0 <= logs["elapsed_s"] < 60.0


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    return make_fake_dataset(tmp_path_factory.mktemp("fake64"), n=40, k=3, img_size=64)


def test_pooled_input_pipeline_keeps_coordinates_exact(data64):
    ds = load_dataset(data64)
    idx = np.arange(4)
    full_x, full_y = next(iter(make_dataset(ds, idx, 4, False, sigma=1.0, heat_size=32)))
    low_x, low_y = next(iter(make_dataset(ds, idx, 4, False, sigma=1.0, heat_size=16, downsample=2)))
    assert low_x.shape == (4, 32, 32, 3) and low_y["heatmaps"].shape == (4, 16, 16, 3)
    blocks = full_x.numpy().reshape(4, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(low_x.numpy(), blocks, rtol=1e-6)
    np.testing.assert_array_equal(low_y["coords"].numpy(), full_y["coords"].numpy())
    # the same normalised keypoint: its peak cell on the 16-px grid is its 32-px cell halved
    vis = ds.visible[:4]
    hm_full, hm_low = full_y["heatmaps"].numpy(), low_y["heatmaps"].numpy()
    for i, j in zip(*np.nonzero(vis)):
        r32, c32 = np.unravel_index(hm_full[i, :, :, j].argmax(), (32, 32))
        r16, c16 = np.unravel_index(hm_low[i, :, :, j].argmax(), (16, 16))
        assert abs(r16 - r32 / 2) <= 1 and abs(c16 - c32 / 2) <= 1
    with pytest.raises(ValueError, match="divisor"):
        make_dataset(ds, idx, 4, False, sigma=1.0, heat_size=16, downsample=3)
    with pytest.raises(ValueError, match="heatmap-source render"):
        make_dataset(ds, idx, 4, False, sigma=1.0, heat_size=16, downsample=2, stored_heatmaps=True)


def test_low_res_stage_hands_over_to_full_size(data64, tmp_path):
    args = _args(data64, tmp_path, "low", "--epochs", "4", "--low-res-factor", "2", "--low-res-share", "0.5",
                 "--lr-schedule", "cosine", "--warmup-epochs", "0", "--learning-rate", "3e-3", "--heatmap-sigma", "1.0")
    summary = train_vis.main(args)
    run = tmp_path / "logs" / "low"
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # one epoch count across both stages
    assert json.loads((run / "low_res_done.json").read_text())["epochs"] == 2
    lrs = [float(r["learning_rate"]) for r in rows]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # one cosine decay, no restart at the hand-over
    elapsed = [float(r["elapsed_s"]) for r in rows]
    assert all(a < b for a, b in zip(elapsed, elapsed[1:]))
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    model, meta = load_model(tmp_path / "model.keras")
    assert model.input_shape == (None, 64, 64, 3) and meta["train"]["low_res_factor"] == 2
    assert summary["best"]["epoch"] in (3, 4)  # best model saved by the full-size stage only
    # rerunning the finished run trains nothing more
    with pytest.raises(ValueError, match="holds a finished run"):
        train_vis.main(args)
    assert _csv_epochs(run / "history.csv") == [0, 1, 2, 3]


def test_low_res_run_resumes_in_the_full_size_stage(data64, tmp_path):
    args = _args(data64, tmp_path, "lowres", "--epochs", "3", "--low-res-factor", "2", "--low-res-share", "0.34",
                 "--image-every", "0")
    with pytest.raises(SimulatedInterruption):
        train(parse_train_config(args), extra_callbacks=[StopAfterEpoch(1)])
    run = tmp_path / "logs" / "lowres"
    assert _csv_epochs(run / "history.csv") == [0, 1]
    assert (run / "low_res_done.json").is_file() and (run / "backup" / "phase1").is_dir()
    train_vis.main(args)
    assert _csv_epochs(run / "history.csv") == [0, 1, 2]


def test_auto_low_res_factor_needs_a_time_budget_and_a_poolable_size():
    cpu = parse_train_config(["--preset", "cpu"])
    assert cpu.low_res_factor == 0 and cpu.resolve_low_res_factor(128)[0] == 1  # fixed epochs: off
    timed = parse_train_config(["--preset", "cpu", "--time-budget", "5"])
    assert [timed.resolve_low_res_factor(s)[0] for s in (128, 64, 96, 160, 192)] == [2, 2, 1, 1, 2]
    assert parse_train_config(["--preset", "cpu", "--time-budget", "5", "--low-res-factor", "1"]
                              ).resolve_low_res_factor(128)[0] == 1
    assert parse_train_config(["--low-res-factor", "2"]).resolve_low_res_factor(128) == (2, "--low-res-factor 2")


def test_low_res_settings_are_checked(data64, data_dir, tmp_path):
    with pytest.raises(ValueError, match="low_res_factor must be >= 0"):
        parse_train_config(_args(data64, tmp_path, "b1", "--low-res-factor", "-1"))
    with pytest.raises(ValueError, match="low_res_share"):
        parse_train_config(_args(data64, tmp_path, "b2", "--low-res-factor", "2", "--low-res-share", "1"))
    with pytest.raises(ValueError, match="pools the 32 px images .* to 16 px"):
        train_vis.main(_args(data_dir, tmp_path, "b3", "--low-res-factor", "2"))
    with pytest.raises(ValueError, match="to 21.3333 px"):
        train_vis.main(_args(data64, tmp_path, "b4", "--low-res-factor", "3"))


def test_sigma_schedule_follows_epochs_or_the_time_budget(tmp_path):
    from pipeline.callbacks import SigmaSchedule, TimeBudget

    sched = SigmaSchedule(2.0, 1.0, epochs=4)
    sched.params = {"steps": 10}
    assert sched.value() == 2.0
    sched.on_epoch_begin(1)
    assert sched.value() == pytest.approx(1.75)
    sched.on_train_batch_begin(5)
    assert sched.value() == pytest.approx(2.0 - 1.5 / 4)
    logs = {}
    sched.on_epoch_end(1, logs)
    assert logs["heatmap_sigma"] == pytest.approx(1.625)
    clock = _FakeClock()
    sched.budget = TimeBudget(100.0, clock=clock)
    sched.budget.on_train_begin()
    clock.now = 80.0  # the time runs ahead of the epochs: it sets the pace
    sched.on_epoch_begin(1)
    assert sched.value() == pytest.approx(1.2)
    clock.now = 500.0
    sched.on_epoch_begin(1)
    assert sched.value() == 1.0  # never past the end
    sched2 = SigmaSchedule(2.0, 1.0, epochs=4)
    sched2.finish()
    assert sched2.value() == 1.0
    with pytest.raises(ValueError, match="positive"):
        SigmaSchedule(0.0, 1.0, 3)


def test_input_pipeline_reads_a_changing_sigma_per_batch(data_dir):
    ds = load_dataset(data_dir)
    idx = np.arange(8)
    width = {"sigma": 3.0}
    data = make_dataset(ds, idx, 4, False, sigma=lambda: width["sigma"], heat_size=16)
    fixed = make_dataset(ds, idx, 4, False, sigma=1.0, heat_size=16)
    it = iter(data)
    wide = next(it)[1]["heatmaps"].numpy()
    width["sigma"] = 1.0
    narrow = next(iter(make_dataset(ds, idx, 4, False, sigma=lambda: width["sigma"], heat_size=16)))[1]["heatmaps"]
    np.testing.assert_allclose(narrow.numpy(), next(iter(fixed))[1]["heatmaps"].numpy(), atol=1e-6)
    assert wide.sum() > 5 * narrow.numpy().sum()  # area grows with sigma^2: 9x
    with pytest.raises(ValueError, match="heatmap-source render"):
        make_dataset(ds, idx, 4, False, sigma=lambda: 1.0, heat_size=16, stored_heatmaps=True)


def test_training_with_a_sigma_schedule_logs_and_keeps_the_final_targets(data64, tmp_path):
    args = _args(data64, tmp_path, "sig", "--epochs", "4", "--heatmap-sigma", "2.0", "--heatmap-sigma-end", "1.0",
                 "--image-every", "0")
    train_vis.main(args)
    run = tmp_path / "logs" / "sig"
    with open(run / "history.csv") as f:
        sigmas = [float(r["heatmap_sigma"]) for r in csv.DictReader(f)]
    assert len(sigmas) == 4 and all(a > b for a, b in zip(sigmas, sigmas[1:]))
    assert 1.0 <= sigmas[-1] < 1.3 and sigmas[0] < 2.0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["targets"] == {"heat_size": 32, "sigma": 1.0, "sigma_start": 2.0}
    with pytest.raises(ValueError, match="heatmap_sigma_end must be >= 0"):
        parse_train_config(_args(data64, tmp_path, "s2", "--heatmap-sigma-end", "-1"))
    with pytest.raises(ValueError, match="--heatmap-sigma-end 1.0 needs --heatmap-source render"):
        train_vis.main(_args(data64, tmp_path, "s3", "--heatmap-sigma-end", "1.0", "--heatmap-source", "stored"))
