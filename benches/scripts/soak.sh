#!/usr/bin/env bash
# Runs the reliability tests in their long (soak) versions and prints the
# figures each test reports, for RELIABILITY.md.
#
# Usage: benches/scripts/soak.sh [extra cargo test filter]   (default: all
# of tests/reliability.rs)
#
# CHARON_SOAK=1 makes each test in tests/reliability.rs use its soak size:
# 30 s of SIGKILL chaos, a 10 s crash-loop window, 100,000 requests with
# at least 4,998 recycles, a client doing 100,000 calls, 5 manager
# SIGKILL rounds, 2,000 random frames at a service and 5,000 at the control
# socket. One test at a time, so their figures do not disturb each other.
# Takes about 2-3 minutes on 2 cores (see RELIABILITY.md for the last run).
# Several tests need root (user switch, peer credentials, StrictModes).
set -euo pipefail
cd "$(dirname "$0")/../.."

filter=${1:-reliability::}
start=$(date +%s)
log=$(mktemp /tmp/charon-soak.XXXXXX)
trap 'rm -f "$log"' EXIT

cargo build -p charon --tests --quiet
status=0
CHARON_SOAK=1 cargo test -p charon --test integration "$filter" -- \
    --nocapture --test-threads=1 >"$log" 2>&1 || status=$?

# The figures lines (each test prints one or two), then the verdict.
# (--nocapture puts a test's first line after its "test ... " name.)
grep -oE '(chaos|crash loop|leaks|client-loop|manager SIGKILL|random bytes|control fuzz|10k at once)[ :].*' "$log" || true
grep -E '^test result|panicked|FAILED' "$log" || true
echo "soak: $(( $(date +%s) - start )) s, cargo test exit status $status"
exit "$status"
