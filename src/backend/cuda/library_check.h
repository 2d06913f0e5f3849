// Status checks of the CUDA libraries (cuBLAS, cuSOLVER): a failing call is a programmer bug, as
// CUDA_CHECK's are (DESIGN.md: abort with file:line).
#pragma once

#include <cublas_api.h>
#include <cusolver_common.h>

#include "gptq/error.h"

#define CUBLAS_CHECK(expr)                                                                         \
  do {                                                                                             \
    const cublasStatus_t st_ = (expr);                                                             \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                              \
      ::gptq::assert_fail(#expr, __FILE__, __LINE__, ::gptq::cat("cuBLAS status ", int(st_)));    \
  } while (0)

#define CUSOLVER_CHECK(expr)                                                                       \
  do {                                                                                             \
    const cusolverStatus_t st_ = (expr);                                                           \
    if (st_ != CUSOLVER_STATUS_SUCCESS)                                                            \
      ::gptq::assert_fail(#expr, __FILE__, __LINE__, ::gptq::cat("cuSOLVER status ", int(st_)));  \
  } while (0)
