"""bin/train end to end: flags, replay, rejection, resume after kill -9, warm start, NaN."""

import dataclasses
import glob
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgmvae.data.dataset import DataError, PipelineConfig, make_dataset
from tfgmvae.data.prepare import Prepared, PrepareConfig, prepare
from tfgmvae.model import GMVAE, ModelConfig
from tfgmvae.serving import export as export_lib
from tfgmvae.train.checkpoints import RunStateError, moved_run_dir, run_lock
from tfgmvae.train.config import ConfigError, TrainConfig
from tfgmvae.train.loop import TrainingError, train
from tfgmvae.train.summaries import read_written

from conftest import REPO

TRAIN = os.path.join(REPO, "bin", "train")
TINY = ["--filters=8", "--hidden=16", "--latent_dim=4", "--batch_size=8", "--media_every=0",
        "--verbose=2"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _run(args, timeout=300, **kw):
  return subprocess.run([sys.executable, TRAIN] + args, capture_output=True, text=True,
                        env=ENV, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
  from conftest import toy_specs, write_notes  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("train_data")
  csv_path = write_notes(str(root / "notes"), toy_specs())
  out = str(root / "prepared")
  prepare(PrepareConfig("csv", csv_path, out), log=lambda *_: None)
  return out


def _weights(run_dir, folder="checkpoints"):
  """Every model weight of the run's last checkpoint, restored into a fresh model."""
  with open(os.path.join(run_dir, "model.json")) as f:
    config = ModelConfig.from_dict(json.load(f)["model"])
  model = GMVAE(config).build_for()
  path = tf.train.latest_checkpoint(os.path.join(run_dir, folder))
  tf.train.Checkpoint(model=model).restore(path).expect_partial() \
      .assert_existing_objects_matched()
  return {f"{i}:{w.name}": w.numpy() for i, w in enumerate(model.weights)}, \
      tf.train.load_checkpoint(path)


def test_cli_trains_prepares_writes_flags_and_replays(toy_csv, tmp_path):
  run = str(tmp_path / "run")
  relative_csv = os.path.relpath(toy_csv, tmp_path)   # paths given relative to the cwd
  done = _run(["--run_dir=run", "--dataset=csv", f"--data_path={relative_csv}",
               "--epochs=2"] + TINY, cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Done: 2 epochs" in done.stdout
  for name in ("flags.txt", "model.json", "data/prepared.json", "checkpoints/checkpoint",
               "best/checkpoint", "summaries/train", "summaries/validation"):
    assert os.path.exists(os.path.join(run, name)), name
  flags_text = open(os.path.join(run, "flags.txt")).read()
  assert "--epochs=2" in flags_text and f"--data_path={toy_csv}" in flags_text
  assert f"--run_dir={run}\n" in flags_text   # recorded absolute: replayable from anywhere
  again = _run([f"--flagfile={run}/flags.txt"])   # (from the repository's folder)
  assert again.returncode == 0 and "already finished (epoch 2). To train it further, run " \
      "the same command with --epochs=N, N > 2." in again.stdout
  # Neither a finished run nor a refused command changes the record.
  fewer = _run([f"--flagfile={run}/flags.txt", "--epochs=1", "--media_every=9"])
  assert fewer.returncode == 0 and "already finished (epoch 2)" in fewer.stdout
  assert open(os.path.join(run, "flags.txt")).read() == flags_text
  with run_lock(run):                   # as a live bin/train holds it
    busy = _run([f"--flagfile={run}/flags.txt", "--epochs=9", "--media_every=9"])
  assert busy.returncode == 1 and "in use by another training process" in busy.stderr
  assert open(os.path.join(run, "flags.txt")).read() == flags_text
  more = _run([f"--flagfile={run}/flags.txt", "--epochs=3", "--media_every=7"])
  assert more.returncode == 0 and "Done: 3 epochs" in more.stdout, more.stderr[-2000:]
  assert "--media_every=7" in open(os.path.join(run, "flags.txt")).read()
  other = _run([f"--flagfile={run}/flags.txt", "--learning_rate=0.5"])
  assert other.returncode == 1
  assert "records different settings" in other.stderr and "--learning_rate=0.5" in other.stderr
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
  changed = _run([f"--flagfile={path}", "--timbre_adversary=5"], timeout=120,
                 cwd=str(tmp_path))
  assert changed.returncode == 1 and "+--timbre_adversary=5.0" in changed.stderr
  assert "--run_dir=" not in changed.stderr and "--data_path=" not in changed.stderr
  assert open(path).read() == older
  resumed = _run([f"--flagfile={path}", "--epochs=4"], cwd=str(tmp_path))
  assert resumed.returncode == 0 and "Done: 4 epochs" in resumed.stdout, \
      resumed.stderr[-2000:]
  assert "--timbre_adversary=0.0" in open(path).read()
  assert f"--run_dir={run}\n" in open(path).read()
  with open(os.path.join(run, "model.json")) as f:
    record = json.load(f)
  assert record["pitch_ranges"] == ranges and record["note_peaks"] == peaks
  # --bn_momentum changes only the inference statistics: a resumed run may change it.
  momentum = _run([f"--flagfile={path}", "--epochs=5", "--bn_momentum=0.9"])
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
  moved = _run([f"--flagfile={copy}/flags.txt", "--epochs=6"])
  assert moved.returncode == 0 and "Done: 6 epochs" in moved.stdout, moved.stderr[-2000:]
  assert (f"{copy}/flags.txt records --run_dir={run}; the run it replays is in {copy} "
          "(moved or copied there), so it goes on there.") in moved.stdout
  assert f"--run_dir={copy}\n" in open(f"{copy}/flags.txt").read()
  assert tf.train.latest_checkpoint(f"{copy}/checkpoints").endswith("ckpt-6")
  assert tf.train.latest_checkpoint(f"{run}/checkpoints").endswith("ckpt-5")
  assert open(path).read() == recorded
  # Naming the folder on the command line does the same, silently (bin/reproduce does).
  named = _run([f"--flagfile={path}", f"--run_dir={copy}", "--epochs=7"])
  assert named.returncode == 0 and "Done: 7 epochs" in named.stdout, named.stderr[-2000:]
  assert "moved or copied" not in named.stdout
  assert tf.train.latest_checkpoint(f"{run}/checkpoints").endswith("ckpt-5")


@pytest.mark.parametrize("flag,message", [
    ("--label_fraction=1.5", "--label_fraction=1.5: expected a number in [0, 1]"),
    ("--batch_size=0", "--batch_size=0: expected a positive integer"),
    ("--checkpoint_every=0", "--checkpoint_every=0: expected a positive integer"),
    ("--strategy=multi_worker", "needs the TF_CONFIG environment variable"),
    ("--precision=mixed_float16", "needs a GPU"),
    ("--warm_start=/nonexistent/run", "--warm_start=/nonexistent/run: no checkpoint there"),
    ("--seed=-1", "--seed=-1: expected an integer in 0..4294967295"),
    ("--seed=4294967296", "--seed=4294967296: expected an integer in 0..4294967295"),
    ("--learning_rate=inf", "--learning_rate=inf: expected a finite number > 0"),
    ("--cpu_devices=2", "--cpu_devices splits the CPU"),
    ("--timbre_adversary=-1", "--timbre_adversary=-1.0: expected a weight >= 0"),
    ("--bn_momentum=1", "--bn_momentum=1.0: expected a number in [0, 1)"),
    ("--verbose=3", "--verbose=3: expected 0 (quiet), 1 (progress bar and a line per "
     "epoch) or 2"),
    # The model takes its front end from the prepared data: a different one is refused.
    ("--hop_length=512", "was prepared with other audio settings than this command's "
     "(--hop_length: prepared 256, this command 512)"),
])
def test_bad_settings_are_rejected_before_any_work(prepared_dir, tmp_path, flag, message):
  run = tmp_path / "rejected"
  done = _run([f"--run_dir={run}", f"--prepared_dir={prepared_dir}"] + TINY + [flag],
              timeout=60)
  assert done.returncode == 2, done.stderr[-2000:]
  assert message in done.stderr
  assert not run.exists()


def test_missing_data_is_named(tmp_path):
  run = tmp_path / "r"
  done = _run([f"--run_dir={run}", "--dataset=csv", "--data_path="] + TINY, timeout=60)
  assert done.returncode == 2 and "--data_path is required" in done.stderr
  done = _run([f"--run_dir={run}", "--dataset=csv", "--data_path=~/no/notes.csv"] + TINY,
              timeout=60)   # (refused by bin/_common for every script's flags)
  assert done.returncode == 1, done.stderr[-2000:]
  assert done.stderr.startswith("ERROR: --data_path=~/no/notes.csv: '~' is not expanded "
                                "after --flag= or in a flagfile; write $HOME/no/notes.csv")
  assert not run.exists()
  with pytest.raises(ConfigError, match="--data_path=~/no/notes.csv: no such file or "
                     "folder \\(the shell does not expand ~ after --flag=; write \\$HOME/"):
    TrainConfig(run_dir=str(run), dataset="csv", data_path="~/no/notes.csv").validate()
  done = _run([f"--run_dir={run}", f"--prepared_dir={tmp_path}"] + TINY, timeout=60)
  assert done.returncode == 2 and "no prepared.json" in done.stderr
  # A flagfile without --run_dir (configs/small_*.flags leave it to bin/reproduce).
  done = _run([f"--prepared_dir={tmp_path}"] + TINY, timeout=60)
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
  done = _run([f"--flagfile={flagfile}", "--dataset=csv", f"--data_path={mine}"],
              timeout=60)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr == (
      f"ERROR: --prepared_dir={prepared_dir} (from --flagfile={flagfile}) was prepared "
      f"from csv notes listed in {source}, not from --dataset=csv --data_path={mine}; a "
      f"run trains on --prepared_dir alone. Add --prepared_dir= (empty) to prepare {mine} "
      "into RUN_DIR/data for this run, or leave --data_path out to train on the prepared "
      "data.\n")
  none = tmp_path / "none"
  done = _run([f"--flagfile={flagfile}", f"--prepared_dir={none}", "--dataset=csv",
               f"--data_path={mine}"], timeout=60)
  assert done.returncode == 2 and (f"--prepared_dir={none} has no prepared data, and a run "
                                   "trains on --prepared_dir instead of") in done.stderr
  # The source it was prepared from, as a file or its folder, may be named beside it
  # (the stop here is the next check's, on --batch_size).
  for path in (source, os.path.dirname(source)):
    done = _run([f"--flagfile={flagfile}", "--dataset=csv", f"--data_path={path}",
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
  failed = _run(base)
  assert failed.returncode == 1 and "missing.wav" in failed.stderr, failed.stderr[-2000:]
  assert os.path.exists(flags_path) and not os.path.exists(os.path.join(run, "data"))
  # Now the data is prepared, but training fails before it starts (a warm start from a
  # run that has no checkpoint).
  empty = tmp_path / "empty"   # (its model.json says MVAE: refused before any restore)
  (empty / "checkpoints").mkdir(parents=True)
  (empty / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
  (empty / "checkpoints" / "ckpt-1.index").write_bytes(b"")
  (empty / "model.json").write_text('{"model": {"kind": "mvae"}}')
  big = _run(base + ["--on_bad_file=skip", f"--warm_start={empty}"])
  assert big.returncode == 1 and "it is an MVAE run and this is an MGMVAE run" in \
      big.stderr, big.stderr[-2000:]
  # (A run not yet trained records the checkpoint this command warm-starts from.)
  assert f"--warm_start={empty}/checkpoints/ckpt-1\n" in open(flags_path).read()
  assert "--on_bad_file=skip" in open(flags_path).read()
  assert os.path.exists(os.path.join(run, "data", "prepared.json"))
  assert not os.path.exists(os.path.join(run, "checkpoints", "checkpoint"))
  # The flags that made RUN_DIR/data now bind; the others may still change, and
  # model.json follows them.
  reseeded = _run(base + ["--on_bad_file=skip", "--seed=3"])
  assert reseeded.returncode == 1 and "the run has not trained yet" in reseeded.stderr
  assert "+--seed=3" in reseeded.stderr and f"--warm_start={empty}" not in reseeded.stderr
  done = _run(base + ["--on_bad_file=skip", "--hidden=12"])
  assert done.returncode == 0 and "Done: 1 epoch;" in done.stdout, done.stderr[-2000:]
  assert "--hidden=12" in open(flags_path).read()
  with open(os.path.join(run, "model.json")) as f:
    assert json.load(f)["model"]["hidden"] == 12
  # Once it has trained, only the flags a resumed run may change do.
  again = _run(base + ["--on_bad_file=skip", "--hidden=16", "--epochs=2"])
  assert again.returncode == 1 and "+--hidden=16" in again.stderr


def test_resume_after_kill_matches_an_uninterrupted_run(prepared_dir, tmp_path):
  # A flagfile names a source that --prepared_dir overrides (as configs/paper_*.flags
  # do under bin/reproduce): flags.txt records the folder's source instead.
  base = tmp_path / "base.flags"
  unused = ["--dataset=tinysol", "--data_path=/nowhere/TinySOL", "--validation_fraction=0.3"]
  base.write_text("\n".join(unused) + "\n")
  common = [f"--flagfile={base}", f"--prepared_dir={prepared_dir}", "--epochs=40",
            "--keep_checkpoints=2"] + TINY
  straight = str(tmp_path / "straight")
  done = _run([f"--run_dir={straight}"] + common)
  assert done.returncode == 0, done.stderr[-3000:]
  source = os.path.join(os.path.dirname(prepared_dir), "notes", "labels.csv")
  recorded = ["--dataset=csv", f"--data_path={source}", "--validation_fraction=0.1"]
  lines = open(os.path.join(straight, "flags.txt")).read().splitlines()
  assert set(recorded) <= set(lines) and not set(unused) & set(lines)
  killed = str(tmp_path / "killed")
  # It saves after epochs 1, 3, 6, ... and is killed once epoch 5 has begun (before
  # epoch 6 can end), so the restart replays epoch 4 (and 5 if it had ended); the
  # weights must still be those of the run that saved every epoch, and TensorBoard must
  # hold each epoch once.
  common_killed = common + ["--checkpoint_every=3"]
  proc = subprocess.Popen([sys.executable, TRAIN, f"--run_dir={killed}"] + common_killed,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                          env=ENV | {"PYTHONUNBUFFERED": "1"})
  guard = threading.Timer(240, proc.kill)   # (a run that never gets there)
  guard.start()
  for line in proc.stdout:   # epoch 4's line, then its summaries: epoch 5 is beginning
    if line.startswith("Epoch 4/40"):
      break
  while read_written(os.path.join(killed, "summaries")) < 4:
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  guard.cancel()
  proc.stdout.close()
  assert proc.returncode == -signal.SIGKILL           # it really died mid-run
  interrupted_at = int(open(os.path.join(killed, "checkpoints", "checkpoint")).read()
                       .split('"')[1].rsplit("-", 1)[1])
  assert interrupted_at == 3
  # What a kill in the middle of a save leaves (the layout TF 2.16 left in a real run
  # killed while saving): the next start deletes it, and nothing else.
  unfinished = [os.path.join(killed, folder, f"ckpt-{interrupted_at + 1}_temp")
                for folder in ("checkpoints", "best")]
  for folder in unfinished:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "part-00000-of-00001.data-00000-of-00001.tempstate1"),
              "wb") as f:
      f.write(b"\0" * 1000)
  # Kills after the data file was moved into place (before or while the index was
  # written; numbered past this run's epochs, so that no save of the resumed run
  # replaces them), and a kill while the manager deleted an old checkpoint (index
  # first; numbered 0, below every checkpoint the run registers).
  orphans = [os.path.join(killed, "best", "ckpt-1000.data-00000-of-00001"),
             os.path.join(killed, "checkpoints", "ckpt-1001.data-00000-of-00001"),
             os.path.join(killed, "checkpoints", "ckpt-1001.index"),
             os.path.join(killed, "checkpoints", "ckpt-0.data-00000-of-00001")]
  for orphan in orphans:
    with open(orphan, "wb") as f:
      f.write(b"\0" * 1000)
  keep = os.path.join(killed, "checkpoints", "ckpt-notes")
  os.makedirs(keep)
  # A record from before flags.txt took the source from the folder still resumes, with
  # its own command (a --data_path of its own beside --prepared_dir) and then again.
  flags_path = os.path.join(killed, "flags.txt")
  lines = open(flags_path).read().splitlines()
  assert set(recorded) <= set(lines)
  with open(flags_path, "w") as f:
    f.write("\n".join(sorted(set(lines) - set(recorded) | set(unused))) + "\n")
  # The resumed run keeps its notes on disk (a flag a resumed run may change): the
  # batches, hence the weights, are those of the in-memory run.
  again = _run([f"--run_dir={killed}", "--cache=disk", "--data_path=/nowhere/TinySOL"]
               + common_killed)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "checkpoints/ckpt-3 (epoch 3)" in again.stdout and "Done: 40 epochs" in again.stdout
  assert "Keeping the 24 notes" in again.stdout
  lines = open(flags_path).read().splitlines()   # rewritten as it went on, but keeping
  assert set(unused) <= set(lines) and "--cache=disk" in lines   # its own source flags
  assert sorted(os.listdir(os.path.join(killed, "cache"))) in (
      ["train-mel", "validation-mel"], ["train-audio", "validation-audio"])   # no GPU / GPU
  assert not any(os.path.exists(folder) for folder in unfinished)
  assert again.stdout.count("an unfinished save") >= 2 and os.path.isdir(keep)
  assert not any(os.path.exists(orphan) for orphan in orphans)
  assert "before it was registered (the newest checkpoint registered is ckpt-" \
      in again.stdout and "data with no index" in again.stdout
  for split in ("train", "validation"):
    steps = [e.step for path in sorted(glob.glob(os.path.join(killed, "summaries", split,
                                                                "events*")))
             for e in tf.compat.v1.train.summary_iterator(path)
             if any(v.tag == "elbo" for v in e.summary.value)]
    assert steps == list(range(1, 41)), split
  saved = tf.train.get_checkpoint_state(os.path.join(killed, "checkpoints"))
  assert [p.rsplit("-", 1)[1] for p in saved.all_model_checkpoint_paths] == ["39", "40"]
  a, reader_a = _weights(straight)
  b, reader_b = _weights(killed)
  assert _weights(killed, "best")[0].keys() == b.keys()   # the real ones are intact
  assert a.keys() == b.keys() and len(a) > 10
  step = "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"
  assert reader_a.get_tensor(step) == reader_b.get_tensor(step) == 40 * 3   # 22 notes / 8
  for name in a:
    np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


# Runs bin/train with a SIGKILL at one moment inside a save (argv[1]: the moment).
KILLED_IN_A_SAVE = r'''
import os, runpy, signal, sys
from tensorflow.python.checkpoint import checkpoint_management
moment, argv = sys.argv[1], sys.argv[2:]
register = checkpoint_management.update_checkpoint_state_internal
replace = os.replace

def kill():
  os.kill(os.getpid(), signal.SIGKILL)

def registering(save_dir, model_checkpoint_path, *args, **kwargs):
  # The manager registers a save once its files are complete (then again after deleting
  # the checkpoints beyond --keep_checkpoints): killed at the first, epoch 2's files are
  # whole but unregistered.
  folder = os.path.basename(os.path.normpath(save_dir))
  if moment == "register_" + folder and model_checkpoint_path.endswith("ckpt-2"):
    kill()
  return register(save_dir, model_checkpoint_path, *args, **kwargs)

def replacing(src, dst, *args, **kwargs):
  if moment == "replace_" + os.path.basename(dst):   # its .tmp written, not yet in place
    kill()
  return replace(src, dst, *args, **kwargs)

checkpoint_management.update_checkpoint_state_internal = registering
os.replace = replacing
sys.argv = argv
sys.path.insert(0, os.path.dirname(argv[0]))   # as running the script would
runpy.run_path(argv[0], run_name="__main__")
'''


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


@pytest.fixture(scope="module")
def straight_run(prepared_dir, tmp_path_factory):
  """A 2-epoch run never killed, and its command's other flags."""
  common = [f"--prepared_dir={prepared_dir}", "--epochs=2"] + TINY
  straight = str(tmp_path_factory.mktemp("straight") / "run")
  done = _run([f"--run_dir={straight}"] + common)
  assert done.returncode == 0, done.stderr[-2000:]
  return straight, common


@pytest.mark.parametrize("moment", ["register_checkpoints", "register_best",
                                    "replace_flags.txt", "replace_model.json"])
def test_a_kill_inside_a_save_resumes_as_if_uninterrupted(straight_run, tmp_path, moment):
  """SIGKILL at a moment inside the run's own writes (a training or best checkpoint
  whose files are whole but not registered, the flags record or model.json written but
  not yet in place), then the same command again: the same weights, steps and best
  checkpoint as a run never killed, and nothing half-written left behind."""
  straight, common = straight_run
  killed = str(tmp_path / "killed")
  died = subprocess.run([sys.executable, "-c", KILLED_IN_A_SAVE, moment, TRAIN,
                         f"--run_dir={killed}"] + common, capture_output=True, text=True,
                        env=ENV, timeout=300)
  assert died.returncode == -signal.SIGKILL, (died.stdout[-1000:], died.stderr[-2000:])
  again = _run([f"--run_dir={killed}"] + common)
  assert again.returncode == 0 and "Done: 2 epochs" in again.stdout, again.stderr[-2000:]
  for folder in ("checkpoints", "best"):
    (want, _), (got, _) = _weights(straight, folder), _weights(killed, folder)
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{folder} {name}")
    assert (tf.train.latest_checkpoint(os.path.join(killed, folder)).rsplit("-", 1)[1]
            == tf.train.latest_checkpoint(os.path.join(straight, folder)).rsplit("-", 1)[1])
  step = "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"
  _, reader = _weights(killed)
  assert reader.get_tensor(step) == _weights(straight)[1].get_tensor(step) > 0
  assert not [n for n in os.listdir(killed) if n.endswith(".tmp")]
  assert not [n for n in os.listdir(os.path.join(killed, "summaries")) if n.endswith(".tmp")]
  assert open(os.path.join(killed, "flags.txt")).read() == open(
      os.path.join(straight, "flags.txt")).read().replace(straight, killed)


def _config(run_dir, prepared_dir, **kw):
  base = dict(run_dir=str(run_dir), prepared_dir=prepared_dir, filters=8, hidden=16,
              latent_dim=4, batch_size=8, media_every=0, verbose=0, epochs=2)
  return TrainConfig(**(base | kw))


def test_warm_start_is_a_separate_explicit_path(prepared_dir, tmp_path):
  source = tmp_path / "source"
  train(_config(source, prepared_dir), log=lambda *_: None)
  source_weights, _ = _weights(str(source))
  seen = {}

  class Capture(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
      seen["kernel"] = self.model.pitch_encoder.conv1.kernel.numpy()
      seen["step"] = int(self.model.optimizer.iterations.numpy())

  messages = []
  train(_config(tmp_path / "warm", prepared_dir, warm_start=str(source), epochs=1),
        log=messages.append, callbacks=[Capture()])
  name = next(n for n in source_weights if n.endswith(":kernel"))   # pitch_encoder.conv1
  np.testing.assert_array_equal(seen["kernel"], source_weights[name])
  assert seen["step"] == 0                                   # a new run: fresh optimizer
  assert any("Warm-started" in m for m in messages)
  with pytest.raises(ConfigError, match="names this run itself"):
    _config(source, prepared_dir, warm_start=str(source)).validate()
  import gc  # pylint: disable=g-import-not-at-top
  import logging  # pylint: disable=g-import-not-at-top
  seen_warnings = []
  handler = logging.Handler()
  handler.emit = lambda record: seen_warnings.append(record.getMessage())
  tf.get_logger().addHandler(handler)
  try:
    with pytest.raises(RunStateError, match="does not fit"):
      train(_config(tmp_path / "bigger", prepared_dir, warm_start=str(source), hidden=32),
            log=lambda *_: None)
    gc.collect()
  finally:
    tf.get_logger().removeHandler(handler)
  # (Not one warning for each value the failed restore left: there were 178 here.)
  assert not [w for w in seen_warnings if "could not be found" in w], seen_warnings[:3]
  # A run with the pitch adversary from one without it (the adversary starts afresh),
  # and back.
  messages = []
  adversarial = tmp_path / "adversarial"
  train(_config(adversarial, prepared_dir, warm_start=str(source), epochs=1,
                timbre_adversary=10.0), log=messages.append, callbacks=[Capture()])
  np.testing.assert_array_equal(seen["kernel"], source_weights[name])
  assert any("timbre_adversary not in it: initialised afresh" in m for m in messages)
  messages = []
  train(_config(tmp_path / "plain", prepared_dir, warm_start=str(adversarial), epochs=1),
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
    train(_config(tmp_path / "other_vocabulary", shifted, warm_start=str(source)),
          log=lambda *_: None)


def test_a_warm_start_is_recorded_as_its_checkpoint_and_replays_from_it(prepared_dir,
                                                                        tmp_path):
  source, run, replay = (str(tmp_path / n) for n in ("source", "warm", "replay"))
  train(_config(source, prepared_dir, epochs=1), log=lambda *_: None)
  first = tf.train.latest_checkpoint(os.path.join(source, "checkpoints"))
  base = [f"--run_dir={run}", f"--prepared_dir={prepared_dir}", "--epochs=1"] + TINY
  done = _run(base + [f"--warm_start={source}"])
  assert done.returncode == 0, done.stderr[-2000:]
  flags_path = os.path.join(run, "flags.txt")
  assert f"--warm_start={first}\n" in open(flags_path).read()
  # The source trains on; a replay of the warm-started run still starts from the
  # checkpoint it started from.
  train(_config(source, prepared_dir, epochs=2), log=lambda *_: None)
  again = _run([f"--flagfile={flags_path}", f"--run_dir={replay}"])
  assert again.returncode == 0 and f"from the weights of {first}" in again.stdout, \
      again.stderr[-2000:]
  # The replay trained as the run did: the same weights after the same epoch.
  (replayed, _), (original, _) = _weights(replay), _weights(run)
  assert replayed.keys() == original.keys()
  for name, value in original.items():
    np.testing.assert_allclose(replayed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  # Once it has trained, the warm-started run goes on without its source.
  shutil.rmtree(source)
  more = _run(base[:2] + ["--epochs=2"] + TINY + [f"--warm_start={source}"])
  assert more.returncode == 0 and "Done: 2 epochs;" in more.stdout, more.stderr[-2000:]
  assert f"--warm_start={first}\n" in open(flags_path).read()


def test_a_run_without_its_training_checkpoints_is_not_replaced(prepared_dir, tmp_path):
  run = tmp_path / "pruned"
  train(_config(run, prepared_dir, epochs=2), log=lambda *_: None)
  shutil.rmtree(run / "checkpoints")        # to save space, say
  kept = {name: (run / name).read_bytes() for name in ("model.json",)}
  best = tf.train.latest_checkpoint(str(run / "best"))
  with pytest.raises(RunStateError, match=f"has a best checkpoint \\({best}\\) but no "
                     f"training checkpoint .* --warm_start={best} and another --run_dir"):
    train(_config(run, prepared_dir, epochs=3, latent_dim=6), log=lambda *_: None)
  assert {name: (run / name).read_bytes() for name in kept} == kept
  assert tf.train.latest_checkpoint(str(run / "best")) == best
  # Its best weights start a new run.
  train(_config(tmp_path / "from_best", prepared_dir, epochs=1, warm_start=best),
        log=lambda *_: None)
  # best/ckpt-1 alone is what a kill during the first training save leaves (best/ is
  # saved first): that run starts again.
  shutil.rmtree(tmp_path / "from_best" / "checkpoints")
  assert train(_config(tmp_path / "from_best", prepared_dir, epochs=1),
               log=lambda *_: None)["epoch"] == 1


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
  plain = train(_config(tmp_path / "plain", prepared_dir, epochs=1), log=lambda *_: None,
                callbacks=[off])
  xla = train(_config(tmp_path / "xla", prepared_dir, epochs=1, jit_compile=True),
              log=lambda *_: None, callbacks=[on])
  assert xla["epoch"] == 1
  assert on.seen and all(on.seen) and off.seen and not any(off.seen)
  np.testing.assert_allclose(xla["history"]["loss"], plain["history"]["loss"], rtol=1e-3)


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
    _config("unused", prepared_dir, strategy="multi_worker").validate()
  assert said in str(info.value)


def test_too_few_validation_notes_for_the_replicas_names_the_remedy(prepared_dir):
  import types  # pylint: disable=g-import-not-at-top
  from tfgmvae.train.inputs import make_inputs  # pylint: disable=g-import-not-at-top
  p = Prepared.load(prepared_dir)
  notes = sum(p.counts["validation"].values())
  eight = types.SimpleNamespace(num_replicas_in_sync=notes + 1)
  with pytest.raises(ConfigError, match=f"the validation split has {notes} notes, fewer "
                     f"than one batch of {notes + 1} across {notes + 1} replicas; train on "
                     "fewer replicas \\(--cpu_devices, or fewer GPUs\\), or prepare"):
    make_inputs(p, "validation", notes + 1, 0, 4, strategy=eight)


def test_the_last_epoch_is_always_validated(prepared_dir, tmp_path):
  result = train(_config(tmp_path / "rare", prepared_dir, epochs=3, validation_every=5),
                 log=lambda *_: None)
  assert len(result["history"]["val_elbo"]) == 1 and result["best_epoch"] == 3
  assert tf.train.latest_checkpoint(str(tmp_path / "rare" / "best")).endswith("ckpt-3")
  result = train(_config(tmp_path / "every2", prepared_dir, epochs=3, validation_every=2),
                 log=lambda *_: None)
  assert len(result["history"]["val_elbo"]) == 2     # epochs 2 and 3


def test_one_process_at_a_time_trains_into_a_run_directory(prepared_dir, tmp_path):
  run = tmp_path / "locked"
  with run_lock(str(run)):              # as a live bin/train holds it
    with pytest.raises(RunStateError, match="in use by another training process"):
      train(_config(run, prepared_dir, epochs=1), log=lambda *_: None)
    assert not (run / "checkpoints").exists()
  assert train(_config(run, prepared_dir, epochs=1), log=lambda *_: None)["epoch"] == 1
  # Under the lock, train() checks the flags again (they may have changed since
  # bin/train's check), before any work.
  # (A run that prepared its data binds its data flags, here --seed.)
  other = tmp_path / "recorded"
  (other / "data").mkdir(parents=True)
  shutil.copy(os.path.join(prepared_dir, "prepared.json"), other / "data")
  (other / "flags.txt").write_text("--seed=5\n")
  with pytest.raises(RunStateError, match="records different data settings"):
    train(_config(other, prepared_dir, epochs=1), log=lambda *_: None,
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
    train(_config(tmp_path / "nan", prepared_dir, epochs=3), log=lambda *_: None,
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
    train(_config(tmp_path / "nan_xla", prepared_dir, epochs=3, jit_compile=True),
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
    train(_config(tmp_path / "run", prepared.directory, cache=cache), log=lambda *_: None)
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
  config = _config(tmp_path / "run", prepared.directory, cache="disk", epochs=1)
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
      f" A run keeps the data it started with; --warm_start={config.run_dir} starts a new "
      "run from this one's weights.")
  assert Prepared.load(prepared.directory).counts == prepared.counts


def test_best_checkpoint_and_early_stopping_follow_the_validation_elbo(prepared_dir,
                                                                       tmp_path):
  run = tmp_path / "patience"
  lines = []
  # A large learning rate makes the validation ELBO fall back soon, so patience 2 stops.
  config = _config(run, prepared_dir, epochs=30, patience=2, learning_rate=0.03,
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
  assert any(f"Early stop after epoch {best + 2}" in l for l in lines)
  # The best/ folder holds that epoch's weights, and they are not the last epoch's.
  assert tf.train.latest_checkpoint(str(run / "best")).endswith(f"ckpt-{best}")
  # Training checkpoints after the first epoch, every 5, and the epoch it stopped at.
  saved = tf.train.get_checkpoint_state(str(run / "checkpoints")).all_model_checkpoint_paths
  assert [int(p.rsplit("-", 1)[1]) for p in saved] == \
      sorted(set(range(5, best + 3, 5)) | {1, best + 2})
  best_weights, _ = _weights(str(run), "best")
  last_weights, _ = _weights(str(run))
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
  hist = train(_config(tmp_path / "n0", prepared_dir, epochs=2, label_fraction=0.0,
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
  half = train(_config(tmp_path / "n50", prepared_dir, epochs=2, label_fraction=0.5),
               log=lambda *_: None)["history"]
  assert all(v > 0 for v in half["instrument_ce"] + half["val_instrument_ce"])
  assert "val_instrument_accuracy" in half and "val_instrument_matched_accuracy" not in half
  # An MVAE's auxiliary classifier never trains at N = 0: no instrument accuracy at all.
  mvae = train(_config(tmp_path / "mvae0", prepared_dir, epochs=1, label_fraction=0.0,
                       model="mvae"), log=lambda *_: None)["history"]
  assert mvae["val_instrument_ce"] == [0.0]
  assert [k for k in mvae if k.startswith("val_instrument")] == ["val_instrument_ce"]


def test_a_refused_cache_leaves_the_recorded_flags(prepared_dir, tmp_path, monkeypatch):
  from tfgmvae.train import inputs  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  config = _config(run, prepared_dir, epochs=1)
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
