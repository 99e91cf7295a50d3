// AMX tile setup shared by the int8 linears (w8a8.cpp) and the bf16 prompt attention
// (prompt_amx.cpp): both use all 8 tiles as 16 rows of 64 bytes.

#pragma once

#if defined(__AMX_TILE__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>

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

// this thread's tiles: every one 16 rows of 64 bytes. The configuration is a constant, not a
// local filled before the load: GCC 12's _tile_loadconfig tells the compiler it reads only a
// pointer's worth of bytes, and an out-of-line copy of this function dropped the row and
// column stores as dead (ldtilecfg then faulted on the garbage)
inline void amx_configure() {
  static constexpr TileConfig kConfig = [] {
    TileConfig cfg;
    for (int t = 0; t < 8; ++t) {
      cfg.rows[t] = 16;
      cfg.colsb[t] = 64;
    }
    return cfg;
  }();
  _tile_loadconfig(&kConfig);
}

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AMX_BF16__)
// One KV head's values transposed in blocks of 32 keys, vt[j / 32][d][j % 32] = v[j][d] for
// j < len, 0 up to padded (a multiple of 32), d < 64: each A tile of the value products is
// 1 KB in one piece.
inline void transpose_values(const uint16_t* v, int64_t len, int64_t padded, uint16_t* vt) {
  for (int64_t j0 = 0; j0 < padded; j0 += 16) {
    for (int64_t blk = 0; blk < 4; ++blk) {
      alignas(64) uint16_t tile[16][16];
      for (int64_t i = 0; i < 16; ++i) {
        if (j0 + i < len)
          std::memcpy(tile[i], v + (j0 + i) * 64 + blk * 16, 32);
        else
          std::memset(tile[i], 0, 32);
      }
      uint16_t* dst = vt + (j0 / 32) * 64 * 32 + blk * 16 * 32 + j0 % 32;
      for (int64_t d = 0; d < 16; ++d)
        for (int64_t i = 0; i < 16; ++i) dst[d * 32 + i] = tile[i][d];
    }
  }
}

// Scores of the 32 keys from k (rows of 64 bf16) against the 16 queries in B tiles 1 (dims
// 0-31) and 2 (dims 32-63), transposed: s[key][16] fp32 (S^T = K Q^T: the key rows are the A
// tiles as they lie). Fewer than 32 keys (valid): the rest read as 0 from a zeroed copy, so no
// row past them is read. Uses tiles 0 and 3-7.
inline void key_block_scores(const uint16_t* k, int64_t valid, float* s) {
  alignas(64) uint16_t tail[32][64];
  if (valid < 32) {
    std::memset(tail, 0, sizeof(tail));
    std::memcpy(tail, k, valid * 128);
    k = tail[0];
  }
  _tile_zero(3);
  _tile_zero(4);
  _tile_loadd(0, k, 128);
  _tile_loadd(5, k + 32, 128);
  _tile_loadd(6, k + 16 * 64, 128);
  _tile_loadd(7, k + 16 * 64 + 32, 128);
  _tile_dpbf16ps(3, 0, 1);
  _tile_dpbf16ps(4, 6, 1);
  _tile_dpbf16ps(3, 5, 2);
  _tile_dpbf16ps(4, 7, 2);
  _tile_stored(3, s, 64);
  _tile_stored(4, s + 16 * 16, 64);
}
#endif

}  // namespace
#endif
