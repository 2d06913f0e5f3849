// Reproducible quantization: the same inputs and options give the same checkpoint bytes for any
// thread count and whichever OpenBLAS kernel the CPU selects (README "Reproducibility"). The
// OPENBLAS_CORETYPE values force the kernels of other x86-64 CPUs on this one; the suite also runs
// on an AVX-512 CPU (the GPU machine) where the native kernels differ again.
#include <gtest/gtest.h>

#include <filesystem>

#include "cli_runner.h"
#include "shared_paths.h"

namespace fs = std::filesystem;

namespace {

struct Run {
  std::string threads;
  std::string coretype;  // "" : OpenBLAS's own choice for this CPU
};

std::string quantize(const std::vector<std::string>& extra, const Run& r, const std::string& tag) {
  const std::string out = testing::TempDir() + "/gptq_repro_" + tag;
  fs::remove_all(out);
  std::vector<std::string> args = {"quantize", "-m", shared_path("models/babyllama-361"), "-o", out,
                                   "--calibration", shared_path("data/tinystories-sample/tiny.utf8"),
                                   "--seqlen", "256", "--nsamples", "12", "--force", "--device", "cpu"};
  args.insert(args.end(), extra.begin(), extra.end());
  // GPTQ_THREADS, not -t: the CLI caps -t at the CPUs there are, and 3 threads on a 2-core machine
  // is a work split this test wants.
  std::vector<std::string> env = {"GPTQ_THREADS=" + r.threads};
  if (!r.coretype.empty()) env.push_back("OPENBLAS_CORETYPE=" + r.coretype);
  const auto res = gptq_test::run_cli(args, env);
  EXPECT_EQ(res.rc, 0) << res.err;
  std::string bytes = gptq_test::slurp(out + "/model.safetensors");
  fs::remove_all(out);
  return bytes;
}

void expect_identical_everywhere(const std::vector<std::string>& extra, const std::string& tag) {
  const std::vector<Run> runs = {{"1", ""}, {"2", ""}, {"3", ""}, {"2", "Haswell"}, {"2", "Sandybridge"}, {"3", "Zen"}};
  const std::string ref = quantize(extra, runs[0], tag);
  ASSERT_GT(ref.size(), 100000u);  // a real checkpoint (babyllama-361's is ~600 KiB)
  for (size_t i = 1; i < runs.size(); ++i) {
    const std::string got = quantize(extra, runs[i], tag);
    EXPECT_TRUE(got == ref) << "-t " << runs[i].threads << " OPENBLAS_CORETYPE=" << runs[i].coretype
                            << " gave different checkpoint bytes";
  }
}

#define NEED_BABY()                                                                  \
  if (!gptq_test::is_dir(shared_path("models/babyllama-361")))                       \
  GTEST_SKIP() << "../shared/models/babyllama-361 not found: skipped"

TEST(Reproducible, Gptq4BitActOrderSameBytesForAnyThreadsAndBlasKernel) {
  NEED_BABY();
  expect_identical_everywhere({"--bits", "4", "--group-size", "128", "--desc-act"}, "4b");
}

TEST(Reproducible, Gptq2BitAsymmetricNotTrueSequentialSameBytes) {
  NEED_BABY();
  expect_identical_everywhere({"--bits", "2", "--group-size", "64", "--no-sym", "--no-true-sequential"}, "2b");
}

}  // namespace
