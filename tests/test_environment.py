"""The pinned packages really work together (setup.py is the single list of pins)."""

import importlib.metadata
import os
import re

import numpy as np
import soundfile

from tfgmvae import audio

from conftest import REPO, tone


def _pins():
  text = open(os.path.join(REPO, "setup.py")).read()
  return dict(re.findall(r'"([A-Za-z0-9_.\-]+)==([^"]+)"', text))


def test_installed_versions_are_the_pinned_ones():
  pins = _pins()
  for name in ("tensorflow", "tensorflow-probability", "tf-keras", "keras",
               "tensorflow-io", "numpy", "librosa", "soundfile", "absl-py", "tensorboard",
               "setuptools"):
    assert importlib.metadata.version(name) == pins[name], name


def test_keras_3_and_tfp_load_with_tensorflow():
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  assert keras.__version__.startswith("3.")
  mixture = tfp.distributions.MixtureSameFamily(
      tfp.distributions.Categorical(logits=np.zeros(3, np.float32)),
      tfp.distributions.MultivariateNormalDiag(loc=np.eye(3, 2, dtype=np.float32)))
  assert mixture.event_shape == [2]
  assert np.isfinite(mixture.log_prob(np.zeros(2, np.float32)).numpy())


def test_tensorflow_io_ops_load_and_decode_like_ours(tmp_path):
  import tensorflow_io as tfio  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "n.flac")
  x = tone(60, 44100, 0.5)
  soundfile.write(path, x, 44100, subtype="PCM_16")
  theirs = tfio.audio.AudioIOTensor(path)
  assert int(theirs.rate) == 44100
  their_wave = theirs.to_tensor().numpy()[:, 0].astype(np.float32) / 32768.0
  ours, _ = audio.load(path)
  np.testing.assert_allclose(ours, their_wave, atol=1e-6)
