// AMX tile setup shared by the int8 linears (w8a8.cpp) and the bf16 prompt attention
// (prompt_amx.cpp): both use all 8 tiles as 16 rows of 64 bytes.

#pragma once

#if defined(__AMX_TILE__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

namespace {

struct TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Linux hands out AMX state only to a process that asked for it (arch_prctl, once)
inline bool amx_permitted() {
  constexpr int kReqXcompPerm = 0x1023, kXtileData = 18;
  static const bool ok = syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
  return ok;
}

// this thread's tiles: every one 16 rows of 64 bytes
inline void amx_configure() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  _tile_loadconfig(&cfg);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
// 32 bf16: a[0], b[0], a[1], b[1], ... a[15], b[15] from two vectors of 16 floats (rounded to
// nearest even): two rows of a pair-packed B tile's worth, one pair per column
inline __m512i interleave_bf16(__m512 a, __m512 b) {
  const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh(b, a);  // a in the low half, b in the high
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                       24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                       16, 0);
  return _mm512_permutexvar_epi16(idx, ab);
}
#endif

}  // namespace
#endif
