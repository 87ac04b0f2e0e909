#!/bin/bash
# Final training of the chosen config on every training subject (S1 S5 S6 S7 S8), then
# `meshrec eval` on the test subjects (S9 S11). One task per GPU; DDP from SLURM's variables.
#
#   sbatch slurm/train_full.sh
#   CONFIG=configs/study.yaml OVERRIDES="loss.w_body=0.1 loss.type=l1" sbatch slurm/train_full.sh
#   sbatch --partition=gpu --nodes=2 --gpus-per-node=4 --ntasks-per-node=4 --time=2-00:00:00 \
#          slurm/train_full.sh
#
# Variables (sbatch passes the submitting shell's environment to the job):
#   CONFIG     config file (default configs/study.yaml); pick the sweep's best cell with its
#              grid values in OVERRIDES (`python launch/sweep.py --grid ... --report` names it)
#   OVERRIDES  space-separated dotted overrides applied after CONFIG, e.g. "loss.w_body=0.1
#              track.uri=http://login1:5000" (default none)
#   OUT        run directory (default runs/full-<job id>; a requeued job keeps its id, so it
#              resumes from OUT/checkpoints/last.pt)
#   SUBJECTS   training subjects (default [S1,S5,S6,S7,S8]); TEST_SUBJECTS (default S9,S11)
#   PYTHON     interpreter (default python3)
#
# The #SBATCH lines below are defaults: options on the sbatch command line override them. Keep
# --ntasks-per-node equal to --gpus-per-node (one DDP process per GPU); on CPU-only nodes pass
# --gpus-per-node=0 and as many tasks as you want processes.
#
# Time limit and preemption: 120 s before the limit SLURM sends USR1 to this script (B:), which
# requeues the job (--requeue); the requeued job reruns this script with the same job id and the
# training resumes from its last checkpoint into the same MLflow run (the checkpoint holds the
# run id). Training saves every train.checkpoint_every steps and at each epoch's end; work after
# the last save is done again.
#
#SBATCH --job-name=meshrec-full
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/study.yaml}
OUT=${OUT:-runs/full-${SLURM_JOB_ID:?run this script with sbatch}}
SUBJECTS=${SUBJECTS:-[S1,S5,S6,S7,S8]}
TEST_SUBJECTS=${TEST_SUBJECTS:-S9,S11}
read -r -a EXTRA <<< "${OVERRIDES:-}"

echo "job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST}:" \
     "${SLURM_NTASKS:-1} task(s); config ${CONFIG} ${OVERRIDES:-}; out ${OUT}"

requeue() {
    echo "USR1 (time limit near or preemption): requeueing job ${SLURM_JOB_ID};" \
         "training resumes from ${OUT}/checkpoints/last.pt"
    scontrol requeue "${SLURM_JOB_ID}"
    exit 0
}
trap requeue USR1

# The rendezvous port: free now on this node, the allocation's first, where rank 0 runs (a port
# derived from the job id could be taken; a requeued run picks again).
export MASTER_PORT=${MASTER_PORT:-$("$PYTHON" -m meshrec.train.rendezvous)}

# In the background + wait, so the trap runs as soon as the signal arrives.
srun --kill-on-bad-exit=1 "$PYTHON" -m meshrec.cli train --config "$CONFIG" --out "$OUT" \
    "data.train_subjects=${SUBJECTS}" "${EXTRA[@]}" &
wait $!

srun --nodes=1 --ntasks=1 "$PYTHON" -m meshrec.cli eval --checkpoint "$OUT/checkpoints/last.pt" \
    --subjects "$TEST_SUBJECTS" "${EXTRA[@]}" | tee "$OUT/eval.txt" &
wait $!
