// The ranked continuation trie, shared by retrieval.cpp (prompt lookup's tree) and
// aasd_tree.cpp (AASD's draft tree).

#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

// Trie nodes best first: weight descending, then depth, then creation. A parent is an earlier
// rank (-1: the root); a source is the history position of the node's token in its most
// recent occurrence; a weight sums the continuations through the node (the most recent start
// weighs 1, the k-th most recent recency^k).
struct Ranked {
  std::vector<int64_t> tokens, parents, depths, sources;
  std::vector<double> weights;
};

// The trie of the `length` tokens after each of `starts` (ascending) in the history `t` of
// `size` tokens, cut to its first `max_out` ranks (0: all).
Ranked rank_continuations(const int64_t* t, int64_t size, const int64_t* s, int64_t n_starts,
                          int64_t length, double recency, int64_t max_out);

// A vector as a Python list (the drafters read plain lists: numbers one by one).
template <typename T>
pybind11::list to_list(const std::vector<T>& v) {
  pybind11::list out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = v[i];
  return out;
}
