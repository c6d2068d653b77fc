#!/usr/bin/env bash
# The GPU work of a session in one device call (see benchmarks/gpu_session.py).
#   bash benchmarks/gpu_session.sh prepare   # here: device wheels in .whl/ and the 64 px Br35H cache in .cache/
#                                            # (add both to .git/info/exclude; carry them to the device)
#   bash benchmarks/gpu_session.sh run       # on the device: install the carried wheels, then run everything into $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  bash ../shared/scripts/gpu_wheels.sh .whl
  dataset=${DATASET_DIR:-bundles/brain_mri_anomaly_hqanogan/data/br35h}
  [ -f "$dataset/datalist.json" ] || python -m monai_hqanogan.data.prepare br35h --download --output "$dataset"
  python benchmarks/compare.py --mode gpu --dataset_dir "$dataset" --data_cache .cache/br35h_64.pt --prepare_only
  du -sh .whl .cache
  ;;
run)
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
  python3 benchmarks/gpu_session.py --data_cache .cache/br35h_64.pt --out "${OUT:?set OUT}" --skip GANomaly "${@:2}"
  ;;
*)
  echo "usage: bash benchmarks/gpu_session.sh prepare|run" >&2
  exit 2
  ;;
esac
