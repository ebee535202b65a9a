"""The exported model: one `tf.Module` whose named signatures serve a trained GMVAE.

`ServingModule` wraps a live `GMVAE` (it does not duplicate it) together with everything
needed to go from sound to sound inside the graph: the vocabularies, the training
split's log-mel range, the audio front end (core-TF resampler, Slaney mel filterbank)
and the inverse (mel -> linear magnitude -> Griffin-Lim). Its signatures, all batched:

* `encode`: audio [B, n] at `sample_rate` (scalar) -> posterior means and log-variances,
  `instrument_probs` [B, K], `pitch_probs` [B, M], `instrument` (name) and `pitch` (MIDI);
* `encode_mel`: normalised log-mel [B, T, F] -> the same;
* `decode`: `z_timbre`, `z_pitch` [B, L] -> `mel` (normalised) and `audio`;
* `synthesize` (also `serving_default`) and `synthesize_mel` (no audio):
  `instrument`, `pitch`, `w` (0 to `MAX_W`), `seed` [B] ->
  z_p ~ N(mu_pitch, (w sigma_p)^2), z_t ~ N(mu_instrument, (w sigma_t)^2), decoded;
* `transfer`: audio, `sample_rate`, `target_instrument`, `alpha` [B] ->
  z_t' = z_t + alpha (mu_target - mu_source), the source being the inferred instrument
  (also returned, with the pitch the model hears, `pitch`);
  `transfer_from_source` takes the source as `source_instrument` [B].

Bad input (an unknown name, a pitch outside the vocabulary, alpha outside [0, 1], w
outside [0, `MAX_W`], a wrong shape (declared by each signature, but checked again: a
loaded SavedModel does not enforce it), a bad rate, non-finite samples or codes, codes
so large that the decoded mel overflows) fails with an InvalidArgument error whose
message says what was expected. `decode` takes any finite codes: those far from the
training notes' give a mel saturated at +-1 (the decoder ends in tanh). Only core
TensorFlow ops are used, so TF Serving loads the export as it is.

For MVAE, whose timbre prior has no per-instrument components, `timbre_means` and
`timbre_scales` are the mean and standard deviation of the training notes' posterior
means per instrument (computed at export); for MGMVAE they are the prior's own. A run
trained without instrument labels (N = 0) has no trained classifier (MVAE) and its
components in no particular order (MGMVAE): its export orders the components by
Hungarian matching on the training notes' labels, as `bin/evaluate` names them, and
names a note's instrument by the centre its z_t is likeliest under.
"""

import numpy as np
import tensorflow as tf

from tfgmvae.audio import spectral
from tfgmvae.audio.config import AudioConfig
from tfgmvae.audio.resample import resample

# Notes inverted to audio at a time (see spectral.log_mel_to_audio).
AUDIO_CHUNK = 16
# Input rates accepted by `encode` and `transfer`.
MIN_RATE, MAX_RATE = 1_000, 384_000
# The largest spread `synthesize` accepts, in prior standard deviations: codes further
# out than the training notes' are decoded to a mel saturated at the tanh's +-1 (noise,
# not a note); the paper samples at w = 0, 0.5 and 1.
MAX_W = 10.0


class _Ref:
  """Holds the Keras model outside TensorFlow's object tracking (its variables are
  tracked explicitly, as Keras's own ExportArchive does)."""

  def __init__(self, model):
    self.model = model


def _spec(shape, dtype, name):
  return tf.TensorSpec(shape, dtype, name=name)


_AUDIO = _spec([None, None], tf.float32, "audio")
_RATE = _spec([], tf.int32, "sample_rate")


class ServingModule(tf.Module):
  """Synthesis, timbre transfer and the codes of a trained model, as signatures."""

  def __init__(self, model, instruments, pitches, audio_config: AudioConfig,
               log_mel_min: float, log_mel_max: float, timbre_means=None,
               timbre_scales=None, griffin_lim_iters: int = 32,
               name_by_centres: bool = False):
    """Wraps `model`.

    Args:
      model: A built, trained `GMVAE`.
      instruments: The instrument vocabulary (names, in the model's class order).
      pitches: The pitch vocabulary (MIDI numbers, in class order).
      audio_config: The front end the model was trained with.
      log_mel_min: The training split's log-mel minimum (normalisation).
      log_mel_max: Its maximum.
      timbre_means: [K, L] per-instrument timbre centres; default the MGMVAE prior's.
      timbre_scales: [K, L] their spread; default sigma_t everywhere.
      griffin_lim_iters: Griffin-Lim iterations of the audio outputs.
      name_by_centres: Name a note's instrument by the Gaussian centre (`timbre_means`,
        `timbre_scales`) its z_t is likeliest under, not by the model's classifier or
        prior components (for a run trained without labels, N = 0).
    """
    super().__init__(name="tfgmvae")
    c = model.config
    self._ref = _Ref(model)
    # The tf.Variables under Keras 3's variable wrappers: the ones the traced signatures
    # read. Saving the wrappers gave the SavedModel's restore op other variables, so a
    # session loader (TF Serving's C++ SavedModelBundle, TF1's loader) left the model's
    # weights uninitialised; only tf.saved_model.load, which restores by object, worked.
    self.model_variables = [getattr(v, "value", v) for v in model.variables]
    self._audio = audio_config
    self._lo, self._hi = float(log_mel_min), float(log_mel_max)
    self._iters = int(griffin_lim_iters)
    self._name_by_centres = bool(name_by_centres)
    self.instruments = tf.Variable(np.array(instruments, dtype=object), trainable=False,
                                   dtype=tf.string, name="instruments")
    self.pitches = tf.Variable(np.array(pitches, np.int32), trainable=False,
                               name="pitches")
    if timbre_means is None:
      if model.timbre_prior is None:
        raise ValueError("an MVAE needs timbre_means (its prior has no components)")
      timbre_means = model.timbre_prior.means
    self.timbre_means = tf.Variable(tf.convert_to_tensor(timbre_means, tf.float32),
                                    trainable=False, name="timbre_means")
    if timbre_scales is None:
      timbre_scales = np.full([c.num_instruments, c.latent_dim], np.exp(c.log_sigma_t))
    self.timbre_scales = tf.Variable(np.asarray(timbre_scales, np.float32),
                                     trainable=False, name="timbre_scales")
    self.sample_rate = tf.Variable(audio_config.sample_rate, trainable=False,
                                   dtype=tf.int32, name="sample_rate")
    # Variables, not graph constants: the SavedModel then holds one copy of each, not
    # one per traced function that analyses or inverts a log-mel.
    self.mel_filterbank = tf.Variable(spectral.mel_filterbank(audio_config),
                                      trainable=False, name="mel_filterbank")
    self.mel_pseudo_inverse = tf.Variable(spectral.mel_pseudo_inverse(audio_config),
                                          trainable=False, name="mel_pseudo_inverse")
    # The signatures whose shapes depend on this model declare them whole, so a client
    # reading TF Serving's metadata (or saved_model_cli) sees [-1, 43, 256] and [-1, 16].
    latent = c.latent_dim
    self.encode_mel = tf.function(self._encode_mel, input_signature=[
        _spec([None, audio_config.frames, audio_config.n_mels], tf.float32, "mel")])
    self.decode = tf.function(self._decode, input_signature=[
        _spec([None, latent], tf.float32, "z_timbre"),
        _spec([None, latent], tf.float32, "z_pitch")])

  @property
  def model(self):
    return self._ref.model

  @property
  def _mel_matrices(self) -> spectral.MelMatrices:
    return spectral.MelMatrices(self.mel_filterbank, self.mel_pseudo_inverse)

  # -- helpers (traced into the signatures) ---------------------------------------------

  def _batch(self, tensors: dict, what: str):
    """Asserts that every [B] input has the same length B > 0; returns B."""
    names = list(tensors)
    size = tf.shape(tensors[names[0]])[0]
    checks = [tf.debugging.assert_positive(
        size, message=f"{what}: input {names[0]} is empty; expected at least one note")]
    checks += [tf.debugging.assert_equal(
        tf.shape(tensors[n])[0], size,
        message=f"{what}: inputs {', '.join(names)} must all have the same length "
                f"(one value per note); '{n}' differs from '{names[0]}'")
              for n in names[1:]]
    with tf.control_dependencies(checks):
      return tf.identity(size)

  def _index(self, names, what: str):
    """Instrument names [B] -> class indices [B]; unknown names are an error."""
    matches = tf.equal(names[:, None], self.instruments[None, :])
    known = tf.reduce_any(matches, axis=1)
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        [f"{what}: unknown instrument name(s)",
         tf.where(tf.equal(names, ""), "(empty)", names)[~known],
         "; expected one of", self.instruments], summarize=1000)
    with tf.control_dependencies([check]):
      return tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)

  def _pitch_index(self, pitch):
    matches = tf.equal(pitch[:, None], self.pitches[None, :])
    known = tf.reduce_any(matches, axis=1)
    check = tf.debugging.Assert(
        tf.reduce_all(known),
        ["pitch: MIDI number(s)", tf.boolean_mask(pitch, ~known),
         "are not in the model's vocabulary; expected one of", self.pitches],
        summarize=1000)
    with tf.control_dependencies([check]):
      return tf.argmax(tf.cast(matches, tf.int32), axis=1, output_type=tf.int32)

  def _in_range(self, values, name, lo, hi=None):
    checks = [tf.debugging.assert_all_finite(values, f"{name} must be finite")]
    checks.append(tf.debugging.assert_greater_equal(
        values, lo, message=f"{name} must be >= {lo}" + ("" if hi is None else
                                                       f" and <= {hi}")))
    if hi is not None:
      checks.append(tf.debugging.assert_less_equal(
          values, hi, message=f"{name} must be >= {lo} and <= {hi}"))
    with tf.control_dependencies(checks):
      return tf.identity(values)

  def _mel_input(self, mel):
    # The signature declares the shape, but a loaded SavedModel (and TF Serving) does
    # not enforce it: a wrong one would fail deep in the encoder.
    a = self._audio
    check = tf.debugging.assert_equal(
        tf.shape(mel)[1:], [a.frames, a.n_mels],
        message=f"mel: expected shape [batch, {a.frames}, {a.n_mels}] (a normalised "
                "log-mel)")
    with tf.control_dependencies([check]):
      return tf.debugging.assert_all_finite(mel, "mel must be finite")

  def _features(self, audio, sample_rate):
    """Audio [B, n] at `sample_rate` -> normalised log-mel [B, T, F] (as in training)."""
    a = self._audio
    checks = [
        tf.debugging.assert_greater_equal(
            sample_rate, MIN_RATE, message=f"sample_rate must be >= {MIN_RATE} and <= "
                                           f"{MAX_RATE} Hz"),
        tf.debugging.assert_less_equal(
            sample_rate, MAX_RATE, message=f"sample_rate must be >= {MIN_RATE} and <= "
                                           f"{MAX_RATE} Hz"),
        tf.debugging.assert_all_finite(audio, "audio holds NaN or infinite samples"),
    ]
    rate64 = tf.cast(sample_rate, tf.int64)
    start = tf.cast(tf.round(a.offset * tf.cast(rate64, tf.float64)), tf.int32)
    checks.append(tf.debugging.assert_greater(
        tf.shape(audio)[1], start,
        message=f"audio: each note needs more than offset={a.offset} s of samples"))
    with tf.control_dependencies(checks):   # as preparation refuses a silent note
      analysed = tf.cast(tf.math.ceil(a.duration * tf.cast(rate64, tf.float64)), tf.int32)
      peak = tf.reduce_max(tf.abs(audio[:, start:start + analysed]), axis=1)
      checks.append(tf.debugging.assert_greater_equal(
          peak, tf.cast(a.silence_threshold, audio.dtype),
          message=f"audio: a note is silent in its analysed segment ({a.offset:g} s to "
                  f"{a.offset + a.duration:g} s: peak under {a.silence_threshold:g}); "
                  "expected a sounding note"))
    with tf.control_dependencies(checks):
      # Keep the segment and a margin for the resampling filter, then resample.
      keep = tf.cast(tf.math.ceil((a.duration + 0.05) * tf.cast(rate64, tf.float64)),
                     tf.int32)
      x = audio[:, start:start + keep]
      x = resample(x, rate64, a.sample_rate)
    mel = spectral.log_mel(x, a, self._mel_matrices)
    return tf.ensure_shape(spectral.normalise(mel, self._lo, self._hi),
                           [None, a.frames, a.n_mels])

  def _codes(self, mel) -> dict:
    model = self.model
    out = model.encode(mel, training=False)
    if self._name_by_centres:   # log N(z_t; mean_k, diag(scale_k^2)) up to a constant
      gap = (out["z_timbre_mean"][:, None, :] - self.timbre_means) / self.timbre_scales
      inst = tf.nn.softmax(-tf.reduce_sum(0.5 * tf.square(gap)
                                          + tf.math.log(self.timbre_scales), -1))
    else:
      inst = tf.exp(model.instrument_log_probs(out["z_timbre_mean"]))
    pitch = tf.exp(model.pitch_log_probs(out["z_pitch_mean"]))
    out["instrument_probs"] = inst
    out["pitch_probs"] = pitch
    out["instrument"] = tf.gather(self.instruments, tf.argmax(inst, -1))
    out["pitch"] = tf.gather(self.pitches, tf.argmax(pitch, -1))
    return out

  def _audio_out(self, mel):
    log_mel = spectral.denormalise(mel, self._lo, self._hi)
    return spectral.log_mel_to_audio(log_mel, self._audio, n_iter=self._iters,
                                     chunk_size=AUDIO_CHUNK, matrices=self._mel_matrices)

  def _decoded(self, z_timbre, z_pitch, with_audio=True) -> dict:
    mel = self.model.decode(z_timbre, z_pitch, training=False)
    mel = tf.debugging.assert_all_finite(
        mel, "the decoded mel is not finite: the codes are so large that the decoder "
             "overflows (huge z_timbre/z_pitch values); expected codes of a size the model "
             "has seen")
    out = {"mel": mel}
    if with_audio:
      out["audio"] = self._audio_out(mel)
    return out

  def _sample(self, instrument, pitch, w, seed):
    n = self._batch({"instrument": instrument, "pitch": pitch, "w": w, "seed": seed},
                    "synthesize")
    k = self._index(instrument, "instrument")
    m = self._pitch_index(pitch)
    w = self._in_range(w, "w", 0.0, MAX_W)
    latent = self.model.config.latent_dim
    noise = tf.map_fn(lambda s: tf.random.stateless_normal([2, latent], tf.stack([s, 0])),
                      tf.cast(seed, tf.int64), fn_output_signature=tf.float32)
    noise = tf.reshape(noise, [n, 2, latent])
    prior = self.model.pitch_prior.conditional(m)   # p(z_p | y_p), scaled by w
    z_pitch = prior.mean() + w[:, None] * prior.stddev() * noise[:, 0]
    z_timbre = (tf.gather(self.timbre_means, k)
                + w[:, None] * tf.gather(self.timbre_scales, k) * noise[:, 1])
    return z_timbre, z_pitch

  def _transfer(self, audio, sample_rate, source, target, alpha):
    self._batch({"audio": audio, "target_instrument": target, "alpha": alpha},
                "transfer")
    codes = self._codes(self._features(audio, sample_rate))
    if source is None:
      src = tf.argmax(codes["instrument_probs"], -1, output_type=tf.int32)
    else:
      self._batch({"audio": audio, "source_instrument": source}, "transfer")
      src = self._index(source, "source_instrument")
    tgt = self._index(target, "target_instrument")
    alpha = self._in_range(alpha, "alpha", 0.0, 1.0)
    shift = tf.gather(self.timbre_means, tgt) - tf.gather(self.timbre_means, src)
    z_timbre = codes["z_timbre_mean"] + alpha[:, None] * shift
    out = self._decoded(z_timbre, codes["z_pitch_mean"])
    out["source_instrument"] = tf.gather(self.instruments, src)
    out["pitch"] = codes["pitch"]        # the note's pitch as the model hears it (MIDI)
    return out

  # -- signatures -----------------------------------------------------------------------

  @tf.function(input_signature=[_AUDIO, _RATE])
  def encode(self, audio, sample_rate):
    """Codes and predictions of notes given as audio."""
    self._batch({"audio": audio}, "encode")
    return self._codes(self._features(audio, sample_rate))

  # `encode_mel` and `decode` (shapes from the model: made tf.functions in __init__).

  def _encode_mel(self, mel):
    """Codes and predictions of notes given as normalised log-mels."""
    self._batch({"mel": mel}, "encode_mel")
    return self._codes(self._mel_input(mel))

  def _decode(self, z_timbre, z_pitch):
    """Normalised log-mel and audio of given codes."""
    latent = self.model.config.latent_dim
    self._batch({"z_timbre": z_timbre, "z_pitch": z_pitch}, "decode")
    checks = [tf.debugging.assert_equal(tf.shape(z)[1], latent,   # (as in _mel_input)
                                        message=f"{n}: expected shape [batch, {latent}]")
              for n, z in (("z_timbre", z_timbre), ("z_pitch", z_pitch))]
    checks += [tf.debugging.assert_all_finite(z, f"{n} must be finite")
               for n, z in (("z_timbre", z_timbre), ("z_pitch", z_pitch))]
    with tf.control_dependencies(checks):
      return self._decoded(tf.identity(z_timbre), tf.identity(z_pitch))

  _SYNTH = [_spec([None], tf.string, "instrument"), _spec([None], tf.int32, "pitch"),
            _spec([None], tf.float32, "w"), _spec([None], tf.int64, "seed")]

  @tf.function(input_signature=_SYNTH)
  def synthesize(self, instrument, pitch, w, seed):
    """A note of each (instrument, pitch): log-mel and audio."""
    return self._decoded(*self._sample(instrument, pitch, w, seed))

  @tf.function(input_signature=_SYNTH)
  def synthesize_mel(self, instrument, pitch, w, seed):
    """As `synthesize`, without the audio (no Griffin-Lim)."""
    return self._decoded(*self._sample(instrument, pitch, w, seed), with_audio=False)

  @tf.function(input_signature=[_AUDIO, _RATE,
                                _spec([None], tf.string, "target_instrument"),
                                _spec([None], tf.float32, "alpha")])
  def transfer(self, audio, sample_rate, target_instrument, alpha):
    """Moves each note's timbre code from its inferred instrument towards a target."""
    return self._transfer(audio, sample_rate, None, target_instrument, alpha)

  @tf.function(input_signature=[_AUDIO, _RATE,
                                _spec([None], tf.string, "source_instrument"),
                                _spec([None], tf.string, "target_instrument"),
                                _spec([None], tf.float32, "alpha")])
  def transfer_from_source(self, audio, sample_rate, source_instrument,
                           target_instrument, alpha):
    """As `transfer`, with the source instrument given instead of inferred."""
    return self._transfer(audio, sample_rate, source_instrument, target_instrument, alpha)

  # The traced methods served as signatures; `serving_default` is `synthesize` too.
  SIGNATURES = ("encode", "encode_mel", "decode", "synthesize", "synthesize_mel",
                "transfer", "transfer_from_source")

  def signatures(self, concrete: bool = True) -> dict:
    """Signature name -> function: `SIGNATURES`, and `serving_default` (`synthesize`).

    Args:
      concrete: Concrete functions, to call in this process. False gives the
        `tf.function`s, for `tf.saved_model.save`, which then traces each once in its own
        context (a function traced here beforehand would be saved twice, as two traces).
    """
    out = {name: getattr(self, name) for name in self.SIGNATURES}
    if concrete:
      out = {name: fn.get_concrete_function() for name, fn in out.items()}
    out["serving_default"] = out["synthesize"]
    return out
