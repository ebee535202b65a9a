"""Pitch labels: MIDI numbers and note names."""

import pytest

from tfgmvae.data.labels import midi_to_note_name, note_name_to_midi, parse_pitch


@pytest.mark.parametrize("text,midi", [
    ("C4", 60), ("C#4", 61), ("Db4", 61), ("A4", 69), ("A0", 21), ("C8", 108),
    ("B#3", 60), ("Cb4", 59), ("F##2", 43), ("c-1", 0), ("G9", 127), ("E♭5", 75)])
def test_note_names(text, midi):
  assert note_name_to_midi(text) == midi
  assert parse_pitch(text) == midi


@pytest.mark.parametrize("value,midi", [(60, 60), ("60", 60), ("60.0", 60), (" 72 ", 72)])
def test_midi_numbers(value, midi):
  assert parse_pitch(value) == midi


@pytest.mark.parametrize("bad", ["H4", "C", "C#", "60.5", "", "128", "-1", "G#9", "do4",
                                 "inf", "-inf", "nan", "1e400", "1e2", "6E1", ".6e2"])
def test_bad_pitches_are_errors_that_quote_the_value(bad):
  with pytest.raises(ValueError) as info:
    parse_pitch(bad)
  assert (repr(bad.strip()) in str(info.value) or "empty" in str(info.value)
          or bad.strip() in str(info.value))


def test_names_round_trip():
  for midi in range(128):
    assert note_name_to_midi(midi_to_note_name(midi)) == midi
