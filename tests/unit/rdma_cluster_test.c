/*
 * tests/unit/rdma_cluster_test.c — several nodes acting as one cache through
 * the public interface (rdma/remote.h; rdma_i.h only to wait for a peer's
 * new incarnation to be seen): a real redis-server on a unix socket, three
 * `remote` instances in this process on tcp 127.0.0.1, and rdma_peerd
 * processes where a node must die.
 *
 * Covered: a file published on B is fetched on A byte-exact through the
 * index; a stale entry (the index says C holds it, C does not) is repaired
 * and the fetch served by B; wire corruption on the first holder is caught
 * and the second holder serves; a holder that refuses for now is skipped
 * without repair, and a sink's own error ends the fetch; offload lands on
 * the ring's choice among peers with room, is published as "lent" by the
 * target, read from a third node, and freed cluster-wide; a holder with the
 * wrong token is refused and another holder serves; a node restarted on the
 * same address is reconnected to at once (its heartbeat names a new
 * incarnation); a killed node's entries are ignored once its heartbeat
 * expires; a draining node takes no more offloads and hands the copies it
 * holds over to another lender.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "core/fault.h"
#include "rdma/rdma_i.h"
#include "tests/unit/rdma_testlib.h"

#define MiB (1024ull * 1024)

static struct tl_redis rs;
static struct tl_daemon dA, dB, dC;
static remote *A, *B, *C;

#define stats tl_stats

static void wait_alive(remote *r, const char *id, bool want)
{
	for (int i = 0; i < 400 && tl_peer_alive(r, id) != want; i++)
		tl_sleep_ms(10);
	assert_int_equal(tl_peer_alive(r, id), want);
}

static void flush_all(void)
{
	remote *all[] = {A, B, C};

	for (int k = 0; k < 3; k++) {
		int rc = -1;

		for (int i = 0; i < 300 && rc; i++)
			rc = remote_flush(all[k], 100);
		assert_int_equal(rc, 0);
	}
}

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	if (!tl_have_redis())
		return 0;
	if (tl_redis_start(&rs))
		return -1;
	if (tl_daemon_init(&dA, 16 * MiB) || tl_daemon_init(&dB, 32 * MiB) ||
	    tl_daemon_init(&dC, 32 * MiB))
		return -1;
	A = tl_open("A", &dA, 0, rs.url, "c", NULL, 1000, 100);
	B = tl_open("B", &dB, 16 * MiB, rs.url, "c", NULL, 1000, 100);
	C = tl_open("C", &dC, 16 * MiB, rs.url, "c", NULL, 1000, 100);
	return A && B && C ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	if (!rs.dir[0])
		return 0;
	remote_close(A);
	remote_close(B);
	remote_close(C);
	tl_daemon_fini(&dA);
	tl_daemon_fini(&dB);
	tl_daemon_fini(&dC);
	tl_redis_stop(&rs);
	return 0;
}

#define NEED_REDIS()                                                                               \
	do {                                                                                       \
		if (!rs.dir[0])                                                                    \
			skip();                                                                    \
	} while (0)

static void wait_cluster(void)
{
	wait_alive(A, "B", true);
	wait_alive(A, "C", true);
	wait_alive(B, "C", true);
	wait_alive(C, "B", true);
}

static void test_fetch_through_index(void **state)
{
	struct tl_file *f;
	uint8_t *buf = malloc(4 * MiB), *want;
	uint64_t size;
	struct remote_stats a0;

	(void)state;
	NEED_REDIS();
	wait_cluster();
	f = tl_add(&dB, "model/ab/0001.bin", 3 * MiB + 5, 11, 65536, false);
	assert_non_null(f);
	remote_publish(B, f->path, REMOTE_TIER_DRAM);
	flush_all();
	a0 = stats(A);
	assert_int_equal(remote_fetch_buf(A, f->path, buf, 4 * MiB, &size), 0);
	assert_int_equal(size, f->size);
	want = tl_gather(f);
	assert_memory_equal(buf, want, size);
	assert_int_equal(stats(A).reads, a0.reads + 1);
	assert_int_equal(stats(A).read_bytes, a0.read_bytes + f->size);
	assert_int_equal(remote_dir_exists(A, "model/ab"), 1);
	/* Too small a buffer: the size comes back, nothing else happens. */
	assert_int_equal(remote_fetch_buf(A, f->path, buf, 1000, &size), -EFBIG);
	assert_int_equal(size, f->size);
	/* Nobody holds it. */
	assert_int_equal(remote_fetch_buf(A, "model/ab/none", buf, 4 * MiB, &size), -ENOENT);
	free(want);
	free(buf);
}

static void test_stale_entry_repaired(void **state)
{
	struct tl_file *f;
	uint8_t *buf = malloc(MiB);
	uint64_t size;
	struct remote_holder h[4];
	struct remote_stats a0 = stats(A);

	(void)state;
	NEED_REDIS();
	f = tl_add(&dB, "model/ab/0002.bin", 500000, 12, 0, false);
	assert_non_null(f);
	remote_publish(B, f->path, REMOTE_TIER_NVME);
	/* C claims it in DRAM (tried first) but its daemon does not have it. */
	remote_publish(C, f->path, REMOTE_TIER_DRAM);
	flush_all();
	assert_int_equal(remote_where(A, f->path, h, 4), 2);
	assert_int_equal(remote_fetch_buf(A, f->path, buf, MiB, &size), 0);
	assert_int_equal(stats(A).stale_repaired, a0.stale_repaired + 1);
	/* The repair is queued on A's index thread. */
	for (int i = 0; i < 300 && remote_where(A, f->path, h, 4) != 1; i++)
		tl_sleep_ms(10);
	assert_int_equal(remote_where(A, f->path, h, 4), 1);
	assert_string_equal(h[0].node, "B");
	free(buf);
}

/* Corruption on the wire from the first holder: the second one serves. */
static void test_corruption_falls_back(void **state)
{
	struct tl_file *fb, *fc;
	uint8_t *buf = malloc(MiB), *want;
	uint64_t size;
	struct remote_stats a0 = stats(A);

	(void)state;
	NEED_REDIS();
	fb = tl_add(&dB, "model/ab/0003.bin", 700000, 13, 0, false);
	fc = tl_add(&dC, "model/ab/0003.bin", 700000, 13, 4096, true);
	assert_non_null(fb);
	assert_non_null(fc);
	assert_int_equal(fb->checksum, fc->checksum);
	remote_publish(B, fb->path, REMOTE_TIER_DRAM);
	remote_publish(C, fc->path, REMOTE_TIER_DRAM);
	flush_all();
	kvfs_fault_arm(KVFS_FAULT_NET_READ, 1, EIO, false);
	assert_int_equal(remote_fetch_buf(A, fb->path, buf, MiB, &size), 0);
	want = tl_gather(fb);
	assert_memory_equal(buf, want, size);
	assert_int_equal(stats(A).checksum_failures, a0.checksum_failures + 1);
	assert_int_equal(stats(A).reads, a0.reads + 1);
	/* Corrupt on every holder: -EBADMSG, never wrong bytes. */
	kvfs_fault_arm(KVFS_FAULT_NET_READ, 1, EIO, true);
	assert_int_equal(remote_fetch_buf(A, fb->path, buf, MiB, &size), -EBADMSG);
	kvfs_fault_arm(KVFS_FAULT_NET_READ, 0, 0, false);
	assert_int_equal(stats(A).checksum_failures, a0.checksum_failures + 3);
	assert_int_equal(stats(A).read_failures, a0.read_failures + 1);
	free(want);
	free(buf);
}

static int fail_prepare(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max)
{
	int *calls = ctx;

	(void)size;
	(void)checksum;
	(void)iov;
	(void)max;
	(*calls)++;
	return -ENOSPC;
}

/* A holder that refuses for now (-EAGAIN) is skipped, not repaired; an
 * error of the caller's own sink ends the fetch at once. */
static void test_busy_holder_and_sink_error(void **state)
{
	struct tl_file *fb, *fc;
	uint8_t *buf = malloc(MiB);
	uint64_t size;
	struct remote_holder h[4];
	struct remote_stats a0 = stats(A);
	struct remote_fetch_info info;
	int calls = 0, lookups;
	struct remote_sink sink = {fail_prepare, &calls};

	(void)state;
	NEED_REDIS();
	fb = tl_add(&dB, "model/ab/0006.bin", 200000, 16, 0, false);
	fc = tl_add(&dC, "model/ab/0006.bin", 200000, 16, 0, false);
	assert_non_null(fb);
	assert_non_null(fc);
	fc->busy = true;
	remote_publish(C, fc->path, REMOTE_TIER_DRAM); /* asked first */
	remote_publish(B, fb->path, REMOTE_TIER_NVME);
	flush_all();
	assert_int_equal(
		remote_fetch(A, fb->path, &(struct remote_sink){fail_prepare, &calls}, &info),
		-ENOSPC);
	assert_int_equal(calls, 1); /* C refused before prepare; B's prepare failed; stop */
	fc->busy = false;
	lookups = dB.lookups + dC.lookups;
	calls = 0;
	assert_int_equal(remote_fetch(A, fb->path, &sink, NULL), -ENOSPC);
	assert_int_equal(calls, 1);
	assert_int_equal(dB.lookups + dC.lookups, lookups + 1); /* one holder asked */
	fc->busy = true;
	assert_int_equal(remote_fetch_buf(A, fb->path, buf, MiB, &size), 0);
	assert_int_equal(size, 200000);
	assert_int_equal(stats(A).stale_repaired, a0.stale_repaired);
	assert_int_equal(remote_flush(A, 2000), 0);
	assert_int_equal(remote_where(A, fb->path, h, 4), 2);
	free(buf);
}

static void test_offload_via_ring(void **state)
{
	uint64_t size = 2 * MiB + 333;
	uint8_t *src = malloc(size), *buf = malloc(3 * MiB);
	struct iovec iov = {src, size};
	struct remote_holder h[4];
	struct remote_stats b0 = stats(B), c0 = stats(C);
	uint64_t got;
	int n;
	remote *target;

	(void)state;
	NEED_REDIS();
	wait_cluster();
	tl_fill(src, size, 21);
	assert_int_equal(remote_offload(A, "off/x.bin", &iov, 1, remote_checksum(&iov, 1)), 0);
	/* Exactly one of the lenders took it; A lends nothing. */
	assert_int_equal(stats(B).offloads_received + stats(C).offloads_received,
			 b0.offloads_received + c0.offloads_received + 1);
	target = stats(B).offloads_received > b0.offloads_received ? B : C;
	assert_true(stats(target).lend_used >= size);
	assert_int_equal(remote_flush(target, 2000), 0);
	n = remote_where(A, "off/x.bin", h, 4);
	assert_int_equal(n, 1);
	assert_string_equal(h[0].node, remote_node_id(target));
	assert_int_equal(h[0].tier, REMOTE_TIER_LENT);
	/* The other lender reads it back from the target. */
	{
		remote *other = target == B ? C : B;

		assert_int_equal(remote_fetch_buf(other, "off/x.bin", buf, 3 * MiB, &got), 0);
		assert_int_equal(got, size);
		assert_memory_equal(buf, src, size);
	}
	/* The ring is deterministic: the same path goes to the same node. */
	assert_int_equal(remote_offload(A, "off/x.bin", &iov, 1, remote_checksum(&iov, 1)), 0);
	assert_int_equal(stats(B).offloads_received + stats(C).offloads_received,
			 b0.offloads_received + c0.offloads_received + 1);
	/* Free drops it everywhere. */
	assert_int_equal(remote_free(A, "off/x.bin"), 0);
	assert_int_equal(remote_flush(target, 2000), 0);
	assert_int_equal(remote_where(A, "off/x.bin", h, 4), 0);
	for (int i = 0; i < 200 && stats(target).lend_used != 0; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(target).lend_used, 0);
	free(src);
	free(buf);
}

/* A lender's own use of a copy it holds for a peer: taken out, checked, unpublished. */
static int one_buf_prepare(void *ctx, uint64_t size, uint64_t checksum, struct iovec *iov, int max)
{
	(void)checksum, (void)max;
	iov[0].iov_base = ctx;
	iov[0].iov_len = size;
	return 1;
}

static void test_take_lent(void **state)
{
	uint64_t size = 1 * MiB + 77;
	uint8_t *src = malloc(size), *buf = malloc(2 * MiB);
	struct iovec iov = {src, size};
	struct remote_sink sink = {one_buf_prepare, buf};
	struct remote_fetch_info info;
	struct remote_holder h[4];
	struct remote_stats b0 = stats(B);
	remote *target;

	(void)state;
	NEED_REDIS();
	wait_cluster();
	tl_fill(src, size, 33);
	/* Not lent anywhere yet: nothing to take; the non-lender has no region. */
	assert_int_equal(remote_take_lent(B, "take/y.bin", &sink, NULL), -ENOENT);
	assert_int_equal(remote_take_lent(A, "take/y.bin", &sink, NULL), -ENOENT);
	assert_int_equal(remote_take_lent(B, "", &sink, NULL), -EINVAL);
	assert_int_equal(remote_offload(A, "take/y.bin", &iov, 1, remote_checksum(&iov, 1)), 0);
	target = stats(B).offloads_received > b0.offloads_received ? B : C;
	assert_int_equal(remote_flush(target, 2000), 0);
	/* The other lender has no copy of it. */
	assert_int_equal(remote_take_lent(target == B ? C : B, "take/y.bin", &sink, NULL), -ENOENT);
	assert_int_equal(remote_take_lent(target, "take/y.bin", &sink, &info), 0);
	assert_memory_equal(buf, src, size);
	assert_int_equal(info.size, size);
	assert_int_equal(info.tier, REMOTE_TIER_LENT);
	assert_string_equal(info.node, remote_node_id(target));
	/* Gone from the lent region and the index; a second take finds nothing. */
	assert_int_equal(remote_take_lent(target, "take/y.bin", &sink, NULL), -ENOENT);
	assert_int_equal(remote_flush(target, 2000), 0);
	assert_int_equal(remote_where(A, "take/y.bin", h, 4), 0);
	for (int i = 0; i < 200 && stats(target).lend_used != 0; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(target).lend_used, 0);
	free(src);
	free(buf);
}

static void test_wrong_token_holder_skipped(void **state)
{
	struct tl_daemon dX;
	struct tl_file *fx, *fb;
	remote *X;
	uint8_t *buf = malloc(MiB);
	uint64_t size;
	struct remote_stats a0 = stats(A);

	(void)state;
	NEED_REDIS();
	assert_int_equal(tl_daemon_init(&dX, 4 * MiB), 0);
	X = tl_open("X", &dX, 0, rs.url, "c", "not-the-cluster-token!!", 1000, 100);
	assert_non_null(X);
	fx = tl_add(&dX, "model/ab/0004.bin", 100000, 14, 0, false);
	fb = tl_add(&dB, "model/ab/0004.bin", 100000, 14, 0, false);
	assert_non_null(fx);
	assert_non_null(fb);
	remote_publish(X, fx->path, REMOTE_TIER_DRAM);
	remote_publish(B, fb->path, REMOTE_TIER_NVME); /* asked second */
	flush_all();
	assert_int_equal(remote_flush(X, 2000), 0);
	wait_alive(A, "X", true);
	assert_int_equal(remote_fetch_buf(A, fx->path, buf, MiB, &size), 0);
	assert_int_equal(size, 100000);
	assert_int_equal(stats(A).auth_rejected, a0.auth_rejected + 1);
	for (int i = 0; i < 200 && stats(X).auth_refused == 0; i++)
		tl_sleep_ms(5);
	assert_int_equal(stats(X).auth_refused, 1);
	assert_int_equal(dX.lookups, 0); /* X's daemon never asked */
	remote_close(X);
	tl_daemon_fini(&dX);
	free(buf);
}

struct kproc {
	pid_t pid;
	int in_fd;
	FILE *out;
};

/* rdma_peerd as node K in the cluster, serving one file, on @listen. */
static int spawn_k(struct kproc *k, const char *listen)
{
	char exe[PATH_MAX + 16], line[256];
	ssize_t n = readlink("/proc/self/exe", exe, PATH_MAX - 1);
	int out[2], in[2];

	if (n < 0)
		return -1;
	exe[n] = '\0';
	strcpy(strrchr(exe, '/'), "/rdma_peerd");
	if (access(exe, X_OK) != 0 || pipe(out) || pipe(in)) /* it runs until stdin closes */
		return -1;
	k->pid = fork();
	if (k->pid == 0) {
		dup2(in[0], 0);
		dup2(out[1], 1);
		close(in[1]);
		close(out[0]);
		execl(exe, exe, "--node-id", "K", "--file", "model/ab/0005.bin:300000:5",
		      "--cluster", rs.url, "--cluster-name", "c", "--heartbeat-ms", "100",
		      "--listen", listen, (char *)NULL);
		_exit(127);
	}
	close(out[1]);
	close(in[0]);
	k->in_fd = in[1];
	k->out = fdopen(out[0], "r");
	if (!k->out || !fgets(line, sizeof(line), k->out) || strncmp(line, "READY ", 6) != 0)
		return -1;
	return 0;
}

static void kill_k(struct kproc *k)
{
	kill(k->pid, SIGKILL);
	waitpid(k->pid, NULL, 0);
	fclose(k->out);
	close(k->in_fd);
}

static int free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(fd, (struct sockaddr *)&a, &len))
		port = -1;
	else
		port = ntohs(a.sin_port);
	close(fd);
	return port;
}

/* K restarts on the same address: its new heartbeat record (a new
 * incarnation) makes A open a new session at once, not time out on the
 * old one. Then K dies for good: once its heartbeat expires its entries
 * are ignored, without asking it. */
static void test_restarted_then_killed_node(void **state)
{
	struct kproc k;
	char listen[64];
	uint8_t *buf = malloc(MiB);
	uint64_t size, t0;
	struct remote_stats a0;
	int port = free_port();

	(void)state;
	NEED_REDIS();
	assert_true(port > 0);
	snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
	if (spawn_k(&k, listen) != 0)
		skip();
	wait_alive(A, "K", true);
	assert_int_equal(remote_fetch_buf(A, "model/ab/0005.bin", buf, MiB, &size), 0);
	assert_int_equal(size, 300000);

	kill_k(&k);
	assert_int_equal(spawn_k(&k, listen), 0);
	/* Wait until A has seen the new incarnation's heartbeat. */
	for (int i = 0; i < 300; i++) {
		struct rdma_peer *p = rdma_peer_find(A, "K");
		uint32_t gen, sgen;

		pthread_mutex_lock(&p->sess_lock);
		sgen = p->sess_gen;
		pthread_mutex_unlock(&p->sess_lock);
		pthread_mutex_lock(&A->peer_lock);
		gen = p->addr_gen;
		pthread_mutex_unlock(&A->peer_lock);
		if (gen != sgen)
			break;
		tl_sleep_ms(10);
	}
	a0 = stats(A);
	assert_int_equal(remote_fetch_buf(A, "model/ab/0005.bin", buf, MiB, &size), 0);
	assert_int_equal(stats(A).timeouts, a0.timeouts);
	assert_int_equal(stats(A).conn_errors, a0.conn_errors);

	kill_k(&k);
	/* Its heartbeat (1 s TTL) expires: A stops using its entries. */
	wait_alive(A, "K", false);
	a0 = stats(A);
	t0 = tl_now_ms();
	assert_int_equal(remote_fetch_buf(A, "model/ab/0005.bin", buf, MiB, &size), -ENOENT);
	assert_true(tl_now_ms() - t0 < 500); /* nobody was asked, nothing timed out */
	assert_int_equal(stats(A).timeouts, a0.timeouts);
	free(buf);
}

/* Draining: C takes no more offloads (refused at once, then off A's ring),
 * and hands the copies it holds for A over to B, the other lender. Last: C
 * stays draining. */
static void test_drain_hands_lent_copies_over(void **state)
{
	enum { N = 12, SZ = 256 * 1024 };
	uint8_t *src = malloc(SZ), *buf = malloc(SZ);
	struct iovec iov = {src, SZ};
	struct remote_stats b0, c0;
	struct remote_holder h[4];
	char name[64], **paths;
	uint64_t size, bytes;
	int n, on_c = 0;

	(void)state;
	NEED_REDIS();
	wait_cluster();
	/* A's files are 1000's, 0640: their copies keep that through the drain. */
	pthread_mutex_lock(&dA.lock);
	dA.attrs = (struct remote_attrs){.file = {1000, 100, 0640}, .ndirs = 1};
	dA.attrs.dirs[0] = (struct remote_attr){1000, 100, 0750};
	dA.give_attrs = true;
	pthread_mutex_unlock(&dA.lock);
	c0 = stats(C);
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "drain/%02d.bin", i);
		tl_fill(src, SZ, 100 + (uint64_t)i);
		assert_int_equal(remote_offload(A, name, &iov, 1, remote_checksum(&iov, 1)), 0);
	}
	pthread_mutex_lock(&dA.lock);
	dA.give_attrs = false;
	pthread_mutex_unlock(&dA.lock);
	on_c = (int)(stats(C).offloads_received - c0.offloads_received);
	assert_true(on_c > 0 && on_c < N); /* the ring spreads 12 paths over two lenders */
	assert_int_equal(remote_flush(C, 2000), 0);
	n = remote_lent_paths(C, &paths);
	assert_int_equal(n, on_c);
	/* Not while C still lends: the ring could pick C itself again. */
	assert_int_equal(remote_hand_over_lent(C, paths[0], NULL), -EINVAL);

	remote_set_draining(C);
	assert_true(remote_draining(C));
	/* A has not seen C's new heartbeat yet: C refuses the copy itself. */
	assert_int_equal(rdma_offload_to(A, rdma_peer_find(A, "C"), "drain/late.bin", &iov, 1, SZ,
					 remote_checksum(&iov, 1)),
			 -ENOSPC);
	/* Then A's ring has no C: every new offload goes to B. */
	for (int i = 0; i < 300; i++) {
		struct remote_peer p[8];
		int np = remote_peers(A, p, 8);
		bool gone = false;

		for (int k = 0; k < np && k < 8; k++)
			gone |= strcmp(p[k].node, "C") == 0 && p[k].alive && p[k].lend_total == 0;
		if (gone)
			break;
		tl_sleep_ms(10);
	}
	c0 = stats(C);
	b0 = stats(B);
	for (int i = 0; i < N; i++) {
		snprintf(name, sizeof(name), "drain/new%02d.bin", i);
		assert_int_equal(remote_offload(A, name, &iov, 1, remote_checksum(&iov, 1)), 0);
	}
	assert_int_equal(stats(C).offloads_received, c0.offloads_received);
	assert_int_equal(stats(B).offloads_received, b0.offloads_received + N);

	/* C hands its copies over: each is at B now, byte-exact. */
	for (int i = 0; i < n; i++) {
		assert_int_equal(remote_hand_over_lent(C, paths[i], &bytes), 0);
		assert_int_equal(bytes, SZ);
	}
	assert_int_equal(remote_flush(C, 2000), 0);
	assert_int_equal(remote_flush(B, 2000), 0);
	for (int i = 0; i < n; i++) {
		int k = atoi(paths[i] + strlen("drain/"));

		assert_int_equal(remote_where(A, paths[i], h, 4), 1);
		assert_string_equal(h[0].node, "B");
		assert_int_equal(h[0].tier, REMOTE_TIER_LENT);
		assert_int_equal(remote_fetch_buf(A, paths[i], buf, SZ, &size), 0);
		tl_fill(src, SZ, 100 + (uint64_t)k);
		assert_memory_equal(buf, src, SZ);
		{
			struct remote_fetch_info info;
			struct remote_sink sk = {one_buf_prepare, buf};

			assert_int_equal(remote_fetch(A, paths[i], &sk, &info), 0);
			assert_int_equal(info.attrs.file.uid, 1000);
			assert_int_equal(info.attrs.file.mode, 0640);
			assert_int_equal(info.attrs.ndirs, 1);
			assert_int_equal(info.attrs.dirs[0].mode, 0750);
		}
	}
	assert_int_equal(remote_hand_over_lent(C, paths[0], NULL), -ENOENT); /* gone */
	remote_free_paths(paths, (size_t)n);
	assert_int_equal(remote_lent_paths(C, &paths), 0);
	remote_free_paths(paths, 0);
	assert_int_equal(stats(C).lend_used, 0);
	free(src);
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fetch_through_index),
		cmocka_unit_test(test_stale_entry_repaired),
		cmocka_unit_test(test_corruption_falls_back),
		cmocka_unit_test(test_busy_holder_and_sink_error),
		cmocka_unit_test(test_offload_via_ring),
		cmocka_unit_test(test_take_lent),
		cmocka_unit_test(test_wrong_token_holder_skipped),
		cmocka_unit_test(test_restarted_then_killed_node),
		cmocka_unit_test(test_drain_hands_lent_copies_over),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
