// model_config: the hyper-parameters of one model of any supported architecture.
//
// One struct for every family, so that backends, the scheduler and the actors keep a
// single `config()` type. The first six fields keep GPT-2's historical names and order
// (aggregate initialisers `model_config{V, P, C, L, H, eps}` still mean a GPT-2 model);
// the rest default to GPT-2's behaviour, so a value-initialised model_config is GPT-2.
//
// Filled from a Hugging Face config.json by parse_hf_config (model/hf-config.hpp) or
// from a synthetic spec (model/weights.hpp). After parsing every derived value is
// resolved (n_kv_head, n_head_dim, n_ff, rotary_dim are set), but code that builds a
// model_config by hand may leave them 0: use the accessors, which apply the defaults.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace infer {

enum class arch_id : uint8_t { gpt2, llama, mistral, qwen2, qwen3, glm4, phi3 };

enum class norm_kind : uint8_t {
  layernorm,  // (x - mean) / sqrt(var + eps) * w + b
  rmsnorm,    // x / sqrt(mean(x^2) + eps) * w
};

enum class pos_kind : uint8_t {
  learned,           // GPT-2: a [n_positions, C] table added to the token embedding
  rope_neox,         // Llama/Qwen/Mistral: dim i pairs with i + rotary_dim/2 ("rotate_half")
  rope_interleaved,  // GLM-4 / GPT-J: dim 2i pairs with 2i + 1
};

enum class act_kind : uint8_t {
  gelu_tanh,  // GPT-2 "gelu_new" / "gelu_pytorch_tanh"
  silu,       // Llama family "silu" / "swish"
};

// How the rotation frequencies are derived (HF modeling_rope_utils names).
enum class rope_type : uint8_t { none, default_, linear, llama3 };

struct rope_config {
  rope_type type = rope_type::none;  // none for learned positions
  double theta = 10000.0;            // rope_theta / rope_parameters.rope_theta
  double factor = 1.0;               // linear, llama3
  double low_freq_factor = 1.0;      // llama3
  double high_freq_factor = 4.0;     // llama3
  int32_t original_max_position = 8192;  // llama3: original_max_position_embeddings
};

struct model_config {
  // --- GPT-2 era fields (names kept: many callers read them) ---
  int32_t n_vocab = 50257;
  int32_t n_ctx = 1024;   // the context served: min(max_position_embeddings, --max-model-len)
  int32_t n_embd = 768;   // hidden_size
  int32_t n_layer = 12;   // num_hidden_layers
  int32_t n_head = 12;    // num_attention_heads
  float ln_eps = 1e-5f;   // layer_norm_epsilon / rms_norm_eps

  // --- architecture and traits (model/arch.hpp fills them from the table) ---
  arch_id arch = arch_id::gpt2;
  norm_kind norm = norm_kind::layernorm;
  pos_kind pos = pos_kind::learned;
  act_kind act = act_kind::gelu_tanh;
  bool glu = false;           // MLP is down(act(gate(x)) * up(x)), gate|up fused as one [2F, C] weight
  bool linear_out_in = false; // weights stored nn.Linear [out, in] (Llama family); false: Conv1D [in, out] (GPT-2)
  bool qkv_bias = true;       // q/k/v projections carry a bias
  bool out_bias = true;       // attention output projection (o_proj / c_proj) carries a bias
  bool mlp_bias = true;       // MLP projections carry biases
  bool qk_norm = false;       // Qwen3: per-head RMSNorm on q and k (weights [head_dim]) before RoPE
  bool post_norms = false;    // GLM-4: RMSNorm on the attention output and on the MLP output before each residual add
  bool tied_head = true;      // LM head is the token embedding (tie_word_embeddings)

  // --- shapes beyond GPT-2 (0: derived, see the accessors) ---
  int32_t n_kv_head = 0;      // num_key_value_heads; 0: n_head
  int32_t n_head_dim = 0;     // head_dim; 0: n_embd / n_head
  int32_t n_ff = 0;           // intermediate_size; 0: 4 * n_embd
  int32_t rotary_dim = 0;     // dims per head that RoPE rotates (head_dim * partial_rotary_factor); 0: all
  int32_t sliding_window = 0; // attend to the last `sliding_window` positions (incl. the own); 0: unlimited
  int32_t max_position_embeddings = 0;  // the checkpoint's limit (GPT-2: n_positions, wpe rows); 0: n_ctx
  rope_config rope;

  // --- metadata ---
  std::vector<int32_t> bos_token_ids;  // bos_token_id (int or list)
  std::vector<int32_t> eos_token_ids;  // eos_token_id (int or list)
  std::string torch_dtype;             // "bfloat16", "float16", "float32" or "" (absent)

  int32_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int32_t head_dim() const { return n_head_dim > 0 ? n_head_dim : (n_head > 0 ? n_embd / n_head : 0); }
  int32_t ff_dim() const { return n_ff > 0 ? n_ff : 4 * n_embd; }
  int32_t rot_dim() const { return rotary_dim > 0 ? rotary_dim : head_dim(); }
  int32_t n_positions() const { return max_position_embeddings > 0 ? max_position_embeddings : n_ctx; }
  int32_t q_dim() const { return n_head * head_dim(); }      // width of q (= attention output)
  int32_t kv_dim() const { return kv_heads() * head_dim(); } // width of k and of v: one KV cache row
  int32_t qkv_dim() const { return q_dim() + 2 * kv_dim(); } // fused q|k|v row
  bool uses_rope() const { return pos != pos_kind::learned; }
  // Bytes of K and V for one token over all layers at `elem_bytes` per value.
  int64_t kv_bytes_per_token(int64_t elem_bytes) const {
    return int64_t(n_layer) * 2 * kv_dim() * elem_bytes;
  }
  // Parameters as stored (a tied head counted once).
  int64_t n_params() const;
};

// The short name of an architecture: "gpt2", "llama", ...
const char* arch_name(arch_id a);

}  // namespace infer
