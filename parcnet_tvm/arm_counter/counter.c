/* parcnet counter: a qemu-arm TCG plugin that counts what an ARMv7 program executes, per
 * guest thread, for the RK3288 latency estimate (parcnet_tvm/estimate.py).
 *
 *   qemu-arm -plugin libparcnet_counter.so,out=COUNTS.json[,window=markers|all][,tbs=on] PROGRAM ...
 *
 * Per guest thread (qemu-user runs each guest thread as its own vCPU):
 *   - dynamic instruction counts by class, decoded from the A32 and T32 encodings: NEON
 *     arithmetic on q and on d registers (multiply-accumulates, FMA and MLA, apart), SIMD&FP
 *     register loads/stores, scalar VFP, integer ALU, integer loads/stores, branches;
 *   - the bytes moved by SIMD and by integer loads/stores;
 *   - a data-cache simulation of the RK3288: a 32 KB 4-way L1D per thread (one thread per
 *     core), a 1 MB 16-way L2 shared by all, 64-byte lines, LRU, write-allocate.
 * window=markers (default) counts only between the program's markers
 *   prctl(0x50415243, 1) ... prctl(0x50415243, 0)   (EINVAL on a real kernel: harmless)
 * while the caches are simulated all along, so a warm-up run before the window warms them.
 * prctl(0x50415243, 2, base) records the load address of the library whose kernels
 * tbs=on attributes (per translation block: executions and misses, for per-kernel reports).
 *
 * Waiting is not work: thread pools are configured not to spin (TVM_THREAD_POOL_SPIN_COUNT=0,
 * OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=0: they sleep in futex), and the loops that still
 * wait by calling sched_yield (TVM's ParallelLauncher::WaitForJobs) are dropped: whatever a
 * thread executes between two consecutive sched_yield calls is moved to `spin_insns`.
 *
 * Written against the plugin API v1 of qemu 7.2; no qemu header ships with Debian, so the few
 * declarations used are below. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

typedef uint64_t qemu_plugin_id_t;
typedef uint32_t qemu_plugin_meminfo_t;
typedef struct {
  const char *target_name;
  struct { int min, cur; } version;
  bool system_emulation;
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum { CB_NO_REGS = 0 };
enum { MEM_RW = 3 };
typedef void (*vcpu_udata_cb)(unsigned int vcpu, void *udata);
typedef void (*vcpu_mem_cb)(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata);
typedef void (*vcpu_syscall_cb)(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                                uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                                uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, struct qemu_plugin_tb *));
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, vcpu_udata_cb, int, void *);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *, vcpu_mem_cb, int, int, void *);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t, vcpu_syscall_cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t, void (*)(qemu_plugin_id_t, void *), void *);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *, size_t);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *);
unsigned int qemu_plugin_mem_size_shift(qemu_plugin_meminfo_t);
bool qemu_plugin_mem_is_store(qemu_plugin_meminfo_t);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* ---- instruction classes ---- */
enum {
  NEON_Q_MAC, NEON_Q, NEON_D_MAC, NEON_D, SIMD_LOAD, SIMD_STORE, VFP,
  INT_ALU, INT_LOAD, INT_STORE, BRANCH, OTHER, NCLASS
};
static const char *CLASS_NAMES[NCLASS] = {
  "neon_q_mac", "neon_q", "neon_d_mac", "neon_d", "simd_load", "simd_store", "vfp",
  "int_alu", "int_load", "int_store", "branch", "other"};

/* Advanced SIMD data processing, A32 form 1111 001U ... (ARM ARM A7.4). */
static int neon_data(uint32_t i) {
  int U = (i >> 24) & 1, A = (i >> 23) & 1, size = (i >> 20) & 3, opc = (i >> 8) & 0xf;
  int b6 = (i >> 6) & 1, b4 = (i >> 4) & 1, q, mac = 0;
  if (!A) {  /* three registers of the same length */
    q = b6;
    mac = (opc == 0x9 && !b4) || ((opc == 0xd || opc == 0xc) && b4 && !U);  /* VMLA/VMLS int, float; VFMA/VFMS */
  } else if (b4) {  /* shifts by immediate, modified immediates */
    q = b6;
  } else if (size != 3 && !b6) {  /* three registers of different lengths: q results */
    q = 1;
    mac = opc >= 0x8 && opc <= 0xb;  /* VMLAL, VQDMLAL, VMLSL, VQDMLSL */
  } else if (size != 3) {  /* two registers and a scalar: Q is bit 24 */
    mac = opc < 0x8;  /* VMLA/VMLS (int, float), VMLAL, VQDMLAL by scalar */
    q = (opc & 0x2) ? 1 : U;  /* the long forms write q */
  } else {  /* VEXT, two-register misc, VTBL/VTBX (d), VDUP scalar */
    q = (U && (opc & 0xc) == 0x8) ? 0 : b6;
  }
  return q ? (mac ? NEON_Q_MAC : NEON_Q) : (mac ? NEON_D_MAC : NEON_D);
}

static int a32_class(uint32_t i) {
  if ((i >> 28) == 0xf) {
    if ((i & 0xfe000000) == 0xf2000000) return neon_data(i);
    if ((i & 0xff100000) == 0xf4000000) return ((i >> 21) & 1) ? SIMD_LOAD : SIMD_STORE;
    if ((i & 0xfe000000) == 0xfa000000) return BRANCH;  /* BLX immediate */
    return OTHER;  /* preloads, barriers, system */
  }
  int cp = (i >> 8) & 0xf, L = (i >> 20) & 1;
  switch ((i >> 25) & 7) {
    case 0:
      if ((i & 0x0fffffd0) == 0x012fff10) return BRANCH;  /* BX, BLX register */
      if ((i & 0x90) == 0x90 && (i & 0x60)) {  /* LDRH/STRH/LDRD/STRD/LDRSB/LDRSH */
        if (L) return INT_LOAD;
        return ((i >> 5) & 3) == 2 ? INT_LOAD : INT_STORE;  /* LDRD is encoded with L=0 */
      }
      return INT_ALU;
    case 1: return INT_ALU;
    case 2: return L ? INT_LOAD : INT_STORE;
    case 3: return ((i >> 4) & 1) ? INT_ALU : (L ? INT_LOAD : INT_STORE);  /* media vs LDR/STR */
    case 4: return L ? INT_LOAD : INT_STORE;  /* LDM/STM, PUSH/POP */
    case 5: return BRANCH;
    case 6:
      if (cp != 10 && cp != 11) return OTHER;
      if ((i & 0x0fe00000) == 0x0c400000) return VFP;  /* VMOV between two core registers and d */
      return L ? SIMD_LOAD : SIMD_STORE;  /* VLDR/VSTR/VLDM/VSTM/VPUSH/VPOP */
    default:
      if ((i >> 24) & 1) return OTHER;  /* SVC */
      return (cp == 10 || cp == 11) ? VFP : OTHER;  /* VFP arithmetic, VMOV/VMRS/VDUP core */
  }
}

static int t32_class(uint32_t t) {  /* t = first halfword << 16 | second halfword */
  if ((t & 0xef000000) == 0xef000000)  /* 111U 1111: Advanced SIMD data processing */
    return neon_data(0xf2000000 | ((t >> 4) & 0x01000000) | (t & 0x00ffffff));
  if ((t & 0xff100000) == 0xf9000000) return ((t >> 21) & 1) ? SIMD_LOAD : SIMD_STORE;
  if ((t & 0xfc000000) == 0xec000000 || (t & 0xff000000) == 0xee000000)
    return a32_class(t);  /* coprocessor forms: the A32 encoding with cond = AL */
  int L = (t >> 20) & 1;
  switch (t >> 27) {
    case 0x1d:  /* 11101 */
      if (((t >> 25) & 3) == 0) {
        if ((t & 0xfff000e0) == 0xe8d00000) return BRANCH;  /* TBB/TBH */
        return L ? INT_LOAD : INT_STORE;  /* LDM/STM/LDRD/STRD/exclusives */
      }
      return ((t >> 25) & 3) == 1 ? INT_ALU : OTHER;
    case 0x1e:  /* 11110 */
      return (t & 0x8000) ? BRANCH : INT_ALU;
    default:  /* 11111 */
      if (((t >> 25) & 3) == 0) return L ? INT_LOAD : INT_STORE;
      return ((t >> 26) & 1) ? OTHER : INT_ALU;
  }
}

static int t16_class(uint32_t h) {
  switch (h >> 12) {
    case 0x0: case 0x1: case 0x2: case 0x3: return INT_ALU;
    case 0x4:
      if ((h & 0xfc00) == 0x4000) return INT_ALU;
      if ((h & 0xff00) == 0x4700) return BRANCH;  /* BX/BLX */
      if ((h & 0xfc00) == 0x4400) return ((h & 0x87) == 0x87) ? BRANCH : INT_ALU;  /* MOV pc, ... */
      return INT_LOAD;  /* LDR literal */
    case 0x5: return ((h >> 9) & 7) >= 3 ? INT_LOAD : INT_STORE;
    case 0x6: case 0x7: case 0x8: case 0x9: return ((h >> 11) & 1) ? INT_LOAD : INT_STORE;
    case 0xa: return INT_ALU;
    case 0xb:
      if ((h & 0x0e00) == 0x0400) return INT_STORE;  /* PUSH */
      if ((h & 0x0e00) == 0x0c00) return INT_LOAD;   /* POP */
      if ((h & 0x0500) == 0x0100) return BRANCH;     /* CBZ/CBNZ */
      return (h & 0x0f00) == 0x0f00 ? OTHER : INT_ALU;  /* IT, hints */
    case 0xc: return ((h >> 11) & 1) ? INT_LOAD : INT_STORE;
    case 0xd: return ((h >> 8) & 0xf) == 0xf ? OTHER : BRANCH;
    default: return BRANCH;  /* 11100: B */
  }
}

/* ---- counters ---- */
enum {
  K_INSNS = NCLASS, K_SIMD_LOAD_BYTES, K_SIMD_STORE_BYTES, K_INT_LOAD_BYTES, K_INT_STORE_BYTES,
  K_L1_ACCESSES, K_L1_MISSES, K_L2_MISSES, K_TB_EXECS, NCOUNT
};
static const char *COUNT_NAMES[NCOUNT - NCLASS] = {
  "insns", "simd_load_bytes", "simd_store_bytes", "int_load_bytes", "int_store_bytes",
  "l1_accesses", "l1_misses", "l2_misses", "tb_execs"};

#define MAX_THREADS 256
#define LINE_SHIFT 6
#define L1_SETS 128  /* 32 KB / 64 B / 4 ways */
#define L1_WAYS 4
#define L2_SETS 1024 /* 1 MB / 64 B / 16 ways */
#define L2_WAYS 16
#define SCHED_YIELD 158  /* ARM EABI syscall numbers */
#define FUTEX 240
#define PRCTL 172
#define MARKER 0x50415243u

typedef struct { uint64_t line[L1_WAYS], stamp[L1_WAYS]; } L1Set;
typedef struct {
  uint64_t c[NCOUNT];
  uint64_t at_syscall[NCOUNT];  /* counters at this thread's last syscall */
  uint64_t spin_insns, syscalls, futex_calls, yields;
  int64_t last_syscall;
  uint64_t clock;
  bool used;
  L1Set l1[L1_SETS];
} Thread;

typedef struct Block {
  uint64_t vaddr, execs, l1_misses, l2_misses;
  uint32_t n_insns;
  uint16_t cls[NCLASS];
  struct Block *next;
} Block;

static Thread *threads[MAX_THREADS];
static uint64_t l2_line[L2_SETS][L2_WAYS], l2_stamp[L2_SETS][L2_WAYS], l2_clock;
static int l2_lock;
static pthread_mutex_t blocks_lock = PTHREAD_MUTEX_INITIALIZER;
static Block *blocks;
static volatile int counting;
static bool window_markers = true, keep_blocks;
static uint64_t windows, image_base;
static char out_path[4096];

static Thread *thread_of(unsigned int vcpu) {
  if (vcpu >= MAX_THREADS) vcpu = MAX_THREADS - 1;
  Thread *t = __atomic_load_n(&threads[vcpu], __ATOMIC_ACQUIRE);
  if (t == NULL) {
    t = calloc(1, sizeof(Thread));
    t->last_syscall = -1;
    Thread *expected = NULL;
    if (!__atomic_compare_exchange_n(&threads[vcpu], &expected, t, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
      free(t);
      t = expected;
    }
  }
  return t;
}

/* Returns true on a hit; on a miss the line replaces the least recently used way. */
static bool l1_access(Thread *t, uint64_t line) {
  L1Set *s = &t->l1[line % L1_SETS];
  uint64_t now = ++t->clock, key = line + 1;
  int victim = 0;
  for (int w = 0; w < L1_WAYS; w++) {
    if (s->line[w] == key) { s->stamp[w] = now; return true; }
    if (s->stamp[w] < s->stamp[victim]) victim = w;
  }
  s->line[victim] = key;
  s->stamp[victim] = now;
  return false;
}

static bool l2_access(uint64_t line) {
  while (__atomic_exchange_n(&l2_lock, 1, __ATOMIC_ACQUIRE)) {}
  uint64_t *lines = l2_line[line % L2_SETS], *stamps = l2_stamp[line % L2_SETS];
  uint64_t now = ++l2_clock, key = line + 1;
  int victim = 0;
  bool hit = false;
  for (int w = 0; w < L2_WAYS; w++) {
    if (lines[w] == key) { stamps[w] = now; hit = true; break; }
    if (stamps[w] < stamps[victim]) victim = w;
  }
  if (!hit) { lines[victim] = key; stamps[victim] = now; }
  __atomic_store_n(&l2_lock, 0, __ATOMIC_RELEASE);
  return hit;
}

static void on_block(unsigned int vcpu, void *udata) {
  if (!counting) return;
  Block *b = udata;
  Thread *t = thread_of(vcpu);
  t->used = true;
  for (int k = 0; k < NCLASS; k++) t->c[k] += b->cls[k];
  t->c[K_INSNS] += b->n_insns;
  t->c[K_TB_EXECS]++;
  if (keep_blocks) __atomic_fetch_add(&b->execs, 1, __ATOMIC_RELAXED);
}

/* udata: the block, with bit 0 set when the instruction is a SIMD&FP load/store. */
static void on_memory(unsigned int vcpu, qemu_plugin_meminfo_t info, uint64_t vaddr, void *udata) {
  Thread *t = thread_of(vcpu);
  Block *b = (Block *)((uintptr_t)udata & ~(uintptr_t)1);
  bool simd = (uintptr_t)udata & 1, store = qemu_plugin_mem_is_store(info);
  unsigned size = 1u << qemu_plugin_mem_size_shift(info);
  uint64_t first = vaddr >> LINE_SHIFT, last = (vaddr + size - 1) >> LINE_SHIFT;
  for (uint64_t line = first; line <= last; line++) {
    bool l1_hit = l1_access(t, line), l2_hit = l1_hit || l2_access(line);
    if (!counting) continue;
    t->c[K_L1_ACCESSES]++;
    if (!l1_hit) {
      t->c[K_L1_MISSES]++;
      if (keep_blocks) __atomic_fetch_add(&b->l1_misses, 1, __ATOMIC_RELAXED);
    }
    if (!l2_hit) {
      t->c[K_L2_MISSES]++;
      if (keep_blocks) __atomic_fetch_add(&b->l2_misses, 1, __ATOMIC_RELAXED);
    }
  }
  if (counting) t->c[simd ? (store ? K_SIMD_STORE_BYTES : K_SIMD_LOAD_BYTES)
                         : (store ? K_INT_STORE_BYTES : K_INT_LOAD_BYTES)] += size;
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
  Thread *t = thread_of(vcpu);
  if (num == PRCTL && (uint32_t)a1 == MARKER) {
    if (a2 == 1 && window_markers) { windows++; counting = 1; }
    else if (a2 == 0 && window_markers) counting = 0;
    else if (a2 == 2) image_base = (uint32_t)a3;
  }
  if (num == SCHED_YIELD && t->last_syscall == SCHED_YIELD) {
    /* a wait loop: what ran since the last yield was spinning, not work */
    t->spin_insns += t->c[K_INSNS] - t->at_syscall[K_INSNS];
    memcpy(t->c, t->at_syscall, sizeof t->c);
  }
  if (counting) {
    t->syscalls++;
    if (num == FUTEX) t->futex_calls++;
    if (num == SCHED_YIELD) t->yields++;
  }
  t->last_syscall = num;
  memcpy(t->at_syscall, t->c, sizeof t->c);
}

static bool looks_thumb32(const uint8_t *p) { return ((p[1] >> 3) & 0x1f) >= 0x1d; }

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  Block *b = calloc(1, sizeof(Block));
  b->vaddr = qemu_plugin_tb_vaddr(tb);
  b->n_insns = (uint32_t)n;
  /* ARM or Thumb state: the v1 API does not say. Thumb when a 16-bit instruction or a
   * halfword-aligned start shows it, or when every 32-bit word has a Thumb-2 first halfword
   * while not every word carries an A32 condition of AL/unconditional. */
  bool thumb = (b->vaddr & 2) != 0, all_t32 = n > 0, all_al = true;
  for (size_t k = 0; k < n; k++) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, k);
    const uint8_t *p = qemu_plugin_insn_data(insn);
    if (qemu_plugin_insn_size(insn) == 2) thumb = true;
    else {
      all_t32 = all_t32 && looks_thumb32(p);
      all_al = all_al && (p[3] >> 4) >= 0xe;
    }
  }
  thumb = thumb || (all_t32 && !all_al);
  for (size_t k = 0; k < n; k++) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, k);
    const uint8_t *p = qemu_plugin_insn_data(insn);
    int cls;
    if (qemu_plugin_insn_size(insn) == 2) cls = t16_class(p[0] | p[1] << 8);
    else if (thumb) cls = t32_class((uint32_t)(p[0] | p[1] << 8) << 16 | (uint32_t)(p[2] | p[3] << 8));
    else cls = a32_class((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
    b->cls[cls]++;
    uintptr_t udata = (uintptr_t)b | (cls == SIMD_LOAD || cls == SIMD_STORE);
    qemu_plugin_register_vcpu_mem_cb(insn, on_memory, CB_NO_REGS, MEM_RW, (void *)udata);
  }
  qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, CB_NO_REGS, b);
  pthread_mutex_lock(&blocks_lock);
  b->next = blocks;
  blocks = b;
  pthread_mutex_unlock(&blocks_lock);
}

static void write_counts(qemu_plugin_id_t id, void *udata) {
  (void)id; (void)udata;
  FILE *f = fopen(out_path, "w");
  if (f == NULL) { perror(out_path); return; }
  fprintf(f, "{\"format\": \"parcnet-counter-1\", \"window\": \"%s\", \"windows\": %" PRIu64
          ", \"image_base\": %" PRIu64 ",\n \"cache\": {\"l1_bytes\": %d, \"l1_ways\": %d, \"l2_bytes\": %d,"
          " \"l2_ways\": %d, \"line_bytes\": %d},\n \"threads\": [",
          window_markers ? "markers" : "all", windows, image_base, L1_SETS * L1_WAYS << LINE_SHIFT, L1_WAYS,
          L2_SETS * L2_WAYS << LINE_SHIFT, L2_WAYS, 1 << LINE_SHIFT);
  bool first = true;
  for (int v = 0; v < MAX_THREADS; v++) {
    Thread *t = threads[v];
    if (t == NULL || !t->used) continue;
    fprintf(f, "%s\n  {\"vcpu\": %d", first ? "" : ",", v);
    first = false;
    for (int k = 0; k < NCOUNT; k++)
      fprintf(f, ", \"%s\": %" PRIu64, k < NCLASS ? CLASS_NAMES[k] : COUNT_NAMES[k - NCLASS], t->c[k]);
    fprintf(f, ", \"spin_insns\": %" PRIu64 ", \"syscalls\": %" PRIu64 ", \"futex_calls\": %" PRIu64
            ", \"yields\": %" PRIu64 "}", t->spin_insns, t->syscalls, t->futex_calls, t->yields);
  }
  fprintf(f, "\n ],\n \"block_columns\": [\"vaddr\", \"execs\", \"l1_misses\", \"l2_misses\"");
  for (int k = 0; k < NCLASS; k++) fprintf(f, ", \"%s\"", CLASS_NAMES[k]);
  fprintf(f, "],\n \"blocks\": [");
  first = true;
  for (Block *b = keep_blocks ? blocks : NULL; b != NULL; b = b->next) {
    if (b->execs == 0) continue;
    fprintf(f, "%s\n  [%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %" PRIu64, first ? "" : ",", b->vaddr, b->execs,
            b->l1_misses, b->l2_misses);
    for (int k = 0; k < NCLASS; k++) fprintf(f, ", %u", b->cls[k]);
    fputc(']', f);
    first = false;
  }
  fprintf(f, "\n ]}\n");
  fclose(f);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                               int argc, char **argv) {
  (void)info;
  for (int k = 0; k < argc; k++) {
    const char *arg = argv[k];
    if (strncmp(arg, "out=", 4) == 0) snprintf(out_path, sizeof out_path, "%s", arg + 4);
    else if (strcmp(arg, "window=all") == 0) window_markers = false;
    else if (strcmp(arg, "window=markers") == 0) window_markers = true;
    else if (strcmp(arg, "tbs=on") == 0) keep_blocks = true;
    else { fprintf(stderr, "parcnet counter: unknown argument %s (out=, window=markers|all, tbs=on)\n", arg); return 1; }
  }
  if (out_path[0] == 0) { fprintf(stderr, "parcnet counter: give out=PATH\n"); return 1; }
  counting = !window_markers;
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, write_counts, NULL);
  return 0;
}
