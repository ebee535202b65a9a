"""TensorBoard summaries of a tiny model fitted on toy notes, read back from the event files."""

import glob
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.audio import metadata as audio_metadata
from tensorboard.plugins.projector import ProjectorConfig

from conftest import toy_specs, write_notes, write_nsynth
from tfgmvae import audio as audio_lib
from tfgmvae.audio import display
from tfgmvae.data.dataset import PipelineConfig, data_errors, make_dataset
from tfgmvae.data.prepare import PrepareConfig, prepare
from tfgmvae.model import GMVAE, ModelConfig
from tfgmvae.train import history, summaries
from tfgmvae.train.summaries import SummaryCallback

LATENT = 4
EPOCHS = 2
SCALARS = ("losses/total", "losses/reconstruction", "losses/kl_pitch", "losses/kl_timbre",
           "losses/kl_instrument", "losses/instrument_ce", "losses/pitch_ce", "elbo",
           "accuracy/instrument", "accuracy/pitch")
# Each tag and the name fit()'s history gives the same value (written out here, not
# taken from tfgmvae, so that a swapped tag fails).
HISTORY_KEYS = {"losses/total": "loss", "losses/reconstruction": "reconstruction",
                "losses/kl_pitch": "kl_pitch", "losses/kl_timbre": "kl_timbre",
                "losses/kl_instrument": "kl_instrument",
                "losses/instrument_ce": "instrument_ce", "losses/pitch_ce": "pitch_ce",
                "elbo": "elbo", "accuracy/instrument": "instrument_accuracy",
                "accuracy/pitch": "pitch_accuracy"}
TRAIN_ONLY = ("optimization/learning_rate", "optimization/steps_per_second",
              "progress/optimizer_step")


def _with_noise(batch):
  out = {k: v for k, v in batch.items() if k != "key"}
  out["noise"] = tf.random.normal([tf.shape(batch["mel"])[0], 2, LATENT])
  return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """Prepares the toy notes, fits 2 epochs with the callback; returns what was made."""
  root = tmp_path_factory.mktemp("summaries")
  csv_path = write_notes(str(root / "toy"), toy_specs())
  prepared = prepare(PrepareConfig("csv", csv_path, str(root / "prep")), log=lambda *_: None)
  val = list(make_dataset(prepared, "validation", PipelineConfig(shuffle=False))
             .as_numpy_iterator())
  val_batch = {k: np.concatenate([b[k] for b in val]) for k in val[0]}
  train_ds = make_dataset(prepared, "train", PipelineConfig(batch_size=8)).map(_with_noise)
  val_ds = make_dataset(prepared, "validation", PipelineConfig(shuffle=False)).map(_with_noise)
  keras.utils.set_random_seed(0)
  model = GMVAE(ModelConfig(num_pitches=prepared.num_pitches, num_instruments=2,
                            frames=43, n_mels=256, latent_dim=LATENT, filters=8, hidden=8))
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  run_dir = str(root / "run")
  # Media after the first epoch and when training ends (the epoch-5 media never come).
  callback = SummaryCallback(run_dir, prepared, val_batch, media_every=5, num_audio=3,
                             griffin_lim_iters=2)
  history = model.fit(train_ds, validation_data=val_ds, epochs=EPOCHS, callbacks=[callback],
                      verbose=0)
  return {"prepared": prepared, "history": history.history, "run_dir": run_dir,
          "val_batch": val_batch, "model": model}


def _events(run_dir, name):
  acc = event_accumulator.EventAccumulator(
      os.path.join(run_dir, "summaries", name),
      size_guidance={k: 0 for k in event_accumulator.DEFAULT_SIZE_GUIDANCE})
  acc.Reload()
  return acc


def _scalars(acc, tag):
  return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def test_scalars_match_the_fit_history(run):
  hist = run["history"]
  for name, prefix in (("train", ""), ("validation", "val_")):
    acc = _events(run["run_dir"], name)
    tags = set(acc.Tags()["tensors"])
    expected = set(SCALARS) | (set(TRAIN_ONLY) if name == "train" else set())
    assert expected <= tags, expected - tags
    if name == "validation":
      assert not set(TRAIN_ONLY) & tags
    for tag in expected:
      assert [s for s, _ in _scalars(acc, tag)] == [1, 2], tag
    logged = {tag: np.array([v for _, v in _scalars(acc, tag)]) for tag in SCALARS}
    for tag, key in HISTORY_KEYS.items():   # each under its own tag, with its own value
      np.testing.assert_allclose(logged[tag], hist[prefix + key], rtol=1e-5, err_msg=tag)
    # The ELBO is minus the first four terms, as logged (not only as fit returned it).
    np.testing.assert_allclose(
        logged["elbo"], -(logged["losses/reconstruction"] + logged["losses/kl_pitch"]
                          + logged["losses/kl_timbre"] + logged["losses/kl_instrument"]),
        rtol=1e-5)
  acc = _events(run["run_dir"], "train")
  np.testing.assert_allclose([v for _, v in _scalars(acc, "optimization/learning_rate")],
                             [1e-3, 1e-3], rtol=1e-6)
  # 22 training notes in batches of 8: at least 3 optimizer steps per epoch (Keras 3.4
  # counts one more at the end of an epoch over a dataset of unknown length).
  steps = [v for _, v in _scalars(acc, "progress/optimizer_step")]
  assert 3 <= steps[0] <= steps[1] - 3
  assert steps[1] == int(run["model"].optimizer.iterations.numpy())
  assert all(v > 0 for _, v in _scalars(acc, "optimization/steps_per_second"))


def test_steps_are_counted_under_float16_loss_scaling(run, tmp_path):
  """Keras's LossScaleOptimizer counts steps on the optimizer it wraps: the callback
  reads that one (float16 runs on a CPU here at the model level; bin/train refuses it
  without a GPU)."""
  from tfgmvae.train.loop import make_optimizer  # pylint: disable=g-import-not-at-top
  from tfgmvae.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  prepared = run["prepared"]
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = GMVAE(ModelConfig(num_pitches=prepared.num_pitches, num_instruments=2,
                              frames=43, n_mels=256, latent_dim=LATENT, filters=8,
                              hidden=8)).build_for()
    model.compile(optimizer=make_optimizer(TrainConfig(run_dir="r",
                                                       precision="mixed_float16")))
    run_dir = str(tmp_path / "f16")
    callback = SummaryCallback(run_dir, prepared, run["val_batch"], media_every=0,
                               embeddings_every=0)
    # 8 passes over the notes in one epoch: the first steps overflow float16 and are
    # skipped while the loss scale comes down from 2^15; the wrapped optimizer counts
    # the steps it applied.
    model.fit(make_dataset(prepared, "train", PipelineConfig(batch_size=8)).map(_with_noise)
              .repeat(8), epochs=1, callbacks=[callback], verbose=0)
  finally:
    keras.mixed_precision.set_global_policy(previous)
  steps = int(model.optimizer.inner_optimizer.iterations.numpy())
  assert steps >= 3, float(model.optimizer.dynamic_scale.numpy())
  acc = _events(run_dir, "train")
  assert _scalars(acc, "progress/optimizer_step") == [(1, float(steps))]
  assert [s for s, v in _scalars(acc, "optimization/steps_per_second") if v > 0] == [1]


def test_the_history_reads_back_what_the_callback_wrote(run, tmp_path):
  run_dir = str(tmp_path / "copy")
  shutil.copytree(run["run_dir"], run_dir)
  hist = run["history"]
  got = history.report(run_dir)
  best = int(np.argmax(hist["val_elbo"])) + 1
  assert (got["last_epoch"], got["best_epoch"], got["last_validated_epoch"]) == (2, best, 2)
  np.testing.assert_allclose(got["best"]["elbo"], hist["val_elbo"][best - 1], rtol=1e-5)
  np.testing.assert_allclose(got["last"]["accuracy/pitch"], hist["val_pitch_accuracy"][1],
                             rtol=1e-5)
  assert "spectrograms/input_vs_reconstruction" not in got["last"]   # images are not scalars
  assert got["time"].epochs == 2 and got["time"].seconds >= 0
  # A later event file that writes epoch 2 again (a replay) wins over the first.
  with tf.summary.create_file_writer(os.path.join(run_dir, "summaries", "validation"),
                                     filename_suffix=".replay").as_default():
    tf.summary.scalar("elbo", 123.0, step=2)
  assert history.report(run_dir)["best"]["elbo"] == 123.0
  shutil.rmtree(os.path.join(run_dir, "summaries", "train"))
  with pytest.raises(history.HistoryError, match="summaries/train: no 'elbo' summaries"):
    history.report(run_dir)


def test_training_time_leaves_out_interruptions():
  # Epochs 1-4 at 10 s, a 1,000 s pause before 5, 10 s to 6; 7 missing; 8 after a restart.
  walls = {1: 0.0, 2: 10.0, 3: 20.0, 4: 30.0, 5: 1030.0, 6: 1040.0, 8: 1100.0}
  t = history.training_time(walls)
  assert (t.epochs, t.seconds, t.median_epoch) == (7, 40.0, 10.0)
  assert t.interruptions == ((5, 1000.0), (8, 60.0))
  assert t.estimated_seconds == 40.0 + 3 * 10.0   # epochs 1, 5 and 8 at the median
  with pytest.raises(history.HistoryError, match="1 epoch"):
    history.training_time({3: 1.0})


def test_adversary_scalars_get_their_tags():
  logs = {"adversary_ce": 3.5, "adversary_accuracy": 0.25, "val_adversary_ce": 4.0,
          "val_adversary_accuracy": 0.125, "loss": 1.0}
  assert summaries.scalar_summaries(logs) == {
      "losses/adversary_ce": 3.5, "accuracy/pitch_from_z_t": 0.25, "losses/total": 1.0}
  assert summaries.scalar_summaries(logs, "val_") == {
      "losses/adversary_ce": 4.0, "accuracy/pitch_from_z_t": 0.125}


def test_spectrogram_images_and_audio(run):
  acc = _events(run["run_dir"], "validation")
  tensors = acc.Tensors(summaries.SPECTROGRAM_TAG)
  assert [e.step for e in tensors] == [1, 2]
  k = 2   # num_audio=3 but the validation split has 2 notes
  width, height, *pngs = tf.make_ndarray(tensors[-1].tensor_proto)
  assert (int(width), int(height)) == (2 * 43 + display.GAP, 256) and len(pngs) == k
  image = tf.io.decode_png(pngs[0]).numpy()
  assert image.shape == (256, 2 * 43 + display.GAP, 3)
  recon = run["model"](run["val_batch"]["mel"][:k], training=False)["reconstruction"]
  recon = recon.numpy()   # the last write is at the end of the last epoch: these weights
  expected = display.spectrogram_image(run["val_batch"]["mel"][0], recon[0])
  np.testing.assert_array_equal(image[:, :43], expected[:, :43])   # the input half
  # The reconstruction half (colour-mapped to uint8: one level of rounding allowed).
  assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
  assert np.abs(image[:, 43 + display.GAP:].astype(int)
                - image[:, :43].astype(int)).max() > 0   # not the input again
  description = acc.SummaryMetadata(summaries.SPECTROGRAM_TAG).summary_description
  assert run["val_batch"]["key"][0].decode() in description
  # The audio is Griffin-Lim (2 iterations, deterministic) of those log-mels.
  p = run["prepared"]
  mels = {"input": run["val_batch"]["mel"][:k], "reconstruction": recon}
  for name, tag in summaries.AUDIO_TAGS.items():
    events = acc.Tensors(tag)
    assert [e.step for e in events] == [1, 2]
    clips = tf.make_ndarray(events[-1].tensor_proto)
    assert clips.shape == (k, 2) and list(clips[:, 1]) == [b""] * k   # no labels
    meta = acc.SummaryMetadata(tag)   # what TensorBoard's audio dashboard reads
    assert meta.plugin_data.plugin_name == "audio"
    assert audio_metadata.parse_plugin_metadata(meta.plugin_data.content).encoding == \
        audio_metadata.Encoding.Value("WAV")
    assert "Griffin-Lim (2 iterations)" in meta.summary_description
    expected = summaries.peak_normalise(audio_lib.log_mel_to_audio(
        audio_lib.denormalise(mels[name].astype(np.float32), p.log_mel_min, p.log_mel_max),
        p.audio, n_iter=2))
    for i, encoded in enumerate(clips[:, 0]):
      wave, rate = tf.audio.decode_wav(encoded)
      assert int(rate) == p.audio.sample_rate == 22050
      assert wave.shape == (43 * 256, 1)
      assert 0.9 < float(tf.reduce_max(tf.abs(wave))) <= 0.99 + 1e-4
      np.testing.assert_allclose(wave.numpy()[:, 0], expected[i], atol=2 / 32768,
                                 err_msg=name)


_AUDIO_STDERR = """
import sys
import numpy as np
import tensorflow as tf
from tfgmvae.train import summaries
clips = np.zeros([2, 64], np.float32)
with tf.summary.create_file_writer(sys.argv[1]).as_default(step=1):
  summaries.write_audio("ours", clips, 22050)
  print("--- tf.summary.audio ---", file=sys.stderr, flush=True)
  tf.summary.audio("theirs", clips[:, :, None], 22050)
"""


def test_audio_summaries_log_no_tensorflow_error(tmp_path):
  """Writing the audio prints no "E ... oneDNN supports DT_STRING" line in the run's log."""
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  done = subprocess.run([sys.executable, "-c", _AUDIO_STDERR, str(tmp_path)],
                        capture_output=True, text=True, env=env, timeout=300, check=True)
  ours, theirs = done.stderr.split("--- tf.summary.audio ---")
  assert "DT_STRING" not in ours, ours
  if "oneDNN custom operations are on" in ours:   # the line this avoids, where it exists
    assert "oneDNN supports DT_STRING" in theirs, theirs


def test_media_after_the_first_every_n_and_the_last_epoch_once(run, tmp_path):
  callback = SummaryCallback(str(tmp_path / "r"), run["prepared"], run["val_batch"],
                             media_every=2, num_audio=1, griffin_lim_iters=1)
  callback.set_model(run["model"])
  callback.on_train_begin()
  for epoch in range(4):
    callback.on_epoch_begin(epoch)
    callback.on_epoch_end(epoch, {})
  callback.on_train_end()
  acc = _events(str(tmp_path / "r"), "validation")
  assert [e.step for e in acc.Tensors(summaries.SPECTROGRAM_TAG)] == [1, 2, 4]
  for tag in summaries.AUDIO_TAGS.values():
    assert [e.step for e in acc.Tensors(tag)] == [1, 2, 4]


def test_no_training_instrument_accuracy_without_labels(run, tmp_path):
  logs = {"loss": 5.0, "elbo": -4.0, "instrument_ce": 0.0, "instrument_accuracy": 0.0,
          "val_instrument_accuracy": 0.5}
  for fraction, expected in ((0.0, []), (0.25, [1])):
    folder = str(tmp_path / f"n{fraction}")
    callback = SummaryCallback(folder, run["prepared"], run["val_batch"], media_every=0,
                               label_fraction=fraction)
    callback.set_model(run["model"])
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    callback.on_epoch_end(0, logs)
    callback.on_train_end()
    train_tags = _events(folder, "train").Tags()["tensors"]
    assert ([1] if "accuracy/instrument" in train_tags else []) == expected
    assert "losses/instrument_ce" in train_tags     # (a true 0 contribution to the loss)
    assert _scalars(_events(folder, "validation"), "accuracy/instrument") == [(1, 0.5)]


def test_a_replayed_last_epoch_does_not_write_its_media_again(run, tmp_path):
  # A restart that replays the last epoch (killed after its summaries, before its
  # final checkpoint): the media and embeddings that end training are there already.
  def train_through(epochs):
    callback = SummaryCallback(str(tmp_path / "r"), run["prepared"], run["val_batch"],
                               media_every=5, num_audio=1, griffin_lim_iters=1)
    callback.set_model(run["model"])
    callback.on_train_begin()
    for epoch in epochs:
      callback.on_epoch_begin(epoch)
      callback.on_epoch_end(epoch, {})
    callback.on_train_end()

  train_through(range(3))
  train_through(range(2, 3))     # epoch 3 again, from the checkpoint of epoch 2
  acc = _events(str(tmp_path / "r"), "validation")
  assert [e.step for e in acc.Tensors(summaries.SPECTROGRAM_TAG)] == [1, 3]
  for tag in summaries.AUDIO_TAGS.values():
    assert [e.step for e in acc.Tensors(tag)] == [1, 3]


def test_projector_config_matches_checkpoint_and_metadata(run):
  directory = os.path.join(run["run_dir"], "summaries", "validation")
  config = ProjectorConfig()
  with open(os.path.join(directory, "projector_config.pbtxt")) as f:
    text_format.Parse(f.read(), config)
  checkpoint = tf.train.latest_checkpoint(directory)
  assert checkpoint and os.path.basename(checkpoint) == f"embeddings-{EPOCHS}"
  assert len(glob.glob(os.path.join(directory, "embeddings-*.index"))) == 1
  stored = dict(tf.train.list_variables(checkpoint))
  reader = tf.train.load_checkpoint(checkpoint)
  n = len(run["val_batch"]["mel"])
  assert len(config.embeddings) == 2
  means = run["model"].encode(run["val_batch"]["mel"])
  for info, key in zip(config.embeddings, ("z_timbre_mean", "z_pitch_mean")):
    assert info.tensor_name in stored
    assert stored[info.tensor_name] == [n, LATENT] == list(info.tensor_shape)
    np.testing.assert_allclose(reader.get_tensor(info.tensor_name), means[key].numpy(),
                               atol=1e-5)
    assert info.metadata_path == "metadata.tsv"
  with open(os.path.join(directory, "metadata.tsv")) as f:
    rows = [line.rstrip("\n").split("\t") for line in io.StringIO(f.read())]
  assert rows[0] == ["instrument", "pitch", "key"] and len(rows) == n + 1
  prepared, batch = run["prepared"], run["val_batch"]
  for row, inst, pitch, key in zip(rows[1:], batch["instrument"], batch["pitch"],
                                   batch["key"]):
    assert row == [prepared.instruments[inst], str(prepared.pitches[pitch]), key.decode()]


def test_colorize_and_image_orientation():
  rgb = display.colorize(np.array([-1.0, 1.0, 5.0]))
  assert rgb.dtype == np.uint8 and rgb.shape == (3, 3)
  assert rgb[0].sum() < rgb[1].sum() and (rgb[1] == rgb[2]).all()
  mel = np.full((43, 256), -1.0, np.float32)
  mel[:, 0] = 1.0   # loudest in the lowest band
  image = display.spectrogram_image(mel)
  assert image.shape == (256, 43, 3)
  assert (image[-1] == rgb[1]).all() and (image[0] == rgb[0]).all()
  waves = summaries.peak_normalise(np.array([[0.0, 0.5, -2.0], [0.0, 0.0, 0.0]]))
  np.testing.assert_allclose(waves, [[0.0, 0.2475, -0.99], [0.0, 0.0, 0.0]], rtol=1e-6)


def test_learning_rate_of_a_schedule_follows_the_optimizer_step(tmp_path):
  model = GMVAE(ModelConfig(num_pitches=2, num_instruments=2, latent_dim=LATENT, filters=4,
                            hidden=4))
  schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=1, decay_rate=0.5)
  model.compile(optimizer=keras.optimizers.Adam(schedule))
  callback = SummaryCallback(str(tmp_path), None, {"mel": np.zeros((1, 43, 256)),
                                                   "instrument": np.zeros(1, int)})
  callback.set_model(model)
  model.optimizer.iterations.assign(2)
  assert callback.current_learning_rate() == pytest.approx(2.5e-4)


def test_spread_and_media_indices():
  assert summaries.spread(3, 1024).tolist() == [0, 1, 2]
  assert summaries.spread(10, 4).tolist() == [0, 3, 6, 9]
  assert summaries.spread(0, 4).tolist() == []
  wide = summaries.spread(12678, 1024)   # NSynth's validation split
  assert len(set(wide.tolist())) == 1024 and wide[0] == 0 and wide[-1] == 12677
  with pytest.raises(ValueError, match="expected count >= 0 and size >= 1"):
    summaries.spread(5, 0)
  # An equal share of each instrument, even one with few notes among many.
  assert summaries.pick_notes(list("aabbcc"), 3) == [0, 2, 4]
  assert summaries.pick_notes(list("aabbcc"), 1024) == [0, 1, 2, 3, 4, 5]
  assert summaries.pick_notes(list("aaaaaaaaab"), 4) == [0, 8, 9]
  assert summaries.pick_notes(list("abcde"), 2) == [0, 1, 2, 3, 4]   # one each at least
  assert summaries.pick_notes([], 3) == []
  assert summaries.media_indices([0, 0, 0, 1, 1, 2], 3) == [0, 3, 5]
  assert summaries.media_indices([0, 0, 1], 3) == [0, 2, 1]   # then the next notes
  assert summaries.media_indices([4, 4], 3) == [0, 1]
  assert summaries.media_indices([1, 2], 0) == []


def test_training_summarises_notes_of_every_instrument(tmp_path):
  """The projector and the media see every instrument, not the first in key order;
  only the notes picked are decoded."""
  from tfgmvae.train import loop  # pylint: disable=g-import-not-at-top
  from tfgmvae.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  names = ("a", "b", "c")
  csv_path = write_notes(str(tmp_path / "toy"), toy_specs(names, pitches=range(60, 70)))
  prepared = prepare(PrepareConfig("csv", csv_path, str(tmp_path / "prep")),
                     log=lambda *_: None)
  order = [row["instrument"] for row in prepared.index("validation")]
  assert order == sorted(order) and len(order) == 6 and set(order[:3]) != set(names)
  config = TrainConfig(run_dir=str(tmp_path / "run"), prepared_dir=prepared.directory)
  callbacks = loop._summary_callbacks  # pylint: disable=protected-access
  (few,) = callbacks(config, prepared, None, "mel", 3)
  (every,) = callbacks(config, prepared, None, "mel")
  assert [prepared.instruments[i] for i in few.val_batch["instrument"]] == ["a", "b", "c"]
  assert [prepared.instruments[i] for i in every.val_batch["instrument"]] == order
  np.testing.assert_array_equal(every.val_batch["mel"][[0, 2, 4]], few.val_batch["mel"])
  assert sorted(every.val_batch["instrument"][every.media]) == [0, 1, 2]


def test_the_tensorboard_command_serves_the_runs_scalars(run):
  """README: `tensorboard --logdir=RUN_DIR/summaries` (a real server, read over HTTP)."""
  command = shutil.which("tensorboard", path=sysconfig.get_path("scripts")) or \
      shutil.which("tensorboard")
  assert command, "the tensorboard command is not installed"
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  logdir = os.path.join(run["run_dir"], "summaries")
  server = subprocess.Popen([command, f"--logdir={logdir}", "--host=127.0.0.1",
                             f"--port={port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  query = urllib.parse.urlencode({"run": "train", "tag": "losses/total"})
  url = f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}"
  try:
    deadline = time.monotonic() + 180   # starts, then loads the event files
    points = []
    while len(points) < EPOCHS:
      if server.poll() is not None:
        pytest.fail(f"tensorboard exited with {server.returncode}: {server.stdout.read()}")
      assert time.monotonic() < deadline, f"no scalars from {url} after 180 s"
      try:
        with urllib.request.urlopen(url, timeout=5) as response:
          points = json.load(response)
      except OSError:   # not listening yet, or the run not loaded yet (404)
        time.sleep(0.5)
    assert [step for _, step, _ in points] == [1, 2]
    np.testing.assert_allclose([value for _, _, value in points], run["history"]["loss"],
                               rtol=1e-5)
  finally:
    server.kill()
    server.communicate()


def test_summaries_of_nsynth_records_follow_the_index_and_notice_a_repeated_note(tmp_path):
  from tfgmvae.data.dataset import DataError  # pylint: disable=g-import-not-at-top
  from tfgmvae.train import loop  # pylint: disable=g-import-not-at-top
  from tfgmvae.train.config import TrainConfig  # pylint: disable=g-import-not-at-top
  path = write_nsynth(str(tmp_path / "nsynth-valid.tfrecord"),
                      families=(("brass", 9), ("guitar", 1)))   # records not in key order
  records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
  with tf.io.TFRecordWriter(path) as w:
    for record in reversed(records):
      w.write(record)
  prepared = prepare(PrepareConfig("nsynth", path, str(tmp_path / "prep")),
                     log=lambda *_: None)
  config = TrainConfig(run_dir=str(tmp_path / "run"), prepared_dir=prepared.directory)
  rows = prepared.index("validation")
  callbacks = loop._summary_callbacks  # pylint: disable=protected-access
  (cb,) = callbacks(config, prepared, None, "mel", 2)
  picked = [rows[i]["key"] for i in summaries.pick_notes([r["instrument"] for r in rows], 2)]
  assert [k.decode() for k in cb.val_batch["key"]] == picked and len(picked) == 2
  assert sorted(cb.val_batch["instrument"]) == [0, 1]
  repeated = next(r for r in records if picked[0].encode() in r)
  with tf.io.TFRecordWriter(path) as w:   # the source changed: one note twice
    for record in records + [repeated]:
      w.write(record)
  with pytest.raises(DataError, match="no longer matches its source"):
    with data_errors(prepared):
      callbacks(config, prepared, None, "mel", 2)
