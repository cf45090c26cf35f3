"""Which memory allocator a tandem process runs on: tcmalloc or jemalloc when installed, else
mimalloc from the `cmeel-mimalloc` wheel that tandem depends on (Linux x86_64/aarch64).

glibc's malloc serves a training step badly. Every tensor above its mmap threshold is mapped fresh
and zero-filled page by page on first touch, and the 1-2 MB activations and gradients of a step
fragment its heap, so a process holds about 1 GB more than its live set (docs/LOG.md, "Memory:
what the peak is made of"). tcmalloc and jemalloc keep freed memory in size classes for reuse.
PyTorch's CPU performance guide recommends either one; its own launcher
(`python -m torch.backends.xeon.run_cpu`) preloads them the same way.

An allocator has to be in place before the process starts, so the `tandem` command re-executes
itself once with the library in `LD_PRELOAD` (`reexec`). Code that imports tandem as a library
keeps the allocator its process started with; `preload_env` gives the environment to start a
child process with.

Choose with the environment variable `TANDEM_ALLOCATOR`:
- `auto` (default): tcmalloc if installed, else jemalloc, else mimalloc, else glibc's malloc;
- `tcmalloc`, `jemalloc` or `mimalloc`: that one, an error if it is not installed;
- `system`: the process's own malloc, no re-execution.

No PyPI wheel ships tcmalloc or jemalloc; `cmeel-mimalloc` ships `libmimalloc.so` (under
`site-packages/cmeel.prefix/lib`), so a fresh `pip install` gets a better allocator than glibc's
with no system package. mimalloc runs with `MIMALLOC_PURGE_DELAY=-1` (freed memory is kept for
reuse, as tcmalloc does; unless the variable is set). Install tcmalloc on Debian/Ubuntu with
`apt install libtcmalloc-minimal4`, or from conda with `conda install gperftools`. Measured on
this project's 2-core CPU with `python bench/grpo_vs_trl.py --quick --allocator NAME`: see the
README's benchmark section and docs/LOG.md.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

from tandem.errors import ConfigError

ENV_VAR = "TANDEM_ALLOCATOR"
CHOICES = ("auto", "tcmalloc", "jemalloc", "mimalloc", "system")
PREFERENCE = ("tcmalloc", "jemalloc", "mimalloc")  # the order `auto` tries
_REEXEC_MARK = "TANDEM_ALLOCATOR_PRELOADED"
# Library file names, most preferred first. tcmalloc's "minimal" build has no heap profiler.
_LIBS = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so"),
    "jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
    "mimalloc": ("libmimalloc.so", "libmimalloc.so.3", "libmimalloc.so.2"),
}
# Environment each library runs with (setdefault: a value the user set wins).
_ENV = {
    # tcmalloc prints a stack trace for every allocation over 1 GiB unless told otherwise
    "tcmalloc": {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)},
    # keep freed pages for reuse instead of returning them after 10 ms (docs/LOG.md)
    "mimalloc": {"MIMALLOC_PURGE_DELAY": "-1"},
}
_INSTALL = {
    "tcmalloc": "apt install libtcmalloc-minimal4",
    "jemalloc": "apt install libjemalloc2",
    "mimalloc": "pip install cmeel-mimalloc",
}


def _search_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib"]
    for key in ("purelib", "platlib"):  # the cmeel-mimalloc wheel's library
        dirs.append(Path(sysconfig.get_paths()[key]) / "cmeel.prefix" / "lib")
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(Path(os.environ["CONDA_PREFIX"]) / "lib")
    multiarch = sysconfig.get_config_var("MULTIARCH")
    for root in ("/usr/local/lib", "/usr/lib", "/lib"):
        if multiarch:
            dirs.append(Path(root) / multiarch)
        dirs.append(Path(root))
    dirs.append(Path("/usr/lib64"))
    return dirs


def find(name: str) -> str | None:
    """Path of the installed shared library of allocator `name` (tcmalloc, jemalloc), or None."""
    for d in _search_dirs():
        for lib in _LIBS[name]:
            if (d / lib).is_file():
                return str(d / lib)
    return None


def choice() -> str:
    """The allocator asked for by TANDEM_ALLOCATOR (default auto); a clear error if unknown."""
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ConfigError(
            f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not an allocator; allowed: {', '.join(CHOICES)}"
        )
    return value


def resolve(want: str | None = None) -> tuple[str, str | None]:
    """(allocator name, library path) for `want` (default: `choice()`): ("system", None) when
    glibc's malloc is asked for, or for auto when neither library is installed."""
    want = want or choice()
    if want == "system" or not sys.platform.startswith("linux"):
        return "system", None
    for name in PREFERENCE if want == "auto" else (want,):
        path = find(name)
        if path:
            return name, path
    if want != "auto":
        raise ConfigError(
            f"{ENV_VAR}={want}: no {' or '.join(_LIBS[want])} found in "
            f"{', '.join(str(d) for d in _search_dirs())}; install it "
            f"(e.g. {_INSTALL[want]})"
            f" or set {ENV_VAR}=auto or system"
        )
    return "system", None


def in_use() -> str:
    """The allocator this process runs on: tcmalloc, jemalloc, mimalloc (seen among its mapped
    libraries), or system."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    for name in PREFERENCE:
        if f"lib{name}" in maps:
            return name
    return "system"


def preload_env(want: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) that starts a process on allocator `want` (default:
    TANDEM_ALLOCATOR): its library first in LD_PRELOAD. Unchanged for system."""
    env = dict(os.environ if env is None else env)
    name, path = resolve(want)
    if path is None:
        return env
    env["LD_PRELOAD"] = ":".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    for k, v in _ENV.get(name, {}).items():
        env.setdefault(k, v)
    return env


def reexec() -> None:
    """Re-execute this process (same interpreter, same arguments) on the chosen allocator, once.
    Returns without doing anything when it is already in use, when the system malloc is chosen
    or when auto finds no library."""
    if os.environ.get(_REEXEC_MARK) or in_use() != "system":
        return
    name, _ = resolve()
    if name == "system":
        return
    env = preload_env(name)
    env[_REEXEC_MARK] = name
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
