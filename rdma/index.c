/*
 * rdma/index.c — the cluster index in Redis (hiredis): which node holds
 * which path, and which nodes are alive. The key schema is documented at
 * the top of remote.h.
 *
 * Two connections. The index thread owns one: it writes this node's
 * heartbeat (SET PX) and membership (SADD) every heartbeat_ms, reads the
 * membership table back (SMEMBERS + MGET, applied by rdma_members_apply),
 * and drains the update queue in pipelined batches. Callers share the
 * other, the query connection, under q_lock: a lookup of n paths is n
 * HGETALLs pipelined in one round trip. Neither is touched by the
 * daemon's hot path: remote_publish()/remote_unpublish() only update the
 * local set of published paths and queue an operation.
 *
 * Failure. A broken connection is dropped and counted (redis_errors); the
 * index thread reconnects with exponential backoff (100 ms .. 2 s) and then
 * resynchronises: it reads <c>:held:<self>, deletes what we no longer hold,
 * and rewrites every path of the local set. The same resync runs on the
 * first connection, which also clears what a previous incarnation of this
 * node left behind. Operations queued while disconnected are dropped: the
 * local set, which the resync replays, already reflects them. Queued
 * operations are idempotent and applied in order, so replaying the set and
 * then the rest of the queue ends in the right state. The query connection
 * retries at most once per second while Redis is down, so a miss costs one
 * failed connect, not a timeout per lookup.
 *
 * Locks: iq_lock (queue), pub_lock (the published set, a tsearch tree;
 * a resync buffers its commands under it, the round trip comes after),
 * q_lock (query connection), peer_lock through rdma_members_apply.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <search.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"

#define IQ_BATCH     1024
#define IQ_MAX	     (1u << 20)
#define BACKOFF_MIN  (100ull * 1000000ull)
#define BACKOFF_MAX  (2000ull * 1000000ull)
#define MAX_ANCESTOR 64
#define KEY_MAX	     (REMOTE_PATH_MAX + 128)

struct rdma_iq_op {
	struct rdma_iq_op *next;
	uint64_t seq;
	uint8_t kind, tier;
	char node[REMOTE_NODE_ID_MAX];
	uint32_t len;
	char path[];
};

/* An entry of the published set (a tsearch tree under pub_lock). */
struct rdma_pub {
	const char *path; /* points at buf */
	uint32_t len;
	uint8_t tier;
	char buf[];
};

/* --- key schema and records (pure) ---------------------------------------- */

static const char *const tier_names[] = {
	[REMOTE_TIER_GPU] = "gpu",
	[REMOTE_TIER_DRAM] = "dram",
	[REMOTE_TIER_NVME] = "nvme",
	[REMOTE_TIER_LENT] = "lent",
};

const char *rdma_tier_name(int tier)
{
	return tier >= REMOTE_TIER_GPU && tier <= REMOTE_TIER_LENT ? tier_names[tier] : "?";
}

int rdma_tier_parse(const char *s, size_t len)
{
	for (int t = REMOTE_TIER_GPU; t <= REMOTE_TIER_LENT; t++)
		if (strlen(tier_names[t]) == len && memcmp(s, tier_names[t], len) == 0)
			return t;
	return -EINVAL;
}

int rdma_key(char *buf, size_t cap, const char *prefix, const char *kind, const char *arg)
{
	int n = snprintf(buf, cap, "%s:%s%s", prefix, kind, arg ? arg : "");

	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : n;
}

int rdma_node_rec_format(char *buf, size_t cap, const struct rdma_node_rec *rec)
{
	char hex[2 * RDMA_ADDR_MAX + 1];
	int n;

	if (rec->addr_len == 0 || rec->addr_len > RDMA_ADDR_MAX || !rec->prov[0] ||
	    strpbrk(rec->prov, " \t\r\n"))
		return -EINVAL;
	for (uint32_t i = 0; i < rec->addr_len; i++)
		snprintf(hex + 2 * i, 3, "%02x", rec->addr[i]);
	n = snprintf(buf, cap, "v1 %s %llu %llu %s %016llx", hex,
		     (unsigned long long)rec->lend_total, (unsigned long long)rec->lend_free,
		     rec->prov, (unsigned long long)rec->boot);
	return n < 0 || (size_t)n >= cap ? -ENOSPC : n;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* A decimal u64 token of exactly @len digits. */
static int parse_u64(const char *s, size_t len, uint64_t *out)
{
	uint64_t v = 0;

	if (len == 0 || len > 20)
		return -1;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

int rdma_node_rec_parse(const char *s, size_t len, struct rdma_node_rec *rec)
{
	const char *tok[6];
	size_t tlen[6], ntok = 0, i = 0;

	memset(rec, 0, sizeof(*rec));
	while (i < len && ntok < 6) {
		size_t start = i;

		while (i < len && s[i] != ' ')
			i++;
		if (i == start)
			return -EBADMSG; /* empty token: double space, leading space */
		tok[ntok] = s + start;
		tlen[ntok++] = i - start;
		if (i < len)
			i++; /* the single space */
		if (i == len && s[len - 1] == ' ')
			return -EBADMSG;
	}
	if (ntok != 6 || i != len)
		return -EBADMSG;
	if (tlen[0] != 2 || memcmp(tok[0], "v1", 2) != 0)
		return -EBADMSG;
	if (tlen[1] == 0 || tlen[1] % 2 || tlen[1] / 2 > RDMA_ADDR_MAX)
		return -EBADMSG;
	for (size_t k = 0; k < tlen[1] / 2; k++) {
		int hi = hexval(tok[1][2 * k]), lo = hexval(tok[1][2 * k + 1]);

		if (hi < 0 || lo < 0)
			return -EBADMSG;
		rec->addr[k] = (uint8_t)(hi << 4 | lo);
	}
	rec->addr_len = (uint32_t)(tlen[1] / 2);
	if (parse_u64(tok[2], tlen[2], &rec->lend_total) ||
	    parse_u64(tok[3], tlen[3], &rec->lend_free) || rec->lend_free > rec->lend_total)
		return -EBADMSG;
	if (tlen[4] >= RDMA_PROV_MAX)
		return -EBADMSG;
	for (size_t k = 0; k < tlen[4]; k++)
		if ((unsigned char)tok[4][k] < 0x21 || (unsigned char)tok[4][k] > 0x7e)
			return -EBADMSG;
	memcpy(rec->prov, tok[4], tlen[4]);
	if (tlen[5] != 16)
		return -EBADMSG;
	for (size_t k = 0; k < 16; k++) {
		int v = hexval(tok[5][k]);

		if (v < 0)
			return -EBADMSG;
		rec->boot = rec->boot << 4 | (uint64_t)v;
	}
	return 0;
}

int rdma_path_ancestors(const char *path, size_t len, uint32_t *out, int max)
{
	int n = 0;

	for (size_t i = 1; i < len && n < max; i++)
		if (path[i] == '/')
			out[n++] = (uint32_t)i;
	return n;
}

int rdma_holders_reply(const struct redisReply *rep, size_t i, rdma_holder_fn fn, void *ctx)
{
	int n = 0;

	if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 2)
		return -EBADMSG;
	for (size_t k = 0; k + 1 < rep->elements; k += 2) {
		const redisReply *nd = rep->element[k], *tv = rep->element[k + 1];
		char node[REMOTE_NODE_ID_MAX];
		int tier;

		if (nd->type != REDIS_REPLY_STRING || tv->type != REDIS_REPLY_STRING ||
		    nd->len >= REMOTE_NODE_ID_MAX)
			continue;
		memcpy(node, nd->str, nd->len);
		node[nd->len] = '\0';
		tier = rdma_tier_parse(tv->str, tv->len);
		if (tier < 0 || !rdma_node_id_valid(node))
			continue;
		fn(ctx, i, node, tier);
		n++;
	}
	return n;
}

/* --- the set of published paths ------------------------------------------- */

static int pub_cmp(const void *a, const void *b)
{
	return strcmp(((const struct rdma_pub *)a)->path, ((const struct rdma_pub *)b)->path);
}

/* Under pub_lock. */
static struct rdma_pub *pub_find(remote *r, const char *path)
{
	struct rdma_pub key = {.path = path};
	struct rdma_pub **found = tfind(&key, &r->pub, pub_cmp);

	return found ? *found : NULL;
}

static bool path_ok(const char *path, size_t *len)
{
	*len = strnlen(path, REMOTE_PATH_MAX);
	return *len < REMOTE_PATH_MAX && rdma_path_valid(path, *len);
}

void remote_publish(remote *r, const char *path, enum remote_tier tier)
{
	struct rdma_pub *p;
	size_t len;

	if (!r->cluster || !path_ok(path, &len) || tier < REMOTE_TIER_GPU ||
	    tier > REMOTE_TIER_LENT)
		return;
	pthread_mutex_lock(&r->pub_lock);
	p = pub_find(r, path);
	if (p && p->tier == tier) {
		pthread_mutex_unlock(&r->pub_lock);
		return;
	}
	if (!p) {
		p = malloc(sizeof(*p) + len + 1);
		if (!p) {
			pthread_mutex_unlock(&r->pub_lock);
			return;
		}
		memcpy(p->buf, path, len + 1);
		p->path = p->buf;
		p->len = (uint32_t)len;
		if (!tsearch(p, &r->pub, pub_cmp)) {
			free(p);
			pthread_mutex_unlock(&r->pub_lock);
			return;
		}
	}
	p->tier = (uint8_t)tier;
	pthread_mutex_unlock(&r->pub_lock);
	rdma_index_queue(r, RDMA_IOP_PUB, path, tier, NULL);
}

void remote_unpublish(remote *r, const char *path)
{
	struct rdma_pub *p;
	size_t len;

	if (!r->cluster || !path_ok(path, &len))
		return;
	pthread_mutex_lock(&r->pub_lock);
	p = pub_find(r, path);
	if (p)
		tdelete(p, &r->pub, pub_cmp);
	pthread_mutex_unlock(&r->pub_lock);
	if (!p)
		return;
	free(p);
	rdma_index_queue(r, RDMA_IOP_UNPUB, path, 0, NULL);
}

/* A walk of the published set (twalk_r, under pub_lock) that buffers one
 * command group per path: its entries (resync), or their removal (leave). */
struct pub_walk {
	remote *r;
	struct rdma_rconn *c;
	size_t n;
	bool leave;
};

/* remote_lent_paths(): collect the paths published as lent copies. */
struct lent_walk {
	char **paths;
	size_t n, cap;
	int rc;
};

static void lent_visit(const void *node, VISIT which, void *arg)
{
	const struct rdma_pub *p = *(struct rdma_pub *const *)node;
	struct lent_walk *w = arg;

	if ((which != postorder && which != leaf) || p->tier != REMOTE_TIER_LENT || w->rc)
		return;
	if (w->n == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 64;
		char **np = realloc(w->paths, cap * sizeof(*np));

		if (!np) {
			w->rc = -ENOMEM;
			return;
		}
		w->paths = np;
		w->cap = cap;
	}
	w->paths[w->n] = strdup(p->path);
	if (!w->paths[w->n]) {
		w->rc = -ENOMEM;
		return;
	}
	w->n++;
}

int remote_lent_paths(remote *r, char ***out)
{
	struct lent_walk w = {0};

	*out = NULL;
	pthread_mutex_lock(&r->pub_lock);
	twalk_r(r->pub, lent_visit, &w);
	pthread_mutex_unlock(&r->pub_lock);
	if (w.rc) {
		remote_free_paths(w.paths, w.n);
		return w.rc;
	}
	*out = w.paths;
	return (int)w.n;
}

void remote_free_paths(char **paths, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(paths[i]);
	free(paths);
}

/* --- the update queue ----------------------------------------------------- */

static void iq_clear_locked(remote *r)
{
	struct rdma_iq_op *op = r->iq_head;

	while (op) {
		struct rdma_iq_op *next = op->next;

		free(op);
		op = next;
	}
	r->iq_head = r->iq_tail = NULL;
	r->iq_len = 0;
}

void rdma_index_queue(remote *r, int kind, const char *path, int tier, const char *node)
{
	size_t len = strlen(path);
	struct rdma_iq_op *op;

	if (!r->cluster)
		return;
	op = malloc(sizeof(*op) + len + 1);
	if (!op)
		return;
	op->next = NULL;
	op->kind = (uint8_t)kind;
	op->tier = (uint8_t)tier;
	snprintf(op->node, sizeof(op->node), "%s", node ? node : r->node_id);
	op->len = (uint32_t)len;
	memcpy(op->path, path, len + 1);
	pthread_mutex_lock(&r->iq_lock);
	op->seq = ++r->iq_enq;
	if (!r->iq_accepting || r->iq_len >= IQ_MAX) {
		/* The resync after (re)connecting replays the published set; a
		 * repair of someone else's entry is simply lost. */
		iq_clear_locked(r);
		r->iq_written = r->iq_enq;
		pthread_mutex_unlock(&r->iq_lock);
		free(op);
		return;
	}
	if (r->iq_tail)
		r->iq_tail->next = op;
	else
		r->iq_head = op;
	r->iq_tail = op;
	r->iq_len++;
	pthread_cond_signal(&r->iq_cond);
	pthread_mutex_unlock(&r->iq_lock);
}

int remote_flush(remote *r, uint32_t timeout_ms)
{
	uint64_t until = kvfs_mono_ns() + (uint64_t)timeout_ms * 1000000ull, target;
	struct timespec ts = {(time_t)(until / 1000000000ull), (long)(until % 1000000000ull)};
	int rc = 0;

	if (!r->cluster)
		return -ENOTCONN;
	pthread_mutex_lock(&r->iq_lock);
	target = r->iq_enq;
	while ((!r->iq_tried || (r->iq_connected && r->iq_written < target)) && rc == 0)
		rc = pthread_cond_timedwait(&r->iq_done, &r->iq_lock, &ts);
	if (!r->iq_tried || (r->iq_connected && r->iq_written < target))
		rc = -ETIMEDOUT;
	else if (!r->iq_connected)
		rc = -ENOTCONN;
	else if (r->iq_written < target)
		rc = -ETIMEDOUT;
	else
		rc = 0;
	pthread_mutex_unlock(&r->iq_lock);
	return rc;
}

/* --- Redis plumbing ------------------------------------------------------- */

typedef struct rdma_rconn rconn;

/* Queue one command of @argc binary-safe arguments (the key is argv[1]). */
static void cmd(rconn *c, int argc, const char **argv, const size_t *lens)
{
	if (rdma_rconn_append(c, argc, argv, lens))
		log_debug("rdma: redis: out of memory queueing %.*s", (int)lens[0], argv[0]);
}

static void cmd2(rconn *c, const char *a, const char *b, size_t blen)
{
	const char *argv[] = {a, b};
	size_t lens[] = {strlen(a), blen};

	cmd(c, 2, argv, lens);
}

static void cmd3(rconn *c, const char *a, const char *b, size_t blen, const char *d, size_t dlen)
{
	const char *argv[] = {a, b, d};
	size_t lens[] = {strlen(a), blen, dlen};

	cmd(c, 3, argv, lens);
}

/* Send what is queued and drop the replies. @return 0; -EIO if some got no
 * reply (the connection broke; a cluster could not reach a slot's node in
 * time); replies that are errors are counted, not fatal. */
static int replies(remote *r, rconn *c)
{
	redisReply **reps;
	size_t n;
	int rc = rdma_rconn_exec(c, &reps, &n);

	for (size_t i = 0; i < n; i++)
		if (reps[i] && reps[i]->type == REDIS_REPLY_ERROR) {
			STAT_INC(r, redis_errors);
			log_debug("rdma: redis: %s", reps[i]->str);
		}
	rdma_rconn_free_replies(reps, n);
	return rc ? -EIO : 0;
}

/* Send what is queued, which ends with one command whose reply is wanted:
 * @return it (free with freeReplyObject), or NULL if it got none. */
static redisReply *last_reply(remote *r, rconn *c)
{
	redisReply **reps, *rep = NULL;
	size_t n;

	rdma_rconn_exec(c, &reps, &n);
	if (n) {
		rep = reps[n - 1];
		reps[n - 1] = NULL;
	}
	for (size_t i = 0; i + 1 < n; i++)
		if (reps[i] && reps[i]->type == REDIS_REPLY_ERROR)
			STAT_INC(r, redis_errors);
	rdma_rconn_free_replies(reps, n);
	return rep;
}

/* HSET f:<path> <node> <tier>; SADD held:<node> <path>; SADD dirs <ancestors>. */
static size_t put_pub(remote *r, rconn *c, const char *path, size_t len, int tier)
{
	char key[KEY_MAX], held[256];
	const char *tname = rdma_tier_name(tier);
	const char *argv[2 + MAX_ANCESTOR];
	size_t lens[2 + MAX_ANCESTOR];
	uint32_t anc[MAX_ANCESTOR];
	int kl = rdma_key(key, sizeof(key), r->prefix, "f:", path), na;
	char dirs[128];
	const char *hset[] = {"HSET", key, r->node_id, tname};
	size_t hlens[] = {4, (size_t)kl, strlen(r->node_id), strlen(tname)};
	size_t n = 2;

	cmd(c, 4, hset, hlens);
	rdma_key(held, sizeof(held), r->prefix, "held:", r->node_id);
	cmd3(c, "SADD", held, strlen(held), path, len);
	na = rdma_path_ancestors(path, len, anc, MAX_ANCESTOR);
	if (na > 0) {
		rdma_key(dirs, sizeof(dirs), r->prefix, "dirs", NULL);
		argv[0] = "SADD";
		lens[0] = 4;
		argv[1] = dirs;
		lens[1] = strlen(dirs);
		for (int i = 0; i < na; i++) {
			argv[2 + i] = path;
			lens[2 + i] = anc[i];
		}
		cmd(c, 2 + na, argv, lens);
		n++;
	}
	return n;
}

/* HDEL f:<path> <node>; SREM held:<node> <path>. */
static size_t put_unpub(remote *r, rconn *c, const char *path, size_t len, const char *node)
{
	char key[KEY_MAX], held[256];
	int kl = rdma_key(key, sizeof(key), r->prefix, "f:", path);

	cmd3(c, "HDEL", key, (size_t)kl, node, strlen(node));
	rdma_key(held, sizeof(held), r->prefix, "held:", node);
	cmd3(c, "SREM", held, strlen(held), path, len);
	return 2;
}

static int heartbeat(remote *r, rconn *c)
{
	struct rdma_node_rec rec = {0};
	char key[256], nodes[128], val[256], px[32];
	int kl, vl;

	memcpy(rec.addr, r->fab.name, r->fab.name_len);
	rec.addr_len = (uint32_t)r->fab.name_len;
	/* A draining node offers no lent memory: peers take it off their
	 * rings at their next membership refresh. */
	rec.lend_total = r->srv && !atomic_load(&r->draining) ? r->lend_bytes : 0;
	rec.lend_free = rec.lend_total ? rdma_server_lend_free(r) : 0;
	rec.boot = r->boot;
	snprintf(rec.prov, sizeof(rec.prov), "%s", r->fab.prov);
	vl = rdma_node_rec_format(val, sizeof(val), &rec);
	if (vl < 0)
		return vl;
	kl = rdma_key(key, sizeof(key), r->prefix, "node:", r->node_id);
	rdma_key(nodes, sizeof(nodes), r->prefix, "nodes", NULL);
	snprintf(px, sizeof(px), "%u", r->node_ttl_ms);
	{
		const char *argv[] = {"SET", key, val, "PX", px};
		size_t lens[] = {3, (size_t)kl, (size_t)vl, 2, strlen(px)};

		cmd(c, 5, argv, lens);
	}
	cmd3(c, "SADD", nodes, strlen(nodes), r->node_id, strlen(r->node_id));
	return replies(r, c);
}

/* SMEMBERS nodes, then GET node:<id> for each (pipelined; one GET per key
 * rather than an MGET, whose keys a cluster would spread over slots). */
static int membership(remote *r, rconn *c)
{
	char nodes[128];
	char(*ids)[REMOTE_NODE_ID_MAX] = NULL;
	struct rdma_node_rec *recs = NULL;
	bool *ok = NULL;
	redisReply *rep = NULL, **vals = NULL;
	size_t nvals = 0;
	uint32_t n = 0;
	int rc = 0;

	rdma_key(nodes, sizeof(nodes), r->prefix, "nodes", NULL);
	cmd2(c, "SMEMBERS", nodes, strlen(nodes));
	rep = last_reply(r, c);
	if (!rep)
		return -EIO;
	if (rep->type != REDIS_REPLY_ARRAY) {
		STAT_INC(r, redis_errors);
		goto out;
	}
	ids = calloc(RDMA_MAX_PEERS, sizeof(*ids));
	recs = calloc(RDMA_MAX_PEERS, sizeof(*recs));
	ok = calloc(RDMA_MAX_PEERS, sizeof(*ok));
	if (!ids || !recs || !ok) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < rep->elements && n < RDMA_MAX_PEERS; i++) {
		redisReply *e = rep->element[i];
		char key[128];

		if (e->type != REDIS_REPLY_STRING || e->len >= REMOTE_NODE_ID_MAX)
			continue;
		memcpy(ids[n], e->str, e->len);
		ids[n][e->len] = '\0';
		if (!rdma_node_id_valid(ids[n]))
			continue;
		rdma_key(key, sizeof(key), r->prefix, "node:", ids[n]);
		cmd2(c, "GET", key, strlen(key));
		n++;
	}
	if (n) {
		if (rdma_rconn_exec(c, &vals, &nvals) || nvals != n) {
			rc = -EIO;
			goto out;
		}
		for (uint32_t i = 0; i < n; i++) {
			redisReply *e = vals[i];

			ok[i] = e->type == REDIS_REPLY_STRING &&
				rdma_node_rec_parse(e->str, e->len, &recs[i]) == 0;
		}
	}
	rdma_members_apply(r, ids, recs, ok, n);
out:
	rdma_rconn_discard(c);
	rdma_rconn_free_replies(vals, nvals);
	freeReplyObject(rep);
	free(ids);
	free(recs);
	free(ok);
	return rc;
}

static void pub_visit(const void *node, VISIT which, void *arg)
{
	const struct rdma_pub *p = *(struct rdma_pub *const *)node;
	struct pub_walk *w = arg;

	if (which != postorder && which != leaf)
		return;
	if (w->leave) {
		char fkey[KEY_MAX];
		int kl = rdma_key(fkey, sizeof(fkey), w->r->prefix, "f:", p->path);

		cmd3(w->c, "HDEL", fkey, (size_t)kl, w->r->node_id, strlen(w->r->node_id));
		w->n++;
	} else {
		w->n += put_pub(w->r, w->c, p->path, p->len, p->tier);
	}
}

/*
 * Make Redis say exactly what the published set says about this node: drop
 * the entries of <c>:held:<self> we no longer hold, write every one we do.
 * The commands are only buffered under pub_lock; the round trip is after.
 */
static int resync(remote *r, rconn *c)
{
	char held[256];
	redisReply *rep = NULL;
	struct pub_walk w = {r, c, 0, false};
	int rc;

	rdma_key(held, sizeof(held), r->prefix, "held:", r->node_id);
	cmd2(c, "SMEMBERS", held, strlen(held));
	rep = last_reply(r, c);
	if (!rep)
		return -EIO;
	pthread_mutex_lock(&r->pub_lock);
	if (rep->type == REDIS_REPLY_ARRAY) {
		for (size_t i = 0; i < rep->elements; i++) {
			redisReply *e = rep->element[i];
			char path[REMOTE_PATH_MAX];

			if (e->type != REDIS_REPLY_STRING || e->len >= REMOTE_PATH_MAX)
				continue;
			memcpy(path, e->str, e->len);
			path[e->len] = '\0';
			if (strlen(path) != e->len || !pub_find(r, path))
				w.n += put_unpub(r, c, e->str, e->len, r->node_id);
		}
	}
	twalk_r(r->pub, pub_visit, &w);
	pthread_mutex_unlock(&r->pub_lock);
	freeReplyObject(rep);
	rc = replies(r, c);
	if (rc == 0) {
		STAT_INC(r, resyncs);
		log_info("rdma: index resynchronised (%zu commands)", w.n);
	}
	return rc;
}

/* Write up to IQ_BATCH queued operations in one pipeline. */
static int drain(remote *r, rconn *c)
{
	struct rdma_iq_op *head, *op;
	uint64_t last = 0, nops = 0;
	size_t n = 0;
	int rc;

	pthread_mutex_lock(&r->iq_lock);
	head = r->iq_head;
	if (!head) {
		pthread_mutex_unlock(&r->iq_lock);
		return 0;
	}
	op = head;
	nops = 1;
	last = op->seq;
	while (op->next && nops < IQ_BATCH) {
		op = op->next;
		nops++;
		last = op->seq;
	}
	r->iq_head = op->next;
	if (!r->iq_head)
		r->iq_tail = NULL;
	op->next = NULL;
	r->iq_len -= nops;
	pthread_mutex_unlock(&r->iq_lock);

	for (op = head; op; op = op->next) {
		if (op->kind == RDMA_IOP_PUB)
			n += put_pub(r, c, op->path, op->len, op->tier);
		else
			n += put_unpub(r, c, op->path, op->len, op->node);
	}
	(void)n;
	rc = replies(r, c);
	while (head) {
		op = head->next;
		free(head);
		head = op;
	}
	if (rc)
		return rc;
	STAT_ADD(r, index_updates, nops);
	pthread_mutex_lock(&r->iq_lock);
	if (last > r->iq_written)
		r->iq_written = last;
	pthread_cond_broadcast(&r->iq_done);
	pthread_mutex_unlock(&r->iq_lock);
	return 0;
}

/* Leaving: our heartbeat and every entry of ours go. */
static void leave(remote *r, rconn *c)
{
	char key[256], held[256], nodes[128];
	struct pub_walk w = {r, c, 0, true};

	rdma_key(key, sizeof(key), r->prefix, "node:", r->node_id);
	rdma_key(held, sizeof(held), r->prefix, "held:", r->node_id);
	rdma_key(nodes, sizeof(nodes), r->prefix, "nodes", NULL);
	cmd2(c, "DEL", key, strlen(key));
	cmd3(c, "SREM", nodes, strlen(nodes), r->node_id, strlen(r->node_id));
	pthread_mutex_lock(&r->pub_lock);
	twalk_r(r->pub, pub_visit, &w);
	pthread_mutex_unlock(&r->pub_lock);
	cmd2(c, "DEL", held, strlen(held));
	replies(r, c);
}

static void set_connected(remote *r, bool up)
{
	pthread_mutex_lock(&r->iq_lock);
	r->iq_accepting = up;
	r->iq_connected = up;
	r->iq_tried = true;
	if (!up) {
		iq_clear_locked(r);
		r->iq_written = r->iq_enq;
	}
	pthread_cond_broadcast(&r->iq_done);
	pthread_mutex_unlock(&r->iq_lock);
}

static void *index_main(void *arg)
{
	remote *r = arg;
	rconn *c = NULL;
	uint64_t backoff = BACKOFF_MIN, next_hb = 0, retry_at = 0;
	bool ever = false;

	while (!atomic_load(&r->stop)) {
		uint64_t now = kvfs_mono_ns(), wake;
		struct timespec ts;

		if (!c && now >= retry_at) {
			if (rdma_rconn_open(r->cluster, KVFS_MIN(r->timeout_ms, 1000u), &r->rst,
					    &c)) {
				c = NULL;
				STAT_INC(r, redis_errors);
				set_connected(r, false);
				retry_at = now + backoff;
				backoff = KVFS_MIN(backoff * 2, BACKOFF_MAX);
			} else {
				uint64_t mark;

				/* What was queued while down is in the set, which
				 * the resync replays; what is queued from now on
				 * follows it. */
				pthread_mutex_lock(&r->iq_lock);
				iq_clear_locked(r);
				mark = r->iq_enq;
				r->iq_accepting = true;
				pthread_mutex_unlock(&r->iq_lock);
				if (ever)
					STAT_INC(r, redis_reconnects);
				if (resync(r, c) != 0) {
					STAT_INC(r, redis_errors);
					rdma_rconn_close(c);
					c = NULL;
					set_connected(r, false);
					retry_at = now + backoff;
				} else {
					if (ever)
						log_info("rdma: redis %s is back", r->cluster);
					ever = true;
					backoff = BACKOFF_MIN;
					next_hb = 0;
					pthread_mutex_lock(&r->iq_lock);
					r->iq_tried = true;
					r->iq_connected = true;
					if (mark > r->iq_written)
						r->iq_written = mark;
					pthread_cond_broadcast(&r->iq_done);
					pthread_mutex_unlock(&r->iq_lock);
				}
			}
		}
		if (atomic_exchange(&r->hb_kick, false))
			next_hb = 0;
		if (c && kvfs_mono_ns() >= next_hb) {
			if (heartbeat(r, c) || membership(r, c)) {
				STAT_INC(r, redis_errors);
				log_warn("rdma: lost redis %s; serving locally, retrying",
					 r->cluster);
				rdma_rconn_close(c);
				c = NULL;
				set_connected(r, false);
				retry_at = kvfs_mono_ns() + backoff;
				continue;
			}
			next_hb = kvfs_mono_ns() + (uint64_t)r->heartbeat_ms * 1000000ull;
		}
		if (c && drain(r, c)) {
			STAT_INC(r, redis_errors);
			log_warn("rdma: lost redis %s; serving locally, retrying", r->cluster);
			rdma_rconn_close(c);
			c = NULL;
			set_connected(r, false);
			retry_at = kvfs_mono_ns() + backoff;
			continue;
		}
		wake = c ? next_hb : retry_at;
		pthread_mutex_lock(&r->iq_lock);
		if ((!r->iq_head || !c) && !atomic_load(&r->hb_kick)) {
			ts.tv_sec = (time_t)(wake / 1000000000ull);
			ts.tv_nsec = (long)(wake % 1000000000ull);
			if (!atomic_load(&r->stop))
				pthread_cond_timedwait(&r->iq_cond, &r->iq_lock, &ts);
		}
		pthread_mutex_unlock(&r->iq_lock);
	}
	if (c) {
		leave(r, c);
		rdma_rconn_close(c);
	}
	set_connected(r, false);
	return NULL;
}

int rdma_index_start(remote *r)
{
	int rc = pthread_create(&r->index_thr, NULL, index_main, r);

	if (rc)
		return -rc;
	r->index_started = true;
	return 0;
}

void rdma_index_stop(remote *r)
{
	if (!r->index_started)
		return;
	pthread_mutex_lock(&r->iq_lock);
	pthread_cond_broadcast(&r->iq_cond);
	pthread_mutex_unlock(&r->iq_lock);
	pthread_join(r->index_thr, NULL);
	r->index_started = false;
}

/* --- queries (callers' threads) ------------------------------------------- */

/* The query connection, connecting if it is time to try. Under q_lock. */
static rconn *qconn(remote *r)
{
	uint64_t now = kvfs_mono_ns();

	if (r->qctx)
		return r->qctx;
	if (now < r->q_retry_ns)
		return NULL;
	if (rdma_rconn_open(r->cluster, KVFS_MIN(r->timeout_ms, 1000u), &r->rst, &r->qctx)) {
		r->qctx = NULL;
		STAT_INC(r, redis_errors);
		r->q_retry_ns = now + 1000000000ull;
	}
	return r->qctx;
}

static void qbroken(remote *r)
{
	STAT_INC(r, redis_errors);
	rdma_rconn_close(r->qctx);
	r->qctx = NULL;
	r->q_retry_ns = kvfs_mono_ns() + 200000000ull;
}

/* The holders in one HGETALL reply for path number @i (rdma_holders_reply). */
static void holders_of(remote *r, const redisReply *rep, size_t i, rdma_holder_fn fn, void *ctx)
{
	if (rep->type == REDIS_REPLY_ERROR) {
		STAT_INC(r, redis_errors);
		return;
	}
	rdma_holders_reply(rep, i, fn, ctx);
}

/*
 * With a cluster, a path whose slot could not be reached in time (a master
 * failing over) has no holders this time: a miss, never a wrong holder. The
 * connection is reopened (and the map reloaded) on the next call; only when
 * no path at all got an answer is the batch -ENOTCONN.
 */
int rdma_index_holders(remote *r, const char *const *paths, size_t n, rdma_holder_fn fn, void *ctx)
{
	redisReply **reps = NULL;
	size_t got = 0, answered = 0;
	rconn *c;
	int rc = 0;

	if (!r->cluster)
		return -ENOTCONN;
	if (!n)
		return 0;
	pthread_mutex_lock(&r->q_lock);
	c = qconn(r);
	if (!c) {
		rc = -ENOTCONN;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		char key[KEY_MAX];
		int kl = rdma_key(key, sizeof(key), r->prefix, "f:", paths[i]);

		cmd2(c, "HGETALL", key, kl < 0 ? 0 : (size_t)kl);
	}
	rc = rdma_rconn_exec(c, &reps, &got);
	for (size_t i = 0; i < got; i++)
		if (reps[i]) {
			holders_of(r, reps[i], i, fn, ctx);
			answered++;
		}
	if (rc || got != n) {
		qbroken(r);
		rc = answered ? 0 : -ENOTCONN;
	}
	STAT_ADD(r, index_lookups, answered);
	rdma_rconn_free_replies(reps, got);
out:
	pthread_mutex_unlock(&r->q_lock);
	return rc;
}

int remote_dir_exists(remote *r, const char *dir)
{
	char key[128];
	redisReply *rep;
	rconn *c;
	int rc;

	if (!r->cluster)
		return -ENOTCONN;
	rdma_key(key, sizeof(key), r->prefix, "dirs", NULL);
	pthread_mutex_lock(&r->q_lock);
	c = qconn(r);
	if (!c) {
		rc = -ENOTCONN;
		goto out;
	}
	cmd3(c, "SISMEMBER", key, strlen(key), dir, strlen(dir));
	rep = last_reply(r, c);
	if (!rep) {
		qbroken(r);
		rc = -ENOTCONN;
		goto out;
	}
	rc = rep->type == REDIS_REPLY_INTEGER && rep->integer == 1;
	freeReplyObject(rep);
out:
	pthread_mutex_unlock(&r->q_lock);
	return rc;
}

/* --- setup ---------------------------------------------------------------- */

int rdma_index_init(remote *r)
{
	r->pub = NULL; /* an empty tree */
	return 0;
}

/* After the index thread stopped: the published set and the queue go. */
void rdma_index_free(remote *r)
{
	pthread_mutex_lock(&r->pub_lock);
	tdestroy(r->pub, free);
	r->pub = NULL;
	pthread_mutex_unlock(&r->pub_lock);
	pthread_mutex_lock(&r->iq_lock);
	iq_clear_locked(r);
	pthread_mutex_unlock(&r->iq_lock);
	rdma_rconn_close(r->qctx);
	r->qctx = NULL;
}
