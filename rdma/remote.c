/*
 * rdma/remote.c — the remote tier's front: configuration, start and stop,
 * the membership table and hash ring, and the cluster-wide operations
 * (fetch from any holder, offload to the ring's choice, free everywhere)
 * built on client.c's per-peer calls.
 *
 * Membership. r->peers is a fixed array; a slot, once used for a node id,
 * keeps it for the life of the instance, so struct rdma_peer pointers stay
 * valid without reference counts. The index thread refreshes it every
 * heartbeat (rdma_members_apply): a node is alive while its heartbeat key
 * exists and it runs the same provider; this node is always alive to
 * itself. When the set of live lenders changes the ring is rebuilt over
 * them (this node included, so every node computes the same ring).
 * peer_lock guards the table and the ring.
 *
 * Order of start: fabric, registered regions, server state, progress
 * thread, server thread, index thread; close reverses it, and the endpoint
 * is closed before the memory it may still reference.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define MAX_HOLDERS 32
#define MAX_TRIES   3

/* --- checksum ------------------------------------------------------------- */

uint64_t remote_checksum(const struct iovec *iov, int n)
{
	XXH3_state_t st;

	XXH3_64bits_reset(&st);
	for (int i = 0; i < n; i++)
		XXH3_64bits_update(&st, iov[i].iov_base, iov[i].iov_len);
	return XXH3_64bits_digest(&st);
}

/* --- membership ----------------------------------------------------------- */

static struct rdma_peer *peer_find_locked(remote *r, const char *id)
{
	for (uint32_t i = 0; i < r->npeers; i++)
		if (strcmp(r->peers[i].id, id) == 0)
			return &r->peers[i];
	return NULL;
}

struct rdma_peer *rdma_peer_find(remote *r, const char *id)
{
	struct rdma_peer *p;

	pthread_mutex_lock(&r->peer_lock);
	p = peer_find_locked(r, id);
	pthread_mutex_unlock(&r->peer_lock);
	return p;
}

struct rdma_peer *rdma_peer_upsert_locked(remote *r, const char *id,
					  const struct rdma_node_rec *rec, bool alive)
{
	struct rdma_peer *p = peer_find_locked(r, id);

	if (!p) {
		if (r->npeers == RDMA_MAX_PEERS)
			return NULL;
		p = &r->peers[r->npeers++];
		snprintf(p->id, sizeof(p->id), "%s", id);
		p->known = true;
		p->self = strcmp(id, r->node_id) == 0;
	}
	if (rec) {
		/* A new address or incarnation: sessions with the old one are void. */
		if (p->addr_len != rec->addr_len ||
		    memcmp(p->addr, rec->addr, rec->addr_len) != 0 || p->boot != rec->boot) {
			/* The provider's connection to the old incarnation is dead
			 * or soon will be: the next session starts a fresh one. */
			if (p->addr_len)
				rdma_av_drop(r, p->addr, p->addr_len);
			memcpy(p->addr, rec->addr, rec->addr_len);
			p->addr_len = rec->addr_len;
			p->boot = rec->boot;
			p->addr_gen++;
		}
		p->lend_total = rec->lend_total;
		p->lend_free = rec->lend_free;
	}
	p->alive = alive || p->self;
	return p;
}

void rdma_ring_rebuild_locked(remote *r)
{
	const char *ids[RDMA_MAX_PEERS];
	uint32_t n = 0;

	for (uint32_t i = 0; i < r->npeers; i++) {
		if (!r->peers[i].alive || r->peers[i].lend_total == 0)
			continue;
		ids[n] = r->peers[i].id;
		r->ring_map[n++] = i;
	}
	rdma_chash_free(&r->ring);
	if (rdma_chash_build(&r->ring, ids, n, RDMA_CHASH_VNODES))
		log_warn("rdma: out of memory rebuilding the hash ring");
}

void rdma_members_apply(remote *r, char (*ids)[REMOTE_NODE_ID_MAX],
			const struct rdma_node_rec *recs, const bool *ok, uint32_t n)
{
	bool seen[RDMA_MAX_PEERS] = {false}, changed = false;
	uint64_t alive = 0;

	pthread_mutex_lock(&r->peer_lock);
	for (uint32_t i = 0; i < n; i++) {
		struct rdma_peer *p;
		bool was_alive, lender;

		if (!ok[i])
			continue;
		if (strcmp(recs[i].prov, r->fab.prov) != 0) {
			log_debug("rdma: node %s runs %s, not %s: ignored", ids[i], recs[i].prov,
				  r->fab.prov);
			continue;
		}
		p = peer_find_locked(r, ids[i]);
		was_alive = p && p->alive;
		lender = p && p->lend_total > 0;
		p = rdma_peer_upsert_locked(r, ids[i], &recs[i], true);
		if (!p)
			continue;
		seen[p - r->peers] = true;
		if (!was_alive || lender != (p->lend_total > 0))
			changed = true;
	}
	for (uint32_t i = 0; i < r->npeers; i++) {
		struct rdma_peer *p = &r->peers[i];

		if (!seen[i] && !p->fixed && !p->self && p->alive) {
			p->alive = false;
			changed = true;
			log_info("rdma: node %s is dead (heartbeat expired)", p->id);
		}
		if (p->alive && !p->self)
			alive++;
	}
	if (changed)
		rdma_ring_rebuild_locked(r);
	atomic_store(&r->peers_alive, alive);
	pthread_mutex_unlock(&r->peer_lock);
}

int rdma_peer_add_fixed(remote *r, const char *id, const uint8_t *addr, uint32_t addr_len,
			uint64_t lend_total, uint64_t lend_free)
{
	struct rdma_node_rec rec = {0};
	struct rdma_peer *p;
	uint64_t alive = 0;

	if (!rdma_node_id_valid(id) || addr_len == 0 || addr_len > RDMA_ADDR_MAX)
		return -EINVAL;
	memcpy(rec.addr, addr, addr_len);
	rec.addr_len = addr_len;
	rec.lend_total = lend_total;
	rec.lend_free = lend_free;
	pthread_mutex_lock(&r->peer_lock);
	p = rdma_peer_upsert_locked(r, id, &rec, true);
	if (p)
		p->fixed = true;
	rdma_ring_rebuild_locked(r);
	for (uint32_t i = 0; i < r->npeers; i++)
		if (r->peers[i].alive && !r->peers[i].self)
			alive++;
	atomic_store(&r->peers_alive, alive);
	pthread_mutex_unlock(&r->peer_lock);
	return p ? 0 : -ENOSPC;
}

const uint8_t *rdma_self_addr(const remote *r, uint32_t *len)
{
	*len = (uint32_t)r->fab.name_len;
	return r->fab.name;
}

int remote_peers(remote *r, struct remote_peer *out, int max)
{
	int n;

	pthread_mutex_lock(&r->peer_lock);
	n = (int)r->npeers;
	for (int i = 0; i < n && i < max; i++) {
		struct rdma_peer *p = &r->peers[i];

		snprintf(out[i].node, sizeof(out[i].node), "%s", p->id);
		out[i].alive = p->alive;
		out[i].self = p->self;
		out[i].lend_total = p->self ? r->lend_bytes : p->lend_total;
		out[i].lend_free = p->self ? rdma_server_lend_free(r) : p->lend_free;
	}
	pthread_mutex_unlock(&r->peer_lock);
	return n;
}

/* A peer worth asking now: alive, not us, not recently failed. */
static bool peer_usable(struct rdma_peer *p, uint64_t now)
{
	return p && p->alive && !p->self && atomic_load(&p->down_until) <= now;
}

/* The live peer @id, or NULL: found and judged under peer_lock (the index
 * thread rewrites `alive` under it). */
static struct rdma_peer *usable_peer(remote *r, const char *id, uint64_t now)
{
	struct rdma_peer *p;

	pthread_mutex_lock(&r->peer_lock);
	p = peer_find_locked(r, id);
	if (!peer_usable(p, now))
		p = NULL;
	pthread_mutex_unlock(&r->peer_lock);
	return p;
}

/* --- cluster operations --------------------------------------------------- */

struct holders {
	struct {
		char node[REMOTE_NODE_ID_MAX];
		int tier;
	} h[MAX_HOLDERS];
	uint32_t n;
};

static void collect(void *ctx, size_t i, const char *node, int tier)
{
	struct holders *hs = ctx;

	(void)i;
	if (hs->n < MAX_HOLDERS) {
		snprintf(hs->h[hs->n].node, sizeof(hs->h[hs->n].node), "%s", node);
		hs->h[hs->n].tier = tier;
		hs->n++;
	}
}

/* Which tier to read from first: DRAM, then lent copies, then the rest. */
static int tier_rank(int tier)
{
	switch (tier) {
	case REMOTE_TIER_DRAM:
		return 0;
	case REMOTE_TIER_LENT:
		return 1;
	case REMOTE_TIER_NVME:
		return 2;
	default:
		return 3;
	}
}

int remote_fetch(remote *r, const char *path, const struct remote_sink *sink,
		 struct remote_fetch_info *info)
{
	struct holders *hs = calloc(1, sizeof(*hs));
	struct rdma_peer *cand[MAX_HOLDERS];
	int ctier[MAX_HOLDERS], ncand = 0, rc, best = -ENOENT;
	struct remote_fetch_info own;
	bool sink_failed = false;
	uint32_t attempts = 0;
	uint64_t now = kvfs_mono_ns();
	const char *paths[1] = {path};

	if (!hs)
		return -ENOMEM;
	if (!info)
		info = &own;
	rc = rdma_index_holders(r, paths, 1, collect, hs);
	if (rc)
		goto out;
	for (int rank = 0; rank < 4; rank++) {
		for (uint32_t i = 0; i < hs->n; i++) {
			struct rdma_peer *p;

			if (tier_rank(hs->h[i].tier) != rank)
				continue;
			p = usable_peer(r, hs->h[i].node, now);
			if (!p)
				continue; /* dead nodes' entries are ignored */
			cand[ncand] = p;
			ctier[ncand++] = hs->h[i].tier;
		}
	}
	for (int i = 0; i < ncand && attempts < MAX_TRIES; i++) {
		/* A new attempt only within the first timeout: the whole fetch
		 * stays within about two. */
		if (attempts && kvfs_mono_ns() - now > (uint64_t)r->timeout_ms * 1000000ull)
			break;
		attempts++;
		rc = rdma_fetch_from(r, cand[i], path, sink, info, &sink_failed);
		if (rc == 0) {
			STAT_INC(r, reads);
			STAT_ADD(r, read_bytes, info->size);
			info->attempts = attempts;
			info->tier = (enum remote_tier)ctier[i];
			goto out;
		}
		if (sink_failed || rc == -EINVAL) {
			/* The caller's own error: no other holder will do better. */
			best = rc;
			break;
		}
		if (rc == -ENOENT) {
			/* The index was wrong about this holder. */
			STAT_INC(r, stale_repaired);
			rdma_index_queue(r, RDMA_IOP_REPAIR, path, 0, cand[i]->id);
			continue;
		}
		/* Checksum failures matter most, then any error over "absent". */
		if (best == -ENOENT || rc == -EBADMSG)
			best = rc;
	}
	rc = best;
	if (rc != -ENOENT)
		STAT_INC(r, read_failures);
out:
	free(hs);
	return rc;
}

struct buf_sink {
	void *buf;
	size_t cap;
	uint64_t size;
};

static int buf_prepare(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max)
{
	struct buf_sink *b = ctx;

	(void)checksum;
	(void)max;
	b->size = size;
	if (size > b->cap)
		return -EFBIG;
	iov[0].iov_base = b->buf;
	iov[0].iov_len = size;
	return size ? 1 : 0;
}

int remote_fetch_buf(remote *r, const char *path, void *buf, size_t cap, uint64_t *size)
{
	struct buf_sink b = {buf, cap, 0};
	struct remote_sink sink = {buf_prepare, &b};
	struct remote_fetch_info info;
	int rc = remote_fetch(r, path, &sink, &info);

	if (size)
		*size = b.size;
	return rc;
}

struct pick_ctx {
	remote *r;
	uint64_t size, now;
};

static bool can_take(void *arg, uint32_t node)
{
	struct pick_ctx *c = arg;
	struct rdma_peer *p = &c->r->peers[c->r->ring_map[node]];

	return peer_usable(p, c->now) && p->lend_free >= c->size;
}

/* A lender whose memory could hold the file once it drops older copies. */
static bool can_make_room(void *arg, uint32_t node)
{
	struct pick_ctx *c = arg;
	struct rdma_peer *p = &c->r->peers[c->r->ring_map[node]];

	return peer_usable(p, c->now) && p->lend_total >= c->size;
}

int remote_offload(remote *r, const char *path, const struct iovec *src, int n, uint64_t checksum)
{
	return rdma_offload(r, path, src, n, checksum, NULL);
}

int rdma_offload(remote *r, const char *path, const struct iovec *src, int n, uint64_t checksum,
		 const struct remote_attrs *attrs)
{
	struct pick_ctx pc = {r, 0, kvfs_mono_ns()};
	struct rdma_peer *cand[MAX_TRIES];
	uint32_t nodes[MAX_TRIES], got;
	size_t plen;
	int rc = -ENOSPC;

	if (n < 1 || !src)
		return -EINVAL;
	for (int i = 0; i < n; i++)
		pc.size += src[i].iov_len;
	plen = strnlen(path, REMOTE_PATH_MAX);
	if (pc.size == 0 || plen >= REMOTE_PATH_MAX || !rdma_path_valid(path, plen))
		return -EINVAL;
	pthread_mutex_lock(&r->peer_lock);
	got = rdma_chash_pick(&r->ring, path, plen, can_take, &pc, nodes, MAX_TRIES);
	if (got == 0) /* every lender is full: the one for this path drops old copies */
		got = rdma_chash_pick(&r->ring, path, plen, can_make_room, &pc, nodes, MAX_TRIES);
	for (uint32_t i = 0; i < got; i++)
		cand[i] = &r->peers[r->ring_map[nodes[i]]];
	pthread_mutex_unlock(&r->peer_lock);
	for (uint32_t i = 0; i < got; i++) {
		int e;

		if (i && kvfs_mono_ns() - pc.now > (uint64_t)r->timeout_ms * 1000000ull)
			break; /* bounded like remote_fetch */
		e = rdma_offload_attrs_to(r, cand[i], path, src, n, pc.size, checksum, attrs);

		if (e == 0) {
			pthread_mutex_lock(&r->peer_lock);
			cand[i]->lend_free -= KVFS_MIN(cand[i]->lend_free, pc.size);
			pthread_mutex_unlock(&r->peer_lock);
			return 0;
		}
		if (e == -EFBIG || e == -EINVAL)
			return e;
		if (rc == -ENOSPC)
			rc = e;
	}
	return rc;
}

int remote_free(remote *r, const char *path)
{
	struct holders *hs = calloc(1, sizeof(*hs));
	const char *paths[1] = {path};
	uint64_t now = kvfs_mono_ns();
	int rc;

	if (!hs)
		return -ENOMEM;
	rc = rdma_index_holders(r, paths, 1, collect, hs);
	for (uint32_t i = 0; rc == 0 && i < hs->n; i++) {
		struct rdma_peer *p;
		int e;

		if (hs->h[i].tier != REMOTE_TIER_LENT)
			continue;
		p = usable_peer(r, hs->h[i].node, now);
		if (!p)
			continue;
		e = rdma_free_at(r, p, path);
		if (e == -ENOENT) {
			STAT_INC(r, stale_repaired);
			rdma_index_queue(r, RDMA_IOP_REPAIR, path, 0, p->id);
		} else if (e) {
			rc = e;
		}
	}
	free(hs);
	return rc;
}

struct where_ctx {
	remote *r;
	struct remote_holder *out;
	int max, n;
};

static void where_one(void *arg, size_t i, const char *node, int tier)
{
	struct where_ctx *w = arg;
	struct rdma_peer *p;

	(void)i;
	if (w->n < w->max) {
		struct remote_holder *h = &w->out[w->n];

		snprintf(h->node, sizeof(h->node), "%s", node);
		h->tier = (enum remote_tier)tier;
		pthread_mutex_lock(&w->r->peer_lock);
		p = peer_find_locked(w->r, node);
		h->alive = p && p->alive;
		h->self = p && p->self;
		pthread_mutex_unlock(&w->r->peer_lock);
	}
	w->n++;
}

int remote_where(remote *r, const char *path, struct remote_holder *out, int max)
{
	struct where_ctx w = {r, out, max, 0};
	const char *paths[1] = {path};
	int rc = rdma_index_holders(r, paths, 1, where_one, &w);

	return rc ? rc : w.n;
}

struct locate_ctx {
	remote *r;
	struct remote_loc *out;
};

static void locate_one(void *arg, size_t i, const char *node, int tier)
{
	struct locate_ctx *l = arg;
	struct rdma_peer *p;
	bool usable;

	pthread_mutex_lock(&l->r->peer_lock);
	p = peer_find_locked(l->r, node);
	usable = p && p->alive && !p->self;
	if (p && p->self)
		l->out[i].self_tiers |= (uint16_t)(1u << tier);
	pthread_mutex_unlock(&l->r->peer_lock);
	if (usable) {
		l->out[i].holders++;
		l->out[i].tiers |= (uint16_t)(1u << tier);
	}
}

int remote_locate(remote *r, const char *const *paths, size_t n, struct remote_loc *out)
{
	struct locate_ctx l = {r, out};

	if (!paths || !out)
		return -EINVAL;
	memset(out, 0, n * sizeof(*out));
	return rdma_index_holders(r, paths, n, locate_one, &l);
}

/*
 * remote_match: per path, the bit set of live nodes (indices into r->peers)
 * that hold it and in which class of tier; a node's prefix is the run of
 * leading paths whose bit is set.
 */
struct match_ctx {
	remote *r;
	uint64_t *held; /* n words per peer slot: bit i%64 of word [slot*words + i/64] */
	uint64_t *fast;
	uint8_t *slow; /* per slot per path: the tier */
	size_t n, words, slots;
};

static void match_one(void *arg, size_t i, const char *node, int tier)
{
	struct match_ctx *m = arg;
	struct rdma_peer *p;
	size_t slot;

	pthread_mutex_lock(&m->r->peer_lock);
	p = peer_find_locked(m->r, node);
	slot = p && p->alive ? (size_t)(p - m->r->peers) : SIZE_MAX;
	pthread_mutex_unlock(&m->r->peer_lock);
	if (slot >= m->slots || i >= m->n)
		return; /* dead, unknown, or joined since the call began */
	m->held[slot * m->words + i / 64] |= 1ull << (i % 64);
	if (tier == REMOTE_TIER_GPU || tier == REMOTE_TIER_DRAM || tier == REMOTE_TIER_LENT)
		m->fast[slot * m->words + i / 64] |= 1ull << (i % 64);
	/* A node may hold a path twice (its own and a lent copy): keep the faster. */
	if (!m->slow[slot * m->n + i] || tier_rank(tier) < tier_rank(m->slow[slot * m->n + i]))
		m->slow[slot * m->n + i] = (uint8_t)tier;
}

static int match_cmp(const void *a, const void *b)
{
	const struct remote_node_match *x = a, *y = b;

	if (x->blocks != y->blocks)
		return x->blocks > y->blocks ? -1 : 1;
	if (x->fast_blocks != y->fast_blocks)
		return x->fast_blocks > y->fast_blocks ? -1 : 1;
	if (x->self != y->self) /* as good here as elsewhere: no transfer */
		return x->self ? -1 : 1;
	return strcmp(x->node, y->node);
}

int remote_match(remote *r, const char *const *paths, size_t n, struct remote_node_match *out,
		 int max)
{
	struct match_ctx m = {r, NULL, NULL, NULL, n, (n + 63) / 64, 0};
	struct remote_node_match *all = NULL;
	size_t slots;
	int rc, got = 0;

	if (!paths || (!out && max > 0) || max < 0 || n == 0 || n > 65536)
		return -EINVAL;
	pthread_mutex_lock(&r->peer_lock);
	slots = m.slots =
		r->npeers ? r->npeers : 1; /* slots are never reused: a prefix is stable */
	pthread_mutex_unlock(&r->peer_lock);
	m.held = calloc(slots * m.words, sizeof(*m.held));
	m.fast = calloc(slots * m.words, sizeof(*m.fast));
	m.slow = calloc(slots * n, 1);
	all = calloc(slots, sizeof(*all));
	if (!m.held || !m.fast || !m.slow || !all) {
		rc = -ENOMEM;
		goto out;
	}
	rc = rdma_index_holders(r, paths, n, match_one, &m);
	if (rc)
		goto out;
	pthread_mutex_lock(&r->peer_lock);
	for (size_t s = 0; s < r->npeers && s < slots; s++) {
		struct remote_node_match *x = &all[got];
		size_t i;
		int slowest = 0;

		if (!r->peers[s].alive)
			continue;
		for (i = 0; i < n && (m.held[s * m.words + i / 64] >> (i % 64)) & 1; i++) {
			int t = m.slow[s * n + i];

			if (!slowest || tier_rank(t) > tier_rank(slowest))
				slowest = t;
			x->fast_blocks += (m.fast[s * m.words + i / 64] >> (i % 64)) & 1;
		}
		if (i == 0)
			continue;
		snprintf(x->node, sizeof(x->node), "%s", r->peers[s].id);
		x->blocks = (uint32_t)i;
		x->slowest = (enum remote_tier)slowest;
		x->self = r->peers[s].self;
		got++;
	}
	pthread_mutex_unlock(&r->peer_lock);
	qsort(all, (size_t)got, sizeof(*all), match_cmp);
	if (max > 0)
		memcpy(out, all, (size_t)KVFS_MIN(got, max) * sizeof(*out));
	rc = got;
out:
	free(all);
	free(m.slow);
	free(m.fast);
	free(m.held);
	return rc;
}

int remote_push(remote *r, const char *node, const char *path, const struct iovec *src, int n,
		uint64_t checksum)
{
	struct rdma_peer *p;
	uint64_t size = 0;
	size_t plen;
	bool ok, room;
	int rc;

	if (n < 1 || !src || !node || !path)
		return -EINVAL;
	for (int i = 0; i < n; i++)
		size += src[i].iov_len;
	plen = strnlen(path, REMOTE_PATH_MAX);
	if (size == 0 || plen >= REMOTE_PATH_MAX || !rdma_path_valid(path, plen))
		return -EINVAL;
	pthread_mutex_lock(&r->peer_lock);
	p = peer_find_locked(r, node);
	ok = peer_usable(p, kvfs_mono_ns());
	room = ok && p->lend_free >= size;
	pthread_mutex_unlock(&r->peer_lock);
	if (!ok)
		return -EHOSTDOWN;
	if (!room)
		return -ENOSPC;
	rc = rdma_offload_to(r, p, path, src, n, size, checksum);
	if (rc == 0) {
		pthread_mutex_lock(&r->peer_lock);
		p->lend_free -= KVFS_MIN(p->lend_free, size);
		pthread_mutex_unlock(&r->peer_lock);
	}
	return rc;
}

/* --- stats ---------------------------------------------------------------- */

void remote_get_stats(remote *r, struct remote_stats *s)
{
#define LOAD(f) s->f = atomic_load_explicit(&r->st.f, memory_order_relaxed)
	memset(s, 0, sizeof(*s));
	s->provider = r->fab.prov;
	s->peers_alive = atomic_load(&r->peers_alive);
	LOAD(reads);
	LOAD(read_bytes);
	LOAD(read_failures);
	LOAD(served);
	LOAD(served_bytes);
	LOAD(offloads);
	LOAD(offload_bytes);
	LOAD(offloads_received);
	LOAD(lent_evictions);
	LOAD(lend_used);
	LOAD(checksum_failures);
	LOAD(timeouts);
	LOAD(conn_errors);
	LOAD(auth_refused);
	LOAD(auth_rejected);
	LOAD(bad_messages);
	LOAD(redis_errors);
	LOAD(redis_reconnects);
	LOAD(resyncs);
	LOAD(index_lookups);
	LOAD(index_updates);
	LOAD(stale_repaired);
	LOAD(replays);
	LOAD(handshakes_dropped);
	LOAD(conns_cut);
#undef LOAD
	s->index_redirects = atomic_load(&r->rst.moved) + atomic_load(&r->rst.asked);
	s->index_map_refreshes = atomic_load(&r->rst.refreshes);
	s->lend_capacity = r->lend_bytes;
}

const char *remote_node_id(const remote *r)
{
	return r->node_id;
}

const char *remote_provider(const remote *r)
{
	return r->fab.prov;
}

/* --- open / close --------------------------------------------------------- */

static int load_token(remote *r, const struct remote_config *cfg, char *err, size_t errlen)
{
	uint8_t buf[4096];
	ssize_t n = 0;

	if (cfg->token_file) {
		int fd = open(cfg->token_file, O_RDONLY | O_CLOEXEC);
		int e;

		if (fd < 0) {
			e = errno;
			snprintf(err, errlen, "--cluster-token %s: %s", cfg->token_file,
				 strerror(e));
			return -e;
		}
		n = read(fd, buf, sizeof(buf));
		e = errno;
		close(fd);
		if (n < 0) {
			snprintf(err, errlen, "--cluster-token %s: %s", cfg->token_file,
				 strerror(e));
			return -e;
		}
		while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
			n--;
	} else if (cfg->token && cfg->token_len <= sizeof(buf)) {
		memcpy(buf, cfg->token, cfg->token_len);
		n = (ssize_t)cfg->token_len;
	} else {
		snprintf(err, errlen, "a cluster token is required (--cluster-token FILE)");
		return -EINVAL;
	}
	if (n < RDMA_MIN_TOKEN) {
		OPENSSL_cleanse(buf, sizeof(buf));
		snprintf(err, errlen, "the cluster token must be at least %d bytes",
			 RDMA_MIN_TOKEN);
		return -EINVAL;
	}
	r->token = malloc((size_t)n);
	if (!r->token)
		return -ENOMEM;
	memcpy(r->token, buf, (size_t)n);
	r->token_len = (size_t)n;
	OPENSSL_cleanse(buf, sizeof(buf));
	return 0;
}

static bool name_ok(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 32 && rdma_node_id_valid(s);
}

static void cond_mono(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

int remote_open(const struct remote_config *cfg, remote **out, char *err, size_t errlen)
{
	remote *r;
	int rc;

	*out = NULL;
	if (!cfg->node_id || !rdma_node_id_valid(cfg->node_id)) {
		snprintf(err, errlen, "--node-id: 1 to 63 of A-Z a-z 0-9 . _ -");
		return -EINVAL;
	}
	if (cfg->cluster && rdma_rconn_check_url(cfg->cluster, err, errlen))
		return -EINVAL;
	if (cfg->cluster_name && !name_ok(cfg->cluster_name)) {
		snprintf(err, errlen, "cluster name: 1 to 32 of A-Z a-z 0-9 . _ -");
		return -EINVAL;
	}
	if (cfg->lend_page && (cfg->lend_page < 4096 || (cfg->lend_page & (cfg->lend_page - 1)))) {
		snprintf(err, errlen, "lent page size must be a power of two >= 4096");
		return -EINVAL;
	}
	if (cfg->arena && cfg->arena_bytes == 0) {
		snprintf(err, errlen, "arena without a size");
		return -EINVAL;
	}
	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	snprintf(r->node_id, sizeof(r->node_id), "%s", cfg->node_id);
	if (RAND_bytes((unsigned char *)&r->boot, sizeof(r->boot)) != 1)
		r->boot = kvfs_now_ns();
	snprintf(r->prefix, sizeof(r->prefix), "%s",
		 cfg->cluster_name ? cfg->cluster_name : "kvfs");
	r->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 2000;
	r->heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : 1000;
	r->node_ttl_ms = cfg->node_ttl_ms ? cfg->node_ttl_ms : 3 * r->heartbeat_ms;
	r->ops = cfg->ops;
	r->ops_ctx = cfg->ops_ctx;
	r->lend_page = cfg->lend_page ? cfg->lend_page : 64u << 10;
	r->lend_bytes = cfg->lend_bytes / r->lend_page * r->lend_page;
	pthread_mutex_init(&r->peer_lock, NULL);
	pthread_mutex_init(&r->pub_lock, NULL);
	pthread_mutex_init(&r->iq_lock, NULL);
	pthread_mutex_init(&r->q_lock, NULL);
	pthread_mutex_init(&r->guard_lock, NULL);
	cond_mono(&r->guard_cond);
	r->max_unproven_conns = cfg->max_unproven_conns == UINT32_MAX ? 0
				: cfg->max_unproven_conns	      ? cfg->max_unproven_conns
								      : 64;
	r->unproven_conn_ms = cfg->unproven_conn_ms ? cfg->unproven_conn_ms : 10000;
	cond_mono(&r->iq_cond);
	cond_mono(&r->iq_done);
	for (int i = 0; i < RDMA_MAX_PEERS; i++) {
		pthread_mutex_init(&r->peers[i].sess_lock, NULL);
		pthread_mutex_init(&r->peers[i].seq_lock, NULL);
	}

	rc = load_token(r, cfg, err, errlen);
	if (rc)
		goto fail;
	if (cfg->cluster) {
		r->cluster = strdup(cfg->cluster);
		if (!r->cluster) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	rc = rdma_fab_open(&r->fab, cfg->fabric, cfg->listen, err, errlen);
	if (rc)
		goto fail;
	if (cfg->arena) {
		rc = rdma_mr_reg(&r->fab, cfg->arena, cfg->arena_bytes,
				 FI_REMOTE_READ | FI_READ | FI_WRITE, &r->arena_mr);
		if (rc) {
			snprintf(err, errlen, "registering the arena: %s", fi_strerror(-rc));
			goto fail;
		}
	}
	if (r->lend_bytes) {
		void *m = mmap(NULL, r->lend_bytes, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

		if (m == MAP_FAILED) {
			rc = -errno;
			snprintf(err, errlen, "--lend: %s", strerror(-rc));
			goto fail;
		}
		r->lend_mem = m;
		rc = rdma_mr_reg(&r->fab, r->lend_mem, r->lend_bytes,
				 FI_REMOTE_READ | FI_REMOTE_WRITE | FI_READ | FI_WRITE,
				 &r->lend_mr);
		if (rc) {
			snprintf(err, errlen, "registering lent memory: %s", fi_strerror(-rc));
			goto fail;
		}
	}
	rc = rdma_index_init(r);
	if (rc)
		goto fail;
	rc = rdma_server_init(r);
	if (rc)
		goto fail;
	rc = rdma_engine_start(r);
	if (rc) {
		snprintf(err, errlen, "starting the fabric engine: %s", fi_strerror(-rc));
		goto fail;
	}
	{
		struct rdma_node_rec self = {0};

		memcpy(self.addr, r->fab.name, r->fab.name_len);
		self.addr_len = (uint32_t)r->fab.name_len;
		self.lend_total = r->lend_bytes;
		self.lend_free = r->lend_bytes;
		self.boot = r->boot;
		pthread_mutex_lock(&r->peer_lock);
		rdma_peer_upsert_locked(r, r->node_id, &self, true);
		rdma_ring_rebuild_locked(r);
		pthread_mutex_unlock(&r->peer_lock);
	}
	rc = pthread_create(&r->server_thr, NULL, rdma_server_main, r);
	if (rc) {
		rc = -rc;
		goto fail;
	}
	r->server_started = true;
	rc = rdma_guard_start(r);
	if (rc) {
		snprintf(err, errlen, "guarding connections: %s", strerror(-rc));
		goto fail;
	}
	if (r->cluster) {
		rc = rdma_index_start(r);
		if (rc)
			goto fail;
	}
	log_info("rdma: node %s up on %s%s%s, lending %llu bytes", r->node_id, r->fab.prov,
		 r->cluster ? ", index " : "", r->cluster ? r->cluster : "",
		 (unsigned long long)r->lend_bytes);
	*out = r;
	return 0;
fail:
	if (!err[0])
		snprintf(err, errlen, "%s", strerror(-rc));
	remote_close(r);
	return rc;
}

void remote_close(remote *r)
{
	if (!r)
		return;
	atomic_store(&r->stop, true);
	rdma_guard_stop(r);
	rdma_index_stop(r);
	if (r->server_started) {
		pthread_mutex_lock(&r->work_lock);
		pthread_cond_broadcast(&r->work_cond);
		pthread_mutex_unlock(&r->work_lock);
		pthread_join(r->server_thr, NULL);
		r->server_started = false;
	}
	rdma_engine_stop(r);
	rdma_server_fini(r);
	/* The endpoint first: it may still reference the regions below. */
	if (r->fab.ep) {
		fi_close(&r->fab.ep->fid);
		r->fab.ep = NULL;
	}
	rdma_mr_close(&r->arena_mr);
	rdma_mr_close(&r->lend_mr);
	rdma_engine_free(r);
	rdma_fab_close(&r->fab);
	if (r->lend_mem)
		munmap(r->lend_mem, r->lend_bytes);
	rdma_index_free(r);
	rdma_chash_free(&r->ring);
	if (r->token)
		OPENSSL_cleanse(r->token, r->token_len);
	free(r->token);
	free(r->cluster);
	free(r);
}
