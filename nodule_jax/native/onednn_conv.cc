// 3D convolution (float32 or bfloat16) as XLA FFI custom calls into oneDNN.
//
// Layouts are JAX's row-major arrays: activations [B, D, H, W, C] (oneDNN's ndhwc),
// kernels [kD, kH, kW, Cin/groups, Cout] (oneDNN's dhwio, or dhwigo with groups: output
// channels are group-major, as in lax's feature_group_count). Attributes: `padding` =
// [before_d, before_h, before_w, after_d, after_h, after_w], `dilation` = [d, h, w] (1 =
// dense), `strides` = [d, h, w], `groups`.
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
  memory::dims strides, dilates, pad_l, pad_r;
  int64_t groups = 1;
  dt type = dt::f32;  // of every operand: f32, or bf16 (AVX-512 BF16 / AMX kernels)
};

// One slice's shapes, JAX order: x [B, D, H, W, C], w [kD, kH, kW, I, O], y [B, D', H', W', O].
struct Shapes {
  std::vector<int64_t> x, w, y;
};

memory::desc Activation(const std::vector<int64_t>& d, dt type) {  // logical order: B, C, D, H, W
  return memory::desc({d[0], d[4], d[1], d[2], d[3]}, type, tag::ndhwc);
}
// oneDNN's logical kernel dims: O, I, kD, kH, kW; with groups G, O/G, I/G, kD, kH, kW.
memory::dims KernelDims(const std::vector<int64_t>& d, int64_t groups) {
  if (groups == 1) return {d[4], d[3], d[0], d[1], d[2]};
  return {groups, d[4] / groups, d[3], d[0], d[1], d[2]};
}

// The user's kernel (JAX's [kD, kH, kW, I/G, O]) as oneDNN memory.
memory UserKernel(const memory::dims& dims, dt type, void* data) {
  return memory({dims, type, dims.size() == 5 ? tag::dhwio : tag::dhwigo}, Engine(), data);
}

// A user kernel as the memory the primitive wants, reordered when they differ.
memory KernelIn(const memory::desc& want, const memory::dims& dims, dt type, void* data,
                dnnl::stream& s) {
  memory user = UserKernel(dims, type, data);
  if (want == user.get_desc()) return user;
  memory packed(want, Engine());
  dnnl::reorder(user, packed).execute(s, user, packed);
  return packed;
}

void Run(Op op, const Shapes& shp, char* x, char* w, char* y, const Geometry& g,
         dnnl::stream& s) {
  auto src = Activation(shp.x, g.type), dst = Activation(shp.y, g.type);
  auto kdims = KernelDims(shp.w, g.groups);
  memory::desc any_kernel(kdims, g.type, tag::any);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc fwd(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      any_kernel, dst, g.strides, g.dilates, g.pad_l, g.pad_r, attr);
  memory x_m(src, Engine(), x), y_m(dst, Engine(), y);
  if (op == Op::kForward) {
    memory w_m = KernelIn(fwd.weights_desc(), kdims, g.type, w, s);
    memory scratch(fwd.scratchpad_desc(), Engine());
    dnnl::convolution_forward(fwd).execute(
        s, {{DNNL_ARG_SRC, x_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DST, y_m},
            {DNNL_ARG_SCRATCHPAD, scratch}});
  } else if (op == Op::kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, src, any_kernel, dst, g.strides,
        g.dilates, g.pad_l, g.pad_r, fwd, attr);
    memory w_m = KernelIn(pd.weights_desc(), kdims, g.type, w, s);
    memory scratch(pd.scratchpad_desc(), Engine());
    dnnl::convolution_backward_data(pd).execute(
        s, {{DNNL_ARG_DIFF_DST, y_m}, {DNNL_ARG_WEIGHTS, w_m}, {DNNL_ARG_DIFF_SRC, x_m},
            {DNNL_ARG_SCRATCHPAD, scratch}});
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        Engine(), dnnl::algorithm::convolution_direct, src, any_kernel, dst, g.strides,
        g.dilates, g.pad_l, g.pad_r, fwd, attr);
    memory user = UserKernel(kdims, g.type, w);
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

struct Attrs {
  ffi::Span<const int64_t> padding, dilation, strides;
  int64_t groups;
};

// x, w, y: the three operands in the roles of the forward conv (two read, one written).
ffi::Error Convolve(Op op, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer y,
                    const Attrs& a) {
  if (a.padding.size() != 6 || a.dilation.size() != 3 || a.strides.size() != 3 || a.groups < 1)
    return ffi::Error::InvalidArgument(
        "padding needs 6 values, dilation and strides 3, groups >= 1");
  auto type = x.element_type();
  for (const auto* b : {&x, &w, &y}) {
    if (b->element_type() != type || b->dimensions().size() < 5 ||
        (type != ffi::DataType::F32 && type != ffi::DataType::BF16))
      return ffi::Error::InvalidArgument(
          "operands must all be float32 or all bfloat16, with 5 or more dims");
  }
  Geometry g;
  g.pad_l = {a.padding[0], a.padding[1], a.padding[2]};
  g.pad_r = {a.padding[3], a.padding[4], a.padding[5]};
  g.dilates = {a.dilation[0] - 1, a.dilation[1] - 1, a.dilation[2] - 1};
  g.strides = {a.strides[0], a.strides[1], a.strides[2]};
  g.groups = a.groups;
  g.type = type == ffi::DataType::F32 ? dt::f32 : dt::bf16;
  const int64_t bytes = type == ffi::DataType::F32 ? 4 : 2;
  Shapes shp;
  int64_t n = Split(x.dimensions(), &shp.x);
  if (Split(w.dimensions(), &shp.w) != n || Split(y.dimensions(), &shp.y) != n)
    return ffi::Error::InvalidArgument("operands' leading (vmapped) axes differ");
  auto* xp = static_cast<char*>(x.untyped_data());
  auto* wp = static_cast<char*>(w.untyped_data());
  auto* yp = static_cast<char*>(y.untyped_data());
  try {
    dnnl::stream s(Engine());
    for (int64_t i = 0; i < n; ++i) {
      Run(op, shp, xp + i * bytes * Product(shp.x), wp + i * bytes * Product(shp.w),
          yp + i * bytes * Product(shp.y), g, s);
    }
    s.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

using Span = ffi::Span<const int64_t>;

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   Span padding, Span dilation, Span strides, int64_t groups) {
  return Convolve(Op::kForward, x, w, *y, {padding, dilation, strides, groups});
}
ffi::Error BackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                        Span padding, Span dilation, Span strides, int64_t groups) {
  return Convolve(Op::kBackwardData, *dx, w, dy, {padding, dilation, strides, groups});
}
ffi::Error BackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                           Span padding, Span dilation, Span strides, int64_t groups) {
  return Convolve(Op::kBackwardWeights, x, *dw, dy, {padding, dilation, strides, groups});
}

}  // namespace

#define NJ_CONV_HANDLER(symbol, impl)                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(symbol, impl,                                  \
                                ffi::Ffi::Bind()                               \
                                    .Arg<ffi::AnyBuffer>()                     \
                                    .Arg<ffi::AnyBuffer>()                     \
                                    .Ret<ffi::AnyBuffer>()                     \
                                    .Attr<ffi::Span<const int64_t>>("padding") \
                                    .Attr<ffi::Span<const int64_t>>("dilation") \
                                    .Attr<ffi::Span<const int64_t>>("strides")  \
                                    .Attr<int64_t>("groups"));

NJ_CONV_HANDLER(NjConv3dForward, Forward)
NJ_CONV_HANDLER(NjConv3dBackwardData, BackwardData)
NJ_CONV_HANDLER(NjConv3dBackwardWeights, BackwardWeights)
