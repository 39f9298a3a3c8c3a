// Opt-in explicit instantiation: compile dynconv's class templates once per program instead of
// once per translation unit.
//
// dynconv is header-only: every .cpp that uses a layer compiles that layer's whole code (its
// run() for every thread split and mixing strategy, load/save, cost), since the layers are class
// templates with virtual members. A program with many such .cpp files pays for this many times
// over. To compile it once:
//
//   1. define DYNCONV_EXTERN_TEMPLATES in every translation unit (e.g. add_compile_definitions);
//      each public header then declares its float and double instances `extern template`;
//   2. in exactly one .cpp of the program (it may hold nothing else; two, to build in parallel):
//
//        #include <dynconv/instantiate.hpp>
//        DYNCONV_INSTANTIATE(float)
//        DYNCONV_INSTANTIATE(double)
//
//      Both element types must be instantiated somewhere: the headers declare both.
//
// The numbers are the same either way (the same code, compiled with that .cpp's flags); only
// the build time differs. dynconv's own tests build this way (tests/instances_*.cpp); its
// examples, benchmarks and consumer tests use the default header-only mode.
#pragma once

#include <dynconv/dynconv.hpp>
#include <dynconv/models/zoo.hpp>

// clang-format off
/// Explicit instantiation definitions of every dynconv class template (and the zoo's builders)
/// for the element type T. Use at global scope, once per T per program.
#define DYNCONV_INSTANTIATE(T)                                                             \
  template class dynconv::Module<T>;                                                       \
  template class dynconv::NhwcTensor<T>;                                                   \
  template class dynconv::Workspace<T>;                                                    \
  template class dynconv::Context<T>;                                                      \
  template class dynconv::Conv2d<T>;                                                       \
  template class dynconv::DynamicConv2d<T>;                                                \
  template class dynconv::BatchNorm2d<T>;                                                  \
  template class dynconv::Linear<T>;                                                       \
  template class dynconv::KernelAttention<T>;                                              \
  template class dynconv::OmniAttention<T>;                                                \
  template class dynconv::CondConvRouting<T>;                                              \
  template class dynconv::Graph<T>;                                                        \
  template class dynconv::Session<T>;                                                      \
  template class dynconv::ActivationLayer<T>;                                              \
  template class dynconv::ReLU<T>;                                                         \
  template class dynconv::ReLU6<T>;                                                        \
  template class dynconv::HardSwish<T>;                                                    \
  template class dynconv::HardSigmoid<T>;                                                  \
  template class dynconv::Sigmoid<T>;                                                      \
  template class dynconv::SiLU<T>;                                                         \
  template class dynconv::Tanh<T>;                                                         \
  template class dynconv::GELU<T>;                                                         \
  template class dynconv::detail::BinaryModule<T, dynconv::detail::AddOp>;                 \
  template class dynconv::detail::BinaryModule<T, dynconv::detail::SubOp>;                 \
  template class dynconv::detail::BinaryModule<T, dynconv::detail::MulOp>;                 \
  template class dynconv::Add<T>;                                                          \
  template class dynconv::Sub<T>;                                                          \
  template class dynconv::Mul<T>;                                                          \
  template class dynconv::Concat<T>;                                                       \
  template class dynconv::Identity<T>;                                                     \
  template class dynconv::Flatten<T>;                                                      \
  template class dynconv::detail::ChannelSoftmax<T>;                                       \
  template class dynconv::Softmax<T>;                                                      \
  template class dynconv::LogSoftmax<T>;                                                   \
  template class dynconv::MaxPool2d<T>;                                                    \
  template class dynconv::AvgPool2d<T>;                                                    \
  template class dynconv::AdaptiveAvgPool2d<T>;                                            \
  template class dynconv::Upsample<T>;                                                     \
  template class dynconv::models::Model<T>;                                                \
  template class dynconv::models::ZooBuilder<T>;                                           \
  template std::unique_ptr<dynconv::models::Model<T>> dynconv::models::build_zoo_model<T>( \
      const std::string&, const dynconv::models::ModelOptions&);                           \
  template std::unique_ptr<dynconv::models::Model<T>> dynconv::models::create<T>(          \
      const std::string&, const dynconv::models::ModelOptions&);
// clang-format on
