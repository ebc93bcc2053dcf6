#!/bin/sh
# Where a Charon request's time goes: syscalls per request on the client,
# on an echo instance and in charond (strace -c), and instruction counts of
# the client's calls (valgrind --tool=callgrind). Needs strace and valgrind;
# the bench itself needs neither. Usage: benches/scripts/profile.sh [COUNT] [SIZE]
# Run from the repo root after `cargo bench --bench roundtrip --no-run`.
set -eu
COUNT=${1:-2000}
SIZE=${2:-0}
BENCH=$(ls -t target/release/deps/roundtrip-* | grep -v '\.d$' | head -1)
ECHO=$PWD/target/release/charon-echo
CHAROND=$PWD/target/release/charond
DIR=$(mktemp -d /tmp/chp.XXXXXX)
DPID=
cleanup() {
  if [ -n "$DPID" ]; then
    KIDS=$(pgrep -P "$DPID" || true)
    kill -KILL "$DPID" $KIDS 2>/dev/null || true
    wait "$DPID" 2>/dev/null || true
    # Orphaned instances are reaped by init; wait until they are gone so
    # none writes into the dir after it is removed.
    for k in $KIDS; do
      n=0; while kill -0 "$k" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done
    done
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT
mkdir "$DIR/conf"
printf 'exec = "%s"\nprestart-processes = true\nminimum-processes = 1\nmaximum-processes = 1\nmaximum-requests = 0\n' "$ECHO" \
  > "$DIR/conf/system.echo.0.raw.toml"
"$CHAROND" --config-dir "$DIR/conf" --run-dir "$DIR/run" 2>"$DIR/log" &
DPID=$!
while ! grep -q 'started (slot' "$DIR/log" 2>/dev/null; do sleep 0.05; done
"$BENCH" --client-loop "$DIR/run" 100 "$SIZE" >/dev/null
INST=$(pgrep -P $DPID | head -1)
echo "== client loop alone ($COUNT calls of $SIZE bytes)"
"$BENCH" --client-loop "$DIR/run" "$COUNT" "$SIZE"
strace -c -f -o "$DIR/inst.strace" -p "$INST" & S1=$!
strace -c -f -o "$DIR/mgr.strace" -p "$DPID" & S2=$!
sleep 0.5
strace -c -f -o "$DIR/client.strace" "$BENCH" --client-loop "$DIR/run" "$COUNT" "$SIZE" >/dev/null
sleep 0.2; kill -INT $S1 $S2; wait $S1 $S2 || true
for side in client inst mgr; do
  echo "== strace -c: $side (for $COUNT requests)"; head -25 "$DIR/$side.strace"
done
echo "== callgrind: client, 200 calls"
valgrind --tool=callgrind --callgrind-out-file="$DIR/cg.client" "$BENCH" --client-loop "$DIR/run" 200 "$SIZE" >/dev/null 2>&1
callgrind_annotate --inclusive=yes "$DIR/cg.client" 2>/dev/null | head -40
echo "== callgrind: an echo instance serving $COUNT requests"
kill -KILL "$DPID" $(pgrep -P "$DPID" || true) 2>/dev/null || true
wait "$DPID" 2>/dev/null || true
mkdir "$DIR/conf2"
printf 'exec = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s/cg.inst.%%p", "%s"]\nprestart-processes = true\nminimum-processes = 1\nmaximum-processes = 1\nmaximum-requests = 0\nunresponsive-timeout = 0\n' "$DIR" "$ECHO" \
  > "$DIR/conf2/system.echo.0.raw.toml"
"$CHAROND" --config-dir "$DIR/conf2" --run-dir "$DIR/run2" 2>"$DIR/log2" &
DPID=$!
while ! grep -q 'started (slot' "$DIR/log2" 2>/dev/null; do sleep 0.05; done
"$BENCH" --client-loop "$DIR/run2" "$COUNT" "$SIZE" >/dev/null
INST=$(pgrep -P $DPID | head -1)
kill -TERM "$INST"
# The manager starts a replacement (under callgrind too): read this pid's.
while kill -0 "$INST" 2>/dev/null; do sleep 0.1; done
callgrind_annotate --inclusive=yes "$DIR/cg.inst.$INST" 2>/dev/null | grep -E "PROGRAM TOTALS|charon_|main" | grep -v rustc/ | head -30
