/*
 * tests/fuzz/fuzz_proto.c — every cluster message decoder (rdma/proto.c):
 * what a node reads from the cluster port, before and after the handshake.
 *
 * Input: the bytes of one message as they arrive (rdma_msg_decode() is the
 * one decoder of every type; the type is a header field, so the fuzzer
 * reaches each through the seeds, one valid message per type).
 *
 * Oracles besides the sanitizers:
 *   - decoding is exact: a message that decodes encodes again to the same
 *     bytes (the MAC field aside, which the encoder leaves zero) — nothing
 *     is accepted that the encoder could not have written;
 *   - a message signed with a key verifies with it and not with another,
 *     and stops verifying when any byte after the header changes.
 */
#include <errno.h>
#include <string.h>

#include "rdma/rdma_i.h"
#include "tests/fuzz/fuzz.h"

#define H_MAC 32

static struct rdma_msg m;
static uint8_t buf[RDMA_MSG_SIZE], out[RDMA_MSG_SIZE];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t key[32] = {1, 2, 3}, other[32] = {3, 2, 1};
	int rc, n;

	memset(&m, 0xa5, sizeof(m)); /* decoding must not depend on what was there */
	rc = rdma_msg_decode(data, size, &m);
	CHECK(rc == 0 || rc == -EBADMSG || rc == -EPROTONOSUPPORT);
	(void)rdma_msg_unsigned(data, size);
	(void)rdma_msg_verify(data, size, key);
	if (rc)
		return 0;
	CHECK(m.type > 0 && m.type < RDMA_MSG_TYPE_MAX);
	CHECK(strcmp(rdma_msg_name(m.type), "?") != 0);

	n = rdma_msg_encode(&m, out, sizeof(out));
	CHECK(n >= RDMA_HDR_SIZE && (size_t)n == size);
	memcpy(buf, data, size);
	memset(buf + H_MAC, 0, RDMA_MAC_LEN);
	CHECK(memcmp(buf, out, size) == 0);

	rdma_msg_sign(buf, size, key);
	CHECK(rdma_msg_verify(buf, size, key));
	CHECK(!rdma_msg_verify(buf, size, other));
	if (size > RDMA_HDR_SIZE) {
		buf[size - 1] ^= 1;
		CHECK(!rdma_msg_verify(buf, size, key));
	}
	return 0;
}
