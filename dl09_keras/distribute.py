"""Training on several devices or machines with ``tf.distribute``, and mixed precision.

``--strategy mirrored`` keeps one replica of the model per local device
(MirroredStrategy). ``--strategy multiworker`` spreads replicas over machines
(MultiWorkerMirroredStrategy), and each machine runs the same command with its
own ``TF_CONFIG``. The batch of ``--batch-size`` is the global batch: Keras
splits it across the replicas, and the losses normalize by counts summed over
all replicas (:func:`dl09_keras.losses.sum_over_replicas`), so a step equals
the single-device step on the same global batch.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Return the strategy of ``--strategy``: "none" (the default strategy), "mirrored" or "multiworker"."""
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)
        logger.info("MirroredStrategy over %d devices: %s", strategy.num_replicas_in_sync, ", ".join(devices))
        return strategy
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multiworker needs the TF_CONFIG environment variable: set it on each "
                             "machine to the cluster's worker addresses and this worker's index (see README).")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        resolver = strategy.cluster_resolver
        logger.info("MultiWorkerMirroredStrategy: %s %s of %d replicas", resolver.task_type, resolver.task_id,
                    strategy.num_replicas_in_sync)
        return strategy
    raise ValueError(f"Unknown strategy {name!r}: choose none, mirrored or multiworker.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Return True unless this process is a multi-worker replica other than the chief.

    The chief is the "chief" task, or worker 0 when the cluster has no chief task.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_run_dir(strategy: tf.distribute.Strategy) -> str:
    """Create a temporary run folder for a worker that is not the chief, because only the chief writes the real one.

    NOTE: such a folder is left in the system's temporary directory after the run.
    """
    resolver = strategy.cluster_resolver
    path = tempfile.mkdtemp(prefix=f"dl09-{resolver.task_type}{resolver.task_id}-")
    logger.info("This worker writes its copy of the run to %s; the chief writes the run folder.", path)
    return path


def set_precision(mixed: bool) -> str:
    """Set Keras' global dtype policy and return its name.

    Mixed precision computes in float16 on a GPU and bfloat16 on a CPU, with
    float32 weights. The SSD and Faster R-CNN outputs and the losses stay float32.
    """
    if not mixed:
        keras.mixed_precision.set_global_policy("float32")
        return "float32"
    policy = "mixed_float16" if tf.config.list_logical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    logger.info("Mixed precision: Keras dtype policy %s", policy)
    return policy


def fix_multiworker_build(model: keras.Model, strategy: tf.distribute.Strategy):
    """Let ``model.fit`` start under MultiWorkerMirroredStrategy.

    NOTE: before its first step, Keras 3.15's fit reduces the first distributed
    batch to the mean over replicas to build the compiled loss and metrics.
    MultiWorkerMirroredStrategy fails that reduction with "unsupported type
    PerReplica" (reported upstream as https://github.com/keras-team/keras/issues/20585).
    The batch only gives shapes, so the replacement builds from this worker's
    first local replica instead. It replaces a private Keras method, so a Keras
    upgrade can break it: the two-worker test in tests/test_distribute.py checks it.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def local_value(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(local_value, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build
    _fix_multiworker_logs()


def _fix_multiworker_logs():
    """Reduce per-replica scalars (losses, metric results) across workers without an axis.

    NOTE: Keras 3.15 reduces every per-replica log value of a multi-worker step with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails for scalars ("Invalid
    reduction dimension 0 for input with 0 dimensions"). This replaces that module
    function for scalars only; every other value keeps Keras' reduction.
    """
    from keras.src.backend.tensorflow import trainer as tensorflow_trainer

    original = tensorflow_trainer.reduce_per_replica
    if getattr(original, "dl09_fixed", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or reduction not in ("auto", "mean"):
            return original(values, strategy, reduction)

        def reduce(value):
            local = value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value
            if getattr(local, "shape", None) is not None and local.shape.rank == 0:
                return strategy.reduce("MEAN", value, axis=None)
            return original(value, strategy, reduction)

        return tf.nest.map_structure(reduce, values)

    reduce_per_replica.dl09_fixed = True
    tensorflow_trainer.reduce_per_replica = reduce_per_replica
