// The SIMD qgemm kernels, written once over a small vector vocabulary and compiled per ISA:
// qgemm_avx2.cpp / qgemm_avx512.cpp open their own namespace, define QGEMM_TARGET (a
// __attribute__((target(...)))) and the primitives below, and include this file. Every kernel
// function carries QGEMM_TARGET; nothing else does, so the std templates they use are instantiated
// for baseline x86-64 (a `#pragma GCC target` region would emit AVX copies of e.g.
// std::vector members that the linker may then pick for baseline callers).
//
// Primitives the includer defines (kLanes = floats per vector):
//   vf vzero(); vf vbcast(float); vf vload_h(const uint16_t*)  (kLanes fp16 -> fp32)
//   vi vload_i(const uint32_t*); vi vset1_i(uint32_t); vi vand(vi, vi); vi vor(vi, vi)
//   template <int S> vi vsrl(vi); template <int S> vi vsll(vi); vf vcvt(vi)
//   vf vfma(a, b, c) = a*b + c; vf vfnma(a, b, c) = c - a*b; vf vadd, vsub, vmul
//   vf vload_f(const float*); void vstore(float*, vf)
//
// Layout (see qgemm.h): a tile is 32 output columns; its codes are [words_per_col][32] uint32,
// so a packing unit (1 word, or 3 words for 3 bits) of all 32 columns is 32*unit_words
// consecutive words, and one SIMD vector covers kLanes columns of one word row.
//
// Decode (direct) kernel, per tile and group: for a sub-tile of SV vectors and TT rows of x,
// acc[t][v][j % NA] += x[t][k] * q[k]  (TT*SV*NA ~ 8 accumulators, so the FMA dependency chains
// never limit), then y[t][v] += s[v] * (sum(acc) - z[v] * xsum[t][g]). Codes are decoded with
// one shift + and (+ shift/or when a 3-bit value straddles words) + int->float convert each;
// shift counts are template constants. y lives in a [TT][32] stack array (flushed once per group).
// Rows of x go in passes of 4 rows, then the rest; each pass decodes the tile's codes again.
// (Passes of 8 rows measured slower on Zen 2: one vector wide, they need twice the x broadcasts.)
//
// Prefill kernel: per thread, column blocks of kNbTiles tiles and K blocks of ~512 values are
// dequantized to fp32 ([kb, 128] row-major, W^T layout) and multiplied with cblas_sgemm,
// accumulating into y (beta = 1 after the first K block).

static_assert(32 % kLanes == 0, "a tile of 32 columns must be whole vectors");

template <int BITS>
struct Unit {
  static constexpr int kVals = BITS == 3 ? 32 : 32 / BITS;  // values per packing unit
  static constexpr int kWords = BITS == 3 ? 3 : 1;          // words per packing unit
};

// Code J (0 <= J < kVals) of a packing unit held in w[0..kWords).
template <int BITS, int J>
QGEMM_TARGET inline vi extract(const vi* w) {
  constexpr int bit = J * BITS, r = bit >> 5, sh = bit & 31;
  vi v = vsrl<sh>(w[r]);
  if constexpr (sh + BITS > 32) v = vor(v, vsll<32 - sh>(w[r + 1]));
  if constexpr (sh + BITS == 32) return v;  // the shift already cleared the high bits
  return vand(v, vset1_i((1u << BITS) - 1));
}

template <int BITS, int TT, int SV, int NA, int J>
QGEMM_TARGET inline void fma_code(const vi (&w)[SV][Unit<BITS>::kWords], const float* xk, int64_t ldx,
                     vf (&acc)[TT][SV][NA]) {
  vf q[SV];
  for (int v = 0; v < SV; ++v) q[v] = vcvt(extract<BITS, J>(w[v]));
  for (int t = 0; t < TT; ++t) {
    const vf xv = vbcast(xk[t * ldx + J]);
    for (int v = 0; v < SV; ++v) acc[t][v][J % NA] = vfma(xv, q[v], acc[t][v][J % NA]);
  }
}

template <int BITS, int TT, int SV, int NA, int... J>
QGEMM_TARGET inline void fma_unit(std::integer_sequence<int, J...>, const vi (&w)[SV][Unit<BITS>::kWords], const float* xk,
                     int64_t ldx, vf (&acc)[TT][SV][NA]) {
  (fma_code<BITS, TT, SV, NA, J>(w, xk, ldx, acc), ...);
}

// yt: [TT][32] results of one tile for TT rows of x (xp, xsum already offset to the first row).
template <int BITS, int TT>
QGEMM_TARGET void direct_tile(const PreparedQuantMatrix& m, int64_t tile, const float* xp, const float* xsum, float* yt) {
  constexpr int V = Unit<BITS>::kVals, NW = Unit<BITS>::kWords, NV = 32 / kLanes;
  // Sub-tile width and accumulators per (row, vector): about 8 independent FMA chains, enough to
  // hide the FMA latency (4 cycles, 2 per cycle) without spilling the 16 AVX2 registers.
  constexpr int SV = NV < 8 / TT ? NV : (8 / TT > 0 ? 8 / TT : 1);
  constexpr int NA = TT * SV >= 8 ? 1 : 8 / (TT * SV);
  const int64_t K = m.K, ng = m.n_groups;
  const uint32_t* qt = m.qweight.data() + tile * m.words_per_col * 32;
  const uint16_t* st = m.scales.data() + tile * ng * 32;
  const uint16_t* zt = m.zeros.data() + tile * ng * 32;
  for (int i = 0; i < TT * 32; ++i) yt[i] = 0.f;
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t u0 = m.group_begin[size_t(g)] / V, u1 = m.group_begin[size_t(g + 1)] / V;
    if (u0 == u1) continue;
    for (int v0 = 0; v0 < NV; v0 += SV) {
      vf acc[TT][SV][NA];
      for (int t = 0; t < TT; ++t)
        for (int v = 0; v < SV; ++v)
          for (int a = 0; a < NA; ++a) acc[t][v][a] = vzero();
      const uint32_t* p = qt + u0 * NW * 32 + v0 * kLanes;
      const float* xk = xp + u0 * V;
      for (int64_t u = u0; u < u1; ++u, p += NW * 32, xk += V) {
        vi w[SV][NW];
        for (int v = 0; v < SV; ++v)
          for (int r = 0; r < NW; ++r) w[v][r] = vload_i(p + r * 32 + v * kLanes);
        fma_unit<BITS, TT, SV, NA>(std::make_integer_sequence<int, V>{}, w, xk, K, acc);
      }
      for (int v = 0; v < SV; ++v) {
        const int col = (v0 + v) * kLanes;
        const vf s = vload_h(st + g * 32 + col), z = vload_h(zt + g * 32 + col);
        for (int t = 0; t < TT; ++t) {
          vf a = acc[t][v][0];
          for (int i = 1; i < NA; ++i) a = vadd(a, acc[t][v][i]);
          const vf dot = vfnma(z, vbcast(xsum[t * ng + g]), a);  // sum_k x (q - z)
          vstore(yt + t * 32 + col, vfma(s, dot, vload_f(yt + t * 32 + col)));
        }
      }
    }
  }
}

template <int BITS, int... J>
QGEMM_TARGET inline void dequant_unit(std::integer_sequence<int, J...>, const vi* w, vf s, vf z, float* out, int64_t ldo) {
  ((vstore(out + J * ldo, vmul(vsub(vcvt(extract<BITS, J>(w)), z), s))), ...);
}

// out[(u - u0) * V + j][0..32) = W^T rows of one tile for units [u0, u1); row stride ldo floats.
template <int BITS>
QGEMM_TARGET void dequant_tile(const PreparedQuantMatrix& m, int64_t tile, int64_t u0, int64_t u1, float* out, int64_t ldo) {
  constexpr int V = Unit<BITS>::kVals, NW = Unit<BITS>::kWords, NV = 32 / kLanes;
  const int64_t ng = m.n_groups;
  const uint32_t* qt = m.qweight.data() + tile * m.words_per_col * 32;
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t g = m.unit_group[size_t(u)];
    for (int v = 0; v < NV; ++v) {
      const vf s = vload_h(m.scales.data() + (tile * ng + g) * 32 + v * kLanes);
      const vf z = vload_h(m.zeros.data() + (tile * ng + g) * 32 + v * kLanes);
      vi w[NW];
      for (int r = 0; r < NW; ++r) w[r] = vload_i(qt + (u * NW + r) * 32 + v * kLanes);
      dequant_unit<BITS>(std::make_integer_sequence<int, V>{}, w, s, z, out + (u - u0) * V * ldo + v * kLanes,
                         ldo);
    }
  }
}

constexpr int64_t kMaxTT = 4;  // rows of x per decode pass

template <int BITS>
QGEMM_TARGET void run_direct(const QgemmCall& c, int64_t tile0, int64_t tile1) {
  const PreparedQuantMatrix& m = *c.w;
  const int64_t K = m.K, N = m.N, ng = m.n_groups;
  alignas(64) float yt[kMaxTT * 32];
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t n0 = tile * 32, nc = std::min<int64_t>(32, N - n0);
    for (int64_t t0 = 0; t0 < c.T; t0 += kMaxTT) {
      const int64_t tt = std::min(kMaxTT, c.T - t0);
      const float* xp = c.xp + t0 * K;
      const float* xs = c.xsum + t0 * ng;
      switch (tt) {
        case 1: direct_tile<BITS, 1>(m, tile, xp, xs, yt); break;
        case 2: direct_tile<BITS, 2>(m, tile, xp, xs, yt); break;
        case 3: direct_tile<BITS, 3>(m, tile, xp, xs, yt); break;
        default: direct_tile<BITS, 4>(m, tile, xp, xs, yt); break;
      }
      for (int64_t t = 0; t < tt; ++t)
        for (int64_t j = 0; j < nc; ++j) c.y[(t0 + t) * N + n0 + j] = yt[t * 32 + j];
    }
  }
}

template <int BITS>
QGEMM_TARGET void run_prefill(const QgemmCall& c, int64_t tile0, int64_t tile1) {
  constexpr int64_t V = Unit<BITS>::kVals;
  constexpr int64_t kNbTiles = 4;                       // 128 columns per sgemm
  constexpr int64_t kKbUnits = (512 + V - 1) / V;       // ~512 K values per sgemm
  const PreparedQuantMatrix& m = *c.w;
  const int64_t K = m.K, N = m.N, n_units = K / V;
  thread_local std::vector<float> buf;  // [kKbUnits*V, kNbTiles*32]
  buf.resize(size_t(kKbUnits * V * kNbTiles * 32));
  for (int64_t tb = tile0; tb < tile1; tb += kNbTiles) {
    const int64_t te = std::min(tile1, tb + kNbTiles);
    const int64_t ldb = (te - tb) * 32, n0 = tb * 32, nc = std::min(N, te * 32) - n0;
    for (int64_t ub = 0; ub < n_units; ub += kKbUnits) {
      const int64_t ue = std::min(n_units, ub + kKbUnits);
      for (int64_t tile = tb; tile < te; ++tile) dequant_tile<BITS>(m, tile, ub, ue, buf.data() + (tile - tb) * 32, ldb);
      // y[:, n0:n0+nc] (+)= xp[:, ub*V : ue*V] * Wt[ub*V : ue*V, 0:nc]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(c.T), int(nc), int((ue - ub) * V), 1.f,
                  c.xp + ub * V, int(K), buf.data(), int(ldb), ub == 0 ? 0.f : 1.f, c.y + n0, int(N));
    }
  }
}

template <int BITS>
void run_bits(const QgemmCall& c) {
  const bool direct = c.T <= c.max_direct_t;
  const size_t grain = direct ? 1 : 4;
  c.pool->parallel_for(
      0, size_t(c.w->n_tiles),
      [&](size_t t0, size_t t1) {
        if (direct)
          run_direct<BITS>(c, int64_t(t0), int64_t(t1));
        else
          run_prefill<BITS>(c, int64_t(t0), int64_t(t1));
      },
      grain);
}

inline void run(const QgemmCall& c) {
  GPTQ_ASSERT(c.w->unit_aligned, "SIMD qgemm needs unit-aligned groups");
  switch (c.w->bits) {
    case 2: run_bits<2>(c); break;
    case 3: run_bits<3>(c); break;
    case 4: run_bits<4>(c); break;
    case 8: run_bits<8>(c); break;
    default: GPTQ_ASSERT(false, "bits ", c.w->bits);
  }
}
