"""The evaluation's figures (matplotlib, written as PNG). Every figure has axis labels and
a legend or a colour bar.

matplotlib comes with the `eval` extra (`pip install -e '.[eval]'`); `require()` says so
when it is missing.
"""

import numpy as np


class FigureError(RuntimeError):
  """The figures cannot be drawn (matplotlib is missing)."""


def require():
  """matplotlib.pyplot with the file-only Agg backend.

  Raises:
    FigureError: matplotlib is not installed.
  """
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise FigureError("bin/evaluate draws its figures with matplotlib, which is not "
                      "installed: pip install -e '.[eval]' (or matplotlib==3.9.2).") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path):
  fig.savefig(path, dpi=110, bbox_inches="tight")
  require().close(fig)
  return path


def _colours(n):
  plt = require()
  cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
  return [cmap(i % cmap.N) for i in range(n)]


def tsne(path, xy, centre_xy, labels, instruments, centre_names, title,
         centre_label="component means"):
  """Figure 2: notes' z_t in 2-D coloured by instrument, centres as labelled crosses."""
  plt = require()
  fig, ax = plt.subplots(figsize=(7, 6))
  colours = _colours(len(instruments))
  for i, name in enumerate(instruments):
    rows = labels == i
    if rows.any():
      ax.scatter(xy[rows, 0], xy[rows, 1], s=10, color=colours[i], label=name, alpha=0.8)
  ax.scatter(centre_xy[:, 0], centre_xy[:, 1], marker="X", s=110, color="black",
             edgecolor="white", label=centre_label)
  for (x, y), name in zip(centre_xy, centre_names):
    ax.annotate(name, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8)
  ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2", title=title)
  ax.legend(fontsize=7, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
  return _save(fig, path)


def synthesis(path, results, title):
  """Figure 3: instrument and pitch F-scores of synthesised notes against w."""
  plt = require()
  ws = list(results)
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
  for ax, task in zip(axes, ("instrument", "pitch")):
    x = np.arange(len(ws))
    for j, (kind, label) in enumerate((("f1_weighted", "F1 (weighted)"),
                                       ("f1_macro", "F1 (macro)"))):
      values = [results[w][task][kind] for w in ws]
      bars = ax.bar(x + (j - 0.5) * 0.38, values, 0.38, label=label)
      ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [w.replace("w_", "w = ") for w in ws])
    ax.set(xlabel="sampling spread w", ylabel="F-score", ylim=(0, 1.08),
           title=f"{task} (CNN on synthesised notes)")
    ax.legend(fontsize=7, loc="lower left")
  fig.suptitle(title)
  return _save(fig, path)


def transfer(path, results, instruments, title):
  """Figure 5: the CNN's mean instrument posterior per alpha, one panel per pair."""
  plt = require()
  pairs = list(results)
  cols = min(4, len(pairs))
  rows = (len(pairs) + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.4 * rows), squeeze=False,
                           layout="constrained")
  image = None
  for n, (ax, pair) in enumerate(zip(axes.flat, pairs)):
    alphas = [a for a in results[pair] if a.startswith("alpha_")]
    grid = np.array([results[pair][a]["posterior"] for a in alphas])
    image = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="magma")
    ax.set_yticks(range(len(alphas)), [a.replace("alpha_", "") for a in alphas])
    ax.set_xticks(range(len(instruments)), instruments, rotation=90, fontsize=7)
    before = results[pair][alphas[0]]["pitch"]["f1_weighted"]
    after = results[pair][alphas[-1]]["pitch"]["f1_weighted"]
    ax.set(xlabel="CNN's predicted instrument" if n >= len(pairs) - cols else "",
           ylabel="alpha" if n % cols == 0 else "",
           title=f"{pair}\npitch F1 {before:.2f} -> {after:.2f}")
    ax.title.set_fontsize(8)
  for ax in list(axes.flat)[len(pairs):]:
    ax.axis("off")
  if image is not None:
    fig.colorbar(image, ax=axes, shrink=0.8, label="mean posterior")
  fig.suptitle(title)
  return _save(fig, path)


def centroid(path, centroids, labels, instruments, metrics, title):
  """Figure 7: spectral centroids per instrument at -shift, 0 and +shift sigma_t."""
  plt = require()
  present = [i for i, name in enumerate(instruments) if name in metrics["per_instrument"]]
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(present)), 4))
  if not present:   # (small data: no instrument has the notes a t-test needs)
    ax.axis("off")
    ax.text(0.5, 0.5, "No instrument has enough validation notes for the t-test.",
            ha="center", va="center")
    ax.set_title(f"{title}: z_t dimension {metrics['dimension']}")
    return _save(fig, path)
  shift = metrics["shift_sigmas"]
  styles = (("minus", f"-{shift:g} sigma_t", "tab:blue"), ("zero", "0", "tab:gray"),
            ("plus", f"+{shift:g} sigma_t", "tab:red"))
  for j, (key, label, colour) in enumerate(styles):
    data = [centroids[key][labels == i] for i in present]
    box = ax.boxplot(data, positions=np.arange(len(present)) * 4 + j, widths=0.8,
                     patch_artist=True, showfliers=False)
    for patch in box["boxes"]:
      patch.set_facecolor(colour)
    ax.plot([], [], color=colour, lw=6, label=label)
  names = []
  for i in present:
    p = metrics["per_instrument"][instruments[i]]["p_value"]
    names.append(f"{instruments[i]}\np={p:.1g}")
  ax.set_xticks(np.arange(len(present)) * 4 + 1, names, fontsize=7)
  ax.set(xlabel="instrument (two-tailed paired t-test, -shift vs +shift)",
         ylabel="spectral centroid (Hz)",
         title=f"{title}: z_t dimension {metrics['dimension']}")
  ax.legend(fontsize=8)
  return _save(fig, path)


def traverse(path, mels, values, centroids_hz, dimension, title):
  """Figure 8: decoded log-mels along one z_t dimension, with their centroids."""
  plt = require()
  fig, axes = plt.subplots(1, len(mels), figsize=(1.7 * len(mels), 3.4), sharey=True,
                           layout="constrained")
  image = None
  for ax, mel, value, c in zip(np.atleast_1d(axes), mels, values, centroids_hz):
    image = ax.imshow(mel.T, origin="lower", aspect="auto", vmin=-1, vmax=1,
                      cmap="magma")
    ax.set(title=f"shift {value:+.1f}\n{c:.0f} Hz", xlabel="frame")
    ax.title.set_fontsize(8)
  np.atleast_1d(axes)[0].set_ylabel("mel band")
  fig.colorbar(image, ax=axes, shrink=0.8, label="normalised log-mel")
  fig.suptitle(f"{title}: traverse of z_t dimension {dimension} "
               "(shift, then spectral centroid)", fontsize=9)
  return _save(fig, path)


def components(path, table, instruments, mapping, title):
  """Which instruments each timbre component captures (validation notes)."""
  plt = require()
  fig, ax = plt.subplots(figsize=(0.5 * len(instruments) + 3, 0.4 * len(table) + 2))
  image = ax.imshow(table, cmap="Blues", aspect="auto")
  ax.set_xticks(range(len(instruments)), instruments, rotation=90, fontsize=7)
  ax.set_yticks(range(len(table)), [
      f"{c} -> {instruments[mapping[c]]}" if c in mapping else f"{c}"
      for c in range(len(table))], fontsize=7)
  for (r, c), n in np.ndenumerate(table):
    if n:
      ax.text(c, r, str(n), ha="center", va="center", fontsize=6)
  ax.set(xlabel="instrument label", ylabel="timbre component (-> matched instrument)",
         title=title)
  fig.colorbar(image, ax=ax, label="validation notes")
  return _save(fig, path)
