#include "gpu/cuda-resources.hpp"

#include <fmt/format.h>

namespace infer::gpu {

status cuda_status(cudaError_t e, const char* what, const char* file, int line) {
  const errc code = e == cudaErrorMemoryAllocation ? errc::out_of_memory : errc::device_error;
  return make_status(code, fmt::format("{} failed: {} ({}) at {}:{}", what, cudaGetErrorName(e),
                                       cudaGetErrorString(e), file, line));
}

status cublas_status(cublasStatus_t s, const char* what, const char* file, int line) {
  const errc code = s == CUBLAS_STATUS_ALLOC_FAILED ? errc::out_of_memory : errc::device_error;
  return make_status(code, fmt::format("{} failed: cuBLAS status {} at {}:{}", what, int(s), file,
                                       line));
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error of this thread
    return 0;
  }
  return n;
}

status device_buffer::allocate(size_t bytes) {
  reset();
  if (bytes == 0) return status::ok();
  INFER_CUDA_TRY(cudaMalloc(&h_.p, bytes));
  h_.n = bytes;
  return status::ok();
}

status pinned_buffer::allocate(size_t bytes) {
  reset();
  if (bytes == 0) return status::ok();
  INFER_CUDA_TRY(cudaMallocHost(&h_.p, bytes));
  h_.n = bytes;
  return status::ok();
}

status cuda_stream::create() {
  reset();
  INFER_CUDA_TRY(cudaStreamCreateWithFlags(&h_, cudaStreamNonBlocking));
  return status::ok();
}

status cuda_event::create(bool timing) {
  reset();
  INFER_CUDA_TRY(cudaEventCreateWithFlags(&h_, timing ? cudaEventDefault : cudaEventDisableTiming));
  return status::ok();
}

status cuda_graph_exec::instantiate(cudaGraph_t graph) {
  reset();
  const cudaError_t e = cudaGraphInstantiate(&h_, graph, 0);
  cudaGraphDestroy(graph);
  if (e != cudaSuccess) {
    h_ = nullptr;
    return cuda_status(e, "cudaGraphInstantiate", __FILE__, __LINE__);
  }
  return status::ok();
}

status cuda_graph_exec::launch(cudaStream_t s) const {
  INFER_CUDA_TRY(cudaGraphLaunch(h_, s));
  return status::ok();
}

status cublaslt_handle::create() {
  reset();
  INFER_CUBLAS_TRY(cublasLtCreate(&h_));
  return status::ok();
}

}  // namespace infer::gpu
