# Shared by bench/vs-etcd*.sh (sourced, not run): setup, server bookkeeping
# and the table-row helper. Expects $NAME (work dir prefix) to be set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v etcd >/dev/null || { apt-get update -qq && apt-get install -y -qq etcd-server etcd-client >/dev/null; }
cargo build --release -p keel -p keel-bench >&2
KEEL=target/release/keel
BENCH=target/release/keel-bench
WORK=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}" "$NAME.XXXX")
# Servers start in command substitutions (not jobs of this shell): their
# PIDs are kept in a file so the exit trap stops every one of them.
PIDFILE="$WORK/pids"; : > "$PIDFILE"
cleanup() { xargs -r kill -9 < "$PIDFILE" 2>/dev/null || true; [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT

wait_up() { for _ in $(seq 1 1200); do curl -sf "$1/health" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "no /health at $1" >&2; tail -n 20 "$WORK"/*.log >&2; return 1; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
cpu_s() { awk '{printf "%.1f", ($14+$15)/100}' "/proc/$1/stat"; }
# field NAME: the value of NAME=... on the SUMMARY line.
field() { grep '^SUMMARY' | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# run NAME BENCH-ARGS...: one table row for target $t against endpoints $ep.
run() {
  local name=$1; shift
  local out
  out=$($BENCH --endpoints "$ep" --summary-name x "$@")
  printf '| %s | %s | %.3f | %.3f | %s |\n' "$name" "$t" \
    "$(echo "$(echo "$out" | field p50_us) / 1000" | bc -l)" \
    "$(echo "$(echo "$out" | field p99_us) / 1000" | bc -l)" \
    "$(echo "$out" | field ops_per_s)"
}
