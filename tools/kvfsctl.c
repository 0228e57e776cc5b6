/*
 * tools/kvfsctl.c — the operator's tool: inspect and control a kvfs mount.
 *
 *   kvfsctl status MOUNT        the daemon's figures (MOUNT/.kvfs/stats)
 *   kvfsctl ls [-R] PATH...     files with size, tier, hits, pin state
 *   kvfsctl du PATH...          bytes and files under each path, by tier
 *   kvfsctl show FILE           decode and validate a native block
 *   kvfsctl pin|unpin FILE...   user.kvfs.pin
 *   kvfsctl evict PATH...       user.kvfs.evict, and what it did
 *   kvfsctl prefetch PATH...    kvfs_prefetch_paths(): files into the node's DRAM
 *   kvfsctl route NSDIR --tokens FILE | --keys FILE
 *                               kvfs_cluster_match_paths(): nodes by cached prefix
 *
 * DESIGN §1: a tool sees kvfs only through the public headers
 * (include/kvfs/) and the mount itself — files, extended attributes and the
 * `.kvfs/` control directory. Nothing here knows the daemon's internals, so
 * everything it shows is what any program could see.
 *
 * Walks (ls -R, du, evict of a directory) use nftw() with FTW_PHYS and
 * stream: nothing is collected before it is printed, so a directory of a
 * million cached blocks costs memory for one entry. Files are never opened
 * except by `show` (an open for reading counts as a hit); their attributes
 * come from lgetxattr(). Files can be evicted while a walk runs: an entry that
 * vanishes between readdir and lstat is a cache miss, not an error.
 *
 * Output is for people by default; --json (anywhere on the command line)
 * gives the same figures as JSON on stdout. Errors go to stderr as
 * "kvfsctl: <what>: <why>". Exit status: 0 success, 1 failure (or an invalid
 * block, or a file that stayed when asked to evict it), 2 bad usage.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "kvfs/format.h"
#include "kvfs/keys.h"
#include "kvfs/kvfs.h"

#ifndef KVFS_VERSION
#define KVFS_VERSION "unknown"
#endif

#define EXIT_USAGE   2
#define WALK_FDS     32		    /* descriptors nftw may hold open */
#define MAX_TIERS    16		    /* distinct tier strings du tells apart */
#define SHOW_TOKENS  8		    /* token ids `show` prints */
#define SHOW_EXTRA   32		    /* bytes of extra keys `show` prints in hex */
#define VERIFY_LIMIT (256ull << 20) /* largest layer `show` checks one by one */

static struct {
	bool json;
	bool recursive;
	bool repair;
	bool no_verify;
	bool wait;		 /* prefetch */
	const char *tokens;	 /* route */
	const char *keys;	 /* route */
	const char *seed;	 /* route: the hash seed */
	unsigned block_tokens; /* route */
	bool route_opts;       /* --seed or --block-tokens given */
} opt = {.seed = "0", .block_tokens = 16};

/* --- small helpers -------------------------------------------------------------------------- */

static void err(const char *what, const char *why)
{
	fflush(stdout);
	fprintf(stderr, "kvfsctl: %s: %s\n", what, why);
}

static void err_errno(const char *what, int e)
{
	err(what, strerror(e));
}

struct sz {
	char s[32];
};

/* @n bytes for people: "512 B", "1.5 KiB", "64.0 MiB". */
static struct sz fmt_size(uint64_t n)
{
	static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	struct sz out;
	double v;
	unsigned u = 0;

	if (n < 1024) {
		snprintf(out.s, sizeof(out.s), "%" PRIu64 " B", n);
		return out;
	}
	v = (double)n / 1024.0;
	while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024.0;
		u++;
	}
	snprintf(out.s, sizeof(out.s), "%.1f %s", v, units[u]);
	return out;
}

static struct sz fmt_duration(double secs)
{
	struct sz out;
	uint64_t t = secs > 0 ? (uint64_t)secs : 0;

	if (t < 60)
		snprintf(out.s, sizeof(out.s), "%.1fs", secs > 0 ? secs : 0.0);
	else if (t < 3600)
		snprintf(out.s, sizeof(out.s), "%" PRIu64 "m %" PRIu64 "s", t / 60, t % 60);
	else if (t < 86400)
		snprintf(out.s, sizeof(out.s), "%" PRIu64 "h %" PRIu64 "m %" PRIu64 "s", t / 3600,
			 t / 60 % 60, t % 60);
	else
		snprintf(out.s, sizeof(out.s), "%" PRIu64 "d %" PRIu64 "h %" PRIu64 "m", t / 86400,
			 t / 3600 % 24, t / 60 % 60);
	return out;
}

/* "@dir/@name" in a new string, or NULL. */
static char *path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir);
	char *p = malloc(n + strlen(name) + 2);

	if (!p)
		return NULL;
	memcpy(p, dir, n);
	if (n && dir[n - 1] != '/')
		p[n++] = '/';
	strcpy(p + n, name);
	return p;
}

/* Attribute @name of @path into @buf as a string. @return 0 or -errno. */
static int get_attr(const char *path, const char *name, char *buf, size_t len)
{
	ssize_t n = lgetxattr(path, name, buf, len - 1);

	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

static int set_attr(const char *path, const char *name, const char *value)
{
	return lsetxattr(path, name, value, strlen(value), 0) ? -errno : 0;
}

/* What the mount says about one file; fields stay empty where it says nothing. */
struct attrs {
	char tier[64];
	bool has_hits;
	uint64_t hits;
	bool pinned;
	char key[KVFS_KEY_HEX + 8];
};

static void read_attrs(const char *path, struct attrs *a, bool want_key)
{
	char buf[64];

	memset(a, 0, sizeof(*a));
	if (get_attr(path, "user.kvfs.tier", a->tier, sizeof(a->tier)))
		a->tier[0] = '\0';
	if (!get_attr(path, "user.kvfs.hits", buf, sizeof(buf))) {
		a->has_hits = true;
		a->hits = strtoull(buf, NULL, 10);
	}
	a->pinned = !get_attr(path, "user.kvfs.pin", buf, sizeof(buf)) && buf[0] == '1';
	if (want_key && get_attr(path, "user.kvfs.key", a->key, sizeof(a->key)))
		a->key[0] = '\0';
}

/* True if @dir is the root of a filesystem (its parent is on another device). */
static bool is_fs_root(const char *dir)
{
	struct stat d, up;
	char *p = path_join(dir, "..");
	bool root;

	if (!p)
		return false;
	root = stat(dir, &d) == 0 && stat(p, &up) == 0 &&
	       (d.st_dev != up.st_dev || d.st_ino == up.st_ino);
	free(p);
	return root;
}

/*
 * True for the control directory: a directory named .kvfs at the root of a
 * mount. @path is the entry, @base the offset of its name in @path.
 */
static bool is_ctl_dir(const char *path, size_t base)
{
	char *parent;
	bool ctl;

	if (strcmp(path + base, ".kvfs") != 0)
		return false;
	parent = base ? strndup(path, base) : strdup(".");
	if (!parent)
		return false;
	ctl = is_fs_root(parent);
	free(parent);
	return ctl;
}

/*
 * True if @path lies on a kvfs mount: the root of its filesystem holds
 * .kvfs/stats. Keeps pin and evict from setting real user.* attributes on an
 * ordinary filesystem. Walks up with ".." (resolved by the kernel) and looks
 * up nothing that may be missing below the root, so it adds no lookup misses
 * to the mount's statistics.
 */
static bool on_kvfs(const char *path)
{
	struct stat st, ctl;
	char *dir = realpath(path, NULL), *up, *p;
	bool found = false;

	if (!dir)
		return false;
	if (lstat(dir, &st))
		goto out;
	if (!S_ISDIR(st.st_mode)) {
		char *slash = strrchr(dir, '/');

		if (!slash)
			goto out;
		slash[slash == dir] = '\0';
	}
	while (!is_fs_root(dir)) {
		up = path_join(dir, "..");
		free(dir);
		dir = up ? realpath(up, NULL) : NULL;
		free(up);
		if (!dir)
			goto out;
	}
	if (lstat(dir, &st))
		goto out;
	p = path_join(dir, ".kvfs/stats");
	found = p && lstat(p, &ctl) == 0 && ctl.st_dev == st.st_dev;
	free(p);
out:
	free(dir);
	return found;
}

/* --- JSON arrays streamed one element at a time ------------------------------------------ */

static bool jarr_first;

static void jarr_begin(void)
{
	fputs("[", stdout);
	jarr_first = true;
}

/* Print @o as the next element and release it. */
static void jarr_item(json_t *o)
{
	fputs(jarr_first ? "\n  " : ",\n  ", stdout);
	json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	jarr_first = false;
}

static void jarr_end(void)
{
	fputs(jarr_first ? "]\n" : "\n]\n", stdout);
}

static json_t *json_str_or_null(const char *s)
{
	return s && *s ? json_string(s) : json_null();
}

/* --- status ---------------------------------------------------------------------------------- */

/* The value at "a.b.c" in @root, or NULL. */
static json_t *jget(json_t *root, const char *path)
{
	char buf[128], *save = NULL, *part;
	json_t *o = root;

	snprintf(buf, sizeof(buf), "%s", path);
	for (part = strtok_r(buf, ".", &save); part && o; part = strtok_r(NULL, ".", &save))
		o = json_is_object(o) ? json_object_get(o, part) : NULL;
	return o;
}

static uint64_t jnum(json_t *root, const char *path)
{
	json_t *v = jget(root, path);

	if (json_is_integer(v))
		return json_integer_value(v) < 0 ? 0 : (uint64_t)json_integer_value(v);
	if (json_is_real(v))
		return json_real_value(v) < 0 ? 0 : (uint64_t)json_real_value(v);
	return 0;
}

static const char *jstr(json_t *root, const char *path)
{
	json_t *v = jget(root, path);

	return json_is_string(v) ? json_string_value(v) : "?";
}

/* Load MOUNT/.kvfs/stats. @return the object, or NULL after saying why. */
static json_t *load_stats(const char *mount)
{
	json_error_t jerr;
	struct stat st;
	json_t *root = NULL;
	char *p;
	FILE *f;
	int fd;

	if (stat(mount, &st)) {
		err_errno(mount, errno);
		return NULL;
	}
	p = path_join(mount, ".kvfs/stats");
	if (!p) {
		err_errno(mount, ENOMEM);
		return NULL;
	}
	fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			err(mount, "not a kvfs mount");
		else
			err_errno(p, errno);
		goto out;
	}
	f = fdopen(fd, "r");
	if (!f) {
		err_errno(p, errno);
		close(fd);
		goto out;
	}
	root = json_loadf(f, 0, &jerr);
	fclose(f);
	if (!root)
		err(p, jerr.text);
	else if (!json_is_object(root)) {
		err(p, "not a JSON object");
		json_decref(root);
		root = NULL;
	}
out:
	free(p);
	return root;
}

/* The drain's progress (`status`, `drain`). */
static void print_drain(json_t *st)
{
	printf("drain      %s: %" PRIu64 "/%" PRIu64 " lent copies handed over (%" PRIu64
	       " failed); %" PRIu64 "/%" PRIu64 " files held only here handed over (%" PRIu64
	       " failed, %" PRIu64 " no room); %s in %.1f s\n",
	       jstr(st, "drain.state"), jnum(st, "drain.lent_moved"), jnum(st, "drain.lent_copies"),
	       jnum(st, "drain.lent_failed"), jnum(st, "drain.files_moved"),
	       jnum(st, "drain.files_only_here"), jnum(st, "drain.files_failed"),
	       jnum(st, "drain.files_no_room"), fmt_size(jnum(st, "drain.bytes_moved")).s,
	       json_number_value(jget(st, "drain.seconds")));
}

static int cmd_status(char **args, int nargs)
{
	json_t *st, *tiers, *t, *hr;
	const char *name;

	if (nargs != 1) {
		err("status", nargs ? "one MOUNT only" : "missing MOUNT");
		return EXIT_USAGE;
	}
	st = load_stats(args[0]);
	if (!st)
		return 1;
	if (opt.json) {
		json_dumpf(st, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(st);
		return 0;
	}

	printf("kvfs %s at %s: policy %s, up %s\n", jstr(st, "version"), jstr(st, "mountpoint"),
	       jstr(st, "policy"), fmt_duration(json_number_value(jget(st, "uptime_seconds"))).s);
	printf("capacity   %s (%" PRIu64 " bytes), used %s (%" PRIu64 " bytes)\n",
	       fmt_size(jnum(st, "capacity_bytes")).s, jnum(st, "capacity_bytes"),
	       fmt_size(jnum(st, "used_bytes")).s, jnum(st, "used_bytes"));
	printf("namespace  %" PRIu64 " files, %" PRIu64 " directories, %" PRIu64 " open handles\n",
	       jnum(st, "files"), jnum(st, "directories"), jnum(st, "open_handles"));

	printf("\n%-8s %12s %12s %12s %12s %8s %8s %10s\n", "TIER", "CAPACITY", "USED", "FREE",
	       "PINNED", "FILES", "PINNED", "PAGE");
	tiers = jget(st, "tiers");
	json_object_foreach(tiers, name, t)
	{
		printf("%-8s %12s %12s %12s %12s %8" PRIu64 " %8" PRIu64 " %10s\n", name,
		       fmt_size(jnum(t, "capacity_bytes")).s, fmt_size(jnum(t, "used_bytes")).s,
		       fmt_size(jnum(t, "free_bytes")).s, fmt_size(jnum(t, "pinned_bytes")).s,
		       jnum(t, "files"), jnum(t, "pinned_files"), fmt_size(jnum(t, "page_size")).s);
	}

	hr = jget(st, "hit_rate");
	printf("\nhit rate   ");
	if (json_is_number(hr))
		printf("%.1f%%", 100.0 * json_number_value(hr));
	else
		printf("n/a");
	printf(" (%" PRIu64 " hits, %" PRIu64 " misses)\n", jnum(st, "hits"), jnum(st, "misses"));
	printf("evictions  %" PRIu64 " (%s; %" PRIu64 " by operator), enospc %" PRIu64 "\n",
	       jnum(st, "evictions"), fmt_size(jnum(st, "evicted_bytes")).s,
	       jnum(st, "operator_evictions"), jnum(st, "enospc"));
	printf("native     %" PRIu64 " valid, %" PRIu64 " invalid\n", jnum(st, "native.valid"),
	       jnum(st, "native.invalid"));
	printf("catalog    %" PRIu64 " commits, %" PRIu64 " errors; %" PRIu64
	       " files dropped at restart\n",
	       jnum(st, "catalog.commits"), jnum(st, "catalog.errors"),
	       jnum(st, "restart_dropped"));
	if (jnum(st, "prefetch.requests"))
		printf("prefetch   %" PRIu64 " paths: %" PRIu64 " queued, %" PRIu64 " present, %" PRIu64
		       " missing, %" PRIu64 " denied, %" PRIu64 " dropped; %" PRIu64
		       " fetched, %" PRIu64 " promoted, %" PRIu64 " failed (%s)\n",
		       jnum(st, "prefetch.paths"), jnum(st, "prefetch.queued"),
		       jnum(st, "prefetch.present"), jnum(st, "prefetch.missing"),
		       jnum(st, "prefetch.denied"), jnum(st, "prefetch.dropped"),
		       jnum(st, "prefetch.fetched"), jnum(st, "prefetch.promoted"),
		       jnum(st, "prefetch.failed"), fmt_size(jnum(st, "prefetch.bytes")).s);
	{
		json_t *pools = jget(st, "gpu.pools"), *p;
		size_t k;

		json_array_foreach(pools, k, p)
		{
			printf("gpu        device %" PRIu64 " (%s): pool %s, %s free, blocks of %s\n",
			       jnum(p, "device"), jstr(p, "impl"), fmt_size(jnum(p, "bytes")).s,
			       fmt_size(jnum(p, "free_blocks") * jnum(p, "block_bytes")).s,
			       fmt_size(jnum(p, "block_bytes")).s);
		}
		if (json_array_size(pools))
			printf("gpu        %" PRIu64 " engine registrations, %" PRIu64
			       " refused, %" PRIu64 " copy errors; %s loaded, %" PRIu64
			       " blocks saved\n",
			       jnum(st, "gpu.registrations"), jnum(st, "gpu.refused"),
			       jnum(st, "gpu.copy_errors"), fmt_size(jnum(st, "gpu.loaded_bytes")).s,
			       jnum(st, "gpu.saved_blocks"));
	}
	if (jget(st, "remote")) {
		json_t *peers = jget(st, "remote.peers"), *p;
		size_t k;

		printf("\ncluster    node %s on %s, %" PRIu64 " peers alive\n",
		       jstr(st, "remote.node_id"), jstr(st, "remote.provider"),
		       jnum(st, "remote.peers_alive"));
		printf("fetched    %" PRIu64 " files (%s), %" PRIu64 " misses, %" PRIu64
		       " failed\n",
		       jnum(st, "remote.fetched"), fmt_size(jnum(st, "remote.fetched_bytes")).s,
		       jnum(st, "remote.fetch_misses"), jnum(st, "remote.fetch_errors"));
		printf("served     %" PRIu64 " files (%s), %" PRIu64 " refused\n",
		       jnum(st, "remote.served"), fmt_size(jnum(st, "remote.served_bytes")).s,
		       jnum(st, "remote.refused"));
		printf("offloaded  %" PRIu64 " files (%s), %" PRIu64 " failed; lent %s of %s to "
		       "peers (%" PRIu64 " files received, %" PRIu64 " dropped for newer)\n",
		       jnum(st, "remote.spilled"), fmt_size(jnum(st, "remote.offload_bytes")).s,
		       jnum(st, "remote.spill_failed"), fmt_size(jnum(st, "remote.lend_used_bytes")).s,
		       fmt_size(jnum(st, "remote.lend_capacity_bytes")).s,
		       jnum(st, "remote.offloads_received"), jnum(st, "remote.lent_evictions"));
		printf("pushed     %" PRIu64 " files (%s) to named peers, %" PRIu64 " kept local "
		       "(peer dead or full)\n",
		       jnum(st, "push.pushed"), fmt_size(jnum(st, "push.bytes")).s,
		       jnum(st, "push.fallbacks"));
		printf("errors     %" PRIu64 " checksum, %" PRIu64 " timeouts, %" PRIu64
		       " connection, %" PRIu64 " refused tokens, %" PRIu64 " redis\n",
		       jnum(st, "remote.checksum_failures"), jnum(st, "remote.timeouts"),
		       jnum(st, "remote.conn_errors"), jnum(st, "remote.auth_refused"),
		       jnum(st, "remote.redis_errors"));
		printf("\n%-24s %-6s %12s %12s\n", "PEER", "STATE", "LENDS", "FREE");
		json_array_foreach(peers, k, p)
			printf("%-24s %-6s %12s %12s%s\n", jstr(p, "node"),
			       json_is_true(json_object_get(p, "alive")) ? "alive" : "dead",
			       fmt_size(jnum(p, "lend_total")).s, fmt_size(jnum(p, "lend_free")).s,
			       json_is_true(json_object_get(p, "self")) ? "  (this node)" : "");
	}
	if (jget(st, "drain")) {
		putchar('\n');
		print_drain(st);
	}
	json_decref(st);
	return 0;
}

/* --- where ------------------------------------------------------------------------------- */

/*
 * Split @path into the kvfs mount that holds it and the path below the
 * mount's root: the deepest existing directory of @path is resolved, then
 * walked up until a directory has .kvfs/where. The file itself need not
 * exist here (that is the point: it may be on peers only).
 * @return 0 (@mount and @rel malloc'd), or -errno after saying why.
 */
static int split_mount(const char *path, char **mount, char **rel)
{
	char *dir = strdup(path), *real = NULL, *rest = NULL, *slash, *probe;
	struct stat st;
	size_t len;
	int rc = -ENOENT;

	if (!dir)
		return -ENOMEM;
	len = strlen(dir);
	while (len > 1 && dir[len - 1] == '/')
		dir[--len] = '\0';
	/*
	 * Never resolve the last component: looking it up would fetch the file
	 * from a peer. Then climb from the deepest existing directory.
	 */
	slash = strrchr(dir, '/');
	if (!slash) {
		rest = strdup(dir);
		real = realpath(".", NULL);
	} else {
		rest = strdup(slash + 1);
		*slash = '\0';
		real = realpath(slash == dir ? "/" : dir, NULL);
	}
	while (!real && rest && (slash = strrchr(dir, '/')) && slash != dir) {
		char *joined = NULL;

		if (asprintf(&joined, "%s/%s", slash + 1, rest) < 0)
			joined = NULL;
		free(rest);
		rest = joined;
		*slash = '\0';
		real = realpath(dir, NULL);
	}
	while (real && rest) {
		probe = path_join(real, ".kvfs/where");
		if (probe && stat(probe, &st) == 0) {
			free(probe);
			rc = 0;
			break;
		}
		free(probe);
		slash = strrchr(real, '/');
		if (!slash || slash == real)
			break;
		{
			char *joined = NULL;

			if (asprintf(&joined, "%s/%s", slash + 1, rest) < 0)
				joined = NULL;
			free(rest);
			rest = joined;
		}
		*slash = '\0';
	}
	free(dir);
	if (rc || !rest) {
		free(real);
		free(rest);
		err(path, "not inside a kvfs mount");
		return rc ? rc : -ENOMEM;
	}
	*mount = real;
	*rel = rest;
	return 0;
}

static int cmd_where(char **args, int nargs)
{
	int rc = 0;

	if (nargs < 1) {
		err("where", "missing PATH");
		return EXIT_USAGE;
	}
	for (int i = 0; i < nargs; i++) {
		char *mount = NULL, *rel = NULL, *ctl, buf[65536];
		json_error_t jerr;
		json_t *ans, *h;
		ssize_t n;
		size_t k;
		int fd;

		if (split_mount(args[i], &mount, &rel)) {
			rc = 1;
			continue;
		}
		ctl = path_join(mount, ".kvfs/where");
		fd = ctl ? open(ctl, O_RDWR | O_CLOEXEC) : -1;
		if (fd < 0 || write(fd, rel, strlen(rel)) != (ssize_t)strlen(rel) ||
		    (n = pread(fd, buf, sizeof(buf) - 1, 0)) < 0) {
			int e = errno;

			err(args[i], e == ENOTCONN ? "this mount is not in a cluster (--cluster)"
				     : e == EINVAL ? "not a path in the cluster"
						   : strerror(e));
			rc = 1;
			goto next;
		}
		buf[n] = '\0';
		ans = json_loads(buf, 0, &jerr);
		if (!ans) {
			err(args[i], jerr.text);
			rc = 1;
			goto next;
		}
		if (opt.json) {
			json_dumpf(ans, stdout, JSON_INDENT(2));
			fputc('\n', stdout);
		} else {
			json_t *holders = json_object_get(ans, "holders");

			printf("%s:%s\n", rel, json_array_size(holders) ? "" : " held by no node");
			json_array_foreach(holders, k, h)
				printf("  %-24s %-5s %s%s\n", jstr(h, "node"), jstr(h, "tier"),
				       json_is_true(json_object_get(h, "alive")) ? "alive" : "dead",
				       json_is_true(json_object_get(h, "self")) ? " (this node)" : "");
		}
		json_decref(ans);
	next:
		if (fd >= 0)
			close(fd);
		free(ctl);
		free(mount);
		free(rel);
	}
	return rc;
}

/* --- prefetch ------------------------------------------------------------------------------ */

static int cmd_prefetch(char **args, int nargs)
{
	struct kvfs_prefetch_info in;
	long rc;

	if (nargs < 1) {
		err("prefetch", "missing PATH");
		return EXIT_USAGE;
	}
	rc = kvfs_prefetch_paths((const char *const *)args, (size_t)nargs,
				 opt.wait ? KVFS_PREFETCH_WAIT : 0, &in);
	if (rc < 0) {
		err("prefetch", rc == -ENOTSUP ? "not inside a kvfs mount"
				: rc == -EXDEV ? "the paths are on more than one mount"
					       : strerror((int)-rc));
		return 1;
	}
	if (opt.json) {
		json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:b}", "queued", (json_int_t)in.queued,
				      "present", (json_int_t)in.present, "missing",
				      (json_int_t)in.missing, "denied", (json_int_t)in.denied,
				      "dropped", (json_int_t)in.dropped, "index_unreachable",
				      in.index_unreachable);

		if (opt.wait) {
			json_object_set_new(o, "fetched", json_integer((json_int_t)in.fetched));
			json_object_set_new(o, "promoted", json_integer((json_int_t)in.promoted));
			json_object_set_new(o, "failed", json_integer((json_int_t)in.failed));
			json_object_set_new(o, "pending", json_integer((json_int_t)in.pending));
		}
		json_dumpf(o, stdout, JSON_INDENT(2));
		fputc('\n', stdout);
		json_decref(o);
	} else {
		printf("queued %" PRIu64 ", already in DRAM %" PRIu64 ", missing %" PRIu64
		       ", denied %" PRIu64 ", dropped %" PRIu64 "\n",
		       in.queued, in.present, in.missing, in.denied, in.dropped);
		if (opt.wait)
			printf("fetched from peers %" PRIu64 ", promoted from NVMe %" PRIu64
			       ", failed %" PRIu64 ", still pending %" PRIu64 "\n",
			       in.fetched, in.promoted, in.failed, in.pending);
		if (in.index_unreachable)
			err("prefetch", "the cluster index is unreachable: only local files were queued");
	}
	return 0;
}

/* --- route ---------------------------------------------------------------------------------- */

/* Token ids from @path: integers separated by anything else ("1 2 3", "[1, 2, 3]"). */
static long read_tokens(const char *path, uint32_t **out)
{
	FILE *f = fopen(path, "re");
	size_t n = 0, cap = 0;
	uint32_t *t = NULL;
	int c;

	if (!f)
		return -errno;
	while ((c = fgetc(f)) != EOF) {
		unsigned long long v = 0;
		bool digits = false;

		while (c >= '0' && c <= '9') {
			v = v * 10 + (unsigned)(c - '0');
			digits = true;
			if (v > UINT32_MAX) {
				fclose(f);
				free(t);
				return -ERANGE;
			}
			c = fgetc(f);
		}
		if (c == '-' || c == '.' || (c != EOF && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))) {
			fclose(f);
			free(t);
			return -EINVAL; /* not a list of token ids */
		}
		if (!digits)
			continue;
		if (n == cap) {
			uint32_t *p = realloc(t, (cap = cap ? cap * 2 : 1024) * sizeof(*t));

			if (!p) {
				fclose(f);
				free(t);
				return -ENOMEM;
			}
			t = p;
		}
		t[n++] = (uint32_t)v;
	}
	fclose(f);
	*out = t;
	return (long)n;
}

/* Keys from @path: 64 hex digits a line. */
static long read_keys(const char *path, kvfs_key **out)
{
	FILE *f = fopen(path, "re");
	char line[256];
	size_t n = 0, cap = 0;
	kvfs_key *k = NULL;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		size_t l = strcspn(line, " \t\r\n");

		if (l == 0)
			continue;
		line[l] = '\0';
		if (n == cap) {
			kvfs_key *p = realloc(k, (cap = cap ? cap * 2 : 256) * sizeof(*k));

			if (!p) {
				fclose(f);
				free(k);
				return -ENOMEM;
			}
			k = p;
		}
		if (kvfs_key_from_hex(line, &k[n])) {
			fclose(f);
			free(k);
			return -EINVAL;
		}
		n++;
	}
	fclose(f);
	*out = k;
	return (long)n;
}

static int cmd_route(char **args, int nargs)
{
	struct kvfs_node_prefix nodes[256];
	kvfs_key *keys = NULL, root;
	uint32_t *tok = NULL;
	char **paths = NULL;
	long nk = 0, got;
	int rc = 1;

	if (nargs != 1 || !!opt.tokens == !!opt.keys) {
		err("route", nargs != 1 ? "one NAMESPACE_DIR" : "one of --tokens FILE or --keys FILE");
		return EXIT_USAGE;
	}
	if (opt.tokens) {
		long nt = read_tokens(opt.tokens, &tok);

		if (nt < 0) {
			err(opt.tokens, nt == -EINVAL ? "not a list of token ids" : strerror((int)-nt));
			return 1;
		}
		keys = calloc((size_t)nt / opt.block_tokens + 1, sizeof(*keys));
		if (!keys || kvfs_key_root(opt.seed, &root)) {
			err("route", strerror(ENOMEM));
			goto out;
		}
		nk = kvfs_key_chain(&root, 0, tok, (size_t)nt, opt.block_tokens, NULL, keys,
				    (size_t)nt / opt.block_tokens + 1);
	} else {
		nk = read_keys(opt.keys, &keys);
		if (nk < 0) {
			err(opt.keys, nk == -EINVAL ? "not one 64-hex-digit key a line" : strerror((int)-nk));
			goto out;
		}
	}
	if (nk <= 0) {
		err("route", "no full block in the prompt: nothing to match");
		goto out;
	}
	paths = calloc((size_t)nk, sizeof(*paths));
	for (long i = 0; paths && i < nk; i++) {
		char hex[KVFS_KEY_HEX + 1];

		kvfs_key_to_hex(&keys[i], hex);
		if (asprintf(&paths[i], "%s/%s", args[0], hex) < 0)
			paths[i] = NULL;
		if (!paths[i]) {
			err("route", strerror(ENOMEM));
			goto out;
		}
	}
	got = kvfs_cluster_match_paths((const char *const *)paths, (size_t)nk, nodes,
				       (sizeof(nodes) / sizeof(nodes[0])));
	if (got < 0) {
		err(args[0], got == -ENOTCONN ? "the cluster index is unreachable (the local cache "
						"still works; no routing decision)"
			     : got == -ENOTSUP ? "not a kvfs mount in a cluster (--cluster)"
					       : strerror((int)-got));
		goto out;
	}
	if ((size_t)got > (sizeof(nodes) / sizeof(nodes[0])))
		got = (long)(sizeof(nodes) / sizeof(nodes[0]));
	if (opt.json) {
		json_t *o = json_object(), *arr = json_array();

		json_object_set_new(o, "blocks", json_integer(nk));
		json_object_set_new(o, "block_tokens", json_integer(opt.block_tokens));
		for (long i = 0; i < got; i++)
			json_array_append_new(
				arr, json_pack("{s:s,s:i,s:I,s:i,s:s,s:b}", "node", nodes[i].node,
					       "blocks", (int)nodes[i].blocks, "tokens",
					       (json_int_t)nodes[i].blocks * opt.block_tokens,
					       "fast_blocks", (int)nodes[i].fast_blocks, "tier",
					       nodes[i].tier, "self", nodes[i].self));
		json_object_set_new(o, "nodes", arr);
		json_object_set_new(o, "route", got ? json_string(nodes[0].node) : json_null());
		json_dumpf(o, stdout, JSON_INDENT(2));
		fputc('\n', stdout);
		json_decref(o);
	} else {
		printf("%ld blocks (%ld tokens) in %s\n", nk, nk * (long)opt.block_tokens, args[0]);
		if (!got)
			printf("  no node holds any of it: route anywhere (by load)\n");
		for (long i = 0; i < got; i++)
			printf("  %-24s %6u blocks %7u tokens  %u in DRAM  slowest %s%s\n",
			       nodes[i].node, nodes[i].blocks, nodes[i].blocks * opt.block_tokens,
			       nodes[i].fast_blocks, nodes[i].tier, nodes[i].self ? "  (this node)" : "");
		if (got)
			printf("route: %s\n", nodes[0].node);
	}
	rc = 0;
out:
	for (long i = 0; paths && i < nk; i++)
		free(paths[i]);
	free(paths);
	free(keys);
	free(tok);
	return rc;
}

/* --- walking trees ------------------------------------------------------------------------- */

/*
 * nftw() takes no context pointer, so the walk in progress lives here; one
 * walk runs at a time.
 */
typedef void (*walk_fn)(const char *path, const char *rel, const struct stat *st, void *ctx);

static struct {
	walk_fn fn;
	void *ctx;
	size_t root_len; /* strlen of the walk's root path */
	int errors;
} walk;

static int walk_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	const char *rel = path + walk.root_len;
	struct stat again;

	while (*rel == '/')
		rel++;
	if (ftw->level == 0)
		rel = path;
	switch (type) {
	case FTW_NS:
		/* Gone since readdir (evicted, deleted): a cache may lose a file. */
		if (lstat(path, &again) && errno != ENOENT) {
			err_errno(path, errno);
			walk.errors++;
		}
		return FTW_CONTINUE;
	case FTW_DNR:
		err(path, "cannot read directory");
		walk.errors++;
		return FTW_CONTINUE;
	case FTW_D:
		if (ftw->level > 0 && is_ctl_dir(path, (size_t)ftw->base))
			return FTW_SKIP_SUBTREE;
		break;
	default:
		break;
	}
	walk.fn(path, rel, st, walk.ctx);
	return FTW_CONTINUE;
}

/*
 * Call @fn for @root and everything under it, directories before their
 * entries. @return 0, or -errno if @root cannot be walked (already reported
 * for entries below it, counted in the return of walk_errors()).
 */
static int walk_tree(const char *root, walk_fn fn, void *ctx)
{
	int rc;

	walk.fn = fn;
	walk.ctx = ctx;
	walk.root_len = strlen(root);
	walk.errors = 0;
	rc = nftw(root, walk_cb, WALK_FDS, FTW_PHYS | FTW_ACTIONRETVAL);
	if (rc == -1)
		return -errno;
	return walk.errors ? -EIO : 0;
}

/* --- ls ----------------------------------------------------------------------------------------
 */

static bool ls_header;

static void ls_entry(const char *path, const char *name, const struct stat *st)
{
	bool reg = S_ISREG(st->st_mode), dir = S_ISDIR(st->st_mode);
	struct attrs a;
	char hits[24];

	if (reg)
		read_attrs(path, &a, opt.json);
	else
		memset(&a, 0, sizeof(a));

	if (opt.json) {
		json_t *o = json_object();

		json_object_set_new(o, "path", json_string(path));
		json_object_set_new(o, "type", json_string(reg ? "file" : dir ? "dir" : "other"));
		json_object_set_new(o, "size", json_integer((json_int_t)st->st_size));
		json_object_set_new(o, "tier", json_str_or_null(a.tier));
		json_object_set_new(o, "hits",
				    a.has_hits ? json_integer((json_int_t)a.hits) : json_null());
		json_object_set_new(o, "pinned", json_boolean(a.pinned));
		if (a.key[0])
			json_object_set_new(o, "key", json_string(a.key));
		jarr_item(o);
		return;
	}
	if (!ls_header) {
		printf("%12s  %-8s %6s  %-3s  %s\n", "SIZE", "TIER", "HITS", "PIN", "NAME");
		ls_header = true;
	}
	if (a.has_hits)
		snprintf(hits, sizeof(hits), "%" PRIu64, a.hits);
	else
		snprintf(hits, sizeof(hits), "-");
	if (reg)
		printf("%12jd  %-8s %6s  %-3s  %s\n", (intmax_t)st->st_size,
		       a.tier[0] ? a.tier : "-", hits, a.pinned ? "yes" : "no", name);
	else
		printf("%12s  %-8s %6s  %-3s  %s%s\n", "-", dir ? "dir" : "-", "-", "-", name,
		       dir ? "/" : "");
}

static void ls_walk_fn(const char *path, const char *rel, const struct stat *st, void *ctx)
{
	/* The root directory itself is the listing's title, not an entry. */
	if (rel == path && S_ISDIR(st->st_mode))
		return;
	ls_entry(path, rel, st);
}

/* The entries of one directory, as readdir returns them. @return 0 or 1. */
static int ls_dir(const char *dir)
{
	struct dirent *de;
	struct stat st;
	bool root = is_fs_root(dir);
	int rc = 0;
	DIR *d = opendir(dir);

	if (!d) {
		err_errno(dir, errno);
		return 1;
	}
	for (errno = 0; (de = readdir(d)); errno = 0) {
		char *p;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (root && !strcmp(de->d_name, ".kvfs"))
			continue;
		p = path_join(dir, de->d_name);
		if (!p) {
			err_errno(dir, ENOMEM);
			rc = 1;
			break;
		}
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			ls_entry(p, de->d_name, &st);
		else if (errno != ENOENT) { /* ENOENT: evicted since readdir */
			err_errno(p, errno);
			rc = 1;
		}
		free(p);
	}
	if (errno) {
		err_errno(dir, errno);
		rc = 1;
	}
	closedir(d);
	return rc;
}

static int cmd_ls(char **args, int nargs)
{
	static char *dot[] = {"."};
	struct stat st;
	int i, rc = 0;

	if (nargs == 0) {
		args = dot;
		nargs = 1;
	}
	if (opt.json)
		jarr_begin();
	for (i = 0; i < nargs; i++) {
		if (lstat(args[i], &st)) {
			err_errno(args[i], errno);
			rc = 1;
			continue;
		}
		if (!S_ISDIR(st.st_mode)) {
			ls_entry(args[i], args[i], &st);
			continue;
		}
		if (!opt.json && nargs > 1) {
			printf("%s%s:\n", i ? "\n" : "", args[i]);
			ls_header = false;
		}
		if (opt.recursive) {
			int wrc = walk_tree(args[i], ls_walk_fn, NULL);

			if (wrc && wrc != -EIO)
				err_errno(args[i], -wrc);
			if (wrc)
				rc = 1;
		} else if (ls_dir(args[i])) {
			rc = 1;
		}
	}
	if (opt.json)
		jarr_end();
	return rc;
}

/* --- du ----------------------------------------------------------------------------------------
 */

struct tier_sum {
	char name[64];
	uint64_t files, bytes;
};

struct du_sum {
	uint64_t files, bytes, dirs;
	size_t ntiers;
	struct tier_sum tiers[MAX_TIERS];
};

static void du_add(struct du_sum *s, const char *tier, uint64_t bytes)
{
	size_t i;

	s->files++;
	s->bytes += bytes;
	if (!*tier)
		tier = "none";
	for (i = 0; i < s->ntiers; i++)
		if (!strcmp(s->tiers[i].name, tier))
			break;
	if (i == s->ntiers) {
		if (s->ntiers == MAX_TIERS)
			i = MAX_TIERS - 1, tier = "other";
		else
			s->ntiers++;
		snprintf(s->tiers[i].name, sizeof(s->tiers[i].name), "%s", tier);
	}
	s->tiers[i].files++;
	s->tiers[i].bytes += bytes;
}

static void du_walk_fn(const char *path, const char *rel, const struct stat *st, void *ctx)
{
	struct du_sum *s = ctx;
	char tier[64];

	if (S_ISDIR(st->st_mode)) {
		if (rel != path)
			s->dirs++;
		return;
	}
	if (!S_ISREG(st->st_mode))
		return;
	if (get_attr(path, "user.kvfs.tier", tier, sizeof(tier)))
		tier[0] = '\0';
	du_add(s, tier, (uint64_t)st->st_size);
}

/* Sum @path. @return 0, or 1 after reporting errors. */
static int du_path(const char *path, struct du_sum *s)
{
	struct stat st;
	int rc;

	memset(s, 0, sizeof(*s));
	if (lstat(path, &st)) {
		err_errno(path, errno);
		return 1;
	}
	rc = walk_tree(path, du_walk_fn, s);
	if (rc && rc != -EIO)
		err_errno(path, -rc);
	return rc ? 1 : 0;
}

static json_t *du_json(const char *path, const struct du_sum *s)
{
	json_t *o = json_object(), *t = json_object();

	if (path)
		json_object_set_new(o, "path", json_string(path));
	json_object_set_new(o, "files", json_integer((json_int_t)s->files));
	json_object_set_new(o, "bytes", json_integer((json_int_t)s->bytes));
	json_object_set_new(o, "directories", json_integer((json_int_t)s->dirs));
	for (size_t i = 0; i < s->ntiers; i++)
		json_object_set_new(t, s->tiers[i].name,
				    json_pack("{s:I,s:I}", "files", (json_int_t)s->tiers[i].files,
					      "bytes", (json_int_t)s->tiers[i].bytes));
	json_object_set_new(o, "tiers", t);
	return o;
}

static void du_print(const char *path, const struct du_sum *s)
{
	printf("%s: %" PRIu64 " files, %s (%" PRIu64 " bytes)\n", path, s->files,
	       fmt_size(s->bytes).s, s->bytes);
	for (size_t i = 0; i < s->ntiers; i++)
		printf("  %-10s %" PRIu64 " files, %s (%" PRIu64 " bytes)\n", s->tiers[i].name,
		       s->tiers[i].files, fmt_size(s->tiers[i].bytes).s, s->tiers[i].bytes);
}

static int cmd_du(char **args, int nargs)
{
	static char *dot[] = {"."};
	struct du_sum s, total;
	int i, rc = 0, counted = 0;

	if (nargs == 0) {
		args = dot;
		nargs = 1;
	}
	memset(&total, 0, sizeof(total));
	if (opt.json)
		jarr_begin();
	for (i = 0; i < nargs; i++) {
		struct stat st;

		if (lstat(args[i], &st)) {
			err_errno(args[i], errno);
			rc = 1;
			continue;
		}
		if (du_path(args[i], &s))
			rc = 1;
		counted++;
		total.files += s.files;
		total.bytes += s.bytes;
		if (opt.json)
			jarr_item(du_json(args[i], &s));
		else
			du_print(args[i], &s);
	}
	if (opt.json)
		jarr_end();
	else if (counted > 1)
		printf("total: %" PRIu64 " files, %s (%" PRIu64 " bytes)\n", total.files,
		       fmt_size(total.bytes).s, total.bytes);
	return rc;
}

/* --- pin, unpin --------------------------------------------------------------------------------
 */

static int cmd_pin(char **args, int nargs, bool pin)
{
	const char *verb = pin ? "pin" : "unpin";
	int i, rc = 0, e;

	if (nargs == 0) {
		err(verb, "missing FILE");
		return EXIT_USAGE;
	}
	if (opt.json)
		jarr_begin();
	for (i = 0; i < nargs; i++) {
		struct stat st;

		if (lstat(args[i], &st)) {
			err_errno(args[i], errno);
			rc = 1;
			continue;
		}
		if (!on_kvfs(args[i])) {
			err(args[i], "not on a kvfs mount");
			rc = 1;
			continue;
		}
		e = set_attr(args[i], "user.kvfs.pin", pin ? "1" : "0");
		if (e) {
			err_errno(args[i], -e);
			rc = 1;
			continue;
		}
		if (opt.json)
			jarr_item(json_pack("{s:s,s:b}", "path", args[i], "pinned", pin));
		else
			printf("%s %s\n", pin ? "pinned" : "unpinned", args[i]);
	}
	if (opt.json)
		jarr_end();
	return rc;
}

/* --- evict -------------------------------------------------------------------------------------
 */

/* Evict one file. @return 0 if it went, 1 if it stayed or failed. */
static int evict_file(const char *path, const struct stat *st)
{
	const char *stayed = NULL, *reason = NULL;
	char pin[8];
	int e = set_attr(path, "user.kvfs.evict", "1");

	if (e == -EBUSY) {
		stayed = "open, not evicted";
		reason = "open";
	} else if (e == -EPERM && !get_attr(path, "user.kvfs.pin", pin, sizeof(pin)) &&
		   pin[0] == '1') {
		stayed = "pinned, not evicted";
		reason = "pinned";
	} else if (e) {
		err_errno(path, -e);
		return 1;
	}
	if (opt.json) {
		json_t *o = json_pack("{s:s,s:s,s:b,s:I}", "path", path, "type", "file", "evicted",
				      !stayed, "bytes", (json_int_t)st->st_size);

		if (reason)
			json_object_set_new(o, "reason", json_string(reason));
		jarr_item(o);
	} else {
		printf("%s: %s\n", path, stayed ? stayed : "evicted");
	}
	return stayed ? 1 : 0;
}

struct evict_sum {
	uint64_t files, bytes;   /* evicted */
	uint64_t stayed, stayed_bytes;
	int errors;
};

/*
 * One file of a tree. Files are evicted one request each, not with one
 * request on the directory: the daemon can only drop a name from the
 * kernel's cache before replying when the kernel does not hold the
 * directory's lock, and a request on the directory holds it.
 */
static void evict_walk_fn(const char *path, const char *rel, const struct stat *st, void *ctx)
{
	struct evict_sum *s = ctx;
	char pin[8];
	int e;

	if (!S_ISREG(st->st_mode))
		return;
	e = set_attr(path, "user.kvfs.evict", "1");
	if (e == 0) {
		s->files++;
		s->bytes += (uint64_t)st->st_size;
	} else if (e == -EBUSY || (e == -EPERM && !get_attr(path, "user.kvfs.pin", pin, sizeof(pin)) &&
				   pin[0] == '1')) {
		s->stayed++;
		s->stayed_bytes += (uint64_t)st->st_size;
	} else if (e != -ENOENT) { /* ENOENT: evicted meanwhile */
		err_errno(path, -e);
		s->errors++;
	}
}

/* Evict every evictable file under a directory; report what went and what stayed. */
static int evict_dir(const char *path)
{
	struct evict_sum s = {0};
	int rc = walk_tree(path, evict_walk_fn, &s);

	if (rc && rc != -EIO) {
		err_errno(path, -rc);
		return 1;
	}
	if (opt.json) {
		jarr_item(json_pack("{s:s,s:s,s:I,s:I,s:I,s:I}", "path", path, "type", "dir",
				    "evicted_files", (json_int_t)s.files, "evicted_bytes",
				    (json_int_t)s.bytes, "remaining_files", (json_int_t)s.stayed,
				    "remaining_bytes", (json_int_t)s.stayed_bytes));
		return s.errors ? 1 : 0;
	}
	printf("%s: evicted %" PRIu64 " files (%s)", path, s.files, fmt_size(s.bytes).s);
	if (s.stayed)
		printf(", %" PRIu64 " files (%s) stay: pinned or open", s.stayed,
		       fmt_size(s.stayed_bytes).s);
	printf("\n");
	return s.errors ? 1 : 0;
}

static int cmd_evict(char **args, int nargs)
{
	int i, rc = 0;

	if (nargs == 0) {
		err("evict", "missing PATH");
		return EXIT_USAGE;
	}
	if (opt.json)
		jarr_begin();
	for (i = 0; i < nargs; i++) {
		struct stat st;

		if (lstat(args[i], &st)) {
			err_errno(args[i], errno);
			rc = 1;
			continue;
		}
		if (!on_kvfs(args[i])) {
			err(args[i], "not on a kvfs mount");
			rc = 1;
			continue;
		}
		if (S_ISDIR(st.st_mode) ? evict_dir(args[i]) : evict_file(args[i], &st))
			rc = 1;
	}
	if (opt.json)
		jarr_end();
	return rc;
}

/* --- verify ----------------------------------------------------------------------------------- */

struct verify_sum {
	uint64_t total, done, bad, lost;
	bool tty;
};

static void count_fn(const char *path, const char *rel, const struct stat *st, void *ctx)
{
	if (S_ISREG(st->st_mode))
		((struct verify_sum *)ctx)->total++;
}

/*
 * One file: the daemon re-reads its copies and checks them (NVMe checksums,
 * native block validation) and drops a bad one.
 */
static void verify_fn(const char *path, const char *rel, const struct stat *st, void *ctx)
{
	struct verify_sum *s = ctx;
	int e;

	if (!S_ISREG(st->st_mode))
		return;
	e = set_attr(path, "user.kvfs.verify", "1");
	s->done++;
	if (e == -EBADMSG) {
		s->bad++;
		if (s->tty)
			fprintf(stderr, "\r\033[K");
		printf("%s: a bad copy was found and dropped (the file remains)\n", path);
	} else if (e == -EIO) {
		s->bad++;
		s->lost++;
		if (s->tty)
			fprintf(stderr, "\r\033[K");
		printf("%s: its only copy was bad: dropped (a miss from now on)\n", path);
	} else if (e && e != -ENOENT && e != -EBUSY) {
		err_errno(path, -e);
		s->bad++;
	}
	if (s->tty && (s->done % 64 == 0 || s->done == s->total)) {
		int w = s->total ? (int)(40 * s->done / s->total) : 40;

		fprintf(stderr, "\rverify [%-40.*s] %" PRIu64 "/%" PRIu64, w,
			"########################################", s->done, s->total);
		fflush(stderr);
	}
}

static int cmd_verify(char **args, int nargs)
{
	struct verify_sum s = {.tty = isatty(2)};
	int rc = 0;

	if (nargs == 0) {
		err("verify", "missing PATH");
		return EXIT_USAGE;
	}
	for (int i = 0; i < nargs; i++) {
		struct stat st;

		if (lstat(args[i], &st)) {
			err_errno(args[i], errno);
			rc = 1;
			continue;
		}
		if (!on_kvfs(args[i])) {
			err(args[i], "not on a kvfs mount");
			rc = 1;
			continue;
		}
		if (s.tty)
			walk_tree(args[i], count_fn, &s);
		if (S_ISDIR(st.st_mode))
			walk_tree(args[i], verify_fn, &s);
		else
			verify_fn(args[i], args[i], &st, &s);
	}
	if (s.tty)
		fprintf(stderr, "\n");
	if (opt.json)
		printf("{\"verified\": %" PRIu64 ", \"bad\": %" PRIu64 ", \"lost\": %" PRIu64 "}\n",
		       s.done, s.bad, s.lost);
	else
		printf("%" PRIu64 " files verified, %" PRIu64 " with a bad copy (%" PRIu64 " lost)\n",
		       s.done, s.bad, s.lost);
	return rc || s.bad ? 1 : 0;
}

/* --- fsck ----------------------------------------------------------------------------------- */

/*
 * The offline check belongs to the daemon binary (it reads the catalog and
 * the segments, which only kvfs knows): run `kvfs --fsck`, found beside
 * kvfsctl or on PATH, and pass its report and exit status through.
 */
static int cmd_fsck(char **args, int nargs)
{
	char self[PATH_MAX], kvfs[PATH_MAX + 8], *slash;
	const char *argv[8];
	ssize_t n;
	int argc = 0;

	if (nargs != 1) {
		err("fsck", nargs ? "one STATE_DIR" : "missing STATE_DIR");
		return EXIT_USAGE;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	self[n > 0 ? n : 0] = '\0';
	slash = strrchr(self, '/');
	if (slash) {
		slash[1] = '\0';
		snprintf(kvfs, sizeof(kvfs), "%skvfs", self);
	}
	argv[argc++] = slash && access(kvfs, X_OK) == 0 ? kvfs : "kvfs";
	argv[argc++] = "--fsck";
	argv[argc++] = "--state";
	argv[argc++] = args[0];
	if (opt.repair)
		argv[argc++] = "--repair";
	if (opt.no_verify)
		argv[argc++] = "--no-verify";
	argv[argc] = NULL;
	fflush(stdout);
	execvp(argv[0], (char *const *)argv);
	err("fsck", "cannot run kvfs (it does the check): install it beside kvfsctl or on PATH");
	return 1;
}

/* --- show ----------------------------------------------------------------------------------- */

static ssize_t pread_cb(void *ctx, uint64_t off, void *buf, size_t len)
{
	int fd = *(int *)ctx;
	ssize_t n;

	do
		n = pread(fd, buf, len, (off_t)off);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}

/* Read exactly @len bytes at @off. @return 0, -EIO on a short file, or -errno. */
static int read_at(int fd, uint64_t off, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread_cb(&fd, off + done, (char *)buf + done, len - done);

		if (n < 0)
			return (int)n;
		if (n == 0)
			return -EIO;
		done += (size_t)n;
	}
	return 0;
}

/*
 * Parse the header of the block in @fd into @bi (pointing into @hdr, which
 * holds KVFS_BLOCK_MAX_HEADER bytes). @return 0, -EBADMSG with *why, -errno.
 */
static int show_header(int fd, uint64_t file_bytes, uint8_t *hdr, struct kvfs_block_info *bi,
		       const char **why)
{
	size_t first = file_bytes < KVFS_BLOCK_ALIGN ? (size_t)file_bytes : KVFS_BLOCK_ALIGN;
	int rc = read_at(fd, 0, hdr, first);

	if (rc)
		return rc;
	rc = kvfs_block_parse_header(hdr, first, file_bytes, bi, why);
	if (rc == -EAGAIN) {
		uint32_t hb = bi->header_bytes;

		if (hb > KVFS_BLOCK_MAX_HEADER || hb > file_bytes) {
			*why = "header larger than the file";
			return -EBADMSG;
		}
		rc = read_at(fd, first, hdr + first, hb - first);
		if (rc)
			return rc;
		rc = kvfs_block_parse_header(hdr, hb, file_bytes, bi, why);
	}
	return rc;
}

/*
 * Which layers fail their checksum: only worth reading one by one when the
 * whole-block validation failed with a good header. @bad gets 1 per bad layer;
 * @return 0, or -errno (then @bad is not meaningful).
 */
static int show_bad_layers(int fd, const struct kvfs_block_info *bi, uint8_t *bad)
{
	uint8_t *buf;
	const char *why;
	int rc = 0;

	if (bi->layer_bytes > VERIFY_LIMIT)
		return -EFBIG;
	buf = malloc(bi->layer_bytes ? (size_t)bi->layer_bytes : 1);
	if (!buf)
		return -ENOMEM;
	for (uint32_t i = 0; i < bi->layout.num_layers; i++) {
		uint64_t off;

		kvfs_block_layer(bi, i, &off, NULL);
		rc = read_at(fd, off, buf, (size_t)bi->layer_bytes);
		if (rc)
			break;
		bad[i] = kvfs_block_verify_layer(bi, i, buf, &why) != 0;
	}
	free(buf);
	return rc;
}

static void show_print(const char *path, uint64_t size, const struct kvfs_block_info *bi,
		       const uint8_t *bad, const char *invalid)
{
	const struct kvfs_layout *l = &bi->layout;
	char key[KVFS_KEY_HEX + 1], parent[KVFS_KEY_HEX + 1];
	uint32_t i, n;

	kvfs_key_to_hex(&bi->key, key);
	kvfs_key_to_hex(&bi->parent, parent);
	printf("file          %s\n", path);
	printf("size          %" PRIu64 " bytes (%s)\n", size, fmt_size(size).s);
	printf("format        kvfs block v%u\n", bi->version);
	printf("model         %s\n", l->model_id);
	printf("layout        %u layers, %u kv heads, head dim %u, %s, %s, %u tokens per block\n",
	       l->num_layers, l->num_kv_heads, l->head_dim, kvfs_dtype_name(l->dtype),
	       kvfs_kind_name(l->kind), l->tokens_per_block);
	printf("key           %s\n", key);
	printf("parent        %s\n", parent);
	printf("tokens        %u:", bi->num_tokens);
	n = bi->num_tokens < SHOW_TOKENS ? bi->num_tokens : SHOW_TOKENS;
	for (i = 0; i < n; i++)
		printf(" %u", kvfs_block_token(bi, i));
	printf("%s\n", n < bi->num_tokens ? " ..." : "");
	printf("extra keys    %u bytes", bi->extra_len);
	if (bi->extra_len) {
		printf(":");
		for (i = 0; i < bi->extra_len && i < SHOW_EXTRA; i++)
			printf(" %02x", bi->extra_cbor[i]);
		if (bi->extra_len > SHOW_EXTRA)
			printf(" ...");
	} else {
		printf(" (null)");
	}
	printf("\n");
	printf("header        %u bytes\n", bi->header_bytes);
	printf("layer         %" PRIu64 " bytes, stride %" PRIu64 "\n", bi->layer_bytes,
	       bi->layer_stride);
	printf("layers        %-5s %14s  %s\n", "#", "OFFSET", "CHECKSUM");
	for (i = 0; i < l->num_layers; i++) {
		uint64_t off, sum;

		kvfs_block_layer(bi, i, &off, &sum);
		printf("              %-5u %14" PRIu64 "  %016" PRIx64 "%s\n", i, off, sum,
		       bad && bad[i] ? "  BAD" : "");
	}
	if (invalid)
		printf("verdict       INVALID: %s\n", invalid);
	else
		printf("verdict       valid\n");
}

static json_t *show_json(const char *path, uint64_t size, const struct kvfs_block_info *bi,
			 const uint8_t *bad)
{
	const struct kvfs_layout *l = &bi->layout;
	char key[KVFS_KEY_HEX + 1], parent[KVFS_KEY_HEX + 1], hex[2 * SHOW_EXTRA + 1];
	json_t *o = json_object(), *toks = json_array(), *layers = json_array();
	uint32_t i;

	kvfs_key_to_hex(&bi->key, key);
	kvfs_key_to_hex(&bi->parent, parent);
	json_object_set_new(o, "path", json_string(path));
	json_object_set_new(o, "native", json_true());
	json_object_set_new(o, "file_bytes", json_integer((json_int_t)size));
	json_object_set_new(o, "version", json_integer(bi->version));
	json_object_set_new(o, "model_id", json_string(l->model_id));
	json_object_set_new(o, "layout",
			    json_pack("{s:I,s:I,s:I,s:s,s:s,s:I}", "num_layers",
				      (json_int_t)l->num_layers, "num_kv_heads",
				      (json_int_t)l->num_kv_heads, "head_dim",
				      (json_int_t)l->head_dim, "dtype", kvfs_dtype_name(l->dtype),
				      "kind", kvfs_kind_name(l->kind), "tokens_per_block",
				      (json_int_t)l->tokens_per_block));
	json_object_set_new(o, "key", json_string(key));
	json_object_set_new(o, "parent", json_string(parent));
	json_object_set_new(o, "num_tokens", json_integer(bi->num_tokens));
	for (i = 0; i < bi->num_tokens && i < SHOW_TOKENS; i++)
		json_array_append_new(toks, json_integer(kvfs_block_token(bi, i)));
	json_object_set_new(o, "tokens", toks);
	json_object_set_new(o, "extra_len", json_integer(bi->extra_len));
	for (i = 0; i < bi->extra_len && i < SHOW_EXTRA; i++)
		snprintf(hex + 2 * i, 3, "%02x", bi->extra_cbor[i]);
	hex[2 * i] = '\0';
	json_object_set_new(o, "extra_hex", json_string(hex));
	json_object_set_new(o, "header_bytes", json_integer(bi->header_bytes));
	json_object_set_new(o, "layer_bytes", json_integer((json_int_t)bi->layer_bytes));
	json_object_set_new(o, "layer_stride", json_integer((json_int_t)bi->layer_stride));
	for (i = 0; i < l->num_layers; i++) {
		uint64_t off, sum;
		char s[17];

		kvfs_block_layer(bi, i, &off, &sum);
		snprintf(s, sizeof(s), "%016" PRIx64, sum);
		json_array_append_new(layers, json_pack("{s:I,s:I,s:s,s:b}", "index", (json_int_t)i,
							"offset", (json_int_t)off, "checksum", s,
							"ok", !(bad && bad[i])));
	}
	json_object_set_new(o, "layers", layers);
	return o;
}

/* A verdict without a decodable header: not native, refused, or header broken. */
static int show_short(const char *path, uint64_t size, bool native, const char *invalid)
{
	if (opt.json) {
		json_t *o = json_pack("{s:s,s:b,s:I}", "path", path, "native", native, "file_bytes",
				      (json_int_t)size);

		if (native) {
			json_object_set_new(o, "valid", json_false());
			json_object_set_new(o, "why", json_string(invalid));
		}
		json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(o);
	} else if (!native) {
		printf("%s: not a native kvfs block\n", path);
	} else {
		printf("file          %s\n", path);
		printf("size          %" PRIu64 " bytes (%s)\n", size, fmt_size(size).s);
		printf("verdict       INVALID: %s\n", invalid);
	}
	return 1;
}

static int cmd_show(char **args, int nargs)
{
	const char *path, *why = NULL, *hwhy = NULL;
	struct kvfs_block_info bi, vbi;
	uint8_t magic[KVFS_BLOCK_MAGIC_BYTES], *hdr = NULL, *vhdr = NULL, *bad = NULL;
	struct stat st;
	int fd, rc = 1, vrc, hrc;

	if (nargs != 1) {
		err("show", nargs ? "one FILE only" : "missing FILE");
		return EXIT_USAGE;
	}
	path = args[0];
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		/* A kvfs mount refuses to open a native block it found invalid. */
		if (e == EBADMSG && stat(path, &st) == 0)
			return show_short(path, (uint64_t)st.st_size, true,
					  "refused by the mount (found invalid when sealed)");
		err_errno(path, e);
		return 1;
	}
	if (fstat(fd, &st)) {
		err_errno(path, errno);
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		err(path, "not a regular file");
		goto out_close;
	}
	if ((uint64_t)st.st_size < KVFS_BLOCK_MAGIC_BYTES || read_at(fd, 0, magic, sizeof(magic)) ||
	    !kvfs_block_is_native(magic, sizeof(magic))) {
		rc = show_short(path, (uint64_t)st.st_size, false, NULL);
		goto out_close;
	}
	hdr = malloc(KVFS_BLOCK_MAX_HEADER);
	vhdr = malloc(KVFS_BLOCK_MAX_HEADER);
	if (!hdr || !vhdr) {
		err_errno(path, ENOMEM);
		goto out_free;
	}
	hrc = show_header(fd, (uint64_t)st.st_size, hdr, &bi, &hwhy);
	if (hrc && hrc != -EBADMSG) {
		err_errno(path, -hrc);
		goto out_free;
	}
	if (hrc) {
		rc = show_short(path, (uint64_t)st.st_size, true, hwhy);
		goto out_free;
	}
	/* The header is sound: validate the whole block, layers included. */
	vrc = kvfs_block_validate(pread_cb, &fd, (uint64_t)st.st_size, vhdr, KVFS_BLOCK_MAX_HEADER,
				  &vbi, &why);
	if (vrc && vrc != -EBADMSG) {
		err_errno(path, -vrc);
		goto out_free;
	}
	if (vrc) {
		bad = calloc(bi.layout.num_layers, 1);
		if (bad && show_bad_layers(fd, &bi, bad)) {
			free(bad);
			bad = NULL;
		}
	}
	if (opt.json) {
		json_t *o = show_json(path, (uint64_t)st.st_size, &bi, bad);

		json_object_set_new(o, "valid", json_boolean(!vrc));
		if (vrc)
			json_object_set_new(o, "why", json_string(why));
		json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
		json_decref(o);
	} else {
		show_print(path, (uint64_t)st.st_size, &bi, bad, vrc ? why : NULL);
	}
	rc = vrc ? 1 : 0;
out_free:
	free(bad);
	free(vhdr);
	free(hdr);
out_close:
	close(fd);
	return rc;
}

/* --- main ----------------------------------------------------------------------------------------
 */

/* --- drain ------------------------------------------------------------------------------ */

/* Start the drain (MOUNT/.kvfs/drain), then follow it in MOUNT/.kvfs/stats. */
static int cmd_drain(char **args, int nargs)
{
	char *ctl;
	json_t *st = NULL;
	int fd, rc = 1;

	if (nargs != 1) {
		err("drain", nargs ? "one MOUNT only" : "missing MOUNT");
		return EXIT_USAGE;
	}
	ctl = path_join(args[0], ".kvfs/drain");
	fd = ctl ? open(ctl, O_WRONLY | O_CLOEXEC) : -1;
	if (fd < 0 || write(fd, "drain\n", 6) != 6) {
		int e = errno;

		err(args[0], e == ENOTCONN ? "this mount is not in a cluster (--cluster)"
			     : e == ENOENT ? "not a kvfs mount"
					   : strerror(e));
		goto out;
	}
	for (;;) {
		json_decref(st);
		st = load_stats(args[0]);
		if (!st)
			goto out;
		if (!strcmp(jstr(st, "drain.state"), "drained"))
			break;
		usleep(100000);
	}
	if (opt.json) {
		json_dumpf(jget(st, "drain"), stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		fputc('\n', stdout);
	} else {
		print_drain(st);
	}
	rc = 0;
out:
	json_decref(st);
	if (fd >= 0)
		close(fd);
	free(ctl);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: kvfsctl [--json] COMMAND [ARGS]\n"
		   "\n"
		   "Inspect and control a kvfs mount.\n"
		   "\n"
		   "commands:\n"
		   "  status MOUNT       capacity, use, hit rate, evictions; cluster peers and traffic\n"
		   "  ls [-R] PATH...    files: size, tier, hits, pinned (-R: recursive)\n"
		   "  du PATH...         bytes and files under each path, by tier\n"
		   "  show FILE          decode and validate a native KV block (any path)\n"
		   "  pin FILE...        keep files from being evicted\n"
		   "  unpin FILE...      let them be evicted again\n"
		   "  evict PATH...      evict files, or every evictable file under a directory\n"
		   "  verify PATH...     re-read every file under PATH, check every copy, drop bad ones\n"
		   "  where PATH...      which nodes of the cluster hold each file, in which tier\n"
		   "  prefetch PATH...   bring files into this node's DRAM (from NVMe or a peer) in\n"
		   "                     the background (--wait: until done)\n"
		   "  route NSDIR (--tokens FILE | --keys FILE) [--block-tokens N] [--seed S]\n"
		   "                     which nodes hold the longest prefix of a prompt's blocks\n"
		   "  drain MOUNT        take the node out of its cluster gracefully: no more\n"
		   "                     offloads, lent copies and files held only here go to the\n"
		   "                     peers, then it leaves (serving locally); waits until done\n"
		   "  fsck STATE_DIR     check an unmounted cache's catalog and NVMe segments\n"
		   "                     (--repair deletes bad records, --no-verify skips reading data)\n"
		   "  help               this text\n"
		   "\n"
		   "options:\n"
		   "  --json             machine-readable output\n"
		   "  -R, --recursive    ls: list directories recursively\n"
		   "  -h, --help         this text\n"
		   "  -V, --version      print the version\n"
		   "\n"
		   "Exit status: 0 success, 1 failure (invalid block, file not evicted), 2 bad "
		   "usage.\n");
}

static int usage_error(const char *what, const char *why)
{
	err(what, why);
	fprintf(stderr, "Try 'kvfsctl --help'.\n");
	return EXIT_USAGE;
}

static int run(int argc, char **argv)
{
	char **pos = calloc((size_t)argc + 1, sizeof(*pos));
	bool help = false, version = false, dashdash = false;
	const char *cmd;
	int i, n = 0, rc;

	if (!pos) {
		err("kvfsctl", strerror(ENOMEM));
		return 1;
	}
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (dashdash || a[0] != '-' || !a[1])
			pos[n++] = argv[i];
		else if (!strcmp(a, "--"))
			dashdash = true;
		else if (!strcmp(a, "--json"))
			opt.json = true;
		else if (!strcmp(a, "-R") || !strcmp(a, "--recursive"))
			opt.recursive = true;
		else if (!strcmp(a, "--repair"))
			opt.repair = true;
		else if (!strcmp(a, "--no-verify"))
			opt.no_verify = true;
		else if (!strcmp(a, "--wait"))
			opt.wait = true;
		else if (!strcmp(a, "--tokens") || !strcmp(a, "--keys") || !strcmp(a, "--seed") ||
			 !strcmp(a, "--block-tokens")) {
			const char *v = i + 1 < argc ? argv[++i] : NULL;

			if (!v) {
				rc = usage_error(a, "needs a value");
				goto out;
			}
			if (!strcmp(a, "--tokens")) {
				opt.tokens = v;
			} else if (!strcmp(a, "--keys")) {
				opt.keys = v;
			} else if (!strcmp(a, "--seed")) {
				opt.seed = v;
				opt.route_opts = true;
			} else {
				opt.route_opts = true;
				char *end;
				unsigned long bt = strtoul(v, &end, 10);

				if (*end || bt < 1 || bt > 65536) {
					rc = usage_error(a, "a number of tokens, 1..65536");
					goto out;
				}
				opt.block_tokens = (unsigned)bt;
			}
		}
		else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
			help = true;
		else if (!strcmp(a, "-V") || !strcmp(a, "--version"))
			version = true;
		else {
			rc = usage_error(a, "unknown option");
			goto out;
		}
	}
	if (help || (n && !strcmp(pos[0], "help"))) {
		usage(stdout);
		rc = 0;
		goto out;
	}
	if (version) {
		printf("kvfsctl %s\n", KVFS_VERSION);
		rc = 0;
		goto out;
	}
	if (!n) {
		rc = usage_error("kvfsctl", "missing command");
		goto out;
	}
	cmd = pos[0];
	if (opt.recursive && strcmp(cmd, "ls")) {
		rc = usage_error("-R", "only ls takes it");
		goto out;
	}
	if (opt.wait && strcmp(cmd, "prefetch")) {
		rc = usage_error("--wait", "only prefetch takes it");
		goto out;
	}
	if ((opt.tokens || opt.keys || opt.route_opts) && strcmp(cmd, "route")) {
		rc = usage_error(opt.tokens ? "--tokens" : opt.keys ? "--keys" : "--seed/--block-tokens",
				 "only route takes it");
		goto out;
	}
	if ((opt.repair || opt.no_verify) && strcmp(cmd, "fsck")) {
		rc = usage_error(opt.repair ? "--repair" : "--no-verify", "only fsck takes it");
		goto out;
	}
	if (!strcmp(cmd, "status"))
		rc = cmd_status(pos + 1, n - 1);
	else if (!strcmp(cmd, "ls"))
		rc = cmd_ls(pos + 1, n - 1);
	else if (!strcmp(cmd, "du"))
		rc = cmd_du(pos + 1, n - 1);
	else if (!strcmp(cmd, "show"))
		rc = cmd_show(pos + 1, n - 1);
	else if (!strcmp(cmd, "pin"))
		rc = cmd_pin(pos + 1, n - 1, true);
	else if (!strcmp(cmd, "unpin"))
		rc = cmd_pin(pos + 1, n - 1, false);
	else if (!strcmp(cmd, "evict"))
		rc = cmd_evict(pos + 1, n - 1);
	else if (!strcmp(cmd, "verify"))
		rc = cmd_verify(pos + 1, n - 1);
	else if (!strcmp(cmd, "fsck"))
		rc = cmd_fsck(pos + 1, n - 1);
	else if (!strcmp(cmd, "where"))
		rc = cmd_where(pos + 1, n - 1);
	else if (!strcmp(cmd, "prefetch"))
		rc = cmd_prefetch(pos + 1, n - 1);
	else if (!strcmp(cmd, "route"))
		rc = cmd_route(pos + 1, n - 1);
	else if (!strcmp(cmd, "drain"))
		rc = cmd_drain(pos + 1, n - 1);
	else {
		rc = usage_error(cmd, "unknown command");
		goto out;
	}
	if (rc == EXIT_USAGE)
		fprintf(stderr, "Try 'kvfsctl --help'.\n");
out:
	free(pos);
	return rc;
}

int main(int argc, char **argv)
{
	int rc = run(argc, argv);

	if (fflush(stdout) || ferror(stdout)) {
		fprintf(stderr, "kvfsctl: stdout: %s\n", strerror(errno ? errno : EIO));
		return 1;
	}
	return rc;
}
