// The k most likely ids of each logits row and their probabilities, in one pass per row (CPU).
//
// AASD looks up the target's top-m at a few positions every round. In torch that is a
// logsumexp (a max, then exps over the whole 49k vocabulary), a block search and three topks:
// about 70 us a row on a 2-core VM. Here a row is read twice: once for its maximum and its
// top k (a lane compare against the k-th value skips almost every entry), once for the sum
// of exps (vexp.h), summed in a fixed lane order, so a row never depends on the others.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "vexp.h"

namespace {

// Insert (v, i) into the descending list (vals, ids) of at most k entries; an equal value
// already there stays ahead (the lower id wins a tie, as the row is scanned in order).
inline void insert(float v, int64_t i, int64_t k, std::vector<float>& vals,
                   std::vector<int64_t>& ids) {
  auto pos = std::upper_bound(vals.begin(), vals.end(), v, std::greater<float>());
  const auto at = pos - vals.begin();
  if (at >= k) return;
  vals.insert(pos, v);
  ids.insert(ids.begin() + at, i);
  if (static_cast<int64_t>(vals.size()) > k) {
    vals.pop_back();
    ids.pop_back();
  }
}

float exp_sum(const float* x, int64_t n, float best) {
  int64_t i = 0;
  float total = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  const __m512 b = set1(best);
  for (; i + 16 <= n; i += 16)
    acc = _mm512_add_ps(acc, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), b)));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc);
  for (float v : lanes) total += v;
#elif defined(ATTEND_AVX2)
  __m256 acc = _mm256_setzero_ps();
  const __m256 b = set8(best);
  for (; i + 8 <= n; i += 8)
    acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), b)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  for (float v : lanes) total += v;
#endif
  for (; i < n; ++i) total += std::exp(x[i] - best);
  return total;
}

// The k largest entries of a row, best first (vals, ids), in one scan.
void row_best(const float* x, int64_t n, int64_t k, std::vector<float>& vals,
              std::vector<int64_t>& ids) {
  vals.reserve(k + 1);
  ids.reserve(k + 1);
  float kth = -INFINITY;  // entries must beat it once k are kept
  int64_t i = 0;
#if defined(ATTEND_AVX2) || defined(__AVX512F__)
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(kth), _CMP_GT_OQ));
    if (mask == 0 && static_cast<int64_t>(vals.size()) >= k) continue;
    for (int j = 0; j < 8; ++j) {
      if (static_cast<int64_t>(vals.size()) < k || x[i + j] > kth) {
        insert(x[i + j], i + j, k, vals, ids);
        if (static_cast<int64_t>(vals.size()) >= k) kth = vals.back();
      }
    }
  }
#endif
  for (; i < n; ++i) {
    if (static_cast<int64_t>(vals.size()) < k || x[i] > kth) {
      insert(x[i], i, k, vals, ids);
      if (static_cast<int64_t>(vals.size()) >= k) kth = vals.back();
    }
  }
}

// The probability of a row's largest entry ``best``: the one pass over its exps
float best_prob(const float* x, int64_t n, float best) {
  const float lse = best + std::log(exp_sum(x, n, best));
  return std::exp(best - lse);
}

void row_top(const float* x, int64_t n, int64_t k, int64_t* out_ids, float* out_probs) {
  std::vector<float> vals;
  std::vector<int64_t> ids;
  row_best(x, n, k, vals, ids);
  const float best = vals.empty() ? -INFINITY : vals.front();
  const float lse = best + std::log(exp_sum(x, n, best));
  for (int64_t j = 0; j < k; ++j) {
    const bool have = j < static_cast<int64_t>(vals.size());
    out_ids[j] = have ? ids[j] : 0;
    out_probs[j] = have ? std::exp(vals[j] - lse) : 0.f;
  }
}

}  // namespace

// logits [N, V] fp32 -> (ids [N, k] int64, probs [N, k] fp32), best first
std::vector<at::Tensor> top_probs(at::Tensor logits, int64_t k) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "fp32 [N, V] logits");
  logits = logits.contiguous();
  const int64_t rows = logits.size(0), vocab = logits.size(1);
  TORCH_CHECK(k >= 1 && k <= vocab, "1 <= k <= V");
  auto ids = at::empty({rows, k}, at::kLong);
  auto probs = at::empty({rows, k}, at::kFloat);
  const float* x = logits.data_ptr<float>();
  int64_t* ip = ids.data_ptr<int64_t>();
  float* pp = probs.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) row_top(x + r * vocab, vocab, k, ip + r * k, pp + r * k);
  });
  return {ids, probs};
}

// The same for logits [N, V], written straight into a table's rows: ids_out [L, k] int64,
// probs_out [L, k] fp32 and known_out [L] bool get row rows[i] from logits row i. AASD files
// each round's looked-up rows this way: right after a forward, the top_probs call and the
// half-dozen array calls that stored its output cost about 0.13 ms a round between them.
void top_probs_into(at::Tensor logits, at::Tensor ids_out, at::Tensor probs_out,
                    at::Tensor known_out, const std::vector<int64_t>& rows) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "fp32 [N, V] logits");
  TORCH_CHECK(ids_out.dim() == 2 && ids_out.scalar_type() == at::kLong && ids_out.is_contiguous(),
              "ids_out: contiguous int64 [L, k]");
  TORCH_CHECK(probs_out.dim() == 2 && probs_out.scalar_type() == at::kFloat &&
                  probs_out.is_contiguous() && probs_out.size(1) == ids_out.size(1),
              "probs_out: contiguous fp32 [L, k]");
  TORCH_CHECK(known_out.dim() == 1 && known_out.scalar_type() == at::kBool &&
                  known_out.is_contiguous(),
              "known_out: contiguous bool [L]");
  logits = logits.contiguous();
  const int64_t n = logits.size(0), vocab = logits.size(1), k = ids_out.size(1);
  TORCH_CHECK(static_cast<int64_t>(rows.size()) == n, "one table row per logits row");
  TORCH_CHECK(k >= 1 && k <= vocab, "1 <= k <= V");
  const int64_t size =
      std::min({ids_out.size(0), probs_out.size(0), known_out.size(0)});
  const float* x = logits.data_ptr<float>();
  int64_t* ids = ids_out.data_ptr<int64_t>();
  float* probs = probs_out.data_ptr<float>();
  bool* known = known_out.data_ptr<bool>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = rows[i];
    TORCH_CHECK(r >= 0 && r < size, "table row out of range");
    row_top(x + i * vocab, vocab, k, ids + r * k, probs + r * k);
    known[r] = true;
  }
}

// AASD's conditional rule for every draft node at once (verifiers/conditional.py): node j,
// token tokens[j] under logits row parents[j], passes when p(x) >= min(tau, p_max) and
// l_x > max over eos of l_eos, or when l_x is the row's largest logit. p(x) is
// exp(l_x - l_max) * p_max, p_max as top_probs gives it. The torch version was a dozen
// small ops: 188 us a call right after the forward on a 2-core EPYC, this 108.
// A row's p_max (a pass of exps over the whole vocabulary) is formed only when a node needs
// it: with e = exp(l_x - l_max) below min(tau, 0.5) the node fails whatever p_max is, since
// p_max <= 1 makes p(x) <= e < tau and p(x) <= e * p_max < p_max (most rejected drafts; an
// argmax draft passes on its logit alone). The same decisions.
std::vector<bool> conditional_ok(at::Tensor logits, const std::vector<int64_t>& parents,
                                 const std::vector<int64_t>& tokens,
                                 const std::vector<int64_t>& eos, double tau) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kFloat, "fp32 [N, V] logits");
  TORCH_CHECK(parents.size() == tokens.size(), "one parent row per token");
  logits = logits.contiguous();
  const int64_t n = logits.size(0), vocab = logits.size(1);
  const float* x = logits.data_ptr<float>();
  std::vector<float> l_max(n), p_max(n, -1.f), l_eos(n, -INFINITY);
  std::vector<bool> seen(n, false);
  std::vector<float> vals;
  std::vector<int64_t> ids;
  for (int64_t par : parents) {
    TORCH_CHECK(par >= 0 && par < n, "parent row out of range");
    if (seen[par]) continue;
    seen[par] = true;
    vals.clear();
    ids.clear();
    row_best(x + par * vocab, vocab, 1, vals, ids);
    l_max[par] = vals.empty() ? -INFINITY : vals.front();
    for (int64_t e : eos)
      if (e >= 0 && e < vocab) l_eos[par] = std::max(l_eos[par], x[par * vocab + e]);
  }
  const float t = static_cast<float>(tau);
  const float sure_fail = std::min(t, 0.5f);
  std::vector<bool> ok(tokens.size());
  for (size_t j = 0; j < tokens.size(); ++j) {
    const int64_t par = parents[j], tok = tokens[j];
    TORCH_CHECK(tok >= 0 && tok < vocab, "token out of range");
    const float l_x = x[par * vocab + tok];
    if (l_x == l_max[par]) {
      ok[j] = true;
      continue;
    }
    const float e = std::exp(l_x - l_max[par]);
    if (e < sure_fail) {
      ok[j] = false;
      continue;
    }
    if (p_max[par] < 0.f) p_max[par] = best_prob(x + par * vocab, vocab, l_max[par]);
    const float p_x = e * p_max[par];
    bool pass = p_x >= std::min(t, p_max[par]);
    if (!eos.empty()) pass = pass && l_x > l_eos[par];
    ok[j] = pass;
  }
  return ok;
}
