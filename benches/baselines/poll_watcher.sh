#!/bin/sh
# The polling-watcher baseline: what Genesis's engine does for its job files (rescan
# every 2 s, no file-system watcher), applied to an inbox of handoff files.
#
#   poll_watcher.sh WORKSPACE HANDLER [INTERVAL_SECONDS]
#
# Every INTERVAL seconds (default 2) it lists inbox/*.md and, for each file, runs
# `HANDLER FILE`; a handled file moves to inbox/done/YYYY-MM/ (inbox/failed/ if the
# handler failed), and a scan that moved anything ends with one `git add` + `git commit`
# through the git CLI. Writers must write elsewhere and rename into inbox/, so that a
# half-written file is never listed.
set -u
ws=${1:?usage: poll_watcher.sh WORKSPACE HANDLER [INTERVAL_SECONDS]}
handler=${2:?usage: poll_watcher.sh WORKSPACE HANDLER [INTERVAL_SECONDS]}
interval=${3:-2}
cd "$ws" || exit 1
mkdir -p inbox/done inbox/failed
echo "watching"
while :; do
	n=0
	month=
	for f in inbox/*.md; do
		[ -f "$f" ] || continue
		[ -n "$month" ] || month=$(date +%Y-%m)
		if "$handler" "$f"; then
			mkdir -p "inbox/done/$month" && mv "$f" "inbox/done/$month/"
		else
			mv "$f" inbox/failed/
		fi
		n=$((n + 1))
	done
	if [ "$n" -gt 0 ]; then
		git add -A -- inbox/done inbox/failed &&
			git commit -q -m "inbox: $n handoff(s) processed" >/dev/null
	fi
	sleep "$interval"
done
