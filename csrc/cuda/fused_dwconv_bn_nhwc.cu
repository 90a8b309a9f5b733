// Channels-last (NHWC) kernels of the fused op; same passes as the NCHW ones
// (fused_dwconv_bn_nchw.cu: F1 stats, F3 apply, B1 grad stats, B3 dz/dx/dW,
// then the fixed-order finish), vectorised over channels instead of columns.
//
// A block owns CB consecutive channels (NQ = CB / 4 channel quads) and one of
// `slots` partial-sum slots, and walks the items (n, tile) of its slot. Per
// item the x box of the tile (with halo) is staged in shared memory as
// float32, [row][column][channel]: one pixel's CB channels are contiguous, so
// a warp reads float4 quads of whole pixels without bank conflicts. Thread
// (quad q, spatial lane s) computes 1 x V output micro-tiles for its four
// channels: per kernel row, the K weight quads of that row (shared memory,
// [tap][channel]) stay in registers while the window streams past. dy, y and
// dx move straight between registers and global memory: a pixel's channel
// quad is contiguous there too, so those accesses coalesce (8 or 16 bytes per
// thread) when C is a multiple of 4; otherwise they go element by element.
//
// B1 runs in eval mode too: dbeta and dgamma are its sums either way. B3
// computes dz on the tile plus a halo (HL rows/columns before it, HH after:
// what its dx reads) into shared memory, dx from it (stride 2: the output
// phases one at a time, each a correlation with a sub-kernel), and dW by jobs
// (quad, kernel row, row phase) whose K x 4 sums persist in shared memory,
// each owned by one thread (deterministic). When a tile is the whole plane
// the halo lies outside the image and is zeroed once instead of per item.
// Because B3 recomputes z on the halo, its planner picks, among tiles that
// fit the whole shared-memory budget, the one with the least work per output,
// with 16 or 32 channels and 128 to 256 threads sized from the halo region.
// Stored and kept z and streaming stores: as in the NCHW file.
#include <algorithm>
#include <utility>

#include "fused_dwconv_bn_device.cuh"
#include "fused_dwconv_bn_internal.h"

namespace mixpath {
namespace cuda_kernels {
namespace detail {
namespace {

template <int K_, int S_>
struct NhwcCfg {
  static constexpr int K = K_, S = S_, P = K / 2;
  static constexpr int V = 4;                // output positions per micro-tile (one row)
  static constexpr int WIN = S * (V - 1) + K;  // input positions a micro-tile reads per row
  static constexpr int HL = S == 1 ? P : P / 2;
  static constexpr int HH = S == 1 ? P : (P + 1) / 2;
  static constexpr int V2 = 2;  // stride-2 dx: output-grid columns per micro-tile (4 dx columns)
  // Register cap: two 256-thread blocks per SM.
  static constexpr int kRegs = 128;
};

constexpr int kMaxThreads = 256;
// B3's blocks: at least four warps and 16 channels (four quads) where C has them.
constexpr int kMinBackwardThreads = 128;
constexpr int kMinBackwardChannels = 16;

enum Mode : int { kStats = 0, kApply = 1, kGradStats = 2 };

struct NhwcArgs {
  int N, C, H, W, Ho, Wo;
  int dtype, act, training;
  float eps, count;
  int vec;  // C % 4 == 0 and aligned pointers: channel quads move as one vector
  int CB, NQ, PP, CBG, TS, slots, reverse;  // channels per block, quads, floats per pixel, blocks of channels, spatial threads
  int TH, TW, NTW, NT, whole;
  int reg_r0, reg_c0, reg_rows, reg_cols;  // compute region (output positions) relative to the tile
  int xs_rows, xs_cols;                    // x box in pixels
  int dz_rows, dz_cols, dz_r_off, dz_c_off;
  int T, J;
  int dz_off, ws_off, coef_off, dw_off, red_off;
  int in_slots;
  int stream_stores;  // out is larger than L2: streaming stores
  int store_z;        // kStats: also writes z to out (stores_z), as stored_z_dtype
  int out_dtype;      // of out: dtype, or z's
  int z_dtype;        // of z
  const void* x;
  const void* z;      // B1 and B3: the kept z, read instead of recomputed (nullptr: recompute)
  const void* dy;
  void* out;
  const float* weight;
  const float* gamma;
  const float* beta;
  const float* mean;
  const float* var;
  float* save_mean;
  float* save_var;
  const float* part_in;
  float* part;
  float* part_dw;
};

__device__ __forceinline__ void fma4(float4& acc, const float4& w, const float4& x) {
  acc.x = fmaf(w.x, x.x, acc.x);
  acc.y = fmaf(w.y, x.y, acc.y);
  acc.z = fmaf(w.z, x.z, acc.z);
  acc.w = fmaf(w.w, x.w, acc.w);
}

__device__ __forceinline__ float get(const float4& v, int k) { return k == 0 ? v.x : k == 1 ? v.y : k == 2 ? v.z : v.w; }
__device__ __forceinline__ void set(float4& v, int k, float x) {
  if (k == 0) v.x = x;
  else if (k == 1) v.y = x;
  else if (k == 2) v.z = x;
  else v.w = x;
}

// Channels c .. c+3 of one pixel (n of them exist), as float / to `dtype`;
// one 16- or 8-byte access when `vec`.
template <class Raw>
__device__ __forceinline__ float4 load_quad(const Raw* p, int n, bool vec, bool bf16) {
  if (vec) {
    if constexpr (sizeof(Raw) == 4) {
      return __ldg(reinterpret_cast<const float4*>(p));
    } else {
      const uint2 r = __ldg(reinterpret_cast<const uint2*>(p));
      return make_float4(decode(static_cast<Raw>(r.x & 0xffffu), bf16), decode(static_cast<Raw>(r.x >> 16), bf16),
                         decode(static_cast<Raw>(r.y & 0xffffu), bf16), decode(static_cast<Raw>(r.y >> 16), bf16));
    }
  }
  return make_float4(n > 0 ? decode(__ldg(p), bf16) : 0.f, n > 1 ? decode(__ldg(p + 1), bf16) : 0.f,
                     n > 2 ? decode(__ldg(p + 2), bf16) : 0.f, n > 3 ? decode(__ldg(p + 3), bf16) : 0.f);
}

template <class Raw>
__device__ __forceinline__ void store_quad(Raw* p, int n, bool vec, bool bf16, bool streaming, const float4& v) {
  if (vec) {
    if constexpr (sizeof(Raw) == 4) {
      store_out(reinterpret_cast<float4*>(p), v, streaming);
    } else {
      const unsigned e0 = encode<Raw>(v.x, bf16), e1 = encode<Raw>(v.y, bf16);
      const unsigned e2 = encode<Raw>(v.z, bf16), e3 = encode<Raw>(v.w, bf16);
      store_out(reinterpret_cast<uint2*>(p), make_uint2(e0 | (e1 << 16), e2 | (e3 << 16)), streaming);
    }
    return;
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (k < n) store_out(p + k, encode<Raw>(get(v, k), bf16), streaming);
  }
}

// The quad at element `i` of a tensor of dtype `dtype`: the branch is around
// one access, so the code around it stays dtype-free.
__device__ __forceinline__ float4 load_quad(int dtype, const void* base, int64_t i, int n, bool vec) {
  float4 v;
  with_width(dtype, [&](auto tag) {
    using Raw = decltype(tag);
    v = load_quad(static_cast<const Raw*>(base) + i, n, vec, is_bf16(dtype));
  });
  return v;
}

__device__ __forceinline__ void store_quad(const NhwcArgs& a, int64_t i, int n, const float4& v) {
  with_width(a.out_dtype, [&](auto tag) {
    using Raw = decltype(tag);
    store_quad(static_cast<Raw*>(a.out) + i, n, a.vec != 0, is_bf16(a.out_dtype), a.stream_stores != 0, v);
  });
}

// Channels c .. c+3 of a thread's quad, all four moments at once (one count).
struct QuadSums {
  float n = 0.f;
  float4 shift{0.f, 0.f, 0.f, 0.f}, s1{0.f, 0.f, 0.f, 0.f}, s2{0.f, 0.f, 0.f, 0.f};
  __device__ __forceinline__ void add(const float4& z) {  // shifted sums, see ShiftedSums
    if (n == 0.f) shift = make_float4(first_shift(z.x), first_shift(z.y), first_shift(z.z), first_shift(z.w));
    n += 1.f;
    const float4 d = make_float4(z.x - shift.x, z.y - shift.y, z.z - shift.z, z.w - shift.w);
    s1 = make_float4(s1.x + d.x, s1.y + d.y, s1.z + d.z, s1.w + d.w);
    s2 = make_float4(fmaf(d.x, d.x, s2.x), fmaf(d.y, d.y, s2.y), fmaf(d.z, d.z, s2.z), fmaf(d.w, d.w, s2.w));
  }
  __device__ __forceinline__ Moments moments(int k) const {
    if (n == 0.f) return {0.f, 0.f, 0.f};
    return shifted_moments(n, get(shift, k), get(s1, k), get(s2, k));
  }
};

// acc[v] = sum_{a,b} w[a][b] * x[a][S*v + b], four channels at a time; x:
// shared pixels, `row` floats between rows and `px` between pixels; wq: this
// quad's weights, tap t at wq[t * CB]. FLIP rotates the kernel (stride-1 dx).
template <class C, bool FLIP>
__device__ __forceinline__ void conv_quad(const float* x, int row, int px, const float* wq, int cb,
                                          float4 (&acc)[C::V]) {
#pragma unroll
  for (int v = 0; v < C::V; ++v) acc[v] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
  for (int a = 0; a < C::K; ++a) {
    float4 w[C::K];
#pragma unroll
    for (int b = 0; b < C::K; ++b) {
      const int tap = FLIP ? (C::K - 1 - a) * C::K + (C::K - 1 - b) : a * C::K + b;
      w[b] = lds4(wq + tap * cb);
    }
#pragma unroll
    for (int j = 0; j < C::WIN; ++j) {
      const float4 xv = lds4(x + a * row + j * px);
#pragma unroll
      for (int v = 0; v < C::V; ++v) {
        const int b = j - C::S * v;
        if (b >= 0 && b < C::K) fma4(acc[v], w[b], xv);
      }
    }
  }
}

// Stride-2 dx of output-grid row i2, columns j2, j2+1, input row 2*i2+PI:
// out[2*v2+pj] = dx[2*i2+PI][2*(j2+v2)+pj] (see dconv_s2_micro in the NCHW
// file for the phase algebra). dz: the pixel (i2 - HL, j2 - HL).
template <class C, int PI>
__device__ __forceinline__ void dconv_s2_quad(const float* dz, int row, int px, const float* wq, int cb,
                                              float4 (&out)[2 * C::V2]) {
  constexpr int K = C::K, P = C::P, HL = C::HL, V2 = C::V2;
  constexpr int ra = (PI + P) % 2, ka = (K - ra + 1) / 2, oi = (PI + P - ra) / 2;
#pragma unroll
  for (int j = 0; j < 2 * V2; ++j) out[j] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
  for (int alpha = 0; alpha < ka; ++alpha) {
    const float* dzr = dz + (oi - alpha + HL) * row;
#pragma unroll
    for (int pj = 0; pj < 2; ++pj) {
      const int rb = (pj + P) % 2, kb = (K - rb + 1) / 2, oj = (pj + P - rb) / 2;
#pragma unroll
      for (int beta = 0; beta < kb; ++beta) {
        const float4 w = lds4(wq + ((ra + 2 * alpha) * K + rb + 2 * beta) * cb);
#pragma unroll
        for (int v2 = 0; v2 < V2; ++v2) fma4(out[2 * v2 + pj], w, lds4(dzr + (v2 + oj - beta + HL) * px));
      }
    }
  }
}

// --------------------------------------------------------------- items

struct Item {
  int n, oh0, ow0;
};

__device__ __forceinline__ int item_count(const NhwcArgs& a, int slot) {
  return (a.N * a.NT - slot + a.slots - 1) / a.slots;
}

__device__ __forceinline__ Item item_at(const NhwcArgs& a, int slot, int k, int count) {
  const int it = slot + (a.reverse ? count - 1 - k : k) * a.slots;
  const int n = it / a.NT, tile = it - n * a.NT;
  const int th = tile / a.NTW, tw = tile - th * a.NTW;
  return {n, th * a.TH, tw * a.TW};
}

// Stages the x box of item (n, oh0, ow0) for channels c0 .. c0+CB-1 as float32.
template <class C>
__device__ __forceinline__ void load_x_box(const NhwcArgs& a, float* xs, const Item& it, int c0) {
  const int t = threadIdx.x, bd = blockDim.x;
  const int h0 = C::S * (it.oh0 + a.reg_r0) - C::P, w0 = C::S * (it.ow0 + a.reg_c0) - C::P;
  const int n = a.xs_rows * a.xs_cols * a.NQ;
  const bool vec = a.vec != 0, bf16 = is_bf16(a.dtype);
  with_width(a.dtype, [&](auto tag) {
    using Raw = decltype(tag);
    const Raw* src = static_cast<const Raw*>(a.x);
#pragma unroll 4
    for (int e = t; e < n; e += bd) {
      const int pix = e / a.NQ, q = e - pix * a.NQ;
      const int r = pix / a.xs_cols, col = pix - r * a.xs_cols;
      const int h = h0 + r, w = w0 + col, c = c0 + 4 * q;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (static_cast<unsigned>(h) < static_cast<unsigned>(a.H) && static_cast<unsigned>(w) < static_cast<unsigned>(a.W) &&
          c < a.C) {
        v = load_quad(src + ((static_cast<int64_t>(it.n) * a.H + h) * a.W + w) * a.C + c, a.C - c, vec, bf16);
      }
      sts4(xs + pix * a.PP + 4 * q, v);
    }
  });
}

// Zeroes the tiles; stages the weights as [tap][channel] (zero past C).
template <class C>
__device__ void block_setup(const NhwcArgs& a, float* smem, int c0, bool backward) {
  const int t = threadIdx.x, bd = blockDim.x;
  zero_shared(smem, a.xs_rows * a.xs_cols * a.PP);
  if (backward) {
    zero_shared(smem + a.dz_off, a.dz_rows * a.dz_cols * a.PP);
    zero_shared(smem + a.dw_off, a.J * C::K * 4);
  }
  float* ws = smem + a.ws_off;
  for (int i = t; i < C::K * C::K * a.CB; i += bd) {
    const int tap = i / a.CB, cc = i - tap * a.CB;
    ws[i] = c0 + cc < a.C ? __ldg(a.weight + static_cast<int64_t>(c0 + cc) * C::K * C::K + tap) : 0.f;
  }
}

// ---------------------------------------------------- forward-like passes

template <int K, int S>
__global__ void __maxnreg__((NhwcCfg<K, S>::kRegs)) nhwc_forward_kernel(const NhwcArgs a, int mode) {
  using C = NhwcCfg<K, S>;
  constexpr int V = C::V;
  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  const int t = threadIdx.x, bd = blockDim.x, lane = t & 31, warp = t >> 5;
  const int cb = blockIdx.x % a.CBG, slot = blockIdx.x / a.CBG;
  const int c0 = cb * a.CB;
  const int q = t % a.NQ, ls = t / a.NQ;
  const int c = c0 + 4 * q, nch = min(4, a.C - c);  // this thread's channels
  const bool active = ls < a.TS && nch > 0;
  const int cv = min(a.CB, a.C - c0);  // channels of this block

  block_setup<C>(a, smem, c0, false);
  float* coef = smem + a.coef_off;  // [scale, shift, mean][channel]
  for (int cc = warp; mode != kStats && cc < cv; cc += bd >> 5) {
    float mean, var;
    if (mode == kApply && a.training) {
      const Moments m = warp_merge_strided(a.part_in + static_cast<int64_t>(c0 + cc) * a.in_slots * 3, a.in_slots, 3);
      mean = m.mean;
      var = m.m2 / m.n;
      if (slot == 0 && lane == 0) {
        a.save_mean[c0 + cc] = mean;
        a.save_var[c0 + cc] = var;
      }
    } else {
      mean = a.mean[c0 + cc];
      var = a.var[c0 + cc];
    }
    const BnCoef bc = bn_coef(a.gamma[c0 + cc], a.beta[c0 + cc], mean, var, a.eps);
    if (lane == 0) {
      coef[cc] = bc.scale;
      coef[a.CB + cc] = bc.shift;
      coef[2 * a.CB + cc] = mean;
    }
  }
  __syncthreads();

  // kStats: moments of z; kGradStats: s1 = sum du, s2 = sum du * (z - mean).
  QuadSums ss;

  const int ncq = (a.TW + V - 1) / V, nmt = a.TH * ncq;
  const int count = item_count(a, slot);
  const bool z_kept = mode == kGradStats && a.z != nullptr;  // B1 reads z: no x, no convolution
  for (int k = 0; k < count; ++k) {
    const Item it = item_at(a, slot, k, count);
    if (!z_kept) load_x_box<C>(a, smem, it, c0);
    __syncthreads();
    if (active) {
      const int rows = min(a.TH, a.Ho - it.oh0), cols = min(a.TW, a.Wo - it.ow0);
      for (int m = ls; m < nmt; m += a.TS) {
        const int r = m / ncq, q0 = V * (m - r * ncq);
        if (r >= rows || q0 >= cols) continue;
        const int nv = min(V, cols - q0);
        float4 z[V];
        const int64_t pix = (static_cast<int64_t>(it.n) * a.Ho + it.oh0 + r) * a.Wo + it.ow0 + q0;
        if (z_kept) {
#pragma unroll
          for (int v = 0; v < V; ++v) {
            z[v] = v < nv ? load_quad(a.z_dtype, a.z, (pix + v) * a.C + c, nch, a.vec != 0) : make_float4(0.f, 0.f, 0.f, 0.f);
          }
        } else {
          conv_quad<C, false>(smem + (C::S * r * a.xs_cols + C::S * q0) * a.PP + 4 * q, a.xs_cols * a.PP, a.PP,
                              smem + a.ws_off + 4 * q, a.CB, z);
        }
        if (mode == kStats) {
#pragma unroll
          for (int v = 0; v < V; ++v) {
            if (v >= nv) continue;
            ss.add(z[v]);
            if (a.store_z) store_quad(a, (pix + v) * a.C + c, nch, z[v]);
          }
          continue;
        }
        const float4 scale = lds4(coef + 4 * q), shift = lds4(coef + a.CB + 4 * q);
        const float4 mean = lds4(coef + 2 * a.CB + 4 * q);
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if (v >= nv) continue;
          const int64_t i = (pix + v) * a.C + c;
          const float4 u = make_float4(fmaf(z[v].x, scale.x, shift.x), fmaf(z[v].y, scale.y, shift.y),
                                       fmaf(z[v].z, scale.z, shift.z), fmaf(z[v].w, scale.w, shift.w));
          if (mode == kApply) {
            store_quad(a, i, nch,
                       make_float4(activate(u.x, a.act), activate(u.y, a.act), activate(u.z, a.act), activate(u.w, a.act)));
          } else {
            const float4 g = load_quad(a.dtype, a.dy, i, nch, a.vec != 0);
            const float4 du = make_float4(activate_grad(u.x, g.x, a.act), activate_grad(u.y, g.y, a.act),
                                          activate_grad(u.z, g.z, a.act), activate_grad(u.w, g.w, a.act));
            ss.s1 = make_float4(ss.s1.x + du.x, ss.s1.y + du.y, ss.s1.z + du.z, ss.s1.w + du.w);
            ss.s2 = make_float4(fmaf(du.x, z[v].x - mean.x, ss.s2.x), fmaf(du.y, z[v].y - mean.y, ss.s2.y),
                                fmaf(du.z, z[v].z - mean.z, ss.s2.z), fmaf(du.w, z[v].w - mean.w, ss.s2.w));
          }
        }
      }
    }
    __syncthreads();
  }
  if (mode == kApply) return;

  // Per-channel reduction: thread t holds channels 4q .. 4q+3 at red[(4t + k) * 3].
  float* red = smem + a.red_off;
#pragma unroll
  for (int kk = 0; kk < 4; ++kk) {
    float* r = red + (4 * t + kk) * 3;
    if (mode == kStats) {
      const Moments m = ss.moments(kk);
      r[0] = m.n;
      r[1] = m.mean;
      r[2] = m.m2;
    } else {
      r[0] = get(ss.s1, kk);
      r[1] = get(ss.s2, kk);
    }
  }
  __syncthreads();
  for (int cc = warp; cc < cv; cc += bd >> 5) {
    const float* base = red + cc * 3;  // thread q = cc / 4, lane kk = cc % 4: (4q + kk) = cc
    const int64_t dst = static_cast<int64_t>(c0 + cc) * a.slots + slot;
    if (mode == kStats) {
      const Moments m = warp_merge_strided(base, a.TS, 12 * a.NQ);
      if (lane == 0) {
        a.part[3 * dst] = m.n;
        a.part[3 * dst + 1] = m.mean;
        a.part[3 * dst + 2] = m.m2;
      }
    } else {
      const float r1 = warp_sum_strided(base, a.TS, 12 * a.NQ);
      const float r2 = warp_sum_strided(base + 1, a.TS, 12 * a.NQ);
      if (lane == 0) {
        a.part[2 * dst] = r1;
        a.part[2 * dst + 1] = r2;
      }
    }
  }
}

// ------------------------------------------------------------ backward B3

template <int K, int S>
__global__ void __maxnreg__((NhwcCfg<K, S>::kRegs)) nhwc_backward_kernel(const NhwcArgs a) {
  using C = NhwcCfg<K, S>;
  constexpr int V = C::V;
  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  float* dzs = smem + a.dz_off;
  float* dwacc = smem + a.dw_off;  // [job][b][4]
  const int t = threadIdx.x, bd = blockDim.x, lane = t & 31, warp = t >> 5;
  const int cb = blockIdx.x % a.CBG, slot = blockIdx.x / a.CBG;
  const int c0 = cb * a.CB;
  const int q = t % a.NQ, ls = t / a.NQ;
  const int c = c0 + 4 * q, nch = min(4, a.C - c);
  const bool active = ls < a.TS && nch > 0;
  const int cv = min(a.CB, a.C - c0);
  const int xrow = a.xs_cols * a.PP, zrow = a.dz_cols * a.PP;

  block_setup<C>(a, smem, c0, true);
  // dz = bn_grad(du, z, scale, k, mdu, mean), as in the NCHW B3.
  float* coef = smem + a.coef_off;  // [scale, k, mdu, scale, shift, mean][channel]
  for (int cc = warp; cc < cv; cc += bd >> 5) {
    const int ch = c0 + cc;
    const float mean = a.mean[ch];
    const BnCoef bc = bn_coef(a.gamma[ch], a.beta[ch], mean, a.var[ch], a.eps);
    float k = 0.f, mdu = 0.f;
    if (a.training) {
      const float inv = rsqrtf(a.var[ch] + a.eps);
      const float* p = a.part_in + static_cast<int64_t>(ch) * a.in_slots * 2;
      const float sdu = warp_sum_strided(p, a.in_slots, 2);
      const float sduz = warp_sum_strided(p + 1, a.in_slots, 2);
      mdu = sdu / a.count;
      k = sduz / a.count * inv * inv;
    }
    if (lane == 0) {
      coef[cc] = bc.scale;
      coef[a.CB + cc] = k;
      coef[2 * a.CB + cc] = mdu;
      coef[3 * a.CB + cc] = bc.scale;
      coef[4 * a.CB + cc] = bc.shift;
      coef[5 * a.CB + cc] = mean;
    }
  }
  __syncthreads();

  const int ncq = (a.reg_cols + V - 1) / V, nmt = a.reg_rows * ncq;
  const int count = item_count(a, slot);
  for (int k = 0; k < count; ++k) {
    const Item it = item_at(a, slot, k, count);
    const int oh0 = it.oh0, ow0 = it.ow0;
    load_x_box<C>(a, smem, it, c0);
    __syncthreads();

    // dz on the region (the tile and its halo); 0 outside the image.
    if (active) {
      for (int m = ls; m < nmt; m += a.TS) {
        const int r = m / ncq, q0 = V * (m - r * ncq);  // in the region
        const int row = oh0 + a.reg_r0 + r, col0 = ow0 + a.reg_c0 + q0;
        const bool row_ok = row >= 0 && row < a.Ho && r < a.reg_rows;
        if (a.whole && !(row_ok && col0 < a.Wo && col0 + V > 0)) continue;  // halo: zero since set-up
        float4 dz[V];
        if (row_ok) {
          if (a.z != nullptr) {
#pragma unroll
            for (int v = 0; v < V; ++v) {
              const int col = col0 + v;
              dz[v] = col >= 0 && col < a.Wo
                          ? load_quad(a.z_dtype, a.z, ((static_cast<int64_t>(it.n) * a.Ho + row) * a.Wo + col) * a.C + c,
                                      nch, a.vec != 0)
                          : make_float4(0.f, 0.f, 0.f, 0.f);
            }
          } else {
            conv_quad<C, false>(smem + (C::S * r * a.xs_cols + C::S * q0) * a.PP + 4 * q, xrow, a.PP,
                                smem + a.ws_off + 4 * q, a.CB, dz);
          }
          const float4 cA = lds4(coef + 4 * q), ck = lds4(coef + a.CB + 4 * q), mdu = lds4(coef + 2 * a.CB + 4 * q);
          const float4 sc = lds4(coef + 3 * a.CB + 4 * q), sh = lds4(coef + 4 * a.CB + 4 * q);
          const float4 mu = lds4(coef + 5 * a.CB + 4 * q);
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const int col = col0 + v;
            float4 d = make_float4(0.f, 0.f, 0.f, 0.f);
            if (col >= 0 && col < a.Wo && q0 + v < a.reg_cols) {
              const float4 g = load_quad(a.dtype, a.dy, ((static_cast<int64_t>(it.n) * a.Ho + row) * a.Wo + col) * a.C + c,
                                         nch, a.vec != 0);
#pragma unroll
              for (int kk = 0; kk < 4; ++kk) {
                const float z = get(dz[v], kk);
                const float du = activate_grad(fmaf(z, get(sc, kk), get(sh, kk)), get(g, kk), a.act);
                set(d, kk, bn_grad(du, z, get(cA, kk), get(ck, kk), get(mdu, kk), get(mu, kk), a.training));
              }
            }
            dz[v] = d;
          }
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) dz[v] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
        float* dzp = dzs + ((a.dz_r_off + r) * a.dz_cols + a.dz_c_off + q0) * a.PP + 4 * q;
#pragma unroll
        for (int v = 0; v < V; ++v) sts4(dzp + v * a.PP, dz[v]);
      }
    }
    __syncthreads();

    // dx over the tile's input positions, straight to global memory.
    if (active) {
      const float* wq = smem + a.ws_off + 4 * q;
      if constexpr (S == 1) {
        const int rows = min(a.TH, a.H - oh0), cols = min(a.TW, a.W - ow0);
        const int ncx = (cols + V - 1) / V;
        for (int m = ls; m < rows * ncx; m += a.TS) {
          const int r = m / ncx, q0 = V * (m - r * ncx);
          float4 dx[V];
          // dz pixel (i - P + a', j - P + b') sits at dz tile (r + a', q0 + b') (the tile starts HL = P before)
          conv_quad<C, true>(dzs + (r * a.dz_cols + q0) * a.PP + 4 * q, zrow, a.PP, wq, a.CB, dx);
          const int64_t out = ((static_cast<int64_t>(it.n) * a.H + oh0 + r) * a.W + ow0 + q0) * a.C + c;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            if (q0 + v < cols) store_quad(a, out + v * a.C, nch, dx[v]);
          }
        }
      } else {
        // output-grid rows i2 of the tile, two columns j2 per micro-tile -> 2 x 4 dx pixels
        const int rows = min(a.TH, a.Ho - oh0), cols = min(a.TW, a.Wo - ow0);
        const int ncx = (cols + C::V2 - 1) / C::V2;
        for (int m = ls; m < rows * ncx; m += a.TS) {
          const int r = m / ncx, q0 = C::V2 * (m - r * ncx);
          const float* dzp = dzs + (r * a.dz_cols + q0) * a.PP + 4 * q;  // pixel (i2 - HL, j2 - HL)
          const int jx = 2 * (ow0 + q0), ncols = min(2 * C::V2, a.W - jx);
#pragma unroll
          for (int pi = 0; pi < 2; ++pi) {
            const int ix = 2 * (oh0 + r) + pi;
            if (ix >= a.H) continue;
            float4 dx[2 * C::V2];
            if (pi == 0) {
              dconv_s2_quad<C, 0>(dzp, zrow, a.PP, wq, a.CB, dx);
            } else {
              dconv_s2_quad<C, 1>(dzp, zrow, a.PP, wq, a.CB, dx);
            }
            const int64_t out = ((static_cast<int64_t>(it.n) * a.H + ix) * a.W + jx) * a.C + c;
#pragma unroll
            for (int j = 0; j < 2 * C::V2; ++j) {
              if (j < ncols) store_quad(a, out + j * a.C, nch, dx[j]);
            }
          }
        }
      }
    }

    // dW: job sg = (row phase kk, kernel row ta, quad qq) sums dz * x over the
    // tile's rows p = oh0 + kk (mod T); quads vary fastest across lanes.
    {
      const int row_end = min(oh0 + a.TH, a.Ho), cols = min(a.TW, a.Wo - ow0);
      for (int sg = t; sg < a.J; sg += bd) {
        const int qq = sg % a.NQ, rest = sg / a.NQ;
        const int kk = rest % a.T, ta = rest / a.T;
        if (c0 + 4 * qq >= a.C) continue;
        float4 dw[K];
#pragma unroll
        for (int b = 0; b < K; ++b) dw[b] = lds4(dwacc + (sg * K + b) * 4);
        for (int p = oh0 + kk; p < row_end; p += a.T) {
          const float* dzr = dzs + ((p - oh0 + C::HL) * a.dz_cols + C::HL) * a.PP + 4 * qq;
          const float* xr = smem + ((C::S * (p - oh0 - a.reg_r0) + ta) * a.xs_cols - C::S * a.reg_c0) * a.PP + 4 * qq;
          for (int j0 = 0; j0 < cols; j0 += V) {
            float4 d[V];
#pragma unroll
            for (int v = 0; v < V; ++v) d[v] = j0 + v < cols ? lds4(dzr + (j0 + v) * a.PP) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int jj = 0; jj < C::WIN; ++jj) {
              const float4 xv = lds4(xr + (C::S * j0 + jj) * a.PP);
#pragma unroll
              for (int v = 0; v < V; ++v) {
                // Columns past the tile are skipped, not added as 0 * x: 0 * inf or 0 * NaN would reach dW.
                const int b = jj - C::S * v;
                if (b >= 0 && b < K && j0 + v < cols) fma4(dw[b], d[v], xv);
              }
            }
          }
        }
#pragma unroll
        for (int b = 0; b < K; ++b) sts4(dwacc + (sg * K + b) * 4, dw[b]);
      }
    }
    __syncthreads();
  }

  // Block partials: dW per (channel, tap) over the jobs' row phases.
  __syncthreads();
  for (int i = t; i < cv * K * K; i += bd) {
    const int cc = i / (K * K), tap = i - cc * K * K;
    const int ta = tap / K, b = tap - ta * K;
    const int qq = cc / 4, kk = cc % 4;
    float s = 0.f;
    for (int ph = 0; ph < a.T; ++ph) s += dwacc[(((ta * a.T + ph) * a.NQ + qq) * K + b) * 4 + kk];
    a.part_dw[(static_cast<int64_t>(c0 + cc) * a.slots + slot) * K * K + tap] = s;
  }
}

// ------------------------------------------------------------------- host

struct NhwcPlan {
  NhwcArgs a;
  int threads;
  size_t smem;
  int blocks;
  bool ok;
};

template <int K, int S>
NhwcPlan make_plan(const OpShape& s, bool backward, int num_sms, const void* kernel, bool vec) {
  using C = NhwcCfg<K, S>;
  constexpr int V = C::V, HL = C::HL, HH = C::HH;
  NhwcPlan plan{};
  NhwcArgs& a = plan.a;
  a.N = static_cast<int>(s.N);
  a.C = static_cast<int>(s.C);
  a.H = static_cast<int>(s.H);
  a.W = static_cast<int>(s.W);
  a.Ho = (a.H - 1) / S + 1;
  a.Wo = (a.W - 1) / S + 1;
  a.dtype = a.out_dtype = static_cast<int>(s.dtype);
  a.act = static_cast<int>(s.activation);
  a.training = s.training ? 1 : 0;
  a.eps = s.eps;
  a.count = static_cast<float>(s.N * a.Ho * a.Wo);
  a.vec = vec ? 1 : 0;

  // Fills the geometry for CB channels and a TH x TW tile; returns the shared floats.
  auto layout = [&](int CB, int TH, int TW) -> int64_t {
    a.CB = CB;
    a.NQ = CB / 4;
    a.PP = CB < 32 ? CB + 4 : CB;  // pixels of narrow blocks start in different banks
    a.TH = TH;
    a.TW = TW;
    a.whole = (TH >= a.Ho && TW >= a.Wo) ? 1 : 0;
    if (backward) {
      a.reg_r0 = -HL;
      a.reg_c0 = -HL;
      a.reg_rows = HL + TH + HH;
      a.reg_cols = HL + TW + HH;
    } else {
      a.reg_r0 = a.reg_c0 = 0;
      a.reg_rows = TH;
      a.reg_cols = TW;
    }
    // Columns (output units) the box must cover: the micro-tiles' V * ncq, and
    // for dW the tile's columns rounded up to V after the halo.
    const int ncq = static_cast<int>(ceil_div(a.reg_cols, V));
    const int span = std::max(V * ncq, -a.reg_c0 + static_cast<int>(round_up(TW, V)));
    a.xs_rows = S * (a.reg_rows - 1) + K;
    a.xs_cols = S * (span - 1) + K;
    int64_t floats = static_cast<int64_t>(a.xs_rows) * a.xs_cols * a.PP + K * K * CB + 6 * CB;
    if (backward) {
      a.dz_r_off = a.dz_c_off = 0;
      a.dz_rows = a.reg_rows;
      a.dz_cols = span;
      if (S == 1) {
        a.dz_cols = std::max(a.dz_cols, static_cast<int>(round_up(TW, V)) + 2 * C::P);
      } else {
        a.dz_cols = std::max(a.dz_cols, static_cast<int>(round_up(TW, C::V2)) + HL + HH);
      }
      floats += static_cast<int64_t>(a.dz_rows) * a.dz_cols * a.PP;
    }
    return floats;
  };

  // Threads (ts spatial threads per quad wanted) and shared-memory offsets of
  // the geometry `layout` filled, with T dW row phases (backward); returns
  // the shared floats.
  auto arrange = [&](int ts, int T) -> int64_t {
    plan.threads = static_cast<int>(round_up(static_cast<int64_t>(std::max(ts, 1)) * a.NQ, 32));
    a.TS = plan.threads / a.NQ;
    int64_t off = static_cast<int64_t>(a.xs_rows) * a.xs_cols * a.PP;
    a.dz_off = static_cast<int>(off);
    if (backward) off += static_cast<int64_t>(a.dz_rows) * a.dz_cols * a.PP;
    const int64_t tiles = off;
    a.ws_off = static_cast<int>(off);
    off += K * K * a.CB;
    a.coef_off = static_cast<int>(off);
    off += round_up(6 * a.CB, 4);
    const int64_t red = 12 * static_cast<int64_t>(plan.threads);
    if (backward) {
      a.T = T;
      a.J = a.NQ * K * T;
      a.dw_off = static_cast<int>(off);
      off += static_cast<int64_t>(a.J) * K * 4;
    } else if (red <= tiles) {
      a.red_off = 0;
    } else {
      a.red_off = static_cast<int>(off);
      off += round_up(red, 4);
    }
    return off;
  };

  const int64_t budget = static_cast<int64_t>(kSmemBudget / 4);
  const int C4 = static_cast<int>(round_up(s.C, 4));
  if (!backward) {
    int CB = std::min(32, C4);
    int TW = a.Wo, TH = a.Ho;
    int64_t need = layout(CB, TH, TW);
    // Shrink the tile (rows, then columns in multiples of V), then the channel block.
    while (need > budget / 2 && (TH > 4 || TW > 4 * V || CB > 8)) {
      if (TH > 4) {
        TH = (TH + 1) / 2;
      } else if (TW > 4 * V) {
        TW = static_cast<int>(round_up((TW + 1) / 2, V));
      } else {
        CB = static_cast<int>(round_up(CB / 2, 4));
      }
      need = layout(CB, TH, TW);
    }
    while (need > budget && TH > 1) need = layout(CB, TH = (TH + 1) / 2, TW);
    if (need > budget) return plan;  // ok = false
    // Spatial threads: enough for the tile's micro-tiles (at most 256 threads).
    const int nmt = a.TH * static_cast<int>(ceil_div(a.TW, V));
    if (arrange(std::min(kMaxThreads / a.NQ, static_cast<int>(round_up(nmt, 32 / std::min(a.NQ, 32)))), 0) > budget) {
      return plan;
    }
  } else {
    // B3 computes dz on the tile's halo region too, so small tiles recompute
    // most of their z: of the tiles (and 16 or 32 channels, 128 to 256
    // threads sized from the region) that fit the whole budget, take the one
    // with the least work per output, counted as z over the region (the tile
    // alone when it is the plane: the halo is zero) plus dx and dW over the
    // tile; ties: more channels, then more dW row phases.
    struct Pick {
      int CB = 0, TH = 0, TW = 0, ts = 0, T = 0;
      double cost = 0.;
    } best;
    for (const int CB : {std::min(32, C4), std::min(kMinBackwardChannels, C4)}) {
      for (int TH = a.Ho;; TH = (TH + 1) / 2) {
        for (int TW = a.Wo;; TW = static_cast<int>(round_up((TW + 1) / 2, V))) {
          layout(CB, TH, TW);
          const int nq = CB / 4;
          const int region = a.reg_rows * static_cast<int>(ceil_div(a.reg_cols, V));
          const int ts = std::min(kMaxThreads / nq, std::max(region, static_cast<int>(ceil_div(kMinBackwardThreads, nq))));
          const int threads = static_cast<int>(round_up(static_cast<int64_t>(ts) * nq, 32));
          for (int T = std::min(std::max(1, threads / (nq * K)), TH); T >= 1; --T) {
            if (arrange(ts, T) > budget) continue;
            const double z_work = a.whole ? static_cast<double>(TH) * TW : static_cast<double>(a.reg_rows) * a.reg_cols;
            const double cost = (z_work + 2. * TH * TW) / (static_cast<double>(TH) * TW);
            if (best.CB == 0 || cost < best.cost) best = {CB, TH, TW, ts, T, cost};
            break;  // the most row phases that fit
          }
          if (TW <= V) break;
        }
        if (TH == 1) break;
      }
    }
    if (best.CB == 0) return plan;  // ok = false
    layout(best.CB, best.TH, best.TW);
    arrange(best.ts, best.T);
  }
  a.NTW = static_cast<int>(ceil_div(a.Wo, a.TW));
  a.NT = static_cast<int>(ceil_div(a.Ho, a.TH)) * a.NTW;
  a.CBG = static_cast<int>(ceil_div(a.C, a.CB));
  plan.smem = static_cast<size_t>(arrange(a.TS, a.T)) * sizeof(float);
  if (plan.smem > kSmemBudget) return plan;

  const int per_sm = resident_blocks(kernel, plan.threads, plan.smem);
  const int64_t items = static_cast<int64_t>(a.N) * a.NT;
  a.slots = wave_slots(a.CBG, items, per_sm, num_sms);
  plan.blocks = a.CBG * a.slots;
  plan.ok = true;
  return plan;
}

// Channel quads move as 4-element vectors when C is a multiple of 4 and every
// pointer allows it: those of x's dtype, and a kept z (nullptr: none) of its own.
bool quads_aligned(const OpShape& s, std::initializer_list<const void*> ptrs, const void* z) {
  const size_t bytes = 4 * dtype_bytes(s.dtype);
  if (s.C % 4 != 0) return false;
  for (const void* p : ptrs) {
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(z) % (4 * dtype_bytes(s.z_dtype)) == 0;
}

template <int K, int S>
cudaError_t forward_impl(const OpShape& s, const ForwardArgs& fa, float* workspace, int num_sms, bool stream_stores,
                         cudaStream_t stream, size_t* ws_floats) {
  const void* kernel = reinterpret_cast<const void*>(&nhwc_forward_kernel<K, S>);
  NhwcPlan plan = make_plan<K, S>(s, false, num_sms, kernel, quads_aligned(s, {fa.x, fa.y}, s.keeps_z ? fa.z : nullptr));
  if (!plan.ok) return cudaErrorInvalidValue;
  NhwcArgs& a = plan.a;
  // Workspace: moments partials, then (stored z) the BN coefficients and z.
  const bool store_z = stores_z(s);
  const size_t part_floats = s.training ? static_cast<size_t>(round_up(static_cast<int64_t>(a.C) * a.slots * 3, 4)) : 0;
  const size_t coef_floats = static_cast<size_t>(round_up(2 * static_cast<int64_t>(a.C), 4));
  if (ws_floats != nullptr) {
    *ws_floats = part_floats + (store_z ? coef_floats + stored_z_floats(s) : 0);
    return cudaSuccess;
  }
  void* z = store_z ? stored_z_at(s, fa, workspace + part_floats + coef_floats) : nullptr;
  a.stream_stores = stream_stores ? 1 : 0;
  a.x = fa.x;
  a.out = fa.y;
  a.weight = fa.weight;
  a.gamma = fa.gamma;
  a.beta = fa.beta;
  a.mean = fa.mean;
  a.var = fa.var;
  a.save_mean = fa.save_mean;
  a.save_var = fa.save_var;
  // Explicitly, per launch: the occupancy query's opt-in is cached and would not repeat.
  cudaError_t err = allow_smem(kernel, plan.smem);
  if (err != cudaSuccess) return err;
  if (s.training) {
    a.part = workspace;
    a.reverse = 0;
    a.store_z = store_z ? 1 : 0;
    if (store_z) {
      a.out = z;
      a.out_dtype = static_cast<int>(stored_z_dtype(s));
    }
    nhwc_forward_kernel<K, S><<<plan.blocks, plan.threads, plan.smem, stream>>>(a, kStats);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (store_z) {
      return launch_apply_stored_z(s, fa, z, workspace, a.slots, workspace + part_floats, num_sms, stream_stores,
                                   stream);
    }
    a.part_in = workspace;
    a.in_slots = a.slots;
  }
  a.reverse = 1;
  nhwc_forward_kernel<K, S><<<plan.blocks, plan.threads, plan.smem, stream>>>(a, kApply);
  return cudaGetLastError();
}

template <int K, int S>
cudaError_t backward_impl(const OpShape& s, const BackwardArgs& ba, float* workspace, int num_sms, bool stream_stores,
                          cudaStream_t stream, size_t* ws_floats, int out_k) {
  const void* fwd_kernel = reinterpret_cast<const void*>(&nhwc_forward_kernel<K, S>);
  const void* bwd_kernel = reinterpret_cast<const void*>(&nhwc_backward_kernel<K, S>);
  const void* z = s.keeps_z ? ba.z : nullptr;
  const bool vec = quads_aligned(s, {ba.x, ba.dy, ba.dx}, z);
  NhwcPlan p1 = make_plan<K, S>(s, false, num_sms, fwd_kernel, vec);
  NhwcPlan p3 = make_plan<K, S>(s, true, num_sms, bwd_kernel, vec);
  if (!p1.ok || !p3.ok) return cudaErrorInvalidValue;
  const int grad_slots = p1.a.slots;
  const size_t grad_floats = static_cast<size_t>(s.C) * grad_slots * 2;
  const size_t dw_floats = static_cast<size_t>(s.C) * p3.a.slots * K * K;
  if (ws_floats != nullptr) {
    *ws_floats = grad_floats + dw_floats;
    return cudaSuccess;
  }
  float* grad_part = workspace;
  float* dw_part = workspace + grad_floats;
  for (NhwcArgs* a : {&p1.a, &p3.a}) {
    a->stream_stores = stream_stores ? 1 : 0;
    a->x = ba.x;
    a->z = z;
    a->z_dtype = static_cast<int>(s.z_dtype);
    a->dy = ba.dy;
    a->out = ba.dx;
    a->weight = ba.weight;
    a->gamma = ba.gamma;
    a->beta = ba.beta;
    a->mean = ba.save_mean;
    a->var = ba.save_var;
  }
  cudaError_t err;
  if ((err = allow_smem(fwd_kernel, p1.smem)) != cudaSuccess || (err = allow_smem(bwd_kernel, p3.smem)) != cudaSuccess) {
    return err;
  }
  p1.a.part = grad_part;
  p1.a.reverse = 0;
  nhwc_forward_kernel<K, S><<<p1.blocks, p1.threads, p1.smem, stream>>>(p1.a, kGradStats);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  NhwcArgs& a = p3.a;
  a.part_in = grad_part;
  a.in_slots = grad_slots;
  a.part_dw = dw_part;
  a.reverse = 1;
  nhwc_backward_kernel<K, S><<<p3.blocks, p3.threads, p3.smem, stream>>>(a);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  return launch_backward_finish(grad_part, grad_slots, dw_part, a.slots, ba.save_var, s.eps, s.C, K, out_k,
                                ba.dweight, ba.dgamma, ba.dbeta, stream);
}

template <int K, int S>
struct ForwardOp {
  template <class... Args>
  static cudaError_t run(Args&&... args) { return forward_impl<K, S>(std::forward<Args>(args)...); }
};

template <int K, int S>
struct BackwardOp {
  template <class... Args>
  static cudaError_t run(Args&&... args) { return backward_impl<K, S>(std::forward<Args>(args)...); }
};

}  // namespace

cudaError_t nhwc_forward(const OpShape& s, const ForwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                         cudaStream_t stream, size_t* ws_floats) {
  return dispatch_kernel_size<ForwardOp>(s.K, s.stride, s, a, workspace, num_sms, stream_stores, stream, ws_floats);
}

cudaError_t nhwc_backward(const OpShape& s, const BackwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                          cudaStream_t stream, size_t* ws_floats, int out_k) {
  return dispatch_kernel_size<BackwardOp>(s.K, s.stride, s, a, workspace, num_sms, stream_stores, stream, ws_floats,
                                          out_k);
}

}  // namespace detail
}  // namespace cuda_kernels
}  // namespace mixpath
