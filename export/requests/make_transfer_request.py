#!/usr/bin/env python3
"""Writes the REST body of a `transfer` request for a note in an audio file.

Usage:
  python export/requests/make_transfer_request.py NOTE.wav Pno 1.0 > transfer.json
  curl -s -d @transfer.json http://localhost:8501/v1/models/tfgmvae:predict

Needs only NumPy and soundfile (no TensorFlow, no tfgmvae). The note is mixed to mono and
sent whole: the model reads the segment its training read (0 to 0.5 s with the paper's
settings; `audio.offset` and `audio.duration` in the export's
assets.extra/tfgmvae.json), at its own rate from 1 to 384 kHz (resample others first).
"""

import json
import os
import sys

import numpy as np
import soundfile

# The input rates the served `transfer` accepts (tfgmvae.serving.module's; this script
# does not import tfgmvae).
MIN_RATE, MAX_RATE = 1_000, 384_000


def transfer_body(path: str, target: str, alpha: float) -> dict:
  """The `transfer` request for the note in `path` (columnar "inputs" format)."""
  audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
  if not MIN_RATE <= rate <= MAX_RATE:
    raise ValueError(f"recorded at {rate} Hz; the served model takes {MIN_RATE:,} to "
                     f"{MAX_RATE:,} Hz: resample it first (bin/transfer does).")
  audio = audio.mean(axis=1)
  return {"signature_name": "transfer",
          "inputs": {"audio": [np.round(audio.astype(np.float64), 6).tolist()],
                     "sample_rate": int(rate),
                     "target_instrument": [target], "alpha": [float(alpha)]}}


def main(argv: list[str]) -> int:
  if len(argv) != 4:
    sys.exit(__doc__)
  try:
    alpha = float(argv[3])
  except ValueError:
    alpha = float("nan")
  if not 0.0 <= alpha <= 1.0:
    sys.exit(f"ERROR: alpha {argv[3]!r}: expected a number in [0, 1].")
  if not os.path.isfile(argv[1]):
    sys.exit(f"ERROR: {argv[1]}: no such file.")
  try:
    body = transfer_body(argv[1], argv[2], alpha)
  except (OSError, RuntimeError) as e:   # soundfile's errors: missing or undecodable
    sys.exit(f"ERROR: {argv[1]}: cannot read it as audio ({e}).")
  except ValueError as e:                 # a rate the served model refuses
    sys.exit(f"ERROR: {argv[1]}: {e}")
  json.dump(body, sys.stdout)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
