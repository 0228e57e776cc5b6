# kvfs — plain Makefile (liburing style): `make` builds everything found,
# V=1 shows commands, SANITIZE=address,undefined or SANITIZE=thread builds a
# sanitized variant in its own folder that `make test` then runs.

VERSION    := 0.1.0
PREFIX     ?= /usr/local
DESTDIR    ?=
V          ?= 0
SANITIZE   ?=
PYTHON     ?= /usr/bin/python3

comma := ,
ifeq ($(SANITIZE),)
B := build
else
B := build/san-$(subst $(comma),-,$(SANITIZE))
endif

ifeq ($(V),1)
Q :=
else
Q := @
endif

PKGS      := fuse3 liburing jansson libcbor libxxhash liburcu-bp liburcu-cds libfabric hiredis
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CC       ?= gcc
OPT      ?= -O2
CFLAGS   ?= $(OPT) -g
WARN     := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wstrict-prototypes \
            -Wmissing-prototypes -Wformat=2
KCFLAGS  := -std=gnu11 -fPIC -pthread -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
            -DKVFS_VERSION='"$(VERSION)"' -Iinclude -I. $(WARN) $(PKG_CFLAGS) -MMD -MP
LDFLAGS  += -Wl,--as-needed
LDLIBS   := $(PKG_LIBS) -lrocksdb -lcrypto -lpthread -lm
ifneq ($(SANITIZE),)
KCFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDFLAGS  += -fsanitize=$(SANITIZE)
endif

# --- the GPU layer's toolkit (gpu/, DESIGN §10) ------------------------------
# gpu/ is built with CUDA when a toolkit is found (CUDA_HOME, or NO_CUDA=1 to
# leave it out); the stand-in device (gpu/shm.c) is always built, for tests.
# The runtime is linked statically, so a CUDA build starts without a driver.
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCH ?= 90
NVCC      := $(CUDA_HOME)/bin/nvcc
HAVE_CUDA := $(if $(NO_CUDA),,$(shell test -x $(NVCC) && \
               test -e $(CUDA_HOME)/include/cuda_runtime_api.h && \
               test -e $(CUDA_HOME)/lib64/libcudart_static.a && echo 1))
ifeq ($(HAVE_CUDA),1)
CUDA_LIBS := $(CUDA_HOME)/lib64/libcudart_static.a -ldl -lrt -lstdc++
NVCCFLAGS := -O2 -std=c++17 -Iinclude -I. -Xcompiler -fPIC,-Wall,-Werror \
             -gencode arch=compute_$(CUDA_ARCH),code=[sm_$(CUDA_ARCH),compute_$(CUDA_ARCH)]
else
CUDA_LIBS :=
ifeq ($(MAKELEVEL),0)
$(info kvfs: no CUDA toolkit in $(CUDA_HOME) (set CUDA_HOME=...): building without GPU support)
endif
endif

# --- sources, one folder a layer (DESIGN §1) -------------------------------
CORE_SRC   := $(wildcard core/*.c)
TIER_SRC   := $(wildcard tier/*.c)
FS_SRC     := $(wildcard fs/*.c)
RDMA_SRC   := $(wildcard rdma/*.c)
GPU_SRC    := gpu/gpu.c gpu/shm.c $(if $(HAVE_CUDA),gpu/cuda.c)
GPU_CU     := $(if $(HAVE_CUDA),gpu/kern.cu)
# The public library: what include/kvfs/ declares.
LIBKVFS_SRC := core/keys.c core/format.c $(wildcard engine/lib*.c)

obj = $(patsubst %.c,$(B)/obj/%.o,$(1))

CORE_LIB   := $(B)/lib/libkvfs-core.a
TIER_LIB   := $(B)/lib/libkvfs-tier.a
RDMA_LIB   := $(B)/lib/libkvfs-rdma.a
GPU_LIB    := $(B)/lib/libkvfs-gpu.a
LIBKVFS_A  := $(B)/lib/libkvfs.a
LIBKVFS_SO := $(B)/lib/libkvfs.so
BINS       := $(B)/bin/kvfs $(if $(wildcard tools/kvfsctl.c),$(B)/bin/kvfsctl) \
              $(if $(wildcard tools/bench*.c),$(B)/bin/kvfs-bench)

UNIT_SRC   := $(wildcard tests/unit/*_test.c)
UNIT_BINS  := $(patsubst tests/unit/%.c,$(B)/tests/%,$(UNIT_SRC))

.PHONY: all deps test unit integration bench demo demo-cluster install clean format check-deps
all: check-deps $(BINS) $(LIBKVFS_A) $(LIBKVFS_SO) $(UNIT_BINS) $(B)/tests/fpdrv

check-deps:
	@pkg-config --exists $(PKGS) && test -e /usr/include/rocksdb/c.h \
	  && test -e /usr/include/cmocka.h || { \
	  echo "kvfs: build dependencies missing; run 'make deps' (or 'sudo mk/deps.sh')" >&2; exit 1; }

deps:
	$(Q)sh mk/deps.sh

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  CC      $<"
	$(Q)$(CC) $(KCFLAGS) $(CFLAGS) -c -o $@ $<

# nvcc is slow: kern.cu is its only input, compiled once per build folder.
$(B)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  NVCC    $<"
	$(Q)$(NVCC) $(NVCCFLAGS) -MMD -MP -c -o $@ $<

$(B)/obj/gpu/gpu.o: KCFLAGS += $(if $(HAVE_CUDA),-DKVFS_CUDA)
$(B)/obj/gpu/cuda.o: KCFLAGS += -isystem $(CUDA_HOME)/include

$(CORE_LIB): $(call obj,$(CORE_SRC))
$(TIER_LIB): $(call obj,$(TIER_SRC))
$(RDMA_LIB): $(call obj,$(RDMA_SRC))
$(GPU_LIB): $(call obj,$(GPU_SRC)) $(patsubst %.cu,$(B)/obj/%.cu.o,$(GPU_CU))
$(LIBKVFS_A): $(call obj,$(LIBKVFS_SRC))
$(CORE_LIB) $(TIER_LIB) $(RDMA_LIB) $(GPU_LIB) $(LIBKVFS_A):
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(LIBKVFS_SO): $(call obj,$(LIBKVFS_SRC))
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) -shared -Wl,-soname,libkvfs.so.0 $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bin/kvfs: $(call obj,$(FS_SRC)) $(TIER_LIB) $(RDMA_LIB) $(GPU_LIB) $(CORE_LIB)
$(B)/bin/kvfsctl: $(call obj,tools/kvfsctl.c) $(LIBKVFS_A)
$(B)/bin/kvfs-bench: $(call obj,$(wildcard tools/bench*.c)) $(LIBKVFS_A)
$(BINS):
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(if $(filter $(GPU_LIB),$^),$(CUDA_LIBS))

# nvme_test makes strdup fail for one string (an allocation failure mid-open).
$(B)/tests/nvme_test: LDFLAGS += -Wl,--wrap=strdup
$(B)/tests/%_test: $(call obj,tests/unit/%_test.c) $(TIER_LIB) $(LIBKVFS_A) $(GPU_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS) -lcmocka

# --- tests -------------------------------------------------------------------
# `make test` installs what is missing, builds, then runs the unit suites,
# the integration suites on a real FUSE mount, and a short pass of every
# fuzz target over its corpus (fuzz-regress, below).
test: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)$(MAKE) --no-print-directory unit integration
	$(Q)$(MAKE) --no-print-directory fuzz-regress

unit: $(UNIT_BINS)
	$(Q)sh tests/run-unit.sh $(UNIT_BINS)

# The suites about names, eviction and NVMe run a second time with every read
# through the daemon (--no-passthrough), so both read paths stay tested.
NOPT_TESTS ?= test_namespace test_eviction test_nvme test_passthrough
integration: $(BINS) $(B)/tests/fpdrv
	$(Q)KVFS_BUILD=$(B) $(PYTHON) tests/integration/run.py $(TESTS)
	$(Q)$(if $(TESTS),true,KVFS_BUILD=$(B) KVFS_TEST_NO_PASSTHROUGH=1 $(PYTHON) tests/integration/run.py $(NOPT_TESTS))

# A libkvfs client the fast-path suite drives.
# It uses the tests' stand-in GPU (gpu/shm.c) for device buffers.
$(B)/tests/fpdrv: $(call obj,tests/integration/fpdrv.c) $(LIBKVFS_A) $(GPU_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

# The GPU tier's benchmark (tests/gpu/run.sh runs it on a device).
all: $(B)/tests/gpu_bench
$(B)/tests/gpu_bench: $(call obj,tests/gpu/gpu_bench.c) $(LIBKVFS_A) $(GPU_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS)

bench: all
	$(Q)KVFS_BUILD=$(B) sh tools/bench.sh

demo: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)KVFS_BUILD=$(B) sh tools/demo.sh

demo-cluster: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)KVFS_BUILD=$(B) sh tools/demo-cluster.sh

# --- install -----------------------------------------------------------------
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig \
	  $(DESTDIR)$(PREFIX)/include/kvfs
	install -m 755 $(BINS) $(ENG_BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIBKVFS_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIBKVFS_SO) $(DESTDIR)$(PREFIX)/lib/libkvfs.so.$(VERSION)
	ln -sf libkvfs.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libkvfs.so.0
	ln -sf libkvfs.so.0 $(DESTDIR)$(PREFIX)/lib/libkvfs.so
	install -m 644 include/kvfs/*.h $(DESTDIR)$(PREFIX)/include/kvfs/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' mk/kvfs.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/kvfs.pc

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)

# --- the reference engine (engine/llm/, issue 5) -------------------------------
# kvfs-llm: a Llama-family model on the CPU (OpenBLAS) that reuses KV caches
# through libkvfs; kvfs-genmodel writes models for it. llm_test links the
# engine's objects (all but main.c) and OpenBLAS.
BLAS_CFLAGS := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS   := $(shell pkg-config --libs openblas 2>/dev/null || echo -lopenblas)
ENG_SRC     := $(wildcard engine/llm/*.c)
ENG_OBJ     := $(call obj,$(filter-out engine/llm/main.c,$(ENG_SRC)))
ENG_BINS    := $(if $(ENG_SRC),$(B)/bin/kvfs-llm) \
               $(if $(wildcard tools/genmodel.c),$(B)/bin/kvfs-genmodel)

all: $(ENG_BINS)
integration: $(ENG_BINS)

$(B)/obj/engine/llm/%.o $(B)/obj/tests/unit/llm_test.o: KCFLAGS += $(BLAS_CFLAGS)
# -O3 vectorizes the softmax and dot-product lanes; no -ffast-math, so the
# order of float operations stays the one the source writes.
$(B)/obj/engine/llm/%.o: CFLAGS += -O3

$(B)/bin/kvfs-llm: $(call obj,engine/llm/main.c) $(ENG_OBJ) $(LIBKVFS_A)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(BLAS_LIBS) $(LDLIBS)

$(B)/bin/kvfs-genmodel: $(call obj,tools/genmodel.c)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/tests/llm_test: $(call obj,tests/unit/llm_test.c) $(ENG_OBJ) $(TIER_LIB) $(GPU_LIB) $(CORE_LIB) \
                     $(LIBKVFS_A)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(BLAS_LIBS) $(LDLIBS) -lcmocka

# --- the remote tier (rdma/, DESIGN §5) -------------------------------------------
# libkvfs-rdma.a: fabric transport (libfabric), peer server and client, cluster
# index (hiredis); the daemon links it. rdma_peerd (a peer process for the
# kill tests) and rdma_bench (loopback measurements) are second mains in
# tests/unit/, not suites.
RDMA_AUX := $(B)/tests/rdma_peerd $(B)/tests/rdma_bench

all: $(RDMA_AUX)
.SECONDARY: $(patsubst %.c,$(B)/obj/%.o,$(wildcard tests/unit/rdma_*.c))

# Overrides the generic suite rule (make prefers the pattern with the shorter
# stem): the rdma suites need rdma_peerd beside them.
$(B)/tests/rdma_%_test: $(call obj,tests/unit/rdma_%_test.c) $(RDMA_LIB) $(CORE_LIB) | $(RDMA_AUX)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $(filter %.o %.a,$^) $(LDLIBS) -lcmocka

$(RDMA_AUX): $(B)/tests/rdma_%: $(B)/obj/tests/unit/rdma_%.o $(RDMA_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# --- fuzzing (tests/fuzz/, DESIGN §8) ------------------------------------------------
# libFuzzer targets built by clang (-fsanitize=fuzzer,address,undefined) in their own
# folder, from their own objects of the modules they drive. `make fuzz` runs each
# for FUZZ_SECONDS from its checked-in seed corpus (tests/fuzz/corpus/<target>/)
# plus what earlier runs found (build/fuzz/corpus/<target>/); `make test` runs each
# for FUZZ_TEST_SECONDS, so every input once checked in stays a regression test.
# `make fuzz-corpus` rewrites the generated seeds (tests/fuzz/mkcorpus.c).
FUZZ_CC           ?= clang
FUZZ_SECONDS      ?= 60
FUZZ_TEST_SECONDS ?= 3
FZ                := build/fuzz
FUZZ_SAN          := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                     -fno-omit-frame-pointer
# The gcc build gates warnings (-Werror); clang's own opinions only print here.
FUZZ_KCFLAGS       = $(filter-out -Werror -fsanitize=% -fno-omit-frame-pointer,$(KCFLAGS)) \
                     -O1 -g -fsanitize=fuzzer-no-link $(FUZZ_SAN)
FUZZ_TARGETS      := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BINS         := $(patsubst %,$(FZ)/fuzz_%,$(FUZZ_TARGETS))
fzobj              = $(patsubst %.c,$(FZ)/obj/%.o,$(1))
FZ_CORE           := $(FZ)/lib/libkvfs-core.a
FZ_TIER           := $(FZ)/lib/libkvfs-tier.a
FZ_RDMA           := $(FZ)/lib/libkvfs-rdma.a
# The GPU layer as the tests build it without CUDA: the stand-in device only.
FZ_GPU            := $(FZ)/lib/libkvfs-gpu.a
# fs/ with the daemon's main() renamed (libFuzzer has the main): a target
# links only the objects it calls into and what they need.
FZ_FS             := $(FZ)/lib/libkvfs-fs.a

.PHONY: fuzz fuzz-build fuzz-regress fuzz-corpus
fuzz-build: $(FUZZ_BINS)

fuzz: fuzz-build
	$(Q)sh tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BINS)

fuzz-regress: fuzz-build
	$(Q)sh tests/fuzz/run.sh -q $(FUZZ_TEST_SECONDS) $(FUZZ_BINS)

fuzz-corpus: $(B)/tests/mkcorpus
	$(Q)$(B)/tests/mkcorpus tests/fuzz/corpus

$(FZ)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  FUZZCC  $<"
	$(Q)$(FUZZ_CC) $(FUZZ_KCFLAGS) -c -o $@ $<

$(FZ_CORE): $(call fzobj,$(CORE_SRC))
$(FZ_TIER): $(call fzobj,$(TIER_SRC))
$(FZ_RDMA): $(call fzobj,$(RDMA_SRC))
$(FZ_GPU): $(call fzobj,gpu/gpu.c gpu/shm.c)
$(FZ_FS): $(call fzobj,$(FS_SRC))
$(FZ)/obj/fs/main.o: FUZZ_KCFLAGS += -Dmain=kvfs_daemon_main -Wno-missing-prototypes
$(FZ_CORE) $(FZ_TIER) $(FZ_RDMA) $(FZ_GPU) $(FZ_FS):
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

$(FZ)/fuzz_%: $(FZ)/obj/tests/fuzz/fuzz_%.o $(FZ_FS) $(FZ_RDMA) $(FZ_TIER) $(FZ_GPU) $(FZ_CORE)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -Wl,--as-needed -o $@ $< \
	  -Wl,--start-group $(filter %.a,$^) -Wl,--end-group $(LDLIBS)

# The seed writer is an ordinary program of the gcc build.
$(B)/tests/mkcorpus: $(call obj,tests/fuzz/mkcorpus.c) $(RDMA_LIB) $(CORE_LIB)
	@mkdir -p $(dir $@)
	@[ "$(V)" = 1 ] || echo "  LD      $@"
	$(Q)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

-include $(shell find $(FZ)/obj -name '*.d' 2>/dev/null)
.SECONDARY: $(patsubst %.c,$(FZ)/obj/%.o,$(wildcard tests/fuzz/fuzz_*.c)) \
            $(call obj,tests/fuzz/mkcorpus.c)
