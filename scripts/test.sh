#!/usr/bin/env bash
# keel's test suite: unit, property, end-to-end (real etcdctl and etcd) and
# loom model tests. Needs etcd-server, etcd-client and python3-kubernetes
# (apt) for the differential, etcdctl and Python client tests; .ci/run
# installs them.
set -euo pipefail
cd "$(dirname "$0")/.."

# The keel binary the end-to-end tests start, with its crash points compiled
# in (inert unless FAILPOINTS arms them; the fault campaign does).
cargo build --bin keel --features failpoints
# Everything but the fault campaign, then the campaign on its own so that its
# totals (ops, faults injected, anomalies) are printed.
cargo test --workspace -- --skip campaign
cargo test -p keel-tests --test jepsen -- --nocapture

# loom models of the shared-state concurrency (own target dir: --cfg loom
# rebuilds every dependency).
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
for t in raft/tests/loom_*.rs storage/tests/loom_*.rs; do
  [ -e "$t" ] || continue
  crate_dir=${t%%/*}
  pkg=$([ "$crate_dir" = raft ] && echo keel-raft || echo keel-storage)
  # Without the default features (the QUIC transport, the server): no
  # tokio, which has a loom mode of its own that the rest of the async
  # stack does not build in. The loom-modelled code needs none of it.
  name=$(basename "$t" .rs)
  RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p "$pkg" --no-default-features --release --test "$name"
done
