/*
 * tier/backend.h — the interface every tier backend implements (private to
 * tier/ and to backends built on it, such as a GPU pool).
 *
 * The tier manager keeps an ordered array of backends, fastest first
 * (DRAM, then NVMe when configured). Each fills a const struct
 * tier_backend_ops with designated initializers, as libfuse fills
 * fuse_lowlevel_ops and SQLite sqlite3_io_methods. One placement loop uses
 * the array: new bytes land in backends[0]; a victim of backend i is
 * stored in the first slower backend that holds or can take it and then
 * dropped from i (tier.c, demote_victim); the last local copy is offered to
 * the owner's `spill` callback (the remote tier) before it is evicted;
 * reads come from the fastest backend holding the object; at start every
 * backend that persists is asked to recover each file.
 *
 * Every op that changes placement runs on an object the caller claimed
 * (OBJ_BUSY, tier/obj.c), so one object is moved by one thread at a time.
 * A backend without a backing file (a GPU pool, NVMe segments) leaves
 * .backing_fd NULL; one that does not persist leaves .recover NULL.
 *
 * Return 0 or a negative errno unless stated otherwise.
 */
#ifndef KVFS_TIER_BACKEND_H
#define KVFS_TIER_BACKEND_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "tier/tier.h"

struct tier_backend_ops {
	const char *name; /* "dram", "nvme": its key in .kvfs/stats "tiers" */
	unsigned kind;	  /* its enum tier_kind bit (tier_where) */
	/* Does @o have a complete copy here? (lock-free: the state word) */
	bool (*holds)(const tier_obj *o);
	/*
	 * Copy all of claimed, sealed @o here from the copy a faster backend
	 * holds, and record it; make room in this backend (evicting) if
	 * @evict. @return 0; -ENOSPC; -EIO (nothing changes, counted).
	 */
	int (*store)(tier_obj *o, bool evict);
	/* Copy up to @len bytes at @off into @buf. @return bytes, or -errno (-EIO: lost). */
	ssize_t (*read)(tier_obj *o, uint64_t off, void *buf, size_t len);
	/*
	 * A new descriptor of a file holding exactly the object's bytes from
	 * offset 0, for FUSE passthrough; NULL if the backend has none.
	 * @return the fd; -ENODATA if not here; -errno.
	 */
	int (*backing_fd)(tier_obj *o);
	/*
	 * Drop this copy of claimed @o (a slower copy remains). Releases the
	 * claim. @return 0; -EBUSY if a lease holder may be using it. NULL
	 * for the slowest backend, whose copies are evicted (or spilled).
	 */
	int (*drop)(tier_obj *o);
	/*
	 * @o died (no lease, no mover): free this backend's copy if
	 * @old_state (the state word when it died) says it has one; called
	 * again with all bits set when the last reference goes.
	 */
	void (*release)(tier_obj *o, uint64_t old_state);
	/* Optional: nobody leases or moves @o now; close what was kept open for them. */
	void (*unused)(tier_obj *o);
	/* Fill @st (name and kind included). */
	void (*stats)(tier_mgr *m, struct tier_backend_stats *st);
	/*
	 * At start (tier_recover): give the file @id of @size bytes back if
	 * this backend kept it; NULL for a volatile backend.
	 * @return 0 with *@out; -ENOENT; -EUCLEAN (damaged record).
	 */
	int (*recover)(tier_mgr *m, uint64_t id, uint64_t size, uint32_t hits, void *owner,
		       tier_obj **out);
};

extern const struct tier_backend_ops tier_dram_backend;
extern const struct tier_backend_ops tier_nvme_backend;

#endif
