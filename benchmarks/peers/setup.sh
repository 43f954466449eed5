#!/usr/bin/env bash
# Creates benchmarks/peers/.venv with the PyTorch peers: torch 2.13 (CPU build), LibMTL 1.1.5
# torchjd 0.18, and Hugging Face transformers 5 (BertModel for the fine-tuning benchmark, with
# its real deps: tokenizers, safetensors, huggingface_hub, regex). Idempotent: an existing venv whose imports work is left alone.
#
# Which Python: torch's CPU wheel is what we want (the PyPI wheel for Linux is the CUDA build
# and drags in ~3 GB of nvidia-* packages). This machine's pip config has a local find-links
# directory holding torch-2.13.0+cpu for CPython 3.11 only, so when that wheel is there we
# use python3.11; otherwise python3.12 with whatever torch 2.13 the registry serves (CUDA
# build; it runs on CPU all the same). Override with PEERS_PYTHON=/path/to/python.
#
# LibMTL 1.1.5 is installed with --no-deps: its metadata pins an old torch/torchvision, and
# we only import LibMTL.weighting (its top-level import pulls in torchvision model code that
# breaks on current torchvision), which needs torch and numpy alone.
set -euo pipefail
cd "$(dirname "$0")/../.."  # repository root: pyenv resolves python3.1x from .python-version
VENV=benchmarks/peers/.venv

check() {
  "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import sys
sys.path.insert(0, "benchmarks/peers")
import torch, torchjd, numpy, scipy, cvxpy, ecos, qpsolvers  # noqa: F401
from transformers import BertConfig, BertModel  # noqa: F401
from libmtl_import import libmtl_weighting
libmtl_weighting()  # the submodule alone; see above
print("torch", torch.__version__, "torchjd", md.version("torchjd"), "LibMTL", md.version("LibMTL"),
      "transformers", md.version("transformers"), "numpy", numpy.__version__)
PY
}

if [[ -x "$VENV/bin/python" ]] && check 2>/dev/null; then
  exit 0
fi

cpu_wheel=""
for dir in $(python3 -m pip config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p"); do
  for wheel in "$dir"/torch-2.13.*+cpu-cp311-*.whl; do
    [[ -f "$wheel" ]] && cpu_wheel="$wheel"
  done
done

if [[ -n "${PEERS_PYTHON:-}" ]]; then
  python="$PEERS_PYTHON"
elif [[ -n "$cpu_wheel" ]]; then
  python="$(command -v python3.11)"
else
  python="$(command -v python3.12)"
fi
echo "peers venv: $python ($("$python" --version)); torch wheel: ${cpu_wheel:-registry torch==2.13.*}"
rm -rf "$VENV"
"$python" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if [[ -n "$cpu_wheel" && "$("$python" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" == True ]]; then
  "${pip[@]}" "$cpu_wheel"
else
  "${pip[@]}" "torch==2.13.*"
fi
# Extras: UPGrad's dual-cone projector (quadprog), CAGrad (cvxpy), Nash-MTL (ecos), FairGrad
# (scipy; also LibMTL's CAGrad).
"${pip[@]}" "torchjd[quadprog-projector,cagrad,nash-mtl,fairgrad]==0.18.*" "numpy<3" scipy
"${pip[@]}" --no-deps "LibMTL==1.1.5"
# transformers (torch backend only; no accelerate/datasets): wt-bert's PyTorch side of the BERT
# fine-tuning benchmark builds transformers.BertModel here.
"${pip[@]}" "transformers==5.*" tokenizers safetensors huggingface_hub regex
check
