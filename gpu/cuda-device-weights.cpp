#include "gpu/cuda-device-weights.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

#include "base/half.hpp"
#include "model/hf-config.hpp"

namespace infer::gpu {

bool role_on_device_fp32(tensor_role r) {
  switch (r) {
    case tensor_role::out_norm_w:
    case tensor_role::out_norm_b:
    case tensor_role::attn_norm_w:
    case tensor_role::attn_norm_b:
    case tensor_role::q_norm_w:
    case tensor_role::k_norm_w:
    case tensor_role::post_attn_norm_w:
    case tensor_role::ffn_norm_w:
    case tensor_role::ffn_norm_b:
    case tensor_role::post_ffn_norm_w:
      return true;
    default:
      return false;
  }
}

result<cuda::dtype> resolve_device_dtype(const model_config& cfg, const std::string& requested) {
  if (requested != "auto" && requested != "bf16" && requested != "fp16" && !requested.empty())
    return make_status(errc::invalid_argument,
                       fmt::format("dtype '{}': expected auto, bf16 or fp16", requested));
  if (cfg.arch == arch_id::gpt2) {
    if (requested == "bf16")
      return make_status(errc::invalid_argument,
                         "dtype bf16: GPT-2 runs in fp16 on the CUDA backend (use auto or fp16)");
    return cuda::dtype::f16;
  }
  if (requested == "bf16") return cuda::dtype::bf16;
  if (requested == "fp16") return cuda::dtype::f16;
  // auto: the checkpoint's own 16-bit type; fp32 or unknown checkpoints run in bf16.
  return cfg.torch_dtype == "float16" ? cuda::dtype::f16 : cuda::dtype::bf16;
}

namespace {

struct layout_plan {
  std::vector<size_t> off;  // per slot (as cuda_device_weights::ptrs); npos: absent
  size_t bytes = 0;
  static constexpr size_t npos = ~size_t(0);
};

size_t slot_of(tensor_role r, int layer) {
  return size_t(role_is_layer(r) ? layer + 1 : 0) * k_n_roles + size_t(r);
}

// One allocation for the whole model, each array 256-byte aligned (cuBLASLt and the
// kernels' 16-byte vector loads want aligned rows).
layout_plan plan_layout(const model_config& c, int32_t vocab_padded) {
  layout_plan p;
  p.off.assign(size_t(c.n_layer + 1) * k_n_roles, layout_plan::npos);
  auto add = [&](tensor_role r, int layer) {
    const auto shape = role_shape(c, r);
    if (shape.empty()) return;
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    if (r == tensor_role::tok_embd || r == tensor_role::lm_head) n = int64_t(vocab_padded) * shape[1];
    const size_t off = (p.bytes + 255) & ~size_t(255);
    p.off[slot_of(r, layer)] = off;
    p.bytes = off + size_t(n) * (role_on_device_fp32(r) ? 4 : 2);
  };
  for (int r = 0; r < k_n_roles; ++r)
    if (!role_is_layer(tensor_role(r))) add(tensor_role(r), -1);
  for (int l = 0; l < c.n_layer; ++l)
    for (int r = 0; r < k_n_roles; ++r)
      if (role_is_layer(tensor_role(r))) add(tensor_role(r), l);
  return p;
}

float read_f32(const uint8_t* p, st_dtype t) {
  if (t == st_dtype::f32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return t == st_dtype::bf16 ? bf16_to_float(h) : half_to_float(h);
}

// Converts host tensors (fp32, fp16 or bf16, possibly unaligned) to the device type
// through two pinned staging buffers, the copy of one overlapping the conversion of
// the next.
class uploader {
 public:
  status init() {
    INFER_STATUS_TRY(st_.create());
    for (int i = 0; i < 2; ++i) {
      INFER_STATUS_TRY(stage_[i].allocate(chunk_bytes));
      INFER_STATUS_TRY(ev_[i].create());
      INFER_CUDA_TRY(cudaEventRecord(ev_[i].get(), st_.get()));
    }
    return status::ok();
  }
  // n values of type src_t at src -> dst (device) as fp32 or dt.
  status put(uint8_t* dst, const void* src, st_dtype src_t, int64_t n, bool to_fp32,
             cuda::dtype dt) {
    const auto* s = static_cast<const uint8_t*>(src);
    const size_t in_sz = st_dtype_size(src_t), out_sz = to_fp32 ? 4 : 2;
    const int64_t per_chunk = int64_t(chunk_bytes / out_sz);
    for (int64_t i0 = 0; i0 < n; i0 += per_chunk) {
      const int64_t m = std::min(per_chunk, n - i0);
      INFER_CUDA_TRY(cudaEventSynchronize(ev_[cur_].get()));
      uint8_t* out = stage_[cur_].as<uint8_t>();
      const uint8_t* in = s + size_t(i0) * in_sz;
      const bool same = (to_fp32 && src_t == st_dtype::f32) ||
                        (!to_fp32 && dt == cuda::dtype::bf16 && src_t == st_dtype::bf16) ||
                        (!to_fp32 && dt == cuda::dtype::f16 && src_t == st_dtype::f16);
      if (same) {
        std::memcpy(out, in, size_t(m) * out_sz);
      } else if (to_fp32) {
        auto* o = reinterpret_cast<float*>(out);
        for (int64_t i = 0; i < m; ++i) o[i] = read_f32(in + size_t(i) * in_sz, src_t);
      } else {
        auto* o = reinterpret_cast<uint16_t*>(out);
        if (dt == cuda::dtype::bf16)
          for (int64_t i = 0; i < m; ++i) o[i] = float_to_bf16(read_f32(in + size_t(i) * in_sz, src_t));
        else
          for (int64_t i = 0; i < m; ++i) o[i] = float_to_half(read_f32(in + size_t(i) * in_sz, src_t));
      }
      INFER_CUDA_TRY(cudaMemcpyAsync(dst + size_t(i0) * out_sz, out, size_t(m) * out_sz,
                                     cudaMemcpyHostToDevice, st_.get()));
      INFER_CUDA_TRY(cudaEventRecord(ev_[cur_].get(), st_.get()));
      cur_ ^= 1;
    }
    return status::ok();
  }
  status finish() {
    INFER_CUDA_TRY(cudaStreamSynchronize(st_.get()));
    return status::ok();
  }

 private:
  static constexpr size_t chunk_bytes = size_t(16) << 20;
  cuda_stream st_;
  pinned_buffer stage_[2];
  cuda_event ev_[2];
  int cur_ = 0;
};

// Allocates the device arrays for cfg (zeroed: the head's padding rows) and fills ptrs.
result<std::shared_ptr<cuda_device_weights>> make_empty(const model_config& cfg, int device,
                                                        cuda::dtype dt, layout_plan& plan) {
  auto dw = std::make_shared<cuda_device_weights>();
  dw->cfg = cfg;
  dw->device = device;
  dw->dt = dt;
  dw->vocab_padded = int32_t((int64_t(cfg.n_vocab) + 63) / 64 * 64);
  plan = plan_layout(cfg, dw->vocab_padded);
  INFER_CUDA_TRY(cudaSetDevice(device));
  size_t free_b = 0, total_b = 0;
  INFER_CUDA_TRY(cudaMemGetInfo(&free_b, &total_b));
  if (plan.bytes > free_b)
    return make_status(errc::out_of_memory,
                       fmt::format("cuda weights: the model needs {} bytes on device {}, {} free",
                                   plan.bytes, device, free_b));
  INFER_STATUS_TRY(dw->storage.allocate(plan.bytes));
  INFER_CUDA_TRY(cudaMemset(dw->storage.get(), 0, plan.bytes));
  dw->ptrs.assign(plan.off.size(), nullptr);
  for (size_t i = 0; i < plan.off.size(); ++i)
    if (plan.off[i] != layout_plan::npos) dw->ptrs[i] = dw->storage.as<uint8_t>() + plan.off[i];
  return dw;
}

result<std::shared_ptr<const cuda_device_weights>> upload_host(const model_weights& w, int device,
                                                               cuda::dtype dt) {
  layout_plan plan;
  auto made = make_empty(w.cfg, device, dt, plan);
  if (!made) return made.error();
  auto dw = made.value();
  dw->source = w.source;
  uploader up;
  INFER_STATUS_TRY(up.init());
  auto put_role = [&](tensor_role r, int layer) -> status {
    const auto shape = role_shape(w.cfg, r);
    if (shape.empty()) return status::ok();
    const float* src = w.get(r, layer);
    if (!src)
      return make_status(errc::invalid_argument,
                         fmt::format("cuda weights: {} has no {} (layer {})", w.source,
                                     role_name(r), layer));
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    auto* dst = const_cast<uint8_t*>(static_cast<const uint8_t*>(dw->get(r, layer)));
    return up.put(dst, src, st_dtype::f32, n, role_on_device_fp32(r), dt);
  };
  for (int r = 0; r < k_n_roles; ++r)
    if (!role_is_layer(tensor_role(r))) INFER_STATUS_TRY(put_role(tensor_role(r), -1));
  for (int l = 0; l < w.cfg.n_layer; ++l)
    for (int r = 0; r < k_n_roles; ++r)
      if (role_is_layer(tensor_role(r))) INFER_STATUS_TRY(put_role(tensor_role(r), l));
  INFER_STATUS_TRY(up.finish());
  return std::shared_ptr<const cuda_device_weights>(std::move(dw));
}

// A checkpoint tensor fills rows [row_offset, row_offset + shape[0]) of its role array.
status put_spec(uploader& up, cuda_device_weights& dw, const tensor_spec& s, const void* data,
                st_dtype t, int64_t numel) {
  auto* base = const_cast<uint8_t*>(static_cast<const uint8_t*>(dw.get(s.role, s.layer)));
  if (!base)
    return make_status(errc::invalid_argument,
                       fmt::format("cuda weights: tensor {} has no place (role {})", s.hf_name,
                                   role_name(s.role)));
  const bool f32 = role_on_device_fp32(s.role);
  const int64_t row = s.shape.empty() || s.shape[0] == 0 ? 0 : numel / s.shape[0];
  return up.put(base + size_t(s.row_offset * row) * (f32 ? 4 : 2), data, t, numel, f32, dw.dt);
}

result<std::shared_ptr<const cuda_device_weights>> upload_spec(const std::string& spec,
                                                               const load_options& opts,
                                                               int device,
                                                               const std::string& dtype) {
  uploader up;
  if (spec.rfind("synthetic:", 0) == 0) {
    auto cfg = synthetic_config(spec.substr(10));
    if (!cfg) return cfg.error();
    model_config c = cfg.value();
    serve_context(c, opts.max_model_len);
    auto dt = resolve_device_dtype(c, dtype);
    if (!dt) return dt.error();
    layout_plan plan;
    auto made = make_empty(c, device, dt.value(), plan);
    if (!made) return made.error();
    auto dw = made.value();
    dw->source = spec;
    INFER_STATUS_TRY(up.init());
    INFER_STATUS_TRY(visit_synthetic(c, opts.seed, [&](const tensor_spec& s, std::span<const float> v) {
      return put_spec(up, *dw, s, v.data(), st_dtype::f32, int64_t(v.size()));
    }));
    INFER_STATUS_TRY(up.finish());
    return std::shared_ptr<const cuda_device_weights>(std::move(dw));
  }
  auto ck = open_checkpoint(spec, opts.max_model_len);
  if (!ck) return ck.error();
  auto dt = resolve_device_dtype(ck.value().cfg, dtype);
  if (!dt) return dt.error();
  layout_plan plan;
  auto made = make_empty(ck.value().cfg, device, dt.value(), plan);
  if (!made) return made.error();
  auto dw = made.value();
  dw->source = spec;
  INFER_STATUS_TRY(up.init());
  // put() has read the mapped bytes (into pinned staging) before it returns, so the
  // shard may be unmapped as soon as visit moves on.
  INFER_STATUS_TRY(ck.value().visit(
      [&](const tensor_spec& s, const st_tensor_view& v, const safetensors_file&) -> status {
        return put_spec(up, *dw, s, v.data, v.dtype, v.numel());
      }));
  INFER_STATUS_TRY(up.finish());
  return std::shared_ptr<const cuda_device_weights>(std::move(dw));
}

struct cache_entry {
  std::weak_ptr<const model_weights> host;  // host-weights entries
  std::string key;                          // streamed entries
  int device = 0;
  cuda::dtype dt = cuda::dtype::f16;
  std::weak_ptr<const cuda_device_weights> dev;
};

std::mutex g_cache_mutex;  // taken when a backend is created, never in a step
std::vector<cache_entry> g_cache;

void prune() {
  for (auto it = g_cache.begin(); it != g_cache.end();) {
    if (it->dev.expired() || (it->key.empty() && it->host.expired()))
      it = g_cache.erase(it);
    else
      ++it;
  }
}

}  // namespace

result<std::shared_ptr<const cuda_device_weights>> acquire_cuda_device_weights(
    const std::shared_ptr<const model_weights>& weights, int device, cuda::dtype dt) {
  if (!weights) return make_status(errc::invalid_argument, "cuda weights: no weights");
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  prune();
  for (auto& e : g_cache)
    if (e.key.empty() && e.host.lock() == weights && e.device == device && e.dt == dt)
      if (auto d = e.dev.lock()) return d;
  auto up = upload_host(*weights, device, dt);
  if (!up) return up.error();
  g_cache.push_back({weights, "", device, dt, up.value()});
  return up.value();
}

result<std::shared_ptr<const cuda_device_weights>> acquire_cuda_device_weights(
    const std::string& spec, const load_options& opts, int device, const std::string& dtype) {
  const std::string key = fmt::format("{}|{}|{}|{}", spec, opts.max_model_len, opts.seed, dtype);
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  prune();
  for (auto& e : g_cache)
    if (e.key == key && e.device == device)
      if (auto d = e.dev.lock()) return d;
  auto up = upload_spec(spec, opts, device, dtype);
  if (!up) return up.error();
  g_cache.push_back({{}, key, device, up.value()->dt, up.value()});
  return up.value();
}

}  // namespace infer::gpu
