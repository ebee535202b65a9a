"""The bin/ scripts: each opens with a usage block that absl prints intact, and reports a
bad flag value in one line."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import REPO

BIN = os.path.join(REPO, "bin")
SCRIPTS = sorted(n for n in os.listdir(BIN) if not n.endswith(".py") and n != "__pycache__")


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_opens_with_a_usage_block_and_runs_through_common(name):
  source = open(os.path.join(BIN, name), encoding="utf-8").read()
  doc = ast.get_docstring(ast.parse(source), clean=False)
  assert doc and "Usage:" in doc and f"bin/{name}" in doc
  # absl's usage text %-formats the docstring with the program's name: a lone % in it
  # would print that name in the middle of a sentence.
  assert doc.count("%") == 2 * doc.count("%%"), name
  # A shell line continuation in the usage stays one (the docstring is raw), instead of
  # joining two lines with a run of spaces.
  head = source.split('"""')[1]
  assert doc.count("\\\n") == head.count("\\\n"), name
  assert "_common.run(main)" in source and "app.run(main)" not in source


def test_a_bad_flag_value_is_one_error_line():
  done = subprocess.run([sys.executable, os.path.join(BIN, "transfer"), "--model=m",
                         "--input=x.wav", "--target=Pno", "--alpha=1.5", "--out=o.wav"],
                        capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert done.returncode == 1
  lines = [l for l in done.stderr.splitlines() if l.strip()]
  assert lines[-1] == ("ERROR: --alpha=1.5: expected numbers in [0, 1]. "
                       "(usage: transfer --help)")
  assert "Usage:" not in done.stderr   # not absl's whole usage text


def test_a_note_that_cannot_be_read_is_one_error_line(tmp_path):
  # What bin/evaluate, bin/export, ... print when the pipeline finds a note gone since
  # the preparation: the DataError, or the pipeline's failed assertion inside TF.
  script = tmp_path / "script"
  script.write_text(f"""import sys
sys.path.insert(0, {BIN!r})
import _common
import tensorflow as tf
from tfgmvae.data import pipeline
from tfgmvae.data.dataset import DataError

def checked(errors):
  with tf.control_dependencies([pipeline.check_errors(errors)]):
    return tf.identity(errors)

def main(argv):
  if argv[1] == "library":
    raise DataError("/x.wav: no such file.")
  if argv[1] == "pipeline":
    list(tf.data.Dataset.from_tensors(tf.constant(["/y.wav: no such file."])).map(checked))
  if argv[1] == "server":
    from tfgmvae.data import paths
    paths.isfile("http://127.0.0.1:9/labels.csv")   # (port 9: discard, nothing listens)
  raise RuntimeError("another error")

_common.run(main)
""")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  for case, line in (("library", "ERROR: /x.wav: no such file."),
                     ("pipeline", "ERROR: /y.wav: no such file."),
                     ("server", "ERROR: http://127.0.0.1:9/labels.csv: could not be "
                                "reached (")):
    done = subprocess.run([sys.executable, str(script), case], capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 1, done.stderr
    last = [l for l in done.stderr.splitlines() if l.strip()][-1]
    assert last.startswith(line) if case == "server" else last == line
    assert "Traceback" not in done.stderr
  done = subprocess.run([sys.executable, str(script), "other"], capture_output=True,
                        text=True, timeout=120, env=env)
  assert done.returncode == 1 and "RuntimeError: another error" in done.stderr
