"""The numbers that turn a note into a log-mel example (SPEC section 1)."""

import dataclasses
import math
import sys


@dataclasses.dataclass(frozen=True)
class AudioConfig:
  """Front-end settings. The defaults follow the paper's text.

  Attributes:
    sample_rate: Rate every note is resampled to, in Hz.
    n_fft: STFT window and FFT length in samples (Hann, 92.9 ms at 22,050 Hz).
    hop_length: STFT hop in samples (11.6 ms at 22,050 Hz).
    n_mels: Number of Slaney-style mel bands.
    fmin: Lowest mel band edge in Hz.
    fmax: Highest mel band edge in Hz.
    offset: Seconds skipped at the start of each note before the segment.
    duration: Length of the analysed segment in seconds; shorter notes are zero-padded.
    n_frames: Number of STFT frames kept; `None` means floor(duration * rate / hop).
    log_floor: Added to the mel power before the natural log.
    silence_threshold: A segment whose peak absolute amplitude is below this is silent.
  """

  sample_rate: int = 22050
  n_fft: int = 2048
  hop_length: int = 256
  n_mels: int = 256
  fmin: float = 27.0
  fmax: float = 11000.0
  offset: float = 0.0
  duration: float = 0.5
  n_frames: int | None = None
  log_floor: float = 1e-6
  silence_threshold: float = 1e-4

  def __post_init__(self):
    problems = []
    if self.sample_rate <= 0:
      problems.append(f"sample_rate={self.sample_rate} (expected > 0)")
    if self.n_fft <= 0 or self.n_fft % 2:
      problems.append(f"n_fft={self.n_fft} (expected a positive even number)")
    if self.hop_length <= 0:
      problems.append(f"hop_length={self.hop_length} (expected > 0)")
    if self.n_mels <= 0:
      problems.append(f"n_mels={self.n_mels} (expected > 0)")
    if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
      problems.append(
          f"fmin={self.fmin}, fmax={self.fmax} (expected 0 <= fmin < fmax <= "
          f"sample_rate/2 = {self.sample_rate / 2})")
    if self.offset < 0:
      problems.append(f"offset={self.offset} (expected >= 0)")
    if self.duration <= 0:
      problems.append(f"duration={self.duration} (expected > 0)")
    if self.log_floor <= 0:
      problems.append(f"log_floor={self.log_floor} (expected > 0)")
    if self.n_frames is not None and not 0 < self.n_frames <= self.max_frames:
      problems.append(
          f"n_frames={self.n_frames} (expected 1..{self.max_frames} for a "
          f"{self.duration} s segment)")
    if problems:
      raise ValueError("Invalid AudioConfig: " + "; ".join(problems))

  @property
  def segment_samples(self) -> int:
    """Samples in the analysed segment at `sample_rate`."""
    return int(round(self.duration * self.sample_rate))

  @property
  def max_frames(self) -> int:
    """Centred STFT frames whose centre lies inside the segment."""
    return 1 + (int(round(self.duration * self.sample_rate)) - 1) // self.hop_length

  @property
  def frames(self) -> int:
    """Number of frames in one example (43 with the defaults)."""
    if self.n_frames is not None:
      return self.n_frames
    return int(math.floor(self.duration * self.sample_rate / self.hop_length))

  @property
  def n_bins(self) -> int:
    """Number of STFT frequency bins."""
    return self.n_fft // 2 + 1

  @property
  def shape(self) -> tuple[int, int]:
    """Shape of one example: (frames, n_mels)."""
    return (self.frames, self.n_mels)

  def to_dict(self) -> dict:
    """The settings as JSON-ready values (prepared.json, model.json, exports)."""
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> "AudioConfig":
    """The inverse of `to_dict`; an unknown setting is a ValueError naming it."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"Unknown AudioConfig fields {unknown}; known: {sorted(known)}")
    return cls(**values)

  @classmethod
  def authors(cls) -> "AudioConfig":
    """The settings of the authors' released code: hop 512, 0.2 s offset, 21 frames.

    Their log floor is machine epsilon (log(eps + x)).
    """
    return cls(hop_length=512, offset=0.2, n_frames=21, log_floor=sys.float_info.epsilon)


PAPER = AudioConfig()
