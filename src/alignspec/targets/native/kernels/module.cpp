// The Python module of alignspec's CPU kernels (built by cpu_kernel.py).

#include <pybind11/numpy.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <string>
#include <vector>

#include "layers.h"

std::vector<at::Tensor> pack(at::Tensor weight);
at::Tensor linear(at::Tensor x, at::Tensor packed, at::Tensor colsum, at::Tensor w_scale,
                  c10::optional<at::Tensor> bias, int64_t n);
std::string isa();
int64_t amx_min_rows(int64_t rows);
at::Tensor attend_rows(at::Tensor q, at::Tensor keys, at::Tensor values,
                       c10::optional<at::Tensor> mask, double scale);
at::Tensor rope_attend(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor keys,
                       at::Tensor values, int64_t start, int64_t heads,
                       c10::optional<at::Tensor> mask, double scale,
                       c10::optional<at::Tensor> values_t, int64_t vt_done);
at::Tensor rope_write(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor keys,
                      at::Tensor values, int64_t start, int64_t heads);
bool causal_attend_ok(int64_t d);
bool attend_bf16_amx();
bool attend_bf16_queries();
int64_t attend_tree_depth();
at::Tensor causal_attend(at::Tensor q, at::Tensor keys, at::Tensor values, int64_t start,
                         double scale);
bool causal_attend_bf16_ok(int64_t d);
at::Tensor causal_attend_bf16(at::Tensor q, at::Tensor keys, at::Tensor values, int64_t start,
                              double scale);
at::Tensor silu_mul(at::Tensor gu);
at::Tensor gate_up_silu(at::Tensor x, at::Tensor packed, at::Tensor colsum, at::Tensor w_scale,
                        c10::optional<at::Tensor> bias, int64_t n);
std::vector<at::Tensor> top_probs(at::Tensor logits, int64_t k);
void top_probs_into(at::Tensor logits, at::Tensor ids_out, at::Tensor probs_out,
                    at::Tensor known_out, const std::vector<int64_t>& rows);
std::vector<bool> conditional_ok(at::Tensor logits, const std::vector<int64_t>& parents,
                                 const std::vector<int64_t>& tokens,
                                 const std::vector<int64_t>& eos, double tau);
at::Tensor rms_norm(at::Tensor x, at::Tensor w, double eps);
at::Tensor add_rms_norm_(at::Tensor x, at::Tensor delta, at::Tensor w, double eps);
void add_rms_norm_into(at::Tensor x, at::Tensor delta, at::Tensor w, double eps, at::Tensor out);
using IdArray = pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast>;
pybind11::tuple suffix_matches(IdArray history, int64_t max_n, int64_t min_n, int64_t limit);
pybind11::tuple continuation_trie(IdArray history, IdArray starts, int64_t length, double recency,
                                  int64_t max_out);
pybind11::tuple aasd_tree(IdArray history, IdArray starts, int64_t draft_len, double recency,
                          double total, int64_t max_nodes, IdArray table_ids,
                          pybind11::array_t<float, pybind11::array::c_style> table_probs,
                          pybind11::array_t<bool, pybind11::array::c_style> table_known,
                          bool alignment, int64_t expand, int64_t hidden_rows, int64_t prefetch);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack", &pack, "pack int8 [N, K] weights for linear()");
  m.def("linear", &linear, "per-row W8A8 linear");
  m.def("isa", &isa, "the instruction set compiled in");
  m.def("amx_min_rows", &amx_min_rows, "rows from which linear() runs on AMX (0: never)");
  m.def("attend_rows", &attend_rows, "few-row attention summed in slot order");
  m.def("attend_tree_depth", &attend_tree_depth,
        "the deepest a draft-tree row may sit below the committed slots (0: no limit)");
  m.def("attend_bf16_amx", &attend_bf16_amx, "whether a bf16 cache is scored on AMX tiles");
  m.def("attend_bf16_queries", &attend_bf16_queries,
        "whether a bf16 cache is scored with bf16 queries (AMX tiles or AVX512-BF16)");
  m.def("rope_attend", &rope_attend, "rotary + cache write + attend_rows for one layer",
        pybind11::arg("qkv"), pybind11::arg("cos"), pybind11::arg("sin"), pybind11::arg("keys"),
        pybind11::arg("values"), pybind11::arg("start"), pybind11::arg("heads"),
        pybind11::arg("mask"), pybind11::arg("scale"), pybind11::arg("values_t") = pybind11::none(),
        pybind11::arg("vt_done") = 0);
  m.def("rope_write", &rope_write, "a prompt chunk's rotary + cache write, rotated queries out");
  m.def("causal_attend_ok", &causal_attend_ok, "whether causal_attend runs for this head size");
  m.def("causal_attend", &causal_attend, "a prompt chunk's attention, rows as if decoded alone");
  m.def("causal_attend_bf16_ok", &causal_attend_bf16_ok,
        "whether causal_attend_bf16 runs here (AMX-BF16) for this head size");
  m.def("causal_attend_bf16", &causal_attend_bf16, "a prompt chunk's bf16 attention on AMX");
  m.def("top_probs", &top_probs, "top-k ids and probabilities of logits rows");
  m.def("top_probs_into", &top_probs_into, "top_probs written into given rows of a table");
  m.def("conditional_ok", &conditional_ok, "AASD's conditional rule for every draft node");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of a fused gate/up projection");
  m.def("gate_up_silu", &gate_up_silu, "silu_mul(linear(...)) of a fused gate/up projection");
  m.def("rms_norm", &rms_norm, "per-row RMSNorm");
  m.def("add_rms_norm_", &add_rms_norm_, "x += delta, then per-row RMSNorm of x");
  m.def("add_rms_norm_into", &add_rms_norm_into, "add_rms_norm_, the normed rows into out");
  m.def("suffix_matches", &suffix_matches,
        "longest earlier suffix match of a token history and its latest starts");
  m.def("continuation_trie", &continuation_trie,
        "ranked, recency-weighted trie of the continuations after given starts");
  m.def("aasd_tree", &aasd_tree,
        "AASD's draft tree, the rows to look up next and which nodes are alignment siblings");
  pybind11::class_<DecoderStack>(m, "DecoderStack")
      .def(pybind11::init<const std::vector<at::Tensor>&, at::Tensor, int64_t, int64_t, int64_t,
                          double, double>())
      .def("forward", &DecoderStack::forward, "every layer of the int8 decoder in one call");
}
