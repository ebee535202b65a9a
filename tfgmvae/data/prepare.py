"""Preparation shared by every source: split, vocabularies, normalisation, label ranks.

`prepare()` decodes every note once (so every bad file is found before training starts),
splits 90/10 stratified by instrument with a seed, builds the instrument and pitch
vocabularies from the training split, and takes the training split's log-mel min and
max. It writes into a new folder:

* `prepared.json`: settings, vocabularies, normalisation constants, counts;
* `index.csv`: one row per usable note (key, path, instrument, pitch, split, label_rank);
* `skipped.csv`: only with `on_bad_file='skip'`: every note left out and why.

`label_rank` orders each instrument's training notes by a seeded shuffle; a run that
keeps a fraction N of instrument labels keeps those with rank < round(N * count), and at
least one per instrument when N > 0 (else a small instrument's component or class would
be named by nothing), so the labelled notes follow the data's instrument distribution.
"""

import collections
import csv
import dataclasses
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import time

import numpy as np
import tensorflow as tf

from tfgmvae.audio import AudioConfig, PAPER
from tfgmvae.data import paths, pipeline
from tfgmvae.data.sources import (FileSource, Note, Problem, SourceError,
                                  open_source)

FORMAT_VERSION = 1
JSON_NAME = "prepared.json"
INDEX_NAME = "index.csv"
SKIPPED_NAME = "skipped.csv"
INDEX_FIELDS = ("key", "path", "instrument", "pitch", "split", "label_rank")
# Percentiles of the training notes' loudest log-mel bin kept in prepared.json.
NOTE_PEAK_PERCENTILES = (1, 50, 99)
TRAIN, VALIDATION = "train", "validation"


class PrepareError(ValueError):
  """The data cannot be prepared as asked; the message says which notes and why."""


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
  """What `prepare` does.

  Attributes:
    dataset: Source name (csv, rendered, tinysol, nsynth).
    data_path: Where the source is.
    out_dir: New folder for the prepared files; must not exist or be empty.
    audio: Front-end settings.
    validation_fraction: Share of each instrument's notes held out.
    seed: Seed of the split and of the label ranks.
    on_bad_file: 'error' stops on any unusable note, listing all of them; 'skip' leaves
      them out and reports each in skipped.csv.
    nsynth_instrument_field: NSynth feature used as the instrument label.
  """
  dataset: str
  data_path: str
  out_dir: str
  audio: AudioConfig = PAPER
  validation_fraction: float = 0.1
  seed: int = 0
  on_bad_file: str = "error"
  nsynth_instrument_field: str = "instrument_family_str"

  def __post_init__(self):
    if not 0.0 < self.validation_fraction < 1.0:
      raise ValueError(f"validation_fraction={self.validation_fraction}: expected a "
                       "number strictly between 0 and 1.")
    if self.on_bad_file not in ("error", "skip"):
      raise ValueError(f"on_bad_file={self.on_bad_file!r}: expected 'error' or 'skip'.")


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A prepared dataset, as read back from its folder."""
  directory: str
  source: dict
  audio: AudioConfig
  instruments: tuple[str, ...]
  pitches: tuple[int, ...]
  log_mel_min: float
  log_mel_max: float
  seed: int
  validation_fraction: float
  counts: dict
  # Percentiles 1, 50 and 99 of the training notes' loudest log-mel bin (None for data
  # prepared before they were recorded): how loud a note the model knows.
  note_peaks: tuple[float, float, float] | None = None
  index_sha256: str = ""     # of index.csv: which notes, in which split

  @property
  def num_instruments(self) -> int:
    return len(self.instruments)

  @property
  def num_pitches(self) -> int:
    return len(self.pitches)

  def index(self, split: str | None = None) -> list[dict]:
    """Rows of index.csv (typed), optionally of one split."""
    with open(os.path.join(self.directory, INDEX_NAME), newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    out = []
    for r in rows:
      if split is None or r["split"] == split:
        r["pitch"] = int(r["pitch"])
        r["label_rank"] = int(r["label_rank"])
        out.append(r)
    return out

  def pitch_ranges(self) -> dict[str, list[int]]:
    """Instrument -> [lowest, highest] MIDI pitch among its training notes."""
    ranges = {}
    for row in self.index(TRAIN):
      lo, hi = ranges.get(row["instrument"], (row["pitch"], row["pitch"]))
      ranges[row["instrument"]] = [min(lo, row["pitch"]), max(hi, row["pitch"])]
    return {name: ranges[name] for name in self.instruments if name in ranges}

  def labelled_quota(self, fraction: float) -> dict[str, int]:
    """Labelled training notes per instrument when keeping `fraction` of the labels:
    round(fraction * count) (half to even), at least 1 when fraction > 0."""
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(f"label fraction {fraction}: expected a number in [0, 1].")
    least = 1 if fraction > 0 else 0
    return {k: max(least, int(round(fraction * n))) for k, n in self.counts[TRAIN].items()}

  @classmethod
  def load(cls, directory: str) -> "Prepared":
    """Reads `directory`/prepared.json and checks index.csv against its checksum.

    Raises:
      PrepareError: missing files, another format version, or an index that changed.
    """
    path = os.path.join(directory, JSON_NAME)
    if not os.path.isfile(path):
      raise PrepareError(f"{path}: not found; expected a folder written by "
                         "bin/prepare_dataset.")
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
      raise PrepareError(f"{path}: format_version {meta.get('format_version')} but this "
                         f"tfgmvae reads {FORMAT_VERSION}; prepare the data again.")
    index_path = os.path.join(directory, INDEX_NAME)
    if not os.path.isfile(index_path) or _sha256(index_path) != meta["index_sha256"]:
      raise PrepareError(f"{index_path}: missing or changed since {path} was written; "
                         "prepare the data again into a new folder.")
    return cls(directory=directory, source=meta["source"],
               audio=AudioConfig.from_dict(meta["audio"]),
               instruments=tuple(meta["instruments"]), pitches=tuple(meta["pitches"]),
               log_mel_min=float(meta["log_mel_min"]),
               log_mel_max=float(meta["log_mel_max"]), seed=int(meta["seed"]),
               validation_fraction=float(meta["validation_fraction"]),
               counts=meta["counts"],
               note_peaks=tuple(meta["note_peaks"]) if "note_peaks" in meta else None,
               index_sha256=meta["index_sha256"])


def read_record(prepared_dir: str) -> dict | None:
  """`prepared_dir`/prepared.json as written (None if missing or unreadable), without
  the checks of `Prepared.load`: for comparing a folder with a command or another."""
  try:
    with open(os.path.join(prepared_dir, JSON_NAME), encoding="utf-8") as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


# The flags that choose, label and split the notes of a prepared folder: a run on
# --prepared_dir does not use them, and records the folder's own (`source_flags`).
SOURCE_FLAGS = ("dataset", "data_path", "validation_fraction", "nsynth_instrument_field")


def _named_by(dataset: str, files: list[str]) -> str:
  """The `--data_path` that names exactly these source files ("" if none does)."""
  folders = {os.path.dirname(f) for f in files}
  if dataset == "tinysol" and len(folders) == 1:   # its root: the metadata may sit in
    root = folders.pop()                            # annotation/ under it
    return os.path.dirname(root) if os.path.basename(root) == "annotation" else root
  if len(files) == 1:
    return files[0]
  if len(folders) == 1 and not paths.is_url(next(iter(folders))):   # NSynth: the folder,
    folder = folders.pop()            # if it holds these TFRecord files and no others
    if sorted(glob.glob(os.path.join(folder, "*.tfrecord*"))) == sorted(files):
      return folder
  return ""


def source_flags(prepared_dir: str) -> dict[str, str]:
  """The `SOURCE_FLAGS` that `prepared_dir` was prepared with, as flag values.

  A run on `--prepared_dir` records these in its flags.txt, rather than the command's
  own (unused) values. `data_path` is what `--data_path` would name the source by: the
  CSV, TinySOL's folder, the one TFRecord file, or the folder holding all of them and
  no others; empty when no one path names them (NSynth files picked by a glob, say).

  Returns:
    {flag name: value} for each that the folder's prepared.json gives ({} if unreadable).
  """
  record = read_record(prepared_dir) or {}
  source = record.get("source")
  out = {}
  if isinstance(source, dict) and source.get("dataset"):
    out["dataset"] = str(source["dataset"])
    files = [source["csv"]] if "csv" in source else list(source.get("files", []))
    out["data_path"] = _named_by(out["dataset"], files)
    if source.get("instrument_field"):
      out["nsynth_instrument_field"] = str(source["instrument_field"])
  if isinstance(record.get("validation_fraction"), (int, float)):
    out["validation_fraction"] = str(float(record["validation_fraction"]))
  return out


def other_source(prepared_dir: str, dataset: str, data_path: str) -> str | None:
  """What `prepared_dir` was prepared from, if that is not `dataset` at `data_path`.

  `data_path` matches the recorded source when it is the recorded CSV or TFRecord file, a
  folder holding them, or a glob that matches them (as `--data_path` may give each).

  Returns:
    None if it was prepared from there (or has no readable record), else the recorded
    source, e.g. "rendered notes listed in /data/corpus/labels.csv".
  """
  source = (read_record(prepared_dir) or {}).get("source")
  if not isinstance(source, dict):
    return None
  local = lambda p: p if paths.is_url(p) else os.path.abspath(p)   # pylint: disable=unnecessary-lambda-assignment
  files = [local(p) for p in ([source["csv"]] if "csv" in source
                              else list(source.get("files", [])))]
  where = local(data_path).rstrip("/")
  # Where --data_path may name them: the file itself, the folder holding it (TinySOL's
  # metadata may sit in annotation/ under it), or a glob.
  named = lambda p: (p == where or os.path.dirname(p) == where   # pylint: disable=unnecessary-lambda-assignment
                     or (os.path.basename(p) == "TinySOL_metadata.csv"
                         and os.path.dirname(os.path.dirname(p)) == where)
                     or fnmatch.fnmatchcase(p, where))
  if source.get("dataset") == dataset and files and all(named(p) for p in files):
    return None
  if "csv" in source:
    return f"{source.get('dataset')} notes listed in {source['csv']}"
  return (f"{source.get('dataset')} records from {len(files)} file(s) such as "
          f"{files[0] if files else '?'}")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _rank_key(seed: int, salt: str, key: str) -> str:
  return hashlib.sha256(f"{seed}:{salt}:{key}".encode()).hexdigest()


def stratified_split(notes: list[Note], fraction: float, seed: int):
  """Seeded split stratified by instrument that never strands a pitch in validation.

  Each instrument with n notes gives max(1, round(fraction * n)) notes to validation, in
  a seeded order, passing over any note whose pitch would then be left with no training
  note (so the training pitch vocabulary covers the validation split).

  Returns:
    (split by key, problems): problems for instruments with fewer than 2 notes.
  """
  by_instrument = collections.defaultdict(list)
  for n in notes:
    by_instrument[n.instrument].append(n)
  problems = []
  # Notes of an instrument with a single note are left out (below): they keep no pitch.
  train_per_pitch = collections.Counter(
      n.pitch for n in notes if len(by_instrument[n.instrument]) >= 2)
  split = {}
  for instrument in sorted(by_instrument):
    group = sorted(by_instrument[instrument], key=lambda n: _rank_key(seed, "split", n.key))
    if len(group) < 2:
      problems.extend(Problem(n.where or n.key, (f"{n.key}: " if n.where else "")
                              + f"instrument {instrument!r} has only {len(group)} note; "
                              "a stratified split needs at least 2 (one for training "
                              "and, if its pitch has another training note, one for "
                              "validation)", n.key, n.row) for n in group)
      continue
    quota = min(len(group) - 1, max(1, int(round(fraction * len(group)))))
    taken = 0
    for n in group:
      if taken < quota and train_per_pitch[n.pitch] > 1:
        split[n.key] = VALIDATION
        train_per_pitch[n.pitch] -= 1
        taken += 1
      else:
        split[n.key] = TRAIN
  return split, problems


def label_ranks(notes: list[Note], split: dict[str, str], seed: int) -> dict[str, int]:
  """Seeded rank of each training note within its instrument (-1 for validation)."""
  ranks = {}
  by_instrument = collections.defaultdict(list)
  for n in notes:
    if split[n.key] == TRAIN:
      by_instrument[n.instrument].append(n)
    else:
      ranks[n.key] = -1
  for group in by_instrument.values():
    for rank, n in enumerate(sorted(group, key=lambda n: _rank_key(seed, "label", n.key))):
      ranks[n.key] = rank
  return ranks


def _scan(source, config: PrepareConfig, log=print):
  """Decodes every note once: (notes, per-note log-mel (min, max), problems)."""
  if isinstance(source, FileSource):
    notes = list(source.notes)
    ds = tf.data.Dataset.from_tensor_slices(
        {"index": tf.range(len(notes)), "path": [n.path for n in notes]})
    ds = pipeline.decode_files(ds, config.audio)
  else:
    for path in source.files:
      cut = tfrecord_cut(path)
      if cut:
        raise SourceError(f"{path}: {cut}; expected whole TFRecord files (download it "
                          "again).")
    ds = pipeline.nsynth_records(source.files, source.instrument_field, config.audio)
    notes = None
  ds = pipeline.with_log_mel(ds, config.audio)
  ds = ds.map(lambda e: {k: v for k, v in e.items() if k not in ("log_mel", "path")} | {
      "lo": tf.reduce_min(e["log_mel"]), "hi": tf.reduce_max(e["log_mel"])},
              num_parallel_calls=pipeline.AUTOTUNE).prefetch(pipeline.AUTOTUNE)
  stats, problems, scanned, seen = {}, [], [], {}
  start, count = time.time(), 0
  for i, elem in enumerate(_records(ds, source)):
    if notes is not None:
      note = notes[elem["index"]]
    else:
      key = elem["key"].decode()
      note = Note(key, "", elem["instrument"].decode(), int(elem["pitch"]))
      if key in seen:
        problems.append(Problem(key, f"duplicate NSynth note_str (first seen as record "
                                     f"{seen[key] + 1})", key))
        continue
      seen[key] = i
      if not 0 <= note.pitch <= 127:   # (a CSV's pitches are checked as they are read)
        problems.append(Problem(key, f"pitch {note.pitch} is outside MIDI 0..127", key))
        continue
    count += 1
    if count % 5000 == 0:
      log(f"  scanned {count} notes ({count / (time.time() - start):.0f}/s)")
    error = elem["error"].decode()
    if paths.UNREACHABLE in error:   # not the note's fault: stop, whatever on_bad_file
      raise paths.UnreachableError(error)
    if error:
      problems.append(Problem(note.where or note.key, error, note.key, note.row))
      continue
    if not note.instrument:
      problems.append(Problem(note.where or note.key, "empty instrument label", note.key,
                              note.row))
      continue
    scanned.append(note)
    stats[note.key] = (float(elem["lo"]), float(elem["hi"]))
  if notes is not None:   # back to the source's order (decoding groups notes by rate)
    order = {n.key: i for i, n in enumerate(notes)}
    scanned.sort(key=lambda n: order[n.key])
    problems.sort(key=lambda p: order.get(p.key, -1))
  return scanned, stats, problems


def tfrecord_cut(path: str) -> str | None:
  """Where a local TFRecord file is cut inside a record's 12-byte header, found from the
  records' lengths (8-byte length, 4-byte CRC, data, 4-byte CRC): TensorFlow reads such
  a file as one that ends there, without a word. None otherwise (whole, cut elsewhere,
  which TensorFlow reports, or not a local file)."""
  if paths.is_url(path) or not os.path.isfile(path):
    return None
  size, offset, count = os.path.getsize(path), 0, 0
  with open(path, "rb") as f:
    while offset < size:
      if size - offset < 12:
        return (f"ends {size - offset} byte(s) into the header of record {count + 1} "
                f"(at byte {offset})")
      f.seek(offset)
      length = int.from_bytes(f.read(8), "little")
      end = offset + 12 + length + 4
      if end > size:   # cut inside a record's data, or not TFRecords: TensorFlow says so
        return None
      offset, count = end, count + 1
  return None


def _records(ds: tf.data.Dataset, source):
  """`ds`'s elements as numpy; for NSynth, records that cannot be read or parsed (a file
  cut short, another schema) raise SourceError naming the files and what was expected."""
  if isinstance(source, FileSource):
    yield from ds.as_numpy_iterator()
    return
  files = source.files
  named = files[0] if len(files) == 1 else "one of " + ", ".join(files[:3]) + (
      f" ... ({len(files)} files)" if len(files) > 3 else "")
  try:
    yield from ds.as_numpy_iterator()
  except tf.errors.OpError as e:
    unreachable = paths.unreachable(named, e)
    if unreachable is not None:
      raise unreachable from None
    raise SourceError(
        f"{named}: cannot be read as NSynth records ({pipeline.op_message(e)}); expected "
        "TFRecord files of tf.train.Example with note_str (bytes), pitch (int64), "
        f"{source.instrument_field} (bytes), audio (float list) and optionally "
        "sample_rate (int64), e.g. nsynth-train.tfrecord as downloaded whole.") from None


def _report(problems: list[Problem], limit: int = 25) -> str:
  lines = [f"  - {p}" for p in problems[:limit]]
  if len(problems) > limit:
    lines.append(f"  ... and {len(problems) - limit} more")
  return "\n".join(lines)


def _check_out_dir(out_dir: str):
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise PrepareError(f"--out_dir={out_dir} already exists and is not empty; prepared "
                       "data is never overwritten. Choose a new folder or delete it.")
  where = paths.folder_problem(out_dir)
  if where:   # before any note is read
    raise PrepareError(f"--out_dir={out_dir}: cannot be written: {where}.")


def prepare(config: PrepareConfig, log=print) -> Prepared:
  """Prepares `config.dataset` into `config.out_dir` (see the module docstring).

  Raises:
    PrepareError: out_dir is not new, or notes are unusable and on_bad_file='error'
      (the message lists them: file or row, and what was expected).
    SourceError: the source itself cannot be read.
    paths.UnreachableError: a URL source's server cannot be reached (nothing written).
  """
  _check_out_dir(config.out_dir)
  source = open_source(config.dataset, config.data_path, config.nsynth_instrument_field)
  problems = list(getattr(source, "problems", ()))
  log(f"Decoding every note of {config.dataset} at {config.data_path} ...")
  notes, stats, decode_problems = _scan(source, config, log)
  problems += decode_problems
  split, split_problems = stratified_split(notes, config.validation_fraction, config.seed)
  problems += split_problems
  problems.sort(key=lambda p: p.row)   # a CSV's in its order (NSynth's: as found)
  if problems and config.on_bad_file == "error":
    raise PrepareError(
        f"{len(problems)} note(s) of {config.data_path} cannot be used:\n"
        f"{_report(problems)}\nFix them, or pass --on_bad_file=skip to leave them out "
        "(each is then listed in skipped.csv).")
  notes = [n for n in notes if n.key in split]
  if not notes:
    raise PrepareError(f"{config.data_path}: no usable notes left.")
  ranks = label_ranks(notes, split, config.seed)
  train = [n for n in notes if split[n.key] == TRAIN]
  if len(train) == len(notes):
    raise PrepareError(
        f"{config.data_path}: no note can go to the validation split: a validation note's "
        "pitch must also be in the training split, and each pitch here has a single "
        f"note ({len(notes)} notes, "
        f"{len({n.pitch for n in notes})} pitches). Training needs validation notes; "
        "add notes that repeat pitches (another dynamic, take or instrument).")
  lo = min(stats[n.key][0] for n in train)
  hi = max(stats[n.key][1] for n in train)
  if not hi > lo:
    raise PrepareError(f"{config.data_path}: the training log-mels are constant ({lo}); "
                       "cannot normalise.")
  counts = {s: dict(sorted(collections.Counter(
      n.instrument for n in notes if split[n.key] == s).items())) for s in (TRAIN, VALIDATION)}
  parent = os.path.dirname(os.path.abspath(config.out_dir))
  os.makedirs(parent, exist_ok=True)
  paths.remove_abandoned_temp_dirs(parent, ".prepare-", log)
  tmp = paths.make_temp_dir(parent, ".prepare-")
  try:
    index_path = os.path.join(tmp, INDEX_NAME)
    with open(index_path, "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(INDEX_FIELDS)
      for n in sorted(notes, key=lambda n: n.key):
        w.writerow([n.key, n.path, n.instrument, n.pitch, split[n.key], ranks[n.key]])
    if problems:
      with open(os.path.join(tmp, SKIPPED_NAME), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("key", "where", "reason"))
        for p in problems:
          w.writerow((p.key, p.where, p.message))
    meta = {
        "format_version": FORMAT_VERSION,
        "source": source.describe(),
        "audio": config.audio.to_dict(),
        "seed": config.seed,
        "validation_fraction": config.validation_fraction,
        "instruments": sorted(counts[TRAIN]),
        "pitches": sorted({n.pitch for n in train}),
        "log_mel_min": lo,
        "log_mel_max": hi,
        "counts": counts,
        "note_peaks": [float(q) for q in np.percentile(
            [stats[n.key][1] for n in train], NOTE_PEAK_PERCENTILES)],
        "num_train": len(train),
        "num_validation": len(notes) - len(train),
        "num_skipped": len(problems),
        "index_sha256": _sha256(index_path),
    }
    with open(os.path.join(tmp, JSON_NAME), "w", encoding="utf-8") as f:
      json.dump(meta, f, indent=2)
      f.write("\n")
    _check_out_dir(config.out_dir)
    if os.path.isdir(config.out_dir):
      os.rmdir(config.out_dir)   # empty, checked above
    os.rename(tmp, config.out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  for p in problems:
    log(f"skipped {p}")
  log(f"Prepared {len(train)} training and {len(notes) - len(train)} validation notes, "
      f"{len(counts[TRAIN])} instruments, {len(meta['pitches'])} pitches, log-mel range "
      f"[{lo:.3f}, {hi:.3f}] -> {config.out_dir}")
  totals = collections.Counter(n.instrument for n in notes)
  log("Notes per instrument: " + ", ".join(f"{k} {v}" for k, v in sorted(totals.items())))
  for name in sorted(set(totals) - set(counts[VALIDATION])):
    log(f"Note: {name!r} has no validation notes (a validation note's pitch must also be "
        "in training, and none of its pitches has another note), so its validation "
        "accuracy is not measured.")
  for names in _case_variants(totals):
    log(f"Note: {', '.join(repr(n) for n in names)} differ only in case, so they are "
        "different instruments; if they are one, fix the labels and prepare again.")
  return Prepared.load(config.out_dir)


def _case_variants(instruments) -> list[list[str]]:
  """Groups of instrument names that are equal but for letter case."""
  groups = collections.defaultdict(list)
  for name in sorted(instruments):
    groups[name.casefold()].append(name)
  return [names for names in groups.values() if len(names) > 1]
