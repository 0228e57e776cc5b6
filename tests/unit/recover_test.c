/*
 * tests/unit/recover_test.c — the tier's side of a restart: objects written
 * to NVMe come back from their catalog records; damaged, overlapping,
 * mis-sized and orphaned records are refused and deleted; DRAM-only objects
 * are written out at a clean shutdown. A real RocksDB catalog and real
 * segment files (under /var/tmp: O_DIRECT needs a disk filesystem).
 */
#include <errno.h>
#include <ftw.h>
#include <pthread.h>
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
#include "core/fault.h"
#include "core/util.h"
#include "gpu/gpu.h"
#include "tier/tier_i.h"

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

/* tier_promote: an NVMe-only object comes back into DRAM for a reader. */
static void test_promote_on_demand(void **state)
{
	struct env *e = *state;
	tier_obj *o[8];
	struct iovec iov[4];
	struct tier_stats st;

	for (int i = 0; i < 8; i++)
		o[i] = make(e, 60 + (uint64_t)i, 1u << 20);
	assert_int_equal(tier_where(o[0]), TIER_NVME);
	assert_int_equal(tier_lease(o[0]), 0);
	assert_int_equal(tier_read_iov(o[0], 0, 1u << 20, iov, 4), -ENODATA);
	assert_int_equal(tier_promote(o[0]), 0);
	assert_true(tier_where(o[0]) & TIER_DRAM);
	assert_true(tier_read_iov(o[0], 0, 1u << 20, iov, 4) > 0);
	assert_int_equal(tier_promote(o[0]), 0); /* already there */
	tier_unlease(o[0]);
	check(o[0], 60, 1u << 20);
	tier_get_stats(e->m, &st);
	assert_int_equal(st.promotions, 1);
	for (int i = 0; i < 8; i++)
		release(o[i]);
	assert_int_equal(tier_promote(o[0] = make(e, 70, 100)), 0); /* in DRAM */
	tier_drop(o[0]);
	assert_int_equal(tier_promote(o[0]), -ENOENT);
	tier_obj_put(o[0]);
}

/*
 * An operator's eviction: until the owner has deleted the record and let
 * go, the evicted object's extents are not given to anyone else. A crash in
 * between (simulated: the record is never deleted) finds two records that
 * do not overlap, and the new file comes back.
 */
static void test_evicted_extents_wait_for_owner(void **state)
{
	struct env *e = *state;
	tier_obj *a, *b, *r;
	struct tier_stats st;
	cat_batch *bt = cat_batch_new();

	e->cfg.persist_through = true;
	restart(e);
	a = make(e, 50, 4 * PS);
	assert_int_equal(tier_where(a), TIER_DRAM | TIER_NVME);
	assert_int_equal(tier_evict(a), 0);
	tier_get_stats(e->m, &st);
	assert_int_equal(st.nvme_used, 4 * PS); /* still a's: its record is live */
	b = make(e, 51, 4 * PS);
	assert_true(tier_where(b) & TIER_NVME);
	tier_obj_put(a); /* the owner lets go without deleting the record: a crash */
	release(b);
	restart(e);
	assert_int_equal(tier_recover_begin(e->m), 0);
	assert_int_equal(tier_recover(e->m, 51, 4 * PS, 0, NULL, &r), 0);
	check(r, 51, 4 * PS);
	release(r);
	assert_int_equal(tier_recover(e->m, 50, 4 * PS, 0, NULL, &r), 0);
	check(r, 50, 4 * PS);
	release(r);
	tier_recover_end(e->m, bt);
	cat_batch_free(bt);
}

/*
 * Write-through under pressure: whatever else is making room, an object is
 * on NVMe when tier_seal returns (the daemon's rename promise rests on it).
 * New objects are the first victims under "mq", so another writer's
 * eviction used to claim one between its listing and its store.
 */
struct wt_thread {
	struct env *e;
	uint64_t first;
	int not_on_nvme;
	tier_obj *o[48];
};

static void *wt_run(void *arg)
{
	struct wt_thread *t = arg;
	size_t size = 2 * PS + 100;
	uint8_t *buf = malloc(size);

	memset(buf, 0x3c, size);
	for (size_t i = 0; i < KVFS_ARRAY_SIZE(t->o); i++) {
		if (tier_obj_new(t->e->m, NULL, t->first + i, &t->o[i]) ||
		    tier_write(t->o[i], 0, buf, size) || tier_seal(t->o[i])) {
			t->not_on_nvme = -1000;
			break;
		}
		if (!(tier_where(t->o[i]) & TIER_NVME))
			t->not_on_nvme++;
	}
	free(buf);
	return NULL;
}

static void test_write_through_before_seal_returns(void **state)
{
	struct env *e = *state;
	struct wt_thread t[4];
	pthread_t th[4];

	e->cfg.persist_through = true;
	e->cfg.policy = "mq";
	restart(e);
	memset(t, 0, sizeof(t));
	for (int i = 0; i < 4; i++) {
		t[i].e = e;
		t[i].first = 1000 + (uint64_t)i * 100;
		assert_int_equal(pthread_create(&th[i], NULL, wt_run, &t[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(t[i].not_on_nvme, 0);
		for (size_t j = 0; j < KVFS_ARRAY_SIZE(t[i].o); j++)
			release(t[i].o[j]);
	}
}

/* Object 20, of @size bytes, only in a stand-in GPU pool attached to the tier. */
static tier_obj *gpu_only(struct env *e, size_t size, gpu_dev **d, gpu_pool **pool)
{
	uint8_t *buf = malloc(size);
	struct tier_gpu_part part = {.off = 0, .len = size, .src = buf};
	tier_obj *o;

	gpu_shm_configure(1, 64ull << 20);
	assert_int_equal(gpu_open(gpu_shm(), 0, d), 0);
	assert_int_equal(gpu_pool_new(*d, 16 * PS, PS, pool), 0);
	assert_int_equal(tier_gpu_attach(e->m, *d, *pool), 0);
	o = make(e, 20, size);
	for (size_t i = 0; i < size; i++)
		buf[i] = (uint8_t)(20 * 31 + i * 7);
	assert_int_equal(tier_gpu_store_parts(o, *d, &part, 1), 0);
	/* as a DRAM victim with no NVMe to take it would: GPU-only */
	assert_true(obj_try_claim(o, OBJ_DRAM, 0));
	assert_int_equal(tier_dram_backend.drop(o), 0);
	assert_int_equal(tier_where(o), TIER_GPU);
	free(buf);
	return o;
}

/*
 * A file only in a GPU pool (its DRAM copy dropped, no NVMe copy) is made
 * durable by tier_persist (fsync), written down first, and comes back.
 */
static void test_persist_writes_gpu_only_files_down(void **state)
{
	struct env *e = *state;
	size_t size = 2 * PS + 9;
	gpu_dev *d;
	gpu_pool *pool;
	tier_obj *o = gpu_only(e, size, &d, &pool), *r;
	cat_batch *b = cat_batch_new();

	assert_int_equal(tier_persist(o), 0);
	assert_int_equal(tier_sync(e->m), 0);
	assert_true(tier_where(o) & TIER_NVME);
	release(o);
	tier_close(e->m); /* no flush: as after kill -9 */
	gpu_pool_free(pool);
	gpu_close(d);
	open_tier(e);
	assert_int_equal(tier_recover_begin(e->m), 0);
	assert_int_equal(tier_recover(e->m, 20, size, 0, NULL, &r), 0);
	check(r, 20, size);
	release(r);
	tier_recover_end(e->m, b);
	cat_batch_free(b);
}

/*
 * A file only in a GPU pool is written down and onto NVMe by a clean
 * shutdown, and comes back.
 */
static void test_flush_writes_gpu_only_files_down(void **state)
{
	struct env *e = *state;
	size_t size = 3 * PS + 5;
	struct tier_gpu_stats gs;
	gpu_dev *d;
	gpu_pool *pool;
	tier_obj *o = gpu_only(e, size, &d, &pool), *r;
	cat_batch *b = cat_batch_new();

	tier_flush(e->m);
	assert_int_equal(tier_where(o), TIER_GPU | TIER_DRAM | TIER_NVME);
	assert_int_equal(tier_gpu_get_stats(e->m, &gs, 1), 1);
	assert_int_equal(gs.writedowns, 1);
	release(o);
	tier_close(e->m); /* before the pool goes */
	gpu_pool_free(pool);
	gpu_close(d);
	open_tier(e);
	assert_int_equal(tier_recover_begin(e->m), 0);
	assert_int_equal(tier_recover(e->m, 20, size, 0, NULL, &r), 0);
	check(r, 20, size);
	release(r);
	tier_recover_end(e->m, b);
	cat_batch_free(b);
}

/*
 * tier_persist: a sealed DRAM-only object is on NVMe when it returns, and
 * after tier_sync its record brings it back; an unsealed one is refused;
 * an empty one needs nothing and comes back at restart anyway.
 */
static void test_persist_makes_durable(void **state)
{
	struct env *e = *state;
	cat_batch *b = cat_batch_new();
	tier_obj *a, *w, *z, *r;

	a = make(e, 60, 3 * PS + 5);
	assert_int_equal(tier_where(a), TIER_DRAM);
	assert_int_equal(tier_persist(a), 0);
	assert_int_equal(tier_where(a), TIER_DRAM | TIER_NVME);
	assert_int_equal(tier_persist(a), 0); /* already there */
	assert_int_equal(tier_sync(e->m), 0);
	assert_int_equal(tier_obj_new(e->m, NULL, 61, &w), 0);
	assert_int_equal(tier_persist(w), -EINVAL); /* still being written */
	assert_int_equal(tier_obj_new(e->m, NULL, 62, &z), 0);
	assert_int_equal(tier_seal(z), 0);
	assert_int_equal(tier_persist(z), 0);
	release(a); /* no flush: only tier_persist put it there */
	release(w);
	release(z);
	restart(e);
	assert_int_equal(tier_recover_begin(e->m), 0);
	assert_int_equal(tier_recover(e->m, 60, 3 * PS + 5, 0, NULL, &r), 0);
	check(r, 60, 3 * PS + 5);
	release(r);
	assert_int_equal(tier_recover(e->m, 62, 0, 0, NULL, &r), 0);
	assert_true(tier_is_sealed(r));
	assert_int_equal(tier_size(r), 0);
	release(r);
	tier_recover_end(e->m, b);
	cat_batch_free(b);
}

/*
 * A store that had to succeed and failed (write-through, tier_persist) is
 * counted once, stays not durable, and tier_retry_persist stores it.
 */
static void test_failed_persist_is_counted_and_retried(void **state)
{
	struct env *e = *state;
	struct tier_stats st;
	tier_obj *a, *b, *c;

	e->cfg.persist_through = true;
	restart(e);
	kvfs_fault_arm(KVFS_FAULT_NVME_WRITE, 1, EIO, true);
	a = make(e, 70, 2 * PS);
	b = make(e, 71, PS);
	assert_int_equal(tier_where(a), TIER_DRAM);
	assert_int_equal(tier_persist(a), -EIO);
	assert_int_equal(tier_retry_persist(e->m), 2);
	tier_get_stats(e->m, &st);
	assert_int_equal(st.persist_failed, 2); /* files, not attempts */
	assert_int_equal(st.not_durable, 2);
	kvfs_fault_arm(KVFS_FAULT_CAT_WRITE, 1, EIO, false);
	kvfs_fault_arm(KVFS_FAULT_NVME_WRITE, 0, 0, false);
	c = make(e, 72, PS); /* its record fails: a catalog error */
	tier_get_stats(e->m, &st);
	assert_int_equal(st.cat_errors, 1);
	assert_int_equal(st.not_durable, 3);
	release(b); /* a pending object that dies is no longer owed */
	assert_int_equal(tier_retry_persist(e->m), 0);
	assert_int_equal(tier_where(a), TIER_DRAM | TIER_NVME);
	assert_int_equal(tier_where(c), TIER_DRAM | TIER_NVME);
	tier_get_stats(e->m, &st);
	assert_int_equal(st.persist_failed, 3);
	assert_int_equal(st.not_durable, 0);
	release(a);
	release(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_flush_then_recover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_records_are_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forget_record_frees_space_at_restart, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_demotion_keeps_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_through_before_seal_returns, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_evicted_extents_wait_for_owner, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_promote_on_demand, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_writes_gpu_only_files_down, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_persist_writes_gpu_only_files_down, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_persist_makes_durable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_persist_is_counted_and_retried, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
