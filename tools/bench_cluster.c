/*
 * tools/bench_cluster.c — `kvfs-bench cluster`: disaggregated serving
 * (DESIGN §9), each figure against its plain alternative in the same run.
 *
 * handoff: a redis-server and two kvfs daemons (nodes a and b, libfabric
 *   tcp on 127.0.0.1). For each of --reps prompts of --tokens tokens, the
 *   reference engine (kvfs-llm, a model from kvfs-genmodel: 6 layers, 256
 *   hidden, small enough for 2 cores):
 *     recompute  decode node computes the whole prompt (--no-cache);
 *     pull       `--role prefill` on a, then `--role decode` on b: b's daemon
 *                prefetches the blocks from a over the fabric, the engine
 *                matches and loads them layer by layer;
 *     push       `--role prefill --push b` on a (each block also written
 *                into b's lent DRAM as it is saved), then `--role decode`
 *                on b: the blocks are taken from b's own memory.
 *   The figure is the decode side's time to first token (the engine's,
 *   including its prefetch wait) and bytes moved between nodes per prompt
 *   token; the first token of each run is checked against the recompute's.
 *
 * routing: first a simulation over the whole trace (4 daemons replaying
 *   12k requests through FUSE take far longer than a bench run on 2 cores)
 *   of --nodes nodes, each with an exact LRU cache of --fraction of the trace's
 *   footprint (the LRU that `kvfs-bench replay` checks against the daemon),
 *   on the Mooncake conversation trace (--trace; `make bench` unpacks the
 *   copy in tools/workloads/). An exact index of which node holds which
 *   block stands for the Redis index. Each request goes to a node by:
 *     kv-aware    the node holding the longest prefix of the request's
 *                 blocks — the ordering remote_match() (kvfs_cluster_match,
 *                 `kvfsctl route`) returns — among the nodes whose request
 *                 count is within LOAD_BOUND of the mean (bounded load, as
 *                 llm-d's scorer weighs prefix against load); ties to the
 *                 node with the fewest requests so far;
 *     kv-greedy   the same without the load bound;
 *     round-robin request i to node i mod N;
 *     hash-first  a hash of the first block id (prefix-hash routing).
 *   The chosen node hits its own leading blocks (local-DRAM hits), fetches
 *   the next ones any node holds (cluster-wide hits: the remote tier's
 *   fetch on a miss), computes the rest, and keeps them all (prefix
 *   semantics, as `kvfs-bench replay`). Load spread = max/mean requests per
 *   node. Then the same three policies on --nodes real kvfs daemons in one
 *   cluster for the first --daemon-requests requests (default 1000; 0
 *   skips it), routed from kvfs_cluster_match_paths() — the index as a
 *   router sees it, published asynchronously — with the daemons' own
 *   eviction (mq) and their own fetch on a local miss (see daemon_run).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvfs/kvfs.h"
#include "tools/bench.h"

#define MAX_NODES	     16
#define KVFS_BENCH_MIN(a, b) ((a) < (b) ? (a) : (b))

/* --- routing simulation -------------------------------------------------------------------- */

enum route_policy { ROUTE_KV, ROUTE_KV_GREEDY, ROUTE_RR, ROUTE_HASH, ROUTE_NR };
static const char *const route_names[ROUTE_NR] = {"kv-aware", "kv-greedy", "round-robin",
						  "hash-first"};

/* kv-aware: a node may take a request while its count is within this factor of the mean. */
#define LOAD_BOUND 1.25

/* One node's exact LRU over dense block indices (sentinel = nuniq). */
struct lru {
	uint32_t *prev, *next;
	uint64_t count, cap;
};

struct sim {
	const struct trace *t;
	unsigned nodes;
	struct lru n[MAX_NODES];
	uint16_t *held; /* per block: bit per node */
};

static int lru_init(struct lru *l, uint32_t nuniq, uint64_t cap)
{
	l->prev = malloc(((size_t)nuniq + 1) * sizeof(*l->prev));
	l->next = malloc(((size_t)nuniq + 1) * sizeof(*l->next));
	if (!l->prev || !l->next)
		return -ENOMEM;
	l->prev[nuniq] = l->next[nuniq] = nuniq;
	l->count = 0;
	l->cap = cap;
	return 0;
}

static void lru_unlink(struct lru *l, uint32_t b)
{
	l->next[l->prev[b]] = l->next[b];
	l->prev[l->next[b]] = l->prev[b];
}

static void lru_push_mru(struct lru *l, uint32_t head, uint32_t b)
{
	l->prev[b] = l->prev[head];
	l->next[b] = head;
	l->next[l->prev[head]] = b;
	l->prev[head] = b;
}

/* Node @k keeps block @b (an insert or a hit: MRU); evicts its LRU when full. */
static void sim_keep(struct sim *s, unsigned k, uint32_t b)
{
	struct lru *l = &s->n[k];
	uint32_t head = s->t->nuniq;

	if (s->held[b] & (1u << k)) {
		lru_unlink(l, b);
		lru_push_mru(l, head, b);
		return;
	}
	if (l->count == l->cap) {
		uint32_t v = l->next[head];

		lru_unlink(l, v);
		s->held[v] &= (uint16_t) ~(1u << k);
		l->count--;
	}
	lru_push_mru(l, head, b);
	s->held[b] |= (uint16_t)(1u << k);
	l->count++;
}

struct route_result {
	uint64_t blocks, local_hits, cluster_hits, fetched;
	uint64_t reqs[MAX_NODES];
	double spread;
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

/*
 * Where request number @r goes, given each node's cached prefix of it and
 * the requests each took so far. kv-aware: the longest prefix (what
 * remote_match sorts first), then the least loaded; only among nodes within
 * LOAD_BOUND of the mean load (every prompt of the trace shares its first
 * block, so the greedy rule sends everything to one node).
 */
static unsigned route_pick(enum route_policy pol, const uint64_t *prefix, const uint64_t *reqs,
			   unsigned nodes, uint32_t r, uint64_t first_id)
{
	double bound = LOAD_BOUND * (double)(r + 1) / nodes;
	uint64_t best = 0;
	unsigned c = 0;
	bool first = true;

	switch (pol) {
	case ROUTE_KV:
	case ROUTE_KV_GREEDY:
		for (unsigned k = 0; k < nodes; k++) {
			if (pol == ROUTE_KV && (double)reqs[k] + 1 > bound)
				continue;
			if (first || prefix[k] > best || (prefix[k] == best && reqs[k] < reqs[c])) {
				best = prefix[k];
				c = k;
				first = false;
			}
		}
		return c;
	case ROUTE_RR:
		return r % nodes;
	default:
		return (unsigned)(mix64(first_id) % nodes);
	}
}

static int simulate(const struct trace *t, unsigned nodes, uint64_t cap, enum route_policy pol,
		    struct route_result *res)
{
	struct sim s = {.t = t, .nodes = nodes};
	int rc = 0;

	memset(res, 0, sizeof(*res));
	s.held = calloc((size_t)t->nuniq + 1, sizeof(*s.held));
	for (unsigned k = 0; k < nodes && !rc; k++)
		rc = lru_init(&s.n[k], t->nuniq, cap);
	if (!s.held || rc) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint32_t r = 0; r < t->nreq; r++) {
		const uint32_t *b = t->blk + t->off[r];
		uint64_t m = t->off[r + 1] - t->off[r], prefix[MAX_NODES], any = 0;
		unsigned c;

		if (m == 0)
			continue;
		for (unsigned k = 0; k < nodes; k++) {
			uint64_t j = 0;

			while (j < m && (s.held[b[j]] & (1u << k)))
				j++;
			prefix[k] = j;
		}
		while (any < m && s.held[b[any]])
			any++;
		c = route_pick(pol, prefix, res->reqs, nodes, r, t->ids[b[0]]);
		res->reqs[c]++;
		res->blocks += m;
		res->local_hits += prefix[c];
		res->cluster_hits += any > prefix[c] ? any : prefix[c];
		if (any > prefix[c])
			res->fetched += any - prefix[c];
		/* hits become MRU; fetched and computed blocks are kept */
		for (uint64_t j = 0; j < m; j++)
			if (j < prefix[c] || !(s.held[b[j]] & (1u << c)))
				sim_keep(&s, c, b[j]);
	}
	{
		uint64_t max = 0, sum = 0;

		for (unsigned k = 0; k < nodes; k++) {
			sum += res->reqs[k];
			max = res->reqs[k] > max ? res->reqs[k] : max;
		}
		res->spread = sum ? (double)max * nodes / (double)sum : 0;
	}
out:
	for (unsigned k = 0; k < nodes; k++) {
		free(s.n[k].prev);
		free(s.n[k].next);
	}
	free(s.held);
	return rc;
}

/* One line of a routing table, and its JSON row into @rows. */
static void route_row(const char *name, const struct route_result *r, unsigned nodes, json_t *rows)
{
	double b = r->blocks ? (double)r->blocks : 1;
	char per[128] = "";
	size_t used = 0;

	for (unsigned k = 0; k < nodes; k++)
		used += (size_t)snprintf(per + used, sizeof(per) - used, "%s%llu", k ? " " : "",
					 (unsigned long long)r->reqs[k]);
	printf("%-12s %10.4f %12.4f %12.4f %10.2f  %s\n", name, (double)r->local_hits / b,
	       (double)r->cluster_hits / b, (double)r->fetched / b, r->spread, per);
	json_array_append_new(rows,
			      json_pack("{s:s,s:f,s:f,s:f,s:f}", "routing", name, "local_hit_ratio",
					(double)r->local_hits / b, "cluster_hit_ratio",
					(double)r->cluster_hits / b, "fetched_per_block",
					(double)r->fetched / b, "load_spread", r->spread));
}

static int routing(const char *trace_path, unsigned nodes, double fraction, uint32_t limit,
		   json_t *out)
{
	struct trace t;
	struct route_result res[ROUTE_NR];
	uint64_t cap;
	json_t *rows = json_array();
	int rc;

	rc = bench_trace_load(trace_path, limit, &t);
	if (rc) {
		json_decref(rows);
		return rc;
	}
	cap = (uint64_t)((double)t.nuniq * fraction);
	printf("\n== cluster routing: Mooncake conversation trace, %u requests, %u unique blocks; "
	       "%u nodes, each an LRU of %llu blocks (%.0f%% of the footprint); simulation ==\n",
	       t.nreq, t.nuniq, nodes, (unsigned long long)cap, fraction * 100);
	printf("%-12s %10s %12s %12s %10s  %s\n", "routing", "local hit", "cluster hit",
	       "fetched/blk", "max/mean", "requests per node");
	for (int p = 0; p < ROUTE_NR && !rc; p++) {
		rc = simulate(&t, nodes, cap, (enum route_policy)p, &res[p]);
		if (rc)
			break;
		route_row(route_names[p], &res[p], nodes, rows);
	}
	if (!rc && out)
		json_object_set_new(out, "routing",
				    json_pack("{s:i,s:i,s:f,s:o}", "requests", (int)t.nreq, "nodes",
					      (int)nodes, "dram_fraction", fraction, "rows",
					      json_incref(rows)));
	json_decref(rows);
	bench_trace_free(&t);
	return rc;
}

/* --- routing on real daemons ----------------------------------------------------------------- */

#define RD_BLOCK (16u << 10) /* bytes of a trace block file, as `kvfs-bench replay` */

static int64_t stat_of(const struct bench_mount *m, const char *path);
static int wait_stat(const struct bench_mount *m, const char *path, int64_t want);

/*
 * The first @nreq requests through @nodes kvfs daemons in one cluster, each
 * with DRAM of @fraction of those requests' footprint (no NVMe, no lending),
 * routed by @pol from kvfs_cluster_match_paths() — the index, as a router
 * sees it. A request opens its blocks on the chosen node in order until the
 * first miss (a local miss is fetched from a peer by the daemon itself: a
 * cluster-wide hit), checks each, and writes the rest. Local hits are the
 * hits less what the node fetched (its remote.fetched counter).
 */
static int daemon_run(const struct trace *t, uint32_t nreq, unsigned nodes, double fraction,
		      enum route_policy pol, const char *url, const char *token,
		      struct route_result *res)
{
	struct bench_mount m[MAX_NODES];
	char cname[32], ids[MAX_NODES][16];
	uint8_t *rbuf = bench_buf_alloc(RD_BLOCK + 1), *wbuf = bench_buf_alloc(RD_BLOCK),
		*ebuf = bench_buf_alloc(RD_BLOCK), *seen = calloc(t->nuniq + 1, 1);
	char **paths = NULL;
	uint64_t uniq = 0, dram;
	size_t pcap = 0;
	int rc = 0;

	memset(m, 0, sizeof(m));
	memset(res, 0, sizeof(*res));
	if (!rbuf || !wbuf || !ebuf || !seen) {
		rc = -ENOMEM;
		goto out;
	}
	for (uint64_t j = 0; j < t->off[nreq]; j++)
		if (!seen[t->blk[j]]++)
			uniq++;
	dram = (uint64_t)((double)(uniq * RD_BLOCK) * fraction) / RD_BLOCK * RD_BLOCK;
	if (dram < (1u << 20))
		dram = 1u << 20;
	snprintf(cname, sizeof(cname), "route%d", (int)pol);
	for (unsigned k = 0; k < nodes && !rc; k++) {
		const char *extra[] = {"--cluster",
				       url,
				       "--cluster-token",
				       token,
				       "--cluster-name",
				       cname,
				       "--node-id",
				       ids[k],
				       "--listen",
				       "127.0.0.1:0",
				       "--page-size",
				       "16K",
				       NULL};

		snprintf(ids[k], sizeof(ids[k]), "n%u", k);
		rc = bench_mount_start(&m[k], ids[k], dram, extra);
		if (!rc)
			rc = bench_block_dirs(m[k].mnt);
	}
	for (unsigned k = 0; k < nodes && !rc; k++)
		rc = wait_stat(&m[k], "remote.peers_alive", nodes - 1);
	for (uint32_t r = 0; r < nreq && !rc && !bench_interrupted; r++) {
		const uint32_t *b = t->blk + t->off[r];
		uint64_t mb = t->off[r + 1] - t->off[r], prefix[MAX_NODES] = {0}, hits = 0;
		struct kvfs_node_prefix np[MAX_NODES];
		int64_t f0;
		long got;
		unsigned c;

		if (mb == 0)
			continue;
		if (mb > pcap) {
			char **p = realloc(paths, mb * sizeof(*p));

			if (!p) {
				rc = -ENOMEM;
				break;
			}
			for (size_t j = pcap; j < mb; j++)
				p[j] = malloc(PATH_MAX);
			paths = p;
			pcap = mb;
		}
		for (uint64_t j = 0; j < mb; j++)
			bench_block_path(m[0].mnt, t->ids[b[j]], "", paths[j], PATH_MAX);
		got = kvfs_cluster_match_paths((const char *const *)paths, mb, np, MAX_NODES);
		if (got < 0) {
			bench_err("cluster: kvfs_cluster_match: %s", strerror((int)-got));
			rc = (int)got;
			break;
		}
		for (long i = 0; i < got && i < MAX_NODES; i++)
			for (unsigned k = 0; k < nodes; k++)
				if (!strcmp(np[i].node, ids[k]))
					prefix[k] = np[i].blocks;
		c = route_pick(pol, prefix, res->reqs, nodes, r, t->ids[b[0]]);
		f0 = stat_of(&m[c], "remote.fetched");
		for (; hits < mb; hits++) {
			char path[PATH_MAX];
			int fd;

			bench_block_path(m[c].mnt, t->ids[b[hits]], "", path, sizeof(path));
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0) {
				if (errno != ENOENT)
					rc = -errno;
				break;
			}
			rc = bench_block_check(fd, path, rbuf, ebuf, RD_BLOCK, t->ids[b[hits]]);
			close(fd);
			if (rc)
				break;
		}
		res->fetched += (uint64_t)(stat_of(&m[c], "remote.fetched") - f0);
		for (uint64_t j = hits; j < mb && !rc; j++) {
			bench_block_fill(wbuf, RD_BLOCK, t->ids[b[j]]);
			rc = bench_block_write(m[c].mnt, t->ids[b[j]], wbuf, RD_BLOCK);
			if (rc == -ENOSPC)
				rc = 0; /* nothing evictable now: not kept, a miss later */
		}
		res->reqs[c]++;
		res->blocks += mb;
		res->cluster_hits += hits;
	}
	if (!rc) {
		uint64_t max = 0, sum = 0;

		res->local_hits =
			res->cluster_hits - KVFS_BENCH_MIN(res->fetched, res->cluster_hits);
		for (unsigned k = 0; k < nodes; k++) {
			sum += res->reqs[k];
			max = res->reqs[k] > max ? res->reqs[k] : max;
		}
		res->spread = sum ? (double)max * nodes / (double)sum : 0;
	}
out:
	for (unsigned k = 0; k < nodes; k++)
		bench_mount_stop(&m[k]);
	for (size_t j = 0; j < pcap; j++)
		free(paths[j]);
	free(paths);
	free(seen);
	bench_buf_free(rbuf, RD_BLOCK + 1);
	bench_buf_free(wbuf, RD_BLOCK);
	bench_buf_free(ebuf, RD_BLOCK);
	return rc;
}

static int routing_daemons(const char *trace_path, unsigned nodes, double fraction, uint32_t nreq,
			   json_t *out)
{
	static const enum route_policy pols[] = {ROUTE_KV, ROUTE_RR, ROUTE_HASH};
	struct bench_redis rs = {0};
	struct route_result res;
	char token[] = "/tmp/kvfs-bench-route-token-XXXXXX";
	struct trace t;
	json_t *rows = json_array();
	int rc, fd;

	rc = bench_trace_load(trace_path, nreq, &t);
	if (rc) {
		json_decref(rows);
		return rc;
	}
	fd = mkstemp(token);
	if (fd < 0 || write(fd, "kvfs-bench-route-shared-secret\n", 31) != 31) {
		bench_err("cluster: cannot write a token file");
		rc = -EIO;
	}
	if (fd >= 0)
		close(fd);
	if (!rc)
		rc = bench_redis_start(&rs);
	if (!rc) {
		char url[64];

		snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
		printf("\n== cluster routing on %u kvfs daemons: the first %u requests of the "
		       "Mooncake "
		       "trace, 16 KiB blocks, DRAM %.0f%% of their footprint each; routed by "
		       "kvfs_cluster_match ==\n",
		       nodes, t.nreq, fraction * 100);
		printf("%-12s %10s %12s %12s %10s  %s\n", "routing", "local hit", "cluster hit",
		       "fetched/blk", "max/mean", "requests per node");
		for (size_t p = 0; p < sizeof(pols) / sizeof(pols[0]) && !rc; p++) {
			bench_note("cluster: %s on %u daemons", route_names[pols[p]], nodes);
			rc = daemon_run(&t, t.nreq, nodes, fraction, pols[p], url, token, &res);
			if (rc)
				break;
			route_row(route_names[pols[p]], &res, nodes, rows);
		}
	}
	if (!rc && out)
		json_object_set_new(out, "routing_daemons",
				    json_pack("{s:i,s:i,s:f,s:o}", "requests", (int)t.nreq, "nodes",
					      (int)nodes, "dram_fraction", fraction, "rows",
					      json_incref(rows)));
	json_decref(rows);
	bench_redis_stop(&rs);
	unlink(token);
	bench_trace_free(&t);
	return rc;
}

/* --- handoff ------------------------------------------------------------------------------------
 */

static char bin_dir[PATH_MAX];

static int find_bin_dir(void)
{
	ssize_t n = readlink("/proc/self/exe", bin_dir, sizeof(bin_dir) - 1);

	if (n <= 0)
		return -errno;
	bin_dir[n] = '\0';
	*strrchr(bin_dir, '/') = '\0';
	return 0;
}

/* Run bin_dir/@argv[0] with stdout to @out (or /dev/null). @return its exit status or -errno. */
static int run_tool(char *const *argv, const char *out)
{
	char path[PATH_MAX];
	int status;
	pid_t pid;

	bench_path(path, sizeof(path), "%s/%s", bin_dir, argv[0]);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int fd = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			      0644);

		if (fd < 0 || dup2(fd, 1) < 0)
			_exit(126);
		execv(path, argv);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* One engine run; its first request's figures from --json. @return 0 or -EIO. */
struct llm_run {
	double ttft_ms, prefetch_ms;
	long reused, first_token;
};

static int llm(const char *work, const char *model, const char *prompt, const char *cache,
	       const char *role, const char *push, struct llm_run *res)
{
	char out[PATH_MAX];
	char *argv[20];
	int n = 0, rc;
	json_t *doc, *req;
	json_error_t jerr;

	bench_path(out, sizeof(out), "%s/llm.json", work);
	argv[n++] = "kvfs-llm";
	argv[n++] = "--model";
	argv[n++] = (char *)model;
	argv[n++] = "--json";
	argv[n++] = "--max-new";
	argv[n++] = "1";
	argv[n++] = "--prompt-file";
	argv[n++] = (char *)prompt;
	if (cache) {
		argv[n++] = "--cache";
		argv[n++] = (char *)cache;
	} else {
		argv[n++] = "--no-cache";
	}
	if (role) {
		argv[n++] = "--role";
		argv[n++] = (char *)role;
	}
	if (push) {
		argv[n++] = "--push";
		argv[n++] = (char *)push;
	}
	argv[n] = NULL;
	rc = run_tool(argv, out);
	if (rc) {
		bench_err("cluster: kvfs-llm %s failed (exit %d)", role ? role : "--no-cache", rc);
		return -EIO;
	}
	doc = json_load_file(out, 0, &jerr);
	req = doc ? json_array_get(json_object_get(doc, "requests"), 0) : NULL;
	if (!req) {
		bench_err("cluster: kvfs-llm output: %s", doc ? "no request" : jerr.text);
		json_decref(doc);
		return -EIO;
	}
	res->ttft_ms = json_real_value(json_object_get(req, "ttft_ms"));
	res->prefetch_ms = json_real_value(json_object_get(req, "prefetch_ms"));
	res->reused = (long)json_integer_value(json_object_get(req, "reused_tokens"));
	res->first_token =
		(long)json_integer_value(json_array_get(json_object_get(req, "tokens"), 0));
	json_decref(doc);
	return 0;
}

static int64_t stat_of(const struct bench_mount *m, const char *path)
{
	json_t *st = bench_mount_json(m, "stats");
	int64_t v = st ? bench_json_int(st, path) : -1;

	json_decref(st);
	return v;
}

/* Poll until stats @path of @m reaches @want (10 s). */
static int wait_stat(const struct bench_mount *m, const char *path, int64_t want)
{
	for (int i = 0; i < 1000 && !bench_interrupted; i++) {
		if (stat_of(m, path) >= want)
			return 0;
		usleep(10 * 1000);
	}
	bench_err("cluster: %s on %s never reached %lld", path, m->label, (long long)want);
	return -ETIMEDOUT;
}

/* Until node @node holds all @n blocks of @prompt under @nsdir (seen from @from). */
static int wait_published(const char *nsdir, const uint8_t *prompt, size_t ntok, const char *node)
{
	uint32_t *tok = malloc(ntok * sizeof(*tok));
	size_t nk = ntok / 16;
	kvfs_key *keys = malloc((nk + 1) * sizeof(*keys)), root;
	char **paths = calloc(nk + 1, sizeof(*paths));
	struct kvfs_node_prefix np[8];
	int rc = -ENOMEM;

	if (!tok || !keys || !paths)
		goto out;
	for (size_t i = 0; i < ntok; i++)
		tok[i] = prompt[i];
	if (kvfs_key_root("0", &root) ||
	    kvfs_key_chain(&root, 0, tok, ntok, 16, NULL, keys, nk) != (long)nk)
		goto out;
	for (size_t i = 0; i < nk; i++) {
		char hex[KVFS_KEY_HEX + 1];

		kvfs_key_to_hex(&keys[i], hex);
		if (asprintf(&paths[i], "%s/%s", nsdir, hex) < 0) {
			paths[i] = NULL;
			goto out;
		}
	}
	rc = -ETIMEDOUT;
	for (int i = 0; i < 1000 && !bench_interrupted; i++) {
		long got = kvfs_cluster_match_paths((const char *const *)paths, nk, np, 8);

		for (long k = 0; k < got && k < 8; k++)
			if (!strcmp(np[k].node, node) && np[k].blocks == nk)
				rc = 0;
		if (!rc)
			break;
		usleep(10 * 1000);
	}
	if (rc)
		bench_err("cluster: node %s never held the whole prompt", node);
out:
	for (size_t i = 0; paths && i < nk; i++)
		free(paths[i]);
	free(paths);
	free(keys);
	free(tok);
	return rc;
}

struct handoff_row {
	double recompute, pull, push, pull_prefetch, push_prefetch;
	double pull_bytes, push_bytes; /* moved between nodes, per prompt token */
	bool same_tokens;
};

static int handoff(unsigned ntok, unsigned reps, json_t *out)
{
	struct bench_redis rs = {0};
	struct bench_mount a = {0}, b = {0};
	char work[] = "/tmp/kvfs-bench-handoff-XXXXXX";
	char model[PATH_MAX], token[PATH_MAX], url[64], prompt_path[PATH_MAX];
	double rec[16], pul[16], pus[16], pulf[16], pusf[16], pulb = 0, pusb = 0;
	bool same = true;
	uint8_t *prompt = NULL;
	int rc;
	FILE *f;

	if (reps > 16)
		reps = 16;
	if (find_bin_dir() || !mkdtemp(work)) {
		bench_err("cluster: cannot make a work directory");
		return -EIO;
	}
	bench_path(model, sizeof(model), "%s/model", work);
	bench_path(token, sizeof(token), "%s/token", work);
	bench_path(prompt_path, sizeof(prompt_path), "%s/prompt.txt", work);
	{
		char max_pos[16];
		char *gm[] = {
			"kvfs-genmodel", "--out",     model,   "--layers",   "6", "--hidden",
			"256",		 "--heads",   "4",     "--kv-heads", "2", "--intermediate",
			"768",		 "--max-pos", max_pos, "--seed",     "1", NULL};

		snprintf(max_pos, sizeof(max_pos), "%u", ntok + 64);
		bench_note("cluster: generating the model");
		if (run_tool(gm, NULL)) {
			bench_err("cluster: kvfs-genmodel failed");
			rc = -EIO;
			goto out;
		}
	}
	f = fopen(token, "w");
	if (!f || fputs("kvfs-bench-cluster-shared-secret\n", f) < 0 || fclose(f)) {
		bench_err("cluster: cannot write a token file");
		rc = -EIO;
		goto out;
	}
	rc = bench_redis_start(&rs);
	if (rc)
		goto out;
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
	{
		const char *ea[] = {
			"--cluster", url,	    "--cluster-token", token,  "--node-id", "a",
			"--listen",  "127.0.0.1:0", "--lend",	       "256M", NULL};
		const char *eb[] = {
			"--cluster", url,	    "--cluster-token", token,  "--node-id", "b",
			"--listen",  "127.0.0.1:0", "--lend",	       "512M", NULL};

		rc = bench_mount_start(&a, "cluster-a", 1ull << 30, ea);
		if (!rc)
			rc = bench_mount_start(&b, "cluster-b", 1ull << 30, eb);
	}
	if (!rc)
		rc = wait_stat(&a, "remote.peers_alive", 1);
	if (!rc)
		rc = wait_stat(&b, "remote.peers_alive", 1);
	prompt = malloc(ntok);
	if (!prompt)
		rc = -ENOMEM;
	for (unsigned r = 0; r < reps && !rc; r++) {
		char pull_a[PATH_MAX], pull_b[PATH_MAX], push_a[PATH_MAX], push_b[PATH_MAX];
		struct llm_run x, p, d;
		int64_t fb0, pb0;

		bench_fill(prompt, ntok, 1000 + r);
		for (unsigned i = 0; i < ntok; i++)
			prompt[i] = (uint8_t)(' ' + prompt[i] % 95); /* printable bytes: tokens */
		f = fopen(prompt_path, "w");
		if (!f || fwrite(prompt, 1, ntok, f) != ntok || fclose(f)) {
			rc = -EIO;
			break;
		}
		bench_path(pull_a, sizeof(pull_a), "%s/pull%u", a.mnt, r);
		bench_path(pull_b, sizeof(pull_b), "%s/pull%u", b.mnt, r);
		bench_path(push_a, sizeof(push_a), "%s/push%u", a.mnt, r);
		bench_path(push_b, sizeof(push_b), "%s/push%u", b.mnt, r);
		bench_note("cluster: handoff %u/%u: recompute", r + 1, reps);
		rc = llm(work, model, prompt_path, NULL, NULL, NULL, &x);
		/* pull */
		if (!rc)
			rc = llm(work, model, prompt_path, pull_a, "prefill", NULL, &p);
		if (!rc)
			rc = wait_published(pull_b, prompt, ntok, "a");
		fb0 = stat_of(&b, "remote.fetched_bytes");
		bench_note("cluster: handoff %u/%u: pull", r + 1, reps);
		if (!rc)
			rc = llm(work, model, prompt_path, pull_b, "decode", NULL, &d);
		if (!rc) {
			rec[r] = x.ttft_ms;
			pul[r] = d.ttft_ms;
			pulf[r] = d.prefetch_ms;
			pulb += (double)(stat_of(&b, "remote.fetched_bytes") - fb0) / ntok;
			same &= d.first_token == x.first_token && d.reused + 16 >= (long)ntok;
		}
		/* push */
		pb0 = stat_of(&a, "push.pushed");
		fb0 = stat_of(&a, "push.bytes");
		if (!rc)
			rc = llm(work, model, prompt_path, push_a, "prefill", "b", &p);
		if (!rc)
			rc = wait_stat(&a, "push.pushed", pb0 + ntok / 16);
		if (!rc && stat_of(&a, "push.fallbacks") > 0) {
			bench_err("cluster: pushes fell back: the push figures would be pulls");
			rc = -EIO;
		}
		bench_note("cluster: handoff %u/%u: push", r + 1, reps);
		if (!rc)
			rc = llm(work, model, prompt_path, push_b, "decode", NULL, &d);
		if (!rc) {
			pus[r] = d.ttft_ms;
			pusf[r] = d.prefetch_ms;
			/* b took them from its own lent memory: what moved is what a pushed */
			pusb += (double)(stat_of(&a, "push.bytes") - fb0) / ntok;
			same &= d.first_token == x.first_token && d.reused + 16 >= (long)ntok;
		}
	}
	if (!rc) {
		struct handoff_row row = {
			.recompute = bench_median(rec, (int)reps),
			.pull = bench_median(pul, (int)reps),
			.push = bench_median(pus, (int)reps),
			.pull_prefetch = bench_median(pulf, (int)reps),
			.push_prefetch = bench_median(pusf, (int)reps),
			.pull_bytes = pulb / reps,
			.push_bytes = pusb / reps,
			.same_tokens = same,
		};

		printf("\n== cluster handoff: a %u-token prompt prefilled on node a, decoded on "
		       "node "
		       "b (kvfs-llm, 6-layer model; median of %u; tcp on 127.0.0.1) ==\n",
		       ntok, reps);
		printf("%-34s %12s %10s %14s %16s\n", "decode side", "TTFT", "speedup",
		       "of it: fetch", "bytes moved/tok");
		printf("%-34s %9.1f ms %10s %14s %16s\n", "recompute the prompt (no cache)",
		       row.recompute, "1.00x", "", "0");
		printf("%-34s %9.1f ms %9.2fx %11.1f ms %16.0f\n",
		       "pull (prefetch from a, then load)", row.pull, row.recompute / row.pull,
		       row.pull_prefetch, row.pull_bytes);
		printf("%-34s %9.1f ms %9.2fx %11.1f ms %16.0f\n", "push (a wrote into b's DRAM)",
		       row.push, row.recompute / row.push, row.push_prefetch, row.push_bytes);
		printf("first token equal to the recompute's in every run: %s\n",
		       row.same_tokens ? "yes" : "NO");
		if (out)
			json_object_set_new(
				out, "handoff",
				json_pack("{s:i,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:b}", "tokens",
					  (int)ntok, "recompute_ttft_ms", row.recompute,
					  "pull_ttft_ms", row.pull, "push_ttft_ms", row.push,
					  "pull_speedup", row.recompute / row.pull, "push_speedup",
					  row.recompute / row.push, "pull_bytes_per_token",
					  row.pull_bytes, "push_bytes_per_token", row.push_bytes,
					  "same_tokens", row.same_tokens));
		if (!row.same_tokens)
			rc = -EIO;
	}
out:
	free(prompt);
	bench_mount_stop(&b);
	bench_mount_stop(&a);
	bench_redis_stop(&rs);
	bench_rmtree(work);
	return rc;
}

/* --- entry ------------------------------------------------------------------------------------ */

int bench_cluster(int argc, char **argv, json_t *out)
{
	static const struct option lo[] = {
		{"trace", required_argument, NULL, 't'},
		{"nodes", required_argument, NULL, 'n'},
		{"fraction", required_argument, NULL, 'f'},
		{"limit", required_argument, NULL, 'l'},
		{"tokens", required_argument, NULL, 'k'},
		{"reps", required_argument, NULL, 'r'},
		{"only", required_argument, NULL, 'o'},
		{"daemon-requests", required_argument, NULL, 'd'},
		{NULL, 0, NULL, 0},
	};
	const char *trace = NULL, *only = NULL;
	unsigned nodes = 4, ntok = 4096, reps = 3;
	double fraction = 0.10;
	unsigned long limit = 0, dreq = 1000;
	json_t *res = json_object();
	int c, rc = 0;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 't':
			trace = optarg;
			break;
		case 'n':
			nodes = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'f':
			fraction = strtod(optarg, NULL);
			break;
		case 'l':
			limit = strtoul(optarg, NULL, 10);
			break;
		case 'k':
			ntok = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'r':
			reps = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'o':
			only = optarg;
			break;
		case 'd':
			dreq = strtoul(optarg, NULL, 10);
			break;
		default:
			json_decref(res);
			return -EINVAL;
		}
	}
	if (nodes < 2 || nodes > MAX_NODES || fraction <= 0 || fraction > 1 || ntok < 16 ||
	    ntok > 65536 || reps < 1 ||
	    (only && strcmp(only, "handoff") && strcmp(only, "routing"))) {
		bench_err("cluster: --nodes 2..16, --fraction (0,1], --tokens 16..65536, --reps >= "
			  "1, "
			  "--only handoff|routing");
		json_decref(res);
		return -EINVAL;
	}
	if (!only || !strcmp(only, "handoff"))
		rc = handoff(ntok, reps, res);
	if (!rc && (!only || !strcmp(only, "routing"))) {
		if (!trace) {
			bench_err("cluster: routing needs --trace FILE (the Mooncake conversation "
				  "trace; "
				  "make bench unpacks "
				  "tools/workloads/mooncake-conversation-trace.jsonl.gz)");
			rc = -EINVAL;
		} else {
			rc = routing(trace, nodes, fraction, (uint32_t)limit, res);
			if (!rc && dreq)
				rc = routing_daemons(trace, nodes, fraction, (uint32_t)dreq, res);
		}
	}
	if (out)
		json_object_set_new(out, "cluster", res);
	else
		json_decref(res);
	return rc;
}
