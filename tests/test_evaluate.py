"""Evaluation: the statistics against hand cases, the probes and CNN on toys whose answer
is known, bin/evaluate on a tiny trained model, and a tiny bin/reproduce grid."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import types

import librosa
import numpy as np
import pytest
from scipy import stats as scipy_stats
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import REPO, tone, toy_specs, write_notes
from tfgmvae.data import paths
from tfgmvae.data.prepare import Prepared, PrepareConfig, prepare
from tfgmvae.evaluate import classifiers, experiments, report, stats
from tfgmvae.evaluate.evaluate import EvalConfig, EvaluationError, _chosen_how, evaluate
from tfgmvae.evaluate.reproduce import PAPER_TABLE1, ReproduceError, check_judges
from tfgmvae.model import priors
from tfgmvae.train.config import TrainConfig
from tfgmvae.train.loop import train

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
INSTRUMENTS = ("Fhn", "Pno", "Vc", "Bn")   # one per family, the paper's representatives
PITCHES = range(58, 66)


def _quiet(*_):
  pass


# -- statistics ---------------------------------------------------------------------------

def test_f_scores_hand_case():
  y_true = [0, 0, 0, 1, 1, 2]
  y_pred = [0, 0, 1, 1, 1, 0]
  # class 0: P 2/3 R 2/3 F 2/3; class 1: P 2/3 R 1 F 0.8; class 2: F 0.
  scores = stats.f_scores(y_true, y_pred)
  assert scores["accuracy"] == pytest.approx(4 / 6)
  assert scores["f1_macro"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
  assert scores["f1_weighted"] == pytest.approx((3 * 2 / 3 + 2 * 0.8 + 0) / 6)
  with pytest.raises(ValueError, match="equal, non-empty"):
    stats.f_scores([0, 1], [0])


def test_hungarian_matching_and_cluster_scores_hand_case():
  # Components 0, 1, 2 hold mostly labels 2, 0, 1.
  clusters = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
  labels = np.array([2, 2, 1, 0, 0, 0, 2, 1, 1, 1])
  table = stats.contingency(clusters, labels, 3, 3)
  assert table.tolist() == [[0, 1, 2], [3, 0, 1], [0, 3, 0]]
  assert stats.match_clusters(table) == {0: 2, 1: 0, 2: 1}
  scores = stats.cluster_scores(clusters, labels)
  assert scores["purity"] == pytest.approx(8 / 10)
  perfect = stats.cluster_scores([1, 1, 0, 0], [0, 0, 1, 1])
  assert perfect == {"purity": 1.0, "nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
  # More components than instruments: the extra component stays unmatched.
  assert stats.match_clusters(np.array([[5, 0], [0, 4], [1, 1]])) == {0: 0, 1: 1}


def test_welch_t_test_against_the_formula():
  a = np.array([1.0, 2.0, 3.0, 4.0])
  b = np.array([3.0, 5.0, 7.0, 9.0, 11.0])
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  t = (a.mean() - b.mean()) / np.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  p = 2 * scipy_stats.t.sf(abs(t), df)
  result = stats.welch_t_test(a, b)
  assert result["t"] == pytest.approx(t) and result["p"] == pytest.approx(p)
  assert np.isnan(stats.welch_t_test([1.0], b)["p"])


def test_paired_t_test_against_the_formula():
  a = np.array([1.0, 2.5, 3.0, 4.5])
  b = np.array([1.5, 3.5, 3.2, 6.0])
  d = a - b
  t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
  result = stats.paired_t_test(a, b)
  assert result["t"] == pytest.approx(t)
  assert result["p"] == pytest.approx(2 * scipy_stats.t.sf(abs(t), len(d) - 1))
  with pytest.raises(ValueError, match="expected pairs"):
    stats.paired_t_test(a, b[:3])


def test_spectral_centroid_of_a_flat_spectrum_through_the_mel_bands():
  # A flat power spectrum seen through the front end's Slaney mel bands must keep the
  # centroid of the flat spectrum over [fmin, fmax] (the bands' widths weigh them).
  from tfgmvae.audio.spectral import mel_filterbank
  from tfgmvae.audio.config import AudioConfig
  config = AudioConfig()
  mel = np.ones(config.n_fft // 2 + 1) @ mel_filterbank(config)
  centres, widths = stats.mel_bands_hz(config.sample_rate, config.n_mels, config.fmin,
                                       config.fmax)
  centroid = stats.spectral_centroid(mel[None], centres, widths)
  assert centroid == pytest.approx((config.fmin + config.fmax) / 2, rel=0.02)
  assert stats.spectral_centroid(mel[None], centres) < 0.7 * centroid   # unweighted: low


def test_spectral_centroid_matches_librosa_per_frame_and_weights_frames():
  rng = np.random.default_rng(0)
  power = rng.random((5, 256)) ** 4
  centres, widths = stats.mel_bands_hz(22050, 256, 27.0, 11000.0)
  edges = librosa.mel_frequencies(258, fmin=27.0, fmax=11000.0, htk=False)   # Slaney
  np.testing.assert_allclose(centres, edges[1:-1], rtol=1e-9)
  np.testing.assert_allclose(widths, (edges[2:] - edges[:-2]) / 2, rtol=1e-9)
  reference = librosa.feature.spectral_centroid(S=power.T, freq=centres)[0]
  for i in range(5):
    assert stats.spectral_centroid(power[i:i + 1], centres) == pytest.approx(
        reference[i], rel=1e-6)
  # A loud frame at 1 kHz and a quiet one at 3 kHz: energy-weighted mean.
  two = np.zeros((2, 3))
  two[0, 0], two[1, 2] = 3.0, 1.0
  assert stats.spectral_centroid(two, [1000.0, 2000.0, 3000.0]) == pytest.approx(1500.0)


def test_centre_names_at_n0_follow_the_matching():
  from tfgmvae.evaluate.report import matched_names
  # Component 0 captured instrument 2, component 2 instrument 0, component 1 nothing.
  assert matched_names(["A", "B", "C"], {0: 2, 2: 0, 3: 1}) == ["c2->A", "c3->B", "c0->C"]
  assert matched_names(["A", "B"], {1: 0}) == ["c1->A", "B (no component)"]


def test_representatives_follow_the_families():
  counts = {"Bn": 227, "Clr": 243, "Fhn": 238, "Pno": 475, "Vc": 221, "Vn": 246, "Trop": 10}
  assert stats.representatives(counts) == ["Fhn", "Pno", "Vn", "Clr"]
  assert stats.representatives({"a": 3, "b": 9, "c": 5}) == ["b", "c", "a"]


# -- classifiers on toys with a known answer ----------------------------------------------

def test_swap_partners_keep_one_label_and_change_the_other():
  instrument = np.array([0, 0, 0, 1, 1, 2])
  pitch = np.array([60, 60, 62, 60, 64, 60])
  partner = experiments.swap_partners(instrument, pitch, seed=3)
  # Notes 0 and 1 can only pair with note 2, note 2 with 0 or 1, 3 with 4 and 4 with 3;
  # note 5 is its instrument's only note.
  assert partner[0] == partner[1] == 2 and partner[2] in (0, 1)
  assert partner[3] == 4 and partner[4] == 3 and partner[5] == -1
  assert (partner == experiments.swap_partners(instrument, pitch, seed=3)).all()
  by_pitch = experiments.swap_partners(pitch, instrument, seed=0)
  for j, i in enumerate(by_pitch):
    if i >= 0:
      assert pitch[i] == pitch[j] and instrument[i] != instrument[j]
  assert by_pitch[2] == -1 and by_pitch[4] == -1


def test_swap_section_without_partners_says_so():
  lines = report.swap_lines({"pitch_swap": {"notes": 0}, "instrument_swap": {"notes": 0}})
  assert lines[1].startswith("## Swapping codes") and "No validation note" in lines[-1]
  assert not any(l.startswith("|") for l in lines)
  assert report.swap_lines(None) == []          # evaluations from before the swaps


def test_centroid_figure_without_a_testable_instrument(tmp_path):
  # Small data: one validation note per instrument, so no t-test and no box to draw.
  from tfgmvae.evaluate import figures  # pylint: disable=g-import-not-at-top
  centroids = {k: np.array([900.0, 1100.0]) for k in ("minus", "zero", "plus")}
  path = figures.centroid(str(tmp_path / "fig7.png"), centroids, np.array([0, 1]),
                          ("Vc", "Pno"), {"per_instrument": {}, "shift_sigmas": 2.0,
                                          "dimension": 3}, "MGMVAE")
  assert os.path.getsize(path) > 0


def test_linear_probe_separates_separable_codes_and_not_random_labels():
  rng = np.random.default_rng(0)
  centres = rng.normal(0, 4, (5, 8))
  y = rng.integers(0, 5, 600)
  x = centres[y] + rng.normal(0, 1, (600, 8))
  probe = classifiers.LinearProbe(5).fit(x[:500], y[:500])
  assert stats.f_scores(y[500:], probe.predict(x[500:]))["accuracy"] > 0.95
  shuffled = rng.permutation(y)
  chance = classifiers.LinearProbe(5).fit(x[:500], shuffled[:500])
  assert stats.f_scores(shuffled[500:], chance.predict(x[500:]))["accuracy"] < 0.45
  assert np.allclose(probe.predict_proba(x[:3]).sum(-1), 1.0, atol=1e-5)


def _toy_specs():
  specs = []
  for i, inst in enumerate(INSTRUMENTS):
    for p in PITCHES:
      for v in (0.2, 0.35, 0.5):
        wave = tone(p, 22050, 0.8, harmonics=1 + 6 * i, amp=v, decay=1.0 + i)
        specs.append((f"audio/{inst}_{p}_{v}.wav", inst, p, wave, 22050))
  return specs


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  """Toy notes of four 'instruments' (harmonic counts) over eight pitches, prepared, and
  tiny MGMVAE runs at N = 100 % and N = 0 and an MVAE run trained on them."""
  root = tmp_path_factory.mktemp("evaluate")
  csv_path = write_notes(str(root / "notes"), _toy_specs())
  prepared = str(root / "prepared")
  prepare(PrepareConfig("csv", csv_path, prepared, validation_fraction=0.2), log=_quiet)
  out = {"root": root, "prepared": prepared}
  for name, kind, fraction in (("mgmvae", "mgmvae", 1.0), ("mgmvae_n0", "mgmvae", 0.0),
                               ("mvae", "mvae", 1.0)):
    run_dir = str(root / f"run_{name}")
    train(TrainConfig(run_dir=run_dir, prepared_dir=prepared, model=kind, epochs=3,
                      label_fraction=fraction, batch_size=16, filters=8, hidden=16,
                      latent_dim=4, media_every=0, verbose=0), log=_quiet)
    out[name] = run_dir
  return out


def _spec(prepared, task, **kw):
  p = Prepared.load(prepared)
  classes = p.num_instruments if task == "instrument" else p.num_pitches
  base = dict(task=task, label_fraction=1.0, filters=16, hidden=32, kernel_size=3,
              frames=43, n_mels=256, num_classes=classes, data="toy", seed=0, epochs=25,
              patience=25)
  return classifiers.CnnSpec(**(base | kw))


def test_the_log_says_how_the_transfer_instruments_were_chosen():
  # The paper's families know Fl, Pno, ...; a user's own names may have none.
  assert _chosen_how(["brass", "flute"], ["bell", "brass", "flute", "reed"]) == (
      " (the most frequent instrument of each family; bell has no known family; "
      "--representatives chooses others)")
  assert "fewer than two of the paper's families" in _chosen_how(["a", "b"], ["a", "b", "Fl"])
  assert _chosen_how(["Fhn", "Pno"], ["Fhn", "Pno"]) == (
      " (the most frequent instrument of each family; --representatives chooses others)")


def test_cnn_learns_the_toy_and_is_saved_and_reused(toy, tmp_path):
  from tfgmvae.evaluate import experiments
  from tfgmvae.serving.export import load_run
  prepared = Prepared.load(toy["prepared"])
  spec = _spec(toy["prepared"], "instrument")
  messages = []
  cnn, record = classifiers.cnn_for(prepared, spec, str(tmp_path / "cnn"),
                                    log=messages.append)
  assert record["epochs"] == 25 and 0 <= record["holdout_accuracy"] <= 1
  model, _, _ = load_run(toy["mgmvae"])
  val = experiments.encode_split(model, prepared, "validation", keep_mel=True)
  scores = experiments.cnn_scores({"instrument": cnn}, val)["instrument"]
  assert scores["f1_weighted"] > 0.9, scores
  again, same = classifiers.cnn_for(prepared, spec, str(tmp_path / "cnn"),
                                    log=messages.append)
  assert same == record
  assert any("Using the saved CNN" in m for m in messages)
  np.testing.assert_allclose(classifiers.predict_proba(again, val.mel),
                             classifiers.predict_proba(cnn, val.mel), atol=1e-5)
  # Another network size or budget (a run of another size evaluated into the same
  # folder): its own CNN beside the first, which stays as it was.
  saved = sorted(os.listdir(tmp_path / "cnn"))
  assert saved == [f"{spec.file_name}.json", f"{spec.file_name}.keras"]
  assert spec.file_name.startswith("instrument-") and len(spec.file_name) == 21
  for kw in ({"filters": 12, "epochs": 1}, {"epochs": 1}):
    other = _spec(toy["prepared"], "instrument", **kw)
    assert other.file_name != spec.file_name and other.file_name[:11] == "instrument-"
    _, trained = classifiers.cnn_for(prepared, other, str(tmp_path / "cnn"), log=_quiet)
    assert trained["spec"] == dataclasses.asdict(other) and trained["epochs"] == 1
  assert len(os.listdir(tmp_path / "cnn")) == 6
  messages.clear()
  assert classifiers.cnn_for(prepared, spec, str(tmp_path / "cnn"),
                             log=messages.append)[1] == record
  assert messages == [f"Using the saved CNN {tmp_path}/cnn/{spec.file_name}.keras (25 "
                      f"epochs, held-out accuracy {record['holdout_accuracy']:.3f})."]
  # A record changed by hand no longer matches its name: refused, not overwritten.
  path = tmp_path / "cnn" / f"{spec.file_name}.json"
  path.write_text(path.read_text().replace('"epochs": 25', '"epochs": 2', 1))
  with pytest.raises(classifiers.ClassifierError,
                     match=f"{spec.file_name}.json: records another CNN than its name says "
                     "\\(saved vs needed: {'epochs': \\(2, 25\\)}\\)"):
    classifiers.cnn_for(prepared, spec, str(tmp_path / "cnn"))
  assert '"epochs": 2,' in path.read_text()
  # Half the labels: its own file, trained on the labelled notes only.
  half_spec = _spec(toy["prepared"], "instrument", label_fraction=0.5, epochs=1)
  half, _ = classifiers.cnn_for(prepared, half_spec, str(tmp_path / "cnn"), log=_quiet)
  assert half.name == "cnn_instrument_n050"
  assert half_spec.file_name.startswith("instrument_n050-")
  assert os.path.isfile(tmp_path / "cnn" / f"{half_spec.file_name}.keras")


# -- bin/evaluate end to end --------------------------------------------------------------

def _numbers(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _numbers(v)
  elif isinstance(tree, list):
    for v in tree:
      yield from _numbers(v)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


def _check_f(scores):
  assert set(scores) == {"accuracy", "f1_macro", "f1_weighted"}
  assert all(0.0 <= v <= 1.0 for v in scores.values()), scores


@pytest.fixture(scope="module")
def evaluated(toy):
  cnn_dir = str(toy["root"] / "cnn")
  out = {}
  # What an evaluation killed with kill -9 left beside its --out_dir (its process is
  # gone), and one of a live evaluation (this process): the first is removed, not the
  # second (test_a_killed_evaluations_folder_is_removed).
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  parent = toy["root"] / "eval"
  host = paths._HOST   # pylint: disable=protected-access
  planted = {"dead": parent / f".tmp-mgmvae-{host}-{int(gone.stdout)}-0123abcd",
             "live": parent / f".tmp-mgmvae-{host}-{os.getpid()}-4567cdef"}
  for folder in planted.values():
    (folder / "figures").mkdir(parents=True)
  said = []
  for name in ("mgmvae", "mgmvae_n0", "mvae"):
    out_dir = str(parent / name)
    config = EvalConfig(toy[name], out_dir, cnn_dir=cnn_dir, draws=3, cnn_epochs=3,
                        tsne_max_notes=500)
    out[name] = (evaluate(config, log=said.append if name == "mgmvae" else _quiet),
                 out_dir)
  out["planted"] = (planted, int(gone.stdout), said)
  return out


def test_a_killed_evaluations_folder_is_removed(evaluated):
  planted, pid, said = evaluated["planted"]
  assert not planted["dead"].exists() and planted["live"].is_dir()
  assert f"Removed {planted['dead']}: unfinished, left by a process (pid {pid}) that " \
      "was killed while writing." in said
  assert not any(str(planted["live"]) in line for line in said)
  shutil.rmtree(planted["live"])


def test_table1_and_clusters_match_an_independent_recomputation(toy, evaluated):
  """The wiring behind the numbers: which code, which labels, which split."""
  from sklearn.metrics import f1_score  # pylint: disable=g-import-not-at-top
  from tfgmvae.data.dataset import PipelineConfig, make_dataset  # pylint: disable=g-import-not-at-top
  from tfgmvae.serving.export import load_run  # pylint: disable=g-import-not-at-top
  metrics, _ = evaluated["mgmvae"]
  model, _, _ = load_run(toy["mgmvae"], "best")
  prepared = Prepared.load(toy["prepared"])

  def codes(split):
    out = {"z_timbre": [], "z_pitch": [], "instrument": [], "pitch": []}
    for batch in make_dataset(prepared, split, PipelineConfig(
        batch_size=128, shuffle=False, cache="")).as_numpy_iterator():
      post = model.encode(batch["mel"], training=False)
      out["z_timbre"].append(post["z_timbre_mean"].numpy())
      out["z_pitch"].append(post["z_pitch_mean"].numpy())
      out["instrument"].append(batch["instrument"])
      out["pitch"].append(batch["pitch"])
    return {k: np.concatenate(v) for k, v in out.items()}

  train_codes, val = codes("train"), codes("validation")
  for code in ("z_timbre", "z_pitch"):
    for task, classes in (("instrument", prepared.num_instruments),
                          ("pitch", prepared.num_pitches)):
      probe = classifiers.LinearProbe(classes).fit(train_codes[code], train_codes[task])
      f1 = f1_score(val[task], probe.predict(val[code]), average="weighted",
                    zero_division=0)
      assert metrics["table1"]["linear"][code][task]["f1_weighted"] == pytest.approx(
          f1, abs=1e-6), (code, task)
  table = metrics["table1"]["linear"]
  assert table["z_timbre"]["instrument"]["f1_weighted"] != table["z_pitch"]["instrument"][
      "f1_weighted"]   # so that swapped codes could not pass
  # Components as clusters: each note to its nearest timbre mean (the uniform mixture's
  # most responsible component, sigma_t = 1); purity by counting.
  means = model.timbre_prior.means.numpy()
  assigned = ((val["z_timbre"][:, None] - means[None]) ** 2).sum(-1).argmin(1)
  purity = sum(np.bincount(val["instrument"][assigned == c]).max()
               for c in np.unique(assigned)) / len(assigned)
  assert metrics["clusters"]["purity"] == pytest.approx(purity, abs=1e-9)
  # Components are named by Hungarian matching on the training notes, then scored on
  # the validation notes.
  from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  train_assigned = ((train_codes["z_timbre"][:, None] - means[None]) ** 2).sum(-1).argmin(1)
  table = np.zeros([len(means), prepared.num_instruments])
  np.add.at(table, (train_assigned, train_codes["instrument"]), 1)
  rows, cols = linear_sum_assignment(-table)
  name = dict(zip(rows, cols))
  for found, labels, key in ((assigned, val["instrument"], "matched_accuracy"),
                             (train_assigned, train_codes["instrument"],
                              "train_matched_accuracy")):
    right = np.mean([name.get(c, -1) == y for c, y in zip(found, labels)])
    assert metrics["clusters"][key] == pytest.approx(right, abs=1e-9), key
  # Figure 3 at w = 0 and Figure 5 at alpha = 1, recomputed: [z_t, z_p] = [mu_k, mu_m]
  # for each validation note; z_t + alpha (mu_target - mu_source). Judged by random
  # (untrained, so input-sensitive) networks: the toy's 3-epoch CNNs answer the same
  # for every input, which no wiring error could change.
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(7)
  mel_shape = model.decode(tf.constant(means[:1]), tf.constant(
      model.pitch_prior.means.numpy()[:1]), training=False).shape[1:]
  judges = {task: keras.Sequential([keras.Input(mel_shape), keras.layers.Flatten(),
                                    keras.layers.Dense(classes, kernel_initializer=
                                                       keras.initializers.RandomNormal(
                                                           stddev=0.3))])
            for task, classes in (("instrument", prepared.num_instruments),
                                  ("pitch", prepared.num_pitches))}
  t_means, p_means = means, model.pitch_prior.means.numpy()

  def judged(z_timbre, z_pitch, task):
    mels = model.decode(tf.constant(z_timbre), tf.constant(z_pitch), training=False)
    return classifiers.predict_proba(judges[task], mels.numpy())

  centred = judged(t_means[val["instrument"]], p_means[val["pitch"]], "instrument")
  assert np.ptp(centred, axis=0).max() > 0.05   # the judge hears a difference
  codes = experiments.encode_split(model, prepared, "validation")
  synthesis = experiments.controllable_synthesis(model, codes, t_means, np.ones_like(
      t_means), judges, ws=(0.0,), draws=2)
  for task in ("instrument", "pitch"):
    heard = judged(t_means[val["instrument"]], p_means[val["pitch"]], task).argmax(-1)
    assert synthesis["w_0"][task]["f1_weighted"] == pytest.approx(
        f1_score(val[task], heard, average="weighted", zero_division=0), abs=1e-6), task
  index = {n: i for i, n in enumerate(prepared.instruments)}
  transfer = experiments.timbre_transfer(model, codes, t_means, prepared.instruments,
                                         ["Fhn", "Pno"], judges, alphas=(0.0, 1.0))
  rows = val["instrument"] == index["Fhn"]
  for alpha in (0.0, 1.0):
    moved = val["z_timbre"][rows] + alpha * (t_means[index["Pno"]] - t_means[index["Fhn"]])
    posterior = judged(moved, val["z_pitch"][rows], "instrument").mean(0)
    assert transfer["Fhn->Pno"][f"alpha_{alpha:g}"]["target_probability"] == \
        pytest.approx(posterior[index["Pno"]], abs=1e-5), alpha


def test_components_are_named_on_the_training_notes():
  """Matching the components on the notes it scores would fit them: codes of no
  instrument would score above chance."""
  prior = priors.MixturePrior(2, 1, 0.0)
  prior.build(None)
  prior.means.assign([[-5.0], [5.0]])
  codes = lambda z, y: experiments.Codes(   # pylint: disable=unnecessary-lambda-assignment
      z_timbre=np.array(z, np.float32)[:, None], z_pitch=np.zeros([len(z), 1]),
      instrument=np.array(y), pitch=np.zeros(len(z), int), labelled=np.ones(len(z), bool),
      keys=[str(i) for i in range(len(z))])
  train = codes([-5, -5, -5, 5, 5, 5], [0, 0, 0, 1, 1, 1])   # component 0 holds A
  val = codes([5, 5, -5], [0, 0, 1])                          # the other way round here
  got = experiments.clusters(types.SimpleNamespace(timbre_prior=prior), train, val,
                             ["A", "B"])
  assert got["mapping"] == {0: 0, 1: 1}
  assert got["metrics"]["components"] == {"0": "A", "1": "B"}
  assert got["metrics"]["matched_accuracy"] == 0.0          # in-sample matching: 1.0
  assert got["metrics"]["train_matched_accuracy"] == 1.0
  assert got["table"].tolist() == [[0, 1], [2, 0]]          # of the validation notes


def test_evaluate_writes_every_metric_in_range(evaluated):
  metrics, out_dir = evaluated["mgmvae"]
  for name in ("metrics.json", "report.md", "fig2_tsne.png", "fig3_synthesis.png",
               "fig5_transfer.png", "fig7_centroid.png", "fig8_traverse.png",
               "components.png"):
    assert os.path.isfile(os.path.join(out_dir, name)), name
  with open(os.path.join(out_dir, "metrics.json")) as f:
    assert json.load(f) == json.loads(json.dumps(metrics))
  assert all(np.isfinite(v) for v in _numbers(metrics))
  for code in ("z_timbre", "z_pitch"):
    for task in ("instrument", "pitch"):
      _check_f(metrics["table1"]["linear"][code][task])
  _check_f(metrics["table1"]["cnn"]["instrument"])
  _check_f(metrics["table1"]["cnn"]["pitch"])
  assert set(metrics["synthesis"]) == {"w_0", "w_0.5", "w_1"}
  for r in metrics["synthesis"].values():
    _check_f(r["instrument"])
    _check_f(r["pitch"])
    assert r["notes"] == 3 * metrics["run"]["validation_notes"]
  pairs = metrics["transfer"]["pairs"]
  assert metrics["transfer"]["representatives"] == ["Fhn", "Pno", "Vc", "Bn"]
  assert len(pairs) == 12 and "Fhn->Pno" in pairs
  for pair in pairs.values():
    assert set(pair) == {"alpha_0", "alpha_0.25", "alpha_0.5", "alpha_0.75", "alpha_1",
                         "notes"}
    for a in (k for k in pair if k.startswith("alpha_")):
      assert sum(pair[a]["posterior"]) == pytest.approx(1.0, abs=1e-4)
      assert 0 <= pair[a]["target_probability"] <= 1
  assert set(metrics["cnn"]) == {"instrument", "pitch"}
  assert metrics["settings"]["alphas"] == [0.0, 0.25, 0.5, 0.75, 1.0]
  c = metrics["centroid"]
  assert 0 <= c["dimension"] < 4 and len(c["mean_shift_hz_by_dimension"]) == 4
  assert c["selection_notes"] == metrics["run"]["train_notes"]   # fewer than 512
  assert c["tested_instruments"] == 4
  for r in c["per_instrument"].values():
    assert 0 <= r["p_value"] <= 1 and 0 <= r["welch_p_value"] <= 1
    assert r["mean_minus_hz"] > 0
  swap = metrics["swap"]
  for name, source, other in (("pitch", "z_t", "instrument"),
                              ("instrument", "z_p", "pitch")):
    r = swap[f"{name}_swap"]
    assert 0 < r["notes"] <= metrics["run"]["validation_notes"]
    _check_f(r[name])
    _check_f(r[other])
    # The partner differs in this label, so no note is heard as both.
    assert 0 <= r[f"{name}_from_{source}"] <= 1 - r[name]["accuracy"] + 1e-9
  k = metrics["clusters"]
  assert 0 < k["purity"] <= 1 and -1 <= k["ari"] <= 1 and 0 <= k["nmi"] <= 1
  assert sorted(k["components"].values()) == sorted(INSTRUMENTS)
  assert metrics["timbre_centres"] == "prior components"
  report = open(os.path.join(out_dir, "report.md")).read()
  assert "## Table 1" in report and "![t-SNE](fig2_tsne.png)" in report
  assert "## Swapping codes between notes" in report


def test_evaluate_at_n0_matches_components_and_mvae_uses_class_centres(evaluated):
  n0, _ = evaluated["mgmvae_n0"]
  assert n0["table1"]["cnn"]["instrument"] is None      # the paper's '-'
  assert n0["timbre_centres"].startswith("prior components matched")
  assert n0["run"]["label_fraction"] == 0.0
  mvae, out_dir = evaluated["mvae"]
  assert "clusters" not in mvae and not os.path.exists(os.path.join(out_dir,
                                                                    "components.png"))
  assert mvae["timbre_centres"].startswith("training codes")


def test_evaluate_summaries_reach_tensorboard(toy, evaluated):
  logdir = os.path.join(toy["mgmvae"], "summaries", "evaluation")
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
  acc.Reload()
  tags = acc.Tags()["tensors"]
  key = "evaluation/table1/linear/z_timbre/instrument/f1_weighted"
  assert key in tags and "evaluation/fig5_transfer" in tags
  import tensorflow as tf
  value = float(tf.make_ndarray(acc.Tensors(key)[0].tensor_proto))
  assert value == pytest.approx(
      evaluated["mgmvae"][0]["table1"]["linear"]["z_timbre"]["instrument"]["f1_weighted"])
  assert acc.Tensors(key)[0].step == evaluated["mgmvae"][0]["run"]["epoch"]
  assert 1 <= evaluated["mgmvae"][0]["run"]["epoch"] <= 3   # the best checkpoint's epoch


def test_an_evaluated_step_is_not_summarised_twice(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  picture = str(tmp_path / "p.png")
  tf.io.write_file(picture, tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)))
  logdir = str(tmp_path / "evaluation")
  assert report.write_summaries(logdir, {"a": {"b": 1.0}}, {"fig": picture}, 7)
  assert not report.write_summaries(logdir, {"a": {"b": 2.0}}, {"fig": picture}, 7)
  assert report.write_summaries(logdir, {"a": {"b": 3.0}}, {"fig": picture}, 9)
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={"tensors": 0})
  acc.Reload()
  points = sorted((e.step, float(tf.make_ndarray(e.tensor_proto)))   # one file each:
                  for e in acc.Tensors("evaluation/a/b"))            # any order
  assert points == [(7, 1.0), (9, 3.0)]
  assert sorted(e.step for e in acc.Tensors("evaluation/fig")) == [7, 9]
  assert report.summarised_steps(logdir) == {7, 9}
  # An event file cut short (a kill or a full disk while writing) lacks its closing
  # record: its step counts as not summarised, and the next evaluation of that step
  # replaces the file. One written before evaluations closed their files counts whole.
  (seven,) = [n for n in os.listdir(logdir) if any(e.step == 7 for e in _events_of(
      os.path.join(logdir, n)))]
  path = os.path.join(logdir, seven)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 10)   # into its last record
  assert report.summarised_steps(logdir) == {9}
  assert report.write_summaries(logdir, {"a": {"b": 4.0}}, {"fig": picture}, 7)
  assert not os.path.exists(path) and report.summarised_steps(logdir) == {7, 9}
  old = str(tmp_path / "old")
  with tf.summary.create_file_writer(old).as_default(step=5):   # no suffix, no closing
    tf.summary.scalar("evaluation/a/b", 5.0)
  assert report.summarised_steps(old) == {5}
  assert not report.write_summaries(old, {"a": {"b": 6.0}}, {}, 5)


def _events_of(path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  return [event_pb2.Event.FromString(r)
          for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]


def test_evaluate_refuses_bad_settings_and_existing_output(toy, evaluated):
  _, out_dir = evaluated["mgmvae"]
  before = os.path.getmtime(os.path.join(out_dir, "metrics.json"))
  with pytest.raises(EvaluationError, match="already exists; evaluations are never "
                     "overwritten"):
    evaluate(EvalConfig(toy["mgmvae"], out_dir), log=_quiet)
  assert os.path.getmtime(os.path.join(out_dir, "metrics.json")) == before
  with pytest.raises(EvaluationError, match=r"--alphas=0.0,1.5: expected numbers in "
                     r"\[0, 1\].*--draws=0"):
    EvalConfig(toy["mgmvae"], str(toy["root"] / "x"), alphas=(0.0, 1.5),
               draws=0).validate()
  with pytest.raises(EvaluationError, match="--representatives=Fhn,Tuba: expected two or "
                     "more of this run's instruments.*unknown: Tuba"):
    evaluate(EvalConfig(toy["mgmvae"], str(toy["root"] / "y"),
                        representatives=("Fhn", "Tuba")), log=_quiet)
  assert not os.path.exists(toy["root"] / "y")
  with pytest.raises(EvaluationError) as info:
    EvalConfig(toy["mgmvae"], str(toy["root"] / "x"), shift=float("inf"),
               ws=(0.0, float("inf")), representatives=("Pno", "Vc", "Pno")).validate()
  assert "--ws=0.0,inf: expected finite non-negative numbers" in str(info.value)
  assert "--shift=inf: expected a positive, finite number of sigmas" in str(info.value)
  assert "--representatives=Pno,Vc,Pno: names Pno twice" in str(info.value)
  done = subprocess.run([sys.executable, os.path.join(REPO, "bin", "evaluate"),
                         f"--run_dir={toy['root']}", "--out_dir=/tmp/never"],
                        capture_output=True, text=True, env=ENV, check=False)
  assert done.returncode == 1 and "model.json: not found" in done.stderr
  # Folders that cannot be written are refused before any work.
  with pytest.raises(EvaluationError, match="--cnn_dir=/etc/passwd: /etc/passwd exists and "
                     "is not a folder; expected a folder for the CNN judges"):
    EvalConfig(toy["mgmvae"], str(toy["root"] / "x"), cnn_dir="/etc/passwd").validate()
  with pytest.raises(EvaluationError, match="--out_dir=/etc/passwd/x: cannot be written: "
                     "/etc/passwd exists and is not a folder"):
    EvalConfig(toy["mgmvae"], "/etc/passwd/x").validate()
  with pytest.raises(EvaluationError, match="--out_dir=/etc/passwd/x/y: cannot be "
                     "written: /etc/passwd is not a folder"):
    EvalConfig(toy["mgmvae"], "/etc/passwd/x/y").validate()
  # A run whose record names other data (notes, split or normalisation) than the data
  # now at its prepared_dir is refused: its validation notes could be training notes.
  copy = str(toy["root"] / "copied_run")
  shutil.copytree(toy["mgmvae"], copy)
  record_path = os.path.join(copy, "model.json")
  record = json.load(open(record_path))
  for changes, said in (({"index_sha256": "0" * 64}, "its notes or their split "
                         r"\(index.csv\) differ"),
                        ({"log_mel_max": record["log_mel_max"] + 1},
                         "its log-mel normalisation differs")):
    with open(record_path, "w") as f:
      json.dump(record | changes, f)
    with pytest.raises(EvaluationError, match=f": {said} from what {copy}/model.json "
                       "records, so it is not the data the run trained on"):
      evaluate(EvalConfig(copy, str(toy["root"] / "z")), log=_quiet)
    assert not os.path.exists(toy["root"] / "z")
  # Another run's checkpoint (of the same network) is that run's to evaluate.
  theirs = tf.train.latest_checkpoint(os.path.join(toy["mgmvae_n0"], "best"))
  with pytest.raises(EvaluationError, match=f"--checkpoint={theirs}: belongs to the run "
                     f"{toy['mgmvae_n0']}, not to --run_dir={toy['mgmvae']}; evaluate it "
                     f"with --run_dir={toy['mgmvae_n0']}"):
    evaluate(EvalConfig(toy["mgmvae"], str(toy["root"] / "w"), checkpoint=theirs),
             log=_quiet)
  assert not os.path.exists(toy["root"] / "w")
  with open(record_path, "w") as f:
    f.write("{not json")
  with pytest.raises(EvaluationError, match=f"{record_path}: cannot be read as the run's "
                     "record"):
    evaluate(EvalConfig(copy, str(toy["root"] / "z")), log=_quiet)


def test_too_few_labels_for_an_instrument_cnn_at_n_give_a_dash_not_a_failure(
    toy, evaluated, monkeypatch):
  from tfgmvae.evaluate.evaluate import _cnns  # pylint: disable=import-outside-toplevel
  from tfgmvae.serving.export import load_run  # pylint: disable=import-outside-toplevel
  prepared = Prepared.load(toy["prepared"])
  _, info, _ = load_run(toy["mgmvae"], "best")
  fraction = 0.01   # one labelled note per instrument (round(0.01 * n) is 0)
  assert sum(prepared.labelled_quota(fraction).values()) == len(INSTRUMENTS)
  # (Any N > 0 labels each instrument once, so with several instruments a CNN's 2
  # notes are always there; a larger minimum stands for a data set with fewer.)
  monkeypatch.setattr(classifiers, "MIN_NOTES", len(INSTRUMENTS) + 1)
  config = EvalConfig(toy["mgmvae"], "unused", cnn_epochs=3)
  messages = []
  cnns, records = _cnns(prepared, info, fraction, str(toy["root"] / "cnn"), config,
                        messages.append)
  assert cnns["instrument_n"] is None and cnns["instrument"] is not None
  reason = (f"{len(INSTRUMENTS)} labelled training notes at N = 0.01, fewer than the "
            f"{len(INSTRUMENTS) + 1} a CNN needs")
  assert records["instrument_n001"] == {"skipped": reason}
  assert f"No instrument CNN at N = 0.01: {reason}." in messages
  # The report says so where it lists the CNNs, and Table 1 shows '–'.
  metrics, out_dir = evaluated["mgmvae"]
  changed = json.loads(json.dumps(metrics))
  changed["cnn"] = records
  changed["table1"]["cnn"]["instrument"] = None
  pictures = {k: f"{k}.png" for k in ("fig2_tsne", "fig3_synthesis", "fig5_transfer",
                                       "fig7_centroid", "fig8_traverse", "components")}
  text = report.markdown(changed, pictures, "MGMVAE, N = 1 %")
  assert f"instrument_n001: not trained, {reason}" in text
  assert "| log-mel | CNN (encoder + softmax) | – | – |" in text
  assert "no validation notes, so no transfer" not in text
  # A representative without validation notes: its pairs as the source are left out,
  # and the report says why.
  changed["transfer"]["pairs"] = {k: v for k, v in changed["transfer"]["pairs"].items()
                                  if not k.startswith("Fhn->")}
  assert ("Fhn has no validation notes, so no transfer starts from it (it is still a "
          "target).") in report.markdown(changed, pictures, "MGMVAE, N = 1 %")


def test_metrics_json_holds_null_for_an_undefined_statistic():
  from tfgmvae.evaluate.evaluate import _finite_or_null  # pylint: disable=import-outside-toplevel
  nan = stats.paired_t_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])   # every difference is 1
  assert np.isnan(nan["p"])
  value = {"a": [nan["p"], 1.5, {"b": float("-inf")}], "c": (2, "x"), "d": True}
  assert _finite_or_null(value) == {"a": [None, 1.5, {"b": None}], "c": [2, "x"],
                                    "d": True}
  json.dumps(_finite_or_null(value), allow_nan=False)


# -- bin/reproduce --------------------------------------------------------------------------

def test_reproduce_runs_a_tiny_grid_resumably(toy, tmp_path):
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text("--epochs=2\n--batch_size=16\n--filters=8\n--hidden=16\n"
                      "--latent_dim=4\n--media_every=0\n--verbose=0\n--patience=0\n")
  out = tmp_path / "grid"
  command = [sys.executable, os.path.join(REPO, "bin", "reproduce"), f"--out_dir={out}",
             f"--prepared_dir={toy['prepared']}", "--fractions=1",
             f"--mgmvae_flags={flagfile}", f"--mvae_flags={flagfile}",
             "--evaluate_arg=--draws=2", "--evaluate_arg=--cnn_epochs=2"]
  first = subprocess.run(command, capture_output=True, text=True, env=ENV, check=False)
  assert first.returncode == 0, first.stdout + first.stderr
  results = (out / "RESULTS.md").read_text()
  row = next(l for l in results.splitlines() if l.startswith("| 100 |"))
  cells = row.strip("|").split("|")
  assert len(cells) == 11
  paper = PAPER_TABLE1[(100, "mgmvae")]
  assert f"({paper[0]:.3f})" in cells[4] and f"({paper[3]:.3f})" in cells[10]
  assert "Not run in this grid: mgmvae_n000" in results
  swap_section = results.split("## Swapping codes between notes")[1].split("##")[0]
  swap_row = next(l for l in swap_section.splitlines() if l.startswith("| mgmvae_n100 |"))
  assert len(swap_row.strip("|").split("|")) == 3 and " (" in swap_row
  for name in ("mgmvae_n100", "mvae_n100"):
    (folder,) = [f for f in os.listdir(out / "eval" / name)   # the best checkpoint's
                 if not f.endswith(".args.json")]              # epoch
    assert (out / "eval" / name / f"{folder}.args.json").is_file()
    assert folder in ("epoch_1", "epoch_2")
    assert (out / "eval" / name / folder / "metrics.json").is_file()
  # Both models (same sizes, same data) were judged by the same two CNNs.
  assert [re.sub("-[0-9a-f]{10}[.]", "-KEY.", n)
          for n in sorted(os.listdir(out / "eval" / "cnn"))] == [
              "instrument-KEY.json", "instrument-KEY.keras", "pitch-KEY.json",
              "pitch-KEY.keras"]
  timings_path = out / "logs" / "timings.json"
  timings = json.loads(timings_path.read_text())
  second = subprocess.run(command, capture_output=True, text=True, env=ENV, check=False)
  assert second.returncode == 0, second.stdout + second.stderr
  assert second.stdout.count("reusing the evaluation") == 2
  train_log = (out / "logs" / "mgmvae_n100.train.log").read_text()
  assert "already finished (epoch 2)" in train_log
  # Training time adds up over invocations; a reused evaluation keeps its time, and a
  # new evaluation (here: its folder moved away) replaces it.
  again = json.loads(timings_path.read_text())
  assert again["mgmvae_n100.train"] > timings["mgmvae_n100.train"]
  assert again["mgmvae_n100.evaluate"] == timings["mgmvae_n100.evaluate"]
  timings_path.write_text(json.dumps(again | {"mgmvae_n100.evaluate": 1e6}))
  shutil.move(str(out / "eval" / "mgmvae_n100"), str(tmp_path / "old_evaluation"))
  swapped = [a for a in command if a != "--evaluate_arg=--draws=2"] + [
      "--evaluate_arg=--draws=2"]   # (the same flags in another order: reused alike)
  evaluate_only = subprocess.run(swapped + ["--notrain", "--fractions=0,1"],
                                 capture_output=True, text=True, env=ENV, check=False)
  assert evaluate_only.returncode == 0, evaluate_only.stdout + evaluate_only.stderr
  assert "[mgmvae_n100] evaluating epoch" in evaluate_only.stdout
  # The same checkpoint evaluated again: TensorBoard keeps the first evaluation's points.
  evaluate_log = (out / "logs" / "mgmvae_n100.evaluate.log").read_text()
  assert evaluate_log.count("already holds an evaluation of epoch") == 1, evaluate_log
  assert 0 < json.loads(timings_path.read_text())["mgmvae_n100.evaluate"] < 1e6
  assert "[mgmvae_n000] not trained and --notrain: left out" in evaluate_only.stdout
  # A cell judged by CNNs of another budget (evaluated before a default changed) is not
  # mixed into the table.
  reused = out / "eval" / "mvae_n100"
  metrics_path = next(reused.glob("epoch_*/metrics.json"))
  kept = metrics_path.read_text()
  older = json.loads(kept)
  older["cnn"]["pitch"]["spec"]["patience"] = 5
  metrics_path.write_text(json.dumps(older))
  results_md = (out / "RESULTS.md").read_text()
  mixed_judges = subprocess.run(command + ["--notrain"], capture_output=True, text=True,
                                env=ENV, check=False)
  assert mixed_judges.returncode == 1, mixed_judges.stdout + mixed_judges.stderr
  assert "judged by CNNs trained with different budgets (mgmvae_n100: epochs 2, " \
      "patience 30, " in mixed_judges.stderr
  assert "; mvae_n100: epochs 2, patience 5, " in mixed_judges.stderr
  assert (out / "RESULTS.md").read_text() == results_md
  metrics_path.write_text(kept)
  assert not (out / "runs" / "mgmvae_n000").exists()
  nothing = tmp_path / "nothing"   # nothing to evaluate: refused, and nothing written
  empty = subprocess.run([a.replace(str(out), str(nothing)) for a in command]
                         + ["--notrain"], capture_output=True, text=True, env=ENV,
                         check=False)
  assert empty.returncode == 1 and "no cell has a trained run" in empty.stderr
  assert not nothing.exists()
  # The grid on other data: its runs, trained on the first data, are not mixed in.
  other = str(tmp_path / "other_prepared")
  prepare(PrepareConfig("csv", write_notes(str(tmp_path / "other"), toy_specs(
      pitches=range(60, 64))), other), log=_quiet)
  mixed = subprocess.run([a.replace(str(toy["prepared"]), other) for a in command],
                         capture_output=True, text=True, env=ENV, check=False)
  assert mixed.returncode == 1, mixed.stdout + mixed.stderr
  assert (f"_n100 trains on the prepared data at {toy['prepared']}, not this grid's "
          f"({other}): the grid's cells must share one dataset.") in mixed.stderr
  assert train_log == (out / "logs" / "mgmvae_n100.train.log").read_text()
  # Nor with --notrain, which only evaluates the runs placed in the grid.
  mixed = subprocess.run([a.replace(str(toy["prepared"]), other) for a in command]
                         + ["--notrain"], capture_output=True, text=True, env=ENV,
                         check=False)
  assert mixed.returncode == 1 and "not this grid's" in mixed.stderr, mixed.stderr
  other = subprocess.run([a for a in command if a != "--evaluate_arg=--draws=2"]
                         + ["--evaluate_arg=--draws=3", "--models=mvae"],
                         capture_output=True, text=True, env=ENV, check=False)
  assert other.returncode == 1 and "was evaluated with ['--representatives=Fhn,Pno,Vc,Bn'" \
      ", '--draws=2', '--cnn_epochs=2'], not" in other.stderr, other.stderr
  assert "training" not in other.stdout   # (refused before the cell's training step)
  mine = tmp_path / "mine.md"
  mine.write_text("my notes")
  refused = subprocess.run(command + [f"--results={mine}"], capture_output=True, text=True,
                           env=ENV, check=False)
  assert refused.returncode == 1 and "mine.md: already exists and is not this grid's " \
      "results file" in refused.stderr
  assert mine.read_text() == "my notes"
  # A --results file this grid wrote (its first line says so) is rewritten by a rerun.
  own = (out / "RESULTS.md").read_text()
  assert own.startswith(f"<!-- written by bin/reproduce --out_dir={out}; ")
  ours = tmp_path / "ours.md"
  ours.write_text(own.splitlines()[0] + "\nan older run's text\n")
  rewritten = subprocess.run(command + ["--notrain", f"--results={ours}",
                                        "--models=mgmvae"],
                             capture_output=True, text=True, env=ENV, check=False)
  assert rewritten.returncode == 0, rewritten.stdout + rewritten.stderr
  # Asked for one cell, the grid's results keep the others it evaluated before.
  assert "[mvae_n100] kept in the results: " in rewritten.stdout
  assert "| mvae_n100 | mvae | 100 % |" in ours.read_text()
  assert "mvae_n100" not in ours.read_text().split("Not run in this grid:")[1].split("\n")[0]
  assert ours.read_text().startswith(own.splitlines()[0] + "\n# Results: the paper's grid")
  assert "an older run's text" not in ours.read_text()
  bad = subprocess.run(command[:2] + [f"--out_dir={out}", "--fractions=2"],
                       capture_output=True, text=True, env=ENV, check=False)
  assert bad.returncode == 1 and "--fractions=2.0: expected numbers in [0, 1]" in bad.stderr


def test_reproduce_refuses_what_would_fail_late_before_training(toy, tmp_path):
  from tfgmvae.evaluate.reproduce import Grid, ReproduceConfig  # pylint: disable=import-outside-toplevel
  # Representatives the data does not have: refused before the first cell trains.
  grid = Grid(ReproduceConfig(str(tmp_path / "g1"), prepared_dir=toy["prepared"],
                              fractions=(1.0,), representatives=("Fhn", "Oboe")),
              log=_quiet)
  with pytest.raises(ReproduceError, match="--representatives=Fhn,Oboe: expected two or "
                     "more of the data's instruments .*unknown: Oboe"):
    grid.run()
  assert not (tmp_path / "g1").exists()
  # ... and, when the grid prepares its data, before preparing it (or rendering the
  # default corpus: its instruments are known).
  notes = write_notes(str(tmp_path / "n"), toy_specs(pitches=range(60, 62)))
  for dataset, path, names in (("csv", notes, "sine, square"),
                               ("rendered", str(tmp_path / "not_yet"), "Bn, Clr, ")):
    with pytest.raises(ReproduceError, match=f"--representatives=sine,Oboe: expected two "
                       f"or more of the data's instruments \\({names}.*unknown: .*Oboe$"):
      Grid(ReproduceConfig(str(tmp_path / "g5"), dataset=dataset, data_path=path,
                           representatives=("sine", "Oboe")), log=_quiet).prepared_dir()
    assert not (tmp_path / "g5" / "data").exists() and not (tmp_path / "not_yet").exists()
  # bin/evaluate flags bin/evaluate would refuse, or that the grid sets itself.
  for arg, said in (("--evaluate_arg=--draws=0", "--evaluate_arg: --draws=0: expected a "
                     "positive integer"),
                    ("--evaluate_arg=--drawz=3", "Unknown command line flag 'drawz'"),
                    ("--evaluate_arg=--out_dir=x", "--evaluate_arg=--out_dir: the grid sets "
                     "each evaluation's --out_dir itself"),
                    ("--representatives=Pno,Pno", "names Pno twice")):
    done = subprocess.run([sys.executable, os.path.join(REPO, "bin", "reproduce"),
                           f"--out_dir={tmp_path / 'g2'}", f"--prepared_dir={toy['prepared']}",
                           arg], capture_output=True, text=True, env=ENV, check=False)
    assert done.returncode == 1 and said in done.stderr, (arg, done.stderr)
  assert not (tmp_path / "g2").exists()
  # A grid's data prepared from one source, asked for with another: named, not reused.
  first = write_notes(str(tmp_path / "a"), toy_specs(pitches=range(60, 63)))
  second = write_notes(str(tmp_path / "b"), toy_specs(pitches=range(60, 63)))
  assert Grid(ReproduceConfig(str(tmp_path / "g3"), dataset="csv", data_path=first),
              log=_quiet).prepared_dir() == str(tmp_path / "g3" / "data")
  assert Grid(ReproduceConfig(str(tmp_path / "g3"), dataset="csv", data_path=first),
              log=_quiet).prepared_dir() == str(tmp_path / "g3" / "data")
  with pytest.raises(ReproduceError, match=f"g3/data holds the grid's data, prepared from "
                     f"csv notes listed in {first}, not --dataset=csv --data_path={second}"):
    Grid(ReproduceConfig(str(tmp_path / "g3"), dataset="csv", data_path=second),
         log=_quiet).prepared_dir()
  # Flags left at their defaults (data/corpus is relative to where the command runs):
  # the grid's data is used as it is.
  assert Grid(ReproduceConfig(str(tmp_path / "g3"), source_given=False),
              log=_quiet).prepared_dir() == str(tmp_path / "g3" / "data")
  # A source with no notes to prepare, and a --results folder that does not exist.
  (tmp_path / "no_labels").mkdir()
  with pytest.raises(ReproduceError, match="no_labels/labels.csv: no such CSV file"):
    Grid(ReproduceConfig(str(tmp_path / "g6"), dataset="csv",
                         data_path=str(tmp_path / "no_labels")), log=_quiet).prepared_dir()
  with pytest.raises(ReproduceError, match=f"--results={tmp_path}/nodir/R.md: its folder "
                     f"{tmp_path}/nodir does not exist"):
    ReproduceConfig(str(tmp_path / "g7"), prepared_dir=toy["prepared"],
                    results=str(tmp_path / "nodir" / "R.md")).validate()
  # An N that is no whole percentage would share a cell's name (n000 for 0.001).
  with pytest.raises(ReproduceError, match=r"--fractions=0.0,0.001: expected whole "
                     r"percentages \(0.25, not 0.255\)"):
    ReproduceConfig(str(tmp_path / "g4"), prepared_dir=toy["prepared"],
                    fractions=(0.0, 0.001)).validate()
  # A warm-started run carries its source's labels: not a cell, whatever its N.
  from tfgmvae.evaluate.reproduce import check_run  # pylint: disable=import-outside-toplevel
  cold, warm = tmp_path / "cold", tmp_path / "warm"
  for run, extra in ((cold, ""), (warm, f"--warm_start={toy['mgmvae']}\n")):
    shutil.copytree(toy["mgmvae_n0"], run)
    (run / "flags.txt").write_text(f"--model=mgmvae\n--label_fraction=0.0\n"
                                   f"--prepared_dir={toy['prepared']}\n{extra}")
  check_run(str(cold), "mgmvae", 0.0, toy["prepared"])   # (passes without the warm start)
  with pytest.raises(ReproduceError, match=f"{warm}/flags.txt records --warm_start="
                     f"{toy['mgmvae']}: a warm-started run carries what its source learned"):
    check_run(str(warm), "mgmvae", 0.0, toy["prepared"])


def test_the_cnn_budget_defaults_agree_and_train_every_epoch():
  # bin/evaluate's flags, EvalConfig and CnnSpec give one budget; its patience is the
  # whole budget (a pitch CNN stopped after 5 idle epochs judged synthesis far worse).
  done = subprocess.run([sys.executable, os.path.join(REPO, "bin", "evaluate"), "--help"],
                        capture_output=True, text=True, timeout=120)
  flags = {name: int(value) for name, value in re.findall(
      r"--(cnn_epochs|cnn_patience):.*?\(default: '(\d+)'\)", done.stdout, re.S)}
  spec = {f.name: f.default for f in dataclasses.fields(classifiers.CnnSpec)}
  config = {f.name: f.default for f in dataclasses.fields(EvalConfig)}
  assert flags == {"cnn_epochs": config["cnn_epochs"], "cnn_patience": config["cnn_patience"]}
  assert (spec["epochs"], spec["patience"]) == (config["cnn_epochs"], config["cnn_patience"])
  assert config["cnn_patience"] >= config["cnn_epochs"] == 30


def test_check_judges_reads_each_cells_cnn_budgets():
  def cell(name, *patiences):   # (a metrics.json as loaded)
    return {"cnn": {f"t{i}": {"spec": {"epochs": 30, "patience": p, "batch_size": 64,
                                       "learning_rate": 1e-3, "seed": 0, "filters": i}}
                    for i, p in enumerate(patiences)}}

  same = {"a": cell("a", 30, 30), "b": cell("b", 30)}   # (network sizes may differ)
  check_judges(same)
  # A CNN not trained (too few labels at the cell's N) has no budget to compare.
  skipped = cell("d", 30)
  skipped["cnn"]["instrument_n001"] = {"skipped": "0 labelled training notes at N = 0.01"}
  check_judges(same | {"d": skipped})
  with pytest.raises(ReproduceError, match=r"\(a: epochs 30, patience 30, batch_size 64, "
                     r"learning_rate 0.001, seed 0; c: epochs 30, patience 5, .* / epochs "
                     r"30, patience 30, "):
    check_judges({"a": same["a"], "c": cell("c", 5, 30)})
