/*
 * engine/libkvfs_fast.c — libkvfs's fast path: shared-memory rings to the
 * kvfs daemon (the protocol is core/ring.h).
 *
 * Owns, per namespace: one ring (a sealed memfd registered under
 * `<mount>/.kvfs/iovs/ring.<pid>.<id>`), the namespace id the daemon gave
 * it, a staging buffer for block headers, and the list of buffers handed
 * out by kvfs_alloc() (each registered as `buf.<pid>.<id>`) so that engine
 * pointers can be turned into (buffer id, offset) for the daemon.
 *
 * Requests carry a user_data that indexes `reqs`, a table of in-flight
 * requests; whichever thread waits drains the completion queue for all.
 * Payloads live in fixed slots of the ring's scratch area, one per
 * in-flight request, released with the request.
 *
 * A daemon that dies or restarts makes every pending and later request
 * fail with -ENOTCONN (a miss for the engine); the namespace falls back to
 * the POSIX path and tries to register again after RECONNECT_NS.
 *
 * Locking: `lock` guards submission, the request table, the slots and the
 * completion queue's head; waiting happens without it on a futex.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/ring.h"
#include "engine/libkvfs_i.h"

#define FUSE_SUPER_MAGIC 0x65735546
#define RING_ENTRIES     256u
#define SLOTS            64u           /* payload slots = requests in flight */
#define SLOT_BYTES       (64u << 10)
#define DATA_BYTES       (SLOTS * SLOT_BYTES)
#define STAGING_BYTES    (1u << 20)
#define RECONNECT_NS     (1000000000ull)
#define DEAD_CHECK_NS    (200000000ull)
#define REQ_TIMEOUT_NS   (20000000000ull)
#define HDR_PROBE        KVFS_BLOCK_FIXED_BYTES

struct fast_buf {
	struct fast_buf *next;
	uint8_t *base;
	size_t size;
	int fd;
	uint32_t id;
	bool registered;
	int device; /* KVFS_DEVICE_HOST, or dev.<> registration of device memory */
};

static const char *buf_kind(const struct fast_buf *b)
{
	return b->device == KVFS_DEVICE_HOST ? "buf" : "dev";
}

struct fast_req {
	bool busy, done;
	int64_t res;
	uint64_t aux;
	uint32_t seq; /* user_data = seq << 8 | index: stale completions are ignored */
};

struct fast {
	char mnt[PATH_MAX];
	char rel[PATH_MAX]; /* the namespace, relative to the mount root */
	pthread_mutex_t lock;

	/* the connection; all zero while down */
	bool up;
	uint64_t down_since;
	int ring_fd;
	uint8_t *ring;
	size_t ring_bytes;
	uint32_t ring_id;
	uint32_t ns_id;
	pid_t server_pid;
	uint64_t server_gen;
	uint32_t sq_tail, cq_head;
	struct fast_req reqs[SLOTS];
	uint32_t seq;

	struct fast_buf *bufs;
	struct fast_buf *staging;
	pthread_mutex_t devsave_lock; /* the header buffer of saves from device memory */
	struct fast_buf *devsave;
};

/* Process-wide: registration names (kind.pid.id) are unique per process. */
static _Atomic uint32_t ring_ids;
static _Atomic uint32_t buf_ids;

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static long futex(_Atomic uint32_t *addr, int op, uint32_t val, const struct timespec *ts)
{
	return syscall(SYS_futex, (uint32_t *)addr, op, val, ts, NULL, 0);
}

/* --- finding the mount -------------------------------------------------------------- */

int kvfs_mount_root(const char *real)
{
	char probe[PATH_MAX + 32];
	struct statfs sfs;
	size_t len;

	if (statfs(real, &sfs) || sfs.f_type != FUSE_SUPER_MAGIC)
		return -ENOTSUP;
	len = strlen(real);
	for (;;) {
		snprintf(probe, sizeof(probe), "%.*s/.kvfs/config", (int)len, real);
		if (access(probe, F_OK) == 0)
			return (int)len;
		while (len > 0 && real[len - 1] != '/')
			len--;
		if (len <= 1)
			return -ENOTSUP;
		len--; /* drop the slash */
	}
}

/* Is @dir inside a kvfs mount? Its root into f->mnt, the rest into f->rel. */
static int find_mount(struct fast *f, const char *dir)
{
	char real[PATH_MAX];
	int len;

	if (!realpath(dir, real))
		return -ENOTSUP;
	len = kvfs_mount_root(real);
	if (len < 0)
		return len;
	snprintf(f->mnt, sizeof(f->mnt), "%.*s", len, real);
	snprintf(f->rel, sizeof(f->rel), "%s", real[len] == '/' ? real + len + 1 : real + len);
	return f->rel[0] ? 0 : -ENOTSUP; /* the mount root itself is no namespace */
}

/* --- registration --------------------------------------------------------------------- */

static int reg_path(const struct fast *f, char *out, size_t len, const char *kind, uint32_t id)
{
	int n = snprintf(out, len, "%s/.kvfs/%s/%s.%d.%u", f->mnt, KVFS_IOVS_DIR, kind,
			 (int)getpid(), id);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int do_register(const struct fast *f, const char *kind, uint32_t id, int fd)
{
	char link[PATH_MAX], target[64];
	int rc = reg_path(f, link, sizeof(link), kind, id);

	if (rc)
		return rc;
	snprintf(target, sizeof(target), "/proc/self/fd/%d", fd);
	unlink(link); /* a leftover of an earlier life of this pid */
	return symlink(target, link) ? -errno : 0;
}

static void do_unregister(const struct fast *f, const char *kind, uint32_t id)
{
	char link[PATH_MAX];

	if (!reg_path(f, link, sizeof(link), kind, id))
		unlink(link);
}

/*
 * A memfd of @bytes sealed against resizing: the daemon maps what we
 * register and refuses a memfd that could shrink under its mapping (a
 * fault on it would kill the daemon). @return the descriptor or -errno.
 */
static int sealed_memfd(const char *name, size_t bytes)
{
	int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING), rc;

	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)bytes) ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
		rc = -errno;
		close(fd);
		return rc;
	}
	return fd;
}

static struct fast_buf *buf_new(struct fast *f, size_t bytes)
{
	struct fast_buf *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->fd = sealed_memfd("kvfs-buf", bytes);
	if (b->fd < 0)
		goto out_err;
	b->base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
	if (b->base == MAP_FAILED)
		goto out_err;
	b->size = bytes;
	b->id = atomic_fetch_add(&buf_ids, 1);
	b->device = KVFS_DEVICE_HOST;
	return b;
out_err:
	if (b->fd >= 0)
		close(b->fd);
	free(b);
	return NULL;
}

static void buf_destroy(struct fast *f, struct fast_buf *b)
{
	if (b->registered)
		do_unregister(f, buf_kind(b), b->id);
	if (b->device == KVFS_DEVICE_HOST) /* device memory is the engine's */
		munmap(b->base, b->size);
	close(b->fd);
	free(b);
}

/* The registered buffer holding [p, p + len), or NULL. */
static struct fast_buf *buf_of(struct fast *f, const void *p, size_t len)
{
	for (struct fast_buf *b = f->bufs; b; b = b->next)
		if ((const uint8_t *)p >= b->base && (const uint8_t *)p + len <= b->base + b->size &&
		    b->registered)
			return b;
	return NULL;
}

/* --- the ring --------------------------------------------------------------------------- */

static struct kvfs_ring_hdr *hdr(struct fast *f)
{
	return (struct kvfs_ring_hdr *)f->ring;
}

static void go_down(struct fast *f)
{
	if (!f->up)
		return;
	f->up = false;
	f->down_since = mono_ns();
	for (unsigned i = 0; i < SLOTS; i++)
		if (f->reqs[i].busy && !f->reqs[i].done) {
			f->reqs[i].done = true;
			f->reqs[i].res = -ENOTCONN;
		}
}

static bool server_alive(struct fast *f)
{
	/* EPERM: alive, and not ours to signal (the daemon runs as root) */
	bool running = kill(f->server_pid, 0) == 0 || errno == EPERM;

	return f->up && running && hdr(f)->server_gen == f->server_gen &&
	       !atomic_load(&hdr(f)->closed);
}

/* Drain completions into the request table (lock held). */
static void reap_locked(struct fast *f)
{
	struct kvfs_ring_hdr *h = hdr(f);
	struct kvfs_ring_cqe *cq = kvfs_ring_cq(f->ring);
	uint32_t tail = atomic_load_explicit(&h->cq_tail, memory_order_acquire);

	while (f->cq_head != tail) {
		struct kvfs_ring_cqe c = cq[f->cq_head & (RING_ENTRIES - 1)];
		struct fast_req *r = &f->reqs[c.user_data & 0xff];

		if (c.user_data >> 8 == r->seq && r->busy && !r->done) {
			r->res = c.res;
			r->aux = c.aux;
			r->done = true;
		}
		f->cq_head++;
	}
	atomic_store_explicit(&h->cq_head, f->cq_head, memory_order_release);
}

/*
 * Queue one request (lock held). @payload (if any) is copied into the
 * request's slot and its offset passed in args[@payload_arg].
 * @return the request index, or -EAGAIN if nothing is free, -ENOTCONN if
 * down, -E2BIG if the payload does not fit a slot.
 */
static int submit_locked(struct fast *f, struct kvfs_ring_sqe *e, const void *payload,
			 size_t plen, int payload_arg)
{
	struct kvfs_ring_hdr *h;
	unsigned i;

	if (!f->up)
		return -ENOTCONN;
	if (plen > SLOT_BYTES)
		return -E2BIG;
	reap_locked(f);
	h = hdr(f);
	for (i = 0; i < SLOTS && f->reqs[i].busy; i++)
		;
	if (i == SLOTS || f->sq_tail - atomic_load(&h->sq_head) >= RING_ENTRIES)
		return -EAGAIN;
	f->reqs[i] = (struct fast_req){.busy = true, .seq = ++f->seq & 0xffffffu};
	if (plen) {
		memcpy(f->ring + h->data_off + (size_t)i * SLOT_BYTES, payload, plen);
		e->args[payload_arg] = (uint64_t)i * SLOT_BYTES;
	}
	e->user_data = (uint64_t)f->reqs[i].seq << 8 | i;
	kvfs_ring_sq(f->ring)[f->sq_tail & (RING_ENTRIES - 1)] = *e;
	atomic_store_explicit(&h->sq_tail, ++f->sq_tail, memory_order_release);
	if (atomic_load(&h->server_sleeping))
		futex(&h->server_sleeping, FUTEX_WAKE, 1, NULL);
	return (int)i;
}

/* Wait for request @i; frees it. @return its result. */
static int64_t wait_req(struct fast *f, int i, uint64_t *aux)
{
	uint64_t start = mono_ns(), checked = start;
	int64_t res;

	pthread_mutex_lock(&f->lock);
	for (;;) {
		struct kvfs_ring_hdr *h = hdr(f);
		uint32_t tail;

		if (f->up)
			reap_locked(f);
		if (f->reqs[i].done)
			break;
		if (mono_ns() - checked > DEAD_CHECK_NS) {
			checked = mono_ns();
			if (!server_alive(f) || checked - start > REQ_TIMEOUT_NS) {
				go_down(f);
				continue;
			}
		}
		tail = atomic_load(&h->cq_tail);
		atomic_store(&h->client_waiting, 1);
		pthread_mutex_unlock(&f->lock);
		if (atomic_load(&h->cq_tail) == tail) {
			struct timespec ts = {0, 20 * 1000000L};

			futex(&h->cq_tail, FUTEX_WAIT, tail, &ts);
		}
		pthread_mutex_lock(&f->lock);
		atomic_store(&hdr(f)->client_waiting, 0);
	}
	res = f->reqs[i].res;
	if (aux)
		*aux = f->reqs[i].aux;
	f->reqs[i].busy = false;
	pthread_mutex_unlock(&f->lock);
	return res;
}

/* Submit, waiting for a free slot if need be. @return the index or -errno. */
static int submit(struct fast *f, struct kvfs_ring_sqe *e, const void *payload, size_t plen,
		  int payload_arg)
{
	for (;;) {
		int i;

		pthread_mutex_lock(&f->lock);
		i = submit_locked(f, e, payload, plen, payload_arg);
		pthread_mutex_unlock(&f->lock);
		if (i != -EAGAIN)
			return i;
		sched_yield();
	}
}

static int64_t call(struct fast *f, struct kvfs_ring_sqe *e, const void *payload, size_t plen,
		    int payload_arg, uint64_t *aux)
{
	int i = submit(f, e, payload, plen, payload_arg);

	return i < 0 ? i : wait_req(f, i, aux);
}

/* Create and register a ring, open the namespace on it. */
static int connect_ring(struct fast *f)
{
	struct kvfs_ring_sqe e = {.op = KVFS_OP_OPEN_NS};
	struct kvfs_ring_hdr *h;
	int64_t res;
	int rc;

	f->ring_bytes = 4096 + RING_ENTRIES * (sizeof(struct kvfs_ring_sqe) +
					       sizeof(struct kvfs_ring_cqe)) + DATA_BYTES;
	f->ring_fd = sealed_memfd("kvfs-ring", f->ring_bytes);
	if (f->ring_fd < 0)
		return f->ring_fd;
	f->ring = mmap(NULL, f->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, f->ring_fd, 0);
	if (f->ring == MAP_FAILED) {
		f->ring = NULL;
		rc = -errno;
		goto out_close;
	}
	h = hdr(f);
	h->magic = KVFS_RING_MAGIC;
	h->version = KVFS_RING_VERSION;
	h->sq_entries = h->cq_entries = RING_ENTRIES;
	h->sq_off = 4096;
	h->cq_off = h->sq_off + RING_ENTRIES * sizeof(struct kvfs_ring_sqe);
	h->data_off = h->cq_off + RING_ENTRIES * sizeof(struct kvfs_ring_cqe);
	h->data_bytes = DATA_BYTES;
	f->sq_tail = f->cq_head = 0;
	f->ring_id = atomic_fetch_add(&ring_ids, 1);
	rc = do_register(f, "ring", f->ring_id, f->ring_fd);
	if (rc)
		goto out_unmap;
	f->server_pid = (pid_t)h->server_pid;
	f->server_gen = h->server_gen;
	f->up = true;
	e.args[1] = strlen(f->rel);
	res = call(f, &e, f->rel, strlen(f->rel), 0, NULL);
	if (res < 0) {
		rc = (int)res;
		goto out_unregister;
	}
	f->ns_id = (uint32_t)res;
	/* Buffers registered before (a reconnect) register again. */
	for (struct fast_buf *b = f->bufs; b; b = b->next)
		b->registered = do_register(f, buf_kind(b), b->id, b->fd) == 0;
	return 0;

out_unregister:
	f->up = false;
	do_unregister(f, "ring", f->ring_id);
out_unmap:
	munmap(f->ring, f->ring_bytes);
	f->ring = NULL;
out_close:
	close(f->ring_fd);
	f->ring_fd = -1;
	return rc;
}

static void disconnect_ring(struct fast *f)
{
	if (!f->ring)
		return;
	go_down(f);
	atomic_store(&hdr(f)->closed, 1);
	do_unregister(f, "ring", f->ring_id);
	munmap(f->ring, f->ring_bytes);
	close(f->ring_fd);
	f->ring = NULL;
	f->ring_fd = -1;
}

/* --- what libkvfs.c calls ------------------------------------------------------------------ */

int fast_open(kvfs_ns *ns, bool required)
{
	struct fast *f = calloc(1, sizeof(*f));
	int rc;

	if (!f)
		return -ENOMEM;
	f->ring_fd = -1;
	pthread_mutex_init(&f->lock, NULL);
	pthread_mutex_init(&f->devsave_lock, NULL);
	rc = find_mount(f, ns->dir);
	if (rc)
		goto out_free;
	f->staging = buf_new(f, STAGING_BYTES);
	if (!f->staging) {
		rc = -ENOMEM;
		goto out_free;
	}
	f->staging->next = f->bufs;
	f->bufs = f->staging;
	rc = connect_ring(f);
	if (rc)
		goto out_free;
	if (!f->staging->registered) {
		rc = -EIO;
		goto out_free;
	}
	ns->fast = f;
	return 0;
out_free:
	disconnect_ring(f);
	while (f->bufs) {
		struct fast_buf *b = f->bufs;

		f->bufs = b->next;
		buf_destroy(f, b);
	}
	pthread_mutex_destroy(&f->devsave_lock);
	pthread_mutex_destroy(&f->lock);
	free(f);
	return required ? rc : 0;
}

void fast_close(kvfs_ns *ns)
{
	struct fast *f = ns->fast;

	if (!f)
		return;
	disconnect_ring(f);
	while (f->bufs) {
		struct fast_buf *b = f->bufs;

		f->bufs = b->next;
		buf_destroy(f, b);
	}
	pthread_mutex_destroy(&f->devsave_lock);
	pthread_mutex_destroy(&f->lock);
	free(f);
	ns->fast = NULL;
}

bool fast_up(kvfs_ns *ns)
{
	struct fast *f = ns->fast;
	bool up;

	if (!f)
		return false;
	pthread_mutex_lock(&f->lock);
	if (f->up && !server_alive(f))
		go_down(f);
	up = f->up;
	if (!up && mono_ns() - f->down_since > RECONNECT_NS) {
		bool busy = false;

		for (unsigned i = 0; i < SLOTS; i++)
			busy |= f->reqs[i].busy;
		if (!busy) {
			disconnect_ring(f);
			pthread_mutex_unlock(&f->lock);
			up = connect_ring(f) == 0; /* nobody else touches a down ring */
			pthread_mutex_lock(&f->lock);
			if (up)
				atomic_fetch_add(&ns->st.reconnects, 1);
			else
				f->down_since = mono_ns();
		}
	}
	pthread_mutex_unlock(&f->lock);
	return up;
}

long fast_match(kvfs_ns *ns, const kvfs_key *keys, size_t n, uint64_t *match_id, uint64_t *gen)
{
	struct fast *f = ns->fast;
	struct kvfs_ring_sqe e = {.op = KVFS_OP_MATCH, .ns = f->ns_id};
	int64_t res;

	e.args[1] = n;
	*gen = f->server_gen;
	res = call(f, &e, keys, n * sizeof(kvfs_key), 0, match_id);
	return (long)res;
}

void fast_release(kvfs_ns *ns, uint64_t match_id, uint64_t gen)
{
	struct fast *f = ns->fast;
	struct kvfs_ring_sqe e = {.op = KVFS_OP_RELEASE};

	if (!f || gen != f->server_gen)
		return; /* that daemon is gone, and its leases with it */
	e.args[0] = match_id;
	call(f, &e, NULL, 0, 0, NULL);
}

void *fast_alloc(kvfs_ns *ns, size_t bytes)
{
	struct fast *f = ns->fast;
	struct fast_buf *b;

	pthread_mutex_lock(&f->lock);
	b = buf_new(f, bytes);
	if (b) {
		b->registered = f->up && do_register(f, "buf", b->id, b->fd) == 0;
		b->next = f->bufs;
		f->bufs = b;
	}
	pthread_mutex_unlock(&f->lock);
	return b ? b->base : NULL;
}

bool fast_free(kvfs_ns *ns, void *mem)
{
	struct fast *f = ns->fast;
	struct fast_buf **pp, *b = NULL;

	if (!f)
		return false;
	pthread_mutex_lock(&f->lock);
	for (pp = &f->bufs; *pp; pp = &(*pp)->next)
		if ((*pp)->base == mem && *pp != f->staging && (*pp)->device == KVFS_DEVICE_HOST) {
			b = *pp;
			*pp = b->next;
			break;
		}
	pthread_mutex_unlock(&f->lock);
	if (b)
		buf_destroy(f, b);
	return b != NULL;
}

/* --- device memory ----------------------------------------------------------------------- */

/*
 * The registration is a sealed memfd holding one struct kvfs_ring_devreg:
 * the daemon reads the handle once and can trust that it never changes.
 */
int fast_dev_register(kvfs_ns *ns, const struct kvfs_dev_buffer *db)
{
	struct fast *f = ns->fast;
	struct kvfs_ring_devreg rec = {
		.magic = KVFS_DEVREG_MAGIC,
		.version = KVFS_RING_VERSION,
		.kind = db->kind,
		.device = db->device,
		.bytes = db->bytes,
		.base = (uint64_t)(uintptr_t)db->base,
		.offset = db->offset,
	};
	const uint8_t *lo = db->base;
	struct fast_buf *b;
	int rc = 0;

	memcpy(rec.uuid, db->uuid, sizeof(rec.uuid));
	memcpy(rec.handle, db->ipc_handle, sizeof(rec.handle));
	b = calloc(1, sizeof(*b));
	if (!b)
		return -ENOMEM;
	b->base = (uint8_t *)db->base;
	b->size = db->bytes;
	b->device = db->device;
	b->id = atomic_fetch_add(&buf_ids, 1);
	b->fd = memfd_create("kvfs-dev", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (b->fd < 0 || pwrite(b->fd, &rec, sizeof(rec), 0) != (ssize_t)sizeof(rec) ||
	    fcntl(b->fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
		rc = -errno;
		goto out_free;
	}
	pthread_mutex_lock(&f->lock);
	for (struct fast_buf *o = f->bufs; o && !rc; o = o->next)
		if (lo < o->base + o->size && o->base < lo + db->bytes)
			rc = -EEXIST;
	if (!rc && !f->up)
		rc = -ENOTCONN;
	if (!rc)
		rc = do_register(f, "dev", b->id, b->fd);
	if (!rc) {
		b->registered = true;
		b->next = f->bufs;
		f->bufs = b;
	}
	pthread_mutex_unlock(&f->lock);
	if (!rc)
		return 0;
out_free:
	if (b->fd >= 0)
		close(b->fd);
	free(b);
	return rc;
}

int fast_dev_unregister(kvfs_ns *ns, void *base)
{
	struct fast *f = ns->fast;
	struct fast_buf **pp, *b = NULL;

	pthread_mutex_lock(&f->lock);
	for (pp = &f->bufs; *pp; pp = &(*pp)->next)
		if ((*pp)->base == base && (*pp)->device != KVFS_DEVICE_HOST) {
			b = *pp;
			*pp = b->next;
			break;
		}
	pthread_mutex_unlock(&f->lock);
	if (!b)
		return -ENOENT;
	buf_destroy(f, b);
	return 0;
}

int fast_buf_device(kvfs_ns *ns, const void *p, size_t len)
{
	struct fast *f = ns->fast;
	struct fast_buf *b;
	int dev;

	pthread_mutex_lock(&f->lock);
	b = buf_of(f, p, len);
	dev = b ? b->device : -ENOENT;
	pthread_mutex_unlock(&f->lock);
	return dev;
}

int fast_save_dev(kvfs_ns *ns, const struct kvfs_block_desc *d, const kvfs_key *key,
		  const struct kvfs_kv_layer *layers, uint32_t block_id)
{
	struct fast *f = ns->fast;
	uint32_t L = ns->layout.num_layers;
	size_t plen = KVFS_KEY_BYTES + (size_t)L * sizeof(struct kvfs_ring_devpart);
	struct kvfs_ring_sqe e = {.op = KVFS_OP_SAVE_DEV, .ns = f->ns_id};
	uint8_t *payload = malloc(plen);
	uint64_t *zero = calloc(L, sizeof(*zero));
	int rc = 0;

	if (!payload || !zero) {
		rc = -ENOMEM;
		goto out;
	}
	if (plen > SLOT_BYTES) {
		rc = -E2BIG;
		goto out;
	}
	memcpy(payload, key, KVFS_KEY_BYTES);
	pthread_mutex_lock(&f->lock);
	for (uint32_t l = 0; l < L && !rc; l++) {
		const struct kvfs_kv_layer *ly = &layers[l];
		const uint8_t *k = (const uint8_t *)ly->k + (size_t)block_id * ly->block_stride;
		const uint8_t *v = ly->v ? (const uint8_t *)ly->v + (size_t)block_id * ly->block_stride
					 : NULL;
		struct fast_buf *b = buf_of(f, k, ns->part_bytes);
		struct kvfs_ring_devpart dp = {0};

		if (!b || b->device == KVFS_DEVICE_HOST || ly->token_stride != ns->row_bytes ||
		    (v && buf_of(f, v, ns->part_bytes) != b)) {
			rc = -ENOTSUP;
			break;
		}
		dp.buf = b->id;
		dp.k_off = (uint64_t)(k - b->base);
		dp.v_off = v ? (uint64_t)(v - b->base) : 0;
		memcpy(payload + KVFS_KEY_BYTES + (size_t)l * sizeof(dp), &dp, sizeof(dp));
	}
	pthread_mutex_unlock(&f->lock);
	if (rc)
		goto out;
	pthread_mutex_lock(&f->devsave_lock);
	if (!f->devsave) { /* room for any header, registered once */
		void *mem = fast_alloc(ns, KVFS_BLOCK_MAX_HEADER);

		pthread_mutex_lock(&f->lock);
		f->devsave = mem ? buf_of(f, mem, KVFS_BLOCK_MAX_HEADER) : NULL;
		pthread_mutex_unlock(&f->lock);
	}
	if (!f->devsave) {
		rc = -ENOMEM;
	} else {
		rc = kvfs_block_encode_header(d, zero, f->devsave->base, f->devsave->size, NULL);
		e.args[0] = f->devsave->id;
		e.args[1] = 0;
		e.args[2] = kvfs_layout_header_bytes(&d->layout, d->extra_len);
		if (!rc)
			rc = (int)call(f, &e, payload, plen, 3, NULL);
	}
	pthread_mutex_unlock(&f->devsave_lock);
out:
	free(payload);
	free(zero);
	return rc;
}

/*
 * Start a load: one READ for the blocks' fixed headers into staging, then
 * one READ per layer straight into the engine's pages. Every destination
 * must lie in memory from kvfs_alloc() with contiguous token rows.
 * @return 0; -ENOTSUP if the pages do not allow it (use the POSIX path);
 * -ENOTCONN; -E2BIG.
 */
int fast_load_start(kvfs_load *ld)
{
	kvfs_ns *ns = ld->m->ns;
	struct fast *f = ns->fast;
	uint32_t L = ns->layout.num_layers;
	size_t per_layer = ld->n * (ns->layout.kind == KVFS_KIND_MLA ? 1 : 2);
	struct kvfs_ring_desc *d;
	uint32_t *bufid;
	uint64_t *bufoff;
	int rc = 0;

	if (ld->m->gen != f->server_gen)
		return -ENOTCONN;
	if (ld->n * HDR_PROBE > STAGING_BYTES ||
	    per_layer * sizeof(*d) > SLOT_BYTES || ld->n * sizeof(*d) > SLOT_BYTES)
		return -ENOTSUP;
	/* Translate every destination first: all or nothing. */
	bufid = malloc(sizeof(*bufid) * per_layer * L);
	bufoff = malloc(sizeof(*bufoff) * per_layer * L);
	d = malloc(sizeof(*d) * (per_layer > ld->n ? per_layer : ld->n));
	ld->fast_req = malloc(sizeof(int) * (L + 1));
	if (!bufid || !bufoff || !d || !ld->fast_req) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t l = 0; l < L && !rc; l++) {
		const struct kvfs_kv_layer *ly = &ld->layers[l];

		if (ly->token_stride != ns->row_bytes) {
			rc = -ENOTSUP;
			break;
		}
		for (size_t i = 0; i < ld->n && !rc; i++)
			for (size_t part = 0; part < per_layer / ld->n; part++) {
				const uint8_t *p = (const uint8_t *)(part ? ly->v : ly->k) +
						   (size_t)ld->block_ids[i] * ly->block_stride;
				struct fast_buf *b = buf_of(f, p, ns->part_bytes);
				size_t k = (size_t)l * per_layer + i * (per_layer / ld->n) + part;

				if (!b) {
					rc = -ENOTSUP;
					break;
				}
				bufid[k] = b->id;
				bufoff[k] = (uint64_t)(p - b->base);
			}
	}
	if (rc)
		goto out;
	/* Headers (their fixed part) first. */
	for (size_t i = 0; i < ld->n; i++)
		d[i] = (struct kvfs_ring_desc){.block = (uint32_t)(ld->first + i),
					       .buf = f->staging->id,
					       .src_off = 0,
					       .dst_off = i * HDR_PROBE,
					       .len = HDR_PROBE};
	{
		struct kvfs_ring_sqe e = {.op = KVFS_OP_READ};

		e.args[0] = ld->m->fast_id;
		e.args[2] = ld->n;
		ld->fast_req[0] = submit(f, &e, d, ld->n * sizeof(*d), 1);
		if (ld->fast_req[0] < 0) {
			rc = ld->fast_req[0];
			goto out;
		}
	}
	ld->fast_submitted = 1;
	for (uint32_t l = 0; l < L; l++) {
		struct kvfs_ring_sqe e = {.op = KVFS_OP_READ};
		uint64_t src = ns->header_bytes + (uint64_t)l * ns->layer_stride;

		for (size_t i = 0; i < ld->n; i++)
			for (size_t part = 0; part < per_layer / ld->n; part++) {
				size_t k = (size_t)l * per_layer + i * (per_layer / ld->n) + part;

				d[k - (size_t)l * per_layer] = (struct kvfs_ring_desc){
					.block = (uint32_t)(ld->first + i),
					.buf = bufid[k],
					.src_off = src + part * ns->part_bytes,
					.dst_off = bufoff[k],
					.len = ns->part_bytes};
			}
		e.args[0] = ld->m->fast_id;
		e.args[2] = per_layer;
		ld->fast_req[1 + l] = submit(f, &e, d, per_layer * sizeof(*d), 1);
		if (ld->fast_req[1 + l] < 0) {
			rc = ld->fast_req[1 + l];
			break;
		}
		ld->fast_submitted++;
	}
out:
	free(bufid);
	free(bufoff);
	free(d);
	if (rc && !ld->fast_submitted) {
		free(ld->fast_req);
		ld->fast_req = NULL;
	}
	return rc;
}

/* Check the staged headers: each block is the one its key names, with our layout. */
static int check_headers(kvfs_load *ld)
{
	kvfs_ns *ns = ld->m->ns;
	const uint8_t *p = ld->m->ns->fast->staging->base;

	for (size_t i = 0; i < ld->n; i++, p += HDR_PROBE) {
		struct kvfs_layout l;
		uint32_t hb;

		memset(&l, 0, sizeof(l));
		memcpy(l.model_id, p + 24, KVFS_MODEL_ID_BYTES);
		memcpy(&l.num_layers, p + 88, 4);
		memcpy(&l.num_kv_heads, p + 92, 4);
		memcpy(&l.head_dim, p + 96, 4);
		memcpy(&l.tokens_per_block, p + 100, 4);
		memcpy(&l.dtype, p + 104, 2);
		memcpy(&l.kind, p + 106, 2);
		memcpy(&hb, p + 12, 4);
		if (memcmp(p, KVFS_BLOCK_MAGIC, KVFS_BLOCK_MAGIC_BYTES) != 0 ||
		    memcmp(p + 112, &ld->m->keys[ld->first + i], KVFS_KEY_BYTES) != 0 ||
		    hb != ns->header_bytes ||
		    strncmp(l.model_id, ns->layout.model_id, KVFS_MODEL_ID_BYTES) != 0 ||
		    l.num_layers != ns->layout.num_layers ||
		    l.num_kv_heads != ns->layout.num_kv_heads || l.head_dim != ns->layout.head_dim ||
		    l.tokens_per_block != ns->layout.tokens_per_block ||
		    l.dtype != ns->layout.dtype || l.kind != ns->layout.kind)
			return -EBADMSG;
	}
	return 0;
}

/*
 * Wait for requests up to layer @layer (the header READ first).
 * @return 0 or the load's (sticky) error.
 */
int fast_load_wait(kvfs_load *ld, unsigned layer)
{
	struct fast *f = ld->m->ns->fast;

	pthread_mutex_lock(&ld->lock);
	while (!ld->error && ld->layers_done <= layer && ld->fast_waited < ld->fast_submitted) {
		unsigned k = ld->fast_waited;
		int64_t res;

		pthread_mutex_unlock(&ld->lock);
		res = wait_req(f, ld->fast_req[k], NULL);
		pthread_mutex_lock(&ld->lock);
		ld->fast_waited++;
		if (res < 0 && !ld->error)
			ld->error = (int)res == -ENOENT ? -ENOENT : (int)res;
		else if (k == 0 && !ld->error)
			ld->error = check_headers(ld);
		else if (k > 0 && !ld->error)
			ld->layers_done = k;
	}
	if (!ld->error && ld->fast_waited == ld->fast_submitted &&
	    ld->fast_submitted < 1 + ld->m->ns->layout.num_layers)
		ld->error = -ENOTCONN; /* some layers were never sent */
	pthread_mutex_unlock(&ld->lock);
	return ld->error ? ld->error : (ld->layers_done > layer ? 0 : -EINVAL);
}

/* Wait for everything still in flight (so nothing writes engine memory later). */
void fast_load_drain(kvfs_load *ld)
{
	struct fast *f = ld->m->ns->fast;

	while (ld->fast_waited < ld->fast_submitted) {
		wait_req(f, ld->fast_req[ld->fast_waited], NULL);
		ld->fast_waited++;
	}
	free(ld->fast_req);
	ld->fast_req = NULL;
}

/*
 * Store an encoded block (in a registered slot buffer) through the daemon.
 * @return 0, -EEXIST (already cached), or -errno.
 */
int fast_save(kvfs_ns *ns, const struct save_slot *s)
{
	struct fast *f = ns->fast;
	struct fast_buf *b = buf_of(f, s->buf, s->len);
	struct kvfs_ring_sqe e = {.op = KVFS_OP_SAVE, .ns = f->ns_id};

	if (!b)
		return -ENOTSUP;
	e.args[0] = b->id;
	e.args[1] = (uint64_t)(s->buf - b->base);
	e.args[2] = s->len;
	return (int)call(f, &e, &s->key, sizeof(s->key), 3, NULL);
}
