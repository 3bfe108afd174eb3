// cuda_resources: RAII owners of CUDA objects (device and pinned memory, stream, event,
// graph, cuBLASLt handle) and the checks that turn CUDA / cuBLAS failures into
// infer::status (errc::device_error, errc::out_of_memory). Nothing here throws or exits:
// a fault travels up as a value to the worker that owns the backend.
#pragma once
#include <cstddef>
#include <string>
#include <utility>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "base/result.hpp"

namespace infer::gpu {

status cuda_status(cudaError_t e, const char* what, const char* file, int line);
status cublas_status(cublasStatus_t s, const char* what, const char* file, int line);

#define INFER_CUDA_TRY(expr)                                                          \
  do {                                                                                \
    const cudaError_t infer_e_ = (expr);                                              \
    if (infer_e_ != cudaSuccess)                                                      \
      return ::infer::gpu::cuda_status(infer_e_, #expr, __FILE__, __LINE__);          \
  } while (0)

#define INFER_CUBLAS_TRY(expr)                                                        \
  do {                                                                                \
    const cublasStatus_t infer_s_ = (expr);                                           \
    if (infer_s_ != CUBLAS_STATUS_SUCCESS)                                            \
      return ::infer::gpu::cublas_status(infer_s_, #expr, __FILE__, __LINE__);        \
  } while (0)

#define INFER_STATUS_TRY(expr)             \
  do {                                     \
    ::infer::status infer_st_ = (expr);    \
    if (!infer_st_) return infer_st_;      \
  } while (0)

// Number of usable CUDA devices, 0 where there is no driver or no device.
int cuda_device_count();

// The one owner of a CUDA handle: move-only, released by Free when reset, reassigned or
// destroyed. H is the raw handle (null when empty, tested with `if (h)`); the classes below
// add how each kind is made.
template <class H, class Free>
class unique_handle {
 public:
  unique_handle() = default;
  ~unique_handle() { reset(); }
  unique_handle(unique_handle&& o) noexcept : h_(std::exchange(o.h_, H{})) {}
  unique_handle& operator=(unique_handle&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, H{});
    }
    return *this;
  }
  unique_handle(const unique_handle&) = delete;
  unique_handle& operator=(const unique_handle&) = delete;

  void reset() {
    if (h_) Free{}(h_);
    h_ = H{};
  }
  H get() const { return h_; }

 protected:
  H h_{};
};

// A block of memory and its size, for the two buffer kinds.
struct memory_block {
  void* p = nullptr;
  size_t n = 0;
  explicit operator bool() const { return p != nullptr; }
};

struct device_free {
  void operator()(memory_block b) const { cudaFree(b.p); }
};
struct pinned_free {
  void operator()(memory_block b) const { cudaFreeHost(b.p); }
};
struct stream_destroy {
  void operator()(cudaStream_t s) const { cudaStreamDestroy(s); }
};
struct event_destroy {
  void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
};
struct graph_exec_destroy {
  void operator()(cudaGraphExec_t g) const { cudaGraphExecDestroy(g); }
};
struct cublaslt_destroy {
  void operator()(cublasLtHandle_t h) const { cublasLtDestroy(h); }
};

// Device memory, uninitialised.
class device_buffer : public unique_handle<memory_block, device_free> {
 public:
  status allocate(size_t bytes);  // frees what it held first
  void* get() const { return h_.p; }
  template <class T>
  T* as() const { return static_cast<T*>(h_.p); }
  size_t bytes() const { return h_.n; }
};

// Page-locked host memory: the staging area of asynchronous copies.
class pinned_buffer : public unique_handle<memory_block, pinned_free> {
 public:
  status allocate(size_t bytes);
  void* get() const { return h_.p; }
  template <class T>
  T* as() const { return static_cast<T*>(h_.p); }
  size_t bytes() const { return h_.n; }
};

class cuda_stream : public unique_handle<cudaStream_t, stream_destroy> {
 public:
  status create();  // non-blocking: never serialises with the legacy default stream
};

class cuda_event : public unique_handle<cudaEvent_t, event_destroy> {
 public:
  status create(bool timing = false);
};

// An instantiated CUDA graph (the captured graph itself is dropped once instantiated).
class cuda_graph_exec : public unique_handle<cudaGraphExec_t, graph_exec_destroy> {
 public:
  // Takes ownership of graph (destroys it after instantiating).
  status instantiate(cudaGraph_t graph);
  status launch(cudaStream_t s) const;
  bool valid() const { return h_ != nullptr; }
};

class cublaslt_handle : public unique_handle<cublasLtHandle_t, cublaslt_destroy> {
 public:
  status create();
};

}  // namespace infer::gpu
