/*
 * fs/remote.c — the daemon's side of the remote tier (rdma/remote.h).
 *
 * What the namespace tells the cluster, and what it asks of it:
 *
 *  - Publish. A sealed, named file is published in the cluster index under
 *    its path (relative to the mount root), with the fastest tier its bytes
 *    are in, republished when it is demoted or promoted (rmt_moved), and
 *    unpublished when it loses its name (unlink, rename, eviction).
 *    Directory renames republish every file below. Publishing only queues
 *    (the library's index thread writes to Redis): the hot path never waits.
 *  - Serve. A peer's LOOKUP resolves the path here, leases the file and
 *    hands out its DRAM pages for one-sided reads. A file only on NVMe is
 *    promoted into DRAM first (the lease keeps it there until the peer is
 *    done). One still being written, or that DRAM cannot take now, is
 *    refused with -EAGAIN: the peer tries another holder. Its XXH3 checksum
 *    is computed on first serve and kept in the inode (sealed bytes never
 *    change).
 *  - Fetch. A lookup that misses locally asks the cluster (rmt_fetch): a
 *    live peer's copy is read into a buffer, checked against its checksum,
 *    and becomes a local file (sealed, recorded, published), so to the
 *    engine it is a slower hit. A directory that exists only elsewhere is
 *    created locally.
 *  - Permissions. A file travels with its owner, group and mode, and those
 *    of its directories (remote_attrs, under the session MAC): the fetched
 *    file takes them (less setuid/setgid), and so do the directories this
 *    node made for the cluster, once, from the first file fetched below
 *    them (until then such a directory is 0755 with its parent's owner,
 *    and lists only what this node holds).
 *  - Spill. When DRAM or NVMe must evict a file no other local tier holds,
 *    it is first offloaded into a peer's lent memory (consistent hashing on the
 *    path); the peer publishes the copy, and a later lookup here fetches it
 *    back.
 *  - Delete. Unlinking a file also frees lent copies of it in the cluster,
 *    from a background thread.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/log.h"
#include "core/util.h"
#include "fs/fs_i.h"
#include "rdma/remote.h"

/* A path queued for remote_free(). */
struct free_req {
	struct free_req *next;
	char path[];
};

struct rmt {
	remote *r;
	struct kvfs_fs *fs;
	/* deletions: remote_free() runs on its own thread */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct free_req *head, *tail;
	bool stop;
	/* counters of the daemon's side */
	_Atomic uint64_t fetched, fetched_bytes, fetch_misses, fetch_errors, dirs_created,
		spilled, spill_failed, refused;
};

/* A lease handed to a peer (remote_file.cookie). */
struct served {
	tier_obj *o;
	struct iovec iov[];
};

bool rmt_configured(const struct kvfs_config *c)
{
	return c->cluster || c->listen;
}

/* --- paths ------------------------------------------------------------------------ */

/* @dir's path joined with @name into @buf. @return 0, -ENOENT, -ENAMETOOLONG. */
static int child_path(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name, char *buf,
		      size_t len)
{
	size_t nl = strlen(name);
	int n;

	pthread_mutex_lock(&fs->lock);
	n = ns_path_locked(fs, dir, buf, len);
	pthread_mutex_unlock(&fs->lock);
	if (n < 0)
		return n;
	if ((size_t)n + 1 + nl + 1 > len)
		return -ENAMETOOLONG;
	if (n)
		buf[n++] = '/';
	memcpy(buf + n, name, nl + 1);
	return 0;
}

/* The inode at @path ("a/b/c"), referenced, or NULL. */
static struct kvfs_inode *resolve(struct kvfs_fs *fs, const char *path)
{
	struct kvfs_inode *cur = fs->root, *next;
	const char *p = path;

	ns_get(cur, 1);
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);

		if (len == 0 || len > KVFS_NAME_MAX || cur->kind != KIND_DIR) {
			ns_put(fs, cur, 1);
			return NULL;
		}
		next = ns_lookup(fs, cur, p, len);
		ns_put(fs, cur, 1);
		if (!next)
			return NULL;
		cur = next;
		p += len + (slash != NULL);
	}
	return cur;
}

/* --- publishing (fs->lock held) ------------------------------------------------- */

static void publish_one_locked(struct kvfs_fs *fs, struct kvfs_inode *in, bool add)
{
	char path[PATH_MAX];
	tier_obj *o;
	unsigned where = 0;

	if (add) {
		pthread_mutex_lock(&in->lock);
		o = in->data;
		if (o && atomic_load(&in->sealed) && !in->invalid)
			where = tier_where(o);
		pthread_mutex_unlock(&in->lock);
		if (!where)
			return;
	} else if (!in->published) {
		return;
	}
	if (ns_path_locked(fs, in, path, sizeof(path)) <= 0)
		return;
	if (add) {
		remote_publish(fs->rmt->r, path,
			       where & TIER_DRAM ? REMOTE_TIER_DRAM : REMOTE_TIER_NVME);
		in->published = true;
	} else {
		remote_unpublish(fs->rmt->r, path);
		in->published = false;
	}
}

/* @in and, for a directory, every file below it. */
static void publish_tree_locked(struct kvfs_fs *fs, struct kvfs_inode *in, bool add)
{
	struct dnode *d;

	if (in->kind == KIND_FILE) {
		publish_one_locked(fs, in, add);
		return;
	}
	if (in->kind != KIND_DIR)
		return;
	cds_list_for_each_entry(d, &in->children, link)
		if (!d->is_cursor)
			publish_tree_locked(fs, caa_container_of(d, struct kvfs_inode, dn), add);
}

void rmt_link_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	if (fs->rmt && in->linked)
		publish_tree_locked(fs, in, true);
}

void rmt_unlink_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	if (fs->rmt && in->linked)
		publish_tree_locked(fs, in, false);
}

void rmt_deleted_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	struct rmt *rt = fs->rmt;
	struct free_req *q;
	char path[PATH_MAX];
	int n;

	if (!rt || in->kind != KIND_FILE || (n = ns_path_locked(fs, in, path, sizeof(path))) <= 0)
		return;
	q = malloc(sizeof(*q) + (size_t)n + 1);
	if (!q)
		return;
	memcpy(q->path, path, (size_t)n + 1);
	q->next = NULL;
	pthread_mutex_lock(&rt->lock);
	if (rt->tail)
		rt->tail->next = q;
	else
		rt->head = q;
	rt->tail = q;
	pthread_cond_signal(&rt->cond);
	pthread_mutex_unlock(&rt->lock);
}

static void *free_thread(void *arg)
{
	struct rmt *rt = arg;

	pthread_mutex_lock(&rt->lock);
	while (!rt->stop || rt->head) {
		struct free_req *q = rt->head;

		if (!q) {
			pthread_cond_wait(&rt->cond, &rt->lock);
			continue;
		}
		rt->head = q->next;
		if (!rt->head)
			rt->tail = NULL;
		pthread_mutex_unlock(&rt->lock);
		if (!rt->stop)
			remote_free(rt->r, q->path);
		free(q);
		pthread_mutex_lock(&rt->lock);
	}
	pthread_mutex_unlock(&rt->lock);
	return NULL;
}

/* --- serving peers (the library's server thread) ---------------------------------- */

static int serve_lookup(void *ctx, const char *path, struct remote_file *out)
{
	struct rmt *rt = ctx;
	struct kvfs_fs *fs = rt->fs;
	struct kvfs_inode *in = resolve(fs, path);
	struct served *sv;
	uint64_t size, xxh = 0;
	bool have_xxh = false;
	size_t max;
	tier_obj *o;
	int rc = 0, n;

	if (!in)
		return -ENOENT;
	if (in->kind != KIND_FILE) {
		ns_put(fs, in, 1);
		return -ENOENT;
	}
	pthread_mutex_lock(&in->lock);
	o = in->data;
	if (!o || in->invalid)
		rc = -ENOENT;
	else if (!atomic_load(&in->sealed))
		rc = -EAGAIN; /* still being written */
	else
		rc = tier_lease(o) ? -ENOENT : 0;
	if (!rc) {
		tier_obj_get(o);
		have_xxh = in->xxh_ok;
		xxh = in->xxh;
	}
	pthread_mutex_unlock(&in->lock);
	if (rc)
		goto out;
	size = tier_size(o);
	max = 1;
	sv = malloc(sizeof(*sv) + max * sizeof(struct iovec));
	n = sv ? tier_read_iov(o, 0, size, sv->iov, (int)max) : -ENOMEM;
	/* On NVMe only: a peer wants it, so it is hot; bring it into DRAM. */
	if (n == -ENODATA && !tier_promote(o))
		n = tier_read_iov(o, 0, size, sv->iov, (int)max);
	if (n < 0) {
		free(sv);
		tier_unlease(o);
		tier_obj_put(o);
		rc = n == -ENODATA ? -EAGAIN : n == -ENOMEM ? -EAGAIN : -ENOENT;
		if (rc == -EAGAIN)
			atomic_fetch_add(&rt->refused, 1);
		goto out;
	}
	if (!have_xxh) {
		xxh = remote_checksum(sv->iov, n);
		pthread_mutex_lock(&in->lock);
		in->xxh = xxh;
		in->xxh_ok = true;
		pthread_mutex_unlock(&in->lock);
	}
	sv->o = o;
	out->size = size;
	out->checksum = xxh;
	out->iov = sv->iov;
	out->niov = (uint32_t)n;
	out->own_mapping = true; /* a mapping of the file in the DRAM store */
	out->cookie = sv;
out:
	ns_put(fs, in, 1);
	return rc;
}

static void serve_release(void *ctx, struct remote_file *f)
{
	struct served *sv = f->cookie;

	(void)ctx;
	tier_unlease(sv->o);
	tier_obj_put(sv->o);
	free(sv);
}

static struct remote_attr attr_of(struct kvfs_inode *in)
{
	struct remote_attr a;

	pthread_mutex_lock(&in->lock);
	a.uid = in->uid;
	a.gid = in->gid;
	a.mode = in->mode & 07777;
	pthread_mutex_unlock(&in->lock);
	return a;
}

/* Owner and mode of @path and its directories, for a peer (remote_attrs). */
static int serve_attrs(void *ctx, const char *path, struct remote_attrs *out)
{
	struct rmt *rt = ctx;
	struct kvfs_fs *fs = rt->fs;
	struct kvfs_inode *in = resolve(fs, path);

	if (!in)
		return -ENOENT;
	memset(out, 0, sizeof(*out));
	out->file = attr_of(in);
	pthread_mutex_lock(&fs->lock);
	for (struct kvfs_inode *d = in->parent; d && d != fs->root && out->ndirs < REMOTE_ATTR_DIRS;
	     d = d->parent)
		out->dirs[out->ndirs++] = attr_of(d);
	pthread_mutex_unlock(&fs->lock);
	ns_put(fs, in, 1);
	return 0;
}

static const struct remote_ops serve_ops = {
	.lookup = serve_lookup,
	.release = serve_release,
	.attrs = serve_attrs,
};

/* --- fetching on a local miss -------------------------------------------------------- */

/*
 * Where fetched bytes land: straight in the DRAM file of a new, unowned
 * tier object (its mapping, registered with the fabric for the transfer:
 * no copy), or, if DRAM cannot describe it in the vectors given, a
 * thread's bounce buffer that is then copied in.
 */
struct bounce {
	void *p;
	size_t cap;
};

struct dest {
	struct kvfs_fs *fs;
	tier_obj *o; /* the new file's bytes, or NULL */
	uint64_t ino;
	struct bounce *b; /* used when o is NULL */
};

static pthread_key_t bounce_key;
static pthread_once_t bounce_once = PTHREAD_ONCE_INIT;

static void bounce_free(void *arg)
{
	struct bounce *b = arg;

	free(b->p);
	free(b);
}

static void bounce_init(void)
{
	(void)pthread_key_create(&bounce_key, bounce_free);
}

static struct bounce *thread_bounce(void)
{
	struct bounce *b;

	pthread_once(&bounce_once, bounce_init);
	b = pthread_getspecific(bounce_key);
	if (!b) {
		b = calloc(1, sizeof(*b));
		if (b && pthread_setspecific(bounce_key, b)) {
			free(b);
			b = NULL;
		}
	}
	return b;
}

static void dest_drop(struct dest *d)
{
	if (d->o) {
		tier_drop(d->o);
		tier_obj_put(d->o);
		d->o = NULL;
	}
}

static int sink_prepare(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max)
{
	struct dest *d = ctx;
	struct kvfs_fs *fs = d->fs;
	int n;

	(void)checksum;
	dest_drop(d); /* a retry with another holder starts over */
	pthread_mutex_lock(&fs->lock);
	d->ino = fs->next_ino++;
	pthread_mutex_unlock(&fs->lock);
	if (tier_obj_new(fs->tier, NULL, d->ino, &d->o))
		return -ENOMEM;
	n = tier_write_iov(d->o, size, iov, max);
	if (n >= 0)
		return n;
	dest_drop(d);
	if (n != -E2BIG)
		return n; /* no room here: a miss */
	/* Too fragmented for one transfer: through the bounce buffer. */
	d->b = d->b ? d->b : thread_bounce();
	if (!d->b)
		return -ENOMEM;
	if (size > d->b->cap) {
		void *p = NULL;

		if (posix_memalign(&p, 4096, (size_t)size))
			return -ENOMEM;
		free(d->b->p);
		d->b->p = p;
		d->b->cap = (size_t)size;
	}
	iov[0].iov_base = d->b->p;
	iov[0].iov_len = (size_t)size;
	return 1;
}

/* A directory only peers have: make it here. */
static int adopt_dir(struct rmt *rt, struct kvfs_inode *dir, const char *name,
		     struct kvfs_inode **out)
{
	struct kvfs_fs *fs = rt->fs;
	struct kvfs_inode *in;
	int rc;

	pthread_mutex_lock(&fs->lock);
	if (dir != fs->root && !dir->linked) {
		rc = -ENOENT;
	} else if ((in = ns_find_locked(fs, dir, name, strlen(name)))) {
		rc = 0; /* made meanwhile */
	} else {
		rc = ops_new_dir_locked(fs, dir, name, 0755, dir->uid, dir->gid, &in);
		if (!rc) {
			in->attrs_pending = true; /* the first file fetched below says */
			atomic_fetch_add(&rt->dirs_created, 1);
		}
	}
	if (!rc) {
		ns_get(in, 1);
		*out = in;
	}
	pthread_mutex_unlock(&fs->lock);
	return rc;
}

/*
 * The directories above a fetched file (@dir up) that this node made for
 * the cluster take the owner and mode their holder sent, once
 * (fs->lock held).
 */
static void adopt_dir_attrs_locked(struct kvfs_fs *fs, struct kvfs_inode *dir,
				   const struct remote_attrs *a)
{
	struct kvfs_inode *d = dir;

	for (uint32_t i = 0; i < a->ndirs && d && d != fs->root; i++, d = d->parent) {
		if (!d->attrs_pending)
			continue;
		pthread_mutex_lock(&d->lock);
		d->mode = (d->mode & S_IFMT) | (a->dirs[i].mode & 07777);
		d->uid = a->dirs[i].uid;
		d->gid = a->dirs[i].gid;
		d->ctime = (int64_t)kvfs_now_ns();
		pthread_mutex_unlock(&d->lock);
		d->attrs_pending = false;
		ns_queue_inval(fs, d, false); /* the kernel checks access with what it cached */
		if (d->persisted) {
			cat_batch *b = cat_batch_new();

			ns_persist(fs, b, d);
			if (ns_commit(fs, b))
				log_warn("remote: the catalog did not take a directory's owner and "
					 "mode");
			cat_batch_free(b);
		}
	}
}

/* Fetched bytes become a local file: linked sealing (readers wait), then sealed. */
static int adopt_file(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
		      struct dest *d, uint64_t size, uint64_t xxh, const struct remote_attrs *a,
		      struct kvfs_inode **out)
{
	struct kvfs_inode *in;
	tier_obj *data;
	int rc;

	/* Bytes in the bounce buffer: into a new object first. */
	if (!d->o) {
		pthread_mutex_lock(&fs->lock);
		d->ino = fs->next_ino++;
		pthread_mutex_unlock(&fs->lock);
		if (tier_obj_new(fs->tier, NULL, d->ino, &d->o))
			return -ENOMEM;
		rc = size ? tier_write(d->o, 0, d->b->p, (size_t)size) : 0;
		if (rc) {
			dest_drop(d);
			return rc;
		}
	}
	pthread_mutex_lock(&fs->lock);
	if (dir != fs->root && !dir->linked) {
		pthread_mutex_unlock(&fs->lock);
		dest_drop(d);
		return -ENOENT;
	}
	in = ns_find_locked(fs, dir, name, strlen(name));
	if (in) { /* created or fetched meanwhile: that one wins */
		ns_get(in, 1);
		pthread_mutex_unlock(&fs->lock);
		dest_drop(d);
		*out = in;
		return 0;
	}
	data = d->o;
	adopt_dir_attrs_locked(fs, dir, a);
	/* The holder's owner and mode; never setuid or setgid here. */
	rc = ops_adopt_file_locked(fs, dir, name, a->file.mode & 01777, a->file.uid, a->file.gid,
				   d->ino, data, &in);
	if (rc) {
		pthread_mutex_unlock(&fs->lock);
		dest_drop(d);
		return rc;
	}
	d->o = NULL; /* the inode's now */
	ns_get(in, 1); /* the caller's */
	pthread_mutex_lock(&in->lock);
	in->sealing = true; /* readers wait for the seal; no writer may open it */
	in->xxh = xxh;
	in->xxh_ok = true;
	tier_obj_get(data);
	pthread_mutex_unlock(&in->lock);
	pthread_mutex_unlock(&fs->lock);
	ops_seal(fs, in, data); /* validates a native block, records, publishes */
	tier_obj_put(data);
	*out = in;
	return 0;
}

static int fetch(struct rmt *rt, struct kvfs_inode *dir, const char *name,
		 struct kvfs_inode **out)
{
	struct kvfs_fs *fs = rt->fs;
	struct remote_fetch_info info;
	struct dest d = {.fs = fs};
	struct remote_sink sink = {sink_prepare, &d};
	char path[PATH_MAX];
	int rc;

	rc = child_path(fs, dir, name, path, sizeof(path));
	if (rc)
		return -ENOENT;
	/* A copy a peer offloaded here is ours for the taking, without the network. */
	rc = remote_take_lent(rt->r, path, &sink, &info);
	if (rc != 0)
		rc = remote_fetch(rt->r, path, &sink, &info);
	if (rc == 0) {
		rc = adopt_file(fs, dir, name, &d, info.size, info.checksum, &info.attrs, out);
		if (!rc) {
			atomic_fetch_add(&rt->fetched, 1);
			atomic_fetch_add(&rt->fetched_bytes, info.size);
			log_debug("remote: fetched %s (%llu bytes) from %s", path,
				  (unsigned long long)info.size, info.node);
		}
		return rc;
	}
	dest_drop(&d);
	if (rc == -ENOENT) {
		if (remote_dir_exists(rt->r, path) == 1)
			return adopt_dir(rt, dir, name, out);
		atomic_fetch_add(&rt->fetch_misses, 1);
		return -ENOENT;
	}
	/* Holders failed, the index is down, bytes were bad, no room: a miss. */
	atomic_fetch_add(&rt->fetch_errors, 1);
	log_debug("remote: fetching %s failed: %s", path, strerror(-rc));
	return -ENOENT;
}

int rmt_fetch(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
	      struct kvfs_inode **out)
{
	int rc = -ENOENT;

	pthread_rwlock_rdlock(&fs->rmt_lock);
	if (fs->rmt)
		rc = fetch(fs->rmt, dir, name, out);
	pthread_rwlock_unlock(&fs->rmt_lock);
	return rc;
}

/* --- spilling evicted files to peers -------------------------------------------------- */

/* Offload @o's bytes to a peer's lent memory under its path.
 * @return 0 or the error of remote_offload (-ENOENT: no name, -ENOMEM). */
static int spill(struct rmt *rt, tier_obj *o, bool evicting)
{
	struct kvfs_fs *fs = rt->fs;
	struct kvfs_inode *in;
	struct iovec *iov;
	char path[PATH_MAX];
	uint64_t size = tier_size(o), xxh = 0;
	bool have_xxh = false;
	void *buf = NULL;
	size_t max;
	int n, rc = -EIO;

	if (size == 0)
		return -ENOENT;
	pthread_mutex_lock(&fs->lock);
	in = tier_obj_owner(o);
	n = in && in->linked && in->kind == KIND_FILE ? ns_path_locked(fs, in, path, sizeof(path))
						      : -ENOENT;
	if (n > 0) {
		pthread_mutex_lock(&in->lock);
		have_xxh = in->xxh_ok;
		xxh = in->xxh;
		pthread_mutex_unlock(&in->lock);
	}
	pthread_mutex_unlock(&fs->lock);
	if (n <= 0)
		return -ENOENT;
	max = 1;
	iov = malloc(max * sizeof(*iov));
	n = iov ? tier_read_iov(o, 0, size, iov, (int)max) : -ENOMEM;
	if (n == -ENODATA) {
		/* An NVMe victim: its bytes into a buffer (checked as they are read). */
		if (posix_memalign(&buf, 4096, size))
			buf = NULL;
		if (buf && tier_read(o, 0, buf, size) == (ssize_t)size) {
			iov[0].iov_base = buf;
			iov[0].iov_len = size;
			n = 1;
		}
	}
	if (n > 0) {
		if (!have_xxh)
			xxh = remote_checksum(iov, n);
		rc = remote_offload(rt->r, path, iov, n, xxh);
		if (!evicting) {
			/* a drain's hand-over: counted there */
		} else if (rc == 0) {
			atomic_fetch_add(&rt->spilled, 1);
		} else {
			atomic_fetch_add(&rt->spill_failed, 1);
			if (rc != -ENOSPC)
				log_debug("remote: offloading %s failed: %s", path, strerror(-rc));
		}
	}
	free(buf);
	free(iov);
	return n < 0 ? n : rc;
}

void rmt_spill(void *ctx, tier_obj *o)
{
	struct kvfs_fs *fs = ctx;

	pthread_rwlock_rdlock(&fs->rmt_lock);
	if (fs->rmt)
		(void)spill(fs->rmt, o, true);
	pthread_rwlock_unlock(&fs->rmt_lock);
}

void rmt_moved(void *ctx, tier_obj *o)
{
	struct kvfs_fs *fs = ctx;
	struct kvfs_inode *in;

	pthread_rwlock_rdlock(&fs->rmt_lock);
	if (fs->rmt) {
		pthread_mutex_lock(&fs->lock);
		in = tier_obj_owner(o);
		if (in && in->kind == KIND_FILE)
			rmt_link_locked(fs, in); /* republished with its tier now */
		pthread_mutex_unlock(&fs->lock);
	}
	pthread_rwlock_unlock(&fs->rmt_lock);
}

/* --- leaving the cluster gracefully (drain) ------------------------------------------------ */

enum drain_state { DRAIN_NONE, DRAIN_LENT, DRAIN_FILES, DRAIN_LEAVING, DRAIN_DONE };

static const char *const drain_names[] = {
	[DRAIN_NONE] = "none",
	[DRAIN_LENT] = "handing over lent copies",
	[DRAIN_FILES] = "handing over files held only here",
	[DRAIN_LEAVING] = "leaving",
	[DRAIN_DONE] = "drained",
};

/* One per daemon, from the first drain on (fs->drain; freed by rmt_drain_join). */
struct rmt_drain {
	struct kvfs_fs *fs;
	pthread_t thread;
	_Atomic int state;
	_Atomic uint64_t lent_total, lent_moved, lent_failed, files_only_here, files_moved,
		files_failed, files_no_room, bytes_moved, budget;
	uint64_t started_ns;
	_Atomic uint64_t done_ns;
};

/* A file of ours that may go to a peer: its path and how hot it is. */
struct drain_cand {
	char *path;
	uint64_t hits, size;
	int64_t atime;
};

struct drain_list {
	struct drain_cand *v;
	size_t n, cap;
};

/* Every sealed, named file below @in (fs->lock held). */
static void collect_locked(struct kvfs_fs *fs, struct kvfs_inode *in, struct drain_list *l)
{
	struct dnode *d;

	if (in->kind == KIND_DIR) {
		cds_list_for_each_entry(d, &in->children, link) if (!d->is_cursor)
			collect_locked(fs, caa_container_of(d, struct kvfs_inode, dn), l);
		return;
	}
	if (in->kind != KIND_FILE || !in->linked)
		return;
	{
		struct drain_cand c = {0};
		char path[PATH_MAX];
		bool ok;

		pthread_mutex_lock(&in->lock);
		ok = in->data && atomic_load(&in->sealed) && !in->invalid;
		if (ok) {
			c.hits = in->hits;
			c.atime = in->atime;
			c.size = tier_size(in->data);
		}
		pthread_mutex_unlock(&in->lock);
		if (!ok || !c.size || ns_path_locked(fs, in, path, sizeof(path)) <= 0)
			return;
		if (l->n == l->cap) {
			size_t cap = l->cap ? 2 * l->cap : 256;
			struct drain_cand *v = realloc(l->v, cap * sizeof(*v));

			if (!v)
				return;
			l->v = v;
			l->cap = cap;
		}
		c.path = strdup(path);
		if (c.path)
			l->v[l->n++] = c;
	}
}

/* Hottest first: more hits, then more recently used. */
static int cand_cmp(const void *a, const void *b)
{
	const struct drain_cand *x = a, *y = b;

	if (x->hits != y->hits)
		return x->hits < y->hits ? 1 : -1;
	return x->atime < y->atime ? 1 : x->atime > y->atime ? -1 : 0;
}

/* Offload the file at @path, if it is still ours and sealed. */
static int hand_over_file(struct rmt *rt, const char *path)
{
	struct kvfs_inode *in = resolve(rt->fs, path);
	tier_obj *o = NULL;
	int rc = -ENOENT;

	if (!in)
		return -ENOENT;
	pthread_mutex_lock(&in->lock);
	if (in->kind == KIND_FILE && in->data && atomic_load(&in->sealed) && !in->invalid &&
	    tier_lease(in->data) == 0) {
		o = in->data;
		tier_obj_get(o);
	}
	pthread_mutex_unlock(&in->lock);
	if (o) {
		rc = spill(rt, o, false);
		tier_unlease(o);
		tier_obj_put(o);
	}
	ns_put(rt->fs, in, 1);
	return rc;
}

/*
 * What the live peers' lent memory holds, in bytes: the budget of a drain's
 * own files. Not only their free room: lent memory is a cache, and our
 * hottest files, about to be lost, are worth more than the least recently
 * used copies there, which an offload to a full lender displaces.
 */
static uint64_t peers_room(struct rmt *rt)
{
	struct remote_peer p[64];
	int n = remote_peers(rt->r, p, (int)KVFS_ARRAY_SIZE(p));
	uint64_t room = 0;

	for (int i = 0; i < n && i < (int)KVFS_ARRAY_SIZE(p); i++)
		if (p[i].alive && !p[i].self)
			room += p[i].lend_total;
	return room;
}

#define DRAIN_BATCH 256

/* Our files that no other live node holds, hottest first, up to the peers'
 * lent memory. */
static void drain_files(struct rmt *rt, struct rmt_drain *d)
{
	struct kvfs_fs *fs = rt->fs;
	struct drain_list l = {0};
	uint64_t room = peers_room(rt), used = 0;

	atomic_store(&d->budget, room);
	pthread_mutex_lock(&fs->lock);
	collect_locked(fs, fs->root, &l);
	pthread_mutex_unlock(&fs->lock);
	qsort(l.v, l.n, sizeof(*l.v), cand_cmp);
	for (size_t at = 0; at < l.n; at += DRAIN_BATCH) {
		size_t k = KVFS_MIN((size_t)DRAIN_BATCH, l.n - at);
		const char *paths[DRAIN_BATCH];
		struct remote_loc loc[DRAIN_BATCH];

		for (size_t i = 0; i < k; i++)
			paths[i] = l.v[at + i].path;
		if (remote_locate(rt->r, paths, k, loc)) {
			/* The index is unreachable: whoever holds what is unknown;
			 * hand over the batch (a copy too many is only a cache). */
			memset(loc, 0, sizeof(loc));
		}
		for (size_t i = 0; i < k; i++) {
			const struct drain_cand *c = &l.v[at + i];
			int rc;

			if (loc[i].holders)
				continue; /* another live node has it */
			atomic_fetch_add(&d->files_only_here, 1);
			if (used + c->size > room) {
				atomic_fetch_add(&d->files_no_room, 1);
				continue;
			}
			rc = hand_over_file(rt, c->path);
			if (rc == 0) {
				used += c->size;
				atomic_fetch_add(&d->files_moved, 1);
				atomic_fetch_add(&d->bytes_moved, c->size);
			} else if (rc == -ENOSPC) {
				atomic_fetch_add(&d->files_no_room, 1);
			} else if (rc != -ENOENT) {
				atomic_fetch_add(&d->files_failed, 1);
			}
		}
	}
	for (size_t i = 0; i < l.n; i++)
		free(l.v[i].path);
	free(l.v);
}

static void drain_run(struct kvfs_fs *fs, struct rmt_drain *d)
{
	struct rmt *rt;
	char **paths = NULL;
	int n;

	pthread_rwlock_rdlock(&fs->rmt_lock);
	rt = fs->rmt;
	if (!rt)
		goto out_unlock;
	remote_set_draining(rt->r);
	log_info("remote: draining: taking no more offloads, handing over what we hold");
	atomic_store(&d->state, DRAIN_LENT);
	n = remote_lent_paths(rt->r, &paths);
	atomic_store(&d->lent_total, n > 0 ? (uint64_t)n : 0);
	for (int i = 0; i < n; i++) {
		uint64_t bytes = 0;
		int rc = remote_hand_over_lent(rt->r, paths[i], &bytes);

		if (rc == 0) {
			atomic_fetch_add(&d->lent_moved, 1);
			atomic_fetch_add(&d->bytes_moved, bytes);
		} else if (rc != -ENOENT) {
			atomic_fetch_add(&d->lent_failed, 1);
		}
	}
	if (n > 0)
		remote_free_paths(paths, (size_t)n);
	atomic_store(&d->state, DRAIN_FILES);
	drain_files(rt, d);
out_unlock:
	pthread_rwlock_unlock(&fs->rmt_lock);
	/* Our entries and heartbeat go; peers see us gone at their next refresh. */
	atomic_store(&d->state, DRAIN_LEAVING);
	rmt_stop(fs);
	atomic_store(&d->done_ns, kvfs_mono_ns());
	atomic_store(&d->state, DRAIN_DONE);
	log_info("remote: drained: %llu lent copies and %llu files handed over (%llu bytes), "
		 "left the cluster",
		 (unsigned long long)atomic_load(&d->lent_moved),
		 (unsigned long long)atomic_load(&d->files_moved),
		 (unsigned long long)atomic_load(&d->bytes_moved));
}

static void *drain_thread(void *arg)
{
	struct rmt_drain *d = arg;

	drain_run(d->fs, d);
	return NULL;
}

int rmt_drain(struct kvfs_fs *fs, bool wait)
{
	struct rmt_drain *d;
	bool joined;
	int rc = 0;

	pthread_rwlock_rdlock(&fs->rmt_lock);
	joined = fs->rmt && fs->cfg.cluster;
	pthread_rwlock_unlock(&fs->rmt_lock);
	pthread_mutex_lock(&fs->lock);
	d = fs->drain;
	if (d)
		goto out_unlock; /* under way or done: nothing new */
	if (!joined) {
		rc = -ENOTCONN;
		goto out_unlock;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		rc = -ENOMEM;
		goto out_unlock;
	}
	d->fs = fs;
	d->started_ns = kvfs_mono_ns();
	atomic_store(&d->state, DRAIN_LENT);
	rc = -pthread_create(&d->thread, NULL, drain_thread, d);
	if (rc) {
		free(d);
		d = NULL;
		goto out_unlock;
	}
	fs->drain = d;
out_unlock:
	pthread_mutex_unlock(&fs->lock);
	if (rc == 0 && wait && d)
		while (atomic_load(&d->state) != DRAIN_DONE)
			usleep(10000);
	return rc;
}

void rmt_drain_join(struct kvfs_fs *fs)
{
	if (!fs->drain)
		return;
	pthread_join(fs->drain->thread, NULL);
	free(fs->drain);
	fs->drain = NULL;
}

json_t *rmt_drain_json(struct kvfs_fs *fs)
{
	struct rmt_drain *d;
	json_t *o;
	uint64_t end;

	pthread_mutex_lock(&fs->lock);
	d = fs->drain;
	pthread_mutex_unlock(&fs->lock);
	if (!d)
		return NULL;
	end = atomic_load(&d->done_ns);
	o = json_object();
	json_object_set_new(o, "state", json_string(drain_names[atomic_load(&d->state)]));
#define SET(name, v) json_object_set_new(o, name, json_integer((json_int_t)atomic_load(&d->v)))
	SET("lent_copies", lent_total);
	SET("lent_moved", lent_moved);
	SET("lent_failed", lent_failed);
	SET("files_only_here", files_only_here);
	SET("files_moved", files_moved);
	SET("files_failed", files_failed);
	SET("files_no_room", files_no_room);
	SET("bytes_moved", bytes_moved);
	SET("peers_room_bytes", budget);
#undef SET
	json_object_set_new(
		o, "seconds",
		json_real((double)((end ? end : kvfs_mono_ns()) - d->started_ns) / 1e9));
	return o;
}

/* --- start, stop -------------------------------------------------------------------------- */

int rmt_start(struct kvfs_fs *fs, char *err, size_t errlen)
{
	const struct kvfs_config *c = &fs->cfg;
	struct remote_config rc = {0};
	struct rmt *rt;
	char host[REMOTE_NODE_ID_MAX];
	int r;

	if (!rmt_configured(c))
		return 0;
	rt = calloc(1, sizeof(*rt));
	if (!rt)
		return -ENOMEM;
	pthread_mutex_init(&rt->lock, NULL);
	pthread_cond_init(&rt->cond, NULL);
	rt->fs = fs;
	if (!c->node_id) {
		if (gethostname(host, sizeof(host)))
			snprintf(host, sizeof(host), "kvfs-%d", (int)getpid());
		host[sizeof(host) - 1] = '\0';
	}
	rc.node_id = c->node_id ? c->node_id : host;
	rc.fabric = c->fabric;
	rc.listen = c->listen;
	rc.cluster = c->cluster;
	rc.cluster_name = c->cluster_name;
	rc.token_file = c->token_file;
	/* DRAM files are registered one by one as peers lease them (rdma/server.c). */
	rc.arena = NULL;
	rc.arena_bytes = 0;
	rc.lend_bytes = c->lend_bytes;
	rc.timeout_ms = c->remote_timeout_ms;
	rc.max_unproven_conns = c->unproven_conns;
	rc.ops = &serve_ops;
	rc.ops_ctx = rt;
	r = remote_open(&rc, &rt->r, err, errlen);
	if (r) {
		pthread_cond_destroy(&rt->cond);
		pthread_mutex_destroy(&rt->lock);
		free(rt);
		return r;
	}
	r = pthread_create(&rt->thread, NULL, free_thread, rt);
	if (r) {
		remote_close(rt->r);
		free(rt);
		snprintf(err, errlen, "remote: cannot start a thread");
		return -r;
	}
	/* What came back from NVMe at start is offered to the cluster. */
	pthread_rwlock_wrlock(&fs->rmt_lock);
	pthread_mutex_lock(&fs->lock);
	__atomic_store_n(&fs->rmt, rt, __ATOMIC_RELEASE);
	publish_tree_locked(fs, fs->root, true);
	pthread_mutex_unlock(&fs->lock);
	pthread_rwlock_unlock(&fs->rmt_lock);
	log_info("remote: node %s on %s, cluster %s, lending %llu bytes", remote_node_id(rt->r),
		 remote_provider(rt->r), c->cluster ? c->cluster : "(none)",
		 (unsigned long long)c->lend_bytes);
	return 0;
}

void rmt_stop(struct kvfs_fs *fs)
{
	struct rmt *rt;

	/* No more publishing, fetching or spilling; those under way finish first.
	 * (A drain's thread and the shut-down may both get here: one stops it.) */
	pthread_rwlock_wrlock(&fs->rmt_lock);
	rt = fs->rmt;
	if (!rt) {
		pthread_rwlock_unlock(&fs->rmt_lock);
		return;
	}
	pthread_mutex_lock(&fs->lock);
	__atomic_store_n(&fs->rmt, NULL, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&fs->lock);
	pthread_rwlock_unlock(&fs->rmt_lock);
	pthread_mutex_lock(&rt->lock);
	rt->stop = true;
	pthread_cond_signal(&rt->cond);
	pthread_mutex_unlock(&rt->lock);
	pthread_join(rt->thread, NULL);
	remote_close(rt->r); /* releases the leases peers held */
	pthread_cond_destroy(&rt->cond);
	pthread_mutex_destroy(&rt->lock);
	free(rt);
}

struct remote *rmt_hold(struct kvfs_fs *fs)
{
	pthread_rwlock_rdlock(&fs->rmt_lock);
	return fs->rmt ? fs->rmt->r : NULL;
}

void rmt_unhold(struct kvfs_fs *fs)
{
	pthread_rwlock_unlock(&fs->rmt_lock);
}

/* --- what operators see ---------------------------------------------------------------------- */

static json_t *stats_json(struct rmt *rt)
{
	struct remote_stats st;
	struct remote_peer peers[64];
	json_t *o, *arr;
	int n;

	remote_get_stats(rt->r, &st);
	o = json_object();
	json_object_set_new(o, "node_id", json_string(remote_node_id(rt->r)));
	json_object_set_new(o, "provider", json_string(st.provider ? st.provider : ""));
#define SET(name, v) json_object_set_new(o, name, json_integer((json_int_t)(v)))
	SET("peers_alive", st.peers_alive);
	SET("fetched", atomic_load(&rt->fetched));
	SET("fetched_bytes", atomic_load(&rt->fetched_bytes));
	SET("fetch_misses", atomic_load(&rt->fetch_misses));
	SET("fetch_errors", atomic_load(&rt->fetch_errors));
	SET("dirs_created", atomic_load(&rt->dirs_created));
	SET("served", st.served);
	SET("served_bytes", st.served_bytes);
	SET("refused", atomic_load(&rt->refused));
	SET("spilled", atomic_load(&rt->spilled));
	SET("spill_failed", atomic_load(&rt->spill_failed));
	SET("offload_bytes", st.offload_bytes);
	SET("offloads_received", st.offloads_received);
	SET("lent_evictions", st.lent_evictions);
	SET("lend_capacity_bytes", st.lend_capacity);
	SET("lend_used_bytes", st.lend_used);
	SET("checksum_failures", st.checksum_failures);
	SET("timeouts", st.timeouts);
	SET("conn_errors", st.conn_errors);
	SET("auth_refused", st.auth_refused);
	SET("auth_rejected", st.auth_rejected);
	SET("bad_messages", st.bad_messages);
	SET("redis_errors", st.redis_errors);
	SET("redis_reconnects", st.redis_reconnects);
	SET("resyncs", st.resyncs);
	SET("index_lookups", st.index_lookups);
	SET("index_updates", st.index_updates);
	SET("stale_repaired", st.stale_repaired);
	SET("replays", st.replays);
	SET("handshakes_dropped", st.handshakes_dropped);
	SET("conns_cut", st.conns_cut);
	SET("index_redirects", st.index_redirects);
	SET("index_map_refreshes", st.index_map_refreshes);
#undef SET
	arr = json_array();
	n = remote_peers(rt->r, peers, (int)KVFS_ARRAY_SIZE(peers));
	for (int i = 0; i < n && i < (int)KVFS_ARRAY_SIZE(peers); i++)
		json_array_append_new(arr, json_pack("{s:s,s:b,s:b,s:I,s:I}", "node", peers[i].node,
						     "alive", peers[i].alive, "self", peers[i].self,
						     "lend_total", (json_int_t)peers[i].lend_total,
						     "lend_free", (json_int_t)peers[i].lend_free));
	json_object_set_new(o, "peers", arr);
	return o;
}

json_t *rmt_stats_json(struct kvfs_fs *fs)
{
	json_t *o = NULL;

	pthread_rwlock_rdlock(&fs->rmt_lock);
	if (fs->rmt)
		o = stats_json(fs->rmt);
	pthread_rwlock_unlock(&fs->rmt_lock);
	return o;
}

const char *rmt_tier_name(int t)
{
	switch (t) {
	case REMOTE_TIER_GPU:
		return "gpu";
	case REMOTE_TIER_DRAM:
		return "dram";
	case REMOTE_TIER_NVME:
		return "nvme";
	case REMOTE_TIER_LENT:
		return "lent";
	}
	return "?";
}

static int where(struct rmt *rt, const char *req, size_t len, char **out, size_t *outlen)
{
	struct remote_holder h[64];
	char path[PATH_MAX];
	json_t *root, *arr;
	int n;

	if (ctl_where_path(req, len, path, sizeof(path)))
		return -EINVAL;
	n = remote_where(rt->r, path, h, (int)KVFS_ARRAY_SIZE(h));
	if (n < 0)
		return n;
	root = json_object();
	json_object_set_new(root, "path", json_string(path));
	arr = json_array();
	for (int i = 0; i < n && i < (int)KVFS_ARRAY_SIZE(h); i++)
		json_array_append_new(arr, json_pack("{s:s,s:s,s:b,s:b}", "node", h[i].node, "tier",
						     rmt_tier_name(h[i].tier), "alive", h[i].alive,
						     "self", h[i].self));
	json_object_set_new(root, "holders", arr);
	*out = json_dumps(root, JSON_INDENT(2));
	json_decref(root);
	if (!*out)
		return -ENOMEM;
	*outlen = strlen(*out);
	return 0;
}

int rmt_where(struct kvfs_fs *fs, const char *req, size_t len, char **out, size_t *outlen)
{
	int rc = -ENOTCONN;

	pthread_rwlock_rdlock(&fs->rmt_lock);
	if (fs->rmt)
		rc = where(fs->rmt, req, len, out, outlen);
	pthread_rwlock_unlock(&fs->rmt_lock);
	return rc;
}
