"""Adam applied by TF's fused kernel: Keras 3's Adam, one op per variable.

Keras 3's `Adam.update_step` is about ten elementwise ops per variable, each a pass over
the variable or its slots; `ResourceApplyAdam` updates the variable and both moments in
one pass (on CPUs, GPUs and under XLA). The update is the same formula with the same
hyper-parameters, and the optimizer's variables (iterations, momentums, velocities) are
Keras's, so checkpoints written with either load into the other. With `amsgrad` the
update is Keras's own (XLA has no kernel for `ResourceApplyAdamWithAmsgrad`). On the
paper-size step this saves about 30 ms of about 0.37 s in float32 (BENCHMARKS.md).
"""

import keras
import tensorflow as tf


def _handle(variable):
  """The resource handle of a Keras (or tf) variable, on this replica's device."""
  if isinstance(variable, keras.Variable):
    variable = variable.value            # the backing tf.Variable
  return variable.handle


class FusedAdam(keras.optimizers.Adam):
  """keras.optimizers.Adam whose per-variable update is one fused TF kernel."""

  def update_step(self, gradient, variable, learning_rate):
    if self.amsgrad:   # XLA has no kernel for ResourceApplyAdamWithAmsgrad: Keras's ops
      return super().update_step(gradient, variable, learning_rate)
    dtype = variable.dtype
    i = self._get_variable_index(variable)
    step = tf.cast(self.iterations + 1, dtype)
    beta_1 = tf.cast(self.beta_1, dtype)
    beta_2 = tf.cast(self.beta_2, dtype)
    args = dict(
        var=_handle(variable), m=_handle(self._momentums[i]),
        v=_handle(self._velocities[i]),
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
        lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
        epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(tf.convert_to_tensor(gradient), dtype))
    tf.raw_ops.ResourceApplyAdam(**args)
    return None
