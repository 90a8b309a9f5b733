// The CPU simulator of csrc/cuda (README.md here): runs each block of a
// launch as one fiber per CUDA thread on one OS thread, switching only at
// __syncthreads and warp shuffles, in a random order (seeded), so a missing
// barrier shows up as results that change from seed to seed. It also checks
// what a GPU would not tell: barriers some threads never reach, shuffles of
// partial warps, cp.async copies without their wait (carried out at the wait
// only, the destination poisoned until then), misaligned vector accesses,
// dynamic shared memory above the kernel's attribute (it is sized exactly as
// launched and filled with NaN).
#include <cuda_runtime.h>

#include <sanitizer/common_interface_defs.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "sim_control.h"

#if defined(__SANITIZE_ADDRESS__)
#define SIM_ASAN 1
#else
#define SIM_ASAN 0
#endif

namespace sim {

dim3 cur_thread, cur_block, cur_block_dim, cur_grid_dim;

namespace {

enum class State { kRunnable, kBarrier, kShuffle, kDone };

struct Copy {
  void* dst;
  unsigned char bytes[16];
};

// Where a suspended fiber (or the scheduler) resumes.
struct Context {
  void* sp = nullptr;  // the fast switch: the saved stack pointer
  ucontext_t uc;       // otherwise
};

struct Thread {
  Context ctx;
  std::vector<char> stack;
  State state = State::kRunnable;
  const char* site_file = nullptr;
  int site_line = 0;
  uint64_t payload = 0, result = 0;
  int src = 0;
  std::vector<Copy> copies;
};

struct Launch {
  const char* name = "";
  Body body = nullptr;
  void* ctx = nullptr;
  unsigned char* smem = nullptr;
  size_t smem_bytes = 0;
};

Config config;
std::mt19937_64 rng(1);
std::vector<Thread> threads;
Context scheduler;
Thread* current = nullptr;
int current_tid = 0;
Launch launch_state;
cudaError_t last_error = cudaSuccess;
std::map<const void*, int> smem_attr;  // kernel -> max dynamic shared memory
std::vector<LaunchRecord> records;
size_t streaming_stores = 0;  // of the running launch
constexpr size_t kStaticSmemLimit = 48 * 1024;
#if SIM_ASAN
const void* scheduler_stack = nullptr;  // the main stack, as ASan reports it on a fiber's first entry
size_t scheduler_stack_size = 0;
#endif


[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "cuda_sim: %s (kernel %s, block %u, thread %d)\n", what.c_str(), launch_state.name,
               cur_block.x, current_tid);
  std::fflush(stderr);
  std::_Exit(3);
}

std::string site(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

#if defined(__x86_64__) && !SIM_ASAN
// A plain callee-saved-register switch: swapcontext also saves the signal
// mask, a system call per switch, which made the simulator several times slower.
extern "C" void sim_switch_stack(void** save_sp, void* load_sp);
asm(R"(
.text
.globl sim_switch_stack
.type sim_switch_stack, @function
sim_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size sim_switch_stack, .-sim_switch_stack
)");
constexpr bool kFastSwitch = true;
#else
constexpr bool kFastSwitch = false;
#endif

void switch_to(Context* from, Context* to, const void* stack, size_t size, bool dying) {
#if defined(__x86_64__) && !SIM_ASAN
  (void)stack, (void)size, (void)dying;
  sim_switch_stack(&from->sp, to->sp);
#elif SIM_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(dying ? nullptr : &fake, stack, size);
  swapcontext(&from->uc, &to->uc);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  (void)stack, (void)size, (void)dying;
  swapcontext(&from->uc, &to->uc);
#endif
}

// Back to the scheduler (which runs on the main stack).
void yield(bool dying = false) {
  Thread* self = current;
#if SIM_ASAN
  switch_to(&self->ctx, &scheduler, scheduler_stack, scheduler_stack_size, dying);
#else
  switch_to(&self->ctx, &scheduler, nullptr, 0, dying);
#endif
}

void fiber_main() {
#if SIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack, &scheduler_stack_size);
#endif
  launch_state.body(launch_state.ctx);
  if (!current->copies.empty()) die("exits with cp.async copies it never waited for");
  current->state = State::kDone;
  yield(true);
  die("a finished thread was resumed");
}

// Completes the shuffle of the warp of thread t when all its lanes have arrived.
void try_shuffle(int t) {
  const int w0 = t & ~31;
  for (int l = 0; l < 32; ++l) {
    if (threads[w0 + l].state != State::kShuffle) return;
  }
  for (int l = 0; l < 32; ++l) {
    Thread& th = threads[w0 + l];
    if (th.site_line != threads[w0].site_line || th.site_file != threads[w0].site_file) {
      die("lanes of one warp meet at different shuffles: " + site(th.site_file, th.site_line) + " and " +
          site(threads[w0].site_file, threads[w0].site_line));
    }
    th.result = (th.src >= 0 && th.src < 32) ? threads[w0 + th.src].payload : th.payload;
  }
  for (int l = 0; l < 32; ++l) threads[w0 + l].state = State::kRunnable;
}

void run_block(unsigned block, const dim3& dim) {
  const int n = static_cast<int>(dim.x);
  cur_block = dim3(block);
  std::fill(launch_state.smem, launch_state.smem + launch_state.smem_bytes, 0xff);  // NaN floats
  const size_t stack_bytes = SIM_ASAN ? (1 << 20) : (256 << 10);
  if (threads.size() < static_cast<size_t>(n)) threads.resize(n);
  for (int t = 0; t < n; ++t) {
    Thread& th = threads[t];
    th.state = State::kRunnable;
    th.copies.clear();
    if (th.stack.size() != stack_bytes) th.stack.assign(stack_bytes, 0);
    if (kFastSwitch) {
      // The frame sim_switch_stack pops: six registers, then fiber_main as the
      // return address, entered with the stack aligned as after a call.
      auto top = reinterpret_cast<uintptr_t>(th.stack.data() + th.stack.size()) & ~uintptr_t{15};
      auto* sp = reinterpret_cast<void**>(top) - 2;
      sp[0] = reinterpret_cast<void*>(&fiber_main);
      sp[1] = nullptr;
      th.ctx.sp = sp - 6;
    } else {
      getcontext(&th.ctx.uc);
      th.ctx.uc.uc_stack.ss_sp = th.stack.data();
      th.ctx.uc.uc_stack.ss_size = th.stack.size();
      th.ctx.uc.uc_link = nullptr;
      makecontext(&th.ctx.uc, fiber_main, 0);
    }
  }
  std::vector<int> ready;
  for (;;) {
    ready.clear();
    int barrier = 0, shuffle = 0, done = 0;
    for (int t = 0; t < n; ++t) {
      switch (threads[t].state) {
        case State::kRunnable: ready.push_back(t); break;
        case State::kBarrier: ++barrier; break;
        case State::kShuffle: ++shuffle; break;
        case State::kDone: ++done; break;
      }
    }
    if (ready.empty()) {
      if (done == n) return;
      if (shuffle > 0) {
        for (int t = 0; t < n; ++t) {
          if (threads[t].state == State::kShuffle) {
            current_tid = t;
            die("a warp shuffle at " + site(threads[t].site_file, threads[t].site_line) +
                " is not reached by all 32 lanes of the warp (partial warp or divergence)");
          }
        }
      }
      if (done > 0) {
        for (int t = 0; t < n; ++t) {
          if (threads[t].state == State::kBarrier) {
            current_tid = t;
            die("__syncthreads at " + site(threads[t].site_file, threads[t].site_line) + " is not reached by " +
                std::to_string(done) + " threads that have exited");
          }
        }
      }
      for (int t = 0; t < n; ++t) {
        if (threads[t].site_line != threads[0].site_line || threads[t].site_file != threads[0].site_file) {
          current_tid = t;
          die("threads wait at different barriers: " + site(threads[t].site_file, threads[t].site_line) + " and " +
              site(threads[0].site_file, threads[0].site_line));
        }
        threads[t].state = State::kRunnable;
      }
      continue;
    }
    // A random order of every runnable thread, each up to its next barrier or shuffle.
    std::shuffle(ready.begin(), ready.end(), rng);
    for (int t : ready) {
      if (threads[t].state != State::kRunnable) continue;
      current = &threads[t];
      current_tid = t;
      cur_thread = dim3(static_cast<unsigned>(t));
      switch_to(&scheduler, &threads[t].ctx, threads[t].stack.data(), threads[t].stack.size(), false);
      current = nullptr;
    }
  }
}

}  // namespace

void* dynamic_smem_base() { return launch_state.smem; }

void syncthreads(const char* file, int line) {
  current->state = State::kBarrier;
  current->site_file = file;
  current->site_line = line;
  yield();
}

int lane() { return current_tid & 31; }

uint64_t shuffle(unsigned mask, uint64_t payload, int src, const char* file, int line) {
  if (mask != 0xffffffffu) die("shuffle with a partial mask at " + site(file, line) + " (the kernels use full warps)");
  if (static_cast<int>(cur_block_dim.x) < (current_tid | 31) + 1) {
    die("shuffle at " + site(file, line) + " in a partial warp (block of " + std::to_string(cur_block_dim.x) +
        " threads)");
  }
  Thread* self = current;
  self->state = State::kShuffle;
  self->site_file = file;
  self->site_line = line;
  self->payload = payload;
  self->src = src;
  try_shuffle(current_tid);
  if (self->state == State::kShuffle) yield();
  if (SIM_ASAN == 0 && self->state != State::kRunnable) die("resumed inside a shuffle");
  self->state = State::kRunnable;
  return self->result;
}

[[noreturn]] void fail(const char* what, const char* file, int line) { die(std::string(what) + " at " + site(file, line)); }

void check_aligned(const void* p, size_t align, const char* what, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    die(std::string(what) + " of " + std::to_string(align) + " bytes at a misaligned address, " + site(file, line));
  }
}

void cp_async(void* dst, const void* src, int bytes, const char* file, int line) {
  check_aligned(dst, 16, "cp.async destination", file, line);
  check_aligned(src, 16, "cp.async source", file, line);
  if (bytes < 0 || bytes > 16) die("cp.async of " + std::to_string(bytes) + " bytes, " + site(file, line));
  auto* d = static_cast<unsigned char*>(dst);
  if (d < launch_state.smem || d + 16 > launch_state.smem + launch_state.smem_bytes) {
    die("cp.async destination outside the block's shared memory, " + site(file, line));
  }
  Copy c{dst, {}};
  std::memcpy(c.bytes, src, static_cast<size_t>(bytes));  // only `bytes` are read
  std::memset(c.bytes + bytes, 0, 16 - static_cast<size_t>(bytes));
  std::memset(dst, 0xff, 16);  // poison until the wait
  current->copies.push_back(c);
}

void count_streaming_store() { ++streaming_stores; }

void cp_async_wait_all() {
  for (const Copy& c : current->copies) std::memcpy(c.dst, c.bytes, 16);
  current->copies.clear();
}

cudaError_t run_grid(const void* kernel, const char* name, dim3 grid, dim3 block, size_t smem, Body body, void* ctx) {
  const auto attr = smem_attr.find(kernel);
  const size_t limit = attr != smem_attr.end() ? static_cast<size_t>(attr->second) : kStaticSmemLimit;
  cudaError_t err = cudaSuccess;
  if (block.x < 1 || block.x > 1024 || block.y != 1 || block.z != 1 || grid.x < 1 || grid.y != 1 || grid.z != 1) {
    err = cudaErrorInvalidConfiguration;
  } else if (smem > limit) {
    err = cudaErrorInvalidValue;  // as the driver: above the kernel's attribute (48 KB unless raised)
  }
  int resident = 0;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, static_cast<int>(block.x), smem);
  records.push_back({name, grid.x, block.x, smem, resident, err, 0});
  if (err != cudaSuccess) {
    if (config.fail_on_launch_error) {
      std::fprintf(stderr, "cuda_sim: launch of %s failed: %u blocks of %u threads, %zu bytes of shared memory (limit %zu)\n",
                   name, grid.x, block.x, smem, limit);
      std::_Exit(3);
    }
    last_error = err;
    return err;
  }
  launch_state = {name, body, ctx, nullptr, smem};
  std::vector<unsigned char> mem(smem);  // exactly as launched: ASan sees an overrun
  launch_state.smem = mem.data();
  cur_block_dim = block;
  cur_grid_dim = grid;
  std::vector<unsigned> order(grid.x);
  for (unsigned b = 0; b < grid.x; ++b) order[b] = b;
  std::shuffle(order.begin(), order.end(), rng);
  streaming_stores = 0;
  for (unsigned b : order) run_block(b, block);
  records.back().streaming_stores = streaming_stores;
  launch_state = {};
  return cudaSuccess;
}

void configure(const Config& c) {
  config = c;
  rng.seed(c.seed);
}

std::vector<LaunchRecord> take_records() { return std::exchange(records, {}); }

}  // namespace sim

// ------------------------------------------------------------ runtime API

cudaError_t cudaGetLastError() { return std::exchange(sim::last_error, cudaSuccess); }
cudaError_t cudaPeekAtLastError() { return sim::last_error; }
const char* cudaGetErrorString(cudaError_t err) { return err == cudaSuccess ? "no error" : "simulated launch error"; }
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int) { return cudaSuccess; }
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  if (attr == cudaDevAttrMultiProcessorCount) {
    *value = sim::config.sms;
  } else if (attr == cudaDevAttrL2CacheSize) {
    *value = sim::config.l2_bytes;
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > sim::config.smem_per_block) {
    return cudaErrorInvalidValue;
  }
  sim::smem_attr[kernel] = value;
  return cudaSuccess;
}
// The occupancy of an sm_90 multiprocessor, with every thread at the register cap the kernels declare.
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel, int threads, size_t smem) {
  const auto attr = sim::smem_attr.find(kernel);
  const size_t limit = attr != sim::smem_attr.end() ? static_cast<size_t>(attr->second) : sim::kStaticSmemLimit;
  if (smem > limit) {
    *blocks = 0;  // as the driver: no block fits without the opt-in
    return cudaSuccess;
  }
  const int warps = (threads + 31) / 32;
  int n = std::min(sim::config.threads_per_sm / (32 * warps), 32);
  n = std::min(n, static_cast<int>(sim::config.smem_per_sm / (smem + 1024)));
  n = std::min(n, 65536 / (warps * 32 * sim::config.regs_per_thread));
  *blocks = std::max(n, 0);
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  return *p != nullptr ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes != 0) std::memcpy(dst, src, bytes);  // empty buffers may be null
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes != 0) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
