"""Sources and preparation: CSV, TinySOL, NSynth, the split, bad input, no overwrite."""

import collections
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import tensorflow as tf

from tfgmvae import audio
from tfgmvae.data import paths
from tfgmvae.data.prepare import (Prepared, PrepareConfig, PrepareError, other_source,
                                  prepare, source_flags, stratified_split)
from tfgmvae.data.dataset import DataError, data_errors, note_dataset
from tfgmvae.data.paths import UnreachableError
from tfgmvae.data.prepare import _scan  # pylint: disable=protected-access
from tfgmvae.data.sources import (FileSource, Note, SourceError, open_source,
                                  read_csv_source)

from conftest import tone, toy_specs, write_notes, write_nsynth, write_tinysol


def _prepare(data_path, out_dir, dataset="csv", **kw):
  return prepare(PrepareConfig(dataset, str(data_path), str(out_dir), **kw),
                 log=lambda *_: None)


def test_prepare_writes_split_vocab_stats(toy_csv, tmp_path):
  p = _prepare(toy_csv, tmp_path / "prep")
  assert p.instruments == ("sine", "square")
  assert p.pitches == tuple(range(60, 66))
  assert p.counts == {"train": {"sine": 11, "square": 11},
                      "validation": {"sine": 1, "square": 1}}
  rows = p.index()
  assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
  # Normalisation constants are the training split's own log-mel extremes.
  train = [audio.log_mel(audio.load_segment(r["path"])).numpy()
           for r in rows if r["split"] == "train"]
  assert p.log_mel_min == pytest.approx(min(t.min() for t in train), abs=1e-4)
  assert p.log_mel_max == pytest.approx(max(t.max() for t in train), abs=1e-4)
  meta = json.load(open(tmp_path / "prep" / "prepared.json"))
  assert meta["audio"]["hop_length"] == 256 and meta["num_skipped"] == 0
  # Readable as any folder made here would be (e.g. by workers running as other users).
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(tmp_path / "prep").st_mode & 0o777 == 0o777 & ~umask


def test_pitch_ranges_span_each_instruments_training_notes(tmp_path):
  specs = [s for s in toy_specs() if not (s[1] == "square" and s[2] < 62)]
  p = _prepare(write_notes(str(tmp_path / "notes"), specs), tmp_path / "prep")
  assert p.pitch_ranges() == {"sine": [60, 65], "square": [62, 65]}
  # Validation notes do not count: with square's 65s moved there, its range ends at 64.
  path = tmp_path / "prep" / "index.csv"
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for r in rows:
    if r["instrument"] == "square" and r["pitch"] == "65":
      r["split"] = "validation"
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  assert p.pitch_ranges() == {"sine": [60, 65], "square": [62, 64]}


def test_split_is_seeded_and_stratified(tmp_path):
  specs = toy_specs(instruments=("a", "b", "c"), pitches=range(50, 70),
                    velocities=(0.3,), rates=(22050,))
  csv_path = write_notes(str(tmp_path / "d"), specs)
  notes = list(read_csv_source(csv_path).notes)
  s1, _ = stratified_split(notes, 0.1, seed=1)
  s2, _ = stratified_split(notes, 0.1, seed=1)
  s3, _ = stratified_split(notes, 0.1, seed=2)
  assert s1 == s2 and s1 != s3
  per = collections.Counter((n.instrument, s1[n.key]) for n in notes)
  for inst in "abc":
    assert per[(inst, "validation")] == 2 and per[(inst, "train")] == 18


def test_split_keeps_every_validation_pitch_in_training():
  # Pitch 90 has one note only: it must stay in training whatever the seed.
  notes = [Note(f"{i}", "", "x", 60 + i % 3) for i in range(30)] + [Note("lone", "", "x", 90)]
  for seed in range(20):
    split, problems = stratified_split(notes, 0.5, seed)
    assert not problems and split["lone"] == "train"
    train_pitches = {n.pitch for n in notes if split[n.key] == "train"}
    assert {n.pitch for n in notes if split[n.key] == "validation"} <= train_pitches



def test_split_does_not_count_a_left_out_single_note_as_training():
  # Ob's one note is left out (a problem); Vc's 90 must then stay in training.
  notes = [Note("vc60", "", "Vc", 60), Note("vc90", "", "Vc", 90), Note("ob90", "", "Ob", 90),
           Note("fl62a", "", "Fl", 62), Note("fl62b", "", "Fl", 62)]
  for seed in range(20):
    split, problems = stratified_split(notes, 0.5, seed)
    assert [p.key for p in problems] == ["ob90"] and "ob90" not in split
    assert split["vc90"] == "train"


def test_a_name_in_another_unicode_normalisation_finds_its_file(tmp_path):
  # macOS names files in NFD; a CSV typed elsewhere is NFC. Same name, other bytes.
  import unicodedata  # pylint: disable=g-import-not-at-top
  on_disk = unicodedata.normalize("NFD", "Vc_é.wav")
  soundfile.write(str(tmp_path / on_disk), tone(60, 22050, 0.6), 22050)
  (tmp_path / "labels.csv").write_text("path,instrument,pitch\n"
                                       f"{unicodedata.normalize('NFC', 'Vc_é.wav')},Vc,60\n",
                                       encoding="utf-8")
  source = open_source("csv", str(tmp_path))
  assert not source.problems
  assert [n.path for n in source.notes] == [str(tmp_path / on_disk)]


def test_label_ranks_give_per_instrument_quotas(toy_csv, tmp_path):
  p = _prepare(toy_csv, tmp_path / "prep")
  assert p.labelled_quota(0.25) == {"sine": 3, "square": 3}
  assert p.labelled_quota(0.0) == {"sine": 0, "square": 0}
  # Any N > 0 labels at least one note of each instrument (round(0.01 * 11) is 0).
  assert p.labelled_quota(0.01) == {"sine": 1, "square": 1}
  ranks = collections.defaultdict(list)
  for r in p.index("train"):
    ranks[r["instrument"]].append(r["label_rank"])
  assert all(sorted(v) == list(range(11)) for v in ranks.values())
  assert all(r["label_rank"] == -1 for r in p.index("validation"))


def test_out_dir_is_never_overwritten(toy_csv, tmp_path):
  out = tmp_path / "prep"
  _prepare(toy_csv, out)
  before = (out / "prepared.json").read_bytes()
  with pytest.raises(PrepareError, match="never overwritten"):
    _prepare(toy_csv, out)
  assert (out / "prepared.json").read_bytes() == before


def test_changed_index_is_detected(toy_csv, tmp_path):
  _prepare(toy_csv, tmp_path / "prep")
  with open(tmp_path / "prep" / "index.csv", "a") as f:
    f.write("extra,row\n")
  with pytest.raises(PrepareError, match="changed"):
    Prepared.load(str(tmp_path / "prep"))


def _bad_folder(tmp_path):
  specs = toy_specs(velocities=(0.3,), rates=(22050,))
  folder = tmp_path / "bad"
  csv_path = write_notes(str(folder), specs + [
      ("audio/silent.wav", "sine", 61, np.zeros(22050, np.float32), 22050),
      ("audio/nan.wav", "sine", 62, np.full(22050, np.nan, np.float32), 22050, "FLOAT"),
  ])
  (folder / "audio" / "empty.wav").write_bytes(b"")
  (folder / "audio" / "text.wav").write_text("not audio")
  whole = (folder / "audio" / "sine_60_0.3.wav").read_bytes()
  (folder / "audio" / "cut.wav").write_bytes(whole[:len(whole) // 4])   # interrupted copy
  with open(csv_path, "a") as f:
    f.write("audio/empty.wav,sine,60\n")
    f.write("audio/cut.wav,sine,60\n")
    f.write("audio/text.wav,sine,60\n")
    f.write("audio/missing.wav,sine,60\n")
    f.write("audio/sine_60_0.3.wav,sine,60\n")      # duplicate
    f.write("audio/sine_61_0.3.wav,sine,H4\n")      # unknown note name (and duplicate)
  return csv_path


def test_bad_notes_are_all_listed_with_their_file_or_row(tmp_path):
  csv_path = _bad_folder(tmp_path)
  with pytest.raises(PrepareError) as info:
    _prepare(csv_path, tmp_path / "prep")
  message = str(info.value)
  for needle in ("silent.wav: is silent", "nan.wav: holds", "empty.wav: the file is empty",
                 "text.wav: cannot be decoded", "cut.wav: is truncated", "missing.wav: audio file",
                 "duplicate of row", "'H4' is not a note name", "--on_bad_file=skip"):
    assert needle in message, needle
  # Every note is named by its CSV row, decoding problems too, in the CSV's order.
  listed = [l for l in message.splitlines() if l.startswith("  - ")]
  assert [l.split(" row ")[1].split(" ")[0] for l in listed] == [
      str(r) for r in range(13, 21)]
  assert all(l.startswith(f"  - {csv_path} row ") for l in listed)
  assert "(a relative path is read from " + str(tmp_path / "bad") + ")" in message
  assert not (tmp_path / "prep").exists()


def test_the_summary_counts_instruments_and_names_case_variants(tmp_path):
  specs = toy_specs(velocities=(0.3,), rates=(22050,))
  specs += [(f"audio/Sine_{p}.wav", "Sine", p, tone(p, 22050, 0.6), 22050) for p in (60, 62)]
  messages = []
  p = prepare(PrepareConfig("csv", write_notes(str(tmp_path / "d"), specs),
                            str(tmp_path / "prep")), log=messages.append)
  totals = {k: p.counts["train"].get(k, 0) + p.counts["validation"].get(k, 0)
            for k in p.instruments}
  assert totals["Sine"] == 2 and len(totals) >= 3
  assert ("Notes per instrument: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
          in messages)
  assert ("Note: 'Sine', 'sine' differ only in case, so they are different instruments; "
          "if they are one, fix the labels and prepare again.") in messages


def test_a_note_listed_twice_with_other_labels_says_so(tmp_path):
  (tmp_path / "labels.csv").write_text("path,instrument,pitch\na.wav,flute,60\n"
                                       "a.wav,reed,C4\nb.wav,reed,62\nb.wav,reed,D4\n")
  problems = open_source("csv", str(tmp_path)).problems
  assert f"{tmp_path}/labels.csv row 2 (line 3): a.wav: duplicate of row 1 with other " \
      "labels (there flute 60, here reed 60); expected each note once" in \
      [str(p) for p in problems]
  assert f"{tmp_path}/labels.csv row 4 (line 5): b.wav: duplicate of row 3; expected " \
      "each note once" in [str(p) for p in problems]


def test_a_note_reached_through_a_link_is_a_duplicate_and_lines_count_blanks(tmp_path):
  soundfile.write(str(tmp_path / "a.wav"), tone(60, 22050, 0.6), 22050)
  os.symlink(".", tmp_path / "link")
  os.link(tmp_path / "a.wav", tmp_path / "hard.wav")
  (tmp_path / "labels.csv").write_text("path,instrument,pitch\na.wav,flute,60\n\n"
                                       "link/a.wav,flute,60\n\nhard.wav,flute,60\n")
  problems = [str(p) for p in open_source("csv", str(tmp_path)).problems]
  assert problems == [
      f"{tmp_path}/labels.csv row 2 (line 4): link/a.wav: duplicate of row 1; expected "
      "each note once",
      f"{tmp_path}/labels.csv row 3 (line 6): hard.wav: duplicate of row 1; expected "
      "each note once"]


def test_csv_quirks_of_spreadsheets_and_hand_edits(tmp_path):
  folder = tmp_path / "d"
  csv_path = write_notes(str(folder), toy_specs())
  lines = open(csv_path).read().splitlines()
  # A trailing comma on every row (an empty extra field) is harmless.
  with open(csv_path, "w") as f:
    f.write("\n".join([lines[0]] + [l + "," for l in lines[1:]]) + "\n")
  assert len(open_source("csv", csv_path).notes) == len(lines) - 1
  # A value with an unquoted comma shifts the row: named, not a crash.
  with open(csv_path, "w") as f:
    f.write("\n".join(lines + ["audio/sine_60_0.2.wav,sine,60,forte"]) + "\n")
  problems = [str(p) for p in open_source("csv", csv_path).problems]
  assert problems == [f"{csv_path} row {len(lines)} (line {len(lines) + 1}): has 4 fields "
                      "but the header has 3 columns; expected one value per column (quote "
                      "a value that holds a comma)"]
  # The same file written two ways is one note listed twice.
  with open(csv_path, "w") as f:
    f.write("\n".join(lines + ["./audio/sine_60_0.2.wav,sine,60"]) + "\n")
  problems = [str(p) for p in open_source("csv", csv_path).problems]
  assert problems == [f"{csv_path} row {len(lines)} (line {len(lines) + 1}): "
                      "./audio/sine_60_0.2.wav: duplicate of row "
                      f"{next(i for i, l in enumerate(lines) if l.startswith('audio/sine_60_0.2'))}"
                      "; expected each note once"]
  # Pitches that are not numbers a MIDI note can have.
  with open(csv_path, "w") as f:
    f.write("\n".join(lines[:-2] + [lines[-2].rsplit(",", 1)[0] + ",inf",
                                    lines[-1].rsplit(",", 1)[0] + ",nan"]) + "\n")
  problems = [str(p) for p in open_source("csv", csv_path).problems]
  assert len(problems) == 2 and all("is not a whole MIDI number (expected 0..127" in p
                                    for p in problems)
  # A spreadsheet's Windows-1252 export: the file, line and byte, and what to do.
  with open(csv_path, "wb") as f:
    f.write(("path,instrument,pitch,comment\n" + lines[1] + ",ok\n" + lines[2]
             + ",crescendo très doux\n").encode("cp1252"))
  with pytest.raises(SourceError) as info:
    open_source("csv", csv_path)
  assert str(info.value).startswith(
      f"{csv_path}: line 3 is not UTF-8 text (byte 0xe8 at offset ")
  assert "expected a UTF-8 file" in str(info.value)
  data = b"\xef\xbb\xbfpath,instrument,pitch\ncaf\xe9.wav,sine,60\n"   # a BOM first
  with open(csv_path, "wb") as f:
    f.write(data)
  at = data.index(b"\xe9")
  with pytest.raises(SourceError, match=f"line 2 is not UTF-8 text \\(byte 0xe9 at "
                     f"offset {at}\\)"):
    open_source("csv", csv_path)


def test_a_tinysol_note_missing_is_that_notes_problem(tmp_path):
  write_tinysol(tmp_path)
  first = open(tmp_path / "TinySOL_metadata.csv").read().splitlines()[1].split(",")[0]
  os.remove(tmp_path / "TinySOL" / first)
  with pytest.raises(PrepareError, match=f"{first}: audio file .* does not exist"):
    _prepare(tmp_path, tmp_path / "prep", dataset="tinysol")
  p = _prepare(tmp_path, tmp_path / "prep", dataset="tinysol", on_bad_file="skip")
  assert len(p.index()) == 11
  with open(tmp_path / "prep" / "skipped.csv") as f:
    assert [r["key"] for r in csv.DictReader(f)] == [first]
  for f in (tmp_path / "TinySOL").rglob("*.wav"):
    os.remove(f)
  with pytest.raises(SourceError, match="cannot find TinySOL's audio \\(none of the "
                     "metadata's first 12 files"):
    open_source("tinysol", str(tmp_path))


def test_notes_without_a_repeated_pitch_leave_no_validation_split(tmp_path):
  specs = [(f"audio/fl_{p}.wav", "fl", p, tone(p, 22050, 0.6), 22050) for p in range(72, 78)]
  specs += [(f"audio/vc_{p}.wav", "vc", p, tone(p, 22050, 0.6), 22050) for p in range(48, 54)]
  with pytest.raises(PrepareError) as info:
    _prepare(write_notes(str(tmp_path / "d"), specs), tmp_path / "prep")
  assert "no note can go to the validation split" in str(info.value)
  assert "(12 notes, 12 pitches)" in str(info.value)
  assert not (tmp_path / "prep").exists()
  # One instrument without a shared pitch trains, and the summary says what it lacks.
  specs += [(f"audio/ob_{p}.wav", "ob", p, tone(p, 22050, 0.6), 22050) for p in range(48, 54)]
  messages = []
  prepare(PrepareConfig("csv", write_notes(str(tmp_path / "e"), specs),
                        str(tmp_path / "prep")), log=messages.append)
  assert ("Note: 'fl' has no validation notes (a validation note's pitch must also be in "
          "training, and none of its pitches has another note), so its validation "
          "accuracy is not measured.") in messages


def test_skip_policy_reports_every_skipped_note(tmp_path):
  csv_path = _bad_folder(tmp_path)
  p = _prepare(csv_path, tmp_path / "prep", on_bad_file="skip")
  with open(tmp_path / "prep" / "skipped.csv") as f:
    skipped = list(csv.DictReader(f))
  assert len(skipped) == 8
  assert sum(p.counts["train"].values()) + sum(p.counts["validation"].values()) == 12
  assert json.load(open(tmp_path / "prep" / "prepared.json"))["num_skipped"] == 8


def test_csv_missing_columns_is_a_clear_error(tmp_path):
  csv_path = write_notes(str(tmp_path / "d"), [], header="file,instrument,note")
  with pytest.raises(SourceError) as info:
    open_source("csv", csv_path)
  assert "missing column(s) path, pitch" in str(info.value)
  assert csv_path in str(info.value) and "separated" not in str(info.value)
  semicolons = write_notes(str(tmp_path / "e"), [], header="path;instrument;pitch")
  with pytest.raises(SourceError, match="expected at least path,instrument,pitch "
                     "\\(columns separated by commas; this header uses semicolons\\)"):
    open_source("csv", semicolons)


def test_csv_extra_columns_note_names_and_absolute_paths(tmp_path):
  folder = tmp_path / "d"
  folder.mkdir()
  wave = tone(61, 22050, 0.6)
  soundfile.write(str(folder / "a.wav"), wave, 22050)
  soundfile.write(str(tmp_path / "elsewhere.wav"), wave, 22050)
  (folder / "labels.csv").write_text(
      "velocity,path,pitch,instrument\n"
      f"80,a.wav,C#4,vn\n90,{tmp_path / 'elsewhere.wav'},61,vn\n")
  src = open_source("csv", str(folder))
  assert [n.pitch for n in src.notes] == [61, 61] and not src.problems


def test_instrument_with_a_single_note_is_named(tmp_path):
  specs = toy_specs(velocities=(0.3,), rates=(22050,))
  specs.append(("audio/lonely.wav", "theremin", 60, tone(60, 22050, 0.6), 22050))
  csv_path = write_notes(str(tmp_path / "d"), specs)
  with pytest.raises(PrepareError, match="'theremin' has only 1 note"):
    _prepare(csv_path, tmp_path / "prep")


def test_tinysol_layout(tmp_path):
  root = tmp_path / "TinySOL"
  write_tinysol(root)
  p = _prepare(root, tmp_path / "prep", dataset="tinysol")
  assert p.instruments == ("Fl", "Vc") and p.pitches == (60, 62, 64)


def test_an_nsynth_pitch_outside_midi_is_a_problem(tmp_path):
  path = write_nsynth(str(tmp_path / "n.tfrecord"), families=(("brass", 9),),
                      pitches=[60, 60, 61, 200])
  with pytest.raises(PrepareError, match="brass_acoustic_000-200-075: pitch 200 is outside "
                     "MIDI 0..127"):
    _prepare(path, tmp_path / "prep", dataset="nsynth")


def test_nsynth_tfrecords_stream_with_labels(tmp_path):
  path = write_nsynth(str(tmp_path / "nsynth-train.tfrecord"))
  p = _prepare(path, tmp_path / "prep", dataset="nsynth")
  assert p.instruments == ("brass", "guitar")
  assert p.counts["validation"] == {"brass": 1, "guitar": 1}
  row = p.index()[0]
  assert row["path"] == "" and row["key"].startswith("brass_acoustic_000-")
  # The log-mel of a streamed note equals the one computed directly from its audio.
  from tfgmvae.data.dataset import PipelineConfig, make_dataset  # pylint: disable=g-import-not-at-top
  wave = tone(60, 16000, 4.0, harmonics=9)
  segment = audio.resample(wave, 16000, 22050)[:audio.PAPER.segment_samples]
  expected = audio.normalise(audio.log_mel(segment), p.log_mel_min, p.log_mel_max).numpy()
  split = next(r["split"] for r in p.index() if r["key"] == "brass_acoustic_000-060-075")
  mels = {}
  for batch in make_dataset(p, split, PipelineConfig(shuffle=False)).as_numpy_iterator():
    mels.update(zip((k.decode() for k in batch["key"]), batch["mel"]))
  np.testing.assert_allclose(mels["brass_acoustic_000-060-075"], expected, atol=1e-5)
  # The normalisation constants are the training notes' own extremes.
  train = [audio.log_mel(audio.resample(tone(pitch, 16000, 4.0, harmonics=h), 16000,
                                        22050)[:audio.PAPER.segment_samples]).numpy()
           for r in p.index() if r["split"] == "train"
           for pitch, h in [(int(r["key"][-7:-4]), 9 if r["key"].startswith("brass") else 1)]]
  assert p.log_mel_min == pytest.approx(min(t.min() for t in train), abs=1e-3)
  assert p.log_mel_max == pytest.approx(max(t.max() for t in train), abs=1e-3)


def _nsynth_example(drop=(), **changes):
  """One serialized NSynth example (a guitar's C4, 4 s at 16 kHz) without the features in
  `drop` and with `changes` (name -> tf.train.Feature)."""
  def feature(value):
    if isinstance(value, str):
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
    if isinstance(value, int):
      return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(value)))
  example = {"note_str": feature("guitar_acoustic_000-060-075"), "pitch": feature(60),
             "sample_rate": feature(16000), "instrument_family_str": feature("guitar"),
             "audio": feature(tone(60, 16000, 4.0))}
  example = {k: v for k, v in example.items() if k not in drop} | changes
  return tf.train.Example(features=tf.train.Features(feature=example)).SerializeToString()


def test_records_that_are_not_nsynth_are_named_with_what_was_expected(tmp_path):
  good = write_nsynth(str(tmp_path / "good.tfrecord"))
  whole = open(good, "rb").read()
  cases = {
      "no_family": ([_nsynth_example(drop=("instrument_family_str",))],
                    "instrument_family_str"),
      "float_pitch": ([_nsynth_example(pitch=tf.train.Feature(
          float_list=tf.train.FloatList(value=[60.0])))], "pitch"),
  }
  for name, (records, said) in cases.items():
    path = str(tmp_path / f"{name}.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
      for r in records:
        w.write(r)
    with pytest.raises(SourceError) as info:
      _prepare(path, tmp_path / f"prep_{name}", dataset="nsynth")
    message = str(info.value)
    assert message.startswith(f"{path}: cannot be read as NSynth records (") and said in message
    assert "expected TFRecord files of tf.train.Example with note_str (bytes), pitch " \
        "(int64), instrument_family_str (bytes), audio (float list)" in message
    assert "function_node" not in message and "[[" not in message
    assert not (tmp_path / f"prep_{name}").exists()
  cut = tmp_path / "cut.tfrecord"                   # an interrupted download
  cut.write_bytes(whole[:len(whole) // 2])
  tar = tmp_path / "nsynth-train.jsonwav.tar.gz"    # the wrong download
  tar.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(4000))
  for path, said in ((cut, "truncated record"), (tar, "corrupted record")):
    with pytest.raises(SourceError, match=f"^{path}: cannot be read as NSynth records "
                       f"\\(.*{said}"):
      _prepare(path, tmp_path / "prep_bad", dataset="nsynth")
  with pytest.raises(SourceError, match=f"^one of {cut}, {good}: cannot be read as NSynth"):
    _prepare(str(tmp_path / "[cg]*.tfrecord"), tmp_path / "prep_two", dataset="nsynth")
  # Cut 3 bytes into the second record's header: TensorFlow sees a file that ends there.
  first = 12 + int.from_bytes(whole[:8], "little") + 4
  header = tmp_path / "header.tfrecord"
  header.write_bytes(whole[:first + 3])
  with pytest.raises(SourceError, match=f"^{header}: ends 3 byte\\(s\\) into the header of "
                     f"record 2 \\(at byte {first}\\); expected whole TFRecord files"):
    _prepare(str(header), tmp_path / "prep_header", dataset="nsynth")


def test_an_nsynth_note_silent_in_its_analysed_segment_is_refused_as_a_file_is(tmp_path):
  wave = tone(60, 16000, 4.0)
  wave[:32000] = 0.0          # silent for 2 s, the analysed segment (0 to 0.5 s) included
  path = str(tmp_path / "late.tfrecord")
  with tf.io.TFRecordWriter(path) as w:
    w.write(_nsynth_example(audio=tf.train.Feature(float_list=tf.train.FloatList(
        value=wave.tolist()))))
  with pytest.raises(PrepareError, match="guitar_acoustic_000-060-075: is silent in its "
                     "analysed segment"):
    _prepare(path, tmp_path / "prep", dataset="nsynth")
  soundfile.write(str(tmp_path / "late.wav"), wave, 16000, subtype="FLOAT")
  (tmp_path / "labels.csv").write_text("path,instrument,pitch\nlate.wav,guitar,60\n")
  with pytest.raises(PrepareError, match="late.wav: is silent in its analysed segment"):
    _prepare(tmp_path / "labels.csv", tmp_path / "prep_wav")


def test_unknown_dataset_and_missing_paths_are_named(tmp_path):
  with pytest.raises(SourceError, match="--dataset='sol'"):
    open_source("sol", str(tmp_path))
  with pytest.raises(SourceError, match="no NSynth TFRecord"):
    open_source("nsynth", str(tmp_path / "none"))
  with pytest.raises(SourceError, match="TinySOL_metadata.csv"):
    open_source("tinysol", str(tmp_path))
  with pytest.raises(SourceError, match="no such CSV"):
    open_source("csv", str(tmp_path / "x.csv"))
  with pytest.raises(SourceError, match=r"not a folder.*expand ~ after --flag=; write \$HOME"):
    open_source("tinysol", "~/no-such-TinySOL")


@pytest.fixture
def http_root(tmp_path):
  """A real HTTP server on localhost serving tmp_path/www; yields (folder, base URL)."""
  import functools  # pylint: disable=g-import-not-at-top
  import http.server  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top

  class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
      pass

  folder = tmp_path / "www"
  folder.mkdir()
  server = http.server.ThreadingHTTPServer(
      ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  stopped = []

  def stop():   # the test may stop it early (a server gone down)
    if not stopped:
      server.shutdown()
      server.server_close()
      stopped.append(True)

  yield folder, f"http://127.0.0.1:{server.server_address[1]}", stop
  stop()


def test_sources_read_over_http_like_local_files(http_root, tmp_path):
  # tensorflow-io's http file system (registered on first use), against a real server.
  folder, base, _ = http_root
  csv_path = write_notes(str(folder / "notes"), toy_specs())
  local = _prepare(csv_path, tmp_path / "local")
  remote = _prepare(f"{base}/notes/labels.csv", tmp_path / "remote")
  assert remote.counts == local.counts and remote.pitches == local.pitches
  assert remote.log_mel_min == pytest.approx(local.log_mel_min, abs=1e-6)
  assert remote.log_mel_max == pytest.approx(local.log_mel_max, abs=1e-6)
  assert {r["path"] for r in remote.index()} == {
      f"{base}/notes/{r['key']}" for r in local.index()}
  # A folder URL means its labels.csv; a note missing on the server is named.
  with open(csv_path, "a") as f:
    f.write("audio/gone.wav,sine,60\n")
  with pytest.raises(PrepareError, match=f"{base}/notes/audio/gone.wav does not exist"):
    _prepare(f"{base}/notes", tmp_path / "remote2")
  with pytest.raises(SourceError, match="no such CSV"):
    open_source("csv", f"{base}/nothing/labels.csv")
  whole = (folder / "notes" / local.index()[0]["key"]).read_bytes()
  (folder / "cut.wav").write_bytes(whole[:len(whole) // 2])
  with pytest.raises(audio.AudioDecodeError, match=f"^{base}/cut.wav: is truncated"):
    audio.load(f"{base}/cut.wav")
  write_tinysol(folder / "TinySOL")
  tinysol = _prepare(f"{base}/TinySOL", tmp_path / "tinysol", dataset="tinysol")
  assert tinysol.instruments == ("Fl", "Vc") and tinysol.pitches == (60, 62, 64)


def test_a_note_gone_from_its_server_or_a_server_down_is_said_plainly(http_root, tmp_path):
  folder, base, stop_server = http_root
  write_notes(str(folder / "notes"), toy_specs())
  remote = _prepare(f"{base}/notes/labels.csv", tmp_path / "remote")
  gone = next(r for r in remote.index() if r["split"] == "train")
  os.remove(folder / "notes" / gone["key"])
  # A 404: the server's answer without its HTML page, and the data is stale.
  with pytest.raises(DataError) as info, data_errors(remote):
    list(note_dataset(remote, "train")[0])
  message = str(info.value)
  assert f"{gone['path']}: no such file (" in message and "404" in message
  assert "<html" not in message.lower() and "no longer matches its source" in message
  # The server down: said so, and nothing about the prepared data or a new run.
  stop_server()
  with pytest.raises(DataError) as info, data_errors(remote, suffix=" SUFFIX"):
    list(note_dataset(remote, "validation")[0])
  message = str(info.value)
  assert f"{base}/notes/" in message and "could not be reached" in message
  assert "check the network and that the server is up" in message
  assert "no longer matches" not in message and "SUFFIX" not in message
  with pytest.raises(UnreachableError, match=f"{base}/notes/labels.csv: could not be "
                     "reached .*Failed to connect"):
    open_source("csv", f"{base}/notes/labels.csv")
  with pytest.raises(UnreachableError, match=f"{base}/nsynth.tfrecord: could not be reached"):
    open_source("nsynth", f"{base}/nsynth.tfrecord")
  # Notes on a server that is down are not bad notes to skip: preparation stops.
  local = tmp_path / "local.csv"
  local.write_text("path,instrument,pitch\n" + "".join(
      f"{r['path']},{r['instrument']},{r['pitch']}\n" for r in remote.index()))
  with pytest.raises(UnreachableError, match="could not be reached"):
    _prepare(local, tmp_path / "skipping", on_bad_file="skip")   # (listing the notes)
  assert not (tmp_path / "skipping").exists()
  # The server gone after the notes were listed: decoding stops too, not skipping them.
  listed = FileSource("csv", str(local), tuple(
      Note(r["key"], r["path"], r["instrument"], r["pitch"]) for r in remote.index()), ())
  with pytest.raises(UnreachableError, match=f"{base}/notes/audio/.*could not be reached"):
    _scan(listed, PrepareConfig("csv", str(local), str(tmp_path / "x"),
                                on_bad_file="skip"), log=lambda *_: None)


def test_other_source_tells_which_data_path_a_prepared_folder_came_from(tmp_path,
                                                                       monkeypatch):
  def made_from(source):
    folder = tmp_path / f"p{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "prepared.json").write_text(json.dumps({"source": source}))
    return str(folder)

  corpus = made_from({"dataset": "rendered", "csv": "/d/corpus/labels.csv"})
  for same in ("/d/corpus", "/d/corpus/", "/d/corpus/labels.csv", "/d/*/labels.csv"):
    assert other_source(corpus, "rendered", same) is None, same
  for other, dataset in (("/d", "rendered"), ("/", "rendered"), ("/d/corpus2", "rendered"),
                         ("/d/corpus", "csv")):
    assert other_source(corpus, dataset, other) == \
        "rendered notes listed in /d/corpus/labels.csv", other
  tinysol = made_from({"dataset": "tinysol",
                       "csv": "/s/TinySOL/annotation/TinySOL_metadata.csv"})
  assert other_source(tinysol, "tinysol", "/s/TinySOL") is None
  assert other_source(tinysol, "tinysol", "/s") is not None
  # NSynth records named relative to the folder the command runs in.
  monkeypatch.chdir(tmp_path)
  nsynth = made_from({"dataset": "nsynth", "files": [str(tmp_path / "n" / "a.tfrecord"),
                                                     str(tmp_path / "n" / "b.tfrecord")]})
  for same in ("n", "n/", "n/*.tfrecord", str(tmp_path / "n")):
    assert other_source(nsynth, "nsynth", same) is None, same
  assert other_source(nsynth, "nsynth", "n/a.tfrecord") == \
      f"nsynth records from 2 file(s) such as {tmp_path}/n/a.tfrecord"
  assert other_source(str(tmp_path / "nothing"), "csv", "/x") is None   # no record
  # What a run on each folder records in flags.txt (a --data_path naming the source).
  assert source_flags(corpus) == {"dataset": "rendered", "data_path": "/d/corpus/labels.csv"}
  assert source_flags(tinysol) == {"dataset": "tinysol", "data_path": "/s/TinySOL"}
  # NSynth: the folder only while it holds these TFRecord files and no others (as
  # --data_path=FOLDER would read them all).
  (tmp_path / "n").mkdir()
  for name in ("a.tfrecord", "b.tfrecord", "notes.txt"):
    (tmp_path / "n" / name).write_bytes(b"")
  assert source_flags(nsynth)["data_path"] == str(tmp_path / "n")
  for folder, named in ((corpus, "/d/corpus/labels.csv"), (tinysol, "/s/TinySOL"),
                        (nsynth, str(tmp_path / "n"))):
    dataset = source_flags(folder)["dataset"]
    assert other_source(folder, dataset, named) is None, named   # the same source
  (tmp_path / "n" / "c.tfrecord").write_bytes(b"")
  assert source_flags(nsynth)["data_path"] == ""
  one = made_from({"dataset": "nsynth", "files": ["/n/valid.tfrecord"],
                   "instrument_field": "instrument_str"})
  assert source_flags(one) == {"dataset": "nsynth", "data_path": "/n/valid.tfrecord",
                               "nsynth_instrument_field": "instrument_str"}
  apart = made_from({"dataset": "nsynth", "files": ["/n/a.tfrecord", "/m/b.tfrecord"]})
  assert source_flags(apart) == {"dataset": "nsynth", "data_path": ""}
  split = tmp_path / "split"
  split.mkdir()
  (split / "prepared.json").write_text(json.dumps(
      {"source": {"dataset": "csv", "csv": "/c/x.csv"}, "validation_fraction": 0.25}))
  assert source_flags(str(split)) == {"dataset": "csv", "data_path": "/c/x.csv",
                                      "validation_fraction": "0.25"}
  assert source_flags(str(tmp_path / "nothing")) == {}


def test_temporary_folders_are_made_as_mkdir_makes_them(tmp_path):
  shared = tmp_path / "shared"
  shared.mkdir()
  os.chmod(shared, 0o2775)   # setgid: new folders take the group and keep the bit
  made = paths.make_temp_dir(str(shared), ".prepare-")
  assert os.path.basename(made).startswith(".prepare-")
  (shared / "plain").mkdir()
  assert os.stat(made).st_mode == os.stat(shared / "plain").st_mode
  assert paths.make_temp_dir(str(shared), ".prepare-") != made


def test_a_killed_writers_temporary_folder_is_removed_by_the_next(toy_csv, tmp_path):
  # kill -9 leaves the folder; the next preparation there removes it, but not a live
  # process's, nor another host's (a shared disk), nor anything else.
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  host = paths._HOST   # pylint: disable=protected-access
  names = {"dead": f".prepare-{host}-{int(gone.stdout)}-0123abcd",
           "live": f".prepare-{host}-{os.getpid()}-0123abcd",
           "other": f".prepare-elsewhere.example-{int(gone.stdout)}-0123abcd",
           "mine": ".prepare-notes"}
  for name in names.values():
    (tmp_path / name).mkdir()
    (tmp_path / name / "index.csv").write_text("half")
  said = []
  prepare(PrepareConfig("csv", toy_csv, str(tmp_path / "prep")), log=said.append)
  assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == sorted(
      names[k] for k in ("live", "other", "mine"))
  assert f"Removed {tmp_path / names['dead']}: unfinished, left by a process (pid " \
      f"{int(gone.stdout)}) that was killed while writing." in said
