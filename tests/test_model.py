"""The model: shapes, distributions, every loss term against a hand computation, steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tfgmvae.model import GMVAE, MixturePrior, ModelConfig, posterior
from tfgmvae.model import losses

tfd = tfp.distributions
TINY = dict(frames=43, n_mels=256, latent_dim=4, filters=8, hidden=16, aux_hidden=8)


def _batch(n=6, pitches=5, instruments=3, latent=4, seed=0, labelled=None):
  rng = np.random.default_rng(seed)
  return {
      "mel": tf.constant(rng.uniform(-1, 1, (n, 43, 256)), tf.float32),
      "pitch": tf.constant(rng.integers(0, pitches, n), tf.int32),
      "instrument": tf.constant(rng.integers(0, instruments, n), tf.int32),
      "labelled": tf.constant(rng.random(n) < 0.5 if labelled is None else labelled),
      "noise": tf.constant(rng.standard_normal((n, 2, latent)), tf.float32),
  }


def _tiny(kind="mgmvae", **kw):
  return GMVAE(ModelConfig(num_pitches=5, num_instruments=3, kind=kind, **(TINY | kw)))


def test_paper_size_shapes():
  model = GMVAE(ModelConfig(num_pitches=82, num_instruments=12)).build_for()
  out = model(tf.zeros([2, 43, 256]))
  for key in ("z_pitch_mean", "z_pitch_logvar", "z_timbre_mean", "z_timbre_logvar"):
    assert out[key].shape == (2, 16)
  assert out["reconstruction"].shape == (2, 43, 256)
  assert out["instrument_log_probs"].shape == (2, 12)
  assert out["pitch_log_probs"].shape == (2, 82)
  assert model.pitch_encoder.conv1.kernel.shape == (3, 256, 512)   # mel bands: channels
  assert model.pitch_encoder.conv2.kernel.shape == (3, 512, 512)
  assert model.decoder.dense2.kernel.shape == (512, 39 * 512)
  assert model.decoder.deconv2.kernel.shape[-2:] in ((256, 512), (512, 256))
  assert model.timbre_prior.means.shape == (12, 16)
  assert model.pitch_prior.means.shape == (82, 16)
  assert model.instrument_classifier is None            # q(y_t|x) from the prior
  assert model.pitch_classifier.num_hidden == 0         # linear on z_p
  assert model.pitch_classifier.logits.kernel.shape == (16, 82)
  # MVAE: an N(0, I) timbre prior and the auxiliary 128-128 classifier on z_t.
  mvae = GMVAE(ModelConfig(num_pitches=82, num_instruments=12, kind="mvae")).build_for()
  out = mvae(tf.zeros([2, 43, 256]))
  assert out["instrument_log_probs"].shape == (2, 12)
  aux = mvae.instrument_classifier
  assert [aux.hidden_0.kernel.shape, aux.hidden_1.kernel.shape, aux.logits.kernel.shape] \
      == [(16, 128), (128, 128), (128, 12)]
  assert aux.hidden_0.activation is keras.activations.relu
  np.testing.assert_allclose(
      out["instrument_log_probs"].numpy(),
      tf.nn.log_softmax(aux(out["z_timbre_mean"])).numpy(), atol=1e-5)


def test_prior_distribution_shapes_with_and_without_sample_dims():
  prior = MixturePrior(12, 16, log_scale=0.0)
  comps, mix = prior.components(), prior.mixture()
  assert comps.batch_shape == [12] and comps.event_shape == [16]
  assert isinstance(mix, tfd.MixtureSameFamily)
  assert mix.batch_shape == [] and mix.event_shape == [16]
  assert mix.sample().shape == (16,)
  assert mix.sample([5, 3]).shape == (5, 3, 16)
  assert mix.log_prob(tf.zeros([5, 3, 16])).shape == (5, 3)
  cond = prior.conditional(tf.constant([0, 3, 11]))
  assert cond.batch_shape == [3] and cond.event_shape == [16]
  assert cond.sample(7).shape == (7, 3, 16)
  assert prior.log_responsibilities(tf.zeros([5, 3, 16])).shape == (5, 3, 12)
  q = posterior(tf.zeros([4, 16]), tf.zeros([4, 16]))
  assert q.batch_shape == [4] and q.event_shape == [16]
  np.testing.assert_allclose(cond.stddev().numpy(), 1.0)
  assert MixturePrior(82, 16, log_scale=-2.0).components().stddev().numpy()[0, 0] == \
      pytest.approx(np.exp(-2.0))


def test_checkpoints_hold_every_weight(tmp_path):
  """Every variable, BatchNorm statistics included, is reachable by tf.train.Checkpoint."""
  model = _tiny("mvae").build_for()
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  saved = {tuple(shape) for name, shape in tf.train.list_variables(path)
           if name.startswith("model/")}
  names = [n for n, _ in tf.train.list_variables(path) if n.startswith("model/")]
  assert len(names) == len(model.weights), sorted(names)
  assert any("moving_variance" in n for n in names)
  assert all(tuple(w.shape) in saved for w in model.weights)


def test_prior_means_are_trainable_weights_and_xavier():
  prior = MixturePrior(82, 16, log_scale=-2.0)
  assert [w.name for w in prior.trainable_weights] == ["means"]
  limit = np.sqrt(6.0 / (82 + 16))
  values = prior.means.numpy()
  assert np.abs(values).max() <= limit and values.std() > 0.3 * limit


def test_responsibilities_equal_a_direct_softmax():
  prior = MixturePrior(4, 3, log_scale=0.5)
  z = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
  means, var = prior.means.numpy(), np.exp(0.5) ** 2
  logp = -0.5 * ((z[:, None, :] - means[None]) ** 2).sum(-1) / var
  expected = np.exp(logp) / np.exp(logp).sum(1, keepdims=True)
  np.testing.assert_allclose(np.exp(prior.log_responsibilities(z).numpy()), expected,
                             rtol=1e-5, atol=1e-7)
  far = prior.log_responsibilities(np.full((1, 3), 1e4, np.float32)).numpy()
  assert np.all(np.isfinite(far))                       # log-sum-exp, no underflow


def test_gaussian_kl_equals_tfp_closed_form():
  rng = np.random.default_rng(2)
  mq, lq, mp, lp = (rng.normal(size=(5, 4)).astype(np.float32) for _ in range(4))
  ours = losses.gaussian_kl(mq, lq, mp, lp).numpy()
  ref = tfd.kl_divergence(posterior(mq, lq), posterior(mp, lp)).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5)
  hand = 0.5 * (lp - lq + (np.exp(lq) + (mq - mp) ** 2) / np.exp(lp) - 1).sum(-1)
  np.testing.assert_allclose(ours, hand, rtol=1e-5)
  assert np.all(ours >= 0)


def test_expected_component_kl_is_the_weighted_sum():
  rng = np.random.default_rng(3)
  mq, lq = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=(2, 3)).astype(
      np.float32)
  means = rng.normal(size=(4, 3)).astype(np.float32)
  q_y = rng.dirichlet(np.ones(4), size=2).astype(np.float32)
  ours = losses.expected_component_kl(mq, lq, means, -0.7, np.log(q_y)).numpy()
  for b in range(2):
    total = sum(q_y[b, k] * losses.gaussian_kl(mq[b], lq[b], means[k],
                                               np.full(3, -1.4, np.float32)).numpy()
                for k in range(4))
    assert ours[b] == pytest.approx(total, rel=1e-5)


def test_categorical_kl_and_cross_entropy():
  q = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]], np.float32)
  ours = losses.categorical_kl_uniform(np.log(q)).numpy()
  ref = tfd.kl_divergence(tfd.Categorical(probs=q),
                          tfd.Categorical(probs=np.full((2, 3), 1 / 3, np.float32))).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-7)
  assert ours[1] == pytest.approx(0.0, abs=1e-6)
  ce = losses.cross_entropy(np.log(q), np.array([0, 2])).numpy()
  np.testing.assert_allclose(ce, [-np.log(0.7), -np.log(1 / 3)], rtol=1e-6)


def test_squared_error_sums_all_bins():
  x = np.zeros((2, 43, 256), np.float32)
  y = np.full((2, 43, 256), 0.5, np.float32)
  np.testing.assert_allclose(losses.squared_error(x, y).numpy(), 43 * 256 * 0.25)


@pytest.mark.parametrize("kind", ["mgmvae", "mvae"])
def test_terms_are_finite_with_the_right_sign(kind):
  model = _tiny(kind).build_for()
  terms, _ = model.compute_terms(_batch(), training=False)
  expected = {"reconstruction", "kl_pitch", "kl_timbre", "instrument_ce", "pitch_ce"}
  if kind == "mgmvae":
    expected.add("kl_instrument")
  assert set(terms) == expected and set(model.term_names) == expected
  for name, values in terms.items():
    v = values.numpy()
    assert v.shape == (6,) and np.all(np.isfinite(v)), name
    assert np.all(v >= -1e-5), name


def test_terms_match_a_hand_computation():
  model = _tiny().build_for()
  batch = _batch()
  terms, extra = model.compute_terms(batch, training=False)
  post = model.encode(batch["mel"])
  eps = batch["noise"].numpy()
  zp = post["z_pitch_mean"].numpy() + np.exp(0.5 * post["z_pitch_logvar"].numpy()) * eps[:, 0]
  zt = post["z_timbre_mean"].numpy() + np.exp(0.5 * post["z_timbre_logvar"].numpy()) * eps[:, 1]
  recon = model.decode(zt, zp).numpy()
  np.testing.assert_allclose(terms["reconstruction"].numpy(),
                             ((batch["mel"].numpy() - recon) ** 2).sum((1, 2)), rtol=1e-5)
  means_t = model.timbre_prior.means.numpy()
  logp = -0.5 * ((zt[:, None, :] - means_t[None]) ** 2).sum(-1)    # sigma_t = 1
  q_y = np.exp(logp - logp.max(1, keepdims=True))
  q_y /= q_y.sum(1, keepdims=True)
  np.testing.assert_allclose(np.exp(extra["instrument_log_probs"].numpy()), q_y, rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(terms["kl_instrument"].numpy(),
                             (q_y * np.log(q_y * 3)).sum(1), rtol=1e-4, atol=1e-6)
  ce = -np.log(q_y[np.arange(6), batch["instrument"].numpy()])
  np.testing.assert_allclose(terms["instrument_ce"].numpy(),
                             ce * batch["labelled"].numpy(), rtol=1e-4)
  means_p = model.pitch_prior.means.numpy()[batch["pitch"].numpy()]
  mq, lq = post["z_pitch_mean"].numpy(), post["z_pitch_logvar"].numpy()
  kl_p = 0.5 * (-4.0 - lq + (np.exp(lq) + (mq - means_p) ** 2) / np.exp(-4.0) - 1).sum(1)
  np.testing.assert_allclose(terms["kl_pitch"].numpy(), kl_p, rtol=1e-4)
  # E_q(y)[KL(q(z_t|x) || N(mu_k, I))], each Gaussian KL in closed form.
  mt, lt = post["z_timbre_mean"].numpy(), post["z_timbre_logvar"].numpy()
  kl_k = 0.5 * (-lt[:, None] + np.exp(lt[:, None]) + (mt[:, None] - means_t[None]) ** 2
                - 1).sum(-1)
  np.testing.assert_allclose(terms["kl_timbre"].numpy(), (q_y * kl_k).sum(1), rtol=1e-4)
  # The linear pitch classifier on the sampled z_p.
  dense = model.pitch_classifier.logits
  logits = zp @ dense.kernel.numpy() + dense.bias.numpy()
  log_z = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
  np.testing.assert_allclose(terms["pitch_ce"].numpy(),
                             log_z - logits[np.arange(6), batch["pitch"].numpy()],
                             rtol=1e-4, atol=1e-6)


def test_unlabelled_notes_do_not_touch_the_instrument_loss():
  model = _tiny().build_for()
  batch = _batch(labelled=np.array([True, True, False, False, False, False]))
  other = dict(batch, instrument=tf.constant([batch["instrument"].numpy()[0],
                                              batch["instrument"].numpy()[1], 2, 2, 0, 1]))
  t1, _ = model.compute_terms(batch)
  t2, _ = model.compute_terms(other)
  np.testing.assert_allclose(t1["instrument_ce"].numpy(), t2["instrument_ce"].numpy())
  none = dict(batch, labelled=tf.zeros([6], tf.bool))
  with tf.GradientTape() as tape:
    terms, _ = model.compute_terms(none, training=True)
    ce = tf.reduce_sum(terms["instrument_ce"])
  grads = tape.gradient(ce, model.trainable_variables)
  assert all(g is None or not np.any(g.numpy()) for g in grads)


def test_logged_values_equal_the_recomputed_ones():
  """The known Keras 3 trap: fit() must log what the step computed, not 0.0."""
  model = _tiny().build_for()
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  batch = _batch(n=8)
  before, _ = model.compute_terms(batch, training=True)
  ds = tf.data.Dataset.from_tensors(batch)
  history = model.fit(ds, epochs=1, verbose=0).history
  labelled = batch["labelled"].numpy().astype(np.float32)
  for name, values in before.items():
    values = values.numpy()
    expected = (values.sum() / labelled.sum() if name == "instrument_ce"
                else values.mean())
    assert history[name][0] == pytest.approx(expected, rel=1e-4), name
  total = sum(v.numpy().sum() / (labelled.sum() if n == "instrument_ce" else 8)
              for n, v in before.items())
  assert history["loss"][0] == pytest.approx(total, rel=1e-4)
  assert history["loss"][0] > 1.0
  elbo = -sum(before[n].numpy().mean() for n in ("reconstruction", "kl_pitch",
                                                 "kl_timbre", "kl_instrument"))
  assert history["elbo"][0] == pytest.approx(elbo, rel=1e-4)


def test_the_logged_loss_is_the_sum_of_the_logged_terms_with_a_short_last_batch():
  # 9 notes in batches of 4, 4 and 1: every figure is a mean over notes (instrument_ce
  # over labelled notes), and the loss is the sum of the terms' means.
  model = _tiny().build_for()
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  batch = _batch(n=9, labelled=np.array([True, False, True, True, False, True, False,
                                         False, True]))
  logs = model.evaluate(tf.data.Dataset.from_tensor_slices(batch).batch(4), verbose=0,
                        return_dict=True)
  terms, _ = model.compute_terms(batch)
  labelled = batch["labelled"].numpy()
  expected = {name: (values.numpy()[labelled].mean() if name == "instrument_ce"
                     else values.numpy().mean()) for name, values in terms.items()}
  for name, value in expected.items():
    assert logs[name] == pytest.approx(value, rel=1e-4), name
  assert logs["loss"] == pytest.approx(sum(expected.values()), rel=1e-4)
  assert logs["loss"] == pytest.approx(sum(logs[name] for name in terms), rel=1e-6)
  assert logs["loss"] >= -logs["elbo"]


def test_nan_in_a_term_stops_with_its_name():
  model = _tiny().build_for()
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  batch = _batch()
  model.pitch_prior.means.assign(np.full(model.pitch_prior.means.shape, np.nan))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"\[loss terms\] \[kl_pitch\] \[are NaN or Inf\]"):
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
  # A NaN in a note reaches every term: all are named.
  model = _tiny().build_for()
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  batch["mel"] = tf.tensor_scatter_nd_update(batch["mel"], [[0, 0, 0]], [np.nan])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"\[loss terms\] \[instrument_ce, kl_instrument, kl_pitch, "
                           r"kl_timbre, pitch_ce, reconstruction\] \[are NaN or Inf\]"):
    model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)


@pytest.mark.parametrize("kind", ["mgmvae", "mvae"])
def test_a_tiny_model_overfits_a_few_notes(kind):
  tf.keras.utils.set_random_seed(0)
  model = _tiny(kind, filters=16, hidden=32).build_for()
  model.compile(optimizer=keras.optimizers.Adam(3e-3))
  # Four 'notes': two instruments (spectral shapes) x two pitches (time envelopes).
  shapes = [np.linspace(-1, 1, 256), np.cos(np.linspace(0, 6, 256))]
  envelopes = [np.linspace(1, 0, 43), np.sin(np.linspace(0, 3, 43))]
  mel = np.stack([0.9 * np.outer(e, s) for s in shapes for e in envelopes]).astype(np.float32)
  batch = {"mel": mel, "pitch": np.array([0, 1, 0, 1], np.int32),
           "instrument": np.array([0, 0, 1, 1], np.int32),
           "labelled": np.ones(4, bool)}
  zero = {"noise": np.zeros((4, 2, 4), np.float32)}
  start, _ = model.compute_terms(batch | zero, training=True)
  ds = tf.data.Dataset.from_tensors(batch | zero).repeat(900)
  history = model.fit(ds, epochs=1, verbose=0).history
  end, extra = model.compute_terms(batch | zero, training=True)
  # The reconstruction error falls at least 5-fold, and both labels are learnt.
  assert end["reconstruction"].numpy().mean() < start["reconstruction"].numpy().mean() / 5
  assert np.all(np.argmax(extra["instrument_log_probs"], -1) == [0, 0, 1, 1])
  assert np.all(np.argmax(extra["pitch_log_probs"], -1) == [0, 1, 0, 1])
  assert np.isfinite(history["loss"][0])


def test_mixed_bfloat16_call_keeps_priors_and_outputs_float32():
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = _tiny().build_for()
    out = model(tf.zeros([2, 43, 256]))
    assert model.pitch_encoder.conv1.compute_dtype == "bfloat16"
    for key in ("z_pitch_mean", "reconstruction", "instrument_log_probs",
                "pitch_log_probs"):
      assert out[key].dtype == tf.float32, key
    assert model.timbre_prior.means.dtype == "float32"
  finally:
    keras.mixed_precision.set_global_policy(previous)


# -- the pitch adversary on z_t (beyond the paper) ----------------------------------------

def test_reverse_gradient_is_identity_forward_and_negates_the_gradient():
  x = tf.constant([[0.5, -2.0, 3.0]])
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = losses.reverse_gradient(x, 2.5)
    target = tf.reduce_sum(y * tf.constant([[1.0, 2.0, -1.0]]))
  np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6)
  np.testing.assert_allclose(tape.gradient(target, x).numpy(), [[-2.5, -5.0, 2.5]],
                             rtol=1e-6)


def test_adversary_term_logs_and_gradients():
  """adversary_ce is the adversary's pitch cross-entropy on the mean of z_t; it trains
  the adversary as it is and reaches the timbre encoder multiplied by -lambda."""
  lam = 3.0
  model = _tiny(timbre_adversary=lam).build_for()
  assert model.term_names[-1] == "adversary_ce"
  batch = _batch(n=8)
  with tf.GradientTape(persistent=True) as tape:
    terms, extra = model.compute_terms(batch, training=False)
    adv = tf.reduce_sum(terms["adversary_ce"])
    post = model.encode(batch["mel"])
    plain = tf.reduce_sum(losses.cross_entropy(tf.nn.log_softmax(
        model.timbre_adversary(post["z_timbre_mean"])), batch["pitch"]))
  np.testing.assert_allclose(adv.numpy(), plain.numpy(), rtol=1e-5)
  np.testing.assert_allclose(np.exp(extra["adversary_log_probs"].numpy()).sum(-1), 1.0,
                             rtol=1e-5)
  for var in model.timbre_adversary.trainable_variables:
    np.testing.assert_allclose(tape.gradient(adv, var).numpy(),
                               tape.gradient(plain, var).numpy(), rtol=1e-4, atol=1e-7)
  compared = 0
  for var in model.timbre_encoder.trainable_variables:
    g_adv, g_plain = tape.gradient(adv, var), tape.gradient(plain, var)
    if g_plain is not None and np.any(g_plain.numpy()):
      np.testing.assert_allclose(g_adv.numpy(), -lam * g_plain.numpy(), rtol=1e-4,
                                 atol=1e-6)
      compared += 1
  assert compared >= 4          # the convolutions, the dense layer and the mean's head
  # Neither the pitch encoder nor the decoder sees this term.
  for var in model.pitch_encoder.trainable_variables + model.decoder.trainable_variables:
    g = tape.gradient(adv, var)
    assert g is None or not np.any(g.numpy())
  # fit() logs the term, its accuracy and a loss that includes it, and the ELBO without.
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  before, extra = model.compute_terms(batch, training=True)
  history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
  assert history["adversary_ce"][0] == pytest.approx(
      before["adversary_ce"].numpy().mean(), rel=1e-4)
  correct = np.argmax(extra["adversary_log_probs"], -1) == batch["pitch"].numpy()
  assert history["adversary_accuracy"][0] == pytest.approx(correct.mean())
  elbo = -sum(before[n].numpy().mean() for n in ("reconstruction", "kl_pitch",
                                                 "kl_timbre", "kl_instrument"))
  assert history["elbo"][0] == pytest.approx(elbo, rel=1e-4)
  labelled = batch["labelled"].numpy().astype(np.float32)
  total = sum(v.numpy().sum() / (labelled.sum() if n == "instrument_ce" else 8)
              for n, v in before.items())
  assert history["loss"][0] == pytest.approx(total, rel=1e-4)


def test_adversary_weight_is_checked_and_off_by_default():
  assert "adversary_ce" not in _tiny().term_names and _tiny().timbre_adversary is None
  plain = ModelConfig(num_pitches=5, num_instruments=3)
  assert "timbre_adversary" not in plain.to_dict()     # readable by older tfgmvae
  assert ModelConfig.from_dict(plain.to_dict()) == plain
  with_it = ModelConfig(num_pitches=5, num_instruments=3, timbre_adversary=2.0)
  assert ModelConfig.from_dict(with_it.to_dict()) == with_it
  for bad in (-1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="timbre_adversary"):
      ModelConfig(num_pitches=5, num_instruments=3, timbre_adversary=bad)


def test_bn_momentum_reaches_every_batchnorm_and_sets_its_update():
  plain = ModelConfig(num_pitches=5, num_instruments=3)
  assert plain.bn_momentum == 0.99 and "bn_momentum" not in plain.to_dict()
  authors = ModelConfig(num_pitches=5, num_instruments=3, bn_momentum=0.9)
  assert ModelConfig.from_dict(authors.to_dict()) == authors
  for bad in (1.0, -0.1, float("nan")):
    with pytest.raises(ValueError, match="bn_momentum"):
      ModelConfig(num_pitches=5, num_instruments=3, bn_momentum=bad)
  model = _tiny(bn_momentum=0.5).build_for()
  norms = [l for l in model._flatten_layers()
           if isinstance(l, keras.layers.BatchNormalization)]
  assert len(norms) == 9 and {l.momentum for l in norms} == {0.5}
  # One training step moves the moving mean halfway from 0 to the batch mean of the
  # first convolution's output (computed with the weights before the step).
  batch = _batch(n=8)
  conv = model.pitch_encoder.conv1(batch["mel"]).numpy()
  bn = model.pitch_encoder.bn1
  np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
  model.compile(optimizer=keras.optimizers.Adam(1e-3))
  model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.5 * conv.mean(axis=(0, 1)),
                             rtol=1e-4, atol=1e-6)
