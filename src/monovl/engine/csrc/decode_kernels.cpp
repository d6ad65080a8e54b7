// fp32 CPU kernels for one decode step; engine/decode_kernels.py builds them and says why.
//
// Every op works on contiguous fp32 tensors (the `_int8` products also take int8 weights with one
// fp32 scale per output row: weight-only int8, monovl/model/quantize.py), B rows at a time (B
// small: decode), and splits its work over ATen's intra-op threads. Products read each weight row once and reuse it for all B
// rows while it sits in L1; attention reads each cached key and value once for all the query heads
// of its group. Layouts are the decoder's: packed qkv rows [B, n_kv, groups + 2, head_dim] (groups
// query heads, then the key, then the value of each KV head) and a cache [B, n_kv, capacity, D].
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

void check_fp32(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), name,
              " must be a contiguous fp32 CPU tensor");
}

// Output rows computed together. Their weights are four nearby streams, which keeps enough cache
// misses in flight for one core to reach ~13-16 GB/s (a single stream: ~7 GB/s on the dev machine);
// the four dot products are also four independent accumulation chains.
constexpr int64_t kRows = 4;

inline float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

#if defined(__AVX2__) && defined(__FMA__)
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// Four int8 rows against one x row, 8 weights at a time: each 8 bytes are sign-extended and converted
// to fp32 in registers (vpmovsxbd, vcvtdq2ps) and multiplied in. GCC's auto-vectorised form of the
// same loop (through 16-bit lanes) ran at 8.5 G weights/s on 2 cores, compute-bound.
inline void dot4_int8(const float* xb, const int8_t* w0, const int8_t* w1, const int8_t* w2, const int8_t* w3,
                      int64_t in, float* s) {
  auto widen = [](const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  };
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    const __m256 xv = _mm256_loadu_ps(xb + k);
    a0 = _mm256_fmadd_ps(widen(w0 + k), xv, a0);
    a1 = _mm256_fmadd_ps(widen(w1 + k), xv, a1);
    a2 = _mm256_fmadd_ps(widen(w2 + k), xv, a2);
    a3 = _mm256_fmadd_ps(widen(w3 + k), xv, a3);
  }
  s[0] = hsum(a0), s[1] = hsum(a1), s[2] = hsum(a2), s[3] = hsum(a3);
  for (; k < in; ++k) {
    s[0] += w0[k] * xb[k], s[1] += w1[k] * xb[k], s[2] += w2[k] * xb[k], s[3] += w3[k] * xb[k];
  }
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// The fp32 block: four weight rows against kXRows x rows at a time, kLanes products per instruction.
// Each weight vector loaded serves every x row of the group and each x vector all four weight rows:
// (4 + kXRows) loads per 4 * kXRows multiply-adds, where one x row at a time loaded 5 per 4 and was
// bound by its loads once the weights sat in L1 (several decode rows). Accumulators: 4 * kXRows
// registers (AVX-512: 16 of 32, AVX2: 12 of 16). Each dot product is summed in the same order
// whatever the group size, so a row's result does not depend on the batch it is in.
#if defined(__AVX512F__)
using Vec = __m512;
constexpr int64_t kLanes = 16, kXRows = 4;
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(Vec v) { return _mm512_reduce_add_ps(v); }
#else
using Vec = __m256;
constexpr int64_t kLanes = 8, kXRows = 3;
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(Vec v) { return hsum(v); }
#endif

// s[b * kRows + r] = x[b] . w[r] for NB x rows (stride `in`) and the kRows weight rows from w0.
template <int64_t NB>
inline void dot4_fp32(const float* x, int64_t in, const float* w0, float* s) {
  Vec acc[NB][kRows];
  for (int64_t b = 0; b < NB; ++b)
    for (int64_t r = 0; r < kRows; ++r) acc[b][r] = vzero();
  int64_t k = 0;
  for (; k + kLanes <= in; k += kLanes) {
    Vec xv[NB];
    for (int64_t b = 0; b < NB; ++b) xv[b] = vload(x + b * in + k);
    for (int64_t r = 0; r < kRows; ++r) {
      const Vec wv = vload(w0 + r * in + k);
      for (int64_t b = 0; b < NB; ++b) acc[b][r] = vfma(wv, xv[b], acc[b][r]);
    }
  }
  for (int64_t b = 0; b < NB; ++b)
    for (int64_t r = 0; r < kRows; ++r) {
      float v = vsum(acc[b][r]);
      for (int64_t j = k; j < in; ++j) v += w0[r * in + j] * x[b * in + j];
      s[b * kRows + r] = v;
    }
}

template <int64_t NB, typename Emit>
inline void emit_group(const float* x, int64_t in, const float* w0, int64_t b0, int64_t r0, Emit& emit) {
  float s[NB * kRows];
  dot4_fp32<NB>(x + b0 * in, in, w0, s);
  for (int64_t b = 0; b < NB; ++b)
    for (int64_t r = 0; r < kRows; ++r) emit(b0 + b, r0 + r, s[b * kRows + r]);
}
#endif

// y[b, r] = x[b] . w[r] for rows [r0, r0 + n) of w, n <= kRows; calls emit(b, r, value). W is float,
// or int8_t for weight-only int8 (the caller applies the row's scale): the int8 weights are widened
// to fp32 in registers, so the products read a quarter of the bytes.
template <typename W, typename Emit>
inline void row_block(const float* x, int64_t batch, int64_t in, const W* w, int64_t r0, int64_t n, Emit emit) {
  const W* w0 = w + r0 * in;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<W, float>) {
    if (n == kRows) {
      int64_t b = 0;
      for (; b + kXRows <= batch; b += kXRows) emit_group<kXRows>(x, in, w0, b, r0, emit);
      switch (batch - b) {
        case 1: emit_group<1>(x, in, w0, b, r0, emit); break;
        case 2: emit_group<2>(x, in, w0, b, r0, emit); break;
#if defined(__AVX512F__)
        case 3: emit_group<3>(x, in, w0, b, r0, emit); break;
#endif
        default: break;
      }
      return;
    }
  }
#endif
  for (int64_t b = 0; b < batch; ++b) {
    const float* xb = x + b * in;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<W, int8_t>) {
      if (n == kRows) {
        float s[kRows];
        dot4_int8(xb, w0, w0 + in, w0 + 2 * in, w0 + 3 * in, in, s);
        for (int64_t r = 0; r < kRows; ++r) emit(b, r0 + r, s[r]);
        continue;
      }
    }
#endif
    if (n == kRows) {
      const W *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
      float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t k = 0; k < in; ++k) {
        const float xk = xb[k];
        s0 += static_cast<float>(w0[k]) * xk;
        s1 += static_cast<float>(w1[k]) * xk;
        s2 += static_cast<float>(w2[k]) * xk;
        s3 += static_cast<float>(w3[k]) * xk;
      }
      emit(b, r0, s0);
      emit(b, r0 + 1, s1);
      emit(b, r0 + 2, s2);
      emit(b, r0 + 3, s3);
    } else {
      for (int64_t r = 0; r < n; ++r) {
        const W* wr = w0 + r * in;
        float s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t k = 0; k < in; ++k) s += static_cast<float>(wr[k]) * xb[k];
        emit(b, r0 + r, s);
      }
    }
  }
}

// Runs f(r0, n, scratch) over blocks of kRows output rows, split over the threads (at least 64
// rows per thread: below that the fork costs more than it saves). `scratch` holds `scratch_floats`
// floats private to the calling thread.
template <typename F>
inline void for_row_blocks(int64_t rows, int64_t scratch_floats, F f) {
  const int64_t blocks = (rows + kRows - 1) / kRows;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    std::vector<float> scratch(scratch_floats);
    for (int64_t blk = b0; blk < b1; ++blk) f(blk * kRows, std::min(kRows, rows - blk * kRows), scratch.data());
  });
}

// A weight as the products read it: fp32 [out, in], or int8 [out, in] with one fp32 scale per row.
struct Weight {
  const float* f = nullptr;
  const int8_t* q = nullptr;
  const float* scale = nullptr;
  int64_t out = 0, in = 0;
};

Weight weight_of(const Tensor& w, const std::optional<Tensor>& scale, const char* op) {
  TORCH_CHECK(w.dim() == 2, op, ": the weight must be [out, in]");
  Weight r;
  r.out = w.size(0);
  r.in = w.size(1);
  if (!scale) {
    check_fp32(w, op);
    r.f = w.data_ptr<float>();
    return r;
  }
  TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kChar && w.is_contiguous(), op,
              ": a weight with a scale must be a contiguous int8 CPU tensor");
  check_fp32(*scale, op);
  TORCH_CHECK(scale->dim() == 1 && scale->size(0) == r.out, op, ": the scale must be [out]");
  r.q = w.data_ptr<int8_t>();
  r.scale = scale->data_ptr<float>();
  return r;
}

// Rows [r0, r0 + n) of w against every x row, each value scaled by its row's int8 scale.
template <typename Emit>
inline void weight_block(const float* x, int64_t batch, const Weight& w, int64_t r0, int64_t n, Emit emit) {
  if (w.f) {
    row_block(x, batch, w.in, w.f, r0, n, emit);
  } else if (batch == 1) {
    const float* sc = w.scale;
    row_block(x, batch, w.in, w.q, r0, n, [&](int64_t b, int64_t r, float v) { emit(b, r, v * sc[r]); });
  } else {
    // Several rows: widen the block's weights to fp32 once, into a per-thread buffer that stays in
    // cache, and run the fp32 block on it. Widening inside the row loop would pay the conversion
    // once per row (at 16 rows int8 then decoded at 0.89x fp32's speed).
    thread_local std::vector<float> buf;
    buf.resize(kRows * w.in);
    for (int64_t r = 0; r < n; ++r) {
      const int8_t* src = w.q + (r0 + r) * w.in;
      const float sc = w.scale[r0 + r];
      float* dst = buf.data() + r * w.in;
#pragma omp simd
      for (int64_t k = 0; k < w.in; ++k) dst[k] = sc * static_cast<float>(src[k]);
    }
    row_block(x, batch, w.in, buf.data(), 0, n, [&](int64_t b, int64_t r, float v) { emit(b, r0 + r, v); });
  }
}

// y = x [B, in] @ w[out, in]^T (+ bias), or y += that with `add` (the residual stream).
void linear_into(const Tensor& y, const Tensor& x, const Tensor& weight, const std::optional<Tensor>& scale,
                 const std::optional<Tensor>& bias, bool add) {
  check_fp32(y, "linear");
  check_fp32(x, "linear");
  const Weight w = weight_of(weight, scale, "linear");
  TORCH_CHECK(x.dim() == 2 && w.in == x.size(1), "linear: x must be [B, in], weight [out, in]");
  const int64_t batch = x.size(0), out = w.out;
  TORCH_CHECK(y.dim() == 2 && y.size(0) == batch && y.size(1) == out, "linear: the output must be [B, out]");
  const float* bp = nullptr;
  if (bias) {
    check_fp32(*bias, "linear");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out, "linear: bias must be [out]");
    bp = bias->data_ptr<float>();
  }
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  for_row_blocks(out, 0, [&](int64_t r0, int64_t n, float*) {
    weight_block(X, batch, w, r0, n, [&](int64_t b, int64_t r, float v) {
      if (bp) v += bp[r];
      Y[b * out + r] = add ? Y[b * out + r] + v : v;
    });
  });
}

Tensor linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias) {
  Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  linear_into(y, x, w, std::nullopt, bias, false);
  return y;
}

void linear_add_(const Tensor& out, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias) {
  linear_into(out, x, w, std::nullopt, bias, true);
}

Tensor linear_int8(const Tensor& x, const Tensor& w, const Tensor& scale, const std::optional<Tensor>& bias) {
  Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  linear_into(y, x, w, scale, bias, false);
  return y;
}

void linear_int8_add_(const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& scale,
                      const std::optional<Tensor>& bias) {
  linear_into(out, x, w, scale, bias, true);
}

// silu(x @ w1^T) * (x @ w3^T): the SwiGLU hidden layer, both products in one pass.
Tensor swiglu_into(const Tensor& x, const Weight& w1, const Weight& w3) {
  check_fp32(x, "x");
  TORCH_CHECK(x.dim() == 2 && w1.out == w3.out && w1.in == w3.in && w1.in == x.size(1),
              "swiglu: x must be [B, in], w1 and w3 both [hidden, in]");
  const int64_t batch = x.size(0), out = w1.out;
  Tensor y = at::empty({batch, out}, x.options());
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  for_row_blocks(out, batch * kRows, [&](int64_t r0, int64_t n, float* gate) {
    weight_block(X, batch, w1, r0, n, [&](int64_t b, int64_t r, float v) { gate[b * kRows + r - r0] = v; });
    weight_block(X, batch, w3, r0, n, [&](int64_t b, int64_t r, float v) {
      const float g = gate[b * kRows + r - r0];
      Y[b * out + r] = g / (1.f + std::exp(-g)) * v;
    });
  });
  return y;
}

Tensor swiglu(const Tensor& x, const Tensor& w1, const Tensor& w3) {
  return swiglu_into(x, weight_of(w1, std::nullopt, "swiglu"), weight_of(w3, std::nullopt, "swiglu"));
}

Tensor swiglu_int8(const Tensor& x, const Tensor& w1, const Tensor& s1, const Tensor& w3, const Tensor& s3) {
  return swiglu_into(x, weight_of(w1, s1, "swiglu"), weight_of(w3, s3, "swiglu"));
}

// Root-mean-square norm of each row, scaled by w.
Tensor rms_norm(const Tensor& x, const Tensor& w, double eps) {
  check_fp32(x, "x");
  check_fp32(w, "weight");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 1 && w.size(0) == x.size(1), "rms_norm: x must be [B, H], weight [H]");
  const int64_t batch = x.size(0), h = x.size(1);
  Tensor y = at::empty({batch, h}, x.options());
  const float *X = x.data_ptr<float>(), *Wn = w.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const float* xb = X + b * h;
    const float r = 1.f / std::sqrt(dot(xb, xb, h) / h + static_cast<float>(eps));
    for (int64_t i = 0; i < h; ++i) Y[b * h + i] = Wn[i] * (xb[i] * r);
  }
  return y;
}

// qkv [B, n_kv, G + 2, D] and caches [B, n_kv, capacity, D] of one layer.
void check_layer(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const char* op) {
  for (auto* t : {&qkv, &k_cache, &v_cache}) check_fp32(*t, op);
  TORCH_CHECK(qkv.dim() == 4 && qkv.size(2) >= 3 && k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() &&
                  k_cache.size(0) == qkv.size(0) && k_cache.size(1) == qkv.size(1) && k_cache.size(3) == qkv.size(3),
              op, ": qkv must be [B, n_kv, groups + 2, D] and the caches [B, n_kv, capacity, D]");
}

// RoPE (rotate-half convention) on the query heads and the key of packed qkv [B, n_kv, G + 2, D],
// in place; then the key and value go to slot `pos` of the cache. cos, sin: [B, D].
void rope_store(const Tensor& qkv, const Tensor& cos, const Tensor& sin, const Tensor& k_cache,
                const Tensor& v_cache, int64_t pos) {
  check_layer(qkv, k_cache, v_cache, "rope_store");
  const int64_t batch = qkv.size(0), n_kv = qkv.size(1), slots = qkv.size(2), d = qkv.size(3);
  const int64_t cap = k_cache.size(2), half = d / 2;
  for (auto* t : {&cos, &sin}) {
    check_fp32(*t, "rope_store");
    TORCH_CHECK(t->dim() == 2 && t->size(0) == batch && t->size(1) == d, "rope_store: cos and sin must be [B, D]");
  }
  TORCH_CHECK(pos >= 0 && pos < cap, "rope_store: slot ", pos, " outside a cache of ", cap);
  float *P = qkv.data_ptr<float>(), *Kc = k_cache.data_ptr<float>(), *Vc = v_cache.data_ptr<float>();
  const float *C = cos.data_ptr<float>(), *S = sin.data_ptr<float>();
  std::vector<float> rotated(d);
  float* tmp = rotated.data();
  for (int64_t b = 0; b < batch; ++b) {
    const float *c = C + b * d, *s = S + b * d;
    for (int64_t h = 0; h < n_kv; ++h) {
      float* head = P + (b * n_kv + h) * slots * d;
      for (int64_t j = 0; j < slots - 1; ++j) {  // query heads and the key; not the value
        float* x = head + j * d;
        for (int64_t i = 0; i < half; ++i) {
          tmp[i] = x[i] * c[i] - x[i + half] * s[i];
          tmp[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
        }
        std::copy(tmp, tmp + d, x);
      }
      const int64_t slot = ((b * n_kv + h) * cap + pos) * d;
      std::copy(head + (slots - 2) * d, head + (slots - 1) * d, Kc + slot);
      std::copy(head + (slots - 1) * d, head + slots * d, Vc + slot);
    }
  }
}

// Attention of the G query heads of each KV head (in packed qkv) over the first `length` cache
// slots. mask [B, length] bool (false = padding) or none. Returns [B, n_kv * G * D].
Tensor attend(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, int64_t length,
              const std::optional<Tensor>& mask, double scale) {
  check_layer(qkv, k_cache, v_cache, "attend");
  const int64_t batch = qkv.size(0), n_kv = qkv.size(1), groups = qkv.size(2) - 2, d = qkv.size(3);
  const int64_t cap = k_cache.size(2), L = length;
  TORCH_CHECK(L > 0 && L <= cap, "attend: length ", L, " outside a cache of ", cap);
  const bool* M = nullptr;
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous() && mask->size(0) == batch &&
                    mask->size(1) == L, "attend: mask must be a contiguous bool [B, length]");
    M = mask->data_ptr<bool>();
  }
  Tensor out = at::empty({batch, n_kv * groups * d}, qkv.options());
  const float *P = qkv.data_ptr<float>(), *K = k_cache.data_ptr<float>(), *V = v_cache.data_ptr<float>();
  float* O = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, batch * n_kv, 1, [&](int64_t i0, int64_t i1) {
    std::vector<float> p(groups * L);  // scores, then probabilities, of each query head
    for (int64_t i = i0; i < i1; ++i) {
      const float* q = P + i * (groups + 2) * d;
      const float* k = K + i * cap * d;
      const float* v = V + i * cap * d;
      const bool* m = M ? M + (i / n_kv) * L : nullptr;
      // Scores. The keys are read as four streams, one per quarter of the cache: one sequential
      // stream leaves the hardware prefetcher too few misses in flight (single core ~7 GB/s cold,
      // ~13 GB/s with four). Each key is read from memory once for all query heads.
      const int64_t quarter = L / 4;
      for (int64_t t = 0; t < quarter; ++t) {
        const float *k0 = k + t * d, *k1 = k0 + quarter * d, *k2 = k1 + quarter * d, *k3 = k2 + quarter * d;
        for (int64_t g = 0; g < groups; ++g) {
          const float* qg = q + g * d;
          float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
          for (int64_t j = 0; j < d; ++j) {
            const float qj = qg[j];
            s0 += qj * k0[j];
            s1 += qj * k1[j];
            s2 += qj * k2[j];
            s3 += qj * k3[j];
          }
          float* pg = p.data() + g * L + t;
          pg[0] = s0 * sc;
          pg[quarter] = s1 * sc;
          pg[2 * quarter] = s2 * sc;
          pg[3 * quarter] = s3 * sc;
        }
      }
      for (int64_t t = 4 * quarter; t < L; ++t)
        for (int64_t g = 0; g < groups; ++g) p[g * L + t] = dot(q + g * d, k + t * d, d) * sc;
      // Softmax per query head; padded slots get probability 0.
      float* o = O + i * groups * d;
      for (int64_t g = 0; g < groups; ++g) {
        float* pg = p.data() + g * L;
        if (m)
          for (int64_t j = 0; j < L; ++j)
            if (!m[j]) pg[j] = -INFINITY;
        const float mx = *std::max_element(pg, pg + L);
        float sum = 0;
        for (int64_t j = 0; j < L; ++j) sum += (pg[j] = std::exp(pg[j] - mx));
        const float inv = 1.f / sum;
        for (int64_t j = 0; j < L; ++j) pg[j] *= inv;
        std::fill(o + g * d, o + (g + 1) * d, 0.f);
      }
      // Weighted values, read as four streams like the keys.
      for (int64_t t = 0; t < quarter; ++t) {
        const float *v0 = v + t * d, *v1 = v0 + quarter * d, *v2 = v1 + quarter * d, *v3 = v2 + quarter * d;
        for (int64_t g = 0; g < groups; ++g) {
          const float* pg = p.data() + g * L + t;
          const float p0 = pg[0], p1 = pg[quarter], p2 = pg[2 * quarter], p3 = pg[3 * quarter];
          float* og = o + g * d;
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) og[j] += p0 * v0[j] + p1 * v1[j] + p2 * v2[j] + p3 * v3[j];
        }
      }
      for (int64_t t = 4 * quarter; t < L; ++t)
        for (int64_t g = 0; g < groups; ++g) {
          const float pt = p[g * L + t];
          float* og = o + g * d;
#pragma omp simd
          for (int64_t j = 0; j < d; ++j) og[j] += pt * v[t * d + j];
        }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(monovl_decode, m) {
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor", &linear);
  m.def("linear_add_(Tensor(a!) out, Tensor x, Tensor weight, Tensor? bias) -> ()", &linear_add_);
  m.def("swiglu(Tensor x, Tensor w1, Tensor w3) -> Tensor", &swiglu);
  m.def("linear_int8(Tensor x, Tensor weight, Tensor scale, Tensor? bias) -> Tensor", &linear_int8);
  m.def("linear_int8_add_(Tensor(a!) out, Tensor x, Tensor weight, Tensor scale, Tensor? bias) -> ()",
        &linear_int8_add_);
  m.def("swiglu_int8(Tensor x, Tensor w1, Tensor s1, Tensor w3, Tensor s3) -> Tensor", &swiglu_int8);
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", &rms_norm);
  m.def("rope_store(Tensor(a!) qkv, Tensor cos, Tensor sin, Tensor(b!) k_cache, Tensor(c!) v_cache, int pos) -> ()",
        &rope_store);
  m.def("attend(Tensor qkv, Tensor k_cache, Tensor v_cache, int length, Tensor? mask, float scale) -> Tensor",
        &attend);
}
