"""dino-build-kernels: the library it builds, its errors, its command line."""
import ctypes
import shutil
import subprocess

import pytest

from pipelines.kernels import build, library
from tests.pipelines.kernels.emulation import emulation_library  # noqa: F401

LOSS_FUNCTIONS = ("dino_loss_plan", "dino_loss_forward", "dino_loss_backward",
                  "dino_loss_rescale", "dino_loss_error_string", "patch_ce_rows")


def test_library_exports_its_abi_version_archs_digest_and_kernels(built_library):
    lib, info = library.open_library(built_library)
    assert info.abi_version == build.ABI_VERSION
    assert info.archs == ("sm_90",)
    assert info.digest == build.sources_digest()
    assert info.cudart_version >= 12000  # the toolkit's CUDART_VERSION, e.g. 13000
    assert lib.dino_fast_kernels_driver_version() >= 0  # 0: no driver here
    for name in LOSS_FUNCTIONS:
        assert isinstance(getattr(lib, name), ctypes._CFuncPtr), name
    log = build.log_path(built_library)
    assert log.is_file() and log.read_text().rstrip().endswith("[exit status 0]")


def exported(path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if " T " in line}


@pytest.mark.skipif(shutil.which("nm") is None, reason="nm (binutils) lists the exports")
def test_emulation_exports_the_cuda_librarys_interface(built_library, emulation_library):
    """The same C functions (plus the emulation's test hooks), built with g++ alone."""
    hooks = {"dino_emulation_set_max_cluster", "dino_emulation_set_driver_version",
             "dino_emulation_set_optin_smem",
             "dino_emulation_round", "dino_emulation_widen", "dino_emulation_pool_threads"}
    assert exported(emulation_library) == exported(built_library) | hooks
    log = build.log_path(emulation_library)
    if log.is_file():  # a build of this session (not one given by $DINO_FAST_KERNELS_EMULATION)
        commands = [ln for ln in log.read_text().splitlines() if ln.startswith("$ ")]
        assert commands and all("nvcc" not in c.split()[1] for c in commands)


def test_library_exports_nothing_of_the_static_cuda_runtime(built_library):
    lib = ctypes.CDLL(str(built_library))
    with pytest.raises(AttributeError):
        lib.cudaMalloc  # linked in statically, kept private


def test_broken_source_fails_naming_the_full_log_and_keeps_the_old_library(tmp_path,
                                                                          nvcc_or_skip):
    broken = tmp_path / "broken.cu"
    lines = [f"int f{i}() {{ return undefined_{i}; }}" for i in range(30)]
    broken.write_text("\n".join(lines) + "\n")
    out = tmp_path / "lib" / build.LIBRARY_NAME
    out.parent.mkdir()
    out.write_bytes(b"previous library")
    with pytest.raises(build.BuildError) as err:
        build.build(["sm_90"], out, sources=(broken,))
    log = build.log_path(out)
    assert str(log) in str(err.value) and "undefined_0" in str(err.value)
    text = log.read_text()
    assert all(f"undefined_{i}" in text for i in range(30))  # every error, not a tail
    assert "[exit status" in text and str(broken) in text
    assert out.read_bytes() == b"previous library"
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, log.name])


def test_missing_source_is_named_with_where_it_is_listed(tmp_path):
    with pytest.raises(build.BuildError, match=r"nope\.cu does not exist .*SOURCES"):
        build.build(["sm_90"], tmp_path, sources=("dino_core/loss/csrc/nope.cu",))


@pytest.mark.parametrize("arch,expected", [("sm_90", "sm_90"), ("90", "sm_90"),
                                           ("9.0", "sm_90"), ("sm_90a", "sm_90a"),
                                           ("sm_100", "sm_100"), ("8.6", "sm_86")])
def test_architecture_spellings(arch, expected):
    assert build.parse_arch(arch) == expected


@pytest.mark.parametrize("arch", ["sm_9", "compute_90", "hopper", ""])
def test_bad_architecture_is_refused_with_examples(arch):
    with pytest.raises(build.BuildError, match="expected sm_<major><minor>, e.g. sm_90"):
        build.parse_arch(arch)


def test_output_is_a_so_path_or_a_folder_and_defaults_to_the_loader_path(tmp_path,
                                                                         monkeypatch):
    assert build.resolve_output(tmp_path / "x.so") == tmp_path / "x.so"
    assert build.resolve_output(tmp_path) == tmp_path / build.LIBRARY_NAME
    monkeypatch.delenv(build.ENV_LIBRARY, raising=False)
    assert build.resolve_output(None) == build.DEFAULT_OUT_DIR / build.LIBRARY_NAME
    monkeypatch.setenv(build.ENV_LIBRARY, str(tmp_path / "y.so"))
    assert build.resolve_output(None) == tmp_path / "y.so"


def test_digest_follows_the_sources_and_their_headers(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text("// kernel\n")
    header = tmp_path / "k.h"
    header.write_text("// v1\n")
    first = build.sources_digest((src,))
    header.write_text("// v2\n")
    assert build.sources_digest((src,)) != first


def test_help_teaches_architectures_output_and_run_time_lookup(capsys):
    with pytest.raises(SystemExit):
        build.main(["--help"])
    text = capsys.readouterr().out
    for needle in ("--arch", "sm_90", "H100", "A100", "--out", build.ENV_LIBRARY, "build.log",
                   "nvcc", "--emulate", build.ENV_SANITIZE, build.ENV_EMULATION):
        assert needle in text, needle


def test_cli_builds_the_emulation_with_the_sanitizer_asked_for(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(build, "build_emulation",
                        lambda out, sanitize: calls.append((out, sanitize)) or tmp_path / "e.so")
    monkeypatch.delenv(build.ENV_SANITIZE, raising=False)
    assert build.main(["--emulate"]) == 0 and calls[-1] == (None, None)
    assert build.ENV_EMULATION in capsys.readouterr().out
    monkeypatch.setenv(build.ENV_SANITIZE, "thread")
    assert build.main(["--emulate", "--out", "x.so"]) == 0 and calls[-1] == ("x.so", "thread")
    monkeypatch.setenv(build.ENV_SANITIZE, "memory")
    assert build.main(["--emulate"]) == 1
    assert "expected 'address' (ASan + UBSan) or 'thread'" in capsys.readouterr().err
    assert build.main(["--emulate", "--arch", "sm_90"]) == 2


def test_emulation_output_names(tmp_path):
    assert build.resolve_output(None, build.emulation_library_name()) == \
        build.DEFAULT_OUT_DIR / "libdino_fast_kernels_emulation.so"
    assert build.emulation_library_name("address") == "libdino_fast_kernels_emulation-address.so"
    assert build.resolve_output(tmp_path, build.emulation_library_name("thread")).name == \
        "libdino_fast_kernels_emulation-thread.so"


def test_cli_passes_archs_and_output_and_reports_failures(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_build(archs, out):
        calls.append((archs, out))
        if out.endswith("bad.so"):
            raise build.BuildError("building bad.so failed; see the log")
        return build.resolve_output(out)

    monkeypatch.setattr(build, "build", fake_build)
    assert build.main(["--arch", "sm_90", "sm_80", "--out", str(tmp_path / "ok.so")]) == 0
    assert calls[-1] == (["sm_90", "sm_80"], str(tmp_path / "ok.so"))
    out = capsys.readouterr().out
    assert "built" in out and "sm_80 sm_90" in out and f"{build.ENV_LIBRARY}=" in out
    assert build.main(["--out", str(tmp_path / "bad.so")]) == 1
    assert "failed; see the log" in capsys.readouterr().err
