"""Loading a trained run and exporting it as a versioned SavedModel for TF Serving.

`load_run` rebuilds a run's model from RUN_DIR/model.json and restores its weights (the
best checkpoint by validation ELBO, or the latest); `build_module` wraps it in a
`ServingModule`; `export` writes `EXPORT_DIR/<version>/` in TF Serving's layout, with a
new integer version each time. An export is written into a temporary folder beside its
final place and renamed into it, so a version folder is either complete or absent, and
an existing version is never overwritten (an export that finds its next version taken
by another one finishing meanwhile takes the version after).
"""

import dataclasses
import json
import os
import shutil

import numpy as np
import tensorflow as tf

from tfgmvae.audio import spectral
from tfgmvae.audio.config import AudioConfig
from tfgmvae.data.dataset import DataError, PipelineConfig, data_errors, make_dataset
from tfgmvae.data.paths import folder_problem
from tfgmvae.data.prepare import Prepared, PrepareError
from tfgmvae.model import GMVAE, ModelConfig
from tfgmvae.serving.module import ServingModule
from tfgmvae.train.checkpoints import read_flags

MODEL_FILE = "model.json"
METADATA_FILE = os.path.join("assets.extra", "tfgmvae.json")
CHECKPOINTS = {"best": "best", "latest": "checkpoints"}
MAX_VERSION = 2**63 - 1            # TF Serving parses version folders as int64
MAX_GRIFFIN_LIM_ITERS = 10_000


class ExportError(ValueError):
  """A run cannot be loaded or exported; the message names the file and the fix."""


def _check_griffin_lim_iters(iters: int) -> None:
  if not 1 <= iters <= MAX_GRIFFIN_LIM_ITERS:
    raise ExportError(f"--griffin_lim_iters={iters}: expected 1..{MAX_GRIFFIN_LIM_ITERS}.")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
  """What to export.

  Attributes:
    run_dir: The training run.
    export_dir: The model's base folder; versions go into numbered sub-folders.
    checkpoint: 'best' (best validation ELBO), 'latest', or a checkpoint path.
    griffin_lim_iters: Griffin-Lim iterations of the audio outputs.
    version: The version number to write (None: one more than the highest present).
  """
  run_dir: str
  export_dir: str
  checkpoint: str = "best"
  griffin_lim_iters: int = 32
  version: int | None = None

  def __post_init__(self):
    if self.version is not None and not 1 <= self.version <= MAX_VERSION:
      raise ExportError(f"--version={self.version}: expected an integer in 1..{MAX_VERSION} "
                        "(TF Serving reads versions as 64-bit integers).")
    _check_griffin_lim_iters(self.griffin_lim_iters)
    if not self.export_dir:
      raise ExportError("--export_dir is empty; expected the model's base folder.")
    if os.path.exists(self.export_dir) and not os.path.isdir(self.export_dir):
      raise ExportError(f"--export_dir={self.export_dir}: is a file; expected the model's "
                        "base folder (versions go inside).")
    inside = _inside_version(self.export_dir)
    if inside:
      raise ExportError(f"--export_dir={self.export_dir}: {inside}; expected the model's "
                        f"base folder, such as "
                        f"{os.path.dirname(os.path.normpath(self.export_dir)) or '.'} "
                        "(versions go inside it, as TF Serving reads them).")


def _inside_version(export_dir: str) -> str | None:
  """Why `export_dir` is a version folder of an export rather than a base folder (an
  export written there would nest a version inside a version); None if it is not."""
  if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
    return "is itself an exported version (it holds saved_model.pb)"
  path = os.path.normpath(export_dir)
  name, parent = os.path.basename(path), os.path.dirname(path) or "."
  if not (name.isascii() and name.isdigit()):
    return None
  if any(os.path.isfile(os.path.join(parent, str(v), "saved_model.pb"))
         for v in versions(parent)):
    return f"is named like a version folder of {parent}, which holds exported versions"
  return None


@dataclasses.dataclass(frozen=True)
class RunInfo:
  """What a run's model needs besides its weights."""
  model: ModelConfig
  instruments: tuple[str, ...]
  pitches: tuple[int, ...]
  audio: AudioConfig
  log_mel_min: float
  log_mel_max: float
  prepared_dir: str
  pitch_ranges: dict | None = None   # instrument -> [lowest, highest] training pitch
  note_peaks: tuple | None = None    # Prepared.note_peaks
  index_sha256: str | None = None    # the prepared data's (None: recorded before it was)
  label_fraction: float | None = None   # the run's N (None: recorded nowhere)
  warm_started_from: str | None = None  # the checkpoint a --warm_start run began from


def run_metadata(prepared: Prepared) -> dict:
  """The prepared data's facts a run records in model.json (so export needs no data)."""
  return {"instruments": list(prepared.instruments), "pitches": list(prepared.pitches),
          "audio": prepared.audio.to_dict(), "log_mel_min": prepared.log_mel_min,
          "log_mel_max": prepared.log_mel_max, "pitch_ranges": prepared.pitch_ranges(),
          "note_peaks": prepared.note_peaks, "index_sha256": prepared.index_sha256}


def read_run(run_dir: str) -> RunInfo:
  """Reads RUN_DIR/model.json (and the prepared data, for runs that predate its facts)."""
  path = os.path.join(run_dir, MODEL_FILE)
  if not os.path.isfile(path):
    raise ExportError(f"{path}: not found; expected a run directory written by bin/train.")
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (ValueError, OSError) as e:
    raise ExportError(f"{path}: cannot be read as the run's record ({e}); expected the "
                      "JSON file bin/train writes.") from e
  prepared_dir = meta.get("prepared_dir", "")
  if not os.path.isdir(prepared_dir) and os.path.isdir(os.path.join(run_dir, "data")):
    prepared_dir = os.path.join(run_dir, "data")
  if "instruments" not in meta:
    try:
      meta |= run_metadata(Prepared.load(prepared_dir))
    except PrepareError as e:
      raise ExportError(f"{path} does not record the vocabularies and its prepared data "
                        f"cannot be read: {e}") from e
  if "pitch_ranges" not in meta:      # a run recorded before model.json held them
    meta["pitch_ranges"] = None        # (then nothing warns about a pitch's range)
    try:    # advisory only: no failure to read them may stop the run from opening
      prepared = Prepared.load(prepared_dir)
      if list(prepared.instruments) == list(meta["instruments"]):   # still its data
        meta["pitch_ranges"] = prepared.pitch_ranges()
    except Exception:  # pylint: disable=broad-except
      pass
  config = dict(meta["model"], synchronized_bn=False)
  return RunInfo(model=ModelConfig.from_dict(config),
                 instruments=tuple(meta["instruments"]),
                 pitches=tuple(int(p) for p in meta["pitches"]),
                 audio=AudioConfig.from_dict(meta["audio"]),
                 log_mel_min=float(meta["log_mel_min"]),
                 log_mel_max=float(meta["log_mel_max"]), prepared_dir=prepared_dir,
                 pitch_ranges=meta["pitch_ranges"],
                 note_peaks=tuple(meta["note_peaks"]) if meta.get("note_peaks") else None,
                 index_sha256=meta.get("index_sha256"),
                 label_fraction=_label_fraction(run_dir, meta),
                 warm_started_from=meta.get("warm_started_from"))


def _label_fraction(run_dir: str, meta: dict) -> float | None:
  """The run's share N of instrument labels: from model.json, or from the flags.txt of
  runs whose model.json predates that field; None if neither records it."""
  if "label_fraction" in meta:
    return float(meta["label_fraction"])
  try:
    return float(read_flags(run_dir)["label_fraction"])
  except (KeyError, ValueError, OSError):
    return None


def not_the_runs_data(info: RunInfo, prepared: Prepared) -> str | None:
  """What differs between a run's record and `prepared` (its notes and split, or its
  normalisation), if it is not the data the run trained on; None if it is (as far as
  the record says: one written before the index's checksum was kept has only the
  normalisation)."""
  if info.index_sha256 and info.index_sha256 != prepared.index_sha256:
    return "its notes or their split (index.csv) differ"
  if (info.log_mel_min, info.log_mel_max) != (prepared.log_mel_min, prepared.log_mel_max):
    return "its log-mel normalisation differs"
  return None


def checkpoint_path(run_dir: str, checkpoint: str = "best") -> str:
  """The checkpoint file prefix that `checkpoint` ('best', 'latest' or a path) means."""
  if checkpoint in CHECKPOINTS:
    folder = os.path.join(run_dir, CHECKPOINTS[checkpoint])
    path = tf.train.latest_checkpoint(folder)
    if path is None:
      raise ExportError(f"{folder}: no checkpoint; has {run_dir} trained for an epoch?")
    return path
  if not tf.io.gfile.exists(checkpoint + ".index"):
    raise ExportError(f"--checkpoint={checkpoint}: expected 'best', 'latest' or the "
                      "prefix of a checkpoint (a path whose .index file exists).")
  other = _other_run(run_dir, checkpoint)
  if other:
    raise ExportError(f"--checkpoint={checkpoint}: {other}")
  return checkpoint


def checkpoint_owner(checkpoint: str) -> str | None:
  """The run directory a checkpoint prefix (RUN/checkpoints/ckpt-N or RUN/best/ckpt-N)
  was saved in, if that folder holds a run's model.json; None for a copy elsewhere."""
  owner = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))
  return owner if os.path.isfile(os.path.join(owner, MODEL_FILE)) else None


def _other_run(run_dir: str, checkpoint: str) -> str | None:
  """Why checkpoint `checkpoint`, when it is in another run's checkpoints/ or best/,
  cannot stand for `run_dir`'s model: that run's model, vocabularies, audio settings or
  normalisation differ (its weights would be served under this run's names and
  scales); None if it is this run's, a copy outside any run, or the same in all that."""
  owner = checkpoint_owner(checkpoint)
  if owner is None or os.path.realpath(owner) == os.path.realpath(run_dir):
    return None
  try:
    theirs, ours = read_run(owner), read_run(run_dir)
  except (ExportError, OSError, ValueError, KeyError):
    return None   # (this run's own record is read again, with its errors, by the caller)
  fields = ("model", "instruments", "pitches", "audio", "log_mel_min", "log_mel_max")
  differ = [f for f in fields if getattr(theirs, f) != getattr(ours, f)]
  if not differ:
    return None
  return (f"belongs to the run {owner}, whose {', '.join(differ)} "
          f"{'differs' if len(differ) == 1 else 'differ'} from "
          f"{run_dir}'s; use --run_dir={owner} for it.")


def load_run(run_dir: str, checkpoint: str = "best") -> tuple[GMVAE, RunInfo, str]:
  """The run's model with restored weights, its facts, and the checkpoint used."""
  info = read_run(run_dir)
  checkpoint_path(run_dir, checkpoint)   # (a run without one is refused before building)
  model = GMVAE(info.model).build_for()
  for attempt in range(3):
    # Chosen only now: a run still training may have replaced its newest checkpoint
    # while the model was built (and may again while it is read: then the next one).
    path = checkpoint_path(run_dir, checkpoint)
    try:
      tf.train.Checkpoint(model=model.weights_checkpoint()).read(path) \
          .assert_existing_objects_matched().expect_partial()
      return model, info, path
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      gone = not tf.io.gfile.exists(path + ".index")
      if checkpoint in CHECKPOINTS and attempt < 2 and gone:
        continue
      if gone:
        raise ExportError(f"{path}: was removed while it was read (is {run_dir} still "
                          "training? It keeps only its newest checkpoints); run the "
                          "command again.") from e
      raise ExportError(f"{path}: does not hold the weights of the model in "
                        f"{os.path.join(run_dir, MODEL_FILE)}: {e}") from e


def training_codes(model: GMVAE, info: RunInfo, purpose: str, batch_size: int = 256):
  """The run's training notes' z_t posterior means [N, L] and instrument labels [N] (all
  of them, whatever the run's N).

  Raises:
    ExportError: the training data cannot be read; the message starts with `purpose`.
  """
  try:
    prepared = Prepared.load(info.prepared_dir)
  except PrepareError as e:
    raise ExportError(f"{purpose} come from its training data, which cannot be read: "
                      f"{e}") from e
  codes, labels = [], []
  try:
    with data_errors(prepared):
      for batch in make_dataset(prepared, "train", PipelineConfig(
          batch_size=batch_size, shuffle=False, cache="")):
        codes.append(model.encode(batch["mel"], training=False)["z_timbre_mean"].numpy())
        labels.append(batch["instrument"].numpy())
  except DataError as e:
    raise ExportError(f"{purpose} come from its training data: {e}") from None
  return np.concatenate(codes), np.concatenate(labels)


def class_centres(model: GMVAE, info: RunInfo, batch_size: int = 256):
  """Mean and std of the training notes' z_t posterior means per instrument, [K, L] each.

  MVAE's timbre prior has no per-instrument components; these play their part.
  """
  codes, labels = training_codes(model, info, "an MVAE's per-instrument timbre centres",
                                 batch_size)
  return centres_from_codes(codes, labels, info.model.num_instruments)


def matched_components(prior, codes, labels, num_instruments: int) -> dict[int, int]:
  """{component: instrument}: each component of an MGMVAE's timbre prior named by
  Hungarian matching of the components its notes' codes fall in (`codes` [N, L]) to
  their instruments (`labels` [N]). A run trained without labels (N = 0) learns its
  components in no particular order; this is how `bin/evaluate` and the export name
  them (on the training notes)."""
  from tfgmvae.evaluate import stats   # pylint: disable=g-import-not-at-top  (scipy: N = 0 only)
  assigned = prior.log_responsibilities(tf.constant(codes, tf.float32)).numpy().argmax(-1)
  return stats.match_clusters(stats.contingency(assigned, labels, prior.num_components,
                                                num_instruments))


def centres_from_codes(codes, labels, num_classes: int):
  """Per-class mean and std of codes [N, L] with labels [N]: [K, L] each (0 and 1 for a
  class without notes; std 1 for a class with one note)."""
  latent = codes.shape[-1]
  means = np.zeros([num_classes, latent], np.float32)
  scales = np.ones([num_classes, latent], np.float32)
  for i in range(num_classes):
    rows = codes[labels == i]
    if len(rows):
      means[i] = rows.mean(axis=0)
    if len(rows) > 1:
      scales[i] = rows.std(axis=0)
  return means, scales


def build_module(run_dir: str, checkpoint: str = "best",
                 griffin_lim_iters: int = 32) -> tuple[ServingModule, dict]:
  """A `ServingModule` of a trained run, and the metadata an export records.

  Raises:
    ExportError: griffin_lim_iters < 1, or the run cannot be loaded.
  """
  _check_griffin_lim_iters(griffin_lim_iters)
  model, info, path = load_run(run_dir, checkpoint)
  means = scales = order = None
  unlabelled = info.label_fraction == 0.0
  if info.model.kind == "mvae":
    means, scales = class_centres(model, info)
  elif unlabelled:
    codes, labels = training_codes(
        model, info, "the instruments of the timbre components of an MGMVAE trained "
        "without labels (N = 0)")
    component = {i: c for c, i in matched_components(
        model.timbre_prior, codes, labels, info.model.num_instruments).items()}
    order = [component[i] for i in range(info.model.num_instruments)]
    means = tf.gather(model.timbre_prior.means, order).numpy()
  # Without labels the auxiliary classifier (MVAE) never trained and the components
  # (MGMVAE) are in no particular order: notes are named by the nearest centre instead.
  module = ServingModule(model, info.instruments, info.pitches, info.audio,
                         info.log_mel_min, info.log_mel_max, means, scales,
                         griffin_lim_iters, name_by_centres=unlabelled)
  naming = ("centres" if unlabelled else
            "components" if info.model.kind == "mgmvae" else "classifier")
  metadata = {
      "format": "tfgmvae-export/1", "run_dir": os.path.abspath(run_dir),
      "checkpoint": os.path.abspath(path), "model": info.model.to_dict(),
      "instruments": list(info.instruments), "pitches": list(info.pitches),
      "audio": info.audio.to_dict(), "log_mel_min": info.log_mel_min,
      "log_mel_max": info.log_mel_max, "griffin_lim_iters": griffin_lim_iters,
      "mel_inversion_iters": spectral.MEL_INVERSION_ITERS,
      "output_sample_rate": info.audio.sample_rate,
      "output_samples": info.audio.frames * info.audio.hop_length,
      "pitch_ranges": info.pitch_ranges,
      "note_peaks": list(info.note_peaks) if info.note_peaks else None,
      "label_fraction": info.label_fraction, "instrument_naming": naming,
      "timbre_components": order,
      "signatures": sorted(module.SIGNATURES + ("serving_default",))}
  return module, metadata


def versions(export_dir: str) -> list[int]:
  """The integer versions taken under `export_dir` (folders, or stray files with such
  a name), ascending."""
  if not os.path.isdir(export_dir):
    return []
  return sorted(int(n) for n in os.listdir(export_dir) if n.isascii() and n.isdigit())


def _next_version(export_dir: str) -> int:
  """One more than the highest version under `export_dir` (1 for none)."""
  version = max(versions(export_dir), default=0) + 1
  if version > MAX_VERSION:
    raise ExportError(f"{export_dir} holds version {version - 1}, the largest TF Serving "
                      "reads; give a free --version, or another --export_dir.")
  return version


def export(config: ExportConfig, log=print) -> str:
  """Exports a run as `config.export_dir/<version>/`; returns that folder.

  Raises:
    ExportError: the run cannot be loaded, or the version already exists.
  """
  version = config.version if config.version is not None else _next_version(
      config.export_dir)
  final = os.path.join(config.export_dir, str(version))
  if os.path.exists(final):
    hint = ("leave out --version to write the next one" if config.version is not None
            else "move it away, or give a free --version")
    raise ExportError(f"{final} exists; an export is never overwritten: {hint}.")
  where = folder_problem(config.export_dir)
  if where:   # before the model is built
    raise ExportError(f"--export_dir={config.export_dir}: cannot be written: {where}.")
  module, metadata = build_module(config.run_dir, config.checkpoint,
                                  config.griffin_lim_iters)
  os.makedirs(config.export_dir, exist_ok=True)
  tmp = os.path.join(config.export_dir, f".tmp-{version}-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    tf.saved_model.save(module, tmp, signatures=module.signatures(concrete=False))
    os.makedirs(os.path.join(tmp, os.path.dirname(METADATA_FILE)), exist_ok=True)
    while True:
      metadata["version"] = version
      with open(os.path.join(tmp, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
      try:
        os.rename(tmp, final)   # fails if `final` appeared meanwhile: nothing is replaced
        break
      except OSError as e:
        if not os.path.exists(final):
          raise ExportError(f"cannot move the export into {final}: {e}") from e
        if config.version is not None:
          raise ExportError(f"{final} appeared while exporting; it was left as it "
                            "is.") from e
      # Another export took the next version meanwhile: this one takes the one after.
      version = _next_version(config.export_dir)
      final = os.path.join(config.export_dir, str(version))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  log(f"Exported {config.run_dir} ({os.path.basename(metadata['checkpoint'])}) to "
      f"{final}")
  return final
