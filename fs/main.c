/*
 * fs/main.c — the kvfs daemon: options, start-up, mount, serve, shut down.
 *
 * Start-up order: parse options; unless -f, fork and let the child do
 * everything while the parent waits on a pipe for one status line, so the
 * command returns only once the mount is ready (or fails with the child's
 * one-line reason and a non-zero exit). Forking first matters: RocksDB and
 * liburcu start threads, which a fork would not carry over.
 *
 * Shut-down: `fusermount3 -u`, SIGINT or SIGTERM end the session loop; the
 * destroy callback flushes batched statistics, then the catalog is closed
 * (its WAL synced) and the arena released. A temporary state directory
 * (no --state) is removed.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fault.h"
#include "core/log.h"
#include "core/util.h"
#include "fs/fs_i.h"
#include "gpu/gpu.h"

struct kvfs_fs *kvfs_fs_global;

static void usage(FILE *out)
{
	fprintf(out,
		"usage: kvfs [options] MOUNTPOINT\n"
		"\n"
		"A filesystem for LLM KV caches: files named by prompt hash, kept in the\n"
		"fastest tier with room, evicted least valuable first when full.\n"
		"\n"
		"  --state DIR            catalog and other persistent state (default: a\n"
		"                         temporary directory removed at unmount)\n"
		"  --dram SIZE            DRAM tier size, e.g. 512M, 8G (default 1G)\n"
		"  --page-size SIZE       DRAM page size, 4K..16M, power of two (default 64K)\n"
		"  --policy NAME          eviction policy: mq (default) or lru\n"
		"  --threads N            FUSE worker threads, 1..256 (default 8)\n"
		"  --entry-timeout SEC    kernel name cache timeout (default 30)\n"
		"  --attr-timeout SEC     kernel attribute cache timeout (default 30)\n"
		"  --negative-timeout SEC kernel cache of misses (default 1)\n"
		"  --nvme DIR:SIZE        an NVMe tier of SIZE in DIR (repeatable: striped)\n"
		"  --gpu DEV:SIZE         a pool of SIZE on CUDA device DEV, allocated at start\n"
		"                         (repeatable; not yet a tier backend, see README)\n"
		"  --gpu-standin          tests only: --gpu pools on a stand-in device in\n"
		"                         host shared memory\n"
		"  --persist MODE         back (default): write files to NVMe when DRAM needs\n"
		"                         room; through: as soon as they are sealed\n"
		"  --read-ahead SIZE      kernel read-ahead for the mount (default 1M)\n"
		"  --no-keep-cache        drop a file's kernel page cache at each open (for\n"
		"                         measuring what the cache buys; default keeps it)\n"
		"  --no-passthrough       read sealed files through the daemon even when the\n"
		"                         kernel offers FUSE passthrough (default: use it)\n"
		"  --log FILE             log file (default: stderr with -f, else STATE/kvfs.log)\n"
		"  --log-level LEVEL      err, warn, info (default) or debug\n"
		"  -o OPT[,OPT...]        FUSE mount options (allow_other, ...); repeatable\n"
		"  --cluster URL          join a cluster: its index in Redis, redis://HOST:PORT,\n"
		"                         unix:PATH, or a Redis Cluster\n"
		"                         redis-cluster://HOST:PORT[,HOST:PORT...] (needs\n"
		"                         --cluster-token)\n"
		"  --cluster-token FILE   the cluster's shared secret (16+ bytes); peers\n"
		"                         without it are refused\n"
		"  --listen HOST:PORT     where peers reach this node (default: any port)\n"
		"  --node-id NAME         this node's name in the cluster (default: hostname)\n"
		"  --lend SIZE            DRAM this node offers peers for their files (default 0)\n"
		"  --fabric NAME          auto (default), verbs, efa or tcp\n"
		"  --cluster-name NAME    key prefix in Redis (default kvfs)\n"
		"  --remote-timeout MS    a peer that makes no progress for this long fails the\n"
		"                         transfer: a miss (default 2000)\n"
		"  --unproven-conns N     connections to --listen kept for hosts that have not\n"
		"                         proven the cluster token, each for at most 10 s\n"
		"                         (default 64)\n"
		"  --fp-threads N         fast-path ring server threads, 1..64 (default 4)\n"
		"  --fp-rings N           fast-path rings per user (default 64)\n"
		"  --fp-buffers N         fast-path buffers per user (default 1024)\n"
		"  --fp-bytes SIZE        bytes of fast-path buffers and rings per user\n"
		"                         (default: the machine's memory)\n"
		"  --prefetch-threads N   workers bringing prefetched files into DRAM (default 2)\n"
		"  --prefetch-bytes SIZE  bytes queued or in flight for prefetch (default: 1/4 of\n"
		"                         --dram)\n"
		"  --drain                on SIGTERM (any shutdown), leave the cluster gracefully\n"
		"                         first: hand lent copies and files held only here to\n"
		"                         the peers (as `kvfsctl drain` does)\n"
		"  --fsck --state DIR     check a state directory offline (no MOUNTPOINT);\n"
		"         [--repair]      delete the bad records; [--no-verify] skip reading\n"
		"         [--no-verify]   every NVMe extent back\n"
		"  -f, --foreground       stay in the foreground\n"
		"  -d, --debug            print every FUSE request (implies -f)\n"
		"  -h, --help             this help\n"
		"  -V, --version          print the version\n"
		"\n"
		"Unmount with: fusermount3 -u MOUNTPOINT\n");
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *fmt, ...)
{
	va_list ap;

	fputs("kvfs: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return 2;
}

enum {
	OPT_STATE = 256,
	OPT_DRAM,
	OPT_PAGE_SIZE,
	OPT_POLICY,
	OPT_THREADS,
	OPT_ENTRY_TIMEOUT,
	OPT_ATTR_TIMEOUT,
	OPT_NEG_TIMEOUT,
	OPT_READ_AHEAD,
	OPT_LOG,
	OPT_LOG_LEVEL,
	OPT_NO_KEEP_CACHE,
	OPT_NO_PASSTHROUGH,
	OPT_NVME,
	OPT_PERSIST,
	OPT_FSCK,
	OPT_REPAIR,
	OPT_NO_VERIFY,
	OPT_FABRIC,
	OPT_LISTEN,
	OPT_CLUSTER,
	OPT_CLUSTER_NAME,
	OPT_NODE_ID,
	OPT_LEND,
	OPT_TOKEN,
	OPT_REMOTE_TIMEOUT,
	OPT_UNPROVEN_CONNS,
	OPT_FP_THREADS,
	OPT_FP_RINGS,
	OPT_FP_BUFFERS,
	OPT_FP_BYTES,
	OPT_PREFETCH_THREADS,
	OPT_PREFETCH_BYTES,
	OPT_GPU,
	OPT_GPU_STANDIN,
	OPT_DRAIN,
};

static int parse_args(int argc, char **argv, struct kvfs_config *c)
{
	static const struct option longopts[] = {
		{"state", required_argument, NULL, OPT_STATE},
		{"dram", required_argument, NULL, OPT_DRAM},
		{"page-size", required_argument, NULL, OPT_PAGE_SIZE},
		{"policy", required_argument, NULL, OPT_POLICY},
		{"threads", required_argument, NULL, OPT_THREADS},
		{"entry-timeout", required_argument, NULL, OPT_ENTRY_TIMEOUT},
		{"attr-timeout", required_argument, NULL, OPT_ATTR_TIMEOUT},
		{"negative-timeout", required_argument, NULL, OPT_NEG_TIMEOUT},
		{"read-ahead", required_argument, NULL, OPT_READ_AHEAD},
		{"log", required_argument, NULL, OPT_LOG},
		{"log-level", required_argument, NULL, OPT_LOG_LEVEL},
		{"no-keep-cache", no_argument, NULL, OPT_NO_KEEP_CACHE},
		{"no-passthrough", no_argument, NULL, OPT_NO_PASSTHROUGH},
		{"nvme", required_argument, NULL, OPT_NVME},
		{"persist", required_argument, NULL, OPT_PERSIST},
		{"fsck", no_argument, NULL, OPT_FSCK},
		{"repair", no_argument, NULL, OPT_REPAIR},
		{"no-verify", no_argument, NULL, OPT_NO_VERIFY},
		{"fabric", required_argument, NULL, OPT_FABRIC},
		{"listen", required_argument, NULL, OPT_LISTEN},
		{"cluster", required_argument, NULL, OPT_CLUSTER},
		{"cluster-name", required_argument, NULL, OPT_CLUSTER_NAME},
		{"node-id", required_argument, NULL, OPT_NODE_ID},
		{"lend", required_argument, NULL, OPT_LEND},
		{"cluster-token", required_argument, NULL, OPT_TOKEN},
		{"remote-timeout", required_argument, NULL, OPT_REMOTE_TIMEOUT},
		{"unproven-conns", required_argument, NULL, OPT_UNPROVEN_CONNS},
		{"fp-threads", required_argument, NULL, OPT_FP_THREADS},
		{"fp-rings", required_argument, NULL, OPT_FP_RINGS},
		{"fp-buffers", required_argument, NULL, OPT_FP_BUFFERS},
		{"fp-bytes", required_argument, NULL, OPT_FP_BYTES},
		{"prefetch-threads", required_argument, NULL, OPT_PREFETCH_THREADS},
		{"prefetch-bytes", required_argument, NULL, OPT_PREFETCH_BYTES},
		{"drain", no_argument, NULL, OPT_DRAIN},
		{"foreground", no_argument, NULL, 'f'},
		{"debug", no_argument, NULL, 'd'},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{"gpu", required_argument, NULL, OPT_GPU},
		{"gpu-standin", no_argument, NULL, OPT_GPU_STANDIN},
		{NULL, 0, NULL, 0},
	};
	uint64_t v;
	int opt;

	c->dram_bytes = 1ull << 30;
	c->threads = 8;
	c->fp_threads = 4;
	c->fp_max_rings = 64;
	c->fp_max_bufs = 1024;
	c->fp_max_bytes = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
	c->entry_timeout = 30;
	c->attr_timeout = 30;
	c->negative_timeout = 1;
	c->read_ahead_kb = 1024;
	c->log_level = KVFS_LOG_INFO;
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":o:fdhV", longopts, NULL)) != -1) {
		switch (opt) {
		case OPT_STATE:
			c->state_dir = optarg;
			break;
		case OPT_DRAM:
			if (kvfs_parse_size(optarg, &v) || v == 0)
				return fail("invalid --dram size '%s' (use e.g. 512M or 8G)",
					    optarg);
			c->dram_bytes = v;
			break;
		case OPT_PAGE_SIZE:
			if (kvfs_parse_size(optarg, &v) || v < 4096 || v > (16u << 20) ||
			    (v & (v - 1)))
				return fail("invalid --page-size '%s' (a power of two from 4K "
					    "to 16M)",
					    optarg);
			c->page_size = (uint32_t)v;
			break;
		case OPT_POLICY:
			if (strcmp(optarg, "mq") && strcmp(optarg, "lru"))
				return fail("unknown --policy '%s' (use mq or lru)", optarg);
			c->policy = optarg;
			break;
		case OPT_THREADS: {
			char *end;
			long n = strtol(optarg, &end, 10);

			if (!*optarg || *end || n < 1 || n > 256)
				return fail("invalid --threads '%s' (1 to 256)", optarg);
			c->threads = (unsigned)n;
			break;
		}
		case OPT_ENTRY_TIMEOUT:
		case OPT_ATTR_TIMEOUT:
		case OPT_NEG_TIMEOUT: {
			double *d = opt == OPT_ENTRY_TIMEOUT  ? &c->entry_timeout
				    : opt == OPT_ATTR_TIMEOUT ? &c->attr_timeout
							      : &c->negative_timeout;

			if (kvfs_parse_seconds(optarg, d))
				return fail("invalid timeout '%s' (seconds, e.g. 1 or 0.5)",
					    optarg);
			break;
		}
		case OPT_READ_AHEAD:
			if (kvfs_parse_size(optarg, &v) || v > (1ull << 30))
				return fail("invalid --read-ahead '%s' (e.g. 128K or 1M)", optarg);
			c->read_ahead_kb = (unsigned)(v / 1024);
			break;
		case OPT_LOG:
			c->log_path = optarg;
			break;
		case OPT_NO_PASSTHROUGH:
			c->no_passthrough = true;
			break;
		case OPT_NO_KEEP_CACHE:
			c->no_keep_cache = true;
			break;
		case OPT_NVME: {
			char *colon = strrchr(optarg, ':');

			if (c->nvme_count == KVFS_ARRAY_SIZE(c->nvme))
				return fail("at most %zu --nvme directories", KVFS_ARRAY_SIZE(c->nvme));
			if (!colon || colon == optarg || kvfs_parse_size(colon + 1, &v) || v == 0)
				return fail("invalid --nvme '%s' (use DIR:SIZE, e.g. /nvme0/kvfs:200G)",
					    optarg);
			*colon = '\0';
			c->nvme[c->nvme_count].dir = optarg;
			c->nvme[c->nvme_count++].bytes = v;
			break;
		}
		case OPT_GPU: {
			char *colon = strchr(optarg, ':'), *end;
			long dev = strtol(optarg, &end, 10);

			if (c->gpu_count == KVFS_ARRAY_SIZE(c->gpu))
				return fail("at most %zu --gpu devices", KVFS_ARRAY_SIZE(c->gpu));
			if (!colon || end != colon || colon == optarg || dev < 0 || dev > 1023 ||
			    kvfs_parse_size(colon + 1, &v) || v == 0)
				return fail("invalid --gpu '%s' (use DEV:SIZE, e.g. 0:16G)", optarg);
			for (unsigned i = 0; i < c->gpu_count; i++)
				if (c->gpu[i].dev == (int)dev)
					return fail("--gpu: device %ld given twice", dev);
			c->gpu[c->gpu_count].dev = (int)dev;
			c->gpu[c->gpu_count++].bytes = v;
			break;
		}
		case OPT_GPU_STANDIN:
			c->gpu_standin = true;
			break;
		case OPT_FABRIC:
			if (strcmp(optarg, "auto") && strcmp(optarg, "verbs") && strcmp(optarg, "efa") &&
			    strcmp(optarg, "tcp"))
				return fail("invalid --fabric '%s' (auto, verbs, efa or tcp)", optarg);
			c->fabric = optarg;
			break;
		case OPT_LISTEN:
			c->listen = optarg;
			break;
		case OPT_CLUSTER:
			if (strncmp(optarg, "redis://", 8) && strncmp(optarg, "unix:", 5) &&
			    strncmp(optarg, "redis-cluster://", 16))
				return fail("invalid --cluster '%s' (redis://HOST:PORT, unix:PATH or "
					    "redis-cluster://HOST:PORT[,HOST:PORT...])",
					    optarg);
			c->cluster = optarg;
			break;
		case OPT_CLUSTER_NAME:
			c->cluster_name = optarg;
			break;
		case OPT_NODE_ID:
			c->node_id = optarg;
			break;
		case OPT_LEND:
			if (kvfs_parse_size(optarg, &v))
				return fail("invalid --lend '%s' (e.g. 4G)", optarg);
			c->lend_bytes = v;
			break;
		case OPT_TOKEN:
			c->token_file = optarg;
			break;
		case OPT_REMOTE_TIMEOUT: {
			char *end;
			unsigned long ms = strtoul(optarg, &end, 10);

			if (*end || ms < 10 || ms > 600000)
				return fail("invalid --remote-timeout '%s' (milliseconds, 10..600000)",
					    optarg);
			c->remote_timeout_ms = (unsigned)ms;
			break;
		}
		case OPT_UNPROVEN_CONNS: {
			char *end;
			unsigned long n = strtoul(optarg, &end, 10);

			if (!*optarg || *end || optarg[0] == '-' || n < 1 || n > 65536)
				return fail("invalid --unproven-conns '%s' (1..65536)", optarg);
			c->unproven_conns = (unsigned)n;
			break;
		}
		case OPT_FP_THREADS:
		case OPT_FP_RINGS:
		case OPT_FP_BUFFERS: {
			static const struct {
				const char *name;
				unsigned long max;
			} lim[] = {
				[OPT_FP_THREADS - OPT_FP_THREADS] = {"--fp-threads", 64},
				[OPT_FP_RINGS - OPT_FP_THREADS] = {"--fp-rings", 1u << 20},
				[OPT_FP_BUFFERS - OPT_FP_THREADS] = {"--fp-buffers", 1u << 20},
			};
			unsigned *dst[] = {&c->fp_threads, &c->fp_max_rings, &c->fp_max_bufs};
			unsigned i = (unsigned)(opt - OPT_FP_THREADS);
			char *end;
			unsigned long n = strtoul(optarg, &end, 10);

			if (!*optarg || *end || *optarg == '-' || n < 1 || n > lim[i].max)
				return fail("invalid %s '%s' (1 to %lu)", lim[i].name, optarg,
					    lim[i].max);
			*dst[i] = (unsigned)n;
			break;
		}
		case OPT_FP_BYTES:
			if (kvfs_parse_size(optarg, &v) || v == 0)
				return fail("invalid --fp-bytes '%s' (e.g. 64G)", optarg);
			c->fp_max_bytes = v;
			break;
		case OPT_PREFETCH_THREADS: {
			char *end;
			unsigned long t = strtoul(optarg, &end, 10);

			if (*end || t < 1 || t > 64)
				return fail("invalid --prefetch-threads '%s' (1..64)", optarg);
			c->prefetch_threads = (unsigned)t;
			break;
		}
		case OPT_PREFETCH_BYTES:
			if (kvfs_parse_size(optarg, &v) || v == 0)
				return fail("invalid --prefetch-bytes '%s' (e.g. 256M)", optarg);
			c->prefetch_bytes = v;
			break;
		case OPT_DRAIN:
			c->drain_on_exit = true;
			break;
		case OPT_FSCK:
			c->fsck = true;
			break;
		case OPT_REPAIR:
			c->fsck_repair = true;
			break;
		case OPT_NO_VERIFY:
			c->fsck_no_verify = true;
			break;
		case OPT_PERSIST:
			if (strcmp(optarg, "back") && strcmp(optarg, "through"))
				return fail("unknown --persist '%s' (use back or through)", optarg);
			c->persist_through = strcmp(optarg, "through") == 0;
			break;
		case OPT_LOG_LEVEL: {
			int l = kvfs_log_level_parse(optarg);

			if (l < 0)
				return fail("invalid --log-level '%s' (err, warn, info, debug)",
					    optarg);
			c->log_level = l;
			break;
		}
		case 'o': {
			size_t n = strlen(c->fuse_opts);

			if (n + strlen(optarg) + 2 > sizeof(c->fuse_opts))
				return fail("too many -o options");
			snprintf(c->fuse_opts + n, sizeof(c->fuse_opts) - n, "%s%s",
				 n ? "," : "", optarg);
			break;
		}
		case 'f':
			c->foreground = true;
			break;
		case 'd':
			c->debug = c->foreground = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			printf("kvfs %s (CUDA support: %s)\n", KVFS_VERSION,
			       gpu_have_cuda() ? "yes, runtime linked statically" : "no");
			exit(0);
		case ':':
			return fail("option '%s' needs a value (see kvfs --help)", argv[optind - 1]);
		default:
			return fail("unknown option '%s' (see kvfs --help)", argv[optind - 1]);
		}
	}
	if (c->fsck) {
		if (optind != argc)
			return fail("--fsck takes no MOUNTPOINT");
		if (!c->state_dir)
			return fail("--fsck needs --state DIR");
		return 0;
	}
	if (c->fsck_repair || c->fsck_no_verify)
		return fail("--repair and --no-verify go with --fsck");
	if (rmt_configured(c) && !c->token_file)
		return fail("--cluster and --listen need --cluster-token FILE (the shared secret)");
	if (!rmt_configured(c) && (c->token_file || c->node_id || c->lend_bytes || c->fabric ||
				   c->cluster_name || c->remote_timeout_ms || c->unproven_conns ||
				   c->drain_on_exit))
		return fail("remote tier options need --cluster URL or --listen HOST:PORT");
	if (optind != argc - 1)
		return fail(optind == argc ? "missing MOUNTPOINT (see kvfs --help)"
					   : "too many arguments (see kvfs --help)");
	c->mountpoint = argv[optind];
	return 0;
}

/* --- start-up status, from the child to the waiting parent ----------------------- */

static int status_fd = -1;

static void report(int ok, const char *msg)
{
	char line[600];
	int n;

	if (status_fd < 0) {
		if (!ok)
			fprintf(stderr, "kvfs: %s\n", msg);
		return;
	}
	n = snprintf(line, sizeof(line), "%d %s\n", ok, msg ? msg : "");
	if (write(status_fd, line, (size_t)KVFS_MIN(n, (int)sizeof(line) - 1)) < 0)
		perror("kvfs: status pipe");
	close(status_fd);
	status_fd = -1;
}

/* Parent: wait for the child's status line. @return the exit code. */
static int wait_child(int fd, pid_t pid)
{
	char line[600];
	ssize_t n, got = 0;
	int status;

	while (got < (ssize_t)sizeof(line) - 1 &&
	       (n = read(fd, line + got, sizeof(line) - 1 - (size_t)got)) > 0)
		got += n;
	line[got] = '\0';
	if (got >= 2 && line[0] == '1')
		return 0;
	if (got >= 2) {
		fprintf(stderr, "kvfs: %s", line + 2);
	} else {
		waitpid(pid, &status, 0);
		fprintf(stderr, "kvfs: the daemon exited during start-up\n");
	}
	return 1;
}

/* --- the mount --------------------------------------------------------------------- */

/* Find "major:minor" of the mount at @mnt in /proc/self/mountinfo. */
static int mount_devno(const char *mnt, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096], dev[64], path[PATH_MAX];
	int rc = -ENOENT;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		/* id parent major:minor root mountpoint ... */
		if (sscanf(line, "%*s %*s %63s %*s %4095s", dev, path) == 2 &&
		    strcmp(path, mnt) == 0) {
			snprintf(out, len, "%s", dev);
			rc = 0; /* keep going: the last match is the newest mount */
		}
	}
	fclose(f);
	return rc;
}

/*
 * The kernel caps FUSE read-ahead at its default (128 KiB) whatever the
 * daemon asks; raise it through the mount's bdi so cold reads of large
 * files arrive as 1 MiB requests. Best effort: it needs root.
 */
static void set_read_ahead(const char *mnt, unsigned kb)
{
	char dev[64], path[128], val[32];
	int fd, n;

	if (!kb || mount_devno(mnt, dev, sizeof(dev)))
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		log_info("read-ahead stays at the kernel default (%s: %s)", path, strerror(errno));
		return;
	}
	n = snprintf(val, sizeof(val), "%u", kb);
	if (write(fd, val, (size_t)n) != n)
		log_warn("cannot set %s: %s", path, strerror(errno));
	close(fd);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path) ? 0 : 0;
}

static int run(struct kvfs_fs *fs)
{
	struct kvfs_config *c = &fs->cfg;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lc = NULL;
	struct tier_config tc = {0};
	struct tier_callbacks cb = {.evicted = ns_evicted, .ctx = fs};
	char err[512] = "", opts[1200], log_path[PATH_MAX];
	const char *faults = getenv("KVFS_FAULTS");
	int rc = 1;

	if (faults && kvfs_fault_parse(faults)) {
		snprintf(err, sizeof(err), "invalid KVFS_FAULTS '%s'", faults);
		goto out;
	}
	/* The log: a file in the background, stderr in the foreground. */
	if (c->log_path || !c->foreground) {
		if (!c->log_path) {
			snprintf(log_path, sizeof(log_path), "%s/kvfs.log", c->state_dir);
			c->log_path = log_path;
		}
		if (kvfs_log_open(c->log_path, c->log_level)) {
			snprintf(err, sizeof(err), "cannot open log %s: %s", c->log_path,
				 strerror(errno));
			goto out;
		}
	} else {
		kvfs_log_open(NULL, c->log_level);
	}

	rc = gpupool_start(fs, err, sizeof(err));
	if (rc)
		goto out;
	rc = cat_open(c->state_dir, &fs->cat, err, sizeof(err));
	if (rc)
		goto out;
	tc.dram_bytes = c->dram_bytes;
	tc.page_size = c->page_size;
	tc.policy = c->policy;
	tc.nvme = c->nvme;
	tc.nvme_count = c->nvme_count;
	tc.persist_through = c->persist_through;
	tc.cat = fs->cat;
	if (rmt_configured(c)) {
		cb.spill = rmt_spill;
		cb.moved = rmt_moved;
	}
	rc = tier_open(&tc, &cb, &fs->tier, err, sizeof(err));
	if (rc)
		goto out;
	fsck_record_tiers(fs->cat, c, tier_page_size(fs->tier));
	rc = ns_open(fs, err, sizeof(err));
	if (rc)
		goto out;
	rc = rmt_start(fs, err, sizeof(err));
	if (rc)
		goto out;
	if (!c->prefetch_threads)
		c->prefetch_threads = 2;
	if (!c->prefetch_bytes)
		c->prefetch_bytes = c->dram_bytes / 4;
	c->prefetch_queue = 65536;
	rc = dg_start(fs);
	if (rc) {
		snprintf(err, sizeof(err), "cannot start the prefetch threads: %s", strerror(-rc));
		goto out;
	}

	snprintf(opts, sizeof(opts), "fsname=kvfs,subtype=kvfs,default_permissions%s%s",
		 c->fuse_opts[0] ? "," : "", c->fuse_opts);
	if (fuse_opt_add_arg(&args, "kvfs") || fuse_opt_add_arg(&args, "-o") ||
	    fuse_opt_add_arg(&args, opts) || (c->debug && fuse_opt_add_arg(&args, "-d"))) {
		snprintf(err, sizeof(err), "out of memory");
		rc = -ENOMEM;
		goto out;
	}
	fs->se = fuse_session_new(&args, &kvfs_ops, sizeof(kvfs_ops), fs);
	if (!fs->se) {
		snprintf(err, sizeof(err), "invalid FUSE options '%s'", c->fuse_opts);
		rc = -EINVAL;
		goto out;
	}
	/*
	 * libfuse installs its handlers only over SIG_DFL, and a library the
	 * fabric pulls in (PSM, under libfabric) sets its own for SIGTERM and
	 * SIGINT when loaded, which exit without unmounting.
	 */
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	if (fuse_set_signal_handlers(fs->se)) {
		snprintf(err, sizeof(err), "cannot install signal handlers");
		rc = -EINVAL;
		goto out_session;
	}
	if (fuse_session_mount(fs->se, c->mountpoint)) {
		snprintf(err, sizeof(err), "cannot mount on %s (see the message above)",
			 c->mountpoint);
		rc = -EIO;
		goto out_signals;
	}
	set_read_ahead(c->mountpoint, c->read_ahead_kb);
	pt_setup(fs); /* before the session loop reads INIT */
	log_info("mounted %s: dram %llu bytes, state %s, policy %s, %u threads", c->mountpoint,
		 (unsigned long long)c->dram_bytes, c->state_dir, c->policy ? c->policy : "mq",
		 c->threads);

	report(1, NULL);
	if (!c->foreground) {
		int null = open("/dev/null", O_RDWR | O_CLOEXEC);

		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
			close(null);
		}
	}

	lc = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(lc, c->threads);
	fuse_loop_cfg_set_idle_threads(lc, c->threads);
	fuse_loop_cfg_set_clone_fd(lc, 1);
	rc = fuse_session_loop_mt(fs->se, lc);
	fuse_loop_cfg_destroy(lc);
	log_info("unmounting %s", c->mountpoint);
	ns_notify_off(fs); /* before the unmount closes /dev/fuse */
	fuse_session_unmount(fs->se);
	dg_stop(fs);  /* no prefetch or push runs past here */
	/* --drain: what only we hold goes to the peers before we leave (the
	 * mount is gone, the bytes are not). */
	if (c->drain_on_exit && rmt_drain(fs, true) == 0)
		log_info("drained before exit");
	rmt_stop(fs); /* leaves the cluster; peers' leases end */
	/* A planned restart loses nothing: DRAM-only files go to NVMe now. */
	tier_flush(fs->tier);
	rc = rc ? 1 : 0;
out_signals:
	fuse_remove_signal_handlers(fs->se);
out_session:
	fuse_session_destroy(fs->se); /* calls destroy: flushes statistics */
	fs->se = NULL;
out:
	fuse_opt_free_args(&args);
	if (err[0]) {
		log_err("%s", err);
		report(0, err);
		rc = 1;
	}
	dg_stop(fs);
	rmt_stop(fs);
	rmt_drain_join(fs);
	ns_close(fs);
	cat_close(fs->cat);
	tier_close(fs->tier);
	gpupool_stop(fs);
	if (c->state_is_temp)
		nftw(c->state_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return rc;
}

/*
 * @path made absolute against the working directory (the daemon moves to /
 * when it goes to the background). A new string, kept for the process's life.
 */
static const char *absolute(const char *path)
{
	char cwd[PATH_MAX], *out;

	if (path[0] == '/')
		return path;
	if (!getcwd(cwd, sizeof(cwd)) || asprintf(&out, "%s/%s", cwd, path) < 0)
		return NULL;
	return out;
}

int main(int argc, char **argv)
{
	static struct kvfs_fs fs;
	struct kvfs_config *c = &fs.cfg;
	char mnt[PATH_MAX], state[PATH_MAX], tmp_state[] = "/tmp/kvfs-state-XXXXXX";
	struct stat st;
	int rc, pfd[2];
	pid_t pid;

	rc = parse_args(argc, argv, c);
	if (rc)
		return rc;
	if (c->fsck)
		return fsck_run(c->state_dir, c->fsck_repair, !c->fsck_no_verify);
	if (!realpath(c->mountpoint, mnt))
		return fail("mountpoint %s: %s", c->mountpoint, strerror(errno));
	if (stat(mnt, &st) || !S_ISDIR(st.st_mode))
		return fail("mountpoint %s is not a directory", mnt);
	c->mountpoint = mnt;
	if (c->state_dir) {
		if (mkdir(c->state_dir, 0700) && errno != EEXIST)
			return fail("state directory %s: %s", c->state_dir, strerror(errno));
		if (!realpath(c->state_dir, state))
			return fail("state directory %s: %s", c->state_dir, strerror(errno));
		c->state_dir = state;
	} else {
		if (!mkdtemp(tmp_state))
			return fail("cannot create a temporary state directory: %s",
				    strerror(errno));
		c->state_dir = tmp_state;
		c->state_is_temp = true;
	}
	for (unsigned i = 0; i < c->nvme_count; i++)
		if (!(c->nvme[i].dir = absolute(c->nvme[i].dir)))
			return fail("cannot resolve --nvme directory: %s", strerror(errno));
	if (c->token_file && !(c->token_file = absolute(c->token_file)))
		return fail("cannot resolve --cluster-token path: %s", strerror(errno));
	if (c->log_path && !(c->log_path = absolute(c->log_path)))
		return fail("cannot resolve --log path: %s", strerror(errno));
	kvfs_fs_global = &fs;
	pthread_rwlock_init(&fs.rmt_lock, NULL);

	if (!c->foreground) {
		if (pipe2(pfd, O_CLOEXEC))
			return fail("pipe: %s", strerror(errno));
		pid = fork();
		if (pid < 0)
			return fail("fork: %s", strerror(errno));
		if (pid > 0) {
			close(pfd[1]);
			return wait_child(pfd[0], pid);
		}
		close(pfd[0]);
		status_fd = pfd[1];
		setsid();
		if (chdir("/"))
			log_warn("chdir /: %s", strerror(errno));
	}
	return run(&fs);
}
