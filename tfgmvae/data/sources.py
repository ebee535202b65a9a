"""Where notes come from: a folder plus a CSV, TinySOL, NSynth TFRecords.

Each source lists its notes as `Note` records (a unique key, instrument name, MIDI pitch,
and a file path for file-based sources). Row-level problems (a missing file, an unknown
note name, a duplicate row) are collected as `Problem`s that name the row, so the caller
can stop with all of them at once or, when the user asked for it, skip and report them.
Structural problems (no CSV, missing columns) raise `SourceError` at once.
"""

import csv
import dataclasses
import os
import unicodedata

from tfgmvae.data import paths
from tfgmvae.data.labels import parse_pitch

DATASETS = ("csv", "tinysol", "nsynth", "rendered")
NSYNTH_INSTRUMENT_FIELDS = ("instrument_family_str", "instrument_str",
                            "instrument_source_str")


class SourceError(ValueError):
  """The dataset itself cannot be read; the message names the file and what was expected."""


@dataclasses.dataclass(frozen=True)
class Note:
  """One labelled note.

  Attributes:
    key: Unique id: the path as written in the CSV, or NSynth's `note_str`.
    path: Absolute audio path, or "" for notes stored inside TFRecords.
    instrument: Instrument name.
    pitch: MIDI pitch.
    where: The CSV row it came from, for messages ("" for NSynth).
    row: That row's index (-1 for NSynth), to list problems in the CSV's order.
  """
  key: str
  path: str
  instrument: str
  pitch: int
  where: str = dataclasses.field(default="", compare=False)
  row: int = dataclasses.field(default=-1, compare=False)


@dataclasses.dataclass(frozen=True)
class Problem:
  """A note that cannot be used: where it is (file, row) and what is wrong."""
  where: str
  message: str
  key: str = ""
  row: int = dataclasses.field(default=-1, compare=False)

  def __str__(self):
    return f"{self.where}: {self.message}"


@dataclasses.dataclass(frozen=True)
class FileSource:
  """Notes stored as audio files, listed in a CSV."""
  name: str
  csv_path: str
  notes: tuple[Note, ...]
  problems: tuple[Problem, ...]

  kind = "files"

  def describe(self) -> dict:
    return {"dataset": self.name, "csv": (self.csv_path if paths.is_url(self.csv_path)
                                             else os.path.abspath(self.csv_path)),
            "notes": len(self.notes)}


@dataclasses.dataclass(frozen=True)
class NSynthSource:
  """NSynth TFRecord files (16 kHz `audio` float list plus label features).

  Notes are streamed from the files; only their labels are ever held in memory.
  """
  files: tuple[str, ...]
  instrument_field: str = "instrument_family_str"

  name = "nsynth"
  kind = "tfrecord"

  def describe(self) -> dict:
    return {"dataset": self.name, "files": [f if paths.is_url(f) else os.path.abspath(f)
                                             for f in self.files],
            "instrument_field": self.instrument_field}


# A row's fields past the header's columns (csv.DictReader's `restkey`).
_EXTRA = "\0extra fields"
_LINE = "\0line"   # the line a row ends on (its only line, unless a value holds one)


def _open_csv(path: str):
  try:
    return paths.open_text(path)
  except paths.EncodingError as e:
    raise SourceError(str(e)) from None


def _read_rows(csv_path: str, required: tuple[str, ...]) -> tuple[list[dict], list[str]]:
  """The CSV's rows as stripped {column: value} dicts, and its header. A row with more
  non-empty fields than the header has columns holds (fields, columns) under `_EXTRA`."""
  if not paths.isfile(csv_path):
    raise SourceError(f"{csv_path}: no such CSV file (expected a label file with columns "
                      f"{', '.join(required)}).")
  with _open_csv(csv_path) as f:
    reader = csv.DictReader(f, restkey=_EXTRA)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
      raise SourceError(
          f"{csv_path}: missing column(s) {', '.join(missing)}; the header is "
          f"{','.join(header) if header else '(empty)'}; expected at least "
          f"{','.join(required)}" + next(
              (f" (columns separated by commas; this header uses {name})"
               for sep, name in ((";", "semicolons"), ("\t", "tabs"))
               if len(header) == 1 and sep in header[0]), "") + ".")
    rows = []
    for row in reader:
      extra = row.pop(_EXTRA, [])
      rows.append({(k or "").strip(): (v or "").strip() for k, v in row.items()})
      rows[-1][_LINE] = reader.line_num   # (blank lines and quoted newlines counted)
      if any(v.strip() for v in extra):   # (empty ones, e.g. a trailing comma, are fine)
        rows[-1][_EXTRA] = (len(header) + len(extra), len(header))
  if not rows:
    raise SourceError(f"{csv_path}: has a header but no rows; expected one row per note.")
  return rows, header


def _other_normalisation(path: str) -> str | None:
  """The local file that `path` names in another Unicode normalisation (a CSV typed in
  NFC for files copied from macOS, which names them in NFD), if there is one."""
  if paths.is_url(path) or path.isascii():
    return None
  for form in ("NFC", "NFD"):
    other = unicodedata.normalize(form, path)
    if other != path and os.path.isfile(other):
      return other
  return None


def _identity(path: str):
  """What makes two paths one file: its device and inode for a local file (so a
  symbolic or hard link to it is the same note), the path itself otherwise."""
  if paths.is_url(path):
    return path
  try:
    found = os.stat(path)
  except OSError:
    return os.path.realpath(path)
  return (found.st_dev, found.st_ino)


def _notes_from_rows(csv_path: str, rows: list[dict], path_col: str, instrument_col: str,
                     pitch_col: str, audio_root: str,
                     pitch_fallback_col: str | None = None):
  notes, problems, seen = [], [], {}
  for i, row in enumerate(rows):
    where = f"{csv_path} row {i + 1} (line {row.get(_LINE, i + 2)})"
    rel, instrument = row.get(path_col, ""), row.get(instrument_col, "")
    if _EXTRA in row:
      fields, columns = row[_EXTRA]
      problems.append(Problem(where, f"has {fields} fields but the header has {columns} "
                                     "columns; expected one value per column (quote a "
                                     "value that holds a comma)", rel, i))
      continue
    if not rel:
      problems.append(Problem(where, f"empty '{path_col}'; expected an audio file path",
                              row=i))
      continue
    if not instrument:
      problems.append(Problem(where, f"{rel}: empty '{instrument_col}'; expected an "
                                     "instrument name", rel, i))
      continue
    raw_pitch = row.get(pitch_col, "")
    if not raw_pitch and pitch_fallback_col:
      raw_pitch = row.get(pitch_fallback_col, "")
    try:
      pitch = parse_pitch(raw_pitch)
    except ValueError as e:
      problems.append(Problem(where, f"{rel}: {e}", rel, i))
      continue
    path = paths.resolve(audio_root, rel)   # (./a.wav and a.wav are one note)
    exists = paths.isfile(path)
    other = None if exists else _other_normalisation(path)
    if other:
      path, exists = other, True
    same = _identity(path)
    if same in seen:
      first, labels = seen[same]
      other = ("" if labels == (instrument, pitch) else
               f" with other labels (there {labels[0]} {labels[1]}, here {instrument} "
               f"{pitch})")
      problems.append(Problem(where, f"{rel}: duplicate of row {first + 1}{other}; "
                                     "expected each note once", rel, i))
      continue
    seen[same] = (i, (instrument, pitch))
    if not exists:
      relative = ("" if os.path.isabs(rel) or paths.is_url(rel) else
                  f" (a relative path is read from {audio_root})")
      problems.append(Problem(where, f"{rel}: audio file {path} does not exist{relative}",
                              rel, i))
      continue
    notes.append(Note(rel, path, instrument, pitch, where, i))
  return notes, problems


def read_csv_source(csv_path: str, name: str = "csv", path_column: str = "path",
                    instrument_column: str = "instrument",
                    pitch_column: str = "pitch") -> FileSource:
  """Notes from a CSV `path,instrument,pitch` (paths relative to the CSV).

  Pitch is a MIDI number or a note name like `C#4`; extra columns are ignored.

  Raises:
    SourceError: the CSV is missing, empty, or lacks a required column.
  """
  rows, _ = _read_rows(csv_path, (path_column, instrument_column, pitch_column))
  notes, problems = _notes_from_rows(csv_path, rows, path_column, instrument_column,
                                     pitch_column, paths.folder_of(csv_path))
  return FileSource(name, csv_path, tuple(notes), tuple(problems))


def _tinysol_metadata(root: str) -> str:
  """The path of TinySOL's metadata CSV under `root`."""
  candidates = [paths.join(root, "TinySOL_metadata.csv"),
                paths.join(root, "annotation", "TinySOL_metadata.csv")]
  meta = next((c for c in candidates if paths.isfile(c)), None)
  if meta is None:
    raise SourceError(f"{root}: no TinySOL_metadata.csv found (looked at "
                      f"{', '.join(candidates)}); expected TinySOL's metadata CSV.")
  return meta


def _tinysol_audio_root(root: str, rels: list[str], tries: int = 20) -> str:
  """The folder TinySOL's audio paths `rels` are relative to: the first of the usual
  places that holds one of the first `tries` files (a missing file is then reported as
  that note's problem, not the whole dataset's)."""
  roots = [root, paths.join(root, "TinySOL"), paths.join(root, "audio"),
           paths.join(root, "audio", "TinySOL")]
  tried = [r for r in rels if r][:tries]
  for rel in tried:
    for audio_root in roots:
      if paths.isfile(paths.resolve(audio_root, rel)):
        return audio_root
  raise SourceError(f"{root}: cannot find TinySOL's audio (none of the metadata's first "
                    f"{len(tried)} files, e.g. {tried[0] if tried else ''!r}, is in any of "
                    f"{', '.join(roots)}); expected the extracted TinySOL.tar.gz next to "
                    "the metadata.")


def read_tinysol(root: str) -> FileSource:
  """Notes of TinySOL (its own folder layout and `TinySOL_metadata.csv`).

  The instrument is the abbreviation column ('Instrument (abbr.)' or 'Instrument'), the
  pitch 'Pitch ID' (MIDI) or else 'Pitch' (note name).
  """
  meta = _tinysol_metadata(root)
  with _open_csv(meta) as f:
    header = [h.strip() for h in (csv.DictReader(f).fieldnames or [])]
  instrument_col = next((c for c in ("Instrument (abbr.)", "Instrument") if c in header),
                        "Instrument (abbr.)")
  pitch_col = "Pitch ID" if "Pitch ID" in header else "Pitch"
  rows, _ = _read_rows(meta, ("Path", instrument_col, pitch_col))
  audio_root = _tinysol_audio_root(root, [row.get("Path", "") for row in rows])
  notes, problems = _notes_from_rows(meta, rows, "Path", instrument_col, pitch_col,
                                     audio_root, pitch_fallback_col="Pitch")
  return FileSource("tinysol", meta, tuple(notes), tuple(problems))


def find_nsynth_files(data_path: str) -> tuple[str, ...]:
  """TFRecord files named by `data_path`: one file, a glob, or a folder of *.tfrecord*."""
  if paths.isdir(data_path):
    files = sorted(paths.glob(paths.join(data_path, "*.tfrecord*")))
  elif any(ch in data_path for ch in "*?["):
    files = sorted(paths.glob(data_path))
  elif paths.exists(data_path):
    files = [data_path]
  else:
    files = []
  if not files:
    raise SourceError(f"{data_path}: no NSynth TFRecord files found (expected a .tfrecord "
                      "file, a glob, or a folder holding nsynth-*.tfrecord).")
  return tuple(files)


def open_source(dataset: str, data_path: str,
                nsynth_instrument_field: str = "instrument_family_str"):
  """The source named by `--dataset` and `--data_path`.

  Args:
    dataset: One of `DATASETS`. `csv` takes the CSV file (or a folder holding
      labels.csv); `rendered` is a folder written by bin/make_dataset; `tinysol` the
      folder holding TinySOL; `nsynth` a TFRecord file, glob or folder.
    data_path: Where the data is.
    nsynth_instrument_field: NSynth feature used as the instrument label.

  Returns:
    A FileSource or NSynthSource.

  Raises:
    SourceError: unknown dataset name, or the data cannot be found or read.
  """
  try:
    return _open_source(dataset, data_path, nsynth_instrument_field)
  except SourceError as e:
    hint = paths.tilde_hint(data_path)
    if hint:
      raise SourceError(f"{e}{hint}") from None
    raise


def _open_source(dataset: str, data_path: str, nsynth_instrument_field: str):
  if dataset in ("csv", "rendered"):
    path = data_path
    if paths.isdir(path) or (paths.is_url(path) and not path.lower().endswith(".csv")):
      path = paths.join(path, "labels.csv")
    return read_csv_source(path, name=dataset)
  if dataset == "tinysol":
    if not paths.isdir(data_path) and not paths.is_url(data_path):
      raise SourceError(f"--data_path={data_path}: not a folder; expected the folder "
                        "holding TinySOL_metadata.csv and TinySOL's audio.")
    return read_tinysol(data_path)
  if dataset == "nsynth":
    if nsynth_instrument_field not in NSYNTH_INSTRUMENT_FIELDS:
      raise SourceError(f"NSynth instrument field {nsynth_instrument_field!r} is not one of "
                        f"{', '.join(NSYNTH_INSTRUMENT_FIELDS)}.")
    return NSynthSource(find_nsynth_files(data_path), nsynth_instrument_field)
  raise SourceError(f"--dataset={dataset!r} is unknown; expected one of {', '.join(DATASETS)}.")
