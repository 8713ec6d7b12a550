#!/usr/bin/env bash
# Builds the peer's environment for bench/vs_open_clip.py, outside the project's.
#
#   bash bench/make_open_clip_venv.sh [VENV_DIR]     (default: .venv-open-clip)
#
# torch comes first, pinned, so pip takes the local CPU build from its configured
# find-links. open-clip-torch is then installed with torchvision pinned in the same
# command, otherwise pip would replace torch with a CUDA build to satisfy it. That
# torchvision wheel is CUDA-only and fails to import next to CPU torch; the bench
# loads bench/torchvision_shim.py first, which lets open_clip import (torchvision's
# compiled ops stay unusable; open_clip's training path does not use them).
set -euo pipefail
VENV="${1:-.venv-open-clip}"
PYTHON="${PYTHON:-python3.11}"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==2.13.0"
"$VENV/bin/pip" install --quiet "open-clip-torch==3.3.0" "torchvision==0.28.0" "torch==2.13.0"
"$VENV/bin/python" -c "import torch; assert '+cpu' in torch.__version__ or not torch.cuda.is_available(), torch.__version__; print('torch', torch.__version__)"
echo "peer environment ready: $VENV"
