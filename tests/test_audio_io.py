"""Decoding: every format and sample type, and each kind of bad file."""

import os

import numpy as np
import pytest
import soundfile

from tfgmvae import audio
from tfgmvae.audio import AudioDecodeError

from conftest import tone


@pytest.mark.parametrize("ext,subtype", [
    ("wav", "PCM_U8"), ("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "PCM_32"),
    ("wav", "FLOAT"), ("wav", "DOUBLE"), ("flac", "PCM_16"), ("flac", "PCM_24"),
    ("ogg", "VORBIS"), ("mp3", "MPEG_LAYER_III")])
def test_formats_decode_to_the_same_note(tmp_path, ext, subtype):
  x = tone(69, 44100, 0.7, harmonics=3, amp=0.5)
  path = str(tmp_path / f"note.{ext}")
  soundfile.write(path, x, 44100, subtype=subtype)
  wave, sr = audio.load(path)
  assert sr == 44100 and wave.dtype == np.float32
  lossy = ext in ("ogg", "mp3")
  tol = {"PCM_U8": 1e-2, "PCM_16": 1e-4, "PCM_24": 1e-6, "PCM_32": 1e-6}.get(subtype, 1e-7)
  if lossy:   # encoder delay and coding noise: compare the average spectra instead
    ref = audio.log_mel(audio.resample(x, 44100, 22050)).numpy().mean(0)
    got = audio.log_mel(audio.resample(wave, 44100, 22050)).numpy().mean(0)
    loud = ref > ref.max() - 9.2          # bands within 40 dB of the peak
    assert np.argmax(got) == np.argmax(ref)
    assert np.abs(got - ref)[loud].max() < 0.5
  else:
    assert len(wave) == len(x)
    np.testing.assert_allclose(wave, x, atol=tol)


def test_stereo_is_averaged(tmp_path):
  left, right = tone(60, 22050, 0.6), tone(67, 22050, 0.6)
  path = str(tmp_path / "stereo.wav")
  soundfile.write(path, np.stack([left, right], 1), 22050, subtype="FLOAT")
  wave, _ = audio.load(path)
  np.testing.assert_allclose(wave, (left + right) / 2, atol=1e-7)


def test_odd_rates_are_resampled_to_22050(tmp_path):
  for sr in (11111, 44100, 8000, 96000):
    path = str(tmp_path / f"n{sr}.wav")
    soundfile.write(path, tone(60, sr, 0.7), sr)
    wave, rate = audio.load(path, sample_rate=22050, duration=0.5)
    assert rate == 22050 and len(wave) == 11025


def test_short_notes_are_zero_padded(tmp_path):
  path = str(tmp_path / "short.wav")
  x = tone(72, 22050, 0.2)
  soundfile.write(path, x, 22050, subtype="FLOAT")
  seg = audio.load_segment(path)
  assert seg.shape == (11025,)
  np.testing.assert_allclose(seg[:len(x)], x, atol=1e-7)
  assert not seg[len(x):].any()


def test_offset_skips_the_start(tmp_path):
  path = str(tmp_path / "n.wav")
  x = tone(60, 22050, 1.0)
  soundfile.write(path, x, 22050, subtype="FLOAT")
  wave, _ = audio.load(path, offset=0.2, duration=0.5)
  np.testing.assert_allclose(wave, x[4410:4410 + 11025], atol=1e-7)


def test_silent_note_decodes_to_zeros(tmp_path):
  path = str(tmp_path / "silent.wav")
  soundfile.write(path, np.zeros(22050, np.float32), 22050)
  wave, _ = audio.load(path)
  assert not wave.any()


def _expect_error(path, *words):
  with pytest.raises(AudioDecodeError) as info:
    audio.load(path)
  message = str(info.value)
  assert path in message
  for w in words:
    assert w in message
  return message


def test_empty_file(tmp_path):
  path = str(tmp_path / "empty.wav")
  open(path, "wb").close()
  _expect_error(path, "empty")


def test_non_audio_file(tmp_path):
  path = str(tmp_path / "notes.wav")
  with open(path, "w") as f:
    f.write("this is a text file, not audio\n" * 20)
  _expect_error(path, "cannot be decoded",
                "expected a format libsndfile reads: wav, flac, ogg, mp3, aiff")


def test_corrupt_file(tmp_path):
  path = str(tmp_path / "corrupt.flac")
  soundfile.write(path, tone(60, 22050, 0.5), 22050)
  data = bytearray(open(path, "rb").read())
  data[:64] = os.urandom(64)       # destroy the header
  open(path, "wb").write(bytes(data))
  _expect_error(path)


def _wav_bytes(tmp_path, seconds=1.0, rate=22050, **kwargs):
  path = str(tmp_path / "whole.wav")
  soundfile.write(path, tone(60, rate, seconds), rate, **kwargs)
  return open(path, "rb").read()


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_truncated_wav_is_an_error_not_a_shorter_note(tmp_path, subtype):
  data = _wav_bytes(tmp_path, subtype=subtype)
  path = str(tmp_path / "cut.wav")
  open(path, "wb").write(data[:len(data) // 3])     # an interrupted copy or download
  held = (len(data) // 3 - data.index(b"data") - 8) // (2 if subtype == "PCM_16" else 4)
  message = _expect_error(path, "is truncated", "declares 22050 frames (1.000 s)",
                          f"holds {held} frames", "expected a complete file")
  with pytest.raises(AudioDecodeError, match="truncated"):
    audio.load_segment(path)          # the analysed segment lies in the part still there
  assert message.startswith(path)


def test_wav_of_unknown_length_reads_to_its_end(tmp_path):
  # Streaming writers leave the data size at 0xFFFFFFFF when they cannot seek back.
  data = bytearray(_wav_bytes(tmp_path, seconds=0.5))
  assert data[36:40] == b"data"
  path = str(tmp_path / "stream.wav")
  for placeholder in (0xFFFFFFFF, 0x7FFFF000):   # (the second: SoX's, into a pipe)
    data[40:44] = placeholder.to_bytes(4, "little")
    open(path, "wb").write(bytes(data))
    wave, rate = audio.load(path)
    assert rate == 22050 and len(wave) == 11025


def test_wav_with_trailing_chunks_is_complete(tmp_path):
  data = _wav_bytes(tmp_path, seconds=0.5) + b"LIST" + (4).to_bytes(4, "little") + b"INFO"
  path = str(tmp_path / "tagged.wav")
  open(path, "wb").write(data)
  assert len(audio.load(path)[0]) == 11025


def test_missing_file(tmp_path):
  _expect_error(str(tmp_path / "nope.wav"), "no such file")


def test_header_without_samples(tmp_path):
  path = str(tmp_path / "zero.wav")
  soundfile.write(path, np.zeros(0, np.float32), 22050)
  _expect_error(path, "no audio samples")


def test_nan_samples(tmp_path):
  path = str(tmp_path / "nan.wav")
  x = tone(60, 22050, 0.5)
  x[100:110] = np.nan
  soundfile.write(path, x, 22050, subtype="FLOAT")
  _expect_error(path, "NaN")
