#!/bin/sh
# workspace-report: rewrite state.md with a markdown report of this workspace.
#
# Run by `loops` with cwd = this loop's folder. Uses only git, du, find, date, awk, sed.
# The report is rewritten only when something other than its "Generated:" line changed,
# so an unchanged workspace gives a silent run: nothing printed, no file touched.
# When it does change, one short summary line is printed; loops uses it as the commit subject.
#
# By hand:  cd domains/workspace-report && sh report.sh
set -u

domain=$(pwd)
ws=${LOOPS_WORKSPACE:-}
if [ -z "$ws" ]; then
    ws=$(cd ../.. 2>/dev/null && pwd) || ws=$domain
fi
me=${LOOPS_LOOP:-${domain##*/}}
out=state.md
tmp=.state.md.tmp.$$
trap 'rm -f "$tmp"' EXIT
trap 'exit 130' HUP INT TERM

# Field and record separators for parsing `git log` output safely (subjects may hold anything).
FS_=$(printf '\037')
RS_=$(printf '\036')

in_git=no
has_commits=no
if git -C "$ws" rev-parse --git-dir >/dev/null 2>&1; then
    in_git=yes
    if git -C "$ws" rev-parse --verify --quiet HEAD >/dev/null 2>&1; then
        has_commits=yes
    fi
fi

# One record per commit: hash, date, subject, Loop: trailer (first value, may be empty).
commits() { # extra git log args...
    TZ=UTC git -C "$ws" log "$@" --date=format-local:'%Y-%m-%d %H:%M' \
        --format="${RS_}%H${FS_}%ad${FS_}%s${FS_}%(trailers:key=Loop,valueonly)" 2>/dev/null |
    awk -v RS="$RS_" -v FS="$FS_" -v me="$me" '
        NF >= 3 {
            loop = $4; sub(/\n.*/, "", loop); gsub(/^[ \t]+|[ \t\n]+$/, "", loop)
            if (loop == me) next          # our own commits never change the report
            subject = $3; gsub(/\t/, " ", subject)
            print substr($1, 1, 10) "\t" $2 "\t" loop "\t" subject
        }'
}

recent=""
last10=""
if [ "$has_commits" = yes ]; then
    recent=$(commits --since=24.hours -n 5000)
    last10=$(commits -n 500 | sed -n '1,10p')
fi
n_recent=$(printf '%s' "$recent" | awk 'NF { n++ } END { print n + 0 }')

# Pending handoffs: every *.md directly in inbox/ (0 when the folder is missing).
inbox=${LOOPS_INBOX:-$ws/inbox}
pending=0
if [ -d "$inbox" ]; then
    pending=$(find "$inbox" -maxdepth 1 -type f -name '*.md' ! -name '.*' | awk 'END { print NR }')
fi

{
    echo "# Workspace report"
    echo
    echo "Generated: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "Written by the \`$me\` loop (\`domains/$me/report.sh\`). Its own commits are left out,"
    echo "so the report only changes when the workspace does."
    echo
    echo "## Commits in the last 24 hours"
    echo
    if [ "$in_git" = no ]; then
        echo "The workspace is not a git repository, so there is no history to report."
    elif [ "$has_commits" = no ]; then
        echo "No commits yet."
    elif [ "$n_recent" -eq 0 ]; then
        echo "None."
    else
        echo "| Loop | Commits |"
        echo "| --- | ---: |"
        # Groups in order of their latest commit (deterministic, so no spurious rewrites).
        printf '%s\n' "$recent" | awk -F '\t' '
            NF { k = ($3 == "" ? "(by hand)" : $3); if (!(k in n)) order[++m] = k; n[k]++ }
            END { for (i = 1; i <= m; i++) print "| " order[i] " | " n[order[i]] " |" }'
        echo
        echo "$n_recent in total."
    fi
    echo
    echo "## Last 10 commits"
    echo
    if [ "$in_git" = no ]; then
        echo "Not a git repository."
    elif [ -z "$last10" ]; then
        echo "No commits yet."
    else
        printf '%s\n' "$last10" | awk -F '\t' '{
            who = ($3 == "" ? "by hand" : $3)
            print "- `" $1 "` " $2 " (" who ") " $4 }'
    fi
    echo
    echo "## Domains"
    echo
    found=no
    for d in "$ws"/domains/*/; do
        [ -d "$d" ] || continue
        name=${d%/}; name=${name##*/}
        if [ "$found" = no ]; then
            echo "| Domain | Size | Files |"
            echo "| --- | ---: | ---: |"
            found=yes
        fi
        if [ "$name" = "$me" ]; then
            echo "| $name | (this report) | |"
            continue
        fi
        files=$(find "$d" -type f | awk 'END { print NR }')
        size=$(du -sk "$d" 2>/dev/null | awk '{ print $1 }')
        echo "| $name | ${size:-?} KB | $files |"
    done
    if [ "$found" = no ]; then
        echo "No domains."
    fi
    echo
    echo "## Inbox"
    echo
    if [ -d "$inbox" ]; then
        echo "$pending pending handoff(s) in \`inbox/\`."
    else
        echo "0 pending handoffs (no \`inbox/\` folder)."
    fi
} >"$tmp" || exit 1

n_domains=0
for d in "$ws"/domains/*/; do
    [ -d "$d" ] && n_domains=$((n_domains + 1))
done

# Compare everything but the Generated line.
new=$(sed '/^Generated: /d' "$tmp")
old=""
[ -f "$out" ] && old=$(sed '/^Generated: /d' "$out")
if [ "$new" = "$old" ]; then
    exit 0 # unchanged: a silent run (the temp file is removed by the EXIT trap)
fi

mv -f "$tmp" "$out" || exit 1

if [ "$in_git" = no ]; then
    echo "not a git repository, $n_domains domain(s), $pending pending handoff(s)"
else
    echo "$n_recent commit(s) in 24 h, $n_domains domain(s), $pending pending handoff(s)"
fi
