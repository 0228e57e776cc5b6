/*
 * core/catalog.c — the catalog: one RocksDB database per mount.
 *
 * Owns: the state directory's lock file, the RocksDB handle and its options,
 * and the byte layout of every record except tier-owned ones. Callers see
 * typed records (inodes, dentries, meta values) and opaque tier records; the
 * encodings below never leave this file.
 *
 * State directory (created 0700 if missing):
 *   <dir>/lock     flock(LOCK_EX) for the life of a cat handle; holds the
 *                  owner's pid in decimal (for the -EBUSY message only — the
 *                  flock is the lock, the pid may be stale for an instant
 *                  while a new owner rewrites it)
 *   <dir>/catalog  the RocksDB database
 *
 * Keys. The first byte of every key is its namespace (enum cat_ns), so each
 * namespace is one contiguous key range. Integers in keys are big-endian so
 * that byte order is numeric order.
 *   'M' name                       meta value (opaque bytes)
 *   'I' be64 ino                   inode record (below)
 *   'D' be64 parent, name bytes    be64 child ino
 *   'N' ..., 'R' ...               owned by the NVMe and remote tiers
 * A directory's entries are therefore the key range with prefix
 * 'D' be64(parent): listing one directory is a prefix scan, and a parent's
 * range never interleaves with another's (fixed-width parent).
 *
 * Inode record value, version 1, 125 bytes, all integers little-endian:
 *   off  size  field
 *     0     1  record version (1)
 *     1     4  mode
 *     5     4  uid
 *     9     4  gid
 *    13     4  flags (enum cat_inode_flags; unknown bits are rejected)
 *    17     8  size
 *    25     8  atime_ns (signed)
 *    33     8  mtime_ns (signed)
 *    41     8  ctime_ns (signed)
 *    49     8  hits
 *    57     4  ntokens
 *    61    32  key (native blocks; zeros otherwise)
 *    93    32  parent key (native blocks; zeros otherwise)
 * The ino lives only in the key. A record is accepted only if its key is
 * exactly 9 bytes with a non-zero ino, its length is exactly that of its
 * version, and its flags are known. A dentry is accepted only if its name is
 * 1..NAME_MAX bytes without '/' or NUL and is not "." or "..", and its value
 * is exactly 8 bytes naming a non-zero ino. Records that fail are skipped by
 * scans, counted and logged (the first few per scan, then a total), so one
 * bad record costs one file, never the mount.
 *
 * Meta "format" holds the catalog format version, u32 little-endian; this
 * code writes and accepts CAT_FORMAT_VERSION only. A new (empty) database
 * gets it at open; a non-empty one without it, or with another version, is
 * refused with -EPROTO rather than misread.
 *
 * Deleting a prefix is one range tombstone (RocksDB DeleteRange) over
 * [ns prefix, successor), where the successor is the prefix with trailing
 * 0xff bytes dropped and its last byte incremented; namespace bytes are
 * letters, so a successor always exists. A tombstone is one batch operation
 * whatever it covers and needs no read, which is why cat_del_prefix takes no
 * cat; the tests check it hides records in the memtable and in table files.
 *
 * Locking and threads. RocksDB handles are thread-safe, so every function on
 * a cat may be called from any number of threads at once, except cat_close,
 * which must be the last call. A cat_batch belongs to one thread at a time
 * (it is a bare rocksdb_writebatch_t, which is not thread-safe). A scan reads
 * the snapshot its iterator pinned at the start; commits made meanwhile,
 * including by the visitor itself, are not seen by that scan.
 */
#include "core/catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rocksdb/c.h>

#include "core/fault.h"
#include "core/log.h"

#define CAT_FORMAT_VERSION 1u
#define CAT_FORMAT_KEY	   "format"

#define CAT_INODE_V1	 1
#define CAT_INODE_V1_LEN 125
#define CAT_F_KNOWN	 (CAT_F_PINNED | CAT_F_NATIVE)

#define CAT_BLOCK_CACHE_BYTES (8u << 20)
#define CAT_KEY_SMALL	      64 /* keys up to this long are built on the stack */
#define CAT_BAD_LOG_MAX	      8	 /* bad records logged one by one per scan */

struct cat {
	rocksdb_t *db;
	rocksdb_options_t *opts;
	rocksdb_block_based_table_options_t *table_opts;
	rocksdb_cache_t *cache;
	rocksdb_writeoptions_t *wopts_sync;
	rocksdb_writeoptions_t *wopts_async;
	rocksdb_readoptions_t *ropts;
	int lock_fd;
	char *path; /* <dir>/catalog, for messages */
};

/* A cat_batch is a rocksdb_writebatch_t: nothing of ours to add, no extra allocation. */
static inline rocksdb_writebatch_t *wb(cat_batch *b)
{
	return (rocksdb_writebatch_t *)b;
}

/* --- small helpers ---------------------------------------------------------- */

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

static void put_le64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint32_t get_le32(const uint8_t *p)
{
	uint32_t v = 0;
	for (int i = 3; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint64_t get_le64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Write a one-line message to @err (newlines from RocksDB become spaces). */
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	for (char *p = err; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

/* Hex of the first bytes of @key, ".." if cut, for log lines about bad records. */
static const char *key_hex(const void *key, size_t klen, char *buf, size_t buflen)
{
	static const char digits[] = "0123456789abcdef";
	const uint8_t *k = key;
	size_t i, n = 0, max = (buflen - 3) / 2; /* room for ".." and NUL */

	for (i = 0; i < klen && i < max; i++) {
		buf[n++] = digits[k[i] >> 4];
		buf[n++] = digits[k[i] & 15];
	}
	if (i < klen) {
		buf[n++] = '.';
		buf[n++] = '.';
	}
	buf[n] = '\0';
	return buf;
}

/* A key built contiguously: on the stack when small, else on the heap. */
struct cat_key {
	uint8_t *p;
	size_t len;
	uint8_t small[CAT_KEY_SMALL];
};

static int key_build(struct cat_key *k, enum cat_ns ns, const void *rest, size_t rlen)
{
	k->len = 1 + rlen;
	k->p = k->len <= sizeof(k->small) ? k->small : malloc(k->len);
	if (!k->p)
		return -ENOMEM;
	k->p[0] = (uint8_t)ns;
	if (rlen)
		memcpy(k->p + 1, rest, rlen);
	return 0;
}

static void key_free(struct cat_key *k)
{
	if (k->p != k->small)
		free(k->p);
}

/*
 * Length of the shortest key greater than every key with prefix @key[0..len):
 * drop trailing 0xff bytes, then the last byte is to be incremented (the
 * caller writes key[n-1] + 1). @return n, or 0 if no such key exists.
 */
static size_t successor_len(const uint8_t *key, size_t len)
{
	while (len && key[len - 1] == 0xff)
		len--;
	return len;
}

/* --- record encodings ------------------------------------------------------- */

static void inode_encode(const struct cat_inode *ino, uint8_t out[CAT_INODE_V1_LEN])
{
	out[0] = CAT_INODE_V1;
	put_le32(out + 1, ino->mode);
	put_le32(out + 5, ino->uid);
	put_le32(out + 9, ino->gid);
	put_le32(out + 13, ino->flags);
	put_le64(out + 17, ino->size);
	put_le64(out + 25, (uint64_t)ino->atime_ns);
	put_le64(out + 33, (uint64_t)ino->mtime_ns);
	put_le64(out + 41, (uint64_t)ino->ctime_ns);
	put_le64(out + 49, ino->hits);
	put_le32(out + 57, ino->ntokens);
	memcpy(out + 61, ino->key.b, KVFS_KEY_BYTES);
	memcpy(out + 93, ino->parent.b, KVFS_KEY_BYTES);
}

/* @return NULL and fill @out, or why the record is refused. */
static const char *inode_decode(const void *key, size_t klen, const void *val, size_t vlen,
				struct cat_inode *out)
{
	const uint8_t *k = key, *v = val;

	if (klen != 9 || k[0] != CAT_NS_INODE)
		return "key is not 'I' + 8 bytes";
	if (vlen < 1)
		return "empty value";
	if (v[0] != CAT_INODE_V1)
		return "unknown record version";
	if (vlen != CAT_INODE_V1_LEN)
		return "wrong length for version 1";
	memset(out, 0, sizeof(*out));
	out->ino = cat_get_be64(k + 1);
	if (out->ino == 0)
		return "ino 0";
	out->mode = get_le32(v + 1);
	out->uid = get_le32(v + 5);
	out->gid = get_le32(v + 9);
	out->flags = get_le32(v + 13);
	if (out->flags & ~(uint32_t)CAT_F_KNOWN)
		return "unknown flags";
	out->size = get_le64(v + 17);
	out->atime_ns = (int64_t)get_le64(v + 25);
	out->mtime_ns = (int64_t)get_le64(v + 33);
	out->ctime_ns = (int64_t)get_le64(v + 41);
	out->hits = get_le64(v + 49);
	out->ntokens = get_le32(v + 57);
	memcpy(out->key.b, v + 61, KVFS_KEY_BYTES);
	memcpy(out->parent.b, v + 93, KVFS_KEY_BYTES);
	return NULL;
}

/* @return NULL and fill the outputs, or why the record is refused. */
static const char *dentry_decode(const void *key, size_t klen, const void *val, size_t vlen,
				 uint64_t *parent, const uint8_t **name, size_t *namelen,
				 uint64_t *ino)
{
	const uint8_t *k = key;

	if (klen < 10 || k[0] != CAT_NS_DENTRY)
		return "key is not 'D' + 8 bytes + name";
	*parent = cat_get_be64(k + 1);
	*name = k + 9;
	*namelen = klen - 9;
	if (*namelen > NAME_MAX)
		return "name longer than NAME_MAX";
	if (memchr(*name, '/', *namelen) || memchr(*name, '\0', *namelen))
		return "name contains '/' or NUL";
	if ((*namelen == 1 && (*name)[0] == '.') ||
	    (*namelen == 2 && (*name)[0] == '.' && (*name)[1] == '.'))
		return "name is . or ..";
	if (vlen != 8)
		return "value is not 8 bytes";
	*ino = cat_get_be64(val);
	if (*ino == 0 || *parent == 0)
		return "parent or child ino 0";
	return NULL;
}

/* --- open and close --------------------------------------------------------- */

/* mkdir -p @dir, creating missing components 0700. */
static int mkdir_p(const char *dir)
{
	struct stat st;
	char *path, *p, saved;
	int rc = 0;

	if (!*dir)
		return -ENOENT;
	path = strdup(dir);
	if (!path)
		return -ENOMEM;
	for (p = path + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		saved = *p;
		*p = '\0';
		if (mkdir(path, 0700) < 0 && errno != EEXIST) {
			rc = -errno;
			if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
				rc = 0;
			else
				goto out;
		}
		*p = saved;
		if (!saved)
			break;
	}
	if (stat(dir, &st) < 0)
		rc = -errno;
	else if (!S_ISDIR(st.st_mode))
		rc = -ENOTDIR;
out:
	free(path);
	return rc;
}

/* Pid recorded in the lock file, or 0 if it cannot be read. */
static long lock_holder(int fd)
{
	char buf[32];
	ssize_t n;

	n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strtol(buf, NULL, 10);
}

static int lock_dir(const char *dir, int *fdp, char *err, size_t errlen)
{
	char *path = NULL, pid[32];
	int fd, rc, n;

	if (asprintf(&path, "%s/lock", dir) < 0)
		return -ENOMEM;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		set_err(err, errlen, "cannot open %s: %s", path, strerror(-rc));
		goto out_free;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		if (rc == -EBUSY) {
			char who[32] = "pid unknown";
			long holder = lock_holder(fd);

			if (holder > 0)
				snprintf(who, sizeof(who), "pid %ld", holder);
			set_err(err, errlen, "state directory %s is in use by another kvfs (%s)",
				dir, who);
		} else {
			set_err(err, errlen, "cannot lock %s: %s", path, strerror(-rc));
		}
		goto out_close;
	}
	/*
	 * Write, then cut to length. A rival that reads in between sees the
	 * file empty or stale and reports "pid unknown" or the old pid; the
	 * flock, not the pid, decides who owns the directory.
	 */
	n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (pwrite(fd, pid, (size_t)n, 0) != n || ftruncate(fd, n) < 0) {
		rc = -errno;
		set_err(err, errlen, "cannot write %s: %s", path, strerror(-rc));
		goto out_close;
	}
	*fdp = fd;
	rc = 0;
	goto out_free;
out_close:
	close(fd);
out_free:
	free(path);
	return rc;
}

static void unlock_dir(int fd)
{
	if (fd < 0)
		return;
	/* Clear our pid while still holding the lock; closing releases it. */
	if (ftruncate(fd, 0) < 0)
		log_warn("catalog: cannot clear lock file: %s", strerror(errno));
	close(fd);
}

/* Check the format record, writing it into an empty catalog. */
static int check_format(cat *c, char *err, size_t errlen)
{
	rocksdb_iterator_t *it;
	cat_batch *b;
	uint8_t ver[4];
	void *val = NULL;
	size_t vlen = 0;
	bool empty;
	int rc;

	rc = cat_get_meta(c, CAT_FORMAT_KEY, &val, &vlen);
	if (rc == 0) {
		if (vlen != 4) {
			set_err(err, errlen, "catalog %s: format record is %zu bytes, expected 4",
				c->path, vlen);
			rc = -EPROTO;
		} else if (get_le32(val) != CAT_FORMAT_VERSION) {
			set_err(err, errlen,
				"catalog %s has format version %u; this kvfs reads only version %u",
				c->path, get_le32(val), CAT_FORMAT_VERSION);
			rc = -EPROTO;
		}
		goto out;
	}
	if (rc != -ENOENT) {
		set_err(err, errlen, "catalog %s: cannot read the format record", c->path);
		goto out;
	}

	it = rocksdb_create_iterator(c->db, c->ropts);
	rocksdb_iter_seek_to_first(it);
	empty = !rocksdb_iter_valid(it);
	rocksdb_iter_destroy(it);
	if (!empty) {
		set_err(err, errlen,
			"catalog %s has records but no format version; not a kvfs catalog?",
			c->path);
		rc = -EPROTO;
		goto out;
	}

	b = cat_batch_new();
	put_le32(ver, CAT_FORMAT_VERSION);
	cat_put_meta(b, CAT_FORMAT_KEY, ver, sizeof(ver));
	rc = cat_commit(c, b, true);
	cat_batch_free(b);
	if (rc)
		set_err(err, errlen, "catalog %s: cannot write the format record: %s", c->path,
			strerror(-rc));
out:
	free(val);
	return rc;
}

/* Release everything cat_open acquired; fields not yet set are NULL or -1. */
static void cat_free(cat *c)
{
	if (c->db)
		rocksdb_close(c->db);
	if (c->ropts)
		rocksdb_readoptions_destroy(c->ropts);
	if (c->wopts_async)
		rocksdb_writeoptions_destroy(c->wopts_async);
	if (c->wopts_sync)
		rocksdb_writeoptions_destroy(c->wopts_sync);
	if (c->opts)
		rocksdb_options_destroy(c->opts);
	if (c->table_opts)
		rocksdb_block_based_options_destroy(c->table_opts);
	if (c->cache)
		rocksdb_cache_destroy(c->cache);
	unlock_dir(c->lock_fd);
	free(c->path);
	free(c);
}

int cat_open(const char *dir, cat **out, char *err, size_t errlen)
{
	char *rerr = NULL;
	cat *c;
	int rc;

	*out = NULL;
	set_err(err, errlen, "%s", "");
	c = calloc(1, sizeof(*c));
	if (!c) {
		set_err(err, errlen, "out of memory");
		return -ENOMEM;
	}
	c->lock_fd = -1;

	rc = mkdir_p(dir);
	if (rc) {
		set_err(err, errlen, "cannot create state directory %s: %s", dir, strerror(-rc));
		goto out_free;
	}
	rc = lock_dir(dir, &c->lock_fd, err, errlen);
	if (rc)
		goto out_free;
	if (asprintf(&c->path, "%s/catalog", dir) < 0) {
		c->path = NULL;
		rc = -ENOMEM;
		set_err(err, errlen, "out of memory");
		goto out_free;
	}

	c->cache = rocksdb_cache_create_lru(CAT_BLOCK_CACHE_BYTES);
	c->table_opts = rocksdb_block_based_options_create();
	rocksdb_block_based_options_set_block_cache(c->table_opts, c->cache);
	c->opts = rocksdb_options_create();
	rocksdb_options_set_create_if_missing(c->opts, 1);
	rocksdb_options_increase_parallelism(c->opts, 2);
	rocksdb_options_set_block_based_table_factory(c->opts, c->table_opts);
	/* RocksDB's own LOG files: keep a few, small. */
	rocksdb_options_set_keep_log_file_num(c->opts, 4);
	rocksdb_options_set_max_log_file_size(c->opts, 1u << 20);
	c->wopts_sync = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(c->wopts_sync, 1);
	c->wopts_async = rocksdb_writeoptions_create();
	rocksdb_writeoptions_set_sync(c->wopts_async, 0);
	c->ropts = rocksdb_readoptions_create();

	c->db = rocksdb_open(c->opts, c->path, &rerr);
	if (rerr) {
		set_err(err, errlen, "cannot open catalog %s: %s", c->path, rerr);
		rocksdb_free(rerr);
		c->db = NULL;
		rc = -EIO;
		goto out_free;
	}
	rc = check_format(c, err, errlen);
	if (rc)
		goto out_free;
	*out = c;
	return 0;
out_free:
	cat_free(c);
	return rc;
}

void cat_close(cat *c)
{
	if (!c)
		return;
	if (cat_sync(c))
		log_err("catalog %s: closing with an unsynced WAL", c->path);
	cat_free(c);
}

int cat_sync(cat *c)
{
	char *rerr = NULL;

	rocksdb_flush_wal(c->db, 1, &rerr);
	if (rerr) {
		log_err("catalog %s: WAL sync failed: %s", c->path, rerr);
		rocksdb_free(rerr);
		return -EIO;
	}
	return 0;
}

/* --- batches ------------------------------------------------------------------ */

cat_batch *cat_batch_new(void)
{
	return (cat_batch *)rocksdb_writebatch_create();
}

void cat_batch_free(cat_batch *b)
{
	if (b)
		rocksdb_writebatch_destroy(wb(b));
}

size_t cat_batch_count(const cat_batch *b)
{
	return (size_t)rocksdb_writebatch_count(wb((cat_batch *)b));
}

/*
 * Keys are passed to RocksDB in parts (its SliceParts), which it joins into
 * the batch's own buffer: no allocation here, so these cannot fail.
 */
static void put_parts(cat_batch *b, int nk, const char *const *k, const size_t *kl, const void *val,
		      size_t vlen)
{
	const char *v = val;

	rocksdb_writebatch_putv(wb(b), nk, k, kl, 1, &v, &vlen);
}

void cat_put_inode(cat_batch *b, const struct cat_inode *ino)
{
	uint8_t key[9], val[CAT_INODE_V1_LEN];

	key[0] = CAT_NS_INODE;
	cat_be64(key + 1, ino->ino);
	inode_encode(ino, val);
	rocksdb_writebatch_put(wb(b), (const char *)key, sizeof(key), (const char *)val,
			       sizeof(val));
}

void cat_del_inode(cat_batch *b, uint64_t ino)
{
	uint8_t key[9];

	key[0] = CAT_NS_INODE;
	cat_be64(key + 1, ino);
	rocksdb_writebatch_delete(wb(b), (const char *)key, sizeof(key));
}

void cat_put_dentry(cat_batch *b, uint64_t parent, const char *name, size_t namelen, uint64_t ino)
{
	uint8_t head[9], val[8];
	const char *k[2] = {(const char *)head, name};
	size_t kl[2] = {sizeof(head), namelen};

	head[0] = CAT_NS_DENTRY;
	cat_be64(head + 1, parent);
	cat_be64(val, ino);
	put_parts(b, 2, k, kl, val, sizeof(val));
}

void cat_del_dentry(cat_batch *b, uint64_t parent, const char *name, size_t namelen)
{
	uint8_t head[9];
	const char *k[2] = {(const char *)head, name};
	size_t kl[2] = {sizeof(head), namelen};

	head[0] = CAT_NS_DENTRY;
	cat_be64(head + 1, parent);
	rocksdb_writebatch_deletev(wb(b), 2, k, kl);
}

void cat_put(cat_batch *b, enum cat_ns ns, const void *key, size_t klen, const void *val,
	     size_t vlen)
{
	char nsb = (char)ns;
	const char *k[2] = {&nsb, key};
	size_t kl[2] = {1, klen};

	put_parts(b, 2, k, kl, val, vlen);
}

void cat_put_meta(cat_batch *b, const char *name, const void *val, size_t len)
{
	cat_put(b, CAT_NS_META, name, strlen(name), val, len);
}

void cat_del(cat_batch *b, enum cat_ns ns, const void *key, size_t klen)
{
	char nsb = (char)ns;
	const char *k[2] = {&nsb, key};
	size_t kl[2] = {1, klen};

	rocksdb_writebatch_deletev(wb(b), 2, k, kl);
}

void cat_del_prefix(cat_batch *b, enum cat_ns ns, const void *prefix, size_t plen)
{
	const uint8_t *p = prefix;
	char nsb = (char)ns, last;
	size_t n = successor_len(p, plen);
	/* start = ns prefix; end = (ns prefix)'s successor, both in three parts */
	const char *start[3] = {&nsb, prefix, ""};
	size_t start_len[3] = {1, plen, 0};
	const char *end[3] = {&nsb, prefix, &last};
	size_t end_len[3] = {1, n ? n - 1 : 0, 1};

	if (n) {
		last = (char)(p[n - 1] + 1);
	} else {
		/* Every byte of the prefix is 0xff: the successor is ns + 1. */
		if ((uint8_t)ns == 0xff) {
			log_err("catalog: cannot delete prefix of namespace 0xff");
			return;
		}
		last = (char)(ns + 1);
		end[0] = "";
		end_len[0] = 0;
	}
	rocksdb_writebatch_delete_rangev(wb(b), 3, start, start_len, end, end_len);
}

int cat_commit(cat *c, cat_batch *b, bool sync)
{
	char *rerr = NULL;
	int rc;

	rc = kvfs_fault(KVFS_FAULT_CAT_WRITE);
	if (rc)
		return rc;
	rocksdb_write(c->db, sync ? c->wopts_sync : c->wopts_async, wb(b), &rerr);
	if (rerr) {
		log_err("catalog %s: commit of %zu operations failed: %s", c->path,
			cat_batch_count(b), rerr);
		rocksdb_free(rerr);
		return -EIO;
	}
	rocksdb_writebatch_clear(wb(b));
	return 0;
}

/* --- point reads ---------------------------------------------------------------- */

/* Look up @key; on 0, *@ps holds the value (destroy it). @return 0, -ENOENT, -EIO. */
static int get_pinned(cat *c, const void *key, size_t klen, rocksdb_pinnableslice_t **ps)
{
	char *rerr = NULL;

	*ps = rocksdb_get_pinned(c->db, c->ropts, key, klen, &rerr);
	if (rerr) {
		log_err("catalog %s: read failed: %s", c->path, rerr);
		rocksdb_free(rerr);
		if (*ps)
			rocksdb_pinnableslice_destroy(*ps);
		*ps = NULL;
		return -EIO;
	}
	return *ps ? 0 : -ENOENT;
}

int cat_get(cat *c, enum cat_ns ns, const void *key, size_t klen, void **val, size_t *vlen)
{
	rocksdb_pinnableslice_t *ps;
	struct cat_key k;
	const char *v;
	size_t n;
	int rc;

	*val = NULL;
	*vlen = 0;
	rc = key_build(&k, ns, key, klen);
	if (rc)
		return rc;
	rc = get_pinned(c, k.p, k.len, &ps);
	if (rc)
		goto out_key;
	v = rocksdb_pinnableslice_value(ps, &n);
	/* One byte more, NUL: meta strings can be used as they are. */
	*val = malloc(n + 1);
	if (!*val) {
		rc = -ENOMEM;
		goto out_slice;
	}
	memcpy(*val, v, n);
	((char *)*val)[n] = '\0';
	*vlen = n;
out_slice:
	rocksdb_pinnableslice_destroy(ps);
out_key:
	key_free(&k);
	return rc;
}

int cat_get_inode(cat *c, uint64_t ino, struct cat_inode *out)
{
	rocksdb_pinnableslice_t *ps;
	uint8_t key[9];
	const char *v, *why;
	char hex[24];
	size_t n;
	int rc;

	key[0] = CAT_NS_INODE;
	cat_be64(key + 1, ino);
	rc = get_pinned(c, key, sizeof(key), &ps);
	if (rc)
		return rc;
	v = rocksdb_pinnableslice_value(ps, &n);
	why = inode_decode(key, sizeof(key), v, n, out);
	if (why) {
		log_err("catalog %s: bad inode record %s: %s", c->path,
			key_hex(key, sizeof(key), hex, sizeof(hex)), why);
		rc = -EIO;
	}
	rocksdb_pinnableslice_destroy(ps);
	return rc;
}

int cat_get_meta(cat *c, const char *name, void **val, size_t *len)
{
	return cat_get(c, CAT_NS_META, name, strlen(name), val, len);
}

/* --- scans ------------------------------------------------------------------------ */

/* One record of a scan; @return non-zero to stop the scan with that value. */
typedef int (*scan_fn)(void *arg, const void *key, size_t klen, const void *val, size_t vlen);

/*
 * Visit every record whose key starts with @ns @prefix, in key order.
 * Full-namespace scans bypass the block cache (they read everything once and
 * would only evict the hot blocks).
 */
static int scan_range(cat *c, enum cat_ns ns, const void *prefix, size_t plen, scan_fn fn,
		      void *arg)
{
	rocksdb_readoptions_t *ro;
	rocksdb_iterator_t *it;
	struct cat_key start, upper;
	char *rerr = NULL;
	size_t n;
	int rc;

	rc = key_build(&start, ns, prefix, plen);
	if (rc)
		return rc;
	rc = key_build(&upper, ns, prefix, plen);
	if (rc)
		goto out_start;

	ro = rocksdb_readoptions_create();
	n = successor_len(upper.p, upper.len);
	if (n) {
		upper.p[n - 1]++;
		rocksdb_readoptions_set_iterate_upper_bound(ro, (const char *)upper.p, n);
	}
	if (plen == 0)
		rocksdb_readoptions_set_fill_cache(ro, 0);
	it = rocksdb_create_iterator(c->db, ro);

	for (rocksdb_iter_seek(it, (const char *)start.p, start.len); rocksdb_iter_valid(it);
	     rocksdb_iter_next(it)) {
		size_t klen, vlen;
		const char *k = rocksdb_iter_key(it, &klen);
		const char *v = rocksdb_iter_value(it, &vlen);

		rc = fn(arg, k, klen, v, vlen);
		if (rc)
			goto out_iter;
	}
	rocksdb_iter_get_error(it, &rerr);
	if (rerr) {
		log_err("catalog %s: scan failed: %s", c->path, rerr);
		rocksdb_free(rerr);
		rc = -EIO;
	}
out_iter:
	rocksdb_iter_destroy(it);
	rocksdb_readoptions_destroy(ro);
	key_free(&upper);
out_start:
	key_free(&start);
	return rc;
}

/* Counting and logging of records that do not decode, per scan. */
struct bad_count {
	const char *path;
	const char *what;
	uint64_t n;
};

static void bad_record(struct bad_count *bc, const void *key, size_t klen, const char *why)
{
	char hex[48];

	if (bc->n++ < CAT_BAD_LOG_MAX)
		log_warn("catalog %s: skipping bad %s record %s: %s", bc->path, bc->what,
			 key_hex(key, klen, hex, sizeof(hex)), why);
}

static void bad_done(struct bad_count *bc, uint64_t *bad)
{
	if (bc->n > CAT_BAD_LOG_MAX)
		log_warn("catalog %s: skipped %llu bad %s records in all", bc->path,
			 (unsigned long long)bc->n, bc->what);
	if (bad)
		*bad = bc->n;
}

struct inode_scan {
	cat_inode_fn fn;
	void *arg;
	struct bad_count bad;
};

static int inode_visit(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct inode_scan *s = arg;
	struct cat_inode ino;
	const char *why;

	why = inode_decode(key, klen, val, vlen, &ino);
	if (why) {
		bad_record(&s->bad, key, klen, why);
		return 0;
	}
	return s->fn(s->arg, &ino);
}

int cat_scan_inodes(cat *c, cat_inode_fn fn, void *arg, uint64_t *bad)
{
	struct inode_scan s = {fn, arg, {c->path, "inode", 0}};
	int rc;

	rc = scan_range(c, CAT_NS_INODE, NULL, 0, inode_visit, &s);
	bad_done(&s.bad, bad);
	return rc;
}

struct dentry_scan {
	cat_dentry_fn fn;
	void *arg;
	struct bad_count bad;
};

static int dentry_visit(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct dentry_scan *s = arg;
	char name[NAME_MAX + 1];
	const uint8_t *raw;
	uint64_t parent, ino;
	size_t namelen;
	const char *why;

	why = dentry_decode(key, klen, val, vlen, &parent, &raw, &namelen, &ino);
	if (why) {
		bad_record(&s->bad, key, klen, why);
		return 0;
	}
	/* Hand out a NUL-terminated copy: the key bytes are not terminated. */
	memcpy(name, raw, namelen);
	name[namelen] = '\0';
	return s->fn(s->arg, parent, name, namelen, ino);
}

int cat_scan_dentries(cat *c, uint64_t parent, cat_dentry_fn fn, void *arg, uint64_t *bad)
{
	struct dentry_scan s = {fn, arg, {c->path, "dentry", 0}};
	uint8_t prefix[8];
	int rc;

	cat_be64(prefix, parent);
	rc = scan_range(c, CAT_NS_DENTRY, prefix, parent ? sizeof(prefix) : 0, dentry_visit, &s);
	bad_done(&s.bad, bad);
	return rc;
}

struct raw_scan {
	cat_raw_fn fn;
	void *arg;
};

static int raw_visit(void *arg, const void *key, size_t klen, const void *val, size_t vlen)
{
	struct raw_scan *s = arg;

	/* Strip the namespace byte: tiers see their own keys only. */
	return s->fn(s->arg, (const uint8_t *)key + 1, klen - 1, val, vlen);
}

int cat_scan(cat *c, enum cat_ns ns, const void *prefix, size_t plen, cat_raw_fn fn, void *arg)
{
	struct raw_scan s = {fn, arg};

	return scan_range(c, ns, prefix, plen, raw_visit, &s);
}
