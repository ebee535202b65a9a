"""tfgmvae: disentangled pitch and timbre codes for isolated instrument notes.

Gaussian-mixture VAEs (Luo, Agres, Herremans, ISMIR 2019) in Keras/TensorFlow. The
sub-packages are:

* `tfgmvae.audio`: decoding, resampling, log-mel features and their inverse.
* `tfgmvae.data`: note sources (csv, TinySOL, NSynth, the rendered corpus), preparation
  (split, vocabularies, normalisation) and the tf.data pipeline.
* `tfgmvae.render`: the default corpus, rendered from General-MIDI soundfonts.
* `tfgmvae.model`: the encoders, decoder, TFP priors and objective (MGMVAE and MVAE).
* `tfgmvae.train`: `bin/train`'s loop: checkpoints, resuming, summaries, progress.
* `tfgmvae.serving`: export as a SavedModel for TF Serving, and its clients.
* `tfgmvae.evaluate`: the paper's measurements (`bin/evaluate`, `bin/reproduce`).
"""

__version__ = "0.1.0"
