"""bin/train killed (kill -9, also inside its own writes) and started again; warm starts
recorded in the run."""

import glob
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from tfgmvae.train.checkpoints import RunStateError
from tfgmvae.train.loop import train
from tfgmvae.train.summaries import read_written

from train_helpers import ENV, TINY, TRAIN, run_train, run_weights, tiny_config


def test_resume_after_kill_matches_an_uninterrupted_run(prepared_dir, tmp_path):
  # A flagfile names a source that --prepared_dir overrides (as configs/paper_*.flags
  # do under bin/reproduce): flags.txt records the folder's source instead.
  base = tmp_path / "base.flags"
  unused = ["--dataset=tinysol", "--data_path=/nowhere/TinySOL", "--validation_fraction=0.3"]
  base.write_text("\n".join(unused) + "\n")
  common = [f"--flagfile={base}", f"--prepared_dir={prepared_dir}", "--epochs=40",
            "--keep_checkpoints=2"] + TINY
  straight = str(tmp_path / "straight")
  done = run_train([f"--run_dir={straight}"] + common)
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
  again = run_train([f"--run_dir={killed}", "--cache=disk", "--data_path=/nowhere/TinySOL"]
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
  a, reader_a = run_weights(straight)
  b, reader_b = run_weights(killed)
  assert run_weights(killed, "best")[0].keys() == b.keys()   # the real ones are intact
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


@pytest.fixture(scope="module")
def straight_run(prepared_dir, tmp_path_factory):
  """A 2-epoch run never killed, and its command's other flags."""
  common = [f"--prepared_dir={prepared_dir}", "--epochs=2"] + TINY
  straight = str(tmp_path_factory.mktemp("straight") / "run")
  done = run_train([f"--run_dir={straight}"] + common)
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
  again = run_train([f"--run_dir={killed}"] + common)
  assert again.returncode == 0 and "Done: 2 epochs" in again.stdout, again.stderr[-2000:]
  for folder in ("checkpoints", "best"):
    (want, _), (got, _) = run_weights(straight, folder), run_weights(killed, folder)
    for name, value in want.items():
      np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6,
                                 err_msg=f"{folder} {name}")
    assert (tf.train.latest_checkpoint(os.path.join(killed, folder)).rsplit("-", 1)[1]
            == tf.train.latest_checkpoint(os.path.join(straight, folder)).rsplit("-", 1)[1])
  step = "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE"
  _, reader = run_weights(killed)
  assert reader.get_tensor(step) == run_weights(straight)[1].get_tensor(step) > 0
  assert not [n for n in os.listdir(killed) if n.endswith(".tmp")]
  assert not [n for n in os.listdir(os.path.join(killed, "summaries")) if n.endswith(".tmp")]
  assert open(os.path.join(killed, "flags.txt")).read() == open(
      os.path.join(straight, "flags.txt")).read().replace(straight, killed)


def test_a_warm_start_is_recorded_as_its_checkpoint_and_replays_from_it(prepared_dir,
                                                                        tmp_path):
  source, run, replay = (str(tmp_path / n) for n in ("source", "warm", "replay"))
  train(tiny_config(source, prepared_dir, epochs=1), log=lambda *_: None)
  first = tf.train.latest_checkpoint(os.path.join(source, "checkpoints"))
  base = [f"--run_dir={run}", f"--prepared_dir={prepared_dir}", "--epochs=1"] + TINY
  done = run_train(base + [f"--warm_start={source}"])
  assert done.returncode == 0, done.stderr[-2000:]
  flags_path = os.path.join(run, "flags.txt")
  assert f"--warm_start={first}\n" in open(flags_path).read()
  # The source trains on; a replay of the warm-started run still starts from the
  # checkpoint it started from.
  train(tiny_config(source, prepared_dir, epochs=2), log=lambda *_: None)
  again = run_train([f"--flagfile={flags_path}", f"--run_dir={replay}"])
  assert again.returncode == 0 and f"from the weights of {first}" in again.stdout, \
      again.stderr[-2000:]
  # The replay trained as the run did: the same weights after the same epoch.
  (replayed, _), (original, _) = run_weights(replay), run_weights(run)
  assert replayed.keys() == original.keys()
  for name, value in original.items():
    np.testing.assert_allclose(replayed[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
  # Once it has trained, the warm-started run goes on without its source.
  shutil.rmtree(source)
  more = run_train(base[:2] + ["--epochs=2"] + TINY + [f"--warm_start={source}"])
  assert more.returncode == 0 and "Done: 2 epochs;" in more.stdout, more.stderr[-2000:]
  assert f"--warm_start={first}\n" in open(flags_path).read()


def test_a_run_without_its_training_checkpoints_is_not_replaced(prepared_dir, tmp_path):
  run = tmp_path / "pruned"
  train(tiny_config(run, prepared_dir, epochs=2), log=lambda *_: None)
  shutil.rmtree(run / "checkpoints")        # to save space, say
  kept = {name: (run / name).read_bytes() for name in ("model.json",)}
  best = tf.train.latest_checkpoint(str(run / "best"))
  with pytest.raises(RunStateError, match=f"has a best checkpoint \\({best}\\) but no "
                     f"training checkpoint .* --warm_start={best} and another --run_dir"):
    train(tiny_config(run, prepared_dir, epochs=3, latent_dim=6), log=lambda *_: None)
  assert {name: (run / name).read_bytes() for name in kept} == kept
  assert tf.train.latest_checkpoint(str(run / "best")) == best
  # Its best weights start a new run.
  train(tiny_config(tmp_path / "from_best", prepared_dir, epochs=1, warm_start=best),
        log=lambda *_: None)
  # best/ckpt-1 alone is what a kill during the first training save leaves (best/ is
  # saved first): that run starts again.
  shutil.rmtree(tmp_path / "from_best" / "checkpoints")
  assert train(tiny_config(tmp_path / "from_best", prepared_dir, epochs=1),
               log=lambda *_: None)["epoch"] == 1
