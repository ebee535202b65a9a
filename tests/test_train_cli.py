"""bin/train from the command line: flags, replay, rejection before any work, the terminal."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

from tfgmvae.train.checkpoints import run_lock
from tfgmvae.train.config import ConfigError, TrainConfig

from train_helpers import ENV, TINY, TRAIN, run_train


def test_cli_trains_prepares_writes_flags_and_replays(toy_csv, tmp_path):
  run = str(tmp_path / "run")
  relative_csv = os.path.relpath(toy_csv, tmp_path)   # paths given relative to the cwd
  done = run_train(["--run_dir=run", "--dataset=csv", f"--data_path={relative_csv}",
                    "--epochs=2"] + TINY, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Done: 2 epochs" in done.stdout
  for name in ("flags.txt", "model.json", "data/prepared.json", "checkpoints/checkpoint",
               "best/checkpoint", "summaries/train", "summaries/validation"):
    assert os.path.exists(os.path.join(run, name)), name
  flags_text = open(os.path.join(run, "flags.txt")).read()
  assert "--epochs=2" in flags_text and f"--data_path={toy_csv}" in flags_text
  assert f"--run_dir={run}\n" in flags_text   # recorded absolute: replayable from anywhere
  again = run_train([f"--flagfile={run}/flags.txt"])   # (from the repository's folder)
  assert again.returncode == 0 and "already finished (epoch 2). To train it further, run " \
      "the same command with --epochs=N, N > 2." in again.stdout
  # Neither a finished run nor a refused command changes the record.
  fewer = run_train([f"--flagfile={run}/flags.txt", "--epochs=1", "--media_every=9"])
  assert fewer.returncode == 0 and "already finished (epoch 2)" in fewer.stdout
  assert open(os.path.join(run, "flags.txt")).read() == flags_text
  with run_lock(run):                   # as a live bin/train holds it
    busy = run_train([f"--flagfile={run}/flags.txt", "--epochs=9", "--media_every=9"])
  assert busy.returncode == 1 and "in use by another training process" in busy.stderr
  assert open(os.path.join(run, "flags.txt")).read() == flags_text
  more = run_train([f"--flagfile={run}/flags.txt", "--epochs=3", "--media_every=7"])
  assert more.returncode == 0 and "Done: 3 epochs" in more.stdout, more.stderr[-2000:]
  assert "--media_every=7" in open(os.path.join(run, "flags.txt")).read()
  other = run_train([f"--flagfile={run}/flags.txt", "--learning_rate=0.5"])
  assert other.returncode == 1
  assert "records different settings" in other.stderr and "--learning_rate=0.5" in other.stderr
  assert "going on it may change only --epochs, --verbose, --media_every, " in other.stderr
  assert "--epochs=3" in open(os.path.join(run, "flags.txt")).read()
  # A run recorded before a flag existed (here --timbre_adversary) resumes when the
  # flag is at its default, and the file then records it; another value is refused.
  # (Such a record also holds paths as typed, relative to the folder it was run from.)
  path = os.path.join(run, "flags.txt")
  older = "".join(l for l in open(path) if not l.startswith("--timbre_adversary=")) \
      .replace(f"--run_dir={run}\n", "--run_dir=run\n") \
      .replace(f"--data_path={toy_csv}\n", f"--data_path={relative_csv}\n")
  with open(path, "w") as f:
    f.write(older)
  with open(os.path.join(run, "model.json")) as f:     # nor model.json the pitch ranges
    record = json.load(f)
  ranges = record.pop("pitch_ranges")
  peaks = record.pop("note_peaks")
  assert set(ranges) == {"sine", "square"} and len(peaks) == 3
  with open(os.path.join(run, "model.json"), "w") as f:
    json.dump(record, f)
  changed = run_train([f"--flagfile={path}", "--timbre_adversary=5"], timeout=120,
                      cwd=str(tmp_path))
  assert changed.returncode == 1 and "+--timbre_adversary=5.0" in changed.stderr
  assert "--run_dir=" not in changed.stderr and "--data_path=" not in changed.stderr
  assert open(path).read() == older
  resumed = run_train([f"--flagfile={path}", "--epochs=4"], cwd=str(tmp_path))
  assert resumed.returncode == 0 and "Done: 4 epochs" in resumed.stdout, \
      resumed.stderr[-2000:]
  assert "--timbre_adversary=0.0" in open(path).read()
  assert f"--run_dir={run}\n" in open(path).read()
  with open(os.path.join(run, "model.json")) as f:
    record = json.load(f)
  assert record["pitch_ranges"] == ranges and record["note_peaks"] == peaks
  # --bn_momentum changes only the inference statistics: a resumed run may change it.
  momentum = run_train([f"--flagfile={path}", "--epochs=5", "--bn_momentum=0.9"])
  assert momentum.returncode == 0 and "Done: 5 epochs" in momentum.stdout, \
      momentum.stderr[-2000:]
  assert "--bn_momentum=0.9" in open(path).read()
  assert "BatchNorm momentum 0.99 -> 0.9 from epoch 5" in momentum.stdout
  with open(os.path.join(run, "model.json")) as f:
    assert json.load(f)["model"]["bn_momentum"] == 0.9
  from tfgmvae.serving.export import load_run  # pylint: disable=g-import-not-at-top
  norms = [l for l in load_run(run, "latest")[0]._flatten_layers()
           if isinstance(l, keras.layers.BatchNormalization)]
  assert len(norms) == 9 and {l.momentum for l in norms} == {0.9}
  # A run directory moved or copied elsewhere goes on where it now is; the original is
  # left as it was (its flags.txt still records its own folder).
  copy = str(tmp_path / "elsewhere" / "copy")
  shutil.copytree(run, copy)
  recorded = open(path).read()
  moved = run_train([f"--flagfile={copy}/flags.txt", "--epochs=6"])
  assert moved.returncode == 0 and "Done: 6 epochs" in moved.stdout, moved.stderr[-2000:]
  assert (f"{copy}/flags.txt records --run_dir={run}; the run it replays is in {copy} "
          "(moved or copied there), so it goes on there.") in moved.stdout
  assert f"--run_dir={copy}\n" in open(f"{copy}/flags.txt").read()
  assert tf.train.latest_checkpoint(f"{copy}/checkpoints").endswith("ckpt-6")
  assert tf.train.latest_checkpoint(f"{run}/checkpoints").endswith("ckpt-5")
  assert open(path).read() == recorded
  # Naming the folder on the command line does the same, silently (bin/reproduce does).
  named = run_train([f"--flagfile={path}", f"--run_dir={copy}", "--epochs=7"])
  assert named.returncode == 0 and "Done: 7 epochs" in named.stdout, named.stderr[-2000:]
  assert "moved or copied" not in named.stdout
  assert tf.train.latest_checkpoint(f"{run}/checkpoints").endswith("ckpt-5")


BAD_SETTINGS = [   # (flag, TrainConfig field and value, message)
    ("--label_fraction=1.5", {"label_fraction": 1.5},
     "--label_fraction=1.5: expected a number in [0, 1]"),
    ("--batch_size=0", {"batch_size": 0}, "--batch_size=0: expected a positive integer"),
    ("--checkpoint_every=0", {"checkpoint_every": 0},
     "--checkpoint_every=0: expected a positive integer"),
    ("--strategy=multi_worker", {"strategy": "multi_worker"},
     "needs the TF_CONFIG environment variable"),
    ("--precision=mixed_float16", {"precision": "mixed_float16"}, "needs a GPU"),
    ("--warm_start=/nonexistent/run", {"warm_start": "/nonexistent/run"},
     "--warm_start=/nonexistent/run: no checkpoint there"),
    ("--seed=-1", {"seed": -1}, "--seed=-1: expected an integer in 0..4294967295"),
    ("--seed=4294967296", {"seed": 4294967296},
     "--seed=4294967296: expected an integer in 0..4294967295"),
    ("--learning_rate=inf", {"learning_rate": float("inf")},
     "--learning_rate=inf: expected a finite number > 0"),
    ("--cpu_devices=2", {"cpu_devices": 2}, "--cpu_devices splits the CPU"),
    ("--timbre_adversary=-1", {"timbre_adversary": -1.0},
     "--timbre_adversary=-1.0: expected a weight >= 0"),
    ("--bn_momentum=1", {"bn_momentum": 1.0},
     "--bn_momentum=1.0: expected a number in [0, 1)"),
    ("--verbose=3", {"verbose": 3}, "--verbose=3: expected 0 (quiet), 1 (progress bar and "
     "a line per epoch) or 2"),
    # The model takes its front end from the prepared data: a different one is refused.
    ("--hop_length=512", {"hop_length": 512}, "was prepared with other audio settings "
     "than this command's (--hop_length: prepared 256, this command 512)"),
]


@pytest.mark.parametrize("flag,values,message", BAD_SETTINGS,
                         ids=[flag for flag, _, _ in BAD_SETTINGS])
def test_each_bad_setting_is_named(prepared_dir, tmp_path, monkeypatch, flag, values,
                                   message):
  del flag
  monkeypatch.delenv("TF_CONFIG", raising=False)
  config = TrainConfig(run_dir=str(tmp_path / "rejected"), prepared_dir=prepared_dir,
                       filters=8, hidden=16, latent_dim=4, batch_size=8)
  if "hop_length" in values:
    config = dataclasses.replace(config, audio=dataclasses.replace(config.audio, **values))
  else:
    config = dataclasses.replace(config, **values)
  with pytest.raises(ConfigError) as refused:
    config.validate()
  assert message in str(refused.value)
  assert not (tmp_path / "rejected").exists()


def test_bad_settings_are_rejected_before_any_work(prepared_dir, tmp_path):
  # One command with every bad value (one --seed: the last would win): bin/train names
  # them all, exits 2 and writes nothing.
  run = tmp_path / "rejected"
  bad = [(flag, message) for flag, _, message in BAD_SETTINGS if flag != "--seed=4294967296"]
  env = {k: v for k, v in ENV.items() if k != "TF_CONFIG"}
  done = subprocess.run([sys.executable, TRAIN, f"--run_dir={run}",
                         f"--prepared_dir={prepared_dir}"] + TINY + [f for f, _ in bad],
                        capture_output=True, text=True, env=env, timeout=60, check=False)
  assert done.returncode == 2, done.stderr[-2000:]
  for _, message in bad:
    assert message in done.stderr, (message, done.stderr)
  assert not run.exists()


def test_missing_data_is_named(tmp_path):
  run = tmp_path / "r"
  done = run_train([f"--run_dir={run}", "--dataset=csv", "--data_path="] + TINY, timeout=60)
  assert done.returncode == 2 and "--data_path is required" in done.stderr
  done = run_train([f"--run_dir={run}", "--dataset=csv", "--data_path=~/no/notes.csv"] + TINY,
                   timeout=60)   # (refused by bin/_common for every script's flags)
  assert done.returncode == 1, done.stderr[-2000:]
  assert done.stderr.startswith("ERROR: --data_path=~/no/notes.csv: '~' is not expanded "
                                "after --flag= or in a flagfile; write $HOME/no/notes.csv")
  assert not run.exists()
  with pytest.raises(ConfigError, match="--data_path=~/no/notes.csv: no such file or "
                     "folder \\(the shell does not expand ~ after --flag=; write \\$HOME/"):
    TrainConfig(run_dir=str(run), dataset="csv", data_path="~/no/notes.csv").validate()
  done = run_train([f"--run_dir={run}", f"--prepared_dir={tmp_path}"] + TINY, timeout=60)
  assert done.returncode == 2 and "no prepared.json" in done.stderr
  # A flagfile without --run_dir (configs/small_*.flags leave it to bin/reproduce).
  done = run_train([f"--prepared_dir={tmp_path}"] + TINY, timeout=60)
  assert done.returncode == 2 and "--run_dir is required: the folder this run writes " \
      "into" in done.stderr and "no prepared.json" in done.stderr


def test_a_data_path_that_prepared_dir_would_override_is_refused(prepared_dir, tmp_path):
  # configs/quickstart.flags names --prepared_dir; a user adds their own notes after it.
  run = tmp_path / "r"
  flagfile = tmp_path / "base.flags"
  flagfile.write_text("\n".join([f"--prepared_dir={prepared_dir}", f"--run_dir={run}"]
                                + TINY) + "\n")
  source = os.path.join(os.path.dirname(prepared_dir), "notes", "labels.csv")
  mine = tmp_path / "mine" / "labels.csv"
  done = run_train([f"--flagfile={flagfile}", "--dataset=csv", f"--data_path={mine}"],
                   timeout=60)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr == (
      f"ERROR: --prepared_dir={prepared_dir} (from --flagfile={flagfile}) was prepared "
      f"from csv notes listed in {source}, not from --dataset=csv --data_path={mine}; a "
      f"run trains on --prepared_dir alone. Add --prepared_dir= (empty) to prepare {mine} "
      "into RUN_DIR/data for this run, or leave --data_path out to train on the prepared "
      "data.\n")
  none = tmp_path / "none"
  done = run_train([f"--flagfile={flagfile}", f"--prepared_dir={none}", "--dataset=csv",
                    f"--data_path={mine}"], timeout=60)
  assert done.returncode == 2 and (f"--prepared_dir={none} has no prepared data, and a run "
                                   "trains on --prepared_dir instead of") in done.stderr
  # The source it was prepared from, as a file or its folder, may be named beside it
  # (the stop here is the next check's, on --batch_size).
  for path in (source, os.path.dirname(source)):
    done = run_train([f"--flagfile={flagfile}", "--dataset=csv", f"--data_path={path}",
                      "--batch_size=0"], timeout=60)
    assert done.returncode == 2 and "--batch_size=0: expected a positive" in done.stderr
    assert "was prepared from" not in done.stderr
  assert not run.exists()


def test_a_run_that_never_trained_takes_a_corrected_command(toy_csv, tmp_path):
  run = str(tmp_path / "retry")
  flags_path = os.path.join(run, "flags.txt")
  # Preparation fails (a missing note): nothing was prepared or trained, so the next
  # command replaces the record.
  broken = os.path.join(os.path.dirname(toy_csv), "broken.csv")
  with open(toy_csv) as src, open(broken, "w") as dst:
    dst.write(src.read() + "audio/missing.wav,sine,60\n")
  base = [f"--run_dir={run}", "--dataset=csv", f"--data_path={broken}", "--epochs=1"] + TINY
  failed = run_train(base)
  assert failed.returncode == 1 and "missing.wav" in failed.stderr, failed.stderr[-2000:]
  assert os.path.exists(flags_path) and not os.path.exists(os.path.join(run, "data"))
  # Now the data is prepared, but training fails before it starts (a warm start from a
  # run that has no checkpoint).
  empty = tmp_path / "empty"   # (its model.json names other pitches: refused once the
  (empty / "checkpoints").mkdir(parents=True)   # data is there, before any restore)
  (empty / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
  (empty / "checkpoints" / "ckpt-1.index").write_bytes(b"")
  (empty / "model.json").write_text('{"model": {"kind": "mgmvae"}, "pitches": [1, 2]}')
  big = run_train(base + ["--on_bad_file=skip", f"--warm_start={empty}"])
  assert big.returncode == 1 and "it was trained on other pitches (1, 2) than this run's " \
      "data" in big.stderr, big.stderr[-2000:]
  # (A run not yet trained records the checkpoint this command warm-starts from.)
  assert f"--warm_start={empty}/checkpoints/ckpt-1\n" in open(flags_path).read()
  assert "--on_bad_file=skip" in open(flags_path).read()
  assert os.path.exists(os.path.join(run, "data", "prepared.json"))
  assert not os.path.exists(os.path.join(run, "checkpoints", "checkpoint"))
  # The flags that made RUN_DIR/data now bind; the others may still change, and
  # model.json follows them.
  reseeded = run_train(base + ["--on_bad_file=skip", "--seed=3"])
  assert reseeded.returncode == 1 and "the run has not trained yet" in reseeded.stderr
  assert "+--seed=3" in reseeded.stderr and f"--warm_start={empty}" not in reseeded.stderr
  done = run_train(base + ["--on_bad_file=skip", "--hidden=12"])
  assert done.returncode == 0 and "Done: 1 epoch;" in done.stdout, done.stderr[-2000:]
  assert "--hidden=12" in open(flags_path).read()
  with open(os.path.join(run, "model.json")) as f:
    assert json.load(f)["model"]["hidden"] == 12
  # Once it has trained, only the flags a resumed run may change do.
  again = run_train(base + ["--on_bad_file=skip", "--hidden=16", "--epochs=2"])
  assert again.returncode == 1 and "+--hidden=16" in again.stderr


def test_the_default_terminal_output_is_a_bar_that_fits_and_a_line_per_epoch(prepared_dir,
                                                                            tmp_path):
  """bin/train on an 80-column terminal (a pseudo-terminal): the bar it redraws fits in
  one row (a wrapped one would leave its first rows behind at every redraw)."""
  import fcntl, pty, struct, termios  # pylint: disable=g-import-not-at-top,multiple-imports
  leader, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
  args = [f"--run_dir={tmp_path / 'run'}", f"--prepared_dir={prepared_dir}",
          "--epochs=2"] + [a for a in TINY if a != "--verbose=2"]
  proc = subprocess.Popen([sys.executable, TRAIN] + args, stdout=follower,
                          stderr=subprocess.DEVNULL, env=ENV | {"COLUMNS": ""})
  os.close(follower)
  chunks = []
  while True:
    try:
      chunk = os.read(leader, 65536)
    except OSError:   # EIO: the process has closed the terminal
      break
    if not chunk:
      break
    chunks.append(chunk)
  os.close(leader)
  assert proc.wait(timeout=300) == 0
  text = b"".join(chunks).decode()
  rows = [r.replace("\x1b[K", "") for line in text.split("\n") for r in line.split("\r")]
  bars = [r for r in rows if r.startswith("Epoch 1/2 [")]
  assert bars and all(re.fullmatch(r"Epoch 1/2 \[[=> ]+\] \d/3.*", r) for r in bars), bars
  assert all(len(r) <= 79 for r in bars), max(bars, key=len)   # a redrawn row never wraps
  assert sum(r.startswith("Epoch 2/2 (") for r in rows) == 1   # the epoch lines stay
  assert any(r.startswith("Done: 2 epochs") for r in rows)
