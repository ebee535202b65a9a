"""Shared flag definitions for the bin/ scripts (flags -> frozen dataclasses).

Library code never reads flags: each script turns its flags into the dataclasses below
and passes them down.
"""

import logging as pylogging
import os
import re
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[:1] != [REPO]:
  sys.path.insert(0, REPO)   # this checkout wins over any installed copy

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

# TF 2.16's pip wheel registers its CUDA plugins twice and says so at every start, as three
# error lines, also on machines without a GPU (tensorflow/tensorflow#62075; harmless).
_STARTUP_NOISE = re.compile(rb"Unable to register cu(DNN|FFT|BLAS) factory: Attempting to "
                            rb"register factory for plugin cu\w+ when one has already been "
                            rb"registered")


def import_tensorflow():
  """Imports TensorFlow without the three "Unable to register cuDNN/cuFFT/cuBLAS factory"
  lines above, so that a command's output starts with what the command says. Call before
  importing tfgmvae. Every other line written while TensorFlow loads (an import error, a
  GPU that cannot be used) still reaches stderr, in order: a child process forwards them
  from a pipe, so even an import that aborts this process shows what it said."""
  if "tensorflow" in sys.modules:
    return
  try:
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    stderr = os.dup(2)
    child = os.fork()
  except OSError:   # no pipe, stderr or fork: import it as it comes
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
    return
  if child == 0:   # the forwarder: until every write end is closed (or its writer died)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as lines:
      for line in lines:
        if not _STARTUP_NOISE.search(line):
          os.write(stderr, line)
    os._exit(0)  # pylint: disable=protected-access
  os.close(read_end)
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,import-outside-toplevel
  finally:
    sys.stderr.flush()
    os.dup2(stderr, 2)   # closes the pipe's last write end here: the forwarder ends
    os.close(stderr)
    os.waitpid(child, 0)


def exit_on_sigterm():
  """Makes SIGTERM end the process as SystemExit(143), so that what it was writing is
  cleaned up (a half-rendered corpus is removed) as on Ctrl-C, instead of left behind."""
  signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))


def run(main):
  """`app.run(main)`, except that a UsageError raised by `main` (a bad flag value) prints
  one line, `ERROR: <message>` and where to find the usage, instead of absl's whole
  usage text with the message at its end. Exits with the error's code (1).

  A note that cannot be read (the data pipeline's DataError, or its failed assertion
  inside TensorFlow) and a server that cannot be reached also end in one `ERROR:` line
  naming the file, exit code 1, as does a full disk or a file or folder that cannot be
  written (`storage_error`). Ctrl-C ends in `ERROR: interrupted.`, exit code 130."""
  from absl import app  # pylint: disable=g-import-not-at-top

  def checked(argv):
    try:
      _refuse_unexpanded_tilde(flags.FLAGS)
      return main(argv)
    except KeyboardInterrupt:   # whatever was half-written has been cleaned up by then
      print("ERROR: interrupted.", file=sys.stderr)
      return 130
    except app.UsageError as e:
      print(f"ERROR: {e} (usage: {os.path.basename(sys.argv[0])} --help)", file=sys.stderr)
      return e.exitcode
    except Exception as e:  # pylint: disable=broad-except
      message = _data_error(e) or storage_error(e)
      if message is None:
        raise
      print(f"ERROR: {message}", file=sys.stderr)
      return 1

  app.run(checked)


def _refuse_unexpanded_tilde(flag_values):
  """Raises UsageError for a flag given as `~/...` (or `~user/...`) that names nothing:
  the shell expands `~` only at the start of a word, so `--out_dir=~/x` (and a flagfile's
  line) reaches the script as is, and would create a folder literally named `~`."""
  from absl import app  # pylint: disable=g-import-not-at-top
  for name in flag_values:
    flag = flag_values[name]
    values = flag.value if isinstance(flag.value, list) else [flag.value]
    for value in values if flag.present else []:
      if isinstance(value, str) and value.startswith("~") and not os.path.exists(value):
        home = "$HOME" + value[1:] if value[1:2] in ("", "/") else "an absolute path"
        raise app.UsageError(f"--{name}={value}: '~' is not expanded after --flag= or in "
                             f"a flagfile; write {home} instead")


# What the operating system (or TensorFlow, quoting it) says when storage fails, and what
# to do about it.
_STORAGE = {"No space left on device": "the disk is full: free some space (or choose "
                                       "another folder) and run the command again",
            "Disk quota exceeded": "the disk quota is used up: free some space and run "
                                   "the command again",
            "Read-only file system": "that file system is mounted read-only: choose a "
                                     "writable folder",
            "Permission denied": "this user may not access it: change its permissions or "
                                 "choose another path",
            # (os.makedirs where a file is in the way, or a path through a file)
            "File exists": "a file is in the way of a folder to be made there: move it "
                           "away or choose another path",
            "Not a directory": "part of that path is a file where a folder is expected: "
                               "move it away or choose another path"}


def storage_error(error: BaseException) -> str | None:
  """One line for an error (or an error it was raised from) that a full disk, a read-only
  file system or missing permissions caused, naming the path where it is known; None for
  any other error."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = (error.strerror or "") if isinstance(error, OSError) else str(error)
    for said, advice in _STORAGE.items():
      if said in text:
        where = getattr(error, "filename", None)
        reason = text.strip() if isinstance(error, OSError) else said
        if not isinstance(error, OSError):   # TensorFlow's name the file before it
          line = next(l for l in text.splitlines() if said in l)
          line = re.sub(r"\{\{.*?\}\}", "", line)
          where = line[:line.index(said)].rstrip(" ;:,").strip()[-300:] or None
        return f"{where + ': ' if where else ''}{reason}; {advice}."
    error = error.__cause__ or error.__context__
  return None


def _data_error(error: Exception) -> str | None:
  """The message of a data error from the tfgmvae pipeline, else None."""
  if "tfgmvae.data.paths" in sys.modules:
    from tfgmvae.data import paths  # pylint: disable=g-import-not-at-top
    if isinstance(error, paths.UnreachableError):
      return str(error)
  if "tfgmvae.data.dataset" not in sys.modules:
    return None
  from tfgmvae.data import dataset, pipeline  # pylint: disable=g-import-not-at-top
  if isinstance(error, dataset.DataError):
    return str(error)
  return pipeline.data_error(error)


def quiet():
  """Logs warnings and errors only (TensorFlow's checkpoint chatter is INFO), unless the
  user passed --verbosity. Call at the start of main()."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
    pylogging.getLogger("tensorflow").setLevel(pylogging.WARNING)


def define_audio_flags():
  """Flags of the audio front end; unset flags keep the preset's value."""
  flags.DEFINE_enum("audio_preset", "paper", ["paper", "authors"],
                    "paper: the paper's front end (22,050 Hz, hop 256, 43 frames); "
                    "authors: the authors' released code (hop 512, 0.2 s offset, 21 "
                    "frames, eps floor).")
  flags.DEFINE_integer("sample_rate", None, "Resampling rate in Hz.")
  flags.DEFINE_integer("n_fft", None, "STFT window/FFT length in samples.")
  flags.DEFINE_integer("hop_length", None, "STFT hop in samples.")
  flags.DEFINE_integer("n_mels", None, "Number of mel bands.")
  flags.DEFINE_float("fmin", None, "Lowest mel frequency in Hz.")
  flags.DEFINE_float("fmax", None, "Highest mel frequency in Hz.")
  flags.DEFINE_float("offset", None, "Seconds skipped at the start of each note.")
  flags.DEFINE_float("duration", None, "Seconds analysed per note.")
  flags.DEFINE_integer("n_frames", None, "STFT frames kept per note.")
  flags.DEFINE_float("log_floor", None, "Floor added to the mel power before the log.")
  flags.DEFINE_float("silence_threshold", None,
                     "Peak amplitude under which a note's segment counts as silent.")


_AUDIO_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "fmin", "fmax", "offset",
                 "duration", "n_frames", "log_floor", "silence_threshold")


def audio_config(values):
  """AudioConfig from parsed flag values; a bad combination exits with a usage error."""
  from tfgmvae.audio.config import AudioConfig  # pylint: disable=g-import-not-at-top
  base = AudioConfig.authors() if values.audio_preset == "authors" else AudioConfig()
  changes = {k: getattr(values, k) for k in _AUDIO_FIELDS if getattr(values, k) is not None}
  fields = base.to_dict() | changes
  try:
    return AudioConfig(**fields)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from e


def define_evaluate_flags(flag_values=flags.FLAGS):
  """bin/evaluate's flags, into `flag_values` (bin/reproduce checks its --evaluate_arg
  values against them before the grid's first training)."""
  fv = flag_values
  flags.DEFINE_string("run_dir", None, "The trained run (a folder written by bin/train).",
                      flag_values=fv)
  flags.DEFINE_string("out_dir", None, "Where the report goes (must not exist).",
                      flag_values=fv)
  flags.DEFINE_string("checkpoint", "best", "'best' (best validation ELBO), 'latest', or "
                      "a checkpoint path prefix.", flag_values=fv)
  flags.DEFINE_string("cnn_dir", "", "Saved CNN baselines (default: OUT_DIR/../cnn).",
                      flag_values=fv)
  flags.DEFINE_list("representatives", [], "Instruments for timbre transfer (default: the "
                    "most frequent of each family: brass, keyboard, strings, woodwinds).",
                    flag_values=fv)
  flags.DEFINE_list("ws", ["0", "0.5", "1"], "Sampling spreads w of the synthesis test.",
                    flag_values=fv)
  flags.DEFINE_integer("draws", 30, "Draws per validation note and w.", flag_values=fv)
  flags.DEFINE_list("alphas", ["0", "0.25", "0.5", "0.75", "1"], "Transfer strengths.",
                    flag_values=fv)
  flags.DEFINE_float("shift", 2.0, "Centroid test: shift of a z_t dimension in sigma_t.",
                     flag_values=fv)
  flags.DEFINE_integer("cnn_epochs", 30, "CNN baseline: epochs at most.", flag_values=fv)
  flags.DEFINE_integer("cnn_patience", 30, "CNN baseline: early-stopping patience on the "
                       "held-out loss (at --cnn_epochs, the default, it trains them all "
                       "and keeps the best epoch).", flag_values=fv)
  flags.DEFINE_integer("tsne_max_notes", 2000, "Notes in the t-SNE map at most.",
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "Seed of probes, CNNs, draws and t-SNE.", flag_values=fv)
  flags.DEFINE_boolean("summaries", True, "Also write TensorBoard summaries into the run.",
                       flag_values=fv)


def eval_config(values):
  """EvalConfig (not yet validated) from the flags of `define_evaluate_flags`.

  Raises:
    EvaluationError: a list flag holds something other than numbers.
  """
  from tfgmvae.evaluate.evaluate import EvalConfig, EvaluationError  # pylint: disable=g-import-not-at-top

  def numbers(name):
    try:
      return tuple(float(v) for v in values[name].value)
    except ValueError as e:
      raise EvaluationError(f"--{name}={','.join(values[name].value)}: expected numbers "
                            "separated by commas") from e

  return EvalConfig(
      run_dir=values.run_dir, out_dir=values.out_dir, checkpoint=values.checkpoint,
      cnn_dir=values.cnn_dir, representatives=tuple(values.representatives),
      ws=numbers("ws"), draws=values.draws, alphas=numbers("alphas"), shift=values.shift,
      cnn_epochs=values.cnn_epochs, cnn_patience=values.cnn_patience,
      tsne_max_notes=values.tsne_max_notes, seed=values.seed, summaries=values.summaries)
