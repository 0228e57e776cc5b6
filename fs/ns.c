/*
 * fs/ns.c — the namespace: inodes, the name hash, the tree, its catalog
 * records, eviction and background work.
 *
 * Owns: every struct kvfs_inode, the (parent, name) hash table, the link
 * between an inode and its tier object, and the worker thread that writes
 * batched access statistics and sends kernel cache invalidations.
 *
 * Invariants (see fs_i.h for the locks):
 *  - `in->data` and the tier object's owner cookie are set and cleared
 *    together, under fs->lock. So the eviction callback, holding fs->lock,
 *    sees either a detached object (owner NULL) or a linked, live inode.
 *  - a file that is unlinked keeps its bytes only while a handle is open;
 *    the last release detaches and drops them.
 *  - a record is in the catalog iff `persisted`: directories from mkdir on,
 *    files from their seal on. A file being written is not in the catalog.
 *
 * Catalog records on restart: directories come back. Files come back only
 * if a persistent tier holds their bytes; with DRAM alone none does, so
 * every file record is deleted at start and counted in restart_dropped —
 * a restarted cache is empty but its tree is intact, and the catalog never
 * names bytes that are gone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/log.h"
#include "core/util.h"
#include "fs/fs_i.h"

#define FLUSH_INTERVAL_NS 1000000000ull

struct inval {
	struct inval *next;
	struct kvfs_inode *in;     /* referenced */
	struct kvfs_inode *parent; /* referenced, or NULL: invalidate pages only */
	char *name;
	size_t namelen;
};

static unsigned long name_hash(uint64_t parent_ino, const char *name, size_t len)
{
	return (unsigned long)XXH3_64bits_withSeed(name, len, parent_ino);
}

struct name_key {
	uint64_t parent;
	const char *name;
	size_t len;
};

/* Runs under the RCU read lock, racing renames: read each pointer once. */
static int name_match(struct cds_lfht_node *node, const void *key)
{
	const struct kvfs_inode *in = caa_container_of(node, struct kvfs_inode, hnode);
	const struct kvfs_inode *parent = CMM_LOAD_SHARED(in->parent);
	const struct kvfs_name *name = rcu_dereference(in->name);
	const struct name_key *k = key;

	return parent && name && parent->ino == k->parent && name->len == k->len &&
	       memcmp(name->s, k->name, k->len) == 0;
}

/*
 * ThreadSanitizer cannot see liburcu's synchronisation (the library is not
 * built with it): its grace periods, its callback queue, its lock-free
 * stack. Under TSan we tell it the orderings liburcu guarantees: every
 * read-side section ends with a release and every call_rcu() begins with
 * one, on a stand-in address that each callback acquires before it frees;
 * a push on the dirty stack releases what its pop acquires. Without TSan
 * these are no-ops.
 */
#if defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_RELEASE(addr) __tsan_release(addr)
#define TSAN_ACQUIRE(addr) __tsan_acquire(addr)
#else
#define TSAN_RELEASE(addr) ((void)(addr))
#define TSAN_ACQUIRE(addr) ((void)(addr))
#endif
static char rcu_grace;
#define RCU_TSAN_RELEASE() TSAN_RELEASE(&rcu_grace)
#define RCU_TSAN_ACQUIRE() TSAN_ACQUIRE(&rcu_grace)

static void rcu_read_end(void)
{
	RCU_TSAN_RELEASE();
	urcu_bp_read_unlock();
}

static void rcu_free_later(struct rcu_head *head, void (*fn)(struct rcu_head *))
{
	RCU_TSAN_RELEASE();
	urcu_bp_call_rcu(head, fn);
}

static void name_free_rcu(struct rcu_head *head)
{
	RCU_TSAN_ACQUIRE();
	free(caa_container_of(head, struct kvfs_name, rcu));
}

/* --- inode lifetime ------------------------------------------------------------ */

struct kvfs_inode *ns_inode_new(struct kvfs_fs *fs, uint8_t kind, uint32_t mode, uint32_t uid,
				uint32_t gid)
{
	struct kvfs_inode *in = calloc(1, sizeof(*in));
	int64_t now = (int64_t)kvfs_now_ns();

	if (!in)
		return NULL;
	in->kind = kind;
	in->mode = mode;
	in->uid = uid;
	in->gid = gid;
	in->atime = in->mtime = in->ctime = now;
	in->generation = atomic_fetch_add(&fs->next_generation, 1);
	pthread_mutex_init(&in->lock, NULL);
	cds_lfht_node_init(&in->hnode);
	CDS_INIT_LIST_HEAD(&in->dn.link);
	CDS_INIT_LIST_HEAD(&in->children);
	in->next_cookie = FIRST_COOKIE;
	return in;
}

void ns_get(struct kvfs_inode *in, uint64_t n)
{
	atomic_fetch_add(&in->refs, n);
}

static void inode_free_rcu(struct rcu_head *head)
{
	struct kvfs_inode *in = caa_container_of(head, struct kvfs_inode, rcu);

	RCU_TSAN_ACQUIRE();
	pthread_mutex_destroy(&in->lock);
	free(in->name);
	free(in);
}

void ns_put(struct kvfs_fs *fs, struct kvfs_inode *in, uint64_t n)
{
	uint64_t old = atomic_fetch_sub(&in->refs, n);

	if (old > n)
		return;
	if (old < n) {
		log_err("inode %llu: reference count underflow (%llu - %llu)",
			(unsigned long long)in->ino, (unsigned long long)old,
			(unsigned long long)n);
		return;
	}
	if (in->kind == KIND_CTL_DIR || in->kind == KIND_CTL_FILE || in == fs->root)
		return; /* static, or lives as long as the mount */
	if (in->orphaned) {
		pthread_mutex_lock(&fs->orphan_lock);
		cds_list_del(&in->orphan);
		in->orphaned = false;
		pthread_mutex_unlock(&fs->orphan_lock);
	}
	/* Unlinked with no handle: ns_release_data() already detached the bytes. */
	if (in->data) {
		log_err("inode %llu freed with data attached", (unsigned long long)in->ino);
		tier_drop(in->data);
		tier_obj_put(in->data);
		in->data = NULL;
	}
	rcu_free_later(&in->rcu, inode_free_rcu);
}

/* --- the name hash and the tree ------------------------------------------- */

struct kvfs_inode *ns_lookup(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
			     size_t len)
{
	struct name_key key = {dir->ino, name, len};
	struct cds_lfht_iter iter;
	struct cds_lfht_node *node;
	struct kvfs_inode *in = NULL;

	urcu_bp_read_lock();
	cds_lfht_lookup(fs->ht, name_hash(dir->ino, name, len), name_match, &key, &iter);
	node = cds_lfht_iter_get_node(&iter);
	if (node) {
		struct kvfs_inode *cand = caa_container_of(node, struct kvfs_inode, hnode);
		uint64_t r = atomic_load(&cand->refs);

		/* Increment only if not zero: a zero count is being freed. */
		while (r && !atomic_compare_exchange_weak(&cand->refs, &r, r + 1))
			;
		if (r)
			in = cand;
	}
	rcu_read_end();
	return in;
}

struct kvfs_inode *ns_find_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
				  size_t len)
{
	struct name_key key = {dir->ino, name, len};
	struct cds_lfht_iter iter;
	struct cds_lfht_node *node;

	urcu_bp_read_lock();
	cds_lfht_lookup(fs->ht, name_hash(dir->ino, name, len), name_match, &key, &iter);
	node = cds_lfht_iter_get_node(&iter);
	rcu_read_end();
	/* Safe after unlocking the RCU section: fs->lock keeps linked inodes alive. */
	return node ? caa_container_of(node, struct kvfs_inode, hnode) : NULL;
}

int ns_link_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, struct kvfs_inode *in,
		   const char *name, size_t len)
{
	struct kvfs_name *old = in->name, *nn = malloc(sizeof(*nn) + len + 1);

	if (!nn)
		return -ENOMEM;
	nn->len = (uint32_t)len;
	memcpy(nn->s, name, len);
	nn->s[len] = '\0';
	rcu_assign_pointer(in->name, nn);
	if (old)
		rcu_free_later(&old->rcu, name_free_rcu);
	CMM_STORE_SHARED(in->parent, dir);
	in->hash = name_hash(dir->ino, name, len);
	pthread_mutex_lock(&in->lock); /* readers hold fs->lock or in->lock */
	in->linked = true;
	pthread_mutex_unlock(&in->lock);
	if (in->orphaned) { /* a rename: unlinked, then linked again */
		pthread_mutex_lock(&fs->orphan_lock);
		cds_list_del(&in->orphan);
		in->orphaned = false;
		pthread_mutex_unlock(&fs->orphan_lock);
	}
	ns_get(in, 1); /* the link */
	ns_get(dir, 1); /* a child pins its parent */
	urcu_bp_read_lock();
	cds_lfht_add(fs->ht, in->hash, &in->hnode);
	rcu_read_end();
	in->dn.cookie = dir->next_cookie++;
	cds_list_add_tail(&in->dn.link, &dir->children);
	dir->nchildren++;
	if (in->kind == KIND_DIR) {
		pthread_mutex_lock(&dir->lock); /* fill_attr reads it under dir->lock */
		dir->nsubdirs++;
		pthread_mutex_unlock(&dir->lock);
		atomic_fetch_add(&fs->ctr.dirs, 1);
	} else {
		atomic_fetch_add(&fs->ctr.files, 1);
	}
	rmt_link_locked(fs, in);
	return 0;
}

void ns_unlink_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	struct kvfs_inode *dir = in->parent;

	if (!in->linked)
		return;
	rmt_unlink_locked(fs, in);
	urcu_bp_read_lock();
	cds_lfht_del(fs->ht, &in->hnode);
	rcu_read_end();
	cds_list_del_init(&in->dn.link);
	dir->nchildren--;
	if (in->kind == KIND_DIR) {
		pthread_mutex_lock(&dir->lock);
		dir->nsubdirs--;
		pthread_mutex_unlock(&dir->lock);
		atomic_fetch_sub(&fs->ctr.dirs, 1);
	} else {
		atomic_fetch_sub(&fs->ctr.files, 1);
	}
	pthread_mutex_lock(&in->lock); /* readers hold fs->lock or in->lock */
	in->linked = false;
	pthread_mutex_unlock(&in->lock);
	/*
	 * The name stays (freed with the inode, after a grace period) for
	 * readers still in their RCU section; the parent goes, and with it our
	 * reference on it — it too is freed only after a grace period.
	 */
	CMM_STORE_SHARED(in->parent, NULL);
	if (in->kind == KIND_FILE || in->kind == KIND_DIR) {
		pthread_mutex_lock(&fs->orphan_lock);
		cds_list_add(&in->orphan, &fs->orphans);
		in->orphaned = true;
		pthread_mutex_unlock(&fs->orphan_lock);
	}
	ns_put(fs, dir, 1);
	ns_put(fs, in, 1);
}

int ns_path_locked(struct kvfs_fs *fs, const struct kvfs_inode *in, char *buf, size_t len)
{
	size_t pos = len - 1;

	if (len == 0)
		return -ENAMETOOLONG;
	buf[pos] = '\0';
	for (const struct kvfs_inode *p = in; p != fs->root; p = p->parent) {
		size_t n;

		if (!p->linked || !p->parent)
			return -ENOENT;
		n = p->name->len;
		if (pos < n + (p != in))
			return -ENAMETOOLONG;
		if (p != in)
			buf[--pos] = '/';
		pos -= n;
		memcpy(buf + pos, p->name->s, n);
	}
	memmove(buf, buf + pos, len - pos);
	return (int)(len - 1 - pos);
}

/* --- catalog records --------------------------------------------------------- */

void ns_to_record(const struct kvfs_inode *in, struct cat_inode *rec)
{
	memset(rec, 0, sizeof(*rec));
	rec->ino = in->ino;
	rec->mode = in->mode;
	rec->uid = in->uid;
	rec->gid = in->gid;
	rec->atime_ns = in->atime;
	rec->mtime_ns = __atomic_load_n(&in->mtime, __ATOMIC_RELAXED); /* a write sets it */
	rec->ctime_ns = __atomic_load_n(&in->ctime, __ATOMIC_RELAXED); /* so does ctime */
	if (in->kind == KIND_FILE) {
		rec->size = in->data ? tier_size(in->data) : 0;
		rec->hits = in->hits;
		if (in->data && tier_is_pinned(in->data))
			rec->flags |= CAT_F_PINNED;
		if (in->native) {
			rec->flags |= CAT_F_NATIVE;
			rec->key = in->key;
			rec->parent = in->parent_key;
			rec->ntokens = in->ntokens;
		}
	}
}

void ns_persist(struct kvfs_fs *fs, cat_batch *b, struct kvfs_inode *in)
{
	struct cat_inode rec;

	pthread_mutex_lock(&in->lock);
	ns_to_record(in, &rec);
	pthread_mutex_unlock(&in->lock);
	cat_put_inode(b, &rec);
	if (in->linked && in != fs->root)
		cat_put_dentry(b, in->parent->ino, in->name->s, in->name->len, in->ino);
	in->persisted = true;
}

void ns_forget_record(struct kvfs_fs *fs, cat_batch *b, struct kvfs_inode *in)
{
	if (!in->persisted)
		return;
	if (in->parent)
		cat_del_dentry(b, in->parent->ino, in->name->s, in->name->len);
	cat_del_inode(b, in->ino);
	if (in->kind == KIND_FILE)
		tier_forget_record(b, in->ino); /* its NVMe extents go with it */
	in->persisted = false;
}

int ns_commit(struct kvfs_fs *fs, cat_batch *b)
{
	int rc;

	if (cat_batch_count(b) == 0)
		return 0;
	rc = cat_commit(fs->cat, b, false);
	if (rc) {
		atomic_fetch_add(&fs->ctr.catalog_errors, 1);
		return rc;
	}
	atomic_fetch_add(&fs->ctr.catalog_commits, 1);
	return 0;
}

int ns_record_file_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	cat_batch *b = cat_batch_new();
	int rc;

	ns_persist(fs, b, in);
	rc = ns_commit(fs, b);
	cat_batch_free(b);
	if (rc) {
		in->persisted = false;
		if (!in->unrecorded) {
			in->unrecorded = true;
			atomic_fetch_add(&fs->ctr.record_failed, 1);
			atomic_fetch_add(&fs->ctr.unrecorded, 1);
		}
		ns_mark_dirty(fs, in); /* the worker tries again */
	} else if (in->unrecorded) {
		in->unrecorded = false;
		atomic_fetch_sub(&fs->ctr.unrecorded, 1);
	}
	return rc;
}

/* --- data ------------------------------------------------------------------ */

tier_obj *ns_take_data(struct kvfs_inode *in)
{
	tier_obj *o = in->data;

	if (o) {
		in->gone_size = tier_size(o);
		tier_obj_set_owner(o, NULL);
	}
	in->data = NULL;
	return o;
}

/* Detach @in's bytes (fs->lock held). @return the object to drop after unlocking. */
static tier_obj *detach_data_locked(struct kvfs_inode *in)
{
	tier_obj *o;

	pthread_mutex_lock(&in->lock);
	o = ns_take_data(in);
	pthread_mutex_unlock(&in->lock);
	return o;
}

static void drop_obj(tier_obj *o)
{
	if (o) {
		tier_drop(o);
		tier_obj_put(o);
	}
}

void ns_release_data(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	tier_obj *o = NULL;

	pthread_mutex_lock(&fs->lock);
	pthread_mutex_lock(&in->lock);
	if (!in->linked && in->opens == 0)
		o = ns_take_data(in);
	pthread_mutex_unlock(&in->lock);
	pthread_mutex_unlock(&fs->lock);
	drop_obj(o);
}

/* Remove an evicted file from the tree (fs->lock held); its bytes are gone. */
static uint64_t forget_evicted_locked(struct kvfs_fs *fs, cat_batch *b, struct kvfs_inode *in)
{
	uint64_t ticket;

	ns_forget_record(fs, b, in);
	ticket = ns_queue_inval(fs, in, true);
	ns_unlink_locked(fs, in);
	return ticket;
}

void ns_evicted(void *ctx, tier_obj *const *objs, size_t n)
{
	struct kvfs_fs *fs = ctx;
	cat_batch *b = cat_batch_new();
	tier_obj **mine = calloc(n, sizeof(*mine));

	pthread_mutex_lock(&fs->lock);
	for (size_t i = 0; i < n; i++) {
		struct kvfs_inode *in = tier_obj_owner(objs[i]);

		if (!in) {
			atomic_fetch_add(&fs->ctr.evict_races, 1);
			continue;
		}
		if (mine)
			mine[i] = detach_data_locked(in);
		forget_evicted_locked(fs, b, in);
	}
	ns_commit(fs, b);
	pthread_mutex_unlock(&fs->lock);
	for (size_t i = 0; mine && i < n; i++)
		if (mine[i])
			tier_obj_put(mine[i]); /* the owner's reference; the tier frees the bytes */
	free(mine);
	cat_batch_free(b);
}

/* --- permissions on a caller's behalf ------------------------------------------ */

bool ns_may_access(const struct kvfs_cred *c, struct kvfs_inode *in, int mask)
{
	return ns_may(in, c->uid, c->gid, c->groups, c->ngroups, (unsigned)mask);
}

bool ns_may_remove_locked(const struct kvfs_cred *c, struct kvfs_inode *in)
{
	struct kvfs_inode *dir = in->parent;

	if (!dir || !ns_may_access(c, dir, W_OK | X_OK))
		return false;
	if ((__atomic_load_n(&dir->mode, __ATOMIC_RELAXED) & S_ISVTX) && c->uid != 0)
		return c->uid == in->uid || c->uid == dir->uid;
	return true;
}

int ns_may_lookup(struct kvfs_fs *fs, const struct kvfs_cred *c, const char *path)
{
	struct kvfs_inode *dir = fs->root, *child;
	const char *p = path;
	int rc = 0;

	pthread_mutex_lock(&fs->lock);
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);

		if (dir->kind != KIND_DIR) {
			rc = -ENOTDIR;
			break;
		}
		if (!ns_may_access(c, dir, X_OK)) {
			rc = -EACCES;
			break;
		}
		child = ns_find_locked(fs, dir, p, len);
		if (!child)
			break; /* not here: what the cluster has is all there is */
		dir = child;
		if (!slash)
			break;
		p = slash + 1;
	}
	pthread_mutex_unlock(&fs->lock);
	return rc;
}

static void evict_one_locked(struct kvfs_fs *fs, cat_batch *b, struct kvfs_inode *in,
			     struct evict_result *res, tier_obj **dropped, size_t *ndropped,
			     uint64_t *ticket)
{
	uint64_t bytes;
	int rc;

	pthread_mutex_lock(&in->lock);
	if (!in->data || !in->sealed || in->opens) {
		rc = in->data ? -EBUSY : 0;
	} else {
		bytes = tier_size(in->data);
		rc = in->invalid ? 0 : tier_evict(in->data);
		if (rc == 0 || rc == -ENOENT) {
			res->files++;
			res->bytes += bytes;
			rc = 1;
		}
	}
	pthread_mutex_unlock(&in->lock);
	if (rc == -EBUSY)
		res->busy++;
	else if (rc == -EPERM)
		res->pinned++;
	if (rc != 1)
		return;
	dropped[(*ndropped)++] = detach_data_locked(in);
	*ticket = forget_evicted_locked(fs, b, in);
	atomic_fetch_add(&fs->ctr.operator_evictions, 1);
}

uint64_t ns_evict_tree(struct kvfs_fs *fs, struct kvfs_inode *top, const struct kvfs_cred *cred,
		       struct evict_result *res)
{
	uint64_t ticket = 0;
	cat_batch *b = cat_batch_new();
	size_t cap = 64, n = 0, ndropped = 0, dcap = 64;
	struct kvfs_inode **stack = malloc(cap * sizeof(*stack));
	tier_obj **dropped = malloc(dcap * sizeof(*dropped));

	memset(res, 0, sizeof(*res));
	if (!stack || !dropped)
		goto out;
	pthread_mutex_lock(&fs->lock);
	stack[n++] = top;
	while (n) {
		struct kvfs_inode *in = stack[--n], *child, *tmp;
		struct dnode *d, *dt;

		if (in->kind == KIND_FILE) {
			if (ndropped == dcap) {
				tier_obj **nd = realloc(dropped, 2 * dcap * sizeof(*dropped));

				if (!nd)
					break;
				dropped = nd;
				dcap *= 2;
			}
			/* Evicting removes the name: only what the caller could unlink. */
			if (cred && !ns_may_remove_locked(cred, in))
				res->denied++;
			else
				evict_one_locked(fs, b, in, res, dropped, &ndropped, &ticket);
			continue;
		}
		if (in->kind != KIND_DIR || (cred && !ns_may_access(cred, in, X_OK)))
			continue;
		cds_list_for_each_entry_safe(d, dt, &in->children, link)
		{
			if (d->is_cursor)
				continue;
			child = caa_container_of(d, struct kvfs_inode, dn);
			if (n == cap) {
				struct kvfs_inode **ns = realloc(stack, 2 * cap * sizeof(*stack));

				if (!ns)
					goto out_unlock;
				stack = ns;
				cap *= 2;
			}
			stack[n++] = child;
		}
		(void)tmp;
	}
out_unlock:
	ns_commit(fs, b);
	pthread_mutex_unlock(&fs->lock);
	for (size_t i = 0; i < ndropped; i++)
		if (dropped[i])
			drop_obj(dropped[i]);
out:
	free(stack);
	free(dropped);
	cat_batch_free(b);
	return ticket;
}

/* --- background work: invalidations and stats --------------------------------- */

uint64_t ns_queue_inval(struct kvfs_fs *fs, struct kvfs_inode *in, bool entry)
{
	struct inval *iv = calloc(1, sizeof(*iv));
	uint64_t ticket;

	if (!iv)
		return 0;
	iv->in = in;
	ns_get(in, 1);
	if (entry && in->parent) {
		iv->name = strndup(in->name->s, in->name->len);
		iv->namelen = in->name->len;
		iv->parent = in->parent;
		ns_get(in->parent, 1);
	}
	pthread_mutex_lock(&fs->work_lock);
	if (fs->inval_tail)
		fs->inval_tail->next = iv;
	else
		fs->inval_head = iv;
	fs->inval_tail = iv;
	ticket = ++fs->inval_queued;
	pthread_cond_signal(&fs->work_cond);
	pthread_mutex_unlock(&fs->work_lock);
	return ticket;
}

void ns_wait_inval(struct kvfs_fs *fs, uint64_t ticket, uint64_t timeout_ns)
{
	uint64_t deadline = kvfs_now_ns() + timeout_ns;
	struct timespec ts = {(time_t)(deadline / 1000000000), (long)(deadline % 1000000000)};

	pthread_mutex_lock(&fs->work_lock);
	while (fs->inval_done < ticket && !fs->stopping &&
	       pthread_cond_timedwait(&fs->inval_cond, &fs->work_lock, &ts) == 0)
		;
	pthread_mutex_unlock(&fs->work_lock);
}

void ns_mark_dirty(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	bool expected = false;

	if (!atomic_compare_exchange_strong(&in->dirty, &expected, true))
		return;
	ns_get(in, 1);
	TSAN_RELEASE(&fs->dirty);
	cds_lfs_push(&fs->dirty, &in->dirty_node);
}

void ns_flush_dirty(struct kvfs_fs *fs)
{
	struct cds_lfs_head *head = __cds_lfs_pop_all(&fs->dirty);
	struct cds_lfs_node *node, *next;
	struct kvfs_inode **list = NULL;
	size_t n = 0, cap = 0;
	cat_batch *b;

	if (!head)
		return;
	TSAN_ACQUIRE(&fs->dirty);
	/*
	 * Collect first: once an inode's dirty flag is cleared another thread
	 * may push it again, which rewrites its next pointer.
	 */
	for (node = &head->node; node; node = next) {
		next = node->next;
		if (n == cap) {
			size_t nc = cap ? cap * 2 : 256;
			struct kvfs_inode **p = realloc(list, nc * sizeof(*p));

			if (!p) {
				cds_lfs_push(&fs->dirty, node); /* next time */
				continue;
			}
			list = p;
			cap = nc;
		}
		list[n++] = caa_container_of(node, struct kvfs_inode, dirty_node);
	}
	b = cat_batch_new();
	pthread_mutex_lock(&fs->lock);
	for (size_t i = 0; i < n; i++) {
		struct kvfs_inode *in = list[i];
		struct cat_inode rec;

		atomic_store(&in->dirty, false);
		if (in->unrecorded) {
			/* A sealed file whose record failed: again, on its own. */
			if (in->linked) {
				ns_record_file_locked(fs, in);
			} else {
				in->unrecorded = false; /* deleted or evicted meanwhile */
				atomic_fetch_sub(&fs->ctr.unrecorded, 1);
			}
			continue;
		}
		if (!in->persisted)
			continue;
		pthread_mutex_lock(&in->lock);
		ns_to_record(in, &rec);
		pthread_mutex_unlock(&in->lock);
		cat_put_inode(b, &rec);
	}
	ns_commit(fs, b);
	pthread_mutex_unlock(&fs->lock);
	for (size_t i = 0; i < n; i++)
		ns_put(fs, list[i], 1);
	free(list);
	cat_batch_free(b);
}

static void run_invals(struct kvfs_fs *fs, struct inval *iv)
{
	uint64_t n = 0;

	while (iv) {
		struct inval *next = iv->next;

		pthread_mutex_lock(&fs->notify_lock);
		if (fs->se && !fs->notify_off) {
			if (iv->parent)
				fuse_lowlevel_notify_inval_entry(fs->se, inode_to_ino(fs, iv->parent),
								 iv->name, iv->namelen);
			fuse_lowlevel_notify_inval_inode(fs->se, inode_to_ino(fs, iv->in), 0, 0);
		}
		pthread_mutex_unlock(&fs->notify_lock);
		if (iv->parent)
			ns_put(fs, iv->parent, 1);
		ns_put(fs, iv->in, 1);
		free(iv->name);
		free(iv);
		iv = next;
		n++;
	}
	pthread_mutex_lock(&fs->work_lock);
	fs->inval_done += n;
	pthread_cond_broadcast(&fs->inval_cond);
	pthread_mutex_unlock(&fs->work_lock);
}

static void *worker_main(void *arg)
{
	struct kvfs_fs *fs = arg;
	uint64_t last_flush = kvfs_mono_ns();

	urcu_bp_register_thread();
	pthread_mutex_lock(&fs->work_lock);
	while (!fs->stopping || fs->inval_head) {
		struct inval *iv = fs->inval_head;
		struct timespec ts;

		if (iv) {
			fs->inval_head = fs->inval_tail = NULL;
			pthread_mutex_unlock(&fs->work_lock);
			run_invals(fs, iv);
			pthread_mutex_lock(&fs->work_lock);
			continue;
		}
		if (kvfs_mono_ns() - last_flush >= FLUSH_INTERVAL_NS) {
			pthread_mutex_unlock(&fs->work_lock);
			ns_flush_dirty(fs);
			/* Sealed files a write-through or fsync could not store: again. */
			tier_retry_persist(fs->tier);
			last_flush = kvfs_mono_ns();
			pthread_mutex_lock(&fs->work_lock);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 200 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&fs->work_cond, &fs->work_lock, &ts);
	}
	pthread_mutex_unlock(&fs->work_lock);
	urcu_bp_unregister_thread();
	return NULL;
}

/* --- loading the tree from the catalog ---------------------------------------- */

struct loader {
	struct kvfs_fs *fs;
	struct kvfs_inode **inodes; /* sorted by ino: the scan's order */
	uint64_t *sizes;            /* from each file's record */
	uint32_t *flags;
	size_t n, cap;
	cat_batch *fix; /* records to delete */
	uint64_t dropped, repaired, recovered;
};

static struct kvfs_inode *loader_find(struct loader *ld, uint64_t ino)
{
	size_t lo = 0, hi = ld->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (ld->inodes[mid]->ino < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < ld->n && ld->inodes[lo]->ino == ino ? ld->inodes[lo] : NULL;
}

static int load_inode(void *arg, const struct cat_inode *rec)
{
	struct loader *ld = arg;
	struct kvfs_inode *in;
	uint8_t kind;

	if (S_ISDIR(rec->mode)) {
		kind = KIND_DIR;
	} else if (S_ISREG(rec->mode)) {
		kind = KIND_FILE;
	} else {
		cat_del_inode(ld->fix, rec->ino);
		ld->repaired++;
		return 0;
	}
	if (ld->n == ld->cap) {
		size_t nc = ld->cap ? ld->cap * 2 : 1024;
		struct kvfs_inode **p = realloc(ld->inodes, nc * sizeof(*p));
		uint64_t *sz = p ? realloc(ld->sizes, nc * sizeof(*sz)) : NULL;
		uint32_t *fl = sz ? realloc(ld->flags, nc * sizeof(*fl)) : NULL;

		if (p)
			ld->inodes = p;
		if (sz)
			ld->sizes = sz;
		if (fl)
			ld->flags = fl;
		if (!p || !sz || !fl)
			return -ENOMEM;
		ld->cap = nc;
	}
	in = ns_inode_new(ld->fs, kind, rec->mode, rec->uid, rec->gid);
	if (!in)
		return -ENOMEM;
	in->ino = rec->ino;
	in->atime = rec->atime_ns;
	in->mtime = rec->mtime_ns;
	in->ctime = rec->ctime_ns;
	in->hits = rec->hits;
	in->persisted = true;
	if (rec->flags & CAT_F_NATIVE) {
		in->native = true;
		in->key = rec->key;
		in->parent_key = rec->parent;
		in->ntokens = rec->ntokens;
	}
	ld->sizes[ld->n] = rec->size;
	ld->flags[ld->n] = rec->flags;
	ld->inodes[ld->n++] = in;
	return 0;
}

static int load_dentry(void *arg, uint64_t parent, const char *name, size_t len, uint64_t ino)
{
	struct loader *ld = arg;
	struct kvfs_inode *dir = loader_find(ld, parent), *in = loader_find(ld, ino);

	if (!dir || !in || dir->kind != KIND_DIR || in->linked || in == ld->fs->root ||
	    len == 0 || len > KVFS_NAME_MAX || memchr(name, '/', len) || memchr(name, 0, len) ||
	    (dir == ld->fs->root && len == strlen(KVFS_CTL_NAME) &&
	     memcmp(name, KVFS_CTL_NAME, len) == 0)) {
		cat_del_dentry(ld->fix, parent, name, len);
		ld->repaired++;
		return 0;
	}
	return ns_link_locked(ld->fs, dir, in, name, len);
}

/*
 * Delete what cannot come back: files (no persistent tier holds bytes yet)
 * and inodes without a name. Directories emptied this way stay.
 */
static void loader_prune(struct loader *ld)
{
	struct kvfs_fs *fs = ld->fs;

	for (size_t i = 0; i < ld->n; i++) {
		struct kvfs_inode *in = ld->inodes[i];

		if (in == fs->root)
			continue;
		if (!in->linked) {
			cat_del_inode(ld->fix, in->ino);
			ld->repaired++;
			ns_get(in, 1);
			ns_put(fs, in, 1);
			continue;
		}
		if (in->kind != KIND_FILE)
			continue;
		/* A file comes back if a persistent tier holds its bytes. */
		if (tier_recover(fs->tier, in->ino, ld->sizes[i], (uint32_t)in->hits, in,
				 &in->data) == 0) {
			atomic_store(&in->sealed, true);
			if (ld->flags[i] & CAT_F_PINNED)
				tier_pin(in->data, true);
			ld->recovered++;
			continue;
		}
		ns_forget_record(fs, ld->fix, in);
		ns_unlink_locked(fs, in);
		ld->dropped++;
	}
}

static int load_tree(struct kvfs_fs *fs, char *err, size_t errlen)
{
	struct loader ld = {.fs = fs};
	uint64_t bad = 0, max_ino = CAT_ROOT_INO;
	struct kvfs_inode *root;
	cat_batch *b;
	int rc;

	ld.fix = cat_batch_new();
	rc = tier_recover_begin(fs->tier);
	if (rc) {
		snprintf(err, errlen, "catalog: cannot read the NVMe records (%s)", strerror(-rc));
		goto out;
	}
	rc = cat_scan_inodes(fs->cat, load_inode, &ld, &bad);
	if (rc)
		goto out;
	root = loader_find(&ld, CAT_ROOT_INO);
	if (root && root->kind != KIND_DIR) {
		snprintf(err, errlen, "catalog: the root record is not a directory");
		rc = -EUCLEAN;
		goto out;
	}
	if (!root) {
		root = ns_inode_new(fs, KIND_DIR, S_IFDIR | 0755, getuid(), getgid());
		if (!root) {
			rc = -ENOMEM;
			goto out;
		}
		root->ino = CAT_ROOT_INO;
		b = cat_batch_new();
		ns_persist(fs, b, root);
		rc = cat_commit(fs->cat, b, true);
		cat_batch_free(b);
		if (rc) {
			snprintf(err, errlen, "catalog: cannot write the root directory");
			goto out;
		}
		/* keep the sorted array sorted: the root has the smallest ino */
		if (ld.n == ld.cap) {
			struct kvfs_inode **p = realloc(ld.inodes, (ld.cap + 1) * sizeof(*p));

			if (!p) {
				rc = -ENOMEM;
				goto out;
			}
			ld.inodes = p;
			ld.cap++;
		}
		memmove(ld.inodes + 1, ld.inodes, ld.n * sizeof(*ld.inodes));
		ld.inodes[0] = root;
		ld.n++;
	}
	fs->root = root;
	ns_get(root, 1);
	rc = cat_scan_dentries(fs->cat, 0, load_dentry, &ld, &bad);
	if (rc)
		goto out;
	/* Before pruning frees some: numbers of dropped files are not reused either. */
	for (size_t i = 0; i < ld.n; i++)
		if (ld.inodes[i]->ino > max_ino)
			max_ino = ld.inodes[i]->ino;
	loader_prune(&ld);
	tier_recover_end(fs->tier, ld.fix);
	rc = cat_commit(fs->cat, ld.fix, true);
	if (rc) {
		snprintf(err, errlen, "catalog: cannot write repairs (%s)", strerror(-rc));
		goto out;
	}
	fs->next_ino = max_ino + 1;
	atomic_store(&fs->ctr.restart_dropped, ld.dropped);
	atomic_store(&fs->ctr.restart_recovered, ld.recovered);
	log_info("catalog: %llu files back from NVMe, %llu dropped (bytes in DRAM only), %llu "
		 "records repaired, %llu undecodable",
		 (unsigned long long)ld.recovered, (unsigned long long)ld.dropped,
		 (unsigned long long)ld.repaired, (unsigned long long)bad);
out:
	free(ld.inodes);
	free(ld.sizes);
	free(ld.flags);
	cat_batch_free(ld.fix);
	return rc;
}

/* --- open and close ----------------------------------------------------------- */

int ns_open(struct kvfs_fs *fs, char *err, size_t errlen)
{
	int rc;

	pthread_mutex_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->work_lock, NULL);
	pthread_mutex_init(&fs->notify_lock, NULL);
	pthread_cond_init(&fs->work_cond, NULL);
	pthread_cond_init(&fs->inval_cond, NULL);
	pthread_mutex_init(&fs->seal_lock, NULL);
	pthread_mutex_init(&fs->handles_lock, NULL);
	CDS_INIT_LIST_HEAD(&fs->handles);
	pthread_mutex_init(&fs->orphan_lock, NULL);
	CDS_INIT_LIST_HEAD(&fs->orphans);
	pthread_cond_init(&fs->seal_cond, NULL);
	cds_lfs_init(&fs->dirty);
	fs->next_generation = 1;
	fs->started_ns = kvfs_now_ns();
	fs->ht = cds_lfht_new_flavor(1024, 1024, 0, CDS_LFHT_AUTO_RESIZE | CDS_LFHT_ACCOUNTING,
				     &urcu_bp_flavor, NULL);
	if (!fs->ht) {
		snprintf(err, errlen, "cannot allocate the name table");
		return -ENOMEM;
	}
	ctl_init(fs);
	pthread_mutex_lock(&fs->lock);
	rc = load_tree(fs, err, errlen);
	pthread_mutex_unlock(&fs->lock);
	if (rc)
		return rc;
	rc = pthread_create(&fs->worker, NULL, worker_main, fs);
	if (rc) {
		snprintf(err, errlen, "cannot start the worker thread: %s", strerror(rc));
		return -rc;
	}
	fs->worker_started = true;
	return 0;
}

void ns_notify_off(struct kvfs_fs *fs)
{
	pthread_mutex_lock(&fs->notify_lock);
	fs->notify_off = true;
	pthread_mutex_unlock(&fs->notify_lock);
}

void ns_close(struct kvfs_fs *fs)
{
	if (fs->worker_started) {
		pthread_mutex_lock(&fs->work_lock);
		fs->stopping = true;
		pthread_cond_signal(&fs->work_cond);
		pthread_mutex_unlock(&fs->work_lock);
		pthread_join(fs->worker, NULL);
		fs->worker_started = false;
	}
	ns_flush_dirty(fs);
}

bool ns_may(struct kvfs_inode *in, uint32_t uid, uint32_t gid, const uint32_t *groups, int ngroups,
	    unsigned mask)
{
	unsigned mode, bits;
	bool group = false;

	pthread_mutex_lock(&in->lock);
	mode = in->mode;
	if (uid == 0) {
		pthread_mutex_unlock(&in->lock);
		return !(mask & 1) || S_ISDIR(mode) || (mode & 0111);
	}
	if (in->uid == uid) {
		bits = (mode >> 6) & 7;
	} else {
		group = in->gid == gid;
		for (int i = 0; !group && i < ngroups; i++)
			group = in->gid == groups[i];
		bits = group ? (mode >> 3) & 7 : mode & 7;
	}
	pthread_mutex_unlock(&in->lock);
	return (bits & mask) == mask;
}
