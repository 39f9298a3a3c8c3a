// dynconv: dynamic convolution on Eigen tensors. The umbrella header: includes every public
// part of the library.
#pragma once

#include <dynconv/activation.hpp>
#include <dynconv/attention.hpp>
#include <dynconv/batchnorm.hpp>
#include <dynconv/conv2d.hpp>
#include <dynconv/conv_geometry.hpp>
#include <dynconv/conv_options.hpp>
#include <dynconv/dynamic_conv2d.hpp>
#include <dynconv/elementwise.hpp>
#include <dynconv/error.hpp>
#include <dynconv/graph.hpp>
#include <dynconv/linear.hpp>
#include <dynconv/module.hpp>
#include <dynconv/omni_attention.hpp>
#include <dynconv/pooling.hpp>
#include <dynconv/routing.hpp>
#include <dynconv/runtime.hpp>
#include <dynconv/safetensors.hpp>
#include <dynconv/session.hpp>
#include <dynconv/tensor.hpp>
#include <dynconv/upsample.hpp>
