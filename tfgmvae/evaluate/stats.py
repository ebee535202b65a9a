"""Small pure functions behind the evaluation: F-scores, cluster matching, t-tests,
spectral centroids and instrument families.

Everything here takes and returns numpy arrays or plain Python values, so each function
can be checked against a hand computation.
"""

import numpy as np
from scipy import optimize, stats
from sklearn import metrics as skm

from tfgmvae.audio import spectral

# Instrument abbreviations (TinySOL, the paper, the rendered corpus) and NSynth family
# names, by the paper's four families.
FAMILIES = {
    "brass": ("Fhn", "Hn", "Trop", "Tpt", "TpC", "Trtb", "Tbn", "BTb", "Tuba", "brass"),
    "keyboard": ("Pno", "Acc", "Org", "keyboard", "organ"),
    "strings": ("Vc", "Vn", "Va", "Cb", "strings", "string", "guitar", "bass"),
    "woodwinds": ("Bn", "Clr", "ClBb", "Ehn", "Fl", "Ob", "Sax", "ASax", "reed", "flute"),
}
FAMILY_ORDER = ("brass", "keyboard", "strings", "woodwinds")


def f_scores(y_true, y_pred) -> dict[str, float]:
  """Accuracy and F1 of class predictions.

  'f1_macro' is the unweighted mean of the per-class F1 over the classes that occur in
  `y_true` or `y_pred`; 'f1_weighted' weights each class's F1 by its count in `y_true`.
  """
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  if y_true.shape != y_pred.shape or not y_true.size:
    raise ValueError(f"f_scores: expected two equal, non-empty label arrays, got "
                     f"{y_true.shape} and {y_pred.shape}")
  return {"accuracy": float(np.mean(y_true == y_pred)),
          "f1_macro": float(skm.f1_score(y_true, y_pred, average="macro",
                                         zero_division=0)),
          "f1_weighted": float(skm.f1_score(y_true, y_pred, average="weighted",
                                            zero_division=0))}


def contingency(clusters, labels, num_clusters: int, num_labels: int) -> np.ndarray:
  """Counts [num_clusters, num_labels]: notes of each label in each cluster."""
  table = np.zeros([num_clusters, num_labels], np.int64)
  np.add.at(table, (np.asarray(clusters), np.asarray(labels)), 1)
  return table


def match_clusters(table: np.ndarray) -> dict[int, int]:
  """Hungarian matching of clusters to labels that maximises the matched notes.

  Args:
    table: Contingency counts [clusters, labels] (see `contingency`).

  Returns:
    {cluster: label} for min(clusters, labels) pairs; with more clusters than labels
    the unmatched clusters are left out.
  """
  rows, cols = optimize.linear_sum_assignment(-np.asarray(table))
  return {int(r): int(c) for r, c in zip(rows, cols)}


def cluster_scores(clusters, labels) -> dict[str, float]:
  """Purity (each cluster counted as its majority label), NMI and ARI."""
  clusters, labels = np.asarray(clusters), np.asarray(labels)
  table = contingency(clusters, labels, clusters.max() + 1, labels.max() + 1)
  return {"purity": float(table.max(axis=1).sum() / len(labels)),
          "nmi": float(skm.normalized_mutual_info_score(labels, clusters)),
          "ari": float(skm.adjusted_rand_score(labels, clusters))}


def welch_t_test(a, b) -> dict[str, float]:
  """Two-tailed t-test of equal means without assuming equal variances (Welch)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or len(b) < 2:
    return {"t": float("nan"), "p": float("nan")}
  result = stats.ttest_ind(a, b, equal_var=False)
  return {"t": float(result.statistic), "p": float(result.pvalue)}


def paired_t_test(a, b) -> dict[str, float]:
  """Two-tailed t-test that the paired differences a - b have mean 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) != len(b):
    raise ValueError(f"paired_t_test: {len(a)} and {len(b)} values; expected pairs")
  if len(a) < 2 or np.all(a - b == (a - b)[0]):
    return {"t": float("nan"), "p": float("nan")}
  result = stats.ttest_rel(a, b)
  return {"t": float(result.statistic), "p": float(result.pvalue)}


def mel_bands_hz(sample_rate: int, n_mels: int, fmin: float, fmax: float):
  """Centre frequencies and widths (Hz) of the Slaney mel bands used by the front end.

  A band's width is half the distance between its neighbours' centres,
  (f[k+2] - f[k]) / 2: the triangle's area once Slaney normalisation has divided it by
  that same amount.
  """
  del sample_rate   # (the bands end at fmax, below Nyquist)
  edges = spectral.mel_band_edges(n_mels, fmin, fmax)
  return edges[1:-1], (edges[2:] - edges[:-2]) / 2.0


def spectral_centroid(mel_power, centres_hz, widths_hz=None) -> np.ndarray:
  """Spectral centroid (Hz) of each note, from its mel power spectrogram.

  With Slaney (area-normalised) bands a band's value is the mean power density over
  the band, so each band counts with its width (`widths_hz`) to weigh the spectrum by
  frequency as a linear spectrum would; without widths the bands count equally. Each
  frame's centroid is the power-weighted mean of the band centres; a note's centroid is
  the mean over its frames weighted by the frames' power (so silent frames do not count).

  Args:
    mel_power: [..., frames, n_mels] non-negative.
    centres_hz: [n_mels].
    widths_hz: [n_mels] or None.

  Returns:
    [...] centroids in Hz.
  """
  power = np.asarray(mel_power, np.float64)
  if widths_hz is not None:
    power = power * np.asarray(widths_hz, np.float64)
  frame_energy = power.sum(axis=-1)
  frame_centroid = (power @ np.asarray(centres_hz, np.float64)) / np.maximum(
      frame_energy, 1e-30)
  return (frame_centroid * frame_energy).sum(-1) / np.maximum(frame_energy.sum(-1), 1e-30)


def family_of(instrument: str) -> str | None:
  """The paper's family of an instrument name, or None if it is not a known one."""
  for family, names in FAMILIES.items():
    if instrument in names or instrument.lower() in (n.lower() for n in names):
      return family
  return None


def representatives(counts: dict[str, int]) -> list[str]:
  """The most frequent instrument of each family (the paper's four representatives).

  Args:
    counts: Training notes per instrument.

  Returns:
    One instrument per family that has any, in the order brass, keyboard, strings,
    woodwinds (ties by name). If fewer than two families are found, the (up to) four
    most frequent instruments instead.
  """
  chosen = []
  for family in FAMILY_ORDER:
    members = [(-n, name) for name, n in counts.items() if family_of(name) == family]
    if members:
      chosen.append(min(members)[1])
  if len(chosen) < 2:
    chosen = [name for _, name in sorted((-n, name) for name, n in counts.items())[:4]]
  return chosen
