// AASD's draft tree in one call: the ranked continuation trie, its nodes placed under the
// budget of max_nodes with the alignment siblings after unaligned copies, and the rows whose
// alignment the drafter should look up next (drafters/aasd.py, AASDDrafter._build and
// _lookup, whose Python twin this is, for topk siblings at the leaves).
//
// In Python that was a loop over up to 40 candidates with dict lookups and four-entry list
// conversions per node, then a scan of ~60 positions for rows without alignment: 0.15 ms a
// round on a 2-core EPYC, right after the forward, when every interpreted call runs on cold
// caches. The numbers here are the Python version's exactly (the same doubles in the same
// order), which the tests check.

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "retrieval.h"

namespace py = pybind11;
using IdArray = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

// Draft nodes 1..n under the root 0, each found by (parent, token); at most `most` nodes.
struct Tree {
  explicit Tree(int64_t most) : most(most) {}

  bool full() const { return static_cast<int64_t>(tokens.size()) >= most; }
  double score(int64_t node) const { return node == 0 ? 1.0 : scores[node - 1]; }

  static uint64_t key(int64_t parent, int64_t token) {
    return (static_cast<uint64_t>(parent) << 32) | static_cast<uint32_t>(token);
  }

  int64_t find(int64_t parent, int64_t token) const {
    const auto it = index.find(key(parent, token));
    return it == index.end() ? -1 : it->second;
  }

  // The new node, or -1 where (parent, token) is there already or the tree is full.
  int64_t add(int64_t parent, int64_t token, double s) {
    if (full() || index.count(key(parent, token))) return -1;
    tokens.push_back(token);
    parents.push_back(parent);
    scores.push_back(std::min(s, score(parent)));
    const auto node = static_cast<int64_t>(tokens.size());
    index.emplace(key(parent, token), node);
    return node;
  }

  int64_t most;
  std::vector<int64_t> tokens, parents;
  std::vector<double> scores;
  std::unordered_map<uint64_t, int64_t> index;
};

}  // namespace

// (tokens, parents, scores, lookup, siblings). The trie ranks the `2 * max_nodes` best
// continuations of `draft_len` tokens after `starts` (ascending; `recency` and `total`, the sum of
// the starts' weights, as in AASDDrafter._build). A copy scores its parent's score times the square
// root of its share of its parent's weight; where the alignment table (ids/probs [L, m], known [L])
// knows the target's top-m at the copy's source position and the copy is not the target's first
// choice, up to `expand` of the target's own tokens join as siblings, scored the parent's score
// times their probability. `lookup`: the first `prefetch` distinct positions, below `hidden_rows`
// and without a known row, among the sources (minus one) of the first `max_nodes` candidates, then
// the `2 * draft_len` positions from the best one's source; sorted. `siblings`: the nodes (1-based)
// that are alignment siblings, in the order placed.
py::tuple aasd_tree(IdArray history, IdArray starts, int64_t draft_len, double recency,
                    double total, int64_t max_nodes, IdArray table_ids,
                    py::array_t<float, py::array::c_style> table_probs,
                    py::array_t<bool, py::array::c_style> table_known, bool alignment,
                    int64_t expand, int64_t hidden_rows, int64_t prefetch) {
  const Ranked cands = rank_continuations(history.data(), history.size(), starts.data(),
                                          starts.size(), draft_len, recency, 2 * max_nodes);
  const int64_t rows = table_known.size();
  const int64_t m = table_ids.ndim() == 2 ? table_ids.shape(1) : 0;
  if (table_ids.ndim() != 2 || table_probs.ndim() != 2 || table_probs.shape(1) != m ||
      table_ids.shape(0) < rows || table_probs.shape(0) < rows)
    throw std::invalid_argument("alignment table: ids, probs [L, m] and known [L]");
  const int64_t* ids = table_ids.data();
  const float* probs = table_probs.data();
  const bool* known = table_known.data();
  auto row_of = [&](int64_t t) -> int64_t { return t >= 0 && t < rows && known[t] ? t : -1; };

  std::vector<int64_t> lookup;
  if (alignment && prefetch > 0 && !cands.tokens.empty()) {
    const size_t needed = std::min(cands.sources.size(), static_cast<size_t>(max_nodes));
    auto consider = [&](int64_t p) {
      if (static_cast<int64_t>(lookup.size()) >= prefetch || p < 0 || p >= hidden_rows ||
          row_of(p) >= 0 || std::find(lookup.begin(), lookup.end(), p) != lookup.end())
        return;
      lookup.push_back(p);
    };
    for (size_t r = 0; r < needed; ++r) consider(cands.sources[r] - 1);
    for (int64_t p = cands.sources[0]; p < cands.sources[0] + 2 * draft_len; ++p) consider(p);
    std::sort(lookup.begin(), lookup.end());
  }

  Tree tree(max_nodes);
  std::vector<int64_t> siblings;
  std::vector<int64_t> placed(cands.tokens.size(), -1);
  for (size_t r = 0; r < cands.tokens.size() && !tree.full(); ++r) {
    const int64_t cp = cands.parents[r], tok = cands.tokens[r];
    const int64_t parent = cp < 0 ? 0 : placed[cp];
    if (parent < 0) throw std::logic_error("aasd_tree: a candidate's parent was not placed");
    const double parent_score = tree.score(parent);
    const double ratio = cands.weights[r] / (cp >= 0 ? cands.weights[cp] : total);
    const int64_t node = tree.add(parent, tok, parent_score * std::sqrt(ratio));
    if (node < 0) {  // an alignment sibling holds it already, or the tree is full
      placed[r] = tree.find(parent, tok);
      continue;
    }
    placed[r] = node;
    const int64_t at = alignment ? row_of(cands.sources[r] - 1) : -1;
    if (at < 0 || ids[at * m] == tok) continue;
    int64_t picked = 0;
    for (int64_t k = 0; k < m && picked < expand; ++k) {
      const int64_t id = ids[at * m + k];
      if (id < 0) continue;
      ++picked;
      if (id == tok) continue;
      const int64_t sibling =
          tree.add(parent, id, parent_score * static_cast<double>(probs[at * m + k]));
      if (sibling >= 0) siblings.push_back(sibling);
    }
  }
  return py::make_tuple(to_list(tree.tokens), to_list(tree.parents), to_list(tree.scores),
                        to_list(lookup), to_list(siblings));
}
