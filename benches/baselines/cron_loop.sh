#!/usr/bin/env bash
# The crontab-style baseline: the scheduler loop a person writes instead of cron + a
# script (`while true; do ...; sleep ...; done`).
#
#   cron_loop.sh WORKSPACE [TICK_SECONDS]
#
# At start it reads the `every:` line of every domains/*/config.yaml (one grep over all
# of them, then bash builtins), prints "ready N", and from then on wakes every TICK
# seconds (default 60: cron's own granularity) and runs job.sh for each domain whose next
# slot has come. Slots are whole multiples of the interval since the epoch.
#
# What it leaves out, on purpose, because a minimal script would: cron expressions,
# time zones, validation (a domain with no readable `every:` is skipped), picking up new
# or edited domains (restart it), catching up missed slots, concurrency limits (jobs run
# one after another), timeouts and retries.
set -u

ws=${1:?usage: cron_loop.sh WORKSPACE [TICK_SECONDS]}
tick=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
cd "$ws" || exit 1

names=()
every=()
next=()
printf -v now '%(%s)T' -1
while IFS= read -r line; do
	path=${line%%:*}
	val=${line#*every:}
	val=${val//[[:space:]\"\']/}
	name=${path#domains/}
	name=${name%/config.yaml}
	n=${val%[smhd]}
	case $n in '' | *[!0-9]*) continue ;; esac
	case $val in
	*s) secs=$n ;;
	*m) secs=$((n * 60)) ;;
	*h) secs=$((n * 3600)) ;;
	*d) secs=$((n * 86400)) ;;
	*) continue ;;
	esac
	((secs > 0)) || continue
	names+=("$name")
	every+=("$secs")
	next+=($(((now / secs + 1) * secs)))
done < <(grep -H '^[[:space:]]*every:' domains/*/config.yaml)
echo "ready ${#names[@]}"

while true; do
	printf -v now '%(%s)T' -1
	for i in "${!names[@]}"; do
		if ((now >= next[i])); then
			sh "$here/job.sh" "$ws" "${names[i]}"
			next[i]=$(((now / every[i] + 1) * every[i]))
		fi
	done
	sleep "$tick"
done
