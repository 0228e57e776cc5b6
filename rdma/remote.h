/*
 * rdma/remote.h — the remote tier: kvfs nodes lend DRAM to each other over a
 * fabric, and a cluster index in Redis says which node holds which file.
 * This header is the whole interface of rdma/ (DESIGN §5 "Remote").
 *
 * One `remote` per daemon. remote_open() brings up, in order:
 *
 *  - the fabric (libfabric 1.17, FI_EP_RDM on every provider: efa natively,
 *    verbs and tcp through ofi_rxm), with the daemon's DRAM arena registered
 *    for one-sided remote reads and a separate lent region (cfg.lend_bytes)
 *    that peers may write into (offload);
 *  - a progress thread that polls the completion queue (with tcp a peer's
 *    one-sided read of our memory only completes while we poll);
 *  - a server thread that answers peers: authentication, LOOKUP (lease a
 *    file through the daemon's remote_ops.lookup and hand out where its bytes
 *    are), OFFLOAD (take a copy into lent memory), FREE;
 *  - with cfg.cluster, an index thread that keeps this node's heartbeat and
 *    its published paths in Redis, and refreshes the membership table.
 *
 * Data path. remote_fetch() asks the index who holds a path, asks a live
 * holder to lease it, reads its bytes with fi_read straight into memory the
 * caller provides (remote_sink), and verifies them against the holder's
 * XXH3-64 checksum. remote_offload() writes a file into a peer's lent memory
 * with fi_writedata; the write is complete only when the target has seen
 * every remote-CQ-data immediate and verified the checksum. A cache may lose
 * a file; it never returns wrong bytes (DESIGN §7).
 *
 * Security. Every peer proves it knows the cluster token (a HELLO exchange,
 * HMAC-SHA256 challenge both ways) before any other request; every later
 * control message carries a MAC under a per-session key and a sequence
 * number (replays are refused). Remote memory keys, files and their owner
 * and mode (remote_attrs) are only handed to authenticated peers. What an
 * unauthenticated sender can cost a node is bounded: handshake replies never
 * wait on the address it names, and connections from hosts without a proven
 * session are capped and expire (cfg.max_unproven_conns, rdma/guard.c).
 *
 * Cluster index (Redis; <c> is cfg.cluster_name, default "kvfs"):
 *
 *   <c>:nodes              SET of node ids that ever joined
 *   <c>:node:<id>          STRING "v1 <fabric-addr-hex> <lend-total> <lend-free>
 *                          <provider> <boot-id, 16 hex>", SET with PX =
 *                          cfg.node_ttl_ms and refreshed every
 *                          cfg.heartbeat_ms. A member whose key has expired
 *                          is dead: its entries are ignored (not deleted: the
 *                          node clears them itself when it comes back). A new
 *                          boot id means the node restarted: sessions with it
 *                          are reopened. Nodes on another provider are ignored.
 *   <c>:f:<path>           HASH node id -> tier ("gpu", "dram", "nvme", "lent")
 *                          for every node that holds <path>; a lent copy and
 *                          the node's own file of the same path share the field
 *   <c>:held:<id>          SET of the paths node <id> published (to reconcile
 *                          after a reconnect or a restart)
 *   <c>:dirs               SET of every directory that is an ancestor of a
 *                          published path ("a", "a/b" for "a/b/c"); it only
 *                          grows (directories are never evicted)
 *
 * Paths are relative to the mount root, without a leading '/', 1..4095
 * bytes, no NUL. Updates are queued by remote_publish()/remote_unpublish()
 * and written by the index thread, batched and pipelined; the caller never
 * waits on Redis. When Redis is unreachable the node keeps serving, counts
 * errors, reconnects with backoff and then reconciles <c>:f and <c>:held with
 * its own set of published paths. An entry a holder denies is deleted when
 * found (stale repair).
 *
 * Threads: every function may be called from any thread, except that
 * remote_close() must not race with other calls. remote_publish(),
 * remote_unpublish(), remote_get_stats() and remote_peers() never block on
 * the network; remote_fetch/offload/free/locate/where/dir_exists wait on
 * the network, always bounded by cfg.timeout_ms (see each). Callbacks
 * (remote_ops) run on the library's server thread; remote_sink.prepare runs
 * on the calling thread.
 *
 * All functions returning int return 0 or a negative errno unless stated
 * otherwise.
 */
#ifndef KVFS_RDMA_REMOTE_H
#define KVFS_RDMA_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct remote remote;

#define REMOTE_NODE_ID_MAX 64 /* including the NUL */
#define REMOTE_PATH_MAX	   4096

/* Where a holder keeps a file (the value in <c>:f:<path>). */
enum remote_tier {
	REMOTE_TIER_GPU = 1,
	REMOTE_TIER_DRAM = 2,
	REMOTE_TIER_NVME = 3,
	REMOTE_TIER_LENT = 4, /* an offloaded copy in a peer's lent memory */
};

/* Who may read a file, as the node that holds it says: travels with the file
 * under the session MAC (in the fetch reply, and with an offloaded copy). */
struct remote_attr {
	uint32_t uid, gid;
	uint32_t mode; /* permission bits only (07777) */
};

#define REMOTE_ATTR_DIRS 32

struct remote_attrs {
	struct remote_attr file;
	/* The file's directories, from its parent up, as far as REMOTE_ATTR_DIRS
	 * reach (the mount root is not one of them). */
	uint32_t ndirs;
	struct remote_attr dirs[REMOTE_ATTR_DIRS];
};

/* A sealed file the daemon leases to a peer (filled by remote_ops.lookup). */
struct remote_file {
	uint64_t size;
	uint64_t checksum;	 /* XXH3-64 of the whole file (remote_checksum()) */
	const struct iovec *iov; /* its bytes in order, each inside the arena */
	uint32_t niov;		 /* sum of iov lengths == size */
	void *cookie;		 /* the daemon's, for release */
	/* iov is one mapping of a file of the daemon's DRAM store, not in the
	 * arena: register it for this lease (and only it) */
	bool own_mapping;
};

/* Server-side callbacks into the daemon. They run on the server thread, one
 * at a time; they must not block on I/O (no NVMe read, no Redis), or every
 * peer waits. */
struct remote_ops {
	/*
	 * A peer wants @path: lease it (it must stay in place, unchanged, until
	 * release) and describe it in @out. Only sealed files whose bytes are
	 * all in the arena, or in one mapping the daemon marks own_mapping,
	 * can be served (a hole or a page outside the arena otherwise makes
	 * the library refuse it with -EIO and release it at once).
	 * @return 0; -ENOENT if this node does not hold it (the asking node
	 * deletes the index entry); any other -errno (say -EAGAIN for a file
	 * held but not in DRAM now) refuses this request, and the asking node
	 * tries another holder.
	 */
	int (*lookup)(void *ctx, const char *path, struct remote_file *out);
	/* The lease taken by lookup ends (the peer is done, died or timed out). */
	void (*release)(void *ctx, struct remote_file *f);
	/*
	 * The owner and mode of @path and of its directories (remote_attrs).
	 * Called on the server thread after a successful lookup, and on the
	 * caller's thread by remote_offload(). NULL, or an error, sends
	 * root-only attributes (uid 0, gid 0, mode 0600, directories 0700): a
	 * file never travels more open than its holder can vouch for.
	 */
	int (*attrs)(void *ctx, const char *path, struct remote_attrs *out);
};

struct remote_config {
	const char *node_id;	  /* unique in the cluster: 1..63 of [A-Za-z0-9._-] */
	const char *fabric;	  /* "auto" (NULL), "verbs", "efa" or "tcp" */
	const char *listen;	  /* "HOST:PORT" ("[v6]:PORT"); port 0 = any; NULL = default */
	const char *cluster;	  /* "redis://HOST:PORT", "unix:/path" or a Redis Cluster,
				     "redis-cluster://HOST:PORT[,HOST:PORT...]"; NULL = no index */
	const char *cluster_name; /* key prefix in Redis; NULL = "kvfs" */
	const char *token_file;	  /* the shared secret, >= 16 bytes (final newline dropped) */
	const void *token;	  /* ... or the secret itself (token_file NULL) */
	size_t token_len;

	void *arena;	      /* the daemon's DRAM arena, registered for remote reads */
	uint64_t arena_bytes; /* (and used without copies as a fetch/offload buffer) */
	uint64_t lend_bytes;  /* DRAM lent to peers; 0 = none */
	uint32_t lend_page;   /* allocation unit of the lent region; 0 = 64 KiB */

	uint32_t timeout_ms; /* a transfer with no progress for this long fails; 0 = 2000 */
	/* Connections to the listen port from hosts without a proven session
	 * (rdma/guard.c): at most this many are kept (0 = 64; UINT32_MAX = no
	 * guard), each for at most unproven_conn_ms (0 = 10000). */
	uint32_t max_unproven_conns;
	uint32_t unproven_conn_ms;
	uint32_t heartbeat_ms; /* 0 = 1000 */
	uint32_t node_ttl_ms;  /* 0 = 3 * heartbeat_ms */

	const struct remote_ops *ops; /* NULL: serve lent copies only */
	void *ops_ctx;		      /* first argument of every remote_ops call */
};

/*
 * Open the remote tier (see the top of this file). Logs the provider chosen.
 * A cluster given but unreachable is not an error: the index thread keeps
 * retrying while the node serves locally.
 * @return 0; -EINVAL for a bad option (with a one-line reason in @err);
 * -ENODEV if no fabric provider fits; -EACCES/-ENOENT reading the token;
 * -ENOMEM; other -errno from the fabric.
 */
int remote_open(const struct remote_config *cfg, remote **out, char *err, size_t errlen);

/* Leave the cluster (delete the heartbeat key and this node's index entries,
 * best effort within timeout_ms), release every lease, stop the threads. */
void remote_close(remote *r);

const char *remote_node_id(const remote *r);
/* The provider in use, e.g. "tcp;ofi_rxm", "verbs;ofi_rxm", "efa". */
const char *remote_provider(const remote *r);

/* XXH3-64 over @n iovecs: the checksum remote_file and remote_offload use. */
uint64_t remote_checksum(const struct iovec *iov, int n);

/* --- index (never blocks on Redis) ---------------------------------------- */

/* This node now holds @path in @tier (after the file is sealed). Queued. */
void remote_publish(remote *r, const char *path, enum remote_tier tier);
/* This node no longer holds @path (evicted, unlinked, renamed away). Queued. */
void remote_unpublish(remote *r, const char *path);

/*
 * Wait until every update queued before this call is written to Redis.
 * @return 0; -ETIMEDOUT; -ENOTCONN if there is no index or Redis is down.
 */
int remote_flush(remote *r, uint32_t timeout_ms);

/* Per path of a batch lookup. */
struct remote_loc {
	uint16_t holders;    /* live nodes other than this one that hold it */
	uint16_t tiers;	     /* bit (1 << enum remote_tier) for each such holder */
	uint16_t self_tiers; /* the same bits for what the index says this node holds */
};

/*
 * Look up @n paths in one Redis round trip (prefix matching a chain).
 * Queries share one connection (serialised) with a timeout of
 * min(cfg.timeout_ms, 1 s); while Redis is down they fail at once, with
 * one reconnection attempt per second.
 * @return 0; -ENOTCONN if Redis is unreachable (@out is zeroed); -EINVAL.
 */
int remote_locate(remote *r, const char *const *paths, size_t n, struct remote_loc *out);

/* How much of a chain each live node holds (remote_match). */
struct remote_node_match {
	char node[REMOTE_NODE_ID_MAX];
	uint32_t blocks;	  /* the longest prefix of the chain it holds: paths [0, blocks) */
	uint32_t fast_blocks;	  /* of those, in GPU or DRAM (its own or lent) */
	enum remote_tier slowest; /* the slowest tier in that prefix */
	bool self;
};

/*
 * For a chain of @n paths (a prompt's blocks, in order), which live nodes
 * hold a prefix of it and how long: one pipelined index round trip for the
 * whole chain. A node counts a path if the index names it as a holder in
 * any tier (a lent copy included). Nodes whose prefix is empty are left out;
 * the rest are sorted by blocks, then fast_blocks, descending, then this
 * node first, then by id.
 * @return the number of nodes (up to @max stored); -ENOTCONN if the index
 * is unreachable; -EINVAL.
 */
int remote_match(remote *r, const char *const *paths, size_t n, struct remote_node_match *out,
		 int max);

/* Is @dir an ancestor of some published path? @return 1, 0, or -ENOTCONN. */
int remote_dir_exists(remote *r, const char *dir);

struct remote_holder {
	char node[REMOTE_NODE_ID_MAX];
	enum remote_tier tier;
	bool alive; /* heartbeat not expired */
	bool self;
};

/* Every node the index names for @path (`kvfsctl where`), dead ones too.
 * @return the number of holders (up to @max stored); -ENOTCONN. */
int remote_where(remote *r, const char *path, struct remote_holder *out, int max);

struct remote_peer {
	char node[REMOTE_NODE_ID_MAX];
	bool alive;
	bool self;
	uint64_t lend_total, lend_free;
};

/* The membership table as of the last refresh (`kvfsctl status`).
 * @return the number of nodes (up to @max stored). */
int remote_peers(remote *r, struct remote_peer *out, int max);

/* --- client --------------------------------------------------------------- */

/* Where a fetch puts the bytes. */
struct remote_sink {
	/*
	 * The holder's file has @size bytes with @checksum: fill @iov (at most
	 * @max entries) with exactly @size bytes of destination. Memory inside
	 * the arena is used without copies; other memory is registered for the
	 * transfer. May be called again for another holder after a failed
	 * attempt; the new call supersedes the previous one. @return the number
	 * of iovecs, or -errno to abort the fetch with that error.
	 */
	int (*prepare)(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max);
	void *ctx;
};

struct remote_fetch_info {
	char node[REMOTE_NODE_ID_MAX]; /* the holder that served it */
	enum remote_tier tier;
	uint64_t size;
	uint64_t checksum;
	uint32_t attempts;	   /* holders tried */
	struct remote_attrs attrs; /* owner and mode at the holder (checked: mode <= 07777) */
};

/*
 * Fetch @path from a live peer that holds it (never from this node), into
 * the memory @sink provides, verified against its checksum. Holders are
 * tried in order of tier (dram, lent, nvme), at most three; one that fails
 * is skipped for cfg.timeout_ms. Bounded: one Redis round trip, then each
 * request or transfer step fails after cfg.timeout_ms without progress, and
 * no holder is tried once cfg.timeout_ms has passed.
 * @return 0 (bytes in place, @info filled if not NULL); -ENOENT if no live
 * holder has it (stale entries found on the way are repaired); -EBADMSG if
 * the bytes failed their checksum at every holder tried; -ETIMEDOUT or
 * -ECONNRESET if the holders failed in transit; -EACCES if they refused our
 * token; -ENOTCONN if the index is unreachable; the error of prepare.
 * After a failure the destination may hold garbage.
 */
int remote_fetch(remote *r, const char *path, const struct remote_sink *sink,
		 struct remote_fetch_info *info);

/*
 * This node's own lent memory may hold @path (a peer offloaded it here):
 * move that copy into the memory @sink provides, checked against its
 * checksum, and drop it from the lent region and the index (the caller
 * makes it a file of its own and publishes that). @sink->prepare runs on
 * the server thread. Never touches the network.
 * @return 0 (@info filled if not NULL, tier REMOTE_TIER_LENT); -ENOENT if
 * there is no such copy; -EBADMSG if it failed its checksum (dropped);
 * -EINVAL; the error of prepare.
 */
int remote_take_lent(remote *r, const char *path, const struct remote_sink *sink,
		     struct remote_fetch_info *info);

/* remote_fetch into one buffer of @cap bytes; @size gets the file's size.
 * @return as remote_fetch; -EFBIG (and *size set) if @cap is too small. */
int remote_fetch_buf(remote *r, const char *path, void *buf, size_t cap, uint64_t *size);

/*
 * Offload: place a copy of @path (the bytes in @src, @checksum as from
 * remote_checksum()) in the lent memory of a live peer chosen by consistent
 * hashing on the path among those with room; when every lender is full,
 * among those whose lent memory is large enough, and the one chosen drops
 * its least recently used copies (unleased; unpublished) to make room.
 * Lent memory is a cache like any tier. Returns once the peer has
 * received and verified every byte; the peer then publishes the copy in
 * the index (tier "lent"). The caller may drop its own copy and call
 * remote_unpublish() afterwards.
 * @return 0 (also if the peer already had it); -ENOSPC if no live peer has
 * room; -EINVAL for an empty file or @n < 1; -EFBIG if @src is too
 * fragmented (more than 65535 writes); -ETIMEDOUT, -ECONNRESET, -EACCES;
 * -EBADMSG if the peer found the bytes corrupt.
 */
int remote_offload(remote *r, const char *path, const struct iovec *src, int n, uint64_t checksum);

/*
 * Push: place a copy of @path in the lent memory of the named live peer
 * @node (a replica on a chosen node, published by it in the index as
 * "lent"), as remote_offload does for the ring's choice. Never makes room
 * by dropping the peer's other copies: a push that does not fit fails.
 * @return 0; -EHOSTDOWN if @node is not a live peer (unknown, dead, or this
 * node); -ENOSPC if its free lent memory is smaller than the file; -EINVAL;
 * the transfer's errors as remote_offload.
 */
int remote_push(remote *r, const char *node, const char *path, const struct iovec *src, int n,
		uint64_t checksum);

/*
 * Drop every offloaded copy of @path in the cluster (the file was deleted).
 * @return 0 (also if there was none); -ENOTCONN; -ETIMEDOUT.
 */
int remote_free(remote *r, const char *path);

/* --- leaving gracefully (drain) ------------------------------------------- */

/*
 * Take no more offloads, for good: the heartbeat says this node lends
 * nothing from now on (written at once), so peers drop it from placement at
 * their next membership refresh; OFFLOAD requests still arriving are
 * refused (the peer tries the next lender). Fetches and serving go on.
 */
void remote_set_draining(remote *r);
bool remote_draining(remote *r);

/* The paths of the lent copies this node holds (peers' files), each
 * malloc'd, in a malloc'd array: free with remote_free_paths().
 * @return their number, or -ENOMEM. */
int remote_lent_paths(remote *r, char ***out);
void remote_free_paths(char **paths, size_t n);

/*
 * Hand the lent copy of @path over to another live lender (only while
 * draining): it leaves our lent memory and the index, and is offloaded to
 * the peer the ring picks for it, which publishes it. A lookup meanwhile
 * misses. @bytes (may be NULL) gets its size.
 * @return 0; -EINVAL if not draining; -ENOENT if there is no such copy;
 * -EBADMSG if it failed its checksum here (dropped); the errors of
 * remote_offload() (-ENOSPC: no peer has room), after which the copy is
 * gone, as if evicted.
 */
int remote_hand_over_lent(remote *r, const char *path, uint64_t *bytes);

/* --- stats ---------------------------------------------------------------- */

struct remote_stats {
	const char *provider;
	uint64_t peers_alive; /* live nodes other than this one */
	uint64_t reads;	      /* fetches that returned bytes */
	uint64_t read_bytes;
	uint64_t read_failures; /* fetches that failed (not counting -ENOENT) */
	uint64_t served;	/* leases granted to peers */
	uint64_t served_bytes;	/* bytes of the files leased */
	uint64_t offloads;	/* copies we placed on peers */
	uint64_t offload_bytes;
	uint64_t offloads_received; /* copies peers placed here */
	uint64_t lent_evictions;    /* of those, dropped (least recently used) for newer ones */
	uint64_t lend_capacity;	    /* bytes */
	uint64_t lend_used;
	uint64_t checksum_failures; /* fetched or offloaded bytes that failed verification */
	uint64_t timeouts;	    /* transfers or requests that ran out of time */
	uint64_t conn_errors;	    /* transfers failed by the fabric (peer gone) */
	uint64_t auth_refused;	    /* peers we refused (wrong token) */
	uint64_t auth_rejected;	    /* peers that refused us, or failed to prove the token */
	uint64_t bad_messages;	    /* malformed or unauthenticated messages dropped */
	uint64_t redis_errors;
	uint64_t redis_reconnects;
	uint64_t resyncs;	      /* full reconciliations of our entries */
	uint64_t index_lookups;	      /* paths looked up */
	uint64_t index_updates;	      /* publish/unpublish written to Redis */
	uint64_t stale_repaired;      /* entries a holder denied, removed */
	uint64_t index_redirects;     /* Redis Cluster MOVED/ASK replies followed */
	uint64_t index_map_refreshes; /* Redis Cluster slot map reloads */
	uint64_t replays;	      /* MACed messages refused: their sequence number was seen */
	uint64_t handshakes_dropped;  /* handshake replies to addresses that never took them */
	uint64_t conns_cut;	      /* connections closed that proved nothing in time */
};

void remote_get_stats(remote *r, struct remote_stats *st);

#endif
