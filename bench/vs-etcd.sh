#!/usr/bin/env bash
# keel vs etcd 3.4 on this machine, same disk, one run.
#
#   bench/vs-etcd.sh           3-member etcd, then 3-member keel: the workload
#                              matrix below, with CPU and RSS of every member;
#                              writes bench/results/<date>.{json,md,svg}
#                              (keel/etcd ratios, targets met or missed,
#                              latency distributions) and prints the table.
#                              First the floor: fdatasync, loopback TCP, and
#                              the put/get/watch workloads with targets
#                              against `keel-bench null-server` (gRPC, no
#                              store).
#   bench/vs-etcd.sh --quick   the same with small totals, results left in
#                              the work dir (a smoke test of the script).
#   bench/vs-etcd.sh --single  single-member etcd vs keel (1-client put vs
#                              fdatasync, 100 clients, restart time and RSS
#                              with 1M keys), with the null server's rows;
#                              markdown on stdout.
#
# Installs etcd from apt if missing. Only talks to 127.0.0.1 (ports
# 23000-23999). Environment: BENCH_DIR (work dir parent, default target/),
# KEEP_WORK=1 keeps data dirs and logs, BENCH_RESTART_KEYS (--single).
MODE=${1:-matrix}
case $MODE in matrix | --quick | --single) ;; *) sed -n '2,22p' "$0"; exit 2 ;; esac
NAME=vs-etcd
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

# start_null PORT: keel-bench null-server on 127.0.0.1:PORT, the serving
# stack's floor (a gRPC server that stores nothing); sets $NULL_PID.
start_null() {
  $BENCH null-server --listen "127.0.0.1:$1" >>"$WORK/null-server.log" 2>&1 &
  NULL_PID=$!; disown "$NULL_PID"; echo "$NULL_PID" >> "$PIDFILE"
  wait_up "http://127.0.0.1:$1"
}

single() {
  local keys=${BENCH_RESTART_KEYS:-1000000}
  echo "# keel vs etcd, single member"
  echo
  echo "Machine: $(machine); disk under $WORK"
  echo "Command: \`bench/vs-etcd.sh --single\` ($(date -u +%F))"
  echo
  out=$($BENCH --total 2000 --summary-name fsync fsync --dir "$WORK")
  echo "fdatasync of 4 KiB on this disk: p50 $(echo "$out" | field p50_us) µs, p99 $(echo "$out" | field p99_us) µs"
  echo
  echo "| workload | target | p50 ms | p99 ms | ops/s |"
  echo "|---|---|---|---|---|"
  declare -A pid port
  port[etcd]=23790; port[keel]=23791; port[null]=23792
  start_null "${port[null]}"
  pid[null]=$NULL_PID
  for t in etcd keel; do
    start_member $t ${t}1 ${port[$t]} $((port[$t] + 10)) "${t}1=$([ $t = etcd ] && echo http || echo quic)://127.0.0.1:$((port[$t] + 10))"
    pid[$t]=$PID
  done
  for t in etcd keel; do wait_up http://127.0.0.1:${port[$t]}; done
  row() { # NAME BENCH-ARGS...
    local name=$1 out; shift
    out=$($BENCH --endpoints "http://127.0.0.1:${port[$t]}" --summary-name x "$@")
    printf '| %s | %s | %.3f | %.3f | %s |\n' "$name" "$t" \
      "$(echo "$(echo "$out" | field p50_us) / 1000" | bc -l)" \
      "$(echo "$(echo "$out" | field p99_us) / 1000" | bc -l)" \
      "$(echo "$out" | field ops_per_s)"
  }
  for t in null etcd keel; do
    row "put, 1 client" --conns 1 --clients 1 --total 3000 put --key-space-size 100000
    row "put, 100 clients / 10 conns" --conns 10 --clients 100 --total 50000 put --key-space-size 100000
    row "get (linearizable), 1 client" --conns 1 --clients 1 --total 5000 range foo
  done
  stop_pids "${pid[null]}"
  echo
  echo "(null: \`keel-bench null-server\`, keel's gRPC serving stack answering at once and storing nothing: figures no store served this way, measured by the same client, can be expected to beat.)"
  echo
  echo "| restart with $keys keys | target | load ops/s | restart to serving s | RSS MB |"
  echo "|---|---|---|---|---|"
  for t in etcd keel; do
    local ep=http://127.0.0.1:${port[$t]} load rss t0 t1
    load=$($BENCH --endpoints "$ep" --conns 10 --clients 200 --total "$keys" --summary-name load put --key-space-size "$keys" --sequential-keys | field ops_per_s)
    rss=$(rss_mb "${pid[$t]}")
    stop_pids "${pid[$t]}"
    t0=$(date +%s.%N)
    start_member $t ${t}1 ${port[$t]} $((port[$t] + 10)) "${t}1=$([ $t = etcd ] && echo http || echo quic)://127.0.0.1:$((port[$t] + 10))"
    pid[$t]=$PID
    wait_up "$ep"
    t1=$(date +%s.%N)
    printf '| %s | %s | %s | %.2f | %s |\n' "$keys keys" "$t" "$load" "$(echo "$t1 - $t0" | bc -l)" "$rss"
  done
}

if [ "$MODE" = --single ]; then single; exit 0; fi

# ---- the 3-member matrix ----
# Totals are chosen so that both systems together take well under 15 min
# on a 2-core machine; --quick divides them by Q.
Q=$([ "$MODE" = --quick ] && echo 50 || echo 1)
n() { echo $(( $1 / Q > 0 ? $1 / Q : 1 )); }
RES=$WORK/results; mkdir -p "$RES"
seq_no=0
# b ID LABEL BENCH-ARGS...: one workload against $SYS ($EPS, members $PIDS);
# skipped (keeping its number) if $ONLY is set and does not name ID.
b() {
  local id=$1 label=$2; shift 2
  seq_no=$((seq_no + 1))
  [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $id "* ]] || return 0
  echo "  $SYS: $label" >&2
  $BENCH --endpoints "$EPS" --pids "$PIDS" --system "$SYS" --id "$id" --label "$label" \
    --json "$RES/$(printf %02d $seq_no)-$id-$SYS.json" --summary-name "$id" "$@" | grep '^SUMMARY' >&2
}
matrix() {
  seq_no=0
  b put-1c "put, 1 client" --conns 1 --clients 1 --total "$(n 3000)" put --key-space-size 100000
  b put-100c "put, 100 clients / 10 conns" --conns 10 --clients 100 --total "$(n 50000)" put --key-space-size 100000
  b put-1000c "put, 1000 clients / 100 conns" --conns 100 --clients 1000 --total "$(n 100000)" put --key-space-size 100000
  b get-l-1c "get linearizable, 1 client" --conns 1 --clients 1 --total "$(n 5000)" range foo --consistency l
  b get-s-1c "get serializable, 1 client" --conns 1 --clients 1 --total "$(n 5000)" range foo --consistency s
  b get-l-100c "get linearizable, 100 clients / 10 conns" --conns 10 --clients 100 --total "$(n 100000)" range foo --consistency l
  b get-s-100c "get serializable, 100 clients / 10 conns" --conns 10 --clients 100 --total "$(n 100000)" range foo --consistency s
  b txn-100c "txn-put (4 puts), 100 clients / 10 conns" --conns 10 --clients 100 --total "$(n 30000)" txn-put --txn-ops 4 --key-space-size 100000 --val-size 256
  b lease-100c "lease keep-alive on a stream per client, 100 clients / 10 conns" --conns 10 --clients 100 --total "$(n 50000)" lease-keepalive
  b lease-once-100c "lease keep-alive, new stream each (KeepAliveOnce), 100 clients / 10 conns" --conns 10 --clients 100 --total "$(n 30000)" lease-keepalive --once
  b watch-lat-100 "watch latency, 100 watchers / 10 streams, 100 puts/s" --conns 10 watch-latency --watchers 100 --streams 10 --put-rate 100 --put-total "$(n 1000)"
  b watch-lat-1000 "watch latency, 1000 watchers / 100 streams, 100 puts/s" --conns 10 watch-latency --watchers 1000 --streams 100 --put-rate 100 --put-total "$(n 1000)"
  b watch-fanout "watch fan-out, 10000 watchers / 100 streams, 10 putters (events/s)" --conns 10 --clients 10 watch --watchers 10000 --streams 100 --put-total "$(n 200)"
  b load-1m "load $(n 1000000) keys (sequential), 200 clients / 20 conns" --conns 20 --clients 200 --total "$(n 1000000)" put --key-space-size "$(n 1000000)" --sequential-keys
}

T0=$(date +%s)
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "floor: fdatasync and loopback RTT" >&2
$BENCH --system floor --id fsync --label "4 KiB write + fdatasync" --json "$RES/00-fsync-floor.json" --summary-name fsync --total "$(n 2000)" fsync --dir "$WORK" | grep '^SUMMARY' >&2
$BENCH --system floor --id rtt --label "loopback TCP round trip, 64 B" --json "$RES/00-rtt-floor.json" --summary-name rtt --total "$(n 20000)" rtt | grep '^SUMMARY' >&2
# The serving stack's floor: the same client against a gRPC server that
# stores nothing (keel-bench null-server), on the workloads with targets.
echo "floor: null server" >&2
start_null 23390
SYS=null EPS=http://127.0.0.1:23390 PIDS=$NULL_PID
ONLY="put-1c put-100c put-1000c get-l-1c watch-lat-100 watch-lat-1000" matrix
stop_pids "$NULL_PID"
for SYS in etcd keel; do
  echo "3-member $SYS" >&2
  start_cluster "$SYS" 3 $([ "$SYS" = etcd ] && echo 23100 || echo 23200)
  sleep 1
  # The leader first: 1-connection workloads talk to it, on both systems.
  EPS=$($BENCH --endpoints "$EPS" leader)
  echo "  endpoints, leader first: $EPS" >&2
  matrix
  stop_pids "$PIDS"
done
T1=$(date +%s)
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

DATE=$(date -u +%F)
if [ "$MODE" = --quick ]; then OUT=$WORK/$DATE; else mkdir -p bench/results; OUT=bench/results/$DATE; fi
HEADER="## keel vs etcd, 3 members each, $DATE

Machine: $(machine).
Command: \`bench/vs-etcd.sh$([ "$MODE" != --quick ] || echo " --quick")\` — etcd's 3 members, then keel's 3, on 127.0.0.1 with
data dirs on the same disk; connections spread over all members round-robin, the leader's first
(1-connection workloads talk to the leader); 8-byte keys and 256-byte values
unless noted (watch: 32-byte keys and values); CPU is user+system time per member during the workload,
RSS is VmRSS after it; keel-bench runs on the same cores. The matrix took $((T1 - T0)) s for both systems;
load average (1/5/15 min) before: $LOAD0, after: $LOAD1 (anything above the benchmark's own load is other work on the machine).
"
$BENCH report --dir "$RES" --out "$OUT" --header "$HEADER" >&2
cat "$OUT.md"
# The full run's table goes into bench/RESULTS.md, between its markers.
if [ "$MODE" = matrix ] && grep -q '<!-- latest:begin -->' bench/RESULTS.md; then
  {
    sed -n '1,/<!-- latest:begin -->/p' bench/RESULTS.md
    sed "s#](\($DATE\.svg\))#](results/\1)#" "$OUT.md"
    echo
    echo "![latency distributions per workload, etcd (blue) and keel (red)](results/$DATE.svg)"
    sed -n '/<!-- latest:end -->/,$p' bench/RESULTS.md
  } > "$WORK/RESULTS.md"
  cp "$WORK/RESULTS.md" bench/RESULTS.md
  echo "updated bench/RESULTS.md" >&2
fi
