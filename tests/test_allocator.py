"""tandem.allocator: choosing, finding and preloading tcmalloc/jemalloc/mimalloc for the CLI."""

import subprocess
import sys

import pytest

from tandem import allocator
from tandem.errors import ConfigError

HAVE = {name: allocator.find(name) for name in allocator.PREFERENCE}


def test_unknown_choice_names_the_variable_and_the_choices(monkeypatch) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, "hoard")
    with pytest.raises(
        ConfigError, match=r"TANDEM_ALLOCATOR='hoard'.*auto, tcmalloc, jemalloc, mimalloc"
    ):
        allocator.choice()


def test_system_and_missing_libraries(monkeypatch, tmp_path) -> None:
    assert allocator.resolve("system") == ("system", None)
    env = {"LD_PRELOAD": "/x.so"}
    assert allocator.preload_env("system", env) == env
    monkeypatch.setattr(allocator, "_search_dirs", lambda: [tmp_path])
    assert allocator.resolve("auto") == ("system", None)  # auto falls back quietly
    with pytest.raises(ConfigError, match="libtcmalloc-minimal4"):
        allocator.resolve("tcmalloc")  # asked for by name: an error that says how to install
    (tmp_path / "libmimalloc.so").write_bytes(b"")
    assert allocator.resolve("auto") == ("mimalloc", str(tmp_path / "libmimalloc.so"))
    env = allocator.preload_env("auto", {})
    assert env["MIMALLOC_PURGE_DELAY"] == "-1"
    assert (
        allocator.preload_env("auto", {"MIMALLOC_PURGE_DELAY": "5"})["MIMALLOC_PURGE_DELAY"] == "5"
    )
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")  # preferred over mimalloc
    assert allocator.resolve("auto") == ("jemalloc", str(tmp_path / "libjemalloc.so.2"))
    env = allocator.preload_env("auto", {"LD_PRELOAD": "/x.so"})
    assert env["LD_PRELOAD"] == f"{tmp_path / 'libjemalloc.so.2'}:/x.so"


def _run(code: str, choice: str) -> str:
    env = {**allocator.os.environ, allocator.ENV_VAR: choice}
    env.pop("LD_PRELOAD", None)
    env.pop("TANDEM_ALLOCATOR_PRELOADED", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


CODE = "from tandem import allocator; allocator.reexec(); print(allocator.in_use())"


def test_reexec_system_stays() -> None:
    assert _run(CODE, "system") == "system"


def test_the_mimalloc_wheel_is_found() -> None:
    """cmeel-mimalloc is a dependency on Linux x86_64/aarch64: a fresh install has mimalloc."""
    if not (
        sys.platform.startswith("linux") and allocator.os.uname().machine in ("x86_64", "aarch64")
    ):
        pytest.skip("cmeel-mimalloc is only a dependency on Linux x86_64/aarch64")
    assert HAVE["mimalloc"] and "cmeel.prefix" in HAVE["mimalloc"]
    assert _run(CODE, "mimalloc") == "mimalloc"


def test_reexec_runs_on_the_found_allocator() -> None:
    """The process re-executes itself once, with the library preloaded, and runs on it."""
    found = [name for name in allocator.PREFERENCE if HAVE[name]]
    if not found:
        pytest.skip("no tcmalloc, jemalloc or mimalloc on this machine")
    want = found[0]
    assert _run(CODE, "auto") == want
    assert _run(CODE, want) == want
