/*
 * tier/tier.c — the tier manager and its objects.
 *
 * Owns every tier object: its page table in the DRAM arena, its state word
 * and its places in the eviction policies (one for DRAM, one for NVMe).
 * Moving bytes to and from NVMe is in place.c.
 *
 * State word (tier_obj.state, atomic): the lease count in the low 32 bits,
 * then SEALED, PINNED and DEAD. Leasing, pinning and the decision to evict
 * are compare-and-swap loops on this word, so an open racing an eviction is
 * decided in one place: either the lease lands first and the object is not
 * evicted, or the object is marked DEAD first and the lease fails (the
 * opener sees a miss). Whoever sets DEAD releases the bytes.
 *
 * Invariants:
 *  - an object in the DRAM list is sealed, in DRAM and not dead; one in the
 *    NVMe list has an NVMe copy. Each list holds a reference;
 *  - a sealed object's page table changes only while no lease is held: a
 *    demotion clears OBJ_DRAM by compare-and-swap with zero leases before it
 *    frees the pages, and a lease taken after that sees no DRAM and reads
 *    NVMe. A promotion fills pages first and sets OBJ_DRAM last. So readers
 *    holding a lease use the page table without a lock;
 *  - OBJ_BUSY marks the one thread moving an object between tiers;
 *  - a dead object holds no pages and no extents (after its last lease).
 *
 * Locking order: obj->lock (writers of unsealed objects) → policy.lock →
 * dram.lock. The owner's `evicted` callback runs with none of them held
 * except, possibly, the lock of the unsealed object being written (which is
 * never a victim and which the owner's callback never takes).
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/util.h"
#include "tier/tier_i.h"

#define DEFAULT_PAGE_SIZE (64u << 10)
#define EVICT_RETRIES     64

int tier_open(const struct tier_config *cfg, const struct tier_callbacks *cb, tier_mgr **out,
	      char *err, size_t errlen)
{
	uint32_t ps = cfg->page_size ? cfg->page_size : DEFAULT_PAGE_SIZE;
	const char *policy = cfg->policy ? cfg->policy : "mq";
	tier_mgr *m;
	int rc;

	if (ps < 4096 || ps > (16u << 20) || (ps & (ps - 1))) {
		snprintf(err, errlen, "page size %u is not a power of two from 4 KiB to 16 MiB", ps);
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->cb = *cb;
	rc = dram_open(&m->dram, cfg->dram_bytes, ps, err, errlen);
	if (rc)
		goto out_free;
	rc = policy_init(&m->policy, policy, m->dram.npages);
	if (rc) {
		snprintf(err, errlen, "unknown eviction policy '%s' (use mq or lru)", policy);
		goto out_dram;
	}
	policy_init(&m->nvme_policy, policy, m->dram.npages);
	if (posix_memalign((void **)&m->zero_page, 4096, ps)) {
		rc = -ENOMEM;
		goto out_policy;
	}
	memset(m->zero_page, 0, ps);
	if (cfg->nvme_count) {
		struct nvme_dev_config devs[16];
		uint32_t extent_pages = ps >= (1u << 20) ? 1 : (1u << 20) / ps;

		if (cfg->nvme_count > KVFS_ARRAY_SIZE(devs) || !cfg->cat) {
			snprintf(err, errlen, "at most %zu NVMe directories", KVFS_ARRAY_SIZE(devs));
			rc = -EINVAL;
			goto out_zero;
		}
		for (unsigned i = 0; i < cfg->nvme_count; i++) {
			devs[i].dir = cfg->nvme[i].dir;
			devs[i].bytes = cfg->nvme[i].bytes;
		}
		m->nvme_extent_pages = extent_pages;
		rc = nvme_open(devs, cfg->nvme_count, ps, extent_pages, &m->nvme, err, errlen);
		if (rc)
			goto out_zero;
		/* Plain I/O still works if the kernel refuses to pin the arena. */
		rc = nvme_register_memory(m->nvme, m->dram.base, m->dram.bytes);
		if (rc)
			log_warn("NVMe: DRAM arena not registered with io_uring (%s): plain I/O",
				 strerror(-rc));
		m->cat = cfg->cat;
		m->persist_through = cfg->persist_through;
	}
	*out = m;
	return 0;

out_zero:
	free(m->zero_page);
out_policy:
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
	free(m->zero_page);
	policy_destroy(&m->nvme_policy);
	policy_destroy(&m->policy);
	dram_close(&m->dram);
	free(m);
}

void *tier_dram_base(const tier_mgr *m, uint64_t *bytes)
{
	*bytes = m->dram.bytes;
	return m->dram.base;
}

int tier_dram_fd(const tier_mgr *m)
{
	return m->dram.fd;
}

uint32_t tier_page_size(const tier_mgr *m)
{
	return m->dram.page_size;
}

uint64_t tier_max_size(const tier_mgr *m)
{
	return m->dram.bytes; /* every file is written into DRAM first */
}

void tier_get_stats(tier_mgr *m, struct tier_stats *st)
{
	uint64_t free_pages = dram_free_pages(&m->dram);

	memset(st, 0, sizeof(*st));
	st->page_size = m->dram.page_size;
	st->dram_capacity = m->dram.bytes;
	st->dram_used = (m->dram.npages - free_pages) * (uint64_t)m->dram.page_size;
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

/* --- object lifetime ---------------------------------------------------- */

static void obj_died(tier_obj *o, uint64_t old_state);

int tier_obj_new(tier_mgr *m, void *owner, uint64_t id, tier_obj **out)
{
	tier_obj *o = calloc(1, sizeof(*o));

	if (!o)
		return -ENOMEM;
	atomic_init(&o->refs, 1);
	atomic_init(&o->state, OBJ_DRAM);
	o->id = id;
	o->mgr = m;
	o->owner = owner;
	pthread_mutex_init(&o->lock, NULL);
	atomic_fetch_add(&m->objects, 1);
	*out = o;
	return 0;
}

void tier_obj_get(tier_obj *o)
{
	atomic_fetch_add(&o->refs, 1);
}

void tier_obj_put(tier_obj *o)
{
	uint64_t old;

	if (!o || atomic_fetch_sub(&o->refs, 1) != 1)
		return;
	/*
	 * Last reference: an owner that never dropped it leaves the bytes to
	 * us. The object is not in the policy lists (they hold a reference).
	 */
	old = atomic_fetch_or(&o->state, OBJ_DEAD);
	if (!(old & OBJ_DEAD))
		obj_died(o, old);
	if (o->ext)
		place_free(o); /* evicted by tier_evict(): kept until now */
	pthread_mutex_destroy(&o->lock);
	free(o->rcache);
	free(o->pages);
	free(o);
}

void *tier_obj_owner(const tier_obj *o)
{
	return o->owner;
}

void tier_obj_set_owner(tier_obj *o, void *owner)
{
	o->owner = owner;
}

uint64_t tier_size(const tier_obj *o)
{
	return __atomic_load_n(&o->size, __ATOMIC_RELAXED);
}

uint64_t tier_dram_bytes(const tier_obj *o)
{
	return (uint64_t)__atomic_load_n(&o->npages, __ATOMIC_RELAXED) * o->mgr->dram.page_size;
}

unsigned tier_where(const tier_obj *o)
{
	uint64_t s = atomic_load(&o->state);

	if (s & OBJ_DEAD)
		return 0;
	return ((s & OBJ_DRAM) ? TIER_DRAM : 0) | ((s & OBJ_NVME) ? TIER_NVME : 0);
}

bool tier_is_sealed(const tier_obj *o)
{
	return atomic_load(&o->state) & OBJ_SEALED;
}

bool tier_is_dead(const tier_obj *o)
{
	return atomic_load(&o->state) & OBJ_DEAD;
}

bool tier_is_pinned(const tier_obj *o)
{
	return atomic_load(&o->state) & OBJ_PINNED;
}

/* Return an object's pages to the arena (it is dead, or demoted and unleased). */
void obj_release_pages(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	uint32_t n = 0;

	pthread_mutex_lock(&o->lock);
	for (uint32_t i = 0; i < o->nslots; i++)
		if (o->pages[i] != TIER_NO_PAGE)
			o->pages[n++] = o->pages[i];
	dram_free(&m->dram, o->pages, n);
	free(o->pages);
	o->pages = NULL;
	o->nslots = 0;
	__atomic_store_n(&o->npages, 0, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&o->lock);
}

/* Bookkeeping shared by every way an object dies; the caller set DEAD. */
static void obj_died(tier_obj *o, uint64_t old_state)
{
	tier_mgr *m = o->mgr;

	if (old_state & OBJ_SEALED)
		atomic_fetch_sub(&m->sealed, 1);
	if (old_state & OBJ_PINNED) {
		atomic_fetch_sub(&m->pinned, 1);
		if (old_state & OBJ_SEALED) /* pinned bytes count sealed objects only */
			atomic_fetch_sub(&m->pinned_bytes, tier_dram_bytes(o));
	}
	if (old_state & OBJ_PENDING)
		atomic_fetch_sub(&m->not_durable, 1); /* nothing left to make durable */
	atomic_fetch_sub(&m->objects, 1);
	obj_release_pages(o);
	if (old_state & OBJ_NVME)
		place_free(o);
}

/* Take @o out of one policy list; drop the list's reference if it had one. */
static void list_remove(struct policy *p, tier_obj *o, struct policy_node *n)
{
	bool linked;

	pthread_mutex_lock(&p->lock);
	linked = n->linked;
	policy_remove_locked(p, n);
	pthread_mutex_unlock(&p->lock);
	if (linked)
		tier_obj_put(o);
}

/* Out of both lists. */
static void policy_forget(tier_obj *o)
{
	list_remove(&o->mgr->policy, o, &o->pn);
	list_remove(&o->mgr->nvme_policy, o, &o->npn);
}

void tier_drop(tier_obj *o)
{
	uint64_t old = atomic_fetch_or(&o->state, OBJ_DEAD);

	if (old & OBJ_DEAD)
		return;
	tier_obj_get(o); /* the lists' reference may be the last one */
	policy_forget(o);
	/*
	 * A leased object keeps its bytes until the last lease goes
	 * (tier_unlease), one being moved until the mover lets go (obj_unclaim).
	 */
	if (!(old & (OBJ_LEASES | OBJ_BUSY)))
		obj_died(o, old);
	tier_obj_put(o);
}

/*
 * Claim @o for a move or an eviction: set OBJ_BUSY if it is sealed, has
 * every bit of @need and none of @forbid (pass OBJ_LEASES to require no
 * lease), and is neither dead nor busy.
 * @return the state with OBJ_BUSY, or 0 if it cannot be claimed.
 */
uint64_t obj_try_claim(tier_obj *o, uint64_t need, uint64_t forbid)
{
	uint64_t s = atomic_load(&o->state);

	while ((s & (need | OBJ_SEALED)) == (need | OBJ_SEALED) &&
	       !(s & (forbid | OBJ_DEAD | OBJ_BUSY)))
		if (atomic_compare_exchange_weak(&o->state, &s, s | OBJ_BUSY))
			return s | OBJ_BUSY;
	return 0;
}

void obj_unclaim(tier_obj *o)
{
	uint64_t old = atomic_fetch_and(&o->state, ~OBJ_BUSY);

	/* dropped while we moved it, and nobody reads it: release it now */
	if ((old & OBJ_DEAD) && !(old & OBJ_LEASES))
		obj_died(o, old & ~OBJ_BUSY);
}

/*
 * Kill claimed objects that are still unleased: they are dead, out of the
 * lists, their bytes released; with @tell_owner the owner's `evicted`
 * callback runs first, once for the batch. A leased one is left alone
 * (unclaimed). @return how many were killed; @v is compacted to them.
 */
static size_t kill_claimed_batch(tier_obj **v, size_t n, bool tell_owner)
{
	uint64_t one, *old = n > 1 ? malloc(n * sizeof(*old)) : &one;
	tier_mgr *m;
	size_t k = 0;

	if (!n)
		return 0;
	if (!old) {
		/* no memory for a batch: one at a time */
		for (size_t i = 0; i < n; i++)
			k += kill_claimed_batch(&v[i], 1, tell_owner);
		return k;
	}
	m = v[0]->mgr;
	for (size_t i = 0; i < n; i++) {
		tier_obj *o = v[i];
		uint64_t s = atomic_load(&o->state);
		bool leased;

		while (!(leased = s & OBJ_LEASES) &&
		       !atomic_compare_exchange_weak(&o->state, &s, (s | OBJ_DEAD) & ~OBJ_BUSY))
			;
		if (leased) {
			obj_unclaim(o);
			continue;
		}
		old[k] = s;
		v[k++] = o;
	}
	if (k && tell_owner && m->cb.evicted)
		m->cb.evicted(m->cb.ctx, v, k);
	for (size_t i = 0; i < k; i++) {
		tier_obj *o = v[i];

		atomic_fetch_add(&m->evictions, 1);
		atomic_fetch_add(&m->evicted_bytes, tier_size(o));
		tier_obj_get(o);
		/*
		 * Told, the owner has deleted the records already. Otherwise it
		 * does so after we return: the NVMe extents stay allocated until
		 * its last reference goes (tier_obj_put), so no new file can be
		 * written over them while the catalog still names them.
		 */
		obj_died(o, tell_owner ? old[i] : old[i] & ~OBJ_NVME);
		policy_forget(o);
		tier_obj_put(o);
	}
	if (old != &one)
		free(old);
	return k;
}

int obj_kill_claimed(tier_obj *o, bool tell_owner)
{
	return kill_claimed_batch(&o, 1, tell_owner) == 1 ? 0 : -EBUSY;
}

/* Could the DRAM eviction path take @o now (demote or kill it)? */
static bool evictable(const tier_obj *o)
{
	uint64_t s = atomic_load(&o->state);

	return (s & OBJ_SEALED) && (s & OBJ_DRAM) &&
	       !(s & (OBJ_DEAD | OBJ_PINNED | OBJ_BUSY | OBJ_LEASES));
}

int tier_evict(tier_obj *o)
{
	uint64_t s = atomic_load(&o->state);

	if (s & OBJ_DEAD)
		return -ENOENT;
	if (s & OBJ_PINNED)
		return -EPERM;
	if (!obj_try_claim(o, 0, OBJ_PINNED | OBJ_LEASES))
		return (atomic_load(&o->state) & OBJ_DEAD) ? -ENOENT : -EBUSY;
	/* the caller removes the name: no callback */
	return obj_kill_claimed(o, false);
}

/* --- making room ---------------------------------------------------------- */

/*
 * Free a claimed victim's DRAM pages by demoting it, if it has (or can be
 * given) an NVMe copy. @return true if it was dealt with (demoted, or lost
 * to a lease), false if it must be evicted.
 */
static bool demote_victim(tier_obj *o, uint32_t *freed)
{
	tier_mgr *m = o->mgr;
	uint32_t pages = __atomic_load_n(&o->npages, __ATOMIC_RELAXED);
	uint64_t s = atomic_load(&o->state);

	if (!(s & OBJ_NVME) && m->nvme && place_store(o, true) == 0)
		s = atomic_load(&o->state);
	if (!(s & OBJ_NVME))
		return false;
	if (place_demote(o) == 0)
		*freed += pages;
	return true;
}

/*
 * Make room for @need pages and allocate them into @ids. Victims are taken
 * in DRAM policy order: each is written to NVMe and its DRAM copy dropped
 * when there is NVMe, or evicted. If even every evictable object could not
 * make room, nothing is touched.
 */
int dram_alloc_pages(tier_mgr *m, uint32_t need, uint32_t *ids)
{
	struct policy *p = &m->policy;

	for (int attempt = 0; attempt < EVICT_RETRIES; attempt++) {
		struct policy_iter it;
		struct policy_node *n;
		tier_obj **victims = NULL;
		size_t nv = 0, cap = 0;
		uint64_t avail, freed = 0, deficit;
		uint32_t free_now;

		if (dram_alloc(&m->dram, need, ids) == 0)
			return 0;

		pthread_mutex_lock(&p->lock);
		free_now = dram_free_pages(&m->dram);
		deficit = need > free_now ? need - free_now : 0;
		avail = 0;
		policy_iter_init(p, &it);
		while (avail < deficit && (n = policy_iter_next(p, &it)))
			if (evictable(container_of(n, tier_obj, pn)))
				avail += __atomic_load_n(&container_of(n, tier_obj, pn)->npages,
							 __ATOMIC_RELAXED);
		if (avail < deficit) {
			pthread_mutex_unlock(&p->lock);
			atomic_fetch_add(&m->enospc, 1);
			return -ENOSPC;
		}
		policy_iter_init(p, &it);
		while (freed < deficit && (n = policy_iter_next(p, &it))) {
			tier_obj *o = container_of(n, tier_obj, pn);

			if (nv == cap) {
				size_t nc = cap ? cap * 2 : 16;
				void *a = realloc(victims, nc * sizeof(*victims));

				if (!a)
					break;
				victims = a;
				cap = nc;
			}
			if (!__atomic_load_n(&o->npages, __ATOMIC_RELAXED) ||
			    !obj_try_claim(o, OBJ_DRAM, OBJ_PINNED | OBJ_LEASES))
				continue;
			tier_obj_get(o); /* ours, while we move it */
			victims[nv++] = o;
			freed += __atomic_load_n(&o->npages, __ATOMIC_RELAXED);
		}
		pthread_mutex_unlock(&p->lock);

		/*
		 * Without the lock: writing to NVMe takes time, eviction calls out.
		 * Victims NVMe cannot take are evicted together, in one callback.
		 * victims[0, nv) keep our references; kill[] lists those to evict.
		 */
		{
			uint32_t got = 0;
			size_t nk = 0;
			tier_obj **kill = malloc((nv ? nv : 1) * sizeof(*kill));

			for (size_t i = 0; i < nv; i++) {
				if (demote_victim(victims[i], &got))
					continue;
				/* Its last copy here: the owner may place it elsewhere first. */
				if (m->cb.spill)
					m->cb.spill(m->cb.ctx, victims[i]);
				if (kill)
					kill[nk++] = victims[i];
				else
					kill_claimed_batch(&victims[i], 1, true);
			}
			kill_claimed_batch(kill, nk, true);
			free(kill);
			for (size_t i = 0; i < nv; i++)
				tier_obj_put(victims[i]);
		}
		free(victims);
		/*
		 * Nothing claimed: pages were freed since our allocation failed
		 * (no deficit), or racing threads claimed or leased every
		 * candidate first; their moves free pages. Try again.
		 */
		if (nv == 0 && deficit)
			sched_yield();
	}
	atomic_fetch_add(&m->enospc, 1);
	return -ENOSPC;
}

/* --- writing ---------------------------------------------------------------- */

static int grow_slots(tier_obj *o, uint64_t nslots)
{
	uint32_t *p;
	uint64_t nc = o->nslots ? o->nslots : 16;

	if (nslots <= o->nslots)
		return 0;
	while (nc < nslots)
		nc *= 2;
	p = realloc(o->pages, nc * sizeof(*p));
	if (!p)
		return -ENOMEM;
	for (uint64_t i = o->nslots; i < nc; i++)
		p[i] = TIER_NO_PAGE;
	o->pages = p;
	o->nslots = (uint32_t)nc;
	return 0;
}

/* tier_write(); with @buf NULL the pages are allocated but not written. */
static int write_range(tier_obj *o, uint64_t off, const void *buf, size_t len)
{
	tier_mgr *m = o->mgr;
	const struct dram_arena *a = &m->dram;
	uint32_t ps = a->page_size, shift = a->page_shift;
	uint32_t stack_ids[64], *ids = stack_ids;
	uint64_t first, last, missing = 0, end = off + len;
	uint64_t s;
	int rc = 0;

	if (len == 0)
		return 0;
	if (end < off || end > a->bytes)
		return -EFBIG;
	first = off >> shift;
	last = (end - 1) >> shift;

	pthread_mutex_lock(&o->lock);
	s = atomic_load(&o->state);
	if (s & (OBJ_DEAD | OBJ_SEALED)) {
		rc = (s & OBJ_DEAD) ? -ENOENT : -EPERM;
		goto out_unlock;
	}
	rc = grow_slots(o, last + 1);
	if (rc)
		goto out_unlock;
	for (uint64_t i = first; i <= last; i++)
		missing += o->pages[i] == TIER_NO_PAGE;
	if (missing > KVFS_ARRAY_SIZE(stack_ids)) {
		ids = malloc(missing * sizeof(*ids));
		if (!ids) {
			rc = -ENOMEM;
			goto out_unlock;
		}
	}
	if (missing) {
		rc = dram_alloc_pages(m, (uint32_t)missing, ids);
		if (rc)
			goto out_free;
	}
	for (uint64_t i = first, k = 0; i <= last; i++) {
		uint64_t pstart = i << shift;
		uint64_t lo = KVFS_MAX(off, pstart) - pstart;
		uint64_t hi = KVFS_MIN(end, pstart + ps) - pstart;
		uint8_t *page;

		if (o->pages[i] == TIER_NO_PAGE) {
			o->pages[i] = ids[k++];
			page = dram_page(a, o->pages[i]);
			/* A recycled page: zero what this write does not cover. */
			if (lo)
				memset(page, 0, lo);
			if (hi < ps)
				memset(page + hi, 0, ps - hi);
		}
		page = dram_page(a, o->pages[i]);
		if (buf)
			memcpy(page + lo, (const uint8_t *)buf + (pstart + lo - off), hi - lo);
	}
	__atomic_store_n(&o->npages, o->npages + (uint32_t)missing, __ATOMIC_RELAXED);
	if (end > o->size)
		__atomic_store_n(&o->size, end, __ATOMIC_RELAXED);
out_free:
	if (ids != stack_ids)
		free(ids);
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
	const struct dram_arena *a = &o->mgr->dram;
	uint32_t ps = a->page_size, shift = a->page_shift;
	uint64_t npages = (size + ps - 1) >> shift;
	int n = 0, rc;

	pthread_mutex_lock(&o->lock);
	rc = o->size || o->npages ? -EINVAL : 0;
	pthread_mutex_unlock(&o->lock);
	if (rc || size == 0)
		return rc;
	rc = write_range(o, 0, NULL, (size_t)size);
	if (rc)
		return rc;
	pthread_mutex_lock(&o->lock);
	for (uint64_t i = 0; i < npages; i++) {
		uint8_t *page = dram_page(a, o->pages[i]);
		size_t k = (size_t)KVFS_MIN((uint64_t)ps, size - (i << shift));

		if (n && (uint8_t *)iov[n - 1].iov_base + iov[n - 1].iov_len == page) {
			iov[n - 1].iov_len += k;
			continue;
		}
		if (n == max) {
			n = -E2BIG;
			break;
		}
		iov[n].iov_base = page;
		iov[n].iov_len = k;
		n++;
	}
	pthread_mutex_unlock(&o->lock);
	return n;
}

int tier_truncate(tier_obj *o, uint64_t size)
{
	tier_mgr *m = o->mgr;
	struct dram_arena *a = &m->dram;
	uint32_t shift = a->page_shift;
	uint64_t keep, s;
	uint32_t freed = 0;
	int rc = 0;

	if (size > a->bytes)
		return -EFBIG;
	pthread_mutex_lock(&o->lock);
	s = atomic_load(&o->state);
	if (s & (OBJ_DEAD | OBJ_SEALED)) {
		rc = (s & OBJ_DEAD) ? -ENOENT : -EPERM;
		goto out_unlock;
	}
	keep = (size + a->page_size - 1) >> shift;
	for (uint64_t i = keep; i < o->nslots; i++) {
		if (o->pages[i] != TIER_NO_PAGE) {
			dram_free(a, &o->pages[i], 1);
			o->pages[i] = TIER_NO_PAGE;
			freed++;
		}
	}
	/* Bytes past the new end in the last page must read as zeros if regrown. */
	if ((size & (a->page_size - 1)) && keep - 1 < o->nslots &&
	    o->pages[keep - 1] != TIER_NO_PAGE) {
		uint64_t in = size & (a->page_size - 1);

		memset(dram_page(a, o->pages[keep - 1]) + in, 0, a->page_size - in);
	}
	__atomic_store_n(&o->npages, o->npages - freed, __ATOMIC_RELAXED);
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
		int st = place_store(o, true);

		if (st && st != -EINVAL) /* -EINVAL: empty, nothing to store */
			place_pending(o);
		obj_unclaim(o);
	}
	pthread_mutex_lock(&m->policy.lock);
	if (!(atomic_load(&o->state) & OBJ_DEAD)) {
		tier_obj_get(o); /* the list's reference */
		policy_insert_locked(&m->policy, &o->pn,
				     __atomic_load_n(&o->npages, __ATOMIC_RELAXED));
	}
	pthread_mutex_unlock(&m->policy.lock);
	return 0;
}

/* --- reading ------------------------------------------------------------- */

ssize_t tier_read(tier_obj *o, uint64_t off, void *buf, size_t len)
{
	const struct dram_arena *a = &o->mgr->dram;
	uint32_t ps = a->page_size, shift = a->page_shift;
	size_t done = 0;
	ssize_t rc;

	pthread_mutex_lock(&o->lock);
	if (atomic_load(&o->state) & OBJ_DEAD) {
		rc = -ENOENT;
		goto out_unlock;
	}
	if (off >= o->size) {
		rc = 0;
		goto out_unlock;
	}
	if (!(atomic_load(&o->state) & OBJ_DRAM)) {
		pthread_mutex_unlock(&o->lock);
		return place_read(o, off, buf, len);
	}
	len = KVFS_MIN(len, o->size - off);
	while (done < len) {
		uint64_t pos = off + done, slot = pos >> shift;
		size_t in = pos & (ps - 1), n = KVFS_MIN(len - done, ps - in);

		if (slot < o->nslots && o->pages[slot] != TIER_NO_PAGE)
			memcpy((uint8_t *)buf + done, dram_page(a, o->pages[slot]) + in, n);
		else
			memset((uint8_t *)buf + done, 0, n);
		done += n;
	}
	rc = (ssize_t)done;
out_unlock:
	pthread_mutex_unlock(&o->lock);
	return rc;
}

int tier_read_iov(tier_obj *o, uint64_t off, size_t len, struct iovec *iov, int max)
{
	tier_mgr *m = o->mgr;
	const struct dram_arena *a = &m->dram;
	uint32_t ps = a->page_size, shift = a->page_shift;
	uint64_t s = atomic_load(&o->state), size = o->size;
	size_t done = 0;
	int n = 0;

	if (s & OBJ_DEAD)
		return -ENOENT;
	if (!(s & OBJ_SEALED))
		return -EINVAL;
	if (!(s & OBJ_DRAM))
		return -ENODATA;
	if (off >= size)
		return 0;
	len = KVFS_MIN(len, size - off);
	while (done < len && n < max) {
		uint64_t pos = off + done, slot = pos >> shift;
		size_t in = pos & (ps - 1), k = KVFS_MIN(len - done, ps - in);
		uint8_t *src;

		if (slot < o->nslots && o->pages[slot] != TIER_NO_PAGE)
			src = dram_page(a, o->pages[slot]) + in;
		else
			src = m->zero_page;
		/* Merge with the previous vector when the pages happen to be adjacent. */
		if (n && (uint8_t *)iov[n - 1].iov_base + iov[n - 1].iov_len == src &&
		    src != m->zero_page) {
			iov[n - 1].iov_len += k;
		} else {
			iov[n].iov_base = src;
			iov[n].iov_len = k;
			n++;
		}
		done += k;
	}
	return n;
}

/* --- leases, hits, pins ---------------------------------------------------- */

int tier_lease(tier_obj *o)
{
	uint64_t s = atomic_load(&o->state);

	do {
		if (s & OBJ_DEAD)
			return -ENOENT;
	} while (!atomic_compare_exchange_weak(&o->state, &s, s + 1));
	return 0;
}

void tier_unlease(tier_obj *o)
{
	uint64_t old = atomic_fetch_sub(&o->state, 1);

	/* The last lease of an object dropped while leased releases its bytes. */
	if ((old & OBJ_LEASES) == 1 && (old & OBJ_DEAD) && !(old & OBJ_BUSY))
		obj_died(o, old - 1);
	else if ((old & OBJ_LEASES) == 1 && o->rcache)
		place_unleased(o);
}

/* A file read this many times from NVMe comes back into DRAM. */
#define PROMOTE_HITS 2

void tier_touch(tier_obj *o)
{
	tier_mgr *m = o->mgr;
	struct policy *p = &m->policy, *np = &m->nvme_policy;
	uint32_t pages = (uint32_t)((tier_size(o) + m->dram.page_size - 1) >> m->dram.page_shift);
	uint32_t hits;

	pthread_mutex_lock(&p->lock);
	if (!(atomic_load(&o->state) & OBJ_DEAD))
		policy_hit_locked(p, &o->pn, pages);
	hits = o->pn.hits;
	pthread_mutex_unlock(&p->lock);
	if (!m->nvme)
		return;
	pthread_mutex_lock(&np->lock);
	if (!(atomic_load(&o->state) & OBJ_DEAD))
		policy_hit_locked(np, &o->npn, pages);
	pthread_mutex_unlock(&np->lock);
	if (hits >= PROMOTE_HITS && !(atomic_load(&o->state) & OBJ_DRAM) &&
	    obj_try_claim(o, OBJ_NVME, OBJ_DRAM)) {
		/* the opener holds a lease: claiming ignores it, promotion copes */
		place_promote(o);
		obj_unclaim(o);
	}
}

int tier_promote(tier_obj *o)
{
	uint64_t s = atomic_load(&o->state);
	int rc;

	if (s & OBJ_DEAD)
		return -ENOENT;
	if (s & OBJ_DRAM)
		return 0;
	if (!obj_try_claim(o, OBJ_NVME, OBJ_DRAM)) {
		s = atomic_load(&o->state);
		return (s & OBJ_DEAD) ? -ENOENT : (s & OBJ_DRAM) ? 0 : -EBUSY;
	}
	rc = place_promote(o); /* lease holders and all: promotion copes */
	obj_unclaim(o);
	if (rc == -EBADMSG)
		rc = -EIO; /* its only copy was bad: it is lost */
	return rc;
}

int tier_pin(tier_obj *o, bool pin)
{
	tier_mgr *m = o->mgr;
	uint64_t s = atomic_load(&o->state), ns, bytes;

	do {
		if (s & OBJ_DEAD)
			return -ENOENT;
		ns = pin ? (s | OBJ_PINNED) : (s & ~OBJ_PINNED);
		if (ns == s)
			return 0;
		/*
		 * Read the size before the swap: a sealed object's pages do not
		 * change while it lives, and if it dies meanwhile the swap fails.
		 */
		bytes = tier_dram_bytes(o);
	} while (!atomic_compare_exchange_weak(&o->state, &s, ns));
	atomic_fetch_add(&m->pinned, pin ? 1 : (uint64_t)-1);
	/* Pinned bytes count sealed objects only; unsealed ones still grow. */
	if (s & OBJ_SEALED)
		atomic_fetch_add(&m->pinned_bytes, pin ? bytes : (uint64_t)-bytes);
	return 0;
}
