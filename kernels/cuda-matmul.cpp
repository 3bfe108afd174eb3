// cuBLASLt GEMMs of the forward pass. Row-major Y[T, OUT] = X[T, IN] @ W[IN, OUT] is,
// seen column-major, Y^T[OUT, T] = W^T[OUT, IN] @ X^T[IN, T] with no transposes, so the
// Hugging Face Conv1D layout feeds cuBLASLt as is; the bias (+ GELU) rides in the
// epilogue. The nn.Linear layout W[OUT, IN] (the Llama family, and the LM head) is the
// same product with A transposed. Descriptors and the heuristic's pick are cached per
// shape and type.
#include "kernels/cuda-kernels.hpp"

namespace infer::cuda {

struct matmul_runner::plan {
  int kind = 0;  // 0: Conv1D linear, 1: lm head (fp32 out), 2: nn.Linear
  dtype dt = dtype::f16;
  int M = 0, N = 0, K = 0, ldc = 0;
  bool gelu = false;
  bool bias = false;
  bool gelu_in_epilogue = false;  // else bias epilogue + gelu_forward
  bool bias_in_epilogue = false;  // kind 2: else a plain GEMM + bias_add_forward
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  plan* next = nullptr;

  ~plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
  }
};

matmul_runner::~matmul_runner() {
  while (plans_) {
    plan* n = plans_->next;
    delete plans_;
    plans_ = n;
  }
}

void matmul_runner::bind(cublasLtHandle_t handle, void* workspace, size_t workspace_bytes) {
  handle_ = handle;
  workspace_ = workspace;
  workspace_bytes_ = workspace_bytes;
}

#define INFER_LT_TRY(expr)                               \
  do {                                                   \
    cublasStatus_t s_ = (expr);                          \
    if (s_ != CUBLAS_STATUS_SUCCESS) return s_;          \
  } while (0)

namespace {

cublasStatus_t try_heuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t desc,
                             cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                             cublasLtMatrixLayout_t c, size_t ws, cublasLtMatmulAlgo_t& algo,
                             bool& found) {
  cublasLtMatmulPreference_t pref = nullptr;
  INFER_LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t res{};
  int n = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublasLtMatmulAlgoGetHeuristic(h, desc, a, b, c, c, pref, 1, &res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  found = st == CUBLAS_STATUS_SUCCESS && n > 0 && res.state == CUBLAS_STATUS_SUCCESS;
  if (found) algo = res.algo;
  // "not supported" is an answer (try another epilogue), not a failure.
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) st = CUBLAS_STATUS_SUCCESS;
  return st;
}

}  // namespace

matmul_runner::plan* matmul_runner::find_or_make(int kind, dtype dt, int M, int N, int K,
                                                 int ldc, bool gelu, bool bias,
                                                 cublasStatus_t& st) {
  for (plan* p = plans_; p; p = p->next)
    if (p->kind == kind && p->dt == dt && p->M == M && p->N == N && p->K == K && p->ldc == ldc &&
        p->gelu == gelu && p->bias == bias)
      return p;
  auto* p = new plan;
  p->kind = kind;
  p->dt = dt;
  p->bias = bias;
  p->M = M;
  p->N = N;
  p->K = K;
  p->ldc = ldc;
  p->gelu = gelu;
  auto fail = [&](cublasStatus_t s) -> plan* {
    st = s;
    delete p;
    return nullptr;
  };
  const cudaDataType_t in_t = dt == dtype::bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const cudaDataType_t out_t = kind == 1 ? CUDA_R_32F : in_t;
  if ((st = cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F)) !=
      CUBLAS_STATUS_SUCCESS)
    return fail(st);
  cublasOperation_t ta = kind == 0 ? CUBLAS_OP_N : CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  // A is stored [M x K] (Conv1D: W^T, ld M) or [K x M] (lm head, nn.Linear: W^T, ld K).
  if (kind == 0)
    st = cublasLtMatrixLayoutCreate(&p->a, in_t, M, K, M);
  else
    st = cublasLtMatrixLayoutCreate(&p->a, in_t, K, M, K);
  if (st != CUBLAS_STATUS_SUCCESS) return fail(st);
  if ((st = cublasLtMatrixLayoutCreate(&p->b, in_t, K, N, K)) != CUBLAS_STATUS_SUCCESS)
    return fail(st);
  if ((st = cublasLtMatrixLayoutCreate(&p->c, out_t, M, N, ldc)) != CUBLAS_STATUS_SUCCESS)
    return fail(st);

  bool found = false;
  if (kind == 0) {
    // Prefer GELU + bias in the epilogue; fall back to bias alone (GELU by our kernel).
    cublasLtEpilogue_t epi = gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
    if ((st = try_heuristic(handle_, p->desc, p->a, p->b, p->c, workspace_bytes_, p->algo,
                            found)) != CUBLAS_STATUS_SUCCESS)
      return fail(st);
    p->gelu_in_epilogue = gelu && found;
    if (!found && gelu) {
      epi = CUBLASLT_EPILOGUE_BIAS;
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
      if ((st = try_heuristic(handle_, p->desc, p->a, p->b, p->c, workspace_bytes_, p->algo,
                              found)) != CUBLAS_STATUS_SUCCESS)
        return fail(st);
    }
  } else if (kind == 2 && bias) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
    if ((st = try_heuristic(handle_, p->desc, p->a, p->b, p->c, workspace_bytes_, p->algo,
                            found)) != CUBLAS_STATUS_SUCCESS)
      return fail(st);
    p->bias_in_epilogue = found;
    if (!found) {
      epi = CUBLASLT_EPILOGUE_DEFAULT;
      cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
      if ((st = try_heuristic(handle_, p->desc, p->a, p->b, p->c, workspace_bytes_, p->algo,
                              found)) != CUBLAS_STATUS_SUCCESS)
        return fail(st);
    }
  } else {
    if ((st = try_heuristic(handle_, p->desc, p->a, p->b, p->c, workspace_bytes_, p->algo,
                            found)) != CUBLAS_STATUS_SUCCESS)
      return fail(st);
  }
  if (!found) return fail(CUBLAS_STATUS_NOT_SUPPORTED);
  p->next = plans_;
  plans_ = p;
  st = CUBLAS_STATUS_SUCCESS;
  return p;
}

cublasStatus_t matmul_runner::matmul_forward(half* out, const half* in, const half* w,
                                             const half* bias, int T, int IN, int OUT, bool gelu,
                                             cudaStream_t stream) {
  if (T <= 0) return CUBLAS_STATUS_SUCCESS;
  if (!handle_ || !bias) return CUBLAS_STATUS_INVALID_VALUE;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  plan* p = find_or_make(0, dtype::f16, OUT, T, IN, OUT, gelu, true, st);
  if (!p) return st;
  INFER_LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                              sizeof(bias)));
  const float alpha = 1.f, beta = 0.f;
  INFER_LT_TRY(cublasLtMatmul(handle_, p->desc, &alpha, w, p->a, in, p->b, &beta, out, p->c, out,
                              p->c, &p->algo, workspace_, workspace_bytes_, stream));
  if (gelu && !p->gelu_in_epilogue) {
    if (gelu_forward(out, int64_t(T) * OUT, stream) != cudaSuccess)
      return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t matmul_runner::lm_head_forward(float* logits, int ld, const void* x,
                                              const void* wte, int N, int C, int V, dtype dt,
                                              cudaStream_t stream) {
  if (N <= 0) return CUBLAS_STATUS_SUCCESS;
  if (!handle_) return CUBLAS_STATUS_INVALID_VALUE;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  plan* p = find_or_make(1, dt, V, N, C, ld, false, false, st);
  if (!p) return st;
  const float alpha = 1.f, beta = 0.f;
  return cublasLtMatmul(handle_, p->desc, &alpha, wte, p->a, x, p->b, &beta, logits, p->c, logits,
                        p->c, &p->algo, workspace_, workspace_bytes_, stream);
}

cublasStatus_t matmul_runner::linear_forward(void* out, const void* in, const void* w,
                                             const void* bias, int T, int IN, int OUT, dtype dt,
                                             cudaStream_t stream) {
  if (T <= 0) return CUBLAS_STATUS_SUCCESS;
  if (!handle_) return CUBLAS_STATUS_INVALID_VALUE;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  plan* p = find_or_make(2, dt, OUT, T, IN, OUT, false, bias != nullptr, st);
  if (!p) return st;
  if (p->bias_in_epilogue)
    INFER_LT_TRY(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                sizeof(bias)));
  const float alpha = 1.f, beta = 0.f;
  INFER_LT_TRY(cublasLtMatmul(handle_, p->desc, &alpha, w, p->a, in, p->b, &beta, out, p->c, out,
                              p->c, &p->algo, workspace_, workspace_bytes_, stream));
  if (bias && !p->bias_in_epilogue) {
    const cudaError_t e =
        dt == dtype::bf16
            ? bias_add_forward(static_cast<bf16*>(out), static_cast<const bf16*>(bias), T, OUT,
                               stream)
            : bias_add_forward(static_cast<half*>(out), static_cast<const half*>(bias), T, OUT,
                               stream);
    if (e != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  return CUBLAS_STATUS_SUCCESS;
}

}  // namespace infer::cuda
