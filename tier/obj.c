/*
 * tier/obj.c — the tier object's state machine: lifetime, leases, claims,
 * pins and death. Below tier.c (placement and the DRAM file) and place.c
 * (NVMe): it calls them only through the backends' ops (tier/backend.h),
 * so the dependency runs one way.
 *
 * State word (tier_obj.state, atomic): the lease count in the low 32 bits,
 * then SEALED, PINNED, DEAD, the backends' bits (DRAM, NVME) and BUSY.
 * Leasing, pinning, claiming and the decision to evict are compare-and-swap
 * loops on this word, so an open racing an eviction is decided in one
 * place: either the lease lands first and the object is not evicted, or the
 * object is marked DEAD first and the lease fails (the opener sees a miss).
 * Whoever sets DEAD releases the bytes (obj_died), unless a lease holder or
 * a mover (OBJ_BUSY) still uses them: then the last of those does.
 *
 * Invariants: an object in a policy list holds a reference for it; a dead
 * object holds no bytes in any backend after its last lease and claim.
 *
 * Locking: the state word is lock-free; list_remove takes the policy lock;
 * the backends' release/unused ops take o->lock themselves.
 */
#include <errno.h>
#include <stdlib.h>

#include "tier/tier_i.h"

/* Free what every backend holds of @o (dead; @old_state: its state when it died). */
static void obj_release_all(tier_obj *o, uint64_t old_state)
{
	tier_mgr *m = o->mgr;

	for (unsigned i = 0; i < m->nbackends; i++)
		m->backends[i]->release(o, old_state);
}

/* Nobody leases or moves @o now: the backends close what they kept open. */
static void obj_unused(tier_obj *o)
{
	tier_mgr *m = o->mgr;

	for (unsigned i = 0; i < m->nbackends; i++)
		if (m->backends[i]->unused)
			m->backends[i]->unused(o);
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
	o->fd = -1;
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
	obj_release_all(o, ~(uint64_t)0); /* NVMe extents a tier_evict() kept until now */
	pthread_mutex_destroy(&o->lock);
	free(o->rcache);
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
	return __atomic_load_n(&o->dbytes, __ATOMIC_RELAXED);
}

unsigned tier_where(const tier_obj *o)
{
	const tier_mgr *m = o->mgr;
	unsigned where = 0;

	for (unsigned i = 0; i < m->nbackends; i++)
		if (m->backends[i]->holds(o))
			where |= m->backends[i]->kind;
	return where;
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
	obj_release_all(o, old_state);
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

/* Out of every list. */
static void policy_forget(tier_obj *o)
{
	list_remove(&o->mgr->policy, o, &o->pn);
	list_remove(&o->mgr->nvme_policy, o, &o->npn);
	list_remove(&o->mgr->gpu_policy, o, &o->gpn);
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
	if ((old & OBJ_DEAD) && !(old & OBJ_LEASES)) {
		obj_died(o, old & ~OBJ_BUSY);
	} else if (!(old & OBJ_LEASES)) {
		obj_unused(o);
	}
}

/*
 * Kill claimed objects that are still unleased: they are dead, out of the
 * lists, their bytes released; with @tell_owner the owner's `evicted`
 * callback runs first, once for the batch. A leased one is left alone
 * (unclaimed). @return how many were killed; @v is compacted to them.
 */
size_t obj_kill_claimed_batch(tier_obj **v, size_t n, bool tell_owner)
{
	uint64_t one, *old = n > 1 ? malloc(n * sizeof(*old)) : &one;
	tier_mgr *m;
	size_t k = 0;

	if (!n)
		return 0;
	if (!old) {
		/* no memory for a batch: one at a time */
		for (size_t i = 0; i < n; i++)
			k += obj_kill_claimed_batch(&v[i], 1, tell_owner);
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
	return obj_kill_claimed_batch(&o, 1, tell_owner) == 1 ? 0 : -EBUSY;
}

/* Could the DRAM eviction path take @o now (demote or kill it)? */
bool obj_evictable(const tier_obj *o)
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
	if ((old & OBJ_LEASES) == 1 && (old & OBJ_DEAD) && !(old & OBJ_BUSY)) {
		obj_died(o, old - 1);
	} else if ((old & OBJ_LEASES) == 1) {
		obj_unused(o);
	}
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
		 * Read the size before the swap: a sealed object's file does not
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
