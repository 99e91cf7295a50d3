// The decode/verify attention on AMX-BF16 tiles, for a bf16 cache (the int8 model where the
// CPU has AMX): lanes64's layout, one head-row per lane, with every head-row count in it
// (attend512_core and attend_split choose it for all units when amx_lanes() holds).
//
// Scores: a tile product gives the scores of 16 keys for all 16 lanes at once, transposed
// (S^T = K Q^T: the cache's key rows are the A tiles as they lie, the queries a pair-packed B
// tile per 32 dimensions), which is exactly lanes64's [slot][lane] layout. Each score is the
// tile's dot product of the key and the query rounded to bf16, so it depends only on that key
// and that query, never on the slot the key sits in or on the other lanes.
//
// Value sums: a tile product sums 32 slots at once in an order of its own, so which slots share a
// product must depend on the row alone. A head-row at position pos sums the whole 32-slot blocks
// below value_end(pos) (attend512.h) on tiles (O^T = V^T P^T, probabilities rounded to bf16, values
// from the cache's transposed blocks), then the rest in slot order with FMAs, as lanes64 does. The
// split sits at least kValueLag positions back, so for every draft-tree row up to that deep it lies
// among the committed slots, where slot == position, and the tree row splits its sum where the same
// token decoded alone does: bitwise the same result. A lane whose blocks ended gets probability 0
// in the later blocks' products, which add exactly 0. The softmax denominator is split the same way
// (its blocks' share summed on tiles too, from the same bf16 probabilities as the values' share).
// A one-row forward runs here too (its 3 head-rows in 16 lanes), because its bits must be the
// tree's.

#pragma once

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512BW__)
#define ATTEND_AMX 1
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "amx.h"
#include "attend512.h"
#include "bf16_softmax.h"

namespace {

// Whether this process's bf16-cache attention takes the AMX lanes (the same answer for every
// call, so a tree row and the same row decoded alone take the same path)
inline bool amx_lanes() { return amx_permitted(); }

// 32 slots' probabilities of the lanes on (the others 0) as a pair-packed B tile
inline void pack_probabilities(const float* p, __mmask16 on, uint16_t* pb) {
  for (int64_t pr = 0; pr < 16; ++pr) {
    const __m512 e0 = _mm512_maskz_load_ps(on, p + 2 * pr * kLanes);
    const __m512 e1 = _mm512_maskz_load_ps(on, p + (2 * pr + 1) * kLanes);
    _mm512_store_si512(pb + pr * 32, interleave_bf16(e0, e1));
  }
}

// An A tile whose first row is 32 ones (bf16) and the rest 0: its product with a block's
// probabilities is their sum per lane, the softmax denominator's share of that block
inline const uint16_t* ones_tile() {
  alignas(64) static const auto tile = [] {
    std::array<uint16_t, 16 * 32> t{};
    for (int64_t i = 0; i < 32; ++i) t[i] = 0x3F80;
    return t;
  }();
  return tile.data();
}

#define VALUE_TILE(C, A)                                  \
  if (ndt > (C)) {                                        \
    _tile_loadd(A, vj + (C) * 16 * 32, 64);               \
    _tile_dpbf16ps(C, A, 4);                              \
  }

// The value sums of each lane's whole 32-slot blocks below end[lane] (multiples of 32, hi the
// largest) on tiles, for ndt (2 or 4) x 16 dimensions from dim0: ot[c * 256 + m * 16 + lane]
// is dimension dim0 + 16 c + m; den[lane] the sum of the same probabilities. p: lanes64's
// probabilities [slot][16]; vt: one KV head's transposed value blocks. The calling thread's
// tiles must be configured (amx_configure). The next block's probabilities are packed while
// the tiles work on this one's, so the tile load never waits for the stores just made.
inline void amx_value_blocks(const float* p, const int32_t* end, int64_t hi, const uint16_t* vt,
                             int64_t dim0, int ndt, float* ot, float* den) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(7);
  const __m512i ends = _mm512_loadu_si512(end);
  const auto lanes_on = [&](int64_t j) {
    return _mm512_cmpgt_epi32_mask(ends, _mm512_set1_epi32(static_cast<int>(j)));
  };
  const uint16_t* ones = ones_tile();
  alignas(64) uint16_t pb[2][16 * 32];
  pack_probabilities(p, lanes_on(0), pb[0]);
  for (int64_t j = 0, i = 0; j < hi; j += 32, ++i) {
    if (j + 32 < hi) pack_probabilities(p + (j + 32) * kLanes, lanes_on(j + 32), pb[(i + 1) % 2]);
    const uint16_t* vj = vt + (j / 32) * 64 * 32 + dim0 * 32;
    _tile_loadd(4, pb[i % 2], 64);
    VALUE_TILE(0, 5)
    VALUE_TILE(1, 6)
    VALUE_TILE(2, 5)
    VALUE_TILE(3, 6)
    _tile_loadd(5, ones, 64);
    _tile_dpbf16ps(7, 5, 4);
  }
  _tile_stored(0, ot, 64);
  _tile_stored(1, ot + 256, 64);
  if (ndt > 2) {
    _tile_stored(2, ot + 512, 64);
    _tile_stored(3, ot + 768, 64);
  }
  alignas(64) float sums[16 * kLanes];
  _tile_stored(7, sums, 64);
  std::memcpy(den, sums, sizeof(float) * kLanes);
}
#undef VALUE_TILE

// After amx_value_blocks: init[b][dim0 + d] = the tile sums of head-row b (nb of them, ndt x
// 16 dimensions); and (from_lo: the probabilities from slot lo on) each lane's probabilities
// of slots lo .. end[b] - 1 set to 0, so that value_sums from lo adds exactly nothing for the
// slots the tiles summed
inline void take_value_blocks(const float* ot, int64_t nb, int64_t dim0, int ndt, float* init) {
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t d = 0; d < ndt * 16; ++d) init[b * 64 + dim0 + d] = ot[d * 16 + b];
}
inline void clear_summed(float* from_lo, int64_t nb, const int32_t* end, int64_t lo) {
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t j = lo; j < end[b]; ++j) from_lo[(j - lo) * kLanes + b] = 0.f;
}

// nb (<= 16) scaled head-rows q [nb, 64] as two B tiles: qt[pair][lane] holds lane's
// dimensions 2 pair, 2 pair + 1 in bf16 (round to nearest even), unused lanes 0
inline void amx_lane_queries(const float* q, int64_t nb, uint32_t* qt) {
  pack_query_pairs(q, 64, 1.f, 0, nb, reinterpret_cast<__m512i*>(qt));  // times 1 is exact
}

// Scores of slots j0 .. j1 - 1 (j0 a multiple of 32, j1 too unless it ends the slots) for the
// lanes of qt: slot j's at p + j * 16 (whole tiles stored: p has room up to j1 rounded up to
// 32), hidden ones -inf; best keeps each lane's running maximum. The calling thread's tiles
// must be configured (amx_configure).
inline void amx_lane_scores(const uint32_t* qt, const uint16_t* hidden, const uint16_t* k,
                            int64_t j0, int64_t j1, float* p, __m512& best) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  _tile_loadd(1, qt, 64);
  _tile_loadd(2, qt + 16 * kLanes, 64);
  for (int64_t j = j0; j < j1; j += 32) {
    key_block_scores(k + j * 64, std::min<int64_t>(32, j1 - j), p + j * kLanes);
    const int64_t stop = std::min<int64_t>(j1, j + 32);
    for (int64_t i = j; i < stop; ++i) {
      __m512 s = _mm512_load_ps(p + i * kLanes);
      if (hidden != nullptr) {
        s = _mm512_mask_mov_ps(s, hidden[i], ninf);
        _mm512_store_ps(p + i * kLanes, s);
      }
      best = _mm512_max_ps(best, s);
    }
  }
}

// p[j * 16 ..] = exp(p[j * 16 ..] - best) lane by lane for slots j0 .. j1 - 1, as 2^n 2^f with
// n + f = (x - best) log2(e), |f| <= 1/2, and 2^f its degree-5 Taylor polynomial in FMAs
// (relative error under 3e-6, against bf16's 2e-3 that most probabilities get; about half the
// instructions of vexp.h's exp16). The exponent is clamped to -150, so a hidden slot (-inf)
// comes out exactly 0.
inline void amx_lane_exps(float* p, __m512 best, int64_t j0, int64_t j1) {
  const __m512 l2e = _mm512_set1_ps(1.44269504088896341f), floor = _mm512_set1_ps(-150.f);
  const __m512 c5 = _mm512_set1_ps(1.3333558e-3f), c4 = _mm512_set1_ps(9.6181291e-3f);
  const __m512 c3 = _mm512_set1_ps(5.5504109e-2f), c2 = _mm512_set1_ps(2.4022651e-1f);
  const __m512 c1 = _mm512_set1_ps(6.9314718e-1f), c0 = _mm512_set1_ps(1.f);
  for (int64_t j = j0; j < j1; ++j) {
    float* pj = p + j * kLanes;
    const __m512 t = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(pj), best), l2e),
                                   floor);
    const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 f = _mm512_sub_ps(t, n);
    __m512 y = _mm512_fmadd_ps(c5, f, c4);
    y = _mm512_fmadd_ps(y, f, c3);
    y = _mm512_fmadd_ps(y, f, c2);
    y = _mm512_fmadd_ps(y, f, c1);
    y = _mm512_fmadd_ps(y, f, c0);
    _mm512_store_ps(pj, _mm512_scalef_ps(y, n));
  }
}

// lanes64 on AMX tiles, for nb (<= 16) head-rows of any count: end[b] (16 of them, 0 past
// nb) where head-row b's tile-summed value blocks end; vt: transposed value blocks up to there
inline void lanes64_amx(const float* q, int64_t nb, const uint16_t* hidden, const uint16_t* k,
                        const uint16_t* v, const uint16_t* vt, const int32_t* end, int64_t len,
                        float* p, float* const* out) {
  alignas(64) uint32_t qt[32 * kLanes];
  amx_lane_queries(q, nb, qt);
  __m512 best = _mm512_set1_ps(-INFINITY);
  amx_lane_scores(qt, hidden, k, 0, len, p, best);
  amx_lane_exps(p, best, 0, len);
  alignas(64) float dens[kLanes] = {};
  int64_t lo, hi;
  value_span(end, nb, lo, hi);
  if (hi == 0) {
    weighted_values<true>(p, kLanes, 1, nb, 6, v, len, dens, out);
    return;
  }
  alignas(64) float ot[64 * kLanes];
  alignas(64) float init[kLanes * 64];
  amx_value_blocks(p, end, hi, vt, 0, 4, ot, dens);
  take_value_blocks(ot, nb, 0, 4, init);
  clear_summed(p + lo * kLanes, nb, end, lo);
  weighted_values<true>(p + lo * kLanes, kLanes, 1, nb, 6, v + lo * 64, len - lo, dens, out, 0,
                        init);
}

}  // namespace
#endif
