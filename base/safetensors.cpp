#include "base/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "base/half.hpp"

namespace infer {

namespace {

struct dtype_info {
  st_dtype d;
  const char* name;
  size_t size;
};

const dtype_info k_dtypes[] = {
    {st_dtype::f32, "F32", 4},      {st_dtype::f16, "F16", 2},        {st_dtype::bf16, "BF16", 2},
    {st_dtype::f64, "F64", 8},      {st_dtype::i64, "I64", 8},        {st_dtype::i32, "I32", 4},
    {st_dtype::i16, "I16", 2},      {st_dtype::i8, "I8", 1},          {st_dtype::u8, "U8", 1},
    {st_dtype::u16, "U16", 2},      {st_dtype::u32, "U32", 4},        {st_dtype::u64, "U64", 8},
    {st_dtype::boolean, "BOOL", 1}, {st_dtype::f8_e4m3, "F8_E4M3", 1}, {st_dtype::f8_e5m2, "F8_E5M2", 1},
};

const dtype_info& info(st_dtype d) {
  for (const auto& i : k_dtypes)
    if (i.d == d) return i;
  return k_dtypes[0];
}

// Headers are small (a few KiB for GPT-2); a huge length is a corrupt or foreign file.
constexpr uint64_t k_max_header = 100ull << 20;

status fmt_err(const std::string& path, const std::string& what) {
  return make_status(errc::format_error, fmt::format("{}: {}", path, what));
}

status tensor_err(const std::string& path, const std::string& name, const std::string& what) {
  return make_status(errc::format_error, fmt::format("{}: tensor '{}': {}", path, name, what));
}

// A JSON number that is a non-negative integer (safetensors writes u64).
bool get_u64(const nlohmann::json& j, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    out = uint64_t(v);
    return true;
  }
  return false;
}

// A JSON value for an error message. dump() recurses once per nesting level, so a hostile
// header of nested arrays ([[[[...]]]], 200 KB) would overflow the stack (fuzz/regressions/safetensors):
// only scalars are printed, anything else by its type.
std::string json_brief(const nlohmann::json& j) {
  if (j.is_number() || j.is_boolean() || j.is_null()) return j.dump();
  return j.type_name();
}

// An array of scalars as "[a, b, ...]" (arrays and objects inside by their type).
std::string json_brief_array(const nlohmann::json& a) {
  std::string out = "[";
  for (size_t i = 0; i < a.size(); ++i) out += (i ? ", " : "") + json_brief(a[i]);
  return out + "]";
}

}  // namespace

const char* st_dtype_name(st_dtype d) { return info(d).name; }
size_t st_dtype_size(st_dtype d) { return info(d).size; }
bool st_dtype_supported(st_dtype d) {
  return d == st_dtype::f32 || d == st_dtype::f16 || d == st_dtype::bf16;
}
bool st_dtype_parse(std::string_view name, st_dtype& out) {
  for (const auto& i : k_dtypes) {
    if (name == i.name) {
      out = i.d;
      return true;
    }
  }
  return false;
}

std::string st_shape_str(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

result<safetensors_file> safetensors_file::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return make_status(errc::io_error, fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    return make_status(errc::io_error, fmt::format("{}: cannot stat: {}", path, std::strerror(e)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_status(errc::io_error, fmt::format("{}: not a regular file", path));
  }
  const size_t size = size_t(st.st_size);
  if (size < 8) {
    ::close(fd);
    return fmt_err(path, fmt::format("file is {} bytes, too small for the 8-byte header length", size));
  }
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping keeps the file referenced
  if (base == MAP_FAILED)
    return make_status(errc::io_error, fmt::format("{}: mmap failed: {}", path, std::strerror(map_errno)));

  // Weights are read soon and whole (forward pass, device upload): start paging them in now.
  ::madvise(base, size, MADV_WILLNEED);

  std::shared_ptr<void> mapping(base, [size](void* p) { ::munmap(p, size); });
  return parse(path, std::move(mapping), static_cast<const unsigned char*>(base), size);
}

result<safetensors_file> safetensors_file::from_memory(const void* data, size_t size, const std::string& name) {
  if (size < 8) return fmt_err(name, fmt::format("file is {} bytes, too small for the 8-byte header length", size));
  // An exact-size heap copy: views stay valid after the caller's buffer is gone, and a read
  // past the image is a heap overflow that AddressSanitizer reports (fuzzing).
  auto copy = std::shared_ptr<unsigned char[]>(new unsigned char[size]);
  std::memcpy(copy.get(), data, size);
  const unsigned char* bytes = copy.get();
  return parse(name, std::shared_ptr<void>(copy, copy.get()), bytes, size);
}

result<safetensors_file> safetensors_file::parse(const std::string& path, std::shared_ptr<void> mapping,
                                                 const unsigned char* bytes, size_t size) {
  safetensors_file f;
  f.path_ = path;
  f.file_size_ = size;
  f.mapping_ = std::move(mapping);

  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | bytes[i];
  if (hlen > size - 8)
    return fmt_err(path, fmt::format("header length {} is beyond the file size ({} bytes): "
                                     "truncated or not a safetensors file", hlen, size));
  if (hlen > k_max_header)
    return fmt_err(path, fmt::format("header length {} exceeds the {} byte limit", hlen, k_max_header));
  if (hlen < 2) return fmt_err(path, fmt::format("header length {} is too small for a JSON object", hlen));

  const char* hbeg = reinterpret_cast<const char*>(bytes + 8);
  auto header = nlohmann::json::parse(hbeg, hbeg + hlen, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return fmt_err(path, "header is not valid JSON");
  if (!header.is_object()) return fmt_err(path, "header JSON is not an object");

  const size_t data_start = 8 + size_t(hlen);
  const size_t data_size = size - data_start;
  struct span { uint64_t b, e; size_t idx; };
  std::vector<span> spans;
  f.tensors_.reserve(header.size());

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return fmt_err(path, "__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          return fmt_err(path, fmt::format("__metadata__ value '{}' is not a string", m.key()));
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) return tensor_err(path, name, "entry is not an object");
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return tensor_err(path, name, "missing or non-string 'dtype'");
    if (sh == v.end() || !sh->is_array()) return tensor_err(path, name, "missing or non-array 'shape'");
    if (off == v.end() || !off->is_array() || off->size() != 2)
      return tensor_err(path, name, "'data_offsets' must be an array [begin, end]");

    st_tensor_view t;
    t.name = name;
    const std::string dtype_name = dt->get<std::string>();
    if (!st_dtype_parse(dtype_name, t.dtype))
      return tensor_err(path, name, fmt::format("unknown dtype '{}'", dtype_name));

    // Every running product must fit int64: st_tensor_view::numel() multiplies in this order
    // in int64 ([3, 2^62, 0] is 0 elements, but 3 * 2^62 overflows on the way; fuzz/regressions/safetensors).
    int64_t numel = 1;
    for (const auto& d : *sh) {
      uint64_t n = 0;
      if (!get_u64(d, n) || n > uint64_t(INT64_MAX))
        return tensor_err(path, name, fmt::format("shape {} has a non-integer or negative dimension",
                                                  json_brief_array(*sh)));
      if (__builtin_mul_overflow(numel, int64_t(n), &numel))
        return tensor_err(path, name, fmt::format("shape {} overflows", json_brief_array(*sh)));
      t.shape.push_back(int64_t(n));
    }
    uint64_t want = 0;
    if (__builtin_mul_overflow(uint64_t(numel), uint64_t(st_dtype_size(t.dtype)), &want))
      return tensor_err(path, name, fmt::format("shape {} overflows", json_brief_array(*sh)));

    uint64_t b = 0, e = 0;
    if (!get_u64((*off)[0], b) || !get_u64((*off)[1], e))
      return tensor_err(path, name, fmt::format("data_offsets {} are not non-negative integers",
                                                json_brief_array(*off)));
    if (e < b) return tensor_err(path, name, fmt::format("data_offsets [{}, {}] end before begin", b, e));
    if (e > data_size)
      return tensor_err(path, name,
                        fmt::format("data_offsets [{}, {}] are beyond the data section ({} bytes): "
                                    "offsets out of range or the file is truncated", b, e, data_size));
    if (e - b != want)
      return tensor_err(path, name,
                        fmt::format("data_offsets [{}, {}] span {} bytes but shape {} of {} needs {}",
                                    b, e, e - b, st_shape_str(t.shape), dtype_name, want));
    t.data = bytes + data_start + b;
    t.nbytes = size_t(want);
    spans.push_back({b, e, f.tensors_.size()});
    f.tensors_.push_back(std::move(t));
  }

  std::sort(spans.begin(), spans.end(), [](const span& x, const span& y) {
    return x.b != y.b ? x.b < y.b : x.e < y.e;
  });
  // Compare each span with the furthest-reaching one before it; empty tensors overlap nothing.
  const span* reach = nullptr;
  for (const auto& c : spans) {
    if (c.e == c.b) continue;
    if (reach && c.b < reach->e)
      return tensor_err(path, f.tensors_[c.idx].name,
                        fmt::format("data_offsets [{}, {}] overlap tensor '{}' [{}, {}]", c.b, c.e,
                                    f.tensors_[reach->idx].name, reach->b, reach->e));
    if (!reach || c.e > reach->e) reach = &c;
  }
  // Keep data-offset order: names() and callers iterating tensors() see file order.
  std::vector<st_tensor_view> ordered;
  ordered.reserve(spans.size());
  for (const auto& s : spans) ordered.push_back(std::move(f.tensors_[s.idx]));
  f.tensors_ = std::move(ordered);
  for (size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
  return f;
}

const st_tensor_view* safetensors_file::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<std::string> safetensors_file::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& t : tensors_) out.push_back(t.name);
  return out;
}

status st_to_f32(const st_tensor_view& t, float* out, const std::string& file) {
  const size_t n = t.nbytes / st_dtype_size(t.dtype);
  const auto* src = static_cast<const unsigned char*>(t.data);
  switch (t.dtype) {
    case st_dtype::f32:
      if (n) std::memcpy(out, src, n * 4);  // empty tensors may come with a null `out`
      return status::ok();
    case st_dtype::f16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = half_to_float(h);
      }
      return status::ok();
    case st_dtype::bf16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        out[i] = bf16_to_float(h);
      }
      return status::ok();
    default:
      return make_status(errc::format_error,
                         fmt::format("{}: tensor '{}': unsupported dtype {} (supported: F32, F16, BF16)",
                                     file, t.name, st_dtype_name(t.dtype)));
  }
}

status write_safetensors(const std::string& path, const std::vector<st_tensor_desc>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    if (!st_dtype_supported(t.dtype))
      return make_status(errc::invalid_argument,
                         fmt::format("{}: tensor '{}': cannot write dtype {} (F32, F16, BF16 only)",
                                     path, t.name, st_dtype_name(t.dtype)));
    if (t.name.empty() || t.name == "__metadata__" || header.contains(t.name))
      return make_status(errc::invalid_argument,
                         fmt::format("{}: tensor name '{}' is empty, reserved or repeated", path, t.name));
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0)
        return make_status(errc::invalid_argument,
                           fmt::format("{}: tensor '{}': negative dimension in {}", path, t.name,
                                       st_shape_str(t.shape)));
      numel *= d;
    }
    if (size_t(numel) != t.values.size())
      return make_status(errc::invalid_argument,
                         fmt::format("{}: tensor '{}': shape {} needs {} values, got {}", path, t.name,
                                     st_shape_str(t.shape), numel, t.values.size()));
    const uint64_t nbytes = uint64_t(numel) * st_dtype_size(t.dtype);
    header[t.name] = {{"dtype", st_dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {off, off + nbytes}}};
    off += nbytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');

  std::FILE* fp = std::fopen(path.c_str(), "wb");
  if (!fp)
    return make_status(errc::io_error, fmt::format("{}: cannot create: {}", path, std::strerror(errno)));
  bool ok = true;
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(uint64_t(h.size()) >> (8 * i));
  ok = ok && std::fwrite(len, 1, 8, fp) == 8;
  ok = ok && std::fwrite(h.data(), 1, h.size(), fp) == h.size();
  std::vector<unsigned char> buf;
  for (const auto& t : tensors) {
    if (!ok) break;
    const size_t n = t.values.size();
    buf.resize(n * st_dtype_size(t.dtype));
    if (t.dtype == st_dtype::f32) {
      if (n) std::memcpy(buf.data(), t.values.data(), n * 4);
    } else {
      const bool half = t.dtype == st_dtype::f16;
      for (size_t i = 0; i < n; ++i) {
        const uint16_t v = half ? float_to_half(t.values[i]) : float_to_bf16(t.values[i]);
        std::memcpy(buf.data() + 2 * i, &v, 2);  // little-endian hosts only (x86-64, aarch64)
      }
    }
    ok = std::fwrite(buf.data(), 1, buf.size(), fp) == buf.size();
  }
  const int e = errno;
  if (std::fclose(fp) != 0) ok = false;
  if (!ok)
    return make_status(errc::io_error, fmt::format("{}: write failed: {}", path, std::strerror(e)));
  return status::ok();
}

}  // namespace infer
