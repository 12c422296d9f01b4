"""Installs linalign.

Core (`pip install .`, which also installs the `linalign` command): loading safetensors/GGUF checkpoints, extraction, fitting, metrics,
experiments and generation, on any Python >= 3.11 with current jax/flax/numpy releases.
Extras: `reference` (torch + accelerate, the numerical reference for parity tests and benchmarks),
`fhe` (the homomorphic-encryption libraries HELIX uses; their pins, numpy < 2 among them, live
only there), `dev` (pytest). The pinned, tested FHE environment is requirements.txt +
requirements.lock on Python 3.11 (see BUILD_NOTES.md).
"""

import setuptools

setuptools.setup(
    name="linalign",
    version="0.1.0",
    description="Linear alignment between independently trained language models, "
    "and HELIX privacy-preserving inference built on it.",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["linalign", "linalign.*"]),
    # `linalign <command>`: extract, fit, experiments, helix, assets, distributed, plan.
    entry_points={"console_scripts": ["linalign = linalign.cli:console_main"]},
    install_requires=[
        "numpy>=1.26",
        "scipy",
        "jax>=0.7.1",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "etils",  # epath: object-store paths (linalign.atomic, linalign.distributed)
        "absl-py",
        "safetensors",
        "tokenizers",
        # GGUF checkpoints: gguf dequantizes the tensors; transformers converts the tokenizer
        # stored in the GGUF (linalign.checkpoints.gguf); jinja2 renders chat templates.
        "gguf",
        "transformers>=5",
        "jinja2",
        "scikit-learn",
        "matplotlib",
        "tqdm",
    ],
    extras_require={
        # Reference implementation for parity tests and benchmarks (transformers is core).
        # On Linux the default torch wheel is a CUDA build; for CPU machines use
        # `pip install torch --index-url https://download.pytorch.org/whl/cpu` (BUILD_NOTES.md).
        "reference": ["torch", "accelerate"],
        # Homomorphic encryption (HELIX). These pins are why the tested FHE set is numpy 1.26 /
        # jax 0.7.1 / Python 3.11: concrete-python 2.10 requires numpy < 2. concrete-ml itself
        # must be installed with --no-deps (requirements-fhe-nodeps.txt, BUILD_NOTES.md).
        "fhe": [
            "numpy>=1.26,<2",
            "tenseal==0.3.18",
            "seal-python==4.4.0",
            "concrete-python==2.10.0",
            "concrete-ml-extensions==0.1.9",
        ],
        "dev": ["pytest"],
    },
)
