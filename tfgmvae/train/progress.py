"""What training prints in the terminal: a line per epoch, and a progress bar.

`EpochLine` (`--verbose=2`, and after each epoch's bar with `--verbose=1`) prints one
short line per epoch with the figures to watch; Keras's own line lists every term,
about 700 characters, and all of them are in TensorBoard anyway. `ProgressBar`
(`--verbose=1`) redraws one line during the epoch, fitted to the terminal's width:

  Epoch 3/100 [=======>            ] 9/22 ETA 6 s, loss 412.5, ELBO -409.2

Where the output is not a terminal (a log file), the bar is left out, so the file holds
the epoch lines only.
"""

import shutil
import sys
import time

import keras
import numpy as np

# (log key, label, format) of the figures an epoch line shows, when present.
EPOCH_FIGURES = (("loss", "loss", ".1f"), ("elbo", "ELBO", ".1f"),
                 ("val_elbo", "validation ELBO", ".1f"),
                 ("val_instrument_accuracy", "instrument acc.", ".3f"),
                 ("val_instrument_matched_accuracy", "matched instrument acc.", ".3f"),
                 ("val_pitch_accuracy", "pitch acc.", ".3f"))
BAR_FIGURES = (("loss", "loss", ".1f"), ("elbo", "ELBO", ".1f"))


def _number(value) -> float:
  """A log value as a float (multi-worker runs log [1] vectors)."""
  return float(np.asarray(keras.ops.convert_to_numpy(value)).reshape(-1)[0])


def _seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds} s"
  minutes, seconds = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes}:{seconds:02d}"
  hours, minutes = divmod(minutes, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}"


def bar_line(epoch: int, epochs: int, step: int, steps: int, eta: float | None,
             logs: dict, width: int) -> str:
  """The progress line after `step` of `steps` batches of epoch `epoch` (1-based), at
  most `width` characters: the bar shrinks first, then the figures are cut off."""
  head = f"Epoch {epoch}/{epochs} "
  count = f" {step}/{steps}" + ("" if eta is None else f" ETA {_seconds(eta)}")
  figures = "".join(f", {label} {_number(logs[key]):{form}}"
                    for key, label, form in BAR_FIGURES if key in logs)
  fixed = len(head) + 2 + len(count)          # 2: the bar's brackets
  size = min(30, width - fixed - len(figures))
  if size < 5:          # too narrow for bar and figures: a short bar, figures cut off
    size = max(0, min(10, width - fixed))
  done = size * min(step, steps) // max(steps, 1)
  bar = "[" + ("=" * done + (">" if done < size else "")).ljust(size) + "]" if size else ""
  return (head + bar + count + figures)[:width]


class EpochLine(keras.callbacks.Callback):
  """One short line per epoch with the figures to watch (see the module docstring).
  Epochs without validation show the training figures only."""

  def __init__(self, epochs: int, log):
    super().__init__()
    self._epochs, self._log, self._start = epochs, log, 0.0

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.monotonic()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    shown = ", ".join(f"{label} {_number(logs[key]):{form}}"
                      for key, label, form in EPOCH_FIGURES if key in logs)
    self._log(f"Epoch {epoch + 1}/{self._epochs} ({time.monotonic() - self._start:.1f} s): "
              f"{shown}")


class ProgressBar(keras.callbacks.Callback):
  """A one-line progress bar during each epoch, on a terminal only.

  Args:
    epochs: The run's last epoch.
    steps: Batches per epoch.
    stream: Where to draw (default: sys.stdout).
    width: Columns to fit (default: the terminal's, less one).
    interval: Seconds between redraws.
  """

  def __init__(self, epochs: int, steps: int, stream=None, width: int | None = None,
               interval: float = 0.1):
    super().__init__()
    self._epochs, self._steps = epochs, steps
    self._stream = stream or sys.stdout
    self._width, self._interval = width, interval
    self._epoch, self._start, self._drawn, self._shown = 0, 0.0, 0.0, False
    isatty = getattr(self._stream, "isatty", None)
    self.enabled = bool(isatty and isatty())

  def _columns(self) -> int:
    if self._width is not None:
      return self._width
    return max(20, shutil.get_terminal_size((80, 24)).columns - 1)

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch, self._start, self._drawn = epoch + 1, time.monotonic(), 0.0

  def on_train_batch_end(self, batch, logs=None):
    if not self.enabled:
      return
    now = time.monotonic()
    step = batch + 1
    if now - self._drawn < self._interval and step < self._steps:
      return
    self._drawn = now
    eta = (now - self._start) / step * (self._steps - step) if step < self._steps else None
    line = bar_line(self._epoch, self._epochs, min(step, self._steps), self._steps, eta,
                    logs or {}, self._columns())
    self._stream.write("\r" + line + "\x1b[K")   # \x1b[K: clear the rest of the row
    self._stream.flush()
    self._shown = True

  def on_epoch_end(self, epoch, logs=None):
    self.clear()

  def on_train_end(self, logs=None):
    self.clear()

  def clear(self):
    """Removes the bar, so that the epoch line (or an error) starts on a clean row."""
    if self._shown:
      self._stream.write("\r\x1b[K")
      self._stream.flush()
      self._shown = False
