"""Spectrograms as images: a perceptually ordered colour map and PNG output."""

import os

import numpy as np
import tensorflow as tf

GAP = 2   # white columns between panels

# Colours at equally spaced levels, dark purple (low) -> blue -> teal -> green -> yellow.
_ANCHORS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98],
                     [253, 231, 37]], np.float32)


def colorize(values, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
  """Maps values in [lo, hi] (clipped) to uint8 RGB, shape values.shape + (3,)."""
  x = np.clip((np.nan_to_num(np.asarray(values, np.float32)) - lo) / (hi - lo), 0.0, 1.0)
  levels = np.linspace(0.0, 1.0, len(_ANCHORS))
  rgb = np.stack([np.interp(x, levels, _ANCHORS[:, c]) for c in range(3)], axis=-1)
  return np.round(rgb).astype(np.uint8)


def spectrogram_image(*mels, scale: int = 1) -> np.ndarray:
  """Normalised log-mels [T, F] side by side as one uint8 image [F, n*T*scale + gaps, 3].

  Time runs left to right (each frame `scale` pixels wide) and the lowest mel band is
  the bottom row.
  """
  panels = []
  for i, mel in enumerate(mels):
    if i:
      panels.append(np.full((np.shape(mel)[1], GAP, 3), 255, np.uint8))
    panels.append(np.repeat(colorize(np.asarray(mel).T[::-1]), scale, axis=1))
  return np.concatenate(panels, axis=1)


def write_png(path: str, image: np.ndarray, overwrite: bool = False) -> None:
  """Writes a uint8 [H, W, 3] image as PNG; an existing file is an error unless
  `overwrite`."""
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; refusing to overwrite it.")
  tf.io.write_file(path, tf.io.encode_png(np.asarray(image, np.uint8)))
