"""STARCaster-JAX: identity- and view-aware autoregressive talking-portrait diffusion in JAX/Flax NNX."""
from setuptools import find_packages, setup

setup(
    name="starcaster_jax",
    version="0.1.0",
    description="JAX/Flax NNX reimplementation of STARCaster (arXiv 2512.13247)",
    python_requires=">=3.10",
    packages=find_packages(include=["starcaster_jax*", "configs*", "data_pipelines*", "launch*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "etils[epath]>=1.5",             # workdirs on local disk or gs:// (orbax uses it too)
        "grain>=0.2.18",
        "tensorflow-datasets>=4.9.10",
        "array-record>=0.8",
        "einops>=0.8",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "numpy>=1.26",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "dm-pix>=0.4",                   # PSNR / SSIM in evaluation/
    ],
    extras_require={
        # Test runner and linter (`make lint`); the parity oracles live in the `torch` extra.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6"],
        # PyTorch reference classes used as parity oracles and by the importers.
        # Install torch==2.13.0 first (the Makefile does) so no CUDA wheels are pulled.
        "torch": ["torch==2.13.0", "diffusers>=0.42", "transformers>=5", "onnx>=1.16"],
        # Audio/video IO, speech synthesis, face detection, ONNX identity encoders.
        "media": [
            "av>=14",
            "soundfile>=0.12",
            "espeakng-loader>=0.2.4",
            "librosa>=0.10",
            "opencv-python-headless>=4.9,<5",  # 4.x wheels ship the Haar cascades; 5.x do not.
            "onnxruntime>=1.18",
            "scipy>=1.11",
            "apache-beam==2.77.0",             # ingestion pipelines (data_pipelines/ingest/beam.py)
        ],
        # MediaPipe landmarks/detector (--landmarks, --detector mediapipe). Not in `make install`:
        # it pulls opencv-contrib-python 5.x, which shadows the 4.x cv2 whose Haar cascades we use.
        "landmarks": ["mediapipe>=1.0"],
        # Ahead-of-time compilation for Cloud TPU topologies on any machine (starcaster_jax/tpu_plan/);
        # matches jax 0.10.2. One libtpu process at a time unless ALLOW_MULTIPLE_LIBTPU_LOAD=1.
        "tpu": ["libtpu==0.0.51"],
    },
    entry_points={
        "console_scripts": [
            "starcaster-generate=launch.generate:run",
            "starcaster-train=launch.train:run",
            "starcaster-export=launch.export:run",
            "starcaster-serve=starcaster_jax.inference.serve:run",
        ],
    },
)
