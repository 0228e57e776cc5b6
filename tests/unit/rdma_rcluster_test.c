/*
 * tests/unit/rdma_rcluster_test.c — the index on a Redis Cluster
 * (rdma/rcluster.c): hash slots (pure: CRC16 vectors, {hash tags}, and
 * agreement with the server's CLUSTER KEYSLOT); URLs; then against a real
 * cluster of 3 masters and 3 replicas of the installed redis-server on
 * loopback, started by this suite: the index's operations spread over the
 * masters and read back; a slot migrated under our feet (ASK while it
 * moves, MOVED once it has moved); a master killed mid-run: lookups keep
 * answering, never with a holder that is not one, and everything is found
 * again once the replica took over (the publisher resynchronises what the
 * asynchronous replica lost).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "rdma/rdma_i.h"
#include "tests/unit/rdma_testlib.h"

static struct tl_rcluster cl;
static bool cl_up;

static int group_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	if (!tl_have_rcluster())
		return 0; /* the cluster tests skip */
	cl_up = tl_rcluster_start(&cl) == 0;
	if (!cl_up)
		fprintf(stderr, "could not start a redis cluster\n");
	return cl_up ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	if (cl_up)
		tl_rcluster_stop(&cl);
	return 0;
}

#define NEED_CLUSTER()                                                                             \
	do {                                                                                       \
		if (!cl_up)                                                                        \
			skip();                                                                    \
	} while (0)

static redisContext *raw(int port)
{
	redisContext *c = redisConnect("127.0.0.1", port);

	assert_non_null(c);
	assert_int_equal(c->err, 0);
	return c;
}

/* Run one command on node @port and return its reply. */
static redisReply *on(int port, const char *fmt, ...)
{
	redisContext *c = raw(port);
	va_list ap;
	redisReply *r;

	va_start(ap, fmt);
	r = redisvCommand(c, fmt, ap);
	va_end(ap);
	assert_non_null(r);
	redisFree(c);
	return r;
}

static bool alive_port(int port)
{
	for (int i = 0; i < TL_RC_NODES; i++)
		if (cl.port[i] == port)
			return cl.pid[i] > 0;
	return false;
}

/* The port of the master serving @slot, as a live node tells. */
static int master_of(uint16_t slot)
{
	for (int i = 0; i < TL_RC_NODES; i++) {
		redisReply *r;
		int port = 0;

		if (cl.pid[i] <= 0)
			continue;
		r = on(cl.port[i], "CLUSTER SLOTS");
		for (size_t k = 0; r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
			redisReply *e = r->element[k];

			if (slot >= e->element[0]->integer && slot <= e->element[1]->integer)
				port = (int)e->element[2]->element[1]->integer;
		}
		freeReplyObject(r);
		if (port)
			return port;
	}
	return 0;
}

static void node_id(int port, char *out, size_t cap)
{
	redisReply *r = on(port, "CLUSTER MYID");

	assert_int_equal(r->type, REDIS_REPLY_STRING);
	snprintf(out, cap, "%s", r->str);
	freeReplyObject(r);
}

/* One command through @rc; its reply (to free). */
static redisReply *via(struct rdma_rconn *rc, int argc, const char **argv)
{
	size_t lens[8], n = 0;
	redisReply **reps, *rep;

	for (int i = 0; i < argc; i++)
		lens[i] = strlen(argv[i]);
	assert_int_equal(rdma_rconn_append(rc, argc, argv, lens), 0);
	assert_int_equal(rdma_rconn_exec(rc, &reps, &n), 0);
	assert_int_equal(n, 1);
	rep = reps[0];
	reps[0] = NULL;
	rdma_rconn_free_replies(reps, n);
	return rep;
}

/* --- pure ----------------------------------------------------------------- */

static void test_slots(void **state)
{
	(void)state;
	/* The reference vector of the cluster spec, and known slots. */
	assert_int_equal(rdma_crc16("123456789", 9), 0x31c3);
	assert_int_equal(rdma_key_slot("123456789", 9), 0x31c3);
	assert_int_equal(rdma_key_slot("foo", 3), 12182);
	assert_int_equal(rdma_key_slot("bar", 3), 5061);
	/* {hash tags}: the first {...} with something inside */
	assert_int_equal(rdma_key_slot("{user1000}.following", 20), rdma_key_slot("user1000", 8));
	assert_int_equal(rdma_key_slot("foo{bar}{zap}", 13), rdma_key_slot("bar", 3));
	assert_int_equal(rdma_key_slot("foo{{bar}}zap", 13), rdma_key_slot("{bar", 4));
	assert_int_equal(rdma_key_slot("foo{}{bar}", 10), rdma_crc16("foo{}{bar}", 10) & 16383);
	assert_int_equal(rdma_key_slot("foo{bar", 7), rdma_crc16("foo{bar", 7) & 16383);
	assert_int_equal(rdma_key_slot("", 0), 0);
}

static void test_urls(void **state)
{
	char err[256];
	static const char *const good[] = {
		"redis://127.0.0.1:6379",
		"unix:/tmp/x.sock",
		"unix:///tmp/x.sock",
		"redis-cluster://127.0.0.1:7000",
		"redis-cluster://a:1,b:2,[::1]:3",
	};
	static const char *const bad[] = {
		"redis-cluster://",
		"redis-cluster://a",
		"redis-cluster://a:0",
		"redis-cluster://a:70000",
		"redis-cluster://a:1,",
		"redis-cluster://,a:1",
		"redis-cluster://:1",
		"redis-cluster://a:1x",
		"http://a:1",
		"unix:",
		"redis://a",
		"redis-cluster:/a:1",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_int_equal(rdma_rconn_check_url(good[i], err, sizeof(err)), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_int_equal(rdma_rconn_check_url(bad[i], err, sizeof(err)), -EINVAL);
		assert_non_null(strstr(err, "redis-cluster://HOST:PORT"));
	}
}

/* --- against a real cluster --------------------------------------------- */

static void test_slots_agree_with_redis(void **state)
{
	redisContext *c;

	(void)state;
	NEED_CLUSTER();
	c = raw(cl.port[0]);
	for (int i = 0; i < 300; i++) {
		char key[96];
		redisReply *r;

		snprintf(key, sizeof(key), i % 3 ? "kvfs:f:model/%d/blk.bin" : "a{tag%d}b",
			 i * 7919);
		r = redisCommand(c, "CLUSTER KEYSLOT %s", key);
		assert_int_equal(r->type, REDIS_REPLY_INTEGER);
		assert_int_equal(r->integer, rdma_key_slot(key, strlen(key)));
		freeReplyObject(r);
	}
	redisFree(c);
}

static void test_not_a_cluster(void **state)
{
	struct rdma_rconn *rc = NULL;
	char url[300];
	int p = tl_free_port();
	pid_t pid;

	(void)state;
	NEED_CLUSTER();
	/* Nobody there: unreachable. */
	assert_int_equal(rdma_rconn_open("redis-cluster://127.0.0.1:1,127.0.0.1:2", 300, NULL, &rc),
			 -ENOTCONN);
	/* A plain server named as a cluster: refused, not misrouted. */
	pid = tl_redis_tcp(p);
	assert_true(pid > 0);
	snprintf(url, sizeof(url), "redis-cluster://127.0.0.1:%d", p);
	assert_int_equal(rdma_rconn_open(url, 300, NULL, &rc), -ENOTCONN);
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d", p);
	assert_int_equal(rdma_rconn_open(url, 300, NULL, &rc), 0);
	assert_false(rdma_rconn_is_cluster(rc));
	rdma_rconn_close(rc);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
}

#define stats tl_stats

static void wait_flush(remote *r)
{
	assert_int_equal(tl_flush(r, 500), 0);
}

static void wait_alive(remote *r, const char *id)
{
	for (int i = 0; i < 1000 && !tl_peer_alive(r, id); i++)
		tl_sleep_ms(10);
	assert_true(tl_peer_alive(r, id));
}

#define NPATH 384

static char names[NPATH + 64][64];
static const char *paths[NPATH + 64];

static void test_index_on_cluster(void **state)
{
	struct remote_loc loc[NPATH + 64];
	long long keys[TL_RC_NODES] = {0}, masters = 0;
	remote *A, *B;

	(void)state;
	NEED_CLUSTER();
	A = tl_open("nodeA", NULL, 0, cl.url, "ix", NULL, 1000, 100);
	B = tl_open("nodeB", NULL, 0, cl.url, "ix", NULL, 1000, 100);
	assert_non_null(A);
	assert_non_null(B);
	for (int i = 0; i < NPATH + 64; i++) {
		snprintf(names[i], sizeof(names[i]), "m/%s/%05d.bin", i < NPATH ? "p" : "never", i);
		paths[i] = names[i];
		if (i < NPATH)
			remote_publish(B, paths[i], i % 2 ? REMOTE_TIER_NVME : REMOTE_TIER_DRAM);
	}
	wait_flush(B);
	wait_alive(A, "nodeB");
	assert_int_equal(remote_locate(A, paths, NPATH + 64, loc), 0);
	for (int i = 0; i < NPATH + 64; i++) {
		assert_int_equal(loc[i].holders, i < NPATH);
		assert_int_equal(loc[i].tiers,
				 i >= NPATH ? 0
					    : 1u << (i % 2 ? REMOTE_TIER_NVME : REMOTE_TIER_DRAM));
	}
	assert_int_equal(remote_dir_exists(A, "m/p"), 1);
	assert_int_equal(remote_dir_exists(A, "m/never"), 0);
	/* The keys are spread over the three masters. */
	for (int i = 0; i < TL_RC_NODES; i++) {
		redisReply *r = on(cl.port[i], "DBSIZE"), *role = on(cl.port[i], "ROLE");

		if (strcmp(role->element[0]->str, "master") == 0) {
			keys[i] = r->integer;
			masters++;
			assert_true(keys[i] > NPATH / 10);
		}
		freeReplyObject(r);
		freeReplyObject(role);
	}
	assert_int_equal(masters, 3);
	/* unpublish, and leaving, reach every slot */
	remote_unpublish(B, paths[0]);
	wait_flush(B);
	assert_int_equal(remote_locate(A, paths, 2, loc), 0);
	assert_int_equal(loc[0].holders, 0);
	assert_int_equal(loc[1].holders, 1);
	remote_close(B);
	assert_int_equal(remote_locate(A, paths, NPATH, loc), 0);
	for (int i = 0; i < NPATH; i++)
		assert_int_equal(loc[i].holders, 0);
	assert_int_equal(stats(A).index_redirects, 0); /* the map was right */
	remote_close(A);
}

static void test_slot_migration_ask_then_moved(void **state)
{
	struct rdma_rconn_stats st = {0};
	struct rdma_rconn *rc;
	const char *key = "kvfs:f:migrating/slot.bin";
	uint16_t slot = rdma_key_slot(key, strlen(key));
	char sid[64], tid[64];
	redisReply *r;
	int S, T = 0;

	(void)state;
	NEED_CLUSTER();
	assert_int_equal(rdma_rconn_open(cl.url, 2000, &st, &rc), 0);
	assert_true(rdma_rconn_is_cluster(rc));
	r = via(rc, 3, (const char *[]){"SET", key, "v1"});
	assert_int_equal(r->type, REDIS_REPLY_STATUS);
	freeReplyObject(r);
	S = master_of(slot);
	for (int i = 0; i < TL_RC_NODES && !T; i++) {
		redisReply *role = on(cl.port[i], "ROLE");

		if (cl.port[i] != S && strcmp(role->element[0]->str, "master") == 0)
			T = cl.port[i];
		freeReplyObject(role);
	}
	assert_true(S && T);
	node_id(S, sid, sizeof(sid));
	node_id(T, tid, sizeof(tid));
	/* The slot moves from S to T, key by key: S answers ASK for the key
	 * already moved. */
	freeReplyObject(on(T, "CLUSTER SETSLOT %d IMPORTING %s", slot, sid));
	freeReplyObject(on(S, "CLUSTER SETSLOT %d MIGRATING %s", slot, tid));
	r = on(S, "MIGRATE 127.0.0.1 %d %s 0 5000", T, key);
	assert_int_equal(r->type, REDIS_REPLY_STATUS);
	freeReplyObject(r);
	r = via(rc, 2, (const char *[]){"GET", key});
	assert_int_equal(r->type, REDIS_REPLY_STRING);
	assert_string_equal(r->str, "v1");
	freeReplyObject(r);
	assert_int_equal(st.asked, 1);
	assert_int_equal(st.moved, 0);
	/* A write to the moving slot lands on T too. */
	r = via(rc, 3, (const char *[]){"SET", key, "v2"});
	assert_int_equal(r->type, REDIS_REPLY_STATUS);
	freeReplyObject(r);
	/* Done: the slot is T's. S now says MOVED, once; then the map knows. */
	for (int i = 0; i < TL_RC_NODES; i++)
		if (cl.pid[i] > 0)
			freeReplyObject(on(cl.port[i], "CLUSTER SETSLOT %d NODE %s", slot, tid));
	r = via(rc, 2, (const char *[]){"GET", key});
	assert_string_equal(r->str, "v2");
	freeReplyObject(r);
	assert_int_equal(st.moved, 1);
	r = via(rc, 2, (const char *[]){"GET", key});
	assert_string_equal(r->str, "v2");
	freeReplyObject(r);
	assert_int_equal(st.moved, 1);
	/* Put it back (the later tests kill masters by slot). */
	freeReplyObject(on(T, "DEL %s", key));
	for (int i = 0; i < TL_RC_NODES; i++)
		if (cl.pid[i] > 0)
			freeReplyObject(on(cl.port[i], "CLUSTER SETSLOT %d NODE %s", slot, sid));
	rdma_rconn_close(rc);
}

/* A stale map: every slot points at the wrong master; MOVED fixes each. */
static void test_stale_map_follows_moved(void **state)
{
	struct rdma_rconn_stats st = {0};
	struct rdma_rconn *rc;
	const char *argv[3];
	size_t lens[3], n;
	redisReply **reps;
	char keys[64][32];

	(void)state;
	NEED_CLUSTER();
	assert_int_equal(rdma_rconn_open(cl.url, 2000, &st, &rc), 0);
	rdma_rconn_debug_rotate_map(rc);
	for (int i = 0; i < 64; i++) {
		snprintf(keys[i], sizeof(keys[i]), "stale:%d", i);
		argv[0] = "SET";
		argv[1] = keys[i];
		argv[2] = keys[i];
		for (int k = 0; k < 3; k++)
			lens[k] = strlen(argv[k]);
		assert_int_equal(rdma_rconn_append(rc, 3, argv, lens), 0);
	}
	assert_int_equal(rdma_rconn_exec(rc, &reps, &n), 0);
	assert_int_equal(n, 64);
	for (int i = 0; i < 64; i++)
		assert_int_equal(reps[i]->type, REDIS_REPLY_STATUS);
	rdma_rconn_free_replies(reps, n);
	assert_true(st.moved > 0);
	for (int i = 0; i < 64; i++) {
		redisReply *r =
			on(master_of(rdma_key_slot(keys[i], strlen(keys[i]))), "GET %s", keys[i]);

		assert_string_equal(r->str, keys[i]);
		freeReplyObject(r);
		freeReplyObject(
			on(master_of(rdma_key_slot(keys[i], strlen(keys[i]))), "DEL %s", keys[i]));
	}
	rdma_rconn_close(rc);
}

/* Last: it leaves the cluster with a promoted replica and a dead node. */
static void test_master_failover_mid_run(void **state)
{
	struct remote_loc loc[NPATH + 64];
	char key[128];
	int victim, wrong = 0, rounds = 0, misses = 0;
	uint64_t t0, refreshes;
	remote *A, *B;
	bool all = false;

	(void)state;
	NEED_CLUSTER();
	A = tl_open("nodeA", NULL, 0, cl.url, "fo", NULL, 1000, 100);
	B = tl_open("nodeB", NULL, 0, cl.url, "fo", NULL, 1000, 100);
	assert_non_null(A);
	assert_non_null(B);
	for (int i = 0; i < NPATH + 64; i++) {
		snprintf(names[i], sizeof(names[i]), "f/%s/%05d.bin", i < NPATH ? "p" : "never", i);
		paths[i] = names[i];
		if (i < NPATH)
			remote_publish(B, paths[i], REMOTE_TIER_DRAM);
	}
	wait_flush(B);
	wait_alive(A, "nodeB");
	assert_int_equal(remote_locate(A, paths, NPATH + 64, loc), 0);
	for (int i = 0; i < NPATH; i++)
		assert_int_equal(loc[i].holders, 1);
	refreshes = stats(A).index_map_refreshes;

	/* Kill the master of the first path's entry, mid-run. */
	rdma_key(key, sizeof(key), "fo", "f:", paths[0]);
	victim = master_of(rdma_key_slot(key, strlen(key)));
	assert_true(victim > 0);
	for (int i = 0; i < TL_RC_NODES; i++)
		if (cl.port[i] == victim)
			tl_rcluster_kill(&cl, i);
	assert_false(alive_port(victim));
	t0 = tl_now_ms();
	while (!all && tl_now_ms() - t0 < 30000) {
		int rc = remote_locate(A, paths, NPATH + 64, loc);

		rounds++;
		all = rc == 0;
		for (int i = 0; i < NPATH + 64 && rc == 0; i++) {
			/* a miss is allowed while the slot has no master; a
			 * holder that is not one, or another tier, never */
			if (i >= NPATH && loc[i].holders)
				wrong++;
			if (i < NPATH && loc[i].holders > 1)
				wrong++;
			if (loc[i].holders && loc[i].tiers != 1u << REMOTE_TIER_DRAM)
				wrong++;
			if (i < NPATH && !loc[i].holders) {
				all = false;
				misses++;
			}
		}
		if (!all)
			tl_sleep_ms(50);
	}
	print_message("      master killed: every entry found again after %llu ms "
		      "(%d lookup rounds, %d misses on the way)\n",
		      (unsigned long long)(tl_now_ms() - t0), rounds, misses);
	assert_int_equal(wrong, 0);
	assert_true(all);
	assert_true(stats(A).index_map_refreshes > refreshes);
	/* The cluster still takes new entries, on the promoted replica too. */
	remote_publish(B, paths[NPATH], REMOTE_TIER_NVME);
	wait_flush(B);
	assert_int_equal(remote_locate(A, paths + NPATH, 1, loc), 0);
	assert_int_equal(loc[0].tiers, 1u << REMOTE_TIER_NVME);
	remote_close(B);
	remote_close(A);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_slots),
		cmocka_unit_test(test_urls),
		cmocka_unit_test(test_slots_agree_with_redis),
		cmocka_unit_test(test_not_a_cluster),
		cmocka_unit_test(test_index_on_cluster),
		cmocka_unit_test(test_slot_migration_ask_then_moved),
		cmocka_unit_test(test_stale_map_follows_moved),
		cmocka_unit_test(test_master_failover_mid_run),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
