"""dino-fast: DINO pretraining whose data pipeline is never the bottleneck."""
from pathlib import Path

from setuptools import find_packages, setup

# numba compiles the parameter draw (pipelines/sampling/compiled_draw.py) that the DALI feed and
# the FFCV op share; the base install (reference executor) runs without it.
EXTRAS = {
    "dali": ["nvidia-dali-cuda120==2.4.0", "numba"],
    "ffcv": ["ffcv==1.0.2", "numba"],
    "dev": ["pytest>=7", "pytest-timeout"],
}
EXTRAS["all"] = sorted({r for k in ("dali", "ffcv") for r in EXTRAS[k]})

setup(
    name="dino-fast",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines*", "dino_core*", "benchmarks*"]),
    package_data={"dino_core": ["loss/csrc/*.cu", "loss/csrc/*.cpp", "loss/csrc/*.h"],
                  "pipelines": ["configs/*.yaml", "photometric/csrc/*.cu",
                                "photometric/csrc/*.cuh", "photometric/csrc/*.h",
                                "photometric/csrc/*.cpp"]},
    install_requires=[
        # Pinned: an open range pulls the newest CUDA build (several GB) on a CPU machine.
        # On a GPU machine with its own CUDA torch, install with --no-deps.
        "torch==2.13.0",
        "numpy",
        "pillow",
        "pyyaml",
        "psutil",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "scikit-image",   # ships the photos of the embedded default dataset
        "scikit-learn",   # ships two more photos (load_sample_images)
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": [
        "dino-train=dino_core.cli.train:main",
        "dino-knn=dino_core.cli.knn:main",
        "dino-linear=dino_core.cli.linear:main",
        "dino-attn=dino_core.cli.attn:main",
        "dino-export=dino_core.cli.export:main",
        "dino-convert=pipelines.convert.cli:main",
        "dino-bench=benchmarks.cli:main",
    ]},
)
