"""Decoding audio files into mono float32 waveforms.

One decoder, libsndfile through `soundfile`, reads wav (8/16/24/32-bit integer and float),
flac, ogg/vorbis and mp3. Paths may be local files or any URL a TensorFlow file system
understands (gs://, and s3://, http(s):// and others through tensorflow-io, imported when
such a URL is first opened); those are read through `tf.io.gfile`.
"""

import io as _io
import os
import struct

import numpy as np
import soundfile

from tfgmvae.data import paths

SUPPORTED_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class AudioDecodeError(ValueError):
  """A file could not be turned into a usable waveform. The message names the file."""


def _read_url(path: str) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return paths.read_bytes(path)
  except paths.UnreachableError as e:
    raise AudioDecodeError(str(e)) from None
  except tf.errors.NotFoundError as e:
    raise AudioDecodeError(f"{path}: no such file ({paths.short_message(e)}).") from None
  except tf.errors.OpError as e:
    raise AudioDecodeError(f"{path}: cannot be read ({paths.short_message(e)}).") from None


_UNKNOWN_SIZE = 0x7F000000   # data sizes from here up are length placeholders


def _wav_truncation(stream) -> tuple[int, int] | None:
  """(frames the header declares, frames the file holds) of a RIFF/WAVE stream whose
  data chunk runs past the end of the file; None for a complete or non-WAVE stream.

  Writers that cannot seek back leave a placeholder data size when the length is not
  known: 0xFFFFFFFF, or SoX's 0x7ffff000 (rounded to the block size). libsndfile reads
  such files to their end, and any size from 0x7f000000 (2 GB) up is taken as such a
  placeholder, not as a truncation.
  """
  stream.seek(0, os.SEEK_END)
  total = stream.tell()
  stream.seek(0)
  head = stream.read(12)
  if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
    return None
  pos, block_align = 12, 0
  while pos + 8 <= total:
    stream.seek(pos)
    chunk_id, size = struct.unpack("<4sI", stream.read(8))
    if chunk_id == b"fmt ":
      body = stream.read(min(size, 16))
      if len(body) >= 14:
        block_align = struct.unpack("<H", body[12:14])[0]
    elif chunk_id == b"data":
      if size >= _UNKNOWN_SIZE or not block_align:
        return None
      declared, held = size // block_align, (total - pos - 8) // block_align
      return (declared, held) if declared > held else None
    pos += 8 + size + (size & 1)
  return None


def _checked(path: str, f: soundfile.SoundFile, open_bytes) -> soundfile.SoundFile:
  """`f`, or AudioDecodeError (and `f` closed) if it is a WAV file cut short, e.g. by an
  interrupted copy or download: libsndfile reads the samples that are there and says
  nothing, so the note would be padded with silence. `open_bytes()` opens the file's
  bytes."""
  if f.format not in ("WAV", "WAVEX"):
    return f
  with open_bytes() as stream:
    cut = _wav_truncation(stream)
  if not cut:
    return f
  rate = f.samplerate
  f.close()
  declared, held = (f"{n} frames" + (f" ({n / rate:.3f} s)" if rate > 0 else "") for n in cut)
  raise AudioDecodeError(
      f"{path}: is truncated: its header declares {declared} but the file holds {held}; "
      "expected a complete file (was a copy or download interrupted?).")


def _open(path: str) -> soundfile.SoundFile:
  """Opens `path` with libsndfile, raising AudioDecodeError that names the file."""
  try:
    if paths.is_url(path):
      data = _read_url(path)
      if not data:
        raise AudioDecodeError(f"{path}: the file is empty (0 bytes); expected audio.")
      return _checked(path, soundfile.SoundFile(_io.BytesIO(data)), lambda: _io.BytesIO(data))
    if not os.path.exists(path):
      raise AudioDecodeError(f"{path}: no such file.")
    if os.path.isdir(path):
      raise AudioDecodeError(f"{path}: is a directory; expected an audio file.")
    if os.path.getsize(path) == 0:
      raise AudioDecodeError(f"{path}: the file is empty (0 bytes); expected audio.")
    if not os.access(path, os.R_OK):
      raise AudioDecodeError(f"{path}: cannot be read: this user may not read it (change "
                             "its permissions).")
    return _checked(path, soundfile.SoundFile(path), lambda: open(path, "rb"))
  except AudioDecodeError:
    raise
  except (soundfile.LibsndfileError, RuntimeError, TypeError, OSError) as e:
    raise AudioDecodeError(
        f"{path}: cannot be decoded as audio (expected a format libsndfile reads: wav, "
        f"flac, ogg, mp3, aiff, ...): {e}") from e


def read(path: str, offset: float = 0.0, duration: float | None = None,
         margin: float = 0.0) -> tuple[np.ndarray, int]:
  """Decodes part of an audio file at its own sample rate, mixed down to mono.

  Args:
    path: File path or TensorFlow file-system URL.
    offset: Seconds to skip at the start.
    duration: Seconds to read after `offset`; `None` reads to the end.
    margin: Extra seconds read after `offset + duration` (for a resampler's context).

  Returns:
    (waveform, sample_rate): float32 [n] in [-1, 1] and the file's rate in Hz. The
    waveform may be shorter than asked when the file is.

  Raises:
    AudioDecodeError: the file is missing, empty, not decodable, truncated (a WAV whose
      data chunk runs past the end of the file), has no samples, or holds NaN or infinite
      samples. The message names the file.
  """
  with _open(path) as f:
    rate = int(f.samplerate)
    if rate <= 0:
      raise AudioDecodeError(f"{path}: invalid sample rate {rate} Hz in the header.")
    if f.frames == 0:
      raise AudioDecodeError(f"{path}: holds no audio samples (0 frames).")
    start = int(round(offset * rate))
    if f.frames > 0 and start >= f.frames:
      raise AudioDecodeError(
          f"{path}: is {f.frames / rate:.3f} s long, shorter than the offset "
          f"{offset} s; expected the note to start before the offset.")
    frames = -1 if duration is None else int(np.ceil((duration + margin) * rate))
    try:
      if start:
        f.seek(start)
      data = f.read(frames=frames, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as e:
      raise AudioDecodeError(
          f"{path}: decoding failed part-way (is the file truncated?): {e}") from e
  if data.shape[0] == 0:
    raise AudioDecodeError(f"{path}: holds no audio samples after offset {offset} s.")
  wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
  if not np.all(np.isfinite(wave)):
    bad = int(np.count_nonzero(~np.isfinite(wave)))
    raise AudioDecodeError(
        f"{path}: holds {bad} NaN or infinite samples; expected finite audio.")
  return np.ascontiguousarray(wave, dtype=np.float32), rate


def write_wav(path: str, waveform: np.ndarray, sample_rate: int,
              overwrite: bool = False) -> None:
  """Writes a mono float waveform as 16-bit PCM WAV.

  Args:
    path: Output path; its folder must exist.
    waveform: float [n], clipped to [-1, 1].
    sample_rate: Rate in Hz.
    overwrite: Replace an existing file; otherwise an existing file is an error.

  Raises:
    FileExistsError: `path` exists and `overwrite` is false.
  """
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; refusing to overwrite it.")
  soundfile.write(path, np.clip(np.asarray(waveform, np.float32), -1.0, 1.0),
                  int(sample_rate), subtype="PCM_16", format="WAV")
