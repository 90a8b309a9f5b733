// NCHW kernels of the fused op: depthwise conv with the merged K x K kernel W,
// BatchNorm (batch or given statistics), activation; forward and backward.
//
// Grid and blocks. A block (up to 192 threads) owns G consecutive channels (a
// "channel group") and one of `slots` partial-sum slots: grid = groups x slots,
// slots chosen so the grid runs in whole waves of resident blocks (wave_slots). It walks the
// items (n, tile) number slot, slot + slots, ... A tile is a TH x TW patch of
// output positions. When a whole plane fits in shared memory (every layer of
// the target networks) the tile is the plane, and an item's x, dy, y and dx
// are G contiguous planes: one coalesced block-wide copy each. Per item:
//   - x goes to shared memory as float32 with its zero halo (whole planes:
//     element e of the contiguous run lands at offset table[e]). Whole-plane
//     runs of x and dy travel by cp.async into a raw staging buffer, the next
//     item's while this one computes, so a block keeps a full item in flight
//     without spending registers on it; unaligned runs and tiles load directly;
//   - dy goes to a compact float32 buffer, and y or dx are written to one and
//     copied out after a barrier, so the compute loops never see the dtype;
//   - TPP threads per channel compute R x V output micro-tiles with a
//     register-blocked sliding window over float4 shared loads, the weights
//     in registers for K <= 5 and read row by row from shared memory for K >= 7.
// A thread keeps its channel for the whole kernel, so its statistics stay in
// registers and are reduced once, at the end.
//
// Passes (x is re-read rather than z stored, except for the stored-z forward
// below; one read or write of an activation-sized tensor each, in brackets):
//   forward, training   F1 (kStats) [x]: z -> per-thread shifted sums -> Chan
//                          merge per block -> moments partial [c][slot];
//                       F3 (kApply) [x, y]: its prologue merges each channel's
//                          partials in a fixed order (-> save_mean, save_var),
//                          then y = act(z * scale + shift). Items run in
//                          reverse, so the tail of x F1 left in L2 comes first.
//   forward, stored z   (stores_z: K >= kStoreZMinK by default) F1 also writes
//                          z [x, z], then fused_dwconv_bn.cu merges the partials
//                          and applies BN elementwise [z, y]: one convolution
//                          instead of two, the same bits.
//   forward, eval       F3 alone with the given statistics (BN folded into a
//                          per-channel scale and shift after the conv).
//   kept z              (keeps_z) F1 writes z to the caller's tensor, which the
//                          backward reads: B1 [z, dy] without x or a conv, B3
//                          reads z [z, x, dy, dx] instead of recomputing it.
//   backward            B1 (kGradStats) [x, dy]: z, u, du = dy * act'(u) ->
//                          partial sums of du and du * (z - mean) per [c][slot];
//                       B3 [x, dy, dx]: prologue reduces those (dbeta, dgamma);
//                          per item, dz on the item's output region into shared
//                          memory (zero outside the image), dx = transposed conv
//                          of dz (stride 2: each of the four output phases is a
//                          plain correlation with a sub-kernel), dW from dz and
//                          x by jobs (channel, kernel row, row phase), each
//                          owned by one thread, whose K sums persist in shared
//                          memory across items; per-block dW partials. In eval
//                          dz = gamma * inv * du (no batch-statistic terms).
//   finish              (fused_dwconv_bn.cu) fixed-order sums: dW, dgamma, dbeta.
// y, dx and z get streaming (evict-first) stores only when they are larger
// than L2; otherwise the next kernel reads them back from L2.
// Every cross-block reduction goes through per-slot partials summed in a
// fixed order, so the results are bit-identical from run to run. K = 1 runs
// through the 3 x 3 kernels with a zero-padded W (fused_dwconv_bn.cu).
//
// Tiled mode (planes too large for shared memory) reads and writes boxes by
// coordinates; B3 then recomputes dz on a halo around the tile (HL rows above,
// HH below, 4 columns left, HH right: what the tile's dx reads), and only the
// tile's own positions count towards dW.
#include <algorithm>
#include <numeric>
#include <utility>

#include "fused_dwconv_bn_async.cuh"
#include "fused_dwconv_bn_device.cuh"
#include "fused_dwconv_bn_internal.h"

namespace mixpath {
namespace cuda_kernels {
namespace detail {
namespace {

template <int K_, int S_>
struct PlanarCfg {
  static constexpr int K = K_, S = S_, P = K / 2;
  static constexpr bool kRegWeights = K <= 5;
  static constexpr int V = kRegWeights ? 4 : 8;             // output columns per micro-tile
  static constexpr int R = (S == 1 && kRegWeights) ? 4 : 2;  // output rows per micro-tile
  static constexpr int WIN = S * (V - 1) + K;                // input columns one output row reads
  static constexpr int NCH = (WIN + 3) / 4;                  // float4 chunks of that window
  static constexpr int ROWS = S * (R - 1) + K;               // input rows a micro-tile reads
  static constexpr int KP = (K + 3) / 4 * 4;                 // shared-memory pitch of a kernel row
  // dz rows (and columns) an output tile's dx needs below and above it
  static constexpr int HL = S == 1 ? P : P / 2;
  static constexpr int HH = S == 1 ? P : (P + 1) / 2;
};

// Blocks of at most 192 threads and 112 registers a thread: three blocks (18
// warps) share an SM, and ptxas has room to spare (memory parallelism comes
// from cp.async, not from more warps).
constexpr int kPlanarThreads = 192;
constexpr int kPlanarRegs = 112;

enum Mode : int { kStats = 0, kApply = 1, kGradStats = 2 };

struct PlanarArgs {
  int N, C, H, W, Ho, Wo;
  int dtype, act, training;
  float eps, count;     // count = N * Ho * Wo
  int TH, TW, NTW, NT;  // output tile, tiles along W, tiles per plane
  int whole;            // tile == plane: items are contiguous runs
  int G, CG, TPP, slots, reverse;
  // compute region (output positions): origin relative to the tile, size, micro-tiles
  int reg_r0, reg_c0, reg_rows, reg_cols, nrb, ncq;
  int xs_pitch, xs_plane, box_rows, box_cols;  // x tile and the input box it holds
  int ws_plane;                                // per-channel weights in shared memory (K >= 7)
  int io_rows, io_cols;                        // output staging: y tile, or B3's dx tile
  int dz_pitch, dz_plane, dz_r_off, dz_c_off;  // B3: dz tile, and the region's place in it
  int nrb_dx, ncq_dx, T, J;                    // B3: dx micro-tiles, dW jobs
  int dz_off, dy_off, out_off, ws_off, coef_off, table_off, dw_off, red_off;  // float offsets
  int stage_off, dy_stage_off;  // whole planes: raw staging of x and dy runs
  int in_slots;  // partials the prologue reduces
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

// ------------------------------------------------------------- weights

template <int K, bool kReg>
struct Weights;

template <int K>
struct Weights<K, true> {
  float w[K * K];
  __device__ __forceinline__ void init(const float* gw, const float*) {
#pragma unroll
    for (int i = 0; i < K * K; ++i) w[i] = __ldg(gw + i);
  }
  __device__ __forceinline__ void row(int a, float (&r)[K]) const {
#pragma unroll
    for (int b = 0; b < K; ++b) r[b] = w[a * K + b];
  }
};

template <int K>
struct Weights<K, false> {
  static constexpr int KP = (K + 3) / 4 * 4;
  const float* p;  // this channel's kernel in shared memory, rows KP apart
  __device__ __forceinline__ void init(const float*, const float* sp) { p = sp; }
  __device__ __forceinline__ void row(int a, float (&r)[K]) const { load_window<K, 0>(p + a * KP, r); }
};

// ------------------------------------------------------------ micro-tiles

// acc[i][v] = sum_{a,b} w[a][b] * src[(S*i + a) * pitch + S*v + b + SH]; with
// FLIP the kernel is rotated by 180 degrees (the transposed conv at stride 1).
// src is 16-byte aligned. Each output sums over a then b in every pass, so the
// z that the backward recomputes is bit-identical to the forward's. With the
// weights in shared memory the row loop stays a loop (a K-fold smaller kernel).
template <class C, int SH, bool FLIP, class Wt>
__device__ __forceinline__ void conv_micro(const float* src, int pitch, const Wt& wt, float (&acc)[C::R][C::V]) {
#pragma unroll
  for (int i = 0; i < C::R; ++i) {
#pragma unroll
    for (int v = 0; v < C::V; ++v) acc[i][v] = 0.f;
  }
#pragma unroll(C::kRegWeights ? C::ROWS : 1)
  for (int r = 0; r < C::ROWS; ++r) {
    float win[C::WIN];
    load_window<C::WIN, SH>(src + r * pitch, win);
#pragma unroll
    for (int i = 0; i < C::R; ++i) {
      const int a = r - C::S * i;
      if (a >= 0 && a < C::K) {
        float wr[C::K];
        wt.row(FLIP ? C::K - 1 - a : a, wr);
#pragma unroll
        for (int b = 0; b < C::K; ++b) {
          const float wv = FLIP ? wr[C::K - 1 - b] : wr[b];
#pragma unroll
          for (int v = 0; v < C::V; ++v) acc[i][v] = fmaf(wv, win[C::S * v + b], acc[i][v]);
        }
      }
    }
  }
}

// Stride-2 transposed conv for one row i2 of output positions and V columns
// j2 .. j2+V-1: out[pi][2v+pj] = dx[2*i2+pi][2*(j2+v)+pj]. Input row 2*i2+pi
// takes the kernel rows a = ra + 2*alpha, ra = (pi+P) % 2, alpha < KA, each
// from dz row i2 + oi - alpha, oi = (pi+P-ra)/2 (columns likewise): a plain
// correlation per phase. src: the aligned dz row of i2 - HL; the window starts
// SH = 4 - HL floats in, at dz column j2 - HL.
template <class C, class Wt>
__device__ __forceinline__ void dconv_s2_micro(const float* src, int pitch, const Wt& wt,
                                               float (&out)[2][2 * C::V]) {
  constexpr int K = C::K, P = C::P, HL = C::HL, HH = C::HH, V = C::V;
  constexpr int NR = HL + HH + 1;  // dz rows
  constexpr int NW = V + HL + HH;  // dz columns
  constexpr int SH = 4 - HL;
#pragma unroll
  for (int pi = 0; pi < 2; ++pi) {
#pragma unroll
    for (int j = 0; j < 2 * V; ++j) out[pi][j] = 0.f;
  }
#pragma unroll(C::kRegWeights ? NR : 1)
  for (int rr = 0; rr < NR; ++rr) {
    float win[NW];
    load_window<NW, SH>(src + rr * pitch, win);
#pragma unroll
    for (int pi = 0; pi < 2; ++pi) {
      const int ra = (pi + P) % 2, ka = (K - ra + 1) / 2, oi = (pi + P - ra) / 2;
      const int alpha = oi + HL - rr;  // dz row i2 + oi - alpha is window row rr
      if (alpha >= 0 && alpha < ka) {
        float wr[K];
        wt.row(ra + 2 * alpha, wr);
#pragma unroll
        for (int pj = 0; pj < 2; ++pj) {
          const int rb = (pj + P) % 2, kb = (K - rb + 1) / 2, oj = (pj + P - rb) / 2;
#pragma unroll
          for (int beta = 0; beta < kb; ++beta) {
            const float wv = wr[rb + 2 * beta];
#pragma unroll
            for (int v = 0; v < V; ++v) out[pi][2 * v + pj] = fmaf(wv, win[v + oj - beta + HL], out[pi][2 * v + pj]);
          }
        }
      }
    }
  }
}

// Walks micro-tiles m = l, l + step, ... of a grid `ncq` wide without divisions.
struct TileWalk {
  int rb, cq, drb, dcq, ncq;
  __device__ __forceinline__ TileWalk(int l, int step, int ncq_) : ncq(ncq_) {
    rb = l / ncq;
    cq = l - rb * ncq;
    drb = step / ncq;
    dcq = step - drb * ncq;
  }
  __device__ __forceinline__ void next() {
    cq += dcq;
    rb += drb;
    if (cq >= ncq) {
      cq -= ncq;
      ++rb;
    }
  }
};

// --------------------------------------------------- block-wide copies

// dst[map(e)] = src[e] for e < n, map = table or identity: a contiguous run
// of x or dy (dtype -> float32) that cp.async cannot take (not 16-byte
// aligned). Eight loads per thread in flight.
__device__ __forceinline__ void load_run(int dtype, const void* src, int64_t offset, int n, float* dst,
                                         const uint16_t* table) {
  const int t = threadIdx.x, bd = blockDim.x;
  const bool bf16 = is_bf16(dtype);
  with_width(dtype, [&](auto tag) {
    using Raw = decltype(tag);
    const Raw* s = static_cast<const Raw*>(src) + offset;
    for (int e0 = 0; e0 < n; e0 += 8 * bd) {
      Raw v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int e = e0 + t + k * bd;
        v[k] = e < n ? __ldg(s + e) : Raw(0);
      }
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const int e = e0 + t + k * bd;
        if (e < n) dst[table != nullptr ? table[e] : e] = decode(v[k], bf16);
      }
    }
  });
}

// Starts the asynchronous copy of `bytes` bytes from src to dst, block-wide
// (both 16-byte aligned; the last chunk reads only what is left).
__device__ __forceinline__ void stage_run(const void* src, int bytes, void* dst) {
  for (int i = threadIdx.x; 16 * i < bytes; i += blockDim.x) {
    cp_async16(static_cast<char*>(dst) + 16 * i, static_cast<const char*>(src) + 16 * i, min(16, bytes - 16 * i));
  }
}

// dst[map(e)] = stage[e] (dtype -> float32) for e < n, map = table or
// identity: a staged run. With the table (x), one element per thread and
// step, so a warp's scattered stores hit 32 banks (four per thread would all
// share a bank residue mod 4); without it (dy), four at a time.
__device__ __forceinline__ void unpack_run(int dtype, const float* stage, int n, float* dst, const uint16_t* table) {
  const int t = threadIdx.x, bd = blockDim.x;
  const bool bf16 = is_bf16(dtype);
  with_width(dtype, [&](auto tag) {
    using Raw = decltype(tag);
    using Bits = typename Quad<Raw>::Bits;
    const Raw* s = reinterpret_cast<const Raw*>(stage);
    if (table != nullptr) {
#pragma unroll 4
      for (int e = t; e < n; e += bd) dst[table[e]] = decode(s[e], bf16);
      return;
    }
    const Bits* s4 = reinterpret_cast<const Bits*>(stage);
    const int n4 = n / 4;
#pragma unroll 2
    for (int i = t; i < n4; i += bd) sts4(dst + 4 * i, decode4(s4[i], bf16));
    for (int e = 4 * n4 + t; e < n; e += bd) dst[e] = decode(s[e], bf16);
  });
}

// dst[e] = src[e] for e < n (float32 -> dtype): a contiguous run of y, dx or
// z, four elements per access where aligned as in load_run.
__device__ __forceinline__ void store_run(int dtype, void* dst, int64_t offset, int n, const float* src,
                                          bool streaming) {
  const int t = threadIdx.x, bd = blockDim.x;
  const bool bf16 = is_bf16(dtype);
  with_width(dtype, [&](auto tag) {
    using Raw = decltype(tag);
    using Bits = typename Quad<Raw>::Bits;
    Raw* d = static_cast<Raw*>(dst) + offset;
    int done = 0;
    if (reinterpret_cast<uintptr_t>(d) % sizeof(Bits) == 0) {
      const int n4 = n / 4;
      Bits* d4 = reinterpret_cast<Bits*>(d);
#pragma unroll 4
      for (int i = t; i < n4; i += bd) store_out(d4 + i, encode4<Bits>(lds4(src + 4 * i), bf16), streaming);
      done = 4 * n4;
    }
#pragma unroll 4
    for (int e = done + t; e < n; e += bd) store_out(d + e, encode<Raw>(src[e], bf16), streaming);
  });
}

// A rows x cols box at (h0, w0) of planes p0 .. p0+np-1 of an Himg x Wimg
// tensor to or from shared memory (pitch and plane stride given); outside the
// image reads 0 and writes nothing.
struct Box {
  int64_t p0;
  int np, Himg, Wimg, h0, w0, rows, cols, pitch, plane;
};

__device__ __forceinline__ void load_box(int dtype, const void* src, const Box& b, float* dst) {
  const int t = threadIdx.x, bd = blockDim.x;
  const int box = b.rows * b.cols, n = b.np * box;
  const bool bf16 = is_bf16(dtype);
  with_width(dtype, [&](auto tag) {
    using Raw = decltype(tag);
    const Raw* s = static_cast<const Raw*>(src);
#pragma unroll 4
    for (int e = t; e < n; e += bd) {
      const int g = e / box, rem = e - g * box;
      const int r = rem / b.cols, c = rem - r * b.cols;
      const int h = b.h0 + r, w = b.w0 + c;
      float v = 0.f;
      if (static_cast<unsigned>(h) < static_cast<unsigned>(b.Himg) && static_cast<unsigned>(w) < static_cast<unsigned>(b.Wimg)) {
        v = decode(__ldg(s + ((b.p0 + g) * b.Himg + h) * b.Wimg + w), bf16);
      }
      dst[g * b.plane + r * b.pitch + c] = v;
    }
  });
}

__device__ __forceinline__ void store_box(int dtype, void* dst, const Box& b, const float* src, bool streaming) {
  const int t = threadIdx.x, bd = blockDim.x;
  const int box = b.rows * b.cols, n = b.np * box;
  const bool bf16 = is_bf16(dtype);
  with_width(dtype, [&](auto tag) {
    using Raw = decltype(tag);
    Raw* d = static_cast<Raw*>(dst);
#pragma unroll 4
    for (int e = t; e < n; e += bd) {
      const int g = e / box, rem = e - g * box;
      const int r = rem / b.cols, c = rem - r * b.cols;
      const int h = b.h0 + r, w = b.w0 + c;
      if (h < b.Himg && w < b.Wimg) {
        store_out(d + ((b.p0 + g) * b.Himg + h) * b.Wimg + w, encode<Raw>(src[g * b.plane + r * b.pitch + c], bf16),
                  streaming);
      }
    }
  });
}

// ------------------------------------------------------- block set-up

// Zeroes the tiles, stages the weights (K >= 7) and, for whole planes, the
// offset table of x: element e of an item's run of G planes lands at table[e].
template <class C>
__device__ void block_setup(const PlanarArgs& a, float* smem, int c0, int Gv, bool with_dz) {
  const int t = threadIdx.x, bd = blockDim.x;
  zero_shared(smem, a.G * a.xs_plane);
  if (with_dz) {
    zero_shared(smem + a.dz_off, a.G * a.dz_plane);
    zero_shared(smem + a.dw_off, a.J * C::K);
  }
  if constexpr (!C::kRegWeights) {
    float* ws = smem + a.ws_off;
    for (int i = t; i < a.G * a.ws_plane; i += bd) {
      const int gg = i / a.ws_plane, rem = i - gg * a.ws_plane;
      const int ta = rem / C::KP, b = rem - ta * C::KP;
      ws[i] = (gg < Gv && ta < C::K && b < C::K)
                  ? __ldg(a.weight + (static_cast<int64_t>(c0 + gg) * C::K + ta) * C::K + b)
                  : 0.f;
    }
  }
  if (a.whole) {
    uint16_t* table = reinterpret_cast<uint16_t*>(smem + a.table_off);
    const int hw = a.H * a.W;
    for (int e = t; e < a.G * hw; e += bd) {
      const int gg = e / hw, rem = e - gg * hw;
      const int h = rem / a.W, w = rem - h * a.W;
      table[e] = static_cast<uint16_t>(gg * a.xs_plane + (h + C::P) * a.xs_pitch + (w + C::P));
    }
  }
}

// Whole planes: starts the asynchronous copy of item n's runs of x (and dy)
// into the staging buffers. Returns false, starting nothing, when a run is
// not 16-byte aligned (fill_item then loads it directly).
__device__ __forceinline__ bool stage_item(const PlanarArgs& a, float* smem, int n, int c0, int Gv, bool with_x,
                                           bool with_dy) {
  const int es = a.dtype == static_cast<int>(DType::kFloat32) ? 4 : 2;
  const int64_t p0 = static_cast<int64_t>(n) * a.C + c0;
  const char* xr = with_x ? static_cast<const char*>(a.x) + p0 * a.H * a.W * es : nullptr;
  const char* dyr = with_dy ? static_cast<const char*>(a.dy) + p0 * a.Ho * a.Wo * es : nullptr;
  if (reinterpret_cast<uintptr_t>(xr) % 16 != 0 || reinterpret_cast<uintptr_t>(dyr) % 16 != 0) return false;
  if (with_x) stage_run(xr, Gv * a.H * a.W * es, smem + a.stage_off);
  if (with_dy) stage_run(dyr, Gv * a.Ho * a.Wo * es, smem + a.dy_stage_off);
  return true;
}

// Fills the x tile (when `with_x`; B1 over a kept z needs none) and dy over
// the compute region (when `with_dy`) of item (n, oh0, ow0), channels c0 ..
// c0+Gv-1: from the staging buffers when the item was staged, else from
// global memory.
template <class C>
__device__ __forceinline__ void fill_item(const PlanarArgs& a, float* smem, int n, int oh0, int ow0, int c0, int Gv,
                                          bool with_x, bool with_dy, bool staged) {
  const uint16_t* table = reinterpret_cast<const uint16_t*>(smem + a.table_off);
  const int64_t p0 = static_cast<int64_t>(n) * a.C + c0;
  if (staged) {
    if (with_x) unpack_run(a.dtype, smem + a.stage_off, Gv * a.H * a.W, smem, table);
    if (with_dy) unpack_run(a.dtype, smem + a.dy_stage_off, Gv * a.Ho * a.Wo, smem + a.dy_off, nullptr);
  } else if (a.whole) {
    if (with_x) load_run(a.dtype, a.x, p0 * a.H * a.W, Gv * a.H * a.W, smem, table);
    if (with_dy) load_run(a.dtype, a.dy, p0 * a.Ho * a.Wo, Gv * a.Ho * a.Wo, smem + a.dy_off, nullptr);
  } else {
    const int r0 = oh0 + a.reg_r0, q0 = ow0 + a.reg_c0;
    if (with_x) {
      load_box(a.dtype, a.x,
               {p0, Gv, a.H, a.W, C::S * r0 - C::P, C::S * q0 - C::P, a.box_rows, a.box_cols, a.xs_pitch, a.xs_plane},
               smem);
    }
    if (with_dy) {
      load_box(a.dtype, a.dy,
               {p0, Gv, a.Ho, a.Wo, r0, q0, a.reg_rows, a.reg_cols, a.reg_cols, a.reg_rows * a.reg_cols},
               smem + a.dy_off);
    }
  }
}

// Writes the output staging of item (n, oh0, ow0): y or z (scale 1) or dx (scale S).
__device__ __forceinline__ void store_item(const PlanarArgs& a, const float* outs, int n, int oh0, int ow0, int c0,
                                           int Gv, int Himg, int Wimg, int scale) {
  const int64_t p0 = static_cast<int64_t>(n) * a.C + c0;
  if (a.whole) {
    store_run(a.out_dtype, a.out, p0 * Himg * Wimg, Gv * Himg * Wimg, outs, a.stream_stores != 0);
  } else {
    store_box(a.out_dtype, a.out,
              {p0, Gv, Himg, Wimg, scale * oh0, scale * ow0, a.io_rows, a.io_cols, a.io_cols, a.io_rows * a.io_cols},
              outs, a.stream_stores != 0);
  }
}

// z[i][v] at output (orow + i, ocol + v) of plane p (n * C + c) from the kept
// z, 0 outside the image: what conv_micro would compute there, read instead.
template <class C>
__device__ __forceinline__ void load_z_micro(const PlanarArgs& a, int64_t p, int orow, int ocol,
                                             float (&z)[C::R][C::V]) {
  const bool bf16 = is_bf16(a.z_dtype);
  with_width(a.z_dtype, [&](auto tag) {
    using Raw = decltype(tag);
    const Raw* zp = static_cast<const Raw*>(a.z) + p * a.Ho * a.Wo;
#pragma unroll
    for (int i = 0; i < C::R; ++i) {
      const int row = orow + i;
#pragma unroll
      for (int v = 0; v < C::V; ++v) {
        const int col = ocol + v;
        z[i][v] = (static_cast<unsigned>(row) < static_cast<unsigned>(a.Ho) &&
                   static_cast<unsigned>(col) < static_cast<unsigned>(a.Wo))
                      ? decode(__ldg(zp + static_cast<int64_t>(row) * a.Wo + col), bf16)
                      : 0.f;
      }
    }
  });
}

// Item k of this block's slot (walked backwards with a.reverse).
struct Item {
  int n, oh0, ow0;
};

__device__ __forceinline__ int item_count(const PlanarArgs& a, int slot) {
  return (a.N * a.NT - slot + a.slots - 1) / a.slots;
}

__device__ __forceinline__ Item item_at(const PlanarArgs& a, int slot, int k, int count) {
  const int it = slot + (a.reverse ? count - 1 - k : k) * a.slots;
  const int n = it / a.NT, tile = it - n * a.NT;
  const int th = tile / a.NTW, tw = tile - th * a.NTW;
  return {n, th * a.TH, tw * a.TW};
}

// ---------------------------------------------------- forward-like passes

// mode kStats (F1; with store_z it writes z too), kApply (F3) or kGradStats
// (B1). The compute region is the tile.
template <int K, int S>
__global__ void __maxnreg__(kPlanarRegs) planar_forward_kernel(const PlanarArgs a, int mode) {
  using C = PlanarCfg<K, S>;
  constexpr int R = C::R, V = C::V;
  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  float* io = smem + a.dy_off;  // dy (kGradStats), y (kApply) or z (kStats), compact TH x TW per channel
  const int io_plane = a.TH * a.TW;
  const int t = threadIdx.x, bd = blockDim.x, lane = t & 31, warp = t >> 5;
  const int cg = blockIdx.x % a.CG, slot = blockIdx.x / a.CG;
  const int c0 = cg * a.G, Gv = min(a.G, a.C - c0);
  const int g = t / a.TPP, l = t - g * a.TPP;
  const bool active = g < Gv;
  const int c = c0 + g;

  block_setup<C>(a, smem, c0, Gv, false);
  float* coef = smem + a.coef_off;
  if (mode == kApply) {
    for (int gg = warp; gg < Gv; gg += bd >> 5) {
      float mean, var;
      if (a.training) {
        const Moments m = warp_merge_strided(a.part_in + static_cast<int64_t>(c0 + gg) * a.in_slots * 3, a.in_slots, 3);
        mean = m.mean;
        var = m.m2 / m.n;
        if (slot == 0 && lane == 0) {
          a.save_mean[c0 + gg] = mean;
          a.save_var[c0 + gg] = var;
        }
      } else {
        mean = a.mean[c0 + gg];
        var = a.var[c0 + gg];
      }
      const BnCoef bc = bn_coef(a.gamma[c0 + gg], a.beta[c0 + gg], mean, var, a.eps);
      if (lane == 0) {
        coef[2 * gg] = bc.scale;
        coef[2 * gg + 1] = bc.shift;
      }
    }
  }
  __syncthreads();

  BnCoef bc{0.f, 0.f};
  float mean = 0.f;
  if (active && mode == kApply) bc = {coef[2 * g], coef[2 * g + 1]};
  if (active && mode == kGradStats) {
    mean = a.mean[c];
    bc = bn_coef(a.gamma[c], a.beta[c], mean, a.var[c], a.eps);
  }
  ShiftedSums ss;
  float s1 = 0.f, s2 = 0.f;

  const int nmt = a.nrb * a.ncq;
  const int count = item_count(a, slot);
  const bool with_dy = mode == kGradStats;
  const bool z_kept = with_dy && a.z != nullptr;  // B1 reads z: no x, no convolution
  bool staged = a.whole && stage_item(a, smem, item_at(a, slot, 0, count).n, c0, Gv, !z_kept, with_dy);
  for (int k = 0; k < count; ++k) {
    const Item item = item_at(a, slot, k, count);
    if (staged) cp_async_wait_all();
    __syncthreads();
    fill_item<C>(a, smem, item.n, item.oh0, item.ow0, c0, Gv, !z_kept, with_dy, staged);
    __syncthreads();
    // The next item's copy overlaps this one's compute (the staging buffers are free again).
    staged = a.whole && k + 1 < count &&
             stage_item(a, smem, item_at(a, slot, k + 1, count).n, c0, Gv, !z_kept, with_dy);
    if (active) {
      // Per item, so register weights are not live while the next item loads (they stay in L1).
      Weights<K, C::kRegWeights> wt;
      wt.init(a.weight + static_cast<int64_t>(c) * K * K, smem + a.ws_off + g * a.ws_plane);
      const int rows = min(a.TH, a.Ho - item.oh0), cols = min(a.TW, a.Wo - item.ow0);
      float* iog = io + g * io_plane;
      TileWalk tw(l, a.TPP, a.ncq);
      for (int m = l; m < nmt; m += a.TPP, tw.next()) {
        const int r0 = R * tw.rb, q0 = V * tw.cq;  // in the tile
        float z[R][V];
        if (z_kept) {
          load_z_micro<C>(a, static_cast<int64_t>(item.n) * a.C + c, item.oh0 + r0, item.ow0 + q0, z);
        } else {
          conv_micro<C, 0, false>(smem + g * a.xs_plane + C::S * r0 * a.xs_pitch + C::S * q0, a.xs_pitch, wt, z);
        }
        // Row by row, all V columns at once when the micro-tile is not cut by the tile's edge.
        const int nc = min(V, cols - q0);
        float* iot = iog + r0 * a.TW + q0;
#pragma unroll
        for (int i = 0; i < R; ++i) {
          if (r0 + i >= rows) continue;
#pragma unroll
          for (int v = 0; v < V; ++v) {
            if (nc == V || v < nc) {
              if (mode == kStats) {
                ss.add(z[i][v]);
                if (a.store_z) iot[i * a.TW + v] = z[i][v];
              } else if (mode == kApply) {
                iot[i * a.TW + v] = activate(fmaf(z[i][v], bc.scale, bc.shift), a.act);
              } else {
                const float du = activate_grad(fmaf(z[i][v], bc.scale, bc.shift), iot[i * a.TW + v], a.act);
                s1 += du;
                s2 = fmaf(du, z[i][v] - mean, s2);
              }
            }
          }
        }
      }
    }
    __syncthreads();
    if (mode == kApply || a.store_z) store_item(a, io, item.n, item.oh0, item.ow0, c0, Gv, a.Ho, a.Wo, 1);
  }
  if (mode == kApply) return;
  __syncthreads();  // the reduction scratch may overlap the z staging that store_item reads

  // Per-channel reduction of the threads' sums, in a fixed order.
  float* red = smem + a.red_off;
  if (mode == kStats) {
    const Moments m = ss.moments();
    red[3 * t] = m.n;
    red[3 * t + 1] = m.mean;
    red[3 * t + 2] = m.m2;
  } else {
    red[2 * t] = s1;
    red[2 * t + 1] = s2;
  }
  __syncthreads();
  for (int gg = warp; gg < Gv; gg += bd >> 5) {
    const int64_t dst = static_cast<int64_t>(c0 + gg) * a.slots + slot;
    if (mode == kStats) {
      const Moments m = warp_merge_strided(red + 3 * gg * a.TPP, a.TPP, 3);
      if (lane == 0) {
        a.part[3 * dst] = m.n;
        a.part[3 * dst + 1] = m.mean;
        a.part[3 * dst + 2] = m.m2;
      }
    } else {
      const float r1 = warp_sum_strided(red + 2 * gg * a.TPP, a.TPP, 2);
      const float r2 = warp_sum_strided(red + 2 * gg * a.TPP + 1, a.TPP, 2);
      if (lane == 0) {
        a.part[2 * dst] = r1;
        a.part[2 * dst + 1] = r2;
      }
    }
  }
}

// ------------------------------------------------------------ backward B3

template <int K, int S>
__global__ void __maxnreg__(kPlanarRegs) planar_backward_kernel(const PlanarArgs a) {
  using C = PlanarCfg<K, S>;
  constexpr int R = C::R, V = C::V;
  extern __shared__ float4 smem_f4[];
  float* smem = reinterpret_cast<float*>(smem_f4);
  float* dzs = smem + a.dz_off;
  float* dwacc = smem + a.dw_off;  // [job][b]
  float* dys = smem + a.dy_off;   // the same buffer: dy until the z pass,
  float* dxs = smem + a.out_off;  // then dx
  const int dy_plane = a.reg_rows * a.reg_cols, dx_plane = a.io_rows * a.io_cols;
  const int t = threadIdx.x, bd = blockDim.x, lane = t & 31, warp = t >> 5;
  const int cg = blockIdx.x % a.CG, slot = blockIdx.x / a.CG;
  const int c0 = cg * a.G, Gv = min(a.G, a.C - c0);
  const int g = t / a.TPP, l = t - g * a.TPP;
  const bool active = g < Gv;
  const int c = c0 + g;

  block_setup<C>(a, smem, c0, Gv, true);
  // dz = bn_grad: scale * ((du - mdu) - (z - mean) * k), mdu = sum(du) / n,
  // k = sum(du * (z - mean)) / n / (var + eps), with u = z * scale + shift as
  // in the forward; scale * du in eval. The difference comes before the
  // scaling, as in PyTorch: with few values per channel the terms nearly cancel.
  float* coef = smem + a.coef_off;
  for (int gg = warp; gg < Gv; gg += bd >> 5) {
    const int cc = c0 + gg;
    const float mean = a.mean[cc];
    const BnCoef bc = bn_coef(a.gamma[cc], a.beta[cc], mean, a.var[cc], a.eps);
    float k = 0.f, mdu = 0.f;
    if (a.training) {
      const float inv = rsqrtf(a.var[cc] + a.eps);
      const float* p = a.part_in + static_cast<int64_t>(cc) * a.in_slots * 2;
      const float sdu = warp_sum_strided(p, a.in_slots, 2);
      const float sduz = warp_sum_strided(p + 1, a.in_slots, 2);
      mdu = sdu / a.count;
      k = sduz / a.count * inv * inv;
    }
    if (lane == 0) {
      float* q = coef + 6 * gg;
      q[0] = bc.scale;
      q[1] = k;
      q[2] = mdu;
      q[3] = bc.scale;
      q[4] = bc.shift;
      q[5] = mean;
    }
  }
  __syncthreads();

  const int nmt = a.nrb * a.ncq, nmt_dx = a.nrb_dx * a.ncq_dx;
  const int count = item_count(a, slot);
  bool staged = a.whole && stage_item(a, smem, item_at(a, slot, 0, count).n, c0, Gv, true, true);
  for (int k = 0; k < count; ++k) {
    const Item item = item_at(a, slot, k, count);
    const int oh0 = item.oh0, ow0 = item.ow0;
    if (staged) cp_async_wait_all();
    __syncthreads();
    fill_item<C>(a, smem, item.n, oh0, ow0, c0, Gv, true, true, staged);
    __syncthreads();
    staged = a.whole && k + 1 < count && stage_item(a, smem, item_at(a, slot, k + 1, count).n, c0, Gv, true, true);
    Weights<K, C::kRegWeights> wt;  // per item: not live while the next item loads
    if (active) wt.init(a.weight + static_cast<int64_t>(c) * K * K, smem + a.ws_off + g * a.ws_plane);

    // dz on the compute region; 0 outside the image.
    if (active) {
      const float* q = coef + 6 * g;
      const float* dyg = dys + g * dy_plane;
      TileWalk tw(l, a.TPP, a.ncq);
      for (int m = l; m < nmt; m += a.TPP, tw.next()) {
        const int r0 = R * tw.rb, q0 = V * tw.cq;  // in the region
        const int orow = oh0 + a.reg_r0 + r0, ocol = ow0 + a.reg_c0 + q0;
        float dz[R][V];  // z, then dz in place
        if (orow < a.Ho && orow + R > 0 && ocol < a.Wo && ocol + V > 0) {
          if (a.z != nullptr) {
            load_z_micro<C>(a, static_cast<int64_t>(item.n) * a.C + c, orow, ocol, dz);
          } else {
            conv_micro<C, 0, false>(smem + g * a.xs_plane + C::S * r0 * a.xs_pitch + C::S * q0, a.xs_pitch, wt, dz);
          }
          const float cA = q[0], ck = q[1], mdu = q[2], mean = q[5];  // read here: not live across the conv
          const BnCoef bc{q[3], q[4]};
#pragma unroll
          for (int i = 0; i < R; ++i) {
            const int row = orow + i;
#pragma unroll
            for (int v = 0; v < V; ++v) {
              const int col = ocol + v;
              const float z = dz[i][v];
              dz[i][v] = 0.f;
              if (r0 + i < a.reg_rows && q0 + v < a.reg_cols && row >= 0 && row < a.Ho && col >= 0 && col < a.Wo) {
                const float du =
                    activate_grad(fmaf(z, bc.scale, bc.shift), dyg[(r0 + i) * a.reg_cols + q0 + v], a.act);
                dz[i][v] = bn_grad(du, z, cA, ck, mdu, mean, a.training);
              }
            }
          }
        } else {
#pragma unroll
          for (int i = 0; i < R; ++i) {
#pragma unroll
            for (int v = 0; v < V; ++v) dz[i][v] = 0.f;
          }
        }
        float* dzp = dzs + g * a.dz_plane + (a.dz_r_off + r0) * a.dz_pitch + a.dz_c_off + q0;
#pragma unroll
        for (int i = 0; i < R; ++i) {
#pragma unroll
          for (int q = 0; q < V / 4; ++q) {
            sts4(dzp + i * a.dz_pitch + 4 * q,
                 make_float4(dz[i][4 * q], dz[i][4 * q + 1], dz[i][4 * q + 2], dz[i][4 * q + 3]));
          }
        }
      }
    }
    __syncthreads();

    // dx = transposed conv of dz over the tile's input positions, into dxs.
    if (active) {
      const float* dzg = dzs + g * a.dz_plane;
      float* dxg = dxs + g * dx_plane;
      TileWalk tw(l, a.TPP, a.ncq_dx);
      for (int m = l; m < nmt_dx; m += a.TPP, tw.next()) {
        if constexpr (S == 1) {
          const int r0 = R * tw.rb, q0 = V * tw.cq;  // in the tile
          float dx[R][V];
          conv_micro<C, 4 - C::P, true>(dzg + r0 * a.dz_pitch + q0, a.dz_pitch, wt, dx);
          const int nc = min(V, a.io_cols - q0);
          float* dst = dxg + r0 * a.io_cols + q0;
#pragma unroll
          for (int i = 0; i < R; ++i) {
            if (r0 + i < a.io_rows) {
              if (nc == V) {
#pragma unroll
                for (int v = 0; v < V; ++v) dst[i * a.io_cols + v] = dx[i][v];
              } else {
#pragma unroll
                for (int v = 0; v < V; ++v) {
                  if (v < nc) dst[i * a.io_cols + v] = dx[i][v];
                }
              }
            }
          }
        } else {
          const int q0 = V * tw.cq;
          float dx[2][2 * V];
          dconv_s2_micro<C>(dzg + tw.rb * a.dz_pitch + q0, a.dz_pitch, wt, dx);
          const int nc = min(2 * V, a.io_cols - 2 * q0);
          float* dst = dxg + 2 * tw.rb * a.io_cols + 2 * q0;
#pragma unroll
          for (int pi = 0; pi < 2; ++pi) {
            if (2 * tw.rb + pi < a.io_rows) {
              if (nc == 2 * V) {
#pragma unroll
                for (int j = 0; j < 2 * V; ++j) dst[pi * a.io_cols + j] = dx[pi][j];
              } else {
#pragma unroll
                for (int j = 0; j < 2 * V; ++j) {
                  if (j < nc) dst[pi * a.io_cols + j] = dx[pi][j];
                }
              }
            }
          }
        }
      }
    }

    // dW: job sg = (channel gg, kernel row ta, row phase kk) sums
    // dz[p][q] * x[S*p + ta - P][S*q + b - P] over the tile's rows p = oh0 + kk (mod T).
    {
      const int row_end = min(oh0 + a.TH, a.Ho);
      const int wcols = min(a.TW, a.Wo - ow0), ncq_w = (wcols + V - 1) / V;
      for (int sg = t; sg < a.J; sg += bd) {
        const int kk = sg % a.T, q = sg / a.T;
        const int ta = q % K, gg = q / K;
        if (gg < Gv) {
          float dw[K];
#pragma unroll
          for (int b = 0; b < K; ++b) dw[b] = dwacc[sg * K + b];
          for (int p = oh0 + kk; p < row_end; p += a.T) {
            const float* dzr = dzs + gg * a.dz_plane + (p - oh0 + C::HL) * a.dz_pitch + 4;
            const float* xr =
                smem + gg * a.xs_plane + (C::S * (p - oh0 - a.reg_r0) + ta) * a.xs_pitch - C::S * a.reg_c0;
            for (int cq = 0; cq < ncq_w; ++cq) {
              // Columns of the last vector past the tile have dz = 0 but real x:
              // skipped, since 0 * inf or 0 * NaN would reach dW.
              const int nv = wcols - V * cq;
              float dzv[V], win[C::WIN];
              load_window<V, 0>(dzr + V * cq, dzv);
              load_window<C::WIN, 0>(xr + C::S * V * cq, win);
#pragma unroll
              for (int b = 0; b < K; ++b) {
#pragma unroll
                for (int v = 0; v < V; ++v) {
                  if (v < nv) dw[b] = fmaf(dzv[v], win[C::S * v + b], dw[b]);
                }
              }
            }
          }
#pragma unroll
          for (int b = 0; b < K; ++b) dwacc[sg * K + b] = dw[b];
        }
      }
    }
    __syncthreads();
    store_item(a, dxs, item.n, oh0, ow0, c0, Gv, a.H, a.W, S);
  }
  __syncthreads();

  // Block partials: dW per (channel, tap) over the jobs' row phases.
  __syncthreads();
  for (int i = t; i < Gv * K * K; i += bd) {
    const int gg = i / (K * K), tap = i - gg * K * K;
    const int ta = tap / K, b = tap - ta * K;
    float s = 0.f;
    for (int kk = 0; kk < a.T; ++kk) s += dwacc[((gg * K + ta) * a.T + kk) * K + b];
    a.part_dw[(static_cast<int64_t>(c0 + gg) * a.slots + slot) * K * K + tap] = s;
  }
}

// ------------------------------------------------------------------- host

// Shared-memory layout and blocking of one kernel for one shape.
struct PlanarPlan {
  PlanarArgs a;
  int threads;
  size_t smem;
  int blocks;
  bool ok;
};

template <int K, int S>
PlanarPlan make_plan(const OpShape& s, bool backward, int num_sms, const void* kernel) {
  using C = PlanarCfg<K, S>;
  constexpr int R = C::R, V = C::V, P = C::P, HL = C::HL, HH = C::HH;
  PlanarPlan plan{};
  PlanarArgs& a = plan.a;
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
  const int es = s.dtype == DType::kFloat32 ? 4 : 2;
  // Floats of raw staging for `elems` elements of x's dtype.
  auto raw_floats = [&](int64_t elems) { return ceil_div(elems * es, 4); };

  // Fills the geometry of tile TH x TW (whole: the plane); returns floats per channel.
  auto layout = [&](int TH, int TW, bool whole) -> int64_t {
    a.TH = TH;
    a.TW = TW;
    a.whole = whole ? 1 : 0;
    if (!backward || whole) {
      a.reg_r0 = a.reg_c0 = 0;
      a.reg_rows = TH;
      a.reg_cols = TW;
    } else {
      a.reg_r0 = -HL;
      a.reg_c0 = -4;
      a.reg_rows = HL + TH + HH;
      a.reg_cols = 4 + TW + HH;
    }
    a.nrb = static_cast<int>(ceil_div(a.reg_rows, R));
    a.ncq = static_cast<int>(ceil_div(a.reg_cols, V));
    a.box_rows = S * (a.reg_rows - 1) + K;
    a.box_cols = S * (a.reg_cols - 1) + K;
    const int ncq_w = static_cast<int>(ceil_div(TW, V));
    const int xs_rows = S * (R * a.nrb - 1) + K;
    a.xs_pitch = std::max(S * V * (a.ncq - 1) + 4 * C::NCH, S * (V * (ncq_w - 1) - a.reg_c0) + 4 * C::NCH);
    // A row pitch of 4 banks mod 32: float4 loads from different rows do not collide.
    if (a.xs_pitch % 32 == 0) a.xs_pitch += 4;
    a.xs_plane = xs_rows * a.xs_pitch;
    a.ws_plane = C::kRegWeights ? 0 : K * C::KP + ((K * C::KP) % 8 == 0 ? 4 : 0);
    int64_t floats = a.xs_plane + a.ws_plane + 6;
    if (backward) {
      a.io_rows = whole ? a.H : S * TH;
      a.io_cols = whole ? a.W : S * TW;
      a.dz_r_off = whole ? HL : 0;
      a.dz_c_off = whole ? 4 : 0;
      a.nrb_dx = S == 1 ? static_cast<int>(ceil_div(TH, R)) : TH;
      a.ncq_dx = ncq_w;
      int dz_rows, dx_cols;
      if (S == 1) {
        dz_rows = R * a.nrb_dx + 2 * P;
        dx_cols = V * (a.ncq_dx - 1) + 4 * ((4 - P + (V + K - 1) - 1) / 4 + 1);
      } else {
        dz_rows = a.nrb_dx + HL + HH;
        dx_cols = V * (a.ncq_dx - 1) + 4 * ((4 - HL + (V + HL + HH) - 1) / 4 + 1);
      }
      dz_rows = std::max({dz_rows, a.dz_r_off + R * a.nrb, HL + TH});
      a.dz_pitch = static_cast<int>(round_up(std::max({dx_cols, a.dz_c_off + V * a.ncq, 4 + V * ncq_w}), 4));
      if (a.dz_pitch % 32 == 0) a.dz_pitch += 4;
      a.dz_plane = dz_rows * a.dz_pitch;
      floats += a.dz_plane;
    } else {
      a.io_rows = TH;
      a.io_cols = TW;
    }
    floats += std::max(a.reg_rows * a.reg_cols, a.io_rows * a.io_cols);
    if (whole) {  // offset table and staging
      floats += static_cast<int64_t>(a.H) * a.W / 2 + 1 + raw_floats(static_cast<int64_t>(a.H) * a.W);
      if (backward) floats += raw_floats(static_cast<int64_t>(a.Ho) * a.Wo);
    }
    return floats;
  };

  const int64_t floats_budget = static_cast<int64_t>(kSmemBudget / 4);
  int64_t per_ch = layout(a.Ho, a.Wo, true);
  const bool whole_ok = per_ch <= floats_budget && static_cast<int64_t>(a.nrb) * a.ncq <= 4 * kPlanarThreads &&
                        a.xs_plane < 65536;
  if (!whole_ok) {
    const int TW = static_cast<int>(std::min<int64_t>(round_up(a.Wo, V), 16 * V));
    int TH = std::min(a.Ho, 8 * R);
    per_ch = layout(TH, TW, false);
    while (per_ch > floats_budget / 2 && TH > 1) per_ch = layout(TH = std::max(1, TH / 2), TW, false);
    if (per_ch > floats_budget) return plan;  // ok = false
  }
  a.NTW = static_cast<int>(ceil_div(a.Wo, a.TW));
  a.NT = static_cast<int>(ceil_div(a.Ho, a.TH)) * a.NTW;

  const int nmt = a.nrb * a.ncq;
  const int mt = static_cast<int>(ceil_div(nmt, kPlanarThreads));
  a.TPP = static_cast<int>(ceil_div(nmt, mt));

  // Shared memory for G channels, in floats: x tiles, dz tiles, dy staging,
  // output staging (the forward kernel shares one buffer between dy and y),
  // weights, coefficients, table, dW job sums; the reduction scratch reuses
  // the tiles when it fits there.
  auto arrange = [&](int G) -> int64_t {
    a.G = G;
    plan.threads = static_cast<int>(round_up(static_cast<int64_t>(G) * a.TPP, 32));
    int64_t off = static_cast<int64_t>(G) * a.xs_plane;
    a.dz_off = static_cast<int>(off);
    if (backward) off += static_cast<int64_t>(G) * a.dz_plane;
    // dy and the output staging share a buffer: B3 reads dy (z pass) and
    // writes dx (dx pass) on either side of a barrier.
    a.dy_off = a.out_off = static_cast<int>(off);
    off += round_up(static_cast<int64_t>(G) * std::max(a.reg_rows * a.reg_cols, a.io_rows * a.io_cols), 4);
    const int64_t tiles = off;
    a.ws_off = static_cast<int>(off);
    off += static_cast<int64_t>(G) * a.ws_plane;
    a.coef_off = static_cast<int>(off);
    off += round_up(6 * G, 4);
    a.table_off = static_cast<int>(off);
    if (a.whole) {
      off += round_up(ceil_div(static_cast<int64_t>(G) * a.H * a.W, 2), 4);
      a.stage_off = static_cast<int>(off);
      off += round_up(raw_floats(static_cast<int64_t>(G) * a.H * a.W), 4);
      a.dy_stage_off = static_cast<int>(off);  // dy: B1 and B3
      off += round_up(raw_floats(static_cast<int64_t>(G) * a.Ho * a.Wo), 4);
    }
    int64_t red = 3 * plan.threads;
    if (backward) {
      // dW jobs (channel, kernel row, row phase): one per thread when there are enough threads.
      a.T = std::max(1, plan.threads / (G * K));
      a.J = G * K * a.T;
      a.dw_off = static_cast<int>(off);
      off += round_up(static_cast<int64_t>(a.J) * K, 4);
    } else if (red <= tiles) {
      a.red_off = 0;
    } else {
      a.red_off = static_cast<int>(off);
      off += round_up(red, 4);
    }
    return off;
  };
  int G = static_cast<int>(std::min<int64_t>({s.C, kPlanarThreads / a.TPP, floats_budget / per_ch}));
  if (a.whole) {
    while (G > 1 && static_cast<int64_t>(G) * a.xs_plane >= 65536) --G;
  }
  G = std::max(G, 1);
  while (G > 1 && arrange(G) > floats_budget) --G;
  // Items (runs of x and dy planes) start on 16 bytes, as cp.async needs, when
  // G and C are multiples of m planes; m is a power of two.
  const int per16 = 16 / es;
  const int m = std::max(per16 / std::gcd(a.H * a.W, per16), per16 / std::gcd(a.Ho * a.Wo, per16));
  if (a.whole && s.C % m == 0 && G >= m) G -= G % m;
  plan.smem = static_cast<size_t>(arrange(G)) * sizeof(float);
  if (plan.smem > kSmemBudget) return plan;  // ok = false
  a.CG = static_cast<int>(ceil_div(a.C, a.G));

  const int per_sm = resident_blocks(kernel, plan.threads, plan.smem);
  const int64_t items = static_cast<int64_t>(a.N) * a.NT;
  a.slots = wave_slots(a.CG, items, per_sm, num_sms);
  plan.blocks = a.CG * a.slots;
  plan.ok = true;
  return plan;
}

template <int K, int S>
cudaError_t forward_impl(const OpShape& s, const ForwardArgs& fa, float* workspace, int num_sms, bool stream_stores,
                         cudaStream_t stream, size_t* ws_floats) {
  const void* kernel = reinterpret_cast<const void*>(&planar_forward_kernel<K, S>);
  PlanarPlan plan = make_plan<K, S>(s, false, num_sms, kernel);
  if (!plan.ok) return cudaErrorInvalidValue;
  PlanarArgs& a = plan.a;
  // Workspace: moments partials, then (stored z) the BN coefficients and z.
  const size_t part_floats = s.training ? static_cast<size_t>(round_up(static_cast<int64_t>(a.C) * a.slots * 3, 4)) : 0;
  const size_t coef_floats = static_cast<size_t>(round_up(2 * static_cast<int64_t>(a.C), 4));
  const bool store_z = stores_z(s);
  if (ws_floats != nullptr) {
    *ws_floats = part_floats + (store_z ? coef_floats + stored_z_floats(s) : 0);
    return cudaSuccess;
  }
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
    void* z = stored_z_at(s, fa, workspace + part_floats + coef_floats);
    a.part = workspace;
    a.reverse = 0;
    a.store_z = store_z ? 1 : 0;
    if (store_z) {
      a.out = z;
      a.out_dtype = static_cast<int>(stored_z_dtype(s));
    }
    planar_forward_kernel<K, S><<<plan.blocks, plan.threads, plan.smem, stream>>>(a, kStats);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if (store_z) {
      return launch_apply_stored_z(s, fa, z, workspace, a.slots, workspace + part_floats, num_sms, stream_stores,
                                   stream);
    }
    a.part_in = workspace;
    a.in_slots = a.slots;
  }
  a.reverse = 1;
  planar_forward_kernel<K, S><<<plan.blocks, plan.threads, plan.smem, stream>>>(a, kApply);
  return cudaGetLastError();
}

template <int K, int S>
cudaError_t backward_impl(const OpShape& s, const BackwardArgs& ba, float* workspace, int num_sms, bool stream_stores,
                          cudaStream_t stream, size_t* ws_floats, int out_k) {
  const void* fwd_kernel = reinterpret_cast<const void*>(&planar_forward_kernel<K, S>);
  const void* bwd_kernel = reinterpret_cast<const void*>(&planar_backward_kernel<K, S>);
  PlanarPlan p1 = make_plan<K, S>(s, false, num_sms, fwd_kernel);
  PlanarPlan p3 = make_plan<K, S>(s, true, num_sms, bwd_kernel);
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
  cudaError_t err;
  for (PlanarArgs* a : {&p1.a, &p3.a}) {
    a->stream_stores = stream_stores ? 1 : 0;
    a->x = ba.x;
    a->z = s.keeps_z ? ba.z : nullptr;
    a->z_dtype = static_cast<int>(s.z_dtype);
    a->dy = ba.dy;
    a->out = ba.dx;
    a->weight = ba.weight;
    a->gamma = ba.gamma;
    a->beta = ba.beta;
    a->mean = ba.save_mean;
    a->var = ba.save_var;
  }
  if ((err = allow_smem(fwd_kernel, p1.smem)) != cudaSuccess || (err = allow_smem(bwd_kernel, p3.smem)) != cudaSuccess) {
    return err;
  }
  p1.a.part = grad_part;
  p1.a.reverse = 0;
  planar_forward_kernel<K, S><<<p1.blocks, p1.threads, p1.smem, stream>>>(p1.a, kGradStats);
  if ((err = cudaGetLastError()) != cudaSuccess) return err;
  PlanarArgs& a = p3.a;
  a.part_in = grad_part;
  a.in_slots = grad_slots;
  a.part_dw = dw_part;
  a.reverse = 1;
  planar_backward_kernel<K, S><<<p3.blocks, p3.threads, p3.smem, stream>>>(a);
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

cudaError_t nchw_forward(const OpShape& s, const ForwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                         cudaStream_t stream, size_t* ws_floats) {
  return dispatch_kernel_size<ForwardOp>(s.K, s.stride, s, a, workspace, num_sms, stream_stores, stream, ws_floats);
}

cudaError_t nchw_backward(const OpShape& s, const BackwardArgs& a, float* workspace, int num_sms, bool stream_stores,
                          cudaStream_t stream, size_t* ws_floats, int out_k) {
  return dispatch_kernel_size<BackwardOp>(s.K, s.stride, s, a, workspace, num_sms, stream_stores, stream, ws_floats,
                                          out_k);
}

}  // namespace detail
}  // namespace cuda_kernels
}  // namespace mixpath
