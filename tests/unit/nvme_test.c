/*
 * tests/unit/nvme_test.c — the NVMe segment store (tier/nvme.h) on real
 * segment files with real io_uring and O_DIRECT:
 * open, reopen and the on-disk identity (page size, capacity, order of
 * directories, damage, a wiped directory), the directory lock; the
 * allocator (striping, all-or-nothing ENOSPC, reserve overlap and range,
 * fragmentation); data round trips through registered memory (a memfd
 * arena) and plain buffers, multi-extent files, short last extents, an
 * extent straddling two segments; the checksum catching a flipped byte;
 * the fault seam for writes, reads, ENOSPC and fsync; argument checks; four
 * threads with their own rings; ring cleanup at thread exit and close.
 *
 * The directories live under /var/tmp (a disk filesystem; tmpfs refuses
 * O_DIRECT on some kernels) or $KVFS_TEST_TMPDIR. If that filesystem cannot
 * do O_DIRECT, fallocate or io_uring, every test skips with the reason.
 * Run it under ASan too (rings freed at thread exit and at close).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <liburing.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/fault.h"
#include "core/log.h"
#include "tier/nvme.h"

#define KiB  1024ull
#define MiB  (1024ull * KiB)
#define GiB  (1024ull * MiB)
#define PS64 (64 * 1024u)

static char g_base[256];	/* where test directories go */
static char g_skip_reason[512]; /* set when the filesystem cannot do the job */

struct fixture {
	char root[300];
	char dirs[4][320];
	struct nvme_dev_config cfg[4];
};

static struct fixture fx;

#define REQUIRE_DIRECT()                                                                           \
	do {                                                                                       \
		if (g_skip_reason[0]) {                                                            \
			print_message("skipped: %s\n", g_skip_reason);                             \
			skip();                                                                    \
		}                                                                                  \
	} while (0)

/* --- fixtures --------------------------------------------------------------- */

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_rf(const char *path)
{
	nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void disarm_faults(void)
{
	for (int op = 0; op < KVFS_FAULT_NR; op++)
		kvfs_fault_arm(op, 0, 0, false);
}

static int setup(void **state)
{
	(void)state;
	memset(&fx, 0, sizeof(fx));
	disarm_faults();
	if (g_skip_reason[0])
		return 0; /* each test skips itself, with the reason */
	snprintf(fx.root, sizeof(fx.root), "%s/kvfs-nvme-test-XXXXXX", g_base);
	if (!mkdtemp(fx.root))
		return -1;
	for (int i = 0; i < 4; i++) {
		snprintf(fx.dirs[i], sizeof(fx.dirs[i]), "%s/d%d", fx.root, i);
		fx.cfg[i].dir = fx.dirs[i];
	}
	disarm_faults();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	disarm_faults();
	if (fx.root[0])
		rm_rf(fx.root);
	return 0;
}

/* Can the test filesystem do what the store needs? Sets g_skip_reason if not. */
static void probe_filesystem(void)
{
	const char *env = getenv("KVFS_TEST_TMPDIR");
	char dir[300], path[400];
	struct io_uring ring;
	void *buf = NULL;
	int fd;

	snprintf(g_base, sizeof(g_base), "%s", env && *env ? env : "/var/tmp");
	if (access(g_base, W_OK) != 0)
		snprintf(g_base, sizeof(g_base), "/tmp");
	snprintf(dir, sizeof(dir), "%s/kvfs-nvme-probe-XXXXXX", g_base);
	if (!mkdtemp(dir)) {
		snprintf(g_skip_reason, sizeof(g_skip_reason), "cannot make a directory in %s: %s",
			 g_base, strerror(errno));
		return;
	}
	snprintf(path, sizeof(path), "%s/probe", dir);
	fd = open(path, O_RDWR | O_CREAT | O_DIRECT | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(g_skip_reason, sizeof(g_skip_reason), "%s refuses O_DIRECT: %s", g_base,
			 strerror(errno));
		goto out;
	}
	if (fallocate(fd, 0, 0, 4096) < 0) {
		snprintf(g_skip_reason, sizeof(g_skip_reason), "%s cannot fallocate: %s", g_base,
			 strerror(errno));
		goto out_close;
	}
	if (posix_memalign(&buf, 4096, 4096) == 0) {
		memset(buf, 0x5a, 4096);
		if (pwrite(fd, buf, 4096, 0) != 4096)
			snprintf(g_skip_reason, sizeof(g_skip_reason),
				 "%s refuses an O_DIRECT write: %s", g_base, strerror(errno));
	}
	if (!g_skip_reason[0] && io_uring_queue_init(4, &ring, 0) != 0)
		snprintf(g_skip_reason, sizeof(g_skip_reason), "io_uring is not available");
	else if (!g_skip_reason[0])
		io_uring_queue_exit(&ring);
	free(buf);
out_close:
	close(fd);
out:
	rm_rf(dir);
}

/* --- helpers ---------------------------------------------------------------- */

static int try_open(unsigned ndevs, uint64_t bytes, uint32_t ps, uint32_t extent_pages,
		    struct nvme_store **s, char *err, size_t errlen)
{
	for (unsigned i = 0; i < ndevs; i++)
		fx.cfg[i].bytes = bytes;
	return nvme_open(fx.cfg, ndevs, ps, extent_pages, s, err, errlen);
}

static struct nvme_store *open_ok(unsigned ndevs, uint64_t bytes, uint32_t ps,
				  uint32_t extent_pages)
{
	struct nvme_store *s = NULL;
	char err[512] = "";
	int rc = try_open(ndevs, bytes, ps, extent_pages, &s, err, sizeof(err));

	if (rc)
		print_message("nvme_open: %s\n", err);
	assert_int_equal(rc, 0);
	assert_non_null(s);
	return s;
}

static void fill(void *buf, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x1234567;
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

static void *xalloc(size_t len)
{
	void *p = NULL;

	assert_int_equal(posix_memalign(&p, 4096, len ? len : 4096), 0);
	return p;
}

/* Cut @buf into entries of @piece bytes (the last may be short). */
static int cut(char *buf, size_t total, size_t piece, struct iovec *iov, int max)
{
	int n = 0;

	for (size_t off = 0; off < total; off += piece) {
		assert_true(n < max);
		iov[n].iov_base = buf + off;
		iov[n].iov_len = total - off < piece ? total - off : piece;
		n++;
	}
	return n;
}

static void copy_to_iov(const struct iovec *iov, int n, const char *src, size_t total)
{
	for (int i = 0; i < n && total; i++) {
		size_t t = iov[i].iov_len < total ? iov[i].iov_len : total;

		memcpy(iov[i].iov_base, src, t);
		src += t;
		total -= t;
	}
}

static void copy_from_iov(char *dst, const struct iovec *iov, int n, size_t total)
{
	for (int i = 0; i < n && total; i++) {
		size_t t = iov[i].iov_len < total ? iov[i].iov_len : total;

		memcpy(dst, iov[i].iov_base, t);
		dst += t;
		total -= t;
	}
}

static uint64_t ext_bytes(const struct nvme_extent *e, unsigned n)
{
	uint64_t t = 0;

	for (unsigned i = 0; i < n; i++)
		t += e[i].len;
	return t;
}

/* Write @bytes of pattern @seed to a fresh allocation from a plain buffer. */
static struct nvme_extent *write_file(struct nvme_store *s, uint64_t bytes, uint64_t seed,
				      unsigned *n)
{
	struct nvme_extent *e = NULL;
	char *buf = xalloc(bytes);
	struct iovec iov = {buf, bytes};

	fill(buf, bytes, seed);
	assert_int_equal(nvme_alloc(s, bytes, &e, n), 0);
	assert_int_equal(nvme_write(s, e, *n, &iov, 1), 0);
	free(buf);
	return e;
}

/* Read the extents back into a plain buffer and compare with pattern @seed. */
static int read_check(struct nvme_store *s, const struct nvme_extent *e, unsigned n, uint64_t bytes,
		      uint64_t seed)
{
	char *buf = xalloc(bytes), *want = malloc(bytes);
	struct iovec iov = {buf, bytes};
	int rc;

	fill(want, bytes, seed);
	rc = nvme_read(s, e, n, &iov, 1);
	if (rc == 0 && memcmp(buf, want, bytes) != 0)
		rc = 1;
	free(buf);
	free(want);
	return rc;
}

static off_t seg_offset(uint64_t page, uint32_t ps, unsigned *seg)
{
	uint64_t per_seg = GiB / ps;

	*seg = (unsigned)(page / per_seg);
	return (off_t)((page % per_seg) * ps);
}

static int open_seg(unsigned dev, unsigned seg, int flags)
{
	char path[400];

	snprintf(path, sizeof(path), "%s/seg-%05u", fx.dirs[dev], seg);
	return open(path, flags | O_CLOEXEC);
}

/* Overlap check of extents against a set of pages per device. */
static bool mark_pages(uint8_t *map[], const struct nvme_extent *e, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		for (uint64_t p = e[i].page; p < e[i].page + e[i].npages; p++) {
			if (map[e[i].dev][p])
				return false;
			map[e[i].dev][p] = 1;
		}
	return true;
}

/* --- open, identity, lock ------------------------------------------------------- */

static void test_open_close_reopen(void **state)
{
	struct nvme_store *s;
	struct nvme_stats st;
	struct stat sb;
	char path[400], pid[32] = "", want[32];
	int fd;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 4 * MiB + 1000, PS64, 16);
	nvme_get_stats(s, &st);
	assert_int_equal(st.capacity, 2 * 4 * MiB); /* rounded down to pages */
	assert_int_equal(st.used, 0);
	assert_false(nvme_full(s));
	for (int d = 0; d < 2; d++) {
		snprintf(path, sizeof(path), "%s/seg-00000", fx.dirs[d]);
		assert_int_equal(stat(path, &sb), 0);
		assert_int_equal(sb.st_size, 4 * MiB);
		/* Preallocated, not sparse. */
		assert_true((uint64_t)sb.st_blocks * 512 >= 4 * MiB);
		snprintf(path, sizeof(path), "%s/kvfs-nvme", fx.dirs[d]);
		assert_int_equal(stat(path, &sb), 0);
		assert_int_equal(sb.st_size, 64);
	}
	snprintf(path, sizeof(path), "%s/lock", fx.dirs[0]);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_true(read(fd, pid, sizeof(pid) - 1) > 0);
	close(fd);
	snprintf(want, sizeof(want), "%ld\n", (long)getpid());
	assert_string_equal(pid, want);
	nvme_close(s);

	s = open_ok(2, 4 * MiB + 1000, PS64, 16);
	nvme_close(s);
	nvme_close(NULL);
}

static void test_reopen_keeps_data(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *a, *b, *rest;
	unsigned na, nb, nrest;
	struct nvme_stats st;
	uint8_t *map[2];

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 4 * MiB, PS64, 4);
	a = write_file(s, 11 * PS64 + 4096 + 17, 1, &na);
	b = write_file(s, 3 * PS64, 2, &nb);
	assert_int_equal(nvme_sync(s), 0);
	nvme_close(s);

	s = open_ok(2, 4 * MiB, PS64, 4);
	assert_int_equal(nvme_reserve(s, a, na), 0);
	assert_int_equal(nvme_reserve(s, b, nb), 0);
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, (12 + 3) * (uint64_t)PS64);
	assert_int_equal(read_check(s, a, na, 11 * PS64 + 4096 + 17, 1), 0);
	assert_int_equal(read_check(s, b, nb, 3 * PS64, 2), 0);

	/* Everything else is free, and nothing new lands on the reserved pages. */
	assert_int_equal(nvme_alloc(s, 2 * 4 * MiB - 15 * (uint64_t)PS64, &rest, &nrest), 0);
	map[0] = calloc(64, 1);
	map[1] = calloc(64, 1);
	assert_true(mark_pages(map, a, na));
	assert_true(mark_pages(map, b, nb));
	assert_true(mark_pages(map, rest, nrest));
	free(map[0]);
	free(map[1]);
	free(rest);
	assert_int_equal(nvme_alloc(s, 1, &rest, &nrest), -ENOSPC);
	nvme_close(s);
	free(a);
	free(b);
}

static void test_identity_mismatch(void **state)
{
	struct nvme_store *s = NULL;
	struct nvme_extent *e;
	unsigned n;
	char err[512], path[400], save[64];
	int fd;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 4 * MiB, PS64, 4);
	nvme_close(s);

	err[0] = 0;
	assert_int_equal(try_open(2, 4 * MiB, 4096, 4, &s, err, sizeof(err)), -EINVAL);
	assert_null(s);
	assert_non_null(strstr(err, "page size 65536"));

	err[0] = 0;
	assert_int_equal(try_open(2, 8 * MiB, PS64, 4, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "4194304"));

	err[0] = 0;
	assert_int_equal(try_open(1, 4 * MiB, PS64, 4, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "device 1 of 2"));

	/* The same two directories in the other order. */
	fx.cfg[0].dir = fx.dirs[1];
	fx.cfg[1].dir = fx.dirs[0];
	err[0] = 0;
	assert_int_equal(try_open(2, 4 * MiB, PS64, 4, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "device 2 of 2"));
	fx.cfg[0].dir = fx.dirs[0];
	fx.cfg[1].dir = fx.dirs[1];

	/* A damaged identity is refused. */
	snprintf(path, sizeof(path), "%s/kvfs-nvme", fx.dirs[0]);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, save, 64, 0), 64);
	assert_int_equal(pwrite(fd, "X", 1, 20), 1);
	err[0] = 0;
	assert_int_equal(try_open(2, 4 * MiB, PS64, 4, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "damaged"));
	assert_int_equal(pwrite(fd, save, 64, 0), 64);
	close(fd);

	/* A wiped directory joins its store; its old extents fail their checksum. */
	s = open_ok(2, 4 * MiB, PS64, 4);
	e = write_file(s, 8 * PS64, 7, &n); /* stripes over both directories */
	assert_int_equal(n, 2);
	assert_int_not_equal(e[0].dev, e[1].dev);
	nvme_close(s);
	rm_rf(fx.dirs[1]);
	s = open_ok(2, 4 * MiB, PS64, 4);
	assert_int_equal(nvme_reserve(s, e, n), 0);
	assert_int_equal(read_check(s, e, n, 8 * PS64, 7), -EBADMSG);
	nvme_close(s);
	free(e);
}

static void test_identity_other_store(void **state)
{
	struct nvme_store *s = NULL;
	char err[512] = "", path[400], other[400];

	(void)state;
	REQUIRE_DIRECT();
	/* Two stores of two directories each, then one directory of each. */
	s = open_ok(2, 4 * MiB, PS64, 4);
	nvme_close(s);
	fx.cfg[0].dir = fx.dirs[2];
	fx.cfg[1].dir = fx.dirs[3];
	s = open_ok(2, 4 * MiB, PS64, 4);
	nvme_close(s);
	fx.cfg[0].dir = fx.dirs[0];
	fx.cfg[1].dir = fx.dirs[3];
	assert_int_equal(try_open(2, 4 * MiB, PS64, 4, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "different stores"));
	/* Nothing was created or removed by the refused open. */
	snprintf(path, sizeof(path), "%s/seg-00000", fx.dirs[0]);
	snprintf(other, sizeof(other), "%s/seg-00000", fx.dirs[3]);
	assert_int_equal(access(path, F_OK), 0);
	assert_int_equal(access(other, F_OK), 0);
}

static void test_lock(void **state)
{
	struct nvme_store *s, *s2 = NULL;
	char err[512] = "", want[128];

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 4 * MiB, PS64, 4);
	assert_int_equal(try_open(2, 4 * MiB, PS64, 4, &s2, err, sizeof(err)), -EBUSY);
	assert_null(s2);
	snprintf(want, sizeof(want), "in use by another kvfs (pid %ld)", (long)getpid());
	assert_non_null(strstr(err, want));
	assert_non_null(strstr(err, fx.dirs[0]));
	nvme_close(s);

	/* The lock goes with the store. */
	s = open_ok(2, 4 * MiB, PS64, 4);
	nvme_close(s);

	/* One directory given twice. */
	fx.cfg[1].dir = fx.dirs[0];
	err[0] = 0;
	assert_int_equal(try_open(2, 4 * MiB, PS64, 4, &s2, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "given twice"));
}

static void test_bad_args(void **state)
{
	struct nvme_store *s = NULL;
	char err[512];

	(void)state;
	REQUIRE_DIRECT();
	err[0] = 0;
	assert_int_equal(try_open(1, 4 * MiB, 3000, 4, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "power of two"));
	assert_int_equal(try_open(1, 4 * MiB, 2048, 4, &s, err, sizeof(err)), -EINVAL);
	assert_int_equal(try_open(1, 4 * MiB, PS64, 0, &s, err, sizeof(err)), -EINVAL);
	assert_int_equal(try_open(1, 4 * MiB, PS64, 65536, &s, err, sizeof(err)), -EINVAL);
	assert_int_equal(try_open(1, 1000, PS64, 4, &s, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "at least one page"));
	assert_int_equal(nvme_open(fx.cfg, 0, PS64, 4, &s, err, sizeof(err)), -EINVAL);
	assert_null(s);
	/* Nothing was created for refused arguments. */
	assert_int_not_equal(access(fx.dirs[0], F_OK), 0);
}

/*
 * strdup that fails for one string (the test binary is linked with
 * -Wl,--wrap=strdup): an allocation failure for a second device, part-way
 * through nvme_open's first phase.
 */
char *__real_strdup(const char *s);
char *__wrap_strdup(const char *s);
static const char *strdup_fails_for;

char *__wrap_strdup(const char *s)
{
	if (strdup_fails_for && strcmp(s, strdup_fails_for) == 0) {
		errno = ENOMEM;
		return NULL;
	}
	return __real_strdup(s);
}

static void test_open_out_of_memory_closes_nothing_it_did_not_open(void **state)
{
	struct nvme_store *s = NULL;
	struct stat before, after;
	char err[512];
	int fd = -1;

	(void)state;
	/* descriptor 0 is open (on /dev/null if nothing else) */
	if (fcntl(0, F_GETFD) < 0) {
		fd = open("/dev/null", O_RDONLY);
		assert_int_equal(fd, 0);
	}
	assert_int_equal(fstat(0, &before), 0);
	strdup_fails_for = fx.dirs[1];
	assert_int_equal(try_open(3, 4 * MiB, PS64, 4, &s, err, sizeof(err)), -ENOMEM);
	strdup_fails_for = NULL;
	assert_null(s);
	assert_true(fcntl(0, F_GETFD) >= 0);
	assert_int_equal(fstat(0, &after), 0);
	assert_int_equal(before.st_ino, after.st_ino);
	assert_int_equal(before.st_dev, after.st_dev);
	if (fd == 0)
		close(fd);
}

/* --- allocator --------------------------------------------------------------- */

static void test_alloc_stripes(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e, *e2, *e3;
	unsigned n, n2, n3, per_dev[3] = {0};
	struct nvme_stats st;
	uint8_t *map[3];

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(3, 64 * (uint64_t)PS64, PS64, 4);
	assert_int_equal(nvme_alloc(s, 24 * (uint64_t)PS64, &e, &n), 0);
	assert_int_equal(n, 6);
	for (unsigned i = 0; i < n; i++) {
		assert_int_equal(e[i].npages, 4);
		assert_int_equal(e[i].len, 4 * PS64);
		assert_int_equal(e[i].csum, 0);
		assert_int_equal(e[i].flags, 0);
		/* Round robin: each extent on the device after the previous one's. */
		if (i)
			assert_int_equal(e[i].dev, (e[i - 1].dev + 1) % 3);
		per_dev[e[i].dev]++;
	}
	assert_int_equal(per_dev[0], 2);
	assert_int_equal(per_dev[1], 2);
	assert_int_equal(per_dev[2], 2);

	/* The next file starts on another device; a short tail is one short extent. */
	assert_int_equal(nvme_alloc(s, 5 * (uint64_t)PS64 + 100, &e2, &n2), 0);
	assert_int_equal(n2, 2);
	assert_int_not_equal(e2[0].dev, e[0].dev);
	assert_int_equal(e2[0].npages, 4);
	assert_int_equal(e2[1].npages, 2);
	assert_int_equal(e2[1].len, PS64 + 100);
	assert_int_equal(ext_bytes(e2, n2), 5 * (uint64_t)PS64 + 100);
	assert_int_equal(nvme_alloc(s, PS64, &e3, &n3), 0);
	assert_int_equal(n3, 1);
	assert_int_not_equal(e3[0].dev, e2[0].dev);

	nvme_get_stats(s, &st);
	assert_int_equal(st.used, (24 + 6 + 1) * (uint64_t)PS64);
	for (int d = 0; d < 3; d++)
		map[d] = calloc(64, 1);
	assert_true(mark_pages(map, e, n));
	assert_true(mark_pages(map, e2, n2));
	assert_true(mark_pages(map, e3, n3));
	for (int d = 0; d < 3; d++)
		free(map[d]);

	nvme_free(s, e, n);
	nvme_free(s, e2, n2);
	nvme_free(s, e3, n3);
	free(e3);
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, 0);
	/* Zero bytes: no extents. */
	assert_int_equal(nvme_alloc(s, 0, &e3, &n3), 0);
	assert_int_equal(n3, 0);
	assert_null(e3);
	free(e);
	free(e2);
	nvme_close(s);
}

static void test_alloc_enospc(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *a, *b = (void *)1, *c;
	unsigned na, nb = 99, nc;
	struct nvme_stats st;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(3, 8 * (uint64_t)PS64, PS64, 4);
	assert_int_equal(nvme_alloc(s, 20 * (uint64_t)PS64, &a, &na), 0);
	assert_int_equal(nvme_alloc(s, 5 * (uint64_t)PS64, &b, &nb), -ENOSPC);
	assert_null(b);
	assert_int_equal(nb, 0);
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, 20 * (uint64_t)PS64); /* nothing of the failed call */
	assert_int_equal(nvme_alloc(s, 4 * (uint64_t)PS64, &c, &nc), 0); /* exactly the rest */
	assert_int_equal(nvme_alloc(s, 1, &b, &nb), -ENOSPC);
	assert_int_equal(nvme_alloc(s, UINT64_MAX, &b, &nb), -ENOSPC);
	nvme_free(s, a, na);
	nvme_free(s, c, nc);
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, 0);
	free(a);
	free(c);
	nvme_close(s);
}

static void test_alloc_full_device_falls_over(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *a, *b, *c;
	unsigned na, nb, nc;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 8 * (uint64_t)PS64, PS64, 8);
	assert_int_equal(nvme_alloc(s, 8 * (uint64_t)PS64, &a, &na), 0);
	assert_int_equal(na, 1);
	/* The round robin would pick the same device again for some file: any
	 * file must still fit as long as the store has room. */
	assert_int_equal(nvme_alloc(s, 4 * (uint64_t)PS64, &b, &nb), 0);
	assert_int_equal(nvme_alloc(s, 4 * (uint64_t)PS64, &c, &nc), 0);
	assert_int_equal(nb, 1);
	assert_int_equal(nc, 1);
	assert_int_not_equal(b[0].dev, a[0].dev);
	assert_int_not_equal(c[0].dev, a[0].dev);
	free(a);
	free(b);
	free(c);
	nvme_close(s);
}

static void test_reserve(void **state)
{
	struct nvme_store *s;
	struct nvme_stats st;
	struct nvme_extent *rest;
	unsigned nrest;
	uint8_t *map[2];
	const struct nvme_extent good = {.dev = 0, .npages = 4, .page = 2, .len = 4 * PS64};
	const struct nvme_extent overlap[2] = {
		{.dev = 1, .npages = 2, .page = 0, .len = 100},
		{.dev = 0, .npages = 2, .page = 5, .len = 100}, /* pages 5-6 vs 2-5 */
	};
	const struct nvme_extent self_overlap[2] = {
		{.dev = 1, .npages = 4, .page = 8},
		{.dev = 1, .npages = 2, .page = 11},
	};
	const struct nvme_extent bad[] = {
		{.dev = 2, .npages = 1, .page = 0},
		{.dev = 0, .npages = 2, .page = 15},
		{.dev = 0, .npages = 0, .page = 0},
		{.dev = 0, .npages = 1, .page = UINT64_MAX},
		{.dev = 0, .npages = 1, .page = 0, .len = PS64 + 1},
	};

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 16 * (uint64_t)PS64, PS64, 4);
	assert_int_equal(nvme_reserve(s, &good, 1), 0);
	assert_int_equal(nvme_reserve(s, &good, 1), -EEXIST);
	assert_int_equal(nvme_reserve(s, overlap, 2), -EEXIST);
	assert_int_equal(nvme_reserve(s, self_overlap, 2), -EEXIST);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		/* A bad extent after a good one: nothing of the call is reserved. */
		struct nvme_extent two[2] = {{.dev = 1, .npages = 1, .page = 15}, bad[i]};

		assert_int_equal(nvme_reserve(s, two, 2), -EINVAL);
	}
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, 4 * (uint64_t)PS64);
	/* All-or-nothing: the good halves of the refused calls are still free. */
	assert_int_equal(nvme_reserve(s, &overlap[0], 1), 0);
	assert_int_equal(nvme_reserve(s, &self_overlap[0], 1), 0);
	{
		struct nvme_extent p15 = {.dev = 1, .npages = 1, .page = 15};

		assert_int_equal(nvme_reserve(s, &p15, 1), 0);
	}
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, (4 + 2 + 4 + 1) * (uint64_t)PS64);

	/* The allocator hands out exactly the pages not reserved. */
	assert_int_equal(nvme_alloc(s, (32 - 11) * (uint64_t)PS64, &rest, &nrest), 0);
	map[0] = calloc(16, 1);
	map[1] = calloc(16, 1);
	assert_true(mark_pages(map, &good, 1));
	assert_true(mark_pages(map, &overlap[0], 1));
	assert_true(mark_pages(map, &self_overlap[0], 1));
	map[1][15] = 1;
	assert_true(mark_pages(map, rest, nrest));
	free(map[0]);
	free(map[1]);
	nvme_free(s, rest, nrest);
	free(rest);
	assert_int_equal(nvme_reserve(s, NULL, 0), 0);
	nvme_close(s);
}

static void test_fragmentation(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *one[32], *two, *big, *fresh;
	unsigned n, ntwo, nbig, nfresh;
	struct nvme_stats st;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, 32 * (uint64_t)PS64, PS64, 8);
	for (int i = 0; i < 32; i++) {
		assert_int_equal(nvme_alloc(s, PS64, &one[i], &n), 0);
		assert_int_equal(n, 1);
	}
	for (int i = 0; i < 32; i += 2)
		nvme_free(s, one[i], 1);
	/* 16 free pages, none adjacent: a 2-page file takes two 1-page extents. */
	assert_int_equal(nvme_alloc(s, 2 * (uint64_t)PS64, &two, &ntwo), 0);
	assert_int_equal(ntwo, 2);
	assert_int_equal(two[0].npages, 1);
	assert_int_equal(two[1].npages, 1);
	assert_int_equal(nvme_alloc(s, 15 * (uint64_t)PS64, &big, &nbig), -ENOSPC);
	assert_int_equal(nvme_alloc(s, 14 * (uint64_t)PS64, &big, &nbig), 0);
	assert_int_equal(nbig, 14);
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, 32 * (uint64_t)PS64);
	nvme_free(s, two, ntwo);
	nvme_free(s, big, nbig);
	for (int i = 1; i < 32; i += 2)
		nvme_free(s, one[i], 1);
	/* Free again: a 32-page file is four contiguous 8-page extents. */
	assert_int_equal(nvme_alloc(s, 32 * (uint64_t)PS64, &fresh, &nfresh), 0);
	assert_int_equal(nfresh, 4);
	for (unsigned i = 0; i < nfresh; i++)
		assert_int_equal(fresh[i].npages, 8);
	nvme_free(s, fresh, nfresh);
	/* A double free is reported, not counted twice. */
	nvme_free(s, fresh, 1);
	nvme_get_stats(s, &st);
	assert_int_equal(st.used, 0);
	for (int i = 0; i < 32; i++)
		free(one[i]);
	free(two);
	free(big);
	free(fresh);
	nvme_close(s);
}

/* --- data -------------------------------------------------------------------- */

struct arena {
	int fd;
	char *base;
	size_t bytes;
};

static void arena_open(struct arena *a, size_t bytes)
{
	a->bytes = bytes;
	a->fd = memfd_create("nvme-test-arena", MFD_CLOEXEC);
	assert_true(a->fd >= 0);
	assert_int_equal(ftruncate(a->fd, (off_t)bytes), 0);
	a->base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, a->fd, 0);
	assert_true(a->base != MAP_FAILED);
}

static void arena_close(struct arena *a)
{
	munmap(a->base, a->bytes);
	close(a->fd);
}

static void test_write_read_registered(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct nvme_stats st;
	struct arena a;
	/* 20 pages and a bit, in arena pages out of order, with runs of adjacent ones. */
	static const int wpages[21] = {40, 3, 4,  5,  17, 9, 10, 2,  60, 61, 62,
				       63, 0, 33, 34, 20, 7, 50, 51, 12, 45};
	static const int rpages[21] = {1,  8,  11, 13, 14, 15, 16, 18, 19, 21, 22,
				       23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
	const uint64_t bytes = 20 * (uint64_t)PS64 + 12345;
	struct iovec wiov[21], riov[21];
	char *want = malloc(bytes), *got = malloc(bytes);
	unsigned n;

	(void)state;
	REQUIRE_DIRECT();
	arena_open(&a, 64 * (size_t)PS64);
	s = open_ok(3, 4 * MiB, PS64, 4);
	assert_int_equal(nvme_register_memory(s, a.base, a.bytes), 0);
	for (int i = 0; i < 21; i++) {
		wiov[i].iov_base = a.base + (size_t)wpages[i] * PS64;
		wiov[i].iov_len = i < 20 ? PS64 : 12345;
		riov[i].iov_base = a.base + (size_t)rpages[i] * PS64;
		riov[i].iov_len = i < 20 ? PS64 : PS64; /* a longer last buffer is fine */
	}
	fill(want, bytes, 42);
	copy_to_iov(wiov, 21, want, bytes);
	memset(a.base + (size_t)rpages[20] * PS64, 0xAA, PS64);

	assert_int_equal(nvme_alloc(s, bytes, &e, &n), 0);
	assert_int_equal(n, 6);
	assert_int_equal(nvme_write(s, e, n, wiov, 21), 0);
	for (unsigned i = 0; i < n; i++)
		assert_int_not_equal(e[i].csum, 0);
	assert_int_equal(nvme_read(s, e, n, riov, 21), 0);
	copy_from_iov(got, riov, 21, bytes);
	assert_memory_equal(got, want, bytes);
	/* Nothing written past the file's bytes in the last buffer. */
	for (size_t i = 12345; i < PS64; i++)
		assert_int_equal((uint8_t)a.base[(size_t)rpages[20] * PS64 + i], 0xAA);

	nvme_get_stats(s, &st);
	assert_int_equal(st.writes, 1);
	assert_int_equal(st.write_bytes, bytes);
	assert_int_equal(st.reads, 1);
	assert_int_equal(st.read_bytes, bytes);
	assert_int_equal(st.write_errors + st.read_errors + st.csum_errors, 0);

	/* The same file read into plain memory outside the arena. */
	assert_int_equal(read_check(s, e, n, bytes, 42), 0);
	nvme_free(s, e, n);
	free(e);
	nvme_close(s);
	arena_close(&a);
	free(want);
	free(got);
}

static void test_write_read_plain_layouts(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	const uint64_t bytes = 37 * (uint64_t)PS64 + 3 * 4096 + 77;
	char *wbuf = xalloc(bytes), *rbuf = xalloc(bytes + PS64), *want = malloc(bytes);
	struct iovec wiov[600], riov[8];
	size_t sizes[] = {4096, 12288, PS64, 8192, 3 * PS64};
	int nw = 0, nr;
	unsigned n;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(3, 4 * MiB, PS64, 8);
	/* Writes from entries of assorted sizes, reads into a few large ones. */
	for (uint64_t off = 0; off < bytes; nw++) {
		size_t t = sizes[nw % 5];

		if (t > bytes - off)
			t = bytes - off;
		wiov[nw].iov_base = wbuf + off;
		wiov[nw].iov_len = t;
		off += t;
	}
	fill(want, bytes, 9);
	memcpy(wbuf, want, bytes);
	nr = cut(rbuf, bytes, 1 * MiB, riov, 8);
	assert_int_equal(nvme_alloc(s, bytes, &e, &n), 0);
	assert_true(n > 3);
	assert_int_equal(nvme_write(s, e, n, wiov, nw), 0);
	assert_int_equal(nvme_read(s, e, n, riov, nr), 0);
	assert_memory_equal(rbuf, want, bytes);
	nvme_free(s, e, n);
	free(e);
	nvme_close(s);
	free(wbuf);
	free(rbuf);
	free(want);
}

static void test_short_last_extent(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	const uint64_t bytes = 2 * (uint64_t)PS64 + 4096 + 1000;
	char *buf = xalloc(4 * PS64), *sector = xalloc(4096), *want = malloc(bytes);
	struct iovec iov = {buf, bytes};
	unsigned n, seg;
	off_t off;
	int fd;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, 4 * MiB, PS64, 16);
	/* Leave non-zero bytes after the data in the caller's buffer. */
	memset(buf, 0xEE, 4 * PS64);
	fill(want, bytes, 5);
	memcpy(buf, want, bytes);
	assert_int_equal(nvme_alloc(s, bytes, &e, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(e[0].len, bytes);
	assert_int_equal(nvme_write(s, e, n, &iov, 1), 0);

	/* On disk, the last partial sector holds the data and then zeros. */
	off = seg_offset(e[0].page, PS64, &seg) + 2 * PS64 + 4096;
	fd = open_seg(0, seg, O_RDONLY | O_DIRECT);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, sector, 4096, off), 4096);
	close(fd);
	assert_memory_equal(sector, want + 2 * PS64 + 4096, 1000);
	for (int i = 1000; i < 4096; i++)
		assert_int_equal(sector[i], 0);

	/* A read writes nothing past the file's bytes. */
	memset(buf, 0xAA, 4 * PS64);
	iov.iov_len = 4 * PS64;
	assert_int_equal(nvme_read(s, e, n, &iov, 1), 0);
	assert_memory_equal(buf, want, bytes);
	for (size_t i = bytes; i < 4 * PS64; i++)
		assert_int_equal((uint8_t)buf[i], 0xAA);
	nvme_free(s, e, n);
	free(e);

	/* A file smaller than a sector, and a file of one byte. */
	for (uint64_t small = 100; small; small = small == 100 ? 1 : 0) {
		e = write_file(s, small, small, &n);
		assert_int_equal(n, 1);
		assert_int_equal(read_check(s, e, n, small, small), 0);
		nvme_free(s, e, n);
		free(e);
	}
	nvme_close(s);
	free(buf);
	free(sector);
	free(want);
}

static void test_segment_boundary(void **state)
{
	struct nvme_store *s;
	const uint64_t per_seg = GiB / PS64;
	struct nvme_extent e = {.dev = 0, .npages = 4, .page = per_seg - 2, .len = 4 * PS64};
	char *buf = xalloc(4 * PS64), *want = malloc(4 * PS64), *seg1 = xalloc(2 * PS64);
	struct iovec iov = {buf, 4 * PS64};
	struct stat sb;
	char path[400];
	int fd;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, GiB + 1 * MiB, PS64, 4);
	snprintf(path, sizeof(path), "%s/seg-00001", fx.dirs[0]);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_size, 1 * MiB);
	assert_int_equal(nvme_reserve(s, &e, 1), 0);
	fill(want, 4 * PS64, 11);
	memcpy(buf, want, 4 * PS64);
	assert_int_equal(nvme_write(s, &e, 1, &iov, 1), 0);
	/* The second half went to the start of the second segment. */
	fd = open_seg(0, 1, O_RDONLY | O_DIRECT);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, seg1, 2 * PS64, 0), 2 * PS64);
	close(fd);
	assert_memory_equal(seg1, want + 2 * PS64, 2 * PS64);
	memset(buf, 0, 4 * PS64);
	assert_int_equal(nvme_read(s, &e, 1, &iov, 1), 0);
	assert_memory_equal(buf, want, 4 * PS64);
	/* The last page of the device is usable; one more is not. */
	e = (struct nvme_extent){.dev = 0, .npages = 1, .page = per_seg + 15, .len = 4096};
	assert_int_equal(nvme_reserve(s, &e, 1), 0);
	iov.iov_len = 4096;
	assert_int_equal(nvme_write(s, &e, 1, &iov, 1), 0);
	e.page++;
	assert_int_equal(nvme_reserve(s, &e, 1), -EINVAL);
	assert_int_equal(nvme_write(s, &e, 1, &iov, 1), -EINVAL);
	nvme_close(s);
	free(buf);
	free(want);
	free(seg1);
}

static void test_registered_straddles_chunk(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct arena a;
	char *want = malloc(4 * PS64), *got;
	struct iovec iov;
	unsigned n;

	(void)state;
	REQUIRE_DIRECT();
	/* Registered memory is cut into 1 GiB buffers: one buffer crosses the cut. */
	arena_open(&a, GiB + 2 * MiB);
	s = open_ok(1, 4 * MiB, PS64, 16);
	assert_int_equal(nvme_register_memory(s, a.base, a.bytes), 0);
	iov.iov_base = a.base + GiB - 2 * PS64;
	iov.iov_len = 4 * PS64;
	fill(want, 4 * PS64, 13);
	memcpy(iov.iov_base, want, 4 * PS64);
	assert_int_equal(nvme_alloc(s, 4 * PS64, &e, &n), 0);
	assert_int_equal(nvme_write(s, e, n, &iov, 1), 0);
	got = a.base + GiB - 3 * 4096; /* also straddling, another offset */
	iov.iov_base = got;
	assert_int_equal(nvme_read(s, e, n, &iov, 1), 0);
	assert_memory_equal(got, want, 4 * PS64);
	assert_int_equal(read_check(s, e, n, 4 * PS64, 13), 0);
	free(e);
	nvme_close(s);
	arena_close(&a);
	free(want);
}

static void test_checksum_catch(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct nvme_stats st;
	unsigned n, seg;
	uint8_t byte;
	off_t off;
	int fd;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, 4 * MiB, PS64, 2);
	e = write_file(s, 5 * (uint64_t)PS64, 3, &n);
	assert_int_equal(n, 3);
	assert_int_equal(read_check(s, e, n, 5 * (uint64_t)PS64, 3), 0);

	/* Flip one byte of the second extent behind the store's back. */
	off = seg_offset(e[1].page, PS64, &seg) + PS64 + 1234;
	fd = open_seg(e[1].dev, seg, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &byte, 1, off), 1);
	byte ^= 0x01;
	assert_int_equal(pwrite(fd, &byte, 1, off), 1);
	assert_int_equal(fdatasync(fd), 0);

	assert_int_equal(read_check(s, e, n, 5 * (uint64_t)PS64, 3), -EBADMSG);
	nvme_get_stats(s, &st);
	assert_int_equal(st.csum_errors, 1);
	assert_int_equal(st.read_errors, 0);
	assert_int_equal(st.reads, 1);
	/* The other extents alone still read. */
	assert_int_equal(read_check(s, e, 1, 2 * (uint64_t)PS64, 3), 0);

	/* Put it back: it reads again. */
	byte ^= 0x01;
	assert_int_equal(pwrite(fd, &byte, 1, off), 1);
	assert_int_equal(fdatasync(fd), 0);
	close(fd);
	assert_int_equal(read_check(s, e, n, 5 * (uint64_t)PS64, 3), 0);
	nvme_get_stats(s, &st);
	assert_int_equal(st.csum_errors, 1);
	free(e);
	nvme_close(s);
}

static void test_truncated_segment(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct nvme_stats st;
	unsigned n, seg;
	off_t off;
	int fd;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, 4 * MiB, PS64, 8);
	e = write_file(s, 8 * (uint64_t)PS64, 6, &n);
	assert_int_equal(n, 1);
	/* Cut the segment inside the extent: a short read, then nothing. */
	off = seg_offset(e[0].page, PS64, &seg) + 3 * PS64 + 4096;
	fd = open_seg(0, seg, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, off), 0);
	close(fd);
	assert_int_equal(read_check(s, e, n, 8 * (uint64_t)PS64, 6), -EIO);
	nvme_get_stats(s, &st);
	assert_int_equal(st.read_errors, 1);
	assert_int_equal(st.csum_errors, 0);
	nvme_close(s);

	/* Reopening preallocates the segment again; the lost bytes fail the checksum. */
	s = open_ok(1, 4 * MiB, PS64, 8);
	assert_int_equal(nvme_reserve(s, e, n), 0);
	assert_int_equal(read_check(s, e, n, 8 * (uint64_t)PS64, 6), -EBADMSG);
	free(e);
	nvme_close(s);
}

static void test_register_refused_falls_back(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	const size_t len = 8 * (size_t)PS64, bytes = 3 * (size_t)PS64 + 100;
	char path[400], *base, *want = malloc(bytes);
	struct iovec iov;
	unsigned n;
	int fd, rc;

	(void)state;
	REQUIRE_DIRECT();
	/* A shared mapping of a regular file: kernels refuse to pin it for good. */
	snprintf(path, sizeof(path), "%s/mapped", fx.root);
	fd = open(path, O_RDWR | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)len), 0);
	base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(base != MAP_FAILED);
	s = open_ok(1, 4 * MiB, PS64, 2);
	rc = nvme_register_memory(s, base, len);
	print_message("registering file-backed memory: %s\n", rc ? strerror(-rc) : "accepted");
	assert_true(rc <= 0);
	/* Either way, I/O from and into that memory works. */
	fill(want, bytes, 31);
	memcpy(base, want, bytes);
	iov = (struct iovec){base, bytes};
	assert_int_equal(nvme_alloc(s, bytes, &e, &n), 0);
	assert_int_equal(nvme_write(s, e, n, &iov, 1), 0);
	iov.iov_base = base + 4 * PS64;
	assert_int_equal(nvme_read(s, e, n, &iov, 1), 0);
	assert_memory_equal(base + 4 * PS64, want, bytes);
	free(e);
	nvme_close(s);
	munmap(base, len);
	close(fd);
	free(want);
}

static void test_register_after_io(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e, *e2;
	struct arena a;
	struct iovec iov;
	char log_path[400], line[512], *want = malloc(4 * (size_t)PS64);
	unsigned n, n2;
	int follows = 0;
	FILE *f;

	(void)state;
	REQUIRE_DIRECT();
	snprintf(log_path, sizeof(log_path), "%s/log", fx.root);
	assert_int_equal(kvfs_log_open(log_path, KVFS_LOG_DEBUG), 0);
	s = open_ok(1, 4 * MiB, PS64, 4);
	e = write_file(s, 2 * PS64, 1, &n); /* this thread's ring exists now */
	arena_open(&a, 16 * (size_t)PS64);
	assert_int_equal(nvme_register_memory(s, a.base, a.bytes), 0);
	fill(want, 4 * (size_t)PS64, 2);
	memcpy(a.base, want, 4 * (size_t)PS64);
	iov = (struct iovec){a.base, 4 * (size_t)PS64};
	assert_int_equal(nvme_alloc(s, 4 * (uint64_t)PS64, &e2, &n2), 0);
	assert_int_equal(nvme_write(s, e2, n2, &iov, 1), 0);
	/* Registered again (the arena moved, say): the ring follows once more. */
	assert_int_equal(nvme_register_memory(s, a.base + 8 * PS64, 8 * (size_t)PS64), 0);
	iov.iov_base = a.base + 8 * PS64;
	assert_int_equal(nvme_read(s, e2, n2, &iov, 1), 0);
	assert_memory_equal(a.base + 8 * PS64, want, 4 * (size_t)PS64);
	assert_int_equal(read_check(s, e, n, 2 * PS64, 1), 0);
	nvme_close(s);
	kvfs_log_open(NULL, KVFS_LOG_INFO);
	f = fopen(log_path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		if (strstr(line, "follows new memory")) {
			follows++;
			assert_null(strstr(line, "fixed buffers none"));
		}
	}
	fclose(f);
	assert_int_equal(follows, 2);
	free(e);
	free(e2);
	arena_close(&a);
	free(want);
}

/* --- fault seam ------------------------------------------------------------- */

static void test_fault_write(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *a, *b, *c;
	unsigned na, nb, nc;
	struct nvme_stats st;
	char *buf = xalloc(6 * PS64);
	struct iovec iov = {buf, 6 * PS64};

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 4 * MiB, PS64, 2);
	fill(buf, 6 * PS64, 1);
	assert_int_equal(nvme_alloc(s, 2 * PS64, &a, &na), 0);
	assert_int_equal(nvme_alloc(s, 2 * PS64, &b, &nb), 0);
	assert_int_equal(nvme_alloc(s, 6 * PS64, &c, &nc), 0);
	assert_int_equal(na, 1);
	assert_int_equal(nc, 3);

	/* The second extent write fails. */
	kvfs_fault_arm(KVFS_FAULT_NVME_WRITE, 2, EIO, false);
	iov.iov_len = 2 * PS64;
	assert_int_equal(nvme_write(s, a, na, &iov, 1), 0);
	assert_int_equal(nvme_write(s, b, nb, &iov, 1), -EIO);
	assert_int_equal(nvme_write(s, b, nb, &iov, 1), 0); /* not sticky */
	/* In the middle of a multi-extent file: the first is in flight, drained. */
	kvfs_fault_arm(KVFS_FAULT_NVME_WRITE, 2, EIO, false);
	iov.iov_len = 6 * PS64;
	assert_int_equal(nvme_write(s, c, nc, &iov, 1), -EIO);
	nvme_get_stats(s, &st);
	assert_int_equal(st.writes, 2);
	assert_int_equal(st.write_errors, 2);
	assert_int_equal(kvfs_fault_slots[KVFS_FAULT_NVME_WRITE].hits, 2);
	assert_false(nvme_full(s));
	assert_int_equal(nvme_write(s, c, nc, &iov, 1), 0);
	assert_int_equal(read_check(s, c, nc, 6 * PS64, 1), 0);

	/* Sticky: every write fails until disarmed; reads are untouched. */
	kvfs_fault_arm(KVFS_FAULT_NVME_WRITE, 1, EROFS, true);
	assert_int_equal(nvme_write(s, a, na, &iov, 1), -EROFS);
	assert_int_equal(nvme_write(s, a, na, &iov, 1), -EROFS);
	assert_int_equal(read_check(s, c, nc, 6 * PS64, 1), 0);
	kvfs_fault_arm(KVFS_FAULT_NVME_WRITE, 0, 0, false);
	assert_int_equal(nvme_write(s, a, na, &iov, 1), 0);
	free(a);
	free(b);
	free(c);
	free(buf);
	nvme_close(s);
}

static void test_fault_enospc_sets_full(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *a;
	unsigned na;
	struct nvme_stats st;
	char *buf = xalloc(PS64);
	struct iovec iov = {buf, PS64};

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, 4 * MiB, PS64, 4);
	assert_int_equal(nvme_alloc(s, PS64, &a, &na), 0);
	memset(buf, 1, PS64);
	assert_int_equal(nvme_write(s, a, na, &iov, 1), 0);
	assert_false(nvme_full(s));
	kvfs_fault_arm(KVFS_FAULT_NVME_WRITE, 1, ENOSPC, false);
	assert_int_equal(nvme_write(s, a, na, &iov, 1), -ENOSPC);
	assert_true(nvme_full(s));
	nvme_get_stats(s, &st);
	assert_int_equal(st.write_errors, 1);
	/* Reads go on. */
	assert_int_equal(nvme_write(s, a, na, &iov, 1), 0);
	assert_int_equal(nvme_read(s, a, na, &iov, 1), 0);
	free(a);
	free(buf);
	nvme_close(s);
}

static void test_fault_read(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct nvme_stats st;
	unsigned n;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, 4 * MiB, PS64, 2);
	e = write_file(s, 7 * (uint64_t)PS64, 4, &n);
	kvfs_fault_arm(KVFS_FAULT_NVME_READ, 3, EIO, false);
	assert_int_equal(read_check(s, e, n, 7 * (uint64_t)PS64, 4), -EIO);
	nvme_get_stats(s, &st);
	assert_int_equal(st.read_errors, 1);
	assert_int_equal(st.reads, 0);
	assert_int_equal(st.csum_errors, 0);
	assert_int_equal(read_check(s, e, n, 7 * (uint64_t)PS64, 4), 0);
	kvfs_fault_arm(KVFS_FAULT_NVME_READ, 1, EBADMSG, false);
	assert_int_equal(read_check(s, e, n, 7 * (uint64_t)PS64, 4), -EBADMSG);
	nvme_get_stats(s, &st);
	assert_int_equal(st.read_errors, 2);
	assert_int_equal(st.reads, 1);
	free(e);
	nvme_close(s);
}

static void test_fault_fsync(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct nvme_stats st;
	unsigned n;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(2, GiB + 1 * MiB, PS64, 4); /* four segments */
	assert_int_equal(nvme_sync(s), 0);	/* nothing dirty */
	e = write_file(s, 9 * (uint64_t)PS64, 8, &n);
	assert_int_equal(nvme_sync(s), 0);
	kvfs_fault_arm(KVFS_FAULT_NVME_FSYNC, 1, EIO, false);
	free(e);
	e = write_file(s, 9 * (uint64_t)PS64, 8, &n);
	assert_int_equal(nvme_sync(s), -EIO);
	nvme_get_stats(s, &st);
	assert_int_equal(st.syncs, 3);
	assert_int_equal(st.write_errors, 1);
	assert_int_equal(nvme_sync(s), 0);
	assert_int_equal(read_check(s, e, n, 9 * (uint64_t)PS64, 8), 0);
	free(e);
	nvme_close(s);
}

/* --- arguments ---------------------------------------------------------------- */

static void test_io_bad_args(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct nvme_stats st;
	char *buf = xalloc(8 * PS64);
	struct iovec iov[3];
	unsigned n;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, 4 * MiB, PS64, 2);
	assert_int_equal(nvme_alloc(s, 3 * PS64, &e, &n), 0);
	assert_int_equal(n, 2);

	iov[0] = (struct iovec){buf + 512, 3 * PS64}; /* unaligned */
	assert_int_equal(nvme_write(s, e, n, iov, 1), -EINVAL);
	iov[0] = (struct iovec){buf, 1000}; /* short entry not last */
	iov[1] = (struct iovec){buf + 4096, 3 * PS64};
	assert_int_equal(nvme_write(s, e, n, iov, 2), -EINVAL);
	iov[0] = (struct iovec){buf, 3 * PS64 - 1}; /* too few bytes */
	assert_int_equal(nvme_write(s, e, n, iov, 1), -EINVAL);
	assert_int_equal(nvme_read(s, e, n, iov, 1), -EINVAL);
	assert_int_equal(nvme_write(s, e, n, iov, -1), -EINVAL);
	iov[0] = (struct iovec){buf, 3 * PS64};
	e[0].len = 4000; /* middle extent not whole sectors */
	assert_int_equal(nvme_write(s, e, n, iov, 1), -EINVAL);
	e[0].len = 2 * PS64;
	e[1].page = 64; /* past the device */
	assert_int_equal(nvme_read(s, e, n, iov, 1), -EINVAL);
	e[1].page = 0;
	e[1].dev = 1;
	assert_int_equal(nvme_read(s, e, n, iov, 1), -EINVAL);
	assert_int_equal(nvme_register_memory(s, NULL, 4096), -EINVAL);
	assert_int_equal(nvme_register_memory(s, buf + 100, 4096), -EINVAL);
	assert_int_equal(nvme_register_memory(s, buf, 0), -EINVAL);
	/* Nothing to do is fine. */
	assert_int_equal(nvme_write(s, NULL, 0, NULL, 0), 0);
	nvme_get_stats(s, &st);
	assert_int_equal(st.write_errors + st.read_errors, 0);
	free(e);
	free(buf);
	nvme_close(s);
}

/* --- batching --------------------------------------------------------------- */

static void test_one_call_many_pages(void **state)
{
	struct nvme_store *s;
	struct nvme_extent *e;
	struct nvme_stats st;
	struct arena a;
	struct iovec iov[32];
	char *want = malloc(32 * (size_t)PS64), *got = malloc(32 * (size_t)PS64);
	unsigned n;

	(void)state;
	REQUIRE_DIRECT();
	arena_open(&a, 64 * (size_t)PS64);
	s = open_ok(3, 8 * MiB, PS64, 32);
	assert_int_equal(nvme_register_memory(s, a.base, a.bytes), 0);
	/* Thirty-two separate pages (every other arena page: nothing merges). */
	for (int i = 0; i < 32; i++)
		iov[i] = (struct iovec){a.base + (size_t)(2 * i) * PS64, PS64};
	fill(want, 32 * (size_t)PS64, 21);
	copy_to_iov(iov, 32, want, 32 * (size_t)PS64);
	assert_int_equal(nvme_alloc(s, 32 * (uint64_t)PS64, &e, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(nvme_write(s, e, n, iov, 32), 0);
	nvme_get_stats(s, &st);
	assert_int_equal(st.writes, 1);
	assert_int_equal(st.write_bytes, 32 * (uint64_t)PS64);
	for (int i = 0; i < 32; i++)
		iov[i].iov_base = a.base + (size_t)(2 * i + 1) * PS64;
	assert_int_equal(nvme_read(s, e, n, iov, 32), 0);
	copy_from_iov(got, iov, 32, 32 * (size_t)PS64);
	assert_memory_equal(got, want, 32 * (size_t)PS64);
	nvme_get_stats(s, &st);
	assert_int_equal(st.reads, 1);
	assert_int_equal(st.read_bytes, 32 * (uint64_t)PS64);
	free(e);
	nvme_close(s);
	arena_close(&a);
	free(want);
	free(got);
}

/* --- threads ----------------------------------------------------------------- */

struct worker {
	pthread_t tid;
	struct nvme_store *s;
	char *buf, *back; /* in the arena for even workers, plain for odd */
	int id, iterations, failures;
};

#define WORKER_BYTES (40 * (size_t)PS64)

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint64_t x = (uint64_t)w->id * 7919 + 1;

	for (int it = 0; it < w->iterations; it++) {
		struct nvme_extent *e;
		unsigned n;
		size_t bytes;
		struct iovec wi = {w->buf, 0}, ri = {w->back, 0};

		x = x * 6364136223846793005ull + 1442695040888963407ull;
		bytes = 1 + (size_t)(x >> 33) % WORKER_BYTES;
		wi.iov_len = ri.iov_len = bytes;
		fill(w->buf, bytes, x);
		if (nvme_alloc(w->s, bytes, &e, &n)) {
			w->failures++;
			continue;
		}
		if (nvme_write(w->s, e, n, &wi, 1) || nvme_read(w->s, e, n, &ri, 1) ||
		    memcmp(w->buf, w->back, bytes))
			w->failures++;
		nvme_free(w->s, e, n);
		free(e);
	}
	return NULL;
}

static void test_threads(void **state)
{
	struct nvme_store *s;
	struct worker w[4];
	struct nvme_stats st;
	struct arena a;
	char log_path[400], line[512];
	FILE *f;
	int rings = 0;

	(void)state;
	REQUIRE_DIRECT();
	arena_open(&a, 4 * WORKER_BYTES);
	snprintf(log_path, sizeof(log_path), "%s/log", fx.root);
	assert_int_equal(kvfs_log_open(log_path, KVFS_LOG_DEBUG), 0);
	s = open_ok(3, 16 * MiB, PS64, 4);
	assert_int_equal(nvme_register_memory(s, a.base, a.bytes), 0);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){.s = s, .id = i, .iterations = 60};
		if (i % 2 == 0) {
			w[i].buf = a.base + (size_t)i * WORKER_BYTES;
			w[i].back = a.base + (size_t)(i + 1) * WORKER_BYTES;
		} else {
			w[i].buf = xalloc(WORKER_BYTES);
			w[i].back = xalloc(WORKER_BYTES);
		}
	}
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&w[i].tid, NULL, worker_main, &w[i]), 0);
	for (int i = 0; i < 4; i++) {
		pthread_join(w[i].tid, NULL);
		assert_int_equal(w[i].failures, 0);
		if (i % 2) {
			free(w[i].buf);
			free(w[i].back);
		}
	}
	nvme_get_stats(s, &st);
	assert_int_equal(st.writes, 240);
	assert_int_equal(st.reads, 240);
	assert_int_equal(st.used, 0);
	assert_int_equal(st.write_errors + st.read_errors + st.csum_errors, 0);
	nvme_close(s);
	kvfs_log_open(NULL, KVFS_LOG_INFO);

	/* Each thread made its own ring, with the arena's fixed buffers. */
	f = fopen(log_path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		if (strstr(line, "new io_uring for thread")) {
			rings++;
			assert_null(strstr(line, "fixed buffers none"));
		}
	}
	fclose(f);
	assert_int_equal(rings, 4);
	arena_close(&a);
}

struct parked {
	struct nvme_store *s;
	pthread_barrier_t did_io, closed;
	int rc;
};

static void *parked_main(void *arg)
{
	struct parked *p = arg;
	char *buf = xalloc(PS64);
	struct nvme_extent *e;
	struct iovec iov = {buf, PS64};
	unsigned n;

	memset(buf, 3, PS64);
	p->rc = nvme_alloc(p->s, PS64, &e, &n);
	if (!p->rc)
		p->rc = nvme_write(p->s, e, n, &iov, 1);
	free(e);
	free(buf);
	pthread_barrier_wait(&p->did_io);
	pthread_barrier_wait(&p->closed); /* exits after nvme_close freed its ring */
	return NULL;
}

static void *exiting_main(void *arg)
{
	struct parked *p = arg;
	struct nvme_extent *e;
	char *buf = xalloc(PS64);
	struct iovec iov = {buf, PS64};
	unsigned n;

	memset(buf, 4, PS64);
	p->rc = nvme_alloc(p->s, PS64, &e, &n);
	if (!p->rc)
		p->rc = nvme_write(p->s, e, n, &iov, 1);
	if (!p->rc)
		p->rc = nvme_read(p->s, e, n, &iov, 1);
	free(e);
	free(buf);
	return NULL; /* its ring is freed by the key destructor */
}

static void test_ring_lifetimes(void **state)
{
	struct nvme_store *s;
	struct parked p = {0}, q = {0};
	pthread_t t1, t2;

	(void)state;
	REQUIRE_DIRECT();
	s = open_ok(1, 4 * MiB, PS64, 4);
	p.s = q.s = s;
	pthread_barrier_init(&p.did_io, NULL, 2);
	pthread_barrier_init(&p.closed, NULL, 2);
	assert_int_equal(pthread_create(&t2, NULL, exiting_main, &q), 0);
	pthread_join(t2, NULL);
	assert_int_equal(q.rc, 0);
	assert_int_equal(pthread_create(&t1, NULL, parked_main, &p), 0);
	pthread_barrier_wait(&p.did_io);
	assert_int_equal(p.rc, 0);
	/* The main thread has a ring too. */
	assert_int_equal(nvme_sync(s), 0);
	nvme_close(s);
	pthread_barrier_wait(&p.closed);
	pthread_join(t1, NULL);
	pthread_barrier_destroy(&p.did_io);
	pthread_barrier_destroy(&p.closed);

	/* A new store on the same directories works from the same threads. */
	s = open_ok(1, 4 * MiB, PS64, 4);
	assert_int_equal(nvme_sync(s), 0);
	nvme_close(s);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_open_close_reopen),
		T(test_reopen_keeps_data),
		T(test_identity_mismatch),
		T(test_identity_other_store),
		T(test_lock),
		T(test_bad_args),
		T(test_open_out_of_memory_closes_nothing_it_did_not_open),
		T(test_alloc_stripes),
		T(test_alloc_enospc),
		T(test_alloc_full_device_falls_over),
		T(test_reserve),
		T(test_fragmentation),
		T(test_write_read_registered),
		T(test_write_read_plain_layouts),
		T(test_short_last_extent),
		T(test_segment_boundary),
		T(test_registered_straddles_chunk),
		T(test_checksum_catch),
		T(test_truncated_segment),
		T(test_register_refused_falls_back),
		T(test_register_after_io),
		T(test_fault_write),
		T(test_fault_enospc_sets_full),
		T(test_fault_read),
		T(test_fault_fsync),
		T(test_io_bad_args),
		T(test_one_call_many_pages),
		T(test_threads),
		T(test_ring_lifetimes),
	};
#undef T
	probe_filesystem();
	if (g_skip_reason[0])
		fprintf(stderr, "nvme_test: %s; skipping\n", g_skip_reason);
	return cmocka_run_group_tests_name("nvme", tests, NULL, NULL);
}
