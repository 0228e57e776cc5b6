/*
 * rdma/rdma_i.h — private to rdma/ (and its white-box unit tests): the wire
 * format of the control protocol, the fabric wrapper, the lent-memory
 * allocator, the consistent-hash ring, the index's key schema, and the
 * `struct remote` that ties them together. The daemon includes remote.h only.
 *
 * Threads inside one `remote`:
 *   progress  polls the CQ: completes RMA transfers and sends, delivers
 *             replies to waiting client calls, queues requests and remote
 *             write immediates for the server thread, reposts receives.
 *   server    owns all server state (sessions, leases, offload tickets,
 *             lent copies, the lent allocator); calls remote_ops.
 *   index     owns the Redis connection for updates and heartbeats; refreshes
 *             the membership table and the hash ring.
 *   callers   remote_fetch/offload/free/locate run on the caller's thread;
 *             they post fabric operations and wait (bounded) on condvars.
 *
 * Locks (never held across a wait on the network, except q_lock which only
 * guards the query connection to Redis): peer_lock (membership, ring),
 * peer->sess_lock (one handshake per peer at a time), av_lock, pend_lock,
 * send_lock, xfer_lock, work_lock, iq_lock, pub_lock, guard_lock (a leaf),
 * peer->seq_lock (a request is numbered and posted under it). No two are
 * nested except peer->sess_lock -> (peer_lock | pend_lock | send_lock |
 * av_lock | seq_lock), peer->seq_lock -> (send_lock | av_lock), peer_lock ->
 * av_lock, and q_lock -> peer_lock.
 */
#ifndef KVFS_RDMA_I_H
#define KVFS_RDMA_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <stdbool.h>
#include <stdint.h>

/* libfabric and core/util.h both define container_of; rdma/ uses neither,
 * so whichever comes first loses. */
#undef container_of
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#undef container_of

#include "rdma/remote.h"

struct redisContext;

/* --- limits --------------------------------------------------------------- */

#define RDMA_MSG_SIZE	    8192 /* every control message fits one buffer */
#define RDMA_HDR_SIZE	    64
#define RDMA_ADDR_MAX	    64 /* fabric address bytes (fi_getname) */
#define RDMA_MAC_LEN	    16 /* truncated HMAC-SHA256 per message */
#define RDMA_NONCE_LEN	    32
#define RDMA_RUNS_PER_MSG   480 /* FILE: runs and attributes fill one buffer */
#define RDMA_NRECV	    64
#define RDMA_NSEND	    64
#define RDMA_MAX_PEERS	    256
#define RDMA_MAX_AV	    512
#define RDMA_MAX_SESSIONS   256
#define RDMA_MAX_LEASES	    1024
#define RDMA_MAX_TICKETS    1024 /* power of two: ticket = gen << 10 | slot */
#define RDMA_MAX_PENDING    256
#define RDMA_MAX_WORK	    1024       /* queued server work items */
#define RDMA_CHUNK	    (1u << 20) /* one fabric operation moves at most this */
#define RDMA_QD		    4	       /* operations in flight per transfer */
#define RDMA_SPIN_NS	    200000ull  /* progress polls this long after a completion */
#define RDMA_WARM_LEN	    4096
#define RDMA_MAX_WRITES	    65535 /* writes per offload: 16 bits of the immediate */
#define RDMA_MIN_TOKEN	    16
#define RDMA_PROV_MAX	    32
#define RDMA_CLIENT_IDLE_NS (120ull * 1000000000ull) /* < the server's 300 s */

/* What an outsider may hold (server.c, xfer.c, guard.c). */
#define RDMA_MAX_AV_UNPROVEN 32	 /* address-vector slots for addresses not yet proven */
#define RDMA_HS_OUTBOX	     32	 /* handshake replies waiting for a connection */
#define RDMA_REPLAY_WINDOW   64	 /* sequence numbers accepted out of order */
#define RDMA_GUARD_HOSTS     512 /* hosts vouched for (guard.c) */

/* --- wire format (proto.c) -------------------------------------------------
 *
 * Every message: a 64-byte header, then a payload whose layout depends on
 * the type. All integers little-endian.
 *
 *   0  u32 magic "KVRM"     4  u16 version (2)     6  u16 type
 *   8  u32 payload length  12  i32 status (0, or -errno in a reply)
 *  16  u64 request id      24  u64 session id
 *  32  u8  mac[16]: HMAC-SHA256(session key, message with mac zeroed), or
 *          zero for the handshake messages (HELLO, CHALLENGE, PROVE,
 *          REFUSED)
 *  48  u64 seq: in a MACed message, its number in the session and direction
 *          (1, 2, ...; under the MAC); the receiver refuses a number it has
 *          seen, or one more than RDMA_REPLAY_WINDOW below the highest
 *          (a replay). Zero in handshake messages.
 *  56  u8  reserved[8], zero
 *
 * Payloads (offsets from the payload start):
 *   HELLO      node[64] (NUL-padded) | u32 addr_len | addr[64] | nonce[32]
 *   CHALLENGE  node[64] | nonce[32] | mac[32]
 *   PROVE      mac[32]
 *   WELCOME    u64 warm_addr | u64 warm_key | u32 warm_len | u32 0
 *   LOOKUP, FREE
 *              u64 size | u64 checksum | u32 path_len | u32 0 | path bytes
 *              (size and checksum zero)
 *   OFFLOAD    the same, then ATTRS (the file's owner and mode, kept with
 *              the lent copy and served with it)
 *   RUNS, RELEASE, DONE
 *              u64 lease (or ticket) | u32 first | u32 0
 *   FILE, GRANT
 *              u64 lease (or ticket) | u64 size | u64 checksum | u64 key |
 *              u32 total runs | u32 first | u32 n | u8 tier | u8 pad[3] |
 *              ATTRS | n * (u64 addr | u64 len)
 *              (ATTRS all zero in a GRANT)
 *   ATTRS      u32 uid | u32 gid | u32 mode (permission bits, <= 07777) |
 *              u32 ndirs (<= REMOTE_ATTR_DIRS) | ndirs * (u32 uid | u32 gid |
 *              u32 mode): the file's, then its directories' from the parent
 *              up
 *   STATUS, REFUSED
 *              empty; status < 0
 *
 * Decoding checks every field: magic, version, a known type, the exact
 * length for the type, zero padding and reserved bytes, status in range,
 * node ids and paths well formed, run counts consistent.
 */

#define RDMA_MAGIC	   0x4d52564bu /* "KVRM" */
#define RDMA_PROTO_VERSION 2

enum rdma_msg_type {
	RDMA_MSG_HELLO = 1, /* C->S: who I am, where to answer, a nonce */
	RDMA_MSG_CHALLENGE, /* S->C: a nonce, proof that S knows the token */
	RDMA_MSG_PROVE,	    /* C->S: proof that C knows the token */
	RDMA_MSG_WELCOME,   /* S->C: session open (MACed), a warm-up region */
	RDMA_MSG_REFUSED,   /* S->C: handshake refused */
	RDMA_MSG_LOOKUP,    /* C->S: lease a path */
	RDMA_MSG_FILE,	    /* S->C: a lease: size, checksum, runs */
	RDMA_MSG_RUNS,	    /* C->S: more runs of a lease, from index first */
	RDMA_MSG_RELEASE,   /* C->S: lease done (no reply) */
	RDMA_MSG_OFFLOAD,   /* C->S: take a copy of path (size, checksum) */
	RDMA_MSG_GRANT,	    /* S->C: ticket and lent runs to write */
	RDMA_MSG_DONE,	    /* S->C: ticket committed (status 0) or not; FREE done */
	RDMA_MSG_FREE,	    /* C->S: drop the lent copy of path */
	RDMA_MSG_STATUS,    /* S->C: a request failed with status */
	RDMA_MSG_TYPE_MAX,
};

struct rdma_run {
	uint64_t addr; /* remote address: virtual, or offset in the region */
	uint64_t len;
};

struct rdma_msg {
	uint16_t type;
	int32_t status;
	uint64_t req_id;
	uint64_t session;
	uint64_t seq; /* set by the sender of a MACed message */
	union {
		struct {
			char node[REMOTE_NODE_ID_MAX];
			uint32_t addr_len;
			uint8_t addr[RDMA_ADDR_MAX];
			uint8_t nonce[RDMA_NONCE_LEN];
		} hello;
		struct {
			char node[REMOTE_NODE_ID_MAX];
			uint8_t nonce[RDMA_NONCE_LEN];
			uint8_t mac[32];
		} challenge;
		struct {
			uint8_t mac[32];
		} prove;
		struct {
			uint64_t warm_addr, warm_key;
			uint32_t warm_len;
		} welcome;
		struct {
			uint64_t size, checksum;
			uint32_t path_len;
			char path[REMOTE_PATH_MAX]; /* NUL-terminated once decoded */
			struct remote_attrs attrs;  /* OFFLOAD */
		} path;
		struct {
			uint64_t lease;
			uint32_t first;
		} ref;
		struct {
			uint64_t lease, size, checksum, key;
			uint32_t total, first, n;
			uint8_t tier;
			struct remote_attrs attrs; /* FILE */
			struct rdma_run run[RDMA_RUNS_PER_MSG];
		} file;
	} u;
};

/* Encode @m into @buf (mac zero). @return the length, or -EINVAL if @m
 * itself is malformed (the same checks as decoding). */
int rdma_msg_encode(const struct rdma_msg *m, uint8_t *buf, size_t cap);
/* @return 0; -EBADMSG for anything malformed; -EPROTONOSUPPORT for
 * another version. */
int rdma_msg_decode(const uint8_t *buf, size_t len, struct rdma_msg *m);
/* Set / check the mac field of an encoded message. */
void rdma_msg_sign(uint8_t *buf, size_t len, const uint8_t key[32]);
bool rdma_msg_verify(const uint8_t *buf, size_t len, const uint8_t key[32]);
/* Is the mac field all zero (an unauthenticated message)? */
bool rdma_msg_unsigned(const uint8_t *buf, size_t len);

/* The sequence numbers one side of a session has accepted: the highest,
 * and a bitmap of the RDMA_REPLAY_WINDOW below it (bit i = top - i). */
struct rdma_replay {
	uint64_t top;
	uint64_t seen;
};

/* Accept @seq once (and record it): false for 0, a number already seen, or
 * one that fell out of the window (a replay, or too late to tell). */
bool rdma_replay_accept(struct rdma_replay *w, uint64_t seq);
const char *rdma_msg_name(unsigned type);

/* Handshake proofs: HMAC-SHA256(token, label | nonce_c | nonce_s | sid |
 * server node | client node), label "kvfs-hello-s" or "kvfs-hello-c". */
void rdma_hello_mac(const uint8_t *token, size_t token_len, bool server,
		    const uint8_t nonce_c[RDMA_NONCE_LEN], const uint8_t nonce_s[RDMA_NONCE_LEN],
		    uint64_t sid, const char *server_node, const char *client_node,
		    uint8_t out[32]);
/* Session key: HMAC-SHA256(token, "kvfs-session" | nonce_c | nonce_s | sid). */
void rdma_session_key(const uint8_t *token, size_t token_len, const uint8_t nonce_c[RDMA_NONCE_LEN],
		      const uint8_t nonce_s[RDMA_NONCE_LEN], uint64_t sid, uint8_t out[32]);
bool rdma_node_id_valid(const char *id);
/* 1..4095 bytes, no NUL, no leading '/', no empty, "." or ".." component. */
bool rdma_path_valid(const char *path, size_t len);

/* --- fabric (fabric.c) ---------------------------------------------------- */

struct rdma_fab {
	struct fi_info *info;
	struct fid_fabric *fabric;
	struct fid_domain *domain;
	struct fid_av *av;
	struct fid_cq *cq;
	struct fid_ep *ep;
	/* What fi_getinfo returned, not what we hinted (DESIGN §5). */
	bool virt_addr;		   /* FI_MR_VIRT_ADDR: remote addresses are pointers */
	bool prov_key;		   /* FI_MR_PROV_KEY: the provider picks MR keys */
	bool rx_cq_data;	   /* FI_RX_CQ_DATA: an immediate consumes a receive */
	bool can_wait;		   /* the CQ has a wait object (fi_cq_sread) */
	_Atomic uint64_t next_key; /* requested keys when !prov_key */
	uint8_t name[RDMA_ADDR_MAX];
	size_t name_len;
	char prov[RDMA_PROV_MAX];
};

struct rdma_mr {
	struct fid_mr *mr;
	uint8_t *base;
	uint64_t len;
	void *desc;
	uint64_t key;
};

/* Open the endpoint on @fabric ("auto", "verbs", "efa", "tcp") bound to
 * @listen ("HOST:PORT" or NULL). @return 0, -EINVAL, -ENODEV, -errno. */
int rdma_fab_open(struct rdma_fab *f, const char *fabric, const char *listen, char *err,
		  size_t errlen);
void rdma_fab_close(struct rdma_fab *f);
/* Register [base, base+len) for @access (FI_READ, FI_REMOTE_READ, ...). */
int rdma_mr_reg(struct rdma_fab *f, void *base, uint64_t len, uint64_t access, struct rdma_mr *mr);
void rdma_mr_close(struct rdma_mr *mr);

static inline bool rdma_mr_has(const struct rdma_mr *m, const void *p, uint64_t len)
{
	const uint8_t *b = p;

	return m->mr && b >= m->base && len <= m->len && (uint64_t)(b - m->base) <= m->len - len;
}

/* The address a peer names @p by in its RMA operations on @m. */
static inline uint64_t rdma_mr_raddr(const struct rdma_fab *f, const struct rdma_mr *m,
				     const void *p)
{
	if (f->virt_addr)
		return (uint64_t)(uintptr_t)p;
	return (uint64_t)((const uint8_t *)p - m->base);
}

/* The local pointer for remote address @raddr of @len bytes in @m, or
 * NULL if it is not inside @m. */
static inline uint8_t *rdma_mr_local(const struct rdma_fab *f, const struct rdma_mr *m,
				     uint64_t raddr, uint64_t len)
{
	uint64_t off = f->virt_addr ? raddr - (uint64_t)(uintptr_t)m->base : raddr;

	if (f->virt_addr && raddr < (uint64_t)(uintptr_t)m->base)
		return NULL;
	if (off > m->len || len > m->len - off)
		return NULL;
	return m->base + off;
}

/* --- lent memory allocator (lend.c) -----------------------------------------
 * A bitmap of fixed-size pages; an allocation is a short list of runs of
 * contiguous pages, first fit. Used by the server thread only. */

struct rdma_lend_run {
	uint32_t first, npages;
};

struct rdma_lend {
	uint8_t *base;
	uint64_t bytes;
	uint32_t page;
	uint32_t npages;
	uint32_t nfree;
	uint64_t *bits; /* set = in use */
};

int rdma_lend_init(struct rdma_lend *l, void *base, uint64_t bytes, uint32_t page);
void rdma_lend_fini(struct rdma_lend *l);
/* Pages for @size bytes as at most @max runs. @return the number of runs,
 * -ENOSPC (not enough free pages, or too fragmented), -EINVAL (@size 0). */
int rdma_lend_alloc(struct rdma_lend *l, uint64_t size, struct rdma_lend_run *runs, int max);
void rdma_lend_free(struct rdma_lend *l, const struct rdma_lend_run *runs, int n);

/* --- consistent hashing (chash.c) -------------------------------------------
 * A ring of virtual nodes: node i owns the points XXH3-64("<id>#<v>") for v in
 * [0, vnodes). A key goes to the first point at or after XXH3-64(key),
 * clockwise; candidates in ring order are the next distinct nodes. */

struct rdma_chash_pt {
	uint64_t h;
	uint32_t node;
};

struct rdma_chash {
	struct rdma_chash_pt *pts;
	uint32_t npts;
	uint32_t nnodes;
};

#define RDMA_CHASH_VNODES 128

int rdma_chash_build(struct rdma_chash *c, const char *const *ids, uint32_t n, uint32_t vnodes);
void rdma_chash_free(struct rdma_chash *c);
/* Up to @max distinct nodes in ring order from @key's point for which
 * @ok(ctx, node) holds (@ok NULL = all). @return how many were stored. */
uint32_t rdma_chash_pick(const struct rdma_chash *c, const void *key, size_t len,
			 bool (*ok)(void *ctx, uint32_t node), void *ctx, uint32_t *out,
			 uint32_t max);

/* --- the connection to the index (rcluster.c) ------------------------------ */

/* A single Redis server or a Redis Cluster behind one pipeline interface;
 * see the top of rcluster.c. Not thread-safe. */
struct rdma_rconn;
struct redisReply;

#define RDMA_RCONN_MAX_NODES 64

/* Counters; several connections may share one (relaxed atomics). */
struct rdma_rconn_stats {
	_Atomic uint64_t moved;		/* MOVED redirects followed */
	_Atomic uint64_t asked;		/* ASK redirects followed */
	_Atomic uint64_t refreshes;	/* slot map reloads (CLUSTER SLOTS) */
	_Atomic uint64_t conn_failures; /* connections that failed or broke */
	_Atomic uint64_t undelivered;	/* commands unanswered at an exec's deadline */
};

/* CRC16-XMODEM (Redis Cluster's key hash). */
uint16_t rdma_crc16(const void *buf, size_t len);
/* The hash slot (0..16383) of a key, honouring {hash tags}. */
uint16_t rdma_key_slot(const char *key, size_t len);

/* One slot range of a CLUSTER SLOTS reply: slots first..last (within
 * 0..16383) served by the master at host:port; host_len 0 when the node
 * did not know its own address (it is then the node that was asked). */
struct rdma_slot_range {
	uint16_t first, last;
	const char *host; /* host_len bytes, not NUL-terminated */
	size_t host_len;
	int port; /* 1..65535 */
};
/* Walk a CLUSTER SLOTS reply (pure): each well-formed range, clipped to
 * the 16384 slots, goes to @fn; malformed ones are skipped. tests/fuzz/
 * fuzz_index.c feeds it replies hiredis parsed.
 * @return the number of ranges passed on, or -EBADMSG if @rep is not an
 * array. */
int rdma_slots_reply(const struct redisReply *rep,
		     void (*fn)(void *ctx, const struct rdma_slot_range *r), void *ctx);
/* Is @url one of redis://HOST:PORT, unix:PATH,
 * redis-cluster://HOST:PORT[,HOST:PORT...]? @return 0 or -EINVAL (a
 * one-line reason in @err). */
int rdma_rconn_check_url(const char *url, char *err, size_t errlen);
/* Connect (cluster: to the first seed that answers, and load the slot map);
 * every network step is bounded by @timeout_ms. @return 0; -EINVAL (bad
 * URL); -ENOTCONN (unreachable; a cluster node that is not in cluster mode);
 * -ENOMEM. @st: counters to add to (NULL: the connection's own). */
int rdma_rconn_open(const char *url, uint32_t timeout_ms, struct rdma_rconn_stats *st,
		    struct rdma_rconn **out);
void rdma_rconn_close(struct rdma_rconn *rc);
bool rdma_rconn_is_cluster(const struct rdma_rconn *rc);
/* Tests: point every slot at the next master of the map (a stale map). */
void rdma_rconn_debug_rotate_map(struct rdma_rconn *rc);
/* Queue one command; its key, if any, is argv[1]. @return 0 or -ENOMEM. */
int rdma_rconn_append(struct rdma_rconn *rc, int argc, const char **argv, const size_t *lens);
/* Commands queued and not yet executed. */
size_t rdma_rconn_queued(const struct rdma_rconn *rc);
/*
 * Send every queued command and collect the replies: (*@out)[i] answers
 * command i, *@n of them; the caller owns them (rdma_rconn_free_replies).
 * The queue is empty afterwards. Within timeout_ms a cluster follows
 * MOVED/ASK and waits out a failover.
 * @return 0; -EIO if some commands got no reply (their entries are NULL;
 * single server: the connection broke, and is reopened by the next exec);
 * -ENOMEM (nothing sent, *@n = 0).
 */
int rdma_rconn_exec(struct rdma_rconn *rc, struct redisReply ***out, size_t *n);
void rdma_rconn_free_replies(struct redisReply **reps, size_t n);
/* Drop the queued commands unsent. */
void rdma_rconn_discard(struct rdma_rconn *rc);

/* --- index key schema and records (index.c) ------------------------------- */

struct rdma_node_rec {
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t addr_len;
	uint64_t lend_total, lend_free;
	char prov[RDMA_PROV_MAX];
	uint64_t boot; /* random per remote_open: a restart is a new incarnation */
};

/* "v1 <hex addr> <lend total> <lend free> <provider> <boot, 16 hex>".
 * @return length, -ENOSPC, -EINVAL. */
int rdma_node_rec_format(char *buf, size_t cap, const struct rdma_node_rec *rec);
/* @return 0, or -EBADMSG for anything else than the format above. */
int rdma_node_rec_parse(const char *s, size_t len, struct rdma_node_rec *rec);
/* "<prefix>:<kind><arg>", e.g. ("kvfs", "f:", "a/b") -> "kvfs:f:a/b".
 * @return length, -ENAMETOOLONG if it does not fit @cap. */
int rdma_key(char *buf, size_t cap, const char *prefix, const char *kind, const char *arg);
const char *rdma_tier_name(int tier);
/* @return the enum remote_tier, or -EINVAL. */
int rdma_tier_parse(const char *s, size_t len);
/* "a/b/c" -> "a", "a/b" into @out (@max entries, each a prefix length of
 * @path). @return the number of ancestors. */
int rdma_path_ancestors(const char *path, size_t len, uint32_t *out, int max);

int rdma_index_init(remote *r);
void rdma_index_free(remote *r);
int rdma_index_start(remote *r);
void rdma_index_stop(remote *r);
void rdma_index_queue(remote *r, int kind, const char *path, int tier, const char *node);
/* One holder of path number @i of a batch (rdma_index_holders). */
typedef void (*rdma_holder_fn)(void *ctx, size_t i, const char *node, int tier);
struct redisReply;
/* The holders in one HGETALL reply (for path number @i): pairs of a node id
 * and a tier name; @fn is called for each well-formed pair, the others are
 * skipped. Pure: tests/fuzz/fuzz_index.c feeds it replies hiredis parsed.
 * @return how many pairs went to @fn, or -EBADMSG if @rep is not an array
 * of pairs. */
int rdma_holders_reply(const struct redisReply *rep, size_t i, rdma_holder_fn fn, void *ctx);
/* Look up the holders of @n paths in one pipelined round trip on the query
 * connection; @fn is called for each well-formed entry. @return 0 or
 * -ENOTCONN (Redis unreachable; counted). */
int rdma_index_holders(remote *r, const char *const *paths, size_t n, rdma_holder_fn fn, void *ctx);

enum { RDMA_IOP_PUB, RDMA_IOP_UNPUB, RDMA_IOP_REPAIR };

/* --- the instance --------------------------------------------------------- */

enum { RDMA_OP_RECV = 1, RDMA_OP_SEND, RDMA_OP_RMA };

/* The context of one posted fabric operation. */
struct rdma_op {
	struct fi_context2 fctx; /* first: the FI_CONTEXT/FI_CONTEXT2 modes */
	uint8_t kind;
	uint32_t idx;	     /* RECV/SEND: buffer index; RMA: slot in its xfer */
	uint64_t req_id;     /* SEND: the request it carries, 0 if none */
	uint64_t bytes;	     /* RMA */
	uint64_t seq;	     /* RMA: order of posting within its xfer */
	struct rdma_xfer *x; /* RMA */
};

/* A transfer (one fetch or offload attempt): the caller posts up to
 * RDMA_QD operations and waits; each completion updates it. Heap allocated
 * and reference counted: an operation the caller gave up on may complete
 * later. */
struct rdma_xfer {
	struct rdma_xfer *prev, *next; /* r->xfers, for freeing stragglers at close */
	remote *r;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	_Atomic uint32_t refs;
	uint32_t inflight;
	int err;
	uint64_t done_bytes;
	uint64_t last_ns;   /* time of the last completion (progress) */
	uint64_t posted;    /* operations posted; each has a sequence number */
	uint64_t base;	    /* sequence number of bit 0 of done_mask */
	uint64_t done_mask; /* operations in [base, base + 64) that completed */
	uint32_t free_top;
	uint32_t free_slots[RDMA_QD];
	struct rdma_op ops[RDMA_QD];
};

struct rdma_peer {
	char id[REMOTE_NODE_ID_MAX];
	uint8_t addr[RDMA_ADDR_MAX]; /* guarded by r->peer_lock, with addr_gen */
	uint32_t addr_len;
	uint64_t boot;
	uint32_t addr_gen; /* bumped when the address or incarnation changes */
	bool known;	   /* slot in use */
	bool alive;
	bool self;
	bool fixed; /* added by a test, never expires */
	uint64_t lend_total, lend_free;
	_Atomic uint64_t down_until; /* mono ns: skipped until then */

	pthread_mutex_t sess_lock; /* one handshake at a time; guards below */
	bool open;
	uint32_t sess_gen;	    /* addr_gen the session was opened with */
	_Atomic uint64_t last_used; /* mono ns of the last call on the session */
	uint64_t sid;
	uint8_t key[32];
	uint64_t warm_addr, warm_key;
	uint32_t warm_len;

	pthread_mutex_t seq_lock; /* the session's numbering; held while a request is posted */
	uint64_t seq_sid;	  /* the session the two below belong to */
	uint64_t tx_seq;	  /* of our last request */
	struct rdma_replay rx;	  /* the peer's replies seen */
};

struct rdma_av_ent {
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t len;
	fi_addr_t fa;
	bool used;
	bool proven; /* a peer's (from the index, or one that proved the token) */
};

struct rdma_pending {
	uint64_t req_id; /* 0 = free */
	bool armed;	 /* waiting for a reply */
	bool done;
	int err;	/* the send failed */
	uint8_t *reply; /* RDMA_MSG_SIZE, the waiter's */
	uint32_t reply_len;
	pthread_cond_t cond;
};

struct rdma_work {
	struct rdma_work *next;
	uint8_t kind; /* 0 = message, 1 = immediate, 2 = a local take (server.c) */
	uint32_t len;
	uint64_t imm;
	uint8_t buf[];
};

struct rdma_stats {
	_Atomic uint64_t reads, read_bytes, read_failures, served, served_bytes, offloads,
		offload_bytes, offloads_received, lent_evictions, lend_used, checksum_failures,
		timeouts, conn_errors, auth_refused, auth_rejected, bad_messages, redis_errors,
		redis_reconnects, resyncs, index_lookups, index_updates, stale_repaired, replays,
		handshakes_dropped, conns_cut;
};

#define STAT_INC(r, f)	  atomic_fetch_add_explicit(&(r)->st.f, 1, memory_order_relaxed)
#define STAT_ADD(r, f, n) atomic_fetch_add_explicit(&(r)->st.f, (n), memory_order_relaxed)

struct rdma_srv; /* server.c */
struct rdma_iq_op;

/* A host with a proven session (guard.c). */
struct rdma_vouch {
	uint64_t until_ns; /* 0 = free */
	sa_family_t family;
	uint8_t a[16];
};

struct remote {
	char node_id[REMOTE_NODE_ID_MAX];
	uint64_t boot; /* this incarnation */
	char prefix[64];
	uint8_t *token;
	size_t token_len;
	uint32_t timeout_ms, heartbeat_ms, node_ttl_ms;
	const struct remote_ops *ops;
	void *ops_ctx;

	struct rdma_fab fab;
	struct rdma_mr arena_mr, lend_mr, msg_mr;
	uint8_t *lend_mem;
	uint64_t lend_bytes;
	uint32_t lend_page;
	uint8_t *msg_mem; /* recv buffers | send buffers | warm-up area */

	struct rdma_op recv_ops[RDMA_NRECV];
	struct rdma_op send_ops[RDMA_NSEND];
	pthread_mutex_t send_lock;
	pthread_cond_t send_cond;
	uint32_t send_free[RDMA_NSEND];
	uint32_t send_nfree;

	pthread_mutex_t av_lock;
	struct rdma_av_ent av[RDMA_MAX_AV];

	pthread_mutex_t xfer_lock;
	struct rdma_xfer *xfers; /* live transfers */

	pthread_mutex_t pend_lock;
	struct rdma_pending pend[RDMA_MAX_PENDING];
	uint64_t next_req;

	pthread_mutex_t peer_lock;
	struct rdma_peer peers[RDMA_MAX_PEERS];
	uint32_t npeers;
	struct rdma_chash ring;		   /* over live peers with lent memory */
	uint32_t ring_map[RDMA_MAX_PEERS]; /* ring node -> peers[] index */
	_Atomic uint64_t peers_alive;

	pthread_mutex_t work_lock;
	pthread_cond_t work_cond;
	struct rdma_work *work_head, *work_tail;
	uint32_t work_n;
	struct rdma_srv *srv;

	/* index */
	char *cluster;
	pthread_mutex_t iq_lock;
	pthread_cond_t iq_cond, iq_done;
	struct rdma_iq_op *iq_head, *iq_tail;
	uint64_t iq_len;
	uint64_t iq_enq, iq_written; /* sequence numbers */
	bool iq_accepting;	     /* connected: updates are queued (else dropped) */
	bool iq_connected;	     /* connected and resynchronised */
	bool iq_tried;		     /* the index thread's first connection attempt is over */
	pthread_mutex_t q_lock;	     /* the query connection */
	struct rdma_rconn *qctx;
	uint64_t q_retry_ns;
	struct rdma_rconn_stats rst; /* both connections' routing counters */
	pthread_mutex_t pub_lock;
	void *pub; /* paths we publish: a tsearch tree of struct rdma_pub */

	/* connections nobody vouched for (guard.c) */
	uint32_t max_unproven_conns, unproven_conn_ms;
	pthread_mutex_t guard_lock;
	pthread_cond_t guard_cond;
	struct rdma_vouch vouched[RDMA_GUARD_HOSTS];

	pthread_t progress_thr, server_thr, index_thr, guard_thr;
	bool progress_started, server_started, index_started, guard_started;
	_Atomic bool stop;
	_Atomic bool draining; /* remote_set_draining(): no lent memory offered or taken */
	_Atomic bool hb_kick;  /* the index thread writes the heartbeat now */

	struct rdma_stats st;
};

/* For log lines an outsider can cause: true at most once a second per
 * @last (a flood must not become a flood of log lines). */
static inline bool rdma_log_due(_Atomic uint64_t *last, uint64_t now_ns)
{
	uint64_t prev = atomic_load(last);

	return now_ns - prev >= 1000000000ull &&
	       atomic_compare_exchange_strong(last, &prev, now_ns);
}

/* Append @w to the server's work queue and wake it (r->work_lock held). */
static inline void rdma_work_append_locked(remote *r, struct rdma_work *w)
{
	if (r->work_tail)
		r->work_tail->next = w;
	else
		r->work_head = w;
	r->work_tail = w;
	r->work_n++;
	pthread_cond_signal(&r->work_cond);
}

/* xfer.c: messaging and transfers */
void rdma_cond_init_mono(pthread_cond_t *c);
int rdma_engine_start(remote *r);
void rdma_engine_stop(remote *r);
/* After the endpoint is closed, when nothing can complete any more. */
void rdma_engine_free(remote *r);
/* The warm-up area (RDMA_WARM_LEN bytes of msg_mr) peers read once per session. */
uint8_t *rdma_warm_area(remote *r);
/* The provider's handle for @addr, a peer's (proven) address: inserted if
 * new, evicting another entry when the vector is full. */
int rdma_av_get(remote *r, const uint8_t *addr, uint32_t len, fi_addr_t *fa);
void rdma_av_drop(remote *r, const uint8_t *addr, uint32_t len);
/* Encode, sign (with @key if not NULL) and send @m to @addr. */
int rdma_send_msg(remote *r, const uint8_t *addr, uint32_t addr_len, const struct rdma_msg *m,
		  const uint8_t *key, uint64_t deadline_ns);
/*
 * One attempt, no waiting, to send @len encoded bytes to @addr, an address
 * nobody vouched for (a HELLO's): it takes one of RDMA_MAX_AV_UNPROVEN
 * address-vector slots, evicting (and disconnecting) the oldest such
 * address, never a proven one. @return 0; -EAGAIN (no send buffer free, or
 * the provider is still connecting: try again later); -errno.
 */
int rdma_send_try(remote *r, const uint8_t *addr, uint32_t addr_len, const void *buf, size_t len);
/* Send raw bytes (tests: malformed messages). */
int rdma_send_raw(remote *r, const uint8_t *addr, uint32_t addr_len, const void *buf, size_t len,
		  uint64_t deadline_ns);
/* Take a pending slot whose reply lands in @reply (RDMA_MSG_SIZE bytes);
 * @return 0 and the request id, or -ETIMEDOUT if none frees up in time. */
int rdma_pend_open(remote *r, uint8_t *reply, uint64_t deadline_ns, uint64_t *req_id);
/* Expect another reply to @req_id (GRANT, then DONE). */
void rdma_pend_rearm(remote *r, uint64_t req_id);
/* Wait for the reply to @req_id until @deadline_ns. @return its length,
 * -ETIMEDOUT, or the send error. */
int rdma_pend_wait(remote *r, uint64_t req_id, uint64_t deadline_ns);
void rdma_pend_put(remote *r, uint64_t req_id);
struct rdma_xfer *rdma_xfer_new(remote *r);
void rdma_xfer_put(struct rdma_xfer *x);
/* Post one read (@write false) or write-with-immediate of @len bytes. */
int rdma_xfer_post(remote *r, struct rdma_xfer *x, bool write, void *local, void *desc,
		   uint64_t len, fi_addr_t fa, uint64_t raddr, uint64_t rkey, uint64_t imm,
		   uint64_t deadline_ns);
/*
 * Wait until fewer than @below operations are in flight (@return 1), or,
 * with @want_done, until the oldest operation not yet taken has completed
 * (@return 0), or progress stalls for timeout_ms (-ETIMEDOUT), or an
 * operation failed (its error).
 */
int rdma_xfer_wait(remote *r, struct rdma_xfer *x, uint32_t below, bool want_done);
/* Wait until nothing is in flight, or no progress for timeout_ms; errors
 * are ignored. */
void rdma_xfer_drain(remote *r, struct rdma_xfer *x);
/* How many operations, oldest first, completed since the last call; they
 * are taken (the next call counts from after them). Sequence numbers of
 * operations posted but not taken must stay within 64. */
uint32_t rdma_xfer_take(struct rdma_xfer *x);

/* server.c */
/* @path's attributes from remote_ops.attrs, checked; root-only ones if the
 * daemon has none to give. */
void rdma_attrs_of(remote *r, const char *path, struct remote_attrs *out);
int rdma_server_init(remote *r);
void rdma_server_fini(remote *r);
void *rdma_server_main(void *arg);
uint64_t rdma_server_lend_free(remote *r);

/* guard.c */
/* Start the thread that bounds unproven connections (no-op when
 * max_unproven_conns is 0 or fabric names are not IP sockets). */
int rdma_guard_start(remote *r);
void rdma_guard_stop(remote *r);
/* The host of fabric address @addr has a proven session with us. */
void rdma_guard_vouch(remote *r, const uint8_t *addr, uint32_t len);

/* client.c */
/* Fetch @path from @p. *@sink_failed (if not NULL) says whether a failure
 * was the sink's own (prepare's error: no other holder will do better). */
int rdma_fetch_from(remote *r, struct rdma_peer *p, const char *path,
		    const struct remote_sink *sink, struct remote_fetch_info *info,
		    bool *sink_failed);
int rdma_offload_to(remote *r, struct rdma_peer *p, const char *path, const struct iovec *src,
		    int n, uint64_t size, uint64_t checksum);
/* The same with the owner and mode @attrs the copy keeps (NULL: this node's
 * remote_ops.attrs for @path), for a copy not in this node's namespace. */
int rdma_offload_attrs_to(remote *r, struct rdma_peer *p, const char *path, const struct iovec *src,
			  int n, uint64_t size, uint64_t checksum,
			  const struct remote_attrs *attrs);
/* remote_offload() with @attrs as above (remote.c). */
int rdma_offload(remote *r, const char *path, const struct iovec *src, int n, uint64_t checksum,
		 const struct remote_attrs *attrs);
int rdma_free_at(remote *r, struct rdma_peer *p, const char *path);
/* Open (handshake) a session with @p unless one is open. */
int rdma_session(remote *r, struct rdma_peer *p);
void rdma_peer_failed(remote *r, struct rdma_peer *p, int err);

/* remote.c */
struct rdma_peer *rdma_peer_find(remote *r, const char *id);
/* Add or update a peer (the membership refresh; tests add fixed peers).
 * Called with peer_lock held. */
struct rdma_peer *rdma_peer_upsert_locked(remote *r, const char *id,
					  const struct rdma_node_rec *rec, bool alive);
void rdma_ring_rebuild_locked(remote *r);
/* Apply a membership refresh: @n nodes from <c>:nodes, @ok[i] if node i's
 * record was present and well formed. */
void rdma_members_apply(remote *r, char (*ids)[REMOTE_NODE_ID_MAX],
			const struct rdma_node_rec *recs, const bool *ok, uint32_t n);
/* A test hook: make @id known at @addr, alive forever. */
int rdma_peer_add_fixed(remote *r, const char *id, const uint8_t *addr, uint32_t addr_len,
			uint64_t lend_total, uint64_t lend_free);
/* This node's fabric address. */
const uint8_t *rdma_self_addr(const remote *r, uint32_t *len);

#endif
