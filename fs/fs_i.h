/*
 * fs/fs_i.h — private to fs/: the daemon's in-memory namespace.
 *
 * The namespace lives in memory while the daemon runs and is written
 * through to the catalog; it is loaded from the catalog at start.
 *
 * Inodes. One struct per directory or file; FUSE node ids are inode
 * addresses (libfuse's passthrough_ll does the same), so no table is
 * consulted to turn a node id into an inode. The persistent inode number
 * (`ino`, st_ino, the catalog key) is separate. There are no hard links, so
 * an inode has at most one name, and the name lives in the inode.
 *
 * Lookup. A lock-free hash table (liburcu's rculfhash) maps (parent ino,
 * name) to the inode; lookups run under the RCU read lock and take a
 * reference with an increment-if-not-zero. Inodes are freed after a grace
 * period (call_rcu).
 *
 * References (`refs`): one while linked into the tree, one per kernel
 * lookup (forget returns them), one per open handle, one while queued for a
 * stats flush or a kernel invalidation. The inode is freed when it drops to
 * zero, which implies it is unlinked.
 *
 * Locks, in the order they are taken:
 *   fs->lock    the tree: names, parents, children lists, the hash table's
 *               writers, catalog commits of namespace changes
 *   inode->lock attributes and a file's open/seal state
 *   tier locks  (inside tier/)
 * No fs lock is held while calling tier_write() or tier_truncate(): they may
 * evict, and eviction calls back into ns_evicted(), which takes fs->lock.
 */
#ifndef KVFS_FS_I_H
#define KVFS_FS_I_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <urcu/urcu-bp.h>
#include <urcu/rculfhash.h>
#include <urcu/lfstack.h>
#include <urcu/list.h>

#include "core/catalog.h"
#include "core/fault.h"
#include "kvfs/keys.h"
#include "tier/tier.h"

#define KVFS_NAME_MAX 255
#define KVFS_CTL_NAME ".kvfs"

enum inode_kind {
	KIND_DIR = 1,
	KIND_FILE,
	KIND_CTL_DIR,  /* .kvfs and .kvfs/iovs (static) */
	KIND_CTL_FILE, /* .kvfs/stats, ... (static) */
	KIND_CTL_LINK, /* a fast-path registration under .kvfs/iovs */
};

/* A name, freed after a grace period so lock-free lookups can read it. */
struct kvfs_name {
	struct rcu_head rcu;
	uint32_t len;
	char s[]; /* NUL-terminated */
};

/*
 * A place in a directory's children list: an inode, or a readdir cursor.
 * Entries are appended with increasing cookies, so the list is in cookie
 * order; a cookie is the readdir offset of the entry after it, stable while
 * other entries come and go. A cursor's cookie is that of the last entry
 * before it.
 */
struct dnode {
	struct cds_list_head link;
	uint64_t cookie;
	bool is_cursor;
};

/* Readdir offsets 1, 2, 3 are ".", ".." and (in the root) ".kvfs". */
#define FIRST_COOKIE 4

struct kvfs_inode {
	uint64_t ino;
	uint8_t kind;
	uint8_t ctl_id; /* KIND_CTL_FILE: which file */
	_Atomic uint64_t refs;
	uint64_t generation;
	pthread_mutex_t lock;

	/* attributes (inode lock) */
	uint32_t mode, uid, gid;
	int64_t atime, mtime, ctime; /* ns since the epoch */

	/* place in the tree (fs->lock) */
	struct kvfs_inode *parent; /* NULL when unlinked, and for the root */
	struct kvfs_name *name;    /* set under fs->lock, read under RCU */
	unsigned long hash;
	struct cds_lfht_node hnode;
	struct dnode dn;
	bool linked;
	bool persisted; /* the catalog has a record of it */
	/* unlinked while still referenced: on fs->orphans (fs->orphan_lock) */
	bool orphaned;
	struct cds_list_head orphan;

	/* directories (fs->lock) */
	struct cds_list_head children;
	uint64_t next_cookie;
	uint64_t nchildren;
	uint32_t nsubdirs;

	/* files (inode lock) */
	tier_obj *data;   /* NULL once evicted or deleted */
	uint64_t gone_size; /* tier_size() of the bytes when they were detached:
			     * st_size stays what an open reader saw (inode lock) */
	uint32_t writers; /* writable handles not yet released */
	uint32_t flushed; /* of which closed (flushed) and not written since */
	uint32_t opens;   /* open handles */
	/* FUSE passthrough (passthrough.c): the kernel refuses to mix passthrough
	 * and cached opens of one inode, so each reader open is one or the other,
	 * decided under the inode lock against these counts */
	int32_t pt_id;         /* backing id while pt_opens > 0, else 0 */
	uint32_t pt_opens;     /* open handles passed through */
	uint32_t cached_opens; /* reader handles on the read path */
	_Atomic bool sealed;
	bool sealing;  /* the last writer is validating; no new writers */
	bool sync_on_seal; /* fsync()ed while unsealed: made durable when sealed */
	bool unrecorded; /* sealed, linked, its catalog record failed: retried (fs->lock) */
	bool invalid;  /* a native block that failed validation */
	bool native;   /* a valid native block: key fields are set */
	uint64_t hits;
	kvfs_key key;
	kvfs_key parent_key;
	uint32_t ntokens;
	/* the remote tier (fs/remote.c) */
	bool published;	 /* in the cluster index under its path (fs->lock) */
	bool xxh_ok;	 /* xxh is the XXH3-64 of the sealed bytes (inode lock) */
	uint64_t xxh;
	bool attrs_pending; /* a directory made for the cluster, owner and mode not yet known */

	/* stats flush queue */
	_Atomic bool dirty;
	struct cds_lfs_node dirty_node;
	struct rcu_head rcu;
};

/* Counters, exported in .kvfs/stats and .kvfs/metrics (see ctl.c). */
struct kvfs_counters {
	_Atomic uint64_t lookups;
	_Atomic uint64_t lookup_misses;
	_Atomic uint64_t misses_created; /* negative lookups followed by a create */
	_Atomic uint64_t hits;
	_Atomic uint64_t hits_dram; /* of which found in DRAM */
	_Atomic uint64_t hits_nvme; /* of which found on NVMe only */
	_Atomic uint64_t opens;
	_Atomic uint64_t reads;
	_Atomic uint64_t pt_opens;     /* opens passed through to a DRAM file */
	_Atomic uint64_t pt_refused;   /* of the others: BACKING_OPEN refused by the kernel */
	_Atomic uint64_t pt_no_room;   /* of the others: only on NVMe, and no DRAM to bring it in */
	_Atomic uint64_t read_bytes;
	_Atomic uint64_t writes;
	_Atomic uint64_t write_bytes;
	_Atomic uint64_t creates;
	_Atomic uint64_t unlinks;
	_Atomic uint64_t renames;
	_Atomic uint64_t sealed;
	_Atomic uint64_t native_valid;
	_Atomic uint64_t native_invalid;
	_Atomic uint64_t busy_opens;
	_Atomic uint64_t evict_races;
	_Atomic uint64_t operator_evictions;
	_Atomic uint64_t restart_dropped;
	_Atomic uint64_t restart_recovered;
	_Atomic uint64_t verified;
	_Atomic uint64_t verify_failed;
	_Atomic uint64_t catalog_commits;
	_Atomic uint64_t catalog_errors;
	_Atomic uint64_t record_failed; /* sealed files whose record failed (counted once) */
	_Atomic uint64_t unrecorded;    /* of which still not in the catalog (retried) */
	_Atomic uint64_t readdir_scanned;
	_Atomic uint64_t files;
	_Atomic uint64_t dirs;
	_Atomic uint64_t open_handles;
	_Atomic uint64_t fp_registrations;
	_Atomic uint64_t fp_requests;
	_Atomic uint64_t fp_errors;
	_Atomic uint64_t fp_matched;
	_Atomic uint64_t fp_missed;
	_Atomic uint64_t fp_read_bytes;
	_Atomic uint64_t fp_saved;
	_Atomic uint64_t fp_refused;   /* registrations refused: a limit, an unsealed memfd */
	_Atomic uint64_t fp_reclaimed; /* registrations of processes that were gone */
	/* disagg.c */
	_Atomic uint64_t pf_requests, pf_paths, pf_queued, pf_present, pf_missing, pf_denied,
		pf_dropped, pf_fetched, pf_promoted, pf_failed, pf_bytes;
	_Atomic uint64_t cluster_matches, pushed, pushed_bytes, push_fallbacks;
	/* engines' device memory (fastpath.c, gpupool.c) */
	_Atomic uint64_t gpu_registrations;
	_Atomic uint64_t gpu_refused;
	_Atomic uint64_t gpu_copy_errors;
	_Atomic uint64_t gpu_loaded_bytes;
	_Atomic uint64_t gpu_saved_blocks;
};

struct kvfs_config {
	const char *mountpoint;
	const char *state_dir;
	bool state_is_temp;
	uint64_t dram_bytes;
	uint32_t page_size;
	const char *policy;
	unsigned threads;
	double entry_timeout;
	double attr_timeout;
	double negative_timeout;
	unsigned read_ahead_kb;
	bool no_keep_cache; /* drop the page cache at every open (for measurement) */
	bool no_passthrough; /* every read through the daemon, even with kernel support */
	struct tier_nvme_dev nvme[16];
	unsigned nvme_count;
	bool persist_through;
	/* --gpu DEV:SIZE (gpupool.c); gpu_standin: the tests' stand-in device */
	struct {
		int dev;
		uint64_t bytes;
	} gpu[8];
	unsigned gpu_count;
	bool gpu_standin;
	bool fsck, fsck_repair, fsck_no_verify;
	/* the remote tier: on with --cluster or --listen */
	const char *fabric;
	const char *listen;
	const char *cluster;
	const char *cluster_name;
	const char *node_id;
	const char *token_file;
	uint64_t lend_bytes;
	unsigned remote_timeout_ms;
	unsigned unproven_conns; /* 0 = the library's default */
	/* the fast path (fastpath.c): ring server threads, and limits per user */
	unsigned fp_threads;
	unsigned fp_max_rings;
	unsigned fp_max_bufs;
	uint64_t fp_max_bytes;
	/* prefetch (disagg.c) */
	unsigned prefetch_threads;
	unsigned prefetch_queue;
	uint64_t prefetch_bytes;
	bool drain_on_exit; /* --drain: SIGTERM drains before leaving */
	bool foreground;
	bool debug;
	const char *log_path;
	int log_level;
	char fuse_opts[1024];
};

struct kvfs_fs {
	struct kvfs_config cfg;
	struct fuse_session *se;
	cat *cat;
	tier_mgr *tier;
	/* the remote tier (remote.c): set while it runs; rmt_lock is read-held
	 * by its users and write-held to start and stop it */
	struct rmt *rmt;
	pthread_rwlock_t rmt_lock;
	struct dg *dg; /* prefetch and push (disagg.c) */
	/* the GPU pools (gpupool.c), one per --gpu; set at start, never changed */
	struct gpupool *gpu;
	struct rmt_drain *drain; /* from the first drain on (fs->lock) */

	pthread_mutex_t lock;
	struct cds_lfht *ht;
	struct kvfs_inode *root;
	uint64_t next_ino;
	_Atomic uint64_t next_generation;
	uint64_t started_ns;

	struct kvfs_counters ctr;

	/*
	 * Unlinked inodes the kernel or a handle still references. The kernel
	 * sends no FORGET at unmount, so some are never freed; this list keeps
	 * them accounted for (and reachable) until the process exits.
	 */
	pthread_mutex_t orphan_lock;
	struct cds_list_head orphans;

	/* open handles, freed at shutdown if the kernel never released them */
	pthread_mutex_t handles_lock;
	struct cds_list_head handles;

	/* wakes opens and renames waiting for a closed file's release (ops.c) */
	pthread_mutex_t seal_lock;
	pthread_cond_t seal_cond;

	/* negative lookups awaiting a create (see ops.c: miss accounting) */
	_Atomic uint64_t recent_miss[256];

	/* background work: stats flush and kernel cache invalidation */
	struct cds_lfs_stack dirty;
	pthread_t worker;
	pthread_mutex_t work_lock;
	pthread_cond_t work_cond;
	struct inval *inval_head, *inval_tail;
	uint64_t inval_queued, inval_done; /* tickets (work_lock) */
	pthread_cond_t inval_cond;
	bool stopping;
	bool worker_started;
	/* No notification to the kernel once the session is going (notify_lock). */
	pthread_mutex_t notify_lock;
	bool notify_off;
};

extern struct kvfs_fs *kvfs_fs_global;


/* --- ns.c: the tree ---------------------------------------------------------- */

int ns_open(struct kvfs_fs *fs, char *err, size_t errlen);
void ns_close(struct kvfs_fs *fs);
/*
 * The session is ending: send the kernel no more notifications (its
 * /dev/fuse descriptor is about to be closed, and the number reused).
 * Returns once none is in flight.
 */
void ns_notify_off(struct kvfs_fs *fs);

struct kvfs_inode *ns_inode_new(struct kvfs_fs *fs, uint8_t kind, uint32_t mode, uint32_t uid,
				uint32_t gid);
void ns_get(struct kvfs_inode *in, uint64_t n);
void ns_put(struct kvfs_fs *fs, struct kvfs_inode *in, uint64_t n);

/* Look up a child under RCU and take one reference; NULL if absent. */
struct kvfs_inode *ns_lookup(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
			     size_t len);
/* Same, with fs->lock held (no reference taken). */
struct kvfs_inode *ns_find_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
				  size_t len);

/* Link @in under @dir as @name (fs->lock held). @return 0 or -ENOMEM. */
int ns_link_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, struct kvfs_inode *in,
		   const char *name, size_t len);
/* Remove @in from its directory (fs->lock held); drops the link reference. */
void ns_unlink_locked(struct kvfs_fs *fs, struct kvfs_inode *in);

/*
 * The path of @in below the mount root, without a leading '/' ("a/b/c"; ""
 * for the root), into @buf (fs->lock held).
 * @return its length; -ENOENT if @in is not linked; -ENAMETOOLONG.
 */
int ns_path_locked(struct kvfs_fs *fs, const struct kvfs_inode *in, char *buf, size_t len);

/* Add catalog operations that persist @in's record (and its name). */
void ns_persist(struct kvfs_fs *fs, cat_batch *b, struct kvfs_inode *in);
/* Add catalog operations that forget @in. */
void ns_forget_record(struct kvfs_fs *fs, cat_batch *b, struct kvfs_inode *in);
/* Commit @b; counts errors. @return 0 or -EIO (or the fault seam's errno). */
int ns_commit(struct kvfs_fs *fs, cat_batch *b);
/*
 * Record a sealed file and its name (fs->lock held). If the commit fails
 * the file stays (served from DRAM) but is counted not durable and the
 * worker retries its record. @return 0 or ns_commit()'s error.
 */
int ns_record_file_locked(struct kvfs_fs *fs, struct kvfs_inode *in);

/*
 * Detach @in's bytes (inode lock held), remembering their size for stat.
 * @return the object (the caller drops or puts it), or NULL.
 */
tier_obj *ns_take_data(struct kvfs_inode *in);

/* A file's data is gone or no longer needed: drop it if no handle is open. */
void ns_release_data(struct kvfs_fs *fs, struct kvfs_inode *in);

/* Tier callback: objects were evicted. */
void ns_evicted(void *ctx, tier_obj *const *objs, size_t n);

/* Queue a kernel cache invalidation for @in's name and pages. @return its ticket. */
uint64_t ns_queue_inval(struct kvfs_fs *fs, struct kvfs_inode *in, bool entry);
/*
 * Wait (at most @timeout_ns) until invalidations up to @ticket were sent.
 * Never from a request that holds a lock the invalidation needs (the kernel
 * holds a directory's lock during requests on that directory).
 */
void ns_wait_inval(struct kvfs_fs *fs, uint64_t ticket, uint64_t timeout_ns);
/* Queue @in's access statistics for the next catalog flush. */
void ns_mark_dirty(struct kvfs_fs *fs, struct kvfs_inode *in);
/* Write queued statistics now. */
void ns_flush_dirty(struct kvfs_fs *fs);

struct kvfs_cred; /* below: a request's uid, gid and groups */

/*
 * May @c access @in for @mask (R_OK | W_OK | X_OK), by its mode bits the
 * way the kernel decides (owner, else group, else other): ns_may(), which
 * takes @in's lock (so the caller holds no inode lock; fs->lock is fine).
 */
bool ns_may_access(const struct kvfs_cred *c, struct kvfs_inode *in, int mask);
/*
 * unlink's rule for @in (fs->lock held): write and search permission on
 * its directory, and in a sticky directory ownership of @in or of it.
 */
bool ns_may_remove_locked(const struct kvfs_cred *c, struct kvfs_inode *in);

/* Evict a file, or every file below a directory; counts what happened. */
struct evict_result {
	uint64_t files;
	uint64_t bytes;
	uint64_t busy;
	uint64_t pinned;
	uint64_t denied; /* files @cred may not remove (unlink's rule) */
};
/*
 * With @cred (NULL: no checks), only files @cred could unlink are evicted,
 * and only directories it may search are walked.
 * @return the ticket of the last invalidation queued, for ns_wait_inval().
 */
uint64_t ns_evict_tree(struct kvfs_fs *fs, struct kvfs_inode *in, const struct kvfs_cred *cred,
		       struct evict_result *res);
/*
 * Resolve @path ("a/b/c", below the root) as far as it exists, as @c's
 * lookup would: every directory on the way must be searchable by @c.
 * @return 0 (the path, or the part of it that exists here, may be looked
 * up); -EACCES; -ENOTDIR if a component is a file with more after it.
 */
int ns_may_lookup(struct kvfs_fs *fs, const struct kvfs_cred *c, const char *path);

/* Fill a catalog record from an inode (inode lock held). */
void ns_to_record(const struct kvfs_inode *in, struct cat_inode *rec);

/*
 * Would the kernel (default_permissions) let a process with @uid, @gid and
 * @groups access @in with @mask (4 r, 2 w, 1 x)? Root passes, except that
 * execute needs some x bit on a file.
 */
bool ns_may(struct kvfs_inode *in, uint32_t uid, uint32_t gid, const uint32_t *groups, int ngroups,
	    unsigned mask);

/* The credentials of a FUSE request (for control files that act for the writer). */
#define KVFS_CRED_GROUPS 64
struct kvfs_cred {
	uint32_t uid, gid;
	int ngroups;
	uint32_t groups[KVFS_CRED_GROUPS];
};

/* --- ctl.c: the .kvfs control directory -------------------------------------- */

enum ctl_file {
	CTL_STATS,
	CTL_METRICS,
	CTL_CONFIG,
	CTL_FAULT,
	CTL_WHERE,    /* write a path, read back its holders in the cluster */
	CTL_PREFETCH, /* write paths, read back what was queued (disagg.c) */
	CTL_MATCH,    /* write a chain of paths, read back each node's prefix (disagg.c) */
	CTL_DRAIN,    /* write anything: leave the cluster gracefully (rmt_drain) */
	CTL_NR,
};

void ctl_init(struct kvfs_fs *fs);
struct kvfs_inode *ctl_dir(void);
struct kvfs_inode *ctl_iovs_dir(void);
struct kvfs_inode *ctl_lookup(const char *name);
const char *ctl_name(unsigned id);
/* Build a control file's contents (malloc'd) for an open. @return 0 or -errno. */
int ctl_render(struct kvfs_fs *fs, unsigned id, char **buf, size_t *len);
/* A write to a control file by @cred; an answer to read back, if any, goes
 * to @out (malloc'd). @return 0 or -errno. */
int ctl_write(struct kvfs_fs *fs, const struct kvfs_cred *cred, unsigned id, const char *buf,
	      size_t len, char **out, size_t *outlen);
/*
 * The path in a write to .kvfs/where (pure: no state). One trailing newline
 * and leading slashes are dropped; the rest must be valid UTF-8 without NUL,
 * with no empty, "." or ".." component, shorter than @size.
 * @return 0 and the NUL-terminated path in @path, or -EINVAL.
 */
int ctl_where_path(const char *req, size_t len, char *path, size_t size);
/*
 * A write to .kvfs/fault (pure): a spec (kvfs_fault_parse_spec) with one
 * optional trailing newline. `arena` is refused: the DRAM store is made once, at
 * start (arm it with KVFS_FAULTS there).
 * @return the number of items in @out, or -EINVAL.
 */
int ctl_fault_spec(const char *buf, size_t len, struct kvfs_fault_spec *out, int max);
/* May the control file be opened for writing? for reading? */
bool ctl_writable(unsigned id);
bool ctl_readable(unsigned id);


/* --- fastpath.c: rings and buffers registered under .kvfs/iovs ------------------ */

/*
 * Register @target ("/proc/self/fd/N", a memfd sealed with F_SEAL_SHRINK)
 * as @name; *link gets a referenced inode.
 * @return 0; -EINVAL (a bad name or target, not a memfd owned by the
 * caller, too big, a bad ring header); -EPERM (the name is another
 * process's); -EBADF (no such descriptor); -EBADFD (the memfd is not sealed
 * against shrinking); -EDQUOT (the caller's user is at its limit of rings,
 * buffers or registered bytes); -ENFILE (every ring server is full);
 * -EEXIST; -ESRCH (the caller is gone); -ENOMEM; -EAGAIN (no thread).
 */
int fp_register(struct kvfs_fs *fs, const struct fuse_ctx *ctx, const char *name,
		const char *target, struct kvfs_inode **link);
int fp_unregister(struct kvfs_fs *fs, const struct fuse_ctx *ctx, const char *name);
/* The registration named @name, referenced, or NULL. */
struct kvfs_inode *fp_lookup(struct kvfs_fs *fs, const char *name);
/* The @index-th registration (for readdir). @return 0 or -ENOENT past the end. */
int fp_entry(struct kvfs_fs *fs, uint64_t index, char *name, size_t len, struct kvfs_inode **in);
/* Stop every ring and unmap everything (at unmount). */
void fp_shutdown(struct kvfs_fs *fs);

/* --- gpupool.c: device pools of --gpu (gpu/gpu.h) ----------------------------------- */

/*
 * Open each --gpu device and allocate its pool, in the daemon process.
 * @return 0; or -errno with @err a one-line reason (no driver, no device,
 * out of memory, built without CUDA).
 */
int gpupool_start(struct kvfs_fs *fs, char *err, size_t errlen);
/* Free the pools. Safe when none were started. */
void gpupool_stop(struct kvfs_fs *fs);
struct kvfs_ring_devreg;
struct gpu_dev;
/*
 * Map the allocation holding an engine's device memory named by @rec (its
 * offset + bytes at least) on the --gpu device it is on, for the
 * registering process @owner; *mem is the allocation's start.
 * @return 0 with *dev and *mem set; -ENODEV (no --gpu pool of that kind);
 * -EPERM (a stand-in handle that @owner did not export);
 * -EXDEV (on none of our devices); -EINVAL, -ESTALE (a bad or stale
 * handle); -ENOMEM; gpu_error() says why.
 */
int gpupool_ipc_open(struct kvfs_fs *fs, const struct kvfs_ring_devreg *rec, pid_t owner,
		     struct gpu_dev **dev, void **mem);
void gpupool_ipc_close(struct gpu_dev *dev, void *mem);
/*
 * Put each pool in the tier manager as the fastest backend (tier/gpu.c),
 * after tier_open. @return 0; -errno with @err.
 */
int gpupool_attach(struct kvfs_fs *fs, char *err, size_t errlen);
struct gpupool_stat {
	int device;
	const char *impl; /* "cuda", or "shm" for the tests' stand-in */
	uint64_t bytes, block_bytes;
	uint32_t blocks, free_blocks;
	struct tier_gpu_stats tier; /* what the tier keeps there */
};
/* The figures of up to @max pools into @out. @return how many (0 without --gpu). */
unsigned gpupool_stats(struct kvfs_fs *fs, struct gpupool_stat *out, unsigned max);

/* --- remote.c: the remote tier (rdma/remote.h) ------------------------------------ */

struct json_t;
bool rmt_configured(const struct kvfs_config *c);
/* After the tree is loaded, in the daemon process. @return 0 or -errno (@err says why). */
int rmt_start(struct kvfs_fs *fs, char *err, size_t errlen);
/* After the FUSE session ends, before the tiers close. */
void rmt_stop(struct kvfs_fs *fs);
/* @in (a file, or a directory: every file below) got its name: publish what is sealed. */
void rmt_link_locked(struct kvfs_fs *fs, struct kvfs_inode *in);
/* @in is about to lose its name: unpublish. */
void rmt_unlink_locked(struct kvfs_fs *fs, struct kvfs_inode *in);
/* @in is being deleted by a user: free lent copies of it in the cluster (queued). */
void rmt_deleted_locked(struct kvfs_fs *fs, struct kvfs_inode *in);
/* A lookup of @name under @dir missed: fetch it from a peer. @return 0 and a
 * referenced inode in @out, or -ENOENT (a miss, whatever the reason). */
int rmt_fetch(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
	      struct kvfs_inode **out);
/* Tier callback: offload a file about to be evicted to a peer. */
void rmt_spill(void *ctx, tier_obj *o);
/* Tier callback: a file was demoted or promoted; the index learns its tier. */
void rmt_moved(void *ctx, tier_obj *o);
/* The "remote" section of .kvfs/stats; NULL when the tier is off. */
struct json_t *rmt_stats_json(struct kvfs_fs *fs);
/* .kvfs/where: the holders of the path in @req, as JSON (malloc'd). */
int rmt_where(struct kvfs_fs *fs, const char *req, size_t len, char **out, size_t *outlen);
/*
 * Leave the cluster gracefully (`kvfsctl drain`, SIGTERM with --drain): take
 * no more offloads, hand the lent copies we hold and our hottest files that
 * no other live node holds (up to the peers' lent memory) to the peers,
 * then leave (rmt_stop). Runs on its own thread; @wait blocks until done.
 * A second call while one runs or after it is a no-op.
 * @return 0; -ENOTCONN if this node is in no cluster; -ENOMEM; -EAGAIN.
 */
int rmt_drain(struct kvfs_fs *fs, bool wait);
/* The drain's progress for .kvfs/stats ("drain"), or NULL if none began. */
struct json_t *rmt_drain_json(struct kvfs_fs *fs);
/* At exit, after rmt_stop: wait for the drain thread and free its state. */
void rmt_drain_join(struct kvfs_fs *fs);

/*
 * The remote handle, for callers outside remote.c: NULL when the tier is
 * off. Holds rmt_lock (read) until rmt_unhold(), which must follow every
 * call, NULL or not.
 */
struct remote *rmt_hold(struct kvfs_fs *fs);
void rmt_unhold(struct kvfs_fs *fs);
/* "gpu", "dram", "nvme", "lent" for an enum remote_tier. */
const char *rmt_tier_name(int tier);

/* --- disagg.c: prefetch, cluster match, push (DESIGN §9) ------------------------- */

/* Start the prefetch workers (and the pusher in a cluster). @return 0 or -errno. */
int dg_start(struct kvfs_fs *fs);
/* Stop them; queued work is dropped. After the FUSE session, before rmt_stop(). */
void dg_stop(struct kvfs_fs *fs);
/* .kvfs/prefetch: queue the paths in @buf for @cred; the answer (malloc'd)
 * counts the outcomes. @return 0; -E2BIG (over 65536 paths); -ENOMEM. */
int dg_prefetch(struct kvfs_fs *fs, const struct kvfs_cred *cred, const char *buf, size_t len,
		char **out, size_t *outlen);
/* .kvfs/match: each live node's prefix of the chain in @buf (malloc'd answer).
 * @return 0; -EINVAL (empty or bad path); -ENOTSUP (not in a cluster); -ENOTCONN
 * (no index configured, or unreachable). */
int dg_match(struct kvfs_fs *fs, const char *buf, size_t len, char **out, size_t *outlen);
/* user.kvfs.push on a directory: set (an empty value clears) or read the node
 * its new files are pushed to. @return 0 / the length; -EINVAL, -ENOTDIR,
 * -ENOTSUP (not in a cluster), -ENOSPC (too many rules); -ENODATA (get: none). */
int dg_push_set(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *val, size_t len);
int dg_push_get(struct kvfs_fs *fs, struct kvfs_inode *dir, char *buf, size_t len);
/* @in was sealed under its name (fs->lock held): push it if its directory says so. */
void dg_sealed_locked(struct kvfs_fs *fs, struct kvfs_inode *in);

/* --- fsck.c: the offline checker ------------------------------------------------- */

/* Check (and with @repair fix) the state directory. @return the exit status. */
int fsck_run(const char *state, bool repair, bool verify);
/* Record the tiers' layout in the catalog, for fsck (at every start). */
void fsck_record_tiers(cat *c, const struct kvfs_config *cfg, uint32_t page_size);

/* --- ops.c ------------------------------------------------------------------ */

extern const struct fuse_lowlevel_ops kvfs_ops;

/* Create an empty, unsealed file under @dir (fs->lock held). @return 0 or -errno. */
int ops_new_file_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
			mode_t mode, uid_t uid, gid_t gid, struct kvfs_inode **out);
/* Same, with bytes already in @data (unsealed, its id @ino from fs->next_ino,
 * no owner yet): the inode takes the caller's reference. */
int ops_adopt_file_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
			  mode_t mode, uid_t uid, gid_t gid, uint64_t ino, tier_obj *data,
			  struct kvfs_inode **out);
/* Create a directory under @dir and record it (fs->lock held). @return 0 or -errno. */
int ops_new_dir_locked(struct kvfs_fs *fs, struct kvfs_inode *dir, const char *name,
		       mode_t mode, uid_t uid, gid_t gid, struct kvfs_inode **out);
/* Seal a file its last writer left, marked `sealing` by the caller. @return 0 or -EBADMSG. */
int ops_seal(struct kvfs_fs *fs, struct kvfs_inode *in, tier_obj *data);

static inline struct kvfs_inode *ino_to_inode(struct kvfs_fs *fs, fuse_ino_t ino)
{
	return ino == FUSE_ROOT_ID ? fs->root : (struct kvfs_inode *)(uintptr_t)ino;
}

static inline fuse_ino_t inode_to_ino(struct kvfs_fs *fs, const struct kvfs_inode *in)
{
	return in == fs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)in;
}

/* --- passthrough.c: FUSE passthrough on libfuse 3.14 ------------------------------ */

/*
 * Install the /dev/fuse hook on fs->se (after fuse_session_mount): it
 * agrees passthrough at INIT when the kernel offers it and
 * fs->cfg.no_passthrough is not set, and logs which read path is in use.
 * @return 0; -EINVAL if libfuse refused the hook (passthrough stays off).
 */
int pt_setup(struct kvfs_fs *fs);
/* Whether INIT agreed passthrough. */
bool pt_enabled(void);
/*
 * Register @fd (a DRAM file) with the kernel for passthrough.
 * @return the backing id (> 0); -errno of the ioctl or the fault seam
 * (EPERM without CAP_SYS_ADMIN or before INIT agreed it).
 */
int pt_backing_open(int fd);
/* Give up a backing id (after the last release of the opens using it). */
void pt_backing_close(int id);
/* The next fuse_reply_open() of this thread passes through @backing_id (0: none). */
void pt_reply_open_next(int backing_id);

enum pt_mode {
	PT_NONE,   /* not a reader of a sealed file */
	PT_PASS,   /* passed through: reads never reach the daemon */
	PT_CACHED, /* the read path, through the page cache */
};

/*
 * Decide how a reader open of sealed @in, holding a lease on @data, reads:
 * passthrough when agreed at INIT, no read-path open of the inode is live,
 * its bytes are (or can be brought) in DRAM and the kernel takes the
 * backing file; the read path otherwise (counted in pt_refused/pt_no_room).
 * Every passthrough open of an inode shares one backing id (*@id).
 * Takes the inode lock; may promote from NVMe (call with no lock held).
 */
enum pt_mode pt_open(struct kvfs_fs *fs, struct kvfs_inode *in, tier_obj *data, int *id);
/* The handle opened as @mode is released (before its lease is given up). */
void pt_release(struct kvfs_inode *in, enum pt_mode mode);

#endif
