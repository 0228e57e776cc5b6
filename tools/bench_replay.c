/*
 * tools/bench_replay.c — kvfs-bench replay: the Mooncake conversation trace
 * against a kvfs mount, next to an LRU simulation of the same capacity.
 *
 * The trace is JSON lines; each request's "hash_ids" name its 512-token
 * prefix blocks (equal ids = shared prefix). Block id X is the file
 * blocks/<X % 256 as 2 hex>/<X>.kv of --block-size bytes, whose content is
 * derived from X (16-byte header "kvbench1" + X little-endian, then a
 * splitmix64 stream seeded by X), so a hit is checked byte for byte.
 *
 * Per request, the connector's logic (prefix semantics): open() each block
 * in order until the first failure — each success is a hit (read whole,
 * verified), the first ENOENT is the first miss and ends the lookup, since
 * later blocks are useless without it; then write every block from the first
 * miss on that does not exist, through a temporary name and rename() (the
 * idiom every engine connector uses). Hit ratio = leading hits / blocks.
 *
 * The peers, computed in the same run with the same prefix logic: an
 * unlimited cache, and plain LRU in C with the daemon's capacity in blocks
 * (a hash map from id to a dense index, built once at load, and a doubly
 * linked list over dense indices; a hit moves to MRU, an insert at capacity
 * evicts the LRU end). The daemon runs with --page-size = the block size
 * (rounded to a power of two) and --dram = fraction x footprint, footprint =
 * unique ids x block size rounded up to the page.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tools/bench.h"

#define MAX_FRACTIONS 8
#define MAX_POLICIES  4
#define BLOCK_MAGIC   "kvbench1" /* 8 bytes; never the native block magic */
#define DEFAULT_TRACE BENCH_DEFAULT_TRACE
#define NIL	      UINT32_MAX


/* --- loading ---------------------------------------------------------------------------- */

/* Insert-only open-addressing map from trace id to dense index. */
struct idmap {
	uint64_t *keys;
	uint32_t *vals;
	uint64_t mask;
	uint64_t n;
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	return x ^ (x >> 33);
}

static int idmap_grow(struct idmap *m)
{
	uint64_t cap = m->mask ? (m->mask + 1) * 2 : 1u << 16, i, j;
	uint64_t *keys = malloc(cap * sizeof(*keys));
	uint32_t *vals = malloc(cap * sizeof(*vals));

	if (!keys || !vals) {
		free(keys);
		free(vals);
		return -ENOMEM;
	}
	for (i = 0; i < cap; i++)
		vals[i] = NIL;
	for (i = 0; m->mask && i <= m->mask; i++) {
		if (m->vals[i] == NIL)
			continue;
		for (j = mix64(m->keys[i]) & (cap - 1); vals[j] != NIL; j = (j + 1) & (cap - 1))
			;
		keys[j] = m->keys[i];
		vals[j] = m->vals[i];
	}
	free(m->keys);
	free(m->vals);
	m->keys = keys;
	m->vals = vals;
	m->mask = cap - 1;
	return 0;
}

/* @return the dense index of @id, adding it as @next if new (*@added set). */
static int idmap_get(struct idmap *m, uint64_t id, uint32_t next, uint32_t *out, bool *added)
{
	uint64_t j;

	if ((m->n + 1) * 2 > m->mask + 1 && idmap_grow(m))
		return -ENOMEM;
	for (j = mix64(id) & m->mask; m->vals[j] != NIL; j = (j + 1) & m->mask) {
		if (m->keys[j] == id) {
			*out = m->vals[j];
			*added = false;
			return 0;
		}
	}
	m->keys[j] = id;
	m->vals[j] = next;
	m->n++;
	*out = next;
	*added = true;
	return 0;
}

void bench_trace_free(struct trace *t)
{
	free(t->off);
	free(t->blk);
	free(t->ids);
	memset(t, 0, sizeof(*t));
}

static int grow(void **p, uint64_t *cap, uint64_t need, size_t elem)
{
	void *q;

	if (need <= *cap)
		return 0;
	*cap = *cap ? *cap * 2 : 4096;
	while (*cap < need)
		*cap *= 2;
	q = realloc(*p, *cap * elem);
	if (!q)
		return -ENOMEM;
	*p = q;
	return 0;
}

/* A trace file, read through `gzip -dc` when its name ends in .gz. */
static FILE *trace_open(const char *path, bool *piped)
{
	size_t n = strlen(path);
	char *cmd, *q;
	FILE *f;

	*piped = n > 3 && !strcmp(path + n - 3, ".gz");
	if (!*piped)
		return fopen(path, "re");
	if (access(path, R_OK))
		return NULL;
	/* Single-quote the name for the shell: ' becomes '\''. */
	cmd = malloc(4 * n + 32);
	if (!cmd)
		return NULL;
	q = cmd + sprintf(cmd, "gzip -dc -- '");
	for (const char *p = path; *p; p++)
		q += *p == '\'' ? sprintf(q, "'\\''") : sprintf(q, "%c", *p);
	strcpy(q, "'");
	f = popen(cmd, "re");
	free(cmd);
	return f;
}

int bench_trace_load(const char *path, uint32_t limit, struct trace *t)
{
	bool piped;
	struct idmap map = {0};
	uint64_t cap_off = 0, cap_blk = 0, cap_ids = 0;
	char *line = NULL;
	size_t linecap = 0;
	uint64_t lineno = 0;
	ssize_t len;
	int rc = 0;
	FILE *f;

	memset(t, 0, sizeof(*t));
	f = trace_open(path, &piped);
	if (!f) {
		rc = -errno;
		bench_err("cannot open trace %s: %s", path, strerror(errno));
		return rc;
	}
	rc = grow((void **)&t->off, &cap_off, 1, sizeof(*t->off));
	if (!rc)
		t->off[0] = 0;
	while (!rc && (!limit || t->nreq < limit) && (len = getline(&line, &linecap, f)) > 0) {
		json_error_t jerr;
		json_t *req, *ids;
		size_t i, n;

		lineno++;
		if (len <= 1)
			continue;
		req = json_loads(line, 0, &jerr);
		ids = req ? json_object_get(req, "hash_ids") : NULL;
		if (!json_is_array(ids)) {
			bench_err("%s:%llu: %s", path, (unsigned long long)lineno,
				  req ? "no \"hash_ids\" array" : jerr.text);
			json_decref(req);
			rc = -EINVAL;
			break;
		}
		n = json_array_size(ids);
		rc = grow((void **)&t->blk, &cap_blk, t->nblocks + n, sizeof(*t->blk));
		rc = rc ? rc
			: grow((void **)&t->off, &cap_off, (uint64_t)t->nreq + 2, sizeof(*t->off));
		for (i = 0; i < n && !rc; i++) {
			json_t *v = json_array_get(ids, i);
			uint32_t dense;
			bool added;

			if (!json_is_integer(v) || json_integer_value(v) < 0) {
				bench_err("%s:%llu: hash_ids[%zu] is not a non-negative integer",
					  path, (unsigned long long)lineno, i);
				rc = -EINVAL;
				break;
			}
			rc = idmap_get(&map, (uint64_t)json_integer_value(v), t->nuniq, &dense,
				       &added);
			if (!rc && added) {
				rc = grow((void **)&t->ids, &cap_ids, (uint64_t)t->nuniq + 1,
					  sizeof(*t->ids));
				if (!rc)
					t->ids[t->nuniq++] = (uint64_t)json_integer_value(v);
			}
			if (!rc)
				t->blk[t->nblocks++] = dense;
		}
		json_decref(req);
		if (!rc)
			t->off[++t->nreq] = t->nblocks;
	}
	t->file_requests = t->nreq;
	while (!rc && (len = getline(&line, &linecap, f)) > 0) /* count what --limit left */
		t->file_requests += len > 1;
	if (!rc && ferror(f)) {
		rc = -EIO;
		bench_err("reading %s: %s", path, strerror(errno));
	}
	if (rc == -ENOMEM)
		bench_err("out of memory loading %s", path);
	if (!rc && t->nreq == 0) {
		bench_err("%s holds no requests", path);
		rc = -EINVAL;
	}
	free(line);
	free(map.keys);
	free(map.vals);
	if (piped) {
		/* gzip's failure counts unless we stopped reading early (SIGPIPE). */
		int st = pclose(f);

		if (!rc && st && (!limit || t->nreq < limit)) {
			bench_err("cannot read trace %s: gzip failed", path);
			rc = -EIO;
		}
	} else {
		fclose(f);
	}
	if (rc)
		bench_trace_free(t);
	return rc;
}

/* --- the simulated peers ------------------------------------------------------------------ */

/*
 * Prefix-semantics replay against LRU of @cap blocks (@cap = UINT64_MAX:
 * unlimited). @return 0 with *@hits leading hits and *@evictions.
 */
static int sim_lru(const struct trace *t, uint64_t cap, uint64_t *hits, uint64_t *evictions)
{
	uint32_t head = t->nuniq; /* sentinel: head.next = LRU, head.prev = MRU */
	uint32_t *prev = malloc(((size_t)t->nuniq + 1) * sizeof(*prev));
	uint32_t *next = malloc(((size_t)t->nuniq + 1) * sizeof(*next));
	uint8_t *in = calloc((size_t)t->nuniq + 1, 1);
	uint64_t count = 0;

	if (!prev || !next || !in) {
		free(prev);
		free(next);
		free(in);
		return -ENOMEM;
	}
	*hits = *evictions = 0;
	prev[head] = next[head] = head;
	for (uint32_t r = 0; r < t->nreq; r++) {
		uint64_t j = t->off[r], end = t->off[r + 1];

		for (; j < end && in[t->blk[j]]; j++) {
			uint32_t b = t->blk[j];

			(*hits)++;
			/* move to MRU */
			next[prev[b]] = next[b];
			prev[next[b]] = prev[b];
			prev[b] = prev[head];
			next[b] = head;
			next[prev[head]] = b;
			prev[head] = b;
		}
		for (; j < end && cap; j++) {
			uint32_t b = t->blk[j];

			if (in[b])
				continue;
			if (count == cap) {
				uint32_t v = next[head];

				next[head] = next[v];
				prev[next[v]] = head;
				in[v] = 0;
				count--;
				(*evictions)++;
			}
			prev[b] = prev[head];
			next[b] = head;
			next[prev[head]] = b;
			prev[head] = b;
			in[b] = 1;
			count++;
		}
	}
	free(prev);
	free(next);
	free(in);
	return 0;
}

/* --- the daemon replay -------------------------------------------------------------------- */

struct replay_result {
	uint64_t hits, writes, skipped, enospc, evictions, daemon_hits, evict_races;
	uint64_t hits_dram, hits_nvme;
	double wall;
};

/* --nvme-fraction: an NVMe tier of this fraction of the footprint (0: none). */
static double nvme_fraction;

void bench_block_path(const char *mnt, uint64_t id, const char *suffix, char *out, size_t len)
{
	bench_path(out, len, "%s/blocks/%02x/%llu.kv%s", mnt, (unsigned)(id % 256),
		   (unsigned long long)id, suffix);
}

void bench_block_fill(uint8_t *buf, uint64_t size, uint64_t id)
{
	memcpy(buf, BLOCK_MAGIC, 8);
	memcpy(buf + 8, &id, 8); /* little-endian hosts only, like the rest of kvfs */
	bench_fill(buf + 16, size - 16, id ^ 0x6b7666736b766673ull);
}

/* Read a hit whole and check it is block @id. @return 0, -EBADMSG if wrong. */
int bench_block_check(int fd, const char *path, uint8_t *buf, uint8_t *expect, uint64_t size,
		      uint64_t id)
{
	uint64_t off = 0;
	ssize_t n;

	while ((n = read(fd, buf + off, size + 1 - off)) > 0) {
		off += (uint64_t)n;
		if (off > size)
			break;
	}
	if (n < 0) {
		bench_err("read %s: %s", path, strerror(errno));
		return -errno;
	}
	if (off != size || memcmp(buf, BLOCK_MAGIC, 8) || memcmp(buf + 8, &id, 8)) {
		bench_err("%s: wrong bytes (%llu bytes; header is not block %llu)", path,
			  (unsigned long long)off, (unsigned long long)id);
		return -EBADMSG;
	}
	bench_block_fill(expect, size, id);
	if (memcmp(buf, expect, size)) {
		bench_err("%s: payload differs from block %llu", path, (unsigned long long)id);
		return -EBADMSG;
	}
	return 0;
}

/* Write block @id through a temporary name and rename(). @return 0 or -errno. */
int bench_block_write(const char *mnt, uint64_t id, const uint8_t *buf, uint64_t size)
{
	char tmp[PATH_MAX], dst[PATH_MAX];
	uint64_t off = 0;
	ssize_t n = 0;
	int fd, rc = 0;

	bench_block_path(mnt, id, ".tmp", tmp, sizeof(tmp));
	bench_block_path(mnt, id, "", dst, sizeof(dst));
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	while (off < size) {
		size_t len = size - off < BENCH_IO ? (size_t)(size - off) : BENCH_IO;

		n = write(fd, buf + off, len);
		if (n <= 0) {
			rc = n < 0 ? -errno : -EIO;
			break;
		}
		off += (uint64_t)n;
	}
	if (close(fd) && !rc)
		rc = -errno;
	if (!rc && rename(tmp, dst))
		rc = -errno;
	if (rc)
		unlink(tmp);
	return rc;
}

/* See bench.h. */
int bench_replay_request(const char *mnt, const struct trace *t, uint32_t r, uint64_t bsize,
			 uint8_t *rbuf, uint8_t *wbuf, uint8_t *ebuf, struct bench_req_result *res)
{
	uint64_t j = t->off[r], end = t->off[r + 1];
	char path[PATH_MAX];
	int rc = 0, fd;

	memset(res, 0, sizeof(*res));
	/* lookup: leading hits until the first miss */
	for (; j < end; j++) {
		uint64_t id = t->ids[t->blk[j]];

		bench_block_path(mnt, id, "", path, sizeof(path));
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (errno == ENOENT)
				break;
			rc = -errno;
			bench_err("open %s: %s", path, strerror(errno));
			return rc;
		}
		rc = bench_block_check(fd, path, rbuf, ebuf, bsize, id);
		close(fd);
		if (rc)
			return rc;
		res->hits++;
	}
	/* save: every missing block from the first miss on */
	for (uint64_t k = j; k < end; k++) {
		uint64_t id = t->ids[t->blk[k]];
		struct stat sb;

		/* the first miss is known missing; later ones are checked */
		if (k > j) {
			bench_block_path(mnt, id, "", path, sizeof(path));
			if (stat(path, &sb) == 0) {
				res->skipped++;
				continue;
			}
			if (errno != ENOENT) {
				rc = -errno;
				bench_err("stat %s: %s", path, strerror(errno));
				return rc;
			}
		}
		bench_block_fill(wbuf, bsize, id);
		rc = bench_block_write(mnt, id, wbuf, bsize);
		if (rc == -ENOSPC) {
			res->enospc++;
			continue;
		}
		if (rc) {
			bench_block_path(mnt, id, "", path, sizeof(path));
			bench_err("saving %s: %s", path, strerror(-rc));
			return rc;
		}
		res->writes++;
	}
	return 0;
}

int bench_block_dirs(const char *mnt)
{
	char path[PATH_MAX];

	bench_path(path, sizeof(path), "%s/blocks", mnt);
	if (mkdir(path, 0755) && errno != EEXIST)
		goto fail;
	for (int i = 0; i < 256; i++) {
		bench_path(path, sizeof(path), "%s/blocks/%02x", mnt, i);
		if (mkdir(path, 0755) && errno != EEXIST)
			goto fail;
	}
	return 0;
fail:
	bench_err("mkdir %s: %s", path, strerror(errno));
	return -errno;
}

static int replay_daemon(const struct trace *t, const char *policy, uint64_t dram, uint64_t nvme,
			 uint64_t page, uint64_t bsize, struct replay_result *res)
{
	const char *extra[8];
	char pagebuf[32], nvdir[64] = "", nvarg[PATH_MAX];
	struct bench_req_result rr;
	int64_t hd0 = 0, hn0 = 0;
	uint8_t *rbuf = NULL, *wbuf = NULL, *ebuf = NULL;
	struct bench_mount m;
	int64_t ev0 = 0, ev1 = 0, h0 = 0, h1 = 0, er0 = 0, er1 = 0;
	double t0;
	json_t *st;
	int rc;

	memset(res, 0, sizeof(*res));
	memset(&m, 0, sizeof(m));
	snprintf(pagebuf, sizeof(pagebuf), "%llu", (unsigned long long)page);
	extra[0] = "--page-size";
	extra[1] = pagebuf;
	extra[2] = "--policy";
	extra[3] = policy;
	extra[4] = NULL;
	if (nvme) {
		/* O_DIRECT needs a disk filesystem: /var/tmp, not tmpfs */
		snprintf(nvdir, sizeof(nvdir), "/var/tmp/kvfs-bench-nvme-XXXXXX");
		if (!mkdtemp(nvdir)) {
			bench_err("mkdtemp %s: %s", nvdir, strerror(errno));
			return -errno;
		}
		bench_path(nvarg, sizeof(nvarg), "%s/d0:%llu", nvdir, (unsigned long long)nvme);
		extra[4] = "--nvme";
		extra[5] = nvarg;
		extra[6] = NULL;
	}
	rbuf = bench_buf_alloc(bsize + 1);
	wbuf = bench_buf_alloc(bsize);
	ebuf = bench_buf_alloc(bsize);
	if (!rbuf || !wbuf || !ebuf) {
		rc = -ENOMEM;
		goto out;
	}
	rc = bench_mount_start(&m, policy, dram, extra);
	if (rc)
		goto out;
	rc = bench_block_dirs(m.mnt);
	if (rc)
		goto out;
	st = bench_mount_json(&m, "stats");
	if (!st) {
		rc = -EIO;
		goto out;
	}
	ev0 = bench_json_int(st, "evictions");
	h0 = bench_json_int(st, "hits");
	hd0 = bench_json_int(st, "hits_dram");
	hn0 = bench_json_int(st, "hits_nvme");
	er0 = bench_json_int(st, "evict_races");
	json_decref(st);

	t0 = bench_now();
	for (uint32_t r = 0; r < t->nreq && !rc; r++) {
		if (bench_interrupted) {
			rc = -EINTR;
			break;
		}
		rc = bench_replay_request(m.mnt, t, r, bsize, rbuf, wbuf, ebuf, &rr);
		res->hits += rr.hits;
		res->writes += rr.writes;
		res->skipped += rr.skipped;
		res->enospc += rr.enospc;
	}
	res->wall = bench_now() - t0;
	if (rc)
		goto out;
	st = bench_mount_json(&m, "stats");
	if (!st) {
		rc = -EIO;
		goto out;
	}
	ev1 = bench_json_int(st, "evictions");
	h1 = bench_json_int(st, "hits");
	res->hits_dram = (uint64_t)(bench_json_int(st, "hits_dram") - hd0);
	res->hits_nvme = (uint64_t)(bench_json_int(st, "hits_nvme") - hn0);
	er1 = bench_json_int(st, "evict_races");
	json_decref(st);
	res->evictions = (uint64_t)(ev1 - ev0);
	res->daemon_hits = (uint64_t)(h1 - h0);
	res->evict_races = (uint64_t)(er1 - er0);
	rc = bench_mount_stop(&m);
out:
	bench_mount_stop(&m);
	if (nvdir[0])
		bench_rmtree(nvdir);
	bench_buf_free(rbuf, bsize + 1);
	bench_buf_free(wbuf, bsize);
	bench_buf_free(ebuf, bsize);
	return rc;
}

/* --- the command -------------------------------------------------------------------------- */

struct rp_row {
	double fraction;
	uint64_t cap_blocks;
	char policy[16];
	double kvfs, lru, unlimited;
	uint64_t evictions, lru_evictions, enospc, blocks;
	double wall;
};

static void rp_print(const struct rp_row *rows, int n, uint64_t page)
{
	char sz[32];

	printf("\n%-8s %-22s %-7s %9s %9s %10s %9s %10s %10s %7s %8s %8s\n", "fraction", "capacity",
	       "policy", "kvfs hit", "LRU-sim", "unlimited", "kvfs/LRU", "evictions", "LRU evict",
	       "enospc", "wall s", "blocks/s");
	for (int i = 0; i < n; i++) {
		const struct rp_row *r = &rows[i];
		char cap[48];

		snprintf(cap, sizeof(cap), "%llu blk (%s)", (unsigned long long)r->cap_blocks,
			 bench_fmt_size(r->cap_blocks * page, sz, sizeof(sz)));
		printf("%-8.2f %-22s %-7s %9.4f %9.4f %10.4f %9.3f %10llu %10llu %7llu %8.1f "
		       "%8.0f\n",
		       r->fraction, cap, r->policy, r->kvfs, r->lru, r->unlimited,
		       r->lru > 0 ? r->kvfs / r->lru : 0, (unsigned long long)r->evictions,
		       (unsigned long long)r->lru_evictions, (unsigned long long)r->enospc, r->wall,
		       r->wall > 0 ? (double)r->blocks / r->wall : 0);
	}
}

int bench_replay(int argc, char **argv, json_t *out)
{
	static const struct option longopts[] = {
		{"trace", required_argument, NULL, 't'},
		{"block-size", required_argument, NULL, 'b'},
		{"fractions", required_argument, NULL, 'f'},
		{"policies", required_argument, NULL, 'p'},
		{"limit", required_argument, NULL, 'l'},
		{"nvme-fraction", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *trace_path = DEFAULT_TRACE;
	char policies_buf[128] = "mq,lru", *policies[MAX_POLICIES], *save = NULL, *tok, sz[32];
	double fractions[MAX_FRACTIONS] = {0.1, 0.25, 0.5};
	uint64_t bsize = 16 * 1024, page, pages_per_block, footprint, uhits, uev;
	int nfrac = 3, npol = 0, nrows = 0, opt, rc = 0;
	long limit = 0;
	struct rp_row *rows = NULL;
	struct trace t;
	json_t *section, *jrows, *targets;
	double unlimited, t0;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 't':
			trace_path = optarg;
			break;
		case 'b':
			if (bench_parse_size(optarg, &bsize) || bsize < 16 || bsize > (16u << 20)) {
				bench_err("invalid --block-size '%s' (16 bytes to 16M, e.g. 16K)",
					  optarg);
				return -EINVAL;
			}
			break;
		case 'f':
			nfrac = bench_parse_doubles(optarg, fractions, MAX_FRACTIONS);
			for (int i = 0; nfrac > 0 && i < nfrac; i++)
				if (!(fractions[i] > 0 && fractions[i] <= 1))
					nfrac = -EINVAL;
			if (nfrac < 0) {
				bench_err("invalid --fractions '%s' (e.g. 0.1,0.25,0.5; each in "
					  "(0,1])",
					  optarg);
				return -EINVAL;
			}
			break;
		case 'p':
			if (snprintf(policies_buf, sizeof(policies_buf), "%s", optarg) >=
			    (int)sizeof(policies_buf)) {
				bench_err("--policies too long");
				return -EINVAL;
			}
			break;
		case 'l': {
			char *end;

			limit = strtol(optarg, &end, 10);
			if (!*optarg || *end || limit < 1 || limit > UINT32_MAX) {
				bench_err("invalid --limit '%s' (a number of requests)", optarg);
				return -EINVAL;
			}
			break;
		}
		case 'n': {
			char *end;

			nvme_fraction = strtod(optarg, &end);
			if (!*optarg || *end || !(nvme_fraction > 0 && nvme_fraction <= 4)) {
				bench_err("invalid --nvme-fraction '%s' (e.g. 0.5)", optarg);
				return -EINVAL;
			}
			break;
		}
		case 'h':
			printf("usage: kvfs-bench replay [--trace FILE] [--block-size 16K] "
			       "[--fractions 0.1,0.25,0.5] [--policies mq,lru] [--limit N] "
			       "[--nvme-fraction F]\n");
			return 0;
		default:
			bench_err("replay: unknown or incomplete option '%s'", argv[optind - 1]);
			return -EINVAL;
		}
	}
	for (tok = strtok_r(policies_buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (strcmp(tok, "mq") && strcmp(tok, "lru")) {
			bench_err("unknown policy '%s' in --policies (the daemon has mq and lru)",
				  tok);
			return -EINVAL;
		}
		if (npol == MAX_POLICIES) {
			bench_err("at most %d policies", MAX_POLICIES);
			return -EINVAL;
		}
		policies[npol++] = tok;
	}
	if (!npol) {
		bench_err("--policies names no policy");
		return -EINVAL;
	}
	/* The daemon page: the block size as a power of two, 4K..16M. */
	for (page = 4096; page < bsize && page < (16u << 20); page *= 2)
		;
	pages_per_block = (bsize + page - 1) / page;

	bench_note("replay: loading %s", trace_path);
	rc = bench_trace_load(trace_path, (uint32_t)limit, &t);
	if (rc)
		return rc;
	footprint = (uint64_t)t.nuniq * pages_per_block * page;
	rc = sim_lru(&t, UINT64_MAX, &uhits, &uev);
	if (rc)
		goto out;
	unlimited = (double)uhits / (double)t.nblocks;
	printf("\n== replay: %s, %u requests, %llu blocks, %u unique ==\n", trace_path, t.nreq,
	       (unsigned long long)t.nblocks, t.nuniq);
	if (t.nreq < t.file_requests)
		printf("the first %u of the trace's %llu requests (--limit; without it the whole "
		       "trace is replayed)\n",
		       t.nreq, (unsigned long long)t.file_requests);
	{
		char pz[32], fz[32];

		printf("block %s, daemon --page-size %s, footprint %s; prefix semantics: a "
		       "request's hits end at its first miss\n",
		       bench_fmt_size(bsize, sz, sizeof(sz)), bench_fmt_size(page, pz, sizeof(pz)),
		       bench_fmt_size(footprint, fz, sizeof(fz)));
	}

	section = json_object();
	jrows = json_array();
	targets = json_array();
	json_object_set_new(section, "trace", json_string(trace_path));
	json_object_set_new(section, "requests", json_integer(t.nreq));
	json_object_set_new(section, "trace_requests", json_integer((json_int_t)t.file_requests));
	json_object_set_new(section, "blocks", json_integer((json_int_t)t.nblocks));
	json_object_set_new(section, "unique_blocks", json_integer(t.nuniq));
	json_object_set_new(section, "block_size", json_integer((json_int_t)bsize));
	json_object_set_new(section, "page_size", json_integer((json_int_t)page));
	json_object_set_new(section, "footprint_bytes", json_integer((json_int_t)footprint));
	json_object_set_new(section, "unlimited_hit_ratio", json_real(unlimited));
	json_object_set_new(section, "rows", jrows);
	json_object_set_new(section, "targets", targets);
	json_object_set_new(out, "replay", section);

	rows = calloc((size_t)nfrac * (size_t)npol, sizeof(*rows));
	if (!rows) {
		rc = -ENOMEM;
		goto out;
	}
	t0 = bench_now();
	for (int f = 0; f < nfrac && !rc; f++) {
		uint64_t cap_pages = (uint64_t)(fractions[f] * (double)footprint) / page;
		uint64_t cap_blocks = cap_pages / pages_per_block, lhits, lev;
		/* with NVMe the simulated LRU gets both tiers' room */
		uint64_t nv_blocks = (uint64_t)(nvme_fraction * (double)footprint) / page /
				     pages_per_block;
		double lru;

		if (cap_blocks == 0) {
			bench_err("fraction %.3f of the footprint holds no block", fractions[f]);
			rc = -EINVAL;
			break;
		}
		rc = sim_lru(&t, cap_blocks + nv_blocks, &lhits, &lev);
		if (rc)
			break;
		lru = (double)lhits / (double)t.nblocks;
		for (int p = 0; p < npol && !rc; p++) {
			struct rp_row *r = &rows[nrows];
			struct replay_result res;
			json_t *o;

			bench_note("replay: fraction %.2f (%llu blocks), policy %s", fractions[f],
				   (unsigned long long)cap_blocks, policies[p]);
			rc = replay_daemon(&t, policies[p], cap_blocks * pages_per_block * page,
					   nv_blocks * pages_per_block * page, page, bsize, &res);
			if (rc)
				break;
			nrows++;
			*r = (struct rp_row){.fraction = fractions[f],
					     .cap_blocks = cap_blocks,
					     .kvfs = (double)res.hits / (double)t.nblocks,
					     .lru = lru,
					     .unlimited = unlimited,
					     .evictions = res.evictions,
					     .lru_evictions = lev,
					     .enospc = res.enospc,
					     .blocks = t.nblocks,
					     .wall = res.wall};
			snprintf(r->policy, sizeof(r->policy), "%s", policies[p]);
			bench_note("  hit ratio %.4f (LRU-sim %.4f), %.1f s", r->kvfs, lru,
				   res.wall);
			if (nv_blocks)
				printf("fraction %.2f + NVMe %.2f, %s: %llu hits served from DRAM, %llu "
				       "from NVMe\n",
				       fractions[f], nvme_fraction, policies[p],
				       (unsigned long long)res.hits_dram,
				       (unsigned long long)res.hits_nvme);
			if (res.daemon_hits != res.hits)
				bench_note("  note: the daemon counted %llu hits, the replay %llu",
					   (unsigned long long)res.daemon_hits,
					   (unsigned long long)res.hits);
			o = json_object();
			json_object_set_new(o, "fraction", json_real(fractions[f]));
			json_object_set_new(o, "capacity_blocks",
					    json_integer((json_int_t)cap_blocks));
			json_object_set_new(
				o, "dram_bytes",
				json_integer((json_int_t)(cap_blocks * pages_per_block * page)));
			json_object_set_new(o, "policy", json_string(policies[p]));
			json_object_set_new(o, "nvme_blocks", json_integer((json_int_t)nv_blocks));
			json_object_set_new(o, "hits_dram", json_integer((json_int_t)res.hits_dram));
			json_object_set_new(o, "hits_nvme", json_integer((json_int_t)res.hits_nvme));
			json_object_set_new(o, "kvfs_hit_ratio", json_real(r->kvfs));
			json_object_set_new(o, "lru_sim_hit_ratio", json_real(lru));
			json_object_set_new(o, "unlimited_hit_ratio", json_real(unlimited));
			json_object_set_new(o, "kvfs_over_lru",
					    json_real(lru > 0 ? r->kvfs / lru : 0));
			json_object_set_new(o, "evictions",
					    json_integer((json_int_t)res.evictions));
			json_object_set_new(o, "lru_sim_evictions", json_integer((json_int_t)lev));
			json_object_set_new(o, "blocks_written",
					    json_integer((json_int_t)res.writes));
			json_object_set_new(o, "blocks_present_skipped",
					    json_integer((json_int_t)res.skipped));
			json_object_set_new(o, "evict_races",
					    json_integer((json_int_t)res.evict_races));
			/*
			 * Conversation prefixes grow at their end, so a block after
			 * the first miss is almost never present; seen with policy
			 * lru while the simulation had it evicted, it means stat()
			 * saw a kernel-cached name of an evicted file.
			 */
			if (res.skipped)
				bench_note("  note: stat() found %llu block(s) after a request's "
					   "first "
					   "miss present (not saved)",
					   (unsigned long long)res.skipped);
			json_object_set_new(o, "enospc", json_integer((json_int_t)res.enospc));
			json_object_set_new(o, "wall_s", json_real(res.wall));
			json_array_append_new(jrows, o);
		}
	}
	if (nrows)
		rp_print(rows, nrows, pages_per_block * page);
	/* blocks/s: trace blocks (looked up or saved) per second of replay */
	if (!rc) {
		const char *def = "mq";

		printf("blocks/s = trace blocks processed per second of replay; replays took %.1f "
		       "s "
		       "in all\n",
		       bench_now() - t0);
		for (int f = 0; f < nfrac; f++) {
			const struct rp_row *dm = NULL, *dl = NULL;
			json_t *o;

			if (fractions[f] < 0.2499 || fractions[f] > 0.2501)
				continue;
			for (int i = 0; i < nrows; i++) {
				if (rows[i].fraction != fractions[f])
					continue;
				if (!strcmp(rows[i].policy, def))
					dm = &rows[i];
				else if (!strcmp(rows[i].policy, "lru"))
					dl = &rows[i];
			}
			if (!dm)
				continue;
			printf("target: at 25%% capacity the default policy (%s) hit ratio is no "
			       "worse than LRU's: %.4f vs LRU-sim %.4f %s",
			       def, dm->kvfs, dm->lru, dm->kvfs >= dm->lru ? "PASS" : "BELOW");
			if (dl)
				printf(", vs daemon lru %.4f %s", dl->kvfs,
				       dm->kvfs >= dl->kvfs ? "PASS" : "BELOW");
			printf(" (informational)\n");
			o = json_object();
			json_object_set_new(o, "fraction", json_real(fractions[f]));
			json_object_set_new(o, "policy", json_string(def));
			json_object_set_new(o, "hit_ratio", json_real(dm->kvfs));
			json_object_set_new(o, "lru_sim", json_real(dm->lru));
			json_object_set_new(o, "vs_lru_sim",
					    json_string(dm->kvfs >= dm->lru ? "PASS" : "BELOW"));
			if (dl) {
				json_object_set_new(o, "daemon_lru", json_real(dl->kvfs));
				json_object_set_new(
					o, "vs_daemon_lru",
					json_string(dm->kvfs >= dl->kvfs ? "PASS" : "BELOW"));
			}
			json_array_append_new(targets, o);
		}
	}
out:
	free(rows);
	bench_trace_free(&t);
	return rc;
}
