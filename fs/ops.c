/*
 * fs/ops.c — the FUSE low-level operations: DESIGN §2 made real.
 *
 * Owns the open handles (struct handle in fi->fh) and the translation of
 * every kvfs error into an errno at the FUSE edge (fuse_reply_err(req, -rc)).
 *
 * The rules of the namespace, and where each is enforced:
 *  1. Write once, then sealed: open() refuses write access and O_TRUNC on a
 *     sealed file (EPERM), setattr refuses truncation (EPERM), and the tier
 *     refuses writes to a sealed object. A file is sealed when its last
 *     writable handle is released. Readers cannot open an unsealed file
 *     (EBUSY), so a reader never sees a partial file. An open that cannot
 *     write (O_CREAT|O_RDONLY) of a new name makes an empty file, sealed at
 *     once: it would otherwise never be sealed.
 *
 *     The kernel sends RELEASE asynchronously, after close() has returned,
 *     while FLUSH comes with every close() of every descriptor (a shell's
 *     `> file` opens, dup2()s and closes the original, then writes: sealing
 *     at the first flush would be wrong). So a flush only marks its handle
 *     "closed"; a write through it clears the mark. A file whose writable
 *     handles are all closed is about to be sealed: an open for reading or
 *     a rename of it waits (up to SEAL_WAIT_NS) for the release instead of
 *     failing, which closes the race between a writer's close() and a
 *     reader's open().
 *  2. Files may disappear: eviction removes the name (ns.c) and queues a
 *     kernel invalidation; a handle racing it fails its lease (ENOENT).
 *  3. Open means leased: every handle holds a tier lease until release.
 *  4. Native blocks are checked at seal; an invalid one cannot be opened,
 *     and renaming it fails with EBADMSG. Renaming a valid block to a name
 *     of 64 hex digits that is not its key also fails with EBADMSG.
 *  5. Unsupported: hard links, symlinks, device nodes, FIFOs and sockets
 *     (EPERM); RENAME_EXCHANGE (EINVAL); xattrs outside user.kvfs.* (ENOTSUP).
 *     The user.kvfs.* attributes are virtual: read by name, never listed.
 *
 * fsync and fsyncdir make sealed files durable (tier_persist: on NVMe, then
 * synced) or fail with EIO; see persist_file(). user.kvfs.evict and
 * .kvfs/where act on paths the kernel never checked, so the caller's
 * credentials (req_cred) are checked here, by unlink's and lookup's rules.
 *
 * Namespace changes commit their catalog batch before they change memory,
 * under fs->lock, so a failed commit (EIO) leaves both as they were.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/log.h"
#include "core/ring.h"
#include "core/util.h"
#include "fs/fs_i.h"
#include "kvfs/format.h"

#define MAX_READ_IOV 72
#define MISS_WINDOW_NS (50ull * 1000000ull)
#define SEAL_WAIT_NS (2ull * 1000000000ull)

struct handle {
	struct cds_list_head link; /* in fs->handles */
	struct kvfs_inode *in;
	bool writer;  /* counted in in->writers */
	uint8_t rmode; /* enum pt_mode of a reader */
	bool flushed; /* counted in in->flushed: closed, not written since */
	tier_obj *data; /* leased and referenced: the file's bytes, even if
			 * evicted or lost meanwhile (reads then fail) */
	/* control files */
	char *buf;
	size_t len;
	/* directories */
	struct dnode cursor;
};

static struct kvfs_fs *req_fs(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct handle *fh(struct fuse_file_info *fi)
{
	return (struct handle *)(uintptr_t)fi->fh;
}

/* The caller of @req, with its supplementary groups. */
static void req_cred(fuse_req_t req, struct kvfs_cred *c)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	int n;

	c->uid = ctx->uid;
	c->gid = ctx->gid;
	n = fuse_req_getgroups(req, (int)KVFS_ARRAY_SIZE(c->groups), c->groups);
	c->ngroups = n < 0 ? 0 : KVFS_MIN(n, (int)KVFS_ARRAY_SIZE(c->groups));
}

static void set_ts(struct timespec *ts, int64_t ns)
{
	ts->tv_sec = ns / 1000000000;
	ts->tv_nsec = ns % 1000000000;
	if (ts->tv_nsec < 0) {
		ts->tv_sec--;
		ts->tv_nsec += 1000000000;
	}
}

static bool is_ctl(const struct kvfs_inode *in)
{
	return in->kind == KIND_CTL_DIR || in->kind == KIND_CTL_FILE || in->kind == KIND_CTL_LINK;
}

static bool is_ctl_name(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name)
{
	return dir == fs->root && strcmp(name, KVFS_CTL_NAME) == 0;
}

static void fill_attr(struct kvfs_fs *fs, struct kvfs_inode *in, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&in->lock);
	st->st_ino = in->ino;
	st->st_mode = in->mode;
	st->st_uid = in->uid;
	st->st_gid = in->gid;
	set_ts(&st->st_atim, in->atime);
	set_ts(&st->st_mtim, __atomic_load_n(&in->mtime, __ATOMIC_RELAXED)); /* a write sets it */
	set_ts(&st->st_ctim, __atomic_load_n(&in->ctime, __ATOMIC_RELAXED)); /* so does ctime */
	st->st_blksize = 1 << 20;
	switch (in->kind) {
	case KIND_DIR:
	case KIND_CTL_DIR:
		st->st_nlink = 2 + in->nsubdirs;
		st->st_size = 4096;
		st->st_blocks = 8;
		break;
	case KIND_CTL_LINK:
		st->st_nlink = 1;
		st->st_size = in->name ? in->name->len : 0;
		break;
	case KIND_FILE:
		st->st_nlink = in->linked ? 1 : 0;
		/*
		 * Bytes gone (evicted, or lost to a bad NVMe copy under an open
		 * reader) keep their size: a smaller st_size would make the
		 * kernel end that reader's file early instead of failing it.
		 */
		st->st_size = (off_t)(in->data ? tier_size(in->data) : in->gone_size);
		if (in->data)
			st->st_blocks = (blkcnt_t)(tier_dram_bytes(in->data) / 512);
		break;
	default:
		st->st_nlink = 1;
		break;
	}
	pthread_mutex_unlock(&in->lock);
	(void)fs;
}

/* Reply with an entry for @in, whose reference for the kernel the caller took. */
static void reply_entry(fuse_req_t req, struct kvfs_fs *fs, struct kvfs_inode *in)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = inode_to_ino(fs, in);
	e.generation = in->generation;
	e.attr_timeout = fs->cfg.attr_timeout;
	e.entry_timeout = fs->cfg.entry_timeout;
	fill_attr(fs, in, &e.attr);
	if (fuse_reply_entry(req, &e) != 0)
		ns_put(fs, in, 1); /* the kernel did not take it */
}

static int check_name(const char *name)
{
	size_t len = strlen(name);

	if (len > KVFS_NAME_MAX)
		return -ENAMETOOLONG;
	if (len == 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return -EINVAL;
	return 0;
}

/* A directory we may create in, or a negative errno. */
static int writable_dir(struct kvfs_inode *dir, const char *name)
{
	if (is_ctl(dir))
		return -EPERM;
	if (dir->kind != KIND_DIR)
		return -ENOTDIR;
	return check_name(name);
}

/* A directory's entries changed: new times, written with the next stats flush. */
static void touch_dir_locked(struct kvfs_fs *fs, struct kvfs_inode *dir)
{
	int64_t now = (int64_t)kvfs_now_ns();

	pthread_mutex_lock(&dir->lock);
	dir->mtime = dir->ctime = now;
	pthread_mutex_unlock(&dir->lock);
	ns_mark_dirty(fs, dir);
}

/* --- miss accounting ----------------------------------------------------------
 *
 * The kernel looks a name up before it creates it, so a create usually
 * follows a negative lookup by microseconds. Such a lookup is not a cache
 * miss, it is the first step of a write; a negative lookup that is not
 * followed by a create of the same name within MISS_WINDOW_NS is. A small
 * lossy table remembers recent negative lookups (hash and time) to tell
 * the two apart; the worst a collision does is miscount one lookup.
 */
static uint64_t miss_key(const struct kvfs_inode *dir, const char *name)
{
	uint64_t h = 1469598103934665603ull ^ dir->ino;

	for (const char *p = name; *p; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ull;
	return h;
}

static void miss_note(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name)
{
	uint64_t k = miss_key(dir, name);
	uint64_t t = kvfs_mono_ns() >> 20; /* ~1 ms units */

	atomic_store_explicit(&fs->recent_miss[k & 255], (k & ~0xffffffull) | (t & 0xffffff),
			      memory_order_relaxed);
}

/* Did a lookup of this name miss a moment ago (the kernel looks up again before a create)? */
static bool miss_recent(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name)
{
	uint64_t k = miss_key(dir, name);
	uint64_t v = atomic_load_explicit(&fs->recent_miss[k & 255], memory_order_relaxed);
	uint64_t now = kvfs_mono_ns() >> 20;

	return (v & ~0xffffffull) == (k & ~0xffffffull) &&
	       ((now - v) & 0xffffff) <= (MISS_WINDOW_NS >> 20);
}

static void miss_consume(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name)
{
	uint64_t k = miss_key(dir, name);
	_Atomic uint64_t *slot = &fs->recent_miss[k & 255];
	uint64_t v = atomic_load_explicit(slot, memory_order_relaxed);
	uint64_t now = kvfs_mono_ns() >> 20;

	if ((v & ~0xffffffull) != (k & ~0xffffffull))
		return;
	if (((now - v) & 0xffffff) > (MISS_WINDOW_NS >> 20))
		return;
	if (atomic_compare_exchange_strong(slot, &v, 0))
		atomic_fetch_add(&fs->ctr.misses_created, 1);
}

/* --- lookup and inode lifetime ----------------------------------------------- */

static void kvfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *dir = ino_to_inode(fs, parent), *in;
	struct fuse_entry_param e;

	atomic_fetch_add(&fs->ctr.lookups, 1);
	if (strlen(name) > KVFS_NAME_MAX) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	if (dir->kind == KIND_CTL_DIR) {
		if (dir == ctl_iovs_dir()) {
			in = fp_lookup(fs, name); /* referenced */
		} else {
			in = ctl_lookup(name);
			if (in)
				ns_get(in, 1);
		}
		if (!in) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		reply_entry(req, fs, in);
		return;
	}
	if (dir->kind != KIND_DIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	if (is_ctl_name(fs, dir, name)) {
		in = ctl_dir();
		ns_get(in, 1);
		reply_entry(req, fs, in);
		return;
	}
	in = ns_lookup(fs, dir, name, strlen(name));
	if (in) {
		reply_entry(req, fs, in);
		return;
	}
	/* Not here: a peer may have it (a slower hit), unless it just missed there too. */
	if (__atomic_load_n(&fs->rmt, __ATOMIC_RELAXED) && !miss_recent(fs, dir, name) &&
	    rmt_fetch(fs, dir, name, &in) == 0) {
		reply_entry(req, fs, in);
		return;
	}
	atomic_fetch_add(&fs->ctr.lookup_misses, 1);
	miss_note(fs, dir, name);
	/* A negative entry: the kernel caches the miss for negative_timeout. */
	memset(&e, 0, sizeof(e));
	e.entry_timeout = fs->cfg.negative_timeout;
	fuse_reply_entry(req, &e);
}

static void kvfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct kvfs_fs *fs = req_fs(req);

	ns_put(fs, ino_to_inode(fs, ino), nlookup);
	fuse_reply_none(req);
}

static void kvfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct kvfs_fs *fs = req_fs(req);

	for (size_t i = 0; i < count; i++)
		ns_put(fs, ino_to_inode(fs, forgets[i].ino), forgets[i].nlookup);
	fuse_reply_none(req);
}

static void kvfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct stat st;

	fill_attr(fs, ino_to_inode(fs, ino), &st);
	fuse_reply_attr(req, &st, fs->cfg.attr_timeout);
}

/* --- attributes --------------------------------------------------------------- */

static void kvfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			 struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *in = ino_to_inode(fs, ino);
	uint32_t mode, uid, gid;
	int64_t atime, mtime, new_mtime, ctime, now = (int64_t)kvfs_now_ns();
	tier_obj *data = NULL;
	struct stat st;
	int rc = 0;

	if (is_ctl(in)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (to_set & FUSE_SET_ATTR_SIZE) {
		pthread_mutex_lock(&in->lock);
		if (in->kind != KIND_FILE)
			rc = -EISDIR;
		else if (in->sealed || in->invalid)
			rc = -EPERM;
		else if (in->sealing)
			rc = -EBUSY;
		else if (!in->data)
			rc = -ENOENT;
		else
			data = in->data;
		if (data)
			tier_obj_get(data);
		pthread_mutex_unlock(&in->lock);
		/* Truncation may free pages; no fs lock may be held across it. */
		if (!rc)
			rc = tier_truncate(data, (uint64_t)attr->st_size);
		tier_obj_put(data);
		if (rc)
			goto out;
	}

	pthread_mutex_lock(&fs->lock);
	pthread_mutex_lock(&in->lock);
	mode = in->mode, uid = in->uid, gid = in->gid;
	atime = in->atime;
	ctime = __atomic_load_n(&in->ctime, __ATOMIC_RELAXED);
	mtime = __atomic_load_n(&in->mtime, __ATOMIC_RELAXED); /* a write sets it */
	if (to_set & FUSE_SET_ATTR_MODE)
		in->mode = (in->mode & S_IFMT) | (attr->st_mode & 07777);
	if (to_set & FUSE_SET_ATTR_UID)
		in->uid = attr->st_uid;
	if (to_set & FUSE_SET_ATTR_GID)
		in->gid = attr->st_gid;
	if (to_set & FUSE_SET_ATTR_ATIME_NOW)
		in->atime = now;
	else if (to_set & FUSE_SET_ATTR_ATIME)
		in->atime = (int64_t)attr->st_atim.tv_sec * 1000000000 + attr->st_atim.tv_nsec;
	new_mtime = mtime;
	if (to_set & FUSE_SET_ATTR_MTIME_NOW)
		new_mtime = now;
	else if (to_set & FUSE_SET_ATTR_MTIME)
		new_mtime = (int64_t)attr->st_mtim.tv_sec * 1000000000 + attr->st_mtim.tv_nsec;
	if (to_set & FUSE_SET_ATTR_SIZE)
		new_mtime = now;
	__atomic_store_n(&in->mtime, new_mtime, __ATOMIC_RELAXED); /* as a write sets it */
	__atomic_store_n(&in->ctime, now, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&in->lock);
	if (in->persisted) {
		cat_batch *b = cat_batch_new();

		ns_persist(fs, b, in);
		rc = ns_commit(fs, b);
		cat_batch_free(b);
		if (rc) {
			/* Undo so memory and catalog agree. */
			pthread_mutex_lock(&in->lock);
			in->mode = mode, in->uid = uid, in->gid = gid;
			in->atime = atime;
			__atomic_store_n(&in->ctime, ctime, __ATOMIC_RELAXED);
			__atomic_store_n(&in->mtime, mtime, __ATOMIC_RELAXED);
			pthread_mutex_unlock(&in->lock);
		}
	}
	pthread_mutex_unlock(&fs->lock);
out:
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fill_attr(fs, in, &st);
	fuse_reply_attr(req, &st, fs->cfg.attr_timeout);
}

/* --- creating ---------------------------------------------------------------- */

static struct handle *handle_new(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	struct handle *h = calloc(1, sizeof(*h));

	if (h) {
		h->in = in;
		CDS_INIT_LIST_HEAD(&h->cursor.link);
		h->cursor.is_cursor = true;
		pthread_mutex_lock(&fs->handles_lock);
		cds_list_add(&h->link, &fs->handles);
		pthread_mutex_unlock(&fs->handles_lock);
	}
	return h;
}

static void handle_free(struct kvfs_fs *fs, struct handle *h)
{
	pthread_mutex_lock(&fs->handles_lock);
	cds_list_del(&h->link);
	pthread_mutex_unlock(&fs->handles_lock);
	free(h->buf);
	free(h);
}

/* Every writer closed its descriptors: the release (and the seal) is on its way. */
static bool seal_pending(const struct kvfs_inode *in)
{
	return !atomic_load(&in->sealed) &&
	       (in->sealing || (in->writers && in->flushed == in->writers));
}

/* seal_pending() for callers without the inode lock. */
static bool seal_pending_unlocked(struct kvfs_inode *in)
{
	bool pending;

	pthread_mutex_lock(&in->lock);
	pending = in->kind == KIND_FILE && seal_pending(in);
	pthread_mutex_unlock(&in->lock);
	return pending;
}

/*
 * Wait for @in to be sealed, up to SEAL_WAIT_NS. Called with no lock held;
 * the caller holds a reference. @return true if it is sealed now.
 */
static bool wait_sealed(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	struct timespec ts;
	uint64_t deadline = kvfs_now_ns() + SEAL_WAIT_NS;

	ts.tv_sec = (time_t)(deadline / 1000000000);
	ts.tv_nsec = (long)(deadline % 1000000000);
	pthread_mutex_lock(&fs->seal_lock);
	while (!atomic_load(&in->sealed) &&
	       pthread_cond_timedwait(&fs->seal_cond, &fs->seal_lock, &ts) == 0)
		;
	pthread_mutex_unlock(&fs->seal_lock);
	return atomic_load(&in->sealed);
}

/*
 * Open a file inode for a handle (the caller holds a reference for the
 * handle). Sets fi->fh. @return 0 or a negative errno.
 */
static int open_file(struct kvfs_fs *fs, struct kvfs_inode *in, struct fuse_file_info *fi)
{
	int acc = fi->flags & O_ACCMODE;
	bool write = acc != O_RDONLY || (fi->flags & O_TRUNC);
	bool trunc = (fi->flags & O_TRUNC) && acc != O_RDONLY;
	struct handle *h = handle_new(fs, in);
	tier_obj *data = NULL;
	int rc = 0;

	if (!h)
		return -ENOMEM;
	pthread_mutex_lock(&in->lock);
	if (!write && seal_pending(in)) {
		pthread_mutex_unlock(&in->lock);
		wait_sealed(fs, in);
		pthread_mutex_lock(&in->lock);
	}
	if (!in->data)
		rc = -ENOENT; /* evicted or deleted since the lookup */
	else if (in->invalid)
		rc = -EBADMSG;
	else if (write && in->sealed)
		rc = -EPERM;
	else if (write && in->sealing)
		rc = -EBUSY;
	else if (!write && !in->sealed)
		rc = -EBUSY;
	if (!rc)
		rc = tier_lease(in->data); /* fails if evicted a moment ago */
	if (rc) {
		pthread_mutex_unlock(&in->lock);
		if (rc == -EBUSY)
			atomic_fetch_add(&fs->ctr.busy_opens, 1);
		handle_free(fs, h);
		return rc;
	}
	h->data = in->data;
	tier_obj_get(h->data);
	in->opens++;
	if (write) {
		in->writers++;
		h->writer = true;
		if (trunc) {
			data = in->data;
			tier_obj_get(data);
		}
	} else {
		in->hits++;
		in->atime = (int64_t)kvfs_now_ns();
		/* Sealed bytes never change under this node id: keep the page cache. */
		fi->keep_cache = !fs->cfg.no_keep_cache;
		/* A reader's close() needs no FLUSH round trip: nothing to flush. */
		fi->noflush = 1;
	}
	pthread_mutex_unlock(&in->lock);
	if (!write) {
		atomic_fetch_add(tier_where(h->data) & TIER_DRAM ? &fs->ctr.hits_dram
								 : &fs->ctr.hits_nvme,
				 1);
		tier_touch(h->data);
		ns_mark_dirty(fs, in);
		atomic_fetch_add(&fs->ctr.hits, 1);
	}
	if (data) {
		tier_truncate(data, 0);
		tier_obj_put(data);
		/* O_TRUNC of an existing file marks mtime and ctime (POSIX). */
		{
			int64_t now = (int64_t)kvfs_now_ns();

			__atomic_store_n(&in->mtime, now, __ATOMIC_RELAXED);
			__atomic_store_n(&in->ctime, now, __ATOMIC_RELAXED);
		}
	}
	atomic_fetch_add(&fs->ctr.opens, 1);
	atomic_fetch_add(&fs->ctr.open_handles, 1);
	fi->fh = (uintptr_t)h;
	return 0;
}

/* Make a new file inode with bytes in the tiers, linked under @dir (fs->lock held). */
int ops_new_file_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
			mode_t mode, uid_t uid, gid_t gid, struct kvfs_inode **out)
{
	return ops_adopt_file_locked(fs, dir, name, mode, uid, gid, 0, NULL, out);
}

int ops_adopt_file_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
			  mode_t mode, uid_t uid, gid_t gid, uint64_t ino, tier_obj *data,
			  struct kvfs_inode **out)
{
	struct kvfs_inode *in = ns_inode_new(fs, KIND_FILE, S_IFREG | (mode & 07777), uid, gid);
	int rc = 0;

	if (!in)
		return -ENOMEM;
	if (data) {
		in->ino = ino;
		in->data = data;
		tier_obj_set_owner(data, in);
	} else {
		in->ino = fs->next_ino++;
		rc = tier_obj_new(fs->tier, in, in->ino, &in->data);
	}
	if (!rc)
		rc = ns_link_locked(fs, dir, in, name, strlen(name));
	if (rc) {
		if (in->data && !data)
			tier_obj_put(in->data);
		if (data)
			tier_obj_set_owner(data, NULL);
		in->data = NULL;
		ns_get(in, 1);
		ns_put(fs, in, 1);
		return rc;
	}
	touch_dir_locked(fs, dir);
	atomic_fetch_add(&fs->ctr.creates, 1);
	*out = in;
	return 0;
}

/*
 * A file created by a call that will not write it (mknod, an open for
 * reading with O_CREAT): an empty file, sealed at once and recorded
 * (fs->lock held; nobody else can have it open yet).
 */
static void seal_empty_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	tier_seal(in->data);
	atomic_store(&in->sealed, true);
	atomic_fetch_add(&fs->ctr.sealed, 1);
	ns_record_file_locked(fs, in);
}

/*
 * The owner of a new inode in @dir: the caller's group, or the directory's
 * if it is setgid (and then a new directory is setgid too). A new file keeps
 * a setgid bit only if its creator is in its group (or root).
 */
static void new_owner(fuse_req_t req, struct kvfs_inode *dir, bool is_dir, mode_t *mode,
		      uid_t *uid, gid_t *gid)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	uint32_t dmode;

	pthread_mutex_lock(&dir->lock);
	dmode = dir->mode;
	*gid = (dmode & S_ISGID) ? dir->gid : ctx->gid;
	pthread_mutex_unlock(&dir->lock);
	*uid = ctx->uid;
	if ((dmode & S_ISGID) && is_dir)
		*mode |= S_ISGID;
	if (!is_dir && (*mode & S_ISGID) && ctx->uid != 0 && *gid != ctx->gid) {
		struct kvfs_cred c;
		bool member = false;

		req_cred(req, &c);
		for (int i = 0; i < c.ngroups; i++)
			member |= c.groups[i] == *gid;
		if (!member)
			*mode &= ~(mode_t)S_ISGID;
	}
}

static void kvfs_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
			struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *dir = ino_to_inode(fs, parent), *in;
	struct fuse_entry_param e;
	int rc = writable_dir(dir, name);

	if (rc)
		goto out_err;
	if (is_ctl_name(fs, dir, name)) {
		rc = (fi->flags & O_EXCL) ? -EEXIST : -EPERM;
		goto out_err;
	}
	pthread_mutex_lock(&fs->lock);
	in = ns_find_locked(fs, dir, name, strlen(name));
	if (in) {
		/* Raced with another creator: open what is there, as POSIX does. */
		if ((fi->flags & O_EXCL) || in->kind != KIND_FILE) {
			pthread_mutex_unlock(&fs->lock);
			rc = (fi->flags & O_EXCL) ? -EEXIST : -EISDIR;
			goto out_err;
		}
		ns_get(in, 2); /* the kernel's lookup and the handle */
	} else {
		uid_t uid;
		gid_t gid;

		new_owner(req, dir, false, &mode, &uid, &gid);
		rc = ops_new_file_locked(fs, dir, name, mode, uid, gid, &in);
		if (rc) {
			pthread_mutex_unlock(&fs->lock);
			goto out_err;
		}
		/*
		 * An open that cannot write (O_RDONLY without O_TRUNC: lock
		 * files, flock(1)) creates an empty file, sealed at once, so it
		 * opens for reading like any other.
		 */
		if ((fi->flags & O_ACCMODE) == O_RDONLY && !(fi->flags & O_TRUNC))
			seal_empty_locked(fs, in);
		ns_get(in, 2);
		miss_consume(fs, dir, name);
	}
	pthread_mutex_unlock(&fs->lock);

	rc = open_file(fs, in, fi);
	if (rc) {
		ns_put(fs, in, 2);
		goto out_err;
	}
	memset(&e, 0, sizeof(e));
	e.ino = inode_to_ino(fs, in);
	e.generation = in->generation;
	e.attr_timeout = fs->cfg.attr_timeout;
	e.entry_timeout = fs->cfg.entry_timeout;
	fill_attr(fs, in, &e.attr);
	if (fuse_reply_create(req, &e, fi) != 0) {
		/* The kernel never saw the handle: release it as if closed. */
		kvfs_ops.release(NULL, e.ino, fi);
		ns_put(fs, in, 1);
	}
	return;
out_err:
	fuse_reply_err(req, -rc);
}

static void kvfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode,
		       dev_t rdev)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *dir = ino_to_inode(fs, parent), *in;
	int rc = writable_dir(dir, name);

	if (!rc && !S_ISREG(mode))
		rc = -EPERM; /* device nodes, FIFOs and sockets have no place in a cache */
	if (!rc && is_ctl_name(fs, dir, name))
		rc = -EEXIST;
	if (rc)
		goto out_err;
	pthread_mutex_lock(&fs->lock);
	if (ns_find_locked(fs, dir, name, strlen(name))) {
		rc = -EEXIST;
	} else {
		uid_t uid;
		gid_t gid;

		new_owner(req, dir, false, &mode, &uid, &gid);
		rc = ops_new_file_locked(fs, dir, name, mode, uid, gid, &in);
	}
	if (!rc) {
		seal_empty_locked(fs, in);
		ns_get(in, 1);
		miss_consume(fs, dir, name);
	}
	pthread_mutex_unlock(&fs->lock);
	if (rc)
		goto out_err;
	reply_entry(req, fs, in);
	return;
out_err:
	fuse_reply_err(req, -rc);
}

int ops_new_dir_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
		       mode_t mode, uid_t uid, gid_t gid, struct kvfs_inode **out)
{
	struct kvfs_inode *in;
	cat_batch *b;
	int rc;

	if (ns_find_locked(fs, dir, name, strlen(name)))
		return -EEXIST;
	in = ns_inode_new(fs, KIND_DIR, S_IFDIR | (mode & 07777), uid, gid);
	if (!in)
		return -ENOMEM;
	in->ino = fs->next_ino++;
	rc = ns_link_locked(fs, dir, in, name, strlen(name));
	if (rc) {
		ns_get(in, 1);
		ns_put(fs, in, 1);
		return rc;
	}
	b = cat_batch_new();
	ns_persist(fs, b, in);
	rc = ns_commit(fs, b);
	cat_batch_free(b);
	if (rc) {
		in->persisted = false;
		ns_unlink_locked(fs, in); /* frees it */
		return rc;
	}
	touch_dir_locked(fs, dir);
	*out = in;
	return 0;
}

static void kvfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *dir = ino_to_inode(fs, parent), *in = NULL;
	int rc = writable_dir(dir, name);
	uid_t uid;
	gid_t gid;

	if (!rc && is_ctl_name(fs, dir, name))
		rc = -EEXIST;
	if (rc)
		goto out_err;
	new_owner(req, dir, true, &mode, &uid, &gid);
	pthread_mutex_lock(&fs->lock);
	rc = ops_new_dir_locked(fs, dir, name, mode, uid, gid, &in);
	if (!rc) {
		miss_consume(fs, dir, name);
		ns_get(in, 1);
	}
	pthread_mutex_unlock(&fs->lock);
	if (rc)
		goto out_err;
	reply_entry(req, fs, in);
	return;
out_err:
	fuse_reply_err(req, -rc);
}

/* Symlinks exist only as fast-path registrations under .kvfs/iovs. */
static void kvfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *in;
	int rc;

	if (ino_to_inode(fs, parent) != ctl_iovs_dir()) {
		fuse_reply_err(req, EPERM);
		return;
	}
	rc = fp_register(fs, fuse_req_ctx(req), name, link, &in);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	reply_entry(req, fs, in);
}

static void kvfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct kvfs_inode *in = ino_to_inode(req_fs(req), ino);

	if (in->kind != KIND_CTL_LINK || !in->name)
		fuse_reply_err(req, EINVAL);
	else
		fuse_reply_readlink(req, in->name->s);
}

static void kvfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	fuse_reply_err(req, EPERM); /* one name per file: hard links are not supported */
}

/* --- removing and renaming ------------------------------------------------------ */

/* Detach the bytes of @in if nothing has it open (fs->lock held). */
static tier_obj *take_data_if_closed(struct kvfs_inode *in)
{
	tier_obj *o = NULL;

	pthread_mutex_lock(&in->lock);
	if (in->kind == KIND_FILE && in->opens == 0)
		o = ns_take_data(in);
	pthread_mutex_unlock(&in->lock);
	return o;
}

/*
 * Unlink @in and take its bytes if nobody has it open (fs->lock held). In
 * that order, both under in->lock: a release that still finds it linked
 * gave up its open count before, so the take here sees no opener and has
 * the bytes; one that finds it unlinked frees them itself
 * (ns_release_data). @return the bytes to drop after unlocking, or NULL.
 */
static tier_obj *unlink_and_take_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	tier_obj *o;

	ns_get(in, 1); /* unlinking may drop the last reference */
	ns_unlink_locked(fs, in);
	o = take_data_if_closed(in);
	ns_put(fs, in, 1);
	return o;
}

static void drop_data(tier_obj *o)
{
	if (o) {
		tier_drop(o);
		tier_obj_put(o);
	}
}

static void remove_entry(fuse_req_t req, fuse_ino_t parent, const char *name, bool want_dir)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *dir = ino_to_inode(fs, parent), *in;
	tier_obj *data = NULL;
	cat_batch *b;
	int rc = 0;

	if (dir == ctl_iovs_dir() && !want_dir) {
		fuse_reply_err(req, -fp_unregister(fs, fuse_req_ctx(req), name));
		return;
	}
	if (is_ctl(dir) || is_ctl_name(fs, dir, name)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if (dir->kind != KIND_DIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	b = cat_batch_new();
	pthread_mutex_lock(&fs->lock);
	in = ns_find_locked(fs, dir, name, strlen(name));
	if (!in)
		rc = -ENOENT;
	else if (want_dir && in->kind != KIND_DIR)
		rc = -ENOTDIR;
	else if (!want_dir && in->kind == KIND_DIR)
		rc = -EISDIR;
	else if (want_dir && in->nchildren)
		rc = -ENOTEMPTY;
	if (rc)
		goto out_unlock;
	if (in->persisted) {
		ns_forget_record(fs, b, in);
		rc = ns_commit(fs, b);
		if (rc) {
			in->persisted = true;
			goto out_unlock;
		}
	}
	rmt_deleted_locked(fs, in);
	data = unlink_and_take_locked(fs, in);
	touch_dir_locked(fs, dir);
	atomic_fetch_add(&fs->ctr.unlinks, 1);
out_unlock:
	pthread_mutex_unlock(&fs->lock);
	cat_batch_free(b);
	drop_data(data);
	fuse_reply_err(req, -rc);
}

static void kvfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, false);
}

static void kvfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	remove_entry(req, parent, name, true);
}

static bool is_hex64(const char *name)
{
	if (strlen(name) != KVFS_KEY_HEX)
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
		      (*p >= 'A' && *p <= 'F')))
			return false;
	return true;
}

/* May @src be published as @newname? Checks rule 4. (src's lock held) */
static int check_native_name(struct kvfs_inode *src, const char *newname)
{
	kvfs_key k;

	if (src->kind != KIND_FILE)
		return 0;
	if (src->invalid)
		return -EBADMSG;
	if (src->native && is_hex64(newname) &&
	    (kvfs_key_from_hex(newname, &k) || memcmp(&k, &src->key, sizeof(k)) != 0))
		return -EBADMSG;
	return 0;
}

static void kvfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
			const char *newname, unsigned int flags)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *dir = ino_to_inode(fs, parent), *ndir = ino_to_inode(fs, newparent);
	struct kvfs_inode *src, *dst, *p;
	tier_obj *dst_data = NULL;
	cat_batch *b = NULL;
	bool dst_persisted = false;
	int rc;

	if (flags & ~RENAME_NOREPLACE) {
		fuse_reply_err(req, EINVAL); /* RENAME_EXCHANGE and RENAME_WHITEOUT */
		return;
	}
	if (is_ctl(dir) || is_ctl(ndir) || is_ctl_name(fs, dir, name) ||
	    is_ctl_name(fs, ndir, newname)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	rc = writable_dir(ndir, newname);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (dir->kind != KIND_DIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	/*
	 * Publishing a file its writer just closed: let the release seal (and
	 * validate) it first, so an invalid native block is refused here.
	 */
	src = ns_lookup(fs, dir, name, strlen(name));
	if (src) {
		if (seal_pending_unlocked(src))
			wait_sealed(fs, src);
		ns_put(fs, src, 1);
	}
	b = cat_batch_new();
	pthread_mutex_lock(&fs->lock);
	src = ns_find_locked(fs, dir, name, strlen(name));
	dst = ns_find_locked(fs, ndir, newname, strlen(newname));
	if (!src) {
		rc = -ENOENT;
		goto out_unlock;
	}
	if (src == dst)
		goto out_unlock;
	if (dst && (flags & RENAME_NOREPLACE)) {
		rc = -EEXIST;
		goto out_unlock;
	}
	if (src->kind == KIND_DIR) {
		for (p = ndir; p; p = p->parent)
			if (p == src) {
				rc = -EINVAL; /* into its own subtree */
				goto out_unlock;
			}
		if (dst && dst->kind != KIND_DIR)
			rc = -ENOTDIR;
		else if (dst && dst->nchildren)
			rc = -ENOTEMPTY;
	} else if (dst && dst->kind == KIND_DIR) {
		rc = -EISDIR;
	}
	if (rc)
		goto out_unlock;
	pthread_mutex_lock(&src->lock);
	rc = check_native_name(src, newname);
	if (!rc)
		__atomic_store_n(&src->ctime, (int64_t)kvfs_now_ns(), __ATOMIC_RELAXED);
	pthread_mutex_unlock(&src->lock);
	if (rc)
		goto out_unlock;

	/* Catalog first: the replaced entry, then the moved one. */
	if (dst) {
		dst_persisted = dst->persisted;
		ns_forget_record(fs, b, dst);
	}
	if (src->persisted) {
		struct cat_inode rec;

		pthread_mutex_lock(&src->lock);
		ns_to_record(src, &rec); /* with the new ctime */
		pthread_mutex_unlock(&src->lock);
		cat_put_inode(b, &rec);
		cat_del_dentry(b, dir->ino, src->name->s, src->name->len);
		cat_put_dentry(b, ndir->ino, newname, strlen(newname), src->ino);
	}
	rc = ns_commit(fs, b);
	if (rc) {
		if (dst)
			dst->persisted = dst_persisted;
		goto out_unlock;
	}
	if (dst)
		dst_data = unlink_and_take_locked(fs, dst);
	ns_get(src, 1);
	ns_unlink_locked(fs, src);
	rc = ns_link_locked(fs, ndir, src, newname, strlen(newname));
	ns_put(fs, src, 1);
	if (rc) {
		log_err("rename: out of memory relinking inode %llu", (unsigned long long)src->ino);
		goto out_unlock;
	}
	touch_dir_locked(fs, dir);
	if (ndir != dir)
		touch_dir_locked(fs, ndir);
	atomic_fetch_add(&fs->ctr.renames, 1);
out_unlock:
	pthread_mutex_unlock(&fs->lock);
	cat_batch_free(b);
	drop_data(dst_data);
	fuse_reply_err(req, -rc);
}

/* --- open, read, write, close -------------------------------------------------- */

static void kvfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *in = ino_to_inode(fs, ino);
	struct handle *h;
	int rc;

	if (in->kind == KIND_CTL_FILE) {
		int acc = fi->flags & O_ACCMODE;
		bool write = acc != O_RDONLY, read = acc != O_WRONLY;

		if ((write && !ctl_writable(in->ctl_id)) || (read && !ctl_readable(in->ctl_id))) {
			fuse_reply_err(req, EACCES);
			return;
		}
		h = handle_new(fs, in);
		if (!h) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		if (!write) {
			rc = ctl_render(fs, in->ctl_id, &h->buf, &h->len);
			if (rc) {
				handle_free(fs, h);
				fuse_reply_err(req, -rc);
				return;
			}
		}
		fi->direct_io = 1; /* generated on open; st_size means nothing */
		fi->fh = (uintptr_t)h;
		fuse_reply_open(req, fi);
		return;
	}
	if (in->kind != KIND_FILE) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	ns_get(in, 1);
	rc = open_file(fs, in, fi);
	if (rc) {
		ns_put(fs, in, 1);
		fuse_reply_err(req, -rc);
		return;
	}
	if (!fh(fi)->writer) {
		int id;

		fh(fi)->rmode = (uint8_t)pt_open(fs, in, fh(fi)->data, &id);
		/* the kernel takes no other flag than NOFLUSH with passthrough */
		if (fh(fi)->rmode == PT_PASS)
			fi->keep_cache = 0;
		pt_reply_open_next(id);
	}
	rc = fuse_reply_open(req, fi);
	pt_reply_open_next(0);
	if (rc != 0)
		kvfs_ops.release(NULL, ino, fi);
}

static void kvfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct handle *h = fh(fi);
	struct kvfs_inode *in = h->in;
	struct iovec iov[MAX_READ_IOV];
	tier_obj *data;
	ssize_t n;
	char *buf;

	if (in->kind == KIND_CTL_FILE) {
		/*
		 * Reply from a copy: once the reader has its bytes it may close
		 * the file, and release (on another thread) frees h->buf while
		 * this thread may still be inside the reply.
		 */
		size_t len;

		pthread_mutex_lock(&in->lock); /* a write may replace h->buf */
		len = (size_t)off >= h->len ? 0 : KVFS_MIN(size, h->len - (size_t)off);
		buf = len ? malloc(len) : NULL;
		if (len && buf)
			memcpy(buf, h->buf + off, len);
		pthread_mutex_unlock(&in->lock);
		if (len && !buf) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		fuse_reply_buf(req, buf, len);
		free(buf);
		return;
	}
	data = h->data; /* this handle's lease keeps it */
	if (tier_is_dead(data)) {
		fuse_reply_err(req, EIO); /* evicted by an operator, or its only copy failed */
		return;
	}
	atomic_fetch_add(&fs->ctr.reads, 1);
	if (tier_is_sealed(data)) {
		int k = tier_read_iov(data, (uint64_t)off, size, iov, MAX_READ_IOV);

		if (k == -ENODATA)
			goto copy; /* not in DRAM: read from NVMe */
		if (k < 0) {
			fuse_reply_err(req, -k);
			return;
		}
		n = 0;
		for (int i = 0; i < k; i++)
			n += (ssize_t)iov[i].iov_len;
		/*
		 * Out of vectors before the end of the request (small pages, a
		 * large read): a short reply would tell the kernel the file ends
		 * there. Copy instead.
		 */
		if (k == MAX_READ_IOV &&
		    (uint64_t)n < KVFS_MIN((uint64_t)size, tier_size(data) - (uint64_t)off))
			goto copy;
		atomic_fetch_add(&fs->ctr.read_bytes, (uint64_t)n);
		if (k == 0)
			fuse_reply_buf(req, NULL, 0);
		else
			fuse_reply_iov(req, iov, k); /* splicing from the memfd measured 2x slower */
		return;
	}
	/*
	 * The writer reading its own unsealed file, or bytes on NVMe: a copy
	 * (page-aligned, so whole NVMe extents are read straight into it).
	 */
copy:
	if (posix_memalign((void **)&buf, 4096, size ? size : 1))
		buf = NULL;
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	n = tier_read(data, (uint64_t)off, buf, size);
	if (n < 0) {
		fuse_reply_err(req, (int)-n);
	} else {
		atomic_fetch_add(&fs->ctr.read_bytes, (uint64_t)n);
		fuse_reply_buf(req, buf, (size_t)n);
	}
	free(buf);
}

static void kvfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct handle *h = fh(fi);
	struct kvfs_inode *in = h->in;
	int rc;

	if (in->kind == KIND_CTL_FILE) {
		struct kvfs_cred cred;
		char *ans = NULL;
		size_t alen = 0;

		req_cred(req, &cred);
		rc = ctl_write(fs, &cred, in->ctl_id, buf, size, &ans, &alen);
		if (ans) { /* the answer replaces what the handle reads */
			pthread_mutex_lock(&in->lock);
			free(h->buf);
			h->buf = ans;
			h->len = alen;
			pthread_mutex_unlock(&in->lock);
		}
		if (rc)
			fuse_reply_err(req, -rc);
		else
			fuse_reply_write(req, size);
		return;
	}
	if (!h->writer) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (h->flushed) {
		/* A write through a descriptor dup()ed before a close: not done yet. */
		pthread_mutex_lock(&in->lock);
		if (h->flushed) {
			h->flushed = false;
			in->flushed--;
		}
		pthread_mutex_unlock(&in->lock);
	}
	/* No fs lock is held: the write may evict other files. */
	rc = tier_write(h->data, (uint64_t)off, buf, size);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	{
		int64_t now = (int64_t)kvfs_now_ns();

		/* A write changes the data: mtime and ctime (POSIX). */
		__atomic_store_n(&in->mtime, now, __ATOMIC_RELAXED);
		__atomic_store_n(&in->ctime, now, __ATOMIC_RELAXED);
	}
	atomic_fetch_add(&fs->ctr.writes, 1);
	atomic_fetch_add(&fs->ctr.write_bytes, size);
	fuse_reply_write(req, size);
}

/* Read callback for the block validator: bytes of a tier object. */
static ssize_t obj_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	return tier_read(ctx, off, buf, len);
}

/* A writable handle is released; if it was the last, seal the file (ops_seal). */
static int seal_file(struct kvfs_fs *fs, struct handle *h)
{
	struct kvfs_inode *in = h->in;
	tier_obj *data;
	int rc;

	pthread_mutex_lock(&in->lock);
	if (!h->writer) {
		pthread_mutex_unlock(&in->lock);
		return 0;
	}
	h->writer = false;
	in->writers--;
	if (h->flushed) {
		h->flushed = false;
		in->flushed--;
	}
	if (in->writers || in->sealed || !in->data) {
		pthread_mutex_unlock(&in->lock);
		return 0;
	}
	in->sealing = true;
	data = in->data;
	tier_obj_get(data); /* an unlinked file's last release may drop it meanwhile */
	pthread_mutex_unlock(&in->lock);
	rc = ops_seal(fs, in, data);
	tier_obj_put(data);
	return rc;
}

/*
 * Seal a file whose last writer is gone and which the caller marked
 * `sealing` (holding a reference on @data): validate a native block, seal
 * the bytes, record the file in the catalog, and wake anyone waiting.
 * @return 0, or -EBADMSG for an invalid native block (which stays,
 * unreadable, until it is deleted).
 */
int ops_seal(struct kvfs_fs *fs, struct kvfs_inode *in, tier_obj *data)
{
	uint8_t *hdr = NULL;
	struct kvfs_block_info bi;
	const char *why = NULL;
	char magic[KVFS_BLOCK_MAGIC_BYTES];
	bool native = false, sync;
	int valid = 0;

	/* No writer is left and new ones wait on `sealing`: the bytes are stable. */
	if (tier_read(data, 0, magic, sizeof(magic)) == (ssize_t)sizeof(magic) &&
	    kvfs_block_is_native(magic, sizeof(magic))) {
		native = true;
		hdr = malloc(KVFS_BLOCK_MAX_HEADER);
		valid = hdr ? kvfs_block_validate(obj_read, data, tier_size(data), hdr,
						  KVFS_BLOCK_MAX_HEADER, &bi, &why)
			    : -ENOMEM;
		if (valid == -ENOMEM)
			why = "out of memory";
		else if (valid)
			valid = -EBADMSG;
	}
	tier_seal(data);
	/*
	 * fsync()ed while it was being written: durable before anyone sees it
	 * sealed (a failure is counted and retried by the tier).
	 */
	pthread_mutex_lock(&in->lock);
	sync = in->sync_on_seal && !(native && valid);
	pthread_mutex_unlock(&in->lock);
	if (sync && tier_persist(data) == 0)
		tier_sync(fs->tier);
	/* Counted before the seal is visible: whoever waits for it sees the counts. */
	atomic_fetch_add(&fs->ctr.sealed, 1);

	pthread_mutex_lock(&fs->lock);
	/* Published under a 64-hex name before it was closed: it must be its key. */
	if (native && !valid && in->linked && is_hex64(in->name->s)) {
		kvfs_key named;

		if (kvfs_key_from_hex(in->name->s, &named) || memcmp(&named, &bi.key, sizeof(named))) {
			valid = -EBADMSG;
			why = "named by a key that is not its own";
		}
	}
	if (native)
		atomic_fetch_add(valid ? &fs->ctr.native_invalid : &fs->ctr.native_valid, 1);
	pthread_mutex_lock(&in->lock);
	in->sealing = false;
	in->invalid = native && valid;
	if (native && !valid) {
		in->native = true;
		in->key = bi.key;
		in->parent_key = bi.parent;
		in->ntokens = bi.num_tokens;
	}
	atomic_store(&in->sealed, true);
	pthread_mutex_unlock(&in->lock);
	if (in->linked && !in->invalid) {
		/* On failure still served from DRAM, counted, and retried. */
		ns_record_file_locked(fs, in);
		rmt_link_locked(fs, in); /* offered to the cluster */
		dg_sealed_locked(fs, in);  /* and pushed, if its directory says where */
	}
	if (in->invalid)
		log_warn("refused native block '%s' (inode %llu): %s",
			 in->name ? in->name->s : "?", (unsigned long long)in->ino,
			 why ? why : "invalid");
	pthread_mutex_unlock(&fs->lock);
	if (sync)
		cat_sync(fs->cat);

	pthread_mutex_lock(&fs->seal_lock);
	pthread_cond_broadcast(&fs->seal_cond);
	pthread_mutex_unlock(&fs->seal_lock);
	free(hdr);
	return native && valid ? -EBADMSG : 0;
}

static void kvfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct handle *h = fh(fi);
	struct kvfs_inode *in = h->in;

	if (in->kind == KIND_FILE && h->writer) {
		pthread_mutex_lock(&in->lock);
		if (!h->flushed) {
			h->flushed = true;
			in->flushed++;
		}
		pthread_mutex_unlock(&in->lock);
	}
	fuse_reply_err(req, 0);
}

static void kvfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = kvfs_fs_global;
	struct handle *h = fh(fi);
	struct kvfs_inode *in = h->in;
	bool unlinked;

	if (in->kind == KIND_FILE) {
		/*
		 * Give up the lease and the open count first: whoever wakes up
		 * when the file seals (an evict, a reader) must find it closed.
		 */
		pthread_mutex_lock(&in->lock);
		in->opens--;
		pthread_mutex_unlock(&in->lock);
		/* the kernel lets go of the backing file before the storage goes */
		pt_release(in, (enum pt_mode)h->rmode);
		if (h->data)
			tier_unlease(h->data);
		seal_file(fs, h);
		tier_obj_put(h->data);
		h->data = NULL;
		pthread_mutex_lock(&in->lock);
		unlinked = !in->linked;
		pthread_mutex_unlock(&in->lock);
		if (unlinked)
			ns_release_data(fs, in);
		atomic_fetch_sub(&fs->ctr.open_handles, 1);
		ns_put(fs, in, 1);
	}
	handle_free(fs, h);
	if (req)
		fuse_reply_err(req, 0);
}

/*
 * Make the file @in durable: its bytes on NVMe (tier_persist) and its
 * record in the catalog; without an NVMe tier only the record can be. A
 * file still being written is, with @mark, marked instead: its seal makes
 * it durable before it can be opened for reading or renamed (without
 * @mark, for a directory's fsync, it is skipped). The caller syncs the
 * devices and the catalog afterwards. @return 0 or -EIO.
 */
static int persist_file(struct kvfs_fs *fs, struct kvfs_inode *in, bool mark)
{
	tier_obj *data = NULL;
	int rc = 0;

	if (seal_pending_unlocked(in))
		wait_sealed(fs, in); /* closed a moment ago: its release is on the way */
	pthread_mutex_lock(&in->lock);
	if (!atomic_load(&in->sealed) && mark)
		in->sync_on_seal = true; /* read by ops_seal after the tier seals */
	if (in->invalid || (!atomic_load(&in->sealed) && !mark))
		rc = 0; /* refused (never recorded), or not sealed: nothing to keep */
	else if (!in->data)
		rc = -EIO; /* lost or evicted under an open handle */
	else
		tier_obj_get(data = in->data);
	pthread_mutex_unlock(&in->lock);
	if (data) {
		/*
		 * -EINVAL: not sealed in the tier yet, so the seal still reads
		 * sync_on_seal; -EOPNOTSUPP: no persistent tier.
		 */
		rc = tier_persist(data);
		if (rc == -EOPNOTSUPP || rc == -EINVAL)
			rc = 0;
		tier_obj_put(data);
	}
	if (rc)
		return -EIO;
	pthread_mutex_lock(&fs->lock);
	if (in->unrecorded && in->linked)
		rc = ns_record_file_locked(fs, in) ? -EIO : 0;
	pthread_mutex_unlock(&fs->lock);
	return rc;
}

/* After persist_file(): flush the devices and the catalog. @return 0 or -EIO. */
static int sync_all(struct kvfs_fs *fs)
{
	int rc = tier_sync(fs->tier);

	if (cat_sync(fs->cat))
		rc = -EIO;
	return rc ? -EIO : 0;
}

static void kvfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *in = ino_to_inode(fs, ino);
	int rc = in->kind == KIND_FILE ? persist_file(fs, in, true) : 0;

	if (!rc)
		rc = sync_all(fs);
	fuse_reply_err(req, -rc);
}

/* --- directories ----------------------------------------------------------------- */

static void kvfs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *in = ino_to_inode(fs, ino);
	struct handle *h = handle_new(fs, in);

	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ns_get(in, 1);
	fi->fh = (uintptr_t)h;
	if (fuse_reply_open(req, fi) != 0) {
		ns_put(fs, in, 1);
		handle_free(fs, h);
	}
}

/*
 * Emit one entry. @return false if it did not fit (nothing was emitted).
 * Readdirplus hands the kernel a lookup reference for real children.
 */
static bool emit(fuse_req_t req, struct kvfs_fs *fs, bool plus, char *buf, size_t size,
		 size_t *used, const char *name, struct kvfs_inode *in, uint64_t next_off, bool ref)
{
	struct fuse_entry_param e;
	size_t n;

	memset(&e, 0, sizeof(e));
	fill_attr(fs, in, &e.attr);
	if (plus) {
		e.ino = inode_to_ino(fs, in);
		e.generation = in->generation;
		e.attr_timeout = fs->cfg.attr_timeout;
		e.entry_timeout = fs->cfg.entry_timeout;
		n = fuse_add_direntry_plus(req, buf + *used, size - *used, name, &e, (off_t)next_off);
	} else {
		n = fuse_add_direntry(req, buf + *used, size - *used, name, &e.attr, (off_t)next_off);
	}
	if (n > size - *used)
		return false;
	*used += n;
	if (plus && ref)
		ns_get(in, 1);
	return true;
}

/*
 * Move the cursor so that the next entry after it is the first with a
 * cookie above @off. The kernel asks either where the last reply ended, or
 * a little earlier when the caller's buffer took only part of it, so the
 * walk is short; @scanned counts the steps.
 */
static void seek_cursor(struct kvfs_inode *dir, struct dnode *cursor, uint64_t off,
			uint64_t *scanned)
{
	struct cds_list_head *cur = &cursor->link;

	if (off == cursor->cookie)
		return;
	if (off < cursor->cookie) {
		/* back: stop after the last entry whose cookie is <= off */
		for (cur = cur->prev; cur != &dir->children; cur = cur->prev) {
			struct dnode *d = caa_container_of(cur, struct dnode, link);

			(*scanned)++;
			if (!d->is_cursor && d->cookie <= off)
				break;
		}
	} else {
		/* forward: stop after the last entry whose cookie is <= off */
		while (cur->next != &dir->children) {
			struct dnode *d = caa_container_of(cur->next, struct dnode, link);

			if (!d->is_cursor && d->cookie > off)
				break;
			(*scanned)++;
			cur = cur->next;
		}
	}
	if (cur == &cursor->link)
		cur = cur->prev;
	cds_list_del(&cursor->link);
	cds_list_add(&cursor->link, cur);
	cursor->cookie = off;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	struct kvfs_fs *fs = req_fs(req);
	struct handle *h = fh(fi);
	struct kvfs_inode *dir = h->in;
	uint64_t pos = (uint64_t)off, scanned = 0;
	struct cds_list_head *cur;
	size_t used = 0;
	char *buf;

	if (dir->kind != KIND_DIR && dir->kind != KIND_CTL_DIR) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (dir->kind == KIND_CTL_DIR) {
		/*
		 * Offsets 1, 2, then one per entry: the control files and iovs in
		 * .kvfs, the registrations in .kvfs/iovs.
		 */
		bool iovs = dir == ctl_iovs_dir();

		for (;; pos++) {
			struct kvfs_inode *in = NULL;
			char name[KVFS_NAME_MAX + 1];
			bool ok;

			if (pos == 0 || pos == 1) {
				in = pos == 0 ? dir : iovs ? ctl_dir() : fs->root;
				snprintf(name, sizeof(name), "%s", pos == 0 ? "." : "..");
			} else if (!iovs && pos - 2 < CTL_NR) {
				snprintf(name, sizeof(name), "%s", ctl_name((unsigned)pos - 2));
				in = ctl_lookup(name);
			} else if (!iovs && pos - 2 == CTL_NR) {
				snprintf(name, sizeof(name), "%s", KVFS_IOVS_DIR);
				in = ctl_iovs_dir();
			} else if (!iovs || fp_entry(fs, pos - 2, name, sizeof(name), &in)) {
				break;
			}
			ok = emit(req, fs, plus, buf, size, &used, name, in, pos + 1,
				  in->kind == KIND_CTL_LINK);
			if (in->kind == KIND_CTL_LINK)
				ns_put(fs, in, 1); /* fp_entry's; emit took the kernel's */
			if (!ok)
				break;
		}
		fuse_reply_buf(req, buf, used);
		free(buf);
		return;
	}

	pthread_mutex_lock(&fs->lock);
	if (cds_list_empty(&h->cursor.link)) {
		cds_list_add(&h->cursor.link, &dir->children);
		h->cursor.cookie = FIRST_COOKIE - 1;
	}
	for (; pos < FIRST_COOKIE - 1; pos++) {
		bool ok = true;

		if (pos == 0)
			ok = emit(req, fs, plus, buf, size, &used, ".", dir, 1, false);
		else if (pos == 1)
			ok = emit(req, fs, plus, buf, size, &used, "..",
				  dir->parent ? dir->parent : dir, 2, false);
		else if (dir == fs->root)
			ok = emit(req, fs, plus, buf, size, &used, KVFS_CTL_NAME, ctl_dir(), 3,
				  false);
		if (!ok)
			goto out;
	}
	seek_cursor(dir, &h->cursor, pos, &scanned);
	/* Walk on from the cursor, moving it past each entry that fits. */
	for (cur = h->cursor.link.next; cur != &dir->children;) {
		struct dnode *d = caa_container_of(cur, struct dnode, link);
		struct cds_list_head *next = cur->next;
		struct kvfs_inode *child;

		scanned++;
		if (d->is_cursor) {
			cur = next;
			continue;
		}
		child = caa_container_of(d, struct kvfs_inode, dn);
		if (!emit(req, fs, plus, buf, size, &used, child->name->s, child, d->cookie, true))
			break;
		cds_list_del(&h->cursor.link);
		cds_list_add(&h->cursor.link, cur);
		h->cursor.cookie = d->cookie;
		cur = next;
	}
out:
	pthread_mutex_unlock(&fs->lock);
	atomic_fetch_add(&fs->ctr.readdir_scanned, scanned);
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void kvfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			 struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

static void kvfs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			     struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
}

static void kvfs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct handle *h = fh(fi);

	pthread_mutex_lock(&fs->lock);
	cds_list_del_init(&h->cursor.link);
	pthread_mutex_unlock(&fs->lock);
	ns_put(fs, h->in, 1);
	handle_free(fs, h);
	fuse_reply_err(req, 0);
}

/* fsync of a directory: every sealed file in it is made durable (persist_file). */
static void kvfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *dir = ino_to_inode(fs, ino), **files = NULL;
	size_t n = 0, cap = 0;
	struct dnode *d;
	int rc = 0;

	if (dir->kind == KIND_DIR) {
		pthread_mutex_lock(&fs->lock);
		cds_list_for_each_entry(d, &dir->children, link)
		{
			struct kvfs_inode *child = caa_container_of(d, struct kvfs_inode, dn);

			if (d->is_cursor || child->kind != KIND_FILE)
				continue;
			if (n == cap) {
				size_t nc = cap ? cap * 2 : 64;
				struct kvfs_inode **p = realloc(files, nc * sizeof(*p));

				if (!p) {
					rc = -ENOMEM;
					break;
				}
				files = p;
				cap = nc;
			}
			ns_get(child, 1);
			files[n++] = child;
		}
		pthread_mutex_unlock(&fs->lock);
	}
	/* No lock held: storing may evict, and waiting for a seal blocks. */
	for (size_t i = 0; i < n; i++) {
		if (!rc && persist_file(fs, files[i], false))
			rc = -EIO;
		ns_put(fs, files[i], 1);
	}
	free(files);
	if (!rc)
		rc = sync_all(fs);
	fuse_reply_err(req, rc == -ENOMEM ? ENOMEM : rc ? EIO : 0);
}

static void kvfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct kvfs_fs *fs = req_fs(req);
	struct tier_stats ts;
	struct statvfs st;
	uint64_t inodes = atomic_load(&fs->ctr.files) + atomic_load(&fs->ctr.dirs) + 1;

	tier_get_stats(fs->tier, &ts);
	memset(&st, 0, sizeof(st));
	st.f_bsize = 4096;
	st.f_frsize = 4096;
	st.f_blocks = (ts.dram_capacity + ts.nvme_capacity) / 4096;
	st.f_bfree = st.f_bavail =
		(ts.dram_capacity - ts.dram_used + ts.nvme_capacity - ts.nvme_used) / 4096;
	st.f_files = 1ull << 32;
	st.f_ffree = st.f_favail = st.f_files > inodes ? st.f_files - inodes : 0;
	st.f_namemax = KVFS_NAME_MAX;
	fuse_reply_statfs(req, &st);
}

/* --- extended attributes ------------------------------------------------------------ */

static void tier_names(unsigned where, char *out, size_t len)
{
	static const struct {
		unsigned bit;
		const char *name;
	} names[] = {{TIER_GPU, "gpu"}, {TIER_DRAM, "dram"}, {TIER_NVME, "nvme"},
		     {TIER_REMOTE, "remote"}};
	size_t n = 0;

	out[0] = '\0';
	for (size_t i = 0; i < KVFS_ARRAY_SIZE(names); i++)
		if (where & names[i].bit)
			n += (size_t)snprintf(out + n, len - n, "%s%s", n ? "," : "",
					      names[i].name);
}

/* Value of one of our attributes for @in, or a negative errno. */
static int xattr_value(struct kvfs_inode *in, const char *name, char *val, size_t len)
{
	int rc = 0;

	if (in->kind != KIND_FILE)
		return -ENODATA;
	pthread_mutex_lock(&in->lock);
	if (strcmp(name, "user.kvfs.tier") == 0)
		tier_names(in->data ? tier_where(in->data) : 0, val, len);
	else if (strcmp(name, "user.kvfs.hits") == 0)
		snprintf(val, len, "%" PRIu64, in->hits);
	else if (strcmp(name, "user.kvfs.pin") == 0)
		snprintf(val, len, "%d", in->data && tier_is_pinned(in->data));
	else if (!in->native)
		rc = -ENODATA;
	else if (strcmp(name, "user.kvfs.key") == 0)
		kvfs_key_to_hex(&in->key, val);
	else if (strcmp(name, "user.kvfs.parent") == 0)
		kvfs_key_to_hex(&in->parent_key, val);
	else if (strcmp(name, "user.kvfs.tokens") == 0)
		snprintf(val, len, "%u", in->ntokens);
	else
		rc = -ENODATA;
	pthread_mutex_unlock(&in->lock);
	return rc;
}

static void kvfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *in = ino_to_inode(fs, ino);
	char val[KVFS_KEY_HEX + 8];
	int rc = in->kind == KIND_DIR && strcmp(name, "user.kvfs.push") == 0
			 ? KVFS_MIN(dg_push_get(fs, in, val, sizeof(val)), 0)
			 : xattr_value(in, name, val, sizeof(val));
	size_t len;

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	len = strlen(val);
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, val, len);
}

/*
 * Every user.kvfs.* attribute is virtual: read-only figures (tier, hits,
 * key, parent, tokens) or controls (pin, evict, verify). None is listed, so
 * `cp -a` and `rsync -X` copy none of them: onto another filesystem they
 * would be stale copies, and onto another kvfs mount writing them back
 * fails (EPERM). They stay readable by name (getfattr -n, kvfsctl).
 */
static void kvfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, 0);
	else
		fuse_reply_buf(req, NULL, 0);
}

static int parse_bool(const char *value, size_t size, bool *out)
{
	if (size >= 1 && size <= 2 && (value[0] == '1' || value[0] == '0') &&
	    (size == 1 || value[1] == '\n')) {
		*out = value[0] == '1';
		return 0;
	}
	return -EINVAL;
}

static int set_pin(struct kvfs_fs *fs, struct kvfs_inode *in, bool pin)
{
	int rc;

	if (in->kind != KIND_FILE)
		return -EISDIR;
	pthread_mutex_lock(&fs->lock);
	pthread_mutex_lock(&in->lock);
	rc = in->data ? tier_pin(in->data, pin) : -ENOENT;
	pthread_mutex_unlock(&in->lock);
	if (!rc && in->persisted) {
		cat_batch *b = cat_batch_new();

		ns_persist(fs, b, in);
		rc = ns_commit(fs, b);
		if (rc) {
			pthread_mutex_lock(&in->lock);
			if (in->data)
				tier_pin(in->data, !pin);
			pthread_mutex_unlock(&in->lock);
		}
		cat_batch_free(b);
	}
	pthread_mutex_unlock(&fs->lock);
	return rc;
}

/*
 * user.kvfs.verify: re-read the file's copies and check them (NVMe
 * checksums; a native block is validated again). A bad copy is dropped.
 * @return 0; -EBADMSG (a bad copy was dropped; the file lives on);
 * -EIO (the file was lost); -EISDIR; -ENOENT.
 */
static int verify_file(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	struct kvfs_block_info bi;
	char magic[KVFS_BLOCK_MAGIC_BYTES];
	const char *why;
	uint8_t *hdr;
	tier_obj *data;
	int rc;

	if (in->kind != KIND_FILE)
		return -EISDIR;
	pthread_mutex_lock(&in->lock);
	data = atomic_load(&in->sealed) && in->data && !in->invalid && tier_lease(in->data) == 0
		       ? in->data
		       : NULL;
	if (data)
		tier_obj_get(data);
	pthread_mutex_unlock(&in->lock);
	if (!data)
		return in->invalid ? -EBADMSG : -ENOENT;
	rc = tier_verify(data);
	if (!rc && in->native && tier_read(data, 0, magic, sizeof(magic)) == sizeof(magic) &&
	    kvfs_block_is_native(magic, sizeof(magic))) {
		hdr = malloc(KVFS_BLOCK_MAX_HEADER);
		rc = hdr ? kvfs_block_validate(obj_read, data, tier_size(data), hdr,
					       KVFS_BLOCK_MAX_HEADER, &bi, &why)
			 : -ENOMEM;
		free(hdr);
		if (rc && rc != -ENOMEM && rc != -EIO)
			rc = -EBADMSG;
	}
	atomic_fetch_add(&fs->ctr.verified, 1);
	if (rc)
		atomic_fetch_add(&fs->ctr.verify_failed, 1);
	tier_unlease(data);
	tier_obj_put(data);
	return rc;
}

static void kvfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			  size_t size, int flags)
{
	struct kvfs_fs *fs = req_fs(req);
	struct kvfs_inode *in = ino_to_inode(fs, ino);
	struct evict_result res;
	uint64_t ticket;
	bool on;
	int rc;

	if (strcmp(name, "user.kvfs.pin") == 0) {
		rc = parse_bool(value, size, &on);
		if (!rc)
			rc = set_pin(fs, in, on);
	} else if (strcmp(name, "user.kvfs.evict") == 0) {
		struct kvfs_cred cred;

		req_cred(req, &cred);
		rc = parse_bool(value, size, &on);
		if (!rc && !on)
			rc = -EINVAL;
		if (!rc && is_ctl(in))
			rc = -EPERM;
		if (!rc && in->kind == KIND_FILE) {
			/* Just closed? Let the release land first. */
			if (seal_pending_unlocked(in))
				wait_sealed(fs, in);
			ticket = ns_evict_tree(fs, in, &cred, &res);
			/* Say why it stayed. */
			if (!res.files)
				rc = res.denied ? -EACCES : res.pinned ? -EPERM : res.busy ? -EBUSY : 0;
			/*
			 * Gone for stat() too by the time we reply: the kernel
			 * holds this file's lock, not its directory's, so the
			 * worker can drop the cached name now.
			 */
			else
				ns_wait_inval(fs, ticket, 1000000000ull);
		} else if (!rc) {
			/*
			 * A tree: the kernel holds this directory's lock while we
			 * run, and dropping cached names of its entries needs it,
			 * so those invalidations land just after the reply. Only
			 * files the caller could unlink go (unlink's rule).
			 */
			ns_evict_tree(fs, in, &cred, &res);
			if (!res.files && res.denied)
				rc = -EACCES;
		}
	} else if (strcmp(name, "user.kvfs.push") == 0) {
		rc = is_ctl(in) ? -EPERM : dg_push_set(fs, in, value, size);
	} else if (strcmp(name, "user.kvfs.verify") == 0) {
		rc = parse_bool(value, size, &on);
		if (!rc && !on)
			rc = -EINVAL;
		if (!rc)
			rc = verify_file(fs, in);
	} else if (strncmp(name, "user.kvfs.", 10) == 0) {
		rc = -EPERM; /* read-only attributes */
	} else {
		rc = -ENOTSUP;
	}
	fuse_reply_err(req, -rc);
}

static void kvfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct kvfs_fs *fs = req_fs(req);
	int rc;

	if (strcmp(name, "user.kvfs.pin") == 0)
		rc = set_pin(fs, ino_to_inode(fs, ino), false);
	else if (strncmp(name, "user.kvfs.", 10) == 0)
		rc = -EPERM;
	else
		rc = -ENOTSUP;
	fuse_reply_err(req, -rc);
}

/* --- session ----------------------------------------------------------------------- */

static void kvfs_init(void *userdata, struct fuse_conn_info *conn)
{
	/* 1 MiB requests; libfuse derives max_pages from max_write. */
	conn->max_write = 1u << 20;
	conn->max_read = 0;
	conn->max_readahead = 1u << 20;
	conn->want |= FUSE_CAP_ASYNC_READ;
	if (conn->capable & FUSE_CAP_PARALLEL_DIROPS)
		conn->want |= FUSE_CAP_PARALLEL_DIROPS;
	/* Sealed files never change under a node id: never drop pages on a stat. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO;
	conn->time_gran = 1;
}

static void kvfs_destroy(void *userdata)
{
	struct kvfs_fs *fs = userdata;
	struct handle *h, *tmp;

	fp_shutdown(fs);
	ns_close(fs);
	/*
	 * An unmount by signal or `fusermount3 -u -z` with files still open
	 * never sends their RELEASE: free what is left.
	 */
	cds_list_for_each_entry_safe(h, tmp, &fs->handles, link)
		handle_free(fs, h);
}

const struct fuse_lowlevel_ops kvfs_ops = {
	.init = kvfs_init,
	.destroy = kvfs_destroy,
	.lookup = kvfs_lookup,
	.forget = kvfs_forget,
	.forget_multi = kvfs_forget_multi,
	.getattr = kvfs_getattr,
	.setattr = kvfs_setattr,
	.mknod = kvfs_mknod,
	.mkdir = kvfs_mkdir,
	.unlink = kvfs_unlink,
	.rmdir = kvfs_rmdir,
	.symlink = kvfs_symlink,
	.readlink = kvfs_readlink,
	.rename = kvfs_rename,
	.link = kvfs_link,
	.open = kvfs_open,
	.read = kvfs_read,
	.write = kvfs_write,
	.flush = kvfs_flush,
	.release = kvfs_release,
	.fsync = kvfs_fsync,
	.opendir = kvfs_opendir,
	.readdir = kvfs_readdir,
	.readdirplus = kvfs_readdirplus,
	.releasedir = kvfs_releasedir,
	.fsyncdir = kvfs_fsyncdir,
	.statfs = kvfs_statfs,
	.setxattr = kvfs_setxattr,
	.getxattr = kvfs_getxattr,
	.listxattr = kvfs_listxattr,
	.removexattr = kvfs_removexattr,
	.create = kvfs_create,
};
