"""dino-fast: DINO pretraining whose data pipeline is never the bottleneck."""
import importlib.util
import os
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

HERE = Path(__file__).resolve().parent

# numba compiles the parameter draw (pipelines/sampling/compiled_draw.py) that the DALI feed and
# the FFCV op share; the base install (reference executor) runs without it.
DALI_VERSION = "2.4.0"
EXTRAS = {
    # DALI is built per CUDA major version: pick the one matching the machine's driver/CUDA
    # (`nvidia-smi` prints "CUDA Version"). Both run the CPU pipelines the tests use.
    "dali": [f"nvidia-dali-cuda120=={DALI_VERSION}", "numba"],        # CUDA 12.x
    "dali-cuda13": [f"nvidia-dali-cuda130=={DALI_VERSION}", "numba"],  # CUDA 13.x (H100/H200 here)
    "ffcv": ["ffcv==1.0.2", "numba"],
    # webdataset: the tests write stock shards with the library itself
    "dev": ["pytest>=7", "pytest-timeout", "webdataset"],
    # Weights in and out of Hugging Face and timm files (dino_core/formats): safetensors
    # reads and writes them; transformers is what the tests check the exports against.
    # Installed with "cpu", the CPU torch pin holds (transformers does not pull a CUDA torch).
    "interop": ["transformers>=4.40", "safetensors>=0.4"],
    # The CPU wheel. A CUDA machine keeps its own torch build: install without this extra.
    # (An open torch requirement alone pulls the newest CUDA build, several GB, on a CPU box.)
    "cpu": ["torch==2.13.0"],
}
EXTRAS["all"] = sorted({r for k in ("dali", "ffcv") for r in EXTRAS[k]})


def build_kernels(target: Path) -> None:
    """Build the CUDA kernel library into ``target`` when nvcc is found; never fail the install.

    ``pipelines/kernels/build.py`` is loaded by path: it needs only the standard library, and
    torch may not be installed yet. Environment: ``DINO_BUILD_KERNELS=0`` skips the build;
    ``DINO_KERNEL_ARCHS="sm_90 sm_80"`` chooses the architectures (default: the visible GPU's,
    else sm_90). pip shows these messages only with ``-v`` (and not at all when setuptools'
    ``develop`` runs pip again inside); the loader's error names the build log instead.
    """
    if os.environ.get("DINO_BUILD_KERNELS", "1") == "0":
        print("dino-fast: CUDA kernels not built (DINO_BUILD_KERNELS=0)")
        return
    spec = importlib.util.spec_from_file_location("dino_kernels_build",
                                                  HERE / "pipelines" / "kernels" / "build.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    archs = os.environ.get("DINO_KERNEL_ARCHS", "").replace(",", " ").split() or None
    try:
        builder.find_nvcc()
        path = builder.build(archs, target / builder.LIBRARY_NAME)
    except builder.BuildError as exc:
        print(f"dino-fast: CUDA kernels not built: {exc}\nThe install goes on; the loss runs "
              "its torch path until `dino-build-kernels` builds them.")
        return
    except Exception as exc:  # noqa: BLE001 -- an install must not fail for optional kernels
        print(f"dino-fast: CUDA kernels not built ({type(exc).__name__}: {exc}); the install "
              "goes on")
        return
    print(f"dino-fast: built {path} (compiler output: {builder.log_path(path)})")


class BuildPyWithKernels(build_py):
    """``build_py``, then the kernel library: into the source tree for an editable install,
    into the build folder (hence the wheel) otherwise."""

    def run(self):
        super().run()
        root = HERE if getattr(self, "editable_mode", False) else Path(self.build_lib)
        build_kernels(root / "pipelines" / "kernels" / "lib")


class DevelopWithKernels(develop):
    """Legacy ``setup.py develop`` (setuptools < 64, which pip uses for ``-e`` without PEP 660)
    runs no ``build_py``: build the kernels into the source tree after it. Newer setuptools'
    ``develop`` calls pip, whose editable build runs ``build_py`` above."""

    def run(self):
        super().run()
        if hasattr(develop, "install_for_development") and not getattr(self, "uninstall", 0):
            build_kernels(HERE / "pipelines" / "kernels" / "lib")

setup(
    name="dino-fast",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pipelines*", "dino_core*", "benchmarks*"]),
    # Every file a run reads besides the code: the kernel sources (the loader checks a library
    # against their digest; the emulation build compiles them) and the config presets.
    package_data={pkg: ["**/*.cu", "**/*.cuh", "**/*.h", "**/*.cpp", "**/*.yaml"]
                  for pkg in ("dino_core", "pipelines")},
    cmdclass={"build_py": BuildPyWithKernels, "develop": DevelopWithKernels},
    install_requires=[
        "torch>=2.4",  # the CPU wheel comes with the "cpu" extra (see EXTRAS)
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
        "dino-vos=dino_core.cli.vos:main",
        "dino-retrieval=dino_core.cli.retrieval:main",
        "dino-copydetect=dino_core.cli.copydetect:main",
        "dino-export=dino_core.cli.export:main",
        "dino-convert=pipelines.convert.cli:main",
        "dino-bench=benchmarks.cli:main",
        "dino-build-kernels=pipelines.kernels.build:main",
    ]},
)
