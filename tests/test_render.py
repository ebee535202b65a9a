"""Tests for tfgmvae.render and bin/make_dataset, with real FluidSynth and soundfonts.

Usage:
  pytest -q tests/test_render.py

Needs libfluidsynth3, pyfluidsynth and Debian's fluid-soundfont-gm and
musescore-general-soundfont-lossless packages; the module is skipped without them.
"""

import csv
import dataclasses
import importlib.util
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile

REPO = pathlib.Path(__file__).resolve().parent.parent
if importlib.util.find_spec("tfgmvae") is None:  # Source checkout, not installed.
  sys.path.insert(0, str(REPO))

from tfgmvae import render  # pylint: disable=g-import-not-at-top,wrong-import-position

MAKE_DATASET = REPO / "bin" / "make_dataset"

try:
  render._import_fluidsynth()  # pylint: disable=protected-access
  SOUNDFONTS = render.default_soundfonts()
except (ImportError, FileNotFoundError) as e:  # pragma: no cover
  # Not a skip: the README's test command installs them, and these tests are the only
  # check of the real renderer.
  pytest.fail(f"FluidSynth or the default soundfonts are unavailable ({e}); install them "
              "as the README's test command does (apt-get install libfluidsynth3 "
              "fluid-soundfont-gm musescore-general-soundfont-lossless; pip install -e '.[test]').",
              pytrace=False)

_BY_NAME = {i.name: i for i in render.PAPER_INSTRUMENTS}
# Two mid-range pitches each of a bowed string and a woodwind.
TINY_INSTRUMENTS = (
    dataclasses.replace(_BY_NAME["Vc"], low=57, high=58),  # A3, B-flat 3
    dataclasses.replace(_BY_NAME["Fl"], low=76, high=77),  # E5, F5
)
TINY_DYNAMICS = (("mf", 80),)


def tiny_config(out_dir, **overrides) -> render.RenderConfig:
  kwargs = dict(out_dir=str(out_dir), soundfonts=SOUNDFONTS, sample_rate=22050,
                note_seconds=0.5, release_seconds=0.25, instruments=TINY_INSTRUMENTS,
                dynamics=TINY_DYNAMICS)
  kwargs.update(overrides)
  return render.RenderConfig(**kwargs)


def tree_bytes(root: pathlib.Path) -> dict:
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
          if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("render") / "corpus"
  config = tiny_config(out_dir)
  rows = render.render_corpus(config)
  return config, out_dir, rows


def read_labels(out_dir):
  with open(out_dir / render.LABELS_FILENAME, newline="") as f:
    return list(csv.reader(f))


def test_labels_csv(corpus):
  config, out_dir, rows = corpus
  table = read_labels(out_dir)
  assert table[0] == ["path", "instrument", "pitch", "velocity", "dynamics", "soundfont"]
  stems = sorted(pathlib.Path(p).stem for p in SOUNDFONTS)
  expected = [
      [f"audio/{inst}/{inst}-{stem}-{pitch}-mf.flac", inst, str(pitch), "80", "mf", stem]
      for inst, pitches in (("Fl", (76, 77)), ("Vc", (57, 58)))
      for stem in stems for pitch in pitches
  ]
  assert table[1:] == expected
  assert [[str(r[k]) for k in render.LABEL_COLUMNS] for r in rows] == expected
  assert render.count_by_instrument(rows) == {"Fl": 4, "Vc": 4}
  on_disk = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
  assert on_disk == sorted([r[0] for r in expected] + ["labels.csv"])
  assert config.num_samples == round(0.75 * 22050)
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(out_dir).st_mode & 0o777 == 0o777 & ~umask   # as mkdir makes it


def test_audio_files_decode_mono_right_length_non_silent(corpus):
  config, out_dir, rows = corpus
  for row in rows:
    path = out_dir / row["path"]
    info = soundfile.info(path)
    assert (info.format, info.subtype) == ("FLAC", "PCM_16"), path
    assert info.channels == 1, path
    assert info.samplerate == 22050, path
    audio, _ = soundfile.read(path, dtype="float32")
    assert audio.shape == (config.num_samples,), path
    assert np.abs(audio).max() > 0.01, f"{path} is (nearly) silent"
    assert np.abs(audio).max() < 1.0, f"{path} clips"
    # Sound while the note is held, decaying after note-off.
    held = np.sqrt(np.mean(audio[2000:11000] ** 2))
    assert held > 0.003, path


def test_pitch_matches_label(corpus):
  import librosa  # pylint: disable=g-import-not-at-top  (a requirement: never skipped)
  _, out_dir, rows = corpus
  for row in rows:
    audio, sr = soundfile.read(out_dir / row["path"], dtype="float32")
    held = audio[int(0.1 * sr):int(0.45 * sr)]  # Skip the attack; note-off is at 0.5 s.
    f0 = librosa.yin(held, fmin=50.0, fmax=2000.0, sr=sr, frame_length=2048)
    measured = 69.0 + 12.0 * np.log2(np.median(f0) / 440.0)
    cents = 100.0 * (measured - row["pitch"])
    assert abs(cents) < 50.0, f"{row['path']}: f0 is {cents:+.0f} cents off the label"


def test_second_render_is_byte_identical(corpus, tmp_path):
  config, out_dir, _ = corpus
  again = tmp_path / "again"
  render.render_corpus(dataclasses.replace(config, out_dir=str(again)))
  assert tree_bytes(again) == tree_bytes(out_dir)


def test_note_audio_does_not_depend_on_render_order(corpus, tmp_path):
  config, out_dir, _ = corpus
  cello_58 = dataclasses.replace(TINY_INSTRUMENTS[0], low=58)
  flute_77 = dataclasses.replace(TINY_INSTRUMENTS[1], low=77)
  piano = dataclasses.replace(_BY_NAME["Pno"], low=28, high=28)
  # Each compared note first on a fresh synth, or right after a note of another preset
  # (in the corpus each follows a note of its own preset), soundfonts in the other order:
  # not a single byte of any note's file may change.
  orders = {"alone": (cello_58,), "after_piano": (piano, flute_77, cello_58)}
  for name, instruments in orders.items():
    other = tmp_path / name
    render.render_corpus(dataclasses.replace(
        config, out_dir=str(other), soundfonts=SOUNDFONTS[::-1], instruments=instruments,
        dynamics=TINY_DYNAMICS))
    common = [p for p in tree_bytes(out_dir) if p.startswith("audio/") and (other / p).exists()]
    assert len(common) == 2 * (len(instruments) - (name == "after_piano")), name
    for rel in common:
      assert (other / rel).read_bytes() == (out_dir / rel).read_bytes(), (name, rel)


def test_existing_non_empty_out_dir_is_refused_and_untouched(tmp_path):
  out_dir = tmp_path / "taken"
  out_dir.mkdir()
  (out_dir / "keep.txt").write_text("precious")
  with pytest.raises(FileExistsError, match="taken"):
    render.render_corpus(tiny_config(out_dir))
  assert [p.name for p in out_dir.iterdir()] == ["keep.txt"]
  assert (out_dir / "keep.txt").read_text() == "precious"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # No partial sibling.


def test_empty_existing_out_dir_is_filled(tmp_path):
  out_dir = tmp_path / "empty"
  out_dir.mkdir()
  # What a render killed with kill -9 left beside it (its process is gone): removed.
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  from tfgmvae.data import paths  # pylint: disable=g-import-not-at-top
  left = tmp_path / f".empty.partial-{paths._HOST}-{int(gone.stdout)}-0123abcd"  # pylint: disable=protected-access
  (left / "audio").mkdir(parents=True)
  said = []
  rows = render.render_corpus(tiny_config(out_dir, soundfonts=SOUNDFONTS[:1],
                                          instruments=TINY_INSTRUMENTS[:1]), log=said.append)
  assert len(rows) == 2
  assert (out_dir / "labels.csv").is_file()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
  assert said == [f"Removed {left}: unfinished, left by a process (pid {int(gone.stdout)}) "
                  "that was killed while writing."]


def test_missing_soundfont_is_named(tmp_path):
  missing = tmp_path / "no_such_font.sf2"
  with pytest.raises(FileNotFoundError, match="no_such_font.sf2"):
    render.render_corpus(tiny_config(tmp_path / "out", soundfonts=(SOUNDFONTS[0], missing)))
  assert list(tmp_path.iterdir()) == []


def test_invalid_soundfont_is_named_and_leaves_nothing(tmp_path):
  bogus = tmp_path / "fonts" / "bogus.sf2"
  bogus.parent.mkdir()
  bogus.write_bytes(b"RIFF\x04\x00\x00\x00junk" * 10)
  with pytest.raises(RuntimeError, match="bogus.sf2"):
    render.render_corpus(tiny_config(tmp_path / "out", soundfonts=(SOUNDFONTS[0], bogus)))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fonts"]


def test_silent_note_is_an_error_naming_soundfont_program_and_pitch(tmp_path):
  # FluidR3_GM's violin has no sample for key 94 (see render.KNOWN_PRESET_GAPS).
  violin_94 = dataclasses.replace(_BY_NAME["Vn"], low=94, high=94)
  fluid = [p for p in SOUNDFONTS if pathlib.Path(p).stem == "FluidR3_GM"]
  with pytest.raises(RuntimeError, match=r"FluidR3_GM.*program 40.*pitch 94"):
    render.render_corpus(tiny_config(tmp_path / "out", soundfonts=fluid,
                                     instruments=(violin_94,), skip_notes=()))
  assert list(tmp_path.iterdir()) == []
  # With the default skip list the note is simply left out.
  rows = render.render_corpus(tiny_config(
      tmp_path / "out", soundfonts=fluid,
      instruments=(dataclasses.replace(violin_94, low=93, high=95),)))
  assert [r["pitch"] for r in rows] == [93, 95]


def test_default_soundfonts_missing_names_path_and_package(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"FluidR3_GM\.sf2.*fluid-soundfont-gm"):
    render.default_soundfonts(sf2_dir=str(tmp_path), sf3_dir=str(tmp_path))
  (tmp_path / "FluidR3_GM.sf2").write_bytes(b"")
  with pytest.raises(FileNotFoundError, match="musescore-general-soundfont-lossless"):
    render.default_soundfonts(sf2_dir=str(tmp_path), sf3_dir=str(tmp_path))
  (tmp_path / "MuseScore_General_Full.sf3").write_bytes(b"")
  assert render.default_soundfonts(str(tmp_path), str(tmp_path)) == (
      str(tmp_path / "FluidR3_GM.sf2"), str(tmp_path / "MuseScore_General_Full.sf3"))


def run_make_dataset(*args, cwd):
  # No PYTHONPATH: the script must find the package from its own location.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run([sys.executable, str(MAKE_DATASET), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_rejects_unknown_instrument_before_any_work(tmp_path):
  out_dir = tmp_path / "out"
  result = run_make_dataset(f"--out_dir={out_dir}", "--instruments=Fl,Kazoo", cwd=tmp_path)
  assert result.returncode != 0
  assert result.stderr.startswith("ERROR: --instruments=Fl,Kazoo: unknown Kazoo; expected "
                                  "some of Pno, Vn, Vc, Ehn, Fhn, Trtb, Trop, Sax, Bn, Clr, "
                                  "Fl, Ob.")
  assert sorted(p.name for p in tmp_path.iterdir()) == []
  result = run_make_dataset(f"--out_dir={out_dir}", f"--soundfonts={tmp_path}/no.sf2",
                            cwd=tmp_path)
  assert result.returncode == 1 and result.stderr == (
      f"ERROR: --soundfonts: {tmp_path}/no.sf2: no such file (expected .sf2/.sf3 "
      "soundfont paths). (usage: make_dataset --help)\n"), result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("changes,said", [
    (dict(gain=11.0), "--gain=11.0: expected FluidSynth's master gain range, above 0 up "
     "to 10"),
    (dict(gain=math.inf), "--gain=inf: expected"),
    (dict(gain=0.0), "--gain=0.0: expected"),
    (dict(note_seconds=math.inf), "--note_seconds=inf: expected 0.0029 (one 64-sample "
     "FluidSynth block) to 60 seconds"),
    (dict(note_seconds=1e-5, release_seconds=0.0), "--note_seconds=1e-05: expected"),
    (dict(note_seconds=1e7), "--note_seconds=10000000.0: expected"),
    (dict(release_seconds=59.6), "--release_seconds=59.6: expected 0 to 59.5 seconds"),
    (dict(release_seconds=-1.0), "--release_seconds=-1.0: expected"),
    (dict(sample_rate=100), "--sample_rate=100: expected FluidSynth's range 8000..96000"),
])
def test_render_settings_out_of_range_are_named(tmp_path, changes, said):
  with pytest.raises(ValueError) as info:
    tiny_config(tmp_path / "out", **changes)
  assert str(info.value).startswith(said)


def test_the_gain_asked_for_is_the_gain_rendered_with(tmp_path):
  quiet, loud = (render.render_corpus(tiny_config(
      tmp_path / name, soundfonts=SOUNDFONTS[:1], instruments=TINY_INSTRUMENTS[:1],
      gain=gain)) for name, gain in (("quiet", 1.0), ("loud", 4.0)))
  peaks = [max(np.abs(soundfile.read(tmp_path / name / r["path"])[0]).max()
               for r in rows) for name, rows in (("quiet", quiet), ("loud", loud))]
  assert peaks[1] == pytest.approx(4 * peaks[0], rel=0.01)


def test_cli_refuses_a_link_as_out_dir_before_rendering(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "empty")
  result = run_make_dataset(f"--out_dir={tmp_path / 'link'}", "--instruments=Ob",
                            "--soundfonts=", cwd=tmp_path)
  assert result.returncode != 0 and result.stderr.startswith(
      "ERROR: --soundfonts is empty; expected .sf2/.sf3 paths")
  result = run_make_dataset(f"--out_dir={tmp_path / 'link'}", "--instruments=Ob",
                            cwd=tmp_path)
  assert result.returncode == 1 and not result.stdout
  assert result.stderr == (f"ERROR: {tmp_path / 'link'} is a symbolic link (to "
                           f"{tmp_path / 'empty'}); give the folder itself, or a new "
                           "path, as out_dir.\n")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "link"]


def test_cli_renders_a_subset_end_to_end(tmp_path):
  out_dir = tmp_path / "cli"
  result = run_make_dataset(f"--out_dir={out_dir}", "--instruments=Ob", "--dynamics=ff",
                            f"--soundfonts={SOUNDFONTS[0]}", "--sample_rate=16000",
                            "--format=wav", cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  n_oboe = _BY_NAME["Ob"].high - _BY_NAME["Ob"].low + 1
  assert f"Ob  {n_oboe}" in result.stdout
  assert f"total  {n_oboe}" in result.stdout
  assert str(out_dir / "labels.csv") in result.stdout
  table = read_labels(out_dir)
  assert len(table) == 1 + n_oboe
  first = out_dir / table[1][0]
  assert first.suffix == ".wav"
  info = soundfile.info(first)
  assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


@pytest.mark.parametrize("sig,code,said", [(signal.SIGTERM, 143, ""),
                                           (signal.SIGINT, 130, "ERROR: interrupted.\n")])
def test_cli_stopped_mid_render_leaves_nothing(tmp_path, sig, code, said):
  out_dir = tmp_path / "corpus"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  # Ctrl-C as in a terminal: a suite started in the background (`cmd &` in a script)
  # passes SIGINT on as ignored, and Python then installs no handler for it; so a small
  # trampoline restores the default, then becomes bin/make_dataset (same process).
  trampoline = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
  proc = subprocess.Popen([sys.executable, "-c", trampoline, str(MAKE_DATASET),
                           f"--out_dir={out_dir}"], cwd=tmp_path, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().startswith(f"Rendering into {out_dir}")
  deadline = time.monotonic() + 60   # until the first notes are on disk
  while not list(tmp_path.glob(".corpus.partial-*/audio/*/*.flac")):
    assert proc.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(sig)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == code and stderr == said, stderr
  assert os.listdir(tmp_path) == []


def test_cli_refuses_a_taken_out_dir_before_rendering(tmp_path):
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "mine.txt").write_text("mine")
  result = run_make_dataset(f"--out_dir={tmp_path / 'taken'}", cwd=tmp_path)
  assert result.returncode == 1 and not result.stdout
  assert result.stderr == (f"ERROR: Output directory {tmp_path / 'taken'} already exists "
                           "and is not empty; nothing is ever overwritten. Choose a new "
                           "out_dir, or move/delete the old one first.\n")
