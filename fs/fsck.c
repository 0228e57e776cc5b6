/*
 * fs/fsck.c — `kvfs --fsck --state DIR [--repair] [--no-verify]`: check a
 * state directory offline (kvfsctl fsck runs it).
 *
 * Checks that the catalog is a tree (a root directory; every entry's parent
 * a directory; every inode named exactly once), that every file has a
 * persistent copy (else the daemon drops it at start), and, through the
 * tier, that every NVMe record decodes, belongs to a file, adds up to its
 * size and overlaps no other, and (unless --no-verify) that every extent's
 * bytes match their checksum. With --repair the bad records are deleted,
 * the same repairs the daemon would make at start, and the files whose
 * bytes are bad go with them.
 *
 * The NVMe directories come from the catalog's "tiers" record, which the
 * daemon writes at every start. The state directory's lock keeps a running
 * daemon and fsck apart.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/catalog.h"
#include "core/util.h"
#include "fs/fs_i.h"

struct fsck_inode {
	uint64_t ino;
	uint32_t mode;
	uint64_t size;
	uint32_t names;   /* dentries naming it */
	uint64_t parent;  /* of the (first) one */
	char *name;
	bool bad;         /* its bytes are gone: delete it */
};

struct fsck {
	struct fsck_inode *in;
	size_t n, cap;
	cat_batch *fix;
	uint64_t dangling, not_dir_parent, orphans, no_copy, multi, bad_files;
};

static struct fsck_inode *find(struct fsck *f, uint64_t ino)
{
	size_t lo = 0, hi = f->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (f->in[mid].ino < ino)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < f->n && f->in[lo].ino == ino ? &f->in[lo] : NULL;
}

static int scan_inode(void *arg, const struct cat_inode *rec)
{
	struct fsck *f = arg;

	if (f->n == f->cap) {
		size_t nc = f->cap ? f->cap * 2 : 4096;
		struct fsck_inode *p = realloc(f->in, nc * sizeof(*p));

		if (!p)
			return -ENOMEM;
		f->in = p;
		f->cap = nc;
	}
	f->in[f->n++] = (struct fsck_inode){.ino = rec->ino, .mode = rec->mode, .size = rec->size};
	return 0;
}

static int scan_dentry(void *arg, uint64_t parent, const char *name, size_t len, uint64_t ino)
{
	struct fsck *f = arg;
	struct fsck_inode *p = find(f, parent), *c = find(f, ino);

	if (!c || !p) {
		f->dangling++;
		cat_del_dentry(f->fix, parent, name, len);
		return 0;
	}
	if (!S_ISDIR(p->mode)) {
		f->not_dir_parent++;
		cat_del_dentry(f->fix, parent, name, len);
		return 0;
	}
	if (c->names++) {
		f->multi++; /* a second name: the daemon keeps the first it meets */
		cat_del_dentry(f->fix, parent, name, len);
		return 0;
	}
	c->parent = parent;
	c->name = strndup(name, len);
	return c->name ? 0 : -ENOMEM;
}

static int64_t size_of(void *ctx, uint64_t id)
{
	struct fsck_inode *in = find(ctx, id);

	return in && S_ISREG(in->mode) && in->names ? (int64_t)in->size : -1;
}

static void mark_bad(void *ctx, uint64_t id)
{
	struct fsck_inode *in = find(ctx, id);

	if (in)
		in->bad = true;
}

/* The NVMe devices and page size recorded by the daemon. */
static void read_tiers(cat *c, struct tier_config *tc, struct tier_nvme_dev *devs, char **blob)
{
	size_t len;
	char *save = NULL, *line;

	memset(tc, 0, sizeof(*tc));
	if (cat_get_meta(c, "tiers", (void **)blob, &len))
		return;
	for (line = strtok_r(*blob, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *sp = strrchr(line, ' ');

		if (strncmp(line, "page_size ", 10) == 0)
			tc->page_size = (uint32_t)strtoul(line + 10, NULL, 10);
		else if (strncmp(line, "nvme ", 5) == 0 && sp && tc->nvme_count < 16) {
			*sp = '\0';
			devs[tc->nvme_count].dir = line + 5;
			devs[tc->nvme_count++].bytes = strtoull(sp + 1, NULL, 10);
		}
	}
	tc->nvme = devs;
}

void fsck_record_tiers(cat *c, const struct kvfs_config *cfg, uint32_t page_size)
{
	char blob[16 * 4200 + 64];
	size_t n = 0;
	cat_batch *b = cat_batch_new();

	n += (size_t)snprintf(blob + n, sizeof(blob) - n, "page_size %u\n", page_size);
	for (unsigned i = 0; i < cfg->nvme_count && n < sizeof(blob); i++)
		n += (size_t)snprintf(blob + n, sizeof(blob) - n, "nvme %s %llu\n", cfg->nvme[i].dir,
				      (unsigned long long)cfg->nvme[i].bytes);
	cat_put_meta(b, "tiers", blob, KVFS_MIN(n, sizeof(blob)));
	cat_commit(c, b, false);
	cat_batch_free(b);
}

int fsck_run(const char *state, bool repair, bool verify)
{
	struct fsck f = {0};
	struct tier_nvme_dev devs[16];
	struct tier_config tc;
	struct tier_fsck tr = {0};
	char err[512] = "", *blob = NULL;
	uint64_t bad_inodes = 0, bad_dentries = 0, problems;
	struct fsck_inode *root;
	cat *c = NULL;
	int rc;

	rc = cat_open(state, &c, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "kvfs: fsck: %s\n", err);
		return 2;
	}
	f.fix = cat_batch_new();
	rc = cat_scan_inodes(c, scan_inode, &f, &bad_inodes);
	if (!rc)
		rc = cat_scan_dentries(c, 0, scan_dentry, &f, &bad_dentries);
	if (rc)
		goto out_err;
	root = find(&f, CAT_ROOT_INO);
	read_tiers(c, &tc, devs, &blob);
	rc = tier_fsck(&tc, c, size_of, mark_bad, &f, verify, f.fix, &tr, err, sizeof(err));
	if (rc) {
		fprintf(stderr, "kvfs: fsck: NVMe segments: %s\n", err[0] ? err : strerror(-rc));
		rc = 2;
		goto out;
	}
	for (size_t i = 0; i < f.n; i++) {
		struct fsck_inode *in = &f.in[i];
		bool drop = false;

		if (in->ino == CAT_ROOT_INO)
			continue;
		if (!in->names) {
			f.orphans++;
			drop = true;
		} else if (S_ISREG(in->mode) && in->bad) {
			f.bad_files++;
			drop = true;
		}
		if (drop) {
			cat_del_inode(f.fix, in->ino);
			if (in->names)
				cat_del_dentry(f.fix, in->parent, in->name, strlen(in->name));
			tier_forget_record(f.fix, in->ino);
		}
	}
	/* files whose bytes no persistent tier holds: the daemon drops them at start */
	{
		uint64_t files = 0, persistent = tr.records - tr.undecodable - tr.orphans;

		for (size_t i = 0; i < f.n; i++)
			files += S_ISREG(f.in[i].mode) && f.in[i].names && f.in[i].size;
		f.no_copy = files > persistent ? files - persistent : 0;
	}
	problems = bad_inodes + bad_dentries + f.dangling + f.not_dir_parent + f.orphans + f.multi +
		   tr.undecodable + tr.orphans + tr.size_mismatch + tr.overlaps + tr.bad_checksums +
		   tr.read_errors + (root && S_ISDIR(root->mode) ? 0 : 1);
	printf("kvfs fsck %s: %zu inodes, %llu NVMe records (%llu extents, %llu bytes)%s\n", state,
	       f.n, (unsigned long long)tr.records, (unsigned long long)tr.extents,
	       (unsigned long long)tr.bytes, verify && tc.nvme_count ? ", data verified" : "");
#define REPORT(n, what)                                                            \
	do {                                                                       \
		if (n)                                                             \
			printf("  %llu %s\n", (unsigned long long)(n), what);      \
	} while (0)
	REPORT(!root || !S_ISDIR(root->mode), "missing root directory (the daemon makes one)");
	REPORT(bad_inodes, "inode records that do not decode");
	REPORT(bad_dentries, "directory entries that do not decode");
	REPORT(f.dangling, "entries naming a missing inode or parent");
	REPORT(f.not_dir_parent, "entries whose parent is not a directory");
	REPORT(f.multi, "extra names of one inode");
	REPORT(f.orphans, "inodes without a name");
	REPORT(tr.undecodable, "NVMe records that do not decode");
	REPORT(tr.orphans, "NVMe records of no file");
	REPORT(tr.size_mismatch, "NVMe records not matching their file's size");
	REPORT(tr.overlaps, "NVMe records outside a device or overlapping another");
	REPORT(tr.bad_checksums, "NVMe extents failing their checksum");
	REPORT(tr.read_errors, "NVMe extents that could not be read");
	REPORT(f.bad_files, "files lost with their bad records");
	REPORT(f.no_copy, "files with no persistent copy (dropped at the next start)");
#undef REPORT
	if (!problems) {
		printf("clean\n");
		rc = 0;
	} else if (repair) {
		size_t n = cat_batch_count(f.fix);

		rc = cat_commit(c, f.fix, true);
		if (rc)
			printf("repair FAILED: %s\n", strerror(-rc));
		else
			printf("repaired: %zu records deleted\n", n);
		rc = rc ? 2 : 0;
	} else {
		printf("%llu problems; run with --repair to delete the bad records\n",
		       (unsigned long long)problems);
		rc = 1;
	}
	goto out;
out_err:
	fprintf(stderr, "kvfs: fsck: cannot read the catalog: %s\n", strerror(-rc));
	rc = 2;
out:
	for (size_t i = 0; i < f.n; i++)
		free(f.in[i].name);
	free(f.in);
	free(blob);
	cat_batch_free(f.fix);
	cat_close(c);
	return rc;
}
