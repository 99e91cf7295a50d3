// RMSNorm for the few rows of a decode step or a draft tree (CPU, fp32).
//
// torch's rms_norm runs as half a dozen ops, about 50 us per call on a 576-wide row: 61 calls
// are a tenth of an int8 decode step. Here one call per norm, one row at a time (so a row's
// result never depends on the other rows), its sum of squares in double in index order. A
// prompt chunk's rows are split across threads (with the SwiGLU product, 2000-token int8
// prefills were 8% faster).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

namespace {

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

void norm_range(const float* x, const float* w, int64_t r0, int64_t r1, int64_t h, float eps,
                float* y) {
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) norm_block<8>(x, w, r, h, eps, y);
  for (; r + 4 <= r1; r += 4) norm_block<4>(x, w, r, h, eps, y);
  for (; r < r1; ++r) norm_block<1>(x, w, r, h, eps, y);
}

// Rows a thread takes at least: a prompt chunk's norms run on every thread (at 2000 rows
// they were a tenth of the prefill on one), a decode step's few rows on one (the fork would
// cost more). Each row is computed alike however the rows are split.
constexpr int64_t kGrain = 64;

// ``delta``: added to x in place first (the residual), or nullptr
void norm_rows(float* x, const float* delta, const float* w, int64_t m, int64_t h, float eps,
               float* y) {
  const auto rows = [&](int64_t r0, int64_t r1) {
    if (delta != nullptr)
      for (int64_t i = r0 * h; i < r1 * h; ++i) x[i] += delta[i];
    norm_range(x, w, r0, r1, h, eps, y);
  };
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

// x += delta in place (the residual), then rms_norm(x, w, eps)
at::Tensor add_rms_norm_(at::Tensor x, at::Tensor delta, at::Tensor w, double eps) {
  w = w.contiguous();
  check(x, w);
  delta = delta.contiguous();
  TORCH_CHECK(delta.sizes() == x.sizes() && delta.scalar_type() == at::kFloat,
              "delta shaped as x");
  auto y = at::empty_like(x);
  norm_rows(x.data_ptr<float>(), delta.data_ptr<float>(), w.data_ptr<float>(), x.size(0),
            x.size(1), static_cast<float>(eps), y.data_ptr<float>());
  return y;
}
