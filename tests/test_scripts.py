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
  # TensorFlow, if the script loads it, is first imported by _common, without its noise.
  lines = source.splitlines()
  loads = [i for i, l in enumerate(lines)
           if l.startswith(("import tensorflow", "from tfgmvae"))]
  if loads and name != "make_dataset":   # make_dataset renders audio: no TensorFlow
    assert lines.index("_common.import_tensorflow()  # before tfgmvae; drops TF's "
                       "start-up noise") < loads[0], name


def test_a_bad_flag_value_is_one_error_line():
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  done = subprocess.run([sys.executable, os.path.join(BIN, "transfer"), "--model=m",
                         "--input=x.wav", "--target=Pno", "--alpha=1.5", "--out=o.wav"],
                        capture_output=True, text=True, timeout=120, env=env)
  assert done.returncode == 1
  # Only that line: not absl's whole usage text, nor TensorFlow's start-up lines.
  assert done.stderr == ("ERROR: --alpha=1.5: expected numbers in [0, 1]. "
                         "(usage: transfer --help)\n")


def test_an_unexpanded_tilde_is_refused_before_anything_is_written(tmp_path):
  # The shell leaves ~ alone after --flag= (and a flagfile never expands it): the script
  # would create a folder literally named "~" in the working directory.
  (tmp_path / "args.flags").write_text("--dataset=csv\n--data_path=/nowhere\n"
                                       "--out_dir=~/prepared\n")
  for args in (["--dataset=csv", "--data_path=/nowhere", "--out_dir=~/prepared"],
               [f"--flagfile={tmp_path / 'args.flags'}"]):
    done = subprocess.run([sys.executable, os.path.join(BIN, "prepare_dataset"), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr == ("ERROR: --out_dir=~/prepared: '~' is not expanded after "
                           "--flag= or in a flagfile; write $HOME/prepared instead "
                           "(usage: prepare_dataset --help)\n")
  assert sorted(os.listdir(tmp_path)) == ["args.flags"]
  # A list flag's items too.
  done = subprocess.run([sys.executable, os.path.join(BIN, "make_dataset"),
                         f"--out_dir={tmp_path / 'corpus'}", "--soundfonts=/a.sf2,~/b.sf2"],
                        capture_output=True, text=True, timeout=120, cwd=tmp_path)
  assert done.returncode == 1 and done.stderr.startswith(
      "ERROR: --soundfonts=~/b.sf2: '~' is not expanded"), done.stderr


def test_tensorflow_start_up_drops_only_the_plugin_noise():
  # With every TF log level on, importing TensorFlow plainly prints the three "Unable to
  # register cu... factory" lines; through _common it prints the other lines alone.
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0")
  plain = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                         text=True, timeout=120, env=env)
  quiet = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {BIN!r}); "
                          "import _common; _common.import_tensorflow(); "
                          "import tensorflow; print(tensorflow.__version__)"],
                         capture_output=True, text=True, timeout=120, env=env)
  assert plain.returncode == 0 and quiet.returncode == 0, quiet.stderr
  noise = [l for l in plain.stderr.splitlines() if "Unable to register cu" in l]
  assert len(noise) == 3, plain.stderr
  kept = [l.split("] ", 1)[-1] for l in plain.stderr.splitlines() if l not in noise]
  assert kept, plain.stderr   # TF 2.16 also says what the CPU offers, at INFO
  assert [l.split("] ", 1)[-1] for l in quiet.stderr.splitlines()] == kept
  assert quiet.stdout.strip() == "2.16.2"


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


def test_what_a_failing_tensorflow_import_says_is_kept(tmp_path):
  # A TensorFlow that aborts while it loads (as its LOG(FATAL) on a CPU without AVX
  # does): its last words reach stderr, its plugin noise does not.
  (tmp_path / "tensorflow.py").write_text(
      "import os\n"
      "os.write(2, b'Unable to register cuDNN factory: Attempting to register factory for "
      "plugin cuDNN when one has already been registered\\n')\n"
      "os.write(2, b'F fatal: this TensorFlow was compiled to use AVX\\n')\n"
      "os.abort()\n")
  done = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(tmp_path)!r}, "
                         f"{BIN!r}]; import _common; _common.import_tensorflow()"],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == -6   # SIGABRT
  assert done.stderr == "F fatal: this TensorFlow was compiled to use AVX\n"


@pytest.mark.parametrize("name", ["train", "prepare_dataset"])
def test_help_lists_the_audio_flags(name):
  # They are defined in _common; --help (not only --helpfull) shows them with the script's.
  done = subprocess.run([sys.executable, os.path.join(BIN, name), "--help"],
                        capture_output=True, text=True, timeout=120)
  own = done.stdout.split(f"bin/{name}:\n", 1)[1]   # (absl's --help exits with 1)
  for flag in ("--audio_preset", "--sample_rate", "--silence_threshold",
               "--validation_fraction"):
    assert f"  {flag}:" in own, flag


def test_storage_failures_are_one_line_naming_the_path(tmp_path):
  """A full disk, a read-only file system or a permission, raised by Python or quoted by
  TensorFlow (and raised from another error), is one ERROR line with what to do; other
  errors are left to their traceback. A folder that cannot be written is refused before
  any work: here a --run_dir under a file."""
  import errno  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, BIN)
  try:
    import _common  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.remove(BIN)
  full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/model.json.tmp")
  assert _common.storage_error(full) == (
      "/data/run/model.json.tmp: No space left on device; the disk is full: free some "
      "space (or choose another folder) and run the command again.")
  try:
    try:
      raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    except OSError as e:
      raise RuntimeError("while saving") from e
  except RuntimeError as e:
    assert _common.storage_error(e) == ("Read-only file system; that file system is "
                                        "mounted read-only: choose a writable folder.")
  quoted = Exception("{{function_node __wrapped__SaveV2_dtypes_4}} /r/ckpt-3_temp/part-0; "
                     "No space left on device [Op:SaveV2]")
  assert _common.storage_error(quoted).startswith("/r/ckpt-3_temp/part-0: No space left")
  assert _common.storage_error(ValueError("other")) is None
  blocked = tmp_path / "run" / "cache"   # a file where a folder is to be made
  blocked.parent.mkdir()
  blocked.write_text("")
  for attempt in (lambda: os.makedirs(blocked, exist_ok=True),
                  lambda: open(blocked / "meta.json", encoding="utf-8")):
    with pytest.raises(OSError) as info:
      attempt()
    assert _common.storage_error(info.value).startswith(f"{blocked}") and (
        "move it away or choose another path." in _common.storage_error(info.value))
  blocker = tmp_path / "file"
  blocker.write_text("")
  done = subprocess.run([sys.executable, os.path.join(BIN, "train"),
                         f"--run_dir={blocker}/run", "--prepared_dir=/nonexistent"],
                        capture_output=True, text=True, check=False)
  assert done.returncode == 2   # (bad settings, as for any other flag)
  assert f"--run_dir={blocker}/run: cannot be written: {blocker} is not a folder" in \
      done.stderr, done.stderr
