"""The encoders, the decoder and the small classifiers (subclassed Keras layers).

Every sub-layer is a named attribute (not an element of a Python list): Keras 3 does not
hand list elements to `tf.train.Checkpoint`, and checkpoints must hold every weight,
BatchNorm statistics included. Layers that feed a BatchNormalization have no bias: BN's
own offset makes it redundant, and a bias whose exact gradient is zero only collects
rounding noise (which Adam turns into drift). BatchNormalization and the convolutions are
the drop-in faster versions of `tfgmvae.model.layers` (Keras's weights and math).
"""

import keras
import tensorflow as tf

from tfgmvae.model import layers

_INIT = "glorot_uniform"


def _bn(synchronized: bool, momentum: float):
  return layers.BatchNormalization(synchronized=synchronized, momentum=momentum)


class Encoder(keras.layers.Layer):
  """log-mel [B, T, F] -> (mean [B, L], log-variance [B, L]).

  Conv1D(filters, k) -> BN -> ReLU -> Conv1D(filters, k) -> BN -> ReLU -> flatten ->
  Dense(hidden) -> BN -> ReLU -> Dense(L) mean and Dense(L) log-variance. The mel bands
  are the channels and time is the convolution axis; 'valid' convolutions (43 -> 39).
  The two heads compute in float32 under mixed precision.
  """

  def __init__(self, latent_dim: int, filters: int = 512, hidden: int = 512,
               kernel_size: int = 3, synchronized_bn: bool = False,
               bn_momentum: float = 0.99, **kwargs):
    super().__init__(**kwargs)
    self.conv1 = layers.Conv1D(filters, kernel_size, padding="valid",
                               kernel_initializer=_INIT, use_bias=False, name="conv1")
    self.bn1 = _bn(synchronized_bn, bn_momentum)
    self.conv2 = layers.Conv1D(filters, kernel_size, padding="valid",
                               kernel_initializer=_INIT, use_bias=False, name="conv2")
    self.bn2 = _bn(synchronized_bn, bn_momentum)
    self.flatten = keras.layers.Flatten()
    self.dense = keras.layers.Dense(hidden, kernel_initializer=_INIT, use_bias=False,
                                     name="dense")
    self.bn3 = _bn(synchronized_bn, bn_momentum)
    self.mean = keras.layers.Dense(latent_dim, kernel_initializer=_INIT, dtype="float32",
                                   name="mean")
    self.logvar = keras.layers.Dense(latent_dim, kernel_initializer=_INIT, dtype="float32",
                                     name="logvar")

  def call(self, x, training=False):
    x = tf.nn.relu(self.bn1(self.conv1(x), training=training))
    x = tf.nn.relu(self.bn2(self.conv2(x), training=training))
    x = tf.nn.relu(self.bn3(self.dense(self.flatten(x)), training=training))
    return self.mean(x), self.logvar(x)


class Decoder(keras.layers.Layer):
  """[z_t, z_p] [B, 2L] -> log-mel [B, T, F] in (-1, 1).

  Dense(hidden) -> BN -> ReLU -> Dense(T' * filters) -> BN -> ReLU -> reshape [T', filters]
  -> Conv1DTranspose(filters, k) -> BN -> ReLU -> Conv1DTranspose(F, k) -> tanh, with
  T' = T - 2(k - 1). The output is float32 under mixed precision.
  """

  def __init__(self, frames: int, n_mels: int, filters: int = 512, hidden: int = 512,
               kernel_size: int = 3, synchronized_bn: bool = False,
               bn_momentum: float = 0.99, **kwargs):
    super().__init__(**kwargs)
    conv_frames = frames - 2 * (kernel_size - 1)
    self.dense1 = keras.layers.Dense(hidden, kernel_initializer=_INIT, use_bias=False,
                                     name="dense1")
    self.bn1 = _bn(synchronized_bn, bn_momentum)
    self.dense2 = keras.layers.Dense(conv_frames * filters, kernel_initializer=_INIT,
                                     use_bias=False, name="dense2")
    self.bn2 = _bn(synchronized_bn, bn_momentum)
    self.reshape = keras.layers.Reshape((conv_frames, filters))
    self.deconv1 = layers.Conv1DTranspose(filters, kernel_size, padding="valid",
                                          kernel_initializer=_INIT, use_bias=False,
                                          name="deconv1")
    self.bn3 = _bn(synchronized_bn, bn_momentum)
    self.deconv2 = layers.Conv1DTranspose(n_mels, kernel_size, padding="valid",
                                          kernel_initializer=_INIT, name="deconv2")
    self.out = keras.layers.Activation("tanh", dtype="float32")

  def call(self, z, training=False):
    x = tf.nn.relu(self.bn1(self.dense1(z), training=training))
    x = tf.nn.relu(self.bn2(self.dense2(x), training=training))
    x = tf.nn.relu(self.bn3(self.deconv1(self.reshape(x)), training=training))
    return self.out(self.deconv2(x))


class MLPClassifier(keras.layers.Layer):
  """Dense(h)-ReLU-...-Dense(classes) logits in float32 (hidden=() is a linear layer)."""

  def __init__(self, classes: int, hidden: tuple[int, ...] = (), **kwargs):
    super().__init__(**kwargs)
    self.num_hidden = len(hidden)
    for i, width in enumerate(hidden):
      setattr(self, f"hidden_{i}", keras.layers.Dense(
          width, activation="relu", kernel_initializer=_INIT, name=f"hidden_{i}"))
    self.logits = keras.layers.Dense(classes, kernel_initializer=_INIT, dtype="float32",
                                     name="logits")

  def call(self, z):
    for i in range(self.num_hidden):
      z = getattr(self, f"hidden_{i}")(z)
    return self.logits(z)
