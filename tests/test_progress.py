"""What training prints in the terminal: the progress bar and the epoch line."""

import io

import pytest

from tfgmvae.train import progress

LOGS = {"loss": 412.53, "elbo": -409.21, "kl_pitch": 3.0}


@pytest.mark.parametrize("width", [200, 100, 79, 50, 30, 12])
def test_the_bar_fits_the_width_and_counts_the_steps(width):
  for step in (1, 11, 22):
    line = progress.bar_line(3, 100, step, 22, 6.4 if step < 22 else None, LOGS, width)
    assert len(line) <= width, line
    assert line.startswith("Epoch 3/100"[:width])
    if width >= 79:   # room for everything: bar, count, ETA, the two figures
      assert f" {step}/22" in line and line.endswith("loss 412.5, ELBO -409.2")
      assert ("ETA 6 s" in line) == (step < 22)
      bar = line[line.index("[") + 1:line.index("]")]
      size = 30 if width >= 100 else len(bar)      # 79 columns: the bar gave way
      assert len(bar) == size >= 20 and bar.count("=") == size * step // 22
  assert "kl_pitch" not in progress.bar_line(1, 1, 1, 1, None, LOGS, 200)


def test_the_eta_reads_as_time():
  line = progress.bar_line(1, 1, 1, 100, 3725.0, {}, 200)
  assert "ETA 1:02:05" in line


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_the_bar_draws_on_a_terminal_and_clears_itself():
  out = _Terminal()
  bar = progress.ProgressBar(epochs=2, steps=3, stream=out, width=60, interval=0.0)
  assert bar.enabled
  bar.on_epoch_begin(0)
  for step in range(3):
    bar.on_train_batch_end(step, {"loss": 10.0 - step, "elbo": -9.0})
  bar.on_epoch_end(0)
  drawn = out.getvalue().split("\r")
  assert drawn[0] == "" and drawn[-1] == "\x1b[K"            # ends on a cleared row
  rows = [r.removesuffix("\x1b[K") for r in drawn[1:-1]]
  assert [r.split("] ")[1].split(",")[0] for r in rows] == ["1/3 ETA 0 s", "2/3 ETA 0 s",
                                                            "3/3"]
  assert all(len(r) <= 60 and "\n" not in r for r in rows)
  assert rows[-1].endswith("loss 8.0, ELBO -9.0")


def test_no_bar_where_the_output_is_not_a_terminal():
  out = io.StringIO()
  bar = progress.ProgressBar(epochs=1, steps=2, stream=out, interval=0.0)
  bar.on_epoch_begin(0)
  bar.on_train_batch_end(0, LOGS)
  bar.on_epoch_end(0)
  assert not bar.enabled and out.getvalue() == ""


def test_the_epoch_line_shows_the_figures_to_watch():
  lines = []
  line = progress.EpochLine(epochs=5, log=lines.append)
  line.on_epoch_begin(1)
  line.on_epoch_end(1, {"loss": 12.34, "elbo": -12.0, "val_elbo": -13.5,
                        "val_instrument_accuracy": 0.5, "kl_pitch": 1.0})
  assert lines[0].startswith("Epoch 2/5 (") and lines[0].endswith(
      "s): loss 12.3, ELBO -12.0, validation ELBO -13.5, instrument acc. 0.500")
