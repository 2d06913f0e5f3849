// The output folder of `gptq quantize`, which is the user's: never the input or a folder around it,
// --force replacing only an earlier output of ours (or an empty folder), partial folders of killed
// runs cleaned up by later runs (never a live run's), nothing left behind by a failed or
// interrupted run, and an unwritable output reported before the work, naming -o.
// Real folders under the test temp dir, real CLI runs, real signals.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include "cli_runner.h"
#include "gptq/error.h"
#include "gptq/quantize.h"
#include "io/checkpoint_writer.h"
#include "shared_paths.h"

namespace fs = std::filesystem;
using gptq_test::CliResult;
using gptq_test::expect_cli_error;
using gptq_test::run_cli;

namespace {

const char* const kModel = "models/babyllama-361";
const char* const kCalib = "data/tinystories-sample/tiny.utf8";

#define NEED_MODEL() \
  if (!gptq_test::is_dir(shared_path(kModel))) GTEST_SKIP() << "../shared/" << kModel << " not found: skipped"

// A fresh, empty folder of this test's own, removed again at the end (write permission given back
// first: some tests take it away).
struct Scratch {
  fs::path path;
  explicit Scratch(const std::string& tag) {
    const fs::path p = fs::path(testing::TempDir()) / ("gptq_outdir_" + tag + "_" + std::to_string(::getpid()));
    clear(p);
    fs::create_directories(p);
    path = fs::canonical(p);
  }
  ~Scratch() { clear(path); }
  static void clear(const fs::path& p) {
    std::error_code ec;
    if (!fs::exists(fs::symlink_status(p, ec))) return;
    fs::permissions(p, fs::perms::owner_all, fs::perm_options::add, ec);
    for (fs::recursive_directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec))
      if (!it->is_symlink()) fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(p, ec);
  }
};

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

// A writable copy of the small model.
void copy_model(const fs::path& dst) {
  fs::copy(shared_path(kModel), dst, fs::copy_options::recursive);
  fs::permissions(dst, fs::perms::owner_write, fs::perm_options::add);
  for (const auto& e : fs::recursive_directory_iterator(dst))
    fs::permissions(e.path(), fs::perms::owner_write, fs::perm_options::add);
}

// Every entry under root (links as links) with its contents: what "nothing touched" compares.
std::map<std::string, std::string> snapshot(const fs::path& root) {
  std::map<std::string, std::string> s;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    const std::string rel = fs::relative(e.path(), root).string();
    if (e.is_symlink())
      s[rel] = "link -> " + fs::read_symlink(e.path()).string();
    else if (e.is_directory())
      s[rel] = "folder";
    else
      s[rel] = gptq_test::slurp(e.path().string());
  }
  return s;
}

// The hidden temporary folders beside out.
std::vector<fs::path> partials(const fs::path& out) {
  std::vector<fs::path> r;
  const std::string prefix = "." + out.filename().string() + ".partial-";
  std::error_code ec;
  for (fs::directory_iterator it(out.parent_path(), ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename().string().rfind(prefix, 0) == 0) r.push_back(it->path());
  return r;
}

std::vector<std::string> rtn(const fs::path& model, const fs::path& out, bool force = false) {
  std::vector<std::string> a = {"quantize", "-m", model.string(), "-o", out.string(), "--method", "rtn", "-q"};
  if (force) a.push_back("--force");
  return a;
}

// GPTQ on nsamples windows: seconds of work after the output folder is opened.
std::vector<std::string> gptq_args(const fs::path& model, const fs::path& out, int nsamples) {
  return {"quantize", "-m", model.string(), "-o", out.string(), "--calibration", shared_path(kCalib),
          "--seqlen", "256", "--nsamples", std::to_string(nsamples), "-q"};
}

// run_cli puts its "environment" words before the command: a `cd DIR &&` there runs it from DIR.
CliResult run_cli_in(const fs::path& dir, const std::vector<std::string>& args) {
  return run_cli(args, {"cd " + gptq_test::shell_quote(dir.string()) + " &&"});
}

// The CLI in a child process of our own (to signal it), stderr to err_file.
pid_t spawn_cli(const std::vector<std::string>& args, const std::string& err_file) {
  const char* env = std::getenv("GPTQ_CLI");
  const std::string exe = env && *env ? env : GPTQ_CLI_PATH;
  std::vector<std::string> words = {exe};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int nul = ::open("/dev/null", O_RDWR);
    const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(nul, 0);
    ::dup2(nul, 1);
    ::dup2(err, 2);
    ::execv(exe.c_str(), argv.data());
    ::_exit(127);
  }
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// Polls until done() (a generous limit: this is a wait, not a timing).
bool eventually(const std::function<bool()>& done) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return false;
}

// A child that writes a small checkpoint to out and is SIGKILLed once it is complete on disk, just
// before the swap into place (the test hook of CheckpointOutput::commit). Returns its wait status.
int killed_before_swap(const fs::path& out, bool force) {
  const pid_t child = ::fork();
  if (child == 0) {
    try {
      gptq::CheckpointOutput o(out.string(), "", {}, force);
      o.open();
      const float w[2] = {1, 2};
      gptq::CheckpointFiles f;
      f.tensors = {{"w", gptq::DType::kF32, {2}, w, sizeof w}};
      f.text_files = {{"config.json", "{}\n"}};
      o.commit(f, [] { ::raise(SIGKILL); });
    } catch (...) {
    }
    ::_exit(3);
  }
  return wait_for(child);
}

}  // namespace

// -o the model folder, a folder around it or inside it (however spelled: symbolic links, "..",
// "."), or a folder the model's files link into: refused with one line, nothing touched.
TEST(OutputDir, NeverTheInputOrAFolderAroundIt) {
  NEED_MODEL();
  const Scratch scratch("input");
  const fs::path root = scratch.path;
  const fs::path P = root / "P", model = P / "model";
  fs::create_directories(P);
  copy_model(model);
  write(P / "notes.txt", "the user's own file\n");
  fs::create_directory_symlink(P, root / "to_P");
  fs::create_directory_symlink(model, root / "to_model");
  // The Hugging Face cache: a snapshot's files are links into blobs/.
  const fs::path blobs = root / "hf" / "blobs", snap = root / "hf" / "snapshots" / "abc";
  fs::create_directories(blobs);
  fs::create_directories(snap);
  for (const auto& e : fs::directory_iterator(model)) {
    fs::copy_file(e.path(), blobs / ("blob-" + e.path().filename().string()));
    fs::create_symlink("../../blobs/blob-" + e.path().filename().string(), snap / e.path().filename());
  }
  const auto before = snapshot(root);

  struct Case {
    fs::path model, out;
    bool force;
    const char* why;
  } cases[] = {
      {model, P, true, "contains the input model folder"},
      {model, model, true, "is the input model folder"},
      {model, model, false, "is the input model folder"},
      {model, model / "gptq", false, "lies inside the input model folder"},
      {model, model / "..", true, "contains the input model folder"},
      {model, root / "to_P", true, "contains the input model folder"},
      {model, root / "to_model", true, "is the input model folder"},
      {root / "to_model", P, true, "contains the input model folder"},
      {root / "to_model", root / "to_P" / "model" / "q", false, "lies inside the input model folder"},
      {snap, blobs, true, "contains the input file"},
      {snap, root / "hf", true, "contains the input model folder"},
      {model, fs::path("/"), true, "root folder"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.model.string() + " -> " + c.out.string());
    expect_cli_error(run_cli(rtn(c.model, c.out, c.force)), {"-o " + c.out.string() + ": ", c.why});
    EXPECT_EQ(snapshot(root), before);
  }
  // From inside: -o . and -o .. as a user types them.
  expect_cli_error(run_cli_in(P, rtn("model", ".", true)), {"-o .: ", "contains the input model folder"});
  expect_cli_error(run_cli_in(model, rtn(".", "..", true)), {"-o ..: ", "contains the input model folder"});
  expect_cli_error(run_cli_in(model, rtn(".", ".", true)), {"-o .: ", "is the input model folder"});
  EXPECT_EQ(snapshot(root), before);
}

TEST(OutputDir, ForceReplacesOnlyAnEarlierOutputOrAnEmptyFolder) {
  NEED_MODEL();
  const Scratch scratch("force");
  const fs::path root = scratch.path, model = root / "model", out = root / "q";
  copy_model(model);
  ASSERT_EQ(run_cli(rtn(model, out)).rc, 0);
  const auto ref = snapshot(out);
  expect_cli_error(run_cli(rtn(model, out)), {"-o " + out.string() + ": ", "exists", "--force"});

  // An earlier output is replaced by the same bytes, and nothing is left beside it.
  ASSERT_EQ(run_cli(rtn(model, out, true)).rc, 0);
  EXPECT_EQ(snapshot(out), ref);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(root)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"model", "q"}));

  // Anything else is refused, naming -o and why, with nothing touched.
  write(out / "notes.txt", "mine\n");
  auto before = snapshot(root);
  expect_cli_error(run_cli(rtn(model, out, true)), {"-o " + out.string() + ": ", "holds notes.txt",
                                                    "--force replaces only an empty folder or an earlier output"});
  EXPECT_EQ(snapshot(root), before);
  fs::remove(out / "notes.txt");
  fs::create_directory(out / "sub");
  expect_cli_error(run_cli(rtn(model, out, true)), {"holds sub"});
  fs::remove(out / "sub");

  const fs::path hf = root / "hf";  // a model folder of the same file names, not ours
  fs::create_directory(hf);
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json"}) fs::copy_file(model / f, hf / f);
  write(hf / "quantize_config.json", R"({"bits": 4, "meta": {"quantizer": ["optimum:1.0"]}})");
  before = snapshot(root);
  expect_cli_error(run_cli(rtn(model, hf, true)), {"-o " + hf.string() + ": ", "is not an output of gptq quantize"});
  write(root / "file", "x");
  expect_cli_error(run_cli(rtn(model, root / "file", true)), {"exists and is not a folder"});
  const fs::path work = root / "work";
  fs::create_directory(work);
  write(work / "draft.txt", "x");
  expect_cli_error(run_cli_in(work, rtn(model, ".", true)), {"-o .: ", "holds draft.txt"});
  fs::create_symlink(root / "nowhere", root / "dangling");
  expect_cli_error(run_cli(rtn(model, root / "dangling", true)), {"does not exist"});
  fs::remove(root / "file");
  fs::remove_all(work);
  fs::remove(root / "dangling");
  EXPECT_EQ(snapshot(root), before);

  // An empty folder may be replaced; a link to an earlier output is written through.
  fs::create_directory(root / "empty");
  ASSERT_EQ(run_cli(rtn(model, root / "empty", true)).rc, 0);
  EXPECT_EQ(snapshot(root / "empty"), ref);
  fs::create_directory_symlink(out, root / "latest");
  ASSERT_EQ(run_cli(rtn(model, root / "latest", true)).rc, 0);
  EXPECT_TRUE(fs::is_symlink(root / "latest"));
  EXPECT_EQ(snapshot(out), ref);
}

// A run killed after writing everything but before the rename (a test hook in a forked child), a
// real CLI run killed while it works, and folders left by runs killed before they took their lock:
// the next run removes them all, but not a folder holding something the tool never writes.
TEST(OutputDir, PartialFoldersOfKilledRunsAreRemovedByTheNextRun) {
  NEED_MODEL();
  const Scratch scratch("killed");
  const fs::path root = scratch.path, model = root / "model", out = root / "q";
  copy_model(model);

  int st = killed_before_swap(out, false);
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << st;
  ASSERT_EQ(partials(out).size(), 1u);
  const fs::path first = partials(out)[0];
  EXPECT_TRUE(fs::exists(first / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out));

  // The next run removes it as it opens its own, then is killed itself while it works.
  const std::string err = (root / "cli.err").string();
  const pid_t cli = spawn_cli(gptq_args(model, out, 16), err);
  EXPECT_TRUE(eventually([&] { return partials(out).size() == 1 && partials(out)[0] != first; }))
      << gptq_test::slurp(err);
  ::kill(cli, SIGKILL);
  st = wait_for(cli);
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << st;
  EXPECT_FALSE(fs::exists(first));
  ASSERT_EQ(partials(out).size(), 1u);

  const fs::path unlocked = root / ".q.partial-1-deadbeef";  // killed before it took its lock
  fs::create_directory(unlocked);
  write(unlocked / "model.safetensors.tmp.1", "half");
  const fs::path foreign = root / ".q.partial-2-notours";  // not something we would write
  fs::create_directory(foreign);
  write(foreign / "notes.txt", "mine\n");
  const auto foreign_before = snapshot(foreign);

  const CliResult r = run_cli(rtn(model, out));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "model.safetensors"));
  EXPECT_EQ(partials(out), std::vector<fs::path>{foreign});
  EXPECT_EQ(snapshot(foreign), foreign_before);

  // --force killed with the new output complete: the old one is still there, whole.
  const auto old = snapshot(out);
  st = killed_before_swap(out, true);
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << st;
  EXPECT_EQ(snapshot(out), old);
  EXPECT_EQ(partials(out).size(), 2u);
  ASSERT_EQ(run_cli(rtn(model, out, true)).rc, 0);
  EXPECT_EQ(snapshot(out), old);
  EXPECT_EQ(partials(out), std::vector<fs::path>{foreign});
}

TEST(OutputDir, ALiveRunsPartialFolderIsKept) {
  NEED_MODEL();
  const Scratch scratch("live");
  const fs::path root = scratch.path, model = root / "model", out = root / "q";
  copy_model(model);
  const std::string err = (root / "cli.err").string();
  const pid_t live = spawn_cli(gptq_args(model, out, 64), err);
  ASSERT_TRUE(eventually([&] { return partials(out).size() == 1; })) << gptq_test::slurp(err);
  const fs::path its = partials(out)[0];
  // Another run of the same -o cleans up beside it: the live run's folder stays.
  const CliResult r = run_cli(rtn(model, out));
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_TRUE(fs::exists(its / ".gptq-quantize.lock"));
  EXPECT_EQ(partials(out), std::vector<fs::path>{its});
  ::kill(live, SIGKILL);
  wait_for(live);
  ASSERT_EQ(run_cli(rtn(model, out, true)).rc, 0);
  EXPECT_TRUE(partials(out).empty());
}

// Ctrl-C during the work: exit 2 with one line, no output, no partial folder, no parent folder
// the run created, the input as it was.
TEST(OutputDir, InterruptLeavesNothingAndTheInputUntouched) {
  NEED_MODEL();
  const Scratch scratch("sigint");
  const fs::path root = scratch.path, model = root / "model", out = root / "new" / "q";
  copy_model(model);
  const auto before = snapshot(model);
  const std::string err = (root / "cli.err").string();
  const pid_t cli = spawn_cli(gptq_args(model, out, 16), err);
  ASSERT_TRUE(eventually([&] { return partials(out).size() == 1; })) << gptq_test::slurp(err);
  ::kill(cli, SIGINT);
  const int st = wait_for(cli);
  ASSERT_TRUE(WIFEXITED(st)) << st;
  CliResult r;
  r.rc = WEXITSTATUS(st);
  r.err = gptq_test::slurp(err);
  expect_cli_error(r, {"interrupted"});
  EXPECT_FALSE(fs::exists(root / "new"));
  EXPECT_EQ(snapshot(model), before);
}

// A run that fails creates no folder: on bad input nothing is created at all, and what a run
// created before failing (parents, the temporary folder) goes again; folders that were there stay.
TEST(OutputDir, FailedRunLeavesNoFolderItCreated) {
  NEED_MODEL();
  const Scratch scratch("failed");
  const fs::path root = scratch.path, model = root / "model";
  copy_model(model);
  expect_cli_error(run_cli(rtn(root / "missing", root / "a" / "b" / "c")), {"missing"});
  EXPECT_FALSE(fs::exists(root / "a"));
  auto args = gptq_args(model, root / "a" / "b" / "c", 5000);  // far more windows than the text has
  expect_cli_error(run_cli(args), {"too short"});
  EXPECT_FALSE(fs::exists(root / "a"));

  gptq::QuantizeOptions o;
  o.calibration_file = shared_path(kCalib);
  o.seqlen = 256;
  o.nsamples = 4;
  o.progress = false;
  std::atomic<bool> cancel{true};
  o.cancel = &cancel;
  try {
    gptq::quantize_model(model.string(), (root / "a" / "b" / "c").string(), o);
    ADD_FAILURE() << "a cancelled run succeeded";
  } catch (const gptq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("interrupted"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(root / "a"));

  fs::create_directory(root / "keep");
  {
    gptq::CheckpointOutput out((root / "keep" / "x" / "y").string(), model.string(), {}, false);
    out.open();
    EXPECT_TRUE(fs::is_directory(out.temp_dir()));
    EXPECT_EQ(out.temp_dir().parent_path(), root / "keep" / "x");
  }
  EXPECT_TRUE(fs::is_directory(root / "keep"));
  EXPECT_TRUE(fs::is_empty(root / "keep"));
}

// An output folder (or parent) that cannot be written fails at once, naming -o as given, not the
// hidden temporary folder. Root writes anywhere: as root, the CLI runs as nobody.
TEST(OutputDir, UnwritableOutputIsReportedBeforeTheWorkNamingMinusO) {
  NEED_MODEL();
  std::vector<std::string> as_user;
  if (::geteuid() == 0) {
    if (::access("/usr/bin/setpriv", X_OK) != 0) GTEST_SKIP() << "running as root without setpriv: skipped";
    as_user = {"/usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups"};
  }
  const Scratch scratch("readonly");
  const fs::path root = scratch.path, model = root / "model";
  copy_model(model);
  const fs::path ro = root / "ro";
  fs::create_directory(ro);
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read | fs::perms::group_exec |
                          fs::perms::others_read | fs::perms::others_exec);
  fs::permissions(root, fs::perms::others_read | fs::perms::others_exec, fs::perm_options::add);
  for (const fs::path& out : {ro / "q", ro / "new" / "q"}) {
    // nsamples 1000: minutes of work, were the folder checked only at the end
    const CliResult r = run_cli(gptq_args(model, out, 1000), as_user);
    expect_cli_error(r, {"-o " + out.string() + ": ", "Permission denied"});
    EXPECT_EQ(r.err.find(".partial"), std::string::npos) << r.err;
  }
  // With --force, an earlier output whose files could not be removed.
  const fs::path w = root / "w";
  fs::create_directory(w);
  ASSERT_EQ(run_cli(rtn(model, w / "q")).rc, 0);
  fs::permissions(w, fs::perms::all);
  fs::permissions(w / "q", fs::perms::owner_write | fs::perms::group_write | fs::perms::others_write,
                  fs::perm_options::remove);
  const auto before = snapshot(w);
  auto args = gptq_args(model, w / "q", 1000);
  args.push_back("--force");
  expect_cli_error(run_cli(args, as_user), {"-o " + (w / "q").string() + ": ", "read-only"});
  EXPECT_EQ(snapshot(w), before);
  fs::permissions(ro, fs::perms::owner_all, fs::perm_options::add);
}
