#!/usr/bin/env bash
# Size of a fresh virtual environment for each README install command; writes docs/results/install_sizes.json.
#   bash benchmarks/install_size.sh [OUT.json]
# main: `pip install -e .` (what train.py needs); test: the CPU torch build, then `pip install -e ".[test]"`.
# TORCH_SPEC picks the CPU torch: the PyTorch CPU index on a user's machine, the local wheel on CI.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/results/install_sizes.json}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

measure() {  # name, then the pip arguments of each install step separated by ";"
  local name=$1; shift
  python -m venv "$work/$name"
  local IFS=';'
  for step in $*; do
    IFS=' ' read -r -a args <<< "$step"
    "$work/$name/bin/python" -m pip install -q "${args[@]}"
  done
  local kib torch
  kib=$(du -sk "$work/$name" | cut -f1)
  torch=$("$work/$name/bin/python" -c 'import importlib.util as u; print(u.find_spec("torch") is not None)')
  echo "\"$name\": {\"MiB\": $((kib / 1024)), \"torch_installed\": ${torch,,}}"
}

main=$(measure main "-e .")
# What the main job imports (train.py and everything it reaches) in the environment without torch.
"$work/main/bin/python" -c 'import sys, train, eval.evaluate
hf = {"torch", "transformers", "safetensors"} & {m.split(".")[0] for m in sys.modules}
assert not hf, f"the main job imports {hf}"'
main="$main, \"main_job_imports_torch\": false"
test=$(measure test "$torch_spec;-e .[test]")
printf '{%s, %s, "torch_spec": "%s"}\n' "$main" "$test" "$torch_spec" > "$out"
cat "$out"
