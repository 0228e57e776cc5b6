/*
 * gpu/gpu_i.h — private to gpu/: what the implementations share.
 */
#ifndef KVFS_GPU_I_H
#define KVFS_GPU_I_H

#include "gpu/gpu.h"
#include "gpu/kv_map.h"

/*
 * Fill the kernel arguments of @x (its block_ids and segs pointers are
 * copied as given: the caller points them at device-visible copies). Picks
 * the widest unit that keeps every access aligned.
 */
void gpu_kv_args_init(const struct gpu_kv_xfer *x, struct gpu_kv_args *a);

#endif
