/*
 * fs/disagg.c — disaggregated serving on the daemon's side (DESIGN §9):
 * prefetch, cluster prefix match, push.
 *
 *  - Prefetch (`.kvfs/prefetch`). A write names paths (one a line, relative
 *    to the mount root; an optional first line `#wait`). Each is checked
 *    against the writer's credentials the way the kernel would check an
 *    open for reading (search permission on every local directory on the
 *    way, read permission on the file), then sorted: already in DRAM or
 *    still being written (present), only on local NVMe (queued: promote),
 *    not here but named by the cluster index for a live peer or in this
 *    node's lent memory (queued: fetch), or nowhere (missing — a count,
 *    never an error for the batch). Queued work goes to a fixed pool of
 *    worker threads (the concurrency bound) and is charged against a byte
 *    budget (the bytes bound): a path that would pass it is dropped and
 *    counted. A fetched file's size is unknown until it arrives, so it is
 *    charged the size of the last file fetched (a block of the same model,
 *    in practice). Workers bring bytes into DRAM through the tiers' normal
 *    placement, which never evicts a pinned, open or leased file. The
 *    answer read back is one `name count` line per outcome; with `#wait`
 *    the write returns once the batch's work is done (at most
 *    PF_WAIT_MAX_NS, and only while fewer than half the FUSE threads are
 *    waiting so) and the answer adds what the workers did and what is still
 *    pending.
 *  - Match (`.kvfs/match`). A write names a chain of paths; the answer is
 *    which live nodes hold how long a prefix of it (remote_match: one
 *    pipelined index round trip), one `node blocks fast_blocks tier self`
 *    line each. The index and the cluster token stay inside the daemon.
 *  - Push (`user.kvfs.push` on a directory). Files sealed directly in that
 *    directory are also written into the named peer's lent memory (a
 *    replica it publishes as "lent"), by one background thread in seal
 *    order. A push that cannot be placed (peer unknown, dead or without
 *    room, or the transfer failed) leaves the file where it is — it is
 *    always kept locally — and is counted as a fallback.
 *
 * Locking: dg->lock guards the queues, the batches and the push rules; it
 * is never held across tier, namespace or network calls. Workers hold an
 * inode reference for a local item; remote items are paths.
 */
#include <errno.h>
#include <stdarg.h>
#include <time.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/log.h"
#include "core/util.h"
#include "fs/fs_i.h"
#include "rdma/remote.h"

#define PF_WAIT_MAX_NS	 (30ull * 1000000000ull)
#define PF_MAX_REQ_PATHS 65536
#define PUSH_RULES	 64
#define PUSH_QUEUE_MAX	 65536
#define DG_MATCH_MAX	 256 /* nodes in a match answer */

/* One prefetch write: what its paths came to, for `#wait`. */
struct pf_batch {
	unsigned refs;	  /* the writer's while it waits, one per queued item */
	unsigned pending; /* queued items not done */
	uint64_t fetched, promoted, failed;
};

#define PF_WAITERS 8

struct pf_item {
	struct pf_item *next, *prev_fly, *next_fly; /* queue; in-flight list */
	struct pf_batch *b[PF_WAITERS];		    /* batches that wait for it */
	unsigned nb;
	struct kvfs_inode *in; /* local: referenced; NULL: fetch @path */
	uint64_t charge;       /* bytes charged against the budget */
	char path[];
};

struct push_rule {
	uint64_t dir_ino; /* 0: free */
	char node[REMOTE_NODE_ID_MAX];
};

struct push_item {
	struct push_item *next;
	struct kvfs_inode *in; /* referenced */
	char node[REMOTE_NODE_ID_MAX];
};

struct dg {
	struct kvfs_fs *fs;
	pthread_mutex_t lock;
	pthread_cond_t work, done;
	bool stop;
	/* prefetch */
	struct pf_item *head, *tail;
	struct pf_item *flying; /* taken by a worker, not done */
	unsigned depth;
	uint64_t charged;    /* bytes queued or in flight */
	uint64_t last_fetch; /* size of the last fetched file (the charge estimate) */
	unsigned nthreads;
	pthread_t *threads;
	unsigned waiters; /* `#wait` writes waiting (each holds a FUSE thread) */
	/* push */
	struct push_rule rules[PUSH_RULES];
	struct push_item *phead, *ptail;
	unsigned pdepth;
	pthread_t pusher;
	bool pusher_started;
};

/* --- credentials ----------------------------------------------------------------- */

static bool dg_may(struct kvfs_inode *in, const struct kvfs_cred *c, unsigned mask)
{
	return ns_may(in, c->uid, c->gid, c->groups, c->ngroups, mask);
}

/* --- request parsing -------------------------------------------------------------- */

/*
 * The next line of @buf[*pos..len) as a path relative to the mount root
 * into @out: a leading '/' or "./" is dropped; empty lines are skipped.
 * @return 1 with a path, 0 at the end, -EINVAL for a path with "." or ".."
 * components, an empty component, a NUL, or one that names `.kvfs`.
 */
static int next_path(const char *buf, size_t len, size_t *pos, char *out, size_t cap)
{
	while (*pos < len) {
		const char *s = buf + *pos, *nl = memchr(s, '\n', len - *pos);
		size_t l = nl ? (size_t)(nl - s) : len - *pos;

		*pos += l + (nl != NULL);
		for (;;) {
			if (l && s[0] == '/') {
				s++, l--;
			} else if (l >= 2 && s[0] == '.' && s[1] == '/') {
				s += 2, l -= 2;
			} else {
				break;
			}
		}
		if (l == 0)
			continue;
		if (l >= cap || memchr(s, '\0', l))
			return -EINVAL;
		memcpy(out, s, l);
		out[l] = '\0';
		for (char *c = out, *e; *c; c = *e ? e + 1 : e) {
			e = strchrnul(c, '/');
			if (e == c || (e - c == 1 && c[0] == '.') ||
			    (e - c == 2 && c[0] == '.' && c[1] == '.') || e - c > KVFS_NAME_MAX)
				return -EINVAL;
		}
		if (strcmp(out, KVFS_CTL_NAME) == 0 || strncmp(out, KVFS_CTL_NAME "/", 6) == 0)
			return -EINVAL;
		return 1;
	}
	return 0;
}

/* --- prefetch ----------------------------------------------------------------------- */

enum pf_local { PF_PRESENT, PF_LOCAL, PF_ABSENT, PF_DENIED };

/*
 * Resolve @path for @cred. PF_LOCAL: an NVMe-only sealed file, referenced
 * in *out with its size in *size; PF_ABSENT: not here (the cluster may have
 * it); PF_PRESENT: in DRAM already, or being written; PF_DENIED.
 */
static enum pf_local pf_resolve(struct kvfs_fs *fs, const struct kvfs_cred *cred, char *path,
				struct kvfs_inode **out, uint64_t *size)
{
	struct kvfs_inode *cur = fs->root, *next;
	enum pf_local res = PF_ABSENT;
	char *p = path;

	ns_get(cur, 1);
	for (;;) {
		char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);

		if (cur->kind != KIND_DIR) { /* "file/x": no such path here */
			ns_put(fs, cur, 1);
			return PF_ABSENT;
		}
		if (!dg_may(cur, cred, 1)) {
			res = PF_DENIED;
			break;
		}
		next = ns_lookup(fs, cur, p, len);
		ns_put(fs, cur, 1);
		cur = next;
		if (!cur)
			return PF_ABSENT;
		if (!slash)
			break;
		p = slash + 1;
	}
	if (res != PF_ABSENT || cur->kind != KIND_FILE) {
		ns_put(fs, cur, 1);
		return res;
	}
	if (!dg_may(cur, cred, 4)) {
		ns_put(fs, cur, 1);
		return PF_DENIED;
	}
	pthread_mutex_lock(&cur->lock);
	res = PF_PRESENT; /* being written, or in DRAM */
	if (cur->data && atomic_load(&cur->sealed) && !cur->invalid &&
	    !(tier_where(cur->data) & TIER_DRAM) && tier_where(cur->data)) {
		res = PF_LOCAL;
		*size = tier_size(cur->data);
	} else if (!cur->data || cur->invalid) {
		res = PF_ABSENT; /* evicted: maybe a peer still has it */
	}
	pthread_mutex_unlock(&cur->lock);
	if (res == PF_LOCAL)
		*out = cur;
	else
		ns_put(fs, cur, 1);
	return res;
}

struct pf_counts {
	uint64_t paths, queued, present, missing, denied, dropped, invalid;
};

static void batch_put_locked(struct pf_batch *b)
{
	if (--b->refs == 0)
		free(b);
}

/*
 * Queue one item (the queue takes the reference on @in), join the same path
 * already queued or in flight (the caller keeps its reference on @in), or
 * drop it if the budget or the queue is full. dg->lock held.
 * @return PF_NEW, PF_JOINED or PF_DROPPED.
 */
enum { PF_DROPPED, PF_NEW, PF_JOINED };

static int pf_enqueue_locked(struct dg *dg, struct pf_batch *b, struct kvfs_inode *in,
			     const char *path, uint64_t charge)
{
	const struct kvfs_config *c = &dg->fs->cfg;
	size_t pl = strlen(path);
	struct pf_item *it;

	/* Asked again while queued or in flight: wait for that one, fetch once. */
	for (int l = 0; l < 2; l++)
		for (it = l ? dg->flying : dg->head; it; it = l ? it->next_fly : it->next)
			if (strcmp(it->path, path) == 0 && it->nb < PF_WAITERS) {
				it->b[it->nb++] = b;
				b->refs++;
				b->pending++;
				return PF_JOINED;
			}
	if (dg->stop || dg->depth >= c->prefetch_queue ||
	    (dg->charged && dg->charged + charge > c->prefetch_bytes) || charge > c->prefetch_bytes)
		return PF_DROPPED;
	it = malloc(sizeof(*it) + pl + 1);
	if (!it)
		return PF_DROPPED;
	memcpy(it->path, path, pl + 1);
	it->next = it->prev_fly = it->next_fly = NULL;
	it->b[0] = b;
	it->nb = 1;
	it->in = in;
	it->charge = charge;
	b->refs++;
	b->pending++;
	dg->charged += charge;
	dg->depth++;
	if (dg->tail)
		dg->tail->next = it;
	else
		dg->head = it;
	dg->tail = it;
	pthread_cond_broadcast(&dg->work); /* the pusher waits on it too */
	return PF_NEW;
}

/*
 * Fetch @path from the cluster, making local directories on the way (as
 * lookups do). @return 0; -EEXIST if it was here already; -ENOENT.
 */
static int pf_fetch(struct kvfs_fs *fs, const char *item_path, uint64_t *size)
{
	struct kvfs_inode *cur = fs->root, *next;
	bool here = false;		/* the file was local by the time we looked */
	char path[PATH_MAX], *p = path; /* cut up here: the item's own is read by others */
	int rc = 0;

	snprintf(path, sizeof(path), "%s", item_path);
	ns_get(cur, 1);
	for (;;) {
		char *slash = strchr(p, '/');

		if (slash)
			*slash = '\0';
		next = cur->kind == KIND_DIR ? ns_lookup(fs, cur, p, strlen(p)) : NULL;
		here = next != NULL;
		if (!next && cur->kind == KIND_DIR && rmt_fetch(fs, cur, p, &next) != 0)
			next = NULL;
		if (slash)
			*slash = '/';
		ns_put(fs, cur, 1);
		cur = next;
		if (!cur)
			return -ENOENT;
		if (!slash)
			break;
		p = slash + 1;
	}
	if (cur->kind != KIND_FILE) {
		rc = -ENOENT;
	} else {
		pthread_mutex_lock(&cur->lock);
		if (here)
			rc = -EEXIST; /* fetched meanwhile (by a lookup, or another batch) */
		*size = cur->data ? tier_size(cur->data) : 0;
		pthread_mutex_unlock(&cur->lock);
	}
	ns_put(fs, cur, 1);
	return rc;
}

/*
 * @in's sealed, valid bytes, leased and referenced (and their checksum, if
 * known, in *xxh with *have_xxh), or NULL if there are none.
 */
static tier_obj *lease_sealed(struct kvfs_inode *in, uint64_t *xxh, bool *have_xxh)
{
	tier_obj *o = NULL;

	pthread_mutex_lock(&in->lock);
	if (in->data && atomic_load(&in->sealed) && !in->invalid && tier_lease(in->data) == 0) {
		o = in->data;
		tier_obj_get(o);
		*have_xxh = in->xxh_ok;
		*xxh = in->xxh;
	}
	pthread_mutex_unlock(&in->lock);
	return o;
}

/* Bring a local NVMe-only file into DRAM. @return 0 or -errno. */
static int pf_promote(struct kvfs_inode *in, uint64_t *size)
{
	uint64_t xxh;
	bool have;
	tier_obj *o = lease_sealed(in, &xxh, &have);
	int rc;

	if (!o)
		return -ENOENT;
	*size = tier_size(o);
	rc = tier_where(o) & TIER_DRAM ? 0 : tier_promote(o);
	tier_unlease(o);
	tier_obj_put(o);
	return rc;
}

static void *pf_worker(void *arg)
{
	struct dg *dg = arg;
	struct kvfs_fs *fs = dg->fs;

	pthread_mutex_lock(&dg->lock);
	for (;;) {
		struct pf_item *it = dg->head;
		uint64_t size = 0;
		bool fetched = false, already = false, stop;
		int rc;

		if (!it) {
			if (dg->stop)
				break;
			pthread_cond_wait(&dg->work, &dg->lock);
			continue;
		}
		dg->head = it->next;
		if (!dg->head)
			dg->tail = NULL;
		dg->depth--;
		it->next_fly = dg->flying;
		if (dg->flying)
			dg->flying->prev_fly = it;
		dg->flying = it;
		stop = dg->stop;
		pthread_mutex_unlock(&dg->lock);
		if (stop) {
			rc = -ECANCELED;
		} else if (it->in) {
			rc = pf_promote(it->in, &size);
		} else {
			rc = pf_fetch(fs, it->path, &size);
			fetched = rc == 0;
			already = rc == -EEXIST;
			if (already)
				rc = 0;
		}
		if (it->in)
			ns_put(fs, it->in, 1);
		if (rc)
			atomic_fetch_add(&fs->ctr.pf_failed, 1);
		else if (fetched)
			atomic_fetch_add(&fs->ctr.pf_fetched, 1);
		else if (!already)
			atomic_fetch_add(&fs->ctr.pf_promoted, 1);
		if (!rc && !already)
			atomic_fetch_add(&fs->ctr.pf_bytes, size);
		pthread_mutex_lock(&dg->lock);
		if (it->prev_fly)
			it->prev_fly->next_fly = it->next_fly;
		else
			dg->flying = it->next_fly;
		if (it->next_fly)
			it->next_fly->prev_fly = it->prev_fly;
		dg->charged -= KVFS_MIN(dg->charged, it->charge);
		if (fetched && size)
			dg->last_fetch = size;
		for (unsigned i = 0; i < it->nb; i++) {
			struct pf_batch *b = it->b[i];

			if (rc)
				b->failed++;
			else if (fetched)
				b->fetched++;
			else if (!already)
				b->promoted++;
			b->pending--;
			batch_put_locked(b);
		}
		pthread_cond_broadcast(&dg->done);
		free(it);
	}
	pthread_mutex_unlock(&dg->lock);
	return NULL;
}

static int answer(char **out, size_t *outlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int answer(char **out, size_t *outlen, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vasprintf(out, fmt, ap);
	va_end(ap);
	if (n < 0) {
		*out = NULL;
		return -ENOMEM;
	}
	*outlen = (size_t)n;
	return 0;
}

int dg_prefetch(struct kvfs_fs *fs, const struct kvfs_cred *cred, const char *buf, size_t len,
		char **out, size_t *outlen)
{
	struct dg *dg = fs->dg;
	struct pf_counts n = {0};
	struct pf_batch *b;
	char **remote_paths = NULL, path[PATH_MAX];
	size_t nremote = 0, cap = 0, pos = 0;
	bool wait = false, index_down = false;
	int rc = 0, k;

	if (!dg)
		return -ENOTSUP;
	if (len >= 5 && memcmp(buf, "#wait", 5) == 0 && (len == 5 || buf[5] == '\n')) {
		wait = true;
		pos = len == 5 ? 5 : 6;
	}
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->refs = 1;
	atomic_fetch_add(&fs->ctr.pf_requests, 1);
	while ((k = next_path(buf, len, &pos, path, sizeof(path))) != 0) {
		struct kvfs_inode *in = NULL;
		uint64_t size = 0;
		int queued;

		if (++n.paths > PF_MAX_REQ_PATHS) {
			rc = -E2BIG;
			goto out;
		}
		if (k < 0) {
			n.invalid++;
			continue;
		}
		switch (pf_resolve(fs, cred, path, &in, &size)) {
		case PF_PRESENT:
			n.present++;
			break;
		case PF_DENIED:
			n.denied++;
			break;
		case PF_LOCAL:
			pthread_mutex_lock(&dg->lock);
			queued = pf_enqueue_locked(dg, b, in, path, size);
			pthread_mutex_unlock(&dg->lock);
			if (queued != PF_NEW)
				ns_put(fs, in, 1);
			if (queued == PF_DROPPED)
				n.dropped++;
			else
				n.queued++;
			break;
		case PF_ABSENT:
			if (nremote == cap) {
				char **p = realloc(remote_paths,
						   (cap = cap ? cap * 2 : 64) * sizeof(*p));

				if (!p) {
					rc = -ENOMEM;
					goto out;
				}
				remote_paths = p;
			}
			if (!(remote_paths[nremote] = strdup(path))) {
				rc = -ENOMEM;
				goto out;
			}
			nremote++;
			break;
		}
	}
	if (nremote) {
		struct remote_loc *loc = calloc(nremote, sizeof(*loc));
		remote *r;

		if (!loc) {
			rc = -ENOMEM;
			goto out;
		}
		r = rmt_hold(fs);
		k = r ? remote_locate(r, (const char *const *)remote_paths, nremote, loc)
		      : -ENOTCONN;
		rmt_unhold(fs);
		index_down = r && k != 0;
		for (size_t i = 0; i < nremote; i++) {
			int q;

			if (k ||
			    !(loc[i].holders || (loc[i].self_tiers & (1u << REMOTE_TIER_LENT)))) {
				n.missing++;
				continue;
			}
			pthread_mutex_lock(&dg->lock);
			q = pf_enqueue_locked(dg, b, NULL, remote_paths[i], dg->last_fetch);
			pthread_mutex_unlock(&dg->lock);
			if (q == PF_DROPPED)
				n.dropped++;
			else
				n.queued++;
		}
		free(loc);
	}
	atomic_fetch_add(&fs->ctr.pf_paths, n.paths);
	atomic_fetch_add(&fs->ctr.pf_queued, n.queued);
	atomic_fetch_add(&fs->ctr.pf_present, n.present);
	atomic_fetch_add(&fs->ctr.pf_missing, n.missing + n.invalid);
	atomic_fetch_add(&fs->ctr.pf_denied, n.denied);
	atomic_fetch_add(&fs->ctr.pf_dropped, n.dropped);
	pthread_mutex_lock(&dg->lock);
	/*
	 * A waiting write holds a FUSE worker thread: at most half of them wait
	 * at once, so waiters (whoever sends them) never stall the mount. The
	 * others are answered at once, with what is still pending.
	 */
	if (wait && dg->waiters < KVFS_MAX(1u, fs->cfg.threads / 2)) {
		struct timespec ts;

		dg->waiters++;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)(PF_WAIT_MAX_NS / 1000000000ull);
		while (b->pending && pthread_cond_timedwait(&dg->done, &dg->lock, &ts) != ETIMEDOUT)
			;
		dg->waiters--;
	}
	rc = answer(out, outlen,
		    "queued %llu\npresent %llu\nmissing %llu\ndenied %llu\ndropped %llu\n"
		    "invalid %llu\nindex %s\n",
		    (unsigned long long)n.queued, (unsigned long long)n.present,
		    (unsigned long long)n.missing, (unsigned long long)n.denied,
		    (unsigned long long)n.dropped, (unsigned long long)n.invalid,
		    index_down ? "unreachable" : "ok");
	if (!rc && wait) {
		char *more = NULL;
		size_t ml = 0;

		rc = answer(&more, &ml, "%sfetched %llu\npromoted %llu\nfailed %llu\npending %u\n",
			    *out, (unsigned long long)b->fetched, (unsigned long long)b->promoted,
			    (unsigned long long)b->failed, b->pending);
		free(*out);
		*out = more;
		*outlen = ml;
	}
	pthread_mutex_unlock(&dg->lock);
out:
	pthread_mutex_lock(&dg->lock);
	batch_put_locked(b);
	pthread_mutex_unlock(&dg->lock);
	for (size_t i = 0; i < nremote; i++)
		free(remote_paths[i]);
	free(remote_paths);
	return rc;
}

/* --- cluster prefix match -------------------------------------------------------------- */

int dg_match(struct kvfs_fs *fs, const char *buf, size_t len, char **out, size_t *outlen)
{
	struct remote_node_match nodes[DG_MATCH_MAX];
	char **paths = NULL, path[PATH_MAX];
	size_t n = 0, cap = 0, pos = 0, used = 0;
	char *ans = NULL;
	remote *r;
	int rc = 0, k, got = 0;

	while ((k = next_path(buf, len, &pos, path, sizeof(path))) != 0) {
		if (k < 0 || n >= PF_MAX_REQ_PATHS) {
			rc = k < 0 ? k : -E2BIG;
			goto out;
		}
		if (n == cap) {
			char **p = realloc(paths, (cap = cap ? cap * 2 : 64) * sizeof(*p));

			if (!p) {
				rc = -ENOMEM;
				goto out;
			}
			paths = p;
		}
		if (!(paths[n] = strdup(path))) {
			rc = -ENOMEM;
			goto out;
		}
		n++;
	}
	if (n == 0) {
		rc = -EINVAL;
		goto out;
	}
	r = rmt_hold(fs);
	got = r ? remote_match(r, (const char *const *)paths, n, nodes, DG_MATCH_MAX) : -ENOTSUP;
	rmt_unhold(fs);
	if (got < 0) {
		rc = got;
		goto out;
	}
	ans = malloc((size_t)(got < DG_MATCH_MAX ? got : DG_MATCH_MAX) * 128 + 64);
	if (!ans) {
		rc = -ENOMEM;
		goto out;
	}
	used = (size_t)sprintf(ans, "chain %zu\n", n);
	for (int i = 0; i < got && i < DG_MATCH_MAX; i++)
		used += (size_t)sprintf(ans + used, "node %s %u %u %s %d\n", nodes[i].node,
					nodes[i].blocks, nodes[i].fast_blocks,
					rmt_tier_name(nodes[i].slowest), nodes[i].self);
	*out = ans;
	*outlen = used;
	atomic_fetch_add(&fs->ctr.cluster_matches, 1);
out:
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
	return rc;
}

/* --- push ------------------------------------------------------------------------------- */

int dg_push_set(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *val, size_t len)
{
	struct dg *dg = fs->dg;
	char node[REMOTE_NODE_ID_MAX];
	int rc = -ENOSPC, free_slot = -1;

	if (!dg || !fs->cfg.cluster)
		return -ENOTSUP;
	if (dir->kind != KIND_DIR)
		return -ENOTDIR;
	while (len && (val[len - 1] == '\n' || val[len - 1] == '\0'))
		len--;
	if (len >= sizeof(node))
		return -EINVAL;
	memcpy(node, val, len);
	node[len] = '\0';
	for (size_t i = 0; i < len; i++)
		if (!((node[i] >= 'a' && node[i] <= 'z') || (node[i] >= 'A' && node[i] <= 'Z') ||
		      (node[i] >= '0' && node[i] <= '9') || strchr("._-", node[i])))
			return -EINVAL;
	pthread_mutex_lock(&dg->lock);
	for (int i = 0; i < PUSH_RULES; i++) {
		if (dg->rules[i].dir_ino == dir->ino) {
			if (len)
				snprintf(dg->rules[i].node, sizeof(dg->rules[i].node), "%s", node);
			else
				dg->rules[i].dir_ino = 0;
			rc = 0;
			goto out;
		}
		if (!dg->rules[i].dir_ino && free_slot < 0)
			free_slot = i;
	}
	if (!len) {
		rc = 0;
	} else if (free_slot >= 0) {
		dg->rules[free_slot].dir_ino = dir->ino;
		snprintf(dg->rules[free_slot].node, sizeof(dg->rules[free_slot].node), "%s", node);
		rc = 0;
	}
out:
	pthread_mutex_unlock(&dg->lock);
	return rc;
}

int dg_push_get(struct kvfs_fs *fs, struct kvfs_inode *dir, char *buf, size_t len)
{
	struct dg *dg = fs->dg;
	int rc = -ENODATA;

	if (!dg)
		return -ENODATA;
	pthread_mutex_lock(&dg->lock);
	for (int i = 0; i < PUSH_RULES; i++)
		if (dg->rules[i].dir_ino && dg->rules[i].dir_ino == dir->ino) {
			rc = snprintf(buf, len, "%s", dg->rules[i].node);
			break;
		}
	pthread_mutex_unlock(&dg->lock);
	return rc;
}

void dg_sealed_locked(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	struct dg *dg = fs->dg;
	struct push_item *it;
	uint64_t dir_ino;
	int rule = -1;

	if (!dg || !in->parent || in->kind != KIND_FILE)
		return;
	dir_ino = in->parent->ino;
	pthread_mutex_lock(&dg->lock);
	for (int i = 0; i < PUSH_RULES && rule < 0; i++)
		if (dg->rules[i].dir_ino == dir_ino)
			rule = i;
	if (rule < 0 || dg->stop || dg->pdepth >= PUSH_QUEUE_MAX || !(it = malloc(sizeof(*it)))) {
		if (rule >= 0)
			atomic_fetch_add(&fs->ctr.push_fallbacks, 1);
		pthread_mutex_unlock(&dg->lock);
		return;
	}
	ns_get(in, 1);
	it->in = in;
	it->next = NULL;
	snprintf(it->node, sizeof(it->node), "%s", dg->rules[rule].node);
	if (dg->ptail)
		dg->ptail->next = it;
	else
		dg->phead = it;
	dg->ptail = it;
	dg->pdepth++;
	pthread_cond_broadcast(&dg->work);
	pthread_mutex_unlock(&dg->lock);
}

/* Push one file. @return 0 or -errno (the file stays local either way). */
static int push_one(struct kvfs_fs *fs, struct kvfs_inode *in, const char *node, uint64_t *size)
{
	char path[PATH_MAX];
	struct iovec *iov = NULL;
	tier_obj *o = NULL;
	uint64_t xxh = 0;
	bool have_xxh = false;
	size_t max;
	remote *r;
	int n, rc;

	pthread_mutex_lock(&fs->lock);
	n = in->linked ? ns_path_locked(fs, in, path, sizeof(path)) : -ENOENT;
	pthread_mutex_unlock(&fs->lock);
	if (n <= 0)
		return -ENOENT;
	o = lease_sealed(in, &xxh, &have_xxh);
	if (!o)
		return -ENOENT;
	*size = tier_size(o);
	max = *size / tier_page_size(fs->tier) + 2;
	iov = malloc(max * sizeof(*iov));
	n = iov ? tier_read_iov(o, 0, *size, iov, (int)max) : -ENOMEM;
	if (n == -ENODATA && tier_promote(o) == 0)
		n = tier_read_iov(o, 0, *size, iov, (int)max);
	if (n <= 0) {
		rc = n ? n : -ENOENT;
		goto out;
	}
	if (!have_xxh) {
		xxh = remote_checksum(iov, n);
		pthread_mutex_lock(&in->lock);
		in->xxh = xxh;
		in->xxh_ok = true;
		pthread_mutex_unlock(&in->lock);
	}
	r = rmt_hold(fs);
	rc = r ? remote_push(r, node, path, iov, n, xxh) : -ENOTCONN;
	rmt_unhold(fs);
out:
	free(iov);
	tier_unlease(o);
	tier_obj_put(o);
	return rc;
}

static void *pusher(void *arg)
{
	struct dg *dg = arg;
	struct kvfs_fs *fs = dg->fs;

	pthread_mutex_lock(&dg->lock);
	for (;;) {
		struct push_item *it = dg->phead;
		uint64_t size = 0;
		bool stop;
		int rc;

		if (!it) {
			if (dg->stop)
				break;
			pthread_cond_wait(&dg->work, &dg->lock);
			continue;
		}
		dg->phead = it->next;
		if (!dg->phead)
			dg->ptail = NULL;
		dg->pdepth--;
		stop = dg->stop;
		pthread_mutex_unlock(&dg->lock);
		rc = stop ? -ECANCELED : push_one(fs, it->in, it->node, &size);
		if (rc == 0) {
			atomic_fetch_add(&fs->ctr.pushed, 1);
			atomic_fetch_add(&fs->ctr.pushed_bytes, size);
		} else {
			atomic_fetch_add(&fs->ctr.push_fallbacks, 1);
			log_debug("push to %s failed (%s): kept local", it->node, strerror(-rc));
		}
		ns_put(fs, it->in, 1);
		free(it);
		pthread_mutex_lock(&dg->lock);
		pthread_cond_broadcast(&dg->done);
	}
	pthread_mutex_unlock(&dg->lock);
	return NULL;
}

/* --- start, stop ------------------------------------------------------------------------- */

int dg_start(struct kvfs_fs *fs)
{
	struct dg *dg = calloc(1, sizeof(*dg));
	int rc = 0;

	if (!dg)
		return -ENOMEM;
	dg->fs = fs;
	pthread_mutex_init(&dg->lock, NULL);
	pthread_cond_init(&dg->work, NULL);
	pthread_cond_init(&dg->done, NULL);
	dg->threads = calloc(fs->cfg.prefetch_threads, sizeof(*dg->threads));
	if (!dg->threads) {
		free(dg);
		return -ENOMEM;
	}
	for (; dg->nthreads < fs->cfg.prefetch_threads; dg->nthreads++) {
		rc = -pthread_create(&dg->threads[dg->nthreads], NULL, pf_worker, dg);
		if (rc)
			break;
	}
	if (!rc && fs->cfg.cluster) {
		rc = -pthread_create(&dg->pusher, NULL, pusher, dg);
		dg->pusher_started = !rc;
	}
	fs->dg = dg;
	if (rc)
		dg_stop(fs);
	return rc;
}

void dg_stop(struct kvfs_fs *fs)
{
	struct dg *dg = fs->dg;

	if (!dg)
		return;
	pthread_mutex_lock(&dg->lock);
	dg->stop = true;
	pthread_cond_broadcast(&dg->work);
	pthread_mutex_unlock(&dg->lock);
	for (unsigned i = 0; i < dg->nthreads; i++)
		pthread_join(dg->threads[i], NULL);
	if (dg->pusher_started)
		pthread_join(dg->pusher, NULL);
	/* Workers drained their queues (cancelled items) before leaving. */
	fs->dg = NULL;
	pthread_cond_destroy(&dg->done);
	pthread_cond_destroy(&dg->work);
	pthread_mutex_destroy(&dg->lock);
	free(dg->threads);
	free(dg);
}
