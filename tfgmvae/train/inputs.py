"""Batches for fit(): epoch-seeded shuffles and reparameterisation noise in the pipeline.

Epoch e of a run always sees the same order and the same noise, whatever happened before
(a resume after a kill replays it exactly), and the noise belongs to the global batch, so
one device and several replicas see the same numbers.
"""

import tensorflow as tf

from tfgmvae.data.dataset import PipelineConfig, note_dataset
from tfgmvae.data.prepare import Prepared

_NOISE_SALT = 7919


def _with_noise(ds: tf.data.Dataset, seed: int, epoch, latent_dim: int):
  def add(index, batch):
    size = tf.shape(batch["pitch"])[0]
    s = tf.stack([tf.cast(seed * _NOISE_SALT + 1, tf.int64),
                  tf.cast(epoch, tf.int64) * 1_000_003 + index])
    return batch | {"noise": tf.random.stateless_normal([size, 2, latent_dim], seed=s)}
  return ds.enumerate().map(add)


def _replica_slices(ds: tf.data.Dataset, first: int, count: int, per_replica: int):
  """Global batches -> consecutive per-replica batches for replicas first..first+count."""
  def split(batch):
    return tf.data.Dataset.from_tensor_slices(tf.nest.map_structure(
        lambda t: tf.reshape(t[first * per_replica:(first + count) * per_replica],
                             tf.concat([[count, per_replica], tf.shape(t)[1:]], 0)), batch))
  return ds.flat_map(split)


def steps_per_epoch(count: int, batch_size: int, replicas: int = 1) -> int:
  """Batches per epoch: partial last batch kept on one replica, dropped on several."""
  return count // batch_size if replicas > 1 else -(-count // batch_size)


def make_inputs(prepared: Prepared, split: str, batch_size: int, seed: int,
                latent_dim: int, label_fraction: float = 1.0, start_epoch: int = 0,
                epochs: int = 1, output: str = "mel", strategy=None):
  """Dataset for fit() (training: epochs start_epoch..epochs-1 back to back) and its size.

  Args:
    prepared: The prepared data.
    split: 'train' (shuffled per epoch) or 'validation' (fixed order and noise, the
      same pass repeated: read `steps` batches per validation).
    batch_size: Global batch size.
    seed: Run seed.
    latent_dim: Size of each latent code (for the noise).
    label_fraction: Share of instrument labels kept.
    start_epoch, epochs: Epoch range (training only).
    output: 'mel' or 'audio' (see tfgmvae.data.dataset).
    strategy: A tf.distribute strategy with several replicas, or None.

  Returns:
    (dataset or distributed dataset, steps per epoch).
  """
  notes, count = note_dataset(prepared, split, PipelineConfig(
      label_fraction=label_fraction, output=output, cache="memory"))
  replicas = strategy.num_replicas_in_sync if strategy is not None else 1
  if replicas > 1 and batch_size % replicas:
    raise ValueError(f"--batch_size={batch_size} must be a multiple of the "
                     f"{replicas} replicas")
  steps = steps_per_epoch(count, batch_size, replicas)
  if steps < 1:
    raise ValueError(f"the {split} split has {count} notes, fewer than one batch of "
                     f"{batch_size} across {replicas} replicas; lower --batch_size")
  training = split == "train"

  def one_epoch(epoch):
    ds = notes
    if training:
      ds = ds.shuffle(count, seed=tf.cast(seed, tf.int64) * 100_003 + epoch,
                      reshuffle_each_iteration=False)
    ds = ds.batch(batch_size, drop_remainder=replicas > 1)
    return _with_noise(ds, seed, epoch, latent_dim)

  def build(first=0, count_replicas=1):
    if training:
      ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
    else:   # the same batches every pass; repeated because fit keeps one iterator
      ds = one_epoch(tf.constant(0, tf.int64)).repeat()
    if replicas > 1:
      ds = _replica_slices(ds, first, count_replicas, batch_size // replicas)
    return ds.prefetch(tf.data.AUTOTUNE)

  if replicas == 1:
    return build(), steps

  def per_worker(ctx: tf.distribute.InputContext):
    local = replicas // ctx.num_input_pipelines
    ds = build(ctx.input_pipeline_id * local, local)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(options)

  return strategy.distribute_datasets_from_function(per_worker), steps
