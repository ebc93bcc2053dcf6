#!/bin/bash
# What one recycle costs, per side: CPU per request of the client (`charon
# ping -p 4`), charond and the echo instances, with recycling off and at
# maximum-requests = 100 (instances exec'd, then forked from a template:
# `template = true`), in alternating rounds; then the CPU of one start (the
# difference, over the starts counted in the log; with a template, its own
# CPU during the run counts with the instances'). Then what a bare
# process start costs on this machine (posix_spawn + exec + exit of a few
# programs), what a fork and exit costs (a recycle without exec), and what
# one cpuid instruction costs, if a C compiler is at hand.
# Usage: benches/scripts/recycle-cost.sh [ROUNDS] [COUNT]
# Run from the repo root after `cargo build --release`.
set -eu
ROUNDS=${1:-3}
COUNT=${2:-40000}
B=$PWD/target/release
DIR=$(mktemp -d /tmp/chr.XXXXXX)
DPID=
cleanup() {
  if [ -n "$DPID" ]; then kill -TERM "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true; fi
  rm -rf "$DIR"
}
trap cleanup EXIT

# CPU ns of a pid (user + system, from schedstat), 0 if gone.
cpu_ns() { awk '{print $1}' "/proc/$1/schedstat" 2>/dev/null || echo 0; }
# Sum of cpu_ns over charond's live children.
live_ns() {
  local t=0 p
  for p in $(cat "/proc/$DPID/task/$DPID/children"); do t=$((t + $(cpu_ns "$p"))); done
  echo $t
}
# Reaped children's CPU in ns (cutime + cstime, in clock ticks).
reaped_ns() { awk -v hz="$(getconf CLK_TCK)" '{print ($16 + $17) * 1e9 / hz}' "/proc/$DPID/stat"; }

one() { # MAXREQ TEMPLATE -> "starts client_ns charond_ns instances_ns wall_s"
  local mr=$1 tpl=${2:-false} d tp=
  d=$(mktemp -d "$DIR/r.XXXX")
  mkdir "$d/conf"
  printf 'exec = "%s"\nprestart-processes = true\nminimum-processes = 2\nmaximum-processes = 2\nmaximum-requests = %s\ntemplate = %s\n' \
    "$B/charon-echo" "$mr" "$tpl" > "$d/conf/system.echo.0.raw.toml"
  "$B/charond" --config-dir "$d/conf" --run-dir "$d/run" 2>"$d/log" &
  DPID=$!
  while [ "$(cat "$d/log" 2>/dev/null | grep -c 'started (slot')" -lt 2 ]; do sleep 0.05; done
  if [ "$tpl" = true ]; then
    while ! grep -q 'template ready' "$d/log"; do sleep 0.05; done
    tp=$(grep 'template started' "$d/log" | head -1 | sed 's/.*pid=\([0-9]*\).*/\1/')
  fi
  "$B/charon" ping --run-dir "$d/run" -c 500 -p 4 -s 0 >/dev/null
  local n0 s0 l0 r0 t0 n1 s1 l1 r1 t1
  n0=$(grep -c 'started (slot' "$d/log"); s0=$(cpu_ns $DPID); l0=$(live_ns); r0=$(reaped_ns)
  T0=0; [ -z "$tp" ] || T0=$(cpu_ns "$tp")
  t0=$(date +%s%N)
  /usr/bin/time -f "%U %S" -o "$d/client" "$B/charon" ping --run-dir "$d/run" -c "$COUNT" -p 4 -s 0 >/dev/null
  t1=$(date +%s%N)
  n1=$(grep -c 'started (slot' "$d/log"); s1=$(cpu_ns $DPID); l1=$(live_ns); r1=$(reaped_ns)
  kill -TERM $DPID; wait $DPID || true; DPID=
  # Without starts the same two instances ran throughout: their delta.
  # With starts, the live ones at the end were started during the run.
  # With starts, the live ones at the end were started during the run, but
  # for a template, whose CPU before the run is left out.
  [ "$n1" -eq "$n0" ] || l0=0
  [ -z "$tp" ] || [ "$n1" -eq "$n0" ] || l0=$T0
  awk -v n=$((n1 - n0)) -v s=$((s1 - s0)) -v i="$(awk -v a="$r1" -v b="$r0" -v c="$l1" -v e="$l0" 'BEGIN{printf "%.0f", a - b + c - e}')" \
      -v w=$((t1 - t0)) '{printf "%d %.0f %d %s %.3f\n", n, ($1 + $2) * 1e9, s, i, w / 1e9}' "$d/client"
}

echo "# $COUNT requests of 0 B at -p 4 per cell; per request in us: client charond instances = total; load average"
for r in $(seq "$ROUNDS"); do
  read -r _ c0 d0 i0 w0 < <(one 0)
  for tpl in false true; do
    read -r n c1 d1 i1 w1 < <(one 100 $tpl)
    awk -v C="$COUNT" -v n="$n" -v c0="$c0" -v d0="$d0" -v i0="$i0" -v w0="$w0" -v c1="$c1" -v d1="$d1" -v i1="$i1" -v w1="$w1" \
        -v how="$([ $tpl = true ] && echo 'template' || echo 'exec')" -v load="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
      printf "round: off %.1f %.2f %.1f = %.1f us (%.0f/s) | max-requests 100 by %s: %.1f %.2f %.1f = %.1f us (%.0f/s), %d starts | per start: charond %.0f us, instance %.0f us, client %.0f us | load %s\n",
        c0/C/1e3, d0/C/1e3, i0/C/1e3, (c0+d0+i0)/C/1e3, C/w0, how, c1/C/1e3, d1/C/1e3, i1/C/1e3, (c1+d1+i1)/C/1e3, C/w1, n,
        (d1-d0)/n/1e3, (i1-i0)/n/1e3, (c1-c0)/n/1e3, load }'
  done
done

CC=$(command -v cc || true)
[ -n "$CC" ] || { echo "# no cc: process start costs skipped"; exit 0; }
cat > "$DIR/spawn.c" <<'C'
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
extern char **environ;
static double us(struct rusage r) { return r.ru_utime.tv_sec * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_sec * 1e6 + r.ru_stime.tv_usec; }
int main(int argc, char **argv) {
  int n = atoi(argv[1]);
  struct rusage p0, c0, p1, c1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  getrusage(RUSAGE_SELF, &p0); getrusage(RUSAGE_CHILDREN, &c0);
  for (int i = 0; i < n; i++) {
    pid_t p; int st;
    if (posix_spawn(&p, argv[2], &fa, NULL, argv + 2, environ)) { perror("posix_spawn"); return 1; }
    waitpid(p, &st, 0);
  }
  getrusage(RUSAGE_SELF, &p1); getrusage(RUSAGE_CHILDREN, &c1);
  printf("%-30s spawner %4.0f us, child %5.0f us per start\n", argv[2], (us(p1) - us(p0)) / n, (us(c1) - us(c0)) / n);
  return 0;
}
C
cat > "$DIR/bare.c" <<'C'
void _start(void) { __asm__ volatile("mov $60, %%eax; xor %%edi, %%edi; syscall" ::: "memory"); }
C
echo 'int main(void) { return 0; }' > "$DIR/nop.c"
"$CC" -O2 "$DIR/spawn.c" -o "$DIR/spawn"
"$CC" -O2 -static -nostdlib "$DIR/bare.c" -o "$DIR/bare-no-libc"
"$CC" -O2 -static "$DIR/nop.c" -o "$DIR/static-glibc" 2>/dev/null || true
"$CC" -O2 "$DIR/nop.c" -o "$DIR/dynamic-glibc"
"$CC" -O2 "$DIR/nop.c" -o "$DIR/dynamic-glibc+libgcc_s" -Wl,--no-as-needed -lgcc_s
echo "# process start + exit, 2000 each (the child's CPU includes exec and exit)"
for p in bare-no-libc static-glibc dynamic-glibc dynamic-glibc+libgcc_s; do
  [ -x "$DIR/$p" ] && (cd "$DIR" && ./spawn 2000 "./$p")
done
"$DIR/spawn" 2000 "$B/charon-echo" --help
# What a recycle without exec would cost: fork and exit of a process with
# an echo instance's resident memory.
cat > "$DIR/forkexit.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
static double us(struct rusage r) { return r.ru_utime.tv_sec * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_sec * 1e6 + r.ru_stime.tv_usec; }
int main(int argc, char **argv) {
  int n = atoi(argv[1]);
  size_t len = (size_t)atoi(argv[2]) * 1024;
  char *m = malloc(len);
  memset(m, 1, len);
  struct rusage p0, c0, p1, c1;
  getrusage(RUSAGE_SELF, &p0); getrusage(RUSAGE_CHILDREN, &c0);
  for (int i = 0; i < n; i++) {
    pid_t p = fork();
    if (p == 0) { m[((size_t)i * 4096) % len] = 2; _exit(0); }
    int st;
    waitpid(p, &st, 0);
  }
  getrusage(RUSAGE_SELF, &p1); getrusage(RUSAGE_CHILDREN, &c1);
  printf("fork + exit, %s KiB resident: parent %.0f us, child %.0f us per fork\n", argv[2], (us(p1) - us(p0)) / n, (us(c1) - us(c0)) / n);
  return 0;
}
C
"$CC" -O2 "$DIR/forkexit.c" -o "$DIR/forkexit" -Wl,--no-as-needed -lgcc_s && "$DIR/forkexit" 2000 2048
if [ "$(uname -m)" = x86_64 ]; then
  # glibc's start-up (and libgcc_s's) detects the CPU with cpuid, which a
  # hypervisor traps: what one costs here.
  cat > "$DIR/cpuid.c" <<'C'
#include <cpuid.h>
#include <stdio.h>
#include <time.h>
static double ns(clockid_t c) { struct timespec t; clock_gettime(c, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(void) {
  unsigned r[4], n = 5000;
  double w0 = ns(CLOCK_MONOTONIC), c0 = ns(CLOCK_THREAD_CPUTIME_ID);
  for (unsigned i = 0; i < n; i++) __cpuid_count(4, i & 3, r[0], r[1], r[2], r[3]);
  double w1 = ns(CLOCK_MONOTONIC), c1 = ns(CLOCK_THREAD_CPUTIME_ID);
  printf("one cpuid instruction: %.2f us of wall time, %.2f us of the thread's CPU time\n", (w1 - w0) / n / 1e3, (c1 - c0) / n / 1e3);
  return 0;
}
C
  "$CC" -O2 "$DIR/cpuid.c" -o "$DIR/cpuid" && "$DIR/cpuid"
fi
