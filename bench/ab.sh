#!/usr/bin/env bash
# Alternating rounds: etcd, this tree's keel and other keel builds, each on a
# fresh 3-member cluster in turn, so that a change is judged against its
# baseline under the same machine conditions (this machine's speed moves by
# ±20% within minutes; a matrix run each cannot tell a 10% change apart).
#
#   bench/ab.sh [ROUNDS] [KEEL_BINARY...]
#       ROUNDS (default 3) rounds of: etcd, then `target/release/keel` (this
#       tree, built first), then each KEEL_BINARY given (e.g. a build of the
#       baseline copied aside). Per system and round: put p50 with 1 client
#       (on the leader), put throughput and p99 with 100 clients over 10
#       connections spread over the members (50,000 puts), and the members'
#       CPU per put (user+system, all three) during the latter.
#
# Only talks to 127.0.0.1 (ports 23600-23699). Environment: BENCH_DIR (work
# dir parent, default target/), KEEP_WORK=1, AB_PUTS (default 50000).
ROUNDS=${1:-3}
case $ROUNDS in '' | *[!0-9]*) sed -n '2,16p' "$0"; exit 2 ;; esac
shift || true
others=()
for b in "$@"; do
  [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
  others+=("$(realpath "$b")")
done
NAME=ab
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
PUTS=${AB_PUTS:-50000}
TREE_KEEL=$KEEL
hz=$(getconf CLK_TCK)
echo "| round | system | put p50, 1 client (ms) | puts/s, 100 clients | p99, 100 clients (ms) | CPU µs per put, all members |"
echo "|---|---|---|---|---|---|"
for r in $(seq 1 "$ROUNDS"); do
  for sys in etcd "$TREE_KEEL" "${others[@]}"; do
    kind=keel; label=$sys
    if [ "$sys" = etcd ]; then kind=etcd; else KEEL=$sys; [ "$sys" = "$TREE_KEEL" ] && label="keel (this tree)"; fi
    start_cluster "$kind" 3 23600
    sleep 1
    eps=$($BENCH --endpoints "$EPS" leader)
    p50=$($BENCH --endpoints "${eps%%,*}" --conns 1 --clients 1 --total 3000 --summary-name x put --key-space-size 100000 | field p50_us)
    t0=$(cpu_ticks "$PIDS")
    out=$($BENCH --endpoints "$eps" --conns 10 --clients 100 --total "$PUTS" --summary-name x put --key-space-size 100000)
    t1=$(cpu_ticks "$PIDS")
    stop_pids "$PIDS"
    rm -rf "${WORK:?}/${kind}"[0-9]
    awk -v r="$r" -v s="$label" -v p50="$p50" -v ops="$(echo "$out" | field ops_per_s)" \
      -v p99="$(echo "$out" | field p99_us)" -v dt=$((t1 - t0)) -v hz="$hz" -v n="$PUTS" \
      'BEGIN { printf "| %d | %s | %.3f | %d | %.2f | %.1f |\n", r, s, p50 / 1000, ops, p99 / 1000, dt * 1e6 / hz / n }'
  done
done
