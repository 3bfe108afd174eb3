// metrics: histogram buckets, quantile estimates, outcome counters and the Prometheus text.
#include <doctest/doctest.h>

#include <sstream>

#include "actors/metrics.hpp"

using namespace infer;

TEST_CASE("metrics: histogram buckets are cumulative in the text format, with sum and count") {
  histogram h({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
  for (double v : {0.5, 1.0, 1.5, 2.5, 100.0}) h.observe(v);
  h.observe(-1);  // clock skew: counted as 0
  CHECK(h.count() == 6);
  CHECK(h.sum() == doctest::Approx(105.5));
  std::string t = h.render("x_seconds", "help text");
  CHECK(t.find("# TYPE x_seconds histogram\n") != std::string::npos);
  CHECK(t.find("x_seconds_bucket{le=\"1\"} 3\n") != std::string::npos);  // -1->0, 0.5, 1.0
  CHECK(t.find("x_seconds_bucket{le=\"2\"} 4\n") != std::string::npos);
  CHECK(t.find("x_seconds_bucket{le=\"3\"} 5\n") != std::string::npos);
  CHECK(t.find("x_seconds_bucket{le=\"16\"} 5\n") != std::string::npos);
  CHECK(t.find("x_seconds_bucket{le=\"+Inf\"} 6\n") != std::string::npos);
  CHECK(t.find("x_seconds_count 6\n") != std::string::npos);
  CHECK(t.find("x_seconds_sum 105.5\n") != std::string::npos);
}

TEST_CASE("metrics: quantiles interpolate within buckets") {
  histogram h({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16});
  CHECK(h.quantile(0.5) == 0);  // empty
  for (int i = 0; i < 100; ++i) h.observe(2.5);  // all in (2, 3]
  CHECK(h.quantile(0.5) == doctest::Approx(2.5));
  CHECK(h.quantile(0.99) > 2.9);
  CHECK(h.quantile(0.99) <= 3.0);
  for (int i = 0; i < 100; ++i) h.observe(10.5);  // (10, 11]
  CHECK(h.quantile(0.25) < 3.0);
  CHECK(h.quantile(0.75) > 10.0);
  CHECK(h.quantile(0.75) <= 11.0);
}

TEST_CASE("metrics: outcomes and the whole exposition") {
  metrics m;
  m.count_outcome("done_length");
  m.count_outcome("done_length");
  m.count_outcome("overloaded");
  m.count_outcome("no_such_outcome");  // ignored, not mis-filed
  CHECK(m.outcome_count("done_length") == 2);
  CHECK(m.outcome_count("overloaded") == 1);
  CHECK(m.outcome_count("internal") == 0);
  m.queue_depth = 3;
  m.kv_blocks_used = 10;
  m.kv_blocks_total = 64;
  m.tokens_generated = 99;
  m.worker_restarts = 2;
  m.batch_size.observe(8);
  m.prefix_cache_queries = 400;
  m.prefix_cache_hits = 100;
  m.prefix_cache_blocks = 12;
  std::string t = m.render_prometheus();
  CHECK(m.prefix_cache_hit_rate() == doctest::Approx(0.25));
  for (const char* line :
       {"infer_requests_total{outcome=\"done_length\"} 2\n", "infer_requests_total{outcome=\"overloaded\"} 1\n",
        "infer_requests_total{outcome=\"timeout\"} 0\n", "infer_queue_depth 3\n", "infer_kv_blocks_used 10\n",
        "infer_kv_blocks_total 64\n", "infer_tokens_generated_total 99\n", "infer_worker_restarts_total 2\n",
        "infer_running_sequences 0\n", "infer_batch_size_count 1\n", "infer_time_to_first_token_seconds_count 0\n",
        "infer_inter_token_latency_seconds_bucket{le=\"+Inf\"} 0\n", "infer_step_time_seconds_sum 0\n",
        "infer_prefix_cache_queries_total 400\n", "infer_prefix_cache_hits_total 100\n",
        "infer_prefix_cache_hit_rate 0.25\n", "infer_prefix_cache_blocks 12\n", "infer_prefix_routed_total 0\n"})
    CHECK_MESSAGE(t.find(line) != std::string::npos, line);
  // Every sample line is "name{labels} value" or "name value"; every family has HELP and TYPE.
  std::istringstream in(t);
  std::string l;
  int samples = 0;
  while (std::getline(in, l)) {
    if (l.rfind("# ", 0) == 0) continue;
    ++samples;
    CHECK(l.find(' ') != std::string::npos);
    CHECK(l.rfind("infer_", 0) == 0);
  }
  CHECK(samples > 70);
}
