/*
 * tier/tier_i.h — private to tier/: the DRAM arena, the eviction policy and
 * the object struct they share. Nothing outside tier/ includes this.
 */
#ifndef KVFS_TIER_I_H
#define KVFS_TIER_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "tier/nvme.h"
#include "tier/tier.h"

#define TIER_NO_PAGE UINT32_MAX

/* --- DRAM arena: one memfd of fixed-size pages --------------------------- */

struct dram_arena {
	int fd;
	uint8_t *base;
	uint64_t bytes;
	uint32_t page_size;
	uint32_t page_shift;
	uint32_t npages;
	pthread_mutex_t lock; /* guards free_stack/nfree */
	uint32_t *free_stack;
	uint32_t nfree;
	pthread_t populate;   /* faults the arena in ahead of use */
	bool populating;
	_Atomic bool stop;
};

int dram_open(struct dram_arena *a, uint64_t bytes, uint32_t page_size, char *err, size_t errlen);
void dram_close(struct dram_arena *a);
/* Take @n pages, all or none. @return 0 or -ENOSPC. */
int dram_alloc(struct dram_arena *a, uint32_t n, uint32_t *ids);
void dram_free(struct dram_arena *a, const uint32_t *ids, uint32_t n);
uint32_t dram_free_pages(struct dram_arena *a);

static inline uint8_t *dram_page(const struct dram_arena *a, uint32_t id)
{
	return a->base + ((uint64_t)id << a->page_shift);
}

/* --- objects ------------------------------------------------------------- */

/* tier_obj.state: lease count in the low 32 bits, flags above. */
#define OBJ_SEALED (1ull << 32)
#define OBJ_PINNED (1ull << 33)
#define OBJ_DEAD   (1ull << 34)
#define OBJ_DRAM   (1ull << 35) /* its bytes are in DRAM pages */
#define OBJ_NVME   (1ull << 36) /* a complete copy is on NVMe (ext) */
#define OBJ_BUSY   (1ull << 37) /* one thread is moving it between tiers */
#define OBJ_LOST   (1ull << 38) /* its only copy failed: dropped and counted once */
#define OBJ_PENDING (1ull << 39) /* must be made durable and is not: retried (not_durable) */
#define OBJ_LEASES 0xffffffffull

struct policy_node {
	struct policy_node *prev, *next;
	uint64_t stamp; /* policy clock at the last access */
	uint32_t hits;
	uint8_t cls;
	bool linked;
};

struct tier_obj {
	_Atomic uint64_t state;
	_Atomic uint32_t refs;
	tier_mgr *mgr;
	void *owner;

	uint64_t id;          /* the owner's id: key of the tier's catalog records */

	pthread_mutex_t lock; /* guards the fields below while unsealed, and moves */
	uint64_t size;
	uint32_t nslots;   /* capacity of pages[] */
	uint32_t npages;   /* allocated pages (not holes) */
	uint32_t *pages;   /* page id per page-sized slot, TIER_NO_PAGE = hole */
	struct nvme_extent *ext; /* the NVMe copy while OBJ_NVME */
	unsigned next;
	uint8_t *rcache;  /* the NVMe extent read last (reads in smaller pieces reuse
			   * it), freed when the last lease goes */
	int rcache_ext;   /* which one, -1 for none */

	struct policy_node pn;  /* DRAM policy: sealed and in DRAM (its lock) */
	struct policy_node npn; /* NVMe policy: has an NVMe copy (its lock) */
};

/* --- eviction policy ------------------------------------------------------ */

#define POLICY_MAX_CLASSES 6

/*
 * Multi-queue recency/frequency policy. Objects sit in LRU lists by class
 * (class = floor(log2(hits)), capped); an object's priority is its last
 * access stamp plus weight * capacity * class, and the victim is the
 * lowest-priority head over all lists. One class is plain LRU.
 */
struct policy {
	const char *name;
	pthread_mutex_t lock;
	unsigned nclasses;
	uint64_t bonus; /* priority added per class, in clock units (pages) */
	uint64_t clock; /* advances by an object's pages at each access */
	struct policy_node heads[POLICY_MAX_CLASSES]; /* circular list sentinels */
};

int policy_init(struct policy *p, const char *name, uint64_t capacity_pages);
void policy_destroy(struct policy *p);
/* The following take the policy lock themselves unless named _locked. */
void policy_insert_locked(struct policy *p, struct policy_node *n, uint32_t pages);
void policy_hit_locked(struct policy *p, struct policy_node *n, uint32_t pages);
void policy_remove_locked(struct policy *p, struct policy_node *n);

/* Iterate in eviction order (least valuable first), under the lock. */
struct policy_iter {
	struct policy_node *cur[POLICY_MAX_CLASSES];
};
void policy_iter_init(struct policy *p, struct policy_iter *it);
struct policy_node *policy_iter_next(struct policy *p, struct policy_iter *it);

/* --- the manager ---------------------------------------------------------- */

struct nvme_rec {
	uint64_t id;
	struct nvme_extent *ext;
	unsigned n;
	bool claimed;
};

struct tier_mgr {
	struct dram_arena dram;
	struct policy policy;      /* objects in DRAM */
	struct policy nvme_policy; /* objects with an NVMe copy */
	struct tier_callbacks cb;
	uint8_t *zero_page;        /* page-aligned (O_DIRECT writes of holes) */

	struct nvme_store *nvme;   /* NULL: DRAM only */
	uint32_t nvme_extent_pages;
	struct cat *cat;
	bool persist_through;
	struct nvme_rec *recs;     /* recovery: records scanned at start */
	size_t nrecs;

	_Atomic uint64_t demotions, promotions, nvme_write_errors, nvme_read_errors;
	_Atomic uint64_t nvme_evictions, lost, nvme_files;
	_Atomic uint64_t persist_failed, not_durable, cat_errors;

	_Atomic uint64_t objects;
	_Atomic uint64_t sealed;
	_Atomic uint64_t pinned;
	_Atomic uint64_t pinned_bytes;
	_Atomic uint64_t evictions;
	_Atomic uint64_t evicted_bytes;
	_Atomic uint64_t enospc;
};

/* --- tier.c internals place.c uses ---------------------------------------- */

uint64_t obj_try_claim(tier_obj *o, uint64_t need, uint64_t forbid);
void obj_unclaim(tier_obj *o);
/* Kill a claimed object unless leased (then -EBUSY, unclaimed); see tier.c. */
int obj_kill_claimed(tier_obj *o, bool tell_owner);
void obj_release_pages(tier_obj *o);
int dram_alloc_pages(tier_mgr *m, uint32_t need, uint32_t *ids);

/* --- place.c: moving bytes between DRAM and NVMe ----------------------------- */

/*
 * Write a sealed object in DRAM to NVMe and record it (the caller claimed
 * it with OBJ_BUSY). Makes room on NVMe by evicting if @evict.
 * @return 0; -ENOSPC; -EIO (it stays in DRAM only, counted).
 */
int place_store(tier_obj *o, bool evict);
/* Drop the DRAM copy of a claimed object that has an NVMe copy. @return 0 or -EBUSY. */
int place_demote(tier_obj *o);
/* Bring a claimed NVMe-only object into DRAM. @return 0 or -errno. */
int place_promote(tier_obj *o);
/* Read [off, off + len) of an object from its NVMe copy. */
ssize_t place_read(tier_obj *o, uint64_t off, void *buf, size_t len);
/* Free an object's NVMe copy (it died). */
void place_free(tier_obj *o);
/* The last lease of @o went. */
void place_unleased(tier_obj *o);
/* A store that had to succeed failed: @o is counted not durable until one does. */
void place_pending(tier_obj *o);

#endif
