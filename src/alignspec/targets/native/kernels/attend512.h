// The AVX-512 attention of attention.cpp's attend_core for head dimension 64: many head-rows
// of a KV head with one head-row per lane (lanes64), a few with 16 keys per vector (few64).
// prompt.cpp's causal_attend computes a prompt chunk with few64's tiles and sums; split512.h
// runs both layouts' passes (scores, exponentials, value sums) split across threads.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "vexp.h"

#if defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define ATTEND_DPBF16 1
#include "bf16_softmax.h"
#endif

#if defined(__AVX512F__)
namespace {

// Whether a cache of T is scored with bf16 dot products (vdpbf16ps): a bf16 cache where the CPU
// has AVX512-BF16. Each score is then one chain of 32 pair products over the dimension pairs
// in order, of the query rounded to bf16 (after scaling, as torch rounds) and the key, the
// same chain in both layouts; the softmax stays fp32, and so do the value sums from 64
// positions back (pair_values: the older slots' sums in bf16 pairs). It halves the score
// arithmetic and skips widening the keys: on a 2-core AMD EPYC (Zen 4) the scores were ~11%
// of aasd's time on Multi-News (perf), every extra verify row attending ~2,000 slots.
template <typename T>
constexpr bool pair_scores() {
#if defined(ATTEND_DPBF16)
  return std::is_same_v<T, uint16_t>;
#else
  return false;
#endif
}

// Whether the value sums of a T cache run partly as bf16 pair products (pair_value_sums): the
// same caches as pair_scores. Where the CPU has AMX, lanes_amx.h sums the same slots on tiles.
template <typename T>
constexpr bool pair_values() {
  return pair_scores<T>();
}

// Positions a head-row's value sums take in fp32 slot order at least, and so the deepest a
// draft-tree row may sit below the committed slots where a bf16 cache sums the rest in bf16
// (NativeTarget.max_tree_depth)
constexpr int64_t kValueLag = 64;

// The slot below which a head-row at position pos (it sees positions 0 .. pos) sums its values
// with bf16 probabilities (pair products here, tiles on AMX): a multiple of 32, at least
// kValueLag back. For a draft-tree row no deeper than that it lies among the committed slots,
// where slot == position, so the row splits its sums where the same token decoded alone does.
inline int64_t value_end(int64_t pos) {
  return pos <= kValueLag ? 0 : (pos - kValueLag) / 32 * 32;
}

// The first and last of nb head-rows' value ends: lo (the fp32 sums start there) and hi
inline void value_span(const int32_t* end, int64_t nb, int64_t& lo, int64_t& hi) {
  lo = INT64_MAX;
  hi = 0;
  for (int64_t b = 0; b < nb; ++b) {
    lo = std::min<int64_t>(lo, end[b]);
    hi = std::max<int64_t>(hi, end[b]);
  }
}

// The AVX-512 path for d = 64. Every score is one chain of 64 FMAs over d in order, starting from 0
// (32 pair products where pair_scores); the softmax's maximum and exponentials are per value; its
// denominator and the value sums run over the slots in order (below a head-row's value_end as bf16
// pairs where pair_values, then on in slot order). Two layouts compute exactly that: many head-rows
// of a KV head (lanes64) put one head-row in each lane, a few (few64) put 16 keys in a vector and
// transpose the keys to do so. A lane's arithmetic never depends on the other lanes, and the two
// layouts give the same bits, so a row's result is the same whatever rows share its call (the
// lossless property attend_rows states).
constexpr int64_t kLanes = 16;
// keys per pass of lanes64's score loop: 8 independent FMA chains hide the FMA latency
constexpr int64_t kKeys = 8;
// value rows per pass of the weighted sum (16 KB stay in L1 across the head-row blocks)
constexpr int64_t kChunk = 64;
// how many slots ahead the key and value rows are prefetched (the caches' own prefetchers
// stop at every 4 KB page, which is every 16 keys)
constexpr int64_t kAhead = 32;
// up to this many head-rows run in few64's layout, more in lanes64's (the transposes cost
// what 12 head-rows' idle lanes would)
constexpr int64_t kFew = 12;

// Keys and values are fp32 (float) or bf16 (uint16_t, its bits: the int8 model's cache). A
// bf16 value widens to fp32 exactly, so after the loads the arithmetic is the same for both,
// except for the scores where pair_scores<T>() holds.
inline __m512 load16(const float* x) { return _mm512_loadu_ps(x); }
inline __m512 load16(const uint16_t* x) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
// `rows` rows of 64 values as fp32: fp32 rows in place, bf16 rows widened into `buffer`
inline const float* rows_fp32(const float* x, int64_t, float*) { return x; }
inline const float* rows_fp32(const uint16_t* x, int64_t rows, float* buffer) {
  for (int64_t i = 0; i < rows * 64; i += 16) _mm512_store_ps(buffer + i, load16(x + i));
  return buffer;
}

inline void prefetch_lines(const void* x, int64_t lines) {
  for (int64_t line = 0; line < lines; ++line)
    _mm_prefetch(static_cast<const char*>(x) + line * 64, _MM_HINT_T0);
}

// the cache lines of `rows` rows of 64 values
template <typename T>
inline void prefetch_rows(const T* x, int64_t rows) {
  prefetch_lines(x, rows * static_cast<int64_t>(sizeof(T)));
}

// NB head-rows' value sums over slots j0 .. j1 - 1 for DV x 16 of the value dimensions (v
// points at the first of them): sums[b] += sum_j w(j, b) v[j] in slot order, w(j, b) =
// p[j * sj + b * sb]; with DEN also den[b] += sum_j w(j, b) in slot order.
template <int NB, bool DEN, int DV, typename T>
inline void value_sums(const float* p, int64_t sj, int64_t sb, const T* v, int64_t j0,
                       int64_t j1, float* sums, float* den, bool fetch) {
  __m512 acc[NB][DV], dv[NB];
  for (int b = 0; b < NB; ++b) {
    for (int c = 0; c < DV; ++c) acc[b][c] = _mm512_loadu_ps(sums + b * 64 + c * 16);
    if (DEN) dv[b] = _mm512_set1_ps(den[b]);
  }
  for (int64_t j = j0; j < j1; ++j) {
    const T* vr = v + j * 64;
    if (fetch) prefetch_lines(vr + kAhead * 64, (DV * 16 * sizeof(T) + 63) / 64);
    __m512 vc[DV];
    for (int c = 0; c < DV; ++c) vc[c] = load16(vr + c * 16);
    for (int b = 0; b < NB; ++b) {
      const __m512 w = _mm512_set1_ps(p[j * sj + b * sb]);
      for (int c = 0; c < DV; ++c) acc[b][c] = _mm512_fmadd_ps(w, vc[c], acc[b][c]);
      if (DEN) dv[b] = _mm512_add_ps(dv[b], w);
    }
  }
  for (int b = 0; b < NB; ++b) {
    for (int c = 0; c < DV; ++c) _mm512_storeu_ps(sums + b * 64 + c * 16, acc[b][c]);
    if (DEN) den[b] = _mm512_cvtss_f32(dv[b]);
  }
}

// the most head-rows weighted_values takes at once
constexpr int64_t kMaxRows = 48;

#if defined(ATTEND_DPBF16)
// NB head-rows' bf16 value sums over slot pairs jp0 .. jp1 - 1 for DV x 16 dimensions (v at
// the first; DV even): pp[jp * pj + b * pb] holds head-row b's probabilities of slots 2 jp and
// 2 jp + 1 as a bf16 pair (0 past its end). Each pair's two value rows are interleaved by
// dimension (unpacklo/hi: lane 4L + i of vector 2h is dimension 32h + 8L + i, of vector
// 2h + 1 dimension 32h + 8L + 4 + i), so one vdpbf16ps adds both slots' products for 16
// dimensions: half the instructions of the fp32 FMAs. The denominator is the same chain
// against ones. state[b * kState ..]: the DV vectors and the denominator's, continued.
constexpr int64_t kState = 5 * 16;

template <int NB, int DV>
void pair_sums(const uint32_t* pp, int64_t pj, int64_t pb, const uint16_t* v, int64_t jp0,
               int64_t jp1, float* state, bool fetch) {
  static_assert(DV % 2 == 0, "whole 32-dimension halves");
  const __m512bh ones = (__m512bh)_mm512_set1_epi32(0x3F803F80);
  __m512 acc[NB][DV + 1];
  for (int b = 0; b < NB; ++b)
    for (int c = 0; c <= DV; ++c) acc[b][c] = _mm512_load_ps(state + b * kState + c * 16);
  for (int64_t jp = jp0; jp < jp1; ++jp) {
    const uint16_t* r0 = v + 2 * jp * 64;
    if (fetch) prefetch_lines(r0 + kAhead * 64, 4);
    __m512bh vp[DV];
    for (int h = 0; h < DV / 2; ++h) {
      const __m512i x = _mm512_loadu_si512(r0 + 32 * h), y = _mm512_loadu_si512(r0 + 64 + 32 * h);
      vp[2 * h] = (__m512bh)_mm512_unpacklo_epi16(x, y);
      vp[2 * h + 1] = (__m512bh)_mm512_unpackhi_epi16(x, y);
    }
    for (int b = 0; b < NB; ++b) {
      const __m512bh w =
          (__m512bh)_mm512_set1_epi32(static_cast<int>(pp[jp * pj + b * pb]));
      for (int c = 0; c < DV; ++c) acc[b][c] = _mm512_dpbf16_ps(acc[b][c], w, vp[c]);
      acc[b][DV] = _mm512_dpbf16_ps(acc[b][DV], w, ones);
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int c = 0; c <= DV; ++c) _mm512_store_ps(state + b * kState + c * 16, acc[b][c]);
}

// pair_sums for nb (<= kMaxRows) head-rows whose probabilities lie at p[j * sj + b * sb] in
// lanes64's layout (sj 16, sb 1) or few64's (sj 1), head-row b's pairs below end[b] (a
// multiple of 32, hi the largest). The probabilities are rounded to bf16 (nearest even) in
// either layout alike, so a head-row's sums do not depend on the layout or the other rows.
template <int DV>
void pair_value_sums(const float* p, int64_t sj, int64_t sb, int64_t nb, const uint16_t* v,
                     const int32_t* end, int64_t hi, float* sums, float* den) {
  thread_local std::vector<uint32_t> buffer;
  const int64_t pairs = hi / 2;
  int64_t pj, pb;
  if (sj == kLanes && sb == 1) {  // one interleave per pair of slots for all 16 lanes
    const __m512i ends = _mm512_loadu_si512(end);
    pj = kLanes;
    pb = 1;
    if (static_cast<int64_t>(buffer.size()) < pairs * kLanes) buffer.resize(pairs * kLanes);
    for (int64_t jp = 0; jp < pairs; ++jp) {
      const __mmask16 on =
          _mm512_cmpgt_epi32_mask(ends, _mm512_set1_epi32(static_cast<int>(2 * jp)));
      const __m512 e0 = _mm512_maskz_loadu_ps(on, p + 2 * jp * kLanes);
      const __m512 e1 = _mm512_maskz_loadu_ps(on, p + (2 * jp + 1) * kLanes);
      _mm512_storeu_si512(buffer.data() + jp * kLanes, interleave_bf16(e0, e1));
    }
  } else {  // a head-row's 32 slots at a time, in slot order
    pj = 1;
    pb = pairs;
    if (static_cast<int64_t>(buffer.size()) < pairs * nb) buffer.resize(pairs * nb);
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t j = 0; j < hi; j += 32) {
        __m512i x = _mm512_setzero_si512();
        if (j < end[b]) {
          const float* pr = p + b * sb + j;
          x = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(pr + 16), _mm512_loadu_ps(pr));
        }
        _mm512_storeu_si512(buffer.data() + b * pairs + j / 2, x);
      }
  }
  const uint32_t* pp = buffer.data();
  constexpr int64_t most = DV == 4 ? 5 : 8;  // accumulators: (DV + 1) x NB of 32 registers
  alignas(64) float state[kMaxRows * kState];
  std::memset(state, 0, sizeof(float) * nb * kState);
  // pairs of kChunk slots at a time, their value rows held in L1 while every block of head-rows
  // reads them (as weighted_values does)
  for (int64_t jp0 = 0; jp0 < pairs; jp0 += kChunk / 2) {
    for (int64_t b0 = 0; b0 < nb; b0 += most) {
      const int64_t size = std::min(most, nb - b0);
      int64_t lo_b, hi_b;
      value_span(end + b0, size, lo_b, hi_b);
      const int64_t jp1 = std::min(jp0 + kChunk / 2, hi_b / 2);
      if (jp1 <= jp0) continue;
      const uint32_t* q = pp + b0 * pb;
      float* st = state + b0 * kState;
      const bool fetch = b0 == 0;
      switch (size) {
        case 8: pair_sums<8, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
        case 7: pair_sums<7, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
        case 6: pair_sums<6, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
        case 5: pair_sums<5, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
        case 4: pair_sums<4, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
        case 3: pair_sums<3, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
        case 2: pair_sums<2, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
        default: pair_sums<1, DV>(q, pj, pb, v, jp0, jp1, st, fetch); break;
      }
    }
  }
  // back to the dimensions' natural order: sums[b * 64 + d] and den[b] overwritten
  for (int64_t b = 0; b < nb; ++b) {
    const float* st = state + b * kState;
    for (int h = 0; h < DV / 2; ++h) {
      float* out = sums + b * 64 + 32 * h;
      const float* lo = st + 32 * h;
      for (int L = 0; L < 4; ++L)
        for (int i = 0; i < 4; ++i) {
          out[8 * L + i] = lo[4 * L + i];
          out[8 * L + 4 + i] = lo[16 + 4 * L + i];
        }
    }
    den[b] = st[DV * 16];
  }
}
#endif

// out[b][dim0 ..] = sums / den of nb (<= kMaxRows) head-rows for DV x 16 value dimensions from
// dim0: the weighted value sums over all len slots, in chunks of kChunk slots (held in L1
// while every block of at most `most` head-rows reads them); den[b] accumulated here too when
// DEN. Each dimension's sum is its own chain, so splitting the dimensions changes no bits.
// init: the sums to continue ([nb][64] by dimension, the earlier slots' on AMX tiles), or
// nullptr (0). end: where pair_values<T>() holds, each head-row's value_end (nullptr: none):
// its slots below it are summed as bf16 pair products (den too, so DEN must hold), and the
// rest continue those sums in slot order.
template <bool DEN, int DV = 4, typename T>
void weighted_values(const float* p, int64_t sj, int64_t sb, int64_t nb, int64_t most,
                     const T* v, int64_t len, float* den, float* const* out,
                     int64_t dim0 = 0, const float* init = nullptr,
                     const int32_t* end = nullptr) {
  alignas(64) float sums[kMaxRows * 64];
  if (init != nullptr)
    for (int64_t b = 0; b < nb; ++b)
      std::memcpy(sums + b * 64, init + b * 64 + dim0, sizeof(float) * DV * 16);
  else
    std::memset(sums, 0, sizeof(float) * nb * 64);
  const int64_t blocks = (nb + most - 1) / most;
  v += dim0;
  int64_t from = 0;
#if defined(ATTEND_DPBF16)
  if constexpr (pair_values<T>() && DEN) {
    int64_t lo = 0, hi = 0;
    if (end != nullptr) value_span(end, nb, lo, hi);
    if (hi > 0) {
      pair_value_sums<DV>(p, sj, sb, nb, v, end, hi, sums, den);
      // slots lo .. hi - 1 from each head-row's own end, one head-row at a time
      for (int64_t b = 0; b < nb; ++b)
        if (end[b] < hi)
          value_sums<1, true, DV, T>(p + b * sb, sj, sb, v, end[b], hi, sums + b * 64, den + b,
                                     false);
      from = hi;
    }
  }
#endif
  for (int64_t j0 = from; j0 < len; j0 += kChunk) {
    const int64_t j1 = std::min(len, j0 + kChunk);
    for (int64_t i = 0, b0 = 0; i < blocks; ++i) {
      const int64_t size = nb / blocks + (i < nb % blocks ? 1 : 0);
      const float* pb = p + b0 * sb;
      float* s = sums + b0 * 64;
      float* d = den + b0;
      const bool fetch = i == 0;
      switch (size) {
        case 6: value_sums<6, DEN, DV, T>(pb, sj, sb, v, j0, j1, s, d, fetch); break;
        case 5: value_sums<5, DEN, DV, T>(pb, sj, sb, v, j0, j1, s, d, fetch); break;
        case 4: value_sums<4, DEN, DV, T>(pb, sj, sb, v, j0, j1, s, d, fetch); break;
        case 3: value_sums<3, DEN, DV, T>(pb, sj, sb, v, j0, j1, s, d, fetch); break;
        case 2: value_sums<2, DEN, DV, T>(pb, sj, sb, v, j0, j1, s, d, fetch); break;
        default: value_sums<1, DEN, DV, T>(pb, sj, sb, v, j0, j1, s, d, fetch); break;
      }
      b0 += size;
    }
  }
  for (int64_t b = 0; b < nb; ++b) {
    const __m512 dv = _mm512_set1_ps(den[b]);
    for (int c = 0; c < DV; ++c)
      _mm512_storeu_ps(out[b] + dim0 + c * 16,
                       _mm512_div_ps(_mm512_loadu_ps(sums + b * 64 + c * 16), dv));
  }
}

// qt[c][b] = q[b][c] for nb (<= 16) head-rows q [nb, 64], unused lanes 0: lanes64's queries
inline void lane_queries(const float* q, int64_t nb, float* qt) {
  for (int64_t c = 0; c < 64; ++c)
    for (int64_t b = 0; b < kLanes; ++b) qt[c * kLanes + b] = b < nb ? q[b * 64 + c] : 0.f;
}

// lanes64's scores for slots j0 .. j1 - 1 (j1 - j0 a multiple of kKeys unless j1 ends the
// slots): slot j's 16 head-rows' scores at p + j * 16, hidden ones -inf; best keeps each
// lane's running maximum.
template <typename T>
inline void lane_scores(const float* qt, const uint16_t* hidden, const T* k, int64_t j0,
                        int64_t j1, float* p, __m512& best) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  int64_t j = j0;
  alignas(64) float wide[kKeys * 64];  // bf16 keys widened once, then broadcast from memory
  for (; j + kKeys <= j1; j += kKeys) {
    const float* kj = rows_fp32(k + j * 64, kKeys, wide);
    prefetch_rows(k + (j + kAhead) * 64, kKeys);
    __m512 a[kKeys];
    for (int64_t i = 0; i < kKeys; ++i) a[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < 64; ++c) {
      const __m512 qc = _mm512_load_ps(qt + c * kLanes);
      for (int64_t i = 0; i < kKeys; ++i)
        a[i] = _mm512_fmadd_ps(qc, _mm512_set1_ps(kj[i * 64 + c]), a[i]);
    }
    for (int64_t i = 0; i < kKeys; ++i) {
      if (hidden != nullptr) a[i] = _mm512_mask_mov_ps(a[i], hidden[j + i], ninf);
      best = _mm512_max_ps(best, a[i]);
      _mm512_store_ps(p + (j + i) * kLanes, a[i]);
    }
  }
  for (; j < j1; ++j) {
    const float* kj = rows_fp32(k + j * 64, 1, wide);
    __m512 a = _mm512_setzero_ps();
    for (int64_t c = 0; c < 64; ++c)
      a = _mm512_fmadd_ps(_mm512_load_ps(qt + c * kLanes), _mm512_set1_ps(kj[c]), a);
    if (hidden != nullptr) a = _mm512_mask_mov_ps(a, hidden[j], ninf);
    best = _mm512_max_ps(best, a);
    _mm512_store_ps(p + j * kLanes, a);
  }
}

#if defined(ATTEND_DPBF16)
// nb head-rows q [nb, 64] (scaled) as bf16 dimension pairs, rounded to nearest even:
// qp[b * 32 + c] = dimensions 2c (low half) and 2c + 1 of head-row b, as the cache's bf16 keys
// lie in memory
inline void pack_pairs(const float* q, int64_t nb, uint32_t* qp) {
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t h = 0; h < 2; ++h) {
      const float* x = q + b * 64 + h * 32;
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
      _mm512_storeu_si512(qp + b * 32 + h * 16, (__m512i)v);
    }
}

// lane_scores with bf16 pair products (pair_scores): qt[c] lane b = pair c of head-row b
// (bf16_softmax.h's pack_query_pairs), each key's pair c broadcast to every lane
inline void lane_pair_scores(const __m512i* qt, const uint16_t* hidden, const uint16_t* k,
                             int64_t j0, int64_t j1, float* p, __m512& best) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t j = j0; j < j1; j += kKeys) {
    const int64_t keys = std::min(kKeys, j1 - j);
    prefetch_rows(k + (j + kAhead) * 64, kKeys);
    __m512 a[kKeys];
    for (int64_t i = 0; i < kKeys; ++i) a[i] = _mm512_setzero_ps();
    if (keys == kKeys) {
      for (int64_t c = 0; c < 32; ++c) {
        const __m512bh qc = (__m512bh)qt[c];
        for (int64_t i = 0; i < kKeys; ++i)
          a[i] = _mm512_dpbf16_ps(a[i], qc, broadcast_pair(k + (j + i) * 64 + 2 * c));
      }
    } else {
      for (int64_t i = 0; i < keys; ++i)
        for (int64_t c = 0; c < 32; ++c)
          a[i] = _mm512_dpbf16_ps(a[i], (__m512bh)qt[c],
                                  broadcast_pair(k + (j + i) * 64 + 2 * c));
    }
    for (int64_t i = 0; i < keys; ++i) {
      if (hidden != nullptr) a[i] = _mm512_mask_mov_ps(a[i], hidden[j + i], ninf);
      best = _mm512_max_ps(best, a[i]);
      _mm512_store_ps(p + (j + i) * kLanes, a[i]);
    }
  }
}
#endif

// lanes64's scores of nb (<= 16) head-rows q [nb, 64] (scaled) for slots j0 .. j1 - 1, in
// lane_scores' layout: fp32 FMAs, or bf16 pair products where pair_scores<T>()
template <typename T>
inline void lane_scores_of(const float* q, int64_t nb, const uint16_t* hidden, const T* k,
                           int64_t j0, int64_t j1, float* p, __m512& best) {
#if defined(ATTEND_DPBF16)
  if constexpr (pair_scores<T>()) {
    __m512i qt[32];
    pack_query_pairs(q, 64, 1.f, 0, nb, qt);  // q is scaled already: times 1 is exact
    lane_pair_scores(qt, hidden, k, j0, j1, p, best);
    return;
  }
#endif
  alignas(64) float qt[64 * kLanes];
  lane_queries(q, nb, qt);
  lane_scores(qt, hidden, k, j0, j1, p, best);
}

// p[j * 16 ..] = exp(p[j * 16 ..] - best) lane by lane for slots j0 .. j1 - 1; their sums
// added to *den in slot order when given (the sums weighted_values<true> would form)
inline void lane_exps(float* p, __m512 best, int64_t j0, int64_t j1, __m512* den = nullptr) {
  for (int64_t j = j0; j < j1; ++j) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_load_ps(p + j * kLanes), best));
    _mm512_store_ps(p + j * kLanes, e);
    if (den != nullptr) *den = _mm512_add_ps(*den, e);
  }
}

// nb (<= 16) head-rows q [nb, 64] (scaled), one per lane, against slots 0 .. len - 1 of k, v
// ([len, 64]). hidden: per slot, the lanes that must not see it (nullptr: all visible).
// p: scratch of len * 16 floats; out: nb rows of 64.
// end: each head-row's value_end where pair_values<T>() (nullptr: none)
template <typename T>
void lanes64(const float* q, int64_t nb, const uint16_t* hidden, const T* k, const T* v,
             int64_t len, float* p, float* const* out, const int32_t* end = nullptr) {
  __m512 best = _mm512_set1_ps(-INFINITY);
  lane_scores_of(q, nb, hidden, k, 0, len, p, best);
  alignas(64) float dens[kLanes] = {};
  if (pair_values<T>() && end != nullptr) {  // the denominator as the value sums split it
    lane_exps(p, best, 0, len);
    weighted_values<true>(p, kLanes, 1, nb, 6, v, len, dens, out, 0, nullptr, end);
    return;
  }
  __m512 den = _mm512_setzero_ps();
  lane_exps(p, best, 0, len, &den);
  _mm512_store_ps(dens, den);
  weighted_values<false>(p, kLanes, 1, nb, 6, v, len, dens, out);
}

// dst[c * 32 + i] = column c of row i for 16 rows (the first `valid`, the others 0), columns
// 0 .. 16 * Blocks - 1; row(i, blk) loads row i's columns 16 blk .. 16 blk + 15 as 32-bit
// lanes. 16 x 16 transposes in registers that move bits and compute nothing.
template <int Blocks, class Row>
inline void transpose16(const Row& row, int64_t valid, float* dst) {
  for (int64_t blk = 0; blk < Blocks; ++blk) {
    __m512 r[16], t[16];
    for (int64_t i = 0; i < 16; ++i) r[i] = i < valid ? row(i, blk) : _mm512_setzero_ps();
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // r[4 g + m]: rows 4g .. 4g + 3 of columns m, m + 4, m + 8, m + 12 (one per 128-bit lane)
    for (int g = 0; g < 4; ++g) {
      const __m512d t0 = _mm512_castps_pd(t[4 * g]), t1 = _mm512_castps_pd(t[4 * g + 1]);
      const __m512d t2 = _mm512_castps_pd(t[4 * g + 2]), t3 = _mm512_castps_pd(t[4 * g + 3]);
      r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
      r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
      r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
      r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    for (int m = 0; m < 4; ++m) {
      const __m512 u0 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0x88);
      const __m512 u1 = _mm512_shuffle_f32x4(r[m], r[4 + m], 0xDD);
      const __m512 u2 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0x88);
      const __m512 u3 = _mm512_shuffle_f32x4(r[8 + m], r[12 + m], 0xDD);
      float* col = dst + (blk * 16 + m) * 32;
      _mm512_store_ps(col, _mm512_shuffle_f32x4(u0, u2, 0x88));
      _mm512_store_ps(col + 4 * 32, _mm512_shuffle_f32x4(u1, u3, 0x88));
      _mm512_store_ps(col + 8 * 32, _mm512_shuffle_f32x4(u0, u2, 0xDD));
      _mm512_store_ps(col + 12 * 32, _mm512_shuffle_f32x4(u1, u3, 0xDD));
    }
  }
}

// dst[c * 32 + i] = src[i * 64 + c] widened to fp32 for the first `valid` of 16 key rows (the
// others 0), c < 64
template <typename T>
inline void transpose_keys(const T* src, int64_t valid, float* dst) {
  transpose16<4>([&](int64_t i, int64_t blk) { return load16(src + i * 64 + blk * 16); }, valid,
                 dst);
}

#if defined(ATTEND_DPBF16)
// dst[c * 32 + i] = dimension pair c (2c, 2c + 1: 32 bits) of bf16 key row i for the first
// `valid` of 16 key rows (the others 0), c < 32
inline void transpose_pairs(const uint16_t* src, int64_t valid, uint32_t* dst) {
  transpose16<2>(
      [&](int64_t i, int64_t blk) {
        return _mm512_castsi512_ps(_mm512_loadu_si512(src + i * 64 + blk * 32));
      },
      valid, reinterpret_cast<float*>(dst));
}
#endif

// NB head-rows' scores for the 32 keys of kt ([64][32]): acc[b][h] holds keys 16 h .. 16 h + 15
template <int NB>
inline void scores32(const float* q, const float* kt, __m512 (*acc)[2]) {
  for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_ps();
  for (int64_t c = 0; c < 64; ++c) {
    const __m512 k0 = _mm512_load_ps(kt + c * 32), k1 = _mm512_load_ps(kt + c * 32 + 16);
    for (int b = 0; b < NB; ++b) {
      const __m512 qc = _mm512_set1_ps(q[b * 64 + c]);
      acc[b][0] = _mm512_fmadd_ps(qc, k0, acc[b][0]);
      acc[b][1] = _mm512_fmadd_ps(qc, k1, acc[b][1]);
    }
  }
}

#if defined(ATTEND_DPBF16)
// scores32 with bf16 pair products: q [NB][32] pairs (pack_pairs), kt [32][32] pairs
// (transpose_pairs)
template <int NB>
inline void scores32(const uint32_t* q, const uint32_t* kt, __m512 (*acc)[2]) {
  for (int b = 0; b < NB; ++b) acc[b][0] = acc[b][1] = _mm512_setzero_ps();
  for (int64_t c = 0; c < 32; ++c) {
    const __m512bh k0 = (__m512bh)_mm512_load_si512(kt + c * 32);
    const __m512bh k1 = (__m512bh)_mm512_load_si512(kt + c * 32 + 16);
    for (int b = 0; b < NB; ++b) {
      const __m512bh qc = (__m512bh)_mm512_set1_epi32(static_cast<int>(q[b * 32 + c]));
      acc[b][0] = _mm512_dpbf16_ps(acc[b][0], qc, k0);
      acc[b][1] = _mm512_dpbf16_ps(acc[b][1], qc, k1);
    }
  }
}
#endif

// Scores of nb head-rows q (Q = float: [nb][64]; Q = uint32_t: [nb][32] bf16 pairs) for the 32
// keys of tile kt (transposed alike: [64][32] or [32][32]; slots j .. j + 31, those below len):
// slots head-row b does not see (visible(b, j0): a mask of the 16 from j0) get -inf, best[b]
// keeps its running maximum, and its scores go to p + b * stride + j.
template <class Visible, typename Q>
inline void tile_scores(const Q* q, int64_t nb, const Q* kt, int64_t j, int64_t len,
                        const Visible& visible, __m512* best, float* p, int64_t stride) {
  constexpr int64_t w = std::is_same_v<Q, float> ? 64 : 32;  // a head-row's query words
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (int64_t b0 = 0; b0 < nb; b0 += 6) {
    const int64_t size = std::min<int64_t>(6, nb - b0);
    __m512 acc[6][2];
    switch (size) {
      case 6: scores32<6>(q + b0 * w, kt, acc); break;
      case 5: scores32<5>(q + b0 * w, kt, acc); break;
      case 4: scores32<4>(q + b0 * w, kt, acc); break;
      case 3: scores32<3>(q + b0 * w, kt, acc); break;
      case 2: scores32<2>(q + b0 * w, kt, acc); break;
      default: scores32<1>(q + b0 * w, kt, acc); break;
    }
    for (int64_t b = b0; b < b0 + size; ++b) {
      for (int64_t h = 0; h < 2; ++h) {
        const int64_t j0 = j + 16 * h;
        if (j0 >= len) break;
        const __m512 s = _mm512_mask_mov_ps(ninf, visible(b, j0), acc[b - b0][h]);
        best[b] = _mm512_max_ps(best[b], s);
        _mm512_store_ps(p + b * stride + j0, s);
      }
    }
  }
}

// the first n (<= 16, clamped) of 16 lanes
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

// out[b] = sum_j e_j v_j / sum_j e_j for nb head-rows' scores (row b at p + b * stride, its
// maximum in best[b]), e_j = exp(s_j - max) written over the scores; both sums in slot order.
// end: each head-row's value_end where pair_values<T>() (nullptr: none)
template <typename T>
inline void softmax_values(float* p, int64_t stride, int64_t nb, const __m512* best,
                           const T* v, int64_t len, float* const* out,
                           const int32_t* end = nullptr) {
  float den[kMaxRows];
  for (int64_t b = 0; b < nb; ++b) {
    exps(p + b * stride, _mm512_reduce_max_ps(best[b]), len, p + b * stride);
    den[b] = 0.f;
  }
  weighted_values<true>(p, 1, stride, nb, 5, v, len, den, out, 0, nullptr, end);
}

// few64's scores of nb (<= kFew) head-rows for slots j0 .. j1 - 1 (j0 a multiple of 32, j1
// too unless it ends the len slots): head-row b's at p + b * stride, best[b] its running
// maximum (per lane).
template <typename T>
inline void few_scores(const float* q, int64_t nb, const float* const* mrow, const T* k,
                       int64_t j0, int64_t j1, int64_t len, int64_t stride, float* p,
                       __m512* best) {
  const auto visible = [&](int64_t b, int64_t s0) {
    const __mmask16 in = first_lanes(len - s0);
    if (mrow[b] == nullptr) return in;
    return static_cast<__mmask16>(
        in & ~_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(in, mrow[b] + s0), _mm512_setzero_ps(),
                                 _CMP_NEQ_UQ));
  };
#if defined(ATTEND_DPBF16)
  if constexpr (pair_scores<T>()) {
    alignas(64) uint32_t qp[kFew * 32];
    alignas(64) uint32_t kt[32 * 32];
    pack_pairs(q, nb, qp);
    for (int64_t j = j0; j < j1; j += 32) {
      prefetch_rows(k + (j + kAhead) * 64, 32);
      transpose_pairs(k + j * 64, std::min<int64_t>(16, len - j), kt);
      transpose_pairs(k + (j + 16) * 64, std::clamp<int64_t>(len - j - 16, 0, 16), kt + 16);
      tile_scores(qp, nb, kt, j, len, visible, best, p, stride);
    }
    return;
  }
#endif
  alignas(64) float kt[64 * 32];
  for (int64_t j = j0; j < j1; j += 32) {
    prefetch_rows(k + (j + kAhead) * 64, 32);
    transpose_keys(k + j * 64, std::min<int64_t>(16, len - j), kt);
    transpose_keys(k + (j + 16) * 64, std::clamp<int64_t>(len - j - 16, 0, 16), kt + 16);
    tile_scores(q, nb, kt, j, len, visible, best, p, stride);
  }
}

// nb (<= kFew) head-rows q [nb, 64] (scaled), 16 keys per vector, against slots 0 .. len - 1
// of k, v. mrow: each head-row's mask row (nullptr: all visible); p: scratch of nb * stride
// floats, stride >= len rounded up to 32; out: nb rows of 64.
template <typename T>
void few64(const float* q, int64_t nb, const float* const* mrow, const T* k, const T* v,
           int64_t len, int64_t stride, float* p, float* const* out,
           const int32_t* end = nullptr) {
  __m512 best[kFew];
  for (int64_t b = 0; b < nb; ++b) best[b] = _mm512_set1_ps(-INFINITY);
  few_scores(q, nb, mrow, k, 0, len, len, stride, p, best);
  softmax_values(p, stride, nb, best, v, len, out, end);
}

// Per slot, the lanes (head-rows, 16 per chunk, row r's at r * groups .. + groups - 1) whose
// mask hides it: [chunks][len], built once per call and shared by every KV head.
std::vector<uint16_t> hidden_lanes(const float* mp, int64_t mstride, int64_t rows,
                                   int64_t groups, int64_t len, int64_t chunks) {
  std::vector<uint16_t> hidden(chunks * len, 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* m = mp + r * mstride;
    for (int64_t j0 = 0; j0 < len; j0 += 16) {
      const __mmask16 in = first_lanes(len - j0);
      uint32_t hid = _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(in, m + j0), _mm512_setzero_ps(),
                                        _CMP_NEQ_UQ) & in;
      while (hid != 0) {
        const int64_t j = j0 + __builtin_ctz(hid);
        hid &= hid - 1;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t lane = r * groups + g;
          hidden[(lane / kLanes) * len + j] |= uint16_t(1u << (lane % kLanes));
        }
      }
    }
  }
  return hidden;
}

}  // namespace
#endif
