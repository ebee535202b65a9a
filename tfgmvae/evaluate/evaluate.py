"""Evaluating a trained run: SPEC §3's measurements into metrics.json, report.md, PNG
figures and TensorBoard summaries.

`evaluate(EvalConfig(run_dir, out_dir))` loads the run's best (or latest) checkpoint,
encodes its prepared data, trains or reuses the CNN baselines, runs every experiment and
writes OUT_DIR (first into a temporary folder beside it, then renamed, so OUT_DIR is
complete or absent and an existing one is never overwritten). It also writes the scalar
metrics and the figures to RUN_DIR/summaries/evaluation at the checkpoint's epoch, once:
evaluating the same checkpoint again leaves them as they are.
"""

import dataclasses
import json
import math
import os
import shutil
import time

import tensorflow as tf

from tfgmvae.data import paths
from tfgmvae.data.dataset import data_errors
from tfgmvae.data.prepare import Prepared, PrepareError, read_record
from tfgmvae.evaluate import classifiers, experiments, figures, report
from tfgmvae.serving.export import (ExportError, checkpoint_owner, load_run,
                                    not_the_runs_data)

METRICS_FILE = "metrics.json"
FORMAT = "tfgmvae-evaluation/1"


class EvaluationError(ValueError):
  """The evaluation cannot run; the message names the file, flag or value."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate and how (see bin/evaluate for each setting).

  Attributes:
    run_dir: The trained run.
    out_dir: Where metrics.json, report.md and the figures go (must not exist).
    checkpoint: 'best', 'latest' or a checkpoint path prefix.
    cnn_dir: Saved CNN baselines (trained there on first use); default OUT_DIR/../cnn
      when empty.
    representatives: Instruments for the transfer experiment; empty: the most frequent
      instrument of each family.
    ws: Sampling spreads w of the synthesis experiment.
    draws: Draws per validation note and w.
    alphas: Transfer strengths.
    shift: Centroid experiment's shift, in sigma_t.
    cnn_epochs, cnn_patience: CNN training budget and early-stopping patience.
    tsne_max_notes: Notes in the t-SNE map at most (a seeded sample beyond).
    seed: Seed of probes, CNNs, draws and t-SNE.
    summaries: Also write TensorBoard summaries into the run.
  """
  run_dir: str
  out_dir: str
  checkpoint: str = "best"
  cnn_dir: str = ""
  representatives: tuple[str, ...] = ()
  ws: tuple[float, ...] = (0.0, 0.5, 1.0)
  draws: int = 30
  alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
  shift: float = 2.0
  cnn_epochs: int = 30
  cnn_patience: int = 30
  tsne_max_notes: int = 2000
  seed: int = 0
  summaries: bool = True

  def validate(self, folders: bool = True) -> "EvalConfig":
    """Checks the settings before any work.

    Args:
      folders: Also check --run_dir and --out_dir (bin/reproduce checks the other
        settings before its grid has made the folders).

    Raises:
      EvaluationError: naming every bad setting.
    """
    p = []
    if folders and (not self.run_dir or not os.path.isdir(self.run_dir)):
      p.append(f"--run_dir={self.run_dir!r}: not a folder (expected a run of bin/train)")
    if folders and not self.out_dir:
      p.append("--out_dir is required")
    elif folders and os.path.exists(self.out_dir):
      p.append(f"--out_dir={self.out_dir}: already exists; evaluations are never "
               "overwritten, choose a new folder")
    elif folders:
      where = paths.folder_problem(os.path.dirname(os.path.abspath(self.out_dir)))
      if where:
        p.append(f"--out_dir={self.out_dir}: cannot be written: {where}")
    where = self.cnn_dir and paths.folder_problem(self.cnn_dir)
    if where:
      p.append(f"--cnn_dir={self.cnn_dir}: {where}; expected a folder for the CNN judges")
    where = (self.summaries and folders and self.run_dir
             and paths.folder_problem(os.path.join(self.run_dir, "summaries", "evaluation")))
    if where:
      p.append(f"--run_dir={self.run_dir}: its summaries cannot be written: {where}; "
               "--nosummaries leaves TensorBoard out")
    if not self.ws or any(not 0 <= w < math.inf for w in self.ws):
      p.append(f"--ws={','.join(map(str, self.ws))}: expected finite non-negative numbers")
    if not self.alphas or any(not 0 <= a <= 1 for a in self.alphas):
      p.append(f"--alphas={','.join(map(str, self.alphas))}: expected numbers in [0, 1]")
    elif list(self.alphas) != sorted(set(self.alphas)) or len(self.alphas) < 2:
      p.append(f"--alphas={','.join(map(str, self.alphas))}: expected two or more "
               "increasing values (the first is 'before', the last 'after')")
    if self.ws and list(self.ws) != sorted(set(self.ws)):
      p.append(f"--ws={','.join(map(str, self.ws))}: expected increasing values")
    for name in ("draws", "cnn_epochs", "tsne_max_notes"):
      if getattr(self, name) < 1:
        p.append(f"--{name}={getattr(self, name)}: expected a positive integer")
    if self.cnn_patience < 0:
      p.append(f"--cnn_patience={self.cnn_patience}: expected >= 0")
    if not 0 < self.shift < math.inf:
      p.append(f"--shift={self.shift}: expected a positive, finite number of sigmas")
    twice = sorted({r for r in self.representatives if self.representatives.count(r) > 1})
    if twice:
      p.append(f"--representatives={','.join(self.representatives)}: names "
               f"{', '.join(twice)} twice; expected each instrument once")
    if p:
      raise EvaluationError("; ".join(p))
    return self


def _checkpoint_epoch(path: str) -> int:
  try:
    return int(tf.train.load_variable(path, "state/epoch/.ATTRIBUTES/VARIABLE_VALUE"))
  except (ValueError, tf.errors.NotFoundError):
    return 0


def _chosen_how(reps: list[str], instruments) -> str:
  """How the default representatives were chosen (`stats.representatives`), naming the
  instruments it could not place in a family."""
  from tfgmvae.evaluate.stats import family_of  # pylint: disable=import-outside-toplevel
  unknown = [name for name in instruments if family_of(name) is None]
  if len({family_of(name) for name in instruments} - {None}) < 2:
    how = "the most frequent instruments: fewer than two of the paper's families here"
  else:
    how = "the most frequent instrument of each family" + (
        f"; {', '.join(unknown)} {'has' if len(unknown) == 1 else 'have'} no known family"
        if unknown else "")
  return f" ({how}; --representatives chooses others)"


def _representatives(config: EvalConfig, prepared: Prepared) -> list[str]:
  from tfgmvae.evaluate.stats import representatives  # pylint: disable=import-outside-toplevel
  if not config.representatives:
    return representatives(prepared.counts["train"])
  unknown = [r for r in config.representatives if r not in prepared.instruments]
  if unknown or len(config.representatives) < 2:
    raise EvaluationError(
        f"--representatives={','.join(config.representatives)}: expected two or more of "
        f"this run's instruments ({', '.join(prepared.instruments)})"
        + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
  return list(config.representatives)


def evaluate(config: EvalConfig, log=print) -> dict:
  """Runs every measurement on a trained run and writes OUT_DIR (see the module doc).

  Returns:
    The metrics (as written to OUT_DIR/metrics.json).

  Raises:
    EvaluationError: a bad setting, or a run or data that cannot be read.
    DataError: a prepared note cannot be read any more (names it).
  """
  config.validate()
  figures.require()
  owner = (checkpoint_owner(config.checkpoint)
           if config.checkpoint not in ("best", "latest") else None)
  if owner and os.path.realpath(owner) != os.path.realpath(config.run_dir):
    raise EvaluationError(   # (the report and summaries describe the run they are given)
        f"--checkpoint={config.checkpoint}: belongs to the run {owner}, not to "
        f"--run_dir={config.run_dir}; evaluate it with --run_dir={owner}.")
  try:
    model, info, path = load_run(config.run_dir, config.checkpoint)
    prepared = Prepared.load(info.prepared_dir)
  except (ExportError, PrepareError) as e:
    raise EvaluationError(str(e)) from e
  if (tuple(prepared.instruments) != info.instruments
      or tuple(prepared.pitches) != info.pitches):
    raise EvaluationError(f"{info.prepared_dir}: its vocabularies differ from those "
                          f"recorded in {config.run_dir}/model.json.")
  other = not_the_runs_data(info, prepared)
  if other:
    raise EvaluationError(f"{info.prepared_dir}: {other} from what "
                          f"{config.run_dir}/model.json records, so it is not the data "
                          "the run trained on (its validation notes may be notes the "
                          "model trained on); evaluate the run on its own prepared data.")
  fraction = info.label_fraction
  if fraction is None:
    raise EvaluationError(f"{config.run_dir}: neither model.json nor flags.txt records "
                          "the run's --label_fraction.")
  reps = _representatives(config, prepared)
  epoch = _checkpoint_epoch(path)
  kind = info.model.kind
  title = f"{kind.upper()}, N = {100 * fraction:g} %"
  out_dir = os.path.abspath(config.out_dir)
  cnn_dir = config.cnn_dir or os.path.join(os.path.dirname(out_dir), "cnn")
  parent, unfinished = os.path.dirname(out_dir), f".tmp-{os.path.basename(out_dir)}-"
  os.makedirs(parent, exist_ok=True)
  paths.remove_abandoned_temp_dirs(parent, unfinished, log)   # of killed evaluations
  tmp = paths.make_temp_dir(parent, unfinished)
  clock = time.time()

  def stage(name):
    log(f"[{time.time() - clock:6.0f} s] {name}")

  try:
    with data_errors(prepared):   # the only stages that read notes
      stage(f"Encoding {prepared.directory} with {path} (epoch {epoch})")
      train = experiments.encode_split(model, prepared, "train")
      val = experiments.encode_split(model, prepared, "validation", keep_mel=True)

      stage("CNN baselines")
      cnns, cnn_records = _cnns(prepared, info, fraction, cnn_dir, config, log)

    stage("Table 1: linear probes and CNNs")
    metrics = {"format": FORMAT,
               "run": {"run_dir": os.path.abspath(config.run_dir), "model": kind,
                       "label_fraction": fraction, "checkpoint": os.path.abspath(path),
                       "epoch": epoch, "prepared_dir": os.path.abspath(prepared.directory),
                       "train_notes": len(train), "validation_notes": len(val),
                       "instruments": list(info.instruments),
                       "pitches": list(info.pitches),
                       "warm_started_from": info.warm_started_from},
               "settings": {"ws": list(config.ws), "draws": config.draws,
                            "alphas": list(config.alphas), "shift": config.shift,
                            "seed": config.seed, "representatives": reps},
               "cnn_dir": os.path.abspath(cnn_dir), "cnn": cnn_records}
    metrics["table1"] = {
        "linear": experiments.linear_probes(train, val, info.model.num_instruments,
                                            info.model.num_pitches),
        "cnn": experiments.cnn_scores({"instrument": cnns["instrument_n"],
                                       "pitch": cnns["pitch"]}, val)}
    arrays = {}
    mapping = None
    if kind == "mgmvae":
      stage("Timbre components as clusters")
      found = experiments.clusters(model, train, val, info.instruments)
      metrics["clusters"] = found["metrics"]
      arrays["clusters"] = found
      if fraction == 0.0:
        mapping = found["mapping"]
    t_means, t_scales, source = experiments.timbre_centres(model, train, mapping)
    metrics["timbre_centres"] = source

    stage("Figure 2: t-SNE of z_t")
    xy, centre_xy, rows = experiments.tsne(val.z_timbre, t_means, config.seed,
                                           config.tsne_max_notes)
    arrays["tsne"] = (xy, centre_xy, rows)

    stage(f"Figure 3: controllable synthesis ({config.draws} draws x {len(val)} notes "
          f"x {len(config.ws)} w)")
    full = {"instrument": cnns["instrument"], "pitch": cnns["pitch"]}
    metrics["synthesis"] = experiments.controllable_synthesis(
        model, val, t_means, t_scales, full, config.ws, config.draws, config.seed)

    stage(f"Figure 5: timbre transfer between {', '.join(reps)}"
          + ("" if config.representatives else _chosen_how(reps, info.instruments)))
    metrics["transfer"] = {"representatives": reps, "pairs": experiments.timbre_transfer(
        model, val, t_means, info.instruments, reps, full, config.alphas)}

    stage("Swapping codes between notes")
    metrics["swap"] = experiments.code_swap(model, val, full, config.seed)

    stage("Figures 7-8: spectral centroid dimension")
    found = experiments.centroid_dimension(model, train, val, info.instruments,
                                           info.audio, info.log_mel_min,
                                           info.log_mel_max, config.shift,
                                           seed=config.seed)
    metrics["centroid"] = found["metrics"]
    arrays["centroid"] = found

    stage("Writing figures, report and summaries")
    pictures = report.draw(tmp, metrics, arrays, val, info.instruments, title,
                           model.timbre_prior is not None)
    with open(os.path.join(tmp, METRICS_FILE), "w", encoding="utf-8") as f:
      json.dump(_finite_or_null(metrics), f, indent=2, allow_nan=False)
    with open(os.path.join(tmp, "report.md"), "w", encoding="utf-8") as f:
      f.write(report.markdown(metrics, pictures, title))
    if os.path.exists(out_dir):
      kept = f"{out_dir}.{os.getpid()}"   # (not a name the clean-up above removes)
      os.rename(tmp, kept)
      raise EvaluationError(f"--out_dir={out_dir}: appeared while evaluating; the "
                            f"results are left in {kept}")
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if config.summaries:
    logdir = os.path.join(config.run_dir, "summaries", "evaluation")
    try:
      written = report.write_summaries(logdir, metrics, {k: os.path.join(out_dir, v)
                                                         for k, v in pictures.items()}, epoch)
    except (OSError, tf.errors.OpError) as e:
      raise EvaluationError(f"Wrote {out_dir}, but not the TensorBoard summaries: "
                            f"{getattr(e, 'message', None) or e}") from e
    if not written:
      log(f"{logdir} already holds an evaluation of epoch {epoch}; this one is in "
          f"{out_dir} only (TensorBoard keeps the first).")
  stage(f"Wrote {out_dir}")
  return metrics


def _cnns(prepared, info, fraction, cnn_dir, config, log) -> tuple[dict, dict]:
  """The full-label instrument and pitch CNNs and the instrument CNN at the run's N, and
  each one's record (what it was trained on, how long, its held-out accuracy)."""
  data = read_record(prepared.directory)["index_sha256"]   # (loaded: it is there)
  m = info.model
  base = dict(filters=m.filters, hidden=m.hidden, kernel_size=m.kernel_size,
              frames=m.frames, n_mels=m.n_mels, data=data, seed=config.seed,
              epochs=config.cnn_epochs, patience=config.cnn_patience)
  specs = {"instrument": classifiers.CnnSpec("instrument", 1.0,
                                             num_classes=m.num_instruments, **base),
           "pitch": classifiers.CnnSpec("pitch", 1.0, num_classes=m.num_pitches, **base)}
  out, records = {"instrument_n": None}, {}   # None: no CNN at N, the paper's '-'
  if 0.0 < fraction < 1.0:
    partial = dataclasses.replace(specs["instrument"], label_fraction=fraction)
    labelled = sum(prepared.labelled_quota(fraction).values())
    if labelled >= classifiers.MIN_NOTES:
      specs["instrument_n"] = partial
    else:
      records[partial.name] = {"skipped": (
          f"{labelled} labelled training note{'s' * (labelled != 1)} at N = "
          f"{fraction:g}, fewer than the {classifiers.MIN_NOTES} a CNN needs")}
      log(f"No instrument CNN at N = {fraction:g}: {records[partial.name]['skipped']}.")
  for key, spec in specs.items():
    out[key], records[spec.name] = classifiers.cnn_for(prepared, spec, cnn_dir, log=log)
  if fraction >= 1.0:
    out["instrument_n"] = out["instrument"]
  return out, records


def _finite_or_null(value):
  """`value` with every NaN or infinite float replaced by None (JSON's null), e.g. the
  p-value of a t-test whose differences are all equal, so metrics.json is standard JSON."""
  if isinstance(value, dict):
    return {k: _finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite_or_null(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def load_metrics(out_dir: str) -> dict:
  """Reads OUT_DIR/metrics.json of an earlier evaluation."""
  path = os.path.join(out_dir, METRICS_FILE)
  with open(path, encoding="utf-8") as f:
    metrics = json.load(f)
  if metrics.get("format") != FORMAT:
    raise EvaluationError(f"{path}: format {metrics.get('format')!r}, expected {FORMAT}")
  return metrics
