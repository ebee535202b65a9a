"""Every shipped configs/*.flags parses with bin/train's own flags and passes its checks;
the paper configs carry the paper's settings (SPEC section 2)."""

import dataclasses
import glob
import json
import os
import subprocess
import sys

import pytest

from tfgmvae.audio.config import AudioConfig
from tfgmvae.data.prepare import PrepareConfig, prepare
from tfgmvae.train.config import TrainConfig

from conftest import REPO, write_nsynth, write_tinysol

CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.flags")))

def _parsed() -> dict:
  """Each flagfile parsed exactly as `bin/train --flagfile=...` does, in one process."""
  code = f"""
import dataclasses, importlib.machinery, importlib.util, json, sys
sys.path.insert(0, {os.path.join(REPO, 'bin')!r})
loader = importlib.machinery.SourceFileLoader("train_script", {os.path.join(REPO, 'bin', 'train')!r})
module = importlib.util.module_from_spec(importlib.util.spec_from_loader("train_script", loader))
loader.exec_module(module)
out = {{}}
for path in {CONFIGS!r}:
  module.FLAGS.unparse_flags()
  # Configs for bin/reproduce leave --run_dir to it: a placeholder the file may override.
  module.FLAGS(["train", "--run_dir=<none>", "--flagfile=" + path])
  out[path] = dataclasses.asdict(module.train_config(module.FLAGS))
print(json.dumps(out))
"""
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert done.returncode == 0, done.stderr[-3000:]
  found = json.loads(done.stdout.strip().splitlines()[-1])
  return {os.path.basename(p): TrainConfig(**(d | {"audio": AudioConfig.from_dict(d["audio"])}))
          for p, d in found.items()}


@pytest.fixture(scope="module")
def configs():
  return _parsed()


def test_the_shipped_configs_are_the_documented_ones(configs):
  assert set(configs) == {"paper_mgmvae.flags", "paper_mvae.flags", "quickstart.flags",
                          "small_mgmvae.flags", "small_mvae.flags",
                          "tinysol_mgmvae.flags", "nsynth_mgmvae.flags"}
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  for name in configs:
    assert f"configs/{name}" in readme, f"README does not mention configs/{name}"
  run_dirs = [c.run_dir for c in configs.values() if c.run_dir != "<none>"]
  assert len(run_dirs) == len(set(run_dirs)) == 5   # no two configs share a run


@pytest.mark.parametrize("name,dataset,model", [
    ("paper_mgmvae.flags", "rendered", "mgmvae"), ("paper_mvae.flags", "rendered", "mvae"),
    ("tinysol_mgmvae.flags", "tinysol", "mgmvae")])
def test_paper_configs_carry_the_papers_settings(configs, name, dataset, model):
  c = configs[name]
  assert (c.dataset, c.model) == (dataset, model)
  assert (c.learning_rate, c.batch_size, c.latent_dim, c.filters, c.hidden) == \
      (1e-4, 128, 16, 512, 512)
  assert (c.epochs, c.patience, c.label_fraction) == (10000, 1000, 1.0)
  assert c.pitch_classifier and c.precision == "float32" and c.timbre_adversary == 0.0
  assert c.bn_momentum == 0.9   # the authors' PyTorch BatchNorm (BENCHMARKS.md)
  assert c.audio == AudioConfig()   # SPEC section 1: [43, 256] Slaney log-mel


def test_nsynth_config_is_the_papers_network_with_fewer_epochs(configs):
  c, paper = configs["nsynth_mgmvae.flags"], configs["paper_mgmvae.flags"]
  assert (c.dataset, c.nsynth_instrument_field) == ("nsynth", "instrument_family_str")
  assert (c.epochs, c.patience) == (200, 20)
  same = ("model", "label_fraction", "batch_size", "learning_rate", "latent_dim",
          "filters", "hidden", "pitch_classifier", "bn_momentum", "precision", "audio",
          "seed", "cache")
  assert {k: getattr(c, k) for k in same} == {k: getattr(paper, k) for k in same}


def test_every_config_passes_bin_trains_checks_given_its_data(configs, toy_csv, tmp_path):
  prepared = str(tmp_path / "prepared")
  prepare(PrepareConfig("csv", toy_csv, prepared), log=lambda *_: None)
  nsynth = write_nsynth(str(tmp_path / "nsynth.tfrecord"))
  tinysol = tmp_path / "TinySOL"
  tinysol.mkdir()
  data = {"csv": toy_csv, "rendered": os.path.dirname(toy_csv), "tinysol": str(tinysol),
          "nsynth": nsynth}
  for name, c in configs.items():
    run_dir = str(tmp_path / "runs" / name)
    if c.prepared_dir:
      c = dataclasses.replace(c, prepared_dir=prepared, run_dir=run_dir)
    else:
      c = dataclasses.replace(c, data_path=data[c.dataset], run_dir=run_dir)
    c.validate()   # raises ConfigError naming every problem


@pytest.mark.parametrize("name", ["tinysol_mgmvae.flags", "nsynth_mgmvae.flags"])
def test_dataset_configs_train_as_the_readme_says(name, tmp_path):
  """The README's command for the config with the user's --data_path (here a toy copy of
  the source), at a tiny size and for one epoch."""
  if name.startswith("tinysol"):
    write_tinysol(tmp_path / "TinySOL")
    data_path, notes = str(tmp_path / "TinySOL"), 12
  else:
    data_path, notes = write_nsynth(str(tmp_path / "nsynth-train.tfrecord")), 20
  run_dir = str(tmp_path / "run")
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, "bin", "train"), f"--flagfile=configs/{name}",
       f"--data_path={data_path}", f"--run_dir={run_dir}", "--epochs=1", "--filters=8",
       "--hidden=16", "--latent_dim=4", "--batch_size=8", "--media_every=0",
       "--embeddings_every=0", "--verbose=0"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "Done: 1 epoch;" in done.stdout
  with open(os.path.join(run_dir, "data", "prepared.json"), encoding="utf-8") as f:
    prepared = json.load(f)
  assert prepared["source"]["dataset"] == name.split("_")[0]
  assert prepared["num_train"] + prepared["num_validation"] == notes
  flags = open(os.path.join(run_dir, "flags.txt"), encoding="utf-8").read().splitlines()
  assert f"--data_path={data_path}" in flags and "--learning_rate=0.0001" in flags
