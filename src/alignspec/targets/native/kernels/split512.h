// attend_core's AVX-512 units (up to 16 head-rows of one KV head) and, for long contexts whose
// units do not share out evenly over the threads, the same units split across the threads by
// slots and by value dimensions (attend_split), with the bits of the unsplit call.

#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "attend512.h"
#include "head_rows.h"
#include "lanes_amx.h"
#include "vexp.h"

#if defined(__AVX512F__)
namespace {

// A 64-byte aligned scratch of at least n floats, the calling thread's own and kept between
// calls (a fresh zeroed vector per call wrote 128 KB a layer at 2,000 cached tokens); its
// contents are never read before they are written.
float* scratch_floats(int64_t n, int which = 0) {
  thread_local std::vector<float> buffers[2];
  std::vector<float>& buffer = buffers[which];
  if (static_cast<int64_t>(buffer.size()) < n + 16) buffer.resize(n + 16);
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer.data()) + 63) &
                                  ~uintptr_t(63));
}

// Whether every unit of a T cache runs in lanes64's layout with lanes_amx.h's AMX scores:
// a bf16 cache where the CPU has AMX-BF16
template <typename T>
inline bool amx_units() {
#if defined(ATTEND_AMX)
  if constexpr (std::is_same_v<T, uint16_t>) return amx_lanes();
#endif
  return false;
}

// One unit of attend_core's AVX-512 work: up to 16 head-rows of one KV head (keys and values
// of T: float, or uint16_t for bf16)
template <typename T>
struct Unit {
  int64_t nb;
  const float* q;
  const T* k;
  const T* v;
  const uint16_t* hidden;  // lanes64's per-slot hidden lanes, or nullptr
  const uint16_t* vt;      // the AMX lanes' transposed value blocks of this KV head
  const int32_t* end;      // value_end of each head-row, 16 of them (0 past nb), or nullptr
  const float* mrow[kLanes];
  float* orow[kLanes];
};

// What every unit of one attend_core call shares; unit(t) is KV head t / chunks, head-rows
// (t % chunks) * 16 .. of it
template <typename T>
struct Units {
  const float* qp;
  const T* kp;
  int64_t ks;
  const T* vp;
  int64_t vs;
  const float* mp;
  int64_t mstride;
  float* op;
  const uint16_t* hidden;
  int64_t hr, groups, heads, chunks, len, stride;
  const uint16_t* vtp = nullptr;  // AMX lanes: transposed value blocks, KV head stride vts
  int64_t vts = 0;
  const int32_t* ends = nullptr;  // per head-row value_end (AMX or pair_values), chunks * 16

  // head-rows in unit t
  int64_t rows_of(int64_t t) const { return std::min(kLanes, hr - (t % chunks) * kLanes); }

  Unit<T> unit(int64_t t) const {
    const int64_t g = t / chunks, b0 = (t % chunks) * kLanes;
    Unit<T> a;
    a.nb = rows_of(t);
    a.q = qp + (g * hr + b0) * 64;
    a.k = kp + g * ks;
    a.v = vp + g * vs;
    a.hidden = hidden == nullptr ? nullptr : hidden + (b0 / kLanes) * len;
    a.vt = vtp == nullptr ? nullptr : vtp + g * vts;
    a.end = ends == nullptr ? nullptr : ends + b0;
    head_rows_at(g, b0, a.nb, groups, heads, 64, mp, mstride, op, a.mrow, a.orow);
    return a;
  }
};

// From this many slots, a call whose whole units would leave the threads idle more than a
// fifth of the time (idle_share) splits every unit's work three ways instead. With 3 KV heads
// (SmolLM2), 1-5 rows are 3 units: on 2 threads one thread idles a third of the time, and at a
// few thousand slots attention is most of a one-row forward. Measured on a 2-core Xeon (30
// layers, 9 heads on 3 KV heads): at 1,024-4,096 slots 1-5 rows 0.81-0.92x the time of whole
// units, at 512 0.92-0.99x; 8 rows (6 units) 1.05-1.17x and 16 rows (9 units) 1.02-1.05x,
// which is why a balanced enough call keeps whole units.
constexpr int64_t kSplitSlots = 512;

// The share of thread time left idle when `units` equal units run on `threads` threads
inline double idle_share(int64_t units, int64_t threads) {
  const int64_t rounds = (units + threads - 1) / threads;
  return 1.0 - static_cast<double>(units) / static_cast<double>(rounds * threads);
}

#if defined(ATTEND_AMX)
// attend_split's value sums for the AMX lanes (lanes64_amx's, split by value dimensions): per
// unit and half of the dimensions, the tile-summed blocks (and their denominators, in both
// halves), then the other slots with FMAs from a copy of their probabilities in which the
// tile-summed ones are 0 (the other half's thread still reads the originals); the bits of the
// unsplit call.
template <typename T>
void amx_split_values(const Units<T>& u, int64_t units, float* scores) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    const int64_t len = u.len;
    at::parallel_for(0, units * 2, 1, [&](int64_t t0, int64_t t1) {
      amx_configure();
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n = t / 2, h = t % 2;
        const Unit<T> a = u.unit(n);
        const float* p = scores + n * kLanes * u.stride;
        alignas(64) float dens[kLanes] = {};
        int64_t lo, hi;
        value_span(a.end, a.nb, lo, hi);
        if (hi == 0) {
          weighted_values<true, 2>(p, kLanes, 1, a.nb, 6, a.v, len, dens, a.orow, h * 32);
          continue;
        }
        alignas(64) float ot[32 * kLanes];
        alignas(64) float init[kLanes * 64];
        amx_value_blocks(p, a.end, hi, a.vt, h * 32, 2, ot, dens);
        take_value_blocks(ot, a.nb, h * 32, 2, init);
        float* rest = scratch_floats((len - lo) * kLanes);  // the scores are in buffer 1
        std::memcpy(rest, p + lo * kLanes, sizeof(float) * (len - lo) * kLanes);
        clear_summed(rest, a.nb, a.end, lo);
        weighted_values<true, 2>(rest, kLanes, 1, a.nb, 6, a.v + lo * 64, len - lo, dens,
                                 a.orow, h * 32, init);
      }
      _tile_release();
    });
  }
}
#endif

// attend_core's units, each in three passes split across the threads: the scores over slot
// segments (each thread reads its own keys), the exponentials over the same segments (with
// the maximum of every segment's), and the value sums over halves of the 64 dimensions (each
// thread reads its own half of every value row). Each score, exponential and per-dimension
// sum is computed exactly as few64/lanes64 compute it, in slot order, so the bits are those
// of the unsplit call.
template <typename T>
void attend_split(const Units<T>& u, int64_t units, int64_t threads) {
  const int64_t len = u.len, segs = threads;
  const bool amx = amx_units<T>();
  const auto lanes = [&](int64_t nb) { return amx || nb > kFew; };
  const int64_t seg = (len + segs * 32 - 1) / (segs * 32) * 32;  // whole 32-slot tiles
  float* scores = scratch_floats(units * kLanes * u.stride, 1);
  // per unit and segment: each head-row's (few64) or lane's (lanes64) maximum
  std::vector<float> best(units * segs * kLanes);
  const auto score_part = [&](int64_t t0, int64_t t1) {
#if defined(ATTEND_AMX)
    if (amx) amx_configure();
#endif
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / segs, s = t % segs;
      const Unit<T> a = u.unit(n);
      const int64_t j0 = std::min(len, s * seg), j1 = std::min(len, j0 + seg);
      float* p = scores + n * kLanes * u.stride;
      float* most = best.data() + t * kLanes;
#if defined(ATTEND_AMX)
      if constexpr (std::is_same_v<T, uint16_t>) {
        if (amx) {
          alignas(64) uint32_t qb[32 * kLanes];
          __m512 bv = _mm512_set1_ps(-INFINITY);
          amx_lane_queries(a.q, a.nb, qb);
          if (j0 < j1) amx_lane_scores(qb, a.hidden, a.k, j0, j1, p, bv);
          _mm512_storeu_ps(most, bv);
          continue;
        }
      }
#endif
      if (a.nb <= kFew) {
        __m512 bv[kFew];
        for (int64_t b = 0; b < a.nb; ++b) bv[b] = _mm512_set1_ps(-INFINITY);
        if (j0 < j1) few_scores(a.q, a.nb, a.mrow, a.k, j0, j1, len, u.stride, p, bv);
        for (int64_t b = 0; b < a.nb; ++b) most[b] = _mm512_reduce_max_ps(bv[b]);
      } else {
        __m512 bv = _mm512_set1_ps(-INFINITY);
        if (j0 < j1) lane_scores_of(a.q, a.nb, a.hidden, a.k, j0, j1, p, bv);
        _mm512_storeu_ps(most, bv);
      }
    }
#if defined(ATTEND_AMX)
    if (amx) _tile_release();
#endif
  };
  const auto exp_part = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / segs, s = t % segs;
      const int64_t nb = u.rows_of(n);
      const int64_t j0 = std::min(len, s * seg), j1 = std::min(len, j0 + seg);
      float* p = scores + n * kLanes * u.stride;
      __m512 m = _mm512_set1_ps(-INFINITY);
      for (int64_t r = 0; r < segs; ++r)
        m = _mm512_max_ps(m, _mm512_loadu_ps(best.data() + (n * segs + r) * kLanes));
      if (!lanes(nb)) {
        alignas(64) float mb[kLanes];
        _mm512_store_ps(mb, m);
        for (int64_t b = 0; b < nb; ++b)
          exps(p + b * u.stride + j0, mb[b], j1 - j0, p + b * u.stride + j0);
      } else {
#if defined(ATTEND_AMX)
        if (amx) {
          amx_lane_exps(p, m, j0, j1);
          continue;
        }
#endif
        lane_exps(p, m, j0, j1);
      }
    }
  };
  const auto value_part = [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Unit<T> a = u.unit(t / 2);
      const float* p = scores + (t / 2) * kLanes * u.stride;
      float den[kLanes] = {};
      if (!lanes(a.nb))
        weighted_values<true, 2>(p, 1, u.stride, a.nb, 5, a.v, len, den, a.orow, (t % 2) * 32,
                                 nullptr, a.end);
      else
        weighted_values<true, 2>(p, kLanes, 1, a.nb, 6, a.v, len, den, a.orow, (t % 2) * 32,
                                 nullptr, a.end);
    }
  };
  at::parallel_for(0, units * segs, 1, score_part);
  at::parallel_for(0, units * segs, 1, exp_part);
#if defined(ATTEND_AMX)
  if (amx) {
    amx_split_values(u, units, scores);
    return;
  }
#endif
  at::parallel_for(0, units * 2, 1, value_part);
}

}  // namespace
#endif
