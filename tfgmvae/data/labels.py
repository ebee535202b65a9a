"""Pitch labels: MIDI numbers and note names such as `C#4`, `Bb2` or `A0`."""

import math
import re

_STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "s": 1, "b": -1, "♭": -1, "##": 2, "bb": -2}
_NOTE = re.compile(r"^([A-Ga-g])(##|bb|#|♯|b|♭|s)?(-?\d+)$")
_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name_to_midi(name: str) -> int:
  """MIDI number of a scientific-pitch note name (C4 = 60, A4 = 69).

  Raises:
    ValueError: not a note name, or outside MIDI 0..127.
  """
  m = _NOTE.match(name.strip())
  if not m:
    raise ValueError(
        f"{name!r} is not a note name (expected e.g. C4, C#4, Db4 or a MIDI number)")
  step, accidental, octave = m.groups()
  midi = 12 * (int(octave) + 1) + _STEPS[step.upper()] + _ACCIDENTALS[accidental or ""]
  if not 0 <= midi <= 127:
    raise ValueError(f"{name!r} is MIDI {midi}, outside 0..127")
  return midi


def parse_pitch(value) -> int:
  """A pitch given as a MIDI number (int, '60', '60.0') or as a note name ('C#4').

  Raises:
    ValueError: neither form, a fractional MIDI number, or outside 0..127.
  """
  if isinstance(value, (int,)) and not isinstance(value, bool):
    midi = value
  else:
    text = str(value).strip()
    if not text:
      raise ValueError("empty pitch (expected a MIDI number or a note name like C#4)")
    try:
      number = float(text)
    except ValueError:
      return note_name_to_midi(text)
    if (not re.fullmatch(r"[+-]?[0-9]+(\.[0-9]*)?", text)   # 1e2, nan, inf, .5: not
        or not math.isfinite(number) or number != int(number)):   # written as MIDI is
      raise ValueError(f"pitch {text!r} is not a whole MIDI number (expected 0..127 or a "
                       "note name like C#4)")
    midi = int(number)
  if not 0 <= midi <= 127:
    raise ValueError(f"pitch {value!r} is outside MIDI 0..127")
  return midi


def midi_to_note_name(midi: int) -> str:
  """Note name with sharps, e.g. 61 -> 'C#4'."""
  return f"{_NAMES[midi % 12]}{midi // 12 - 1}"
