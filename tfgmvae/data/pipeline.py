"""tf.data building blocks: notes on disk or in TFRecords -> segments -> log-mel.

Decoding runs in parallel map calls (libsndfile through `tf.numpy_function`, which
releases the GIL while it reads); resampling, STFT, mel and log are TensorFlow ops, the
spectral part batched. Every decode problem travels with its note as an `error` string
naming the file, so preparation can list every bad file at once and the training
pipeline can stop on the first one with that message.
"""

import codecs
import re

import numpy as np
import tensorflow as tf

from tfgmvae import audio
from tfgmvae.audio import AudioConfig
from tfgmvae.data import paths

AUTOTUNE = tf.data.AUTOTUNE


def _decode_py(path, offset, duration, margin, silence_threshold):
  """numpy_function body: (waveform at the file's rate, rate, error message).

  The waveform holds `duration + margin` seconds, zero-padded, so that notes at one rate
  share a length and can be resampled as a batch.
  """
  path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
  try:
    wave, rate = audio.read(path, float(offset), float(duration), float(margin))
  except audio.AudioDecodeError as e:
    return np.zeros([0], np.float32), np.int32(1), str(e).encode()
  except Exception as e:  # pylint: disable=broad-except
    return (np.zeros([0], np.float32), np.int32(1),
            f"{path}: cannot be decoded: {type(e).__name__}: {e}".encode())
  silent = audio.silence_problem(path, wave[:int(np.ceil(float(duration) * rate))],
                                 float(silence_threshold))
  if silent:
    return np.zeros([0], np.float32), np.int32(1), silent.encode()
  length = int(np.ceil((float(duration) + float(margin)) * rate))
  out = np.zeros(length, np.float32)
  out[:min(length, len(wave))] = wave[:length]
  return out, np.int32(rate), b""


def decode(elem, config: AudioConfig):
  """Graph op: adds 'wave' (file rate), 'rate' and 'error' to an element with 'path'."""
  wave, rate, error = tf.numpy_function(
      _decode_py, [elem["path"], config.offset, config.duration, audio.RESAMPLE_MARGIN,
                   config.silence_threshold],
      [tf.float32, tf.int32, tf.string], stateful=False)
  return elem | {"wave": tf.ensure_shape(wave, [None]), "rate": tf.ensure_shape(rate, []),
                 "error": tf.ensure_shape(error, [])}


def resample_by_rate(ds: tf.data.Dataset, config: AudioConfig, batch: int = 64,
                     parallel=AUTOTUNE) -> tf.data.Dataset:
  """Replaces 'wave' and 'rate' by 'segment' (the config's rate and length).

  Notes are grouped by their rate and resampled a batch at a time; the order of elements
  changes (deterministically). A note with an error gets a zero segment.
  """
  def resample_batch(elems):
    elems = dict(elems)
    wave, rate = elems.pop("wave"), elems.pop("rate")
    segment = tf.cond(tf.shape(wave)[1] > 0,
                      lambda: audio.resample(wave, rate[0], config.sample_rate),
                      lambda: tf.zeros([tf.shape(wave)[0], 0], tf.float32))
    return elems | {"segment": audio.fit_segment(segment, config)}

  ds = ds.group_by_window(key_func=lambda e: tf.cast(e["rate"], tf.int64),
                          reduce_func=lambda _, window: window.padded_batch(batch),
                          window_size=batch)
  return ds.map(resample_batch, num_parallel_calls=parallel).unbatch()


def decode_files(ds: tf.data.Dataset, config: AudioConfig,
                 parallel=AUTOTUNE) -> tf.data.Dataset:
  """Elements with a 'path' gain 'segment' and 'error' (other fields pass through).

  Order changes: notes are grouped by sample rate for batched resampling.
  """
  ds = ds.map(lambda e: decode(e, config), num_parallel_calls=parallel, deterministic=True)
  return resample_by_rate(ds, config, parallel=parallel)


def _nsynth_spec(instrument_field: str, with_audio: bool) -> dict:
  spec = {"note_str": tf.io.FixedLenFeature([], tf.string),
          "pitch": tf.io.FixedLenFeature([], tf.int64),
          instrument_field: tf.io.FixedLenFeature([], tf.string)}
  if with_audio:
    spec["audio"] = tf.io.VarLenFeature(tf.float32)
    spec["sample_rate"] = tf.io.FixedLenFeature([], tf.int64, default_value=16000)
  return spec


def nsynth_records(files, instrument_field: str, config: AudioConfig | None = None,
                   parallel=AUTOTUNE) -> tf.data.Dataset:
  """Streams NSynth examples as {'key', 'instrument', 'pitch'} (+ 'segment', 'error').

  With audio, the order is that of `resample_by_rate` (grouped by sample rate).

  Args:
    files: TFRecord paths.
    instrument_field: Feature used as the instrument label.
    config: When given, also decode the audio into a segment at the config's rate.
    parallel: Parallelism of parsing and resampling.
  """
  with_audio = config is not None
  spec = _nsynth_spec(instrument_field, with_audio)

  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    out = {"key": ex["note_str"], "instrument": ex[instrument_field],
           "pitch": tf.cast(ex["pitch"], tf.int32)}
    if with_audio:
      wave = tf.sparse.to_dense(ex["audio"])
      start = tf.cast(tf.round(config.offset * tf.cast(ex["sample_rate"], tf.float32)),
                      tf.int32)
      wave = wave[start:]
      rate = tf.cast(ex["sample_rate"], tf.int32)
      length = tf.cast(tf.math.ceil((config.duration + audio.RESAMPLE_MARGIN)
                                    * tf.cast(rate, tf.float32)), tf.int32)
      analysed = tf.cast(tf.math.ceil(config.duration * tf.cast(rate, tf.float32)),
                         tf.int32)
      # As for files: the samples read must be finite, the analysed segment must sound.
      finite = tf.reduce_all(tf.math.is_finite(wave[:length]))
      peak = tf.reduce_max(tf.abs(tf.concat([wave[:analysed], [0.0]], 0)))
      error = tf.case(
          [(tf.equal(tf.size(wave), 0),
            lambda: tf.strings.join([ex["note_str"], ": holds no audio after the offset"])),
           (tf.logical_not(finite),
            lambda: tf.strings.join([ex["note_str"], ": holds NaN or infinite samples"])),
           (peak < config.silence_threshold,
            lambda: tf.strings.join([ex["note_str"], ": is silent in its analysed segment"]))],
          default=lambda: tf.constant(""))
      wave = tf.where(tf.equal(error, ""), wave, tf.zeros_like(wave))[:length]
      out["wave"] = tf.pad(wave, [[0, length - tf.shape(wave)[0]]])
      out["rate"] = rate
      out["error"] = error
    return out

  ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=min(4, len(files)))
  ds = ds.map(parse, num_parallel_calls=parallel, deterministic=True)
  return resample_by_rate(ds, config, parallel=parallel) if with_audio else ds


def batched_map(ds: tf.data.Dataset, fn, batch: int = 64,
                parallel=AUTOTUNE) -> tf.data.Dataset:
  """Applies `fn` to batches of `batch` elements and unbatches (vectorised per-note work)."""
  return ds.batch(batch).map(fn, num_parallel_calls=parallel).unbatch()


def with_log_mel(ds: tf.data.Dataset, config: AudioConfig, batch: int = 64,
                 parallel=AUTOTUNE) -> tf.data.Dataset:
  """Replaces each element's 'segment' by its unnormalised 'log_mel', computed batched."""
  def add(elem):
    elem = dict(elem)
    elem["log_mel"] = audio.log_mel(elem.pop("segment"), config)
    return elem
  return batched_map(ds, add, batch, parallel)


# Every data assertion of the pipelines carries this prefix, so the InvalidArgumentError
# that a failed one raises (inside fit(), an iterator, ...) can be told from other op
# errors and turned into its message alone (`data_error`).
DATA_ERROR = "tfgmvae data error: "


def check_errors(errors, hint: str = ""):
  """An assert op that fails with the first non-empty message of a batch of errors,
  followed by `hint` (see `data_error`), unless that note's server could not be reached
  (the message then says what to do)."""
  bad = tf.boolean_mask(errors, tf.strings.length(errors) > 0)
  first = tf.strings.reduce_join(bad[:1])
  reached = ~tf.strings.regex_full_match(first, f"(?s).*{paths.UNREACHABLE}.*")
  hint = tf.where(reached, hint, "")
  return tf.debugging.Assert(tf.equal(tf.size(bad), 0),
                             [tf.strings.join([DATA_ERROR, first, hint])])


def op_message(error: tf.errors.OpError) -> str:
  """An op error's own sentence, without TensorFlow's function and node decorations."""
  text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
  return re.split(r"\n\s*\[\[|\s*\[Op:", text, maxsplit=1)[0].strip()


def data_error(error: Exception) -> str | None:
  """The message of a pipeline's failed data assertion (`check_errors`, a count check),
  or None when `error` is something else."""
  match = re.search(re.escape(DATA_ERROR) + r"(.*)\]$", str(error), re.MULTILINE)
  if not match:
    return None
  # tf.debugging.Assert prints strings C-escaped (quotes, octal bytes of UTF-8).
  raw = codecs.escape_decode(match.group(1).encode("utf-8"))[0]
  return raw.decode("utf-8", errors="replace")
