/*
 * tier/nvme.c — the NVMe segment store.
 *
 * Owns, for each configured directory (a "device"): its lock file, its
 * identity file, its segment files and an in-memory free map (a bitmap, one
 * bit per page, set = allocated). Per store it owns a template io_uring that
 * holds the registered DRAM arena, and one io_uring per thread that has done
 * I/O (created lazily, destroyed when the thread exits or at nvme_close).
 *
 * On-disk layout of a device directory:
 *
 *   lock       flock(LOCK_EX | LOCK_NB)ed while the store is open; holds the
 *              owner's pid as text, only for the "in use" message.
 *   kvfs-nvme  the identity, 64 bytes, little-endian:
 *                 0  magic "KVFSNVME"                       8 bytes
 *                 8  format version (1)                     u32
 *                12  page size                              u32
 *                16  device bytes (whole pages)             u64
 *                24  segment bytes (1 GiB)                  u64
 *                32  store id (random at creation, shared   16 bytes
 *                    by every directory of one store)
 *                48  index of this directory in the store   u32
 *                52  number of directories in the store     u32
 *                56  XXH3-64 of bytes 0..55                 u64
 *              Written last (to kvfs-nvme.tmp, fsynced, renamed over, the
 *              directory fsynced), so a directory without one holds no data.
 *              A mismatch with the configuration is refused, never
 *              reinterpreted: page size, device bytes, segment bytes, index,
 *              count or store id. A directory whose identity is missing
 *              while its siblings have one (creation interrupted, or the
 *              directory emptied by hand) joins their store afresh; any
 *              extent the catalog still names there then fails its checksum.
 *   seg-NNNNN  segment files, NNNNN from 00000, fallocate()d (never sparse)
 *              to segment bytes each; the last holds the rest of the device.
 *
 * Page p of a device is bytes [(p % P) * page_size, +page_size) of
 * seg-(p / P), P = segment bytes / page_size. An extent may straddle two
 * segments; its I/O is split there.
 *
 * What an extent holds on disk: its first `len` bytes are the data (XXH3-64
 * in `csum`). When `len` is not a multiple of 4096 the last 4 KiB sector is
 * written whole through a per-ring bounce buffer, with zeros after the data;
 * pages after that sector are never written. Reads transfer whole sectors
 * too, the last partial one through the bounce buffer, so a caller's buffer
 * is never written beyond the extent's `len` bytes.
 *
 * Invariants:
 *   - bit p of dev->bitmap is set iff page p is allocated or reserved;
 *     dev->nfree counts the clear bits; s->used_pages is the sum of set bits.
 *   - registered file index i of every ring is s->segs[i].fd.
 *   - a ring is used only by the thread that created it; ring->mem_gen ==
 *     s->mem_gen means its fixed-buffer table is s->mem_iov.
 *   - a segment's dirty flag is set after a write to it completes and
 *     cleared only just before an fdatasync of it (set again if that fails).
 *
 * Locking:
 *   - dev->lock guards one bitmap. nvme_alloc and nvme_reserve take every
 *     device lock in index order (all-or-nothing across devices); nvme_free
 *     takes one at a time. Allocation is per file, not per page.
 *   - s->mem_lock guards the template ring and the memory registration.
 *   - rings_lock (global) guards the list of live rings of all stores, so a
 *     thread exiting (the key destructor) and nvme_close never both free one.
 *   - data I/O takes no lock at all; stats are relaxed atomics.
 *
 * I/O: an extent is cut into pieces, each one contiguous in memory and on
 * disk, inside one segment and one registered buffer; one SQE per piece
 * (IOSQE_FIXED_FILE; READ_FIXED / WRITE_FIXED inside registered memory,
 * plain READ / WRITE elsewhere), up to RING_DEPTH in flight, submitted and
 * reaped in batches with io_uring_submit_and_wait. Writes hash an extent
 * and kick its pieces before hashing the next, so hashing overlaps the
 * device; reads verify an extent's checksum as soon as its last piece lands.
 * A short transfer is resubmitted for its rest; -EAGAIN / -EINTR results are
 * retried a few times; any other error stops queueing, drains what is in
 * flight (the kernel may still be using the caller's buffers) and is
 * returned. kvfs_fault() runs before each extent is queued and once per
 * nvme_sync, and its error takes exactly the device-error path.
 *
 * Rings: the template ring pins the arena once (io_uring_register_buffers,
 * in <= 1 GiB iovecs); a thread's ring clones that table
 * (IORING_REGISTER_CLONE_BUFFERS, Linux 6.12+, no second pinning) or, on
 * older kernels, registers the arena itself, which pins it again per ring.
 * Every ring registers all segment files. A ring that cannot register the
 * memory does plain I/O, which is correct, only slower.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/fault.h"
#include "core/log.h"
#include "core/util.h"
#include "tier/nvme.h"

#define SEG_BYTES   (1ull << 30)
#define SECTOR	    4096u
#define RING_DEPTH  128u
#define MEM_CHUNK   (1ull << 30) /* largest registered iovec */
#define ID_NAME	    "kvfs-nvme"
#define ID_SIZE	    64
#define ID_VERSION  1u
#define SEG_NAME    "seg-%05u"
#define MAX_RETRIES 3

/* Not in liburing 2.3's headers: Linux 6.12+ shares one buffer table. */
#define REGISTER_CLONE_BUFFERS 30
struct clone_buffers_arg {
	uint32_t src_fd, flags, src_off, dst_off, nr, pad[3];
};

static const char id_magic[8] = {'K', 'V', 'F', 'S', 'N', 'V', 'M', 'E'};

struct nvme_ident {
	uint32_t version, page_size;
	uint64_t dev_bytes, seg_bytes;
	uint8_t store_id[16];
	uint32_t index, count;
};

struct nvme_dev {
	char *dir;
	int lock_fd;
	uint64_t bytes, npages;
	unsigned nsegs, seg_base; /* segments; index of the first in s->segs */
	pthread_mutex_t lock;
	uint64_t *bitmap;
	uint64_t nfree, cursor; /* next-fit search starts at cursor */
};

struct nvme_seg {
	int fd;
	atomic_bool dirty;
};

/* One contiguous transfer: one SQE (again, for a short transfer's rest). */
struct nvme_piece {
	char *addr;
	uint64_t off;  /* in the segment file */
	uint32_t len;  /* bytes still to move */
	uint32_t ext;  /* extent index within the call */
	uint32_t file; /* registered file index */
	int32_t buf;   /* registered buffer index, -1 for plain I/O */
	uint8_t retries;
	bool bounce;
};

/* Per-extent progress of one call. */
struct nvme_ext_state {
	uint32_t pending; /* pieces in flight, +1 while still being queued */
	int err;
	int iov_i; /* where its bytes start in the caller's iovec */
	size_t iov_off;
};

struct nvme_ring {
	struct io_uring ring;
	struct nvme_store *s;
	struct nvme_ring *next; /* rings_list, under rings_lock */
	bool broken;		/* a submit failed: replace at the next call */
	bool cloned;		/* its fixed buffers are the template's table */
	unsigned mem_gen;
	char *fixed_base; /* registered memory this ring can use (NULL: none) */
	uint64_t fixed_bytes;
	unsigned inflight, nfree;
	uint16_t free_slots[RING_DEPTH];
	struct nvme_piece pieces[RING_DEPTH];
	struct nvme_ext_state *ext;
	unsigned ext_cap;
	char *bounce; /* one sector, SECTOR-aligned */
	XXH3_state_t *xxh;
};

struct nvme_store {
	uint32_t page_size, page_shift, extent_pages;
	uint64_t pages_per_seg;
	unsigned ndevs, nsegs;
	struct nvme_dev *devs;
	struct nvme_seg *segs;
	int *fds; /* s->segs[i].fd, for io_uring_register_files */
	pthread_key_t key;
	atomic_uint next_dev;

	pthread_mutex_t mem_lock;
	struct io_uring tmpl; /* holds the registered arena, never submits */
	struct iovec *mem_iov;
	unsigned mem_nbufs;
	atomic_uint mem_gen;
	int clone_ok; /* 1 yes, 0 no, -1 not tried yet; under mem_lock */
	bool mem_warned;

	atomic_bool full;
	_Atomic uint64_t used_pages;
	_Atomic uint64_t reads, read_bytes, writes, write_bytes, syncs;
	_Atomic uint64_t read_errors, write_errors, csum_errors;
};

static pthread_mutex_t rings_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvme_ring *rings_list;

static void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static inline void stat_add(_Atomic uint64_t *c, uint64_t v)
{
	atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

/* --- free map -------------------------------------------------------------- */

/* First index in [from, end) whose bit equals @set, or @end. */
static uint64_t bm_next(const uint64_t *bm, uint64_t from, uint64_t end, bool set)
{
	while (from < end) {
		uint64_t w = set ? bm[from >> 6] : ~bm[from >> 6];

		w &= ~0ull << (from & 63);
		if (w) {
			uint64_t i = (from & ~63ull) + (uint64_t)__builtin_ctzll(w);
			return i < end ? i : end;
		}
		from = (from | 63) + 1;
	}
	return end;
}

static void bm_fill(uint64_t *bm, uint64_t start, uint64_t count, bool set)
{
	while (count) {
		unsigned bit = start & 63;
		uint64_t n = KVFS_MIN(64 - bit, count);
		uint64_t mask = (n == 64 ? ~0ull : (1ull << n) - 1) << bit;

		if (set)
			bm[start >> 6] |= mask;
		else
			bm[start >> 6] &= ~mask;
		start += n;
		count -= n;
	}
}

static uint64_t bm_count(const uint64_t *bm, uint64_t start, uint64_t count)
{
	uint64_t total = 0;

	while (count) {
		unsigned bit = start & 63;
		uint64_t n = KVFS_MIN(64 - bit, count);
		uint64_t mask = (n == 64 ? ~0ull : (1ull << n) - 1) << bit;

		total += (uint64_t)__builtin_popcountll(bm[start >> 6] & mask);
		start += n;
		count -= n;
	}
	return total;
}

/*
 * Take up to @want contiguous free pages of @d: the first run of at least
 * @want at or after the cursor (next fit, wrapping), else the longest run.
 * @return pages taken (0 only if the device is full); *page the first.
 */
static uint64_t dev_take(struct nvme_dev *d, uint64_t want, uint64_t *page)
{
	uint64_t best = 0, best_at = 0, at = 0, got;
	bool found = false;

	if (d->nfree == 0)
		return 0;
	for (int pass = 0; pass < 2 && !found; pass++) {
		uint64_t p = pass ? 0 : d->cursor, hi = pass ? d->cursor : d->npages;

		while (p < hi) {
			uint64_t a = bm_next(d->bitmap, p, hi, false), b;

			if (a == hi)
				break;
			b = bm_next(d->bitmap, a, d->npages, true);
			if (b - a >= want) {
				at = a;
				found = true;
				break;
			}
			if (b - a > best) {
				best = b - a;
				best_at = a;
			}
			p = b;
		}
	}
	if (!found)
		at = best_at;
	got = found ? want : best;
	bm_fill(d->bitmap, at, got, true);
	d->nfree -= got;
	d->cursor = at + got == d->npages ? 0 : at + got;
	*page = at;
	return got;
}

static void lock_devs(struct nvme_store *s)
{
	for (unsigned i = 0; i < s->ndevs; i++)
		pthread_mutex_lock(&s->devs[i].lock);
}

static void unlock_devs(struct nvme_store *s)
{
	for (unsigned i = s->ndevs; i-- > 0;)
		pthread_mutex_unlock(&s->devs[i].lock);
}

/* Is @e inside its device? (Says nothing of who owns it.) */
static bool ext_in_range(const struct nvme_store *s, const struct nvme_extent *e)
{
	const struct nvme_dev *d;

	if (e->dev >= s->ndevs || e->npages == 0)
		return false;
	d = &s->devs[e->dev];
	return e->page < d->npages && e->npages <= d->npages - e->page &&
	       e->len <= (uint64_t)e->npages * s->page_size;
}

int nvme_alloc(struct nvme_store *s, uint64_t bytes, struct nvme_extent **ext, unsigned *n)
{
	uint64_t need, left, bytes_left = bytes, free_total = 0;
	struct nvme_extent *out = NULL;
	unsigned cnt = 0, cap, d;
	int rc = 0;

	*ext = NULL;
	*n = 0;
	if (bytes == 0)
		return 0;
	need = (bytes - 1) / s->page_size + 1;
	lock_devs(s);
	for (unsigned i = 0; i < s->ndevs; i++)
		free_total += s->devs[i].nfree;
	if (need > free_total) {
		rc = -ENOSPC;
		goto out_unlock;
	}
	cap = (unsigned)KVFS_MIN((need - 1) / s->extent_pages + 1 + s->ndevs, UINT32_MAX / 64);
	out = malloc(cap * sizeof(*out));
	if (!out) {
		rc = -ENOMEM;
		goto out_unlock;
	}
	d = atomic_fetch_add_explicit(&s->next_dev, 1, memory_order_relaxed) % s->ndevs;
	for (left = need; left;) {
		uint64_t chunk = KVFS_MIN((uint64_t)s->extent_pages, left);

		while (chunk) {
			uint64_t page = 0, got;

			/* The total was checked: some device has room. */
			while (s->devs[d].nfree == 0)
				d = (d + 1) % s->ndevs;
			if (cnt == cap) {
				struct nvme_extent *bigger = realloc(out, 2 * cap * sizeof(*out));

				if (!bigger) {
					rc = -ENOMEM;
					goto out_rollback;
				}
				out = bigger;
				cap *= 2;
			}
			got = dev_take(&s->devs[d], chunk, &page);
			out[cnt] = (struct nvme_extent){
				.dev = (uint16_t)d,
				.npages = (uint32_t)got,
				.page = page,
				.len = (uint32_t)KVFS_MIN(got * s->page_size, bytes_left),
			};
			bytes_left -= out[cnt].len;
			cnt++;
			left -= got;
			chunk -= got;
		}
		d = (d + 1) % s->ndevs;
	}
	atomic_fetch_add(&s->used_pages, need);
	*ext = out;
	*n = cnt;
	out = NULL;
	goto out_unlock;

out_rollback:
	for (unsigned i = 0; i < cnt; i++) {
		bm_fill(s->devs[out[i].dev].bitmap, out[i].page, out[i].npages, false);
		s->devs[out[i].dev].nfree += out[i].npages;
	}
out_unlock:
	unlock_devs(s);
	free(out);
	return rc;
}

void nvme_free(struct nvme_store *s, const struct nvme_extent *ext, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		const struct nvme_extent *e = &ext[i];
		struct nvme_dev *d;
		uint64_t held;

		if (!ext_in_range(s, e)) {
			log_err("nvme: freeing extent outside its device (dev %u page %" PRIu64
				" +%u); ignored",
				e->dev, e->page, e->npages);
			continue;
		}
		d = &s->devs[e->dev];
		pthread_mutex_lock(&d->lock);
		held = bm_count(d->bitmap, e->page, e->npages);
		bm_fill(d->bitmap, e->page, e->npages, false);
		d->nfree += held;
		pthread_mutex_unlock(&d->lock);
		atomic_fetch_sub(&s->used_pages, held);
		if (held != e->npages)
			log_err("nvme: extent dev %u page %" PRIu64 " +%u freed with %" PRIu64
				" pages not allocated",
				e->dev, e->page, e->npages, e->npages - held);
	}
}

int nvme_reserve(struct nvme_store *s, const struct nvme_extent *ext, unsigned n)
{
	uint64_t pages = 0;
	unsigned i;
	int rc = 0;

	for (i = 0; i < n; i++)
		if (!ext_in_range(s, &ext[i]))
			return -EINVAL;
	lock_devs(s);
	for (i = 0; i < n; i++) {
		struct nvme_dev *d = &s->devs[ext[i].dev];
		uint64_t end = ext[i].page + ext[i].npages;

		if (bm_next(d->bitmap, ext[i].page, end, true) < end) {
			rc = -EEXIST;
			break;
		}
		bm_fill(d->bitmap, ext[i].page, ext[i].npages, true);
		d->nfree -= ext[i].npages;
		pages += ext[i].npages;
	}
	if (rc) {
		/* Only pages this call set: they were all clear before it. */
		while (i-- > 0) {
			bm_fill(s->devs[ext[i].dev].bitmap, ext[i].page, ext[i].npages, false);
			s->devs[ext[i].dev].nfree += ext[i].npages;
		}
		pages = 0;
	}
	atomic_fetch_add(&s->used_pages, pages);
	unlock_devs(s);
	return rc;
}

/* --- rings ------------------------------------------------------------------ */

static void ring_free(struct nvme_ring *r)
{
	io_uring_queue_exit(&r->ring);
	XXH3_freeState(r->xxh);
	free(r->bounce);
	free(r->ext);
	free(r);
}

/* Unlink @r from the live list. @return true if this caller now owns it. */
static bool ring_unlink(struct nvme_ring *r)
{
	bool found = false;

	pthread_mutex_lock(&rings_lock);
	for (struct nvme_ring **pp = &rings_list; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			found = true;
			break;
		}
	}
	pthread_mutex_unlock(&rings_lock);
	return found;
}

/* Thread exit. nvme_close may have freed the ring already: then it is gone. */
static void ring_destructor(void *arg)
{
	struct nvme_ring *r = arg;

	if (ring_unlink(r))
		ring_free(r);
}

/*
 * Bring @r's fixed-buffer table in line with the store's registered memory:
 * clone the template ring's table (Linux 6.12+: no second pinning of the
 * arena) or register the arena again. On failure the ring does plain I/O.
 * Called with s->mem_lock held, from the ring's own thread.
 */
static void ring_sync_mem(struct nvme_store *s, struct nvme_ring *r)
{
	int rc;

	if (r->fixed_base)
		io_uring_unregister_buffers(&r->ring);
	r->fixed_base = NULL;
	r->fixed_bytes = 0;
	r->cloned = false;
	r->mem_gen = atomic_load(&s->mem_gen);
	if (!s->mem_nbufs)
		return;
	rc = -EINVAL;
	if (s->clone_ok != 0) {
		struct clone_buffers_arg arg = {.src_fd = (uint32_t)s->tmpl.ring_fd};

		rc = (int)syscall(__NR_io_uring_register, r->ring.ring_fd, REGISTER_CLONE_BUFFERS,
				  &arg, 1);
		rc = rc < 0 ? -errno : 0;
		r->cloned = rc == 0;
		if (rc == 0)
			s->clone_ok = 1;
		else if (rc == -EINVAL && s->clone_ok < 0) /* an unknown opcode */
			s->clone_ok = 0;
	}
	if (rc)
		rc = io_uring_register_buffers(&r->ring, s->mem_iov, s->mem_nbufs);
	if (rc) {
		if (!s->mem_warned)
			log_warn("nvme: cannot register the DRAM arena with a thread's io_uring "
				 "(%s); that thread does plain I/O",
				 strerror(-rc));
		s->mem_warned = true;
		return;
	}
	r->fixed_base = s->mem_iov[0].iov_base;
	r->fixed_bytes = 0;
	for (unsigned i = 0; i < s->mem_nbufs; i++)
		r->fixed_bytes += s->mem_iov[i].iov_len;
}

static int ring_create(struct nvme_store *s, struct nvme_ring **out)
{
	struct io_uring_params p = {
		.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
	};
	struct nvme_ring *r;
	int rc;

	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->s = s;
	r->xxh = XXH3_createState();
	if (!r->xxh || posix_memalign((void **)&r->bounce, SECTOR, SECTOR)) {
		rc = -ENOMEM;
		goto out_free;
	}
	rc = io_uring_queue_init_params(RING_DEPTH, &r->ring, &p);
	if (rc == -EINVAL) { /* before Linux 6.1 */
		memset(&p, 0, sizeof(p));
		rc = io_uring_queue_init_params(RING_DEPTH, &r->ring, &p);
	}
	if (rc)
		goto out_free;
	rc = io_uring_register_files(&r->ring, s->fds, s->nsegs);
	if (rc) {
		io_uring_queue_exit(&r->ring);
		goto out_free;
	}
	for (unsigned i = 0; i < RING_DEPTH; i++)
		r->free_slots[i] = (uint16_t)i;
	r->nfree = RING_DEPTH;
	pthread_mutex_lock(&s->mem_lock);
	ring_sync_mem(s, r);
	pthread_mutex_unlock(&s->mem_lock);

	pthread_mutex_lock(&rings_lock);
	r->next = rings_list;
	rings_list = r;
	pthread_mutex_unlock(&rings_lock);
	pthread_setspecific(s->key, r);
	log_debug("nvme: new io_uring for thread %ld: %u segment files, fixed buffers %s",
		  (long)syscall(SYS_gettid), s->nsegs,
		  r->fixed_base ? (r->cloned ? "cloned" : "registered") : "none");
	*out = r;
	return 0;

out_free:
	XXH3_freeState(r->xxh);
	free(r->bounce);
	free(r);
	return rc;
}

/* The calling thread's ring, created on its first I/O. */
static int ring_get(struct nvme_store *s, struct nvme_ring **out)
{
	struct nvme_ring *r = pthread_getspecific(s->key);

	if (r && r->broken) {
		pthread_setspecific(s->key, NULL);
		if (ring_unlink(r))
			ring_free(r);
		r = NULL;
	}
	if (!r)
		return ring_create(s, out);
	if (r->mem_gen != atomic_load_explicit(&s->mem_gen, memory_order_acquire)) {
		pthread_mutex_lock(&s->mem_lock);
		ring_sync_mem(s, r);
		log_debug("nvme: io_uring of thread %ld follows new memory: fixed buffers %s",
			  (long)syscall(SYS_gettid),
			  r->fixed_base ? (r->cloned ? "cloned" : "registered") : "none");
		pthread_mutex_unlock(&s->mem_lock);
	}
	*out = r;
	return 0;
}

int nvme_register_memory(struct nvme_store *s, void *base, uint64_t bytes)
{
	unsigned nbufs;
	struct iovec *iov;
	int rc;

	if (!base || !bytes || (uintptr_t)base % SECTOR)
		return -EINVAL;
	nbufs = (unsigned)((bytes - 1) / MEM_CHUNK + 1);
	if (nbufs > 16384) /* IORING_MAX_REG_BUFFERS */
		return -EINVAL;
	iov = calloc(nbufs, sizeof(*iov));
	if (!iov)
		return -ENOMEM;
	for (unsigned i = 0; i < nbufs; i++) {
		iov[i].iov_base = (char *)base + (uint64_t)i * MEM_CHUNK;
		iov[i].iov_len = (size_t)KVFS_MIN(MEM_CHUNK, bytes - (uint64_t)i * MEM_CHUNK);
	}
	pthread_mutex_lock(&s->mem_lock);
	if (s->mem_nbufs)
		io_uring_unregister_buffers(&s->tmpl);
	free(s->mem_iov);
	s->mem_iov = NULL;
	s->mem_nbufs = 0;
	rc = io_uring_register_buffers(&s->tmpl, iov, nbufs);
	if (rc) {
		free(iov);
		log_warn("nvme: cannot register %" PRIu64 " bytes of memory with io_uring (%s)%s; "
			 "NVMe I/O uses plain reads and writes",
			 bytes, strerror(-rc),
			 rc == -ENOMEM ? ", RLIMIT_MEMLOCK too low without CAP_IPC_LOCK?" : "");
	} else {
		s->mem_iov = iov;
		s->mem_nbufs = nbufs;
	}
	atomic_fetch_add_explicit(&s->mem_gen, 1, memory_order_release);
	pthread_mutex_unlock(&s->mem_lock);
	return rc;
}

/* --- data I/O --------------------------------------------------------------- */

struct nvme_xfer {
	struct nvme_store *s;
	struct nvme_ring *r;
	struct nvme_extent *ext; /* csum written only by nvme_write */
	unsigned n;
	const struct iovec *iov;
	int iovcnt;
	bool write;
	bool io_failed; /* a device error (or an injected one) happened */
	bool enospc;
	int err;	  /* first error */
	char *bounce_dst; /* read: where the last partial sector's bytes go */
	uint32_t bounce_len;
};

struct iov_cur {
	int i;
	size_t off;
};

static void cur_skip(const struct nvme_xfer *x, struct iov_cur *c)
{
	while (c->i < x->iovcnt && c->off == x->iov[c->i].iov_len) {
		c->i++;
		c->off = 0;
	}
}

static inline char *cur_ptr(const struct nvme_xfer *x, const struct iov_cur *c)
{
	return (char *)x->iov[c->i].iov_base + c->off;
}

/* XXH3-64 of @len bytes of the caller's iovec from @c on. */
static uint64_t xfer_csum(const struct nvme_xfer *x, struct iov_cur c, uint64_t len)
{
	XXH3_state_t *st = x->r->xxh;

	cur_skip(x, &c);
	if (c.i < x->iovcnt && x->iov[c.i].iov_len - c.off >= len)
		return XXH3_64bits(cur_ptr(x, &c), len);
	XXH3_64bits_reset(st);
	while (len) {
		size_t take;

		cur_skip(x, &c);
		take = (size_t)KVFS_MIN(len, x->iov[c.i].iov_len - c.off);
		XXH3_64bits_update(st, cur_ptr(x, &c), take);
		c.off += take;
		len -= take;
	}
	return XXH3_64bits_digest(st);
}

static void xfer_fail(struct nvme_xfer *x, int e, int rc)
{
	x->io_failed = true;
	if (rc == -ENOSPC)
		x->enospc = true;
	if (!x->err)
		x->err = rc;
	if (e >= 0 && !x->r->ext[e].err)
		x->r->ext[e].err = rc;
}

static void ext_put(struct nvme_xfer *x, uint32_t e)
{
	struct nvme_ext_state *st = &x->r->ext[e];

	if (--st->pending || x->write || st->err)
		return;
	if (xfer_csum(x, (struct iov_cur){st->iov_i, st->iov_off}, x->ext[e].len) !=
	    x->ext[e].csum) {
		stat_add(&x->s->csum_errors, 1);
		log_warn("nvme: checksum mismatch in extent dev %u page %" PRIu64 " +%u (%u bytes)",
			 x->ext[e].dev, x->ext[e].page, x->ext[e].npages, x->ext[e].len);
		st->err = -EBADMSG;
		if (!x->err)
			x->err = -EBADMSG;
	}
}

static void piece_prep(struct nvme_xfer *x, unsigned slot)
{
	struct io_uring *ring = &x->r->ring;
	struct nvme_piece *p = &x->r->pieces[slot];
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);

	if (!sqe) { /* cannot happen: no more pieces than SQ entries */
		io_uring_submit(ring);
		sqe = io_uring_get_sqe(ring);
	}
	if (x->write && p->buf >= 0)
		io_uring_prep_write_fixed(sqe, (int)p->file, p->addr, p->len, p->off, p->buf);
	else if (x->write)
		io_uring_prep_write(sqe, (int)p->file, p->addr, p->len, p->off);
	else if (p->buf >= 0)
		io_uring_prep_read_fixed(sqe, (int)p->file, p->addr, p->len, p->off, p->buf);
	else
		io_uring_prep_read(sqe, (int)p->file, p->addr, p->len, p->off);
	io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
	io_uring_sqe_set_data64(sqe, slot);
}

static void piece_complete(struct nvme_xfer *x, unsigned slot, int res)
{
	struct nvme_ring *r = x->r;
	struct nvme_piece *p = &r->pieces[slot];

	if ((res == -EAGAIN || res == -EINTR) && p->retries < MAX_RETRIES) {
		p->retries++;
		piece_prep(x, slot);
		return;
	}
	if (res > 0 && (uint32_t)res < p->len) { /* short: move the rest */
		p->addr += res;
		p->off += (uint32_t)res;
		p->len -= (uint32_t)res;
		piece_prep(x, slot);
		return;
	}
	if (res == 0)
		res = -EIO; /* no progress: past the end of a segment */
	if (res < 0) {
		xfer_fail(x, (int)p->ext, res);
	} else if (x->write) {
		atomic_bool *dirty = &x->s->segs[p->file].dirty;

		if (!atomic_load_explicit(dirty, memory_order_relaxed))
			atomic_store(dirty, true);
	} else if (p->bounce) {
		memcpy(x->bounce_dst, r->bounce, x->bounce_len);
	}
	r->free_slots[r->nfree++] = (uint16_t)slot;
	r->inflight--;
	ext_put(x, p->ext);
}

/*
 * Submit what is queued, wait for @wait_nr completions and handle all that
 * have arrived. @return 0, or the io_uring_enter error that broke the ring.
 */
static int xfer_wait(struct nvme_xfer *x, unsigned wait_nr)
{
	struct io_uring *ring = &x->r->ring;
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	int rc;

	do
		rc = io_uring_submit_and_wait(ring, wait_nr);
	while (rc == -EINTR);
	if (rc < 0 && rc != -EAGAIN && rc != -EBUSY)
		return rc;
	io_uring_for_each_cqe(ring, head, cqe)
	{
		piece_complete(x, (unsigned)cqe->user_data, cqe->res);
		seen++;
	}
	io_uring_cq_advance(ring, seen);
	return 0;
}

/*
 * The ring cannot submit: wait for what the kernel already has (it may
 * still be moving the caller's bytes), then drop the ring; the next call
 * from this thread makes a new one.
 */
static void xfer_abandon(struct nvme_xfer *x, int rc)
{
	struct nvme_ring *r = x->r;
	unsigned submitted = r->inflight - io_uring_sq_ready(&r->ring);

	log_err("nvme: io_uring submission failed (%s); replacing this thread's ring",
		strerror(-rc));
	xfer_fail(x, -1, rc);
	while (submitted) {
		struct io_uring_cqe *cqe;

		if (io_uring_wait_cqe(&r->ring, &cqe) < 0)
			break;
		io_uring_cqe_seen(&r->ring, cqe);
		submitted--;
	}
	r->inflight = 0;
	r->broken = true;
}

static int xfer_queue(struct nvme_xfer *x, const struct nvme_piece *p)
{
	struct nvme_ring *r = x->r;
	unsigned slot;
	int rc;

	while (r->nfree == 0) {
		rc = xfer_wait(x, 1);
		if (rc)
			return rc;
	}
	slot = r->free_slots[--r->nfree];
	r->pieces[slot] = *p;
	r->inflight++;
	r->ext[p->ext].pending++;
	piece_prep(x, slot);
	return 0;
}

/* Queue the pieces of extent @e, whose bytes start at @c (advanced past them). */
static int xfer_extent(struct nvme_xfer *x, uint32_t e, struct iov_cur *c)
{
	const struct nvme_extent *ext = &x->ext[e];
	const struct nvme_dev *d = &x->s->devs[ext->dev];
	struct nvme_ring *r = x->r;
	uint64_t pos = ext->page << x->s->page_shift; /* byte on the device */
	uint64_t full = ext->len & ~(uint64_t)(SECTOR - 1), rem = ext->len - full;
	struct nvme_piece p = {.ext = e};
	int rc;

	while (full) {
		uint64_t want = KVFS_MIN(full, SEG_BYTES - pos % SEG_BYTES), take = 0;
		char *addr;

		cur_skip(x, c);
		addr = cur_ptr(x, c);
		p.buf = -1;
		if (r->fixed_bytes && (uintptr_t)addr >= (uintptr_t)r->fixed_base &&
		    (uintptr_t)addr - (uintptr_t)r->fixed_base < r->fixed_bytes) {
			uint64_t at = (uintptr_t)addr - (uintptr_t)r->fixed_base;

			p.buf = (int32_t)(at / MEM_CHUNK);
			want = KVFS_MIN(want,
					KVFS_MIN((at / MEM_CHUNK + 1) * MEM_CHUNK, r->fixed_bytes) -
						at);
		}
		/* Take iovec entries while they continue in memory. */
		while (take < want) {
			uint64_t t;

			cur_skip(x, c);
			if (c->i == x->iovcnt || cur_ptr(x, c) != addr + take)
				break;
			t = KVFS_MIN(x->iov[c->i].iov_len - c->off, want - take);
			take += t;
			c->off += t;
		}
		p.addr = addr;
		p.off = pos % SEG_BYTES;
		p.len = (uint32_t)take;
		p.file = d->seg_base + (uint32_t)(pos / SEG_BYTES);
		rc = xfer_queue(x, &p);
		if (rc)
			return rc;
		pos += take;
		full -= take;
	}
	if (rem) {
		/* The last partial sector, whole, through the bounce buffer. */
		cur_skip(x, c);
		if (x->write) {
			memcpy(r->bounce, cur_ptr(x, c), rem);
			memset(r->bounce + rem, 0, SECTOR - rem);
		} else {
			x->bounce_dst = cur_ptr(x, c);
			x->bounce_len = (uint32_t)rem;
		}
		c->off += rem;
		p.addr = r->bounce;
		p.off = pos % SEG_BYTES;
		p.len = SECTOR;
		p.file = d->seg_base + (uint32_t)(pos / SEG_BYTES);
		p.buf = -1;
		p.bounce = true;
		rc = xfer_queue(x, &p);
		if (rc)
			return rc;
	}
	return 0;
}

/* Arguments a caller can get wrong: -EINVAL, before any I/O. */
static int xfer_check(const struct nvme_store *s, const struct nvme_extent *ext, unsigned n,
		      const struct iovec *iov, int iovcnt, uint64_t *total)
{
	uint64_t have = 0, need = 0;

	if (iovcnt < 0 || (iovcnt && !iov) || (n && !ext))
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++) {
		if (iov[i].iov_len && (uintptr_t)iov[i].iov_base % SECTOR)
			return -EINVAL;
		if (i < iovcnt - 1 && iov[i].iov_len % SECTOR)
			return -EINVAL;
		have += iov[i].iov_len;
	}
	for (unsigned e = 0; e < n; e++) {
		if (!ext_in_range(s, &ext[e]))
			return -EINVAL;
		if (e < n - 1 && ext[e].len % SECTOR)
			return -EINVAL;
		need += ext[e].len;
	}
	if (need > have)
		return -EINVAL;
	*total = need;
	return 0;
}

static int xfer_run(struct nvme_xfer *x)
{
	struct nvme_ring *r;
	struct iov_cur c = {0, 0};
	int rc;

	rc = ring_get(x->s, &r);
	if (rc) {
		xfer_fail(x, -1, rc);
		return rc;
	}
	x->r = r;
	if (r->ext_cap < x->n) {
		struct nvme_ext_state *bigger = realloc(r->ext, x->n * sizeof(*bigger));

		if (!bigger)
			return -ENOMEM;
		r->ext = bigger;
		r->ext_cap = x->n;
	}
	for (uint32_t e = 0; e < x->n && !x->err; e++) {
		struct nvme_ext_state *st = &r->ext[e];

		rc = kvfs_fault(x->write ? KVFS_FAULT_NVME_WRITE : KVFS_FAULT_NVME_READ);
		if (rc) {
			xfer_fail(x, -1, rc);
			break;
		}
		cur_skip(x, &c);
		*st = (struct nvme_ext_state){.pending = 1, .iov_i = c.i, .iov_off = c.off};
		if (x->write)
			x->ext[e].csum = xfer_csum(x, c, x->ext[e].len);
		rc = xfer_extent(x, e, &c);
		if (rc) {
			xfer_abandon(x, rc);
			return x->err;
		}
		ext_put(x, e);
		/* Start the device on this extent while the next is hashed. */
		if (x->write && e + 1 < x->n && io_uring_sq_ready(&r->ring))
			io_uring_submit(&r->ring);
	}
	while (r->inflight) {
		rc = xfer_wait(x, 1);
		if (rc) {
			xfer_abandon(x, rc);
			break;
		}
	}
	return x->err;
}

int nvme_write(struct nvme_store *s, struct nvme_extent *ext, unsigned n, const struct iovec *iov,
	       int iovcnt)
{
	struct nvme_xfer x = {.s = s, .ext = ext, .n = n, .iov = iov, .iovcnt = iovcnt, .write = 1};
	uint64_t total;
	int rc;

	rc = xfer_check(s, ext, n, iov, iovcnt, &total);
	if (rc)
		return rc;
	rc = xfer_run(&x);
	if (!rc) {
		stat_add(&s->writes, 1);
		stat_add(&s->write_bytes, total);
	} else if (x.io_failed) {
		stat_add(&s->write_errors, 1);
	}
	if (x.enospc && !atomic_exchange(&s->full, true))
		log_warn("nvme: the segment filesystem is full; no new files go to NVMe");
	return rc;
}

int nvme_read(struct nvme_store *s, const struct nvme_extent *ext, unsigned n,
	      const struct iovec *iov, int iovcnt)
{
	struct nvme_xfer x = {.s = s,
			      .ext = (struct nvme_extent *)ext, /* not written: !write */
			      .n = n,
			      .iov = iov,
			      .iovcnt = iovcnt};
	uint64_t total;
	int rc;

	rc = xfer_check(s, ext, n, iov, iovcnt, &total);
	if (rc)
		return rc;
	rc = xfer_run(&x);
	if (!rc) {
		stat_add(&s->reads, 1);
		stat_add(&s->read_bytes, total);
	} else if (x.io_failed) {
		stat_add(&s->read_errors, 1);
	}
	return rc;
}

/* --- sync ------------------------------------------------------------------- */

/* Wait for @wait_nr fsyncs; handle every completion that has arrived. */
static int sync_wait(struct nvme_store *s, struct io_uring *ring, unsigned wait_nr,
		     unsigned *inflight, int *err)
{
	struct io_uring_cqe *cqe;
	unsigned head, seen = 0;
	int rc;

	do
		rc = io_uring_submit_and_wait(ring, wait_nr);
	while (rc == -EINTR);
	if (rc < 0 && rc != -EAGAIN && rc != -EBUSY)
		return rc;
	io_uring_for_each_cqe(ring, head, cqe)
	{
		if (cqe->res < 0) {
			atomic_store(&s->segs[cqe->user_data].dirty, true);
			if (!*err)
				*err = cqe->res;
			log_err("nvme: fdatasync of segment %" PRIu64 " failed: %s",
				(uint64_t)cqe->user_data, strerror(-cqe->res));
		}
		seen++;
	}
	io_uring_cq_advance(ring, seen);
	*inflight -= seen;
	return 0;
}

int nvme_sync(struct nvme_store *s)
{
	struct nvme_ring *r;
	unsigned inflight = 0;
	int rc, err = 0;

	rc = kvfs_fault(KVFS_FAULT_NVME_FSYNC);
	if (rc)
		goto out;
	rc = ring_get(s, &r);
	if (rc)
		goto out;
	for (unsigned i = 0; i < s->nsegs && !rc; i++) {
		struct io_uring_sqe *sqe;

		if (!atomic_load(&s->segs[i].dirty) || !atomic_exchange(&s->segs[i].dirty, false))
			continue;
		while (inflight == RING_DEPTH && !rc)
			rc = sync_wait(s, &r->ring, 1, &inflight, &err);
		if (rc) {
			atomic_store(&s->segs[i].dirty, true);
			break;
		}
		sqe = io_uring_get_sqe(&r->ring);
		io_uring_prep_fsync(sqe, (int)i, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
		io_uring_sqe_set_data64(sqe, i);
		inflight++;
	}
	while (inflight && !rc)
		rc = sync_wait(s, &r->ring, inflight, &inflight, &err);
	if (rc) {
		/* Which fsyncs ran is unknown: sync everything next time. */
		log_err("nvme: io_uring submission failed (%s); replacing this thread's ring",
			strerror(-rc));
		for (unsigned i = 0; i < s->nsegs; i++)
			atomic_store(&s->segs[i].dirty, true);
		while (inflight - io_uring_sq_ready(&r->ring)) {
			struct io_uring_cqe *cqe;

			if (io_uring_wait_cqe(&r->ring, &cqe) < 0)
				break;
			io_uring_cqe_seen(&r->ring, cqe);
			inflight--;
		}
		r->broken = true;
	}
	if (!rc)
		rc = err;
out:
	stat_add(&s->syncs, 1);
	if (rc) {
		stat_add(&s->write_errors, 1);
		if (rc == -ENOSPC && !atomic_exchange(&s->full, true))
			log_warn("nvme: the segment filesystem is full; no new files go to NVMe");
	}
	return rc;
}

/* --- open and close ------------------------------------------------------------ */

static void id_encode(const struct nvme_ident *id, uint8_t b[ID_SIZE])
{
	uint32_t v32;
	uint64_t v64;

	memset(b, 0, ID_SIZE);
	memcpy(b, id_magic, 8);
	v32 = htole32(id->version);
	memcpy(b + 8, &v32, 4);
	v32 = htole32(id->page_size);
	memcpy(b + 12, &v32, 4);
	v64 = htole64(id->dev_bytes);
	memcpy(b + 16, &v64, 8);
	v64 = htole64(id->seg_bytes);
	memcpy(b + 24, &v64, 8);
	memcpy(b + 32, id->store_id, 16);
	v32 = htole32(id->index);
	memcpy(b + 48, &v32, 4);
	v32 = htole32(id->count);
	memcpy(b + 52, &v32, 4);
	v64 = htole64(XXH3_64bits(b, 56));
	memcpy(b + 56, &v64, 8);
}

static bool id_decode(const uint8_t b[ID_SIZE], struct nvme_ident *id)
{
	uint32_t v32;
	uint64_t v64;

	memcpy(&v64, b + 56, 8);
	if (memcmp(b, id_magic, 8) || le64toh(v64) != XXH3_64bits(b, 56))
		return false;
	memcpy(&v32, b + 8, 4);
	id->version = le32toh(v32);
	memcpy(&v32, b + 12, 4);
	id->page_size = le32toh(v32);
	memcpy(&v64, b + 16, 8);
	id->dev_bytes = le64toh(v64);
	memcpy(&v64, b + 24, 8);
	id->seg_bytes = le64toh(v64);
	memcpy(id->store_id, b + 32, 16);
	memcpy(&v32, b + 48, 4);
	id->index = le32toh(v32);
	memcpy(&v32, b + 52, 4);
	id->count = le32toh(v32);
	return true;
}

/* @return 0; -ENOENT if there is none; -EINVAL or -errno with a reason. */
static int id_read(const char *dir, struct nvme_ident *id, char *err, size_t errlen)
{
	uint8_t b[ID_SIZE];
	char path[PATH_MAX];
	ssize_t got;
	int fd, rc = 0;

	snprintf(path, sizeof(path), "%s/" ID_NAME, dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT)
			return -ENOENT;
		rc = -errno;
		seterr(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return rc;
	}
	got = pread(fd, b, sizeof(b), 0);
	if (got < 0) {
		rc = -errno;
		seterr(err, errlen, "cannot read %s: %s", path, strerror(errno));
	} else if (got != ID_SIZE || !id_decode(b, id)) {
		rc = -EINVAL;
		seterr(err, errlen, "%s is damaged or not a kvfs NVMe identity", path);
	} else if (id->version != ID_VERSION) {
		rc = -EINVAL;
		seterr(err, errlen, "%s has format version %u; this kvfs knows version %u", path,
		       id->version, ID_VERSION);
	}
	close(fd);
	return rc;
}

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return -errno;
	if (fsync(fd) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

static int id_write(const char *dir, const struct nvme_ident *id, char *err, size_t errlen)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	uint8_t b[ID_SIZE];
	int fd, rc = 0;

	snprintf(tmp, sizeof(tmp), "%s/" ID_NAME ".tmp", dir);
	snprintf(path, sizeof(path), "%s/" ID_NAME, dir);
	id_encode(id, b);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = -errno;
		goto out_err;
	}
	errno = 0;
	if (pwrite(fd, b, sizeof(b), 0) != (ssize_t)sizeof(b) || fsync(fd) < 0) {
		rc = errno ? -errno : -EIO;
		close(fd);
		goto out_err;
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		rc = -errno;
		goto out_err;
	}
	rc = fsync_dir(dir);
	if (rc)
		goto out_err;
	return 0;

out_err:
	seterr(err, errlen, "cannot write %s: %s", path, strerror(-rc));
	return rc;
}

/* mkdir -p */
static int make_dir(const char *dir)
{
	char path[PATH_MAX];
	size_t len = strlen(dir);

	if (len == 0 || len >= sizeof(path))
		return -ENAMETOOLONG;
	memcpy(path, dir, len + 1);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(path, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int lock_dir(struct nvme_dev *d, char *err, size_t errlen)
{
	char path[PATH_MAX], pid[32];
	ssize_t got;
	int rc;

	snprintf(path, sizeof(path), "%s/lock", d->dir);
	d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (d->lock_fd < 0) {
		rc = -errno;
		seterr(err, errlen, "cannot open %s: %s", path, strerror(errno));
		return rc;
	}
	if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		got = pread(d->lock_fd, pid, sizeof(pid) - 1, 0);
		pid[got > 0 ? got : 0] = 0;
		pid[strcspn(pid, "\n")] = 0;
		if (rc == -EBUSY)
			seterr(err, errlen, "nvme directory %s is in use by another kvfs (pid %s)",
			       d->dir, *pid ? pid : "unknown");
		else
			seterr(err, errlen, "cannot lock %s: %s", path, strerror(-rc));
		return rc;
	}
	snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
	if (ftruncate(d->lock_fd, 0) < 0 ||
	    pwrite(d->lock_fd, pid, strlen(pid), 0) != (ssize_t)strlen(pid))
		log_warn("nvme: cannot record the pid in %s: %s", path, strerror(errno));
	return 0;
}

/*
 * Open (creating if missing) segment @j of @d and preallocate it. *created
 * says the file did not exist before, so a failed open may remove it.
 */
static int seg_open(struct nvme_dev *d, unsigned j, uint64_t size, int *fd, bool *created,
		    char *err, size_t errlen)
{
	char path[PATH_MAX];
	struct stat st;
	int rc;

	snprintf(path, sizeof(path), "%s/" SEG_NAME, d->dir, j);
	*created = false;
	*fd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
	if (*fd < 0 && errno == ENOENT) {
		*fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
		*created = *fd >= 0;
	}
	if (*fd < 0) {
		rc = -errno;
		if (rc == -EINVAL)
			seterr(err, errlen,
			       "the filesystem of nvme directory %s does not support "
			       "O_DIRECT",
			       d->dir);
		else
			seterr(err, errlen, "cannot open %s: %s", path, strerror(-rc));
		return rc;
	}
	if (fstat(*fd, &st) < 0) {
		rc = -errno;
		seterr(err, errlen, "cannot stat %s: %s", path, strerror(-rc));
		return rc;
	}
	if ((uint64_t)st.st_size > size && ftruncate(*fd, (off_t)size) < 0) {
		rc = -errno;
		seterr(err, errlen, "cannot truncate %s: %s", path, strerror(-rc));
		return rc;
	}
	if (fallocate(*fd, 0, 0, (off_t)size) < 0) {
		rc = -errno;
		if (rc == -EOPNOTSUPP)
			seterr(err, errlen,
			       "the filesystem of nvme directory %s cannot preallocate "
			       "segment files (fallocate unsupported); kvfs does not run them "
			       "sparse",
			       d->dir);
		else if (rc == -ENOSPC || rc == -EDQUOT)
			seterr(err, errlen,
			       "the filesystem of nvme directory %s cannot hold %" PRIu64
			       " bytes of segments",
			       d->dir, d->bytes);
		else
			seterr(err, errlen, "cannot preallocate %s: %s", path, strerror(-rc));
		return rc == -EDQUOT ? -ENOSPC : rc;
	}
	/* New or grown: make the allocation durable before an identity names it. */
	if ((uint64_t)st.st_size != size && fsync(*fd) < 0) {
		rc = -errno;
		seterr(err, errlen, "cannot fsync %s: %s", path, strerror(-rc));
		return rc;
	}
	return 0;
}

/* Enough descriptors for every segment (raising the soft limit if needed). */
static int ensure_nofile(unsigned nsegs, char *err, size_t errlen)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)nsegs + 256;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= need)
		return 0;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
		seterr(err, errlen,
		       "%u segment files need %lu open files; RLIMIT_NOFILE allows "
		       "%lu",
		       nsegs, (unsigned long)need, (unsigned long)rl.rlim_max);
		return -EMFILE;
	}
	log_info("nvme: raising the open-file limit from %lu to %lu for %u segment files",
		 (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max, nsegs);
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		int rc = -errno;

		seterr(err, errlen, "cannot raise RLIMIT_NOFILE: %s", strerror(-rc));
		return rc;
	}
	return 0;
}

/* Check the identities found against the configuration and each other. */
static int check_idents(struct nvme_store *s, const struct nvme_ident *ids, const bool *have,
			uint8_t store_id[16], char *err, size_t errlen)
{
	int first = -1;

	for (unsigned i = 0; i < s->ndevs; i++) {
		const struct nvme_ident *id = &ids[i];
		const struct nvme_dev *d = &s->devs[i];

		if (!have[i])
			continue;
		if (id->page_size != s->page_size) {
			seterr(err, errlen,
			       "nvme directory %s was formatted with page size %u, not "
			       "%u; use that page size or empty the directory",
			       d->dir, id->page_size, s->page_size);
			return -EINVAL;
		}
		if (id->dev_bytes != d->bytes || id->seg_bytes != SEG_BYTES) {
			seterr(err, errlen,
			       "nvme directory %s holds %" PRIu64 " bytes of segments, "
			       "not %" PRIu64 "; give that size or empty the directory",
			       d->dir, id->dev_bytes, d->bytes);
			return -EINVAL;
		}
		if (id->index != i || id->count != s->ndevs) {
			seterr(err, errlen,
			       "nvme directory %s is device %u of %u of its store, but "
			       "is given as device %u of %u; keep the order and number of --nvme "
			       "directories or empty them",
			       d->dir, id->index + 1, id->count, i + 1, s->ndevs);
			return -EINVAL;
		}
		if (first < 0) {
			first = (int)i;
			memcpy(store_id, id->store_id, 16);
		} else if (memcmp(store_id, id->store_id, 16)) {
			seterr(err, errlen, "nvme directories %s and %s belong to different stores",
			       s->devs[first].dir, d->dir);
			return -EINVAL;
		}
	}
	if (first < 0 && getrandom(store_id, 16, 0) != 16) {
		seterr(err, errlen, "getrandom: %s", strerror(errno));
		return -EIO;
	}
	return 0;
}

static int check_args(const struct nvme_dev_config *devs, unsigned ndevs, uint32_t page_size,
		      uint32_t extent_pages, char *err, size_t errlen)
{
	if (!devs || ndevs == 0 || ndevs > UINT16_MAX) {
		seterr(err, errlen, "1 to %u nvme directories are needed", UINT16_MAX);
		return -EINVAL;
	}
	if (page_size < SECTOR || page_size > SEG_BYTES || (page_size & (page_size - 1))) {
		seterr(err, errlen, "nvme page size %u is not a power of two from %u to %llu",
		       page_size, SECTOR, SEG_BYTES);
		return -EINVAL;
	}
	if (extent_pages == 0 || (uint64_t)extent_pages * page_size > UINT32_MAX) {
		seterr(err, errlen, "nvme extents of %u pages of %u bytes do not fit 1 to 4 GiB",
		       extent_pages, page_size);
		return -EINVAL;
	}
	for (unsigned i = 0; i < ndevs; i++) {
		if (!devs[i].dir || !*devs[i].dir) {
			seterr(err, errlen, "nvme directory %u has no path", i + 1);
			return -EINVAL;
		}
		if (devs[i].bytes < page_size) {
			seterr(err, errlen,
			       "nvme directory %s must hold at least one page of %u "
			       "bytes",
			       devs[i].dir, page_size);
			return -EINVAL;
		}
	}
	return 0;
}

/*
 * nvme_open, phase by phase. Each phase leaves the store in a state that
 * store_free() can undo whatever failed: every descriptor is -1 until
 * opened, every flag says what exists.
 */
struct open_state {
	struct nvme_ident *ids;
	bool *have;    /* device i has an identity */
	bool *created; /* segment k was created by this open */
	struct stat *dst;
	bool tmpl_made, key_made;
};

/* Undo a partial nvme_open: close, unlink what it created, free. */
static void store_free(struct nvme_store *s, struct open_state *o)
{
	if (o->key_made)
		pthread_key_delete(s->key);
	if (o->tmpl_made)
		io_uring_queue_exit(&s->tmpl);
	for (unsigned i = 0; s->devs && i < s->ndevs; i++) {
		struct nvme_dev *d = &s->devs[i];

		for (unsigned j = 0; s->segs && j < d->nsegs; j++) {
			unsigned k = d->seg_base + j;
			char path[PATH_MAX];

			if (s->segs[k].fd >= 0)
				close(s->segs[k].fd);
			if (o->created && o->created[k] && !o->have[i]) {
				snprintf(path, sizeof(path), "%s/" SEG_NAME, d->dir, j);
				unlink(path);
			}
		}
		if (d->lock_fd >= 0)
			close(d->lock_fd);
		pthread_mutex_destroy(&d->lock);
		free(d->dir);
		free(d->bitmap);
	}
	pthread_mutex_destroy(&s->mem_lock);
	free(s->devs);
	free(s->segs);
	free(s->fds);
	free(s);
	free(o->ids);
	free(o->have);
	free(o->dst);
	free(o->created);
}

/*
 * Phase 1, memory: the store and its devices. Every device is made safe to
 * free (no descriptor, a mutex) before anything that can fail.
 * @return 0 or -ENOMEM (the caller frees with store_free()).
 */
static int store_alloc(struct nvme_store *s, struct open_state *o,
		       const struct nvme_dev_config *devs, unsigned ndevs, uint32_t page_size,
		       uint32_t extent_pages)
{
	unsigned nsegs = 0;

	s->page_size = page_size;
	s->page_shift = (uint32_t)__builtin_ctz(page_size);
	s->extent_pages = extent_pages;
	s->pages_per_seg = SEG_BYTES / page_size;
	s->clone_ok = -1;
	pthread_mutex_init(&s->mem_lock, NULL);
	o->ids = calloc(ndevs, sizeof(*o->ids));
	o->have = calloc(ndevs, sizeof(*o->have));
	o->dst = calloc(ndevs, sizeof(*o->dst));
	s->devs = calloc(ndevs, sizeof(*s->devs));
	if (!o->ids || !o->have || !o->dst || !s->devs)
		return -ENOMEM;
	s->ndevs = ndevs;
	for (unsigned i = 0; i < ndevs; i++) {
		struct nvme_dev *d = &s->devs[i];

		d->lock_fd = -1;
		pthread_mutex_init(&d->lock, NULL);
		d->npages = devs[i].bytes / page_size;
		d->bytes = d->npages * page_size;
		d->nfree = d->npages;
		d->nsegs = (unsigned)((d->bytes - 1) / SEG_BYTES + 1);
		d->seg_base = nsegs;
		nsegs += d->nsegs;
	}
	s->nsegs = nsegs;
	for (unsigned i = 0; i < ndevs; i++) {
		struct nvme_dev *d = &s->devs[i];

		d->dir = strdup(devs[i].dir);
		d->bitmap = calloc((d->npages + 63) / 64, sizeof(uint64_t));
		if (!d->dir || !d->bitmap)
			return -ENOMEM;
	}
	return 0;
}

/* Phase 2: create and lock every directory, then read their identities. */
static int store_lock_dirs(struct nvme_store *s, struct open_state *o, uint8_t store_id[16],
			   char *err, size_t errlen)
{
	int rc;

	/* Lock every directory before reading anything in it. */
	for (unsigned i = 0; i < s->ndevs; i++) {
		struct nvme_dev *d = &s->devs[i];

		rc = make_dir(d->dir);
		if (rc || stat(d->dir, &o->dst[i]) < 0) {
			rc = rc ? rc : -errno;
			seterr(err, errlen, "cannot create nvme directory %s: %s", d->dir,
			       strerror(-rc));
			return rc;
		}
		for (unsigned j = 0; j < i; j++) {
			if (o->dst[j].st_dev == o->dst[i].st_dev &&
			    o->dst[j].st_ino == o->dst[i].st_ino) {
				seterr(err, errlen, "nvme directory %s is given twice (as %s)",
				       d->dir, s->devs[j].dir);
				return -EINVAL;
			}
		}
		rc = lock_dir(d, err, errlen);
		if (rc)
			return rc;
	}
	for (unsigned i = 0; i < s->ndevs; i++) {
		rc = id_read(s->devs[i].dir, &o->ids[i], err, errlen);
		if (rc && rc != -ENOENT)
			return rc;
		o->have[i] = rc == 0;
	}
	return check_idents(s, o->ids, o->have, store_id, err, errlen);
}

/* Phase 3: open (creating what is missing) every segment file. */
static int store_open_segments(struct nvme_store *s, struct open_state *o, char *err,
			       size_t errlen)
{
	unsigned nsegs = s->nsegs;
	int rc = ensure_nofile(nsegs, err, errlen);

	if (rc)
		return rc;
	s->segs = calloc(nsegs, sizeof(*s->segs));
	s->fds = calloc(nsegs, sizeof(*s->fds));
	o->created = calloc(nsegs, sizeof(*o->created));
	if (!s->segs || !s->fds || !o->created) {
		seterr(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < nsegs; i++)
		s->segs[i].fd = -1;
	for (unsigned i = 0; i < s->ndevs; i++) {
		struct nvme_dev *d = &s->devs[i];

		for (unsigned j = 0; j < d->nsegs; j++) {
			unsigned k = d->seg_base + j;
			uint64_t size = KVFS_MIN(SEG_BYTES, d->bytes - (uint64_t)j * SEG_BYTES);

			rc = seg_open(d, j, size, &s->segs[k].fd, &o->created[k], err, errlen);
			if (rc)
				return rc;
			s->fds[k] = s->segs[k].fd;
			if (o->created[k] && o->have[i])
				log_warn("nvme: segment %s/" SEG_NAME
					 " was missing; recreated empty",
					 d->dir, j);
		}
		rc = fsync_dir(d->dir);
		if (rc) {
			seterr(err, errlen, "cannot fsync nvme directory %s: %s", d->dir,
			       strerror(-rc));
			return rc;
		}
	}
	return 0;
}

/* Phase 4: the template ring (a probe that io_uring works here) and the ring key. */
static int store_start_rings(struct nvme_store *s, struct open_state *o, char *err,
			     size_t errlen)
{
	int rc = io_uring_queue_init(1, &s->tmpl, 0);

	if (rc) {
		seterr(err, errlen, "io_uring is not available: %s", strerror(-rc));
		return rc;
	}
	o->tmpl_made = true;
	rc = io_uring_register_files(&s->tmpl, s->fds, s->nsegs);
	if (rc) {
		seterr(err, errlen, "cannot register %u segment files with io_uring: %s", s->nsegs,
		       strerror(-rc));
		return rc;
	}
	rc = -pthread_key_create(&s->key, ring_destructor);
	if (rc) {
		seterr(err, errlen, "pthread_key_create: %s", strerror(-rc));
		return rc;
	}
	o->key_made = true;
	return 0;
}

/* Phase 5, last: identities, so a directory with one holds complete segments. */
static int store_write_idents(struct nvme_store *s, struct open_state *o,
			      const uint8_t store_id[16], char *err, size_t errlen)
{
	for (unsigned i = 0; i < s->ndevs; i++) {
		struct nvme_ident id = {
			.version = ID_VERSION,
			.page_size = s->page_size,
			.dev_bytes = s->devs[i].bytes,
			.seg_bytes = SEG_BYTES,
			.index = i,
			.count = s->ndevs,
		};
		int rc;

		if (o->have[i])
			continue;
		memcpy(id.store_id, store_id, 16);
		rc = id_write(s->devs[i].dir, &id, err, errlen);
		if (rc)
			return rc;
	}
	return 0;
}

int nvme_open(const struct nvme_dev_config *devs, unsigned ndevs, uint32_t page_size,
	      uint32_t extent_pages, struct nvme_store **out, char *err, size_t errlen)
{
	struct open_state o = {0};
	struct nvme_store *s;
	uint8_t store_id[16];
	int rc;

	*out = NULL;
	seterr(err, errlen, "%s", "");
	rc = check_args(devs, ndevs, page_size, extent_pages, err, errlen);
	if (rc)
		return rc;
	s = calloc(1, sizeof(*s));
	if (!s) {
		seterr(err, errlen, "out of memory");
		return -ENOMEM;
	}
	rc = store_alloc(s, &o, devs, ndevs, page_size, extent_pages);
	if (rc)
		seterr(err, errlen, "out of memory");
	if (!rc)
		rc = store_lock_dirs(s, &o, store_id, err, errlen);
	if (!rc)
		rc = store_open_segments(s, &o, err, errlen);
	if (!rc)
		rc = store_start_rings(s, &o, err, errlen);
	if (!rc)
		rc = store_write_idents(s, &o, store_id, err, errlen);
	if (rc) {
		store_free(s, &o);
		return rc;
	}
	free(o.ids);
	free(o.have);
	free(o.dst);
	free(o.created);
	*out = s;
	return 0;
}

void nvme_close(struct nvme_store *s)
{
	struct nvme_ring *mine = NULL;

	if (!s)
		return;
	/* No destructor starts after this; one already running finds nothing. */
	pthread_key_delete(s->key);
	pthread_mutex_lock(&rings_lock);
	for (struct nvme_ring **pp = &rings_list; *pp;) {
		struct nvme_ring *r = *pp;

		if (r->s == s) {
			*pp = r->next;
			r->next = mine;
			mine = r;
		} else {
			pp = &r->next;
		}
	}
	pthread_mutex_unlock(&rings_lock);
	while (mine) {
		struct nvme_ring *r = mine;

		mine = r->next;
		ring_free(r);
	}
	io_uring_queue_exit(&s->tmpl);
	free(s->mem_iov);
	for (unsigned i = 0; i < s->nsegs; i++)
		close(s->segs[i].fd);
	for (unsigned i = 0; i < s->ndevs; i++) {
		close(s->devs[i].lock_fd);
		pthread_mutex_destroy(&s->devs[i].lock);
		free(s->devs[i].dir);
		free(s->devs[i].bitmap);
	}
	pthread_mutex_destroy(&s->mem_lock);
	free(s->devs);
	free(s->segs);
	free(s->fds);
	free(s);
}

/* --- small queries ---------------------------------------------------------- */

void nvme_get_stats(struct nvme_store *s, struct nvme_stats *st)
{
	uint64_t cap = 0;

	for (unsigned i = 0; i < s->ndevs; i++)
		cap += s->devs[i].bytes;
	*st = (struct nvme_stats){
		.capacity = cap,
		.used = atomic_load_explicit(&s->used_pages, memory_order_relaxed) * s->page_size,
		.reads = atomic_load_explicit(&s->reads, memory_order_relaxed),
		.read_bytes = atomic_load_explicit(&s->read_bytes, memory_order_relaxed),
		.writes = atomic_load_explicit(&s->writes, memory_order_relaxed),
		.write_bytes = atomic_load_explicit(&s->write_bytes, memory_order_relaxed),
		.syncs = atomic_load_explicit(&s->syncs, memory_order_relaxed),
		.read_errors = atomic_load_explicit(&s->read_errors, memory_order_relaxed),
		.write_errors = atomic_load_explicit(&s->write_errors, memory_order_relaxed),
		.csum_errors = atomic_load_explicit(&s->csum_errors, memory_order_relaxed),
	};
}

bool nvme_full(struct nvme_store *s)
{
	return atomic_load_explicit(&s->full, memory_order_relaxed);
}
