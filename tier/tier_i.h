/*
 * tier/tier_i.h — private to tier/: the DRAM store, the eviction policy, the
 * object struct and the state machine they share. Nothing outside tier/
 * includes this (backends built on tier/ include tier/backend.h).
 */
#ifndef KVFS_TIER_I_H
#define KVFS_TIER_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "tier/backend.h"
#include "tier/nvme.h"
#include "tier/tier.h"

/* --- DRAM store: one file per object (dram.c) --------------------------- */

/* The unit DRAM is accounted in: the page of the tmpfs holding the files. */
#define DRAM_UNIT 4096u

struct dram_store {
	int dirfd;	       /* root of the private tmpfs; -1: memfds */
	uint64_t bytes;	       /* the budget */
	_Atomic uint64_t used; /* bytes reserved by objects */
	_Atomic uint64_t next_name;
};

/* @return 0; -EINVAL (size); the injected arena fault. */
int dram_open(struct dram_store *d, uint64_t bytes, bool memfd, char *err, size_t errlen);
void dram_close(struct dram_store *d);
/* Take @n bytes of the budget, all or none. @return 0 or -ENOSPC. */
int dram_reserve(struct dram_store *d, uint64_t n);
void dram_unreserve(struct dram_store *d, uint64_t n);
uint64_t dram_free_bytes(struct dram_store *d);
/* A new empty file; its name in *@name. @return an O_RDWR fd or -errno. */
int dram_create(struct dram_store *d, uint64_t *name);
/* Open the file @name again. @return an fd; -EBADF for memfds; -errno. */
int dram_reopen(struct dram_store *d, uint64_t name, int flags);
/* Remove the file @name (open descriptors and mappings keep it alive). */
void dram_remove(struct dram_store *d, uint64_t name);

static inline uint64_t dram_round(uint64_t n)
{
	return (n + DRAM_UNIT - 1) & ~(uint64_t)(DRAM_UNIT - 1);
}

/* --- objects ------------------------------------------------------------- */

/* tier_obj.state: lease count in the low 32 bits, flags above. */
#define OBJ_SEALED (1ull << 32)
#define OBJ_PINNED (1ull << 33)
#define OBJ_DEAD   (1ull << 34)
#define OBJ_DRAM   (1ull << 35) /* its bytes are in its DRAM file */
#define OBJ_NVME   (1ull << 36) /* a complete copy is on NVMe (ext) */
#define OBJ_BUSY   (1ull << 37) /* one thread is moving it between tiers */
#define OBJ_LOST   (1ull << 38) /* its only copy failed: dropped and counted once */
#define OBJ_PENDING (1ull << 39) /* must be made durable and is not: retried (not_durable) */
#define OBJ_GPU    (1ull << 40) /* a complete copy is in a GPU pool (gblk) */
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

	uint64_t id; /* the owner's id: key of the tier's catalog records */

	pthread_mutex_t lock; /* guards the fields below while unsealed, and moves */
	uint64_t size;
	uint64_t dbytes; /* DRAM reserved for its file (size rounded up) */
	uint64_t fname;	 /* its file's name in the DRAM store, 0 = none */
	int fd;		 /* open while unsealed, mapped or a memfd; else -1 */
	uint8_t *map;	 /* mapping of the file while leased (tier_read_iov) */
	size_t maplen;
	struct nvme_extent *ext; /* the NVMe copy while OBJ_NVME */
	unsigned next;
	uint8_t *rcache; /* the NVMe extent read last (reads in smaller pieces reuse
			  * it), freed when the last lease goes */
	int rcache_ext;	 /* which one, -1 for none */

	struct policy_node pn;	/* DRAM policy: sealed and in DRAM (its lock) */
	struct policy_node npn; /* NVMe policy: has an NVMe copy (its lock) */
	struct policy_node gpn; /* GPU policy: has a pool copy (its lock) */
	uint32_t *gblk;		/* its pool blocks while OBJ_GPU (gpu.c) */
	uint32_t ngblk;
	int gslot; /* which pool (tier_mgr.gpu[]) */
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
	uint64_t bonus; /* priority added per class, in clock units (bytes) */
	uint64_t clock; /* advances by an object's bytes at each access */
	uint64_t count; /* objects linked */
	struct policy_node heads[POLICY_MAX_CLASSES]; /* circular list sentinels */
};

int policy_init(struct policy *p, const char *name, uint64_t capacity);
void policy_destroy(struct policy *p);
/* The following take the policy lock themselves unless named _locked. */
void policy_insert_locked(struct policy *p, struct policy_node *n, uint64_t bytes);
void policy_hit_locked(struct policy *p, struct policy_node *n, uint64_t bytes);
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

/* One attached GPU pool (gpu.c): its device, blocks, stream and figures. */
#define TIER_MAX_GPUS 8
struct tier_gpu_slot {
	struct gpu_dev *dev;
	struct gpu_pool *pool;
	struct gpu_stream *stream; /* under lock */
	pthread_mutex_t lock;
	uint64_t block_bytes, capacity;
	_Atomic uint64_t used, files, stores, promotions, store_bytes, d2d_loads, d2d_bytes;
	_Atomic uint64_t d2h_bytes, writedowns, drops, evictions, copy_errors;
};

struct tier_mgr {
	/* the backends, fastest first (tier/backend.h): GPU if attached, DRAM, then NVMe if any */
	const struct tier_backend_ops *backends[TIER_MAX_BACKENDS];
	unsigned nbackends;
	unsigned dram_at;	   /* DRAM's index in backends[] */
	struct tier_gpu_slot gpu[TIER_MAX_GPUS];
	unsigned ngpu;
	struct policy gpu_policy; /* objects with a pool copy */
	struct dram_store dram;
	uint32_t page_size;	   /* the NVMe allocation unit */
	struct policy policy;	   /* objects in DRAM */
	struct policy nvme_policy; /* objects with an NVMe copy */
	struct tier_callbacks cb;

	struct nvme_store *nvme; /* NULL: DRAM only */
	uint32_t nvme_extent_pages;
	struct cat *cat;
	bool persist_through;
	struct nvme_rec *recs; /* recovery: records scanned at start */
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

/* --- obj.c: the object state machine ---------------------------------------- */

/*
 * Claim @o for a move or an eviction: set OBJ_BUSY if it is sealed, has
 * every bit of @need and none of @forbid (pass OBJ_LEASES to require no
 * lease), and is neither dead nor busy.
 * @return the state with OBJ_BUSY, or 0 if it cannot be claimed.
 */
uint64_t obj_try_claim(tier_obj *o, uint64_t need, uint64_t forbid);
void obj_unclaim(tier_obj *o);
/* Kill a claimed object unless leased (then -EBUSY, unclaimed). */
int obj_kill_claimed(tier_obj *o, bool tell_owner);
/*
 * Kill claimed objects that are still unleased: dead, out of the lists,
 * their bytes released; with @tell_owner the owner's `evicted` callback
 * runs first, once for the batch. @return how many; @v compacted to them.
 */
size_t obj_kill_claimed_batch(tier_obj **v, size_t n, bool tell_owner);
/* Could the DRAM eviction path take @o now (demote or kill it)? */
bool obj_evictable(const tier_obj *o);

/* --- tier.c internals the backends use ----------------------------------------- */

/* The DRAM file is no longer used by a lease holder or mover: close it. */
void obj_dram_unused(tier_obj *o);
void obj_release_pages(tier_obj *o);
/*
 * Reserve @need bytes of DRAM, making room by demotion or eviction; with
 * @clean only by dropping DRAM copies that NVMe holds already (no NVMe
 * write, no eviction).
 */
int dram_make_room(tier_mgr *m, uint64_t need, bool clean);
/* Copy bytes of an object in DRAM (takes o->lock). @return bytes or -errno. */
ssize_t obj_dram_read(tier_obj *o, uint64_t off, void *buf, size_t len);
/*
 * Give claimed @o, which has no DRAM copy, a new DRAM file filled by @fill
 * (its whole size, from offset 0), making room as dram_make_room(@clean),
 * then set OBJ_DRAM and list it. @return 0; -ENOSPC; @fill's error.
 */
int obj_dram_fill(tier_obj *o, bool clean,
		  int (*fill)(tier_obj *o, uint64_t off, void *buf, uint64_t len));
/* A new read-only descriptor of its DRAM file. @return fd; -ENODATA; -errno. */
int obj_dram_backing_fd(tier_obj *o);
/* Close the object's descriptor and mapping unless they must stay (o->lock held). */
void obj_file_idle_locked(tier_obj *o);
/* Map the whole file read-only for a lease holder (o->lock held). @return 0 or -errno. */
int obj_map_locked(tier_obj *o);

/* --- gpu.c: the GPU backend --------------------------------------------------- */

/* Write claimed, GPU-only @o down into DRAM (as obj_dram_fill). */
int gpu_writedown(tier_obj *o, bool clean);
/* At shutdown (tier_flush): write GPU-only files down and onto NVMe. @return how many. */
size_t gpu_flush(tier_mgr *m);

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
int place_promote(tier_obj *o, bool clean);
/* Read [off, off + len) of an object from its NVMe copy. */
ssize_t place_read(tier_obj *o, uint64_t off, void *buf, size_t len);
/* Free an object's NVMe copy (it died). */
void place_free(tier_obj *o);
/* The last lease of @o went. */
void place_unleased(tier_obj *o);
/* A store that had to succeed failed: @o is counted not durable until one does. */
void place_pending(tier_obj *o);
/* The NVMe backend's recover op (tier_recover() asks every backend). */
int place_recover(tier_mgr *m, uint64_t id, uint64_t size, uint32_t hits, void *owner,
		  tier_obj **out);

#endif
