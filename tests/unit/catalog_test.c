/*
 * tests/unit/catalog_test.c — the catalog on a real RocksDB in a temporary
 * directory: record round trips, key order and prefix isolation of scans,
 * atomic batches (with the cat_write fault seam), persistence across reopen,
 * the state-directory lock (same process and a forked child), format
 * versioning, skipping of corrupt records, prefix deletion, and a 200k-entry
 * streaming scan.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/catalog.h"
#include "core/fault.h"
#include "core/util.h"

struct fixture {
	char tmp[64];  /* mkdtemp root, removed at teardown */
	char dir[128]; /* the state directory inside it */
	cat *c;
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	strcpy(f->tmp, "/tmp/kvfs-cat-XXXXXX");
	if (!mkdtemp(f->tmp)) {
		free(f);
		return -1;
	}
	snprintf(f->dir, sizeof(f->dir), "%s/state", f->tmp);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	cat_close(f->c);
	kvfs_fault_arm(KVFS_FAULT_CAT_WRITE, 0, 0, false);
	nftw(f->tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static cat *open_ok(struct fixture *f)
{
	char err[256] = "";
	int rc = cat_open(f->dir, &f->c, err, sizeof(err));

	if (rc)
		fail_msg("cat_open(%s): %d %s", f->dir, rc, err);
	return f->c;
}

static void reopen(struct fixture *f)
{
	cat_close(f->c);
	f->c = NULL;
	open_ok(f);
}

static void commit_ok(cat *c, cat_batch *b, bool sync)
{
	assert_int_equal(cat_commit(c, b, sync), 0);
	assert_int_equal(cat_batch_count(b), 0);
}

static struct cat_inode make_inode(uint64_t ino, uint32_t seed)
{
	struct cat_inode i;

	memset(&i, 0, sizeof(i));
	i.ino = ino;
	i.mode = 0100644;
	i.uid = 1000 + seed;
	i.gid = 2000 + seed;
	i.flags = 0;
	i.size = 4096ull * seed + 17;
	i.atime_ns = 1700000000123456789ll + seed;
	i.mtime_ns = -5 - (int64_t)seed; /* before the epoch: the sign must survive */
	i.ctime_ns = INT64_MAX - seed;
	i.hits = UINT64_MAX - seed;
	return i;
}

static void assert_inode_equal(const struct cat_inode *a, const struct cat_inode *b)
{
	assert_int_equal(a->ino, b->ino);
	assert_int_equal(a->mode, b->mode);
	assert_int_equal(a->uid, b->uid);
	assert_int_equal(a->gid, b->gid);
	assert_int_equal(a->flags, b->flags);
	assert_int_equal(a->size, b->size);
	assert_true(a->atime_ns == b->atime_ns);
	assert_true(a->mtime_ns == b->mtime_ns);
	assert_true(a->ctime_ns == b->ctime_ns);
	assert_true(a->hits == b->hits);
	assert_memory_equal(a->key.b, b->key.b, KVFS_KEY_BYTES);
	assert_memory_equal(a->parent.b, b->parent.b, KVFS_KEY_BYTES);
	assert_int_equal(a->ntokens, b->ntokens);
}

/* --- collecting visitors ---------------------------------------------------- */

struct inode_list {
	struct cat_inode v[64];
	size_t n;
};

static int collect_inode(void *arg, const struct cat_inode *ino)
{
	struct inode_list *l = arg;

	assert_true(l->n < KVFS_ARRAY_SIZE(l->v));
	l->v[l->n++] = *ino;
	return 0;
}

struct dentry {
	uint64_t parent;
	char name[256];
	size_t len;
	uint64_t ino;
};

struct dentry_list {
	struct dentry v[1024];
	size_t n;
};

static int collect_dentry(void *arg, uint64_t parent, const char *name, size_t namelen,
			  uint64_t ino)
{
	struct dentry_list *l = arg;

	assert_true(l->n < KVFS_ARRAY_SIZE(l->v));
	assert_true(namelen <= 255);
	assert_int_equal(name[namelen], '\0');
	l->v[l->n].parent = parent;
	memcpy(l->v[l->n].name, name, namelen);
	l->v[l->n].len = namelen;
	l->v[l->n].ino = ino;
	l->n++;
	return 0;
}

struct raw {
	uint8_t key[64];
	size_t klen;
	uint8_t val[64];
	size_t vlen;
};

struct raw_list {
	struct raw v[64];
	size_t n;
};

static int collect_raw(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct raw_list *l = arg;

	assert_true(l->n < KVFS_ARRAY_SIZE(l->v));
	assert_true(klen <= sizeof(l->v[0].key) && vlen <= sizeof(l->v[0].val));
	memcpy(l->v[l->n].key, key, klen);
	l->v[l->n].klen = klen;
	memcpy(l->v[l->n].val, val, vlen);
	l->v[l->n].vlen = vlen;
	l->n++;
	return 0;
}

/* Compare names the way RocksDB orders keys: bytes, then length. */
static int name_cmp(const void *pa, const void *pb)
{
	const struct dentry *a = pa, *b = pb;
	int r;

	if (a->parent != b->parent)
		return a->parent < b->parent ? -1 : 1;
	r = memcmp(a->name, b->name, KVFS_MIN(a->len, b->len));
	if (r)
		return r;
	return a->len < b->len ? -1 : a->len > b->len;
}

/* --- tests ------------------------------------------------------------------ */

static void test_open_creates_state_dir(void **state)
{
	struct fixture *f = *state;
	char path[192], buf[32];
	struct stat st;
	int fd;
	ssize_t n;

	snprintf(f->dir, sizeof(f->dir), "%s/a/b/state", f->tmp);
	open_ok(f);
	assert_int_equal(stat(f->dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	snprintf(path, sizeof(path), "%s/catalog", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISDIR(st.st_mode));

	snprintf(path, sizeof(path), "%s/lock", f->dir);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_int_equal(strtol(buf, NULL, 10), getpid());
}

static void test_open_on_file_fails(void **state)
{
	struct fixture *f = *state;
	char err[256];
	cat *c = (cat *)1;
	int fd;

	fd = open(f->dir, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(cat_open(f->dir, &c, err, sizeof(err)), -ENOTDIR);
	assert_null(c);
	assert_non_null(strstr(err, f->dir));
}

static void test_rocksdb_error_one_line(void **state)
{
	struct fixture *f = *state;
	char path[192], err[512];
	cat *c;
	int fd;

	/* A file where the database directory should be: RocksDB refuses. */
	assert_int_equal(mkdir(f->dir, 0700), 0);
	snprintf(path, sizeof(path), "%s/catalog", f->dir);
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(cat_open(f->dir, &c, err, sizeof(err)), -EIO);
	assert_null(c);
	assert_non_null(strstr(err, "catalog"));
	assert_null(strchr(err, '\n'));
	assert_true(strlen(err) > strlen("cannot open catalog "));

	/* The failed open released the lock. */
	assert_int_equal(unlink(path), 0);
	open_ok(f);
}

static void test_inode_round_trip(void **state)
{
	struct fixture *f = *state;
	struct cat_inode in[4], out;
	struct inode_list l = {.n = 0};
	cat_batch *b;
	uint64_t bad = 99;
	cat *c = open_ok(f);

	in[0] = make_inode(CAT_ROOT_INO, 0);
	in[0].mode = 040755;
	in[0].flags = CAT_F_PINNED;
	in[1] = make_inode(7, 1);
	in[1].flags = CAT_F_NATIVE | CAT_F_PINNED;
	in[1].ntokens = 256;
	for (int i = 0; i < KVFS_KEY_BYTES; i++) {
		in[1].key.b[i] = (uint8_t)(0xa0 + i);
		in[1].parent.b[i] = (uint8_t)(0xff - i);
	}
	in[2] = make_inode(256, 2);
	in[3] = make_inode(UINT64_MAX, 3);
	in[3].uid = UINT32_MAX;
	in[3].ntokens = UINT32_MAX;

	b = cat_batch_new();
	/* Out of order on purpose: the scan must come back sorted by ino. */
	cat_put_inode(b, &in[3]);
	cat_put_inode(b, &in[1]);
	cat_put_inode(b, &in[0]);
	cat_put_inode(b, &in[2]);
	assert_int_equal(cat_batch_count(b), 4);
	commit_ok(c, b, false);

	for (int i = 0; i < 4; i++) {
		memset(&out, 0x5a, sizeof(out));
		assert_int_equal(cat_get_inode(c, in[i].ino, &out), 0);
		assert_inode_equal(&in[i], &out);
	}
	assert_int_equal(cat_get_inode(c, 2, &out), -ENOENT);

	assert_int_equal(cat_scan_inodes(c, collect_inode, &l, &bad), 0);
	assert_int_equal(bad, 0);
	assert_int_equal(l.n, 4);
	for (int i = 0; i < 4; i++)
		assert_inode_equal(&in[i], &l.v[i]);

	/* Overwrite and delete. */
	in[2].size = 1;
	cat_put_inode(b, &in[2]);
	cat_del_inode(b, 7);
	commit_ok(c, b, true);
	assert_int_equal(cat_get_inode(c, 7, &out), -ENOENT);
	assert_int_equal(cat_get_inode(c, 256, &out), 0);
	assert_int_equal(out.size, 1);
	cat_batch_free(b);
}

static void test_dentry_round_trip(void **state)
{
	struct fixture *f = *state;
	struct dentry want[8];
	struct dentry_list *l = calloc(1, sizeof(*l));
	cat_batch *b = cat_batch_new();
	size_t n = 0;
	uint64_t bad = 99;
	cat *c = open_ok(f);

	assert_non_null(l);
	memset(want, 0, sizeof(want));
	/* Every byte value but NUL and '/', in one 254-byte name. */
	for (int ch = 1; ch < 256; ch++)
		if (ch != '/')
			want[n].name[want[n].len++] = (char)ch;
	n++;
	/* The longest name: 255 bytes. */
	memset(want[n].name, 'z', 255);
	want[n++].len = 255;
	/* High bytes, a one-byte name, a name that is a prefix of another. */
	memcpy(want[n].name, "\xff\xfe\x80", 3);
	want[n++].len = 3;
	want[n].name[0] = 'a';
	want[n++].len = 1;
	memcpy(want[n].name, "ab", 2);
	want[n++].len = 2;
	memcpy(want[n].name, "...", 3);
	want[n++].len = 3;
	for (size_t i = 0; i < n; i++) {
		want[i].parent = 42;
		want[i].ino = 1000 + i;
		cat_put_dentry(b, 42, want[i].name, want[i].len, want[i].ino);
	}
	commit_ok(c, b, false);

	qsort(want, n, sizeof(want[0]), name_cmp);
	assert_int_equal(cat_scan_dentries(c, 42, collect_dentry, l, &bad), 0);
	assert_int_equal(bad, 0);
	assert_int_equal(l->n, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(l->v[i].parent, 42);
		assert_int_equal(l->v[i].len, want[i].len);
		assert_memory_equal(l->v[i].name, want[i].name, want[i].len);
		assert_int_equal(l->v[i].ino, want[i].ino);
	}

	/* Delete one; "a" goes, "ab" stays. */
	cat_del_dentry(b, 42, "a", 1);
	commit_ok(c, b, false);
	l->n = 0;
	assert_int_equal(cat_scan_dentries(c, 42, collect_dentry, l, NULL), 0);
	assert_int_equal(l->n, n - 1);
	for (size_t i = 0; i < l->n; i++)
		assert_false(l->v[i].len == 1 && l->v[i].name[0] == 'a');
	cat_batch_free(b);
	free(l);
}

static void test_meta_round_trip(void **state)
{
	struct fixture *f = *state;
	const uint8_t bin[5] = {0, 1, 0xff, 0, 7};
	cat_batch *b = cat_batch_new();
	void *val;
	size_t len;
	cat *c = open_ok(f);

	/* A new catalog carries its format version. */
	assert_int_equal(cat_get_meta(c, "format", &val, &len), 0);
	assert_int_equal(len, 4);
	assert_memory_equal(val, "\x01\x00\x00\x00", 4);
	free(val);

	cat_put_meta(b, "bin", bin, sizeof(bin));
	cat_put_meta(b, "name", "node-a", 6);
	cat_put_meta(b, "empty", "", 0);
	commit_ok(c, b, true);

	assert_int_equal(cat_get_meta(c, "bin", &val, &len), 0);
	assert_int_equal(len, sizeof(bin));
	assert_memory_equal(val, bin, sizeof(bin));
	free(val);
	assert_int_equal(cat_get_meta(c, "name", &val, &len), 0);
	assert_string_equal(val, "node-a"); /* NUL-terminated beyond @len */
	free(val);
	assert_int_equal(cat_get_meta(c, "empty", &val, &len), 0);
	assert_non_null(val);
	assert_int_equal(len, 0);
	free(val);
	assert_int_equal(cat_get_meta(c, "missing", &val, &len), -ENOENT);
	assert_null(val);
	assert_int_equal(cat_get_meta(c, "bi", &val, &len), -ENOENT);
	cat_batch_free(b);
}

static void test_scan_prefix_isolation(void **state)
{
	struct fixture *f = *state;
	/* Parents whose big-endian bytes share prefixes and edges with each other. */
	const uint64_t parents[] = {
		1,
		2,
		255,
		256,
		257,
		0x0100000000000000ull,
		0x00000000000000ffull << 8,
		0xfffffffffffffffeull,
		UINT64_MAX,
	};
	const char *names[] = {"a", "b", "\xff", "\xff\xff"};
	struct dentry_list *l = calloc(1, sizeof(*l));
	struct dentry all[64];
	cat_batch *b = cat_batch_new();
	size_t n = 0;
	cat *c = open_ok(f);

	assert_non_null(l);
	for (size_t p = 0; p < KVFS_ARRAY_SIZE(parents); p++)
		for (size_t i = 0; i < KVFS_ARRAY_SIZE(names); i++) {
			all[n].parent = parents[p];
			all[n].len = strlen(names[i]);
			memcpy(all[n].name, names[i], all[n].len);
			all[n].ino = 100 * (p + 1) + i;
			cat_put_dentry(b, all[n].parent, all[n].name, all[n].len, all[n].ino);
			n++;
		}
	/* Neighbours in other namespaces must not leak in either. */
	cat_put(b, CAT_NS_INODE, "\x00\x00\x00\x00\x00\x00\x00\x01", 8, "x", 1);
	cat_put(b, 'E', "zzz", 3, "x", 1);
	cat_put(b, 'C', "\xff\xff\xff\xff\xff\xff\xff\xff\xff", 9, "x", 1);
	commit_ok(c, b, false);
	qsort(all, n, sizeof(all[0]), name_cmp);

	for (size_t p = 0; p < KVFS_ARRAY_SIZE(parents); p++) {
		uint64_t bad = 99;

		l->n = 0;
		assert_int_equal(cat_scan_dentries(c, parents[p], collect_dentry, l, &bad), 0);
		assert_int_equal(bad, 0);
		assert_int_equal(l->n, KVFS_ARRAY_SIZE(names));
		for (size_t i = 0; i < l->n; i++)
			assert_int_equal(l->v[i].parent, parents[p]);
		for (size_t i = 1; i < l->n; i++)
			assert_true(name_cmp(&l->v[i - 1], &l->v[i]) < 0);
	}
	/* A parent with no entries between two that have some. */
	l->n = 0;
	assert_int_equal(cat_scan_dentries(c, 3, collect_dentry, l, NULL), 0);
	assert_int_equal(l->n, 0);

	/* All directories: (parent, name) order. */
	l->n = 0;
	assert_int_equal(cat_scan_dentries(c, 0, collect_dentry, l, NULL), 0);
	assert_int_equal(l->n, n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(l->v[i].parent, all[i].parent);
		assert_int_equal(l->v[i].ino, all[i].ino);
	}
	cat_batch_free(b);
	free(l);
}

static int stop_at_third(void *arg, uint64_t parent, const char *name, size_t namelen, uint64_t ino)
{
	int *seen = arg;

	return ++*seen == 3 ? 1234 : 0;
}

static void test_scan_stops_on_visitor_value(void **state)
{
	struct fixture *f = *state;
	cat_batch *b = cat_batch_new();
	char name[16];
	int seen = 0;
	cat *c = open_ok(f);

	for (int i = 0; i < 10; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		cat_put_dentry(b, 5, name, strlen(name), 10 + (uint64_t)i);
	}
	commit_ok(c, b, false);
	assert_int_equal(cat_scan_dentries(c, 5, stop_at_third, &seen, NULL), 1234);
	assert_int_equal(seen, 3);
	cat_batch_free(b);
}

static void test_raw_records(void **state)
{
	struct fixture *f = *state;
	struct raw_list l = {.n = 0};
	cat_batch *b = cat_batch_new();
	void *val;
	size_t len;
	cat *c = open_ok(f);

	cat_put(b, CAT_NS_NVME, "seg\x00\x01", 5, "v1", 2);
	cat_put(b, CAT_NS_NVME, "seg\x00\x02", 5, "v2", 2);
	cat_put(b, CAT_NS_NVME, "sef", 3, "no", 2);
	cat_put(b, CAT_NS_REMOTE, "seg\x00\x03", 5, "remote", 6);
	commit_ok(c, b, false);

	assert_int_equal(cat_get(c, CAT_NS_NVME, "seg\x00\x02", 5, &val, &len), 0);
	assert_int_equal(len, 2);
	assert_memory_equal(val, "v2", 2);
	free(val);
	assert_int_equal(cat_get(c, CAT_NS_REMOTE, "seg\x00\x02", 5, &val, &len), -ENOENT);

	/* The namespace byte is not part of what a tier sees. */
	assert_int_equal(cat_scan(c, CAT_NS_NVME, "seg", 3, collect_raw, &l), 0);
	assert_int_equal(l.n, 2);
	assert_int_equal(l.v[0].klen, 5);
	assert_memory_equal(l.v[0].key, "seg\x00\x01", 5);
	assert_memory_equal(l.v[1].key, "seg\x00\x02", 5);
	assert_memory_equal(l.v[1].val, "v2", 2);

	l.n = 0;
	assert_int_equal(cat_scan(c, CAT_NS_NVME, NULL, 0, collect_raw, &l), 0);
	assert_int_equal(l.n, 3);
	assert_memory_equal(l.v[0].key, "sef", 3);

	cat_del(b, CAT_NS_NVME, "sef", 3);
	commit_ok(c, b, false);
	assert_int_equal(cat_get(c, CAT_NS_NVME, "sef", 3, &val, &len), -ENOENT);

	/* A key longer than the stack buffer of cat_get. */
	{
		char big[300];

		memset(big, 'k', sizeof(big));
		cat_put(b, CAT_NS_NVME, big, sizeof(big), "big", 3);
		commit_ok(c, b, false);
		assert_int_equal(cat_get(c, CAT_NS_NVME, big, sizeof(big), &val, &len), 0);
		assert_int_equal(len, 3);
		free(val);
	}
	cat_batch_free(b);
}

static void test_batch_atomic_with_fault(void **state)
{
	struct fixture *f = *state;
	struct cat_inode ino = make_inode(10, 1), out;
	cat_batch *b = cat_batch_new();
	void *val;
	size_t len, count;
	uint64_t child;
	cat *c = open_ok(f);

	/* Something to delete in the failing batch. */
	cat_put(b, CAT_NS_NVME, "old", 3, "x", 1);
	commit_ok(c, b, false);

	cat_put_inode(b, &ino);
	cat_put_dentry(b, CAT_ROOT_INO, "file", 4, 10);
	cat_put_meta(b, "epoch", "7", 1);
	cat_del(b, CAT_NS_NVME, "old", 3);
	cat_put(b, CAT_NS_NVME, "new", 3, "y", 1);
	count = cat_batch_count(b);
	assert_int_equal(count, 5);

	kvfs_fault_arm(KVFS_FAULT_CAT_WRITE, 1, EIO, false);
	assert_int_equal(cat_commit(c, b, true), -EIO);
	assert_int_equal(cat_batch_count(b), count);
	/* Nothing of it is visible. */
	assert_int_equal(cat_get_inode(c, 10, &out), -ENOENT);
	assert_int_equal(cat_get_meta(c, "epoch", &val, &len), -ENOENT);
	assert_int_equal(cat_get(c, CAT_NS_NVME, "new", 3, &val, &len), -ENOENT);
	assert_int_equal(cat_get(c, CAT_NS_NVME, "old", 3, &val, &len), 0);
	free(val);

	/* Another errno from the seam comes back as it is. */
	kvfs_fault_arm(KVFS_FAULT_CAT_WRITE, 1, ENOSPC, false);
	assert_int_equal(cat_commit(c, b, false), -ENOSPC);
	assert_int_equal(cat_batch_count(b), count);

	/* The seam is spent: the same batch now commits, all of it. */
	commit_ok(c, b, true);
	assert_int_equal(cat_get_inode(c, 10, &out), 0);
	assert_inode_equal(&ino, &out);
	assert_int_equal(cat_get_meta(c, "epoch", &val, &len), 0);
	free(val);
	assert_int_equal(cat_get(c, CAT_NS_NVME, "new", 3, &val, &len), 0);
	free(val);
	assert_int_equal(cat_get(c, CAT_NS_NVME, "old", 3, &val, &len), -ENOENT);

	/* The dentry too, found through a scan. */
	{
		struct dentry_list *l = calloc(1, sizeof(*l));

		assert_non_null(l);
		assert_int_equal(cat_scan_dentries(c, CAT_ROOT_INO, collect_dentry, l, NULL), 0);
		assert_int_equal(l->n, 1);
		child = l->v[0].ino;
		free(l);
	}
	assert_int_equal(child, 10);
	cat_batch_free(b);
}

static void test_reopen_persists(void **state)
{
	struct fixture *f = *state;
	struct cat_inode ino = make_inode(77, 3), out;
	struct dentry_list *l = calloc(1, sizeof(*l));
	cat_batch *b = cat_batch_new();
	void *val;
	size_t len;
	cat *c = open_ok(f);

	assert_non_null(l);
	ino.flags = CAT_F_NATIVE;
	ino.ntokens = 16;
	memset(ino.key.b, 0x11, KVFS_KEY_BYTES);
	memset(ino.parent.b, 0x22, KVFS_KEY_BYTES);
	cat_put_inode(b, &ino);
	cat_put_dentry(b, CAT_ROOT_INO, "x.bin", 5, 77);
	commit_ok(c, b, false); /* not synced: a clean close must still keep it */
	cat_put_meta(b, "k", "v", 1);
	commit_ok(c, b, true);
	assert_int_equal(cat_sync(c), 0);

	reopen(f);
	c = f->c;
	assert_int_equal(cat_get_inode(c, 77, &out), 0);
	assert_inode_equal(&ino, &out);
	assert_int_equal(cat_get_meta(c, "k", &val, &len), 0);
	assert_memory_equal(val, "v", 1);
	free(val);
	assert_int_equal(cat_scan_dentries(c, CAT_ROOT_INO, collect_dentry, l, NULL), 0);
	assert_int_equal(l->n, 1);
	assert_memory_equal(l->v[0].name, "x.bin", 5);
	assert_int_equal(l->v[0].ino, 77);
	cat_batch_free(b);
	free(l);
}

static void test_second_open_busy(void **state)
{
	struct fixture *f = *state;
	char err[256], want[300];
	cat *c2 = (cat *)1;

	open_ok(f);
	assert_int_equal(cat_open(f->dir, &c2, err, sizeof(err)), -EBUSY);
	assert_null(c2);
	snprintf(want, sizeof(want), "state directory %s is in use by another kvfs (pid %ld)",
		 f->dir, (long)getpid());
	assert_string_equal(err, want);

	/* Closing releases it. */
	cat_close(f->c);
	f->c = NULL;
	assert_int_equal(cat_open(f->dir, &c2, err, sizeof(err)), 0);
	cat_close(c2);
}

static void test_forked_child_busy(void **state)
{
	struct fixture *f = *state;
	int status;
	pid_t child;

	open_ok(f);
	fflush(NULL);
	child = fork();
	assert_true(child >= 0);
	if (child == 0) {
		char err[256], want[64];
		cat *c2 = NULL;
		int rc = cat_open(f->dir, &c2, err, sizeof(err));

		snprintf(want, sizeof(want), "(pid %ld)", (long)getppid());
		if (rc != -EBUSY) {
			fprintf(stderr, "child: cat_open returned %d: %s\n", rc, err);
			_exit(1);
		}
		if (!strstr(err, want)) {
			fprintf(stderr, "child: message lacks %s: %s\n", want, err);
			_exit(2);
		}
		_exit(0);
	}
	assert_int_equal(waitpid(child, &status, 0), child);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_format_version_mismatch(void **state)
{
	struct fixture *f = *state;
	const uint8_t v2[4] = {2, 0, 0, 0};
	char err[256];
	cat_batch *b = cat_batch_new();
	cat *c = open_ok(f), *c2 = (cat *)1;

	cat_put_meta(b, "format", v2, sizeof(v2));
	commit_ok(c, b, true);
	cat_close(c);
	f->c = NULL;

	assert_int_equal(cat_open(f->dir, &c2, err, sizeof(err)), -EPROTO);
	assert_null(c2);
	assert_non_null(strstr(err, "format version 2"));
	/* A refused open leaves the lock free: the same answer again, not -EBUSY. */
	assert_int_equal(cat_open(f->dir, &c2, err, sizeof(err)), -EPROTO);
	cat_batch_free(b);
}

static void test_format_malformed(void **state)
{
	struct fixture *f = *state;
	char err[256];
	cat_batch *b = cat_batch_new();
	cat *c = open_ok(f), *c2 = (cat *)1;

	cat_put_meta(b, "format", "\x01", 1);
	commit_ok(c, b, false);
	cat_close(c);
	f->c = NULL;
	assert_int_equal(cat_open(f->dir, &c2, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "format record is 1 bytes"));
	cat_batch_free(b);
}

static void test_format_missing_in_nonempty(void **state)
{
	struct fixture *f = *state;
	char err[256];
	cat_batch *b = cat_batch_new();
	struct cat_inode ino = make_inode(5, 0);
	cat *c = open_ok(f), *c2 = (cat *)1;

	cat_put_inode(b, &ino);
	cat_del(b, CAT_NS_META, "format", 6);
	commit_ok(c, b, false);
	cat_close(c);
	f->c = NULL;
	assert_int_equal(cat_open(f->dir, &c2, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "no format version"));
	cat_batch_free(b);
}

static void test_corrupt_records_skipped(void **state)
{
	struct fixture *f = *state;
	struct cat_inode good1 = make_inode(3, 1), good2 = make_inode(9, 2), out;
	struct inode_list l = {.n = 0};
	struct dentry_list *dl = calloc(1, sizeof(*dl));
	uint8_t k[8], v[125], vbad[125];
	cat_batch *b = cat_batch_new();
	uint64_t bad = 0;
	cat *c = open_ok(f);

	assert_non_null(dl);
	cat_put_inode(b, &good1);
	cat_put_inode(b, &good2);
	/* A short value between them. */
	cat_be64(k, 5);
	cat_put(b, CAT_NS_INODE, k, sizeof(k), "\x01\x02\x03", 3);
	/* Right length, unknown record version. */
	memset(v, 0, sizeof(v));
	v[0] = 9;
	cat_be64(k, 6);
	cat_put(b, CAT_NS_INODE, k, sizeof(k), v, sizeof(v));
	/* Version 1, unknown flag bit. */
	memset(vbad, 0, sizeof(vbad));
	vbad[0] = 1;
	vbad[13 + 3] = 0x80;
	cat_be64(k, 7);
	cat_put(b, CAT_NS_INODE, k, sizeof(k), vbad, sizeof(vbad));
	/* A key that is not 8 bytes of ino. */
	cat_put(b, CAT_NS_INODE, "\x00\x00\x00\x08", 4, v, sizeof(v));
	/* Empty value. */
	cat_be64(k, 8);
	cat_put(b, CAT_NS_INODE, k, sizeof(k), "", 0);
	commit_ok(c, b, false);

	assert_int_equal(cat_scan_inodes(c, collect_inode, &l, &bad), 0);
	assert_int_equal(bad, 5);
	assert_int_equal(l.n, 2);
	assert_inode_equal(&good1, &l.v[0]);
	assert_inode_equal(&good2, &l.v[1]);
	assert_int_equal(cat_get_inode(c, 5, &out), -EIO);
	assert_int_equal(cat_get_inode(c, 9, &out), 0);

	/* Dentries: a bad value length, a '/' in a name, "..", a bare key. */
	{
		uint8_t dk[9 + 2], ino8[8];

		cat_put_dentry(b, 4, "ok", 2, 11);
		cat_put_dentry(b, 4, "a/b", 3, 12);
		cat_put_dentry(b, 4, "..", 2, 13);
		cat_be64(dk, 4);
		memcpy(dk + 8, "zz", 2);
		cat_put(b, CAT_NS_DENTRY, dk, 10, "\x00\x01", 2); /* 2-byte value */
		cat_be64(ino8, 14);
		cat_put(b, CAT_NS_DENTRY, dk, 8, ino8, 8); /* no name at all */
		cat_put_dentry(b, 4, "zero", 4, 0);	   /* child ino 0 */
		commit_ok(c, b, false);
	}
	bad = 0;
	assert_int_equal(cat_scan_dentries(c, 4, collect_dentry, dl, &bad), 0);
	assert_int_equal(bad, 5);
	assert_int_equal(dl->n, 1);
	assert_memory_equal(dl->v[0].name, "ok", 2);
	cat_batch_free(b);
	free(dl);
}

/* Number of table files in the database: proof that records left the memtable. */
static int count_sst(const struct fixture *f)
{
	char path[192];
	struct dirent *de;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "%s/catalog", f->dir);
	d = opendir(path);
	assert_non_null(d);
	while ((de = readdir(d)))
		n += strstr(de->d_name, ".sst") != NULL;
	closedir(d);
	return n;
}

/* Keys of namespace @ns, namespace byte stripped, as "hex,hex,...". */
static void list_keys(cat *c, enum cat_ns ns, char *out, size_t outlen)
{
	struct raw_list l = {.n = 0};
	size_t o = 0;

	assert_int_equal(cat_scan(c, ns, NULL, 0, collect_raw, &l), 0);
	out[0] = '\0';
	for (size_t i = 0; i < l.n; i++) {
		for (size_t j = 0; j < l.v[i].klen; j++)
			o += (size_t)snprintf(out + o, outlen - o, "%02x", l.v[i].key[j]);
		o += (size_t)snprintf(out + o, outlen - o, "%s", i + 1 < l.n ? "," : "");
	}
}

static void put_keys(cat_batch *b, enum cat_ns ns, const char *const *keys, const size_t *lens,
		     size_t n)
{
	for (size_t i = 0; i < n; i++)
		cat_put(b, ns, keys[i], lens[i], "v", 1);
}

static void test_del_prefix(void **state)
{
	struct fixture *f = *state;
	const char *keys[] = {"a",   "aa\xff", "ab",	     "ab\x00", "ab\x01",
			      "abc", "ab\xff", "ab\xff\xff", "ac",     "b"};
	const size_t lens[] = {1, 3, 2, 3, 3, 3, 3, 4, 2, 1};
	char got[512];
	cat_batch *b = cat_batch_new();
	cat *c = open_ok(f);

	put_keys(b, CAT_NS_NVME, keys, lens, KVFS_ARRAY_SIZE(keys));
	put_keys(b, CAT_NS_REMOTE, keys, lens, KVFS_ARRAY_SIZE(keys));
	commit_ok(c, b, false);
	/* Move the records into SST files: tombstones must cover them there too. */
	reopen(f);
	c = f->c;
	assert_true(count_sst(f) >= 1);

	cat_del_prefix(b, CAT_NS_NVME, "ab", 2);
	assert_int_equal(cat_batch_count(b), 1);
	commit_ok(c, b, false);
	list_keys(c, CAT_NS_NVME, got, sizeof(got));
	assert_string_equal(got, "61,6161ff,6163,62");
	list_keys(c, CAT_NS_REMOTE, got, sizeof(got));
	assert_string_equal(got, "61,6161ff,6162,616200,616201,616263,6162ff,6162ffff,6163,62");

	/* Tombstone now in an SST as well. */
	reopen(f);
	c = f->c;
	assert_true(count_sst(f) >= 2);
	list_keys(c, CAT_NS_NVME, got, sizeof(got));
	assert_string_equal(got, "61,6161ff,6163,62");

	/* A prefix ending in 0xff: its successor carries into the byte before. */
	cat_del_prefix(b, CAT_NS_REMOTE, "ab\xff", 3);
	commit_ok(c, b, false);
	list_keys(c, CAT_NS_REMOTE, got, sizeof(got));
	assert_string_equal(got, "61,6161ff,6162,616200,616201,616263,6163,62");

	/* Order within a batch: a put after the range delete survives, one before does not. */
	cat_put(b, CAT_NS_REMOTE, "ab-early", 8, "v", 1);
	cat_del_prefix(b, CAT_NS_REMOTE, "ab", 2);
	cat_put(b, CAT_NS_REMOTE, "ab-late", 7, "v", 1);
	commit_ok(c, b, false);
	list_keys(c, CAT_NS_REMOTE, got, sizeof(got));
	assert_string_equal(got, "61,6161ff,61622d6c617465,6163,62");

	/* An all-0xff prefix: the end of the range is the next namespace. */
	cat_put(b, CAT_NS_NVME, "\xff", 1, "v", 1);
	cat_put(b, CAT_NS_NVME, "\xff\xff\x01", 3, "v", 1);
	cat_put(b, CAT_NS_NVME, "\xfe", 1, "v", 1);
	cat_put(b, CAT_NS_NVME + 1, "\x00", 1, "next namespace", 14);
	commit_ok(c, b, false);
	cat_del_prefix(b, CAT_NS_NVME, "\xff", 1);
	commit_ok(c, b, false);
	list_keys(c, CAT_NS_NVME, got, sizeof(got));
	assert_string_equal(got, "61,6161ff,6163,62,fe");
	list_keys(c, CAT_NS_NVME + 1, got, sizeof(got));
	assert_string_equal(got, "00");

	/* An empty prefix empties the namespace, and only it. */
	cat_del_prefix(b, CAT_NS_NVME, NULL, 0);
	commit_ok(c, b, false);
	list_keys(c, CAT_NS_NVME, got, sizeof(got));
	assert_string_equal(got, "");
	list_keys(c, CAT_NS_REMOTE, got, sizeof(got));
	assert_string_equal(got, "61,6161ff,61622d6c617465,6163,62");
	{
		void *val;
		size_t len;

		assert_int_equal(cat_get(c, CAT_NS_NVME + 1, "\x00", 1, &val, &len), 0);
		free(val);
	}

	/* One directory's entries, by prefix: be64(parent). */
	{
		uint8_t p[8];
		struct dentry_list *l = calloc(1, sizeof(*l));

		assert_non_null(l);
		cat_put_dentry(b, 255, "x", 1, 2);
		cat_put_dentry(b, 256, "x", 1, 3);
		cat_put_dentry(b, 256, "y", 1, 4);
		cat_put_dentry(b, 257, "x", 1, 5);
		commit_ok(c, b, false);
		cat_be64(p, 256);
		cat_del_prefix(b, CAT_NS_DENTRY, p, sizeof(p));
		commit_ok(c, b, false);
		assert_int_equal(cat_scan_dentries(c, 0, collect_dentry, l, NULL), 0);
		assert_int_equal(l->n, 2);
		assert_int_equal(l->v[0].parent, 255);
		assert_int_equal(l->v[1].parent, 257);
		free(l);
	}
	cat_batch_free(b);
}

#define MT_WRITERS 4
#define MT_COMMITS 500

struct mt_arg {
	cat *c;
	uint64_t parent;
	_Atomic int *done;
	int rc;
};

static void *mt_writer(void *p)
{
	struct mt_arg *a = p;
	cat_batch *b = cat_batch_new(); /* one batch per thread */
	char name[16];

	for (uint64_t i = 0; i < MT_COMMITS && !a->rc; i++) {
		struct cat_inode ino = make_inode(a->parent * 10000 + i + 1, (uint32_t)i);
		int n = snprintf(name, sizeof(name), "e%05u", (unsigned)i);

		cat_put_inode(b, &ino);
		cat_put_dentry(b, a->parent, name, (size_t)n, ino.ino);
		a->rc = cat_commit(a->c, b, (i % 100) == 0);
	}
	cat_batch_free(b);
	atomic_fetch_add(a->done, 1);
	return NULL;
}

static int count_dentry(void *arg, uint64_t parent, const char *name, size_t namelen, uint64_t ino)
{
	(*(uint64_t *)arg)++;
	return 0;
}

static void test_threads_share_a_handle(void **state)
{
	struct fixture *f = *state;
	struct mt_arg args[MT_WRITERS];
	pthread_t th[MT_WRITERS];
	_Atomic int done = 0;
	uint64_t n, prev = 0, bad;
	cat *c = open_ok(f);

	for (int i = 0; i < MT_WRITERS; i++) {
		args[i] = (struct mt_arg){c, (uint64_t)i + 2, &done, 0};
		assert_int_equal(pthread_create(&th[i], NULL, mt_writer, &args[i]), 0);
	}
	/* Scans meanwhile see a growing, never shrinking, consistent count. */
	while (atomic_load(&done) < MT_WRITERS) {
		n = 0;
		assert_int_equal(cat_scan_dentries(c, 0, count_dentry, &n, &bad), 0);
		assert_int_equal(bad, 0);
		assert_true(n >= prev);
		prev = n;
	}
	for (int i = 0; i < MT_WRITERS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(args[i].rc, 0);
		n = 0;
		assert_int_equal(cat_scan_dentries(c, args[i].parent, count_dentry, &n, NULL), 0);
		assert_int_equal(n, MT_COMMITS);
	}
}

#define BIG_N 200000u

struct seq_check {
	uint32_t next;
	uint64_t parent;
};

static int check_seq(void *arg, uint64_t parent, const char *name, size_t namelen, uint64_t ino)
{
	struct seq_check *s = arg;
	char want[16];
	int n = snprintf(want, sizeof(want), "f%07u", s->next);

	if (parent != s->parent || namelen != (size_t)n || memcmp(name, want, namelen) ||
	    ino != 1000000ull + s->next)
		return -1;
	s->next++;
	return 0;
}

static double scan_seconds(cat *c, uint64_t parent, uint32_t expect)
{
	struct seq_check s = {0, parent};
	uint64_t bad = 99, t0 = kvfs_mono_ns();

	assert_int_equal(cat_scan_dentries(c, parent, check_seq, &s, &bad), 0);
	assert_int_equal(bad, 0);
	assert_int_equal(s.next, expect);
	return (double)(kvfs_mono_ns() - t0) / 1e9;
}

static void test_big_directory_streams(void **state)
{
	struct fixture *f = *state;
	cat_batch *b = cat_batch_new();
	char name[16];
	double t_small, t_big;
	cat *c = open_ok(f);

	/* Neighbours on both sides, one small directory, one of 200k entries. */
	cat_put_dentry(b, 99, "before", 6, 2);
	cat_put_dentry(b, 101, "after", 5, 3);
	for (uint32_t i = 0; i < BIG_N / 10; i++) {
		int n = snprintf(name, sizeof(name), "f%07u", i);
		cat_put_dentry(b, 50, name, (size_t)n, 1000000ull + i);
	}
	/* Inserted in reverse, committed in chunks: order comes from the keys. */
	for (uint32_t i = BIG_N; i-- > 0;) {
		int n = snprintf(name, sizeof(name), "f%07u", i);
		cat_put_dentry(b, 100, name, (size_t)n, 1000000ull + i);
		if (cat_batch_count(b) >= 20000)
			commit_ok(c, b, false);
	}
	commit_ok(c, b, false);

	t_small = scan_seconds(c, 50, BIG_N / 10);
	t_big = scan_seconds(c, 100, BIG_N);
	print_message("scan of %u entries: %.3f s; of %u: %.3f s\n", BIG_N / 10, t_small, BIG_N,
		      t_big);
	/* Linear is 10x; quadratic would be 100x. Allow slack for noise. */
	assert_true(t_big < 30 * t_small + 0.5);
	assert_true(t_big < 20.0);
	cat_batch_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_open_creates_state_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_on_file_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rocksdb_error_one_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inode_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dentry_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_meta_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_prefix_isolation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_scan_stops_on_visitor_value, setup, teardown),
		cmocka_unit_test_setup_teardown(test_raw_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch_atomic_with_fault, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_persists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_second_open_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_forked_child_busy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_format_version_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_format_malformed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_format_missing_in_nonempty, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_records_skipped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_del_prefix, setup, teardown),
		cmocka_unit_test_setup_teardown(test_threads_share_a_handle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_big_directory_streams, setup, teardown),
	};

	return cmocka_run_group_tests_name("catalog", tests, NULL, NULL);
}
