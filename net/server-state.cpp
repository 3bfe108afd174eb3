#include "net/server-state.hpp"

#include <random>

#include "actors/metrics.hpp"

namespace infer::net::detail {

connection_slot::~connection_slot() {
  if (!st_) return;
  st_->connections.fetch_sub(1, std::memory_order_relaxed);
  if (client_.empty()) return;
  std::lock_guard<std::mutex> lk(st_->per_client_mu);
  auto it = st_->per_client.find(client_);
  if (it != st_->per_client.end() && --it->second <= 0) st_->per_client.erase(it);
}

std::string random_id() {
  thread_local std::mt19937_64 gen = [] {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }();
  return fmt::format("{:016x}{:016x}", gen(), gen());
}

std::string request_id_of(std::string_view given) {
  bool ok = !given.empty() && given.size() <= 128;
  for (char c : given) ok = ok && c > 0x20 && c < 0x7f && c != '"' && c != '\\';
  return ok ? std::string(given) : random_id();
}

void count_rejection(service* svc, error_code c) {
  if (svc) svc->stats().count_outcome(to_string(c));
}

}  // namespace infer::net::detail
