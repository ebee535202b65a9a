"""The fast layers and optimizer against the Keras ones they replace: values and gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfgmvae.model import layers
from tfgmvae.train.optimizer import FusedAdam


@pytest.fixture
def bf16_policy():
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  yield
  keras.mixed_precision.set_global_policy(previous)


@pytest.fixture
def fast_path_calls(monkeypatch):
  """Counts the calls of the im2col-gradient convolutions (so a test sees they ran)."""
  calls = {"conv": 0, "deconv": 0}

  def counted(name, fn):
    def wrapper(*args):
      calls[name] += 1
      return fn(*args)
    return wrapper
  monkeypatch.setattr(layers, "_conv1d_valid", counted("conv", layers._conv1d_valid))  # pylint: disable=protected-access
  monkeypatch.setattr(layers, "_conv1d_transpose_valid", counted(  # pylint: disable=protected-access
      "deconv", layers._conv1d_transpose_valid))  # pylint: disable=protected-access
  return calls


@pytest.fixture
def fused_calls(monkeypatch):
  """Counts the calls of the fused batch-norm kernel (our training pass; Keras's own
  layer never calls it), so a test sees the fast path ran."""
  calls = []
  fused = tf.compat.v1.nn.fused_batch_norm

  def counted(*args, **kwargs):
    calls.append(1)
    return fused(*args, **kwargs)
  monkeypatch.setattr(tf.compat.v1.nn, "fused_batch_norm", counted)
  return calls


def _twins(ours, theirs, shape):
  """Builds both layers and gives them the same (random, non-trivial) weights."""
  ours.build(shape)
  theirs.build(shape)
  rng = np.random.default_rng(3)
  assert [(w.path.split("/")[-1], tuple(w.shape), w.dtype) for w in ours.weights] == [
      (w.path.split("/")[-1], tuple(w.shape), w.dtype) for w in theirs.weights]
  for a, b in zip(ours.weights, theirs.weights):
    value = rng.uniform(0.5, 1.5, a.shape) if "variance" in a.path else rng.normal(
        size=a.shape)
    a.assign(value.astype(np.float32))
    b.assign(value.astype(np.float32))


def _value_and_grads(layer, x, training=None):
  x = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=training) if training is not None else layer(x)
    # A loss whose gradient differs per element, so every gradient entry is tested.
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.sin(
        tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y))))
  grads = tape.gradient(loss, [x] + layer.trainable_weights)
  return tf.cast(y, tf.float32).numpy(), [tf.cast(g, tf.float32).numpy() for g in grads]


def _close(a, b, rtol):
  scale = max(float(np.max(np.abs(b))), 1e-6)
  assert float(np.max(np.abs(a - b))) <= rtol * scale, (np.max(np.abs(a - b)), scale)


@pytest.mark.parametrize("shape", [(6, 9, 5), (12, 5)])
def test_batch_norm_matches_keras_in_training_and_inference(shape, fused_calls):
  ours, theirs = layers.BatchNormalization(), keras.layers.BatchNormalization()
  _twins(ours, theirs, shape)
  x = np.random.default_rng(0).normal(2.0, 3.0, shape).astype(np.float32)
  y1, g1 = _value_and_grads(ours, x, training=True)
  assert fused_calls, "the fused training pass did not run"
  fused_calls.clear()
  y2, g2 = _value_and_grads(theirs, x, training=True)
  assert not fused_calls
  _close(y1, y2, 1e-5)
  for a, b in zip(g1, g2):   # d/dx, d/dgamma, d/dbeta
    _close(a, b, 1e-4)
  # Moving statistics updated identically (Keras keeps the biased batch variance).
  _close(ours.moving_mean.numpy(), theirs.moving_mean.numpy(), 1e-6)
  _close(ours.moving_variance.numpy(), theirs.moving_variance.numpy(), 1e-6)
  _close(_value_and_grads(ours, x, training=False)[0],
         _value_and_grads(theirs, x, training=False)[0], 1e-6)


def test_batch_norm_under_mixed_bfloat16(bf16_policy, fused_calls):
  del bf16_policy
  ours, theirs = layers.BatchNormalization(), keras.layers.BatchNormalization()
  _twins(ours, theirs, (16, 7, 8))
  x = np.random.default_rng(1).normal(1.0, 2.0, (16, 7, 8)).astype(np.float32)
  y1, g1 = _value_and_grads(ours, tf.cast(x, tf.bfloat16).numpy(), training=True)
  assert fused_calls, "the fused training pass did not run"
  y2, g2 = _value_and_grads(theirs, tf.cast(x, tf.bfloat16).numpy(), training=True)
  assert ours.compute_dtype == "bfloat16"
  _close(y1, y2, 2e-2)
  for a, b in zip(g1, g2):
    _close(a, b, 3e-2)
  _close(ours.moving_variance.numpy(), theirs.moving_variance.numpy(), 1e-3)


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_matmul_weight_gradient_equals_keras(kind, fast_path_calls):
  shape = (4, 11, 6)
  if kind == "conv":
    ours = layers.Conv1D(5, 3, padding="valid", weight_grad="matmul")
    theirs = keras.layers.Conv1D(5, 3, padding="valid")
  else:
    ours = layers.Conv1DTranspose(5, 3, padding="valid", weight_grad="matmul")
    theirs = keras.layers.Conv1DTranspose(5, 3, padding="valid")
  _twins(ours, theirs, shape)
  x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
  y1, g1 = _value_and_grads(ours, x)
  y2, g2 = _value_and_grads(theirs, x)
  assert y1.shape == y2.shape == ((4, 9, 5) if kind == "conv" else (4, 13, 5))
  _close(y1, y2, 1e-6)
  assert len(g1) == 3                      # x, kernel, bias
  for a, b in zip(g1, g2):
    _close(a, b, 1e-5)
  assert fast_path_calls == {"conv": 1 if kind == "conv" else 0,
                             "deconv": 1 if kind == "deconv" else 0}


@pytest.mark.parametrize("kind", ["conv", "deconv"])
def test_bfloat16_takes_the_matmul_path_and_stays_close(kind, bf16_policy, fast_path_calls):
  del bf16_policy
  if tf.config.list_logical_devices("GPU"):
    pytest.skip("with a GPU 'auto' keeps the native gradient (cuDNN)")
  assert layers._use_matmul("auto", tf.bfloat16)       # pylint: disable=protected-access
  assert not layers._use_matmul("auto", tf.float32)    # pylint: disable=protected-access
  make = layers.Conv1D if kind == "conv" else layers.Conv1DTranspose
  auto, native = make(8, 3, weight_grad="auto"), make(8, 3, weight_grad="native")
  _twins(auto, native, (8, 12, 16))
  x = np.random.default_rng(4).normal(size=(8, 12, 16)).astype(np.float32)
  x = tf.cast(x, tf.bfloat16).numpy()
  y1, g1 = _value_and_grads(auto, x)
  assert sum(fast_path_calls.values()) == 1            # 'auto' took the matmul path
  y2, g2 = _value_and_grads(native, x)
  assert sum(fast_path_calls.values()) == 1            # 'native' did not
  _close(y1, y2, 1e-2)
  for a, b in zip(g1, g2):
    _close(a, b, 2e-2)


@pytest.mark.parametrize("make", [layers.Conv1D, layers.Conv1DTranspose])
def test_unknown_time_steps_use_the_native_path(make, fast_path_calls):
  layer = make(4, 3, weight_grad="matmul")
  layer.build((None, None, 6))
  fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, 6], tf.float32)])
  y = fn(tf.ones([2, 9, 6]))
  assert y.shape == (2, 7 if make is layers.Conv1D else 11, 4)
  assert sum(fast_path_calls.values()) == 0


def test_bad_weight_grad_is_refused():
  with pytest.raises(ValueError, match="weight_grad='fast'"):
    layers.Conv1D(4, 3, weight_grad="fast")


def _apply(optimizer, variables):
  return lambda grads: optimizer.apply(grads, variables)


@pytest.mark.parametrize("amsgrad,jit", [(False, False), (False, True), (True, False)])
def test_fused_adam_equals_keras_adam(amsgrad, jit):
  rng = np.random.default_rng(0)
  start = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=7).astype(np.float32)]
  grads = [[rng.normal(size=s.shape).astype(np.float32) for s in start] for _ in range(6)]
  results = []
  for cls in (keras.optimizers.Adam, FusedAdam):
    variables = [keras.Variable(s, name=f"w{i}") for i, s in enumerate(start)]
    opt = cls(0.01, amsgrad=amsgrad)
    opt.build(variables)
    step = tf.function(_apply(opt, variables), jit_compile=jit)
    for g in grads:
      step([tf.constant(x) for x in g])
    results.append(([v.numpy() for v in variables], [v.numpy() for v in opt.variables],
                    [v.path for v in opt.variables]))
  (v1, s1, n1), (v2, s2, n2) = results
  assert n1 == n2                           # the same slots: checkpoints interchange
  assert int(s2[0]) == 6                    # iterations
  for a, b in zip(v1 + s1, v2 + s2):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(v2[0], start[0])   # it did move
