// The step loops of PlainRecurrence (recurrence.py) in C++: the same buffers, the same products
// (ATen's addmm_/mm_out, so the same BLAS calls), the same ATen kernels for sigmoid and exp,
// and what is left, the elementwise products and sums, clamps and the clipped leaky ReLU, as
// plain loops that round as ATen's kernels do
// (built with -ffp-contract=off: no multiply-add is fused where ATen's is not).
// What it removes is the fixed cost of each Python-level operation: a step here is a few
// ATen calls and some loops over contiguous slices, with no Python or per-op autograd in between.
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sigmoid.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

using at::Tensor;

void check_buffer(const Tensor& x, const char* name, const Tensor& like) {
  TORCH_CHECK(x.is_contiguous(), "native loop: ", name, " must be contiguous");
  TORCH_CHECK(x.device().is_cpu(), "native loop: ", name, " must be on the CPU");
  TORCH_CHECK(x.scalar_type() == like.scalar_type(), "native loop: ", name, " has another dtype");
}

// Buffers are [T, B, features] (each step's [B, features] slice contiguous); a gate's or a part's
// columns of a step are a block of B rows `ld` apart (ld: the buffer's row length).

// clamp(leaky_relu(x, slope), -bound, bound) for B rows of n values (x's `ld` apart) into out, as act_into does
template <typename T>
void act_row(const T* __restrict__ x, T* __restrict__ out, int64_t n, T slope, T bound) {
  for (int64_t i = 0; i < n; ++i) {  // both sides formed, then selected: the loop vectorizes
    const T scaled = x[i] * slope;
    const T v = x[i] > T(0) ? x[i] : scaled;
    out[i] = std::min(std::max(v, -bound), bound);
  }
}

template <typename T>
void act_into(const T* x, int64_t ld, T* out, int64_t B, int64_t n, T slope, T bound) {
  for (int64_t b = 0; b < B; ++b) act_row<T>(x + b * ld, out + b * n, n, slope, bound);
}

// d *= act'(pre) for the clipped leaky ReLU (clipped_leaky_relu_grad: torch's conventions at the kinks)
template <typename T>
void act_grad_row(const T* __restrict__ pre, T* __restrict__ d, int64_t n, T slope, T bound) {
  const T one(1);
  for (int64_t i = 0; i < n; ++i) {  // both sides formed, then selected: the loop vectorizes
    const T scaled = pre[i] * slope;
    const bool positive = pre[i] > T(0);
    const T leaky = positive ? pre[i] : scaled;
    const T inside = (leaky >= -bound) & (leaky <= bound) ? one : T(0);
    const T grad = (positive ? one : slope) * inside;
    d[i] = d[i] * grad;
  }
}

// tanh(x) as 2 sigmoid(2x) - 1, as recurrence.tanh_into forms it: the doubling into `out` (B rows
// of n values, `ld_out` apart; x's `ld_x` apart), ATen's sigmoid in place on `out`, then 2 s - 1
template <typename T>
void tanh_into(const T* x, int64_t ld_x, Tensor& out, int64_t ld_out, int64_t B, int64_t n) {
  T* p = out.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) p[b * ld_out + i] = x[b * ld_x + i] * T(2);
  }
  at::sigmoid_(out);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < n; ++i) p[b * ld_out + i] = p[b * ld_out + i] * T(2) - T(1);
  }
}

// exp(logvar / 2) of a step's posterior output q_t [B, 2Z] (its last Z columns) into e [B, Z], as
// torch.exp(0.5 * logvar) forms it: the product into a contiguous tensor, then ATen's exp in place
template <typename T>
void half_logvar_exp_into(const T* q_t, int64_t B, int64_t Z, Tensor& e) {
  T* ep = e.data_ptr<T>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t i = 0; i < Z; ++i) ep[b * Z + i] = q_t[b * 2 * Z + Z + i] * T(0.5);
  }
  e.exp_();
}

template <typename T>
void forward_loop_impl(const Tensor& y, const Tensor& hs, const Tensor& q_raw, const Tensor& q, const Tensor& z,
                       const Tensor& noise, const Tensor& post_act, const Tensor& acts, const Tensor& cs,
                       const Tensor& tanh_cs, const Tensor& w_h_t, const Tensor& w_post_t, const Tensor& w_z_t,
                       double slope, double bound, c10::optional<double> clamp, bool keep) {
  const int64_t T_ = y.size(0), B = y.size(1), W = y.size(2), H = hs.size(2), Z = z.size(2), M = post_act.size(2);
  const int64_t G = 4 * H;
  const T slope_ = static_cast<T>(slope), bound_ = static_cast<T>(bound);
  Tensor half_logvar_exp = at::empty({B, Z}, y.options());
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t k = keep ? t : 0;
    const int64_t c_in = keep ? t : t % 2, c_out = keep ? t + 1 : (t + 1) % 2;
    Tensor y_t = y.select(0, t);
    Tensor gates = y_t.narrow(1, 0, G);
    Tensor q_raw_t = q_raw.select(0, t), q_t = q.select(0, t), z_t = z.select(0, t);
    Tensor post_act_k = post_act.select(0, k), acts_k = acts.select(0, k), tanh_c = tanh_cs.select(0, k);
    T* yp = y_t.data_ptr<T>();
    // y_t += h_{t-1} [W_hh; W_qh]^T
    y_t.addmm_(hs.select(0, t), w_h_t);
    // the posterior: q_raw_t += act(y_t[:, 4H:]) W_2^T; q_t = clamp(q_raw_t); z_t = mean + exp(logvar / 2) noise
    act_into<T>(yp + G, W, post_act_k.data_ptr<T>(), B, M, slope_, bound_);
    q_raw_t.addmm_(post_act_k, w_post_t);
    if (clamp.has_value()) {
      const T c = static_cast<T>(*clamp);
      const T* src = q_raw_t.data_ptr<T>();
      T* dst = q_t.data_ptr<T>();
      for (int64_t i = 0; i < B * 2 * Z; ++i) dst[i] = std::min(std::max(src[i], -c), c);
    }
    half_logvar_exp_into<T>(q_t.data_ptr<T>(), B, Z, half_logvar_exp);
    {
      const T* qp = q_t.data_ptr<T>();
      const T* eps = noise.select(0, t).data_ptr<T>();
      const T* e = half_logvar_exp.data_ptr<T>();
      T* zp = z_t.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t i = 0; i < Z; ++i) zp[b * Z + i] = e[b * Z + i] * eps[b * Z + i] + qp[b * 2 * Z + i];
      }
    }
    // the gates: y_t[:, :4H] += z_t (W_iz A)^T, then the LSTM update
    gates.addmm_(z_t, w_z_t);
    at::sigmoid_out(acts_k, gates);
    Tensor g_act = acts_k.narrow(1, 2 * H, H);
    tanh_into<T>(yp + 2 * H, W, g_act, G, B, H);
    const T* a = acts_k.data_ptr<T>();
    const T* c_prev = cs.select(0, c_in).data_ptr<T>();
    Tensor c_new_t = cs.select(0, c_out);
    T* c_new = c_new_t.data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {  // f c_{t-1} + i g
      const T *ig = a + b * G, *fg = ig + H, *gg = ig + 2 * H;
      for (int64_t i = 0; i < H; ++i) {
        const T fc = fg[i] * c_prev[b * H + i], in = ig[i] * gg[i];
        c_new[b * H + i] = fc + in;
      }
    }
    tanh_into<T>(c_new, H, tanh_c, H, B, H);
    const T* tc = tanh_c.data_ptr<T>();
    T* hp = hs.select(0, t + 1).data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < H; ++i) hp[b * H + i] = a[b * G + 3 * H + i] * tc[b * H + i];
    }
  }
}

void forward_loop(const Tensor& y, const Tensor& hs, const Tensor& q_raw, const Tensor& q, const Tensor& z,
                  const Tensor& noise, const Tensor& post_act, const Tensor& acts, const Tensor& cs,
                  const Tensor& tanh_cs, const Tensor& w_h_t, const Tensor& w_post_t, const Tensor& w_z_t,
                  double slope, double bound, c10::optional<double> clamp, bool keep) {
  for (auto [x, name] : std::vector<std::pair<const Tensor*, const char*>>{
           {&y, "y"}, {&hs, "hs"}, {&q_raw, "q_raw"}, {&q, "q"}, {&z, "z"}, {&noise, "noise"},
           {&post_act, "post_act"}, {&acts, "acts"}, {&cs, "cs"}, {&tanh_cs, "tanh_cs"}, {&w_h_t, "w_h_t"},
           {&w_post_t, "w_post_t"}, {&w_z_t, "w_z_t"}}) {
    check_buffer(*x, name, y);
  }
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "zf_native_forward_loop", [&] {
    forward_loop_impl<scalar_t>(y, hs, q_raw, q, z, noise, post_act, acts, cs, tanh_cs, w_h_t, w_post_t, w_z_t,
                                slope, bound, clamp, keep);
  });
}

// The backward pass's loop (recurrence.py's _backward_steps), with the pointwise derivatives that
// the Python pass forms for all steps before its loop (lstm_factors, clipped_leaky_relu_grad,
// posterior_factors) formed here step by step, by the same operations in the same order.
// One batch row of the LSTM update's backward pass (lstm_factors, lstm_backward_into): the gates'
// gradients g i (1 - i) dc, c_prev f (1 - f) dc, i (1 - g^2) dc, tanh(c) o (1 - o) dh, then dc *= f.
// The buffers are distinct (restrict: the loop vectorizes without overlap checks).
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

template <typename T>
void backward_loop_impl(const Tensor& d_y, const Tensor& d_h_all, const Tensor& d_z_all, const Tensor& d_q_raw,
                        const Tensor& y, const Tensor& acts, const Tensor& cs, const Tensor& tanh_cs, const Tensor& q,
                        const Tensor& q_raw, const Tensor& noise, const Tensor& w_h, const Tensor& w_post,
                        const Tensor& w_z, double slope, double bound, c10::optional<double> clamp) {
  const int64_t T_ = d_y.size(0), B = d_y.size(1), W = d_y.size(2), H = d_h_all.size(2), Z = d_z_all.size(2);
  const int64_t G = 4 * H, M = W - G;
  const T one(1), slope_(static_cast<T>(slope)), bound_(static_cast<T>(bound));
  Tensor dc_t = at::zeros({B, H}, d_y.options());
  Tensor dc_factor = at::empty({B, H}, d_y.options());
  Tensor scale_t = at::empty({B, 2, Z}, d_y.options());
  Tensor half_logvar_exp = at::empty({B, Z}, d_y.options());
  T* dc = dc_t.data_ptr<T>();
  T* dcf = dc_factor.data_ptr<T>();
  T* scale = scale_t.data_ptr<T>();
  const T* e = half_logvar_exp.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    Tensor dy = d_y.select(0, t);
    Tensor dz_t = d_z_all.select(0, t), d_out = d_q_raw.select(0, t);
    Tensor dh_t = d_h_all.select(0, t + 1);
    const T* dh = dh_t.data_ptr<T>();
    const T* a = acts.select(0, t).data_ptr<T>();
    const T* c_prev = cs.select(0, t).data_ptr<T>();
    const T* tc = tanh_cs.select(0, t).data_ptr<T>();
    T* dg = dy.data_ptr<T>();
    // the LSTM update (lstm_factors, lstm_backward_into): dc += dh o (1 - tanh(c)^2); the gates'
    // gradients g i (1 - i) dc, c_prev f (1 - f) dc, i (1 - g^2) dc, tanh(c) o (1 - o) dh; dc *= f
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < H; ++i) {
        const T o = a[b * G + 3 * H + i], c = tc[b * H + i];
        dcf[b * H + i] = o * (one - c * c);
      }
    }
    for (int64_t i = 0; i < B * H; ++i) dc[i] = dc[i] + dh[i] * dcf[i];
    for (int64_t b = 0; b < B; ++b) {
      const T* ig = a + b * G;
      T* d = dg + b * W;
      gate_grads<T>(H, ig, ig + H, ig + 2 * H, ig + 3 * H, c_prev + b * H, tc + b * H, dh + b * H, dc + b * H, d,
                    d + H, d + 2 * H, d + 3 * H);
    }
    // dz_t += d_gates W_z; d q_raw_t += scale [dz_t, dz_t] with scale = [1, noise exp(logvar / 2) / 2],
    // zero where the clamp held q_raw (posterior_factors)
    dz_t.addmm_(dy.narrow(1, 0, G), w_z);
    half_logvar_exp_into<T>(q.select(0, t).data_ptr<T>(), B, Z, half_logvar_exp);
    const T* eps = noise.select(0, t).data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < Z; ++i) {
        scale[b * 2 * Z + i] = one;
        scale[b * 2 * Z + Z + i] = eps[b * Z + i] * e[b * Z + i] * T(0.5);
      }
    }
    if (clamp.has_value()) {
      const T c = static_cast<T>(*clamp);
      const T* raw = q_raw.select(0, t).data_ptr<T>();
      for (int64_t i = 0; i < B * 2 * Z; ++i) scale[i] = scale[i] * T(raw[i] >= -c && raw[i] <= c);
    }
    {
      T* dq = d_out.data_ptr<T>();
      const T* dz = dz_t.data_ptr<T>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < 2 * Z; ++j) dq[b * 2 * Z + j] = dq[b * 2 * Z + j] + scale[b * 2 * Z + j] * dz[b * Z + j % Z];
      }
    }
    // the posterior's first layer: d_post = (d q_raw_t W_2) act'(y_t[:, 4H:]) (clipped_leaky_relu_grad)
    Tensor d_post = dy.narrow(1, G, M);
    at::mm_out(d_post, d_out, w_post);
    const T* yp = y.select(0, t).data_ptr<T>();
    for (int64_t b = 0; b < B; ++b) act_grad_row<T>(yp + b * W + G, dg + b * W + G, M, slope_, bound_);
    if (t > 0) {  // h_0 is the constant zero state: its gradient is not needed
      d_h_all.select(0, t).addmm_(dy, w_h);
    }
  }
}

void backward_loop(const Tensor& d_y, const Tensor& d_h_all, const Tensor& d_z_all, const Tensor& d_q_raw,
                   const Tensor& y, const Tensor& acts, const Tensor& cs, const Tensor& tanh_cs, const Tensor& q,
                   const Tensor& q_raw, const Tensor& noise, const Tensor& w_h, const Tensor& w_post,
                   const Tensor& w_z, double slope, double bound, c10::optional<double> clamp) {
  for (auto [x, name] : std::vector<std::pair<const Tensor*, const char*>>{
           {&d_y, "d_y"}, {&d_h_all, "d_h_all"}, {&d_z_all, "d_z_all"}, {&d_q_raw, "d_q_raw"}, {&y, "y"},
           {&acts, "acts"}, {&cs, "cs"}, {&tanh_cs, "tanh_cs"}, {&q, "q"}, {&q_raw, "q_raw"}, {&noise, "noise"},
           {&w_h, "w_h"}, {&w_post, "w_post"}, {&w_z, "w_z"}}) {
    check_buffer(*x, name, d_y);
  }
  AT_DISPATCH_FLOATING_TYPES(d_y.scalar_type(), "zf_native_backward_loop", [&] {
    backward_loop_impl<scalar_t>(d_y, d_h_all, d_z_all, d_q_raw, y, acts, cs, tanh_cs, q, q_raw, noise, w_h,
                                 w_post, w_z, slope, bound, clamp);
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

}  // namespace

TORCH_LIBRARY(zf_native, m) {
  m.def("forward_loop", &forward_loop);
  m.def("backward_loop", &backward_loop);
  m.def("gaussian_terms", &gaussian_terms);
  m.def("gaussian_backward", &gaussian_backward);
}
