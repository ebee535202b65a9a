"""A split's pipeline output written once to disk and read back by index.

Training caches the normalised log-mels (or, with an accelerator, the segments) of every
note in memory, which is what SOL-sized data wants. nsynth-train holds 289,205 notes,
12.7 GB of log-mels (11.5 GB in its 90 % training split), so for data that does not
fit, `open_store` writes each split once (in `note_dataset`'s order) to
`DIR/<split>-<output>/features.npy`, a float32 .npy array whose rows each batch reads
with parallel `preadv` calls, beside `labels.npz` (key, instrument, pitch, labelled)
and `meta.json`. A store
is complete only once its folder has been renamed into place, so a killed write leaves
nothing that is mistaken for a store; a store made from other prepared data or another
label fraction, or a damaged one, is written again.

`Store.gather` turns a batch of indices into the same batch `note_dataset` would give,
so the training pipeline shuffles indices instead of notes: with the same seed the two
paths give identical batches (tests/test_store.py).
"""

import concurrent.futures
import dataclasses
import errno
import glob
import hashlib
import json
import os
import shutil
import zipfile

import numpy as np
import tensorflow as tf

from tfgmvae.data.dataset import PipelineConfig, data_errors, note_dataset
from tfgmvae.data.prepare import JSON_NAME, TRAIN, Prepared, PrepareError

# Bump when the pipeline's output for the same prepared data changes (normalisation,
# front end, element layout): stores of an older format are then written again.
FORMAT = 1
_FEATURES, _LABELS, _META = "features.npy", "labels.npz", "meta.json"


def note_bytes(prepared: Prepared, output: str) -> int:
  """Bytes one note takes in the cache: its log-mel or its segment, float32."""
  frames, mels = prepared.audio.shape
  return 4 * (frames * mels if output == "mel" else prepared.audio.segment_samples)


def _identity(prepared: Prepared, split: str, output: str, label_fraction: float) -> dict:
  # prepared.json records index.csv's checksum, which Prepared.load has verified: its
  # hash stands for both files.
  with open(os.path.join(prepared.directory, JSON_NAME), "rb") as f:
    digest = hashlib.sha256(f.read())
  return {"format": FORMAT, "prepared_dir": os.path.abspath(prepared.directory),
          "prepared_sha256": digest.hexdigest(), "split": split, "output": output,
          "label_fraction": label_fraction}


_READ_THREADS = 16
_readers = None


def _reader_pool() -> concurrent.futures.ThreadPoolExecutor:
  global _readers  # pylint: disable=global-statement
  if _readers is None:
    _readers = concurrent.futures.ThreadPoolExecutor(_READ_THREADS,
                                                     thread_name_prefix="tfgmvae-store")
  return _readers


def read_rows(features: np.ndarray, index: np.ndarray) -> np.ndarray:
  """Rows `index` of a memory-mapped .npy array, as a new array.

  The rows are read with `preadv` by a pool of threads (which release the GIL while
  they wait), so a batch keeps many reads in flight: for a store larger than the page
  cache that is about 50x faster than indexing the memory map, whose page faults come
  one at a time (BENCHMARKS.md). Without `os.preadv`, indexes the map.
  """
  index = np.asarray(index, np.int64)
  if not hasattr(os, "preadv") or not len(index):
    return np.ascontiguousarray(features[index])
  out = np.empty((len(index),) + features.shape[1:], features.dtype)
  rows = out.reshape(len(index), -1).view(np.uint8)
  size = rows.shape[1]
  outside = index[(index < 0) | (index >= len(features))]
  if len(outside):
    raise IndexError(f"{features.filename}: rows {outside[:3].tolist()} outside "
                     f"[0, {len(features)})")
  fd = os.open(features.filename, os.O_RDONLY)
  try:
    def read(rows_of_thread):   # every _READ_THREADS-th row: few tasks, reads in flight
      for j in rows_of_thread:
        start, done = features.offset + int(index[j]) * size, 0
        while done < size:
          got = os.preadv(fd, [rows[j, done:]], start + done)
          if got <= 0:
            raise OSError(f"{features.filename}: ends inside row {index[j]}")
          done += got
    parts = [range(k, len(index), _READ_THREADS) for k in range(_READ_THREADS)]
    for future in [_reader_pool().submit(read, part) for part in parts if part]:
      future.result()
  finally:
    os.close(fd)
  return out


@dataclasses.dataclass(frozen=True)
class Store:
  """A written store: labels in memory, features memory-mapped.

  Attributes:
    directory: The store's folder.
    output: 'mel' or 'audio', the name of the feature in each batch.
    labels: key (bytes), instrument, pitch (int32) and labelled (bool), one row a note.
    features: float32 [notes, ...], memory-mapped read-only.
  """
  directory: str
  output: str
  labels: dict
  features: np.ndarray

  def __len__(self) -> int:
    return len(self.features)

  def gather(self, index: tf.Tensor) -> dict:
    """A batch of `note_dataset` elements from a vector of int64 note indices."""
    features = self.features
    batch = {k: tf.gather(tf.constant(v), index) for k, v in self.labels.items()}
    values = tf.numpy_function(lambda i: read_rows(features, i), [index], tf.float32,
                               stateful=False)
    values.set_shape(index.shape.concatenate(features.shape[1:]))
    return batch | {self.output: values}


def _load(folder: str, output: str, notes: int) -> Store:
  """The store in `folder`; ValueError (or OSError) when it is damaged."""
  with np.load(os.path.join(folder, _LABELS)) as f:
    labels = {"key": f["key"], "instrument": f["instrument"].astype(np.int32),
              "pitch": f["pitch"].astype(np.int32), "labelled": f["labelled"].astype(bool)}
  features = np.load(os.path.join(folder, _FEATURES), mmap_mode="r")
  if not len(features) == notes == len(labels["key"]) or features.dtype != np.float32:
    raise ValueError(f"{len(features)} {features.dtype} feature rows and "
                     f"{len(labels['key'])} labels where {notes} notes were expected")
  return Store(folder, output, labels, features)


def _reserve(path: str) -> None:
  """Allocates the disk blocks of a memory-mapped file before it is filled: a disk that
  fills up while pages of a memory map are written back kills the process (SIGBUS)
  instead of raising, so the space is taken up front, where running out is an OSError.
  (File systems that cannot allocate ahead are left as they are.)"""
  with open(path, "r+b") as f:
    try:
      os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
    except OSError as e:
      if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise OSError(e.errno, e.strerror, path) from None


def _write(prepared: Prepared, split: str, output: str, label_fraction: float,
           folder: str, identity: dict, log) -> None:
  tmp = f"{folder}.tmp-{os.getpid()}"
  os.makedirs(tmp)
  try:
    notes, count = note_dataset(prepared, split, PipelineConfig(
        label_fraction=label_fraction, output=output, cache=""))
    spec = notes.element_spec[output]
    if spec.dtype != tf.float32:
      raise ValueError(f"internal: the pipeline's {output} is {spec.dtype}, not float32")
    shape = (count,) + tuple(spec.shape)
    need = 4 * int(np.prod(shape))
    free = shutil.disk_usage(tmp).free
    if need > free:
      raise PrepareError(f"{folder}: the {split} split's {count} notes need "
                         f"{need / 1e9:.1f} GB on disk and only {free / 1e9:.1f} GB are "
                         "free there.")
    log(f"Writing the {split} split ({count} notes, {need / 1e9:.2f} GB) to {folder}.")
    features = np.lib.format.open_memmap(os.path.join(tmp, _FEATURES), mode="w+",
                                         dtype=np.float32, shape=shape)
    _reserve(os.path.join(tmp, _FEATURES))
    labels = {k: [] for k in ("key", "instrument", "pitch", "labelled")}
    row = 0
    with data_errors(prepared, f"Writing {folder}: "):
      for batch in notes.batch(256).as_numpy_iterator():
        n = len(batch["key"])
        if row + n <= count:
          features[row:row + n] = batch[output]
          for k, v in labels.items():
            v.append(batch[k])
        row += n
    if row != count:   # (note_dataset checks NSynth's count itself)
      raise PrepareError(f"{prepared.directory}: the {split} split gave {row} notes "
                         f"where index.csv lists {count}.")
    features.flush()
    del features
    arrays = {k: np.concatenate(v) for k, v in labels.items()}
    arrays["key"] = arrays["key"].astype(np.bytes_)   # fixed width: no pickled objects
    np.savez(os.path.join(tmp, _LABELS), **arrays)
    with open(os.path.join(tmp, _META), "w", encoding="utf-8") as f:
      json.dump(identity | {"notes": count}, f, indent=2)
    os.rename(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def first_non_finite(directory: str, split: str, output: str) -> str | None:
  """The key of the first note whose stored features hold NaN or Inf: such a store is
  damaged (the pipeline writes only finite values). None when every value is finite or
  there is no readable store. Reads the whole file, so it is meant for after a failure."""
  folder = os.path.join(directory, f"{split}-{output}")
  try:
    features = np.load(os.path.join(folder, _FEATURES), mmap_mode="r")
    with np.load(os.path.join(folder, _LABELS)) as f:
      keys = f["key"]
    for start in range(0, len(features), 1024):
      chunk = np.asarray(features[start:start + 1024])
      bad = ~np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1)
      if bad.any():
        row = start + int(np.argmax(bad))
        key = keys[row] if row < len(keys) else row
        return key.decode() if isinstance(key, bytes) else str(key)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
    return None
  return None


def is_written(directory: str, split: str, output: str) -> bool:
  """Whether `directory` holds a complete store of the split (maybe a stale one)."""
  return os.path.isfile(os.path.join(directory, f"{split}-{output}", _META))


def open_store(prepared: Prepared, split: str, output: str, label_fraction: float,
               directory: str, log=print) -> Store:
  """The split's store under `directory`, written first if missing or stale.

  Args:
    prepared: The prepared data.
    split: 'train' or 'validation'.
    output: 'mel' or 'audio' (see tfgmvae.data.dataset).
    label_fraction: Share of instrument labels kept (decides 'labelled').
    directory: Folder of the stores (created).
    log: Progress messages.

  Raises:
    PrepareError: the data cannot be read, or the disk is too small.
  """
  folder = os.path.join(directory, f"{split}-{output}")
  for leftover in glob.glob(glob.escape(folder) + ".tmp-*"):   # from a killed write
    shutil.rmtree(leftover, ignore_errors=True)
  # Other splits are stored with every label and unlabelled at N = 0 when opened, so one
  # store serves both (and a run's store written before N = 0 unlabelled them is kept).
  unlabelled = split != TRAIN and label_fraction == 0.0
  label_fraction = label_fraction if split == TRAIN else 1.0
  identity = _identity(prepared, split, output, label_fraction)
  notes = sum(prepared.counts[split].values())
  try:
    with open(os.path.join(folder, _META), encoding="utf-8") as f:
      meta = json.load(f)
  except (FileNotFoundError, NotADirectoryError):   # (the latter: a file is in the way
    meta = None                                     # of the folder, refused below)
  except (OSError, ValueError) as e:   # (a folder where it should be, say)
    log(f"{folder} is damaged ({os.path.join(folder, _META)}: {e}); writing it again.")
    meta = None
  if meta is not None and {k: meta.get(k) for k in identity} == identity:
    try:
      store = _load(folder, output, notes)
      if _labelled_as(store, prepared, split, label_fraction):
        return _unlabel(store) if unlabelled else store
      log(f"{folder} labels other notes than this tfgmvae's share of {label_fraction:g} "
          "does (written by an earlier version); writing it again.")
    except (OSError, ValueError, KeyError, EOFError,
            zipfile.BadZipFile) as e:   # (the last two: a damaged labels.npz)
      log(f"{folder} is damaged ({e}); writing it again.")
  elif meta is not None:
    log(f"{folder} was written from other data or settings; writing it again.")
  if os.path.exists(folder):   # stale or damaged: free its space before the new write
    shutil.rmtree(folder)
  os.makedirs(directory, exist_ok=True)
  _write(prepared, split, output, label_fraction, folder, identity, log)
  store = _load(folder, output, notes)
  return _unlabel(store) if unlabelled else store


def _labelled_as(store: Store, prepared: Prepared, split: str, fraction: float) -> bool:
  """Whether the store labels as many notes of each instrument as `fraction` does now
  (`Prepared.labelled_quota`; every note outside the training split)."""
  if split != TRAIN:
    return bool(store.labels["labelled"].all())
  counts = np.bincount(store.labels["instrument"][store.labels["labelled"]],
                       minlength=len(prepared.instruments))
  quota = prepared.labelled_quota(fraction)
  return [int(c) for c in counts] == [quota.get(name, 0) for name in prepared.instruments]


def _unlabel(store: Store) -> Store:
  return dataclasses.replace(store, labels=dict(
      store.labels, labelled=np.zeros_like(store.labels["labelled"])))
