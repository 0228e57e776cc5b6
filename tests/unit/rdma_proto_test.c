/*
 * tests/unit/rdma_proto_test.c — the control protocol's wire format and
 * cryptography (rdma/proto.c), without a fabric: every message type
 * round-trips; the byte layout is pinned (offsets and little-endian
 * fields); every kind of malformed input — truncation, a stray byte, a bad
 * magic, another version, an unknown type, non-zero padding, a status in a
 * request, a path that is absolute, empty, with "..", a NUL or too long, a
 * node id with a bad character, run lists that do not add up — is refused;
 * encoding refuses what decoding would; MACs detect any flipped bit; the
 * handshake proofs depend on every input and differ by role; the sequence
 * number sits under the MAC, and the replay window accepts each number once
 * (in any order within the window) and refuses a replay; owner and mode
 * (ATTRS) travel in FILE and OFFLOAD and are checked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rdma/rdma_i.h"

static struct rdma_msg *msg_new(uint16_t type)
{
	struct rdma_msg *m = calloc(1, sizeof(*m));

	m->type = type;
	m->req_id = 0x1122334455667788ull;
	m->session = 0xabcdef0000000007ull;
	return m;
}

static void set_path(struct rdma_msg *m, const char *p)
{
	m->u.path.path_len = (uint32_t)strlen(p);
	memcpy(m->u.path.path, p, strlen(p) + 1);
}

/* Encode, decode, compare the decoded fields that matter. */
static int round_trip(const struct rdma_msg *m, struct rdma_msg *out, uint8_t *buf)
{
	int len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);

	if (len < 0)
		return len;
	memset(out, 0xee, sizeof(*out));
	assert_int_equal(rdma_msg_decode(buf, (size_t)len, out), 0);
	assert_int_equal(out->type, m->type);
	assert_int_equal(out->status, m->status);
	assert_int_equal(out->req_id, m->req_id);
	assert_int_equal(out->session, m->session);
	assert_int_equal(out->seq, m->seq);
	return len;
}

static void test_round_trip_all_types(void **state)
{
	uint8_t *buf = malloc(RDMA_MSG_SIZE);
	struct rdma_msg *m, *o = malloc(sizeof(*o));
	int len;

	(void)state;
	m = msg_new(RDMA_MSG_HELLO);
	m->session = 0;
	strcpy(m->u.hello.node, "node-1.a_b");
	m->u.hello.addr_len = 16;
	memset(m->u.hello.addr, 0xa5, 16);
	memset(m->u.hello.nonce, 0x3c, RDMA_NONCE_LEN);
	len = round_trip(m, o, buf);
	assert_int_equal(len, RDMA_HDR_SIZE + 64 + 4 + 64 + 32);
	assert_string_equal(o->u.hello.node, "node-1.a_b");
	assert_int_equal(o->u.hello.addr_len, 16);
	assert_memory_equal(o->u.hello.addr, m->u.hello.addr, 16);
	assert_memory_equal(o->u.hello.nonce, m->u.hello.nonce, RDMA_NONCE_LEN);
	free(m);

	m = msg_new(RDMA_MSG_CHALLENGE);
	strcpy(m->u.challenge.node, "srv");
	memset(m->u.challenge.nonce, 1, RDMA_NONCE_LEN);
	memset(m->u.challenge.mac, 2, 32);
	round_trip(m, o, buf);
	assert_string_equal(o->u.challenge.node, "srv");
	assert_memory_equal(o->u.challenge.mac, m->u.challenge.mac, 32);
	free(m);

	m = msg_new(RDMA_MSG_PROVE);
	memset(m->u.prove.mac, 9, 32);
	round_trip(m, o, buf);
	assert_memory_equal(o->u.prove.mac, m->u.prove.mac, 32);
	free(m);

	m = msg_new(RDMA_MSG_WELCOME);
	m->u.welcome.warm_addr = 0x1000;
	m->u.welcome.warm_key = 77;
	m->u.welcome.warm_len = RDMA_WARM_LEN;
	round_trip(m, o, buf);
	assert_int_equal(o->u.welcome.warm_key, 77);
	free(m);

	m = msg_new(RDMA_MSG_OFFLOAD);
	set_path(m, "llama/ab/cd/0123.bin");
	m->seq = 0x0102030405060708ull;
	m->u.path.size = 1 << 20;
	m->u.path.checksum = 0xfeedull;
	m->u.path.attrs.file = (struct remote_attr){1000, 100, 0640};
	m->u.path.attrs.ndirs = 3;
	m->u.path.attrs.dirs[2] = (struct remote_attr){0, 0, 0700};
	len = round_trip(m, o, buf);
	assert_int_equal(len, RDMA_HDR_SIZE + 24 + 20 + 16 + 3 * 12);
	assert_string_equal(o->u.path.path, "llama/ab/cd/0123.bin");
	assert_int_equal(o->u.path.size, 1 << 20);
	assert_int_equal(o->u.path.checksum, 0xfeed);
	assert_memory_equal(&o->u.path.attrs, &m->u.path.attrs, sizeof(m->u.path.attrs));
	free(m);

	m = msg_new(RDMA_MSG_FILE);
	m->u.file.lease = 5;
	m->u.file.size = 3000;
	m->u.file.checksum = 1;
	m->u.file.key = 2;
	m->u.file.total = 5;
	m->u.file.first = 2;
	m->u.file.n = 2;
	m->u.file.tier = REMOTE_TIER_DRAM;
	m->u.file.run[0] = (struct rdma_run){100, 1000};
	m->u.file.run[1] = (struct rdma_run){5000, 1000};
	m->u.file.attrs.file = (struct remote_attr){0, 0, 0600};
	m->u.file.attrs.ndirs = 1;
	m->u.file.attrs.dirs[0] = (struct remote_attr){0, 0, 01700};
	len = round_trip(m, o, buf);
	assert_int_equal(len, RDMA_HDR_SIZE + 48 + 16 + 12 + 2 * 16);
	assert_int_equal(o->u.file.run[1].addr, 5000);
	assert_int_equal(o->u.file.first, 2);
	assert_memory_equal(&o->u.file.attrs, &m->u.file.attrs, sizeof(m->u.file.attrs));
	/* A full reply with every directory still fits one buffer. */
	m->u.file.size = RDMA_RUNS_PER_MSG;
	m->u.file.total = m->u.file.n = RDMA_RUNS_PER_MSG;
	m->u.file.first = 0;
	for (int i = 0; i < RDMA_RUNS_PER_MSG; i++)
		m->u.file.run[i] = (struct rdma_run){(uint64_t)i * 2, 1};
	m->u.file.attrs.ndirs = REMOTE_ATTR_DIRS;
	assert_int_equal(round_trip(m, o, buf), RDMA_MSG_SIZE);
	/* A mode beyond the permission bits, or too many directories, is refused. */
	m->u.file.attrs.ndirs = REMOTE_ATTR_DIRS + 1;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.attrs.ndirs = 1;
	m->u.file.attrs.file.mode = 0100600;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.attrs.file.mode = 0600;
	m->u.file.attrs.dirs[0].mode = 010000;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.attrs.dirs[0].mode = 0700;
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	assert_true(len > 0);
	buf[RDMA_HDR_SIZE + 48 + 16 + 9] = 0x10; /* dirs[0].mode = 010700 on the wire */
	assert_int_equal(rdma_msg_decode(buf, (size_t)len, o), -EBADMSG);
	buf[RDMA_HDR_SIZE + 48 + 16 + 9] = 0;
	buf[RDMA_HDR_SIZE + 48 + 12] = 2; /* ndirs 2: the runs no longer add up */
	assert_int_equal(rdma_msg_decode(buf, (size_t)len, o), -EBADMSG);
	free(m);

	m = msg_new(RDMA_MSG_DONE);
	m->status = -EBADMSG;
	m->u.ref.lease = 1025;
	round_trip(m, o, buf);
	assert_int_equal(o->status, -EBADMSG);
	free(m);

	m = msg_new(RDMA_MSG_RELEASE);
	m->req_id = 0; /* the only message without a request id */
	m->u.ref.lease = 9;
	round_trip(m, o, buf);
	free(m);

	m = msg_new(RDMA_MSG_STATUS);
	m->status = -ENOENT;
	assert_int_equal(round_trip(m, o, buf), RDMA_HDR_SIZE);
	free(m);
	free(o);
	free(buf);
}

/* The layout is the contract between nodes: pin it. */
static void test_layout_pinned(void **state)
{
	uint8_t *buf = malloc(RDMA_MSG_SIZE);
	struct rdma_msg *m = msg_new(RDMA_MSG_LOOKUP);
	static const uint8_t hdr[32] = {
		'K',  'V',    'R',  'M',  2,	0,    RDMA_MSG_LOOKUP,
		0,    24 + 3, 0,    0,	  0,	0,    0,
		0,    0,      0x88, 0x77, 0x66, 0x55, 0x44,
		0x33, 0x22,   0x11, 7,	  0,	0,    0,
		0,    0xef,   0xcd, 0xab,
	};

	(void)state;
	set_path(m, "a/b");
	m->seq = 0x0807060504030201ull;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), RDMA_HDR_SIZE + 27);
	assert_memory_equal(buf, hdr, sizeof(hdr));
	for (int i = 32; i < 48; i++)
		assert_int_equal(buf[i], 0); /* mac (unsigned) */
	for (int i = 48; i < 56; i++)
		assert_int_equal(buf[i], i - 47); /* seq, little-endian */
	for (int i = 56; i < RDMA_HDR_SIZE; i++)
		assert_int_equal(buf[i], 0);	      /* reserved */
	assert_int_equal(buf[RDMA_HDR_SIZE + 16], 3); /* path_len */
	assert_memory_equal(buf + RDMA_HDR_SIZE + 24, "a/b", 3);
	free(m);
	free(buf);
}

static int decode_bytes(const uint8_t *buf, size_t len)
{
	struct rdma_msg *o = malloc(sizeof(*o));
	int rc = rdma_msg_decode(buf, len, o);

	free(o);
	return rc;
}

static void test_malformed_refused(void **state)
{
	static uint8_t buf[RDMA_MSG_SIZE], b2[RDMA_MSG_SIZE];
	struct rdma_msg *m = msg_new(RDMA_MSG_LOOKUP);
	int len;

	(void)state;
	set_path(m, "dir/file.bin");
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	assert_int_equal(decode_bytes(buf, (size_t)len), 0);

	/* Every truncation, and one byte too many. */
	for (int cut = 0; cut < len; cut++)
		assert_int_equal(decode_bytes(buf, (size_t)cut), -EBADMSG);
	memcpy(b2, buf, (size_t)len);
	b2[len] = 'x';
	assert_int_equal(decode_bytes(b2, (size_t)len + 1), -EBADMSG);
	assert_int_equal(decode_bytes(buf, RDMA_MSG_SIZE + 1), -EBADMSG);

#define MUTATE(off, val, want)                                                                     \
	do {                                                                                       \
		memcpy(b2, buf, (size_t)len);                                                      \
		b2[off] = (uint8_t)(val);                                                          \
		assert_int_equal(decode_bytes(b2, (size_t)len), want);                             \
	} while (0)

	MUTATE(0, 'X', -EBADMSG);		/* magic */
	MUTATE(4, 1, -EPROTONOSUPPORT);		/* version 1: no sequence numbers */
	MUTATE(6, 0, -EBADMSG);			/* type 0 */
	MUTATE(6, RDMA_MSG_TYPE_MAX, -EBADMSG); /* unknown type */
	MUTATE(6, RDMA_MSG_RUNS, -EBADMSG);	/* a LOOKUP body read as RUNS */
	MUTATE(8, len, -EBADMSG);		/* payload length */
	MUTATE(12, 0xfe, -EBADMSG);		/* a status in a request */
	memcpy(b2, buf, (size_t)len);
	memset(b2 + 16, 0, 8);
	assert_int_equal(decode_bytes(b2, (size_t)len), -EBADMSG); /* request id 0 */
	MUTATE(56, 1, -EBADMSG);				   /* reserved */
	MUTATE(63, 1, -EBADMSG);
	MUTATE(RDMA_HDR_SIZE + 20, 1, -EBADMSG);    /* padding */
	MUTATE(RDMA_HDR_SIZE + 0, 1, -EBADMSG);	    /* a size in a LOOKUP */
	MUTATE(RDMA_HDR_SIZE + 16, 11, -EBADMSG);   /* path_len */
	MUTATE(RDMA_HDR_SIZE + 24, '/', -EBADMSG);  /* absolute */
	MUTATE(RDMA_HDR_SIZE + 27, '\0', -EBADMSG); /* NUL inside */
	memcpy(b2, buf, (size_t)len);
	memcpy(b2 + RDMA_HDR_SIZE + 24, "dir/../x.bin", 12);
	assert_int_equal(decode_bytes(b2, (size_t)len), -EBADMSG);
	memcpy(b2 + RDMA_HDR_SIZE + 24, "dir//file.bi", 12);
	assert_int_equal(decode_bytes(b2, (size_t)len), -EBADMSG);
	memcpy(b2 + RDMA_HDR_SIZE + 24, "dir/./file.b", 12);
	assert_int_equal(decode_bytes(b2, (size_t)len), -EBADMSG);
	memcpy(b2 + RDMA_HDR_SIZE + 24, "dir/file.bi/", 12);
	assert_int_equal(decode_bytes(b2, (size_t)len), -EBADMSG);
#undef MUTATE

	/* Encoding refuses the same things. */
	set_path(m, "../x");
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	memset(m->u.path.path, 'a', REMOTE_PATH_MAX);
	m->u.path.path_len = REMOTE_PATH_MAX; /* no room for the NUL */
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.path.path[REMOTE_PATH_MAX - 1] = '\0';
	m->u.path.path_len = REMOTE_PATH_MAX - 1; /* the longest path that fits */
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	assert_int_equal(len, RDMA_HDR_SIZE + 24 + REMOTE_PATH_MAX - 1);
	assert_int_equal(decode_bytes(buf, (size_t)len), 0);
	m->status = -1;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	free(m);

	/* STATUS must carry an error; an error must fit an errno. */
	m = msg_new(RDMA_MSG_STATUS);
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->status = -5000;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->status = 3;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	free(m);
}

static void test_hello_fields(void **state)
{
	uint8_t *buf = malloc(RDMA_MSG_SIZE);
	struct rdma_msg *m = msg_new(RDMA_MSG_HELLO);
	int len;

	(void)state;
	m->session = 0;
	strcpy(m->u.hello.node, "n1");
	m->u.hello.addr_len = 16;
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	assert_true(len > 0);
	/* Bytes after the node id's NUL, or after the address, must be zero. */
	buf[RDMA_HDR_SIZE + 10] = 'x';
	assert_int_equal(decode_bytes(buf, (size_t)len), -EBADMSG);
	buf[RDMA_HDR_SIZE + 10] = 0;
	buf[RDMA_HDR_SIZE + 68 + 20] = 1;
	assert_int_equal(decode_bytes(buf, (size_t)len), -EBADMSG);
	buf[RDMA_HDR_SIZE + 68 + 20] = 0;
	buf[RDMA_HDR_SIZE + 64] = 65; /* addr_len > 64 */
	assert_int_equal(decode_bytes(buf, (size_t)len), -EBADMSG);
	buf[RDMA_HDR_SIZE + 64] = 0;
	assert_int_equal(decode_bytes(buf, (size_t)len), -EBADMSG);
	buf[RDMA_HDR_SIZE + 64] = 16;
	buf[RDMA_HDR_SIZE + 1] = ' '; /* "n " */
	assert_int_equal(decode_bytes(buf, (size_t)len), -EBADMSG);
	buf[RDMA_HDR_SIZE + 1] = '1';
	assert_int_equal(decode_bytes(buf, (size_t)len), 0);
	/* A HELLO names no session. */
	m->session = 5;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	free(m);
	free(buf);
}

static void test_runs_checked(void **state)
{
	uint8_t *buf = malloc(RDMA_MSG_SIZE);
	struct rdma_msg *m = msg_new(RDMA_MSG_FILE);

	(void)state;
	m->u.file.size = 100;
	m->u.file.total = 2;
	m->u.file.n = 2;
	m->u.file.tier = REMOTE_TIER_LENT;
	m->u.file.run[0] = (struct rdma_run){0, 60};
	m->u.file.run[1] = (struct rdma_run){4096, 40};
	assert_true(rdma_msg_encode(m, buf, RDMA_MSG_SIZE) > 0);
	m->u.file.run[1].len = 41; /* more bytes than the file */
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.run[1].len = 0; /* an empty run */
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.run[1].len = 40;
	m->u.file.first = 1; /* first + n > total */
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.first = 0;
	m->u.file.tier = 9;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.tier = REMOTE_TIER_LENT;
	m->u.file.total = 101; /* more runs than bytes */
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.total = 2;
	m->u.file.n = RDMA_RUNS_PER_MSG + 1;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	/* A grant comes whole and covers the file exactly. */
	m->type = RDMA_MSG_GRANT;
	m->u.file.n = 1;
	m->u.file.total = 1;
	m->u.file.run[0].len = 100;
	assert_true(rdma_msg_encode(m, buf, RDMA_MSG_SIZE) > 0);
	m->u.file.run[0].len = 99;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->u.file.run[0].len = 100;
	m->u.file.total = 2;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	/* Decoding: a run count the payload length disagrees with. */
	m->u.file.total = 1;
	{
		int len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);

		buf[RDMA_HDR_SIZE + 40] = 2;
		assert_int_equal(decode_bytes(buf, (size_t)len), -EBADMSG);
	}
	free(m);
	free(buf);
}

static void test_mac(void **state)
{
	uint8_t *buf = malloc(RDMA_MSG_SIZE), key[32], other[32];
	struct rdma_msg *m = msg_new(RDMA_MSG_OFFLOAD);
	int len;

	(void)state;
	memset(key, 7, sizeof(key));
	memcpy(other, key, sizeof(key));
	other[31] ^= 1;
	set_path(m, "x/y");
	m->u.path.size = 10;
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	assert_true(rdma_msg_unsigned(buf, (size_t)len));
	assert_false(rdma_msg_verify(buf, (size_t)len, key));
	rdma_msg_sign(buf, (size_t)len, key);
	assert_false(rdma_msg_unsigned(buf, (size_t)len));
	assert_true(rdma_msg_verify(buf, (size_t)len, key));
	assert_false(rdma_msg_verify(buf, (size_t)len, other));
	/* Any flipped bit anywhere, the MAC included, is caught. */
	for (int i = 0; i < len; i++) {
		for (int bit = 0; bit < 8; bit += 7) {
			buf[i] ^= (uint8_t)(1u << bit);
			assert_false(rdma_msg_verify(buf, (size_t)len, key));
			buf[i] ^= (uint8_t)(1u << bit);
		}
	}
	assert_true(rdma_msg_verify(buf, (size_t)len, key));
	assert_false(rdma_msg_verify(buf, (size_t)len - 1, key));
	free(m);
	free(buf);
}

/* The sequence number is covered by the MAC: a replayed message cannot be
 * renumbered. */
static void test_seq_under_mac(void **state)
{
	uint8_t *buf = malloc(RDMA_MSG_SIZE), key[32];
	struct rdma_msg *m = msg_new(RDMA_MSG_LOOKUP);
	int len;

	(void)state;
	memset(key, 3, sizeof(key));
	set_path(m, "x/y");
	m->seq = 5;
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	rdma_msg_sign(buf, (size_t)len, key);
	assert_true(rdma_msg_verify(buf, (size_t)len, key));
	buf[48] = 6;
	assert_false(rdma_msg_verify(buf, (size_t)len, key));
	free(m);
	/* Handshake messages (not MACed) carry none. */
	m = msg_new(RDMA_MSG_PROVE);
	m->seq = 1;
	assert_int_equal(rdma_msg_encode(m, buf, RDMA_MSG_SIZE), -EINVAL);
	m->seq = 0;
	len = rdma_msg_encode(m, buf, RDMA_MSG_SIZE);
	buf[48] = 1;
	assert_int_equal(decode_bytes(buf, (size_t)len), -EBADMSG);
	free(m);
	free(buf);
}

static void test_replay_window(void **state)
{
	struct rdma_replay w = {0};

	(void)state;
	assert_false(rdma_replay_accept(&w, 0)); /* numbers start at 1 */
	assert_true(rdma_replay_accept(&w, 1));
	assert_false(rdma_replay_accept(&w, 1)); /* a replay */
	assert_true(rdma_replay_accept(&w, 2));
	/* Out of order within the window: each once. */
	assert_true(rdma_replay_accept(&w, 10));
	assert_true(rdma_replay_accept(&w, 7));
	assert_false(rdma_replay_accept(&w, 7));
	assert_true(rdma_replay_accept(&w, 3));
	assert_false(rdma_replay_accept(&w, 10));
	assert_false(rdma_replay_accept(&w, 2));
	/* The window slides: what fell out of it is refused, seen or not. */
	assert_true(rdma_replay_accept(&w, 10 + RDMA_REPLAY_WINDOW - 1));
	assert_true(rdma_replay_accept(&w, 11));
	assert_false(rdma_replay_accept(&w, 9));
	assert_false(rdma_replay_accept(&w, 10));
	assert_true(rdma_replay_accept(&w, 1000));
	assert_false(rdma_replay_accept(&w, 1000 - RDMA_REPLAY_WINDOW));
	assert_true(rdma_replay_accept(&w, 1000 - RDMA_REPLAY_WINDOW + 1));
	assert_true(rdma_replay_accept(&w, UINT64_MAX));
	assert_false(rdma_replay_accept(&w, UINT64_MAX));
}

static void test_hello_proofs(void **state)
{
	const uint8_t tok[] = "0123456789abcdef-token";
	uint8_t nc[RDMA_NONCE_LEN], ns[RDMA_NONCE_LEN], a[32], b[32], k1[32], k2[32];

	(void)state;
	memset(nc, 1, sizeof(nc));
	memset(ns, 2, sizeof(ns));
	rdma_hello_mac(tok, sizeof(tok) - 1, true, nc, ns, 99, "s", "c", a);
	rdma_hello_mac(tok, sizeof(tok) - 1, true, nc, ns, 99, "s", "c", b);
	assert_memory_equal(a, b, 32);
	/* The roles differ, so a server's proof cannot be replayed as a client's. */
	rdma_hello_mac(tok, sizeof(tok) - 1, false, nc, ns, 99, "s", "c", b);
	assert_memory_not_equal(a, b, 32);
	/* Every input matters. */
	rdma_hello_mac(tok, sizeof(tok) - 2, true, nc, ns, 99, "s", "c", b);
	assert_memory_not_equal(a, b, 32);
	rdma_hello_mac(tok, sizeof(tok) - 1, true, ns, nc, 99, "s", "c", b);
	assert_memory_not_equal(a, b, 32);
	rdma_hello_mac(tok, sizeof(tok) - 1, true, nc, ns, 98, "s", "c", b);
	assert_memory_not_equal(a, b, 32);
	rdma_hello_mac(tok, sizeof(tok) - 1, true, nc, ns, 99, "c", "s", b);
	assert_memory_not_equal(a, b, 32);
	rdma_hello_mac(tok, sizeof(tok) - 1, true, nc, ns, 99, "sc", "", b);
	assert_memory_not_equal(a, b, 32); /* node ids are delimited */
	rdma_session_key(tok, sizeof(tok) - 1, nc, ns, 99, k1);
	rdma_session_key(tok, sizeof(tok) - 1, nc, ns, 100, k2);
	assert_memory_not_equal(k1, k2, 32);
	assert_memory_not_equal(k1, a, 32);
}

static void test_validators(void **state)
{
	(void)state;
	assert_true(rdma_node_id_valid("a"));
	assert_true(rdma_node_id_valid("node-1.rack_2"));
	assert_false(rdma_node_id_valid(""));
	assert_false(rdma_node_id_valid("a b"));
	assert_false(rdma_node_id_valid("a:b"));
	assert_false(rdma_node_id_valid("a/b"));
	assert_true(rdma_node_id_valid(
		"012345678901234567890123456789012345678901234567890123456789012"));
	assert_false(rdma_node_id_valid(
		"0123456789012345678901234567890123456789012345678901234567890123"));
	assert_true(rdma_path_valid("a", 1));
	assert_true(rdma_path_valid("a/b/c.bin", 9));
	assert_true(rdma_path_valid("..a/b..", 7));
	assert_false(rdma_path_valid("", 0));
	assert_false(rdma_path_valid("/a", 2));
	assert_false(rdma_path_valid("a/", 2));
	assert_false(rdma_path_valid("a//b", 4));
	assert_false(rdma_path_valid(".", 1));
	assert_false(rdma_path_valid("a/..", 4));
	assert_false(rdma_path_valid("a\0b", 3));
	assert_int_equal(strcmp(rdma_msg_name(RDMA_MSG_GRANT), "GRANT"), 0);
	assert_int_equal(strcmp(rdma_msg_name(0), "?"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip_all_types), cmocka_unit_test(test_layout_pinned),
		cmocka_unit_test(test_malformed_refused),    cmocka_unit_test(test_hello_fields),
		cmocka_unit_test(test_runs_checked),	     cmocka_unit_test(test_mac),
		cmocka_unit_test(test_seq_under_mac),	     cmocka_unit_test(test_replay_window),
		cmocka_unit_test(test_hello_proofs),	     cmocka_unit_test(test_validators),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
