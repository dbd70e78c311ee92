#!/usr/bin/env bash
# Single-member keel vs single-member etcd 3.4, same machine, same disk, one
# run. Prints a markdown table; `bench/vs-etcd.sh > bench/RESULTS.md`.
# Installs etcd from apt if missing. Only talks to 127.0.0.1.
NAME=vs-etcd
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"
KEYS=${BENCH_RESTART_KEYS:-1000000}

start_etcd() {
  etcd --name e1 --data-dir "$WORK/etcd" --listen-client-urls http://127.0.0.1:23790 \
    --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800 \
    --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster e1=http://127.0.0.1:23800 \
    --quota-backend-bytes 8589934592 >>"$WORK/etcd.log" 2>&1 &
  echo $! | tee -a "$PIDFILE"
}
start_keel() {
  $KEEL store --name k1 --data-dir "$WORK/keel" --listen-client-urls http://127.0.0.1:23791 \
    --advertise-client-urls http://127.0.0.1:23791 --listen-peer-urls quic://127.0.0.1:23801 \
    --initial-advertise-peer-urls quic://127.0.0.1:23801 --initial-cluster k1=quic://127.0.0.1:23801 \
    --quota-backend-bytes 8589934592 --log-level warn >>"$WORK/keel.log" 2>&1 &
  echo $! | tee -a "$PIDFILE"
}

echo "# keel vs etcd, single member"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(etcd --version | head -1); disk under $WORK"
echo "Command: \`bench/vs-etcd.sh\` ($(date -u +%F))"
echo
out=$($BENCH --total 2000 --summary-name fsync fsync --dir "$WORK")
echo "fdatasync of 4 KiB on this disk: p50 $(echo "$out" | field p50_us) µs, p99 $(echo "$out" | field p99_us) µs"
echo
echo "| workload | target | p50 ms | p99 ms | ops/s |"
echo "|---|---|---|---|---|"
declare -A PIDS
PIDS[etcd]=$(start_etcd); PIDS[keel]=$(start_keel)
wait_up http://127.0.0.1:23790; wait_up http://127.0.0.1:23791
for t in etcd keel; do
  ep=$([ $t = etcd ] && echo http://127.0.0.1:23790 || echo http://127.0.0.1:23791)
  run "put, 1 client" --conns 1 --clients 1 --total 3000 put --key-space-size 100000
  run "put, 100 clients / 10 conns" --conns 10 --clients 100 --total 50000 put --key-space-size 100000
  run "get (linearizable), 1 client" --conns 1 --clients 1 --total 5000 range foo
done
echo
echo "| restart with $KEYS keys | target | load ops/s | restart to serving s | RSS MB |"
echo "|---|---|---|---|---|"
for t in etcd keel; do
  ep=$([ $t = etcd ] && echo http://127.0.0.1:23790 || echo http://127.0.0.1:23791)
  load=$($BENCH --endpoints "$ep" --conns 10 --clients 200 --total "$KEYS" --summary-name load put --key-space-size "$KEYS" --sequential-keys | field ops_per_s)
  rss=$(rss_mb "${PIDS[$t]}")
  kill -9 "${PIDS[$t]}"; while kill -0 "${PIDS[$t]}" 2>/dev/null; do sleep 0.02; done
  t0=$(date +%s.%N)
  PIDS[$t]=$([ $t = etcd ] && start_etcd || start_keel)
  wait_up "$ep"
  t1=$(date +%s.%N)
  printf '| %s | %s | %s | %.2f | %s |\n' "$KEYS keys" "$t" "$load" "$(echo "$t1 - $t0" | bc -l)" "$rss"
done
