#!/usr/bin/env bash
# The wheels of every HALP dependency that a GPU machine with PyTorch lacks, for an offline install there.
#
#   deploy/gpu-check/wheelhouse.sh PYTHON_VERSION OUT_DIR      e.g.  3.12 gpu-wheels
#
# Resolves the project's requirements (and the test ones) for that Python on manylinux x86_64, drops
# what such a machine already has (torch and its CUDA libraries, torchvision, numpy, scipy, onnx,
# onnxruntime, httpx, pytest; see deploy/gpu-check/README.md), downloads the rest as wheels into
# OUT_DIR, and fails if OUT_DIR is over HALP_WHEELHOUSE_LIMIT_MB (48 by default: what one carry takes).
#   deploy/gpu-check/wheelhouse.sh --check OUT_DIR              only the size check of a built one
set -euo pipefail
usage="usage: wheelhouse.sh PYTHON_VERSION OUT_DIR (e.g. 3.12 gpu-wheels) | wheelhouse.sh --check OUT_DIR"
py=${1:?$usage}
out=${2:?$usage}
limit_mb=${HALP_WHEELHOUSE_LIMIT_MB:-48}

check_size() {
    local size_kb
    size_kb=$(du -sk "$out" | cut -f1)
    echo "wheelhouse $out: $(find "$out" -name '*.whl' | wc -l) wheels, $((size_kb / 1024)) MiB (limit $limit_mb MiB)"
    if (( size_kb > limit_mb * 1024 )); then
        echo "error: $out is over $limit_mb MiB; it would not fit one carry to the GPU machine" >&2
        exit 1
    fi
}
if [[ $py == --check ]]; then
    check_size
    exit 0
fi
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pip=(python3 -m pip --disable-pip-version-check)
platform=(--only-binary=:all: --implementation cp --python-version "$py"
          --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The project's requirements and the test ones, minus what the machine has. Packages that depend on
# torch (torch-pruning) are taken without their dependencies: resolving them would fetch torch itself.
python3 - "$root/pyproject.toml" "$here/present.txt" "$work" <<'PY'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
present = re.compile("|".join(f"(?:{p})" for p in open(sys.argv[2]).read().split()), re.IGNORECASE)
needs_torch = {"torch-pruning"}
name = lambda r: re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0]
# not used by the check: the linter; the browser tests (no Chromium there: they skip) and the page's
# plot script (the page says it is missing), which would take a quarter of the carry
unused = {"ruff", "selenium", "plotly"}
reqs = [r for r in project["dependencies"] + project["optional-dependencies"]["dev"] if name(r) not in unused]
open(f"{sys.argv[3]}/resolve.txt", "w").write("\n".join(r for r in reqs if not present.fullmatch(name(r))
                                                         and name(r) not in needs_torch))
open(f"{sys.argv[3]}/nodeps.txt", "w").write("\n".join(r for r in reqs if name(r) in needs_torch))
open(f"{sys.argv[3]}/present.re", "w").write(present.pattern)
PY
"${pip[@]}" install --quiet --dry-run --ignore-installed --target "$work/t" "${platform[@]}" \
    --report "$work/report.json" -r "$work/resolve.txt"
python3 - "$work" > "$work/wanted.txt" <<'PY'
import json, re, sys
present = re.compile(open(f"{sys.argv[1]}/present.re").read(), re.IGNORECASE)
for item in json.load(open(f"{sys.argv[1]}/report.json"))["install"]:
    meta = item["metadata"]
    if not present.fullmatch(meta["name"]):
        print(f"{meta['name']}=={meta['version']}")
PY
mkdir -p "$out"
"${pip[@]}" download --quiet --no-deps "${platform[@]}" -d "$out" -r "$work/wanted.txt" -r "$work/nodeps.txt"
check_size
