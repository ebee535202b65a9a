#!/usr/bin/env python3
"""gRPC requests to TF Serving for `synthesize` and `transfer` (tensorflow-serving-api).

Usage:
  pip install -e '.[serving]'      # tensorflow-serving-api
  python export/requests/grpc_client.py --server=localhost:8500 --model=tfgmvae \
      synthesize
  python export/requests/grpc_client.py --server=localhost:8500 --model=tfgmvae \
      transfer NOTE.wav Pno 1.0

Prints the shapes of the outputs and writes the first note's audio, peak-normalised to
0.99, to OUT.wav (--out, default grpc_out.wav; an existing file is not overwritten) at
--rate: the
export's "output_sample_rate" in its assets.extra/tfgmvae.json (22,050 Hz unless the
model was trained with another --sample_rate). Needs TensorFlow (for
tf.make_tensor_proto), tensorflow-serving-api, grpcio and soundfile; not tfgmvae.
"""

import argparse
import os
import sys

import numpy as np
import soundfile
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

# The input rates the served `transfer` accepts (tfgmvae.serving.module's; this script
# does not import tfgmvae).
MIN_RATE, MAX_RATE = 1_000, 384_000


def synthesize_request(model: str = "tfgmvae") -> predict_pb2.PredictRequest:
  """A cello middle C at the prior's mean and a piano G4 drawn with w = 0.5."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = "synthesize"
  request.inputs["instrument"].CopyFrom(tf.make_tensor_proto(["Vc", "Pno"]))
  request.inputs["pitch"].CopyFrom(tf.make_tensor_proto([60, 67], dtype=tf.int32))
  request.inputs["w"].CopyFrom(tf.make_tensor_proto([0.0, 0.5], dtype=tf.float32))
  request.inputs["seed"].CopyFrom(tf.make_tensor_proto([0, 1], dtype=tf.int64))
  return request


def transfer_request(path: str, target: str, alpha: float,
                     model: str = "tfgmvae") -> predict_pb2.PredictRequest:
  """The note in `path` (any rate; mixed to mono, sent whole: the model reads the segment
  its training read) moved towards `target` by `alpha`."""
  audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
  if not MIN_RATE <= rate <= MAX_RATE:
    raise ValueError(f"recorded at {rate} Hz; the served model takes {MIN_RATE:,} to "
                     f"{MAX_RATE:,} Hz: resample it first (bin/transfer does).")
  audio = audio.mean(axis=1)
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = "transfer"
  request.inputs["audio"].CopyFrom(tf.make_tensor_proto(audio[None, :], dtype=tf.float32))
  request.inputs["sample_rate"].CopyFrom(tf.make_tensor_proto(rate, dtype=tf.int32))
  request.inputs["target_instrument"].CopyFrom(tf.make_tensor_proto([target]))
  request.inputs["alpha"].CopyFrom(tf.make_tensor_proto([alpha], dtype=tf.float32))
  return request


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--server", default="localhost:8500")
  parser.add_argument("--model", default="tfgmvae")
  parser.add_argument("--out", default="grpc_out.wav")
  parser.add_argument("--rate", type=int, default=22050,
                      help="sample rate of the served audio: the export's "
                           "output_sample_rate")
  parser.add_argument("signature", choices=["synthesize", "transfer"])
  parser.add_argument("args", nargs="*", help="transfer: NOTE.wav TARGET ALPHA")
  args = parser.parse_args()
  if args.rate <= 0:
    sys.exit(f"--rate={args.rate}: expected the export's output_sample_rate in Hz (> 0)")
  import grpc  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
  if args.signature == "synthesize":
    request = synthesize_request(args.model)
  elif len(args.args) == 3:
    try:
      alpha = float(args.args[2])
    except ValueError:
      alpha = float("nan")
    if not 0.0 <= alpha <= 1.0:
      sys.exit(f"ALPHA={args.args[2]}: expected a number in [0, 1]")
    note = args.args[0]
    if not os.path.isfile(note):
      sys.exit(f"ERROR: {note}: no such file.")
    try:
      request = transfer_request(note, args.args[1], alpha, args.model)
    except (OSError, RuntimeError) as e:   # soundfile's errors: undecodable
      sys.exit(f"ERROR: {note}: cannot read it as audio ({e}).")
    except ValueError as e:                 # a rate the served model refuses
      sys.exit(f"ERROR: {note}: {e}")
  else:
    sys.exit("transfer needs NOTE.wav TARGET ALPHA")
  if os.path.exists(args.out):
    sys.exit(f"{args.out} exists; refusing to overwrite it (choose --out).")
  stub = prediction_service_pb2_grpc.PredictionServiceStub(
      grpc.insecure_channel(args.server))
  try:
    response = stub.Predict(request, timeout=120.0)
  except grpc.RpcError as e:
    sys.exit(f"{args.server}: {e.code().name}: {e.details()}")
  outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
  for name, value in sorted(outputs.items()):
    print(name, value.shape, value.dtype)
  audio = outputs["audio"][0]
  soundfile.write(args.out, np.clip(audio / max(1e-9, np.abs(audio).max()) * 0.99, -1, 1),
                  args.rate, subtype="PCM_16")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
