"""bin/quickstart (the README's main job) end to end, twice, on a tiny rendered corpus.

The default corpus takes minutes to render and the quickstart network minutes to train,
so the corpus here is rendered first with two instruments over six pitches (quickstart
reuses a corpus it finds), and the training flagfile is a tiny copy of
configs/quickstart.flags. Everything else is the command a user runs.
"""

import dataclasses
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import soundfile

from conftest import REPO
from tfgmvae import render

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _quickstart(tmp_path, flagfile, *more):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, "bin", "quickstart"),
       f"--work_dir={tmp_path / 'data'}", f"--run_dir={tmp_path / 'runs' / 'q'}",
       f"--export_dir={tmp_path / 'export'}", f"--out_dir={tmp_path / 'out'}",
       f"--train_flags={flagfile}", *more],
      capture_output=True, text=True, env=ENV, timeout=900, check=False)


def test_quickstart_renders_trains_exports_writes_audio_and_reuses_it(tmp_path):
  by_name = {i.name: i for i in render.PAPER_INSTRUMENTS}
  render.render_corpus(render.RenderConfig(
      out_dir=str(tmp_path / "data" / "corpus"), soundfonts=render.default_soundfonts(),
      sample_rate=22050, note_seconds=0.5, release_seconds=0.25,
      instruments=tuple(dataclasses.replace(by_name[n], low=57, high=62)
                        for n in ("Vc", "Pno")),
      dynamics=(("mf", 80),)))
  # A choice the rendered corpus cannot serve is refused before preparing it.
  other = _quickstart(tmp_path, os.path.join(REPO, "configs", "quickstart.flags"),
                      "--pitch=70")
  assert other.returncode == 1 and other.stderr.startswith(
      f"ERROR: --pitch=70: expected a MIDI pitch of {tmp_path / 'data' / 'corpus'}, 57 to "
      "62."), other.stderr
  assert os.listdir(tmp_path / "data") == ["corpus"]
  shipped = open(os.path.join(REPO, "configs", "quickstart.flags")).read().splitlines()
  tiny = {"--filters": "8", "--hidden": "16", "--latent_dim": "4", "--batch_size": "8",
          "--epochs": "2", "--media_every": "0"}
  lines = [f"{l.split('=')[0]}={tiny[l.split('=')[0]]}" if l.split("=")[0] in tiny else l
           for l in shipped if not l.startswith(("--run_dir", "--prepared_dir"))]
  flagfile = tmp_path / "tiny.flags"
  flagfile.write_text("\n".join(lines) + "\n")

  first = _quickstart(tmp_path, flagfile)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  assert "Reusing the rendered corpus" in first.stdout
  assert "Done: 2 epochs" in first.stdout and "Exporting" in first.stdout
  assert os.listdir(tmp_path / "export") == ["1"]
  assert os.path.isfile(tmp_path / "export" / "1" / "saved_model.pb")
  out = tmp_path / "out" / "v1"
  wavs = sorted(n for n in os.listdir(out) if n.endswith(".wav"))
  assert len(wavs) == 2 and wavs[0].startswith("synth_Vc_60")
  assert wavs[1].startswith("transfer_") and wavs[1].endswith("_to_Pno.wav")
  written = {}
  for name in wavs:
    wave, rate = soundfile.read(out / name)
    assert rate == 22050 and wave.shape == (43 * 256,)
    assert np.all(np.isfinite(wave)) and 0.9 < np.abs(wave).max() <= 1.0   # normalised
    assert os.path.isfile(out / name.replace(".wav", ".png"))
    written[name] = (out / name).read_bytes()
  flags_recorded = (tmp_path / "runs" / "q" / "flags.txt").read_text()
  assert "--filters=8" in flags_recorded

  # Again: every step's output is reused, nothing is overwritten.
  mtimes = {n: os.stat(out / n).st_mtime_ns for n in wavs}
  second = _quickstart(tmp_path, flagfile)
  assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
  for line in ("Reusing the rendered corpus", "Reusing the prepared data",
               "already finished (epoch 2)", "Reusing the export", "kept the existing"):
    assert line in second.stdout, line
  assert os.listdir(tmp_path / "export") == ["1"]
  assert {n: (out / n).read_bytes() for n in wavs} == written
  assert {n: os.stat(out / n).st_mtime_ns for n in wavs} == mtimes
  # A note's WAV gone but its PNG there: refused, and nothing half-written.
  os.remove(out / wavs[0])
  lone = _quickstart(tmp_path, flagfile)
  assert lone.returncode == 1 and lone.stderr.startswith(
      f"ERROR: {out / wavs[0].replace('.wav', '.png')} is there without its WAV; "
      "quickstart writes a note's WAV and PNG together"), lone.stderr[-2000:]
  assert sorted(os.listdir(out)) == sorted([wavs[1]] + [n.replace(".wav", ".png")
                                                        for n in wavs])
  # A choice the prepared data cannot serve is refused before any step runs.
  third = _quickstart(tmp_path, flagfile, "--target=Fl")
  assert third.returncode == 1 and third.stderr.startswith(
      f"ERROR: --target=Fl: expected one of the instruments of {tmp_path / 'data'}"
      "/prepared: Pno, Vc.") and "[1/5]" not in third.stdout, third.stderr

  # The README's Python API section runs as written against what quickstart wrote (its
  # example paths pointed at this test's files).
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  code = readme.split("## Python API")[1].split("```python\n")[1].split("```")[0]
  note = next(os.path.join(root, n) for root, _, names in os.walk(tmp_path / "data" / "corpus")
              for n in sorted(names) if n.endswith(".flac"))
  for example, real in (('"note.flac"', repr(note)),
                        ('"export/quickstart"', repr(str(tmp_path / "export")))):
    assert example in code, example
    code = code.replace(example, real)
  code = (f"import sys\nsys.path.insert(0, {REPO!r})\n" + code
          + "\nassert x.shape == (43, 256) and y.ndim == 1 and len(y) > 0"
            "\nassert codes['z_pitch_mean'].shape[1] == 16"
            "\nassert prior.batch_shape == [] and prior.event_shape == [16]"
            "\nassert notes[0]['audio'].shape == (11008,) and notes[0]['mel'].shape == (43, 256)"
            "\nprint('README python ok')\n")
  api = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env=ENV, timeout=600, check=False)
  assert api.returncode == 0 and "README python ok" in api.stdout, api.stderr[-3000:]
  # The finished run's hint ("the same command with --epochs=N") works for quickstart.
  assert "To train it further, run the same command with --epochs=N" in second.stdout
  os.remove(out / wavs[0].replace(".wav", ".png"))   # (the lone PNG left above)
  further = _quickstart(tmp_path, flagfile, "--epochs=3")
  assert further.returncode == 0, further.stdout[-2000:] + further.stderr[-3000:]
  assert "Done: 3 epochs" in further.stdout
  assert "--epochs=3" in (tmp_path / "runs" / "q" / "flags.txt").read_text()


def test_quickstart_checks_its_choices_and_folders_before_rendering(tmp_path):
  flagfile = os.path.join(REPO, "configs", "quickstart.flags")
  typo = _quickstart(tmp_path, flagfile, "--instrument=Guitar")
  assert typo.returncode == 1 and typo.stderr.startswith(
      "ERROR: --instrument=Guitar: expected one of the instruments of the default "
      "corpus: Bn, Clr, Ehn, Fhn, Fl, Ob, Pno, Sax, Trop, Trtb, Vc, Vn."), typo.stderr
  assert not (tmp_path / "data").exists()
  low = _quickstart(tmp_path, flagfile, "--pitch=12")
  assert low.returncode == 1 and "--pitch=12: expected a MIDI pitch of the default " \
      "corpus, 21 to 108." in low.stderr
  (tmp_path / "data" / "corpus").mkdir(parents=True)   # someone else's folder
  (tmp_path / "data" / "corpus" / "mine.txt").write_text("mine")
  taken = _quickstart(tmp_path, flagfile)
  assert taken.returncode == 1 and taken.stderr.count("\n") == 1, taken.stderr
  assert taken.stderr.startswith(f"ERROR: Output directory {tmp_path / 'data' / 'corpus'} "
                                 "already exists and is not empty")
  assert os.listdir(tmp_path / "data") == ["corpus"]
  assert (tmp_path / "data" / "corpus" / "mine.txt").read_text() == "mine"


def test_choices_are_checked_against_the_prepared_data_first(tmp_path):
  from tfgmvae import quickstart  # pylint: disable=g-import-not-at-top
  prepared = types.SimpleNamespace(directory="P", instruments=["Pno", "Vc"],
                                   pitches=[57, 58, 59])
  config = quickstart.QuickstartConfig(work_dir=str(tmp_path))
  with pytest.raises(quickstart.ChoiceError, match=r"^--pitch=60: expected a MIDI pitch "
                     r"of P, 57 to 59\.$"):
    quickstart.check_choices(config, prepared)
  quickstart.check_choices(dataclasses.replace(config, pitch=58), prepared)
  with pytest.raises(quickstart.ChoiceError, match=r"^--target=Vn: expected one of the "
                     r"instruments of P: Pno, Vc\.$"):
    quickstart.check_choices(dataclasses.replace(config, pitch=58, target="Vn"), prepared)
