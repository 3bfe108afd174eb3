#include "gpu/cuda-device-weights.hpp"

#include <array>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

#include "engine/half.hpp"

namespace infer::gpu {
namespace {

// One allocation for the whole model, each tensor 256-byte aligned (cuBLASLt and the
// 16-byte vector loads of the kernels want aligned rows).
struct packer {
  size_t size = 0;
  size_t add(size_t bytes) {
    const size_t off = (size + 255) & ~size_t(255);
    size = off + bytes;
    return off;
  }
};

struct cache_entry {
  std::weak_ptr<const model_weights> host;
  int device = 0;
  std::weak_ptr<const cuda_device_weights> dev;
};

std::mutex g_cache_mutex;  // taken when a backend is created, never in a step
std::vector<cache_entry> g_cache;

result<std::shared_ptr<const cuda_device_weights>> upload(const model_weights& w, int device) {
  const model_config& c = w.cfg;
  const size_t C = size_t(c.n_embd), V = size_t(c.n_vocab), P = size_t(c.n_ctx);
  auto dw = std::make_shared<cuda_device_weights>();
  dw->cfg = c;
  dw->device = device;
  dw->vocab_padded = int32_t((V + 63) / 64 * 64);

  // Plan the layout: (host source, element count, fp16?, offset).
  struct item {
    const float* src;
    size_t n;
    bool f16;
    size_t off;
    size_t pad_to = 0;  // elements, zero-filled past n
  };
  std::vector<item> items;
  packer pk;
  auto add = [&](const float* src, size_t n, bool f16, size_t pad_to = 0) {
    const size_t total = pad_to > n ? pad_to : n;
    items.push_back({src, n, f16, pk.add(total * (f16 ? 2 : 4)), pad_to});
    return items.size() - 1;
  };
  const size_t i_wte = add(w.wte, V * C, true, size_t(dw->vocab_padded) * C);
  const size_t i_wpe = add(w.wpe, P * C, true);
  std::vector<std::array<size_t, 12>> li(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    const layer_weights& L = w.layers[l];
    li[l] = {add(L.ln1_w, C, false),         add(L.ln1_b, C, false),
             add(L.qkv_w, C * 3 * C, true),  add(L.qkv_b, 3 * C, true),
             add(L.proj_w, C * C, true),     add(L.proj_b, C, true),
             add(L.ln2_w, C, false),         add(L.ln2_b, C, false),
             add(L.fc_w, C * 4 * C, true),   add(L.fc_b, 4 * C, true),
             add(L.fcproj_w, 4 * C * C, true), add(L.fcproj_b, C, true)};
  }
  const size_t i_lnfw = add(w.lnf_w, C, false), i_lnfb = add(w.lnf_b, C, false);
  for (const item& it : items)
    if (!it.src)
      return make_status(errc::invalid_argument, "cuda weights: a tensor of " + w.source + " is missing");

  INFER_CUDA_TRY(cudaSetDevice(device));
  INFER_STATUS_TRY(dw->storage.allocate(pk.size));
  // Convert on the host into pinned memory, one copy up.
  pinned_buffer staging;
  INFER_STATUS_TRY(staging.allocate(pk.size));
  auto* base = staging.as<uint8_t>();
  std::memset(base, 0, pk.size);
  for (const item& it : items) {
    if (it.f16) {
      auto* d = reinterpret_cast<uint16_t*>(base + it.off);
      for (size_t i = 0; i < it.n; ++i) d[i] = float_to_half(it.src[i]);
    } else {
      std::memcpy(base + it.off, it.src, it.n * 4);
    }
  }
  INFER_CUDA_TRY(cudaMemcpy(dw->storage.get(), base, pk.size, cudaMemcpyHostToDevice));

  auto* db = dw->storage.as<uint8_t>();
  auto h = [&](size_t i) { return reinterpret_cast<const __half*>(db + items[i].off); };
  auto f = [&](size_t i) { return reinterpret_cast<const float*>(db + items[i].off); };
  dw->wte = h(i_wte);
  dw->wpe = h(i_wpe);
  dw->layers.resize(c.n_layer);
  for (int l = 0; l < c.n_layer; ++l) {
    auto& L = dw->layers[l];
    const auto& x = li[l];
    L.ln1_w = f(x[0]);
    L.ln1_b = f(x[1]);
    L.qkv_w = h(x[2]);
    L.qkv_b = h(x[3]);
    L.proj_w = h(x[4]);
    L.proj_b = h(x[5]);
    L.ln2_w = f(x[6]);
    L.ln2_b = f(x[7]);
    L.fc_w = h(x[8]);
    L.fc_b = h(x[9]);
    L.fcproj_w = h(x[10]);
    L.fcproj_b = h(x[11]);
  }
  dw->lnf_w = f(i_lnfw);
  dw->lnf_b = f(i_lnfb);
  return std::shared_ptr<const cuda_device_weights>(std::move(dw));
}

}  // namespace

result<std::shared_ptr<const cuda_device_weights>> acquire_cuda_device_weights(
    const std::shared_ptr<const model_weights>& weights, int device) {
  if (!weights) return make_status(errc::invalid_argument, "cuda weights: no weights");
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  for (auto it = g_cache.begin(); it != g_cache.end();) {
    auto host = it->host.lock();
    auto dev = it->dev.lock();
    if (!host || !dev) {
      it = g_cache.erase(it);
      continue;
    }
    if (host == weights && it->device == device) return dev;
    ++it;
  }
  auto up = upload(*weights, device);
  if (!up) return up.error();
  g_cache.push_back({weights, device, up.value()});
  return up.value();
}

}  // namespace infer::gpu
