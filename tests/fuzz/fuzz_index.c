/*
 * tests/fuzz/fuzz_index.c — the cluster index's parsers (rdma/index.c):
 * what a node reads back from Redis, which any node of the cluster (or
 * anyone who can write to that Redis) controls.
 *
 * Input: one selector byte, then
 *   0  a node record ("v1 <hex addr> <total> <free> <provider> <boot>"),
 *      as MGET returns it: rdma_node_rec_parse();
 *   1  raw RESP bytes, parsed by hiredis's own reader as the query
 *      connection does, then walked as a HGETALL reply of holders:
 *      rdma_holders_reply();
 *   2  a tier name (rdma_tier_parse) and a path (rdma_path_ancestors);
 *   3  raw RESP bytes walked as a CLUSTER SLOTS reply: rdma_slots_reply().
 *
 * Oracles besides the sanitizers: a record that parses formats and parses
 * back to the same record, within the bounds the parser promises; every
 * holder handed on has a valid node id and a known tier; a slot range
 * handed on lies within the 16384 slots with a real port (and is found in
 * time: a range is never walked slot by slot from outside them); a tier
 * name round-trips; ancestors are increasing prefix lengths at '/'.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "rdma/rdma_i.h"
#include "tests/fuzz/fuzz.h"

static void node_rec(const char *s, size_t n)
{
	struct rdma_node_rec a, b;
	char text[512];
	int len;

	if (rdma_node_rec_parse(s, n, &a))
		return;
	CHECK(a.addr_len >= 1 && a.addr_len <= RDMA_ADDR_MAX);
	CHECK(a.lend_free <= a.lend_total);
	CHECK(memchr(a.prov, '\0', sizeof(a.prov)) != NULL);
	len = rdma_node_rec_format(text, sizeof(text), &a);
	CHECK(len > 0);
	CHECK(rdma_node_rec_parse(text, (size_t)len, &b) == 0);
	CHECK(memcmp(&a, &b, sizeof(a)) == 0);
}

static void holder(void *ctx, size_t i, const char *node, int tier)
{
	(void)ctx;
	CHECK(i == 7);
	CHECK(rdma_node_id_valid(node));
	CHECK(strcmp(rdma_tier_name(tier), "?") != 0);
}

/*
 * hiredis 0.14 (Debian 12) allocates an array's element table as soon as it
 * reads "*<count>" and has no limit on the count (1.x's maxelements): a
 * count of billions is a huge calloc before any element arrives. That is
 * the trusted Redis server's to say, not ours to parse, so such inputs are
 * left out rather than reported as our out-of-memory.
 */
static bool huge_array(const uint8_t *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t v = 0;

		if (d[i] != '*')
			continue;
		for (size_t k = i + 1; k < n && d[k] >= '0' && d[k] <= '9' && v <= 65536; k++)
			v = v * 10 + (uint64_t)(d[k] - '0');
		if (v > 65536)
			return true;
	}
	return false;
}

static void slot_range(void *ctx, const struct rdma_slot_range *r)
{
	(void)ctx;
	CHECK(r->first <= r->last && r->last < 16384);
	CHECK(r->port >= 1 && r->port <= 65535);
	CHECK(r->host_len == 0 || r->host != NULL);
}

static void holders(const uint8_t *d, size_t n, bool slots)
{
	redisReader *rd;
	void *reply = NULL;

	if (huge_array(d, n))
		return;
	rd = redisReaderCreate();
	CHECK(rd);
	if (redisReaderFeed(rd, (const char *)d, n) == REDIS_OK) {
		while (redisReaderGetReply(rd, &reply) == REDIS_OK && reply) {
			const redisReply *r = reply;
			int got = slots ? rdma_slots_reply(r, slot_range, NULL)
					: rdma_holders_reply(r, 7, holder, NULL);

			CHECK(got == -EBADMSG ||
			      (got >= 0 && (size_t)got <= (slots ? r->elements : r->elements / 2)));
			freeReplyObject(reply);
			reply = NULL;
		}
	}
	redisReaderFree(rd);
}

static void names(const char *s, size_t n)
{
	uint32_t anc[64];
	int t = rdma_tier_parse(s, n), k;

	if (t >= 0) {
		const char *name = rdma_tier_name(t);

		CHECK(strlen(name) == n && memcmp(name, s, n) == 0);
	} else {
		CHECK(t == -EINVAL);
	}
	k = rdma_path_ancestors(s, n, anc, 64);
	CHECK(k >= 0 && k <= 64);
	for (int i = 0; i < k; i++) {
		CHECK(anc[i] > 0 && anc[i] < n && s[anc[i]] == '/');
		CHECK(i == 0 || anc[i] > anc[i - 1]);
	}
}

int LLVMFuzzerInitialize(int *argc, char ***argv);

/*
 * rdma/index.c links libfabric, whose PSM provider library installs
 * handlers for SIGILL, SIGSEGV, SIGABRT... that exit(): libFuzzer leaves a
 * handler it finds in place, so a crash would read as a plain exit. Back
 * to the defaults before libFuzzer installs its own.
 */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const int sigs[] = {SIGILL, SIGSEGV, SIGBUS, SIGABRT, SIGFPE};

	(void)argc;
	(void)argv;
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		signal(sigs[i], SIG_DFL);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s;

	if (size < 1)
		return 0;
	/* an exact copy, so a read past the end is caught */
	s = malloc(size - 1 ? size - 1 : 1);
	CHECK(s);
	memcpy(s, data + 1, size - 1);
	switch (data[0] % 4) {
	case 0:
		node_rec(s, size - 1);
		break;
	case 1:
		holders((const uint8_t *)s, size - 1, false);
		break;
	case 2:
		names(s, size - 1);
		break;
	case 3:
		holders((const uint8_t *)s, size - 1, true);
		break;
	}
	free(s);
	return 0;
}
