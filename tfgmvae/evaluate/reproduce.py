"""The paper's grid: MGMVAE and MVAE x N in {0, 25, 50, 75, 100} %, trained, evaluated,
and summed up in one RESULTS.md beside the paper's Table 1.

Layout of OUT_DIR:
  data/                 the prepared data (unless an existing --prepared_dir is given)
  runs/<model>_n<NNN>/  one bin/train run per cell (NNN = N in percent)
  eval/<model>_n<NNN>/epoch_<E>/  bin/evaluate of that run's best checkpoint (epoch E)
  eval/cnn/             the CNN baselines, trained once and shared by every cell
  logs/                 each step's output; timings.json (seconds per step)
  RESULTS.md

Every step runs bin/train or bin/evaluate in a child process (so each cell starts from
a clean TensorFlow), and every step is resumable: a run that exists is continued with
its own recorded flags (`bin/train --flagfile=RUN/flags.txt`), an evaluation that exists
is reused, and running the same command again picks up where a killed one stopped.
"""

import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time

from tfgmvae.data.prepare import (Prepared, PrepareConfig, PrepareError, other_source,
                                  prepare, read_record)
from tfgmvae.data.sources import FileSource, SourceError, open_source
from tfgmvae.train.checkpoints import newest_registered, read_flags, write_atomically

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = ("mgmvae", "mvae")
FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)
PAPER_REPRESENTATIVES = ("Fhn", "Pno", "Vc", "Bn")

# The paper's Table 1 (F-scores): {(N %, model or 'cnn'): (instrument z_t, z_p, pitch z_t,
# z_p)}; the CNN's entries are (instrument, pitch).
PAPER_TABLE1 = {
    (0, "mvae"): (0.960, 0.163, 0.112, 0.966), (0, "mgmvae"): (0.937, 0.175, 0.146, 0.960),
    (25, "mvae"): (0.960, 0.192, 0.169, 0.966), (25, "mgmvae"): (0.971, 0.180, 0.084, 0.977),
    (50, "mvae"): (0.971, 0.169, 0.158, 0.977), (50, "mgmvae"): (0.988, 0.186, 0.079, 0.977),
    (75, "mvae"): (0.971, 0.169, 0.079, 0.971), (75, "mgmvae"): (1.000, 0.163, 0.045, 0.977),
    (100, "mvae"): (0.937, 0.158, 0.039, 0.983), (100, "mgmvae"): (1.000, 0.197, 0.028, 0.966),
    (0, "cnn"): (None, None), (25, "cnn"): (0.920, None), (50, "cnn"): (0.983, None),
    (75, "cnn"): (1.000, None), (100, "cnn"): (1.000, 0.983),
}


# What a CNN judge's quality depends on beyond the data and the network: its budget.
_BUDGET = ("epochs", "patience", "batch_size", "learning_rate", "seed")


def check_judges(metrics: dict[str, dict]) -> None:
  """Refuses a grid whose cells were judged by CNNs trained with different budgets.

  An evaluation is reused as long as its folder exists, so a grid evaluated partly before
  and partly after a change of bin/evaluate's CNN budget (its --cnn_patience default went
  from 5 to 30) would mix judges of different strength in one table.

  Args:
    metrics: Cell name -> its evaluation's metrics.json, as loaded.

  Raises:
    ReproduceError: naming the cells of each budget.
  """
  budgets = {}
  for name, m in sorted(metrics.items()):
    specs = [record["spec"] for record in (m.get("cnn") or {}).values()
             if isinstance(record, dict) and "spec" in record]   # (not a skipped CNN)
    budget = tuple(sorted({tuple((k, spec.get(k)) for k in _BUDGET) for spec in specs}))
    budgets.setdefault(budget, []).append(name)
  if len(budgets) > 1:
    described = "; ".join(
        f"{', '.join(names)}: " + " / ".join(
            ", ".join(f"{k} {v}" for k, v in b) for b in budget)
        for budget, names in budgets.items())
    raise ReproduceError(
        "the cells were judged by CNNs trained with different budgets (" + described
        + "), so their scores are not comparable; move the evaluations of one budget "
        "away (OUT_DIR/eval/<cell>/epoch_N) to evaluate them again.")


class ReproduceError(RuntimeError):
  """A step of the grid failed or a setting is wrong; the message names it."""


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
  """The grid (see bin/reproduce for each setting)."""
  out_dir: str
  dataset: str = "rendered"
  data_path: str = "data/corpus"
  prepared_dir: str = ""
  models: tuple[str, ...] = MODELS
  fractions: tuple[float, ...] = FRACTIONS
  mgmvae_flags: str = os.path.join(REPO, "configs", "paper_mgmvae.flags")
  mvae_flags: str = os.path.join(REPO, "configs", "paper_mvae.flags")
  epochs: int = 0
  train: bool = True
  representatives: tuple[str, ...] = ()
  evaluate_args: tuple[str, ...] = ()
  results: str = ""
  # Whether --dataset/--data_path were given: an existing OUT_DIR/data is then checked
  # against them (the default data/corpus is relative to wherever the command runs).
  source_given: bool = True

  def validate(self) -> "ReproduceConfig":
    """Returns self, or raises ReproduceError naming every bad setting."""
    p = []
    if not self.out_dir:
      p.append("--out_dir is required")
    if not self.models or any(m not in MODELS for m in self.models):
      p.append(f"--models={','.join(self.models)}: expected some of {', '.join(MODELS)}")
    if not self.fractions or any(not 0 <= f <= 1 for f in self.fractions):
      p.append(f"--fractions={','.join(map(str, self.fractions))}: expected numbers in "
               "[0, 1]")
    elif any(abs(100 * f - round(100 * f)) > 1e-9 for f in self.fractions):
      p.append(f"--fractions={','.join(map(str, self.fractions))}: expected whole "
               "percentages (0.25, not 0.255): each cell is named by its N in percent")
    for model in self.models:
      path = self.flagfile(model)
      if not os.path.isfile(path):
        p.append(f"--{model}_flags={path}: not found")
    from tfgmvae.evaluate import results  # pylint: disable=import-outside-toplevel
    own = os.path.join(os.path.abspath(self.out_dir), "RESULTS.md") if self.out_dir else ""
    if self.results and os.path.abspath(self.results) != own and os.path.exists(
        self.results) and not results.written_for(self.results, self.out_dir):
      p.append(f"--results={self.results}: already exists and is not this grid's results "
               "file; it is never overwritten (OUT_DIR/RESULTS.md, and a --results file "
               "this grid wrote, are rewritten)")
    if self.results and not os.path.isdir(os.path.dirname(os.path.abspath(self.results))):
      p.append(f"--results={self.results}: its folder "
               f"{os.path.dirname(os.path.abspath(self.results))} does not exist")
    if self.epochs < 0:
      p.append(f"--epochs={self.epochs}: expected >= 0 (0: the flagfiles' own)")
    if self.prepared_dir and not os.path.isfile(
        os.path.join(self.prepared_dir, "prepared.json")):
      p.append(f"--prepared_dir={self.prepared_dir}: no prepared.json there")
    if p:
      raise ReproduceError("; ".join(p))
    return self

  def flagfile(self, model: str) -> str:
    """The flagfile the grid trains `model` ('mgmvae' or 'mvae') with."""
    return self.mgmvae_flags if model == "mgmvae" else self.mvae_flags


CELL = re.compile(r"(mgmvae|mvae)_n[0-9]{3}")   # cell_name's names


def cell_name(model: str, fraction: float) -> str:
  """A grid cell's folder name under OUT_DIR/runs and OUT_DIR/eval: `mgmvae_n025`."""
  return f"{model}_n{round(100 * fraction):03d}"


def best_epoch(run_dir: str) -> int | None:
  """Epoch of the run's best checkpoint (its number), or None before the first."""
  return newest_registered(os.path.join(run_dir, "best"))


def check_run(run: str, model: str, fraction: float, prepared_dir: str) -> None:
  """Refuses a run placed in a cell it does not belong to: another model or N, or
  trained on other data than the grid's.

  Raises:
    ReproduceError: naming the run, what it records and what the cell needs.
  """
  flags = read_flags(run)
  if flags.get("model") != model or float(flags.get("label_fraction", -1)) != fraction:
    raise ReproduceError(
        f"{run}/flags.txt records --model={flags.get('model')} "
        f"--label_fraction={flags.get('label_fraction')}, not this cell's "
        f"{model} at {fraction}; move that folder away.")
  if flags.get("warm_start"):
    raise ReproduceError(
        f"{run}/flags.txt records --warm_start={flags['warm_start']}: a warm-started "
        "run carries what its source learned (its labels too, whatever this cell's N); "
        "the grid trains every cell from scratch. Move that folder away.")
  data = flags.get("prepared_dir") or os.path.join(run, "data")
  trained_on = (read_record(data) or {}).get("index_sha256")
  try:    # what the run itself recorded, if it did (the folder may since be replaced)
    with open(os.path.join(run, "model.json"), encoding="utf-8") as f:
      trained_on = json.load(f).get("index_sha256") or trained_on
  except (OSError, ValueError):
    pass
  if trained_on != (read_record(prepared_dir) or {}).get("index_sha256"):
    raise ReproduceError(
        f"{run} trains on the prepared data at {data}, "
        + ("which is not there" if trained_on is None else "not this grid's")
        + f" ({prepared_dir}): the grid's cells must share one dataset. Move that "
        "run away, or run the grid on its data with --prepared_dir.")


def machine() -> str:
  """One line about this machine: CPU model, cores, memory, Python."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    model = names[0] if names else model
  except OSError:
    pass
  memory = ""
  try:
    with open("/proc/meminfo", encoding="utf-8") as f:
      kb = int(f.readline().split()[1])
    memory = f", {kb / 2**20:.0f} GiB"
  except (OSError, ValueError, IndexError):
    pass
  return (f"{model}, {os.cpu_count()} cores{memory}, {platform.system()} "
          f"{platform.release()}, Python {platform.python_version()}")


class Grid:
  """Runs the grid's steps, logging each child process to OUT_DIR/logs."""

  def __init__(self, config: ReproduceConfig, log=print):
    self.config = config.validate()
    self.log = log
    self.out = os.path.abspath(config.out_dir)
    self.logs = os.path.join(self.out, "logs")   # made by the first child process
    self.timings_path = os.path.join(self.logs, "timings.json")
    self.timings = {}
    if os.path.isfile(self.timings_path):
      with open(self.timings_path, encoding="utf-8") as f:
        self.timings = json.load(f)

  def _child(self, name: str, args: list[str], accumulate: bool = True):
    """Runs bin/<args[0]> with the rest as arguments; its output goes to logs/name.log.

    Its wall time is added to timings[name] (a training resumed over several
    invocations), or replaces it with accumulate=False (an evaluation of a new
    checkpoint: RESULTS.md shows the time of the evaluation it reports).
    """
    os.makedirs(self.logs, exist_ok=True)
    path = os.path.join(self.logs, f"{name}.log")
    command = [sys.executable, os.path.join(REPO, "bin", args[0])] + args[1:]
    self.log(f"  $ {' '.join(command[1:])}   (log: {path})")
    start = time.time()
    with open(path, "a", encoding="utf-8") as f:
      f.write(f"\n$ {' '.join(command)}\n")
      f.flush()
      done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False)
    self.timings[name] = (self.timings.get(name, 0.0) if accumulate else 0.0) \
        + time.time() - start
    with open(self.timings_path, "w", encoding="utf-8") as f:
      json.dump(self.timings, f, indent=2)
    if done.returncode:
      with open(path, encoding="utf-8") as f:
        tail = "".join(f.readlines()[-15:])
      raise ReproduceError(f"{name}: {args[0]} failed (exit {done.returncode}); the end "
                           f"of {path}:\n{tail}")

  def prepared_dir(self) -> str:
    """The prepared data: --prepared_dir, or OUT_DIR/data (rendered/prepared once)."""
    c = self.config
    if c.prepared_dir:
      return os.path.abspath(c.prepared_dir)
    folder = os.path.join(self.out, "data")
    if os.path.isfile(os.path.join(folder, "prepared.json")):
      other = other_source(folder, c.dataset, c.data_path) if c.source_given else None
      if other:
        raise ReproduceError(
            f"{folder} holds the grid's data, prepared from {other}, not "
            f"--dataset={c.dataset} --data_path={c.data_path}; give those flags as they "
            "were, or use another --out_dir for a grid on other data.")
      return folder
    source = os.path.abspath(c.data_path)
    if c.representatives:   # before minutes of rendering and preparing
      self._check_representatives(c.representatives, self._source_instruments(source))
    if c.dataset == "rendered" and not os.path.exists(source):
      self.log(f"Rendering the default corpus into {source} ...")
      self._child("render", ["make_dataset", f"--out_dir={source}"])
    self.log(f"Preparing {source} into {folder} ...")
    try:
      prepare(PrepareConfig(c.dataset, source, folder), log=lambda m: None)
    except (PrepareError, SourceError) as e:
      raise ReproduceError(str(e)) from e
    return folder

  def _source_instruments(self, source: str) -> tuple[str, ...] | None:
    """The instruments a source's labels name (the default corpus's when it is still to
    be rendered), read without decoding audio; None for NSynth or unreadable labels
    (preparation then says what is wrong)."""
    if self.config.dataset == "rendered" and not os.path.exists(source):
      from tfgmvae import render  # pylint: disable=g-import-not-at-top
      return tuple(sorted(spec.name for spec in render.PAPER_INSTRUMENTS))
    try:
      opened = open_source(self.config.dataset, source)
    except SourceError:
      return None
    if not isinstance(opened, FileSource):
      return None
    return tuple(sorted({note.instrument for note in opened.notes}))

  @staticmethod
  def _check_representatives(representatives, instruments) -> None:
    if instruments is None:
      return
    unknown = [r for r in representatives if r not in instruments]
    if unknown or len(representatives) == 1:
      raise ReproduceError(   # (before any training, not at the first evaluation)
          f"--representatives={','.join(representatives)}: expected two or more of the "
          f"data's instruments ({', '.join(instruments)})"
          + (f"; unknown: {', '.join(unknown)}" if unknown else ""))

  def train(self, model: str, fraction: float, prepared_dir: str) -> str:
    """Trains (or continues) one cell, whose placed run `run()` has checked; returns its
    run directory."""
    name = cell_name(model, fraction)
    run = os.path.join(self.out, "runs", name)
    epochs = [f"--epochs={self.config.epochs}"] if self.config.epochs else []
    if os.path.isfile(os.path.join(run, "flags.txt")):   # (checked by run() first)
      args = ["train", f"--flagfile={os.path.join(run, 'flags.txt')}",
              f"--run_dir={run}"] + epochs   # (a run placed here goes on here)
    else:
      args = ["train", f"--flagfile={self.config.flagfile(model)}", f"--run_dir={run}",
              f"--prepared_dir={prepared_dir}", f"--model={model}",
              f"--label_fraction={fraction}"] + epochs
    self.log(f"[{name}] training")
    self._child(f"{name}.train", args)
    return run

  def representatives(self, prepared: Prepared) -> tuple[str, ...]:
    """--representatives, else the paper's four if the data has them all, else none
    (bin/evaluate then takes the most frequent instrument of each family)."""
    if self.config.representatives:
      return self.config.representatives
    if all(r in prepared.instruments for r in PAPER_REPRESENTATIVES):
      return PAPER_REPRESENTATIVES
    return ()

  def _evaluate_args(self, representatives) -> list[str]:
    return ([f"--representatives={','.join(representatives)}"] if representatives else []
            ) + list(self.config.evaluate_args)

  def _evaluation(self, name: str, run: str) -> str | None:
    """The folder of the evaluation of the run's best checkpoint (None: no best one)."""
    epoch = best_epoch(run)
    return None if epoch is None else os.path.join(self.out, "eval", name, f"epoch_{epoch}")

  def _check_evaluated_alike(self, out: str, args: list[str]) -> None:
    """Refuses to reuse the evaluation `out` when other bin/evaluate flags made it."""
    record = out + ".args.json"   # the extra bin/evaluate flags of that evaluation
    if not (os.path.isfile(os.path.join(out, "metrics.json")) and os.path.isfile(record)):
      return
    with open(record, encoding="utf-8") as f:
      used = json.load(f)
    if sorted(used) != sorted(args):
      raise ReproduceError(
          f"{out} was evaluated with {used or 'no extra flags'}, not {args or 'none'}; "
          f"use another --out_dir, or move {out} away to evaluate again.")

  def evaluate(self, name: str, run: str, representatives=()) -> str:
    """Evaluates the run's best checkpoint unless that evaluation exists."""
    out = self._evaluation(name, run)
    if out is None:
      raise ReproduceError(f"{run}: no best checkpoint after training")
    epoch = int(out.rsplit("_", 1)[1])
    args = self._evaluate_args(representatives)
    record = out + ".args.json"
    if os.path.isfile(os.path.join(out, "metrics.json")):
      self._check_evaluated_alike(out, args)
      self.log(f"[{name}] reusing the evaluation {out}")
      return out
    self.log(f"[{name}] evaluating epoch {epoch}")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(record, "w", encoding="utf-8") as f:   # (before: OUT appears complete)
      json.dump(args, f)
    self._child(f"{name}.evaluate", ["evaluate", f"--run_dir={run}", f"--out_dir={out}",
                                     f"--cnn_dir={os.path.join(self.out, 'eval', 'cnn')}"]
                + args, accumulate=False)
    return out

  def earlier_evaluations(self, asked, args) -> dict[str, str]:
    """The grid's other cells (not in `asked`) that an earlier invocation evaluated at
    their best checkpoint with the same bin/evaluate flags, so that RESULTS.md keeps
    them; each one kept or left out is said."""
    runs = os.path.join(self.out, "runs")
    found = {}
    for name in sorted(os.listdir(runs)) if os.path.isdir(runs) else []:
      if name in asked or not CELL.fullmatch(name):
        continue
      out = self._evaluation(name, os.path.join(runs, name))
      if out is None or not os.path.isfile(os.path.join(out, "metrics.json")):
        self.log(f"[{name}] not evaluated at its best checkpoint: left out of the results "
                 "(name its model and N in --models and --fractions to evaluate it)")
        continue
      try:
        self._check_evaluated_alike(out, args)
      except ReproduceError:
        self.log(f"[{name}] evaluated with other bin/evaluate flags: left out of the "
                 "results")
        continue
      self.log(f"[{name}] kept in the results: {out} (from an earlier invocation)")
      found[name] = out
    return found

  def run(self) -> str:
    """Every cell, then RESULTS.md; returns its path."""
    prepared_dir = self.prepared_dir()
    prepared = Prepared.load(prepared_dir)
    representatives = self.representatives(prepared)
    self._check_representatives(representatives, tuple(prepared.instruments))
    cells = []
    for fraction in self.config.fractions:   # before any training: the runs placed in
      for model in self.config.models:       # the grid, and the evaluations a finished
        name = cell_name(model, fraction)    # run would reuse
        cells.append(name)
        run = os.path.join(self.out, "runs", name)
        if os.path.isfile(os.path.join(run, "flags.txt")):
          check_run(run, model, fraction, prepared_dir)
        out = self._evaluation(name, run)
        if out:
          self._check_evaluated_alike(out, self._evaluate_args(representatives))
    evaluations = {}
    for fraction in self.config.fractions:
      for model in self.config.models:
        name = cell_name(model, fraction)
        if self.config.train:
          run = self.train(model, fraction, prepared_dir)
        else:
          run = os.path.join(self.out, "runs", name)
          if best_epoch(run) is None:
            self.log(f"[{name}] not trained and --notrain: left out")
            continue
          check_run(run, model, fraction, prepared_dir)
        evaluations[name] = self.evaluate(name, run, representatives)
    if not evaluations:
      raise ReproduceError(f"{self.out}: no cell has a trained run to evaluate")
    evaluations |= self.earlier_evaluations(cells, self._evaluate_args(representatives))
    from tfgmvae.evaluate import results  # pylint: disable=import-outside-toplevel
    path = self.config.results or os.path.join(self.out, "RESULTS.md")
    text = results.results_markdown(self.out, evaluations, self.timings, machine(),
                                    prepared)
    write_atomically(path, text)
    self.log(f"Wrote {path}")
    return path
