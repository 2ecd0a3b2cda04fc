#!/usr/bin/env bash
# Failing jobs fail visibly on a real Slurm: jobs/quantize.sbatch given a missing model folder
# ends FAILED with a non-zero exit code, hpcq's message naming the path is in the job log, no
# output file is left that looks like a result, and the job is NOT requeued. A job without
# --out fails at once with a usage message; eval.sbatch and scaling.sbatch refuse to run
# outside Slurm.
source "$HQ_SRC/tests/slurmlib.sh"
hq_t_prereq

for s in eval scaling; do
  set +e
  msg=$(env -u SLURM_JOB_ID bash "$HQ_SRC/jobs/$s.sbatch" 2>&1)
  rc=$?
  set -e
  [ "$rc" -eq 2 ] && grep -q "not inside a Slurm job" <<<"$msg" || fail "$s.sbatch outside Slurm: status $rc, message: $msg"
done

hq_t_start
bad=$HQ_T_WORK/no-such-model
j=$(sbatch --parsable "$HQ_SRC/jobs/quantize.sbatch" --model "$bad" --calib "$HQ_CALIB" --out "$HQ_T_WORK/bad.h5" \
      --nsamples 16 --seqlen 128)
j2=$(sbatch --parsable "$HQ_SRC/jobs/quantize.sbatch" --model "$HQ_MODEL" --calib "$HQ_CALIB")
hq_t_wait "$j" 120
hq_t_wait "$j2" 60
hq_t_expect_job "$j" FAILED ""
ec=$(hq_t_field "$j" ExitCode)
[ "${ec%%:*}" -ne 0 ] || fail "bad-model job exit code $ec"
[ "$(hq_t_field "$j" Restarts)" = 0 ] || fail "a failed job must not be requeued"
log=$HQ_T_WORK/hpcq-quantize-$j.log
grep -qE "hpcq quantize: error: .*$bad/config.json" "$log" || fail "job log lacks hpcq's message naming the missing model"
grep -q "error: hpcq quantize failed with status [1-9]" "$log" || fail "job log lacks the script's failure line"
grep -q "JobId=$j .*JobState=FAILED" "$HQ_T_CLUSTER/log/jobcomp.txt" || fail "jobcomp record does not say FAILED"
if [ -e "$HQ_T_WORK/bad.h5" ]; then
  h5dump -a /complete "$HQ_T_WORK/bad.h5" >/dev/null 2>&1 && fail "a failed run left a file marked complete"
fi

hq_t_expect_job "$j2" FAILED 2:0
grep -q -- "--out FILE.h5 is required" "$HQ_T_WORK/hpcq-quantize-$j2.log" || fail "missing --out: no usage message"
tlog "PASS"
