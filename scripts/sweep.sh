#!/usr/bin/env bash
# `make sweep`: a grid over loss.alpha x loss.temperature (each experiment trains every method on
# study.seeds), run by DVC's experiment queue, then gathered by `kdlab sweep`.
#
#   ALPHAS=0.3,0.5,0.7 TEMPERATURES=2,4 SEEDS='[0,1,2]' JOBS=2 make sweep          # N workers on this machine
#   GPUS=0,1,2,3 make sweep                          # one worker per GPU, each given its CUDA_VISIBLE_DEVICES
#
# Every experiment logs to the repo's MLflow store (or MLFLOW_TRACKING_URI); `dvc exp show` lists them.
# Each experiment is a whole study: on the 2-core CPU about 40 minutes apiece, so use GPUs for real grids.
set -euo pipefail
ALPHAS=${ALPHAS:-0.3,0.5,0.7}
TEMPERATURES=${TEMPERATURES:-2,4}
SEEDS=${SEEDS:-}
JOBS=${JOBS:-1}
GPUS=${GPUS:-}

set_seeds=()
[ -n "$SEEDS" ] && set_seeds=(-S "study.seeds=$SEEDS")
# -S with a comma list queues the cartesian product: one experiment per (alpha, temperature)
dvc exp run --queue -S "loss.alpha=$ALPHAS" -S "loss.temperature=$TEMPERATURES" "${set_seeds[@]}"

workers() {  # how many queue workers are up
  dvc queue status 2>/dev/null | awk '/^Worker status/ {print $3 + $5; found=1} END {if (!found) print 0}'
}

if [ -n "$GPUS" ]; then
  # DVC's workers inherit the environment of `dvc queue start`, and `-j N` only adds the workers not yet
  # running: start them one at a time, each with its own GPU
  IFS=, read -ra gpu_ids <<< "$GPUS"
  for i in "${!gpu_ids[@]}"; do
    CUDA_VISIBLE_DEVICES=${gpu_ids[$i]} dvc queue start -j $((i + 1))
    for _ in $(seq 60); do [ "$(workers)" -ge $((i + 1)) ] && break; sleep 1; done
  done
else
  dvc queue start -j "$JOBS"
fi

# wait for the queue to drain (the status is read whole first: `grep -q` closing the pipe early would fail
# the pipeline under pipefail and end the wait at once), then gather
pending() { local status; status=$(dvc queue status 2>&1); grep -Eq '\b(Queued|Running)\b' <<< "$status"; }
while pending; do sleep 30; done
dvc queue status
kdlab sweep --param loss.alpha --by loss.temperature
