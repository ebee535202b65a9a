"""The main job on the embedded default corpus, step by step (bin/quickstart).

The steps are: render the default corpus, prepare it, train (bin/train with a
flagfile, which bin/quickstart starts), export the run's best checkpoint, and write a
synthesised note and a timbre transfer from that export. Every step reuses what an
earlier call left: the corpus and the prepared data are checked and reused, never
overwritten; the export is reused while it holds the run's current best checkpoint;
existing WAV files are kept.
"""

import csv
import dataclasses
import json
import os

from tfgmvae import render
from tfgmvae.audio import io
from tfgmvae.data.prepare import Prepared, PrepareConfig, prepare
from tfgmvae.serving import client
from tfgmvae.serving import export as export_lib


class ChoiceError(ValueError):
  """An instrument or pitch that the corpus does not have (says which flag)."""


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
  """Where the main job writes, and what it synthesises and transfers.

  Attributes:
    work_dir: Folder of the corpus (WORK_DIR/corpus) and the prepared data
      (WORK_DIR/prepared).
    run_dir: Folder of the training run.
    export_dir: Base folder of the export (versions below it).
    out_dir: Folder of the WAV and PNG files (OUT_DIR/v<version>/).
    instrument: Instrument of the synthesised note and of the transferred one.
    pitch: MIDI pitch of the synthesised note.
    target: Target instrument of the timbre transfer.
  """
  work_dir: str = "data"
  run_dir: str = "runs/quickstart"
  export_dir: str = "export/quickstart"
  out_dir: str = "out/quickstart"
  instrument: str = "Vc"
  pitch: int = 60
  target: str = "Pno"

  @property
  def corpus(self) -> str:
    return os.path.join(self.work_dir, "corpus")

  @property
  def prepared_dir(self) -> str:
    return os.path.join(self.work_dir, "prepared")

  @property
  def labels(self) -> str:
    return os.path.join(self.corpus, render.LABELS_FILENAME)


def existing_prepared(config: QuickstartConfig) -> Prepared | None:
  """The prepared data an earlier call left, or None."""
  if os.path.isfile(os.path.join(config.prepared_dir, "prepared.json")):
    return Prepared.load(config.prepared_dir)
  return None


def check_choices(config: QuickstartConfig, prepared: Prepared | None) -> None:
  """Checks the instrument, target and pitch against the prepared data's vocabularies,
  else the rendered corpus's labels, else (nothing rendered yet) the default corpus's.

  Raises:
    ChoiceError: naming the flag, its value and what the corpus has.
  """
  if prepared is not None:
    where, names, pitches = prepared.directory, prepared.instruments, prepared.pitches
  elif os.path.isfile(config.labels):
    with open(config.labels, newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    where = config.corpus
    names = sorted({r["instrument"] for r in rows})
    pitches = sorted({int(r["pitch"]) for r in rows})
  else:
    where = "the default corpus"
    names = sorted(spec.name for spec in render.PAPER_INSTRUMENTS)
    pitches = sorted({p for spec in render.PAPER_INSTRUMENTS for p in spec.pitches})
  for flag in ("instrument", "target"):
    if getattr(config, flag) not in names:
      raise ChoiceError(f"--{flag}={getattr(config, flag)}: expected one of the "
                        f"instruments of {where}: {', '.join(names)}.")
  if config.pitch not in pitches:
    raise ChoiceError(f"--pitch={config.pitch}: expected a MIDI pitch of {where}, "
                      f"{min(pitches)} to {max(pitches)}.")


def render_and_prepare(config: QuickstartConfig, prepared: Prepared | None,
                       log=print) -> Prepared:
  """Steps 1 and 2: the rendered corpus and its prepared data, reused when present.

  Args:
    config: The job's settings.
    prepared: What `existing_prepared` found (checked by `check_choices` first).
    log: Progress lines.
  """
  if os.path.isfile(config.labels):
    log(f"[1/5] Reusing the rendered corpus at {config.corpus}")
  else:
    log(f"[1/5] Rendering the default corpus into {config.corpus} ...")
    rows = render.render_corpus(render.RenderConfig(
        out_dir=config.corpus, soundfonts=render.default_soundfonts()))
    counts = render.count_by_instrument(rows)
    log("      " + ", ".join(f"{k} {v}" for k, v in counts.items())
        + f"; total {len(rows)}")
  if prepared is not None:
    log(f"[2/5] Reusing the prepared data at {config.prepared_dir}")
    n_train = sum(prepared.counts["train"].values())
    n_val = sum(prepared.counts["validation"].values())
    log(f"      {n_train} training and {n_val} validation notes, "
        f"{prepared.num_instruments} instruments, {prepared.num_pitches} pitches, "
        f"log-mel range [{prepared.log_mel_min:.3f}, {prepared.log_mel_max:.3f}].")
    return prepared
  log(f"[2/5] Preparing {config.corpus} into {config.prepared_dir} ...")
  return prepare(PrepareConfig("rendered", config.corpus, config.prepared_dir),
                 log=lambda line: log("      " + line))


def export_best(config: QuickstartConfig, log=print) -> str:
  """Step 4: the export of the run's current best checkpoint, reused if present, else
  written as a new version; returns its folder."""
  best = export_lib.checkpoint_path(config.run_dir, "best")
  for version in reversed(export_lib.versions(config.export_dir)):
    folder = os.path.join(config.export_dir, str(version))
    try:
      meta = client.metadata(folder)
    except (OSError, ValueError):
      continue
    if meta.get("checkpoint") == os.path.abspath(best):
      log(f"[4/5] Reusing the export {folder} of {os.path.basename(best)}")
      return folder
  log(f"[4/5] Exporting {config.run_dir} ({os.path.basename(best)}) to "
      f"{config.export_dir} ...")
  return export_lib.export(export_lib.ExportConfig(config.run_dir, config.export_dir),
                           log=lambda msg: log("      " + msg))


def listen(config: QuickstartConfig, version_dir: str, prepared: Prepared,
           log=print) -> list[str]:
  """Step 5: a synthesised note and a timbre transfer from the export, as WAV and PNG.

  The transferred note is the validation note of `config.instrument` nearest to
  `config.pitch`. A note's WAV and PNG are kept together or written together: a lone
  one is refused before anything is written.

  Returns:
    The two WAV paths.

  Raises:
    ValueError: no validation note of the instrument, or a lone WAV or PNG.
  """
  out = os.path.join(config.out_dir, "v" + os.path.basename(version_dir))
  log(f"[5/5] Synthesising and transferring with {version_dir} into {out}")
  rows = [r for r in prepared.index("validation") if r["instrument"] == config.instrument]
  if not rows:
    raise ValueError(f"--instrument={config.instrument}: no validation note of it in "
                     f"{prepared.directory} to transfer.")
  source = min(rows, key=lambda r: abs(r["pitch"] - config.pitch))
  stem = os.path.splitext(os.path.basename(source["key"]))[0]
  jobs = [(os.path.join(out, f"synth_{config.instrument}_{config.pitch}.wav"), "synth"),
          (os.path.join(out, f"transfer_{stem}_to_{config.target}.wav"), "transfer")]
  kept = [path for path, _ in jobs if os.path.exists(path)
          and os.path.exists(os.path.splitext(path)[0] + ".png")]
  for path, _ in jobs:
    lone = [p for p in (path, os.path.splitext(path)[0] + ".png") if os.path.exists(p)]
    if path not in kept and lone:
      raise ValueError(f"{lone[0]} is there without its "
                       f"{'PNG' if lone[0] == path else 'WAV'}; quickstart writes a note's "
                       f"WAV and PNG together: move it away (or give another --out_dir).")
  # Loading the export takes seconds: only when something is to be written.
  model = None if len(kept) == len(jobs) else client.open_model(version_dir)
  for path, kind in jobs:
    if path in kept:
      log(f"      kept the existing {path}")
      continue
    if kind == "synth":
      note = client.synthesize(model, [config.instrument], [config.pitch], [1.0])[0]
      what = f"{config.instrument} at MIDI {config.pitch}, w=1, seed 0"
    else:
      wave, rate = io.read(source["path"])
      note = client.transfer(model, wave, rate, [config.target], [1.0])[0]
      what = (f"{source['key']} (inferred {note['source']}) -> {config.target}, "
              "alpha 1")
    client.write_note(path, note["audio"], note["mel"], model.sample_rate, normalize=True)
    log(f"      {path} (+ .png, peak-normalised): {what}")
  log(json.dumps({"export": version_dir, "outputs": [p for p, _ in jobs]}))
  return [p for p, _ in jobs]
