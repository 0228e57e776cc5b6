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

	pthread_mutex_t lock; /* guards the fields below while unsealed */
	uint64_t size;
	uint32_t nslots;   /* capacity of pages[] */
	uint32_t npages;   /* allocated pages (not holes) */
	uint32_t *pages;   /* page id per page-sized slot, TIER_NO_PAGE = hole */

	struct policy_node pn; /* guarded by the policy lock */
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

struct tier_mgr {
	struct dram_arena dram;
	struct policy policy;
	struct tier_callbacks cb;
	uint8_t *zero_page;

	_Atomic uint64_t objects;
	_Atomic uint64_t sealed;
	_Atomic uint64_t pinned;
	_Atomic uint64_t pinned_bytes;
	_Atomic uint64_t evictions;
	_Atomic uint64_t evicted_bytes;
	_Atomic uint64_t enospc;
};

#endif
