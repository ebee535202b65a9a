"""The tf.data pipeline over a prepared dataset."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfgmvae import audio
from tfgmvae.data import pipeline
from tfgmvae.data.dataset import (DataError, PipelineConfig, PreparedFeatures, data_errors,
                                    make_dataset)
from tfgmvae.data.prepare import PrepareConfig, prepare

from conftest import REPO


@pytest.fixture
def prepared(toy_csv, tmp_path):
  return prepare(PrepareConfig("csv", toy_csv, str(tmp_path / "prep")), log=lambda *_: None)


def _all(ds):
  batches = list(ds.as_numpy_iterator())
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def test_batches_have_the_documented_shapes_and_types(prepared):
  ds = make_dataset(prepared, "train", PipelineConfig(batch_size=8))
  spec = ds.element_spec
  assert spec["mel"].shape.as_list() == [None, 43, 256]
  assert spec["mel"].dtype == tf.float32
  assert spec["pitch"].dtype == tf.int32 and spec["instrument"].dtype == tf.int32
  assert spec["labelled"].dtype == tf.bool and spec["key"].dtype == tf.string
  data = _all(ds)
  assert data["mel"].shape == (22, 43, 256)
  # The training split spans exactly [-1, 1]; labels index the vocabularies.
  assert data["mel"].min() == pytest.approx(-1.0, abs=1e-5)
  assert data["mel"].max() == pytest.approx(1.0, abs=1e-5)
  assert set(data["pitch"]) <= set(range(prepared.num_pitches))
  rows = {r["key"]: r for r in prepared.index()}
  for key, inst, pitch in zip(data["key"], data["instrument"], data["pitch"]):
    row = rows[key.decode()]
    assert prepared.instruments[inst] == row["instrument"]
    assert prepared.pitches[pitch] == row["pitch"]


def test_mel_equals_the_audio_front_end(prepared):
  data = _all(make_dataset(prepared, "validation", PipelineConfig(shuffle=False)))
  rows = {r["key"]: r for r in prepared.index()}
  for key, mel in zip(data["key"], data["mel"]):
    expected = audio.normalise(audio.log_mel(audio.load_segment(rows[key.decode()]["path"])),
                               prepared.log_mel_min, prepared.log_mel_max).numpy()
    np.testing.assert_allclose(mel, expected, atol=1e-4)


def test_audio_output_plus_prepared_features_equals_mel_output(prepared):
  cfg = dict(shuffle=False, batch_size=4)
  mel = _all(make_dataset(prepared, "train", PipelineConfig(**cfg)))
  raw = _all(make_dataset(prepared, "train", PipelineConfig(output="audio", **cfg)))
  assert raw["audio"].shape == (22, 11025)
  features = tf.function(PreparedFeatures(prepared))
  np.testing.assert_allclose(features(raw["audio"]).numpy(), mel["mel"], atol=1e-4)


@pytest.mark.parametrize("fraction,per_instrument",
                         [(0.0, 0), (0.01, 1), (0.25, 3), (0.5, 6), (1.0, 11)])
def test_label_fraction_masks_per_instrument(prepared, fraction, per_instrument):
  data = _all(make_dataset(prepared, "train", PipelineConfig(label_fraction=fraction)))
  for inst in range(2):
    assert data["labelled"][data["instrument"] == inst].sum() == per_instrument
  # Validation keeps every label, or none for a run that uses none (N = 0).
  val = _all(make_dataset(prepared, "validation", PipelineConfig(label_fraction=fraction)))
  assert val["labelled"].all() if fraction > 0 else not val["labelled"].any()


def test_shuffle_is_seeded_and_reshuffles_each_epoch(prepared):
  ds = make_dataset(prepared, "train", PipelineConfig(batch_size=22, seed=3))
  first = next(ds.as_numpy_iterator())["key"].tolist()
  second = next(ds.as_numpy_iterator())["key"].tolist()
  again = next(make_dataset(prepared, "train", PipelineConfig(batch_size=22, seed=3))
               .as_numpy_iterator())["key"].tolist()
  assert first == again and first != second


def test_a_file_broken_after_preparation_stops_with_its_name(prepared):
  victim = prepared.index("train")[0]["path"]
  with open(victim, "wb") as f:
    f.write(b"garbage")
  ds = make_dataset(prepared, "train", PipelineConfig(batch_size=4))
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    _all(ds)
  assert victim in str(info.value)
  # The message alone, and what to do. (A dataset built afresh: after an error, the
  # memory cache of the failed pass may hold part of the notes.)
  ds = make_dataset(prepared, "train", PipelineConfig(batch_size=4))
  with pytest.raises(DataError) as info:
    with data_errors(prepared, "Reading: "):
      _all(ds)
  assert str(info.value).startswith(f"Reading: {victim}: cannot be decoded")
  assert str(info.value).endswith(
      f"(the data prepared in {prepared.directory} no longer matches its source: "
      "restore the source, or prepare the data again with bin/prepare_dataset and train a "
      "new run on it)")


def test_data_error_messages_keep_their_characters_and_other_errors_pass():
  name = "/données/x \"y\" ['z'].wav: no such file."

  def check(errors):
    with tf.control_dependencies([pipeline.check_errors(errors, " (hint)")]):
      return tf.identity(errors)

  ds = tf.data.Dataset.from_tensors(tf.constant(["", name, "second"])).map(check)
  with pytest.raises(DataError) as info:
    with data_errors():
      _all(ds)
  assert str(info.value) == name + " (hint)"
  other = tf.data.Dataset.from_tensors(tf.constant([1.0])).map(
      lambda x: tf.debugging.assert_all_finite(x / 0.0, "not a data error"))
  with pytest.raises(tf.errors.InvalidArgumentError, match="not a data error"):
    with data_errors():
      _all(other)


def test_prepare_dataset_cli(toy_csv, tmp_path):
  out = tmp_path / "cli_prep"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, os.path.join(REPO, "bin", "prepare_dataset"), "--dataset=csv",
         f"--data_path={toy_csv}", f"--out_dir={out}"]
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "Prepared 22 training and 2 validation notes" in done.stdout
  again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert again.returncode == 1 and "never overwritten" in again.stderr
  bad = subprocess.run(cmd[:-1] + [f"--out_dir={tmp_path / 'x'}", "--hop_length=0"],
                       capture_output=True, text=True, env=env, timeout=300)
  assert bad.returncode != 0 and "hop_length=0" in bad.stderr
