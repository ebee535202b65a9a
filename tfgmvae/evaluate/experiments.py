"""The paper's experiments (SPEC §3) on a trained model, as functions of numpy arrays.

Each function takes the model, the encoded splits (`Codes`) and, where it judges
decoded spectrograms, the CNN baselines, and returns plain dicts of numbers (what
`metrics.json` records) plus the arrays its figure needs.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tfgmvae.audio import spectral
from tfgmvae.data.dataset import PipelineConfig, make_dataset
from tfgmvae.data.prepare import Prepared
from tfgmvae.evaluate import stats
from tfgmvae.evaluate.classifiers import LinearProbe, predict_proba
from tfgmvae.serving.export import centres_from_codes, matched_components


@dataclasses.dataclass
class Codes:
  """Posterior means and labels of one split (and its log-mels if kept)."""
  z_timbre: np.ndarray
  z_pitch: np.ndarray
  instrument: np.ndarray
  pitch: np.ndarray
  labelled: np.ndarray
  keys: list
  mel: np.ndarray | None = None

  def __len__(self):
    return len(self.instrument)


def encode_split(model, prepared: Prepared, split: str, keep_mel: bool = False,
                 batch_size: int = 128) -> Codes:
  """Encodes every note of a split (all labels visible) into posterior means."""
  ds = make_dataset(prepared, split, PipelineConfig(batch_size=batch_size, shuffle=False,
                                                    cache=""))
  encode = tf.function(lambda mel: model.encode(mel, training=False),
                       reduce_retracing=True)
  parts = {k: [] for k in ("z_timbre", "z_pitch", "instrument", "pitch", "labelled",
                           "keys", "mel")}
  for batch in ds:
    out = encode(batch["mel"])
    parts["z_timbre"].append(out["z_timbre_mean"].numpy())
    parts["z_pitch"].append(out["z_pitch_mean"].numpy())
    for name in ("instrument", "pitch", "labelled"):
      parts[name].append(batch[name].numpy())
    parts["keys"].extend(k.decode() for k in batch["key"].numpy())
    if keep_mel:
      parts["mel"].append(batch["mel"].numpy())
  mels = parts.pop("mel")
  mel = np.concatenate(mels) if keep_mel else None
  keys = parts.pop("keys")
  return Codes(**{k: np.concatenate(v) for k, v in parts.items()}, keys=keys, mel=mel)


def decode_map(model, z_timbre, z_pitch, fn, batch_size: int = 256) -> np.ndarray:
  """fn(decoded normalised log-mels) per batch, concatenated: decodes without keeping
  every spectrogram in memory."""
  decode = _decoder(model)
  out = []
  for start in range(0, len(z_timbre), batch_size):
    mels = decode(tf.constant(z_timbre[start:start + batch_size], tf.float32),
                  tf.constant(z_pitch[start:start + batch_size], tf.float32)).numpy()
    out.append(fn(mels))
  return np.concatenate(out)


def _decoder(model):
  if not hasattr(model, "_eval_decode"):
    model._eval_decode = tf.function(  # pylint: disable=protected-access
        lambda zt, zp: model.decode(zt, zp, training=False), reduce_retracing=True)
  return model._eval_decode  # pylint: disable=protected-access


# -- timbre centres ----------------------------------------------------------------------

def timbre_centres(model, train: Codes, mapping: dict[int, int] | None = None):
  """Per-instrument timbre means and stds [K, L] for synthesis and transfer, and where
  they come from.

  MGMVAE: the prior's component means and its fixed sigma_t. Component k is instrument
  k when the run had labels; with N = 0, `mapping` ({component: instrument}, from
  `clusters`) says which component stands for which instrument. MVAE (no components):
  the mean and std of the training notes' z_t per instrument.
  """
  k = model.config.num_instruments
  if model.timbre_prior is None:
    means, scales = centres_from_codes(train.z_timbre, train.instrument, k)
    return means, scales, "training codes per instrument (MVAE)"
  components = model.timbre_prior.means.numpy()
  scales = np.full_like(components, model.timbre_prior.scale)
  if mapping is None:
    return components, scales, "prior components"
  means = np.zeros_like(components)
  for component, instrument in mapping.items():
    means[instrument] = components[component]
  return means, scales, "prior components matched to instruments (N = 0)"


# -- Table 1 -----------------------------------------------------------------------------

def linear_probes(train: Codes, val: Codes, num_instruments: int,
                  num_pitches: int) -> dict:
  """F-scores of one-Dense-layer classifiers from z_t and z_p to instrument and pitch,
  trained on every training note, scored on the validation split."""
  out = {}
  for code in ("z_timbre", "z_pitch"):
    out[code] = {}
    for task, classes in (("instrument", num_instruments), ("pitch", num_pitches)):
      probe = LinearProbe(classes).fit(getattr(train, code),
                                                  getattr(train, task))
      out[code][task] = stats.f_scores(getattr(val, task),
                                       probe.predict(getattr(val, code)))
  return out


def cnn_scores(cnns: dict, val: Codes) -> dict:
  """F-scores of the CNN baselines on the validation split's log-mels (None for a task
  without a CNN, e.g. instrument at N = 0)."""
  return {task: None if cnn is None else stats.f_scores(
      getattr(val, task), predict_proba(cnn, val.mel).argmax(-1))
          for task, cnn in cnns.items()}


# -- Figure 2 ----------------------------------------------------------------------------

def tsne(z_timbre, centres, seed: int = 0, max_notes: int = 2000):
  """2-D t-SNE of notes' z_t together with the centres (so both share one map).

  Returns:
    (note positions [n, 2], centre positions [K, 2], indices of the notes used).
  """
  from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  rows = np.arange(len(z_timbre))
  if len(rows) > max_notes:
    rows = np.sort(rng.choice(rows, max_notes, replace=False))
  points = np.concatenate([z_timbre[rows], centres]).astype(np.float64)
  perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3.0)))
  xy = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
  return xy[:len(rows)], xy[len(rows):], rows


def _judge(cnns: dict):
  """mels -> [instrument probabilities | pitch probabilities] of the CNNs."""
  return lambda mels: np.concatenate([predict_proba(cnns["instrument"], mels),
                                      predict_proba(cnns["pitch"], mels)], -1)


# -- Figure 3 ----------------------------------------------------------------------------

def controllable_synthesis(model, val: Codes, t_means, t_scales, cnns: dict,
                           ws=(0.0, 0.5, 1.0), draws: int = 30, seed: int = 0) -> dict:
  """For each validation note's (instrument k, pitch m): z_p ~ N(mu_m, (w sigma_p)^2),
  z_t ~ N(mu_k, (w sigma_k)^2), `draws` times per w; decode; F-scores of the CNNs'
  predictions against (k, m)."""
  p_means = model.pitch_prior.means.numpy()
  sigma_p = model.pitch_prior.scale
  inst = np.repeat(val.instrument, draws)
  pitch = np.repeat(val.pitch, draws)
  rng = np.random.default_rng(seed)
  out = {}
  for w in ws:
    zt = t_means[inst] + w * t_scales[inst] * rng.standard_normal(t_means[inst].shape)
    zp = p_means[pitch] + w * sigma_p * rng.standard_normal(p_means[pitch].shape)
    probs = decode_map(model, zt, zp, _judge(cnns))
    k = cnns["instrument"].output_shape[-1]
    out[f"w_{w:g}"] = {"instrument": stats.f_scores(inst, probs[:, :k].argmax(-1)),
                       "pitch": stats.f_scores(pitch, probs[:, k:].argmax(-1)),
                       "notes": int(len(inst))}
  return out


# -- Figure 5 ----------------------------------------------------------------------------

def timbre_transfer(model, val: Codes, t_means, instruments, representatives, cnns,
                    alphas=(0.0, 0.25, 0.5, 0.75, 1.0)) -> dict:
  """z_t' = z_t + alpha (mu_target - mu_source) for the source's validation notes, for
  every ordered pair of representatives: the CNN's mean instrument posterior and the
  pitch F-score per alpha."""
  index = {name: i for i, name in enumerate(instruments)}
  out = {}
  for source in representatives:
    rows = val.instrument == index[source]
    if not rows.any():
      continue
    for target in representatives:
      if target == source:
        continue
      shift = t_means[index[target]] - t_means[index[source]]
      pair = {}
      for alpha in alphas:
        probs = decode_map(model, val.z_timbre[rows] + alpha * shift, val.z_pitch[rows],
                           _judge(cnns))
        k = len(instruments)
        posterior = probs[:, :k].mean(0)
        pair[f"alpha_{alpha:g}"] = {
            "posterior": [float(p) for p in posterior],
            "source_probability": float(posterior[index[source]]),
            "target_probability": float(posterior[index[target]]),
            "pitch": stats.f_scores(val.pitch[rows], probs[:, k:].argmax(-1))}
      pair["notes"] = int(rows.sum())
      out[f"{source}->{target}"] = pair
  return out


# -- Figures 7 and 8 ---------------------------------------------------------------------

def centroid_dimension(model, train: Codes, val: Codes, instruments, audio,
                       log_mel_min: float, log_mel_max: float, shift: float = 2.0,
                       steps: int = 7, select_notes: int = 512, seed: int = 0) -> dict:
  """The z_t dimension whose +-shift*sigma_t change moves the spectral centroid most,
  per-instrument t-tests of the validation notes' centroids at -shift and +shift
  sigma_t, and a traverse.

  The dimension is chosen on (up to `select_notes` of) the training notes, so the tests
  on the validation notes are not biased by the choice. sigma_t is the timbre
  components' fixed std (MGMVAE) or the N(0, I) prior's 1 (MVAE). The main test is the
  paired t-test (the same notes decoded twice); Welch's unpaired test, closer to
  comparing the two distributions as the paper's Figure 7 does, is reported beside it.
  """
  sigma = model.timbre_prior.scale if model.timbre_prior is not None else 1.0
  centres, widths = stats.mel_bands_hz(audio.sample_rate, audio.n_mels, audio.fmin,
                                       audio.fmax)

  def centroid(mels):
    power = np.exp(spectral.denormalise(mels, log_mel_min, log_mel_max).numpy())
    power = np.maximum(power - audio.log_floor, 0.0)
    return stats.spectral_centroid(power, centres, widths)

  latent = val.z_timbre.shape[1]

  def shifted(codes: Codes, d: int):
    delta = np.zeros(latent, np.float32)
    delta[d] = shift * sigma
    return (decode_map(model, codes.z_timbre - delta, codes.z_pitch, centroid),
            decode_map(model, codes.z_timbre + delta, codes.z_pitch, centroid))

  rows = np.arange(len(train))
  if len(rows) > select_notes:
    rows = np.sort(np.random.default_rng(seed).choice(rows, select_notes, replace=False))
  subset = Codes(train.z_timbre[rows], train.z_pitch[rows], train.instrument[rows],
                 train.pitch[rows], train.labelled[rows], [train.keys[i] for i in rows])
  effect = {}
  for d in range(latent):
    minus, plus = shifted(subset, d)
    effect[d] = float(np.mean(plus - minus))
  best = max(effect, key=lambda d: abs(effect[d]))
  minus, plus = shifted(val, best)
  base = decode_map(model, val.z_timbre, val.z_pitch, centroid)
  per_instrument = {}
  for i, name in enumerate(instruments):
    rows = val.instrument == i
    if rows.sum() < 2:
      continue
    paired = stats.paired_t_test(minus[rows], plus[rows])
    welch = stats.welch_t_test(minus[rows], plus[rows])
    per_instrument[name] = {"mean_minus_hz": float(minus[rows].mean()),
                            "mean_zero_hz": float(base[rows].mean()),
                            "mean_plus_hz": float(plus[rows].mean()),
                            "t_statistic": paired["t"], "p_value": paired["p"],
                            "welch_t_statistic": welch["t"], "welch_p_value": welch["p"],
                            "notes": int(rows.sum())}
  # The traverse: the validation note nearest the median centroid change.
  change = plus - minus
  note = int(np.argmin(np.abs(change - np.median(change))))
  values = np.linspace(-shift * sigma, shift * sigma, steps)
  zt = np.repeat(val.z_timbre[note:note + 1], steps, 0)
  zt[:, best] += values
  traverse = decode_map(model, zt, np.repeat(val.z_pitch[note:note + 1], steps, 0),
                        lambda m: m)
  p_values = [v["p_value"] for v in per_instrument.values()]
  return {"metrics": {"dimension": int(best), "sigma_t": float(sigma),
                      "shift_sigmas": float(shift),
                      "selection_notes": int(len(subset)),
                      "mean_shift_hz_by_dimension": [effect[d] for d in range(latent)],
                      "validation_mean_shift_hz": float(np.mean(change)),
                      "per_instrument": per_instrument,
                      "significant_instruments": int(sum(p < 0.05 for p in p_values)),
                      "tested_instruments": len(p_values),
                      "traverse_note": val.keys[note]},
          "centroids": {"minus": minus, "zero": base, "plus": plus},
          "traverse": {"values": values, "mels": traverse,
                       "centroids_hz": centroid(traverse)}}


# -- Beyond the paper: what the timbre components capture --------------------------------

def clusters(model, train: Codes, val: Codes, instruments) -> dict:
  """Each timbre component's instrument, by Hungarian matching on the training notes'
  labels, and how the components sort the validation notes (MGMVAE only).

  The matching is fitted on the training split, as every classifier here is, so that
  `matched_accuracy` on the validation notes is not raised by fitting to them (on
  codes that carry no instrument, in-sample matching of 12 components to 189 notes
  scores about twice chance). `train_matched_accuracy` is the in-sample figure. Purity,
  NMI and ARI need no matching and are of the validation notes.
  """
  def assigned(codes: Codes) -> np.ndarray:
    return model.timbre_prior.log_responsibilities(
        tf.constant(codes.z_timbre, tf.float32)).numpy().argmax(-1)

  k, components = len(instruments), model.timbre_prior.num_components
  train_assigned, val_assigned = assigned(train), assigned(val)
  mapping = matched_components(model.timbre_prior, train.z_timbre, train.instrument, k)

  def matched_accuracy(found, labels) -> float:
    return float(np.mean(np.array([mapping.get(int(c), -1) for c in found]) == labels))

  return {"metrics": {"components": {str(c): instruments[i] for c, i in mapping.items()},
                      "matched_accuracy": matched_accuracy(val_assigned, val.instrument),
                      "train_matched_accuracy": matched_accuracy(train_assigned,
                                                                 train.instrument),
                      "used_components": int(len(np.unique(val_assigned)))}
                     | stats.cluster_scores(val_assigned, val.instrument),
          "mapping": mapping,
          "table": stats.contingency(val_assigned, val.instrument, components, k)}


# -- Beyond the paper: does the decoder take pitch from z_p and instrument from z_t? -----

def swap_partners(keep, change, seed: int = 0) -> np.ndarray:
  """For each note j, a random other note i with keep[i] == keep[j] and
  change[i] != change[j]; -1 where there is none."""
  keep, change = np.asarray(keep), np.asarray(change)
  rng = np.random.default_rng(seed)
  out = np.full(len(keep), -1)
  for j in range(len(keep)):
    rows = np.flatnonzero((keep == keep[j]) & (change != change[j]))
    if len(rows):
      out[j] = rng.choice(rows)
  return out


def code_swap(model, val: Codes, cnns: dict, seed: int = 0) -> dict:
  """Decodes codes taken from two different notes and asks the CNNs what they hear.

  * pitch swap: note j from [z_t of a note i of the same instrument at another pitch,
    z_p of j]. A disentangled model sounds j's pitch ('pitch', F-scores against j); a
    model whose z_t carries pitch sounds i's ('pitch_from_z_t', accuracy against i).
  * instrument swap: [z_t of j, z_p of a note i of another instrument at the same
    pitch]: j's instrument ('instrument') or i's ('instrument_from_z_p').

  Linear probes (Table 1) say whether a code holds some information; this says whether
  the decoder uses it, which is what synthesis and transfer rely on.
  """
  k = cnns["instrument"].output_shape[-1]
  out = {}
  for name, keep, change in (("pitch", val.instrument, val.pitch),
                             ("instrument", val.pitch, val.instrument)):
    partner = swap_partners(keep, change, seed)
    j = np.flatnonzero(partner >= 0)
    if not len(j):
      out[f"{name}_swap"] = {"notes": 0}
      continue
    i = partner[j]
    zt, zp = ((val.z_timbre[i], val.z_pitch[j]) if name == "pitch"
              else (val.z_timbre[j], val.z_pitch[i]))
    probs = decode_map(model, zt, zp, _judge(cnns))
    heard = {"instrument": probs[:, :k].argmax(-1), "pitch": probs[:, k:].argmax(-1)}
    other = "pitch" if name == "instrument" else "instrument"
    source = "z_t" if name == "pitch" else "z_p"
    out[f"{name}_swap"] = {
        "notes": int(len(j)),
        name: stats.f_scores(getattr(val, name)[j], heard[name]),
        f"{name}_from_{source}": float(np.mean(heard[name] == getattr(val, name)[i])),
        other: stats.f_scores(getattr(val, other)[j], heard[other])}
  return out
