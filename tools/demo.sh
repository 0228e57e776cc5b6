#!/bin/sh
# tools/demo.sh — `make demo`: the whole story on a fresh machine, end to end.
#
# Mounts a kvfs cache in a temporary directory, generates a small model,
# serves a multi-turn conversation workload twice through the reference
# engine (cold, then warm from the cache), shows the time to first token each
# time, what the cache holds and how an operator sees it, and unmounts.
set -eu

B=${KVFS_BUILD:-build}
BIN=$(cd "$B/bin" && pwd)
WORK=$(mktemp -d /tmp/kvfs-demo-XXXXXX)
# NVMe segments need a disk filesystem (O_DIRECT): /var/tmp, not a tmpfs /tmp
NV=$(mktemp -d /var/tmp/kvfs-demo-nv-XXXXXX)
MNT=$WORK/mnt
STATE=$WORK/state
DRAM=${KVFS_DEMO_DRAM:-1G}

cleanup() {
	if grep -qs " $MNT fuse" /proc/mounts; then
		fusermount3 -u "$MNT" 2>/dev/null || fusermount3 -u -z "$MNT" 2>/dev/null || true
	fi
	rm -rf "$WORK" "$NV"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "1. Mount a kvfs cache: $DRAM of DRAM, 2G of NVMe segments in $NV, catalog in $STATE"
mkdir -p "$MNT"
run "$BIN/kvfs" --state "$STATE" --dram "$DRAM" --nvme "$NV:2G" "$MNT"
run df -h "$MNT"

say "2. A model: 8 layers, hidden 384, 6 heads (2 KV heads), seeded random weights"
run "$BIN/kvfs-genmodel" --out "$WORK/model" --layers 8 --hidden 384 --heads 6 --kv-heads 2 \
	--intermediate 1024 --seed 1

say "3. A multi-turn chat workload: a shared 500-token system prompt, 3 conversations of 3 turns"
run "$BIN/kvfs-llm" bench --emit-conversations "$WORK/chats.jsonl" --conversations 3 --turns 3
wc -l <"$WORK/chats.jsonl" | sed 's/^/conversations: /'

ENGINE="$BIN/kvfs-llm --model $WORK/model --cache $MNT/llm --conversations $WORK/chats.jsonl --max-new 24 --threads 1"

say "4. First pass, cold cache: every prompt is computed (its KV blocks saved to kvfs)"
# shellcheck disable=SC2086
$ENGINE --json >"$WORK/cold.json"

say "5. Second pass, warm cache: each prompt's prefix is loaded from kvfs"
# shellcheck disable=SC2086
$ENGINE --json >"$WORK/warm.json"

/usr/bin/python3 - "$WORK/cold.json" "$WORK/warm.json" <<'EOF'
import json, sys
cold, warm = (json.load(open(p)) for p in sys.argv[1:3])
print("\n%-4s %8s %14s %14s %12s" % ("req", "prompt", "cold TTFT ms", "warm TTFT ms", "reused"))
for i, (c, w) in enumerate(zip(cold["requests"], warm["requests"])):
    print("%-4d %8d %14.1f %14.1f %12s" % (i, c["prompt_tokens"], c["ttft_ms"], w["ttft_ms"],
          "%d/%d" % (w["reused_tokens"], w["prompt_tokens"])))
ct = sum(r["ttft_ms"] for r in cold["requests"]) / len(cold["requests"])
wt = sum(r["ttft_ms"] for r in warm["requests"]) / len(warm["requests"])
print("\nmean time to first token: cold %.1f ms, warm %.1f ms: %.1fx faster with kvfs"
      % (ct, wt, ct / wt if wt else float("inf")))
same = all(c.get("text") == w.get("text") for c, w in zip(cold["requests"], warm["requests"]))
print("answers identical cold and warm: %s" % ("yes" if same else "NO"))
fast = warm.get("cache", {}).get("path") == "fast"
print("libkvfs path: %s" % ("fast path (shared-memory rings)" if fast else "POSIX"))
EOF

say "6. What the cache holds"
run "$BIN/kvfsctl" status "$MNT"
run "$BIN/kvfsctl" du "$MNT/llm"
FIRST=$(ls "$MNT/llm" | head -1)
run "$BIN/kvfsctl" ls "$MNT/llm" | head -5
say "7. One cached block, decoded and verified (its key is vLLM's prompt hash)"
run "$BIN/kvfsctl" show "$MNT/llm/$FIRST" | head -8
printf '$ getfattr: user.kvfs.tier=%s user.kvfs.hits=%s\n' \
	"$(/usr/bin/python3 -c "import os,sys; print(os.getxattr(sys.argv[1], 'user.kvfs.tier').decode())" "$MNT/llm/$FIRST")" \
	"$(/usr/bin/python3 -c "import os,sys; print(os.getxattr(sys.argv[1], 'user.kvfs.hits').decode())" "$MNT/llm/$FIRST")"

say "8. Unmount (DRAM-only blocks go to NVMe), remount: every block is back, from NVMe"
run fusermount3 -u "$MNT"
while pgrep -f "kvfs --state $STATE" >/dev/null 2>&1; do sleep 0.05; done
run "$BIN/kvfs" --state "$STATE" --dram "$DRAM" --nvme "$NV:2G" "$MNT"
printf 'files in llm/: %s (back from NVMe: %s, dropped: %s)\n' "$(ls "$MNT/llm" | wc -l)" \
	"$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['restart_recovered'])" "$MNT/.kvfs/stats")" \
	"$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['restart_dropped'])" "$MNT/.kvfs/stats")"

say "9. Third pass after the restart: the prefixes load from NVMe"
# shellcheck disable=SC2086
$ENGINE --json >"$WORK/restarted.json"
/usr/bin/python3 - "$WORK/cold.json" "$WORK/restarted.json" "$MNT/.kvfs/stats" <<'EOF'
import json, sys
cold, again, st = (json.load(open(p)) for p in sys.argv[1:4])
ct = sum(r["ttft_ms"] for r in cold["requests"]) / len(cold["requests"])
at = sum(r["ttft_ms"] for r in again["requests"]) / len(again["requests"])
reused = sum(r["reused_tokens"] for r in again["requests"])
total = sum(r["prompt_tokens"] for r in again["requests"])
print("mean time to first token after the restart: %.1f ms (cold %.1f ms), %d/%d prompt tokens "
      "reused" % (at, ct, reused, total))
print("hits served from NVMe: %d, promoted back to DRAM: %d" % (st["hits_nvme"], st["promotions"]))
same = all(c.get("text") == w.get("text") for c, w in zip(cold["requests"], again["requests"]))
print("answers identical to the cold pass: %s" % ("yes" if same else "NO"))
EOF
run fusermount3 -u "$MNT"
say "Done. Run 'make test' for the test suites, 'make bench' for the benchmarks."
