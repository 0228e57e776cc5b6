#!/bin/sh
# tools/bench.sh — `make bench`: run every kvfs-bench experiment, the remote
# transport alone (rdma_bench) and the reference engine (kvfs-llm bench), and
# keep the results.
#
#   KVFS_BUILD=build sh tools/bench.sh
#
# Writes $KVFS_BUILD/bench/results.txt (the tables, as printed) and
# $KVFS_BUILD/bench/results.json (kvfs-bench's figures as JSON;
# results-cluster.json for `kvfs-bench cluster`). The
# benchmarks start and remove their own daemons and mounts; they need
# /dev/fuse and fusermount3.
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

# kvfs-llm bench against a fresh mount; the model is generated (seeded).
engine_bench() {
	work=$(mktemp -d /var/tmp/kvfs-engine-bench.XXXXXX) || return 1
	mkdir "$work/mnt"
	erc=0
	if "$B/bin/kvfs-genmodel" --out "$work/model" --layers 6 --hidden 256 --heads 4 \
		--kv-heads 2 --intermediate 768 --seed 1 >/dev/null &&
		"$B/bin/kvfs" --state "$work/state" --dram 2G "$work/mnt"; then
		"$B/bin/kvfs-llm" bench --model "$work/model" --kvfs "$work/mnt" \
			--tmpfs /dev/shm || erc=$?
		fusermount3 -u "$work/mnt" || fusermount3 -u -z "$work/mnt" || true
	else
		erc=1
	fi
	rm -rf "$work"
	return "$erc"
}

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
	# Disaggregated serving: prefill->decode handoff (pull, push) against
	# recomputing, on two daemons and a redis-server; KV-aware routing on
	# the Mooncake trace (shipped compressed in tools/workloads/).
	if [ "$rc" = 0 ]; then
		gzip -dc tools/workloads/mooncake-conversation-trace.jsonl.gz >"$OUT/mooncake.jsonl" &&
			"$BIN" cluster --trace "$OUT/mooncake.jsonl" --json "$OUT/results-cluster.json" ||
			rc=$?
	fi
	# The reference engine: time to first token with kvfs (libkvfs's fast
	# path), with plain files on tmpfs (its POSIX path) and with no cache.
	if [ "$rc" = 0 ]; then
		echo
		echo "== engine: kvfs-llm bench (multi-turn, long-doc, 4k prefix), kvfs --dram 2G vs tmpfs vs no cache =="
		engine_bench || rc=$?
	fi
	echo "$rc" >"$rcfile"
} | tee "$OUT/results.txt"
rc=$(cat "$rcfile" 2>/dev/null || echo 1)
rm -f "$rcfile"

echo
echo "bench: tables in $OUT/results.txt, JSON in $OUT/results.json"
if [ "$rc" != 0 ]; then
	echo "bench: a benchmark failed (exit $rc)" >&2
	exit "$rc"
fi
