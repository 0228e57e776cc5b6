/*
 * rdma/client.c — what this node asks of one peer: a session, a fetch (lease,
 * one-sided reads, checksum), an offload (grant, writes with immediates,
 * commit), a free.
 *
 * Sessions. One per peer, opened on first use under peer->sess_lock
 * (HELLO/CHALLENGE/PROVE/WELCOME, see proto.c and server.c) and then shared
 * by every thread: a call copies the session id and key and signs its
 * requests; replies must carry a valid MAC under the same key. The session
 * is warmed up with one small one-sided read of the peer's warm-up area so
 * the first real transfer does not pay for connection setup. A peer that
 * times out or fails in transit is marked down for a while, its session
 * closed and its address dropped from the address vector (closing the
 * provider's connection, so a stalled peer cannot keep writing into our
 * buffers after we gave up).
 *
 * Transfers. The holder's runs and the caller's iovecs are cut into
 * operations of at most RDMA_CHUNK bytes, at most RDMA_QD in flight; an
 * attempt fails after timeout_ms without any completion. A read is
 * checksummed as its operations land, oldest first, so only the last
 * chunk's hashing is left when the bytes are in. Destination or
 * source memory inside the registered arena is used as is; other memory is
 * registered for the duration of the call.
 *
 * Every call is bounded: each wait has a deadline, no lock is held while
 * waiting except the peer's session lock during a handshake.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */
#include <xxhash.h>

#include "core/fault.h"
#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define MAX_IOV 4096

/* What one call needs, off the stack (the messages are 12 KiB each). */
struct rdma_call {
	struct rdma_peer *p;
	struct rdma_msg out, in;
	uint8_t reply[RDMA_MSG_SIZE];
	uint32_t reply_len;
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t addr_len;
	uint64_t sid;
	uint8_t key[32];
	uint64_t req_id;
};

static uint64_t deadline(const remote *r)
{
	return kvfs_mono_ns() + (uint64_t)r->timeout_ms * 1000000ull;
}

/* Copy @p's current address into @c. @return its generation. */
static uint32_t peer_addr(remote *r, struct rdma_peer *p, struct rdma_call *c)
{
	uint32_t gen;

	pthread_mutex_lock(&r->peer_lock);
	memcpy(c->addr, p->addr, p->addr_len);
	c->addr_len = p->addr_len;
	gen = p->addr_gen;
	pthread_mutex_unlock(&r->peer_lock);
	return gen;
}

static uint32_t peer_gen(remote *r, struct rdma_peer *p)
{
	uint32_t gen;

	pthread_mutex_lock(&r->peer_lock);
	gen = p->addr_gen;
	pthread_mutex_unlock(&r->peer_lock);
	return gen;
}

void rdma_peer_failed(remote *r, struct rdma_peer *p, int err)
{
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t len;

	if (err == -ETIMEDOUT)
		STAT_INC(r, timeouts);
	else if (err == -ECONNRESET || err == -EIO)
		STAT_INC(r, conn_errors);
	atomic_store(&p->down_until, kvfs_mono_ns() + (uint64_t)r->timeout_ms * 1000000ull);
	pthread_mutex_lock(&p->sess_lock);
	p->open = false;
	pthread_mutex_unlock(&p->sess_lock);
	pthread_mutex_lock(&r->peer_lock);
	memcpy(addr, p->addr, p->addr_len);
	len = p->addr_len;
	pthread_mutex_unlock(&r->peer_lock);
	rdma_av_drop(r, addr, len);
	log_info("rdma: peer %s failed (%s); skipping it for %u ms", p->id, strerror(-err),
		 r->timeout_ms);
}

/*
 * Sequence numbers of session @sid with @p (a new session starts both
 * directions over): those of our requests, and whether a reply's number
 * is new (not a replay).
 */
static void seq_session_locked(struct rdma_peer *p, uint64_t sid)
{
	if (p->seq_sid != sid) {
		p->seq_sid = sid;
		p->tx_seq = 0;
		memset(&p->rx, 0, sizeof(p->rx));
	}
}

static bool seq_accept(remote *r, struct rdma_peer *p, uint64_t sid, uint64_t seq)
{
	bool ok;

	pthread_mutex_lock(&p->seq_lock);
	seq_session_locked(p, sid);
	ok = rdma_replay_accept(&p->rx, seq);
	pthread_mutex_unlock(&p->seq_lock);
	if (!ok)
		STAT_INC(r, replays);
	return ok;
}

/*
 * Send c->out (numbered and MACed with @sign) to c->p. Numbers are taken
 * and posted under the peer's seq_lock, so they go out in order (one
 * provider connection keeps it) and concurrent calls never push one another
 * out of the server's replay window.
 */
static int call_send(remote *r, struct rdma_call *c, bool sign, uint64_t dl)
{
	int rc;

	if (!sign) {
		c->out.seq = 0;
		return rdma_send_msg(r, c->addr, c->addr_len, &c->out, NULL, dl);
	}
	pthread_mutex_lock(&c->p->seq_lock);
	seq_session_locked(c->p, c->out.session);
	c->out.seq = ++c->p->tx_seq;
	rc = rdma_send_msg(r, c->addr, c->addr_len, &c->out, c->key, dl);
	pthread_mutex_unlock(&c->p->seq_lock);
	return rc;
}

/* Send c->out and wait for its reply in c->in. With @sign the request is
 * MACed and the reply must be, with a sequence number not seen before.
 * @keep leaves the pending slot open (the caller puts it). */
static int exchange(remote *r, struct rdma_call *c, bool sign, bool keep)
{
	uint64_t dl = deadline(r);
	int rc, len;

	rc = rdma_pend_open(r, c->reply, dl, &c->req_id);
	if (rc)
		return rc;
	c->out.req_id = c->req_id;
	rc = call_send(r, c, sign, dl);
	if (rc)
		goto out;
	len = rdma_pend_wait(r, c->req_id, dl);
	if (len < 0) {
		rc = len;
		goto out;
	}
	c->reply_len = (uint32_t)len;
	rc = rdma_msg_decode(c->reply, (size_t)len, &c->in);
	if (rc == 0 && c->in.session != c->out.session && c->out.type != RDMA_MSG_HELLO)
		rc = -EBADMSG;
	if (rc == 0 && sign && !rdma_msg_verify(c->reply, (size_t)len, c->key))
		rc = -EBADMSG;
	if (rc) {
		STAT_INC(r, bad_messages);
		rc = -EPROTO;
	} else if (sign && !seq_accept(r, c->p, c->in.session, c->in.seq)) {
		rc = -EPROTO;
	}
out:
	if (rc || !keep)
		rdma_pend_put(r, c->req_id);
	return rc;
}

/* Wait for a further reply (DONE) on a kept slot. */
static int await_more(remote *r, struct rdma_call *c, uint64_t dl)
{
	int len = rdma_pend_wait(r, c->req_id, dl), rc;

	if (len < 0)
		return len;
	c->reply_len = (uint32_t)len;
	rc = rdma_msg_decode(c->reply, (size_t)len, &c->in);
	if (rc == 0 && (c->in.session != c->sid || !rdma_msg_verify(c->reply, (size_t)len, c->key)))
		rc = -EBADMSG;
	if (rc) {
		STAT_INC(r, bad_messages);
		return -EPROTO;
	}
	return seq_accept(r, c->p, c->sid, c->in.seq) ? 0 : -EPROTO;
}

/* One small one-sided read: the provider sets up the connection and the
 * RMA path now rather than in the first measured transfer. */
static int warm_up(remote *r, struct rdma_peer *p, const uint8_t *addr, uint32_t addr_len)
{
	struct rdma_xfer *x;
	fi_addr_t fa;
	int rc;

	if (p->warm_len == 0)
		return 0;
	rc = rdma_av_get(r, addr, addr_len, &fa);
	if (rc)
		return rc;
	x = rdma_xfer_new(r);
	if (!x)
		return -ENOMEM;
	rc = rdma_xfer_post(r, x, false, rdma_warm_area(r), r->msg_mr.desc, p->warm_len, fa,
			    p->warm_addr, p->warm_key, 0, deadline(r));
	if (rc == 0)
		rc = rdma_xfer_wait(r, x, 1, false);
	rdma_xfer_put(x);
	return rc < 0 ? rc : 0;
}

int rdma_session(remote *r, struct rdma_peer *p)
{
	struct rdma_call *c;
	uint8_t nonce_c[RDMA_NONCE_LEN], want[32];
	bool server_ok;
	uint32_t gen;
	int rc = 0;

	pthread_mutex_lock(&p->sess_lock);
	/* Reuse an open session unless the peer restarted or moved, or the
	 * session sat idle long enough that the server may have dropped it. */
	if (p->open && p->sess_gen == peer_gen(r, p) &&
	    kvfs_mono_ns() - atomic_load(&p->last_used) < RDMA_CLIENT_IDLE_NS)
		goto out_unlock;
	p->open = false;
	c = calloc(1, sizeof(*c));
	if (!c) {
		rc = -ENOMEM;
		goto out_unlock;
	}
	c->p = p;
	gen = peer_addr(r, p, c);
	if (RAND_bytes(nonce_c, sizeof(nonce_c)) != 1) {
		rc = -EIO;
		goto out_free;
	}
	c->out.type = RDMA_MSG_HELLO;
	snprintf(c->out.u.hello.node, sizeof(c->out.u.hello.node), "%s", r->node_id);
	c->out.u.hello.addr_len = (uint32_t)r->fab.name_len;
	memcpy(c->out.u.hello.addr, r->fab.name, r->fab.name_len);
	memcpy(c->out.u.hello.nonce, nonce_c, sizeof(nonce_c));
	rc = exchange(r, c, false, false);
	if (rc)
		goto out_failed;
	if (c->in.type == RDMA_MSG_REFUSED) {
		rc = c->in.status;
		goto out_free;
	}
	if (c->in.type != RDMA_MSG_CHALLENGE || !rdma_msg_unsigned(c->reply, c->reply_len)) {
		STAT_INC(r, bad_messages);
		rc = -EPROTO;
		goto out_free;
	}
	if (strcmp(c->in.u.challenge.node, p->id) != 0) {
		log_warn("rdma: %s answered at the address of %s", c->in.u.challenge.node, p->id);
		rc = -ESTALE;
		goto out_failed;
	}
	c->sid = c->in.session;
	rdma_hello_mac(r->token, r->token_len, true, nonce_c, c->in.u.challenge.nonce, c->sid,
		       p->id, r->node_id, want);
	/* A server without our token is refused, but our proof goes out
	 * anyway (it reveals nothing but an HMAC over fresh nonces), so the
	 * server learns it too, refuses us and counts it. */
	server_ok = CRYPTO_memcmp(want, c->in.u.challenge.mac, 32) == 0;
	rdma_session_key(r->token, r->token_len, nonce_c, c->in.u.challenge.nonce, c->sid, c->key);
	rdma_hello_mac(r->token, r->token_len, false, nonce_c, c->in.u.challenge.nonce, c->sid,
		       p->id, r->node_id, c->out.u.prove.mac);
	c->out.type = RDMA_MSG_PROVE;
	c->out.session = c->sid;
	rc = exchange(r, c, false, false);
	if (!server_ok || (rc == 0 && c->in.type == RDMA_MSG_REFUSED)) {
		STAT_INC(r, auth_rejected);
		if (!server_ok)
			log_warn("rdma: peer %s does not hold the cluster token; not using it",
				 p->id);
		else
			log_warn("rdma: peer %s refused our cluster token", p->id);
		rc = -EACCES;
		goto out_failed;
	}
	if (rc)
		goto out_failed;
	if (c->in.type != RDMA_MSG_WELCOME || c->in.session != c->sid ||
	    !rdma_msg_verify(c->reply, c->reply_len, c->key)) {
		STAT_INC(r, bad_messages);
		rc = -EPROTO;
		goto out_failed;
	}
	if (!seq_accept(r, p, c->sid, c->in.seq)) {
		rc = -EPROTO;
		goto out_failed;
	}
	p->sid = c->sid;
	memcpy(p->key, c->key, sizeof(p->key));
	p->warm_addr = c->in.u.welcome.warm_addr;
	p->warm_key = c->in.u.welcome.warm_key;
	p->warm_len = c->in.u.welcome.warm_len;
	rc = warm_up(r, p, c->addr, c->addr_len);
	if (rc)
		goto out_failed;
	p->open = true;
	p->sess_gen = gen;
	atomic_store(&p->last_used, kvfs_mono_ns());
	rdma_guard_vouch(r, c->addr, c->addr_len);
	goto out_free;
out_failed:
	pthread_mutex_unlock(&p->sess_lock);
	if (rc != -EACCES)
		rdma_peer_failed(r, p, rc);
	else
		atomic_store(&p->down_until, kvfs_mono_ns() + (uint64_t)r->timeout_ms * 1000000ull);
	OPENSSL_cleanse(c, sizeof(*c));
	free(c);
	return rc;
out_free:
	OPENSSL_cleanse(c, sizeof(*c));
	free(c);
out_unlock:
	pthread_mutex_unlock(&p->sess_lock);
	return rc;
}

/* A new call on @p's open session. */
static struct rdma_call *call_new(remote *r, struct rdma_peer *p, int *rc)
{
	struct rdma_call *c;

	*rc = rdma_session(r, p);
	if (*rc)
		return NULL;
	c = calloc(1, sizeof(*c));
	if (!c) {
		*rc = -ENOMEM;
		return NULL;
	}
	c->p = p;
	pthread_mutex_lock(&p->sess_lock);
	if (!p->open || peer_addr(r, p, c) != p->sess_gen)
		*rc = -ENOTCONN;
	c->sid = p->sid;
	memcpy(c->key, p->key, sizeof(c->key));
	atomic_store(&p->last_used, kvfs_mono_ns());
	pthread_mutex_unlock(&p->sess_lock);
	if (*rc) {
		free(c);
		return NULL;
	}
	c->out.session = c->sid;
	return c;
}

/* A call about @path (checked here) of message @type. @return it, or NULL and *@rc. */
static struct rdma_call *path_call(remote *r, struct rdma_peer *p, int type, const char *path,
				   int *rc)
{
	size_t plen = strlen(path);
	struct rdma_call *c;

	if (plen >= REMOTE_PATH_MAX || !rdma_path_valid(path, plen)) {
		*rc = -EINVAL;
		return NULL;
	}
	c = call_new(r, p, rc);
	if (!c)
		return NULL;
	c->out.type = (uint16_t)type;
	c->out.u.path.path_len = (uint32_t)plen;
	memcpy(c->out.u.path.path, path, plen + 1);
	return c;
}

static void call_free(struct rdma_call *c)
{
	OPENSSL_cleanse(c->key, sizeof(c->key));
	free(c);
}

/* --- memory for a transfer ------------------------------------------------ */

struct rdma_regs {
	struct rdma_mr *mrs; /* registered for this call */
	int n;
	void **desc; /* per iovec */
};

static int regs_get(remote *r, struct rdma_regs *g, const struct iovec *iov, int n, uint64_t acc)
{
	memset(g, 0, sizeof(*g));
	g->desc = calloc((size_t)n, sizeof(*g->desc));
	g->mrs = calloc((size_t)n, sizeof(*g->mrs));
	if (!g->desc || !g->mrs)
		return -ENOMEM;
	for (int i = 0; i < n; i++) {
		int rc;

		if (iov[i].iov_len == 0)
			continue;
		if (rdma_mr_has(&r->arena_mr, iov[i].iov_base, iov[i].iov_len)) {
			g->desc[i] = r->arena_mr.desc;
			continue;
		}
		if (rdma_mr_has(&r->lend_mr, iov[i].iov_base, iov[i].iov_len)) {
			g->desc[i] = r->lend_mr.desc;
			continue;
		}
		rc = rdma_mr_reg(&r->fab, iov[i].iov_base, iov[i].iov_len, acc, &g->mrs[g->n]);
		if (rc)
			return rc < 0 && rc > -4096 ? rc : -EIO;
		g->desc[i] = g->mrs[g->n].desc;
		g->n++;
	}
	return 0;
}

static void regs_put(struct rdma_regs *g)
{
	for (int i = 0; i < g->n; i++)
		rdma_mr_close(&g->mrs[i]);
	free(g->mrs);
	free(g->desc);
}

#define WINDOW 16 /* operations posted ahead of the checksum, at most (< 64) */

/* A read's verification, as its operations complete in order: the bytes
 * are hashed while later ones are still on the wire. */
struct verify {
	XXH3_state_t st;
	uint64_t corrupt_at; /* file offset the fault seam flips, or UINT64_MAX */
};

struct seg {
	uint8_t *p;
	uint64_t len, off;
};

/* Hash the operations that completed, oldest first. */
static void hash_done(struct rdma_xfer *x, struct verify *v, const struct seg *ring,
		      uint64_t *nhashed)
{
	uint32_t n = rdma_xfer_take(x);

	for (uint32_t i = 0; i < n; i++, (*nhashed)++) {
		const struct seg *sg = &ring[*nhashed % WINDOW];

		if (v->corrupt_at >= sg->off && v->corrupt_at - sg->off < sg->len)
			sg->p[v->corrupt_at - sg->off] ^= 0x5a; /* the corruption seam */
		XXH3_64bits_update(&v->st, sg->p, sg->len);
	}
}

/*
 * Move bytes between the local @iov and the remote @runs (as long as both
 * last), at most RDMA_CHUNK per operation, RDMA_QD in flight, and for a
 * read with @v at most WINDOW ahead of the checksum. A write carries the
 * immediate (@imm_hi << 16 | @total). With @count_only, just count the
 * operations. @return the number of operations, or -errno.
 */
static long move(remote *r, bool write, const struct iovec *iov, int niov,
		 const struct rdma_regs *g, const struct rdma_run *runs, uint32_t nruns,
		 uint64_t rkey, fi_addr_t fa, uint64_t imm_hi, long total, bool count_only,
		 struct verify *v)
{
	struct rdma_xfer *x = count_only ? NULL : rdma_xfer_new(r);
	struct seg ring[WINDOW];
	uint64_t li = 0, loff = 0, ri = 0, roff = 0, off = 0, nhashed = 0;
	long ops = 0;
	int rc = 0;

	if (!count_only && !x)
		return -ENOMEM;
	while (li < (uint64_t)niov && ri < nruns) {
		uint64_t llen = iov[li].iov_len - loff, rlen = runs[ri].len - roff;
		uint64_t len = KVFS_MIN(KVFS_MIN(llen, rlen), (uint64_t)RDMA_CHUNK);

		if (llen == 0) {
			li++;
			loff = 0;
			continue;
		}
		if (!count_only) {
			uint8_t *local = (uint8_t *)iov[li].iov_base + loff;

			/* Room to post: fewer than QD in flight, and within the
			 * checksum window; hash whatever landed meanwhile. */
			for (;;) {
				bool room;

				if (v)
					hash_done(x, v, ring, &nhashed);
				room = !v || (uint64_t)ops - nhashed < WINDOW;
				rc = rdma_xfer_wait(r, x, room ? RDMA_QD : 0, v != NULL);
				if (rc != 0)
					break;
			}
			if (rc < 0)
				break;
			rc = rdma_xfer_post(
				r, x, write, local, g->desc[li], len, fa, runs[ri].addr + roff,
				rkey, write ? (imm_hi << 16 | (uint64_t)total) : 0, deadline(r));
			if (rc)
				break;
			ring[ops % WINDOW] = (struct seg){local, len, off};
		}
		ops++;
		off += len;
		loff += len;
		roff += len;
		if (loff == iov[li].iov_len) {
			li++;
			loff = 0;
		}
		if (roff == runs[ri].len) {
			ri++;
			roff = 0;
		}
	}
	if (x) {
		/* Everything completed (and hashed) or something failed. */
		for (;;) {
			int rc2;

			if (v)
				hash_done(x, v, ring, &nhashed);
			if (rc)
				break;
			rc2 = rdma_xfer_wait(r, x, 1, v != NULL && nhashed < (uint64_t)ops);
			if (rc2 < 0) {
				rc = rc2;
				break;
			}
			if (rc2 == 1 && (!v || nhashed == (uint64_t)ops)) {
				if (v)
					hash_done(x, v, ring, &nhashed);
				break;
			}
		}
		/* After a failure, let what is still in flight finish or fail
		 * (bounded) so the caller can reuse its memory; a stalled peer
		 * (-ETIMEDOUT) is cut off by rdma_peer_failed instead. */
		if (rc && rc != -ETIMEDOUT)
			rdma_xfer_drain(r, x);
		rdma_xfer_put(x);
	}
	return rc < 0 ? rc : ops;
}

static uint64_t iov_total(const struct iovec *iov, int n)
{
	uint64_t sum = 0;

	for (int i = 0; i < n; i++)
		sum += iov[i].iov_len;
	return sum;
}

/* --- fetch ---------------------------------------------------------------- */

static void release_lease(remote *r, struct rdma_call *c, uint64_t lease)
{
	memset(&c->out.u, 0, sizeof(c->out.u.ref));
	c->out.type = RDMA_MSG_RELEASE;
	c->out.req_id = 0;
	c->out.session = c->sid;
	c->out.u.ref.lease = lease;
	call_send(r, c, true, deadline(r));
}

int rdma_fetch_from(remote *r, struct rdma_peer *p, const char *path,
		    const struct remote_sink *sink, struct remote_fetch_info *info,
		    bool *sink_failed)
{
	struct rdma_call *c;
	struct rdma_run *runs = NULL;
	struct iovec *iov = NULL;
	struct rdma_regs g = {0};
	struct verify v;
	struct remote_attrs attrs;
	uint64_t lease = 0, size, checksum, key, sum = 0;
	uint32_t total, got = 0;
	uint8_t tier;
	fi_addr_t fa;
	long moved;
	int rc, niov;

	if (sink_failed)
		*sink_failed = false;
	c = path_call(r, p, RDMA_MSG_LOOKUP, path, &rc);
	if (!c)
		return rc;
	rc = exchange(r, c, true, false);
	if (rc)
		goto out_failed;
	if (c->in.type == RDMA_MSG_STATUS) {
		rc = c->in.status;
		goto out;
	}
	if (c->in.type != RDMA_MSG_FILE || c->in.u.file.first != 0) {
		STAT_INC(r, bad_messages);
		rc = -EPROTO;
		goto out;
	}
	lease = c->in.u.file.lease;
	size = c->in.u.file.size;
	checksum = c->in.u.file.checksum;
	key = c->in.u.file.key;
	total = c->in.u.file.total;
	tier = c->in.u.file.tier;
	attrs = c->in.u.file.attrs;
	runs = calloc(total ? total : 1, sizeof(*runs));
	if (!runs) {
		rc = -ENOMEM;
		goto out_release;
	}
	for (;;) {
		for (uint32_t i = 0; i < c->in.u.file.n; i++) {
			runs[got + i] = c->in.u.file.run[i];
			sum += c->in.u.file.run[i].len;
		}
		got += c->in.u.file.n;
		if (got >= total)
			break;
		c->out.type = RDMA_MSG_RUNS;
		memset(&c->out.u, 0, sizeof(c->out.u.ref));
		c->out.u.ref.lease = lease;
		c->out.u.ref.first = got;
		rc = exchange(r, c, true, false);
		if (rc)
			goto out_failed;
		if (c->in.type == RDMA_MSG_STATUS) {
			rc = c->in.status;
			goto out;
		}
		if (c->in.type != RDMA_MSG_FILE || c->in.u.file.lease != lease ||
		    c->in.u.file.first != got || c->in.u.file.total != total ||
		    c->in.u.file.size != size || c->in.u.file.checksum != checksum ||
		    c->in.u.file.key != key || c->in.u.file.n == 0) {
			STAT_INC(r, bad_messages);
			rc = -EPROTO;
			goto out_release;
		}
	}
	if (sum != size) {
		STAT_INC(r, bad_messages);
		rc = -EPROTO;
		goto out_release;
	}
	iov = calloc(MAX_IOV, sizeof(*iov));
	if (!iov) {
		rc = -ENOMEM;
		goto out_release;
	}
	niov = sink->prepare(sink->ctx, size, checksum, iov, MAX_IOV);
	if (niov < 0 || niov > MAX_IOV || iov_total(iov, niov) != size) {
		rc = niov < 0 ? niov : -EINVAL;
		if (sink_failed)
			*sink_failed = true;
		goto out_release;
	}
	rc = regs_get(r, &g, iov, niov, FI_READ);
	if (rc)
		goto out_release;
	rc = rdma_av_get(r, c->addr, c->addr_len, &fa);
	if (rc)
		goto out_release;
	XXH3_64bits_reset(&v.st);
	v.corrupt_at = size && kvfs_fault(KVFS_FAULT_NET_READ) ? size / 2 : UINT64_MAX;
	moved = move(r, false, iov, niov, &g, runs, total, key, fa, 0, 0, false, &v);
	if (moved < 0) {
		rc = (int)moved;
		goto out_failed;
	}
	if (XXH3_64bits_digest(&v.st) != checksum) {
		STAT_INC(r, checksum_failures);
		log_warn("rdma: %s from %s failed its checksum", path, p->id);
		rc = -EBADMSG;
		goto out_release;
	}
	if (info) {
		snprintf(info->node, sizeof(info->node), "%s", p->id);
		info->tier = (enum remote_tier)tier;
		info->size = size;
		info->checksum = checksum;
		info->attrs = attrs;
	}
	rc = 0;
out_release:
	release_lease(r, c, lease);
	goto out;
out_failed:
	rdma_peer_failed(r, p, rc);
out:
	regs_put(&g);
	free(iov);
	free(runs);
	call_free(c);
	return rc;
}

/* --- offload -------------------------------------------------------------- */

int rdma_offload_to(remote *r, struct rdma_peer *p, const char *path, const struct iovec *src,
		    int n, uint64_t size, uint64_t checksum)
{
	return rdma_offload_attrs_to(r, p, path, src, n, size, checksum, NULL);
}

int rdma_offload_attrs_to(remote *r, struct rdma_peer *p, const char *path, const struct iovec *src,
			  int n, uint64_t size, uint64_t checksum, const struct remote_attrs *attrs)
{
	struct rdma_call *c;
	struct rdma_regs g = {0};
	struct rdma_run *runs = NULL;
	uint32_t nruns;
	uint64_t ticket, key;
	bool kept = false;
	fi_addr_t fa;
	long writes;
	int rc;

	c = path_call(r, p, RDMA_MSG_OFFLOAD, path, &rc);
	if (!c)
		return rc;
	c->out.u.path.size = size;
	c->out.u.path.checksum = checksum;
	if (attrs)
		c->out.u.path.attrs = *attrs;
	else
		rdma_attrs_of(r, path, &c->out.u.path.attrs);
	rc = exchange(r, c, true, true);
	if (rc)
		goto out_failed;
	kept = true;
	if (c->in.type == RDMA_MSG_STATUS) {
		rc = c->in.status == -EEXIST ? 0 : c->in.status;
		goto out;
	}
	if (c->in.type != RDMA_MSG_GRANT || c->in.u.file.size != size ||
	    c->in.u.file.checksum != checksum || c->in.u.file.lease == 0 ||
	    c->in.u.file.lease > 0xffff) {
		STAT_INC(r, bad_messages);
		rc = -EPROTO;
		goto out;
	}
	ticket = c->in.u.file.lease;
	key = c->in.u.file.key;
	nruns = c->in.u.file.n;
	runs = malloc(nruns * sizeof(*runs));
	if (!runs) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(runs, c->in.u.file.run, nruns * sizeof(*runs));
	writes = move(r, true, src, n, NULL, runs, nruns, 0, 0, 0, 0, true, NULL);
	if (writes > RDMA_MAX_WRITES) {
		rc = -EFBIG; /* the ticket expires at the target */
		goto out;
	}
	rc = regs_get(r, &g, src, n, FI_WRITE);
	if (rc)
		goto out;
	rc = rdma_av_get(r, c->addr, c->addr_len, &fa);
	if (rc)
		goto out;
	/* DONE may arrive as soon as the last write lands: arm for it first. */
	rdma_pend_rearm(r, c->req_id);
	writes = move(r, true, src, n, &g, runs, nruns, key, fa, ticket, writes, false, NULL);
	if (writes < 0) {
		rc = (int)writes;
		goto out_failed;
	}
	rc = await_more(r, c, deadline(r));
	if (rc)
		goto out_failed;
	if (c->in.type != RDMA_MSG_DONE || c->in.u.ref.lease != ticket) {
		STAT_INC(r, bad_messages);
		rc = -EPROTO;
		goto out;
	}
	rc = c->in.status;
	if (rc == 0) {
		STAT_INC(r, offloads);
		STAT_ADD(r, offload_bytes, size);
	}
	goto out;
out_failed:
	rdma_peer_failed(r, p, rc);
out:
	if (kept)
		rdma_pend_put(r, c->req_id);
	regs_put(&g);
	free(runs);
	call_free(c);
	return rc;
}

int rdma_free_at(remote *r, struct rdma_peer *p, const char *path)
{
	struct rdma_call *c;
	int rc;

	c = path_call(r, p, RDMA_MSG_FREE, path, &rc);
	if (!c)
		return rc;
	rc = exchange(r, c, true, false);
	if (rc)
		rdma_peer_failed(r, p, rc);
	else if (c->in.type == RDMA_MSG_DONE || c->in.type == RDMA_MSG_STATUS)
		rc = c->in.status;
	else
		rc = -EPROTO;
	call_free(c);
	return rc;
}
