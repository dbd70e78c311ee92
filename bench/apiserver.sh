#!/usr/bin/env bash
# keel's API server against issue 6's goals, on this machine, one run.
#
#   bench/apiserver.sh           3-member keel store + one API server on
#                                127.0.0.1; ConfigMap creates at 1,000/s from
#                                100 clients, 10,000 pod watchers, lists of
#                                10,000 pods; writes
#                                bench/results/<date>-apiserver.{json,md}.
#   bench/apiserver.sh --quick   small totals; results left in the work dir.
#
# No Kubernetes API server runs here to compare with (kube-apiserver is not
# packaged for this machine); the goals are the issue's absolute ones.
# Environment: BENCH_DIR (work dir parent, default target/), KEEP_WORK=1.
MODE=${1:-full}
case $MODE in full | --quick) ;; *) sed -n '2,12p' "$0"; exit 2 ;; esac
NAME=apiserver
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

if [ "$MODE" = --quick ]; then
  CREATES=500 RATE=200 WATCHERS=200 PODS=10 LIST_OBJECTS=200 LISTS=5
else
  CREATES=30000 RATE=1000 WATCHERS=10000 PODS=100 LIST_OBJECTS=10000 LISTS=50
fi

start_keel_with_apiserver

OUT="$WORK/out"; mkdir -p "$OUT"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
run() { # ID LABEL ARGS...
  local id=$1 label=$2; shift 2
  echo "== $label" >&2
  $BENCH --json "$OUT/$id.json" --id "$id" --label "$label" --system keel --pids "$API_PID,$PIDS" \
    --summary-name "$id" "$@" >&2
}
K=(--kubeconfig "$WORK/kubeconfig")
run create "ConfigMap creates, $RATE/s from 100 clients / 10 conns" \
  --conns 10 --clients 100 --total $CREATES --rate $RATE kube-create "${K[@]}"
run watch "pod watch, $WATCHERS watchers / 100 conns, $PODS pods at 10/s" \
  --conns 100 kube-watch "${K[@]}" --watchers $WATCHERS --pods $PODS --pod-rate 10
run list "list of $LIST_OBJECTS pods, 1 client" \
  --conns 1 --clients 20 --total $LISTS kube-list "${K[@]}" --objects $LIST_OBJECTS
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# The table: one row per workload, against its goal.
table() {
  echo "## keel API server, $(date -u +%F)"
  echo
  echo "Machine: $(machine)."
  echo "Command: \`bench/apiserver.sh\` — a 3-member keel store and one \`keel apiserver\`"
  echo "on 127.0.0.1 (the API server reaches the store over its QUIC client API), keel-bench on the same"
  echo "two cores over HTTPS + HTTP/2 with the admin client certificate. Load average"
  echo "(1/5/15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER."
  echo
  echo "| workload | samples | p50 ms | p99 ms | p99.9 ms | max ms | throughput /s | errors | goal | met? | CPU s (apiserver · members) | RSS MiB (apiserver · members) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  local id goal key limit
  for id in create watch list; do
    case $id in
      create) goal="p99 ≤ 25 ms at 1,000/s"; key=p99; limit=25 ;;
      watch) goal="p99 ≤ 50 ms"; key=p99; limit=50 ;;
      list) goal="≤ 100 ms (p99)"; key=p99; limit=100 ;;
    esac
    python3 - "$OUT/$id.json" "$goal" "$key" "$limit" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); goal, key, limit = sys.argv[2], sys.argv[3], float(sys.argv[4])
l = r["latency_ms"]; m = r.get("members", [])
met = "met" if r["errors"] == 0 and l[key] <= limit else "**missed**"
cpu = " · ".join(f'{u["cpu_s"]:.1f}' for u in m); rss = " · ".join(f'{u["rss_mb"]:.0f}' for u in m)
print(f'| {r["label"]} | {r["count"]} | {l["p50"]:.2f} | {l["p99"]:.2f} | {l["p999"]:.2f} | {l["max"]:.2f} | {r["throughput"]:.0f} | {r["errors"]} | {goal} | {met} | {cpu} | {rss} |')
EOF
  done
}
MD=$(table)
echo "$MD"
if [ "$MODE" = full ]; then
  DEST=bench/results/$(date -u +%F)-apiserver
  echo "$MD" >"$DEST.md"
  python3 - "$OUT" "$DEST.json" <<'EOF'
import json, os, sys
d = sys.argv[1]
runs = [json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d)) if f.endswith(".json")]
json.dump(runs, open(sys.argv[2], "w"), indent=1)
EOF
  echo "wrote $DEST.{json,md}" >&2
else
  echo "(--quick: results in $OUT)" >&2
fi
