"""The evaluation's classifiers: linear probes on latent codes, and the CNN baseline.

* `LinearProbe`: one Dense layer (softmax) on a latent code, the paper's "linear
  classifier". Features are standardised with the training codes' mean and std first
  (an affine map, so the classifier stays linear in the code).
* `build_cnn`: the encoder's architecture (two Conv1D-BN-ReLU, Dense-BN-ReLU) with a
  softmax layer, trained end to end on the normalised log-mel. The CNNs classify real
  notes for Table 1 and judge synthesised and transferred notes for Figures 3 and 5.
  They depend only on the data, the network's sizes and the CNN's budget, so they are
  saved with a record of that (`cnn_dir`/<task>-<key>.keras and .json, the key a digest
  of the record) and reused by later evaluations of runs of those sizes on the same
  prepared data. CNNs of other sizes or data sit beside them in the same folder.
"""

import dataclasses
import errno
import hashlib
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from tfgmvae.data import paths
from tfgmvae.data.dataset import PipelineConfig, note_dataset
from tfgmvae.data.prepare import Prepared


# A CNN trains on at least this many labelled notes (one held out for early stopping).
MIN_NOTES = 2


class ClassifierError(ValueError):
  """A saved classifier does not fit this evaluation; the message names the file."""


class LinearProbe:
  """Multinomial logistic regression on standardised features, trained full-batch by
  Adam from zero weights (deterministic)."""

  def __init__(self, num_classes: int, steps: int = 400, learning_rate: float = 0.05):
    self.num_classes = num_classes
    self.steps = steps
    self.learning_rate = learning_rate
    self.mean = self.std = None
    self.layer = None

  def fit(self, x, y) -> "LinearProbe":
    """Trains on features x [N, D] and integer labels y [N]."""
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
    if x.ndim != 2 or len(x) != len(y) or not len(x):
      raise ValueError(f"LinearProbe.fit: expected x [N, D] and y [N] with N > 0, got "
                       f"{x.shape} and {y.shape}")
    self.mean, self.std = x.mean(0), np.maximum(x.std(0), 1e-6)
    self.layer = keras.layers.Dense(
        self.num_classes, kernel_initializer=keras.initializers.Zeros(), dtype="float32")
    self.layer.build((None, x.shape[1]))
    optimizer = keras.optimizers.Adam(self.learning_rate)
    features = tf.constant((x - self.mean) / self.std)
    labels = tf.constant(y)

    @tf.function
    def step():
      with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, self.layer(features)))
      grads = tape.gradient(loss, self.layer.trainable_variables)
      optimizer.apply_gradients(zip(grads, self.layer.trainable_variables))
      return loss

    for _ in range(self.steps):
      step()
    return self

  def predict_proba(self, x) -> np.ndarray:
    """Class probabilities [N, classes]."""
    x = (np.asarray(x, np.float32) - self.mean) / self.std
    return tf.nn.softmax(self.layer(tf.constant(x))).numpy()

  def predict(self, x) -> np.ndarray:
    return self.predict_proba(x).argmax(-1)


@dataclasses.dataclass(frozen=True)
class CnnSpec:
  """What a CNN baseline is, and what it was trained on (its cache key).

  Attributes:
    task: 'instrument' or 'pitch'.
    label_fraction: Share N of instrument labels it saw (1.0 for pitch).
    filters, hidden, kernel_size: The encoder's sizes.
    frames, n_mels: Input shape.
    num_classes: Output classes.
    data: The prepared data's index checksum.
    seed: Initialisation and shuffle seed.
    epochs, patience, batch_size, learning_rate: The training budget.
  """
  task: str
  label_fraction: float
  filters: int
  hidden: int
  kernel_size: int
  frames: int
  n_mels: int
  num_classes: int
  data: str
  seed: int = 0
  epochs: int = 30
  patience: int = 30
  batch_size: int = 64
  learning_rate: float = 1e-3

  @property
  def name(self) -> str:
    if self.task == "instrument" and self.label_fraction < 1.0:
      return f"instrument_n{round(100 * self.label_fraction):03d}"
    return self.task

  @property
  def file_name(self) -> str:
    """`name`-<first 10 hex digits of the SHA-256 of the spec>: one file per spec.

    A CNN that sees part of the labels also hashes the rule choosing them (since
    2026-11-26 at least one note per instrument), so judges trained under the earlier
    rule are not reused."""
    fields = dataclasses.asdict(self)
    if self.task == "instrument" and self.label_fraction < 1.0:
      fields["labelled_rule"] = "at least one per instrument"
    record = json.dumps(fields, sort_keys=True).encode()
    return f"{self.name}-{hashlib.sha256(record).hexdigest()[:10]}"


def build_cnn(spec: CnnSpec) -> keras.Model:
  """The encoder's architecture with a softmax layer: log-mel [B, T, F] -> logits."""
  keras.utils.set_random_seed(spec.seed)
  conv = dict(kernel_size=spec.kernel_size, padding="valid", use_bias=False)
  # Momentum 0.9, not Keras's 0.99: the inference statistics must settle within the few
  # hundred steps a CNN on a small dataset gets.
  bn = lambda: keras.layers.BatchNormalization(momentum=0.9)  # pylint: disable=unnecessary-lambda-assignment
  return keras.Sequential([
      keras.Input((spec.frames, spec.n_mels)),
      keras.layers.Conv1D(spec.filters, **conv), bn(), keras.layers.ReLU(),
      keras.layers.Conv1D(spec.filters, **conv), bn(), keras.layers.ReLU(),
      keras.layers.Flatten(),
      keras.layers.Dense(spec.hidden, use_bias=False), bn(), keras.layers.ReLU(),
      keras.layers.Dense(spec.num_classes, dtype="float32"),
  ], name=f"cnn_{spec.name}")


def _splits(prepared: Prepared, spec: CnnSpec, batch_size: int):
  """(fit, early-stopping) datasets of (mel, label) from the training split; batches of
  `batch_size` or fewer notes.

  Every tenth training note (in index order) is held out for early stopping, so the
  validation split stays unseen until the evaluation.
  """
  notes, count = note_dataset(prepared, "train", PipelineConfig(
      label_fraction=spec.label_fraction, cache="memory"))
  if spec.task == "instrument":
    notes = notes.filter(lambda n: tf.cast(n["labelled"], tf.bool))
    count = sum(prepared.labelled_quota(spec.label_fraction).values())
  if count < MIN_NOTES:
    raise ClassifierError(f"{prepared.directory}: {count} labelled training notes; the "
                          f"{spec.name} CNN needs at least {MIN_NOTES}.")
  # At least ~20 steps an epoch, so small datasets still train (and settle BN).
  batch_size = min(batch_size, max(8, count // 20))
  pairs = notes.enumerate().map(lambda i, n: (i, (n["mel"], n[spec.task])))
  held_count = (count + 9) // 10
  fit = pairs.filter(lambda i, _: i % 10 != 0).map(lambda _, p: p).apply(
      tf.data.experimental.assert_cardinality(count - held_count))
  held = pairs.filter(lambda i, _: i % 10 == 0).map(lambda _, p: p).apply(
      tf.data.experimental.assert_cardinality(held_count))
  fit = fit.shuffle(20000, seed=spec.seed, reshuffle_each_iteration=True)
  return (fit.batch(batch_size).prefetch(2), held.batch(batch_size).prefetch(2))


def cnn_for(prepared: Prepared, spec: CnnSpec, cnn_dir: str,
            log=print) -> tuple[keras.Model, dict]:
  """The CNN of `spec`: loaded from `cnn_dir` if saved there, else trained and saved.

  Returns:
    (the CNN, its record: spec, epochs run, best epoch, held-out accuracy).

  Raises:
    ClassifierError: the record saved under this spec's file name is of another spec
      (edited by hand; it is never overwritten), or half of a saved CNN is missing.
  """
  path = os.path.join(cnn_dir, spec.file_name)
  record = dataclasses.asdict(spec)
  if os.path.exists(path + ".json"):
    with open(path + ".json", encoding="utf-8") as f:
      saved = json.load(f)
    if saved.get("spec") != record:
      diff = {k: (saved.get("spec", {}).get(k), v) for k, v in record.items()
              if saved.get("spec", {}).get(k) != v}
      raise ClassifierError(
          f"{path}.json: records another CNN than its name says (saved vs needed: "
          f"{diff}); it was changed since it was written. Remove {path}.json and "
          f"{path}.keras to train it again, or give another --cnn_dir.")
    if not os.path.isfile(path + ".keras"):
      raise ClassifierError(f"{path}.json describes a saved CNN but {path}.keras is "
                            "missing; remove the .json to train it again.")
    log(f"Using the saved CNN {path}.keras ({saved['epochs']} epochs, held-out accuracy "
        f"{saved['holdout_accuracy']:.3f}).")
    return keras.saving.load_model(path + ".keras"), saved
  log(f"Training the {spec.name} CNN (the encoder's architecture + softmax) ...")
  model = build_cnn(spec)
  model.compile(optimizer=keras.optimizers.Adam(spec.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  fit, held = _splits(prepared, spec, spec.batch_size)
  stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=spec.patience,
                                       restore_best_weights=True)
  history = model.fit(fit, validation_data=held, epochs=spec.epochs, callbacks=[stop],
                      verbose=0)
  best = int(np.argmin(history.history["val_loss"]))
  accuracy = float(history.history["val_accuracy"][best])
  saved = {"spec": record, "epochs": len(history.history["val_loss"]),
           "best_epoch": best + 1, "holdout_accuracy": accuracy}
  _save(model, saved, path, cnn_dir)
  log(f"  {spec.name} CNN: {saved['epochs']} epochs, best {best + 1}, held-out "
      f"accuracy {accuracy:.3f}; saved to {path}.keras")
  return model, saved


def _save(model: keras.Model, saved: dict, path: str, cnn_dir: str) -> None:
  """Writes PATH.keras and PATH.json, each renamed into place once complete. Keras
  writes its archive through a weights file beside it, so both are made in a folder of
  this process's own, which the next evaluation removes if this one is killed; and
  since Keras's archive writer crashes the process (not an error) on a full disk, the
  space is checked first."""
  os.makedirs(cnn_dir, exist_ok=True)
  paths.remove_abandoned_temp_dirs(cnn_dir, ".cnn-", log=lambda _: None)
  need = 3 * 4 * model.count_params() + 2**20   # weights, their copy in the archive, slack
  free = shutil.disk_usage(cnn_dir).free
  if free < need:
    raise OSError(errno.ENOSPC, f"No space left on device: saving the CNN needs about "
                  f"{need / 2**20:.0f} MB and {free / 2**20:.0f} MB are free", cnn_dir)
  tmp = paths.make_temp_dir(cnn_dir, ".cnn-")
  try:
    model.save(os.path.join(tmp, "cnn.keras"))
    with open(os.path.join(tmp, "cnn.json"), "w", encoding="utf-8") as f:
      json.dump(saved, f, indent=2)
    os.replace(os.path.join(tmp, "cnn.keras"), path + ".keras")
    os.replace(os.path.join(tmp, "cnn.json"), path + ".json")
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def predict_proba(model: keras.Model, mels, batch_size: int = 256) -> np.ndarray:
  """Softmax outputs [N, classes] of a CNN on normalised log-mels [N, T, F]."""
  out = []
  for start in range(0, len(mels), batch_size):
    logits = model(tf.convert_to_tensor(mels[start:start + batch_size]), training=False)
    out.append(tf.nn.softmax(logits).numpy())
  return np.concatenate(out) if out else np.zeros([0, model.output_shape[-1]], np.float32)
