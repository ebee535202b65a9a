"""Helpers shared by the bin/train tests: the script, tiny flags and tiny settings."""

import json
import os
import subprocess
import sys

import tensorflow as tf

from tfgmvae.model import GMVAE, ModelConfig
from tfgmvae.train.config import TrainConfig

from conftest import REPO

TRAIN = os.path.join(REPO, "bin", "train")
TINY = ["--filters=8", "--hidden=16", "--latent_dim=4", "--batch_size=8", "--media_every=0",
        "--verbose=2"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def run_train(args, timeout=300, **kw):
  return subprocess.run([sys.executable, TRAIN] + args, capture_output=True, text=True,
                        env=ENV, timeout=timeout, **kw)


def run_weights(run_dir, folder="checkpoints"):
  """Every model weight of the run's last checkpoint, restored into a fresh model."""
  with open(os.path.join(run_dir, "model.json")) as f:
    config = ModelConfig.from_dict(json.load(f)["model"])
  model = GMVAE(config).build_for()
  path = tf.train.latest_checkpoint(os.path.join(run_dir, folder))
  tf.train.Checkpoint(model=model).restore(path).expect_partial() \
      .assert_existing_objects_matched()
  return {f"{i}:{w.name}": w.numpy() for i, w in enumerate(model.weights)}, \
      tf.train.load_checkpoint(path)


def tiny_config(run_dir, prepared_dir, **kw):
  base = dict(run_dir=str(run_dir), prepared_dir=prepared_dir, filters=8, hidden=16,
              latent_dim=4, batch_size=8, media_every=0, verbose=0, epochs=2)
  return TrainConfig(**(base | kw))
