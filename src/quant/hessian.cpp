#include "quant/hessian.h"

#include <algorithm>
#include <iterator>

#include "core/thread_pool.h"
#include "gptq/error.h"
#include "quant/blas_threads.h"

namespace gptq::quant {

namespace {

// Work is split into tiles of the upper triangle (each one single-threaded sgemm). The tile edge
// is the largest of these that still gives every thread several tiles; below 128 sgemm loses
// too much efficiency, so small K instead also splits the tokens (see add_batch).
constexpr int64_t kTileEdges[] = {512, 384, 256, 128};
constexpr int64_t kMinChunkRows = 256;                // tokens per chunk when splitting tokens
constexpr int64_t kScratchBudget = int64_t(1) << 28;  // bytes of per-chunk partial Hessians

int64_t pick_tile(int64_t K, int64_t threads) {
  for (int64_t e : kTileEdges) {
    const int64_t nb = (K + e - 1) / e;
    if (nb * (nb + 1) / 2 >= 4 * threads) return e;
  }
  return kTileEdges[std::size(kTileEdges) - 1];
}

}  // namespace

HessianAccumulator::HessianAccumulator(ThreadPool& pool, int64_t K) : pool_(pool), K_(K), H_(size_t(K * K), 0.f) {
  GPTQ_ASSERT(K > 0);
}

void HessianAccumulator::add_batch(const float* x, int64_t samples, int64_t T) {
  GPTQ_ASSERT(samples > 0 && T > 0);
  const int64_t rows = samples * T, K = K_;
  const float beta = float(double(nsamples_) / double(nsamples_ + samples));
  nsamples_ += samples;
  const float alpha = float(2.0 / double(nsamples_));

  const int64_t threads = pool_.size();
  const int64_t tile = pick_tile(K, threads), nb = (K + tile - 1) / tile;
  std::vector<std::pair<int64_t, int64_t>> tiles;  // (row block, col block), row <= col
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t j = i; j < nb; ++j) tiles.emplace_back(i, j);
  // Too few tiles for the threads (small K): also cut the tokens into chunks; chunk 0 goes into H,
  // the others into partial Hessians that are summed into H afterwards.
  int64_t chunks = 1;
  if (int64_t(tiles.size()) < 2 * threads) {
    chunks = (2 * threads + int64_t(tiles.size()) - 1) / int64_t(tiles.size());
    chunks = std::min({chunks, rows / kMinChunkRows, kScratchBudget / (K * K * 4) + 1});
    chunks = std::max<int64_t>(chunks, 1);
  }
  if (chunks > 1) scratch_.resize(size_t((chunks - 1) * K * K));

  // Diagonal tiles (half cost) are spread through the list, so contiguous ranges roughly balance.
  const int64_t n_items = int64_t(tiles.size()) * chunks;
  BlasThreadsScope one_blas_thread(1);
  pool_.parallel_for(0, size_t(n_items), [&](size_t a, size_t b) {
    for (int64_t item = int64_t(a); item < int64_t(b); ++item) {
      const int64_t c = item / int64_t(tiles.size());
      const auto [bi, bj] = tiles[size_t(item % int64_t(tiles.size()))];
      const int64_t i0 = bi * tile, j0 = bj * tile;
      const int64_t mi = std::min(tile, K - i0), mj = std::min(tile, K - j0);
      const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
      float* dst = c == 0 ? H_.data() : scratch_.data() + (c - 1) * K * K;
      // dst[i0:i0+mi, j0:j0+mj] = (c == 0 ? beta * H : 0) + alpha * X[r0:r1, i0:]^T X[r0:r1, j0:]
      // (diagonal tiles: upper triangle only, half the flops)
      if (bi == bj)
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, int(mi), int(r1 - r0), alpha, x + r0 * K + i0, int(K),
                    c == 0 ? beta : 0.f, dst + i0 * K + i0, int(K));
      else
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(mi), int(mj), int(r1 - r0), alpha, x + r0 * K + i0,
                    int(K), x + r0 * K + j0, int(K), c == 0 ? beta : 0.f, dst + i0 * K + j0, int(K));
    }
  });
  if (chunks > 1) {
    pool_.parallel_for(0, size_t(K), [&](size_t i0, size_t i1) {
      for (int64_t i = int64_t(i0); i < int64_t(i1); ++i)
        for (int64_t c = 1; c < chunks; ++c) {
          const float* src = scratch_.data() + (c - 1) * K * K + i * K;
          float* h = H_.data() + i * K;
          for (int64_t j = i; j < K; ++j) h[j] += src[j];
        }
    });
  }
}

std::vector<float> HessianAccumulator::take() {
  const int64_t K = K_;
  // Mirror the upper triangle in 64x64 blocks so that the transposed writes stay in cache.
  constexpr int64_t kB = 64;
  float* h = H_.data();
  pool_.parallel_for(0, size_t((K + kB - 1) / kB), [&](size_t b0, size_t b1) {
    for (int64_t jb = int64_t(b0) * kB; jb < int64_t(b1) * kB && jb < K; jb += kB)  // lower rows j
      for (int64_t ib = 0; ib <= jb; ib += kB)                                        // source rows i
        for (int64_t j = jb; j < std::min(K, jb + kB); ++j)
          for (int64_t i = ib; i < std::min(j, ib + kB); ++i) h[j * K + i] = h[i * K + j];
  });
  std::vector<float> out(static_cast<size_t>(K * K), 0.f);
  out.swap(H_);
  std::vector<float>().swap(scratch_);
  nsamples_ = 0;
  return out;
}

}  // namespace gptq::quant
