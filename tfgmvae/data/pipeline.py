"""tf.data building blocks: notes on disk or in TFRecords -> segments -> log-mel.

Decoding runs in parallel map calls (libsndfile through `tf.numpy_function`, which
releases the GIL while it reads); resampling, STFT, mel and log are TensorFlow ops, the
spectral part batched. Every decode problem travels with its note as an `error` string
naming the file, so preparation can list every bad file at once and the training
pipeline can stop on the first one with that message.
"""

import numpy as np
import tensorflow as tf

from tfgmvae import audio
from tfgmvae.audio import AudioConfig

AUTOTUNE = tf.data.AUTOTUNE


def _decode_py(path, offset, duration, margin, silence_threshold):
  """numpy_function body: (waveform at file rate, rate, error message)."""
  path = path.decode("utf-8") if isinstance(path, bytes) else str(path)
  try:
    wave, rate = audio.read(path, float(offset), float(duration), float(margin))
  except audio.AudioDecodeError as e:
    return np.zeros([0], np.float32), np.int32(1), str(e).encode()
  except Exception as e:  # pylint: disable=broad-except
    return (np.zeros([0], np.float32), np.int32(1),
            f"{path}: cannot be decoded: {type(e).__name__}: {e}".encode())
  peak = float(np.max(np.abs(wave[:int(np.ceil(float(duration) * rate))])))
  if peak < float(silence_threshold):
    return (np.zeros([0], np.float32), np.int32(1),
            (f"{path}: is silent in its analysed segment (peak {peak:.2g} < "
             f"{float(silence_threshold):g}); expected a sounding note").encode())
  return wave, np.int32(rate), b""


def decode_file(path, config: AudioConfig):
  """Graph op: one file path -> (segment float32 [segment_samples], error string)."""
  wave, rate, error = tf.numpy_function(
      _decode_py, [path, config.offset, config.duration, audio.RESAMPLE_MARGIN,
                   config.silence_threshold],
      [tf.float32, tf.int32, tf.string], stateful=False)
  wave = tf.ensure_shape(wave, [None])
  rate = tf.ensure_shape(rate, [])
  error = tf.ensure_shape(error, [])
  return to_segment(wave, rate, config), error


def to_segment(wave, rate, config: AudioConfig):
  """Resamples `wave` from `rate` to the config's rate and fits it to the segment."""
  wave = tf.cond(tf.size(wave) > 0,
                 lambda: audio.resample(wave, rate, config.sample_rate),
                 lambda: tf.zeros([0], tf.float32))
  return audio.fit_segment(wave, config)


def file_segments(paths, config: AudioConfig, parallel=AUTOTUNE) -> tf.data.Dataset:
  """Dataset of {'segment', 'error'} for audio file paths, in order."""
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
  return ds.map(lambda p: dict(zip(("segment", "error"), decode_file(p, config))),
                num_parallel_calls=parallel, deterministic=True)


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
      finite = tf.reduce_all(tf.math.is_finite(wave))
      peak = tf.reduce_max(tf.abs(tf.concat([wave, [0.0]], 0)))
      error = tf.case(
          [(tf.equal(tf.size(wave), 0),
            lambda: tf.strings.join([ex["note_str"], ": holds no audio after the offset"])),
           (tf.logical_not(finite),
            lambda: tf.strings.join([ex["note_str"], ": holds NaN or infinite samples"])),
           (peak < config.silence_threshold,
            lambda: tf.strings.join([ex["note_str"], ": is silent in its analysed segment"]))],
          default=lambda: tf.constant(""))
      wave = tf.where(tf.equal(error, ""), wave, tf.zeros_like(wave))
      out["segment"] = to_segment(wave, tf.cast(ex["sample_rate"], tf.int32), config)
      out["error"] = error
    return out

  ds = tf.data.TFRecordDataset(list(files), num_parallel_reads=min(4, len(files)))
  return ds.map(parse, num_parallel_calls=parallel, deterministic=True)


def with_log_mel(ds: tf.data.Dataset, config: AudioConfig, batch: int = 64,
                 parallel=AUTOTUNE) -> tf.data.Dataset:
  """Replaces each element's 'segment' by its unnormalised 'log_mel', computed batched."""
  def add(elem):
    elem = dict(elem)
    elem["log_mel"] = audio.log_mel(elem.pop("segment"), config)
    return elem
  return ds.batch(batch).map(add, num_parallel_calls=parallel).unbatch()


def raise_on_error(elem):
  """Stops the pipeline with the element's own error message when it has one."""
  ok = tf.equal(tf.strings.length(elem["error"]), 0)
  with tf.control_dependencies([tf.debugging.Assert(ok, [elem["error"]], summarize=1)]):
    return {k: tf.identity(v) for k, v in elem.items() if k != "error"}
