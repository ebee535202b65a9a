"""What a training run does: one frozen dataclass, built from bin/train's flags."""

import dataclasses
import glob
import json
import math
import os

from tfgmvae.audio.config import AudioConfig
from tfgmvae.data import paths
from tfgmvae.data.sources import DATASETS, NSYNTH_INSTRUMENT_FIELDS
from tfgmvae.model.config import KINDS

STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
CACHES = ("auto", "memory", "disk")


MAX_SEED = 2**32 - 1   # (TensorFlow's and NumPy's seeds are 32-bit)


def warm_start_checkpoint(path: str) -> str | None:
  """The checkpoint `--warm_start=path` names: `path` itself when it is one (a prefix
  such as RUN/best/ckpt-N), else the newest in `path`/checkpoints (another run's
  directory); None if there is none. Absolute."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if os.path.isfile(path + ".index"):
    return os.path.abspath(path)
  found = tf.train.latest_checkpoint(os.path.join(path, "checkpoints"))
  return os.path.abspath(found) if found else None


def _tf_config_problems(text: str) -> list[str]:
  """Why the TF_CONFIG environment variable cannot place this worker in its cluster."""
  expected = ('expected e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
              '"task": {"type": "worker", "index": 0}}')
  try:
    tf_config = json.loads(text)
  except ValueError as e:
    return [f"TF_CONFIG is not JSON ({e}); {expected}"]
  cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
  task = tf_config.get("task") if isinstance(tf_config, dict) else None
  if not isinstance(cluster, dict) or not cluster or not all(
      isinstance(v, list) and v for v in cluster.values()):
    return [f"TF_CONFIG: no \"cluster\" of task types and their addresses; {expected}"]
  if not isinstance(task, dict) or task.get("type") not in cluster:
    return [f"TF_CONFIG: \"task\" {task!r} does not name a task type of the cluster "
            f"({', '.join(cluster)}); {expected}"]
  index, count = task.get("index"), len(cluster[task["type"]])
  if not isinstance(index, int) or not 0 <= index < count:
    return [f"TF_CONFIG: task index {index!r} is not one of the {count} "
            f"{task['type']} address(es) (0..{count - 1})"]
  return []


class ConfigError(ValueError):
  """A setting or a combination of settings is impossible; the message says which."""


def _source_may_exist(path: str) -> bool:
  """False only for a local path (or glob) that names nothing; URLs are checked when the
  data is prepared."""
  if paths.is_url(path) or os.path.exists(path):
    return True
  return any(c in path for c in "*?[") and bool(glob.glob(path))


def _audio_problems(prepared_dir: str, audio: AudioConfig, name: str) -> list[str]:
  """Why prepared data does not fit the command's audio settings ([] if it does).

  The model takes its input shape and front end from the prepared data, so audio flags
  that differ from it would be silently ignored (and recorded in flags.txt as if used).
  """
  path = os.path.join(prepared_dir, "prepared.json")
  try:
    with open(path, encoding="utf-8") as f:
      recorded = AudioConfig.from_dict(json.load(f)["audio"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    return [f"{path}: unreadable ({e}); expected the prepared.json of bin/prepare_dataset"]
  differ = [f"--{k}: prepared {v}, this command {getattr(audio, k)}"
            for k, v in recorded.to_dict().items() if getattr(audio, k) != v]
  if not differ:
    return []
  return [f"{name} was prepared with other audio settings than this command's ("
          + "; ".join(differ) + "): give the audio flags it was prepared with "
          "(--audio_preset and the flags named), or prepare the data again"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Settings of one run (see bin/train for each flag's meaning).

  The data is either an existing prepared folder (`prepared_dir`) or a source
  (`dataset` + `data_path`) that the run prepares into RUN_DIR/data on its first start.
  """
  run_dir: str
  dataset: str = "rendered"
  data_path: str = ""
  prepared_dir: str = ""
  model: str = "mgmvae"
  label_fraction: float = 1.0
  epochs: int = 10000
  batch_size: int = 128
  learning_rate: float = 1e-4
  amsgrad: bool = False
  seed: int = 0
  patience: int = 1000
  validation_every: int = 1
  keep_checkpoints: int = 3
  checkpoint_every: int = 1
  warm_start: str = ""
  strategy: str = "default"
  cpu_devices: int = 0
  precision: str = "float32"
  jit_compile: bool = False
  latent_dim: int = 16
  filters: int = 512
  hidden: int = 512
  pitch_classifier: bool = True
  timbre_adversary: float = 0.0
  bn_momentum: float = 0.99
  media_every: int = 10
  embeddings_every: int = 0
  griffin_lim_iters: int = 32
  validation_fraction: float = 0.1
  on_bad_file: str = "error"
  nsynth_instrument_field: str = "instrument_family_str"
  cache: str = "auto"
  audio: AudioConfig = AudioConfig()
  verbose: int = 1

  def validate(self) -> "TrainConfig":
    """Checks every setting and combination before any work starts.

    Raises:
      ConfigError: listing every problem found.
    """
    p = []
    if not self.run_dir:
      p.append("--run_dir is required: the folder this run writes into (created, or "
               "resumed when it exists)")
    elif where := paths.folder_problem(self.run_dir):
      p.append(f"--run_dir={self.run_dir}: cannot be written: {where}")
    if not self.prepared_dir:
      if self.dataset not in DATASETS:
        p.append(f"--dataset={self.dataset!r}: expected one of {', '.join(DATASETS)}")
      if not self.data_path:
        p.append("--data_path is required unless --prepared_dir names prepared data")
      elif not _source_may_exist(self.data_path) and not (self.run_dir and os.path.isfile(
          os.path.join(self.run_dir, "data", "prepared.json"))):
        p.append(f"--data_path={self.data_path}: no such file or folder"
                 + paths.tilde_hint(self.data_path))
    elif not os.path.isfile(os.path.join(self.prepared_dir, "prepared.json")):
      p.append(f"--prepared_dir={self.prepared_dir}: no prepared.json there (expected a "
               "folder written by bin/prepare_dataset)")
    else:
      p += _audio_problems(self.prepared_dir, self.audio, f"--prepared_dir={self.prepared_dir}")
    if not self.prepared_dir and self.run_dir and os.path.isfile(
        os.path.join(self.run_dir, "data", "prepared.json")):
      p += _audio_problems(os.path.join(self.run_dir, "data"), self.audio,
                           f"{os.path.join(self.run_dir, 'data')} (this run's data)")
    if self.model not in KINDS:
      p.append(f"--model={self.model!r}: expected one of {', '.join(KINDS)}")
    if not 0.0 <= self.label_fraction <= 1.0:
      p.append(f"--label_fraction={self.label_fraction}: expected a number in [0, 1]")
    if self.verbose not in (0, 1, 2):
      p.append(f"--verbose={self.verbose}: expected 0 (quiet), 1 (progress bar and a line "
               "per epoch) or 2 (a line per epoch)")
    for name in ("epochs", "batch_size", "validation_every", "keep_checkpoints",
                 "checkpoint_every", "latent_dim", "filters", "hidden", "griffin_lim_iters"):
      if getattr(self, name) < 1:
        p.append(f"--{name}={getattr(self, name)}: expected a positive integer")
    for name in ("patience", "media_every", "embeddings_every", "cpu_devices"):
      if getattr(self, name) < 0:
        p.append(f"--{name}={getattr(self, name)}: expected 0 or more")
    if not (math.isfinite(self.timbre_adversary) and self.timbre_adversary >= 0):
      p.append(f"--timbre_adversary={self.timbre_adversary}: expected a weight >= 0 (0 "
               "turns the pitch adversary off)")
    if not 0.0 <= self.bn_momentum < 1.0:
      p.append(f"--bn_momentum={self.bn_momentum}: expected a number in [0, 1) (0.9 is "
               "the authors' PyTorch BatchNorm, 0.99 Keras's default)")
    if not 0 < self.learning_rate < math.inf:
      p.append(f"--learning_rate={self.learning_rate}: expected a finite number > 0")
    if not 0 <= self.seed <= MAX_SEED:
      p.append(f"--seed={self.seed}: expected an integer in 0..{MAX_SEED}")
    if self.strategy not in STRATEGIES:
      p.append(f"--strategy={self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if self.strategy == "multi_worker" and not os.environ.get("TF_CONFIG"):
      p.append("--strategy=multi_worker needs the TF_CONFIG environment variable (the "
               "cluster and this worker's index)")
    elif self.strategy == "multi_worker":
      p += _tf_config_problems(os.environ["TF_CONFIG"])
    if (self.strategy == "multi_worker" and not self.prepared_dir and not
        os.path.isfile(os.path.join(self.run_dir, "data", "prepared.json"))):
      p.append("--strategy=multi_worker needs prepared data: run bin/prepare_dataset "
               "first and pass --prepared_dir (the workers must not all prepare into "
               "RUN_DIR/data at once)")
    if self.cpu_devices and self.strategy != "mirrored":
      p.append("--cpu_devices splits the CPU into logical devices for "
               "--strategy=mirrored only")
    if self.precision not in PRECISIONS:
      p.append(f"--precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
    elif self.precision == "mixed_float16":
      if not _gpus():
        p.append("--precision=mixed_float16 needs a GPU; on CPUs use mixed_bfloat16")
      if self._several_devices():
        # Keras's loss-scaled update (a cond around the wrapped optimizer's apply) fails
        # under the merge_call of this model's cross-replica step.
        p.append(f"--precision=mixed_float16 trains on one device only, not with "
                 f"--strategy={self.strategy} over several: use mixed_bfloat16 (GPUs "
                 "from Ampere on) or float32 there")
    if self.jit_compile and self._several_devices():
      # XLA reaches for another replica's variables (mirrored) and has no kernel for
      # the collective gather of a multi-worker step.
      p.append(f"--jit_compile trains on one device only, not with --strategy="
               f"{self.strategy} over several: XLA cannot compile this model's "
               "cross-replica step; leave --jit_compile out there")
    if self.warm_start and self.run_dir and (
        os.path.abspath(self.warm_start) == os.path.abspath(self.run_dir)):
      p.append("--warm_start names this run itself; to continue a run, run the same "
               "command again without --warm_start")
    elif self.warm_start:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      going_on = self.run_dir and tf.train.latest_checkpoint(
          os.path.join(self.run_dir, "checkpoints"))   # (then it needs it no more)
      if not going_on and warm_start_checkpoint(self.warm_start) is None:
        p.append(f"--warm_start={self.warm_start}: no checkpoint there (expected another "
                 "run's directory, or a checkpoint such as RUN/best/ckpt-N)")
    if self.on_bad_file not in ("error", "skip"):
      p.append(f"--on_bad_file={self.on_bad_file!r}: expected 'error' or 'skip'")
    if self.nsynth_instrument_field not in NSYNTH_INSTRUMENT_FIELDS:
      p.append(f"--nsynth_instrument_field={self.nsynth_instrument_field!r}: expected one "
               f"of {', '.join(NSYNTH_INSTRUMENT_FIELDS)}")
    if not 0.0 < self.validation_fraction < 1.0:
      p.append(f"--validation_fraction={self.validation_fraction}: expected (0, 1)")
    if self.cache not in CACHES:
      p.append(f"--cache={self.cache!r}: expected one of {', '.join(CACHES)}")
    if p:
      raise ConfigError("Invalid training settings:\n  - " + "\n  - ".join(p))
    return self

  def _several_devices(self) -> bool:
    """Whether --strategy spreads the steps over several devices or workers: mirrored
    over --cpu_devices when given (else the GPUs), multi_worker over the local GPUs of
    each of TF_CONFIG's tasks."""
    if self.strategy == "mirrored":
      return (self.cpu_devices or len(_gpus())) > 1
    if self.strategy == "multi_worker":
      try:
        cluster = json.loads(os.environ.get("TF_CONFIG", ""))["cluster"]
        tasks = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
      except (ValueError, TypeError, KeyError, AttributeError):
        return True   # (refused anyway, for its TF_CONFIG)
      return tasks > 1 or len(_gpus()) > 1
    return False


def _gpus() -> list:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.config.list_physical_devices("GPU")
