/*
 * tests/unit/rdma_bench.c — loopback measurements of the remote tier, each
 * against its peers in the same run (STYLE §12). Not a suite: a second main
 * built by the rdma section of the Makefile; nothing is asserted.
 *
 *   build/tests/rdma_bench [ITERATIONS]
 *   build/tests/rdma_bench index     (4. alone)
 *
 * 1. Remote read of a 2 MiB and a 32 MiB file: rdma_peerd (another process)
 *    serves it over libfabric (the provider auto picks; tcp here) and this
 *    process fetches it with remote_fetch-style one-sided reads, checksum
 *    included, into its registered arena and into plain malloc'd memory.
 * 2. The same bytes over a raw TCP socket on 127.0.0.1 (a forked server
 *    writes them on request; no checksum).
 * 3. The same bytes as a redis-server GET over TCP 127.0.0.1 (what
 *    LMCache's remote backend does).
 * 4. The index lookup for a chain of 512 paths (remote_locate: one
 *    pipelined round trip to Redis), on one redis-server and on a Redis
 *    Cluster of 3 masters + 3 replicas on the same machine (a pipeline per
 *    master); and the fixed cost of a fetch (the lease round trip,
 *    measured on an empty file).
 * Every connection is warmed up before it is measured; figures are medians.
 */
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "core/log.h"
#include "core/util.h"
#include "rdma/rdma_i.h"
#include "tests/unit/rdma_testlib.h"

#define MiB (1024ull * 1024)

static uint64_t now_ns(void)
{
	return kvfs_mono_ns();
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static double median_gbs(uint64_t *ns, int n, uint64_t bytes)
{
	qsort(ns, (size_t)n, sizeof(*ns), cmp_u64);
	return (double)bytes / (double)ns[n / 2];
}

/* --- 1. remote reads ------------------------------------------------------ */

struct peer {
	pid_t pid;
	int in_fd;
	uint8_t addr[RDMA_ADDR_MAX];
	uint32_t len;
};

static int spawn(struct peer *p, const char *exe)
{
	int in[2], out[2];
	char line[256];
	FILE *f;

	if (pipe(in) || pipe(out))
		return -1;
	p->pid = fork();
	if (p->pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl(exe, exe, "--node-id", "server", "--file", "b2:2M:7", "--file", "b32:32M:8",
		      "--file", "e:0:9", (char *)NULL);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	p->in_fd = in[1];
	f = fdopen(out[0], "r");
	if (!f || !fgets(line, sizeof(line), f) || strncmp(line, "READY ", 6))
		return -1;
	fclose(f);
	p->len = 0;
	for (char *h = line + 6; h[0] && h[1] && h[0] != '\n'; h += 2) {
		unsigned v;

		sscanf(h, "%2x", &v);
		p->addr[p->len++] = (uint8_t)v;
	}
	return 0;
}

struct dst {
	uint8_t *buf;
};

static int prepare(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max)
{
	struct dst *d = ctx;

	(void)checksum;
	(void)max;
	iov[0] = (struct iovec){d->buf, size};
	return 1;
}

static double bench_fetch(remote *r, struct rdma_peer *p, const char *path, uint8_t *buf,
			  uint64_t size, int iters)
{
	struct dst d = {buf};
	struct remote_sink sink = {prepare, &d};
	uint64_t *ns = calloc((size_t)iters, sizeof(*ns));
	double gbs;

	for (int i = 0; i < 3; i++) /* warm-up */
		if (rdma_fetch_from(r, p, path, &sink, NULL, NULL) != 0)
			return -1;
	for (int i = 0; i < iters; i++) {
		uint64_t t0 = now_ns();

		if (rdma_fetch_from(r, p, path, &sink, NULL, NULL) != 0)
			return -1;
		ns[i] = now_ns() - t0;
	}
	gbs = median_gbs(ns, iters, size);
	free(ns);
	return gbs;
}

/* --- 2. raw TCP ----------------------------------------------------------- */

static int tcp_server(int lfd, uint64_t max)
{
	uint8_t *src = malloc(max);
	int fd = accept(lfd, NULL, NULL), one = 1;
	uint64_t want;

	tl_fill(src, max, 3);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	while (read(fd, &want, sizeof(want)) == (ssize_t)sizeof(want)) {
		uint64_t done = 0;

		while (done < want) {
			ssize_t n = write(fd, src + done, want - done);

			if (n <= 0)
				_exit(1);
			done += (uint64_t)n;
		}
	}
	_exit(0);
}

static double bench_tcp(int fd, uint8_t *buf, uint64_t size, int iters)
{
	uint64_t *ns = calloc((size_t)iters, sizeof(*ns));
	double gbs;

	for (int i = -3; i < iters; i++) {
		uint64_t t0 = now_ns(), done = 0;

		if (write(fd, &size, sizeof(size)) != (ssize_t)sizeof(size))
			return -1;
		while (done < size) {
			ssize_t n = read(fd, buf + done, size - done);

			if (n <= 0)
				return -1;
			done += (uint64_t)n;
		}
		if (i >= 0)
			ns[i] = now_ns() - t0;
	}
	gbs = median_gbs(ns, iters, size);
	free(ns);
	return gbs;
}

/* --- 3. redis GET --------------------------------------------------------- */

static double bench_redis(redisContext *c, const char *key, uint64_t size, int iters)
{
	uint64_t *ns = calloc((size_t)iters, sizeof(*ns));
	double gbs;

	for (int i = -3; i < iters; i++) {
		uint64_t t0 = now_ns();
		redisReply *r = redisCommand(c, "GET %s", key);

		if (!r || r->type != REDIS_REPLY_STRING || (uint64_t)r->len != size)
			return -1;
		freeReplyObject(r);
		if (i >= 0)
			ns[i] = now_ns() - t0;
	}
	gbs = median_gbs(ns, iters, size);
	free(ns);
	return gbs;
}

/* --- 4. the index lookup ------------------------------------------------- */

/* remote_locate of a 512-path chain that another node published, 200 times
 * after 5 warm-ups: median and p90. */
static void bench_locate(const char *url, const char *label)
{
	remote *a = tl_open("idxA", NULL, 0, url, "bench", NULL, 2000, 0);
	remote *b = tl_open("idxB", NULL, 0, url, "bench", NULL, 2000, 0);
	const char *chain[512];
	static char names[512][128];
	struct remote_loc loc[512];
	uint64_t ns[200];
	int found = 0;

	if (!a || !b) {
		printf("index lookup, 512-path chain (%s): could not open the index\n", label);
		goto out;
	}
	for (int i = 0; i < 512; i++) {
		snprintf(names[i], sizeof(names[i]), "llama-3.1-8b/bs256/tp1/ab/cd/%064x.bin",
			 i * 2654435761u);
		chain[i] = names[i];
		remote_publish(b, chain[i], REMOTE_TIER_DRAM);
	}
	remote_flush(b, 5000);
	for (int i = 0; i < 300 && !tl_peer_alive(a, "idxB"); i++)
		tl_sleep_ms(10);
	for (int i = -5; i < 200; i++) {
		uint64_t t0 = now_ns();

		remote_locate(a, chain, 512, loc);
		if (i >= 0)
			ns[i] = now_ns() - t0;
	}
	for (int i = 0; i < 512; i++)
		found += loc[i].holders == 1;
	qsort(ns, 200, sizeof(ns[0]), cmp_u64);
	printf("index lookup, 512-path chain (remote_locate, %s): median %.0f us, "
	       "p90 %.0f us (%d/512 found)\n",
	       label, ns[100] / 1e3, ns[180] / 1e3, found);
out:
	if (a)
		remote_close(a);
	if (b)
		remote_close(b);
}

/* The same on a Redis Cluster of 3 masters (and 3 replicas), same machine. */
static void bench_locate_cluster(void)
{
	struct tl_rcluster cl;

	if (!tl_have_rcluster() || tl_rcluster_start(&cl)) {
		printf("index lookup on a Redis Cluster: could not start one (redis-cli?)\n");
		return;
	}
	bench_locate(cl.url, "Redis Cluster, 3 masters");
	tl_rcluster_stop(&cl);
}

int main(int argc, char **argv)
{
	int iters = argc > 1 ? atoi(argv[1]) : 20;
	char exe[PATH_MAX + 16];
	ssize_t n = readlink("/proc/self/exe", exe, PATH_MAX - 1);
	struct tl_daemon d;
	struct peer pp;
	remote *r;
	struct rdma_peer *p;
	uint8_t *plain = malloc(32 * MiB);
	double fa[2], fm[2], tcp[2], red[2], lease_us;
	const uint64_t sizes[2] = {2 * MiB, 32 * MiB};
	const char *paths[2] = {"b2", "b32"};
	struct remote_config cfg = {
		.node_id = "bench",
		.listen = "127.0.0.1:0",
		.token = TOKEN,
		.token_len = strlen(TOKEN),
	};
	char err[256] = "";

	signal(SIGPIPE, SIG_IGN);
	kvfs_log_open(NULL, KVFS_LOG_WARN);
	if (argc > 1 && strcmp(argv[1], "index") == 0) {
		/* The index lookup alone: one server against a Redis Cluster. */
		int rp = tl_free_port();
		pid_t rs = tl_redis_tcp(rp);
		char url[64];

		snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rp);
		bench_locate(url, "redis TCP, one server");
		bench_locate_cluster();
		kill(rs, SIGKILL);
		waitpid(rs, NULL, 0);
		return 0;
	}
	if (n < 0 || iters < 1)
		return 2;
	exe[n] = '\0';
	strcpy(strrchr(exe, '/'), "/rdma_peerd");
	if (tl_daemon_init(&d, 40 * MiB) || spawn(&pp, exe)) {
		fprintf(stderr, "rdma_bench: cannot start %s\n", exe);
		return 1;
	}
	cfg.arena = d.arena;
	cfg.arena_bytes = d.arena_bytes;
	if (remote_open(&cfg, &r, err, sizeof(err))) {
		fprintf(stderr, "rdma_bench: %s\n", err);
		return 1;
	}
	rdma_peer_add_fixed(r, "server", pp.addr, pp.len, 0, 0);
	p = rdma_peer_find(r, "server");
	for (int k = 0; k < 2; k++) {
		fa[k] = bench_fetch(r, p, paths[k], d.arena, sizes[k], iters);
		fm[k] = bench_fetch(r, p, paths[k], plain, sizes[k], iters);
	}
	/* The fixed cost of a fetch: lease and release of an empty file. */
	{
		struct dst dd = {plain};
		struct remote_sink sink = {prepare, &dd};
		uint64_t ns[64];

		for (int i = -3; i < 64; i++) {
			uint64_t t0 = now_ns();

			rdma_fetch_from(r, p, "e", &sink, NULL, NULL);
			if (i >= 0)
				ns[i] = now_ns() - t0;
		}
		qsort(ns, 64, sizeof(ns[0]), cmp_u64);
		lease_us = ns[32] / 1e3;
	}

	/* Raw TCP. */
	{
		struct sockaddr_in a = {.sin_family = AF_INET,
					.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t len = sizeof(a);
		int lfd = socket(AF_INET, SOCK_STREAM, 0), fd, one = 1;
		pid_t srv;

		bind(lfd, (struct sockaddr *)&a, sizeof(a));
		listen(lfd, 1);
		getsockname(lfd, (struct sockaddr *)&a, &len);
		srv = fork();
		if (srv == 0)
			tcp_server(lfd, 32 * MiB);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)))
			return 1;
		for (int k = 0; k < 2; k++)
			tcp[k] = bench_tcp(fd, plain, sizes[k], iters);
		close(fd);
		close(lfd);
		waitpid(srv, NULL, 0);
	}

	/* Redis GET over TCP, and the 512-path index lookup. */
	{
		char url[64];
		int rp = tl_free_port();
		pid_t rs = tl_redis_tcp(rp);
		redisContext *c = NULL;
		uint8_t *val = malloc(32 * MiB);

		for (int i = 0; i < 300 && (!c || c->err); i++) {
			if (c)
				redisFree(c);
			tl_sleep_ms(10);
			c = redisConnect("127.0.0.1", rp);
		}
		tl_fill(val, 32 * MiB, 4);
		freeReplyObject(redisCommand(c, "SET b2 %b", val, (size_t)(2 * MiB)));
		freeReplyObject(redisCommand(c, "SET b32 %b", val, (size_t)(32 * MiB)));
		for (int k = 0; k < 2; k++)
			red[k] = bench_redis(c, paths[k], sizes[k], iters);

		snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rp);
		bench_locate(url, "redis TCP, one server");
		bench_locate_cluster();
		redisFree(c);
		kill(rs, SIGKILL);
		waitpid(rs, NULL, 0);
		free(val);
	}

	printf("fixed cost of a remote fetch (lease + release of an empty file): median %.0f us\n",
	       lease_us);
	printf("provider: %s; %d iterations per figure, medians, GB/s\n", remote_provider(r),
	       iters);
	printf("%-10s %14s %14s %14s %14s\n", "size", "remote->arena", "remote->malloc", "raw TCP",
	       "redis GET");
	for (int k = 0; k < 2; k++)
		printf("%-10s %14.2f %14.2f %14.2f %14.2f\n", k ? "32 MiB" : "2 MiB", fa[k], fm[k],
		       tcp[k], red[k]);
	remote_close(r);
	close(pp.in_fd);
	waitpid(pp.pid, NULL, 0);
	tl_daemon_fini(&d);
	free(plain);
	return 0;
}
