"""Export, signatures, fresh-process round trip, bad input, and the command-line tools."""

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types
import urllib.request

import numpy as np
import pytest
import soundfile
import tensorflow as tf

from conftest import REPO, tone, toy_specs, write_notes
from tfgmvae.data.dataset import PipelineConfig, make_dataset
from tfgmvae.audio import display, io, load_segment, spectral
from tfgmvae.audio.resample import resample
from tfgmvae.data.prepare import Prepared, PrepareConfig, prepare
from tfgmvae.serving import client
from tfgmvae.serving import export as export_lib
from tfgmvae.train.config import TrainConfig
from tfgmvae.train.loop import train

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
INSTRUMENTS = ("Vc", "Pno")        # the names the documented requests use
VOCAB = tuple(sorted(INSTRUMENTS))  # the model's class order
PITCHES = range(58, 68)            # includes the requests' 60 and 67
GL_ITERS = 4


def _quiet(*_):
  pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Tiny MGMVAE and MVAE runs on toy notes named like the requests' instruments, and
  an export of each."""
  root = tmp_path_factory.mktemp("serving")
  csv_path = write_notes(str(root / "notes"), toy_specs(INSTRUMENTS, PITCHES))
  prepared = str(root / "prepared")
  prepare(PrepareConfig("csv", csv_path, prepared), log=_quiet)
  out = {"root": root, "prepared": prepared}
  for kind in ("mgmvae", "mvae"):
    run_dir = str(root / f"run_{kind}")
    train(TrainConfig(run_dir=run_dir, prepared_dir=prepared, model=kind, epochs=2,
                      batch_size=8, filters=8, hidden=16, latent_dim=4, media_every=0,
                      verbose=0), log=_quiet)
    out[kind] = run_dir
    out[f"{kind}_export"] = export_lib.export(export_lib.ExportConfig(
        run_dir, str(root / f"export_{kind}"), griffin_lim_iters=GL_ITERS), log=_quiet)
  note = str(root / "note.wav")
  soundfile.write(note, tone(60, 44100, 0.8, harmonics=9, amp=0.4), 44100)
  out["note"] = note
  return out


@pytest.fixture(scope="module")
def live(runs):
  module, _ = export_lib.build_module(runs["mgmvae"], griffin_lim_iters=GL_ITERS)
  return module


@pytest.fixture(scope="module")
def loaded(runs):
  return tf.saved_model.load(runs["mgmvae_export"])


def test_export_layout_versions_and_metadata(runs):
  base = os.path.dirname(runs["mgmvae_export"])
  assert export_lib.versions(base) == [1]
  for name in ("saved_model.pb", "variables", "assets.extra/tfgmvae.json"):
    assert os.path.exists(os.path.join(runs["mgmvae_export"], name)), name
  meta = client.metadata(runs["mgmvae_export"])
  assert meta["instruments"] == list(VOCAB) and meta["pitches"] == list(PITCHES)
  assert meta["version"] == 1 and meta["output_sample_rate"] == 22050
  assert meta["checkpoint"].startswith(os.path.join(runs["mgmvae"], "best"))
  with open(os.path.join(runs["mgmvae"], "model.json")) as f:
    assert json.load(f)["instruments"] == list(VOCAB)   # export needs no data
  before = os.path.getmtime(os.path.join(runs["mgmvae_export"], "saved_model.pb"))
  second = export_lib.export(export_lib.ExportConfig(runs["mgmvae"], base, "latest",
                                                     GL_ITERS), log=_quiet)
  assert second == os.path.join(base, "2") and export_lib.versions(base) == [1, 2]
  with pytest.raises(export_lib.ExportError, match="never overwritten"):
    export_lib.export(export_lib.ExportConfig(runs["mgmvae"], base, version=1), log=_quiet)
  assert os.path.getmtime(os.path.join(runs["mgmvae_export"], "saved_model.pb")) == before
  assert not [n for n in os.listdir(base) if n.startswith(".tmp")]
  with pytest.raises(export_lib.ExportError, match="model.json: not found"):
    export_lib.read_run(str(runs["root"]))
  with pytest.raises(export_lib.ExportError,
                     match="--checkpoint=nonsense: expected 'best', 'latest'"):
    export_lib.checkpoint_path(runs["mgmvae"], "nonsense")
  # Another run's checkpoint would be served under this run's names and scales.
  other = export_lib.checkpoint_path(runs["mvae"], "best")
  with pytest.raises(export_lib.ExportError, match=f"--checkpoint={other}: belongs to the "
                     f"run {runs['mvae']}, whose model differs from "):
    export_lib.checkpoint_path(runs["mgmvae"], other)
  copy = os.path.join(str(runs["root"]), "copied", "ckpt")   # a copy outside any run
  os.makedirs(os.path.dirname(copy))
  mine = export_lib.checkpoint_path(runs["mgmvae"], "best")
  for suffix in (".index", ".data-00000-of-00001"):
    shutil.copy(mine + suffix, copy + suffix)
  assert export_lib.checkpoint_path(runs["mgmvae"], copy) == copy
  for kwargs, said in ((dict(version=2**63), "--version=9223372036854775808: expected an "
                        "integer in 1..9223372036854775807"),
                       (dict(griffin_lim_iters=10**11), "--griffin_lim_iters="
                        "100000000000: expected 1..10000"),
                       (dict(export_dir=""), "--export_dir is empty"),
                       (dict(export_dir=os.path.join(runs["mgmvae"], "model.json")),
                        "model.json: is a file"),
                       # A version folder (or a new one beside it) would nest versions.
                       (dict(export_dir=second), "2: is itself an exported version"),
                       (dict(export_dir=os.path.join(base, "7")), f"7: is named like a "
                        f"version folder of {base}, which holds exported versions")):
    with pytest.raises(export_lib.ExportError, match=re.escape(said)):
      export_lib.ExportConfig(**(dict(run_dir=runs["mgmvae"], export_dir=base) | kwargs))
  shutil.rmtree(second)
  open(os.path.join(base, "3"), "w").close()        # a stray file takes its number too
  third = export_lib.export(export_lib.ExportConfig(runs["mgmvae"], base,
                                                    griffin_lim_iters=GL_ITERS), log=_quiet)
  assert third == os.path.join(base, "4")
  assert client.resolve(base) == ("saved_model", third)
  shutil.rmtree(third)
  os.remove(os.path.join(base, "3"))


def test_an_export_racing_another_takes_the_next_version(runs, tmp_path, monkeypatch):
  """Two exports without --version both pick version 1; the one that finishes second
  (here: another version 1 appears while this one builds) writes version 2."""
  base = str(tmp_path / "race")
  build = export_lib.build_module

  def build_while_another_finishes(*args, **kwargs):
    out = build(*args, **kwargs)
    shutil.copytree(runs["mgmvae_export"], os.path.join(base, "1"))
    return out

  monkeypatch.setattr(export_lib, "build_module", build_while_another_finishes)
  config = export_lib.ExportConfig(runs["mgmvae"], base, griffin_lim_iters=GL_ITERS)
  assert export_lib.export(config, log=_quiet) == os.path.join(base, "2")
  assert client.metadata(os.path.join(base, "2"))["version"] == 2
  assert filecmp.cmp(os.path.join(base, "1", "saved_model.pb"),
                     os.path.join(runs["mgmvae_export"], "saved_model.pb"), shallow=False)
  # A given --version is never moved: the loser fails, and leaves the winner as it is.
  given = export_lib.ExportConfig(runs["mgmvae"], base, version=1,
                                  griffin_lim_iters=GL_ITERS)
  shutil.rmtree(os.path.join(base, "1"))
  with pytest.raises(export_lib.ExportError, match="1 appeared while exporting"):
    export_lib.export(given, log=_quiet)
  assert export_lib.versions(base) == [1, 2]
  assert not [n for n in os.listdir(base) if n.startswith(".tmp")]


def _graph(export_dir: str):
  """The SavedModel's graph: its functions' names and op counts, and its constants'
  byte sizes."""
  from tensorflow.core.protobuf import saved_model_pb2
  saved = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
  graph = saved.meta_graphs[0].graph_def
  functions = {fn.signature.name: len(fn.node_def) for fn in graph.library.function}
  nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
  constants = [len(n.attr["value"].tensor.tensor_content) for n in nodes
               if n.op == "Const"]
  return functions, constants


def test_the_export_graph_holds_each_part_once(runs, loaded, tmp_path):
  from tfgmvae.audio import spectral
  functions, constants = _graph(runs["mgmvae_export"])
  # The mel filterbank and its pseudo-inverse are variables, saved once; as graph
  # constants they were copied into every function that analyses or inverts a log-mel
  # (30 copies, 31.5 of the quickstart export's 42.6 MB).
  filterbank = spectral.mel_filterbank()
  np.testing.assert_array_equal(loaded.mel_filterbank.numpy(), filterbank)
  np.testing.assert_array_equal(loaded.mel_pseudo_inverse.numpy(),
                                spectral.mel_pseudo_inverse())
  assert max(constants) < filterbank.nbytes / 8, max(constants)
  # Each signature is traced once (a trace made before saving was saved beside the
  # save's own).
  for name in ("encode", "encode_mel", "decode", "synthesize", "synthesize_mel",
               "transfer", "transfer_from_source"):
    traces = [f for f in functions if re.fullmatch(f"__inference__?{name}_[0-9]+", f)]
    assert len(traces) == 1, (name, traces)
  # Griffin-Lim and the NNLS inversion are graph loops: more iterations, same graph.
  more = export_lib.export(export_lib.ExportConfig(
      runs["mgmvae"], str(tmp_path), griffin_lim_iters=4 * GL_ITERS), log=_quiet)
  assert sum(_graph(more)[0].values()) == sum(functions.values())


def test_fresh_process_without_tfgmvae_matches_live_model(runs, live):
  out = str(runs["root"] / "fresh.npz")
  done = subprocess.run([sys.executable, os.path.join(REPO, "tests", "serving_check.py"),
                         runs["mgmvae_export"], runs["note"], out], env=ENV,
                        capture_output=True, text=True, timeout=600, cwd=str(runs["root"]))
  assert done.returncode == 0, done.stderr[-3000:]
  got = dict(np.load(out))
  assert not got["tfgmvae_imported"]
  assert got["unknown_ops"].size == 0, got["unknown_ops"]
  assert len(got["ops"]) > 20
  assert set(got["signatures"]) == {"encode", "encode_mel", "decode", "synthesize",
                                    "synthesize_mel", "transfer", "transfer_from_source",
                                    "serving_default"}
  wave, rate = soundfile.read(runs["note"], dtype="float32")
  wave = wave[:rate]
  expected = {
      "synthesize": live.synthesize(tf.constant(["Vc", "Pno"]), tf.constant([60, 67]),
                                    tf.constant([0.0, 0.5]),
                                    tf.constant([0, 1], tf.int64)),
      "transfer": live.transfer(tf.constant(np.round(wave, 6)[None]), tf.constant(rate),
                                tf.constant(["Pno"]), tf.constant([1.0])),
  }
  for prefix in ("rest", "grpc", "session"):
    for name, outputs in expected.items():
      for key, value in outputs.items():
        have = got[f"{prefix}_{name}/{key}"]
        if value.dtype == tf.string:
          assert list(have) == list(value.numpy().astype(str)), (prefix, name, key)
        else:
          np.testing.assert_allclose(have, value.numpy(), atol=2e-4, rtol=1e-3,
                                     err_msg=f"{prefix} {name} {key}")
  mel = np.linspace(-1, 1, 2 * 43 * 256, dtype=np.float32).reshape(2, 43, 256)
  for key, value in live.encode_mel(tf.constant(mel)).items():
    if value.dtype != tf.string:
      np.testing.assert_allclose(got[f"encode_mel/{key}"], value.numpy(), atol=1e-5,
                                 rtol=1e-4, err_msg=key)
  z = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
  for key, value in live.decode(tf.constant(z), tf.constant(-z)).items():
    np.testing.assert_allclose(got[f"decode/{key}"], value.numpy(), atol=2e-4, rtol=1e-3,
                               err_msg=key)
  assert got["rest_synthesize/audio"].shape == (2, 43 * 256)
  assert got["rest_transfer/mel"].shape == (1, 43, 256)


def _synth(sig, instrument=("Vc",), pitch=(60,), w=(0.0,), seed=(0,)):
  return sig(instrument=tf.constant(list(instrument), tf.string),
             pitch=tf.constant(list(pitch), tf.int32),
             w=tf.constant(list(w), tf.float32), seed=tf.constant(list(seed), tf.int64))


@pytest.mark.parametrize("kwargs,message", [
    (dict(instrument=["Violin"]), r"unknown instrument name\(s\)\] \[Violin\]"),
    (dict(instrument=["", "Vc", "Flute"], pitch=[60] * 3, w=[0.0] * 3, seed=[0] * 3),
     r"unknown instrument name\(s\)\] \[\(empty\) Flute\]"),
    (dict(pitch=[20]), r"MIDI number\(s\)\] \[20\]"),
    (dict(w=[-1.0]), "w must be >= 0"),
    (dict(w=[10.5]), "w must be >= 0.0 and <= 10.0"),
    (dict(w=[float("nan")]), "w must be finite"),
    (dict(instrument=["Vc"] * 3, pitch=[60] * 3, w=[3e38] * 3, seed=[1, 2, 3]),
     "w must be >= 0.0 and <= 10.0"),
    (dict(instrument=["Vc", "Pno"]), "must all have the same length"),
    (dict(instrument=[], pitch=[], w=[], seed=[]), "input instrument is empty"),
])
def test_synthesize_rejects_bad_input(loaded, kwargs, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    _synth(loaded.signatures["synthesize"], **kwargs)


def _transfer(sig, audio=None, rate=44100, target=("Pno",), alpha=(1.0,), **extra):
  audio = tone(60, rate, 0.6)[None] if audio is None else audio
  return sig(audio=tf.constant(audio, tf.float32), sample_rate=tf.constant(rate),
             target_instrument=tf.constant(list(target)),
             alpha=tf.constant(list(alpha), tf.float32), **extra)


@pytest.mark.parametrize("kwargs,message", [
    (dict(alpha=[1.5]), r"alpha must be >= 0.0 and <= 1.0"),
    (dict(alpha=[-0.1]), r"alpha must be >= 0.0 and <= 1.0"),
    (dict(target=["Kazoo"]), r"target_instrument: unknown instrument name\(s\)\] \[Kazoo"),
    (dict(rate=0), "sample_rate must be >= 1000"),
    (dict(rate=10_000_000), "sample_rate must be >= 1000 and <= 384000"),
    (dict(audio=np.full([1, 4000], np.nan, np.float32)), "NaN or infinite samples"),
    (dict(audio=np.zeros([1, 0], np.float32)), "needs more than offset"),
    (dict(target=["Pno", "Vc"]), "must all have the same length"),
    (dict(audio=np.zeros([1, 44100], np.float32)), "a note is silent in its analysed "
     "segment \\(0 s to 0.5 s: peak under 0.0001\\); expected a sounding note"),
])
def test_transfer_rejects_bad_input(loaded, kwargs, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    _transfer(loaded.signatures["transfer"], **kwargs)


def test_other_signatures_reject_bad_shapes(loaded):
  sigs = loaded.signatures
  latent = int(loaded.timbre_means.shape[1])
  # Declared whole (TF Serving's metadata shows them), and checked again at run time.
  declared = {n: spec.shape.as_list() for name in ("encode_mel", "decode")
              for n, spec in sigs[name].structured_input_signature[1].items()}
  assert declared == {"mel": [None, 43, 256], "z_timbre": [None, latent],
                      "z_pitch": [None, latent]}
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"expected shape \[batch, 43, "):
    sigs["encode_mel"](mel=tf.zeros([1, 40, 256]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"z_pitch: expected shape"):
    sigs["decode"](z_timbre=tf.zeros([1, 4]), z_pitch=tf.zeros([1, 5]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="decoded mel is not finite"):
    sigs["decode"](z_timbre=tf.fill([1, latent], 3e38), z_pitch=tf.zeros([1, latent]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="source_instrument: unknown"):
    _transfer(sigs["transfer_from_source"], source_instrument=tf.constant(["Sitar"]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="sample_rate must be"):
    sigs["encode"](audio=tf.zeros([1, 100]), sample_rate=tf.constant(-5))
  sound = tone(60, 22050, 0.6)
  with pytest.raises(tf.errors.InvalidArgumentError, match="a note is silent"):
    sigs["encode"](audio=tf.constant(np.stack([sound, np.zeros_like(sound)])),
                   sample_rate=tf.constant(22050))


def test_signatures_follow_the_model(live, runs):
  model = live.model
  pitch_means = model.pitch_prior.means.numpy()
  timbre_means = model.timbre_prior.means.numpy()
  np.testing.assert_array_equal(live.timbre_means.numpy(), timbre_means)
  # w = 0: the decoded component means themselves, for any seed.
  out = live.synthesize_mel(tf.constant(["Pno"]), tf.constant([63]), tf.constant([0.0]),
                            tf.constant([5], tf.int64))
  k, m = VOCAB.index("Pno"), list(PITCHES).index(63)
  want = model.decode(timbre_means[k:k + 1], pitch_means[m:m + 1]).numpy()
  np.testing.assert_allclose(out["mel"].numpy(), want, atol=1e-6)
  # w > 0: deterministic per seed, different across seeds.
  a, b, c = (_synth(live.synthesize_mel, w=[1.0], seed=[s])["mel"].numpy()
             for s in (1, 1, 2))
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 1e-4
  # The graph's front end gives the pipeline's log-mel for the same note (notes at
  # 16, 44.1 and 48 kHz), so `encode` on audio equals `encode_mel` on that log-mel.
  prepared = Prepared.load(runs["prepared"])
  batch = next(iter(make_dataset(prepared, "validation", PipelineConfig(
      batch_size=4, shuffle=False, cache=""))))
  rows = prepared.index("validation")[:4]
  waves = [soundfile.read(r["path"], dtype="float32") for r in rows]
  assert len({rate for _, rate in waves}) > 1
  for (wave, rate), mel in zip(waves, batch["mel"].numpy()):
    graph_mel = live._features(tf.constant(wave[None]), tf.constant(rate)).numpy()[0]  # pylint: disable=protected-access
    np.testing.assert_allclose(graph_mel, mel, atol=2e-3)
    via_audio = live.encode(tf.constant(wave[None]), tf.constant(rate))
    via_mel = live.encode_mel(tf.constant(graph_mel[None]))
    np.testing.assert_allclose(via_audio["z_timbre_mean"].numpy(),
                               via_mel["z_timbre_mean"].numpy(), atol=1e-5)
  # Transfer: alpha = 0 decodes the note's own codes; a given source shifts by the
  # difference of the two centres.
  wave, rate = waves[0]
  codes = live.encode(tf.constant(wave[None]), tf.constant(rate))
  same = live.transfer(tf.constant(wave[None]), tf.constant(rate), tf.constant(["Pno"]),
                       tf.constant([0.0]))
  own = model.decode(codes["z_timbre_mean"], codes["z_pitch_mean"]).numpy()
  np.testing.assert_allclose(same["mel"].numpy(), own, atol=1e-5)
  assert same["source_instrument"].numpy()[0] == codes["instrument"].numpy()[0]
  assert same["pitch"].numpy()[0] == codes["pitch"].numpy()[0]     # as the model hears it
  moved = live.transfer_from_source(tf.constant(wave[None]), tf.constant(rate),
                                    tf.constant(["Vc"]), tf.constant(["Pno"]),
                                    tf.constant([0.5]))
  shift = timbre_means[VOCAB.index("Pno")] - timbre_means[VOCAB.index("Vc")]
  z_t = codes["z_timbre_mean"].numpy() + 0.5 * shift
  np.testing.assert_allclose(moved["mel"].numpy(),
                             model.decode(z_t, codes["z_pitch_mean"]).numpy(), atol=1e-5)
  assert moved["audio"].shape == (1, 43 * 256)
  probs = codes["instrument_probs"].numpy()
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  assert codes["pitch"].numpy()[0] in PITCHES


def test_mvae_export_uses_class_centres(runs):
  module, meta = export_lib.build_module(runs["mvae"], griffin_lim_iters=GL_ITERS)
  assert meta["model"]["kind"] == "mvae"
  prepared = Prepared.load(runs["prepared"])
  codes, labels = [], []
  for batch in make_dataset(prepared, "train", PipelineConfig(batch_size=7, shuffle=False,
                                                              cache="")):
    codes.append(module.model.encode(batch["mel"])["z_timbre_mean"].numpy())
    labels.append(batch["instrument"].numpy())
  codes, labels = np.concatenate(codes), np.concatenate(labels)
  for k in range(len(INSTRUMENTS)):
    np.testing.assert_allclose(module.timbre_means.numpy()[k], codes[labels == k].mean(0),
                               atol=1e-5)
  loaded = tf.saved_model.load(runs["mvae_export"])
  out = _synth(loaded.signatures["synthesize"], ["Vc", "Pno"], [60, 61], [0.0, 1.0], [0, 0])
  assert out["audio"].shape == (2, 43 * 256) and np.all(np.isfinite(out["audio"].numpy()))
  # A training note gone since the preparation: the export says which, and what to do.
  model, info, _ = export_lib.load_run(runs["mvae"])
  gone = prepared.index("train")[3]["path"]
  os.rename(gone, gone + ".away")
  try:
    with pytest.raises(export_lib.ExportError) as error:
      export_lib.class_centres(model, info)
  finally:
    os.rename(gone + ".away", gone)
  assert str(error.value) == (
      "an MVAE's per-instrument timbre centres come from its training data: "
      f"{gone}: no such file. (the data prepared in {runs['prepared']} no longer matches "
      "its source: restore the source, or prepare the data again with bin/prepare_dataset "
      "and train a new run on it)")


def test_a_commands_notes_are_written_whole_or_not_at_all(tmp_path):
  """Each WAV and PNG is renamed into place once complete, and a command's notes are all
  written or none: a failure at the second note (here its spectrogram cannot be drawn)
  removes the first, so the same command can run again."""
  wave = tone(60, 22050, 0.5, amp=0.4)
  mel = np.zeros([43, 256], np.float32)
  paths = [str(tmp_path / "out" / "a.wav"), str(tmp_path / "out" / "b.wav")]
  with pytest.raises(OSError, match=r"/out/b\.wav: could not be written \("):
    client.write_notes(paths, [{"audio": wave, "mel": mel},
                               {"audio": wave, "mel": np.zeros([0])}], 22050)
  assert os.listdir(tmp_path / "out") == []
  done = client.write_notes(paths, [{"audio": wave, "mel": mel}] * 2, 22050)
  assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "a.wav", "b.png", "b.wav"]
  assert [d["wav"] for d in done] == paths
  assert soundfile.info(paths[1]).frames == len(wave)


def _unlabelled_copy(run_dir, to):
  """`run_dir` copied to `to` with its model.json saying it trained without labels."""
  shutil.copytree(run_dir, to)
  with open(os.path.join(to, "model.json"), encoding="utf-8") as f:
    meta = json.load(f)
  with open(os.path.join(to, "model.json"), "w", encoding="utf-8") as f:
    json.dump(meta | {"label_fraction": 0.0}, f)
  return str(to)


def test_an_unlabelled_mgmvae_exports_its_components_matched_to_instruments(runs, tmp_path):
  """At N = 0 the components are in no particular order: the export names them by
  Hungarian matching on the training notes, so a run whose components sit the other way
  round serves what a run in order does."""
  model, _, _ = export_lib.load_run(runs["mgmvae"])
  prepared = Prepared.load(runs["prepared"])
  codes, labels = [], []
  for batch in make_dataset(prepared, "train", PipelineConfig(batch_size=7, shuffle=False,
                                                              cache="")):
    codes.append(model.encode(batch["mel"])["z_timbre_mean"].numpy())
    labels.append(batch["instrument"].numpy())
  codes, labels = np.concatenate(codes), np.concatenate(labels)
  # Components in order by construction (2 epochs leave the toy's unsorted): at each
  # instrument's training codes' mean, which sorts most notes to their own instrument.
  centres = np.stack([codes[labels == k].mean(0) for k in range(len(VOCAB))])
  near = ((codes[:, None, :] - centres[None]) ** 2).sum(-1).argmin(-1)
  assert np.mean(near == labels) > 0.5
  saved = {}
  for name, means in (("in_order", centres), ("reversed", centres[::-1])):
    model.timbre_prior.means.assign(means)
    saved[name] = tf.train.Checkpoint(model=model.weights_checkpoint()).write(
        str(tmp_path / name / "ckpt"))
  ordered, labelled = export_lib.build_module(runs["mgmvae"], saved["in_order"],
                                              griffin_lim_iters=GL_ITERS)
  assert labelled["instrument_naming"] == "components"
  assert labelled["timbre_components"] is None
  # The reversed weights recorded as a run without labels: matched back into order.
  run_dir = _unlabelled_copy(runs["mgmvae"], tmp_path / "n0")
  module, meta = export_lib.build_module(run_dir, saved["reversed"],
                                         griffin_lim_iters=GL_ITERS)
  assert meta["label_fraction"] == 0.0 and meta["instrument_naming"] == "centres"
  assert meta["timbre_components"] == [1, 0]
  np.testing.assert_allclose(module.timbre_means.numpy(), centres, atol=1e-6)
  waves = np.stack([tone(p, 22050, 1.0, harmonics=h, amp=0.4)
                    for p, h in ((60, 9), (64, 2), (67, 5))])
  theirs = ordered.encode(tf.constant(waves, tf.float32), tf.constant(22050))
  ours = module.encode(tf.constant(waves, tf.float32), tf.constant(22050))
  np.testing.assert_allclose(ours["instrument_probs"].numpy(),
                             theirs["instrument_probs"].numpy(), atol=1e-5)
  assert list(ours["instrument"].numpy()) == list(theirs["instrument"].numpy())
  args = (["Vc", "Pno"], [60, 61], [0.0, 0.0], [0, 0])
  np.testing.assert_allclose(_synth(module.synthesize_mel, *args)["mel"].numpy(),
                             _synth(ordered.synthesize_mel, *args)["mel"].numpy(),
                             atol=1e-5)


def test_an_unlabelled_mvae_names_instruments_by_its_class_centres(runs, tmp_path):
  """At N = 0 an MVAE's auxiliary classifier never trained: notes are named by the class
  centre their z_t is likeliest under, in the live module and in the export."""
  run_dir = _unlabelled_copy(runs["mvae"], tmp_path / "n0")
  module, meta = export_lib.build_module(run_dir, griffin_lim_iters=GL_ITERS)
  assert meta["instrument_naming"] == "centres" and meta["timbre_components"] is None
  waves = np.stack([tone(p, 22050, 1.0, harmonics=h, amp=0.4)
                    for p, h in ((60, 9), (64, 2), (67, 5))])
  codes = module.encode(tf.constant(waves, tf.float32), tf.constant(22050))
  z = codes["z_timbre_mean"].numpy().astype(np.float64)
  mu, sd = module.timbre_means.numpy(), module.timbre_scales.numpy()
  log_lik = (-0.5 * ((z[:, None] - mu) / sd) ** 2 - np.log(sd)).sum(-1)
  expected = np.exp(log_lik - log_lik.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(codes["instrument_probs"].numpy(), expected, atol=1e-5)
  classifier = tf.exp(module.model.instrument_log_probs(codes["z_timbre_mean"])).numpy()
  assert not np.allclose(classifier, expected, atol=1e-3)   # not the classifier's answer
  folder = export_lib.export(export_lib.ExportConfig(run_dir, str(tmp_path / "export"),
                                                     griffin_lim_iters=GL_ITERS), log=_quiet)
  loaded = tf.saved_model.load(folder).signatures["encode"]
  np.testing.assert_allclose(
      loaded(audio=tf.constant(waves, tf.float32),
             sample_rate=tf.constant(22050))["instrument_probs"].numpy(), expected,
      atol=1e-5)


def test_outputs_and_models_are_checked_before_any_work(runs, tmp_path):
  """What bin/synthesize and bin/transfer check first (and print as one ERROR line)."""
  for iters in (0, -5):   # a run is served with Griffin-Lim of its own; an export with its
    with pytest.raises(export_lib.ExportError,   # recorded count
                       match=f"--griffin_lim_iters={iters}: expected 1..10000"):
      client.open_model(runs["mgmvae"], griffin_lim_iters=iters)
  export_base = os.path.dirname(runs["mgmvae_export"])
  with pytest.raises(ValueError, match=(
      "^--checkpoint=latest: applies to a run directory, but --model=.* is the export "
      f"{runs['mgmvae_export']} \\(of ckpt-[0-9]+, {GL_ITERS} Griffin-Lim iterations\\)")):
    client.open_model(export_base, checkpoint="latest")     # it was ignored
  with pytest.raises(ValueError, match="^--checkpoint=best and --griffin_lim_iters=8: "
                     "apply to a run directory, .*; leave them out"):
    client.open_model(runs["mgmvae_export"], "best", 8)
  out = str(tmp_path / "n.wav")
  assert client.output_paths(out, ["Vc_60"]) == [out]
  assert client.output_paths(out, ["Vc_60", "Pno_60"]) == [
      str(tmp_path / "n_Vc_60.wav"), str(tmp_path / "n_Pno_60.wav")]
  with pytest.raises(ValueError, match=r"--out=.*k\.flac: expected a path ending in \.wav"):
    client.output_paths(str(tmp_path / "k.flac"), ["Vc_60"])
  with pytest.raises(ValueError, match=r"several outputs would be written to .*d_Vc_60\.wav;"):
    client.output_paths(str(tmp_path / "d.wav"), ["Vc_60", "Vc_60"])
  client.check_free([out])
  for taken in ("n.png", "n.wav"):   # the WAV or only its spectrogram
    (tmp_path / taken).write_bytes(b"mine")
    with pytest.raises(FileExistsError, match=f"{taken}.* refusing to overwrite"):
      client.check_free([out])
  assert (tmp_path / "n.wav").read_bytes() == b"mine"
  with pytest.raises(NotADirectoryError, match=f"{tmp_path}/n.wav is not a folder"):
    client.check_free([str(tmp_path / "n.wav" / "deeper" / "x.wav")])
  os.symlink(tmp_path / "gone", tmp_path / "dangling")
  with pytest.raises(NotADirectoryError, match=f"{tmp_path}/dangling is not a folder"):
    client.check_free([str(tmp_path / "dangling" / "x.wav")])
  with pytest.raises(client.ModelPathError, match=f"--model={tmp_path}: expected an export"):
    client.open_model(str(tmp_path))


def test_the_request_scripts_report_bad_input_in_one_line(runs, tmp_path):
  script = os.path.join(REPO, "export", "requests", "make_transfer_request.py")
  grpc = [os.path.join(REPO, "export", "requests", "grpc_client.py"),
          "--server=localhost:1", f"--out={tmp_path}/g.wav", "transfer"]
  fast = str(tmp_path / "fast.wav")
  soundfile.write(fast, tone(60, 400_000, 0.6), 400_000)
  for command, args, line in (
      ([script], [str(tmp_path / "no.wav"), "Pno", "1"], f"{tmp_path}/no.wav: no such file."),
      ([script], [os.path.join(REPO, "README.md"), "Pno", "1"], "cannot read it as audio"),
      ([script], [runs["note"], "Pno", "2"], "alpha '2': expected a number in [0, 1]."),
      ([script], [fast, "Pno", "1"], "fast.wav: recorded at 400000 Hz; the served model "
       "takes 1,000 to 384,000 Hz: resample it first (bin/transfer does)."),
      (grpc, [str(tmp_path / "no.wav"), "Pno", "1"], f"{tmp_path}/no.wav: no such file."),
      (grpc, [os.path.join(REPO, "README.md"), "Pno", "1"], "cannot read it as audio"),
      (grpc, [fast, "Pno", "1"], "fast.wav: recorded at 400000 Hz")):
    done = subprocess.run([sys.executable, *command, *args], capture_output=True, text=True,
                          timeout=120, check=False, env=ENV)
    said = done.stderr.splitlines()[-1] if command is grpc else done.stderr  # (TF's logs)
    assert done.returncode == 1 and said.startswith("ERROR: ") and line in said
    assert said.count("\n") == (0 if command is grpc else 1), done.stderr
    assert not done.stdout
  done = subprocess.run([sys.executable, script, runs["note"], "Pno", "0.5"],
                        capture_output=True, text=True, timeout=120, check=True)
  assert json.loads(done.stdout)["inputs"]["alpha"] == [0.5]


def _cli(name, *args):
  return subprocess.run([sys.executable, os.path.join(REPO, "bin", name), *args], env=ENV,
                        capture_output=True, text=True, timeout=600)


def test_synthesize_and_transfer_commands(runs, tmp_path):
  out = str(tmp_path / "n.wav")
  export_base = os.path.dirname(runs["mgmvae_export"])
  done = _cli("synthesize", f"--model={export_base}", "--instrument=Vc", "--pitch=C4",
              f"--out={out}")
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.startswith(f"Using the export {runs['mgmvae_export']}\n")
  wave, rate = soundfile.read(out)
  assert rate == 22050 and wave.shape == (43 * 256,) and np.abs(wave).max() > 0
  # The file holds what the export's signature gives for that request, at the model's
  # level (scaled down only if it would clip), to 16-bit precision.
  assert os.listdir(export_base) == [os.path.basename(runs["mgmvae_export"])]
  model_audio = _synth(tf.saved_model.load(runs["mgmvae_export"]).signatures["synthesize"],
                       ["Vc"], [60], [0.0], [0])["audio"].numpy()[0]
  peak = np.abs(model_audio).max()
  expected = model_audio * (0.99 / peak if peak > 1 else 1.0)
  np.testing.assert_allclose(wave, expected, atol=1.5 / 32768)
  loud = _cli("synthesize", f"--model={export_base}", "--instrument=Vc", "--pitch=C4",
              "--normalize", f"--out={tmp_path}/loud.wav")
  assert loud.returncode == 0, loud.stderr[-2000:]
  louder, _ = soundfile.read(f"{tmp_path}/loud.wav")
  np.testing.assert_allclose(louder, model_audio * 0.99 / peak, atol=1.5 / 32768)
  png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "n.png"))).numpy()
  assert png.shape == (256, 43 * 4, 3)
  drawn = _cli("synthesize", f"--model={export_base}", "--instrument=Vc", "--pitch=C4",
               f"--real={runs['note']}", f"--out={tmp_path}/real.wav")
  assert drawn.returncode == 0, drawn.stderr[-2000:]
  pair = tf.io.decode_png(tf.io.read_file(str(tmp_path / "real.png"))).numpy()
  assert pair.shape == (256, 2 * 43 * 4 + display.GAP, 3)    # the recorded note, left
  np.testing.assert_array_equal(pair[:, -43 * 4:], png)
  for flag, path, says in (("synthesize", f"--real={REPO}/README.md", "--real: "),
                           ("transfer", f"--input={tmp_path}/no.wav", "--input: ")):
    args = ["--instrument=Vc", "--pitch=60"] if flag == "synthesize" else ["--target=Vc"]
    bad = _cli(flag, f"--model={export_base}", path, *args, f"--out={tmp_path}/v.wav")
    assert bad.returncode == 1 and bad.stderr.startswith(
        f"ERROR: {says}{path.split('=')[1]}: "), bad.stderr
  assert not [n for n in os.listdir(tmp_path) if n.startswith("v")]
  several = _cli("synthesize", f"--model={runs['mgmvae']}", "--instrument=Vc,Pno",
                 "--pitch=60,61", "--w=0,1", f"--out={tmp_path}/s.wav")
  assert several.returncode == 0, several.stderr[-2000:]
  names = sorted(n for n in os.listdir(tmp_path) if n.startswith("s_"))
  assert len(names) == 16 and "s_Pno_61_w1.wav" in names and "s_Vc_60_w0.png" in names
  bad = _cli("synthesize", f"--model={export_base}", "--instrument=Kazoo", "--pitch=60",
             f"--out={tmp_path}/k.wav")
  assert bad.returncode == 1 and bad.stderr.startswith(
      "ERROR: --instrument 'Kazoo' is not in the model's vocabulary; expected one of ")
  bad = _cli("synthesize", f"--model={export_base}", "--instrument=Vc", "--pitch=60",
             "--w=nan", f"--out={tmp_path}/k.wav")
  assert bad.returncode != 0 and "expected values from 0 to 10" in bad.stderr
  bad = _cli("synthesize", f"--model={export_base}", "--instrument=Vc", "--pitch=60,C4",
             f"--out={tmp_path}/k.wav")      # refused like --instrument=Vc,Vc, not merged
  assert bad.returncode == 1 and bad.stderr == (
      f"ERROR: several outputs would be written to {tmp_path}/k_Vc_60.wav; give each "
      "instrument, pitch, w, seed, target or alpha once.\n")
  assert not [n for n in os.listdir(tmp_path) if n[:2] in ("k.", "k_")]
  sourced = _cli("transfer", f"--model={runs['mgmvae']}", f"--input={runs['note']}",
                 "--source=Pno", "--target=Vc", "--alpha=0.5", f"--out={tmp_path}/r.wav",
                 "--match_level")
  assert sourced.returncode == 0, sourced.stderr[-2000:]
  assert re.search(r"Scaled \S+note.wav by [-+][0-9.]+ dB to the training notes' median "
                   "level.", sourced.stdout), sourced.stdout
  assert "(Pno) -> Vc alpha=0.5" in sourced.stdout and os.path.isfile(f"{tmp_path}/r.png")
  assert sourced.stdout.startswith(f"Using the run {runs['mgmvae']} at ckpt-")
  assert "WARNING" not in sourced.stderr          # the 0.8 s note covers the 0.5 s read
  soundfile.write(f"{tmp_path}/short.wav", tone(60, 44100, 0.3, harmonics=9, amp=0.4),
                  44100)
  moved = _cli("transfer", f"--model={runs['mgmvae_export']}", f"--input={tmp_path}/short.wav",
               "--target=Pno,Vc", "--alpha=0,0.5,1", f"--out={tmp_path}/t.wav")
  assert moved.returncode == 0, moved.stderr[-2000:]
  assert moved.stderr == (f"WARNING: {tmp_path}/short.wav is 0.3 s long; the model reads "
                          "0 s to 0.5 s of a note, so the last 0.2 s of that segment are "
                          "silence.\n")
  assert len([n for n in os.listdir(tmp_path) if n.startswith("t_")]) == 12
  assert "t_Pno_a0.5.wav" in os.listdir(tmp_path)
  bad = _cli("transfer", f"--model={runs['mgmvae_export']}", f"--input={runs['note']}",
             "--target=Pno", "--alpha=2", f"--out={tmp_path}/u.wav")
  assert bad.returncode != 0 and "expected numbers in [0, 1]" in bad.stderr
  bad = _cli("transfer", f"--model={runs['mgmvae_export']}", f"--input={runs['note']}",
             "--target=Pno,Kazoo", f"--out={tmp_path}/u.wav")
  assert bad.returncode == 1 and bad.stderr.startswith(
      "ERROR: --target 'Kazoo' is not in the model's vocabulary; expected one of "), bad.stderr
  # A note silent where the model reads it is refused, as preparation refuses it.
  quiet = np.zeros(22050, np.float32)
  quiet[15000:] = 0.5     # sounds only after the analysed 0.5 s
  soundfile.write(f"{tmp_path}/quiet.wav", quiet, 22050)
  bad = _cli("transfer", f"--model={runs['mgmvae_export']}", f"--input={tmp_path}/quiet.wav",
             "--target=Pno", f"--out={tmp_path}/u.wav")
  assert bad.returncode == 1 and bad.stderr == (
      f"ERROR: {tmp_path}/quiet.wav: is silent in its analysed segment (0 s to 0.5 s: peak "
      "0 < 0.0001); expected a sounding note\n")
  assert not [n for n in os.listdir(tmp_path) if n.startswith("u")]
  exported = _cli("export", f"--run_dir={runs['mgmvae']}", f"--export_dir={tmp_path}/e",
                  "--griffin_lim_iters=2")
  assert exported.returncode == 0 and os.path.isdir(f"{tmp_path}/e/1"), exported.stderr
  clash = _cli("export", f"--run_dir={runs['mgmvae']}", f"--export_dir={tmp_path}/e",
               "--version=1")
  assert clash.returncode == 1 and "never overwritten" in clash.stderr


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="tensorflow_model_server is not on PATH")
def test_tensorflow_model_server_serves_the_export(runs, live, tmp_path):
  base = tmp_path / "models"
  shutil.copytree(os.path.dirname(runs["mgmvae_export"]), base / "quickstart")
  config = open(os.path.join(REPO, "export", "requests", "models.config")).read()
  (tmp_path / "models.config").write_text(config.replace("/models/", f"{base}/"))
  server = subprocess.Popen(["tensorflow_model_server", "--port=18500",
                             "--rest_api_port=18501",
                             f"--model_config_file={tmp_path}/models.config"])
  try:
    url = "http://localhost:18501/v1/models/tfgmvae"
    for _ in range(120):
      try:
        if b"AVAILABLE" in urllib.request.urlopen(url, timeout=2).read():
          break
      except OSError:
        pass
      time.sleep(1)
    body = open(os.path.join(REPO, "export", "requests", "synthesize.json"), "rb").read()
    reply = json.loads(urllib.request.urlopen(urllib.request.Request(
        url + ":predict", data=body), timeout=120).read())
    want = _synth(live.synthesize, ["Vc", "Pno"], [60, 67], [0.0, 0.5], [0, 1])
    np.testing.assert_allclose(np.array(reply["outputs"]["mel"]), want["mel"].numpy(),
                               atol=2e-4)
  finally:
    server.terminate()
    server.wait(30)


def test_pitches_outside_an_instruments_training_range_get_a_warning(runs, tmp_path):
  model = types.SimpleNamespace(meta={"pitch_ranges": {"Fl": [60, 96], "Vc": [36, 76]}})
  assert client.range_warnings(model, ["Fl", "Vc", "Fl"], [40, 60, 100, 40]) == [
      "Fl was trained on MIDI 60..96 only; 40, 100 are outside it, so expect a poor note.",
      "Vc was trained on MIDI 36..76 only; 100 is outside it, so expect a poor note."]
  assert client.range_warnings(model, ["Vc"], [77]) == [
      "Vc was trained on MIDI 36..76 only; 77 is outside it, so expect a poor note."]
  assert client.range_warnings(types.SimpleNamespace(meta={}), ["Fl"], [40]) == []
  # The ranges go from the prepared data (test_prepare checks them) into model.json and
  # the export's metadata.
  expected = Prepared.load(runs["prepared"]).pitch_ranges()
  assert set(expected) == set(VOCAB)
  assert client.metadata(runs["mgmvae_export"])["pitch_ranges"] == expected
  # A run recorded before model.json held them reads them from its prepared data, and
  # without that data it warns about nothing.
  run = str(tmp_path / "old_run")
  shutil.copytree(runs["mgmvae"], run, ignore=shutil.ignore_patterns("cache", "summaries"))
  with open(os.path.join(run, "model.json")) as f:
    meta = json.load(f)
  del meta["pitch_ranges"]
  with open(os.path.join(run, "model.json"), "w") as f:
    json.dump(meta, f)
  assert export_lib.read_run(run).pitch_ranges == expected
  for broken in ("gone", "broken"):     # no data, or unreadable data: no ranges, no error
    (tmp_path / "broken").mkdir(exist_ok=True)
    (tmp_path / "broken" / "prepared.json").write_text('{"format_version": ')
    with open(os.path.join(run, "model.json"), "w") as f:
      json.dump(dict(meta, prepared_dir=str(tmp_path / broken)), f)
    shutil.rmtree(os.path.join(run, "data"), ignore_errors=True)
    assert export_lib.read_run(run).pitch_ranges is None
  # bin/synthesize says so once the request is accepted (here Vc's range narrowed).
  with open(os.path.join(run, "model.json"), "w") as f:
    json.dump(dict(meta, pitch_ranges={"Vc": [60, 62], "Pno": [58, 67]}), f)
  done = _cli("synthesize", f"--model={run}", "--instrument=Vc,Pno", "--pitch=64",
              "--griffin_lim_iters=1", f"--out={tmp_path}/r.wav")
  assert done.returncode == 0 and done.stderr == (
      "WARNING: Vc was trained on MIDI 60..62 only; 64 is outside it, so expect a poor "
      "note.\n"), done.stderr[-2000:]
  refused = _cli("synthesize", f"--model={run}", "--instrument=Vc,Kazoo", "--pitch=64",
                 "--griffin_lim_iters=1", f"--out={tmp_path}/k.wav")
  assert refused.returncode == 1 and refused.stderr.startswith("ERROR: --instrument 'Kazoo'")
  # bin/transfer: for each target, the pitch the model hears in the note (here every
  # pitch of the vocabulary is outside Vc's range).
  with open(os.path.join(run, "model.json"), "w") as f:
    json.dump(dict(meta, pitch_ranges={"Vc": [90, 91], "Pno": [58, 67]}), f)
  done = _cli("transfer", f"--model={run}", f"--input={runs['note']}", "--target=Vc,Pno",
              "--griffin_lim_iters=1", f"--out={tmp_path}/t.wav")
  assert done.returncode == 0, done.stderr[-2000:]
  assert re.fullmatch(
      f"WARNING: the model hears MIDI ([0-9]+) in {re.escape(runs['note'])}; Vc was "
      "trained on MIDI 90..91 only; \\1 is outside it, so expect a poor note.\n",
      done.stderr), done.stderr


def test_a_note_far_from_the_training_levels_gets_a_warning(runs):
  model = client.open_model(runs["mgmvae_export"])
  prepared = Prepared.load(runs["prepared"])
  # The export carries the percentiles of the training notes' loudest log-mel bins.
  loudest = [float(np.max(spectral.log_mel(load_segment(r["path"])))) for r in
             prepared.index("train")]
  np.testing.assert_allclose(model.meta["note_peaks"], np.percentile(loudest, [1, 50, 99]),
                             atol=1e-4)
  p01, median, p99 = model.meta["note_peaks"]
  note, rate = io.read(prepared.index("train")[0]["path"])
  assert client.level_warnings(model, note, rate, "n.wav") == []
  gain = np.exp((median - loudest[0]) / 2)   # what the warnings suggest, in amplitude

  def said(scale, meta=None):
    where = types.SimpleNamespace(meta=meta or model.meta)
    return " ".join(client.level_warnings(where, note * scale, rate, "n.wav"))

  assert said(gain) == ""
  assert client.level_gain(model, note, rate) == pytest.approx(gain, rel=1e-4)
  assert re.fullmatch(r"n\.wav goes past full scale \(peak [0-9.]+ > 1\); the training "
                      r"notes never did\. n\.wav is louder than every training note \(its "
                      r"loudest mel band is [0-9.]+ dB above theirs\), so the instrument "
                      r"and pitch the model hears may be wrong; scaling it by -[0-9.]+ dB "
                      r"\(x[0-9.e-]+\) brings it to the training notes' median\.",
                      said(1000.0)), said(1000.0)
  quiet = np.exp((p01 - median - 2.0) / 2) * gain   # its loudest bin 2 nats under p01
  assert said(quiet).startswith("n.wav is quieter than 99 % of the training notes")
  assert "scaling it by +" in said(quiet)
  assert client.level_warnings(model, note * quiet, rate, "n.wav", " (do so)")[0].endswith(
      "brings it to the training notes' median (do so).")
  # Louder than 99 % but not than all: the other warning (peaks moved down to make it so).
  lower = dict(model.meta, note_peaks=[p01 - 50, median - 50, p99 - 50])
  assert said(gain, lower).startswith("n.wav is louder than 99 % of the training notes")
  # A model that predates the percentiles warns only above its loudest training bin.
  old = {k: v for k, v in model.meta.items() if k != "note_peaks"}
  assert said(quiet, old) == ""
  assert "louder than every training note" in said(1000.0, old)
  assert "scaling" not in said(1000.0, old)
  with pytest.raises(ValueError, match="cannot match the level of n.wav: the model does "
                     "not record its training notes' levels"):
    client.level_gain(types.SimpleNamespace(meta=old), note, rate, "n.wav")
  with pytest.raises(ValueError, match="z.wav: is silent in its analysed segment"):
    client.level_gain(model, note * 1e-6, rate, "z.wav")   # no gain makes it a note


def test_a_note_shorter_than_the_segment_read_gets_a_warning():
  audio = {"offset": 0.1, "duration": 0.5, "hop_length": 256, "sample_rate": 22050}
  model = types.SimpleNamespace(meta={"audio": audio})
  assert client.short_input(model, np.zeros(13230), 22050, "a.wav") is None   # 0.6 s
  # Short by less than a hop (the model's own notes are 11,008 of 11,025 samples): fine.
  assert client.short_input(model, np.zeros(13230 - 256), 22050, "a.wav") is None
  assert client.short_input(model, np.zeros(13230 - 257), 22050, "a.wav") == (
      "a.wav is 0.588 s long; the model reads 0.1 s to 0.6 s of a note, so the last "
      "0.0117 s of that segment are silence.")
  assert client.short_input(model, np.zeros(200), 22050, "a.wav") == (
      "a.wav is 0.00907 s long; the model reads 0.1 s to 0.6 s of a note, so the last "
      "0.5 s of that segment are silence.")     # all of it (the note ends before 0.1 s)
  own = types.SimpleNamespace(meta={"audio": audio | {"offset": 0.0}})
  assert client.short_input(own, np.zeros(11008), 22050, "note.wav") is None
  exact = types.SimpleNamespace(meta={"audio": audio | {"offset": 0.2, "duration": 0.1}})
  assert client.short_input(exact, np.zeros(6615 - 256), 22050, "a.wav") is None


@pytest.mark.parametrize("rate", [900, 400_000])
def test_client_transfer_resamples_rates_the_export_refuses(runs, rate):
  # The served graph takes 1-384 kHz; bin/transfer reads "any rate", so the client
  # resamples the others to the model's rate first, as preparation would.
  model = client.open_model(runs["mgmvae_export"])
  got = client.transfer(model, tone(60, rate, 0.8, harmonics=1, amp=0.4), rate, ["Pno"],
                        [0.0])
  with pytest.raises(tf.errors.InvalidArgumentError, match="sample_rate must be"):
    model.run("transfer", audio=tone(60, rate, 0.8)[None], sample_rate=rate,
              target_instrument=["Pno"], alpha=[0.0])
  at_model_rate = client.transfer(
      model, resample(tone(60, rate, 0.8, harmonics=1, amp=0.4), rate, 22050).numpy(),
      22050, ["Pno"], [0.0])
  np.testing.assert_allclose(got[0]["mel"], at_model_rate[0]["mel"], atol=1e-5)
  assert got[0]["source"] == at_model_rate[0]["source"]


def test_an_unknown_transfer_instrument_says_whether_source_or_target():
  model = types.SimpleNamespace(instruments=("Pno", "Vc"), pitches=(60,))
  with pytest.raises(ValueError, match="^target instrument 'Xx' is not in the model's "
                     "vocabulary; expected one of Pno, Vc.$"):
    client.transfer(model, np.zeros(100), 22050, ["Xx"], [1.0], source="Vc")
  with pytest.raises(ValueError, match="^source instrument 'Yy' is not"):
    client.transfer(model, np.zeros(100), 22050, ["Vc"], [1.0], source="Yy")


def test_a_pitch_outside_the_vocabulary_lists_the_pitches_when_few():
  few = types.SimpleNamespace(instruments=("Vc",), pitches=(60, 62, 64))
  with pytest.raises(ValueError, match="pitch 61 is not in the model's vocabulary; "
                     "expected one of 60, 62, 64.$"):
    client.synthesize(few, ["Vc"], [61])
  many = types.SimpleNamespace(instruments=("Vc",), pitches=tuple(range(21, 109)))
  with pytest.raises(ValueError, match="expected one of 21..108 \\(88 MIDI numbers"):
    client.synthesize(many, ["Vc"], [10])
