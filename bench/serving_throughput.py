#!/usr/bin/env python3
"""Synthesis throughput and transfer latency through an exported SavedModel.

Usage:
  python bench/serving_throughput.py --model=export/NAME/1 [--repeats=5]   # a version folder

Loads the export with `tf.saved_model.load` (the graph TF Serving runs) and times, after
one untimed warm-up call per shape:
  * `synthesize_mel` (decoder only) at batch 1 and 256: notes/s;
  * `synthesize` (decoder + mel -> linear NNLS + Griffin-Lim) at batch 1 and 256: notes/s
    and the real-time factor (seconds of audio made per second);
  * `transfer` of a 1 s, 44.1 kHz note (resample, log-mel, encode, decode, audio) at
    batch 1: ms per note, and at batch 32: notes/s.
Each figure is the median of --repeats timed calls. Prints a table for BENCHMARKS.md.
With --pieces it also times, on random inputs at batch 256 (16 at a time, as the export
does), the parts of the audio path alone: the mel -> linear NNLS and Griffin-Lim with the
export's iteration counts.
"""

import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

flags.DEFINE_string("model", None, "An export version folder (with saved_model.pb).")
flags.DEFINE_integer("repeats", 5, "Timed calls per figure (the median is reported).",
                     lower_bound=1)
flags.DEFINE_boolean("pieces", False, "Also time the NNLS and Griffin-Lim steps alone.")
flags.mark_flag_as_required("model")
FLAGS = flags.FLAGS


def _time(fn, repeats):
  fn()                                   # warm-up (tracing, allocation)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  model = tf.saved_model.load(FLAGS.model)
  sigs = model.signatures
  with open(os.path.join(FLAGS.model, "assets.extra", "tfgmvae.json")) as f:
    meta = json.load(f)
  names = [s.decode() for s in model.instruments.numpy()]
  pitches = model.pitches.numpy()
  seconds_per_note = meta["output_samples"] / meta["output_sample_rate"]
  print(f"model {FLAGS.model}: {meta['model']['kind']}, filters {meta['model']['filters']}, "
        f"hidden {meta['model']['hidden']}, Griffin-Lim {meta['griffin_lim_iters']} it, "
        f"mel inversion {meta.get('mel_inversion_iters')} it")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"TF {tf.__version__}")
  rows = []

  def synth_inputs(n):
    rng = np.random.default_rng(n)
    return dict(instrument=tf.constant([names[i % len(names)] for i in range(n)]),
                pitch=tf.constant(rng.choice(pitches, n).astype(np.int32)),
                w=tf.constant(np.full(n, 0.5, np.float32)),
                seed=tf.constant(np.arange(n, dtype=np.int64)))

  for sig in ("synthesize_mel", "synthesize"):
    for n in (1, 256):
      inputs = synth_inputs(n)
      t = _time(lambda: sigs[sig](**inputs), FLAGS.repeats)
      rate = n / t
      rtf = f"{rate * seconds_per_note:.1f}x" if sig == "synthesize" else "-"
      rows.append((sig, n, f"{t * 1000:.1f} ms", f"{rate:.1f} notes/s", rtf))
  sr = 44100
  note = (0.3 * np.sin(2 * np.pi * 261.6 * np.arange(sr) / sr)).astype(np.float32)
  for n in (1, 32):
    inputs = dict(audio=tf.constant(np.repeat(note[None], n, 0)),
                  sample_rate=tf.constant(sr),
                  target_instrument=tf.constant([names[0]] * n),
                  alpha=tf.constant(np.ones(n, np.float32)))
    t = _time(lambda: sigs["transfer"](**inputs), FLAGS.repeats)
    rows.append(("transfer", n, f"{t * 1000:.1f} ms", f"{n / t:.1f} notes/s",
                 f"{n / t * seconds_per_note:.1f}x"))
  print("| signature | batch | time per call | throughput | audio x real time |")
  print("|---|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(str(c) for c in row) + " |")
  if FLAGS.pieces:
    _pieces(meta)


def _pieces(meta):
  """Times the audio path's parts alone (imports tfgmvae for them)."""
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from tfgmvae.audio import spectral  # pylint: disable=g-import-not-at-top
  from tfgmvae.audio.config import AudioConfig  # pylint: disable=g-import-not-at-top
  config = AudioConfig.from_dict(meta["audio"])
  chunk, total = 16, 256
  rng = np.random.default_rng(0)
  mel = tf.constant(np.exp(rng.uniform(-10, 2, (chunk, config.frames, config.n_mels)))
                    .astype(np.float32))
  mag = tf.constant(rng.uniform(0, 1, (chunk, config.frames, config.n_fft // 2 + 1))
                    .astype(np.float32))
  nnls = tf.function(lambda m: spectral.mel_to_linear_power(
      m, config, meta.get("mel_inversion_iters", spectral.MEL_INVERSION_ITERS)))
  gl = tf.function(lambda m: spectral.griffin_lim(m, config, meta["griffin_lim_iters"]))
  for name, fn, x in (("NNLS mel -> linear", nnls, mel), ("Griffin-Lim", gl, mag)):
    t = _time(lambda: [fn(x) for _ in range(total // chunk)], FLAGS.repeats)
    print(f"{name}: {t * 1000:.0f} ms per {total} notes ({total / t:.0f} notes/s)")


if __name__ == "__main__":
  app.run(main)
