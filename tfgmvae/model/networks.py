"""The encoders, the decoder and the small classifiers (subclassed Keras layers)."""

import keras


def _bn(synchronized: bool):
  return keras.layers.BatchNormalization(synchronized=synchronized)


class Encoder(keras.layers.Layer):
  """log-mel [B, T, F] -> (mean [B, L], log-variance [B, L]).

  Conv1D(filters, k) -> BN -> ReLU -> Conv1D(filters, k) -> BN -> ReLU -> flatten ->
  Dense(hidden) -> BN -> ReLU -> Dense(L) mean and Dense(L) log-variance. The mel bands
  are the channels and time is the convolution axis; 'valid' convolutions (43 -> 39).
  The two heads compute in float32 under mixed precision.
  """

  def __init__(self, latent_dim: int, filters: int = 512, hidden: int = 512,
               kernel_size: int = 3, synchronized_bn: bool = False, **kwargs):
    super().__init__(**kwargs)
    init = "glorot_uniform"
    self.body = [
        keras.layers.Conv1D(filters, kernel_size, padding="valid", kernel_initializer=init),
        _bn(synchronized_bn), keras.layers.ReLU(),
        keras.layers.Conv1D(filters, kernel_size, padding="valid", kernel_initializer=init),
        _bn(synchronized_bn), keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(hidden, kernel_initializer=init),
        _bn(synchronized_bn), keras.layers.ReLU(),
    ]
    self.mean = keras.layers.Dense(latent_dim, kernel_initializer=init, dtype="float32",
                                   name="mean")
    self.logvar = keras.layers.Dense(latent_dim, kernel_initializer=init, dtype="float32",
                                     name="logvar")

  def call(self, x, training=False):
    for layer in self.body:
      x = layer(x, training=training) if isinstance(
          layer, keras.layers.BatchNormalization) else layer(x)
    return self.mean(x), self.logvar(x)


class Decoder(keras.layers.Layer):
  """[z_t, z_p] [B, 2L] -> log-mel [B, T, F] in (-1, 1).

  Dense(hidden) -> BN -> ReLU -> Dense(T' * filters) -> BN -> ReLU -> reshape [T', filters]
  -> Conv1DTranspose(filters, k) -> BN -> ReLU -> Conv1DTranspose(F, k) -> tanh, with
  T' = T - 2(k - 1). The output is float32 under mixed precision.
  """

  def __init__(self, frames: int, n_mels: int, filters: int = 512, hidden: int = 512,
               kernel_size: int = 3, synchronized_bn: bool = False, **kwargs):
    super().__init__(**kwargs)
    init = "glorot_uniform"
    conv_frames = frames - 2 * (kernel_size - 1)
    self.body = [
        keras.layers.Dense(hidden, kernel_initializer=init),
        _bn(synchronized_bn), keras.layers.ReLU(),
        keras.layers.Dense(conv_frames * filters, kernel_initializer=init),
        _bn(synchronized_bn), keras.layers.ReLU(),
        keras.layers.Reshape((conv_frames, filters)),
        keras.layers.Conv1DTranspose(filters, kernel_size, padding="valid",
                                     kernel_initializer=init),
        _bn(synchronized_bn), keras.layers.ReLU(),
        keras.layers.Conv1DTranspose(n_mels, kernel_size, padding="valid",
                                     kernel_initializer=init),
    ]
    self.out = keras.layers.Activation("tanh", dtype="float32")

  def call(self, z, training=False):
    x = z
    for layer in self.body:
      x = layer(x, training=training) if isinstance(
          layer, keras.layers.BatchNormalization) else layer(x)
    return self.out(x)


class MLPClassifier(keras.layers.Layer):
  """Dense(h)-ReLU-...-Dense(classes) logits in float32 (hidden=() is a linear layer)."""

  def __init__(self, classes: int, hidden: tuple[int, ...] = (), **kwargs):
    super().__init__(**kwargs)
    self.hidden = [keras.layers.Dense(h, activation="relu",
                                      kernel_initializer="glorot_uniform") for h in hidden]
    self.logits = keras.layers.Dense(classes, kernel_initializer="glorot_uniform",
                                     dtype="float32")

  def call(self, z):
    for layer in self.hidden:
      z = layer(z)
    return self.logits(z)
