/*
 * fs/ctl.c — the control directory `.kvfs/` at the root of every mount.
 *
 * Owns the control inodes (static: they live as long as the process) and
 * the rendering of their contents, generated at each open so a reader gets
 * one consistent snapshot:
 *   stats    JSON: capacity, use and hit rates per tier, counters
 *   metrics  Prometheus text exposition format 0.0.4, the same figures
 *   config   JSON: the running configuration
 *   fault    write-only (root): arm the fault seam, e.g. "cat_write:1:EIO";
 *            parsed strictly (ctl_fault_spec), all or nothing
 *   where    read-write (0666): write a path, read back its holders in the
 *            cluster; only for a path the caller may look up (ns_may_lookup)
 *   prefetch, match   write a request, read the answer back (disagg.c)
 * Every figure is defined once, in the table below, and both formats are
 * generated from it. README.md documents each field.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fault.h"
#include "core/ring.h"
#include "core/util.h"
#include "fs/fs_i.h"

/* [0] .kvfs, [1 .. CTL_NR] its files, [CTL_NR + 1] .kvfs/iovs */
static struct kvfs_inode ctl_inodes[2 + CTL_NR];

static const char *const ctl_names[CTL_NR] = {
	[CTL_STATS] = "stats",
	[CTL_METRICS] = "metrics",
	[CTL_CONFIG] = "config",
	[CTL_FAULT] = "fault",
	[CTL_WHERE] = "where",
	[CTL_PREFETCH] = "prefetch",
	[CTL_MATCH] = "match",
	[CTL_DRAIN] = "drain",
};

#define CTL_INO_BASE (UINT64_MAX - 16)

void ctl_init(struct kvfs_fs *fs)
{
	int64_t now = (int64_t)kvfs_now_ns();

	for (unsigned i = 0; i <= CTL_NR + 1; i++) {
		struct kvfs_inode *in = &ctl_inodes[i];

		memset(in, 0, sizeof(*in));
		pthread_mutex_init(&in->lock, NULL);
		atomic_init(&in->refs, 1ull << 62); /* never freed */
		in->atime = in->mtime = in->ctime = now;
		in->uid = getuid();
		in->gid = getgid();
		in->generation = 1;
		if (i == 0 || i == CTL_NR + 1) {
			/* iovs: anyone may register (a symlink), the daemon checks who */
			in->kind = KIND_CTL_DIR;
			in->mode = i == 0 ? S_IFDIR | 0555 : S_IFDIR | 01777;
			in->ino = CTL_INO_BASE + i;
		} else {
			in->kind = KIND_CTL_FILE;
			in->ctl_id = (uint8_t)(i - 1);
			/* fault and drain: the owner (root) only; where, prefetch,
			 * match: anyone, each checks what it serves */
			in->mode = S_IFREG | (in->ctl_id == CTL_FAULT	 ? 0200
					      : in->ctl_id == CTL_DRAIN	 ? 0200
					      : ctl_writable(in->ctl_id) ? 0666
									 : 0444);
			in->ino = CTL_INO_BASE + i;
		}
	}
	(void)fs;
}

struct kvfs_inode *ctl_dir(void)
{
	return &ctl_inodes[0];
}

struct kvfs_inode *ctl_iovs_dir(void)
{
	return &ctl_inodes[CTL_NR + 1];
}

const char *ctl_name(unsigned id)
{
	return id < CTL_NR ? ctl_names[id] : NULL;
}

struct kvfs_inode *ctl_lookup(const char *name)
{
	for (unsigned i = 0; i < CTL_NR; i++)
		if (strcmp(name, ctl_names[i]) == 0)
			return &ctl_inodes[1 + i];
	if (strcmp(name, KVFS_IOVS_DIR) == 0)
		return ctl_iovs_dir();
	return NULL;
}

/* --- one snapshot of every figure ------------------------------------------- */

struct snapshot {
	struct tier_stats ts;
	uint64_t c[sizeof(struct kvfs_counters) / sizeof(uint64_t)];
	uint64_t misses;
	double hit_rate; /* < 0 when nothing was looked up yet */
	double uptime;
};

#define CTR(field) (offsetof(struct kvfs_counters, field) / sizeof(uint64_t))

enum fig_type { COUNTER, GAUGE };

/* A figure: its JSON path, Prometheus name, type, help, and where it is. */
struct figure {
	const char *json;  /* "a.b" nests */
	const char *prom;
	enum fig_type type;
	const char *help;
	int ctr;           /* index into snapshot.c, or -1 */
	uint64_t (*get)(const struct snapshot *s);
};

static uint64_t g_capacity(const struct snapshot *s)
{
	return s->ts.dram_capacity + s->ts.nvme_capacity;
}
static uint64_t g_used(const struct snapshot *s)
{
	return s->ts.dram_used + s->ts.nvme_used;
}
static uint64_t g_dram_capacity(const struct snapshot *s)
{
	return s->ts.dram_capacity;
}
static uint64_t g_dram_used(const struct snapshot *s)
{
	return s->ts.dram_used;
}
#define TS(field)                                                 \
	static uint64_t g_##field(const struct snapshot *s)       \
	{                                                         \
		return s->ts.field;                               \
	}
TS(nvme_capacity)
TS(nvme_used)
TS(nvme_files)
TS(nvme_reads)
TS(nvme_read_bytes)
TS(nvme_writes)
TS(nvme_write_bytes)
TS(nvme_write_errors)
TS(nvme_read_errors)
TS(nvme_csum_errors)
TS(nvme_evictions)
TS(demotions)
TS(promotions)
TS(lost)
static uint64_t g_nvme_free(const struct snapshot *s)
{
	return s->ts.nvme_capacity - s->ts.nvme_used;
}
static uint64_t g_nvme_full(const struct snapshot *s)
{
	return s->ts.nvme_full;
}
static uint64_t g_free(const struct snapshot *s)
{
	return s->ts.dram_capacity - s->ts.dram_used;
}
static uint64_t g_pinned_bytes(const struct snapshot *s)
{
	return s->ts.dram_pinned;
}
static uint64_t g_page_size(const struct snapshot *s)
{
	return s->ts.page_size;
}
static uint64_t g_objects(const struct snapshot *s)
{
	return s->ts.sealed;
}
static uint64_t g_pinned(const struct snapshot *s)
{
	return s->ts.pinned;
}
static uint64_t g_evictions(const struct snapshot *s)
{
	return s->ts.evictions;
}
static uint64_t g_evicted_bytes(const struct snapshot *s)
{
	return s->ts.evicted_bytes;
}
static uint64_t g_enospc(const struct snapshot *s)
{
	return s->ts.enospc;
}
static uint64_t g_misses(const struct snapshot *s)
{
	return s->misses;
}
/* Durability: the tier's stores and the namespace's records, together. */
static uint64_t g_persist_failed(const struct snapshot *s)
{
	return s->ts.persist_failed + s->c[CTR(record_failed)];
}
static uint64_t g_not_durable(const struct snapshot *s)
{
	return s->ts.not_durable + s->c[CTR(unrecorded)];
}
static uint64_t g_catalog_errors(const struct snapshot *s)
{
	return s->ts.cat_errors + s->c[CTR(catalog_errors)];
}

static const struct figure figures[] = {
	{"capacity_bytes", "kvfs_capacity_bytes", GAUGE, "Bytes the tiers can hold", -1, g_capacity},
	{"used_bytes", "kvfs_used_bytes", GAUGE, "Bytes of the tiers in use", -1, g_used},
	{"files", "kvfs_files", GAUGE, "Files in the namespace", CTR(files), NULL},
	{"directories", "kvfs_directories", GAUGE, "Directories, not counting the root", CTR(dirs),
	 NULL},
	{"open_handles", "kvfs_open_handles", GAUGE, "Open file handles", CTR(open_handles), NULL},
	{"tiers.dram.capacity_bytes", "kvfs_dram_capacity_bytes", GAUGE, "DRAM budget", -1,
	 g_dram_capacity},
	{"tiers.dram.used_bytes", "kvfs_dram_used_bytes", GAUGE, "DRAM pages in use, in bytes", -1,
	 g_dram_used},
	{"tiers.dram.free_bytes", "kvfs_dram_free_bytes", GAUGE, "DRAM pages free, in bytes", -1,
	 g_free},
	{"tiers.dram.pinned_bytes", "kvfs_dram_pinned_bytes", GAUGE,
	 "DRAM held by pinned sealed files", -1, g_pinned_bytes},
	{"tiers.dram.page_size", "kvfs_dram_page_size_bytes", GAUGE, "DRAM page size", -1,
	 g_page_size},
	{"tiers.dram.files", "kvfs_dram_files", GAUGE, "Sealed files with bytes in DRAM", -1,
	 g_objects},
	{"tiers.dram.pinned_files", "kvfs_dram_pinned_files", GAUGE, "Pinned files in DRAM", -1,
	 g_pinned},
	{"tiers.nvme.capacity_bytes", "kvfs_nvme_capacity_bytes", GAUGE,
	 "NVMe tier size (0 without one)", -1, g_nvme_capacity},
	{"tiers.nvme.used_bytes", "kvfs_nvme_used_bytes", GAUGE, "NVMe pages in use, in bytes", -1,
	 g_nvme_used},
	{"tiers.nvme.free_bytes", "kvfs_nvme_free_bytes", GAUGE, "NVMe pages free, in bytes", -1,
	 g_nvme_free},
	{"tiers.nvme.files", "kvfs_nvme_files", GAUGE, "Files with a copy on NVMe", -1,
	 g_nvme_files},
	{"tiers.nvme.reads", "kvfs_nvme_reads_total", COUNTER, "NVMe extent reads", -1,
	 g_nvme_reads},
	{"tiers.nvme.read_bytes", "kvfs_nvme_read_bytes_total", COUNTER, "Bytes read from NVMe",
	 -1, g_nvme_read_bytes},
	{"tiers.nvme.writes", "kvfs_nvme_writes_total", COUNTER, "NVMe extent writes", -1,
	 g_nvme_writes},
	{"tiers.nvme.write_bytes", "kvfs_nvme_write_bytes_total", COUNTER, "Bytes written to NVMe",
	 -1, g_nvme_write_bytes},
	{"tiers.nvme.write_errors", "kvfs_nvme_write_errors_total", COUNTER,
	 "Files that could not be written to NVMe (they stayed in DRAM)", -1,
	 g_nvme_write_errors},
	{"tiers.nvme.read_errors", "kvfs_nvme_read_errors_total", COUNTER,
	 "NVMe reads that failed (I/O error or checksum)", -1, g_nvme_read_errors},
	{"tiers.nvme.checksum_errors", "kvfs_nvme_checksum_errors_total", COUNTER,
	 "NVMe extents whose bytes did not match their checksum", -1, g_nvme_csum_errors},
	{"tiers.nvme.evictions", "kvfs_nvme_evictions_total", COUNTER,
	 "NVMe copies dropped to make room on NVMe", -1, g_nvme_evictions},
	{"tiers.nvme.full", "kvfs_nvme_full", GAUGE,
	 "1 once the segment filesystem said ENOSPC: NVMe takes no new files", -1, g_nvme_full},
	{"demotions", "kvfs_demotions_total", COUNTER,
	 "Files whose DRAM copy was dropped once on NVMe", -1, g_demotions},
	{"promotions", "kvfs_promotions_total", COUNTER, "Files brought back from NVMe into DRAM",
	 -1, g_promotions},
	{"lost", "kvfs_lost_total", COUNTER, "Files dropped because their only copy failed", -1,
	 g_lost},
	{"hits", "kvfs_hits_total", COUNTER, "Opens for reading that found a sealed file",
	 CTR(hits), NULL},
	{"hits_dram", "kvfs_hits_dram_total", COUNTER, "Hits whose bytes were in DRAM",
	 CTR(hits_dram), NULL},
	{"hits_nvme", "kvfs_hits_nvme_total", COUNTER, "Hits whose bytes were only on NVMe",
	 CTR(hits_nvme), NULL},
	{"misses", "kvfs_misses_total", COUNTER,
	 "Lookups that found nothing, less those that preceded a create", -1, g_misses},
	{"lookups", "kvfs_lookups_total", COUNTER, "Name lookups from the kernel", CTR(lookups),
	 NULL},
	{"lookup_misses", "kvfs_lookup_misses_total", COUNTER, "Lookups that found nothing",
	 CTR(lookup_misses), NULL},
	{"misses_created", "kvfs_misses_created_total", COUNTER,
	 "Negative lookups followed by a create of the name", CTR(misses_created), NULL},
	{"opens", "kvfs_opens_total", COUNTER, "File opens", CTR(opens), NULL},
	{"busy_opens", "kvfs_busy_opens_total", COUNTER,
	 "Opens refused because the file was being written (EBUSY)", CTR(busy_opens), NULL},
	{"reads", "kvfs_reads_total", COUNTER, "Read requests served", CTR(reads), NULL},
	{"passthrough_opens", "kvfs_passthrough_opens_total", COUNTER,
	 "Opens whose reads the kernel serves from the DRAM file (FUSE passthrough)",
	 CTR(pt_opens), NULL},
	{"passthrough_refused", "kvfs_passthrough_refused_total", COUNTER,
	 "Opens on the read path because the kernel refused the backing file", CTR(pt_refused),
	 NULL},
	{"passthrough_no_room", "kvfs_passthrough_no_room_total", COUNTER,
	 "Opens on the read path because the file could not be brought into DRAM",
	 CTR(pt_no_room), NULL},
	{"read_bytes", "kvfs_read_bytes_total", COUNTER, "Bytes read", CTR(read_bytes), NULL},
	{"writes", "kvfs_writes_total", COUNTER, "Write requests", CTR(writes), NULL},
	{"write_bytes", "kvfs_write_bytes_total", COUNTER, "Bytes written", CTR(write_bytes), NULL},
	{"creates", "kvfs_creates_total", COUNTER, "Files created", CTR(creates), NULL},
	{"unlinks", "kvfs_unlinks_total", COUNTER, "Files and directories removed", CTR(unlinks),
	 NULL},
	{"renames", "kvfs_renames_total", COUNTER, "Renames", CTR(renames), NULL},
	{"sealed", "kvfs_sealed_total", COUNTER, "Files sealed by their last writer", CTR(sealed),
	 NULL},
	{"evictions", "kvfs_evictions_total", COUNTER, "Files evicted to make room or by request",
	 -1, g_evictions},
	{"evicted_bytes", "kvfs_evicted_bytes_total", COUNTER, "Bytes of evicted files", -1,
	 g_evicted_bytes},
	{"operator_evictions", "kvfs_operator_evictions_total", COUNTER,
	 "Files evicted by user.kvfs.evict (kvfsctl evict)", CTR(operator_evictions), NULL},
	{"enospc", "kvfs_enospc_total", COUNTER, "Writes refused: nothing could be evicted", -1,
	 g_enospc},
	{"evict_races", "kvfs_evict_races_total", COUNTER,
	 "Evictions that found the file already deleted", CTR(evict_races), NULL},
	{"native.valid", "kvfs_native_valid_total", COUNTER, "Native blocks sealed and validated",
	 CTR(native_valid), NULL},
	{"native.invalid", "kvfs_native_invalid_total", COUNTER,
	 "Native blocks refused (EBADMSG)", CTR(native_invalid), NULL},
	{"restart_dropped", "kvfs_restart_dropped", GAUGE,
	 "Files dropped at start because their bytes were in DRAM only", CTR(restart_dropped),
	 NULL},
	{"restart_recovered", "kvfs_restart_recovered", GAUGE,
	 "Files that came back at start from NVMe", CTR(restart_recovered), NULL},
	{"verified", "kvfs_verified_total", COUNTER, "Files checked by user.kvfs.verify", CTR(verified),
	 NULL},
	{"verify_failed", "kvfs_verify_failed_total", COUNTER,
	 "Files whose check found a bad copy", CTR(verify_failed), NULL},
	{"readdir_scanned", "kvfs_readdir_scanned_total", COUNTER,
	 "Directory entries visited by readdir", CTR(readdir_scanned), NULL},
	{"catalog.commits", "kvfs_catalog_commits_total", COUNTER, "Catalog batches committed",
	 CTR(catalog_commits), NULL},
	{"catalog.errors", "kvfs_catalog_errors_total", COUNTER,
	 "Catalog commits that failed (namespace and tier records)", -1, g_catalog_errors},
	{"persist_failed", "kvfs_persist_failed_total", COUNTER,
	 "Sealed files that --persist through, fsync or their record could not make durable",
	 -1, g_persist_failed},
	{"not_durable", "kvfs_not_durable", GAUGE,
	 "Of which still not durable (retried every second)", -1, g_not_durable},
	{"fast_path.registrations", "kvfs_fast_path_registrations_total", COUNTER,
	 "Rings and buffers registered under .kvfs/iovs", CTR(fp_registrations), NULL},
	{"fast_path.requests", "kvfs_fast_path_requests_total", COUNTER,
	 "Requests served from engine rings", CTR(fp_requests), NULL},
	{"fast_path.errors", "kvfs_fast_path_errors_total", COUNTER,
	 "Ring requests refused or failed", CTR(fp_errors), NULL},
	{"fast_path.matched_blocks", "kvfs_fast_path_matched_blocks_total", COUNTER,
	 "Blocks matched and held through rings", CTR(fp_matched), NULL},
	{"fast_path.partial_matches", "kvfs_fast_path_partial_matches_total", COUNTER,
	 "Ring matches that stopped before the last key", CTR(fp_missed), NULL},
	{"fast_path.read_bytes", "kvfs_fast_path_read_bytes_total", COUNTER,
	 "Bytes copied into engine buffers", CTR(fp_read_bytes), NULL},
	{"fast_path.saved_blocks", "kvfs_fast_path_saved_blocks_total", COUNTER,
	 "Blocks stored through rings", CTR(fp_saved), NULL},
	{"fast_path.refused", "kvfs_fast_path_refused_total", COUNTER,
	 "Registrations refused: a per-user limit, full servers, an unsealed memfd",
	 CTR(fp_refused), NULL},
	{"fast_path.reclaimed", "kvfs_fast_path_reclaimed_total", COUNTER,
	 "Registrations taken back because their process was gone", CTR(fp_reclaimed), NULL},
	{"prefetch.requests", "kvfs_prefetch_requests_total", COUNTER,
	 "Writes to .kvfs/prefetch", CTR(pf_requests), NULL},
	{"prefetch.paths", "kvfs_prefetch_paths_total", COUNTER, "Paths asked to prefetch",
	 CTR(pf_paths), NULL},
	{"prefetch.queued", "kvfs_prefetch_queued_total", COUNTER,
	 "Paths queued (on local NVMe, or held by a peer)", CTR(pf_queued), NULL},
	{"prefetch.present", "kvfs_prefetch_present_total", COUNTER,
	 "Paths already in DRAM (or being written)", CTR(pf_present), NULL},
	{"prefetch.missing", "kvfs_prefetch_missing_total", COUNTER,
	 "Paths held nowhere in the cluster (or malformed)", CTR(pf_missing), NULL},
	{"prefetch.denied", "kvfs_prefetch_denied_total", COUNTER,
	 "Paths the writer could not read", CTR(pf_denied), NULL},
	{"prefetch.dropped", "kvfs_prefetch_dropped_total", COUNTER,
	 "Paths over the queue or byte bound", CTR(pf_dropped), NULL},
	{"prefetch.fetched", "kvfs_prefetch_fetched_total", COUNTER,
	 "Files brought from peers into DRAM", CTR(pf_fetched), NULL},
	{"prefetch.promoted", "kvfs_prefetch_promoted_total", COUNTER,
	 "Files brought from local NVMe into DRAM", CTR(pf_promoted), NULL},
	{"prefetch.failed", "kvfs_prefetch_failed_total", COUNTER,
	 "Queued files that could not be brought in", CTR(pf_failed), NULL},
	{"prefetch.bytes", "kvfs_prefetch_bytes_total", COUNTER, "Bytes of files prefetched",
	 CTR(pf_bytes), NULL},
	{"cluster_matches", "kvfs_cluster_matches_total", COUNTER,
	 "Chains matched against the cluster index (.kvfs/match)", CTR(cluster_matches), NULL},
	{"push.pushed", "kvfs_push_pushed_total", COUNTER,
	 "Files pushed into a named peer's lent memory", CTR(pushed), NULL},
	{"push.bytes", "kvfs_push_bytes_total", COUNTER, "Bytes pushed", CTR(pushed_bytes), NULL},
	{"push.fallbacks", "kvfs_push_fallbacks_total", COUNTER,
	 "Pushes that could not be placed (peer dead, full, failed): kept local",
	 CTR(push_fallbacks), NULL},
	{"gpu.registrations", "kvfs_gpu_registrations_total", COUNTER,
	 "Engine device memory registered under .kvfs/iovs", CTR(gpu_registrations), NULL},
	{"gpu.refused", "kvfs_gpu_refused_total", COUNTER,
	 "Device memory registrations refused (bad, stale or foreign handles)", CTR(gpu_refused),
	 NULL},
	{"gpu.copy_errors", "kvfs_gpu_copy_errors_total", COUNTER,
	 "Copies to or from engine device memory that failed", CTR(gpu_copy_errors), NULL},
	{"gpu.loaded_bytes", "kvfs_gpu_loaded_bytes_total", COUNTER,
	 "Bytes copied into engine device memory", CTR(gpu_loaded_bytes), NULL},
	{"gpu.saved_blocks", "kvfs_gpu_saved_blocks_total", COUNTER,
	 "Blocks stored from engine device memory", CTR(gpu_saved_blocks), NULL},
};

static void take_snapshot(struct kvfs_fs *fs, struct snapshot *s)
{
	const _Atomic uint64_t *c = (const _Atomic uint64_t *)&fs->ctr;
	uint64_t lookups_failed;

	memset(s, 0, sizeof(*s));
	tier_get_stats(fs->tier, &s->ts);
	for (size_t i = 0; i < KVFS_ARRAY_SIZE(s->c); i++)
		s->c[i] = atomic_load(&c[i]);
	lookups_failed = s->c[CTR(lookup_misses)];
	s->misses = lookups_failed > s->c[CTR(misses_created)]
			    ? lookups_failed - s->c[CTR(misses_created)]
			    : 0;
	s->hit_rate = s->c[CTR(hits)] + s->misses
			      ? (double)s->c[CTR(hits)] / (double)(s->c[CTR(hits)] + s->misses)
			      : -1.0;
	s->uptime = (double)(kvfs_now_ns() - fs->started_ns) / 1e9;
}

static uint64_t fig_value(const struct figure *f, const struct snapshot *s)
{
	return f->get ? f->get(s) : s->c[f->ctr];
}

/* Set "a.b.c" in @root, creating objects on the way. */
static void json_set_path(json_t *root, const char *path, json_t *val)
{
	char buf[128], *dot, *p = buf;
	json_t *o = root;

	snprintf(buf, sizeof(buf), "%s", path);
	while ((dot = strchr(p, '.'))) {
		json_t *next;

		*dot = '\0';
		next = json_object_get(o, p);
		if (!next) {
			next = json_object();
			json_object_set_new(o, p, next);
		}
		o = next;
		p = dot + 1;
	}
	json_object_set_new(o, p, val);
}

static char *render_stats(struct kvfs_fs *fs)
{
	struct snapshot s;
	json_t *root = json_object();
	char *out;

	take_snapshot(fs, &s);
	json_object_set_new(root, "version", json_string(KVFS_VERSION));
	json_object_set_new(root, "mountpoint", json_string(fs->cfg.mountpoint));
	json_object_set_new(root, "uptime_seconds", json_real(s.uptime));
	json_object_set_new(root, "policy", json_string(s.ts.policy));
	json_object_set_new(root, "hit_rate", s.hit_rate < 0 ? json_null() : json_real(s.hit_rate));
	for (size_t i = 0; i < KVFS_ARRAY_SIZE(figures); i++)
		json_set_path(root, figures[i].json, json_integer((json_int_t)fig_value(&figures[i], &s)));
	{
		json_t *faults = json_object();

		for (int op = 0; op < KVFS_FAULT_NR; op++)
			json_object_set_new(faults, kvfs_fault_name(op),
					    json_integer((json_int_t)atomic_load(
						    &kvfs_fault_slots[op].hits)));
		json_object_set_new(root, "faults_injected", faults);
	}
	{
		/* the tier backends in placement order, fastest first (tier/backend.h) */
		json_t *bk = json_array();

		for (unsigned i = 0; i < s.ts.nbackends; i++) {
			const struct tier_backend_stats *b = &s.ts.backend[i];

			json_array_append_new(
				bk, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "name", b->name,
					      "capacity_bytes", (json_int_t)b->capacity, "used_bytes",
					      (json_int_t)b->used, "files", (json_int_t)b->files,
					      "reads", (json_int_t)b->reads, "read_bytes",
					      (json_int_t)b->read_bytes, "writes", (json_int_t)b->writes,
					      "write_bytes", (json_int_t)b->write_bytes));
		}
		json_object_set_new(root, "backends", bk);
	}
	{
		json_t *r = rmt_stats_json(fs), *d = rmt_drain_json(fs);

		if (r)
			json_object_set_new(root, "remote", r);
		if (d)
			json_object_set_new(root, "drain", d);
	}
	{
		struct gpupool_stat g[8];
		unsigned n = gpupool_stats(fs, g, 8);
		json_t *pools = json_array();

		for (unsigned i = 0; i < n; i++) {
			json_t *p = json_object();

			json_object_set_new(p, "device", json_integer(g[i].device));
			json_object_set_new(p, "impl", json_string(g[i].impl));
			json_object_set_new(p, "bytes", json_integer((json_int_t)g[i].bytes));
			json_object_set_new(p, "block_bytes",
					    json_integer((json_int_t)g[i].block_bytes));
			json_object_set_new(p, "blocks", json_integer(g[i].blocks));
			json_object_set_new(p, "free_blocks", json_integer(g[i].free_blocks));
#define TG(f) json_object_set_new(p, #f, json_integer((json_int_t)g[i].tier.f))
			TG(used);
			TG(files);
			TG(stores);
			TG(promotions);
			TG(store_bytes);
			TG(d2d_loads);
			TG(d2d_bytes);
			TG(d2h_bytes);
			TG(writedowns);
			TG(drops);
			TG(evictions);
			TG(copy_errors);
#undef TG
			json_array_append_new(pools, p);
		}
		json_set_path(root, "gpu.pools", pools);
	}
	out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(root);
	return out;
}

static int appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int appendf(char **buf, size_t *len, size_t *cap, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
		va_end(ap);
		if (n < 0)
			return -EINVAL;
		if ((size_t)n < *cap - *len)
			break;
		{
			size_t nc = *cap * 2 + (size_t)n;
			char *p = realloc(*buf, nc);

			if (!p)
				return -ENOMEM;
			*buf = p;
			*cap = nc;
		}
	}
	*len += (size_t)n;
	return 0;
}

static char *render_metrics(struct kvfs_fs *fs)
{
	struct snapshot s;
	size_t len = 0, cap = 8192;
	char *buf = malloc(cap);
	int rc = 0;

	if (!buf)
		return NULL;
	buf[0] = '\0';
	take_snapshot(fs, &s);
	for (size_t i = 0; i < KVFS_ARRAY_SIZE(figures) && !rc; i++) {
		const struct figure *f = &figures[i];

		rc = appendf(&buf, &len, &cap, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", f->prom,
			     f->help, f->prom, f->type == COUNTER ? "counter" : "gauge", f->prom,
			     (unsigned long long)fig_value(f, &s));
	}
	if (!rc)
		rc = appendf(&buf, &len, &cap,
			     "# HELP kvfs_hit_ratio hits / (hits + misses)\n"
			     "# TYPE kvfs_hit_ratio gauge\nkvfs_hit_ratio %.6f\n"
			     "# HELP kvfs_uptime_seconds Seconds since the daemon started\n"
			     "# TYPE kvfs_uptime_seconds gauge\nkvfs_uptime_seconds %.3f\n",
			     s.hit_rate < 0 ? 0.0 : s.hit_rate, s.uptime);
	if (!rc) {
		struct gpupool_stat g[8];
		unsigned n = gpupool_stats(fs, g, 8);

		if (n)
			rc = appendf(&buf, &len, &cap,
				     "# HELP kvfs_gpu_pool_bytes Bytes of each --gpu pool\n"
				     "# TYPE kvfs_gpu_pool_bytes gauge\n"
				     "# HELP kvfs_gpu_pool_free_bytes Free bytes of each --gpu pool\n"
				     "# TYPE kvfs_gpu_pool_free_bytes gauge\n"
				     "# HELP kvfs_gpu_pool_files Files with a copy in each --gpu pool\n"
				     "# TYPE kvfs_gpu_pool_files gauge\n"
				     "# HELP kvfs_gpu_pool_loaded_bytes_total Bytes loaded device to device from each pool\n"
				     "# TYPE kvfs_gpu_pool_loaded_bytes_total counter\n"
				     "# HELP kvfs_gpu_pool_writedowns_total GPU-only files written down to DRAM\n"
				     "# TYPE kvfs_gpu_pool_writedowns_total counter\n");
		for (unsigned i = 0; i < n && !rc; i++)
			rc = appendf(&buf, &len, &cap,
				     "kvfs_gpu_pool_bytes{device=\"%d\"} %llu\n"
				     "kvfs_gpu_pool_free_bytes{device=\"%d\"} %llu\n"
				     "kvfs_gpu_pool_files{device=\"%d\"} %llu\n"
				     "kvfs_gpu_pool_loaded_bytes_total{device=\"%d\"} %llu\n"
				     "kvfs_gpu_pool_writedowns_total{device=\"%d\"} %llu\n",
				     g[i].device, (unsigned long long)g[i].bytes, g[i].device,
				     (unsigned long long)(g[i].free_blocks * g[i].block_bytes),
				     g[i].device, (unsigned long long)g[i].tier.files, g[i].device,
				     (unsigned long long)g[i].tier.d2d_bytes, g[i].device,
				     (unsigned long long)g[i].tier.writedowns);
	}
	if (rc) {
		free(buf);
		return NULL;
	}
	return buf;
}

static char *render_config(struct kvfs_fs *fs)
{
	const struct kvfs_config *c = &fs->cfg;
	json_t *root = json_object();
	char *out;

	json_object_set_new(root, "version", json_string(KVFS_VERSION));
	json_object_set_new(root, "pid", json_integer(getpid()));
	json_object_set_new(root, "mountpoint", json_string(c->mountpoint));
	json_object_set_new(root, "state_dir", json_string(c->state_dir));
	json_object_set_new(root, "state_is_temporary", json_boolean(c->state_is_temp));
	json_object_set_new(root, "dram_bytes", json_integer((json_int_t)c->dram_bytes));
	json_object_set_new(root, "page_size", json_integer(tier_page_size(fs->tier)));
	json_object_set_new(root, "policy", json_string(c->policy ? c->policy : "mq"));
	json_object_set_new(root, "threads", json_integer(c->threads));
	json_object_set_new(root, "entry_timeout", json_real(c->entry_timeout));
	json_object_set_new(root, "attr_timeout", json_real(c->attr_timeout));
	json_object_set_new(root, "negative_timeout", json_real(c->negative_timeout));
	json_object_set_new(root, "read_ahead_kb", json_integer(c->read_ahead_kb));
	json_object_set_new(root, "keep_cache", json_boolean(!c->no_keep_cache));
	json_object_set_new(root, "fast_path",
			    json_pack("{s:i,s:i,s:i,s:I}", "threads", (int)c->fp_threads,
				      "rings_per_user", (int)c->fp_max_rings, "buffers_per_user",
				      (int)c->fp_max_bufs, "bytes_per_user",
				      (json_int_t)c->fp_max_bytes));
	json_object_set_new(root, "passthrough", json_boolean(pt_enabled()));
	json_object_set_new(root, "dram_store",
			    json_string(tier_dram_private(fs->tier) ? "tmpfs" : "memfd"));
	{
		json_t *nv = json_array();

		for (unsigned i = 0; i < c->nvme_count; i++)
			json_array_append_new(nv, json_pack("{s:s,s:I}", "dir", c->nvme[i].dir, "bytes",
							    (json_int_t)c->nvme[i].bytes));
		json_object_set_new(root, "nvme", nv);
	}
	json_object_set_new(root, "persist", json_string(c->persist_through ? "through" : "back"));
	json_object_set_new(root, "prefetch_threads", json_integer(c->prefetch_threads));
	json_object_set_new(root, "prefetch_bytes", json_integer((json_int_t)c->prefetch_bytes));
	json_object_set_new(root, "fuse_options", json_string(c->fuse_opts));
	json_object_set_new(root, "log", c->log_path ? json_string(c->log_path) : json_null());
	{
		json_t *g = json_array();

		for (unsigned i = 0; i < c->gpu_count; i++)
			json_array_append_new(g, json_pack("{s:i,s:I}", "device", c->gpu[i].dev,
							   "bytes", (json_int_t)c->gpu[i].bytes));
		json_object_set_new(root, "gpu", g);
		json_object_set_new(root, "gpu_standin", json_boolean(c->gpu_standin));
	}
	out = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(root);
	return out;
}

int ctl_render(struct kvfs_fs *fs, unsigned id, char **buf, size_t *len)
{
	char *out;

	switch (id) {
	case CTL_STATS:
		out = render_stats(fs);
		break;
	case CTL_METRICS:
		out = render_metrics(fs);
		break;
	case CTL_CONFIG:
		out = render_config(fs);
		break;
	default:
		return -EACCES;
	}
	if (!out)
		return -ENOMEM;
	*len = strlen(out);
	if (id != CTL_METRICS) {
		/* JSON files end with a newline like any text file. */
		char *p = realloc(out, *len + 2);

		if (!p) {
			free(out);
			return -ENOMEM;
		}
		out = p;
		out[(*len)++] = '\n';
		out[*len] = '\0';
	}
	*buf = out;
	return 0;
}

bool ctl_writable(unsigned id)
{
	return id == CTL_FAULT || id == CTL_WHERE || id == CTL_DRAIN || id == CTL_PREFETCH ||
	       id == CTL_MATCH;
}

bool ctl_readable(unsigned id)
{
	return id != CTL_FAULT && id != CTL_DRAIN;
}

int ctl_where_path(const char *req, size_t len, char *path, size_t size)
{
	json_t *utf8;
	const char *p;

	if (len && req[len - 1] == '\n')
		len--;
	while (len && req[0] == '/')
		req++, len--;
	if (len == 0 || len >= size || memchr(req, '\0', len))
		return -EINVAL;
	/* jansson validates UTF-8 (and the answer is JSON, which must be). */
	utf8 = json_stringn(req, len);
	if (!utf8)
		return -EINVAL;
	json_decref(utf8);
	memcpy(path, req, len);
	path[len] = '\0';
	for (p = path;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);

		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return -EINVAL;
		if (!slash)
			return 0;
		p = slash + 1;
	}
}

int ctl_fault_spec(const char *buf, size_t len, struct kvfs_fault_spec *out, int max)
{
	int n;

	if (len && buf[len - 1] == '\n')
		len--;
	n = kvfs_fault_parse_spec(buf, len, out, max);
	for (int i = 0; i < n; i++)
		if (out[i].op == KVFS_FAULT_ARENA)
			return -EINVAL; /* the DRAM store is made once, at start */
	return n;
}

int ctl_write(struct kvfs_fs *fs, const struct kvfs_cred *cred, unsigned id, const char *buf,
	      size_t len, char **out, size_t *outlen)
{
	struct kvfs_fault_spec spec[KVFS_FAULT_SPEC_MAX];
	int n;

	if (id == CTL_PREFETCH)
		return dg_prefetch(fs, cred, buf, len, out, outlen);
	if (id == CTL_MATCH)
		return dg_match(fs, buf, len, out, outlen);

	if (id == CTL_WHERE) {
		char path[PATH_MAX];
		char *ans = NULL;
		size_t alen = 0;
		int rc = ctl_where_path(buf, len, path, sizeof(path));

		/* Only for a path the caller could look up itself. */
		if (!rc)
			rc = ns_may_lookup(fs, cred, path);
		if (!rc)
			rc = rmt_where(fs, path, strlen(path), &ans, &alen);
		if (rc)
			return rc;
		*out = ans;
		*outlen = alen;
		return 0;
	}
	if (id == CTL_DRAIN)
		return rmt_drain(fs, false);
	if (id != CTL_FAULT)
		return -EACCES;
	n = ctl_fault_spec(buf, len, spec, KVFS_FAULT_SPEC_MAX);
	if (n < 0)
		return n;
	for (int i = 0; i < n; i++)
		kvfs_fault_arm(spec[i].op, spec[i].nth, spec[i].err, spec[i].sticky);
	return 0;
}
