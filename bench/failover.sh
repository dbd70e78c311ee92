#!/usr/bin/env bash
# How long the API server is unavailable after the store member it talks to
# is killed, on this machine.
#
#   bench/failover.sh [ROUNDS]   (default 3) per round: a 3-member keel store
#                                and one API server over QUIC on 127.0.0.1
#                                (as under `keel up`); `kubectl create
#                                configmap` in a loop; `kill -9` of the
#                                member the API server is pinned to (the
#                                first); prints the time from the kill to
#                                the first create that succeeds, and
#                                whether the member killed led the store
#                                (then the time includes a Raft election:
#                                --election-timeout is 1 s).
#
# kubectl's own start-up (~0.1 s) bounds the resolution. Environment:
# BENCH_DIR (work dir parent, default target/), KEEP_WORK=1.
ROUNDS=${1:-3}
case $ROUNDS in '' | *[!0-9]*) sed -n '2,17p' "$0"; exit 2 ;; esac
NAME=failover
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
command -v kubectl >/dev/null || { echo "kubectl is needed" >&2; exit 1; }
BASE=$WORK
now() { date +%s.%N; }
for r in $(seq 1 "$ROUNDS"); do
  WORK=$BASE/round$r; mkdir -p "$WORK"
  start_keel_with_apiserver
  export KUBECONFIG=$WORK/kubeconfig
  for i in $(seq 1 5); do kubectl create configmap "before-$i" >/dev/null; done
  pinned=${PIDS%%,*}
  # When the member killed led the store, the time includes an election.
  role="a follower"
  [ "$($BENCH --endpoints "$EPS" leader | cut -d, -f1)" = "${EPS%%,*}" ] && role="the Raft leader"
  kill -9 "$pinned"; killed=$(now)
  i=0
  until timeout 30 kubectl create configmap "after-$i" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 300 ] || { echo "round $r: no create succeeded after the kill" >&2; exit 1; }
  done
  echo "round $r: first create $(echo "$(now) - $killed" | bc | sed 's/^\./0./') s after kill -9 of the pinned member, $role ($((i + 1)) attempts)"
  stop_pids "$API_PID,$PIDS"
done
