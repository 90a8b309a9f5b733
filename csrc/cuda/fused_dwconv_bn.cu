// Entry points of the CUDA kernels (fused_dwconv_bn_kernels.h): shape checks,
// workspace sizes, the layout dispatch, the last backward kernel, which
// reduces the per-block partials of dW, dgamma and dbeta in a fixed order, and
// the apply pass over a stored z (layout-agnostic: elementwise).
// The kernels themselves: fused_dwconv_bn_nchw.cu (NCHW) and
// fused_dwconv_bn_nhwc.cu (channels_last); their headers describe the passes.
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "fused_dwconv_bn_device.cuh"
#include "fused_dwconv_bn_internal.h"

namespace mixpath {
namespace cuda_kernels {
namespace detail {
namespace {

// One warp per channel.
__global__ void backward_finish_kernel(const float* __restrict__ grad_part, int grad_slots,
                                       const float* __restrict__ dw_part, int dw_slots,
                                       const float* __restrict__ save_var, float eps, int64_t C, int K, int out_k,
                                       float* __restrict__ dweight, float* __restrict__ dgamma,
                                       float* __restrict__ dbeta) {
  const int lane = threadIdx.x & 31;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (c >= C) return;  // the whole warp
  const float* gp = grad_part + c * grad_slots * 2;
  const float sdu = warp_sum_strided(gp, grad_slots, 2);
  const float sduz = warp_sum_strided(gp + 1, grad_slots, 2);
  if (lane == 0) {
    dbeta[c] = sdu;
    dgamma[c] = sduz * rsqrtf(save_var[c] + eps);
  }
  const int taps = K * K, off = (K - out_k) / 2;
  for (int o = lane; o < out_k * out_k; o += 32) {
    const int tap = (o / out_k + off) * K + o % out_k + off;
    float s = 0.f;
    for (int i = 0; i < dw_slots; ++i) s += dw_part[(c * dw_slots + i) * taps + tap];
    dweight[c * out_k * out_k + o] = s;
  }
}

// One warp per channel: the apply pass's prologue (the same merge, so the same
// bits) -> save_mean, save_var and coef = [scale][shift] per channel.
__global__ void stored_z_stats_kernel(const float* __restrict__ part, int slots, int64_t C,
                                      const float* __restrict__ gamma, const float* __restrict__ beta, float eps,
                                      float* __restrict__ save_mean, float* __restrict__ save_var,
                                      float* __restrict__ coef) {
  const int lane = threadIdx.x & 31;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (c >= C) return;  // the whole warp
  const Moments m = warp_merge_strided(part + c * slots * 3, slots, 3);
  const float mean = m.mean, var = m.m2 / m.n;
  if (lane == 0) {
    const BnCoef bc = bn_coef(gamma[c], beta[c], mean, var, eps);
    save_mean[c] = mean;
    save_var[c] = var;
    coef[c] = bc.scale;
    coef[C + c] = bc.shift;
  }
}

// y[i] = act(z[i] * scale[c] + shift[c]), c = i's channel: i / plane % C
// (NCHW, plane = Ho * Wo) or i % C (channels_last, plane = 1); z in z_dtype.
__global__ void apply_stored_z_kernel(int dtype, int z_dtype, const void* __restrict__ z, int64_t n, int64_t C,
                                      int64_t plane, const float* __restrict__ coef, int act, int streaming,
                                      void* __restrict__ y) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const bool bf16 = is_bf16(dtype), z_bf16 = is_bf16(z_dtype);
  with_width(z_dtype, [&](auto ztag) {
    using ZRaw = decltype(ztag);
    const ZRaw* zr = static_cast<const ZRaw*>(z);
    with_width(dtype, [&](auto tag) {
      using Raw = decltype(tag);
      Raw* yr = static_cast<Raw*>(y);
      for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
        const int64_t c = (i / plane) % C;
        const float u = fmaf(decode(__ldg(zr + i), z_bf16), __ldg(coef + c), __ldg(coef + C + c));
        store_out(yr + i, encode<Raw>(activate(u, act), bf16), streaming != 0);
      }
    });
  });
}

// A 1 x 1 kernel as the centre of a zero 3 x 3 one: the 3 x 3 kernels then
// compute exactly the 1 x 1 result (the other taps add 0 * x), so K = 1 needs
// no kernels of its own.
__global__ void pad_1x1_kernel(const float* __restrict__ w1, int64_t C, float* __restrict__ w3) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < 9 * C) w3[i] = i % 9 == 4 ? w1[i / 9] : 0.f;
}

}  // namespace

cudaError_t launch_backward_finish(const float* grad_part, int grad_slots, const float* dw_part, int dw_slots,
                                   const float* save_var, float eps, int64_t C, int K, int out_k, float* dweight,
                                   float* dgamma, float* dbeta, cudaStream_t stream) {
  constexpr int kWarps = 8;
  const unsigned blocks = static_cast<unsigned>(ceil_div(C, kWarps));
  backward_finish_kernel<<<blocks, 32 * kWarps, 0, stream>>>(grad_part, grad_slots, dw_part, dw_slots, save_var, eps,
                                                              C, K, out_k, dweight, dgamma, dbeta);
  return cudaGetLastError();
}

cudaError_t launch_apply_stored_z(const OpShape& s, const ForwardArgs& a, const void* z, const float* part, int slots,
                                  float* coef, int num_sms, bool stream_stores, cudaStream_t stream) {
  constexpr int kWarps = 8;
  stored_z_stats_kernel<<<static_cast<unsigned>(ceil_div(s.C, kWarps)), 32 * kWarps, 0, stream>>>(
      part, slots, s.C, a.gamma, a.beta, s.eps, a.save_mean, a.save_var, coef);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t Ho = (s.H - 1) / s.stride + 1, Wo = (s.W - 1) / s.stride + 1, n = s.N * s.C * Ho * Wo;
  constexpr int kThreads = 256;
  // Grid-stride blocks: one per kThreads elements, at most four whole waves
  // (with equal work per block a partial last wave would idle multiprocessors).
  const int64_t wave = static_cast<int64_t>(resident_blocks(reinterpret_cast<const void*>(&apply_stored_z_kernel),
                                                            kThreads, 0)) * std::max(num_sms, 1);
  int64_t blocks = ceil_div(n, kThreads);
  if (blocks > wave) blocks = std::min(blocks / wave, int64_t{4}) * wave;
  apply_stored_z_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<int>(s.dtype), static_cast<int>(stored_z_dtype(s)), z, n, s.C, s.channels_last ? 1 : Ho * Wo, coef,
      static_cast<int>(s.activation), stream_stores ? 1 : 0, a.y);
  return cudaGetLastError();
}

size_t stored_z_floats(const OpShape& s) {
  if (s.keeps_z) return 0;
  const int64_t Ho = (s.H - 1) / s.stride + 1, Wo = (s.W - 1) / s.stride + 1;
  return static_cast<size_t>(round_up(s.N * s.C * Ho * Wo, 4));
}

namespace {

// The shape the kernels run: K = 1 as 3 (see pad_1x1_kernel).
OpShape run_shape(const OpShape& s) {
  OpShape r = s;
  if (r.K == 1) r.K = 3;
  return r;
}

// Floats of workspace before the padded 1 x 1 kernel (16-byte aligned).
size_t padded_offset(size_t floats) { return static_cast<size_t>(round_up(static_cast<int64_t>(floats), 4)); }

// For K = 1: writes the padded kernel at ws and returns it; else returns w.
const float* padded_weight(const OpShape& s, const float* w, float* ws, cudaStream_t stream, cudaError_t* err) {
  *err = cudaSuccess;
  if (s.K != 1) return w;
  const unsigned blocks = static_cast<unsigned>(ceil_div(9 * s.C, 256));
  pad_1x1_kernel<<<blocks, 256, 0, stream>>>(w, s.C, ws);
  *err = cudaGetLastError();
  return ws;
}

size_t workspace_floats(const OpShape& s, int num_sms, bool backward) {
  const OpShape r = run_shape(s);
  size_t floats = 0;
  if (backward) {
    const BackwardArgs none{};
    if (r.channels_last) {
      nhwc_backward(r, none, nullptr, num_sms, false, nullptr, &floats, s.K);
    } else {
      nchw_backward(r, none, nullptr, num_sms, false, nullptr, &floats, s.K);
    }
  } else {
    const ForwardArgs none{};
    if (r.channels_last) {
      nhwc_forward(r, none, nullptr, num_sms, false, nullptr, &floats);
    } else {
      nchw_forward(r, none, nullptr, num_sms, false, nullptr, &floats);
    }
  }
  return s.K == 1 ? padded_offset(floats) + 9 * static_cast<size_t>(s.C) : floats;
}

}  // namespace

cudaError_t allow_smem(const void* kernel, size_t smem) {
  // Always the whole budget: the attribute is per kernel, so setting each
  // plan's own size could lower it below what another plan of the same kernel needs.
  if (smem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBudget));
}

int wave_slots(int64_t groups, int64_t items, int per_sm, int num_sms) {
  const int64_t wave = std::max<int64_t>(1, static_cast<int64_t>(per_sm) * num_sms);
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(items, 4 * wave / std::max<int64_t>(groups, 1)));
  int64_t best = 1, best_time = -1;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t blocks = groups * s, waves = ceil_div(blocks, wave);
    if (s > 1 && waves > 1 && 2 * (blocks - (waves - 1) * wave) < wave) continue;
    // In units of an item; + 1: a block's set-up and prologue cost about one.
    const int64_t time = waves * (ceil_div(items, s) + 1);
    if (best_time < 0 || time < best_time) {
      best = s;
      best_time = time;
    }
  }
  return static_cast<int>(best);
}

int resident_blocks(const void* kernel, int threads, size_t smem) {
  // Cached per device and launch shape: plans are made twice per op (workspace size, launch).
  using Key = std::tuple<int, const void*, int, size_t>;
  static std::mutex mutex;
  static std::map<Key, int> cache;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 1;
  }
  const Key key{device, kernel, threads, smem};
  {
    std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  // The opt-in comes first: without it the query counts no block above 48 KB.
  int n = 0;
  if (allow_smem(kernel, smem) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, threads, smem) != cudaSuccess) {
    (void)cudaGetLastError();
    n = 1;
  }
  n = std::max(n, 1);
  std::lock_guard<std::mutex> lock(mutex);
  cache[key] = n;
  return n;
}

namespace {

// Streaming stores only for an output larger than L2 (fused_dwconv_bn_kernels.h).
bool streams(const OpShape& s, int64_t H, int64_t W, int64_t l2_bytes) {
  return s.N * s.C * H * W * (s.dtype == DType::kFloat32 ? 4 : 2) > l2_bytes;
}

}  // namespace

}  // namespace detail

bool stores_z(const OpShape& s) {
  if (!s.training) return false;
  if (s.keeps_z) return true;
  if (s.store_z == StoreZ::kAuto) return s.K >= kStoreZMinK;
  return s.store_z == StoreZ::kStore;
}

const char* unsupported_reason(const OpShape& s) {
  if (s.K < 1 || s.K > 9 || s.K % 2 == 0) return "the merged kernel size must be odd and between 1 and 9";
  if (s.stride != 1 && s.stride != 2) return "stride must be 1 or 2";
  if (s.N < 1 || s.C < 1 || s.H < 1 || s.W < 1) return "every dimension of x must be at least 1";
  constexpr int64_t kIntMax = 0x7fffffff;
  if (s.N * s.C > kIntMax || s.H * s.W > (int64_t{1} << 30) || s.N * s.H * s.W > kIntMax) {
    return "x is too large for the CUDA kernels' 32-bit plane and item indices";
  }
  if (s.eps <= 0.f) return "eps must be positive";
  if (s.keeps_z && !s.training) return "keeping z needs a training forward (eval computes y in one pass)";
  return nullptr;
}

size_t forward_workspace_bytes(const OpShape& s, int num_sms) {
  return detail::workspace_floats(s, num_sms, false) * sizeof(float);
}

size_t backward_workspace_bytes(const OpShape& s, int num_sms) {
  return detail::workspace_floats(s, num_sms, true) * sizeof(float);
}

cudaError_t forward(const OpShape& s, const ForwardArgs& a, void* workspace, int num_sms, int64_t l2_bytes,
                    cudaStream_t stream) {
  if (unsupported_reason(s) != nullptr) return cudaErrorInvalidValue;
  const OpShape r = detail::run_shape(s);
  const bool stream_stores = detail::streams(s, (s.H - 1) / s.stride + 1, (s.W - 1) / s.stride + 1, l2_bytes);
  float* ws = static_cast<float*>(workspace);
  size_t floats = 0;
  cudaError_t err = r.channels_last ? detail::nhwc_forward(r, a, nullptr, num_sms, false, stream, &floats)
                                    : detail::nchw_forward(r, a, nullptr, num_sms, false, stream, &floats);
  if (err != cudaSuccess) return err;
  ForwardArgs ra = a;
  ra.weight = detail::padded_weight(s, a.weight, ws + detail::padded_offset(floats), stream, &err);
  if (err != cudaSuccess) return err;
  return r.channels_last ? detail::nhwc_forward(r, ra, ws, num_sms, stream_stores, stream, nullptr)
                         : detail::nchw_forward(r, ra, ws, num_sms, stream_stores, stream, nullptr);
}

cudaError_t backward(const OpShape& s, const BackwardArgs& a, void* workspace, int num_sms, int64_t l2_bytes,
                     cudaStream_t stream) {
  if (unsupported_reason(s) != nullptr) return cudaErrorInvalidValue;
  const OpShape r = detail::run_shape(s);
  const bool stream_stores = detail::streams(s, s.H, s.W, l2_bytes);
  float* ws = static_cast<float*>(workspace);
  size_t floats = 0;
  cudaError_t err = r.channels_last ? detail::nhwc_backward(r, a, nullptr, num_sms, false, stream, &floats, s.K)
                                    : detail::nchw_backward(r, a, nullptr, num_sms, false, stream, &floats, s.K);
  if (err != cudaSuccess) return err;
  BackwardArgs ra = a;
  ra.weight = detail::padded_weight(s, a.weight, ws + detail::padded_offset(floats), stream, &err);
  if (err != cudaSuccess) return err;
  return r.channels_last ? detail::nhwc_backward(r, ra, ws, num_sms, stream_stores, stream, nullptr, s.K)
                         : detail::nchw_backward(r, ra, ws, num_sms, stream_stores, stream, nullptr, s.K);
}

}  // namespace cuda_kernels
}  // namespace mixpath
