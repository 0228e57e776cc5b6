/*
 * tests/unit/rdma_peerd.c — a kvfs remote-tier peer in its own process, for
 * tests that kill or stop a peer in the middle of a transfer and for the
 * loopback benchmark. Not a suite: built as a second main by the rdma
 * section of the Makefile.
 *
 *   rdma_peerd --node-id ID [--file PATH:SIZE[:SEED]]... [--lend SIZE]
 *              [--cluster URL] [--cluster-name NAME] [--token TOKEN]
 *              [--heartbeat-ms N] [--listen HOST:PORT]
 *
 * Serves each file out of a registered arena (pattern tl_fill(SEED)),
 * publishes them when a cluster is given, then prints one line
 * "READY <fabric address in hex>" on stdout and runs until stdin closes or
 * SIGTERM.
 */
#include <getopt.h>

#include "core/util.h"
#include "rdma/rdma_i.h"
#include "tests/unit/rdma_testlib.h"

static volatile sig_atomic_t quit;

static void on_term(int sig)
{
	(void)sig;
	quit = 1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"node-id", required_argument, NULL, 'n'},
		{"file", required_argument, NULL, 'f'},
		{"lend", required_argument, NULL, 'l'},
		{"cluster", required_argument, NULL, 'c'},
		{"cluster-name", required_argument, NULL, 'N'},
		{"token", required_argument, NULL, 't'},
		{"heartbeat-ms", required_argument, NULL, 'h'},
		{"listen", required_argument, NULL, 'L'},
		{NULL, 0, NULL, 0},
	};
	const char *id = NULL, *cluster = NULL, *cname = NULL, *token = NULL, *listen = NULL;
	const char *files[TL_MAX_FILES];
	uint64_t sizes[TL_MAX_FILES], seeds[TL_MAX_FILES], total = 0, lend = 0;
	uint32_t heartbeat = 0, len;
	int nfiles = 0, c;
	struct tl_daemon d;
	const uint8_t *addr;
	remote *r;
	char buf[64];

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			id = optarg;
			break;
		case 'f': {
			char *p = strdup(optarg), *s1 = strchr(p, ':'), *s2;

			if (!s1 || nfiles == TL_MAX_FILES)
				return 2;
			*s1++ = '\0';
			s2 = strchr(s1, ':');
			if (s2)
				*s2++ = '\0';
			files[nfiles] = p;
			if (kvfs_parse_size(s1, &sizes[nfiles]))
				return 2;
			seeds[nfiles] = s2 ? strtoull(s2, NULL, 0) : (uint64_t)nfiles + 1;
			total += (sizes[nfiles] + 4095) & ~4095ull;
			nfiles++;
			break;
		}
		case 'l':
			if (kvfs_parse_size(optarg, &lend))
				return 2;
			break;
		case 'c':
			cluster = optarg;
			break;
		case 'N':
			cname = optarg;
			break;
		case 't':
			token = optarg;
			break;
		case 'h':
			heartbeat = (uint32_t)atoi(optarg);
			break;
		case 'L':
			listen = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!id)
		return 2;
	signal(SIGTERM, on_term);
	signal(SIGPIPE, SIG_IGN);
	if (tl_daemon_init(&d, total + (1u << 20)))
		return 1;
	for (int i = 0; i < nfiles; i++)
		if (!tl_add(&d, files[i], sizes[i], seeds[i], 0, false))
			return 1;
	if (listen) {
		struct remote_config cfg = {
			.node_id = id,
			.fabric = "tcp",
			.listen = listen,
			.cluster = cluster,
			.cluster_name = cname,
			.token = token ? token : TOKEN,
			.token_len = strlen(token ? token : TOKEN),
			.arena = d.arena,
			.arena_bytes = d.arena_bytes,
			.lend_bytes = lend,
			.heartbeat_ms = heartbeat,
			.node_ttl_ms = 10 * heartbeat,
			.ops = &tl_ops,
			.ops_ctx = &d,
		};
		char err[256] = "";

		if (remote_open(&cfg, &r, err, sizeof(err))) {
			fprintf(stderr, "rdma_peerd: %s\n", err);
			return 1;
		}
	} else {
		r = tl_open(id, &d, lend, cluster, cname, token, 0, heartbeat);
		if (!r)
			return 1;
	}
	for (int i = 0; i < nfiles; i++)
		remote_publish(r, files[i], REMOTE_TIER_DRAM);
	if (cluster)
		remote_flush(r, 5000);
	addr = rdma_self_addr(r, &len);
	printf("READY ");
	for (uint32_t i = 0; i < len; i++)
		printf("%02x", addr[i]);
	printf("\n");
	fflush(stdout);
	while (!quit && read(0, buf, sizeof(buf)) > 0)
		;
	remote_close(r);
	tl_daemon_fini(&d);
	return 0;
}
