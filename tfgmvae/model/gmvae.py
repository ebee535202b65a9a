"""The paper's model: pitch and timbre encoders, a decoder, mixture priors, the objective.

`GMVAE` is a subclassed `keras.Model` with a custom `train_step` and `test_step`. Each
step returns every term of the objective by name, tracked with `keras.metrics.Mean`:

* `reconstruction`: squared error summed over the 43 x 256 bins;
* `kl_pitch`: KL(q(z_p|x) || N(mu_{y_p}, sigma_p^2 I));
* `kl_timbre`: MGMVAE: sum_k q(y_t=k|x) KL(q(z_t|x) || N(mu_k, sigma_t^2 I));
  MVAE: KL(q(z_t|x) || N(0, I));
* `kl_instrument`: MGMVAE only: KL(q(y_t|x) || Uniform(K));
* `instrument_ce`: cross-entropy of q(y_t|x) (MGMVAE) or of the auxiliary classifier
  (MVAE) on the labelled notes only (averaged over them);
* `pitch_ce`: cross-entropy of the linear pitch classifier on z_p (when enabled);
* `adversary_ce`: with `timbre_adversary` > 0 (beyond the paper), cross-entropy of the
  pitch adversary on the mean of z_t; it reaches the timbre encoder through a
  gradient-reversal layer, so the adversary minimises it while the encoder is pushed
  to raise it;
* `loss`: their sum, the quantity minimised (per batch; the logged epoch value is the
  sum of the terms' epoch means); `elbo`: minus the first four terms;
* `instrument_accuracy` (on labelled notes), `pitch_accuracy` and, with the adversary,
  `adversary_accuracy` (how well pitch can still be read from z_t).

Batches are dicts with `mel` [B, T, F] (or `audio` [B, samples] plus a `features`
function), `pitch`, `instrument` (int indices), `labelled` (bool) and optionally `noise`
[B, 2, L], the reparameterisation noise for (z_p, z_t); the training pipeline supplies it
so that a run is reproducible and independent of how a batch is split across replicas.
Under a `tf.distribute` strategy the loss is normalised by the global batch, and the step
sums the replicas' gradients (Keras 3.4's optimizer does not when it uses merge_call), so
every replica applies the single-device gradient. The trackers are updated with
all-replica sums, so every replica holds, and Keras logs, the global means.
"""

import keras
import tensorflow as tf

from tfgmvae.model import losses
from tfgmvae.model.config import ModelConfig
from tfgmvae.model.networks import Decoder, Encoder, MLPClassifier
from tfgmvae.model.priors import MixturePrior, posterior, tfd

UNSUPERVISED = ("reconstruction", "kl_pitch", "kl_timbre", "kl_instrument")


def _multi_worker(strategy) -> bool:
  """Whether `strategy` is a MultiWorkerMirroredStrategy spanning several workers."""
  return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
          and strategy.extended._in_multi_worker_mode())  # pylint: disable=protected-access


def _correct(log_probs, labels):
  """1.0 where the most probable class is the label, else 0.0 ([B] float32)."""
  return tf.cast(tf.equal(tf.argmax(log_probs, -1, output_type=tf.int32), labels),
                 tf.float32)


class GMVAE(keras.Model):
  """MGMVAE (Gaussian-mixture timbre prior) or MVAE (N(0, I) timbre prior)."""

  def __init__(self, config: ModelConfig, features=None, **kwargs):
    """Builds the model.

    Args:
      config: Sizes and priors.
      features: Optional function audio [B, samples] -> normalised log-mel [B, T, F],
        used when batches carry `audio` instead of `mel` (log-mel on the accelerator).
      **kwargs: For keras.Model.
    """
    # The model itself (not its sub-layers) stays float32: under a mixed policy Keras's
    # __call__ would otherwise autocast the priors' means, which TFP needs in float32.
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    c = config
    self.config = c
    self.features = features
    enc = dict(latent_dim=c.latent_dim, filters=c.filters, hidden=c.hidden,
               kernel_size=c.kernel_size, synchronized_bn=c.synchronized_bn,
               bn_momentum=c.bn_momentum)
    self.pitch_encoder = Encoder(name="pitch_encoder", **enc)
    self.timbre_encoder = Encoder(name="timbre_encoder", **enc)
    self.decoder = Decoder(c.frames, c.n_mels, c.filters, c.hidden, c.kernel_size,
                           c.synchronized_bn, c.bn_momentum, name="decoder")
    self.pitch_prior = MixturePrior(c.num_pitches, c.latent_dim, c.log_sigma_p,
                                    name="pitch_prior")
    if c.kind == "mgmvae":
      self.timbre_prior = MixturePrior(c.num_instruments, c.latent_dim, c.log_sigma_t,
                                       name="timbre_prior")
      self.instrument_classifier = None
    else:
      self.timbre_prior = None
      self.instrument_classifier = MLPClassifier(
          c.num_instruments, (c.aux_hidden, c.aux_hidden), name="instrument_classifier")
    self.pitch_classifier = (MLPClassifier(c.num_pitches, name="pitch_classifier")
                             if c.pitch_classifier else None)
    self.timbre_adversary = (
        MLPClassifier(c.num_pitches, (c.aux_hidden, c.aux_hidden),
                      name="timbre_adversary") if c.timbre_adversary > 0 else None)
    names = list(self.term_names) + ["elbo", "instrument_accuracy"]
    if c.pitch_classifier:
      names.append("pitch_accuracy")
    if self.timbre_adversary is not None:
      names.append("adversary_accuracy")
    self.trackers = {n: keras.metrics.Mean(name=n) for n in names}

  @property
  def term_names(self) -> tuple[str, ...]:
    """Names of the terms summed into the loss, in order."""
    names = ["reconstruction", "kl_pitch", "kl_timbre"]
    if self.config.kind == "mgmvae":
      names.append("kl_instrument")
    names.append("instrument_ce")
    if self.config.pitch_classifier:
      names.append("pitch_ce")
    if self.config.timbre_adversary > 0:
      names.append("adversary_ce")
    return tuple(names)

  @property
  def metrics(self):
    return list(self.trackers.values())

  # -- inference -------------------------------------------------------------------------

  def encode(self, mel, training=False) -> dict:
    """Posterior parameters: z_pitch_mean/logvar and z_timbre_mean/logvar, [B, L] each."""
    zp_mean, zp_logvar = self.pitch_encoder(mel, training=training)
    zt_mean, zt_logvar = self.timbre_encoder(mel, training=training)
    return {"z_pitch_mean": zp_mean, "z_pitch_logvar": zp_logvar,
            "z_timbre_mean": zt_mean, "z_timbre_logvar": zt_logvar}

  def decode(self, z_timbre, z_pitch, training=False):
    """Normalised log-mel [B, T, F] from the two codes."""
    return self.decoder(tf.concat([z_timbre, z_pitch], axis=-1), training=training)

  def instrument_log_probs(self, z_timbre):
    """log q(y_t | z_t): prior responsibilities (MGMVAE) or the auxiliary classifier."""
    if self.timbre_prior is not None:
      return self.timbre_prior.log_responsibilities(z_timbre)
    return tf.nn.log_softmax(self.instrument_classifier(z_timbre))

  def pitch_log_probs(self, z_pitch):
    """log p(y_p | z_p): the pitch classifier if enabled, else prior responsibilities."""
    if self.pitch_classifier is not None:
      return tf.nn.log_softmax(self.pitch_classifier(z_pitch))
    return self.pitch_prior.log_responsibilities(z_pitch)

  def call(self, mel, training=False):
    """Encodes, decodes the posterior means, and classifies: a dict of tensors."""
    out = self.encode(mel, training=training)
    out["reconstruction"] = self.decode(out["z_timbre_mean"], out["z_pitch_mean"],
                                        training=training)
    out["instrument_log_probs"] = self.instrument_log_probs(out["z_timbre_mean"])
    out["pitch_log_probs"] = self.pitch_log_probs(out["z_pitch_mean"])
    return out

  # -- objective -------------------------------------------------------------------------

  def _mel(self, batch):
    if "mel" in batch:
      return tf.cast(batch["mel"], tf.float32)
    if self.features is None:
      raise ValueError("batch has 'audio' but the model was built without `features`")
    return self.features(batch["audio"])

  def compute_terms(self, batch, training=False) -> tuple[dict, dict]:
    """Per-example terms [B] and the predictions they came from.

    Returns:
      (terms, extra): terms by name (see the module docstring; `instrument_ce` is
      already multiplied by the labelled mask); extra holds `labelled` (float [B]),
      `instrument_log_probs` (of the sampled z_t), `pitch_log_probs` (None without the
      pitch classifier), `adversary_log_probs` (None without the adversary), and the
      batch's `instrument` and `pitch` indices (int32 [B]).
    """
    c = self.config
    mel = self._mel(batch)
    post = self.encode(mel, training=training)
    shape = tf.stack([tf.shape(mel)[0], 2, c.latent_dim])
    noise = batch["noise"] if "noise" in batch else tf.random.normal(shape)
    noise = tf.cast(noise, tf.float32)
    z_pitch = post["z_pitch_mean"] + tf.exp(0.5 * post["z_pitch_logvar"]) * noise[:, 0]
    z_timbre = post["z_timbre_mean"] + tf.exp(0.5 * post["z_timbre_logvar"]) * noise[:, 1]
    recon = self.decode(z_timbre, z_pitch, training=training)
    pitch = tf.cast(batch["pitch"], tf.int32)
    instrument = tf.cast(batch["instrument"], tf.int32)
    labelled = tf.cast(batch["labelled"], tf.float32)

    terms = {"reconstruction": losses.squared_error(mel, recon)}
    # KL(q(z_p|x) || p(z_p|y_p)): TFP's closed form between the posterior and the
    # prior's own conditional distribution (tests: losses.gaussian_kl agrees).
    terms["kl_pitch"] = tfd.kl_divergence(
        posterior(post["z_pitch_mean"], post["z_pitch_logvar"]),
        self.pitch_prior.conditional(pitch))
    inst_log_probs = self.instrument_log_probs(z_timbre)
    if self.timbre_prior is not None:
      terms["kl_timbre"] = losses.expected_component_kl(
          post["z_timbre_mean"], post["z_timbre_logvar"],
          tf.convert_to_tensor(self.timbre_prior.means), self.timbre_prior.log_scale,
          inst_log_probs)
      terms["kl_instrument"] = losses.categorical_kl_uniform(inst_log_probs)
    else:
      terms["kl_timbre"] = losses.standard_normal_kl(post["z_timbre_mean"],
                                                     post["z_timbre_logvar"])
    terms["instrument_ce"] = labelled * losses.cross_entropy(inst_log_probs, instrument)
    pitch_log_probs = None
    if self.pitch_classifier is not None:
      pitch_log_probs = self.pitch_log_probs(z_pitch)
      terms["pitch_ce"] = losses.cross_entropy(pitch_log_probs, pitch)
    adversary_log_probs = None
    if self.timbre_adversary is not None:
      adversary_log_probs = tf.nn.log_softmax(self.timbre_adversary(
          losses.reverse_gradient(post["z_timbre_mean"], c.timbre_adversary)))
      terms["adversary_ce"] = losses.cross_entropy(adversary_log_probs, pitch)
    extra = {"labelled": labelled, "instrument_log_probs": inst_log_probs,
             "pitch_log_probs": pitch_log_probs, "instrument": instrument, "pitch": pitch,
             "adversary_log_probs": adversary_log_probs}
    return terms, extra

  def _step(self, batch, training):
    ctx = tf.distribute.get_replica_context()
    sum_ = tf.distribute.ReduceOp.SUM
    with tf.GradientTape() as tape:
      terms, extra = self.compute_terms(batch, training=training)
      n_local = tf.cast(tf.shape(terms["reconstruction"])[0], tf.float32)
      n_global, labelled_global = ctx.all_reduce(
          sum_, [n_local, tf.reduce_sum(extra["labelled"])])
      scaled = {}
      for name, values in terms.items():
        denom = tf.maximum(labelled_global, 1.0) if name == "instrument_ce" else n_global
        scaled[name] = tf.reduce_sum(values) / denom
      loss = tf.add_n(list(scaled.values()))
      if training:
        grad_loss = self.optimizer.scale_loss(loss) if hasattr(
            self.optimizer, "scale_loss") else loss
    if training:
      variables = self.trainable_variables
      grads = tape.gradient(grad_loss, variables)
      if (ctx.num_replicas_in_sync > 1
          and not tf.__internal__.distribute.strategy_supports_no_merge_call()):
        # Keras 3's optimizer sums the replicas' gradients only when it can stay in
        # replica context (XLA on GPUs); otherwise (merge_call: CPUs, or no XLA) each
        # replica would apply its own gradient and the mirrored weights drift apart.
        grads = ctx.all_reduce(sum_, grads)
      self.optimizer.apply(grads, variables)
    # Every tracker receives the all-replica sums and weights of this step, so all
    # replicas hold the same (global) values and whatever reduction Keras applies to
    # the replicas' results logs the global mean.
    weights = {name: extra["labelled"] if name == "instrument_ce" else None
               for name in terms}
    stats = {name: (tf.reduce_sum(values), tf.reduce_sum(weights[name])
                    if weights[name] is not None else n_local)
             for name, values in terms.items()}
    stats["elbo"] = (-tf.add_n([stats[n][0] for n in UNSUPERVISED if n in stats]), n_local)
    inst_correct = _correct(extra["instrument_log_probs"], extra["instrument"])
    stats["instrument_accuracy"] = (tf.reduce_sum(inst_correct * extra["labelled"]),
                                    tf.reduce_sum(extra["labelled"]))
    for name, log_probs in (("pitch_accuracy", extra["pitch_log_probs"]),
                            ("adversary_accuracy", extra["adversary_log_probs"])):
      if log_probs is not None:
        stats[name] = (tf.reduce_sum(_correct(log_probs, extra["pitch"])), n_local)
    stats, global_scaled = ctx.all_reduce(sum_, (stats, scaled))
    # One check naming every term that is not finite (when all are, the weights or the
    # notes themselves went NaN or Inf). XLA compiles no string ops and drops such
    # checks: under --jit_compile training checks the logged terms after each batch
    # instead (loop._NonFiniteStop).
    names = sorted(global_scaled)
    checks = []
    if not getattr(self, "jit_compile", False):
      finite = tf.math.is_finite(tf.stack([global_scaled[n] for n in names]))
      checks = [tf.debugging.Assert(
          tf.reduce_all(finite),
          ["loss terms", tf.strings.reduce_join(tf.boolean_mask(names, ~finite),
                                               separator=", "), "are NaN or Inf"])]
    with tf.control_dependencies(checks):
      for name, (total, weight) in stats.items():
        self.trackers[name].update_state(total / tf.maximum(weight, 1e-12),
                                         sample_weight=weight)
    logs = {name: t.result() for name, t in self.trackers.items()}
    # The loss over the epoch so far is the sum of its terms' means (each weighted by its
    # notes: instrument_ce by the labelled ones), not a mean of the batches' losses,
    # which would count a short last batch as much as a full one.
    logs = {"loss": tf.add_n([logs[name] for name in terms])} | logs
    if _multi_worker(tf.distribute.get_strategy()):
      # Keras 3.4 reduces each replica's logs with strategy.reduce(MEAN, axis=0) when
      # several workers train, which fails on scalars ("Invalid reduction dimension 0
      # for input with 0 dimensions"); a [1] vector reduces to the same scalar.
      logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
    return logs

  def train_step(self, data):
    return self._step(data, training=True)

  def test_step(self, data):
    return self._step(data, training=False)

  PARTS = ("pitch_encoder", "timbre_encoder", "decoder", "pitch_prior", "timbre_prior",
           "instrument_classifier", "pitch_classifier", "timbre_adversary")

  def weights_checkpoint(self, exclude=()) -> tf.train.Checkpoint:
    """A checkpoint of the networks and priors only (not the optimizer).

    Its children have the model's own attribute names, so it reads the model part of a
    full training checkpoint (warm starts) and writes checkpoints that export reads.

    Args:
      exclude: Parts (names in `PARTS`) to leave out.
    """
    return tf.train.Checkpoint(**{name: getattr(self, name) for name in self.PARTS
                                  if getattr(self, name) is not None
                                  and name not in exclude})

  def build(self, input_shape=None):
    """Creates every weight by running each part once on zeros."""
    del input_shape
    c = self.config
    mel = tf.zeros([2, c.frames, c.n_mels])
    post = self.encode(mel)
    self.decode(post["z_timbre_mean"], post["z_pitch_mean"])
    self.instrument_log_probs(post["z_timbre_mean"])
    self.pitch_log_probs(post["z_pitch_mean"])
    self.pitch_prior.log_responsibilities(post["z_pitch_mean"])
    if self.timbre_adversary is not None:
      self.timbre_adversary(post["z_timbre_mean"])
    self.built = True

  def build_for(self):
    """Builds the model (all weights exist afterwards) and returns it."""
    if not self.built:
      self.build()
    return self
