#!/usr/bin/env bash
# Summarises a whole-machine CPU profile (`perf record -a -e cpu-clock -g`)
# taken by bench/run during a burst: the share of the machine by process, and
# the top symbols of the server process (self time, `perf report
# --no-children --pid SERVER --sort dso,symbol`).
#
#   bench/profile.sh PERF_DATA OUT_MD OUT_JSON SERVER_PID=NAME [PID=NAME...]
#
# PID=NAME pairs name processes whose threads carry other names (gRPC and
# ClickHouse name their threads); other samples are grouped by thread name
# (PostgreSQL backends: postgres), pid 0 is "idle". PROFILE_TOP (30) symbols
# are listed; PROFILE_CONTEXT, if set, is a Markdown paragraph saying what was
# profiled. Exits non-zero when perf cannot read the data.
set -euo pipefail
data=$1
md=$2
json=$3
shift 3
server_pid=${1%%=*}
server_name=${1#*=}
names=$(
  IFS=,
  echo "$*"
)
top=${PROFILE_TOP:-30}
tmp=$(mktemp -d /tmp/fleetd-profile.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# Samples by process: "samples<TAB>name", most first.
perf script -i "$data" -F comm,pid 2>"$tmp/script.err" | awk -v names="$names" '
  BEGIN {
    n = split(names, kv, ",")
    for (i = 1; i <= n; i++) { split(kv[i], p, "="); name[p[1]] = p[2] }
  }
  NF >= 2 {
    pid = $NF
    if (pid in name) label = name[pid]
    else if (pid == 0) label = "idle"
    else { label = $0; sub(/[ \t]+[0-9]+[ \t]*$/, "", label); sub(/^[ \t]+/, "", label) }
    count[label]++
  }
  END { for (l in count) printf "%d\t%s\n", count[l], l }' | sort -t$'\t' -k1,1nr >"$tmp/procs.tsv"
[[ -s $tmp/procs.tsv ]] || { cat "$tmp/script.err" >&2; exit 1; }
total=$(awk -F'\t' '{t += $1} END {print t}' "$tmp/procs.tsv")
server_samples=$(awk -F'\t' -v n="$server_name" '$2 == n {print $1}' "$tmp/procs.tsv")
server_samples=${server_samples:-0}

# The server's symbols by self time, as a share of the server's samples:
# "percent<TAB>dso<TAB>symbol". Long C++ names are shortened: std::string for
# its spelled-out type, then the innermost template arguments elided until the
# name fits, so the method name at the end stays visible.
perf report -i "$data" --no-children --pid "$server_pid" --sort dso,sym --stdio -g none \
  --percentage relative -t '|' 2>"$tmp/report.err" | awk -F'|' -v top="$top" '
  function shorten(s) {
    gsub(/std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char> >/, "std::string", s)
    gsub(/std::string >/, "std::string>", s)
    gsub(/std::__cxx11::/, "std::", s)
    gsub(/absl::debian3::/, "absl::", s)
    while (length(s) > 110 && match(s, /<[^<>]*>/)) s = substr(s, 1, RSTART - 1) "{...}" substr(s, RSTART + RLENGTH)
    if (length(s) > 110) s = substr(s, 1, 107) "..."
    return s
  }
  /^#/ || NF < 3 || shown >= top { next }
  {
    pct = $1; gsub(/[ %]/, "", pct)
    dso = $2; gsub(/^ +| +$/, "", dso)
    sym = $3; for (i = 4; i <= NF; i++) sym = sym "|" $i
    sub(/^ *\[.\] /, "", sym); gsub(/ +$/, "", sym)
    sym = shorten(sym)
    printf "%s\t%s\t%s\n", pct, dso, sym
    shown++
  }' >"$tmp/symbols.tsv"
[[ -s $tmp/symbols.tsv ]] || { cat "$tmp/report.err" >&2; exit 1; }

{
  echo "# CPU profile of $server_name"
  echo
  if [[ -n ${PROFILE_CONTEXT:-} ]]; then
    echo "$PROFILE_CONTEXT"
    echo
  fi
  echo "Recorded with \`perf record -a -e cpu-clock -g\` over the whole machine (a per-process"
  echo "\`-p\` misses threads that come and go), summarised by \`bench/profile.sh\`: $total samples"
  echo "in all, $server_samples of them in $server_name."
  echo
  echo "## Share of the machine by process"
  echo
  echo "| process | samples | share of the machine |"
  echo "|---|---:|---:|"
  awk -F'\t' -v t="$total" 'NR <= 15 {printf "| %s | %d | %.1f %% |\n", $2, $1, 100 * $1 / t; shown += $1}
    END {if (t > shown) printf "| (all others) | %d | %.1f %% |\n", t - shown, 100 * (t - shown) / t}' \
    "$tmp/procs.tsv"
  echo
  echo "Rows named by bench/run are its processes, by pid (all their threads; PostgreSQL: the"
  echo "postmaster and the server's backends). Every other row is a thread name of a process outside"
  echo "the bench: other engineers' builds and tests share the machine (their own \`postgres\`,"
  echo "\`victoria-metric\`, test binaries). \`idle\`: no process ran."
  echo
  echo "## Top $top symbols of $server_name (self time)"
  echo
  echo "\`perf report --no-children --pid <server> --sort dso,symbol\`."
  echo
  echo "| % of $server_name | % of the machine | shared object | symbol |"
  echo "|---:|---:|---|---|"
  awk -F'\t' -v s="$server_samples" -v t="$total" '{
    sym = $3; gsub(/\|/, "\\|", sym); gsub(/`/, "", sym)
    printf "| %.2f | %.2f | %s | `%s` |\n", $1, $1 * s / t, $2, sym
  }' "$tmp/symbols.tsv"
} >"$md"

jq -n --argjson total "$total" --argjson server "$server_samples" \
  --rawfile procs "$tmp/procs.tsv" --rawfile symbols "$tmp/symbols.tsv" '
  def rows: split("\n") | map(select(length > 0) | split("\t"));
  {samples: $total, server_samples: $server,
   server_share: (if $total > 0 then $server / $total else 0 end),
   processes: ($procs | rows | map({name: .[1], samples: (.[0] | tonumber),
                                    share: ((.[0] | tonumber) / $total)})),
   server_top_symbols: ($symbols | rows | map({symbol: .[2], dso: .[1],
                                               server_share: ((.[0] | tonumber) / 100)}))}' >"$json"
