// gptq: quantize, run and measure Llama-family models. One subcommand per cmd-*.cpp.
#include <cstdio>
#include <exception>
#include <new>
#include <string>

#include "common.h"
#include "gptq/error.h"
#include "gptq/version.h"

int main(int argc, char** argv) {
  CLI::App app{"gptq: GPTQ quantization and inference for Llama-family models"};
  app.set_version_flag("--version", std::string("gptq ") + gptq::version() + " (" + gptq::commit() + ")");
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, gptq::cli::Runner>> cmds;
  auto add = [&](gptq::cli::Runner (*f)(CLI::App&)) {
    const size_t before = app.get_subcommands({}).size();
    gptq::cli::Runner r = f(app);
    cmds.emplace_back(app.get_subcommands({})[before], std::move(r));
  };
  add(gptq::cli::add_quantize);
  add(gptq::cli::add_merge_lora);
  add(gptq::cli::add_generate);
  add(gptq::cli::add_chat);
  add(gptq::cli::add_perplexity);
  add(gptq::cli::add_tokenize);
  add(gptq::cli::add_inspect);
  add(gptq::cli::add_bench);
#ifndef GPTQ_NO_SERVE  // static builds: Debian has no static cpp-httplib
  add(gptq::cli::add_serve);
#endif
  if (argc > 1 && argv[1][0] != '-') {
    bool known = false;
    std::string names;
    for (auto& [sub, run] : cmds) {
      known |= sub->get_name() == argv[1];
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::fprintf(stderr, "gptq: error: unknown command '%s' (commands: %s)\n", argv[1], names.c_str());
      return 2;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, like every other error; --help has the details.
    std::fprintf(stderr, "gptq: error: %s (see gptq --help)\n", e.what());
    return 2;
  }
  try {
    for (auto& [sub, run] : cmds)
      if (sub->parsed()) return run();
  } catch (const gptq::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "gptq: error: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "gptq: error: out of memory\n");
    return 2;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "gptq: error: %s\n", e.what());
    return 2;
  }
  return 2;
}
