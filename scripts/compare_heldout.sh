#!/usr/bin/env bash
# A candidate beside the shipped weights on every held-out set, one evaluate run per set (same frames, same
# process, the temporal mean as a reference row). After `make pretrain` (heldout, and eval_raws' heldout_raw,
# heldout_raw_camera); the confirmation camera motions (seed 41), the 32-frame set (seed 43) and the bright set
# (ratios 5-20, seed 7) are made here when missing, from the held-out photos and cameras.
# Usage: scripts/compare_heldout.sh CANDIDATE OUT   (e.g. build/w13/stage19.safetensors build/w13/s19)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 CANDIDATE OUT" >&2; exit 2; }
candidate=$1 out=$2 P=${pretrain_dir:-build/pretrain} photos=${photos:-../shared/images}
B="${PYTHON:-.venv/bin/python} -m batman"
heldout_synth() {  # DIR SEED FRAMES STATIC DYNAMIC MOTIONS [SYNTH ARGS...]
  [ -d "$1" ] || $B synth --out "$1" --images "$photos" --only 'kodim19*' 'kodim2[0-4]*' --videos "$4" --dynamic "$5" \
      --motion "$6" --frames "$3" --size 768x768 --cameras heldout --seed "$2" --test-only "${@:7}"
}
heldout_synth "$P/confirm_cam" 41 16 0 9 pan,rotate,zoom
heldout_synth "$P/heldout_long" 43 32 6 3 pan,object,rotate
heldout_synth "$P/heldout_bright" 7 16 6 0 pan --ratio 5 20
mkdir -p "$out"
for set in heldout:test:16 heldout:dynamic:16 confirm_cam:dynamic:16 heldout_raw:test:16 heldout_raw:dynamic:16 \
           heldout_raw_camera:dynamic:16 heldout_long:test:32 heldout_long:dynamic:32 heldout_bright:test:16; do
  IFS=: read -r name split frames <<< "$set"
  [ -d "$P/$name" ] || { echo "== $name: not found in $P (make pretrain, make eval_raws), skipped"; continue; }
  $B evaluate --root "$P/$name" --split "$split" --frames "$frames" --out "$out/${name}_$split" --model "$candidate" \
      --compare trained_model/batman_default.safetensors --baselines mean > "$out/${name}_$split.log" 2>&1
  echo "== ${name} $split ($frames frames)"; grep "^|" "$out/${name}_$split/metrics.md"
done
