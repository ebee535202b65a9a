"""Using a trained model: open it (an export or a run), synthesise, transfer, write files.

`open_model` accepts a SavedModel version folder (`export/NAME/3`), a model's base folder
(`export/NAME`: its highest version) or a training run directory (its best checkpoint,
wrapped live). Either way the result calls the same signatures, so the command-line tools
and the tests treat exports and runs alike.
"""

import dataclasses
import itertools
import json
import os
import re
import shutil

import numpy as np
import tensorflow as tf

from tfgmvae.audio import (RESAMPLE_MARGIN, display, io, load_segment, silence_problem,
                           spectral)
from tfgmvae.audio.config import AudioConfig
from tfgmvae.audio.resample import resample
from tfgmvae.data.paths import folder_problem
from tfgmvae.serving import export as export_lib
from tfgmvae.serving.module import MAX_RATE, MIN_RATE

PEAK = 0.99


class ModelPathError(ValueError):
  """`--model` names neither an export nor a run."""


@dataclasses.dataclass
class Model:
  """A trained model's signatures and vocabularies."""
  path: str
  signatures: dict
  instruments: tuple[str, ...]
  pitches: tuple[int, ...]
  sample_rate: int
  meta: dict              # the export's assets.extra/tfgmvae.json (or the same for a run)
  keep: object = None     # the loaded object or live module that owns the signatures

  def describe(self) -> str:
    """The export folder, or the run folder and the checkpoint it serves."""
    if os.path.isfile(os.path.join(self.path, "saved_model.pb")):
      return f"the export {self.path}"
    return f"the run {self.path} at {os.path.basename(self.meta['checkpoint'])}"

  def run(self, signature: str, **inputs) -> dict[str, np.ndarray]:
    """Calls a signature with NumPy-convertible inputs; returns NumPy outputs."""
    fn = self.signatures[signature]
    positional, named = fn.structured_input_signature   # live: positional; loaded: named
    specs = {spec.name: spec for spec in positional} | named
    args = {}
    for name, spec in specs.items():
      if name not in inputs:
        raise TypeError(f"signature {signature!r} needs input {name!r}")
      args[name] = tf.constant(inputs[name], dtype=spec.dtype)
    return {k: v.numpy() for k, v in fn(**args).items()}


def resolve(path: str) -> tuple[str, str]:
  """('saved_model', folder) or ('run', folder) for a --model path."""
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return "saved_model", path
  if os.path.isfile(os.path.join(path, export_lib.MODEL_FILE)):
    return "run", path
  found = [v for v in export_lib.versions(path)
            if tf.io.gfile.exists(os.path.join(path, str(v), "saved_model.pb"))]
  if found:
    return "saved_model", os.path.join(path, str(found[-1]))
  raise ModelPathError(
      f"--model={path}: expected an export (a folder with saved_model.pb, or a folder of "
      "numbered versions written by bin/export) or a run directory (with model.json).")


def open_model(path: str, checkpoint: str | None = None,
               griffin_lim_iters: int | None = None) -> Model:
  """Opens an export or a run (see the module docstring).

  Args:
    path: An export (version or base folder) or a run directory.
    checkpoint: With a run: 'best' (the default), 'latest' or a checkpoint prefix.
    griffin_lim_iters: With a run: Griffin-Lim iterations of the audio (default 32).

  Raises:
    ValueError: `checkpoint` or `griffin_lim_iters` given with an export, which holds
      one checkpoint and its own iteration count (both fixed by bin/export).
  """
  kind, folder = resolve(path)
  given = {name: value for name, value in (("checkpoint", checkpoint),
                                           ("griffin_lim_iters", griffin_lim_iters))
           if value is not None}
  if kind == "saved_model":
    meta = metadata(folder)
    if given:
      it = "it" if len(given) == 1 else "them"
      raise ValueError(
          f"{' and '.join(f'--{k}={v}' for k, v in given.items())}: "
          f"{'applies' if it == 'it' else 'apply'} to a run "
          f"directory, but --model={path} is the export {folder} (of "
          f"{os.path.basename(str(meta.get('checkpoint', '?')))}, "
          f"{meta.get('griffin_lim_iters', '?')} Griffin-Lim iterations); leave {it} out, "
          "give the run directory instead, or export again with bin/export "
          "--checkpoint=... --griffin_lim_iters=...")
    loaded = tf.saved_model.load(folder)
    return Model(folder, dict(loaded.signatures),
                 tuple(s.decode() for s in loaded.instruments.numpy()),
                 tuple(int(p) for p in loaded.pitches.numpy()),
                 int(loaded.sample_rate.numpy()), meta, loaded)
  module, meta = export_lib.build_module(folder, **given)
  return Model(folder, module.signatures(), tuple(meta["instruments"]),
               tuple(meta["pitches"]), int(meta["output_sample_rate"]), meta, module)


def real_mel(model: Model, path: str) -> np.ndarray:
  """The normalised log-mel [T, F] of a recorded note, as the model's training saw it."""
  config = AudioConfig.from_dict(model.meta["audio"])
  log_mel = spectral.log_mel(load_segment(path, config), config)
  return spectral.normalise(log_mel, model.meta["log_mel_min"],
                            model.meta["log_mel_max"]).numpy()


def check_vocabulary(model: Model, instruments, pitches=(), what: str = "instrument"):
  """Raises ValueError for an instrument or pitch the model does not know; the message
  starts with `what` (e.g. a flag's name) and the name, and lists the model's ones."""
  for name in instruments:
    if name not in model.instruments:
      raise ValueError(f"{what} {name!r} is not in the model's vocabulary; expected "
                       f"one of {', '.join(model.instruments)}.")
  for p in pitches:
    if p not in model.pitches:
      known = (", ".join(str(q) for q in model.pitches) if len(model.pitches) <= 24 else
               f"{model.pitches[0]}..{model.pitches[-1]} ({len(model.pitches)} MIDI "
               "numbers, see the export's assets.extra/tfgmvae.json)")
      raise ValueError(f"pitch {p} is not in the model's vocabulary; expected one of "
                       f"{known}.")


def range_warnings(model: Model, instruments, pitches) -> list[str]:
  """One line per instrument asked for pitches outside the range of its training notes
  (the model knows such a pitch from other instruments only, so the note is a guess);
  none for a model that does not record the ranges."""
  ranges = model.meta.get("pitch_ranges") or {}
  out = []
  for name in dict.fromkeys(instruments):
    if name not in ranges:
      continue
    lo, hi = ranges[name]
    outside = [p for p in dict.fromkeys(pitches) if not lo <= p <= hi]
    if outside:
      out.append(f"{name} was trained on MIDI {lo}..{hi} only; "
                 f"{', '.join(str(p) for p in outside)} "
                 f"{'is' if len(outside) == 1 else 'are'} outside it, so expect a poor "
                 "note.")
  return out


def synthesize(model: Model, instruments, pitches, ws=(0.0,), seeds=(0,)) -> list[dict]:
  """One note per combination of instrument, pitch, w and seed.

  Returns:
    Dicts with the combination's values and its `mel` [T, F] and `audio` [n].
  """
  check_vocabulary(model, instruments, pitches)
  combos = list(itertools.product(instruments, pitches, ws, seeds))
  out = model.run("synthesize", instrument=[c[0] for c in combos],
                  pitch=[c[1] for c in combos], w=[c[2] for c in combos],
                  seed=[c[3] for c in combos])
  return [{"instrument": i, "pitch": p, "w": w, "seed": s, "mel": out["mel"][j],
           "audio": out["audio"][j]} for j, (i, p, w, s) in enumerate(combos)]


def short_input(model: Model, waveform, sample_rate: int, name: str) -> str | None:
  """A warning when a note ends before the end of the segment the model reads (the
  rest of the segment is silence, as preparation pads a short note); None otherwise."""
  config = model.meta["audio"]
  start, end = config["offset"], config["offset"] + config["duration"]
  # (Short by less than a hop, as the model's own 11,008-sample notes are, is not.)
  hop = config["hop_length"] / config["sample_rate"]
  if len(waveform) >= int(np.ceil(round((end - hop) * sample_rate, 6))):   # (0.2 + 0.1 > 0.3)
    return None
  seconds = len(waveform) / sample_rate
  missing = min(end - seconds, config["duration"])
  return (f"{name} is {seconds:.3g} s long; the model reads {start:g} s to {end:g} s of "
          f"a note, so the last {missing:.3g} s of that segment are silence.")


def _decibels(nats: float) -> float:
  """A difference of log-mel power (natural log) in decibels."""
  return 10.0 * float(nats) / np.log(10.0)


def loudest_bin(model: Model, waveform, sample_rate: int) -> float:
  """The largest value of the note's (unnormalised) log-mel, as the model computes it."""
  config = AudioConfig.from_dict(model.meta["audio"])
  start = int(round(config.offset * sample_rate))
  keep = int(np.ceil((config.duration + RESAMPLE_MARGIN) * sample_rate))
  kept = np.asarray(waveform, np.float32)[start:start + keep]
  segment = spectral.fit_segment(resample(kept, int(sample_rate), config.sample_rate),
                                 config)
  return float(np.max(spectral.log_mel(segment, config)))


def _refuse_silence(model: Model, waveform, sample_rate: int, name: str) -> None:
  """Raises ValueError if the note is silent where the model reads it (as preparation
  refuses such a note)."""
  config = model.meta["audio"]      # the model reads the segment after its offset
  start, end = config["offset"], config["offset"] + config["duration"]
  silent = silence_problem(
      name, np.asarray(waveform)[int(start * sample_rate):int(np.ceil(end * sample_rate))],
      float(config.get("silence_threshold", 0.0)), span=f"{start:g} s to {end:g} s: ")
  if silent:
    raise ValueError(silent)


def level_gain(model: Model, waveform, sample_rate: int, name: str = "the note") -> float:
  """The amplitude gain that brings the note's loudest log-mel bin to the training
  notes' median (`note_peaks`).

  Raises:
    ValueError: the model does not record its training notes' levels, or the note is
      silent where the model reads it (no gain would make it a note).
  """
  _refuse_silence(model, waveform, sample_rate, name)
  peaks = model.meta.get("note_peaks")
  if not peaks:
    raise ValueError(f"cannot match the level of {name}: the model does not record its "
                     "training notes' levels (its data was prepared by an earlier "
                     "tfgmvae); scale the note yourself, or prepare the data again and "
                     "retrain.")
  return float(np.exp((peaks[1] - loudest_bin(model, waveform, sample_rate)) / 2))


def level_warnings(model: Model, waveform, sample_rate: int, name: str,
                   remedy: str = "") -> list[str]:
  """Warnings when the note is louder or quieter than the notes the model trained on,
  or goes past full scale. The log-mel keeps each note's level (the normalisation is
  corpus-wide), so level is part of what the model hears as timbre: a note far from
  the training levels may be heard as another instrument or pitch.

  Compares the loudest bin of the note's log-mel with the training notes': their
  percentiles 1, 50 and 99 (`note_peaks`, recorded by preparation) when the model has
  them, else only the loudest training bin (`log_mel_max`). `remedy` follows the gain
  that would bring the note to their median (e.g. how to apply it).
  """
  out = []
  waveform = np.asarray(waveform, np.float32)
  peak = float(np.max(np.abs(waveform))) if waveform.size else 0.0
  if peak > 1.0:
    out.append(f"{name} goes past full scale (peak {peak:.3g} > 1); the training notes "
               "never did.")
  try:
    _refuse_silence(model, waveform, sample_rate, name)
  except ValueError:
    return out   # (refused as silent by the transfer itself)
  loudest = loudest_bin(model, waveform, sample_rate)
  peaks = model.meta.get("note_peaks")
  median = peaks[1] if peaks else None
  gain = "" if median is None else (
      f"; scaling it by {_decibels(median - loudest):+.1f} dB (x"
      f"{np.exp((median - loudest) / 2):.3g}) brings it to the training notes' median"
      + remedy)
  if loudest > model.meta["log_mel_max"]:
    out.append(f"{name} is louder than every training note (its loudest mel band is "
               f"{_decibels(loudest - model.meta['log_mel_max']):.1f} dB above theirs), so "
               f"the instrument and pitch the model hears may be wrong{gain}.")
  elif peaks and loudest > peaks[2]:
    out.append(f"{name} is louder than 99 % of the training notes (its loudest mel band "
               f"is {_decibels(loudest - median):.1f} dB above their median), so the "
               f"instrument and pitch the model hears may be off{gain}.")
  elif peaks and loudest < peaks[0]:
    out.append(f"{name} is quieter than 99 % of the training notes (its loudest mel band "
               f"is {_decibels(median - loudest):.1f} dB below their median), so the "
               f"instrument and pitch the model hears may be off{gain}.")
  return out


def transfer(model: Model, waveform, sample_rate: int, targets, alphas,
             source: str | None = None, name: str = "the note") -> list[dict]:
  """The note `waveform` moved towards each target instrument by each alpha.

  Raises:
    ValueError: an unknown instrument, or a note silent where the model reads it (as
      preparation refuses such a note; `name` says which in the message).
  """
  check_vocabulary(model, targets, what="target instrument")
  check_vocabulary(model, [source] if source else [], what="source instrument")
  combos = list(itertools.product(targets, alphas))
  config = model.meta["audio"]      # the model reads the segment after its offset
  if not MIN_RATE <= sample_rate <= MAX_RATE:   # the served graph's range: resample here
    waveform = resample(waveform, int(sample_rate), int(config["sample_rate"])).numpy()
    sample_rate = int(config["sample_rate"])
  _refuse_silence(model, waveform, sample_rate, name)
  keep = int(np.ceil((config["offset"] + config["duration"] + 0.1) * sample_rate))
  audio = np.repeat(np.asarray(waveform, np.float32)[None, :keep], len(combos), axis=0)
  inputs = {"audio": audio, "sample_rate": int(sample_rate),
            "target_instrument": [c[0] for c in combos], "alpha": [c[1] for c in combos]}
  if source:
    out = model.run("transfer_from_source", source_instrument=[source] * len(combos),
                    **inputs)
  else:
    out = model.run("transfer", **inputs)
  return [{"target": t, "alpha": a, "source": out["source_instrument"][j].decode(),
           "pitch": int(out["pitch"][j]), "mel": out["mel"][j], "audio": out["audio"][j]}
          for j, (t, a) in enumerate(combos)]


def output_paths(out: str, suffixes: list[str]) -> list[str]:
  """`out` itself for one output; `<stem>_<suffix>.wav` for each of several.

  Raises:
    ValueError: `out` does not end in .wav, or two outputs would get the same name.
  """
  stem, ext = os.path.splitext(out)
  if ext.lower() != ".wav":
    raise ValueError(f"--out={out}: expected a path ending in .wav (the spectrogram goes "
                     "beside it as .png).")
  paths = [out] if len(suffixes) == 1 else [f"{stem}_{s}{ext}" for s in suffixes]
  twice = sorted({p for p in paths if paths.count(p) > 1})
  if twice:
    raise ValueError(f"several outputs would be written to {', '.join(twice)}; give each "
                     "instrument, pitch, w, seed, target or alpha once.")
  return paths


def check_free(paths: list[str]) -> None:
  """Raises FileExistsError naming every output (WAV or its PNG) that already exists, and
  NotADirectoryError when an output's folder is (under) a file or cannot be written."""
  for path in paths:
    problem = folder_problem(os.path.dirname(os.path.abspath(path)))
    if problem:
      raise NotADirectoryError(f"{path}: {problem}; choose another --out.")
  taken = [p for path in paths for p in (path, os.path.splitext(path)[0] + ".png")
           if os.path.exists(p)]
  if taken:
    raise FileExistsError(f"{', '.join(taken)} already "
                          f"{'exists' if len(taken) == 1 else 'exist'}; refusing to "
                          "overwrite. Choose another --out.")


def write_note(path: str, audio: np.ndarray, mel: np.ndarray, sample_rate: int,
               normalize: bool = False, beside=()) -> dict:
  """Writes `path` (16-bit WAV) and the spectrogram beside it as PNG.

  Audio whose peak exceeds 1 is scaled down to PEAK (never clipped); with `normalize`
  every note is scaled to that peak. `beside`: log-mels drawn to the left of `mel` in the
  PNG (e.g. a real note of the same instrument and pitch).

  Returns:
    {'wav', 'png', 'peak', 'gain'}.
  """
  audio = np.asarray(audio, np.float32)
  peak = float(np.max(np.abs(audio))) if audio.size else 0.0
  gain = 1.0
  if peak > 0 and (normalize or peak > 1.0):
    gain = PEAK / peak
  folder = os.path.dirname(path)
  if folder:
    os.makedirs(folder, exist_ok=True)
  png = os.path.splitext(path)[0] + ".png"
  # Both are written under temporary names and renamed once complete, so a failure
  # (a full disk) leaves neither a cut-short file nor a WAV without its PNG.
  temps = {final: os.path.join(os.path.dirname(final) or ".", f".{os.path.basename(final)}"
                                                               f".tmp-{os.getpid()}")
           for final in (path, png)}
  renamed = []
  try:
    io.write_wav(temps[path], audio * gain, sample_rate)
    display.write_png(temps[png], display.spectrogram_image(*beside, mel, scale=4))
    taken = [final for final in temps if os.path.exists(final)]
    if taken:
      raise FileExistsError(f"{', '.join(taken)} appeared meanwhile; refusing to "
                            "overwrite.")
    for final, temp in temps.items():
      os.replace(temp, final)
      renamed.append(final)
  except (FileExistsError, KeyboardInterrupt):
    _remove(list(temps.values()) + renamed)
    raise
  except Exception as e:  # pylint: disable=broad-except
    _remove(list(temps.values()) + renamed)
    reason = re.sub(r"\{\{.*?\}\}\s*", "", getattr(e, "message", None) or str(e)).strip()
    full = "No space left" not in reason and shutil.disk_usage(folder or ".").free < 2**20
    raise OSError(f"{path}: could not be written ({reason})"
                  + ("; the disk is full" if full else "")) from e
  return {"wav": path, "png": png, "peak": peak, "gain": gain}


def write_notes(paths, notes, sample_rate: int, normalize: bool = False,
                beside=()) -> list[dict]:
  """`write_note` for each (path, note) of a command, all or none: if one fails, those
  already written are removed again, so the same command can be run again once the
  cause (a full disk) is gone."""
  done = []
  try:
    for path, note in zip(paths, notes):
      done.append(write_note(path, note["audio"], note["mel"], sample_rate, normalize,
                             beside))
  except BaseException:
    _remove([f for d in done for f in (d["wav"], d["png"])])
    raise
  return done


def _remove(files) -> None:
  for f in files:
    try:
      os.remove(f)
    except OSError:
      pass


def metadata(path: str) -> dict:
  """The export's assets.extra/tfgmvae.json."""
  with open(os.path.join(path, export_lib.METADATA_FILE), encoding="utf-8") as f:
    return json.load(f)
