// Command line of the service binaries: `--config FILE` is read first, then the flags below
// override its values, then every `--set section.key=value` in order; the result is validated.
//
//   int main(int argc, char** argv) {
//     auto cli = infer::parse_command_line(argc, argv);
//     if (!cli.run) return infer::print_cli_outcome(cli);  // --help, --print-config or an error
//     ... start with cli.config ...
//   }
#pragma once
#include <string>
#include <vector>

#include "config/service-config.hpp"

namespace infer {

struct cli_outcome {
  // true: start the service with `config` (already validated). false: print `message` and
  // return `exit_code` from main: 0 for --help / --version / --print-config (message goes to
  // stdout), 2 for a bad command line, config file or value (message goes to stderr).
  bool run = false;
  int exit_code = 0;
  std::string message;
  service_config config;
  std::string config_path;  // the --config file, empty when none was given
};

inline constexpr int cli_exit_usage = 2;

// `program` names the binary in the usage line; argv[0] is skipped.
cli_outcome parse_command_line(int argc, const char* const* argv, const std::string& program = "inferd");
// Arguments without the program name, e.g. {"--config", "x.toml", "--workers", "2"} (tests, embedding).
cli_outcome parse_command_line(const std::vector<std::string>& args, const std::string& program = "inferd");
// Writes cli.message to stdout (exit code 0) or stderr, with a trailing newline; returns cli.exit_code.
int print_cli_outcome(const cli_outcome& cli);

}  // namespace infer
