/*
 * tests/unit/rdma_place_test.c — where offloaded copies go (pure logic):
 * the consistent-hash ring (rdma/chash.c) — balance across nodes, minimal
 * movement when a node joins or leaves, skipping nodes without room or
 * alive, order independence — and the lent-memory page allocator
 * (rdma/lend.c) — runs, first fit, fragmentation limits that leave the
 * state untouched, accounting under a random workload checked against a
 * model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rdma/rdma_i.h"

#define NKEYS 40000

static char names[16][16];
static const char *ids[16];

static void make_ids(int n)
{
	for (int i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "node-%d", i);
		ids[i] = names[i];
	}
}

static uint32_t owner(const struct rdma_chash *c, int key)
{
	char k[48];
	uint32_t out;
	int len = snprintf(k, sizeof(k), "llama/ab/cd/%08x.bin", (unsigned)key * 2654435761u);

	assert_int_equal(rdma_chash_pick(c, k, (size_t)len, NULL, NULL, &out, 1), 1);
	return out;
}

static void test_balance(void **state)
{
	struct rdma_chash c;
	int count[8] = {0};

	(void)state;
	make_ids(8);
	assert_int_equal(rdma_chash_build(&c, ids, 8, RDMA_CHASH_VNODES), 0);
	assert_int_equal(c.npts, 8 * RDMA_CHASH_VNODES);
	for (int k = 0; k < NKEYS; k++)
		count[owner(&c, k)]++;
	for (int i = 0; i < 8; i++) {
		double share = count[i] * 8.0 / NKEYS;

		print_message("      %s: %.3f of a fair share\n", ids[i], share);
		assert_true(share > 0.75 && share < 1.25);
	}
	rdma_chash_free(&c);
}

static void test_join_moves_only_to_new_node(void **state)
{
	struct rdma_chash c8, c9;
	int moved = 0;

	(void)state;
	make_ids(9);
	assert_int_equal(rdma_chash_build(&c8, ids, 8, 0), 0);
	assert_int_equal(rdma_chash_build(&c9, ids, 9, 0), 0);
	for (int k = 0; k < NKEYS; k++) {
		uint32_t a = owner(&c8, k), b = owner(&c9, k);

		if (a != b) {
			assert_int_equal(b, 8); /* only to the newcomer */
			moved++;
		}
	}
	print_message("      join: %.3f of keys moved (ideal 1/9 = 0.111)\n",
		      (double)moved / NKEYS);
	assert_true(moved > NKEYS / 9 * 0.7 && moved < NKEYS / 9 * 1.3);
	rdma_chash_free(&c8);
	rdma_chash_free(&c9);
}

static void test_leave_moves_only_its_keys(void **state)
{
	struct rdma_chash all, less;
	const char *rest[7];
	int moved = 0;

	(void)state;
	make_ids(8);
	for (int i = 0, j = 0; i < 8; i++)
		if (i != 3)
			rest[j++] = ids[i];
	assert_int_equal(rdma_chash_build(&all, ids, 8, 0), 0);
	assert_int_equal(rdma_chash_build(&less, rest, 7, 0), 0);
	for (int k = 0; k < NKEYS; k++) {
		const char *a = ids[owner(&all, k)], *b = rest[owner(&less, k)];

		if (strcmp(a, b) != 0) {
			assert_string_equal(a, "node-3"); /* only node-3's keys move */
			moved++;
		} else {
			assert_string_not_equal(a, "node-3");
		}
	}
	assert_true(moved > NKEYS / 8 * 0.7 && moved < NKEYS / 8 * 1.3);
	rdma_chash_free(&all);
	rdma_chash_free(&less);
}

static bool not_full(void *ctx, uint32_t node)
{
	const bool *full = ctx;

	return !full[node];
}

/* A full (or dead) node hands its keys to the next node on the ring; no
 * other key moves. */
static void test_skip_nodes_without_room(void **state)
{
	struct rdma_chash c;
	bool full[8] = {false};
	uint32_t got[8];

	(void)state;
	make_ids(8);
	assert_int_equal(rdma_chash_build(&c, ids, 8, 0), 0);
	full[5] = true;
	for (int k = 0; k < NKEYS; k += 7) {
		char key[48];
		int len = snprintf(key, sizeof(key), "llama/ab/cd/%08x.bin",
				   (unsigned)k * 2654435761u);
		uint32_t order[8], pick;

		assert_int_equal(rdma_chash_pick(&c, key, (size_t)len, NULL, NULL, order, 8), 8);
		assert_int_equal(rdma_chash_pick(&c, key, (size_t)len, not_full, full, &pick, 1),
				 1);
		assert_int_equal(pick, order[0] == 5 ? order[1] : order[0]);
		/* Candidates are distinct, in ring order, without the full one. */
		assert_int_equal(rdma_chash_pick(&c, key, (size_t)len, not_full, full, got, 8), 7);
		for (int i = 0, j = 0; i < 8; i++)
			if (order[i] != 5)
				assert_int_equal(got[j++], order[i]);
	}
	for (int i = 0; i < 8; i++)
		full[i] = true;
	assert_int_equal(rdma_chash_pick(&c, "x", 1, not_full, full, got, 8), 0);
	rdma_chash_free(&c);
	memset(&c, 0, sizeof(c));
	assert_int_equal(rdma_chash_pick(&c, "x", 1, NULL, NULL, got, 8), 0);
}

/* Every node builds the same ring from the same members, in any order. */
static void test_order_independent(void **state)
{
	struct rdma_chash a, b;
	const char *rev[6];

	(void)state;
	make_ids(6);
	for (int i = 0; i < 6; i++)
		rev[i] = ids[5 - i];
	assert_int_equal(rdma_chash_build(&a, ids, 6, 0), 0);
	assert_int_equal(rdma_chash_build(&b, rev, 6, 0), 0);
	for (int k = 0; k < 5000; k++)
		assert_string_equal(ids[owner(&a, k)], rev[owner(&b, k)]);
	rdma_chash_free(&a);
	rdma_chash_free(&b);
}

/* --- the lent-memory allocator -------------------------------------------- */

#define PG 65536u

static void test_lend_basics(void **state)
{
	struct rdma_lend l;
	struct rdma_lend_run runs[8];

	(void)state;
	assert_int_equal(rdma_lend_init(&l, NULL, 1 << 20, 3000), -EINVAL);
	assert_int_equal(rdma_lend_init(&l, NULL, (1 << 20) + 100, PG), 0);
	assert_int_equal(l.npages, 16);
	assert_int_equal(l.bytes, 1 << 20);
	assert_int_equal(rdma_lend_alloc(&l, 0, runs, 8), -EINVAL);
	assert_int_equal(rdma_lend_alloc(&l, 100000, runs, 8), 1);
	assert_int_equal(runs[0].first, 0);
	assert_int_equal(runs[0].npages, 2);
	assert_int_equal(l.nfree, 14);
	assert_int_equal(rdma_lend_alloc(&l, 15 * PG, runs, 8), -ENOSPC);
	assert_int_equal(l.nfree, 14);
	assert_int_equal(rdma_lend_alloc(&l, 14 * PG, runs, 8), 1);
	assert_int_equal(runs[0].first, 2);
	assert_int_equal(l.nfree, 0);
	assert_int_equal(rdma_lend_alloc(&l, 1, runs, 8), -ENOSPC);
	rdma_lend_free(&l, runs, 1);
	assert_int_equal(l.nfree, 14);
	/* First fit: the lowest free page again. */
	assert_int_equal(rdma_lend_alloc(&l, 1, runs, 8), 1);
	assert_int_equal(runs[0].first, 2);
	rdma_lend_fini(&l);
}

static void test_lend_fragmented(void **state)
{
	struct rdma_lend l;
	struct rdma_lend_run one[1], runs[8];
	uint64_t bits[2];

	(void)state;
	assert_int_equal(rdma_lend_init(&l, NULL, 100 * PG, PG), 0);
	for (int i = 0; i < 100; i++)
		assert_int_equal(rdma_lend_alloc(&l, PG, one, 1), 1);
	for (uint32_t i = 0; i < 100; i += 2) {
		one[0] = (struct rdma_lend_run){i, 1};
		rdma_lend_free(&l, one, 1);
	}
	assert_int_equal(l.nfree, 50);
	/* Three pages need three runs: refused with two, state untouched. */
	memcpy(bits, l.bits, sizeof(bits));
	assert_int_equal(rdma_lend_alloc(&l, 3 * PG, runs, 2), -ENOSPC);
	assert_int_equal(l.nfree, 50);
	assert_memory_equal(bits, l.bits, sizeof(bits));
	assert_int_equal(rdma_lend_alloc(&l, 3 * PG, runs, 8), 3);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(runs[i].first, 2 * i);
		assert_int_equal(runs[i].npages, 1);
	}
	assert_int_equal(l.nfree, 47);
	rdma_lend_fini(&l);
}

/* Random allocations and frees against a model: no page is handed out
 * twice, every page of a grant was free, nfree matches. */
static void test_lend_random_vs_model(void **state)
{
	enum { NP = 300, NA = 64 };
	struct rdma_lend l;
	struct {
		struct rdma_lend_run runs[16];
		int n;
	} live[NA];
	int owner[NP];
	uint64_t x = 12345;

	(void)state;
	memset(live, 0, sizeof(live));
	for (int i = 0; i < NP; i++)
		owner[i] = -1;
	assert_int_equal(rdma_lend_init(&l, NULL, (uint64_t)NP * 4096, 4096), 0);
	for (int step = 0; step < 20000; step++) {
		int slot;
		uint32_t free_model = 0;

		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		slot = (int)(x % NA);
		if (live[slot].n) {
			for (int i = 0; i < live[slot].n; i++)
				for (uint32_t p = 0; p < live[slot].runs[i].npages; p++)
					owner[live[slot].runs[i].first + p] = -1;
			rdma_lend_free(&l, live[slot].runs, live[slot].n);
			live[slot].n = 0;
		} else {
			uint64_t size = 1 + (x >> 20) % (12 * 4096);
			int n = rdma_lend_alloc(&l, size, live[slot].runs, 16);

			if (n > 0) {
				uint64_t pages = 0;

				for (int i = 0; i < n; i++) {
					for (uint32_t p = 0; p < live[slot].runs[i].npages; p++) {
						uint32_t pg = live[slot].runs[i].first + p;

						assert_true(pg < NP);
						assert_int_equal(owner[pg], -1);
						owner[pg] = slot;
					}
					pages += live[slot].runs[i].npages;
				}
				assert_int_equal(pages, (size + 4095) / 4096);
				live[slot].n = n;
			} else {
				assert_int_equal(n, -ENOSPC);
			}
		}
		for (int i = 0; i < NP; i++)
			free_model += owner[i] == -1;
		assert_int_equal(l.nfree, free_model);
	}
	rdma_lend_fini(&l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_balance),
		cmocka_unit_test(test_join_moves_only_to_new_node),
		cmocka_unit_test(test_leave_moves_only_its_keys),
		cmocka_unit_test(test_skip_nodes_without_room),
		cmocka_unit_test(test_order_independent),
		cmocka_unit_test(test_lend_basics),
		cmocka_unit_test(test_lend_fragmented),
		cmocka_unit_test(test_lend_random_vs_model),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
