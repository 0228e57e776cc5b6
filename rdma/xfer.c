/*
 * rdma/xfer.c — the engine under the protocol: the progress thread, message
 * buffers, request/reply matching, RMA transfers, the address vector cache.
 *
 * Progress. One thread polls the completion queue. It must run on every
 * node: with tcp a peer's one-sided read of our memory completes only while
 * we poll (DESIGN §5). After any completion it keeps polling (fi_cq_read,
 * yielding the CPU between polls) for RDMA_SPIN_NS, because a transfer in
 * progress completes in bursts and a sleep in the kernel between them cost
 * a third of the throughput on loopback; when idle it blocks in
 * fi_cq_sread with a short timeout (or backs off with fi_cq_read when the
 * CQ has no wait object). It does no protocol
 * work itself: requests and remote-write immediates are copied to the
 * server thread's queue, replies are copied to the client call waiting for
 * them, RMA completions update their transfer. A receive buffer is reposted
 * as soon as its message is copied out.
 *
 * Messages. RDMA_NRECV receive and RDMA_NSEND send buffers of RDMA_MSG_SIZE
 * live in one registered region, followed by a small warm-up area peers read
 * once per new session. A sender takes a free send buffer (waiting, bounded,
 * if all are in flight); its completion returns it.
 *
 * Requests and replies. A client call takes a pending slot; the request id
 * names the slot (low bits) and a sequence number (high bits), so a late
 * reply to an abandoned request finds the slot reused and is dropped. The
 * progress thread copies a reply into the waiter's buffer only while the
 * slot is armed and not yet done; the waiter decodes and authenticates it.
 *
 * Transfers. struct rdma_xfer is reference counted (one reference for the
 * caller, one per posted operation), so a caller that gives up after
 * timeout_ms without progress can return while the provider still owns the
 * operation contexts.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define WAIT_SLICE_MS 100

static uint8_t *recv_buf(remote *r, uint32_t i)
{
	return r->msg_mem + (size_t)i * RDMA_MSG_SIZE;
}

static uint8_t *send_buf(remote *r, uint32_t i)
{
	return r->msg_mem + (size_t)(RDMA_NRECV + i) * RDMA_MSG_SIZE;
}

static void abs_time(struct timespec *ts, uint64_t mono_ns)
{
	ts->tv_sec = (time_t)(mono_ns / 1000000000ull);
	ts->tv_nsec = (long)(mono_ns % 1000000000ull);
}

void rdma_cond_init_mono(pthread_cond_t *c)
{
	pthread_condattr_t a;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	pthread_cond_init(c, &a);
	pthread_condattr_destroy(&a);
}

/* Back off while the provider says -FI_EAGAIN (the progress thread drains). */
static void eagain_pause(unsigned *round)
{
	struct timespec ts = {0, 20000L << KVFS_MIN(*round, 6u)};

	nanosleep(&ts, NULL);
	(*round)++;
}

/* The errno a failed completion stands for. */
static int completion_errno(int err)
{
	switch (err) {
	case ENOTCONN:
	case ECONNRESET:
	case ECONNREFUSED:
	case ECONNABORTED:
	case EPIPE:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case FI_ETIMEDOUT:
	case ECANCELED: /* rxm flushes operations when a connection breaks */
		return -ECONNRESET;
	default:
		return -EIO;
	}
}

/* --- address vector ------------------------------------------------------- */

/*
 * Find or insert @addr. A proven lookup marks the entry proven. An unproven
 * address may only take a free slot while fewer than RDMA_MAX_AV_UNPROVEN
 * unproven ones are in, else it replaces one of those (removing an address
 * closes the provider's connection to it, and its descriptor); so a flood of
 * forged addresses never pushes a peer out, nor holds more than a few
 * connections open.
 */
static int av_get(remote *r, const uint8_t *addr, uint32_t len, bool proven, fi_addr_t *fa)
{
	static uint32_t victim, unproven_victim;
	int free_slot = -1, rc = 0;
	uint32_t unproven = 0;

	if (len == 0 || len > RDMA_ADDR_MAX)
		return -EINVAL;
	pthread_mutex_lock(&r->av_lock);
	for (int i = 0; i < RDMA_MAX_AV; i++) {
		struct rdma_av_ent *e = &r->av[i];

		if (!e->used) {
			if (free_slot < 0)
				free_slot = i;
			continue;
		}
		if (e->len == len && memcmp(e->addr, addr, len) == 0) {
			e->proven |= proven;
			*fa = e->fa;
			goto out;
		}
		unproven += !e->proven;
	}
	if (!proven && (unproven >= RDMA_MAX_AV_UNPROVEN || free_slot < 0)) {
		/* The next unproven entry in turn makes room. */
		free_slot = -1;
		for (int k = 0; k < RDMA_MAX_AV && free_slot < 0; k++) {
			int i = (int)(unproven_victim++ % RDMA_MAX_AV);

			if (r->av[i].used && !r->av[i].proven)
				free_slot = i;
		}
		if (free_slot < 0) {
			rc = -EAGAIN;
			goto out;
		}
		fi_av_remove(r->fab.av, &r->av[free_slot].fa, 1, 0);
		r->av[free_slot].used = false;
	}
	if (free_slot < 0) {
		/* Full: forget one; whoever used it re-inserts on its next send. */
		free_slot = (int)(victim++ % RDMA_MAX_AV);
		fi_av_remove(r->fab.av, &r->av[free_slot].fa, 1, 0);
		r->av[free_slot].used = false;
	}
	if (fi_av_insert(r->fab.av, addr, 1, fa, 0, NULL) != 1) {
		rc = -EINVAL;
		goto out;
	}
	memcpy(r->av[free_slot].addr, addr, len);
	r->av[free_slot].len = len;
	r->av[free_slot].fa = *fa;
	r->av[free_slot].used = true;
	r->av[free_slot].proven = proven;
out:
	pthread_mutex_unlock(&r->av_lock);
	return rc;
}

int rdma_av_get(remote *r, const uint8_t *addr, uint32_t len, fi_addr_t *fa)
{
	return av_get(r, addr, len, true, fa);
}

void rdma_av_drop(remote *r, const uint8_t *addr, uint32_t len)
{
	pthread_mutex_lock(&r->av_lock);
	for (int i = 0; i < RDMA_MAX_AV; i++) {
		struct rdma_av_ent *e = &r->av[i];

		if (e->used && e->len == len && memcmp(e->addr, addr, len) == 0) {
			/* Removing the address closes the provider's connection,
			 * so a stalled peer stops writing into our buffers. */
			fi_av_remove(r->fab.av, &e->fa, 1, 0);
			e->used = false;
		}
	}
	pthread_mutex_unlock(&r->av_lock);
}

/* --- receive side --------------------------------------------------------- */

static int post_recv(remote *r, uint32_t i)
{
	struct rdma_op *op = &r->recv_ops[i];

	memset(op, 0, sizeof(*op));
	op->kind = RDMA_OP_RECV;
	op->idx = i;
	return (int)fi_recv(r->fab.ep, recv_buf(r, i), RDMA_MSG_SIZE, r->msg_mr.desc,
			    FI_ADDR_UNSPEC, &op->fctx);
}

static bool is_reply(unsigned type)
{
	switch (type) {
	case RDMA_MSG_CHALLENGE:
	case RDMA_MSG_WELCOME:
	case RDMA_MSG_REFUSED:
	case RDMA_MSG_FILE:
	case RDMA_MSG_GRANT:
	case RDMA_MSG_DONE:
	case RDMA_MSG_STATUS:
		return true;
	default:
		return false;
	}
}

static void queue_work(remote *r, uint8_t kind, const uint8_t *buf, uint32_t len, uint64_t imm)
{
	struct rdma_work *w;

	pthread_mutex_lock(&r->work_lock);
	if (r->work_n >= RDMA_MAX_WORK) {
		static _Atomic uint64_t dropped, last_log;
		uint64_t n = atomic_fetch_add(&dropped, 1) + 1;

		pthread_mutex_unlock(&r->work_lock);
		if (rdma_log_due(&last_log, kvfs_mono_ns()))
			log_warn(
				"rdma: server queue full: %llu messages dropped so far (last a %s)",
				(unsigned long long)n, kind ? "write immediate" : "request");
		return;
	}
	pthread_mutex_unlock(&r->work_lock);
	w = malloc(sizeof(*w) + len);
	if (!w)
		return;
	w->next = NULL;
	w->kind = kind;
	w->len = len;
	w->imm = imm;
	if (len)
		memcpy(w->buf, buf, len);
	pthread_mutex_lock(&r->work_lock);
	rdma_work_append_locked(r, w);
	pthread_mutex_unlock(&r->work_lock);
}

static void deliver_reply(remote *r, const uint8_t *buf, uint32_t len)
{
	uint64_t req_id;
	struct rdma_pending *p;

	memcpy(&req_id, buf + 16, 8);
	req_id = le64toh(req_id);
	p = &r->pend[req_id % RDMA_MAX_PENDING];
	pthread_mutex_lock(&r->pend_lock);
	if (req_id && p->req_id == req_id && p->armed && !p->done) {
		memcpy(p->reply, buf, len);
		p->reply_len = len;
		p->done = true;
		pthread_cond_signal(&p->cond);
	}
	pthread_mutex_unlock(&r->pend_lock);
}

static void on_message(remote *r, const uint8_t *buf, size_t len)
{
	uint32_t magic;
	uint16_t type;

	if (len < RDMA_HDR_SIZE || len > RDMA_MSG_SIZE) {
		STAT_INC(r, bad_messages);
		return;
	}
	memcpy(&magic, buf, 4);
	memcpy(&type, buf + 6, 2);
	type = le16toh(type);
	if (le32toh(magic) != RDMA_MAGIC || type == 0 || type >= RDMA_MSG_TYPE_MAX) {
		STAT_INC(r, bad_messages);
		return;
	}
	if (is_reply(type))
		deliver_reply(r, buf, (uint32_t)len);
	else
		queue_work(r, 0, buf, (uint32_t)len, 0);
}

/* --- completions ---------------------------------------------------------- */

static void xfer_complete(struct rdma_op *op, int err)
{
	struct rdma_xfer *x = op->x;

	pthread_mutex_lock(&x->lock);
	x->inflight--;
	if (err && !x->err)
		x->err = err;
	if (!err) {
		x->done_bytes += op->bytes;
		if (op->seq >= x->base && op->seq - x->base < 64)
			x->done_mask |= 1ull << (op->seq - x->base);
	}
	x->last_ns = kvfs_mono_ns();
	x->free_slots[x->free_top++] = op->idx;
	pthread_cond_broadcast(&x->cond);
	pthread_mutex_unlock(&x->lock);
	rdma_xfer_put(x);
}

static void send_done(remote *r, struct rdma_op *op, int err)
{
	if (err && op->req_id) {
		struct rdma_pending *p = &r->pend[op->req_id % RDMA_MAX_PENDING];

		pthread_mutex_lock(&r->pend_lock);
		if (p->req_id == op->req_id && p->armed && !p->done) {
			p->err = err;
			p->done = true;
			pthread_cond_signal(&p->cond);
		}
		pthread_mutex_unlock(&r->pend_lock);
	}
	pthread_mutex_lock(&r->send_lock);
	r->send_free[r->send_nfree++] = op->idx;
	pthread_cond_signal(&r->send_cond);
	pthread_mutex_unlock(&r->send_lock);
}

static void on_completion(remote *r, const struct fi_cq_data_entry *e, uint32_t *repost,
			  uint32_t *nrepost)
{
	struct rdma_op *op = e->op_context;

	if (!op) {
		/* A remote write's immediate, without a receive consumed. */
		if (e->flags & FI_REMOTE_CQ_DATA)
			queue_work(r, 1, NULL, 0, e->data);
		return;
	}
	switch (op->kind) {
	case RDMA_OP_RECV:
		if ((e->flags & FI_REMOTE_CQ_DATA) && (e->flags & FI_REMOTE_WRITE))
			queue_work(r, 1, NULL, 0, e->data); /* FI_RX_CQ_DATA mode */
		else
			on_message(r, recv_buf(r, op->idx), e->len);
		repost[(*nrepost)++] = op->idx;
		break;
	case RDMA_OP_SEND:
		send_done(r, op, 0);
		break;
	case RDMA_OP_RMA:
		xfer_complete(op, 0);
		break;
	}
}

static void on_error(remote *r, const struct fi_cq_err_entry *e, uint32_t *repost,
		     uint32_t *nrepost)
{
	struct rdma_op *op = e->op_context;
	int err = completion_errno(e->err);

	if (!op)
		return;
	switch (op->kind) {
	case RDMA_OP_RECV:
		if (e->err == FI_ETRUNC)
			STAT_INC(r, bad_messages); /* longer than any message */
		if (!atomic_load(&r->stop))
			repost[(*nrepost)++] = op->idx;
		break;
	case RDMA_OP_SEND:
		send_done(r, op, err);
		break;
	case RDMA_OP_RMA:
		xfer_complete(op, err);
		break;
	}
}

static void *progress_main(void *arg)
{
	remote *r = arg;
	struct fi_cq_data_entry ent[32];
	uint32_t repost[RDMA_NRECV], nrepost = 0;
	unsigned idle = 0;
	uint64_t busy_until = 0;

	while (!atomic_load(&r->stop)) {
		ssize_t n;

		/* Receives that could not be reposted last time (-FI_EAGAIN). */
		for (uint32_t i = 0; i < nrepost;) {
			if (post_recv(r, repost[i]) == 0)
				repost[i] = repost[--nrepost];
			else
				break;
		}
		if (r->fab.can_wait && nrepost == 0 && kvfs_mono_ns() >= busy_until)
			n = fi_cq_sread(r->fab.cq, ent, 32, NULL, WAIT_SLICE_MS);
		else
			n = fi_cq_read(r->fab.cq, ent, 32);
		if (n > 0) {
			idle = 0;
			busy_until = kvfs_mono_ns() + RDMA_SPIN_NS;
			for (ssize_t i = 0; i < n; i++)
				on_completion(r, &ent[i], repost, &nrepost);
		} else if (n == -FI_EAVAIL) {
			struct fi_cq_err_entry ee;

			memset(&ee, 0, sizeof(ee));
			if (fi_cq_readerr(r->fab.cq, &ee, 0) == 1)
				on_error(r, &ee, repost, &nrepost);
		} else if (n == -FI_EAGAIN || n == -FI_ETIMEDOUT || n == -FI_EINTR) {
			if (kvfs_mono_ns() < busy_until)
				sched_yield();
			else if (!r->fab.can_wait || nrepost)
				eagain_pause(&idle);
		} else {
			log_warn("rdma: completion queue: %s", fi_strerror((int)-n));
			eagain_pause(&idle);
		}
	}
	return NULL;
}

/* --- send side ------------------------------------------------------------ */

static int send_get(remote *r, uint64_t deadline_ns, uint32_t *idx)
{
	struct timespec ts;
	int rc = 0;

	abs_time(&ts, deadline_ns);
	pthread_mutex_lock(&r->send_lock);
	while (r->send_nfree == 0 && rc == 0)
		rc = pthread_cond_timedwait(&r->send_cond, &r->send_lock, &ts);
	if (r->send_nfree)
		*idx = r->send_free[--r->send_nfree];
	else
		rc = -ETIMEDOUT;
	pthread_mutex_unlock(&r->send_lock);
	return rc ? -ETIMEDOUT : 0;
}

static int post_send(remote *r, uint32_t idx, size_t len, fi_addr_t fa, uint64_t req_id,
		     uint64_t deadline_ns)
{
	struct rdma_op *op = &r->send_ops[idx];
	unsigned round = 0;
	ssize_t rc;

	memset(op, 0, sizeof(*op));
	op->kind = RDMA_OP_SEND;
	op->idx = idx;
	op->req_id = req_id;
	while ((rc = fi_send(r->fab.ep, send_buf(r, idx), len, r->msg_mr.desc, fa, &op->fctx)) ==
	       -FI_EAGAIN) {
		if (kvfs_mono_ns() >= deadline_ns)
			break;
		eagain_pause(&round);
	}
	if (rc) {
		pthread_mutex_lock(&r->send_lock);
		r->send_free[r->send_nfree++] = idx;
		pthread_cond_signal(&r->send_cond);
		pthread_mutex_unlock(&r->send_lock);
		return rc == -FI_EAGAIN ? -ETIMEDOUT : completion_errno((int)-rc);
	}
	return 0;
}

int rdma_send_msg(remote *r, const uint8_t *addr, uint32_t addr_len, const struct rdma_msg *m,
		  const uint8_t *key, uint64_t deadline_ns)
{
	fi_addr_t fa;
	uint32_t idx;
	int len, rc;

	rc = rdma_av_get(r, addr, addr_len, &fa);
	if (rc)
		return rc;
	rc = send_get(r, deadline_ns, &idx);
	if (rc)
		return rc;
	len = rdma_msg_encode(m, send_buf(r, idx), RDMA_MSG_SIZE);
	if (len < 0) {
		pthread_mutex_lock(&r->send_lock);
		r->send_free[r->send_nfree++] = idx;
		pthread_mutex_unlock(&r->send_lock);
		log_err("rdma: refusing to send a malformed %s", rdma_msg_name(m->type));
		return len;
	}
	if (key)
		rdma_msg_sign(send_buf(r, idx), (size_t)len, key);
	return post_send(r, idx, (size_t)len, fa,
			 m->type == RDMA_MSG_HELLO || m->type == RDMA_MSG_PROVE ||
					 m->type == RDMA_MSG_LOOKUP || m->type == RDMA_MSG_RUNS ||
					 m->type == RDMA_MSG_OFFLOAD || m->type == RDMA_MSG_FREE
				 ? m->req_id
				 : 0,
			 deadline_ns);
}

int rdma_send_try(remote *r, const uint8_t *addr, uint32_t addr_len, const void *buf, size_t len)
{
	fi_addr_t fa;
	uint32_t idx;
	int rc;

	if (len > RDMA_MSG_SIZE)
		return -EINVAL;
	rc = av_get(r, addr, addr_len, false, &fa);
	if (rc)
		return rc;
	if (send_get(r, 0, &idx))
		return -EAGAIN;
	memcpy(send_buf(r, idx), buf, len);
	rc = post_send(r, idx, len, fa, 0, 0);
	return rc == -ETIMEDOUT ? -EAGAIN : rc;
}

int rdma_send_raw(remote *r, const uint8_t *addr, uint32_t addr_len, const void *buf, size_t len,
		  uint64_t deadline_ns)
{
	fi_addr_t fa;
	uint32_t idx;
	int rc;

	if (len > RDMA_MSG_SIZE)
		return -EINVAL;
	rc = rdma_av_get(r, addr, addr_len, &fa);
	if (rc)
		return rc;
	rc = send_get(r, deadline_ns, &idx);
	if (rc)
		return rc;
	memcpy(send_buf(r, idx), buf, len);
	return post_send(r, idx, len, fa, 0, deadline_ns);
}

/* --- pending requests ----------------------------------------------------- */

int rdma_pend_open(remote *r, uint8_t *reply, uint64_t deadline_ns, uint64_t *req_id)
{
	for (;;) {
		pthread_mutex_lock(&r->pend_lock);
		for (uint32_t k = 0; k < RDMA_MAX_PENDING; k++) {
			uint64_t id = ++r->next_req; /* never 0: 0 means none */
			struct rdma_pending *p = &r->pend[id % RDMA_MAX_PENDING];

			if (p->req_id)
				continue;
			p->req_id = id;
			p->armed = true;
			p->done = false;
			p->err = 0;
			p->reply = reply;
			p->reply_len = 0;
			*req_id = id;
			pthread_mutex_unlock(&r->pend_lock);
			return 0;
		}
		pthread_mutex_unlock(&r->pend_lock);
		if (kvfs_mono_ns() >= deadline_ns)
			return -ETIMEDOUT;
		{
			struct timespec ts = {0, 1000000};

			nanosleep(&ts, NULL);
		}
	}
}

void rdma_pend_rearm(remote *r, uint64_t req_id)
{
	struct rdma_pending *p = &r->pend[req_id % RDMA_MAX_PENDING];

	pthread_mutex_lock(&r->pend_lock);
	if (p->req_id == req_id) {
		p->armed = true;
		p->done = false;
		p->err = 0;
		p->reply_len = 0;
	}
	pthread_mutex_unlock(&r->pend_lock);
}

int rdma_pend_wait(remote *r, uint64_t req_id, uint64_t deadline_ns)
{
	struct rdma_pending *p = &r->pend[req_id % RDMA_MAX_PENDING];
	struct timespec ts;
	int rc;

	abs_time(&ts, deadline_ns);
	pthread_mutex_lock(&r->pend_lock);
	while (p->req_id == req_id && !p->done) {
		if (pthread_cond_timedwait(&p->cond, &r->pend_lock, &ts) == ETIMEDOUT)
			break;
	}
	if (p->req_id != req_id)
		rc = -EINVAL;
	else if (!p->done)
		rc = -ETIMEDOUT;
	else if (p->err)
		rc = p->err;
	else
		rc = (int)p->reply_len;
	pthread_mutex_unlock(&r->pend_lock);
	return rc;
}

void rdma_pend_put(remote *r, uint64_t req_id)
{
	struct rdma_pending *p = &r->pend[req_id % RDMA_MAX_PENDING];

	pthread_mutex_lock(&r->pend_lock);
	if (p->req_id == req_id) {
		p->req_id = 0;
		p->armed = false;
		p->reply = NULL;
	}
	pthread_mutex_unlock(&r->pend_lock);
}

/* --- transfers ------------------------------------------------------------ */

struct rdma_xfer *rdma_xfer_new(remote *r)
{
	struct rdma_xfer *x = calloc(1, sizeof(*x));

	if (!x)
		return NULL;
	x->r = r;
	pthread_mutex_lock(&r->xfer_lock);
	x->next = r->xfers;
	if (r->xfers)
		r->xfers->prev = x;
	r->xfers = x;
	pthread_mutex_unlock(&r->xfer_lock);
	pthread_mutex_init(&x->lock, NULL);
	rdma_cond_init_mono(&x->cond);
	atomic_init(&x->refs, 1);
	for (uint32_t i = 0; i < RDMA_QD; i++)
		x->free_slots[i] = i;
	x->free_top = RDMA_QD;
	x->last_ns = kvfs_mono_ns();
	return x;
}

static void xfer_unlink(struct rdma_xfer *x)
{
	remote *r = x->r;

	pthread_mutex_lock(&r->xfer_lock);
	if (x->prev)
		x->prev->next = x->next;
	else
		r->xfers = x->next;
	if (x->next)
		x->next->prev = x->prev;
	pthread_mutex_unlock(&r->xfer_lock);
}

void rdma_xfer_put(struct rdma_xfer *x)
{
	if (atomic_fetch_sub(&x->refs, 1) != 1)
		return;
	xfer_unlink(x);
	pthread_mutex_destroy(&x->lock);
	pthread_cond_destroy(&x->cond);
	free(x);
}

int rdma_xfer_post(remote *r, struct rdma_xfer *x, bool write, void *local, void *desc,
		   uint64_t len, fi_addr_t fa, uint64_t raddr, uint64_t rkey, uint64_t imm,
		   uint64_t deadline_ns)
{
	struct rdma_op *op;
	unsigned round = 0;
	ssize_t rc;

	pthread_mutex_lock(&x->lock);
	if (x->free_top == 0) {
		pthread_mutex_unlock(&x->lock);
		return -EBUSY;
	}
	op = &x->ops[x->free_slots[--x->free_top]];
	op->idx = (uint32_t)(op - x->ops);
	op->seq = x->posted++;
	x->inflight++;
	pthread_mutex_unlock(&x->lock);
	atomic_fetch_add(&x->refs, 1);

	op->kind = RDMA_OP_RMA;
	op->x = x;
	op->bytes = len;
	op->req_id = 0;
	for (;;) {
		if (write)
			rc = fi_writedata(r->fab.ep, local, len, desc, imm, fa, raddr, rkey,
					  &op->fctx);
		else
			rc = fi_read(r->fab.ep, local, len, desc, fa, raddr, rkey, &op->fctx);
		if (rc != -FI_EAGAIN || kvfs_mono_ns() >= deadline_ns)
			break;
		eagain_pause(&round);
	}
	if (rc) {
		pthread_mutex_lock(&x->lock);
		x->inflight--;
		x->free_slots[x->free_top++] = op->idx;
		pthread_mutex_unlock(&x->lock);
		rdma_xfer_put(x);
		return rc == -FI_EAGAIN ? -ETIMEDOUT : completion_errno((int)-rc);
	}
	return 0;
}

int rdma_xfer_wait(remote *r, struct rdma_xfer *x, uint32_t below, bool want_done)
{
	uint64_t tmo = (uint64_t)r->timeout_ms * 1000000ull;
	int rc;

	pthread_mutex_lock(&x->lock);
	for (;;) {
		struct timespec ts;

		if (x->err) {
			rc = x->err;
			break;
		}
		if (x->inflight < below) {
			rc = 1;
			break;
		}
		if (want_done && (x->done_mask & 1)) {
			rc = 0;
			break;
		}
		if (kvfs_mono_ns() >= x->last_ns + tmo) {
			rc = -ETIMEDOUT;
			break;
		}
		abs_time(&ts, x->last_ns + tmo);
		pthread_cond_timedwait(&x->cond, &x->lock, &ts);
	}
	pthread_mutex_unlock(&x->lock);
	return rc;
}

void rdma_xfer_drain(remote *r, struct rdma_xfer *x)
{
	uint64_t tmo = (uint64_t)r->timeout_ms * 1000000ull;

	pthread_mutex_lock(&x->lock);
	while (x->inflight > 0 && kvfs_mono_ns() < x->last_ns + tmo) {
		struct timespec ts;

		abs_time(&ts, x->last_ns + tmo);
		pthread_cond_timedwait(&x->cond, &x->lock, &ts);
	}
	pthread_mutex_unlock(&x->lock);
}

uint32_t rdma_xfer_take(struct rdma_xfer *x)
{
	uint32_t n;

	pthread_mutex_lock(&x->lock);
	n = x->done_mask == ~0ull ? 64 : (uint32_t)__builtin_ctzll(~x->done_mask);
	x->done_mask = n == 64 ? 0 : x->done_mask >> n;
	x->base += n;
	pthread_mutex_unlock(&x->lock);
	return n;
}

/* --- start / stop --------------------------------------------------------- */

int rdma_engine_start(remote *r)
{
	size_t bytes = (size_t)(RDMA_NRECV + RDMA_NSEND) * RDMA_MSG_SIZE + RDMA_WARM_LEN;
	int rc;

	pthread_mutex_init(&r->send_lock, NULL);
	rdma_cond_init_mono(&r->send_cond);
	pthread_mutex_init(&r->av_lock, NULL);
	pthread_mutex_init(&r->pend_lock, NULL);
	pthread_mutex_init(&r->xfer_lock, NULL);
	for (int i = 0; i < RDMA_MAX_PENDING; i++)
		rdma_cond_init_mono(&r->pend[i].cond);
	pthread_mutex_init(&r->work_lock, NULL);
	rdma_cond_init_mono(&r->work_cond);

	r->msg_mem = aligned_alloc(4096, bytes);
	if (!r->msg_mem)
		return -ENOMEM;
	memset(r->msg_mem, 0, bytes);
	rc = rdma_mr_reg(&r->fab, r->msg_mem, bytes, FI_SEND | FI_RECV | FI_READ | FI_REMOTE_READ,
			 &r->msg_mr);
	if (rc)
		return rc;
	for (uint32_t i = 0; i < RDMA_NSEND; i++)
		r->send_free[i] = i;
	r->send_nfree = RDMA_NSEND;
	for (uint32_t i = 0; i < RDMA_NRECV; i++) {
		unsigned round = 0;

		while ((rc = post_recv(r, i)) == -FI_EAGAIN && round < 100) {
			fi_cq_read(r->fab.cq, NULL, 0);
			eagain_pause(&round);
		}
		if (rc)
			return rc;
	}
	rc = pthread_create(&r->progress_thr, NULL, progress_main, r);
	if (rc)
		return -rc;
	r->progress_started = true;
	return 0;
}

uint8_t *rdma_warm_area(remote *r)
{
	return r->msg_mem + (size_t)(RDMA_NRECV + RDMA_NSEND) * RDMA_MSG_SIZE;
}

void rdma_engine_stop(remote *r)
{
	if (r->progress_started) {
		atomic_store(&r->stop, true);
		if (r->fab.can_wait)
			fi_cq_signal(r->fab.cq);
		pthread_join(r->progress_thr, NULL);
		r->progress_started = false;
	}
}

void rdma_engine_free(remote *r)
{
	struct rdma_work *w = r->work_head;

	while (w) {
		struct rdma_work *next = w->next;

		free(w);
		w = next;
	}
	r->work_head = r->work_tail = NULL;
	/* Transfers abandoned on a peer that never answered: their operations
	 * died with the endpoint. */
	while (r->xfers) {
		struct rdma_xfer *x = r->xfers;

		r->xfers = x->next;
		pthread_mutex_destroy(&x->lock);
		pthread_cond_destroy(&x->cond);
		free(x);
	}
	rdma_mr_close(&r->msg_mr);
	free(r->msg_mem);
	r->msg_mem = NULL;
}
