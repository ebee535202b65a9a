"""Log-mel front end against librosa, with stated tolerances."""

import librosa
import numpy as np
import pytest
import tensorflow as tf

from tfgmvae import audio
from tfgmvae.audio import AudioConfig

from conftest import tone

SR = 22050


def librosa_log_mel(segment, config=AudioConfig()):
  mel = librosa.feature.melspectrogram(
      y=segment.astype(np.float64), sr=config.sample_rate, n_fft=config.n_fft,
      hop_length=config.hop_length, n_mels=config.n_mels, fmin=config.fmin,
      fmax=config.fmax, center=True, pad_mode="constant", power=2.0)
  return np.log(mel[:, :config.frames].T + config.log_floor)


def sine_mixture(seed, seconds=0.7):
  rng = np.random.default_rng(seed)
  t = np.arange(int(SR * seconds)) / SR
  x = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(30, 10000) * t
                                          + rng.uniform(0, 6)) for _ in range(6))
  return (x + 1e-3 * rng.standard_normal(len(t))).astype(np.float32)


def test_filterbank_equals_librosa_slaney():
  ours = audio.mel_filterbank(AudioConfig())
  ref = librosa.filters.mel(sr=SR, n_fft=2048, n_mels=256, fmin=27.0, fmax=11000.0).T
  assert ours.shape == (1025, 256)
  np.testing.assert_allclose(ours, ref, atol=1e-7)


def test_filterbank_differs_from_tf_htk():
  """The reason we build our own: TF's matrix is HTK-style and unnormalised."""
  htk = tf.signal.linear_to_mel_weight_matrix(256, 1025, SR, 27.0, 11000.0).numpy()
  assert np.abs(htk - audio.mel_filterbank()).max() > 0.1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_mel_matches_librosa_on_sine_mixtures(seed):
  x = sine_mixture(seed)
  ours = audio.log_mel(x).numpy()
  ref = librosa_log_mel(x[:11025])
  assert ours.shape == (43, 256)
  # Tolerance: 1e-3 nats (0.1 %) on every bin; float32 FFT against librosa's float64.
  np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_log_mel_batched_equals_single_and_pads_short_notes():
  xs = np.stack([sine_mixture(3), sine_mixture(4)])
  batched = audio.log_mel(xs).numpy()
  assert batched.shape == (2, 43, 256)
  np.testing.assert_allclose(batched[1], audio.log_mel(xs[1]).numpy(), atol=1e-4)
  short = sine_mixture(5, seconds=0.2)
  padded = np.zeros(11025, np.float32)
  padded[:len(short)] = short
  np.testing.assert_allclose(audio.log_mel(short).numpy(), librosa_log_mel(padded),
                             atol=1e-3)


def test_silence_gives_the_floor():
  out = audio.log_mel(np.zeros(11025, np.float32)).numpy()
  np.testing.assert_allclose(out, np.log(1e-6), rtol=1e-6)


def test_authors_settings_shape_and_values():
  config = AudioConfig.authors()
  x = sine_mixture(6)
  ours = audio.log_mel(x, config).numpy()
  assert ours.shape == (21, 256)
  ref = librosa_log_mel(x[:11025], config)
  mask = ref > np.log(1e-10)   # eps floor: compare where float32 has resolution
  np.testing.assert_allclose(ours[mask], ref[mask], atol=2e-3)


def test_rendered_note_through_load_matches_librosa_load(tmp_path):
  """A real FluidSynth note at 44.1 kHz: load + log_mel against librosa.load + mel."""
  from tfgmvae import render  # pylint: disable=g-import-not-at-top
  config = render.RenderConfig(
      out_dir=str(tmp_path / "corpus"), soundfonts=render.default_soundfonts()[:1],
      instruments=tuple(i for i in render.PAPER_INSTRUMENTS if i.name == "Vc"),
      dynamics=(("mf", 80),))
  rows = render.render_corpus(config)
  path = str(tmp_path / "corpus" / rows[len(rows) // 2]["path"])
  wave, sr = audio.load(path, 22050, duration=0.5)
  assert sr == 22050 and wave.shape == (11025,)
  ours = audio.log_mel(wave).numpy()
  y, _ = librosa.load(path, sr=22050)   # whole file, so its resampler sees context
  ref = librosa_log_mel(np.pad(y, (0, max(0, 11025 - len(y))))[:11025])
  # Our resampler and librosa's soxr differ slightly (ours rolls off from 0.945 of the
  # Nyquist frequency, 10.4 kHz): on bands centred below 9 kHz and within 60 dB
  # (13.8 nats) of the note's peak the log-mels agree to 0.01 nats; on average over
  # all bins to 0.02 nats.
  centres = librosa.mel_frequencies(258, fmin=27.0, fmax=11000.0)[1:-1]
  loud = (ref > ref.max() - 13.8) & (centres < 9000.0)[None, :]
  assert np.abs(ours - ref)[loud].max() < 0.01
  assert np.abs(ours - ref).mean() < 0.02


def test_normalise_round_trip():
  x = np.linspace(-13.0, 8.0, 50, dtype=np.float32)
  y = audio.normalise(x, -13.0, 8.0).numpy()
  assert y.min() == pytest.approx(-1.0) and y.max() == pytest.approx(1.0)
  np.testing.assert_allclose(audio.denormalise(y, -13.0, 8.0).numpy(), x, atol=1e-5)


def test_griffin_lim_inverts_a_harmonic_note():
  x = tone(57, SR, 0.6, harmonics=7, amp=0.4)
  target = audio.log_mel(x).numpy()
  wave = audio.log_mel_to_audio(target, n_iter=48).numpy()
  assert wave.shape == (43 * 256,) and np.all(np.isfinite(wave))
  again = audio.log_mel(wave).numpy()
  loud = target > target.max() - 9.2   # within 40 dB of the peak
  assert np.median(np.abs(again - target)[loud]) < 0.3
  assert np.corrcoef(again[loud], target[loud])[0, 1] > 0.97


def test_mel_inversion_is_non_negative_and_nnls_beats_the_pseudo_inverse():
  x = np.stack([tone(p, SR, 0.6, harmonics=9, amp=0.3) for p in (45, 60, 76)])
  mel = audio.mel_power(x).numpy()
  fb = audio.mel_filterbank()
  errors = []
  for n_iter in (0, 5, 20):
    spec = audio.mel_to_linear_power(mel, n_iter=n_iter).numpy()
    assert spec.shape == (3, 43, 1025) and spec.min() >= 0.0
    errors.append(np.linalg.norm(spec @ fb - mel) / np.linalg.norm(mel))
  assert errors[2] < errors[1] < errors[0]
  assert errors[2] < 0.5 * errors[0], errors


def _traced_op_count(fn, spec) -> int:
  graph = tf.function(fn).get_concrete_function(spec).graph.as_graph_def()
  return len(graph.node) + sum(len(f.node_def) for f in graph.library.function)


def test_the_iterations_are_graph_loops_not_copies():
  # A traced function (an export's signature) holds one iteration of each loop, so that
  # the SavedModel does not grow with the iteration counts (it held 8 copies of 52).
  mel = tf.TensorSpec([None, 43, 256], tf.float32)
  nnls = [_traced_op_count(lambda m, n=n: audio.mel_to_linear_power(m, n_iter=n), mel)
          for n in (1, 20)]
  gl = [_traced_op_count(lambda m, n=n: audio.log_mel_to_audio(m, n_iter=n, mel_iters=3),
                         mel) for n in (1, 32)]
  assert nnls[0] == nnls[1] and gl[0] == gl[1], (nnls, gl)


def test_griffin_lim_improves_with_iterations():
  x = tone(64, SR, 0.6, harmonics=5, amp=0.4)
  mag = tf.abs(audio.stft(x)[:43]).numpy()

  def spectral_convergence(n_iter):
    wave = audio.griffin_lim(mag, n_iter=n_iter).numpy()
    rebuilt = tf.abs(audio.stft(wave)[:43]).numpy()
    return np.linalg.norm(rebuilt - mag) / np.linalg.norm(mag)

  assert spectral_convergence(32) < 0.5 * spectral_convergence(1)


def test_log_mel_runs_in_tf_function_with_unknown_batch():
  fn = tf.function(audio.log_mel,
                   input_signature=[tf.TensorSpec([None, None], tf.float32)])
  out = fn(np.stack([sine_mixture(7)[:9000]] * 3))
  assert out.shape == (3, 43, 256)


def test_chunked_inversion_equals_one_batch():
  x = np.stack([tone(p, SR, 0.6, harmonics=5, amp=0.3) for p in (48, 55, 62, 69, 76)])
  log_mel = audio.log_mel(x).numpy()
  whole = audio.log_mel_to_audio(log_mel, n_iter=4).numpy()
  fn = tf.function(lambda m: audio.log_mel_to_audio(m, n_iter=4, chunk_size=2),
                   input_signature=[tf.TensorSpec([None, 43, 256], tf.float32)])
  chunked = fn(log_mel).numpy()                          # chunks of 2, 2 and 1 (padded)
  assert chunked.shape == whole.shape == (5, 43 * 256)
  np.testing.assert_allclose(chunked, whole, atol=1e-5)
  assert fn(log_mel[:1]).shape == (1, 43 * 256)


def test_inverse_stft_is_exact_up_to_the_ends():
  # Griffin-Lim's inverse STFT must not fade the note's first and last samples.
  x = tone(62, SR, 0.6, harmonics=5, amp=0.4, decay=0.0)[:43 * 256]
  config = audio.config.PAPER
  spec = audio.spectral._frames_stft(tf.constant(x), config, 43)
  back = audio.spectral._istft(spec, config, 43 * 256).numpy()
  np.testing.assert_allclose(back, x, atol=1e-4)
