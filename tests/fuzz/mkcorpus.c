/*
 * tests/fuzz/mkcorpus.c — writes the generated seeds of the fuzz targets:
 * `make fuzz-corpus` (mkcorpus tests/fuzz/corpus). Each seed is a valid
 * input made by the project's own encoders (a native block, one cluster
 * message of every type, a node record, a ring with one request of every
 * kind), so the fuzzers start from deep inside each format; the text
 * targets get a few typical writes. Seeds are named seed-*; inputs a fuzzer
 * once crashed on are checked in beside them under other names and are
 * never rewritten here.
 *
 * Run it again when a format changes, and commit what changed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/ring.h"
#include "kvfs/format.h"
#include "rdma/rdma_i.h"

static const char *root;

static void put(const char *target, const char *name, const void *b, size_t n)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, target);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/%s/seed-%s", root, target, name);
	f = fopen(path, "wb");
	if (!f || fwrite(b, 1, n, f) != n || fclose(f)) {
		perror(path);
		exit(1);
	}
}

/* A seed with a selector byte in front. */
static void put_sel(const char *target, const char *name, uint8_t sel, const void *b, size_t n)
{
	uint8_t *buf = malloc(n + 1);

	if (!buf)
		exit(1);
	buf[0] = sel;
	memcpy(buf + 1, b, n);
	put(target, name, buf, n + 1);
	free(buf);
}

static void put_str(const char *target, const char *name, const char *s)
{
	put(target, name, s, strlen(s));
}

/* --- native blocks ------------------------------------------------------------------ */

static void block(const char *name, uint32_t layers, uint32_t heads, uint32_t dim, uint32_t tpb,
		  unsigned dtype, unsigned kind, const uint8_t *extra, size_t extra_len)
{
	struct kvfs_block_desc d = {.extra_cbor = extra, .extra_len = extra_len};
	const void *lp[8];
	uint32_t tokens[64];
	uint64_t lb, fb;
	uint8_t *buf, *data;
	char n[64];

	snprintf(d.layout.model_id, sizeof(d.layout.model_id), "fuzz/model-%s", name);
	d.layout.num_layers = layers;
	d.layout.num_kv_heads = heads;
	d.layout.head_dim = dim;
	d.layout.tokens_per_block = tpb;
	d.layout.dtype = (uint16_t)dtype;
	d.layout.kind = (uint16_t)kind;
	for (uint32_t i = 0; i < tpb; i++)
		tokens[i] = 1000 + 7 * i;
	d.tokens = tokens;
	for (int i = 0; i < 32; i++)
		d.parent.b[i] = (uint8_t)(i * 3);
	lb = kvfs_layout_layer_bytes(&d.layout);
	fb = kvfs_layout_file_bytes(&d.layout, extra_len);
	data = malloc(lb * layers);
	buf = malloc(fb);
	if (!data || !buf)
		exit(1);
	for (uint64_t i = 0; i < lb * layers; i++)
		data[i] = (uint8_t)(i * 13 + 1);
	for (uint32_t i = 0; i < layers; i++)
		lp[i] = data + i * lb;
	if (kvfs_block_encode(&d, lp, buf, fb, NULL)) {
		fprintf(stderr, "mkcorpus: block %s does not encode\n", name);
		exit(1);
	}
	/* as written, and with every checksum left for the harness to repair */
	snprintf(n, sizeof(n), "block-%s", name);
	put_sel("block", n, 0x00, buf, fb);
	snprintf(n, sizeof(n), "block-%s-fix", name);
	put_sel("block", n, 0x07, buf, fb);
	snprintf(n, sizeof(n), "block-%s-pieces", name);
	put_sel("block", n, 0x30 | 0x40, buf, fb);
	free(buf);
	free(data);
}

static void blocks(void)
{
	/* CBOR [1, "lora"]: an extra-keys array as vLLM writes it */
	static const uint8_t extra[] = {0x82, 0x01, 0x64, 'l', 'o', 'r', 'a'};

	block("kv1", 1, 1, 1, 1, KVFS_DTYPE_F16, KVFS_KIND_KV, NULL, 0);
	block("mla2", 2, 1, 4, 2, KVFS_DTYPE_BF16, KVFS_KIND_MLA, extra, sizeof(extra));
	block("kv16", 1, 2, 8, 16, KVFS_DTYPE_F32, KVFS_KIND_KV, NULL, 0);
}

/* --- cluster messages --------------------------------------------------------------- */

static void msg(const char *name, struct rdma_msg *m)
{
	static uint8_t buf[RDMA_MSG_SIZE];
	int n = rdma_msg_encode(m, buf, sizeof(buf));

	if (n < 0) {
		fprintf(stderr, "mkcorpus: message %s does not encode\n", name);
		exit(1);
	}
	put("proto", name, buf, (size_t)n);
}

static void messages(void)
{
	static struct rdma_msg m;

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_HELLO;
	m.req_id = 1;
	strcpy(m.u.hello.node, "node-a");
	m.u.hello.addr_len = 16;
	memset(m.u.hello.addr, 0x7f, 16);
	memset(m.u.hello.nonce, 0x11, RDMA_NONCE_LEN);
	msg("hello", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_CHALLENGE;
	m.req_id = 1;
	m.session = 42;
	strcpy(m.u.challenge.node, "node-b");
	memset(m.u.challenge.nonce, 0x22, RDMA_NONCE_LEN);
	memset(m.u.challenge.mac, 0x33, 32);
	msg("challenge", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_PROVE;
	m.req_id = 2;
	m.session = 42;
	memset(m.u.prove.mac, 0x44, 32);
	msg("prove", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_WELCOME;
	m.req_id = 2;
	m.session = 42;
	m.u.welcome.warm_addr = 0x1000;
	m.u.welcome.warm_key = 9;
	m.u.welcome.warm_len = 4096;
	msg("welcome", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_REFUSED;
	m.req_id = 2;
	m.status = -EACCES;
	msg("refused", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_LOOKUP;
	m.req_id = 3;
	m.session = 42;
	strcpy(m.u.path.path, "models/llama/0123abcd");
	m.u.path.path_len = (uint32_t)strlen(m.u.path.path);
	msg("lookup", &m);
	m.type = RDMA_MSG_FREE;
	msg("free", &m);
	m.type = RDMA_MSG_OFFLOAD;
	m.u.path.size = 8192;
	m.u.path.checksum = 0xfeedface;
	msg("offload", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_FILE;
	m.req_id = 3;
	m.session = 42;
	m.u.file.lease = 5;
	m.u.file.size = 8192;
	m.u.file.checksum = 0xfeedface;
	m.u.file.key = 77;
	m.u.file.total = 3;
	m.u.file.first = 1;
	m.u.file.n = 2;
	m.u.file.tier = REMOTE_TIER_DRAM;
	m.u.file.run[0] = (struct rdma_run){0x10000, 4096};
	m.u.file.run[1] = (struct rdma_run){0x30000, 2048};
	msg("file", &m);
	m.type = RDMA_MSG_GRANT;
	m.u.file.total = 2;
	m.u.file.first = 0;
	m.u.file.size = 6144;
	m.u.file.tier = REMOTE_TIER_LENT;
	msg("grant", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_RUNS;
	m.req_id = 4;
	m.session = 42;
	m.u.ref.lease = 5;
	m.u.ref.first = 2;
	msg("runs", &m);
	m.type = RDMA_MSG_RELEASE;
	m.req_id = 0;
	m.u.ref.first = 0;
	msg("release", &m);
	m.type = RDMA_MSG_DONE;
	m.req_id = 4;
	msg("done", &m);

	memset(&m, 0, sizeof(m));
	m.type = RDMA_MSG_STATUS;
	m.req_id = 4;
	m.session = 42;
	m.status = -ENOENT;
	msg("status", &m);
}

/* --- cluster index ---------------------------------------------------------------- */

static void index_seeds(void)
{
	struct rdma_node_rec rec = {.addr_len = 16, .lend_total = 1ull << 30, .lend_free = 1 << 20,
				    .boot = 0x0123456789abcdefull};
	static const char holders[] = "*4\r\n$6\r\nnode-a\r\n$4\r\ndram\r\n"
				      "$6\r\nnode-b\r\n$4\r\nlent\r\n";
	static const char slots[] = "*2\r\n*4\r\n:0\r\n:8191\r\n"
				    "*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$3\r\nabc\r\n"
				    "*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$3\r\ndef\r\n"
				    "*3\r\n:8192\r\n:16383\r\n*2\r\n$1\r\n?\r\n:7001\r\n";
	static const char nested[] = "*2\r\n*1\r\n:5\r\n$-1\r\n-ERR wrong type\r\n+OK\r\n";
	char text[512];
	int n;

	memset(rec.addr, 0xc0, 16);
	strcpy(rec.prov, "tcp;ofi_rxm");
	n = rdma_node_rec_format(text, sizeof(text), &rec);
	if (n < 0)
		exit(1);
	put_sel("index", "noderec", 0, text, (size_t)n);
	put_sel("index", "holders", 1, holders, sizeof(holders) - 1);
	put_sel("index", "replies", 1, nested, sizeof(nested) - 1);
	put_sel("index", "slots", 3, slots, sizeof(slots) - 1);
	put_sel("index", "tier", 2, "nvme", 4);
	put_sel("index", "path", 2, "models/llama/0123", 17);
}

/* --- fast-path rings ------------------------------------------------------------------ */

static void rings(void)
{
	enum { SQ = 4, CQ = 4, SQ_OFF = 1024, CQ_OFF = SQ_OFF + SQ * 64,
	       DATA_OFF = CQ_OFF + CQ * 32, DATA = 1024 };
	static _Alignas(64) uint8_t mem[DATA_OFF + DATA];
	struct kvfs_ring_hdr *h = (struct kvfs_ring_hdr *)mem;
	struct kvfs_ring_sqe *sq = (struct kvfs_ring_sqe *)(mem + SQ_OFF);
	struct kvfs_ring_desc d[2] = {{0, 7, 0, 0, 4096}, {1, 7, 100, 4096, 50}};
	uint8_t *data = mem + DATA_OFF;

	_Static_assert(sizeof(struct kvfs_ring_hdr) <= SQ_OFF, "header fits");
	h->magic = KVFS_RING_MAGIC;
	h->version = KVFS_RING_VERSION;
	h->sq_entries = SQ;
	h->cq_entries = CQ;
	h->sq_off = SQ_OFF;
	h->cq_off = CQ_OFF;
	h->data_off = DATA_OFF;
	h->data_bytes = DATA;
	strcpy((char *)data, "models/llama");
	sq[0] = (struct kvfs_ring_sqe){.op = KVFS_OP_OPEN_NS, .user_data = 1, .args = {0, 12}};
	memset(data + 64, 0xab, 64);
	sq[1] = (struct kvfs_ring_sqe){.op = KVFS_OP_MATCH, .user_data = 2, .args = {64, 2}};
	memcpy(data + 128, d, sizeof(d));
	sq[2] = (struct kvfs_ring_sqe){.op = KVFS_OP_READ, .user_data = 3, .args = {0, 128, 2}};
	memset(data + 192, 0xcd, 32);
	sq[3] = (struct kvfs_ring_sqe){.op = KVFS_OP_SAVE, .user_data = 4, .args = {7, 0, 4096, 192}};
	put_sel("ring", "ring", 0, mem, sizeof(mem));
	put_sel("ring", "name-ring", 'n', "ring.1234.0", 11);
	put_sel("ring", "name-buf", 'n', "buf.99.7", 8);
}

/* --- text inputs ---------------------------------------------------------------------- */

static void texts(void)
{
	static const char *const sizes[] = {"4096", "512K", "8G", "1TiB", "64MB", "15E",
					    "0.5",  "30",   "1e-3", "debug", "bf16", "mla",
					    "redis://localhost:6379",
					    "redis-cluster://127.0.0.1:7000,[::1]:7001"};
	static const char *const faults[] = {"nvme_write:3:EIO", "cat_write:1:ENOSPC:sticky\n",
					     "nvme_read:1:5,cat_write:2:ENOMEM",
					     "net_read:1:EBADMSG:sticky,nvme_fsync:10:EROFS"};
	static const char *const wheres[] = {"models/llama/0123abcd\n", "/a/b", "x"};
	char name[32];

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(name, sizeof(name), "%zu", i);
		put_str("size", name, sizes[i]);
	}
	for (size_t i = 0; i < sizeof(faults) / sizeof(faults[0]); i++) {
		snprintf(name, sizeof(name), "%zu", i);
		put_str("fault", name, faults[i]);
	}
	for (size_t i = 0; i < sizeof(wheres) / sizeof(wheres[0]); i++) {
		snprintf(name, sizeof(name), "%zu", i);
		put_str("where", name, wheres[i]);
	}
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: mkcorpus DIR\n");
		return 2;
	}
	root = argv[1];
	mkdir(root, 0755);
	blocks();
	messages();
	index_seeds();
	rings();
	texts();
	return 0;
}
