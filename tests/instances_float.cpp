// dynconv's float instances for the tests (see <dynconv/instantiate.hpp>).
#include <dynconv/instantiate.hpp>

DYNCONV_INSTANTIATE(float)
