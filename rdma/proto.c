/*
 * rdma/proto.c — the control protocol's wire format and its cryptography.
 *
 * Owns encoding and decoding of the fixed-layout messages described in
 * rdma_i.h, and the HMAC-SHA256 proofs of the HELLO handshake and the
 * per-message MACs (OpenSSL). Decoding never trusts its input: every field
 * is checked, padding must be zero, and a message that is not exactly as
 * long as its type says is refused. Encoding applies the same checks so a
 * bug on our side cannot put a malformed message on the wire.
 *
 * Pure functions, no state, no locks.
 */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "rdma/rdma_i.h"

/* Header offsets. */
#define H_MAGIC	  0
#define H_VERSION 4
#define H_TYPE	  6
#define H_LEN	  8
#define H_STATUS  12
#define H_REQ	  16
#define H_SESSION 24
#define H_MAC	  32
#define H_SEQ	  48
#define H_RSVD	  56

#define PATH_HDR    24 /* size, checksum, path_len, pad */
#define FILE_HDR    48
#define HELLO_LEN   (REMOTE_NODE_ID_MAX + 4 + RDMA_ADDR_MAX + RDMA_NONCE_LEN)
#define CHAL_LEN    (REMOTE_NODE_ID_MAX + RDMA_NONCE_LEN + 32)
#define WELCOME_LEN 24
#define REF_LEN	    16
#define ATTR_LEN    12
#define ATTRS_MIN   (ATTR_LEN + 4) /* the file's, ndirs */

static const char *const msg_names[RDMA_MSG_TYPE_MAX] = {
	[RDMA_MSG_HELLO] = "HELLO",	[RDMA_MSG_CHALLENGE] = "CHALLENGE",
	[RDMA_MSG_PROVE] = "PROVE",	[RDMA_MSG_WELCOME] = "WELCOME",
	[RDMA_MSG_REFUSED] = "REFUSED", [RDMA_MSG_LOOKUP] = "LOOKUP",
	[RDMA_MSG_FILE] = "FILE",	[RDMA_MSG_RUNS] = "RUNS",
	[RDMA_MSG_RELEASE] = "RELEASE", [RDMA_MSG_OFFLOAD] = "OFFLOAD",
	[RDMA_MSG_GRANT] = "GRANT",	[RDMA_MSG_DONE] = "DONE",
	[RDMA_MSG_FREE] = "FREE",	[RDMA_MSG_STATUS] = "STATUS",
};

const char *rdma_msg_name(unsigned type)
{
	return type && type < RDMA_MSG_TYPE_MAX ? msg_names[type] : "?";
}

/* --- little-endian fields ------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, 2);
}

static void put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static uint16_t get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return le16toh(v);
}

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

static bool all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* --- attributes (ATTRS in rdma_i.h) ---------------------------------------- */

static bool attr_ok(const struct remote_attr *a)
{
	return (a->mode & ~07777u) == 0;
}

static bool attrs_ok(const struct remote_attrs *a)
{
	if (a->ndirs > REMOTE_ATTR_DIRS || !attr_ok(&a->file))
		return false;
	for (uint32_t i = 0; i < a->ndirs; i++)
		if (!attr_ok(&a->dirs[i]))
			return false;
	return true;
}

static uint32_t attrs_len(const struct remote_attrs *a)
{
	return ATTRS_MIN + ATTR_LEN * a->ndirs;
}

static void put_attr(uint8_t *p, const struct remote_attr *a)
{
	put32(p, a->uid);
	put32(p + 4, a->gid);
	put32(p + 8, a->mode);
}

static void get_attr(const uint8_t *p, struct remote_attr *a)
{
	a->uid = get32(p);
	a->gid = get32(p + 4);
	a->mode = get32(p + 8);
}

static uint32_t put_attrs(uint8_t *p, const struct remote_attrs *a)
{
	put_attr(p, &a->file);
	put32(p + ATTR_LEN, a->ndirs);
	for (uint32_t i = 0; i < a->ndirs; i++)
		put_attr(p + ATTRS_MIN + ATTR_LEN * i, &a->dirs[i]);
	return attrs_len(a);
}

/* Decode ATTRS from the @avail bytes at @p. @return its length, or 0 if it
 * does not fit (the caller checks the rest). */
static uint32_t get_attrs(const uint8_t *p, uint32_t avail, struct remote_attrs *a)
{
	memset(a, 0, sizeof(*a));
	if (avail < ATTRS_MIN)
		return 0;
	get_attr(p, &a->file);
	a->ndirs = get32(p + ATTR_LEN);
	if (a->ndirs > REMOTE_ATTR_DIRS || avail < attrs_len(a))
		return 0;
	for (uint32_t i = 0; i < a->ndirs; i++)
		get_attr(p + ATTRS_MIN + ATTR_LEN * i, &a->dirs[i]);
	return attrs_len(a);
}

/* --- validation ----------------------------------------------------------- */

bool rdma_node_id_valid(const char *id)
{
	size_t n = strnlen(id, REMOTE_NODE_ID_MAX);

	if (n == 0 || n >= REMOTE_NODE_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

bool rdma_path_valid(const char *path, size_t len)
{
	size_t start = 0;

	if (len == 0 || len >= REMOTE_PATH_MAX || path[0] == '/')
		return false;
	if (memchr(path, '\0', len))
		return false;
	for (size_t i = 0; i <= len; i++) {
		if (i < len && path[i] != '/')
			continue;
		size_t n = i - start;

		if (n == 0 || (n == 1 && path[start] == '.') ||
		    (n == 2 && path[start] == '.' && path[start + 1] == '.'))
			return false;
		start = i + 1;
	}
	return true;
}

/* A fixed node field: NUL-terminated, valid, zero after the NUL. */
static bool node_field_ok(const uint8_t *p)
{
	size_t n = strnlen((const char *)p, REMOTE_NODE_ID_MAX);

	if (n >= REMOTE_NODE_ID_MAX || !all_zero(p + n, REMOTE_NODE_ID_MAX - n))
		return false;
	return rdma_node_id_valid((const char *)p);
}

static bool is_request(unsigned type)
{
	switch (type) {
	case RDMA_MSG_HELLO:
	case RDMA_MSG_PROVE:
	case RDMA_MSG_LOOKUP:
	case RDMA_MSG_RUNS:
	case RDMA_MSG_RELEASE:
	case RDMA_MSG_OFFLOAD:
	case RDMA_MSG_FREE:
		return true;
	default:
		return false;
	}
}

/* Checks on a decoded or to-be-encoded message that do not depend on
 * the byte layout. */
static bool msg_ok(const struct rdma_msg *m)
{
	if (m->type == 0 || m->type >= RDMA_MSG_TYPE_MAX)
		return false;
	if (m->status > 0 || m->status < -4095)
		return false;
	if (is_request(m->type) && m->status != 0)
		return false;
	if ((m->type == RDMA_MSG_STATUS || m->type == RDMA_MSG_REFUSED) && m->status == 0)
		return false;
	if (m->type != RDMA_MSG_STATUS && m->type != RDMA_MSG_REFUSED && m->type != RDMA_MSG_DONE &&
	    m->status != 0)
		return false;
	/* The handshake is not MACed, so it has no place in a sequence. */
	if ((m->type == RDMA_MSG_HELLO || m->type == RDMA_MSG_CHALLENGE ||
	     m->type == RDMA_MSG_PROVE || m->type == RDMA_MSG_REFUSED) &&
	    m->seq != 0)
		return false;
	/* Everything but RELEASE expects or is a reply, so it names a request. */
	if (m->type != RDMA_MSG_RELEASE && m->req_id == 0)
		return false;

	switch (m->type) {
	case RDMA_MSG_HELLO:
		if (m->u.hello.addr_len == 0 || m->u.hello.addr_len > RDMA_ADDR_MAX)
			return false;
		return m->session == 0 && rdma_node_id_valid(m->u.hello.node);
	case RDMA_MSG_CHALLENGE:
		return m->session != 0 && rdma_node_id_valid(m->u.challenge.node);
	case RDMA_MSG_PROVE:
	case RDMA_MSG_WELCOME:
		return m->session != 0;
	case RDMA_MSG_LOOKUP:
	case RDMA_MSG_FREE:
	case RDMA_MSG_OFFLOAD: {
		const char *p = m->u.path.path;
		uint32_t n = m->u.path.path_len;

		if (n >= REMOTE_PATH_MAX || strnlen(p, REMOTE_PATH_MAX) != n)
			return false;
		if (!rdma_path_valid(p, n))
			return false;
		if (m->type != RDMA_MSG_OFFLOAD && (m->u.path.size || m->u.path.checksum))
			return false;
		if (m->type == RDMA_MSG_OFFLOAD && !attrs_ok(&m->u.path.attrs))
			return false;
		return m->type != RDMA_MSG_OFFLOAD || m->u.path.size > 0;
	}
	case RDMA_MSG_RUNS:
		return true;
	case RDMA_MSG_RELEASE:
	case RDMA_MSG_DONE:
		return m->u.ref.first == 0;
	case RDMA_MSG_FILE:
	case RDMA_MSG_GRANT: {
		uint64_t sum = 0;

		if (m->u.file.n > RDMA_RUNS_PER_MSG || m->u.file.first > m->u.file.total ||
		    m->u.file.n > m->u.file.total - m->u.file.first)
			return false;
		if (m->u.file.tier < REMOTE_TIER_GPU || m->u.file.tier > REMOTE_TIER_LENT)
			return false;
		if ((m->u.file.total == 0) != (m->u.file.size == 0))
			return false;
		if (!attrs_ok(&m->u.file.attrs))
			return false;
		if (m->u.file.total > m->u.file.size)
			return false; /* every run holds at least a byte */
		for (uint32_t i = 0; i < m->u.file.n; i++) {
			uint64_t l = m->u.file.run[i].len;

			if (l == 0 || l > m->u.file.size - sum)
				return false;
			sum += l;
		}
		/* A grant comes whole, without attributes; a file reply in slices. */
		if (m->type == RDMA_MSG_GRANT &&
		    (m->u.file.first != 0 || m->u.file.n != m->u.file.total ||
		     sum != m->u.file.size ||
		     !all_zero((const uint8_t *)&m->u.file.attrs, sizeof(m->u.file.attrs))))
			return false;
		return true;
	}
	default:
		return true;
	}
}

int rdma_msg_encode(const struct rdma_msg *m, uint8_t *buf, size_t cap)
{
	uint8_t *p = buf + RDMA_HDR_SIZE;
	uint32_t len = 0;

	if (!msg_ok(m) || cap < RDMA_MSG_SIZE)
		return -EINVAL;
	memset(buf, 0, RDMA_HDR_SIZE);
	switch (m->type) {
	case RDMA_MSG_HELLO:
		memset(p, 0, HELLO_LEN);
		memcpy(p, m->u.hello.node, strlen(m->u.hello.node));
		put32(p + REMOTE_NODE_ID_MAX, m->u.hello.addr_len);
		memcpy(p + REMOTE_NODE_ID_MAX + 4, m->u.hello.addr, m->u.hello.addr_len);
		memcpy(p + REMOTE_NODE_ID_MAX + 4 + RDMA_ADDR_MAX, m->u.hello.nonce,
		       RDMA_NONCE_LEN);
		len = HELLO_LEN;
		break;
	case RDMA_MSG_CHALLENGE:
		memset(p, 0, CHAL_LEN);
		memcpy(p, m->u.challenge.node, strlen(m->u.challenge.node));
		memcpy(p + REMOTE_NODE_ID_MAX, m->u.challenge.nonce, RDMA_NONCE_LEN);
		memcpy(p + REMOTE_NODE_ID_MAX + RDMA_NONCE_LEN, m->u.challenge.mac, 32);
		len = CHAL_LEN;
		break;
	case RDMA_MSG_PROVE:
		memcpy(p, m->u.prove.mac, 32);
		len = 32;
		break;
	case RDMA_MSG_WELCOME:
		put64(p, m->u.welcome.warm_addr);
		put64(p + 8, m->u.welcome.warm_key);
		put32(p + 16, m->u.welcome.warm_len);
		put32(p + 20, 0);
		len = WELCOME_LEN;
		break;
	case RDMA_MSG_LOOKUP:
	case RDMA_MSG_FREE:
	case RDMA_MSG_OFFLOAD:
		put64(p, m->u.path.size);
		put64(p + 8, m->u.path.checksum);
		put32(p + 16, m->u.path.path_len);
		put32(p + 20, 0);
		memcpy(p + PATH_HDR, m->u.path.path, m->u.path.path_len);
		len = PATH_HDR + m->u.path.path_len;
		if (m->type == RDMA_MSG_OFFLOAD)
			len += put_attrs(p + len, &m->u.path.attrs);
		break;
	case RDMA_MSG_RUNS:
	case RDMA_MSG_RELEASE:
	case RDMA_MSG_DONE:
		put64(p, m->u.ref.lease);
		put32(p + 8, m->u.ref.first);
		put32(p + 12, 0);
		len = REF_LEN;
		break;
	case RDMA_MSG_FILE:
	case RDMA_MSG_GRANT:
		put64(p, m->u.file.lease);
		put64(p + 8, m->u.file.size);
		put64(p + 16, m->u.file.checksum);
		put64(p + 24, m->u.file.key);
		put32(p + 32, m->u.file.total);
		put32(p + 36, m->u.file.first);
		put32(p + 40, m->u.file.n);
		p[44] = m->u.file.tier;
		p[45] = p[46] = p[47] = 0;
		len = FILE_HDR + put_attrs(p + FILE_HDR, &m->u.file.attrs);
		for (uint32_t i = 0; i < m->u.file.n; i++) {
			put64(p + len + 16 * i, m->u.file.run[i].addr);
			put64(p + len + 16 * i + 8, m->u.file.run[i].len);
		}
		len += 16 * m->u.file.n;
		break;
	case RDMA_MSG_STATUS:
	case RDMA_MSG_REFUSED:
		len = 0;
		break;
	}
	put32(buf + H_MAGIC, RDMA_MAGIC);
	put16(buf + H_VERSION, RDMA_PROTO_VERSION);
	put16(buf + H_TYPE, m->type);
	put32(buf + H_LEN, len);
	put32(buf + H_STATUS, (uint32_t)m->status);
	put64(buf + H_REQ, m->req_id);
	put64(buf + H_SESSION, m->session);
	put64(buf + H_SEQ, m->seq);
	return (int)(RDMA_HDR_SIZE + len);
}

int rdma_msg_decode(const uint8_t *buf, size_t len, struct rdma_msg *m)
{
	const uint8_t *p = buf + RDMA_HDR_SIZE;
	uint32_t plen, alen;

	if (len < RDMA_HDR_SIZE || len > RDMA_MSG_SIZE || get32(buf + H_MAGIC) != RDMA_MAGIC)
		return -EBADMSG;
	if (get16(buf + H_VERSION) != RDMA_PROTO_VERSION)
		return -EPROTONOSUPPORT;
	plen = get32(buf + H_LEN);
	if (plen != len - RDMA_HDR_SIZE || !all_zero(buf + H_RSVD, RDMA_HDR_SIZE - H_RSVD))
		return -EBADMSG;
	m->type = get16(buf + H_TYPE);
	m->status = (int32_t)get32(buf + H_STATUS);
	m->req_id = get64(buf + H_REQ);
	m->session = get64(buf + H_SESSION);
	m->seq = get64(buf + H_SEQ);

	switch (m->type) {
	case RDMA_MSG_HELLO:
		if (plen != HELLO_LEN || !node_field_ok(p))
			return -EBADMSG;
		memcpy(m->u.hello.node, p, REMOTE_NODE_ID_MAX);
		m->u.hello.addr_len = get32(p + REMOTE_NODE_ID_MAX);
		if (m->u.hello.addr_len == 0 || m->u.hello.addr_len > RDMA_ADDR_MAX)
			return -EBADMSG;
		memcpy(m->u.hello.addr, p + REMOTE_NODE_ID_MAX + 4, RDMA_ADDR_MAX);
		if (!all_zero(m->u.hello.addr + m->u.hello.addr_len,
			      RDMA_ADDR_MAX - m->u.hello.addr_len))
			return -EBADMSG;
		memcpy(m->u.hello.nonce, p + REMOTE_NODE_ID_MAX + 4 + RDMA_ADDR_MAX,
		       RDMA_NONCE_LEN);
		break;
	case RDMA_MSG_CHALLENGE:
		if (plen != CHAL_LEN || !node_field_ok(p))
			return -EBADMSG;
		memcpy(m->u.challenge.node, p, REMOTE_NODE_ID_MAX);
		memcpy(m->u.challenge.nonce, p + REMOTE_NODE_ID_MAX, RDMA_NONCE_LEN);
		memcpy(m->u.challenge.mac, p + REMOTE_NODE_ID_MAX + RDMA_NONCE_LEN, 32);
		break;
	case RDMA_MSG_PROVE:
		if (plen != 32)
			return -EBADMSG;
		memcpy(m->u.prove.mac, p, 32);
		break;
	case RDMA_MSG_WELCOME:
		if (plen != WELCOME_LEN || get32(p + 20) != 0)
			return -EBADMSG;
		m->u.welcome.warm_addr = get64(p);
		m->u.welcome.warm_key = get64(p + 8);
		m->u.welcome.warm_len = get32(p + 16);
		if (m->u.welcome.warm_len > RDMA_WARM_LEN)
			return -EBADMSG;
		break;
	case RDMA_MSG_LOOKUP:
	case RDMA_MSG_FREE:
	case RDMA_MSG_OFFLOAD:
		if (plen < PATH_HDR || get32(p + 20) != 0)
			return -EBADMSG;
		m->u.path.size = get64(p);
		m->u.path.checksum = get64(p + 8);
		m->u.path.path_len = get32(p + 16);
		if (m->u.path.path_len >= REMOTE_PATH_MAX || plen < PATH_HDR + m->u.path.path_len)
			return -EBADMSG;
		memcpy(m->u.path.path, p + PATH_HDR, m->u.path.path_len);
		m->u.path.path[m->u.path.path_len] = '\0';
		alen = 0;
		memset(&m->u.path.attrs, 0, sizeof(m->u.path.attrs));
		if (m->type == RDMA_MSG_OFFLOAD) {
			alen = get_attrs(p + PATH_HDR + m->u.path.path_len,
					 plen - PATH_HDR - m->u.path.path_len, &m->u.path.attrs);
			if (!alen)
				return -EBADMSG;
		}
		if (plen != PATH_HDR + m->u.path.path_len + alen)
			return -EBADMSG;
		break;
	case RDMA_MSG_RUNS:
	case RDMA_MSG_RELEASE:
	case RDMA_MSG_DONE:
		if (plen != REF_LEN || get32(p + 12) != 0)
			return -EBADMSG;
		m->u.ref.lease = get64(p);
		m->u.ref.first = get32(p + 8);
		break;
	case RDMA_MSG_FILE:
	case RDMA_MSG_GRANT:
		if (plen < FILE_HDR || p[45] || p[46] || p[47])
			return -EBADMSG;
		m->u.file.lease = get64(p);
		m->u.file.size = get64(p + 8);
		m->u.file.checksum = get64(p + 16);
		m->u.file.key = get64(p + 24);
		m->u.file.total = get32(p + 32);
		m->u.file.first = get32(p + 36);
		m->u.file.n = get32(p + 40);
		m->u.file.tier = p[44];
		alen = get_attrs(p + FILE_HDR, plen - FILE_HDR, &m->u.file.attrs);
		if (!alen || m->u.file.n > RDMA_RUNS_PER_MSG ||
		    plen != FILE_HDR + alen + 16 * m->u.file.n)
			return -EBADMSG;
		for (uint32_t i = 0; i < m->u.file.n; i++) {
			m->u.file.run[i].addr = get64(p + FILE_HDR + alen + 16 * i);
			m->u.file.run[i].len = get64(p + FILE_HDR + alen + 16 * i + 8);
		}
		break;
	case RDMA_MSG_STATUS:
	case RDMA_MSG_REFUSED:
		if (plen != 0)
			return -EBADMSG;
		break;
	default:
		return -EBADMSG;
	}
	return msg_ok(m) ? 0 : -EBADMSG;
}

/* --- replays --------------------------------------------------------------- */

bool rdma_replay_accept(struct rdma_replay *w, uint64_t seq)
{
	uint64_t back;

	if (seq == 0)
		return false;
	if (seq > w->top) {
		uint64_t shift = seq - w->top;

		w->seen = shift >= RDMA_REPLAY_WINDOW ? 0 : w->seen << shift;
		w->seen |= 1;
		w->top = seq;
		return true;
	}
	back = w->top - seq;
	if (back >= RDMA_REPLAY_WINDOW || (w->seen >> back & 1))
		return false;
	w->seen |= 1ull << back;
	return true;
}

/* --- MACs ----------------------------------------------------------------- */

/* HMAC-SHA256 under @key of the message with its mac field zeroed. */
static void msg_mac(const uint8_t *buf, size_t len, const uint8_t key[32], uint8_t out[32])
{
	uint8_t copy[RDMA_MSG_SIZE];
	unsigned olen = 32;

	memcpy(copy, buf, len);
	memset(copy + H_MAC, 0, RDMA_MAC_LEN);
	HMAC(EVP_sha256(), key, 32, copy, len, out, &olen);
}

void rdma_msg_sign(uint8_t *buf, size_t len, const uint8_t key[32])
{
	uint8_t mac[32];

	msg_mac(buf, len, key, mac);
	memcpy(buf + H_MAC, mac, RDMA_MAC_LEN);
}

bool rdma_msg_verify(const uint8_t *buf, size_t len, const uint8_t key[32])
{
	uint8_t mac[32];

	if (len < RDMA_HDR_SIZE || len > RDMA_MSG_SIZE)
		return false;
	msg_mac(buf, len, key, mac);
	return CRYPTO_memcmp(mac, buf + H_MAC, RDMA_MAC_LEN) == 0;
}

bool rdma_msg_unsigned(const uint8_t *buf, size_t len)
{
	return len >= RDMA_HDR_SIZE && all_zero(buf + H_MAC, RDMA_MAC_LEN);
}

static void hmac_parts(const uint8_t *key, size_t key_len, const void *const *parts,
		       const size_t *lens, int n, uint8_t out[32])
{
	uint8_t buf[512];
	size_t off = 0;
	unsigned olen = 32;

	for (int i = 0; i < n; i++) {
		memcpy(buf + off, parts[i], lens[i]);
		off += lens[i];
	}
	HMAC(EVP_sha256(), key, (int)key_len, buf, off, out, &olen);
}

void rdma_hello_mac(const uint8_t *token, size_t token_len, bool server,
		    const uint8_t nonce_c[RDMA_NONCE_LEN], const uint8_t nonce_s[RDMA_NONCE_LEN],
		    uint64_t sid, const char *server_node, const char *client_node, uint8_t out[32])
{
	uint8_t le[8];
	const char *label = server ? "kvfs-hello-s" : "kvfs-hello-c";
	const void *parts[] = {label, nonce_c, nonce_s, le, server_node, client_node};
	size_t lens[] = {12,
			 RDMA_NONCE_LEN,
			 RDMA_NONCE_LEN,
			 8,
			 strnlen(server_node, REMOTE_NODE_ID_MAX - 1) + 1,
			 strnlen(client_node, REMOTE_NODE_ID_MAX - 1) + 1};

	put64(le, sid);
	hmac_parts(token, token_len, parts, lens, 6, out);
}

void rdma_session_key(const uint8_t *token, size_t token_len, const uint8_t nonce_c[RDMA_NONCE_LEN],
		      const uint8_t nonce_s[RDMA_NONCE_LEN], uint64_t sid, uint8_t out[32])
{
	uint8_t le[8];
	const void *parts[] = {"kvfs-session", nonce_c, nonce_s, le};
	size_t lens[] = {12, RDMA_NONCE_LEN, RDMA_NONCE_LEN, 8};

	put64(le, sid);
	hmac_parts(token, token_len, parts, lens, 4, out);
}
