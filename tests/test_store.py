"""The on-disk store: the same batches as the in-memory cache, written once, rebuilt when
stale, never half-written."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tfgmvae.data.dataset import DataError, data_errors
from tfgmvae.data.prepare import PrepareConfig, prepare
from tfgmvae.data import store
from tfgmvae.data.store import first_non_finite, note_bytes, open_store
from tfgmvae.train.config import ConfigError
from tfgmvae.train.inputs import available_memory, make_inputs, store_dir_for

from conftest import REPO, write_nsynth


def _quiet(*_):
  pass


@pytest.fixture
def prepared(toy_csv, tmp_path):
  return prepare(PrepareConfig("csv", toy_csv, str(tmp_path / "prep")), log=_quiet)


def _batches(ds, steps):
  return [{k: np.asarray(v) for k, v in b.items()} for b in ds.take(steps).as_numpy_iterator()]


def _assert_same(left, right):
  assert len(left) == len(right)
  for a, b in zip(left, right):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("output", ["mel", "audio"])
def test_store_gives_the_batches_of_the_memory_cache(prepared, tmp_path, output):
  common = dict(batch_size=5, seed=3, latent_dim=4, output=output, log=_quiet)
  memory, steps = make_inputs(prepared, "train", label_fraction=0.5, start_epoch=1,
                              epochs=3, **common)
  disk, disk_steps = make_inputs(prepared, "train", label_fraction=0.5, start_epoch=1,
                                 epochs=3, store_dir=str(tmp_path / "store"), **common)
  assert steps == disk_steps == 5   # 22 training notes in batches of 5
  assert memory.element_spec == disk.element_spec
  expected = _batches(memory, 2 * steps)
  _assert_same(expected, _batches(disk, 2 * steps))
  # The two epochs are shuffled differently, and some notes lost their label.
  assert not np.array_equal(expected[0]["key"], expected[steps]["key"])
  assert 0 < np.concatenate([b["labelled"] for b in expected[:steps]]).sum() < 22
  memory, val_steps = make_inputs(prepared, "validation", **common)
  disk, _ = make_inputs(prepared, "validation", store_dir=str(tmp_path / "store"), **common)
  _assert_same(_batches(memory, val_steps), _batches(disk, val_steps))
  features = np.load(tmp_path / "store" / f"train-{output}" / "features.npy", mmap_mode="r")
  assert features.nbytes == 22 * note_bytes(prepared, output)


def _rewrite(path, keep, repeat=None) -> int:
  """Rewrites a TFRecord file of NSynth notes with those whose key `keep` accepts, then
  the one keyed `repeat` again; returns the number of records written."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
  def key(record):
    return tf.train.Example.FromString(record).features.feature["note_str"] \
        .bytes_list.value[0]
  kept = [r for r in records if keep(key(r))] + [r for r in records if key(r) == repeat]
  with tf.io.TFRecordWriter(path) as w:
    for record in kept:
      w.write(record)
  return len(kept)


def test_nsynth_store_equals_the_streamed_notes(tmp_path):
  path = write_nsynth(str(tmp_path / "nsynth-train.tfrecord"))
  p = prepare(PrepareConfig("nsynth", path, str(tmp_path / "prep")), log=_quiet)
  common = dict(batch_size=4, seed=0, latent_dim=2, epochs=2, log=_quiet)
  memory, steps = make_inputs(p, "train", **common)
  disk, _ = make_inputs(p, "train", store_dir=str(tmp_path / "store"), **common)
  _assert_same(_batches(memory, 2 * steps), _batches(disk, 2 * steps))
  # Records that lost a note since the preparation: the store is not written.
  gone = p.index("validation")[0]["key"].encode()
  assert _rewrite(path, lambda key: key != gone) == 19
  with pytest.raises(DataError, match=r"validation-mel: the NSynth records of the "
                     r"validation split \(.*nsynth-train.tfrecord\) gave 1 note where 2 "
                     r"were prepared \(the data prepared in .*prep no longer matches"):
    open_store(p, "validation", "mel", 1.0, str(tmp_path / "store"), log=_quiet)
  assert sorted(os.listdir(tmp_path / "store")) == ["train-mel"]
  # The in-memory path refuses them as well, at the end of the first pass.
  memory, steps = make_inputs(p, "validation", **common)
  with pytest.raises(DataError, match="gave 1 note where 2 were prepared"):
    with data_errors(p):
      _batches(memory, steps + 1)
  # A lost training note and a repeated one: the count holds, the notes do not.
  train_keys = [r["key"].encode() for r in p.index("train")]
  _rewrite(path, lambda key: key != train_keys[3], repeat=train_keys[0])
  memory, steps = make_inputs(p, "train", **common)
  with pytest.raises(DataError, match=r"the NSynth records of the train split \(.*\) gave "
                     r"18 notes, but not the 18 prepared ones \(some are missing, others "
                     r"repeated\) \(the data prepared in"):
    with data_errors(p):
      _batches(memory, 2 * steps)
  # The records' file cut short, or gone.
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  memory, steps = make_inputs(p, "train", **common)
  with pytest.raises(DataError, match=r"reading the NSynth records \(.*nsynth-train."
                     r"tfrecord\): .*truncated record .*\(the data prepared in"):
    with data_errors(p):
      _batches(memory, steps)
  os.remove(path)
  with pytest.raises(DataError, match=r"nsynth-train.tfrecord: no such file \(the data "
                     "prepared in"):
    make_inputs(p, "train", **common)


def test_store_is_written_once_and_rebuilt_only_when_stale(prepared, tmp_path):
  directory = str(tmp_path / "store")
  messages = []
  store = open_store(prepared, "train", "mel", 1.0, directory, log=messages.append)
  assert len(store) == 22 and store.labels["labelled"].all()
  assert messages and "Writing the train split (22 notes" in messages[0]
  folder = os.path.join(directory, "train-mel")
  stamp = os.stat(os.path.join(folder, "features.npy")).st_mtime_ns
  messages.clear()
  open_store(prepared, "train", "mel", 1.0, directory, log=messages.append)
  assert not messages
  assert os.stat(os.path.join(folder, "features.npy")).st_mtime_ns == stamp
  # Another label fraction changes 'labelled': the store is written again.
  store = open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert "written from other data or settings" in messages[0]
  assert 0 < store.labels["labelled"].sum() < 22
  with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
    assert json.load(f)["label_fraction"] == 0.25
  # Prepared data that changed (any byte of prepared.json or index.csv), or a damaged
  # store, is written again too.
  path = os.path.join(prepared.directory, "prepared.json")
  with open(path, encoding="utf-8") as f:
    record = json.load(f)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=4)
  messages.clear()
  open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert "written from other data or settings" in messages[0]
  os.remove(os.path.join(folder, "labels.npz"))
  messages.clear()
  store = open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert "is damaged" in messages[0] and len(store) == 22
  labels = os.path.join(folder, "labels.npz")   # cut short (its zip directory lost)
  with open(labels, "r+b") as f:
    f.truncate(os.path.getsize(labels) // 2)
  messages.clear()
  store = open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert "is damaged (File is not a zip file)" in messages[0] and len(store) == 22
  np.save(os.path.join(folder, "features.npy"), np.zeros([21, 43, 256], np.float32))
  messages.clear()
  store = open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert "is damaged (21 float32 feature rows" in messages[0]
  assert store.features.shape == (22, 43, 256)
  np.save(os.path.join(folder, "features.npy"), np.zeros([22, 43, 256], np.float64))
  messages.clear()
  store = open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert "is damaged (22 float64 feature rows" in messages[0]
  assert store.features.dtype == np.float32
  with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
    f.write("\x00\x00 not json")
  messages.clear()
  store = open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert messages[0].startswith(f"{folder} is damaged ({folder}/meta.json: ")
  assert "writing it again" in messages[0] and len(store) == 22
  # NaN where the pipeline writes only finite values: found (after a failure) by note.
  assert first_non_finite(directory, "train", "mel") is None
  rows = np.load(os.path.join(folder, "features.npy"), mmap_mode="r+")
  rows[7, 3, 5] = np.nan
  rows.flush()
  del rows
  assert first_non_finite(directory, "train", "mel") == store.labels["key"][7].decode()
  assert first_non_finite(directory, "validation", "mel") is None   # (none written)


def test_a_killed_write_leaves_no_store(prepared, tmp_path):
  directory = str(tmp_path / "store")
  # A process killed (SIGKILL) while it writes the labels, after the features.
  code = f"""
import os, signal, sys
sys.path.insert(0, {REPO!r})
import numpy as np
from tfgmvae.data.prepare import Prepared
from tfgmvae.data import store
np.savez = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
store.open_store(Prepared.load({prepared.directory!r}), "validation", "mel", 1.0,
                 {directory!r}, log=lambda *_: None)
"""
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
  (left,) = os.listdir(directory)
  assert left.startswith("validation-mel.tmp-")   # only the temporary folder
  assert os.path.isfile(os.path.join(directory, left, "features.npy"))
  # The next start removes it and writes the store whole.
  store = open_store(prepared, "validation", "mel", 1.0, directory, log=_quiet)
  assert os.listdir(directory) == ["validation-mel"] and len(store) == 2


def test_the_cache_goes_to_disk_when_memory_would_not_hold_it(prepared, tmp_path):
  need = 24 * note_bytes(prepared, "mel")   # both splits
  messages = []
  assert store_dir_for("auto", prepared, "mel", "D", 2 * need, messages.append) is None
  assert store_dir_for("auto", prepared, "mel", "D", None, messages.append) is None
  assert not messages
  assert store_dir_for("auto", prepared, "mel", "D", 2 * need - 2, messages.append) == "D"
  assert messages == [f"Keeping the 24 notes ({need / 1e9:.2f} GB) on disk in D "
                      f"({(2 * need - 2) / 1e9:.1f} GB of memory available)."]
  assert store_dir_for("disk", prepared, "mel", "D", 100 * need, _quiet) == "D"
  assert store_dir_for("memory", prepared, "mel", "D", need + need // 5, _quiet) is None
  with pytest.raises(ConfigError, match=r"--cache=memory: the 24 notes take .* GB and .* "
                                        r"GB of memory is available; use --cache=disk"):
    store_dir_for("memory", prepared, "mel", "D", need, _quiet)
  # Stores of both splits already written there: auto reads them (a resume then reads
  # no source), whatever the memory; memory and disk keep their meaning.
  directory = str(tmp_path / "kept")
  for split in ("train", "validation"):
    open_store(prepared, split, "mel", 1.0, directory, _quiet)
    assert store_dir_for("auto", prepared, "mel", directory, 100 * need, _quiet) == (
        directory if split == "validation" else None)
  assert store_dir_for("auto", prepared, "audio", directory, 100 * need, _quiet) is None
  assert store_dir_for("memory", prepared, "mel", directory, 100 * need, _quiet) is None


def test_available_memory_is_the_smaller_of_the_machine_and_the_container(tmp_path):
  meminfo = tmp_path / "meminfo"
  meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n")
  v2 = tmp_path / "v2"
  v2.mkdir()
  assert available_memory(str(meminfo), str(v2)) == 20000000 * 1024   # no cgroup files
  (v2 / "memory.max").write_text("max\n")
  assert available_memory(str(meminfo), str(v2)) == 20000000 * 1024   # no limit
  (v2 / "memory.max").write_text("8000000000\n")
  (v2 / "memory.current").write_text("3000000000\n")
  assert available_memory(str(meminfo), str(v2)) == 5_000_000_000     # the container's
  v1 = tmp_path / "v1"
  (v1 / "memory").mkdir(parents=True)
  (v1 / "memory" / "memory.limit_in_bytes").write_text("30000000000\n")
  (v1 / "memory" / "memory.usage_in_bytes").write_text("1000000000\n")
  assert available_memory(str(meminfo), str(v1)) == 20000000 * 1024   # the machine's
  assert available_memory(str(tmp_path / "none"), str(v2)) == 5_000_000_000


def test_read_rows_equals_indexing_the_array(tmp_path, monkeypatch):
  path = str(tmp_path / "features.npy")
  array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(50, 3, 5))
  array[:] = np.random.default_rng(0).normal(size=array.shape)
  array.flush()
  features = np.load(path, mmap_mode="r")
  for index in ([], [7], [49, 0, 3, 3, 17], list(range(50))[::-1] * 2):
    got = store.read_rows(features, np.array(index, np.int64))
    np.testing.assert_array_equal(got, np.asarray(features)[index])
    assert got.shape == (len(index), 3, 5) and got.dtype == np.float32
  with pytest.raises(IndexError, match=r"features.npy: rows \[50\] outside \[0, 50\)"):
    store.read_rows(features, np.array([1, 50]))
  # A file cut short after it was opened (the load checks its size) is named.
  with open(path, "r+b") as f:
    f.truncate(features.offset + 40 * 15 * 4 + 8)
  with pytest.raises(OSError, match="ends inside row 40"):
    store.read_rows(features, np.array([2, 40]))
  monkeypatch.delattr(store.os, "preadv")   # elsewhere: the memory map
  np.testing.assert_array_equal(store.read_rows(features, np.array([1, 2])),
                                np.asarray(features)[[1, 2]])


def test_labels_follow_this_versions_share_and_n0_unlabels_validation(prepared, tmp_path):
  """A training store labelling other notes than the current rule (an earlier version
  labelled none of an instrument when round(N * count) was 0) is written again; the
  validation store keeps every label and is unlabelled when opened at N = 0, so a run's
  store written with labels serves it without its sources."""
  directory = str(tmp_path / "store")
  train = open_store(prepared, "train", "mel", 0.01, directory, log=_quiet)
  assert list(np.bincount(train.labels["instrument"][train.labels["labelled"]])) == [1, 1]
  folder = os.path.join(directory, "train-mel")
  labels = dict(np.load(os.path.join(folder, "labels.npz")))
  labels["labelled"][:] = False   # what the earlier rule wrote at N = 0.01
  np.savez(os.path.join(folder, "labels.npz"), **labels)
  messages = []
  train = open_store(prepared, "train", "mel", 0.01, directory, log=messages.append)
  assert "labels other notes than this tfgmvae's share of 0.01" in messages[0]
  assert train.labels["labelled"].sum() == 2
  labelled = open_store(prepared, "validation", "mel", 1.0, directory, log=_quiet)
  stamp = os.stat(os.path.join(directory, "validation-mel", "features.npy")).st_mtime_ns
  messages.clear()
  unlabelled = open_store(prepared, "validation", "mel", 0.0, directory,
                          log=messages.append)
  assert not messages    # the same store, not written again
  assert os.stat(os.path.join(directory, "validation-mel",
                              "features.npy")).st_mtime_ns == stamp
  assert labelled.labels["labelled"].all() and not unlabelled.labels["labelled"].any()
  np.testing.assert_array_equal(labelled.labels["key"], unlabelled.labels["key"])
