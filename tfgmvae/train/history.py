"""A training run's history read back from its TensorBoard event files.

`read_scalars` gives every scalar of `RUN_DIR/summaries/{train,validation}` by epoch;
`training_time` turns the wall times of the epochs' summaries into the time the
training took, leaving out the interruptions (a stopped or paused process and its
restart) that a resumed run's summaries span; `report` puts both together with the
best validation epoch, as `bench/training_time.py` prints it.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2  # pylint: disable=g-direct-tensorflow-import

from tfgmvae.train.summaries import TRAIN_RUN, VALIDATION_RUN

# An epoch interval this many times the median is an interruption, not training.
INTERRUPTION_FACTOR = 3.0


class HistoryError(ValueError):
  """A run directory without the summaries a history needs."""


def read_events(directory: str):
  """The events of one TensorBoard run folder, file by file in the order they were
  written; a file cut short by a kill gives its whole records."""
  files = sorted(tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*")),
                 key=lambda path: (_file_time(path), path))
  for path in files:
    yield from read_file_events(path)


def read_file_events(path: str):
  """The events of one event file; one cut short by a kill gives its whole records."""
  try:
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      yield event_pb2.Event.FromString(record)
  except tf.errors.DataLossError:
    return


def read_scalars(directory: str) -> dict[str, dict[int, tuple[float, float]]]:
  """Scalars of one TensorBoard run folder: tag -> epoch -> (wall time, value).

  Where an epoch was written twice, its last value is kept.
  """
  scalars: dict[str, dict[int, tuple[float, float]]] = {}
  for event in read_events(directory):
    for value in event.summary.value:
      if value.HasField("tensor"):
        array = tf.make_ndarray(value.tensor)
        if array.size != 1 or array.dtype.kind not in "fiu":
          continue   # images, audio and text are not scalars
        number = float(array.reshape(()))
      elif value.HasField("simple_value"):
        number = float(value.simple_value)
      else:
        continue
      scalars.setdefault(value.tag, {})[int(event.step)] = (event.wall_time, number)
  return scalars


def _file_time(path: str) -> int:
  """The creation time in an event file's name (`events.out.tfevents.<time>.<host>...`)."""
  part = os.path.basename(path).split(".")[3]
  return int(part) if part.isdigit() else 0


@dataclasses.dataclass(frozen=True)
class TrainingTime:
  """How long the epochs took.

  Attributes:
    epochs: Epochs with a wall time (each epoch once).
    seconds: Their training time: the sum of the intervals between consecutive epochs'
      summaries, interruptions left out.
    median_epoch: The median interval (s).
    interruptions: (epoch, seconds) of each interval left out: longer than
      INTERRUPTION_FACTOR times the median, or following a missing epoch.
    estimated_seconds: `seconds` plus the median for each epoch without a measured
      interval (the first, and those after an interruption).
  """
  epochs: int
  seconds: float
  median_epoch: float
  interruptions: tuple[tuple[int, float], ...]
  estimated_seconds: float


def training_time(wall_times: dict[int, float]) -> TrainingTime:
  """The training time of epochs given their summaries' wall times (epoch -> s)."""
  epochs = sorted(wall_times)
  if len(epochs) < 2:
    raise HistoryError(f"{len(epochs)} epoch(s) in the summaries; a training time needs "
                       "at least 2")
  intervals = {e: wall_times[e] - wall_times[p] for p, e in zip(epochs, epochs[1:])
               if e == p + 1}
  median = float(np.median(list(intervals.values()))) if intervals else 0.0
  counted = {e: s for e, s in intervals.items()
             if 0 <= s <= INTERRUPTION_FACTOR * median}
  interruptions = tuple((e, wall_times[e] - wall_times[p])
                        for p, e in zip(epochs, epochs[1:]) if e not in counted)
  seconds = float(sum(counted.values()))
  return TrainingTime(epochs=len(epochs), seconds=seconds, median_epoch=median,
                      interruptions=interruptions,
                      estimated_seconds=seconds + median * (len(epochs) - len(counted)))


def report(run_dir: str) -> dict:
  """The run's training time and its best validation epoch, from its summaries.

  Returns:
    {'time': TrainingTime, 'last_epoch': the last trained, 'best_epoch': that of the
     best validation ELBO (the earliest of equals), 'best': {tag: validation value
     there}, 'last_validated_epoch', 'last': {tag: validation value there}}.

  Raises:
    HistoryError: no summaries with an `elbo` under `run_dir/summaries`.
  """
  folders = {run: os.path.join(run_dir, "summaries", run)
             for run in (TRAIN_RUN, VALIDATION_RUN)}
  train, validation = (read_scalars(folders[run]) if os.path.isdir(folders[run]) else {}
                       for run in (TRAIN_RUN, VALIDATION_RUN))
  for run, scalars in ((TRAIN_RUN, train), (VALIDATION_RUN, validation)):
    if "elbo" not in scalars:
      raise HistoryError(f"{folders[run]}: no 'elbo' summaries; expected the "
                         "TensorBoard folder of a run written by bin/train")
  elbo = validation["elbo"]
  best = max(elbo, key=lambda e: (elbo[e][1], -e))
  last = max(elbo)

  def at(epoch):
    return {tag: values[epoch][1] for tag, values in sorted(validation.items())
            if epoch in values}

  return {"time": training_time({e: t for e, (t, _) in train["elbo"].items()}),
          "last_epoch": max(max(train["elbo"]), last), "best_epoch": best,
          "best": at(best),
          "last_validated_epoch": last, "last": at(last)}
