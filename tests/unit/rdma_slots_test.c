/*
 * tests/unit/rdma_slots_test.c — the CLUSTER SLOTS walk of rdma/rcluster.c
 * (rdma_slots_reply) on replies parsed by hiredis's own reader: ranges
 * clipped to the 16384 slots before they are walked, malformed entries and
 * out-of-range ports skipped, "?" as the asked node's own address.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "rdma/rdma_i.h"

struct seen {
	int n;
	struct rdma_slot_range r[8];
	char host[8][64];
};

static void note(void *ctx, const struct rdma_slot_range *r)
{
	struct seen *s = ctx;

	if (s->n < 8) {
		s->r[s->n] = *r;
		memcpy(s->host[s->n], r->host, r->host_len < 63 ? r->host_len : 63);
	}
	s->n++;
}

static redisReply *parse(const char *resp)
{
	redisReader *rd = redisReaderCreate();
	void *reply = NULL;

	assert_non_null(rd);
	assert_int_equal(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
	assert_int_equal(redisReaderGetReply(rd, &reply), REDIS_OK);
	assert_non_null(reply);
	redisReaderFree(rd);
	return reply;
}

static void test_clipped(void **state)
{
	/*
	 * A range from LLONG_MIN was walked one number at a time from there
	 * (about 2^63 steps: the index thread hung); one past the last slot
	 * was cut at 16383 already.
	 */
	redisReply *rep = parse("*2\r\n"
				"*3\r\n:-9223372036854775808\r\n:5\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n"
				"*3\r\n:16000\r\n:9223372036854775807\r\n*2\r\n$1\r\n?\r\n:7001\r\n");
	struct seen s = {0};

	(void)state;
	assert_int_equal(rdma_slots_reply(rep, note, &s), 2);
	assert_int_equal(s.r[0].first, 0);
	assert_int_equal(s.r[0].last, 5);
	assert_string_equal(s.host[0], "127.0.0.1");
	assert_int_equal(s.r[0].port, 7000);
	assert_int_equal(s.r[1].first, 16000);
	assert_int_equal(s.r[1].last, 16383);
	assert_int_equal(s.r[1].host_len, 0); /* "?": the node asked */
	freeReplyObject(rep);
}

static void test_skipped(void **state)
{
	redisReply *rep = parse("*5\r\n"
				"*3\r\n:10\r\n:5\r\n*2\r\n$1\r\na\r\n:7000\r\n"         /* empty */
				"*3\r\n:16384\r\n:20000\r\n*2\r\n$1\r\na\r\n:7000\r\n"  /* no slot */
				"*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:4294973675\r\n"    /* port */
				"*2\r\n:0\r\n:1\r\n"                                     /* short */
				"*3\r\n:0\r\n:1\r\n*2\r\n$1\r\na\r\n:6379\r\n");
	struct seen s = {0};

	(void)state;
	assert_int_equal(rdma_slots_reply(rep, note, &s), 1);
	assert_int_equal(s.r[0].port, 6379);
	freeReplyObject(rep);
	rep = parse("-ERR no cluster\r\n");
	assert_int_equal(rdma_slots_reply(rep, note, &s), -EBADMSG);
	freeReplyObject(rep);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_clipped),
		cmocka_unit_test(test_skipped),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
