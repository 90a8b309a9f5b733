// What a harness can set and read of the CPU simulator (sim.cpp): the
// scheduling seed, the modelled device, and a record of every launch.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

namespace sim {

struct Config {
  uint64_t seed = 1;            // the interleaving of threads and the order of blocks
  int sms = 132;                // multiprocessors (H100 SXM / H200)
  int threads_per_sm = 2048;
  size_t smem_per_sm = 233472;  // 228 KB, 1 KB of it reserved per block
  int smem_per_block = 232448;  // the most a kernel may opt in to
  int regs_per_thread = 112;    // the kernels' register caps (__maxnreg__) round to this
  int l2_bytes = 50 << 20;      // cudaDevAttrL2CacheSize: 50 MB (H100 SXM / H200)
  bool fail_on_launch_error = false;
};

struct LaunchRecord {
  const char* name;
  unsigned blocks, threads;
  size_t smem;
  int resident;  // blocks per multiprocessor, from the occupancy model
  cudaError_t error;
  size_t streaming_stores;  // __stcs calls of all its threads
};

void configure(const Config& c);
std::vector<LaunchRecord> take_records();

}  // namespace sim
