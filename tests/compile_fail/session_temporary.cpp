// Must not compile: a Session keeps a reference to its graph, so binding a temporary (which
// would be destroyed at the end of the statement) is refused. With -DDYNCONV_CONTROL the same
// file binds a named graph and must compile (so the test fails for the right reason only).
#include <dynconv/models/zoo.hpp>

dynconv::models::Model<float> make_model() { return dynconv::models::mobilenet_v3_small<float>("m", {}, {}); }

int main() {
#ifdef DYNCONV_CONTROL
  const dynconv::models::Model<float> model = make_model();
  dynconv::Session<float> session(model, 2);
#else
  dynconv::Session<float> session(make_model(), 2);
#endif
  return session.threads() == 2 ? 0 : 1;
}
