"""Batches for fit(): epoch-seeded shuffles and reparameterisation noise in the pipeline.

Epoch e of a run always sees the same order and the same noise, whatever happened before
(a resume after a kill replays it exactly), and the noise belongs to the global batch, so
one device and several replicas see the same numbers.
"""

import os

import tensorflow as tf

from tfgmvae.data.dataset import PipelineConfig, note_dataset
from tfgmvae.data.prepare import Prepared
from tfgmvae.data.store import is_written, note_bytes, open_store
from tfgmvae.train.config import ConfigError

_NOISE_SALT = 7919


def _with_noise(ds: tf.data.Dataset, seed: int, epoch, latent_dim: int):
  def add(index, batch):
    # The static batch size (batches of a multi-replica run are full) keeps the noise's
    # first dimension static, so tf.distribute can read the batch size of the dataset.
    size = batch["pitch"].shape[0]
    if size is None:
      size = tf.shape(batch["pitch"])[0]
    s = tf.stack([tf.cast(seed * _NOISE_SALT + 1, tf.int64),
                  tf.cast(epoch, tf.int64) * 1_000_003 + index])
    return batch | {"noise": tf.random.stateless_normal([size, 2, latent_dim], seed=s)}
  return ds.enumerate().map(add)


def _epoch_shuffle(ds: tf.data.Dataset, count: int, op_seed) -> tf.data.Dataset:
  """ds.shuffle with a tensor seed, in an order that depends on `op_seed` only.

  tf.data combines an op seed with the global TF seed (tf.random.set_seed, which
  keras.utils.set_random_seed calls); with a tensor op seed and a global seed of 0 that
  even fails ("Using a symbolic tf.Tensor as a Python bool"). The graph-level seed is
  hidden while the shuffle is built, so every process and every resume sees the same
  order for an epoch, whatever global seed is set.
  """
  graph = tf.compat.v1.get_default_graph()
  saved = graph.seed
  graph.seed = None
  try:
    return ds.shuffle(count, seed=op_seed, reshuffle_each_iteration=False)
  finally:
    graph.seed = saved


def _cgroup_headroom(root: str = "/sys/fs/cgroup") -> int | None:
  """Bytes this process's cgroup may still allocate (a container's limit), or None."""
  for limit, usage in (("memory.max", "memory.current"),                     # cgroup v2
                       ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
    try:
      with open(os.path.join(root, limit), encoding="ascii") as f:
        text = f.read().strip()
      if text == "max":
        return None
      with open(os.path.join(root, usage), encoding="ascii") as f:
        return max(0, int(text) - int(f.read().strip()))
    except (OSError, ValueError):
      continue
  return None


def available_memory(meminfo: str = "/proc/meminfo",
                     cgroup_root: str = "/sys/fs/cgroup") -> int | None:
  """Bytes of memory available to new allocations, or None when unknown: Linux's
  MemAvailable, or less when a container's memory limit leaves less."""
  found = None
  try:
    with open(meminfo, encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          found = int(line.split()[1]) * 1024
          break
  except (OSError, ValueError, IndexError):
    pass
  if found is None:
    try:
      found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
      pass
  headroom = _cgroup_headroom(cgroup_root)
  if headroom is not None:
    found = headroom if found is None else min(found, headroom)
  return found


def store_dir_for(cache: str, prepared: Prepared, output: str, directory: str,
                  available: int | None, log=print) -> str | None:
  """Where the notes are kept between epochs: None for memory, else `directory`.

  Args:
    cache: 'memory', 'disk' or 'auto' (disk when `directory` holds both splits' stores
      already, so a resumed run reads no note from the source; else memory when both
      splits take under half of the available memory).
    prepared: The prepared data.
    output: 'mel' or 'audio'.
    directory: The folder for the stores on disk.
    available: Bytes of available memory (None: unknown, taken as enough).
    log: Where the choice of disk is reported.

  Raises:
    ConfigError: --cache=memory for notes that would not fit in memory.
  """
  notes = sum(sum(prepared.counts[split].values()) for split in ("train", "validation"))
  need = notes * note_bytes(prepared, output)
  fits = available is None or need <= available // 2
  if cache == "memory" and available is not None and need > 0.9 * available:
    raise ConfigError(f"--cache=memory: the {notes:,} notes take {need / 1e9:.1f} GB "
                      f"and {available / 1e9:.1f} GB of memory is available; use "
                      f"--cache=disk (or auto) to keep them in {directory}")
  if cache == "auto" and all(is_written(directory, split, output)
                             for split in ("train", "validation")):
    log(f"Reading the notes kept on disk in {directory}.")
    return directory
  if cache == "memory" or (cache == "auto" and fits):
    return None
  log(f"Keeping the {notes:,} notes ({need / 1e9:.2f} GB) on disk in {directory}"
      + (f" ({available / 1e9:.1f} GB of memory available)." if available else "."))
  return directory


def steps_per_epoch(count: int, batch_size: int, replicas: int = 1) -> int:
  """Batches per epoch: partial last batch kept on one replica, dropped on several."""
  return count // batch_size if replicas > 1 else -(-count // batch_size)


def make_inputs(prepared: Prepared, split: str, batch_size: int, seed: int,
                latent_dim: int, label_fraction: float = 1.0, start_epoch: int = 0,
                epochs: int = 1, output: str = "mel", strategy=None,
                store_dir: str | None = None, log=print):
  """Dataset of global batches for fit() (training: epochs start_epoch..epochs-1 back to
  back) and its steps per epoch.

  With several replicas the batches are full (the partial last batch of an epoch is
  dropped), their batch dimension is static, and the dataset is marked for DATA
  sharding. Keras 3's fit() accepts only a plain `tf.data.Dataset` (not a distributed
  one) and passes it through `strategy.experimental_distribute_dataset`, which then
  splits every global batch into `replicas` equal consecutive slices (tf.data `rebatch`)
  and, across workers, gives each worker its own slices of the same global batch (every
  worker runs the whole, deterministic pipeline). So every global step sees exactly the
  rows and the noise of the single-device run, spread over the replicas.

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
    strategy: The tf.distribute strategy of the run, or None.
    store_dir: None to cache the notes in memory, else a folder for the split's store
      on disk (tfgmvae.data.store; the batches are identical).
    log: Progress messages (writing a store).

  Returns:
    (tf.data.Dataset of global batches, steps per epoch).
  """
  if store_dir is None:
    notes, count = note_dataset(prepared, split, PipelineConfig(
        label_fraction=label_fraction, output=output, cache="memory"))
    gather = None
  else:   # shuffle and batch note indices, then read those notes from the store
    store = open_store(prepared, split, output, label_fraction, store_dir, log)
    count = len(store)
    notes, gather = tf.data.Dataset.range(count), store.gather
  replicas = strategy.num_replicas_in_sync if strategy is not None else 1
  if replicas > 1 and batch_size % replicas:
    raise ConfigError(f"--batch_size={batch_size} must be a multiple of the "
                      f"{replicas} replicas")
  steps = steps_per_epoch(count, batch_size, replicas)
  if steps < 1:
    fix = ("lower --batch_size" if split == "train" or batch_size > replicas else
           "train on fewer replicas (--cpu_devices, or fewer GPUs), or prepare the data "
           "with a larger --validation_fraction")
    per = batch_size // replicas
    share = (f" ({per} note{'s' * (per != 1)} for each of {replicas} replicas)"
             if replicas > 1 else "")
    raise ConfigError(f"the {split} split has {count} notes, fewer than one batch of "
                      f"{batch_size}{share}; {fix}")
  training = split == "train"

  def one_epoch(epoch):
    ds = notes
    if training:
      ds = _epoch_shuffle(ds, count, tf.cast(seed, tf.int64) * 100_003 + epoch)
    ds = ds.batch(batch_size, drop_remainder=replicas > 1)
    if gather is not None:
      ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    return _with_noise(ds, seed, epoch, latent_dim)

  if training:
    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
  else:   # the same batches every pass; repeated because fit keeps one iterator
    ds = one_epoch(tf.constant(0, tf.int64)).repeat()
  ds = ds.prefetch(tf.data.AUTOTUNE)
  if replicas > 1:
    sizes = {spec.shape[0] for spec in tf.nest.flatten(ds.element_spec)}
    if sizes != {batch_size}:   # tf.distribute could not split the batches evenly
      raise ValueError(f"internal: batch dimensions {sizes} are not all {batch_size}")
    # DATA, not AUTO: AUTO would try to shard the source files between workers, so
    # workers would build different global batches.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    ds = ds.with_options(options)
  return ds, steps
