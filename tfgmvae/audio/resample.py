"""Band-limited resampling between any two integer rates, in core TensorFlow ops.

Windowed-sinc interpolation (Kaiser window). For a rate pair reduced to up/down by their
greatest common divisor, output sample j sits at input position j * down / up, so its
filter depends only on the phase (j * down) mod up: the filter table is built once per
phase and gathered. Rates may be tensors, so the same graph serves any input rate (this is
what the exported `encode` signature uses; no tensorflow-io ops).
"""

import numpy as np
import tensorflow as tf


def _gcd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """Greatest common divisor of two positive int64 scalars."""
  _, g = tf.while_loop(lambda x, y: tf.not_equal(x, 0),
                       lambda x, y: (tf.math.floormod(y, x), x), (a, b))
  return g


def resample(waveform, orig_rate, target_rate, num_zeros: int = 32,
             rolloff: float = 0.945, kaiser_beta: float = 8.6) -> tf.Tensor:
  """Resamples a mono waveform from `orig_rate` to `target_rate`.

  Args:
    waveform: float [n] samples.
    orig_rate: Input rate in Hz (int or int tensor, > 0).
    target_rate: Output rate in Hz (int or int tensor, > 0).
    num_zeros: Zero crossings of the sinc kept on each side (filter length).
    rolloff: Cut-off as a fraction of the lower Nyquist frequency.
    kaiser_beta: Shape of the Kaiser window.

  Returns:
    float32 [ceil(n * target_rate / orig_rate)]; the input itself when the rates match.
  """
  x = tf.convert_to_tensor(waveform, tf.float32)
  orig = tf.cast(orig_rate, tf.int64)
  target = tf.cast(target_rate, tf.int64)
  tf.debugging.assert_positive(orig, message="resample: orig_rate must be > 0 Hz")
  tf.debugging.assert_positive(target, message="resample: target_rate must be > 0 Hz")
  g = _gcd(orig, target)
  up, down = target // g, orig // g

  def _resampled():
    n = tf.shape(x, out_type=tf.int64)[0]
    n_out = (n * up + down - 1) // down
    cutoff = rolloff * tf.minimum(tf.constant(1.0, tf.float64),
                                  tf.cast(up, tf.float64) / tf.cast(down, tf.float64))
    half = tf.cast(tf.math.ceil(tf.constant(float(num_zeros), tf.float64) / cutoff), tf.int64)
    taps = tf.range(-half + 1, half + 1, dtype=tf.int64)               # [2W]
    j = tf.range(n_out, dtype=tf.int64)
    base = (j * down) // up                                             # [n_out]
    phase = tf.math.floormod(j * down, up)                              # [n_out]
    # Build the filter per distinct phase (at most `up` rows) unless that is more rows
    # than there are outputs.
    per_phase = up <= n_out
    rows = tf.cond(per_phase, lambda: tf.range(up, dtype=tf.int64), lambda: phase)
    row_of_output = tf.cond(per_phase, lambda: phase, lambda: j)
    dist = (tf.cast(rows, tf.float64)[:, None] / tf.cast(up, tf.float64)
            - tf.cast(taps, tf.float64)[None, :])                       # t - k
    arg = np.pi * cutoff * dist
    sinc = tf.where(tf.equal(dist, 0.0), tf.ones_like(dist),
                    tf.sin(arg) / tf.where(tf.equal(arg, 0.0), tf.ones_like(arg), arg))
    ratio = tf.clip_by_value(dist / tf.cast(half, tf.float64), -1.0, 1.0)
    window = (tf.math.special.bessel_i0(kaiser_beta * tf.sqrt(1.0 - ratio * ratio))
              / tf.math.special.bessel_i0(tf.constant(kaiser_beta, tf.float64)))
    table = tf.cast(cutoff * sinc * window, tf.float32)                 # [rows, 2W]
    idx = base[:, None] + taps[None, :]                                 # [n_out, 2W]
    valid = tf.logical_and(idx >= 0, idx < n)
    values = tf.where(valid, tf.gather(x, tf.clip_by_value(idx, 0, n - 1)), 0.0)
    weights = tf.gather(table, row_of_output)
    return tf.reduce_sum(values * weights, axis=1)

  return tf.cond(tf.equal(up, down), lambda: tf.identity(x), _resampled)
