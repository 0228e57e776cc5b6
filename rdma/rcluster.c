/*
 * rdma/rcluster.c — one logical connection to the cluster index: a single
 * Redis server (redis://HOST:PORT, unix:PATH) or a Redis Cluster
 * (redis-cluster://HOST:PORT[,HOST:PORT...]). Debian's hiredis 0.14 has no
 * cluster client, so the slot routing is here, kept to what the index needs.
 *
 * Use: queue commands with rdma_rconn_append() (the key, if any, is argv[1]),
 * then rdma_rconn_exec() sends them as one pipeline per server and returns
 * the replies in the order queued. Every command the index sends names one
 * key (there is no MULTI, script or multi-key command), so a batch needs no
 * atomicity across keys and splits freely per node; every command is
 * idempotent (HSET/HDEL/SADD/SREM/SET/DEL/GET...), so one that may or may
 * not have run before a connection broke is simply sent again.
 *
 * Cluster routing. A slot is CRC16-XMODEM of the key (or of its {hash tag})
 * mod 16384. The slot map comes from CLUSTER SLOTS, asked of any node we
 * know (the seeds of the URL first time). A MOVED reply updates the map for
 * that slot and the command is resent there; an ASK reply (a slot being
 * migrated) resends only that command to the named node, preceded by
 * ASKING. A node that cannot be reached, and the errors CLUSTERDOWN and
 * TRYAGAIN (a failover or a migration in progress), refresh the whole map
 * and retry with a growing pause, until the deadline (timeout_ms from the
 * start of the exec). A master that dies is replaced by its replica once
 * the cluster promotes it; the map refresh then points its slots there.
 * Commands still undelivered at the deadline get a NULL reply and the exec
 * returns -EIO: the caller treats it as a lost connection (the index thread
 * reconnects and resynchronises, which rewrites anything a failover lost
 * from the asynchronous replica).
 *
 * Single server: the same code with one node that owns every slot and no
 * map; a broken connection fails the exec at once (-EIO), as before.
 *
 * Not thread-safe: one rconn per thread of use (the index thread's, and
 * the query connection under q_lock).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define RC_SLOTS     16384
#define RC_NONE	     0xffff
#define RC_HOST_MAX  256
#define RC_PAUSE_MIN (20ull * 1000000ull)
#define RC_PAUSE_MAX (400ull * 1000000ull)

struct rc_node {
	char host[RC_HOST_MAX]; /* or the socket path (unix) */
	int port;		/* 0: a unix socket */
	redisContext *c;
	uint64_t retry_ns; /* a failed connect is not retried before this */
};

struct rc_cmd {
	char *buf; /* redisFormatCommandArgv */
	int len;
	uint16_t slot;
	uint16_t ask;  /* node to ask once (ASK redirect), or RC_NONE */
	uint16_t sent; /* node it was sent to this round, or RC_NONE */
	bool asking;   /* an ASKING went before it this round */
};

struct rdma_rconn {
	bool cluster;
	uint32_t timeout_ms;
	struct rc_node nodes[RDMA_RCONN_MAX_NODES];
	uint32_t nnodes, nseeds; /* nodes[0, nseeds) come from the URL */
	uint16_t *slot_node;	 /* [RC_SLOTS] (cluster) */
	struct rc_cmd *cmds;
	size_t ncmds, cap;
	redisReply **reps;
	struct rdma_rconn_stats own, *st; /* st: the caller's, or own */
};

/* --- slots ------------------------------------------------------------------ */

uint16_t rdma_crc16(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint16_t crc = 0;

	for (size_t i = 0; i < len; i++) {
		crc ^= (uint16_t)(p[i] << 8);
		for (int b = 0; b < 8; b++)
			crc = crc & 0x8000 ? (uint16_t)(crc << 1 ^ 0x1021) : (uint16_t)(crc << 1);
	}
	return crc;
}

uint16_t rdma_key_slot(const char *key, size_t len)
{
	const char *open = memchr(key, '{', len), *close;

	if (open) {
		size_t rest = len - (size_t)(open - key) - 1;

		close = memchr(open + 1, '}', rest);
		if (close && close > open + 1) {
			key = open + 1;
			len = (size_t)(close - open - 1);
		}
	}
	return rdma_crc16(key, len) & (RC_SLOTS - 1);
}

/* --- URLs ------------------------------------------------------------------- */

/* "HOST:PORT" or "[V6]:PORT" of @len bytes into @n. */
static int parse_hostport(const char *s, size_t len, struct rc_node *n)
{
	const char *colon = NULL;
	size_t hl;
	long port;
	char *end, num[8];

	for (size_t i = len; i > 0; i--)
		if (s[i - 1] == ':') {
			colon = s + i - 1;
			break;
		}
	if (!colon || (size_t)(s + len - colon - 1) >= sizeof(num) || colon + 1 == s + len)
		return -EINVAL;
	memcpy(num, colon + 1, (size_t)(s + len - colon - 1));
	num[s + len - colon - 1] = '\0';
	port = strtol(num, &end, 10);
	if (*end || port < 1 || port > 65535)
		return -EINVAL;
	hl = (size_t)(colon - s);
	if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
		s++;
		hl -= 2;
	}
	if (hl == 0 || hl >= RC_HOST_MAX || memchr(s, ',', hl) || memchr(s, '/', hl))
		return -EINVAL;
	memcpy(n->host, s, hl);
	n->host[hl] = '\0';
	n->port = (int)port;
	return 0;
}

/* Fill @rc's seed nodes from @url. */
static int parse_url(struct rdma_rconn *rc, const char *url, char *err, size_t errlen)
{
	const char *p;

	rc->nnodes = 0;
	if (strncmp(url, "unix:", 5) == 0) {
		p = url + 5;
		if (strncmp(p, "//", 2) == 0)
			p += 2;
		if (!*p || strlen(p) >= RC_HOST_MAX)
			goto bad;
		snprintf(rc->nodes[0].host, RC_HOST_MAX, "%s", p);
		rc->nodes[0].port = 0;
		rc->nnodes = 1;
	} else if (strncmp(url, "redis://", 8) == 0) {
		p = url + 8;
		if (parse_hostport(p, strlen(p), &rc->nodes[0]))
			goto bad;
		rc->nnodes = 1;
	} else if (strncmp(url, "redis-cluster://", 16) == 0) {
		p = url + 16;
		rc->cluster = true;
		while (*p) {
			const char *comma = strchr(p, ',');
			size_t l = comma ? (size_t)(comma - p) : strlen(p);

			if (rc->nnodes == RDMA_RCONN_MAX_NODES / 2 ||
			    parse_hostport(p, l, &rc->nodes[rc->nnodes]))
				goto bad;
			rc->nnodes++;
			p += l;
			if (*p == ',' && !*++p)
				goto bad; /* a trailing comma */
		}
		if (!rc->nnodes)
			goto bad;
	} else {
		goto bad;
	}
	rc->nseeds = rc->nnodes;
	return 0;
bad:
	if (err)
		snprintf(err, errlen,
			 "--cluster %s: expected redis://HOST:PORT, unix:PATH or "
			 "redis-cluster://HOST:PORT[,HOST:PORT...]",
			 url);
	return -EINVAL;
}

int rdma_rconn_check_url(const char *url, char *err, size_t errlen)
{
	struct rdma_rconn *rc = calloc(1, sizeof(*rc));
	int rc_ = rc ? parse_url(rc, url, err, errlen) : -ENOMEM;

	free(rc);
	return rc_;
}

/* --- nodes ------------------------------------------------------------------ */

static void node_drop(struct rdma_rconn *rc, struct rc_node *n)
{
	if (n->c) {
		redisFree(n->c);
		n->c = NULL;
		rc->st->conn_failures++;
	}
}

/* Connected, or NULL. */
static redisContext *node_conn(struct rdma_rconn *rc, struct rc_node *n)
{
	uint32_t ms = rc->timeout_ms;
	struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
	redisContext *c;

	if (n->c)
		return n->c;
	if (kvfs_mono_ns() < n->retry_ns)
		return NULL; /* it just failed: do not pay its connect timeout again */
	c = n->port ? redisConnectWithTimeout(n->host, n->port, tv)
		    : redisConnectUnixWithTimeout(n->host, tv);
	if (c && (c->err || redisSetTimeout(c, tv) != REDIS_OK)) {
		redisFree(c);
		c = NULL;
	}
	if (!c) {
		rc->st->conn_failures++;
		n->retry_ns = kvfs_mono_ns() + RC_PAUSE_MIN;
	}
	n->c = c;
	return c;
}

/* The node at @host:@port, added if new. @return its index or RC_NONE. */
static uint16_t node_find(struct rdma_rconn *rc, const char *host, size_t hl, int port)
{
	struct rc_node *n;

	if (hl == 0 || hl >= RC_HOST_MAX || port < 1 || port > 65535)
		return RC_NONE;
	for (uint32_t i = 0; i < rc->nnodes; i++)
		if (rc->nodes[i].port == port && strlen(rc->nodes[i].host) == hl &&
		    memcmp(rc->nodes[i].host, host, hl) == 0)
			return (uint16_t)i;
	if (rc->nnodes == RDMA_RCONN_MAX_NODES) {
		/* Full: forget the last node that is not a seed. */
		node_drop(rc, &rc->nodes[rc->nnodes - 1]);
		rc->nnodes--;
		for (uint32_t s = 0; s < RC_SLOTS; s++)
			if (rc->slot_node[s] == rc->nnodes)
				rc->slot_node[s] = RC_NONE;
	}
	n = &rc->nodes[rc->nnodes];
	memset(n, 0, sizeof(*n));
	memcpy(n->host, host, hl);
	n->host[hl] = '\0';
	n->port = port;
	return (uint16_t)rc->nnodes++;
}

/* "<slot> <host>:<port>" after "MOVED " or "ASK ". */
static int parse_redirect(struct rdma_rconn *rc, const char *s, size_t len, uint16_t *slot,
			  uint16_t *node)
{
	const char *sp = memchr(s, ' ', len);
	struct rc_node tmp;
	long v;
	char *end;

	if (!sp)
		return -EBADMSG;
	v = strtol(s, &end, 10);
	if (end != sp || v < 0 || v >= RC_SLOTS)
		return -EBADMSG;
	if (parse_hostport(sp + 1, len - (size_t)(sp + 1 - s), &tmp))
		return -EBADMSG;
	*slot = (uint16_t)v;
	*node = node_find(rc, tmp.host, strlen(tmp.host), tmp.port);
	return *node == RC_NONE ? -EBADMSG : 0;
}

int rdma_slots_reply(const struct redisReply *rep,
		     void (*fn)(void *ctx, const struct rdma_slot_range *r), void *ctx)
{
	int n = 0;

	if (rep->type != REDIS_REPLY_ARRAY)
		return -EBADMSG;
	for (size_t i = 0; i < rep->elements; i++) {
		const redisReply *e = rep->element[i], *m;
		struct rdma_slot_range r;
		long long first, last, port;

		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[0]->type != REDIS_REPLY_INTEGER ||
		    e->element[1]->type != REDIS_REPLY_INTEGER)
			continue;
		m = e->element[2]; /* the master: host, port, id, ... */
		if (m->type != REDIS_REPLY_ARRAY || m->elements < 2 ||
		    m->element[0]->type != REDIS_REPLY_STRING ||
		    m->element[1]->type != REDIS_REPLY_INTEGER)
			continue;
		/*
		 * Clip to the slots that exist before walking them: a range
		 * from LLONG_MIN was walked one number at a time.
		 */
		first = KVFS_MAX(e->element[0]->integer, 0);
		last = KVFS_MIN(e->element[1]->integer, RC_SLOTS - 1);
		port = m->element[1]->integer;
		if (first > last || port < 1 || port > 65535)
			continue;
		r.first = (uint16_t)first;
		r.last = (uint16_t)last;
		r.host = m->element[0]->str;
		r.host_len = m->element[0]->len;
		if (r.host_len == 1 && r.host[0] == '?')
			r.host_len = 0;
		r.port = (int)port;
		fn(ctx, &r);
		n++;
	}
	return n;
}

struct slots_apply {
	struct rdma_rconn *rc;
	uint16_t from;
	uint32_t mapped;
};

static void map_range(void *arg, const struct rdma_slot_range *r)
{
	struct slots_apply *a = arg;
	struct rdma_rconn *rc = a->rc;
	const char *host = r->host;
	size_t hl = r->host_len;
	uint16_t node;

	if (hl == 0) {
		/* The node does not know its own address: the one we asked. */
		host = rc->nodes[a->from].host;
		hl = strlen(host);
	}
	node = node_find(rc, host, hl, r->port);
	if (node == RC_NONE)
		return;
	for (uint32_t s = r->first; s <= r->last; s++) {
		rc->slot_node[s] = node;
		a->mapped++;
	}
}

/* Apply a CLUSTER SLOTS reply got from node @from. @return slots mapped. */
static uint32_t apply_slots(struct rdma_rconn *rc, const redisReply *rep, uint16_t from)
{
	struct slots_apply a = {rc, from, 0};

	if (rep->type != REDIS_REPLY_ARRAY)
		return 0;
	for (uint32_t s = 0; s < RC_SLOTS; s++)
		rc->slot_node[s] = RC_NONE;
	rdma_slots_reply(rep, map_range, &a);
	return a.mapped;
}

/* Reload the slot map from the first node that answers: the ones we know,
 * starting after the seeds' order. @return 0 or -ENOTCONN. */
static int refresh(struct rdma_rconn *rc)
{
	rc->st->refreshes++;
	for (uint32_t k = 0; k < rc->nnodes; k++) {
		uint16_t i = (uint16_t)((k + rc->st->refreshes) % rc->nnodes);
		redisContext *c = node_conn(rc, &rc->nodes[i]);
		redisReply *rep;
		uint32_t mapped;

		if (!c)
			continue;
		rep = redisCommand(c, "CLUSTER SLOTS");
		if (!rep) {
			node_drop(rc, &rc->nodes[i]);
			continue;
		}
		if (rep->type == REDIS_REPLY_ERROR)
			log_warn("rdma: redis %s:%d: CLUSTER SLOTS: %s", rc->nodes[i].host,
				 rc->nodes[i].port, rep->str);
		mapped = apply_slots(rc, rep, i);
		freeReplyObject(rep);
		if (mapped == RC_SLOTS)
			return 0;
		/* A node that is failing over may give a partial map: ask another. */
	}
	return -ENOTCONN;
}

/* --- open / close ----------------------------------------------------------- */

int rdma_rconn_open(const char *url, uint32_t timeout_ms, struct rdma_rconn_stats *st,
		    struct rdma_rconn **out)
{
	struct rdma_rconn *rc = calloc(1, sizeof(*rc));
	int err = -ENOMEM;

	if (!rc)
		return -ENOMEM;
	rc->st = st ? st : &rc->own;
	rc->timeout_ms = timeout_ms ? timeout_ms : 1000;
	err = parse_url(rc, url, NULL, 0);
	if (err)
		goto fail;
	if (rc->cluster) {
		err = -ENOMEM;
		rc->slot_node = malloc(RC_SLOTS * sizeof(*rc->slot_node));
		if (!rc->slot_node)
			goto fail;
		err = refresh(rc);
	} else {
		err = node_conn(rc, &rc->nodes[0]) ? 0 : -ENOTCONN;
	}
	if (err)
		goto fail;
	*out = rc;
	return 0;
fail:
	rdma_rconn_close(rc);
	return err;
}

static void drop_queue(struct rdma_rconn *rc)
{
	for (size_t i = 0; i < rc->ncmds; i++) {
		redisFreeCommand(rc->cmds[i].buf);
		if (rc->reps && rc->reps[i])
			freeReplyObject(rc->reps[i]);
	}
	free(rc->reps);
	rc->reps = NULL;
	rc->ncmds = 0;
}

void rdma_rconn_close(struct rdma_rconn *rc)
{
	if (!rc)
		return;
	drop_queue(rc);
	free(rc->cmds);
	for (uint32_t i = 0; i < rc->nnodes; i++)
		if (rc->nodes[i].c)
			redisFree(rc->nodes[i].c);
	free(rc->slot_node);
	free(rc);
}

void rdma_rconn_debug_rotate_map(struct rdma_rconn *rc)
{
	uint16_t seen[RDMA_RCONN_MAX_NODES];
	uint32_t n = 0;

	if (!rc->cluster)
		return;
	for (uint32_t s = 0; s < RC_SLOTS; s++) {
		uint32_t k = 0;

		while (k < n && seen[k] != rc->slot_node[s])
			k++;
		if (k == n && n < RDMA_RCONN_MAX_NODES)
			seen[n++] = rc->slot_node[s];
	}
	for (uint32_t s = 0; s < RC_SLOTS && n > 1; s++)
		for (uint32_t k = 0; k < n; k++)
			if (seen[k] == rc->slot_node[s]) {
				rc->slot_node[s] = seen[(k + 1) % n];
				break;
			}
}

bool rdma_rconn_is_cluster(const struct rdma_rconn *rc)
{
	return rc->cluster;
}

/* --- pipelines -------------------------------------------------------------- */

int rdma_rconn_append(struct rdma_rconn *rc, int argc, const char **argv, const size_t *lens)
{
	struct rc_cmd *c;
	char *buf = NULL;
	int len;

	if (rc->ncmds == rc->cap) {
		size_t cap = rc->cap ? rc->cap * 2 : 64;
		struct rc_cmd *n = realloc(rc->cmds, cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		rc->cmds = n;
		rc->cap = cap;
	}
	len = redisFormatCommandArgv(&buf, argc, argv, lens);
	if (len < 0 || !buf)
		return -ENOMEM;
	c = &rc->cmds[rc->ncmds++];
	c->buf = buf;
	c->len = len;
	c->slot = argc > 1 ? rdma_key_slot(argv[1], lens[1]) : 0;
	c->ask = RC_NONE;
	c->sent = RC_NONE;
	c->asking = false;
	return 0;
}

size_t rdma_rconn_queued(const struct rdma_rconn *rc)
{
	return rc->ncmds;
}

static bool err_is(const redisReply *rep, const char *word)
{
	size_t l = strlen(word);

	return rep->len >= l && strncmp(rep->str, word, l) == 0 &&
	       (rep->len == l || rep->str[l] == ' ');
}

/* One round: send every command that has no reply yet to the node its slot
 * (or an ASK) names, then read what came back. @return commands answered;
 * *@again says a map refresh is due, *@pause that the cluster is busy. */
static size_t round_trip(struct rdma_rconn *rc, bool *again, bool *pause)
{
	size_t answered = 0;

	for (size_t i = 0; i < rc->ncmds; i++) {
		struct rc_cmd *c = &rc->cmds[i];
		uint16_t t;
		redisContext *ctx;

		c->sent = RC_NONE;
		c->asking = false;
		if (rc->reps[i])
			continue;
		t = c->ask != RC_NONE ? c->ask : rc->cluster ? rc->slot_node[c->slot] : 0;
		if (t == RC_NONE) {
			*again = true;
			continue;
		}
		ctx = node_conn(rc, &rc->nodes[t]);
		if (!ctx) {
			*again = true;
			continue;
		}
		if (c->ask != RC_NONE) {
			redisAppendCommand(ctx, "ASKING");
			c->asking = true;
			c->ask = RC_NONE;
		}
		redisAppendFormattedCommand(ctx, c->buf, (size_t)c->len);
		c->sent = t;
	}
	/* Every node starts working before we wait on the first one. */
	for (uint32_t k = 0; k < rc->nnodes; k++) {
		struct rc_node *n = &rc->nodes[k];
		int done = 0;

		while (n->c && !done)
			if (redisBufferWrite(n->c, &done) != REDIS_OK)
				node_drop(rc, n);
	}
	for (size_t i = 0; i < rc->ncmds; i++) {
		struct rc_cmd *c = &rc->cmds[i];
		struct rc_node *n;
		redisReply *rep = NULL;
		uint16_t slot, node;

		if (c->sent == RC_NONE)
			continue;
		n = &rc->nodes[c->sent];
		if (!n->c) {
			*again = true;
			continue;
		}
		if (c->asking) {
			if (redisGetReply(n->c, (void **)&rep) != REDIS_OK || !rep) {
				node_drop(rc, n);
				*again = true;
				continue;
			}
			freeReplyObject(rep);
			rep = NULL;
		}
		if (redisGetReply(n->c, (void **)&rep) != REDIS_OK || !rep) {
			node_drop(rc, n);
			*again = true;
			continue;
		}
		if (rc->cluster && rep->type == REDIS_REPLY_ERROR) {
			if (err_is(rep, "MOVED") &&
			    parse_redirect(rc, rep->str + 6, rep->len - 6, &slot, &node) == 0) {
				rc->slot_node[slot] = node;
				rc->st->moved++;
				freeReplyObject(rep);
				continue;
			}
			if (err_is(rep, "ASK") &&
			    parse_redirect(rc, rep->str + 4, rep->len - 4, &slot, &node) == 0) {
				c->ask = node;
				rc->st->asked++;
				freeReplyObject(rep);
				continue;
			}
			if (err_is(rep, "CLUSTERDOWN") || err_is(rep, "TRYAGAIN") ||
			    err_is(rep, "LOADING") || err_is(rep, "MASTERDOWN")) {
				*again = *pause = true;
				freeReplyObject(rep);
				continue;
			}
		}
		rc->reps[i] = rep;
		answered++;
	}
	return answered;
}

int rdma_rconn_exec(struct rdma_rconn *rc, redisReply ***out, size_t *n)
{
	uint64_t deadline = kvfs_mono_ns() + (uint64_t)rc->timeout_ms * 1000000ull;
	uint64_t pause = RC_PAUSE_MIN;
	size_t left = rc->ncmds;
	int rc_ = 0;

	*out = NULL;
	*n = rc->ncmds;
	if (!rc->ncmds)
		return 0;
	rc->reps = calloc(rc->ncmds, sizeof(*rc->reps));
	if (!rc->reps) {
		drop_queue(rc);
		*n = 0;
		return -ENOMEM;
	}
	for (;;) {
		bool again = false, busy = false;
		size_t got = round_trip(rc, &again, &busy);

		left -= got;
		if (!left || !rc->cluster || kvfs_mono_ns() >= deadline)
			break;
		if (again || busy)
			refresh(rc);
		if (busy || (again && !got)) {
			/* Nothing moves: a failover or a migration is under way. */
			uint64_t now = kvfs_mono_ns(), p;
			struct timespec ts;

			if (now >= deadline)
				break;
			p = KVFS_MIN(pause, deadline - now);
			ts.tv_sec = (time_t)(p / 1000000000ull);
			ts.tv_nsec = (long)(p % 1000000000ull);
			nanosleep(&ts, NULL);
			pause = KVFS_MIN(pause * 2, RC_PAUSE_MAX);
		}
	}
	if (left) {
		rc->st->undelivered += left;
		rc_ = -EIO;
	}
	*out = rc->reps;
	rc->reps = NULL;
	drop_queue(rc);
	return rc_;
}

void rdma_rconn_free_replies(struct redisReply **reps, size_t n)
{
	if (!reps)
		return;
	for (size_t i = 0; i < n; i++)
		if (reps[i])
			freeReplyObject(reps[i]);
	free(reps);
}

void rdma_rconn_discard(struct rdma_rconn *rc)
{
	drop_queue(rc);
}
