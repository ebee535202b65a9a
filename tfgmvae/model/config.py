"""Settings of the MGMVAE / MVAE networks (SPEC section 2)."""

import dataclasses
import math

KINDS = ("mgmvae", "mvae")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shape and priors of the model. Defaults are the paper's.

  Attributes:
    num_pitches: M, pitch classes (components of p(z_p | y_p)).
    num_instruments: K, instrument classes (components of p(z_t) for MGMVAE).
    kind: 'mgmvae' (Gaussian-mixture timbre prior) or 'mvae' (N(0, I) timbre prior and
      an auxiliary instrument classifier on z_t).
    frames: Time frames of the input log-mel (43).
    n_mels: Mel bands of the input (256); they are the convolutions' channels.
    latent_dim: L, size of z_p and of z_t (16).
    filters: Channels of both convolutions of each encoder (512).
    hidden: Width of the dense layers (512).
    kernel_size: Convolution kernel length along time (3, 'valid' padding).
    log_sigma_p: log of the fixed std of the pitch components (-2).
    log_sigma_t: log of the fixed std of the timbre components (0).
    pitch_classifier: The authors' linear pitch classifier on z_p (on by default).
    aux_hidden: Width of MVAE's auxiliary classifier (128-128).
    synchronized_bn: Batch statistics across replicas (set under a multi-replica strategy).
    bn_momentum: Keras's BatchNormalization momentum: each training step moves the
      moving mean and variance (used in inference, so in validation too) by
      (1 - momentum) towards the batch's. 0.99 is Keras's default; the authors' PyTorch
      BatchNorm1d (momentum 0.1) is 0.9 here, which tracks weights that change fast
      more closely. It changes no training step, only the inference statistics.
    timbre_adversary: Beyond the paper; 0 (the default) turns it off. Weight lambda of a
      pitch adversary on z_t: an MLP (aux_hidden-aux_hidden) learns to predict the pitch
      from the posterior mean of z_t, through a gradient-reversal layer, so the timbre
      encoder is pushed (with weight lambda) to leave pitch out of z_t and the decoder
      has to take it from z_p.
  """
  num_pitches: int
  num_instruments: int
  kind: str = "mgmvae"
  frames: int = 43
  n_mels: int = 256
  latent_dim: int = 16
  filters: int = 512
  hidden: int = 512
  kernel_size: int = 3
  log_sigma_p: float = -2.0
  log_sigma_t: float = 0.0
  pitch_classifier: bool = True
  aux_hidden: int = 128
  synchronized_bn: bool = False
  bn_momentum: float = 0.99
  timbre_adversary: float = 0.0

  def __post_init__(self):
    problems = []
    if self.kind not in KINDS:
      problems.append(f"kind={self.kind!r} (expected one of {', '.join(KINDS)})")
    for name in ("num_pitches", "num_instruments", "frames", "n_mels", "latent_dim",
                 "filters", "hidden", "kernel_size", "aux_hidden"):
      if getattr(self, name) < 1:
        problems.append(f"{name}={getattr(self, name)} (expected >= 1)")
    if self.frames - 2 * (self.kernel_size - 1) < 1:
      problems.append(f"frames={self.frames} is too short for two 'valid' convolutions of "
                      f"kernel {self.kernel_size}")
    if not (math.isfinite(self.timbre_adversary) and self.timbre_adversary >= 0):
      problems.append(f"timbre_adversary={self.timbre_adversary} (expected a finite "
                      "weight >= 0)")
    if not 0.0 <= self.bn_momentum < 1.0:
      problems.append(f"bn_momentum={self.bn_momentum} (expected a number in [0, 1))")
    for name in ("log_sigma_p", "log_sigma_t"):
      if not math.isfinite(getattr(self, name)):
        problems.append(f"{name}={getattr(self, name)} (expected a finite number)")
    if problems:
      raise ValueError("Invalid ModelConfig: " + "; ".join(problems))

  @property
  def conv_frames(self) -> int:
    """Frames after the encoder's two valid convolutions (39 with the defaults)."""
    return self.frames - 2 * (self.kernel_size - 1)

  def to_dict(self) -> dict:
    """The settings as JSON-ready values for model.json and exports."""
    out = dataclasses.asdict(self)
    # Settings at the value the code had before they existed are left out, so older
    # tfgmvae reads the file too.
    if not self.timbre_adversary:
      del out["timbre_adversary"]
    if self.bn_momentum == 0.99:
      del out["bn_momentum"]
    return out

  @classmethod
  def from_dict(cls, values: dict) -> "ModelConfig":
    """The inverse of `to_dict` (settings it left out take their defaults)."""
    return cls(**values)
