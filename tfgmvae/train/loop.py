"""`train(config)`: prepare or load the data, build the model, resume or warm-start, fit."""

import contextlib
import dataclasses
import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from tfgmvae.data.dataset import (PipelineConfig, PreparedFeatures, data_errors,
                                    default_output, note_dataset)
from tfgmvae.data.prepare import Prepared, PrepareConfig, prepare
from tfgmvae.data.store import first_non_finite, is_written, open_store
from tfgmvae.model import GMVAE, ModelConfig
from tfgmvae.serving.export import MODEL_FILE, run_metadata
from tfgmvae.train import inputs, progress, unlabelled, warm_start
from tfgmvae.train.checkpoints import (CheckpointCallback, RunState, RunStateError,
                                       check_flags, checkpoint_parts,
                                       remove_unfinished_saves,
                                       remove_unfinished_writes, run_lock,
                                       write_atomically, write_flags)
from tfgmvae.train.config import ConfigError, TrainConfig, warm_start_checkpoint
from tfgmvae.train.optimizer import FusedAdam
from tfgmvae.train.summaries import (LOSS_TERMS, SUMMARY_NOTES, SummaryCallback,
                                     pick_notes)


class TrainingError(RuntimeError):
  """Training stopped on a numerical problem; the message names the term and epoch."""


def load_prepared(config: TrainConfig, log=print) -> Prepared:
  """The run's prepared data: --prepared_dir, RUN_DIR/data, or prepared now into it.

  `config.validate()` has checked that existing data fits the command's audio settings.
  """
  if config.prepared_dir:
    return Prepared.load(config.prepared_dir)
  data_dir = os.path.join(config.run_dir, "data")
  if os.path.isfile(os.path.join(data_dir, "prepared.json")):
    return Prepared.load(data_dir)
  return prepare(PrepareConfig(
      dataset=config.dataset, data_path=config.data_path, out_dir=data_dir,
      audio=config.audio, validation_fraction=config.validation_fraction,
      seed=config.seed, on_bad_file=config.on_bad_file,
      nsynth_instrument_field=config.nsynth_instrument_field), log=log)


def make_strategy(config: TrainConfig):
  """The tf.distribute strategy named by the config.

  Raises:
    ConfigError: --cpu_devices cannot be applied because TensorFlow already started
      with another device layout in this process.
  """
  if config.strategy == "mirrored":
    devices = None
    if config.cpu_devices:
      cpu = tf.config.list_physical_devices("CPU")[0]
      layout = [tf.config.LogicalDeviceConfiguration()] * config.cpu_devices
      if len(tf.config.get_logical_device_configuration(cpu) or [None]) != len(layout):
        try:
          tf.config.set_logical_device_configuration(cpu, layout)
        except RuntimeError as e:
          raise ConfigError(
              f"--cpu_devices={config.cpu_devices}: TensorFlow already started in this "
              "process, so the CPU can no longer be split into logical devices; train in "
              f"a fresh process ({e})") from None
      devices = [f"/cpu:{i}" for i in range(config.cpu_devices)]
    return tf.distribute.MirroredStrategy(devices=devices)
  if config.strategy == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  return tf.distribute.get_strategy()


def worker_role(strategy) -> tuple[bool, str]:
  """(is this process the chief, a short name of its task) for any strategy.

  The chief is the 'chief' task, or worker 0 when the cluster has no 'chief'; a
  single-process strategy is always the chief.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
  if not cluster or resolver.task_type is None:
    return True, "chief"
  task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
  chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                   and "chief" not in cluster)
  return chief, f"{task_type}{task_id}"


def model_config(config: TrainConfig, prepared: Prepared, replicas: int) -> ModelConfig:
  """The network a run trains: sizes from its flags, vocabularies from its data
  (synchronised batch norm with several replicas)."""
  return ModelConfig(
      num_pitches=prepared.num_pitches, num_instruments=prepared.num_instruments,
      kind=config.model, frames=prepared.audio.frames, n_mels=prepared.audio.n_mels,
      latent_dim=config.latent_dim, filters=config.filters, hidden=config.hidden,
      pitch_classifier=config.pitch_classifier, synchronized_bn=replicas > 1,
      timbre_adversary=config.timbre_adversary, bn_momentum=config.bn_momentum)


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
  """Adam (fused), loss-scaled under mixed_float16. Keras scales the loss itself only
  when the model's own policy is mixed_float16, and GMVAE keeps the model (its priors
  and loss) in float32."""
  optimizer = FusedAdam(config.learning_rate, amsgrad=config.amsgrad)
  if config.precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _numeric(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Batches without their string fields (the notes' keys): the steps do not use them,
  and XLA (--jit_compile) takes no string input."""
  return ds.map(lambda batch: {k: v for k, v in batch.items() if v.dtype != tf.string})


def _check_not_orphaned(run_dir: str) -> None:
  """Refuses a run directory with a best checkpoint but no training checkpoint (deleted
  to save space, say): it cannot go on, and a new run there would replace its records
  and best weights."""
  best = tf.train.latest_checkpoint(os.path.join(run_dir, "best"))
  # (best/ckpt-1 alone is a kill during the first training save, which comes after it:
  # the run starts again, as after any kill.)
  if (best and not best.endswith("ckpt-1")
      and not tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))):
    raise RunStateError(
        f"{run_dir} has a best checkpoint ({best}) but no training checkpoint in "
        f"{os.path.join(run_dir, 'checkpoints')}: it cannot go on (its optimizer state "
        "is gone), and a new run there would replace its records. Start a new run from "
        f"its best weights with --warm_start={best} and another --run_dir.")


def _validation_epochs(every: int, start: int, epochs: int):
  """Keras's `validation_freq`: every `every`-th epoch, and always the last one, so that
  the best checkpoint and early stopping see the final weights."""
  if every == 1:
    return 1
  return [e for e in range(start + 1, epochs + 1) if e % every == 0 or e == epochs]


def _last_checkpoint(manager) -> str:
  return (f"the last good checkpoint is {manager.latest_checkpoint}"
          if manager.latest_checkpoint else "no checkpoint was written yet")


def _nan_terms(error: Exception) -> list[str] | None:
  """The loss terms a NaN stop names (the step's check or _NonFiniteStop); None for
  another error."""
  if isinstance(error, _NonFinite):
    return sorted(error.terms)   # (the step's check names them in this order too)
  match = re.search(r"\[loss terms\] \[([a-z_, ]*)\] \[are NaN or Inf\]", str(error))
  return sorted(t for t in match.group(1).split(", ") if t) if match else None


def _damaged_store(store_dir: str, output: str) -> str | None:
  """Which stored split holds NaN or Inf features, and where, or None."""
  for split in ("train", "validation"):
    key = first_non_finite(store_dir, split, output)
    if key is not None:
      return (f"{os.path.join(store_dir, f'{split}-{output}', 'features.npy')} holds NaN "
              f"or Inf values (first in note {key})")
  return None


def _nan_message(terms: list[str], epoch: int, manager, precision: str,
                 all_terms: int) -> str:
  remedy = ("a lower --learning_rate" if precision == "float32" else
            "a lower --learning_rate or --precision=float32")
  if terms and len(terms) == all_terms:
    what = (f"every loss term ({', '.join(terms)}) became NaN or Inf, so the weights or "
            "the notes themselves did (a step too large, or notes with NaN samples)")
  elif terms:
    what = (f"the loss term{'s' * (len(terms) > 1)} "
            f"{', '.join(repr(t) for t in terms)} became NaN or Inf")
  else:
    what = "a loss term became NaN or Inf"
  return (f"Training stopped: {what} during epoch {epoch + 1}; "
          f"{_last_checkpoint(manager)}. Try {remedy}.")


def train(config: TrainConfig, log=print, callbacks=(), flags_text: str = "",
          flag_defaults=frozenset()) -> dict:
  """Trains (or resumes) the run in `config.run_dir`.

  With --strategy=multi_worker every worker runs this with the same config (and its own
  TF_CONFIG). The chief writes the run directory (flags.txt, model.json, checkpoints,
  summaries); the other workers restore from the chief's checkpoints, save theirs into
  a temporary folder that is deleted at the end, and write no summaries; only their
  notes, when kept on disk (--cache), go to RUN_DIR/cache/<task>. The data must
  already be prepared (--prepared_dir, or RUN_DIR/data from an earlier run).

  Args:
    config: The run's settings (validated here).
    log: Where progress messages go.
    callbacks: Extra Keras callbacks (e.g. for tests).
    flags_text: The command's effective flags as a flagfile (bin/train's), recorded in
      RUN_DIR/flags.txt by the chief under the run's lock: by a new run before any
      work, by a resumed run at the end of its first epoch (a command refused, on a
      finished run, or failing before then leaves the record as it was). Empty: no
      record.
    flag_defaults: Each flag at its default, as a line (see `check_flags`).

  Returns:
    {'history': fit's history dict, 'chief': whether this process wrote the run
     directory, 'task': its short name ('chief', 'worker1', ...), 'epoch': epochs
     done, 'best_elbo', 'best_epoch', 'stopped_early'}.

  Raises:
    ConfigError: impossible settings: before any work, or, for --cache=memory and notes
      that would not fit in memory, once the data is prepared (before training).
    RunStateError: the run directory does not fit the command, or another process is
      training into it.
    TrainingError: a loss term became NaN/Inf (names the term).
    DataError: a prepared note could not be read, or NSynth records changed since the
      preparation (names the file; checkpoints written before stay).
  """
  config.validate()
  _check_not_orphaned(config.run_dir)
  warm_start.check_request(config)   # what its records tell, before anything is written
  if config.strategy == "multi_worker":   # (it then waits with nothing else to say)
    cluster = json.loads(os.environ["TF_CONFIG"])
    log(f"Joining the cluster of TF_CONFIG as {cluster['task']['type']} "
        f"{cluster['task'].get('index', 0)}; it waits until all "
        f"{sum(len(v) for v in cluster['cluster'].values())} of its tasks have started "
        "(stop a waiting task with kill -9: Ctrl-C does not reach it then).")
  strategy = make_strategy(config)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ConfigError(f"--batch_size={config.batch_size}: expected a multiple of the "
                      f"{replicas} replicas of --strategy={config.strategy}")
  # Only the chief writes into the run directory, and holds its lock meanwhile. The
  # other workers of a multi-worker run take part in every step and in every save
  # (TF's convention), but save into a private temporary folder deleted at the end.
  chief, task = worker_role(strategy)
  with run_lock(config.run_dir) if chief else contextlib.nullcontext():
    return _train(config, strategy, chief, task, log, callbacks,
                  (flags_text, frozenset(flag_defaults)))


def _train(config: TrainConfig, strategy, chief: bool, task: str, log, callbacks,
           flag_record: tuple[str, frozenset]) -> dict:
  replicas = strategy.num_replicas_in_sync
  save_dir = config.run_dir if chief else None
  resuming = tf.train.latest_checkpoint(os.path.join(config.run_dir, "checkpoints"))
  if chief and not resuming:   # a new run records its flags before any work
    _record_flags(config.run_dir, flag_record)
  prepared = load_prepared(config, log)
  output = default_output()
  mconfig = model_config(config, prepared, replicas)
  previous_policy = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(config.precision)
  try:
    keras.utils.set_random_seed(config.seed)   # the same seed, the same initial weights
    with strategy.scope():
      model = GMVAE(mconfig, features=PreparedFeatures(prepared) if output == "audio"
                    else None)
      model.build_for()
      optimizer = make_optimizer(config)
      model.compile(optimizer=optimizer, jit_compile=config.jit_compile)
      optimizer.build(model.trainable_variables)
      state = RunState()
      checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, state=state)
    if chief:
      for folder in ("checkpoints", "best"):
        remove_unfinished_saves(os.path.join(save_dir, folder), log)
      remove_unfinished_writes(save_dir, log)
    else:
      save_dir = tempfile.mkdtemp(prefix=f"tfgmvae-{task}-")
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(save_dir, "checkpoints"), config.keep_checkpoints)
    best_manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model.weights_checkpoint(), state=state),
        os.path.join(save_dir, "best"),
        max_to_keep=1)
    # Every worker resumes from the chief's checkpoints.
    latest = tf.train.latest_checkpoint(os.path.join(config.run_dir, "checkpoints"))
    source = None   # the checkpoint a new run is warm-started from
    if latest:
      checkpoint.restore(latest).assert_existing_objects_matched()
      log(f"Resuming {config.run_dir} from {latest} "
          f"(epoch {int(state.epoch.numpy())}).")
    elif config.warm_start:
      source = warm_start_checkpoint(config.warm_start)
      if source is None:
        raise RunStateError(f"--warm_start={config.warm_start}: no checkpoint there.")
      mismatch = warm_start.vocabulary_mismatch(source, prepared)
      if mismatch:
        raise RunStateError(f"--warm_start={config.warm_start}: {mismatch}")
      # A run without the pitch adversary can warm-start one with it: the adversary
      # then starts from its initial weights.
      fresh = (("timbre_adversary",) if model.timbre_adversary is not None
               and "timbre_adversary" not in checkpoint_parts(source) else ())
      failure = warm_start.restore_failure(source, mconfig, fresh)
      if failure is not None:
        raise RunStateError(f"--warm_start={config.warm_start}: its model does not fit "
                            f"this one (other sizes or vocabularies?): {failure}")
      tf.train.Checkpoint(model=model.weights_checkpoint(exclude=fresh)).restore(
          source).expect_partial().assert_existing_objects_matched()
      log(f"Warm-started {config.run_dir} from the weights of {source}"
          + (f" ({', '.join(fresh)} not in it: initialised afresh)." if fresh else "."))
    model_file = os.path.join(config.run_dir, MODEL_FILE)
    if chief and (not latest or not os.path.exists(model_file)):   # (re)written until
      # the first checkpoint: a command that replaced a run that never trained may
      # have other model settings.
      write_atomically(model_file, json.dumps(
          {"model": mconfig.to_dict(), "prepared_dir": os.path.abspath(
              prepared.directory), "label_fraction": config.label_fraction}
          | run_metadata(prepared) | ({"warm_started_from": source} if source else {}),
          indent=2))
    start = int(state.epoch.numpy())
    if bool(state.stopped.numpy()) or start >= config.epochs:
      more = (f" To train on from its weights anyway, start a new run with "
              f"--warm_start={config.run_dir}." if bool(state.stopped.numpy())
              and start < config.epochs else
              f" To train it further, run the same command with --epochs=N, N > {start}."
              if not bool(state.stopped.numpy()) else "")
      log(f"{config.run_dir} is already finished (epoch {start}"
          f"{', stopped early' if bool(state.stopped.numpy()) else ''}).{more}")
      return _result({}, state, chief, task)
    # Every worker keeps its own notes: the chief in RUN_DIR/cache, the others in a
    # folder of their own in it, which outlives their temporary save_dir, so a resume
    # reuses it. (Chosen before flags.txt is recorded: --cache=memory may be refused.)
    cache_dir = os.path.join(config.run_dir, "cache", *(() if chief else (task,)))
    store_dir = inputs.store_dir_for(config.cache, prepared, output, cache_dir,
                                     inputs.available_memory(), log)
    if chief and latest:
      _update_model_file(model_file, mconfig, prepared, start, state, log)
    def after():   # beside the data errors' hint: the notes kept on disk, and once the
      hint = ""    # run has weights to start from, a new run from them
      if store_dir is None and all(is_written(cache_dir, split, output)
                                   for split in ("train", "validation")):
        hint = (f" {cache_dir} keeps this run's notes: --cache=auto or --cache=disk "
                "trains from them.")
      if manager.latest_checkpoint:
        hint += (f" A run keeps the data it started with; --warm_start={config.run_dir} "
                 "starts a new run from this one's weights.")
      return hint
    with data_errors(prepared, "Reading the notes for training: ", after):   # (stores)
      train_ds, steps = inputs.make_inputs(
          prepared, "train", config.batch_size, config.seed, config.latent_dim,
          config.label_fraction, start, config.epochs, output,
          strategy if replicas > 1 else None, store_dir=store_dir, log=log)
      # Validation keeps every label, or none when the run uses none (N = 0: its
      # components are in no particular order, so their cross-entropy against the
      # instruments would mean nothing; unlabelled.MatchedAccuracy scores them instead).
      val_ds, val_steps = inputs.make_inputs(
          prepared, "validation", min(config.batch_size, _val_count(prepared, replicas)),
          config.seed, config.latent_dim, 1.0 if config.label_fraction > 0 else 0.0,
          output=output,
          strategy=strategy if replicas > 1 else None, store_dir=store_dir, log=log)
      # (The epoch's line first, then what the checkpoint callback says about it.)
      all_callbacks = []
      if chief and config.verbose == 1:
        all_callbacks.append(progress.ProgressBar(config.epochs, steps))
      if chief and config.verbose in (1, 2):
        all_callbacks.append(progress.EpochLine(config.epochs, log))
      all_callbacks.append(CheckpointCallback(state, manager, best_manager,
                                              config.patience, log,
                                              config.checkpoint_every))
      if chief:
        all_callbacks += _summary_callbacks(config, prepared, store_dir, output)
    if config.label_fraction == 0.0:   # before the callbacks that print or summarise it
      all_callbacks.insert(0, unlabelled.MatchedAccuracy(_numeric(val_ds), val_steps))
    if config.jit_compile:   # XLA drops the step's own finiteness check
      all_callbacks.insert(0, _NonFiniteStop())
    if chief and resuming:   # a resumed one once its first epoch here is done
      all_callbacks.append(_RecordFlags(config.run_dir, flag_record))
    all_callbacks += list(callbacks)

    def failed_epoch():   # (the notes in memory are first read during the first epoch)
      return (f"Training stopped during epoch {int(state.epoch.numpy()) + 1} "
              f"({_last_checkpoint(manager)}): ")

    try:
      with data_errors(prepared, failed_epoch, after):
        history = model.fit(_numeric(train_ds), epochs=config.epochs, initial_epoch=start,
                            steps_per_epoch=steps, validation_data=_numeric(val_ds),
                            validation_steps=val_steps,
                            validation_freq=_validation_epochs(
                                config.validation_every, start, config.epochs),
                            callbacks=all_callbacks, verbose=0)
    except (tf.errors.InvalidArgumentError, _NonFinite) as e:
      terms = _nan_terms(e)
      if terms is None:
        raise
      damaged = _damaged_store(store_dir, output) if store_dir else None
      if damaged:
        raise TrainingError(
            f"Training stopped: the loss became NaN or Inf during epoch "
            f"{int(state.epoch.numpy()) + 1} because the notes kept on disk are damaged: "
            f"{damaged}. Delete {store_dir} and run the same command again (the notes are "
            f"written there again from the source); {_last_checkpoint(manager)}.") from None
      raise TrainingError(_nan_message(
          terms, int(state.epoch.numpy()), manager, config.precision,
          sum(name in model.trackers for name in LOSS_TERMS))) from None
    return _result(history.history, state, chief, task)
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)
    if not chief and save_dir:
      shutil.rmtree(save_dir, ignore_errors=True)


class _NonFinite(Exception):
  def __init__(self, terms):
    super().__init__(", ".join(terms))
    self.terms = terms


class _NonFiniteStop(keras.callbacks.Callback):
  """Under XLA, which compiles the step's CheckNumerics/Assert away: stops after a
  batch whose loss terms' running means are NaN or Inf (a NaN step makes the epoch's
  mean NaN), naming them."""

  def _check(self, logs):
    bad = [name for name in LOSS_TERMS if name in (logs or {})
           and not np.all(np.isfinite(keras.ops.convert_to_numpy(logs[name])))]
    if bad:
      raise _NonFinite(bad)

  def on_train_batch_end(self, batch, logs=None):
    self._check(logs)

  def on_test_batch_end(self, batch, logs=None):
    self._check(logs)


class _RecordFlags(keras.callbacks.Callback):
  """Records a resumed run's command in flags.txt at the end of its first epoch (after
  the checkpoint callback), so a command that fails before (unreadable data,
  a NaN) leaves the record of the last command that trained."""

  def __init__(self, run_dir: str, flag_record: tuple[str, frozenset]):
    super().__init__()
    self.run_dir, self.flag_record, self.done = run_dir, flag_record, False

  def on_epoch_end(self, epoch, logs=None):
    if not self.done:
      _record_flags(self.run_dir, self.flag_record)
      self.done = True


def _record_flags(run_dir: str, flag_record: tuple[str, frozenset]) -> None:
  """Checks the command's flags against RUN_DIR/flags.txt again, now under the run's
  lock (bin/train checked before it was taken), and records them."""
  text, defaults = flag_record
  if text:
    check_flags(run_dir, text, defaults=defaults)
    write_flags(run_dir, text)


def _update_model_file(model_file: str, mconfig: ModelConfig, prepared: Prepared,
                       epoch: int, state: RunState, log) -> None:
  """Brings a resumed run's model.json up to date: a changed --bn_momentum (and says
  so), and the pitch ranges and note peaks of a run recorded before model.json held
  them (synthesis and transfer warn outside them)."""
  with open(model_file, encoding="utf-8") as f:
    record = json.load(f)
  recorded = ModelConfig.from_dict(record["model"])
  before = recorded.bn_momentum
  changed_momentum = before != mconfig.bn_momentum
  if changed_momentum:
    record["model"] = dataclasses.replace(recorded,
                                          bn_momentum=mconfig.bn_momentum).to_dict()
  missing = {k: value() for k, value in (("pitch_ranges", prepared.pitch_ranges),
                                         ("note_peaks", lambda: prepared.note_peaks))
             if k not in record}
  if not changed_momentum and not missing:
    return
  record |= missing
  write_atomically(model_file, json.dumps(record, indent=2))
  if changed_momentum:
    log(f"BatchNorm momentum {before} -> {mconfig.bn_momentum} from epoch {epoch + 1} "
        f"(recorded in {model_file}). Validation ELBOs from now on use the new moving "
        f"statistics; the best so far ({float(state.best_elbo.numpy()):.2f} at epoch "
        f"{int(state.best_epoch.numpy())}) was measured with the old ones.")


def _val_count(prepared: Prepared, replicas: int) -> int:
  count = sum(prepared.counts["validation"].values())
  return max(replicas, count - count % replicas)


def _summary_callbacks(config: TrainConfig, prepared: Prepared, store_dir: str | None,
                       output: str, size: int = SUMMARY_NOTES) -> list:
  """The summaries' callback, with up to `size` validation notes as its batch, an equal
  share of each instrument's (`pick_notes`), in index order: read from the validation
  store when the notes are kept on disk (so a resume reads no source), else from the
  source (only those notes are decoded). Call inside `data_errors`, which turns a
  source that no longer gives each of those notes once into a DataError.
  """
  rows = prepared.index("validation")
  keys = [rows[i]["key"].encode()
          for i in pick_notes([r["instrument"] for r in rows], size)]
  if store_dir is None:
    notes, _ = note_dataset(prepared, "validation", PipelineConfig(shuffle=False, cache=""),
                            keys={key.decode() for key in keys})
    # A whole pass, so that note_dataset's own check (each note once) runs at its end.
    parts = list(notes.batch(len(keys)).as_numpy_iterator())
    batch = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    place = {key: i for i, key in enumerate(batch["key"].tolist())}
    batch = {k: v[[place[key] for key in keys]] for k, v in batch.items()}
  else:   # the store make_inputs has written: opening it reads only its labels
    store = open_store(prepared, "validation", output, 1.0, store_dir, log=lambda _: None)
    place = {key: i for i, key in enumerate(store.labels["key"].tolist())}
    batch = store.gather(tf.constant([place[key] for key in keys], tf.int64))
    if output == "audio":
      batch["mel"] = PreparedFeatures(prepared)(batch.pop("audio"))
  batch = {k: np.asarray(v) for k, v in batch.items()}
  return [SummaryCallback(config.run_dir, prepared, batch, media_every=config.media_every,
                          griffin_lim_iters=config.griffin_lim_iters,
                          embeddings_every=config.embeddings_every,
                          label_fraction=config.label_fraction)]


def _result(history: dict, state: RunState, chief: bool, task: str) -> dict:
  return {"history": history, "chief": chief, "task": task,
          "epoch": int(state.epoch.numpy()),
          "best_elbo": float(state.best_elbo.numpy()),
          "best_epoch": int(state.best_epoch.numpy()),
          "stopped_early": bool(state.stopped.numpy())}

