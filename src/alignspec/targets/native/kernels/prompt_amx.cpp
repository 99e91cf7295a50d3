// A prompt chunk's causal attention in bf16 on AMX (head dimension 64): the int8 model's
// prefill where the CPU has AMX-BF16, in place of torch's bf16 SDPA, which reaches ~10% of the
// units' peak on SmolLM2's 64-wide heads (2-core Xeon: 8.8 ms a layer at 2,000 tokens).
//
// A task is 16 query rows of one head. Its scores are computed transposed, keys x rows
// (S^T = K Q^T: the cache's key rows are A tiles as they lie, the 16 queries a pair-packed B
// tile per 32 dimensions), so the softmax over a row's keys runs down the columns: maximum,
// exponentials and sum are vertical vector operations, one lane per query row. All of a task's
// scores are kept (64 bytes a key), so no running rescale is needed, and the output is
// accumulated transposed too (O^T = V^T P^T, values transposed once per call) in four tiles.
//
// Rounding, as in torch's bf16 SDPA: queries (scaled), keys, values and probabilities are bf16,
// every sum fp32. The exponential is a cubic good to 8e-4, below the bf16 rounding (up to
// 2e-3) of the probabilities it feeds. Prompt attention need not match decoding bit for bit:
// every method shares the prefill (the int8 model's decode rows use attend_rows).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16_softmax.h"
#include "chunk.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512BW__)
#define PROMPT_AMX 1
#include "amx.h"
#endif

namespace {

#if defined(PROMPT_AMX)
constexpr int64_t kRows = 16;  // query rows per task (one tile's rows or columns)

// Rows r0 .. r0 + 15 of one head (q: [rows][heads * 64] fp32 rows, times scale: the chunk's
// rows at slots start ..), against one KV head's keys k ([>= end][64] bf16) and transposed
// values vt (transpose_values' blocks). s: scratch of 16 floats per key; p: of 2 KB.
void task(const float* q, int64_t qstride, float scale, int64_t rows, int64_t r0,
          const uint16_t* k, const uint16_t* vt, int64_t start, float* s, uint16_t* p,
          float* out, int64_t ostride) {
  const int64_t valid = std::min<int64_t>(kRows, rows - r0);
  const int64_t len = std::min(start + r0 + kRows, start + rows);  // keys any row sees
  // queries as B tiles: qt[pair][row][2] for pairs 0-15 (dims 0-31) and 16-31 (dims 32-63)
  alignas(64) uint16_t qt[32][kRows][2];
  pack_query_pairs(q, qstride, scale, r0, valid, reinterpret_cast<__m512i*>(qt));
  _tile_loadd(1, qt[0], 64);
  _tile_loadd(2, qt[16], 64);
  // scores, 32 keys at a time in two accumulators (the last block's missing keys read from a
  // zeroed copy), each block masked and folded into the rows' maxima while still in L1:
  // row i sees key j iff j <= start + r0 + i
  const __m512i pos = lane_positions(start + r0);
  const int64_t diag = start + r0;  // keys below it every row sees
  // a hidden key's score: finite, so that its exponential comes out 0 without a mask
  const __m512 hide = _mm512_set1_ps(-1e30f);
  __m512 best = hide;
  for (int64_t j = 0; j < len; j += 32) {
    key_block_scores(k + j * 64, std::min<int64_t>(32, len - j), s + j * kRows);
    const int64_t stop = std::min<int64_t>(len, j + 32);
    if (stop <= diag) {
      for (int64_t i = j; i < stop; ++i)
        best = _mm512_max_ps(best, _mm512_load_ps(s + i * kRows));
    } else {
      for (int64_t i = j; i < stop; ++i) {
        const __mmask16 see =
            _mm512_cmpge_epi32_mask(pos, _mm512_set1_epi32(static_cast<int>(i)));
        const __m512 x = _mm512_mask_mov_ps(hide, see, _mm512_load_ps(s + i * kRows));
        _mm512_store_ps(s + i * kRows, x);
        best = _mm512_max_ps(best, x);
      }
    }
  }
  const Exp2Cubic exp2(best);
  // exponentials of 32 keys at a time into one of two 1 KB probability tiles, then their
  // products with the values: O^T = V^T P^T in four tiles of 16 dims x 16 rows. One loop, so
  // the out-of-order core runs the next block's exponentials beside this block's tile work.
  __m512 den = _mm512_setzero_ps();
  const __m512 zero = _mm512_setzero_ps();
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t j = 0; j < len; j += 32) {
    uint16_t* pj = p + ((j / 32) % 2) * 16 * 32;
    if (j + 32 <= len) {
      for (int64_t pr = 0; pr < 16; ++pr) {
        const __m512 e0 = exp2(_mm512_load_ps(s + (j + 2 * pr) * kRows));
        const __m512 e1 = exp2(_mm512_load_ps(s + (j + 2 * pr + 1) * kRows));
        den = _mm512_add_ps(_mm512_add_ps(den, e0), e1);
        _mm512_store_si512(pj + pr * 32, interleave_bf16(e0, e1));
      }
    } else {  // the last keys: past len, probability 0
      for (int64_t pr = 0; pr < 16; ++pr) {
        const int64_t i = j + 2 * pr;
        const __m512 e0 = i < len ? exp2(_mm512_load_ps(s + i * kRows)) : zero;
        const __m512 e1 = i + 1 < len ? exp2(_mm512_load_ps(s + (i + 1) * kRows)) : zero;
        den = _mm512_add_ps(_mm512_add_ps(den, e0), e1);
        _mm512_store_si512(pj + pr * 32, interleave_bf16(e0, e1));
      }
    }
    const uint16_t* vj = vt + j * 64;
    _tile_loadd(5, pj, 64);
    _tile_loadd(4, vj, 64);
    _tile_dpbf16ps(0, 4, 5);
    _tile_loadd(6, vj + 16 * 32, 64);
    _tile_dpbf16ps(1, 6, 5);
    _tile_loadd(7, vj + 32 * 32, 64);
    _tile_dpbf16ps(2, 7, 5);
    _tile_loadd(4, vj + 48 * 32, 64);
    _tile_dpbf16ps(3, 4, 5);
  }
  alignas(64) float ot[64][kRows];
  _tile_stored(0, ot[0], 64);
  _tile_stored(1, ot[16], 64);
  _tile_stored(2, ot[32], 64);
  _tile_stored(3, ot[48], 64);
  write_rows(ot, den, r0, valid, out, ostride);
}
#endif

}  // namespace

bool causal_attend_dpbf16_ok(int64_t d);
at::Tensor causal_attend_dpbf16(at::Tensor q, at::Tensor keys, at::Tensor values, int64_t start,
                                double scale);

// Whether causal_attend_bf16 runs here, head dimension 64: on AMX-BF16 (compiled in and
// granted), else with AVX512-BF16 dot products (prompt_bf16.cpp), the same roundings
bool causal_attend_bf16_ok(int64_t d) {
#if defined(PROMPT_AMX)
  if (d == 64 && amx_permitted()) return true;
#endif
  return causal_attend_dpbf16_ok(d);
}

#if defined(PROMPT_AMX)
namespace {

// causal_attend_bf16 on AMX tiles
at::Tensor amx_attend(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                      int64_t start, double scale) {
  check_chunk(q, keys, values, start, at::kBFloat16);
  TORCH_CHECK(q.size(2) == 64, "causal_attend_bf16 needs D = 64");
  const int64_t rows = q.size(0), heads = q.size(1);
  auto out = at::empty({rows, heads * 64}, q.options());
  if (rows == 0) return out;
  const int64_t kv = keys.size(0), end = start + rows, groups = heads / kv;
  auto qs = q.contiguous();
  const int64_t padded = (end + 31) / 32 * 32;
  auto vt = at::empty({kv, 64, padded}, keys.options());
  const auto* kp = reinterpret_cast<const uint16_t*>(keys.data_ptr<at::BFloat16>());
  const auto* vp = reinterpret_cast<const uint16_t*>(values.data_ptr<at::BFloat16>());
  auto* vtp = reinterpret_cast<uint16_t*>(vt.data_ptr<at::BFloat16>());
  const int64_t ks = keys.stride(0), vs = values.stride(0);
  at::parallel_for(0, kv, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      transpose_values(vp + g * vs, end, padded, vtp + g * 64 * padded);
  });
  // tasks (head, block of 16 rows), blocks paired first with last so that every pair of
  // tasks attends to about the same number of keys
  const int64_t blocks = (rows + kRows - 1) / kRows, pairs = (blocks + 1) / 2;
  const float* qp = qs.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, heads * pairs, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> sbuf(padded * kRows + 16);
    std::vector<uint16_t> pbuf(2 * 16 * 32 + 32);
    float* s = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(sbuf.data()) + 63) &
                                        ~uintptr_t(63));
    auto* p = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(pbuf.data()) + 63) &
                                          ~uintptr_t(63));
    amx_configure();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / pairs, i = t % pairs, g = h / groups;
      for (const int64_t blk : {i, blocks - 1 - i}) {
        task(qp + h * 64, heads * 64, static_cast<float>(scale), rows, blk * kRows,
             kp + g * ks, vtp + g * 64 * padded, start, s, p, op + h * 64, heads * 64);
        if (blocks - 1 - i == i) break;
      }
    }
    _tile_release();
  });
  return out;
}

}  // namespace
#endif

// q [R, H, 64] fp32 (rotated, not scaled): a prompt chunk at cache slots start .. start + R - 1
// whose keys and values are already written; keys, values: one bf16 cache layer
// [KV, >= start + R, 64] with contiguous rows. Row r sees slots 0 .. start + r. Returns
// [R, H * 64] fp32.
at::Tensor causal_attend_bf16(at::Tensor q, at::Tensor keys, at::Tensor values, int64_t start,
                              double scale) {
#if defined(PROMPT_AMX)
  if (amx_permitted()) return amx_attend(q, keys, values, start, scale);
#endif
  return causal_attend_dpbf16(q, keys, values, start, scale);
}
