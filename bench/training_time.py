#!/usr/bin/env python3
"""How long a training run took, and what it reached, from its TensorBoard summaries.

Usage:
  python bench/training_time.py --run_dir=RUN

Reads RUN/summaries/{train,validation} (what bin/train writes each epoch) and prints:
the epochs trained; the training wall time, summed over the intervals between
consecutive epochs' summaries, with the interruptions left out and listed (an interval
over 3x the median: a process stopped, paused or restarted); an estimate that counts the
median for each epoch without a measured interval; the median epoch; and the validation
ELBO and accuracies at the best and at the last validated epoch. A run that shared its
machine has longer epochs than an undisturbed one: the median tells them apart.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position

from tfgmvae.train.history import INTERRUPTION_FACTOR, HistoryError, report  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "A training run directory.", required=True)


def _hours(seconds: float) -> str:
  return f"{seconds / 3600:.2f} h ({seconds:,.0f} s)"


def _values(values: dict) -> str:
  shown = ("elbo", "accuracy/instrument", "accuracy/instrument_matched", "accuracy/pitch")
  return ", ".join(f"{tag} {values[tag]:.3f}" for tag in shown if tag in values)


def main(argv):
  del argv
  try:
    result = report(FLAGS.run_dir)
  except HistoryError as e:
    raise SystemExit(f"ERROR: {e}") from None
  t = result["time"]
  print(f"run {os.path.abspath(FLAGS.run_dir)}: {result['last_epoch']} epochs "
        f"({t.epochs} with summaries)")
  print(f"training wall time {_hours(t.seconds)} over {t.epochs - len(t.interruptions) - 1}"
        f" measured epoch intervals; median epoch {t.median_epoch:.2f} s")
  gaps = sum(s for _, s in t.interruptions)
  listed = ", ".join(f"before epoch {e}: {s:,.0f} s" for e, s in t.interruptions[:10])
  more = f", and {len(t.interruptions) - 10} more" if len(t.interruptions) > 10 else ""
  print(f"left out: {len(t.interruptions)} interval(s) over {INTERRUPTION_FACTOR:g}x the "
        f"median (a process stopped, paused, restarted or heavily loaded), {_hours(gaps)}"
        + (f": {listed}{more}" if listed else ""))
  print(f"estimate with the median for the {len(t.interruptions) + 1} unmeasured "
        f"epoch(s): {_hours(t.estimated_seconds)}")
  print(f"best validation at epoch {result['best_epoch']}: {_values(result['best'])}")
  print(f"last validation at epoch {result['last_validated_epoch']}: "
        f"{_values(result['last'])}")


if __name__ == "__main__":
  app.run(main)
