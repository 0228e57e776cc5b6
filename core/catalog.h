/*
 * core/catalog.h — the catalog: persistent metadata of one mount, in RocksDB.
 *
 * The catalog records directories, sealed files, their attributes, and
 * records that tiers own (NVMe extents and the like). It is written through
 * batches that commit atomically; the daemon's in-memory tree is loaded
 * from it at start. Record formats are private to catalog.c except for
 * tier-owned records, which are opaque bytes under a tier's namespace byte.
 *
 * All functions return 0 or a negative errno unless stated otherwise.
 */
#ifndef KVFS_CORE_CATALOG_H
#define KVFS_CORE_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvfs/keys.h"

typedef struct cat cat;
typedef struct cat_batch cat_batch;

/* Namespace bytes: the first byte of every RocksDB key. */
enum cat_ns {
	CAT_NS_META = 'M',   /* catalog-wide values by name */
	CAT_NS_INODE = 'I',  /* inode records by ino */
	CAT_NS_DENTRY = 'D', /* directory entries by (parent ino, name) */
	CAT_NS_NVME = 'N',   /* owned by the NVMe tier */
	CAT_NS_REMOTE = 'R', /* owned by the remote tier */
};

#define CAT_ROOT_INO 1ull

enum cat_inode_flags {
	CAT_F_PINNED = 1u << 0, /* never evicted */
	CAT_F_NATIVE = 1u << 1, /* a validated native block: key, parent, ntokens valid */
};

/* The persistent record of an inode (a directory or a sealed file). */
struct cat_inode {
	uint64_t ino;
	uint32_t mode; /* file type and permission bits, as st_mode */
	uint32_t uid;
	uint32_t gid;
	uint32_t flags; /* enum cat_inode_flags */
	uint64_t size;
	int64_t atime_ns; /* last access (open of a sealed file) */
	int64_t mtime_ns;
	int64_t ctime_ns;
	uint64_t hits; /* opens that found the file */
	kvfs_key key;    /* native blocks only */
	kvfs_key parent; /* native blocks only */
	uint32_t ntokens;
};

/*
 * Open (creating if needed) the catalog in directory @dir, which is created
 * if missing. The directory is locked for the life of the handle: a second
 * open, from this or another process, fails with -EBUSY and @err names the
 * holder's pid. On failure a one-line reason is written to @err.
 * @return 0; -EBUSY; -EPROTO for a catalog of an unknown format version;
 * -EIO for a RocksDB error; -ENOMEM; or the errno of creating or locking @dir.
 */
int cat_open(const char *dir, cat **out, char *err, size_t errlen);

/* Flush and close. Safe on NULL. */
void cat_close(cat *c);

/* Make everything committed so far durable (sync the WAL). @return 0 or -EIO. */
int cat_sync(cat *c);

/* A write batch: nothing is visible until cat_commit(). Never fails. */
cat_batch *cat_batch_new(void);
void cat_batch_free(cat_batch *b);
/* Number of operations queued in @b. */
size_t cat_batch_count(const cat_batch *b);

void cat_put_inode(cat_batch *b, const struct cat_inode *ino);
void cat_del_inode(cat_batch *b, uint64_t ino);
void cat_put_dentry(cat_batch *b, uint64_t parent, const char *name, size_t namelen,
		    uint64_t ino);
void cat_del_dentry(cat_batch *b, uint64_t parent, const char *name, size_t namelen);
void cat_put_meta(cat_batch *b, const char *name, const void *val, size_t len);

/* Tier-owned records: @key (without the namespace byte) and @val are opaque. */
void cat_put(cat_batch *b, enum cat_ns ns, const void *key, size_t klen, const void *val,
	     size_t vlen);
void cat_del(cat_batch *b, enum cat_ns ns, const void *key, size_t klen);
/* Delete every record of @ns whose key starts with @prefix. */
void cat_del_prefix(cat_batch *b, enum cat_ns ns, const void *prefix, size_t plen);

/*
 * Apply @b atomically and clear it. With @sync the WAL is synced first
 * (durable against power loss; without it, durable against a process crash).
 * @return 0; -EIO (logged) if RocksDB refuses; the fault seam's errno.
 * On error nothing of @b is applied and @b is left as it was.
 */
int cat_commit(cat *c, cat_batch *b, bool sync);

/*
 * Read one record. @val is malloc'd, with a NUL after its last byte (not
 * counted in @vlen); the caller frees it.
 * @return 0; -ENOENT; -EIO (also: an inode record that does not decode); -ENOMEM.
 */
int cat_get(cat *c, enum cat_ns ns, const void *key, size_t klen, void **val, size_t *vlen);
int cat_get_inode(cat *c, uint64_t ino, struct cat_inode *out);
int cat_get_meta(cat *c, const char *name, void **val, size_t *len);

/*
 * Visit records in key order. A visitor returning non-zero stops the scan
 * and that value is returned. Records that do not decode are skipped,
 * counted in *bad if @bad is not NULL (set, not added to), and logged.
 * What a visitor is handed is valid only during the call; a dentry's @name
 * is NUL-terminated.
 * @return 0; the visitor's value; -EIO; -ENOMEM.
 */
typedef int (*cat_inode_fn)(void *arg, const struct cat_inode *ino);
typedef int (*cat_dentry_fn)(void *arg, uint64_t parent, const char *name, size_t namelen,
			     uint64_t ino);
typedef int (*cat_raw_fn)(void *arg, const void *key, size_t klen, const void *val, size_t vlen);

int cat_scan_inodes(cat *c, cat_inode_fn fn, void *arg, uint64_t *bad);
/* All entries, or those of one directory if @parent is not 0. */
int cat_scan_dentries(cat *c, uint64_t parent, cat_dentry_fn fn, void *arg, uint64_t *bad);
int cat_scan(cat *c, enum cat_ns ns, const void *prefix, size_t plen, cat_raw_fn fn, void *arg);

/* Big-endian helpers for composing keys that sort numerically. */
static inline void cat_be64(uint8_t out[8], uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		out[i] = (uint8_t)v;
}

static inline uint64_t cat_get_be64(const uint8_t in[8])
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | in[i];
	return v;
}

#endif
