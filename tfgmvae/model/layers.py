"""Faster drop-in versions of the Keras layers the networks use; same weights, same math.

Keras 3 builds BatchNormalization and the convolutions' gradients from generic ops. On a
CPU two of them cost the training step measurable time (bench/train_step.py,
BENCHMARKS.md):

* `BatchNormalization` in training runs TF's `FusedBatchNormV3` kernel (one pass forward,
  one fused gradient) instead of Keras's moments + normalisation graph, and under mixed
  precision it needs no float32 copy of its input. Inference, masks and synchronized
  (cross-replica) statistics use Keras's own code.
* `Conv1D` and `Conv1DTranspose` ('valid', stride 1, the model's only kind, with a
  static number of time steps) can compute their weight gradient as one matmul over the
  im2col of the input. oneDNN's bfloat16 backward-weights convolution runs at the
  float32 rate on CPUs with AVX512-BF16, while its bfloat16 matmul runs at about 1.7x;
  in float32 the two are alike. So the matmul is used, by default, for bfloat16 on
  machines without a GPU (cuDNN has its own kernels).

The variables (names, shapes, dtypes) are exactly Keras's, so checkpoints move freely
between these layers and Keras's; the tests check values and gradients against Keras's.
"""

import keras
import tensorflow as tf

WEIGHT_GRADS = ("auto", "matmul", "native")


class BatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization whose training pass is one FusedBatchNormV3."""

  def call(self, inputs, training=None, mask=None):
    if (not (training and self.trainable) or self.synchronized or mask is not None
        or not (self.center and self.scale) or self.axis not in (-1, len(inputs.shape) - 1)):
      return super().call(inputs, training=training, mask=mask)
    channels = self.gamma.shape[0]
    x = tf.reshape(inputs, [-1, 1, 1, channels])       # NHWC, statistics over N
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta),
        epsilon=self.epsilon, is_training=True)
    # The kernel returns the unbiased batch variance; Keras's moving variance (and the
    # normalisation above) uses the biased one.
    n = tf.cast(tf.shape(x)[0], tf.float32)
    variance = variance * ((n - 1.0) / tf.maximum(n, 1.0))
    self.moving_mean.assign(self.moving_mean * self.momentum
                            + mean * (1.0 - self.momentum))
    self.moving_variance.assign(self.moving_variance * self.momentum
                                + variance * (1.0 - self.momentum))
    return tf.reshape(y, tf.shape(inputs))


def _use_matmul(choice: str, dtype) -> bool:
  if choice == "auto":
    return dtype == tf.bfloat16 and not tf.config.list_logical_devices("GPU")
  return choice == "matmul"


def _im2col(x, width: int, taps: int):
  """[B, T, C] -> [B * width, taps * C]: row (b, t) holds x[b, t:t + taps] flattened."""
  cols = tf.concat([x[:, j:j + width] for j in range(taps)], axis=-1)
  return tf.reshape(cols, [-1, taps * x.shape[-1]])


@tf.custom_gradient
def _conv1d_valid(x, w):
  """tf.nn.conv1d(x, w, 1, 'VALID') with the weight gradient as an im2col matmul."""
  y = tf.nn.conv1d(x, w, 1, "VALID")

  def grad(dy):
    taps, c_in, c_out = w.shape
    dx = tf.nn.conv1d_transpose(dy, w, tf.shape(x), 1, "VALID")
    dw = tf.linalg.matmul(_im2col(x, dy.shape[1], taps), tf.reshape(dy, [-1, c_out]),
                          transpose_a=True)
    return dx, tf.reshape(dw, [taps, c_in, c_out])
  return y, grad


@tf.custom_gradient
def _conv1d_transpose_valid(x, w):
  """tf.nn.conv1d_transpose(x, w [k, out, in], 'VALID') with an im2col weight gradient."""
  taps, c_out, c_in = w.shape
  steps = x.shape[1]
  y = tf.nn.conv1d_transpose(x, w, [tf.shape(x)[0], steps + taps - 1, c_out], 1, "VALID")

  def grad(dy):
    dx = tf.nn.conv1d(dy, w, 1, "VALID")
    dw = tf.linalg.matmul(_im2col(dy, steps, taps), tf.reshape(x, [-1, c_in]),
                          transpose_a=True)
    return dx, tf.reshape(dw, [taps, c_out, c_in])
  return y, grad


def _bias_and_activation(layer, outputs):
  if layer.use_bias:
    outputs = outputs + tf.reshape(layer.bias, [1, 1, -1])
  return layer.activation(outputs) if layer.activation is not None else outputs


def _plain(layer) -> bool:
  """A channels-last, stride-1, undilated, ungrouped 'valid' convolution."""
  return (layer.padding == "valid" and tuple(layer.strides) == (1,)
          and tuple(layer.dilation_rate) == (1,) and layer.data_format == "channels_last"
          and getattr(layer, "groups", 1) == 1)


class _MatmulWeightGrad:
  """Mixin of the two convolutions: the `weight_grad` setting and when it applies.

  Args:
    weight_grad: 'auto' (matmul for bfloat16 without a GPU), 'matmul' or 'native'.
    *args, **kwargs: As the Keras convolution.
  """

  def __init__(self, *args, weight_grad: str = "auto", **kwargs):
    super().__init__(*args, **kwargs)
    if weight_grad not in WEIGHT_GRADS:
      raise ValueError(f"weight_grad={weight_grad!r} (expected one of {WEIGHT_GRADS})")
    self.weight_grad = weight_grad

  def _matmul_grad(self, inputs) -> bool:
    return (_plain(self) and getattr(self, "output_padding", None) is None
            and inputs.shape[1] is not None
            and _use_matmul(self.weight_grad, inputs.dtype))


class Conv1D(_MatmulWeightGrad, keras.layers.Conv1D):
  """keras.layers.Conv1D that may compute its weight gradient as an im2col matmul."""

  def call(self, inputs):
    if not self._matmul_grad(inputs):
      return super().call(inputs)
    return _bias_and_activation(
        self, _conv1d_valid(inputs, tf.convert_to_tensor(self.kernel)))


class Conv1DTranspose(_MatmulWeightGrad, keras.layers.Conv1DTranspose):
  """keras.layers.Conv1DTranspose that may compute its weight gradient as a matmul."""

  def call(self, inputs):
    if not self._matmul_grad(inputs):
      return super().call(inputs)
    return _bias_and_activation(
        self, _conv1d_transpose_valid(inputs, tf.convert_to_tensor(self.kernel)))
