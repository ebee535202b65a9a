"""An evaluation's figures, its report.md and its TensorBoard summaries."""

import errno
import os

import numpy as np
import tensorflow as tf

from tfgmvae.evaluate import figures
from tfgmvae.train.history import read_file_events

F1_NOTE = ("F1 (weighted) averages the per-class F1 weighted by each class's number of "
           "validation notes; F1 (macro) is their unweighted mean.")


def matched_names(instruments, mapping: dict[int, int]) -> list[str]:
  """Labels of the timbre centres at N = 0: centre i is instrument i's, the mean of the
  component matched to it ({component: instrument})."""
  component = {i: c for c, i in mapping.items()}
  return [f"c{component[i]}->{name}" if i in component else f"{name} (no component)"
          for i, name in enumerate(instruments)]


def draw(folder: str, metrics: dict, arrays: dict, val, instruments, title: str,
         has_components: bool) -> dict[str, str]:
  """Writes every figure into `folder`; returns {figure key: file name}."""
  out = {}
  xy, centre_xy, rows = arrays["tsne"]
  names = list(instruments)
  if "clusters" in arrays and metrics["run"]["label_fraction"] == 0.0:
    names = matched_names(instruments, arrays["clusters"]["mapping"])
  figures.tsne(os.path.join(folder, "fig2_tsne.png"), xy, centre_xy,
               val.instrument[rows], instruments, names,
               f"{title}: z_t of validation notes (t-SNE)",
               "prior component means" if has_components
               else "per-instrument means of the training codes")
  out["fig2_tsne"] = "fig2_tsne.png"
  figures.synthesis(os.path.join(folder, "fig3_synthesis.png"), metrics["synthesis"],
                    f"{title}: controllable synthesis")
  out["fig3_synthesis"] = "fig3_synthesis.png"
  if metrics["transfer"]["pairs"]:
    figures.transfer(os.path.join(folder, "fig5_transfer.png"),
                     metrics["transfer"]["pairs"], instruments, f"{title}: timbre transfer")
    out["fig5_transfer"] = "fig5_transfer.png"
  found = arrays["centroid"]
  figures.centroid(os.path.join(folder, "fig7_centroid.png"), found["centroids"],
                   val.instrument, instruments, found["metrics"], title)
  out["fig7_centroid"] = "fig7_centroid.png"
  figures.traverse(os.path.join(folder, "fig8_traverse.png"), found["traverse"]["mels"],
                   found["traverse"]["values"], found["traverse"]["centroids_hz"],
                   found["metrics"]["dimension"], title)
  out["fig8_traverse"] = "fig8_traverse.png"
  if "clusters" in arrays:
    figures.components(os.path.join(folder, "components.png"), arrays["clusters"]["table"],
                       instruments, arrays["clusters"]["mapping"],
                       f"{title}: timbre components vs instruments")
    out["components"] = "components.png"
  return out


def _f(value, digits=3):
  return "–" if value is None else f"{value:.{digits}f}"


def markdown(metrics: dict, pictures: dict, title: str) -> str:
  """report.md: every table, with the figures beside them."""
  run = metrics["run"]
  lines = [f"# Evaluation: {title}", "",
           f"Run `{run['run_dir']}`, checkpoint `{os.path.basename(run['checkpoint'])}` "
           f"(epoch {run['epoch']}); data `{run['prepared_dir']}` ({run['train_notes']} "
           f"training, {run['validation_notes']} validation notes). Scores are on the "
           f"validation split. {F1_NOTE}", "",
           "## Table 1: what each code predicts", "",
           "| features | classifier | instrument F1 (weighted) | instrument F1 (macro) | "
           "pitch F1 (weighted) | pitch F1 (macro) |",
           "| --- | --- | --- | --- | --- | --- |"]
  t1 = metrics["table1"]
  for code, label in (("z_timbre", "z_t"), ("z_pitch", "z_p")):
    i, p = t1["linear"][code]["instrument"], t1["linear"][code]["pitch"]
    lines.append(f"| {label} | linear (one Dense layer) | {_f(i['f1_weighted'])} | "
                 f"{_f(i['f1_macro'])} | {_f(p['f1_weighted'])} | {_f(p['f1_macro'])} |")
  ci, cp = t1["cnn"]["instrument"] or {}, t1["cnn"]["pitch"]
  lines += [f"| log-mel | CNN (encoder + softmax) | {_f(ci.get('f1_weighted'))} | "
            f"{_f(ci.get('f1_macro'))} | {_f(cp['f1_weighted'])} | {_f(cp['f1_macro'])} |",
            "", "The instrument CNN saw the same share N of instrument labels as the run "
            "(none at N = 0, hence '–', as when N leaves too few labelled notes to train "
            "one); the pitch CNN saw every pitch label.", ""]
  if "clusters" in metrics:
    c = metrics["clusters"]
    lines += ["## Timbre components as clusters (beyond the paper)", "",
              f"Each validation note goes to its most likely timbre component, q(y_t|x); "
              f"components are matched one-to-one to instruments (Hungarian) on the "
              f"training notes' labels, then scored on the validation notes. Purity "
              f"{_f(c['purity'])}, NMI {_f(c['nmi'])}, ARI {_f(c['ari'])}, matched "
              f"accuracy {_f(c['matched_accuracy'])} (on the training notes "
              f"{_f(c['train_matched_accuracy'])}); "
              f"{c['used_components']} component{'s' * (c['used_components'] != 1)} used.", "",
              "| component | " + " | ".join(c["components"]) + " |",
              "| --- |" + " --- |" * len(c["components"]),
              "| instrument | " + " | ".join(c["components"].values()) + " |", "",
              f"![components]({pictures['components']})", ""]
  cnn = "; ".join(f"{name}: not trained, {r['skipped']}" if "skipped" in r else
                  f"{name}: {r['epochs']} epochs (best {r['best_epoch']}), held-out "
                  f"accuracy {r['holdout_accuracy']:.3f}" for name, r in metrics["cnn"].items())
  lines += [f"CNNs (from `{metrics['cnn_dir']}`): {cnn}.", ""]
  if run["label_fraction"] == 0.0 and "clusters" in metrics:
    lines += ["At N = 0 the components are named by matching them to instruments on the "
              "training notes' labels, which the model never saw, and synthesis and "
              "transfer below use that naming: a use of labels beyond the run's N "
              "(scored on the validation notes).", ""]
  elif "clusters" not in metrics and run["label_fraction"] < 1.0:
    lines += ["The MVAE's per-instrument timbre centres, which synthesis and transfer "
              "below use, are the means of every training note's z_t by instrument: a "
              "use of labels beyond the run's N (the MVAE has no other per-instrument "
              "centre).", ""]
  if run.get("warm_started_from"):
    lines += [f"The run was warm-started from `{run['warm_started_from']}`, so it also "
              "carries what that run learned (labels included).", ""]
  lines += ["## Figure 2: the timbre space", "",
            f"Timbre centres used below: {metrics['timbre_centres']}.", "",
            f"![t-SNE]({pictures['fig2_tsne']})", "",
            "## Figure 3: controllable synthesis", "",
            "Each validation note's (instrument, pitch) is synthesised from "
            "z_t ~ N(mu_k, (w sigma_t)^2), z_p ~ N(mu_m, (w sigma_p)^2) and classified "
            "by the CNNs trained on real notes.", "",
            "| w | notes | instrument F1 (weighted) | instrument F1 (macro) | "
            "pitch F1 (weighted) | pitch F1 (macro) |", "| --- | --- | --- | --- | --- | --- |"]
  for w, r in metrics["synthesis"].items():
    lines.append(f"| {w[2:]} | {r['notes']} | {_f(r['instrument']['f1_weighted'])} | "
                 f"{_f(r['instrument']['f1_macro'])} | {_f(r['pitch']['f1_weighted'])} | "
                 f"{_f(r['pitch']['f1_macro'])} |")
  lines += ["", f"![synthesis]({pictures['fig3_synthesis']})", "",
            "## Figure 5: timbre transfer", "",
            "z_t' = z_t + alpha (mu_target - mu_source) for the source's validation notes, "
            f"alpha in {metrics['settings']['alphas']}; the CNN's mean posterior of source "
            "and target, and the pitch F1 (weighted), at the first and last alpha.", "",
            "| pair | notes | P(source) at first alpha | P(target) at first alpha | "
            "P(source) at last alpha | P(target) at last alpha | pitch F1 at first alpha | "
            "pitch F1 at last alpha |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for pair, r in metrics["transfer"]["pairs"].items():
    keys = [k for k in r if k.startswith("alpha_")]
    a, b = r[keys[0]], r[keys[-1]]
    lines.append(f"| {pair} | {r['notes']} | {_f(a['source_probability'])} | "
                 f"{_f(a['target_probability'])} | {_f(b['source_probability'])} | "
                 f"{_f(b['target_probability'])} | {_f(a['pitch']['f1_weighted'])} | "
                 f"{_f(b['pitch']['f1_weighted'])} |")
  sources = {pair.split("->")[0] for pair in metrics["transfer"]["pairs"]}
  idle = [r for r in metrics["transfer"]["representatives"] if r not in sources]
  if idle:
    one = len(idle) == 1
    lines += ["", f"{', '.join(idle)} {'has' if one else 'have'} no validation notes, so "
              f"no transfer starts from {'it' if one else 'them'} "
              f"({'it is still a target' if one else 'they are still targets'})."]
  if "fig5_transfer" in pictures:
    lines += ["", f"![transfer]({pictures['fig5_transfer']})"]
  lines += swap_lines(metrics.get("swap"))
  c = metrics["centroid"]
  lines += ["", "## Figures 7-8: a timbre dimension for the spectral centroid", "",
            f"Shifting z_t dimension **{c['dimension']}** by ±{c['shift_sigmas']:g} "
            f"sigma_t (sigma_t = {c['sigma_t']:g}) moves the decoded notes' spectral "
            f"centroid most, chosen on {c['selection_notes']} training notes (mean change "
            f"{c['mean_shift_hz_by_dimension'][c['dimension']]:+.0f} Hz there, "
            f"{c['validation_mean_shift_hz']:+.0f} Hz on the validation notes, from -shift "
            f"to +shift). Centroids are computed on the decoded mel power spectrogram "
            f"(band centres, each band weighted by its width in Hz). Two-tailed paired "
            f"t-test of -shift against +shift per instrument on the validation notes: "
            f"p < 0.05 for {c['significant_instruments']} of {c['tested_instruments']} "
            f"instruments (Welch's unpaired test beside it).", "",
            "| instrument | notes | centroid at -shift (Hz) | at 0 | at +shift | t (paired) "
            "| p (paired) | p (Welch) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, r in c["per_instrument"].items():
    lines.append(f"| {name} | {r['notes']} | {r['mean_minus_hz']:.0f} | "
                 f"{r['mean_zero_hz']:.0f} | {r['mean_plus_hz']:.0f} | "
                 f"{r['t_statistic']:.2f} | {r['p_value']:.2g} | "
                 f"{r['welch_p_value']:.2g} |")
  if not c["per_instrument"]:
    lines[-2:] = ["No instrument has the two or more validation notes the t-tests need."]
  lines += ["", f"![centroids]({pictures['fig7_centroid']})", "",
            f"Traverse of note `{c['traverse_note']}`:", "",
            f"![traverse]({pictures['fig8_traverse']})", ""]
  return "\n".join(lines)


def swap_lines(swap: dict | None) -> list[str]:
  """The 'swapping codes' section of report.md (absent from evaluations before it)."""
  if not swap:
    return []
  p, i = swap["pitch_swap"], swap["instrument_swap"]
  lines = ["", "## Swapping codes between notes (beyond the paper)", ""]
  if not (p["notes"] or i["notes"]):
    return lines + ["No validation note has a partner (a note of the same instrument at "
                    "another pitch, or of another instrument at the same pitch)."]
  lines += ["Each validation note j is decoded from one code of its own and one of a "
            "partner note i, and judged by the CNNs. Pitch swap: z_t of a note of the "
            "same instrument at another pitch, z_p of j. Instrument swap: z_t of j, z_p "
            "of a note of another instrument at the same pitch. A disentangled model "
            "keeps j's pitch (from z_p) and j's instrument (from z_t).", "",
            "| swap | notes | heard as j (accuracy) | F1 (weighted) | heard as the "
            "partner i | other label kept (accuracy) |",
            "| --- | --- | --- | --- | --- | --- |"]
  if p["notes"]:
    lines.append(f"| pitch | {p['notes']} | {_f(p['pitch']['accuracy'])} | "
                 f"{_f(p['pitch']['f1_weighted'])} | {_f(p['pitch_from_z_t'])} | "
                 f"{_f(p['instrument']['accuracy'])} |")
  if i["notes"]:
    lines.append(f"| instrument | {i['notes']} | {_f(i['instrument']['accuracy'])} | "
                 f"{_f(i['instrument']['f1_weighted'])} | {_f(i['instrument_from_z_p'])} "
                 f"| {_f(i['pitch']['accuracy'])} |")
  return lines


# Evaluation event files end in this suffix and close with this tag, so a file cut short
# (a full disk: TensorFlow's writer does not always raise) is known by its missing last
# record. Files written before either existed count as whole.
SUFFIX, COMPLETE = ".evaluation", "evaluation/summaries_complete"


def _evaluation_files(logdir: str) -> dict[str, tuple[bool, set[int]]]:
  """Each event file in `logdir`: whether it is whole (not cut short), and the steps at
  which it holds evaluation summaries."""
  out = {}
  for path in tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")):
    events = list(read_file_events(path))
    whole = not path.endswith(SUFFIX) or any(
        v.tag == COMPLETE for event in events for v in event.summary.value)
    out[path] = (whole, {int(event.step) for event in events
                         if any(v.tag.startswith("evaluation/") for v in event.summary.value)})
  return out


def summarised_steps(logdir: str) -> set[int]:
  """Steps at which `logdir`'s event files already hold evaluation summaries (files cut
  short left out)."""
  return set().union(*(steps for whole, steps in _evaluation_files(logdir).values()
                       if whole))


def write_summaries(logdir: str, metrics: dict, pictures: dict[str, str],
                    step: int) -> bool:
  """Every scalar metric as `evaluation/<key>` and every figure as an image, at `step`.

  Returns:
    False, writing nothing, when `logdir` already holds an evaluation at `step` (the same
    checkpoint evaluated again): TensorBoard would show both as one jagged point.

  Raises:
    OSError or tf.errors.OpError: the summaries could not be written whole (the file
      written is removed, or, if TensorFlow writes it again, left marked as cut short
      and removed by the next evaluation).
  """
  files = _evaluation_files(logdir)
  if any(whole and step in steps for whole, steps in files.values()):
    return False
  for path, (whole, _) in files.items():
    if not whole:   # an earlier evaluation's, cut short
      tf.io.gfile.remove(path)
  writer = tf.summary.create_file_writer(logdir, filename_suffix=SUFFIX)
  with writer.as_default(step=step):
    for key, value in scalar_items({k: v for k, v in metrics.items() if k != "run"}):
      if np.isfinite(value):
        tf.summary.scalar(f"evaluation/{key}", value)
    for key, path in pictures.items():
      with open(path, "rb") as f:
        image = tf.image.decode_png(f.read(), channels=3)
      tf.summary.image(f"evaluation/{key}", image[tf.newaxis])
    tf.summary.scalar(COMPLETE, 1.0)
  writer.flush()
  writer.close()
  short = [path for path, (whole, _) in _evaluation_files(logdir).items()
           if not whole and path not in files]
  if short:
    for path in short:
      tf.io.gfile.remove(path)
    raise OSError(errno.EIO, "the evaluation's summaries did not all reach the event "
                  "file, which was removed (is the disk full?); --nosummaries leaves "
                  "TensorBoard out", logdir)
  return True


def scalar_items(metrics, prefix: str = ""):
  """(key, value) for every number in the metrics, keys joined with '/'."""
  if isinstance(metrics, dict):
    for k, v in metrics.items():
      yield from scalar_items(v, f"{prefix}/{k}" if prefix else str(k))
  elif isinstance(metrics, (bool, str)) or metrics is None:
    return
  elif isinstance(metrics, (int, float, np.floating, np.integer)):
    yield prefix, float(metrics)
