// fault_injection: a backend decorator that makes steps fail on purpose, so supervision,
// breakers, the watchdog, resumption and quarantine can be exercised on any backend.
//
//   faulty backend --step--> inner backend     (when no fault is drawn)
//   faults: throw  the step throws std::runtime_error (the engine actor turns it into a failure)
//           cuda   the step returns device_error, "sticky": the device's workers restart
//           hang   the step blocks until fault_hang elapses or fault_switch::release()
//           mixed  one of the three above, drawn per fault
//   poison: any step whose new tokens contain poison_token fails (internal), every time
//
// The per-step draws come from a seeded generator per backend instance (seed, stream), so
// a run is reproducible given the same steps.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "engine/backend.hpp"

namespace infer {

enum class fault_kind : uint8_t { throw_exception, cuda_error, hang, mixed };

const char* to_string(fault_kind k);
result<fault_kind> parse_fault_kind(const std::string& s);  // throw | cuda | hang | mixed

struct fault_options {
  double rate = 0.0;           // probability per step
  uint64_t seed = 1;
  fault_kind kind = fault_kind::throw_exception;
  int32_t poison_token = -1;   // -1: none
  std::chrono::milliseconds hang{600000};

  bool active() const { return rate > 0.0 || poison_token >= 0; }
};

// Shared by every faulty backend of a service: releases hung steps (at shutdown) and counts.
class fault_switch {
 public:
  void release();
  bool released() const { return released_.load(); }
  // Blocks up to `d`, or until release().
  void wait(std::chrono::milliseconds d);
  std::atomic<uint64_t> injected{0};  // faults drawn (not counting poison)
  std::atomic<uint64_t> poisoned{0};  // steps failed for the poison token
  std::atomic<uint64_t> instances{0}; // faulty backends made (each gets its own draw stream)

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> released_{false};
};

// Wraps `inner`; draws come from (o.seed, stream). `sw` may be shared by many backends.
std::unique_ptr<backend> make_faulty_backend(std::unique_ptr<backend> inner, const fault_options& o,
                                             std::shared_ptr<fault_switch> sw, uint64_t stream);

}  // namespace infer
