"""Checkpoints, early stopping and the run's own files.

The run state (epochs done, best validation ELBO, epochs since it improved, whether the
run stopped early) lives in tf.Variables saved with the model and the optimizer, so a run
killed at any moment and started again with the same command resumes from its last
checkpoint. Warm-starting copies another run's weights into a new run and is a separate
path (`warm_start`), never taken implicitly.
"""

import contextlib
import dataclasses
import difflib
import fcntl
import os
import re
import shutil

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from tfgmvae.audio.config import AudioConfig
from tfgmvae.data.prepare import SOURCE_FLAGS

FLAGS_FILE = "flags.txt"
# Flags a resumed run may change: none of them changes the weights a training step
# computes. (bn_momentum changes only the BatchNorm statistics used in inference, and so
# the validation ELBO from the next epoch on; warm_start acts before the first
# checkpoint only, and a continued run keeps the checkpoint its record names.)
RESUME_MAY_CHANGE = ("epochs", "verbose", "media_every", "embeddings_every",
                     "griffin_lim_iters", "keep_checkpoints", "checkpoint_every",
                     "bn_momentum", "cache", "warm_start")


# Flags that decide the data a run prepares into RUN_DIR/data.
DATA_FLAGS = frozenset(("dataset", "data_path", "prepared_dir", "validation_fraction",
                        "seed", "on_bad_file", "nsynth_instrument_field", "audio_preset")
                       + tuple(field.name for field in dataclasses.fields(AudioConfig)))


class RunStateError(ValueError):
  """The run directory does not fit the command; the message says why and what to do."""


class RunState(tf.Module):
  """Counters that must survive a restart."""

  def __init__(self):
    super().__init__(name="run_state")
    self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    self.best_elbo = tf.Variable(float("-inf"), dtype=tf.float64, trainable=False,
                                 name="best_elbo")
    self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
    self.stopped = tf.Variable(False, trainable=False, name="stopped")


class CheckpointCallback(keras.callbacks.Callback):
  """Saves after a new run's first epoch, every `every` epochs and when training ends;
  saves the best weights whenever the validation ELBO improves; stops on patience.

  Saving less often than every epoch costs a restart at most `every` - 1 epochs, which it
  replays exactly (the batches and the noise are seeded by the epoch). At the paper's
  size a training checkpoint (weights and Adam's moments) is about 400 MB, whose write
  takes about a second of CPU: a sixth of a bf16 epoch on two cores.
  """

  def __init__(self, state: RunState, manager: tf.train.CheckpointManager,
               best_manager: tf.train.CheckpointManager, patience: int, log=print,
               every: int = 1):
    super().__init__()
    self.state, self.manager, self.best_manager = state, manager, best_manager
    self.patience, self.log, self.every = patience, log, every

  def on_train_begin(self, logs=None):
    # Restored from a checkpoint (the same on every worker), or 0 for a new run, whose
    # first epoch is saved whatever `every` is: a run directory with a checkpoint is a
    # run that has trained (`check_flags` binds a later command to its flags).
    self.saved = int(self.state.epoch.numpy())

  def _save(self):
    done = int(self.state.epoch.numpy())
    if done != self.saved:
      self.manager.save(checkpoint_number=done)
      self.saved = done

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    done = epoch + 1
    self.state.epoch.assign(done)
    if "val_elbo" in logs:
      elbo = float(logs["val_elbo"])
      if elbo > float(self.state.best_elbo.numpy()):
        self.state.best_elbo.assign(elbo)
        self.state.best_epoch.assign(done)
        self.best_manager.save(checkpoint_number=done)
      waited = done - int(self.state.best_epoch.numpy())
      if self.patience and waited >= self.patience:
        self.state.stopped.assign(True)
        self.model.stop_training = True
        best = float(self.state.best_elbo.numpy())
        self.log(f"Early stop after epoch {done}: the validation ELBO has not improved for "
                 f"{waited} epoch{'s' * (waited != 1)} (best {best:.2f} at "
                 f"epoch {int(self.state.best_epoch.numpy())}).")
    if done % self.every == 0 or self.saved == 0:
      self._save()

  def on_train_end(self, logs=None):
    self._save()   # the last epoch (also an early stop), if not saved yet; not after an error


_UNFINISHED_SAVE = re.compile(r"ckpt-\d+_temp")
_CHECKPOINT_FILE = re.compile(r"ckpt-(\d+)\.(index|data-\d+-of-\d+)")


def newest_registered(directory: str) -> int | None:
  """The number N of the newest checkpoint in the folder's `checkpoint` state file."""
  state = tf.train.get_checkpoint_state(directory)
  found = re.search(r"ckpt-(\d+)$", state.model_checkpoint_path) if state else None
  return int(found.group(1)) if found else None


def remove_unfinished_saves(directory: str, log=print) -> list[str]:
  """Deletes what a kill in the middle of a save (or of a deletion) left in a folder.

  A CheckpointManager's save writes the shards into `ckpt-N_temp/`, moves the data files
  to `ckpt-N.data-*`, writes `ckpt-N.index`, deletes the folder and only then names N
  in the folder's `checkpoint` state file; deleting an old checkpoint removes its index
  before its data. So a process killed at the wrong moment leaves one of: a
  `ckpt-N_temp/` folder (as big as a checkpoint), data files with no index, or a
  checkpoint numbered past the newest one the state file names (its index perhaps
  half-written). Nothing restores from any of them. Only the process that owns the
  folder (and holds `run_lock`) may call this, before it saves.

  Args:
    directory: A CheckpointManager's folder (need not exist).
    log: Where to report each deletion.

  Returns:
    The paths deleted.
  """
  if not os.path.isdir(directory):
    return []
  names = sorted(os.listdir(directory))
  newest = newest_registered(directory)
  removed = []
  for name in names:
    path = os.path.join(directory, name)
    part = _CHECKPOINT_FILE.fullmatch(name)
    if _UNFINISHED_SAVE.fullmatch(name) and os.path.isdir(path):
      what = "an unfinished save of a process that was killed while saving"
    elif part and os.path.isfile(path) and newest is not None \
        and int(part.group(1)) > newest:
      what = (f"part of a save that a kill interrupted before it was registered (the "
              f"newest checkpoint registered is ckpt-{newest})")
    elif part and part.group(2) != "index" and f"ckpt-{part.group(1)}.index" not in names \
        and os.path.isfile(path):
      what = ("data with no index, left by a process killed while saving or deleting "
              "that checkpoint")
    else:
      continue
    if _remove_left_over(path, what, "; not a checkpoint", log):
      removed.append(path)
  return removed


def _remove_left_over(path: str, what: str, note: str, log) -> bool:
  """Deletes a file or folder a killed process left; says so (or why it could not)."""
  try:
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  except OSError as e:
    log(f"Could not remove {path} ({what}): {e}")
    return False
  log(f"Removed {path}: {what}{note}.")
  return True


# Temporary files of the run's own atomic writes (flags.txt, model.json, the summaries'
# record), named after the writing process: one left behind was killed mid-write.
_UNFINISHED_WRITE = re.compile(r"(flags\.txt|model\.json|written_through_epoch)"
                               r"\.\d+\.tmp")


def remove_unfinished_writes(run_dir: str, log=print) -> list[str]:
  """Deletes the temporary files of writes that a kill interrupted (the file itself was
  never replaced: it holds what was there before). Only the process that holds
  `run_lock` may call this.

  Returns:
    The paths deleted.
  """
  removed = []
  for folder in (run_dir, os.path.join(run_dir, "summaries")):
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
      path = os.path.join(folder, name)
      if _UNFINISHED_WRITE.fullmatch(name) and os.path.isfile(path) and \
          _remove_left_over(path, "left by a process killed while writing", "", log):
        removed.append(path)
  return removed


def write_atomically(path: str, text: str) -> None:
  """Writes `path` whole or not at all (through a temporary file of this process)."""
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


LOCK_FILE = ".train.lock"


@contextlib.contextmanager
def run_lock(run_dir: str):
  """Holds RUN_DIR/.train.lock so that one process at a time trains into a directory.

  Raises:
    RunStateError: another process holds it (a second bin/train on a live run would
      delete its unfinished save and write checkpoints over it).
  """
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, LOCK_FILE)
  with open(path, "a", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RunStateError(f"{run_dir} is in use by another training process (it holds "
                          f"{path}); wait for it or stop it first.") from None
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def checkpoint_parts(path: str, child: str = "model") -> set[str]:
  """Names of the objects saved under `child` of the checkpoint at `path` (for a
  training checkpoint, the model's parts: 'pitch_encoder', 'decoder', ...)."""
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(tf.train.load_checkpoint(path).get_tensor(
      "_CHECKPOINTABLE_OBJECT_GRAPH"))
  node = next((c.node_id for c in graph.nodes[0].children if c.local_name == child), None)
  return set() if node is None else {c.local_name for c in graph.nodes[node].children}


def read_flags(run_dir: str) -> dict[str, str]:
  """RUN_DIR/flags.txt as {flag name: value} ({} if there is none)."""
  path = os.path.join(run_dir, FLAGS_FILE)
  out = {}
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.startswith("--") and "=" in line:
          name, value = line.strip()[2:].split("=", 1)
          out[name] = value
  return out


def _names(line: str) -> set[str]:
  """The flag names a flagfile line may stand for (`--noX` is X or a flag noX)."""
  name = line[2:].split("=", 1)[0]
  return {name, name[2:]} if "=" not in line and name.startswith("no") else {name}


# Flags naming a local file or folder: flags.txt records them absolute (`absolute_paths`).
PATH_FLAGS = ("run_dir", "data_path", "prepared_dir", "warm_start")


def absolute_paths(flags_text: str, cwd: str | None = None) -> str:
  """`flags_text` with the local paths of PATH_FLAGS made absolute (from `cwd`, default
  the current folder), so `--flagfile=RUN_DIR/flags.txt` replays the run from any
  folder. URLs and paths starting with `~` (refused by validation) stay as given."""
  lines = []
  for line in flags_text.splitlines(keepends=True):
    name, _, value = line.rstrip("\n").partition("=")
    if name[2:] in PATH_FLAGS and value and "://" not in value and not value.startswith("~"):
      line = f"{name}={os.path.abspath(os.path.join(cwd or os.getcwd(), value))}\n"
    lines.append(line)
  return "".join(lines)


def with_values(flags_text: str, values: dict[str, str]) -> str:
  """`flags_text` (sorted `--name=value` lines) with `values` in place of those flags."""
  lines = [line for line in flags_text.splitlines()
           if line and not _names(line) & set(values)]
  return "\n".join(sorted(lines + [f"--{k}={v}" for k, v in values.items()])) + "\n"


def _prepared_elsewhere(lines: list[str]) -> bool:
  return any(line.startswith("--prepared_dir=") and line != "--prepared_dir="
             for line in lines)


def check_flags(run_dir: str, flags_text: str, may_differ=RESUME_MAY_CHANGE,
                defaults=frozenset()) -> bool:
  """Checks that RUN_DIR/flags.txt, if there is one, fits this command. Writes nothing.

  What binds depends on how far the recorded run got: once it has a checkpoint, every
  flag but `may_differ`; before that, if it prepared its own data (RUN_DIR/data), only
  the flags that made that data (`DATA_FLAGS`); if it did neither (it failed before any
  work, say on a wrong --data_path), nothing, and the command replaces the record.

  Args:
    run_dir: The run directory.
    flags_text: The effective flags, one `--name=value` per line.
    may_differ: Flags a continued run may change.
    defaults: Each flag at its default value, as a line. A flag that the recorded file
      does not name at all (a run recorded before the flag existed) is accepted at its
      default, which is what that run trained with. So a new flag's default must keep
      the behaviour of the code before it (as `--timbre_adversary=0` does).

  Returns:
    True if the record binds this command (a continued run).

  Raises:
    RunStateError: the run directory belongs to a run with other settings.
  """
  path = os.path.join(run_dir, FLAGS_FILE)
  if not os.path.exists(path):
    return False
  trained = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints")) is not None
  prepared = os.path.isfile(os.path.join(run_dir, "data", "prepared.json"))
  if not trained and not prepared:
    return False
  with open(path, encoding="utf-8") as f:
    old = f.read()

  recorded = set().union(*(_names(line) for line in old.splitlines() if line))

  def relevant(text):   # (paths compared absolute: a record from before they were)
    # --run_dir is where the record is: a run moved or copied elsewhere goes on there.
    lines = [line for line in absolute_paths(text).splitlines()
             if line and not (line in defaults and not _names(line) & recorded)
             and not line.startswith("--run_dir=")]
    if _prepared_elsewhere(lines):   # the source flags are the folder's (or, in a record
      # from before that, unused): --prepared_dir stands for them
      lines = [line for line in lines if not _names(line) & set(SOURCE_FLAGS)]
    if not trained:
      return [line for line in lines if _names(line) & DATA_FLAGS]
    return [line for line in lines if not any(line.startswith(f"--{n}=")
                                              for n in may_differ)]

  if relevant(old) != relevant(flags_text):
    diff = "\n".join(difflib.unified_diff(relevant(old), relevant(flags_text),
                                          "recorded", "this command", lineterm="", n=0))
    if not trained:
      raise RunStateError(
          f"{path} records different data settings from this command (the run has not "
          f"trained yet, but {os.path.join(run_dir, 'data')} was prepared with them):\n"
          f"{diff}\nGive the recorded data settings, or use a new --run_dir.")
    changeable = ", ".join(f"--{name}" for name in may_differ if name != "warm_start")
    raise RunStateError(
        f"{path} records different settings from this command:\n{diff}\nA run "
        f"directory holds one run, and going on it may change only {changeable}: use a "
        f"new --run_dir, or replay it with --flagfile={path} (and only those changes), or "
        f"start a new run from its weights with --warm_start={run_dir}.")
  return True


def moved_run_dir(flagfile: str, run_dir: str) -> str | None:
  """The folder that `--flagfile=FOLDER/flags.txt` replays when the run was moved there.

  A run directory may be moved or copied: its flags.txt still records the --run_dir it
  was trained in. Replaying FOLDER/flags.txt then means the run in FOLDER, not the
  folder it came from (which may hold the original, or nothing, where the command would
  start a new run).

  Args:
    flagfile: The command line's last --flagfile.
    run_dir: The --run_dir the command got, from that file (not from its own command
      line, which names the run directory explicitly).

  Returns:
    FOLDER (absolute) if the flagfile is the flags.txt of a run that has trained
    (a checkpoint) and records `run_dir`, and FOLDER is another folder; else None.
  """
  folder = os.path.dirname(os.path.abspath(os.path.expanduser(flagfile)))
  if (os.path.basename(flagfile) != FLAGS_FILE or not run_dir
      or read_flags(folder).get("run_dir") != run_dir
      or tf.train.latest_checkpoint(os.path.join(folder, "checkpoints")) is None):
    return None
  if os.path.exists(run_dir) and os.path.samefile(run_dir, folder):   # (a symlink too)
    return None
  return folder


def write_flags(run_dir: str, flags_text: str) -> None:
  """Records the effective flags in RUN_DIR/flags.txt (atomically; unchanged if equal).

  Call it after `check_flags`, only from the process that holds `run_lock` and is about
  to train: a refused or already finished command must leave the record as it was.
  """
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, FLAGS_FILE)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      if f.read() == flags_text:
        return
  write_atomically(path, flags_text)
