/*
 * tests/unit/policy_test.c — the eviction policy (tier/policy.c), white-box
 * on struct policy: policy names and parameters, "lru" as pure recency,
 * "mq" classes by hit count (floor(log2(hits + 1)) capped at 4) with a bonus
 * of half the capacity in pages per class, hot objects ageing out when no
 * longer touched, and the k-way merge of the class lists checked against a
 * brute-force reference model on long random operation sequences.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tier/tier_i.h"

/* Iterate the whole policy in eviction order into @out. @return the count. */
static size_t drain(struct policy *p, struct policy_node **out, size_t max)
{
	struct policy_iter it;
	struct policy_node *n;
	size_t k = 0;

	policy_iter_init(p, &it);
	while ((n = policy_iter_next(p, &it))) {
		assert_true(k < max);
		out[k++] = n;
	}
	return k;
}

static unsigned ref_class(uint32_t hits, unsigned nclasses)
{
	uint64_t v = (uint64_t)hits + 1;
	unsigned c = 0;

	while (v > 1) {
		v >>= 1;
		c++;
	}
	return c < nclasses ? c : nclasses - 1;
}

static void test_init_names(void **state)
{
	struct policy p;

	(void)state;
	assert_int_equal(policy_init(&p, "mq", 1000), 0);
	assert_string_equal(p.name, "mq");
	assert_int_equal(p.nclasses, 5);
	assert_int_equal(p.bonus, 500);
	assert_int_equal(p.clock, 0);
	policy_destroy(&p);

	assert_int_equal(policy_init(&p, "lru", 1000), 0);
	assert_string_equal(p.name, "lru");
	assert_int_equal(p.nclasses, 1);
	assert_int_equal(p.bonus, 0);
	policy_destroy(&p);

	assert_int_equal(policy_init(&p, "arc", 1000), -EINVAL);
	assert_int_equal(policy_init(&p, "", 1000), -EINVAL);
	assert_int_equal(policy_init(&p, "MQ", 1000), -EINVAL);
	assert_int_equal(policy_init(&p, "mqx", 1000), -EINVAL);
}

static void test_empty_iter(void **state)
{
	struct policy p;
	struct policy_iter it;

	(void)state;
	assert_int_equal(policy_init(&p, "mq", 64), 0);
	policy_iter_init(&p, &it);
	assert_null(policy_iter_next(&p, &it));
	assert_null(policy_iter_next(&p, &it));
	policy_destroy(&p);
}

/* Clock advances by pages at each insert and hit; the stamp records it. */
static void test_clock_and_stamps(void **state)
{
	struct policy p;
	struct policy_node a = {0}, b = {0};

	(void)state;
	assert_int_equal(policy_init(&p, "mq", 64), 0);
	policy_insert_locked(&p, &a, 3);
	assert_int_equal(p.clock, 3);
	assert_int_equal(a.stamp, 3);
	assert_true(a.linked);
	policy_insert_locked(&p, &b, 5);
	assert_int_equal(p.clock, 8);
	assert_int_equal(b.stamp, 8);
	policy_hit_locked(&p, &a, 3);
	assert_int_equal(p.clock, 11);
	assert_int_equal(a.stamp, 11);
	assert_int_equal(a.hits, 1);
	policy_remove_locked(&p, &a);
	assert_false(a.linked);
	/* A hit on an unlinked node counts but neither links it nor moves the clock. */
	policy_hit_locked(&p, &a, 3);
	assert_int_equal(a.hits, 2);
	assert_false(a.linked);
	assert_int_equal(p.clock, 11);
	policy_remove_locked(&p, &a); /* idempotent */
	policy_remove_locked(&p, &b);
	policy_destroy(&p);
}

/* "lru": the order is exactly the order of last access, hits or not. */
static void test_lru_pure_recency(void **state)
{
	struct policy p;
	struct policy_node n[8] = {0}, *out[8];

	(void)state;
	assert_int_equal(policy_init(&p, "lru", 8), 0);
	for (int i = 0; i < 8; i++)
		policy_insert_locked(&p, &n[i], 1);
	/* Make node 2 very hot, then touch 5, then 0. */
	for (int k = 0; k < 100; k++)
		policy_hit_locked(&p, &n[2], 1);
	policy_hit_locked(&p, &n[5], 1);
	policy_hit_locked(&p, &n[0], 1);
	assert_int_equal(drain(&p, out, 8), 8);
	const int want[8] = {1, 3, 4, 6, 7, 2, 5, 0};
	for (int i = 0; i < 8; i++)
		assert_ptr_equal(out[i], &n[want[i]]);
	for (int i = 0; i < 8; i++)
		assert_int_equal(n[i].cls, 0);
	for (int i = 0; i < 8; i++)
		policy_remove_locked(&p, &n[i]);
	policy_destroy(&p);
}

/* "mq": the class is floor(log2(hits + 1)), capped at 4. */
static void test_mq_classes(void **state)
{
	struct policy p;
	struct policy_node n = {0};
	const struct {
		uint32_t hits;
		uint8_t cls;
	} cases[] = {{0, 0},  {1, 1},  {2, 1},	{3, 2},	 {6, 2},   {7, 3},
		     {14, 3}, {15, 4}, {30, 4}, {31, 4}, {1000, 4}};

	(void)state;
	assert_int_equal(policy_init(&p, "mq", 100), 0);
	policy_insert_locked(&p, &n, 1);
	assert_int_equal(n.cls, 0);
	for (uint32_t h = 1; h <= 1000; h++) {
		policy_hit_locked(&p, &n, 1);
		assert_int_equal(n.hits, h);
		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
			if (cases[i].hits == h)
				assert_int_equal(n.cls, cases[i].cls);
		assert_int_equal(n.cls, ref_class(h, 5));
	}
	policy_remove_locked(&p, &n);
	/* A node inserted with hits already counted lands in their class. */
	n.hits = 7;
	policy_insert_locked(&p, &n, 1);
	assert_int_equal(n.cls, 3);
	policy_remove_locked(&p, &n);
	policy_destroy(&p);
}

/*
 * The hit counter saturates at UINT32_MAX; the class must stay at the top
 * (hits + 1 wraps to 0 there, and __builtin_clz(0) is undefined).
 */
static void test_mq_class_at_saturated_hits(void **state)
{
	struct policy p;
	struct policy_node n = {0};

	(void)state;
	assert_int_equal(policy_init(&p, "mq", 100), 0);
	n.hits = UINT32_MAX - 2;
	policy_insert_locked(&p, &n, 1);
	assert_int_equal(n.cls, 4);
	policy_hit_locked(&p, &n, 1);
	assert_int_equal(n.hits, UINT32_MAX - 1);
	assert_int_equal(n.cls, 4);
	policy_hit_locked(&p, &n, 1);
	assert_int_equal(n.hits, UINT32_MAX);
	assert_int_equal(n.cls, 4);
	policy_hit_locked(&p, &n, 1);
	assert_int_equal(n.hits, UINT32_MAX);
	assert_int_equal(n.cls, 4);
	policy_remove_locked(&p, &n);
	policy_destroy(&p);
}

/* Same stamp, more hits: the object with fewer hits goes first. */
static void test_mq_hits_survive_longer(void **state)
{
	struct policy p;
	struct policy_node cold = {0}, warm = {0}, hot = {0}, *out[3];

	(void)state;
	assert_int_equal(policy_init(&p, "mq", 100), 0);
	hot.hits = 15;
	warm.hits = 1;
	/* Zero-page inserts do not move the clock: all three share a stamp. */
	policy_insert_locked(&p, &hot, 0);
	policy_insert_locked(&p, &warm, 0);
	policy_insert_locked(&p, &cold, 0);
	assert_int_equal(hot.stamp, cold.stamp);
	assert_int_equal(warm.stamp, cold.stamp);
	assert_int_equal(drain(&p, out, 3), 3);
	assert_ptr_equal(out[0], &cold);
	assert_ptr_equal(out[1], &warm);
	assert_ptr_equal(out[2], &hot);

	/* An older hit object still outlives a newer cold one within the bonus. */
	policy_remove_locked(&p, &hot);
	policy_remove_locked(&p, &warm);
	policy_remove_locked(&p, &cold);
	warm.hits = 1; /* class 1: +50 */
	policy_insert_locked(&p, &warm, 1);
	policy_insert_locked(&p, &cold, 49); /* stamp = warm.stamp + 49 */
	assert_int_equal(drain(&p, out, 3), 2);
	assert_ptr_equal(out[0], &cold);
	assert_ptr_equal(out[1], &warm);
	policy_remove_locked(&p, &warm);
	policy_remove_locked(&p, &cold);
	policy_destroy(&p);
}

/*
 * The bonus is 0.5 × capacity pages per class: a class-4 object stamped at
 * s has priority s + 4 × 50 with 100 pages, so after more than 200 pages of
 * other traffic it is evicted before the newer objects.
 */
static void test_mq_hot_object_ages_out(void **state)
{
	enum { N = 260 };
	struct policy p;
	struct policy_node hot = {0}, *cold, **out;
	size_t k, pos = SIZE_MAX;

	(void)state;
	cold = calloc(N, sizeof(*cold));
	out = calloc(N + 1, sizeof(*out));
	assert_non_null(cold);
	assert_non_null(out);
	assert_int_equal(policy_init(&p, "mq", 100), 0);
	assert_int_equal(p.bonus, 50);
	policy_insert_locked(&p, &hot, 1);
	for (int i = 0; i < 15; i++)
		policy_hit_locked(&p, &hot, 1);
	assert_int_equal(hot.cls, 4);
	uint64_t s = hot.stamp;
	for (int i = 0; i < N; i++)
		policy_insert_locked(&p, &cold[i], 1); /* stamp s + 1 + i */
	k = drain(&p, out, N + 1);
	assert_int_equal(k, N + 1);
	for (size_t i = 0; i < k; i++)
		if (out[i] == &hot)
			pos = i;
	/* Cold objects with stamps <= s + 200 go first: exactly 200 of them. */
	assert_int_equal(pos, 200);
	for (size_t i = 0; i < pos; i++)
		assert_true(out[i]->stamp <= s + 200);
	for (size_t i = pos + 1; i < k; i++)
		assert_true(out[i]->stamp > s + 200);
	/* Touch it again and it is the most valuable once more. */
	policy_hit_locked(&p, &hot, 1);
	k = drain(&p, out, N + 1);
	assert_ptr_equal(out[k - 1], &hot);
	policy_remove_locked(&p, &hot);
	for (int i = 0; i < N; i++)
		policy_remove_locked(&p, &cold[i]);
	policy_destroy(&p);
	free(cold);
	free(out);
}

/* A tiny capacity gives no bonus: mq degenerates to recency across classes. */
static void test_mq_zero_bonus(void **state)
{
	struct policy p;
	struct policy_node a = {0}, b = {0}, *out[2];

	(void)state;
	assert_int_equal(policy_init(&p, "mq", 1), 0);
	assert_int_equal(p.bonus, 0);
	a.hits = 100;
	policy_insert_locked(&p, &a, 1);
	policy_insert_locked(&p, &b, 1);
	assert_int_equal(drain(&p, out, 2), 2);
	assert_ptr_equal(out[0], &a);
	assert_ptr_equal(out[1], &b);
	policy_remove_locked(&p, &a);
	policy_remove_locked(&p, &b);
	policy_destroy(&p);
}

/* --- reference model -------------------------------------------------------- */

struct model_node {
	struct policy_node pn;
	bool linked;
	uint32_t hits;
	uint64_t stamp;
	uint64_t seq; /* order of the last (re)insertion: breaks ties in a list */
};

struct model {
	unsigned nclasses;
	uint64_t bonus;
	uint64_t clock;
	uint64_t seq;
};

static uint64_t rng_state;

static uint64_t rnd(void)
{
	/* xorshift64*: deterministic for a given seed */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static struct model *cmp_model_m; /* qsort has no context argument */

static int cmp_model(const void *x, const void *y)
{
	const struct model_node *a = *(struct model_node *const *)x;
	const struct model_node *b = *(struct model_node *const *)y;
	unsigned ca = ref_class(a->hits, cmp_model_m->nclasses);
	unsigned cb = ref_class(b->hits, cmp_model_m->nclasses);
	uint64_t pa = a->stamp + ca * cmp_model_m->bonus;
	uint64_t pb = b->stamp + cb * cmp_model_m->bonus;

	if (pa != pb)
		return pa < pb ? -1 : 1;
	if (ca != cb) /* equal priority: the lower class's head wins */
		return ca < cb ? -1 : 1;
	return a->seq < b->seq ? -1 : (a->seq > b->seq);
}

static void model_insert(struct model *m, struct model_node *n, uint32_t pages)
{
	m->clock += pages;
	n->stamp = m->clock;
	n->seq = ++m->seq;
	n->linked = true;
}

static void run_random(const char *name, uint64_t capacity, uint64_t seed, int ops, int nnodes,
		       uint32_t max_pages)
{
	struct policy p;
	struct model m = {0};
	struct model_node *nodes = calloc((size_t)nnodes, sizeof(*nodes));
	struct model_node **want = calloc((size_t)nnodes, sizeof(*want));
	struct policy_node **got = calloc((size_t)nnodes + 1, sizeof(*got));

	assert_non_null(nodes);
	assert_non_null(want);
	assert_non_null(got);
	assert_int_equal(policy_init(&p, name, capacity), 0);
	m.nclasses = p.nclasses;
	m.bonus = p.bonus;
	cmp_model_m = &m;
	rng_state = seed;

	for (int op = 0; op < ops; op++) {
		struct model_node *n = &nodes[rnd() % (uint64_t)nnodes];
		uint32_t pages = (uint32_t)(rnd() % (max_pages + 1));
		unsigned r = (unsigned)(rnd() % 100);
		size_t nw = 0, ng;

		if (r < 35) { /* insert (a seal); half of the time a fresh object */
			if (!n->linked) {
				if (rnd() & 1) {
					memset(&n->pn, 0, sizeof(n->pn));
					n->hits = 0;
				}
				policy_insert_locked(&p, &n->pn, pages);
				model_insert(&m, n, pages);
			}
		} else if (r < 80) { /* hit (an open) */
			policy_hit_locked(&p, &n->pn, pages);
			if (n->hits != UINT32_MAX)
				n->hits++;
			if (n->linked)
				model_insert(&m, n, pages);
		} else { /* remove (eviction or unlink) */
			policy_remove_locked(&p, &n->pn);
			n->linked = false;
		}

		assert_int_equal(p.clock, m.clock);
		for (int i = 0; i < nnodes; i++) {
			assert_int_equal(nodes[i].pn.linked, nodes[i].linked);
			assert_int_equal(nodes[i].pn.hits, nodes[i].hits);
			if (nodes[i].linked) {
				assert_int_equal(nodes[i].pn.stamp, nodes[i].stamp);
				assert_int_equal(nodes[i].pn.cls,
						 ref_class(nodes[i].hits, m.nclasses));
				want[nw++] = &nodes[i];
			}
		}
		qsort(want, nw, sizeof(*want), cmp_model);
		ng = drain(&p, got, (size_t)nnodes + 1);
		if (ng != nw)
			fail_msg("%s seed %llu op %d: %zu nodes iterated, %zu linked", name,
				 (unsigned long long)seed, op, ng, nw);
		for (size_t i = 0; i < nw; i++)
			if (got[i] != &want[i]->pn)
				fail_msg("%s seed %llu op %d: position %zu: node %td, want %td",
					 name, (unsigned long long)seed, op, i,
					 (struct model_node *)got[i] - nodes, want[i] - nodes);
	}
	for (int i = 0; i < nnodes; i++)
		policy_remove_locked(&p, &nodes[i].pn);
	policy_destroy(&p);
	free(nodes);
	free(want);
	free(got);
}

static void test_random_vs_model_mq(void **state)
{
	(void)state;
	/* Small bonus relative to traffic: classes interleave often. */
	run_random("mq", 40, 0x1234567ull, 10000, 64, 4);
	/* Larger bonus; zero-page inserts give equal stamps (tie-breaking). */
	run_random("mq", 1000, 0xfeedbeefull, 10000, 48, 3);
	/* Bonus of one page: ties across classes are common. */
	run_random("mq", 2, 0xabcdefull, 10000, 32, 2);
}

static void test_random_vs_model_lru(void **state)
{
	(void)state;
	run_random("lru", 100, 0x42ull, 10000, 64, 4);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_init_names),
		cmocka_unit_test(test_empty_iter),
		cmocka_unit_test(test_clock_and_stamps),
		cmocka_unit_test(test_lru_pure_recency),
		cmocka_unit_test(test_mq_classes),
		cmocka_unit_test(test_mq_class_at_saturated_hits),
		cmocka_unit_test(test_mq_hits_survive_longer),
		cmocka_unit_test(test_mq_hot_object_ages_out),
		cmocka_unit_test(test_mq_zero_bonus),
		cmocka_unit_test(test_random_vs_model_mq),
		cmocka_unit_test(test_random_vs_model_lru),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
