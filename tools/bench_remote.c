/*
 * tools/bench_remote.c — `kvfs-bench remote`: reading a file another node
 * holds, against the plain ways of moving the same bytes on loopback.
 *
 * One run starts a redis-server on 127.0.0.1 and two kvfs daemons in one
 * cluster (libfabric tcp provider here; verbs or efa where there is RDMA
 * hardware). Files of each size are written on node A; then, for each size:
 *   - kvfs: node B opens and reads every file through its mount. Each is a
 *     local miss, so B's daemon asks the index, reads the bytes from A's
 *     DRAM with one-sided reads, checks their XXH3, makes them a local file,
 *     and the kernel reads that through FUSE: the whole path an engine sees;
 *   - raw TCP: the same bytes sent over a 127.0.0.1 socket by a thread of
 *     this process and received into one buffer (no checksum, no files);
 *   - Redis GET: the same blocks SET in the same redis-server and fetched
 *     with GET (hiredis), what LMCache's remote backend does.
 * Figures are MB/s over all files of a size; ratios are kvfs / peer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "tools/bench.h"

#define IO_SIZE (1u << 20)
#define MIN64(a, b) ((a) < (b) ? (a) : (b))

/* --- the peers: raw TCP and Redis GET ----------------------------------------------------------- */

struct tcp_src {
	int lfd;
	const uint8_t *buf;
	uint64_t fsize;
	unsigned n;
};

/* Serve one connection: for each 8-byte request, send fsize bytes. */
static void *tcp_server(void *arg)
{
	struct tcp_src *s = arg;
	int fd = accept(s->lfd, NULL, NULL), one = 1;
	uint64_t req;

	if (fd < 0)
		return NULL;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	while (read(fd, &req, sizeof(req)) == (ssize_t)sizeof(req)) {
		uint64_t off = 0;

		while (off < s->fsize) {
			size_t k = (size_t)MIN64(s->fsize - off, IO_SIZE);
			ssize_t w = write(fd, s->buf + (off % IO_SIZE), k);

			if (w <= 0)
				goto out;
			off += (uint64_t)w;
		}
	}
out:
	close(fd);
	return NULL;
}

/* Bytes/s of n transfers of fsize bytes over a loopback socket. */
static double tcp_bw(const uint8_t *src, uint64_t fsize, unsigned n, uint8_t *dst)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	struct tcp_src s = {.buf = src, .fsize = fsize, .n = n};
	pthread_t th;
	double t0, bw = -1;
	int fd = -1, one = 1;

	s.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s.lfd < 0 || bind(s.lfd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(s.lfd, (struct sockaddr *)&a, &alen) || listen(s.lfd, 1) ||
	    pthread_create(&th, NULL, tcp_server, &s)) {
		if (s.lfd >= 0)
			close(s.lfd);
		return -1;
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
		goto out;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	t0 = bench_now();
	for (unsigned i = 0; i < n; i++) {
		uint64_t req = i, got = 0;

		if (write(fd, &req, sizeof(req)) != (ssize_t)sizeof(req))
			goto out;
		while (got < fsize) {
			ssize_t r = read(fd, dst + got, (size_t)(fsize - got));

			if (r <= 0)
				goto out;
			got += (uint64_t)r;
		}
	}
	bw = (double)fsize * n / (bench_now() - t0);
out:
	if (fd >= 0)
		close(fd);
	shutdown(s.lfd, SHUT_RDWR);
	close(s.lfd);
	pthread_join(th, NULL);
	return bw;
}

/* Bytes/s of GETs of n blocks of fsize bytes SET before. */
static double redis_bw(int port, const uint8_t *src, uint64_t fsize, unsigned n, uint8_t *block)
{
	redisContext *c = bench_redis_connect(port);
	double t0, bw = -1;
	redisReply *r;

	if (!c)
		return -1;
	for (uint64_t off = 0; off < fsize; off += IO_SIZE)
		memcpy(block + off, src, (size_t)MIN64(fsize - off, IO_SIZE));
	for (unsigned i = 0; i < n; i++) {
		r = redisCommand(c, "SET bench:blk:%u %b", i, block, (size_t)fsize);
		if (!r || r->type == REDIS_REPLY_ERROR) {
			freeReplyObject(r);
			goto out;
		}
		freeReplyObject(r);
	}
	t0 = bench_now();
	for (unsigned i = 0; i < n; i++) {
		r = redisCommand(c, "GET bench:blk:%u", i);
		if (!r || r->type != REDIS_REPLY_STRING || r->len != fsize) {
			freeReplyObject(r);
			goto out;
		}
		freeReplyObject(r);
	}
	bw = (double)fsize * n / (bench_now() - t0);
	for (unsigned i = 0; i < n; i++) { /* the cluster's index lives here too */
		r = redisCommand(c, "DEL bench:blk:%u", i);
		freeReplyObject(r);
	}
out:
	redisFree(c);
	return bw;
}

/* --- kvfs ------------------------------------------------------------------------------------- */

static int write_files(const char *mnt, const char *dir, uint64_t fsize, unsigned n,
		       const uint8_t *buf)
{
	char path[PATH_MAX];

	bench_path(path, sizeof(path), "%s/%s", mnt, dir);
	if (mkdir(path, 0755) && errno != EEXIST)
		return -errno;
	for (unsigned i = 0; i < n; i++) {
		int fd;

		bench_path(path, sizeof(path), "%s/%s/f%04u", mnt, dir, i);
		fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
		if (fd < 0) {
			bench_err("remote: create %s: %s", path, strerror(errno));
			return -errno;
		}
		for (uint64_t off = 0; off < fsize; off += IO_SIZE) {
			size_t len = (size_t)MIN64(fsize - off, IO_SIZE);

			if (write(fd, buf, len) != (ssize_t)len) {
				bench_err("remote: write %s: %s", path, strerror(errno));
				close(fd);
				return -EIO;
			}
		}
		close(fd);
	}
	return 0;
}

/* Read every file on the other node; every byte must match. */
static int read_files(const char *mnt, const char *dir, uint64_t fsize, unsigned n,
		      const uint8_t *want, uint8_t *buf, bool drop_cache)
{
	char path[PATH_MAX];

	for (unsigned i = 0; i < n; i++) {
		uint64_t got = 0;
		ssize_t k;
		int fd;

		bench_path(path, sizeof(path), "%s/%s/f%04u", mnt, dir, i);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			bench_err("remote: %s not found on the other node: %s", path,
				  strerror(errno));
			return -errno;
		}
		if (drop_cache) /* from the daemon, not the kernel's page cache */
			posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		while ((k = read(fd, buf, IO_SIZE)) > 0) {
			if (memcmp(buf, want, (size_t)k)) {
				bench_err("remote: %s differs on the other node", path);
				close(fd);
				return -EIO;
			}
			got += (uint64_t)k;
		}
		close(fd);
		if (k < 0 || got != fsize) {
			bench_err("remote: %s: read %llu of %llu bytes", path,
				  (unsigned long long)got, (unsigned long long)fsize);
			return -EIO;
		}
	}
	return 0;
}

/* Wait until the index lists node @m as a holder of @rel (publishing is queued). */
static int wait_published(struct bench_mount *m, const char *rel)
{
	char path[PATH_MAX], ans[4096];

	bench_path(path, sizeof(path), "%s/.kvfs/where", m->mnt);
	for (int i = 0; i < 1000; i++) {
		int fd = open(path, O_RDWR | O_CLOEXEC);
		ssize_t n = -1;

		if (fd >= 0 && write(fd, rel, strlen(rel)) == (ssize_t)strlen(rel))
			n = pread(fd, ans, sizeof(ans) - 1, 0);
		if (fd >= 0)
			close(fd);
		if (n > 0) {
			ans[n] = '\0';
			if (strstr(ans, "\"self\": true"))
				return 0;
		}
		usleep(10 * 1000);
	}
	bench_err("remote: node A never published %s", rel);
	return -ETIMEDOUT;
}

int bench_remote(int argc, char **argv, json_t *out)
{
	uint64_t sizes[4] = {2 << 20, 32 << 20}, total = 256ull << 20;
	int nsizes = 2, rc;
	struct bench_redis rs = {0};
	struct bench_mount a = {0}, b = {0};
	char token[PATH_MAX], url[64], *tokdir = NULL;
	char tmpl[] = "/tmp/kvfs-bench-tok-XXXXXX";
	uint8_t *buf = bench_buf_alloc(IO_SIZE), *rbuf = bench_buf_alloc(IO_SIZE), *big = NULL;
	json_t *res = json_object();
	FILE *f;

	if (bench_parse_sweep(argc, argv, sizes, 4, &nsizes, &total,
			      "remote: usage: remote [--sizes 2M,32M] [--total 256M]"))
		return -EINVAL;
	if (!buf || !rbuf)
		return -ENOMEM;
	bench_fill(buf, IO_SIZE, 11);
	rc = bench_redis_start(&rs);
	if (rc)
		goto out;
	tokdir = mkdtemp(tmpl);
	bench_path(token, sizeof(token), "%s/token", tmpl);
	f = tokdir ? fopen(token, "w") : NULL;
	if (!f || fputs("kvfs-bench-cluster-secret-0123456789\n", f) < 0 || fclose(f)) {
		bench_err("remote: cannot write a token file");
		rc = -EIO;
		goto out;
	}
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", rs.port);
	{
		const char *ea[] = {"--cluster", url, "--cluster-token", token, "--node-id", "a",
				    "--listen", "127.0.0.1:0", NULL};
		const char *eb[] = {"--cluster", url, "--cluster-token", token, "--node-id", "b",
				    "--listen", "127.0.0.1:0", NULL};
		/* A holds every file in DRAM; B has room for one size's files. */
		rc = bench_mount_start(&a, "remote-a", total * (uint64_t)nsizes + (64 << 20), ea);
		if (!rc)
			rc = bench_mount_start(&b, "remote-b", total + (64 << 20), eb);
		if (rc)
			goto out;
	}
	printf("\n== remote: %s per size read on node B from node A's DRAM, through B's mount, "
	       "vs raw TCP and Redis GET of the same bytes, all on 127.0.0.1 ==\n",
	       bench_fmt_size(total, (char[32]){0}, 32));
	{
		json_t *cfg = bench_mount_json(&b, "stats");

		printf("fabric provider: %s\n",
		       cfg ? json_string_value(json_object_get(json_object_get(cfg, "remote"),
								"provider"))
			   : "?");
		json_decref(cfg);
	}
	printf("%-8s %12s %12s %12s %12s %8s %8s %8s\n", "size", "remote MB/s", "local MB/s",
	       "TCP MB/s", "Redis MB/s", "vs local", "vs TCP", "vs Redis");
	for (int si = 0; si < nsizes && !rc; si++) {
		uint64_t fs = sizes[si];
		unsigned n = (unsigned)(total / fs);
		char dir[16], sz[32];
		double kb, lb, tb, rb, t0;

		if (!n)
			continue;
		bench_fmt_size(fs, sz, sizeof(sz));
		snprintf(dir, sizeof(dir), "s%d", si);
		bench_note("remote: %u files of %s", n, sz);
		rc = write_files(a.mnt, dir, fs, n, buf);
		if (!rc) {
			char last[64];

			snprintf(last, sizeof(last), "%s/f%04u", dir, n - 1);
			rc = wait_published(&a, last);
		}
		if (rc)
			break;
		t0 = bench_now();
		rc = read_files(b.mnt, dir, fs, n, buf, rbuf, false);
		kb = (double)(fs * n) / (bench_now() - t0);
		if (rc) {
			json_t *sa = bench_mount_json(&a, "stats"), *sb = bench_mount_json(&b, "stats");
			char *ja = json_dumps(json_object_get(sa, "remote"), JSON_COMPACT),
			     *jb = json_dumps(json_object_get(sb, "remote"), JSON_COMPACT);

			bench_err("remote: node A: %s", ja ? ja : "?");
			bench_err("remote: node B: %s", jb ? jb : "?");
			free(ja);
			free(jb);
			json_decref(sa);
			json_decref(sb);
			break;
		}
		/* The same files again on B, now local, kernel cache dropped: FUSE's share. */
		t0 = bench_now();
		rc = read_files(b.mnt, dir, fs, n, buf, rbuf, true);
		lb = (double)(fs * n) / (bench_now() - t0);
		if (rc)
			break;
		big = realloc(big, (size_t)fs);
		if (!big) {
			rc = -ENOMEM;
			break;
		}
		for (uint64_t off = 0; off < fs; off += IO_SIZE)
			memcpy(big + off, buf, (size_t)MIN64(fs - off, IO_SIZE));
		tb = tcp_bw(buf, fs, n, big);
		rb = redis_bw(rs.port, buf, fs, n, big);
		if (tb <= 0 || rb <= 0) {
			bench_err("remote: the TCP or Redis peer failed");
			rc = -EIO;
			break;
		}
		printf("%-8s %12.0f %12.0f %12.0f %12.0f %8.2f %8.2f %8.2f\n", sz, kb / 1e6, lb / 1e6,
		       tb / 1e6, rb / 1e6, kb / lb, kb / tb, kb / rb);
		json_object_set_new(res, sz,
				    json_pack("{s:f,s:f,s:f,s:f}", "kvfs_remote", kb, "kvfs_local_cold",
					      lb, "tcp", tb, "redis_get", rb));
	}
	if (!rc)
		printf("remote = open+read on node B of files only node A holds (index lookup, "
		       "one-sided reads from A's arena, XXH3 check, the file made local, FUSE reads); "
		       "local = the same files read again on B with the kernel's cache dropped (FUSE "
		       "alone). The transport alone against TCP and Redis: build/tests/rdma_bench\n");
out:
	bench_mount_stop(&b);
	bench_mount_stop(&a);
	bench_redis_stop(&rs);
	if (tokdir)
		bench_rmtree(tmpl);
	bench_buf_free(buf, IO_SIZE);
	bench_buf_free(rbuf, IO_SIZE);
	free(big);
	json_object_set_new(out, "remote", res);
	return rc;
}
