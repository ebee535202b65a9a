"""Local paths and TensorFlow file-system URLs, handled alike by the data sources.

A source's `--data_path` (and the audio paths its CSV lists, relative to it) may be a
local path or a URL of a TensorFlow file system: `gs://` is built into TensorFlow, and
importing tensorflow-io registers `s3://`, `http://`, `https://`, `az://` and `hdfs://`,
which `ensure_filesystem` does on first use. HTTP has no folders, so over HTTP a source
is named by its CSV file, not by a folder.
"""

import io
import os
import posixpath
import re
import secrets
import shutil
import socket

_CORE_SCHEMES = ("gs", "file")

# What the message of a URL whose server could not be reached says (the data pipeline
# matches it, and then does not call the prepared data stale).
UNREACHABLE = "could not be reached"
# libcurl's and TensorFlow's words for a connection that did not happen.
_NO_CONNECTION = re.compile(r"Failed to connect|Couldn't connect|Could(?: not|n't) resolve"
                            r"|Connection refused|timed out|Timeout was reached", re.I)


def make_temp_dir(parent: str, prefix: str) -> str:
  """A new folder `parent/<prefix><host>-<pid>-<random>` to fill and then rename into
  place, made by `mkdir` itself so that it gets what any new folder there gets (the umask,
  a setgid parent's group, default ACLs); `tempfile.mkdtemp` would make it 0700, keeping
  other users (e.g. workers running as another user) out of the finished folder. The
  host and process name the writer, so `remove_abandoned_temp_dirs` can tell a folder
  whose writer was killed (kill -9 leaves it) from one still being filled."""
  for _ in range(100):
    folder = os.path.join(parent, f"{prefix}{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")
    try:
      os.mkdir(folder, 0o777)
      return folder
    except FileExistsError:
      continue
  raise FileExistsError(f"{parent}: no free folder name starting with {prefix!r}.")


_HOST = socket.gethostname().replace(os.sep, "_")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:   # (another user's process: alive)
    return True
  return True


def remove_abandoned_temp_dirs(parent: str, prefix: str, log=print) -> list[str]:
  """Deletes the folders `make_temp_dir(parent, prefix)` made for processes of this host
  that no longer run (killed before they could clean up); those of live processes and of
  other hosts (a shared disk) are left alone.

  Returns:
    The paths deleted.
  """
  pattern = re.compile(re.escape(prefix) + re.escape(_HOST) + r"-(\d+)-[0-9a-f]{8}")
  removed = []
  for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
    found = pattern.fullmatch(name)
    path = os.path.join(parent, name)
    if not found or not os.path.isdir(path) or os.path.islink(path) or \
        _alive(int(found.group(1))):
      continue
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(path):
      log(f"Could not remove {path}, left by a process that was killed while writing.")
    else:
      log(f"Removed {path}: unfinished, left by a process (pid {found.group(1)}) that was "
          "killed while writing.")
      removed.append(path)
  return removed


def folder_problem(path: str) -> str | None:
  """Why `path` cannot be (or be made) a folder this process writes into, or None: it is
  a file, or the nearest part of it that exists (a dangling link counts) is not a folder
  or is not writable."""
  if os.path.exists(path) and not os.path.isdir(path):
    return f"{path} exists and is not a folder"
  found = os.path.abspath(path)
  while not os.path.lexists(found):
    found = os.path.dirname(found)
  if not os.path.isdir(found):
    return f"{found} is not a folder"
  if not os.access(found, os.W_OK | os.X_OK):
    return f"{found} is not writable"
  return None


class UnreachableError(OSError):
  """A URL's server could not be reached; the message names the URL and what to do."""


def short_message(error) -> str:
  """A TensorFlow file-system error's message without the HTTP body it may carry."""
  return str(getattr(error, "message", error)).split(" with body", 1)[0].strip()


def unreachable(path: str, error) -> UnreachableError | None:
  """An UnreachableError for `path` if TensorFlow's `error` is a failed connection."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)) \
      or _NO_CONNECTION.search(short_message(error)):
    return UnreachableError(f"{path}: {UNREACHABLE} ({short_message(error)}); check the "
                            "network and that the server is up, then run the command "
                            "again.")
  return None


def is_url(path: str) -> bool:
  """Whether `path` names a URL (`scheme://...`) rather than a local path."""
  return "://" in path


def tilde_hint(path: str) -> str:
  """A hint for a path that starts with an unexpanded ~ and names nothing, else ''."""
  if path.startswith("~") and not os.path.exists(path):
    return " (the shell does not expand ~ after --flag=; write $HOME/ instead)"
  return ""


def ensure_filesystem(path: str) -> None:
  """Makes TensorFlow able to open `path`: imports tensorflow-io for the URL schemes it
  registers (TensorFlow itself knows only local files and gs://)."""
  if is_url(path) and path.split("://", 1)[0].lower() not in _CORE_SCHEMES:
    import tensorflow_io  # pylint: disable=g-import-not-at-top,unused-import


_RAISE = object()


def _gfile(path: str, query, otherwise=_RAISE):
  """`query(tf.io.gfile)` for a URL: a failed connection raises UnreachableError; any
  other TensorFlow file-system error returns `otherwise`, or is raised without it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ensure_filesystem(path)
  try:
    return query(tf.io.gfile)
  except tf.errors.OpError as e:
    error = unreachable(path, e)
    if error is not None:
      raise error from None
    if otherwise is _RAISE:
      raise
    return otherwise


def isfile(path: str) -> bool:
  """`os.path.isfile` for a local path; for a URL, through TensorFlow's file systems."""
  if not is_url(path):
    return os.path.isfile(path)
  return _gfile(path, lambda g: g.exists(path) and not g.isdir(path), False)


def exists(path: str) -> bool:
  """`os.path.exists` for a local path; for a URL, through TensorFlow's file systems."""
  if not is_url(path):
    return os.path.exists(path)
  return _gfile(path, lambda g: g.exists(path), False)


def isdir(path: str) -> bool:
  """`os.path.isdir` for a local path; for a URL, through TensorFlow's file systems."""
  if not is_url(path):
    return os.path.isdir(path)
  return _gfile(path, lambda g: g.isdir(path), False)


def glob(pattern: str) -> list[str]:
  """tf.io.gfile.glob, with a server that cannot be reached raised as UnreachableError."""
  return _gfile(pattern, lambda g: g.glob(pattern))


def read_bytes(path: str) -> bytes:
  """The bytes of a URL's file: UnreachableError for a failed connection, TensorFlow's
  OpError for anything else (NotFoundError for a file the server does not have)."""
  def read(gfile):
    with gfile.GFile(path, "rb") as f:
      return f.read()
  return _gfile(path, read)


def join(base: str, *parts: str) -> str:
  """`os.path.join`, or a '/' join below a URL."""
  return posixpath.join(base, *parts) if is_url(base) else os.path.join(base, *parts)


def folder_of(path: str) -> str:
  """The folder a file is in (absolute, for a local path)."""
  if is_url(path):
    return path.rsplit("/", 1)[0]
  return os.path.dirname(os.path.abspath(path))


def resolve(root: str, rel: str) -> str:
  """`rel` (a CSV's path entry) relative to `root`, normalised; absolute paths and URLs
  are kept as they are."""
  if is_url(rel) or os.path.isabs(rel):
    return rel
  if not is_url(root):
    return os.path.normpath(os.path.join(root, rel))
  scheme, rest = root.split("://", 1)
  host, _, folder = rest.partition("/")
  return f"{scheme}://{host}" + posixpath.normpath(posixpath.join("/" + folder, rel))


class EncodingError(ValueError):
  """A text file is not UTF-8; the message names the file, the line and the byte."""


def open_text(path: str):
  """A text file object for a CSV (BOM stripped, universal newlines as csv wants).

  Raises:
    EncodingError: the file is not UTF-8 (e.g. a spreadsheet's Windows-1252 export).
  """
  if is_url(path):
    data = read_bytes(path)
  else:
    with open(path, "rb") as f:
      data = f.read()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:   # (its offset counts from after a BOM)
    at = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
    line = data[:at].count(b"\n") + 1
    raise EncodingError(
        f"{path}: line {line} is not UTF-8 text (byte 0x{data[at]:02x} at offset {at}); "
        "expected a UTF-8 file (a spreadsheet's 'CSV UTF-8' export, or convert it, e.g. "
        "iconv -f windows-1252 -t utf-8).") from None
  return io.StringIO(text, newline="")
