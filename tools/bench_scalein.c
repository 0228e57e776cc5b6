/*
 * tools/bench_scalein.c — `kvfs-bench scalein`: the Mooncake conversation
 * trace replayed on a cluster of --nodes kvfs daemons (a redis-server of our
 * own, libfabric tcp on 127.0.0.1) while one node leaves halfway, drained
 * (`kvfsctl drain`: what only it holds goes to the others first) against
 * killed (SIGKILL: what only it held is lost), same trace, same run.
 *
 * Each node has DRAM and lends DRAM, each --fraction of the footprint of the
 * requests replayed, so what a node evicts is spilled into its peers' lent
 * memory. Request i goes to node i mod (nodes still in); each request is
 * replayed as `kvfs-bench replay` does (prefix semantics; a block another
 * node holds is fetched through the remote tier, which counts as a hit).
 * The figure is the hit ratio (leading hits / blocks) over the second half,
 * after the node left; the first half is the same in both runs.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/bench.h"

#define DEFAULT_TRACE BENCH_DEFAULT_TRACE
#define MAX_NODES     8

static double ratio(uint64_t a, uint64_t b)
{
	return b ? (double)a / (double)b : 0;
}

struct si_result {
	uint64_t blocks[2], hits[2]; /* first half, second half */
	int64_t lent_moved, files_moved, files_only_here;
	double drain_s, wall;
};

/* Poll every node in @m[0, n) until remote.peers_alive == @want. */
static int wait_peers(struct bench_mount *m, unsigned n, int64_t want)
{
	double deadline = bench_now() + 30;

	for (unsigned k = 0; k < n; k++) {
		for (;;) {
			json_t *st = bench_mount_json(&m[k], "stats");
			int64_t alive = st ? bench_json_int(st, "remote.peers_alive") : -1;

			json_decref(st);
			if (alive == want)
				break;
			if (bench_now() > deadline) {
				bench_err("scalein: %s sees %lld live peers, not %lld", m[k].label,
					  (long long)alive, (long long)want);
				return -ETIMEDOUT;
			}
			usleep(50000);
		}
	}
	return 0;
}

/* The last node leaves: drained through .kvfs/drain, or killed. */
static int leave(struct bench_mount *m, bool drain, struct si_result *res)
{
	char path[PATH_MAX];
	double t0 = bench_now();
	json_t *st = NULL;
	FILE *f;

	if (!drain) {
		kill(m->pid, SIGKILL);
		return 0;
	}
	bench_path(path, sizeof(path), "%s/.kvfs/drain", m->mnt);
	f = fopen(path, "w");
	if (!f || fputs("drain\n", f) < 0 || fclose(f)) {
		bench_err("scalein: %s: %s", path, strerror(errno));
		return -EIO;
	}
	for (;;) {
		json_decref(st);
		st = bench_mount_json(m, "stats");
		if (!st)
			return -EIO;
		{
			const char *state = json_string_value(
				json_object_get(json_object_get(st, "drain"), "state"));

			if (state && !strcmp(state, "drained"))
				break;
		}
		if (bench_now() - t0 > 300) {
			json_decref(st);
			bench_err("scalein: the drain did not finish");
			return -ETIMEDOUT;
		}
		usleep(20000);
	}
	res->drain_s = bench_now() - t0;
	res->lent_moved = bench_json_int(st, "drain.lent_moved");
	res->files_moved = bench_json_int(st, "drain.files_moved");
	res->files_only_here = bench_json_int(st, "drain.files_only_here");
	json_decref(st);
	return 0;
}

static int run(const struct trace *t, unsigned nodes, bool drain, uint64_t dram, uint64_t lend,
	       uint64_t page, uint64_t bsize, const char *url, const char *token,
	       struct si_result *res)
{
	struct bench_mount m[MAX_NODES];
	char pagebuf[32], lendbuf[32], ids[MAX_NODES][16], cname[32];
	uint8_t *rbuf = bench_buf_alloc(bsize + 1), *wbuf = bench_buf_alloc(bsize),
		*ebuf = bench_buf_alloc(bsize);
	uint32_t half = t->nreq / 2;
	unsigned live = nodes;
	double t0;
	int rc = 0;

	memset(m, 0, sizeof(m));
	memset(res, 0, sizeof(*res));
	if (!rbuf || !wbuf || !ebuf) {
		rc = -ENOMEM;
		goto out;
	}
	snprintf(pagebuf, sizeof(pagebuf), "%llu", (unsigned long long)page);
	snprintf(lendbuf, sizeof(lendbuf), "%llu", (unsigned long long)lend);
	snprintf(cname, sizeof(cname), "scalein-%s", drain ? "drained" : "killed");
	for (unsigned k = 0; k < nodes && !rc; k++) {
		const char *extra[] = {"--page-size",
				       pagebuf,
				       "--cluster",
				       url,
				       "--cluster-name",
				       cname,
				       "--cluster-token",
				       token,
				       "--node-id",
				       ids[k],
				       "--listen",
				       "127.0.0.1:0",
				       "--lend",
				       lendbuf,
				       NULL};

		snprintf(ids[k], sizeof(ids[k]), "n%u", k);
		rc = bench_mount_start(&m[k], ids[k], dram, extra);
		if (!rc)
			rc = bench_block_dirs(m[k].mnt);
	}
	if (!rc)
		rc = wait_peers(m, nodes, nodes - 1);
	t0 = bench_now();
	for (uint32_t r = 0; r < t->nreq && !rc; r++) {
		struct bench_req_result rr;
		int h = r >= half;

		if (bench_interrupted) {
			rc = -EINTR;
			break;
		}
		if (r == half) {
			bench_note("scalein (%s): node %s leaves after %u requests",
				   drain ? "drained" : "killed", m[nodes - 1].label, half);
			rc = leave(&m[nodes - 1], drain, res);
			if (!rc)
				rc = bench_mount_stop(&m[nodes - 1]);
			live = nodes - 1;
			/* the others see it gone: at once when drained, once its
			 * heartbeat expires when killed */
			if (!rc)
				rc = wait_peers(m, live, live - 1);
			if (rc)
				break;
		}
		rc = bench_replay_request(m[r % live].mnt, t, r, bsize, rbuf, wbuf, ebuf, &rr);
		res->hits[h] += rr.hits;
		res->blocks[h] += t->off[r + 1] - t->off[r];
	}
	res->wall = bench_now() - t0;
out:
	for (unsigned k = 0; k < nodes; k++)
		bench_mount_stop(&m[k]);
	bench_buf_free(rbuf, bsize + 1);
	bench_buf_free(wbuf, bsize);
	bench_buf_free(ebuf, bsize);
	return rc;
}

int bench_scalein(int argc, char **argv, json_t *out)
{
	static const struct option longopts[] = {
		{"trace", required_argument, NULL, 't'},    {"nodes", required_argument, NULL, 'n'},
		{"fraction", required_argument, NULL, 'f'}, {"limit", required_argument, NULL, 'l'},
		{"help", no_argument, NULL, 'h'},	    {NULL, 0, NULL, 0},
	};
	const char *trace_path = DEFAULT_TRACE;
	uint64_t bsize = 16 * 1024, page = 16 * 1024, footprint, dram;
	unsigned nodes = 4;
	double fraction = 0.1;
	long limit = 2000;
	char tmpl[] = "/tmp/kvfs-bench-tok-XXXXXX", token[PATH_MAX], url[64], sz[32];
	struct bench_redis rs = {0};
	struct si_result res[2];
	struct trace t = {0};
	bool tokdir = false;
	json_t *section;
	FILE *f;
	int opt, rc;

	optind = 1;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		char *end = NULL;

		switch (opt) {
		case 't':
			trace_path = optarg;
			break;
		case 'n':
			nodes = (unsigned)strtoul(optarg, &end, 10);
			if (*end || nodes < 2 || nodes > MAX_NODES) {
				bench_err("invalid --nodes '%s' (2..%d)", optarg, MAX_NODES);
				return -EINVAL;
			}
			break;
		case 'f':
			fraction = strtod(optarg, &end);
			if (*end || !(fraction > 0 && fraction <= 1)) {
				bench_err("invalid --fraction '%s' (0..1]", optarg);
				return -EINVAL;
			}
			break;
		case 'l':
			limit = strtol(optarg, &end, 10);
			if (*end || limit < 2 || limit > UINT32_MAX) {
				bench_err("invalid --limit '%s' (a number of requests)", optarg);
				return -EINVAL;
			}
			break;
		case 'h':
			printf("usage: kvfs-bench scalein [--trace FILE] [--nodes 4] [--fraction "
			       "0.1] "
			       "[--limit 2000]\n");
			return 0;
		default:
			bench_err("scalein: unknown or incomplete option '%s'", argv[optind - 1]);
			return -EINVAL;
		}
	}
	rc = bench_trace_load(trace_path, (uint32_t)limit, &t);
	if (rc)
		return rc;
	footprint = (uint64_t)t.nuniq * page;
	dram = (uint64_t)(fraction * (double)footprint);
	dram = (dram + page - 1) / page * page;
	if (dram < 16 * BENCH_MIB)
		dram = 16 * BENCH_MIB; /* the daemon's floor */
	rc = bench_redis_start(&rs);
	if (rc)
		goto out;
	if (!mkdtemp(tmpl)) {
		rc = -errno;
		goto out;
	}
	tokdir = true;
	bench_path(token, sizeof(token), "%s/token", tmpl);
	f = fopen(token, "w");
	if (!f || fputs("kvfs-bench-cluster-secret-0123456789\n", f) < 0 || fclose(f)) {
		bench_err("scalein: cannot write a token file");
		rc = -EIO;
		goto out;
	}
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
	printf("\n== scalein: %u requests of %s on %u nodes (DRAM and lent DRAM %s each, %.0f%% "
	       "of the footprint); node n%u leaves after half ==\n",
	       t.nreq, trace_path, nodes, bench_fmt_size(dram, sz, sizeof(sz)), 100 * fraction,
	       nodes - 1);
	for (int d = 1; d >= 0 && !rc; d--) {
		bench_note("scalein: %s run", d ? "drained" : "killed");
		rc = run(&t, nodes, d, dram, dram, page, bsize, url, token, &res[d]);
	}
	if (rc)
		goto out;
	printf("%-8s %12s %12s %10s %12s %12s\n", "leaving", "hit 1st half", "hit 2nd half",
	       "wall s", "handed over", "drain s");
	for (int d = 1; d >= 0; d--) {
		const struct si_result *r = &res[d];
		char handed[48] = "-";

		if (d)
			snprintf(handed, sizeof(handed), "%lld+%lld/%lld", (long long)r->lent_moved,
				 (long long)r->files_moved, (long long)r->files_only_here);
		printf("%-8s %12.4f %12.4f %10.1f %12s %12.2f\n", d ? "drained" : "killed",
		       ratio(r->hits[0], r->blocks[0]), ratio(r->hits[1], r->blocks[1]), r->wall,
		       handed, r->drain_s);
	}
	printf("hit = leading blocks found (locally or fetched from a peer) / blocks; handed over "
	       "= lent copies + files only the leaving node held / of those files, moved to the "
	       "others (up to their lent memory)\n");
	section = json_object();
	for (int d = 1; d >= 0; d--)
		json_object_set_new(
			section, d ? "drained" : "killed",
			json_pack("{s:f,s:f,s:I,s:I,s:f}", "hit_first_half",
				  ratio(res[d].hits[0], res[d].blocks[0]), "hit_second_half",
				  ratio(res[d].hits[1], res[d].blocks[1]), "lent_moved",
				  (json_int_t)res[d].lent_moved, "files_moved",
				  (json_int_t)res[d].files_moved, "drain_seconds", res[d].drain_s));
	json_object_set_new(out, "scalein", section);
out:
	bench_redis_stop(&rs);
	if (tokdir)
		bench_rmtree(tmpl);
	bench_trace_free(&t);
	return rc;
}
