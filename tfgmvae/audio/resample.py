"""Band-limited resampling between any two integer rates, in core TensorFlow ops.

Windowed-sinc interpolation (Kaiser window). With the rates reduced to up/down by their
greatest common divisor, output sample j sits at input position j * down / up, so its
filter depends only on the phase (j * down) mod up, and every block of `up` outputs reads
a window of the input that starts `down` samples after the previous block's. The filter
is therefore a convolution over the input's polyphase rows with one output channel per
phase.
When that matrix would be huge (rates with a tiny common divisor, e.g. 22,051 Hz) each
output gathers its own taps instead. Rates may be tensors, so the same graph serves any
input rate (the exported `encode` signature uses it; no tensorflow-io ops), and a batch of
waveforms at one rate is resampled in one convolution.
"""

import numpy as np
import tensorflow as tf

# Above this many matrix entries (up * frame length), gather taps per output instead.
_MAX_MATRIX = 1 << 22


def _gcd(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """Greatest common divisor of two positive int64 scalars."""
  _, g = tf.while_loop(lambda x, y: tf.not_equal(x, 0),
                       lambda x, y: (tf.math.floormod(y, x), x), (a, b))
  return g


def _taps(phase, up, taps, cutoff, half, kaiser_beta):
  """Filter value for fractional position phase/up and integer tap offsets."""
  dist = (tf.cast(phase, tf.float64)[..., None] / tf.cast(up, tf.float64)
          - tf.cast(taps, tf.float64))
  arg = np.pi * cutoff * dist
  sinc = tf.where(tf.equal(dist, 0.0), tf.ones_like(dist),
                  tf.sin(arg) / tf.where(tf.equal(arg, 0.0), tf.ones_like(arg), arg))
  ratio = tf.clip_by_value(dist / tf.cast(half, tf.float64), -1.0, 1.0)
  window = (tf.math.special.bessel_i0(kaiser_beta * tf.sqrt(1.0 - ratio * ratio))
            / tf.math.special.bessel_i0(tf.constant(kaiser_beta, tf.float64)))
  inside = tf.logical_and(taps > -half, taps <= half)
  return tf.cast(tf.where(inside, cutoff * sinc * window, 0.0), tf.float32)


def resample(waveform, orig_rate, target_rate, num_zeros: int = 32,
             rolloff: float = 0.945, kaiser_beta: float = 8.6) -> tf.Tensor:
  """Resamples a mono waveform from `orig_rate` to `target_rate`.

  Args:
    waveform: float [n] or [batch, n] samples, all at `orig_rate`.
    orig_rate: Input rate in Hz (int or int tensor, > 0).
    target_rate: Output rate in Hz (int or int tensor, > 0).
    num_zeros: Zero crossings of the sinc kept on each side (filter length).
    rolloff: Cut-off as a fraction of the lower Nyquist frequency.
    kaiser_beta: Shape of the Kaiser window.

  Returns:
    float32 [..., ceil(n * target_rate / orig_rate)]; the input itself when the rates
    match.
  """
  x = tf.convert_to_tensor(waveform, tf.float32)
  batched = x.shape.rank == 2
  if not batched:
    x = x[None, :]
  orig = tf.cast(orig_rate, tf.int64)
  target = tf.cast(target_rate, tf.int64)
  tf.debugging.assert_positive(orig, message="resample: orig_rate must be > 0 Hz")
  tf.debugging.assert_positive(target, message="resample: target_rate must be > 0 Hz")
  g = _gcd(orig, target)
  up, down = target // g, orig // g
  n = tf.shape(x, out_type=tf.int64)[1]
  n_out = (n * up + down - 1) // down
  cutoff = rolloff * tf.minimum(tf.constant(1.0, tf.float64),
                                tf.cast(up, tf.float64) / tf.cast(down, tf.float64))
  half = tf.cast(tf.math.ceil(tf.constant(float(num_zeros), tf.float64) / cutoff), tf.int64)

  def by_matrix():
    # Block m of `up` outputs reads x_pad[m * down + k], k < frame; x_pad = x shifted
    # right by half - 1 so that tap offsets -half+1..half become 0..2*half-1.
    i = tf.range(up, dtype=tf.int64)
    start = (i * down) // up                                  # base offset in the block
    frame = start[-1] + 2 * half
    k = tf.range(frame, dtype=tf.int64)
    offsets = k[None, :] - start[:, None] - (half - 1)        # tap offset per (i, k)
    matrix = _taps(tf.math.floormod(i * down, up), up, offsets, cutoff, half, kaiser_beta)
    # Split the input into rows of `down` samples (its polyphase components) so the
    # strided filter becomes a stride-1 convolution: `down` input channels, one output
    # channel per output phase, kernel length ceil(frame / down). Output: [1, blocks, up].
    taps_rows = (frame + down - 1) // down
    matrix = tf.pad(matrix, [[0, 0], [0, taps_rows * down - frame]])
    kernel = tf.transpose(tf.reshape(matrix, [up, taps_rows, down]), [1, 2, 0])
    blocks = (n_out + up - 1) // up
    rows = blocks - 1 + taps_rows
    total = rows * down
    x_pad = tf.pad(x, [[0, 0], [half - 1, tf.maximum(total - n - (half - 1), 0)]])
    y = tf.nn.conv1d(tf.reshape(x_pad[:, :total], [-1, rows, down]), kernel, stride=1,
                     padding="VALID")
    return tf.reshape(y, [tf.shape(x)[0], -1])[:, :n_out]

  def by_gather():
    taps = tf.range(-half + 1, half + 1, dtype=tf.int64)
    j = tf.range(n_out, dtype=tf.int64)
    weights = _taps(tf.math.floormod(j * down, up), up, taps[None, :], cutoff, half,
                    kaiser_beta)
    idx = (j * down // up)[:, None] + taps[None, :]
    valid = tf.logical_and(idx >= 0, idx < n)
    values = tf.where(valid, tf.gather(x, tf.clip_by_value(idx, 0, n - 1), axis=1), 0.0)
    return tf.reduce_sum(values * weights, axis=-1)

  def resampled():
    small = up * ((down * (up - 1)) // up + 2 * half) <= _MAX_MATRIX
    return tf.cond(small, by_matrix, by_gather)

  y = tf.cond(tf.equal(up, down), lambda: tf.identity(x), resampled)
  return y if batched else y[0]
