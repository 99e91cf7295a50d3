// Per-row W8A8 linear for the few rows of a decode step or a draft tree (CPU).
//
// y[m, n] = float(sum_k q(x)[m, k] * w[n, k]) * w_scale[n] * x_scale[m] + bias[n]
//
// Every activation row is quantised with its own absmax scale inside the call, and the
// integer sums are exact whatever the blocking, so a row's output never depends on the
// other rows of the call (the lossless guarantee relative to the int8 model needs that).
// Weights are packed once as [N/16][K/4][16][4] int8: one 64-byte load holds 4 consecutive
// k of 16 output channels, the operand layout of AVX-512 VNNI's vpdpbusd. Compiled with
// -march=native on the machine that runs it (see cpu_kernel.py), so the ISA branch is chosen
// at build time: VNNI (u8 x s8, activations shifted by +128 and corrected by 128 * colsum),
// AVX2 (|a| x sign(a) * w through vpmaddubsw, exact because |a|, |w| <= 127), or scalar.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define W8A8_VNNI 1
#include <immintrin.h>
#if defined(__AMX_TILE__) && defined(__AMX_INT8__)
#define W8A8_AMX 1
#include "amx.h"
#endif
#include "swiglu.h"
#elif defined(__AVX2__)
#define W8A8_AVX2 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kLanes = 16;  // output channels per packed block
constexpr int64_t kGroup = 4;   // consecutive k per 32-bit lane

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// rows from which linear() quantises its input on two threads: at 300 and 2,000 prompt rows
// the int8 prefill was 8-9% faster (2-core Xeon); a decode step's rows are not worth a fork
constexpr int64_t kQuantizeGrain = 64;

// The output blocks [0, blocks) in one contiguous share per thread, each share at least grain
// chunks of nb blocks (else fewer shares); ``share(b0, b1)`` runs on the share's thread
// for its blocks [b0, b1), ``enter`` and ``leave`` around its shares. Shares of whole chunks
// left one thread a chunk more than the other (the default model's 576-wide outputs are 9
// chunks: 5 against 4), and the int8 decoder's one-row forward ran 3-5% slower (2-core Xeon,
// one process, interleaved). A block's outputs do not depend on how blocks are grouped.
template <typename F, typename Enter = void (*)(), typename Leave = void (*)()>
void for_shares(int64_t blocks, int64_t nb, int64_t grain, const F& share,
                Enter enter = [] {}, Leave leave = [] {}) {
  const int64_t chunks = (blocks + nb - 1) / nb;
  const int64_t shares = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), chunks / std::max<int64_t>(grain, 1)));
  at::parallel_for(0, shares, 1, [&](int64_t s0, int64_t s1) {
    enter();
    for (int64_t s = s0; s < s1; ++s) share(blocks * s / shares, blocks * (s + 1) / shares);
    leave();
  });
}

// for_shares walking each share nb blocks a step, its last step shorter: ``step(b, count)``
template <typename F, typename Enter = void (*)(), typename Leave = void (*)()>
void for_block_shares(int64_t blocks, int64_t nb, int64_t grain, const F& step,
                      Enter enter = [] {}, Leave leave = [] {}) {
  for_shares(
      blocks, nb, grain,
      [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; b += nb) step(b, std::min(nb, b1 - b));
      },
      enter, leave);
}

// One scale per row (absmax / 127) and the row's codes in [-127, 127], k padded with 0.
// VNNI multiplies u8 by s8, so its codes are stored shifted (q + 128; padding 128 * 0 weight).
template <typename C>
void quantize_rows(const float* x, int64_t m, int64_t k, int64_t kp, C* q, float* scale) {
  constexpr int shift = sizeof(C) == 1 && static_cast<C>(-1) > 0 ? 128 : 0;
  for (int64_t r = 0; r < m; ++r) {
    const float* row = x + r * k;
    float amax = 0.f;
    for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float s = std::max(amax, 1e-12f) / 127.0f;
    scale[r] = s;
    C* out = q + r * kp;
    for (int64_t i = 0; i < k; ++i)
      out[i] = static_cast<C>(static_cast<int>(std::nearbyint(row[i] / s)) + shift);
    for (int64_t i = k; i < kp; ++i) out[i] = static_cast<C>(shift);
  }
}

#if defined(W8A8_VNNI)
// quantize_rows for the VNNI/AMX codes, 16 at a time: the same max and the same
// round-half-even of the IEEE quotient (nearbyint in the default rounding mode), so the same
// codes. The quotient is formed as x * (1 / s), which lies within 2^-15 of x / s for codes up
// to 127; only a vector with a lane within 2^-12 of a half-integer, where the two could round
// apart, is divided. A division per value cost ~0.5 ms of a 16-row forward of the default
// model (2-core Xeon: vdivps, one thread), about a third of its linears' cost over one row.
void quantize_rows(const float* x, int64_t m, int64_t k, int64_t kp, uint8_t* q, float* scale) {
  const __m512i shift = _mm512_set1_epi32(128);
  const __m512 near_half = _mm512_set1_ps(0.5f - 1.0f / 4096);
  for (int64_t r = 0; r < m; ++r) {
    const float* row = x + r * k;
    __m512 vmax[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                      _mm512_setzero_ps()};  // four chains: a max waits 4 cycles for the last
    int64_t i = 0;
    for (; i + 64 <= k; i += 64)
      for (int c = 0; c < 4; ++c)
        vmax[c] = _mm512_max_ps(vmax[c], _mm512_abs_ps(_mm512_loadu_ps(row + i + 16 * c)));
    for (; i + 16 <= k; i += 16) vmax[0] = _mm512_max_ps(vmax[0], _mm512_abs_ps(_mm512_loadu_ps(row + i)));
    float amax = _mm512_reduce_max_ps(
        _mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3])));
    for (; i < k; ++i) amax = std::max(amax, std::fabs(row[i]));
    const float s = std::max(amax, 1e-12f) / 127.0f;
    scale[r] = s;
    const __m512 vs = _mm512_set1_ps(s), inv = _mm512_set1_ps(1.0f / s);
    uint8_t* out = q + r * kp;
    for (i = 0; i + 16 <= k; i += 16) {
      const __m512 xv = _mm512_loadu_ps(row + i);
      __m512 v = _mm512_mul_ps(xv, inv);
      const __m512 frac = _mm512_sub_ps(
          v, _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      if (_mm512_cmp_ps_mask(_mm512_abs_ps(frac), near_half, _CMP_GT_OQ) != 0)
        v = _mm512_div_ps(xv, vs);
      const __m512i c = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                       _mm512_cvtepi32_epi8(_mm512_add_epi32(c, shift)));
    }
    for (; i < k; ++i) out[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(row[i] / s)) + 128);
    for (; i < kp; ++i) out[i] = 128;
  }
}
#endif

#if defined(W8A8_VNNI)
// float(sum - 128 * colsum) * w_scale * x_scale (+ bias) for one 16-channel block: the one
// output rounding of every VNNI and AMX path, so both give the same bits for the same sums
struct Epilogue {
  int64_t col;
  bool valid;
  __mmask16 mask;
  __m512i cs;
  __m512 ws, bs;
  bool has_bias;

  Epilogue(int64_t block, int64_t n, const int32_t* colsum, const float* w_scale,
           const float* bias)
      : col(block * kLanes), valid(n > block * kLanes), has_bias(bias != nullptr) {
    if (!valid) return;
    const int64_t left = n - col;
    mask = left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    cs = _mm512_loadu_si512(colsum + col);
    ws = _mm512_maskz_loadu_ps(mask, w_scale + col);
    bs = has_bias ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps();
  }

  __m512 value(__m512i sums, float x_scale) const {
    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, cs));
    v = _mm512_mul_ps(v, ws);
    v = _mm512_mul_ps(v, _mm512_set1_ps(x_scale));
    if (has_bias) v = _mm512_add_ps(v, bs);
    return v;
  }

  void store(__m512i sums, float x_scale, float* y_row) const {
    _mm512_mask_storeu_ps(y_row + col, mask, value(sums, x_scale));
  }
};

// Weight lines each stream is prefetched ahead (to L2). The weights come from the last-level
// cache, and at 2-3 rows the loop runs too slowly for the hardware prefetcher to keep enough
// of them in flight: measured on a 2-core Xeon, all 120 layer products of the default model
// at 2-3 rows 10% faster with it (nothing at one row, a little at 4). Past a block's end it
// reaches into the next block, which the same or the next call reads; a prefetch never faults.
// 256 lines (16 KB) ahead rather than 32: at 8-16 rows the arithmetic per line leaves the
// loads too little lead, and all 120 products took 10-13% less at 8, 12 and 16 rows with it,
// the same at 1-4 (2-core AMD EPYC, medians of 12 passes interleaved in one process; 64 and
// 128 fell between, 512 measured as 256, an L1 or non-temporal hint was slower).
constexpr int64_t kAhead = 256;

// Rows [r0, r0 + MR) against NB consecutive 16-channel blocks from block b, written to y.
// ``a`` holds the activation codes shifted to u8 (q + 128); the shift is undone by colsum.
// ``PF``: prefetch the weights kAhead lines ahead (they stream from L3 or memory; a prompt
// chunk's loop reads them from L1/L2 instead, where the prefetches only take load slots).
template <int MR, int NB, bool PF = true>
void block_out(const uint8_t* a, int64_t kp, const int8_t* packed, int64_t b,
               const int32_t* colsum, const float* w_scale, const float* x_scale,
               const float* bias, int64_t r0, int64_t n, float* y) {
  const int64_t groups = kp / kGroup;
  const int8_t* w0 = packed + b * kLanes * kp;
  const uint8_t* a0 = a + r0 * kp;
  // Every loop over rows and blocks unrolled whole, the last ones included: where one was not
  // (16 rows: the epilogue's), the accumulators became a stack array, zeroed by a memset and
  // stored and reloaded around the vpdpbusd's (memset took a tenth of a 16-row forward's
  // samples, 2-core AMD EPYC). Unrolled, the 8x2 step in L1 ran at 98% of vpdpbusd's peak
  // (92% before); with the weights streaming from memory the forward's time did not move
  // beyond this VM's noise.
  __m512i acc[MR][NB];
  _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r)
    _Pragma("GCC unroll 4") for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i w[NB];
    _Pragma("GCC unroll 4") for (int j = 0; j < NB; ++j) {
      w[j] = _mm512_loadu_si512(w0 + (j * groups + g) * kLanes * kGroup);
      if constexpr (PF)
        _mm_prefetch(
            reinterpret_cast<const char*>(w0 + (j * groups + g + kAhead) * kLanes * kGroup),
            _MM_HINT_T1);
    }
    _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r) {
      int32_t four;
      std::memcpy(&four, a0 + r * kp + g * kGroup, 4);
      const __m512i av = _mm512_set1_epi32(four);
      _Pragma("GCC unroll 4") for (int j = 0; j < NB; ++j)
        acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, w[j]);
    }
  }
  _Pragma("GCC unroll 4") for (int j = 0; j < NB; ++j) {
    const Epilogue e(b + j, n, colsum, w_scale, bias);
    if (!e.valid) break;
    _Pragma("GCC unroll 16") for (int r = 0; r < MR; ++r)
      e.store(acc[r][j], x_scale[r0 + r], y + (r0 + r) * n);
  }
}
#else
// Integer sums of rows [r0, r0 + MR) against NB consecutive 16-channel blocks from block b.
template <int MR, int NB>
inline void block_sums(const int8_t* q, int64_t kp, const int8_t* packed, int64_t b,
                       int32_t* sums /* [MR][NB * 16] */) {
  const int64_t groups = kp / kGroup;
  const int8_t* w0 = packed + b * kLanes * kp;
#if defined(W8A8_AVX2)
  __m256i acc[MR][NB][2];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j][0] = acc[r][j][1] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < groups; ++g) {
    __m256i w[NB][2];
    for (int j = 0; j < NB; ++j) {
      const int8_t* p = w0 + (j * groups + g) * kLanes * kGroup;
      w[j][0] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
      w[j][1] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    }
    for (int r = 0; r < MR; ++r) {
      int32_t four;
      std::memcpy(&four, q + r * kp + g * kGroup, 4);
      const __m256i a = _mm256_set1_epi32(four);
      const __m256i mag = _mm256_sign_epi8(a, a);
      for (int j = 0; j < NB; ++j)
        for (int h = 0; h < 2; ++h) {
          const __m256i pairs = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(w[j][h], a));
          acc[r][j][h] = _mm256_add_epi32(acc[r][j][h], _mm256_madd_epi16(pairs, ones));
        }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j)
      for (int h = 0; h < 2; ++h)
        _mm256_storeu_si256(
            reinterpret_cast<__m256i*>(sums + r * NB * kLanes + j * kLanes + h * 8),
            acc[r][j][h]);
#else
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j)
      for (int64_t c = 0; c < kLanes; ++c) {
        int32_t s = 0;
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t i = 0; i < kGroup; ++i)
            s += static_cast<int32_t>(q[r * kp + g * kGroup + i]) *
                 static_cast<int32_t>(w0[((j * groups + g) * kLanes + c) * kGroup + i]);
        sums[r * NB * kLanes + j * kLanes + c] = s;
      }
#endif
}

template <int MR, int NB, bool PF = true>  // PF: the VNNI version's prefetch (none here)
void block_out(const int8_t* q, int64_t kp, const int8_t* packed, int64_t b,
               const int32_t* colsum, const float* w_scale, const float* x_scale,
               const float* bias, int64_t r0, int64_t n, float* y) {
  (void)colsum;
  alignas(64) int32_t sums[MR * NB * kLanes];
  block_sums<MR, NB>(q + r0 * kp, kp, packed, b, sums);
  for (int r = 0; r < MR; ++r) {
    float* out = y + (r0 + r) * n;
    const float xs = x_scale[r0 + r];
    for (int64_t c = 0; c < NB * kLanes; ++c) {
      const int64_t col = b * kLanes + c;
      if (col >= n) break;
      float v = static_cast<float>(sums[r * NB * kLanes + c]) * w_scale[col];
      v = v * xs;
      if (bias != nullptr) v = v + bias[col];
      out[col] = v;
    }
  }
}
#endif

#if defined(W8A8_VNNI)
using Code = uint8_t;
#else
using Code = int8_t;
#endif

// the last `rows` (< R + 1) rows from r0 against NB blocks from b, in one group
template <int NB, int R, bool PF = true>
void tail_out(int64_t rows, const Code* q, int64_t kp, const int8_t* packed, int64_t b,
              const int32_t* colsum, const float* w_scale, const float* x_scale,
              const float* bias, int64_t r0, int64_t n, float* y) {
  if constexpr (R > 0) {
    if (rows == R) {
      block_out<R, NB, PF>(q, kp, packed, b, colsum, w_scale, x_scale, bias, r0, n, y);
      return;
    }
    tail_out<NB, R - 1, PF>(rows, q, kp, packed, b, colsum, w_scale, x_scale, bias, r0, n, y);
  }
}

// rows [0, m) against NB blocks from b: groups of MR rows, then one group of the rest
template <int MR, int NB, bool PF = true>
void rows_out(const Code* q, int64_t m, int64_t kp, const int8_t* packed, int64_t b,
              const int32_t* colsum, const float* w_scale, const float* x_scale,
              const float* bias, int64_t n, float* y) {
  int64_t r = 0;
  for (; r + MR <= m; r += MR)
    block_out<MR, NB, PF>(q, kp, packed, b, colsum, w_scale, x_scale, bias, r, n, y);
  tail_out<NB, MR - 1, PF>(m - r, q, kp, packed, b, colsum, w_scale, x_scale, bias, r, n, y);
}

#if defined(W8A8_VNNI)
// Rows from which a call is a prompt chunk (or a tree that large): each thread takes blocks of
// up to kPromptBlock rows, and each block goes through every channel block in steps of 8
// rows against 3 channel blocks (24 accumulators), so a step's 3 weight loads serve 8 rows
// and its 8 code broadcasts 3 blocks, and both operands come from L1/L2. The 16 x 1 steps of
// a verify (16 weight-stream loads per 16 products, each weight read once from memory) ran at
// 55-70% of vpdpbusd's peak on a prompt; on a 2-core AMD EPYC (peak 455 GMAC/s on 2 threads)
// the integer part of the default model's products at 2,304 rows ran 3-30% faster this way
// (an isolated loop, medians of 7). Same bits: a block's sums do not depend on the grouping.
constexpr int64_t kPromptRows = 128;
constexpr int64_t kPromptBlock = 96;

void prompt_out(const uint8_t* q, int64_t m, int64_t kp, const int8_t* packed, int64_t blocks,
                const int32_t* colsum, const float* w_scale, const float* x_scale,
                const float* bias, int64_t n, float* y) {
  constexpr int kNB = 3;
  // as many blocks for each thread, of at most kPromptBlock rows (whole steps of 8): 256 rows
  // (an MLP slice) in 3 blocks of 96 left one thread twice the other's work
  const int64_t threads = at::get_num_threads();
  const int64_t tasks = round_up((m + kPromptBlock - 1) / kPromptBlock, threads);
  const int64_t size = round_up((m + tasks - 1) / tasks, 8);
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * size, rows = std::min(size, m - r0);
      if (rows <= 0) break;
      const uint8_t* qr = q + r0 * kp;
      const float* xr = x_scale + r0;
      float* yr = y + r0 * n;
      int64_t b = 0;
      for (; b + kNB <= blocks; b += kNB)
        rows_out<8, kNB, false>(qr, rows, kp, packed, b, colsum, w_scale, xr, bias, n, yr);
      for (; b < blocks; ++b)
        rows_out<8, 1, false>(qr, rows, kp, packed, b, colsum, w_scale, xr, bias, n, yr);
    }
  });
}
#endif

#if defined(W8A8_AMX)
// AMX: one tile product multiplies 16 rows by 64 k of 16 channels, so a 16-row verify reads
// each weight once and costs about what one row does. The tiles hold the same u8 codes and
// packed weights as the VNNI path (a B tile is 16 groups of [16 channels][4 k], 64 bytes a
// row: the packed layout as it stands), the integer sums are exact, and the epilogue is
// shared, so both paths give the same bits. Tiles 0-3 accumulate 4 channel blocks, 4 and 5
// take alternate A (activation) tiles, 6 and 7 alternate B (weight) tiles.
constexpr int64_t kTileRows = 16;
constexpr int64_t kTileK = 64;  // bytes of k per tile row

#define AMX_STEP(A, B, J)                    \
  if (nb > J) {                              \
    _tile_loadd(B, wb[J] + at, kTileK);      \
    _tile_dpbusd(J, A, B);                   \
  }

// The integer sums of 16 code rows from a0 (row stride kp, rows past the real ones hold code
// 0) against nb <= 4 channel blocks, block j's packed weights at wb[j], into sums[j]
void amx_sums(const uint8_t* a0, int64_t kp, const int8_t* const* wb, int nb,
              int32_t (*sums)[kTileRows][kLanes]) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const int64_t chunks = kp / kTileK;
  for (int64_t c = 0; c < chunks; c += 2) {
    int64_t at = c * kTileRows * kTileK;
    _tile_loadd(4, a0 + c * kTileK, kp);
    AMX_STEP(4, 6, 0)
    AMX_STEP(4, 7, 1)
    AMX_STEP(4, 6, 2)
    AMX_STEP(4, 7, 3)
    if (c + 1 == chunks) break;
    at += kTileRows * kTileK;
    _tile_loadd(5, a0 + (c + 1) * kTileK, kp);
    AMX_STEP(5, 7, 0)
    AMX_STEP(5, 6, 1)
    AMX_STEP(5, 7, 2)
    AMX_STEP(5, 6, 3)
  }
  _tile_stored(0, sums[0], kLanes * 4);
  _tile_stored(1, sums[1], kLanes * 4);
  _tile_stored(2, sums[2], kLanes * 4);
  _tile_stored(3, sums[3], kLanes * 4);
}

// 16 code rows from a0 against nb <= 4 channel blocks from block b, real rows [r0, r1)
// written to y
void amx_rows(const uint8_t* a0, int64_t kp, const int8_t* packed, int64_t b, int nb,
              const int32_t* colsum, const float* w_scale, const float* x_scale,
              const float* bias, int64_t r0, int64_t r1, int64_t n, float* y) {
  const int64_t stride = kLanes * kp;  // one block's packed bytes
  const int8_t* w0 = packed + b * stride;
  const int8_t* wb[4] = {w0, w0 + stride, w0 + 2 * stride, w0 + 3 * stride};
  alignas(64) int32_t sums[4][kTileRows][kLanes];
  amx_sums(a0, kp, wb, nb, sums);
  for (int j = 0; j < nb; ++j) {
    const Epilogue e(b + j, n, colsum, w_scale, bias);
    if (!e.valid) break;
    for (int64_t r = r0; r < r1; ++r)
      e.store(_mm512_load_si512(sums[j][r - r0]), x_scale[r], y + r * n);
  }
}

// amx_rows for a fused gate/up projection (its first half of channels the gate, the second
// the up projection): gate blocks g, g + 1 and up blocks g + u, g + 1 + u (u: the gate's
// blocks), rows [r0, r1) written as silu(gate) * up (swiglu16) to y, rows of 16 u floats.
// The same sums and epilogue as amx_rows, so the same bits as silu_mul over linear()'s output.
void amx_glu_rows(const uint8_t* a0, int64_t kp, const int8_t* packed, int64_t g, int64_t u,
                  const int32_t* colsum, const float* w_scale, const float* x_scale,
                  const float* bias, int64_t r0, int64_t r1, int64_t n, float* y) {
  const int64_t stride = kLanes * kp;
  const int8_t* wb[4] = {packed + g * stride, packed + (g + 1) * stride,
                         packed + (g + u) * stride, packed + (g + u + 1) * stride};
  alignas(64) int32_t sums[4][kTileRows][kLanes];
  amx_sums(a0, kp, wb, 4, sums);
  const int64_t half = u * kLanes;
  for (int j = 0; j < 2; ++j) {
    const Epilogue eg(g + j, n, colsum, w_scale, bias), eu(g + u + j, n, colsum, w_scale, bias);
    for (int64_t r = r0; r < r1; ++r) {
      const __m512 gv = eg.value(_mm512_load_si512(sums[j][r - r0]), x_scale[r]);
      const __m512 uv = eu.value(_mm512_load_si512(sums[2 + j][r - r0]), x_scale[r]);
      _mm512_storeu_ps(y + r * half + (g + j) * kLanes, swiglu16(gv, uv));
    }
  }
}
#undef AMX_STEP
#endif

// Rows from which a call runs on AMX (0: never); set by amx_min_rows(). AMX pads every call
// to 16 rows and does not overlap its tile work with the weight reads as well as VNNI does.
// Since VNNI's 8x2 step and its prefetch, VNNI keeps up to 10 rows: all 120 decoder products
// of the default model at 6 rows took 3.80 ms on VNNI against 4.30 on AMX, at 8 rows 3.98
// against 4.40, at 10 4.44-4.53 against 4.52-4.56, at 11 4.86 against 4.65; the LM head at 8
// rows 0.62 against 0.72 ms, at 11 0.76 against 0.73 (2-core Xeon with AMX, weights in L3,
// medians interleaved in one process); in the engine, interleaved per prompt, 1.8-2.2% faster
// on Spec-Bench (aasd, aasd-exact, pld-tree) and 0.5-1.2% on Multi-News than from 6 rows,
// the same tokens. The same bits either way: the integer sums are exact.
int64_t g_amx_rows = 11;

#if defined(W8A8_AMX)
// Whether a call of m rows (k padded to kp) runs on AMX tiles
bool on_amx(int64_t m, int64_t kp) {
  return g_amx_rows > 0 && m >= g_amx_rows && kp % kTileK == 0 && amx_permitted();
}

// A prompt chunk's AMX rows go in blocks of this many, each through every channel chunk, so
// that a block's codes stay in L1/L2 while the weights stream past (every 64 channels through
// all of a 2,000-row prompt's codes re-read megabytes per chunk: 20-25% slower)
constexpr int64_t kRowBlock = 128;
#endif

}  // namespace

// [N, K] int8 -> ([N/16 * 16 * K/4 * 4] int8 packed, [N/16 * 16] int32 128 * row sums)
std::vector<at::Tensor> pack(at::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kChar, "int8 [N, K] weight");
  weight = weight.contiguous();
  const int64_t n = weight.size(0), k = weight.size(1);
  const int64_t np = round_up(n, kLanes), kp = round_up(k, kGroup), groups = kp / kGroup;
  auto packed = at::zeros({np * kp}, at::kChar);
  auto colsum = at::zeros({np}, at::kInt);
  const int8_t* w = weight.data_ptr<int8_t>();
  int8_t* p = packed.data_ptr<int8_t>();
  int32_t* cs = colsum.data_ptr<int32_t>();
  for (int64_t row = 0; row < n; ++row) {
    const int64_t b = row / kLanes, c = row % kLanes;
    int32_t s = 0;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t g = i / kGroup;
      p[((b * groups + g) * kLanes + c) * kGroup + i % kGroup] = w[row * k + i];
      s += w[row * k + i];
    }
    cs[row] = 128 * s;
  }
  return {packed, colsum};
}

namespace {

// The codes of x's M rows (each quantised with its own scale, into xs), K padded to kp, with
// mp - M more rows of code 0 (whole tiles)
std::unique_ptr<Code[]> quantize_input(const at::Tensor& x, int64_t mp, int64_t kp, float* xs) {
  const int64_t m = x.size(0), k = x.size(1);
  // uninitialised: quantize_rows writes rows [0, m) whole (k's padding too), so only the tile
  // rows past m are filled (code 0); a zero-filled 2,000-row prompt's buffer was a serial
  // memset of megabytes per product while the other thread waited
  std::unique_ptr<Code[]> q(new Code[mp * kp]);
  std::fill(q.get() + m * kp, q.get() + mp * kp,
            static_cast<Code>(std::is_unsigned<Code>::value ? 128 : 0));
  // a prompt chunk's rows split across threads (each row on its own: the same codes); a few
  // rows are not worth the fork
  const float* xp = x.data_ptr<float>();
  const int64_t qgrain = std::max<int64_t>(kQuantizeGrain, (m + 1) / 2);
  at::parallel_for(0, m, qgrain, [&](int64_t r0, int64_t r1) {
    quantize_rows(xp + r0 * k, r1 - r0, k, kp, q.get() + r0 * kp, xs + r0);
  });
  return q;
}

}  // namespace

// x [M, K] fp32 -> y [M, N] fp32
at::Tensor linear(at::Tensor x, at::Tensor packed, at::Tensor colsum,
                     at::Tensor w_scale, c10::optional<at::Tensor> bias, int64_t n) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "fp32 [M, K] input");
  x = x.contiguous();
  const int64_t m = x.size(0), k = x.size(1), kp = round_up(k, kGroup);
  const int64_t blocks = round_up(n, kLanes) / kLanes;
  TORCH_CHECK(packed.numel() == blocks * kLanes * kp, "packed weight does not match K, N");
  auto y = at::empty({m, n}, at::kFloat);
  if (m == 0) return y;
#if defined(W8A8_AMX)
  const bool amx = on_amx(m, kp);
  const int64_t mp = amx ? round_up(m, kTileRows) : m;  // whole tiles: padded with code 0
#else
  const int64_t mp = m;
#endif
  std::vector<float> xs(m);
  const std::unique_ptr<Code[]> q = quantize_input(x, mp, kp, xs.data());
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const int8_t* pp = packed.data_ptr<int8_t>();
  const int32_t* cp = colsum.data_ptr<int32_t>();
  const float* sp = w_scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#if defined(W8A8_AMX)
  if (amx) {
    constexpr int64_t kNB = 4;
    const int64_t chunks = (blocks + kNB - 1) / kNB;
    const int64_t grain = std::max<int64_t>(1, 65536 / (kNB * kLanes * kp));
    // a prompt chunk: blocks of kRowBlock rows
    if (m >= 2 * kRowBlock) {
      const int64_t rblocks = (m + kRowBlock - 1) / kRowBlock;
      at::parallel_for(0, rblocks, 1, [&](int64_t q0, int64_t q1) {
        amx_configure();
        for (int64_t rb = q0; rb < q1; ++rb) {
          const int64_t r0 = rb * kRowBlock, r1 = std::min(m, r0 + kRowBlock);
          for (int64_t c = 0; c < chunks; ++c) {
            const int64_t b = c * kNB;
            const int nb = static_cast<int>(std::min(kNB, blocks - b));
            for (int64_t r = r0; r < r1; r += kTileRows)
              amx_rows(q.get() + r * kp, kp, pp, b, nb, cp, sp, xs.data(), bp, r,
                       std::min(m, r + kTileRows), n, yp);
          }
        }
        _tile_release();
      });
      return y;
    }
    for_block_shares(
        blocks, kNB, grain,
        [&](int64_t b, int64_t nb) {
          for (int64_t r = 0; r < m; r += kTileRows)
            amx_rows(q.get() + r * kp, kp, pp, b, static_cast<int>(nb), cp, sp, xs.data(), bp,
                     r, std::min(m, r + kTileRows), n, yp);
        },
        amx_configure, [] { _tile_release(); });
    return y;
  }
#endif
  // Rows and 16-channel blocks per step, the VNNI accumulators in 32 registers: 1-4 rows
  // against 4 blocks, 5-8 rows against 2 (16 accumulators), and from 9 rows groups of 16
  // against one block, each block's weights read once per group. A 16-row verify in groups
  // of 8 against 2 blocks read every weight from memory in the first group and again from
  // L1/L2 in the second, whose arithmetic then waited for nothing to overlap it: all 120
  // products of the default model took 7.0 ms against 3.7 at one row, in groups of 16 6.2
  // (2-core AMD EPYC, interleaved in one process, with kAhead's prefetch), while in L1 the 8x2
  // and 16x1 steps both run at 90-98% of vpdpbusd's peak. More than 16 rows
  // (a big tree; prompt chunks from kPromptRows go through prompt_out) go 16 at a time through
  // every block of a thread's share, so a group's codes stay in L1 while the share's weights
  // come from L2 (every block through all of a 2,000-row chunk's codes re-read megabytes per
  // block). AVX2 has 16 registers,
  // and 4 rows x 4 blocks x 2 accumulators would spill (16 rows cost ~1.6x as much with 4 as
  // with 1). Same bits whatever the grouping: a block's sums do not depend on it.
  const Code* qp = q.get();
  const float* xsp = xs.data();
#if defined(W8A8_VNNI)
  if (m >= kPromptRows) {
    prompt_out(qp, m, kp, pp, blocks, cp, sp, xsp, bp, n, yp);
    return y;
  }
  if (m > 8) {
    constexpr int64_t kRows = 16;
    const int64_t grain = std::max<int64_t>(1, 65536 / (kLanes * kp));
    for_shares(blocks, 1, grain, [&](int64_t b0, int64_t b1) {
      for (int64_t r = 0; r < m; r += kRows) {
        const int64_t rows = std::min(kRows, m - r);
        for (int64_t b = b0; b < b1; ++b)
          tail_out<1, kRows>(rows, qp, kp, pp, b, cp, sp, xsp, bp, r, n, yp);
      }
    });
    return y;
  }
  const int64_t nbk = m > 4 ? 2 : 4;
#else
  const int64_t nbk = 1;
#endif
  // a thread's share should be at least ~64 KB of weights, or the fork costs more than it saves
  const int64_t grain = std::max<int64_t>(1, 65536 / (nbk * kLanes * kp));
  for_block_shares(blocks, nbk, grain, [&](int64_t b, int64_t nb) {
#if defined(W8A8_VNNI)
    if (m > 4) {
      if (nb == 2) {
        rows_out<8, 2>(qp, m, kp, pp, b, cp, sp, xsp, bp, n, yp);
      } else {
        rows_out<8, 1>(qp, m, kp, pp, b, cp, sp, xsp, bp, n, yp);
      }
      return;
    }
#endif
    if (nb == 4) {
      rows_out<4, 4>(qp, m, kp, pp, b, cp, sp, xsp, bp, n, yp);
    } else {
      for (int64_t bb = b; bb < b + nb; ++bb)
        rows_out<4, 1>(qp, m, kp, pp, bb, cp, sp, xsp, bp, n, yp);
    }
  });
  return y;
}

at::Tensor silu_mul(at::Tensor gu);

// silu_mul(linear(x, ...)) of a fused gate/up projection (n channels: the gate's, then the up
// projection's), [M, n / 2]. A prompt slice on AMX runs in one pass, each tile step's gate and
// up blocks side by side and their product written at once (amx_glu_rows): the [M, n] output
// and its second pass never go through memory. The same bits either way.
at::Tensor gate_up_silu(at::Tensor x, at::Tensor packed, at::Tensor colsum, at::Tensor w_scale,
                        c10::optional<at::Tensor> bias, int64_t n) {
#if defined(W8A8_AMX)
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat, "fp32 [M, K] input");
  x = x.contiguous();
  const int64_t m = x.size(0), k = x.size(1), kp = round_up(k, kGroup);
  const bool fused = n % (4 * kLanes) == 0 && m >= 2 * kRowBlock && packed.numel() == n * kp &&
                     on_amx(m, kp);
  if (fused) {
    const int64_t u = n / kLanes / 2, half = n / 2;
    auto y = at::empty({m, half}, at::kFloat);
    std::vector<float> xs(m);
    const std::unique_ptr<Code[]> q = quantize_input(x, round_up(m, kTileRows), kp, xs.data());
    const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
    const int8_t* pp = packed.data_ptr<int8_t>();
    const int32_t* cp = colsum.data_ptr<int32_t>();
    const float* sp = w_scale.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    const int64_t rblocks = (m + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, rblocks, 1, [&](int64_t q0, int64_t q1) {
      amx_configure();
      for (int64_t rb = q0; rb < q1; ++rb) {
        const int64_t r0 = rb * kRowBlock, r1 = std::min(m, r0 + kRowBlock);
        for (int64_t g = 0; g < u; g += 2)
          for (int64_t r = r0; r < r1; r += kTileRows)
            amx_glu_rows(q.get() + r * kp, kp, pp, g, u, cp, sp, xs.data(), bp, r,
                         std::min(m, r + kTileRows), n, yp);
      }
      _tile_release();
    });
    return y;
  }
#endif
  return silu_mul(linear(x, packed, colsum, w_scale, bias, n));
}

// Rows from which linear() runs on AMX where it is compiled in (0: never); returns the old value
int64_t amx_min_rows(int64_t rows) {
  const int64_t old = g_amx_rows;
  g_amx_rows = rows;
  return old;
}

std::string isa() {
#if defined(W8A8_AMX)
  return amx_permitted() ? "amx-int8" : "avx512-vnni";
#elif defined(W8A8_VNNI)
  return "avx512-vnni";
#elif defined(W8A8_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}
