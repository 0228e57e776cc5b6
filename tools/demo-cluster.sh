#!/bin/sh
# tools/demo-cluster.sh — `make demo-cluster`: disaggregated serving on two
# kvfs nodes in a temporary directory (DESIGN §9).
#
# Starts a redis-server (the cluster index) and two kvfs daemons, "prefill"
# and "decode", joined by a shared token over the libfabric tcp provider on
# 127.0.0.1. The reference engine computes a prompt's KV on the prefill node
# (--role prefill), the router asks the cluster which node holds its prefix
# (kvfsctl route), the decode node prefetches the blocks from the prefill
# node and decodes (--role decode); then the same with push, where the
# prefill node writes the blocks into the decode node's DRAM as it saves
# them. Logits are compared with a single process doing both.
set -eu

B=${KVFS_BUILD:-build}
BIN=$(cd "$B/bin" && pwd)
WORK=$(mktemp -d /tmp/kvfs-demo-cluster-XXXXXX)
REDIS_PID=

cleanup() {
	for n in prefill decode; do
		if grep -qs " $WORK/$n/mnt fuse" /proc/mounts; then
			fusermount3 -u "$WORK/$n/mnt" 2>/dev/null ||
				fusermount3 -u -z "$WORK/$n/mnt" 2>/dev/null || true
		fi
	done
	[ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

say "1. The cluster index: a redis-server on 127.0.0.1:$PORT, and a shared token"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
	--logfile "$WORK/redis.log" &
REDIS_PID=$!
for i in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
head -c 32 /dev/urandom | base64 >"$WORK/token"

say "2. Two kvfs nodes: 'prefill' and 'decode' (1G DRAM each; decode lends 512M for pushes)"
for n in prefill decode; do
	mkdir -p "$WORK/$n/mnt"
	run "$BIN/kvfs" --state "$WORK/$n/state" --dram 1G --cluster "redis://127.0.0.1:$PORT" \
		--cluster-token "$WORK/token" --node-id "$n" --listen 127.0.0.1:0 --lend 512M \
		"$WORK/$n/mnt"
done
P=$WORK/prefill/mnt
D=$WORK/decode/mnt
for i in $(seq 50); do
	"$BIN/kvfsctl" --json status "$D" | grep -q '"peers_alive": 1' && break
	sleep 0.1
done

say "3. A model (6 layers, hidden 256) and a 2048-token prompt"
run "$BIN/kvfs-genmodel" --out "$WORK/model" --layers 6 --hidden 256 --heads 4 --kv-heads 2 \
	--intermediate 768 --max-pos 4096 --seed 1 >/dev/null
python3 - "$WORK/prompt.txt" <<'PY'
import random, sys
random.seed(7)
words = "cache block prefill decode node fabric token layer prefix index".split()
text = ""
while len(text) < 2048:
    text += random.choice(words) + " "
open(sys.argv[1], "w").write(text[:2048])
PY
python3 -c 'import sys; print(" ".join(str(b) for b in open(sys.argv[1],"rb").read()))' \
	"$WORK/prompt.txt" >"$WORK/tokens.txt"
LLM="$BIN/kvfs-llm --model $WORK/model --max-new 16 --prompt-file $WORK/prompt.txt"

say "4. One process doing both, for reference (no cache)"
run $LLM --no-cache --dump-logits "$WORK/ref.bin"

say "5. Prefill on node 'prefill': compute the prompt's KV, save its 128 blocks"
run $LLM --cache "$P/llama" --role prefill --dump-logits "$WORK/prefill.bin"
sleep 0.5 # the index is written in the background

say "6. The router's question: which node holds the longest prefix of this prompt?"
run "$BIN/kvfsctl" route "$D/llama" --tokens "$WORK/tokens.txt"

say "7. Decode on node 'decode': prefetch the blocks from 'prefill' over the fabric, load, decode"
run $LLM --cache "$D/llama" --role decode --dump-logits "$WORK/pull.bin"
cmp "$WORK/ref.bin" "$WORK/pull.bin" && echo "logits: bit-identical to the single process"
run "$BIN/kvfsctl" where "$D/llama/$(ls "$P/llama" | head -1)"

say "8. Push: prefill names the decode node; blocks land in its DRAM as they are saved"
run $LLM --cache "$P/llama-push" --role prefill --push decode
sleep 0.5
run "$BIN/kvfsctl" route "$D/llama-push" --tokens "$WORK/tokens.txt"
run $LLM --cache "$D/llama-push" --role decode --dump-logits "$WORK/push.bin"
cmp "$WORK/ref.bin" "$WORK/push.bin" && echo "logits: bit-identical to the single process"

say "9. What each node did"
for n in prefill decode; do
	printf '%s: ' "$n"
	python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); r=s["remote"]; p=s["prefetch"]; q=s["push"]
print("%d files brought in (%d bytes; from peers or from its own lent memory), served %d to peers, prefetched %d, pushed %d (%d fell back), pushed copies received %d" % (r["fetched"], r["fetched_bytes"], r["served"], p["fetched"], q["pushed"], q["fallbacks"], r["offloads_received"]))' \
		"$WORK/$n/mnt/.kvfs/stats"
done
