/*
 * tests/unit/rdma_disagg_test.c — the remote tier's calls for disaggregated
 * serving (rdma/remote.h, DESIGN §9), through the public interface: a real
 * redis-server on a unix socket and three `remote` instances in this
 * process on tcp 127.0.0.1.
 *
 * Covered: remote_match() gives each live node's prefix of a chain (gaps
 * end a prefix, the slowest tier and the DRAM count are right, nodes are
 * sorted, this node included, a dead node drops out) from one batch of
 * index lookups; remote_locate() reports what the index says this node
 * holds (self_tiers); remote_push() places a copy on the named peer, which
 * publishes it as "lent", and refuses an unknown node, this node, and a
 * peer without room.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rdma/rdma_i.h"
#include "tests/unit/rdma_testlib.h"

#define MiB   (1024ull * 1024)
#define CHAIN 100

static struct tl_redis rs;
static struct tl_daemon dA, dB, dC;
static remote *A, *B, *C;

static struct remote_stats stats(remote *r)
{
	return tl_stats(r);
}

static void wait_alive(remote *r, const char *id, bool want)
{
	for (int i = 0; i < 400 && tl_peer_alive(r, id) != want; i++)
		tl_sleep_ms(10);
	assert_int_equal(tl_peer_alive(r, id), want);
}

static void flush(remote *r)
{
	assert_int_equal(tl_flush(r, 300), 0);
}

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	if (!tl_have_redis())
		return 0; /* each test skips */
	if (tl_redis_start(&rs) || tl_daemon_init(&dA, 16 * MiB) || tl_daemon_init(&dB, 16 * MiB) ||
	    tl_daemon_init(&dC, 16 * MiB))
		return -1;
	A = tl_open("A", &dA, 0, rs.url, "dg", NULL, 1000, 100);
	B = tl_open("B", &dB, 8 * MiB, rs.url, "dg", NULL, 1000, 100);
	C = tl_open("C", &dC, 0, rs.url, "dg", NULL, 1000, 100);
	return A && B && C ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	if (!rs.dir[0])
		return 0;
	remote_close(A);
	remote_close(B);
	remote_close(C);
	tl_daemon_fini(&dA);
	tl_daemon_fini(&dB);
	tl_daemon_fini(&dC);
	tl_redis_stop(&rs);
	return 0;
}

#define NEED_REDIS()                                                                               \
	do {                                                                                       \
		if (!rs.dir[0])                                                                    \
			skip();                                                                    \
	} while (0)

static void wait_cluster(void)
{
	wait_alive(A, "B", true);
	wait_alive(A, "C", true);
	wait_alive(B, "A", true);
}

static char names[CHAIN][32];
static const char *chain[CHAIN];

static void test_match_prefixes(void **state)
{
	struct remote_node_match m[8];
	struct remote_stats a0;
	int n;

	(void)state;
	NEED_REDIS();
	wait_cluster();
	for (int i = 0; i < CHAIN; i++) {
		snprintf(names[i], sizeof(names[i]), "ns/%03d", i);
		chain[i] = names[i];
		if (i < 10)
			remote_publish(A, chain[i], REMOTE_TIER_DRAM); /* this node: 10 */
		if (i < 60 && i != 45)
			remote_publish(B, chain[i], i < 30 ? REMOTE_TIER_DRAM : REMOTE_TIER_LENT);
		if (i < 20 || i >= 30) /* a gap at 20..29: its prefix is 20 */
			remote_publish(C, chain[i], i < 5 ? REMOTE_TIER_DRAM : REMOTE_TIER_NVME);
	}
	flush(A);
	flush(B);
	flush(C);
	a0 = stats(A);
	n = remote_match(A, chain, CHAIN, m, 8);
	assert_int_equal(n, 3);
	assert_int_equal(stats(A).index_lookups, a0.index_lookups + CHAIN); /* one batch */
	assert_string_equal(m[0].node, "B");
	assert_int_equal(m[0].blocks, 45);
	assert_int_equal(m[0].fast_blocks, 45);
	assert_int_equal(m[0].slowest, REMOTE_TIER_LENT);
	assert_false(m[0].self);
	assert_string_equal(m[1].node, "C");
	assert_int_equal(m[1].blocks, 20);
	assert_int_equal(m[1].fast_blocks, 5);
	assert_int_equal(m[1].slowest, REMOTE_TIER_NVME);
	assert_string_equal(m[2].node, "A");
	assert_int_equal(m[2].blocks, 10);
	assert_true(m[2].self);
	/* @max smaller than the answer: the count is still all of them */
	assert_int_equal(remote_match(A, chain, CHAIN, m, 1), 3);
	assert_string_equal(m[0].node, "B");
	/* a chain nobody holds the first block of */
	assert_int_equal(remote_match(A, chain + 45, 1, m, 8), 1);  /* C has 45 (nvme) */
	assert_int_equal(remote_match(A, chain + 20, 10, m, 8), 1); /* B: 20..29 */
	assert_int_equal(remote_match(A, chain, 0, m, 8), -EINVAL);
	assert_int_equal(remote_match(A, NULL, 3, m, 8), -EINVAL);
	/* what the index says this node holds */
	{
		struct remote_loc loc[2];

		assert_int_equal(remote_locate(A, chain, 2, loc), 0);
		assert_int_equal(loc[0].self_tiers, 1u << REMOTE_TIER_DRAM);
		assert_int_equal(loc[0].holders, 2);
		assert_int_equal(remote_locate(A, chain + 50, 1, loc), 0);
		assert_int_equal(loc[0].self_tiers, 0);
	}
}

static void test_push_to_named_node(void **state)
{
	uint64_t size = MiB + 99;
	uint8_t *src = malloc(size);
	struct iovec iov = {src, size};
	struct remote_holder h[4];
	struct remote_stats b0 = stats(B);
	uint64_t sum;
	int n;

	(void)state;
	NEED_REDIS();
	wait_cluster();
	tl_fill(src, size, 77);
	sum = remote_checksum(&iov, 1);
	assert_int_equal(remote_push(A, "B", "push/x", &iov, 1, sum), 0);
	assert_int_equal(stats(B).offloads_received, b0.offloads_received + 1);
	flush(B);
	n = remote_where(A, "push/x", h, 4);
	assert_int_equal(n, 1);
	assert_string_equal(h[0].node, "B");
	assert_int_equal(h[0].tier, REMOTE_TIER_LENT);
	/* C lends nothing: no room; an unknown node, and this node, are not live peers */
	assert_int_equal(remote_push(A, "C", "push/y", &iov, 1, sum), -ENOSPC);
	assert_int_equal(remote_push(A, "nobody", "push/y", &iov, 1, sum), -EHOSTDOWN);
	assert_int_equal(remote_push(A, "A", "push/y", &iov, 1, sum), -EHOSTDOWN);
	/* larger than what B lends */
	{
		uint64_t big = 9 * MiB;
		uint8_t *b = calloc(1, big);
		struct iovec bi = {b, big};

		assert_int_equal(remote_push(A, "B", "push/big", &bi, 1, remote_checksum(&bi, 1)),
				 -ENOSPC);
		free(b);
	}
	assert_int_equal(remote_push(A, "B", "", &iov, 1, sum), -EINVAL);
	assert_int_equal(remote_push(A, "B", "push/z", &iov, 0, sum), -EINVAL);
	assert_int_equal(stats(B).offloads_received, b0.offloads_received + 1);
	free(src);
}

static void test_dead_node_drops_out(void **state)
{
	struct remote_node_match m[8];

	(void)state;
	NEED_REDIS();
	remote_close(C); /* leaves: deletes its heartbeat and entries */
	C = NULL;
	wait_alive(A, "C", false);
	assert_int_equal(remote_match(A, chain, CHAIN, m, 8), 2);
	assert_string_equal(m[0].node, "B");
	assert_string_equal(m[1].node, "A");
	assert_int_equal(remote_push(A, "C", "push/w", &(struct iovec){names, 16}, 1, 0),
			 -EHOSTDOWN);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_match_prefixes),
		cmocka_unit_test(test_push_to_named_node),
		cmocka_unit_test(test_dead_node_drops_out),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
