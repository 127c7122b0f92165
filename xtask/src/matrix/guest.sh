#!/bin/sh
# Runs inside a kernel matrix VM (virtme-ng: the host's root filesystem, read-only, with writes
# going to an overlay; OUT is shared read-write with the host). It mounts what a fresh node has
# to mount, then runs each line of OUT/plan, `NAME BINARY [ARGS...]`, a test binary built on the
# host, in the directory DIR as cargo runs them, with OUT/env's variables, writing its output to OUT/NAME.log and
# `NAME EXIT_CODE SECONDS` to OUT/status. Usage: guest.sh OUT DIR
OUT="$1"
DIR="$2"
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
# cgroup v2 is mounted by virtme-ng at /sys/fs/cgroup. Modules the tests' veths, qdiscs and
# nftables rules need (the kernel loads most on demand; these it does not).
for module in veth sch_ingress; do
    modprobe "$module" || echo "modprobe $module failed" >> "$OUT/setup.log"
done
echo "kernel $(uname -r)" > "$OUT/kernel"
# Emulated CPUs are several times slower than the host's: the harness stretches its time
# limits (never its waits) by this much (tests/src/poll.rs).
export LIMITER_TEST_TIME_SCALE=3
# The other builds of the agent the tests run (xtask's other_agents.rs), as the host named them.
if [ -f "$OUT/env" ]; then . "$OUT/env"; fi
while read -r name binary args; do
    [ -n "$name" ] || continue
    start=$(date +%s)
    # shellcheck disable=SC2086 # the test filters are separate words
    (cd "$DIR" && "$binary" $args) > "$OUT/$name.log" 2>&1
    echo "$name $? $(( $(date +%s) - start ))" >> "$OUT/status"
done < "$OUT/plan"
# A line the host waits for: the plan ran to its end (a guest that died midway has none).
echo done >> "$OUT/status"
