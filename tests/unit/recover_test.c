/*
 * tests/unit/recover_test.c — the tier's side of a restart: objects written
 * to NVMe come back from their catalog records; damaged, overlapping,
 * mis-sized and orphaned records are refused and deleted; DRAM-only objects
 * are written out at a clean shutdown. A real RocksDB catalog and real
 * segment files (under /var/tmp: O_DIRECT needs a disk filesystem).
 */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/catalog.h"
#include "tier/tier.h"

#define PS (64u << 10)

struct env {
	char dir[64];
	char state[96];
	char nv[96];
	cat *c;
	tier_mgr *m;
	struct tier_nvme_dev dev;
	struct tier_config cfg;
	int evicted;
};

static void on_evicted(void *ctx, tier_obj *const *objs, size_t n)
{
	struct env *e = ctx;

	e->evicted += (int)n;
	for (size_t i = 0; i < n; i++)
		tier_obj_put(objs[i]); /* the owner's reference */
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *f)
{
	(void)st, (void)flag, (void)f;
	remove(p);
	return 0;
}

static void open_tier(struct env *e)
{
	struct tier_callbacks cb = {.evicted = on_evicted, .ctx = e};
	char err[256];

	assert_int_equal(tier_open(&e->cfg, &cb, &e->m, err, sizeof(err)), 0);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	char err[256];

	strcpy(e->dir, "/var/tmp/kvfs-recover-XXXXXX");
	assert_non_null(mkdtemp(e->dir));
	snprintf(e->state, sizeof(e->state), "%s/state", e->dir);
	snprintf(e->nv, sizeof(e->nv), "%s/nv", e->dir);
	assert_int_equal(cat_open(e->state, &e->c, err, sizeof(err)), 0);
	e->dev.dir = e->nv;
	e->dev.bytes = 64ull << 20;
	e->cfg.dram_bytes = 4ull << 20;
	e->cfg.page_size = PS;
	e->cfg.nvme = &e->dev;
	e->cfg.nvme_count = 1;
	e->cfg.cat = e->c;
	open_tier(e);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	tier_close(e->m);
	cat_close(e->c);
	nftw(e->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	free(e);
	return 0;
}

/* A sealed object of @size bytes, id @id, content from @id. */
static tier_obj *make(struct env *e, uint64_t id, size_t size)
{
	uint8_t *buf = malloc(size);
	tier_obj *o;

	for (size_t i = 0; i < size; i++)
		buf[i] = (uint8_t)(id * 31 + i * 7);
	assert_int_equal(tier_obj_new(e->m, NULL, id, &o), 0);
	assert_int_equal(tier_write(o, 0, buf, size), 0);
	assert_int_equal(tier_seal(o), 0);
	free(buf);
	return o;
}

static void check(tier_obj *o, uint64_t id, size_t size)
{
	uint8_t *buf = malloc(size);

	assert_int_equal(tier_lease(o), 0);
	assert_int_equal(tier_read(o, 0, buf, size), (ssize_t)size);
	tier_unlease(o);
	for (size_t i = 0; i < size; i++)
		if (buf[i] != (uint8_t)(id * 31 + i * 7))
			fail_msg("object %llu: byte %zu differs", (unsigned long long)id, i);
	free(buf);
}

/* The owner lets go of an object (as the daemon does at shutdown): dead in
 * memory, its records stay for the next start. */
static void release(tier_obj *o)
{
	tier_drop(o);
	tier_obj_put(o);
}

/* Restart the tier on the same catalog and segments. */
static void restart(struct env *e)
{
	tier_close(e->m);
	open_tier(e);
}

static void test_flush_then_recover(void **state)
{
	struct env *e = *state;
	tier_obj *o[3], *r;
	cat_batch *b = cat_batch_new();

	o[0] = make(e, 10, 3 * PS + 17);
	o[1] = make(e, 11, 1);
	o[2] = make(e, 12, 2 * (1u << 20)); /* two extents */
	tier_flush(e->m); /* a clean shutdown writes DRAM-only objects to NVMe */
	for (int i = 0; i < 3; i++) {
		assert_true(tier_where(o[i]) & TIER_NVME);
		release(o[i]);
	}
	restart(e);
	assert_int_equal(tier_recover_begin(e->m), 0);
	assert_int_equal(tier_recover(e->m, 10, 3 * PS + 17, 0, NULL, &r), 0);
	assert_int_equal(tier_where(r), TIER_NVME);
	check(r, 10, 3 * PS + 17);
	release(r);
	assert_int_equal(tier_recover(e->m, 12, 2 * (1u << 20), 0, NULL, &r), 0);
	check(r, 12, 2 * (1u << 20));
	release(r);
	/* not claimed: deleted at the end as an orphan */
	assert_int_equal(tier_recover(e->m, 99, 5, 0, NULL, &r), -ENOENT);
	tier_recover_end(e->m, b);
	assert_int_equal(cat_batch_count(b), 1); /* object 11's record */
	assert_int_equal(cat_commit(e->c, b, false), 0);
	cat_batch_free(b);
}

static void test_bad_records_are_refused(void **state)
{
	struct env *e = *state;
	tier_obj *a, *r;
	cat_batch *b = cat_batch_new();
	uint8_t key[8], *val;
	void *rec;
	size_t len;

	a = make(e, 20, PS);
	tier_flush(e->m);
	release(a);
	/* a second record naming the same extent, and one that does not parse */
	cat_be64(key, 20);
	assert_int_equal(cat_get(e->c, CAT_NS_NVME, key, 8, &rec, &len), 0);
	cat_be64(key, 21);
	cat_put(b, CAT_NS_NVME, key, 8, rec, len);
	cat_be64(key, 22);
	val = (uint8_t *)"garbage";
	cat_put(b, CAT_NS_NVME, key, 8, val, 7);
	assert_int_equal(cat_commit(e->c, b, false), 0);
	free(rec);
	restart(e);
	assert_int_equal(tier_recover_begin(e->m), 0);
	/* the wrong size is refused before anything is reserved */
	assert_int_equal(tier_recover(e->m, 20, PS + 1, 0, NULL, &r), -EUCLEAN);
	assert_int_equal(tier_recover(e->m, 20, PS, 0, NULL, &a), 0);
	assert_int_equal(tier_recover(e->m, 21, PS, 0, NULL, &r), -EUCLEAN); /* overlaps 20 */
	assert_int_equal(tier_recover(e->m, 22, 7, 0, NULL, &r), -EUCLEAN);
	release(a);
	tier_recover_end(e->m, b);
	assert_int_equal(cat_batch_count(b), 2); /* 21 and 22 */
	cat_batch_free(b);
}

static void test_forget_record_frees_space_at_restart(void **state)
{
	struct env *e = *state;
	struct tier_stats st;
	cat_batch *b = cat_batch_new();
	tier_obj *a, *r;

	a = make(e, 30, 4 * PS);
	tier_flush(e->m);
	release(a);
	tier_forget_record(b, 30); /* the owner deleted the file */
	assert_int_equal(cat_commit(e->c, b, false), 0);
	restart(e);
	assert_int_equal(tier_recover_begin(e->m), 0);
	assert_int_equal(tier_recover(e->m, 30, 4 * PS, 0, NULL, &r), -ENOENT);
	tier_recover_end(e->m, b);
	tier_get_stats(e->m, &st);
	assert_int_equal(st.nvme_used, 0);
	cat_batch_free(b);
}

static void test_demotion_keeps_bytes(void **state)
{
	struct env *e = *state;
	tier_obj *o[8];
	struct tier_stats st;

	/* 8 x 1 MiB through 4 MiB of DRAM: the first ones go to NVMe */
	for (int i = 0; i < 8; i++)
		o[i] = make(e, 40 + (uint64_t)i, 1u << 20);
	tier_get_stats(e->m, &st);
	assert_true(st.demotions >= 4);
	assert_int_equal(st.evictions, 0);
	assert_int_equal(e->evicted, 0);
	assert_int_equal(tier_where(o[0]), TIER_NVME);
	for (int i = 0; i < 8; i++) {
		check(o[i], 40 + (uint64_t)i, 1u << 20);
		release(o[i]);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_flush_then_recover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_records_are_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forget_record_frees_space_at_restart, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_demotion_keeps_bytes, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
