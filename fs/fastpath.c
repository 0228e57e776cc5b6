/*
 * fs/fastpath.c — the daemon's side of the engine fast path (core/ring.h).
 *
 * Owns the registrations under `.kvfs/iovs/`: shared-memory rings and data
 * buffers of engine processes, each mapped here from the memfd the engine
 * named in its own descriptor table; the ring servers; and the reaper.
 *
 * Memory. Only a memfd sealed with F_SEAL_SHRINK (and not on hugetlbfs) is
 * accepted: the daemon keeps it mapped, and a file that shrank under the
 * mapping would make the next access a SIGBUS that kills the daemon.
 * (Growth is harmless: the mapping covers the size at registration.) The
 * mapping is not populated: a sparse buffer costs the daemon nothing until
 * bytes are copied into it.
 *
 * Limits, per user (uid): rings (--fp-rings), buffers (--fp-buffers) and
 * the bytes of both (--fp-bytes); a registration past one fails with
 * EDQUOT. Charged when a registration is listed, given back when it is
 * taken off the list.
 *
 * Servers. A fixed pool of at most --fp-threads threads serves every ring,
 * each thread up to RINGS_PER_WORKER of them in turn; a new ring goes to
 * an idle thread, a new thread while there are fewer than the pool's size,
 * else the least loaded; when all are full it fails with ENFILE. An idle
 * server sleeps on every ring's `server_sleeping` word at once
 * (futex_waitv). A request is taken off a ring only when its completion
 * queue has room, so a server never waits on an engine.
 *
 * Reclamation. The reaper thread looks every REAP_MS for registrations
 * whose process is gone (killed, or exited without unregistering) and takes
 * them off the list.
 *
 * Credentials. A registration records the registering process (its thread
 * group and start time, so a recycled pid is not mistaken for it) and its
 * uid, gid and supplementary groups, read from /proc when the FUSE request
 * arrived. Every request on a ring is checked against them the way the
 * kernel checks the same access through the mount (default_permissions):
 * search permission on every directory of a namespace path, read permission
 * on each block matched, write and search permission on a directory to save
 * into it. A ring may use only buffers its own process registered.
 *
 * Trust. Ring memory is shared with the engine: an SQE is copied before use,
 * and every id, offset and length is checked against what the daemon owns;
 * a bad request fails alone with -EINVAL/-EBADF/-EFAULT/-E2BIG and the ring
 * goes on.
 *
 * Blocks. MATCH leases the matched files (tier_lease), so they are not
 * evicted until RELEASE (or until the ring goes away); READ copies their
 * bytes from their DRAM files straight into an engine buffer, one copy. SAVE
 * creates `<namespace>/<key hex>`, copies the block in from an engine
 * buffer, and seals it through the same path as a close (native blocks are
 * validated; an invalid one is removed and the request fails with EBADMSG).
 *
 * Device memory. A dev.<> registration is a sealed record naming an
 * engine's GPU allocation by its IPC handle (core/ring.h); the daemon maps
 * it on its --gpu device (gpupool.c) and READs into it, or SAVE_DEVs out of
 * it, with batched copies on the ring's own stream, completing a request
 * only after the stream has passed it. The permission rules above apply
 * unchanged; a stand-in handle must be the registering process's own.
 *
 * Locking: fp_lock guards the registration list, the per-user charges and
 * the pool; a worker's lock guards its ring table (taken after fp_lock). A
 * buffer in use by a ring server is referenced, and its mapping outlives
 * its unregistration until the last reference goes. A ring's tables
 * (namespaces, matches) belong to its server thread alone; the worker holds
 * a reference to each of its rings until it has let go of those tables.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <linux/magic.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/log.h"
#include "core/ring.h"
#include "core/util.h"
#include "fs/fs_i.h"
#include "gpu/gpu.h"
#include "kvfs/format.h"

/* kvfs_ring_ns_path() checks components against NAME_MAX. */
_Static_assert(KVFS_NAME_MAX == NAME_MAX, "namespace names and NAME_MAX differ");

#define SPIN_NS       (50ull * 1000)   /* poll this long after the last request */
#define SLEEP_MS      500              /* then sleep at most this long */
#define BATCH         16               /* requests served from one ring in a turn */
#define REAP_MS       500              /* the reaper's period */
#define MAX_GROUPS    64
#define MAX_IOV       64
/* futex_waitv() takes 128 words: a worker's rings and its own wake word. */
#define RINGS_PER_WORKER (FUTEX_WAITV_MAX - 1)

enum reg_kind { REG_RING, REG_BUF, REG_DEV };

struct fp_match {
	bool used;
	uint32_t n;
	struct kvfs_inode **inodes;
	tier_obj **objs;
	uint64_t *sizes;
};

struct fp_reg {
	struct cds_list_head link;
	char name[KVFS_NAME_MAX + 1];
	enum reg_kind kind;
	uint32_t id;
	pid_t tgid;
	uint64_t start_time; /* of tgid, from /proc/<tgid>/stat */
	uid_t uid;
	gid_t gid;
	gid_t groups[MAX_GROUPS];
	int ngroups;
	uint8_t *mem;
	size_t size;
	_Atomic int refs;       /* the list's, and each user's */
	struct kvfs_inode *inode; /* the symlink the kernel sees */

	/* dev.<>: the engine's device memory, mapped on one of our --gpu devices */
	gpu_dev *gdev;
	uint8_t *dev_map; /* the exported allocation, as mapped */
	uint8_t *dev_mem; /* where the registered memory starts in it */

	/* rings: the geometry as checked at registration (never reread) */
	struct kvfs_fs *fs;
	uint32_t sq_entries, cq_entries;
	uint64_t sq_off, cq_off, data_off, data_bytes;
	bool listed; /* on fp_regs and charged to its user (fp_lock) */
	uint32_t sq_head, cq_tail; /* ours, kept here: shared memory is not trusted */
	_Atomic bool stop;
	struct kvfs_inode *ns[KVFS_RING_MAX_NS];
	struct fp_match *matches; /* KVFS_RING_MAX_MATCHES */
	/* rings: copies into device memory, made at the first */
	gpu_dev *stream_dev;
	gpu_stream *stream;
	uint8_t *bounce; /* NVMe bytes on their way to a device */
	struct {         /* copies waiting to go as one batch (batch_add) */
		void **dst;
		const void **src;
		size_t *len;
		unsigned n;
		enum gpu_dir dir;
	} batch;
};

/* A ring server thread and the rings it serves. */
struct fp_worker {
	pthread_t thread;
	pthread_mutex_t lock; /* rings, nrings */
	struct fp_reg *rings[RINGS_PER_WORKER];
	unsigned nrings;
	_Atomic uint32_t wake; /* a futex: bumped when a ring is added, or to stop */
	_Atomic bool stop;
};

/* What a user has registered (fp_lock). */
struct fp_user {
	uid_t uid;
	uint32_t rings, bufs;
	uint64_t bytes;
};

static pthread_mutex_t fp_lock = PTHREAD_MUTEX_INITIALIZER;
static CDS_LIST_HEAD(fp_regs);
static struct fp_user *users;
static size_t nusers, cap_users;
static struct fp_worker *workers;
static unsigned nworkers;
static pthread_t reaper;
static bool reaper_started, reaper_stop;
static pthread_cond_t reaper_cond;
/*
 * Inodes of registrations that are gone while the kernel may still hold a
 * lookup of them (it forgets when it likes, and not at all at unmount):
 * each keeps the registration's reference here until only that one is
 * left, and all are let go at shutdown, when the kernel is gone (fp_lock).
 */
static struct kvfs_inode **retired;
static size_t nretired, cap_retired;

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
	return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
}

/* --- processes and credentials -------------------------------------------------- */

/* Read Tgid, Uid, Gid and Groups of @pid from /proc. */
static int read_creds(pid_t pid, struct fp_reg *r)
{
	char path[64], line[1024];
	FILE *f;
	int found = 0;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f) /* gone; or we are out of descriptors or memory: say so */
		return errno == ENOENT || errno == ESRCH ? -ESRCH : -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "Tgid: %d", &r->tgid) == 1) {
			found |= 1;
		} else if (strncmp(line, "Groups:", 7) == 0) {
			char *p = line + 7, *end;

			r->ngroups = 0;
			for (long g = strtol(p, &end, 10); end != p && r->ngroups < MAX_GROUPS;
			     g = strtol(p, &end, 10)) {
				r->groups[r->ngroups++] = (gid_t)g;
				p = end;
			}
			found |= 2;
		}
	}
	fclose(f);
	return found == 3 ? 0 : -ESRCH;
}

/* When @pid started (/proc/<pid>/stat), or 0 if it is gone or a zombie. */
static uint64_t start_time(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long t = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	p = strrchr(buf, ')');
	/* field 3, the state: a zombie has exited, whether or not it is reaped */
	if (!p || p[1] != ' ' || p[2] == 'Z' || p[2] == 'X')
		return 0;
	/* field 22, starttime: the 20th after the closing parenthesis */
	for (int i = 0; p && i < 20; i++)
		p = strchr(p + 1, ' ');
	if (p)
		sscanf(p + 1, "%llu", &t);
	return t;
}

static bool owner_alive(const struct fp_reg *r)
{
	return start_time(r->tgid) == r->start_time;
}

/* Would the kernel let @r's process access @in with @mask (4 r, 2 w, 1 x)? */
static bool may(const struct fp_reg *r, struct kvfs_inode *in, unsigned mask)
{
	return ns_may(in, r->uid, r->gid, r->groups, r->ngroups, mask);
}

/* --- registrations ---------------------------------------------------------------- */

static void reg_put(struct fp_reg *r)
{
	if (atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	if (r->mem)
		munmap(r->mem, r->size);
	if (r->dev_map)
		gpupool_ipc_close(r->gdev, r->dev_map);
	if (r->stream)
		r->stream_dev->ops->stream_free(r->stream);
	free(r->bounce);
	free(r->batch.dst);
	free(r->batch.src);
	free(r->batch.len);
	free(r->matches);
	free(r);
}

/* A buffer of the process @tgid, referenced; NULL if there is none. */
static struct fp_reg *buf_get(pid_t tgid, uint32_t id)
{
	struct fp_reg *r, *found = NULL;

	pthread_mutex_lock(&fp_lock);
	cds_list_for_each_entry(r, &fp_regs, link)
		if ((r->kind == REG_BUF || r->kind == REG_DEV) && r->tgid == tgid && r->id == id) {
			found = r;
			atomic_fetch_add(&r->refs, 1);
			break;
		}
	pthread_mutex_unlock(&fp_lock);
	return found;
}

/* "ring.<tgid>.<id>", "buf.<tgid>.<id>" or "dev.<tgid>.<id>" (kvfs_ring_reg_name). */
static int parse_name(const char *name, enum reg_kind *kind, pid_t *tgid, uint32_t *id)
{
	uint32_t t;
	int ring, rc = kvfs_ring_reg_name(name, &ring, &t, id);

	if (rc)
		return rc;
	*kind = ring == KVFS_REG_RING ? REG_RING : ring == KVFS_REG_BUF ? REG_BUF : REG_DEV;
	*tgid = (pid_t)t;
	return 0;
}

/* --- limits per user ---------------------------------------------------------------- */

static struct fp_user *user_of_locked(uid_t uid, bool add)
{
	for (size_t i = 0; i < nusers; i++)
		if (users[i].uid == uid)
			return &users[i];
	if (!add)
		return NULL;
	if (nusers == cap_users) {
		size_t nc = cap_users ? 2 * cap_users : 16;
		struct fp_user *p = realloc(users, nc * sizeof(*p));

		if (!p)
			return NULL;
		users = p;
		cap_users = nc;
	}
	users[nusers] = (struct fp_user){.uid = uid};
	return &users[nusers++];
}

/*
 * The bytes @r is charged: its memory. Device memory (dev.<>) is the
 * engine's GPU memory, mapped and not copied; it counts as a buffer only.
 */
static uint64_t charged_bytes(const struct fp_reg *r)
{
	return r->kind == REG_DEV ? 0 : r->size;
}

/* Charge @r to its user (fp_lock held). @return 0, -EDQUOT or -ENOMEM. */
static int charge_locked(struct kvfs_fs *fs, struct fp_reg *r)
{
	struct fp_user *u = user_of_locked(r->uid, true);

	if (!u)
		return -ENOMEM;
	if ((r->kind == REG_RING && u->rings >= fs->cfg.fp_max_rings) ||
	    (r->kind != REG_RING && u->bufs >= fs->cfg.fp_max_bufs) ||
	    charged_bytes(r) > fs->cfg.fp_max_bytes - u->bytes) {
		if (!u->rings && !u->bufs)
			*u = users[--nusers];
		return -EDQUOT;
	}
	if (r->kind == REG_RING)
		u->rings++;
	else
		u->bufs++;
	u->bytes += charged_bytes(r);
	return 0;
}

static void uncharge_locked(struct fp_reg *r)
{
	struct fp_user *u = user_of_locked(r->uid, false);

	if (!u)
		return;
	if (r->kind == REG_RING)
		u->rings--;
	else
		u->bufs--;
	u->bytes -= charged_bytes(r);
	if (!u->rings && !u->bufs)
		*u = users[--nusers];
}

/* --- the ring server --------------------------------------------------------------- */

static void *worker_main(void *arg);
static void *reaper_main(void *arg);

/*
 * Take @r off the list (fp_lock held), give its charge back, and tell its
 * server to let it go. The caller then calls reg_finish() without the lock.
 */
static void reg_unlist(struct fp_reg *r)
{
	cds_list_del_init(&r->link);
	r->listed = false;
	uncharge_locked(r);
	if (r->kind == REG_RING) {
		struct kvfs_ring_hdr *h = (struct kvfs_ring_hdr *)r->mem;

		atomic_store(&r->stop, true);
		atomic_store(&h->closed, 1);
		futex(&h->server_sleeping, FUTEX_WAKE, 1, NULL);
		futex(&h->cq_tail, FUTEX_WAKE, INT32_MAX, NULL);
	}
}

/* Drop retired inodes nobody but us holds any more (fp_lock held). */
static void prune_retired_locked(struct kvfs_fs *fs)
{
	size_t k = 0;

	for (size_t i = 0; i < nretired; i++) {
		if (atomic_load(&retired[i]->refs) == 1)
			ns_put(fs, retired[i], 1);
		else
			retired[k++] = retired[i];
	}
	nretired = k;
}

static void reg_finish(struct kvfs_fs *fs, struct fp_reg *r)
{
	pthread_mutex_lock(&fp_lock);
	prune_retired_locked(fs);
	if (nretired == cap_retired) {
		size_t nc = cap_retired ? 2 * cap_retired : 16;
		struct kvfs_inode **p = realloc(retired, nc * sizeof(*p));

		if (p) {
			retired = p;
			cap_retired = nc;
		}
	}
	if (nretired < cap_retired)
		retired[nretired++] = r->inode; /* keeps the registration's reference */
	else
		ns_put(fs, r->inode, 1);
	pthread_mutex_unlock(&fp_lock);
	reg_put(r);
}


static void worker_wake(struct fp_worker *w)
{
	atomic_fetch_add(&w->wake, 1);
	futex(&w->wake, FUTEX_WAKE_PRIVATE, 1, NULL);
}

/* Hand @r to @w. @return 0, or -ENFILE if @w is full. */
static int pool_give(struct fp_worker *w, struct fp_reg *r)
{
	pthread_mutex_lock(&w->lock);
	if (w->nrings == RINGS_PER_WORKER) {
		pthread_mutex_unlock(&w->lock);
		return -ENFILE;
	}
	atomic_fetch_add(&r->refs, 1); /* the server's */
	w->rings[w->nrings++] = r;
	pthread_mutex_unlock(&w->lock);
	worker_wake(w);
	return 0;
}

/* --- the pool of ring servers ------------------------------------------------------ */

/*
 * Give ring @r to a server (fp_lock held): an idle one, a new one while
 * the pool is not full, else the least loaded. The server takes a reference.
 * @return 0; -ENFILE (every server is full); -ENOMEM; -EAGAIN (no thread).
 */
static int pool_add_locked(struct kvfs_fs *fs, struct fp_reg *r)
{
	struct fp_worker *w = NULL;
	unsigned least = RINGS_PER_WORKER;

	if (!workers) {
		workers = calloc(fs->cfg.fp_threads, sizeof(*workers));
		if (!workers)
			return -ENOMEM;
	}
	for (unsigned i = 0; i < nworkers; i++) {
		unsigned n;

		pthread_mutex_lock(&workers[i].lock);
		n = workers[i].nrings;
		pthread_mutex_unlock(&workers[i].lock);
		if (n < least) {
			least = n;
			w = &workers[i];
		}
	}
	if ((!w || least > 0) && nworkers < fs->cfg.fp_threads) {
		struct fp_worker *nw = &workers[nworkers];

		pthread_mutex_init(&nw->lock, NULL);
		if (pthread_create(&nw->thread, NULL, worker_main, nw)) {
			pthread_mutex_destroy(&nw->lock);
			return w ? pool_give(w, r) : -EAGAIN;
		}
		pthread_setname_np(nw->thread, "kvfs-ring");
		nworkers++;
		w = nw;
	}
	if (!w)
		return -ENFILE;
	return pool_give(w, r);
}

/* Start the reaper if it is not running (fp_lock held). @return 0 or -EAGAIN. */
static int reaper_start_locked(struct kvfs_fs *fs)
{
	pthread_condattr_t ca;

	if (reaper_started)
		return 0;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&reaper_cond, &ca);
	pthread_condattr_destroy(&ca);
	reaper_stop = false;
	if (pthread_create(&reaper, NULL, reaper_main, fs)) {
		pthread_cond_destroy(&reaper_cond);
		return -EAGAIN;
	}
	pthread_setname_np(reaper, "kvfs-reaper");
	reaper_started = true;
	return 0;
}


static void match_free(struct kvfs_fs *fs, struct fp_match *m)
{
	for (uint32_t i = 0; i < m->n; i++) {
		tier_unlease(m->objs[i]);
		tier_obj_put(m->objs[i]);
		ns_put(fs, m->inodes[i], 1);
	}
	free(m->inodes);
	free(m->objs);
	free(m->sizes);
	memset(m, 0, sizeof(*m));
}

static void ring_cleanup(struct fp_reg *r)
{
	for (unsigned i = 0; r->matches && i < KVFS_RING_MAX_MATCHES; i++)
		if (r->matches[i].used)
			match_free(r->fs, &r->matches[i]);
	for (unsigned i = 0; i < KVFS_RING_MAX_NS; i++)
		if (r->ns[i]) {
			ns_put(r->fs, r->ns[i], 1);
			r->ns[i] = NULL;
		}
}

/* Check a ring's header as the engine wrote it (kvfs_ring_check). */
static int ring_check(struct fp_reg *r)
{
	struct kvfs_ring_geom g;
	int rc = kvfs_ring_check(r->mem, r->size, &g);

	if (rc)
		return rc;
	r->sq_entries = g.sq_entries;
	r->cq_entries = g.cq_entries;
	r->sq_off = g.sq_off;
	r->cq_off = g.cq_off;
	r->data_off = g.data_off;
	r->data_bytes = g.data_bytes;
	return 0;
}

/* The geometry checked at registration, for the decoders of core/ring.c. */
static struct kvfs_ring_geom geom(const struct fp_reg *r)
{
	return (struct kvfs_ring_geom){r->sq_entries, r->cq_entries, r->sq_off,
				       r->cq_off,     r->data_off,   r->data_bytes};
}

/* Payload bytes [off, off + len) of the ring's scratch area, or NULL. */
static const uint8_t *payload(struct fp_reg *r, uint64_t off, uint64_t len)
{
	struct kvfs_ring_geom g = geom(r);

	return kvfs_ring_payload(&g, r->mem, off, len);
}

/*
 * A dev.<> registration: the sealed record in @fd names device memory of
 * the engine by its IPC handle; map it on our --gpu device. The record must
 * be sealed, so what was checked is what is used.
 */
static int dev_open(struct kvfs_fs *fs, struct fp_reg *r, int fd)
{
	const int seals = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW;
	struct kvfs_ring_devreg rec;
	int rc;

	if ((fcntl(fd, F_GET_SEALS) & seals) != seals)
		rc = gpu_fail(-EPERM, "the registration record is not sealed");
	else if (pread(fd, &rec, sizeof(rec), 0) != (ssize_t)sizeof(rec) ||
		 rec.magic != KVFS_DEVREG_MAGIC || rec.version != KVFS_RING_VERSION ||
		 !rec.bytes || rec.bytes > (1ull << 40) || rec.offset > (1ull << 40))
		rc = gpu_fail(-EINVAL, "a malformed registration record");
	else
		rc = gpupool_ipc_open(fs, &rec, r->tgid, &r->gdev, (void **)&r->dev_map);
	if (rc) {
		log_warn("fast path: %s of pid %d refused: %s", r->name, (int)r->tgid, gpu_error());
		atomic_fetch_add(&fs->ctr.gpu_refused, 1);
		return rc;
	}
	r->dev_mem = r->dev_map + rec.offset;
	r->size = rec.bytes;
	atomic_fetch_add(&fs->ctr.gpu_registrations, 1);
	return 0;
}

int fp_register(struct kvfs_fs *fs, const struct fuse_ctx *ctx, const char *name,
		const char *target, struct kvfs_inode **link)
{
	struct fp_reg *r = NULL, *other, *stale = NULL;
	char path[64];
	unsigned long fdno;
	struct statfs sfs;
	struct stat st;
	char rest;
	int fd = -1, rc;

	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	atomic_init(&r->refs, 1);
	r->fs = fs;
	snprintf(r->name, sizeof(r->name), "%s", name);
	rc = parse_name(name, &r->kind, &r->tgid, &r->id);
	if (rc)
		goto out_free;
	/* The target names a memfd in the caller's own table: /proc/self/fd/N. */
	if (sscanf(target, "/proc/self/fd/%lu%c", &fdno, &rest) != 1 || fdno > INT32_MAX) {
		rc = -EINVAL;
		goto out_free;
	}
	{
		pid_t named = r->tgid;

		rc = read_creds(ctx->pid, r);
		if (rc)
			goto out_free;
		if (named != r->tgid) {
			rc = -EPERM; /* a name must carry the registering process's id */
			goto out_free;
		}
	}
	r->uid = ctx->uid;
	r->gid = ctx->gid;
	r->start_time = start_time(r->tgid);
	snprintf(path, sizeof(path), "/proc/%d/fd/%lu", (int)ctx->pid, fdno);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno == -ENOENT ? -EBADF : -errno;
		goto out_free;
	}
	/*
	 * Only memory: a memfd (or shm file), owned by the caller. Not hugetlbfs:
	 * a hole punched there faults in a new huge page, and with the pool
	 * empty that fault is a SIGBUS, sealed or not.
	 */
	if (fstat(fd, &st) || fstatfs(fd, &sfs) || sfs.f_type == HUGETLBFS_MAGIC ||
	    !S_ISREG(st.st_mode) || st.st_nlink != 0 ||
	    (st.st_uid != r->uid && r->uid != 0) || st.st_size <= 0 ||
	    (uint64_t)st.st_size > (r->kind == REG_RING ? KVFS_RING_MAX_BYTES : (1ull << 40)) ||
	    (r->kind == REG_DEV && st.st_size != sizeof(struct kvfs_ring_devreg))) {
		rc = -EINVAL;
		goto out_close;
	}
	if (r->kind == REG_DEV) {
		rc = dev_open(fs, r, fd);
		if (rc)
			goto out_close;
		close(fd);
		fd = -1;
		goto listed;
	}
	/*
	 * Sealed against shrinking: seals cannot be removed, so from here on
	 * no access to the mapping can fault past the end of the file.
	 */
	{
		int seals = fcntl(fd, F_GET_SEALS);

		if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
			rc = -EBADFD;
			atomic_fetch_add(&fs->ctr.fp_refused, 1);
			goto out_close;
		}
	}
	r->size = (size_t)st.st_size;
	/*
	 * Not populated: the engine's memory is faulted in as bytes are copied,
	 * so a large sparse buffer costs the daemon nothing it does not use.
	 */
	r->mem = mmap(NULL, r->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r->mem == MAP_FAILED) {
		r->mem = NULL;
		rc = -errno;
		goto out_close;
	}
	close(fd);
	fd = -1;
	if (r->kind == REG_RING) {
		struct kvfs_ring_hdr *h = (struct kvfs_ring_hdr *)r->mem;

		rc = ring_check(r);
		if (rc)
			goto out_free;
		r->matches = calloc(KVFS_RING_MAX_MATCHES, sizeof(*r->matches));
		if (!r->matches) {
			rc = -ENOMEM;
			goto out_free;
		}
		h->server_pid = (uint32_t)getpid();
		h->server_gen = fs->started_ns;
		r->sq_head = atomic_load(&h->sq_head);
		r->cq_tail = atomic_load(&h->cq_tail);
	}
listed:
	r->inode = ns_inode_new(fs, KIND_CTL_LINK, S_IFLNK | 0777, r->uid, r->gid);
	if (!r->inode) {
		rc = -ENOMEM;
		goto out_free;
	}
	r->inode->ino = (uint64_t)atomic_fetch_add(&fs->next_generation, 1) | (1ull << 62);
	r->inode->name = malloc(sizeof(struct kvfs_name) + strlen(target) + 1);
	if (!r->inode->name) {
		rc = -ENOMEM;
		goto out_inode;
	}
	r->inode->name->len = (uint32_t)strlen(target);
	strcpy(r->inode->name->s, target);
	ns_get(r->inode, 1); /* the registration's */

	pthread_mutex_lock(&fp_lock);
	cds_list_for_each_entry(other, &fp_regs, link)
		if (strcmp(other->name, name) == 0) {
			if (other->tgid == r->tgid && other->start_time != r->start_time &&
			    !owner_alive(other)) {
				/* left by an earlier process with this pid */
				reg_unlist(other);
				stale = other;
				break;
			}
			pthread_mutex_unlock(&fp_lock);
			rc = -EEXIST;
			goto out_inode;
		}
	rc = reaper_start_locked(fs);
	if (!rc)
		rc = charge_locked(fs, r);
	if (rc) {
		pthread_mutex_unlock(&fp_lock);
		if (rc == -EDQUOT)
			atomic_fetch_add(&fs->ctr.fp_refused, 1);
		goto out_inode;
	}
	if (r->kind == REG_RING) {
		rc = pool_add_locked(fs, r);
		if (rc) {
			uncharge_locked(r);
			pthread_mutex_unlock(&fp_lock);
			if (rc == -ENFILE)
				atomic_fetch_add(&fs->ctr.fp_refused, 1);
			goto out_inode;
		}
	}
	cds_list_add_tail(&r->link, &fp_regs);
	r->listed = true;
	pthread_mutex_unlock(&fp_lock);
	atomic_fetch_add(&fs->ctr.fp_registrations, 1);
	log_debug("fast path: %s registered by pid %d (uid %u), %zu bytes", name, (int)r->tgid,
		  (unsigned)r->uid, r->size);
	ns_get(r->inode, 1); /* the kernel's, for the entry reply */
	*link = r->inode;
	if (stale)
		reg_finish(fs, stale);
	return 0;

out_inode:
	if (stale)
		reg_finish(fs, stale);
	ns_put(fs, r->inode, atomic_load(&r->inode->refs));
out_close:
	if (fd >= 0)
		close(fd);
out_free:
	reg_put(r);
	return rc;
}

int fp_unregister(struct kvfs_fs *fs, const struct fuse_ctx *ctx, const char *name)
{
	struct fp_reg *r;
	int rc = -ENOENT;

	struct fp_reg *found = NULL;

	pthread_mutex_lock(&fp_lock);
	cds_list_for_each_entry(r, &fp_regs, link) {
		if (strcmp(r->name, name) != 0)
			continue;
		if (ctx->uid != 0 && ctx->uid != r->uid) {
			rc = -EPERM;
			break;
		}
		reg_unlist(r);
		found = r;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&fp_lock);
	if (found)
		reg_finish(fs, found);
	return rc;
}

struct kvfs_inode *fp_lookup(struct kvfs_fs *fs, const char *name)
{
	struct fp_reg *r;
	struct kvfs_inode *in = NULL;

	pthread_mutex_lock(&fp_lock);
	cds_list_for_each_entry(r, &fp_regs, link)
		if (strcmp(r->name, name) == 0) {
			in = r->inode;
			ns_get(in, 1);
			break;
		}
	pthread_mutex_unlock(&fp_lock);
	(void)fs;
	return in;
}

int fp_entry(struct kvfs_fs *fs, uint64_t index, char *name, size_t len, struct kvfs_inode **in)
{
	struct fp_reg *r;
	uint64_t i = 0;
	int rc = -ENOENT;

	pthread_mutex_lock(&fp_lock);
	cds_list_for_each_entry(r, &fp_regs, link)
		if (i++ == index) {
			snprintf(name, len, "%s", r->name);
			*in = r->inode;
			ns_get(*in, 1);
			rc = 0;
			break;
		}
	pthread_mutex_unlock(&fp_lock);
	(void)fs;
	return rc;
}

void fp_shutdown(struct kvfs_fs *fs)
{
	struct fp_reg *r;

	for (;;) {
		pthread_mutex_lock(&fp_lock);
		r = cds_list_empty(&fp_regs) ? NULL : cds_list_first_entry(&fp_regs, struct fp_reg, link);
		if (r)
			reg_unlist(r);
		pthread_mutex_unlock(&fp_lock);
		if (!r)
			break;
		reg_finish(fs, r);
	}
	/* The servers let their rings go (matches, namespaces), then exit. */
	pthread_mutex_lock(&fp_lock);
	reaper_stop = true;
	if (reaper_started)
		pthread_cond_signal(&reaper_cond);
	pthread_mutex_unlock(&fp_lock);
	if (reaper_started) {
		pthread_join(reaper, NULL);
		pthread_cond_destroy(&reaper_cond);
		reaper_started = false;
	}
	for (unsigned i = 0; i < nworkers; i++) {
		atomic_store(&workers[i].stop, true);
		worker_wake(&workers[i]);
		pthread_join(workers[i].thread, NULL);
		pthread_mutex_destroy(&workers[i].lock);
	}
	pthread_mutex_lock(&fp_lock);
	free(workers);
	workers = NULL;
	nworkers = 0;
	free(users);
	users = NULL;
	nusers = cap_users = 0;
	pthread_mutex_unlock(&fp_lock);
	/* The kernel is gone: its lookups of registrations will never be forgotten. */
	pthread_mutex_lock(&fp_lock);
	for (size_t i = 0; i < nretired; i++)
		ns_put(fs, retired[i], atomic_load(&retired[i]->refs));
	free(retired);
	retired = NULL;
	nretired = cap_retired = 0;
	pthread_mutex_unlock(&fp_lock);
}

/* --- requests ----------------------------------------------------------------------- */

static int64_t op_open_ns(struct fp_reg *r, const struct kvfs_ring_sqe *e)
{
	struct kvfs_fs *fs = r->fs;
	struct kvfs_ring_geom g = geom(r);
	char path[KVFS_RING_PATH_MAX], *comp, *save = NULL;
	struct kvfs_inode *dir, *next;
	unsigned slot;
	int64_t rc = 0;

	if (kvfs_ring_ns_path(&g, r->mem, e, KVFS_CTL_NAME, path))
		return -EINVAL;
	for (slot = 0; slot < KVFS_RING_MAX_NS && r->ns[slot]; slot++)
		;
	if (slot == KVFS_RING_MAX_NS)
		return -EMFILE;
	dir = fs->root;
	ns_get(dir, 1);
	for (comp = strtok_r(path, "/", &save); comp; comp = strtok_r(NULL, "/", &save)) {
		if (!may(r, dir, 1)) {
			rc = -EACCES;
			break;
		}
		next = ns_lookup(fs, dir, comp, strlen(comp));
		ns_put(fs, dir, 1);
		dir = next;
		if (!dir) {
			rc = -ENOENT;
			break;
		}
		if (dir->kind != KIND_DIR) {
			rc = -ENOTDIR;
			break;
		}
	}
	if (!rc && !may(r, dir, 1))
		rc = -EACCES;
	if (rc) {
		if (dir)
			ns_put(fs, dir, 1);
		return rc;
	}
	r->ns[slot] = dir;
	return slot;
}

static struct kvfs_inode *ns_of(struct fp_reg *r, uint32_t id)
{
	return id < KVFS_RING_MAX_NS ? r->ns[id] : NULL;
}

static int64_t op_match(struct fp_reg *r, const struct kvfs_ring_sqe *e, uint64_t *aux)
{
	struct kvfs_fs *fs = r->fs;
	struct kvfs_inode *dir = ns_of(r, e->ns);
	struct kvfs_ring_geom g = geom(r);
	const uint8_t *keys;
	struct fp_match *m = NULL;
	char hex[KVFS_KEY_HEX + 1];
	unsigned slot;
	uint32_t i, n;
	int rc;

	if (!dir)
		return -EBADF;
	rc = kvfs_ring_match_keys(&g, r->mem, e, &keys, &n);
	if (rc)
		return rc;
	for (slot = 0; slot < KVFS_RING_MAX_MATCHES && r->matches[slot].used; slot++)
		;
	if (slot == KVFS_RING_MAX_MATCHES)
		return -EMFILE;
	m = &r->matches[slot];
	m->inodes = malloc(sizeof(*m->inodes) * (n ? n : 1));
	m->objs = malloc(sizeof(*m->objs) * (n ? n : 1));
	m->sizes = malloc(sizeof(*m->sizes) * (n ? n : 1));
	if (!m->inodes || !m->objs || !m->sizes) {
		match_free(fs, m);
		return -ENOMEM;
	}
	m->used = true;
	for (i = 0; i < n; i++) {
		kvfs_key k;
		struct kvfs_inode *in;
		tier_obj *o = NULL;

		memcpy(&k, keys + (size_t)i * KVFS_KEY_BYTES, sizeof(k));
		kvfs_key_to_hex(&k, hex);
		in = ns_lookup(fs, dir, hex, KVFS_KEY_HEX);
		if (!in)
			break;
		if (in->kind == KIND_FILE && may(r, in, 4)) {
			pthread_mutex_lock(&in->lock);
			if (atomic_load(&in->sealed) && !in->invalid && in->data &&
			    tier_lease(in->data) == 0) {
				o = in->data;
				tier_obj_get(o);
				in->hits++;
				in->atime = (int64_t)kvfs_now_ns();
			}
			pthread_mutex_unlock(&in->lock);
		}
		if (!o) {
			ns_put(fs, in, 1);
			break;
		}
		atomic_fetch_add(tier_where(o) & TIER_DRAM ? &fs->ctr.hits_dram : &fs->ctr.hits_nvme,
				 1);
		tier_touch(o);
		ns_mark_dirty(fs, in);
		m->inodes[i] = in;
		m->objs[i] = o;
		m->sizes[i] = tier_size(o);
		m->n = i + 1;
	}
	atomic_fetch_add(&fs->ctr.hits, m->n);
	atomic_fetch_add(&fs->ctr.fp_matched, m->n);
	if (m->n < n)
		atomic_fetch_add(&fs->ctr.fp_missed, 1);
	*aux = slot;
	return m->n;
}

static struct fp_match *match_of(struct fp_reg *r, uint64_t id)
{
	return id < KVFS_RING_MAX_MATCHES && r->matches[id].used ? &r->matches[id] : NULL;
}

#define BOUNCE_BYTES (1u << 20)
#define SAVE_DEV_MAX_BYTES (1ull << 30)

static int batch_sync(struct fp_reg *r);

/* The ring's stream, on @dev (made at the first use, remade if the device changes). */
static int ring_stream(struct fp_reg *r, gpu_dev *dev)
{
	if (r->stream && r->stream_dev != dev) {
		if (batch_sync(r))
			return -EIO;
		r->stream_dev->ops->stream_free(r->stream);
		r->stream = NULL;
	}
	if (!r->stream) {
		if (dev->ops->stream_new(dev, &r->stream))
			return -EIO;
		r->stream_dev = dev;
	}
	return 0;
}

#define BATCH_MAX 1024

/* Queue the waiting copies on the ring's stream. @return 0; -EIO. */
static int batch_flush(struct fp_reg *r)
{
	int rc = 0;

	if (r->batch.n)
		rc = r->stream_dev->ops->copy_batch(r->stream, r->batch.dst, r->batch.src,
						    r->batch.len, r->batch.n, r->batch.dir);
	r->batch.n = 0;
	return rc ? -EIO : 0;
}

/*
 * Add a copy to the ring's batch (its stream made by ring_stream()),
 * extending the last one when both sides continue it: adjacent DRAM pages,
 * a block's K and V where the engine keeps them adjacent too. A copy the
 * runtime is asked for costs a call and a DMA setup, whatever its size.
 * @return 0; -ENOMEM; -EIO (flushing a full batch failed).
 */
static int batch_add(struct fp_reg *r, void *dst, const void *src, size_t len, enum gpu_dir dir)
{
	unsigned n = r->batch.n;
	int rc;

	if (!r->batch.dst) {
		r->batch.dst = malloc(sizeof(*r->batch.dst) * BATCH_MAX);
		r->batch.src = malloc(sizeof(*r->batch.src) * BATCH_MAX);
		r->batch.len = malloc(sizeof(*r->batch.len) * BATCH_MAX);
		if (!r->batch.dst || !r->batch.src || !r->batch.len) {
			free(r->batch.dst);
			free(r->batch.src);
			free(r->batch.len);
			r->batch.dst = NULL;
			r->batch.src = NULL;
			r->batch.len = NULL;
			return -ENOMEM;
		}
	}
	if (n && r->batch.dir == dir &&
	    (uint8_t *)r->batch.dst[n - 1] + r->batch.len[n - 1] == (uint8_t *)dst &&
	    (const uint8_t *)r->batch.src[n - 1] + r->batch.len[n - 1] == (const uint8_t *)src) {
		r->batch.len[n - 1] += len;
		return 0;
	}
	if (n == BATCH_MAX || (n && r->batch.dir != dir)) {
		if ((rc = batch_flush(r)))
			return rc;
		n = 0;
	}
	r->batch.dst[n] = dst;
	r->batch.src[n] = src;
	r->batch.len[n] = len;
	r->batch.dir = dir;
	r->batch.n = n + 1;
	return 0;
}

/* Flush the batch and wait for the stream. @return 0; -EIO. */
static int batch_sync(struct fp_reg *r)
{
	int rc = batch_flush(r);

	if (r->stream && r->stream_dev->ops->stream_sync(r->stream))
		rc = -EIO;
	return rc;
}

/*
 * Queue the copy of @d into the device memory of @buf on the ring's stream
 * (made at the first, on @buf's device). A file in the GPU pool of that
 * device is copied device to device from its pool blocks (a hot file is
 * promoted there first, tier/gpu.c); bytes in DRAM are copied from the
 * object's DRAM file; bytes only on NVMe are read (checksummed) into a bounce buffer
 * and copied from there, waiting for each chunk. The caller syncs the
 * stream before it completes the request.
 * @return 0; -EIO (a device error, logged with its name); -ENOMEM; or the
 * tier's error.
 */
static int dev_read(struct fp_reg *r, struct fp_reg *buf, tier_obj *obj,
		    const struct kvfs_ring_desc *d)
{
	struct iovec iov[MAX_IOV];
	uint64_t done = 0, pooled = 0;
	int rc;

	if (ring_stream(r, buf->gdev))
		goto out_dev;
	(void)tier_gpu_promote(obj, buf->gdev); /* not hot, or no room: from the host copy */
	while (done < d->len) {
		uint64_t n = d->len - done;
		void *pool = tier_gpu_addr(obj, buf->gdev, d->src_off + done, &n);
		int k;

		if (pool) {
			/* the match's lease keeps the pool copy until the request completes */
			if (batch_add(r, buf->dev_mem + d->dst_off + done, pool, n, GPU_D2D))
				goto out_dev;
			pooled += n;
			done += n;
			continue;
		}
		k = tier_read_iov(obj, d->src_off + done, d->len - done, iov, MAX_IOV);

		if (k == -ENODATA) {
			size_t want = KVFS_MIN(d->len - done, (uint64_t)BOUNCE_BYTES);
			ssize_t got;

			if (!r->bounce && !(r->bounce = malloc(BOUNCE_BYTES)))
				return -ENOMEM;
			if (batch_sync(r)) /* the bounce buffer is free again */
				goto out_dev;
			got = tier_read(obj, d->src_off + done, r->bounce, want);
			if (got <= 0)
				return got < 0 ? (int)got : -EIO;
			if (batch_add(r, buf->dev_mem + d->dst_off + done, r->bounce, (size_t)got,
				      GPU_H2D) ||
			    batch_sync(r))
				goto out_dev;
			done += (uint64_t)got;
			continue;
		}
		if (k <= 0)
			return k < 0 ? k : -EIO;
		for (int j = 0; j < k; j++) {
			rc = batch_add(r, buf->dev_mem + d->dst_off + done, iov[j].iov_base,
				       iov[j].iov_len, GPU_H2D);
			if (rc == -EIO)
				goto out_dev;
			if (rc)
				return rc;
			done += iov[j].iov_len;
		}
	}
	if (pooled)
		tier_gpu_loaded(obj, pooled);
	return 0;
out_dev:
	log_warn("fast path: a device copy for pid %d failed: %s", (int)r->tgid, gpu_error());
	return -EIO;
}

static int64_t op_read(struct fp_reg *r, const struct kvfs_ring_sqe *e)
{
	struct fp_match *m = match_of(r, e->args[0]);
	struct kvfs_ring_geom g = geom(r);
	uint64_t total = 0;
	const uint8_t *p;
	struct fp_reg *buf = NULL;
	struct iovec iov[MAX_IOV];
	uint32_t n;
	bool dev_copies = false;
	int64_t rc = 0;

	if (!m)
		return -EBADF;
	rc = kvfs_ring_read_descs(&g, r->mem, e, &p, &n);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < n && !rc; i++) {
		struct kvfs_ring_desc d;
		uint64_t done = 0;

		kvfs_ring_desc_get(p, i, &d);
		if (d.block >= m->n || !kvfs_ring_span_ok(d.src_off, d.len, m->sizes[d.block])) {
			rc = -EINVAL;
			break;
		}
		if (!buf || buf->id != d.buf) {
			if (buf)
				reg_put(buf);
			buf = buf_get(r->tgid, d.buf);
			if (!buf) {
				rc = -EBADF;
				break;
			}
		}
		if (!kvfs_ring_span_ok(d.dst_off, d.len, buf->size)) {
			rc = -EFAULT;
			break;
		}
		if (buf->kind == REG_DEV) {
			rc = dev_read(r, buf, m->objs[d.block], &d);
			done = rc ? 0 : d.len;
			dev_copies = true;
		}
		while (done < d.len && !rc) {
			int k = tier_read_iov(m->objs[d.block], d.src_off + done, d.len - done, iov,
					      MAX_IOV);

			if (k == -ENODATA) {
				/* on NVMe: read (checksummed) straight into the buffer */
				ssize_t got = tier_read(m->objs[d.block], d.src_off + done,
							buf->mem + d.dst_off + done, d.len - done);

				if (got <= 0)
					rc = got < 0 ? (int)got : -EIO;
				else
					done += (uint64_t)got;
				continue;
			}
			if (k <= 0) {
				rc = k < 0 ? k : -EIO;
				break;
			}
			for (int j = 0; j < k; j++) {
				memcpy(buf->mem + d.dst_off + done, iov[j].iov_base, iov[j].iov_len);
				done += iov[j].iov_len;
			}
		}
		total += done;
	}
	/* the request completes when its bytes are in device memory */
	if (dev_copies && r->stream && batch_sync(r) && !rc) {
		log_warn("fast path: a device copy for pid %d failed: %s", (int)r->tgid,
			 gpu_error());
		rc = -EIO;
	}
	if (dev_copies && rc == -EIO)
		atomic_fetch_add(&r->fs->ctr.gpu_copy_errors, 1);
	else if (dev_copies && !rc)
		atomic_fetch_add(&r->fs->ctr.gpu_loaded_bytes, total);
	if (buf)
		reg_put(buf);
	atomic_fetch_add(&r->fs->ctr.read_bytes, total);
	atomic_fetch_add(&r->fs->ctr.fp_read_bytes, total);
	return rc ? rc : (int64_t)total;
}

static int64_t op_release(struct fp_reg *r, const struct kvfs_ring_sqe *e)
{
	struct fp_match *m = match_of(r, e->args[0]);

	if (!m)
		return -EBADF;
	match_free(r->fs, m);
	return 0;
}

/* Remove a file the fast path created and failed to fill. */
static void unlink_failed(struct kvfs_fs *fs, struct kvfs_inode *in)
{
	tier_obj *o = NULL;

	pthread_mutex_lock(&fs->lock);
	if (in->linked) {
		pthread_mutex_lock(&in->lock);
		if (in->opens == 0 && in->data) {
			o = in->data;
			in->data = NULL;
			tier_obj_set_owner(o, NULL);
		}
		pthread_mutex_unlock(&in->lock);
		ns_unlink_locked(fs, in);
	}
	pthread_mutex_unlock(&fs->lock);
	if (o) {
		tier_drop(o);
		tier_obj_put(o);
	}
}

static int64_t save_file(struct fp_reg *r, struct kvfs_inode *dir, const kvfs_key *key,
			 const uint8_t *bytes, uint64_t len, tier_obj **out);

static int64_t op_save(struct fp_reg *r, const struct kvfs_ring_sqe *e)
{
	struct kvfs_inode *dir = ns_of(r, e->ns);
	struct kvfs_ring_geom g = geom(r);
	const uint8_t *keyp = kvfs_ring_save_key(&g, r->mem, e);
	struct fp_reg *buf;
	kvfs_key key;
	int64_t rc;

	if (!dir)
		return -EBADF;
	if (!keyp)
		return -EINVAL;
	if (!may(r, dir, 2 | 1))
		return -EACCES;
	buf = buf_get(r->tgid, (uint32_t)e->args[0]);
	if (!buf)
		return -EBADF;
	if (buf->kind == REG_DEV) {
		rc = -EINVAL; /* device memory is saved with SAVE_DEV */
		goto out;
	}
	rc = kvfs_ring_save_range(e, buf->size);
	if (rc)
		goto out;
	memcpy(&key, keyp, sizeof(key));
	rc = save_file(r, dir, &key, buf->mem + e->args[1], e->args[2], NULL);
out:
	reg_put(buf);
	return rc;
}

/*
 * Create `<dir>/<key hex>` from @len bytes at @bytes and seal it (a native
 * block is validated); its tier object, referenced, in *@out if @out.
 * @return 0; -EEXIST (a hit); -ENOENT; -EBADMSG; -errno.
 */
static int64_t save_file(struct fp_reg *r, struct kvfs_inode *dir, const kvfs_key *key,
			 const uint8_t *bytes, uint64_t len, tier_obj **out)
{
	struct kvfs_fs *fs = r->fs;
	struct kvfs_inode *in = NULL;
	char hex[KVFS_KEY_HEX + 1];
	tier_obj *data;
	int64_t rc;

	kvfs_key_to_hex(key, hex);

	pthread_mutex_lock(&fs->lock);
	if (!dir->linked && dir != fs->root) {
		rc = -ENOENT;
	} else if (ns_find_locked(fs, dir, hex, KVFS_KEY_HEX)) {
		rc = -EEXIST; /* already cached: a hit, not an error */
	} else {
		rc = ops_new_file_locked(fs, dir, hex, 0644, r->uid, r->gid, &in);
		if (!rc) {
			ns_get(in, 1);
			pthread_mutex_lock(&in->lock);
			in->writers = 1; /* readers through the mount get EBUSY meanwhile */
			pthread_mutex_unlock(&in->lock);
			/* a negative entry the kernel cached for this name is stale now */
			ns_queue_inval(fs, in, true);
		}
	}
	pthread_mutex_unlock(&fs->lock);
	if (rc)
		return rc;

	rc = tier_write(in->data, 0, bytes, len);
	pthread_mutex_lock(&in->lock);
	in->writers--;
	data = in->writers == 0 && !atomic_load(&in->sealed) ? in->data : NULL;
	if (data) {
		in->sealing = true;
		tier_obj_get(data);
	}
	pthread_mutex_unlock(&in->lock);
	if (data) {
		int sealed = ops_seal(fs, in, data);

		tier_obj_put(data);
		if (!rc)
			rc = sealed;
	}
	if (rc) {
		unlink_failed(fs, in);
	} else {
		atomic_fetch_add(&fs->ctr.fp_saved, 1);
		if (out) {
			*out = in->data;
			tier_obj_get(*out);
		}
	}
	ns_put(fs, in, 1);
	return rc;
}

static uint64_t le_get(const uint8_t *p, unsigned bytes)
{
	uint64_t v = 0;

	for (unsigned i = 0; i < bytes; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

/*
 * SAVE_DEV (core/ring.h): the header from a host buffer, the layers copied
 * out of the engine's device memory on the ring's stream into one host
 * block, checksummed here, then stored as SAVE stores. The header is copied
 * before it is read, and its sizes bound every copy; the seal validates the
 * whole block (key, sizes, checksums) as for any native block.
 */
/*
 * Put a block just saved from one device buffer @dbuf into the GPU pool of
 * its device (tier/gpu.c): the layers device to device from the engine's
 * pages (@dps, as the save copied them), the header and any padding
 * between layers from the host block @blk. Best effort: the file is saved
 * in DRAM whatever happens here.
 */
static void save_dev_pool(struct fp_reg *dbuf, tier_obj *o, const uint8_t *blk, uint64_t hb,
			  uint32_t L, uint64_t stride, uint64_t part, bool mla,
			  const struct kvfs_ring_devpart *dps)
{
	struct tier_gpu_part *p = malloc(sizeof(*p) * (3 * (size_t)L + 1));
	unsigned n = 0;
	int rc;

	if (!p)
		return;
	p[n++] = (struct tier_gpu_part){.off = 0, .len = hb, .src = blk};
	for (uint32_t l = 0; l < L; l++) {
		uint64_t seg = hb + (uint64_t)l * stride, used = mla ? part : 2 * part;

		p[n++] = (struct tier_gpu_part){.off = seg, .len = part,
						.src = dbuf->dev_mem + dps[l].k_off, .device = true};
		if (!mla)
			p[n++] = (struct tier_gpu_part){.off = seg + part, .len = part,
							.src = dbuf->dev_mem + dps[l].v_off,
							.device = true};
		if (stride > used)
			p[n++] = (struct tier_gpu_part){.off = seg + used, .len = stride - used,
							.src = blk + seg + used};
	}
	rc = tier_gpu_store_parts(o, dbuf->gdev, p, n);
	if (rc && rc != -ENODEV)
		log_debug("fast path: a saved block stays out of the GPU pool: %s",
			  strerror(-rc));
	free(p);
}

static int64_t op_save_dev(struct fp_reg *r, const struct kvfs_ring_sqe *e)
{
	struct kvfs_inode *dir = ns_of(r, e->ns);
	struct fp_reg *hbuf = NULL, *dbuf = NULL;
	uint8_t fixed[KVFS_BLOCK_FIXED_BYTES], *blk = NULL;
	const uint8_t *pl;
	uint64_t *sums = NULL, layer_bytes, stride, part, file_bytes, hb = e->args[2];
	struct kvfs_ring_devpart *dps = NULL;
	tier_obj *saved = NULL;
	bool one_buf = true; /* every layer in one device buffer: the pool copy may be d2d */
	uint32_t L;
	bool mla;
	kvfs_key key;
	int64_t rc = 0;

	if (!dir)
		return -EBADF;
	if (!may(r, dir, 2 | 1))
		return -EACCES;
	hbuf = buf_get(r->tgid, (uint32_t)e->args[0]);
	if (!hbuf || hbuf->kind != REG_BUF) {
		rc = -EBADF;
		goto out;
	}
	if (e->args[1] > hbuf->size || hb > hbuf->size - e->args[1] ||
	    hb < KVFS_BLOCK_FIXED_BYTES || hb > KVFS_BLOCK_MAX_HEADER || hb % KVFS_BLOCK_ALIGN) {
		rc = -EFAULT;
		goto out;
	}
	memcpy(fixed, hbuf->mem + e->args[1], sizeof(fixed));
	L = (uint32_t)le_get(fixed + 88, 4);
	mla = le_get(fixed + 106, 2) == KVFS_KIND_MLA;
	layer_bytes = le_get(fixed + 176, 8);
	stride = le_get(fixed + 184, 8);
	part = mla ? layer_bytes : layer_bytes / 2;
	if (le_get(fixed + 12, 4) != hb || !L || L > KVFS_BLOCK_MAX_LAYERS || !part ||
	    (!mla && layer_bytes % 2) || stride < layer_bytes ||
	    stride > SAVE_DEV_MAX_BYTES / L || hb + L * stride > SAVE_DEV_MAX_BYTES) {
		rc = -EINVAL;
		goto out;
	}
	file_bytes = hb + L * stride;
	pl = payload(r, e->args[3], KVFS_KEY_BYTES + (uint64_t)L * sizeof(struct kvfs_ring_devpart));
	blk = calloc(1, file_bytes);
	sums = malloc(sizeof(*sums) * L);
	dps = malloc(sizeof(*dps) * L);
	if (!pl || !blk || !sums || !dps) {
		rc = pl ? -ENOMEM : -EINVAL;
		goto out;
	}
	memcpy(blk, hbuf->mem + e->args[1], hb);
	memcpy(&key, pl, sizeof(key));
	for (uint32_t l = 0; l < L && !rc; l++) {
		struct kvfs_ring_devpart dp;
		uint8_t *seg = blk + hb + (uint64_t)l * stride;

		memcpy(&dp, pl + KVFS_KEY_BYTES + (size_t)l * sizeof(dp), sizeof(dp));
		dps[l] = dp;
		if (!dbuf || dbuf->id != dp.buf) {
			if (dbuf) {
				reg_put(dbuf);
				one_buf = false;
			}
			dbuf = buf_get(r->tgid, dp.buf);
			if (!dbuf || dbuf->kind != REG_DEV) {
				rc = -EBADF;
				break;
			}
		}
		if (dp.k_off > dbuf->size || part > dbuf->size - dp.k_off ||
		    (!mla && (dp.v_off > dbuf->size || part > dbuf->size - dp.v_off))) {
			rc = -EFAULT;
			break;
		}
		if (ring_stream(r, dbuf->gdev) ||
		    batch_add(r, seg, dbuf->dev_mem + dp.k_off, part, GPU_D2H) ||
		    (!mla && batch_add(r, seg + part, dbuf->dev_mem + dp.v_off, part, GPU_D2H)))
			rc = -EIO;
	}
	if (r->stream && batch_sync(r) && !rc)
		rc = -EIO;
	if (rc == -EIO) {
		log_warn("fast path: a device copy for pid %d failed: %s", (int)r->tgid,
			 gpu_error());
		atomic_fetch_add(&r->fs->ctr.gpu_copy_errors, 1);
	}
	if (rc)
		goto out;
	for (uint32_t l = 0; l < L; l++)
		sums[l] = kvfs_block_layer_checksum(blk + hb + (uint64_t)l * stride, layer_bytes);
	if (kvfs_block_set_layer_checksums(blk, hb, sums, L)) {
		rc = -EBADMSG;
		goto out;
	}
	rc = save_file(r, dir, &key, blk, file_bytes, &saved);
	if (!rc) {
		atomic_fetch_add(&r->fs->ctr.gpu_saved_blocks, 1);
		if (one_buf)
			save_dev_pool(dbuf, saved, blk, hb, L, stride, part, mla, dps);
		tier_obj_put(saved);
	}
out:
	if (dbuf)
		reg_put(dbuf);
	if (hbuf)
		reg_put(hbuf);
	free(dps);
	free(sums);
	free(blk);
	return rc;
}

/* Post a completion (the caller checked that the CQ has room). */
static void post(struct fp_reg *r, uint64_t user_data, int64_t res, uint64_t aux)
{
	struct kvfs_ring_hdr *h = (struct kvfs_ring_hdr *)r->mem;
	struct kvfs_ring_cqe *cqe;

	cqe = (struct kvfs_ring_cqe *)(r->mem + r->cq_off) + (r->cq_tail & (r->cq_entries - 1));
	cqe->user_data = user_data;
	cqe->res = res;
	cqe->aux = aux;
	atomic_store_explicit(&h->cq_tail, ++r->cq_tail, memory_order_release);
	if (atomic_load(&h->client_waiting))
		futex(&h->cq_tail, FUTEX_WAKE, INT32_MAX, NULL);
}

static void serve(struct fp_reg *r, const struct kvfs_ring_sqe *e)
{
	uint64_t aux = 0;
	int64_t res;

	switch (e->op) {
	case KVFS_OP_NOP:
		res = 0;
		break;
	case KVFS_OP_OPEN_NS:
		res = op_open_ns(r, e);
		break;
	case KVFS_OP_MATCH:
		res = op_match(r, e, &aux);
		break;
	case KVFS_OP_READ:
		res = op_read(r, e);
		break;
	case KVFS_OP_RELEASE:
		res = op_release(r, e);
		break;
	case KVFS_OP_SAVE:
		res = op_save(r, e);
		break;
	case KVFS_OP_SAVE_DEV:
		res = op_save_dev(r, e);
		break;
	default:
		res = -EOPNOTSUPP;
		break;
	}
	if (res < 0 && res != -EEXIST)
		atomic_fetch_add(&r->fs->ctr.fp_errors, 1);
	atomic_fetch_add(&r->fs->ctr.fp_requests, 1);
	post(r, e->user_data, res, aux);
}

/* Does @r have a request to serve, and room for its completion? */
static bool ring_ready(struct fp_reg *r)
{
	struct kvfs_ring_hdr *h = (struct kvfs_ring_hdr *)r->mem;

	return atomic_load_explicit(&h->sq_tail, memory_order_acquire) != r->sq_head &&
	       r->cq_tail - atomic_load_explicit(&h->cq_head, memory_order_acquire) <
		       r->cq_entries;
}

/*
 * Serve up to BATCH requests of @r.
 * @return 1 if it served any, 0 if it had none, -1 if the ring is done
 * (unregistered, closed by the engine, or a tail no engine could write).
 */
static int ring_turn(struct fp_reg *r)
{
	struct kvfs_ring_hdr *h = (struct kvfs_ring_hdr *)r->mem;
	struct kvfs_ring_sqe *sq = (struct kvfs_ring_sqe *)(r->mem + r->sq_off);
	int k;

	if (atomic_load(&r->stop) || atomic_load(&h->closed))
		return -1;
	for (k = 0; k < BATCH; k++) {
		uint32_t tail = atomic_load_explicit(&h->sq_tail, memory_order_acquire);
		struct kvfs_ring_sqe e;

		if (tail - r->sq_head > r->sq_entries)
			return -1;
		if (!ring_ready(r))
			break;
		e = sq[r->sq_head & (r->sq_entries - 1)];
		atomic_store_explicit(&h->sq_head, ++r->sq_head, memory_order_release);
		serve(r, &e);
	}
	return k > 0;
}

/*
 * The server lets @r go: its matches and namespaces, its place in @w, and,
 * if nobody took it off the list (the engine closed it), its registration.
 */
static void ring_retire(struct fp_worker *w, struct fp_reg *r)
{
	bool self = false;

	ring_cleanup(r);
	pthread_mutex_lock(&w->lock);
	for (unsigned i = 0; i < w->nrings; i++)
		if (w->rings[i] == r) {
			w->rings[i] = w->rings[--w->nrings];
			break;
		}
	pthread_mutex_unlock(&w->lock);
	pthread_mutex_lock(&fp_lock);
	if (r->listed) {
		reg_unlist(r);
		self = true;
	}
	pthread_mutex_unlock(&fp_lock);
	if (self)
		reg_finish(r->fs, r);
	reg_put(r); /* the server's */
}

static long futex_waitv(struct futex_waitv *w, unsigned n, const struct timespec *deadline)
{
	return syscall(SYS_futex_waitv, w, n, 0, deadline, CLOCK_MONOTONIC);
}

/*
 * A ring server: serves its rings in turn while any has work, polls a
 * little after the last request, then sleeps on every ring's
 * `server_sleeping` word and its own wake word at once.
 */
static void *worker_main(void *arg)
{
	struct fp_worker *w = arg;
	struct fp_reg *rs[RINGS_PER_WORKER];
	struct futex_waitv wv[RINGS_PER_WORKER + 1];
	uint64_t idle_since = kvfs_mono_ns();

	urcu_bp_register_thread();
	for (;;) {
		uint32_t wake = atomic_load(&w->wake);
		bool busy = false, pending = false;
		struct timespec deadline;
		unsigned n;

		pthread_mutex_lock(&w->lock);
		n = w->nrings;
		memcpy(rs, w->rings, n * sizeof(*rs));
		pthread_mutex_unlock(&w->lock);
		if (atomic_load(&w->stop) && n == 0)
			break;
		for (unsigned i = 0; i < n; i++) {
			int t = ring_turn(rs[i]);

			if (t < 0) {
				ring_retire(w, rs[i]);
				busy = true; /* look again at the table */
			} else if (t > 0) {
				busy = true;
			}
		}
		if (busy) {
			idle_since = kvfs_mono_ns();
			continue;
		}
		if (kvfs_mono_ns() - idle_since < SPIN_NS) {
			sched_yield();
			continue;
		}
		wv[0] = (struct futex_waitv){.val = wake, .uaddr = (uintptr_t)&w->wake,
					      .flags = FUTEX_32 | FUTEX_PRIVATE_FLAG};
		for (unsigned i = 0; i < n; i++) {
			struct kvfs_ring_hdr *h = (struct kvfs_ring_hdr *)rs[i]->mem;

			atomic_store(&h->server_sleeping, 1);
			/* shared memory: a futex the engine wakes from its process */
			wv[i + 1] = (struct futex_waitv){.val = 1,
							 .uaddr = (uintptr_t)&h->server_sleeping,
							 .flags = FUTEX_32};
		}
		for (unsigned i = 0; i < n && !pending; i++)
			pending = ring_ready(rs[i]) || atomic_load(&rs[i]->stop) ||
				  atomic_load(&((struct kvfs_ring_hdr *)rs[i]->mem)->closed);
		if (!pending && !atomic_load(&w->stop)) {
			clock_gettime(CLOCK_MONOTONIC, &deadline);
			deadline.tv_nsec += SLEEP_MS * 1000000L;
			deadline.tv_sec += deadline.tv_nsec / 1000000000L;
			deadline.tv_nsec %= 1000000000L;
			futex_waitv(wv, n + 1, &deadline);
		}
		for (unsigned i = 0; i < n; i++)
			atomic_store(&((struct kvfs_ring_hdr *)rs[i]->mem)->server_sleeping, 0);
		idle_since = kvfs_mono_ns();
	}
	urcu_bp_unregister_thread();
	return NULL;
}

/*
 * Take off the list every registration whose process is gone. Owners are
 * checked without fp_lock (reading /proc); a registration is referenced
 * meanwhile.
 */
static void reap(struct kvfs_fs *fs)
{
	struct fp_reg *r, **regs = NULL;
	size_t n = 0, k = 0;
	bool *dead = NULL;

	pthread_mutex_lock(&fp_lock);
	cds_list_for_each_entry(r, &fp_regs, link)
		n++;
	if (n) {
		regs = malloc(n * sizeof(*regs));
		dead = calloc(n, sizeof(*dead));
	}
	if (regs && dead)
		cds_list_for_each_entry(r, &fp_regs, link) {
			atomic_fetch_add(&r->refs, 1);
			regs[k++] = r;
		}
	pthread_mutex_unlock(&fp_lock);
	for (size_t i = 0; i < k; i++)
		/* the registrations of one process are checked once */
		dead[i] = i > 0 && regs[i - 1]->tgid == regs[i]->tgid &&
				  regs[i - 1]->start_time == regs[i]->start_time
			  ? dead[i - 1]
			  : !owner_alive(regs[i]);
	pthread_mutex_lock(&fp_lock);
	for (size_t i = 0; i < k; i++) {
		if (dead[i] && regs[i]->listed)
			reg_unlist(regs[i]);
		else
			dead[i] = false;
	}
	pthread_mutex_unlock(&fp_lock);
	for (size_t i = 0; i < k; i++) {
		if (dead[i]) {
			log_debug("fast path: %s reclaimed: pid %d is gone", regs[i]->name,
				  (int)regs[i]->tgid);
			atomic_fetch_add(&fs->ctr.fp_reclaimed, 1);
			reg_finish(fs, regs[i]);
		}
		reg_put(regs[i]);
	}
	free(regs);
	free(dead);
}

static void *reaper_main(void *arg)
{
	struct kvfs_fs *fs = arg;

	urcu_bp_register_thread();
	pthread_mutex_lock(&fp_lock);
	while (!reaper_stop) {
		struct timespec deadline;

		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_nsec += REAP_MS * 1000000L;
		deadline.tv_sec += deadline.tv_nsec / 1000000000L;
		deadline.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&reaper_cond, &fp_lock, &deadline);
		if (reaper_stop)
			break;
		pthread_mutex_unlock(&fp_lock);
		reap(fs);
		pthread_mutex_lock(&fp_lock);
	}
	pthread_mutex_unlock(&fp_lock);
	urcu_bp_unregister_thread();
	return NULL;
}
