"""Training under tf.distribute strategies gives the one-device result; mixed precision.

Every training run is a fresh Python process: logical CPU devices and TF_CONFIG must be
set before TensorFlow starts. All runs use the same tiny model and a prepared toy set of
36 training and 4 validation notes, so that a global batch of 12 divides the training
split: one device and two replicas then see exactly the same 3 full batches per epoch
(with several replicas a partial last batch would be dropped; here there is none), the
same noise and the same labels, and `label_fraction=0.5` makes the labelled notes differ
between the replicas' halves of a batch (a replica's own instrument mean then differs
from the global one).

What may differ between the runs, and the tolerances (measured on a 2-core CPU):

* Weights: float summation order only. Measured max |diff| <= 4e-7 after 6 Adam steps;
  checked with rtol=1e-4, atol=1e-5. (No layer feeding a BatchNormalization has a bias:
  such a bias has an exact gradient of 0, so Adam would turn its rounding noise into
  steps of ~learning rate in arbitrary directions; the networks leave it out.)
* Training and validation losses: measured relative difference < 1e-6; checked with
  rtol=1e-5 (training) and 1e-4 (validation, through BN's moving statistics).
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, toy_specs, write_notes

EPOCHS, BATCH, LR = 2, 12, 1e-4
TRAIN_NOTES = 36
STEPS = EPOCHS * TRAIN_NOTES // BATCH
TINY = dict(filters=8, hidden=16, latent_dim=4, batch_size=BATCH, epochs=EPOCHS,
            learning_rate=LR, label_fraction=0.5, media_every=0, embeddings_every=0,
            verbose=0)
TIMEOUT = 240   # seconds for any group of training processes

# Runs tfgmvae.train.loop.train in a fresh process and records what the tests compare:
# OUT.json (history, per-step logs, optimizer steps, replicas, spreads, dtypes) and
# OUT.npz (final weights by path).
WORKER = r'''
import json, os, sys
args = json.loads(sys.argv[1])
if args.get("tf_config"):
  os.environ["TF_CONFIG"] = json.dumps(args["tf_config"])
sys.path.insert(0, args["repo"])
import keras
import numpy as np
import tensorflow as tf
from tfgmvae.data.prepare import Prepared
from tfgmvae.train import inputs, loop
from tfgmvae.train.config import ConfigError, TrainConfig

record = {"batch_logs": [], "pid": os.getpid()}


def copies(variable):
  value = getattr(variable, "value", variable)
  return [c.numpy() for c in getattr(value, "values", None) or (value,)]


def spread(variables):
  """Largest difference between a variable's replica copies (0.0 when in sync)."""
  return max([0.0] + [float(np.max(np.abs(c - copies(v)[0]))) for v in variables
                      for c in copies(v)])


def pre_bn(model):
  """Paths of any biases feeding a BatchNormalization (none expected)."""
  paths = []
  for layer in model._flatten_layers():
    children = list(layer._flatten_layers(include_self=False, recursive=False))
    for before, bn in zip(children, children[1:]):
      if (isinstance(bn, keras.layers.BatchNormalization)
          and getattr(before, "bias", None) is not None):
        paths += [before.bias.path, bn.moving_mean.path]
  return paths


def name(dtype):
  return tf.as_dtype(dtype).name


def dtypes(model, config):
  prepared = Prepared.load(config.prepared_dir)
  ds, _ = inputs.make_inputs(prepared, "validation", 4, 0, config.latent_dim)
  batch = next(iter(ds))
  post = model.encode(batch["mel"])
  terms, _ = model.compute_terms(batch)
  return {
      "priors": [name(model.pitch_prior.means.dtype), name(model.timbre_prior.means.dtype)],
      "heads": sorted({name(t.dtype) for t in post.values()}),
      "decoder": name(model.decode(post["z_timbre_mean"], post["z_pitch_mean"]).dtype),
      "terms": sorted({name(t.dtype) for t in terms.values()}),
      "trackers": sorted({name(v.dtype) for t in model.metrics for v in t.variables}),
      "compute": sorted({l.dtype_policy.compute_dtype for l in model._flatten_layers()}),
      "variables": sorted({name(v.dtype) for v in model.weights}),
  }


class Record(keras.callbacks.Callback):
  def on_train_batch_end(self, batch, logs=None):
    record["batch_logs"].append({k: float(v) for k, v in (logs or {}).items()})
    record["metric_spread"] = max(record.get("metric_spread", 0.0), spread(
        [v for t in self.model.metrics for v in t.variables]))

  def on_train_end(self, logs=None):
    m = self.model
    record["iterations"] = int(m.optimizer.iterations.numpy())
    record["replicas"] = m.distribute_strategy.num_replicas_in_sync
    record["pre_bn"] = pre_bn(m)
    record["weight_spread"] = spread(m.weights)
    if args.get("dtypes"):
      record["dtypes"] = dtypes(m, config)
    np.savez(args["out"] + ".npz", **{w.path: w.numpy() for w in m.weights})


config = TrainConfig(**args["config"])
try:
  result = loop.train(config, callbacks=[Record()], log=lambda *a: print(*a, file=sys.stderr))
  record["history"] = result["history"]
  record["role"] = [result["chief"], result["task"]]
except ConfigError as e:
  record["config_error"] = str(e)
  record["run_dir_exists"] = os.path.exists(config.run_dir)
with open(args["out"] + ".json", "w") as f:
  json.dump(record, f)
'''


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
  from tfgmvae.data.prepare import PrepareConfig, prepare  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("distributed_data")
  csv_path = write_notes(str(root / "notes"), toy_specs(pitches=range(60, 70)))
  prepared = prepare(PrepareConfig("csv", csv_path, str(root / "prepared")),
                     log=lambda *_: None)
  counts = {split: sum(c.values()) for split, c in prepared.counts.items()}
  assert counts == {"train": TRAIN_NOTES, "validation": 4}   # full batches everywhere
  return prepared.directory


def _start(tmp, name, config, tf_config=None, env=None, **extra):
  """Starts a training process; its output goes to tmp/name.log (no pipe to fill)."""
  script = os.path.join(tmp, "worker.py")
  if not os.path.exists(script):
    with open(script, "w") as f:
      f.write(WORKER)
  out = os.path.join(tmp, name)
  args = dict(repo=REPO, config=config, out=out, tf_config=tf_config, **extra)
  log = open(out + ".log", "w")
  proc = subprocess.Popen(
      [sys.executable, script, json.dumps(args)], stdout=log, stderr=subprocess.STDOUT,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))
  log.close()
  proc.out = out
  return proc


def _tail(proc, n=4000):
  with open(proc.out + ".log", errors="replace") as f:
    return f.read()[-n:]


def _finish(*procs, timeout=TIMEOUT):
  """Waits for all; on a failure or the timeout, kills the rest and fails with logs."""
  deadline = time.monotonic() + timeout
  try:
    while any(p.poll() is None for p in procs):
      failed = [p for p in procs if p.poll() not in (None, 0)]
      if failed:
        pytest.fail(f"{os.path.basename(failed[0].out)} failed (exit "
                    f"{failed[0].returncode}):\n{_tail(failed[0])}")
      if time.monotonic() > deadline:
        pytest.fail(f"training processes still running after {timeout} s:\n"
                    + "\n".join(_tail(p, 1500) for p in procs))
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p in procs:
    assert p.returncode == 0, f"{os.path.basename(p.out)}:\n{_tail(p)}"
  results = []
  for p in procs:
    with open(p.out + ".json") as f:
      record = json.load(f)
    record["weights"] = dict(np.load(p.out + ".npz")) if os.path.exists(
        p.out + ".npz") else {}
    results.append(record)
  return results


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  try:
    for s in socks:
      s.bind(("localhost", 0))
    return [s.getsockname()[1] for s in socks]
  finally:
    for s in socks:
      s.close()


@pytest.fixture(scope="module")
def one_device_and_mirrored(prepared_dir, tmp_path_factory):
  """The one-device reference and a MirroredStrategy run over 2 logical CPUs, together."""
  tmp = str(tmp_path_factory.mktemp("runs"))
  base = dict(TINY, prepared_dir=prepared_dir)
  return _finish(
      _start(tmp, "one_device", dict(base, run_dir=os.path.join(tmp, "one_device"))),
      _start(tmp, "mirrored", dict(base, run_dir=os.path.join(tmp, "mirrored"),
                                   strategy="mirrored", cpu_devices=2)))


def _assert_same_training(ref, other):
  """`other` (several replicas) trained exactly like `ref` (one device), see the top."""
  assert ref["replicas"] == 1 and other["replicas"] == 2
  assert ref["iterations"] == other["iterations"] == STEPS
  assert len(ref["batch_logs"]) == len(other["batch_logs"]) == STEPS
  # Every replica holds the same weights and the same (global) metric totals.
  assert other["weight_spread"] == 0.0
  assert other["metric_spread"] == 0.0
  a, b = ref["weights"], other["weights"]
  assert sorted(a) == sorted(b) and len(a) > 40
  assert not ref["pre_bn"]          # no bias feeds a BatchNormalization
  for path in a:
    np.testing.assert_allclose(b[path], a[path], rtol=1e-4, atol=1e-5, err_msg=path)
  # Keras logs the global means: per epoch (from the trackers) and per step (reduced
  # over the replicas' step results).
  assert sorted(ref["history"]) == sorted(other["history"])
  for name, values in ref["history"].items():
    assert len(values) == EPOCHS
    np.testing.assert_allclose(other["history"][name], values, err_msg=name,
                               rtol=1e-4 if name.startswith("val_") else 1e-5)
  for step, (x, y) in enumerate(zip(ref["batch_logs"], other["batch_logs"])):
    assert sorted(x) == sorted(y)
    for name in x:
      assert y[name] == pytest.approx(x[name], rel=1e-5), (step, name)


def test_mirrored_two_cpus_matches_one_device(one_device_and_mirrored):
  ref, mirrored = one_device_and_mirrored
  _assert_same_training(ref, mirrored)
  assert ref["history"]["instrument_ce"][0] > 0.0   # labelled notes were seen


def test_multi_worker_two_processes_match_one_device(one_device_and_mirrored, prepared_dir,
                                                      tmp_path):
  ref = one_device_and_mirrored[0]
  run_dir = str(tmp_path / "run")
  worker_tmp = tmp_path / "worker_tmp"
  worker_tmp.mkdir()
  cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
  # The notes on disk (the one-device reference keeps them in memory): every worker
  # reads its batches from its own store.
  config = dict(TINY, prepared_dir=prepared_dir, run_dir=run_dir, strategy="multi_worker",
                cache="disk")
  chief, other = _finish(*[
      _start(str(tmp_path), f"worker{i}", config,
             tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}},
             env={"TMPDIR": str(worker_tmp)})
      for i in range(2)])
  _assert_same_training(ref, chief)
  # Both workers hold the same model and logged the same values.
  assert other["iterations"] == chief["iterations"]
  assert (chief["role"], other["role"]) == ([True, "worker0"], [False, "worker1"])
  for path, value in chief["weights"].items():
    np.testing.assert_allclose(other["weights"][path], value, rtol=0, atol=1e-6,
                               err_msg=path)
  for name, values in chief["history"].items():
    np.testing.assert_allclose(other["history"][name], values, rtol=1e-6, err_msg=name)
  # Only the chief wrote into the run directory, but for the other worker's store in
  # RUN_DIR/cache/worker1; that worker saved its checkpoints into a temporary folder
  # (under its TMPDIR) and deleted it.
  cache = os.path.join(run_dir, "cache")
  assert sorted(os.listdir(cache)) == ["train-mel", "validation-mel", "worker1"]
  assert sorted(os.listdir(os.path.join(cache, "worker1"))) == ["train-mel",
                                                                "validation-mel"]
  stamp = os.stat(os.path.join(cache, "worker1", "train-mel", "features.npy")).st_mtime_ns
  assert os.path.isfile(os.path.join(run_dir, "model.json"))
  assert os.path.isfile(os.path.join(run_dir, "checkpoints", f"ckpt-{EPOCHS}.index"))
  assert os.path.isfile(os.path.join(run_dir, "best", "checkpoint"))
  events = [name for _, _, names in os.walk(os.path.join(run_dir, "summaries"))
            for name in names if name.startswith("events.out.tfevents")]
  assert len(events) == 2, events   # train and validation, by the chief only
  assert all(f".{chief['pid']}." in name for name in events), (events, chief["pid"])
  assert not os.listdir(worker_tmp)
  # The chief's last checkpoint holds its final weights (each variable once, under the
  # model or under the optimizer that tracks it).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
  reader = tf.train.load_checkpoint(path)
  saved = [reader.get_tensor(name) for name, _ in tf.train.list_variables(path)
           if "OPTIMIZER_SLOT" not in name and name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
  for name, value in chief["weights"].items():
    assert any(s.shape == value.shape and np.array_equal(s, value) for s in saved), name
  # Started again for one more epoch, both workers resume from the chief's checkpoint.
  cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
  chief2, other2 = _finish(*[
      _start(str(tmp_path), f"resumed{i}", dict(config, epochs=EPOCHS + 1),
             tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}},
             env={"TMPDIR": str(worker_tmp)})
      for i in range(2)])
  for i, (run, log) in enumerate(((chief2, "resumed0.log"), (other2, "resumed1.log"))):
    with open(tmp_path / log) as f:
      said = f.read()
    assert f"from {path} (epoch {EPOCHS})" in said
    assert (f"Joining the cluster of TF_CONFIG as worker {i}; it waits until all 2 of its "
            "tasks have started (stop a waiting task with kill -9") in said
    assert run["iterations"] == STEPS + TRAIN_NOTES // BATCH
  assert list(other2["history"]["loss"]) == list(chief2["history"]["loss"])
  for name, value in chief2["weights"].items():   # one model on both, trained on
    np.testing.assert_allclose(other2["weights"][name], value, rtol=0, atol=1e-6)
  assert any(not np.array_equal(chief["weights"][n], v) for n, v in chief2["weights"].items())
  assert os.path.isfile(os.path.join(run_dir, "checkpoints", f"ckpt-{EPOCHS + 1}.index"))
  assert not os.listdir(worker_tmp)
  # The resumed workers read the stores they wrote before.
  assert os.stat(os.path.join(cache, "worker1", "train-mel",
                              "features.npy")).st_mtime_ns == stamp


def test_mixed_bfloat16_trains_with_float32_priors_and_losses(prepared_dir, tmp_path):
  config = dict(TINY, prepared_dir=prepared_dir, run_dir=str(tmp_path / "run"), epochs=1,
                precision="mixed_bfloat16", strategy="mirrored", cpu_devices=2)
  (run,) = _finish(_start(str(tmp_path), "bf16", config, dtypes=True))
  assert run["iterations"] == TRAIN_NOTES // BATCH
  for name, values in run["history"].items():
    assert all(isinstance(v, float) and np.isfinite(v) for v in values), name
  assert run["history"]["loss"][0] > 0.0
  d = run["dtypes"]
  assert "bfloat16" in d["compute"]                     # the layers compute in bfloat16
  assert d["variables"] == ["float32"]                  # ... on float32 weights
  assert d["priors"] == ["float32", "float32"]
  assert d["heads"] == ["float32"] and d["decoder"] == "float32"
  assert d["terms"] == ["float32"] and d["trackers"] == ["float32"]


def test_float16_without_gpu_and_unprepared_multi_worker_are_rejected(prepared_dir,
                                                                      tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.config.list_physical_devices("GPU"):
    pytest.skip("this machine has a GPU: mixed_float16 is allowed")
  float16 = dict(TINY, prepared_dir=prepared_dir, run_dir=str(tmp_path / "f16"),
                 precision="mixed_float16")
  cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
  unprepared = dict(TINY, dataset="csv", data_path=str(tmp_path / "labels.csv"),
                    run_dir=str(tmp_path / "mw"), strategy="multi_worker")
  (open(tmp_path / "labels.csv", "w")).write("path,instrument,pitch\n")
  f16, mw = _finish(
      _start(str(tmp_path), "f16", float16),
      _start(str(tmp_path), "mw", unprepared,
             tf_config={"cluster": cluster, "task": {"type": "worker", "index": 0}}),
      timeout=120)
  assert "mixed_float16" in f16["config_error"] and "GPU" in f16["config_error"]
  assert "prepared" in mw["config_error"]
  assert not f16["run_dir_exists"] and not mw["run_dir_exists"]   # before any work
  assert "history" not in f16 and "history" not in mw
