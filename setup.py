"""signin_jax: sparse training from scratch with Sign-In (arXiv 2504.12801) in JAX/Flax."""
import setuptools

setuptools.setup(
    name="signin_jax",
    version="0.1.0",
    description="Sign-In reparameterization for sparse training from scratch, as an optax transform.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["signin_jax", "signin_jax.*"]),
    python_requires=">=3.10",
    # The core (signin_jax.signin, signin_jax.masks) needs only jax and optax.
    install_requires=["jax>=0.8", "optax>=0.2.4"],
    extras_require={
        "train": [
            "flax>=0.10",
            "orbax-checkpoint>=0.11",
            "etils[epath]",
            "tensorflow-cpu>=2.16",
            "tensorflow-datasets>=4.9.7",
            "importlib_resources",
            "ml_collections>=1.0",
            "clu>=0.0.12",
            "absl-py",
            "matplotlib",
            "tensorboard>=2.16",  # To view the event files (writing needs only TensorFlow).
        ],
        "test": ["pytest", "chex>=0.1.87"],
        # Sparse inference (signin_jax.sparse_inference): Flax, and numba for its own kernels.
        "inference": ["flax>=0.10", "numba>=0.60", "scipy"],
    },
)
