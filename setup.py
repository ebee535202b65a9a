"""tfgmvae: disentangled pitch and timbre codes for instrument notes (GM-VAEs in TensorFlow)."""

import setuptools

# Versions are pinned to a set seen working together on Python 3.11 (BUILD.md says why each).
# tensorflow-io 0.37.1 is its last release and its ops load only with TensorFlow 2.16.x.
INSTALL_REQUIRES = [
    "tensorflow==2.16.2",
    "tensorflow-probability==0.24.0",
    "tf-keras==2.16.0",
    "keras==3.4.1",
    "tensorflow-io==0.37.1",
    "tensorflow-io-gcs-filesystem==0.37.1",
    "tensorboard==2.16.2",
    # tensorboard 2.16 imports pkg_resources, which setuptools 82 and later no longer ship.
    "setuptools==80.9.0",
    "numpy==1.26.4",
    "scipy==1.14.1",
    "librosa==0.10.2.post1",
    "scikit-learn==1.9.1",
    "numba==0.60.0",
    "soundfile==0.12.1",
    "absl-py==2.1.0",
]

EXTRAS_REQUIRE = {
    # Rendering the default corpus: needs Debian's libfluidsynth3 and soundfonts as well.
    "render": ["pyfluidsynth==1.3.4"],
    # gRPC clients of TF Serving (export/requests/grpc_client.py).
    "serving": ["tensorflow-serving-api==2.16.1"],
    # bin/evaluate and bin/reproduce: the figures.
    "eval": ["matplotlib==3.9.2"],
    "test": ["pytest==9.0.3", "pytest-xdist==3.6.1", "execnet==2.1.2",
             "pyfluidsynth==1.3.4", "tensorflow-serving-api==2.16.1", "matplotlib==3.9.2"],
}

setuptools.setup(
    name="tfgmvae",
    version="0.1.0",
    description=(
        "Gaussian-mixture VAEs that learn separate pitch and timbre codes for isolated "
        "instrument notes (Luo, Agres, Herremans, ISMIR 2019), in Keras/TensorFlow."
    ),
    packages=setuptools.find_packages(include=["tfgmvae", "tfgmvae.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    scripts=[],
)
