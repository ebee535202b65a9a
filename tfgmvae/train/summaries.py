"""TensorBoard summaries of a training run: scalars, spectrograms, audio, embeddings.

`SummaryCallback` writes two runs under `run_dir/summaries`:

* `train`: `losses/<term>` for each term of the objective, `losses/total`, `elbo`,
  `accuracy/instrument`, `accuracy/pitch` (and `accuracy/pitch_from_z_t`, the pitch
  adversary's, when it is on; at N = 0 validation has `accuracy/instrument_matched`
  instead of `accuracy/instrument`: see tfgmvae.train.unlabelled),
  `optimization/learning_rate`,
  `optimization/steps_per_second` and `progress/optimizer_step`;
* `validation`: the same losses, ELBO and accuracies from the `val_` logs; after the
  first epoch, every `media_every` epochs and when training ends (so the last model is
  always shown) the input and reconstructed log-mel of a few validation notes (of
  different instruments where there are several) as images
  (`spectrograms/input_vs_reconstruction`) and as Griffin-Lim audio (`audio/input`,
  `audio/reconstruction`); and Embedding Projector data for the posterior
  means of z_t and z_p of every note of the callback's batch (a checkpoint
  `embeddings-<epoch>`, `metadata.tsv` and `projector_config.pbtxt`). Training gives it up
  to `SUMMARY_NOTES` validation notes, an equal share of each instrument's (`pick_notes`),
  so that the projector shows every instrument.

The step of every summary is the number of completed epochs.
`summaries/written_through_epoch` records the last epoch written; a restarted run does not
write the epochs it replays again.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.audio import metadata as audio_metadata

from tfgmvae import audio
from tfgmvae.audio.display import spectrogram_image
from tfgmvae.train.checkpoints import write_atomically

TRAIN_RUN, VALIDATION_RUN = "train", "validation"
LOSS_TERMS = ("reconstruction", "kl_pitch", "kl_timbre", "kl_instrument", "instrument_ce",
              "pitch_ce", "adversary_ce")
# Model tracker name -> TensorBoard tag (loss terms are added below).
METRIC_TAGS = {"loss": "losses/total", "elbo": "elbo",
               "instrument_accuracy": "accuracy/instrument",
               "instrument_matched_accuracy": "accuracy/instrument_matched",   # N = 0
               "pitch_accuracy": "accuracy/pitch",
               "adversary_accuracy": "accuracy/pitch_from_z_t"
              } | {t: f"losses/{t}" for t in LOSS_TERMS}
SPECTROGRAM_TAG = "spectrograms/input_vs_reconstruction"
AUDIO_TAGS = {"input": "audio/input", "reconstruction": "audio/reconstruction"}
METADATA_NAME = "metadata.tsv"
CHECKPOINT_NAME = "embeddings"
EMBEDDINGS = {"z_timbre": "z_timbre_mean", "z_pitch": "z_pitch_mean"}   # var -> encode key
PEAK = 0.99
SUMMARY_NOTES = 1024


def spread(count: int, size: int) -> np.ndarray:
  """`min(count, size)` indices into `range(count)`, evenly spaced (the first and, for
  size > 1, the last included).

  Raises:
    ValueError: count < 0 or size < 1.
  """
  if count < 0 or size < 1:
    raise ValueError(f"spread({count}, {size}): expected count >= 0 and size >= 1.")
  if count <= size:
    return np.arange(count, dtype=np.int64)
  return np.round(np.linspace(0, count - 1, size)).astype(np.int64)  # distinct: step > 1


def pick_notes(instruments, size: int) -> list[int]:
  """Indices of up to `size` notes (more only when there are more instruments than `size`:
  one each), `size // instruments` or all of each instrument's, spread evenly over its
  notes in their order; returned in order.

  Args:
    instruments: The instrument of each note, e.g. of a split's index rows.
    size: How many notes to pick at most (with at most `size` instruments).
  """
  groups = {}
  for i, inst in enumerate(instruments):
    groups.setdefault(inst, []).append(i)
  if not groups:
    return []
  quota = max(1, size // len(groups))
  return sorted(group[j] for group in groups.values() for j in spread(len(group), quota))


def media_indices(instruments, k: int) -> list[int]:
  """`k` indices into `instruments`: the first note of each instrument in order, then (when
  there are fewer instruments than `k`) the following notes in order."""
  seen, first, rest = set(), [], []
  for i, inst in enumerate(int(x) for x in instruments):
    (rest if inst in seen else first).append(i)
    seen.add(inst)
  return (first + rest)[:max(0, k)]


def scalar_summaries(logs: dict, prefix: str = "") -> dict[str, float]:
  """TensorBoard tag -> value for the model's trackers found in `logs`.

  Args:
    logs: Keras epoch logs.
    prefix: '' for the training values, 'val_' for the validation ones.
  """
  return {tag: float(logs[prefix + name]) for name, tag in METRIC_TAGS.items()
          if logs and prefix + name in logs}


def peak_normalise(waves, peak: float = PEAK) -> np.ndarray:
  """Scales each row of [k, samples] so its largest magnitude is `peak` (silence stays 0)."""
  x = np.nan_to_num(np.asarray(waves, np.float32))
  top = np.max(np.abs(x), axis=-1, keepdims=True)
  return x * np.where(top > 0, peak / np.maximum(top, 1e-30), 0.0).astype(np.float32)


def write_audio(tag: str, clips: np.ndarray, sample_rate: int, description: str = ""):
  """Writes [k, samples] clips as one TensorBoard audio summary (WAV, no labels).

  What `tf.summary.audio` writes, built without its `tf.transpose` of strings: on a CPU
  build with oneDNN that transpose logs "E ... oneDNN supports DT_STRING only on platforms
  with AVX-512" (whatever the CPU), which looked like a failure in the training log.

  Args:
    tag: The summary's tag.
    clips: [k, samples] float waves in [-1, 1].
    sample_rate: Their rate in Hz.
    description: Markdown shown beside the clips.
  """
  wavs = [tf.audio.encode_wav(tf.constant(c, tf.float32)[:, None], sample_rate)
          for c in np.asarray(clips)]
  data = (tf.stack([tf.stack(wavs), tf.fill([len(wavs)], "")], axis=1) if wavs
          else tf.zeros([0, 2], tf.string))
  tf.summary.write(tag, data, metadata=audio_metadata.create_summary_metadata(
      display_name=None, description=description,
      encoding=audio_metadata.Encoding.Value("WAV")))


def checkpoint_tensor_name(variable: str) -> str:
  """Key under which `tf.train.Checkpoint(<variable>=v)` stores v's value."""
  return f"{variable}/.ATTRIBUTES/VARIABLE_VALUE"


def write_projector(directory: str, embeddings: dict, metadata: list[tuple],
                    step: int) -> str:
  """Writes Embedding Projector data into `directory`; the files are relocatable.

  Args:
    directory: A TensorBoard run folder (the projector finds its latest checkpoint).
    embeddings: Variable name -> float [N, D] array (same N for all).
    metadata: N rows of (instrument, MIDI pitch, key), in the order of the embeddings.
    step: Number of the checkpoint; only the newest is kept.

  Returns:
    The checkpoint path.
  """
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, METADATA_NAME), "w") as f:
    f.write("instrument\tpitch\tkey\n")
    for row in metadata:
      f.write("\t".join(" ".join(str(v).split()) for v in row) + "\n")
  variables = {name: tf.Variable(np.asarray(value, np.float32), trainable=False, name=name)
               for name, value in embeddings.items()}
  checkpoint = tf.train.Checkpoint(**variables)
  manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1,
                                       checkpoint_name=CHECKPOINT_NAME)
  path = manager.save(checkpoint_number=step)
  config = projector.ProjectorConfig()
  for name, var in variables.items():
    info = config.embeddings.add()
    info.tensor_name = checkpoint_tensor_name(name)
    info.metadata_path = METADATA_NAME
    info.tensor_shape.extend(var.shape.as_list())
  projector.visualize_embeddings(directory, config)
  return path


# In RUN_DIR/summaries: the last epoch whose summaries were written. A restart replays
# the epochs after its last checkpoint (`--checkpoint_every`); their summaries are not
# written again, so TensorBoard shows each epoch once.
WRITTEN_FILE = "written_through_epoch"


def read_written(summary_dir: str) -> int:
  """The last epoch whose summaries are in `summary_dir` (0: none recorded)."""
  try:
    with open(os.path.join(summary_dir, WRITTEN_FILE), encoding="ascii") as f:
      return int(f.read().strip())
  except (OSError, ValueError):
    return 0


def _record_written(summary_dir: str, epoch: int) -> None:
  write_atomically(os.path.join(summary_dir, WRITTEN_FILE), f"{epoch}\n")


def _decode(key) -> str:
  return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


class SummaryCallback(keras.callbacks.Callback):
  """Writes TensorBoard summaries of a GMVAE training run (see the module docstring)."""

  def __init__(self, run_dir: str, prepared, val_batch: dict, media_every: int = 10,
               num_audio: int = 3, griffin_lim_iters: int = 32, embeddings_every: int = 0,
               label_fraction: float = 1.0):
    """Sets the callback up.

    Args:
      run_dir: The run's folder; summaries go to `run_dir/summaries/{train,validation}`.
      prepared: The `Prepared` dataset (vocabularies, log-mel range, audio settings).
      val_batch: Numpy arrays of validation notes: `mel` [N, T, F] normalised, `pitch`
        and `instrument` (indices into the vocabularies) and `key` (bytes or str).
      media_every: Spectrograms and audio after the first epoch, every this many epochs
        (epochs 10, 20, ... for 10) and after the last; 0 disables them.
      num_audio: Notes shown as spectrograms and audio (`media_indices` of
        `val_batch`: one per instrument first).
      griffin_lim_iters: Griffin-Lim iterations of the audio summaries.
      embeddings_every: Projector data every this many epochs; it is always written when
        training ends (0: only then).
      label_fraction: The run's N. At 0 no training note is labelled, so the training
        instrument accuracy (undefined) is not written; the validation one is.
    """
    super().__init__()
    self.summary_dir = os.path.join(run_dir, "summaries")
    self.prepared = prepared
    self.val_batch = {k: np.asarray(v) for k, v in val_batch.items()}
    self.media_every = media_every
    self.num_audio = max(0, min(num_audio, len(self.val_batch["mel"])))
    self.media = media_indices(self.val_batch["instrument"], self.num_audio)
    self.griffin_lim_iters = griffin_lim_iters
    self.embeddings_every = embeddings_every
    self.label_fraction = label_fraction
    self.train_writer = self.validation_writer = None
    self._epoch = -1
    self._replayed = False   # the last epoch seen was replayed after a restart
    self._embedded_epoch = None
    self._media_step = None
    self._epoch_start = self._last_batch_end = None
    self._start_iterations = 0
    self._batches = 0
    self.written = 0

  @property
  def validation_dir(self) -> str:
    return os.path.join(self.summary_dir, VALIDATION_RUN)

  def _open(self):
    if self.train_writer is None:
      self.train_writer = tf.summary.create_file_writer(
          os.path.join(self.summary_dir, TRAIN_RUN))
      self.validation_writer = tf.summary.create_file_writer(self.validation_dir)

  @property
  def _optimizer(self):
    """The optimizer that steps: under mixed_float16 Keras's LossScaleOptimizer counts
    its steps on the optimizer it wraps (its own `iterations` stays 0)."""
    return getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)

  def _iterations(self) -> int:
    return int(keras.ops.convert_to_numpy(self._optimizer.iterations))

  def current_learning_rate(self) -> float:
    lr = self._optimizer.learning_rate
    if callable(lr) and not hasattr(lr, "numpy"):
      lr = lr(self._optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))

  def _notes(self, indices) -> list[tuple[str, int, str]]:
    b = self.val_batch
    return [(self.prepared.instruments[int(b["instrument"][i])],
             int(self.prepared.pitches[int(b["pitch"][i])]), _decode(b["key"][i]))
            for i in indices]

  # -- Keras hooks -----------------------------------------------------------------------

  def on_train_begin(self, logs=None):
    self._open()
    self.written = read_written(self.summary_dir)

  def on_epoch_begin(self, epoch, logs=None):
    self._open()
    self._epoch_start = self._last_batch_end = time.perf_counter()
    self._start_iterations = self._iterations()
    self._batches = 0

  def on_train_batch_end(self, batch, logs=None):
    self._batches += 1
    self._last_batch_end = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self._open()
    logs = logs or {}
    step = epoch + 1
    self._epoch = epoch
    self._replayed = step <= self.written
    if self._replayed:   # replayed after a restart: its summaries are there
      return
    iterations = self._iterations()
    with self.train_writer.as_default(step=step):
      for tag, value in scalar_summaries(logs).items():
        if not (tag == METRIC_TAGS["instrument_accuracy"] and self.label_fraction == 0):
          tf.summary.scalar(tag, value)
      tf.summary.scalar("optimization/learning_rate", self.current_learning_rate())
      tf.summary.scalar("progress/optimizer_step", iterations)
      # Batches seen by on_train_batch_end (one call per execution of
      # steps_per_execution steps), bounded by the optimizer's count, which Keras 3.4
      # advances once more at the end of an epoch over a dataset of unknown length.
      per_call = int(getattr(self.model, "steps_per_execution", 1) or 1)
      steps = min(self._batches * per_call, iterations - self._start_iterations)
      elapsed = (self._last_batch_end or 0.0) - (self._epoch_start or 0.0)
      if steps and elapsed > 0:
        tf.summary.scalar("optimization/steps_per_second", steps / elapsed)
    with self.validation_writer.as_default(step=step):
      for tag, value in scalar_summaries(logs, "val_").items():
        tf.summary.scalar(tag, value)
    # Recorded as soon as the scalars are on disk: a kill in the much longer media and
    # embeddings writing below then loses those of this epoch, instead of making the
    # restart write the epoch's scalars a second time.
    self.train_writer.flush()
    self.validation_writer.flush()
    _record_written(self.summary_dir, step)
    self.written = step
    if self._media_on and (step == 1 or step % self.media_every == 0):
      self.write_media(step)
    if self.embeddings_every > 0 and step % self.embeddings_every == 0:
      self.write_embeddings(step)
    self.validation_writer.flush()

  @property
  def _media_on(self) -> bool:
    return self.media_every > 0 and self.num_audio > 0

  def on_train_end(self, logs=None):
    # The last epoch's media and embeddings, unless that epoch was replayed after a
    # restart: the killed run wrote them, or was killed writing them (then they are
    # lost, as for any epoch killed there), and a second copy would stack in TensorBoard.
    if not self._replayed:
      if self._epoch >= 0 and self._media_on and self._media_step != self._epoch + 1:
        self.write_media(self._epoch + 1)
      if self._embedded_epoch is None or self._embedded_epoch != self._epoch + 1:
        self.write_embeddings(self._epoch + 1)
    for writer in (self.train_writer, self.validation_writer):
      if writer is not None:
        writer.close()
    self.train_writer = self.validation_writer = None

  # -- media and embeddings --------------------------------------------------------------

  def write_media(self, step: int):
    """Spectrogram images and Griffin-Lim audio of the `media` notes."""
    self._media_step = step
    k = self.num_audio
    mel = self.val_batch["mel"][self.media].astype(np.float32)
    recon = keras.ops.convert_to_numpy(self.model(mel, training=False)["reconstruction"])
    notes = self._notes(self.media)
    listing = "\n".join(f"{i + 1}. `{key}`: {inst}, MIDI pitch {pitch}"
                        for i, (inst, pitch, key) in enumerate(notes))
    images = np.stack([spectrogram_image(a, b) for a, b in zip(mel, recon)])
    with self.validation_writer.as_default(step=step):
      tf.summary.image(
          SPECTROGRAM_TAG, images, max_outputs=k,
          description=("Left: input log-mel; right: reconstruction. Time runs left to "
                       "right, the lowest mel band is at the bottom; colour from -1 "
                       "(dark) to 1 (yellow) in the normalised scale.\n\n" + listing))
      p = self.prepared
      both = audio.denormalise(np.concatenate([mel, recon.astype(np.float32)]),
                               p.log_mel_min, p.log_mel_max)
      waves = peak_normalise(audio.log_mel_to_audio(both, p.audio,
                                                    n_iter=self.griffin_lim_iters))
      for name, clips in (("input", waves[:k]), ("reconstruction", waves[k:])):
        write_audio(AUDIO_TAGS[name], clips, p.audio.sample_rate,
                    description=(f"Griffin-Lim ({self.griffin_lim_iters} iterations)"
                                 f" of the {name} log-mel, peak-normalised.\n\n" + listing))

  def encode(self, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Posterior means of every validation note: variable name -> [N, L]."""
    mel = self.val_batch["mel"].astype(np.float32)
    parts = {name: [] for name in EMBEDDINGS}
    for start in range(0, len(mel), batch_size):
      post = self.model.encode(mel[start:start + batch_size], training=False)
      for name, key in EMBEDDINGS.items():
        parts[name].append(keras.ops.convert_to_numpy(post[key]))
    return {name: np.concatenate(values) for name, values in parts.items()}

  def write_embeddings(self, step: int) -> str | None:
    """Projector data for z_t and z_p into the validation run; returns the checkpoint."""
    if not len(self.val_batch["mel"]):
      return None
    path = write_projector(self.validation_dir, self.encode(),
                           self._notes(range(len(self.val_batch["mel"]))), step)
    self._embedded_epoch = step
    return path
