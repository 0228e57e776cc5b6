#!/bin/sh
# tools/bench.sh — `make bench`: run every kvfs-bench experiment, keep the results.
#
#   KVFS_BUILD=build sh tools/bench.sh
#
# Writes $KVFS_BUILD/bench/results.txt (the tables, as printed) and
# $KVFS_BUILD/bench/results.json (the same figures as JSON). kvfs-bench starts
# and removes its own daemons and mounts; it needs /dev/fuse and fusermount3.
set -e

B=${KVFS_BUILD:-build}
BIN="$B/bin/kvfs-bench"
OUT="$B/bench"

if [ ! -x "$BIN" ]; then
	echo "bench: $BIN not found; run make first" >&2
	exit 1
fi
mkdir -p "$OUT"

if [ "$(id -u)" != 0 ]; then
	echo "bench: not root, so these parts are reduced:" >&2
	echo "  - the daemon cannot raise the mount's bdi read-ahead (needs root): the" >&2
	echo "    read-ahead pair in fuse-settings may compare equal settings (see its ra/req notes)" >&2
	if [ "$(stat -f -c %T /dev/shm 2>/dev/null)" != tmpfs ]; then
		echo "  - /dev/shm is not tmpfs and a tmpfs cannot be mounted: throughput fails" >&2
	fi
	echo "  (cold reads use posix_fadvise(DONTNEED) per file, which needs no root)" >&2
fi

# POSIX sh has no pipefail: carry the benchmark's exit status past tee.
rcfile="$OUT/.rc"
rm -f "$rcfile"
{
	rc=0
	"$BIN" all --json "$OUT/results.json" || rc=$?
	# The remote tier's transport alone (library level, no mounts): fetches
	# against a raw TCP socket and Redis GET, and a 512-block index lookup.
	if [ "$rc" = 0 ] && [ -x "$B/tests/rdma_bench" ]; then
		echo
		echo "== remote transport: build/tests/rdma_bench 20 (loopback, medians) =="
		"$B/tests/rdma_bench" 20 2>/dev/null || rc=$?
	fi
	echo "$rc" >"$rcfile"
} | tee "$OUT/results.txt"
rc=$(cat "$rcfile" 2>/dev/null || echo 1)
rm -f "$rcfile"

echo
echo "bench: tables in $OUT/results.txt, JSON in $OUT/results.json"
if [ "$rc" != 0 ]; then
	echo "bench: kvfs-bench failed (exit $rc)" >&2
	exit "$rc"
fi
