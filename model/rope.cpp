#include "model/rope.hpp"

#include <cmath>

namespace infer {

std::vector<double> rope_inv_freq(const model_config& c) {
  const int rot = c.rot_dim();
  std::vector<double> f(size_t(rot / 2));
  for (int i = 0; i < rot / 2; ++i) f[size_t(i)] = std::pow(c.rope.theta, -2.0 * i / double(rot));
  const rope_config& r = c.rope;
  if (r.type == rope_type::linear) {
    for (double& x : f) x /= r.factor;
  } else if (r.type == rope_type::llama3) {
    // Meta's Llama 3.1 scaling: long wavelengths slowed by `factor`, short ones kept, the
    // band between blended linearly in 1/wavelength.
    constexpr double two_pi = 6.283185307179586476925286766559;
    const double old_len = r.original_max_position;
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    for (double& x : f) {
      const double wavelen = two_pi / x;
      if (wavelen < high_wavelen) continue;
      if (wavelen > low_wavelen) {
        x /= r.factor;
        continue;
      }
      const double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
      x = (1.0 - smooth) * x / r.factor + smooth * x;
    }
  }
  return f;
}

void rope_tables(const model_config& c, int32_t n_pos, std::vector<float>& cos_out,
                 std::vector<float>& sin_out) {
  const auto f = rope_inv_freq(c);
  const size_t half = f.size();
  cos_out.resize(size_t(n_pos) * half);
  sin_out.resize(size_t(n_pos) * half);
  for (int32_t p = 0; p < n_pos; ++p)
    for (size_t i = 0; i < half; ++i) {
      // HF computes the angle in fp32 (position * inv_freq as float); double here, rounded
      // once, is closer to the exact value the fp32 reference approximates.
      const double a = double(p) * f[i];
      cos_out[size_t(p) * half + i] = float(std::cos(a));
      sin_out[size_t(p) * half + i] = float(std::sin(a));
    }
}

}  // namespace infer
