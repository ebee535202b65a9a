"""Audio front end: decode, resample, log-mel, and back to a waveform.

Public entry points:

* `load(path)`: decode any wav/flac/ogg/mp3 to a mono float32 waveform and its rate.
* `log_mel(waveform_at_22050)`: the paper's unnormalised [43, 256] log-mel.
* `resample`, `normalise`, `denormalise`, `log_mel_to_audio`, `griffin_lim`.
"""

import numpy as np

from tfgmvae.audio.config import AudioConfig, PAPER
from tfgmvae.audio.io import AudioDecodeError, SUPPORTED_EXTENSIONS, read, write_wav
from tfgmvae.audio.resample import resample
from tfgmvae.audio.spectral import (MelMatrices, denormalise, fit_segment, griffin_lim,
                                    log_mel, log_mel_to_audio, mel_filterbank, mel_power,
                                    mel_pseudo_inverse, mel_to_linear_power, normalise,
                                    stft)

# Seconds of audio read past the segment so the resampler sees real context at its end.
RESAMPLE_MARGIN = 0.01


def load(path: str, sample_rate: int | None = None, offset: float = 0.0,
         duration: float | None = None) -> tuple[np.ndarray, int]:
  """Decodes an audio file to a mono float32 waveform.

  Args:
    path: wav (8/16/24/32-bit integer or float), flac, ogg, mp3, aiff or another format
      libsndfile reads, any rate and channel count; a local path or a TensorFlow
      file-system URL.
    sample_rate: Resample to this rate; `None` keeps the file's rate.
    offset: Seconds skipped at the start.
    duration: Seconds kept after `offset`; `None` keeps everything. The result is not
      padded: a shorter file gives a shorter waveform.

  Returns:
    (waveform float32 [n], sample_rate). Channels are averaged.

  Raises:
    AudioDecodeError: the file is missing, empty, undecodable, or holds NaN/Inf samples.
  """
  margin = RESAMPLE_MARGIN if (sample_rate and duration is not None) else 0.0
  wave, rate = read(path, offset=offset, duration=duration, margin=margin)
  if sample_rate is not None and sample_rate != rate:
    wave = resample(wave, rate, sample_rate).numpy()
    rate = sample_rate
  if duration is not None:
    wave = wave[:int(round(duration * rate))]
  return wave, rate


def silence_problem(name: str, segment, threshold: float, span: str = "") -> str | None:
  """Why a note's analysed `segment` cannot be used as a note: its peak absolute amplitude
  is under `threshold` (`AudioConfig.silence_threshold`); None if it sounds.

  Args:
    name: The note (its file) as the message names it.
    segment: The samples the model reads.
    threshold: The silence threshold.
    span: Where the segment lies, for the message (e.g. "0 s to 0.5 s: ").
  """
  segment = np.asarray(segment)
  peak = float(np.max(np.abs(segment))) if segment.size else 0.0
  if segment.size and peak >= threshold:
    return None
  return (f"{name}: is silent in its analysed segment ({span}peak {peak:.2g} < "
          f"{threshold:g}); expected a sounding note")


def load_segment(path: str, config: AudioConfig = PAPER) -> np.ndarray:
  """The note's analysed segment at `config.sample_rate`, zero-padded, float32 [n]."""
  wave, _ = load(path, config.sample_rate, config.offset, config.duration)
  out = np.zeros(config.segment_samples, np.float32)
  out[:len(wave)] = wave[:config.segment_samples]
  return out


__all__ = [
    "AudioConfig", "PAPER", "AudioDecodeError", "SUPPORTED_EXTENSIONS", "load",
    "load_segment", "silence_problem", "read", "write_wav", "resample", "log_mel",
    "mel_power", "stft", "MelMatrices", "mel_pseudo_inverse",
    "fit_segment", "mel_filterbank", "normalise", "denormalise", "mel_to_linear_power",
    "griffin_lim", "log_mel_to_audio",
]
