"""Shared test helpers: notes synthesised inside the tests, written as real audio files."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position
import soundfile  # pylint: disable=wrong-import-position


def tone(midi: int, sr: int, seconds: float, harmonics: int = 1, amp: float = 0.5,
         decay: float = 2.0, phase: float = 0.0) -> np.ndarray:
  """A decaying harmonic tone at MIDI pitch `midi` (odd harmonics 1/k)."""
  t = np.arange(int(round(sr * seconds))) / sr
  f0 = 440.0 * 2.0 ** ((midi - 69) / 12.0)
  x = sum(np.sin(2 * np.pi * f0 * k * t + phase) / k
          for k in range(1, harmonics + 1, 2) if f0 * k < sr / 2)
  return (amp * x * np.exp(-decay * t)).astype(np.float32)


def write_notes(folder, specs, csv_name="labels.csv", header="path,instrument,pitch"):
  """Writes notes and a label CSV.

  Args:
    folder: Destination folder (created).
    specs: (relative path, instrument, pitch label, waveform, sample rate[, subtype]).
    csv_name: CSV file name inside `folder`.
    header: CSV header line.

  Returns:
    The CSV path.
  """
  os.makedirs(folder, exist_ok=True)
  lines = [header]
  for spec in specs:
    rel, instrument, pitch, wave, sr = spec[:5]
    subtype = spec[5] if len(spec) > 5 else None
    path = os.path.join(folder, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if wave is not None:
      soundfile.write(path, wave, sr, subtype=subtype)
    lines.append(f"{rel},{instrument},{pitch}")
  csv_path = os.path.join(folder, csv_name)
  with open(csv_path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return csv_path


def toy_specs(instruments=("sine", "square"), pitches=range(60, 66), velocities=(0.2, 0.5),
              rates=(44100, 16000, 48000)):
  """Two separable toy 'instruments' over a few pitches and dynamics, mixed rates."""
  specs = []
  for inst_i, inst in enumerate(instruments):
    for p in pitches:
      for v in velocities:
        sr = rates[(p + inst_i) % len(rates)]
        wave = tone(p, sr, 0.8, harmonics=1 + 8 * inst_i, amp=v)
        specs.append((f"audio/{inst}_{p}_{v}.wav", inst, p, wave, sr))
  return specs


def write_nsynth(path, families=(("guitar", 1), ("brass", 9)), pitches=range(60, 70)):
  """A TFRecord file in NSynth's schema: 4 s notes at 16 kHz, one per family and pitch,
  keyed `<family>_acoustic_000-<pitch>-075`; returns its path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def feature(kind, value):
    if kind == "bytes":
      return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
    if kind == "int":
      return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=value.tolist()))

  with tf.io.TFRecordWriter(path) as w:
    for family, harmonics in families:
      for pitch in pitches:
        example = {
            "note_str": feature("bytes", f"{family}_acoustic_000-{pitch:03d}-075"),
            "pitch": feature("int", pitch), "velocity": feature("int", 75),
            "sample_rate": feature("int", 16000),
            "instrument_family_str": feature("bytes", family),
            "instrument_str": feature("bytes", f"{family}_acoustic_000"),
            "audio": feature("float", tone(pitch, 16000, 4.0, harmonics=harmonics)),
        }
        w.write(tf.train.Example(features=tf.train.Features(feature=example))
                .SerializeToString())
  return path


def write_tinysol(root):
  """A small TinySOL download under `root` (a pathlib.Path): its metadata CSV and 12
  notes in its audio layout (Vc and Fl at C4, D4, E4, pp and ff)."""
  header = ("Path,Fold,Family,Instrument (abbr.),Instrument (in full),Technique (abbr.),"
            "Technique (in full),Pitch,Pitch ID,Dynamics,Dynamics ID,Instance ID,"
            "String ID (if applicable),Needed digital retuning")
  lines = [header]
  for inst, family, full in (("Vc", "Strings", "Violoncello"), ("Fl", "Winds", "Flute")):
    for midi, name in ((60, "C4"), (62, "D4"), (64, "E4")):
      for dyn in ("pp", "ff"):
        rel = f"{family}/{full}/ordinario/{inst}-ord-{name}-{dyn}-N-N.wav"
        os.makedirs(root / "TinySOL" / os.path.dirname(rel), exist_ok=True)
        soundfile.write(str(root / "TinySOL" / rel), tone(midi, 44100, 0.6), 44100)
        lines.append(f"{rel},0,{family},{inst},{full},ord,ordinario,{name},{midi},{dyn},"
                     "0,0,,FALSE")
  (root / "TinySOL_metadata.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def toy_csv(tmp_path):
  """A folder of 24 toy notes with labels.csv; returns the CSV path."""
  return write_notes(str(tmp_path / "toy"), toy_specs())


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
  """The toy notes prepared once per test module (bin/train tests)."""
  from tfgmvae.data.prepare import PrepareConfig, prepare  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("train_data")
  csv_path = write_notes(str(root / "notes"), toy_specs())
  out = str(root / "prepared")
  prepare(PrepareConfig("csv", csv_path, out), log=lambda *_: None)
  return out


# The longest modules (a minute or more on two cores) start first: CI runs the suite with
# `-n 3 --dist loadfile`, which hands whole modules to free workers in collection order,
# so a long module collected last would run alone at the end while the other workers idle.
LONGEST_FIRST = ("test_evaluate.py", "test_train_cli.py", "test_serving.py",
                 "test_train.py", "test_train_resume.py", "test_distributed.py",
                 "test_quickstart.py", "test_model.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)   # stable: the order within a module and among the rest is kept
