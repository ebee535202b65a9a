"""The training and evaluation input pipeline over a prepared dataset.

Elements are dicts:

* `mel`: float32 [batch, frames, n_mels], normalised to the training range ([-1, 1] on
  the training split); or, with `output='audio'`, `audio`: float32 [batch, samples], the
  22,050 Hz segments, for the model to turn into mel on its own device
  (`PreparedFeatures`);
* `pitch`: int32 index into `prepared.pitches`;
* `instrument`: int32 index into `prepared.instruments`;
* `labelled`: bool, whether the instrument label may be used (semi-supervised mask);
* `key`: string id of the note.

On a CPU-only machine the log-mel is computed once in the pipeline and cached; with an
accelerator, `output='audio'` caches the (same-sized) segments and the log-mel runs on the
accelerator inside the model's step.
"""

import contextlib
import dataclasses
import os

import tensorflow as tf

from tfgmvae import audio
from tfgmvae.data import paths, pipeline
from tfgmvae.data.prepare import Prepared, PrepareError, TRAIN, VALIDATION


class DataError(PrepareError):
  """A note of prepared data could not be read, or its source changed since then."""


@contextlib.contextmanager
def data_errors(prepared: Prepared | None = None, context="", suffix=""):
  """Turns a data error raised inside the block into a DataError: a failed data
  assertion of the pipeline (a note that cannot be read, NSynth records that changed),
  or a source file of `prepared` that is gone or cut short while a dataset reads it.
  Other errors pass unchanged.

  Args:
    prepared: The prepared data being read (names its source in the message).
    context: Text before the message, or a function called for it at the error.
    suffix: Text after the message, or a function called for it at the error; also added
      to a DataError raised inside.
  """
  try:
    yield
  except DataError as e:   # raised inside (by note_dataset, or an inner data_errors)
    suffix = suffix() if callable(suffix) else suffix
    if not suffix or paths.UNREACHABLE in str(e):
      raise
    raise DataError(str(e) + suffix) from None
  except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
          tf.errors.DataLossError) as e:
    message = pipeline.data_error(e)
    if message is None:
      if isinstance(e, tf.errors.InvalidArgumentError) or "IteratorGetNext" not in str(e):
        raise
      message = pipeline.op_message(e)   # from a dataset's source: a file gone or cut short
      if prepared is not None:
        if prepared.source["dataset"] == "nsynth" and not any(
            f in message for f in prepared.source["files"]):
          message = (f"reading the NSynth records ({', '.join(prepared.source['files'])}): "
                     + message)
        message += _stale_hint(prepared)
    suffix = suffix() if callable(suffix) else suffix
    if paths.UNREACHABLE in message:   # a server down: nothing about the data to say
      suffix = ""
    raise DataError((context() if callable(context) else context) + message
                    + suffix) from None


def _stale_hint(prepared: Prepared) -> str:
  return (f" (the data prepared in {prepared.directory} no longer matches its source: "
          "restore the source, or prepare the data again with bin/prepare_dataset and "
          "train a new run on it)")


def _expect_rows(ds: tf.data.Dataset, row_of, count: int, what: str,
                 hint: str) -> tf.data.Dataset:
  """`ds`, failing at the end of each pass that did not give each of the `count` rows
  once (`row_of(elem)`: an element's row in the index). A marked end element closes
  each pass; a scan keeps the count and the sums of the rows and of their squares,
  which a lost note and a repeated one would not leave both unchanged."""
  def blank(spec):
    shape = [d or 0 for d in spec.shape] if spec.shape.rank is not None else []
    return tf.zeros(shape, spec.dtype)
  end = tf.data.Dataset.from_tensors(
      (tf.constant(True), tf.nest.map_structure(blank, ds.element_spec)))
  marked = ds.map(lambda e: (tf.constant(False), e)).concatenate(end)
  sums = (count * (count - 1) // 2, (count - 1) * count * (2 * count - 1) // 6)

  def step(state, item):
    seen, total, squares = state
    last, elem = item
    gave = tf.strings.join([pipeline.DATA_ERROR, what, " gave ",
                            tf.strings.as_string(seen),
                            tf.where(tf.equal(seen, 1), " note", " notes")])
    message = tf.where(tf.equal(seen, count),
                       tf.strings.join([gave, f", but not the {count} prepared ones (some "
                                              "are missing, others repeated)", hint]),
                       tf.strings.join([gave, f" where {count} were prepared", hint]))
    check = tf.debugging.Assert(
        tf.logical_or(tf.logical_not(last), tf.reduce_all(
            tf.stack([seen, total, squares]) == tf.constant((count,) + sums, tf.int64))),
        [message])
    row = tf.where(last, tf.constant(0, tf.int64), tf.cast(row_of(elem), tf.int64))
    grown = (seen + tf.cast(tf.logical_not(last), tf.int64), total + row, squares + row * row)
    with tf.control_dependencies([check]):
      return grown, (tf.identity(last), elem)

  zero = tf.constant(0, tf.int64)
  return (marked.scan((zero, zero, zero), step)
          .filter(lambda last, _: tf.logical_not(last)).map(lambda _, elem: elem))


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How batches are made.

  Attributes:
    batch_size: Notes per batch.
    shuffle: Shuffle every epoch (training).
    seed: Shuffle seed.
    label_fraction: Share of each instrument's training labels kept (N; see
      `Prepared.labelled_quota`). Other splits keep every label, or none at N = 0.
    cache: 'memory', a file path prefix, or '' for no cache.
    output: 'mel' (log-mel computed in the pipeline) or 'audio' (segments).
    drop_remainder: Drop the last partial batch.
    repeat: Repeat forever (steps then come from the caller).
  """
  batch_size: int = 128
  shuffle: bool = True
  seed: int = 0
  label_fraction: float = 1.0
  cache: str = "memory"
  output: str = "mel"
  drop_remainder: bool = False
  repeat: bool = False

  def __post_init__(self):
    if self.batch_size <= 0:
      raise ValueError(f"batch_size={self.batch_size}: expected a positive integer.")
    if not 0.0 <= self.label_fraction <= 1.0:
      raise ValueError(f"label_fraction={self.label_fraction}: expected a number in [0, 1].")
    if self.output not in ("mel", "audio"):
      raise ValueError(f"output={self.output!r}: expected 'mel' or 'audio'.")


def default_output() -> str:
  """'audio' (mel on the accelerator) when a GPU or TPU is visible, else 'mel'."""
  accel = tf.config.list_physical_devices("GPU") + tf.config.list_physical_devices("TPU")
  return "audio" if accel else "mel"


class PreparedFeatures:
  """Segments -> normalised log-mel with a prepared dataset's constants (pure TF ops)."""

  def __init__(self, prepared: Prepared):
    self.config = prepared.audio
    self.lo, self.hi = prepared.log_mel_min, prepared.log_mel_max

  def __call__(self, segments) -> tf.Tensor:
    return audio.normalise(audio.log_mel(segments, self.config), self.lo, self.hi)


def _lookup(keys, values, default):
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.constant(values)), default)


def note_dataset(prepared: Prepared, split: str, config: PipelineConfig = PipelineConfig(),
                 keys=None) -> tuple[tf.data.Dataset, int]:
  """Unbatched, cached notes of one split, and how many there are.

  `keys` (a set of index keys) keeps only those notes, before any is decoded (NSynth's
  records are still all read).

  Only `label_fraction`, `output` and `cache` of `config` apply here. Iterating the
  dataset stops with a data assertion (wrap it in `data_errors`) on a note that cannot
  be read and, for NSynth, at the end of a pass whose records did not give each prepared
  note once. After such an error build the dataset again: a cache that a failed pass
  filled may hold part of the notes.

  Raises:
    PrepareError: unknown split, or the split is empty.
  """
  if split not in (TRAIN, VALIDATION):
    raise PrepareError(f"split {split!r}: expected '{TRAIN}' or '{VALIDATION}'.")
  rows = prepared.index(split)
  if keys is not None:
    rows = [r for r in rows if r["key"] in keys]
  if not rows:
    raise PrepareError(f"{prepared.directory}: the {split} split is empty"
                       + (" of the notes asked for." if keys is not None else "."))
  quota = prepared.labelled_quota(config.label_fraction)
  inst_id = {name: i for i, name in enumerate(prepared.instruments)}
  pitch_id = {p: i for i, p in enumerate(prepared.pitches)}
  unknown = [r for r in rows if r["pitch"] not in pitch_id or r["instrument"] not in inst_id]
  if unknown:   # data prepared before stratified_split stopped stranding such notes
    r = unknown[0]
    raise DataError(
        f"{os.path.join(prepared.directory, 'index.csv')}: {len(unknown)} {split or ''} "
        f"note(s), e.g. {r['key']} ({r['instrument']}, MIDI {r['pitch']}), have an "
        "instrument or pitch that no training note has, so the model has no class for "
        "them; prepare the data again into a new folder with this tfgmvae.")
  acfg = prepared.audio

  def labelled(row):   # validation: every note, unless the run labels none (N = 0)
    if split != TRAIN:
      return config.label_fraction > 0
    return row["label_rank"] < quota[row["instrument"]]

  if prepared.source["dataset"] == "nsynth":
    keys = [r["key"] for r in rows]
    tables = {
        "instrument": _lookup(keys, [inst_id[r["instrument"]] for r in rows], -1),
        "pitch": _lookup(keys, [pitch_id[r["pitch"]] for r in rows], -1),
        "labelled": _lookup(keys, [int(labelled(r)) for r in rows], 0),
        "row": _lookup(keys, list(range(len(rows))), -1),
    }
    missing = [f for f in prepared.source["files"]   # (a URL fails when it is read)
               if not paths.is_url(f) and not os.path.isfile(f)]
    if missing:
      raise DataError(f"{', '.join(missing)}: no such file{_stale_hint(prepared)}")
    ds = pipeline.nsynth_records(prepared.source["files"],
                                 prepared.source["instrument_field"], acfg)
    ds = ds.filter(lambda e: tables["pitch"].lookup(e["key"]) >= 0)
    ds = ds.map(lambda e: e | {"instrument": tables["instrument"].lookup(e["key"]),
                               "pitch": tables["pitch"].lookup(e["key"]),
                               "labelled": tables["labelled"].lookup(e["key"]) > 0},
                num_parallel_calls=pipeline.AUTOTUNE)
  else:
    ds = tf.data.Dataset.from_tensor_slices({
        "key": [r["key"] for r in rows],
        "path": [r["path"] for r in rows],
        "instrument": tf.constant([inst_id[r["instrument"]] for r in rows], tf.int32),
        "pitch": tf.constant([pitch_id[r["pitch"]] for r in rows], tf.int32),
        "labelled": [labelled(r) for r in rows],
    })
    ds = pipeline.decode_files(ds, acfg)

  hint = _stale_hint(prepared)

  def finish(batch):
    """Stops on a note that fails to decode; else labels plus normalised mel or audio."""
    with tf.control_dependencies([pipeline.check_errors(batch["error"], hint)]):
      out = {k: tf.identity(batch[k]) for k in ("key", "instrument", "pitch", "labelled")}
      if config.output == "mel":
        out["mel"] = audio.normalise(audio.log_mel(batch["segment"], acfg),
                                     prepared.log_mel_min, prepared.log_mel_max)
      else:
        out["audio"] = tf.identity(batch["segment"])
    return out

  ds = pipeline.batched_map(ds, finish)
  if prepared.source["dataset"] == "nsynth":   # records may have lost or repeated notes
    ds = _expect_rows(ds, lambda e: tables["row"].lookup(e["key"]), len(rows),
                      f"the NSynth records of the {split} split "
                      f"({', '.join(prepared.source['files'])})", hint)
  if config.cache == "memory":
    ds = ds.cache()
  elif config.cache:
    ds = ds.cache(config.cache)
  return ds, len(rows)


def make_dataset(prepared: Prepared, split: str,
                 config: PipelineConfig = PipelineConfig()) -> tf.data.Dataset:
  """Batches of one split of a prepared dataset (see the module docstring).

  Raises:
    PrepareError: unknown split, or the split is empty.
  """
  ds, count = note_dataset(prepared, split, config)
  if config.shuffle:
    ds = ds.shuffle(min(count, 20000), seed=config.seed, reshuffle_each_iteration=True)
  if config.repeat:
    ds = ds.repeat()
  ds = ds.batch(config.batch_size, drop_remainder=config.drop_remainder)
  return ds.prefetch(pipeline.AUTOTUNE)
