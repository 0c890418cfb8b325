"""mitoseg.allocator: which allocator mitoseg-predict preloads, and the restart that does it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mitoseg import allocator
from mitoseg.allocator import ENV, MARK, AllocatorError, choose, find_tcmalloc, preload

PROBE = "from mitoseg import allocator; allocator.preload('probe'); print(allocator.describe())"


def fake_library(folder: Path, name: str = "libtcmalloc_minimal.so.4") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\x7fELF")
    return folder / name


def test_tcmalloc_is_found_in_the_first_folder_that_has_it(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    full = fake_library(second, "libtcmalloc.so.4")
    assert find_tcmalloc([first, second]) == full
    minimal = fake_library(first)
    assert find_tcmalloc([first, second]) == minimal
    assert find_tcmalloc([tmp_path / "none"]) is None


def test_choices(tmp_path: Path) -> None:
    library = fake_library(tmp_path / "lib")
    assert choose("system", [tmp_path / "lib"]) is None
    assert choose("auto", [tmp_path / "lib"]) == library
    assert choose("", [tmp_path / "lib"]) == library
    assert choose("auto", [tmp_path / "empty"]) is None  # glibc, said in the log
    assert choose(str(library), []) == library
    with pytest.raises(AllocatorError, match=r"tcmalloc: no .*empty.*libtcmalloc-minimal4"):
        choose("tcmalloc", [tmp_path / "empty"])
    with pytest.raises(AllocatorError, match=r"MITOSEG_MALLOC=/no/such\.so: not a file"):
        choose("/no/such.so", [])


def test_preload_restarts_once_with_the_library_first_in_ld_preload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library = fake_library(tmp_path / "lib")
    monkeypatch.setattr(allocator, "search_dirs", lambda: [tmp_path / "lib"])
    monkeypatch.setattr(allocator, "loaded", lambda: None)
    calls = []
    monkeypatch.setattr(os, "execve", lambda *args: calls.append(args))
    monkeypatch.setenv("LD_PRELOAD", "/opt/other.so")
    monkeypatch.delenv(MARK, raising=False)
    monkeypatch.delenv(ENV, raising=False)
    preload("mitoseg-predict")
    ((executable, argv, env),) = calls
    assert executable == sys.executable and argv == [sys.executable, *sys.orig_argv[1:]]
    assert env["LD_PRELOAD"] == f"{library} /opt/other.so" and env[MARK] == str(library)
    # the restarted process (MARK set) and MITOSEG_MALLOC=system do not restart
    monkeypatch.setenv(MARK, str(library))
    preload("mitoseg-predict")
    monkeypatch.delenv(MARK)
    monkeypatch.setenv(ENV, "system")
    preload("mitoseg-predict")
    assert len(calls) == 1


def test_a_bad_choice_ends_the_command_with_its_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(MARK, raising=False)
    monkeypatch.setenv(ENV, "/no/such/libtcmalloc.so")
    with pytest.raises(SystemExit) as stop:
        preload("mitoseg-predict")
    assert stop.value.code == 2
    assert "mitoseg-predict: error: MITOSEG_MALLOC=/no/such/libtcmalloc.so: not a file" in (
        capsys.readouterr().err
    )


def run_probe(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (ENV, MARK, "LD_PRELOAD")}
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True, check=True
    )


@pytest.mark.skipif(
    find_tcmalloc() is None, reason="no tcmalloc on this machine (.ci/run installs it)"
)
def test_a_real_restart_loads_tcmalloc() -> None:
    described = run_probe().stdout
    assert "tcmalloc" in described and "MITOSEG_MALLOC=auto" in described
    assert run_probe(**{ENV: "system"}).stdout.strip() == "glibc malloc (MITOSEG_MALLOC=system)"


def test_without_tcmalloc_the_log_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "loaded", lambda: None)
    monkeypatch.delenv(MARK, raising=False)
    monkeypatch.delenv(ENV, raising=False)
    assert "libtcmalloc-minimal4" in allocator.describe()
    monkeypatch.setenv(MARK, "/x/libtcmalloc_minimal.so.4")
    assert "was given to LD_PRELOAD but is not loaded" in allocator.describe()
