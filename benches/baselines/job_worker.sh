#!/bin/sh
# The job-queue baseline: jobs are files in a queue folder, consumed by a polling worker
# (the shape of Genesis's engine: one file per job, rescanned every 2 s).
#
#   job_worker.sh QUEUE [INTERVAL_SECONDS]
#
# A job is QUEUE/ID.job holding a shell command (see enqueue.sh). Every INTERVAL seconds
# (default 2) the worker runs every job file present, in name order and one at a time,
# with its output in QUEUE/done/ID.out, then moves the file to QUEUE/done/ and appends
# "ID EXIT" to QUEUE/done/index.log. No retries, leases, priorities or concurrency.
set -u
q=${1:?usage: job_worker.sh QUEUE [INTERVAL_SECONDS]}
interval=${2:-2}
mkdir -p "$q/done" || exit 1
echo "working"
while :; do
	for f in "$q"/*.job; do
		[ -f "$f" ] || continue
		id=${f##*/}
		id=${id%.job}
		sh "$f" >"$q/done/$id.out" 2>&1
		rc=$?
		mv "$f" "$q/done/"
		printf '%s %s\n' "$id" "$rc" >>"$q/done/index.log"
	done
	sleep "$interval"
done
