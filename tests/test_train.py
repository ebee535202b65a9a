"""The training loop: warm start, XLA, precision, distribution settings, NaN, caches,
early stopping and semi-supervised masking."""

import dataclasses
import itertools
import json
import os
import re
import shutil
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgmvae.data.dataset import DataError, PipelineConfig, make_dataset
from tfgmvae.data.prepare import Prepared, PrepareConfig, prepare
from tfgmvae.serving import export as export_lib
from tfgmvae.train.checkpoints import RunStateError, moved_run_dir, run_lock
from tfgmvae.train.config import ConfigError, TrainConfig
from tfgmvae.train.loop import TrainingError, train

from train_helpers import run_weights, tiny_config


def test_warm_start_is_a_separate_explicit_path(prepared_dir, tmp_path):
  source = tmp_path / "source"
  train(tiny_config(source, prepared_dir), log=lambda *_: None)
  source_weights, _ = run_weights(str(source))
  seen = {}

  class Capture(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
      seen["kernel"] = self.model.pitch_encoder.conv1.kernel.numpy()
      seen["step"] = int(self.model.optimizer.iterations.numpy())

  messages = []
  train(tiny_config(tmp_path / "warm", prepared_dir, warm_start=str(source), epochs=1),
        log=messages.append, callbacks=[Capture()])
  name = next(n for n in source_weights if n.endswith(":kernel"))   # pitch_encoder.conv1
  np.testing.assert_array_equal(seen["kernel"], source_weights[name])
  assert seen["step"] == 0                                   # a new run: fresh optimizer
  assert any("Warm-started" in m for m in messages)
  with pytest.raises(ConfigError, match="names this run itself"):
    tiny_config(source, prepared_dir, warm_start=str(source)).validate()
  import gc  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  seen_warnings = []
  handler = logging.Handler()
  handler.emit = lambda record: seen_warnings.append(record.getMessage())
  tf.get_logger().addHandler(handler)
  # Other sizes, or another model kind, as the source's model.json records them: refused
  # before the run directory is made.
  hidden = tiny_config(source, prepared_dir).hidden
  with pytest.raises(RunStateError, match=(
      f"--warm_start={source}: its network has other sizes \\(--hidden={hidden}\\) than "
      "this run's \\(--hidden=32\\); a warm start needs the same sizes: give "
      f"--hidden={hidden}, or")):
    train(tiny_config(tmp_path / "bigger", prepared_dir, warm_start=str(source), hidden=32),
          log=lambda *_: None)
  with pytest.raises(RunStateError, match="it is an MGMVAE run and this is an MVAE run; a "
                     "warm start needs the same model: give --model=mgmvae, or "):
    train(tiny_config(tmp_path / "baseline", prepared_dir, warm_start=str(source),
                      model="mvae"), log=lambda *_: None)
  assert not (tmp_path / "bigger").exists() and not (tmp_path / "baseline").exists()
  # Weights that do not fit although nothing records why (a checkpoint copied away from
  # its run's model.json): the restore itself is tried, quietly.
  bare = tmp_path / "bare"
  shutil.copytree(source / "checkpoints", bare / "checkpoints")
  try:
    with pytest.raises(RunStateError, match="its model does not fit"):
      train(tiny_config(tmp_path / "bigger", prepared_dir, warm_start=str(bare),
                        hidden=32),
            log=lambda *_: None)
    gc.collect()
  finally:
    tf.get_logger().removeHandler(handler)
  # (Not one warning for each value the failed restore left: there were 178 here.)
  assert not [w for w in seen_warnings if "could not be found" in w], seen_warnings[:3]
  # A run that has a checkpoint goes on from it: another warm start is refused (the one
  # it started from, given again, is not).
  with pytest.raises(RunStateError, match=(
      f"--warm_start={bare}: {tmp_path}/warm already has a checkpoint \\(.*ckpt-1\\) and "
      "goes on from it; a warm start acts only before a run's first checkpoint, and this "
      f"run started from {source}/checkpoints/ckpt-")):
    train(tiny_config(tmp_path / "warm", prepared_dir, warm_start=str(bare), epochs=2),
          log=lambda *_: None)
  with pytest.raises(RunStateError, match="this run started from its own initial weights"):
    train(tiny_config(source, prepared_dir, warm_start=str(bare), epochs=2),
          log=lambda *_: None)
  # A run with the pitch adversary from one without it (the adversary starts afresh),
  # and back.
  messages = []
  adversarial = tmp_path / "adversarial"
  train(tiny_config(adversarial, prepared_dir, warm_start=str(source), epochs=1,
                     timbre_adversary=10.0), log=messages.append, callbacks=[Capture()])
  np.testing.assert_array_equal(seen["kernel"], source_weights[name])
  assert any("timbre_adversary not in it: initialised afresh" in m for m in messages)
  messages = []
  train(tiny_config(tmp_path / "plain", prepared_dir, warm_start=str(adversarial),
                    epochs=1),
        log=messages.append)
  assert any(m.startswith("Warm-started") and m.endswith(".") and "afresh" not in m
             for m in messages)
  with open(tmp_path / "plain" / "model.json") as f:
    assert json.load(f)["warm_started_from"] == tf.train.latest_checkpoint(
        str(adversarial / "checkpoints"))
  # Another instrument or pitch vocabulary: refused, though the shapes would fit.
  from conftest import toy_specs, write_notes  # pylint: disable=g-import-not-at-top
  shifted = str(tmp_path / "shifted")
  prepare(PrepareConfig("csv", write_notes(str(tmp_path / "notes2"),
                                           toy_specs(pitches=range(62, 68))), shifted),
          log=lambda *_: None)
  with pytest.raises(RunStateError, match="trained on other pitches \\(60, 61, 62, 63, 64, "
                     "65\\) than this run's data \\(62, 63, 64, 65, 66, 67\\)"):
    train(tiny_config(tmp_path / "other_vocabulary", shifted, warm_start=str(source)),
          log=lambda *_: None)


def test_a_warm_start_names_its_checkpoint_as_given_then(tmp_path, monkeypatch):
  from tfgmvae.train.warm_start import names_checkpoint  # pylint: disable=g-import-not-at-top
  run = tmp_path / "runs" / "src"
  latest, best = str(run / "checkpoints" / "ckpt-7"), str(run / "best" / "ckpt-3")
  (run / "best").mkdir(parents=True)
  os.symlink(tmp_path / "runs", tmp_path / "link")
  monkeypatch.chdir(tmp_path)
  for given, checkpoint in ((latest, latest), (str(run), latest), (f"{run}/", latest),
                            ("runs/src", latest), ("link/src", latest), (best, best),
                            ("link/src/best/ckpt-3", best),
                            ("runs/src", "/moved/from/runs/src/checkpoints/ckpt-7"),
                            ("src/best/ckpt-3", best)):
    assert names_checkpoint(given, checkpoint), (given, checkpoint)
  for given, checkpoint in ((str(run), best),         # the run's latest, not its best
                            ("/", latest), (str(tmp_path), latest), ("runs", latest),
                            (str(run / "checkpoints" / "ckpt-6"), latest),
                            ("../src", latest), ("rc", latest)):
    assert not names_checkpoint(given, checkpoint), (given, checkpoint)


class _Compiled(keras.callbacks.Callback):
  """Records, batch by batch, whether the model trains under XLA."""

  def __init__(self):
    super().__init__()
    self.seen = []

  def on_train_batch_end(self, batch, logs=None):
    self.seen.append(bool(self.model.jit_compile))


def test_xla_trains_the_same_batches(prepared_dir, tmp_path):
  # (The batches carry the notes' keys, strings XLA cannot take: fit gets none.)
  off, on = _Compiled(), _Compiled()
  plain = train(tiny_config(tmp_path / "plain", prepared_dir, epochs=1), log=lambda *_: None,
                callbacks=[off])
  xla = train(tiny_config(tmp_path / "xla", prepared_dir, epochs=1, jit_compile=True),
              log=lambda *_: None, callbacks=[on])
  assert xla["epoch"] == 1
  assert on.seen and all(on.seen) and off.seen and not any(off.seen)
  np.testing.assert_allclose(xla["history"]["loss"], plain["history"]["loss"], rtol=1e-3)


def test_xla_is_refused_over_several_devices(prepared_dir, monkeypatch):
  # XLA could not compile the cross-replica step: mirrored CPU replicas reach for each
  # other's variables, and a multi-worker step's collective gather has no XLA kernel.
  monkeypatch.setenv("TF_CONFIG", json.dumps(
      {"cluster": {"worker": ["localhost:1", "localhost:2"]},
       "task": {"type": "worker", "index": 0}}))
  for strategy, devices in (("mirrored", 2), ("multi_worker", 0)):
    with pytest.raises(ConfigError, match=(
        f"--jit_compile trains on one device only, not with --strategy={strategy} over "
        "several: XLA cannot compile this model's cross-replica step")):
      tiny_config("unused", prepared_dir, jit_compile=True, strategy=strategy,
                  cpu_devices=devices).validate()
  tiny_config("unused", prepared_dir, jit_compile=True, strategy="mirrored",
              cpu_devices=1).validate()   # one replica: allowed
  # What counts is the devices the strategy takes: the GPUs unless --cpu_devices is
  # given; each task's for multi_worker.
  from tfgmvae.train import config as config_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(config_lib, "_gpus", lambda: ["GPU:0", "GPU:1"])
  for strategy, devices, several in (("mirrored", 0, True), ("mirrored", 1, False),
                                     ("multi_worker", 0, True)):
    config = tiny_config("unused", prepared_dir, jit_compile=True, strategy=strategy,
                         cpu_devices=devices)
    assert config._several_devices() is several   # pylint: disable=protected-access
  monkeypatch.setattr(config_lib, "_gpus", lambda: [])
  monkeypatch.setenv("TF_CONFIG", json.dumps(
      {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}))
  tiny_config("unused", prepared_dir, jit_compile=True, strategy="multi_worker").validate()


def test_mixed_float16_scales_the_loss():
  from tfgmvae.train.loop import make_optimizer  # pylint: disable=g-import-not-at-top
  assert not hasattr(make_optimizer(TrainConfig(run_dir="r")), "inner_optimizer")
  scaled = make_optimizer(TrainConfig(run_dir="r", precision="mixed_float16"))
  assert isinstance(scaled, keras.optimizers.LossScaleOptimizer)
  assert float(scaled.scale_loss(3.0)) > 3.0
  # Keras's loss-scaled update fails under the cross-replica step: one device only.
  for strategy, devices in (("mirrored", 2), ("multi_worker", 0)):
    with pytest.raises(ConfigError, match=f"--precision=mixed_float16 trains on one device "
                       f"only, not with --strategy={strategy} over several"):
      TrainConfig(run_dir="r", precision="mixed_float16", strategy=strategy,
                  cpu_devices=devices).validate()


@pytest.mark.parametrize("tf_config,said", [
    ("{not json", "TF_CONFIG is not JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', "TF_CONFIG: \"task\" None does not name"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG: task index 3 is not one of the 1 worker address(es) (0..0)"),
    ('{"task": {"type": "worker", "index": 0}}', "TF_CONFIG: no \"cluster\""),
])
def test_a_tf_config_that_cannot_place_the_worker_is_named(prepared_dir, monkeypatch,
                                                           tf_config, said):
  monkeypatch.setenv("TF_CONFIG", tf_config)
  with pytest.raises(ConfigError) as info:
    tiny_config("unused", prepared_dir, strategy="multi_worker").validate()
  assert said in str(info.value)


def test_too_few_validation_notes_for_the_replicas_names_the_remedy(prepared_dir):
  import types  # pylint: disable=g-import-not-at-top
  from tfgmvae.train.inputs import make_inputs  # pylint: disable=g-import-not-at-top
  p = Prepared.load(prepared_dir)
  notes = sum(p.counts["validation"].values())
  eight = types.SimpleNamespace(num_replicas_in_sync=notes + 1)
  with pytest.raises(ConfigError, match=f"the validation split has {notes} notes, fewer "
                     f"than one batch of {notes + 1} \\(1 note for each of {notes + 1} "
                     "replicas\\); train on fewer replicas \\(--cpu_devices, or fewer "
                     "GPUs\\), or prepare"):
    make_inputs(p, "validation", notes + 1, 0, 4, strategy=eight)


def test_the_last_epoch_is_always_validated(prepared_dir, tmp_path):
  result = train(tiny_config(tmp_path / "rare", prepared_dir, epochs=3, validation_every=5),
                 log=lambda *_: None)
  assert len(result["history"]["val_elbo"]) == 1 and result["best_epoch"] == 3
  assert tf.train.latest_checkpoint(str(tmp_path / "rare" / "best")).endswith("ckpt-3")
  result = train(tiny_config(tmp_path / "every2", prepared_dir, epochs=3,
                             validation_every=2),
                 log=lambda *_: None)
  assert len(result["history"]["val_elbo"]) == 2     # epochs 2 and 3


def test_one_process_at_a_time_trains_into_a_run_directory(prepared_dir, tmp_path):
  run = tmp_path / "locked"
  with run_lock(str(run)):              # as a live bin/train holds it
    with pytest.raises(RunStateError, match="in use by another training process"):
      train(tiny_config(run, prepared_dir, epochs=1), log=lambda *_: None)
    assert not (run / "checkpoints").exists()
  assert train(tiny_config(run, prepared_dir, epochs=1), log=lambda *_: None)["epoch"] == 1
  # Under the lock, train() checks the flags again (they may have changed since
  # bin/train's check), before any work.
  # (A run that prepared its data binds its data flags, here --seed.)
  other = tmp_path / "recorded"
  (other / "data").mkdir(parents=True)
  shutil.copy(os.path.join(prepared_dir, "prepared.json"), other / "data")
  (other / "flags.txt").write_text("--seed=5\n")
  with pytest.raises(RunStateError, match="records different data settings"):
    train(tiny_config(other, prepared_dir, epochs=1), log=lambda *_: None,
          flags_text="--seed=0\n")
  assert sorted(os.listdir(other)) == [".train.lock", "data", "flags.txt"]
  assert (other / "flags.txt").read_text() == "--seed=5\n"


def test_nan_stops_the_run_and_names_the_term(prepared_dir, tmp_path, monkeypatch):
  class Poison(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
      if epoch == 1:
        prior = self.model.pitch_prior.means
        prior.assign(np.full(prior.shape, np.nan, np.float32))

  with pytest.raises(TrainingError) as info:
    train(tiny_config(tmp_path / "nan", prepared_dir, epochs=3), log=lambda *_: None,
          callbacks=[Poison()])
  message = str(info.value)
  assert "the loss term 'kl_pitch' became NaN or Inf during epoch 2" in message
  assert "ckpt-1" in message
  assert message.endswith("Try a lower --learning_rate.")   # (it is float32 already)
  # XLA compiles the step's check away: the logged terms are checked instead, by the
  # callback (counted here: the step's own check gives the same message without XLA).
  from tfgmvae.train import loop  # pylint: disable=g-import-not-at-top
  stops, check = [], loop._NonFiniteStop._check   # pylint: disable=protected-access

  def counted(self, logs):
    try:
      check(self, logs)
    except Exception:
      stops.append(self.model.jit_compile)
      raise

  monkeypatch.setattr(loop._NonFiniteStop, "_check", counted)   # pylint: disable=protected-access
  with pytest.raises(TrainingError, match="the loss term 'kl_pitch' became NaN or Inf "
                     "during epoch 2; the last good checkpoint is .*ckpt-1"):
    train(tiny_config(tmp_path / "nan_xla", prepared_dir, epochs=3, jit_compile=True),
          log=lambda *_: None, callbacks=[Poison()])
  assert stops == [True]
  # Every term at once: the weights or the notes went bad, not one term.
  from tfgmvae.train.loop import _nan_message, _nan_terms  # pylint: disable=g-import-not-at-top
  manager = types.SimpleNamespace(latest_checkpoint=None, checkpoints=[])
  error = _nan_terms(tf.errors.InvalidArgumentError(
      None, None, "assertion failed: [loss terms] [kl_pitch, reconstruction] [are NaN or "
      "Inf]"))
  assert "every loss term (kl_pitch, reconstruction) became NaN or Inf, so the weights " \
      "or the notes themselves did" in _nan_message(error, 4, manager, "float32", 2)
  assert "the loss terms 'kl_pitch', 'reconstruction' became NaN or Inf during epoch 5" \
      in _nan_message(error, 4, manager, "mixed_bfloat16", 6)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_a_note_gone_since_preparation_stops_the_run_naming_it(toy_csv, tmp_path, cache):
  prepared = prepare(PrepareConfig("csv", toy_csv, str(tmp_path / "prep")),
                     log=lambda *_: None)
  gone = prepared.index("train")[5]["path"]
  os.remove(gone)
  with pytest.raises(DataError) as info:
    train(tiny_config(tmp_path / "run", prepared.directory, cache=cache),
          log=lambda *_: None)
  where = ("Training stopped during epoch 1 (no checkpoint was written yet): "
           if cache == "memory" else f"Writing {tmp_path / 'run' / 'cache' / 'train-mel'}: ")
  assert str(info.value).startswith(where), str(info.value)
  assert f"{gone}: no such file. (the data prepared in {prepared.directory} no longer " \
      "matches its source: restore the source, or prepare the data again with " \
      "bin/prepare_dataset and train a new run on it)" in str(info.value)
  # No checkpoint to warm-start from: no such advice (the hint's new run is the way).
  assert "--warm_start" not in str(info.value)
  if cache == "disk":   # the half-written store is gone
    assert os.listdir(tmp_path / "run" / "cache") == []


def test_a_run_kept_on_disk_resumes_without_its_sources(toy_csv, tmp_path):
  from tfgmvae.train import loop  # pylint: disable=g-import-not-at-top
  prepared = prepare(PrepareConfig("csv", toy_csv, str(tmp_path / "prep")),
                     log=lambda *_: None)
  config = tiny_config(tmp_path / "run", prepared.directory, cache="disk", epochs=1)
  train(config, log=lambda *_: None, flags_text="--cache=disk\n--epochs=1\n")
  store_dir = str(tmp_path / "run" / "cache")
  for output in ("mel", "audio"):   # the summaries' notes: the store's = the source's
    if output == "audio":
      from tfgmvae.data.store import open_store  # pylint: disable=g-import-not-at-top
      open_store(prepared, "validation", "audio", 1.0, store_dir, log=lambda _: None)
    callbacks = loop._summary_callbacks  # pylint: disable=protected-access
    for size in (1, 64):   # the split's 2 notes: one per instrument at least; all of it
      (kept,) = callbacks(config, prepared, store_dir, output, size)
      (read,) = callbacks(config, prepared, None, output, size)
      assert kept.val_batch.keys() == read.val_batch.keys()
      assert len(kept.val_batch["key"]) == 2
      for k, v in read.val_batch.items():
        if k == "mel" and output == "audio":   # mel computed from the kept segments
          np.testing.assert_allclose(kept.val_batch[k], v, atol=1e-5)
        else:
          np.testing.assert_array_equal(kept.val_batch[k], v, err_msg=k)
  shutil.rmtree(os.path.dirname(toy_csv))   # every note gone: the stores suffice, also
  messages = []                             # for --cache=auto, which prefers them
  result = train(dataclasses.replace(config, epochs=2, cache="auto"), log=messages.append,
                 flags_text="--epochs=2\n")
  assert result["epoch"] == 2 and f"Reading the notes kept on disk in {store_dir}." in messages
  with pytest.raises(DataError) as info:   # not so in memory
    train(dataclasses.replace(config, epochs=3, cache="memory"), log=lambda *_: None,
          flags_text="--cache=memory\n--epochs=3\n")
  # It stopped in its first epoch: flags.txt still replays the last command that trained.
  assert (tmp_path / "run" / "flags.txt").read_text() == "--epochs=2\n"
  assert "no such file" in str(info.value) and str(info.value).endswith(
      f" {store_dir} keeps this run's notes: --cache=auto or --cache=disk trains from "
      f"them. A run keeps the data it started with; --warm_start={config.run_dir} starts "
      "a new run from this one's weights.")
  assert Prepared.load(prepared.directory).counts == prepared.counts
  # A damaged store (NaN where only finite values are written) is named, not blamed on
  # the learning rate.
  features = os.path.join(store_dir, "train-mel", "features.npy")
  rows = np.load(features, mmap_mode="r+")
  rows[1] = np.nan
  rows.flush()
  del rows
  with pytest.raises(TrainingError) as info:
    train(dataclasses.replace(config, epochs=3, cache="disk"), log=lambda *_: None,
          flags_text="--cache=disk\n--epochs=3\n")
  assert str(info.value).startswith(
      "Training stopped: the loss became NaN or Inf during epoch 3 because the notes kept "
      f"on disk are damaged: {features} holds NaN or Inf values (first in note "), info.value
  assert str(info.value).endswith(
      f"Delete {store_dir} and run the same command again (the notes are written there "
      "again from the source); the last good checkpoint is "
      f"{tmp_path / 'run' / 'checkpoints' / 'ckpt-2'}.")


def test_best_checkpoint_and_early_stopping_follow_the_validation_elbo(prepared_dir,
                                                                       tmp_path):
  run = tmp_path / "patience"
  lines = []
  # A large learning rate makes the validation ELBO fall back soon, so patience 2 stops.
  config = tiny_config(run, prepared_dir, epochs=30, patience=2, learning_rate=0.03,
                        checkpoint_every=5, keep_checkpoints=10, verbose=2)
  result = train(config, log=lines.append)
  elbos = result["history"]["val_elbo"]
  # verbose=2: one short line per epoch with the history's figures.
  shown = [l for l in lines if l.startswith("Epoch ")]
  assert len(shown) == len(elbos)
  for epoch, line in enumerate(shown):
    history = {k: v[epoch] for k, v in result["history"].items()}
    assert re.fullmatch(f"Epoch {epoch + 1}/30 \\([0-9.]+ s\\): " + re.escape(
        f"loss {history['loss']:.1f}, ELBO {history['elbo']:.1f}, validation ELBO "
        f"{history['val_elbo']:.1f}, instrument acc. {history['val_instrument_accuracy']:.3f}"
        f", pitch acc. {history['val_pitch_accuracy']:.3f}"), line), line
  # The early stop is said after its epoch's line.
  assert lines.index(shown[-1]) < [i for i, l in enumerate(lines) if "Early stop" in l][0]
  best = int(np.argmax(elbos)) + 1
  assert result["stopped_early"] and result["best_epoch"] == best
  assert result["best_elbo"] == pytest.approx(max(elbos), rel=1e-6)
  assert len(elbos) == result["epoch"] == best + 2 < 30     # stopped exactly then
  assert all(e < max(elbos) for e in elbos[best:])
  assert any(l.startswith(f"Early stop after epoch {best + 2}: the validation ELBO has "
                          "not improved for 2 epochs (best ") for l in lines)
  # The best/ folder holds that epoch's weights, and they are not the last epoch's.
  assert tf.train.latest_checkpoint(str(run / "best")).endswith(f"ckpt-{best}")
  # Training checkpoints after the first epoch, every 5, and the epoch it stopped at.
  saved = tf.train.get_checkpoint_state(str(run / "checkpoints")).all_model_checkpoint_paths
  assert [int(p.rsplit("-", 1)[1]) for p in saved] == \
      sorted(set(range(5, best + 3, 5)) | {1, best + 2})
  best_weights, _ = run_weights(str(run), "best")
  last_weights, _ = run_weights(str(run))
  assert any(not np.allclose(best_weights[k], last_weights[k]) for k in best_weights)
  # Started again, a stopped run stays stopped.
  again = train(dataclasses.replace(config, epochs=40), log=lines.append)
  assert again["epoch"] == result["epoch"] and again["history"] == {}
  assert "already finished" in lines[-1] and "stopped early" in lines[-1]
  assert lines[-1].endswith(f"start a new run with --warm_start={run}.")


def test_unlabelled_notes_add_no_instrument_loss_in_training(prepared_dir, tmp_path):
  # N = 0: no note keeps its label, so the instrument cross-entropy is exactly 0 in
  # every epoch (validation has no labels either), while the unsupervised terms still
  # train.
  lines = []
  hist = train(tiny_config(tmp_path / "n0", prepared_dir, epochs=2, label_fraction=0.0,
                            verbose=2), log=lines.append)["history"]
  assert hist["instrument_ce"] == [0.0, 0.0] == hist["val_instrument_ce"]
  assert all(v > 0 for v in hist["reconstruction"] + hist["val_reconstruction"])
  # The raw validation accuracy (class index against instrument index) means nothing
  # without labels (nor does the cross-entropy: validation has no labels either): the
  # one after matching components to instruments replaces it, checked against a
  # brute-force matching of the last epoch's model on the validation notes.
  assert "val_instrument_accuracy" not in hist
  model, _, _ = export_lib.load_run(str(tmp_path / "n0"), "latest")
  predicted, labels = [], []
  for batch in make_dataset(Prepared.load(prepared_dir), "validation",
                            PipelineConfig(batch_size=5, shuffle=False, cache="")):
    z_timbre = model.encode(batch["mel"])["z_timbre_mean"]
    predicted += list(np.argmax(model.instrument_log_probs(z_timbre), -1))
    labels += list(batch["instrument"].numpy())
  k = model.config.num_instruments
  best = max(np.mean([name[p] == y for p, y in zip(predicted, labels)])
             for name in itertools.permutations(range(k)))
  assert hist["val_instrument_matched_accuracy"][-1] == pytest.approx(best, abs=1e-9)
  (line,) = [l for l in lines if l.startswith("Epoch 2/2")]
  assert line.endswith(f"matched instrument acc. {best:.3f}, pitch acc. "
                       f"{hist['val_pitch_accuracy'][-1]:.3f}")
  half = train(tiny_config(tmp_path / "n50", prepared_dir, epochs=2, label_fraction=0.5),
               log=lambda *_: None)["history"]
  assert all(v > 0 for v in half["instrument_ce"] + half["val_instrument_ce"])
  assert "val_instrument_accuracy" in half and "val_instrument_matched_accuracy" not in half
  # An MVAE's auxiliary classifier never trains at N = 0: no instrument accuracy at all.
  mvae = train(tiny_config(tmp_path / "mvae0", prepared_dir, epochs=1, label_fraction=0.0,
                            model="mvae"), log=lambda *_: None)["history"]
  assert mvae["val_instrument_ce"] == [0.0]
  assert [k for k in mvae if k.startswith("val_instrument")] == ["val_instrument_ce"]


def test_a_refused_cache_leaves_the_recorded_flags(prepared_dir, tmp_path, monkeypatch):
  from tfgmvae.train import inputs  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  config = tiny_config(run, prepared_dir, epochs=1)
  train(config, log=lambda *_: None, flags_text="--epochs=1\n")
  before = (run / "flags.txt").read_text()
  monkeypatch.setattr(inputs, "available_memory", lambda: 1000)   # a 1 kB machine
  with pytest.raises(ConfigError, match=r"--cache=memory: the 24 notes take 0.0 GB and "
                                        r"0.0 GB of memory is available; use --cache=disk"):
    train(dataclasses.replace(config, epochs=2, cache="memory"), log=lambda *_: None,
          flags_text="--cache=memory\n--epochs=2\n")
  assert (run / "flags.txt").read_text() == before
  # --cache=auto then keeps the notes on disk, and the run goes on.
  messages = []
  done = train(dataclasses.replace(config, epochs=2), log=messages.append,
               flags_text="--epochs=2\n")
  assert done["epoch"] == 2 and any("on disk in" in m for m in messages)
  assert (run / "flags.txt").read_text() == "--epochs=2\n"


def test_moved_run_dir_follows_only_a_trained_run_in_another_folder(tmp_path):
  def run_at(folder, recorded, trained=True):
    os.makedirs(folder / "checkpoints")
    (folder / "flags.txt").write_text(f"--epochs=3\n--run_dir={recorded}\n")
    if trained:
      (folder / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
      (folder / "checkpoints" / "ckpt-1.index").write_bytes(b"")
    return str(folder / "flags.txt")

  original = tmp_path / "original"
  assert moved_run_dir(run_at(original, original), str(original)) is None   # in place
  link = tmp_path / "link"
  link.symlink_to(original)
  assert moved_run_dir(str(link / "flags.txt"), str(original)) is None   # same folder
  assert moved_run_dir(str(original / "flags.txt"), str(tmp_path / "other")) is None
  copy = tmp_path / "copy"
  shutil.copytree(original, copy)
  assert moved_run_dir(str(copy / "flags.txt"), str(original)) == str(copy)
  gone = tmp_path / "gone"   # moved: the recorded folder no longer exists
  assert moved_run_dir(run_at(tmp_path / "moved", gone), str(gone)) == str(tmp_path / "moved")
  untrained = run_at(tmp_path / "fresh", gone, trained=False)
  assert moved_run_dir(untrained, str(gone)) is None
  named = tmp_path / "named.flags"   # a flagfile that is not a run's flags.txt
  named.write_text(f"--run_dir={gone}\n")
  assert moved_run_dir(str(named), str(gone)) is None
