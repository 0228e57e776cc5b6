/*
 * tier/tier.c — the tier manager: the backend array and the one placement
 * loop over it, and the DRAM backend's object file.
 *
 * Owns the array of backends (tier/backend.h), fastest first (a GPU pool
 * first when attached, tier/gpu.c): new bytes land in DRAM (dram_at);
 * making room (dram_make_room) takes victims in policy order and stores
 * each in the first slower backend that holds or takes it, else keeps it
 * in a faster one that holds it (GPU-only) (demote_victim), else offers it
 * to the owner's spill callback and evicts it; reads come from the fastest backend holding the
 * object. The object state machine is in obj.c, NVMe in place.c.
 *
 * An object's DRAM file is opened only while needed: while it is written
 * (unsealed), while leased (then also mapped, for tier_read_iov), and for
 * the length of a call that reads it. obj_file_idle_locked() closes it
 * again, so the daemon's descriptors and mappings follow the open files,
 * not the cached ones.
 *
 * Invariants:
 *  - an object in the DRAM list is sealed, in DRAM and not dead; one in the
 *    NVMe list has an NVMe copy. Each list holds a reference;
 *  - a sealed object's file changes only while no lease is held: a
 *    demotion clears OBJ_DRAM by compare-and-swap with zero leases before it
 *    removes the file, and a lease taken after that sees no DRAM and reads
 *    NVMe. A promotion fills the file first and sets OBJ_DRAM last. The
 *    mapping a lease holder was handed stays until the last lease goes;
 *  - OBJ_BUSY marks the one thread moving an object between tiers;
 *  - a dead object holds no file and no extents (after its last lease).
 *
 * Locking order: obj->lock (writers of unsealed objects, the file and its
 * mapping) → policy.lock. The owner's `evicted` callback runs with none held
 * except, possibly, the lock of the unsealed object being written (which is
 * never a victim and which the owner's callback never takes).
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "tier/tier_i.h"

#define DEFAULT_PAGE_SIZE (64u << 10)
#define EVICT_RETRIES	  64

int tier_open(const struct tier_config *cfg, const struct tier_callbacks *cb, tier_mgr **out,
	      char *err, size_t errlen)
{
	uint32_t ps = cfg->page_size ? cfg->page_size : DEFAULT_PAGE_SIZE;
	const char *policy = cfg->policy ? cfg->policy : "mq";
	tier_mgr *m;
	int rc;

	if (ps < 4096 || ps > (16u << 20) || (ps & (ps - 1))) {
		snprintf(err, errlen, "page size %u is not a power of two from 4 KiB to 16 MiB",
			 ps);
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->cb = *cb;
	m->page_size = ps;
	rc = dram_open(&m->dram, cfg->dram_bytes, cfg->dram_memfd, err, errlen);
	if (rc)
		goto out_free;
	rc = policy_init(&m->policy, policy, m->dram.bytes);
	if (rc) {
		snprintf(err, errlen, "unknown eviction policy '%s' (use mq or lru)", policy);
		goto out_dram;
	}
	policy_init(&m->nvme_policy, policy, m->dram.bytes);
	policy_init(&m->gpu_policy, "lru", m->dram.bytes);
	m->backends[m->nbackends++] = &tier_dram_backend;
	if (cfg->nvme_count) {
		struct nvme_dev_config devs[16];
		uint32_t extent_pages = ps >= (1u << 20) ? 1 : (1u << 20) / ps;

		if (cfg->nvme_count > KVFS_ARRAY_SIZE(devs) || !cfg->cat) {
			snprintf(err, errlen, "at most %zu NVMe directories",
				 KVFS_ARRAY_SIZE(devs));
			rc = -EINVAL;
			goto out_policy;
		}
		for (unsigned i = 0; i < cfg->nvme_count; i++) {
			devs[i].dir = cfg->nvme[i].dir;
			devs[i].bytes = cfg->nvme[i].bytes;
		}
		m->nvme_extent_pages = extent_pages;
		rc = nvme_open(devs, cfg->nvme_count, ps, extent_pages, &m->nvme, err, errlen);
		if (rc)
			goto out_policy;
		m->cat = cfg->cat;
		m->persist_through = cfg->persist_through;
		m->backends[m->nbackends++] = &tier_nvme_backend;
	}
	*out = m;
	return 0;

out_policy:
	policy_destroy(&m->gpu_policy);
	policy_destroy(&m->nvme_policy);
	policy_destroy(&m->policy);
out_dram:
	dram_close(&m->dram);
out_free:
	free(m);
	return rc;
}

void tier_close(tier_mgr *m)
{
	if (!m)
		return;
	if (m->nvme)
		nvme_close(m->nvme);
	for (size_t i = 0; i < m->nrecs; i++)
		free(m->recs[i].ext);
	free(m->recs);
	tier_gpu_detach_all(m);
	policy_destroy(&m->gpu_policy);
	policy_destroy(&m->nvme_policy);
	policy_destroy(&m->policy);
	dram_close(&m->dram);
	free(m);
}

uint32_t tier_page_size(const tier_mgr *m)
{
	return m->page_size;
}

bool tier_dram_private(const tier_mgr *m)
{
	return m->dram.dirfd >= 0;
}

uint64_t tier_max_size(const tier_mgr *m)
{
	return m->dram.bytes; /* every file is written into DRAM first */
}

void tier_get_stats(tier_mgr *m, struct tier_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->page_size = m->page_size;
	st->dram_capacity = m->dram.bytes;
	st->dram_used = atomic_load(&m->dram.used);
	st->dram_pinned = atomic_load(&m->pinned_bytes);
	st->objects = atomic_load(&m->objects);
	st->sealed = atomic_load(&m->sealed);
	st->pinned = atomic_load(&m->pinned);
	st->evictions = atomic_load(&m->evictions);
	st->evicted_bytes = atomic_load(&m->evicted_bytes);
	st->enospc = atomic_load(&m->enospc);
	st->policy = m->policy.name;
	st->demotions = atomic_load(&m->demotions);
	st->promotions = atomic_load(&m->promotions);
	st->nvme_write_errors = atomic_load(&m->nvme_write_errors);
	st->nvme_read_errors = atomic_load(&m->nvme_read_errors);
	st->nvme_evictions = atomic_load(&m->nvme_evictions);
	st->lost = atomic_load(&m->lost);
	st->nvme_files = atomic_load(&m->nvme_files);
	st->persist_failed = atomic_load(&m->persist_failed);
	st->not_durable = atomic_load(&m->not_durable);
	st->cat_errors = atomic_load(&m->cat_errors);
	st->nbackends = m->nbackends;
	for (unsigned i = 0; i < m->nbackends; i++)
		m->backends[i]->stats(m, &st->backend[i]);
	if (m->nvme) {
		struct nvme_stats ns;

		nvme_get_stats(m->nvme, &ns);
		st->nvme_capacity = ns.capacity;
		st->nvme_used = ns.used;
		st->nvme_reads = ns.reads;
		st->nvme_read_bytes = ns.read_bytes;
		st->nvme_writes = ns.writes;
		st->nvme_write_bytes = ns.write_bytes;
		st->nvme_csum_errors = ns.csum_errors;
		st->nvme_full = nvme_full(m->nvme);
	}
}

/* --- the object's DRAM file ------------------------------------------------ */

static void obj_unmap_locked(tier_obj *o)
{
	if (o->map)
		munmap(o->map, o->maplen);
	__atomic_store_n(&o->map, NULL, __ATOMIC_RELEASE);
	o->maplen = 0;
}

/* Open the object's file, creating it if it has none (o->lock held). */
static int obj_open_locked(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	int fd;

	if (o->fd >= 0)
		return 0;
	if (o->fname)
		fd = dram_reopen(&m->dram, o->fname, O_RDWR);
	else
		fd = dram_create(&m->dram, &o->fname);
	if (fd < 0) {
		log_warn("DRAM: file of object %llu: %s", (unsigned long long)o->id, strerror(-fd));
		return fd;
	}
	o->fd = fd;
	return 0;
}

static void obj_close_idle(tier_obj *o, bool mover)
{
	uint64_t s = atomic_load(&o->state);
	uint64_t keep = OBJ_LEASES | (mover ? 0 : OBJ_BUSY);

	if (!(s & OBJ_SEALED) || (s & keep))
		return;
	obj_unmap_locked(o);
	if (o->fd >= 0 && o->mgr->dram.dirfd >= 0) {
		close(o->fd);
		o->fd = -1;
	}
}

void obj_file_idle_locked(tier_obj *o)
{
	obj_close_idle(o, true);
}

void obj_dram_unused(tier_obj *o)
{
	pthread_mutex_lock(&o->lock);
	obj_close_idle(o, false);
	pthread_mutex_unlock(&o->lock);
}

int obj_map_locked(tier_obj *o)
{
	void *p;
	int rc;

	if (o->map && o->maplen >= o->size)
		return 0;
	obj_unmap_locked(o);
	if (o->size == 0)
		return 0;
	rc = obj_open_locked(o);
	if (rc)
		return rc;
	p = mmap(NULL, (size_t)o->size, PROT_READ | PROT_WRITE, MAP_SHARED, o->fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	o->maplen = (size_t)o->size;
	__atomic_store_n(&o->map, (uint8_t *)p, __ATOMIC_RELEASE);
	return 0;
}

/* Remove an object's DRAM file (it is dead, or demoted and unleased). */
void obj_release_pages(tier_obj *o)
{
	tier_mgr *m = o->mgr;

	pthread_mutex_lock(&o->lock);
	obj_unmap_locked(o);
	if (o->fd >= 0)
		close(o->fd);
	o->fd = -1;
	dram_remove(&m->dram, o->fname);
	o->fname = 0;
	dram_unreserve(&m->dram, o->dbytes);
	__atomic_store_n(&o->dbytes, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&o->lock);
}

/* --- making room ---------------------------------------------------------- */

/*
 * Free a claimed victim's DRAM pages by demoting it, if it has (or can be
 * given) an NVMe copy, or else if a GPU pool holds it (then it stays there
 * only). @return true if it was dealt with (demoted, or lost to a lease),
 * false if it must be evicted.
 */
static bool demote_victim(tier_obj *o, uint64_t *freed, bool clean)
{
	tier_mgr *m = o->mgr;
	uint64_t bytes = tier_dram_bytes(o);
	const struct tier_backend_ops *dram = m->backends[m->dram_at];

	if (clean) { /* chosen because another backend holds it: nothing to write */
		if (dram->drop(o) == 0)
			*freed += bytes;
		return true;
	}
	/* the first slower backend that holds it, or can take it */
	for (unsigned i = m->dram_at + 1; i < m->nbackends; i++) {
		const struct tier_backend_ops *b = m->backends[i];

		if (!b->holds(o) && b->store(o, true) != 0)
			continue;
		if (dram->drop(o) == 0)
			*freed += bytes;
		return true;
	}
	/* a faster copy (the GPU pool) keeps it; it is written down before that one goes */
	for (unsigned i = 0; i < m->dram_at; i++) {
		if (!m->backends[i]->holds(o))
			continue;
		if (dram->drop(o) == 0)
			*freed += bytes;
		return true;
	}
	return false;
}

/*
 * Make room for @need bytes and reserve them. Victims are taken
 * in DRAM policy order: each is written to NVMe and its DRAM copy dropped
 * when there is NVMe, or evicted. If even every evictable object could not
 * make room, nothing is touched.
 */
/* Can a DRAM victim in state @s be taken (@clean: another backend holds it)? */
static bool dram_victim_ok(uint64_t s, bool clean)
{
	return (s & OBJ_DRAM) && (!clean || (s & (OBJ_NVME | OBJ_GPU)));
}

int dram_make_room(tier_mgr *m, uint64_t need, bool clean)
{
	struct policy *p = &m->policy;

	for (int attempt = 0; attempt < EVICT_RETRIES; attempt++) {
		struct policy_iter it;
		struct policy_node *n;
		tier_obj **victims = NULL;
		size_t nv = 0, cap = 0;
		uint64_t avail, freed = 0, deficit, free_now;

		if (dram_reserve(&m->dram, need) == 0)
			return 0;
		if (need > m->dram.bytes)
			break;

		pthread_mutex_lock(&p->lock);
		free_now = dram_free_bytes(&m->dram);
		deficit = need > free_now ? need - free_now : 0;
		avail = 0;
		policy_iter_init(p, &it);
		while (avail < deficit && (n = policy_iter_next(p, &it)))
			if (obj_evictable(container_of(n, tier_obj, pn)) &&
			    dram_victim_ok(atomic_load(&container_of(n, tier_obj, pn)->state), clean))
				avail += tier_dram_bytes(container_of(n, tier_obj, pn));
		if (avail < deficit) {
			pthread_mutex_unlock(&p->lock);
			atomic_fetch_add(&m->enospc, 1);
			return -ENOSPC;
		}
		policy_iter_init(p, &it);
		while (freed < deficit && (n = policy_iter_next(p, &it))) {
			tier_obj *o = container_of(n, tier_obj, pn);
			uint64_t s = atomic_load(&o->state), bits = OBJ_DRAM;

			if (nv == cap) {
				size_t nc = cap ? cap * 2 : 16;
				void *a = realloc(victims, nc * sizeof(*victims));

				if (!a)
					break;
				victims = a;
				cap = nc;
			}
			/* clean: the other holder is part of the claim (its bit cannot go meanwhile) */
			if (clean)
				bits |= (s & OBJ_NVME) ? OBJ_NVME : OBJ_GPU;
			if (!tier_dram_bytes(o) || !obj_try_claim(o, bits, OBJ_PINNED | OBJ_LEASES))
				continue;
			tier_obj_get(o); /* ours, while we move it */
			victims[nv++] = o;
			freed += tier_dram_bytes(o);
		}
		pthread_mutex_unlock(&p->lock);

		/*
		 * Without the lock: writing to NVMe takes time, eviction calls out.
		 * Victims NVMe cannot take are evicted together, in one callback.
		 * victims[0, nv) keep our references; kill[] lists those to evict.
		 */
		{
			uint64_t got = 0;
			size_t nk = 0;
			tier_obj **kill = malloc((nv ? nv : 1) * sizeof(*kill));

			for (size_t i = 0; i < nv; i++) {
				if (demote_victim(victims[i], &got, clean))
					continue;
				/* Its last copy here: the owner may place it elsewhere first. */
				if (m->cb.spill)
					m->cb.spill(m->cb.ctx, victims[i]);
				if (kill)
					kill[nk++] = victims[i];
				else
					obj_kill_claimed_batch(&victims[i], 1, true);
			}
			obj_kill_claimed_batch(kill, nk, true);
			free(kill);
			for (size_t i = 0; i < nv; i++)
				tier_obj_put(victims[i]);
		}
		free(victims);
		/*
		 * Nothing claimed: bytes were freed since our reservation failed
		 * (no deficit), or racing threads claimed or leased every
		 * candidate first; their moves free bytes. Try again.
		 */
		if (nv == 0 && deficit)
			sched_yield();
	}
	atomic_fetch_add(&m->enospc, 1);
	return -ENOSPC;
}

/* --- writing ---------------------------------------------------------------- */

/*
 * DRAM accounting follows what the tmpfs allocates (4 KiB pages; holes cost
 * nothing), as the page arena did: a write first reserves the pages it
 * touches that the file lacks (evicting for them; SEEK_DATA finds them),
 * then settles on what the file occupies.
 */

/* Bytes of the page-aligned range [lo, hi) that the file lacks (o->lock held). */
static uint64_t obj_missing_locked(tier_obj *o, uint64_t lo, uint64_t hi)
{
	uint64_t have = 0, pos = lo;

	while (pos < hi) {
		off_t d = lseek(o->fd, (off_t)pos, SEEK_DATA), h;

		if (d < 0 || (uint64_t)d >= hi)
			break; /* ENXIO: no data at or after pos */
		h = lseek(o->fd, d, SEEK_HOLE);
		if (h < 0)
			return hi - lo; /* cannot tell: assume all missing */
		/* SEEK_HOLE stops at the size: the last page is whole all the same */
		h = (off_t)dram_round((uint64_t)h);
		have += KVFS_MIN((uint64_t)h, hi) - (uint64_t)d;
		pos = (uint64_t)h;
	}
	return hi - lo - KVFS_MIN(have, hi - lo);
}

/* Bytes the object's file occupies in the store (o->lock held, file open). */
static uint64_t obj_allocated_locked(tier_obj *o, uint64_t fallback)
{
	struct stat st;

	if (fstat(o->fd, &st))
		return fallback;
	return (uint64_t)st.st_blocks * 512;
}

/*
 * Settle the charge of an object that had @held reserved to what it
 * occupies. A large folio filling a hole can take more than the pages the
 * write touched: make room for the rest, or (nothing evictable) keep the
 * books true anyway; the tmpfs's own size limit stays a hard bound.
 */
static void obj_settle_locked(tier_obj *o, uint64_t held)
{
	uint64_t now = obj_allocated_locked(o, held);

	if (now < held)
		dram_unreserve(&o->mgr->dram, held - now);
	else if (now > held && dram_make_room(o->mgr, now - held, false))
		atomic_fetch_add(&o->mgr->dram.used, now - held);
	__atomic_store_n(&o->dbytes, now, __ATOMIC_RELAXED);
}

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* tier_write(); with @buf NULL the file is extended to @off + @len and all of it charged. */
static int write_range(tier_obj *o, uint64_t off, const void *buf, size_t len)
{
	tier_mgr *m = o->mgr;
	uint64_t end = off + len, s, touch;
	int rc = 0;

	if (len == 0)
		return 0;
	if (end < off || end > m->dram.bytes)
		return -EFBIG;

	pthread_mutex_lock(&o->lock);
	s = atomic_load(&o->state);
	if (s & (OBJ_DEAD | OBJ_SEALED)) {
		rc = (s & OBJ_DEAD) ? -ENOENT : -EPERM;
		goto out_unlock;
	}
	rc = obj_open_locked(o);
	if (rc)
		goto out_unlock;
	touch = (off & ~(uint64_t)(DRAM_UNIT - 1));
	touch = off >= dram_round(o->size) ? dram_round(end) - touch
					   : obj_missing_locked(o, touch, dram_round(end));
	rc = dram_make_room(m, touch, false);
	if (rc)
		goto out_unlock;
	if (buf)
		rc = pwrite_all(o->fd, buf, len, off);
	else if (end > o->size && ftruncate(o->fd, (off_t)end))
		rc = -errno;
	if (rc) {
		/* A failed write changes nothing we account for. */
		if (ftruncate(o->fd, (off_t)o->size))
			log_warn("DRAM: cannot restore the size of object %llu",
				 (unsigned long long)o->id);
		obj_settle_locked(o, o->dbytes + touch);
		goto out_unlock;
	}
	if (end > o->size)
		__atomic_store_n(&o->size, end, __ATOMIC_RELAXED);
	if (buf)
		obj_settle_locked(o, o->dbytes + touch);
	else
		__atomic_store_n(&o->dbytes, o->dbytes + touch, __ATOMIC_RELAXED);
out_unlock:
	pthread_mutex_unlock(&o->lock);
	return rc;
}

int tier_write(tier_obj *o, uint64_t off, const void *buf, size_t len)
{
	return write_range(o, off, buf, len);
}

int tier_write_iov(tier_obj *o, uint64_t size, struct iovec *iov, int max)
{
	int rc;

	pthread_mutex_lock(&o->lock);
	rc = o->size || o->dbytes ? -EINVAL : 0;
	pthread_mutex_unlock(&o->lock);
	if (rc || size == 0)
		return rc;
	if (max < 1)
		return -E2BIG;
	rc = write_range(o, 0, NULL, (size_t)size);
	if (rc)
		return rc;
	pthread_mutex_lock(&o->lock);
	rc = obj_map_locked(o);
	if (!rc) {
		iov[0].iov_base = o->map;
		iov[0].iov_len = (size_t)size;
		rc = 1;
	}
	pthread_mutex_unlock(&o->lock);
	return rc;
}

int tier_truncate(tier_obj *o, uint64_t size)
{
	tier_mgr *m = o->mgr;
	uint64_t s;
	int rc = 0;

	if (size > m->dram.bytes)
		return -EFBIG;
	pthread_mutex_lock(&o->lock);
	s = atomic_load(&o->state);
	if (s & (OBJ_DEAD | OBJ_SEALED)) {
		rc = (s & OBJ_DEAD) ? -ENOENT : -EPERM;
		goto out_unlock;
	}
	if (size == o->size)
		goto out_unlock;
	rc = obj_open_locked(o);
	if (!rc && ftruncate(o->fd, (off_t)size))
		rc = -errno;
	if (rc)
		goto out_unlock;
	/* shrinking frees pages; growing leaves a hole, which costs nothing */
	obj_settle_locked(o, o->dbytes);
	__atomic_store_n(&o->size, size, __ATOMIC_RELAXED);
out_unlock:
	pthread_mutex_unlock(&o->lock);
	return rc;
}

int tier_seal(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint64_t old;
	int rc = 0;

	pthread_mutex_lock(&o->lock);
	old = atomic_fetch_or(&o->state, OBJ_SEALED);
	if (old & OBJ_DEAD) {
		rc = -ENOENT;
	} else if (!(old & OBJ_SEALED)) {
		atomic_fetch_add(&m->sealed, 1);
		if (old & OBJ_PINNED)
			atomic_fetch_add(&m->pinned_bytes, tier_dram_bytes(o));
	}
	pthread_mutex_unlock(&o->lock);
	if (rc || (old & OBJ_SEALED))
		return rc;
	/*
	 * Write-through: on NVMe before the owner records the file, and before
	 * the object joins the policy list. Once listed, an eviction could claim
	 * it first and still be writing it when the owner's rename returns.
	 */
	if (m->nvme && m->persist_through && obj_try_claim(o, OBJ_DRAM, OBJ_NVME)) {
		int st = tier_nvme_backend.store(o, true);

		if (st && st != -EINVAL) /* -EINVAL: empty, nothing to store */
			place_pending(o);
		obj_unclaim(o);
	}
	pthread_mutex_lock(&m->policy.lock);
	if (!(atomic_load(&o->state) & OBJ_DEAD)) {
		tier_obj_get(o); /* the list's reference */
		policy_insert_locked(&m->policy, &o->pn, tier_size(o));
	}
	pthread_mutex_unlock(&m->policy.lock);
	pthread_mutex_lock(&o->lock);
	obj_close_idle(o, false); /* the writer is done with the file */
	pthread_mutex_unlock(&o->lock);
	return 0;
}

/* --- reading ------------------------------------------------------------- */

static ssize_t pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (size_t)n;
	}
	/* A file shorter than the object (never, but be safe): zeros. */
	memset(buf + done, 0, len - done);
	return (ssize_t)len;
}

ssize_t obj_dram_read(tier_obj *o, uint64_t off, void *buf, size_t len)
{
	ssize_t rc;

	pthread_mutex_lock(&o->lock);
	if ((atomic_load(&o->state) & (OBJ_DRAM | OBJ_DEAD)) != OBJ_DRAM) {
		rc = (atomic_load(&o->state) & OBJ_DEAD) ? -ENOENT : -ENODATA;
		goto out_unlock;
	}
	if (off >= o->size) {
		rc = 0;
		goto out_unlock;
	}
	len = KVFS_MIN(len, o->size - off);
	if (o->map && o->maplen >= off + len) {
		memcpy(buf, o->map + off, len);
		rc = (ssize_t)len;
		goto out_unlock;
	}
	rc = obj_open_locked(o);
	if (!rc)
		rc = pread_full(o->fd, buf, len, off);
	obj_close_idle(o, false);
out_unlock:
	pthread_mutex_unlock(&o->lock);
	return rc;
}

ssize_t tier_read(tier_obj *o, uint64_t off, void *buf, size_t len)
{
	tier_mgr *m = o->mgr;
	ssize_t rc = -ENODATA;

	if (atomic_load(&o->state) & OBJ_DEAD)
		return -ENOENT;
	if (off >= tier_size(o))
		return 0;
	/* the fastest backend holding it; one that lost it meanwhile says -ENODATA */
	for (unsigned i = 0; i < m->nbackends && rc == -ENODATA; i++)
		if (m->backends[i]->holds(o))
			rc = m->backends[i]->read(o, off, buf, len);
	if (rc == -ENODATA)
		rc = (atomic_load(&o->state) & OBJ_DEAD) ? -ENOENT : -EIO;
	return rc;
}

int tier_read_iov(tier_obj *o, uint64_t off, size_t len, struct iovec *iov, int max)
{
	uint64_t s = atomic_load(&o->state), size = o->size;
	uint8_t *map;
	int rc;

	if (s & OBJ_DEAD)
		return -ENOENT;
	if (!(s & OBJ_SEALED))
		return -EINVAL;
	if (!(s & OBJ_DRAM))
		return -ENODATA;
	if (off >= size)
		return 0;
	if (max < 1)
		return 0;
	len = KVFS_MIN(len, size - off);
	/*
	 * The mapping lives until the last lease goes (the caller holds one).
	 * Taken under the lock: a racing last unlease may be unmapping it.
	 */
	pthread_mutex_lock(&o->lock);
	rc = obj_map_locked(o);
	map = o->map;
	pthread_mutex_unlock(&o->lock);
	if (rc)
		return rc;
	iov[0].iov_base = map + off;
	iov[0].iov_len = len;
	return 1;
}

int obj_dram_backing_fd(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	int fd;

	pthread_mutex_lock(&o->lock);
	if (!o->fname) {
		fd = -ENODATA; /* an empty file has none */
	} else if (m->dram.dirfd >= 0) {
		fd = dram_reopen(&m->dram, o->fname, O_RDONLY);
	} else if (o->fd < 0) {
		fd = -ENODATA;
	} else {
		fd = fcntl(o->fd, F_DUPFD_CLOEXEC, 0); /* a memfd: no name to reopen */
		if (fd < 0)
			fd = -errno;
	}
	pthread_mutex_unlock(&o->lock);
	return fd;
}

int obj_dram_fill(tier_obj *o, bool clean,
		  int (*fill)(tier_obj *o, uint64_t off, void *buf, uint64_t len))
{
	tier_mgr *m = o->mgr;
	uint64_t want = dram_round(o->size), name = 0;
	void *p = MAP_FAILED;
	int fd, rc;

	if (o->size == 0)
		return -ENODATA;
	rc = dram_make_room(m, want, clean);
	if (rc)
		return rc;
	fd = dram_create(&m->dram, &name);
	if (fd < 0) {
		rc = fd;
		goto out_unreserve;
	}
	if (ftruncate(fd, (off_t)o->size) ||
	    (p = mmap(NULL, (size_t)o->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) ==
		    MAP_FAILED) {
		rc = -errno;
		goto out_remove;
	}
	rc = fill(o, 0, p, o->size);
	munmap(p, (size_t)o->size);
	if (rc)
		goto out_remove;
	pthread_mutex_lock(&o->lock);
	o->fname = name;
	if (m->dram.dirfd < 0) {
		o->fd = fd; /* a memfd: it has no name to reopen */
		fd = -1;
	}
	__atomic_store_n(&o->dbytes, want, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&o->lock);
	if (fd >= 0)
		close(fd);
	/* the file first, then the bit: a reader that sees OBJ_DRAM finds it */
	atomic_fetch_or(&o->state, OBJ_DRAM);
	pthread_mutex_lock(&m->policy.lock);
	if (!o->pn.linked && !(atomic_load(&o->state) & OBJ_DEAD)) {
		tier_obj_get(o);
		policy_insert_locked(&m->policy, &o->pn, o->size);
	}
	pthread_mutex_unlock(&m->policy.lock);
	if (atomic_load(&o->state) & OBJ_PINNED)
		atomic_fetch_add(&m->pinned_bytes, want);
	if (m->cb.moved)
		m->cb.moved(m->cb.ctx, o);
	return 0;

out_remove:
	if (fd >= 0)
		close(fd);
	dram_remove(&m->dram, name);
out_unreserve:
	dram_unreserve(&m->dram, want);
	return rc;
}

int tier_backing_fd(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint64_t s = atomic_load(&o->state);

	if (s & OBJ_DEAD)
		return -ENOENT;
	if (!(s & OBJ_SEALED) || !(s & OBJ_LEASES))
		return -EINVAL;
	for (unsigned i = 0; i < m->nbackends; i++)
		if (m->backends[i]->backing_fd && m->backends[i]->holds(o))
			return m->backends[i]->backing_fd(o);
	return -ENODATA;
}

int tier_recover(tier_mgr *m, uint64_t id, uint64_t size, uint32_t hits, void *owner,
		 tier_obj **out)
{
	int rc = -ENOENT;

	/* every backend that persists, fastest first, until one has it */
	for (unsigned i = 0; i < m->nbackends && rc == -ENOENT; i++)
		if (m->backends[i]->recover)
			rc = m->backends[i]->recover(m, id, size, hits, owner, out);
	return rc;
}

/* --- leases, hits, pins ---------------------------------------------------- */

/* A file read this many times from NVMe comes back into DRAM. */
#define PROMOTE_HITS 2

void tier_touch(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	struct policy *p = &m->policy, *np = &m->nvme_policy;
	uint64_t bytes = tier_size(o);
	uint32_t hits;

	pthread_mutex_lock(&p->lock);
	if (!(atomic_load(&o->state) & OBJ_DEAD))
		policy_hit_locked(p, &o->pn, bytes);
	hits = o->pn.hits;
	pthread_mutex_unlock(&p->lock);
	if (m->ngpu) {
		pthread_mutex_lock(&m->gpu_policy.lock);
		if (!(atomic_load(&o->state) & OBJ_DEAD))
			policy_hit_locked(&m->gpu_policy, &o->gpn, bytes);
		pthread_mutex_unlock(&m->gpu_policy.lock);
	}
	if (!m->nvme)
		return;
	pthread_mutex_lock(&np->lock);
	if (!(atomic_load(&o->state) & OBJ_DEAD))
		policy_hit_locked(np, &o->npn, bytes);
	pthread_mutex_unlock(&np->lock);
	if (hits >= PROMOTE_HITS && !(atomic_load(&o->state) & OBJ_DRAM) &&
	    obj_try_claim(o, OBJ_NVME, OBJ_DRAM)) {
		/* the opener holds a lease: claiming ignores it, promotion copes */
		place_promote(o, false);
		obj_unclaim(o);
	}
}

static int promote(tier_obj *o, bool clean)
{
	uint64_t s = atomic_load(&o->state);
	int rc;

	if (s & OBJ_DEAD)
		return -ENOENT;
	if (s & OBJ_DRAM)
		return 0;
	if ((s & OBJ_GPU) && !(s & OBJ_NVME)) { /* GPU-only: written down */
		if (!obj_try_claim(o, OBJ_GPU, OBJ_DRAM | OBJ_NVME)) {
			s = atomic_load(&o->state);
			return (s & OBJ_DEAD) ? -ENOENT : (s & OBJ_DRAM) ? 0 : -EBUSY;
		}
		rc = gpu_writedown(o, clean); /* clean: an open costs no file its only copy */
		obj_unclaim(o);
		return rc;
	}
	if (!obj_try_claim(o, OBJ_NVME, OBJ_DRAM)) {
		s = atomic_load(&o->state);
		return (s & OBJ_DEAD) ? -ENOENT : (s & OBJ_DRAM) ? 0 : -EBUSY;
	}
	rc = place_promote(o, clean); /* lease holders and all: promotion copes */
	obj_unclaim(o);
	if (rc == -EBADMSG)
		rc = -EIO; /* its only copy was bad: it is lost */
	return rc;
}

int tier_promote(tier_obj *o)
{
	return promote(o, false);
}

int tier_promote_clean(tier_obj *o)
{
	return promote(o, true);
}
