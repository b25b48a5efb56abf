"""Distributed training on ``tf.distribute``: strategy choice, chief/worker roles, batch sizes, scratch folders.

Strategies (``--strategy``):
    auto         MirroredStrategy when more than one GPU is visible, else the default (no-op) strategy.
    one          OneDeviceStrategy on the first GPU (or the CPU).
    mirrored     MirroredStrategy over the local GPUs; with no GPU, over the logical CPU devices.
    multiworker  MultiWorkerMirroredStrategy. The cluster comes from ``TF_CONFIG`` (``--cluster tf_config``,
                 TensorFlow's default TFConfigClusterResolver) or from SLURM's environment
                 (``--cluster slurm``, ``tf.distribute.cluster_resolver.SlurmClusterResolver``).

Roles: exactly one process is the chief (task ``chief``, else ``worker`` 0, else the only process). Only
the chief writes into the run folder and the model path. Keras needs some writes on every worker
(``model.save`` reads SyncOnRead metric variables, which is a collective under MultiWorkerMirroredStrategy,
so every worker must take part), so non-chief workers write those into a private scratch folder under
the system temp dir that mirrors the run folder and is removed when training ends (see :func:`scratch_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("auto", "one", "mirrored", "multiworker")
CLUSTERS = ("tf_config", "slurm")
BATCH_MODES = ("global", "per_replica")


@dataclass
class Distribution:
    """The strategy and where this process stands in the cluster.

    Attributes:
        strategy: the ``tf.distribute.Strategy`` (the default strategy when not distributing).
        name: the resolved strategy name (``default``, ``one``, ``mirrored`` or ``multiworker``).
        num_replicas: replicas in sync over the whole cluster.
        num_workers: processes taking part (1 unless multi-worker).
        worker_index: index of this process among the workers (0 on the chief).
        task: ``"<type>:<id>"`` of this process, ``"local"`` when single-process.
        is_chief: whether this process writes logs, checkpoints and the final model.
    """

    strategy: object
    name: str
    num_replicas: int
    num_workers: int
    worker_index: int
    task: str
    is_chief: bool

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    def scope(self):
        return self.strategy.scope()


def _cluster_resolver(cluster: str):
    import tensorflow as tf

    if cluster == "tf_config":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("--strategy multiworker --cluster tf_config needs the TF_CONFIG environment variable "
                             "(see docs/distributed.md). Received: TF_CONFIG unset.")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON ({e}). Received: TF_CONFIG={os.environ['TF_CONFIG']!r}") from e
        return tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if cluster == "slurm":
        if "SLURM_JOB_ID" not in os.environ:
            raise ValueError("--cluster slurm needs to run inside a SLURM job (srun); SLURM_JOB_ID is unset.")
        return tf.distribute.cluster_resolver.SlurmClusterResolver()
    raise ValueError(f"cluster must be one of {CLUSTERS}. Received: cluster={cluster!r}")


def _role(resolver) -> tuple[int, int, str, bool]:
    """(num_workers, worker_index, task, is_chief) from a cluster resolver; chief first."""
    spec = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    order = [("chief", i) for i in range(len(spec.get("chief", [])))] + \
            [("worker", i) for i in range(len(spec.get("worker", [])))]
    if (task_type, task_id) not in order:
        raise ValueError(f"This process is task {task_type}:{task_id}, which is not a chief or worker of the cluster "
                         f"{spec}. Only chief/worker tasks train under MultiWorkerMirroredStrategy.")
    index = order.index((task_type, task_id))
    return len(order), index, f"{task_type}:{task_id}", index == 0


def resolve_strategy(name: str = "auto", cluster: str = "tf_config") -> Distribution:
    """Create the strategy ``name`` (see the module docstring) and describe this process's role.

    Call it before anything initialises TensorFlow's devices (MultiWorkerMirroredStrategy configures the
    collective ops at startup), but after ``tf.config.threading`` settings.
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "multiworker":
        resolver = _cluster_resolver(cluster)
        num_workers, index, task, chief = _role(resolver)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        return Distribution(strategy, "multiworker", strategy.num_replicas_in_sync, num_workers, index, task, chief)
    gpus = tf.config.list_physical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            name = "mirrored"
        else:
            strategy = tf.distribute.get_strategy()
            return Distribution(strategy, "default", 1, 1, 0, "local", True)
    if name == "one":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    else:  # mirrored: all GPUs, or every logical CPU device when there is no GPU (tests, CPU boxes)
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:  # one process: plain reductions (no collective-op instance keys shared between strategies)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    return Distribution(strategy, name, strategy.num_replicas_in_sync, 1, 0, "local", True)


def global_batch_size(batch_size: int, mode: str, num_replicas: int) -> int:
    """The batch of one optimiser step over all replicas.

    ``mode="global"``: ``batch_size`` is that batch and must split evenly over the replicas;
    ``mode="per_replica"``: each replica takes ``batch_size``, so the global batch is ``batch_size * num_replicas``.
    """
    if mode not in BATCH_MODES:
        raise ValueError(f"batch_size_mode must be one of {BATCH_MODES}. Received: batch_size_mode={mode!r}")
    if mode == "per_replica":
        return batch_size * num_replicas
    if batch_size % num_replicas:
        raise ValueError(f"The global batch_size={batch_size} does not split over {num_replicas} replicas. Use a "
                         f"multiple of {num_replicas}, or --batch-size-mode per_replica.")
    return batch_size


def worker_shards(data_dir, num_workers: int, worker_index: int) -> tuple[list[int], list[int]] | None:
    """Shard files of ``data_dir`` that worker ``worker_index`` reads on its own, or None to share the data.

    Only when ``data_dir`` holds ``data_index.json`` (preprocess_vis.py --shards N) and N divides evenly
    over the workers: worker w then takes the contiguous shards [w N/W, (w+1) N/W).

    Returns:
        (this worker's shard indices, samples per shard for all N shards), or None.
    """
    from pipeline.arrays import INDEX_FILE

    index = Path(data_dir) / INDEX_FILE
    if num_workers <= 1 or not index.is_file():
        return None
    meta = json.loads(index.read_text())
    n = int(meta["num_shards"])
    if n % num_workers:
        return None
    per = n // num_workers
    counts = [int(s["samples"]) for s in meta["shards"]]
    return list(range(worker_index * per, (worker_index + 1) * per)), counts


def sync_batchnorm(model) -> int:
    """Make every BatchNormalization layer (nested models too) use global-batch statistics.

    Under MirroredStrategy each replica otherwise normalises with the moments of its own slice of
    the batch, so training differs from one device with the same global batch. Returns the number
    of layers switched. Costs one all-reduce per BatchNorm layer per step.
    """
    import keras

    def walk(layer):
        yield layer
        for sub in getattr(layer, "layers", ()):
            yield from walk(sub)

    n = 0
    for layer in walk(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            n += 1
    return n


@contextlib.contextmanager
def scratch_dir(dist: Distribution, run_name: str = ""):
    """Yield None on the chief; on other workers a private folder for the writes Keras requires.

    With a ``run_name`` the folder name is fixed (``<tmp>/visible-keypoints-<run>-<task>``) so a rerun
    after an interruption finds this worker's backup there and resumes; it is removed when the block
    ends normally. Without a run name it is a fresh ``mkdtemp`` folder, always removed.
    """
    if dist.is_chief:
        yield None
        return
    task = dist.task.replace(":", "")
    if run_name:
        path = Path(tempfile.gettempdir()) / f"visible-keypoints-{re.sub(r'[^A-Za-z0-9_.-]', '_', run_name)}-{task}"
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"visible-keypoints-{task}-"))
    finished = False
    try:
        yield path
        finished = True
    finally:
        if finished or not run_name:
            shutil.rmtree(path, ignore_errors=True)


def prepare_multiworker_fit(model, dist: Distribution, x, y) -> None:
    """Work around two Keras 3.15 ``fit`` failures under MultiWorkerMirroredStrategy; call after ``compile``.

    1. Before its first step ``fit`` builds the metrics from one batch, which it first averages over
       the replicas with ``strategy.reduce`` on the whole (x, y) structure; MultiWorkerMirroredStrategy
       reduces single tensors only ("Attempt to convert a value (PerReplica ...) to a Tensor"). So the
       model, losses, metrics and optimizer are built here from a plain batch (``x`` (1, S, S, 3), ``y``
       the targets dict) in the strategy's scope, and that step is skipped for this model.
    2. Each step averages the per-replica logs with ``strategy.reduce("MEAN", v, axis=0)``, which fails
       on the scalar loss and metrics ("Invalid reduction dimension 0"); :func:`_patch_keras_log_mean`
       reduces 0-d values with ``axis=None`` (the same all-reduce, so every worker logs the same numbers).

    No-op unless multi-worker. Uses Keras internals (``_symbolic_build``, ``_maybe_symbolic_build``,
    ``keras.src.backend.tensorflow.trainer.reduce_per_replica``).
    """
    if not dist.multi_worker:
        return
    _patch_keras_log_mean()
    with dist.scope():
        model._symbolic_build(data_batch=(x, y, None))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def _patch_keras_log_mean() -> None:
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "multiworker_scalar_mean", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            import keras

            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None if v.shape.rank == 0 else 0), values)
        return original(values, strategy, reduction)

    reduce_per_replica.multiworker_scalar_mean = True
    tf_trainer.reduce_per_replica = reduce_per_replica
