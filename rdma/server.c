/*
 * rdma/server.c — the server thread: what this node answers to its peers.
 *
 * Owns, touched by this thread only (no locks): the sessions, the leases
 * handed to peers, the offload tickets in progress, the lent copies (a
 * tsearch tree by path), and the lent-memory allocator. The progress thread feeds it
 * requests and remote-write immediates through r->work_*.
 *
 * Sessions. HELLO opens a half-open session (server nonce, id); PROVE
 * either opens it (the client's HMAC over both nonces checks out under the
 * cluster token) or refuses it (counted in auth_refused). Every other
 * request must name an open session and carry a valid MAC under its key,
 * else it is dropped and counted as a bad message: we do not know where to
 * answer an unauthenticated sender. Session id = random high bits | slot.
 * A request's sequence number must be new in its session (a replay is
 * dropped, counted in replays); our replies are numbered too.
 *
 * Outsiders cost bounded work. Before PROVE nothing is known about a peer,
 * not even that the reply address in its HELLO is its own: the handshake
 * replies (CHALLENGE, REFUSED) are sent without waiting, and while the
 * provider is still connecting they wait in a small outbox, retried from
 * this loop (after 1 ms, backing off to 64 ms) until timeout_ms (the oldest
 * gives way when it is full), and those addresses only get the few
 * unproven slots of the address vector (xfer.c). Half-open sessions are capped (the oldest goes).
 * So this thread never blocks on an address an outsider chose, and
 * remote_take_lent() (the daemon's lookup miss) waits at most timeout_ms
 * for it in any case.
 *
 * Leases. LOOKUP leases a lent copy or, through remote_ops.lookup, a file
 * of the daemon; the reply lists its bytes as runs in a registered region.
 * A lease ends on RELEASE, when its session dies, or after lease_ttl (a
 * peer that vanished). A lent copy freed or replaced while leased keeps its
 * pages until its last lease ends.
 *
 * Offload. OFFLOAD allocates lent pages (dropping the least recently used
 * unleased copies if it must: lent memory is a cache) and answers with a
 * ticket and the runs to write. The writer sends fi_writedata operations whose 32-bit
 * immediate is (ticket << 16 | number of writes); when as many immediates
 * as announced have arrived, every byte has landed (target completions mean
 * the data is visible), the copy is checksummed, committed, published as
 * tier "lent", and DONE goes back. Tickets that never complete expire.
 * Ticket = generation (6 bits) << 10 | slot, never 0.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <search.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define HALF_OPEN_NS (10ull * 1000000000ull)
#define IDLE_NS	     (300ull * 1000000000ull)
#define EXPIRE_EVERY (100ull * 1000000ull)
#define OUTBOX_EVERY (1000000ull)
#define VOUCH_EVERY  (10ull * 1000000000ull)

struct rdma_session {
	uint64_t sid; /* 0 = free */
	bool open;
	char node[REMOTE_NODE_ID_MAX];
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t addr_len;
	uint8_t nonce_c[RDMA_NONCE_LEN], nonce_s[RDMA_NONCE_LEN];
	uint8_t key[32];
	uint64_t last_ns;
	uint64_t tx_seq;       /* of our last MACed reply */
	struct rdma_replay rx; /* the peer's requests seen */
	uint64_t vouched_ns;   /* last told the connection guard */
};

struct rdma_lent {
	const char *path; /* points at buf; the tree's key */
	uint64_t size, checksum;
	struct remote_attrs attrs; /* as the offloading node sent them */
	struct rdma_lend_run *runs;
	int nruns;
	uint32_t leases;
	bool dead; /* out of the tree; freed with its last lease */
	struct rdma_lent *older, *newer; /* the LRU list while in the tree */
	char buf[];
};

struct rdma_lease {
	uint64_t id; /* 0 = free */
	uint64_t sid;
	uint64_t expires_ns;
	struct rdma_lent *lent; /* a lent copy, or a daemon file in rf */
	struct remote_file rf;
	struct rdma_run *runs;
	uint32_t nruns;
	uint64_t size, checksum, key;
	uint8_t tier;
	struct remote_attrs attrs;
	struct rdma_mr mr; /* a daemon file outside the arena, registered for this lease */
};

struct rdma_ticket {
	uint16_t ticket; /* 0 = free */
	uint64_t sid, req_id;
	char *path;
	uint64_t size, checksum;
	struct rdma_lend_run *runs;
	int nruns;
	uint32_t seen, total;
	uint64_t expires_ns;
	struct remote_attrs attrs;
};

/* A handshake reply to an address that has not proven anything yet: sent
 * without waiting, and retried from the server loop while the provider
 * connects, until it expires. */
struct rdma_hs_out {
	uint64_t expires_ns; /* 0 = free */
	uint64_t next_ns;    /* the next attempt: 1 ms after the first, doubling to 64 ms */
	uint32_t wait_ms;
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t addr_len;
	uint32_t len;
	uint8_t buf[RDMA_HDR_SIZE + 256]; /* CHALLENGE or REFUSED */
};

struct rdma_srv {
	struct rdma_session sess[RDMA_MAX_SESSIONS];
	struct rdma_lease leases[RDMA_MAX_LEASES];
	uint64_t next_lease;
	struct rdma_ticket tickets[RDMA_MAX_TICKETS];
	uint32_t ticket_gen;
	struct rdma_lend lend;
	void *lent; /* tsearch tree of struct rdma_lent by path */
	struct rdma_lent *oldest, *newest; /* the same copies, least recently used first */
	_Atomic uint64_t lend_free;
	uint64_t lease_ttl_ns;
	uint64_t next_expire_ns;
	struct rdma_hs_out outbox[RDMA_HS_OUTBOX];
	uint32_t outbox_n;
	struct rdma_msg in, out;
	uint8_t hs_buf[RDMA_MSG_SIZE];
};

static uint64_t lend_free_bytes(const struct rdma_srv *s)
{
	return (uint64_t)s->lend.nfree * s->lend.page;
}

uint64_t rdma_server_lend_free(remote *r)
{
	return r->srv ? atomic_load(&r->srv->lend_free) : 0;
}

static void lend_changed(remote *r)
{
	struct rdma_srv *s = r->srv;

	atomic_store(&s->lend_free, lend_free_bytes(s));
	atomic_store(&r->st.lend_used, s->lend.bytes - lend_free_bytes(s));
}

/* --- lent copies ---------------------------------------------------------- */

static int lent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct rdma_lent *)a)->path, ((const struct rdma_lent *)b)->path);
}

static struct rdma_lent *lent_find(struct rdma_srv *s, const char *path)
{
	struct rdma_lent key = {.path = path};
	struct rdma_lent **found = tfind(&key, &s->lent, lent_cmp);

	return found ? *found : NULL;
}

static void lent_free(struct rdma_lent *l)
{
	free(l->runs);
	free(l);
}

static void lru_unlink(struct rdma_srv *s, struct rdma_lent *l)
{
	if (l->older)
		l->older->newer = l->newer;
	else if (s->oldest == l)
		s->oldest = l->newer;
	if (l->newer)
		l->newer->older = l->older;
	else if (s->newest == l)
		s->newest = l->older;
	l->older = l->newer = NULL;
}

/* @l was just stored or read: it is the last to be dropped for room. */
static void lru_touch(struct rdma_srv *s, struct rdma_lent *l)
{
	lru_unlink(s, l);
	l->older = s->newest;
	if (s->newest)
		s->newest->newer = l;
	else
		s->oldest = l;
	s->newest = l;
}

/* A dead copy gives its pages back once nobody reads it. */
static void lent_put_pages(remote *r, struct rdma_lent *l)
{
	if (!l->dead || l->leases > 0)
		return;
	rdma_lend_free(&r->srv->lend, l->runs, l->nruns);
	lend_changed(r);
	lent_free(l);
}

/* Take @l out of the table; its pages follow when unleased. */
static void lent_kill(remote *r, struct rdma_lent *l)
{
	lru_unlink(r->srv, l);
	tdelete(l, &r->srv->lent, lent_cmp);
	l->dead = true;
	lent_put_pages(r, l);
}

/* --- attributes ------------------------------------------------------------ */

void rdma_attrs_of(remote *r, const char *path, struct remote_attrs *out)
{
	int dirs = 0;

	memset(out, 0, sizeof(*out));
	if (r->ops && r->ops->attrs && r->ops->attrs(r->ops_ctx, path, out) == 0) {
		out->file.mode &= 07777;
		if (out->ndirs > REMOTE_ATTR_DIRS)
			out->ndirs = REMOTE_ATTR_DIRS;
		for (uint32_t i = 0; i < out->ndirs; i++)
			out->dirs[i].mode &= 07777;
		return;
	}
	/* Nobody vouches for this file: root only. */
	memset(out, 0, sizeof(*out));
	out->file.mode = 0600;
	for (const char *p = path; *p; p++)
		dirs += *p == '/';
	out->ndirs = (uint32_t)KVFS_MIN(dirs, REMOTE_ATTR_DIRS);
	for (uint32_t i = 0; i < out->ndirs; i++)
		out->dirs[i].mode = 0700;
}

/* --- replies -------------------------------------------------------------- */

/*
 * A handshake reply (unsigned) to @addr, which proved nothing yet: one
 * attempt now, then from the outbox (the oldest entry gives way when it is
 * full). Never waits: a flood of HELLOs naming an address that accepts and
 * never answers costs a bounded amount of work and memory, and the server
 * goes on answering everyone else.
 */
static void hs_send(remote *r, const uint8_t *addr, uint32_t addr_len, struct rdma_msg *m)
{
	struct rdma_srv *s = r->srv;
	struct rdma_hs_out *o = NULL;
	int len, rc;

	m->seq = 0;
	len = rdma_msg_encode(m, s->hs_buf, sizeof(s->hs_buf));
	if (len < 0 || (size_t)len > sizeof(o->buf))
		return;
	rc = rdma_send_try(r, addr, addr_len, s->hs_buf, (size_t)len);
	if (rc != -EAGAIN) {
		if (rc)
			log_debug("rdma: %s not sent: %s", rdma_msg_name(m->type), strerror(-rc));
		return;
	}
	for (int i = 0; i < RDMA_HS_OUTBOX; i++) {
		struct rdma_hs_out *e = &s->outbox[i];

		if (!e->expires_ns) {
			o = e;
			break;
		}
		if (!o || e->expires_ns < o->expires_ns)
			o = e;
	}
	if (o->expires_ns)
		STAT_INC(r, handshakes_dropped);
	else
		s->outbox_n++;
	o->expires_ns = kvfs_mono_ns() + (uint64_t)r->timeout_ms * 1000000ull;
	o->wait_ms = 1;
	o->next_ns = kvfs_mono_ns() + 1000000ull;
	memcpy(o->addr, addr, addr_len);
	o->addr_len = addr_len;
	memcpy(o->buf, s->hs_buf, (size_t)len);
	o->len = (uint32_t)len;
}

/* Retry what the outbox holds, once each. */
static void outbox_run(remote *r, uint64_t now)
{
	struct rdma_srv *s = r->srv;

	for (int i = 0; i < RDMA_HS_OUTBOX && s->outbox_n; i++) {
		struct rdma_hs_out *e = &s->outbox[i];
		int rc;

		if (!e->expires_ns || (now < e->next_ns && now < e->expires_ns))
			continue;
		rc = rdma_send_try(r, e->addr, e->addr_len, e->buf, e->len);
		if (rc == -EAGAIN && now < e->expires_ns) {
			e->wait_ms = KVFS_MIN(2 * e->wait_ms, 64u);
			e->next_ns = now + (uint64_t)e->wait_ms * 1000000ull;
			continue;
		}
		if (rc == -EAGAIN)
			STAT_INC(r, handshakes_dropped);
		e->expires_ns = 0;
		s->outbox_n--;
	}
}

/* A reply in an open session (signed, numbered) or a handshake reply. */
static void send_to(remote *r, struct rdma_session *se, struct rdma_msg *m, bool sign)
{
	uint64_t deadline = kvfs_mono_ns() + (uint64_t)r->timeout_ms * 1000000ull;
	int rc;

	if (!sign) {
		hs_send(r, se->addr, se->addr_len, m);
		return;
	}
	m->seq = ++se->tx_seq;
	rc = rdma_send_msg(r, se->addr, se->addr_len, m, se->key, deadline);
	if (rc)
		log_debug("rdma: reply %s to %s failed: %s", rdma_msg_name(m->type), se->node,
			  strerror(-rc));
}

static void reply_status(remote *r, struct rdma_session *se, uint64_t req_id, int status, bool sign)
{
	struct rdma_msg *m = &r->srv->out;

	if (status >= 0 || status < -4095)
		status = -EIO;
	memset(m, 0, offsetof(struct rdma_msg, u));
	m->type = RDMA_MSG_STATUS;
	m->status = status;
	m->req_id = req_id;
	m->session = se->sid;
	send_to(r, se, m, sign);
}

/* --- sessions ------------------------------------------------------------- */

static struct rdma_session *sess_find(struct rdma_srv *s, uint64_t sid)
{
	uint32_t slot = (uint32_t)(sid & 0xffff);

	if (sid == 0 || slot >= RDMA_MAX_SESSIONS || s->sess[slot].sid != sid)
		return NULL;
	return &s->sess[slot];
}

static void lease_end(remote *r, struct rdma_lease *l);

static void sess_close(remote *r, struct rdma_session *se)
{
	struct rdma_srv *s = r->srv;

	for (int i = 0; i < RDMA_MAX_LEASES; i++)
		if (s->leases[i].id && s->leases[i].sid == se->sid)
			lease_end(r, &s->leases[i]);
	OPENSSL_cleanse(se->key, sizeof(se->key));
	se->sid = 0;
	se->open = false;
}

static void on_hello(remote *r, const struct rdma_msg *in)
{
	struct rdma_srv *s = r->srv;
	struct rdma_session *se = NULL, tmp;
	struct rdma_msg *m = &s->out;
	uint64_t now = kvfs_mono_ns(), rnd;
	int slot = -1;

	for (int i = 0; i < RDMA_MAX_SESSIONS && slot < 0; i++)
		if (!s->sess[i].sid)
			slot = i;
	if (slot < 0) { /* full: the oldest half-open session goes */
		uint64_t oldest = UINT64_MAX;

		for (int i = 0; i < RDMA_MAX_SESSIONS; i++)
			if (!s->sess[i].open && s->sess[i].last_ns < oldest) {
				oldest = s->sess[i].last_ns;
				slot = i;
			}
		if (slot >= 0)
			sess_close(r, &s->sess[slot]);
	}
	if (slot < 0) {
		memset(&tmp, 0, sizeof(tmp));
		memcpy(tmp.addr, in->u.hello.addr, in->u.hello.addr_len);
		tmp.addr_len = in->u.hello.addr_len;
		snprintf(tmp.node, sizeof(tmp.node), "%s", in->u.hello.node);
		memset(m, 0, offsetof(struct rdma_msg, u));
		m->type = RDMA_MSG_REFUSED;
		m->status = -EBUSY;
		m->req_id = in->req_id;
		send_to(r, &tmp, m, false);
		return;
	}
	se = &s->sess[slot];
	memset(se, 0, sizeof(*se));
	if (RAND_bytes((unsigned char *)&rnd, sizeof(rnd)) != 1 ||
	    RAND_bytes(se->nonce_s, RDMA_NONCE_LEN) != 1)
		return;
	se->sid = (rnd & ~0xffffull) | (uint64_t)slot;
	if ((se->sid >> 16) == 0)
		se->sid |= 1ull << 32;
	snprintf(se->node, sizeof(se->node), "%s", in->u.hello.node);
	memcpy(se->addr, in->u.hello.addr, in->u.hello.addr_len);
	se->addr_len = in->u.hello.addr_len;
	memcpy(se->nonce_c, in->u.hello.nonce, RDMA_NONCE_LEN);
	se->last_ns = now;

	memset(m, 0, sizeof(m->u.challenge) + offsetof(struct rdma_msg, u));
	m->type = RDMA_MSG_CHALLENGE;
	m->req_id = in->req_id;
	m->session = se->sid;
	snprintf(m->u.challenge.node, sizeof(m->u.challenge.node), "%s", r->node_id);
	memcpy(m->u.challenge.nonce, se->nonce_s, RDMA_NONCE_LEN);
	rdma_hello_mac(r->token, r->token_len, true, se->nonce_c, se->nonce_s, se->sid, r->node_id,
		       se->node, m->u.challenge.mac);
	send_to(r, se, m, false);
}

static void on_prove(remote *r, const uint8_t *buf, const struct rdma_msg *in)
{
	struct rdma_srv *s = r->srv;
	struct rdma_session *se = sess_find(s, in->session);
	struct rdma_msg *m = &s->out;
	uint8_t want[32];

	(void)buf;
	if (!se || se->open) {
		STAT_INC(r, bad_messages);
		return;
	}
	rdma_hello_mac(r->token, r->token_len, false, se->nonce_c, se->nonce_s, se->sid, r->node_id,
		       se->node, want);
	if (CRYPTO_memcmp(want, in->u.prove.mac, 32) != 0) {
		STAT_INC(r, auth_refused);
		static _Atomic uint64_t last_log;

		if (rdma_log_due(&last_log, kvfs_mono_ns()))
			log_warn("rdma: refused node %s: it does not hold the cluster token "
				 "(auth_refused counts every one)",
				 se->node);
		memset(m, 0, offsetof(struct rdma_msg, u));
		m->type = RDMA_MSG_REFUSED;
		m->status = -EACCES;
		m->req_id = in->req_id;
		m->session = se->sid;
		send_to(r, se, m, false);
		sess_close(r, se);
		return;
	}
	rdma_session_key(r->token, r->token_len, se->nonce_c, se->nonce_s, se->sid, se->key);
	se->open = true;
	se->last_ns = kvfs_mono_ns();
	se->vouched_ns = se->last_ns;
	rdma_guard_vouch(r, se->addr, se->addr_len);
	memset(m, 0, sizeof(m->u.welcome) + offsetof(struct rdma_msg, u));
	m->type = RDMA_MSG_WELCOME;
	m->req_id = in->req_id;
	m->session = se->sid;
	m->u.welcome.warm_addr = rdma_mr_raddr(&r->fab, &r->msg_mr, rdma_warm_area(r));
	m->u.welcome.warm_key = r->msg_mr.key;
	m->u.welcome.warm_len = RDMA_WARM_LEN;
	send_to(r, se, m, true);
	log_debug("rdma: session with %s open", se->node);
}

/* --- leases --------------------------------------------------------------- */

static void lease_end(remote *r, struct rdma_lease *l)
{
	if (!l->id)
		return;
	if (l->lent) {
		l->lent->leases--;
		lent_put_pages(r, l->lent);
	} else if (r->ops && r->ops->release) {
		r->ops->release(r->ops_ctx, &l->rf);
	}
	rdma_mr_close(&l->mr);
	free(l->runs);
	memset(l, 0, sizeof(*l));
}

static struct rdma_lease *lease_find(struct rdma_srv *s, uint64_t id, uint64_t sid)
{
	uint32_t slot = (uint32_t)(id & 0xffff);

	if (!id || slot >= RDMA_MAX_LEASES || s->leases[slot].id != id ||
	    s->leases[slot].sid != sid)
		return NULL;
	return &s->leases[slot];
}

/* Send the runs of @l from @first in a FILE reply. */
static void send_file(remote *r, struct rdma_session *se, const struct rdma_lease *l,
		      uint64_t req_id, uint32_t first)
{
	struct rdma_msg *m = &r->srv->out;
	uint32_t n = KVFS_MIN(l->nruns - first, (uint32_t)RDMA_RUNS_PER_MSG);

	memset(m, 0, offsetof(struct rdma_msg, u) + sizeof(m->u.file) - sizeof(m->u.file.run));
	m->type = RDMA_MSG_FILE;
	m->req_id = req_id;
	m->session = se->sid;
	m->u.file.lease = l->id;
	m->u.file.size = l->size;
	m->u.file.checksum = l->checksum;
	m->u.file.key = l->key;
	m->u.file.total = l->nruns;
	m->u.file.first = first;
	m->u.file.n = n;
	m->u.file.tier = l->tier;
	m->u.file.attrs = l->attrs;
	memcpy(m->u.file.run, l->runs + first, n * sizeof(*l->runs));
	send_to(r, se, m, true);
}

/* Runs of a daemon file: every iovec inside the arena, adjacent ones merged;
 * or one iovec elsewhere (a file of the daemon's DRAM store), registered
 * for the lease in @l->mr.
 * @return the number of runs, or -EIO if the daemon described bytes we
 * cannot serve. */
static int daemon_runs(remote *r, const struct remote_file *rf, struct rdma_lease *l,
		       struct rdma_run **out)
{
	struct rdma_run *runs;
	uint64_t sum = 0;
	int n = 0;

	*out = NULL;
	if (rf->own_mapping && rf->niov == 1 && rf->iov && rf->iov[0].iov_len == rf->size &&
	    rf->size) {
		runs = calloc(1, sizeof(*runs));
		if (!runs)
			return -ENOMEM;
		if (rdma_mr_reg(&r->fab, rf->iov[0].iov_base, rf->size, FI_REMOTE_READ | FI_READ,
				&l->mr)) {
			free(runs);
			return -EIO;
		}
		runs[0] = (struct rdma_run){rdma_mr_raddr(&r->fab, &l->mr, rf->iov[0].iov_base),
					    rf->size};
		*out = runs;
		return 1;
	}
	if (rf->niov > (1u << 24) || (rf->niov && !rf->iov))
		return -EIO;
	runs = calloc(rf->niov ? rf->niov : 1, sizeof(*runs));
	if (!runs)
		return -ENOMEM;
	for (uint32_t i = 0; i < rf->niov; i++) {
		const struct iovec *v = &rf->iov[i];
		uint64_t a;

		if (v->iov_len == 0)
			continue;
		if (!rdma_mr_has(&r->arena_mr, v->iov_base, v->iov_len)) {
			free(runs);
			return -EIO;
		}
		a = rdma_mr_raddr(&r->fab, &r->arena_mr, v->iov_base);
		sum += v->iov_len;
		if (n && runs[n - 1].addr + runs[n - 1].len == a)
			runs[n - 1].len += v->iov_len;
		else
			runs[n++] = (struct rdma_run){a, v->iov_len};
	}
	if (sum != rf->size) {
		free(runs);
		return -EIO;
	}
	*out = runs;
	return n;
}

/* Runs of the lent pages @lr covering @size bytes. */
static struct rdma_run *lend_runs(remote *r, const struct rdma_lend_run *lr, int n, uint64_t size)
{
	struct rdma_run *runs = calloc(n ? (size_t)n : 1, sizeof(*runs));
	uint64_t left = size;

	if (!runs)
		return NULL;
	for (int i = 0; i < n; i++) {
		uint8_t *p = r->lend_mem + (uint64_t)lr[i].first * r->lend_page;
		uint64_t len = KVFS_MIN((uint64_t)lr[i].npages * r->lend_page, left);

		runs[i].addr = rdma_mr_raddr(&r->fab, &r->lend_mr, p);
		runs[i].len = len;
		left -= len;
	}
	return runs;
}

static void on_lookup(remote *r, struct rdma_session *se, const struct rdma_msg *in)
{
	struct rdma_srv *s = r->srv;
	const char *path = in->u.path.path;
	struct rdma_lent *lc = lent_find(s, path);
	struct rdma_lease *l = NULL;
	int rc, slot = -1;

	for (int i = 0; i < RDMA_MAX_LEASES; i++) {
		if (!s->leases[i].id) {
			slot = i;
			break;
		}
	}
	if (slot < 0) {
		reply_status(r, se, in->req_id, -EBUSY, true);
		return;
	}
	l = &s->leases[slot];
	memset(l, 0, sizeof(*l));
	if (lc && !lc->dead) {
		l->runs = lend_runs(r, lc->runs, lc->nruns, lc->size);
		if (!l->runs) {
			reply_status(r, se, in->req_id, -ENOMEM, true);
			return;
		}
		l->nruns = (uint32_t)lc->nruns;
		l->lent = lc;
		lc->leases++;
		lru_touch(s, lc);
		l->size = lc->size;
		l->checksum = lc->checksum;
		l->key = r->lend_mr.key;
		l->tier = REMOTE_TIER_LENT;
		l->attrs = lc->attrs;
	} else if (r->ops && r->ops->lookup) {
		rc = r->ops->lookup(r->ops_ctx, path, &l->rf);
		if (rc) {
			memset(l, 0, sizeof(*l));
			reply_status(r, se, in->req_id, rc, true);
			return;
		}
		rc = daemon_runs(r, &l->rf, l, &l->runs);
		if (rc < 0) {
			log_warn("rdma: cannot serve %s: its bytes are not all in the arena", path);
			rdma_mr_close(&l->mr);
			if (r->ops->release)
				r->ops->release(r->ops_ctx, &l->rf);
			memset(l, 0, sizeof(*l));
			reply_status(r, se, in->req_id, rc, true);
			return;
		}
		l->nruns = (uint32_t)rc;
		l->size = l->rf.size;
		l->checksum = l->rf.checksum;
		l->key = l->mr.mr ? l->mr.key : r->arena_mr.key;
		l->tier = REMOTE_TIER_DRAM;
		rdma_attrs_of(r, path, &l->attrs);
	} else {
		reply_status(r, se, in->req_id, -ENOENT, true);
		return;
	}
	l->id = (++s->next_lease << 16) | (uint64_t)slot;
	l->sid = se->sid;
	l->expires_ns = kvfs_mono_ns() + s->lease_ttl_ns;
	STAT_INC(r, served);
	STAT_ADD(r, served_bytes, l->size);
	send_file(r, se, l, in->req_id, 0);
}

static void on_runs(remote *r, struct rdma_session *se, const struct rdma_msg *in)
{
	struct rdma_lease *l = lease_find(r->srv, in->u.ref.lease, se->sid);

	if (!l || in->u.ref.first >= l->nruns) {
		reply_status(r, se, in->req_id, -ESTALE, true);
		return;
	}
	l->expires_ns = kvfs_mono_ns() + r->srv->lease_ttl_ns;
	send_file(r, se, l, in->req_id, in->u.ref.first);
}

static void on_release(remote *r, struct rdma_session *se, const struct rdma_msg *in)
{
	struct rdma_lease *l = lease_find(r->srv, in->u.ref.lease, se->sid);

	if (l)
		lease_end(r, l);
}

/* --- offload -------------------------------------------------------------- */

static void ticket_free(remote *r, struct rdma_ticket *t, bool pages)
{
	if (pages && t->runs) {
		rdma_lend_free(&r->srv->lend, t->runs, t->nruns);
		lend_changed(r);
	}
	free(t->runs);
	free(t->path);
	memset(t, 0, sizeof(*t));
}

/*
 * Lent memory is a cache too: drop the least recently used copy nobody is
 * reading, and take it out of the index. @return false if none is left.
 */
static bool lend_make_room(remote *r)
{
	struct rdma_srv *s = r->srv;
	struct rdma_lent *l = s->oldest;

	while (l && l->leases)
		l = l->newer;
	if (!l)
		return false;
	remote_unpublish(r, l->path); /* queued: the path is copied */
	STAT_INC(r, lent_evictions);
	lent_kill(r, l);
	return true;
}

static void on_offload(remote *r, struct rdma_session *se, const struct rdma_msg *in)
{
	struct rdma_srv *s = r->srv;
	struct rdma_lent *lc = lent_find(s, in->u.path.path);
	struct rdma_msg *m = &s->out;
	struct rdma_ticket *t = NULL;
	struct rdma_lend_run *lr = NULL;
	struct rdma_run *runs = NULL;
	int n, slot = -1;

	if (lc && !lc->dead && lc->size == in->u.path.size && lc->checksum == in->u.path.checksum) {
		reply_status(r, se, in->req_id, -EEXIST, true);
		return;
	}
	if (!r->lend_mem || in->u.path.size > s->lend.bytes || atomic_load(&r->draining)) {
		/* (a draining node takes no more copies; the peer tries the next) */
		reply_status(r, se, in->req_id, -ENOSPC, true);
		return;
	}
	for (int i = 0; i < RDMA_MAX_TICKETS; i++) {
		if (!s->tickets[i].ticket) {
			slot = i;
			break;
		}
	}
	lr = calloc(RDMA_RUNS_PER_MSG, sizeof(*lr));
	if (slot < 0 || !lr) {
		free(lr);
		reply_status(r, se, in->req_id, slot < 0 ? -EBUSY : -ENOMEM, true);
		return;
	}
	n = rdma_lend_alloc(&s->lend, in->u.path.size, lr, RDMA_RUNS_PER_MSG);
	while (n == -ENOSPC && lend_make_room(r))
		n = rdma_lend_alloc(&s->lend, in->u.path.size, lr, RDMA_RUNS_PER_MSG);
	if (n < 0) {
		free(lr);
		reply_status(r, se, in->req_id, n, true);
		return;
	}
	runs = lend_runs(r, lr, n, in->u.path.size);
	t = &s->tickets[slot];
	t->path = strdup(in->u.path.path);
	if (!runs || !t->path) {
		rdma_lend_free(&s->lend, lr, n);
		free(lr);
		free(runs);
		free(t->path);
		t->path = NULL;
		reply_status(r, se, in->req_id, -ENOMEM, true);
		return;
	}
	lend_changed(r);
	s->ticket_gen = s->ticket_gen % 63 + 1;
	t->ticket = (uint16_t)(s->ticket_gen << 10 | (uint32_t)slot);
	t->sid = se->sid;
	t->req_id = in->req_id;
	t->size = in->u.path.size;
	t->checksum = in->u.path.checksum;
	t->attrs = in->u.path.attrs;
	t->runs = lr;
	t->nruns = n;
	t->expires_ns = kvfs_mono_ns() + s->lease_ttl_ns;

	memset(m, 0, offsetof(struct rdma_msg, u) + sizeof(m->u.file) - sizeof(m->u.file.run));
	m->type = RDMA_MSG_GRANT;
	m->req_id = in->req_id;
	m->session = se->sid;
	m->u.file.lease = t->ticket;
	m->u.file.size = t->size;
	m->u.file.checksum = t->checksum;
	m->u.file.key = r->lend_mr.key;
	m->u.file.total = (uint32_t)n;
	m->u.file.n = (uint32_t)n;
	m->u.file.tier = REMOTE_TIER_LENT;
	memcpy(m->u.file.run, runs, (size_t)n * sizeof(*runs));
	free(runs);
	send_to(r, se, m, true);
}

static void send_done(remote *r, uint64_t sid, uint64_t req_id, uint16_t ticket, int status)
{
	struct rdma_session *se = sess_find(r->srv, sid);
	struct rdma_msg *m = &r->srv->out;

	if (!se || !se->open)
		return;
	memset(m, 0, offsetof(struct rdma_msg, u) + sizeof(m->u.ref));
	m->type = RDMA_MSG_DONE;
	m->status = status;
	m->req_id = req_id;
	m->session = sid;
	m->u.ref.lease = ticket;
	send_to(r, se, m, true);
}

static void commit(remote *r, struct rdma_ticket *t)
{
	struct rdma_srv *s = r->srv;
	XXH3_state_t st;
	uint64_t left = t->size;
	struct rdma_lent *l, *old;
	size_t plen = strlen(t->path);
	uint64_t sid, req_id;
	uint16_t ticket;
	int fail;

	XXH3_64bits_reset(&st);
	for (int i = 0; i < t->nruns; i++) {
		uint64_t len = KVFS_MIN((uint64_t)t->runs[i].npages * r->lend_page, left);

		XXH3_64bits_update(&st, r->lend_mem + (uint64_t)t->runs[i].first * r->lend_page,
				   len);
		left -= len;
	}
	if (XXH3_64bits_digest(&st) != t->checksum) {
		STAT_INC(r, checksum_failures);
		log_warn("rdma: offload of %s: bytes do not match their checksum", t->path);
		fail = -EBADMSG;
		goto out_fail;
	}
	l = calloc(1, sizeof(*l) + plen + 1);
	if (!l) {
		fail = -ENOMEM;
		goto out_fail;
	}
	memcpy(l->buf, t->path, plen + 1);
	l->path = l->buf;
	l->size = t->size;
	l->checksum = t->checksum;
	l->attrs = t->attrs;
	l->runs = t->runs;
	l->nruns = t->nruns;
	old = lent_find(s, l->path);
	if (old)
		lent_kill(r, old);
	if (!tsearch(l, &s->lent, lent_cmp)) {
		free(l);
		fail = -ENOMEM;
		goto out_fail;
	}
	t->runs = NULL; /* the copy owns the pages now */
	lru_touch(s, l);
	STAT_INC(r, offloads_received);
	remote_publish(r, l->path, REMOTE_TIER_LENT); /* queued before DONE goes */
	send_done(r, t->sid, t->req_id, t->ticket, 0);
	ticket_free(r, t, false);
	return;
out_fail:
	/* The pages go back before the writer hears about it. */
	sid = t->sid;
	req_id = t->req_id;
	ticket = t->ticket;
	ticket_free(r, t, true);
	send_done(r, sid, req_id, ticket, fail);
}

static void on_immediate(remote *r, uint64_t imm)
{
	struct rdma_srv *s = r->srv;
	uint16_t ticket = (uint16_t)(imm >> 16 & 0xffff);
	uint32_t total = (uint32_t)(imm & 0xffff);
	struct rdma_ticket *t = &s->tickets[ticket & (RDMA_MAX_TICKETS - 1)];

	if ((imm >> 32) || !ticket || t->ticket != ticket || total == 0 ||
	    (t->total && t->total != total)) {
		STAT_INC(r, bad_messages);
		return;
	}
	t->total = total;
	if (++t->seen == total)
		commit(r, t);
}

static void on_free(remote *r, struct rdma_session *se, const struct rdma_msg *in)
{
	struct rdma_lent *lc = lent_find(r->srv, in->u.path.path);
	struct rdma_msg *m = &r->srv->out;

	if (!lc || lc->dead) {
		reply_status(r, se, in->req_id, -ENOENT, true);
		return;
	}
	lent_kill(r, lc);
	remote_unpublish(r, in->u.path.path);
	memset(m, 0, offsetof(struct rdma_msg, u) + sizeof(m->u.ref));
	m->type = RDMA_MSG_DONE;
	m->req_id = in->req_id;
	m->session = se->sid;
	send_to(r, se, m, true);
}

/* --- taking a lent copy back for this node's own use ------------------------ */

/*
 * A remote_take_lent() call, queued to this thread (work kind 2). Shared by
 * the caller and the work item (two references). The caller waits at most
 * timeout_ms for the server to pick it up: a take still queued then is
 * abandoned (the server skips it); one already running is local work
 * (a copy and the sink's prepare) and is waited for.
 */
enum { TAKE_QUEUED, TAKE_RUNNING, TAKE_DONE, TAKE_ABANDONED };

struct rdma_take {
	const char *path; /* the caller's: used only while the caller waits */
	const struct remote_sink *sink;
	struct remote_fetch_info *info;
	int rc;
	int state;
	_Atomic int refs;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static void take_put(struct rdma_take *t)
{
	if (atomic_fetch_sub(&t->refs, 1) != 1)
		return;
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

/* The server picks @t up. @return false if its caller gave up on it. */
static bool take_start(struct rdma_take *t)
{
	bool go;

	pthread_mutex_lock(&t->lock);
	go = t->state == TAKE_QUEUED;
	if (go)
		t->state = TAKE_RUNNING;
	pthread_mutex_unlock(&t->lock);
	return go;
}

#define TAKE_IOV 64

static void take_done(struct rdma_take *t, int rc)
{
	pthread_mutex_lock(&t->lock);
	t->rc = rc;
	t->state = TAKE_DONE;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
}

static void on_take(remote *r, struct rdma_take *t)
{
	struct rdma_lent *lc;
	struct iovec iov[TAKE_IOV];
	uint64_t left;
	size_t at = 0, off = 0;
	int n;

	if (!take_start(t))
		return; /* its caller gave up waiting */
	lc = lent_find(r->srv, t->path);
	if (!lc || lc->dead) {
		take_done(t, -ENOENT);
		return;
	}
	n = t->sink->prepare(t->sink->ctx, lc->size, lc->checksum, iov, TAKE_IOV);
	if (n < 0) {
		take_done(t, n);
		return;
	}
	/* Copy the runs of lent pages into the sink's vectors, in order. */
	left = lc->size;
	for (int i = 0; i < lc->nruns && left; i++) {
		const uint8_t *src = r->lend_mem + (uint64_t)lc->runs[i].first * r->lend_page;
		uint64_t len = KVFS_MIN((uint64_t)lc->runs[i].npages * r->lend_page, left);

		left -= len;
		while (len && at < (size_t)n) {
			size_t k = KVFS_MIN(len, iov[at].iov_len - off);

			memcpy((uint8_t *)iov[at].iov_base + off, src, k);
			src += k;
			len -= k;
			off += k;
			if (off == iov[at].iov_len) {
				at++;
				off = 0;
			}
		}
	}
	if (remote_checksum(iov, n) != lc->checksum) {
		/* Lent memory went bad: the copy is dropped, never handed out. */
		STAT_INC(r, checksum_failures);
		lent_kill(r, lc);
		remote_unpublish(r, t->path);
		take_done(t, -EBADMSG);
		return;
	}
	if (t->info) {
		memset(t->info, 0, sizeof(*t->info));
		snprintf(t->info->node, sizeof(t->info->node), "%s", r->node_id);
		t->info->tier = REMOTE_TIER_LENT;
		t->info->size = lc->size;
		t->info->checksum = lc->checksum;
		t->info->attrs = lc->attrs;
	}
	/* It is this node's own file now: the lent copy goes. */
	lent_kill(r, lc);
	remote_unpublish(r, t->path);
	take_done(t, 0);
}

int remote_take_lent(remote *r, const char *path, const struct remote_sink *sink,
		     struct remote_fetch_info *info)
{
	struct rdma_take *t;
	struct rdma_work *w;
	struct timespec ts;
	size_t plen = path ? strlen(path) : 0;
	uint64_t until;
	int rc;

	if (!path || plen == 0 || plen >= REMOTE_PATH_MAX || !sink || !sink->prepare)
		return -EINVAL;
	if (!r->srv || !r->lend_mem || !r->server_started)
		return -ENOENT;
	t = calloc(1, sizeof(*t));
	w = malloc(sizeof(*w) + sizeof(t));
	if (!t || !w) {
		free(t);
		free(w);
		return -ENOMEM;
	}
	t->path = path;
	t->sink = sink;
	t->info = info;
	t->state = TAKE_QUEUED;
	atomic_init(&t->refs, 2);
	pthread_mutex_init(&t->lock, NULL);
	rdma_cond_init_mono(&t->cond);
	w->next = NULL;
	w->kind = 2;
	w->len = sizeof(t);
	w->imm = 0;
	memcpy(w->buf, &t, sizeof(t));
	pthread_mutex_lock(&r->work_lock);
	if (atomic_load(&r->stop)) {
		pthread_mutex_unlock(&r->work_lock);
		free(w);
		atomic_store(&t->refs, 1);
		take_put(t);
		return -ENOENT;
	}
	rdma_work_append_locked(r, w);
	pthread_mutex_unlock(&r->work_lock);
	/* Bounded: the server answers every take it picks up, also at exit. */
	until = kvfs_mono_ns() + (uint64_t)r->timeout_ms * 1000000ull;
	ts.tv_sec = (time_t)(until / 1000000000ull);
	ts.tv_nsec = (long)(until % 1000000000ull);
	pthread_mutex_lock(&t->lock);
	while (t->state == TAKE_QUEUED)
		if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) == ETIMEDOUT)
			break;
	if (t->state == TAKE_QUEUED) {
		t->state = TAKE_ABANDONED;
		STAT_INC(r, timeouts);
		rc = -ETIMEDOUT;
	} else {
		while (t->state != TAKE_DONE)
			pthread_cond_wait(&t->cond, &t->lock);
		rc = t->rc;
	}
	pthread_mutex_unlock(&t->lock);
	take_put(t);
	return rc;
}

/* --- dispatch ------------------------------------------------------------- */

static void on_request(remote *r, const uint8_t *buf, uint32_t len)
{
	struct rdma_srv *s = r->srv;
	struct rdma_msg *in = &s->in;
	struct rdma_session *se;

	if (rdma_msg_decode(buf, len, in) != 0) {
		STAT_INC(r, bad_messages);
		return;
	}
	if (in->type == RDMA_MSG_HELLO) {
		if (!rdma_msg_unsigned(buf, len)) {
			STAT_INC(r, bad_messages);
			return;
		}
		on_hello(r, in);
		return;
	}
	if (in->type == RDMA_MSG_PROVE) {
		if (!rdma_msg_unsigned(buf, len)) {
			STAT_INC(r, bad_messages);
			return;
		}
		on_prove(r, buf, in);
		return;
	}
	se = sess_find(s, in->session);
	if (!se || !se->open || !rdma_msg_verify(buf, len, se->key)) {
		STAT_INC(r, bad_messages);
		return;
	}
	if (!rdma_replay_accept(&se->rx, in->seq)) {
		STAT_INC(r, replays);
		return;
	}
	se->last_ns = kvfs_mono_ns();
	if (se->last_ns - se->vouched_ns > VOUCH_EVERY) {
		se->vouched_ns = se->last_ns;
		rdma_guard_vouch(r, se->addr, se->addr_len);
	}
	switch (in->type) {
	case RDMA_MSG_LOOKUP:
		on_lookup(r, se, in);
		break;
	case RDMA_MSG_RUNS:
		on_runs(r, se, in);
		break;
	case RDMA_MSG_RELEASE:
		on_release(r, se, in);
		break;
	case RDMA_MSG_OFFLOAD:
		on_offload(r, se, in);
		break;
	case RDMA_MSG_FREE:
		on_free(r, se, in);
		break;
	default: /* a reply type sent as a request */
		STAT_INC(r, bad_messages);
		break;
	}
}

static void expire(remote *r, uint64_t now)
{
	struct rdma_srv *s = r->srv;

	for (int i = 0; i < RDMA_MAX_LEASES; i++)
		if (s->leases[i].id && s->leases[i].expires_ns < now)
			lease_end(r, &s->leases[i]);
	for (int i = 0; i < RDMA_MAX_TICKETS; i++)
		if (s->tickets[i].ticket && s->tickets[i].expires_ns < now) {
			log_debug("rdma: offload of %s expired", s->tickets[i].path);
			ticket_free(r, &s->tickets[i], true);
		}
	for (int i = 0; i < RDMA_MAX_SESSIONS; i++) {
		struct rdma_session *se = &s->sess[i];

		if (se->sid && se->last_ns + (se->open ? IDLE_NS : HALF_OPEN_NS) < now) {
			bool leased = false;

			for (int k = 0; k < RDMA_MAX_LEASES && !leased; k++)
				leased = s->leases[k].id && s->leases[k].sid == se->sid;
			if (!leased)
				sess_close(r, se);
		}
	}
}

/* Do one work item, and free it. */
static void run_work(remote *r, struct rdma_work *w)
{
	if (w->kind == 0) {
		on_request(r, w->buf, w->len);
	} else if (w->kind == 2) {
		struct rdma_take *t;

		memcpy(&t, w->buf, sizeof(t));
		on_take(r, t);
		take_put(t);
	} else {
		on_immediate(r, w->imm);
	}
	free(w);
}

void *rdma_server_main(void *arg)
{
	remote *r = arg;
	struct rdma_srv *s = r->srv;

	while (!atomic_load(&r->stop)) {
		struct rdma_work *w;
		uint64_t now;

		pthread_mutex_lock(&r->work_lock);
		if (!r->work_head) {
			struct timespec ts;
			/* Handshake replies waiting for a connection: retry soon. */
			uint64_t until =
				kvfs_mono_ns() + (s->outbox_n ? OUTBOX_EVERY : EXPIRE_EVERY);

			ts.tv_sec = (time_t)(until / 1000000000ull);
			ts.tv_nsec = (long)(until % 1000000000ull);
			pthread_cond_timedwait(&r->work_cond, &r->work_lock, &ts);
		}
		w = r->work_head;
		r->work_head = r->work_tail = NULL;
		r->work_n = 0;
		pthread_mutex_unlock(&r->work_lock);
		/* This node's own lookup misses first: they are local work, and a
		 * batch of peers' (or outsiders') messages must not delay them. */
		for (struct rdma_work **pw = &w; *pw;) {
			struct rdma_work *t = *pw;

			if (t->kind != 2) {
				pw = &t->next;
				continue;
			}
			*pw = t->next;
			run_work(r, t);
		}
		while (w) {
			struct rdma_work *next = w->next;

			run_work(r, w);
			w = next;
		}
		now = kvfs_mono_ns();
		if (s->outbox_n)
			outbox_run(r, now);
		if (now >= s->next_expire_ns) {
			expire(r, now);
			s->next_expire_ns = now + EXPIRE_EVERY;
		}
	}
	/* Takes queued before the stop still get their answer. */
	pthread_mutex_lock(&r->work_lock);
	for (struct rdma_work *w = r->work_head, *prev = NULL, *next; w; w = next) {
		next = w->next;
		if (w->kind != 2) {
			prev = w;
			continue;
		}
		{
			struct rdma_take *t;

			memcpy(&t, w->buf, sizeof(t));
			if (take_start(t))
				take_done(t, -ENOENT);
			take_put(t);
		}
		if (prev)
			prev->next = next;
		else
			r->work_head = next;
		if (r->work_tail == w)
			r->work_tail = prev;
		r->work_n--;
		free(w);
	}
	pthread_mutex_unlock(&r->work_lock);
	return NULL;
}

int rdma_server_init(remote *r)
{
	struct rdma_srv *s = calloc(1, sizeof(*s));
	int rc;

	if (!s)
		return -ENOMEM;
	s->lease_ttl_ns = KVFS_MAX(10000ull, 5ull * r->timeout_ms) * 1000000ull;
	if (r->lend_mem) {
		rc = rdma_lend_init(&s->lend, r->lend_mem, r->lend_bytes, r->lend_page);
		if (rc) {
			free(s);
			return rc;
		}
	}
	r->srv = s;
	lend_changed(r);
	return 0;
}

static void lent_destroy(void *node)
{
	lent_free(node);
}

/* After the threads stopped: end every lease, drop every copy. */
void rdma_server_fini(remote *r)
{
	struct rdma_srv *s = r->srv;

	if (!s)
		return;
	for (int i = 0; i < RDMA_MAX_LEASES; i++)
		lease_end(r, &s->leases[i]);
	for (int i = 0; i < RDMA_MAX_TICKETS; i++)
		if (s->tickets[i].ticket)
			ticket_free(r, &s->tickets[i], true);
	tdestroy(s->lent, lent_destroy);
	rdma_lend_fini(&s->lend);
	free(s);
	r->srv = NULL;
}
