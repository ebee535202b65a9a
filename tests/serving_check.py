"""Runs the documented serving requests against an export, in a process without tfgmvae.

Usage (by tests/test_serving.py):
  python tests/serving_check.py EXPORT_VERSION_DIR NOTE.wav OUT.npz

Checks that every op of the exported graph is a registered core TensorFlow op, then feeds
the README's request payloads (export/requests/synthesize.json, the body written by
export/requests/make_transfer_request.py, and the gRPC requests of
export/requests/grpc_client.py) through the loaded signatures, and the REST payloads
through a session loader too (as TF Serving loads a model: graph, session, restore op),
and saves every output (plus encode_mel/decode on fixed inputs) to OUT.npz for
comparison with the live model.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry  # pylint: disable=g-direct-tensorflow-import

REQUESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "export", "requests")


def _module(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REQUESTS, f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def graph_ops(export_dir):
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  graph = proto.meta_graphs[0].graph_def
  return ({n.op for n in graph.node}
          | {n.op for fn in graph.library.function for n in fn.node_def})


def run(signature, inputs):
  """Feeds JSON-like inputs with the signature's dtypes (what TF Serving does); returns
  NumPy outputs (strings as str)."""
  specs = signature.structured_input_signature[1]
  out = signature(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in inputs.items()})
  return {k: v.numpy().astype(str) if v.dtype == tf.string else v.numpy()
          for k, v in out.items()}


def run_in_session(export_dir, requests):
  """Loads the export as TF Serving's C++ server does (a graph and a session, variables
  restored by the SavedModel's restore op, not by object) and runs each
  (signature name, inputs) request; returns a list of NumPy output dicts."""
  tf1 = tf.compat.v1
  outputs = []
  with tf1.Graph().as_default(), tf1.Session() as session:
    meta_graph = tf1.saved_model.loader.load(session, ["serve"], export_dir)
    for name, inputs in requests:
      signature = meta_graph.signature_def[name]
      feed = {}
      for key, info in signature.inputs.items():
        dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
        feed[info.name] = (np.array(inputs[key], dtype=object) if dtype == object
                           else np.asarray(inputs[key], dtype=dtype))
      fetched = session.run({k: v.name for k, v in signature.outputs.items()}, feed)
      outputs.append({k: v.astype(str) if v.dtype == object else v
                      for k, v in fetched.items()})
  return outputs


def main(export_dir, wav, out):
  ops = graph_ops(export_dir)
  unknown = sorted(op for op in ops if op_def_registry.get(op) is None)
  loaded = tf.saved_model.load(export_dir)
  sigs = loaded.signatures
  results = {"ops": np.array(sorted(ops)), "unknown_ops": np.array(unknown, dtype=str),
             "signatures": np.array(sorted(sigs.keys()))}
  with open(os.path.join(REQUESTS, "synthesize.json"), encoding="utf-8") as f:
    synthesize_body = json.load(f)
  transfer_body = _module("make_transfer_request").transfer_body(wav, "Pno", 1.0)
  transfer_body = json.loads(json.dumps(transfer_body))   # exactly what goes over the wire
  for name, body in (("synthesize", synthesize_body), ("transfer", transfer_body)):
    for k, v in run(sigs[body["signature_name"]], body["inputs"]).items():
      results[f"rest_{name}/{k}"] = v
  in_session = run_in_session(export_dir, [(b["signature_name"], b["inputs"])
                                           for b in (synthesize_body, transfer_body)])
  for name, outputs in zip(("synthesize", "transfer"), in_session):
    for k, v in outputs.items():
      results[f"session_{name}/{k}"] = v
  grpc_client = _module("grpc_client")
  for name, request in (("synthesize", grpc_client.synthesize_request()),
                        ("transfer", grpc_client.transfer_request(wav, "Pno", 1.0))):
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    for k, v in run(sigs[request.model_spec.signature_name], inputs).items():
      results[f"grpc_{name}/{k}"] = v
  with open(os.path.join(export_dir, "assets.extra", "tfgmvae.json")) as f:
    model = json.load(f)["model"]
  shape = (2, model["frames"], model["n_mels"])
  mel = np.linspace(-1, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
  for k, v in run(sigs["encode_mel"], {"mel": mel}).items():
    results[f"encode_mel/{k}"] = v
  latent = int(loaded.timbre_means.shape[1])
  z = np.linspace(-1, 1, 2 * latent, dtype=np.float32).reshape(2, latent)
  for k, v in sigs["decode"](z_timbre=z, z_pitch=-z).items():
    results[f"decode/{k}"] = v.numpy()
  results["tfgmvae_imported"] = np.array(
      any(m == "tfgmvae" or m.startswith("tfgmvae.") for m in sys.modules))
  np.savez(out, **results)


if __name__ == "__main__":
  main(*sys.argv[1:4])
