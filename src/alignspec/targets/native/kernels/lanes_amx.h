// The decode/verify attention's scores on AMX-BF16 tiles, for a bf16 cache (the int8 model
// where the CPU has AMX): lanes64's layout, one head-row per lane, with every head-row count
// in it (attend512_core and attend_split choose it for all units when amx_lanes() holds).
//
// A tile product gives the scores of 16 keys for all 16 lanes at once, transposed (S^T = K Q^T:
// the cache's key rows are the A tiles as they lie, the queries a pair-packed B tile per 32
// dimensions), which is exactly lanes64's [slot][lane] layout. Each score is the tile's dot
// product of the key and the query rounded to bf16, so it depends only on that key and that
// query, never on the slot the key sits in or on the other lanes: a tree row still comes out
// bitwise what it is decoded alone. The exponentials and the value sums stay lanes64's, in
// slot order. A one-row forward runs here too (its 3 head-rows in 16 lanes), because its bits
// must be the tree's; at 512 cached slots the scores are ~16x fewer instructions than FMAs.

#pragma once

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512BW__)
#define ATTEND_AMX 1
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "amx.h"
#include "attend512.h"

namespace {

// Whether this process's bf16-cache attention takes the AMX lanes (the same answer for every
// call, so a tree row and the same row decoded alone take the same path)
inline bool amx_lanes() { return amx_permitted(); }

// nb (<= 16) scaled head-rows q [nb, 64] as two B tiles: qt[pair][lane] holds lane's
// dimensions 2 pair, 2 pair + 1 in bf16 (round to nearest even), unused lanes 0
inline void amx_lane_queries(const float* q, int64_t nb, uint32_t* qt) {
  alignas(64) uint32_t rows[kLanes][32];
  for (int64_t b = 0; b < kLanes; ++b) {
    for (int64_t h = 0; h < 2; ++h) {
      __m512i x = _mm512_setzero_si512();
      if (b < nb) {
        const float* r = q + b * 64 + h * 32;
        x = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(r + 16), _mm512_loadu_ps(r));
      }
      _mm512_store_si512(rows[b] + h * 16, x);
    }
  }
  for (int64_t pr = 0; pr < 32; ++pr)
    for (int64_t b = 0; b < kLanes; ++b) qt[pr * kLanes + b] = rows[b][pr];
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
  alignas(64) uint16_t tail[32][64];
  const int64_t whole = j0 + (j1 - j0) / 32 * 32;
  for (int64_t j = j0; j < j1; j += 32) {
    const uint16_t* kj = k + j * 64;
    if (j == whole) {  // the last keys from a zeroed copy: never read past the slots
      std::memset(tail, 0, sizeof(tail));
      std::memcpy(tail, kj, (j1 - whole) * 128);
      kj = tail[0];
    } else {
      prefetch_rows(kj + kAhead * 64, 32);
    }
    _tile_zero(3);
    _tile_zero(4);
    _tile_loadd(0, kj, 128);
    _tile_loadd(5, kj + 32, 128);
    _tile_loadd(6, kj + 16 * 64, 128);
    _tile_loadd(7, kj + 16 * 64 + 32, 128);
    _tile_dpbf16ps(3, 0, 1);
    _tile_dpbf16ps(4, 6, 1);
    _tile_dpbf16ps(3, 5, 2);
    _tile_dpbf16ps(4, 7, 2);
    _tile_stored(3, p + j * kLanes, 64);
    _tile_stored(4, p + (j + 16) * kLanes, 64);
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

// lanes64 with the scores on AMX tiles, for nb (<= 16) head-rows of any count
inline void lanes64_amx(const float* q, int64_t nb, const uint16_t* hidden, const uint16_t* k,
                        const uint16_t* v, int64_t len, float* p, float* const* out) {
  alignas(64) uint32_t qt[32 * kLanes];
  amx_lane_queries(q, nb, qt);
  __m512 best = _mm512_set1_ps(-INFINITY);
  amx_lane_scores(qt, hidden, k, 0, len, p, best);
  __m512 den = _mm512_setzero_ps();
  lane_exps(p, best, 0, len, &den);
  alignas(64) float dens[kLanes];
  _mm512_store_ps(dens, den);
  weighted_values<false>(p, kLanes, 1, nb, 6, v, len, dens, out);
}

}  // namespace
#endif
