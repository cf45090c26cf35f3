"""tandem.allocator: choosing, finding and preloading tcmalloc/jemalloc for the CLI."""

import subprocess
import sys

import pytest

from tandem import allocator
from tandem.errors import ConfigError

HAVE = {name: allocator.find(name) for name in ("tcmalloc", "jemalloc")}


def test_unknown_choice_names_the_variable_and_the_choices(monkeypatch) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, "mimalloc")
    with pytest.raises(ConfigError, match=r"TANDEM_ALLOCATOR='mimalloc'.*auto, tcmalloc"):
        allocator.choice()


def test_system_and_missing_libraries(monkeypatch, tmp_path) -> None:
    assert allocator.resolve("system") == ("system", None)
    env = {"LD_PRELOAD": "/x.so"}
    assert allocator.preload_env("system", env) == env
    monkeypatch.setattr(allocator, "_search_dirs", lambda: [tmp_path])
    assert allocator.resolve("auto") == ("system", None)  # auto falls back quietly
    with pytest.raises(ConfigError, match="libtcmalloc-minimal4"):
        allocator.resolve("tcmalloc")  # asked for by name: an error that says how to install
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
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


@pytest.mark.skipif(not (HAVE["tcmalloc"] or HAVE["jemalloc"]), reason="no tcmalloc/jemalloc")
def test_reexec_runs_on_the_found_allocator() -> None:
    """The process re-executes itself once, with the library preloaded, and runs on it."""
    want = "tcmalloc" if HAVE["tcmalloc"] else "jemalloc"
    assert _run(CODE, "auto") == want
    assert _run(CODE, want) == want
