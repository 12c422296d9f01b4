"""Installs linalign. Pinned versions live in requirements.txt (see BUILD_NOTES.md)."""

import setuptools

setuptools.setup(
    name="linalign",
    version="0.1.0",
    description="Linear alignment between independently trained language models, "
    "and HELIX privacy-preserving inference built on it.",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["linalign", "linalign.*"]),
    install_requires=[
        "numpy>=1.26,<2",
        "jax>=0.7.1",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "absl-py",
        "safetensors",
        "tokenizers",
        "gguf",
        "scikit-learn",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        # Reference implementation for parity tests and benchmarks.
        "reference": ["torch", "transformers", "accelerate"],
        # Homomorphic encryption. concrete-ml itself must be installed with --no-deps
        # (see requirements-fhe-nodeps.txt and BUILD_NOTES.md).
        "fhe": ["tenseal", "seal-python", "concrete-python", "concrete-ml-extensions"],
        "dev": ["pytest"],
    },
)
