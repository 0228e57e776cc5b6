/*
 * kvfs/kvfs.h — libkvfs: reuse LLM KV caches through a kvfs namespace.
 *
 * An inference engine opens a namespace (a directory plus the layout of its
 * model's KV cache), turns prompts into block keys, asks how long a prefix
 * is cached, loads those blocks into its own paged KV memory layer by layer
 * while it computes the rest, and saves new full blocks in the background.
 *
 *   kvfs_ns_open()          a directory + layout + hash seed
 *   kvfs_ns_keys()          block keys of a token sequence (vLLM-compatible)
 *   kvfs_match_prefix()     how many leading blocks are cached; holds them
 *   kvfs_load_start()       copy held blocks into engine pages, layer by layer
 *   kvfs_load_wait()        wait until one layer of every block is in place
 *   kvfs_load_end()         wait for all, release the load
 *   kvfs_save()             queue full blocks to be written; never blocks
 *   kvfs_match_release()    let held blocks be evicted again
 *
 * In a cluster of kvfs nodes (DESIGN §9):
 *
 *   kvfs_prefetch()         bring blocks into this node's DRAM ahead of need
 *   kvfs_cluster_match()    which nodes hold how long a prefix of a chain
 *   kvfs_ns_push()          new blocks of the namespace also go to a named node
 *
 * Each block is one file, `<dir>/<key as 64 hex digits>`, in the native
 * block format of kvfs/format.h, so the namespace can be inspected with ls,
 * kvfsctl and getfattr, and shared by every engine that uses the same model
 * layout and seed.
 *
 * Two paths, one behaviour. Inside a kvfs mount the library uses the fast
 * path: shared-memory rings to the daemon, which copies bytes from its tiers
 * straight into memory from kvfs_alloc(). On any other filesystem (or with
 * KVFS_PATH_POSIX) it uses plain POSIX files. Both return identical bytes.
 *
 * Failure is a miss, never wrong data: an evicted file, a bad checksum, a
 * daemon restart or a full save queue make the engine recompute. Every block
 * loaded is checked against its key and its per-layer checksums.
 *
 * Threads: a kvfs_ns may be used from several threads at once. A kvfs_match
 * or kvfs_load belongs to one thread at a time.
 *
 * All functions return 0 (or a count) on success and a negative errno on
 * failure unless stated otherwise; the errors each can return are listed.
 */
#ifndef KVFS_KVFS_H
#define KVFS_KVFS_H

#include <stddef.h>
#include <stdint.h>

#include "kvfs/format.h"
#include "kvfs/keys.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kvfs_ns kvfs_ns;
typedef struct kvfs_match kvfs_match;
typedef struct kvfs_load kvfs_load;

enum kvfs_path {
	KVFS_PATH_AUTO = 0,  /* fast path on a kvfs mount, POSIX elsewhere */
	KVFS_PATH_POSIX = 1, /* plain files, even on a kvfs mount */
	KVFS_PATH_FAST = 2,  /* the fast path or fail with -ENOTSUP */
};

struct kvfs_ns_options {
	const char *dir;           /* namespace directory; created if missing */
	struct kvfs_layout layout; /* shared by every block of the namespace */
	const char *seed;          /* the hash seed (vLLM's PYTHONHASHSEED); required */
	unsigned save_queue;       /* blocks that may wait to be saved; 0 = 64 */
	unsigned path;             /* enum kvfs_path */
};

/*
 * Open a namespace.
 * @return 0; -EINVAL for a bad layout, a NULL dir or seed; -ENOTSUP for
 * KVFS_PATH_FAST outside a kvfs mount; -ENOMEM; or the errno of creating
 * @dir.
 */
int kvfs_ns_open(const struct kvfs_ns_options *opt, kvfs_ns **out);

/* Wait for queued saves, release everything. Safe on NULL. */
void kvfs_ns_close(kvfs_ns *ns);

/* The chain root of this namespace: sha256_cbor(seed). */
const kvfs_key *kvfs_ns_root(const kvfs_ns *ns);

/* Bytes of one block file of this namespace. */
uint64_t kvfs_ns_block_bytes(const kvfs_ns *ns);

/* 1 if the namespace uses the fast path now, 0 if POSIX. */
int kvfs_ns_is_fast(const kvfs_ns *ns);

/*
 * Keys of the full blocks of @tokens, chained from the namespace root, with
 * optional @extra keys (LoRA adapter, cache salt; see kvfs/keys.h).
 * @return the number of keys written (ntokens / tokens_per_block, at most
 * @max); -EINVAL.
 */
long kvfs_ns_keys(kvfs_ns *ns, const uint32_t *tokens, size_t ntokens,
		  const struct kvfs_key_extra *extra, kvfs_key *out, size_t max);

/*
 * How many of @keys, from the first on, are cached. Those blocks are held:
 * they cannot be evicted until kvfs_match_release(). A block that is present
 * but cannot be held (evicted meanwhile, being written) ends the match.
 * On success *out is set even when the count is 0.
 * @return the number of blocks matched (0..n); -EINVAL (n larger than
 * 65536); -ENOMEM.
 */
long kvfs_match_prefix(kvfs_ns *ns, const kvfs_key *keys, size_t n, kvfs_match **out);

/* Number of blocks a match holds. */
size_t kvfs_match_len(const kvfs_match *m);

/* Let the held blocks go. Safe on NULL. Any load of @m must have ended. */
void kvfs_match_release(kvfs_match *m);

/*
 * Engine KV memory, described as pages (vLLM's and SGLang's paged layouts).
 * For each layer, engine block b starts at `k + b * block_stride` (and
 * `v + b * block_stride` for kind KV); token t of a block starts
 * `t * token_stride` further; a token row is num_kv_heads * head_dim
 * elements of the layout's dtype, contiguous. For kind MLA `v` is NULL and
 * the row is the latent vector (head_dim elements).
 */
struct kvfs_kv_layer {
	void *k;
	void *v;
	size_t block_stride;
	size_t token_stride;
};

struct kvfs_kv_pages {
	const struct kvfs_kv_layer *layers; /* layout.num_layers entries */
};

/*
 * Start copying blocks [first, first + n) of @m into engine blocks
 * @block_ids[0..n), layer by layer: all of layer 0, then layer 1, ... The
 * engine memory must stay valid until kvfs_load_end().
 * @return 0; -EINVAL (range outside the match, bad pages); -ENOMEM.
 */
int kvfs_load_start(kvfs_match *m, size_t first, size_t n, const struct kvfs_kv_pages *dst,
		    const uint32_t *block_ids, kvfs_load **out);

/*
 * Wait until @layer of every block of the load is in engine memory.
 * @return 0; or the load's error, after which the loaded bytes must not be
 * used: -EBADMSG (a block failed its key or checksum check), -ENOENT (a
 * block vanished), -EIO, -ENOTCONN (the daemon went away). An error is a
 * miss: recompute.
 */
int kvfs_load_wait(kvfs_load *ld, unsigned layer);

/* Wait for the whole load and free it. @return as kvfs_load_wait(). Safe on NULL. */
int kvfs_load_end(kvfs_load *ld);

/*
 * Save @nblocks full blocks whose tokens are @tokens (nblocks *
 * tokens_per_block ids) and whose KV data sits in engine blocks
 * @block_ids, chained from @parent (the namespace root for the first
 * blocks of a sequence, else the key of the block before them);
 * @first_index is the index of the first block in its sequence (the cache
 * salt of @extra applies to block 0 only). The data is copied out of engine
 * memory before this returns; writing happens in the background. Blocks
 * whose files already exist are skipped. A block that finds the save queue
 * full is dropped and counted, never waited for.
 * @return the number of blocks queued or skipped as present (the rest were
 * dropped); -EINVAL.
 */
long kvfs_save(kvfs_ns *ns, const kvfs_key *parent, size_t first_index, const uint32_t *tokens,
	       size_t nblocks, const struct kvfs_key_extra *extra, const struct kvfs_kv_pages *src,
	       const uint32_t *block_ids);

/* Wait until every queued save has been written or has failed. @return 0. */
int kvfs_save_flush(kvfs_ns *ns);

/*
 * Memory for engine KV pools that the fast path can fill without an extra
 * copy: shared memory registered with the daemon. Page aligned, zeroed.
 * Works on the POSIX path too (then it is plain memory).
 * @return the memory, or NULL with errno set.
 */
void *kvfs_alloc(kvfs_ns *ns, size_t bytes);
void kvfs_free(kvfs_ns *ns, void *mem, size_t bytes);

/*
 * Engine KV memory on a GPU. A successor of struct kvfs_kv_layer that also
 * says where each layer's pages are: host memory, or CUDA device N (the
 * ordinal in the engine's process). The existing functions keep taking
 * struct kvfs_kv_pages (host memory); these take the successor.
 */
#define KVFS_DEVICE_HOST (-1)

struct kvfs_kv_layer_ex {
	void *k;
	void *v;
	size_t block_stride;
	size_t token_stride;
	int device;        /* KVFS_DEVICE_HOST or a CUDA device ordinal */
	unsigned reserved; /* 0 */
};

struct kvfs_kv_pages_ex {
	const struct kvfs_kv_layer_ex *layers; /* layout.num_layers entries */
};

/*
 * Device memory the daemon may copy into: one allocation of the engine's,
 * exported by the engine itself (libkvfs does not link CUDA):
 *
 *   cudaIpcMemHandle_t h;  cudaIpcGetMemHandle(&h, base);
 *   cudaDeviceProp p;      cudaGetDeviceProperties(&p, dev);
 *   struct kvfs_dev_buffer b = {.base = base, .bytes = bytes, .device = dev,
 *                               .kind = KVFS_DEV_CUDA};  // .offset 0: cudaMalloc's pointer
 *   memcpy(b.uuid, &p.uuid, 16);  memcpy(b.ipc_handle, &h, 64);
 *   kvfs_dev_register(ns, &b);
 *
 * KVFS_DEV_STANDIN is the test suites' stand-in device (gpu/gpu.h); a daemon
 * accepts it only when it runs with --gpu-standin.
 */
enum kvfs_dev_kind {
	KVFS_DEV_CUDA = 1,
	KVFS_DEV_STANDIN = 2,
};

struct kvfs_dev_buffer {
	void *base;    /* where the memory starts in the engine's address space */
	size_t offset; /* how far @base lies into the exported allocation: 0 for
			* cudaMalloc's pointer; PyTorch's _share_cuda_() says it */
	size_t bytes;  /* from @base */
	int device;   /* CUDA device ordinal in the engine's process */
	unsigned kind; /* enum kvfs_dev_kind */
	uint8_t uuid[16];        /* the device's UUID (cudaDeviceProp.uuid) */
	uint8_t ipc_handle[64];  /* cudaIpcMemHandle_t of base */
};

/*
 * Register @b with the daemon through the fast path (a sealed record under
 * `.kvfs/iovs/dev.<pid>.<id>`); the daemon opens the handle on its own pool's
 * device and from then on copies loads into that memory itself.
 * @return 0; -ENOTSUP (not on the fast path); -EINVAL (bad buffer, a
 * malformed handle); -ENODEV (the daemon has no --gpu pool on that device);
 * -EXDEV (a handle of another device or kind); -ESTALE (the memory is gone);
 * -EEXIST (already registered); -ENOMEM.
 */
int kvfs_dev_register(kvfs_ns *ns, const struct kvfs_dev_buffer *b);

/* Take a registration back (before freeing the memory). @return 0; -ENOENT. */
int kvfs_dev_unregister(kvfs_ns *ns, void *base);

/*
 * As kvfs_load_start(), with pages that may be on a GPU. Device layers need
 * the fast path and memory registered with kvfs_dev_register(); the daemon
 * copies each layer in and kvfs_load_wait(ld, l) returns once layer l is in
 * device memory. Host layers behave as in kvfs_load_start().
 * @return 0; -EINVAL (as kvfs_load_start(), a device the registered memory
 * is not on, a reserved field not 0); -ENOTSUP (device layers off the fast
 * path, or pages outside registered memory or with padded token rows);
 * -ENOMEM.
 */
int kvfs_load_start_ex(kvfs_match *m, size_t first, size_t n, const struct kvfs_kv_pages_ex *dst,
		       const uint32_t *block_ids, kvfs_load **out);

/*
 * As kvfs_save(), with pages that may be on a GPU. Device pages need the
 * fast path and memory registered with kvfs_dev_register() (K and V of a
 * layer in one registration, token rows unpadded); the daemon copies each
 * block out of device memory before this returns, so the pages are free
 * again then. Each block is stored before the next is asked for: unlike
 * kvfs_save(), nothing is queued or dropped.
 * @return the number of blocks stored or skipped as present; -EINVAL (as
 * kvfs_save(), host and device layers mixed); -ENOTSUP (device pages off the
 * fast path or outside registered memory); -E2BIG (more layers than one
 * request carries, about 2700); or the first block's error.
 */
long kvfs_save_ex(kvfs_ns *ns, const kvfs_key *parent, size_t first_index, const uint32_t *tokens,
		  size_t nblocks, const struct kvfs_key_extra *extra,
		  const struct kvfs_kv_pages_ex *src, const uint32_t *block_ids);

struct kvfs_ns_stats {
	uint64_t matches;        /* kvfs_match_prefix calls */
	uint64_t keys_asked;     /* keys passed to kvfs_match_prefix */
	uint64_t keys_matched;   /* of which matched */
	uint64_t loads;          /* kvfs_load_start calls */
	uint64_t blocks_loaded;  /* blocks copied into engine memory */
	uint64_t bytes_loaded;
	uint64_t load_errors;    /* loads that ended in an error (misses) */
	uint64_t saves_queued;   /* blocks accepted by kvfs_save */
	uint64_t saves_present;  /* blocks skipped: already cached */
	uint64_t saves_dropped;  /* blocks dropped: queue full */
	uint64_t saves_written;  /* blocks written */
	uint64_t save_errors;    /* blocks whose write failed */
	uint64_t reconnects;     /* fast path: daemon connections re-established */
	int fast;                /* 1 if on the fast path now */
};

void kvfs_ns_get_stats(kvfs_ns *ns, struct kvfs_ns_stats *st);

/* --- the cluster (DESIGN §9) ------------------------------------------------ */

#define KVFS_PREFETCH_WAIT 1u /* return once the daemon has done the work (at most 30 s) */

struct kvfs_prefetch_info {
	uint64_t queued;   /* on local NVMe or held by a peer: being brought into DRAM */
	uint64_t present;  /* in DRAM already (or being written) */
	uint64_t missing;  /* held nowhere in the cluster (or a malformed path) */
	uint64_t denied;   /* the caller could not read them */
	uint64_t dropped;  /* over the daemon's queue or byte bound (--prefetch-bytes) */
	uint64_t fetched;  /* with KVFS_PREFETCH_WAIT: brought from peers */
	uint64_t promoted; /* ... brought from local NVMe */
	uint64_t failed;   /* ... could not be brought in (a miss later) */
	uint64_t pending;  /* ... not done when the wait ended */
	int index_unreachable; /* the cluster index could not be asked: the rest count as missing */
};

/*
 * Prefetch: ask the daemon of the mount to bring files into its DRAM, from
 * local NVMe or from a peer that holds them, in the background, so a later
 * match or open finds them there. Bounded by the daemon (worker threads,
 * --prefetch-bytes); placement never evicts pinned or open files. Names
 * that exist nowhere are counted in info->missing, not an error; names the
 * caller could not read are counted in info->denied and not touched.
 * kvfs_prefetch() names blocks of @ns by key; kvfs_prefetch_paths() any
 * files, all on one mount (absolute or relative to the working directory).
 * @flags: 0 or KVFS_PREFETCH_WAIT. @info may be NULL.
 * @return the number of files queued; -EINVAL; -ENOTSUP (not on a kvfs
 * mount); -EXDEV (paths on different mounts); -ENOMEM; -errno of the
 * control file.
 */
long kvfs_prefetch(kvfs_ns *ns, const kvfs_key *keys, size_t n, unsigned flags,
		   struct kvfs_prefetch_info *info);
long kvfs_prefetch_paths(const char *const *paths, size_t n, unsigned flags,
			 struct kvfs_prefetch_info *info);

#define KVFS_NODE_ID_MAX 63

/* A node's cached prefix of a chain (kvfs_cluster_match). */
struct kvfs_node_prefix {
	char node[KVFS_NODE_ID_MAX + 1];
	uint32_t blocks;      /* it holds blocks [0, blocks) of the chain */
	uint32_t fast_blocks; /* of which in GPU or DRAM (its own, or lent by a peer) */
	char tier[8];         /* the slowest tier of that prefix: "gpu", "dram", "lent", "nvme" */
	int self;             /* the node this mount belongs to */
};

/*
 * KV-aware routing: which live nodes of the cluster hold the longest prefix
 * of the chain @keys (blocks of @ns), and how long, from the cluster index
 * in one pipelined round trip (asked by this mount's daemon, which keeps
 * the cluster token). Nodes holding none of it are left out; the rest come
 * sorted by blocks, then fast_blocks, descending, then this node before
 * others. Up to @max are stored.
 * kvfs_cluster_match_paths() takes the chain as paths on one mount.
 * @return the number of nodes; -EINVAL; -ENOTSUP (not on a kvfs mount, or
 * one in no cluster); -ENOTCONN (the cluster index is unreachable: the
 * local cache still works); -E2BIG (a chain over 1 MiB of paths).
 */
long kvfs_cluster_match(kvfs_ns *ns, const kvfs_key *keys, size_t n, struct kvfs_node_prefix *out,
			size_t max);
long kvfs_cluster_match_paths(const char *const *paths, size_t n, struct kvfs_node_prefix *out,
			      size_t max);

/*
 * Push: blocks sealed in @ns's directory from now on are also written into
 * the lent memory of cluster node @node (a replica there, in its index
 * entry), so a decode engine on @node finds them locally. NULL or "" stops
 * it. A push that cannot be placed (node dead or full) keeps the block here
 * and is counted by the daemon (push.fallbacks).
 * @return 0; -ENOTSUP (not a kvfs mount in a cluster); -EINVAL (bad node
 * id); -ENOSPC (too many push directories); -errno of setxattr.
 */
int kvfs_ns_push(kvfs_ns *ns, const char *node);

#ifdef __cplusplus
}
#endif
#endif
