#!/usr/bin/env python3
"""Training batches/s with the notes cached in memory or in the on-disk store.

Usage:
  python bench/cache_throughput.py --prepared=data/prepared --cache=memory
  python bench/cache_throughput.py --prepared=data/prepared --cache=disk --store_dir=/tmp/s

Builds the training split's input exactly as bin/train does (`make_inputs`: epoch-seeded
shuffle, batch 128, noise) and reads it: the first epoch (in memory: decoding and the
log-mel fill the cache; on disk: the store is written first, timed apart, then read),
then `--epochs` more. Prints each phase's notes/s and, after the last epoch, the process's
anonymous resident memory (what the kernel cannot reclaim: the in-memory cache lives
there) and its file-backed resident memory (the store's pages, which it can), from
/proc/self/status. Run each cache in its own process.
"""

import os
import platform
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position

from tfgmvae.data.prepare import Prepared  # pylint: disable=wrong-import-position
from tfgmvae.data.store import open_store  # pylint: disable=wrong-import-position
from tfgmvae.train.inputs import make_inputs  # pylint: disable=wrong-import-position

flags.DEFINE_string("prepared", None, "Folder written by bin/prepare_dataset.")
flags.DEFINE_enum("cache", "memory", ["memory", "disk"], "Where the notes are kept.")
flags.DEFINE_string("store_dir", "/tmp/tfgmvae_bench_store", "Store folder (--cache=disk; "
                    "must not exist: it is written, then deleted).")
flags.DEFINE_integer("epochs", 3, "Epochs timed after the first.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Batch size.", lower_bound=1)
flags.mark_flag_as_required("prepared")
FLAGS = flags.FLAGS


def _read(iterator, steps) -> float:
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return time.perf_counter() - start


def _status_mb(field: str) -> float:
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024
  return float("nan")


def main(argv):
  del argv
  prepared = Prepared.load(FLAGS.prepared)
  notes = sum(prepared.counts["train"].values())
  print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{notes} training notes; cache={FLAGS.cache}")
  store_dir = None
  if FLAGS.cache == "disk":
    if os.path.exists(FLAGS.store_dir):
      raise SystemExit(f"--store_dir={FLAGS.store_dir} exists; expected a new folder")
    store_dir = FLAGS.store_dir
    start = time.perf_counter()
    open_store(prepared, "train", "mel", 1.0, store_dir, log=lambda *_: None)
    took = time.perf_counter() - start
    print(f"store written: {took:.1f} s ({notes / took:.0f} notes/s)")
  try:
    ds, steps = make_inputs(prepared, "train", FLAGS.batch_size, 0, 16,
                            epochs=1 + FLAGS.epochs, store_dir=store_dir)
    batches = iter(ds)
    first = _read(batches, steps)
    rest = _read(batches, steps * FLAGS.epochs)
    print(f"epoch 1: {first:.2f} s ({notes / first:.0f} notes/s)")
    print(f"epochs 2-{1 + FLAGS.epochs}: {rest / FLAGS.epochs:.2f} s an epoch "
          f"({notes * FLAGS.epochs / rest:.0f} notes/s)")
    print(f"resident memory: {_status_mb('RssAnon'):.0f} MB anonymous, "
          f"{_status_mb('RssFile'):.0f} MB file-backed (peak total "
          f"{_status_mb('VmHWM'):.0f} MB)")
  finally:
    if store_dir:
      shutil.rmtree(store_dir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
