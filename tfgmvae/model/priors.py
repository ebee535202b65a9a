"""Latent priors as TFP distributions whose parameters are Keras weights.

`MixturePrior` holds the learned component means [components, L] (Xavier-initialised) and
a fixed component scale. It builds, on demand:

* `components()`: a batch of `components` diagonal Normals, event [L];
* `mixture()`: p(z) = sum_k (1/K) N(mu_k, sigma^2 I), a `MixtureSameFamily`, event [L];
* `conditional(labels)`: N(mu_label, sigma^2 I) per example, batch [B], event [L];
* `log_responsibilities(z)`: log p(y = k | z) under the uniform mixture (log-sum-exp).

Because the means are a Keras weight they are trained, checkpointed and exported with the
model. The objective uses `components()` through `log_responsibilities` (q(y|z_t) of
the sampled z_t, one draw of SPEC's expectation over q(z_t|x), as the authors' code does;
inference and export use the posterior mean), the components' `means` and `log_scale`
in the closed-form expected KL of z_t against each component
(`losses.expected_component_kl`), and `conditional()` (the KL of z_p against
p(z_p | y_p), by TFP's closed form); synthesis draws from `conditional()`'s mean and
standard deviation, the latter scaled by w. `mixture()` is p(z) itself.
"""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


class MixturePrior(keras.layers.Layer):
  """Uniform mixture of isotropic Gaussians with learned means and a fixed std."""

  def __init__(self, num_components: int, latent_dim: int, log_scale: float, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.num_components = num_components
    self.latent_dim = latent_dim
    self.log_scale = float(log_scale)
    self.means = self.add_weight(shape=(num_components, latent_dim),
                                 initializer="glorot_uniform", name="means",
                                 dtype="float32")

  @property
  def scale(self) -> float:
    return math.exp(self.log_scale)

  def _scale_diag(self, batch_shape):
    return tf.fill(tf.concat([batch_shape, [self.latent_dim]], 0),
                   tf.constant(self.scale, tf.float32))

  def components(self) -> tfd.Distribution:
    """The K component Normals: batch_shape [K], event_shape [L]."""
    means = tf.convert_to_tensor(self.means)
    return tfd.MultivariateNormalDiag(loc=means,
                                      scale_diag=self._scale_diag([self.num_components]))

  def mixture(self) -> tfd.Distribution:
    """p(z) = sum_k (1/K) N(mu_k, sigma^2 I): batch_shape [], event_shape [L]."""
    return tfd.MixtureSameFamily(
        mixture_distribution=tfd.Categorical(logits=tf.zeros([self.num_components])),
        components_distribution=self.components())

  def conditional(self, labels) -> tfd.Distribution:
    """p(z | y = label): batch_shape [B], event_shape [L]."""
    loc = tf.gather(tf.convert_to_tensor(self.means), labels)
    return tfd.MultivariateNormalDiag(loc=loc, scale_diag=self._scale_diag(tf.shape(labels)))

  def log_responsibilities(self, z) -> tf.Tensor:
    """log p(y = k | z) for z [..., L] -> [..., K], normalised with log-sum-exp."""
    log_probs = self.components().log_prob(tf.expand_dims(z, -2))
    return tf.nn.log_softmax(log_probs, axis=-1)

  def call(self, z):
    return self.log_responsibilities(z)

  def get_config(self):
    return super().get_config() | {"num_components": self.num_components,
                                   "latent_dim": self.latent_dim,
                                   "log_scale": self.log_scale}


def posterior(mean, logvar) -> tfd.Distribution:
  """q(z | x) = N(mean, exp(logvar)): batch_shape [B], event_shape [L]."""
  return tfd.MultivariateNormalDiag(loc=mean, scale_diag=tf.exp(0.5 * logvar))
