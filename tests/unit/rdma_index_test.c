/*
 * tests/unit/rdma_index_test.c — the cluster index (rdma/index.c) against a
 * real redis-server on a unix socket, started and killed by this suite:
 * the key schema and node records (pure); what publish/unpublish write,
 * read back with a raw hiredis connection; batched lookups in one round
 * trip; membership: heartbeats refreshed, an expired heartbeat makes a
 * node dead and its entries ignored, a closed node leaves at once; Redis
 * killed and restarted empty: errors counted, the node keeps answering
 * (with -ENOTCONN, fast), reconnects and resynchronises its entries,
 * including changes made while Redis was down; entries a previous
 * incarnation left are cleared on start; directory ancestors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "rdma/rdma_i.h"
#include "tests/unit/rdma_testlib.h"

static struct tl_redis rs;

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	if (!tl_have_redis())
		return 0; /* each test skips */
	return tl_redis_start(&rs);
}

static int group_teardown(void **state)
{
	(void)state;
	if (rs.dir[0])
		tl_redis_stop(&rs);
	return 0;
}

static redisContext *raw(void)
{
	redisContext *c = redisConnectUnix(rs.sock);

	assert_non_null(c);
	assert_int_equal(c->err, 0);
	return c;
}

static redisReply *q(redisContext *c, const char *fmt, ...)
{
	va_list ap;
	redisReply *r;

	va_start(ap, fmt);
	r = redisvCommand(c, fmt, ap);
	va_end(ap);
	assert_non_null(r);
	return r;
}

/* HGET <key> <field> as a string ("" if nil). */
static void hget(redisContext *c, const char *key, const char *field, char *out, size_t cap)
{
	redisReply *r = q(c, "HGET %s %s", key, field);

	snprintf(out, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
	freeReplyObject(r);
}

static long long integer(redisContext *c, const char *fmt, const char *a, const char *b)
{
	redisReply *r = b ? q(c, fmt, a, b) : q(c, fmt, a);
	long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -999;

	freeReplyObject(r);
	return v;
}

#define stats tl_stats

#define NEED_REDIS()                                                                               \
	do {                                                                                       \
		if (!rs.dir[0])                                                                    \
			skip();                                                                    \
	} while (0)

/* --- pure ----------------------------------------------------------------- */

static void test_key_schema(void **state)
{
	char buf[64];
	struct rdma_node_rec rec = {.addr = {0x02, 0x00, 0xab, 0xcd},
				    .addr_len = 4,
				    .lend_total = 1 << 30,
				    .lend_free = 12345,
				    .boot = 0x0123456789abcdefull},
			     back;
	uint32_t anc[8];
	static const char *const bad[] = {
		"v2 0200abcd 1073741824 12345 tcp;ofi_rxm 0123456789abcdef",  /* version */
		"v1 0200abcd 1073741824 12345 tcp",			      /* boot missing */
		"v1 0200abcd 1073741824 12345 tcp 0123456789abcdef x",	      /* one too many */
		"v1 0200abcd 1073741824 12345 tcp 0123456789abcde",	      /* short boot */
		"v1 0200abcd 1073741824 12345 tcp 0123456789abcdeg",	      /* boot not hex */
		"v1 0200abc 1073741824 12345 tcp 0123456789abcdef",	      /* odd hex */
		"v1 0200abzz 1073741824 12345 tcp 0123456789abcdef",	      /* not hex */
		"v1 0200ABCD 1073741824 12345 tcp 0123456789abcdef",	      /* upper case */
		"v1 0200abcd 100 12345 tcp 0123456789abcdef",		      /* free > total */
		"v1 0200abcd -1 0 tcp 0123456789abcdef",		      /* negative */
		"v1 0200abcd 99999999999999999999999 0 tcp 0123456789abcdef", /* overflow */
		"v1  0200abcd 1073741824 12345 tcp 0123456789abcdef",	      /* double space */
		"v1 0200abcd 1073741824 12345 tcp 0123456789abcdef ",	      /* trailing space */
		" v1 0200abcd 1073741824 12345 tcp 0123456789abcdef",	      /* leading space */
		"v1  1073741824 12345 tcp 0123456789abcdef",		      /* empty address */
		"",
	};

	(void)state;
	assert_int_equal(rdma_key(buf, sizeof(buf), "kvfs", "f:", "a/b.bin"), 14);
	assert_string_equal(buf, "kvfs:f:a/b.bin");
	rdma_key(buf, sizeof(buf), "c1", "node:", "n-1");
	assert_string_equal(buf, "c1:node:n-1");
	rdma_key(buf, sizeof(buf), "c1", "held:", "n-1");
	assert_string_equal(buf, "c1:held:n-1");
	rdma_key(buf, sizeof(buf), "c1", "nodes", NULL);
	assert_string_equal(buf, "c1:nodes");
	rdma_key(buf, sizeof(buf), "c1", "dirs", NULL);
	assert_string_equal(buf, "c1:dirs");
	assert_int_equal(rdma_key(buf, 8, "kvfs", "f:", "a/b.bin"), -ENAMETOOLONG);

	snprintf(rec.prov, sizeof(rec.prov), "tcp;ofi_rxm");
	assert_int_equal(rdma_node_rec_format(buf, sizeof(buf), &rec), 57);
	assert_string_equal(buf, "v1 0200abcd 1073741824 12345 tcp;ofi_rxm 0123456789abcdef");
	assert_int_equal(rdma_node_rec_parse(buf, strlen(buf), &back), 0);
	assert_int_equal(back.addr_len, 4);
	assert_memory_equal(back.addr, rec.addr, 4);
	assert_int_equal(back.lend_total, 1 << 30);
	assert_int_equal(back.lend_free, 12345);
	assert_string_equal(back.prov, "tcp;ofi_rxm");
	assert_int_equal(back.boot, 0x0123456789abcdefull);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(rdma_node_rec_parse(bad[i], strlen(bad[i]), &back), -EBADMSG);
	snprintf(rec.prov, sizeof(rec.prov), "a b");
	assert_int_equal(rdma_node_rec_format(buf, sizeof(buf), &rec), -EINVAL);

	assert_string_equal(rdma_tier_name(REMOTE_TIER_DRAM), "dram");
	assert_string_equal(rdma_tier_name(REMOTE_TIER_LENT), "lent");
	assert_int_equal(rdma_tier_parse("nvme", 4), REMOTE_TIER_NVME);
	assert_int_equal(rdma_tier_parse("gpu", 3), REMOTE_TIER_GPU);
	assert_int_equal(rdma_tier_parse("dra", 3), -EINVAL);
	assert_int_equal(rdma_tier_parse("drams", 5), -EINVAL);

	assert_int_equal(rdma_path_ancestors("a/bc/d.bin", 10, anc, 8), 2);
	assert_int_equal(anc[0], 1);
	assert_int_equal(anc[1], 4);
	assert_int_equal(rdma_path_ancestors("top.bin", 7, anc, 8), 0);
}

/* --- with redis ----------------------------------------------------------- */

static void wait_flush(remote *r)
{
	assert_int_equal(tl_flush(r, 300), 0);
}

static void test_publish_writes_schema(void **state)
{
	remote *A;
	redisContext *c;
	redisReply *r;
	char v[256];
	struct rdma_node_rec rec;
	uint32_t alen;
	const uint8_t *addr;
	long long pttl;

	(void)state;
	NEED_REDIS();
	A = tl_open("nodeA", NULL, 0, rs.url, "t1", NULL, 1000, 200);
	assert_non_null(A);
	c = raw();
	wait_flush(A);
	remote_publish(A, "a/b/c.bin", REMOTE_TIER_DRAM);
	remote_publish(A, "a/x.bin", REMOTE_TIER_NVME);
	remote_publish(A, "a/x.bin", REMOTE_TIER_NVME); /* unchanged: not requeued */
	remote_publish(A, "/abs", REMOTE_TIER_DRAM);	/* invalid: ignored */
	wait_flush(A);
	assert_int_equal(stats(A).index_updates, 2);
	hget(c, "t1:f:a/b/c.bin", "nodeA", v, sizeof(v));
	assert_string_equal(v, "dram");
	hget(c, "t1:f:a/x.bin", "nodeA", v, sizeof(v));
	assert_string_equal(v, "nvme");
	assert_int_equal(integer(c, "SCARD %s", "t1:held:nodeA", NULL), 2);
	assert_int_equal(integer(c, "SISMEMBER %s %s", "t1:held:nodeA", "a/b/c.bin"), 1);
	assert_int_equal(integer(c, "SISMEMBER %s %s", "t1:dirs", "a"), 1);
	assert_int_equal(integer(c, "SISMEMBER %s %s", "t1:dirs", "a/b"), 1);
	assert_int_equal(integer(c, "SISMEMBER %s %s", "t1:nodes", "nodeA"), 1);
	assert_int_equal(remote_dir_exists(A, "a/b"), 1);
	assert_int_equal(remote_dir_exists(A, "a/b/c.bin"), 0);

	/* The heartbeat record names our fabric address and expires. */
	r = q(c, "GET t1:node:nodeA");
	assert_int_equal(r->type, REDIS_REPLY_STRING);
	assert_int_equal(rdma_node_rec_parse(r->str, r->len, &rec), 0);
	freeReplyObject(r);
	addr = rdma_self_addr(A, &alen);
	assert_int_equal(rec.addr_len, alen);
	assert_memory_equal(rec.addr, addr, alen);
	assert_string_equal(rec.prov, remote_provider(A));
	pttl = integer(c, "PTTL %s", "t1:node:nodeA", NULL);
	assert_true(pttl > 0 && pttl <= 2000); /* 10 heartbeats of 200 ms */

	remote_unpublish(A, "a/x.bin");
	remote_unpublish(A, "never/published"); /* nothing to do */
	wait_flush(A);
	assert_int_equal(stats(A).index_updates, 3);
	assert_int_equal(integer(c, "EXISTS %s", "t1:f:a/x.bin", NULL), 0);
	assert_int_equal(integer(c, "SCARD %s", "t1:held:nodeA", NULL), 1);

	/* Leaving deletes the heartbeat and our entries. */
	remote_close(A);
	assert_int_equal(integer(c, "EXISTS %s", "t1:node:nodeA", NULL), 0);
	assert_int_equal(integer(c, "EXISTS %s", "t1:f:a/b/c.bin", NULL), 0);
	assert_int_equal(integer(c, "EXISTS %s", "t1:held:nodeA", NULL), 0);
	redisFree(c);
}

#define peer_alive tl_peer_alive

static void wait_alive(remote *r, const char *id, bool alive)
{
	for (int i = 0; i < 300 && peer_alive(r, id) != alive; i++)
		tl_sleep_ms(10);
	assert_int_equal(peer_alive(r, id), alive);
}

static void test_locate_batch(void **state)
{
	remote *A, *B;
	const char *paths[512];
	char names[512][32];
	struct remote_loc loc[512];
	uint64_t t0, lookups;

	(void)state;
	NEED_REDIS();
	A = tl_open("nodeA", NULL, 0, rs.url, "t2", NULL, 1000, 100);
	B = tl_open("nodeB", NULL, 0, rs.url, "t2", NULL, 1000, 100);
	assert_non_null(A);
	assert_non_null(B);
	for (int i = 0; i < 512; i++) {
		snprintf(names[i], sizeof(names[i]), "chain/%04d.bin", i);
		paths[i] = names[i];
		if (i % 2 == 0)
			remote_publish(B, paths[i], i % 4 ? REMOTE_TIER_NVME : REMOTE_TIER_DRAM);
	}
	remote_publish(A, paths[1], REMOTE_TIER_DRAM); /* our own: not a remote holder */
	remote_publish(B, paths[1], REMOTE_TIER_LENT);
	wait_flush(A);
	wait_flush(B);
	wait_alive(A, "nodeB", true);
	assert_int_equal(stats(A).peers_alive, 1);
	lookups = stats(A).index_lookups;
	t0 = tl_now_ms();
	assert_int_equal(remote_locate(A, paths, 512, loc), 0);
	print_message("      512-path locate: %llu ms (one pipelined round trip)\n",
		      (unsigned long long)(tl_now_ms() - t0));
	assert_int_equal(stats(A).index_lookups, lookups + 512);
	for (int i = 0; i < 512; i++) {
		if (i == 1) {
			assert_int_equal(loc[i].holders, 1);
			assert_int_equal(loc[i].tiers, 1u << REMOTE_TIER_LENT);
		} else if (i % 2 == 0) {
			assert_int_equal(loc[i].holders, 1);
			assert_int_equal(loc[i].tiers,
					 1u << (i % 4 ? REMOTE_TIER_NVME : REMOTE_TIER_DRAM));
		} else {
			assert_int_equal(loc[i].holders, 0);
			assert_int_equal(loc[i].tiers, 0);
		}
	}
	{
		struct remote_holder h[4];
		int n = remote_where(A, paths[1], h, 4);

		assert_int_equal(n, 2);
		for (int i = 0; i < 2; i++) {
			assert_true(h[i].alive);
			assert_int_equal(h[i].self, strcmp(h[i].node, "nodeA") == 0);
			assert_int_equal(h[i].tier,
					 h[i].self ? REMOTE_TIER_DRAM : REMOTE_TIER_LENT);
		}
	}
	remote_close(B);
	/* B left: its entries are gone, and it is dead to A at once... */
	wait_alive(A, "nodeB", false);
	assert_int_equal(remote_locate(A, paths, 512, loc), 0);
	for (int i = 0; i < 512; i++)
		assert_int_equal(loc[i].holders, 0);
	remote_close(A);
}

static void test_membership_expiry(void **state)
{
	remote *A, *B;
	redisContext *c;
	const char *paths[1] = {"g/file"};
	struct remote_loc loc;
	char val[160];
	struct rdma_node_rec rec = {.addr = {1, 2, 3, 4}, .addr_len = 4};
	long long t1, t2;

	(void)state;
	NEED_REDIS();
	A = tl_open("nodeA", NULL, 0, rs.url, "t3", NULL, 1000, 100);
	B = tl_open("nodeB", NULL, 1 << 20, rs.url, "t3", NULL, 1000, 100);
	assert_non_null(A);
	assert_non_null(B);
	c = raw();
	wait_alive(A, "nodeB", true);
	wait_alive(B, "nodeA", true);
	/* Heartbeats keep the key alive well past its 1 s TTL. */
	t1 = integer(c, "PTTL %s", "t3:node:nodeB", NULL);
	tl_sleep_ms(1500);
	t2 = integer(c, "PTTL %s", "t3:node:nodeB", NULL);
	assert_true(t1 > 0 && t2 > 0);
	assert_true(peer_alive(A, "nodeB"));
	{
		struct remote_peer p[8];
		int n = remote_peers(A, p, 8);

		for (int i = 0; i < n; i++)
			if (strcmp(p[i].node, "nodeB") == 0)
				assert_int_equal(p[i].lend_total, 1 << 20);
	}

	/* A node that stops heartbeating (no graceful leave) dies when its key
	 * expires, and its entries stop counting. */
	snprintf(rec.prov, sizeof(rec.prov), "%s", remote_provider(A));
	assert_true(rdma_node_rec_format(val, sizeof(val), &rec) > 0);
	freeReplyObject(q(c, "SET t3:node:ghost %s PX 400", val));
	freeReplyObject(q(c, "SADD t3:nodes ghost"));
	freeReplyObject(q(c, "HSET t3:f:g/file ghost dram"));
	wait_alive(A, "ghost", true);
	assert_int_equal(remote_locate(A, paths, 1, &loc), 0);
	assert_int_equal(loc.holders, 1);
	wait_alive(A, "ghost", false);
	assert_int_equal(remote_locate(A, paths, 1, &loc), 0);
	assert_int_equal(loc.holders, 0);
	/* A fetch ignores the dead holder: nobody to ask. */
	{
		uint8_t b[16];
		uint64_t size;

		assert_int_equal(remote_fetch_buf(A, "g/file", b, sizeof(b), &size), -ENOENT);
	}
	/* A restarted ghost is alive again. */
	freeReplyObject(q(c, "SET t3:node:ghost %s PX 400", val));
	wait_alive(A, "ghost", true);
	/* A record from a node on another provider is ignored. */
	snprintf(rec.prov, sizeof(rec.prov), "efa");
	rdma_node_rec_format(val, sizeof(val), &rec);
	freeReplyObject(q(c, "SET t3:node:other %s PX 5000", val));
	freeReplyObject(q(c, "SADD t3:nodes other"));
	tl_sleep_ms(300);
	assert_false(peer_alive(A, "other"));
	remote_close(A);
	remote_close(B);
	redisFree(c);
}

static void test_previous_incarnation_cleared(void **state)
{
	remote *Z;
	redisContext *c;
	char v[64];

	(void)state;
	NEED_REDIS();
	c = raw();
	/* What nodeZ published before it crashed. */
	freeReplyObject(q(c, "HSET t4:f:old/file nodeZ dram"));
	freeReplyObject(q(c, "HSET t4:f:old/file nodeY dram"));
	freeReplyObject(q(c, "SADD t4:held:nodeZ old/file"));
	Z = tl_open("nodeZ", NULL, 0, rs.url, "t4", NULL, 1000, 100);
	assert_non_null(Z);
	remote_publish(Z, "new/file", REMOTE_TIER_DRAM);
	wait_flush(Z);
	hget(c, "t4:f:old/file", "nodeZ", v, sizeof(v));
	assert_string_equal(v, "");
	hget(c, "t4:f:old/file", "nodeY", v, sizeof(v)); /* someone else's: kept */
	assert_string_equal(v, "dram");
	assert_int_equal(integer(c, "SISMEMBER %s %s", "t4:held:nodeZ", "old/file"), 0);
	assert_int_equal(integer(c, "SISMEMBER %s %s", "t4:held:nodeZ", "new/file"), 1);
	assert_true(stats(Z).resyncs >= 1);
	remote_close(Z);
	redisFree(c);
}

/* Last: it restarts the server. */
static void test_redis_restart_resync(void **state)
{
	remote *A;
	redisContext *c;
	char v[64];
	struct remote_stats s0, s1;
	const char *paths[1] = {"r/one"};
	struct remote_loc loc;
	uint64_t t0;
	int rc;

	(void)state;
	NEED_REDIS();
	A = tl_open("nodeA", NULL, 0, rs.url, "t5", NULL, 1000, 100);
	assert_non_null(A);
	remote_publish(A, "r/one", REMOTE_TIER_DRAM);
	remote_publish(A, "r/two", REMOTE_TIER_DRAM);
	wait_flush(A);
	s0 = stats(A);

	tl_redis_kill(&rs);
	/* The node keeps working: updates queue nowhere, lookups fail fast. */
	remote_unpublish(A, "r/one");
	remote_publish(A, "r/three", REMOTE_TIER_NVME);
	t0 = tl_now_ms();
	rc = remote_locate(A, paths, 1, &loc);
	assert_int_equal(rc, -ENOTCONN);
	assert_true(tl_now_ms() - t0 < 1500);
	for (int i = 0; i < 300 && stats(A).redis_errors <= s0.redis_errors; i++)
		tl_sleep_ms(10);
	assert_true(stats(A).redis_errors > s0.redis_errors);
	/* The index thread notices at its next heartbeat at the latest. */
	for (int i = 0; i < 300 && (rc = remote_flush(A, 20)) != -ENOTCONN; i++)
		tl_sleep_ms(10);
	assert_int_equal(rc, -ENOTCONN);

	assert_int_equal(tl_redis_start(&rs), 0); /* empty: --save '' */
	wait_flush(A);
	s1 = stats(A);
	assert_true(s1.redis_reconnects >= 1);
	assert_true(s1.resyncs > s0.resyncs);
	c = raw();
	hget(c, "t5:f:r/one", "nodeA", v, sizeof(v));
	assert_string_equal(v, "");
	hget(c, "t5:f:r/two", "nodeA", v, sizeof(v));
	assert_string_equal(v, "dram");
	hget(c, "t5:f:r/three", "nodeA", v, sizeof(v));
	assert_string_equal(v, "nvme");
	assert_int_equal(integer(c, "SCARD %s", "t5:held:nodeA", NULL), 2);
	for (int i = 0; i < 300 && integer(c, "EXISTS %s", "t5:node:nodeA", NULL) != 1; i++)
		tl_sleep_ms(10);
	assert_int_equal(integer(c, "EXISTS %s", "t5:node:nodeA", NULL), 1);
	for (int i = 0; i < 300 && remote_locate(A, paths, 1, &loc) != 0; i++)
		tl_sleep_ms(10);
	assert_int_equal(remote_locate(A, paths, 1, &loc), 0);
	remote_close(A);
	redisFree(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_key_schema),
		cmocka_unit_test(test_publish_writes_schema),
		cmocka_unit_test(test_locate_batch),
		cmocka_unit_test(test_membership_expiry),
		cmocka_unit_test(test_previous_incarnation_cleared),
		cmocka_unit_test(test_redis_restart_resync),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
