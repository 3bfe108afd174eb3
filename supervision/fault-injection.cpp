#include "supervision/fault-injection.hpp"

#include <algorithm>
#include <stdexcept>

namespace infer {

const char* to_string(fault_kind k) {
  switch (k) {
    case fault_kind::throw_exception: return "throw";
    case fault_kind::cuda_error: return "cuda";
    case fault_kind::hang: return "hang";
    case fault_kind::mixed: return "mixed";
  }
  return "throw";
}

result<fault_kind> parse_fault_kind(const std::string& s) {
  if (s == "throw") return fault_kind::throw_exception;
  if (s == "cuda") return fault_kind::cuda_error;
  if (s == "hang") return fault_kind::hang;
  if (s == "mixed") return fault_kind::mixed;
  return make_status(errc::invalid_argument, "fault kind: throw|cuda|hang|mixed, got \"" + s + "\"");
}

void fault_switch::release() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    released_.store(true);
  }
  cv_.notify_all();
}

void fault_switch::wait(std::chrono::milliseconds d) {
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait_for(lk, d, [&] { return released_.load(); });
}

namespace {

// splitmix64: tiny, seedable, the same on every platform.
uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

class faulty_backend final : public backend {
 public:
  faulty_backend(std::unique_ptr<backend> inner, fault_options o, std::shared_ptr<fault_switch> sw, uint64_t stream)
      : inner_(std::move(inner)), o_(o), sw_(std::move(sw)), rng_(o.seed ^ (stream * 0xD1B54A32D192ED03ull)) {
    splitmix(rng_);
  }
  const char* name() const override { return inner_->name(); }
  const model_config& config() const override { return inner_->config(); }
  kv_geometry kv() const override { return inner_->kv(); }

  status step(const step_batch& batch, step_output& out, logits_mode mode) override {
    if (o_.poison_token >= 0 &&
        std::find(batch.tokens.begin(), batch.tokens.end(), o_.poison_token) != batch.tokens.end()) {
      if (sw_) sw_->poisoned.fetch_add(1);
      return make_status(errc::internal, "injected fault: poison token " + std::to_string(o_.poison_token) +
                                             " in the step");
    }
    if (o_.rate > 0.0) {
      const double u = double(splitmix(rng_) >> 11) * 0x1.0p-53;
      if (u < o_.rate) {
        if (sw_) sw_->injected.fetch_add(1);
        fault_kind k = o_.kind;
        if (k == fault_kind::mixed) k = fault_kind(splitmix(rng_) % 3);
        switch (k) {
          case fault_kind::throw_exception: throw std::runtime_error("injected fault: the step threw");
          case fault_kind::cuda_error:
            return make_status(errc::device_error, "injected fault: CUDA error (sticky: the device needs a reset)");
          case fault_kind::hang:
            if (sw_) sw_->wait(o_.hang);
            return make_status(errc::device_error, "injected fault: the step hung");
          case fault_kind::mixed: break;
        }
      }
    }
    return inner_->step(batch, out, mode);
  }

 private:
  std::unique_ptr<backend> inner_;
  fault_options o_;
  std::shared_ptr<fault_switch> sw_;
  uint64_t rng_;
};

}  // namespace

std::unique_ptr<backend> make_faulty_backend(std::unique_ptr<backend> inner, const fault_options& o,
                                             std::shared_ptr<fault_switch> sw, uint64_t stream) {
  return std::make_unique<faulty_backend>(std::move(inner), o, std::move(sw), stream);
}

}  // namespace infer
