#!/bin/sh
# One run of a domain, as a crontab entry would run it: the domain's own command
# (./run.sh in its folder), a line in a run log, then `git add` + `git commit` of what the
# run changed in its folder, through the git CLI.
#
#   job.sh WORKSPACE NAME
set -u
ws=${1:?usage: job.sh WORKSPACE NAME}
name=${2:?usage: job.sh WORKSPACE NAME}
cd "$ws/domains/$name" || exit 1
mkdir -p "$ws/.cron"
./run.sh >"$ws/.cron/$name.out" 2>&1
rc=$?
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
printf '%s %s exit=%s\n' "$at" "$name" "$rc" >>"$ws/.cron/runs.log"
# `git commit` exits 1 when the run changed nothing: that is not an error here.
git add -A -- . && git commit -q -m "$name: run at $at (exit $rc)" >/dev/null
exit "$rc"
