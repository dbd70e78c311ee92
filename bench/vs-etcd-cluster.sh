#!/usr/bin/env bash
# 3-member keel vs 3-member etcd 3.4, same machine, same disk, one run: the
# workloads of issue 3's targets. Prints a markdown table. Installs etcd from
# apt if missing. Only talks to 127.0.0.1.
NAME=vs-etcd-cluster
# shellcheck source=bench/common.sh
source "$(dirname "$0")/common.sh"

# ports: etcd 24x7x, keel 25x7x
start_cluster() { # kind
  local kind=$1 base ic="" eps=""
  base=$([ "$kind" = etcd ] && echo 24000 || echo 25000)
  for i in 0 1 2; do
    local scheme; scheme=$([ "$kind" = etcd ] && echo http || echo quic)
    ic="$ic${ic:+,}m$i=$scheme://127.0.0.1:$((base + 380 + i))"
  done
  for i in 0 1 2; do
    local c="http://127.0.0.1:$((base + 370 + i))" pport=$((base + 380 + i))
    if [ "$kind" = etcd ]; then
      etcd --name m$i --data-dir "$WORK/etcd$i" --listen-client-urls "$c" --advertise-client-urls "$c" \
        --listen-peer-urls http://127.0.0.1:$pport --initial-advertise-peer-urls http://127.0.0.1:$pport \
        --initial-cluster "$ic" >>"$WORK/etcd$i.log" 2>&1 &
    else
      $KEEL store --name m$i --data-dir "$WORK/keel$i" --listen-client-urls "$c" --advertise-client-urls "$c" \
        --listen-peer-urls quic://127.0.0.1:$pport --initial-advertise-peer-urls quic://127.0.0.1:$pport \
        --initial-cluster "$ic" --log-level warn >>"$WORK/keel$i.log" 2>&1 &
    fi
    echo $! >> "$PIDFILE"; echo $! >> "$WORK/$kind.pids"
    eps="$eps${eps:+,}$c"
  done
  for e in ${eps//,/ }; do wait_up "$e"; done
  echo "$eps"
}

echo "# keel vs etcd, 3 members"
echo
echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(etcd --version | head -1); disks under $WORK"
echo "Command: \`bench/vs-etcd-cluster.sh\` ($(date -u +%F)); 8-byte keys, 256-byte values; clients spread over all members"
echo
echo "| workload | target | p50 ms | p99 ms | ops/s |"
echo "|---|---|---|---|---|"
for t in etcd keel; do
  eps=$(start_cluster $t)
  sleep 1
  ep=$eps
  run "put, 1 client" --conns 1 --clients 1 --total 3000 put --key-space-size 100000
  run "put, 100 clients / 10 conns" --conns 10 --clients 100 --total 50000 put --key-space-size 100000
  run "put, 1000 clients / 100 conns" --conns 100 --clients 1000 --total 100000 put --key-space-size 100000
  run "get (linearizable), 1 client" --conns 1 --clients 1 --total 5000 range foo
  usage=""
  for p in $(cat "$WORK/$t.pids"); do usage="$usage $(cpu_s "$p")s/$(rss_mb "$p")MB"; done
  echo "| CPU s / RSS per member after the runs | $t |$usage | | |"
  xargs -r kill -9 < "$WORK/$t.pids" 2>/dev/null || true
  sleep 1
done
