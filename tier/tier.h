/*
 * tier/tier.h — the tier manager: where a file's bytes live, and what is
 * evicted when the tiers are full.
 *
 * A tier object holds the bytes of one file. Its owner (the filesystem)
 * creates it, writes it, seals it, and leases it while it is open; the tier
 * manager places the bytes and moves them:
 *
 *   - new files are written into the DRAM store: each object's bytes are a
 *     file of its own, contiguous from 0, in a private tmpfs (tier/dram.c),
 *     so a sealed file can be handed to the kernel for passthrough reads
 *     (tier_backing_fd());
 *   - with NVMe, a sealed file is written to NVMe when DRAM must make room
 *     (persist "back", the default) or as soon as it is sealed ("through"),
 *     and its DRAM file is then dropped; a file read from NVMe often
 *     enough is promoted back into DRAM;
 *   - when the last tier must make room, sealed objects that are not
 *     leased and not pinned are evicted, least valuable first, and handed
 *     to the owner's `evicted` callback so the owner can forget the name;
 *     the same happens to a file whose only copy fails its checksum.
 *
 * Durability on demand: tier_persist() puts a sealed object on NVMe now
 * (fsync); a store that had to succeed and failed is counted and retried.
 *
 * Persistence: the tier keeps its own catalog records (NVMe extents, under
 * CAT_NS_NVME, keyed by the owner's id) and writes them only after the data
 * they point to is on the device. The owner deletes them with its own
 * records (tier_forget_record()).
 *
 * Lifetime: an object is reference counted. tier_obj_new() returns one
 * reference for the owner; tier_obj_put() drops it. The bytes are released
 * when the object dies (eviction or tier_drop()), the struct when the last
 * reference goes.
 *
 * Threads: every function may be called from any thread. The owner must not
 * hold any lock that its `evicted` callback takes while calling tier_write()
 * or tier_truncate(), which may evict synchronously.
 *
 * All functions return 0 or a negative errno unless stated otherwise.
 */
#ifndef KVFS_TIER_H
#define KVFS_TIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct cat;
struct cat_batch;
typedef struct tier_mgr tier_mgr;
typedef struct tier_obj tier_obj;

/* Where bytes can be, as a bit mask (user.kvfs.tier prints the names). */
enum tier_kind {
	TIER_GPU = 1u << 0,
	TIER_DRAM = 1u << 1,
	TIER_NVME = 1u << 2,
	TIER_REMOTE = 1u << 3,
};

struct tier_nvme_dev {
	const char *dir;
	uint64_t bytes;
};

struct tier_config {
	uint64_t dram_bytes; /* DRAM budget in bytes (rounded down to 4 KiB) */
	uint32_t page_size;  /* NVMe allocation unit: power of two, 4 KiB .. 16 MiB; 0 = 64 KiB */
	const char *policy;  /* "mq" (default) or "lru" */
	const struct tier_nvme_dev *nvme; /* NVMe devices (striped), or NULL */
	unsigned nvme_count;
	bool persist_through; /* write every sealed file to NVMe at once */
	bool dram_memfd;      /* one memfd per object instead of the private tmpfs (what a
			       * daemon without CAP_SYS_ADMIN gets; tests select it) */
	struct cat *cat;      /* where tier records go (required with NVMe) */
};

struct tier_callbacks {
	/*
	 * The tier has chosen @objs for eviction and marked them dead (no new
	 * lease can succeed). The owner forgets them and drops its references.
	 * Called with no tier lock held, from the thread that needed room.
	 */
	void (*evicted)(void *ctx, tier_obj *const *objs, size_t n);
	/*
	 * Optional. @o is about to be evicted and no other tier here holds it:
	 * the owner may copy it elsewhere (a peer) first. Its bytes stay in
	 * place during the call: in DRAM (tier_read works on it) or, for an
	 * NVMe victim, on NVMe (tier_read works; tier_read_iov says -ENODATA).
	 * No lease is needed or possible. Called with no tier lock held, from
	 * the thread that needed room; it may block, briefly. Eviction follows
	 * regardless.
	 */
	void (*spill)(void *ctx, tier_obj *o);
	/*
	 * Optional. The fastest tier holding @o changed: demoted to NVMe, or
	 * promoted into DRAM (tier_where says which). Called with no tier lock
	 * held, from the thread that moved it.
	 */
	void (*moved)(void *ctx, tier_obj *o);
	void *ctx;
};

/* One backend's figures (tier_stats.backend[], fastest first). */
#define TIER_MAX_BACKENDS 4
struct tier_backend_stats {
	const char *name;	 /* "gpu", "dram", "nvme" */
	unsigned kind;		 /* enum tier_kind */
	uint64_t capacity, used; /* bytes */
	uint64_t files;		 /* objects with a complete copy here */
	uint64_t reads, read_bytes, writes, write_bytes;
};

struct tier_stats {
	unsigned nbackends;
	struct tier_backend_stats backend[TIER_MAX_BACKENDS]; /* fastest first */
	/* the same figures by name, as documented for .kvfs/stats: */
	uint64_t nvme_capacity; /* 0 without NVMe */
	uint64_t nvme_used;
	uint64_t nvme_files;    /* objects with an NVMe copy */
	uint64_t nvme_reads, nvme_read_bytes, nvme_writes, nvme_write_bytes;
	uint64_t nvme_write_errors; /* files that stayed in DRAM only */
	uint64_t nvme_read_errors;  /* I/O errors and checksum mismatches */
	uint64_t nvme_csum_errors;
	uint64_t nvme_evictions;    /* NVMe copies dropped to make room */
	uint64_t demotions;         /* DRAM copies dropped after writing NVMe */
	uint64_t promotions;        /* NVMe files brought back into DRAM */
	uint64_t lost;              /* files dropped: their only copy failed */
	uint64_t persist_failed;    /* files whose write-through or fsync store failed */
	uint64_t not_durable;       /* of which still without an NVMe copy (retried) */
	uint64_t cat_errors;        /* tier record commits that failed */
	bool nvme_full;             /* the segment filesystem said ENOSPC */
	uint64_t page_size;
	uint64_t dram_capacity; /* bytes */
	uint64_t dram_used;     /* bytes of the objects' files (4 KiB pages) */
	uint64_t dram_pinned;   /* bytes of pinned objects */
	uint64_t objects;       /* live objects */
	uint64_t sealed;        /* of which sealed */
	uint64_t pinned;        /* of which pinned */
	uint64_t evictions;     /* objects evicted */
	uint64_t evicted_bytes;
	uint64_t enospc;        /* writes refused: nothing evictable */
	const char *policy;
};

/*
 * Create the tier manager and its DRAM store (a private tmpfs; without
 * CAP_SYS_ADMIN one memfd per object, see tier_dram_private()).
 * @return 0; -EINVAL for a bad size, page size or policy name (with a
 * one-line reason in @err); -ENOMEM; the injected arena fault.
 */
int tier_open(const struct tier_config *cfg, const struct tier_callbacks *cb, tier_mgr **out,
	      char *err, size_t errlen);

/* Release everything. Every object must be dead or unreferenced by now. */
void tier_close(tier_mgr *m);

/*
 * Clean shutdown: write every sealed file that is only in DRAM, or only in
 * a GPU pool (written down into DRAM first), to NVMe (as far as its free
 * space goes, evicting nothing on NVMe), record it, and sync, so a planned
 * restart loses nothing. A no-op without NVMe.
 */
void tier_flush(tier_mgr *m);

/*
 * Durability. tier_persist() makes a sealed object durable now: it writes
 * the object to NVMe if it has no copy there (making room on NVMe as an
 * eviction would) and commits its record; tier_sync() then flushes the
 * devices, so one sync covers many objects. A store that fails leaves the
 * object in DRAM only, counted (persist_failed once, not_durable until a
 * store succeeds) and retried by tier_retry_persist(); so is a sealed
 * object that --persist through could not write.
 * tier_persist: @return 0 (on NVMe, or empty: an empty object needs no
 * copy); -EOPNOTSUPP without a persistent tier; -EINVAL if not sealed;
 * -ENOENT if dead; -EBUSY if another thread kept it moving for seconds;
 * -ENOSPC if NVMe has no room; -EIO (device or catalog error).
 * tier_sync: @return 0, -EIO.
 * tier_retry_persist: store the objects counted not durable (call with no
 * lock held: it may evict). @return how many are still not durable.
 */
int tier_persist(tier_obj *o);
int tier_sync(tier_mgr *m);
uint64_t tier_retry_persist(tier_mgr *m);

/* Add to @b the deletion of the tier records of object @id (the owner deletes the file). */
void tier_forget_record(struct cat_batch *b, uint64_t id);

/*
 * Recovery at start, between tier_recover_begin() and tier_recover_end():
 * tier_recover() gives the object of @id back if a persistent tier holds
 * all @size bytes of it (sealed, not in DRAM), reserving its space; an
 * empty object comes back whenever there is a persistent tier.
 * tier_recover_end() deletes the records nobody claimed into @b.
 * @return 0; -ENOENT if no persistent copy exists (the owner drops the
 * file); -EUCLEAN if the record is damaged (extents overlapping others or
 * outside a device, or not adding up to @size: it is deleted into @b).
 */
int tier_recover_begin(tier_mgr *m);

/* What tier_fsck() found. */
struct tier_fsck {
	uint64_t records;     /* NVMe records examined */
	uint64_t extents;
	uint64_t bytes;
	uint64_t undecodable; /* records that do not parse */
	uint64_t orphans;     /* records of ids that name no file */
	uint64_t size_mismatch; /* extents not adding up to the file's size */
	uint64_t overlaps;    /* extents outside a device or on pages another holds */
	uint64_t bad_checksums; /* extents whose bytes fail their checksum (with verify) */
	uint64_t read_errors;
};

/*
 * Offline check of the NVMe records in @c against the segments of
 * @cfg->nvme (the daemon must not be running): every record must decode,
 * belong to a file (@size_of returns its size, or -1 if @id is no file),
 * add up to its size, and reserve without overlapping; with @verify every
 * extent is read and its checksum checked. The deletions that would repair
 * the catalog go into @fix (the caller commits them or not), and @bad is
 * called for every file whose record is bad (the file cannot come back).
 * @return 0 (problems are in @rep); -errno if the segments cannot be opened.
 */
int tier_fsck(const struct tier_config *cfg, struct cat *c, int64_t (*size_of)(void *, uint64_t),
	      void (*bad)(void *, uint64_t), void *ctx, bool verify, struct cat_batch *fix,
	      struct tier_fsck *rep, char *err, size_t errlen);
int tier_recover(tier_mgr *m, uint64_t id, uint64_t size, uint32_t hits, void *owner,
		 tier_obj **out);
void tier_recover_end(tier_mgr *m, struct cat_batch *b);

/* The NVMe allocation unit (tier_config.page_size). */
uint32_t tier_page_size(const tier_mgr *m);
/* True when DRAM files live in the private tmpfs (false: memfds). */
bool tier_dram_private(const tier_mgr *m);
/* Largest object size the tiers could ever hold. */
uint64_t tier_max_size(const tier_mgr *m);

void tier_get_stats(tier_mgr *m, struct tier_stats *st);

/* --- objects ---------------------------------------------------------- */

/*
 * A new, empty, writable object. @owner is the owner's cookie, @id its
 * stable id (the key of the object's tier records). @return 0, -ENOMEM.
 */
int tier_obj_new(tier_mgr *m, void *owner, uint64_t id, tier_obj **out);
void tier_obj_get(tier_obj *o);
void tier_obj_put(tier_obj *o);

/* The owner's cookie (read and set under the owner's own locking). */
void *tier_obj_owner(const tier_obj *o);
void tier_obj_set_owner(tier_obj *o, void *owner);

uint64_t tier_size(const tier_obj *o);
/* Bytes of DRAM the object's file occupies (its allocated 4 KiB pages of the tmpfs). */
uint64_t tier_dram_bytes(const tier_obj *o);
/* Mask of enum tier_kind of the backends holding the bytes; 0 once dead. */
unsigned tier_where(const tier_obj *o);
bool tier_is_sealed(const tier_obj *o);
bool tier_is_dead(const tier_obj *o);
bool tier_is_pinned(const tier_obj *o);

/*
 * Write @len bytes at @off of an unsealed object, reserving the 4 KiB
 * pages of its file that the write adds (holes cost nothing) and evicting
 * other objects as needed. A failed write changes nothing.
 * @return 0; -EPERM if sealed; -EFBIG if @off + @len exceeds
 * tier_max_size(); -ENOSPC if no room can be made; -ENOENT if dead.
 */
int tier_write(tier_obj *o, uint64_t off, const void *buf, size_t len);

/*
 * Give an empty, unsealed object @size bytes of DRAM (evicting as
 * tier_write() does) and describe them in @iov: one iovec, a mapping of
 * its file, for a writer that fills it itself (a transfer straight into
 * DRAM). It reads as zeros until written. The mapping stays valid until
 * the object is sealed and unleased, or dies.
 * @return 1; 0 for @size 0; -EINVAL if not empty; -E2BIG if @max < 1;
 * tier_write()'s errors.
 */
int tier_write_iov(tier_obj *o, uint64_t size, struct iovec *iov, int max);

/*
 * Set the size of an unsealed object; shrinking frees DRAM, growing leaves
 * a hole that reads as zeros and costs nothing.
 * @return 0; -EPERM if sealed; -EFBIG; -ENOENT if dead.
 */
int tier_truncate(tier_obj *o, uint64_t size);

/*
 * No more writes; the object becomes a candidate for eviction. With
 * persist-through it is on NVMe (if NVMe could take it: else it is counted
 * not durable and retried, see tier_persist) before this returns.
 * @return 0, -ENOENT.
 */
int tier_seal(tier_obj *o);

/*
 * Copy up to @len bytes at @off into @buf (any object state), from DRAM or,
 * for a sealed object only on NVMe, from NVMe with every extent's checksum
 * checked.
 * @return bytes copied (0 at or past the end); -ENOENT if dead; -EIO if
 * its only copy failed (the object is then dropped and the owner told).
 */
ssize_t tier_read(tier_obj *o, uint64_t off, void *buf, size_t len);

/*
 * Zero-copy view of up to @len bytes at @off of a sealed, leased object in
 * DRAM: one iovec into a mapping of its file (@max is at least 1). The
 * memory stays valid while the lease is held.
 * @return the number of iovecs (0 at the end); -EINVAL if not sealed;
 * -ENODATA if the bytes are not in DRAM (use tier_read()); -ENOENT if dead;
 * the errno of open/mmap.
 */
int tier_read_iov(tier_obj *o, uint64_t off, size_t len, struct iovec *iov, int max);

/*
 * A new read-only descriptor of the DRAM file of a sealed, leased object,
 * for FUSE passthrough (the caller closes it; the kernel may keep the file
 * open after that: the bytes stay until it lets go, even past eviction).
 * @return the fd; -EINVAL if not sealed or not leased; -ENODATA if its
 * bytes are not in DRAM (or it is empty); -ENOENT if dead; -errno of open.
 */
int tier_backing_fd(tier_obj *o);

/*
 * Lease: the object cannot be evicted until tier_unlease().
 * @return 0; -ENOENT if it is dead (evicted or dropped).
 */
int tier_lease(tier_obj *o);
void tier_unlease(tier_obj *o);

/*
 * Re-read the object's NVMe copy and check every checksum (the caller holds
 * a lease). A bad copy is dropped; if it was the only one the object is
 * lost and the owner told. @return 0; -EBADMSG (bad NVMe copy dropped, the
 * DRAM copy remains); -EIO (the file is lost).
 */
int tier_verify(tier_obj *o);

/*
 * Record an access (an open that found the file) for the eviction policy;
 * a file only on NVMe that is hot is promoted into DRAM, synchronously
 * (call it with no lock held: it may evict).
 */
void tier_touch(tier_obj *o);

/*
 * Bring a sealed object whose bytes are only on NVMe into DRAM now, for a
 * reader that needs its pages (tier_read_iov: a peer's one-sided reads).
 * The caller holds a lease, which then keeps it there, and no lock (it may
 * evict). @return 0 when its bytes are in DRAM; -EBUSY if another thread is
 * moving it; -ENOSPC if DRAM cannot make room; -EIO if the NVMe copy failed
 * (the file is lost, the owner told); -ENOENT if dead.
 */
int tier_promote(tier_obj *o);

/*
 * tier_promote(), making room in DRAM only by dropping DRAM copies that
 * NVMe holds already: it writes nothing to NVMe and evicts nothing (a
 * passthrough open brings a file in this way; it must not cost another
 * file its only copy). @return tier_promote()'s values; -ENOSPC also when
 * only a demotion or an eviction could make room.
 */
int tier_promote_clean(tier_obj *o);

/* Pin or unpin: a pinned object is never evicted. @return 0, -ENOENT if dead. */
int tier_pin(tier_obj *o, bool pin);

/*
 * Drop the object (the owner deleted the file): it is dead at once (no new
 * lease, reads fail with -ENOENT); its bytes are released now, or by the
 * last tier_unlease() if it is leased, so memory a lease holder was handed
 * stays valid. Idempotent; a no-op on an object already dead.
 */
void tier_drop(tier_obj *o);

/*
 * Evict the object now, as the eviction policy would (an operator's
 * request). It must be sealed and unleased; pinned objects are refused.
 * The owner's `evicted` callback is NOT called: the caller removes the name
 * and the catalog records, and only then lets go of its reference; the
 * object's NVMe extents stay allocated until the last reference goes, so
 * the catalog never names extents another file was given.
 * @return 0; -EBUSY if leased or not sealed; -EPERM if pinned; -ENOENT if dead.
 */
int tier_evict(tier_obj *o);

/* --- the GPU backend (tier/gpu.c, DESIGN §10) ------------------------------------ */

struct gpu_dev;
struct gpu_pool;
/*
 * Put @pool (on @dev, both owned by the caller and outliving the manager's
 * use of them: call tier_gpu_detach_all() before freeing) in the backend
 * array as the fastest backend. Call before any object is created.
 * @return 0; -ENOSPC (too many pools); -ENOMEM (no stream).
 */
int tier_gpu_attach(tier_mgr *m, struct gpu_dev *dev, struct gpu_pool *pool);
/* Free the streams (tier_close does too). */
void tier_gpu_detach_all(tier_mgr *m);

/* One piece of a file stored into the pool: @len bytes at file offset @off from @src. */
struct tier_gpu_part {
	uint64_t off, len;
	const void *src;
	bool device; /* @src is device memory on the pool's device (d2d), else host (h2d) */
};
/*
 * Store sealed @o in the pool on @dev from @n parts covering it exactly
 * (an engine's saved block: its layers device to device), evicting pool
 * victims (written down first when they have no other copy).
 * @return 0; -ENODEV (no pool on @dev); -EINVAL (parts do not cover @o);
 * -EBUSY (being moved, or already there); -ENOSPC; -EIO (copy failed, counted).
 */
int tier_gpu_store_parts(tier_obj *o, struct gpu_dev *dev, const struct tier_gpu_part *p,
			 unsigned n);
/*
 * A read into engine device memory on @dev: bring @o into that pool if it
 * is hot (hits ≥ 2). @return 0 (there); -EAGAIN (not hot); -ENODEV; -EBUSY;
 * -ENOSPC; -EIO.
 */
int tier_gpu_promote(tier_obj *o, struct gpu_dev *dev);
/*
 * The device address of file offset @off of leased @o in the pool on @dev,
 * *@len cut to what is contiguous there; NULL if it is not in that pool.
 * Valid while the caller's lease lasts.
 */
void *tier_gpu_addr(tier_obj *o, const struct gpu_dev *dev, uint64_t off, uint64_t *len);
/* Count a load of @bytes served device to device from @o's pool copy. */
void tier_gpu_loaded(tier_obj *o, uint64_t bytes);

struct tier_gpu_stats {
	int device;
	uint64_t capacity, used, files;
	uint64_t stores, promotions, store_bytes; /* saved from engines; promoted hot */
	uint64_t d2d_loads, d2d_bytes;	   /* loads served from the pool */
	uint64_t d2h_bytes, writedowns;	   /* device to host; GPU-only files written down */
	uint64_t drops, evictions, copy_errors;
};
/* @return how many pools' figures went to @out (up to @max). */
unsigned tier_gpu_get_stats(tier_mgr *m, struct tier_gpu_stats *out, unsigned max);

#endif
