// Suffix matching and continuation tries over a token history (prompt lookup and AASD).
//
// The numpy versions (drafters/retrieval.py) are a dozen array calls and a Python loop over
// up to 16 x 20 continuation tokens a round. Run just after a verify forward has streamed
// the weights through the caches, each of those calls costs tens of microseconds: AASD's
// suffix match took about 0.1 ms and its trie counting about as much again, 3-4% of a round.
// Here each is one call. The results are the numpy versions' exactly (same matches, same
// weights summed in the same order, same ranking), which the tests check.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <unordered_map>
#include <vector>

#include "retrieval.h"

namespace py = pybind11;
using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// (n, starts): the longest suffix (min_n..max_n tokens) that occurs earlier, and where the
// continuation of each of its `limit` most recent occurrences starts (ascending).
py::tuple suffix_matches(IdArray history, int64_t max_n, int64_t min_n, int64_t limit) {
  const int64_t length = history.size();
  const int64_t* t = history.data();
  std::vector<int64_t> found;  // occurrence ends with the best run, most recent first
  int64_t best = 0;
  if (length >= std::max<int64_t>(min_n, 1) + 1) {
    const int64_t offsets = std::min(max_n, length - 1);
    const int64_t last = t[length - 1];
    for (int64_t e = length - 2; e >= 0; --e) {
      if (t[e] != last) continue;
      int64_t run = 1;
      while (run < offsets && e - run >= 0 && t[e - run] == t[length - 1 - run]) ++run;
      if (run > best) {
        best = run;
        found.clear();
      }
      if (run == best && (limit <= 0 || static_cast<int64_t>(found.size()) < limit))
        found.push_back(e);
    }
  }
  if (best < min_n) {
    best = 0;
    found.clear();
  }
  py::array_t<int64_t> starts(static_cast<py::ssize_t>(found.size()));
  auto out = starts.mutable_data();
  for (size_t i = 0; i < found.size(); ++i) out[i] = found[found.size() - 1 - i] + 1;
  return py::make_tuple(best, starts);
}

// The trie of the continuations after `starts` (retrieval.h).
Ranked rank_continuations(const int64_t* t, int64_t size, const int64_t* s, int64_t n_starts,
                          int64_t length, double recency, int64_t max_out) {
  Ranked trie;
  std::unordered_map<uint64_t, int64_t> child;
  double w = 1.0;
  for (int64_t k = n_starts - 1; k >= 0; --k) {
    int64_t node = -1;
    const int64_t end = std::min(s[k] + length, size);
    for (int64_t p = s[k]; p < end; ++p) {
      const uint64_t key = (static_cast<uint64_t>(node + 1) << 32) | static_cast<uint32_t>(t[p]);
      auto [it, fresh] = child.try_emplace(key, static_cast<int64_t>(trie.tokens.size()));
      if (fresh) {
        trie.tokens.push_back(t[p]);
        trie.parents.push_back(node);
        trie.depths.push_back(node < 0 ? 1 : trie.depths[node] + 1);
        trie.sources.push_back(p);
        trie.weights.push_back(0.0);
      }
      node = it->second;
      trie.weights[node] += w;
    }
    w *= recency;
  }
  std::vector<int64_t> order(trie.tokens.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    if (trie.weights[a] != trie.weights[b]) return trie.weights[a] > trie.weights[b];
    return trie.depths[a] < trie.depths[b];
  });
  std::vector<int64_t> rank(order.size());
  for (size_t r = 0; r < order.size(); ++r) rank[order[r]] = static_cast<int64_t>(r);
  const size_t n = max_out > 0 ? std::min(order.size(), static_cast<size_t>(max_out)) : order.size();
  Ranked out;
  for (size_t r = 0; r < n; ++r) {
    const int64_t i = order[r];
    out.tokens.push_back(trie.tokens[i]);
    out.parents.push_back(trie.parents[i] < 0 ? -1 : rank[trie.parents[i]]);
    out.depths.push_back(trie.depths[i]);
    out.sources.push_back(trie.sources[i]);
    out.weights.push_back(trie.weights[i]);
  }
  return out;
}

// The ranked trie as lists (tokens, parents, depths, sources, weights); only the first
// `max_out` ranks (0: all): making the Python numbers for every node of a 16 x 20 trie was
// most of the call.
py::tuple continuation_trie(IdArray history, IdArray starts, int64_t length, double recency,
                            int64_t max_out) {
  const Ranked trie = rank_continuations(history.data(), history.size(), starts.data(),
                                         starts.size(), length, recency, max_out);
  return py::make_tuple(to_list(trie.tokens), to_list(trie.parents), to_list(trie.depths),
                        to_list(trie.sources), to_list(trie.weights));
}
