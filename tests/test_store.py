"""The on-disk store: the same batches as the in-memory cache, written once, rebuilt when
stale, never half-written."""

import json
import os

import numpy as np
import pytest

from tfgmvae.data.prepare import PrepareConfig, prepare
from tfgmvae.data.store import note_bytes, open_store
from tfgmvae.train.config import ConfigError
from tfgmvae.train.inputs import make_inputs, store_dir_for

from conftest import write_nsynth


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


def test_nsynth_store_equals_the_streamed_notes(tmp_path):
  path = write_nsynth(str(tmp_path / "nsynth-train.tfrecord"))
  p = prepare(PrepareConfig("nsynth", path, str(tmp_path / "prep")), log=_quiet)
  common = dict(batch_size=4, seed=0, latent_dim=2, epochs=2, log=_quiet)
  memory, steps = make_inputs(p, "train", **common)
  disk, _ = make_inputs(p, "train", store_dir=str(tmp_path / "store"), **common)
  _assert_same(_batches(memory, 2 * steps), _batches(disk, 2 * steps))


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
  np.save(os.path.join(folder, "features.npy"), np.zeros([21, 43, 256], np.float32))
  messages.clear()
  store = open_store(prepared, "train", "mel", 0.25, directory, log=messages.append)
  assert "is damaged (21 float32 feature rows" in messages[0]
  assert store.features.shape == (22, 43, 256)


def test_a_killed_write_leaves_no_store(prepared, tmp_path, monkeypatch):
  directory = str(tmp_path / "store")

  def killed(*_, **__):
    raise KeyboardInterrupt   # stands for a kill in the middle of the write
  monkeypatch.setattr(np, "savez", killed)
  with pytest.raises(KeyboardInterrupt):
    open_store(prepared, "validation", "mel", 1.0, directory, log=_quiet)
  assert os.listdir(directory) == []
  monkeypatch.undo()
  # A leftover of a process that died before it could clean up is removed, and the store
  # is then written whole.
  os.makedirs(os.path.join(directory, "validation-mel.tmp-99999"))
  store = open_store(prepared, "validation", "mel", 1.0, directory, log=_quiet)
  assert os.listdir(directory) == ["validation-mel"] and len(store) == 2


def test_the_cache_goes_to_disk_when_memory_would_not_hold_it(prepared):
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
