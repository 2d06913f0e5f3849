// test-backend-ops: every op of the Backend interface (backend/backend.h) on every backend, on
// random inputs with fixed seeds, against a plain reference written here (double-precision loops,
// no code shared with any backend), with a normalized error and a per-op limit.
//
// Each case is one GoogleTest test whose name spells its configuration (CUTLASS style):
//   BackendOps.<op>_<configuration>/<backend>
//   e.g. BackendOps.linear_gptq_b4_g128_actorder_asym_v1_K352_N72_T5/cpu_avx2
// and prints one table line (op, shape, backend, error, limit, OK/FAIL), as llama.cpp's
// test-backend-ops does, so that a failure says everything.
//
// Filters (both may be combined):
//   GPTQ_OPS=attention,linear_gptq   ops whose name starts with one of these (registration time)
//   GPTQ_BACKENDS=cpu_avx2,cuda      backends whose name starts with one of these ("cpu": every SIMD level)
//   --gtest_filter='BackendOps.linear_gptq_b3*/cpu_scalar'
//
// Backends: the list in backends() below; adding one is one line. A backend whose factory throws
// (e.g. no GPU) or that reports itself unavailable is skipped with its reason. The CPU backend runs
// once per SIMD level (cpu::force_simd), levels this CPU lacks are skipped with a message.
// A backend may refuse a weight layout (gptq::Error from gptq_weight, the interface's contract):
// that case is reported as skipped, not failed.
//
// Errors: NMSE = Σ(out-ref)² / Σ ref² for arithmetic ops; max|out-ref| for RoPE angles (|ref| <= 1);
// exact equality (count of differing elements, limit 0) for ops that only move data. Limits are
// written in units of u = 2^-24 (fp32 unit roundoff) next to each op, with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_features.h"
#include "gptq/error.h"
#include "io/gptq_format.h"

namespace {

using namespace gptq;
using quant::QuantFormat;

constexpr double kU = 1.0 / 16777216.0;  // 2^-24: unit roundoff of fp32
constexpr double kU2 = kU * kU;

// ============================================================================================
// Backends under test
// ============================================================================================

struct BackendEntry {
  std::string name;                                 // test-name suffix: "cpu_avx2"
  std::function<std::string()> unavailable;         // why it cannot run here; "" when it can
  std::function<std::unique_ptr<Backend>()> make;   // may throw (e.g. no device): skipped then
  std::function<void()> enter = [] {}, leave = [] {};  // around each case (SIMD level)
  // Unit roundoff of the 16-bit type a backend rounds GEMM inputs to (0: fp32 throughout), for
  // weight w (as its kind() describes it) at T rows.
  std::function<double(const Weight& w, int64_t T)> gemm_input_u = [](const Weight&, int64_t) { return 0.0; };
};

// The entry whose case is running (limits that depend on the backend's documented precision).
const BackendEntry* g_entry = nullptr;

BackendEntry cpu_entry(cpu::SimdLevel level) {
  BackendEntry e;
  e.name = std::string("cpu_") + cpu::simd_name(level);
  e.unavailable = [level]() -> std::string {
    if (cpu::detected_simd() >= level) return "";
    return cat("this CPU lacks ", cpu::simd_name(level), " (detected ", cpu::simd_name(cpu::detected_simd()), ")");
  };
  // force_simd is process-wide and read at each call; each level gets its own backend instance.
  e.make = [] { return make_cpu_backend(); };
  e.enter = [level] { cpu::force_simd(level); };
  e.leave = [] { cpu::force_simd(cpu::SimdLevel::kAvx512); };  // kAvx512 restores detection
  return e;
}

// The CUDA backend (skipped with the reason when the build has no CUDA or there is no GPU).
// Its dense F16/BF16 GEMMs above 8 rows (or with K % 8 != 0) run on cuBLASLt with x rounded to the
// weight's type (at most 8 rows: a GEMV in fp32); 4-bit GPTQ layers round x to fp16 at every T
// (tensor-core GEMV, or fp16 dequantization + cuBLAS above 8 rows), 2/3/8-bit ones above the GEMV
// row limit (8); layers without the chunk layout are held as exact fp32 (backend/cuda/cuda_backend.cpp).
BackendEntry cuda_entry() {
  BackendEntry e;
  e.name = "cuda";
  e.unavailable = []() -> std::string {
    std::string why;
    return cuda_usable(0, &why) ? std::string() : why;
  };
  e.make = [] { return make_cuda_backend(); };
  e.gemm_input_u = [](const Weight& w, int64_t T) -> double {
    const std::string k = w.kind();
    const bool gemv = T <= 8 && w.in_features() % 8 == 0;  // dense_gemv: fp32 x
    if (k == "F16") return gemv ? 0.0 : 1.0 / 2048;
    if (k == "BF16") return gemv ? 0.0 : 1.0 / 256;
    const bool held = k.find("held as F32") != std::string::npos;
    // 4 bits run on tensor cores (x in fp16) at every T; 2, 3 and 8 bits GEMV in fp32 up to 8 rows.
    if (k.rfind("GPTQ 4-bit", 0) == 0 && !held) return 1.0 / 2048;
    if (k.rfind("GPTQ", 0) == 0) return T > 8 ? 1.0 / 2048 : 0.0;
    return 0.0;
  };
  return e;
}

const std::vector<BackendEntry>& backends() {
  static const std::vector<BackendEntry> list = {
      cpu_entry(cpu::SimdLevel::kScalar),
      cpu_entry(cpu::SimdLevel::kAvx2),
      cpu_entry(cpu::SimdLevel::kAvx512),
      cuda_entry(),
  };
  return list;
}

// Backends are made once per entry (thread pools, device contexts) and kept for the process.
Backend* backend_for(const BackendEntry& e, std::string* why) {
  static std::map<std::string, std::unique_ptr<Backend>> made;
  static std::map<std::string, std::string> failed;
  if (auto f = failed.find(e.name); f != failed.end()) {
    *why = f->second;
    return nullptr;
  }
  auto& b = made[e.name];
  if (!b) {
    try {
      b = e.make();
    } catch (const std::exception& ex) {
      failed[e.name] = *why = cat("backend could not start: ", ex.what());
      return nullptr;
    }
  }
  return b.get();
}

// ============================================================================================
// Cases, checks, errors
// ============================================================================================

// One comparison of a case: what was compared, the error and its limit.
struct Check {
  std::string what;    // "out", "step 2", "dense()"
  std::string metric;  // "nmse", "maxabs", "diff"
  double err = 0, limit = 0;
  bool ok() const { return err <= limit; }  // NaN fails
};

// A backend refused this configuration through its documented error (not a failure).
struct Unsupported {
  std::string why;
};

struct Case {
  std::string op;     // "linear_gptq" (GPTQ_OPS matches its prefix)
  std::string name;   // the test name before "/backend"
  std::string shape;  // human-readable configuration for the table line
  std::function<std::vector<Check>(Backend&)> run;
};

// Σ(out-ref)² / Σ ref² (Σ(out-ref)² when ref is all zero).
double nmse(const std::vector<float>& out, const std::vector<double>& ref) {
  EXPECT_EQ(out.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(out[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0 ? num / den : num;
}

double max_abs_err(const std::vector<float>& out, const std::vector<double>& ref) {
  double m = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::fabs(double(out[i]) - ref[i]);
    if (!(d <= m)) m = d;  // NaN sticks
  }
  return m;
}

// Elements that differ in their bits (exact ops).
double n_diff(const std::vector<float>& out, const std::vector<float>& ref) {
  EXPECT_EQ(out.size(), ref.size());
  double n = 0;
  for (size_t i = 0; i < ref.size(); ++i) n += std::memcmp(&out[i], &ref[i], 4) != 0;
  return n;
}

uint32_t seed_of(const std::string& s) {  // FNV-1a: a stable seed per case name
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

std::vector<float> randn(std::mt19937& rng, size_t n, double sd = 1.0, double mean = 0.0) {
  std::normal_distribution<double> d(mean, sd);
  std::vector<float> v(n);
  for (auto& x : v) x = float(d(rng));
  return v;
}

// ---- fp16 / bf16, written here from the IEEE definitions (not core/half.h)

// Decodes IEEE binary16 bits.
double half_value(uint16_t h) {
  const int e = (h >> 10) & 31, m = h & 1023;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0) return s * std::ldexp(double(m), -24);
  GPTQ_ASSERT(e != 31, "test values are finite");
  return s * std::ldexp(double(1024 + m), e - 25);
}

// x rounded to the nearest binary16 value (ties to even: nearbyint in the default rounding mode);
// finite test data only.
double round_to_half(double x) {
  if (x == 0) return 0;
  const int e = std::max(std::ilogb(x), -14);  // below 2^-14 the quantum stays 2^-24 (subnormals)
  const double r = std::ldexp(std::nearbyint(std::ldexp(x, 10 - e)), e - 10);
  GPTQ_ASSERT(std::fabs(r) <= 65504.0, "test values fit fp16");
  return r;
}

// Bits of a value that is exactly a binary16 (round_to_half's output).
uint16_t half_bits(double v) {
  uint16_t s = v < 0 ? 0x8000 : 0;
  v = std::fabs(v);
  if (v == 0) return s;
  if (v < std::ldexp(1.0, -14)) return uint16_t(s | uint16_t(std::ldexp(v, 24)));
  const int e = std::ilogb(v);
  const int m = int(std::ldexp(v, 10 - e)) - 1024;
  return uint16_t(s | uint16_t((e + 15) << 10) | uint16_t(m));
}

double bf16_value(uint16_t b) {
  const uint32_t bits = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Random 16-bit patterns of moderate magnitude (|v| in about [2^-6, 2^3]), both signs.
uint16_t random_half_bits(std::mt19937& rng) {
  const uint16_t e = uint16_t(9 + rng() % 10), m = uint16_t(rng() % 1024);
  return uint16_t(((rng() & 1) << 15) | (e << 10) | m);
}
uint16_t random_bf16_bits(std::mt19937& rng) {
  const uint16_t e = uint16_t(121 + rng() % 10), m = uint16_t(rng() % 128);
  return uint16_t(((rng() & 1) << 15) | (e << 7) | m);
}

// ---- device memory helpers (only through the Backend interface, so they work on any device)

struct Dev {
  std::shared_ptr<void> owner;
  Tensor full;  // [rows, cols + pad]
  Tensor view;  // [rows, cols] starting at column `pad / 2`: a strided view when pad > 0
};

Dev dev_alloc(Backend& be, int64_t rows, int64_t cols, int64_t pad = 0) {
  Dev d;
  d.full = be.alloc_f32(rows, cols + pad, d.owner);
  d.view = d.full.slice_cols(pad / 2, cols);
  return d;
}

// A device tensor holding `host` ([rows, cols]); the padding columns hold `fill`.
Dev dev_upload(Backend& be, const std::vector<float>& host, int64_t rows, int64_t cols, int64_t pad = 0,
               float fill = -777.f) {
  Dev d = dev_alloc(be, rows, cols, pad);
  if (pad > 0) {
    std::vector<float> f(size_t(rows * (cols + pad)), fill);
    be.from_host(f.data(), d.full);
  }
  be.from_host(host.data(), d.view);
  return d;
}

std::vector<float> download(Backend& be, const Tensor& t) {
  std::vector<float> h(size_t(t.rows * t.cols));
  be.to_host(t, h.data());
  return h;
}

std::string dtype_tag(DType t) { return t == DType::kF32 ? "f32" : t == DType::kF16 ? "f16" : "bf16"; }

std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}
void add_case(std::string op, std::string name, std::string shape, std::function<std::vector<Check>(Backend&)> run) {
  registry().push_back({std::move(op), std::move(name), std::move(shape), std::move(run)});
}

// ============================================================================================
// Memory ops: from_host / to_host / copy / fill_zero round trips (exact)
// ============================================================================================

void add_memory_cases() {
  // Loops unpack with std::get, not structured bindings: clang 14 cannot capture bindings in lambdas.
  for (const auto& b_ : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 0}, {7, 33, 0}, {7, 33, 6}, {64, 4099, 3}}) {
const auto rows = std::get<0>(b_); const auto cols = std::get<1>(b_); const auto pad = std::get<2>(b_);
    const std::string name = cat("memory_R", rows, "_C", cols, pad ? cat("_stride", cols + pad) : "");
    add_case("memory", name, cat("[", rows, ", ", cols, "] row stride ", cols + pad), [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      const std::vector<float> a = randn(rng, size_t(rows * cols));
      std::vector<Check> checks;
      // from_host into a strided view, to_host back: the same bits, padding untouched.
      Dev d = dev_upload(be, a, rows, cols, pad, -777.f);
      checks.push_back({"from_host/to_host", "diff", n_diff(download(be, d.view), a), 0});
      std::vector<float> full_ref(size_t(rows * (cols + pad)), -777.f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) full_ref[size_t(r * (cols + pad) + pad / 2 + c)] = a[size_t(r * cols + c)];
      checks.push_back({"padding kept", "diff", n_diff(download(be, d.full), full_ref), 0});
      // copy between differently strided views.
      Dev e = dev_upload(be, std::vector<float>(size_t(rows * cols), 5.f), rows, cols, pad + 2, -555.f);
      be.copy(d.view, e.view);
      checks.push_back({"copy", "diff", n_diff(download(be, e.view), a), 0});
      std::vector<float> efull = download(be, e.full);
      double outside = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols + pad + 2; ++c)
          if (c < (pad + 2) / 2 || c >= (pad + 2) / 2 + cols) outside += efull[size_t(r * (cols + pad + 2) + c)] != -555.f;
      checks.push_back({"copy leaves padding", "diff", outside, 0});
      // fill_zero of a sub-view (rows 1.., columns 1..) leaves everything else alone.
      if (rows > 1 && cols > 1) {
        be.fill_zero(d.view.slice_rows(1, rows - 1).slice_cols(1, cols - 1));
        std::vector<float> z = a;
        for (int64_t r = 1; r < rows; ++r)
          for (int64_t c = 1; c < cols; ++c) z[size_t(r * cols + c)] = 0.f;
        checks.push_back({"fill_zero", "diff", n_diff(download(be, d.view), z), 0});
      } else {
        be.fill_zero(d.view);
        checks.push_back({"fill_zero", "diff", n_diff(download(be, d.view), std::vector<float>(a.size(), 0.f)), 0});
      }
      return checks;
    });
  }
}

// ============================================================================================
// rms_norm: y = x / sqrt(mean(x²) + eps) * w
// ============================================================================================
// Limit: per element a handful of fp32 roundings (mean, +eps, sqrt, divide, two products) plus
// the error of the sum of D squares (≲ sqrt(D)·u relative when summed in fp32), halved by the
// square root: NMSE ≤ 4·(6 + sqrt(D))²·u². A wrong eps (tested with x ~ 1e-3, where eps = 1e-5
// dominates mean(x²) = 1e-6) or a missing weight is off by orders of magnitude.

void add_rms_norm_cases() {
  struct P { int64_t T, D; double scale; bool alias; int64_t pad; };
  for (P p : {P{1, 64, 1.0, false, 0}, P{5, 64, 1.0, true, 0}, P{33, 4099, 1.0, false, 0}, P{33, 4099, 1.0, true, 0},
              P{4, 256, 1e-3, false, 0}, P{4, 256, 1e-3, true, 0}, P{6, 130, 2.0, false, 5}, P{6, 130, 2.0, true, 5},
              // the CUDA kernel's register paths: 4 float4 per thread (D <= 4096), 8 (partly used), strided
              P{1, 4096, 1.0, false, 0}, P{3, 5120, 1.0, false, 0}, P{2, 8192, 1.0, true, 4}}) {
    const std::string name = cat("rms_norm_T", p.T, "_D", p.D, p.scale != 1.0 ? cat("_x", p.scale) : "",
                                 p.pad ? cat("_stride", p.D + p.pad) : "", p.alias ? "_inplace" : "");
    add_case("rms_norm", name, cat("x [", p.T, ", ", p.D, "] |x|~", p.scale, p.alias ? " y=x" : "", p.pad ? " strided" : ""),
             [=](Backend& be) {
               std::mt19937 rng(seed_of(name));
               const float eps = 1e-5f;
               const std::vector<float> x = randn(rng, size_t(p.T * p.D), p.scale);
               const std::vector<float> w = randn(rng, size_t(p.D), 0.5, 1.0);
               std::vector<double> ref(x.size());
               for (int64_t t = 0; t < p.T; ++t) {
                 double ss = 0;
                 for (int64_t i = 0; i < p.D; ++i) ss += double(x[size_t(t * p.D + i)]) * x[size_t(t * p.D + i)];
                 const double inv = 1.0 / std::sqrt(ss / double(p.D) + double(eps));
                 for (int64_t i = 0; i < p.D; ++i) ref[size_t(t * p.D + i)] = double(x[size_t(t * p.D + i)]) * inv * w[size_t(i)];
               }
               Dev dx = dev_upload(be, x, p.T, p.D, p.pad);
               Dev dw = dev_upload(be, w, 1, p.D);
               Dev dy = p.alias ? dx : dev_upload(be, std::vector<float>(x.size(), 9999.f), p.T, p.D, p.pad + 2);
               be.rms_norm(dx.view, dw.view, eps, dy.view);
               const double lim = 4 * std::pow(6 + std::sqrt(double(p.D)), 2) * kU2;
               return std::vector<Check>{{"y", "nmse", nmse(download(be, dy.view), ref), lim}};
             });
  }
}

// ============================================================================================
// rope_angles: cs[t] = cos(pos_t·inv_freq) | sin(pos_t·inv_freq)
// ============================================================================================
// The reference takes the same fp32 inv_freq and computes the angle and cos/sin in double. The
// backend forms the angle in fp32 (as transformers does), which is off by up to u·|angle|; cos and
// sin are 1-Lipschitz, plus u for rounding the result (2u allowing a device cosf of 1-2 ulp):
// limit max|cs - ref| ≤ 2u·(max angle + 1). Positions do not start at 0 and are not sorted.

std::vector<float> make_inv_freq(int64_t hd, double base) {  // as transformers: fp32 1/base^(2i/hd)
  std::vector<float> inv(size_t(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i) inv[size_t(i)] = float(1.0 / std::pow(base, double(2 * i) / double(hd)));
  return inv;
}

void add_rope_cases() {
  for (int64_t hd : {64, 128}) {
    const std::vector<std::vector<int32_t>> pos_sets = {{37, 38, 39, 40, 41}, {4095, 3, 0, 1000, 17, 2048, 2047, 5}};
    for (size_t ps = 0; ps < pos_sets.size(); ++ps) {
      const std::vector<int32_t> pos = pos_sets[ps];
      const std::string name = cat("rope_angles_hd", hd, "_T", pos.size(), ps == 0 ? "_pos37" : "_scattered");
      std::string plist;
      for (int32_t q : pos) plist += cat(plist.empty() ? "" : ",", q);
      add_case("rope_angles", name, cat("hd ", hd, " T ", pos.size(), " positions ", plist),
               [=](Backend& be) {
                 const std::vector<float> inv = make_inv_freq(hd, 500000.0);
                 BatchPlan plan;
                 plan.positions = pos;
                 plan.tokens.assign(pos.size(), 0);
                 const int64_t T = int64_t(pos.size()), half = hd / 2;
                 std::vector<double> ref(size_t(T * hd));
                 double max_angle = 0;
                 for (int64_t t = 0; t < T; ++t)
                   for (int64_t i = 0; i < half; ++i) {
                     const double a = double(pos[size_t(t)]) * double(inv[size_t(i)]);
                     max_angle = std::max(max_angle, a);
                     ref[size_t(t * hd + i)] = std::cos(a);
                     ref[size_t(t * hd + half + i)] = std::sin(a);
                   }
                 Dev di = dev_upload(be, inv, 1, half);
                 Dev dcs = dev_upload(be, std::vector<float>(size_t(T * hd), 9.f), T, hd);
                 be.rope_angles(di.view, plan, dcs.view);
                 return std::vector<Check>{{"cs", "maxabs", max_abs_err(download(be, dcs.view), ref), 2 * kU * (max_angle + 1)}};
               });
    }
  }
}

// ============================================================================================
// rope: rotate-half in place, x: [T, n_heads*hd], cs: [T, hd] given (random angles)
// ============================================================================================
// Limit: each output is x1·c - x2·s, three fp32 roundings of terms bounded by |x|: NMSE ≤ 64u².
// A wrong sign of sin, pairing (i, i+1) instead of (i, i+hd/2), or a wrong row of cs is O(1).

void add_rope_apply_cases() {
  struct P { int64_t T, heads, hd, pad; };
  for (P p : {P{5, 6, 64, 0}, P{7, 2, 128, 0}, P{3, 4, 128, 64}, P{1, 1, 64, 0}}) {
    const std::string name = cat("rope_T", p.T, "_H", p.heads, "_hd", p.hd, p.pad ? cat("_stride", p.heads * p.hd + p.pad) : "");
    add_case("rope", name, cat("x [", p.T, ", ", p.heads, "*", p.hd, "]", p.pad ? " strided" : ""), [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      const int64_t C = p.heads * p.hd, half = p.hd / 2;
      const std::vector<float> x = randn(rng, size_t(p.T * C));
      std::vector<float> cs(size_t(p.T * p.hd));
      std::uniform_real_distribution<double> ua(-40.0, 40.0);
      for (int64_t t = 0; t < p.T; ++t)
        for (int64_t i = 0; i < half; ++i) {
          const double a = ua(rng);
          cs[size_t(t * p.hd + i)] = float(std::cos(a));
          cs[size_t(t * p.hd + half + i)] = float(std::sin(a));
        }
      std::vector<double> ref(x.size());
      for (int64_t t = 0; t < p.T; ++t)
        for (int64_t h = 0; h < p.heads; ++h)
          for (int64_t i = 0; i < half; ++i) {
            const double c = cs[size_t(t * p.hd + i)], s = cs[size_t(t * p.hd + half + i)];
            const double x1 = x[size_t(t * C + h * p.hd + i)], x2 = x[size_t(t * C + h * p.hd + half + i)];
            ref[size_t(t * C + h * p.hd + i)] = x1 * c - x2 * s;
            ref[size_t(t * C + h * p.hd + half + i)] = x2 * c + x1 * s;
          }
      Dev dx = dev_upload(be, x, p.T, C, p.pad);
      Dev dcs = dev_upload(be, cs, p.T, p.hd);
      be.rope(dx.view, p.heads, p.hd, dcs.view);
      return std::vector<Check>{{"x", "nmse", nmse(download(be, dx.view), ref), 64 * kU2}};
    });
  }
}

// ============================================================================================
// silu_mul (g = silu(g)·u) and add (x += y)
// ============================================================================================
// silu_mul: exp (≤ 2 ulp), 1 + e, divide, multiply: per element ≲ 8u relative: NMSE ≤ 64u²,
// limit 256u² (16u) for a device expf. Inputs include ±90 (exp overflows to inf in fp32: the result
// must be -0, not NaN). add: one fp32 rounding: NMSE ≤ u², limit 4u².

void add_elementwise_cases() {
  for (const auto& b_ : {std::pair<int64_t, int64_t>{1, 64}, {5, 1000}, {3, 4099}}) {
const auto T = std::get<0>(b_); const auto F = std::get<1>(b_);
    const std::string name = cat("silu_mul_T", T, "_F", F);
    add_case("silu_mul", name, cat("g, u [", T, ", ", F, "]"), [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      std::vector<float> g = randn(rng, size_t(T * F), 3.0);
      const std::vector<float> u = randn(rng, size_t(T * F));
      g[0] = 90.f;
      if (g.size() > 1) g[1] = -90.f;
      std::vector<double> ref(g.size());
      for (size_t i = 0; i < g.size(); ++i) ref[i] = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
      Dev dg = dev_upload(be, g, T, F), du = dev_upload(be, u, T, F);
      be.silu_mul(dg.view, du.view);
      return std::vector<Check>{{"g", "nmse", nmse(download(be, dg.view), ref), 256 * kU2}};
    });
  }
  for (const auto& b_ : {std::tuple<int64_t, int64_t, int64_t>{1, 64, 0}, {9, 4099, 0}, {9, 130, 6}}) {
const auto T = std::get<0>(b_); const auto F = std::get<1>(b_); const auto pad = std::get<2>(b_);
    const std::string name = cat("add_T", T, "_F", F, pad ? cat("_stride", F + pad) : "");
    add_case("add", name, cat("x, y [", T, ", ", F, "]", pad ? " strided" : ""), [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      const std::vector<float> x = randn(rng, size_t(T * F)), y = randn(rng, size_t(T * F), 10.0);
      std::vector<double> ref(x.size());
      for (size_t i = 0; i < x.size(); ++i) ref[i] = double(x[i]) + double(y[i]);
      Dev dx = dev_upload(be, x, T, F, pad), dy = dev_upload(be, y, T, F, pad + 4);
      be.add(dx.view, dy.view);
      return std::vector<Check>{{"x", "nmse", nmse(download(be, dx.view), ref), 4 * kU2},
                                {"y unchanged", "diff", n_diff(download(be, dy.view), y), 0}};
    });
  }
}

// ============================================================================================
// gather_rows and embed (exact: they move values)
// ============================================================================================

void add_gather_embed_cases() {
  for (const auto& b_ : {std::pair<int64_t, int64_t>{10, 37}, {65, 4099}}) {
const auto R = std::get<0>(b_); const auto C = std::get<1>(b_);
    const std::string name = cat("gather_rows_R", R, "_C", C);
    add_case("gather_rows", name, cat("x [", R, ", ", C, "] -> 6 rows (repeats, any order)"), [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      const std::vector<float> x = randn(rng, size_t(R * C));
      BatchPlan plan;
      plan.logit_rows = {R - 1, 0, 3, 3, R / 2, 1};
      const std::vector<int64_t>& rows = plan.logit_rows;
      std::vector<float> ref;
      for (int64_t r : rows) ref.insert(ref.end(), x.begin() + r * C, x.begin() + (r + 1) * C);
      Dev dx = dev_upload(be, x, R, C), dy = dev_upload(be, std::vector<float>(ref.size(), 1.f), int64_t(rows.size()), C);
      be.gather_rows(dx.view, plan, dy.view);
      return std::vector<Check>{{"y", "diff", n_diff(download(be, dy.view), ref), 0}};
    });
  }
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (const auto& b_ : {std::pair<int64_t, int64_t>{50, 37}, {300, 1024}}) {
const auto V = std::get<0>(b_); const auto H = std::get<1>(b_);
      const std::string name = cat("embed_", dtype_tag(dt), "_V", V, "_H", H);
      add_case("embed", name, cat(dtype_tag(dt), " table [", V, ", ", H, "], 7 tokens"), [=](Backend& be) {
        std::mt19937 rng(seed_of(name));
        std::vector<uint16_t> t16(size_t(V * H));
        std::vector<float> t32(size_t(V * H));
        std::vector<float> value(size_t(V * H));  // the exact value of every entry
        for (size_t i = 0; i < value.size(); ++i) {
          if (dt == DType::kF32) {
            t32[i] = value[i] = randn(rng, 1)[0];
          } else {
            t16[i] = dt == DType::kF16 ? random_half_bits(rng) : random_bf16_bits(rng);
            value[i] = float(dt == DType::kF16 ? half_value(t16[i]) : bf16_value(t16[i]));
          }
        }
        BatchPlan plan;
        plan.tokens = {int32_t(V - 1), 0, 5, 5, int32_t(V / 2), 1, int32_t(V - 2)};
        plan.positions = {0, 1, 2, 3, 4, 5, 6};
        std::vector<float> ref;
        for (int32_t id : plan.tokens) ref.insert(ref.end(), value.begin() + id * H, value.begin() + (id + 1) * H);
        DenseWeightDesc d;
        d.data = dt == DType::kF32 ? static_cast<const void*>(t32.data()) : t16.data();
        d.dtype = dt;
        d.out = V;
        d.in = H;
        d.copy = true;
        auto w = be.dense_weight(d);
        Dev dy = dev_upload(be, std::vector<float>(ref.size(), 1.f), plan.n_tokens(), H);
        be.embed(*w, plan, dy.view);
        return std::vector<Check>{{"y", "diff", n_diff(download(be, dy.view), ref), 0}};
      });
    }
}

// ============================================================================================
// linear, dense weights: y = x·Wᵀ (+ b), W in F32/F16/BF16
// ============================================================================================
// Limit: fp32 accumulation of K products. Rounding errors of a running sum grow like a random walk,
// NMSE ≈ K·u²/3 for a plain loop (less for blocked/SIMD sums); the limit 64·K·u² leaves room for
// any summation order, and a transposed weight, a wrong row or a lost bias is NMSE ~ 1.
// dense() must return W exactly (the values are exact in fp32), bias() the bias.

double linear_limit(int64_t K) { return 64.0 * double(K) * kU2; }

// A backend that rounds GEMM inputs to a 16-bit type (unit roundoff v) adds NMSE ≈ v²/3 per
// rounded operand (x, and W when dequantized to fp16); 16·v² bounds both with room, and is still
// far below a wrong index or a lost bias (NMSE ≳ 1e-2).
double linear_limit(int64_t K, const Weight& w, int64_t T) {
  const double v = g_entry ? g_entry->gemm_input_u(w, T) : 0.0;
  return linear_limit(K) + 16.0 * v * v;
}

void add_dense_linear_cases() {
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (const auto& kn : {std::pair<int64_t, int64_t>{97, 33}, {300, 130}, {1027, 70}, {512, 75}})
      for (bool bias : {false, true})
        for (int64_t T : {1, 4, 5, 64, 65}) {
          const int64_t K = kn.first, N = kn.second;
          const std::string name = cat("linear_dense_", dtype_tag(dt), bias ? "_bias" : "", "_K", K, "_N", N, "_T", T);
          add_case("linear_dense", name, cat(dtype_tag(dt), " W [", N, ", ", K, "]", bias ? " + bias" : "", " x [", T, ", ", K, "]"),
                   [=](Backend& be) {
                     std::mt19937 rng(seed_of(name));
                     std::vector<uint16_t> w16(size_t(N * K));
                     std::vector<float> w32(size_t(N * K)), W(size_t(N * K));
                     for (size_t i = 0; i < W.size(); ++i) {
                       if (dt == DType::kF32) {
                         w32[i] = W[i] = randn(rng, 1, 0.1)[0];
                       } else {
                         w16[i] = dt == DType::kF16 ? random_half_bits(rng) : random_bf16_bits(rng);
                         W[i] = float(dt == DType::kF16 ? half_value(w16[i]) : bf16_value(w16[i]));
                       }
                     }
                     const std::vector<float> b = randn(rng, size_t(N));
                     const std::vector<float> x = randn(rng, size_t(T * K));
                     std::vector<double> ref(size_t(T * N));
                     for (int64_t t = 0; t < T; ++t)
                       for (int64_t n = 0; n < N; ++n) {
                         double s = bias ? double(b[size_t(n)]) : 0.0;
                         for (int64_t k = 0; k < K; ++k) s += double(x[size_t(t * K + k)]) * double(W[size_t(n * K + k)]);
                         ref[size_t(t * N + n)] = s;
                       }
                     DenseWeightDesc d;
                     d.data = dt == DType::kF32 ? static_cast<const void*>(w32.data()) : w16.data();
                     d.dtype = dt;
                     d.out = N;
                     d.in = K;
                     d.bias = bias ? b.data() : nullptr;
                     d.copy = true;
                     auto w = be.dense_weight(d);
                     std::vector<Check> checks;
                     checks.push_back({"shape", "diff", double(w->in_features() != K) + double(w->out_features() != N), 0});
                     Dev dx = dev_upload(be, x, T, K), dy = dev_upload(be, std::vector<float>(size_t(T * N), 9999.f), T, N);
                     be.linear(*w, dx.view, dy.view);
                     checks.push_back({"y", "nmse", nmse(download(be, dy.view), ref), linear_limit(K, *w, T)});
                     checks.push_back({"dense()", "diff", n_diff(w->dense(), W), 0});
                     checks.push_back({"bias()", "diff", n_diff(w->bias(), bias ? b : std::vector<float>{}), 0});
                     return checks;
                   });
        }
}

// ============================================================================================
// linear, GPTQ weights
// ============================================================================================
// Packed with quant::pack_quantized from random codes, fp16-exact scales and zeros; the reference
// is x·Wᵀ (+ b) in double with W[n,k] = s[g,n]·(q[n,k] - z[g,n]), g = g_idx[k], from the codes
// themselves. v1 stores zero-1 masked to b bits, so an asymmetric zero of 0 is read back as 2^b by
// every loader (quant/format.h): the reference uses that effective zero, and asymmetric zeros
// include 0 on purpose. Limit as for dense weights: 64·K·u² (the zero-point split
// acc - z·Σx of the decode kernels adds cancellation of a small factor for zero-mean x); a wrong
// group index, a lost partial group or a transposed pack is NMSE ≳ 1e-2.

enum class GOrder { kNone, kIdentity, kActOrder, kRandom };  // no g_idx tensor / k/G / permuted / arbitrary

struct GptqSpec {
  int bits = 4, G = 128;
  GOrder order = GOrder::kIdentity;
  bool sym = false;
  QuantFormat fmt = QuantFormat::kGptqV1;
  int64_t K = 352, N = 72, T = 1;
  bool bias = false;   // bias given to gptq_weight as fp32 (how the model loads it)
  bool qbias = false;  // bias in QuantMatrix::bias instead (fp16, exactly representable values)
};

std::string gptq_name(const GptqSpec& s) {
  const char* order = s.order == GOrder::kNone ? "_nogidx" : s.order == GOrder::kActOrder ? "_actorder"
                      : s.order == GOrder::kRandom ? "_randgidx" : "";
  return cat("linear_gptq_b", s.bits, "_g", s.G < 0 ? std::string("all") : std::to_string(s.G), order,
             s.sym ? "_sym" : "_asym", s.fmt == QuantFormat::kGptqV1 ? "_v1" : "_v2", s.bias ? "_bias" : "", s.qbias ? "_qbias" : "", "_K", s.K,
             "_N", s.N, "_T", s.T);
}

void add_gptq_case(const GptqSpec s) {
  const std::string name = gptq_name(s);
  add_case("linear_gptq", name,
           cat(s.bits, "-bit g", s.G, " ", s.order == GOrder::kActOrder ? "act-order " : s.order == GOrder::kRandom ? "random g_idx " : "",
               s.sym ? "sym " : "asym ", quant::format_name(s.fmt), s.bias ? " +bias" : "", s.qbias ? " +fp16 bias in QuantMatrix" : "", " K ", s.K, " N ", s.N, " T ", s.T),
           [=](Backend& be) {
             std::mt19937 rng(seed_of(name));
             const int64_t K = s.K, N = s.N, T = s.T;
             const int maxq = (1 << s.bits) - 1;
             const int64_t G = s.G < 0 ? K : s.G, ng = (K + G - 1) / G;
             std::vector<uint8_t> codes(size_t(N * K));  // [N, K]
             for (auto& q : codes) q = uint8_t(rng() % uint32_t(maxq + 1));
             // Scales m·2^-17, m in [1024, 2048): fp16 normals (exactly stored), about 0.008..0.016.
             std::vector<float> scales(size_t(ng * N));
             for (auto& v : scales) v = float(std::ldexp(double(1024 + rng() % 1024), -17));
             std::vector<int32_t> zeros(size_t(ng * N));
             for (auto& z : zeros) z = s.sym ? (maxq + 1) / 2 : int32_t(rng() % uint32_t(maxq + 1));
             for (int64_t n = 0; n < std::min<int64_t>(N, 3) && !s.sym; ++n) zeros[size_t(n)] = 0;  // the v1 wrap
             std::vector<int32_t> g_idx(static_cast<size_t>(K));
             if (s.order == GOrder::kActOrder) {  // as GPTQ writes it: g_idx[perm[i]] = i / G
               std::vector<int32_t> perm(static_cast<size_t>(K));
               std::iota(perm.begin(), perm.end(), 0);
               std::shuffle(perm.begin(), perm.end(), rng);
               for (int64_t i = 0; i < K; ++i) g_idx[size_t(perm[size_t(i)])] = int32_t(i / G);
             } else if (s.order == GOrder::kRandom) {  // any map into [0, ng): uneven groups
               for (auto& g : g_idx) g = int32_t(rng() % uint32_t(ng));
             } else {
               for (int64_t k = 0; k < K; ++k) g_idx[size_t(k)] = int32_t(k / G);
             }
             std::vector<float> b = randn(rng, size_t(N));
             if (s.qbias)
               for (auto& v : b) v = float(round_to_half(v));
             const std::vector<float> x = randn(rng, size_t(T * K));

             // W[n, k] in double from the codes; effective zero as loaders read it.
             std::vector<float> W(size_t(N * K));  // exact: fp16 scale × small integer
             for (int64_t n = 0; n < N; ++n)
               for (int64_t k = 0; k < K; ++k) {
                 const int64_t g = g_idx[size_t(k)];
                 int32_t z = zeros[size_t(g * N + n)];
                 if (s.fmt == QuantFormat::kGptqV1) z = ((z - 1) & maxq) + 1;
                 W[size_t(n * K + k)] = float(double(scales[size_t(g * N + n)]) * double(int(codes[size_t(n * K + k)]) - z));
               }
             std::vector<double> ref(size_t(T * N));
             for (int64_t t = 0; t < T; ++t)
               for (int64_t n = 0; n < N; ++n) {
                 double acc = s.bias || s.qbias ? double(b[size_t(n)]) : 0.0;
                 for (int64_t k = 0; k < K; ++k) acc += double(x[size_t(t * K + k)]) * double(W[size_t(n * K + k)]);
                 ref[size_t(t * N + n)] = acc;
               }

             const quant::PackedQuant packed = quant::pack_quantized(
                 codes.data(), scales.data(), zeros.data(), s.order == GOrder::kNone ? nullptr : g_idx.data(),
                 s.qbias ? b.data() : nullptr, s.bits,
                 s.G, K, N, s.fmt);
             quant::QuantMatrix m = packed.view();
             if (s.order == GOrder::kNone) m.g_idx = nullptr;  // a checkpoint without g_idx: k / G
             std::unique_ptr<Weight> w;
             try {
               w = be.gptq_weight(m, s.bias ? b.data() : nullptr);
             } catch (const Error& e) {
               throw Unsupported{e.what()};
             }
             std::vector<Check> checks;
             checks.push_back({"shape", "diff", double(w->in_features() != K) + double(w->out_features() != N), 0});
             Dev dx = dev_upload(be, x, T, K), dy = dev_upload(be, std::vector<float>(size_t(T * N), 9999.f), T, N);
             be.linear(*w, dx.view, dy.view);
             checks.push_back({"y", "nmse", nmse(download(be, dy.view), ref), linear_limit(K, *w, T)});
             checks.push_back({"dense()", "diff", n_diff(w->dense(), W), 0});
             return checks;
           });
}

void add_gptq_linear_cases() {
  // N per bits: N*bits % 32 == 0 and not a multiple of 32 where allowed (a partial column tile).
  auto n_for = [](int bits) -> int64_t { return bits == 2 ? 80 : bits == 3 ? 96 : bits == 4 ? 72 : 68; };
  struct Z { bool sym; QuantFormat fmt; };
  const Z zs[] = {{true, QuantFormat::kGptqV1}, {false, QuantFormat::kGptqV1}, {false, QuantFormat::kGptqV2}};
  // The cross product, K = 352: not a multiple of 64 or 128 (partial last group), a multiple of 32
  // (3-bit packing). T = 1 / 5 / 65: one row, a partial 4-row decode pass, the prefill path.
  for (int bits : {2, 3, 4, 8})
    for (int G : {-1, 32, 64, 128})
      for (GOrder order : {GOrder::kIdentity, GOrder::kActOrder})
        for (const Z& z : zs)
          for (int64_t T : {1, 5, 65}) {
            if (G < 0 && order == GOrder::kActOrder) continue;  // one group: act-order is a no-op
            add_gptq_case({bits, G, order, z.sym, z.fmt, 352, n_for(bits), T, false});
          }
  // T = 4 and 64: the last sizes of the 4-row pass and of the decode path; with bias.
  for (int bits : {2, 3, 4, 8})
    for (int64_t T : {4, 64}) {
      add_gptq_case({bits, 128, GOrder::kActOrder, false, QuantFormat::kGptqV1, 352, n_for(bits), T, true});
      add_gptq_case({bits, 32, GOrder::kIdentity, true, QuantFormat::kGptqV2, 352, n_for(bits), T, true});
    }
  // T = 16 and 33: the batched 4-bit kernel's first two n-tile counts on CUDA (GPTQ_CUDA_TC_GEMM=1).
  for (int64_t T : {16, 33}) {
    add_gptq_case({4, 128, GOrder::kActOrder, false, QuantFormat::kGptqV1, 352, 72, T, true});
    add_gptq_case({4, 32, GOrder::kIdentity, true, QuantFormat::kGptqV2, 352, 72, T, false});
  }
  // K = 320 with G = 128 (groups of 128, 128, 64); no g_idx tensor.
  for (int64_t T : {1, 65}) {
    add_gptq_case({4, 128, GOrder::kIdentity, false, QuantFormat::kGptqV1, 320, 256, T, true});
    add_gptq_case({4, 128, GOrder::kNone, false, QuantFormat::kGptqV2, 320, 64, T, false});
    add_gptq_case({3, 128, GOrder::kNone, true, QuantFormat::kGptqV1, 320, 64, T, false});
  }
  // K = 1056 > 512: the prefill kernel's K blocks (beta = 1 after the first) and 160 columns (two
  // column blocks, one partial).
  for (int bits : {2, 3, 4, 8})
    for (int64_t T : {1, 65}) add_gptq_case({bits, 128, GOrder::kActOrder, false, QuantFormat::kGptqV2, 1056, 160, T, true});
  // Layouts off the SIMD kernels' packing units: G = 20 (4-bit units of 8) and arbitrary g_idx.
  for (int64_t T : {1, 5, 65}) {
    add_gptq_case({4, 20, GOrder::kIdentity, false, QuantFormat::kGptqV1, 104, 40, T, false});
    add_gptq_case({3, 32, GOrder::kRandom, false, QuantFormat::kGptqV2, 352, 96, T, true});
    add_gptq_case({8, 64, GOrder::kRandom, true, QuantFormat::kGptqV1, 352, 68, T, false});
  }
  // A checkpoint layer that carries its bias in the QuantMatrix (fp16) and none as fp32: applied once.
  for (int64_t T : {1, 65}) add_gptq_case({4, 128, GOrder::kActOrder, false, QuantFormat::kGptqV1, 352, 72, T, false, true});
}

// ============================================================================================
// The decode-step fusions: linear_add (y += x·Wᵀ), rope_qk (q and k in one call), silu_mul on
// column views, fuse (q|k|v, gate|up as one weight)
// ============================================================================================
// linear_add: the linear's limit plus one fp32 add per output; y is a strided view, its padding
// must stay. rope_qk: as rope. fuse: a backend may decline (null: the CPU backend does, and any
// backend for parts that differ in act-order permutation); what it fuses must hold exactly the
// parts' values (dense() is the parts' dense() stacked, bias the parts' biases, zeros where a part
// had none) and its linear must match the stacked reference.

// A random GPTQ layer (codes, fp16-exact scales, asymmetric zeros) with the given g_idx, packed
// as v2; W: its exact dense values [N, K].
struct RandGptq {
  quant::PackedQuant packed;
  std::vector<float> W;
};
RandGptq rand_gptq(std::mt19937& rng, int bits, int64_t G, int64_t K, int64_t N, const std::vector<int32_t>& g_idx) {
  const int maxq = (1 << bits) - 1;
  const int64_t ng = (K + G - 1) / G;
  std::vector<uint8_t> codes(size_t(N * K));
  for (auto& q : codes) q = uint8_t(rng() % uint32_t(maxq + 1));
  std::vector<float> scales(size_t(ng * N));
  for (auto& v : scales) v = float(std::ldexp(double(1024 + rng() % 1024), -17));
  std::vector<int32_t> zeros(size_t(ng * N));
  for (auto& z : zeros) z = int32_t(rng() % uint32_t(maxq + 1));
  RandGptq r;
  r.W.resize(size_t(N * K));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = g_idx[size_t(k)];
      r.W[size_t(n * K + k)] = float(double(scales[size_t(g * N + n)]) *
                                     double(int(codes[size_t(n * K + k)]) - zeros[size_t(g * N + n)]));
    }
  r.packed = quant::pack_quantized(codes.data(), scales.data(), zeros.data(), g_idx.data(), nullptr, bits, int(G), K, N,
                                   QuantFormat::kGptqV2);
  return r;
}

std::vector<int32_t> act_order_gidx(std::mt19937& rng, int64_t K, int64_t G) {  // g_idx[perm[i]] = i / G
  std::vector<int32_t> perm(static_cast<size_t>(K)), g(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < K; ++i) g[size_t(perm[size_t(i)])] = int32_t(i / G);
  return g;
}

// ref[t, n] = base[t, n] + Σ_k x[t, k]·W[n, k] + b[n]
std::vector<double> linear_ref(const std::vector<float>& x, const std::vector<float>& W, const std::vector<float>& b,
                               const std::vector<float>& base, int64_t T, int64_t K, int64_t N) {
  std::vector<double> ref(size_t(T * N));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = (base.empty() ? 0.0 : double(base[size_t(t * N + n)])) + (b.empty() ? 0.0 : double(b[size_t(n)]));
      for (int64_t k = 0; k < K; ++k) s += double(x[size_t(t * K + k)]) * double(W[size_t(n * K + k)]);
      ref[size_t(t * N + n)] = s;
    }
  return ref;
}

void add_fusion_cases() {
  // linear_add: dense f16 / f32 and GPTQ 2/3/4/8-bit act-order, T = 1 (GEMV), 5, 65 (GEMM).
  for (const char* kind : {"f16", "f32", "gptq_b4", "gptq_b3", "gptq_b8", "gptq_b2"})
    for (int64_t T : {1, 5, 65}) {
      const std::string k = kind;
      const int64_t K = 256, N = 96;
      const std::string name = cat("linear_add_", k, "_K", K, "_N", N, "_T", T);
      add_case("linear_add", name, cat(k, " W [", N, ", ", K, "] + bias, y += x·Wt, y strided, x [", T, ", ", K, "]"),
               [=](Backend& be) {
                 std::mt19937 rng(seed_of(name));
                 std::vector<float> W(size_t(N * K));
                 std::unique_ptr<Weight> w;
                 const std::vector<float> b = randn(rng, size_t(N));
                 if (k.rfind("gptq", 0) == 0) {
                   const int bits = k.back() - '0';
                   RandGptq g = rand_gptq(rng, bits, 64, K, N, act_order_gidx(rng, K, 64));
                   W = g.W;
                   w = be.gptq_weight(g.packed.view(), b.data());
                 } else {
                   const bool f16 = k == "f16";
                   std::vector<uint16_t> w16(W.size());
                   for (size_t i = 0; i < W.size(); ++i) {
                     if (f16) {
                       w16[i] = random_half_bits(rng);
                       W[i] = float(half_value(w16[i]));
                     } else {
                       W[i] = randn(rng, 1, 0.1)[0];
                     }
                   }
                   DenseWeightDesc d;
                   d.data = f16 ? static_cast<const void*>(w16.data()) : W.data();
                   d.dtype = f16 ? DType::kF16 : DType::kF32;
                   d.out = N;
                   d.in = K;
                   d.bias = b.data();
                   d.copy = true;
                   w = be.dense_weight(d);
                 }
                 const std::vector<float> x = randn(rng, size_t(T * K)), y0 = randn(rng, size_t(T * N), 4.0);
                 const std::vector<double> ref = linear_ref(x, W, b, y0, T, K, N);
                 Dev dx = dev_upload(be, x, T, K), dy = dev_upload(be, y0, T, N, 8, -777.f);
                 Dev tmp = dev_alloc(be, T, N);
                 be.linear_add(*w, dx.view, dy.view, tmp.view);
                 std::vector<float> full = download(be, dy.full);
                 double pad = 0;
                 for (int64_t t = 0; t < T; ++t)
                   for (int64_t c = 0; c < N + 8; ++c)
                     if (c < 4 || c >= 4 + N) pad += full[size_t(t * (N + 8) + c)] != -777.f;
                 return std::vector<Check>{{"y", "nmse", nmse(download(be, dy.view), ref), linear_limit(K, *w, T) + 4 * kU2},
                                           {"padding kept", "diff", pad, 0}};
               });
    }
  // rope_qk: q and k as column ranges of one [T, (nq + 2 nk) hd] buffer (the fused q|k|v layout).
  for (const auto& b_ : {std::tuple<int64_t, int64_t, int64_t, int64_t>{1, 8, 2, 64}, {5, 4, 4, 128}, {3, 6, 1, 64}}) {
    const auto T = std::get<0>(b_); const auto nq = std::get<1>(b_); const auto nk = std::get<2>(b_); const auto hd = std::get<3>(b_);
    const std::string name = cat("rope_qk_T", T, "_q", nq, "_k", nk, "_hd", hd);
    add_case("rope_qk", name, cat("q [", T, ", ", nq, "*", hd, "], k [", T, ", ", nk, "*", hd, "] views of q|k|v"), [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      const int64_t C = (nq + 2 * nk) * hd, half = hd / 2;
      const std::vector<float> x = randn(rng, size_t(T * C));
      std::vector<float> cs(size_t(T * hd));
      std::uniform_real_distribution<double> ua(-40.0, 40.0);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < half; ++i) {
          const double a = ua(rng);
          cs[size_t(t * hd + i)] = float(std::cos(a));
          cs[size_t(t * hd + half + i)] = float(std::sin(a));
        }
      std::vector<double> ref(x.begin(), x.end());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < nq + nk; ++h)  // v (the last nk heads) is left alone
          for (int64_t i = 0; i < half; ++i) {
            const double c = cs[size_t(t * hd + i)], s = cs[size_t(t * hd + half + i)];
            const size_t o = size_t(t * C + h * hd + i);
            const double x1 = x[o], x2 = x[o + size_t(half)];
            ref[o] = x1 * c - x2 * s;
            ref[o + size_t(half)] = x2 * c + x1 * s;
          }
      Dev dx = dev_upload(be, x, T, C), dcs = dev_upload(be, cs, T, hd);
      be.rope_qk(dx.view.slice_cols(0, nq * hd), nq, dx.view.slice_cols(nq * hd, nk * hd), nk, hd, dcs.view);
      return std::vector<Check>{{"q|k|v", "nmse", nmse(download(be, dx.view), ref), 64 * kU2}};
    });
  }
  // silu_mul on g | u, the two halves of one [T, 2F] buffer.
  for (const auto& b_ : {std::pair<int64_t, int64_t>{1, 96}, {7, 1000}}) {
    const auto T = b_.first; const auto F = b_.second;
    const std::string name = cat("silu_mul_views_T", T, "_F", F);
    add_case("silu_mul", name, cat("g, u: the halves of [", T, ", 2*", F, "]"), [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      const std::vector<float> gu = randn(rng, size_t(T * 2 * F), 3.0);
      std::vector<double> ref(gu.begin(), gu.end());
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < F; ++i) {
          const double g = gu[size_t(t * 2 * F + i)], u = gu[size_t(t * 2 * F + F + i)];
          ref[size_t(t * 2 * F + i)] = g / (1.0 + std::exp(-g)) * u;
        }
      Dev d = dev_upload(be, gu, T, 2 * F);
      be.silu_mul(d.view.slice_cols(0, F), d.view.slice_cols(F, F));
      return std::vector<Check>{{"g|u", "nmse", nmse(download(be, d.view), ref), 256 * kU2}};
    });
  }
  // fuse: q|k|v shapes (GQA: 64 | 32 | 32 outputs) and gate|up (96 | 96), dense and GPTQ.
  for (const char* kind : {"f16", "bf16", "gptq_b4", "gptq_b4_actorder", "gptq_b3", "gptq_b8"})
    for (int parts : {2, 3})
      for (int64_t T : {1, 3, 40}) {
        const std::string k = kind;
        const int64_t K = 320;
        const std::vector<int64_t> Ns = parts == 3 ? std::vector<int64_t>{64, 32, 32} : std::vector<int64_t>{96, 96};
        const std::string name = cat("fuse_", k, "_parts", parts, "_T", T);
        add_case("fuse", name, cat(k, " ", parts, " parts of K ", K, ", x [", T, ", ", K, "]"), [=](Backend& be) {
          std::mt19937 rng(seed_of(name));
          std::vector<std::unique_ptr<Weight>> w;
          std::vector<float> W, B;  // stacked [ΣN, K], [ΣN]
          const bool gptq = k.rfind("gptq", 0) == 0;
          const std::vector<int32_t> gidx = k.find("actorder") != std::string::npos ? act_order_gidx(rng, K, 64) : [&] {
            std::vector<int32_t> g(static_cast<size_t>(K));
            for (int64_t i = 0; i < K; ++i) g[size_t(i)] = int32_t(i / 64);
            return g;
          }();
          for (size_t p = 0; p < Ns.size(); ++p) {
            const int64_t N = Ns[p];
            const bool has_bias = p != 1;  // one part without: zeros in the fused bias
            const std::vector<float> b = has_bias ? randn(rng, size_t(N)) : std::vector<float>(size_t(N), 0.f);
            if (gptq) {
              RandGptq g = rand_gptq(rng, k[6] - '0', 64, K, N, gidx);
              W.insert(W.end(), g.W.begin(), g.W.end());
              w.push_back(be.gptq_weight(g.packed.view(), has_bias ? b.data() : nullptr));
            } else {
              const bool f16 = k == "f16";
              std::vector<uint16_t> w16(size_t(N * K));
              for (auto& v : w16) {
                v = f16 ? random_half_bits(rng) : random_bf16_bits(rng);
                W.push_back(float(f16 ? half_value(v) : bf16_value(v)));
              }
              DenseWeightDesc d;
              d.data = w16.data();
              d.dtype = f16 ? DType::kF16 : DType::kBF16;
              d.out = N;
              d.in = K;
              d.bias = has_bias ? b.data() : nullptr;
              d.copy = true;
              w.push_back(be.dense_weight(d));
            }
            B.insert(B.end(), b.begin(), b.end());
          }
          std::vector<const Weight*> pw;
          for (const auto& p : w) pw.push_back(p.get());
          const std::unique_ptr<Weight> f = be.fuse(pw);
          if (!f) throw Unsupported{"this backend does not fuse linears"};
          const int64_t N = int64_t(W.size()) / K;
          const std::vector<float> x = randn(rng, size_t(T * K));
          Dev dx = dev_upload(be, x, T, K), dy = dev_upload(be, std::vector<float>(size_t(T * N), 9999.f), T, N);
          be.linear(*f, dx.view, dy.view);
          std::vector<Check> checks;
          checks.push_back({"shape", "diff", double(f->in_features() != K) + double(f->out_features() != N), 0});
          checks.push_back({"kind", "diff", double(f->kind() != w[0]->kind()), 0});
          checks.push_back({"y", "nmse", nmse(download(be, dy.view), linear_ref(x, W, B, {}, T, K, N)), linear_limit(K, *f, T)});
          checks.push_back({"dense()", "diff", n_diff(f->dense(), W), 0});
          checks.push_back({"bias()", "diff", n_diff(f->bias(), B), 0});
          // Parts with different act-order permutations (or kinds) are not fused.
          if (gptq) {
            RandGptq other = rand_gptq(rng, k[6] - '0', 64, K, 32, act_order_gidx(rng, K, 64));
            auto o = be.gptq_weight(other.packed.view(), nullptr);
            checks.push_back({"other permutation refused", "diff", double(be.fuse({pw[0], o.get()}) != nullptr), 0});
          }
          return checks;
        });
      }
}

// ============================================================================================
// attention over the paged KV cache
// ============================================================================================
// The cache (2 layers, layer 1 under test) is a pool of blocks allocated from the backend; block
// tables are shuffled pool ids (or given), so a table is never in order. Keys already held
// ("history", uploaded as raw block bytes) make positions start past 0; unused slots hold a large
// constant, so reading a slot outside the causal window (or the wrong layer/block) is O(1) wrong.
// Every step is one plan over several sequences (prefill rows, decode rows, sequences absent from a
// step); the reference keeps its own copy of the cache (values rounded to fp16 for fp16 storage,
// ties to even) and attends in double.
// Limit: scores are fp32 dots over hd terms and outputs fp32 sums over L keys (softmax weights in
// [0, 1]): NMSE ≤ 64·(hd + L)·u². An off-by-one in the causal mask changes a row by ~1/L (NMSE
// ~1e-4 here), a wrong kv head or a wrong block is O(1).

struct AttnSeqSpec {
  int64_t hist = 0;              // positions already in the cache
  std::vector<int64_t> rows;     // new rows in each step (0: not in that step)
  std::vector<int32_t> blocks;   // explicit block table, or empty: drawn from the shuffled pool
};

struct AttnSpec {
  std::string tag;
  int64_t n_heads = 6, n_kv = 2, hd = 64, bs = 16;
  DType dt = DType::kF32;
  std::vector<AttnSeqSpec> seqs;
  int64_t pool_blocks = 0;  // 0: what the sequences need plus 3 spare
};

void add_attention_case(const AttnSpec a) {
  const std::string name = cat("attention_", a.tag, "_H", a.n_heads, "_KV", a.n_kv, "_hd", a.hd, "_bs", a.bs, "_",
                               dtype_tag(a.dt));
  std::string shape = cat("heads ", a.n_heads, "/", a.n_kv, " hd ", a.hd, " block ", a.bs, " ", dtype_tag(a.dt), " seqs");
  for (const auto& s : a.seqs) {
    shape += cat(" [hist ", s.hist, " rows");
    for (int64_t r : s.rows) shape += cat(" ", r);
    shape += "]";
  }
  add_case("attention", name, shape, [=](Backend& be) {
    std::mt19937 rng(seed_of(name));
    KVLayout L;
    L.n_layers = 2;
    L.n_kv_heads = a.n_kv;
    L.head_dim = a.hd;
    L.block_size = a.bs;
    L.dtype = a.dt;
    const int64_t layer = 1, nkv = a.n_kv, hd = a.hd, bs = a.bs, H = a.n_heads, group = H / nkv;
    const size_t es = dtype_size(a.dt);
    const int64_t n_steps = int64_t(std::max_element(a.seqs.begin(), a.seqs.end(), [](auto& x, auto& y) {
                                      return x.rows.size() < y.rows.size();
                                    })->rows.size());
    // Block tables.
    std::vector<int64_t> final_len;
    int64_t need = 0;
    for (const auto& s : a.seqs) {
      int64_t len = s.hist;
      for (int64_t r : s.rows) len += r;
      final_len.push_back(len);
      need += (len + bs - 1) / bs;
    }
    const int64_t n_pool = a.pool_blocks ? a.pool_blocks : need + 3;
    std::vector<int32_t> pool_ids(static_cast<size_t>(n_pool));
    std::iota(pool_ids.begin(), pool_ids.end(), 0);
    std::shuffle(pool_ids.begin(), pool_ids.end(), rng);
    std::vector<std::vector<int32_t>> tables;
    size_t next = 0;
    for (size_t i = 0; i < a.seqs.size(); ++i) {
      if (!a.seqs[i].blocks.empty()) {
        tables.push_back(a.seqs[i].blocks);
      } else {
        std::vector<int32_t> t;
        for (int64_t b = 0; b < (final_len[i] + bs - 1) / bs; ++b) t.push_back(pool_ids[next++]);
        tables.push_back(t);
      }
    }
    // The pool on the device, every slot first holding the garbage constant.
    const float kGarbage = 64.f;
    std::vector<std::shared_ptr<void>> mem;
    std::vector<void*> blocks;
    std::vector<std::vector<uint8_t>> image(size_t(n_pool), std::vector<uint8_t>(L.block_bytes()));
    auto put = [&](int32_t block, int64_t which, int64_t kvh, int64_t off, int64_t i, double v) {
      uint8_t* p = image[size_t(block)].data() + size_t(layer) * L.layer_bytes() + size_t(which * nkv + kvh) * L.head_bytes() +
                   size_t(off * hd + i) * es;
      if (a.dt == DType::kF16) {
        const uint16_t h = half_bits(v);
        std::memcpy(p, &h, 2);
      } else {
        const float f = float(v);
        std::memcpy(p, &f, 4);
      }
    };
    for (auto& img : image) {
      if (a.dt == DType::kF16) {
        const uint16_t h = half_bits(kGarbage);
        for (size_t i = 0; i < img.size(); i += 2) std::memcpy(&img[i], &h, 2);
      } else {
        for (size_t i = 0; i < img.size(); i += 4) std::memcpy(&img[i], &kGarbage, 4);
      }
    }
    // Reference cache: kc[seq][pos][kvh*hd + i], the stored values.
    auto stored = [&](float v) { return a.dt == DType::kF16 ? round_to_half(v) : double(v); };
    std::vector<std::vector<std::vector<double>>> kc(a.seqs.size()), vc(a.seqs.size());
    for (size_t si = 0; si < a.seqs.size(); ++si)
      for (int64_t p = 0; p < a.seqs[si].hist; ++p) {
        std::vector<double> kr(size_t(nkv * hd)), vr(size_t(nkv * hd));
        for (int64_t j = 0; j < nkv * hd; ++j) {
          kr[size_t(j)] = stored(randn(rng, 1)[0]);
          vr[size_t(j)] = stored(randn(rng, 1)[0]);
          const int32_t blk = tables[si][size_t(p / bs)];
          put(blk, 0, j / hd, p % bs, j % hd, kr[size_t(j)]);
          put(blk, 1, j / hd, p % bs, j % hd, vr[size_t(j)]);
        }
        kc[si].push_back(kr);
        vc[si].push_back(vr);
      }
    for (int64_t b = 0; b < n_pool; ++b) {
      mem.push_back(be.alloc(L.block_bytes()));
      blocks.push_back(mem.back().get());
      be.upload(blocks.back(), image[size_t(b)].data(), L.block_bytes());
    }
    KVView kv;
    kv.layout = L;
    kv.blocks = blocks.data();

    std::vector<Check> checks;
    std::vector<int64_t> len(a.seqs.size());
    for (size_t si = 0; si < a.seqs.size(); ++si) len[si] = a.seqs[si].hist;
    for (int64_t step = 0; step < n_steps; ++step) {
      BatchPlan plan;
      plan.id = uint64_t(step + 1);
      std::vector<int64_t> row_seq;  // sequence of each batch row
      // Rows of the batch: sequences in reverse order on odd steps (row0 is not the sequence index).
      std::vector<size_t> order(a.seqs.size());
      std::iota(order.begin(), order.end(), size_t(0));
      if (step % 2) std::reverse(order.begin(), order.end());
      for (size_t si : order) {
        const int64_t nr = step < int64_t(a.seqs[si].rows.size()) ? a.seqs[si].rows[size_t(step)] : 0;
        if (nr == 0) continue;
        AttnSeq S;
        S.row0 = plan.n_tokens();
        S.n_rows = nr;
        S.pos0 = len[si];
        S.block_table = tables[si].data();
        S.n_blocks = int64_t(tables[si].size());
        plan.seqs.push_back(S);
        for (int64_t i = 0; i < nr; ++i) {
          const int64_t p = len[si] + i;
          plan.tokens.push_back(0);
          plan.positions.push_back(int32_t(p));
          plan.slots.push_back(int64_t(tables[si][size_t(p / bs)]) * bs + p % bs);
          row_seq.push_back(int64_t(si));
        }
      }
      const int64_t T = plan.n_tokens();
      const std::vector<float> q = randn(rng, size_t(T * H * hd), 1.5), k = randn(rng, size_t(T * nkv * hd)),
                               v = randn(rng, size_t(T * nkv * hd));
      // Reference: the new rows into the cache, then causal attention per row and head.
      for (int64_t r = 0; r < T; ++r) {
        const size_t si = size_t(row_seq[size_t(r)]);
        std::vector<double> kr(size_t(nkv * hd)), vr(size_t(nkv * hd));
        for (int64_t j = 0; j < nkv * hd; ++j) {
          kr[size_t(j)] = stored(k[size_t(r * nkv * hd + j)]);
          vr[size_t(j)] = stored(v[size_t(r * nkv * hd + j)]);
        }
        kc[si].push_back(kr);
        vc[si].push_back(vr);
      }
      std::vector<double> ref(size_t(T * H * hd));
      int64_t max_keys = 0;
      for (const AttnSeq& S : plan.seqs) {
        const size_t si = size_t(row_seq[size_t(S.row0)]);
        for (int64_t i = 0; i < S.n_rows; ++i) {
          const int64_t r = S.row0 + i, visible = S.pos0 + i + 1;
          max_keys = std::max(max_keys, visible);
          for (int64_t h = 0; h < H; ++h) {
            const int64_t kvh = h / group;
            std::vector<double> sc(static_cast<size_t>(visible));
            double mx = -1e300;
            for (int64_t j = 0; j < visible; ++j) {
              double d = 0;
              for (int64_t c = 0; c < hd; ++c) d += double(q[size_t(r * H * hd + h * hd + c)]) * kc[si][size_t(j)][size_t(kvh * hd + c)];
              sc[size_t(j)] = d / std::sqrt(double(hd));
              mx = std::max(mx, sc[size_t(j)]);
            }
            double sum = 0;
            for (auto& e : sc) sum += (e = std::exp(e - mx));
            for (int64_t c = 0; c < hd; ++c) {
              double o = 0;
              for (int64_t j = 0; j < visible; ++j) o += sc[size_t(j)] * vc[si][size_t(j)][size_t(kvh * hd + c)];
              ref[size_t(r * H * hd + h * hd + c)] = o / sum;
            }
          }
        }
      }
      for (size_t si = 0; si < a.seqs.size(); ++si)
        len[si] += step < int64_t(a.seqs[si].rows.size()) ? a.seqs[si].rows[size_t(step)] : 0;

      Dev dq = dev_upload(be, q, T, H * hd), dk = dev_upload(be, k, T, nkv * hd), dv = dev_upload(be, v, T, nkv * hd);
      Dev dout = dev_upload(be, std::vector<float>(size_t(T * H * hd), 12345.f), T, H * hd);
      be.attention(layer, dq.view, dk.view, dv.view, kv, plan, H, dout.view);
      // The CUDA backend attends the rows of sequences with 16 new rows or more (its
      // kPrefillMinRows) on tensor cores with q, k, v and the softmax weights rounded to fp16
      // (unit roundoff 2^-11): NMSE ≤ 16·u16², still far below an off-by-one mask's ~1e-4.
      bool tc = be.device() == Device::kCuda && (hd == 64 || hd == 128);
      if (tc) {
        tc = false;
        for (const AttnSeq& S : plan.seqs) tc = tc || S.n_rows >= 16;
      }
      const double u16 = 1.0 / 2048;
      checks.push_back({cat("step ", step + 1, " (T ", T, ", keys <= ", max_keys, tc ? ", fp16 tensor cores)" : ")"),
                        "nmse", nmse(download(be, dout.view), ref),
                        tc ? 16 * u16 * u16 : 64.0 * double(hd + max_keys) * kU2});
    }
    return checks;
  });
}

void add_attention_cases() {
  // mix: a prefill from 0, decodes on a held cache, a sequence that sits out a step and one that
  // joins later; long: 70 new rows on a held cache (more than one block of query rows) plus a decode.
  const std::vector<AttnSeqSpec> mix = {{0, {13, 1, 1}, {}}, {21, {1, 1, 4}, {}}, {5, {9, 0, 1}, {}}, {0, {0, 6, 1}, {}}};
  const std::vector<AttnSeqSpec> lng = {{10, {70, 1}, {}}, {3, {1, 1}, {}}};
  for (DType dt : {DType::kF32, DType::kF16})
    for (auto [nh, nkv] : {std::pair<int64_t, int64_t>{6, 2}, {4, 4}})
      for (int64_t bs : {1, 16, 7}) {
        add_attention_case({"mix", nh, nkv, 64, bs, dt, mix, 0});
        add_attention_case({"long", nh, nkv, 64, bs, dt, lng, 0});
      }
  for (DType dt : {DType::kF32, DType::kF16}) {
    add_attention_case({"mix", 6, 2, 128, 16, dt, mix, 0});
    add_attention_case({"mix", 4, 4, 128, 7, dt, mix, 0});
  }
  // prefill: long prompts from 0 and on a held cache (several 64-row query tiles and 64-key tiles,
  // ragged ends), next to decode rows and a 20-row chunk in the same steps.
  const std::vector<AttnSeqSpec> pre = {{0, {300, 1}, {}}, {37, {65, 2}, {}}, {5, {1, 20}, {}}, {0, {16, 0}, {}}};
  for (DType dt : {DType::kF32, DType::kF16}) {
    add_attention_case({"prefill", 8, 2, 128, 16, dt, pre, 0});
    add_attention_case({"prefill", 4, 4, 64, 7, dt, pre, 0});
  }
  // The brief's table: blocks 5, 2, 9 (and 7, 0) of a pool of 10.
  add_attention_case({"blocks_5_2_9", 6, 2, 64, 16, DType::kF32, {{20, {10, 1}, {5, 2, 9}}, {3, {1, 12}, {7, 0}}}, 10});
  add_attention_case({"blocks_5_2_9", 6, 2, 64, 16, DType::kF16, {{20, {10, 1}, {5, 2, 9}}, {3, {1, 12}, {7, 0}}}, 10});
}

// ============================================================================================
// Hessian accumulator: H = 2/n Σ x xᵀ, n counting sequences (quant/hessian.h)
// ============================================================================================
// Batch b of s_b sequences of T_b tokens: H ← H·n/(n+s_b), n ← n+s_b, H ← H + 2/n·X_bᵀX_b, which
// telescopes to H = 2/n_total · Σ over all tokens x xᵀ. The reference sums in double. A second
// round after take() checks the reset. Limit: fp32 sums over R tokens plus one rescale per batch:
// NMSE ≤ 64·(R + batches)·u². Scaling by tokens instead of sequences, a missing rescale or an
// unmirrored triangle is O(1).

void add_hessian_cases() {
  struct P { int64_t K; std::vector<std::pair<int64_t, int64_t>> batches; };  // (samples, T)
  for (const P& p : {P{96, {{2, 300}, {1, 300}, {3, 300}}}, P{300, {{1, 64}, {4, 64}, {2, 64}}}, P{37, {{5, 7}}},
                     P{520, {{2, 100}, {2, 100}}}}) {
    std::string shape = cat("K ", p.K, " batches (samples x T)");
    int64_t R = 0;
    for (const auto& b_ : p.batches) {
const auto s = std::get<0>(b_); const auto T = std::get<1>(b_);
      shape += cat(" ", s, "x", T);
      R += s * T;
    }
    const std::string name = cat("hessian_K", p.K, "_batches", p.batches.size(), "_rows", R);
    add_case("hessian", name, shape, [=](Backend& be) {
      std::mt19937 rng(seed_of(name));
      const int64_t K = p.K;
      std::vector<Check> checks;
      auto acc = be.hessian(K);
      for (int round = 0; round < 2; ++round) {
        std::vector<double> ref(size_t(K * K), 0.0);
        int64_t n = 0;
        for (const auto& b_ : p.batches) {
const auto s = std::get<0>(b_); const auto T = std::get<1>(b_);
          // Columns with different means and scales, as real activations have.
          std::vector<float> x = randn(rng, size_t(s * T * K));
          for (int64_t r = 0; r < s * T; ++r)
            for (int64_t c = 0; c < K; ++c) x[size_t(r * K + c)] = x[size_t(r * K + c)] * float(1 + c % 5) + float(c % 3) * 0.5f;
          for (int64_t r = 0; r < s * T; ++r)
            for (int64_t i = 0; i < K; ++i)
              for (int64_t j = 0; j < K; ++j) ref[size_t(i * K + j)] += double(x[size_t(r * K + i)]) * x[size_t(r * K + j)];
          n += s;
          Dev dx = dev_upload(be, x, s * T, K);
          acc->add(dx.view, s);
        }
        for (auto& h : ref) h *= 2.0 / double(n);
        const std::vector<float> H = acc->take();
        checks.push_back({cat("round ", round + 1), "nmse", nmse(H, ref), 64.0 * double(R + int64_t(p.batches.size())) * kU2});
      }
      return checks;
    });
  }
}

// ============================================================================================
// Registration: every case × every backend, as named tests
// ============================================================================================

std::vector<std::string> env_list(const char* var) {
  std::vector<std::string> out;
  const char* v = std::getenv(var);
  if (!v) return out;
  std::string s(v), cur;
  for (char c : s + ",") {
    if (c == ',' || c == ' ') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  return out;
}

bool selected(const std::vector<std::string>& filter, const std::string& name) {
  if (filter.empty()) return true;
  for (const auto& f : filter)
    if (name.compare(0, f.size(), f) == 0) return true;
  return false;
}

class BackendOpTest : public ::testing::Test {
 public:
  BackendOpTest(const Case* c, const BackendEntry* b) : c_(c), b_(b) {}
  void TestBody() override {
    const std::string who = cat(c_->op, " ", c_->shape, " | ", b_->name);
    if (std::string why = b_->unavailable(); !why.empty()) {
      std::printf("  %s: skipped (%s)\n", who.c_str(), why.c_str());
      GTEST_SKIP() << b_->name << ": " << why;
    }
    std::string why;
    Backend* be = backend_for(*b_, &why);
    if (!be) {
      std::printf("  %s: skipped (%s)\n", who.c_str(), why.c_str());
      GTEST_SKIP() << why;
    }
    b_->enter();
    g_entry = b_;
    struct Leave {
      const BackendEntry* b;
      ~Leave() {
        b->leave();
        g_entry = nullptr;
      }
    } leave{b_};
    std::vector<Check> checks;
    try {
      checks = c_->run(*be);
    } catch (const Unsupported& u) {
      std::printf("  %s: not supported (%s)\n", who.c_str(), u.why.c_str());
      GTEST_SKIP() << "not supported by " << b_->name << ": " << u.why;
    }
    ASSERT_FALSE(checks.empty());
    for (const Check& k : checks) {
      const std::string line = cat(who, " [", be->name(), "] | ", k.what, ": ", k.metric, " = ", k.err, " (limit ", k.limit, ") ",
                                   k.ok() ? "OK" : "FAIL");
      std::printf("  %s\n", line.c_str());
      EXPECT_TRUE(k.ok()) << line;
    }
  }

 private:
  const Case* c_;
  const BackendEntry* b_;
};

const bool registered = [] {
  add_memory_cases();
  add_rms_norm_cases();
  add_rope_cases();
  add_rope_apply_cases();
  add_elementwise_cases();
  add_gather_embed_cases();
  add_dense_linear_cases();
  add_gptq_linear_cases();
  add_fusion_cases();
  add_attention_cases();
  add_hessian_cases();
  const auto ops = env_list("GPTQ_OPS"), bes = env_list("GPTQ_BACKENDS");
  for (const Case& c : registry()) {
    if (!selected(ops, c.op)) continue;
    for (const BackendEntry& b : backends()) {
      if (!selected(bes, b.name)) continue;
      const std::string test = c.name + "/" + b.name;
      ::testing::RegisterTest("BackendOps", test.c_str(), nullptr, nullptr, __FILE__, __LINE__,
                              [c = &c, b = &b]() -> ::testing::Test* { return new BackendOpTest(c, b); });
    }
  }
  return true;
}();

}  // namespace
