// The step loops of PlainRecurrence (recurrence.py) in C++: the same buffers, the same products
// (``matmul_into`` below, which recurrence.py calls too), the same ATen kernels for sigmoid, exp
// and addcmul (which may fuse its multiply-add, depending on the CPU), and what is left, the
// clamps and the clipped leaky ReLU, as plain loops that round as ATen's kernels do
// (built with -ffp-contract=off: no multiply-add is fused where ATen's is not).
// What it removes is the fixed cost of each Python-level operation: a step here is a few
// ATen calls and some loops over contiguous slices, with no Python or per-op autograd in between.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/addcmul.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sigmoid.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <dlfcn.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

namespace {

using at::Tensor;

// ATen's at::native::mkldnn_matmul (result = beta result + alpha a @ b through oneDNN): exported by
// libtorch_cpu but declared in no installed header, so it is looked up at run time and the products
// fall back to ATen's (MKL's) where it is missing or refuses float32.
using OnednnMatmul = void (*)(const Tensor&, const Tensor&, const Tensor&, float, float);

OnednnMatmul find_onednn_matmul() {
  void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (lib == nullptr) return nullptr;
  auto fn = reinterpret_cast<OnednnMatmul>(dlsym(lib, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
  dlclose(lib);
  if (fn == nullptr) return nullptr;
  try {  // it checks the CPU and the dtype: a refusal throws
    Tensor a = at::ones({2, 2}), out = at::empty({2, 2});
    fn(a, a, out, 0.0f, 1.0f);
    const float* o = out.data_ptr<float>();
    if (o[0] != 2.0f || o[1] != 2.0f || o[2] != 2.0f || o[3] != 2.0f) return nullptr;
  } catch (const std::exception&) {
    return nullptr;
  }
  return fn;
}

OnednnMatmul onednn_matmul() {
  static const OnednnMatmul fn = find_onednn_matmul();
  return fn;
}

// C (+)= A B for row-major float32 A [M, K], B [K, N], C [M, N] (leading strides lda, ldb, ldc) with
// AVX-512: blocks of 6 rows of C by 32 columns held in 12 registers, each step over K one broadcast of
// A per row and two loads of B (masked at the edge of N). For the recurrence's per-step products
// (batch-wide N, a few million multiply-adds at most) it runs in about 60 % of oneDNN's time, whose
// fixed cost per call is most of theirs, and 40 % of MKL's.
__attribute__((target("avx512f"))) void small_gemm_avx512(const float* A, int64_t lda, const float* B, int64_t ldb,
                                                          float* C, int64_t ldc, int64_t M, int64_t K, int64_t N,
                                                          bool accumulate) {
  for (int64_t n0 = 0; n0 < N; n0 += 32) {
    const int64_t w = std::min<int64_t>(32, N - n0);
    const __mmask16 m0 = w >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1);
    const __mmask16 m1 = w >= 32 ? __mmask16(0xFFFF) : (w > 16 ? __mmask16((1u << (w - 16)) - 1) : __mmask16(0));
    int64_t i = 0;
    for (; i + 6 <= M; i += 6) {
      __m512 c[6][2];
      for (int r = 0; r < 6; ++r) {
        float* row = C + (i + r) * ldc + n0;
        c[r][0] = accumulate ? _mm512_maskz_loadu_ps(m0, row) : _mm512_setzero_ps();
        c[r][1] = accumulate ? _mm512_maskz_loadu_ps(m1, row + 16) : _mm512_setzero_ps();
      }
      const float* a = A + i * lda;
      for (int64_t k = 0; k < K; ++k) {
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, B + k * ldb + n0);
        const __m512 b1 = _mm512_maskz_loadu_ps(m1, B + k * ldb + n0 + 16);
        for (int r = 0; r < 6; ++r) {
          const __m512 av = _mm512_set1_ps(a[r * lda + k]);
          c[r][0] = _mm512_fmadd_ps(av, b0, c[r][0]);
          c[r][1] = _mm512_fmadd_ps(av, b1, c[r][1]);
        }
      }
      for (int r = 0; r < 6; ++r) {
        float* row = C + (i + r) * ldc + n0;
        _mm512_mask_storeu_ps(row, m0, c[r][0]);
        _mm512_mask_storeu_ps(row + 16, m1, c[r][1]);
      }
    }
    for (; i < M; ++i) {
      float* row = C + i * ldc + n0;
      __m512 c0 = accumulate ? _mm512_maskz_loadu_ps(m0, row) : _mm512_setzero_ps();
      __m512 c1 = accumulate ? _mm512_maskz_loadu_ps(m1, row + 16) : _mm512_setzero_ps();
      for (int64_t k = 0; k < K; ++k) {
        const __m512 av = _mm512_set1_ps(A[i * lda + k]);
        c0 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m0, B + k * ldb + n0), c0);
        c1 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m1, B + k * ldb + n0 + 16), c1);
      }
      _mm512_mask_storeu_ps(row, m0, c0);
      _mm512_mask_storeu_ps(row + 16, m1, c1);
    }
  }
}

bool has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
}

// out = a @ b (beta 0) or out += a @ b (beta 1). Float32 CPU products: below 2^22 multiply-adds with
// every operand row-major (the recurrence's per-step products) by small_gemm_avx512 where the CPU has
// AVX-512; from 2^20 multiply-adds on, the others by oneDNN, which on this kind of CPU (AVX-512) runs
// them at about twice MKL's rate (ATen calls MKL for float32, and MKL takes its AVX2 kernels on AMD
// CPUs), but costs about 10 us more per call, which smaller products do not repay; all else by ATen.
// The rule depends on the shapes, strides and CPU alone, so a product rounds the same wherever it is
// formed (the Python loops call this too).
void matmul_into(const Tensor& a, const Tensor& b, const Tensor& out, double beta) {
  TORCH_CHECK(beta == 0.0 || beta == 1.0, "matmul_into: beta must be 0 or 1");
  const int64_t macs = a.size(0) * a.size(1) * b.size(1);
  const bool large = macs >= (int64_t(1) << 20);
  const bool f32 = a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat;
  const bool row_major = a.stride(1) == 1 && b.stride(1) == 1 && out.stride(1) == 1;
  if (f32 && a.device().is_cpu() && macs < (int64_t(1) << 22) && row_major && has_avx512()) {
    TORCH_CHECK(out.size(0) == a.size(0) && out.size(1) == b.size(1) && a.size(1) == b.size(0),
                "matmul_into: shapes do not match");
    small_gemm_avx512(a.data_ptr<float>(), a.stride(0), b.data_ptr<float>(), b.stride(0), out.data_ptr<float>(),
                      out.stride(0), a.size(0), a.size(1), b.size(1), beta == 1.0);
  } else if (large && f32 && a.device().is_cpu() && onednn_matmul() != nullptr) {
    onednn_matmul()(a, b, out, static_cast<float>(beta), 1.0f);
  } else if (beta == 0.0) {
    at::mm_out(const_cast<Tensor&>(out), a, b);
  } else {
    const_cast<Tensor&>(out).addmm_(a, b);
  }
}

void check_buffer(const Tensor& x, const char* name, const Tensor& like) {
  TORCH_CHECK(x.is_contiguous(), "native loop: ", name, " must be contiguous");
  TORCH_CHECK(x.device().is_cpu(), "native loop: ", name, " must be on the CPU");
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), "native loop: ", name, " has another dtype");
}

// clamp(leaky_relu(x, slope), -bound, bound) into out, as act_into does
template <typename T>
void act_into(const T* x, T* out, int64_t n, T slope, T bound) {
  for (int64_t i = 0; i < n; ++i) {
    T v = x[i] > T(0) ? x[i] : x[i] * slope;
    out[i] = std::min(std::max(v, -bound), bound);
  }
}

// tanh(x) as 2 sigmoid(2x) - 1 into out (contiguous, n = out.numel()), as recurrence.tanh_into forms
// it: the doubling, ATen's sigmoid in place, then 2 s - 1 (and, with o, h = o tanh(x) in the same pass)
template <typename T>
void tanh_into(const T* x, Tensor& out, const T* o = nullptr, T* h = nullptr) {
  const int64_t n = out.numel();
  T* p = out.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i) p[i] = x[i] * T(2);
  at::sigmoid_(out);
  for (int64_t i = 0; i < n; ++i) p[i] = p[i] * T(2) - T(1);
  if (o != nullptr) {
    for (int64_t i = 0; i < n; ++i) h[i] = o[i] * p[i];
  }
}

// exp(logvar / 2) from n contiguous log-variances into e, as torch.exp(0.5 * logvar) forms it: the
// product into e, then ATen's exp in place
template <typename T>
void half_logvar_exp_into(const T* logvar, int64_t n, Tensor& e) {
  T* ep = e.data_ptr<T>();
  for (int64_t i = 0; i < n; ++i) ep[i] = logvar[i] * T(0.5);
  e.exp_();
}

template <typename T>
void forward_loop_impl(const Tensor& y, const Tensor& hs, const Tensor& q_raw, const Tensor& q, const Tensor& z,
                       const Tensor& noise, const Tensor& post_act, const Tensor& acts, const Tensor& cs,
                       const Tensor& tanh_cs, const Tensor& w_h, const Tensor& w_post, const Tensor& w_z,
                       double slope, double bound, c10::optional<double> clamp, bool keep) {
  const int64_t T_ = y.size(0), B = y.size(2), H = hs.size(1), Z = z.size(1), M = post_act.size(1);
  const int64_t HB = H * B, ZB = Z * B, MB = M * B;
  const T slope_ = static_cast<T>(slope), bound_ = static_cast<T>(bound);
  Tensor half_logvar_exp = at::empty({Z, B}, y.options());
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t k = keep ? t : 0;
    const int64_t c_in = keep ? t : t % 2, c_out = keep ? t + 1 : (t + 1) % 2;
    Tensor y_t = y.select(0, t);
    Tensor gates = y_t.narrow(0, 0, 4 * H), post_pre = y_t.narrow(0, 4 * H, M);
    Tensor h = hs.select(0, t), h_new = hs.select(0, t + 1);
    Tensor q_raw_t = q_raw.select(0, t), q_t = q.select(0, t), z_t = z.select(0, t);
    Tensor post_act_k = post_act.select(0, k), acts_k = acts.select(0, k), tanh_c = tanh_cs.select(0, k);
    // y_t += [W_hh; W_qh] h_{t-1}
    matmul_into(w_h, h, y_t, 1.0);
    // the posterior: q_raw_t += W_2 act(y_t[4H:]); q_t = clamp(q_raw_t); z_t = mean + exp(logvar / 2) noise
    act_into<T>(post_pre.data_ptr<T>(), post_act_k.data_ptr<T>(), MB, slope_, bound_);
    matmul_into(w_post, post_act_k, q_raw_t, 1.0);
    if (clamp.has_value()) {
      const T c = static_cast<T>(*clamp);
      const T* src = q_raw_t.data_ptr<T>();
      T* dst = q_t.data_ptr<T>();
      for (int64_t i = 0; i < 2 * ZB; ++i) dst[i] = std::min(std::max(src[i], -c), c);
    }
    half_logvar_exp_into<T>(q_t.data_ptr<T>() + ZB, ZB, half_logvar_exp);
    at::addcmul_out(z_t, q_t.narrow(0, 0, Z), half_logvar_exp, noise.select(0, t));
    // the gates: y_t[:4H] += W_z z_t, then the LSTM update (each tanh as tanh_into: 2 sigmoid(2x) - 1)
    matmul_into(w_z, z_t, gates, 1.0);
    at::sigmoid_out(acts_k, gates);
    Tensor g_act = acts_k.narrow(0, 2 * H, H);
    tanh_into<T>(gates.data_ptr<T>() + 2 * HB, g_act);
    const T* a = acts_k.data_ptr<T>();
    const T *fg = a + HB, *og = a + 3 * HB;
    const T* c_prev = cs.select(0, c_in).data_ptr<T>();
    Tensor c_new_t = cs.select(0, c_out);
    T* c_new = c_new_t.data_ptr<T>();
    for (int64_t i = 0; i < HB; ++i) c_new[i] = fg[i] * c_prev[i];
    c_new_t.addcmul_(acts_k.narrow(0, 0, H), g_act);
    tanh_into<T>(c_new, tanh_c, og, h_new.data_ptr<T>());
  }
}

void forward_loop(const Tensor& y, const Tensor& hs, const Tensor& q_raw, const Tensor& q, const Tensor& z,
                  const Tensor& noise, const Tensor& post_act, const Tensor& acts, const Tensor& cs,
                  const Tensor& tanh_cs, const Tensor& w_h, const Tensor& w_post, const Tensor& w_z, double slope,
                  double bound, c10::optional<double> clamp, bool keep) {
  for (auto [x, name] : std::vector<std::pair<const Tensor*, const char*>>{
           {&y, "y"}, {&hs, "hs"}, {&q_raw, "q_raw"}, {&q, "q"}, {&z, "z"}, {&noise, "noise"},
           {&post_act, "post_act"}, {&acts, "acts"}, {&cs, "cs"}, {&tanh_cs, "tanh_cs"}, {&w_h, "w_h"},
           {&w_post, "w_post"}, {&w_z, "w_z"}}) {
    check_buffer(*x, name, y);
  }
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "zf_native_forward_loop", [&] {
    forward_loop_impl<scalar_t>(y, hs, q_raw, q, z, noise, post_act, acts, cs, tanh_cs, w_h, w_post, w_z, slope,
                                bound, clamp, keep);
  });
}

// The gates' gradients of the LSTM update's backward pass (lstm_factors, lstm_backward_into):
// g i (1 - i) dc, c_prev f (1 - f) dc, i (1 - g^2) dc, tanh(c) o (1 - o) dh, then dc *= f. The
// buffers are distinct: restrict lets the loop vectorize (with this many pointers the compiler
// does not version it for overlaps).
template <typename T>
void gate_grads(int64_t n, const T* __restrict__ ig, const T* __restrict__ fg, const T* __restrict__ gg,
                const T* __restrict__ og, const T* __restrict__ cp, const T* __restrict__ tc,
                const T* __restrict__ dh, T* __restrict__ dc, T* __restrict__ di, T* __restrict__ df,
                T* __restrict__ dg, T* __restrict__ dout) {
  const T one(1);
  for (int64_t i = 0; i < n; ++i) {
    di[i] = gg[i] * ig[i] * (one - ig[i]) * dc[i];
    df[i] = cp[i] * fg[i] * (one - fg[i]) * dc[i];
    dg[i] = ig[i] * (one - gg[i] * gg[i]) * dc[i];
    dout[i] = tc[i] * og[i] * (one - og[i]) * dh[i];
    dc[i] = dc[i] * fg[i];
  }
}

// The backward pass's loop (recurrence.py's _backward_steps), with the pointwise derivatives that
// the Python pass forms for all steps before its loop (lstm_factors, clipped_leaky_relu_grad,
// posterior_factors) formed here step by step, by the same operations in the same order.
template <typename T>
void backward_loop_impl(const Tensor& d_y, const Tensor& d_h_all, const Tensor& d_z_all, const Tensor& d_q_raw,
                        const Tensor& y, const Tensor& acts, const Tensor& cs, const Tensor& tanh_cs, const Tensor& q,
                        const Tensor& q_raw, const Tensor& noise, const Tensor& w_h_t, const Tensor& w_post_t,
                        const Tensor& w_z_t, double slope, double bound, c10::optional<double> clamp) {
  const int64_t T_ = d_y.size(0), B = d_y.size(2), H = d_h_all.size(1), Z = d_z_all.size(1);
  const int64_t M = d_y.size(1) - 4 * H;
  const int64_t HB = H * B, ZB = Z * B, MB = M * B;
  const T one(1), slope_(static_cast<T>(slope)), bound_(static_cast<T>(bound));
  Tensor dc_t = at::zeros({H, B}, d_y.options());
  Tensor dc_factor = at::empty({H, B}, d_y.options());
  Tensor scale_t = at::empty({2, Z, B}, d_y.options());
  Tensor half_logvar_exp = at::empty({Z, B}, d_y.options());
  T* dc = dc_t.data_ptr<T>();
  T* dcf = dc_factor.data_ptr<T>();
  T* scale = scale_t.data_ptr<T>();
  const T* e = half_logvar_exp.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    Tensor dy = d_y.select(0, t);
    Tensor d_gates = dy.narrow(0, 0, 4 * H), d_post = dy.narrow(0, 4 * H, M);
    Tensor dz_t = d_z_all.select(0, t), d_out = d_q_raw.select(0, t);
    Tensor dh_t = d_h_all.select(0, t + 1);
    const T* dh = dh_t.data_ptr<T>();
    const T* a = acts.select(0, t).data_ptr<T>();
    const T *ig = a, *fg = a + HB, *gg = a + 2 * HB, *og = a + 3 * HB;
    const T* c_prev = cs.select(0, t).data_ptr<T>();
    const T* tc = tanh_cs.select(0, t).data_ptr<T>();
    T* dg = d_gates.data_ptr<T>();
    // the LSTM update (lstm_factors, lstm_backward_into): dc += dh o (1 - tanh(c)^2); the gates'
    // gradients g i (1 - i) dc, c_prev f (1 - f) dc, i (1 - g^2) dc, tanh(c) o (1 - o) dh; dc *= f
    for (int64_t i = 0; i < HB; ++i) dcf[i] = og[i] * (one - tc[i] * tc[i]);
    dc_t.addcmul_(dh_t, dc_factor);
    gate_grads<T>(HB, ig, fg, gg, og, c_prev, tc, dh, dc, dg, dg + HB, dg + 2 * HB, dg + 3 * HB);
    // dz_t += W_z^T d_gates; d q_raw_t += scale [dz_t; dz_t] with scale = [1; noise exp(logvar / 2) / 2],
    // zero where the clamp held q_raw (posterior_factors)
    matmul_into(w_z_t, d_gates, dz_t, 1.0);
    half_logvar_exp_into<T>(q.select(0, t).data_ptr<T>() + ZB, ZB, half_logvar_exp);
    const T* eps = noise.select(0, t).data_ptr<T>();
    for (int64_t i = 0; i < ZB; ++i) {
      scale[i] = one;
      scale[ZB + i] = eps[i] * e[i] * T(0.5);
    }
    if (clamp.has_value()) {
      const T c = static_cast<T>(*clamp);
      const T* raw = q_raw.select(0, t).data_ptr<T>();
      for (int64_t i = 0; i < 2 * ZB; ++i) scale[i] = scale[i] * T(raw[i] >= -c && raw[i] <= c);
    }
    d_out.view({2, Z, B}).addcmul_(scale_t, dz_t);
    // the posterior's first layer: d_post = (W_2^T d q_raw_t) act'(y_t[4H:]) (clipped_leaky_relu_grad)
    matmul_into(w_post_t, d_out, d_post, 0.0);
    T* dp = d_post.data_ptr<T>();
    const T* pre = y.select(0, t).data_ptr<T>() + 4 * HB;
    for (int64_t i = 0; i < MB; ++i) {
      const T leaky = pre[i] > T(0) ? pre[i] : pre[i] * slope_;
      const T grad = (pre[i] > T(0) ? one : slope_) * T(leaky >= -bound_ && leaky <= bound_);
      dp[i] = dp[i] * grad;
    }
    if (t > 0) {  // h_0 is the constant zero state: its gradient is not needed
      matmul_into(w_h_t, dy, d_h_all.select(0, t), 1.0);
    }
  }
}

void backward_loop(const Tensor& d_y, const Tensor& d_h_all, const Tensor& d_z_all, const Tensor& d_q_raw,
                   const Tensor& y, const Tensor& acts, const Tensor& cs, const Tensor& tanh_cs, const Tensor& q,
                   const Tensor& q_raw, const Tensor& noise, const Tensor& w_h_t, const Tensor& w_post_t,
                   const Tensor& w_z_t, double slope, double bound, c10::optional<double> clamp) {
  for (auto [x, name] : std::vector<std::pair<const Tensor*, const char*>>{
           {&d_y, "d_y"}, {&d_h_all, "d_h_all"}, {&d_z_all, "d_z_all"}, {&d_q_raw, "d_q_raw"}, {&y, "y"},
           {&acts, "acts"}, {&cs, "cs"}, {&tanh_cs, "tanh_cs"}, {&q, "q"}, {&q_raw, "q_raw"}, {&noise, "noise"},
           {&w_h_t, "w_h_t"}, {&w_post_t, "w_post_t"}, {&w_z_t, "w_z_t"}}) {
    check_buffer(*x, name, d_y);
  }
  AT_DISPATCH_FLOATING_TYPES(d_y.scalar_type(), "zf_native_backward_loop", [&] {
    backward_loop_impl<scalar_t>(d_y, d_h_all, d_z_all, d_q_raw, y, acts, cs, tanh_cs, q, q_raw, noise, w_h_t,
                                 w_post_t, w_z_t, slope, bound, clamp);
  });
}

// The Gaussian negative log-density's elementwise parts (distributions._GaussianNLL), one pass each
// instead of five ATen passes: the forward's per-element terms (log 2 pi + logvar) + (x - mean)^2 e,
// with e = exp(-logvar) formed by ATen beforehand and the sum over the last dimension by ATen
// afterwards, and the backward's gradients, each rounding step as the ATen expression it replaces.
// Tensors are [N, R, D] with unit stride along D (any strides along N and R).
template <typename T>
void gaussian_terms_impl(const Tensor& x, const Tensor& mean, const Tensor& logvar, const Tensor& inv,
                         const Tensor& out, double log_2pi) {
  const int64_t N = x.size(0), R = x.size(1), D = x.size(2);
  const T c = static_cast<T>(log_2pi);
  const T *xp = x.data_ptr<T>(), *mp = mean.data_ptr<T>(), *lp = logvar.data_ptr<T>(), *ep = inv.data_ptr<T>();
  T* op = out.data_ptr<T>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const T* xr = xp + n * x.stride(0) + r * x.stride(1);
      const T* mr = mp + n * mean.stride(0) + r * mean.stride(1);
      const T* lr = lp + n * logvar.stride(0) + r * logvar.stride(1);
      const T* er = ep + n * inv.stride(0) + r * inv.stride(1);
      T* o = op + n * out.stride(0) + r * out.stride(1);
      for (int64_t i = 0; i < D; ++i) {
        const T diff = xr[i] - mr[i];
        const T square = diff * diff;
        o[i] = (lr[i] + c) + square * er[i];
      }
    }
  }
}

// d mean = (-g e) (x - mean), d logvar = g/2 - (g/2 (x - mean)^2) e, for g [N, R] (e = exp(-logvar))
template <typename T>
void gaussian_backward_impl(const Tensor& grad, const Tensor& x, const Tensor& mean, const Tensor& inv,
                            const Tensor& d_mean, const Tensor& d_logvar) {
  const int64_t N = x.size(0), R = x.size(1), D = x.size(2);
  const T *gp = grad.data_ptr<T>(), *xp = x.data_ptr<T>(), *mp = mean.data_ptr<T>(), *ep = inv.data_ptr<T>();
  T *dmp = d_mean.data_ptr<T>(), *dlp = d_logvar.data_ptr<T>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const T g = gp[n * grad.stride(0) + r * grad.stride(1)];
      const T neg_g = -g, half = g * T(0.5);
      const T* xr = xp + n * x.stride(0) + r * x.stride(1);
      const T* mr = mp + n * mean.stride(0) + r * mean.stride(1);
      const T* er = ep + n * inv.stride(0) + r * inv.stride(1);
      T* dm = dmp + n * d_mean.stride(0) + r * d_mean.stride(1);
      T* dl = dlp + n * d_logvar.stride(0) + r * d_logvar.stride(1);
      for (int64_t i = 0; i < D; ++i) {
        const T diff = xr[i] - mr[i];
        dm[i] = (neg_g * er[i]) * diff;
        dl[i] = half - (half * (diff * diff)) * er[i];
      }
    }
  }
}

void check_rows(const Tensor& t, const char* name, const Tensor& like) {
  TORCH_CHECK(t.dim() == 3 && t.stride(2) == 1, "gaussian kernels: ", name, " must be [N, R, D] with unit stride along D");
  TORCH_CHECK(t.sizes() == like.sizes(), "gaussian kernels: ", name, " has another shape");
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type(), "gaussian kernels: ", name,
              " must be a CPU tensor of the same dtype");
}

void gaussian_terms(const Tensor& x, const Tensor& mean, const Tensor& logvar, const Tensor& inv, const Tensor& out,
                    double log_2pi) {
  for (auto [t, name] : std::vector<std::pair<const Tensor*, const char*>>{
           {&x, "x"}, {&mean, "mean"}, {&logvar, "logvar"}, {&inv, "inv"}, {&out, "out"}}) {
    check_rows(*t, name, x);
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "zf_native_gaussian_terms", [&] {
    gaussian_terms_impl<scalar_t>(x, mean, logvar, inv, out, log_2pi);
  });
}

void gaussian_backward(const Tensor& grad, const Tensor& x, const Tensor& mean, const Tensor& inv,
                       const Tensor& d_mean, const Tensor& d_logvar) {
  for (auto [t, name] : std::vector<std::pair<const Tensor*, const char*>>{
           {&x, "x"}, {&mean, "mean"}, {&inv, "inv"}, {&d_mean, "d_mean"}, {&d_logvar, "d_logvar"}}) {
    check_rows(*t, name, x);
  }
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1) &&
                  grad.scalar_type() == x.scalar_type() && grad.device().is_cpu(),
              "gaussian kernels: grad must be [N, R] like x");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "zf_native_gaussian_backward", [&] {
    gaussian_backward_impl<scalar_t>(grad, x, mean, inv, d_mean, d_logvar);
  });
}

// The latent terms of one posterior path (latent.py's _LatentDensities), per step [N, R] over the
// latent dimensions D, zero where mask[n, r] is not positive: KL(q || p), log p(z) and log q(z) for
// diagonal Gaussians q = N(mq, e^lvq), p = N(mp, e^lvp), in one pass over the five inputs (each
// [N, R, D], unit stride along D), where the plain expressions take some thirty ATen passes and
// autograd nodes. e^-lvp and e^-lvq are ATen's exp (kept for the backward pass), e^(lvq - lvp) is
// their ratio.
template <typename T>
void latent_forward_impl(const Tensor& z, const Tensor& mq, const Tensor& lvq, const Tensor& mp, const Tensor& lvp,
                         const Tensor& mask, const Tensor& inv_q, const Tensor& inv_p, const Tensor& kl,
                         const Tensor& log_p, const Tensor& log_q, double log_2pi) {
  const int64_t N = z.size(0), R = z.size(1), D = z.size(2);
  const T c = static_cast<T>(log_2pi), half(0.5), one(1);
  T* iq = inv_q.data_ptr<T>();
  T* ip = inv_p.data_ptr<T>();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const T* a = lvq.data_ptr<T>() + n * lvq.stride(0) + r * lvq.stride(1);
      const T* b = lvp.data_ptr<T>() + n * lvp.stride(0) + r * lvp.stride(1);
      T* eq = iq + (n * R + r) * D;
      T* ep = ip + (n * R + r) * D;
      for (int64_t i = 0; i < D; ++i) {
        eq[i] = -a[i];
        ep[i] = -b[i];
      }
    }
  }
  inv_q.exp_();
  inv_p.exp_();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t o = n * kl.stride(0) + r * kl.stride(1);
      if (!(mask.data_ptr<T>()[n * mask.stride(0) + r * mask.stride(1)] > T(0))) {
        kl.data_ptr<T>()[o] = log_p.data_ptr<T>()[o] = log_q.data_ptr<T>()[o] = T(0);
        continue;
      }
      const T* zr = z.data_ptr<T>() + n * z.stride(0) + r * z.stride(1);
      const T* mqr = mq.data_ptr<T>() + n * mq.stride(0) + r * mq.stride(1);
      const T* lqr = lvq.data_ptr<T>() + n * lvq.stride(0) + r * lvq.stride(1);
      const T* mpr = mp.data_ptr<T>() + n * mp.stride(0) + r * mp.stride(1);
      const T* lpr = lvp.data_ptr<T>() + n * lvp.stride(0) + r * lvp.stride(1);
      const T* eq = iq + (n * R + r) * D;
      const T* ep = ip + (n * R + r) * D;
      T sk(0), sp(0), sq(0);
      for (int64_t i = 0; i < D; ++i) {
        const T dm = mqr[i] - mpr[i], dp = zr[i] - mpr[i], dq = zr[i] - mqr[i];
        sk += lpr[i] - lqr[i] + ep[i] / eq[i] + dm * dm * ep[i] - one;
        sp += c + lpr[i] + dp * dp * ep[i];
        sq += c + lqr[i] + dq * dq * eq[i];
      }
      kl.data_ptr<T>()[o] = half * sk;
      log_p.data_ptr<T>()[o] = -half * sp;
      log_q.data_ptr<T>()[o] = -half * sq;
    }
  }
}

// Their gradients from gk, gp, gq [N, R] (the incoming gradients of KL, log p(z), log q(z); an
// undefined one counts as zero), zero where the mask is not: into d_mq, d_lvq, d_mp, d_lvp and d_z
// ([N, R, D] contiguous; d_z may be undefined when neither log-density has a gradient).
template <typename T>
void latent_backward_impl(const Tensor& gk, const Tensor& gp, const Tensor& gq, const Tensor& z, const Tensor& mq,
                          const Tensor& mp, const Tensor& mask, const Tensor& inv_q, const Tensor& inv_p,
                          const Tensor& d_mq, const Tensor& d_lvq, const Tensor& d_mp, const Tensor& d_lvp,
                          const Tensor& d_z) {
  const int64_t N = z.size(0), R = z.size(1), D = z.size(2);
  const T half(0.5), one(1), zero(0);
  const bool has_k = gk.defined(), has_p = gp.defined(), has_q = gq.defined(), has_z = d_z.defined();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const int64_t row = (n * R + r) * D;
      T* dmq = d_mq.data_ptr<T>() + row;
      T* dlq = d_lvq.data_ptr<T>() + row;
      T* dmp = d_mp.data_ptr<T>() + row;
      T* dlp = d_lvp.data_ptr<T>() + row;
      T* dz = has_z ? d_z.data_ptr<T>() + row : nullptr;
      if (!(mask.data_ptr<T>()[n * mask.stride(0) + r * mask.stride(1)] > T(0))) {  // padding: no gradient
        std::fill(dmq, dmq + D, zero);
        std::fill(dlq, dlq + D, zero);
        std::fill(dmp, dmp + D, zero);
        std::fill(dlp, dlp + D, zero);
        if (has_z) std::fill(dz, dz + D, zero);
        continue;
      }
      const T k = has_k ? gk.data_ptr<T>()[n * gk.stride(0) + r * gk.stride(1)] : zero;
      const T p = has_p ? gp.data_ptr<T>()[n * gp.stride(0) + r * gp.stride(1)] : zero;
      const T q = has_q ? gq.data_ptr<T>()[n * gq.stride(0) + r * gq.stride(1)] : zero;
      const T* zr = z.data_ptr<T>() + n * z.stride(0) + r * z.stride(1);
      const T* mqr = mq.data_ptr<T>() + n * mq.stride(0) + r * mq.stride(1);
      const T* mpr = mp.data_ptr<T>() + n * mp.stride(0) + r * mp.stride(1);
      const T* eq = inv_q.data_ptr<T>() + row;
      const T* ep = inv_p.data_ptr<T>() + row;
      for (int64_t i = 0; i < D; ++i) {
        const T dm = mqr[i] - mpr[i], dp = zr[i] - mpr[i], dq = zr[i] - mqr[i];
        const T ratio = ep[i] / eq[i], pull_p = dp * ep[i], pull_q = dq * eq[i];
        dmq[i] = k * dm * ep[i] + q * pull_q;
        dmp[i] = p * pull_p - k * dm * ep[i];
        dlp[i] = half * k * (one - ratio - dm * dm * ep[i]) - half * p * (one - dp * pull_p);
        dlq[i] = half * k * (ratio - one) - half * q * (one - dq * pull_q);
        if (has_z) dz[i] = -(p * pull_p + q * pull_q);
      }
    }
  }
}

void latent_forward(const Tensor& z, const Tensor& mq, const Tensor& lvq, const Tensor& mp, const Tensor& lvp,
                    const Tensor& mask, const Tensor& inv_q, const Tensor& inv_p, const Tensor& kl, const Tensor& log_p,
                    const Tensor& log_q, double log_2pi) {
  for (auto [t, name] : std::vector<std::pair<const Tensor*, const char*>>{
           {&z, "z"}, {&mq, "mean_q"}, {&lvq, "logvar_q"}, {&mp, "mean_p"}, {&lvp, "logvar_p"}}) {
    check_rows(*t, name, z);
  }
  check_buffer(inv_q, "inv_q", z);
  check_buffer(inv_p, "inv_p", z);
  for (const Tensor* t : {&mask, &kl, &log_p, &log_q}) {
    TORCH_CHECK(t->dim() == 2 && t->size(0) == z.size(0) && t->size(1) == z.size(1) &&
                    t->scalar_type() == z.scalar_type() && t->device().is_cpu(),
                "latent terms: the mask and the terms must be [N, R] like z");
  }
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "zf_native_latent_forward", [&] {
    latent_forward_impl<scalar_t>(z, mq, lvq, mp, lvp, mask, inv_q, inv_p, kl, log_p, log_q, log_2pi);
  });
}

void latent_backward(const c10::optional<Tensor>& gk, const c10::optional<Tensor>& gp,
                     const c10::optional<Tensor>& gq, const Tensor& z, const Tensor& mq, const Tensor& mp,
                     const Tensor& mask, const Tensor& inv_q, const Tensor& inv_p, const Tensor& d_mq,
                     const Tensor& d_lvq, const Tensor& d_mp, const Tensor& d_lvp, const c10::optional<Tensor>& d_z) {
  for (const Tensor* t : {&d_mq, &d_lvq, &d_mp, &d_lvp, &inv_q, &inv_p}) check_buffer(*t, "latent gradient", z);
  for (const c10::optional<Tensor>* g : {&gk, &gp, &gq}) {
    TORCH_CHECK(!g->has_value() || ((*g)->dim() == 2 && (*g)->size(0) == z.size(0) && (*g)->size(1) == z.size(1) &&
                                    (*g)->scalar_type() == z.scalar_type()),
                "latent terms: the incoming gradients must be [N, R] like z");
  }
  if (d_z.has_value()) check_buffer(*d_z, "d_z", z);
  const Tensor none;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "zf_native_latent_backward", [&] {
    latent_backward_impl<scalar_t>(gk.value_or(none), gp.value_or(none), gq.value_or(none), z, mq, mp, mask, inv_q,
                                   inv_p, d_mq, d_lvq, d_mp, d_lvp, d_z.value_or(none));
  });
}

// -log N(x; tanh(mean), e^lv) summed over D, with [mean; lv] = clamp(params) (distributions'
// _TanhGaussianNLL: Z-Forcing's auxiliary cost on its head's output), per row [N, R]: params
// [N, R, 2D] and x [N, R, D], unit stride along the last dimension. The clamp, tanh, the density and
// the sum in two passes around ATen's sigmoid and exp (tanh as 2 sigmoid(2m) - 1, as sigmoid_tanh
// forms it), where the plain expressions take a dozen passes and autograd nodes. Kept for the
// backward pass: tanh(mean) in th and e^-lv in inv ([N, R, D] contiguous).
template <typename T>
void tanh_gaussian_forward_impl(const Tensor& params, const Tensor& x, c10::optional<double> clamp, const Tensor& th,
                                const Tensor& inv, const Tensor& out, double log_2pi) {
  const int64_t N = x.size(0), R = x.size(1), D = x.size(2);
  const bool clamped = clamp.has_value();
  const T c = clamped ? static_cast<T>(*clamp) : T(0), l2p = static_cast<T>(log_2pi), two(2), one(1), half(0.5);
  auto clip = [&](T v) { return clamped ? std::min(std::max(v, -c), c) : v; };
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const T* p = params.data_ptr<T>() + n * params.stride(0) + r * params.stride(1);
      T* t = th.data_ptr<T>() + (n * R + r) * D;
      T* e = inv.data_ptr<T>() + (n * R + r) * D;
      for (int64_t i = 0; i < D; ++i) {
        t[i] = clip(p[i]) * two;
        e[i] = -clip(p[D + i]);
      }
    }
  }
  th.sigmoid_();
  inv.exp_();
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const T* p = params.data_ptr<T>() + n * params.stride(0) + r * params.stride(1);
      const T* xr = x.data_ptr<T>() + n * x.stride(0) + r * x.stride(1);
      T* t = th.data_ptr<T>() + (n * R + r) * D;
      const T* e = inv.data_ptr<T>() + (n * R + r) * D;
      T sum(0);
      for (int64_t i = 0; i < D; ++i) {
        t[i] = t[i] * two - one;
        const T diff = xr[i] - t[i];
        sum += (clip(p[D + i]) + l2p) + diff * diff * e[i];
      }
      out.data_ptr<T>()[n * out.stride(0) + r * out.stride(1)] = half * sum;
    }
  }
}

// The gradient of params from g [N, R]: d mean = -g e^-lv (x - tanh(mean)) (1 - tanh(mean)^2),
// d lv = g/2 (1 - (x - tanh(mean))^2 e^-lv), each zero where the clamp held the parameter (its clamped
// value differs from it, NaN included), into d_params [N, R, 2D] contiguous.
template <typename T>
void tanh_gaussian_backward_impl(const Tensor& grad, const Tensor& params, const Tensor& x,
                                 c10::optional<double> clamp, const Tensor& th, const Tensor& inv,
                                 const Tensor& d_params) {
  const int64_t N = x.size(0), R = x.size(1), D = x.size(2);
  const bool clamped = clamp.has_value();
  const T c = clamped ? static_cast<T>(*clamp) : T(0), one(1), half(0.5), zero(0);
  auto free = [&](T v) { return !clamped || std::min(std::max(v, -c), c) == v; };
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t r = 0; r < R; ++r) {
      const T g = grad.data_ptr<T>()[n * grad.stride(0) + r * grad.stride(1)];
      const T* p = params.data_ptr<T>() + n * params.stride(0) + r * params.stride(1);
      const T* xr = x.data_ptr<T>() + n * x.stride(0) + r * x.stride(1);
      const T* t = th.data_ptr<T>() + (n * R + r) * D;
      const T* e = inv.data_ptr<T>() + (n * R + r) * D;
      T* dm = d_params.data_ptr<T>() + (n * R + r) * 2 * D;
      T* dl = dm + D;
      for (int64_t i = 0; i < D; ++i) {
        const T diff = xr[i] - t[i];
        dm[i] = free(p[i]) ? -g * e[i] * diff * (one - t[i] * t[i]) : zero;
        dl[i] = free(p[D + i]) ? half * g * (one - diff * diff * e[i]) : zero;
      }
    }
  }
}

void tanh_gaussian_forward(const Tensor& params, const Tensor& x, c10::optional<double> clamp, const Tensor& th,
                           const Tensor& inv, const Tensor& out, double log_2pi) {
  TORCH_CHECK(params.dim() == 3 && params.stride(2) == 1 && params.size(0) == x.size(0) &&
                  params.size(1) == x.size(1) && params.size(2) == 2 * x.size(2) &&
                  params.scalar_type() == x.scalar_type() && params.device().is_cpu(),
              "tanh Gaussian: params must be [N, R, 2D] like x, with unit stride along the last dimension");
  check_rows(x, "x", x);
  check_buffer(th, "th", x);
  check_buffer(inv, "inv", x);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == x.size(0) && out.size(1) == x.size(1) &&
                  out.scalar_type() == x.scalar_type(),
              "tanh Gaussian: out must be [N, R] like x");
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "zf_native_tanh_gaussian_forward", [&] {
    tanh_gaussian_forward_impl<scalar_t>(params, x, clamp, th, inv, out, log_2pi);
  });
}

void tanh_gaussian_backward(const Tensor& grad, const Tensor& params, const Tensor& x, c10::optional<double> clamp,
                            const Tensor& th, const Tensor& inv, const Tensor& d_params) {
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1) &&
                  grad.scalar_type() == x.scalar_type(),
              "tanh Gaussian: grad must be [N, R] like x");
  check_buffer(d_params, "d_params", x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "zf_native_tanh_gaussian_backward", [&] {
    tanh_gaussian_backward_impl<scalar_t>(grad, params, x, clamp, th, inv, d_params);
  });
}

}  // namespace

TORCH_LIBRARY(zf_native, m) {
  m.def("forward_loop", &forward_loop);
  m.def("backward_loop", &backward_loop);
  m.def("gaussian_terms", &gaussian_terms);
  m.def("gaussian_backward", &gaussian_backward);
  m.def("matmul_into", &matmul_into);
  m.def("latent_forward", &latent_forward);
  m.def("latent_backward", &latent_backward);
  m.def("tanh_gaussian_forward", &tanh_gaussian_forward);
  m.def("tanh_gaussian_backward", &tanh_gaussian_backward);
}
