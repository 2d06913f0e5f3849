// Fixed-order kernels: every output is a fixed function of the inputs, bit-identical for any
// thread count, any work split (tiles, cache blocks, pool == nullptr) and any SIMD level (scalar,
// AVX2+FMA, AVX-512). The calibration math (Hessian, GPTQ solver) uses them so that
// `gptq quantize` writes the same bytes on every x86-64 CPU with any -t, which OpenBLAS cannot
// promise (its kernels differ by CPU type and its tiles follow the thread count).
//
// The summation order is the definition (the SIMD kernels are tested bit-for-bit against the
// scalar reference, which spells it out with std::fma):
//
//  dot8(a, b, K)  (gemm_nt_fixed, syrk_upper_fixed)
//    8 lane partial sums starting at +0: lane l accumulates the elements k = l, l+8, l+16, ... < K
//    in increasing k, acc_l = fma(a[k], b[k], acc_l) (so the K % 8 tail goes to lanes 0..K%8-1;
//    the other lanes are left exactly as they are). Then the fixed tree
//      s = ((acc0 + acc1) + (acc2 + acc3)) + ((acc4 + acc5) + (acc6 + acc7)).
//  epilogue (all float kernels)
//    r = alpha * s;  C = (beta == 0) ? r : fma(beta, C, r).   beta == 0 never reads C (NaN ok).
//  gemm_nn_fixed
//    s = +0; s = fma(A[m,k], B[k,n], s) for k = 0..K-1 in increasing k; then the epilogue. Lanes
//    are independent outputs, so the SIMD width cannot change any bit.
//
// Kernels: AVX-512 keeps two outputs per zmm for dot8 (lanes 0-7: output n, 8-15: output n+1,
// A's 8 elements broadcast to both halves), a 6x8 register block; AVX2 one ymm per output, 6x2.
// B is packed per tile into row pairs interleaved in chunks of 8 (zero padded). gemm_nn: 6 rows
// x 4 zmm (AVX-512) or 6 x 2 ymm (AVX2), broadcast A, vector B, masked column tails. Output tiles
// (96 x 64 for dot8, 96 x 256 for gemm_nn) go to the pool, dynamically scheduled; each output
// is computed whole by one thread, so the split cannot change it. A CPU without AVX2+FMA (or force_simd(kScalar)) runs the scalar reference.
// Not yet: k-blocking for very long dots (A's 96-row tile should fit L2: K <~ 4096 floats), and
// a batched reduction epilogue (costs ~30% at K = 384).
// Limits: sizes are int64; lda/ldb/ldc >= the row length used; no aliasing of C with A or B.
#pragma once

#include <cstdint>

#include "core/thread_pool.h"

namespace gptq::cpu {

// C[m,n] = alpha * dot8(A[m, 0:K], B[n, 0:K]) + beta * C[m,n]   (see the order above)
// A: [M, K] row-major (lda), B: [N, K] row-major (ldb), C: [M, N] row-major (ldc).
// pool == nullptr: runs on the calling thread (may be called from inside a pool task).
void gemm_nt_fixed(ThreadPool* pool, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// The upper triangle (i <= j) of C[i,j] = alpha * dot8(A[i,:], A[j,:]) + beta * C[i,j]; entries
// below the diagonal are neither read nor written. A: [N, K] row-major (lda), C: [N, N] (ldc).
// Gives exactly the bits gemm_nt_fixed(A, A) gives on those entries, in about half the time.
void syrk_upper_fixed(ThreadPool* pool, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, float beta,
                      float* C, int64_t ldc);

// C[m,n] = alpha * sum_k A[m,k] * B[k,n] + beta * C[m,n]   (increasing k, fma; see above)
// A: [M, K] row-major (lda), B: [K, N] row-major (ldb), C: [M, N] row-major (ldc).
void gemm_nn_fixed(ThreadPool* pool, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* B, int64_t ldb, float beta, float* C, int64_t ldc);

// Double precision, for the GPTQ solver's factorization.
//
// cholesky_lower_fixed: A = L L^T in place. a: [n, n] row-major (lda); the lower triangle is read
// and replaced by L; the strict upper triangle is scratch (left with garbage). Every element's
// update order is the unblocked one: a[i,j] = fma(-L[i,k], L[j,k], a[i,j]) for k = 0..j-1 in
// increasing k, then L[j,j] = sqrt(a[j,j]), L[i,j] = a[i,j] / L[j,j]. Blocked right-looking (64
// columns per step), the trailing update parallel over tiles. Returns false (a then undefined)
// when A is not positive definite (a pivot <= 0 or NaN).
bool cholesky_lower_fixed(ThreadPool* pool, int64_t n, double* a, int64_t lda);

// tri_lower_inverse_fixed: L -> X = L^-1 in place (lower triangle; the strict upper triangle is
// set to 0). Row i of X: X[i,i] = 1 / L[i,i]; for c < i, t = +0, t = fma(-L[i,k], X[k,c], t) for
// k = 64*floor(c/64) .. i-1 in increasing k (the terms with X[k,c] = 0, k < c, inside c's block
// of 64 columns are included), then X[i,c] = t / L[i,i]. Parallel over column blocks.
void tri_lower_inverse_fixed(ThreadPool* pool, int64_t n, double* a, int64_t lda);

}  // namespace gptq::cpu
