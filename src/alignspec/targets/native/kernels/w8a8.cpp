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

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define W8A8_VNNI 1
#include <immintrin.h>
#elif defined(__AVX2__)
#define W8A8_AVX2 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kLanes = 16;  // output channels per packed block
constexpr int64_t kGroup = 4;   // consecutive k per 32-bit lane

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

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
// Rows [r0, r0 + MR) against NB consecutive 16-channel blocks from block b, written to y.
// ``a`` holds the activation codes shifted to u8 (q + 128); the shift is undone by colsum.
template <int MR, int NB>
void block_out(const uint8_t* a, int64_t kp, const int8_t* packed, int64_t b,
               const int32_t* colsum, const float* w_scale, const float* x_scale,
               const float* bias, int64_t r0, int64_t n, float* y) {
  const int64_t groups = kp / kGroup;
  const int8_t* w0 = packed + b * kLanes * kp;
  const uint8_t* a0 = a + r0 * kp;
  __m512i acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i w[NB];
    for (int j = 0; j < NB; ++j)
      w[j] = _mm512_loadu_si512(w0 + (j * groups + g) * kLanes * kGroup);
    for (int r = 0; r < MR; ++r) {
      int32_t four;
      std::memcpy(&four, a0 + r * kp + g * kGroup, 4);
      const __m512i av = _mm512_set1_epi32(four);
      for (int j = 0; j < NB; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, w[j]);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const int64_t col = (b + j) * kLanes;
    const int64_t left = n - col;
    if (left <= 0) break;
    const __mmask16 mask = left >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    const __m512i cs = _mm512_loadu_si512(colsum + col);
    const __m512 ws = _mm512_maskz_loadu_ps(mask, w_scale + col);
    const __m512 bs = bias != nullptr ? _mm512_maskz_loadu_ps(mask, bias + col) : __m512();
    for (int r = 0; r < MR; ++r) {
      __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], cs));
      v = _mm512_mul_ps(v, ws);
      v = _mm512_mul_ps(v, _mm512_set1_ps(x_scale[r0 + r]));
      if (bias != nullptr) v = _mm512_add_ps(v, bs);
      _mm512_mask_storeu_ps(y + (r0 + r) * n + col, mask, v);
    }
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

template <int MR, int NB>
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

template <int NB>
void rows_out(const Code* q, int64_t m, int64_t kp, const int8_t* packed, int64_t b,
              const int32_t* colsum, const float* w_scale, const float* x_scale,
              const float* bias, int64_t n, float* y) {
  int64_t r = 0;
  for (; r + 4 <= m; r += 4)
    block_out<4, NB>(q, kp, packed, b, colsum, w_scale, x_scale, bias, r, n, y);
  switch (m - r) {
    case 3: block_out<3, NB>(q, kp, packed, b, colsum, w_scale, x_scale, bias, r, n, y); break;
    case 2: block_out<2, NB>(q, kp, packed, b, colsum, w_scale, x_scale, bias, r, n, y); break;
    case 1: block_out<1, NB>(q, kp, packed, b, colsum, w_scale, x_scale, bias, r, n, y); break;
    default: break;
  }
}

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
  std::vector<Code> q(m * kp);
  std::vector<float> xs(m);
  quantize_rows(x.data_ptr<float>(), m, k, kp, q.data(), xs.data());
  const float* bp = bias.has_value() ? bias->data_ptr<float>() : nullptr;
  const int8_t* pp = packed.data_ptr<int8_t>();
  const int32_t* cp = colsum.data_ptr<int32_t>();
  const float* sp = w_scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  // 16-channel blocks per weight load: AVX2 has 16 registers, and 4 rows x 4 blocks x 2
  // accumulators would spill (measured: 16 rows cost ~1.6x as much with 4 as with 1)
#if defined(W8A8_VNNI)
  constexpr int64_t kNB = 4;
#else
  constexpr int64_t kNB = 1;
#endif
  const int64_t chunks = (blocks + kNB - 1) / kNB;
  // a thread's share should be at least ~64 KB of weights, or the fork costs more than it saves
  const int64_t grain = std::max<int64_t>(1, 65536 / (kNB * kLanes * kp));
  at::parallel_for(0, chunks, grain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b = c * kNB;
      if (b + kNB <= blocks) {
        rows_out<kNB>(q.data(), m, kp, pp, b, cp, sp, xs.data(), bp, n, yp);
      } else {
        for (int64_t bb = b; bb < blocks; ++bb)
          rows_out<1>(q.data(), m, kp, pp, bb, cp, sp, xs.data(), bp, n, yp);
      }
    }
  });
  return y;
}

std::string isa() {
#if defined(W8A8_VNNI)
  return "avx512-vnni";
#elif defined(W8A8_AVX2)
  return "avx2";
#else
  return "scalar";
#endif
}
