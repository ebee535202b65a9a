"""The default training corpus: isolated notes rendered with FluidSynth from GM soundfonts.

Every (soundfont, instrument, MIDI pitch, dynamic) is rendered as one mono 16-bit file,
with reverb and chorus off, from a clean synthesizer state, so a note's audio depends only
on that note and the config, never on what was rendered before it. The corpus lands in

  out_dir/labels.csv                     path,instrument,pitch,velocity,dynamics,soundfont
  out_dir/audio/<Inst>/<Inst>-<soundfont stem>-<midi>-<dyn>.<flac|wav>

Determinism: FluidSynth's own 16-bit output adds random dither whose state carries over
from call to call, so notes are rendered in float32 (`fluid_synth_write_float`) and
quantised here by rounding. Rendering proceeds in whole 64-sample FluidSynth blocks (the
granularity at which it applies MIDI events), so the note-off lands on the first block
boundary at or after `note_seconds` (at most 1.5 ms late at 44.1 kHz); the file is then cut
to exactly `round((note_seconds + release_seconds) * sample_rate)` samples.

FluidSynth also carries state across notes that no reset clears (it changes a note's first
64 samples); every note is therefore primed, see `_SoundfontSynth.render_note`.

Needs pyfluidsynth and the FluidSynth C library (Debian: libfluidsynth3). This module never
imports TensorFlow.

Usage:

  from tfgmvae import render
  config = render.RenderConfig(out_dir="/data/corpus", soundfonts=render.default_soundfonts())
  rows = render.render_corpus(config)   # ~3,000 notes, well under a minute
  print(render.count_by_instrument(rows))

or from the shell: bin/make_dataset --out_dir=/data/corpus
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import math
import os
import pathlib
import shutil
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import soundfile

from tfgmvae.data import paths

LABELS_FILENAME = "labels.csv"
LABEL_COLUMNS = ("path", "instrument", "pitch", "velocity", "dynamics", "soundfont")

# A note whose peak stays below -70 dBFS (about 10 LSB at 16 bit) counts as silent. The
# quietest note of the default corpus peaks at -42 dBFS, the loudest at -6.4 dBFS.
SILENCE_PEAK = 10.0 ** (-70.0 / 20.0)

_BLOCK = 64  # FluidSynth's internal block size (FLUID_BUFSIZE).
_MAX_RESET_BLOCKS = 64
MAX_SECONDS = 60.0   # a note and its release, at most
MAX_GAIN = 10.0      # FluidSynth's synth.gain range is 0..10 (it keeps 0.2 otherwise)


@dataclasses.dataclass(frozen=True)
class InstrumentSpec:
  """One instrument of the corpus.

  Attributes:
    name: Short name used in file names and labels, e.g. "Vn".
    long_name: Human-readable name, e.g. "violin".
    gm_program: 0-based General-MIDI program number (bank 0).
    low: Lowest MIDI pitch rendered (inclusive), the instrument's real sounding range.
    high: Highest MIDI pitch rendered (inclusive).
  """

  name: str
  long_name: str
  gm_program: int
  low: int
  high: int

  def __post_init__(self):
    if not self.name or any(c in self.name for c in "-/,\\ "):
      raise ValueError(f"InstrumentSpec name {self.name!r} must be non-empty, without '-', "
                       "'/', ',', '\\' or spaces (it is used in file names).")
    if not 0 <= self.gm_program <= 127:
      raise ValueError(f"{self.name}: gm_program {self.gm_program} is not in 0..127.")
    if not 0 <= self.low <= self.high <= 127:
      raise ValueError(f"{self.name}: need 0 <= low <= high <= 127, got {self.low}..{self.high}.")

  @property
  def pitches(self) -> range:
    """MIDI pitches low..high inclusive."""
    return range(self.low, self.high + 1)


# The paper's 12 instruments over their usual orchestral ranges, as sounding (concert)
# pitch: the transposing English horn, B-flat clarinet and E-flat alto saxophone are given
# as they sound, not as written. Both default soundfonts play every key of these ranges
# except FluidR3_GM's violin at 94 (see KNOWN_PRESET_GAPS).
PAPER_INSTRUMENTS: tuple[InstrumentSpec, ...] = (
    InstrumentSpec("Pno", "piano", 0, 21, 108),
    InstrumentSpec("Vn", "violin", 40, 55, 100),
    InstrumentSpec("Vc", "cello", 42, 36, 76),
    InstrumentSpec("Ehn", "English horn", 69, 52, 81),
    InstrumentSpec("Fhn", "French horn", 60, 34, 77),
    InstrumentSpec("Trtb", "tenor trombone", 57, 40, 72),
    InstrumentSpec("Trop", "trumpet", 56, 54, 84),
    InstrumentSpec("Sax", "alto saxophone", 65, 49, 80),
    InstrumentSpec("Bn", "bassoon", 70, 34, 75),
    InstrumentSpec("Clr", "clarinet", 71, 50, 94),
    InstrumentSpec("Fl", "flute", 73, 60, 96),
    InstrumentSpec("Ob", "oboe", 68, 58, 93),
)

# Dynamic marking -> MIDI note-on velocity.
DYNAMICS: tuple[tuple[str, int], ...] = (("pp", 40), ("mf", 80), ("ff", 120))

# (soundfont file stem, GM program, MIDI pitch) that a soundfont cannot play: its preset
# has no sample zone for that key, so FluidSynth renders silence. These notes are left out
# of the corpus; any other silent note is an error. FluidR3_GM's Violin has a one-key hole
# at 94 (B-flat 6): its zones end at 93 and resume at 95.
KNOWN_PRESET_GAPS: tuple[tuple[str, int, int], ...] = (("FluidR3_GM", 40, 94),)

_SF2_DIR = "/usr/share/sounds/sf2"
_SF3_DIR = "/usr/share/sounds/sf3"


def default_soundfonts(sf2_dir: str = _SF2_DIR, sf3_dir: str = _SF3_DIR) -> tuple[str, ...]:
  """The two Debian soundfonts of the default corpus.

  Args:
    sf2_dir: Where Debian installs .sf2 soundfonts.
    sf3_dir: Where Debian installs .sf3 soundfonts (used only as a fallback for MuseScore).

  Returns:
    (FluidR3_GM.sf2, MuseScore_General_Full.sf2), the latter replaced by
    MuseScore_General_Full.sf3 when only that is installed.

  Raises:
    FileNotFoundError: A soundfont is missing; the message names the path and the Debian
      package that provides it.
  """
  fluid = os.path.join(sf2_dir, "FluidR3_GM.sf2")
  if not os.path.isfile(fluid):
    raise FileNotFoundError(
        f"Soundfont {fluid} not found. Install it with `apt-get install fluid-soundfont-gm`, "
        "or pass soundfont paths explicitly.")
  muse_sf2 = os.path.join(sf2_dir, "MuseScore_General_Full.sf2")
  muse_sf3 = os.path.join(sf3_dir, "MuseScore_General_Full.sf3")
  for muse in (muse_sf2, muse_sf3):
    if os.path.isfile(muse):
      return (fluid, muse)
  raise FileNotFoundError(
      f"Soundfont {muse_sf2} (or {muse_sf3}) not found. Install it with "
      "`apt-get install musescore-general-soundfont-lossless`, or pass soundfont paths "
      "explicitly.")


def soundfont_stem(path: str | os.PathLike) -> str:
  """The name a soundfont goes by in file names and labels: its file name without suffix."""
  return pathlib.Path(path).stem


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """What to render and where.

  Attributes:
    out_dir: Directory to create; must not exist or be empty.
    soundfonts: Paths of .sf2/.sf3 files, rendered in turn. Their file stems must differ.
    sample_rate: Output sample rate in Hz (FluidSynth accepts 8000..96000).
    note_seconds: How long each note is held before note-off.
    release_seconds: Audio kept after note-off.
    instruments: Instruments to render, each over its low..high range.
    dynamics: (name, MIDI velocity) pairs.
    file_format: "flac" or "wav"; always 16-bit PCM mono.
    gain: FluidSynth master gain. At 1.0 the default corpus peaks around -6 dBFS; a note
      that would clip raises an error.
    skip_notes: (soundfont stem, GM program, MIDI pitch) triples not rendered because the
      soundfont has no sample for them (see KNOWN_PRESET_GAPS).
  """

  out_dir: str
  soundfonts: tuple[str, ...]
  sample_rate: int = 44100
  note_seconds: float = 1.0
  release_seconds: float = 0.5
  instruments: tuple[InstrumentSpec, ...] = PAPER_INSTRUMENTS
  dynamics: tuple[tuple[str, int], ...] = DYNAMICS
  file_format: str = "flac"
  gain: float = 1.0
  skip_notes: tuple[tuple[str, int, int], ...] = KNOWN_PRESET_GAPS

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    set_("out_dir", os.fspath(self.out_dir))
    if isinstance(self.soundfonts, (str, os.PathLike)):
      raise ValueError("soundfonts must be a sequence of paths, not a single path.")
    set_("soundfonts", tuple(os.fspath(p) for p in self.soundfonts))
    set_("instruments", tuple(self.instruments))
    set_("dynamics", tuple((str(n), int(v)) for n, v in self.dynamics))
    set_("skip_notes", tuple((str(s), int(p), int(k)) for s, p, k in self.skip_notes))
    if not self.soundfonts:
      raise ValueError("RenderConfig.soundfonts is empty.")
    stems = [soundfont_stem(p) for p in self.soundfonts]
    if len(set(stems)) != len(stems):
      raise ValueError(f"Soundfont file stems must be unique (they name the files): {stems}.")
    if not 8000 <= self.sample_rate <= 96000:
      raise ValueError(f"--sample_rate={self.sample_rate}: expected FluidSynth's range "
                       "8000..96000 (Hz).")
    shortest = _BLOCK / self.sample_rate
    if not shortest <= self.note_seconds <= MAX_SECONDS:
      raise ValueError(f"--note_seconds={self.note_seconds}: expected {shortest:.4f} "
                       f"(one {_BLOCK}-sample FluidSynth block) to {MAX_SECONDS:g} seconds.")
    if not 0 <= self.release_seconds <= MAX_SECONDS - self.note_seconds:
      raise ValueError(f"--release_seconds={self.release_seconds}: expected 0 to "
                       f"{MAX_SECONDS - self.note_seconds:g} seconds (a note and its "
                       f"release last {MAX_SECONDS:g} s at most).")
    if not self.instruments:
      raise ValueError("RenderConfig.instruments is empty.")
    names = [i.name for i in self.instruments]
    if len(set(names)) != len(names):
      raise ValueError(f"Instrument names must be unique: {names}.")
    if not self.dynamics:
      raise ValueError("RenderConfig.dynamics is empty.")
    dyn_names = [n for n, _ in self.dynamics]
    if len(set(dyn_names)) != len(dyn_names) or not all(n.isalnum() for n in dyn_names):
      raise ValueError(f"Dynamics names must be unique and alphanumeric: {dyn_names}.")
    if not all(1 <= v <= 127 for _, v in self.dynamics):
      raise ValueError(f"Velocities must be in 1..127: {self.dynamics}.")
    if self.file_format not in ("flac", "wav"):
      raise ValueError(f"file_format must be 'flac' or 'wav', got {self.file_format!r}.")
    if not 0 < self.gain <= MAX_GAIN:
      raise ValueError(f"--gain={self.gain}: expected FluidSynth's master gain range, "
                       f"above 0 up to {MAX_GAIN:g}.")

  @property
  def num_samples(self) -> int:
    """Length in samples of every rendered file."""
    return int(round((self.note_seconds + self.release_seconds) * self.sample_rate))


def _import_fluidsynth():
  """Imports pyfluidsynth, turning a missing package or C library into a helpful error."""
  hint = ("Rendering needs pyfluidsynth and the FluidSynth C library: "
          "`apt-get install libfluidsynth3` and `pip install pyfluidsynth==1.3.4` "
          "(or `pip install tfgmvae[render]`).")
  try:
    import fluidsynth  # pylint: disable=g-import-not-at-top
  except (ImportError, OSError) as e:
    raise ImportError(f"Cannot load FluidSynth ({e}). {hint}") from e
  lib = ctypes.CDLL(fluidsynth.lib)  # Same handle pyfluidsynth already holds.
  if not hasattr(lib, "fluid_synth_write_float"):
    raise ImportError(f"{fluidsynth.lib} lacks fluid_synth_write_float. {hint}")
  write = lib.fluid_synth_write_float
  write.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                    ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
  write.restype = ctypes.c_int
  return fluidsynth, write


class _SoundfontSynth:
  """One FluidSynth instance with one soundfont loaded, rendering one note at a time."""

  def __init__(self, fluidsynth, write_float, path: str, sample_rate: int, gain: float):
    self.path = path
    self._write_float = write_float
    settings = {"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.cpu-cores": 1,
                "synth.dynamic-sample-loading": 0}
    self._synth = fluidsynth.Synth(gain=float(gain), samplerate=float(sample_rate),
                                   channels=16, **settings)
    try:
      got_rate = self._synth.get_setting("synth.sample-rate")
      if got_rate is None or abs(float(got_rate) - sample_rate) > 1e-6:
        raise ValueError(f"FluidSynth refused sample rate {sample_rate} (got {got_rate}).")
      got_gain = self._synth.get_setting("synth.gain")
      if got_gain is None or abs(float(got_gain) - gain) > 1e-6:
        raise ValueError(f"FluidSynth refused gain {gain} (got {got_gain}).")
      for key, value in settings.items():
        if self._synth.get_setting(key) != value:
          raise RuntimeError(f"FluidSynth did not accept setting {key}={value}.")
      self._sfid = self._synth.sfload(path)
      if self._sfid == -1:
        raise RuntimeError(f"FluidSynth could not load soundfont {path} (sfload returned -1); "
                           "is it a valid .sf2/.sf3 file?")
      self._reset()
    except BaseException:
      self.close()
      raise

  def close(self):
    if self._synth is not None:
      self._synth.delete()
      self._synth = None

  def _write(self, n: int) -> np.ndarray:
    """Renders n samples (a multiple of the block size) and mixes them to mono."""
    left = np.zeros(n, np.float32)
    right = np.zeros(n, np.float32)
    if n:
      rc = self._write_float(self._synth.synth, n, left.ctypes.data, 0, 1,
                             right.ctypes.data, 0, 1)
      if rc != 0:
        raise RuntimeError(f"fluid_synth_write_float failed ({rc}) for {self.path}.")
    return (left + right) * np.float32(0.5)

  def _reset(self):
    """Kills all voices and resets channels, then checks the synth has gone silent."""
    # all_sounds_off kills the voices at the next block; a system_reset sent in the same
    # block would merely release them, so render that block before resetting channels.
    self._synth.all_sounds_off(0)
    self._write(_BLOCK)
    self._synth.system_reset()
    for _ in range(_MAX_RESET_BLOCKS):
      if not self._write(_BLOCK).any():
        return
    raise RuntimeError(f"FluidSynth did not fall silent after a reset ({self.path}).")

  def _select(self, program: int, pitch: int):
    if self._synth.program_select(0, self._sfid, 0, program) != 0:
      raise RuntimeError(f"Soundfont {self.path} has no preset for GM program {program} "
                         f"(bank 0), needed to render pitch {pitch}.")

  def render_note(self, program: int, pitch: int, velocity: int, on_samples: int,
                  total_samples: int) -> np.ndarray:
    """Renders one note in float32 mono, total_samples long, then resets the synth."""
    on_blocks = _BLOCK * math.ceil(on_samples / _BLOCK)
    total_blocks = max(on_blocks, _BLOCK * math.ceil(total_samples / _BLOCK))
    try:
      # With FluidSynth 2.3 the first 64-sample block of a note depends on the previous
      # note, even after the resets (apparently each reused voice ramps its output gains
      # from the values its last note left). Priming plays this very note for one block
      # and kills it, so the real note's voices start from its own gains: the audio is
      # then identical to a fresh synth's, whatever was rendered before (tested).
      self._select(program, pitch)
      self._synth.noteon(0, pitch, velocity)
      self._write(_BLOCK)
      self._reset()
      self._select(program, pitch)
      self._synth.noteon(0, pitch, velocity)
      held = self._write(on_blocks)
      self._synth.noteoff(0, pitch)
      released = self._write(total_blocks - on_blocks)
    finally:
      self._reset()
    return np.concatenate([held, released])[:total_samples]


def _to_int16(audio: np.ndarray) -> np.ndarray:
  return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


def check_out_dir(out_dir: pathlib.Path):
  """Raises FileExistsError unless `out_dir` is missing or an empty folder (not a link:
  the finished corpus is renamed into place, which a link would refuse at the end)."""
  if out_dir.is_symlink():
    raise FileExistsError(f"{out_dir} is a symbolic link (to {os.readlink(out_dir)}); give "
                          "the folder itself, or a new path, as out_dir.")
  if out_dir.exists():
    if not out_dir.is_dir():
      raise FileExistsError(f"{out_dir} exists and is not a directory; refusing to overwrite "
                            "it. Choose another out_dir.")
    if any(out_dir.iterdir()):
      raise FileExistsError(
          f"Output directory {out_dir} already exists and is not empty; nothing is ever "
          "overwritten. Choose a new out_dir, or move/delete the old one first.")


def _plan(config: RenderConfig) -> list[tuple[int, InstrumentSpec, int, str, int]]:
  """All notes to render: (soundfont index, instrument, pitch, dynamics, velocity)."""
  skip = set(config.skip_notes)
  jobs = []
  for sf_index, sf_path in enumerate(config.soundfonts):
    stem = soundfont_stem(sf_path)
    for inst in config.instruments:
      for pitch in inst.pitches:
        if (stem, inst.gm_program, pitch) in skip:
          continue
        for dyn, velocity in config.dynamics:
          jobs.append((sf_index, inst, pitch, dyn, velocity))
  return jobs


def _row_sort_key(row: dict) -> tuple:
  return (row["instrument"], row["soundfont"], row["pitch"], row["velocity"])


def _render_into(root: pathlib.Path, config: RenderConfig, progress) -> list[dict]:
  fluidsynth, write_float = _import_fluidsynth()
  jobs = _plan(config)
  on_samples = int(round(config.note_seconds * config.sample_rate))
  subtype_format = {"flac": "FLAC", "wav": "WAV"}[config.file_format]
  rows = []
  synth = None
  synth_index = None
  try:
    for done, (sf_index, inst, pitch, dyn, velocity) in enumerate(jobs, start=1):
      sf_path = config.soundfonts[sf_index]
      if synth_index != sf_index:
        if synth is not None:
          synth.close()
          synth = None
        synth = _SoundfontSynth(fluidsynth, write_float, sf_path, config.sample_rate,
                                config.gain)
        synth_index = sf_index
      audio = synth.render_note(inst.gm_program, pitch, velocity, on_samples,
                                config.num_samples)
      peak = float(np.max(np.abs(audio)))
      where = (f"soundfont {sf_path}, GM program {inst.gm_program} ({inst.name}), "
               f"pitch {pitch}, velocity {velocity}")
      if not peak >= SILENCE_PEAK:
        raise RuntimeError(
            f"Silent note: {where} (peak {peak:.2g}). The preset probably has no sample for "
            "this key; narrow the instrument's range or add (soundfont stem, program, "
            "pitch) to RenderConfig.skip_notes.")
      if peak > 1.0:
        raise RuntimeError(f"Clipped note: {where} (peak {peak:.3f} > 1); lower the gain "
                           f"(now {config.gain}).")
      stem = soundfont_stem(sf_path)
      rel = f"audio/{inst.name}/{inst.name}-{stem}-{pitch}-{dyn}.{config.file_format}"
      dest = root / rel
      dest.parent.mkdir(parents=True, exist_ok=True)
      soundfile.write(dest, _to_int16(audio), config.sample_rate, subtype="PCM_16",
                      format=subtype_format)
      row = {"path": rel, "instrument": inst.name, "pitch": pitch, "velocity": velocity,
             "dynamics": dyn, "soundfont": stem}
      rows.append(row)
      if progress is not None:
        progress(done, len(jobs), row)
  finally:
    if synth is not None:
      synth.close()
  rows.sort(key=_row_sort_key)
  return rows


def write_labels(path: str | os.PathLike, rows: Iterable[dict]):
  """Writes rows to a labels CSV with the LABEL_COLUMNS header."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
      writer.writerow({k: row[k] for k in LABEL_COLUMNS})


def render_corpus(config: RenderConfig,
                  progress: Callable[[int, int, dict], Any] | None = None,
                  log: Callable[[str], Any] = print) -> list[dict]:
  """Renders every (soundfont, instrument, pitch, dynamic) of config into config.out_dir.

  The corpus is built in a temporary sibling directory and renamed to out_dir only once
  complete, so a failure never leaves a partial corpus at out_dir.

  Args:
    config: What to render and where.
    progress: Called after each note as progress(notes_done, notes_total, row).
    log: Says which unfinished renders of killed processes it removed first.

  Returns:
    The label rows, as written to out_dir/labels.csv: dicts with keys path (relative to
    the CSV), instrument (short name), pitch (MIDI int), velocity (int), dynamics and
    soundfont (file stem), sorted by (instrument, soundfont, pitch, velocity).

  Raises:
    FileExistsError: out_dir exists and is not an empty directory.
    FileNotFoundError: A soundfont file does not exist.
    ImportError: pyfluidsynth or libfluidsynth cannot be loaded.
    RuntimeError: A soundfont fails to load, lacks a preset, or renders a silent or
      clipped note; the message names the soundfont, program and pitch.
  """
  out_dir = pathlib.Path(config.out_dir).absolute()
  check_out_dir(out_dir)
  for sf_path in config.soundfonts:
    if not os.path.isfile(sf_path):
      raise FileNotFoundError(f"Soundfont {sf_path} does not exist or is not a file.")
  _import_fluidsynth()  # Fail before creating anything.
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  partial = f".{out_dir.name}.partial-"
  paths.remove_abandoned_temp_dirs(str(out_dir.parent), partial, log)
  tmp = pathlib.Path(paths.make_temp_dir(str(out_dir.parent), partial))
  try:
    rows = _render_into(tmp, config, progress)
    write_labels(tmp / LABELS_FILENAME, rows)
    check_out_dir(out_dir)
    try:
      os.rename(tmp, out_dir)  # Atomic; replaces only a missing or empty directory.
    except OSError as e:
      raise FileExistsError(f"Could not move the finished corpus into {out_dir}: {e}. "
                            "Was it created meanwhile? Choose a new out_dir.") from e
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return rows


def count_by_instrument(rows: Sequence[dict]) -> dict[str, int]:
  """Number of rows per instrument short name, in order of first appearance."""
  counts: dict[str, int] = {}
  for row in rows:
    counts[row["instrument"]] = counts.get(row["instrument"], 0) + 1
  return counts
