/*
 * tier/gpu.c — the GPU backend (DESIGN §10): `--gpu` pools (gpu/gpu.h) as the
 * fastest backend in the tier's array, GPU → DRAM → NVMe.
 *
 * Owns an object's pool copy: OBJ_GPU in the state word, the pool blocks
 * (o->gblk, file offset f in block gblk[f / block_bytes] at f % block_bytes)
 * of one attached pool (o->gslot), and the GPU policy list (o->gpn) that
 * picks the pool's victims. What lands here: blocks saved from an engine's
 * device memory (tier_gpu_store_parts: device-to-device copies from the
 * engine's pages), and files promoted as hot on reads into engine device
 * buffers (tier_gpu_promote: host-to-device from the host copy). Nothing
 * else is admitted: new bytes still land in DRAM.
 *
 * Demotion: a DRAM victim with no slower backend to take it but a pool copy
 * drops its DRAM copy and stays in the pool (GPU-only). A pool victim with
 * no host copy (DRAM or NVMe) is written down first (device-to-host into a
 * new DRAM file, which may demote DRAM victims to NVMe) and only then are
 * its blocks freed; if that fails it is not dropped. Reads by the host of a
 * GPU-only file (and passthrough opens, tier_promote_clean) write it down
 * into DRAM first when DRAM has clean room (dropping only DRAM copies that
 * NVMe or a pool holds too); else reads are copied device-to-host straight
 * into the reader's buffer: a read never costs another file its only copy. The pool is volatile: a GPU-only file does not
 * survive kill -9; one with an NVMe copy does. Host reads of a file that
 * NVMe holds too are copied device to host from the pool, never written down.
 *
 * Invariants: OBJ_GPU is set after the blocks are filled and cleared (with
 * zero leases, by compare-and-swap) before they are freed, so a lease holder
 * that saw OBJ_GPU may read the blocks until it lets go; an object in the
 * GPU list has OBJ_GPU or is being dropped, and the list holds a reference.
 *
 * Locking: moves run under the object's claim (OBJ_BUSY); each pool's
 * stream is used under its slot's mutex; the GPU policy has its own lock
 * (after o->lock, like the other lists).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/log.h"
#include "core/util.h"
#include "gpu/gpu.h"
#include "tier/tier_i.h"

/* Engine device loads of a file that make it hot enough for the pool. */
#define GPU_PROMOTE_HITS 2

static struct tier_gpu_slot *slot_of(tier_mgr *m, const struct gpu_dev *dev)
{
	for (unsigned i = 0; i < m->ngpu; i++)
		if (m->gpu[i].dev == dev)
			return &m->gpu[i];
	return NULL;
}

static bool gpu_holds(const tier_obj *o)
{
	return (atomic_load(&((tier_obj *)o)->state) & (OBJ_GPU | OBJ_DEAD)) == OBJ_GPU;
}

/*
 * Copy [off, off + len) of @o's file between @p (host, or device for
 * GPU_D2D) and its pool blocks, in pieces split at block boundaries.
 * @to_pool: into the pool. Queued on the slot's stream (lock held).
 */
static int pool_copy(struct tier_gpu_slot *s, tier_obj *o, uint64_t off, uint8_t *p, uint64_t len,
		     enum gpu_dir dir, bool to_pool)
{
	uint64_t bb = s->block_bytes;

	while (len) {
		uint64_t in = off % bb, n = KVFS_MIN(len, bb - in);
		uint8_t *blk = (uint8_t *)gpu_pool_block(s->pool, o->gblk[off / bb]) + in;

		if (s->dev->ops->copy(s->stream, to_pool ? blk : p, to_pool ? p : blk, n, dir))
			return -EIO;
		off += n;
		p += n;
		len -= n;
	}
	return 0;
}

static void gblk_free(tier_obj *o)
{
	tier_mgr *m = o->mgr;

	if (o->gblk) {
		gpu_pool_put(m->gpu[o->gslot].pool, o->ngblk, o->gblk);
		atomic_fetch_sub(&m->gpu[o->gslot].used,
				 (uint64_t)o->ngblk * m->gpu[o->gslot].block_bytes);
		atomic_fetch_sub(&m->gpu[o->gslot].files, 1);
		free(o->gblk);
		o->gblk = NULL;
		o->ngblk = 0;
	}
}

/* Device-to-host of [off, off + len) into @buf. @return 0; -EIO (logged). */
static int pool_read(tier_obj *o, uint64_t off, void *buf, uint64_t len)
{
	struct tier_gpu_slot *s = &o->mgr->gpu[o->gslot];
	int rc;

	pthread_mutex_lock(&s->lock);
	rc = pool_copy(s, o, off, buf, len, GPU_D2H, false);
	if (!rc && s->dev->ops->stream_sync(s->stream))
		rc = -EIO;
	pthread_mutex_unlock(&s->lock);
	if (rc) {
		log_err("GPU pool %d: a device-to-host copy failed: %s", s->dev->index,
			gpu_error());
		atomic_fetch_add(&s->copy_errors, 1);
	} else {
		atomic_fetch_add(&s->d2h_bytes, len);
	}
	return rc;
}

/* Write a claimed GPU-only @o down into a new DRAM file. */
int gpu_writedown(tier_obj *o, bool clean)
{
	struct tier_gpu_slot *s = &o->mgr->gpu[o->gslot];
	int rc = obj_dram_fill(o, clean, pool_read);

	if (!rc)
		atomic_fetch_add(&s->writedowns, 1);
	return rc;
}

/*
 * Serve host reads: never while DRAM holds it; a GPU-only file is written
 * down first; one that NVMe holds too is copied device to host (no
 * checksum to check, no NVMe read).
 */
static ssize_t gpu_read(tier_obj *o, uint64_t off, void *buf, size_t len)
{
	uint64_t s = atomic_load(&o->state);

	if (s & OBJ_DRAM)
		return -ENODATA; /* the host copy is faster for the host */
	if (!(s & OBJ_NVME) && obj_try_claim(o, OBJ_GPU, OBJ_DRAM | OBJ_NVME)) {
		/* the reader holds a lease: claiming ignores it; clean: a read
		 * costs no other file its only copy (else device to host below) */
		int rc = gpu_writedown(o, true);

		obj_unclaim(o);
		if (!rc) {
			ssize_t n = obj_dram_read(o, off, buf, len);

			if (n != -ENODATA)
				return n;
		}
	}
	if (!gpu_holds(o))
		return -ENODATA;
	len = KVFS_MIN(len, o->size - off);
	return pool_read(o, off, buf, len) ? -EIO : (ssize_t)len;
}

/* Out of the GPU list (its reference dropped if it was in). */
static void gpu_unlist(tier_obj *o)
{
	struct policy *p = &o->mgr->gpu_policy;
	bool linked;

	pthread_mutex_lock(&p->lock);
	linked = o->gpn.linked;
	policy_remove_locked(p, &o->gpn);
	pthread_mutex_unlock(&p->lock);
	if (linked)
		tier_obj_put(o);
}

/*
 * Drop the pool copy of claimed @o, writing it down first when it has no
 * host copy. Releases the claim. @return 0; -EBUSY (leased); the write-down's error.
 */
static int gpu_drop(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint64_t s = atomic_load(&o->state);

	if (!(s & (OBJ_DRAM | OBJ_NVME))) {
		int rc = gpu_writedown(o, false);

		if (rc) {
			obj_unclaim(o);
			return rc;
		}
		s = atomic_load(&o->state);
	}
	do {
		if (s & (OBJ_LEASES | OBJ_DEAD)) {
			obj_unclaim(o);
			return -EBUSY;
		}
	} while (!atomic_compare_exchange_weak(&o->state, &s, s & ~OBJ_GPU));
	gpu_unlist(o);
	atomic_fetch_add(&m->gpu[o->gslot].drops, 1);
	gblk_free(o);
	if (m->cb.moved)
		m->cb.moved(m->cb.ctx, o);
	obj_unclaim(o);
	return 0;
}

static void gpu_release(tier_obj *o, uint64_t old_state)
{
	if (!(old_state & OBJ_GPU))
		return;
	gpu_unlist(o);
	gblk_free(o);
}

static void gpu_backend_stats(tier_mgr *m, struct tier_backend_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->name = "gpu";
	st->kind = TIER_GPU;
	for (unsigned i = 0; i < m->ngpu; i++) {
		st->capacity += m->gpu[i].capacity;
		st->used += atomic_load(&m->gpu[i].used);
		st->files += atomic_load(&m->gpu[i].files);
		st->reads += atomic_load(&m->gpu[i].d2d_loads);
		st->read_bytes += atomic_load(&m->gpu[i].d2d_bytes);
		st->writes += atomic_load(&m->gpu[i].stores);
		st->write_bytes += atomic_load(&m->gpu[i].store_bytes);
	}
}

/* Into the pool only through tier_gpu_promote/tier_gpu_store_parts (it admits nothing else). */
static int gpu_store(tier_obj *o, bool evict)
{
	(void)o;
	(void)evict;
	return -ENOSPC;
}

const struct tier_backend_ops tier_gpu_backend = {
	.name = "gpu",
	.kind = TIER_GPU,
	.holds = gpu_holds,
	.store = gpu_store,
	.read = gpu_read,
	.backing_fd = NULL, /* device memory: never passthrough */
	.drop = gpu_drop,
	.release = gpu_release,
	.unused = NULL,
	.stats = gpu_backend_stats,
	.recover = NULL, /* volatile */
};

int tier_gpu_attach(tier_mgr *m, struct gpu_dev *dev, struct gpu_pool *pool)
{
	struct tier_gpu_slot *s;
	struct gpu_pool_stats ps;
	int rc;

	if (m->ngpu == TIER_MAX_GPUS || m->nbackends == TIER_MAX_BACKENDS)
		return -ENOSPC;
	gpu_pool_get_stats(pool, &ps);
	s = &m->gpu[m->ngpu];
	memset(s, 0, sizeof(*s));
	rc = dev->ops->stream_new(dev, &s->stream);
	if (rc)
		return rc;
	pthread_mutex_init(&s->lock, NULL);
	s->dev = dev;
	s->pool = pool;
	s->block_bytes = ps.block_bytes;
	s->capacity = ps.bytes;
	if (m->ngpu++ == 0) {
		/* the fastest backend: first in the array */
		memmove(&m->backends[1], &m->backends[0], sizeof(m->backends[0]) * m->nbackends);
		m->backends[0] = &tier_gpu_backend;
		m->nbackends++;
		m->dram_at++;
	}
	return 0;
}

void tier_gpu_detach_all(tier_mgr *m)
{
	for (unsigned i = 0; i < m->ngpu; i++) {
		m->gpu[i].dev->ops->stream_free(m->gpu[i].stream);
		pthread_mutex_destroy(&m->gpu[i].lock);
	}
	m->ngpu = 0;
}

/*
 * Take @n blocks of @s, dropping victims in LRU order until they are free.
 * A victim that could not be dropped (its write-down failed, a lease came)
 * stays and is skipped; after a few of those, give up.
 */
#define POOL_SKIP 8
static int pool_make_room(struct tier_gpu_slot *s, tier_mgr *m, uint32_t n, uint32_t *idx)
{
	tier_obj *skip[POOL_SKIP];
	unsigned nskip = 0;

	for (;;) {
		struct policy_iter it;
		struct policy_node *pn;
		tier_obj *victim = NULL;

		if (gpu_pool_get(s->pool, n, idx) == 0)
			return 0;
		pthread_mutex_lock(&m->gpu_policy.lock);
		policy_iter_init(&m->gpu_policy, &it);
		while ((pn = policy_iter_next(&m->gpu_policy, &it))) {
			tier_obj *o = container_of(pn, tier_obj, gpn);
			bool skipped = false;

			for (unsigned k = 0; k < nskip; k++)
				skipped |= skip[k] == o;
			if (!skipped && &m->gpu[o->gslot] == s &&
			    obj_try_claim(o, OBJ_GPU, OBJ_LEASES)) {
				tier_obj_get(o);
				victim = o;
				break;
			}
		}
		pthread_mutex_unlock(&m->gpu_policy.lock);
		if (!victim)
			return -ENOSPC;
		if (gpu_drop(victim) == 0) {
			atomic_fetch_add(&s->evictions, 1);
		} else if (nskip == POOL_SKIP) {
			tier_obj_put(victim);
			return -ENOSPC;
		} else {
			skip[nskip++] = victim; /* only compared: a reused address skips one more */
		}
		tier_obj_put(victim);
	}
}

/* Blocks for claimed @o in @s, evicting; @o's gblk set on success. */
static int gblk_alloc(struct tier_gpu_slot *s, tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint32_t n = (uint32_t)((o->size + s->block_bytes - 1) / s->block_bytes);
	uint32_t *idx;
	int rc;

	if (!n || o->size > (uint64_t)s->capacity)
		return -ENOSPC;
	idx = malloc(sizeof(*idx) * n);
	if (!idx)
		return -ENOMEM;
	rc = pool_make_room(s, m, n, idx);
	if (rc) {
		free(idx);
		return rc;
	}
	o->gblk = idx;
	o->ngblk = n;
	o->gslot = (int)(s - m->gpu);
	atomic_fetch_add(&s->used, (uint64_t)n * s->block_bytes);
	atomic_fetch_add(&s->files, 1);
	return 0;
}

/* The blocks of claimed @o are filled: publish them (bit, list). */
static void gpu_publish(tier_obj *o)
{
	tier_mgr *m = o->mgr;

	atomic_fetch_or(&o->state, OBJ_GPU);
	pthread_mutex_lock(&m->gpu_policy.lock);
	if (!o->gpn.linked && !(atomic_load(&o->state) & OBJ_DEAD)) {
		tier_obj_get(o);
		policy_insert_locked(&m->gpu_policy, &o->gpn, o->size);
	}
	pthread_mutex_unlock(&m->gpu_policy.lock);
	if (m->cb.moved)
		m->cb.moved(m->cb.ctx, o);
}

int tier_gpu_store_parts(tier_obj *o, struct gpu_dev *dev, const struct tier_gpu_part *p,
			 unsigned n)
{
	tier_mgr *m = o->mgr;
	struct tier_gpu_slot *s = slot_of(m, dev);
	uint64_t bytes = 0;
	int rc = 0;

	if (!s)
		return -ENODEV;
	for (unsigned i = 0; i < n; i++) {
		if (p[i].off > o->size || p[i].len > o->size - p[i].off)
			return -EINVAL;
		bytes += p[i].len;
	}
	if (bytes != o->size)
		return -EINVAL; /* the parts must cover the file */
	if (!obj_try_claim(o, 0, OBJ_GPU))
		return -EBUSY;
	rc = gblk_alloc(s, o);
	if (rc)
		goto out;
	pthread_mutex_lock(&s->lock);
	for (unsigned i = 0; i < n && !rc; i++)
		rc = pool_copy(s, o, p[i].off, (uint8_t *)p[i].src, p[i].len,
			       p[i].device ? GPU_D2D : GPU_H2D, true);
	if (s->dev->ops->stream_sync(s->stream))
		rc = -EIO;
	pthread_mutex_unlock(&s->lock);
	if (rc) {
		log_err("GPU pool %d: a copy into the pool failed: %s", dev->index, gpu_error());
		atomic_fetch_add(&s->copy_errors, 1);
		gblk_free(o);
		goto out;
	}
	atomic_fetch_add(&s->stores, 1);
	atomic_fetch_add(&s->store_bytes, bytes);
	gpu_publish(o);
out:
	obj_unclaim(o);
	return rc;
}

int tier_gpu_promote(tier_obj *o, struct gpu_dev *dev)
{
	tier_mgr *m = o->mgr;
	struct tier_gpu_slot *s = slot_of(m, dev);
	uint8_t *host = NULL;
	uint64_t st = atomic_load(&o->state);
	uint32_t hits;
	ssize_t got;
	int rc;

	if (!s)
		return -ENODEV;
	if (st & OBJ_GPU)
		return 0;
	pthread_mutex_lock(&m->policy.lock);
	hits = o->pn.hits;
	pthread_mutex_unlock(&m->policy.lock);
	if (hits < GPU_PROMOTE_HITS || !o->size)
		return -EAGAIN; /* not hot yet */
	if (!obj_try_claim(o, 0, OBJ_GPU))
		return -EBUSY;
	/* the host copy, staged (pinned would be faster: DESIGN §10, 5) */
	host = malloc(o->size);
	rc = host ? 0 : -ENOMEM;
	if (!rc) {
		got = tier_read(o, 0, host, o->size);
		rc = got == (ssize_t)o->size ? 0 : got < 0 ? (int)got : -EIO;
	}
	if (!rc)
		rc = gblk_alloc(s, o);
	if (!rc) {
		pthread_mutex_lock(&s->lock);
		rc = pool_copy(s, o, 0, host, o->size, GPU_H2D, true);
		if (s->dev->ops->stream_sync(s->stream))
			rc = -EIO;
		pthread_mutex_unlock(&s->lock);
		if (rc) {
			atomic_fetch_add(&s->copy_errors, 1);
			gblk_free(o);
		}
	}
	if (!rc) {
		atomic_fetch_add(&s->promotions, 1);
		atomic_fetch_add(&s->store_bytes, o->size);
		gpu_publish(o);
	}
	obj_unclaim(o);
	free(host);
	return rc;
}

void *tier_gpu_addr(tier_obj *o, const struct gpu_dev *dev, uint64_t off, uint64_t *len)
{
	tier_mgr *m = o->mgr;
	struct tier_gpu_slot *s;
	uint64_t bb;

	if (!gpu_holds(o) || !(atomic_load(&o->state) & OBJ_LEASES) || off >= o->size)
		return NULL;
	s = &m->gpu[o->gslot];
	if (s->dev != dev)
		return NULL;
	bb = s->block_bytes;
	*len = KVFS_MIN(*len, KVFS_MIN(bb - off % bb, o->size - off));
	return (uint8_t *)gpu_pool_block(s->pool, o->gblk[off / bb]) + off % bb;
}

void tier_gpu_loaded(tier_obj *o, uint64_t bytes)
{
	struct tier_gpu_slot *s = &o->mgr->gpu[o->gslot];

	atomic_fetch_add(&s->d2d_loads, 1);
	atomic_fetch_add(&s->d2d_bytes, bytes);
}

size_t gpu_flush(tier_mgr *m)
{
	struct policy *p = &m->gpu_policy;
	struct policy_node *n;
	struct policy_iter it;
	tier_obj **v = NULL;
	size_t nv = 0, cap = 0, stored = 0;

	if (!m->nvme || !m->ngpu)
		return 0;
	pthread_mutex_lock(&p->lock);
	policy_iter_init(p, &it);
	while ((n = policy_iter_next(p, &it))) {
		tier_obj *o = container_of(n, tier_obj, gpn);

		if (nv == cap) {
			size_t nc = cap ? cap * 2 : 64;
			tier_obj **a = realloc(v, nc * sizeof(*v));

			if (!a)
				break;
			v = a;
			cap = nc;
		}
		if (!obj_try_claim(o, OBJ_GPU, OBJ_DRAM | OBJ_NVME))
			continue;
		tier_obj_get(o);
		v[nv++] = o;
	}
	pthread_mutex_unlock(&p->lock);
	for (size_t i = nv; i-- > 0;) {
		/* the NVMe backend's store writes a GPU-only file down first */
		if (tier_nvme_backend.store(v[i], false) == 0)
			stored++;
		obj_unclaim(v[i]);
		tier_obj_put(v[i]);
	}
	free(v);
	return stored;
}

unsigned tier_gpu_get_stats(tier_mgr *m, struct tier_gpu_stats *out, unsigned max)
{
	unsigned n;

	for (n = 0; n < m->ngpu && n < max; n++) {
		struct tier_gpu_slot *s = &m->gpu[n];

		out[n] = (struct tier_gpu_stats){
			.device = s->dev->index,
			.capacity = s->capacity,
			.used = atomic_load(&s->used),
			.files = atomic_load(&s->files),
			.stores = atomic_load(&s->stores),
			.promotions = atomic_load(&s->promotions),
			.store_bytes = atomic_load(&s->store_bytes),
			.d2d_loads = atomic_load(&s->d2d_loads),
			.d2d_bytes = atomic_load(&s->d2d_bytes),
			.d2h_bytes = atomic_load(&s->d2h_bytes),
			.writedowns = atomic_load(&s->writedowns),
			.drops = atomic_load(&s->drops),
			.evictions = atomic_load(&s->evictions),
			.copy_errors = atomic_load(&s->copy_errors),
		};
	}
	return n;
}
