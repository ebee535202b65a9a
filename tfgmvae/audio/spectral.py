"""Log-mel features and their inverse, as small pure TensorFlow functions.

The mel filterbank is Slaney-style (librosa's default: Slaney's mel scale and
area-normalised triangles), built once in NumPy and used as a constant;
`tf.signal.linear_to_mel_weight_matrix` is HTK-style and unnormalised, so it is not used.
"""

import functools

import numpy as np
import tensorflow as tf

from tfgmvae.audio.config import AudioConfig, PAPER

# Slaney's mel scale: linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz):
  """Slaney mel of frequencies in Hz (array or scalar)."""
  hz = np.asarray(hz, np.float64)
  mel = hz / _F_SP
  return np.where(hz >= _MIN_LOG_HZ,
                  _MIN_LOG_MEL + np.log(np.maximum(hz, 1e-10) / _MIN_LOG_HZ) / _LOG_STEP,
                  mel)


def mel_to_hz(mel):
  """Inverse of `hz_to_mel`."""
  mel = np.asarray(mel, np.float64)
  return np.where(mel >= _MIN_LOG_MEL,
                  _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL)),
                  _F_SP * mel)


@functools.lru_cache(maxsize=16)
def _filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                fmax: float) -> np.ndarray:
  fft_hz = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
  widths = np.diff(edges)
  rising = (fft_hz[None, :] - edges[:-2, None]) / widths[:-1, None]
  falling = (edges[2:, None] - fft_hz[None, :]) / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(rising, falling))
  weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
  weights = weights.T.astype(np.float32)     # [n_bins, n_mels]
  weights.setflags(write=False)
  return weights


def mel_filterbank(config: AudioConfig = PAPER) -> np.ndarray:
  """Slaney mel filterbank, float32 [n_fft // 2 + 1, n_mels] (read-only, cached).

  Equal to `librosa.filters.mel(...).T` with librosa's defaults (htk=False,
  norm='slaney').
  """
  return _filterbank(config.sample_rate, config.n_fft, config.n_mels,
                     float(config.fmin), float(config.fmax))


def fit_segment(waveform, config: AudioConfig = PAPER) -> tf.Tensor:
  """Crops or zero-pads the last axis to the segment length (first `duration` seconds)."""
  x = tf.convert_to_tensor(waveform, tf.float32)
  n = config.segment_samples
  x = x[..., :n]
  pad = n - tf.shape(x)[-1]
  paddings = tf.concat([tf.zeros([tf.rank(x) - 1, 2], tf.int32),
                        tf.reshape(tf.stack([0, pad]), [1, 2])], axis=0)
  x = tf.pad(x, paddings)
  return tf.ensure_shape(x, x.shape[:-1].concatenate([n]))


def _window(config: AudioConfig) -> tf.Tensor:
  return tf.signal.hann_window(config.n_fft, periodic=True, dtype=tf.float32)


def stft(waveform, config: AudioConfig = PAPER) -> tf.Tensor:
  """Centred STFT (zero padding of n_fft/2 each side), complex [..., frames, n_bins].

  Returns all `config.max_frames` frames of the segment, not only the kept ones.
  """
  x = fit_segment(waveform, config)
  half = config.n_fft // 2
  paddings = tf.concat([tf.zeros([tf.rank(x) - 1, 2], tf.int32),
                        tf.constant([[half, half]], tf.int32)], axis=0)
  x = tf.pad(x, paddings)
  return tf.signal.stft(x, frame_length=config.n_fft, frame_step=config.hop_length,
                        fft_length=config.n_fft,
                        window_fn=lambda n, dtype: _window(config), pad_end=False)


def mel_power(waveform, config: AudioConfig = PAPER) -> tf.Tensor:
  """Mel power spectrogram of the segment, float32 [..., frames, n_mels]."""
  spec = stft(waveform, config)[..., :config.frames, :]
  power = tf.math.square(tf.math.real(spec)) + tf.math.square(tf.math.imag(spec))
  return tf.tensordot(power, tf.constant(mel_filterbank(config)), axes=1)


def log_mel(waveform, config: AudioConfig = PAPER) -> tf.Tensor:
  """Unnormalised log-mel of a note: log(mel power + floor).

  Args:
    waveform: float [n] or [batch, n], mono at `config.sample_rate`, starting at the
      note's segment (any offset already applied). Longer input is cropped to the first
      `duration` seconds, shorter input zero-padded.
    config: Front-end settings.

  Returns:
    float32 [frames, n_mels] ([batch, frames, n_mels] for batched input); [43, 256] with
    the paper's settings.
  """
  return tf.math.log(mel_power(waveform, config) + config.log_floor)


def normalise(log_mel_values, lo: float, hi: float) -> tf.Tensor:
  """Maps the training split's log-mel range [lo, hi] to [-1, 1]."""
  x = tf.convert_to_tensor(log_mel_values, tf.float32)
  return 2.0 * (x - lo) / (hi - lo) - 1.0


def denormalise(values, lo: float, hi: float) -> tf.Tensor:
  """Inverse of `normalise`."""
  x = tf.convert_to_tensor(values, tf.float32)
  return (x + 1.0) * 0.5 * (hi - lo) + lo


@functools.lru_cache(maxsize=16)
def _pseudo_inverse(sample_rate, n_fft, n_mels, fmin, fmax) -> np.ndarray:
  fb = _filterbank(sample_rate, n_fft, n_mels, fmin, fmax).astype(np.float64)
  inv = np.linalg.pinv(fb).astype(np.float32)      # [n_mels, n_bins]
  inv.setflags(write=False)
  return inv


def mel_to_linear_power(mel, config: AudioConfig = PAPER) -> tf.Tensor:
  """Approximate linear power spectrum from mel power: pseudo-inverse, clipped at 0.

  Args:
    mel: float [..., frames, n_mels] mel power.
    config: Front-end settings.

  Returns:
    float32 [..., frames, n_bins].
  """
  inv = _pseudo_inverse(config.sample_rate, config.n_fft, config.n_mels,
                        float(config.fmin), float(config.fmax))
  return tf.nn.relu(tf.tensordot(tf.convert_to_tensor(mel, tf.float32),
                                 tf.constant(inv), axes=1))


def _istft(spec, config: AudioConfig, length: int) -> tf.Tensor:
  window_fn = tf.signal.inverse_stft_window_fn(
      config.hop_length, forward_window_fn=lambda n, dtype: _window(config))
  x = tf.signal.inverse_stft(spec, frame_length=config.n_fft, frame_step=config.hop_length,
                             fft_length=config.n_fft, window_fn=window_fn)
  half = config.n_fft // 2
  return x[..., half:half + length]


def _frames_stft(x, config: AudioConfig, frames: int) -> tf.Tensor:
  half = config.n_fft // 2
  paddings = tf.concat([tf.zeros([tf.rank(x) - 1, 2], tf.int32),
                        tf.constant([[half, half]], tf.int32)], axis=0)
  spec = tf.signal.stft(tf.pad(x, paddings), frame_length=config.n_fft,
                        frame_step=config.hop_length, fft_length=config.n_fft,
                        window_fn=lambda n, dtype: _window(config), pad_end=False)
  return spec[..., :frames, :]


def griffin_lim(magnitude, config: AudioConfig = PAPER, n_iter: int = 32,
                momentum: float = 0.99, seed: int | None = 0) -> tf.Tensor:
  """Waveform whose STFT magnitude approximates `magnitude` (fast Griffin-Lim).

  Args:
    magnitude: float [..., frames, n_bins] linear STFT magnitude (centred frames).
    config: Front-end settings (window, hop).
    n_iter: Iterations.
    momentum: Fast Griffin-Lim momentum (0 gives the classic algorithm).
    seed: Seed of the random initial phase; `None` starts from zero phase.

  Returns:
    float32 [..., frames * hop_length] waveform at `config.sample_rate`.
  """
  mag = tf.convert_to_tensor(magnitude, tf.float32)
  frames = mag.shape[-2]
  length = frames * config.hop_length
  if seed is None:
    angles = tf.ones_like(mag, tf.complex64)
  else:
    phase = tf.random.stateless_uniform(tf.shape(mag), [seed, 0], 0.0, 2.0 * np.pi)
    angles = tf.complex(tf.cos(phase), tf.sin(phase))
  mag_c = tf.cast(mag, tf.complex64)
  previous = tf.zeros_like(mag_c)
  for _ in range(n_iter):
    wave = _istft(mag_c * angles, config, length)
    rebuilt = _frames_stft(wave, config, frames)
    accelerated = rebuilt - (momentum / (1.0 + momentum)) * previous
    previous = rebuilt
    angles = accelerated / tf.cast(tf.maximum(tf.abs(accelerated), 1e-16), tf.complex64)
  return _istft(mag_c * angles, config, length)


def log_mel_to_audio(log_mel_values, config: AudioConfig = PAPER, n_iter: int = 32,
                     seed: int | None = 0) -> tf.Tensor:
  """Waveform from an unnormalised log-mel: exp, minus floor, mel -> linear, Griffin-Lim.

  Args:
    log_mel_values: float [..., frames, n_mels] as returned by `log_mel`.
    config: Front-end settings.
    n_iter: Griffin-Lim iterations.
    seed: Seed of Griffin-Lim's initial phase.

  Returns:
    float32 [..., frames * hop_length] waveform at `config.sample_rate`.
  """
  mel = tf.nn.relu(tf.exp(tf.convert_to_tensor(log_mel_values, tf.float32))
                   - config.log_floor)
  magnitude = tf.sqrt(mel_to_linear_power(mel, config))
  return griffin_lim(magnitude, config, n_iter=n_iter, seed=seed)
