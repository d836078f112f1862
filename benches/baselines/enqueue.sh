#!/bin/sh
# Submits one job to job_worker.sh's queue: written under QUEUE/.tmp/, then renamed in,
# so the worker never reads half a job. The id sorts in submission order.
#
#   enqueue.sh QUEUE COMMAND
set -u
q=${1:?usage: enqueue.sh QUEUE COMMAND}
cmd=${2:?usage: enqueue.sh QUEUE COMMAND}
mkdir -p "$q/.tmp" || exit 1
id=$(date +%s%N)-$$
printf '%s\n' "$cmd" >"$q/.tmp/$id.job" && mv "$q/.tmp/$id.job" "$q/$id.job"
