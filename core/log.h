/* core/log.h — the daemon's log: one line per event, to stderr or a file. */
#ifndef KVFS_CORE_LOG_H
#define KVFS_CORE_LOG_H

enum kvfs_log_level {
	KVFS_LOG_ERR = 0,
	KVFS_LOG_WARN,
	KVFS_LOG_INFO,
	KVFS_LOG_DEBUG,
};

/*
 * Send the log to @path (appended), or to stderr when @path is NULL, keeping
 * messages up to @level. Safe to call again to move the log.
 * @return 0, or -errno if @path cannot be opened (the log stays where it was).
 */
int kvfs_log_open(const char *path, int level);

/* Parse "err", "warn", "info" or "debug". @return the level, or -EINVAL. */
int kvfs_log_level_parse(const char *name);

void kvfs_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3), nonnull(2)));

#define log_err(...)   kvfs_log(KVFS_LOG_ERR, __VA_ARGS__)
#define log_warn(...)  kvfs_log(KVFS_LOG_WARN, __VA_ARGS__)
#define log_info(...)  kvfs_log(KVFS_LOG_INFO, __VA_ARGS__)
#define log_debug(...) kvfs_log(KVFS_LOG_DEBUG, __VA_ARGS__)

#endif
