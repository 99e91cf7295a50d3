// Where each head-row of a KV head reads its mask row and writes its output (attention.cpp,
// split512.h): head-rows are numbered row-major, then by the query heads sharing a KV head.

#pragma once

#include <cstdint>

namespace {

// Head-rows b0 .. b0 + nb - 1 of KV head g (in qs' order: row-major, then the group): each
// one's mask row (nullptr: no mask) and output row.
void head_rows_at(int64_t g, int64_t b0, int64_t nb, int64_t groups, int64_t heads, int64_t d,
                  const float* mp, int64_t mstride, float* op, const float** mrow,
                  float** orow) {
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t r = (b0 + b) / groups, head = g * groups + (b0 + b) % groups;
    mrow[b] = mp != nullptr ? mp + r * mstride : nullptr;
    orow[b] = op + (r * heads + head) * d;
  }
}

}  // namespace
