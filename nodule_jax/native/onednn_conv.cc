// 3D convolution (stride 1, float32, ungrouped) as XLA FFI custom calls into oneDNN.
//
// Layouts are JAX's row-major arrays: activations [B, D, H, W, C] (oneDNN's ndhwc),
// kernels [kD, kH, kW, Cin, Cout] (oneDNN's dhwio). Attributes: `padding` = [before_d,
// before_h, before_w, after_d, after_h, after_w], `dilation` = [d, h, w] (1 = dense).
// Three targets, one convolution x * w = y seen three ways: forward (x, w -> y), backward
// data (dy, w -> dx) and backward weights (x, dy -> dw). Under jax.vmap (vmap_method
// "broadcast_all") every operand gains the same leading axes and the call loops over them.
// oneDNN picks its own kernel layout ("any"); kernels are reordered to and from it on each
// call (they are small next to the activations). Each call owns its scratchpad: XLA may run
// independent ops concurrently, and oneDNN's library-managed scratchpad can be shared
// between primitives.
#include <cstdint>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

namespace {

enum class Op { kForward, kBackwardData, kBackwardWeights };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  memory::dims strides{1, 1, 1}, dilates, pad_l, pad_r;
};

// One slice's shapes, JAX order: x [B, D, H, W, C], w [kD, kH, kW, I, O], y [B, D', H', W', O].
struct Shapes {
  std::vector<int64_t> x, w, y;
};

memory::desc Activation(const std::vector<int64_t>& d) {  // oneDNN's logical order: B, C, D, H, W
  return memory::desc({d[0], d[4], d[1], d[2], d[3]}, dt::f32, tag::ndhwc);
}
memory::dims KernelDims(const std::vector<int64_t>& d) { return {d[4], d[3], d[0], d[1], d[2]}; }

// A user kernel (dhwio) as the memory the primitive wants, reordered when they differ.
memory KernelIn(const memory::desc& want, const memory::dims& dims, float* data,
                dnnl::stream& s) {
  memory user({dims, dt::f32, tag::dhwio}, Engine(), data);
  if (want == user.get_desc()) return user;
  memory packed(want, Engine());
  dnnl::reorder(user, packed).execute(s, user, packed);
  return packed;
}

void Run(Op op, const Shapes& shp, float* x, float* w, float* y, const Geometry& g,
         dnnl::stream& s) {
  auto src = Activation(shp.x), dst = Activation(shp.y);
  auto kdims = KernelDims(shp.w);
  memory::desc any_kernel(kdims, dt::f32, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc fwd(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      any_kernel, dst, g.strides, g.dilates, g.pad_l, g.pad_r, attr);
  memory x_m(src, Engine(), x), y_m(dst, Engine(), y);
  if (op == Op::kForward) {
    memory w_m = KernelIn(fwd.weights_desc(), kdims, w, s);
    memory scratch(fwd.scratchpad_desc(), Engine());
    dnnl::convolution_forward(fwd).execute(
        s, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, y_m},
            {DNNL_ARG_SCRATCHPAD, scratch}});
  } else if (op == Op::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, src, any_kernel, dst, g.strides,
        g.dilates, g.pad_l, g.pad_r, fwd, attr);
    memory w_m = KernelIn(pd.weights_desc(), kdims, w, s);
    memory scratch(pd.scratchpad_desc(), Engine());
    dnnl::convolution_backward_data(pd).execute(
        s, {{DNNL_ARG_DIFF_DST, y_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DIFF_SRC, x_m},
            {DNNL_ARG_SCRATCHPAD, scratch}});
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, src, any_kernel, dst, g.strides,
        g.dilates, g.pad_l, g.pad_r, fwd, attr);
    memory user({kdims, dt::f32, tag::dhwio}, Engine(), w);
    bool direct = pd.diff_weights_desc() == user.get_desc();
    memory w_m = direct ? user : memory(pd.diff_weights_desc(), Engine());
    memory scratch(pd.scratchpad_desc(), Engine());
    dnnl::convolution_backward_weights(pd).execute(
        s, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_DIFF_DST, y_m}, {DNNL_ARG_DIFF_WEIGHTS, w_m},
            {DNNL_ARG_SCRATCHPAD, scratch}});
    if (!direct) dnnl::reorder(w_m, user).execute(s, w_m, user);
  }
}

// Splits dims into (product of the leading axes, the trailing five).
int64_t Split(ffi::Span<const int64_t> d, std::vector<int64_t>* trailing) {
  *trailing = std::vector<int64_t>(d.end() - 5, d.end());
  int64_t n = 1;
  for (size_t i = 0; i + 5 < d.size(); ++i) n *= d[i];
  return n;
}

int64_t Product(const std::vector<int64_t>& d) {
  int64_t n = 1;
  for (auto v : d) n *= v;
  return n;
}

// x, w, y: the three operands in the roles of the forward conv (two read, one written).
ffi::Error Convolve(Op op, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer y,
                    ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  if (padding.size() != 6 || dilation.size() != 3)
    return ffi::Error::InvalidArgument("padding needs 6 values and dilation 3");
  for (const auto* b : {&x, &w, &y}) {
    if (b->element_type() != ffi::DataType::F32 || b->dimensions().size() < 5)
      return ffi::Error::InvalidArgument("operands must be float32 with 5 or more dims");
  }
  Geometry g;
  g.pad_l = {padding[0], padding[1], padding[2]};
  g.pad_r = {padding[3], padding[4], padding[5]};
  g.dilates = {dilation[0] - 1, dilation[1] - 1, dilation[2] - 1};
  Shapes shp;
  int64_t n = Split(x.dimensions(), &shp.x);
  if (Split(w.dimensions(), &shp.w) != n || Split(y.dimensions(), &shp.y) != n)
    return ffi::Error::InvalidArgument("operands' leading (vmapped) axes differ");
  auto* xp = static_cast<float*>(x.untyped_data());
  auto* wp = static_cast<float*>(w.untyped_data());
  auto* yp = static_cast<float*>(y.untyped_data());
  try {
    dnnl::stream s(Engine());
    for (int64_t i = 0; i < n; ++i) {
      Run(op, shp, xp + i * Product(shp.x), wp + i * Product(shp.w), yp + i * Product(shp.y),
          g, s);
    }
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  return Convolve(Op::kForward, x, w, *y, padding, dilation);
}
ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                        ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  return Convolve(Op::kBackwardData, *dx, w, dy, padding, dilation);
}
ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           ffi::Span<const int64_t> padding, ffi::Span<const int64_t> dilation) {
  return Convolve(Op::kBackwardWeights, x, *dw, dy, padding, dilation);
}

}  // namespace

#define NJ_CONV_HANDLER(symbol, impl)                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, impl,                                  \
                                ffi::Ffi::Bind()                               \
                                    .Arg<ffi::AnyBuffer>()                     \
                                    .Arg<ffi::AnyBuffer>()                     \
                                    .Ret<ffi::AnyBuffer>()                     \
                                    .Attr<ffi::Span<const int64_t>>("padding") \
                                    .Attr<ffi::Span<const int64_t>>("dilation"));

NJ_CONV_HANDLER(NjConv3dForward, Forward)
NJ_CONV_HANDLER(NjConv3dBackwardData, BackwardData)
NJ_CONV_HANDLER(NjConv3dBackwardWeights, BackwardWeights)
