"""--warm_start: which checkpoint a new run starts from, and why one cannot.

A warm start acts only before a run's first checkpoint; afterwards the run goes on from
its own. What can be told from the other run's records (its model kind and network
sizes, or a run that already has checkpoints being given another source) is refused by
`check_request` before anything is written; the vocabularies need the prepared data
(`vocabulary_mismatch`), and `restore_failure` tries the weights themselves.
"""

import gc
import json
import logging
import os

import tensorflow as tf

from tfgmvae.model import GMVAE, ModelConfig
from tfgmvae.serving.export import MODEL_FILE, checkpoint_owner
from tfgmvae.train.checkpoints import RunStateError, read_flags
from tfgmvae.train.config import TrainConfig, warm_start_checkpoint

# The network sizes both runs must share, as TrainConfig fields (and flags). (Parts that
# one of them lacks, the pitch classifier or the pitch adversary, are left to the restore.)
SIZES = ("latent_dim", "filters", "hidden")


def check_request(config: TrainConfig) -> None:
  """Refuses a --warm_start that cannot act, before the run directory is touched.

  Raises:
    RunStateError: the run already has checkpoints and started from another source
      (or none); the source's run is another model kind or has other network sizes (as
      its model.json records them). (A path without a checkpoint is TrainConfig.validate's
      to refuse.)
  """
  if not config.warm_start:
    return
  latest = tf.train.latest_checkpoint(os.path.join(config.run_dir, "checkpoints"))
  if latest:
    started = started_from(config.run_dir)
    if started and names_checkpoint(config.warm_start, started):
      return   # the command that started it, run again: it goes on from its own
    raise RunStateError(
        f"--warm_start={config.warm_start}: {config.run_dir} already has a checkpoint "
        f"({latest}) and goes on from it; a warm start acts only before a run's first "
        "checkpoint, and this run started from "
        + (started if started else "its own initial weights")
        + ". Leave --warm_start out to go on with this run, or give a new --run_dir to "
        "start a new run from those weights.")
  source = warm_start_checkpoint(config.warm_start)   # (None: refused by validate)
  model = _recorded(source).get("model") if source else None
  model = model if isinstance(model, dict) else {}
  kind = model.get("kind")
  if kind and kind != config.model:
    raise RunStateError(
        f"--warm_start={config.warm_start}: it is an {kind.upper()} run and this is an "
        f"{config.model.upper()} run; a warm start needs the same model: give "
        f"--model={kind}, or warm-start from an {config.model.upper()} run.")
  differ = [name for name in SIZES
            if name in model and model[name] != getattr(config, name)]
  if differ:
    there = " ".join(_flag(name, model[name]) for name in differ)
    here = " ".join(_flag(name, getattr(config, name)) for name in differ)
    raise RunStateError(
        f"--warm_start={config.warm_start}: its network has other sizes ({there}) than "
        f"this run's ({here}); a warm start needs the same sizes: give {there}, or "
        "warm-start from a run of this size.")


def names_checkpoint(given: str, checkpoint: str) -> bool:
  """Whether --warm_start=`given` names `checkpoint` (absolute, as recorded): the
  checkpoint itself, or the run directory whose checkpoints/ it is in (the form that
  takes that run's latest). Symlinks are resolved, and a relative `given` also matches
  the recorded path's end, so the command still fits after the folders it names were
  moved or copied together."""
  run_form = os.path.basename(os.path.dirname(checkpoint)) == "checkpoints"
  targets = [checkpoint] + ([os.path.dirname(os.path.dirname(checkpoint))]
                            if run_form else [])
  path = os.path.normpath(given)
  for target in targets:
    if os.path.realpath(given) == os.path.realpath(target):
      return True
    if (not os.path.isabs(path) and not path.startswith("..")
        and target.endswith(os.sep + path)):
      return True
  return False


def started_from(run_dir: str) -> str | None:
  """The checkpoint a run was warm-started from (model.json, else flags.txt), or None."""
  try:
    with open(os.path.join(run_dir, MODEL_FILE), encoding="utf-8") as f:
      recorded = json.load(f).get("warm_started_from")
  except (OSError, ValueError, AttributeError):
    recorded = None
  return recorded or read_flags(run_dir).get("warm_start") or None


def vocabulary_mismatch(source: str, prepared) -> str | None:
  """Why the run that wrote checkpoint `source` (RUN/checkpoints/ckpt-N or
  RUN/best/ckpt-N) is no start for a run on `prepared`: other instrument or pitch names
  (the weights' shapes alone may fit); None if they match or RUN records none."""
  recorded = _recorded(source)
  for name, ours in (("instruments", prepared.instruments), ("pitches", prepared.pitches)):
    theirs = recorded.get(name)
    if theirs is not None and list(theirs) != list(ours):
      return (f"it was trained on other {name} ({', '.join(map(str, theirs))}) than this "
              f"run's data ({', '.join(map(str, ours))}); a warm start needs the same "
              "instrument and pitch vocabularies")
  return None


def restore_failure(source: str, mconfig: ModelConfig, exclude) -> str | None:
  """Why the weights of checkpoint `source` do not fit a model of `mconfig`, or None.

  Tried on a model of its own: a failed restore leaves deferred restorations on the
  model that, when it is collected, log a warning (twice) for every value not restored;
  this model is collected here, with TensorFlow's warnings off.
  """
  def attempt():
    probe = GMVAE(mconfig)
    probe.build_for()
    try:
      tf.train.Checkpoint(model=probe.weights_checkpoint(exclude=exclude)).restore(
          source).expect_partial().assert_existing_objects_matched()
      return None
    except (AssertionError, ValueError) as e:
      return str(e)

  logger = tf.get_logger()
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    failure = attempt()
    gc.collect()
  finally:
    logger.setLevel(level)
  return failure


def _recorded(source: str) -> dict:
  """The model.json of the run that wrote checkpoint `source` ({} if none is readable)."""
  owner = checkpoint_owner(source)
  if owner is None:
    return {}
  try:
    with open(os.path.join(owner, MODEL_FILE), encoding="utf-8") as f:
      recorded = json.load(f)
  except (OSError, ValueError):
    return {}
  return recorded if isinstance(recorded, dict) else {}


def _flag(name: str, value) -> str:
  if isinstance(value, bool):
    return f"--{name}" if value else f"--no{name}"
  return f"--{name}={value}"
