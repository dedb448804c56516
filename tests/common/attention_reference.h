// Test helpers for attention: a naive FP64 softmax(QK^T)V on
// dense arrays, and relative L2 errors.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace plume::testing {

// softmax(scale * q k^T) v in FP64, straight from the definition (no running
// maximum: exp of the raw scores, so keep the test's scores moderate).
// k, v: [kv_heads][seq][dim]; q: [batch][heads][q_len][dim].
inline std::vector<double> NaiveAttention(const std::vector<float>& k, const std::vector<float>& v,
                                          int64_t kv_heads, int64_t seq, int64_t dim,
                                          const std::vector<float>& q, int64_t batch, int64_t heads,
                                          int64_t q_len, double scale, bool causal) {
  std::vector<double> out(size_t(batch * heads * q_len * dim), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < q_len; ++i) {
        const int64_t kvh = h / (heads / kv_heads);
        const int64_t row = (b * heads + h) * q_len + i;
        const int64_t n = causal ? seq - q_len + i + 1 : seq;
        std::vector<double> w(static_cast<size_t>(n));
        double z = 0;
        for (int64_t t = 0; t < n; ++t) {
          double dot = 0;
          for (int64_t d = 0; d < dim; ++d)
            dot += double(q[size_t(row * dim + d)]) * double(k[size_t((kvh * seq + t) * dim + d)]);
          z += (w[size_t(t)] = std::exp(dot * scale));
        }
        for (int64_t t = 0; t < n; ++t)
          for (int64_t d = 0; d < dim; ++d)
            out[size_t(row * dim + d)] += w[size_t(t)] / z * double(v[size_t((kvh * seq + t) * dim + d)]);
      }
  return out;
}

// ||got - want|| / ||want||; infinity when want is all zero (a test that
// proves nothing) or got holds a NaN.
template <class T>
double RelL2(const std::vector<T>& got, const std::vector<double>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double err = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = double(got[i]) - want[i];
    err += d * d;
    norm += want[i] * want[i];
  }
  if (!(norm > 0) || std::isnan(err)) return std::numeric_limits<double>::infinity();
  return std::sqrt(err / norm);
}

}  // namespace plume::testing
