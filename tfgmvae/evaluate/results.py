"""RESULTS.md of a grid: Table 1 laid out like the paper's, the paper's numbers beside
ours, and the other experiments' headline numbers per cell."""

import os

from tfgmvae.evaluate.evaluate import load_metrics
from tfgmvae.evaluate.reproduce import FRACTIONS, PAPER_TABLE1, cell_name, check_judges
from tfgmvae.evaluate.report import F1_NOTE


def _cell(ours, paper) -> str:
  a = "–" if ours is None else f"{ours:.3f}"
  b = "–" if paper is None else f"{paper:.3f}"
  return f"{a} ({b})"


def _minutes(seconds) -> str:
  if seconds is None:
    return "–"
  return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.0f} min"


def table1(metrics: dict, fractions, kind: str) -> list[str]:
  """Rows of Table 1 with F1 of `kind` ('f1_weighted' or 'f1_macro')."""
  lines = ["| N (%) | CNN | MVAE z_t | MVAE z_p | MGMVAE z_t | MGMVAE z_p | CNN | "
           "MVAE z_t | MVAE z_p | MGMVAE z_t | MGMVAE z_p |",
           "| --- |" + " --- |" * 10,
           "| | **instrument** | | | | | **pitch** | | | | |"]
  for fraction in fractions:
    pct = round(100 * fraction)
    row = [f"{pct:g}"]
    cnn = next((metrics[cell_name(m, fraction)]["table1"]["cnn"]
                for m in ("mgmvae", "mvae") if cell_name(m, fraction) in metrics), None)
    paper_cnn = PAPER_TABLE1.get((pct, "cnn"), (None, None))
    for task, t in (("instrument", 0), ("pitch", 1)):
      ours = cnn and cnn[task] and cnn[task][kind]
      row.append(_cell(ours, paper_cnn[t]))
      for model in ("mvae", "mgmvae"):
        m = metrics.get(cell_name(model, fraction))
        paper = PAPER_TABLE1.get((pct, model), (None,) * 4)
        for code, j in (("z_timbre", 0), ("z_pitch", 1)):
          ours = m["table1"]["linear"][code][task][kind] if m else None
          row.append(_cell(ours, paper[2 * t + j]))
    lines.append("| " + " | ".join(row) + " |")
  return lines


def mark(out_dir: str) -> str:
  """The first line of a grid's results file: whose it is (so a rerun may rewrite it)."""
  return (f"<!-- written by bin/reproduce --out_dir={os.path.abspath(out_dir)}; a rerun "
          "rewrites this file -->")


def written_for(path: str, out_dir: str) -> bool:
  """Whether the file at `path` is the results file of the grid in `out_dir`."""
  try:
    with open(path, encoding="utf-8") as f:
      return f.readline().rstrip("\n") == mark(out_dir)
  except (OSError, UnicodeDecodeError):
    return False


def results_markdown(out_dir: str, evaluations: dict[str, str], timings: dict,
                     machine: str, prepared) -> str:
  """The whole RESULTS.md of a grid."""
  metrics = {name: load_metrics(path) for name, path in evaluations.items()}
  check_judges(metrics)   # one table, one kind of judge
  fractions = sorted({m["run"]["label_fraction"] for m in metrics.values()})
  total = sum(timings.values())
  lines = [mark(out_dir), "# Results: the paper's grid on this data", "",
           f"Data: `{prepared.directory}` ({sum(prepared.counts['train'].values())} "
           f"training / {sum(prepared.counts['validation'].values())} validation notes, "
           f"{prepared.num_instruments} instruments, {prepared.num_pitches} pitches). "
           f"Machine: {machine}. Wall time of the steps this grid ran: "
           f"{_minutes(total)} (logs/timings.json).", "",
           "## What ran", "",
           "| cell | model | N | epochs (best checkpoint) | training wall time | "
           "evaluation wall time | evaluation |", "| --- | --- | --- | --- | --- | --- | --- |"]
  for name, m in metrics.items():
    r = m["run"]
    lines.append(f"| {name} | {r['model']} | {100 * r['label_fraction']:g} % | "
                 f"{r['epoch']} | {_minutes(timings.get(name + '.train'))} | "
                 f"{_minutes(timings.get(name + '.evaluate'))} | "
                 f"`{os.path.relpath(evaluations[name], out_dir)}/report.md` |")
  missing = [cell_name(mo, f) for f in FRACTIONS for mo in ("mgmvae", "mvae")
             if cell_name(mo, f) not in metrics]
  if missing:
    lines += ["", f"Not run in this grid: {', '.join(missing)}."]
  lines += ["", "## Table 1: F-scores of linear classifiers on z_t and z_p, and of the CNN",
            "", "Each cell: ours (paper). Weighted F1 on the validation split. "
            + F1_NOTE + " The paper does not say which average it reports.", ""]
  lines += table1(metrics, fractions, "f1_weighted")
  lines += ["", "The same with macro F1 (paper's numbers repeated for reference):", ""]
  lines += table1(metrics, fractions, "f1_macro")
  ws = sorted({w for m in metrics.values() for w in m["synthesis"]},
              key=lambda w: float(w[2:]))
  header = [f"{task} {w.replace('_', '=')}" for task in ("instrument", "pitch") for w in ws]
  lines += ["", "## Figure 3: controllable synthesis (weighted F1 of the CNNs)", "",
            "| cell | " + " | ".join(header) + " |", "| --- |" + " --- |" * len(header)]
  for name, m in metrics.items():
    s = m["synthesis"]
    cells = [f"{s[w][task]['f1_weighted']:.3f}" if w in s else "–"
             for task in ("instrument", "pitch") for w in ws]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "## Figure 5: timbre transfer (CNN posterior of the target at the last "
            "alpha; pitch F1 at the first -> last alpha)", ""]
  pairs = sorted({p for m in metrics.values() for p in m["transfer"]["pairs"]})
  lines += ["| cell | " + " | ".join(pairs) + " |", "| --- |" + " --- |" * len(pairs)]
  for name, m in metrics.items():
    cells = []
    for pair in pairs:
      r = m["transfer"]["pairs"].get(pair)
      if not r:
        cells.append("–")
        continue
      keys = [k for k in r if k.startswith("alpha_")]
      cells.append(f"{r[keys[-1]]['target_probability']:.2f}; "
                   f"{r[keys[0]]['pitch']['f1_weighted']:.2f} -> "
                   f"{r[keys[-1]]['pitch']['f1_weighted']:.2f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "## Figures 7-8: the spectral-centroid dimension of z_t", "",
            "| cell | dimension | mean centroid change (Hz) of the validation notes, "
            "-shift to +shift sigma_t | instruments with p < 0.05 (paired t-test) |",
            "| --- | --- | --- | --- |"]
  for name, m in metrics.items():
    c = m["centroid"]
    lines.append(f"| {name} | {c['dimension']} | {c['validation_mean_shift_hz']:+.0f} | "
                 f"{c['significant_instruments']} of {c['tested_instruments']} |")
  swapped = {n: m["swap"] for n, m in metrics.items() if m.get("swap")}
  if swapped:
    lines += ["", "## Swapping codes between notes (beyond the paper)", "",
              "Share of validation notes heard with the pitch of the note that gave z_p "
              "(pitch swap) and the instrument of the note that gave z_t (instrument "
              "swap); in brackets, the share heard as the other note. See each report.",
              "", "| cell | pitch follows z_p (z_t) | instrument follows z_t (z_p) |",
              "| --- | --- | --- |"]
    for name, s in swapped.items():
      p, i = s["pitch_swap"], s["instrument_swap"]
      pitch = (f"{p['pitch']['accuracy']:.3f} ({p['pitch_from_z_t']:.3f})"
               if p["notes"] else "–")
      inst = (f"{i['instrument']['accuracy']:.3f} ({i['instrument_from_z_p']:.3f})"
              if i["notes"] else "–")
      lines.append(f"| {name} | {pitch} | {inst} |")
  clustered = {n: m for n, m in metrics.items() if "clusters" in m}
  if clustered:
    lines += ["", "## Timbre components as clusters (MGMVAE; beyond the paper)", "",
              "| cell | purity | NMI | ARI | matched accuracy | components used |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, m in clustered.items():
      c = m["clusters"]
      lines.append(f"| {name} | {c['purity']:.3f} | {c['nmi']:.3f} | {c['ari']:.3f} | "
                   f"{c['matched_accuracy']:.3f} | {c['used_components']} |")
  return "\n".join(lines) + "\n"
