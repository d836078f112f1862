#!/bin/sh
# {{name}}: append a timestamped line to state.md when the watched value changes.
#
# Replace check() with whatever you want to watch. The runner gives this script:
#   LOOPS_WORKSPACE     the workspace root           LOOPS_DOMAIN   this folder
#   LOOPS_LOOP          this loop's name             LOOPS_RUN_ID   this run's id
#   LOOPS_INBOX         the workspace inbox/         LOOPS_LAST_RUN end of the last run (empty on the first)
#   LOOPS_WINDOW_START  start of the collection window (empty on the first run)
# plus PATH, HOME, USER, LANG, TZ and this loop's `env:`. Nothing else is passed through.
#
# Contract: print nothing and change nothing when there is nothing new (a silent run);
# otherwise change files here and print one short line (it becomes the commit subject).
# A non-zero exit is a failed run and is retried (see `retry:` in config.yaml).
set -eu

state=state.md
inbox=${LOOPS_INBOX:-${LOOPS_WORKSPACE:-../..}/inbox}

# The value to watch: here, how many handoffs are pending in the inbox.
check() {
    if [ -d "$inbox" ]; then
        find "$inbox" -maxdepth 1 -type f -name '*.md' ! -name '.*' | awk 'END { print NR }'
    else
        echo 0
    fi
}

value="pending handoffs: $(check)"

# Lines in state.md look like "- 2026-11-20T09:30:00Z pending handoffs: 3".
# Compare with the value on the last such line; stay silent when it is the same.
last=""
if [ -f "$state" ]; then
    last=$(sed -n 's/^- [0-9T:Z-]* //p' "$state" | sed -n '$p')
fi
[ "$value" = "$last" ] && exit 0

[ -f "$state" ] || printf '# {{name}}\n\nOne line per change, newest last.\n\n' >"$state"
printf -- '- %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$value" >>"$state"
echo "$value (was: ${last:-nothing recorded})"
