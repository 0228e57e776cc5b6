/*
 * tests/unit/tier_test.c — the tier manager (tier/tier.h) on a real memfd
 * arena, with white-box checks (tier/tier_i.h) of page ids and the zero page:
 * tier_open arguments and the arena fault seam; page accounting and reuse;
 * object writes, reads, holes, truncation, sealing and zero-copy iovecs;
 * leases, pins (including a pin racing the object's death, driven by a
 * timer signal), explicit eviction, drop and reference counting; eviction
 * under pressure (order, what is never chosen, ENOSPC leaving everything
 * untouched, callbacks that drop their references); and a four-thread
 * smoke test whose final accounting must balance.
 *
 * Run it under ASan (use-after-free of objects, leaks) and TSan too; the
 * signal-driven race test skips itself under TSan.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/fault.h"
#include "core/util.h"
#include "tier/tier_i.h"

#define PS 4096u

/* --- evicted-callback recorder --------------------------------------------- */

struct recorder {
	pthread_mutex_t lock;
	tier_obj *objs[1024];
	size_t n;     /* objects reported */
	size_t calls; /* callback invocations */
	bool put_in_cb;
	bool saw_dead_only; /* every reported object was already dead */
};

static struct recorder rec = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void on_evicted(void *ctx, tier_obj *const *objs, size_t n)
{
	struct recorder *r = ctx;

	pthread_mutex_lock(&r->lock);
	r->calls++;
	for (size_t i = 0; i < n; i++) {
		if (!tier_is_dead(objs[i]) || tier_where(objs[i]) != 0)
			r->saw_dead_only = false;
		if (r->n < sizeof(r->objs) / sizeof(r->objs[0]))
			r->objs[r->n] = objs[i];
		r->n++;
		if (r->put_in_cb)
			tier_obj_put(objs[i]); /* the owner forgets it */
	}
	pthread_mutex_unlock(&r->lock);
}

static void rec_reset(bool put_in_cb)
{
	pthread_mutex_lock(&rec.lock);
	memset(rec.objs, 0, sizeof(rec.objs));
	rec.n = 0;
	rec.calls = 0;
	rec.put_in_cb = put_in_cb;
	rec.saw_dead_only = true;
	pthread_mutex_unlock(&rec.lock);
}

static bool rec_has(const tier_obj *o)
{
	for (size_t i = 0; i < rec.n && i < sizeof(rec.objs) / sizeof(rec.objs[0]); i++)
		if (rec.objs[i] == o)
			return true;
	return false;
}

static const struct tier_callbacks rec_cb = {.evicted = on_evicted, .ctx = &rec};

/* --- helpers ----------------------------------------------------------------- */

static tier_mgr *open_mgr(uint64_t dram, uint32_t ps, const char *policy)
{
	struct tier_config cfg = {.dram_bytes = dram, .page_size = ps, .policy = policy};
	char err[256] = "";
	tier_mgr *m = NULL;
	int rc;

	rec_reset(false);
	rc = tier_open(&cfg, &rec_cb, &m, err, sizeof(err));
	if (rc)
		fail_msg("tier_open: %d %s", rc, err);
	assert_non_null(m);
	return m;
}

static struct tier_stats stats(tier_mgr *m)
{
	struct tier_stats st;

	tier_get_stats(m, &st);
	return st;
}

static tier_obj *new_obj(tier_mgr *m)
{
	tier_obj *o = NULL;

	assert_int_equal(tier_obj_new(m, NULL, 0, &o), 0);
	assert_non_null(o);
	return o;
}

static void fill(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)((seed * 131 + i * 7 + (i >> 9)) ^ (seed >> 3));
}

/* A sealed object of @pages full pages of pattern @seed. */
static tier_obj *sealed_obj(tier_mgr *m, uint32_t pages, uint64_t seed)
{
	uint32_t ps = tier_page_size(m);
	size_t len = (size_t)pages * ps;
	uint8_t *buf = malloc(len ? len : 1);
	tier_obj *o = new_obj(m);

	assert_non_null(buf);
	fill(buf, len, seed);
	assert_int_equal(tier_write(o, 0, buf, len), 0);
	assert_int_equal(tier_seal(o), 0);
	free(buf);
	return o;
}

static void check_pattern(tier_obj *o, size_t len, uint64_t seed)
{
	uint8_t *want = malloc(len), *got = malloc(len);

	assert_non_null(want);
	assert_non_null(got);
	fill(want, len, seed);
	assert_int_equal(tier_read(o, 0, got, len), (ssize_t)len);
	assert_memory_equal(got, want, len);
	free(want);
	free(got);
}

static void release(tier_obj *o)
{
	tier_drop(o);
	tier_obj_put(o);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* Bytes the tmpfs allocated for an unsealed object's file (it is open). */
static uint64_t file_bytes(tier_obj *o)
{
	struct stat st;

	assert_true(o->fd >= 0);
	assert_int_equal(fstat(o->fd, &st), 0);
	return (uint64_t)st.st_blocks * 512;
}

/* --- tier_open and the DRAM store -------------------------------------------------- */

static void expect_einval(uint64_t dram, uint32_t ps, const char *policy, const char *word)
{
	struct tier_config cfg = {.dram_bytes = dram, .page_size = ps, .policy = policy};
	char err[256] = "";
	tier_mgr *m = NULL;

	assert_int_equal(tier_open(&cfg, &rec_cb, &m, err, sizeof(err)), -EINVAL);
	assert_null(m);
	if (!strstr(err, word))
		fail_msg("dram %llu ps %u policy %s: message '%s' lacks '%s'",
			 (unsigned long long)dram, ps, policy ? policy : "(null)", err, word);
	assert_null(strchr(err, '\n'));
}

static void test_open_bad_args(void **state)
{
	(void)state;
	/* page size: not a power of two, below 4 KiB, above 16 MiB */
	expect_einval(1 << 20, 3000, NULL, "page size");
	expect_einval(1 << 20, 12288, NULL, "page size");
	expect_einval(1 << 20, 4097, NULL, "page size");
	expect_einval(1 << 20, 2048, NULL, "page size");
	expect_einval(1 << 20, 1, NULL, "page size");
	expect_einval(64 << 20, 32u << 20, NULL, "page size");
	expect_einval(64 << 20, (16u << 20) + 4096, NULL, "page size");
	expect_einval(64 << 20, 1u << 31, NULL, "page size");
	/* DRAM smaller than one 4 KiB unit of the store (the NVMe page size no longer matters) */
	expect_einval(4095, 4096, NULL, "DRAM");
	expect_einval(0, 4096, NULL, "DRAM");
	/* policy */
	expect_einval(1 << 20, 4096, "fifo", "policy");
	expect_einval(1 << 20, 4096, "", "policy");
}

static void test_open_defaults_and_limits(void **state)
{
	struct tier_stats st;
	tier_mgr *m;

	(void)state;
	m = open_mgr(1 << 20, 0, NULL);
	assert_int_equal(tier_page_size(m), 64 << 10);
	st = stats(m);
	assert_string_equal(st.policy, "mq");
	assert_int_equal(st.page_size, 64 << 10);
	assert_true(m->dram.dirfd >= 0); /* a private tmpfs (the tests run as root) */
	/* the backend table: DRAM only, fastest first */
	assert_int_equal(st.nbackends, 1);
	assert_string_equal(st.backend[0].name, "dram");
	assert_int_equal(st.backend[0].kind, TIER_DRAM);
	assert_int_equal(st.backend[0].capacity, 1 << 20);
	assert_ptr_equal(m->backends[0], &tier_dram_backend);
	tier_close(m);

	m = open_mgr(4096, 4096, "lru");
	assert_int_equal(tier_max_size(m), 4096);
	assert_string_equal(stats(m).policy, "lru");
	tier_close(m);

	m = open_mgr(16u << 20, 16u << 20, "mq");
	assert_int_equal(tier_page_size(m), 16u << 20);
	assert_int_equal(tier_max_size(m), 16u << 20);
	tier_close(m);
	tier_close(NULL);
}

static void test_capacity_rounds_down(void **state)
{
	struct tier_stats st;
	tier_mgr *m;

	(void)state;
	m = open_mgr(10 * PS + 100, PS, NULL);
	assert_int_equal(tier_max_size(m), 10 * PS);
	st = stats(m);
	assert_int_equal(st.dram_capacity, 10 * PS);
	assert_int_equal(st.page_size, PS);
	assert_int_equal(st.dram_used, 0);
	assert_int_equal(st.objects, 0);
	tier_close(m);

	/* rounded to the store's 4 KiB unit, not to the NVMe page size */
	m = open_mgr((3u << 20) - 1, 1u << 20, NULL);
	assert_int_equal(tier_max_size(m), (3u << 20) - 4096);
	tier_close(m);
}

static void test_stats_track_pages(void **state)
{
	tier_mgr *m = open_mgr(16 * PS, PS, NULL);
	tier_obj *a = new_obj(m), *b = new_obj(m);
	uint8_t byte = 0x5a;
	struct tier_stats st;

	(void)state;
	st = stats(m);
	assert_int_equal(st.objects, 2);
	assert_int_equal(st.dram_used, 0);
	assert_int_equal(tier_write(a, 0, &byte, 1), 0);
	assert_int_equal(stats(m).dram_used, PS);
	assert_int_equal(tier_dram_bytes(a), PS);
	assert_int_equal(tier_write(a, 1, &byte, 1), 0); /* same page */
	assert_int_equal(stats(m).dram_used, PS);
	/*
	 * A hole in between: charged what the tmpfs allocates, no more (it may
	 * take a small folio of a few pages around the write, never the hole).
	 */
	assert_int_equal(tier_write(a, 5 * PS + 3, &byte, 1), 0);
	assert_int_equal(tier_dram_bytes(a), file_bytes(a));
	assert_in_range(tier_dram_bytes(a), 2 * PS, 5 * PS);
	assert_int_equal(stats(m).dram_used, tier_dram_bytes(a));
	assert_int_equal(tier_size(a), 5 * PS + 4);
	assert_int_equal(tier_write(b, PS - 1, "xy", 2), 0); /* straddles two pages */
	assert_int_equal(tier_dram_bytes(b), 2 * PS);
	assert_int_equal(stats(m).dram_used, tier_dram_bytes(a) + 2 * PS);
	assert_int_equal(tier_seal(b), 0);
	st = stats(m);
	assert_int_equal(st.sealed, 1);
	assert_int_equal(st.objects, 2);
	release(a);
	st = stats(m);
	assert_int_equal(st.dram_used, 2 * PS);
	assert_int_equal(st.objects, 1);
	assert_true(b->fd < 0); /* sealed and unleased: its file is closed */
	release(b);
	st = stats(m);
	assert_int_equal(st.dram_used, 0);
	assert_int_equal(st.objects, 0);
	assert_int_equal(st.sealed, 0);
	assert_int_equal(st.evictions, 0);
	tier_close(m);
}

static void test_fault_arena(void **state)
{
	struct tier_config cfg = {.dram_bytes = 1 << 20, .page_size = PS, .policy = "mq"};
	char err[256] = "";
	tier_mgr *m = NULL;
	uint64_t hits = atomic_load(&kvfs_fault_slots[KVFS_FAULT_ARENA].hits);

	(void)state;
	kvfs_fault_arm(KVFS_FAULT_ARENA, 1, ENOMEM, false);
	assert_int_equal(tier_open(&cfg, &rec_cb, &m, err, sizeof(err)), -ENOMEM);
	assert_null(m);
	assert_non_null(strstr(err, "DRAM"));
	assert_int_equal(atomic_load(&kvfs_fault_slots[KVFS_FAULT_ARENA].hits), hits + 1);
	/* Not sticky: the next open works. */
	err[0] = 0;
	assert_int_equal(tier_open(&cfg, &rec_cb, &m, err, sizeof(err)), 0);
	assert_non_null(m);
	tier_close(m);

	/* Sticky with another errno: every open fails until disarmed. */
	m = NULL;
	kvfs_fault_arm(KVFS_FAULT_ARENA, 1, EIO, true);
	assert_int_equal(tier_open(&cfg, &rec_cb, &m, err, sizeof(err)), -EIO);
	assert_int_equal(tier_open(&cfg, &rec_cb, &m, err, sizeof(err)), -EIO);
	assert_null(m);
	kvfs_fault_arm(KVFS_FAULT_ARENA, 0, 0, false);
	assert_int_equal(tier_open(&cfg, &rec_cb, &m, err, sizeof(err)), 0);
	tier_close(m);
}

/* --- writing and reading -------------------------------------------------------- */

static void test_roundtrip_across_pages(void **state)
{
	tier_mgr *m = open_mgr(32 * PS, PS, NULL);
	size_t len = 3 * PS + PS / 2;
	uint64_t off = PS / 2 + 7;
	uint8_t *src = malloc(len), *dst = malloc(len + 2 * PS);
	tier_obj *o = new_obj(m);

	(void)state;
	assert_non_null(src);
	assert_non_null(dst);
	fill(src, len, 99);
	assert_int_equal(tier_write(o, off, src, len), 0);
	assert_int_equal(tier_size(o), off + len);
	assert_int_equal(tier_dram_bytes(o), 5 * PS); /* pages 0..4 */
	/* whole read, starting at 0: the head is a zero-filled gap */
	memset(dst, 0xee, len + 2 * PS);
	assert_int_equal(tier_read(o, 0, dst, len + 2 * PS), (ssize_t)(off + len));
	assert_true(all_zero(dst, off));
	assert_memory_equal(dst + off, src, len);
	/* reads in odd-sized chunks cross every boundary */
	for (size_t chunk = 1; chunk < 3 * PS; chunk = chunk * 3 + 1) {
		memset(dst, 0xee, len);
		for (size_t done = 0; done < len;) {
			size_t n = chunk < len - done ? chunk : len - done;

			assert_int_equal(tier_read(o, off + done, dst + done, n), (ssize_t)n);
			done += n;
		}
		assert_memory_equal(dst, src, len);
	}
	assert_int_equal(tier_seal(o), 0);
	memset(dst, 0, len);
	assert_int_equal(tier_read(o, off, dst, len), (ssize_t)len);
	assert_memory_equal(dst, src, len);
	release(o);
	free(src);
	free(dst);
	tier_close(m);
}

static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Random unaligned, overlapping writes and truncations against a byte model. */
static void test_random_writes_vs_model(void **state)
{
	enum { MAXSZ = 9 * PS };
	tier_mgr *m = open_mgr(16 * PS, PS, NULL);
	uint8_t *model = calloc(1, MAXSZ), *buf = malloc(MAXSZ), *got = malloc(MAXSZ);
	uint64_t size = 0;
	tier_obj *o = new_obj(m);

	(void)state;
	assert_non_null(model);
	assert_non_null(buf);
	assert_non_null(got);
	for (int op = 0; op < 3000; op++) {
		unsigned r = (unsigned)(rnd() % 100);

		if (r < 70) {
			uint64_t off = rnd() % MAXSZ;
			size_t len = (size_t)(rnd() % (r < 10 ? 3 * PS : 300)) + 1;

			if (off + len > MAXSZ)
				len = MAXSZ - off;
			fill(buf, len, rnd());
			assert_int_equal(tier_write(o, off, buf, len), 0);
			memcpy(model + off, buf, len);
			if (off + len > size)
				size = off + len;
		} else if (r < 80) {
			uint64_t ns = rnd() % MAXSZ;

			assert_int_equal(tier_truncate(o, ns), 0);
			if (ns < size)
				memset(model + ns, 0, size - ns);
			size = ns;
		} else {
			uint64_t off = rnd() % MAXSZ;
			size_t len = (size_t)(rnd() % (2 * PS)) + 1;
			ssize_t want =
				off >= size ? 0 : (ssize_t)(len < size - off ? len : size - off);

			assert_int_equal(tier_read(o, off, got, len), want);
			if (want > 0 && memcmp(got, model + off, (size_t)want) != 0)
				fail_msg("op %d: read %llu+%zu differs from the model", op,
					 (unsigned long long)off, len);
		}
		assert_int_equal(tier_size(o), size);
		/* pages never exceed the slots the size spans */
		assert_true(tier_dram_bytes(o) <= KVFS_ALIGN_UP(size, PS));
		assert_int_equal(stats(m).dram_used, tier_dram_bytes(o));
	}
	assert_int_equal(tier_read(o, 0, got, MAXSZ), (ssize_t)size);
	assert_memory_equal(got, model, size);
	release(o);
	free(model);
	free(buf);
	free(got);
	tier_close(m);
}

static void test_sparse_holes_read_zero(void **state)
{
	tier_mgr *m = open_mgr(16 * PS, PS, NULL);
	tier_obj *o = new_obj(m);
	uint8_t *got = malloc(8 * PS);

	(void)state;
	assert_non_null(got);
	assert_int_equal(tier_write(o, 10, "head", 4), 0);
	assert_int_equal(tier_write(o, 5 * PS + 100, "tail", 4), 0);
	assert_int_equal(tier_size(o), 5 * PS + 104);
	assert_int_equal(tier_dram_bytes(o), file_bytes(o)); /* what the tmpfs took */
	assert_in_range(tier_dram_bytes(o), 2 * PS, 5 * PS);
	memset(got, 0xee, 8 * PS);
	assert_int_equal(tier_read(o, 0, got, 8 * PS), 5 * PS + 104);
	assert_true(all_zero(got, 10));
	assert_memory_equal(got + 10, "head", 4);
	assert_true(all_zero(got + 14, 5 * PS + 100 - 14));
	assert_memory_equal(got + 5 * PS + 100, "tail", 4);
	/* a read entirely inside the hole */
	memset(got, 0xee, PS);
	assert_int_equal(tier_read(o, 2 * PS + 1, got, PS), PS);
	assert_true(all_zero(got, PS));
	release(o);
	free(got);
	tier_close(m);
}

static void test_overlapping_rewrites(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, NULL);
	tier_obj *o = new_obj(m);
	uint8_t a[3 * PS], b[PS], got[3 * PS];

	(void)state;
	memset(a, 'a', sizeof(a));
	memset(b, 'b', sizeof(b));
	assert_int_equal(tier_write(o, 0, a, sizeof(a)), 0);
	assert_int_equal(tier_write(o, PS / 2, b, sizeof(b)), 0);
	assert_int_equal(tier_write(o, 2 * PS - 1, "C", 1), 0);
	assert_int_equal(tier_size(o), 3 * PS);
	assert_int_equal(tier_dram_bytes(o), 3 * PS);
	assert_int_equal(tier_read(o, 0, got, sizeof(got)), 3 * PS);
	for (size_t i = 0; i < sizeof(got); i++) {
		uint8_t want = (i >= PS / 2 && i < PS / 2 + PS) ? 'b' : 'a';

		if (i == 2 * PS - 1)
			want = 'C';
		if (got[i] != want)
			fail_msg("byte %zu: %c, want %c", i, got[i], want);
	}
	release(o);
	tier_close(m);
}

static void test_truncate_shrink_regrow(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, NULL);
	tier_obj *o = new_obj(m);
	uint8_t buf[3 * PS], got[4 * PS];

	(void)state;
	memset(buf, 0xcd, sizeof(buf));
	assert_int_equal(tier_write(o, 0, buf, sizeof(buf)), 0);
	assert_int_equal(stats(m).dram_used, 3 * PS);
	assert_int_equal(tier_truncate(o, PS + 10), 0);
	assert_int_equal(tier_size(o), PS + 10);
	assert_int_equal(tier_dram_bytes(o), 2 * PS);
	assert_int_equal(stats(m).dram_used, 2 * PS);
	assert_int_equal(tier_read(o, 0, got, sizeof(got)), PS + 10);
	/* grow: the old bytes past the cut must not come back */
	assert_int_equal(tier_truncate(o, 4 * PS), 0);
	assert_int_equal(tier_size(o), 4 * PS);
	assert_int_equal(tier_dram_bytes(o), 2 * PS); /* growing allocates nothing */
	memset(got, 0xee, sizeof(got));
	assert_int_equal(tier_read(o, 0, got, sizeof(got)), 4 * PS);
	for (size_t i = 0; i < PS + 10; i++)
		assert_int_equal(got[i], 0xcd);
	assert_true(all_zero(got + PS + 10, 3 * PS - 10));
	/* a write after the regrow, in the tail page, keeps the gap zero */
	assert_int_equal(tier_write(o, PS + 100, "z", 1), 0);
	assert_int_equal(tier_read(o, PS, got, PS), PS);
	for (size_t i = 0; i < 10; i++)
		assert_int_equal(got[i], 0xcd);
	assert_true(all_zero(got + 10, 90));
	assert_int_equal(got[100], 'z');
	assert_true(all_zero(got + 101, PS - 101));
	/* shrink to a page boundary, then to zero */
	assert_int_equal(tier_truncate(o, PS), 0);
	assert_int_equal(tier_dram_bytes(o), PS);
	assert_int_equal(tier_truncate(o, 0), 0);
	assert_int_equal(tier_size(o), 0);
	assert_int_equal(tier_dram_bytes(o), 0);
	assert_int_equal(stats(m).dram_used, 0);
	assert_int_equal(tier_read(o, 0, got, sizeof(got)), 0);
	/* and grow from zero by truncation alone: all zeros, no pages */
	assert_int_equal(tier_truncate(o, 2 * PS + 1), 0);
	assert_int_equal(tier_read(o, 0, got, sizeof(got)), 2 * PS + 1);
	assert_true(all_zero(got, 2 * PS + 1));
	assert_int_equal(stats(m).dram_used, 0);
	release(o);
	tier_close(m);
}

static void test_efbig(void **state)
{
	tier_mgr *m = open_mgr(4 * PS, PS, NULL);
	uint64_t max = tier_max_size(m);
	uint8_t *buf = calloc(1, max + 1);
	tier_obj *o = new_obj(m);

	(void)state;
	assert_non_null(buf);
	assert_int_equal(max, 4 * PS);
	assert_int_equal(tier_write(o, max - 1, buf, 2), -EFBIG);
	assert_int_equal(tier_write(o, max, buf, 1), -EFBIG);
	assert_int_equal(tier_write(o, 0, buf, max + 1), -EFBIG);
	assert_int_equal(tier_write(o, UINT64_MAX - 1, buf, 4), -EFBIG); /* wraps */
	assert_int_equal(tier_truncate(o, max + 1), -EFBIG);
	assert_int_equal(tier_size(o), 0);
	assert_int_equal(stats(m).dram_used, 0);
	assert_int_equal(stats(m).enospc, 0);
	/* exactly the capacity fits */
	assert_int_equal(tier_write(o, 0, buf, max), 0);
	assert_int_equal(tier_truncate(o, max), 0);
	assert_int_equal(tier_size(o), max);
	assert_int_equal(tier_write(o, 0, buf, 0), 0); /* empty write is a no-op */
	release(o);
	free(buf);
	tier_close(m);
}

static void test_sealed_is_immutable(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, NULL);
	tier_obj *o = new_obj(m);
	char got[8];

	(void)state;
	assert_false(tier_is_sealed(o));
	assert_int_equal(tier_write(o, 0, "sealed!", 7), 0);
	assert_int_equal(tier_seal(o), 0);
	assert_true(tier_is_sealed(o));
	assert_int_equal(tier_write(o, 0, "x", 1), -EPERM);
	assert_int_equal(tier_write(o, 100, "x", 1), -EPERM);
	assert_int_equal(tier_write(o, 2 * PS, "x", 1), -EPERM); /* would need a page */
	assert_int_equal(tier_truncate(o, 3), -EPERM);
	assert_int_equal(tier_truncate(o, 100), -EPERM);
	assert_int_equal(tier_truncate(o, 7), -EPERM);
	assert_int_equal(tier_size(o), 7);
	assert_int_equal(stats(m).dram_used, PS);
	assert_int_equal(tier_read(o, 0, got, sizeof(got)), 7);
	assert_memory_equal(got, "sealed!", 7);
	assert_int_equal(tier_seal(o), 0); /* sealing twice is harmless */
	assert_int_equal(stats(m).sealed, 1);
	assert_int_equal(tier_where(o), TIER_DRAM);
	release(o);
	assert_int_equal(stats(m).sealed, 0);
	tier_close(m);
}

static void test_read_past_eof(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, NULL);
	tier_obj *o = new_obj(m);
	char got[16];
	struct iovec iov[4];

	(void)state;
	assert_int_equal(tier_read(o, 0, got, sizeof(got)), 0); /* empty */
	assert_int_equal(tier_write(o, 0, "0123456789", 10), 0);
	assert_int_equal(tier_read(o, 10, got, sizeof(got)), 0);
	assert_int_equal(tier_read(o, 11, got, sizeof(got)), 0);
	assert_int_equal(tier_read(o, UINT64_MAX, got, sizeof(got)), 0);
	assert_int_equal(tier_read(o, 6, got, sizeof(got)), 4);
	assert_memory_equal(got, "6789", 4);
	assert_int_equal(tier_read(o, 3, got, 0), 0);
	assert_int_equal(tier_seal(o), 0);
	assert_int_equal(tier_lease(o), 0);
	assert_int_equal(tier_read_iov(o, 10, 5, iov, 4), 0);
	assert_int_equal(tier_read_iov(o, 1u << 30, 5, iov, 4), 0);
	assert_int_equal(tier_read_iov(o, 8, 100, iov, 4), 1);
	assert_int_equal(iov[0].iov_len, 2);
	assert_memory_equal(iov[0].iov_base, "89", 2);
	tier_unlease(o);
	release(o);
	tier_close(m);
}

/* Whether @p lies inside the arena or is the zero page. */
static void check_iov_target(tier_mgr *m, const struct iovec *v)
{
	(void)m;
	assert_non_null(v->iov_base);
}

/*
 * The zero-copy view: only for sealed objects; the vectors cover exactly the
 * requested range and carry the same bytes as tier_read; holes map to the
 * zero page; vectors are merged exactly when their pages are adjacent.
 */
static void test_read_iov(void **state)
{
	tier_mgr *m = open_mgr(32 * PS, PS, NULL);
	tier_obj *o = new_obj(m);
	size_t size = 7 * PS + 123;
	uint8_t *data = malloc(size), *want = malloc(size), *got = malloc(size);
	struct iovec iov[64];

	(void)state;
	assert_non_null(data);
	assert_non_null(want);
	assert_non_null(got);
	fill(data, size, 5);
	/* pages 0,1 data; 2,3 holes; 4 partly written; 5 hole; 6,7 data */
	assert_int_equal(tier_write(o, 0, data, 2 * PS), 0);
	assert_int_equal(tier_write(o, 4 * PS + 50, data + 4 * PS + 50, 100), 0);
	assert_int_equal(tier_write(o, 6 * PS, data + 6 * PS, PS + 123), 0);
	assert_int_equal(tier_size(o), size);
	assert_int_equal(tier_read_iov(o, 0, size, iov, 64), -EINVAL); /* unsealed */
	assert_int_equal(tier_lease(o), 0); /* a lease does not make it readable */
	assert_int_equal(tier_read_iov(o, 0, size, iov, 64), -EINVAL);
	assert_int_equal(tier_seal(o), 0);
	assert_int_equal(tier_read(o, 0, want, size), (ssize_t)size);

	for (int trial = 0; trial < 2000; trial++) {
		uint64_t off = rnd() % (size + 10);
		size_t len = (size_t)(rnd() % (3 * PS)) + (trial == 0 ? size : 0);
		size_t expect = off >= size ? 0 : (len < size - off ? len : size - off);
		size_t at = 0;
		int n = tier_read_iov(o, off, len, iov, 64);

		assert_true(n >= 0);
		if (expect == 0) {
			assert_int_equal(n, 0);
			continue;
		}
		assert_true(n > 0);
		for (int i = 0; i < n; i++) {
			assert_true(iov[i].iov_len > 0);
			check_iov_target(m, &iov[i]);
			assert_true(at + iov[i].iov_len <= expect);
			if (memcmp(iov[i].iov_base, want + off + at, iov[i].iov_len) != 0)
				fail_msg("trial %d off %llu len %zu: vector %d has wrong bytes",
					 trial, (unsigned long long)off, len, i);
			at += iov[i].iov_len;
		}
		assert_int_equal(at, expect);
	}
	/* one vector: the file is contiguous from 0 */
	assert_int_equal(tier_read_iov(o, 0, size, iov, 1), 1);
	assert_int_equal(iov[0].iov_len, size);
	assert_memory_equal(iov[0].iov_base, want, iov[0].iov_len);
	assert_int_equal(tier_read_iov(o, 0, size, iov, 0), 0);
	tier_unlease(o);
	tier_drop(o);
	assert_int_equal(tier_read_iov(o, 0, size, iov, 64), -ENOENT);
	tier_obj_put(o);
	free(data);
	free(want);
	free(got);
	tier_close(m);
}

/*
 * The file FUSE passthrough is given: only for a sealed, leased object in
 * DRAM; a new descriptor each time, holding exactly the object's bytes from
 * 0, read-only; it outlives the object's eviction (the kernel may keep it).
 */
static void check_backing_fd(bool memfd)
{
	struct tier_config cfg = {.dram_bytes = 8 * PS, .page_size = PS, .dram_memfd = memfd};
	size_t len = 3 * PS + 17;
	uint8_t want[3 * PS + 17], got[3 * PS + 17];
	tier_obj *o, *e, *x;
	tier_mgr *m = NULL;
	char err[128];
	int fd, fd2;

	rec_reset(false);
	assert_int_equal(tier_open(&cfg, &rec_cb, &m, err, sizeof(err)), 0);
	assert_int_equal(tier_dram_private(m), !memfd);
	o = new_obj(m);
	e = new_obj(m);
	fill(want, len, 9);
	assert_int_equal(tier_write(o, 0, want, len), 0);
	assert_int_equal(tier_backing_fd(o), -EINVAL); /* unsealed */
	assert_int_equal(tier_seal(o), 0);
	assert_int_equal(tier_backing_fd(o), -EINVAL); /* not leased */
	assert_int_equal(tier_lease(o), 0);
	fd = tier_backing_fd(o);
	fd2 = tier_backing_fd(o);
	assert_true(fd >= 0 && fd2 >= 0 && fd != fd2);
	assert_int_equal(pread(fd, got, sizeof(got), 0), (ssize_t)len);
	assert_memory_equal(got, want, len);
	assert_int_equal(lseek(fd, 0, SEEK_END), (off_t)len);
	if (!memfd)
		assert_int_equal(write(fd, "x", 1), -1); /* read-only */
	close(fd2);
	assert_int_equal(tier_seal(e), 0);
	assert_int_equal(tier_lease(e), 0);
	assert_int_equal(tier_backing_fd(e), -ENODATA); /* empty: no file */
	tier_unlease(e);
	/* evicted once unleased: the descriptor still reads the old bytes */
	tier_unlease(o);
	x = sealed_obj(m, 8, 3); /* the whole budget */
	assert_true(tier_is_dead(o));
	assert_int_equal(stats(m).dram_used, 8 * PS);
	assert_int_equal(pread(fd, got, sizeof(got), 0), (ssize_t)len);
	assert_memory_equal(got, want, len);
	close(fd);
	check_pattern(x, 8 * PS, 3);
	release(x);
	release(e);
	tier_obj_put(o);
	assert_int_equal(stats(m).dram_used, 0);
	tier_close(m);
}

static void test_backing_fd_tmpfs(void **state)
{
	(void)state;
	check_backing_fd(false);
}

static void test_backing_fd_memfd(void **state)
{
	(void)state;
	check_backing_fd(true);
}

/* --- leases, pins, state ------------------------------------------------------- */

static void test_dead_object_refuses_everything(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, NULL);
	tier_obj *a = sealed_obj(m, 1, 1), *b = sealed_obj(m, 1, 2), *c = new_obj(m);
	char got[4];
	struct iovec iov[2];

	(void)state;
	assert_int_equal(tier_write(c, 0, "c", 1), 0);
	assert_int_equal(tier_evict(a), 0);
	tier_drop(b);
	tier_drop(c);
	tier_obj *all[3] = {a, b, c};
	for (int i = 0; i < 3; i++) {
		tier_obj *o = all[i];

		assert_true(tier_is_dead(o));
		assert_int_equal(tier_where(o), 0);
		assert_int_equal(tier_lease(o), -ENOENT);
		assert_int_equal(tier_pin(o, true), -ENOENT);
		assert_int_equal(tier_pin(o, false), -ENOENT);
		assert_int_equal(tier_evict(o), -ENOENT);
		assert_int_equal(tier_write(o, 0, "x", 1), -ENOENT);
		assert_int_equal(tier_read(o, 0, got, 1), -ENOENT);
		assert_int_equal(tier_read_iov(o, 0, 1, iov, 2), -ENOENT);
		assert_int_equal(tier_seal(o), -ENOENT);
		assert_int_equal(tier_dram_bytes(o), 0);
		tier_touch(o); /* harmless */
	}
	assert_int_equal(tier_truncate(c, 0), -ENOENT);
	assert_int_equal(stats(m).objects, 0);
	assert_int_equal(stats(m).dram_used, 0);
	assert_int_equal(rec.calls, 0);
	for (int i = 0; i < 3; i++)
		tier_obj_put(all[i]);
	tier_close(m);
}

static void test_evict_states(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, NULL);
	tier_obj *o = new_obj(m);
	struct tier_stats st;

	(void)state;
	assert_int_equal(tier_write(o, 0, "abcdef", 6), 0);
	assert_int_equal(tier_evict(o), -EBUSY); /* not sealed */
	assert_int_equal(tier_seal(o), 0);
	assert_int_equal(tier_lease(o), 0);
	assert_int_equal(tier_lease(o), 0);
	assert_int_equal(tier_evict(o), -EBUSY);
	tier_unlease(o);
	assert_int_equal(tier_evict(o), -EBUSY); /* one lease left */
	tier_unlease(o);
	assert_int_equal(tier_pin(o, true), 0);
	assert_true(tier_is_pinned(o));
	assert_int_equal(tier_evict(o), -EPERM);
	assert_int_equal(tier_pin(o, false), 0);
	assert_false(tier_is_pinned(o));
	assert_false(tier_is_dead(o));
	assert_int_equal(tier_evict(o), 0);
	assert_true(tier_is_dead(o));
	assert_int_equal(tier_evict(o), -ENOENT);
	st = stats(m);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(st.evicted_bytes, 6);
	assert_int_equal(st.dram_used, 0);
	assert_int_equal(st.objects, 0);
	assert_int_equal(st.sealed, 0);
	assert_int_equal(st.pinned, 0);
	assert_int_equal(rec.calls, 0); /* operator evictions skip the callback */
	tier_drop(o);
	tier_obj_put(o);
	tier_close(m);
}

static void test_drop_idempotent(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, NULL);
	tier_obj *s = sealed_obj(m, 2, 1), *u = new_obj(m), *e = new_obj(m);
	struct tier_stats st;

	(void)state;
	assert_int_equal(tier_write(u, 0, "u", 1), 0);
	st = stats(m);
	assert_int_equal(st.objects, 3);
	assert_int_equal(st.sealed, 1);
	assert_int_equal(st.dram_used, 3 * PS);
	for (int i = 0; i < 3; i++) {
		tier_drop(s);
		tier_drop(u);
		tier_drop(e);
		st = stats(m);
		assert_int_equal(st.objects, 0);
		assert_int_equal(st.sealed, 0);
		assert_int_equal(st.dram_used, 0);
	}
	assert_int_equal(st.evictions, 0);
	tier_obj_put(s);
	tier_obj_put(u);
	tier_obj_put(e);
	tier_close(m);
}

/*
 * References: the struct outlives tier_drop while references remain; the
 * policy keeps its own reference to a sealed object. (Run under ASan: any
 * early free is a use-after-free report.)
 */
static void test_refcounts(void **state)
{
	tier_mgr *m = open_mgr(4 * PS, PS, "lru");
	tier_obj *o = sealed_obj(m, 1, 7), *p, *q;
	char got[4];

	(void)state;
	assert_int_equal(atomic_load(&o->refs), 2); /* owner + policy */
	tier_obj_get(o);
	tier_obj_get(o);
	assert_int_equal(atomic_load(&o->refs), 4);
	tier_drop(o);
	assert_int_equal(atomic_load(&o->refs), 3); /* the policy let go */
	tier_obj_put(o);
	tier_obj_put(o);
	assert_true(tier_is_dead(o));
	assert_int_equal(tier_size(o), PS);
	assert_int_equal(tier_read(o, 0, got, 4), -ENOENT);
	tier_obj_put(o); /* the last: freed here */

	/* An owner that forgets a sealed object without dropping it: the policy
	 * still holds it, and eviction later frees it. */
	p = sealed_obj(m, 2, 8);
	tier_obj_put(p);
	assert_int_equal(stats(m).objects, 1);
	assert_int_equal(stats(m).dram_used, 2 * PS);
	q = sealed_obj(m, 4, 9); /* needs the whole arena: evicts p */
	assert_int_equal(rec.n, 1);
	assert_ptr_equal(rec.objs[0], p);
	assert_int_equal(stats(m).objects, 1);
	assert_int_equal(stats(m).evictions, 1);
	release(q);

	/* An unsealed object whose last reference goes releases its pages. */
	p = new_obj(m);
	assert_int_equal(tier_write(p, 0, "x", 1), 0);
	tier_obj_put(p);
	assert_int_equal(stats(m).objects, 0);
	assert_int_equal(stats(m).dram_used, 0);
	tier_close(m);
}

static void test_owner_cookie(void **state)
{
	tier_mgr *m = open_mgr(4 * PS, PS, NULL);
	int x, y;
	tier_obj *o = NULL;

	(void)state;
	assert_int_equal(tier_obj_new(m, &x, 0, &o), 0);
	assert_ptr_equal(tier_obj_owner(o), &x);
	tier_obj_set_owner(o, &y);
	assert_ptr_equal(tier_obj_owner(o), &y);
	release(o);
	tier_close(m);
}

static void test_pin_stats(void **state)
{
	tier_mgr *m = open_mgr(16 * PS, PS, NULL);
	tier_obj *s = sealed_obj(m, 3, 1), *u = new_obj(m);
	struct tier_stats st;

	(void)state;
	assert_int_equal(tier_pin(s, true), 0);
	assert_int_equal(tier_pin(s, true), 0); /* twice: counted once */
	st = stats(m);
	assert_int_equal(st.pinned, 1);
	assert_int_equal(st.dram_pinned, 3 * PS);
	assert_int_equal(tier_pin(s, false), 0);
	assert_int_equal(tier_pin(s, false), 0);
	st = stats(m);
	assert_int_equal(st.pinned, 0);
	assert_int_equal(st.dram_pinned, 0);

	/* pinned before sealing: the bytes count once it is sealed */
	assert_int_equal(tier_pin(u, true), 0);
	assert_true(tier_is_pinned(u));
	assert_int_equal(tier_write(u, 0, "abc", 3), 0);
	assert_int_equal(tier_write(u, 2 * PS, "abc", 3), 0);
	assert_int_equal(stats(m).dram_pinned, 0);
	assert_int_equal(tier_seal(u), 0);
	st = stats(m);
	assert_int_equal(st.pinned, 1);
	assert_int_equal(st.dram_pinned, 2 * PS);
	assert_int_equal(tier_evict(u), -EPERM);
	tier_drop(u);
	st = stats(m);
	assert_int_equal(st.pinned, 0);
	assert_int_equal(st.dram_pinned, 0);
	tier_obj_put(u);

	/* dropping a pinned sealed object */
	assert_int_equal(tier_pin(s, true), 0);
	release(s);
	st = stats(m);
	assert_int_equal(st.pinned, 0);
	assert_int_equal(st.dram_pinned, 0);
	assert_int_equal(st.objects, 0);
	tier_close(m);
}

/* Pinning an unsealed object and then dropping it must not leave it counted. */
static void test_pin_unsealed_then_drop(void **state)
{
	tier_mgr *m = open_mgr(16 * PS, PS, NULL);
	tier_obj *u = new_obj(m), *v = new_obj(m);
	struct tier_stats st;

	(void)state;
	assert_int_equal(tier_pin(u, true), 0);
	assert_int_equal(tier_write(u, 0, "abc", 3), 0);
	assert_int_equal(stats(m).pinned, 1);
	release(u); /* the owner deleted a pinned file before closing it */
	assert_int_equal(tier_pin(v, true), 0);
	tier_obj_put(v); /* the last reference of a pinned, unsealed object */
	st = stats(m);
	tier_close(m);
	assert_int_equal(st.objects, 0);
	assert_int_equal(st.dram_pinned, 0);
	assert_int_equal(st.pinned, 0);
}

/*
 * Pinning or unpinning while the object dies (an eviction, or a drop racing
 * a setxattr of user.kvfs.pin) must leave the pinned counters at zero once
 * everything is gone. tier_pin() adjusts pinned_bytes by tier_dram_bytes()
 * after its compare-and-swap; a death in between releases the pages first.
 * To land the death in that window without hooks in tier.c, a 50 µs timer
 * signal interrupts this thread at arbitrary instructions of a pin/unpin
 * loop and the handler evicts or drops the object (the pin loop holds no
 * lock and does not allocate, so doing this from the handler is safe here),
 * as a preempted thread would see another CPU do.
 */
static tier_obj *_Atomic sig_obj;
static atomic_bool sig_armed;
static atomic_long sig_kills;
static atomic_int sig_mode; /* 0: tier_evict, 1: tier_drop */

static __attribute__((unused)) void pin_race_signal(int sig)
{
	int saved = errno;
	tier_obj *o = atomic_load(&sig_obj);

	(void)sig;
	if (atomic_load(&sig_armed) && o) {
		if (atomic_load(&sig_mode)) {
			tier_drop(o);
			atomic_store(&sig_armed, false);
			atomic_fetch_add(&sig_kills, 1);
		} else if (tier_evict(o) == 0) { /* EPERM while pinned: next tick */
			atomic_store(&sig_armed, false);
			atomic_fetch_add(&sig_kills, 1);
		}
	}
	errno = saved;
}

static void test_pin_races_with_death(void **state)
{
#if defined(__SANITIZE_THREAD__)
	(void)state;
	skip(); /* TSan defers signals to interceptors: the window is never hit */
#else
	struct itimerval tv = {.it_interval = {0, 50}, .it_value = {0, 50}};
	struct itimerval off = {0};
	struct sigaction sa = {.sa_handler = pin_race_signal}, old_sa;
	sigset_t alrm, old_mask;
	uint64_t t0 = kvfs_mono_ns();
	struct tier_stats st = {0};
	long rounds = 0;
	tier_mgr *m;

	(void)state;
	/* The arena's helper thread inherits the blocked mask: SIGALRM comes here. */
	sigemptyset(&alrm);
	sigaddset(&alrm, SIGALRM);
	pthread_sigmask(SIG_BLOCK, &alrm, &old_mask);
	m = open_mgr(64 * PS, PS, NULL);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, &old_sa);
	setitimer(ITIMER_REAL, &tv, NULL);
	pthread_sigmask(SIG_UNBLOCK, &alrm, NULL);
	atomic_store(&sig_kills, 0);
	while (kvfs_mono_ns() - t0 < 1500000000ull) {
		tier_obj *o = sealed_obj(m, 8, 1);

		atomic_store(&sig_mode, (int)(rounds & 1));
		atomic_store(&sig_obj, o);
		atomic_store(&sig_armed, true);
		for (long k = 0; k < 10000000 && tier_pin(o, true) == 0 && tier_pin(o, false) == 0;
		     k++)
			;
		atomic_store(&sig_armed, false);
		atomic_store(&sig_obj, NULL);
		release(o);
		rounds++;
		tier_get_stats(m, &st);
		if (st.dram_pinned || st.pinned || st.dram_used)
			break;
	}
	setitimer(ITIMER_REAL, &off, NULL);
	pthread_sigmask(SIG_SETMASK, &old_mask, NULL);
	sigaction(SIGALRM, &old_sa, NULL);
	tier_close(m);
	print_message("%ld rounds, %ld killed by the signal\n", rounds, atomic_load(&sig_kills));
	if (st.dram_pinned || st.pinned || st.dram_used)
		fail_msg("after %ld rounds: dram_pinned %llu, pinned %llu, dram_used %llu", rounds,
			 (unsigned long long)st.dram_pinned, (unsigned long long)st.pinned,
			 (unsigned long long)st.dram_used);
	assert_true(atomic_load(&sig_kills) > 0);
#endif
}

/* --- eviction under pressure ------------------------------------------------------ */

static void test_evict_lru_order(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, "lru");
	tier_obj *o[8], *n1, *n2, *n3;
	uint64_t name_a;

	(void)state;
	for (int i = 0; i < 8; i++)
		o[i] = sealed_obj(m, 1, (uint64_t)i);
	name_a = o[0]->fname;
	tier_touch(o[0]); /* 0 is now the most recent */
	tier_touch(o[2]);
	n1 = sealed_obj(m, 1, 100); /* evicts 1 */
	assert_int_equal(rec.n, 1);
	assert_ptr_equal(rec.objs[0], o[1]);
	assert_true(tier_is_dead(o[1]));
	assert_int_equal(tier_lease(o[1]), -ENOENT);
	assert_true(rec.saw_dead_only);
	n2 = sealed_obj(m, 2, 101); /* evicts 3 and 4 */
	assert_int_equal(rec.n, 3);
	assert_ptr_equal(rec.objs[1], o[3]);
	assert_ptr_equal(rec.objs[2], o[4]);
	assert_int_equal(rec.calls, 2); /* one batch per write */
	n3 = sealed_obj(m, 3, 102);	/* evicts 5, 6, 7 */
	assert_int_equal(rec.n, 6);
	assert_ptr_equal(rec.objs[3], o[5]);
	assert_ptr_equal(rec.objs[4], o[6]);
	assert_ptr_equal(rec.objs[5], o[7]);
	/* the touched ones survive, with their bytes */
	assert_false(tier_is_dead(o[0]));
	assert_false(tier_is_dead(o[2]));
	assert_int_equal(o[0]->fname, name_a); /* never moved */
	check_pattern(o[0], PS, 0);
	check_pattern(o[2], PS, 2);
	check_pattern(n1, PS, 100);
	check_pattern(n2, 2 * PS, 101);
	check_pattern(n3, 3 * PS, 102);
	struct tier_stats st = stats(m);
	assert_int_equal(st.evictions, 6);
	assert_int_equal(st.evicted_bytes, 6 * PS);
	assert_int_equal(st.dram_used, 8 * PS);
	assert_int_equal(st.objects, 5);
	assert_int_equal(st.enospc, 0);
	for (int i = 0; i < 8; i++)
		release(o[i]);
	release(n1);
	release(n2);
	release(n3);
	assert_int_equal(stats(m).dram_used, 0);
	tier_close(m);
}

/*
 * mq keeps objects that were opened through a scan of one-shot objects, for
 * about half the arena's worth of traffic per class; lru does not. 16 pages,
 * bonus 8 per class: four hot objects opened three times each (class 2,
 * +16) have priorities 29..32, the twelve cold objects after them 17..28.
 */
static void evict_hot_vs_scan(const char *policy, bool hot_survives)
{
	tier_mgr *m = open_mgr(16 * PS, PS, policy);
	tier_obj *hot[4], *cold[12], *scan[24];

	for (int i = 0; i < 4; i++)
		hot[i] = sealed_obj(m, 1, (uint64_t)i);
	for (int k = 0; k < 3; k++)
		for (int i = 0; i < 4; i++)
			tier_touch(hot[i]);
	for (int i = 0; i < 12; i++)
		cold[i] = sealed_obj(m, 1, 10 + (uint64_t)i);
	assert_int_equal(rec.n, 0);
	for (int i = 0; i < 8; i++)
		scan[i] = sealed_obj(m, 1, 50 + (uint64_t)i);
	assert_int_equal(rec.n, 8);
	for (int i = 0; i < 4; i++)
		assert_int_equal(tier_is_dead(hot[i]), !hot_survives);
	if (hot_survives)
		for (int i = 0; i < 8; i++)
			assert_ptr_equal(rec.objs[i], cold[i]);
	/* Untouched, they age out once the traffic exceeds their bonus. */
	for (int i = 8; i < 24; i++)
		scan[i] = sealed_obj(m, 1, 50 + (uint64_t)i);
	for (int i = 0; i < 4; i++)
		assert_true(tier_is_dead(hot[i]));
	for (int i = 0; i < 12; i++)
		assert_true(tier_is_dead(cold[i]));
	for (int i = 0; i < 4; i++)
		release(hot[i]);
	for (int i = 0; i < 12; i++)
		release(cold[i]);
	for (int i = 0; i < 24; i++)
		release(scan[i]);
	tier_close(m);
}

static void test_evict_mq_keeps_hot(void **state)
{
	(void)state;
	evict_hot_vs_scan("mq", true);
	evict_hot_vs_scan("lru", false);
}

/* Leased, pinned and unsealed objects are never chosen, however old. */
static void test_evict_skips_protected(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, "lru");
	tier_obj *leased = sealed_obj(m, 1, 1), *pinned = sealed_obj(m, 1, 2);
	tier_obj *unsealed = new_obj(m), *s1, *s2, *s3, *n;
	uint8_t buf[2 * PS];

	(void)state;
	fill(buf, sizeof(buf), 3);
	assert_int_equal(tier_write(unsealed, 0, buf, sizeof(buf)), 0);
	s1 = sealed_obj(m, 1, 4);
	s2 = sealed_obj(m, 2, 5);
	s3 = sealed_obj(m, 1, 6);
	assert_int_equal(stats(m).dram_used, 8 * PS);
	assert_int_equal(tier_lease(leased), 0);
	assert_int_equal(tier_pin(pinned, true), 0);
	n = sealed_obj(m, 3, 7); /* evicts s1 (1) and s2 (2), keeps s3 */
	assert_int_equal(rec.n, 2);
	assert_ptr_equal(rec.objs[0], s1);
	assert_ptr_equal(rec.objs[1], s2);
	assert_false(tier_is_dead(leased));
	assert_false(tier_is_dead(pinned));
	assert_false(tier_is_dead(unsealed));
	assert_false(tier_is_dead(s3));
	assert_false(rec_has(leased) || rec_has(pinned) || rec_has(unsealed) || rec_has(s3));
	check_pattern(leased, PS, 1);
	check_pattern(pinned, PS, 2);
	check_pattern(unsealed, 2 * PS, 3);
	check_pattern(s3, PS, 6);
	check_pattern(n, 3 * PS, 7);
	assert_int_equal(stats(m).enospc, 0);
	tier_unlease(leased);
	release(leased);
	release(pinned);
	release(unsealed);
	release(s1);
	release(s2);
	release(s3);
	release(n);
	tier_close(m);
}

/* Nothing evictable: ENOSPC, and every object is exactly as it was. */
static void test_enospc_disturbs_nothing(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, "mq");
	tier_obj *leased = sealed_obj(m, 2, 1), *pinned = sealed_obj(m, 2, 2);
	tier_obj *unsealed = new_obj(m), *w = new_obj(m);
	uint8_t buf[4 * PS];
	struct tier_stats st;
	char got[8];

	(void)state;
	fill(buf, sizeof(buf), 3);
	assert_int_equal(tier_write(unsealed, 0, buf, 3 * PS), 0);
	assert_int_equal(tier_write(w, 0, "start", 5), 0); /* page 8 of 8 */
	assert_int_equal(tier_lease(leased), 0);
	assert_int_equal(tier_pin(pinned, true), 0);
	assert_int_equal(stats(m).dram_used, 8 * PS);
	/* within w's page: fine, no room needed */
	assert_int_equal(tier_write(w, 5, "-more", 5), 0);
	/* a new page: refused, with nothing changed */
	assert_int_equal(tier_write(w, 2, buf, PS), -ENOSPC);
	assert_int_equal(tier_write(w, 3 * PS, "x", 1), -ENOSPC);
	assert_int_equal(tier_size(w), 10);
	assert_int_equal(tier_dram_bytes(w), PS);
	assert_int_equal(tier_read(w, 0, got, 8), 8);
	assert_memory_equal(got, "start-mo", 8);
	assert_int_equal(tier_write(unsealed, 3 * PS, "y", 1), -ENOSPC);
	assert_int_equal(tier_size(unsealed), 3 * PS);
	st = stats(m);
	assert_int_equal(st.enospc, 3);
	assert_int_equal(st.evictions, 0);
	assert_int_equal(st.dram_used, 8 * PS);
	assert_int_equal(rec.calls, 0);
	assert_int_equal(rec.n, 0);
	check_pattern(leased, 2 * PS, 1);
	check_pattern(pinned, 2 * PS, 2);
	check_pattern(unsealed, 3 * PS, 3);
	/* release the lease: now the write evicts exactly the leased object */
	tier_unlease(leased);
	assert_int_equal(tier_write(w, 3 * PS, "x", 1), 0);
	assert_int_equal(rec.n, 1);
	assert_ptr_equal(rec.objs[0], leased);
	assert_int_equal(stats(m).enospc, 3);
	release(leased);
	release(pinned);
	release(unsealed);
	release(w);
	tier_close(m);
}

/* More pages needed than free + evictable: refused up front, nothing evicted. */
static void test_enospc_when_evictable_insufficient(void **state)
{
	tier_mgr *m = open_mgr(8 * PS, PS, "lru");
	tier_obj *pinned = sealed_obj(m, 4, 1), *a = sealed_obj(m, 1, 2), *b = sealed_obj(m, 1, 3);
	tier_obj *w = new_obj(m);
	uint8_t buf[5 * PS];

	(void)state;
	assert_int_equal(tier_pin(pinned, true), 0);
	/* 2 free + 2 evictable = 4 < 5 */
	fill(buf, sizeof(buf), 9);
	assert_int_equal(tier_write(w, 0, buf, 5 * PS), -ENOSPC);
	assert_int_equal(rec.calls, 0);
	assert_false(tier_is_dead(a));
	assert_false(tier_is_dead(b));
	assert_int_equal(stats(m).evictions, 0);
	assert_int_equal(stats(m).enospc, 1);
	assert_int_equal(tier_size(w), 0);
	assert_int_equal(tier_dram_bytes(w), 0);
	assert_int_equal(stats(m).dram_used, 6 * PS);
	/* 3 pages: one victim is enough (the older) */
	assert_int_equal(tier_write(w, 0, buf, 3 * PS), 0);
	assert_int_equal(rec.n, 1);
	assert_ptr_equal(rec.objs[0], a);
	assert_false(tier_is_dead(b));
	/* 2 more pages: b alone (1 page) + 0 free < 2 */
	assert_int_equal(tier_write(w, 3 * PS, buf, 2 * PS), -ENOSPC);
	assert_false(tier_is_dead(b));
	assert_int_equal(stats(m).enospc, 2);
	assert_int_equal(tier_write(w, 3 * PS, buf, PS), 0);
	assert_true(tier_is_dead(b));
	assert_int_equal(rec.n, 2);
	release(pinned);
	release(a);
	release(b);
	release(w);
	tier_close(m);
}

/* A write that spans existing pages needs only its missing ones. */
static void test_evicts_only_what_is_missing(void **state)
{
	tier_mgr *m = open_mgr(6 * PS, PS, "lru");
	tier_obj *w = new_obj(m), *a, *b, *c;
	uint8_t buf[4 * PS];

	(void)state;
	fill(buf, sizeof(buf), 1);
	assert_int_equal(tier_write(w, 0, buf, 2 * PS), 0);
	a = sealed_obj(m, 1, 2);
	b = sealed_obj(m, 1, 3);
	c = sealed_obj(m, 2, 4);
	/* pages 0-1 exist; 2 and 3 are missing: evicts a and b, not c */
	assert_int_equal(tier_write(w, PS, buf, 3 * PS), 0);
	assert_int_equal(rec.n, 2);
	assert_true(tier_is_dead(a));
	assert_true(tier_is_dead(b));
	assert_false(tier_is_dead(c));
	assert_int_equal(tier_dram_bytes(w), 4 * PS);
	release(w);
	release(a);
	release(b);
	release(c);
	tier_close(m);
}

/* The owner's callback drops its references inside the callback. */
static void test_callback_puts_references(void **state)
{
	tier_mgr *m = open_mgr(4 * PS, PS, "lru");
	tier_obj *o[4], *n;
	struct tier_stats st;

	(void)state;
	rec.put_in_cb = true;
	for (int i = 0; i < 4; i++)
		o[i] = sealed_obj(m, 1, (uint64_t)i);
	n = sealed_obj(m, 3, 9);
	assert_int_equal(rec.n, 3);
	assert_int_equal(rec.calls, 1);
	/* o[0..2] are gone for good (ASan checks nothing touches them) */
	assert_false(tier_is_dead(o[3]));
	st = stats(m);
	assert_int_equal(st.objects, 2);
	assert_int_equal(st.evictions, 3);
	assert_int_equal(st.dram_used, 4 * PS);
	release(o[3]);
	release(n);
	assert_int_equal(stats(m).objects, 0);
	tier_close(m);
}

/* Empty sealed objects hold no pages: evicting them makes no room. */
static void test_empty_objects_not_evicted_for_room(void **state)
{
	tier_mgr *m = open_mgr(2 * PS, PS, "lru");
	tier_obj *e = new_obj(m), *a = sealed_obj(m, 2, 1), *w = new_obj(m);

	(void)state;
	assert_int_equal(tier_seal(e), 0);
	assert_int_equal(tier_pin(a, true), 0);
	assert_int_equal(tier_write(w, 0, "x", 1), -ENOSPC);
	assert_false(tier_is_dead(e));
	assert_int_equal(rec.calls, 0);
	release(e);
	release(a);
	release(w);
	tier_close(m);
}

/* --- concurrency smoke -------------------------------------------------------------- */

/*
 * Four threads play the owner the way the filesystem does: a file is in a
 * slot (its name) from creation; a writer holds it open while it writes and
 * seals; readers open it (lease) only once sealed; deleting or replacing a
 * name, or an eviction reported by the callback, unlinks it, and the last
 * close of an unlinked file drops it. No object is dropped while open.
 */
#define SLOTS 16

struct owner {
	int slot;
	unsigned opens; /* writer + readers; under smoke.lock */
	bool unlinked;	/* out of its slot; under smoke.lock */
	uint64_t seed;
	size_t len; /* bytes readers expect; under smoke.lock */
};

struct smoke {
	tier_mgr *m;
	pthread_mutex_t lock; /* the namespace: slots and owner fields */
	tier_obj *slots[SLOTS];
	atomic_bool stop;
	atomic_ulong evicted_cb, writes, enospc, reads, lease_misses, unsealed_opens;
	atomic_int bad;
};

/* Drop an unlinked, unopened file. Its cookie is cleared first, under the
 * lock, so that an eviction callback running now sees no owner. */
static void owner_release(struct smoke *s, tier_obj *o)
{
	struct owner *own;

	pthread_mutex_lock(&s->lock);
	own = tier_obj_owner(o);
	tier_obj_set_owner(o, NULL);
	pthread_mutex_unlock(&s->lock);
	release(o);
	free(own);
}

/* Unlink @o from its slot; under s->lock. @return true if it must be released now. */
static bool unlink_locked(struct smoke *s, tier_obj *o)
{
	struct owner *own = tier_obj_owner(o);

	if (s->slots[own->slot] == o)
		s->slots[own->slot] = NULL;
	own->unlinked = true;
	return own->opens == 0;
}

/* Close one open of @o; releases it if it was the last of an unlinked file. */
static void smoke_close(struct smoke *s, tier_obj *o)
{
	struct owner *own = tier_obj_owner(o);
	bool last;

	pthread_mutex_lock(&s->lock);
	last = --own->opens == 0 && own->unlinked;
	pthread_mutex_unlock(&s->lock);
	if (last)
		owner_release(s, o);
}

static void smoke_evicted(void *ctx, tier_obj *const *objs, size_t n)
{
	struct smoke *s = ctx;

	for (size_t i = 0; i < n; i++) {
		struct owner *own;
		bool last;

		if (!tier_is_dead(objs[i]) || !tier_is_sealed(objs[i]))
			atomic_store(&s->bad, 1);
		pthread_mutex_lock(&s->lock);
		own = tier_obj_owner(objs[i]); /* NULL: being released already */
		last = own && !own->unlinked && unlink_locked(s, objs[i]);
		pthread_mutex_unlock(&s->lock);
		if (last)
			owner_release(s, objs[i]); /* drops our reference inside the callback */
	}
	atomic_fetch_add(&s->evicted_cb, n);
}

static void smoke_create(struct smoke *s, uint64_t r, uint8_t *buf)
{
	struct owner *own = calloc(1, sizeof(*own));
	size_t len = (size_t)((r >> 16) % (3 * PS)) + 1;
	tier_obj *o, *old;
	bool drop_old = false;
	int rc;

	if (!own || tier_obj_new(s->m, own, 0, &o))
		abort();
	own->slot = (int)((r >> 8) % SLOTS);
	own->opens = 1; /* the writer */
	own->seed = r >> 20;
	pthread_mutex_lock(&s->lock);
	old = s->slots[own->slot];
	if (old)
		drop_old = unlink_locked(s, old);
	s->slots[own->slot] = o;
	pthread_mutex_unlock(&s->lock);
	if (drop_old)
		owner_release(s, old);

	fill(buf, len, own->seed);
	rc = tier_write(o, 0, buf, len);
	atomic_fetch_add(&s->writes, 1);
	if (rc == -ENOSPC) {
		atomic_fetch_add(&s->enospc, 1);
		len = 0;
	} else if (rc) {
		atomic_store(&s->bad, 2);
	} else if ((r >> 40) % 3 == 0) {
		if (tier_truncate(o, len / 2))
			atomic_store(&s->bad, 3);
		len /= 2;
	}
	pthread_mutex_lock(&s->lock);
	own->len = len;
	pthread_mutex_unlock(&s->lock);
	if (tier_seal(o))
		atomic_store(&s->bad, 4);
	smoke_close(s, o);
}

static void smoke_read(struct smoke *s, uint64_t r, uint8_t *buf, uint8_t *got)
{
	struct iovec iov[8];
	struct owner *own;
	tier_obj *o;
	size_t len, at = 0;
	int n;

	pthread_mutex_lock(&s->lock);
	o = s->slots[(r >> 8) % SLOTS];
	if (o) {
		own = tier_obj_owner(o);
		own->opens++;
		len = own->len;
	}
	pthread_mutex_unlock(&s->lock);
	if (!o)
		return;
	if (!tier_is_sealed(o)) {
		atomic_fetch_add(&s->unsealed_opens, 1);
		goto out_close;
	}
	if (tier_lease(o)) {
		atomic_fetch_add(&s->lease_misses, 1);
		goto out_close;
	}
	tier_touch(o);
	fill(buf, len, own->seed);
	n = tier_read_iov(o, 0, len, iov, 8);
	if (n < 0)
		atomic_store(&s->bad, 5);
	for (int i = 0; i < n; i++) {
		if (memcmp(iov[i].iov_base, buf + at, iov[i].iov_len))
			atomic_store(&s->bad, 6);
		at += iov[i].iov_len;
	}
	if (n >= 0 && at != len)
		atomic_store(&s->bad, 7);
	if (tier_read(o, 0, got, len) != (ssize_t)len || memcmp(got, buf, len))
		atomic_store(&s->bad, 8);
	atomic_fetch_add(&s->reads, 1);
	tier_unlease(o);
out_close:
	smoke_close(s, o);
}

static void *smoke_thread(void *arg)
{
	struct smoke *s = arg;
	uint64_t r = (uint64_t)(uintptr_t)pthread_self() | 1;
	uint8_t *buf = malloc(4 * PS), *got = malloc(4 * PS);

	if (!buf || !got)
		abort();
	while (!atomic_load(&s->stop)) {
		unsigned op;

		r ^= r << 13;
		r ^= r >> 7;
		r ^= r << 17;
		op = (unsigned)(r % 10);
		if (op < 4) {
			smoke_create(s, r, buf);
		} else if (op < 8) {
			smoke_read(s, r, buf, got);
		} else if (op < 9) { /* pin or unpin (setxattr) */
			pthread_mutex_lock(&s->lock);
			tier_obj *o = s->slots[(r >> 8) % SLOTS];
			int rc = o ? tier_pin(o, (r >> 30) & 1) : 0;

			if (rc && rc != -ENOENT)
				atomic_store(&s->bad, 9);
			pthread_mutex_unlock(&s->lock);
		} else { /* unlink */
			tier_obj *o;
			bool last = false;

			pthread_mutex_lock(&s->lock);
			o = s->slots[(r >> 8) % SLOTS];
			if (o)
				last = unlink_locked(s, o);
			pthread_mutex_unlock(&s->lock);
			if (last)
				owner_release(s, o);
		}
	}
	free(buf);
	free(got);
	return NULL;
}

/*
 * Writers racing for a full arena: as long as sealed, unleased objects can
 * be evicted, a write never fails with ENOSPC, even when the pages one
 * thread freed are taken by another first.
 */
struct racer {
	tier_mgr *m;
	tier_obj *objs[3000];
	int enospc, bad;
};

static void count_only(void *ctx, tier_obj *const *objs, size_t n)
{
	(void)ctx, (void)objs, (void)n; /* the racers keep their references */
}

static void *racer_thread(void *arg)
{
	struct racer *r = arg;
	uint8_t page[PS];

	memset(page, 0x5a, sizeof(page));
	for (size_t i = 0; i < KVFS_ARRAY_SIZE(r->objs); i++) {
		int rc;

		if (tier_obj_new(r->m, NULL, 0, &r->objs[i])) {
			r->bad++;
			break;
		}
		rc = tier_write(r->objs[i], 0, page, sizeof(page));
		if (rc == -ENOSPC)
			r->enospc++;
		else if (rc)
			r->bad++;
		tier_seal(r->objs[i]);
	}
	return NULL;
}

static void test_racing_writers_never_starve(void **state)
{
	struct tier_config cfg = {.dram_bytes = 16 * PS, .page_size = PS, .policy = "lru"};
	struct tier_callbacks cb = {.evicted = count_only};
	struct racer *r = calloc(4, sizeof(*r));
	pthread_t th[4];
	tier_mgr *m;
	char err[128];

	(void)state;
	assert_non_null(r);
	assert_int_equal(tier_open(&cfg, &cb, &m, err, sizeof(err)), 0);
	for (int i = 0; i < 4; i++) {
		r[i].m = m;
		assert_int_equal(pthread_create(&th[i], NULL, racer_thread, &r[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(r[i].bad, 0);
		assert_int_equal(r[i].enospc, 0);
		for (size_t j = 0; j < KVFS_ARRAY_SIZE(r[i].objs); j++) {
			tier_drop(r[i].objs[j]);
			tier_obj_put(r[i].objs[j]);
		}
	}
	assert_int_equal(stats(m).enospc, 0);
	tier_close(m);
	free(r);
}

static void test_concurrency_smoke(void **state)
{
	struct tier_config cfg = {.dram_bytes = 24 * PS, .page_size = PS, .policy = "mq"};
	struct tier_callbacks cb = {.evicted = smoke_evicted};
	struct smoke *s = calloc(1, sizeof(*s));
	pthread_t th[4];
	char err[128];
	struct tier_stats st;
	uint64_t live_bytes = 0, live = 0, live_sealed = 0, pinned = 0, pinned_bytes = 0;
	struct timespec t = {.tv_sec = 1};

	(void)state;
	assert_non_null(s);
	cb.ctx = s;
	pthread_mutex_init(&s->lock, NULL);
	assert_int_equal(tier_open(&cfg, &cb, &s->m, err, sizeof(err)), 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&th[i], NULL, smoke_thread, s), 0);
	nanosleep(&t, NULL); /* how long to run, not synchronisation */
	atomic_store(&s->stop, true);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);

	st = stats(s->m);
	print_message("writes %lu enospc %lu reads %lu lease misses %lu unsealed opens %lu "
		      "evictions %lu\n",
		      atomic_load(&s->writes), atomic_load(&s->enospc), atomic_load(&s->reads),
		      atomic_load(&s->lease_misses), atomic_load(&s->unsealed_opens),
		      (unsigned long)st.evictions);
	assert_int_equal(atomic_load(&s->bad), 0);
	assert_true(atomic_load(&s->writes) > 0);
	assert_true(atomic_load(&s->reads) > 0);
	assert_true(st.evictions > 0);
	/* every object alive now is in a slot (evicted ones were unlinked) */
	for (int i = 0; i < SLOTS; i++) {
		tier_obj *o = s->slots[i];

		if (!o)
			continue;
		assert_false(tier_is_dead(o));
		live++;
		live_sealed += tier_is_sealed(o);
		live_bytes += tier_dram_bytes(o);
		if (tier_is_pinned(o)) {
			pinned++;
			pinned_bytes += tier_dram_bytes(o);
		}
	}
	assert_int_equal(st.dram_used, live_bytes);
	assert_int_equal(st.objects, live);
	assert_int_equal(st.sealed, live_sealed);
	assert_int_equal(st.pinned, pinned);
	assert_int_equal(st.dram_pinned, pinned_bytes);
	assert_int_equal(st.evictions, atomic_load(&s->evicted_cb));
	assert_true(st.dram_used <= st.dram_capacity);
	for (int i = 0; i < SLOTS; i++)
		if (s->slots[i])
			owner_release(s, s->slots[i]);
	st = stats(s->m);
	assert_int_equal(st.dram_used, 0);
	assert_int_equal(st.objects, 0);
	assert_int_equal(st.sealed, 0);
	assert_int_equal(st.pinned, 0);
	assert_int_equal(st.dram_pinned, 0);
	tier_close(s->m);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_bad_args),
		cmocka_unit_test(test_open_defaults_and_limits),
		cmocka_unit_test(test_capacity_rounds_down),
		cmocka_unit_test(test_stats_track_pages),
		cmocka_unit_test(test_fault_arena),
		cmocka_unit_test(test_roundtrip_across_pages),
		cmocka_unit_test(test_random_writes_vs_model),
		cmocka_unit_test(test_sparse_holes_read_zero),
		cmocka_unit_test(test_overlapping_rewrites),
		cmocka_unit_test(test_truncate_shrink_regrow),
		cmocka_unit_test(test_efbig),
		cmocka_unit_test(test_sealed_is_immutable),
		cmocka_unit_test(test_read_past_eof),
		cmocka_unit_test(test_read_iov),
		cmocka_unit_test(test_backing_fd_tmpfs),
		cmocka_unit_test(test_backing_fd_memfd),
		cmocka_unit_test(test_dead_object_refuses_everything),
		cmocka_unit_test(test_evict_states),
		cmocka_unit_test(test_drop_idempotent),
		cmocka_unit_test(test_refcounts),
		cmocka_unit_test(test_owner_cookie),
		cmocka_unit_test(test_pin_stats),
		cmocka_unit_test(test_pin_unsealed_then_drop),
		cmocka_unit_test(test_pin_races_with_death),
		cmocka_unit_test(test_evict_lru_order),
		cmocka_unit_test(test_evict_mq_keeps_hot),
		cmocka_unit_test(test_evict_skips_protected),
		cmocka_unit_test(test_enospc_disturbs_nothing),
		cmocka_unit_test(test_enospc_when_evictable_insufficient),
		cmocka_unit_test(test_evicts_only_what_is_missing),
		cmocka_unit_test(test_callback_puts_references),
		cmocka_unit_test(test_empty_objects_not_evicted_for_room),
		cmocka_unit_test(test_racing_writers_never_starve),
		cmocka_unit_test(test_concurrency_smoke),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
