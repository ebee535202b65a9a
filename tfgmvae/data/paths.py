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

_CORE_SCHEMES = ("gs", "file")


def is_url(path: str) -> bool:
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


def isfile(path: str) -> bool:
  if not is_url(path):
    return os.path.isfile(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ensure_filesystem(path)
  try:
    return tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)
  except tf.errors.OpError:
    return False


def isdir(path: str) -> bool:
  if not is_url(path):
    return os.path.isdir(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ensure_filesystem(path)
  try:
    return tf.io.gfile.isdir(path)
  except tf.errors.OpError:
    return False


def join(base: str, *parts: str) -> str:
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


def open_text(path: str):
  """A text file object for a CSV (BOM stripped, universal newlines as csv wants)."""
  if not is_url(path):
    return open(path, newline="", encoding="utf-8-sig")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ensure_filesystem(path)
  with tf.io.gfile.GFile(path, "rb") as f:
    return io.StringIO(f.read().decode("utf-8-sig"), newline="")
