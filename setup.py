"""Long-context attention in JAX/Pallas: FlashAttention kernels, sparse and DSA attention, RoPE scaling."""

from setuptools import find_packages, setup

setup(
    name="longctx",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=find_packages(include=["attention", "attention.*", "models", "data", "eval", "configs", "benchmarks",
                                    "training"]),
    py_modules=["train", "export", "generate"],
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "absl-py>=2.0",
        "ml_collections>=1.0",
        "grain>=0.2.18",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "numpy>=2.0",
        # Hugging Face interop at run time: export (safetensors), tokenizer.json (tokenizers), Parquet corpora.
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "pyarrow>=14",
    ],
    extras_require={
        # torch (CPU) and transformers serve only the Hugging Face conformance tests.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch>=2.9", "transformers>=4.50"],
        "gpu": ["jax[cuda13]>=0.10"],
        "tpu": ["jax[tpu]>=0.10"],
    },
)
