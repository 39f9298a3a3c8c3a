// Internal headers (dynconv/detail/*) are implementation details with no stable API and no
// argument checks. Include <dynconv/dynconv.hpp> or one of the public headers instead.
#ifndef DYNCONV_DETAIL_ALLOWED
#error "dynconv/detail/* are internal headers: include <dynconv/dynconv.hpp> or a public dynconv header instead."
#endif
