// RMSNorm for the few rows of a decode step or a draft tree (CPU, fp32).
//
// torch's rms_norm runs as half a dozen ops, about 50 us per call on a 576-wide row: 61 calls
// are a tenth of an int8 decode step. Here one call per norm, one row at a time (so a row's
// result never depends on the other rows), its sum of squares in double by one fixed sequence
// of vector adds (or, without AVX-512, one chain in index order). A
// prompt chunk's rows are split across threads (with the SwiGLU product, 2000-token int8
// prefills were 8% faster).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
// One row: x += delta (when given), then y = x / sqrt(mean(x^2) + eps) * w. The squares add
// up in double in four 8-lane chains over 16-value steps (masked zeros pad the tail), reduced
// by one fixed sequence: the same for every row wherever it sits, so rows stay independent.
// The scalar form this replaced (one chain per row in index order) cost 0.3 us a 576-wide
// row, a fifth of a 16-row layer's norms and SwiGLU.
void norm_row(float* x, const float* delta, const float* w, int64_t h, float eps, float* y) {
  __m512d acc[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(),
                    _mm512_setzero_pd()};
  for (int64_t i = 0; i < h; i += 16) {
    const int64_t left = h - i;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    if (delta != nullptr) {
      v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, delta + i));
      _mm512_mask_storeu_ps(x + i, m, v);
    }
    const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
    const int c = static_cast<int>((i / 16) & 1) * 2;
    acc[c] = _mm512_fmadd_pd(lo, lo, acc[c]);
    acc[c + 1] = _mm512_fmadd_pd(hi, hi, acc[c + 1]);
  }
  const __m512d both = _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3]));
  const __m256d half = _mm256_add_pd(_mm512_castpd512_pd256(both), _mm512_extractf64x4_pd(both, 1));
  const __m128d quarter = _mm_add_pd(_mm256_castpd256_pd128(half), _mm256_extractf128_pd(half, 1));
  const double sq = _mm_cvtsd_f64(_mm_add_sd(quarter, _mm_unpackhi_pd(quarter, quarter)));
  const __m512 inv = _mm512_set1_ps(1.0f / std::sqrt(static_cast<float>(sq / h) + eps));
  for (int64_t i = 0; i < h; i += 16) {
    const int64_t left = h - i;
    const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1u);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv);
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i)));
  }
}

void norm_range(float* x, const float* delta, const float* w, int64_t r0, int64_t r1, int64_t h,
                float eps, float* y) {
  for (int64_t r = r0; r < r1; ++r)
    norm_row(x + r * h, delta != nullptr ? delta + r * h : nullptr, w, h, eps, y + r * h);
}
#else
// Rows [r0, r0 + R): each row's sum is its own chain in index order, R chains interleaved so
// the adds' latency overlaps (one chain alone is bound by it: ~1 us per 576-wide row)
template <int R>
void norm_block(const float* x, const float* w, int64_t r0, int64_t h, float eps, float* y) {
  double sq[R] = {};
  for (int64_t i = 0; i < h; ++i)
    for (int j = 0; j < R; ++j) {
      const double v = x[(r0 + j) * h + i];
      sq[j] += v * v;
    }
  for (int j = 0; j < R; ++j) {
    const float inv = 1.0f / std::sqrt(static_cast<float>(sq[j] / h) + eps);
    const float* row = x + (r0 + j) * h;
    float* out = y + (r0 + j) * h;
    for (int64_t i = 0; i < h; ++i) out[i] = (row[i] * inv) * w[i];
  }
}

void norm_range(float* x, const float* delta, const float* w, int64_t r0, int64_t r1, int64_t h,
                float eps, float* y) {
  if (delta != nullptr)
    for (int64_t i = r0 * h; i < r1 * h; ++i) x[i] += delta[i];
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) norm_block<8>(x, w, r, h, eps, y);
  for (; r + 4 <= r1; r += 4) norm_block<4>(x, w, r, h, eps, y);
  for (; r < r1; ++r) norm_block<1>(x, w, r, h, eps, y);
}
#endif

// Rows a thread takes at least: a prompt chunk's norms run on every thread (at 2000 rows
// they were a tenth of the prefill on one), a decode step's few rows on one (the fork would
// cost more). Each row is computed alike however the rows are split.
constexpr int64_t kGrain = 64;

// ``delta``: added to x in place first (the residual), or nullptr
void norm_rows(float* x, const float* delta, const float* w, int64_t m, int64_t h, float eps,
               float* y) {
  const auto rows = [&](int64_t r0, int64_t r1) { norm_range(x, delta, w, r0, r1, h, eps, y); };
  if (m < 2 * kGrain) {
    rows(0, m);  // parallel_for's own checks cost a decode step's norm a microsecond
  } else {
    at::parallel_for(0, m, kGrain, rows);
  }
}

void check(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "contiguous fp32 [M, H] rows");
  TORCH_CHECK(w.dim() == 1 && w.scalar_type() == at::kFloat && w.size(0) == x.size(1),
              "fp32 [H] weight");
}

}  // namespace

// y = x / sqrt(mean(x^2) + eps) * w, per row
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps) {
  x = x.contiguous();
  w = w.contiguous();
  check(x, w);
  auto y = at::empty_like(x);
  norm_rows(x.data_ptr<float>(), nullptr, w.data_ptr<float>(), x.size(0), x.size(1),
            static_cast<float>(eps), y.data_ptr<float>());
  return y;
}

// add_rms_norm_ with the normed rows written to ``out`` (contiguous, shaped as x, neither x's
// nor delta's memory): a prompt's MLP slices write their rows in place of their inputs
// instead of into a new tensor each, copied out again
void add_rms_norm_into(at::Tensor x, at::Tensor delta, at::Tensor w, double eps, at::Tensor out) {
  w = w.contiguous();
  check(x, w);
  delta = delta.contiguous();
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == at::kFloat,
              "delta shaped as x");
  TORCH_CHECK(out.sizes() == x.sizes() && out.scalar_type() == at::kFloat && out.is_contiguous(),
              "contiguous out shaped as x");
  norm_rows(x.data_ptr<float>(), delta.data_ptr<float>(), w.data_ptr<float>(), x.size(0),
            x.size(1), static_cast<float>(eps), out.data_ptr<float>());
}

// x += delta in place (the residual), then rms_norm(x, w, eps)
at::Tensor add_rms_norm_(at::Tensor x, at::Tensor delta, at::Tensor w, double eps) {
  auto y = at::empty_like(x);
  add_rms_norm_into(x, delta, w, eps, y);
  return y;
}
