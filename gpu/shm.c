/*
 * gpu/shm.c — the stand-in device for tests (gpu_shm()): device memory in
 * host shared memory, IPC handles as descriptors, streams as threads.
 *
 * Never chosen at run time unless a caller asks for it by name; it exists so
 * that every piece of logic above the device runs in `make test` on machines
 * without a GPU.
 *
 * Devices: gpu_shm_configure() sets how many there are (default 2; a
 * negative count means "no driver") and how many bytes each may allocate
 * (default 1 GiB, accounted per process). Every allocation is its own memfd,
 * sized and sealed against shrinking and growing, mapped shared; the device
 * keeps a list of them (and of mappings opened from other processes) so a
 * copy can check that its device side really is device memory and its host
 * side is not, as CUDA's unified addressing would.
 *
 * IPC handle (the 64 bytes of struct gpu_ipc.handle): magic "kvsh", the
 * exporter's pid, the memfd's number in the exporter, its inode, and the
 * exporter's start time. ipc_open reopens /proc/<pid>/fd/<fd> and checks the
 * inode, size and process, so a recycled descriptor or pid is refused
 * (-ESTALE) rather than mapped.
 *
 * Streams: one worker thread each, running queued operations in order.
 * Every operation has a sequence number; an event records the last one
 * queued before it and is complete when the worker has passed it. The first
 * failed operation's number is kept: events at or after it report -EIO,
 * like CUDA's asynchronous errors (stream_sync reports it once and clears
 * it). A gather/scatter item whose access is not aligned to its width fails
 * as it would on a GPU. Copies call kvfs_fault(KVFS_FAULT_GPU_COPY) when they run, so tests
 * can fail one asynchronously. gpu_shm_stream_hold() stops the worker
 * before its next operation, so tests can observe pending events.
 *
 * Locking: dev->lock guards the allocation lists; s->lock the queue and
 * counters of a stream.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fault.h"
#include "gpu/gpu_i.h"

#define SHM_MAGIC  0x6873766bu /* "kvsh" */
#define MEMFD_NAME "kvfs-gpu-shm"

struct shm_map {
	struct shm_map *next;
	uint8_t *p;
	size_t bytes;
	int fd;	     /* own allocations: the memfd; opened ones: -1 */
	bool pinned; /* host_alloc: host memory, not device */
};

struct shm_dev {
	gpu_dev base;
	pthread_mutex_t lock;
	struct shm_map *maps;
	uint64_t used;
};

struct shm_handle {
	uint32_t magic;
	int32_t pid;
	int32_t fd;
	uint32_t pad;
	uint64_t ino;
	uint64_t start_time;
};

enum shm_op_kind { OP_COPY, OP_KV };

struct shm_op {
	struct shm_op *next;
	enum shm_op_kind kind;
	uint64_t seq;
	void *dst;
	const void *src;
	size_t bytes;
	struct gpu_kv_args kv;
	uint32_t *ids; /* the op's own copies of the host arrays */
	uint8_t **segs;
};

struct gpu_stream {
	struct shm_dev *dev;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct shm_op *head, *tail;
	uint64_t submitted, completed, err_seq;
	bool hold, stop;
};

struct gpu_event {
	gpu_stream *s;
	uint64_t seq;
};

static _Atomic int shm_devices = 2;
static _Atomic uint64_t shm_capacity = 1ull << 30;

void gpu_shm_configure(int devices, uint64_t bytes_per_device)
{
	atomic_store(&shm_devices, devices);
	atomic_store(&shm_capacity, bytes_per_device);
}

static uint64_t proc_start_time(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long st = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f) && (p = strrchr(buf, ')')))
		sscanf(p + 2,
		       "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d "
		       "%*d %*d %llu",
		       &st);
	fclose(f);
	return st;
}

/* --- devices and memory -------------------------------------------------------------- */

static int shm_open_dev(int index, gpu_dev **out)
{
	int n = atomic_load(&shm_devices);
	struct shm_dev *d;

	if (n < 0)
		return gpu_fail(-ENXIO, "no driver (stand-in device configured without one)");
	if (index >= n)
		return gpu_fail(-ENODEV, "no device %d (the stand-in has %d)", index, n);
	d = calloc(1, sizeof(*d));
	if (!d)
		return gpu_fail(-ENOMEM, "out of host memory");
	d->base.ops = gpu_shm();
	d->base.index = index;
	pthread_mutex_init(&d->lock, NULL);
	*out = &d->base;
	return 0;
}

static void shm_close_dev(gpu_dev *gd)
{
	struct shm_dev *d = (struct shm_dev *)gd;

	while (d->maps) {
		struct shm_map *m = d->maps;

		d->maps = m->next;
		munmap(m->p, m->bytes);
		if (m->fd >= 0)
			close(m->fd);
		free(m);
	}
	pthread_mutex_destroy(&d->lock);
	free(d);
}

static int shm_mem_info(gpu_dev *gd, size_t *free_b, size_t *total_b)
{
	struct shm_dev *d = (struct shm_dev *)gd;
	uint64_t cap = atomic_load(&shm_capacity);

	pthread_mutex_lock(&d->lock);
	*total_b = cap;
	*free_b = d->used < cap ? cap - d->used : 0;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

static int shm_map_new(struct shm_dev *d, size_t bytes, bool pinned, void **out)
{
	struct shm_map *m;
	int rc;

	if (!bytes)
		return gpu_fail(-EINVAL, "allocation of 0 bytes");
	m = calloc(1, sizeof(*m));
	if (!m)
		return gpu_fail(-ENOMEM, "out of host memory");
	m->bytes = bytes;
	m->pinned = pinned;
	pthread_mutex_lock(&d->lock);
	if (!pinned && d->used + bytes > atomic_load(&shm_capacity)) {
		rc = gpu_fail(-ENOMEM,
			      "out of memory: %zu bytes asked on device %d, %" PRIu64 " of %" PRIu64
			      " in use",
			      bytes, d->base.index, d->used, atomic_load(&shm_capacity));
		goto out_unlock;
	}
	m->fd = memfd_create(MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (m->fd < 0 || ftruncate(m->fd, (off_t)bytes) ||
	    fcntl(m->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)) {
		rc = gpu_fail(-ENOMEM, "out of memory: memfd of %zu bytes: %s", bytes,
			      strerror(errno));
		goto out_close;
	}
	m->p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd, 0);
	if (m->p == MAP_FAILED) {
		rc = gpu_fail(-ENOMEM, "out of memory: mmap of %zu bytes: %s", bytes,
			      strerror(errno));
		goto out_close;
	}
	if (!pinned)
		d->used += bytes;
	m->next = d->maps;
	d->maps = m;
	pthread_mutex_unlock(&d->lock);
	*out = m->p;
	return 0;
out_close:
	if (m->fd >= 0)
		close(m->fd);
out_unlock:
	pthread_mutex_unlock(&d->lock);
	free(m);
	return rc;
}

/* Unlink the mapping that starts at @p (of the kind asked) and free it. */
static void shm_map_free(struct shm_dev *d, void *p, bool own, bool pinned)
{
	struct shm_map **pp, *m = NULL;

	if (!p)
		return;
	pthread_mutex_lock(&d->lock);
	for (pp = &d->maps; *pp; pp = &(*pp)->next)
		if ((*pp)->p == p && ((*pp)->fd >= 0) == own && (*pp)->pinned == pinned) {
			m = *pp;
			*pp = m->next;
			break;
		}
	if (m && own && !pinned)
		d->used -= m->bytes;
	pthread_mutex_unlock(&d->lock);
	if (!m)
		return;
	munmap(m->p, m->bytes);
	if (m->fd >= 0)
		close(m->fd);
	free(m);
}

static int shm_mem_alloc(gpu_dev *gd, size_t bytes, void **out)
{
	return shm_map_new((struct shm_dev *)gd, bytes, false, out);
}

static void shm_mem_free(gpu_dev *gd, void *p)
{
	shm_map_free((struct shm_dev *)gd, p, true, false);
}

static int shm_host_alloc(gpu_dev *gd, size_t bytes, void **out)
{
	return shm_map_new((struct shm_dev *)gd, bytes, true, out);
}

static void shm_host_free(gpu_dev *gd, void *p)
{
	shm_map_free((struct shm_dev *)gd, p, true, true);
}

/* Is [p, p+len) inside one device mapping of @d (own or opened)? */
static bool shm_is_dev(struct shm_dev *d, const void *p, size_t len)
{
	const uint8_t *b = p;
	bool found = false;

	pthread_mutex_lock(&d->lock);
	for (struct shm_map *m = d->maps; m && !found; m = m->next)
		found = !m->pinned && b >= m->p && b <= m->p + m->bytes &&
			len <= (size_t)(m->p + m->bytes - b);
	pthread_mutex_unlock(&d->lock);
	return found;
}

/* Does [p, p+len) touch any device mapping of @d? */
static bool shm_touches_dev(struct shm_dev *d, const void *p, size_t len)
{
	const uint8_t *b = p;
	bool found = false;

	pthread_mutex_lock(&d->lock);
	for (struct shm_map *m = d->maps; m && !found; m = m->next)
		found = !m->pinned && b < m->p + m->bytes && m->p < b + len;
	pthread_mutex_unlock(&d->lock);
	return found;
}

static int shm_memset(gpu_dev *gd, void *p, int byte, size_t bytes)
{
	if (!shm_is_dev((struct shm_dev *)gd, p, bytes))
		return gpu_fail(-EINVAL, "memset: %p is not device memory", p);
	memset(p, byte, bytes);
	return 0;
}

/* --- streams ------------------------------------------------------------------------- */

static int shm_run(struct shm_op *op)
{
	int rc = kvfs_fault(KVFS_FAULT_GPU_COPY);

	if (rc)
		return rc;
	if (op->kind == OP_COPY) {
		memmove(op->dst, op->src, op->bytes);
		return 0;
	}
	/* the kernel's grid: each part, then each unit of it, one after another */
	for (uint32_t bp = 0; bp < op->kv.nparts; bp++) {
		uint8_t *page, *seg;

		gpu_kv_part(&op->kv, bp, &page, &seg);
		for (uint32_t u = 0; u < op->kv.units_per_part; u++) {
			uint64_t po, so;

			gpu_kv_unit(&op->kv, u, &po, &so);
			/* a GPU faults on an access not aligned to its width
			 * (cudaErrorMisalignedAddress) */
			if (((uintptr_t)(page + po) | (uintptr_t)(seg + so)) & (op->kv.unit - 1))
				return -EFAULT;
			if (op->kv.gather)
				memcpy(seg + so, page + po, op->kv.unit);
			else
				memcpy(page + po, seg + so, op->kv.unit);
		}
	}
	return 0;
}

static void op_free(struct shm_op *op)
{
	free(op->ids);
	free(op->segs);
	free(op);
}

static void *shm_worker(void *arg)
{
	gpu_stream *s = arg;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct shm_op *op;
		int rc;

		while (!s->stop && (!s->head || s->hold))
			pthread_cond_wait(&s->cond, &s->lock);
		if (!s->head && s->stop)
			break;
		if (!s->head || s->hold) /* stopping while held: drop nothing, wait */
			continue;
		op = s->head;
		s->head = op->next;
		if (!s->head)
			s->tail = NULL;
		pthread_mutex_unlock(&s->lock);
		rc = shm_run(op);
		pthread_mutex_lock(&s->lock);
		if (rc && !s->err_seq)
			s->err_seq = op->seq;
		s->completed = op->seq;
		op_free(op);
		pthread_cond_broadcast(&s->cond);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static int shm_stream_new(gpu_dev *gd, gpu_stream **out)
{
	gpu_stream *s = calloc(1, sizeof(*s));

	if (!s)
		return gpu_fail(-ENOMEM, "out of host memory");
	s->dev = (struct shm_dev *)gd;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	if (pthread_create(&s->thread, NULL, shm_worker, s)) {
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->lock);
		free(s);
		return gpu_fail(-ENOMEM, "cannot start a stream thread");
	}
	*out = s;
	return 0;
}

static void shm_stream_free(gpu_stream *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	s->hold = false;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static void shm_queue(gpu_stream *s, struct shm_op *op)
{
	pthread_mutex_lock(&s->lock);
	op->seq = ++s->submitted;
	if (s->tail)
		s->tail->next = op;
	else
		s->head = op;
	s->tail = op;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

static int shm_copy(gpu_stream *s, void *dst, const void *src, size_t bytes, enum gpu_dir dir)
{
	bool dst_dev = dir == GPU_H2D || dir == GPU_D2D;
	bool src_dev = dir == GPU_D2H || dir == GPU_D2D;
	struct shm_op *op;

	if (dir < GPU_H2D || dir > GPU_D2D)
		return gpu_fail(-EINVAL, "copy: bad direction %d", (int)dir);
	if (dst_dev ? !shm_is_dev(s->dev, dst, bytes) : shm_touches_dev(s->dev, dst, bytes))
		return gpu_fail(-EINVAL, "copy: destination %p is %s device memory", dst,
				dst_dev ? "not" : "");
	if (src_dev ? !shm_is_dev(s->dev, src, bytes) : shm_touches_dev(s->dev, src, bytes))
		return gpu_fail(-EINVAL, "copy: source %p is %s device memory", src,
				src_dev ? "not" : "");
	op = calloc(1, sizeof(*op));
	if (!op)
		return gpu_fail(-ENOMEM, "out of host memory");
	op->kind = OP_COPY;
	op->dst = dst;
	op->src = src;
	op->bytes = bytes;
	shm_queue(s, op);
	return 0;
}

static int shm_copy_batch(gpu_stream *s, void *const *dsts, const void *const *srcs,
			  const size_t *sizes, size_t n, enum gpu_dir dir)
{
	for (size_t i = 0; i < n; i++) {
		int rc = shm_copy(s, dsts[i], srcs[i], sizes[i], dir);

		if (rc)
			return rc; /* the earlier ones stay queued, as a failed CUDA batch may */
	}
	return 0;
}

static int shm_kv_map(gpu_stream *s, const struct gpu_kv_xfer *x)
{
	uint64_t seg_bytes = gpu_kv_seg_bytes(x);
	struct shm_op *op;
	int rc = gpu_kv_check(x);

	if (rc)
		return rc;
	for (uint32_t i = 0; i < x->nblocks; i++) {
		uint64_t end = (uint64_t)x->block_ids[i] * x->block_stride +
			       (uint64_t)(x->tokens - 1) * x->token_stride + x->row_bytes;

		if (!shm_is_dev(s->dev, x->segs[i], seg_bytes) ||
		    !shm_is_dev(s->dev, x->k + end - x->row_bytes, x->row_bytes) ||
		    (x->v && !shm_is_dev(s->dev, x->v + end - x->row_bytes, x->row_bytes)))
			return gpu_fail(-EINVAL,
					"gather/scatter: block %" PRIu32 " (engine block %" PRIu32
					") is outside device memory",
					i, x->block_ids[i]);
	}
	op = calloc(1, sizeof(*op));
	if (!op)
		return gpu_fail(-ENOMEM, "out of host memory");
	op->kind = OP_KV;
	op->ids = malloc(sizeof(*op->ids) * x->nblocks);
	op->segs = malloc(sizeof(*op->segs) * x->nblocks);
	if (!op->ids || !op->segs) {
		op_free(op);
		return gpu_fail(-ENOMEM, "out of host memory");
	}
	memcpy(op->ids, x->block_ids, sizeof(*op->ids) * x->nblocks);
	memcpy(op->segs, x->segs, sizeof(*op->segs) * x->nblocks);
	gpu_kv_args_init(x, &op->kv);
	op->kv.block_ids = op->ids;
	op->kv.segs = op->segs;
	shm_queue(s, op);
	return 0;
}

static int shm_stream_sync(gpu_stream *s)
{
	int rc = 0;

	pthread_mutex_lock(&s->lock);
	while (s->completed < s->submitted)
		pthread_cond_wait(&s->cond, &s->lock);
	if (s->err_seq) {
		s->err_seq = 0;
		rc = gpu_fail(-EIO, "a queued copy failed (stand-in device)");
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* --- events -------------------------------------------------------------------------- */

static int shm_event_new(gpu_dev *gd, gpu_event **out)
{
	gpu_event *e = calloc(1, sizeof(*e));

	if (!e)
		return gpu_fail(-ENOMEM, "out of host memory");
	*out = e;
	return 0;
}

static void shm_event_free(gpu_event *e)
{
	free(e);
}

static int shm_event_record(gpu_event *e, gpu_stream *s)
{
	pthread_mutex_lock(&s->lock);
	e->s = s;
	e->seq = s->submitted;
	pthread_mutex_unlock(&s->lock);
	return 0;
}

/* With e->s->lock held. */
static int event_state(const gpu_event *e)
{
	const gpu_stream *s = e->s;

	if (s->err_seq && s->err_seq <= e->seq)
		return gpu_fail(-EIO, "a copy before this event failed (stand-in device)");
	return s->completed >= e->seq ? 0 : -EAGAIN;
}

static int shm_event_query(gpu_event *e)
{
	int rc;

	if (!e->s)
		return 0;
	pthread_mutex_lock(&e->s->lock);
	rc = event_state(e);
	pthread_mutex_unlock(&e->s->lock);
	return rc;
}

static int shm_event_wait(gpu_event *e)
{
	int rc;

	if (!e->s)
		return 0;
	pthread_mutex_lock(&e->s->lock);
	while ((rc = event_state(e)) == -EAGAIN)
		pthread_cond_wait(&e->s->cond, &e->s->lock);
	pthread_mutex_unlock(&e->s->lock);
	return rc;
}

void gpu_shm_stream_hold(gpu_stream *s, bool hold)
{
	pthread_mutex_lock(&s->lock);
	s->hold = hold;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/* --- IPC ----------------------------------------------------------------------------- */

static int shm_ipc_export(gpu_dev *gd, void *p, size_t bytes, struct gpu_ipc *out)
{
	struct shm_dev *d = (struct shm_dev *)gd;
	struct shm_handle h = {.magic = SHM_MAGIC, .pid = getpid(), .fd = -1};
	struct stat st;

	pthread_mutex_lock(&d->lock);
	for (struct shm_map *m = d->maps; m; m = m->next)
		if (m->p == p && m->fd >= 0 && !m->pinned && m->bytes == bytes) {
			h.fd = m->fd;
			break;
		}
	pthread_mutex_unlock(&d->lock);
	if (h.fd < 0)
		return gpu_fail(-EINVAL, "export: %p is not a device allocation of %zu bytes", p,
				bytes);
	if (fstat(h.fd, &st))
		return gpu_fail(-EIO, "export: fstat: %s", strerror(errno));
	h.ino = st.st_ino;
	h.start_time = proc_start_time(h.pid);
	memset(out, 0, sizeof(*out));
	out->impl = GPU_IMPL_SHM;
	out->device = gd->index;
	out->bytes = bytes;
	memcpy(out->handle, &h, sizeof(h));
	return 0;
}

static int shm_ipc_open(gpu_dev *gd, const struct gpu_ipc *ipc, void **out)
{
	struct shm_dev *d = (struct shm_dev *)gd;
	struct shm_handle h;
	struct shm_map *m;
	char path[64], link[128];
	struct stat st;
	ssize_t n;
	int fd, rc;

	memcpy(&h, ipc->handle, sizeof(h));
	if (ipc->impl != GPU_IMPL_SHM)
		return gpu_fail(-EXDEV, "IPC handle of another implementation (%" PRIu32 ")",
				ipc->impl);
	if (ipc->device != gd->index)
		return gpu_fail(-EXDEV, "IPC handle of device %" PRId32 ", this is device %d",
				ipc->device, gd->index);
	if (h.magic != SHM_MAGIC || h.pid <= 0 || h.fd < 0 || !ipc->bytes || ipc->bytes > SIZE_MAX)
		return gpu_fail(-EINVAL, "malformed IPC handle");
	if (proc_start_time(h.pid) != h.start_time)
		return gpu_fail(-ESTALE, "IPC handle of a process that is gone (pid %" PRId32 ")",
				h.pid);
	snprintf(path, sizeof(path), "/proc/%d/fd/%d", (int)h.pid, (int)h.fd);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return gpu_fail(-ESTALE, "IPC handle: %s: %s", path, strerror(errno));
	n = readlink(path, link, sizeof(link) - 1);
	link[n > 0 ? n : 0] = '\0';
	if (n < 0 || fstat(fd, &st) || (uint64_t)st.st_ino != h.ino ||
	    strncmp(link, "/memfd:" MEMFD_NAME, strlen("/memfd:" MEMFD_NAME))) {
		rc = gpu_fail(-ESTALE, "IPC handle names memory that is gone (%s)", link);
		goto out_close;
	}
	if ((uint64_t)st.st_size < ipc->bytes) {
		rc = gpu_fail(-EINVAL, "IPC handle says %" PRIu64 " bytes, the memory has %lld",
			      ipc->bytes, (long long)st.st_size);
		goto out_close;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		rc = gpu_fail(-ENOMEM, "out of host memory");
		goto out_close;
	}
	m->bytes = ipc->bytes;
	m->fd = -1;
	m->p = mmap(NULL, m->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (m->p == MAP_FAILED) {
		free(m);
		rc = gpu_fail(-ENOMEM, "mmap of an IPC handle: %s", strerror(errno));
		goto out_close;
	}
	close(fd);
	pthread_mutex_lock(&d->lock);
	m->next = d->maps;
	d->maps = m;
	pthread_mutex_unlock(&d->lock);
	*out = m->p;
	return 0;
out_close:
	close(fd);
	return rc;
}

int gpu_shm_ipc_owner(const struct gpu_ipc *ipc)
{
	struct shm_handle h;

	memcpy(&h, ipc->handle, sizeof(h));
	return ipc->impl == GPU_IMPL_SHM && h.magic == SHM_MAGIC ? h.pid : 0;
}

static void shm_ipc_close(gpu_dev *gd, void *p)
{
	shm_map_free((struct shm_dev *)gd, p, false, false);
}

static const struct gpu_ops shm_ops = {
	.name = "shm",
	.impl = GPU_IMPL_SHM,
	.open = shm_open_dev,
	.close = shm_close_dev,
	.mem_info = shm_mem_info,
	.mem_alloc = shm_mem_alloc,
	.mem_free = shm_mem_free,
	.host_alloc = shm_host_alloc,
	.host_free = shm_host_free,
	.memset = shm_memset,
	.stream_new = shm_stream_new,
	.stream_free = shm_stream_free,
	.copy = shm_copy,
	.copy_batch = shm_copy_batch,
	.kv_map = shm_kv_map,
	.stream_sync = shm_stream_sync,
	.event_new = shm_event_new,
	.event_free = shm_event_free,
	.event_record = shm_event_record,
	.event_query = shm_event_query,
	.event_wait = shm_event_wait,
	.ipc_export = shm_ipc_export,
	.ipc_open = shm_ipc_open,
	.ipc_close = shm_ipc_close,
};

const struct gpu_ops *gpu_shm(void)
{
	return &shm_ops;
}
