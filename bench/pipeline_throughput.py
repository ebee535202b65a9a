#!/usr/bin/env python3
"""Notes/s from audio files on disk to normalised log-mel batches: tfgmvae vs librosa.

Usage:
  python bench/pipeline_throughput.py --prepared=data/prepared [--max_notes=3000]

Times, on the same files in one run:
  * tfgmvae: `make_dataset(..., cache='', shuffle=False)` over the training split
    (decode with libsndfile in parallel map calls, TF resampling, batched STFT/mel/log,
    normalise, batch 128);
  * librosa, two ways: a Python loop of `librosa.load(path, sr=22050)` (whole file,
    soxr_hq resampling) and of `librosa.load(path, sr=22050, offset, duration=0.5)`
    (only the segment, the stronger baseline); each + `librosa.stft` + a cached Slaney
    filterbank + log + normalise, stacked into batches of 128.
Each path gets one untimed warm-up over 128 notes first. Prints notes/s and the ratio.
"""

import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position
import librosa  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from tfgmvae.data.dataset import PipelineConfig, make_dataset  # pylint: disable=wrong-import-position
from tfgmvae.data.prepare import Prepared  # pylint: disable=wrong-import-position

flags.DEFINE_string("prepared", None, "Folder written by bin/prepare_dataset.")
flags.DEFINE_integer("max_notes", 0, "Use at most this many training notes (0: all).",
                     lower_bound=0)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.mark_flag_as_required("prepared")
FLAGS = flags.FLAGS


def librosa_batches(paths, prepared, batch_size, whole_file):
  cfg = prepared.audio
  fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels,
                           fmin=cfg.fmin, fmax=cfg.fmax)
  lo, hi = prepared.log_mel_min, prepared.log_mel_max
  batch = []
  for path in paths:
    if whole_file:
      y, _ = librosa.load(path, sr=cfg.sample_rate)
      y = y[int(round(cfg.offset * cfg.sample_rate)):]
    else:
      y, _ = librosa.load(path, sr=cfg.sample_rate, offset=cfg.offset,
                          duration=cfg.duration)
    y = np.pad(y, (0, max(0, cfg.segment_samples - len(y))))[:cfg.segment_samples]
    spec = np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, center=True,
                               pad_mode="constant")) ** 2
    log_mel = np.log(fb @ spec[:, :cfg.frames] + cfg.log_floor).T
    batch.append(2.0 * (log_mel - lo) / (hi - lo) - 1.0)
    if len(batch) == batch_size:
      yield np.stack(batch).astype(np.float32)
      batch = []
  if batch:
    yield np.stack(batch).astype(np.float32)


def main(argv):
  del argv
  prepared = Prepared.load(FLAGS.prepared)
  rows = prepared.index("train")
  if FLAGS.max_notes:
    rows = rows[:FLAGS.max_notes]
  paths = [r["path"] for r in rows]
  if not all(paths):
    raise app.UsageError("this benchmark reads audio files; NSynth TFRecords have none.")
  n = len(paths)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"TF {tf.__version__}, librosa {librosa.__version__}; {n} notes from "
        f"{FLAGS.prepared}")

  cfg = PipelineConfig(batch_size=FLAGS.batch_size, shuffle=False, cache="")
  for _ in make_dataset(prepared, "train", cfg).take(1):   # warm-up: tracing
    pass
  timed = make_dataset(prepared, "train", cfg).take((n + FLAGS.batch_size - 1)
                                                    // FLAGS.batch_size)
  start = time.perf_counter()   # the pipeline is built: only its batches are timed
  count = sum(int(b["mel"].shape[0]) for b in timed)
  tf_time = time.perf_counter() - start

  tf_rate = count / tf_time
  print(f"tfgmvae pipeline: {count} notes in {tf_time:.2f} s = {tf_rate:.0f} notes/s")
  for whole_file in (True, False):
    name = "librosa, whole file" if whole_file else "librosa, segment only"
    for _ in librosa_batches(paths[:FLAGS.batch_size], prepared, FLAGS.batch_size,
                             whole_file):
      pass                                                  # warm-up: numba, caches
    start = time.perf_counter()
    lib_count = sum(len(b) for b in librosa_batches(paths, prepared, FLAGS.batch_size,
                                                    whole_file))
    lib_rate = lib_count / (time.perf_counter() - start)
    print(f"{name + ':':24s}{lib_count} notes = {lib_rate:.0f} notes/s; "
          f"tfgmvae / librosa = {tf_rate / lib_rate:.2f}x")


if __name__ == "__main__":
  app.run(main)
