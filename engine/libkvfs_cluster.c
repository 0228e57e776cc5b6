/*
 * engine/libkvfs_cluster.c — libkvfs's cluster calls: prefetch, cluster
 * prefix match, push (kvfs/kvfs.h; DESIGN §9).
 *
 * All three are requests to the daemon of the mount that holds the paths,
 * through its control files: `.kvfs/prefetch` and `.kvfs/match` take a
 * write of paths (relative to the mount root, one a line) and answer on the
 * same descriptor with `name value` lines; push is the `user.kvfs.push`
 * attribute of a namespace directory. The library never talks to the
 * cluster index itself, so the cluster token stays in the daemon, and the
 * daemon checks every path against the caller's credentials.
 *
 * A request is one write of at most CTL_REQ_MAX bytes (the mount's
 * max_write: one FUSE request); prefetch splits longer batches, a match
 * chain must fit.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "engine/libkvfs_i.h"

#define CTL_REQ_MAX (1u << 20)
#define CTL_ANS_MAX (64u << 10)

/* --- paths ---------------------------------------------------------------------------- */

/*
 * The kvfs mount holding @path (which need not exist: prefetch names files
 * that are elsewhere) into @mnt, and @path relative to its root into @rel.
 * @return 0; -ENOTSUP if the nearest existing ancestor is not on a kvfs
 * mount; -ENAMETOOLONG; -ENOENT.
 */
static int locate(const char *path, char *mnt, char *rel)
{
	char abs[PATH_MAX], real[PATH_MAX];
	const char *rest;
	size_t len, cut;
	int rc;

	if (!path || !*path)
		return -ENOENT;
	if (path[0] == '/') {
		if (strlen(path) >= sizeof(abs))
			return -ENAMETOOLONG;
		strcpy(abs, path);
	} else {
		if (!getcwd(abs, sizeof(abs)))
			return -errno;
		if (strlen(abs) + 1 + strlen(path) >= sizeof(abs))
			return -ENAMETOOLONG;
		strcat(abs, "/");
		strcat(abs, path);
	}
	/*
	 * The longest prefix that exists here, never resolving the last
	 * component: looking a file up would fetch it from a peer, in this
	 * thread, which is what prefetch is to do in the background.
	 */
	cut = strlen(abs);
	while (cut > 0 && abs[cut - 1] == '/')
		cut--;
	while (cut > 0 && abs[cut - 1] != '/')
		cut--;
	while (cut > 0 && abs[cut - 1] == '/')
		cut--;
	for (;;) {
		char save = abs[cut];

		abs[cut] = '\0';
		if (realpath(cut ? abs : "/", real)) {
			abs[cut] = save;
			break;
		}
		abs[cut] = save;
		if (errno != ENOENT)
			return -errno;
		while (cut > 0 && abs[cut - 1] != '/')
			cut--;
		while (cut > 0 && abs[cut - 1] == '/')
			cut--;
	}
	rest = abs + cut;
	while (*rest == '/')
		rest++;
	rc = kvfs_mount_root(real);
	if (rc < 0)
		return rc;
	len = (size_t)rc;
	snprintf(mnt, PATH_MAX, "%.*s", (int)len, real);
	if (snprintf(rel, PATH_MAX, "%s%s%s", real[len] == '/' ? real + len + 1 : real + len,
		     real[len] && *rest ? "/" : "", rest) >= PATH_MAX)
		return -ENAMETOOLONG;
	return rel[0] ? 0 : -ENOENT;
}

/*
 * One request to `<mnt>/.kvfs/<name>`: write @req, read the answer into a
 * malloc'd string. @return 0; the daemon's error (-ENOTCONN: no cluster
 * index, or unreachable); -errno of open, write or read.
 */
static int ctl_call(const char *mnt, const char *name, const char *req, size_t len, char **ans)
{
	char path[PATH_MAX + 16];
	ssize_t n;
	size_t got = 0;
	char *buf;
	int fd, rc = 0;

	if (len > CTL_REQ_MAX)
		return -E2BIG;
	snprintf(path, sizeof(path), "%s/.kvfs/%s", mnt, name);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	n = write(fd, req, len);
	if (n < 0 || (size_t)n != len) {
		rc = n < 0 ? -errno : -EIO;
		goto out;
	}
	buf = malloc(CTL_ANS_MAX + 1);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	while (got < CTL_ANS_MAX && (n = pread(fd, buf + got, CTL_ANS_MAX - got, (off_t)got)) > 0)
		got += (size_t)n;
	if (n < 0) {
		rc = -errno;
		free(buf);
		goto out;
	}
	buf[got] = '\0';
	*ans = buf;
out:
	close(fd);
	return rc;
}

/* The value of `name N` in an answer, or 0. */
static uint64_t field(const char *ans, const char *name)
{
	size_t nl = strlen(name);

	for (const char *p = ans; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, name, nl) == 0 && p[nl] == ' ')
			return strtoull(p + nl + 1, NULL, 10);
	return 0;
}

/* Growable request text. */
struct req {
	char *s;
	size_t len, cap;
};

static int req_add(struct req *r, const char *line)
{
	size_t l = strlen(line);

	if (r->len + l + 2 > r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 4096;
		char *p;

		while (cap < r->len + l + 2)
			cap *= 2;
		if (!(p = realloc(r->s, cap)))
			return -ENOMEM;
		r->s = p;
		r->cap = cap;
	}
	memcpy(r->s + r->len, line, l);
	r->len += l;
	r->s[r->len++] = '\n';
	return 0;
}

static void rels_free(char **rels, size_t n)
{
	for (size_t i = 0; rels && i < n; i++)
		free(rels[i]);
	free(rels);
}

/* Paths on one mount: the mount into @mnt, each relative to it into *out (malloc'd). */
static int paths_rels(const char *const *paths, size_t n, char *mnt, char ***out)
{
	char m2[PATH_MAX], **rels = calloc(n, sizeof(*rels));
	int rc = rels ? 0 : -ENOMEM;

	for (size_t i = 0; i < n && !rc; i++) {
		rels[i] = malloc(PATH_MAX);
		if (!rels[i]) {
			rc = -ENOMEM;
			break;
		}
		rc = locate(paths[i], i ? m2 : mnt, rels[i]);
		if (!rc && i && strcmp(m2, mnt))
			rc = -EXDEV; /* one mount per call */
	}
	if (rc) {
		rels_free(rels, n);
		return rc;
	}
	*out = rels;
	return 0;
}

/* Blocks @keys of @ns, relative to its mount (into @mnt), into *out (malloc'd). */
static int keys_rels(kvfs_ns *ns, const kvfs_key *keys, size_t n, char *mnt, char ***out)
{
	char hex[KVFS_KEY_HEX + 1], path[PATH_MAX], dir[PATH_MAX], **rels;
	size_t dl;
	int rc;

	/* The namespace directory once; the names follow. */
	kvfs_key_to_hex(&keys[0], hex);
	if (snprintf(path, sizeof(path), "%s/%s", ns->dir, hex) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	rc = locate(path, mnt, dir);
	if (rc)
		return rc;
	dl = strlen(dir) - KVFS_KEY_HEX;
	rels = calloc(n, sizeof(*rels));
	if (!rels)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		rels[i] = malloc(dl + KVFS_KEY_HEX + 1);
		if (!rels[i]) {
			rels_free(rels, n);
			return -ENOMEM;
		}
		memcpy(rels[i], dir, dl);
		kvfs_key_to_hex(&keys[i], rels[i] + dl);
	}
	*out = rels;
	return 0;
}

/* --- prefetch --------------------------------------------------------------------------- */

static void info_add(struct kvfs_prefetch_info *info, const char *ans)
{
	info->queued += field(ans, "queued");
	info->present += field(ans, "present");
	info->missing += field(ans, "missing") + field(ans, "invalid");
	info->denied += field(ans, "denied");
	info->dropped += field(ans, "dropped");
	info->fetched += field(ans, "fetched");
	info->promoted += field(ans, "promoted");
	info->failed += field(ans, "failed");
	info->pending += field(ans, "pending");
	if (strstr(ans, "index unreachable"))
		info->index_unreachable = 1;
}

/* Send @rels (relative to @mnt) in requests of at most CTL_REQ_MAX bytes. */
static int prefetch_rel(const char *mnt, char *const *rels, size_t n, unsigned flags,
			struct kvfs_prefetch_info *info)
{
	struct req r = {0};
	int rc = 0;

	for (size_t i = 0; i <= n && !rc; i++) {
		bool flush = i == n || (r.len && r.len + strlen(rels[i]) + 2 > CTL_REQ_MAX);

		if (flush && r.len > (flags & KVFS_PREFETCH_WAIT ? 6u : 0u)) {
			char *ans = NULL;

			rc = ctl_call(mnt, "prefetch", r.s, r.len, &ans);
			if (!rc)
				info_add(info, ans);
			free(ans);
			r.len = 0;
		}
		if (i < n && !rc) {
			if (r.len == 0 && (flags & KVFS_PREFETCH_WAIT))
				rc = req_add(&r, "#wait");
			if (!rc)
				rc = req_add(&r, rels[i]);
		}
	}
	free(r.s);
	return rc;
}

long kvfs_prefetch_paths(const char *const *paths, size_t n, unsigned flags,
			 struct kvfs_prefetch_info *info)
{
	struct kvfs_prefetch_info own;
	char mnt[PATH_MAX], **rels = NULL;
	long rc;

	if (!info)
		info = &own;
	memset(info, 0, sizeof(*info));
	if (!paths || flags & ~KVFS_PREFETCH_WAIT)
		return -EINVAL;
	if (n == 0)
		return 0;
	rc = paths_rels(paths, n, mnt, &rels);
	if (!rc)
		rc = prefetch_rel(mnt, rels, n, flags, info);
	rels_free(rels, n);
	return rc ? rc : (long)info->queued;
}

long kvfs_prefetch(kvfs_ns *ns, const kvfs_key *keys, size_t n, unsigned flags,
		   struct kvfs_prefetch_info *info)
{
	struct kvfs_prefetch_info own;
	char mnt[PATH_MAX], **rels = NULL;
	long rc;

	if (!info)
		info = &own;
	memset(info, 0, sizeof(*info));
	if (!ns || (!keys && n) || flags & ~KVFS_PREFETCH_WAIT)
		return -EINVAL;
	if (n == 0)
		return 0;
	rc = keys_rels(ns, keys, n, mnt, &rels);
	if (!rc)
		rc = prefetch_rel(mnt, rels, n, flags, info);
	rels_free(rels, n);
	return rc ? rc : (long)info->queued;
}

/* --- cluster match ------------------------------------------------------------------------ */

static long match_rel(const char *mnt, char *const *rels, size_t n, struct kvfs_node_prefix *out,
		      size_t max)
{
	struct req r = {0};
	char *ans = NULL;
	size_t got = 0;
	long rc = 0;

	for (size_t i = 0; i < n && !rc; i++)
		rc = req_add(&r, rels[i]);
	if (!rc)
		rc = r.len > CTL_REQ_MAX ? -E2BIG : ctl_call(mnt, "match", r.s, r.len, &ans);
	free(r.s);
	if (rc)
		return rc;
	for (const char *p = ans; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		struct kvfs_node_prefix x;
		char node[KVFS_NODE_ID_MAX + 1], tier[8];
		int self;

		memset(&x, 0, sizeof(x));
		if (sscanf(p, "node %63s %u %u %7s %d", node, &x.blocks, &x.fast_blocks, tier,
			   &self) != 5)
			continue;
		snprintf(x.node, sizeof(x.node), "%s", node);
		snprintf(x.tier, sizeof(x.tier), "%s", tier);
		x.self = self;
		if (got < max)
			out[got] = x;
		got++;
	}
	free(ans);
	return (long)got;
}

long kvfs_cluster_match(kvfs_ns *ns, const kvfs_key *keys, size_t n, struct kvfs_node_prefix *out,
			size_t max)
{
	char mnt[PATH_MAX], **rels = NULL;
	long rc;

	if (!ns || !keys || n == 0 || n > 65536 || (!out && max))
		return -EINVAL;
	rc = keys_rels(ns, keys, n, mnt, &rels);
	if (!rc)
		rc = match_rel(mnt, rels, n, out, max);
	rels_free(rels, n);
	return rc;
}

long kvfs_cluster_match_paths(const char *const *paths, size_t n, struct kvfs_node_prefix *out,
			      size_t max)
{
	char mnt[PATH_MAX], **rels = NULL;
	long rc;

	if (!paths || n == 0 || n > 65536 || (!out && max))
		return -EINVAL;
	rc = paths_rels(paths, n, mnt, &rels);
	if (!rc)
		rc = match_rel(mnt, rels, n, out, max);
	rels_free(rels, n);
	return rc;
}

/* --- push ----------------------------------------------------------------------------------- */

int kvfs_ns_push(kvfs_ns *ns, const char *node)
{
	if (!ns)
		return -EINVAL;
	if (setxattr(ns->dir, "user.kvfs.push", node ? node : "", node ? strlen(node) : 0, 0))
		return -errno;
	return 0;
}
