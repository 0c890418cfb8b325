#!/usr/bin/env bash
# The GPU check (issue 22.4) in one command, under 10 minutes: GPU tests, a short lucchipp_best
# training, a timed mitoseg-predict of a 1 Gvox synthetic volume (bf16, torch.compile off / on),
# one table (benchmarks/gpu_check.py; also in OUT/gpu_check.md). Without a GPU every part runs
# for a few steps / a tiny volume and the table says that no GPU was available.
#
#   benchmarks/gpu_check.sh /path/to/lucchi_pp [--out DIR] [--tiny] [--dry-run]
#
# Python: $PYTHON, else .venv/bin/python, else python3. On a machine where mitoseg is not
# installed (the lent GPU machine), it runs from src/: wheels in .whl/ (hydra-core, omegaconf,
# monai, zarr, ...) are installed into /tmp/mitoseg-site first, and the console scripts the GPU
# tests call are written beside that Python.
#
# Here, before lending it a GPU machine: the wheels it lacks (benchmarks/gpu_wheels.txt) into
# .whl/, and a Lucchi++ crop small enough to carry (about 27 MB), then run it there with
# carry [".whl", ".bench/lucchi_crop"]:
#   benchmarks/gpu_check.sh --fetch-wheels
#   benchmarks/gpu_check.sh /path/to/lucchi_pp --crop-lucchi .bench/lucchi_crop
#   (there) benchmarks/gpu_check.sh .bench/lucchi_crop --out /tmp/gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [[ ${1:-} == --fetch-wheels ]]; then
    mkdir -p .whl
    platforms=()
    for n in 17 27 28 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
    grep -v -e '^#' -e '^antlr4' benchmarks/gpu_wheels.txt | xargs "$PY" -m pip download -q \
        --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl
    "$PY" -m pip wheel -q --no-deps -w .whl "$(grep '^antlr4' benchmarks/gpu_wheels.txt)"
    du -sh .whl
    exit 0
fi
if ! "$PY" -c "import mitoseg" 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/mitoseg-site .whl/*.whl
        export PYTHONPATH=/tmp/mitoseg-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    bin=$("$PY" -c "import sys, pathlib; print(pathlib.Path(sys.executable).parent)")
    for pair in train:train predict:predict segment:segment evaluate:evaluate convert:convert; do
        name=mitoseg-${pair%%:*}
        if [[ ! -e $bin/$name && -w $bin ]]; then
            printf '#!%s\nimport sys\nfrom mitoseg.cli.%s import main\nsys.argv[0] = "%s"\nmain()\n' \
                "$("$PY" -c 'import sys; print(sys.executable)')" "${pair#*:}" "$name" >"$bin/$name"
            chmod +x "$bin/$name"
        fi
    done
fi
exec "$PY" benchmarks/gpu_check.py "$@"
