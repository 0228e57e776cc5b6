/*
 * tests/unit/rdma_testlib.h — what the rdma suites share: a real
 * redis-server on a unix socket in a temporary directory (started and
 * killed by the test), a fake daemon that serves files out of a real
 * registered arena through remote_ops, and deterministic file contents.
 * Static functions only; each suite includes it once.
 */
#ifndef KVFS_TESTS_RDMA_TESTLIB_H
#define KVFS_TESTS_RDMA_TESTLIB_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rdma/remote.h"

#define TOKEN "kvfs-test-cluster-token-0123456789"

static inline uint64_t tl_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline void tl_sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Deterministic bytes: xorshift64 from @seed. */
static inline void tl_fill(void *buf, size_t len, uint64_t seed)
{
	uint8_t *p = buf;
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;

	for (size_t i = 0; i < len; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(p + i, &x, len - i < 8 ? len - i : 8);
	}
}

/* --- redis-server --------------------------------------------------------- */

struct tl_redis {
	pid_t pid;
	char dir[64];
	char sock[128];
	char url[160];
};

static inline bool tl_have_redis(void)
{
	return access("/usr/bin/redis-server", X_OK) == 0;
}

static inline bool tl_redis_up(const char *sock)
{
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	snprintf(a.sun_path, sizeof(a.sun_path), "%s", sock);
	ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* Start (or restart, same socket) a redis-server. @return 0 or -1. */
static inline int tl_redis_start(struct tl_redis *s)
{
	if (!s->dir[0]) {
		snprintf(s->dir, sizeof(s->dir), "/tmp/kvfs-rdma-XXXXXX");
		if (!mkdtemp(s->dir))
			return -1;
		snprintf(s->sock, sizeof(s->sock), "%s/redis.sock", s->dir);
		snprintf(s->url, sizeof(s->url), "unix:%s", s->sock);
	}
	s->pid = fork();
	if (s->pid < 0)
		return -1;
	if (s->pid == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		execl("/usr/bin/redis-server", "redis-server", "--port", "0", "--unixsocket",
		      s->sock, "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
		      "--dir", s->dir, "--loglevel", "warning", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; i < 500; i++) {
		if (tl_redis_up(s->sock))
			return 0;
		tl_sleep_ms(10);
	}
	return -1;
}

/* Kill it (the data goes too: --save ''). */
static inline void tl_redis_kill(struct tl_redis *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
		s->pid = 0;
	}
	unlink(s->sock);
}

static inline void tl_redis_stop(struct tl_redis *s)
{
	char path[192];

	tl_redis_kill(s);
	snprintf(path, sizeof(path), "%s/dump.rdb", s->dir);
	unlink(path);
	if (s->dir[0])
		rmdir(s->dir);
	memset(s, 0, sizeof(*s));
}

/* --- a fake daemon: files in a registered arena --------------------------- */

#define TL_MAX_FILES 64
#define TL_MAX_IOV   4096

struct tl_file {
	char path[256];
	uint64_t off; /* in the arena; scattered files use every other page */
	uint64_t size;
	uint64_t checksum;
	uint32_t page; /* 0: one contiguous iovec; else page-sized iovecs */
	bool scatter;  /* pages at off, off + 2 * page, ... (not mergeable) */
	bool busy;     /* held but not servable now: lookup says -EAGAIN */
	struct iovec iov[TL_MAX_IOV];
	uint32_t niov;
};

struct tl_daemon {
	uint8_t *arena;
	uint64_t arena_bytes;
	uint64_t used;
	struct tl_file files[TL_MAX_FILES];
	int nfiles;
	int leases, releases, lookups;
	bool give_attrs;		  /* answer remote_ops.attrs with attrs (else: no answer) */
	_Atomic unsigned lookup_delay_ms; /* lookup blocks this long (a daemon that misbehaves) */
	_Atomic int delaying;		  /* lookups blocked right now */
	struct remote_attrs attrs;
	pthread_mutex_t lock;
	uint8_t outside_buf[4096];
};

static inline int tl_lookup(void *ctx, const char *path, struct remote_file *out)
{
	struct tl_daemon *d = ctx;
	int rc = -ENOENT;

	if (atomic_load(&d->lookup_delay_ms)) {
		atomic_fetch_add(&d->delaying, 1);
		tl_sleep_ms(atomic_load(&d->lookup_delay_ms));
		atomic_fetch_sub(&d->delaying, 1);
	}
	pthread_mutex_lock(&d->lock);
	d->lookups++;
	for (int i = 0; i < d->nfiles; i++) {
		struct tl_file *f = &d->files[i];

		if (strcmp(f->path, path) != 0)
			continue;
		if (f->busy) {
			rc = -EAGAIN;
			break;
		}
		out->size = f->size;
		out->checksum = f->checksum;
		out->iov = f->iov;
		out->niov = f->niov;
		out->cookie = f;
		d->leases++;
		rc = 0;
		break;
	}
	pthread_mutex_unlock(&d->lock);
	return rc;
}

static inline void tl_release(void *ctx, struct remote_file *f)
{
	struct tl_daemon *d = ctx;

	(void)f;
	pthread_mutex_lock(&d->lock);
	d->releases++;
	pthread_mutex_unlock(&d->lock);
}

static inline int tl_attrs(void *ctx, const char *path, struct remote_attrs *out)
{
	struct tl_daemon *d = ctx;
	int rc = -ENOENT;

	(void)path;
	pthread_mutex_lock(&d->lock);
	if (d->give_attrs) {
		*out = d->attrs;
		rc = 0;
	}
	pthread_mutex_unlock(&d->lock);
	return rc;
}

static const struct remote_ops tl_ops = {
	.lookup = tl_lookup,
	.release = tl_release,
	.attrs = tl_attrs,
};

static inline int tl_daemon_init(struct tl_daemon *d, uint64_t arena_bytes)
{
	memset(d, 0, sizeof(*d));
	pthread_mutex_init(&d->lock, NULL);
	d->arena = aligned_alloc(4096, arena_bytes);
	if (!d->arena)
		return -1;
	memset(d->arena, 0, arena_bytes);
	d->arena_bytes = arena_bytes;
	return 0;
}

static inline void tl_daemon_fini(struct tl_daemon *d)
{
	free(d->arena);
	pthread_mutex_destroy(&d->lock);
}

/*
 * Add a file of @size bytes (pattern @seed). @page 0: one iovec; else split
 * into @page-sized iovecs, every other page when @scatter.
 * @return the file, or NULL if the arena is full.
 */
static inline struct tl_file *tl_add(struct tl_daemon *d, const char *path, uint64_t size,
				     uint64_t seed, uint32_t page, bool scatter)
{
	struct tl_file *f = &d->files[d->nfiles];
	uint64_t span = scatter ? 2 * ((size + page - 1) / page) * page : size;
	uint64_t off = (d->used + 4095) & ~4095ull;

	if (d->nfiles == TL_MAX_FILES || off + span > d->arena_bytes)
		return NULL;
	memset(f, 0, sizeof(*f));
	snprintf(f->path, sizeof(f->path), "%s", path);
	f->off = off;
	f->size = size;
	f->page = page;
	f->scatter = scatter;
	if (!page) {
		f->iov[0].iov_base = d->arena + off;
		f->iov[0].iov_len = size;
		f->niov = size ? 1 : 0;
		tl_fill(d->arena + off, size, seed);
	} else {
		/* The same bytes as unsplit, laid out page by page. */
		uint8_t *tmp = malloc(size ? size : 1);
		uint64_t done = 0, at = off;

		if (!tmp)
			return NULL;
		tl_fill(tmp, size, seed);
		while (done < size && f->niov < TL_MAX_IOV) {
			uint64_t len = size - done < page ? size - done : page;

			memcpy(d->arena + at, tmp + done, len);
			f->iov[f->niov].iov_base = d->arena + at;
			f->iov[f->niov].iov_len = len;
			f->niov++;
			done += len;
			at += scatter ? 2ull * page : page;
		}
		free(tmp);
		if (done < size)
			return NULL;
	}
	f->checksum = remote_checksum(f->iov, (int)f->niov);
	d->used = off + span;
	d->nfiles++;
	return f;
}

/* The bytes of @f, gathered (for comparing). Caller frees. */
static inline uint8_t *tl_gather(const struct tl_file *f)
{
	uint8_t *b = malloc(f->size ? f->size : 1);
	uint64_t at = 0;

	for (uint32_t i = 0; b && i < f->niov; i++) {
		memcpy(b + at, f->iov[i].iov_base, f->iov[i].iov_len);
		at += f->iov[i].iov_len;
	}
	return b;
}

/* --- instances ------------------------------------------------------------ */

/* Open a node on tcp 127.0.0.1 with the test token (or @token if not NULL);
 * its heartbeat key lives 10 heartbeats. */
static inline remote *tl_open(const char *id, struct tl_daemon *d, uint64_t lend,
			      const char *cluster, const char *cname, const char *token,
			      uint32_t timeout_ms, uint32_t heartbeat_ms)
{
	struct remote_config cfg = {
		.node_id = id,
		.fabric = "tcp",
		.listen = "127.0.0.1:0",
		.cluster = cluster,
		.cluster_name = cname,
		.token = token ? token : TOKEN,
		.token_len = strlen(token ? token : TOKEN),
		.arena = d ? d->arena : NULL,
		.arena_bytes = d ? d->arena_bytes : 0,
		.lend_bytes = lend,
		.timeout_ms = timeout_ms,
		.heartbeat_ms = heartbeat_ms,
		/* Generous, so a loaded machine does not expire a live node. */
		.node_ttl_ms = 10 * heartbeat_ms,
		.ops = d ? &tl_ops : NULL,
		.ops_ctx = d,
	};
	char err[256] = "";
	remote *r = NULL;
	int rc = remote_open(&cfg, &r, err, sizeof(err));

	if (rc)
		fprintf(stderr, "remote_open(%s): %s (%s)\n", id, strerror(-rc), err);
	return r;
}

/* --- ports and a Redis Cluster -------------------------------------------- */

static inline bool tl_port_free(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
	bool ok;

	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	ok = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* A free loopback TCP port chosen by the kernel. */
static inline int tl_free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

	bind(fd, (struct sockaddr *)&a, sizeof(a));
	getsockname(fd, (struct sockaddr *)&a, &len);
	port = ntohs(a.sin_port);
	close(fd);
	return port;
}

static inline bool tl_tcp_up(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
				.sin_port = htons((uint16_t)port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;

	if (fd >= 0)
		close(fd);
	return ok;
}

/* --- a remote's view ------------------------------------------------------- */

static inline struct remote_stats tl_stats(remote *r)
{
	struct remote_stats s;

	remote_get_stats(r, &s);
	return s;
}

/* Is @id a live member in @r's membership table? */
static inline bool tl_peer_alive(remote *r, const char *id)
{
	struct remote_peer p[16];
	int n = remote_peers(r, p, 16);

	for (int i = 0; i < n && i < 16; i++)
		if (strcmp(p[i].node, id) == 0)
			return p[i].alive;
	return false;
}

/* remote_flush, retried for up to ~@tries * 110 ms. @return its last result. */
static inline int tl_flush(remote *r, int tries)
{
	int rc = -1;

	for (int i = 0; i < tries && rc != 0; i++) {
		rc = remote_flush(r, 100);
		if (rc)
			tl_sleep_ms(10);
	}
	return rc;
}

/* A plain redis-server on 127.0.0.1:@port (TCP). @return its pid, or -1. */
static inline pid_t tl_redis_tcp(int port)
{
	char p[16];
	pid_t pid;

	snprintf(p, sizeof(p), "%d", port);
	pid = fork();
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(null, 1);
		dup2(null, 2);
		execl("/usr/bin/redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1",
		      "--save", "", "--appendonly", "no", (char *)NULL);
		_exit(127);
	}
	for (int i = 0; pid > 0 && i < 500 && !tl_tcp_up(port); i++)
		tl_sleep_ms(10);
	return pid;
}

#define TL_RC_NODES 6 /* 3 masters, 3 replicas */

struct tl_rcluster {
	pid_t pid[TL_RC_NODES];
	int port[TL_RC_NODES];
	char dir[64];
	char url[256]; /* redis-cluster://127.0.0.1:P1,...  (the first three) */
};

static inline bool tl_have_rcluster(void)
{
	return tl_have_redis() && access("/usr/bin/redis-cli", X_OK) == 0;
}

static inline pid_t tl_rc_spawn(struct tl_rcluster *c, int i)
{
	char port[16], conf[128];
	pid_t pid = fork();

	if (pid != 0)
		return pid;
	snprintf(port, sizeof(port), "%d", c->port[i]);
	snprintf(conf, sizeof(conf), "nodes-%d.conf", c->port[i]);
	{
		int null = open("/dev/null", O_RDWR);

		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
	}
	execl("/usr/bin/redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
	      "--cluster-enabled", "yes", "--cluster-config-file", conf, "--cluster-node-timeout",
	      "1000", "--repl-diskless-sync-delay", "0", "--save", "", "--appendonly", "no",
	      "--dir", c->dir, "--loglevel", "warning", (char *)NULL);
	_exit(127);
}

/* Run `redis-cli ARGS...` quietly; @return its exit status. */
static inline int tl_redis_cli(char *const *argv)
{
	pid_t pid = fork();
	int st = 0;

	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);

		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		execv("/usr/bin/redis-cli", argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &st, 0) < 0)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline void tl_rcluster_stop(struct tl_rcluster *c);

/* Is the node `redis-cli ... INFO replication` asks a master, or a replica
 * whose link to its master is up and synchronised? */
static inline bool tl_rc_synced(char *const *argv)
{
	int fds[2], st = 0;
	char out[4096] = "";
	ssize_t n, len = 0;
	pid_t pid;

	if (pipe(fds))
		return false;
	pid = fork();
	if (pid == 0) {
		dup2(fds[1], 1);
		close(fds[0]);
		execv("/usr/bin/redis-cli", argv);
		_exit(127);
	}
	close(fds[1]);
	while (len < (ssize_t)sizeof(out) - 1 &&
	       (n = read(fds[0], out + len, sizeof(out) - 1 - (size_t)len)) > 0)
		len += n;
	close(fds[0]);
	waitpid(pid, &st, 0);
	out[len] = '\0';
	if (strstr(out, "role:master"))
		return true;
	return strstr(out, "master_link_status:up") && strstr(out, "master_sync_in_progress:0");
}

/*
 * Start 6 redis-servers in cluster mode on free loopback ports (the cluster
 * bus, port + 10000, free too), make them 3 masters with a replica each
 * (`redis-cli --cluster create ... --cluster-replicas 1`), and wait until
 * every slot is served. @return 0 or -1.
 */
static inline int tl_rcluster_start(struct tl_rcluster *c)
{
	char *argv[TL_RC_NODES + 8], addrs[TL_RC_NODES][32];
	int n = 0, base = 20000 + (int)(getpid() % 2000) * 5;
	size_t ul;

	memset(c, 0, sizeof(*c));
	snprintf(c->dir, sizeof(c->dir), "/tmp/kvfs-rcluster-XXXXXX");
	if (!mkdtemp(c->dir))
		return -1;
	for (int i = 0; i < TL_RC_NODES; i++) {
		while (base < 30000 && !(tl_port_free(base) && tl_port_free(base + 10000)))
			base++;
		if (base >= 30000)
			goto fail;
		c->port[i] = base++;
		c->pid[i] = tl_rc_spawn(c, i);
		if (c->pid[i] < 0)
			goto fail;
	}
	for (int i = 0; i < TL_RC_NODES; i++) {
		int k = 0;

		while (k++ < 500 && !tl_tcp_up(c->port[i]))
			tl_sleep_ms(10);
		if (!tl_tcp_up(c->port[i]))
			goto fail;
	}
	argv[n++] = "redis-cli";
	argv[n++] = "--cluster";
	argv[n++] = "create";
	for (int i = 0; i < TL_RC_NODES; i++) {
		snprintf(addrs[i], sizeof(addrs[i]), "127.0.0.1:%d", c->port[i]);
		argv[n++] = addrs[i];
	}
	argv[n++] = "--cluster-replicas";
	argv[n++] = "1";
	argv[n++] = "--cluster-yes";
	argv[n] = NULL;
	if (tl_redis_cli(argv) != 0)
		goto fail;
	ul = (size_t)snprintf(c->url, sizeof(c->url), "redis-cluster://");
	for (int i = 0; i < 3; i++)
		ul += (size_t)snprintf(c->url + ul, sizeof(c->url) - ul, "%s127.0.0.1:%d",
				       i ? "," : "", c->port[i]);
	/* Every node agrees every slot is served. */
	for (int i = 0; i < TL_RC_NODES; i++) {
		char *chk[] = {"redis-cli", "--cluster", "check", addrs[i], NULL};
		int k = 0;

		while (k++ < 100 && tl_redis_cli(chk) != 0)
			tl_sleep_ms(100);
	}
	/* ... and every replica has its master's data (a replica that never
	 * synchronised cannot take over). */
	for (int i = 0; i < TL_RC_NODES; i++) {
		char port[16], *info[] = {"redis-cli", "-p", port, "INFO", "replication", NULL};
		int k = 0;

		snprintf(port, sizeof(port), "%d", c->port[i]);
		while (k++ < 200 && !tl_rc_synced(info))
			tl_sleep_ms(50);
	}
	return 0;
fail:
	tl_rcluster_stop(c);
	return -1;
}

static inline void tl_rcluster_kill(struct tl_rcluster *c, int i)
{
	if (c->pid[i] > 0) {
		kill(c->pid[i], SIGKILL);
		waitpid(c->pid[i], NULL, 0);
		c->pid[i] = 0;
	}
}

static inline void tl_rcluster_stop(struct tl_rcluster *c)
{
	char cmd[160];

	for (int i = 0; i < TL_RC_NODES; i++)
		tl_rcluster_kill(c, i);
	if (c->dir[0]) {
		/* nodes-*.conf and nothing else (no --save, no AOF) */
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", c->dir);
	}
	memset(c, 0, sizeof(*c));
}

#endif
