/*
 * tier/backend.c — the two backends of this node, as ops tables
 * (tier/backend.h): DRAM (a file per object, tier/dram.c and the object's
 * file in tier.c) and NVMe (segments and extents, tier/place.c and
 * tier/nvme.c). The functions here only adapt; the work and its locking
 * are where each op points to.
 */
#include <errno.h>
#include <string.h>

#include "tier/tier_i.h"

/* --- DRAM --------------------------------------------------------------------------------- */

static bool dram_holds(const tier_obj *o)
{
	return (atomic_load(&((tier_obj *)o)->state) & (OBJ_DRAM | OBJ_DEAD)) == OBJ_DRAM;
}

/* Into DRAM from a slower copy: a promotion; without @evict only clean room is made. */
static int dram_store(tier_obj *o, bool evict)
{
	return place_promote(o, !evict);
}

static void dram_release(tier_obj *o, uint64_t old_state)
{
	(void)old_state;
	obj_release_pages(o); /* idempotent */
}

static void dram_stats(tier_mgr *m, struct tier_backend_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->name = "dram";
	st->kind = TIER_DRAM;
	st->capacity = m->dram.bytes;
	st->used = atomic_load(&m->dram.used);
	pthread_mutex_lock(&m->policy.lock);
	st->files = m->policy.count;
	pthread_mutex_unlock(&m->policy.lock);
}

const struct tier_backend_ops tier_dram_backend = {
	.name = "dram",
	.kind = TIER_DRAM,
	.holds = dram_holds,
	.store = dram_store,
	.read = obj_dram_read,
	.backing_fd = obj_dram_backing_fd,
	.drop = place_demote,
	.release = dram_release,
	.unused = obj_dram_unused,
	.stats = dram_stats,
	.recover = NULL, /* volatile */
};

/* --- NVMe --------------------------------------------------------------------------------- */

static bool nvme_holds(const tier_obj *o)
{
	return (atomic_load(&((tier_obj *)o)->state) & (OBJ_NVME | OBJ_DEAD)) == OBJ_NVME;
}

/* Extents stay allocated until the record naming them is gone (see obj.c). */
static void nvme_release(tier_obj *o, uint64_t old_state)
{
	if (old_state & OBJ_NVME)
		place_free(o);
}

static void nvme_unused(tier_obj *o)
{
	if (o->rcache)
		place_unleased(o); /* the extent kept for readers */
}

static void nvme_backend_stats(tier_mgr *m, struct tier_backend_stats *st)
{
	struct nvme_stats ns;

	memset(st, 0, sizeof(*st));
	st->name = "nvme";
	st->kind = TIER_NVME;
	if (!m->nvme)
		return;
	nvme_get_stats(m->nvme, &ns);
	st->capacity = ns.capacity;
	st->used = ns.used;
	st->files = atomic_load(&m->nvme_files);
	st->reads = ns.reads;
	st->read_bytes = ns.read_bytes;
	st->writes = ns.writes;
	st->write_bytes = ns.write_bytes;
}

const struct tier_backend_ops tier_nvme_backend = {
	.name = "nvme",
	.kind = TIER_NVME,
	.holds = nvme_holds,
	.store = place_store,
	.read = place_read,
	.backing_fd = NULL, /* extents in segment files: no file of its own */
	.drop = NULL,	    /* the slowest here: its copies are evicted (or spilled) */
	.release = nvme_release,
	.unused = nvme_unused,
	.stats = nvme_backend_stats,
	.recover = place_recover,
};
