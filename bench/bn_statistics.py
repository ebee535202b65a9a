#!/usr/bin/env python3
"""How far a checkpoint's BatchNorm moving statistics are from its weights' own.

Usage:
  python bench/bn_statistics.py --run_dir=RUN [--checkpoint=best|latest|PATH]

Computes the ELBO per note of the validation and the training split (with the run's
seed and batch size from RUN/flags.txt: training's fixed validation batches and noise,
and the epoch-0 training order) twice: with the checkpoint's moving
statistics, as training validates, and after replacing every BatchNorm layer's
statistics with their exact mean over one pass of the training split in training mode
(the population statistics of the current weights). A large gap means the moving
averages lag the weights (BatchNorm momentum too high for how fast they change).
Nothing is written; the checkpoint is not changed.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # pylint: disable=wrong-import-position
import keras  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from tfgmvae.data.prepare import Prepared, PrepareError  # pylint: disable=wrong-import-position
from tfgmvae.model.gmvae import UNSUPERVISED  # pylint: disable=wrong-import-position
from tfgmvae.serving.export import ExportError, load_run  # pylint: disable=wrong-import-position
from tfgmvae.train.checkpoints import read_flags  # pylint: disable=wrong-import-position
from tfgmvae.train.inputs import make_inputs  # pylint: disable=wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "A training run directory.", required=True)
flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint path.")


def elbo_per_note(terms_of, batches) -> float:
  """Mean ELBO over the batches; terms_of(batch) gives the model's per-note terms."""
  total, count = 0.0, 0
  for batch in batches:
    terms = terms_of(batch)
    total -= sum(float(tf.reduce_sum(terms[n])) for n in UNSUPERVISED if n in terms)
    count += int(batch["mel"].shape[0])
  return total / count


def recompute_statistics(model, batches) -> None:
  """Sets every BatchNorm layer's statistics to their mean over `batches` (train mode)."""
  norms = [layer for layer in model._flatten_layers()   # pylint: disable=protected-access
           if isinstance(layer, keras.layers.BatchNormalization)]
  momentum = {id(layer): layer.momentum for layer in norms}
  for layer in norms:
    layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
    layer.moving_variance.assign(tf.zeros_like(layer.moving_variance))
  try:
    for k, batch in enumerate(batches):   # running mean: the k-th batch gets 1/(k+1)
      for layer in norms:
        layer.momentum = k / (k + 1.0)
      model.compute_terms(batch, training=True)   # eager: reads the momentum each call
  finally:
    for layer in norms:
      layer.momentum = momentum[id(layer)]


def main(argv):
  del argv
  try:
    model, info, path = load_run(FLAGS.run_dir, FLAGS.checkpoint)
    prepared = Prepared.load(info.prepared_dir)
  except (ExportError, PrepareError) as e:
    raise SystemExit(f"ERROR: {e}") from None
  latent = model.config.latent_dim
  recorded = read_flags(FLAGS.run_dir)
  seed, batch_size = int(recorded.get("seed", 0)), int(recorded.get("batch_size", 128))
  count = sum(prepared.counts["validation"].values())
  validation, steps = make_inputs(prepared, "validation", min(batch_size, count), seed,
                                  latent)
  validation = list(validation.take(steps))
  train, steps = make_inputs(prepared, "train", batch_size, seed, latent)
  train = list(train.take(steps))
  terms_of = tf.function(lambda batch: model.compute_terms(batch, training=False)[0],
                         reduce_retracing=True)
  print(f"checkpoint {path}")
  print(f"moving statistics:     validation ELBO {elbo_per_note(terms_of, validation):8.2f}"
        f"   training ELBO {elbo_per_note(terms_of, train):8.2f}")
  recompute_statistics(model, train)
  print(f"recomputed statistics: validation ELBO {elbo_per_note(terms_of, validation):8.2f}"
        f"   training ELBO {elbo_per_note(terms_of, train):8.2f}")


if __name__ == "__main__":
  app.run(main)
