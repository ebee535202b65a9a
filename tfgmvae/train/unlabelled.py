"""The validation instrument accuracy of a run trained without labels (N = 0).

Without labels, the MGMVAE's timbre components come out in no particular order and the
MVAE's auxiliary classifier never trains, so the accuracy of the predicted class against
the instrument's index says nothing (a run that sorts every instrument into its own
component can score 0); such a run validates without labels too (its validation
`instrument_ce` is 0, as in training). `MatchedAccuracy` drops that accuracy from an
epoch's logs and, for an MGMVAE, puts in its place the accuracy after naming each
component by Hungarian matching with the validation notes' instruments (the usual
clustering accuracy): `val_instrument_matched_accuracy`, TensorBoard's validation
`accuracy/instrument_matched`. It is computed from the posterior means, as
`bin/evaluate` does; `bin/evaluate`'s `clusters.matched_accuracy` matches on the
training notes instead, so it is not raised by fitting the matching to the notes it
scores (a little lower, mostly). An MVAE logs no instrument accuracy at N = 0 (an
untrained classifier's classes, matched or not, say nothing about its codes).
"""

import keras
import numpy as np
import tensorflow as tf

from tfgmvae.evaluate import stats

RAW, MATCHED = "val_instrument_accuracy", "val_instrument_matched_accuracy"


def matched_accuracy(predicted, labels, num_classes: int) -> float:
  """Share of notes whose predicted class, named by the Hungarian matching of classes to
  labels on these notes, is their label."""
  mapping = stats.match_clusters(stats.contingency(predicted, labels, num_classes,
                                                   num_classes))
  named = np.array([mapping.get(int(c), -1) for c in predicted])
  return float(np.mean(named == np.asarray(labels))) if len(named) else 0.0


class MatchedAccuracy(keras.callbacks.Callback):
  """Puts the matched accuracy (MGMVAE) or nothing (MVAE) in place of the raw one in an
  epoch's logs (place it before the callbacks that print or summarise them)."""

  def __init__(self, val_ds: tf.data.Dataset, steps: int):
    """Args: the run's validation dataset (global batches) and the batches of a pass."""
    super().__init__()
    self.val_ds = val_ds
    self.steps = steps
    self._predict = None

  def _predicted(self, batch):
    model = self.model
    mel = batch["mel"] if "mel" in batch else model.features(batch["audio"])
    z_timbre = model.encode(mel, training=False)["z_timbre_mean"]
    return tf.argmax(model.instrument_log_probs(z_timbre), -1, output_type=tf.int32)

  def on_epoch_end(self, epoch, logs=None):
    if logs is None or RAW not in logs:   # (not a validated epoch)
      return
    del logs[RAW]
    if self.model.timbre_prior is None:   # MVAE: no components to match
      return
    if self._predict is None:
      self._predict = tf.function(self._predicted)
    predicted, labels = [], []
    for batch in self.val_ds.take(self.steps):
      predicted.append(self._predict({k: batch[k] for k in ("mel", "audio")
                                      if k in batch}).numpy())
      labels.append(np.asarray(batch["instrument"]))
    logs[MATCHED] = matched_accuracy(np.concatenate(predicted), np.concatenate(labels),
                                     self.model.config.num_instruments)
