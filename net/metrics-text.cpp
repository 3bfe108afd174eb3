#include "net/metrics-text.hpp"

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "actors/metrics.hpp"

namespace infer::net::detail {

// The standard process_* families (Prometheus client libraries' names), from /proc: what
// dashboards and alerts written for any exporter plot. Nothing is written when /proc is absent.
std::string process_metrics() {
  std::string out;
  std::ifstream f("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t rp = stat.rfind(')');  // the command name may hold spaces and parentheses
  if (rp == std::string::npos) return out;
  std::istringstream in(stat.substr(rp + 2));
  std::vector<std::string> v;  // from field 3 (state) on
  for (std::string x; in >> x;) v.push_back(x);
  if (v.size() < 22) return out;
  const double tick = double(::sysconf(_SC_CLK_TCK));
  const double page = double(::sysconf(_SC_PAGESIZE));
  const double cpu = (std::stod(v[11]) + std::stod(v[12])) / tick;  // utime + stime
  const double start_ticks = std::stod(v[19]);
  const double vsize = std::stod(v[20]), rss = std::stod(v[21]) * page;
  double boot = 0;
  {
    std::ifstream s("/proc/stat");
    for (std::string line; std::getline(s, line);)
      if (line.rfind("btime ", 0) == 0) boot = std::stod(line.substr(6));
  }
  int64_t fds = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec))
    ++fds;
  rlimit rl{};
  const bool have_rl = ::getrlimit(RLIMIT_NOFILE, &rl) == 0;
  fmt::format_to(std::back_inserter(out),
                 "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                 "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {:g}\n"
                 "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                 "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {:.0f}\n"
                 "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
                 "# TYPE process_virtual_memory_bytes gauge\nprocess_virtual_memory_bytes {:.0f}\n"
                 "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                 "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.2f}\n"
                 "# HELP process_open_fds Number of open file descriptors.\n"
                 "# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
                 cpu, rss, vsize, boot + start_ticks / tick, fds);
  if (have_rl && rl.rlim_cur != RLIM_INFINITY)
    fmt::format_to(std::back_inserter(out),
                   "# HELP process_max_fds Maximum number of open file descriptors.\n"
                   "# TYPE process_max_fds gauge\nprocess_max_fds {}\n",
                   uint64_t(rl.rlim_cur));
  return out;
}

std::string metrics_text(const server_state& st, service* svc) {
  std::string out = svc ? svc->stats().render_prometheus() : std::string();
  fmt::format_to(std::back_inserter(out),
                 "# HELP infer_connections_open Client connections open now.\n"
                 "# TYPE infer_connections_open gauge\n"
                 "infer_connections_open {}\n"
                 "# HELP infer_connections_rejected_total Connections refused at server.max_connections.\n"
                 "# TYPE infer_connections_rejected_total counter\n"
                 "infer_connections_rejected_total {}\n"
                 "# HELP infer_connections_slow_closed_total Connections closed because their client did not read "
                 "(server.max_pending_bytes).\n"
                 "# TYPE infer_connections_slow_closed_total counter\n"
                 "infer_connections_slow_closed_total {}\n"
                 "# HELP infer_rate_limit_clients Clients whose request rate the server tracks now.\n"
                 "# TYPE infer_rate_limit_clients gauge\n"
                 "infer_rate_limit_clients {}\n"
                 "# HELP infer_ready Whether the service takes requests (model loaded, a healthy worker).\n"
                 "# TYPE infer_ready gauge\n"
                 "infer_ready {}\n",
                 st.connections.load(), st.rejected_connections.load(), st.slow_clients.load(),
                 st.limiter->clients(), svc && svc->ready() ? 1 : 0);
  out += process_metrics();
  return out;
}

}  // namespace infer::net::detail
