#!/usr/bin/env bash
# GPU check (CUDA machine, no data set: random tensors): per preset a few real training steps at DRV size
# printing peak memory and images/s (`batman bench memory`), the presets as they were before they were
# resized (for comparison), then `bench infer` at DRV's full grid and 256x384 with bf16 autocast.
# Usage: scripts/gpu_check.sh [OUT]   (default result/gpu_check; a few minutes at most on an H100)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-result/gpu_check}
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

"$PYTHON" -c "import torch, sys; ok = torch.cuda.is_available(); print('torch', torch.__version__, '|',
torch.cuda.get_device_name(0) if ok else 'no CUDA device'); sys.exit(0 if ok else 1)" \
  || { echo "gpu_check: needs a CUDA device" >&2; exit 1; }

start=$(date +%s)
echo "== training memory and images/s per preset (AMP as train.py) =="
"$PYTHON" -m batman bench memory --out "$OUT"

echo "== the presets before resizing (crop, T, B, checkpointing) =="
"$PYTHON" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
from batman.bench import GPU_BUDGET_GB, memory_measure_cuda
from batman.config import make_config
OLD = {"titan": ((512, 512), 8, False), "1080ti": ((384, 384), 6, True), "1080": ((256, 256), 6, True)}
rows = {}
for name, (crop, frames, ckpt) in OLD.items():
    cfg = make_config(name, {"data.crop": crop, "data.frames": frames, "model.checkpointing": ckpt})
    r = memory_measure_cuda(cfg)
    rows[name] = dict(r, crop=list(crop), frames=frames, checkpointing=ckpt)
    print(f"{name:7s} old crop {crop[0]}x{crop[1]} T={frames} ckpt={ckpt}: peak {r['total_bytes'] / 1e9:.2f} GB "
          f"({100 * r['total_bytes'] / 1e9 / GPU_BUDGET_GB[name]:.0f}% of {GPU_BUDGET_GB[name]:.0f}), "
          f"{r['images_per_s']:.1f} images/s")
(Path(sys.argv[1]) / "memory_old_presets.json").write_text(json.dumps(rows, indent=2))
EOF

echo "== inference, bf16 autocast =="
"$PYTHON" - "$OUT" <<'EOF'
import sys
from pathlib import Path
from batman.bench import DRV_GRID, bench_infer
bench_infer(Path(sys.argv[1]), devices=("cuda",), sizes=[(256, 384), DRV_GRID])
EOF
echo "gpu_check: done in $(( $(date +%s) - start )) s; JSON in $OUT"
