# Shared by bench/vs-etcd.sh (sourced, not run): setup, starting etcd and
# keel members and clusters, per-process CPU/RSS, and the SUMMARY-line
# helpers. Expects $NAME (work dir prefix) to be set. Only talks to
# 127.0.0.1, on ports 23000-23999.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v etcd >/dev/null; then
  apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
cargo build --release -p keel -p keel-bench >&2
KEEL=${CARGO_TARGET_DIR:-target}/release/keel
BENCH=${CARGO_TARGET_DIR:-target}/release/keel-bench
mkdir -p "${BENCH_DIR:-$PWD/target}"
WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" "$NAME.XXXX")
# Every server started is recorded here; the exit trap stops each of them
# (by pid: nobody else's processes).
PIDFILE="$WORK/pids"; : > "$PIDFILE"
cleanup() {
  local rc=$?
  xargs -r kill -9 < "$PIDFILE" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    echo "failed (exit $rc); results and logs kept in $WORK" >&2
  elif [ -z "${KEEP_WORK:-}" ]; then
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

wait_up() {
  for _ in $(seq 1 1200); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "no /health at $1" >&2; tail -n 20 "$WORK"/*.log >&2; return 1
}
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# cpu_ticks PIDS: CPU time (user+system, clock ticks) of the comma-separated
# PIDS, summed.
cpu_ticks() {
  local p t=0
  for p in ${1//,/ }; do t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$p/stat"))); done
  echo "$t"
}
# field NAME: the value of NAME=... on the SUMMARY line.
field() { grep '^SUMMARY' | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# start_member KIND NAME CLIENT_PORT PEER_PORT INITIAL_CLUSTER: starts one
# etcd or keel member in the background with etcd's flags, data in
# $WORK/NAME; sets $PID.
start_member() {
  local kind=$1 name=$2 c="http://127.0.0.1:$3" p=$4 ic=$5
  if [ "$kind" = etcd ]; then
    etcd --name "$name" --data-dir "$WORK/$name" --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$ic" --quota-backend-bytes 8589934592 >>"$WORK/$name.log" 2>&1 &
  else
    # KEEL_QUIC=1: also serve the native QUIC client API on client port + 50.
    local quic=()
    [ -n "${KEEL_QUIC:-}" ] && quic=(--listen-client-quic-urls "quic://127.0.0.1:$(($3 + 50))")
    $KEEL store --name "$name" --data-dir "$WORK/$name" --listen-client-urls "$c" --advertise-client-urls "$c" \
      --listen-peer-urls "quic://127.0.0.1:$p" --initial-advertise-peer-urls "quic://127.0.0.1:$p" \
      --initial-cluster "$ic" --quota-backend-bytes 8589934592 --log-level warn "${quic[@]}" >>"$WORK/$name.log" 2>&1 &
  fi
  PID=$!
  disown "$PID" # no "Killed" notices from this shell when stopped
  echo "$PID" >> "$PIDFILE"
}

# start_cluster KIND N BASE: N members named KIND0.., client ports BASE+70+i,
# peer ports BASE+80+i; waits until all serve. Sets $EPS (comma-separated
# client URLs) and $PIDS (comma-separated).
start_cluster() {
  local kind=$1 n=$2 base=$3 ic="" scheme i
  scheme=$([ "$kind" = etcd ] && echo http || echo quic)
  for ((i = 0; i < n; i++)); do ic="$ic${ic:+,}$kind$i=$scheme://127.0.0.1:$((base + 80 + i))"; done
  EPS=""; PIDS=""
  for ((i = 0; i < n; i++)); do
    start_member "$kind" "$kind$i" $((base + 70 + i)) $((base + 80 + i)) "$ic"
    EPS="$EPS${EPS:+,}http://127.0.0.1:$((base + 70 + i))"
    PIDS="$PIDS${PIDS:+,}$PID"
  done
  for e in ${EPS//,/ }; do wait_up "$e"; done
}

# stop_pids PIDS: kill -9 the comma-separated PIDS and wait until they are gone.
stop_pids() {
  local p
  for p in ${1//,/ }; do kill -9 "$p" 2>/dev/null || true; done
  for p in ${1//,/ }; do while kill -0 "$p" 2>/dev/null; do sleep 0.02; done; done
}

# machine: one line describing this machine and the disk under $WORK.
machine() {
  local cpu disk
  cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
  disk=$(df -T "$WORK" | awk 'NR==2 {print $2 " on " $1}')
  local rev; rev=$(git rev-parse --short HEAD)
  [ -z "$(git status --porcelain -- raft storage src Cargo.toml)" ] || rev="$rev + uncommitted changes"
  echo "$(nproc) cores ($cpu), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, Linux $(uname -r); disk: $disk; $(etcd --version | head -1); keel $rev"
}

# start_keel_with_apiserver: a 3-member keel store (client ports 23470+i,
# QUIC client API on 23520+i) and one API server on https://127.0.0.1:23490
# reaching it over QUIC, as under `keel up`, pinning the members'
# self-signed certificates; waits until it is ready. Sets $API_PID,
# $API_PORT, $PIDS (the members), and writes $WORK/kubeconfig.
start_keel_with_apiserver() {
  KEEL_QUIC=1 start_cluster keel 3 23400
  QUIC_EPS=""; : >"$WORK/store-quic-certs.pem"
  for i in 0 1 2; do
    QUIC_EPS="$QUIC_EPS${QUIC_EPS:+,}quic://127.0.0.1:$((23470 + i + 50))"
    for _ in $(seq 1 100); do [ -s "$WORK/keel$i/fixtures/client/cert.pem" ] && break; sleep 0.05; done
    cat "$WORK/keel$i/fixtures/client/cert.pem" >>"$WORK/store-quic-certs.pem"
  done
  API_PORT=23490
  $KEEL kubeconfig --cert-dir "$WORK/pki" --server "https://127.0.0.1:$API_PORT" --output "$WORK/kubeconfig" >/dev/null
  $KEEL apiserver --etcd-servers "$QUIC_EPS" --etcd-cafile "$WORK/store-quic-certs.pem" --secure-port $API_PORT \
    --bind-address 127.0.0.1 --cert-dir "$WORK/pki" >>"$WORK/apiserver.log" 2>&1 &
  API_PID=$!
  disown "$API_PID"
  echo "$API_PID" >>"$PIDFILE"
  for _ in $(seq 1 600); do
    curl -sf --cacert "$WORK/pki/ca.crt" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf --cacert "$WORK/pki/ca.crt" "https://127.0.0.1:$API_PORT/readyz" >/dev/null || {
    echo "API server not ready" >&2; tail -n 30 "$WORK/apiserver.log" >&2; exit 1
  }
}
