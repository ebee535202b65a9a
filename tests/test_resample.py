"""The core-TF resampler against soxr (librosa's default) and the ideal signal."""

import numpy as np
import pytest
import soxr
import tensorflow as tf

from tfgmvae import audio


def _tones(sr, seconds=0.5):
  t = np.arange(int(sr * seconds)) / sr
  top = 0.4 * min(sr, 22050)       # inside both passbands
  freqs = (110.0, 440.0, 1234.5, top)
  x = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / 4
  return x.astype(np.float32), freqs


def _snr(ref, test):
  n = min(len(ref), len(test))
  s = slice(200, n - 200)          # away from the edges
  err = test[s] - ref[s]
  return 10 * np.log10(np.sum(ref[s] ** 2) / np.sum(err ** 2))


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 32000, 44100, 48000, 96000, 22051])
def test_resample_matches_soxr_and_the_ideal_signal(sr):
  x, freqs = _tones(sr)
  y = audio.resample(x, sr, 22050).numpy()
  assert len(y) == int(np.ceil(len(x) * 22050 / sr))
  t = np.arange(len(y)) / 22050
  ideal = sum(np.sin(2 * np.pi * f * t + i) for i, f in enumerate(freqs)) / 4
  assert _snr(ideal, y) > 80.0
  ref = soxr.resample(x.astype(np.float64), sr, 22050, quality="VHQ")
  assert _snr(ref, y) > 70.0


def test_resample_suppresses_aliases_when_downsampling():
  sr = 44100
  t = np.arange(sr // 2) / sr
  x = np.sin(2 * np.pi * 15000.0 * t).astype(np.float32)   # above the new Nyquist
  y = audio.resample(x, sr, 22050).numpy()
  assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-3       # > 57 dB down from 0.707


def test_same_rate_is_identity_and_rates_may_be_tensors():
  x, _ = _tones(22050)
  np.testing.assert_array_equal(audio.resample(x, 22050, 22050).numpy(), x)
  fn = tf.function(audio.resample, input_signature=[
      tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int32),
      tf.TensorSpec([], tf.int32)])
  x16, _ = _tones(16000)
  np.testing.assert_allclose(fn(x16, 16000, 22050).numpy(),
                             audio.resample(x16, 16000, 22050).numpy(), atol=1e-6)


@pytest.mark.parametrize("sr", [16000, 44100, 22051])
def test_batched_equals_one_by_one(sr):
  xs = np.stack([_tones(sr)[0], 0.5 * _tones(sr)[0][::-1].copy()])
  batched = audio.resample(xs, sr, 22050).numpy()
  for x, y in zip(xs, batched):
    np.testing.assert_allclose(y, audio.resample(x, sr, 22050).numpy(), atol=1e-6)
