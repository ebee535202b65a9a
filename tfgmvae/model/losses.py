"""Terms of the objective (SPEC section 2) as small pure functions of tensors.

All return one value per example ([B]); the model averages them over the batch.
"""

import tensorflow as tf


def squared_error(x, x_hat) -> tf.Tensor:
  """Sum of squared errors over all time-frequency bins (the authors' reconstruction)."""
  return tf.reduce_sum(tf.math.squared_difference(x, x_hat), axis=[1, 2])


def gaussian_kl(mean_q, logvar_q, mean_p, logvar_p) -> tf.Tensor:
  """KL(N(mean_q, e^logvar_q) || N(mean_p, e^logvar_p)) of diagonal Gaussians, summed.

  Broadcasts over leading axes; sums over the last (latent) axis.
  """
  return 0.5 * tf.reduce_sum(
      logvar_p - logvar_q
      + (tf.exp(logvar_q) + tf.square(mean_q - mean_p)) * tf.exp(-logvar_p) - 1.0, axis=-1)


def expected_component_kl(mean_q, logvar_q, means, log_sigma: float, log_q_y) -> tf.Tensor:
  """sum_k q(y=k|x) KL(q(z|x) || N(mu_k, sigma^2 I)).

  Args:
    mean_q, logvar_q: [B, L] posterior parameters.
    means: [K, L] component means.
    log_sigma: log of the fixed component std.
    log_q_y: [B, K] log q(y | x).
  """
  kl = gaussian_kl(mean_q[:, None, :], logvar_q[:, None, :], means[None, :, :],
                   tf.fill(tf.shape(means), 2.0 * log_sigma)[None, :, :])   # [B, K]
  return tf.reduce_sum(tf.exp(log_q_y) * kl, axis=-1)


def categorical_kl_uniform(log_q_y) -> tf.Tensor:
  """KL(q(y|x) || Uniform(K)) = sum_k q_k (log q_k + log K)."""
  k = tf.cast(tf.shape(log_q_y)[-1], log_q_y.dtype)
  return tf.reduce_sum(tf.exp(log_q_y) * (log_q_y + tf.math.log(k)), axis=-1)


def cross_entropy(log_probs, labels) -> tf.Tensor:
  """-log p(label) from log-probabilities [B, C] and integer labels [B]."""
  return -tf.gather(log_probs, labels, axis=-1, batch_dims=1)


def reverse_gradient(x, scale: float) -> tf.Tensor:
  """Identity in the forward pass; the gradient passing back is multiplied by -scale
  (a gradient-reversal layer)."""
  return tf.stop_gradient((1.0 + scale) * x) - scale * x


def standard_normal_kl(mean_q, logvar_q) -> tf.Tensor:
  """KL(q(z|x) || N(0, I))."""
  zeros = tf.zeros_like(mean_q)
  return gaussian_kl(mean_q, logvar_q, zeros, zeros)

